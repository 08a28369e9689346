//! The training loop: build the parts in data-flow order, then step, log and checkpoint until
//! the step budget is spent, a signal arrives, or too many steps go bad.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use tch::{nn, Device, Kind, Tensor};

use corenet_data::{Batch, DataStream, HfTokenizer, Mode, TextTokenizer};
use corenet_model::OpenElm;

use crate::checkpoint_store::CheckpointStore;
use crate::error::{Error, Result};
use crate::metrics::{mfu, peak_bf16_flops, MetricsRecord, MetricsSink, Throughput};
use crate::optim::AdamW;
use crate::recipe::{DeviceChoice, Precision, Recipe};
use crate::recompute::{forward_backward, LossSpec};
use crate::schedule::Schedule;
use crate::tensorboard::EventWriter;
use crate::train_state::{read_checkpoint, write_checkpoint, TrainState, STATE_FORMAT_VERSION};

/// Where a run starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Resume {
    /// From scratch (a run directory with checkpoints is left alone but not used).
    #[default]
    Fresh,
    /// From the newest checkpoint that verifies, or from scratch if there is none.
    Auto,
    /// From this checkpoint directory.
    Path(PathBuf),
}

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub resume: Resume,
    /// End this process (with a checkpoint) once this step is reached; the recipe's step
    /// budget still defines the schedule.
    pub stop_at: Option<u64>,
    /// Fault injection for tests: these steps get a NaN loss.
    pub inject_nan_steps: BTreeSet<u64>,
    pub rank: usize,
    pub world_size: usize,
}

/// How a call to `train` ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub start_step: u64,
    pub final_step: u64,
    pub skipped_steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub interrupted: bool,
}

/// Values of one optimizer step, read back to the host.
#[derive(Debug, Clone, Copy)]
struct StepValues {
    loss: f64,
    ce: f64,
    z_loss: f64,
    grad_norm: f64,
}

pub struct Trainer {
    recipe: Recipe,
    device: Device,
    _vs: nn::VarStore,
    model: OpenElm,
    optim: AdamW,
    schedule: Schedule,
    store: CheckpointStore,
    data: DataStream,
    state: TrainState,
    accumulation: usize,
    pad_id: i64,
    metrics: MetricsSink,
    tensorboard: Option<EventWriter>,
    throughput: Throughput,
    flops_per_token: f64,
    peak_flops: Option<f64>,
    stop: Arc<AtomicBool>,
    options: TrainOptions,
}

fn pick_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(Error::config("trainer.device", "cuda requested but no CUDA device is available (was the binary built with --features cuda?)")),
    }
}

