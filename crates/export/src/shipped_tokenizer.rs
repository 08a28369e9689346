//! The tokenizer an export ships: the run's own (carried in every checkpoint since this
//! version, or named with `--tokenizer`), as the files a Hugging Face folder holds —
//! `tokenizer.json` whose post-processor puts BOS in front as OpenELM expects,
//! `tokenizer_config.json` and `special_tokens_map.json` naming BOS/EOS/UNK/PAD, and for a
//! SentencePiece run the original `tokenizer.model` too — and as the vocabulary GGUF embeds.

use std::path::{Path, PathBuf};

use corenet_data::template::CHAT_TEMPLATE_FILE;
use corenet_data::{
    resolve_tokenizer, tokenizer_in_folder, HfTokenizer, SentencePieceModel,
    SentencePieceTokenizer, TextTokenizer, TokenizerKind, TOKENIZER_JSON_FILE,
    TOKENIZER_MODEL_FILE,
};
use corenet_model::hf::{write_json, SpecialIds};
use serde_json::{json, Value};
use tokenizers::processors::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;

use crate::error::{Error, Result};

pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_FILE: &str = "special_tokens_map.json";

/// The names of the special tokens (`pad` falls back to `unk` when the tokenizer has no padding
/// token, as LLaMA's has none).
#[derive(Debug, Clone)]
pub struct SpecialNames {
    pub bos: String,
    pub eos: String,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// A tokenizer ready to be written into an export.
pub struct ShippedTokenizer {
    pub source: PathBuf,
    pub kind: TokenizerKind,
    /// The source file's bytes (copied as `tokenizer.model` for a SentencePiece run).
    bytes: Vec<u8>,
    /// The `tokenizers` form, BOS post-processor included (written as `tokenizer.json`).
    pub hf: tokenizers::Tokenizer,
    /// The decoded SentencePiece model, for a SentencePiece run.
    pub sentencepiece: Option<SentencePieceModel>,
    pub ids: SpecialIds,
    pub names: SpecialNames,
    /// Ids the tokenizer can produce (the exported vocabulary must hold them all).
    pub vocab_size: usize,
    /// The checkpoint's chat template (`chat_template.jinja`, written by runs on chat data),
    /// shipped as `chat_template` in `tokenizer_config.json`.
    pub chat_template: Option<String>,
}

impl ShippedTokenizer {
    /// The tokenizer at `explicit`, or else the one `checkpoint` carries (`tokenizer.model` or
    /// `tokenizer.json` next to its weights).
    pub fn find(checkpoint: &Path, explicit: Option<&Path>) -> Result<Self> {
        let found = match (explicit, tokenizer_in_folder(checkpoint)) {
            (Some(path), _) => Some(Self::load(path)?),
            (None, Some(file)) => Some(Self::load(&file)?),
            (None, None) => None,
        };
        if let Some(mut shipped) = found {
            shipped.chat_template = read_chat_template(checkpoint)?;
            return Ok(shipped);
        }
        Err(Error::Tokenizer {
            path: checkpoint.to_path_buf(),
            reason: format!(
                "holds no {TOKENIZER_JSON_FILE} or {TOKENIZER_MODEL_FILE} (checkpoints written \
                 before tokenizers were carried have none); pass --tokenizer with the run's \
                 `data.tokenizer`"
            ),
        })
    }

    /// Loads a tokenizer file (or a folder holding one).
    pub fn load(path: &Path) -> Result<Self> {
        let (file, kind) = resolve_tokenizer(path)?;
        let bytes = std::fs::read(&file).map_err(|e| Error::io("read", &file, e))?;
        match kind {
            TokenizerKind::SentencePiece => Self::from_sentencepiece(file, bytes),
            TokenizerKind::HfJson => Self::from_json(file, bytes),
        }
    }

    fn from_sentencepiece(file: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let model = SentencePieceModel::from_bytes(&bytes, &file)?;
        let tok = SentencePieceTokenizer::from_model(model.clone(), &file)?;
        let hf = tok.hf_tokenizer().clone();
        let unk = model
            .pieces
            .iter()
            .find(|p| p.kind == corenet_data::sentencepiece::PieceType::Unknown)
            .map(|p| p.piece.clone());
        let mut shipped = ShippedTokenizer {
            names: names_of(&hf, &file, (tok.bos_id(), tok.eos_id()), unk, None)?,
            ids: SpecialIds {
                bos: tok.bos_id(),
                eos: tok.eos_id(),
                pad: None,
            },
            vocab_size: tok.vocab_size(),
            source: file,
            kind: TokenizerKind::SentencePiece,
            bytes,
            hf,
            sentencepiece: Some(model),
            chat_template: None,
        };
        shipped.settle_pad();
        shipped.check_bos()?;
        Ok(shipped)
    }

