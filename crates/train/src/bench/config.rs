//! What `corenet bench` measures: the model, the batch shape and the step settings.

use serde::Deserialize;

use corenet_model::OpenElmConfig;

use crate::error::{Error, Result};
use crate::optim::OptimizerConfig;
use crate::recipe::overrides::{from_tree, Override};
use crate::recipe::{DeviceChoice, Precision};

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// A label for the report (a preset name, or "custom").
    pub model_name: String,
    pub model: OpenElmConfig,
    pub seq_len: usize,
    pub micro_batch: usize,
    /// Timed unsynchronised steps.
    pub steps: usize,
    /// Untimed steps first (allocator warm-up, kernel selection).
    pub warmup: usize,
    /// Timed synchronised steps for the phase split.
    pub split_steps: usize,
    pub precision: Precision,
    pub device: DeviceChoice,
    pub activation_checkpointing: bool,
    /// Intra-op CPU threads (libtorch's default when None).
    pub threads: Option<usize>,
    pub seed: u64,
    pub optimizer: OptimizerConfig,
    pub lr: f64,
    pub z_loss: f64,
}

impl BenchConfig {
    /// OpenELM's optimizer settings, lr 5.3e-3 (OpenELM-270M's peak), z-loss 1e-4, seed 0.
    pub fn new(model_name: impl Into<String>, model: OpenElmConfig) -> Self {
        BenchConfig {
            model_name: model_name.into(),
            model,
            seq_len: 2048,
            micro_batch: 1,
            steps: 10,
            warmup: 3,
            split_steps: 3,
            precision: Precision::Bf16,
            device: DeviceChoice::Auto,
            activation_checkpointing: false,
            threads: None,
            seed: 0,
            optimizer: OptimizerConfig::default(),
            lr: 5.3e-3,
            z_loss: 1e-4,
        }
    }

    /// Checks every field before anything is allocated; errors name the option.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.optimizer.validate()?;
        let positive = [
            ("seq", self.seq_len),
            ("micro_batch", self.micro_batch),
            ("steps", self.steps),
            ("split_steps", self.split_steps),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, "must be at least 1"));
            }
        }
        if self.threads == Some(0) {
            return Err(Error::config("threads", "must be at least 1"));
        }
        if self.seq_len > self.model.max_context_length {
            return Err(Error::config(
                "seq",
                format!(
                    "{} exceeds the model's max_context_length {} (raise it with --set model.max_context_length=N)",
                    self.seq_len, self.model.max_context_length
                ),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config("lr", "must be positive"));
        }
        Ok(())
    }
}

/// A preset's architecture with `--set model.key=value` overrides applied (the key path must
/// start with `model.`; unknown keys and bad values are errors naming the key).
pub fn model_config(preset: &str, overrides: &[Override]) -> Result<OpenElmConfig> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tree {
        model: OpenElmConfig,
    }
    let base = OpenElmConfig::preset(preset)?;
    let mut tree = serde_json::json!({
        "model": serde_json::to_value(&base).map_err(|e| Error::config("model", e.to_string()))?
    });
    for o in overrides {
        if o.path.first().map(String::as_str) != Some("model") {
            return Err(Error::config(
                o.dotted_path(),
                "bench only overrides model keys (model.<field>=value)",
            ));
        }
        o.apply(&mut tree)?;
    }
    let config = from_tree::<Tree>(&tree)?.model;
    config.validate()?;
    Ok(config)
}
