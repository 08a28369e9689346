//! The run's log: the one place the trainer hands a finished step to. It owns every sink — the
//! metrics JSONL, TensorBoard, the progress bar and the `tracing` event — and the counters
//! behind their values (tokens/s window, MFU, time spent waiting for data), so the trainer only
//! says what happened.
//!
//! Only rank 0 (or a single process) writes files; in a dry run nothing is written. Throughput
//! and MFU are per device: `tokens_per_s` is the whole job's rate (every rank's tokens), and
//! MFU divides that by the world size before comparing it with one device's peak, so a
//! data-parallel run reports the same MFU as one device doing the same per-device work.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use indicatif::{ProgressBar, ProgressStyle};
use tch::Device;

use crate::checkpoint::SaveRecord;
use crate::error::{Error, Result};
use crate::log::curves::{plot, RunCurves, XAxis};
use crate::log::metrics::{MetricsRecord, MetricsSink};
use crate::log::mlflow::{recipe_params, MlflowConfig, MlflowSink, RunStatus};
use crate::log::progress::human_duration;
use crate::log::tensorboard::EventWriter;
use crate::log::throughput::{mfu, peak_bf16_flops, Throughput};
use crate::recipe::LoggingConfig;
use crate::validate::ValidationReport;

/// The picture a run keeps of its own curves, next to `metrics.jsonl`.
pub const CURVES_FILE: &str = "curves.png";
/// One line per checkpoint save: its stall, write time and size, or its error.
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";

/// Steps the tokens/s window spans.
const THROUGHPUT_WINDOW: usize = 20;

/// What happened in one optimizer step, as the trainer read it back.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// Steps completed once this one is (1-based).
    pub step: u64,
    pub tokens_seen: u64,
    pub loss: f64,
    pub ce: f64,
    pub z_loss: f64,
    pub grad_norm: f64,
    /// A DPO step's rewards and accuracy.
    pub preference: Option<PreferenceReport>,
    /// The learning rate the step used.
    pub lr: f64,
    /// Skipped (non-finite) steps of the run so far.
    pub skipped_steps: u64,
    /// How long the step waited for its batches.
    pub data_wait: Duration,
    /// Completed passes over the sources so far, summed over sources (this rank's stream).
    pub data_epochs: u64,
}

/// What a DPO step logs besides its loss, as trl names them: `rewards/chosen` and
/// `rewards/rejected` (means of β·(log π − log π_ref)), `rewards/margins` (their difference)
/// `rewards/accuracies` (share of pairs whose chosen reward is the larger), and `logps/chosen`
/// and `logps/rejected` (means of the policy's summed log-probabilities of the answers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreferenceReport {
    pub reward_chosen: f64,
    pub reward_rejected: f64,
    pub accuracy: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
}

/// Where the run's log goes and how it is computed.
#[derive(Debug, Clone)]
pub struct RunLogSetup<'a> {
    pub logging: &'a LoggingConfig,
    /// The resolved recipe, written as `recipe.yaml` next to the metrics.
    pub recipe_yaml: String,
    pub log_dir: &'a Path,
    /// Steps completed before this process started (a resume); the metrics file keeps lines
    /// up to here.
    pub start_step: u64,
    /// The recipe's step budget (the last step is always logged).
    pub total_steps: u64,
    /// Rank 0 or a single process: the only writer of files.
    pub root: bool,
    /// Write nothing at all.
    pub dry_run: bool,
    pub device: Device,
    pub world_size: usize,
    /// Training FLOPs per token (6N plus attention).
    pub flops_per_token: f64,
    /// Seconds the run had already spent before this process (the checkpoint's `elapsed_s`).
    pub elapsed_before: f64,
    /// The run validates (`validation.jsonl` is written).
    pub validates: bool,
}

/// The TensorBoard sink: its event file is created at the first value written, so resuming a
/// finished run (nothing to log) leaves no empty file behind.
struct TensorBoard {
    dir: PathBuf,
    writer: Option<EventWriter>,
}

