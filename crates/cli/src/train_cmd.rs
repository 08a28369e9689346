//! `corenet train RECIPE [--set k=v]… [--resume auto|PATH]`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use corenet_train::overrides::Override;
use corenet_train::{Recipe, Resume, TrainOptions, Trainer};

#[derive(Args)]
pub struct TrainArgs {
    /// The recipe (YAML).
    recipe: PathBuf,
    /// Override a recipe key, e.g. `--set trainer.steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// `auto` (newest checkpoint that verifies, else fresh), `none` (fresh; refused if the run
    /// directory already has checkpoints) or a checkpoint directory.
    #[arg(long, default_value = "auto")]
    resume: String,
    /// Stop this process (with a checkpoint) at this step; the recipe's steps still set the schedule.
    #[arg(long)]
    stop_at: Option<u64>,
}

fn parse_resume(value: &str) -> Resume {
    match value {
        "none" => Resume::Fresh,
        "auto" => Resume::Auto,
        path => Resume::Path(PathBuf::from(path)),
    }
}

/// SIGINT/SIGTERM ask the trainer to checkpoint and stop; a second signal kills the process.
fn install_signal_handlers(stop: &Arc<AtomicBool>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(stop))?;
        signal_hook::flag::register(signal, Arc::clone(stop))?;
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let overrides = args
        .sets
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let recipe = Recipe::load(&args.recipe, &overrides)
        .with_context(|| format!("recipe {}", args.recipe.display()))?;
    let options = TrainOptions {
        resume: parse_resume(&args.resume),
        stop_at: args.stop_at,
        world_size: 1,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(recipe, options)?;
    install_signal_handlers(&trainer.stop_flag())?;
    let summary = trainer.train()?;
    let fmt = |l: Option<f64>| l.map_or("-".into(), |v| format!("{v:.4}"));
    println!(
        "steps {}..{}, loss {} -> {}, skipped {}{}",
        summary.start_step,
        summary.final_step,
        fmt(summary.first_loss),
        fmt(summary.last_loss),
        summary.skipped_steps,
        if summary.interrupted { " (interrupted, checkpoint saved)" } else { "" }
    );
    Ok(())
}
