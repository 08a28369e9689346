//! `corenet model …`: architecture summaries (shapes, parameters, FLOPs) without allocating.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use corenet_model::{OpenElmConfig, ParamCount};
use serde::Serialize;

use crate::number::{si, thousands};

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Per-layer heads, FFN widths and parameters, the total, and FLOPs per token.
    Summary(SummaryArgs),
    /// Write a checkpoint for other tools: a complete Hugging Face folder (weights, config,
    /// tokenizer, modeling code; loads offline with trust_remote_code), an MLX folder for
    /// mlx-lm (optionally 4/8-bit), or a GGUF file for llama.cpp.
    Export(ExportArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Hf,
    Mlx,
    Gguf,
    /// A PEFT checkpoint's adapters in HF PEFT's layout.
    Peft,
}

#[derive(Clone, Copy, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum GgufTypeArg {
    F32,
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A checkpoint directory (step-XXXXXXXX or an averaged one; verified against its
    /// manifest) or an HF OpenELM folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output: a new or empty folder (hf, mlx) or a new file (gguf).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "hf")]
    format: FormatArg,
    /// The tokenizer to ship (default: the one the checkpoint carries).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Keep only the first N embedding rows (e.g. 32000: the LLaMA tokenizer's ids, as Apple's
    /// HF release; CoreNet trains with 32128).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Float type of the weights (hf, mlx; default f32, f16 when quantizing).
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// MLX only: quantize every matrix to this many bits (4 or 8), in mlx-lm's affine layout.
    #[arg(long)]
    quantize: Option<u32>,
    /// MLX only: weights per quantization group (32, 64 or 128).
    #[arg(long, default_value_t = 64, requires = "quantize")]
    group_size: usize,
    /// GGUF only: tensor type of the matrices (norms stay f32); default f32.
    #[arg(long = "type", value_enum)]
    gguf_type: Option<GgufTypeArg>,
    /// A PEFT checkpoint: fold its LoRA/DoRA adapters into the base weights (hf, mlx, gguf);
    /// `--format peft` writes them alone instead.
    #[arg(long)]
    merge_adapters: bool,
    /// A PEFT checkpoint's base weights (HF folder or checkpoint), when not at the folder its
    /// adapters.json names; checked against the recorded fingerprint.
    #[arg(long)]
    base: Option<PathBuf>,
}

#[derive(Args)]
pub struct SummaryArgs {
    /// A preset: OpenELM-270M, OpenELM-450M, OpenELM-1_1B, OpenELM-3B, gpt-test, gpt-1_3B.
    #[arg(long, conflicts_with = "config")]
    model: Option<String>,
    /// A model config file (YAML or JSON, CoreNet field names).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override the vocabulary size (CoreNet trains OpenELM with 32128).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Sequence length for the attention FLOPs.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::Summary(args) => summary(&args),
        ModelCommand::Export(args) => export(&args),
    }
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    use corenet_export::{ExportOptions, FloatType, Format, GgufType, Quantization};
    let options = ExportOptions {
        format: match args.format {
            FormatArg::Hf => Format::Hf,
            FormatArg::Mlx => Format::Mlx,
            FormatArg::Gguf => Format::Gguf,
            FormatArg::Peft => Format::Peft,
        },
        vocab_size: args.vocab_size,
        dtype: args.dtype.map(|d| match d {
            DtypeArg::F32 => FloatType::F32,
            DtypeArg::F16 => FloatType::F16,
            DtypeArg::Bf16 => FloatType::Bf16,
        }),
        quantization: args.quantize.map(|bits| Quantization {
            bits,
            group_size: args.group_size,
        }),
        gguf_type: args.gguf_type.map(|t| match t {
            GgufTypeArg::F32 => GgufType::F32,
            GgufTypeArg::F16 => GgufType::F16,
            GgufTypeArg::Q8_0 => GgufType::Q8_0,
        }),
        merge_adapters: args.merge_adapters,
        base: args.base.clone(),
    };
    let summary = corenet_export::export(
        &args.checkpoint,
        args.tokenizer.as_deref(),
        &args.out,
        &options,
    )
    .with_context(|| format!("exporting {}", args.checkpoint.display()))?;
    println!(
        "exported {} to {} ({} vocabulary rows, tokenizer {})",
        args.checkpoint.display(),
        summary.out.display(),
        summary.vocab_size,
        summary.tokenizer.display()
    );
    Ok(())
}

