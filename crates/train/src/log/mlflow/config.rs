//! `logging.mlflow` in a recipe, and how a run ends as MLflow records it.

use serde::{Deserialize, Serialize};

use super::tracking_uri::TrackingUri;
use crate::error::{Error, Result};

/// MLflow's limit on an experiment name.
const MAX_EXPERIMENT_CHARS: usize = 500;

/// `logging.mlflow` in a recipe: where to send the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlflowConfig {
    /// The tracking server, e.g. `http://127.0.0.1:5000` (a path prefix is kept).
    pub uri: String,
    /// Experiment name; created when the server does not have it.
    pub experiment: String,
    /// Run name shown by MLflow; defaults to the log directory's name.
    #[serde(default)]
    pub run_name: Option<String>,
    /// How long the end of a run waits for buffered metrics to reach a server that is slow or
    /// down (what is still unsent then is dropped, counted and logged).
    #[serde(default = "default_finish_timeout_s")]
    pub finish_timeout_s: u64,
}

fn default_finish_timeout_s() -> u64 {
    60
}

impl MlflowConfig {
    /// Checks the URI (http:// or https://, a host) and that the names are not empty.
    pub fn validate(&self) -> Result<()> {
        let uri = self.tracking_uri()?;
        if uri.https && !cfg!(feature = "mlflow-https") {
            return Err(Error::config(
                "logging.mlflow.uri",
                format!(
                    "`{}` is https, and this build has no TLS: use an http:// URI, or build \
                     corenet-train with the `mlflow-https` feature",
                    uri.base
                ),
            ));
        }
        check_experiment(&self.experiment)?;
        check_run_name(self.run_name.as_deref())
    }

    /// The parsed `uri`.
    pub(super) fn tracking_uri(&self) -> Result<TrackingUri> {
        TrackingUri::parse(&self.uri).map_err(|r| Error::config("logging.mlflow.uri", r))
    }
}

fn check_experiment(experiment: &str) -> Result<()> {
    let experiment = experiment.trim();
    if experiment.is_empty() {
        return Err(Error::config(
            "logging.mlflow.experiment",
            "must not be empty",
        ));
    }
    if experiment.chars().count() > MAX_EXPERIMENT_CHARS {
        return Err(Error::config(
            "logging.mlflow.experiment",
            "is longer than MLflow's 500 characters",
        ));
    }
    Ok(())
}

fn check_run_name(run_name: Option<&str>) -> Result<()> {
    if run_name.is_some_and(|n| n.trim().is_empty()) {
        return Err(Error::config(
            "logging.mlflow.run_name",
            "must not be empty; leave it out to name the run after the log directory",
        ));
    }
    Ok(())
}

/// How the run ended, as MLflow records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Finished,
    Failed,
    Killed,
}

impl RunStatus {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_key() {
        let good = MlflowConfig {
            uri: "http://127.0.0.1:5000".into(),
            experiment: "corenet".into(),
            run_name: None,
            finish_timeout_s: 60,
        };
        good.validate().expect("valid");
        let cases = [
            (
                MlflowConfig {
                    uri: "localhost:5000".into(),
                    ..good.clone()
                },
                "logging.mlflow.uri",
            ),
            (
                MlflowConfig {
                    experiment: "  ".into(),
                    ..good.clone()
                },
                "logging.mlflow.experiment",
            ),
            (
                MlflowConfig {
                    run_name: Some(String::new()),
                    ..good.clone()
                },
                "logging.mlflow.run_name",
            ),
        ];
        for (config, key) in cases {
            match config.validate() {
                Err(Error::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{config:?}: {other:?}"),
            }
        }
        let https = MlflowConfig {
            uri: "https://user:pw@mlflow.example.org".into(),
            ..good
        };
        let result = https.validate();
        if cfg!(feature = "mlflow-https") {
            assert!(result.is_ok());
        } else {
            let message = result.expect_err("https without TLS").to_string();
            assert!(message.contains("mlflow-https"), "{message}");
            assert!(!message.contains("pw"), "{message}");
        }
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let parsed: std::result::Result<MlflowConfig, _> =
            serde_norway::from_str("uri: http://h:1\nexperiment: e\nrun_nam: x\n");
        assert!(parsed.is_err());
        let parsed: MlflowConfig =
            serde_norway::from_str("uri: http://h:1\nexperiment: e\n").expect("parse");
        assert_eq!(parsed.run_name, None);
    }
}
