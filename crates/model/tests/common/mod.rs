//! Shared by the model's integration tests: a tiny, genuinely non-uniform OpenELM.

use corenet_model::{Multiplier, OpenElm, OpenElmConfig};
use tch::{nn, Device};

/// 3 layers with 2/4/4 query heads, 1/2/2 KV heads and FFN widths 32/80/128.
pub fn tiny() -> OpenElmConfig {
    OpenElmConfig {
        vocab_size: 97,
        max_context_length: 64,
        num_transformer_layers: 3,
        model_dim: 64,
        head_dim: 16,
        qkv_multipliers: Multiplier::Range(vec![0.5, 1.0]),
        num_gqa_groups: 2,
        ffn_multipliers: Multiplier::Range(vec![0.5, 2.0]),
        ffn_dim_divisor: 16,
        normalize_qk_projections: true,
        share_input_output_layers: true,
        rope_max_length: 64,
        ..OpenElmConfig::default()
    }
}

pub fn build(config: &OpenElmConfig, seed: i64) -> (nn::VarStore, OpenElm) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = OpenElm::new(&vs.root(), config).expect("valid config");
    (vs, model)
}
