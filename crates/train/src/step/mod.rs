//! Where a batch becomes a loss and the loss an update. [`trainer`] runs the loop (build the
//! parts, step, log, checkpoint, stop); [`train_step`] is one optimizer step — gradient
//! accumulation, all-reduce, clipping, the update — shared by the trainer and `corenet bench`;
//! [`forward_backward`] runs one micro-batch's forward and backward (plain, with activation
//! checkpointing, or stage by stage for overlapped all-reduce); [`loss`] is CoreNet's loss;
//! [`batches`] turns the data stream into device tensors and times the wait for them;
//! [`generator`] serialises use of libtorch's process-wide random generator.

pub(crate) mod batches;
pub(crate) mod forward_backward;
pub mod generator;
pub mod loss;
pub(crate) mod train_step;
pub mod trainer;

pub use trainer::{RunSummary, TrainOptions, Trainer, DEFAULT_DIST_TIMEOUT};
