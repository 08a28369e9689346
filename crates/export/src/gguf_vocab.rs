//! The tokenizer as GGUF metadata, in the two vocabularies llama.cpp knows: `llama` for a
//! SentencePiece model (pieces, scores, piece types) and `gpt2` for a byte-level BPE
//! `tokenizer.json` (tokens, merges, GPT-2 pre-tokenization). Embedding rows past the
//! tokenizer's ids (CoreNet trains 32128 rows for a 32000-token vocabulary) get `[PAD{id}]`
//! tokens of type UNUSED, because llama.cpp wants one token per row.

use gguf_rs_lib::format::metadata::{MetadataArray, MetadataValue};
use gguf_rs_lib::format::types::GGUFValueType;
use serde_json::Value;

use corenet_data::sentencepiece::PieceType;

use crate::error::{Error, Result};
use crate::shipped_tokenizer::ShippedTokenizer;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// `tokenizer.ggml.*` entries for `tokenizer`, with `rows` tokens in all.
pub fn vocab_metadata(
    tokenizer: &ShippedTokenizer,
    rows: usize,
) -> Result<Vec<(String, MetadataValue)>> {
    let mut vocab = match &tokenizer.sentencepiece {
        Some(model) => sentencepiece_vocab(model),
        None => bpe_vocab(tokenizer)?,
    };
    if vocab.tokens.len() > rows {
        return Err(Error::Unsupported {
            format: "gguf",
            reason: format!(
                "the tokenizer has {} tokens, the exported embedding only {rows} rows",
                vocab.tokens.len()
            ),
        });
    }
    for id in vocab.tokens.len()..rows {
        vocab.tokens.push(format!("[PAD{id}]"));
        vocab.types.push(UNUSED);
        if let Some(scores) = &mut vocab.scores {
            scores.push(0.0);
        }
    }
    let ids = tokenizer.ids;
    let mut out = vec![
        ("tokenizer.ggml.model".into(), string(vocab.model)),
        ("tokenizer.ggml.pre".into(), string(vocab.pre)),
        (
            "tokenizer.ggml.tokens".into(),
            array(
                GGUFValueType::String,
                vocab.tokens.into_iter().map(MetadataValue::String),
            )?,
        ),
        (
            "tokenizer.ggml.token_type".into(),
            array(
                GGUFValueType::I32,
                vocab.types.into_iter().map(MetadataValue::I32),
            )?,
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            MetadataValue::U32(ids.bos),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            MetadataValue::U32(ids.eos),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            MetadataValue::Bool(true),
        ),
        (
            "tokenizer.ggml.add_eos_token".into(),
            MetadataValue::Bool(false),
        ),
    ];
    if let Some(scores) = vocab.scores {
        out.push((
            "tokenizer.ggml.scores".into(),
            array(
                GGUFValueType::F32,
                scores.into_iter().map(MetadataValue::F32),
            )?,
        ));
    }
    if let Some(merges) = vocab.merges {
        out.push((
            "tokenizer.ggml.merges".into(),
            array(
                GGUFValueType::String,
                merges.into_iter().map(MetadataValue::String),
            )?,
        ));
    }
    let unk = tokenizer
        .names
        .unk
        .as_deref()
        .and_then(|u| tokenizer.hf.token_to_id(u));
    if let Some(unk) = unk {
        out.push((
            "tokenizer.ggml.unknown_token_id".into(),
            MetadataValue::U32(unk),
        ));
    }
    if let Some(pad) = ids.pad {
        out.push((
            "tokenizer.ggml.padding_token_id".into(),
            MetadataValue::U32(pad),
        ));
    }
    Ok(out)
}

struct Vocab {
    model: &'static str,
    pre: &'static str,
    tokens: Vec<String>,
    types: Vec<i32>,
    scores: Option<Vec<f32>>,
    merges: Option<Vec<String>>,
}

