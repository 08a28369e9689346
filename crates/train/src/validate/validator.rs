//! Scoring the validation sets without gradients, split across ranks.
//!
//! A set's windows are cut into batches of `eval.batch_size` exactly as `corenet eval
//! perplexity` batches them; batch `b` (counted over all sets) is scored by rank `b % world`.
//! Each window's summed NLL goes into its own slot of one f64 vector, the vector is
//! all-reduced (every slot has one non-zero contributor, so the sum is exact), and every rank
//! adds the slots up in window order. The result is therefore the same bits on any world size,
//! and equal to `corenet eval perplexity` on the same windows.

use std::time::Instant;

use serde::Serialize;
use tch::{Kind, Tensor};

use corenet_data::TextTokenizer;
use corenet_eval::{evaluate, load_docs, window_nll, ModelScorer, Task, TaskResult};
use corenet_model::OpenElm;

use crate::dist::DataParallel;
use crate::error::Result;
use crate::validate::config::{EvalConfig, EvalTaskConfig};
use crate::validate::validation_set::ValidationSet;

/// One set's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SetResult {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
}

/// One validation: every set, and all sets together (their tokens pooled).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationReport {
    pub step: u64,
    pub val_loss: f64,
    pub val_perplexity: f64,
    pub val_tokens: usize,
    pub sources: std::collections::BTreeMap<String, SetResult>,
    /// Zero-shot tasks, when scored at this step (rank 0 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskResult>,
    /// Wall time of the validation.
    pub seconds: f64,
}

/// The sets and how to score them.
pub struct Validator {
    sets: Vec<ValidationSet>,
    batch_size: usize,
    tasks: Vec<(Task, EvalTaskConfig)>,
    task_interval: u64,
    max_length: usize,
}

impl Validator {
    pub fn new(sets: Vec<ValidationSet>, config: &EvalConfig, max_length: usize) -> Result<Self> {
        let tasks = config
            .tasks
            .iter()
            .map(|t| Ok((Task::from_name(&t.name)?, t.clone())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Validator {
            sets,
            batch_size: config.batch_size,
            tasks,
            task_interval: config.task_interval,
            max_length,
        })
    }

    pub fn sets(&self) -> &[ValidationSet] {
        &self.sets
    }

    /// Whether the tasks are scored at `step` (every `task_interval`, and at the last step).
    pub fn tasks_due(&self, step: u64, last: bool) -> bool {
        !self.tasks.is_empty()
            && (last || (self.task_interval > 0 && step.is_multiple_of(self.task_interval)))
    }

    /// Scores every set at `step`; every rank of a data-parallel run must call it. With
    /// `with_tasks`, rank 0 also scores the zero-shot tasks.
    pub fn run(
        &self,
        step: u64,
        model: &OpenElm,
        tokenizer: &dyn TextTokenizer,
        dp: Option<&DataParallel>,
        with_tasks: bool,
    ) -> Result<ValidationReport> {
        let started = Instant::now();
        let (rank, world) = dp.map_or((0, 1), |dp| (dp.rank(), dp.world_size()));
        let slots = self.window_nlls(model, rank, world)?;
        let slots = match dp {
            Some(dp) => reduce(dp, slots, model.token_embeddings.device())?,
            None => slots,
        };
        let mut sources = std::collections::BTreeMap::new();
        let (mut all_nll, mut all_tokens, mut at) = (0.0, 0usize, 0usize);
        for set in &self.sets {
            let mut nll = 0.0;
            for value in &slots[at..at + set.windows.len()] {
                nll += value;
            }
            at += set.windows.len();
            let tokens = set.tokens();
            let loss = nll / tokens as f64;
            (all_nll, all_tokens) = (all_nll + nll, all_tokens + tokens);
            sources.insert(
                set.name.clone(),
                SetResult {
                    loss,
                    perplexity: loss.exp(),
                    tokens,
                },
            );
        }
        let val_loss = all_nll / all_tokens.max(1) as f64;
        let tasks = match with_tasks && rank == 0 {
            true => self.score_tasks(model, tokenizer)?,
            false => Vec::new(),
        };
        Ok(ValidationReport {
            step,
            val_loss,
            val_perplexity: val_loss.exp(),
            val_tokens: all_tokens,
            sources,
            tasks,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// This rank's batches scored, one slot per window of every set (zero where another rank
    /// scores the window).
    fn window_nlls(&self, model: &OpenElm, rank: usize, world: usize) -> Result<Vec<f64>> {
        let total: usize = self.sets.iter().map(|s| s.windows.len()).sum();
        let mut slots = vec![0.0; total];
        let (mut at, mut batch) = (0usize, 0usize);
        for set in &self.sets {
            for chunk in set.windows.chunks(self.batch_size) {
                if batch % world == rank {
                    let nll = window_nll(model, &set.stream, chunk)?;
                    slots[at..at + chunk.len()].copy_from_slice(&nll);
                }
                at += chunk.len();
                batch += 1;
            }
        }
        Ok(slots)
    }

    fn score_tasks(
        &self,
        model: &OpenElm,
        tokenizer: &dyn TextTokenizer,
    ) -> Result<Vec<TaskResult>> {
        let mut scorer = ModelScorer {
            model,
            tokenizer,
            batch_size: self.batch_size,
            max_length: self.max_length,
            add_bos: true,
        };
        let mut results = Vec::new();
        for (task, config) in &self.tasks {
            let mut docs = load_docs(*task, &config.path)?;
            if let Some(limit) = config.limit {
                docs.truncate(limit);
            }
            results.push(evaluate(*task, &docs, &mut scorer)?);
        }
        Ok(results)
    }
}

/// Sums every rank's slots (on the model's process group, on the CPU for Gloo or the device
/// for NCCL).
fn reduce(dp: &DataParallel, slots: Vec<f64>, device: tch::Device) -> Result<Vec<f64>> {
    let t = Tensor::from_slice(&slots)
        .to_kind(Kind::Double)
        .to_device(device);
    dp.all_reduce_sum(&t)?;
    Ok(Vec::<f64>::try_from(t.to_device(tch::Device::Cpu))?)
}
