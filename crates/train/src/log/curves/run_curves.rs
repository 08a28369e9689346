//! [`RunCurves`]: one run's logged values as the panels need them, read from its
//! `metrics.jsonl` and `validation.jsonl`; a [`Position`] places each value along every
//! possible x axis.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::XAxis;
use crate::error::{Error, Result};

/// The training metrics of a run, one JSON object per log step ([`crate::log::metrics`]).
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The validation results of a run, one JSON object per validation.
pub const VALIDATION_FILE: &str = "validation.jsonl";

/// Where a logged value sits along each possible x axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    pub step: u64,
    pub tokens_seen: Option<u64>,
    pub elapsed_s: Option<f64>,
}

impl Position {
    pub(super) fn x(&self, axis: XAxis) -> Option<f64> {
        match axis {
            XAxis::Step => Some(self.step as f64),
            XAxis::Tokens => self.tokens_seen.map(|t| t as f64),
            XAxis::Time => self.elapsed_s.filter(|t| t.is_finite()),
        }
    }
}

/// One line of `metrics.jsonl`, reduced to what the panels draw; NaN where the value was
/// `null` or missing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainPoint {
    pub at: Position,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
}

/// One line of `validation.jsonl`: the overall loss and each source's.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationPoint {
    pub at: Position,
    pub loss: f64,
    pub sources: BTreeMap<String, f64>,
}

/// The curves of one run, as read from its log directory.
#[derive(Debug, Clone, PartialEq)]
pub struct RunCurves {
    /// The name in the legends: the directory's file name.
    pub name: String,
    /// The directory holding `metrics.jsonl`.
    pub dir: PathBuf,
    /// Sorted by step.
    pub train: Vec<TrainPoint>,
    /// Sorted by step; empty when the run has no `validation.jsonl`.
    pub validation: Vec<ValidationPoint>,
}

// The reader's own line types rather than `MetricsRecord`: every field but `step` may be
// missing here (older or hand-made files, and fields this picture does not draw), and a bad
// line must be reported with its number.
#[derive(Deserialize)]
struct MetricsLine {
    step: u64,
    #[serde(default)]
    tokens_seen: Option<u64>,
    #[serde(default)]
    elapsed_s: Option<f64>,
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    lr: Option<f64>,
    #[serde(default)]
    grad_norm: Option<f64>,
    #[serde(default)]
    tokens_per_s: Option<f64>,
}

#[derive(Deserialize)]
struct ValidationLine {
    step: u64,
    #[serde(default)]
    tokens_seen: Option<u64>,
    #[serde(default)]
    elapsed_s: Option<f64>,
    #[serde(default)]
    val_loss: Option<f64>,
    #[serde(default)]
    sources: BTreeMap<String, SourceLine>,
}

#[derive(Deserialize)]
struct SourceLine {
    #[serde(default)]
    loss: Option<f64>,
}

fn nan(v: Option<f64>) -> f64 {
    v.unwrap_or(f64::NAN)
}

impl From<MetricsLine> for TrainPoint {
    fn from(m: MetricsLine) -> TrainPoint {
        TrainPoint {
            at: Position {
                step: m.step,
                tokens_seen: m.tokens_seen,
                elapsed_s: m.elapsed_s,
            },
            loss: nan(m.loss),
            lr: nan(m.lr),
            grad_norm: nan(m.grad_norm),
            tokens_per_s: nan(m.tokens_per_s),
        }
    }
}

impl From<ValidationLine> for ValidationPoint {
    fn from(v: ValidationLine) -> ValidationPoint {
        ValidationPoint {
            at: Position {
                step: v.step,
                tokens_seen: v.tokens_seen,
                elapsed_s: v.elapsed_s,
            },
            loss: nan(v.val_loss),
            sources: v
                .sources
                .into_iter()
                .map(|(name, s)| (name, nan(s.loss)))
                .collect(),
        }
    }
}

impl RunCurves {
    /// Reads a run: `dir` is a directory holding `metrics.jsonl` (a run's log directory, by
    /// default the run directory itself), or that file's path. `validation.jsonl` next to it
    /// is read when present.
    pub fn read(dir: &Path) -> Result<RunCurves> {
        let dir = log_dir(dir);
        let no_metrics = |reason: &str| Error::NoMetrics {
            dir: dir.clone(),
            reason: reason.to_string(),
        };
        if !dir.is_dir() {
            return Err(no_metrics("it is not a directory"));
        }
        let metrics_path = dir.join(METRICS_FILE);
        if !metrics_path.is_file() {
            return Err(no_metrics(&format!(
                "it holds no {METRICS_FILE} (give a run directory, or the log directory of its recipe)"
            )));
        }
        let train = read_train(&metrics_path)?;
        if train.is_empty() {
            return Err(no_metrics(&format!("its {METRICS_FILE} has no records")));
        }
        let validation = read_validation(&dir.join(VALIDATION_FILE))?;
        Ok(RunCurves {
            name: run_name(&dir),
            dir,
            train,
            validation,
        })
    }

