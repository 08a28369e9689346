//! The training loop: build the parts in data-flow order, then step, log and checkpoint until
//! the step budget is spent, a signal arrives, or too many steps go bad.
//!
//! Data-parallel runs (a launcher environment with `WORLD_SIZE > 1`) join a c10d process group
//! ([`DataParallel`]): the recipe hash is compared across ranks, rank 0's initial weights are
//! broadcast, each rank reads its own shard of the data, and the step's loss sums (plus a stop
//! vote) are all-reduced so every rank takes the same update/skip/stop decision
//! ([`optimizer_step`]). Only rank 0 writes the run directory's shared files (recipe.yaml,
//! metrics, TensorBoard, checkpoints); a checkpoint holds every rank's data-stream position.
//!
//! A step never waits for the device: whether to skip a non-finite update is decided on the
//! device (the fused AdamW's `found_inf`), and the step's values (loss, gradient norm, skip
//! flag, stop votes) travel to the host behind its work ([`Readback`]). With lagged reads (the
//! default on CUDA) they are read after the next step is queued, so logging, skip counting and
//! stop decisions trail the device by one step and the device never idles on the host.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::{nn, Device, Tensor};

use corenet_data::template::{Template, CHAT_TEMPLATE_JINJA};
use corenet_data::{load_tokenizer, DataStream, TextTokenizer};
use corenet_ffi::Readback;
use corenet_model::{AdapterRecord, OpenElm, PeftConfig};

use crate::checkpoint::contents::{TokenizerFile, TrainState};
use crate::checkpoint::data_files::agree_data_files;
use crate::checkpoint::mirror::Mirror;
use crate::checkpoint::resume::{check_resume_path, choose_checkpoint, restore, Resume};
use crate::checkpoint::run_lock::RunLock;
use crate::checkpoint::save::{start_save, SaveParts};
use crate::checkpoint::store::CheckpointStore;
use crate::checkpoint::writer::{CheckpointFault, CheckpointWriter, Peers, SaveRecord};
use crate::checkpoint::MirrorRecord;
use crate::dist::launcher_env::{rank_device, trainer_env};
use crate::dist::{DataParallel, DistEnv};
use crate::error::{Error, Result};
use crate::log::mlflow::RunStatus;
use crate::log::run_log::{PreferenceReport, RunLogSetup, StepReport};
use crate::log::RunLog;
use crate::optim::{Optimizer, Schedule};
use crate::recipe::{Precision, Recipe};
use crate::step::batches::Batches;
use crate::step::forward_backward::{parameter_stages, Stage};
use crate::step::generator;
use crate::step::reference::{Reference, ReferenceRecord};
use crate::step::train_step::{
    dropout_seed, optimizer_step, values, NoPhases, StepInput, StepParts, StepSettings,
};
use crate::validate::{build_sets, Validator};
use corenet_data::remote::ObjectFolder;

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    pub resume: Resume,
    /// End this process (with a checkpoint) once this step is reached; the recipe's step
    /// budget still defines the schedule.
    pub stop_at: Option<u64>,
    /// Fault injection for tests: these steps get a NaN loss.
    pub inject_nan_steps: BTreeSet<u64>,
    /// Fault injection for tests: something goes wrong with this rank's write of one
    /// checkpoint.
    pub inject_checkpoint_fault: Option<CheckpointFault>,
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
    /// Resume even though the shard files differ from those the checkpoint's stream read
    /// (removed, added or changed): each worker keeps its epoch and file index over the new
    /// list and restarts a file that is no longer the one it was reading (docs/training.md).
    pub accept_data_change: bool,
    /// Start a fresh run from existing weights: an HF OpenELM folder (single or sharded
    /// safetensors) or a corenet checkpoint directory, whose architecture must be the recipe's
    /// (the vocabulary may differ: rows are resized). Ignored when the run resumes.
    pub init_from: Option<PathBuf>,
    /// A stop flag installed by the caller before the trainer exists (signal handlers set it
    /// during start-up, which can take minutes); the trainer makes its own when unset.
    pub stop_flag: Option<Arc<AtomicBool>>,
    /// `corenet train --dry-run`: one micro-batch per step instead of the accumulation loop,
    /// no resume, and nothing written into the run directory (no recipe.yaml, metrics,
    /// TensorBoard or checkpoint directory). Driven by [`crate::recipe::dry_run`].
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

