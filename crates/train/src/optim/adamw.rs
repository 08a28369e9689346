//! AdamW over named tensors, with state that can be saved and restored exactly (tch's libtorch
//! optimizer exposes none). Decoupled weight decay on >= 2-D weights only (the embedding
//! included, norm weights excluded), as CoreNet's parameter groups do. When the model runs in a
//! 16-bit dtype the optimizer keeps f32 master weights and moments and writes the rounded result
//! back into the model after each step.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::checkpoint::rank_parts::FlatSource;
use crate::error::{Error, Result};
use crate::optim::zero1::FlatLayout;
use corenet_ffi::multi_tensor::{clear_gradients, foreach_grad_norm, fused_adamw_step, FusedAdamW};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Only "adamw".
    pub name: String,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global L2 gradient-norm clip; null disables clipping.
    pub grad_clip: Option<f64>,
    /// libtorch's multi-tensor `_fused_adamw_` through the C++ shim (one kernel per group);
    /// false runs the plain per-tensor Rust path it is tested against.
    pub fused: bool,
}

impl Default for OptimizerConfig {
    /// OpenELM's settings.
    fn default() -> Self {
        OptimizerConfig {
            name: "adamw".into(),
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: Some(1.0),
            fused: true,
        }
    }
}

impl OptimizerConfig {
    pub fn validate(&self) -> Result<()> {
        if self.name != "adamw" {
            return Err(Error::config(
                "optimizer.name",
                format!("`{}` is not supported (supported: adamw)", self.name),
            ));
        }
        for (key, v) in [
            ("optimizer.beta1", self.beta1),
            ("optimizer.beta2", self.beta2),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::config(key, format!("{v} is outside [0, 1)")));
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(Error::config("optimizer.eps", "must be positive"));
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return Err(Error::config("optimizer.weight_decay", "must be >= 0"));
        }
        if let Some(clip) = self.grad_clip {
            if clip.is_nan() || clip <= 0.0 {
                return Err(Error::config(
                    "optimizer.grad_clip",
                    "must be positive (or null to disable)",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ParamState {
    name: String,
    /// The model's parameter (any float dtype).
    param: Tensor,
    /// f32 master copy when `param` is not f32.
    master: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// f32 scalar count of the updates taken, the form `_fused_adamw_` takes; it is the one
    /// record of the count, because a skipped step is decided on the device.
    step: Tensor,
    decay: bool,
}

impl ParamState {
    fn weights(&self) -> &Tensor {
        self.master.as_ref().unwrap_or(&self.param)
    }
}

#[derive(Debug)]
pub struct AdamW {
    config: OptimizerConfig,
    params: Vec<ParamState>,
}

impl AdamW {
    pub fn new(named: Vec<(String, Tensor)>, config: &OptimizerConfig) -> Result<Self> {
        config.validate()?;
        let params = named
            .into_iter()
            .map(|(name, param)| {
                let master = (param.kind() != Kind::Float)
                    .then(|| tch::no_grad(|| param.detach().to_kind(Kind::Float)));
                let zeros = || Tensor::zeros(param.size(), (Kind::Float, param.device()));
                ParamState {
                    decay: param.dim() >= 2,
                    exp_avg: zeros(),
                    exp_avg_sq: zeros(),
                    step: Tensor::zeros([], (Kind::Float, param.device())),
                    name,
                    param,
                    master,
                }
            })
            .collect();
        Ok(AdamW {
            config: config.clone(),
            params,
        })
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Updates taken so far (PyTorch's per-parameter `step`, equal for all here). Reads the
    /// device: a host sync, for checks and tests, not for the training loop.
    pub fn step_count(&self) -> u64 {
        self.params.first().map_or(0, |p| step_value(&p.step))
    }

    /// The defined gradients, in parameter order (what a data-parallel run reduces).
    pub fn gradients(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|p| p.param.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Global L2 norm of all gradients, in f32, on the device (no host sync). With `fused`,
    /// one `_foreach_norm` call (no squared temporaries: about a third of the optimizer phase
    /// on CPU, docs/performance.md); otherwise, or if the shim fails, per tensor.
    pub fn grad_norm(&self) -> Tensor {
        if self.config.fused {
            let grads: Vec<Tensor> = self.params.iter().map(|p| p.param.grad()).collect();
            match foreach_grad_norm(&grads) {
                Ok(norm) => return norm,
                Err(e) => tracing::warn!(error = %e, "_foreach_norm failed; per-tensor norm"),
            }
        }
        let squares: Vec<Tensor> = self
            .params
            .iter()
            .filter_map(|p| {
                let g = p.param.grad();
                g.defined()
                    .then(|| g.to_kind(Kind::Float).square().sum(Kind::Float))
            })
            .collect();
        if squares.is_empty() {
            return Tensor::from(0f32);
        }
        Tensor::stack(&squares, 0).sum(Kind::Float).sqrt()
    }

    /// Scales every gradient by min(1, max_norm / (norm + 1e-6)) as `clip_grad_norm_` does;
    /// returns the norm before clipping.
    pub fn clip_grad_norm(&self, max_norm: f64) -> Tensor {
        let norm = self.grad_norm();
        let factor = (max_norm / (&norm + 1e-6)).clamp_max(1.0);
        tch::no_grad(|| {
            for p in &self.params {
                let mut g = p.param.grad();
                if g.defined() {
                    let _ = g.g_mul_(&factor.to_kind(g.kind()));
                }
            }
        });
        norm
    }

    /// Drops every gradient (PyTorch's default `set_to_none`), see [`clear_gradients`].
    pub fn zero_grad(&self) -> Result<()> {
        Ok(clear_gradients(self.params.iter().map(|p| &p.param))?)
    }

    /// One AdamW update at learning rate `lr` (PyTorch's AdamW arithmetic). Where `found_inf`
    /// (an f32 scalar on the device) holds 1 nothing changes: the trainer's skip of a step with
    /// a non-finite loss or gradient norm, decided without reading the device.
    pub fn step(&mut self, lr: f64, found_inf: Option<&Tensor>) -> Result<()> {
        let slots: Vec<Slot> = self
            .params
            .iter()
            .filter_map(|p| {
                let grad = p.param.grad();
                grad.defined().then(|| Slot {
                    weights: p.weights().shallow_clone(),
                    grad: grad.to_kind(Kind::Float),
                    exp_avg: p.exp_avg.shallow_clone(),
                    exp_avg_sq: p.exp_avg_sq.shallow_clone(),
                    step: p.step.shallow_clone(),
                    decay: p.decay,
                })
            })
            .collect();
        update(&self.config, lr, &slots, found_inf)?;
        // After a skipped step the masters are unchanged, so this copy rewrites the same values.
        tch::no_grad(|| {
            for p in &mut self.params {
                if let Some(master) = &p.master {
                    p.param.copy_(&master.to_kind(p.param.kind()));
                }
            }
        });
        Ok(())
    }

    /// Moments and master weights with their names, for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 3);
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            out.push((
                format!("exp_avg_sq.{}", p.name),
                p.exp_avg_sq.shallow_clone(),
            ));
            if let Some(master) = &p.master {
                out.push((format!("master.{}", p.name), master.shallow_clone()));
            }
        }
        out
    }

    /// Names and shapes of the parameters, in order (the flat space of a per-rank checkpoint).
    pub fn shapes(&self) -> Vec<(String, Vec<i64>)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.param.size()))
            .collect()
    }

    /// The moments this optimizer keeps: `exp_avg`, `exp_avg_sq`, and `master` when the model
    /// is not f32.
    pub fn moments(&self) -> Vec<&'static str> {
        let mut moments = vec!["exp_avg", "exp_avg_sq"];
        if self.params.iter().all(|p| p.master.is_some()) && !self.params.is_empty() {
            moments.push("master");
        }
        moments
    }

    /// Elements `[start, start + len)` of each moment in the flat space of `layout`, one f32
    /// tensor per moment (the range a rank writes into a per-rank checkpoint).
    pub fn flat_state(
        &self,
        layout: &FlatLayout,
        (start, len): (usize, usize),
    ) -> Vec<(String, Tensor)> {
        let pieces = layout.pieces(start, len);
        self.moments()
            .into_iter()
            .map(|moment| {
                let parts: Vec<Tensor> = pieces
                    .iter()
                    .map(|&(i, from, n)| {
                        let p = &self.params[i];
                        let t = match moment {
                            "exp_avg" => &p.exp_avg,
                            "exp_avg_sq" => &p.exp_avg_sq,
                            _ => p.weights(),
                        };
                        t.reshape([-1]).narrow(0, from as i64, n as i64)
                    })
                    .collect();
                let flat = match parts.is_empty() {
                    true => Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)),
                    false => Tensor::cat(&parts, 0),
                };
                (moment.to_string(), flat)
            })
            .collect()
    }

