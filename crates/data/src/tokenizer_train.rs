//! Training a byte-level BPE tokenizer (so demos and tests need no download).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerImpl};

use crate::error::{Error, Result};

/// Special tokens CoreNet/LLaMA-style tokenizers carry; BOS/EOS/pad are found by these names.
pub const DEFAULT_SPECIAL_TOKENS: [&str; 4] = ["<unk>", "<s>", "</s>", "<pad>"];

type ByteBpe = TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>;

fn tok_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        context: context.to_string(),
        message: e.to_string(),
    }
}

fn new_byte_bpe() -> ByteBpe {
    let mut tok: ByteBpe = TokenizerImpl::new(BPE::default());
    // No prefix space: text pieces are tokenized as they are, like GPT-2.
    let byte_level = ByteLevel::new(false, true, true);
    tok.with_pre_tokenizer(Some(byte_level))
        .with_decoder(Some(byte_level));
    tok
}

fn trainer(vocab_size: usize, special: &[&str]) -> tokenizers::models::bpe::BpeTrainer {
    BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            special
                .iter()
                .map(|s| AddedToken::from(s.to_string(), true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
}

/// Trains on in-memory texts and returns the tokenizer.
pub fn train_tokenizer_from_texts<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab_size: usize,
    special: &[&str],
) -> Result<tokenizers::Tokenizer> {
    let mut tok = new_byte_bpe();
    let mut tr = trainer(vocab_size, special);
    tok.train(&mut tr, texts)
        .map_err(|e| tok_err("training", e))?;
    Ok(tokenizers::Tokenizer::from(tok))
}

/// Trains on text files and writes `tokenizer.json` to `out`.
pub fn train_tokenizer(
    files: &[PathBuf],
    vocab_size: usize,
    special: &[&str],
    out: &Path,
) -> Result<()> {
    if files.is_empty() {
        return Err(Error::Config("train_tokenizer: no input files".into()));
    }
    let mut tok = new_byte_bpe();
    let mut tr = trainer(vocab_size, special);
    let names = files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    tok.train_from_files(&mut tr, names)
        .map_err(|e| tok_err("training", e))?;
    tok.save(out, false)
        .map_err(|e| tok_err(&format!("saving {}", out.display()), e))?;
    tracing::info!(path = %out.display(), vocab = tok.get_vocab_size(true), "tokenizer written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{HfTokenizer, TextTokenizer};

    #[test]
    fn trains_and_roundtrips() {
        let texts = ["the quick brown fox jumps over the lazy dog"; 20];
        let tok =
            train_tokenizer_from_texts(texts.iter(), 300, &DEFAULT_SPECIAL_TOKENS).expect("train");
        let hf = HfTokenizer::new(tok).expect("special tokens");
        assert_eq!((hf.bos_id(), hf.eos_id(), hf.pad_id()), (1, 2, 3));
        let ids = hf.encode("the lazy fox").expect("encode");
        assert_eq!(hf.decode(&ids).expect("decode"), "the lazy fox");
    }
}
