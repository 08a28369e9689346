//! `corenet generate`: continue a prompt with a trained checkpoint (per-layer KV cache).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use corenet_model::generate::{generate, SamplingConfig};

#[derive(Args)]
pub struct GenerateArgs {
    /// A checkpoint directory (step-XXXXXXXX, verified against its manifest) or an HF OpenELM
    /// folder.
    checkpoint: PathBuf,
    /// tokenizer.json or a SentencePiece tokenizer.model.
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recompute the whole sequence every token instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let tokenizer = corenet_data::load_tokenizer(&args.tokenizer)?;
    // Verifies the checkpoint's manifest (or an HF folder's tensors) before using it.
    let (_vs, model) =
        corenet_model::pretrained::open(&args.checkpoint, tch::Device::cuda_if_available())
            .with_context(|| format!("loading {}", args.checkpoint.display()))?;
    let rows = model.config().vocab_size;
    if tokenizer.vocab_size() > rows {
        anyhow::bail!(
            "{} has {} ids, the model only {rows} rows",
            args.tokenizer.display(),
            tokenizer.vocab_size(),
        );
    }
    // OpenELM expects BOS before the text, as the LLaMA tokenizer adds it.
    let mut prompt = vec![i64::from(tokenizer.bos_id())];
    prompt.extend(tokenizer.encode(&args.prompt)?.into_iter().map(i64::from));
    let sampling = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        eos_id: Some(i64::from(tokenizer.eos_id())),
    };
    let new = generate(&model, &prompt, &sampling, !args.no_cache)?;
    let ids: Vec<u32> = new.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
    println!("{}{}", args.prompt, tokenizer.decode(&ids)?);
    Ok(())
}