    /// Restores every moment from a per-rank checkpoint's flat parts, after `step` updates.
    pub fn load_flat(&mut self, source: &FlatSource, step: u64) -> Result<()> {
        self.load_state(source.per_parameter()?.into_iter().collect(), step)
    }

    /// Restores what `state_tensors` saved, after `step` updates; every tensor must be present
    /// with the right shape.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, step: u64) -> Result<()> {
        for p in &mut self.params {
            let mut take = |key: String, target: &Tensor| -> Result<()> {
                let src = tensors
                    .remove(&key)
                    .ok_or_else(|| Error::OptimizerState(format!("missing `{key}`")))?;
                if src.size() != target.size() {
                    return Err(Error::OptimizerState(format!(
                        "`{key}` has shape {:?}, the model needs {:?}",
                        src.size(),
                        target.size()
                    )));
                }
                tch::no_grad(|| {
                    target
                        .shallow_clone()
                        .f_copy_(&src.to_kind(target.kind()).to_device(target.device()))
                })?;
                Ok(())
            };
            take(format!("exp_avg.{}", p.name), &p.exp_avg)?;
            take(format!("exp_avg_sq.{}", p.name), &p.exp_avg_sq)?;
            if let Some(master) = &p.master {
                take(format!("master.{}", p.name), master)?;
            }
        }
        for p in &mut self.params {
            let _ = p.step.fill_(step as f64);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::OptimizerState(format!(
                "unexpected `{extra}` (from another model?)"
            )));
        }
        Ok(())
    }
}

