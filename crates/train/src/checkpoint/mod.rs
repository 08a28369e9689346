//! Checkpoints: where they live and how they become durable ([`store`]: atomic, checksummed,
//! pruned step directories), what goes inside one ([`contents`]: weights, optimizer state,
//! counters and data-stream positions), which one a run resumes from ([`resume`]), whether it
//! still reads the shard files it recorded (`data_files`), averaging several into one model
//! file ([`average`]), and one writer per run directory ([`run_lock`]).

pub mod average;
pub mod contents;
pub(crate) mod data_files;
pub mod resume;
pub mod run_lock;
pub(crate) mod save;
pub mod store;

pub use contents::{TrainState, MODEL_CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
pub use resume::Resume;
pub use store::CheckpointStore;
