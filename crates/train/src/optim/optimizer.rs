//! The trainer's optimizer: AdamW replicated on every rank, or partitioned across the ranks of
//! a data-parallel run (ZeRO-1, [`ShardedAdamW`]). Both see the same step: reduce the
//! gradients, measure (and clip) their global norm, update, clear.

use std::path::Path;

use tch::Tensor;

use crate::checkpoint::rank_parts::{own_range, FlatSource};
use crate::dist::data_parallel::DataParallel;
use crate::error::Result;
use crate::optim::adamw::{AdamW, OptimizerConfig};
use crate::optim::zero1::{FlatLayout, ShardedAdamW};

#[derive(Debug)]
pub enum Optimizer {
    Replicated(AdamW),
    Sharded(Box<ShardedAdamW>),
}

impl Optimizer {
    /// Sharded when asked for and there is more than one rank.
    pub fn new(
        named: Vec<(String, Tensor)>,
        config: &OptimizerConfig,
        sharded: bool,
        dp: Option<&DataParallel>,
    ) -> Result<Self> {
        match dp {
            Some(dp) if sharded => Ok(Optimizer::Sharded(Box::new(ShardedAdamW::new(
                named,
                config,
                dp.rank(),
                dp.world_size(),
            )?))),
            _ => Ok(Optimizer::Replicated(AdamW::new(named, config)?)),
        }
    }

    /// Averages the gradients over ranks (unless `reduced` says the replicated gradients were
    /// all-reduced during backward already); the sharded optimizer reduce-scatters them, so
    /// each rank keeps the average of its own range.
    pub fn reduce_gradients(&self, dp: Option<&DataParallel>, reduced: bool) -> Result<()> {
        match self {
            Optimizer::Replicated(optim) => {
                if let (Some(dp), false) = (dp, reduced) {
                    dp.all_reduce_gradients(&optim.gradients())?;
                }
                Ok(())
            }
            Optimizer::Sharded(optim) => {
                let pg = dp.map(DataParallel::process_group).ok_or_else(no_group)?;
                optim.reduce_gradients(pg)
            }
        }
    }

    /// Clips the (reduced) gradients to the global norm `clip` and returns the global norm
    /// before clipping (f32 scalar on the device; no host sync).
    pub fn clip(&self, dp: Option<&DataParallel>, clip: Option<f64>) -> Result<Tensor> {
        match self {
            Optimizer::Replicated(optim) => Ok(match clip {
                Some(max) => optim.clip_grad_norm(max),
                None => optim.grad_norm(),
            }),
            Optimizer::Sharded(optim) => {
                let pg = dp.map(DataParallel::process_group).ok_or_else(no_group)?;
                match clip {
                    Some(max) => optim.clip_grad_norm(pg, max),
                    None => optim.grad_norm(pg),
                }
            }
        }
    }

    /// One update at `lr`, or none where `found_inf` (an f32 scalar on the device) holds 1.
    pub fn step(
        &mut self,
        dp: Option<&DataParallel>,
        lr: f64,
        found_inf: Option<&Tensor>,
    ) -> Result<()> {
        match self {
            Optimizer::Replicated(optim) => optim.step(lr, found_inf),
            Optimizer::Sharded(optim) => {
                let pg = dp.map(DataParallel::process_group).ok_or_else(no_group)?;
                optim.step(pg, lr, found_inf)
            }
        }
    }

    pub fn zero_grad(&self) -> Result<()> {
        match self {
            Optimizer::Replicated(optim) => optim.zero_grad(),
            Optimizer::Sharded(optim) => optim.zero_grad(),
        }
    }

    /// The replicated optimizer's state in the per-parameter checkpoint layout (`exp_avg.NAME`,
    /// …); the sharded one holds no whole tensors (a rank writes its range, [`Self::range_state`]).
    pub fn per_parameter_state(&self) -> Result<Vec<(String, Tensor)>> {
        match self {
            Optimizer::Replicated(optim) => Ok(optim.state_tensors()),
            Optimizer::Sharded(_) => Err(crate::Error::OptimizerState(
                "the sharded optimizer's state is written per rank".into(),
            )),
        }
    }

    /// The flat optimizer space of a per-rank checkpoint written by `world` ranks.
    pub fn flat_layout(&self, world: usize) -> FlatLayout {
        match self {
            Optimizer::Replicated(optim) => FlatLayout::new(&optim.shapes(), world),
            Optimizer::Sharded(optim) => {
                let l = optim.layout();
                let shapes: Vec<(String, Vec<i64>)> = l
                    .names
                    .iter()
                    .cloned()
                    .zip(l.shapes.iter().cloned())
                    .collect();
                FlatLayout::new(&shapes, world)
            }
        }
    }

    /// `rank`'s range of each moment in `layout` (from [`Self::flat_layout`] with this run's
    /// world size): what the rank writes into a per-rank checkpoint. No collective.
    pub fn range_state(&self, layout: &FlatLayout, rank: usize) -> Result<Vec<(String, Tensor)>> {
        match self {
            Optimizer::Replicated(optim) => Ok(optim.flat_state(layout, own_range(layout, rank))),
            Optimizer::Sharded(optim) => {
                if optim.layout() != layout {
                    return Err(crate::Error::OptimizerState(format!(
                        "the sharded optimizer is partitioned over {} ranks, the checkpoint over {}",
                        optim.layout().world,
                        layout.world
                    )));
                }
                Ok(optim.own_state())
            }
        }
    }

    /// Restores the state of a per-rank checkpoint (any world size, either optimizer).
    pub fn load_flat(&mut self, source: &FlatSource, step: u64) -> Result<()> {
        match self {
            Optimizer::Replicated(optim) => {
                source.check_model(&FlatLayout::new(&optim.shapes(), 1))?;
                optim.load_flat(source, step)
            }
            Optimizer::Sharded(optim) => optim.load_flat(source, step),
        }
    }

    /// Restores the state saved by either optimizer on any number of ranks.
    pub fn load_file(&mut self, path: &Path, step: u64) -> Result<()> {
        match self {
            Optimizer::Replicated(optim) => {
                let tensors = corenet_model::load_tensors(path)?;
                optim.load_state(tensors.into_iter().collect(), step)
            }
            Optimizer::Sharded(optim) => optim.load_file(path, step),
        }
    }
}

fn no_group() -> crate::Error {
    crate::Error::OptimizerState("the sharded optimizer needs a data-parallel process group".into())
}