impl Trainer {
    /// Validates the recipe and its files, builds every part, and restores a checkpoint if asked.
    pub fn new(recipe: Recipe, options: TrainOptions) -> Result<Trainer> {
        let world = options.world_size.max(1);
        let accumulation = recipe.accumulation(world)?;
        recipe.validate_files()?;
        let tokenizer = HfTokenizer::from_file(&recipe.data.tokenizer)?;
        let pad_id = check_vocab(&recipe, &tokenizer)?;
        if let Some(threads) = recipe.trainer.threads {
            tch::set_num_threads(threads as i32);
        }
        let device = pick_device(recipe.trainer.device)?;
        let (vs, model) = build_model(&recipe, device)?;
        let mut optim = AdamW::new(model.named_parameters(), &recipe.optimizer)?;
        let schedule = Schedule::new(&recipe.schedule)?;
        let store = CheckpointStore::new(recipe.checkpoint_dir(), recipe.checkpoint.keep_last)?;
        let restored = restore(&store, &options.resume, &model, &mut optim)?;
        let recipe_hash = recipe.hash();
        if let Some(state) = &restored {
            if state.recipe_hash != recipe_hash {
                tracing::warn!(checkpoint = %state.recipe_hash, recipe = %recipe_hash, "resuming with a recipe that differs from the checkpoint's");
            }
        }
        let data = DataStream::open(
            &recipe.data,
            options.rank,
            world,
            restored.as_ref().map(|s| s.data.clone()),
        )?;
        let state = restored.unwrap_or_else(|| TrainState {
            format_version: STATE_FORMAT_VERSION,
            step: 0,
            optimizer_steps: 0,
            tokens_seen: 0,
            skipped_steps: 0,
            consecutive_bad: 0,
            data: data.state().clone(),
            recipe_hash: recipe_hash.clone(),
            seed: recipe.trainer.seed,
        });
        let log_dir = recipe.log_dir();
        std::fs::create_dir_all(&log_dir).map_err(|e| Error::io("create", &log_dir, e))?;
        std::fs::write(log_dir.join("recipe.yaml"), recipe.to_yaml()?)
            .map_err(|e| Error::io("write", log_dir.join("recipe.yaml"), e))?;
        let metrics = MetricsSink::resume(log_dir.join("metrics.jsonl"), state.step)?;
        let tensorboard = if recipe.logging.tensorboard {
            Some(EventWriter::create(log_dir.join("tb"))?)
        } else {
            None
        };
        let flops_per_token = recipe.model.training_flops_per_token(recipe.data.seq_len)?;
        let peak_flops = match device {
            Device::Cuda(i) => peak_bf16_flops(&cuda_name(i)),
            _ => None,
        };
        tracing::info!(
            params = recipe.model.param_count()?.total(),
            accumulation,
            start_step = state.step,
            ?device,
            "trainer ready"
        );
        Ok(Trainer {
            recipe,
            device,
            _vs: vs,
            model,
            optim,
            schedule,
            store,
            data,
            state,
            accumulation,
            pad_id,
            metrics,
            tensorboard,
            throughput: Throughput::new(20),
            flops_per_token,
            peak_flops,
            stop: Arc::new(AtomicBool::new(false)),
            options,
        })
    }

