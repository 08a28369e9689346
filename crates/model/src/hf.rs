//! The Hugging Face OpenELM folder layout: `config.json` (model_type "openelm", per-layer head
//! lists and FFN multipliers), `model.safetensors` with HF tensor names and `{"format": "pt"}`,
//! and `generation_config.json`.

use std::path::Path;

use serde_json::{json, Value};
use tch::Tensor;

use crate::config::{Multiplier, OpenElmConfig};
use crate::error::{Error, Result};
use crate::openelm::OpenElm;
use crate::scaling::per_layer;
use crate::weights::save_tensors;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// The token ids a config names: BOS and EOS (OpenELM's LLaMA tokenizer has 1 and 2), and the
/// padding id when the tokenizer has a padding token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub pad: Option<u32>,
}

impl Default for SpecialIds {
    fn default() -> Self {
        SpecialIds {
            bos: 1,
            eos: 2,
            pad: None,
        }
    }
}

/// HF `config.json` for `config` (with `vocab_size` as given), OpenELM's default ids, f32.
pub fn hf_config(config: &OpenElmConfig) -> Result<Value> {
    hf_config_with(config, SpecialIds::default(), "float32")
}

/// HF `config.json` for `config` with the tokenizer's `ids` and weights stored as `torch_dtype`
/// (`float32`, `float16`, `bfloat16`). `auto_map` names the modeling code shipped next to it
/// (`configuration_openelm.py`, `modeling_openelm.py`), so no Hub code is fetched.
pub fn hf_config_with(config: &OpenElmConfig, ids: SpecialIds, torch_dtype: &str) -> Result<Value> {
    let dims = config.layers()?;
    let ffn = per_layer(
        &multiplier_values(&config.ffn_multipliers),
        config.num_transformer_layers,
    );
    Ok(json!({
        "architectures": ["OpenELMForCausalLM"],
        "model_type": "openelm",
        "auto_map": {
            "AutoConfig": "configuration_openelm.OpenELMConfig",
            "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM"
        },
        "vocab_size": config.vocab_size,
        "max_context_length": config.max_context_length,
        "num_transformer_layers": config.num_transformer_layers,
        "model_dim": config.model_dim,
        "head_dim": config.head_dim,
        "qkv_multipliers": multiplier_values(&config.qkv_multipliers),
        "num_query_heads": dims.iter().map(|l| l.query_heads).collect::<Vec<_>>(),
        "num_kv_heads": dims.iter().map(|l| l.kv_heads).collect::<Vec<_>>(),
        "num_gqa_groups": config.num_gqa_groups,
        "ffn_multipliers": ffn,
        "ffn_with_glu": config.ffn_with_glu,
        "ffn_dim_divisor": config.ffn_dim_divisor,
        "activation_fn_name": config.activation_fn_name,
        "normalization_layer_name": config.normalization_layer_name,
        "normalize_qk_projections": config.normalize_qk_projections,
        "share_input_output_layers": config.share_input_output_layers,
        "rope_freq_constant": config.rope_freq_constant,
        "rope_max_length": config.rope_max_length,
        "initializer_range": 0.02,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "tie_word_embeddings": config.share_input_output_layers,
        "use_cache": true,
        "torch_dtype": torch_dtype,
        "transformers_version": "4.39.3"
    }))
}

/// HF `generation_config.json` for `ids`.
pub fn generation_config(ids: SpecialIds) -> Value {
    json!({
        "_from_model_config": true,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "transformers_version": "4.39.3"
    })
}

fn multiplier_values(m: &Multiplier) -> Vec<f64> {
    match m {
        Multiplier::Uniform(v) => vec![*v],
        Multiplier::Range(v) => v.clone(),
    }
}

fn field<'a>(path: &Path, config: &'a Value, key: &str) -> Result<&'a Value> {
    config
        .get(key)
        .ok_or_else(|| Error::config(key, format!("missing in {}", path.display())))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::config(path.display().to_string(), e.to_string()))
}