/// One tensor's share of an AdamW update: f32 weights (the parameter or its master copy, or a
/// slice of a sharded optimizer's flat buffers), its f32 gradient, moments and step counter.
#[derive(Debug)]
pub(crate) struct Slot {
    pub weights: Tensor,
    pub grad: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub step: Tensor,
    pub decay: bool,
}

/// The AdamW arithmetic over `slots`, in place: `_fused_adamw_` once per weight-decay group, or
/// the plain per-tensor path. Each slot's `step` counts the updates before this one; where
/// `found_inf` holds 1 nothing changes. The fused path decides that on the device; the plain
/// one, a reference for tests, reads the flag and the count (a host sync).
pub(crate) fn update(
    config: &OptimizerConfig,
    lr: f64,
    slots: &[Slot],
    found_inf: Option<&Tensor>,
) -> Result<()> {
    if config.fused {
        update_fused(config, lr, slots, found_inf)
    } else {
        if found_inf.is_some_and(|flag| flag.double_value(&[]) != 0.0) {
            return Ok(());
        }
        let Some(first) = slots.first() else {
            return Ok(());
        };
        update_plain(config, lr, step_value(&first.step) + 1, slots);
        Ok(())
    }
}

/// The `found_inf` flag of a step, on the device: an f32 scalar, 1 where any of `measured` (the
/// loss terms and gradient norm) is not finite. No host read.
pub fn found_inf(measured: &Tensor) -> Tensor {
    measured.isfinite().all().logical_not().to_kind(Kind::Float)
}

/// A step-count tensor's value (a host read).
pub(crate) fn step_value(step: &Tensor) -> u64 {
    step.double_value(&[]).max(0.0) as u64
}

fn update_fused(
    c: &OptimizerConfig,
    lr: f64,
    slots: &[Slot],
    found_inf: Option<&Tensor>,
) -> Result<()> {
    for decay in [true, false] {
        let group: Vec<&Slot> = slots.iter().filter(|s| s.decay == decay).collect();
        if group.is_empty() {
            continue;
        }
        let list = |f: &dyn Fn(&Slot) -> &Tensor| {
            group
                .iter()
                .map(|s| f(s).shallow_clone())
                .collect::<Vec<_>>()
        };
        let hp = FusedAdamW {
            lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: if decay { c.weight_decay } else { 0.0 },
        };
        tch::no_grad(|| {
            fused_adamw_step(
                &list(&|s| &s.weights),
                &list(&|s| &s.grad),
                &list(&|s| &s.exp_avg),
                &list(&|s| &s.exp_avg_sq),
                &list(&|s| &s.step),
                &hp,
                found_inf,
            )
        })?;
    }
    Ok(())
}

/// The per-tensor path, written out (single-tensor `torch.optim.AdamW`).
fn update_plain(c: &OptimizerConfig, lr: f64, step: u64, slots: &[Slot]) {
    let bc1 = 1.0 - c.beta1.powi(step as i32);
    let bc2_sqrt = (1.0 - c.beta2.powi(step as i32)).sqrt();
    let step_size = lr / bc1;
    tch::no_grad(|| {
        for s in slots {
            let _ = s.step.shallow_clone().g_add_scalar_(1.0);
            let g = &s.grad;
            let mut w = s.weights.shallow_clone();
            if s.decay && c.weight_decay != 0.0 {
                let _ = w.g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let mut exp_avg = s.exp_avg.shallow_clone();
            let mut exp_avg_sq = s.exp_avg_sq.shallow_clone();
            let _ = exp_avg.lerp_(g, 1.0 - c.beta1);
            let _ = exp_avg_sq.g_mul_scalar_(c.beta2);
            let _ = exp_avg_sq.addcmul_(&(g * (1.0 - c.beta2)), g);
            let denom = exp_avg_sq.sqrt() / bc2_sqrt + c.eps;
            let _ = w.g_sub_(&(&exp_avg / denom * step_size));
        }
    });
}
