//! The recipe's `eval:` section: what validation scores during training, and how often.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use corenet_data::{DataConfig, Format, SourceConfig};

use crate::error::{Error, Result};

/// A held-out source of its own (files never listed by a training source).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSourceConfig {
    pub name: String,
    /// Files or glob patterns.
    pub paths: Vec<String>,
    #[serde(default)]
    pub format: Option<Format>,
    /// JSON key (dotted) or parquet column of the text.
    #[serde(default = "default_text_key")]
    pub text_key: String,
}

fn default_text_key() -> String {
    "text".into()
}

impl EvalSourceConfig {
    /// As a data source, so it resolves and reads like one.
    pub fn as_source(&self) -> SourceConfig {
        SourceConfig {
            name: self.name.clone(),
            paths: self.paths.clone(),
            format: self.format,
            text_key: self.text_key.clone(),
            ..SourceConfig::default()
        }
    }
}

/// A zero-shot task of `corenet eval tasks`, scored on rank 0 every `task_interval` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalTaskConfig {
    /// arc_easy, arc_challenge, boolq, hellaswag, piqa, sciq or winogrande.
    pub name: String,
    /// The task's jsonl file.
    pub path: PathBuf,
    /// Score only the first N items.
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Validation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Validate every this many steps (and at the end of the run); 0 turns validation off.
    pub interval: u64,
    /// Windows of `data.seq_len` tokens scored per validation set (the first ones of the set).
    pub sequences: usize,
    /// Windows per forward pass.
    pub batch_size: usize,
    /// Score the held-back documents (`data.sources.*.hold_back`) of every training source
    /// that holds some back, each as a set named after its source.
    pub held_back: bool,
    /// Further held-out sets.
    pub sources: Vec<EvalSourceConfig>,
    pub tasks: Vec<EvalTaskConfig>,
    /// Score the tasks every this many steps (and at the end); 0 scores them only at the end.
    pub task_interval: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            interval: 0,
            sequences: 32,
            batch_size: 8,
            held_back: true,
            sources: Vec::new(),
            tasks: Vec::new(),
            task_interval: 0,
        }
    }
}

impl EvalConfig {
    /// Validation (or a task) runs at all.
    pub fn enabled(&self) -> bool {
        self.interval > 0
    }

    /// The training sources whose held-back documents are validation sets.
    pub fn held_back_sources<'a>(
        &self,
        data: &'a DataConfig,
    ) -> impl Iterator<Item = &'a SourceConfig> {
        let on = self.held_back;
        data.sources.iter().filter(move |s| on && s.hold_back > 0.0)
    }

    /// Checks the values against the data section (no file system).
    pub fn validate(&self, data: &DataConfig) -> Result<()> {
        if !self.enabled() {
            if !self.tasks.is_empty() {
                return Err(Error::config(
                    "eval.interval",
                    "eval.tasks are listed but eval.interval is 0 (validation off): set an interval",
                ));
            }
            return Ok(());
        }
        for (key, value) in [
            ("eval.sequences", self.sequences),
            ("eval.batch_size", self.batch_size),
        ] {
            if value == 0 {
                return Err(Error::config(key, "must be at least 1"));
            }
        }
        if self.sources.is_empty() && self.held_back_sources(data).next().is_none() {
            return Err(Error::config(
                "eval.interval",
                "validation is on but there is nothing to score: list eval.sources, or hold back part of a training source (data.sources.N.hold_back: 0.01)",
            ));
        }
        let mut names: Vec<&str> = self
            .held_back_sources(data)
            .map(|s| s.name.as_str())
            .collect();
        for (i, source) in self.sources.iter().enumerate() {
            let key = format!("eval.sources.{i}");
            source
                .as_source()
                .validate()
                .map_err(|e| Error::config(&key, e.to_string()))?;
            if names.contains(&source.name.as_str()) {
                return Err(Error::config(
                    format!("{key}.name"),
                    format!("`{}` is already the name of a validation set (a training source's held-back documents carry its name)", source.name),
                ));
            }
            names.push(&source.name);
        }
        for (i, task) in self.tasks.iter().enumerate() {
            corenet_eval::Task::from_name(&task.name)
                .map_err(|e| Error::config(format!("eval.tasks.{i}.name"), e.to_string()))?;
        }
        Ok(())
    }

    /// Checks that every task file exists (the sources' files are checked when the sets are
    /// built).
    pub fn validate_files(&self) -> Result<()> {
        for (i, task) in self.tasks.iter().enumerate() {
            if !task.path.is_file() {
                return Err(Error::config(
                    format!("eval.tasks.{i}.path"),
                    format!("{} does not exist", task.path.display()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(hold_back: f64) -> DataConfig {
        DataConfig {
            sources: vec![SourceConfig {
                name: "rw".into(),
                paths: vec!["x/*.parquet".into()],
                hold_back,
                ..SourceConfig::default()
            }],
            ..DataConfig::default()
        }
    }

    #[test]
    fn off_by_default_and_needs_something_to_score() {
        let off = EvalConfig::default();
        assert!(!off.enabled() && off.validate(&data(0.0)).is_ok());
        let on = EvalConfig {
            interval: 10,
            ..EvalConfig::default()
        };
        let err = on
            .validate(&data(0.0))
            .expect_err("nothing to score")
            .to_string();
        assert!(
            err.contains("eval.interval") && err.contains("hold_back"),
            "{err}"
        );
        assert!(on.validate(&data(0.05)).is_ok());
        assert_eq!(on.held_back_sources(&data(0.05)).count(), 1);
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = EvalConfig {
            interval: 10,
            ..EvalConfig::default()
        };
        let cases = [
            (
                EvalConfig {
                    sequences: 0,
                    ..base.clone()
                },
                "eval.sequences",
            ),
            (
                EvalConfig {
                    sources: vec![EvalSourceConfig {
                        name: "rw".into(),
                        paths: vec!["v/*.jsonl".into()],
                        format: None,
                        text_key: "text".into(),
                    }],
                    ..base.clone()
                },
                "eval.sources.0.name",
            ),
            (
                EvalConfig {
                    tasks: vec![EvalTaskConfig {
                        name: "mmlu_pro".into(),
                        path: "t.jsonl".into(),
                        limit: None,
                    }],
                    ..base.clone()
                },
                "eval.tasks.0.name",
            ),
            (
                EvalConfig {
                    interval: 0,
                    tasks: vec![EvalTaskConfig {
                        name: "piqa".into(),
                        path: "t.jsonl".into(),
                        limit: None,
                    }],
                    ..base.clone()
                },
                "eval.interval",
            ),
        ];
        for (config, key) in cases {
            let err = config.validate(&data(0.05)).expect_err(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
