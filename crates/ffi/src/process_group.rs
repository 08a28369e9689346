//! c10d process groups through the C++ shim: a TCPStore rendezvous hosted by rank 0, then Gloo
//! (CPU tensors) or NCCL (CUDA tensors, with the `nccl` feature) collectives. Every blocking
//! call honours the group's timeout, so a dead or stuck rank gives an [`Error::Dist`] rather
//! than a hang.
//!
//! Every rank must issue the same collectives in the same order. Rank 0 hosts the rendezvous
//! store, so end with [`ProcessGroup::barrier`] before dropping the group if other ranks may
//! still use the store. Reading the launcher's environment is the trainer's business
//! (`corenet_train::dist::DistEnv`); this module takes the few values c10d needs.

use std::ffi::{c_int, c_void, CString};
use std::time::Duration;

use tch::{Device, Tensor};

use crate::error::{Error, Result};
use crate::shim;

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

/// What c10d needs to join a group: the store's address and this process's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    /// The CUDA device an NCCL group binds to.
    pub local_rank: usize,
}

fn rendezvous_err(var: &str, message: impl Into<String>) -> Error {
    Error::Rendezvous {
        var: var.into(),
        message: message.into(),
    }
}

impl Rendezvous {
    /// The values as C integers, refusing what c10d could not represent.
    fn c_values(&self) -> Result<(CString, c_int, c_int, c_int, c_int)> {
        let addr = CString::new(self.master_addr.as_str())
            .map_err(|_| rendezvous_err("MASTER_ADDR", "contains a NUL byte"))?;
        let int = |var: &str, v: usize| {
            c_int::try_from(v).map_err(|_| rendezvous_err(var, format!("{v} is too large")))
        };
        if self.rank >= self.world_size {
            return Err(rendezvous_err(
                "RANK",
                format!(
                    "rank {} is not below the world size {}",
                    self.rank, self.world_size
                ),
            ));
        }
        Ok((
            addr,
            c_int::from(self.master_port),
            int("RANK", self.rank)?,
            int("WORLD_SIZE", self.world_size)?,
            int("LOCAL_RANK", self.local_rank)?,
        ))
    }
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
    rendezvous: Rendezvous,
    backend: Backend,
    timeout: Duration,
}

