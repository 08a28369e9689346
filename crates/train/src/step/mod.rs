//! Where a batch becomes a loss and the loss an update. [`trainer`] runs the loop (build the
//! parts, step, log, checkpoint, stop); [`train_step`] is one optimizer step — gradient
//! accumulation, all-reduce, clipping, the update — shared by the trainer and `corenet bench`;
//! [`forward_backward`] runs one micro-batch's forward and backward (plain, with activation
//! checkpointing, or stage by stage for overlapped all-reduce); [`loss`] is CoreNet's loss;
//! [`preference`] is DPO's (the `dpo:` section, per-sequence log-probabilities, trl's losses);
//! [`reference`] is DPO's frozen reference model;
//! [`batches`] turns the data stream into device tensors and times the wait for them;
//! [`generator`] serialises use of libtorch's process-wide random generator.

pub(crate) mod batches;
pub(crate) mod forward_backward;
pub mod generator;
pub mod loss;
pub mod preference;
pub mod reference;
pub(crate) mod train_step;
pub mod trainer;

pub use trainer::{RunSummary, TrainOptions, Trainer, DEFAULT_DIST_TIMEOUT};
