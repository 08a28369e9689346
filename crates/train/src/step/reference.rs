//! DPO's reference model: the run's starting weights, frozen, in their own variable store. A
//! fresh run copies them from the policy before its first step (after `--init-from` and the
//! data-parallel broadcast; in a PEFT run, the base without adapters). Every checkpoint records
//! where they came from and their fingerprint; a resumed run reloads them from there (or the
//! recipe's seeded initialisation) and refuses any other weights, so the reference a resumed run
//! scores against is bit for bit the one the interrupted run used.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use corenet_model::OpenElm;

use crate::error::{Error, Result};
use crate::step::preference::SequenceScores;

/// Manifest metadata key of a DPO checkpoint's [`ReferenceRecord`].
pub const REFERENCE_KEY: &str = "dpo_reference";

/// Where a DPO run's reference weights came from, and their fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    /// The folder loaded (`--init-from`); None for the recipe's seeded initialisation.
    pub from: Option<PathBuf>,
    /// [`OpenElm::base_fingerprint`] of the reference.
    pub fingerprint: String,
}

impl ReferenceRecord {
    /// The record in checkpoint `dir`'s manifest metadata.
    pub fn read(dir: &Path) -> Result<ReferenceRecord> {
        let manifest = corenet_model::manifest::read_manifest(dir)?;
        let value = manifest.metadata.get(REFERENCE_KEY).cloned();
        let missing = || {
            Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!("not a DPO checkpoint (no `{REFERENCE_KEY}` in its manifest), but the recipe has a `dpo:` section"),
        }
        };
        serde_json::from_value(value.ok_or_else(missing)?).map_err(|e| Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!("`{REFERENCE_KEY}` in its manifest: {e}"),
        })
    }
}

/// The frozen reference model.
pub(crate) struct Reference {
    _vs: nn::VarStore,
    model: OpenElm,
    pub record: ReferenceRecord,
}

impl Reference {
    /// A fresh run's reference: a copy of `policy`'s (base) weights as they start. `built` is
    /// a model of the recipe's architecture in its own store; `from` the folder they came from.
    pub fn copy_of(
        policy: &OpenElm,
        built: (nn::VarStore, OpenElm),
        from: Option<PathBuf>,
    ) -> Result<Reference> {
        let (vs, model) = built;
        tch::no_grad(|| -> Result<()> {
            for ((name, mine), (_, theirs)) in model
                .named_parameters()
                .iter()
                .zip(policy.named_parameters())
            {
                mine.shallow_clone().f_copy_(&theirs).map_err(|e| {
                    Error::config("dpo", format!("copy {name} into the reference: {e}"))
                })?;
            }
            Ok(())
        })?;
        Self::frozen(vs, model, from)
    }

    /// A resumed run's reference: `built` (seeded as the run started), loaded from the
    /// recorded folder or `init` when either names one, and checked against the record.
    pub fn reopen(
        recorded: &ReferenceRecord,
        init: Option<&Path>,
        built: (nn::VarStore, OpenElm),
        dir: &Path,
    ) -> Result<Reference> {
        let (vs, model) = built;
        let from = init
            .map(Path::to_path_buf)
            .or_else(|| recorded.from.clone());
        if let Some(from) = &from {
            corenet_model::pretrained::load_pretrained(&model, from)?;
        }
        let reference = Self::frozen(vs, model, from)?;
        if reference.record.fingerprint != recorded.fingerprint {
            return Err(Error::Checkpoint {
                dir: dir.to_path_buf(),
                reason: format!(
                    "the DPO reference weights ({}) are not the ones this run started from (fingerprint {}, found {})",
                    reference.record.from.as_ref().map_or("the recipe's seeded initialisation".into(), |p| p.display().to_string()),
                    recorded.fingerprint,
                    reference.record.fingerprint
                ),
            });
        }
        Ok(reference)
    }

    fn frozen(vs: nn::VarStore, model: OpenElm, from: Option<PathBuf>) -> Result<Reference> {
        for (_, p) in model.named_parameters() {
            let _ = p.set_requires_grad(false);
        }
        let fingerprint = model.base_fingerprint()?;
        let from = from.map(|f| std::fs::canonicalize(&f).unwrap_or(f));
        Ok(Reference {
            _vs: vs,
            model,
            record: ReferenceRecord { from, fingerprint },
        })
    }

    /// (B,) the summed log-probabilities of each row's targets (those != `ignore`), without
    /// gradients. inputs, targets: (B, T) int64.
    pub fn logps(&self, inputs: &Tensor, targets: &Tensor, ignore: i64) -> Result<Tensor> {
        tch::no_grad(|| {
            let logits = self.model.forward(inputs)?; // (B, T, V)
            let scores = SequenceScores::from_logits(&logits, targets, ignore);
            Ok(scores.logps.detach())
        })
    }
}
