//! Training metrics: a JSONL sink, one object per log step.
//!
//! One line of `metrics.jsonl` looks like
//! `{"step":500,"loss":3.21,"ce":3.2,"z_loss":0.01,"lr":0.0005,"grad_norm":0.8,"tokens_seen":2097152,"tokens_per_s":41000.0,"mfu":0.41,"memory":12884901888,"data_wait_ms":0.3}`.
//! Non-finite floats (a NaN loss) are written as `null` and read back as NaN, since JSON has no
//! NaN; pandas and jq read `null` as missing.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// Names of [`MetricsRecord`]'s fixed fields; extras may not reuse them (the line would carry
/// a duplicate key, and readers keep only one of the two).
pub const FIXED_FIELDS: &[&str] = &[
    "step",
    "loss",
    "ce",
    "z_loss",
    "lr",
    "grad_norm",
    "tokens_seen",
    "tokens_per_s",
    "mfu",
    "memory",
];

/// Metrics of one log step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Optimizer updates done.
    pub step: u64,
    /// Total loss (CE + z-loss) as logged.
    #[serde(serialize_with = "finite_or_null", deserialize_with = "null_as_nan")]
    pub loss: f64,
    #[serde(serialize_with = "finite_or_null", deserialize_with = "null_as_nan")]
    pub ce: f64,
    #[serde(serialize_with = "finite_or_null", deserialize_with = "null_as_nan")]
    pub z_loss: f64,
    #[serde(serialize_with = "finite_or_null", deserialize_with = "null_as_nan")]
    pub lr: f64,
    /// Global L2 norm of the gradients before clipping.
    #[serde(serialize_with = "finite_or_null", deserialize_with = "null_as_nan")]
    pub grad_norm: f64,
    /// Token positions consumed since the start of the run (pads included, as CoreNet counts).
    pub tokens_seen: u64,
    #[serde(serialize_with = "finite_or_null", deserialize_with = "null_as_nan")]
    pub tokens_per_s: f64,
    /// Model FLOPs utilisation in [0, 1], when the device peak is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// Peak device memory in bytes, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Any further fields (data wait, skipped steps, ...), flattened into the same object.
    #[serde(flatten)]
    pub extras: BTreeMap<String, serde_json::Value>,
}

impl MetricsRecord {
    /// Adds an extra field (builder style).
    pub fn with_extra(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.extras.insert(key.into(), value.into());
        self
    }
}

fn finite_or_null<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

fn null_as_nan<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Appends one JSON object per line to `metrics.jsonl`, flushed line by line so a crash loses
/// at most the line being written.
#[derive(Debug)]
pub struct MetricsSink {
    path: PathBuf,
    file: File,
}

impl MetricsSink {
    /// Starts a new metrics file (truncating an existing one), creating parent directories.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        create_parent(&path)?;
        let file = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        Ok(Self { path, file })
    }

    /// Continues a metrics file after resuming from the checkpoint at `after_step`: lines with
    /// a larger step (logged after that checkpoint by the interrupted run, and about to be logged
    /// again) and unreadable lines (a line cut by a kill) are dropped, the rest kept. The
    /// file is rewritten through a temporary file and a rename, so a crash here loses nothing.
    pub fn resume(path: impl Into<PathBuf>, after_step: u64) -> Result<Self> {
        let path = path.into();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Self::create(path),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let mut kept = String::with_capacity(text.len());
        let (mut dropped_later, mut dropped_bad) = (0usize, 0usize);
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => match v.get("step").and_then(serde_json::Value::as_u64) {
                    Some(step) if step > after_step => dropped_later += 1,
                    _ => {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                },
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = i + 1, error = %e, "dropping unreadable metrics line");
                    dropped_bad += 1;
                }
            }
        }
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept.as_bytes()).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
        tracing::info!(path = %path.display(), after_step, dropped_later, dropped_bad, "resumed metrics file");
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        Ok(Self { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one record as one line and flushes it.
    pub fn write(&mut self, record: &MetricsRecord) -> Result<()> {
        let bad = |reason: String| Error::Metrics {
            path: self.path.clone(),
            step: record.step,
            reason,
        };
        if let Some(key) = record
            .extras
            .keys()
            .find(|k| FIXED_FIELDS.contains(&k.as_str()))
        {
            return Err(bad(format!("extra field `{key}` shadows a fixed field")));
        }
        self.write_line(record.step, record)
    }

    /// Writes any record with a `step` as one line (validation results share the sink's
    /// resume rule: lines after the resumed checkpoint's step are dropped).
    pub fn write_line<T: Serialize>(&mut self, step: u64, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::Metrics {
            path: self.path.clone(),
            step,
            reason: e.to_string(),
        })?;
        line.push('\n');
        // One write call per line keeps lines whole even if another process tails the file.
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.file
            .flush()
            .map_err(|e| Error::io("flush", &self.path, e))
    }
}