fn load_config(args: &SummaryArgs) -> anyhow::Result<(String, OpenElmConfig)> {
    let (name, mut config) = match (&args.model, &args.config) {
        (Some(name), None) => (name.clone(), OpenElmConfig::preset(name)?),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading model config {}", path.display()))?;
            let config: OpenElmConfig = serde_norway::from_str(&text)
                .with_context(|| format!("parsing model config {}", path.display()))?;
            (path.display().to_string(), config)
        }
        _ => bail!("give either --model PRESET or --config FILE"),
    };
    if let Some(vocab) = args.vocab_size {
        config.vocab_size = vocab;
    }
    config.validate()?;
    Ok((name, config))
}

#[derive(Serialize)]
struct Summary<'a> {
    name: &'a str,
    config: &'a OpenElmConfig,
    layers: Vec<LayerRow>,
    params: &'a ParamCount,
    total_params: u64,
    non_embedding_params: u64,
    seq_len: usize,
    training_flops_per_token: f64,
    forward_flops_per_token: f64,
}

#[derive(Serialize)]
struct LayerRow {
    query_heads: usize,
    kv_heads: usize,
    ffn_dim: usize,
    params: u64,
}

fn summary(args: &SummaryArgs) -> anyhow::Result<()> {
    let (name, config) = load_config(args)?;
    let dims = config.layers()?;
    let params = config.param_count()?;
    let flops = config.training_flops_per_token(args.seq_len)?;
    let summary = Summary {
        name: &name,
        config: &config,
        layers: dims
            .iter()
            .zip(&params.layers)
            .map(|(d, p)| LayerRow {
                query_heads: d.query_heads,
                kv_heads: d.kv_heads,
                ffn_dim: d.ffn_dim,
                params: p.total(),
            })
            .collect(),
        params: &params,
        total_params: params.total(),
        non_embedding_params: params.non_embedding(),
        seq_len: args.seq_len,
        training_flops_per_token: flops,
        forward_flops_per_token: flops / 3.0,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_table(&summary);
    }
    Ok(())
}

fn print_table(s: &Summary<'_>) {
    let c = s.config;
    println!(
        "{}: {} layers, model_dim {}, head_dim {}, vocab {}, {} query heads per KV head, {} embeddings",
        s.name,
        c.num_transformer_layers,
        c.model_dim,
        c.head_dim,
        c.vocab_size,
        c.num_gqa_groups,
        if c.tied() { "tied" } else { "untied" }
    );
    println!(
        "{:>5} {:>8} {:>9} {:>8} {:>14}",
        "layer", "q_heads", "kv_heads", "ffn_dim", "params"
    );
    for (i, l) in s.layers.iter().enumerate() {
        println!(
            "{i:>5} {:>8} {:>9} {:>8} {:>14}",
            l.query_heads,
            l.kv_heads,
            l.ffn_dim,
            thousands(l.params)
        );
    }
    let rows = [
        ("embedding", s.params.embedding),
        ("output head", s.params.lm_head),
        ("layers", s.params.layers_total()),
        ("final norm", s.params.final_norm),
        ("non-embedding", s.non_embedding_params),
        ("total", s.total_params),
    ];
    for (label, value) in rows {
        println!("{label:<16}{:>30}", thousands(value));
    }
    println!(
        "FLOPs per token at seq {}: training {}FLOP (6N + attention), forward {}FLOP",
        s.seq_len,
        si(s.training_flops_per_token),
        si(s.forward_flops_per_token)
    );
}
