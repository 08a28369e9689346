//! Parameter counts and FLOPs per token, computed from the config alone (nothing allocated).

use serde::Serialize;

use crate::config::OpenElmConfig;
use crate::error::Result;
use crate::scaling::LayerDims;

/// Parameters of one layer, split by component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LayerParams {
    pub attention: u64,
    pub ffn: u64,
    pub norms: u64,
}

impl LayerParams {
    pub fn total(&self) -> u64 {
        self.attention + self.ffn + self.norms
    }
}

/// The model's parameter budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamCount {
    pub embedding: u64,
    /// Separate output head (0 when tied to the embedding).
    pub lm_head: u64,
    pub layers: Vec<LayerParams>,
    pub final_norm: u64,
}

impl ParamCount {
    pub fn total(&self) -> u64 {
        self.embedding + self.lm_head + self.final_norm + self.layers_total()
    }

    pub fn layers_total(&self) -> u64 {
        self.layers.iter().map(LayerParams::total).sum()
    }

    pub fn non_embedding(&self) -> u64 {
        self.total() - self.embedding - self.lm_head
    }
}

fn layer_params(config: &OpenElmConfig, dims: &LayerDims) -> LayerParams {
    let d = config.model_dim as u64;
    let h = config.head_dim as u64;
    let (q, kv, f) = (
        dims.query_heads as u64,
        dims.kv_heads as u64,
        dims.ffn_dim as u64,
    );
    let qk_norms = if config.normalize_qk_projections {
        2 * h
    } else {
        0
    };
    let ffn_in = if config.ffn_with_glu { 2 * f } else { f };
    LayerParams {
        attention: d * (q + 2 * kv) * h + q * h * d + qk_norms,
        ffn: d * ffn_in + f * d,
        norms: 2 * d,
    }
}

impl OpenElmConfig {
    /// Exact parameter count (tied embedding counted once).
    pub fn param_count(&self) -> Result<ParamCount> {
        let dims = self.layers()?;
        let vd = (self.vocab_size * self.model_dim) as u64;
        Ok(ParamCount {
            embedding: vd,
            lm_head: if self.tied() { 0 } else { vd },
            layers: dims.iter().map(|l| layer_params(self, l)).collect(),
            final_norm: self.model_dim as u64,
        })
    }

    /// Training FLOPs per token at sequence length `seq_len`: 6 per matmul parameter (forward
    /// and backward, the output head included even when tied) plus attention's
    /// 12 · seq_len · query width per layer (PaLM appendix B; causal masking not discounted, as
    /// nanoGPT and torchtitan count it). Forward-only FLOPs are a third of this.
    pub fn training_flops_per_token(&self, seq_len: usize) -> Result<f64> {
        let dims = self.layers()?;
        let count = self.param_count()?;
        let norms: u64 = count.layers.iter().map(|l| l.norms).sum();
        let qk_norms: u64 = if self.normalize_qk_projections {
            2 * self.head_dim as u64 * dims.len() as u64
        } else {
            0
        };
        let matmul = (count.layers_total() - norms - qk_norms) as f64
            + (self.vocab_size * self.model_dim) as f64;
        let attention: f64 = dims
            .iter()
            .map(|l| 12.0 * seq_len as f64 * (l.query_heads * self.head_dim) as f64)
            .sum();
        Ok(6.0 * matmul + attention)
    }
}
