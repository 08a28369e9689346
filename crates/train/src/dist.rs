//! Process groups over PyTorch's c10d (TCPStore rendezvous; Gloo on CPU, NCCL on GPU when built
//! with the `nccl` feature), through the C++ shim. See ../shared/docs/toolchain.md §6.
//!
//! * [`DistEnv`] reads the launcher's environment: torchrun's `RANK`, `WORLD_SIZE`,
//!   `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, or Slurm's `SLURM_PROCID`,
//!   `SLURM_NTASKS`, `SLURM_LOCALID` (with `MASTER_ADDR` from the environment or 127.0.0.1, and
//!   `MASTER_PORT` or 29500).
//! * [`ProcessGroup`] runs blocking collectives; every one honours the group's timeout, so a
//!   dead or stuck rank gives an [`Error::Dist`] rather than a hang.
//!
//! Every rank must issue the same collectives in the same order. Rank 0 hosts the rendezvous
//! store, so end with [`ProcessGroup::barrier`] before dropping the group if other ranks may
//! still use the store.

use std::ffi::{c_int, c_void, CString};
use std::time::Duration;

use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::shim;

/// The port torchrun uses when none is given; also the Slurm fallback.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Which c10d backend runs the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors, TCP transport.
    Gloo,
    /// CUDA tensors; needs the `nccl` feature.
    Nccl,
}

impl Backend {
    /// Gloo for CPU training, NCCL for CUDA.
    pub fn for_device(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Backend::Nccl,
            _ => Backend::Gloo,
        }
    }

    fn code(self) -> c_int {
        match self {
            Backend::Gloo => 0,
            Backend::Nccl => 1,
        }
    }
}

/// How a reduction combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size (float tensors).
    Avg,
}

impl ReduceOp {
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
        }
    }
}

/// A process's place in the job, as the launcher described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

fn env_err(var: &str, message: impl Into<String>) -> Error {
    Error::Env {
        var: var.into(),
        message: message.into(),
    }
}

impl DistEnv {
    /// Reads the process environment; `Ok(None)` when no launcher variables are set (a plain
    /// single-process run).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// As [`DistEnv::from_env`], with variables looked up through `get` (for tests and for
    /// callers that assemble the environment themselves).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let get = |var: &str| get(var).filter(|v| !v.trim().is_empty());
        let parse = |var: &str| -> Result<Option<usize>> {
            get(var)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| env_err(var, format!("`{v}` is not a non-negative integer")))
                })
                .transpose()
        };
        let required = |var: &str, because: &str| -> Result<usize> {
            parse(var)?.ok_or_else(|| env_err(var, format!("is not set, but {because} is")))
        };

        let slurm = get("RANK").is_none() && get("WORLD_SIZE").is_none();
        let env = if !slurm {
            let rank = required("RANK", "WORLD_SIZE")?;
            let world_size = required("WORLD_SIZE", "RANK")?;
            let master_addr = get("MASTER_ADDR")
                .ok_or_else(|| env_err("MASTER_ADDR", "is not set, but RANK is"))?;
            let master_port = parse_port(get("MASTER_PORT"))?
                .ok_or_else(|| env_err("MASTER_PORT", "is not set, but RANK is"))?;
            DistEnv {
                rank,
                world_size,
                local_rank: parse("LOCAL_RANK")?.unwrap_or(rank),
                local_world_size: parse("LOCAL_WORLD_SIZE")?.unwrap_or(world_size),
                master_addr,
                master_port,
            }
        } else if get("SLURM_PROCID").is_some() {
            let rank = required("SLURM_PROCID", "SLURM_PROCID")?;
            let world_size = required("SLURM_NTASKS", "SLURM_PROCID")?;
            let local_rank = parse("SLURM_LOCALID")?.unwrap_or(0);
            let local_world_size = match parse("SLURM_NTASKS_PER_NODE") {
                Ok(Some(n)) => n,
                // Heterogeneous layouts ("2(x3),1") or unset: assume one node per task group.
                _ => parse("SLURM_NNODES")
                    .ok()
                    .flatten()
                    .filter(|&nodes| nodes > 0 && world_size % nodes == 0)
                    .map_or(world_size, |nodes| world_size / nodes),
            };
            DistEnv {
                rank,
                world_size,
                local_rank,
                local_world_size,
                master_addr: get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: parse_port(get("MASTER_PORT"))?.unwrap_or(DEFAULT_MASTER_PORT),
            }
        } else {
            return Ok(None);
        };
        match env.validate() {
            Ok(()) => Ok(Some(env)),
            // Name the variable the user actually set.
            Err(Error::Env { var, message }) if slurm => {
                let var = match var.as_str() {
                    "RANK" => "SLURM_PROCID",
                    "WORLD_SIZE" => "SLURM_NTASKS",
                    "LOCAL_RANK" => "SLURM_LOCALID",
                    "LOCAL_WORLD_SIZE" => "SLURM_NTASKS_PER_NODE",
                    other => other,
                };
                Err(env_err(var, message))
            }
            Err(e) => Err(e),
        }
    }

    /// Checks that ranks fit their world sizes.
    pub fn validate(&self) -> Result<()> {
        if self.world_size == 0 {
            return Err(env_err("WORLD_SIZE", "must be at least 1"));
        }
        if self.rank >= self.world_size {
            return Err(env_err(
                "RANK",
                format!(
                    "rank {} is not below the world size {}",
                    self.rank, self.world_size
                ),
            ));
        }
        if self.local_world_size == 0 || self.local_world_size > self.world_size {
            return Err(env_err(
                "LOCAL_WORLD_SIZE",
                format!(
                    "{} must be between 1 and the world size {}",
                    self.local_world_size, self.world_size
                ),
            ));
        }
        if self.local_rank >= self.local_world_size {
            return Err(env_err(
                "LOCAL_RANK",
                format!(
                    "local rank {} is not below the local world size {}",
                    self.local_rank, self.local_world_size
                ),
            ));
        }
        if self.master_port == 0 {
            return Err(env_err("MASTER_PORT", "port 0 is not allowed"));
        }
        if self.world_size > i32::MAX as usize {
            return Err(env_err("WORLD_SIZE", "too large"));
        }
        Ok(())
    }
}

