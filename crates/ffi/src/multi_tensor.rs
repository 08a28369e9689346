//! libtorch's multi-tensor kernels that tch does not bind, through the C++ shim:
//! [`fused_adamw_step`] (`at::_fused_adamw_`, one multi-tensor kernel instead of ~8 ops per
//! tensor; about 5x faster than the plain path on CPU) and [`foreach_grad_norm`]
//! (`at::_foreach_norm`, the global gradient norm in one call, on the device), and
//! [`clear_gradients`] (PyTorch's `zero_grad(set_to_none=True)`).
//!
//! The trainer's plain Rust AdamW (`corenet_train::optim::AdamW`) stays as the reference these
//! are checked against (`crates/train/tests/fused_adamw.rs`).

use tch::{Kind, Tensor};

use crate::error::{kernel_err as fused_err, Result};
use crate::shim;

/// Hyper-parameters of one fused AdamW call (one parameter group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedAdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay for this group (0 for norm weights and biases).
    pub weight_decay: f64,
}

/// One AdamW update (PyTorch's `AdamW(fused=True)` arithmetic, `amsgrad=false`,
/// `maximize=false`) over one parameter group, in place.
///
/// * `params`, `exp_avgs`, `exp_avg_sqs`: float tensors of equal shapes per index, on one device;
///   `grads` of the same dtype as `params` (every gradient must be defined: filter the group
///   first).
/// * `steps`: one f32 scalar tensor per parameter holding the updates taken so far; each is
///   incremented by 1 before the update (as PyTorch's Python optimizer does; the kernel does not).
///
/// * `found_inf`: an optional f32 scalar on the parameters' device; where it holds 1 the call
///   changes nothing (steps included), so a non-finite step is skipped without a host sync.
///
/// Weight decay applies to the whole group, so call once for the decayed (>= 2-D) tensors and
/// once, with `weight_decay: 0.0`, for the rest.
pub fn fused_adamw_step(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    steps: &[Tensor],
    hp: &FusedAdamW,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    const OP: &str = "fused_adamw_step";
    let n = params.len();
    for (what, len) in [
        ("grads", grads.len()),
        ("exp_avgs", exp_avgs.len()),
        ("exp_avg_sqs", exp_avg_sqs.len()),
        ("steps", steps.len()),
    ] {
        if len != n {
            return Err(fused_err(
                OP,
                format!("{n} params but {len} {what}: the lists must have equal lengths"),
            ));
        }
    }
    for i in 0..n {
        if !grads[i].defined() {
            return Err(fused_err(OP, format!("gradient {i} is undefined")));
        }
        let shape = params[i].size();
        for (what, t) in [
            ("grad", &grads[i]),
            ("exp_avg", &exp_avgs[i]),
            ("exp_avg_sq", &exp_avg_sqs[i]),
        ] {
            if t.size() != shape {
                return Err(fused_err(
                    OP,
                    format!(
                        "{what} {i} has shape {:?}, its parameter {:?}",
                        t.size(),
                        shape
                    ),
                ));
            }
        }
        if steps[i].kind() != Kind::Float || steps[i].numel() != 1 {
            return Err(fused_err(
                OP,
                format!(
                    "step {i} must be an f32 scalar tensor (got {:?} of shape {:?})",
                    steps[i].kind(),
                    steps[i].size()
                ),
            ));
        }
    }
    if let Some(flag) = found_inf {
        if flag.kind() != Kind::Float || flag.numel() != 1 {
            return Err(fused_err(
                OP,
                format!(
                    "found_inf must be an f32 scalar tensor (got {:?} of shape {:?})",
                    flag.kind(),
                    flag.size()
                ),
            ));
        }
    }
    if n == 0 {
        return Ok(());
    }
    let flag = found_inf.map_or(std::ptr::null(), |t| t.as_ptr());
    let (p, g, m, v, s) = (
        shim::tensor_ptrs(params),
        shim::tensor_ptrs(grads),
        shim::tensor_ptrs(exp_avgs),
        shim::tensor_ptrs(exp_avg_sqs),
        shim::tensor_ptrs(steps),
    );
    // SAFETY: five arrays of `n` live tensor pointers and `flag` (null or a live tensor),
    // borrowed for the duration of the call.
    let err = unsafe {
        shim::shim_fused_adamw(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n,
            hp.lr,
            hp.beta1,
            hp.beta2,
            hp.weight_decay,
            hp.eps,
            flag,
        )
    };
    shim::check(err).map_err(|m| fused_err(OP, m))
}

/// The global L2 norm over `grads` (undefined tensors are skipped), computed in f32 on the
/// tensors' device with one `_foreach_norm` call; a 0-d f32 tensor, no host sync. Zero when
/// there is nothing to measure.
pub fn foreach_grad_norm(grads: &[Tensor]) -> Result<Tensor> {
    let defined: Vec<*const torch_sys::C_tensor> = grads
        .iter()
        .filter(|g| g.defined())
        .map(|g| g.as_ptr())
        .collect();
    let mut out = Tensor::new();
    // SAFETY: `defined` holds live tensor pointers; `out` is a valid (undefined) tensor handle
    // the shim assigns to.
    let err = unsafe { shim::shim_foreach_norm(defined.as_ptr(), defined.len(), out.as_mut_ptr()) };
    shim::check(err).map_err(|m| fused_err("foreach_grad_norm", m))?;
    Ok(out)
}

/// Drops the gradients of `params` (each becomes undefined), as PyTorch's
/// `zero_grad(set_to_none=True)`: the next backward writes every gradient instead of adding it
/// into a zeroed buffer, and the buffers are free until then. At OpenELM-270M's shape on the
/// CPU this took the backward pass from 11 % slower than PyTorch's to level with it
/// (docs/performance.md).
pub fn clear_gradients<'a>(params: impl IntoIterator<Item = &'a Tensor>) -> Result<()> {
    let ptrs: Vec<*const torch_sys::C_tensor> = params.into_iter().map(Tensor::as_ptr).collect();
    // SAFETY: `ptrs` holds live, defined tensor pointers (the shim rejects undefined ones).
    let err = unsafe { shim::shim_clear_grads(ptrs.as_ptr(), ptrs.len()) };
    shim::check(err).map_err(|m| fused_err("clear_gradients", m))
}