impl TensorBoard {
    /// The writer, created now if needed; a new file starts with a session START at `step`,
    /// the first step it logs.
    fn writer(&mut self, step: u64) -> Result<&mut EventWriter> {
        let writer = match self.writer.take() {
            Some(writer) => writer,
            None => {
                let mut writer = EventWriter::create(&self.dir)?;
                writer.start_session(step as i64)?;
                writer
            }
        };
        Ok(self.writer.insert(writer))
    }
}

/// The sinks and counters of one run.
pub struct RunLog {
    metrics: Option<MetricsSink>,
    tensorboard: Option<TensorBoard>,
    /// `tb/by_tokens/`: the losses against tokens seen. A directory of its own (a run, to
    /// TensorBoard), because a resumed session's START marker purges the events at or past its
    /// step, and that step must be in the same unit as the events it purges.
    tensorboard_tokens: Option<TensorBoard>,
    progress: Option<ProgressBar>,
    show_progress: bool,
    interval: u64,
    total_steps: u64,
    throughput: Throughput,
    flops_per_token: f64,
    /// Dense bf16 peak of one device, when known.
    peak_flops: Option<f64>,
    device: Device,
    world_size: usize,
    /// Data wait summed over the steps since the last log line, and their number.
    data_wait: Duration,
    waited_steps: u32,
    /// The last epoch count seen, to announce each rollover once.
    data_epochs: Option<u64>,
    /// `validation.jsonl`, continued like the metrics.
    validation: Option<MetricsSink>,
    /// `checkpoints.jsonl`: one line per save, what it cost or why it failed.
    checkpoints: Option<MetricsSink>,
    /// When this process's run log opened, and the run's seconds before it.
    started: Instant,
    elapsed_before: f64,
    /// The last validation loss, for the progress bar.
    last_val_loss: Option<f64>,
    /// The MLflow run (`logging.mlflow`), fed from a background thread.
    mlflow: Option<MlflowSink>,
    mlflow_config: Option<MlflowConfig>,
}

/// One line of `validation.jsonl`: the report with the run's clocks.
#[derive(Serialize)]
struct ValidationLine<'a> {
    #[serde(flatten)]
    report: &'a ValidationReport,
    tokens_seen: u64,
    elapsed_s: f64,
    /// Unix time in seconds.
    time: f64,
}

/// A metrics line's numbers, by their JSONL names (`time` and `world_size` left out).
fn tracked_numbers(record: &MetricsRecord) -> Vec<(String, f64)> {
    let mut out = vec![
        ("loss".to_string(), record.loss),
        ("ce".to_string(), record.ce),
        ("z_loss".to_string(), record.z_loss),
        ("lr".to_string(), record.lr),
        ("grad_norm".to_string(), record.grad_norm),
        ("tokens_seen".to_string(), record.tokens_seen as f64),
        ("tokens_per_s".to_string(), record.tokens_per_s),
    ];
    out.extend(record.mfu.map(|v| ("mfu".to_string(), v)));
    out.extend(record.memory.map(|v| ("memory".to_string(), v as f64)));
    for (key, value) in &record.extras {
        if let (false, Some(v)) = (key == "time" || key == "world_size", value.as_f64()) {
            out.push((key.clone(), v));
        }
    }
    out
}

