//! Checkpoint averaging: the mean of several model files, accumulated in f64 and cast back to
//! each tensor's dtype (as CoreNet's `average_ckpts`; Apple's released OpenELM weights are the
//! average of the last 5 checkpoints).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Averages the model files `paths` (same tensor names and shapes) into `out`.
pub fn average_model_files(paths: &[PathBuf], out: &Path) -> Result<()> {
    let (first, rest) = paths
        .split_first()
        .ok_or_else(|| Error::config("checkpoint average", "no checkpoints to average"))?;
    let mut sums: BTreeMap<String, (Tensor, Kind)> = corenet_model::load_tensors(first)?
        .into_iter()
        .map(|(name, t)| {
            let kind = t.kind();
            (name, (t.to_kind(Kind::Double), kind))
        })
        .collect();
    for path in rest {
        let tensors = corenet_model::load_tensors(path)?;
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
    let n = paths.len() as f64;
    let averaged: Vec<(String, Tensor)> = sums
        .into_iter()
        .map(|(name, (sum, kind))| (name, (sum / n).to_kind(kind)))
        .collect();
    corenet_model::save_tensors(&averaged, out)?;
    Ok(())
}
