//! `corenet generate`: continue a prompt with a trained checkpoint (per-layer KV cache).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use corenet_model::generate::{generate, SamplingConfig};
use corenet_model::{OpenElm, OpenElmConfig};
use corenet_train::checkpoint::contents::{MODEL_CONFIG_FILE, MODEL_FILE};

#[derive(Args)]
pub struct GenerateArgs {
    /// A checkpoint directory (holding model.safetensors and model_config.json).
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
    let config_path = args.checkpoint.join(MODEL_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config: OpenElmConfig = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", config_path.display()))?;
    let tokenizer = corenet_data::load_tokenizer(&args.tokenizer)?;
    if tokenizer.vocab_size() > config.vocab_size {
        anyhow::bail!(
            "{} has {} ids, the model only {} rows",
            args.tokenizer.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    let vs = tch::nn::VarStore::new(tch::Device::cuda_if_available());
    let model = OpenElm::new(&vs.root(), &config)?;
    model.load_safetensors(&args.checkpoint.join(MODEL_FILE))?;
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
