//! A complete Hugging Face folder: `config.json` (local `auto_map`), `model.safetensors` in the
//! requested float type, `generation_config.json`, the tokenizer files and the modeling code,
//! sealed with a `manifest.json` so that corenet's own loaders verify it like a checkpoint.

use std::path::Path;

use corenet_model::hf::{
    generation_config, hf_config_with, write_json, CONFIG_FILE, GENERATION_CONFIG_FILE,
    WEIGHTS_FILE,
};
use corenet_model::{save_tensors, OpenElmConfig};
use tch::Tensor;

use crate::error::Result;
use crate::options::FloatType;
use crate::remote_code::write_remote_code;
use crate::shipped_tokenizer::ShippedTokenizer;

/// Writes the HF folder's files into `dir` (a staging folder the caller seals).
pub fn write_hf_folder(
    dir: &Path,
    config: &OpenElmConfig,
    tensors: &[(String, Tensor)],
    float: FloatType,
    tokenizer: &ShippedTokenizer,
) -> Result<()> {
    let cast: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.to_kind(float.kind())))
        .collect();
    save_tensors(&cast, &dir.join(WEIGHTS_FILE))?;
    write_configs(dir, config, float, tokenizer, serde_json::Map::new())?;
    write_remote_code(dir)
}

/// `config.json` (with `extra` keys merged in), `generation_config.json` and the tokenizer
/// files; shared with MLX folders.
pub fn write_configs(
    dir: &Path,
    config: &OpenElmConfig,
    float: FloatType,
    tokenizer: &ShippedTokenizer,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let mut value = hf_config_with(config, tokenizer.ids, float.torch_name())?;
    if let Some(object) = value.as_object_mut() {
        object.extend(extra);
    }
    write_json(&dir.join(CONFIG_FILE), &value)?;
    write_json(
        &dir.join(GENERATION_CONFIG_FILE),
        &generation_config(tokenizer.ids),
    )?;
    tokenizer.write_hf_files(dir, config.max_context_length)
}