    /// Whether the run can be drawn against `axis` (older metrics files lack `elapsed_s`).
    pub(super) fn has_axis(&self, axis: XAxis) -> bool {
        self.train.iter().any(|p| p.at.x(axis).is_some())
            || self.validation.iter().any(|p| p.at.x(axis).is_some())
    }
}

/// The directory `path` names: `metrics.jsonl`'s own path stands for the directory holding it.
fn log_dir(path: &Path) -> PathBuf {
    if path.is_file() && path.file_name().is_some_and(|n| n == METRICS_FILE) {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        path.to_path_buf()
    }
}

fn read_train(path: &Path) -> Result<Vec<TrainPoint>> {
    let mut train: Vec<TrainPoint> = read_jsonl::<MetricsLine>(path)?
        .into_iter()
        .map(TrainPoint::from)
        .collect();
    train.sort_by_key(|p| p.at.step);
    Ok(train)
}

/// A run that never validated has no `validation.jsonl`: it is drawn without validation
/// points rather than refused.
fn read_validation(path: &Path) -> Result<Vec<ValidationPoint>> {
    let lines = match read_jsonl::<ValidationLine>(path) {
        Ok(lines) => lines,
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut validation: Vec<ValidationPoint> =
        lines.into_iter().map(ValidationPoint::from).collect();
    validation.sort_by_key(|p| p.at.step);
    Ok(validation)
}

/// The directory's file name; for `.` or `..`, the name of the directory they stand for.
fn run_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            std::fs::canonicalize(dir)
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        .unwrap_or_else(|| dir.display().to_string())
}

/// Reads one JSON object per non-empty line. A line that does not parse is an error naming
/// the file and line, except a torn last line (a writer killed mid-line), which is skipped.
fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut out = Vec::with_capacity(lines.len());
    for (k, &(i, line)) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(v) => out.push(v),
            Err(e) if k + 1 == lines.len() && e.is_eof() => {
                tracing::warn!(path = %path.display(), line = i + 1, error = %e, "skipping a torn last line");
            }
            Err(source) => {
                return Err(Error::JsonLine {
                    path: path.to_path_buf(),
                    line: i + 1,
                    source,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::curves::fake_run::fake_run;

    #[test]
    fn reads_metrics_and_validation_of_a_run() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = fake_run(tmp.path(), "run-a", 0.0);
        let run = RunCurves::read(&dir).expect("read");
        assert_eq!(run.name, "run-a");
        assert_eq!(run.train.len(), 30);
        assert!(run.train[2].tokens_per_s.is_nan(), "null reads as NaN");
        assert_eq!(run.validation.len(), 6);
        assert_eq!(run.validation[0].sources.len(), 2);
        // The metrics file's own path names the same run.
        let same = RunCurves::read(&dir.join(METRICS_FILE)).expect("read file");
        assert_eq!((same.name, same.dir), (run.name, run.dir));
    }

    #[test]
    fn missing_or_empty_metrics_name_the_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let empty = tmp.path().join("empty-run");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let err = RunCurves::read(&empty).expect_err("no metrics").to_string();
        assert!(
            err.contains("empty-run") && err.contains("no metrics"),
            "{err}"
        );
        std::fs::write(empty.join(METRICS_FILE), "\n").expect("write");
        let err = RunCurves::read(&empty).expect_err("no records").to_string();
        assert!(
            err.contains("empty-run") && err.contains("no records"),
            "{err}"
        );
        let err = RunCurves::read(&tmp.path().join("absent"))
            .expect_err("absent")
            .to_string();
        assert!(err.contains("absent"), "{err}");
    }

    #[test]
    fn bad_lines_name_file_and_line_but_a_torn_last_line_is_skipped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = fake_run(tmp.path(), "run-a", 0.0);
        let path = dir.join(METRICS_FILE);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"step\":310,\"loss\":4.6");
        std::fs::write(&path, &text).expect("write");
        assert_eq!(RunCurves::read(&dir).expect("torn line").train.len(), 30);

        let mut lines: Vec<&str> = text.lines().collect();
        lines[4] = "{\"step\": \"five\"}";
        std::fs::write(&path, lines.join("\n")).expect("write");
        let err = RunCurves::read(&dir).expect_err("bad line").to_string();
        assert!(
            err.contains("metrics.jsonl") && err.contains("line 5"),
            "{err}"
        );
    }
}