/// Seconds since the Unix epoch (0 on a clock before it).
fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl RunLog {
    /// Opens the sinks (rank 0 outside a dry run: `recipe.yaml`, `metrics.jsonl` continued
    /// after `start_step`, and `tb/` when TensorBoard is on).
    pub fn open(setup: RunLogSetup<'_>) -> Result<RunLog> {
        let writes = setup.root && !setup.dry_run;
        let mlflow = match (&setup.logging.mlflow, writes) {
            (Some(config), true) => Some(MlflowSink::start(
                config,
                setup.log_dir,
                recipe_params(&setup.recipe_yaml),
                setup.start_step > 0,
            )),
            _ => None,
        };
        let (metrics, (tensorboard, tensorboard_tokens), validation, checkpoints) = if writes {
            let dir = setup.log_dir;
            std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
            let recipe = dir.join("recipe.yaml");
            std::fs::write(&recipe, &setup.recipe_yaml)
                .map_err(|e| Error::io("write", &recipe, e))?;
            let metrics = MetricsSink::resume(dir.join("metrics.jsonl"), setup.start_step)?;
            let validation = setup
                .validates
                .then(|| MetricsSink::resume(dir.join("validation.jsonl"), setup.start_step))
                .transpose()?;
            let board = |sub: &str| TensorBoard {
                dir: dir.join(sub),
                writer: None,
            };
            let tensorboard = match setup.logging.tensorboard {
                true => (Some(board("tb")), Some(board("tb/by_tokens"))),
                false => (None, None),
            };
            let checkpoints = MetricsSink::resume(dir.join(CHECKPOINTS_FILE), setup.start_step)?;
            (Some(metrics), tensorboard, validation, Some(checkpoints))
        } else {
            (None, (None, None), None, None)
        };
        Ok(RunLog {
            metrics,
            tensorboard,
            tensorboard_tokens,
            progress: None,
            show_progress: writes && setup.logging.progress,
            interval: setup.logging.interval.max(1),
            total_steps: setup.total_steps,
            throughput: Throughput::new(THROUGHPUT_WINDOW),
            flops_per_token: setup.flops_per_token,
            peak_flops: device_peak_flops(setup.logging, setup.device),
            device: setup.device,
            world_size: setup.world_size.max(1),
            data_wait: Duration::ZERO,
            waited_steps: 0,
            data_epochs: None,
            validation,
            checkpoints,
            started: Instant::now(),
            elapsed_before: setup.elapsed_before,
            last_val_loss: None,
            mlflow,
            mlflow_config: setup.logging.mlflow.clone(),
        })
    }

    /// Ends the tracking run (if any): tags the final checkpoint, waits a bounded time for the
    /// buffered metrics, and marks the run FINISHED, KILLED (stopped by a signal; a resume
    /// continues it) or FAILED.
    pub fn end_tracking(&mut self, status: RunStatus, final_checkpoint: Option<&Path>) {
        let (Some(sink), Some(config)) = (self.mlflow.take(), &self.mlflow_config) else {
            return;
        };
        let wait = Duration::from_secs(config.finish_timeout_s);
        if let Some(path) = final_checkpoint {
            sink.set_tag("corenet.final_checkpoint", &path.display().to_string());
        }
        let stats = sink.finish(status, wait);
        tracing::info!(
            ?status,
            sent_batches = stats.sent_batches,
            failed_requests = stats.failed_requests,
            dropped_metrics = stats.dropped_metrics,
            "tracking run ended"
        );
    }

    /// Tokens seen as a second x-axis: TensorBoard plots a tag against its own steps, so these
    /// scalars are logged at step = tokens seen, in `tb/by_tokens/`.
    fn by_tokens(&mut self, tokens_seen: u64, scalars: &[(&str, f32)]) -> Result<()> {
        let Some(tb) = &mut self.tensorboard_tokens else {
            return Ok(());
        };
        let tb = tb.writer(tokens_seen)?;
        tb.add_scalars(tokens_seen as i64, scalars)?;
        tb.flush()
    }

    /// Queues metrics for the tracking server at `step`.
    fn track(&self, step: u64, metrics: Vec<(String, f64)>) {
        if let Some(sink) = &self.mlflow {
            sink.log_metrics(step, (unix_time() * 1e3) as i64, &metrics);
        }
    }

    /// Redraws `curves.png` next to the metrics (rank 0; at each checkpoint and at the end). A
    /// picture that cannot be drawn is a warning: it never stops training.
    pub fn refresh_curves(&self) {
        let Some(dir) = self.metrics.as_ref().and_then(|m| m.path().parent()) else {
            return;
        };
        let out = dir.join(CURVES_FILE);
        let drawn = RunCurves::read(dir).and_then(|run| plot(&[run], XAxis::Step, &out));
        match drawn {
            Ok(()) => tracing::debug!(path = %out.display(), "loss curves drawn"),
            Err(e) => {
                tracing::warn!(path = %out.display(), error = %e, "could not draw the loss curves")
            }
        }
    }

    /// Seconds the run has spent, over every process since its start (resumes included; the
    /// time between a crash and its last checkpoint is not counted).
    pub fn elapsed_s(&self) -> f64 {
        self.elapsed_before + self.started.elapsed().as_secs_f64()
    }

    /// Records a validation: one line of `validation.jsonl`, TensorBoard scalars (by step, and
    /// by tokens seen under `by_tokens/`), a `validation` event, and the progress bar.
    pub fn validation(&mut self, report: &ValidationReport, tokens_seen: u64) -> Result<()> {
        self.last_val_loss = Some(report.val_loss);
        let line = ValidationLine {
            report,
            tokens_seen,
            elapsed_s: self.elapsed_s(),
            time: unix_time(),
        };
        if let Some(sink) = &mut self.validation {
            sink.write_line(report.step, &line)?;
        }
        let mut tracked = vec![
            ("val_loss".to_string(), report.val_loss),
            ("val_perplexity".to_string(), report.val_perplexity),
        ];
        for (name, set) in &report.sources {
            tracked.push((format!("val/{name}/loss"), set.loss));
        }
        for task in &report.tasks {
            tracked.push((format!("tasks/{}/acc", task.task), task.acc));
        }
        self.track(report.step, tracked);
        if let Some(tb) = &mut self.tensorboard {
            let mut scalars = vec![
                ("val/loss".to_string(), report.val_loss as f32),
                ("val/perplexity".to_string(), report.val_perplexity as f32),
            ];
            for (name, set) in &report.sources {
                scalars.push((format!("val/{name}/loss"), set.loss as f32));
                scalars.push((format!("val/{name}/perplexity"), set.perplexity as f32));
            }
            for task in &report.tasks {
                scalars.push((format!("tasks/{}/acc", task.task), task.acc as f32));
            }
            let named: Vec<(&str, f32)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            let tb = tb.writer(report.step)?;
            tb.add_scalars(report.step as i64, &named)?;
            tb.flush()?;
        }
        self.by_tokens(
            tokens_seen,
            &[("by_tokens/val_loss", report.val_loss as f32)],
        )?;
        let per_source: Vec<String> = report
            .sources
            .iter()
            .map(|(name, set)| format!("{name}={:.4}", set.loss))
            .collect();
        tracing::info!(
            step = report.step,
            val_loss = %format_args!("{:.4}", report.val_loss),
            val_perplexity = %format_args!("{:.2}", report.val_perplexity),
            sources = %per_source.join(" "),
            seconds = %format_args!("{:.2}", report.seconds),
            "validation"
        );
        for task in &report.tasks {
            tracing::info!(step = report.step, task = %task.task, n = task.n, acc = task.acc, acc_norm = ?task.acc_norm, "validation task");
        }
        Ok(())
    }

    /// Records a finished save: a line of `checkpoints.jsonl`, TensorBoard's `checkpoint/`
    /// scalars and an event.
    pub fn checkpoint(&mut self, record: &SaveRecord) -> Result<()> {
        if let Some(sink) = &mut self.checkpoints {
            sink.write_line(record.step, record)?;
        }
        self.track(
            record.step,
            vec![
                ("checkpoint_stall_s".to_string(), record.stall_s),
                ("checkpoint_write_s".to_string(), record.write_s),
            ],
        );
        if let Some(tb) = &mut self.tensorboard {
            let tb = tb.writer(record.step)?;
            let scalars = [
                ("checkpoint/stall_s", record.stall_s as f32),
                ("checkpoint/write_s", record.write_s as f32),
            ];
            tb.add_scalars(record.step as i64, &scalars)?;
            tb.flush()?;
        }
        tracing::info!(
            step = record.step,
            stall_s = %format_args!("{:.3}", record.stall_s),
            write_s = %format_args!("{:.3}", record.write_s),
            gib = %format_args!("{:.3}", record.bytes as f64 / f64::from(1u32 << 30)),
            background = record.background,
            "checkpoint written"
        );
        Ok(())
    }

    /// Records a save that failed (the run keeps its last good checkpoint and stops).
    pub fn checkpoint_failed(&mut self, step: u64, error: &Error) {
        tracing::error!(step, error = %error, "checkpoint failed; the previous checkpoint is kept and training stops");
        let line =
            serde_json::json!({ "step": step, "error": error.to_string(), "time": unix_time() });
        if let Some(sink) = &mut self.checkpoints {
            if let Err(e) = sink.write_line(step, &line) {
                tracing::warn!(error = %e, "could not record the failed checkpoint");
            }
        }
    }

    /// Shows the progress bar (when asked for, on rank 0) at `step` of the step budget.
    pub fn start(&mut self, step: u64) {
        if !self.show_progress {
            return;
        }
        let bar = ProgressBar::new(self.total_steps);
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}") {
            bar.set_style(style);
        }
        bar.set_position(step);
        super::progress::show(&bar);
        self.progress = Some(bar);
    }

    /// Counts a finished step: throughput, data wait and epochs always; the progress bar on
    /// rank 0; and on log steps (every `logging.interval` and the last) one metrics line, the
    /// TensorBoard scalars and a `train` event.
    pub fn step(&mut self, report: &StepReport) -> Result<()> {
        self.throughput
            .record(Instant::now(), report.step, report.tokens_seen);
        self.data_wait += report.data_wait;
        self.waited_steps += 1;
        self.announce_epochs(report);
        let tokens_per_s = self.throughput.tokens_per_s().unwrap_or(0.0);
        if let Some(bar) = &self.progress {
            bar.set_position(report.step);
            let val = self
                .last_val_loss
                .map(|v| format!(" val {v:.4}"))
                .unwrap_or_default();
            bar.set_message(format!(
                "loss {:.4}{val} lr {:.2e} {:.0} tok/s",
                report.loss, report.lr, tokens_per_s
            ));
        }
        let log_step = report.step.is_multiple_of(self.interval) || report.step == self.total_steps;
        if !log_step || self.metrics.is_none() && self.tensorboard.is_none() {
            return Ok(());
        }
        self.write(report, tokens_per_s)
    }

    /// Clears the progress bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.progress.take() {
            super::progress::hide();
            bar.finish_and_clear();
        }
    }

    fn write(&mut self, report: &StepReport, tokens_per_s: f64) -> Result<()> {
        let per_device = tokens_per_s / self.world_size as f64;
        let data_wait_ms = match self.waited_steps {
            0 => 0.0,
            n => self.data_wait.as_secs_f64() * 1e3 / f64::from(n),
        };
        self.data_wait = Duration::ZERO;
        self.waited_steps = 0;
        let elapsed_s = self.elapsed_s();
        let record = MetricsRecord {
            step: report.step,
            loss: report.loss,
            ce: report.ce,
            z_loss: report.z_loss,
            lr: report.lr,
            grad_norm: report.grad_norm,
            tokens_seen: report.tokens_seen,
            tokens_per_s,
            mfu: self
                .peak_flops
                .and_then(|peak| mfu(self.flops_per_token, per_device, peak)),
            memory: self.peak_memory(),
            extras: Default::default(),
        }
        .with_extra("skipped_steps", report.skipped_steps)
        .with_extra("world_size", self.world_size as u64)
        .with_extra("tokens_per_s_per_device", per_device)
        .with_extra("data_wait_ms", data_wait_ms)
        .with_extra("data_epochs", report.data_epochs)
        .with_extra("elapsed_s", elapsed_s)
        .with_extra("time", unix_time());
        let record = match report.preference {
            Some(p) => record
                .with_extra("rewards/chosen", p.reward_chosen)
                .with_extra("rewards/rejected", p.reward_rejected)
                .with_extra("rewards/margins", p.reward_chosen - p.reward_rejected)
                .with_extra("rewards/accuracies", p.accuracy)
                .with_extra("logps/chosen", p.logps_chosen)
                .with_extra("logps/rejected", p.logps_rejected),
            None => record,
        };
        // This process's object-store traffic so far (none for local shards).
        let remote = corenet_data::remote_totals();
        let record = match remote.requests {
            0 => record,
            _ => record
                .with_extra("data_remote_requests", remote.requests)
                .with_extra("data_remote_retries", remote.retries)
                .with_extra("data_remote_bytes", remote.bytes),
        };
        let record = match &self.mlflow {
            Some(sink) => {
                let stats = sink.stats();
                record
                    .with_extra("tracking_pending", stats.pending_metrics)
                    .with_extra("tracking_failed_requests", stats.failed_requests)
                    .with_extra("tracking_dropped", stats.dropped_metrics)
            }
            None => record,
        };
        self.track(report.step, tracked_numbers(&record));
        if let Some(metrics) = &mut self.metrics {
            metrics.write(&record)?;
        }
        if let Some(tb) = &mut self.tensorboard {
            let mut scalars = vec![
                ("loss/total_loss", report.loss as f32),
                ("loss/ce_loss", report.ce as f32),
                ("loss/z_loss", report.z_loss as f32),
                ("lr", report.lr as f32),
                ("grad_norm", report.grad_norm as f32),
                ("tokens_per_s", tokens_per_s as f32),
                ("tokens_seen", report.tokens_seen as f32),
                ("skipped_steps", report.skipped_steps as f32),
                ("data_wait_ms", data_wait_ms as f32),
                ("elapsed_s", elapsed_s as f32),
            ];
            if let Some(mfu) = record.mfu {
                scalars.push(("mfu", mfu as f32));
            }
            if let Some(memory) = record.memory {
                scalars.push(("memory_gib", (memory as f64 / f64::from(1u32 << 30)) as f32));
            }
            let tb = tb.writer(report.step)?;
            tb.add_scalars(report.step as i64, &scalars)?;
            tb.flush()?;
        }
        self.by_tokens(
            report.tokens_seen,
            &[("by_tokens/loss", report.loss as f32)],
        )?;
        // For people reading a log: rounded, with the budget and an ETA (metrics.jsonl keeps
        // full precision for machines).
        let eta = self
            .throughput
            .steps_per_s()
            .filter(|&rate| rate > 0.0)
            .map(|rate| {
                let left = self.total_steps.saturating_sub(report.step) as f64 / rate;
                human_duration(Duration::from_secs_f64(left.min(1e9)))
            });
        tracing::info!(
            step = %format_args!("{}/{}", report.step, self.total_steps),
            loss = %format_args!("{:.4}", report.loss),
            ce = %format_args!("{:.4}", report.ce),
            z_loss = %format_args!("{:.2e}", report.z_loss),
            lr = %format_args!("{:.3e}", report.lr),
            grad_norm = %format_args!("{:.3}", report.grad_norm),
            tokens_per_s = %format_args!("{tokens_per_s:.0}"),
            data_wait_ms = %format_args!("{data_wait_ms:.1}"),
            eta = %eta.as_deref().unwrap_or("-"),
            "train"
        );
        Ok(())
    }

    /// An epoch rollover is worth a line: a run that cycles its data is seeing documents again.
    fn announce_epochs(&mut self, report: &StepReport) {
        let before = self.data_epochs.replace(report.data_epochs);
        if before.is_some_and(|b| report.data_epochs > b) {
            tracing::info!(
                step = report.step,
                data_epochs = report.data_epochs,
                "data epoch completed: a source started another pass over its shards"
            );
        }
    }

    /// The CUDA caching allocator's peak on a GPU, the process's resident high-water mark on
    /// the CPU.
    fn peak_memory(&self) -> Option<u64> {
        match self.device {
            Device::Cuda(i) => corenet_ffi::device::cuda_peak_allocated(i).ok(),
            _ => corenet_ffi::device::peak_rss_bytes(),
        }
    }
}