fn parse_port(value: Option<String>) -> Result<Option<u16>> {
    value
        .map(|v| match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(env_err(
                "MASTER_PORT",
                format!("`{v}` is not a port number in 1..=65535"),
            )),
        })
        .transpose()
}

/// A bucket all-reduce in flight ([`ProcessGroup::all_reduce_start`]).
#[derive(Debug)]
pub struct PendingReduce {
    pending: *mut std::ffi::c_void,
    who: String,
}

impl PendingReduce {
    /// Waits for the collective and writes the reduced values into the bucket's tensors.
    pub fn finish(mut self) -> Result<()> {
        let pending = std::mem::replace(&mut self.pending, std::ptr::null_mut());
        // SAFETY: `pending` came from `shim_all_reduce_start` and is finished exactly once.
        let err = unsafe { shim::shim_all_reduce_finish(pending) };
        shim::check(err).map_err(|message| Error::Dist {
            op: "all_reduce (overlapped bucket)".into(),
            message: format!("{}: {message}", self.who),
        })
    }
}

impl Drop for PendingReduce {
    fn drop(&mut self) {
        if !self.pending.is_null() {
            // SAFETY: as in `finish`; an error here has no one left to report to.
            let err = unsafe { shim::shim_all_reduce_finish(self.pending) };
            let _ = shim::check(err);
        }
    }
}

/// A c10d process group: a TCPStore rendezvous at `MASTER_ADDR:MASTER_PORT` (hosted by rank 0)
/// and a Gloo or NCCL backend. Collectives block until done and fail with [`Error::Dist`] on a
/// timeout or a lost peer. Dropping it destroys the group.
#[derive(Debug)]
pub struct ProcessGroup {
    handle: *mut c_void,
    env: DistEnv,
    backend: Backend,
    timeout: Duration,
}

