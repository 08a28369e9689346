//! RMSNorm as CoreNet computes it: statistics in f32, cast back to the input dtype, then scaled.

use tch::{nn, Kind, Tensor};

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
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let inv_rms = (xf.square().mean_dim(-1, true, Kind::Float) + self.eps).rsqrt();
        (xf * inv_rms).to_kind(kind) * &self.weight
    }
}
