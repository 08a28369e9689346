//! ZeRO-1: AdamW with its f32 master weights and moments partitioned across data-parallel
//! ranks.
//!
//! Every parameter is laid end to end in one flat index space (model order), padded to a
//! multiple of the world size; rank r owns elements `[r·L, (r+1)·L)` of it. A step
//! reduce-scatters the flat gradient (each rank receives the average of its own range),
//! computes the global norm from the ranks' partial sums of squares, updates its range with
//! the same AdamW arithmetic as the replicated optimizer (one slot per parameter piece inside
//! the range, so weight decay still follows the parameter's rank), and all-gathers the updated
//! range in the model's dtype back into every replica.
//!
//! Optimizer memory per rank is 12 bytes × parameters / world size instead of 12 bytes ×
//! parameters (8 for f32 runs, where the master copy is not kept apart from the weights in a
//! checkpoint).
//!
//! Checkpoints: each rank writes its own range of the flat space (the per-rank layout,
//! `crate::checkpoint::rank_parts`), and loading reads only the range a rank owns, out of the
//! per-rank parts or out of the replicated optimizer's per-parameter file (`exp_avg.NAME`, …),
//! memory-mapped. So a checkpoint written on N ranks, sharded or not, resumes on M ranks
//! sharded or not.

use std::collections::HashSet;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::rank_parts::FlatSource;
use crate::dist::{ProcessGroup, ReduceOp};
use crate::error::{Error, Result};
use crate::optim::adamw::{step_value, update, OptimizerConfig, Slot};
use corenet_ffi::{clear_gradients, MappedFile};

/// Where every parameter lies in the flat index space and which range a rank owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatLayout {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<i64>>,
    /// Start of each parameter in the flat space.
    pub offsets: Vec<usize>,
    pub numels: Vec<usize>,
    /// Elements of all parameters (unpadded).
    pub total: usize,
    pub world: usize,
    /// Elements per rank: `ceil(total / world)`.
    pub shard_len: usize,
}

/// The part of one parameter inside a rank's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub param: usize,
    /// First element within the (flattened) parameter.
    pub param_start: usize,
    /// First element within the rank's range.
    pub shard_start: usize,
    pub len: usize,
}

impl FlatLayout {
    pub fn new(params: &[(String, Vec<i64>)], world: usize) -> Self {
        let world = world.max(1);
        let mut offsets = Vec::with_capacity(params.len());
        let mut numels = Vec::with_capacity(params.len());
        let mut total = 0usize;
        for (_, shape) in params {
            let n = shape.iter().product::<i64>().max(0) as usize;
            offsets.push(total);
            numels.push(n);
            total += n;
        }
        FlatLayout {
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            shapes: params.iter().map(|(_, s)| s.clone()).collect(),
            offsets,
            numels,
            total,
            world,
            shard_len: total.div_ceil(world).max(1),
        }
    }

    pub fn padded(&self) -> usize {
        self.shard_len * self.world
    }

    /// The pieces of parameters inside the flat range `[start, start + len)`, in flat order:
    /// (parameter, first element within it, elements).
    pub fn pieces(&self, start: usize, len: usize) -> Vec<(usize, usize, usize)> {
        let end = start + len;
        (0..self.names.len())
            .filter_map(|i| {
                let a = self.offsets[i].max(start);
                let b = (self.offsets[i] + self.numels[i]).min(end);
                (a < b).then(|| (i, a - self.offsets[i], b - a))
            })
            .collect()
    }

    /// The pieces of parameters inside `rank`'s range, in flat order.
    pub fn segments(&self, rank: usize) -> Vec<Segment> {
        let lo = rank * self.shard_len;
        let hi = lo + self.shard_len;
        (0..self.names.len())
            .filter_map(|i| {
                let a = self.offsets[i].max(lo);
                let b = (self.offsets[i] + self.numels[i]).min(hi);
                (a < b).then(|| Segment {
                    param: i,
                    param_start: a - self.offsets[i],
                    shard_start: a - lo,
                    len: b - a,
                })
            })
            .collect()
    }
}

#[derive(Debug)]
pub struct ShardedAdamW {
    config: OptimizerConfig,
    params: Vec<(String, Tensor)>,
    layout: FlatLayout,
    rank: usize,
    segments: Vec<Segment>,
    /// The model's dtype (gradients are reduced and parameters gathered in it).
    kind: Kind,
    device: Device,
    /// This rank's range: f32 master weights, moments, and the reduced gradient (model dtype).
    master: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    grad: Tensor,
    /// One f32 step counter per segment, the form `_fused_adamw_` takes (the only record of
    /// the count: skips are decided on the device).
    steps: Vec<Tensor>,
}

