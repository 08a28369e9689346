//! Data-parallel training over a c10d [`ProcessGroup`]: the pieces the trainer needs on top of
//! the raw collectives.
//!
//! * the recipe hash is compared across ranks through the store at start;
//! * parameters are broadcast from rank 0 so every replica starts from the same weights;
//! * gradients are averaged in coalesced buckets of about `trainer.bucket_mb` MiB, one
//!   collective per bucket: either after backward ([`DataParallel::all_reduce_gradients`]) or
//!   overlapped with it ([`OverlapReducer`]: a bucket's all-reduce starts as soon as backward
//!   has finished its gradients, while the earlier blocks are still being differentiated);
//! * small byte strings (rank 0's resume decision, every rank's data-stream state, rank 0's
//!   save result) travel through the rendezvous store under per-exchange keys.
//!
//! Every rank must call the same methods in the same order. Exchanges that can end in an error
//! finish with a barrier first, so that rank 0 (which hosts the store) does not exit while
//! another rank still reads from it, and every rank reports the error rather than a lost peer.

use std::cell::Cell;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::dist::{join, Backend, DistEnv, PendingReduce, ProcessGroup, ReduceOp};
use crate::error::{Error, Result};

/// A data-parallel group: the process group plus the bucketing plan's size cap.
#[derive(Debug)]
pub struct DataParallel {
    pg: ProcessGroup,
    bucket_bytes: usize,
    /// Numbers the store exchanges, so that keys are never reused (every rank counts alike).
    exchanges: Cell<u64>,
}

impl DataParallel {
    /// Joins the group of `env` (Gloo for CPU, NCCL for CUDA devices); blocks until every rank
    /// has joined or `timeout` has passed, which also bounds every later collective.
    pub fn new(env: &DistEnv, device: Device, timeout: Duration, bucket_mb: f64) -> Result<Self> {
        if !(bucket_mb.is_finite() && bucket_mb > 0.0) {
            return Err(Error::config(
                "trainer.bucket_mb",
                format!("{bucket_mb} must be a positive number of MiB"),
            ));
        }
        let pg = join(env, Backend::for_device(device), timeout)?;
        Ok(DataParallel {
            pg,
            bucket_bytes: ((bucket_mb * 1024.0 * 1024.0) as usize).max(1),
            exchanges: Cell::new(0),
        })
    }

    pub fn rank(&self) -> usize {
        self.pg.rank()
    }

    pub fn world_size(&self) -> usize {
        self.pg.world_size()
    }

    pub fn process_group(&self) -> &ProcessGroup {
        &self.pg
    }

    fn next_prefix(&self, tag: &str) -> String {
        let n = self.exchanges.get() + 1;
        self.exchanges.set(n);
        format!("corenet/{n}/{tag}")
    }

    /// Fails on every rank, naming both hashes, unless all ranks resolved the same recipe.
    pub fn check_recipe_hash(&self, hash: &str) -> Result<()> {
        let prefix = self.next_prefix("recipe_hash");
        self.pg
            .store_set(&format!("{prefix}/{}", self.rank()), hash.as_bytes())?;
        let mut mismatch = None;
        let root =
            String::from_utf8_lossy(&self.pg.store_get(&format!("{prefix}/0"))?).into_owned();
        for rank in 1..self.world_size() {
            let other = self.pg.store_get(&format!("{prefix}/{rank}"))?;
            let other = String::from_utf8_lossy(&other).into_owned();
            if other != root && mismatch.is_none() {
                mismatch = Some((rank, other));
            }
        }
        self.pg.barrier()?;
        match mismatch {
            None => Ok(()),
            Some((rank, hash)) => Err(Error::RecipeMismatch {
                rank,
                hash,
                root_hash: root,
            }),
        }
    }

    /// Copies rank 0's value of every tensor into the other ranks' (in place, no autograd).
    pub fn broadcast_parameters(&self, params: &[(String, Tensor)]) -> Result<()> {
        for (name, p) in params {
            let target = p.detach();
            self.pg
                .broadcast(&target, 0)
                .map_err(|e| match Error::from(e) {
                    Error::Dist { op, message } => Error::Dist {
                        op: format!("{op} of parameter `{name}`"),
                        message,
                    },
                    other => other,
                })?;
        }
        Ok(())
    }

    /// Averages the gradients over ranks in place, one coalesced collective per bucket;
    /// returns the number of buckets. Every rank must pass its gradients in the same order
    /// (undefined gradients are left out, as they are on every rank of the same model).
    pub fn all_reduce_gradients(&self, grads: &[Tensor]) -> Result<usize> {
        let layout: Vec<(Kind, Device, usize)> = grads
            .iter()
            .map(|g| {
                (
                    g.kind(),
                    g.device(),
                    g.numel() * g.kind().elt_size_in_bytes(),
                )
            })
            .collect();
        let buckets = plan_buckets(&layout, self.bucket_bytes);
        for bucket in &buckets {
            let tensors: Vec<Tensor> = bucket.iter().map(|&i| grads[i].shallow_clone()).collect();
            self.pg.all_reduce_coalesced(&tensors, ReduceOp::Avg)?;
        }
        Ok(buckets.len())
    }