    fn from_json(file: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let mut hf = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::Tokenizer {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        let tok = HfTokenizer::new(hf.clone())?;
        let pad = (tok.pad_id() < tok.vocab_size() as u32).then(|| tok.pad_id());
        let unk = hf.token_to_id("<unk>").map(|_| "<unk>".to_string());
        let names = names_of(&hf, &file, (tok.bos_id(), tok.eos_id()), unk, pad)?;
        let post = with_bos(&hf, &names.bos, tok.bos_id(), &file)?;
        hf.with_post_processor(Some(post));
        let mut shipped = ShippedTokenizer {
            ids: SpecialIds {
                bos: tok.bos_id(),
                eos: tok.eos_id(),
                pad,
            },
            names,
            vocab_size: tok.vocab_size(),
            source: file,
            kind: TokenizerKind::HfJson,
            bytes,
            hf,
            sentencepiece: None,
            chat_template: None,
        };
        shipped.settle_pad();
        shipped.check_bos()?;
        Ok(shipped)
    }

    /// Without a padding token, padding uses UNK (batched generation and lm-eval need one).
    fn settle_pad(&mut self) {
        if self.names.pad.is_none() {
            if let Some(unk) = &self.names.unk {
                self.ids.pad = self.hf.token_to_id(unk);
                self.names.pad = Some(unk.clone());
            }
        }
    }

    /// The written `tokenizer.json` must encode as OpenELM was trained: BOS, then the text.
    fn check_bos(&self) -> Result<()> {
        let sample = "The king";
        let encode = |special: bool| {
            self.hf
                .encode(sample, special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::Tokenizer {
                    path: self.source.clone(),
                    reason: format!("encoding a sample: {e}"),
                })
        };
        let (with, without) = (encode(true)?, encode(false)?);
        let mut expected = vec![self.ids.bos];
        expected.extend(&without);
        if with != expected {
            return Err(Error::Tokenizer {
                path: self.source.clone(),
                reason: format!(
                    "its post-processor gives {with:?} for {sample:?}, not BOS then the text ({expected:?})"
                ),
            });
        }
        Ok(())
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and, for a
    /// SentencePiece run, `tokenizer.model` into `dir`.
    pub fn write_hf_files(&self, dir: &Path, model_max_length: usize) -> Result<()> {
        let json_path = dir.join(TOKENIZER_JSON_FILE);
        self.hf
            .save(&json_path, false)
            .map_err(|e| Error::Tokenizer {
                path: json_path.clone(),
                reason: format!("writing: {e}"),
            })?;
        if self.kind == TokenizerKind::SentencePiece {
            let path = dir.join(TOKENIZER_MODEL_FILE);
            std::fs::write(&path, &self.bytes).map_err(|e| Error::io("write", &path, e))?;
        }
        let specials = self.special_tokens_map();
        let mut config = json!({
            // The fast tokenizer reads tokenizer.json exactly; no conversion from the .model.
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": true,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
            "padding_side": "right",
        });
        if let (Some(c), Some(s)) = (config.as_object_mut(), specials.as_object()) {
            c.extend(s.clone());
            if let Some(template) = &self.chat_template {
                c.insert("chat_template".into(), template.clone().into());
            }
        }
        write_json(&dir.join(TOKENIZER_CONFIG_FILE), &config)?;
        write_json(&dir.join(SPECIAL_TOKENS_FILE), &specials)?;
        Ok(())
    }

    fn special_tokens_map(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("bos_token".into(), self.names.bos.clone().into());
        map.insert("eos_token".into(), self.names.eos.clone().into());
        if let Some(unk) = &self.names.unk {
            map.insert("unk_token".into(), unk.clone().into());
        }
        if let Some(pad) = &self.names.pad {
            map.insert("pad_token".into(), pad.clone().into());
        }
        Value::Object(map)
    }
}

/// The chat template `dir` carries: a corenet checkpoint's `chat_template.jinja`, or the
/// `chat_template` of an HF folder's `tokenizer_config.json`.
pub fn read_chat_template(dir: &Path) -> Result<Option<String>> {
    let file = dir.join(CHAT_TEMPLATE_FILE);
    if file.is_file() {
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io("read", &file, e))?;
        return Ok(Some(text));
    }
    let config = dir.join(TOKENIZER_CONFIG_FILE);
    if !config.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&config).map_err(|e| Error::io("read", &config, e))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Tokenizer {
        path: config.clone(),
        reason: e.to_string(),
    })?;
    Ok(value["chat_template"].as_str().map(str::to_string))
}

fn names_of(
    hf: &tokenizers::Tokenizer,
    file: &Path,
    (bos, eos): (u32, u32),
    unk: Option<String>,
    pad: Option<u32>,
) -> Result<SpecialNames> {
    let name = |id: u32| {
        hf.id_to_token(id).ok_or_else(|| Error::Tokenizer {
            path: file.to_path_buf(),
            reason: format!("special id {id} has no token"),
        })
    };
    Ok(SpecialNames {
        bos: name(bos)?,
        eos: name(eos)?,
        unk,
        pad: pad.map(name).transpose()?,
    })
}

/// The tokenizer's post-processor with BOS put in front of every sequence; a byte-level
/// post-processor (offset trimming) is kept ahead of it.
fn with_bos(
    hf: &tokenizers::Tokenizer,
    bos: &str,
    bos_id: u32,
    file: &Path,
) -> Result<PostProcessorWrapper> {
    let err = |e: String| Error::Tokenizer {
        path: file.to_path_buf(),
        reason: format!("building the BOS post-processor: {e}"),
    };
    let template = TemplateProcessing::builder()
        .try_single(format!("{bos} $A"))
        .and_then(|b| b.try_pair(format!("{bos} $A {bos}:1 $B:1")))
        .map_err(|e| err(e.to_string()))?
        .special_tokens(vec![(bos.to_string(), bos_id)])
        .build()
        .map_err(|e| err(e.to_string()))?;
    Ok(match hf.get_post_processor() {
        None | Some(PostProcessorWrapper::Template(_)) => PostProcessorWrapper::Template(template),
        Some(other) => PostProcessorWrapper::Sequence(Sequence::new(vec![
            other.clone(),
            PostProcessorWrapper::Template(template),
        ])),
    })
}