/// A step queued on the device whose values are still on their way to the host.
#[derive(Debug)]
struct PendingStep {
    /// Steps completed once this one is (its 1-based number).
    step: u64,
    tokens_seen: u64,
    lr: f64,
    data_wait: Duration,
    data_epochs: u64,
    /// Laid out as [`values`].
    values: Readback,
}

/// A stop request: this process's flag (set by a signal handler), and in a data-parallel run
/// whether any rank's vote said stop as of the last step read (all ranks stop at one step).
#[derive(Debug, Default)]
struct StopRequest {
    flag: Arc<AtomicBool>,
    agreed: bool,
}

impl StopRequest {
    fn vote(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn requested(&self, data_parallel: bool) -> bool {
        match data_parallel {
            false => self.vote(),
            true => self.agreed,
        }
    }
}

pub struct Trainer {
    recipe: Recipe,
    options: TrainOptions,
    _vs: nn::VarStore,
    model: OpenElm,
    /// Every parameter with the backward stage that finishes its gradient.
    stages: Vec<(Stage, Tensor)>,
    optim: Optimizer,
    schedule: Schedule,
    settings: StepSettings,
    /// Read a step's values after queueing the next one (`trainer.lagged_reads`).
    lagged: bool,
    batches: Batches,
    state: TrainState,
    store: CheckpointStore,
    /// Writes (and, with `checkpoint.background`, in the background) every checkpoint.
    writer: CheckpointWriter,
    /// Rank 0's uploader of committed checkpoints (`checkpoint.mirror`).
    mirror: Option<Mirror>,
    /// A background save that failed in a data-parallel run: this rank votes to stop, and the
    /// error ends the run once every rank has stopped.
    save_failed: Option<Error>,
    /// Step of the last checkpoint this run wrote or resumed from.
    last_saved: Option<u64>,
    /// The process group of a data-parallel run (world size > 1).
    dp: Option<DataParallel>,
    stop: StopRequest,
    log: RunLog,
    /// Held for the trainer's life (rank 0): one writer per run directory.
    _locks: Vec<RunLock>,
    /// Copied into every checkpoint.
    tokenizer_file: TokenizerFile,
    /// The run's tokenizer (validation's zero-shot tasks encode with it).
    tokenizer: Arc<dyn TextTokenizer>,
    /// Scores the `eval:` section's sets (None when validation is off, and in dry runs).
    validator: Option<Validator>,
    /// Step and loss of the last validation.
    last_validation: Option<(u64, f64)>,
    /// A PEFT run's adapters and base, written into every checkpoint.
    adapters: Option<AdapterRecord>,
    /// A DPO run's frozen reference model.
    reference: Option<Reference>,
    rank: usize,
}

impl Trainer {
    /// Validates the recipe and its files, builds every part, and restores a checkpoint if asked.
    /// In a data-parallel run this joins the process group and blocks until every rank has.
    pub fn new(recipe: Recipe, options: TrainOptions) -> Result<Trainer> {
        let env = trainer_env(options.dist.as_ref(), options.rank, options.world_size)?;
        let (rank, world) = match &env {
            Some(env) => (env.rank, env.world_size),
            None => (options.rank, options.world_size.max(1)),
        };
        let accumulation = recipe.accumulation(world)?;
        recipe.validate_files()?;
        let tokenizer = load_tokenizer(&recipe.data.tokenizer)?;
        let mut tokenizer_file = TokenizerFile::read(&recipe.data.tokenizer)?;
        let chats = recipe
            .data
            .sources
            .iter()
            .any(|s| s.template == Some(Template::Chat));
        tokenizer_file.chat_template = chats.then(|| CHAT_TEMPLATE_JINJA.to_string());
        let pad_id = recipe.check_vocabulary(tokenizer.as_ref())?;
        // Before anything is written: a refused held-out source fails fast.
        let validator = match recipe.eval.enabled() && !options.dry_run {
            true => Some(Validator::new(
                build_sets(&recipe, tokenizer.as_ref())?,
                &recipe.eval,
                recipe.model.max_context_length,
            )?),
            false => None,
        };
        if let Some(threads) = recipe.trainer.threads {
            tch::set_num_threads(threads as i32);
        }
        let device = rank_device(
            recipe.trainer.device.resolve("trainer.device")?,
            env.as_ref(),
        )?;
        let dp = env
            .as_ref()
            .map(|env| {
                let timeout = options.dist_timeout.unwrap_or(DEFAULT_DIST_TIMEOUT);
                DataParallel::new(env, device, timeout, recipe.trainer.bucket_mb)
            })
            .transpose()?;
        let recipe_hash = recipe.hash();
        if let Some(dp) = &dp {
            dp.check_recipe_hash(&recipe_hash)?;
        }
        let (checkpoint_dir, keep) = (recipe.checkpoint_dir(), recipe.checkpoint.keep_last);
        check_resume_path(&options.resume)?;
        // Rank 0 writes the run's files; it takes their directories' locks before touching them.
        let locks = match rank == 0 && !options.dry_run {
            true => lock_run_dirs(&recipe)?,
            false => Vec::new(),
        };
        let (store, resume_dir) = match options.dry_run {
            true => (CheckpointStore::unopened(checkpoint_dir, keep), None),
            false => {
                let store = CheckpointStore::new(checkpoint_dir, keep)?;
                let folder = match (&recipe.checkpoint.mirror, rank) {
                    (Some(url), 0) => Some(ObjectFolder::open(url, &recipe.data.storage)?),
                    _ => None,
                };
                let dir = choose_checkpoint(&store, &options.resume, dp.as_ref(), folder.as_ref())?;
                (store, dir)
            }
        };
        let (mut vs, mut model) = build_model(&recipe, device)?;
        let adapters = match &recipe.peft {
            Some(peft) => Some(attach_peft(
                &mut vs,
                &mut model,
                peft,
                &recipe,
                options.init_from.as_deref(),
                resume_dir.as_deref(),
            )?),
            None => {
                load_init(&model, options.init_from.as_deref(), resume_dir.as_deref())?;
                None
            }
        };
        if let Some(dp) = &dp {
            // Same seed, same weights in principle; the broadcast makes it so regardless of
            // the platform's RNG, before the optimizer copies f32 masters from them.
            let mut all = model.named_parameters();
            all.extend(model.adapter_parameters());
            dp.broadcast_parameters(&all)?;
        }
        let adapters = adapters
            .map(|start| adapter_record(&model, start, resume_dir.as_deref()))
            .transpose()?;
        let reference = match recipe.dpo {
            Some(_) => Some(build_reference(
                &model,
                &recipe,
                device,
                options.init_from.as_deref(),
                resume_dir.as_deref(),
            )?),
            None => None,
        };
        let mut optim = Optimizer::new(
            model.trainable_parameters(),
            &recipe.optimizer,
            recipe.trainer.sharded_optimizer,
            dp.as_ref(),
        )?;
        let schedule = Schedule::new(&recipe.schedule)?;
        if let Some(dir) = &resume_dir {
            tokenizer_file.check_same_as(dir, options.accept_data_change)?;
        }
        let restored = resume_dir
            .as_deref()
            .map(|dir| {
                let layout = (rank, world);
                restore(
                    dir,
                    &model,
                    &mut optim,
                    &recipe,
                    &recipe_hash,
                    layout,
                    options.restart_data,
                )
            })
            .transpose()?;
        let (restored, mut data_resume) = match restored {
            Some(r) => (Some(r.state), r.data),
            None => (None, None),
        };
        // Before the stream opens or a step runs: changed shard files fail every rank alike.
        let recorded = resume_dir
            .as_deref()
            .zip(restored.as_ref().map(|s| &s.data));
        let files = agree_data_files(
            &recipe.data,
            recorded.filter(|_| data_resume.is_some()),
            data_resume.as_mut(),
            options.accept_data_change,
            dp.as_ref(),
        )?;
        let mut data = DataStream::open(&recipe.data, rank, world, data_resume)?;
        if let Some(files) = files {
            data.set_files(files);
        }
        let mut state = restored.unwrap_or_else(|| {
            TrainState::fresh(
                data.state().clone(),
                recipe_hash.clone(),
                recipe.trainer.seed,
            )
        });
        // A change accepted on resume is recorded once: later checkpoints carry the new hash.
        state.recipe_hash = recipe_hash;
        // In memory, `data` is this rank's own position; a save gathers every rank's.
        state.data = data.state().clone();
        state.data_ranks.clear();
        let log = RunLog::open(RunLogSetup {
            logging: &recipe.logging,
            recipe_yaml: recipe.to_yaml()?,
            log_dir: &recipe.log_dir(),
            start_step: state.step,
            total_steps: recipe.trainer.steps,
            root: rank == 0,
            dry_run: options.dry_run,
            device,
            world_size: world,
            flops_per_token: recipe.model.training_flops_per_token(recipe.data.seq_len)?,
            elapsed_before: state.elapsed_s,
            validates: validator.is_some(),
        })?;
        let settings = StepSettings {
            // Dry runs take one micro-batch per step (the arithmetic above was still checked).
            accumulation: if options.dry_run { 1 } else { accumulation },
            ignore_index: pad_id,
            z_loss: recipe.trainer.z_loss,
            activation_checkpointing: recipe.trainer.activation_checkpointing,
            overlap_grad_reduce: recipe.trainer.overlap_grad_reduce,
            grad_clip: recipe.optimizer.grad_clip,
            dpo: recipe.dpo,
            document_bos: recipe
                .trainer
                .document_mask
                .then(|| i64::from(tokenizer.bos_id())),
        };
        tracing::info!(
            params = recipe.model.param_count()?.total(),
            accumulation = settings.accumulation,
            rank,
            world_size = world,
            start_step = state.step,
            ?device,
            "trainer ready"
        );
        let stop = StopRequest {
            flag: options.stop_flag.clone().unwrap_or_default(),
            agreed: false,
        };
        let peers = match &dp {
            Some(dp) => Some(Peers {
                store: Arc::new(dp.process_group().shared_store()?),
                rank,
                world,
            }),
            None => None,
        };
        let writer = CheckpointWriter::new(store.clone(), peers, recipe.checkpoint.background);
        let mirror = match (&recipe.checkpoint.mirror, rank == 0 && !options.dry_run) {
            (Some(url), true) => Some(Mirror::new(url, &recipe.data.storage, keep)?),
            _ => None,
        };
        Ok(Trainer {
            mirror,
            lagged: recipe
                .trainer
                .lagged_reads
                .unwrap_or_else(|| device.is_cuda()),
            stages: parameter_stages(&model),
            last_saved: resume_dir.as_ref().map(|_| state.step),
            batches: Batches::new(data, device, settings.ignore_index),
            recipe,
            options,
            _vs: vs,
            model,
            optim,
            schedule,
            settings,
            state,
            store,
            writer,
            save_failed: None,
            dp,
            stop,
            log,
            _locks: locks,
            tokenizer_file,
            tokenizer,
            validator,
            last_validation: None,
            adapters,
            reference,
            rank,
        })
    }

