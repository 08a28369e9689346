//! The tokenizer seam. The pipeline only needs ids for text, the special ids and a decoder for
//! `peek`; Hugging Face `tokenizer.json` ([`HfTokenizer`]) and SentencePiece `tokenizer.model`
//! ([`crate::SentencePieceTokenizer`]) sit behind the same trait, picked by [`load_tokenizer`].

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};

/// What the data pipeline needs from a tokenizer. Shared by worker threads, hence `Sync`.
pub trait TextTokenizer: Send + Sync {
    /// Ids of `text`, without any special tokens added.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Text of `ids` (for inspection; special tokens kept).
    fn decode(&self, ids: &[u32]) -> Result<String>;
    fn bos_id(&self) -> u32;
    fn eos_id(&self) -> u32;
    /// Padding id; CoreNet uses the vocabulary size when the model has no pad token.
    fn pad_id(&self) -> u32;
    fn vocab_size(&self) -> usize;
}

/// A Hugging Face `tokenizers` tokenizer loaded from `tokenizer.json`.
///
/// Differs from CoreNet's SentencePiece path in one way worth knowing: special-token strings
/// that occur literally in a document (e.g. `</s>`) are matched as added tokens by `tokenizers`.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    vocab: usize,
}

const BOS_NAMES: [&str; 3] = ["<s>", "<|begin_of_text|>", "<|endoftext|>"];
const EOS_NAMES: [&str; 3] = ["</s>", "<|end_of_text|>", "<|endoftext|>"];

impl HfTokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            context: format!("loading {}", path.display()),
            message: e.to_string(),
        })?;
        Self::new(inner)
    }

    /// Wraps a tokenizer, looking its BOS/EOS/pad ids up among its tokens.
    pub fn new(inner: tokenizers::Tokenizer) -> Result<Self> {
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let missing = |what: &str, names: &[&str]| Error::Tokenizer {
            context: "special tokens".into(),
            message: format!("no {what} token (looked for {names:?})"),
        };
        let bos = find(&BOS_NAMES).ok_or_else(|| missing("BOS", &BOS_NAMES))?;
        let eos = find(&EOS_NAMES).ok_or_else(|| missing("EOS", &EOS_NAMES))?;
        let vocab = inner.get_vocab_size(true);
        let pad = inner.token_to_id("<pad>").unwrap_or(vocab as u32);
        Ok(HfTokenizer {
            inner,
            bos,
            eos,
            pad,
            vocab,
        })
    }
}

impl TextTokenizer for HfTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        // encode_fast skips offset tracking, which the pipeline never needs.
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer {
                context: format!("encoding {} bytes", text.len()),
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer {
            context: "decoding".into(),
            message: e.to_string(),
        })
    }

    fn bos_id(&self) -> u32 {
        self.bos
    }

    fn eos_id(&self) -> u32 {
        self.eos
    }

    fn pad_id(&self) -> u32 {
        self.pad
    }

    fn vocab_size(&self) -> usize {
        self.vocab
    }
}

/// The two file formats a tokenizer comes in, by the name a folder gives each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// A SentencePiece `tokenizer.model` (a `ModelProto`).
    SentencePiece,
    /// A Hugging Face `tokenizer.json`.
    HfJson,
}

impl TokenizerKind {
    /// The file name a model folder (checkpoint, HF export) gives this kind.
    pub fn file_name(self) -> &'static str {
        match self {
            TokenizerKind::SentencePiece => TOKENIZER_MODEL_FILE,
            TokenizerKind::HfJson => TOKENIZER_JSON_FILE,
        }
    }
}

pub const TOKENIZER_MODEL_FILE: &str = "tokenizer.model";
pub const TOKENIZER_JSON_FILE: &str = "tokenizer.json";

/// The tokenizer file a folder holds: `tokenizer.model`, else `tokenizer.json` (None when it
/// has neither).
pub fn tokenizer_in_folder(dir: &Path) -> Option<std::path::PathBuf> {
    [TOKENIZER_MODEL_FILE, TOKENIZER_JSON_FILE]
        .into_iter()
        .map(|name| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The tokenizer file `path` names and its kind: `*.model` is SentencePiece, `*.json` a Hugging
/// Face `tokenizer.json`; any other name is told apart by its first byte (`{` for JSON, `0x0A`,
/// the first field of a `ModelProto`, for SentencePiece). A directory is searched for
/// `tokenizer.model`, then `tokenizer.json`.
pub fn resolve_tokenizer(path: &Path) -> Result<(std::path::PathBuf, TokenizerKind)> {
    let unknown = |message: &str| Error::Tokenizer {
        context: format!("loading {}", path.display()),
        message: message.into(),
    };
    if path.is_dir() {
        if let Some(file) = tokenizer_in_folder(path) {
            return resolve_tokenizer(&file);
        }
        return Err(unknown(
            "is a directory without a tokenizer.model or tokenizer.json in it; give the tokenizer file",
        ));
    }
    let kind = match path.extension().and_then(|e| e.to_str()) {
        Some("model") => TokenizerKind::SentencePiece,
        Some("json") => TokenizerKind::HfJson,
        _ => {
            let mut first = [0u8; 1];
            let n = std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read(&mut f, &mut first))
                .map_err(|e| Error::io(path, e))?;
            match (n, first[0]) {
                (1, b'{') => TokenizerKind::HfJson,
                (1, 0x0A) => TokenizerKind::SentencePiece,
                _ => {
                    return Err(unknown(
                        "unknown tokenizer file type: expected `.model` (SentencePiece) or \
                         `.json` (Hugging Face tokenizer.json)",
                    ))
                }
            }
        }
    };
    Ok((path.to_path_buf(), kind))
}

/// Loads the tokenizer `path` names ([`resolve_tokenizer`]): a SentencePiece model
/// ([`crate::SentencePieceTokenizer`]) or a Hugging Face `tokenizer.json` ([`HfTokenizer`]).
pub fn load_tokenizer(path: &Path) -> Result<Arc<dyn TextTokenizer>> {
    let (file, kind) = resolve_tokenizer(path)?;
    match kind {
        TokenizerKind::SentencePiece => {
            Ok(Arc::new(crate::SentencePieceTokenizer::from_file(&file)?))
        }
        TokenizerKind::HfJson => Ok(Arc::new(HfTokenizer::from_file(&file)?)),
    }
}
