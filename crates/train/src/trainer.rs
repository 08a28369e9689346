//! The training loop: build the parts in data-flow order, then step, log and checkpoint until
//! the step budget is spent, a signal arrives, or too many steps go bad.
//!
//! Data-parallel runs (a launcher environment with `WORLD_SIZE > 1`) join a c10d process group
//! ([`DataParallel`]): the recipe hash is compared across ranks, rank 0's initial weights are
//! broadcast, each rank reads its own shard of the data, gradients are averaged in buckets after
//! the accumulation loop, and the step's loss sums (plus a stop vote) are all-reduced so every
//! rank takes the same update/skip/stop decision. Only rank 0 writes the run directory's shared
//! files (recipe.yaml, metrics, TensorBoard, checkpoints); a checkpoint holds every rank's
//! data-stream position (`TrainState::data_ranks`), gathered through the store.
//!
//! A step never waits for the device: whether to skip a non-finite update is decided on the
//! device (the fused AdamW's `found_inf`), and the step's values (loss, gradient norm, skip
//! flag, stop votes) travel to the host behind its work ([`Readback`]). With lagged reads (the
//! default on CUDA) they are read after the next step is queued, so logging, skip counting and
//! stop decisions trail the device by one step and the device never idles on the host.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tch::{nn, Device, Kind, Tensor};

use corenet_data::{load_tokenizer, Batch, DataStream, Mode, StreamState, TextTokenizer};
use corenet_model::OpenElm;

use crate::checkpoint_store::CheckpointStore;
use crate::data_parallel::DataParallel;
use crate::dist::DistEnv;
use crate::error::{Error, Result};
use crate::metrics::{mfu, peak_bf16_flops, MetricsRecord, MetricsSink, Throughput};
use crate::optim::found_inf;
use crate::optimizer::Optimizer;
use crate::readback::Readback;
use crate::recipe::{DeviceChoice, Precision, Recipe};
use crate::recompute::{forward_backward, forward_backward_staged, LossSpec, Stage};
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
    /// Used when `dist` is unset: a single process is rank 0 of 1. With `world_size > 1` and no
    /// `dist`, the launcher environment is read ([`DistEnv::from_env`]).
    pub rank: usize,
    pub world_size: usize,
    /// The launcher's description of a data-parallel job (torchrun/Slurm variables); a world of
    /// one trains as a single process.
    pub dist: Option<DistEnv>,
    /// Bounds the rendezvous and every collective and store read ([`DEFAULT_DIST_TIMEOUT`] when
    /// unset): a dead or stuck rank makes the others fail after at most this long.
    pub dist_timeout: Option<Duration>,
    /// When a checkpoint's data-stream positions cannot be restored on this world size, start
    /// the data stream afresh (model, optimizer and counters still resume) instead of failing.
    pub restart_data: bool,
    /// Start a fresh run from existing weights: an HF OpenELM folder (single or sharded
    /// safetensors) or a corenet checkpoint directory, whose architecture must be the recipe's
    /// (the vocabulary may differ: rows are resized). Ignored when the run resumes.
    pub init_from: Option<PathBuf>,
    /// `corenet train --dry-run`: one micro-batch per step instead of the accumulation loop,
    /// no resume, and nothing written into the run directory (no recipe.yaml, metrics,
    /// TensorBoard or checkpoint directory). Driven by [`crate::dry_run`].
    pub dry_run: bool,
}

/// How long collectives wait for a peer unless [`TrainOptions::dist_timeout`] says otherwise.
pub const DEFAULT_DIST_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// Ranks that asked to stop (SIGINT/SIGTERM) this step; always 0 in a single process.
    stop_votes: f64,
    /// The device skipped the update (a non-finite loss or gradient norm).
    skipped: bool,
}

/// A step queued on the device whose values are still on their way to the host.
#[derive(Debug)]
struct PendingStep {
    /// Steps completed once this one is (its 1-based number).
    step: u64,
    tokens_seen: u64,
    /// [loss, ce, z_loss, grad_norm, stop votes, skipped].
    values: Readback,
}