    /// Set it (e.g. from a signal handler) to make `train` checkpoint and return.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop.flag)
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
        let host = self.account(pending)?;
        Ok(host[values::LOSS])
    }

    /// Runs until the recipe's step budget (or `stop_at`, or a stop request), then ends the
    /// tracking run: finished, killed (a signal; a resume continues it) or failed.
    pub fn train(&mut self) -> Result<RunSummary> {
        let mut outcome = self.train_steps();
        if outcome.is_err() {
            // A save started before the failure (the last good state after bad steps) is
            // still written; with peers, no longer than a collective would wait for them.
            let done = match &self.dp {
                Some(dp) => self.writer.wait_at_most(dp.process_group().timeout()),
                None => self.writer.wait(),
            };
            if let Some(done) = done {
                if let Err(e) = self.record_save(done) {
                    tracing::warn!(error = %e, "the last checkpoint could not be written either");
                }
            }
        }
        if let Some(e) = self.save_failed.take() {
            outcome = Err(e);
        }
        log_mirror(self.mirror.as_mut().and_then(Mirror::wait));
        let (status, last) = match &outcome {
            Ok(s) if s.interrupted => (RunStatus::Killed, None),
            Ok(s) => (RunStatus::Finished, Some(self.store.dir_for(s.final_step))),
            Err(_) => (RunStatus::Failed, None),
        };
        self.log.end_tracking(status, last.as_deref());
        outcome
    }