fn sentencepiece_vocab(model: &corenet_data::SentencePieceModel) -> Vocab {
    let kind = |k: PieceType| match k {
        PieceType::Normal => NORMAL,
        PieceType::Unknown => UNKNOWN,
        PieceType::Control => CONTROL,
        PieceType::UserDefined => USER_DEFINED,
        PieceType::Unused => UNUSED,
        PieceType::Byte => BYTE,
        PieceType::Other(_) => NORMAL,
    };
    Vocab {
        model: "llama",
        pre: "default",
        tokens: model.pieces.iter().map(|p| p.piece.clone()).collect(),
        types: model.pieces.iter().map(|p| kind(p.kind)).collect(),
        scores: Some(model.pieces.iter().map(|p| p.score).collect()),
        merges: None,
    }
}

/// A byte-level BPE `tokenizer.json`: its vocabulary in id order (every id from 0 present),
/// added special tokens as CONTROL, and its merges.
fn bpe_vocab(tokenizer: &ShippedTokenizer) -> Result<Vocab> {
    let unsupported = |reason: String| Error::Unsupported {
        format: "gguf",
        reason: format!("{}: {reason}", tokenizer.source.display()),
    };
    let json: Value = serde_json::from_str(
        &tokenizer
            .hf
            .to_string(false)
            .map_err(|e| unsupported(e.to_string()))?,
    )
    .map_err(|e| unsupported(e.to_string()))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(unsupported(format!(
            "model type {} (llama.cpp's gpt2 vocabulary is a BPE)",
            model["type"]
        )));
    }
    if !byte_level_with_regex(&json["pre_tokenizer"]) {
        return Err(unsupported(
            "only a byte-level pre-tokenizer with GPT-2's split (what `corenet tokenizer train` writes) maps onto llama.cpp's `gpt-2` pre-tokenizer".into(),
        ));
    }
    let mut by_id: Vec<Option<(String, i32)>> = Vec::new();
    let mut put = |id: u64, token: &str, kind: i32| {
        let id = id as usize;
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        by_id[id] = Some((token.to_string(), kind));
    };
    let vocab = model["vocab"].as_object().into_iter().flatten();
    let count = vocab.clone().count() + json["added_tokens"].as_array().map_or(0, Vec::len);
    for (token, id) in vocab {
        // Ids index a table: one past every token at most, or the file is not a vocabulary.
        let id = id
            .as_u64()
            .filter(|&i| (i as usize) < count)
            .ok_or_else(|| {
                unsupported(format!(
                    "token {token:?} has id {id}, not one of 0..{count}"
                ))
            })?;
        put(id, token, NORMAL);
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let kind = if added["special"] == true {
            CONTROL
        } else {
            USER_DEFINED
        };
        match (added["id"].as_u64(), added["content"].as_str()) {
            (Some(id), Some(token)) if (id as usize) < count => put(id, token, kind),
            _ => {
                return Err(unsupported(format!(
                    "added token {added} has no id in 0..{count}"
                )))
            }
        }
    }
    let mut tokens = Vec::with_capacity(by_id.len());
    let mut types = Vec::with_capacity(by_id.len());
    for (id, entry) in by_id.into_iter().enumerate() {
        let (token, kind) = entry.ok_or_else(|| unsupported(format!("no token has id {id}")))?;
        tokens.push(token);
        types.push(kind);
    }
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => Ok(format!("{a} {b}")),
                _ => Err(unsupported(format!("merge {m} is not a pair of strings"))),
            },
            _ => Err(unsupported(format!("merge {m} is not a string"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Vocab {
        model: "gpt2",
        pre: "gpt-2",
        tokens,
        types,
        scores: None,
        merges: Some(merges),
    })
}

fn byte_level_with_regex(pre: &Value) -> bool {
    match pre["type"].as_str() {
        Some("ByteLevel") => pre["use_regex"] != false,
        Some("Sequence") => {
            let steps = pre["pretokenizers"].as_array();
            matches!(steps.map(Vec::as_slice), Some([one]) if byte_level_with_regex(one))
        }
        _ => false,
    }
}

fn string(s: &str) -> MetadataValue {
    MetadataValue::String(s.to_string())
}

fn array(
    kind: GGUFValueType,
    values: impl Iterator<Item = MetadataValue>,
) -> Result<MetadataValue> {
    let array = MetadataArray::new(kind, values.collect()).map_err(|e| Error::Gguf {
        path: Default::default(),
        message: e.to_string(),
    })?;
    Ok(MetadataValue::Array(Box::new(array)))
}
