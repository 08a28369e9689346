//! Checkpoint averaging: the mean of several model files, accumulated in f64 and cast back to
//! each tensor's dtype (as CoreNet's `average_ckpts`; Apple's released OpenELM weights are the
//! average of the last 5 checkpoints). The result is a checkpoint folder of its own — weights,
//! model config, tokenizer and manifest — that `generate`, `eval`, `model export` and
//! `--init-from` accept like any other. PEFT checkpoints average their adapter tensors and keep
//! their `adapters.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use corenet_data::tokenizer_in_folder;
use corenet_model::manifest::Manifest;
use corenet_model::{AdapterRecord, StagedFolder, ADAPTERS_FILE};
use tch::{Kind, Tensor};

use crate::checkpoint::contents::{CHAT_TEMPLATE_FILE, MODEL_CONFIG_FILE, MODEL_FILE};
use crate::checkpoint::store::CheckpointEntry;
use crate::error::{Error, Result};

/// Averages the model weights of `inputs` (newest first) into a new checkpoint folder `out`
/// (absent or empty; written whole or not at all). The model config and tokenizer come from
/// the newest input, and every input's model config must equal it; the manifest records the
/// newest step and every averaged step.
pub fn average_checkpoints(inputs: &[CheckpointEntry], out: &Path) -> Result<Manifest> {
    let newest = inputs
        .first()
        .ok_or_else(|| Error::config("checkpoint average", "no checkpoints to average"))?;
    let config_path = newest.dir.join(MODEL_CONFIG_FILE);
    let config = std::fs::read(&config_path).map_err(|e| Error::io("read", &config_path, e))?;
    let parsed = parse_json(&config_path, &config)?;
    for input in &inputs[1..] {
        let path = input.dir.join(MODEL_CONFIG_FILE);
        let other = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        if parse_json(&path, &other)? != parsed {
            return Err(Error::Checkpoint {
                dir: input.dir.clone(),
                reason: format!(
                    "its {MODEL_CONFIG_FILE} differs from {}'s: checkpoints of different models cannot be averaged",
                    newest.dir.display()
                ),
            });
        }
    }
    let adapters = same_adapters(inputs)?;
    let staged = StagedFolder::create(out)?;
    // A checkpoint written by several ranks holds its weights in one file per rank.
    let files = inputs
        .iter()
        .map(|i| Ok(corenet_model::pretrained::weight_files(&i.dir)?))
        .collect::<Result<Vec<_>>>()?;
    average_models(&files, &staged.path().join(MODEL_FILE))?;
    let target = staged.path().join(MODEL_CONFIG_FILE);
    std::fs::write(&target, &config).map_err(|e| Error::io("write", &target, e))?;
    if let Some(from) = tokenizer_in_folder(&newest.dir) {
        // The same name (tokenizer.json or tokenizer.model) in the average.
        let to = staged.path().join(from.file_name().unwrap_or_default());
        std::fs::copy(&from, &to).map_err(|e| Error::io("copy", &from, e))?;
    }
    let template = newest.dir.join(CHAT_TEMPLATE_FILE);
    if template.is_file() {
        let to = staged.path().join(CHAT_TEMPLATE_FILE);
        std::fs::copy(&template, &to).map_err(|e| Error::io("copy", &template, e))?;
    }
    if let Some(record) = adapters {
        // The averaged adapters still sit on the inputs' base.
        let target = staged.path().join(ADAPTERS_FILE);
        std::fs::write(&target, record.to_json()).map_err(|e| Error::io("write", &target, e))?;
    }
    let mut metadata = serde_json::Map::new();
    let steps: Vec<u64> = inputs.iter().map(|i| i.step).collect();
    metadata.insert("averaged_steps".into(), steps.into());
    Ok(staged.commit(newest.step, metadata)?)
}

/// The inputs' common `adapters.json` (None when none is a PEFT checkpoint). PEFT checkpoints
/// average only with PEFT checkpoints of the same adapters on the same base: their model files
/// hold the adapter tensors, which are averaged one by one like any weights.
fn same_adapters(inputs: &[CheckpointEntry]) -> Result<Option<AdapterRecord>> {
    let records = inputs
        .iter()
        .map(|i| Ok(AdapterRecord::read(&i.dir)?))
        .collect::<Result<Vec<_>>>()?;
    let newest = &records[0];
    for (input, record) in inputs.iter().zip(&records).skip(1) {
        let same = match (newest, record) {
            (None, None) => true,
            (Some(a), Some(b)) => a.peft == b.peft && a.base_fingerprint == b.base_fingerprint,
            _ => false,
        };
        if !same {
            return Err(Error::Checkpoint {
                dir: input.dir.clone(),
                reason: format!(
                    "its {ADAPTERS_FILE} (adapters and base fingerprint) differs from {}'s, or only one of them has one: only checkpoints of the same adapters on the same base can be averaged",
                    inputs[0].dir.display()
                ),
            });
        }
    }
    Ok(newest.clone())
}

