//! `OpenElmConfig`: CoreNet's `GPTConfig` with its field names and defaults, validated and
//! resolved once into per-layer shapes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::scaling::{make_divisible, per_layer, LayerDims};

/// A multiplier given as one number (every layer the same) or a `[min, max]` range that
/// layer-wise scaling interpolates over the layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Multiplier {
    Uniform(f64),
    Range(Vec<f64>),
}

impl Multiplier {
    fn values(&self) -> Vec<f64> {
        match self {
            Multiplier::Uniform(v) => vec![*v],
            Multiplier::Range(v) => v.clone(),
        }
    }
}

/// The OpenELM architecture. Field names and defaults are CoreNet's (`general_gpt.py`), so a
/// CoreNet or HF config maps onto it key for key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenElmConfig {
    pub vocab_size: usize,
    /// Stored, not used by the model (RoPE uses `rope_max_length`), as in CoreNet.
    pub max_context_length: usize,
    pub num_transformer_layers: usize,
    pub model_dim: usize,
    pub head_dim: usize,
    pub qkv_multipliers: Multiplier,
    /// Query heads that share one KV head (the GQA group *size*, despite the name).
    pub num_gqa_groups: usize,
    pub ffn_multipliers: Multiplier,
    pub ffn_with_glu: bool,
    pub ffn_dim_divisor: usize,
    pub activation_fn_name: String,
    pub normalization_layer_name: String,
    pub normalize_qk_projections: bool,
    pub share_input_output_layers: bool,
    pub rope_freq_constant: f64,
    pub rope_max_length: usize,
    /// Row of the embedding whose lookup gets no gradient (CoreNet trains with 32000).
    pub padding_index: Option<i64>,
}

impl Default for OpenElmConfig {
    /// CoreNet's `GPTConfig` dataclass defaults.
    fn default() -> Self {
        OpenElmConfig {
            vocab_size: 32000,
            max_context_length: 2048,
            num_transformer_layers: 12,
            model_dim: 2048,
            head_dim: 128,
            qkv_multipliers: Multiplier::Uniform(1.0),
            num_gqa_groups: 1,
            ffn_multipliers: Multiplier::Uniform(4.0),
            ffn_with_glu: true,
            ffn_dim_divisor: 256,
            activation_fn_name: "swish".into(),
            normalization_layer_name: "rms_norm".into(),
            normalize_qk_projections: false,
            share_input_output_layers: false,
            rope_freq_constant: 10000.0,
            rope_max_length: 4096,
            padding_index: None,
        }
    }
}

impl OpenElmConfig {
    /// Checks every field and the per-layer shapes they imply; the error names the field.
    pub fn validate(&self) -> Result<()> {
        self.validate_scalars()?;
        self.validate_multiplier("qkv_multipliers", &self.qkv_multipliers)?;
        self.validate_multiplier("ffn_multipliers", &self.ffn_multipliers)?;
        self.compute_layers().map(|_| ())
    }

    fn validate_scalars(&self) -> Result<()> {
        let positive = [
            ("num_transformer_layers", self.num_transformer_layers),
            ("model_dim", self.model_dim),
            ("head_dim", self.head_dim),
            ("num_gqa_groups", self.num_gqa_groups),
            ("ffn_dim_divisor", self.ffn_dim_divisor),
            ("vocab_size", self.vocab_size),
            ("rope_max_length", self.rope_max_length),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config(
                "head_dim",
                format!(
                    "{} is odd; rotary embeddings rotate half of it",
                    self.head_dim
                ),
            ));
        }
        if !(self.rope_freq_constant.is_finite() && self.rope_freq_constant > 0.0) {
            return Err(Error::config(
                "rope_freq_constant",
                "must be a positive number",
            ));
        }
        if self.activation_fn_name != "swish" && self.activation_fn_name != "silu" {
            return Err(Error::config(
                "activation_fn_name",
                format!(
                    "`{}` is not supported (supported: swish)",
                    self.activation_fn_name
                ),
            ));
        }
        if self.normalization_layer_name != "rms_norm" {
            return Err(Error::config(
                "normalization_layer_name",
                format!(
                    "`{}` is not supported (supported: rms_norm)",
                    self.normalization_layer_name
                ),
            ));
        }
        if let Some(pad) = self.padding_index {
            if pad < 0 || pad as usize >= self.vocab_size {
                return Err(Error::config(
                    "padding_index",
                    format!("{pad} is outside the vocabulary 0..{}", self.vocab_size),
                ));
            }
        }
        Ok(())
    }

    fn validate_multiplier(&self, field: &str, multiplier: &Multiplier) -> Result<()> {
        let values = multiplier.values();
        let per_layer = values.len() == self.num_transformer_layers;
        if values.is_empty() || (values.len() > 2 && !per_layer) {
            return Err(Error::config(
                field,
                format!(
                    "expected a number, a [min, max] pair or one value per layer ({}), got a list of {}",
                    self.num_transformer_layers,
                    values.len()
                ),
            ));
        }
        if values.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::config(
                field,
                format!("{values:?}: values must be positive"),
            ));
        }
        Ok(())
    }

    /// Per-layer (query heads, KV heads, FFN width), CoreNet's layer-wise scaling.
    pub fn layers(&self) -> Result<Vec<LayerDims>> {
        self.validate()?;
        self.compute_layers()
    }

    fn compute_layers(&self) -> Result<Vec<LayerDims>> {
        let n = self.num_transformer_layers;
        let alphas = per_layer(&self.qkv_multipliers.values(), n);
        let betas = per_layer(&self.ffn_multipliers.values(), n);
        let d = self.model_dim as f64;
        let head_divisor = self.head_dim * self.num_gqa_groups;
        (0..n)
            .map(|i| {
                let q_dim = make_divisible(d * alphas[i], head_divisor, None);
                if !q_dim.is_multiple_of(self.head_dim) {
                    return Err(Error::config(
                        "head_dim",
                        format!(
                            "{} does not divide layer {i}'s query width {q_dim}",
                            self.head_dim
                        ),
                    ));
                }
                let query_heads = q_dim / self.head_dim;
                let kv_heads = query_heads / self.num_gqa_groups;
                if kv_heads == 0 || !query_heads.is_multiple_of(self.num_gqa_groups) {
                    return Err(Error::config(
                        "num_gqa_groups",
                        format!(
                            "layer {i} has {query_heads} query heads, not a multiple of {}",
                            self.num_gqa_groups
                        ),
                    ));
                }
                let ffn_dim = make_divisible(betas[i] * d, self.ffn_dim_divisor, None);
                Ok(LayerDims {
                    query_heads,
                    kv_heads,
                    ffn_dim,
                })
            })
            .collect()
    }

    /// Whether the output head reuses the token embedding (no separate `lm_head` tensor).
    pub fn tied(&self) -> bool {
        self.share_input_output_layers
    }
}
