//! corenet-train: from a recipe to a trained, checkpointed model. The folders follow a run's
//! life (docs/architecture.md walks through them):
//!
//! - [`recipe`]: YAML recipes, `--set` overrides, CoreNet YAML import, the planner, dry runs.
//! - [`step`]: the training loop and the optimizer step it shares with the benchmark:
//!   forward/backward, loss, gradient accumulation.
//! - [`optim`]: AdamW (replicated or ZeRO-1 sharded) and the LR schedules.
//! - [`dist`]: the launcher environment and data parallelism over c10d (corenet-ffi).
//! - [`checkpoint`]: the checkpoint store, what a checkpoint holds, resume resolution,
//!   averaging.
//! - [`log`]: metrics JSONL, TensorBoard, progress and throughput/MFU, owned by one run log.
//! - [`validate`]: validation during training on held-back and held-out sets.
//! - [`bench`]: `corenet bench`, timing the trainer's own step on synthetic tokens.
//!
//! No `unsafe` here: every call into C++ goes through corenet-ffi's safe wrappers.

#![forbid(unsafe_code)]

pub mod bench;
pub mod checkpoint;
pub mod dist;
pub mod error;
pub mod log;
pub mod optim;
pub mod recipe;
pub mod step;
pub mod validate;

pub use checkpoint::Resume;
pub use error::{Error, Result};
pub use recipe::Recipe;
pub use step::{RunSummary, TrainOptions, Trainer};
