//! `corenet checkpoint average`: the mean of the last k checkpoints' model weights.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use corenet_train::checkpoint::contents::MODEL_FILE;
use corenet_train::checkpoint::store::CheckpointStore;

#[derive(Subcommand)]
pub enum CheckpointCommand {
    /// Average the model weights of the last K checkpoints that verify.
    Average(AverageArgs),
}

#[derive(Args)]
pub struct AverageArgs {
    /// Checkpoint directory of a run (holds step-XXXXXXXX folders).
    #[arg(long)]
    dir: PathBuf,
    /// How many of the newest checkpoints to average.
    #[arg(long, default_value_t = 5)]
    last: usize,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(command: CheckpointCommand) -> anyhow::Result<()> {
    match command {
        CheckpointCommand::Average(args) => average(&args),
    }
}

fn average(args: &AverageArgs) -> anyhow::Result<()> {
    let store = CheckpointStore::new(&args.dir, 0)?;
    let mut entries = store
        .list()
        .with_context(|| format!("listing {}", args.dir.display()))?;
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
        bail!(
            "{} has only {} checkpoints that verify, {} requested",
            args.dir.display(),
            picked.len(),
            args.last
        );
    }
    let files: Vec<PathBuf> = picked.iter().map(|e| e.dir.join(MODEL_FILE)).collect();
    corenet_train::checkpoint::average::average_model_files(&files, &args.out)?;
    let steps: Vec<u64> = picked.iter().map(|e| e.step).collect();
    println!("averaged steps {steps:?} into {}", args.out.display());
    Ok(())
}
