//! Existing weights in a folder: a Hugging Face OpenELM folder (`config.json` with
//! `model.safetensors`, or `model.safetensors.index.json` naming several shard files, as Apple's
//! 3B has) or a corenet checkpoint directory (`model.safetensors` with `model_config.json`).
//!
//! Every load goes through [`verify_folder`] first (a corenet checkpoint's manifest is checked
//! file by file), and every tensor read must be finite.
//!
//! [`load_pretrained`] copies such weights into a model built from a recipe: the architectures
//! must agree (the error names the first field that differs), except for the vocabulary, whose
//! embedding rows are resized as CoreNet's 32128-row training embedding relates to the 32000 rows
//! of the HF release: the shared rows are copied, extra rows of the model keep their fresh
//! initialisation (CoreNet draws every row, the pad row included, from N(0, d^-0.5); ids past the
//! tokenizer's never occur in the data), extra rows of the file are dropped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::{nn, Device};

use crate::adapter_record::{open_adapted, AdapterRecord};
use crate::config::OpenElmConfig;
use crate::error::{Error, Result};
use crate::hf::{read_hf_config, CONFIG_FILE, WEIGHTS_FILE};
use crate::manifest::MANIFEST_FILE;
use crate::openelm::OpenElm;
use crate::weights::{copy_tensors, read_file};

/// The model config a corenet checkpoint stores next to `model.safetensors` (CoreNet names).
pub const MODEL_CONFIG_FILE: &str = "model_config.json";
/// HF's index of a sharded checkpoint: `{"weight_map": {tensor name: shard file}}`.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The model config of a folder: `config.json` (HF) or else `model_config.json` (corenet).
pub fn read_folder_config(dir: &Path) -> Result<OpenElmConfig> {
    if dir.join(CONFIG_FILE).is_file() {
        return read_hf_config(dir);
    }
    let path = dir.join(MODEL_CONFIG_FILE);
    if !path.is_file() {
        return Err(Error::config(
            "init_from",
            format!(
                "{} has neither {CONFIG_FILE} (HF OpenELM) nor {MODEL_CONFIG_FILE} (corenet checkpoint)",
                dir.display()
            ),
        ));
    }
    let text = read_file(&path)?;
    let config: OpenElmConfig = serde_json::from_slice(&text)
        .map_err(|e| Error::config(path.display().to_string(), e.to_string()))?;
    config.validate()?;
    Ok(config)
}

/// The safetensors files holding a folder's weights: the shards its index names (each once, in
/// name order), or the single `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Ok(vec![dir.join(WEIGHTS_FILE)]);
    }
    let bad = |message: String| Error::config(index.display().to_string(), message);
    let value: Value =
        serde_json::from_slice(&read_file(&index)?).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files = BTreeSet::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.is_empty() && !f.contains('/'))
            .ok_or_else(|| {
                bad(format!(
                    "`weight_map.{name}` is not a file name in the folder"
                ))
            })?;
        files.insert(file.to_string());
    }
    if files.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Checks what can be checked of a folder before its weights are trusted: a corenet checkpoint
/// (it has `model_config.json`) must carry a `manifest.json` whose sizes and SHA-256 digests
/// match; an HF folder has no manifest, so its files are checked as they are read (safetensors
/// header, shapes, finite values; see [`copy_tensors`]). Only the files a load reads are hashed
/// (config and weights, not the optimizer state). Returns whether a manifest was verified.
pub fn verify_folder(dir: &Path) -> Result<bool> {
    if !dir.exists() {
        return Err(Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: "does not exist".into(),
        });
    }
    if !dir.is_dir() {
        return Err(Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: "is not a directory (a checkpoint or HF folder is a directory)".into(),
        });
    }
    if dir.join(MANIFEST_FILE).exists() {
        // What loading reads: the config and the weight files (not the optimizer state).
        let config = [CONFIG_FILE, MODEL_CONFIG_FILE, INDEX_FILE]
            .into_iter()
            .filter(|f| dir.join(f).is_file())
            .map(str::to_string);
        let weights = weight_files(dir)?
            .into_iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string));
        let names: Vec<String> = config.chain(weights).collect();
        crate::manifest::verify_files(dir, names.iter().map(String::as_str))?;
        return Ok(true);
    }
    if dir.join(MODEL_CONFIG_FILE).is_file() && !dir.join(CONFIG_FILE).is_file() {
        return Err(Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!(
                "a corenet checkpoint ({MODEL_CONFIG_FILE}) without {MANIFEST_FILE}: incomplete or hand-made, its files cannot be verified"
            ),
        });
    }
    Ok(false)
}