    /// Set it (e.g. from a signal handler) to make `train` checkpoint and return.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    pub fn model(&self) -> &OpenElm {
        &self.model
    }

    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Runs until the recipe's step budget (or `stop_at`, or a stop request).
    pub fn train(&mut self) -> Result<RunSummary> {
        let start_step = self.state.step;
        let total = self.recipe.trainer.steps;
        let end = self.options.stop_at.map_or(total, |s| s.min(total));
        let progress = self.progress_bar(total);
        let mut summary = RunSummary {
            start_step,
            final_step: start_step,
            skipped_steps: self.state.skipped_steps,
            first_loss: None,
            last_loss: None,
            interrupted: false,
        };
        while self.state.step < end {
            if self.stop.load(Ordering::SeqCst) {
                summary.interrupted = true;
                break;
            }
            let values = self.train_step()?;
            if values.loss.is_finite() {
                summary.first_loss.get_or_insert(values.loss);
                summary.last_loss = Some(values.loss);
            }
            self.after_step(values, &progress)?;
        }
        progress.finish_and_clear();
        let last_saved = self.store.latest_valid()?.map(|c| c.step);
        if last_saved != Some(self.state.step) {
            self.save()?;
        }
        summary.final_step = self.state.step;
        summary.skipped_steps = self.state.skipped_steps;
        Ok(summary)
    }

    /// Gradient accumulation over micro-batches, clipping, a finiteness check, the update.
    fn train_step(&mut self) -> Result<StepValues> {
        let lr = self.schedule.lr(self.state.step);
        let spec = LossSpec {
            ignore_index: self.pad_id,
            z_coef: self.recipe.trainer.z_loss,
            scale: 1.0 / self.accumulation as f64,
        };
        let mut sums = Tensor::zeros([3], (Kind::Float, self.device)); // total, ce, z
        for _ in 0..self.accumulation {
            let batch = self.next_batch()?;
            let (inputs, targets) = self.batch_tensors(&batch);
            let terms = forward_backward(
                &self.model,
                &inputs,
                &targets,
                spec,
                self.recipe.trainer.activation_checkpointing,
            )?;
            sums += Tensor::stack(&[terms.total, terms.ce, terms.z_loss], 0).to_kind(Kind::Float);
            self.state.data = batch.state;
        }
        if self.options.inject_nan_steps.contains(&self.state.step) {
            sums *= f64::NAN;
        }
        let norm = match self.recipe.optimizer.grad_clip {
            Some(max) => self.optim.clip_grad_norm(max),
            None => self.optim.grad_norm(),
        };
        // The one host sync of a step: the finiteness check needs the values anyway.
        let host = Vec::<f64>::try_from(
            Tensor::cat(
                &[
                    sums / self.accumulation as f64,
                    norm.to_kind(Kind::Float).reshape([1]),
                ],
                0,
            )
            .to_kind(Kind::Double),
        )?;
        let values = StepValues {
            loss: host[0],
            ce: host[1],
            z_loss: host[2],
            grad_norm: host[3],
        };
        if values.loss.is_finite() && values.grad_norm.is_finite() {
            self.optim.step(lr)?;
            self.state.optimizer_steps += 1;
            self.state.consecutive_bad = 0;
        } else {
            self.state.skipped_steps += 1;
            self.state.consecutive_bad += 1;
            tracing::warn!(
                step = self.state.step,
                loss = values.loss,
                grad_norm = values.grad_norm,
                "non-finite step skipped"
            );
        }
        self.optim.zero_grad();
        self.state.step += 1;
        self.state.tokens_seen +=
            (self.recipe.trainer.global_batch * self.recipe.data.seq_len) as u64;
        if self.state.consecutive_bad >= self.recipe.trainer.max_bad_steps {
            self.save()?;
            return Err(Error::NonFinite {
                count: self.state.consecutive_bad,
                step: self.state.step,
            });
        }
        Ok(values)
    }

    fn next_batch(&mut self) -> Result<Batch> {
        match self.data.next() {
            Some(batch) => Ok(batch?),
            None => Err(Error::config("data", "the data stream ended")),
        }
    }

    /// (B, T) inputs and targets on the training device.
    fn batch_tensors(&self, batch: &Batch) -> (Tensor, Tensor) {
        let shape = [batch.micro_batch as i64, batch.seq_len as i64];
        let inputs = Tensor::from_slice(&batch.inputs_i64())
            .view(shape)
            .to_device(self.device);
        let targets = Tensor::from_slice(&batch.targets_i64())
            .view(shape)
            .to_device(self.device);
        (inputs, targets)
    }

    fn after_step(&mut self, values: StepValues, progress: &ProgressBar) -> Result<()> {
        let step = self.state.step;
        self.throughput
            .record(Instant::now(), step, self.state.tokens_seen);
        progress.set_position(step);
        progress.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            values.loss,
            self.schedule.lr(step - 1),
            self.throughput.tokens_per_s().unwrap_or(0.0)
        ));
        let total = self.recipe.trainer.steps;
        if step % self.recipe.logging.interval.max(1) == 0 || step == total {
            self.log(values)?;
        }
        let interval = self.recipe.checkpoint.interval;
        if interval > 0 && step % interval == 0 {
            self.save()?;
        }
        Ok(())
    }

    fn log(&mut self, values: StepValues) -> Result<()> {
        let step = self.state.step;
        let lr = self.schedule.lr(step - 1);
        let tokens_per_s = self.throughput.tokens_per_s().unwrap_or(0.0);
        let record = MetricsRecord {
            step,
            loss: values.loss,
            ce: values.ce,
            z_loss: values.z_loss,
            lr,
            grad_norm: values.grad_norm,
            tokens_seen: self.state.tokens_seen,
            tokens_per_s,
            mfu: self
                .peak_flops
                .and_then(|peak| mfu(self.flops_per_token, tokens_per_s, peak)),
            memory: peak_rss_bytes(),
            extras: Default::default(),
        }
        .with_extra("skipped_steps", self.state.skipped_steps)
        .with_extra("world_size", self.options.world_size.max(1) as u64);
        self.metrics.write(&record)?;
        if let Some(tb) = &mut self.tensorboard {
            let scalars = [
                ("loss/total_loss", values.loss as f32),
                ("loss/ce_loss", values.ce as f32),
                ("loss/z_loss", values.z_loss as f32),
                ("lr", lr as f32),
                ("grad_norm", values.grad_norm as f32),
                ("tokens_per_s", tokens_per_s as f32),
            ];
            tb.add_scalars(step as i64, &scalars)?;
            tb.flush()?;
        }
        tracing::info!(
            step,
            loss = values.loss,
            ce = values.ce,
            z_loss = values.z_loss,
            lr,
            grad_norm = values.grad_norm,
            tokens_per_s,
            "train"
        );
        Ok(())
    }

    /// Writes a checkpoint of the current state (atomically; the old ones stay until it is durable).
    pub fn save(&self) -> Result<()> {
        let mut metadata = serde_json::Map::new();
        metadata.insert("recipe_hash".into(), self.state.recipe_hash.clone().into());
        let saved = self.store.save(self.state.step, metadata, |dir| {
            write_checkpoint(dir, &self.model, &self.optim, &self.state)
        })?;
        tracing::info!(step = self.state.step, dir = %saved.dir.display(), "checkpoint saved");
        Ok(())
    }

    fn progress_bar(&self, total: u64) -> ProgressBar {
        if !self.recipe.logging.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} eta {eta}") {
            bar.set_style(style);
        }
        bar.set_position(self.state.step);
        bar
    }
}