    fn train_steps(&mut self) -> Result<RunSummary> {
        let start_step = self.state.step;
        let total = self.recipe.trainer.steps;
        let end = self.options.stop_at.map_or(total, |s| s.min(total));
        self.log.start(start_step);
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
            if self.stop.requested(self.dp.is_some()) {
                summary.interrupted = true;
                break;
            }
            self.poll_save()?;
            let pending = self.train_step()?;
            let ready = if self.lagged {
                in_flight.replace(pending)
            } else {
                Some(pending)
            };
            if let Some(ready) = ready {
                self.settle(ready, &mut in_flight, &mut summary)?;
            }
            let eval_interval = self.recipe.eval.interval;
            if self.validator.is_some() && self.state.step.is_multiple_of(eval_interval) {
                self.settle_all(&mut in_flight, &mut summary)?;
                self.validate()?;
            }
            let interval = self.recipe.checkpoint.interval;
            if interval > 0 && self.state.step.is_multiple_of(interval) {
                self.settle_all(&mut in_flight, &mut summary)?;
                // Once a stop is agreed (a signal, or a rank whose save failed), no new save
                // starts here: one would commit over the failure. After the loop the failure
                // ends every rank, or a stopped run saves its last state once.
                if self.stop.requested(self.dp.is_some()) {
                    continue;
                }
                self.save()?;
            }
        }
        self.settle_all(&mut in_flight, &mut summary)?;
        if let Some(e) = self.save_failed.take() {
            return Err(e);
        }
        // A save in flight is waited for (SIGTERM included) before anything more is written.
        self.complete_save()?;
        let finished = self.state.step == total;
        let validated = self.last_validation.map(|(step, _)| step);
        if finished && !summary.interrupted && validated != Some(self.state.step) {
            self.validate()?;
        }
        self.log.finish();
        match self.last_saved == Some(self.state.step) {
            // A validation after that save is in the metrics but not yet in the picture.
            true => self.log.refresh_curves(),
            false => self.save()?,
        }
        self.complete_save()?;
        summary.final_step = self.state.step;
        summary.skipped_steps = self.state.skipped_steps;
        Ok(summary)
    }

    /// Queues one optimizer step ([`optimizer_step`]) and returns without reading anything
    /// from the device.
    fn train_step(&mut self) -> Result<PendingStep> {
        let lr = self.schedule.lr(self.state.step);
        let input = StepInput {
            lr,
            dropout_seed: self
                .adapters
                .as_ref()
                .map(|_| dropout_seed(self.recipe.trainer.seed, self.state.step, self.rank)),
            stop_vote: self.stop.vote() || self.save_failed.is_some(),
            poison: self.options.inject_nan_steps.contains(&self.state.step),
        };
        let (step, steps) = (self.state.step, self.recipe.trainer.steps);
        let batches = &mut self.batches;
        let parts = StepParts {
            model: &self.model,
            optim: &mut self.optim,
            dp: self.dp.as_ref(),
            stages: &self.stages,
            reference: self.reference.as_ref(),
        };
        let step_values = optimizer_step(
            parts,
            &self.settings,
            input,
            &mut || batches.next(step, steps),
            &mut NoPhases,
        )?;
        if let Some(position) = self.batches.take_position() {
            self.state.data = position;
        }
        self.state.step += 1;
        self.state.tokens_seen +=
            (self.recipe.trainer.global_batch * self.recipe.data.seq_len) as u64;
        Ok(PendingStep {
            step: self.state.step,
            tokens_seen: self.state.tokens_seen,
            lr,
            data_wait: self.batches.take_wait(),
            data_epochs: self.state.data.stats().iter().map(|s| s.epochs).sum(),
            values: Readback::start(&step_values)?,
        })
    }

    /// Reads a step's values (waiting for them if the device is behind) and counts it: skipped
    /// or taken, and any rank's stop vote.
    fn account(&mut self, pending: PendingStep) -> Result<Vec<f64>> {
        let host = pending.values.wait()?;
        if host[values::STOP_VOTES] > 0.0 {
            self.stop.agreed = true;
        }
        if host[values::SKIPPED] != 0.0 {
            self.state.skipped_steps += 1;
            self.state.consecutive_bad += 1;
            tracing::warn!(
                step = pending.step - 1,
                loss = host[values::LOSS],
                grad_norm = host[values::GRAD_NORM],
                "non-finite step skipped"
            );
        } else {
            self.state.optimizer_steps += 1;
            self.state.consecutive_bad = 0;
        }
        Ok(host)
    }

    /// [`Self::account`], then the run log, and the bad-step limit: when it is reached, the
    /// step still in flight is counted and the state (whose weights are the last good ones: bad
    /// steps change nothing) is saved before the error.
    fn settle(
        &mut self,
        pending: PendingStep,
        in_flight: &mut Option<PendingStep>,
        summary: &mut RunSummary,
    ) -> Result<()> {
        let (step, tokens_seen, lr) = (pending.step, pending.tokens_seen, pending.lr);
        let (data_wait, data_epochs) = (pending.data_wait, pending.data_epochs);
        let host = self.account(pending)?;
        let report = StepReport {
            step,
            tokens_seen,
            loss: host[values::LOSS],
            ce: host[values::CE],
            z_loss: host[values::Z_LOSS],
            grad_norm: host[values::GRAD_NORM],
            preference: self.reference.as_ref().map(|_| PreferenceReport {
                reward_chosen: host[values::REWARD_CHOSEN],
                reward_rejected: host[values::REWARD_REJECTED],
                accuracy: host[values::ACCURACY],
                logps_chosen: host[values::LOGPS_CHOSEN],
                logps_rejected: host[values::LOGPS_REJECTED],
            }),
            lr,
            skipped_steps: self.state.skipped_steps,
            data_wait,
            data_epochs,
        };
        if host[values::SKIPPED] == 0.0 {
            summary.first_loss.get_or_insert(report.loss);
            summary.last_loss = Some(report.loss);
        }
        self.log.step(&report)?;
        let count = self.state.consecutive_bad;
        if count >= self.recipe.trainer.max_bad_steps {
            if let Some(next) = in_flight.take() {
                self.account(next)?;
            }
            self.save()?;
            return Err(Error::NonFinite {
                count,
                step: report.step,
            });
        }
        Ok(())
    }

    /// Settles the step still in flight, if any (before a checkpoint or the end of the run).
    fn settle_all(
        &mut self,
        in_flight: &mut Option<PendingStep>,
        summary: &mut RunSummary,
    ) -> Result<()> {
        match in_flight.take() {
            Some(pending) => self.settle(pending, in_flight, summary),
            None => Ok(()),
        }
    }

    /// Scores the validation sets at the current step (every rank; no-op without an `eval:`
    /// section) and logs the result. The tasks are scored every `eval.task_interval` steps and
    /// at the end of the budget.
    fn validate(&mut self) -> Result<()> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let step = self.state.step;
        let with_tasks = validator.tasks_due(step, step == self.recipe.trainer.steps);
        let report = validator.run(
            step,
            &self.model,
            self.tokenizer.as_ref(),
            self.dp.as_ref(),
            with_tasks,
        )?;
        self.last_validation = Some((step, report.val_loss));
        self.log.validation(&report, self.state.tokens_seen)
    }

    /// Checkpoints the current state ([`start_save`]): waits for the save in flight, copies
    /// this rank's part to host memory and writes it — on a background thread with
    /// `checkpoint.background`, whose outcome a later step collects. In a data-parallel run
    /// every rank must call it.
    pub fn save(&mut self) -> Result<()> {
        let began = Instant::now();
        self.complete_save()?;
        // The copy in flight reads a local checkpoint that this save's pruning may remove.
        log_mirror(self.mirror.as_mut().and_then(Mirror::wait));
        self.state.elapsed_s = self.log.elapsed_s();
        let step = self.state.step;
        let validation_loss = self
            .last_validation
            .filter(|(at, _)| *at == step)
            .map(|(_, loss)| loss);
        let done = start_save(
            &mut self.writer,
            (&self.model, &self.optim),
            self.dp.as_ref(),
            SaveParts {
                tokenizer: &self.tokenizer_file,
                state: &self.state,
                validation_loss,
                fault: self
                    .options
                    .inject_checkpoint_fault
                    .filter(|f| f.step == step)
                    .map(|f| f.kind),
                adapters: self.adapters.as_ref(),
                reference: self.reference.as_ref().map(|r| &r.record),
            },
            began,
        )?;
        self.last_saved = Some(step);
        if let Some(done) = done {
            self.record_save(done)?;
        }
        self.log.refresh_curves();
        Ok(())
    }

    /// Waits for the save in flight, if any, and records its outcome (an error ends the run).
    fn complete_save(&mut self) -> Result<()> {
        match self.writer.wait() {
            Some(done) => self.record_save(done),
            None => Ok(()),
        }
    }

    /// Records the background save if it has finished. A failure ends a single process at
    /// once; a rank of a data-parallel run votes to stop, so that every rank stops at the same
    /// step, and fails after the loop.
    fn poll_save(&mut self) -> Result<()> {
        let Some(done) = self.writer.poll() else {
            return Ok(());
        };
        match (self.record_save(done), self.dp.is_some()) {
            (Ok(()), _) => Ok(()),
            (Err(e), false) => Err(e),
            (Err(e), true) => {
                self.save_failed = Some(e);
                Ok(())
            }
        }
    }

    fn record_save(&mut self, done: Result<SaveRecord>) -> Result<()> {
        match done {
            Ok(record) => {
                if let Some(mirror) = &mut self.mirror {
                    let previous = mirror.push(record.step, self.store.dir_for(record.step));
                    log_mirror(previous);
                }
                self.log.checkpoint(&record)
            }
            Err(e) => {
                let step = match &e {
                    Error::CheckpointWrite { step, .. } => *step,
                    _ => self.state.step,
                };
                self.log.checkpoint_failed(step, &e);
                Err(e)
            }
        }
    }
}

