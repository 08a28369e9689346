//! The training-throughput benchmark: synthetic random-token steps through the trainer's own
//! step function ([`crate::step::train_step`]: forward/backward, loss, gradient clipping, the
//! fused AdamW update), so a bench figure is by construction the trainer's speed. It reports
//! tokens/s, MFU, peak memory and where a step's time goes.
//!
//! Two kinds of steps are timed, after `warmup` untimed ones:
//!
//! * `steps` unsynchronised steps: nothing reads a device value back to the host between them
//!   (the loss is read once at the end), so on CUDA the host may run ahead as in real training.
//!   tokens/s and MFU come from these: the window's wall time (closed by one synchronisation)
//!   over its steps.
//! * `split_steps` synchronised steps: the device is synchronised at every phase boundary
//!   (after the loss, after backward, after the optimizer) so that the forward / backward /
//!   optimizer times are real; a single process has no communication, reported as 0.
//!
//! The update is the trainer's: clipping, then fused AdamW whose skip of a non-finite step is
//! decided on the device (`found_inf`), so neither reads a value back inside a step. The
//! modules: [`config`] (what to measure), [`runner`] (the loop), [`report`] (the JSON).

pub mod config;
pub mod report;
pub mod runner;

pub use config::{model_config, BenchConfig};
pub use report::{sdpa_backend_name, BenchReport, TimeSplit};
pub use runner::run;