impl ShardedAdamW {
    /// Partitions the optimizer of `named` (every rank passes the same parameters, equal across
    /// ranks) for `rank` of `world`.
    pub fn new(
        named: Vec<(String, Tensor)>,
        config: &OptimizerConfig,
        rank: usize,
        world: usize,
    ) -> Result<Self> {
        config.validate()?;
        let first = named
            .first()
            .ok_or_else(|| Error::OptimizerState("the model has no parameters".into()))?;
        let (kind, device) = (first.1.kind(), first.1.device());
        if let Some((name, p)) = named.iter().find(|(_, p)| p.kind() != kind) {
            return Err(Error::OptimizerState(format!(
                "the sharded optimizer needs one parameter dtype; `{name}` is {:?}, not {kind:?}",
                p.kind()
            )));
        }
        let shapes: Vec<(String, Vec<i64>)> =
            named.iter().map(|(n, p)| (n.clone(), p.size())).collect();
        let layout = FlatLayout::new(&shapes, world);
        let segments = layout.segments(rank);
        let zeros = || Tensor::zeros([layout.shard_len as i64], (Kind::Float, device));
        let optim = ShardedAdamW {
            config: config.clone(),
            master: zeros(),
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
            grad: Tensor::zeros([layout.shard_len as i64], (kind, device)),
            steps: segments
                .iter()
                .map(|_| Tensor::zeros([], (Kind::Float, device)))
                .collect(),
            params: named,
            layout,
            rank,
            segments,
            kind,
            device,
        };
        optim.master_from_params();
        Ok(optim)
    }

    pub fn layout(&self) -> &FlatLayout {
        &self.layout
    }

    /// Updates taken so far, read from the device (a host sync; 0 on a rank owning nothing).
    pub fn step_count(&self) -> u64 {
        self.steps.first().map_or(0, step_value)
    }

    /// Bytes of optimizer state this rank holds (master weights and two moments, f32).
    pub fn state_bytes(&self) -> usize {
        3 * 4 * self.layout.shard_len
    }

    /// Copies this rank's range of the model's weights into the f32 master weights.
    fn master_from_params(&self) {
        tch::no_grad(|| {
            for s in &self.segments {
                let (_, p) = &self.params[s.param];
                let src = p
                    .reshape([-1])
                    .narrow(0, s.param_start as i64, s.len as i64);
                self.master
                    .narrow(0, s.shard_start as i64, s.len as i64)
                    .copy_(&src.to_kind(Kind::Float));
            }
        });
    }

