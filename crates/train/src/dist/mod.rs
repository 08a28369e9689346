//! Data parallelism: who this process is in the job ([`launcher_env`], with Slurm's node lists
//! and ports in [`slurm`]) and what the trainer
//! does with the other ranks ([`data_parallel`]: recipe check, weight broadcast, bucketed and
//! overlapped gradient all-reduce, small exchanges through the rendezvous store). The c10d
//! process group itself and its collectives live in corenet-ffi.

pub mod data_parallel;
pub mod launcher_env;
pub mod slurm;

pub use corenet_ffi::{Backend, PendingReduce, ProcessGroup, ReduceOp};
pub use data_parallel::DataParallel;
pub use launcher_env::{join, join_from_env, DistEnv, DEFAULT_MASTER_PORT};
