//! A recipe file resolved into a [`Recipe`]: YAML → `--set` overrides → model preset
//! resolution → typed sections (unknown keys are errors naming their dotted path) → validation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use corenet_data::{DataConfig, Mode, TextTokenizer};
use corenet_model::{OpenElmConfig, PeftConfig};

use crate::error::{Error, Result};
use crate::optim::{OptimizerConfig, ScheduleConfig};
use crate::recipe::overrides::{
    apply_overrides, deep_merge, from_tree, parse_yaml_value, Override,
};
use crate::recipe::sections::{CheckpointConfig, LoggingConfig, RunConfig, TrainerConfig};
use crate::step::preference::DpoConfig;
use crate::validate::EvalConfig;

/// Most intra-op threads a recipe may ask for: far above any machine's cores, low enough that a
/// typo (100000) fails at once instead of hanging while libtorch creates the threads.
pub const MAX_THREADS: usize = 1024;

/// A resolved, validated run description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub run: RunConfig,
    pub model: OpenElmConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub trainer: TrainerConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Validation during training (off unless `eval.interval` is set).
    #[serde(default)]
    pub eval: EvalConfig,
    /// Parameter-efficient fine-tuning: LoRA/DoRA adapters on a frozen base (absent: every
    /// parameter trains). Left out of the resolved recipe when absent, so older hashes hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<PeftConfig>,
    /// Preference optimisation (DPO) on `data.mode: pairs`, against the starting weights as
    /// the reference model. Left out of the resolved recipe when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<DpoConfig>,
}