/// The tokenizer's ids must fit the model's vocabulary; returns the pad id (ignored by the loss).
fn check_vocab(recipe: &Recipe, tokenizer: &HfTokenizer) -> Result<i64> {
    let vocab = recipe.model.vocab_size;
    if tokenizer.vocab_size() > vocab {
        return Err(Error::config(
            "model.vocab_size",
            format!(
                "{vocab} is smaller than the tokenizer's {} ids ({})",
                tokenizer.vocab_size(),
                recipe.data.tokenizer.display()
            ),
        ));
    }
    let pad = tokenizer.pad_id() as usize;
    if recipe.data.mode == Mode::Corenet && pad >= vocab {
        return Err(Error::config(
            "model.vocab_size",
            format!("corenet mode pads with id {pad}, outside the model's {vocab} rows"),
        ));
    }
    Ok(pad as i64)
}

/// libtorch's default generator is process-wide: seeding and drawing the initial weights must
/// not interleave with another trainer's (tests run several in parallel threads).
static INIT_LOCK: Mutex<()> = Mutex::new(());

fn build_model(recipe: &Recipe, device: Device) -> Result<(nn::VarStore, OpenElm)> {
    let guard = INIT_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(recipe.trainer.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let model = OpenElm::new(&vs.root(), &recipe.model)?;
    drop(guard);
    if recipe.trainer.precision == Precision::Bf16 {
        vs.bfloat16();
    }
    Ok((vs, model))
}

fn restore(
    store: &CheckpointStore,
    resume: &Resume,
    model: &OpenElm,
    optim: &mut AdamW,
) -> Result<Option<TrainState>> {
    let dir = match resume {
        Resume::Fresh => {
            if let Some(existing) = store.list()?.last() {
                return Err(Error::Checkpoint {
                    dir: existing.dir.clone(),
                    reason: "the run directory already has checkpoints: resume it (--resume auto) or choose a new run.dir".into(),
                });
            }
            return Ok(None);
        }
        Resume::Auto => match store.latest_valid()? {
            Some(checkpoint) => checkpoint.dir,
            None => {
                tracing::info!(dir = %store.root().display(), "no checkpoint to resume from; starting fresh");
                return Ok(None);
            }
        },
        Resume::Path(dir) => {
            CheckpointStore::verify(dir)?;
            dir.clone()
        }
    };
    let state = read_checkpoint(&dir, model, optim)?;
    tracing::info!(step = state.step, dir = %dir.display(), "resumed");
    Ok(Some(state))
}

fn cuda_name(_index: usize) -> String {
    // tch exposes no device-name query; H100 is what our GPU runs use. Overridable later.
    std::env::var("CORENET_DEVICE_NAME").unwrap_or_else(|_| "H100 SXM".into())
}

/// Peak resident memory of this process (Linux), for the metrics on CPU.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