/// Logs a finished checkpoint copy. A failed copy does not stop the run: the local checkpoint
/// is intact, and the next save tries again with a newer one.
fn log_mirror(done: Option<Result<MirrorRecord>>) {
    match done {
        Some(Ok(m)) => {
            tracing::info!(step = m.step, url = %m.url, files = m.files, bytes = m.bytes, seconds = m.seconds, pruned = ?m.pruned, "checkpoint mirrored")
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "the checkpoint could not be mirrored; the local copy stands")
        }
        None => {}
    }
}

/// Locks the log directory (the run directory unless `logging.dir` moves it) and the checkpoint
/// directory when it lies outside it: every directory rank 0 writes.
fn lock_run_dirs(recipe: &Recipe) -> Result<Vec<RunLock>> {
    let (log_dir, checkpoint_dir) = (recipe.log_dir(), recipe.checkpoint_dir());
    let mut locks = vec![RunLock::acquire(&log_dir)?];
    if !checkpoint_dir.starts_with(&log_dir) {
        locks.push(RunLock::acquire(&checkpoint_dir)?);
    }
    Ok(locks)
}

/// A full run's start from `--init-from` (a fresh run only: a resumed one has its weights).
fn load_init(model: &OpenElm, init: Option<&Path>, resume_dir: Option<&Path>) -> Result<()> {
    match (init, resume_dir) {
        (Some(init), Some(dir)) => {
            tracing::info!(init_from = %init.display(), checkpoint = %dir.display(), "resuming this run's checkpoint; --init-from is ignored");
        }
        // Every rank may load; the broadcast keeps them equal either way.
        (Some(init), None) => corenet_model::pretrained::load_pretrained(model, init)?,
        (None, _) => {}
    }
    if let Some(dir) = resume_dir.filter(|d| d.join(corenet_model::ADAPTERS_FILE).is_file()) {
        return Err(Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: "a PEFT checkpoint (it holds adapters only) resumed by a recipe without a `peft:` section".into(),
        });
    }
    Ok(())
}

