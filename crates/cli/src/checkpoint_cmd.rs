//! `corenet checkpoint average`: the mean of the last k checkpoints' model weights, written as
//! a checkpoint folder of its own.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use corenet_train::checkpoint::average::average_checkpoints;
use corenet_train::checkpoint::store::{CheckpointEntry, CheckpointStore};

/// Where a run keeps its checkpoints unless its recipe moves them.
const RUN_CHECKPOINTS: &str = "checkpoints";

#[derive(Subcommand)]
pub enum CheckpointCommand {
    /// Average the model weights of the last K checkpoints that verify into a new checkpoint
    /// folder (weights, model config, tokenizer, manifest).
    Average(AverageArgs),
}

#[derive(Args)]
pub struct AverageArgs {
    /// A run directory (its `checkpoints/` is used) or a checkpoint directory holding
    /// step-XXXXXXXX folders.
    #[arg(long)]
    dir: PathBuf,
    /// How many of the newest checkpoints to average.
    #[arg(long, default_value_t = 5)]
    last: usize,
    /// Output folder (new or empty): a checkpoint that generate, eval, model export and
    /// --init-from accept.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(command: CheckpointCommand) -> anyhow::Result<()> {
    match command {
        CheckpointCommand::Average(args) => average(&args),
    }
}

/// The checkpoints under `dir`, or under `dir/checkpoints` when `dir` is a run directory.
fn find_checkpoints(dir: &Path) -> anyhow::Result<Vec<CheckpointEntry>> {
    if !dir.is_dir() {
        bail!("--dir {} is not a directory", dir.display());
    }
    let here = CheckpointStore::unopened(dir, 0)
        .list()
        .with_context(|| format!("listing {}", dir.display()))?;
    if !here.is_empty() {
        return Ok(here);
    }
    let nested = dir.join(RUN_CHECKPOINTS);
    if nested.is_dir() {
        let entries = CheckpointStore::unopened(&nested, 0)
            .list()
            .with_context(|| format!("listing {}", nested.display()))?;
        if !entries.is_empty() {
            tracing::info!(dir = %nested.display(), "using the run's checkpoint directory");
            return Ok(entries);
        }
    }
    bail!(
        "no step-XXXXXXXX checkpoints in {} nor in {}; give the run directory or the checkpoint \
         directory its recipe names (`checkpoint.dir`, by default RUN/{RUN_CHECKPOINTS})",
        dir.display(),
        nested.display()
    )
}

fn average(args: &AverageArgs) -> anyhow::Result<()> {
    if args.last == 0 {
        bail!("--last must be at least 1");
    }
    // Refused before any checkpoint is read.
    corenet_model::staged_folder::check_target(&args.out)?;
    let mut entries = find_checkpoints(&args.dir)?;
    entries.reverse(); // newest first
    let mut picked = Vec::new();
    for entry in entries {
        if picked.len() == args.last {
            break;
        }
        match CheckpointStore::verify(&entry.dir) {
            Ok(_) => picked.push(entry),
            Err(err) => {
                tracing::warn!(dir = %entry.dir.display(), %err, "skipping a checkpoint that does not verify")
            }
        }
    }
    if picked.len() < args.last {
        let steps: Vec<u64> = picked.iter().map(|p| p.step).collect();
        bail!(
            "{} has only {} checkpoints that verify (steps {steps:?}), {} requested; pass --last {} \
             or keep more (`checkpoint.keep_last` in the recipe)",
            args.dir.display(),
            picked.len(),
            args.last,
            picked.len().max(1)
        );
    }
    average_checkpoints(&picked, &args.out)?;
    let steps: Vec<u64> = picked.iter().map(|e| e.step).collect();
    println!("averaged steps {steps:?} into {}", args.out.display());
    Ok(())
}