impl Recipe {
    /// Reads a recipe file, applies `--set` overrides and resolves it (no file checks yet).
    pub fn load(path: &Path, overrides: &[Override]) -> Result<Recipe> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
        let mut tree = parse_yaml_value(&text, &path.display().to_string())?;
        apply_overrides(&mut tree, overrides)?;
        Self::from_value(tree)
    }

    /// Resolves a value tree: a `model.preset` is expanded (other `model` keys override it),
    /// `schedule.max_iterations` defaults to `trainer.steps`, `data.micro_batch` comes from
    /// `trainer.micro_batch`.
    pub fn from_value(mut tree: Value) -> Result<Recipe> {
        resolve_model_preset(&mut tree)?;
        fill_derived_keys(&mut tree)?;
        let recipe: Recipe = from_tree(&tree)?;
        recipe.validate_values()?;
        Ok(recipe)
    }

    /// Checks the values alone (no file system); `validate_files` checks paths.
    pub fn validate_values(&self) -> Result<()> {
        self.model
            .validate()
            .map_err(|e| Error::config("model", e.to_string()))?;
        self.data
            .validate()
            .map_err(|e| Error::config("data", e.to_string()))?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        if let Some(url) = &self.checkpoint.mirror {
            corenet_data::remote::ObjectUrl::parse(url)
                .map_err(|e| Error::config("checkpoint.mirror", e.to_string()))?;
        }
        self.eval.validate(&self.data)?;
        if let Some(peft) = &self.peft {
            peft.validate().map_err(|e| match e {
                corenet_model::Error::Config { field, message } => Error::config(field, message),
                other => Error::config("peft", other.to_string()),
            })?;
        }
        if let Some(dpo) = &self.dpo {
            dpo.validate()?;
        }
        let pairs = self.data.mode == Mode::Pairs;
        if pairs != self.dpo.is_some() {
            return Err(Error::config(
                "dpo",
                "a `dpo:` section trains on preference pairs and pairs are for DPO: use both `dpo:` and `data.mode: pairs`, or neither",
            ));
        }
        if let Some(mlflow) = &self.logging.mlflow {
            mlflow.validate()?;
        }
        let t = &self.trainer;
        for (key, value) in [
            ("trainer.global_batch", t.global_batch as u64),
            ("trainer.micro_batch", t.micro_batch as u64),
            ("trainer.steps", t.steps),
        ] {
            if value == 0 {
                return Err(Error::config(key, "must be positive"));
            }
        }
        if t.max_bad_steps == 0 {
            return Err(Error::config(
                "trainer.max_bad_steps",
                "must be at least 1: the number of consecutive non-finite steps (skipped, weights unchanged) after which the run stops",
            ));
        }
        if let Some(threads) = t.threads {
            if !(1..=MAX_THREADS).contains(&threads) {
                return Err(Error::config(
                    "trainer.threads",
                    format!("{threads} is outside 1..={MAX_THREADS} (leave it unset for libtorch's default)"),
                ));
            }
        }
        if self.data.seq_len > self.model.max_context_length {
            return Err(Error::config(
                "data.seq_len",
                format!(
                    "{} is longer than model.max_context_length {}",
                    self.data.seq_len, self.model.max_context_length
                ),
            ));
        }
        if t.z_loss.is_nan() || t.z_loss < 0.0 {
            return Err(Error::config("trainer.z_loss", "must be >= 0"));
        }
        if !(t.bucket_mb.is_finite() && t.bucket_mb > 0.0) {
            return Err(Error::config(
                "trainer.bucket_mb",
                format!("{} must be a positive number of MiB", t.bucket_mb),
            ));
        }
        Ok(())
    }

    /// Gradient-accumulation steps for `world_size` ranks.
    pub fn accumulation(&self, world_size: usize) -> Result<usize> {
        let per_step = self.trainer.micro_batch * world_size;
        if !self.trainer.global_batch.is_multiple_of(per_step) {
            return Err(Error::config(
                "trainer.global_batch",
                format!(
                    "{} is not divisible by micro_batch {} × world size {world_size}",
                    self.trainer.global_batch, self.trainer.micro_batch
                ),
            ));
        }
        Ok(self.trainer.global_batch / per_step)
    }

    /// Checks that the tokenizer and every source's shards exist.
    pub fn validate_files(&self) -> Result<()> {
        let tokenizer = &self.data.tokenizer;
        if !tokenizer.exists() {
            return Err(Error::config(
                "data.tokenizer",
                format!("{} does not exist", tokenizer.display()),
            ));
        }
        let in_dir = ["tokenizer.json", "tokenizer.model"].map(|f| tokenizer.join(f));
        if tokenizer.is_dir() && !in_dir.iter().any(|f| f.is_file()) {
            return Err(Error::config(
                "data.tokenizer",
                format!(
                    "{} is a directory without a tokenizer.json or tokenizer.model in it",
                    tokenizer.display()
                ),
            ));
        }
        for (i, source) in self.data.sources.iter().enumerate() {
            for pattern in &source.paths {
                let key = || format!("data.sources.{i}.paths");
                if corenet_data::remote::is_url(std::path::Path::new(pattern)) {
                    // Listed (or HEADed) now: a missing bucket, object or credential stops
                    // the run before its first step.
                    let urls = corenet_data::remote::expand(pattern, &self.data.storage)
                        .map_err(|e| Error::config(key(), e.to_string()))?;
                    if urls.is_empty() {
                        return Err(Error::config(
                            key(),
                            format!("`{pattern}` matches no object"),
                        ));
                    }
                    continue;
                }
                let matched = glob::glob(pattern)
                    .map_err(|e| {
                        Error::config(
                            format!("data.sources.{i}.paths"),
                            format!("bad pattern `{pattern}`: {e}"),
                        )
                    })?
                    .filter_map(|p| p.ok())
                    .any(|p| p.is_file());
                if !matched {
                    return Err(Error::config(
                        format!("data.sources.{i}.paths"),
                        format!("`{pattern}` matches no file"),
                    ));
                }
            }
        }
        self.eval.validate_files()
    }

    /// The tokenizer's ids must fit the model's vocabulary; returns the pad id (the loss
    /// ignores it).
    pub fn check_vocabulary(&self, tokenizer: &dyn TextTokenizer) -> Result<i64> {
        let vocab = self.model.vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::config(
                "model.vocab_size",
                format!(
                    "{vocab} is smaller than the tokenizer's {} ids ({})",
                    tokenizer.vocab_size(),
                    self.data.tokenizer.display()
                ),
            ));
        }
        let pad = tokenizer.pad_id() as usize;
        if self.data.mode == Mode::Corenet && pad >= vocab {
            return Err(Error::config(
                "model.vocab_size",
                format!("corenet mode pads with id {pad}, outside the model's {vocab} rows"),
            ));
        }
        Ok(pad as i64)
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.checkpoint
            .dir
            .clone()
            .unwrap_or_else(|| self.run.dir.join("checkpoints"))
    }

    pub fn log_dir(&self) -> PathBuf {
        self.logging
            .dir
            .clone()
            .unwrap_or_else(|| self.run.dir.clone())
    }

    /// The resolved recipe as YAML (written into the run directory).
    pub fn to_yaml(&self) -> Result<String> {
        serde_norway::to_string(self).map_err(|e| Error::Yaml {
            origin: "resolved recipe".into(),
            reason: e.to_string(),
        })
    }

    /// sha256 of the resolved recipe's canonical JSON; stored in every checkpoint.
    ///
    /// Only what shapes the training arithmetic is hashed: `run` (name, directory),
    /// `checkpoint` (interval, retention, directory), `logging` and `eval` (validation reads the
    /// model, never changes it) are left out, so a run copied to another directory, or resumed
    /// with a different log interval or validation, is the same recipe. (Holding documents back,
    /// `data.sources.N.hold_back`, changes what is trained on and is hashed.)
    pub fn hash(&self) -> String {
        let mut tree = serde_json::to_value(self).unwrap_or_default();
        if let Some(sections) = tree.as_object_mut() {
            for section in ["run", "checkpoint", "logging", "eval"] {
                sections.remove(section);
            }
        }
        // serde_json's maps are sorted by key: the text is canonical.
        let json = tree.to_string();
        let digest = Sha256::digest(json.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn resolve_model_preset(tree: &mut Value) -> Result<()> {
    let Some(model) = tree.get_mut("model").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let Some(preset) = model.remove("preset") else {
        return Ok(());
    };
    let name = preset
        .as_str()
        .ok_or_else(|| Error::config("model.preset", "must be a preset name"))?;
    let base =
        OpenElmConfig::preset(name).map_err(|e| Error::config("model.preset", e.to_string()))?;
    let mut resolved =
        serde_json::to_value(base).map_err(|e| Error::config("model.preset", e.to_string()))?;
    deep_merge(&mut resolved, Value::Object(std::mem::take(model)));
    *model = resolved.as_object().cloned().unwrap_or_default();
    Ok(())
}

fn fill_derived_keys(tree: &mut Value) -> Result<()> {
    let steps = tree.pointer("/trainer/steps").cloned();
    let micro = tree.pointer("/trainer/micro_batch").cloned();
    // The resolved recipe carries both (equal); a hand-written one sets trainer.micro_batch.
    let effective_micro = micro
        .clone()
        .unwrap_or_else(|| Value::from(TrainerConfig::default().micro_batch));
    if let Some(data_micro) = tree.pointer("/data/micro_batch") {
        if *data_micro != effective_micro {
            return Err(Error::config(
                "data.micro_batch",
                "set trainer.micro_batch instead",
            ));
        }
    }
    // The derived key must not take the blame for its source: a malformed `trainer` or
    // `trainer.steps` is reported as itself, before `schedule.max_iterations` is derived.
    if let Some(trainer) = tree.get("trainer").filter(|t| !t.is_object()) {
        return Err(Error::Deserialize {
            path: "trainer".into(),
            message: format!("expected a mapping of trainer keys, found {trainer}"),
        });
    }
    if let Some(bad) = steps.as_ref().filter(|v| !v.is_u64()) {
        return Err(Error::Deserialize {
            path: "trainer.steps".into(),
            message: format!("expected a whole number of optimizer steps, found {bad}"),
        });
    }
    if let (Some(schedule), Some(steps)) = (
        tree.get_mut("schedule").and_then(Value::as_object_mut),
        steps,
    ) {
        schedule.entry("max_iterations").or_insert(steps);
    }
    if let Some(data) = tree.get_mut("data").and_then(Value::as_object_mut) {
        data.insert("micro_batch".into(), effective_micro);
    }
    Ok(())
}
