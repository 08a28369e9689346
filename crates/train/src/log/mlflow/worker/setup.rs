//! Opening the run: the experiment found or created, the recorded run continued or a new one
//! created, and the run recorded in the log directory for a later resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::retry::Sent;
use super::{now_ms, Stop, Worker};
use crate::log::mlflow::batch::{key_value, truncate_chars, MAX_TAG_VALUE_CHARS};
use crate::log::mlflow::config::MlflowConfig;
use crate::log::mlflow::run_file::{read_run_file, write_run_file, RunFile};

/// What the worker needs to open the run.
pub(in crate::log::mlflow) struct Setup {
    experiment: String,
    run_name: String,
    log_dir: PathBuf,
    pub(super) params: Vec<(String, String)>,
    resuming: bool,
}

impl Setup {
    pub(in crate::log::mlflow) fn new(
        config: &MlflowConfig,
        log_dir: &Path,
        params: Vec<(String, String)>,
        resuming: bool,
    ) -> Setup {
        let run_name = config.run_name.clone().unwrap_or_else(|| {
            log_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "corenet".to_owned())
        });
        Setup {
            experiment: config.experiment.trim().to_owned(),
            run_name,
            log_dir: log_dir.to_path_buf(),
            params,
            resuming,
        }
    }
}

/// A run id and the params that run already holds.
type OpenRun = (String, BTreeMap<String, String>);

const DOES_NOT_EXIST: &str = "RESOURCE_DOES_NOT_EXIST";

impl Worker {
    /// Finds or creates the experiment, then resumes or creates the run and records it;
    /// returns the run id and the params the run already has.
    pub(super) fn open_run(&mut self, setup: &Setup) -> Result<OpenRun, Stop> {
        let experiment_id = self.experiment_id(&setup.experiment)?;
        let resumed = if setup.resuming {
            self.resume_run(setup, &experiment_id)?
        } else {
            None
        };
        let (run_id, logged) = match resumed {
            Some(resumed) => resumed,
            None => (self.create_run(setup, &experiment_id)?, BTreeMap::new()),
        };
        let file = RunFile {
            uri: self.client.base.clone(),
            experiment: setup.experiment.clone(),
            experiment_id,
            run_id: run_id.clone(),
        };
        if let Err(e) = write_run_file(&setup.log_dir, &file) {
            tracing::warn!(error = %e, "cannot record the MLflow run; a resume will start a new one");
        }
        Ok((run_id, logged))
    }

    fn experiment_id(&mut self, name: &str) -> Result<String, Stop> {
        // Two rounds: a create that lost a race with another process finds it the second time.
        for _ in 0..2 {
            if let Some(id) = self.find_experiment(name)? {
                return Ok(id);
            }
            if let Some(id) = self.create_experiment(name)? {
                return Ok(id);
            }
        }
        Err(Stop::Off(format!(
            "experiment `{name}` is neither found nor created"
        )))
    }

    /// The experiment's id; None when the server does not have it.
    fn find_experiment(&mut self, name: &str) -> Result<Option<String>, Stop> {
        let found =
            self.send(|c, t| c.get("experiments/get-by-name", &[("experiment_name", name)], t));
        let answer = match found {
            Sent::Rejected(r) if r.code == DOES_NOT_EXIST => return Ok(None),
            other => other.required("experiments/get-by-name")?,
        };
        let experiment = &answer["experiment"];
        if experiment["lifecycle_stage"] == "deleted" {
            return Err(Stop::Off(format!(
                "experiment `{name}` is deleted on the server; restore it \
                 (`mlflow experiments restore`) or choose another logging.mlflow.experiment"
            )));
        }
        match experiment["experiment_id"].as_str() {
            Some(id) => Ok(Some(id.to_owned())),
            None => Err(Stop::Off(format!(
                "experiments/get-by-name answered {answer}"
            ))),
        }
    }

