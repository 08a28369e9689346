//! `corenet`: the command-line front end of corenet-rs. Argument parsing and dispatch only; the
//! work happens in the library crates.

#![forbid(unsafe_code)]

mod bench_cmd;
mod checkpoint_cmd;
mod data_cmd;
mod eval_cmd;
mod generate_cmd;
mod launch_cmd;
mod model_cmd;
mod number;
mod plan_cmd;
mod plot_cmd;
mod recipe_input;
mod tokenizer_cmd;
mod train_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "corenet",
    version,
    about = "Pre-train and reproduce OpenELM models"
)]
struct Cli {
    /// How log lines on stderr look: `text` for people (coloured only on a terminal, and not
    /// when NO_COLOR is set), `json` for machines (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Log lines to stderr, around the progress bar; the level from RUST_LOG (default info).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| corenet_train::log::progress::LogWriter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt with a checkpoint (greedy or sampled, per-layer KV cache).
    Generate(generate_cmd::GenerateArgs),
    /// Benchmark training steps on synthetic tokens: tokens/s, MFU, peak memory, time split.
    Bench(bench_cmd::BenchArgs),
    /// Evaluate a checkpoint or HF folder: perplexity on a shard, zero-shot multiple choice.
    Eval {
        #[command(subcommand)]
        command: eval_cmd::EvalCommand,
    },
    /// Train from a recipe (YAML); resumable with --resume auto.
    Train(train_cmd::TrainArgs),
    /// Plan a run without building the model: parameters, tokens, FLOPs, memory per GPU,
    /// whether it fits, and GPU-hours at a given MFU.
    Plan(plan_cmd::PlanArgs),
    /// Draw loss curves of one or more runs (loss, validation, lr, grad norm, tokens/s) as
    /// a PNG or SVG.
    Plot(plot_cmd::PlotArgs),
    /// Run a command (e.g. `-- train RECIPE`) as N data-parallel ranks on this machine.
    Launch(launch_cmd::LaunchArgs),
    /// Work with checkpoints.
    Checkpoint {
        #[command(subcommand)]
        command: checkpoint_cmd::CheckpointCommand,
    },
    /// Inspect model architectures.
    Model {
        #[command(subcommand)]
        command: model_cmd::ModelCommand,
    },
    /// Build demo shards, and inspect the data stream (per-source stats, decoded rows).
    Data {
        #[command(subcommand)]
        command: data_cmd::DataCommand,
    },
    /// Train a BPE tokenizer on plain text.
    Tokenizer {
        #[command(subcommand)]
        command: tokenizer_cmd::TokenizerCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Reports end quietly when their reader goes away (`corenet plan … | head`); ranks, which
    // talk to peers over sockets, keep SIGPIPE ignored so a dead peer is an error.
    if !matches!(cli.command, Command::Train(_) | Command::Launch(_)) {
        corenet_ffi::process::default_sigpipe();
    }
    let success = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::Generate(args) => success(generate_cmd::run(args)),
        Command::Bench(args) => success(bench_cmd::run(args)),
        Command::Eval { command } => success(eval_cmd::run(command)),
        Command::Train(args) => train_cmd::run(args),
        Command::Launch(args) => launch_cmd::run(args),
        Command::Plan(args) => success(plan_cmd::run(args)),
        Command::Plot(args) => success(plot_cmd::run(args)),
        Command::Checkpoint { command } => success(checkpoint_cmd::run(command)),
        Command::Model { command } => success(model_cmd::run(command)),
        Command::Data { command } => success(data_cmd::run(command)),
        Command::Tokenizer { command } => success(tokenizer_cmd::run(command)),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace dump.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
