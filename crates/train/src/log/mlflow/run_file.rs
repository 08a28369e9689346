//! `<log_dir>/mlflow_run.json`: the MLflow run a resume continues.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file in the log directory that records the MLflow run, for a resume to continue it.
pub const RUN_FILE: &str = "mlflow_run.json";

/// What `log_dir/mlflow_run.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct RunFile {
    /// The redacted tracking URI.
    pub(super) uri: String,
    pub(super) experiment: String,
    pub(super) experiment_id: String,
    pub(super) run_id: String,
}

/// The recorded run; None when there is no file or it does not parse (with a warning).
pub(super) fn read_run_file(log_dir: &Path) -> Option<RunFile> {
    let path = log_dir.join(RUN_FILE);
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable MLflow run file; starting a new MLflow run");
            None
        }
    }
}

/// Writes the run file through a temporary file and a rename, so a crash leaves the old one or
/// the new one.
pub(super) fn write_run_file(log_dir: &Path, file: &RunFile) -> Result<()> {
    std::fs::create_dir_all(log_dir).map_err(|e| Error::io("create directory", log_dir, e))?;
    let path = log_dir.join(RUN_FILE);
    let tmp = log_dir.join(format!("{RUN_FILE}.tmp"));
    let text = serde_json::to_string_pretty(file).map_err(|e| Error::Json {
        path: path.clone(),
        source: e,
    })?;
    std::fs::write(&tmp, text + "\n").map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_file_is_written_atomically_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_dir = dir.path().join("run");
        let file = RunFile {
            uri: "http://h:1".into(),
            experiment: "e".into(),
            experiment_id: "1".into(),
            run_id: "abc".into(),
        };
        write_run_file(&log_dir, &file).expect("write");
        assert_eq!(read_run_file(&log_dir), Some(file));
        assert!(!log_dir.join(format!("{RUN_FILE}.tmp")).exists());
        std::fs::write(log_dir.join(RUN_FILE), "{").expect("garble");
        assert_eq!(read_run_file(&log_dir), None);
    }
}
