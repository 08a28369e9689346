//! corenet-ffi: the only crate of the workspace with `unsafe` code. It compiles the C++ shim
//! (`csrc/shim.cpp`) against libtorch and wraps each entry point in a safe function whose
//! errors are values, so the crates above it can `#![forbid(unsafe_code)]`.
//!
//! - [`process_group`]: c10d process groups (TCPStore rendezvous; Gloo on CPU, NCCL on GPU)
//!   and their collectives.
//! - [`multi_tensor`]: libtorch kernels tch does not bind: `_fused_adamw_`, `_foreach_norm`,
//!   dropping gradients.
//! - [`readback`]: device values copied to the host behind the device's work, waited on
//!   through a c10 event.
//! - [`device`]: the libtorch version, device names, peak memory, synchronisation.
//! - [`mapped_file`]: read-only memory maps of checkpoint files.
//! - [`process`]: signals to child processes (the launcher).

pub mod device;
pub mod error;
pub mod mapped_file;
pub mod multi_tensor;
pub mod process;
pub mod process_group;
pub mod readback;
mod shim;

pub use error::{Error, Result};
pub use mapped_file::MappedFile;
pub use multi_tensor::{clear_gradients, foreach_grad_norm, fused_adamw_step, FusedAdamW};
pub use process_group::{Backend, PendingReduce, ProcessGroup, ReduceOp, Rendezvous, SharedStore};
pub use readback::Readback;
