//! `corenet train RECIPE [--set k=v]… [--resume auto|PATH] [--init-from PATH]`. Under a launcher (torchrun,
//! `corenet launch`, srun) the RANK/WORLD_SIZE/… or SLURM_* variables make it one rank of a
//! data-parallel run. `--corenet-config FILE` reads CoreNet's YAML instead of a recipe;
//! `--dry-run` checks everything and takes one optimizer step without writing anything.
//!
//! Exit status: 0 when the step budget (or `--stop-at`) is reached, 128 + the signal (130,
//! 143) when SIGINT/SIGTERM stopped the run after its checkpoint, 1 on an error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use corenet_train::dist::DistEnv;
use corenet_train::recipe::dry_run::dry_run;
use corenet_train::{Resume, TrainOptions, Trainer};

use crate::recipe_input::RecipeInput;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    input: RecipeInput,
    /// Check the recipe, every shard, the tokenizer and the batch arithmetic, then take one
    /// optimizer step on one micro-batch and print its loss; writes nothing into the run
    /// directory.
    #[arg(long)]
    dry_run: bool,
    /// Dry runs: the world size to check the batch arithmetic for (default: the launcher's
    /// WORLD_SIZE, else 1).
    #[arg(long, requires = "dry_run")]
    world_size: Option<usize>,
    /// `auto` (newest checkpoint that verifies, newer failing ones moved to quarantine/; fresh
    /// when there are none; refused when checkpoints exist but none verifies), `none` (fresh;
    /// refused while a valid checkpoint exists, failing ones moved to quarantine/) or a
    /// checkpoint directory.
    #[arg(long, default_value = "auto")]
    resume: String,
    /// Stop this process (with a checkpoint) at this step; the recipe's steps still set the schedule.
    #[arg(long)]
    stop_at: Option<u64>,
    /// Data-parallel runs: seconds a rank waits for the others at the rendezvous and in every
    /// collective before failing (a dead or stuck rank).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    dist_timeout: u64,
    /// Resume model and optimizer from a checkpoint written by a different number of ranks,
    /// starting the data stream from the beginning (its positions cannot be re-partitioned).
    #[arg(long)]
    restart_data: bool,
    /// Resume although the shard files changed since the checkpoint (removed, added, or another
    /// size or content): workers keep their epoch and file index over the new list and restart
    /// a file that is not the one they were reading. Without it such a resume fails, naming them.
    #[arg(long)]
    accept_data_change: bool,
    /// Start from existing weights: an HF OpenELM folder (config.json + model.safetensors or a
    /// sharded model.safetensors.index.json) or a corenet checkpoint directory. The architecture
    /// must be the recipe's; the vocabulary is resized (32000 <-> 32128). Ignored on resume.
    #[arg(long, value_name = "PATH")]
    init_from: Option<PathBuf>,
}

fn parse_resume(value: &str) -> Resume {
    match value {
        "none" => Resume::Fresh,
        "auto" => Resume::Auto,
        path => Resume::Path(PathBuf::from(path)),
    }
}

/// Exit status of a run stopped by a signal after its checkpoint: 128 + the signal, as shells
/// report a process killed by it, so a requeue script can tell "preempted" (130 SIGINT, 143
/// SIGTERM) from "budget spent" (0). A rank stopped by another rank's signal reports SIGTERM's.
pub fn interrupted_exit_code(signal: usize) -> u8 {
    let signal = if signal == 0 {
        signal_hook::consts::SIGTERM as usize
    } else {
        signal
    };
    128u8.saturating_add(u8::try_from(signal).unwrap_or(127))
}

/// SIGINT/SIGTERM ask the trainer to checkpoint and stop (and `received` records which); a
/// second signal kills the process. Installed before any slow start-up work, so a preemption
/// during the rendezvous or the checkpoint load is honoured too.
fn install_signal_handlers(
    stop: &Arc<AtomicBool>,
    received: &Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(stop))?;
        signal_hook::flag::register_usize(signal, Arc::clone(received), signal as usize)?;
        signal_hook::flag::register(signal, Arc::clone(stop))?;
    }
    Ok(())
}

/// A line on stdout that never panics: with SIGPIPE ignored (ranks keep it so), a closed pipe
/// (`corenet train … | head`) is an error to drop, not a reason to lose the run's exit status.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let (stop, received) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    install_signal_handlers(&stop, &received)?;
    let env = DistEnv::from_env().context("reading the launcher environment")?;
    let launcher_world = env.as_ref().map(|e| e.world_size);
    let recipe = args.input.load(args.world_size.or(launcher_world))?;
    if args.dry_run {
        let world = args.world_size.or(launcher_world).unwrap_or(1);
        let report = dry_run(&recipe, world)
            .with_context(|| format!("dry run of {}", args.input.path().display()))?;
        for (name, files) in &report.sources {
            say!("source {name}: {files} shard(s) readable");
        }
        say!(
            "tokenizer: {} ids, model vocabulary {}",
            report.tokenizer_vocab,
            report.model_vocab
        );
        say!(
            "batch: {} sequences = {} micro-batch(es) of {} × {} rank(s)",
            recipe.trainer.global_batch,
            report.accumulation,
            recipe.trainer.micro_batch,
            report.world_size
        );
        say!("dry run ok: one optimizer step, loss {:.4}", report.loss);
        return Ok(ExitCode::SUCCESS);
    }
    if args.dist_timeout == 0 {
        anyhow::bail!("--dist-timeout must be at least 1 second");
    }
    let rank = env.as_ref().map_or(0, |e| e.rank);
    // Errors of a data-parallel run say which rank they come from.
    let which = |e: corenet_train::Error| match &env {
        Some(env) if env.world_size > 1 => {
            anyhow::Error::from(e).context(format!("rank {rank} of {}", env.world_size))
        }
        _ => anyhow::Error::from(e),
    };
    let options = TrainOptions {
        resume: parse_resume(&args.resume),
        stop_at: args.stop_at,
        rank,
        world_size: env.as_ref().map_or(1, |e| e.world_size),
        dist: env.clone(),
        dist_timeout: Some(Duration::from_secs(args.dist_timeout)),
        restart_data: args.restart_data,
        accept_data_change: args.accept_data_change,
        init_from: args.init_from,
        stop_flag: Some(stop),
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(recipe, options).map_err(which)?;
    let summary = trainer.train().map_err(which)?;
    let code = match summary.interrupted {
        true => ExitCode::from(interrupted_exit_code(received.load(Ordering::SeqCst))),
        false => ExitCode::SUCCESS,
    };
    if rank != 0 {
        return Ok(code);
    }
    let fmt = |l: Option<f64>| l.map_or("-".into(), |v| format!("{v:.4}"));
    say!(
        "steps {}..{}, loss {} -> {}, skipped {}{}",
        summary.start_step,
        summary.final_step,
        fmt(summary.first_loss),
        fmt(summary.last_loss),
        summary.skipped_steps,
        if summary.interrupted {
            " (interrupted, checkpoint saved)"
        } else {
            ""
        }
    );
    Ok(code)
}