pub struct Trainer {
    recipe: Recipe,
    device: Device,
    _vs: nn::VarStore,
    model: OpenElm,
    optim: Optimizer,
    schedule: Schedule,
    store: CheckpointStore,
    data: DataStream,
    state: TrainState,
    accumulation: usize,
    pad_id: i64,
    /// Rank 0 (or a single process) only.
    metrics: Option<MetricsSink>,
    tensorboard: Option<EventWriter>,
    throughput: Throughput,
    flops_per_token: f64,
    peak_flops: Option<f64>,
    stop: Arc<AtomicBool>,
    options: TrainOptions,
    /// The process group of a data-parallel run (world size > 1).
    dp: Option<DataParallel>,
    /// Step of the last checkpoint this run wrote or resumed from.
    last_saved: Option<u64>,
    /// A data-parallel run stops when any rank asked to (agreed through the loss all-reduce).
    stop_agreed: bool,
    /// Every parameter with the backward stage that finishes its gradient.
    stages: Vec<(Stage, Tensor)>,
    /// Read a step's values after queueing the next one (`trainer.lagged_reads`).
    lagged: bool,
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
    /// In a data-parallel run this joins the process group and blocks until every rank has.
    pub fn new(recipe: Recipe, options: TrainOptions) -> Result<Trainer> {
        let env = dist_env(&options)?;
        let (rank, world) = match &env {
            Some(env) => (env.rank, env.world_size),
            None => (options.rank, options.world_size.max(1)),
        };
        let accumulation = recipe.accumulation(world)?;
        recipe.validate_files()?;
        // Dry runs take one micro-batch per step (the arithmetic above was still checked).
        let accumulation = if options.dry_run { 1 } else { accumulation };
        let tokenizer = load_tokenizer(&recipe.data.tokenizer)?;
        let pad_id = check_vocab(&recipe, tokenizer.as_ref())?;
        if let Some(threads) = recipe.trainer.threads {
            tch::set_num_threads(threads as i32);
        }
        let device = rank_device(pick_device(recipe.trainer.device)?, env.as_ref())?;
        let dp = env
            .as_ref()
            .map(|env| {
                DataParallel::new(
                    env,
                    device,
                    options.dist_timeout.unwrap_or(DEFAULT_DIST_TIMEOUT),
                    recipe.trainer.bucket_mb,
                )
            })
            .transpose()?;
        let recipe_hash = recipe.hash();
        if let Some(dp) = &dp {
            dp.check_recipe_hash(&recipe_hash)?;
        }
        let store = if options.dry_run {
            CheckpointStore::unopened(recipe.checkpoint_dir(), recipe.checkpoint.keep_last)
        } else {
            CheckpointStore::new(recipe.checkpoint_dir(), recipe.checkpoint.keep_last)?
        };
        let resume_dir = match &dp {
            _ if options.dry_run => None,
            None => resolve_resume(&store, &options.resume)?,
            Some(dp) => agree_resume(dp, &store, &options.resume)?,
        };
        let (vs, model) = build_model(&recipe, device)?;
        match (&options.init_from, &resume_dir) {
            (Some(init), Some(dir)) => {
                tracing::info!(init_from = %init.display(), checkpoint = %dir.display(), "resuming this run's checkpoint; --init-from is ignored");
            }
            // Every rank may load; the broadcast below keeps them equal either way.
            (Some(init), None) => corenet_model::pretrained::load_pretrained(&model, init)?,
            (None, _) => {}
        }
        if let Some(dp) = &dp {
            // Same seed, same weights in principle; the broadcast makes it so regardless of
            // the platform's RNG, before the optimizer copies f32 masters from them.
            dp.broadcast_parameters(&model.named_parameters())?;
        }
        let mut optim = Optimizer::new(
            model.named_parameters(),
            &recipe.optimizer,
            recipe.trainer.sharded_optimizer,
            dp.as_ref(),
        )?;
        let schedule = Schedule::new(&recipe.schedule)?;
        let restored = match &resume_dir {
            Some(dir) => {
                let state = read_checkpoint(dir, &model, &mut optim)?;
                tracing::info!(step = state.step, dir = %dir.display(), "resumed");
                Some(state)
            }
            None => None,
        };
        if let Some(state) = &restored {
            if state.recipe_hash != recipe_hash {
                tracing::warn!(checkpoint = %state.recipe_hash, recipe = %recipe_hash, "resuming with a recipe that differs from the checkpoint's");
            }
        }
        let data_resume = match (&restored, &resume_dir) {
            (Some(state), Some(dir)) => {
                rank_data_state(state, dir, rank, world, &recipe, options.restart_data)?
            }
            _ => None,
        };
        let data = DataStream::open(&recipe.data, rank, world, data_resume)?;
        let mut state = restored.unwrap_or_else(|| TrainState {
            format_version: STATE_FORMAT_VERSION,
            step: 0,
            optimizer_steps: 0,
            tokens_seen: 0,
            skipped_steps: 0,
            consecutive_bad: 0,
            data: data.state().clone(),
            data_ranks: Vec::new(),
            recipe_hash: recipe_hash.clone(),
            seed: recipe.trainer.seed,
        });
        // In memory, `data` is this rank's own position; `save` gathers every rank's.
        state.data = data.state().clone();
        state.data_ranks.clear();
        let last_saved = resume_dir.as_ref().map(|_| state.step);
        let (metrics, tensorboard) = if rank == 0 && !options.dry_run {
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
            (Some(metrics), tensorboard)
        } else {
            (None, None)
        };
        let stages = model
            .named_parameters()
            .into_iter()
            .map(|(name, p)| (Stage::of(&name), p))
            .collect();
        let flops_per_token = recipe.model.training_flops_per_token(recipe.data.seq_len)?;
        let peak_flops = match device {
            Device::Cuda(i) => peak_bf16_flops(&cuda_name(i)),
            _ => None,
        };
        tracing::info!(
            params = recipe.model.param_count()?.total(),
            accumulation,
            rank,
            world_size = world,
            start_step = state.step,
            ?device,
            "trainer ready"
        );
        Ok(Trainer {
            lagged: recipe
                .trainer
                .lagged_reads
                .unwrap_or_else(|| device.is_cuda()),
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
            dp,
            last_saved,
            stop_agreed: false,
            stages,
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

    /// One optimizer step as `train` takes it (on one micro-batch in a dry run); returns the
    /// step's loss. Writes nothing; `train` is what logs and checkpoints.
    pub fn step_once(&mut self) -> Result<f64> {
        let pending = self.train_step()?;
        Ok(self.account(pending)?.loss)
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
        let mut in_flight: Option<PendingStep> = None;
        while self.state.step < end {
            if self.stop_requested() {
                summary.interrupted = true;
                break;
            }
            let pending = self.train_step()?;
            let ready = if self.lagged {
                in_flight.replace(pending)
            } else {
                Some(pending)
            };
            if let Some(ready) = ready {
                self.settle(ready, &mut in_flight, &mut summary, &progress)?;
            }
            let interval = self.recipe.checkpoint.interval;
            if interval > 0 && self.state.step % interval == 0 {
                self.settle_all(&mut in_flight, &mut summary, &progress)?;
                self.save()?;
            }
        }
        self.settle_all(&mut in_flight, &mut summary, &progress)?;
        progress.finish_and_clear();
        if self.last_saved != Some(self.state.step) {
            self.save()?;
        }
        summary.final_step = self.state.step;
        summary.skipped_steps = self.state.skipped_steps;
        Ok(summary)
    }

    /// Gradient accumulation over micro-batches, clipping, the update (skipped on the device
    /// when the loss or gradient norm is not finite). Queues the step's values for the host and
    /// returns without reading anything from the device.
    fn train_step(&mut self) -> Result<PendingStep> {
        let lr = self.schedule.lr(self.state.step);
        let spec = LossSpec {
            ignore_index: self.pad_id,
            z_coef: self.recipe.trainer.z_loss,
            scale: 1.0 / self.accumulation as f64,
        };
        let mut sums = Tensor::zeros([3], (Kind::Float, self.device)); // total, ce, z
        let mut reduced = false;
        for micro in 0..self.accumulation {
            let batch = self.next_batch()?;
            let (inputs, targets) = self.batch_tensors(&batch)?;
            let checkpoint = self.recipe.trainer.activation_checkpointing;
            let terms = match self.overlap_group() {
                // The last micro-batch completes the gradients: reduce them as they finish.
                Some(dp) if micro + 1 == self.accumulation => {
                    let mut reducer = dp.overlap_reducer();
                    let stages = &self.stages;
                    let terms = forward_backward_staged(
                        &self.model,
                        &inputs,
                        &targets,
                        spec,
                        checkpoint,
                        &mut |stage| {
                            let grads: Vec<Tensor> = stages
                                .iter()
                                .filter(|(s, _)| *s == stage)
                                .map(|(_, p)| p.grad())
                                .collect();
                            reducer.ready(&grads)
                        },
                    )?;
                    reducer.finish()?;
                    reduced = true;
                    terms
                }
                _ => forward_backward(&self.model, &inputs, &targets, spec, checkpoint)?,
            };
            sums += Tensor::stack(&[terms.total, terms.ce, terms.z_loss], 0).to_kind(Kind::Float);
            self.state.data = batch.state;
        }
        if self.options.inject_nan_steps.contains(&self.state.step) {
            sums *= f64::NAN;
        }
        // [total, ce, z, stop votes]: summed over ranks in a data-parallel run, so every rank
        // sees the same loss (the mean over all micro-batches of all ranks) and stop decision.
        let vote = f32::from(u8::from(self.stop.load(Ordering::SeqCst)));
        let packed = Tensor::cat(
            &[sums, Tensor::from_slice(&[vote]).to_device(self.device)],
            0,
        );
        let mut micro_batches = self.accumulation;
        if let Some(dp) = &self.dp {
            dp.all_reduce_sum(&packed)?;
            micro_batches *= dp.world_size();
        }
        let norm = self.optim.reduce_and_clip(
            self.dp.as_ref(),
            reduced,
            self.recipe.optimizer.grad_clip,
        )?;
        // [loss, ce, z, grad norm]; identical on every rank, so every rank skips alike.
        let measured = Tensor::cat(
            &[
                packed.narrow(0, 0, 3) / micro_batches as f64,
                norm.to_kind(Kind::Float).reshape([1]),
            ],
            0,
        );
        let found_inf = found_inf(&measured);
        self.optim.step(self.dp.as_ref(), lr, Some(&found_inf))?;
        self.optim.zero_grad()?;
        self.state.step += 1;
        self.state.tokens_seen +=
            (self.recipe.trainer.global_batch * self.recipe.data.seq_len) as u64;
        let values = Tensor::cat(
            &[measured, packed.narrow(0, 3, 1), found_inf.reshape([1])],
            0,
        );
        Ok(PendingStep {
            step: self.state.step,
            tokens_seen: self.state.tokens_seen,
            values: Readback::start(&values)?,
        })
    }

    /// Reads a step's values (waiting for them if the device is behind) and counts it: skipped
    /// or taken, and any rank's stop vote.
    fn account(&mut self, pending: PendingStep) -> Result<StepValues> {
        let host = pending.values.wait()?;
        let values = StepValues {
            loss: host[0],
            ce: host[1],
            z_loss: host[2],
            grad_norm: host[3],
            stop_votes: host[4],
            skipped: host[5] != 0.0,
        };
        if values.stop_votes > 0.0 {
            self.stop_agreed = true;
        }
        if values.skipped {
            self.state.skipped_steps += 1;
            self.state.consecutive_bad += 1;
            tracing::warn!(
                step = pending.step - 1,
                loss = values.loss,
                grad_norm = values.grad_norm,
                "non-finite step skipped"
            );
        } else {
            self.state.optimizer_steps += 1;
            self.state.consecutive_bad = 0;
        }
        Ok(values)
    }

    /// [`Self::account`], then progress, throughput, logging, and the bad-step limit: when it
    /// is reached, the step still in flight is counted and the state (whose weights are the last
    /// good ones: bad steps change nothing) is saved before the error.
    fn settle(
        &mut self,
        pending: PendingStep,
        in_flight: &mut Option<PendingStep>,
        summary: &mut RunSummary,
        progress: &ProgressBar,
    ) -> Result<()> {
        let (step, tokens_seen) = (pending.step, pending.tokens_seen);
        let values = self.account(pending)?;
        if !values.skipped {
            summary.first_loss.get_or_insert(values.loss);
            summary.last_loss = Some(values.loss);
        }
        self.throughput.record(Instant::now(), step, tokens_seen);
        progress.set_position(step);
        progress.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            values.loss,
            self.schedule.lr(step - 1),
            self.throughput.tokens_per_s().unwrap_or(0.0)
        ));
        let total = self.recipe.trainer.steps;
        if self.is_root() && (step % self.recipe.logging.interval.max(1) == 0 || step == total) {
            self.log(step, tokens_seen, values)?;
        }
        let count = self.state.consecutive_bad;
        if count >= self.recipe.trainer.max_bad_steps {
            if let Some(next) = in_flight.take() {
                self.account(next)?;
            }
            self.save()?;
            return Err(Error::NonFinite { count, step });
        }
        Ok(())
    }

    /// Settles the step still in flight, if any (before a checkpoint or the end of the run).
    fn settle_all(
        &mut self,
        in_flight: &mut Option<PendingStep>,
        summary: &mut RunSummary,
        progress: &ProgressBar,
    ) -> Result<()> {
        match in_flight.take() {
            Some(pending) => self.settle(pending, in_flight, summary, progress),
            None => Ok(()),
        }
    }

    /// The process group when gradients are all-reduced during backward: a data-parallel run
    /// with `trainer.overlap_grad_reduce` and the replicated optimizer (the sharded one
    /// reduce-scatters after backward).
    fn overlap_group(&self) -> Option<&DataParallel> {
        let t = &self.recipe.trainer;
        let replicated = matches!(self.optim, Optimizer::Replicated(_));
        self.dp
            .as_ref()
            .filter(|_| t.overlap_grad_reduce && replicated)
    }

    fn next_batch(&mut self) -> Result<Batch> {
        match self.data.next() {
            Some(batch) => Ok(batch?),
            None => Err(Error::config("data", "the data stream ended")),
        }
    }

    /// (B, T) inputs and targets on the training device. On CUDA they go through pinned host
    /// memory, so the copy is queued behind the device's work and the host moves on.
    fn batch_tensors(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let shape = [batch.micro_batch as i64, batch.seq_len as i64];
        let upload = |ids: Vec<i64>| -> Result<Tensor> {
            let host = Tensor::from_slice(&ids).view(shape);
            if !self.device.is_cuda() {
                return Ok(host);
            }
            Ok(host.f_pin_memory(self.device)?.f_to_device_(
                self.device,
                Kind::Int64,
                true,
                false,
            )?)
        };
        Ok((upload(batch.inputs_i64())?, upload(batch.targets_i64())?))
    }

    /// A stop request: this process's flag, or in a data-parallel run any rank's flag as of the
    /// last step (all ranks must stop at the same step).
    fn stop_requested(&self) -> bool {
        match self.dp {
            None => self.stop.load(Ordering::SeqCst),
            Some(_) => self.stop_agreed,
        }
    }

    fn is_root(&self) -> bool {
        self.dp.as_ref().is_none_or(|dp| dp.rank() == 0)
    }

    fn log(&mut self, step: u64, tokens_seen: u64, values: StepValues) -> Result<()> {
        let lr = self.schedule.lr(step - 1);
        let tokens_per_s = self.throughput.tokens_per_s().unwrap_or(0.0);
        let record = MetricsRecord {
            step,
            loss: values.loss,
            ce: values.ce,
            z_loss: values.z_loss,
            lr,
            grad_norm: values.grad_norm,
            tokens_seen,
            tokens_per_s,
            mfu: self
                .peak_flops
                .and_then(|peak| mfu(self.flops_per_token, tokens_per_s, peak)),
            memory: crate::device_info::peak_rss_bytes(),
            extras: Default::default(),
        }
        .with_extra("skipped_steps", self.state.skipped_steps)
        .with_extra(
            "world_size",
            self.dp
                .as_ref()
                .map_or(self.options.world_size.max(1), DataParallel::world_size)
                as u64,
        );
        if let Some(metrics) = &mut self.metrics {
            metrics.write(&record)?;
        }
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

    /// Writes a checkpoint of the current state (atomically; the old ones stay until it is
    /// durable). In a data-parallel run every rank must call it: rank 0 gathers the ranks'
    /// data-stream positions through the store, writes the checkpoint alone, and all ranks wait
    /// for the outcome (rank 0's failure is an error on every rank).
    pub fn save(&mut self) -> Result<()> {
        let optimizer = self.optim.checkpoint_tensors(self.dp.as_ref())?;
        let Some(dp) = &self.dp else {
            let optimizer = optimizer.unwrap_or_default();
            self.write(&self.state, &optimizer)?;
            self.last_saved = Some(self.state.step);
            return Ok(());
        };
        let own = self.state.data.to_json()?;
        let gathered = dp.gather_to_root("data_state", own.as_bytes())?;
        let outcome = gathered.map(|all| -> Result<()> {
            let data_ranks = all
                .iter()
                .enumerate()
                .map(|(rank, bytes)| {
                    StreamState::from_json(&String::from_utf8_lossy(bytes)).map_err(|e| {
                        Error::Dist {
                            op: "gather data state".into(),
                            message: format!("rank {rank}'s data-stream state: {e}"),
                        }
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut state = self.state.clone();
            state.data = data_ranks[0].clone();
            state.data_ranks = data_ranks;
            self.write(&state, optimizer.as_deref().unwrap_or_default())
        });
        let shared = dp.share_result(
            "save checkpoint",
            outcome
                .as_ref()
                .map(|r| r.as_ref().map(|()| Vec::new()).map_err(ToString::to_string)),
        );
        if let Some(outcome) = outcome {
            outcome?;
        }
        shared?;
        self.last_saved = Some(self.state.step);
        Ok(())
    }

    fn write(&self, state: &TrainState, optimizer: &[(String, Tensor)]) -> Result<()> {
        let mut metadata = serde_json::Map::new();
        metadata.insert("recipe_hash".into(), state.recipe_hash.clone().into());
        if !state.data_ranks.is_empty() {
            metadata.insert("world_size".into(), state.data_ranks.len().into());
        }
        let saved = self.store.save(state.step, metadata, |dir| {
            write_checkpoint(dir, &self.model, optimizer, state)
        })?;
        tracing::info!(step = state.step, dir = %saved.dir.display(), "checkpoint saved");
        Ok(())
    }

    fn progress_bar(&self, total: u64) -> ProgressBar {
        if !self.recipe.logging.progress || !self.is_root() {
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
fn check_vocab(recipe: &Recipe, tokenizer: &dyn TextTokenizer) -> Result<i64> {
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

/// The checkpoint directory to resume from, if any.
fn resolve_resume(store: &CheckpointStore, resume: &Resume) -> Result<Option<PathBuf>> {
    match resume {
        Resume::Fresh => {
            if let Some(existing) = store.list()?.last() {
                return Err(Error::Checkpoint {
                    dir: existing.dir.clone(),
                    reason: "the run directory already has checkpoints: resume it (--resume auto) or choose a new run.dir".into(),
                });
            }
            Ok(None)
        }
        Resume::Auto => match store.latest_valid()? {
            Some(checkpoint) => Ok(Some(checkpoint.dir)),
            None => {
                tracing::info!(dir = %store.root().display(), "no checkpoint to resume from; starting fresh");
                Ok(None)
            }
        },
        Resume::Path(dir) => {
            CheckpointStore::verify(dir)?;
            Ok(Some(dir.clone()))
        }
    }
}

/// Rank 0 picks the checkpoint (so that every rank resumes from the same one even while the
/// directory changes) and shares its choice; every rank then reads it from the shared file
/// system.
fn agree_resume(
    dp: &DataParallel,
    store: &CheckpointStore,
    resume: &Resume,
) -> Result<Option<PathBuf>> {
    let choice = (dp.rank() == 0).then(|| resolve_resume(store, resume));
    let encoded = choice.as_ref().map(|c| match c {
        Ok(dir) => dir
            .as_ref()
            .map_or(Some(String::new()), |d| d.to_str().map(str::to_owned))
            .map(String::into_bytes)
            .ok_or_else(|| "the checkpoint path is not valid UTF-8".to_string()),
        Err(e) => Err(e.to_string()),
    });
    let shared = dp.share_result("choose checkpoint", encoded);
    if let Some(choice) = choice {
        let dir = choice?;
        shared?;
        return Ok(dir);
    }
    let bytes = shared?;
    let path = String::from_utf8_lossy(&bytes).into_owned();
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

/// This rank's data-stream position from a checkpoint, or `None` to start the stream afresh.
/// Positions saved by N ranks re-partition over M when the number of data shares stays the
/// same (N × workers = M × workers'; [`StreamState::repartition`]); otherwise the run fails
/// with the reason, unless `restart_data` asks to start the stream from the beginning.
fn rank_data_state(
    state: &TrainState,
    dir: &Path,
    rank: usize,
    world: usize,
    recipe: &Recipe,
    restart_data: bool,
) -> Result<Option<StreamState>> {
    let saved = if state.data_ranks.is_empty() {
        std::slice::from_ref(&state.data)
    } else {
        state.data_ranks.as_slice()
    };
    if saved.len() == world {
        return Ok(Some(saved[rank].clone()));
    }
    let reason = match StreamState::repartition(saved, rank, world, recipe.data.workers) {
        Ok(own) => {
            tracing::info!(
                saved_world = saved.len(),
                world,
                workers = recipe.data.workers,
                "data-stream positions re-partitioned"
            );
            return Ok(Some(own));
        }
        Err(e) => e.to_string(),
    };
    if restart_data {
        tracing::warn!(saved_world = saved.len(), world, %reason, dir = %dir.display(), "the checkpoint's data-stream positions do not fit this layout; restarting the data stream from the beginning as asked");
        return Ok(None);
    }
    Err(Error::Checkpoint {
        dir: dir.to_path_buf(),
        reason: format!(
            "written by {} rank(s), resumed on {world}: model and optimizer state carry over (the global batch of {} stays, accumulation adapts), but the data-stream positions do not re-partition: {reason}. Resume with a layout that keeps the data shares, or restart the data stream from the beginning with --restart-data (TrainOptions::restart_data)",
            saved.len(),
            recipe.trainer.global_batch
        ),
    })
}

/// The launcher environment of a data-parallel run, or `None` for a single process.
fn dist_env(options: &TrainOptions) -> Result<Option<DistEnv>> {
    let env = match &options.dist {
        Some(env) => env.clone(),
        None if options.world_size > 1 => DistEnv::from_env()?.ok_or_else(|| Error::Env {
            var: "WORLD_SIZE".into(),
            message: format!(
                "the trainer was asked for a world of {} but no launcher variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) are set",
                options.world_size
            ),
        })?,
        None => return Ok(None),
    };
    env.validate()?;
    if options.world_size > 1 && options.world_size != env.world_size {
        return Err(Error::Env {
            var: "WORLD_SIZE".into(),
            message: format!(
                "the launcher says {}, the trainer options {}",
                env.world_size, options.world_size
            ),
        });
    }
    if options.world_size > 1 && options.rank != env.rank {
        return Err(Error::Env {
            var: "RANK".into(),
            message: format!(
                "the launcher says {}, the trainer options {}",
                env.rank, options.rank
            ),
        });
    }
    Ok((env.world_size > 1).then_some(env))
}

/// A data-parallel rank on CUDA uses the device of its local rank.
fn rank_device(device: Device, env: Option<&DistEnv>) -> Result<Device> {
    match (device, env) {
        (Device::Cuda(_), Some(env)) => {
            let visible = tch::Cuda::device_count().max(0) as usize;
            if env.local_rank >= visible {
                return Err(Error::Env {
                    var: "LOCAL_RANK".into(),
                    message: format!(
                        "local rank {} needs CUDA device {}, but {visible} are visible",
                        env.local_rank, env.local_rank
                    ),
                });
            }
            Ok(Device::Cuda(env.local_rank))
        }
        (device, _) => Ok(device),
    }
}

fn cuda_name(_index: usize) -> String {
    // tch exposes no device-name query; H100 is what our GPU runs use. Overridable later.
    std::env::var("CORENET_DEVICE_NAME").unwrap_or_else(|_| "H100 SXM".into())
}