/// The model config of an HF OpenELM folder. The stored per-layer head lists must agree with
/// what the multipliers imply (HF recomputes them too); a mismatch names the field.
pub fn read_hf_config(dir: &Path) -> Result<OpenElmConfig> {
    let path = dir.join(CONFIG_FILE);
    let value = read_json(&path)?;
    let model_type = field(&path, &value, "model_type")?;
    if model_type != "openelm" {
        return Err(Error::config(
            "model_type",
            format!("{model_type} in {} is not openelm", path.display()),
        ));
    }
    // Architecture keys have no sensible default: a missing one is named, rather than left to
    // a default that then fails some other, derived check.
    for key in [
        "vocab_size",
        "num_transformer_layers",
        "model_dim",
        "head_dim",
        "qkv_multipliers",
        "ffn_multipliers",
    ] {
        if value.get(key).is_none() {
            return Err(Error::config(
                key,
                format!(
                    "missing from {} (an OpenELM config.json has it)",
                    path.display()
                ),
            ));
        }
    }
    let mut fields = serde_json::Map::new();
    for key in [
        "vocab_size",
        "max_context_length",
        "num_transformer_layers",
        "model_dim",
        "head_dim",
        "qkv_multipliers",
        "num_gqa_groups",
        "ffn_multipliers",
        "ffn_with_glu",
        "ffn_dim_divisor",
        "activation_fn_name",
        "normalization_layer_name",
        "normalize_qk_projections",
        "share_input_output_layers",
        "rope_freq_constant",
        "rope_max_length",
    ] {
        if let Some(v) = value.get(key) {
            fields.insert(key.to_string(), v.clone());
        }
    }
    let config: OpenElmConfig = serde_json::from_value(Value::Object(fields))
        .map_err(|e| Error::config(path.display().to_string(), e.to_string()))?;
    let dims = config.layers()?;
    for (key, expected) in [
        (
            "num_query_heads",
            dims.iter().map(|l| l.query_heads).collect::<Vec<_>>(),
        ),
        (
            "num_kv_heads",
            dims.iter().map(|l| l.kv_heads).collect::<Vec<_>>(),
        ),
    ] {
        if let Some(stored) = value.get(key) {
            let stored: Vec<usize> = serde_json::from_value(stored.clone())
                .map_err(|e| Error::config(key, format!("{}: {e}", path.display())))?;
            if stored != expected {
                return Err(Error::config(
                    key,
                    format!(
                        "{} stores {stored:?}, but the multipliers give {expected:?}",
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(config)
}

/// `model`'s tensors under their HF names, the vocabulary cut to `rows` (CoreNet trains with
/// 32128 rows, Apple's HF release has 32000), with the config that describes them.
pub fn hf_tensors(
    model: &OpenElm,
    rows: Option<usize>,
) -> Result<(OpenElmConfig, Vec<(String, Tensor)>)> {
    let mut config = model.config().clone();
    let rows = rows.unwrap_or(config.vocab_size);
    if rows == 0 || rows > config.vocab_size {
        return Err(Error::config(
            "vocab_size",
            format!(
                "cannot export {rows} rows of a {}-row embedding",
                config.vocab_size
            ),
        ));
    }
    config.vocab_size = rows;
    let tensors = model
        .named_parameters()
        .into_iter()
        .map(|(name, t)| {
            let cut = name == "transformer.token_embeddings.weight" || name == "lm_head.weight";
            let t = if cut { t.narrow(0, 0, rows as i64) } else { t };
            (name, t)
        })
        .collect();
    Ok((config, tensors))
}

/// Writes `model` as an HF OpenELM folder's weights and configs (f32, OpenELM's default ids);
/// `corenet model export` adds the tokenizer and the modeling code. With `vocab_size` smaller
/// than the model's, the embedding is cut to that many rows.
pub fn export_hf(model: &OpenElm, dir: &Path, vocab_size: Option<usize>) -> Result<()> {
    let (config, tensors) = hf_tensors(model, vocab_size)?;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    save_tensors(&tensors, &dir.join(WEIGHTS_FILE))?;
    write_json(&dir.join(CONFIG_FILE), &hf_config(&config)?)?;
    write_json(
        &dir.join(GENERATION_CONFIG_FILE),
        &generation_config(SpecialIds::default()),
    )
}

/// Writes `value` as pretty JSON with a final newline.
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::config(path.display().to_string(), e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