    /// A reducer for gradients handed over in the order backward finishes them.
    pub fn overlap_reducer(&self) -> OverlapReducer<'_> {
        OverlapReducer {
            dp: self,
            bucket: Vec::new(),
            bytes: 0,
            in_flight: Vec::new(),
        }
    }

    /// Sums `t` over ranks in place.
    pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
        Ok(self.pg.all_reduce_sum(t)?)
    }

    /// Every rank contributes `value`; rank 0 gets all of them in rank order (`Some`), the
    /// others `None`. No barrier: call [`DataParallel::share_result`] or
    /// [`DataParallel::barrier`] afterwards.
    pub fn gather_to_root(&self, tag: &str, value: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        let prefix = self.next_prefix(tag);
        if self.rank() != 0 {
            self.pg
                .store_set(&format!("{prefix}/{}", self.rank()), value)?;
            return Ok(None);
        }
        let mut all = vec![value.to_vec()];
        for rank in 1..self.world_size() {
            all.push(self.pg.store_get(&format!("{prefix}/{rank}"))?);
        }
        Ok(Some(all))
    }

    /// Rank 0's outcome of a step only it performs (choosing a checkpoint, writing one),
    /// shared with every rank, followed by a barrier: rank 0 passes `Some(result)`, the others
    /// `None`. On the other ranks an error of rank 0 becomes [`Error::Dist`] quoting it.
    pub fn share_result(
        &self,
        tag: &str,
        root: Option<Result<Vec<u8>, String>>,
    ) -> Result<Vec<u8>> {
        let prefix = self.next_prefix(tag);
        let outcome = if self.rank() == 0 {
            let root = root.unwrap_or_else(|| Err("rank 0 gave no result".into()));
            let mut encoded = vec![u8::from(root.is_ok())];
            match &root {
                Ok(bytes) => encoded.extend_from_slice(bytes),
                Err(message) => encoded.extend_from_slice(message.as_bytes()),
            }
            self.pg.store_set(&prefix, &encoded)?;
            root
        } else {
            let encoded = self.pg.store_get(&prefix)?;
            match encoded.split_first() {
                Some((1, bytes)) => Ok(bytes.to_vec()),
                Some((_, message)) => Err(String::from_utf8_lossy(message).into_owned()),
                None => Err("empty reply".into()),
            }
        };
        self.pg.barrier()?;
        outcome.map_err(|message| Error::Dist {
            op: tag.into(),
            message: format!("rank 0 failed: {message}"),
        })
    }

    pub fn barrier(&self) -> Result<()> {
        Ok(self.pg.barrier()?)
    }
}

/// Averages gradients over ranks while backward runs: tensors are appended to the open bucket
/// as their stage finishes, and the bucket's all-reduce starts once it holds `bucket_mb` MiB
/// (or the next tensor has another dtype or device). Every rank hands over the same tensors in
/// the same order, so the buckets match across ranks.
pub struct OverlapReducer<'a> {
    dp: &'a DataParallel,
    bucket: Vec<Tensor>,
    bytes: usize,
    in_flight: Vec<PendingReduce>,
}

impl OverlapReducer<'_> {
    /// Hands over gradients that backward will not touch again this step.
    pub fn ready(&mut self, grads: &[Tensor]) -> Result<()> {
        for g in grads.iter().filter(|g| g.defined()) {
            let fits = self
                .bucket
                .first()
                .is_none_or(|b| b.kind() == g.kind() && b.device() == g.device());
            if !fits {
                self.launch()?;
            }
            self.bytes += g.numel() * g.kind().elt_size_in_bytes();
            self.bucket.push(g.shallow_clone());
            if self.bytes >= self.dp.bucket_bytes {
                self.launch()?;
            }
        }
        Ok(())
    }

    fn launch(&mut self) -> Result<()> {
        if self.bucket.is_empty() {
            return Ok(());
        }
        let bucket = std::mem::take(&mut self.bucket);
        self.bytes = 0;
        let pending = self.dp.pg.all_reduce_start(&bucket, ReduceOp::Avg)?;
        self.in_flight.push(pending);
        Ok(())
    }

    /// Starts the last bucket and waits for all of them; returns the number of buckets.
    pub fn finish(mut self) -> Result<usize> {
        self.launch()?;
        let count = self.in_flight.len();
        for pending in self.in_flight.drain(..) {
            pending.finish()?;
        }
        Ok(count)
    }
}

/// Groups consecutive tensors (given as dtype, device, bytes) into buckets of at most `cap`
/// bytes that share one dtype and device; a tensor larger than `cap` gets a bucket of its own.
pub fn plan_buckets(layout: &[(Kind, Device, usize)], cap: usize) -> Vec<Vec<usize>> {
    let mut buckets: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0usize;
    for (i, &(kind, device, size)) in layout.iter().enumerate() {
        let fits = current.first().is_some_and(|&first| {
            let (k, d, _) = layout[first];
            k == kind && d == device && bytes + size <= cap
        });
        if !fits && !current.is_empty() {
            buckets.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(i);
        bytes += size;
    }
    if !current.is_empty() {
        buckets.push(current);
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_cap_and_the_dtype() {
        let f = |n| (Kind::Float, Device::Cpu, n);
        let b = |n| (Kind::BFloat16, Device::Cpu, n);
        assert_eq!(plan_buckets(&[], 10), Vec::<Vec<usize>>::new());
        assert_eq!(
            plan_buckets(&[f(4), f(4), f(4), f(20), f(1)], 10),
            vec![vec![0, 1], vec![2], vec![3], vec![4]]
        );
        assert_eq!(
            plan_buckets(&[f(1), b(1), b(1), f(1)], 100),
            vec![vec![0], vec![1, 2], vec![3]]
        );
        assert_eq!(plan_buckets(&[f(5), f(5)], 10), vec![vec![0, 1]]);
    }
}