/// Builds a model with the folder's own config on `device` and loads its weights exactly. A PEFT
/// checkpoint (one with `adapters.json`) opens as its base with the adapters attached,
/// unmerged ([`open_adapted`]).
pub fn open(dir: &Path, device: Device) -> Result<(nn::VarStore, OpenElm)> {
    open_with_base(dir, None, device)
}

/// [`open`], taking a PEFT checkpoint's base weights from `base` instead of the folder its
/// record names (the base moved, or was a seeded initialisation).
pub fn open_with_base(
    dir: &Path,
    base: Option<&Path>,
    device: Device,
) -> Result<(nn::VarStore, OpenElm)> {
    if let Some(record) = AdapterRecord::read(dir)? {
        verify_folder(dir)?;
        return open_adapted(dir, &record, base, device);
    }
    let config = read_folder_config(dir)?;
    let vs = nn::VarStore::new(device);
    let model = OpenElm::new(&vs.root(), &config)?;
    load_pretrained(&model, dir)?;
    Ok((vs, model))
}

/// Checks that the folder's architecture is `model`'s, then copies every tensor (converted to
/// the parameter's dtype and device), resizing the vocabulary rows if the sizes differ.
pub fn load_pretrained(model: &OpenElm, dir: &Path) -> Result<()> {
    let verified = verify_folder(dir)?;
    let folder = read_folder_config(dir)?;
    check_architecture(&folder, model.config(), dir)?;
    let files = weight_files(dir)?;
    copy_tensors(model.named_parameters(), &files, true)?;
    let (from, to) = (folder.vocab_size, model.config().vocab_size);
    if from != to {
        tracing::info!(
            dir = %dir.display(),
            from,
            to,
            copied = from.min(to),
            "resized the vocabulary: shared rows copied, {}",
            if to > from { "extra rows keep their initialisation" } else { "extra rows of the file dropped" }
        );
    }
    tracing::info!(dir = %dir.display(), files = files.len(), manifest_verified = verified, "loaded pretrained weights");
    Ok(())
}

/// The architecture fields that must agree, as text: every field except the vocabulary size
/// (resized on load), `max_context_length` (stored, unused by the model) and `padding_index` (a
/// training choice). Multipliers are stored as per-layer lists by HF and as ranges by recipes,
/// so what they resolve to is compared.
fn architecture(c: &OpenElmConfig) -> Result<Vec<(&'static str, String)>> {
    let layers = c.layers()?;
    let per_layer = |f: fn(&crate::scaling::LayerDims) -> usize| {
        format!("{:?}", layers.iter().map(f).collect::<Vec<_>>())
    };
    Ok(vec![
        (
            "num_transformer_layers",
            c.num_transformer_layers.to_string(),
        ),
        ("model_dim", c.model_dim.to_string()),
        ("head_dim", c.head_dim.to_string()),
        ("num_gqa_groups", c.num_gqa_groups.to_string()),
        ("num_query_heads", per_layer(|l| l.query_heads)),
        ("num_kv_heads", per_layer(|l| l.kv_heads)),
        ("ffn_multipliers (FFN widths)", per_layer(|l| l.ffn_dim)),
        ("ffn_with_glu", c.ffn_with_glu.to_string()),
        (
            "normalize_qk_projections",
            c.normalize_qk_projections.to_string(),
        ),
        (
            "share_input_output_layers",
            c.share_input_output_layers.to_string(),
        ),
        ("rope_freq_constant", c.rope_freq_constant.to_string()),
        ("rope_max_length", c.rope_max_length.to_string()),
    ])
}

/// The first architecture field in which the folder's config differs from the model's.
fn check_architecture(folder: &OpenElmConfig, model: &OpenElmConfig, dir: &Path) -> Result<()> {
    for ((field, f), (_, m)) in architecture(folder)?.into_iter().zip(architecture(model)?) {
        if f != m {
            return Err(Error::ArchitectureMismatch {
                path: dir.to_path_buf(),
                field: field.to_string(),
                folder: f,
                model: m,
            });
        }
    }
    Ok(())
}
