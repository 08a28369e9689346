//! Synthetic run directories for the tests of this module: what `metrics.jsonl` and
//! `validation.jsonl` of a short run with two validation sources look like.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{METRICS_FILE, VALIDATION_FILE};

pub(super) fn write_lines(path: &Path, lines: &[serde_json::Value]) {
    let mut f = std::fs::File::create(path).expect("create");
    for line in lines {
        writeln!(f, "{line}").expect("write");
    }
}

/// A run directory named `name` under `root`: 30 log steps, validations every 50 steps
/// on two sources.
pub(super) fn fake_run(root: &Path, name: &str, offset: f64) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let metrics: Vec<_> = (1..=30u64)
        .map(|i| {
            let step = i * 10;
            json!({"step": step, "loss": 8.0 - 3.3 * (step as f64 / 300.0).sqrt() + offset,
                   "ce": 1.0, "z_loss": 0.0,
                   "lr": 5e-4 * (step as f64 / 300.0), "grad_norm": 1.0 / i as f64,
                   "tokens_seen": step * 1024,
                   "tokens_per_s": if i == 3 { serde_json::Value::Null } else { json!(40000.0) },
                   "elapsed_s": step as f64 * 0.5})
        })
        .collect();
    write_lines(&dir.join(METRICS_FILE), &metrics);
    let validation: Vec<_> = (1..=6u64)
        .map(|i| {
            let step = i * 50;
            let loss = 7.0 - i as f64 * 0.3 + offset;
            json!({"step": step, "tokens_seen": step * 1024, "elapsed_s": step as f64 * 0.5,
                   "time": 1764612345.1, "val_loss": loss, "val_perplexity": loss.exp(),
                   "val_tokens": 4096,
                   "sources": {"refinedweb": {"loss": loss - 0.1, "perplexity": 1.0, "tokens": 2048},
                               "pile": {"loss": loss + 0.1, "perplexity": 1.0, "tokens": 2048}}})
        })
        .collect();
    write_lines(&dir.join(VALIDATION_FILE), &validation);
    dir
}
