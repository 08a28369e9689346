//! A PEFT checkpoint's adapters in HF PEFT's own layout: `adapter_config.json` (a `LoraConfig`)
//! and `adapter_model.safetensors` (tensors named `base_model.model.<module>.lora_A.weight`, ...),
//! which `peft.PeftModel.from_pretrained(base, folder)` loads onto the HF export of the base.

use std::path::Path;

use serde_json::json;

use corenet_model::{AdapterMethod, OpenElm, PeftConfig};

use crate::error::{Error, Result};
use crate::options::FloatType;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// PEFT's prefix of every tensor of a causal-LM adapter.
const PEFT_PREFIX: &str = "base_model.model.";

/// Writes `model`'s adapters into `dir`; `base` is recorded as `base_model_name_or_path`.
/// `rows` is the vocabulary of the base export they go onto (`--vocab-size`): the embedding's
/// `lora_embedding_A` (r, V) keeps its first `rows` columns, as that base keeps its first rows.
pub fn write_peft_adapter(
    dir: &Path,
    model: &OpenElm,
    peft: &PeftConfig,
    base: Option<&Path>,
    float: FloatType,
    rows: usize,
) -> Result<()> {
    let tensors = model.adapter_parameters();
    if tensors.is_empty() {
        return Err(Error::Unsupported {
            format: "peft",
            reason: "the checkpoint has no adapters (it is not from a run with a `peft:` section)"
                .into(),
        });
    }
    let named: Vec<(String, tch::Tensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let t = match name.ends_with(".lora_embedding_A") {
                true => t.narrow(1, 0, rows as i64), // (r, V) -> (r, rows)
                false => t,
            };
            (format!("{PEFT_PREFIX}{name}"), t.to_kind(float.kind()))
        })
        .collect();
    corenet_model::save_tensors(&named, &dir.join(ADAPTER_WEIGHTS_FILE))?;
    let config = adapter_config(peft, &model.adapted_modules(), base);
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = serde_json::to_vec_pretty(&config).unwrap_or_default();
    std::fs::write(&path, text).map_err(|source| Error::Io {
        op: "write",
        path,
        source,
    })
}

/// PEFT's `LoraConfig` for these adapters. `target_modules` lists the adapted modules by full
/// name (PEFT matches a list entry against a module's whole name or its dotted suffix).
fn adapter_config(peft: &PeftConfig, modules: &[String], base: Option<&Path>) -> serde_json::Value {
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.map(|b| b.display().to_string()),
        "r": peft.rank,
        "lora_alpha": peft.alpha,
        "lora_dropout": peft.dropout,
        "use_rslora": peft.rslora,
        "use_dora": peft.method == AdapterMethod::Dora,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
    })
}