fn parse_json(path: &Path, bytes: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Averages the model files `paths` (same tensor names and shapes) into `out`.
pub fn average_model_files(paths: &[PathBuf], out: &Path) -> Result<()> {
    let inputs: Vec<Vec<PathBuf>> = paths.iter().map(|p| vec![p.clone()]).collect();
    average_models(&inputs, out)
}

/// Every tensor of a model stored in `files` (one, or a checkpoint's per-rank parts).
fn load_model(files: &[PathBuf]) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = Vec::new();
    for file in files {
        tensors.extend(corenet_model::load_tensors(file)?);
    }
    Ok(tensors)
}

/// Averages models, each stored in one or more files, into the single file `out`.
fn average_models(inputs: &[Vec<PathBuf>], out: &Path) -> Result<()> {
    let (first_files, rest) = inputs
        .split_first()
        .ok_or_else(|| Error::config("checkpoint average", "no checkpoints to average"))?;
    let first = first_files.first().cloned().unwrap_or_default();
    let mut sums: BTreeMap<String, (Tensor, Kind)> = load_model(first_files)?
        .into_iter()
        .map(|(name, t)| {
            let kind = t.kind();
            (name, (t.to_kind(Kind::Double), kind))
        })
        .collect();
    for files in rest {
        let path = files.first().cloned().unwrap_or_default();
        let path = &path;
        let tensors = load_model(files)?;
        if tensors.len() != sums.len() {
            return Err(Error::Checkpoint {
                dir: path.clone(),
                reason: format!(
                    "has {} tensors, {} has {}",
                    tensors.len(),
                    first.display(),
                    sums.len()
                ),
            });
        }
        for (name, t) in tensors {
            let (sum, _) = sums.get_mut(&name).ok_or_else(|| Error::Checkpoint {
                dir: path.clone(),
                reason: format!("tensor `{name}` is not in {}", first.display()),
            })?;
            if sum.size() != t.size() {
                return Err(Error::Checkpoint {
                    dir: path.clone(),
                    reason: format!(
                        "tensor `{name}` has shape {:?}, expected {:?}",
                        t.size(),
                        sum.size()
                    ),
                });
            }
            *sum += t.to_kind(Kind::Double);
        }
    }
    let n = inputs.len() as f64;
    let averaged: Vec<(String, Tensor)> = sums
        .into_iter()
        .map(|(name, (sum, kind))| (name, (sum / n).to_kind(kind)))
        .collect();
    corenet_model::save_tensors(&averaged, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn write(path: &Path, a: &[f32], b: &[f64]) {
        let tensors = vec![
            ("w".to_string(), Tensor::from_slice(a).view([2, 2])),
            (
                "n".to_string(),
                Tensor::from_slice(b).to_kind(Kind::BFloat16),
            ),
        ];
        corenet_model::save_tensors(&tensors, path).expect("save");
    }

    #[test]
    fn averages_in_f64_and_keeps_each_dtype() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| dir.path().join(format!("{i}.safetensors")))
            .collect();
        write(&paths[0], &[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0]);
        write(&paths[1], &[2.0, 4.0, 6.0, 8.0], &[3.0, 2.0]);
        write(&paths[2], &[3.0, 6.0, 9.0, 12.0], &[5.0, 2.0]);
        let out = dir.path().join("avg.safetensors");
        average_model_files(&paths, &out).expect("average");
        let avg: BTreeMap<String, Tensor> = corenet_model::load_tensors(&out)
            .expect("load")
            .into_iter()
            .collect();
        let w = Vec::<f32>::try_from(avg["w"].view([-1])).expect("w");
        assert_eq!(w, vec![2.0, 4.0, 6.0, 8.0]);
        assert_eq!(avg["n"].kind(), Kind::BFloat16);
        let n =
            Vec::<f32>::try_from(avg["n"].to_kind(Kind::Float).to_device(Device::Cpu)).expect("n");
        assert_eq!(n, vec![3.0, 2.0]);
    }

    #[test]
    fn mismatched_files_are_errors_naming_the_tensor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.safetensors");
        let b = dir.path().join("b.safetensors");
        write(&a, &[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0]);
        let other = vec![
            (
                "w".to_string(),
                Tensor::zeros([4], (Kind::Float, Device::Cpu)),
            ),
            (
                "n".to_string(),
                Tensor::zeros([2], (Kind::BFloat16, Device::Cpu)),
            ),
        ];
        corenet_model::save_tensors(&other, &b).expect("save");
        let err =
            average_model_files(&[a, b], &dir.path().join("o.safetensors")).expect_err("shape");
        assert!(err.to_string().contains("`w`"), "{err}");
        assert!(average_model_files(&[], &dir.path().join("o.safetensors")).is_err());
    }
}
