//! `corenet bench --model NAME --seq T --micro-batch B …`: synthetic training steps through the
//! trainer's forward/backward and AdamW, reporting tokens/s, MFU, peak memory and the phase
//! split (corenet_train::bench); prints a summary and optionally writes the JSON report.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use corenet_model::kernel_choice::{self, GqaKernel, RmsNormKernel};
use corenet_train::bench::{self, BenchConfig, BenchReport};
use corenet_train::recipe::overrides::Override;
use corenet_train::recipe::{DeviceChoice, Precision};

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Bf16,
    F32,
}

#[derive(Clone, Copy, ValueEnum)]
enum RmsNormArg {
    Composite,
    Native,
}

#[derive(Clone, Copy, ValueEnum)]
enum GqaArg {
    Auto,
    EnableGqa,
    RepeatInterleave,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Args)]
pub struct BenchArgs {
    /// A preset: OpenELM-270M, OpenELM-450M, OpenELM-1_1B, OpenELM-3B, gpt-test, gpt-1_3B.
    #[arg(long)]
    model: String,
    /// Sequence length T.
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    /// Sequences per step B.
    #[arg(long)]
    micro_batch: usize,
    /// Timed steps without synchronisation (tokens/s and MFU come from these).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed steps synchronised at every phase boundary (the forward/backward/optimizer split).
    #[arg(long, default_value_t = 3)]
    split_steps: usize,
    #[arg(long, value_enum, default_value = "bf16")]
    precision: PrecisionArg,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Recompute each block's activations in backward.
    #[arg(long)]
    activation_checkpointing: bool,
    /// Override a model key, e.g. `--set model.num_transformer_layers=2` (repeatable).
    #[arg(long = "set", value_name = "model.KEY=VALUE")]
    sets: Vec<String>,
    /// Intra-op CPU threads (libtorch's default when unset).
    #[arg(long)]
    threads: Option<usize>,
    /// RMSNorm kernel: CoreNet's composite or libtorch's `rms_norm` (to time both on a device).
    #[arg(long, value_enum, default_value = "composite")]
    rms_norm: RmsNormArg,
    /// How KV heads are shared: auto (enable-gqa on CPU, repeat-interleave on CUDA), or forced.
    #[arg(long, value_enum, default_value = "auto")]
    gqa: GqaArg,
    /// Peak learning rate of the AdamW steps.
    #[arg(long, default_value_t = 5.3e-3)]
    lr: f64,
    /// Write the full report (every field) here as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let overrides = args
        .sets
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let model = bench::model_config(&args.model, &overrides)
        .with_context(|| format!("model {}", args.model))?;
    kernel_choice::set_rms_norm(match args.rms_norm {
        RmsNormArg::Composite => RmsNormKernel::Composite,
        RmsNormArg::Native => RmsNormKernel::Native,
    });
    kernel_choice::set_gqa(match args.gqa {
        GqaArg::Auto => GqaKernel::Auto,
        GqaArg::EnableGqa => GqaKernel::EnableGqa,
        GqaArg::RepeatInterleave => GqaKernel::RepeatInterleave,
    });
    let config = BenchConfig {
        seq_len: args.seq,
        micro_batch: args.micro_batch,
        steps: args.steps,
        warmup: args.warmup,
        split_steps: args.split_steps,
        precision: match args.precision {
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::F32 => Precision::F32,
        },
        device: match args.device {
            DeviceArg::Auto => DeviceChoice::Auto,
            DeviceArg::Cpu => DeviceChoice::Cpu,
            DeviceArg::Cuda => DeviceChoice::Cuda,
        },
        activation_checkpointing: args.activation_checkpointing,
        threads: args.threads,
        lr: args.lr,
        ..BenchConfig::new(args.model.clone(), model)
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = bench::run(&config, &command)?;
    if let Some(path) = &args.json {
        report
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    print_summary(&report);
    Ok(())
}

fn print_summary(r: &BenchReport) {
    let ms = |s: f64| s * 1e3;
    println!(
        "{} {} on {} ({}), torch {}, {} threads: B={} T={} {}{}",
        r.implementation,
        r.model,
        r.device,
        r.device_name,
        r.torch_version,
        r.threads,
        r.micro_batch,
        r.seq_len,
        r.precision,
        if r.activation_checkpointing {
            " +activation checkpointing"
        } else {
            ""
        }
    );
    println!(
        "step {:.2} ms (median {:.2} ms), {:.0} tokens/s, {:.3} TFLOP/s, MFU {}",
        ms(r.step_time_s),
        ms(r.step_time_median_s),
        r.tokens_per_s,
        r.achieved_flops_per_s / 1e12,
        r.mfu
            .map_or_else(|| "n/a".into(), |m| format!("{:.1}%", m * 100.0))
    );
    println!(
        "synced step {:.2} ms = forward {:.2} + backward {:.2} + optimizer {:.2} + communication {:.2}",
        ms(r.split.step_s),
        ms(r.split.forward_s),
        ms(r.split.backward_s),
        ms(r.split.optimizer_s),
        ms(r.split.communication_s)
    );
    println!(
        "peak memory {} ({}); sdpa {}; rms_norm {}; fused AdamW {}; final loss {:.4}",
        r.peak_memory_bytes.map_or_else(
            || "n/a".into(),
            |b| format!("{:.1} MiB", b as f64 / 1048576.0)
        ),
        r.peak_memory_source,
        r.sdpa_backend,
        r.rms_norm,
        r.fused_adamw,
        r.final_loss
    );
}