/// A PEFT run's model: the base weights (from `--init-from`, or on resume from the folder the
/// checkpoint's record names; else the seeded initialisation), then the adapters, drawn from
/// the run's seed and frozen base. Returns the config and the base folder for the record.
fn attach_peft<'a>(
    vs: &mut nn::VarStore,
    model: &mut OpenElm,
    peft: &'a PeftConfig,
    recipe: &Recipe,
    init: Option<&Path>,
    resume_dir: Option<&Path>,
) -> Result<PeftStart<'a>> {
    let recorded = match resume_dir {
        Some(dir) => Some(AdapterRecord::read(dir)?.ok_or_else(|| Error::Checkpoint {
            dir: dir.to_path_buf(),
            reason: format!(
                "not a PEFT checkpoint (no {}), but the recipe has a `peft:` section",
                corenet_model::ADAPTERS_FILE
            ),
        })?),
        None => None,
    };
    let base = init
        .map(Path::to_path_buf)
        .or_else(|| recorded.as_ref().and_then(|r| r.base.clone()));
    if let Some(base) = &base {
        corenet_model::pretrained::load_pretrained(model, base)?;
    }
    // Recorded absolute: evaluation and export open the checkpoint from anywhere.
    let base = base.map(|b| std::fs::canonicalize(&b).unwrap_or(b));
    // Its own stream: the adapters do not depend on whether the base was drawn or loaded.
    generator::seeded(recipe.trainer.seed.wrapping_add(1) as i64, || {
        model.attach_adapters(&vs.root(), peft)
    })?;
    if recipe.trainer.precision == Precision::Bf16 {
        vs.bfloat16();
    }
    let trainable: i64 = model
        .adapter_parameters()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    tracing::info!(
        method = ?peft.method,
        rank = peft.rank,
        modules = model.adapted_modules().len(),
        trainable_params = trainable,
        base = ?base,
        "adapters attached; the base is frozen"
    );
    Ok(PeftStart {
        peft,
        base,
        recorded,
    })
}

