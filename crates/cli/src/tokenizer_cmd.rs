//! `corenet tokenizer …`: train a byte-level BPE tokenizer on plain-text files, so demos and
//! tests have a `tokenizer.json` without a download.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use corenet_data::{HfTokenizer, TextTokenizer, DEFAULT_SPECIAL_TOKENS};

#[derive(Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer (special tokens <unk> <s> </s> <pad>) and write
    /// tokenizer.json.
    Train(TrainArgs),
}

#[derive(Args)]
pub struct TrainArgs {
    /// Plain-text files or glob patterns (quote them so the shell leaves `*` alone).
    #[arg(long, required = true, num_args = 1..)]
    files: Vec<String>,
    /// Target vocabulary size, special tokens and the 256 byte symbols included.
    #[arg(long)]
    vocab_size: usize,
    /// Where to write tokenizer.json (parent directories are created).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(command: TokenizerCommand) -> anyhow::Result<()> {
    match command {
        TokenizerCommand::Train(args) => train(&args),
    }
}

/// Expands every pattern; a pattern that matches no file is an error naming it.
fn expand_files(patterns: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in patterns {
        let matched: Vec<PathBuf> = glob::glob(pattern)
            .with_context(|| format!("bad file pattern `{pattern}`"))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        if matched.is_empty() {
            bail!("`{pattern}` matches no file");
        }
        files.extend(matched);
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn train(args: &TrainArgs) -> anyhow::Result<()> {
    if args.vocab_size == 0 {
        bail!("--vocab-size must be > 0");
    }
    let files = expand_files(&args.files)?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating directory {}", parent.display()))?;
    }
    corenet_data::train_tokenizer(&files, args.vocab_size, &DEFAULT_SPECIAL_TOKENS, &args.out)
        .with_context(|| {
            format!(
                "training a tokenizer on {} file(s) into {}",
                files.len(),
                args.out.display()
            )
        })?;
    let tokenizer = HfTokenizer::from_file(&args.out)
        .with_context(|| format!("reading back {}", args.out.display()))?;
    println!(
        "{}: vocab {} (bos {}, eos {}, pad {}), trained on {} file(s)",
        args.out.display(),
        tokenizer.vocab_size(),
        tokenizer.bos_id(),
        tokenizer.eos_id(),
        tokenizer.pad_id(),
        files.len()
    );
    Ok(())
}
