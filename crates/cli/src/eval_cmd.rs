//! `corenet eval`: perplexity of a model on a held-out shard, and zero-shot multiple-choice
//! tasks scored as lm-evaluation-harness does (docs/evaluation.md).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use corenet_data::TextTokenizer;
use corenet_eval::{
    check_tokenizer, commonsense, evaluate, load_docs, perplexity, ModelScorer, PerplexityOptions,
    Task,
};
use corenet_model::OpenElm;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Tokens, mean NLL and perplexity on a shard (parquet, jsonl, jsonl.zst, json.gz), packed
    /// into windows of the model's context.
    Perplexity(PerplexityArgs),
    /// Zero-shot multiple choice (arc_easy, arc_challenge, boolq, hellaswag, piqa, sciq,
    /// winogrande): acc and acc_norm as lm-evaluation-harness computes them.
    Tasks(TasksArgs),
    /// LLM-Adapters' commonsense reasoning (boolq, piqa, social_i_qa, hellaswag, winogrande,
    /// ARC-Easy, ARC-Challenge, openbookqa) on Alpaca-prompted test sets: accuracy of generated
    /// or most likely answers, for fine-tuned (PEFT or merged) models.
    Commonsense(CommonsenseArgs),
}

/// The model and tokenizer every evaluation needs.
#[derive(Args)]
pub struct ModelArgs {
    /// A corenet checkpoint directory (model.safetensors + model_config.json) or an HF OpenELM
    /// folder (config.json + model.safetensors or a sharded index).
    model: PathBuf,
    /// tokenizer.json or a SentencePiece tokenizer.model (default: the one in the model folder,
    /// which checkpoints and exports carry).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The held-out shard.
    #[arg(long)]
    data: PathBuf,
    /// Window length in tokens (default: the model's max_context_length).
    #[arg(long)]
    seq_len: Option<usize>,
    /// JSON key (dotted) or parquet column holding the text.
    #[arg(long, default_value = "text")]
    text_key: String,
    /// Read at most this many documents.
    #[arg(long)]
    max_documents: Option<usize>,
    /// Score only the first N windows (the `eval.sequences` of validation during training).
    #[arg(long)]
    max_sequences: Option<usize>,
}

#[derive(Args)]
pub struct TasksArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// NAME=PATH of a task's jsonl file, e.g. `--task arc_easy=ARC-Easy-test.jsonl` (repeatable).
    #[arg(long = "task", value_name = "NAME=PATH", required = true)]
    tasks: Vec<String>,
    /// Context length in tokens; longer requests are left-truncated (default: the model's
    /// max_context_length).
    #[arg(long)]
    max_length: Option<usize>,
    /// Score only the first N items of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// Do not prepend BOS to contexts (OpenELM's published numbers use it).
    #[arg(long)]
    no_bos: bool,
}

#[derive(Args)]
pub struct CommonsenseArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// NAME=PATH of a task's test set, e.g. `--task boolq=dataset/boolq/test.json` (a JSON
    /// array as LLM-Adapters ships it, or JSON lines; repeatable).
    #[arg(long = "task", value_name = "NAME=PATH", required = true)]
    tasks: Vec<String>,
    /// `generate`: greedy decoding, the first label in the text (LLM-Adapters, which decodes
    /// with 4 beams); `loglikelihood`: the most likely `the correct answer is <label>`.
    #[arg(long, value_enum, default_value = "generate")]
    mode: CommonsenseMode,
    /// Tokens generated per item (generate mode).
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Score only the first N items of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// Base weights for a PEFT checkpoint whose record names a base that moved.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Also print every item's answer, prediction and generated text (with --json).
    #[arg(long)]
    items: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CommonsenseMode {
    Generate,
    Loglikelihood,
}

pub fn run(command: EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Perplexity(args) => run_perplexity(&args),
        EvalCommand::Tasks(args) => run_tasks(&args),
        EvalCommand::Commonsense(args) => run_commonsense(&args),
    }
}

fn load(
    args: &ModelArgs,
) -> anyhow::Result<(
    tch::nn::VarStore,
    OpenElm,
    std::sync::Arc<dyn TextTokenizer>,
)> {
    load_with_base(args, None)
}

fn load_with_base(
    args: &ModelArgs,
    base: Option<&Path>,
) -> anyhow::Result<(
    tch::nn::VarStore,
    OpenElm,
    std::sync::Arc<dyn TextTokenizer>,
)> {
    let (vs, model) = corenet_model::pretrained::open_with_base(
        &args.model,
        base,
        tch::Device::cuda_if_available(),
    )
    .with_context(|| format!("loading {}", args.model.display()))?;
    let path = args.tokenizer.as_deref().unwrap_or(&args.model);
    let tokenizer = crate::generate_cmd::folder_tokenizer(path)?;
    check_tokenizer(tokenizer.as_ref(), model.config())
        .with_context(|| format!("{}", path.display()))?;
    Ok((vs, model, tokenizer))
}