/// What [`attach_peft`] started from.
struct PeftStart<'a> {
    peft: &'a PeftConfig,
    base: Option<PathBuf>,
    /// The record of the checkpoint being resumed.
    recorded: Option<AdapterRecord>,
}

/// The record every checkpoint of a PEFT run carries (after the broadcast: rank 0's base). A
/// resumed run's base must be the checkpoint's.
fn adapter_record(
    model: &OpenElm,
    start: PeftStart<'_>,
    resume_dir: Option<&Path>,
) -> Result<AdapterRecord> {
    let base_fingerprint = model.base_fingerprint()?;
    if let (Some(recorded), Some(dir)) = (&start.recorded, resume_dir) {
        recorded.check_base(&base_fingerprint, dir)?;
    }
    Ok(AdapterRecord {
        peft: start.peft.clone(),
        base: start.base,
        base_fingerprint,
    })
}

/// A DPO run's reference: the policy's starting weights, or on resume the recorded ones.
fn build_reference(
    policy: &OpenElm,
    recipe: &Recipe,
    device: Device,
    init: Option<&Path>,
    resume_dir: Option<&Path>,
) -> Result<Reference> {
    let built = build_model(recipe, device)?;
    match resume_dir {
        Some(dir) => Reference::reopen(&ReferenceRecord::read(dir)?, init, built, dir),
        None => Reference::copy_of(policy, built, init.map(Path::to_path_buf)),
    }
}

fn build_model(recipe: &Recipe, device: Device) -> Result<(nn::VarStore, OpenElm)> {
    let (mut vs, model) = generator::seeded(recipe.trainer.seed as i64, || {
        let vs = nn::VarStore::new(device);
        OpenElm::new(&vs.root(), &recipe.model).map(|model| (vs, model))
    })?;
    if recipe.trainer.precision == Precision::Bf16 {
        vs.bfloat16();
    }
    Ok((vs, model))
}
