//! Checkpoints: where they live and how they become durable ([`store`]: atomic, checksummed,
//! pruned step directories), what goes inside one ([`contents`]: weights, optimizer state,
//! counters and data-stream positions), which one a run resumes from ([`resume`]), whether it
//! still reads the shard files it recorded (`data_files`), averaging several into one model
//! file ([`average`]), and one writer per run directory ([`run_lock`]). Every rank writes its
//! own part ([`rank_parts`]) from a host copy ([`snapshot`]), in the background if asked, and
//! the parts are committed together ([`writer`]).

pub mod average;
pub mod contents;
pub(crate) mod data_files;
pub(crate) mod mirror;
pub mod rank_parts;
pub mod resume;
pub mod run_lock;
pub(crate) mod save;
pub(crate) mod snapshot;
pub mod store;
pub(crate) mod writer;

pub use contents::{TrainState, MODEL_CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
pub use mirror::MirrorRecord;
pub use resume::Resume;
pub use store::CheckpointStore;
pub use writer::{CheckpointFault, FaultKind, SaveRecord};