    /// The new experiment's id; None when another process created it first.
    fn create_experiment(&mut self, name: &str) -> Result<Option<String>, Stop> {
        let body = json!({ "name": name });
        let answer = match self.send(|c, t| c.post("experiments/create", &body, t)) {
            Sent::Rejected(r) if r.code == "RESOURCE_ALREADY_EXISTS" => return Ok(None),
            other => other.required("experiments/create")?,
        };
        let Some(id) = answer["experiment_id"].as_str() else {
            return Err(Stop::Off(format!("experiments/create answered {answer}")));
        };
        tracing::info!(uri = %self.client.base, experiment = name, experiment_id = id, "created MLflow experiment");
        Ok(Some(id.to_owned()))
    }

    /// The recorded run, set RUNNING again, with its params; None when there is none to
    /// continue (no file, another server or experiment, a deleted run).
    fn resume_run(&mut self, setup: &Setup, experiment_id: &str) -> Result<Option<OpenRun>, Stop> {
        let Some(run_id) = self.recorded_run(setup) else {
            return Ok(None);
        };
        let Some(run) = self.get_run(&run_id)? else {
            return Ok(None);
        };
        let info = &run["info"];
        if info["lifecycle_stage"] != "active"
            || info["experiment_id"].as_str() != Some(experiment_id)
        {
            tracing::warn!(run_id, "the recorded MLflow run is deleted or in another experiment; starting a new MLflow run");
            return Ok(None);
        }
        let body = json!({ "run_id": run_id, "status": "RUNNING" });
        self.send(|c, t| c.post("runs/update", &body, t))
            .required("runs/update")?;
        tracing::info!(uri = %self.client.base, run_id, "continuing MLflow run");
        Ok(Some((run_id, run_params(&run))))
    }

    /// The run id in the run file, when the file names this server and experiment.
    fn recorded_run(&self, setup: &Setup) -> Option<String> {
        let Some(file) = read_run_file(&setup.log_dir) else {
            tracing::info!(log_dir = %setup.log_dir.display(), "no MLflow run recorded; starting a new MLflow run");
            return None;
        };
        if file.uri != self.client.base || file.experiment != setup.experiment {
            tracing::info!(
                recorded_uri = %file.uri,
                recorded_experiment = %file.experiment,
                "the recorded MLflow run is on another server or experiment; starting a new MLflow run"
            );
            return None;
        }
        Some(file.run_id)
    }

    /// The run as `runs/get` gives it; None when the server no longer has it.
    fn get_run(&mut self, run_id: &str) -> Result<Option<Value>, Stop> {
        match self.send(|c, t| c.get("runs/get", &[("run_id", run_id)], t)) {
            Sent::Rejected(r) if r.code == DOES_NOT_EXIST => {
                tracing::warn!(
                    run_id,
                    "the recorded MLflow run is gone; starting a new MLflow run"
                );
                Ok(None)
            }
            other => Ok(Some(other.required("runs/get")?["run"].clone())),
        }
    }

    fn create_run(&mut self, setup: &Setup, experiment_id: &str) -> Result<String, Stop> {
        let body = json!({
            "experiment_id": experiment_id,
            "run_name": setup.run_name,
            "start_time": now_ms(),
            "tags": run_tags(setup),
        });
        let answer = self
            .send(|c, t| c.post("runs/create", &body, t))
            .required("runs/create")?;
        let Some(id) = answer["run"]["info"]["run_id"].as_str() else {
            return Err(Stop::Off(format!("runs/create answered {answer}")));
        };
        tracing::info!(uri = %self.client.base, run_id = id, experiment_id, "created MLflow run");
        Ok(id.to_owned())
    }
}

/// The tags a new run starts with: its name, source, log directory and user.
fn run_tags(setup: &Setup) -> Vec<Value> {
    let log_dir = setup.log_dir.display().to_string();
    let mut tags = vec![
        key_value("mlflow.runName", &setup.run_name),
        key_value("mlflow.source.name", "corenet-rs"),
        key_value("mlflow.source.type", "LOCAL"),
        key_value(
            "corenet.log_dir",
            &truncate_chars(&log_dir, MAX_TAG_VALUE_CHARS),
        ),
    ];
    if let Some(user) = std::env::var("USER").ok().filter(|u| !u.is_empty()) {
        tags.push(key_value("mlflow.user", &user));
    }
    tags
}

/// The params a run holds, from its `runs/get` form.
fn run_params(run: &Value) -> BTreeMap<String, String> {
    run["data"]["params"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["key"].as_str()?.to_owned(),
                p["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}