fn run_perplexity(args: &PerplexityArgs) -> anyhow::Result<()> {
    let (_vs, model, tokenizer) = load(&args.model)?;
    let options = PerplexityOptions {
        seq_len: args.seq_len.unwrap_or(model.config().max_context_length),
        batch_size: args.model.batch_size,
        text_key: args.text_key.clone(),
        max_documents: args.max_documents,
        max_sequences: args.max_sequences,
    };
    let report = perplexity(&model, tokenizer.as_ref(), &args.data, &options)?;
    if args.model.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{:<40} {:>10} {:>12} {:>10} {:>12}",
            "data", "documents", "tokens", "mean_nll", "perplexity"
        );
        println!(
            "{:<40} {:>10} {:>12} {:>10.4} {:>12.4}",
            report.path.display(),
            report.documents,
            report.tokens,
            report.mean_nll,
            report.perplexity
        );
    }
    Ok(())
}

fn parse_task(spec: &str) -> anyhow::Result<(Task, &Path)> {
    let Some((name, path)) = spec.split_once('=') else {
        bail!("--task {spec}: expected NAME=PATH");
    };
    Ok((Task::from_name(name)?, Path::new(path)))
}

fn run_tasks(args: &TasksArgs) -> anyhow::Result<()> {
    let tasks = args
        .tasks
        .iter()
        .map(|s| parse_task(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (_vs, model, tokenizer) = load(&args.model)?;
    let mut scorer = ModelScorer {
        model: &model,
        tokenizer: tokenizer.as_ref(),
        batch_size: args.model.batch_size,
        max_length: args.max_length.unwrap_or(model.config().max_context_length),
        add_bos: !args.no_bos,
    };
    let mut results = Vec::new();
    for (task, path) in tasks {
        let mut docs = load_docs(task, path)?;
        if let Some(limit) = args.limit {
            docs.truncate(limit);
        }
        let result = evaluate(task, &docs, &mut scorer)?;
        tracing::info!(
            task = task.name(),
            n = result.n,
            acc = result.acc,
            "task scored"
        );
        results.push(result);
    }
    if args.model.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    let pct = |v: Option<f64>, e: Option<f64>| match (v, e) {
        (Some(v), Some(e)) => format!("{:.2} ± {:.2}", 100.0 * v, 100.0 * e),
        _ => "-".into(),
    };
    println!(
        "{:<14} {:>6} {:>16} {:>16}",
        "task", "n", "acc (%)", "acc_norm (%)"
    );
    for r in &results {
        println!(
            "{:<14} {:>6} {:>16} {:>16}",
            r.task,
            r.n,
            pct(Some(r.acc), Some(r.acc_stderr)),
            pct(r.acc_norm, r.acc_norm_stderr)
        );
    }
    Ok(())
}

fn run_commonsense(args: &CommonsenseArgs) -> anyhow::Result<()> {
    let tasks = args
        .tasks
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, path)) => Ok((name, Path::new(path))),
            None => bail!("--task {spec}: expected NAME=PATH"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (_vs, model, tokenizer) = load_with_base(&args.model, args.base.as_deref())?;
    let mut scorer = ModelScorer {
        model: &model,
        tokenizer: tokenizer.as_ref(),
        batch_size: args.model.batch_size,
        max_length: model.config().max_context_length,
        add_bos: true,
    };
    let mut reports = Vec::new();
    for (name, path) in tasks {
        let mut items = commonsense::load_items(path)?;
        if let Some(limit) = args.limit {
            items.truncate(limit);
        }
        let task = commonsense::TaskFile { name, path };
        let mut report = match args.mode {
            CommonsenseMode::Generate => commonsense::evaluate_generate(
                &model,
                tokenizer.as_ref(),
                &task,
                &items,
                args.max_new_tokens,
            )?,
            CommonsenseMode::Loglikelihood => {
                commonsense::evaluate_loglikelihood(&mut scorer, &task, &items)?
            }
        };
        tracing::info!(
            task = name,
            n = report.n,
            accuracy = report.accuracy,
            "task scored"
        );
        if !args.items {
            report.items.clear();
        }
        reports.push(report);
    }
    if args.model.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    println!(
        "{:<14} {:>6} {:>8} {:>12} {:>12}",
        "task", "n", "correct", "unanswered", "accuracy (%)"
    );
    for r in &reports {
        println!(
            "{:<14} {:>6} {:>8} {:>12} {:>12.2}",
            r.task,
            r.n,
            r.correct,
            r.unanswered,
            100.0 * r.accuracy
        );
    }
    Ok(())
}