// SAFETY: the C++ process group is not tied to the thread that created it, so the handle may
// move between threads. It is not `Sync`: c10d's collective sequence numbers are not
// synchronised, and every rank must issue collectives in one order anyway.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group at `at`: blocks until all `world_size` ranks have joined or `timeout`
    /// has passed. `timeout` also bounds every later collective and store read.
    pub fn new(at: &Rendezvous, backend: Backend, timeout: Duration) -> Result<Self> {
        let (addr, port, rank, world, local_rank) = at.c_values()?;
        let timeout_ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: `addr` is a valid C string for the call; `handle` is a valid out-pointer.
        let err = unsafe {
            shim::shim_dist_init(
                addr.as_ptr(),
                port,
                rank,
                world,
                timeout_ms,
                backend.code(),
                local_rank,
                &mut handle,
            )
        };
        shim::check(err).map_err(|message| Error::Dist {
            op: "init".into(),
            message: format!(
                "rank {}/{} ({backend:?}, master {}:{}): {message}",
                at.rank, at.world_size, at.master_addr, at.master_port
            ),
        })?;
        Ok(ProcessGroup {
            handle,
            rendezvous: at.clone(),
            backend,
            timeout,
        })
    }

    pub fn rank(&self) -> usize {
        self.rendezvous.rank
    }

    pub fn world_size(&self) -> usize {
        self.rendezvous.world_size
    }

    pub fn local_rank(&self) -> usize {
        self.rendezvous.local_rank
    }

    pub fn rendezvous(&self) -> &Rendezvous {
        &self.rendezvous
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
            message: format!(
                "rank {}/{}: {message}",
                self.rendezvous.rank, self.rendezvous.world_size
            ),
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
            who: format!(
                "rank {}/{}",
                self.rendezvous.rank, self.rendezvous.world_size
            ),
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
        if root >= self.rendezvous.world_size {
            return Err(Error::Dist {
                op: "broadcast".into(),
                message: format!(
                    "root {root} is not a rank of a world of {}",
                    self.rendezvous.world_size
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
        // SAFETY: on success the shim returned a malloc'd buffer of `len` bytes (or null).
        Ok(unsafe { shim::take_buffer(data, len) })
    }

    fn key(&self, op: &str, key: &str) -> Result<CString> {
        store_key(op, key)
    }

    /// A handle on the group's key store that another thread may use (a background checkpoint
    /// writer agreeing with the other ranks while this thread runs collectives). It stays valid
    /// after the group is dropped.
    pub fn shared_store(&self) -> Result<SharedStore> {
        let mut handle: *mut c_void = std::ptr::null_mut();
        // SAFETY: live handle; `handle` is a valid out-pointer.
        let err = unsafe { shim::shim_store_share(self.handle, &mut handle) };
        self.check("store_share", err)?;
        Ok(SharedStore {
            handle,
            who: format!(
                "rank {}/{}",
                self.rendezvous.rank, self.rendezvous.world_size
            ),
        })
    }
}

fn store_key(op: &str, key: &str) -> Result<CString> {
    CString::new(key).map_err(|_| Error::Dist {
        op: op.into(),
        message: format!("key {key:?} contains a NUL byte"),
    })
}

/// The keys of [`ProcessGroup::store_set`] and [`ProcessGroup::store_get`], from any thread.
#[derive(Debug)]
pub struct SharedStore {
    handle: *mut c_void,
    who: String,
}

// SAFETY: the handle owns a reference to a c10d TCPStore client, which locks around each of its
// operations, so it may be used from several threads at once and dropped on any of them.
unsafe impl Send for SharedStore {}
unsafe impl Sync for SharedStore {}

impl SharedStore {
    fn check(&self, op: &str, err: *mut std::ffi::c_char) -> Result<()> {
        shim::check(err).map_err(|message| Error::Dist {
            op: op.into(),
            message: format!("{}: {message}", self.who),
        })
    }

    /// Publishes `value` under `key`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let c_key = store_key("store_set", key)?;
        // SAFETY: live handle; `c_key` and `value` are valid for the call; the shim copies them.
        let err = unsafe {
            shim::shim_shared_store_set(self.handle, c_key.as_ptr(), value.as_ptr(), value.len())
        };
        self.check("store_set", err)
    }

    /// Reads `key`, waiting up to the group's timeout for some rank to set it.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        let c_key = store_key("store_get", key)?;
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: live handle; `c_key` is valid; `data` and `len` are valid out-pointers.
        let err = unsafe {
            shim::shim_shared_store_get(self.handle, c_key.as_ptr(), &mut data, &mut len)
        };
        self.check(&format!("store_get `{key}`"), err)?;
        // SAFETY: on success the shim returned a malloc'd buffer of `len` bytes (or null).
        Ok(unsafe { shim::take_buffer(data, len) })
    }

    /// Whether `key` is set, without waiting.
    pub fn contains(&self, key: &str) -> Result<bool> {
        let c_key = store_key("store_check", key)?;
        let mut found: c_int = 0;
        // SAFETY: live handle; `c_key` is valid; `found` is a valid out-pointer.
        let err = unsafe { shim::shim_shared_store_check(self.handle, c_key.as_ptr(), &mut found) };
        self.check(&format!("store_check `{key}`"), err)?;
        Ok(found != 0)
    }
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        // SAFETY: the handle came from `shim_store_share` and is released exactly once.
        unsafe { shim::shim_store_release(self.handle) };
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the handle came from `shim_dist_init` and is destroyed exactly once.
        let err = unsafe { shim::shim_dist_destroy(self.handle) };
        self.handle = std::ptr::null_mut();
        if let Err(message) = shim::check(err) {
            tracing::warn!(
                rank = self.rendezvous.rank,
                "destroying the process group: {message}"
            );
        }
    }
}
