//! `adapters.json`: what a checkpoint of a PEFT run says about itself. Its `model.safetensors`
//! holds the adapters only; the base model is named here (where it was loaded from, and the
//! sha256 fingerprint of its weights, [`OpenElm::base_fingerprint`]), so that resuming,
//! evaluating or exporting on another base is refused instead of silently wrong.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::error::{Error, Result};
use crate::openelm::OpenElm;
use crate::peft::PeftConfig;
use crate::pretrained::{load_pretrained, read_folder_config, weight_files};
use crate::weights::copy_tensors;

pub const ADAPTERS_FILE: &str = "adapters.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterRecord {
    pub peft: PeftConfig,
    /// The folder the base weights were loaded from (`--init-from`); None when the base was
    /// the recipe's seeded initialisation.
    pub base: Option<PathBuf>,
    pub base_fingerprint: String,
}

impl AdapterRecord {
    /// The record of checkpoint `dir`, or None when it is not a PEFT checkpoint.
    pub fn read(dir: &Path) -> Result<Option<AdapterRecord>> {
        let path = dir.join(ADAPTERS_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let record: AdapterRecord =
            serde_json::from_slice(&bytes).map_err(|source| Error::Json { path, source })?;
        Ok(Some(record))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// The base whose fingerprint is `found` must be the one the adapters of checkpoint `dir`
    /// were trained on.
    pub fn check_base(&self, found: &str, dir: &Path) -> Result<()> {
        if found == self.base_fingerprint {
            return Ok(());
        }
        let base = match &self.base {
            Some(path) => format!("the weights of {}", path.display()),
            None => "the recipe's seeded initialisation".into(),
        };
        Err(Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!(
                "its adapters were trained on another base model: {ADAPTERS_FILE} records {base} with fingerprint {}, the base here has {}",
                short(&self.base_fingerprint),
                short(found)
            ),
        })
    }
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}

/// Opens a PEFT checkpoint: its config's model on `device`, the base weights from `base` (or
/// the folder the record names), checked against the fingerprint, and the adapters attached
/// and loaded — unmerged.
pub fn open_adapted(
    dir: &Path,
    record: &AdapterRecord,
    base: Option<&Path>,
    device: Device,
) -> Result<(nn::VarStore, OpenElm)> {
    let config = read_folder_config(dir)?;
    let vs = nn::VarStore::new(device);
    let mut model = OpenElm::new(&vs.root(), &config)?;
    match base.or(record.base.as_deref()) {
        Some(base) => load_pretrained(&model, base)?,
        None => {
            return Err(Error::Checkpoint {
                dir: dir.to_path_buf(),
                reason: "a PEFT checkpoint whose base was a seeded initialisation, not a folder: name the base weights (--base)".into(),
            })
        }
    }
    record.check_base(&model.base_fingerprint()?, dir)?;
    model.attach_adapters(&vs.root(), &record.peft)?;
    copy_tensors(model.adapter_parameters(), &weight_files(dir)?, false)?;
    Ok((vs, model))
}
