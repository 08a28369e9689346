//! RMSNorm as CoreNet computes it: statistics in f32, cast back to the input dtype, then scaled.
//!
//! Two implementations of the same arithmetic: libtorch's `at::rms_norm` (one call from Rust;
//! in libtorch 2.11 it upcasts to f32, normalises, casts back with `type_as` and multiplies by
//! the weight, exactly CoreNet's order) and the composite spelled out op by op. `forward` runs
//! the one [`crate::kernel_choice::rms_norm`] selects (the composite unless a benchmark asks);
//! docs/performance.md has the comparison that chose the default.

use tch::{nn, Kind, Tensor};

use crate::kernel_choice::{self, RmsNormKernel};

#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

/// CoreNet never passes eps, so every norm (q/k norms included) uses the class default.
pub const RMS_NORM_EPS: f64 = 1e-6;

impl RmsNorm {
    pub fn new(path: &nn::Path, dim: usize) -> Self {
        RmsNorm {
            weight: path.ones("weight", &[dim as i64]),
            eps: RMS_NORM_EPS,
        }
    }

    /// x: (..., C) -> (..., C), normalised over the last axis.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match kernel_choice::rms_norm() {
            RmsNormKernel::Native => self.forward_native(x),
            RmsNormKernel::Composite => self.forward_composite(x),
        }
    }

    /// libtorch's `rms_norm` over the last axis. x: (..., C) -> (..., C).
    pub fn forward_native(&self, x: &Tensor) -> Tensor {
        let c = self.weight.size()[0];
        x.rms_norm([c], Some(&self.weight), self.eps)
    }

    /// The op-by-op composite (CoreNet's Python). x: (..., C) -> (..., C).
    pub fn forward_composite(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let inv_rms = (xf.square().mean_dim(-1, true, Kind::Float) + self.eps).rsqrt();
        (xf * inv_rms).to_kind(kind) * &self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Forward values and input/weight gradients of both implementations.
    fn run(norm: &RmsNorm, x: &Tensor, native: bool) -> (Tensor, Tensor, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let y = if native {
            norm.forward_native(&x)
        } else {
            norm.forward_composite(&x)
        };
        let g = Tensor::ones_like(&y).cumsum(-1, y.kind()) / 7.0; // a non-uniform upstream grad
        (&y * &g).sum(Kind::Float).backward();
        let gw = norm.weight.grad().copy();
        let _ = norm.weight.grad().zero_();
        (y.detach(), x.grad(), gw)
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
        (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-30)
    }

    #[test]
    fn native_equals_composite_in_f32_and_bf16() {
        for (kind, tol) in [(Kind::Float, 1e-6), (Kind::BFloat16, 1e-2)] {
            let vs = nn::VarStore::new(Device::Cpu);
            let norm = RmsNorm::new(&vs.root(), 48);
            tch::no_grad(|| {
                norm.weight
                    .shallow_clone()
                    .copy_(&(Tensor::randn([48], (Kind::Float, Device::Cpu)) * 0.1 + 1.0));
            });
            let mut vs = vs;
            if kind == Kind::BFloat16 {
                vs.bfloat16();
            }
            let x = (Tensor::randn([2, 3, 5, 48], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
            let (y_n, gx_n, gw_n) = run(&norm, &x, true);
            let (y_c, gx_c, gw_c) = run(&norm, &x, false);
            assert_eq!(y_n.kind(), kind);
            assert!(max_rel(&y_n, &y_c) <= tol, "{kind:?} forward");
            assert!(max_rel(&gx_n, &gx_c) <= tol, "{kind:?} input grad");
            assert!(max_rel(&gw_n, &gw_c) <= tol, "{kind:?} weight grad");
        }
    }
}