    /// Reduce-scatters the gradients: this rank receives the average over ranks of its range.
    pub fn reduce_gradients(&self, pg: &ProcessGroup) -> Result<()> {
        // (padded,) in the model's dtype; undefined gradients count as zeros.
        let mut pieces: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| {
                let g = p.grad();
                if g.defined() {
                    g.reshape([-1])
                } else {
                    Tensor::zeros([p.numel() as i64], (self.kind, self.device))
                }
            })
            .collect();
        let pad = self.layout.padded() - self.layout.total;
        if pad > 0 {
            pieces.push(Tensor::zeros([pad as i64], (self.kind, self.device)));
        }
        let flat = Tensor::cat(&pieces, 0);
        Ok(pg.reduce_scatter(&flat, &self.grad, ReduceOp::Avg)?)
    }

    /// Global L2 norm of the reduced gradient (f32, on the device): the ranges' sums of squares
    /// are summed over ranks.
    pub fn grad_norm(&self, pg: &ProcessGroup) -> Result<Tensor> {
        let squares = self
            .grad
            .to_kind(Kind::Float)
            .square()
            .sum(Kind::Float)
            .reshape([1]);
        pg.all_reduce_sum(&squares)?;
        Ok(squares.sqrt().reshape([]))
    }

    /// Clips the reduced gradient to `max_norm` as `clip_grad_norm_` does; returns the norm
    /// before clipping.
    pub fn clip_grad_norm(&self, pg: &ProcessGroup, max_norm: f64) -> Result<Tensor> {
        let norm = self.grad_norm(pg)?;
        let factor = (max_norm / (&norm + 1e-6)).clamp_max(1.0);
        tch::no_grad(|| {
            let _ = self.grad.shallow_clone().g_mul_(&factor.to_kind(self.kind));
        });
        Ok(norm)
    }

    /// Updates this rank's range and all-gathers every range into the model's parameters;
    /// where `found_inf` holds 1 the ranges stay as they were (every rank holds the same flag).
    pub fn step(&mut self, pg: &ProcessGroup, lr: f64, found_inf: Option<&Tensor>) -> Result<()> {
        let grad = self.grad.to_kind(Kind::Float);
        let slice = |t: &Tensor, s: &Segment| t.narrow(0, s.shard_start as i64, s.len as i64);
        let slots: Vec<Slot> = self
            .segments
            .iter()
            .zip(&self.steps)
            .map(|(s, step)| Slot {
                weights: slice(&self.master, s),
                grad: slice(&grad, s),
                exp_avg: slice(&self.exp_avg, s),
                exp_avg_sq: slice(&self.exp_avg_sq, s),
                step: step.shallow_clone(),
                decay: self.params[s.param].1.dim() >= 2,
            })
            .collect();
        update(&self.config, lr, &slots, found_inf)?;
        self.gather_parameters(pg)
    }

    /// Every rank's updated range, in the model's dtype, into every replica's parameters.
    fn gather_parameters(&self, pg: &ProcessGroup) -> Result<()> {
        let own = self.master.to_kind(self.kind);
        let flat = Tensor::empty([self.layout.padded() as i64], (self.kind, self.device));
        pg.all_gather(&own, &flat)?;
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter().enumerate() {
                let src = flat.narrow(
                    0,
                    self.layout.offsets[i] as i64,
                    self.layout.numels[i] as i64,
                );
                p.shallow_clone().copy_(&src.view(p.size().as_slice()));
            }
        });
        Ok(())
    }

    /// Drops every replica gradient (PyTorch's default `set_to_none`), see [`clear_gradients`].
    pub fn zero_grad(&self) -> Result<()> {
        Ok(clear_gradients(self.params.iter().map(|(_, p)| p))?)
    }

    /// The moments this optimizer keeps in a checkpoint: `exp_avg`, `exp_avg_sq`, and `master`
    /// when the model is not f32 (an f32 model's weights are the master weights).
    pub fn moments(&self) -> Vec<&'static str> {
        match self.kind == Kind::Float {
            true => vec!["exp_avg", "exp_avg_sq"],
            false => vec!["exp_avg", "exp_avg_sq", "master"],
        }
    }

    /// This rank's range of each moment without the padding (the range it writes into a
    /// per-rank checkpoint): views of the device buffers, copied by the caller.
    pub fn own_state(&self) -> Vec<(String, Tensor)> {
        let (_, len) = crate::checkpoint::rank_parts::own_range(&self.layout, self.rank);
        self.moments()
            .into_iter()
            .map(|moment| {
                let t = match moment {
                    "exp_avg" => &self.exp_avg,
                    "exp_avg_sq" => &self.exp_avg_sq,
                    _ => &self.master,
                };
                (moment.to_string(), t.narrow(0, 0, len as i64))
            })
            .collect()
    }

    /// Restores this rank's range from a per-rank checkpoint written on any number of ranks,
    /// after `step` updates, reading only the range. Master weights missing from it (f32 runs)
    /// come from the model's weights, which must already be loaded.
    pub fn load_flat(&mut self, source: &FlatSource, step: u64) -> Result<()> {
        source.check_model(&self.layout)?;
        let offsets = self.layout.offsets.clone();
        self.fill_range(source.has("master"), step, |moment, s| {
            source.read(moment, offsets[s.param] + s.param_start, s.len)
        })
    }

    /// Copies the master weights from the model (all of them first, for f32 runs that keep
    /// none in the checkpoint), then every moment's pieces of this rank's range from `read`
    /// (moment, segment), and sets the step counters to `step`.
    fn fill_range(
        &mut self,
        has_master: bool,
        step: u64,
        read: impl Fn(&str, &Segment) -> Result<Tensor>,
    ) -> Result<()> {
        self.master_from_params();
        let mut targets = vec![("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)];
        if has_master {
            targets.push(("master", &self.master));
        }
        for (moment, target) in targets {
            for s in &self.segments {
                let piece = read(moment, s)?;
                tch::no_grad(|| {
                    target
                        .narrow(0, s.shard_start as i64, s.len as i64)
                        .copy_(&piece.to_device(self.device));
                });
            }
        }
        for t in &self.steps {
            let _ = t.shallow_clone().fill_(step as f64);
        }
        Ok(())
    }

    /// Restores this rank's range from an optimizer file in the per-parameter layout (written
    /// by either optimizer on any number of ranks), after `step` updates. Only the range is
    /// read. Master weights missing from the file (f32 runs) come from the model's weights,
    /// which must already be loaded.
    pub fn load_file(&mut self, path: &Path, step: u64) -> Result<()> {
        // Checkpoints are written once into a fresh directory and never changed.
        let map = MappedFile::open_immutable(path)?;
        let tensors = SafeTensors::deserialize(&map).map_err(|e| {
            Error::OptimizerState(format!("{}: not a safetensors file: {e}", path.display()))
        })?;
        self.check_names(path, &tensors)?;
        let has_master = self
            .layout
            .names
            .iter()
            .all(|n| tensors.tensor(&format!("master.{n}")).is_ok());
        let layout = self.layout.clone();
        self.fill_range(has_master, step, |prefix, s| {
            let name = format!("{prefix}.{}", layout.names[s.param]);
            read_range(path, &tensors, &name, &layout, s)
        })
    }

    /// Every tensor of the file must belong to this model: `exp_avg.*` and `exp_avg_sq.*` of
    /// every parameter, optionally `master.*`.
    fn check_names(&self, path: &Path, tensors: &SafeTensors<'_>) -> Result<()> {
        let known: HashSet<&str> = self.layout.names.iter().map(String::as_str).collect();
        for name in tensors.names() {
            let param = ["exp_avg_sq.", "exp_avg.", "master."]
                .iter()
                .find_map(|p| name.strip_prefix(p));
            if !param.is_some_and(|p| known.contains(p)) {
                return Err(Error::OptimizerState(format!(
                    "{}: unexpected `{name}` (from another model?)",
                    path.display()
                )));
            }
        }
        Ok(())
    }
}

/// Elements `[param_start, param_start + len)` of the flattened f32 tensor `name`.
fn read_range(
    path: &Path,
    tensors: &SafeTensors<'_>,
    name: &str,
    layout: &FlatLayout,
    s: &Segment,
) -> Result<Tensor> {
    let view = tensors
        .tensor(name)
        .map_err(|_| Error::OptimizerState(format!("{}: missing `{name}`", path.display())))?;
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    if shape != layout.shapes[s.param] || view.dtype() != Dtype::F32 {
        return Err(Error::OptimizerState(format!(
            "{}: `{name}` is {:?} {shape:?}, the model needs F32 {:?}",
            path.display(),
            view.dtype(),
            layout.shapes[s.param]
        )));
    }
    let bytes = &view.data()[s.param_start * 4..(s.param_start + s.len) * 4];
    Ok(Tensor::f_from_data_size(
        bytes,
        &[s.len as i64],
        Kind::Float,
    )?)
}

/// A layout of 1-D parameters `p0, p1, …` with these lengths (unit tests).
#[cfg(test)]
pub(crate) fn test_layout(shapes: &[i64], world: usize) -> FlatLayout {
    let params: Vec<(String, Vec<i64>)> = shapes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("p{i}"), vec![n]))
        .collect();
    FlatLayout::new(&params, world)
}

