//! Named architectures: CoreNet's `gpt_configs` entries, including the four OpenELM sizes.

use crate::config::{Multiplier, OpenElmConfig};
use crate::error::{Error, Result};

/// The preset names, in size order.
pub const PRESETS: [&str; 6] = [
    "OpenELM-270M",
    "OpenELM-450M",
    "OpenELM-1_1B",
    "OpenELM-3B",
    "gpt-test",
    "gpt-1_3B",
];

/// `(layers, model_dim, head_dim)` of the four OpenELM sizes; everything else is shared.
fn openelm_shape(name: &str) -> Option<(usize, usize, usize)> {
    match name {
        "OpenELM-270M" => Some((16, 1280, 64)),
        "OpenELM-450M" => Some((20, 1536, 64)),
        "OpenELM-1_1B" => Some((28, 2048, 64)),
        "OpenELM-3B" => Some((36, 3072, 128)),
        _ => None,
    }
}

impl OpenElmConfig {
    /// A miniature with OpenELM's structure (layer-wise scaling α 0.5 → 1 and β 0.5 → 2, two
    /// query heads per KV head, FFN widths in multiples of 8, q/k norms, tied embeddings), for
    /// tests and smoke runs. `head_dim` must divide the query widths it implies.
    pub fn miniature(vocab_size: usize, layers: usize, model_dim: usize, head_dim: usize) -> Self {
        OpenElmConfig {
            vocab_size,
            num_transformer_layers: layers,
            model_dim,
            head_dim,
            qkv_multipliers: Multiplier::Range(vec![0.5, 1.0]),
            num_gqa_groups: 2,
            ffn_multipliers: Multiplier::Range(vec![0.5, 2.0]),
            ffn_dim_divisor: 8,
            normalize_qk_projections: true,
            share_input_output_layers: true,
            ..OpenElmConfig::default()
        }
    }

    /// A named preset with CoreNet's defaults for the fields it does not set (vocab 32000,
    /// context 2048); CoreNet's OpenELM recipes then set `vocab_size: 32128`.
    pub fn preset(name: &str) -> Result<Self> {
        if let Some((layers, dim, head_dim)) = openelm_shape(name) {
            return Ok(OpenElmConfig {
                num_transformer_layers: layers,
                model_dim: dim,
                head_dim,
                qkv_multipliers: Multiplier::Range(vec![0.5, 1.0]),
                num_gqa_groups: 4,
                ffn_multipliers: Multiplier::Range(vec![0.5, 4.0]),
                ffn_with_glu: true,
                ffn_dim_divisor: 256,
                normalize_qk_projections: true,
                share_input_output_layers: true,
                ..OpenElmConfig::default()
            });
        }
        match name {
            "gpt-test" => Ok(OpenElmConfig {
                num_transformer_layers: 1,
                model_dim: 128,
                head_dim: 64,
                qkv_multipliers: Multiplier::Range(vec![0.25, 0.5]),
                num_gqa_groups: 1,
                ffn_multipliers: Multiplier::Range(vec![0.25, 0.75]),
                normalize_qk_projections: true,
                share_input_output_layers: true,
                ..OpenElmConfig::default()
            }),
            "gpt-1_3B" => Ok(OpenElmConfig {
                num_transformer_layers: 24,
                model_dim: 2048,
                head_dim: 64,
                num_gqa_groups: 4,
                ffn_multipliers: Multiplier::Uniform(3.0),
                ..OpenElmConfig::default()
            }),
            _ => Err(Error::UnknownPreset {
                name: name.to_string(),
                known: PRESETS.join(", "),
            }),
        }
    }
}