// SAFETY: the C++ process group is not tied to the thread that created it, so the handle may
// move between threads. It is not `Sync`: c10d's collective sequence numbers are not
// synchronised, and every rank must issue collectives in one order anyway.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group described by `env`: blocks until all `world_size` ranks have joined or
    /// `timeout` has passed. `timeout` also bounds every later collective and store read.
    pub fn new(env: &DistEnv, backend: Backend, timeout: Duration) -> Result<Self> {
        env.validate()?;
        let addr = CString::new(env.master_addr.as_str())
            .map_err(|_| env_err("MASTER_ADDR", "contains a NUL byte"))?;
        let timeout_ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: `addr` is a valid C string for the call; `handle` is a valid out-pointer.
        let err = unsafe {
            shim::shim_dist_init(
                addr.as_ptr(),
                c_int::from(env.master_port),
                env.rank as c_int,
                env.world_size as c_int,
                timeout_ms,
                backend.code(),
                env.local_rank as c_int,
                &mut handle,
            )
        };
        shim::check(err).map_err(|message| Error::Dist {
            op: "init".into(),
            message: format!(
                "rank {}/{} ({backend:?}, master {}:{}): {message}",
                env.rank, env.world_size, env.master_addr, env.master_port
            ),
        })?;
        Ok(ProcessGroup {
            handle,
            env: env.clone(),
            backend,
            timeout,
        })
    }

    /// [`ProcessGroup::new`] from the launcher's environment ([`DistEnv::from_env`]); an
    /// [`Error::Env`] naming `RANK` if no launcher variables are set.
    pub fn from_env(backend: Backend, timeout: Duration) -> Result<Self> {
        let env = DistEnv::from_env()?.ok_or_else(|| {
            env_err(
                "RANK",
                "is not set (nor SLURM_PROCID): launch with torchrun, `corenet launch` or srun",
            )
        })?;
        Self::new(&env, backend, timeout)
    }

    pub fn rank(&self) -> usize {
        self.env.rank
    }

    pub fn world_size(&self) -> usize {
        self.env.world_size
    }

    pub fn local_rank(&self) -> usize {
        self.env.local_rank
    }

    pub fn local_world_size(&self) -> usize {
        self.env.local_world_size
    }

    pub fn env(&self) -> &DistEnv {
        &self.env
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn check(&self, op: &str, err: *mut std::ffi::c_char) -> Result<()> {
        shim::check(err).map_err(|message| Error::Dist {
            op: op.into(),
            message: format!("rank {}/{}: {message}", self.env.rank, self.env.world_size),
        })
    }

    /// Sums `t` over all ranks, in place.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        self.all_reduce(t, ReduceOp::Sum)
    }

    /// Averages `t` over all ranks, in place (float tensors).
    pub fn all_reduce_avg(&self, t: &Tensor) -> Result<()> {
        self.all_reduce(t, ReduceOp::Avg)
    }

    /// Reduces `t` over all ranks, in place.
    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        // SAFETY: live handle and tensor pointer for the duration of the call.
        let err = unsafe { shim::shim_all_reduce(self.handle, t.as_ptr(), op.code()) };
        self.check("all_reduce", err)
    }

    /// Reduces a bucket of tensors (one dtype and device) with one collective over their
    /// concatenation, in place.
    pub fn all_reduce_coalesced(&self, ts: &[Tensor], op: ReduceOp) -> Result<()> {
        let ptrs = shim::tensor_ptrs(ts);
        // SAFETY: `ptrs` holds `ts.len()` live tensor pointers.
        let err = unsafe {
            shim::shim_all_reduce_coalesced(self.handle, ptrs.as_ptr(), ptrs.len(), op.code())
        };
        self.check("all_reduce_coalesced", err)
    }

    /// Starts reducing a bucket like [`ProcessGroup::all_reduce_coalesced`] and returns at once;
    /// the tensors get the result when the returned [`PendingReduce`] is finished (or dropped).
    /// They must not be changed meanwhile.
    pub fn all_reduce_start(&self, ts: &[Tensor], op: ReduceOp) -> Result<PendingReduce> {
        let ptrs = shim::tensor_ptrs(ts);
        let mut pending = std::ptr::null_mut();
        // SAFETY: `ptrs` holds `ts.len()` live tensor pointers; the shim keeps its own handles
        // to them (shared storage) until the bucket is finished.
        let err = unsafe {
            shim::shim_all_reduce_start(
                self.handle,
                ptrs.as_ptr(),
                ptrs.len(),
                op.code(),
                &mut pending,
            )
        };
        self.check("all_reduce_start", err)?;
        Ok(PendingReduce {
            pending,
            who: format!("rank {}/{}", self.env.rank, self.env.world_size),
        })
    }

    /// Reduces `input` (world_size × shard elements) over all ranks and writes this rank's
    /// shard — elements `[rank·shard, (rank+1)·shard)` of the flattened result — into `output`
    /// (shard elements, same dtype and device).
    pub fn reduce_scatter(&self, input: &Tensor, output: &Tensor, op: ReduceOp) -> Result<()> {
        // SAFETY: live handle and tensor pointers for the duration of the call.
        let err = unsafe {
            shim::shim_reduce_scatter(self.handle, input.as_ptr(), output.as_ptr(), op.code())
        };
        self.check("reduce_scatter", err)
    }

    /// Gathers every rank's `shard` into `output` (world_size × shard elements), in rank order.
    pub fn all_gather(&self, shard: &Tensor, output: &Tensor) -> Result<()> {
        // SAFETY: live handle and tensor pointers for the duration of the call.
        let err = unsafe { shim::shim_all_gather(self.handle, shard.as_ptr(), output.as_ptr()) };
        self.check("all_gather", err)
    }

    /// Copies `root`'s `t` into every other rank's `t`, in place.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
        if root >= self.env.world_size {
            return Err(Error::Dist {
                op: "broadcast".into(),
                message: format!(
                    "root {root} is not a rank of a world of {}",
                    self.env.world_size
                ),
            });
        }
        // SAFETY: live handle and tensor pointer for the duration of the call.
        let err = unsafe { shim::shim_broadcast(self.handle, t.as_ptr(), root as c_int) };
        self.check("broadcast", err)
    }

    /// Blocks until every rank has reached the barrier (or the timeout passes).
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: live handle.
        let err = unsafe { shim::shim_barrier(self.handle) };
        self.check("barrier", err)
    }

    /// Publishes `value` under `key` in the group's store (visible to every rank).
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<()> {
        let c_key = self.key("store_set", key)?;
        // SAFETY: `c_key` and `value` are valid for the call; the shim copies them.
        let err = unsafe {
            shim::shim_store_set(self.handle, c_key.as_ptr(), value.as_ptr(), value.len())
        };
        self.check("store_set", err)
    }

    /// Reads `key` from the group's store, waiting up to the timeout for some rank to set it.
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>> {
        let c_key = self.key("store_get", key)?;
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: `c_key` is valid for the call; `data` and `len` are valid out-pointers.
        let err = unsafe { shim::shim_store_get(self.handle, c_key.as_ptr(), &mut data, &mut len) };
        self.check(&format!("store_get `{key}`"), err)?;
        if data.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: on success the shim returns a malloc'd buffer of `len` bytes that we own.
        let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        // SAFETY: allocated with malloc by the shim and not used after this point.
        unsafe { shim::shim_free(data.cast()) };
        Ok(value)
    }

    fn key(&self, op: &str, key: &str) -> Result<CString> {
        CString::new(key).map_err(|_| Error::Dist {
            op: op.into(),
            message: format!("key {key:?} contains a NUL byte"),
        })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from `shim_dist_init` and is destroyed exactly once.
        let err = unsafe { shim::shim_dist_destroy(self.handle) };
        self.handle = std::ptr::null_mut();
        if let Err(message) = shim::check(err) {
            tracing::warn!(
                rank = self.env.rank,
                "destroying the process group: {message}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn env_var_of(err: Error) -> String {
        match err {
            Error::Env { var, .. } => var,
            other => panic!("expected an Env error, got {other}"),
        }
    }

    #[test]
    fn no_launcher_is_none() {
        assert_eq!(DistEnv::from_lookup(lookup(&[])).ok(), Some(None));
    }

    #[test]
    fn torchrun_env() {
        let env = DistEnv::from_lookup(lookup(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ]))
        .expect("valid")
        .expect("set");
        assert_eq!(
            env,
            DistEnv {
                rank: 3,
                world_size: 4,
                local_rank: 1,
                local_world_size: 2,
                master_addr: "node0".into(),
                master_port: 1234
            }
        );
    }

    #[test]
    fn slurm_env() {
        let env = DistEnv::from_lookup(lookup(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NNODES", "2"),
        ]))
        .expect("valid")
        .expect("set");
        assert_eq!(env.rank, 5);
        assert_eq!(env.world_size, 8);
        assert_eq!(env.local_rank, 1);
        assert_eq!(env.local_world_size, 4);
        assert_eq!(env.master_addr, "127.0.0.1");
        assert_eq!(env.master_port, DEFAULT_MASTER_PORT);
    }

    #[test]
    fn bad_envs_name_the_variable() {
        let base = [("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("RANK", "2"), ("WORLD_SIZE", "2")], "RANK"),
            (&[("RANK", "x"), ("WORLD_SIZE", "2")], "RANK"),
            (&[("RANK", "0"), ("WORLD_SIZE", "-1")], "WORLD_SIZE"),
            (&[("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE"),
            (&[("RANK", "0")], "WORLD_SIZE"),
            (&[("WORLD_SIZE", "2")], "RANK"),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "2")],
                "LOCAL_RANK",
            ),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")],
                "MASTER_PORT",
            ),
            (
                &[("SLURM_PROCID", "4"), ("SLURM_NTASKS", "4")],
                "SLURM_PROCID",
            ),
            (&[("SLURM_PROCID", "0")], "SLURM_NTASKS"),
        ];
        for (vars, want) in cases {
            let mut all: Vec<(&str, &str)> = base.to_vec();
            all.retain(|(k, _)| !vars.iter().any(|(vk, _)| vk == k));
            all.extend_from_slice(vars);
            let err = DistEnv::from_lookup(lookup(&all)).expect_err("must fail");
            assert_eq!(env_var_of(err), *want, "{vars:?}");
        }
        let no_addr = DistEnv::from_lookup(lookup(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("MASTER_PORT", "1"),
        ]))
        .expect_err("must fail");
        assert_eq!(env_var_of(no_addr), "MASTER_ADDR");
    }
}
