//! `corenet plan RECIPE [--gpus N] [--gpu h100|a100] [--mfu 0.4] [--set k=v]… [--json]`:
//! parameters, tokens, FLOPs, memory per GPU and GPU-hours of a run, without building the model.

use anyhow::Context;
use clap::Args;
use corenet_train::recipe::plan::{plan, Gpu, Plan, PlanTarget, USABLE_FRACTION};

use crate::number::{si, thousands};
use crate::recipe_input::RecipeInput;

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    input: RecipeInput,
    /// Data-parallel GPUs (CoreNet trained OpenELM on 16 nodes × 8).
    #[arg(long, default_value_t = 128)]
    gpus: usize,
    /// h100 (SXM, 989 TFLOP/s dense bf16) or a100 (312 TFLOP/s); both 80 GB.
    #[arg(long, default_value = "h100", value_parser = parse_gpu)]
    gpu: Gpu,
    /// Model FLOPs utilisation assumed for the wall time.
    #[arg(long, default_value_t = 0.4)]
    mfu: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_gpu(s: &str) -> Result<Gpu, String> {
    s.parse::<Gpu>().map_err(|e| e.to_string())
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let recipe = args.input.load(Some(args.gpus))?;
    let target = PlanTarget {
        gpus: args.gpus,
        gpu: args.gpu,
        mfu: args.mfu,
    };
    let plan = plan(&recipe, &target)
        .with_context(|| format!("planning {}", args.input.path().display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", table(&plan, &recipe.run.name));
    }
    Ok(())
}

fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}

fn table(p: &Plan, name: &str) -> String {
    let m = &p.memory;
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{label:<22}{value}\n"));
    };
    line(
        "run",
        format!(
            "{name} on {} × {} at {:.0}% MFU",
            p.gpus,
            p.gpu_name,
            p.mfu * 100.0
        ),
    );
    line(
        "parameters",
        format!(
            "{} (non-embedding {})",
            thousands(p.params),
            thousands(p.non_embedding_params)
        ),
    );
    if p.memory.trainable_params != p.params {
        line(
            "trainable",
            format!(
                "{} adapter parameters ({:.2}% of the base; the base is frozen)",
                thousands(p.memory.trainable_params),
                100.0 * p.memory.trainable_params as f64 / p.params as f64
            ),
        );
    }
    line(
        "batch",
        format!(
            "{} sequences × {} tokens = {} tokens/step; micro-batch {}, {} accumulation step(s) per GPU",
            p.global_batch,
            p.seq_len,
            thousands(p.tokens_per_step),
            p.micro_batch,
            p.accumulation
        ),
    );
    line(
        "tokens",
        format!(
            "{} steps, {} tokens",
            thousands(p.steps),
            si(p.total_tokens as f64).trim_end()
        ),
    );
    line(
        "FLOPs",
        format!(
            "{}FLOP per token, {:.3e} in total",
            si(p.flops_per_token),
            p.total_flops
        ),
    );
    line("memory per GPU", String::new());
    line("  weights", gb(m.weights));
    if m.reference_weights > 0 {
        line("  DPO reference", gb(m.reference_weights));
    }
    line("  gradients", gb(m.gradients));
    line(
        "  master weights",
        format!(
            "{} (f32, over {} rank(s))",
            gb(m.master_weights),
            m.optimizer_shards
        ),
    );
    line(
        "  optimizer moments",
        format!(
            "{} (f32, over {} rank(s))",
            gb(m.optimizer_moments),
            m.optimizer_shards
        ),
    );
    line(
        "  activations",
        format!(
            "{} ({}; without checkpointing {}, with {})",
            gb(m.activations),
            if m.activation_checkpointing {
                "checkpointed"
            } else {
                "not checkpointed"
            },
            gb(m.activations_full),
            gb(m.activations_checkpointed)
        ),
    );
    line(
        "  total",
        format!(
            "{} of {} usable ({:.0}% of {}): {}",
            gb(m.total),
            gb(m.usable),
            USABLE_FRACTION * 100.0,
            gb(m.gpu_memory),
            if m.fits { "fits" } else { "does not fit" }
        ),
    );
    line(
        "time",
        format!(
            "{:.1} h wall ({:.1} days), {} GPU-hours, {} tokens/s per GPU",
            p.wall_seconds / 3600.0,
            p.wall_seconds / 86400.0,
            thousands(p.gpu_hours.round() as u64),
            thousands(p.tokens_per_s_per_gpu.round() as u64)
        ),
    );
    out
}