#[cfg(test)]
mod tests {
    use super::test_layout as layout;
    use super::*;

    #[test]
    fn ranges_cover_every_element_once() {
        let l = layout(&[5, 3, 9, 1], 3);
        assert_eq!((l.total, l.shard_len, l.padded()), (18, 6, 18));
        let mut covered = vec![0u8; l.total];
        for rank in 0..3 {
            for s in l.segments(rank) {
                assert!(s.shard_start + s.len <= l.shard_len);
                for k in 0..s.len {
                    covered[l.offsets[s.param] + s.param_start + k] += 1;
                }
            }
        }
        assert!(covered.iter().all(|&c| c == 1));
        assert_eq!(
            l.segments(1),
            vec![
                Segment {
                    param: 1,
                    param_start: 1,
                    shard_start: 0,
                    len: 2
                },
                Segment {
                    param: 2,
                    param_start: 0,
                    shard_start: 2,
                    len: 4
                },
            ]
        );
    }

    #[test]
    fn the_last_range_is_padded() {
        let l = layout(&[7], 4);
        assert_eq!((l.shard_len, l.padded()), (2, 8));
        assert_eq!(
            l.segments(3),
            vec![Segment {
                param: 0,
                param_start: 6,
                shard_start: 0,
                len: 1
            }]
        );
        let l = layout(&[2], 4);
        assert!(l.segments(2).is_empty() && l.segments(3).is_empty());
    }
}
