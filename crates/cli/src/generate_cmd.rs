//! `corenet generate`: continue a prompt with a trained checkpoint (per-layer KV cache).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use corenet_data::template::{chat_prompt, CHAT_END_OF_TURN, CHAT_TEMPLATE_JINJA};
use corenet_data::TextTokenizer;
use corenet_export::shipped_tokenizer::read_chat_template;
use corenet_model::generate::{generate, SamplingConfig};

#[derive(Args)]
pub struct GenerateArgs {
    /// A checkpoint directory (step-XXXXXXXX, verified against its manifest) or an HF OpenELM
    /// folder.
    checkpoint: PathBuf,
    /// tokenizer.json or a SentencePiece tokenizer.model (default: the one in the checkpoint or
    /// export folder).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The text to continue; with --chat, the user's message.
    #[arg(long)]
    prompt: String,
    /// Ask as a chat: the prompt becomes a user turn in the chat layout the checkpoint was
    /// fine-tuned on (its `chat_template.jinja`, or `chat_template` in an export's
    /// tokenizer_config.json), and the reply ends at the end-of-turn marker.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    system: Option<String>,
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
    /// Print one JSON object (prompt and new token ids, and the text) instead of the text.
    #[arg(long)]
    json: bool,
}

/// The tokenizer at `path`: a file, or a folder holding `tokenizer.model` or `tokenizer.json`
/// (checkpoints carry the run's tokenizer, exports the tokenizer they ship).
pub fn folder_tokenizer(path: &Path) -> anyhow::Result<Arc<dyn TextTokenizer>> {
    corenet_data::load_tokenizer(path).with_context(|| {
        match path.is_dir() {
            true => format!(
                "no tokenizer in {} (checkpoints written before tokenizers were carried have none); pass --tokenizer",
                path.display()
            ),
            false => format!("loading the tokenizer {}", path.display()),
        }
    })
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let tokenizer_path = args.tokenizer.as_deref().unwrap_or(&args.checkpoint);
    let tokenizer = folder_tokenizer(tokenizer_path)?;
    // Verifies the checkpoint's manifest (or an HF folder's tensors) before using it.
    let (_vs, model) =
        corenet_model::pretrained::open(&args.checkpoint, tch::Device::cuda_if_available())
            .with_context(|| format!("loading {}", args.checkpoint.display()))?;
    let rows = model.config().vocab_size;
    if tokenizer.vocab_size() > rows {
        anyhow::bail!(
            "{} has {} ids, the model only {rows} rows",
            tokenizer_path.display(),
            tokenizer.vocab_size(),
        );
    }
    let input = match args.chat {
        true => chat_input(&args)?,
        false => args.prompt.clone(),
    };
    // OpenELM expects BOS before the text, as the LLaMA tokenizer adds it.
    let mut prompt = vec![i64::from(tokenizer.bos_id())];
    prompt.extend(tokenizer.encode(&input)?.into_iter().map(i64::from));
    let sampling = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        eos_id: Some(i64::from(tokenizer.eos_id())),
    };
    let new = generate(&model, &prompt, &sampling, !args.no_cache)?;
    let ids: Vec<u32> = new.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
    let mut text = tokenizer.decode(&ids)?;
    if args.chat {
        // A tokenizer without `</s>` as a special token spells the marker out.
        if let Some(end) = text.find(CHAT_END_OF_TURN) {
            text.truncate(end);
        }
    }
    if args.json {
        let line = serde_json::json!({ "prompt_ids": prompt, "new_ids": ids, "text": text });
        println!("{line}");
    } else if args.chat {
        println!("{text}");
    } else {
        println!("{}{text}", args.prompt);
    }
    Ok(())
}

/// The chat-layout input for `--chat`, after checking that the checkpoint was tuned on it.
fn chat_input(args: &GenerateArgs) -> anyhow::Result<String> {
    let dir = &args.checkpoint;
    let template = read_chat_template(dir)?.with_context(|| {
        format!(
            "{} carries no chat template: --chat needs a checkpoint fine-tuned on `template: chat` data (or its export)",
            dir.display()
        )
    })?;
    if template.trim() != CHAT_TEMPLATE_JINJA {
        anyhow::bail!(
            "{} carries another chat template than corenet's chat layout; --chat applies only that one",
            dir.display()
        );
    }
    let mut turns = Vec::new();
    if let Some(system) = &args.system {
        turns.push(("system".to_string(), system.clone()));
    }
    turns.push(("user".to_string(), args.prompt.clone()));
    chat_prompt(&turns).map_err(anyhow::Error::msg)
}
