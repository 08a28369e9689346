//! Multiple-choice accuracy as the harness aggregates it: `acc` is 1 when the choice with the
//! highest log-likelihood is the gold one; `acc_norm` divides each log-likelihood by the length
//! of the choice's text (the choice without the target delimiter) first.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::scoring::Scorer;
use crate::task::{Doc, Task};

/// One task's scores over `n` items, with the harness's standard errors of the mean.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskResult {
    pub task: String,
    pub n: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    /// `None` for tasks whose harness config reports only acc (boolq, winogrande).
    pub acc_norm: Option<f64>,
    pub acc_norm_stderr: Option<f64>,
}

/// The first index of the largest value (NumPy's argmax).
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 || (i == 0 && v.is_nan()) {
            best = (i, v);
        }
    }
    best.0
}

/// Sample standard error of the mean of 0/1 outcomes.
fn stderr(hits: &[f64]) -> f64 {
    let n = hits.len() as f64;
    if hits.len() < 2 {
        return 0.0;
    }
    let mean = hits.iter().sum::<f64>() / n;
    let var = hits.iter().map(|h| (h - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (var / n).sqrt()
}

fn mean(hits: &[f64]) -> f64 {
    hits.iter().sum::<f64>() / hits.len().max(1) as f64
}

/// Scores every request of `docs` in one call to the scorer (so it can batch across items),
/// then aggregates.
pub fn evaluate(task: Task, docs: &[Doc], scorer: &mut dyn Scorer) -> Result<TaskResult> {
    let requests: Vec<_> = docs
        .iter()
        .flat_map(|d| d.requests.iter().cloned())
        .collect();
    let lls = scorer.loglikelihoods(&requests)?;
    if lls.len() != requests.len() {
        return Err(Error::config(
            "eval",
            format!(
                "the scorer answered {} of {} requests",
                lls.len(),
                requests.len()
            ),
        ));
    }
    let (mut acc, mut acc_norm) = (Vec::new(), Vec::new());
    let mut offset = 0;
    for doc in docs {
        let lls = &lls[offset..offset + doc.requests.len()];
        offset += doc.requests.len();
        let hit = |i: usize| f64::from(u8::from(i == doc.gold));
        acc.push(hit(argmax(lls.iter().copied())));
        let normalised = lls
            .iter()
            .zip(&doc.choice_lengths)
            .map(|(ll, len)| ll / (*len).max(1) as f64);
        acc_norm.push(hit(argmax(normalised)));
    }
    let norm = task.reports_acc_norm();
    Ok(TaskResult {
        task: task.name().to_string(),
        n: docs.len(),
        acc: mean(&acc),
        acc_stderr: stderr(&acc),
        acc_norm: norm.then(|| mean(&acc_norm)),
        acc_norm_stderr: norm.then(|| stderr(&acc_norm)),
    })
}