/// Reads a metrics file back (tests, tools comparing runs). Every line must parse.
pub fn read_metrics(path: impl AsRef<Path>) -> Result<Vec<MetricsRecord>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            })
        })
        .collect()
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => {
            std::fs::create_dir_all(p).map_err(|e| Error::io("create directory", p, e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(step: u64) -> MetricsRecord {
        MetricsRecord {
            step,
            loss: 3.5 - step as f64 * 1e-3,
            ce: 3.4,
            z_loss: 0.1,
            lr: 5.3e-3,
            grad_norm: 0.75,
            tokens_seen: step * 4096,
            tokens_per_s: 12345.5,
            mfu: None,
            memory: None,
            extras: BTreeMap::new(),
        }
    }

    #[test]
    fn jsonl_lines_have_the_documented_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/metrics.jsonl");
        let mut sink = MetricsSink::create(&path).expect("create");
        sink.write(&record(0)).expect("write");
        let full = MetricsRecord {
            mfu: Some(0.42),
            memory: Some(12 << 30),
            ..record(10)
        }
        .with_extra("data_wait_ms", 0.25)
        .with_extra("skipped_steps", 0);
        sink.write(&full).expect("write");
        // Readable while the sink is still open: each line is flushed.
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            json!({"step": 0, "loss": 3.5, "ce": 3.4, "z_loss": 0.1, "lr": 5.3e-3, "grad_norm": 0.75,
                   "tokens_seen": 0, "tokens_per_s": 12345.5})
        );
        assert_eq!(lines[1]["mfu"], 0.42);
        assert_eq!(lines[1]["memory"], 12u64 << 30);
        assert_eq!(lines[1]["data_wait_ms"], 0.25);
        assert_eq!(
            read_metrics(&path).expect("read back"),
            vec![record(0), full]
        );
    }

    #[test]
    fn non_finite_values_are_null_and_read_back_as_nan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        let mut sink = MetricsSink::create(&path).expect("create");
        sink.write(&MetricsRecord {
            loss: f64::NAN,
            grad_norm: f64::INFINITY,
            ..record(3)
        })
        .expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("\"loss\":null") && text.contains("\"grad_norm\":null"),
            "{text}"
        );
        let back = read_metrics(&path).expect("read back");
        assert!(back[0].loss.is_nan() && back[0].grad_norm.is_nan());
    }

    #[test]
    fn extras_may_not_shadow_fixed_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = MetricsSink::create(dir.path().join("m.jsonl")).expect("create");
        let err = sink
            .write(&record(7).with_extra("lr", 1.0))
            .expect_err("must refuse")
            .to_string();
        assert!(err.contains("`lr`") && err.contains("step 7"), "{err}");
    }

    #[test]
    fn resume_drops_lines_after_the_checkpoint_and_a_torn_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("metrics.jsonl");
        let mut sink = MetricsSink::create(&path).expect("create");
        for step in [0, 10, 20, 30] {
            sink.write(&record(step)).expect("write");
        }
        drop(sink);
        // A kill -9 in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"step\":40,\"loss\":3.4").expect("write");
        drop(f);

        let mut sink = MetricsSink::resume(&path, 20).expect("resume");
        sink.write(&record(30)).expect("write");
        let steps: Vec<u64> = read_metrics(&path)
            .expect("read")
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, vec![0, 10, 20, 30]);

        // Resuming with no file yet just creates it.
        let fresh = dir.path().join("new/metrics.jsonl");
        MetricsSink::resume(&fresh, 5)
            .expect("resume")
            .write(&record(6))
            .expect("write");
        assert_eq!(read_metrics(&fresh).expect("read").len(), 1);
    }
}
