//! SwiGLU feed-forward: proj_1 = [gate | up], SiLU on the gate, proj_2 back to the model width.

use tch::{nn, Tensor};

use crate::adapter::{project, Adapter};
use crate::init::normal;

#[derive(Debug)]
pub struct FeedForward {
    pub proj_1: Tensor,
    pub proj_2: Tensor,
    /// LoRA/DoRA on `proj_1` and `proj_2` (crate::peft).
    pub proj_1_adapter: Option<Adapter>,
    pub proj_2_adapter: Option<Adapter>,
    glu: bool,
}

impl FeedForward {
    /// `proj_2_std` is CoreNet's depth-scaled std for residual output projections.
    pub fn new(
        path: &nn::Path,
        model_dim: usize,
        ffn_dim: usize,
        glu: bool,
        proj_2_std: f64,
    ) -> Self {
        let (d, f) = (model_dim as i64, ffn_dim as i64);
        let proj_1_rows = if glu { 2 * f } else { f };
        FeedForward {
            proj_1: normal(&(path / "proj_1"), &[proj_1_rows, d], (d as f64).powf(-0.5)),
            proj_2: normal(&(path / "proj_2"), &[d, f], proj_2_std),
            proj_1_adapter: None,
            proj_2_adapter: None,
            glu,
        }
    }

    /// x: (B, T, C) -> (B, T, C)
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = project(x, &self.proj_1, self.proj_1_adapter.as_ref()); // (B, T, 2F) or (B, T, F)
        let h = if self.glu {
            let parts = h.chunk(2, -1);
            parts[0].silu() * &parts[1] // (B, T, F)
        } else {
            h.silu()
        };
        project(&h, &self.proj_2, self.proj_2_adapter.as_ref())
    }
}
