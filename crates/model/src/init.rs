//! CoreNet's initialisation (`GeneralGPTModel.reset_parameters`): linear weights and the
//! embedding ~ N(0, fan_in^-1/2) (the embedding with its width), norms = 1, and the residual
//! output projections (out_proj, proj_2) re-drawn with std = d^-1/2 · (2N)^-1/2.

use tch::{nn, Tensor};

/// A `weight` tensor under `path`, drawn from N(0, std).
pub fn normal(path: &nn::Path, dims: &[i64], std: f64) -> Tensor {
    path.randn("weight", dims, 0.0, std)
}

/// std of out_proj and proj_2: uses the model width, not the layer's fan-in (OPT-style).
pub fn residual_std(model_dim: usize, num_layers: usize) -> f64 {
    (model_dim as f64).powf(-0.5) * ((2 * num_layers) as f64).powf(-0.5)
}

#[cfg(test)]
mod tests {
    use super::residual_std;

    #[test]
    fn residual_std_matches_spec_table() {
        assert!((residual_std(1280, 16) - 0.004941).abs() < 5e-7);
        assert!((residual_std(3072, 36) - 0.002126).abs() < 5e-7);
    }
}