/// One device's dense bf16 peak: the recipe's `logging.device_peak_flops`, else the table's
/// entry for the CUDA device's name (as the driver reports it), else unknown.
fn device_peak_flops(logging: &LoggingConfig, device: Device) -> Option<f64> {
    logging.device_peak_flops.or_else(|| match device {
        Device::Cuda(_) => peak_bf16_flops(&corenet_ffi::device::device_name(device)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::metrics::read_metrics;

    fn report(step: u64, epochs: u64) -> StepReport {
        StepReport {
            step,
            tokens_seen: step * 1000,
            loss: 3.0,
            ce: 2.9,
            z_loss: 0.1,
            grad_norm: 1.0,
            preference: None,
            lr: 1e-3,
            skipped_steps: 0,
            data_wait: Duration::from_millis(2 * step),
            data_epochs: epochs,
        }
    }

    fn open(dir: &Path, world_size: usize, peak: Option<f64>) -> RunLog {
        let logging = LoggingConfig {
            interval: 2,
            tensorboard: false,
            progress: false,
            dir: None,
            device_peak_flops: peak,
            mlflow: None,
        };
        RunLog::open(RunLogSetup {
            logging: &logging,
            recipe_yaml: "run: {}\n".into(),
            log_dir: dir,
            start_step: 0,
            total_steps: 5,
            root: true,
            dry_run: false,
            device: Device::Cpu,
            world_size,
            flops_per_token: 1e6,
            elapsed_before: 0.0,
            validates: false,
        })
        .expect("open")
    }

    #[test]
    fn log_steps_carry_data_wait_epochs_and_per_device_mfu() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open(dir.path(), 2, Some(1e12));
        for step in 1..=5 {
            log.step(&report(step, u64::from(step >= 3))).expect("step");
        }
        let lines = read_metrics(dir.path().join("metrics.jsonl")).expect("read");
        let steps: Vec<u64> = lines.iter().map(|r| r.step).collect();
        assert_eq!(steps, [2, 4, 5], "every interval and the last step");
        // Mean wait of the steps since the previous line: (2 + 4) / 2 ms, then (6 + 8) / 2 ms.
        let wait = |i: usize| lines[i].extras["data_wait_ms"].as_f64().expect("wait");
        assert!((wait(0) - 3.0).abs() < 1e-9 && (wait(1) - 7.0).abs() < 1e-9);
        assert_eq!(lines[0].extras["data_epochs"], 0);
        assert_eq!(lines[1].extras["data_epochs"], 1);
        for line in &lines[1..] {
            let per_device = line.extras["tokens_per_s_per_device"]
                .as_f64()
                .expect("per device");
            // Steps here are microseconds apart, so the rates are large: compare relatively.
            assert!((per_device - line.tokens_per_s / 2.0).abs() <= 1e-12 * per_device);
            let mfu = line.mfu.expect("the recipe gave a peak");
            let want = 1e6 * per_device / 1e12;
            assert!((mfu - want).abs() <= 1e-12 * want, "{mfu}");
        }
    }

    #[test]
    fn no_peak_no_mfu_and_a_dry_run_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = open(dir.path(), 1, None);
        for step in 1..=2 {
            log.step(&report(step, 0)).expect("step");
        }
        let lines = read_metrics(dir.path().join("metrics.jsonl")).expect("read");
        assert_eq!(lines[0].mfu, None);

        let dry = tempfile::tempdir().expect("tempdir");
        let logging = LoggingConfig::default();
        let mut log = RunLog::open(RunLogSetup {
            logging: &logging,
            recipe_yaml: String::new(),
            log_dir: dry.path(),
            start_step: 0,
            total_steps: 1,
            root: true,
            dry_run: true,
            device: Device::Cpu,
            world_size: 1,
            flops_per_token: 1.0,
            elapsed_before: 0.0,
            validates: false,
        })
        .expect("open");
        log.start(0);
        log.step(&report(1, 0)).expect("step");
        log.finish();
        assert_eq!(std::fs::read_dir(dry.path()).expect("dir").count(), 0);
    }
}
