//! SentencePiece `tokenizer.model` read directly: `ModelProto` decoded with prost (proto.rs)
//! and the equivalent `tokenizers` BPE (byte fallback, score-ranked merges, SentencePiece's
//! normalizer), so LLaMA-2's tokenizer gives the same ids as the `sentencepiece` library.
//!
//! Field numbers follow `sentencepiece_model.proto` (checked against the descriptor shipped in
//! the Python package, sentencepiece 0.2.x):
//!
//! ```text
//! ModelProto      pieces=1 (repeated SentencePiece), trainer_spec=2, normalizer_spec=3
//! SentencePiece   piece=1 (string), score=2 (float), type=3 (enum, default NORMAL)
//! TrainerSpec     model_type=3 (default UNIGRAM), vocab_size=4, byte_fallback=35,
//!                 unk_id=40 (0), bos_id=41 (1), eos_id=42 (2), pad_id=43 (-1),
//!                 treat_whitespace_as_suffix=24
//! NormalizerSpec  name=1, precompiled_charsmap=2, add_dummy_prefix=3 (true),
//!                 remove_extra_whitespaces=4 (true), escape_whitespaces=5 (true)
//! ```
//!
//! Missing fields take the proto2 defaults above; unknown fields are skipped.
//!
//! How SentencePiece's BPE encoder maps onto `tokenizers` (what `bpe_model.cc` does):
//! * the normalized text is split into characters and the adjacent pair whose concatenation is
//!   a NORMAL piece with the highest score is merged, leftmost first, until none is left. A BPE
//!   whose merges are every split of every piece into two pieces, ranked by the merged piece's
//!   score (descending, then by id), does the same;
//! * no pre-tokenizer: SentencePiece runs the BPE over the whole normalized string;
//! * a final symbol that is not a piece becomes its UTF-8 bytes `<0xXX>` (byte fallback) or
//!   `<unk>` (consecutive unknowns fused into one);
//! * CONTROL pieces (`<s>`, `</s>`) are never matched in text, so they are added as special
//!   tokens with `encode_special_tokens` on: a literal `</s>` in a document is plain text;
//! * normalization is SentencePiece's own ([`SpNormalizer`], exact); the `tokenizers`
//!   normalizer of [`SentencePieceTokenizer::hf_tokenizer`] (for `tokenizer.json`) is exact for
//!   charsmap-free models such as LLaMA-2's and approximate for NFKC charsmaps.
//!
//! Not supported, and refused with an error rather than giving different ids: UNIGRAM/WORD/CHAR
//! models, USER_DEFINED pieces (SentencePiece matches them before the BPE), UNUSED pieces
//! (re-segmented after the BPE) and `treat_whitespace_as_suffix`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{NormalizerWrapper, Precompiled, Prepend, Replace, Sequence};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;

mod normalizer;
mod proto;

pub use normalizer::SpNormalizer;
pub use proto::{ModelType, NormalizerSpec, Piece, PieceType, SentencePieceModel, TrainerSpec};

/// SentencePiece's whitespace symbol, U+2581.
pub const SPACE_SYMBOL: &str = "\u{2581}";

// ---------------------------------------------------------------------------------------------
// The equivalent `tokenizers` pipeline.

/// Ids of the special pieces, checked against the vocabulary.
struct SpecialIds {
    unk: u32,
    bos: u32,
    eos: u32,
    pad: u32,
}

fn special_ids(model: &SentencePieceModel, path: &Path) -> Result<SpecialIds> {
    let invalid = |message: String| Error::SentencePieceModel {
        path: path.to_path_buf(),
        message,
    };
    let n = model.pieces.len();
    let unks: Vec<usize> = (0..n)
        .filter(|&i| model.pieces[i].kind == PieceType::Unknown)
        .collect();
    let unk = match unks.as_slice() {
        [one] => *one,
        [] => {
            return Err(invalid(format!(
                "missing unk: no piece has type UNKNOWN (trainer_spec.unk_id = {})",
                model.trainer_spec.unk_id
            )))
        }
        many => return Err(invalid(format!("several UNKNOWN pieces at ids {many:?}"))),
    };
    let spec = &model.trainer_spec;
    if spec.unk_id >= 0 && spec.unk_id as usize != unk {
        return Err(invalid(format!(
            "trainer_spec.unk_id = {} but the UNKNOWN piece is id {unk}",
            spec.unk_id
        )));
    }
    let control = |what: &str, id: i32| -> Result<u32> {
        if id < 0 {
            return Err(invalid(format!(
                "no {what} token (trainer_spec.{}_id = {id}); the data pipeline needs one",
                what.to_lowercase()
            )));
        }
        match model.pieces.get(id as usize) {
            Some(p) if p.kind == PieceType::Control => Ok(id as u32),
            Some(p) => Err(invalid(format!(
                "{what} id {id} is piece {:?} of type {:?}, expected CONTROL",
                p.piece, p.kind
            ))),
            None => Err(invalid(format!("{what} id {id} is outside the {n} pieces"))),
        }
    };
    let bos = control("BOS", spec.bos_id)?;
    let eos = control("EOS", spec.eos_id)?;
    let pad = if spec.pad_id >= 0 {
        control("PAD", spec.pad_id)?
    } else {
        n as u32
    };
    Ok(SpecialIds {
        unk: unk as u32,
        bos,
        eos,
        pad,
    })
}

/// Checks that `model` is a BPE model this reader reproduces exactly.
fn check_supported(model: &SentencePieceModel, path: &Path) -> Result<()> {
    let unsupported = |message: String| Error::SentencePieceModel {
        path: path.to_path_buf(),
        message,
    };
    match model.trainer_spec.model_type {
        ModelType::Bpe => {}
        ModelType::Unigram => {
            return Err(unsupported(
                "UNIGRAM models are not supported: only BPE models (such as LLaMA-2's \
                 tokenizer.model) can be read"
                    .into(),
            ))
        }
        other => {
            return Err(unsupported(format!(
                "model type {other:?} is not supported: only BPE models can be read"
            )))
        }
    }
    if model.pieces.is_empty() {
        return Err(unsupported("no pieces (empty vocabulary)".into()));
    }
    if model.trainer_spec.treat_whitespace_as_suffix {
        return Err(unsupported(
            "treat_whitespace_as_suffix is not supported".into(),
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(model.pieces.len());
    for (id, p) in model.pieces.iter().enumerate() {
        match p.kind {
            PieceType::UserDefined => {
                return Err(unsupported(format!(
                    "USER_DEFINED piece {:?} (id {id}) is not supported",
                    p.piece
                )))
            }
            PieceType::Unused => {
                return Err(unsupported(format!(
                    "UNUSED piece {:?} (id {id}) is not supported",
                    p.piece
                )))
            }
            PieceType::Other(v) => {
                return Err(unsupported(format!(
                    "piece {:?} (id {id}) has unknown type {v}",
                    p.piece
                )))
            }
            _ => {}
        }
        if p.piece.is_empty() {
            return Err(unsupported(format!("piece id {id} is empty")));
        }
        if let Some(first) = seen.insert(p.piece.as_str(), id) {
            return Err(unsupported(format!(
                "piece {:?} appears twice (ids {first} and {id})",
                p.piece
            )));
        }
    }
    if model.trainer_spec.byte_fallback {
        for b in 0..=255u8 {
            let name = format!("<0x{b:02X}>");
            match seen.get(name.as_str()) {
                Some(&id) if model.pieces[id].kind == PieceType::Byte => {}
                _ => {
                    return Err(unsupported(format!(
                        "byte_fallback is on but byte piece {name} is missing"
                    )))
                }
            }
        }
    }
    Ok(())
}

/// BPE merges from piece scores: every split of a NORMAL piece into two NORMAL pieces, ranked
/// by the merged piece's score (higher first), then its id, then the left and right ids.
fn merges_from_scores(pieces: &[Piece]) -> Vec<(String, String)> {
    let normal: HashMap<&str, usize> = pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind == PieceType::Normal)
        .map(|(i, p)| (p.piece.as_str(), i))
        .collect();
    // (score, merged id, left id, right id, split byte offset)
    let mut ranked: Vec<(f32, usize, usize, usize, usize)> = Vec::new();
    for (id, p) in pieces.iter().enumerate() {
        if p.kind != PieceType::Normal {
            continue;
        }
        for (split, _) in p.piece.char_indices().skip(1) {
            let (l, r) = p.piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (normal.get(l), normal.get(r)) {
                ranked.push((p.score, id, li, ri, split));
            }
        }
    }
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    ranked
        .into_iter()
        .map(|(_, id, _, _, split)| {
            let (l, r) = pieces[id].piece.split_at(split);
            (l.to_string(), r.to_string())
        })
        .collect()
}

fn replace(
    pattern: ReplacePattern,
    content: &str,
) -> std::result::Result<NormalizerWrapper, String> {
    Replace::new(pattern, content)
        .map(NormalizerWrapper::Replace)
        .map_err(|e| e.to_string())
}

/// SentencePiece's `Normalizer::Normalize` as a `tokenizers` normalizer sequence (for export:
/// `Precompiled` differs from SentencePiece on some combining-mark sequences).
fn normalizer(spec: &NormalizerSpec) -> std::result::Result<NormalizerWrapper, String> {
    let mut steps = Vec::new();
    if !spec.precompiled_charsmap.is_empty() {
        let charsmap = Precompiled::from(&spec.precompiled_charsmap)
            .map_err(|e| format!("bad precompiled_charsmap: {e}"))?;
        steps.push(NormalizerWrapper::Precompiled(charsmap));
    }
    if spec.remove_extra_whitespaces {
        // Leading spaces go before the dummy prefix; runs collapse to one space.
        steps.push(replace(ReplacePattern::Regex(r"\A +".into()), "")?);
        steps.push(replace(ReplacePattern::Regex(" {2,}".into()), " ")?);
    }
    if spec.add_dummy_prefix {
        // Prepend leaves an empty string empty, as SentencePiece does.
        steps.push(NormalizerWrapper::Prepend(Prepend::new(" ".into())));
    }
    let space = if spec.escape_whitespaces {
        steps.push(replace(ReplacePattern::String(" ".into()), SPACE_SYMBOL)?);
        SPACE_SYMBOL
    } else {
        " "
    };
    if spec.remove_extra_whitespaces {
        // SentencePiece strips trailing whitespace symbols after escaping (literal U+2581 too).
        let pattern = format!("(?:{})+\\z", regex_escape(space));
        steps.push(replace(ReplacePattern::Regex(pattern), "")?);
    }
    Ok(NormalizerWrapper::Sequence(Sequence::new(steps)))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.^$|?*+()[]{}".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// Builds the `tokenizers` equivalent of a BPE SentencePiece model, normalizer included.
///
/// The result carries `encode_special_tokens = true`, which `tokenizer.json` does not store:
/// a tokenizer saved from it and reloaded matches special-token strings in text again.
pub fn build_hf_tokenizer(
    model: &SentencePieceModel,
    path: &Path,
) -> Result<tokenizers::Tokenizer> {
    check_supported(model, path)?;
    let ids = special_ids(model, path)?;
    let build_err = |what: &str, e: String| Error::SentencePieceModel {
        path: path.to_path_buf(),
        message: format!("building the equivalent tokenizer ({what}): {e}"),
    };
    let vocab: tokenizers::models::bpe::Vocab = model
        .pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.piece.clone(), i as u32))
        .collect();
    let merges = merges_from_scores(&model.pieces);
    let unk = model.pieces[ids.unk as usize].piece.clone();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(model.trainer_spec.byte_fallback)
        .build()
        .map_err(|e| build_err("BPE", e.to_string()))?;

    let mut tok = tokenizers::Tokenizer::new(bpe);
    let norm = normalizer(&model.normalizer_spec).map_err(|e| build_err("normalizer", e))?;
    tok.with_normalizer(Some(norm))
        .map_err(|e| build_err("normalizer", e.to_string()))?;

    let mut decoders = Vec::new();
    if model.normalizer_spec.escape_whitespaces {
        let r = tokenizers::decoders::DecoderWrapper::Replace(
            Replace::new(SPACE_SYMBOL, " ").map_err(|e| build_err("decoder", e.to_string()))?,
        );
        decoders.push(r);
    }
    if model.trainer_spec.byte_fallback {
        decoders.push(DecoderWrapper::ByteFallback(ByteFallback::new()));
    }
    decoders.push(DecoderWrapper::Fuse(Fuse::new()));
    if model.normalizer_spec.add_dummy_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tok.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(
        decoders,
    ))));

    // CONTROL and UNKNOWN pieces as special tokens (skippable when decoding), never matched in
    // text: SentencePiece encodes a literal "</s>" as characters.
    let specials: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| matches!(p.kind, PieceType::Control | PieceType::Unknown))
        .map(|p| AddedToken::from(p.piece.clone(), true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| build_err("special tokens", e.to_string()))?;
    tok.set_encode_special_tokens(true);

    let bos = model.pieces[ids.bos as usize].piece.clone();
    let template = TemplateProcessing::builder()
        .try_single(format!("{bos} $A"))
        .and_then(|b| b.try_pair(format!("{bos} $A {bos}:1 $B:1")))
        .map_err(|e| build_err("post-processor", e))?
        .special_tokens(vec![(bos, ids.bos)])
        .build()
        .map_err(|e| build_err("post-processor", e.to_string()))?;
    tok.with_post_processor(Some(template));
    Ok(tok)
}

/// A SentencePiece BPE `tokenizer.model` (LLaMA-2's) behind [`TextTokenizer`], giving the same
/// ids as the `sentencepiece` library.
pub struct SentencePieceTokenizer {
    model: SentencePieceModel,
    /// The full `tokenizers` equivalent (what `tokenizer.json` gets).
    inner: tokenizers::Tokenizer,
    /// `inner` without its normalizer: runs on [`SpNormalizer`] output.
    encoder: tokenizers::Tokenizer,
    normalizer: SpNormalizer,
    path: PathBuf,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl SentencePieceTokenizer {
    /// Reads `tokenizer.model`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let model = SentencePieceModel::from_file(path)?;
        Self::from_model(model, path)
    }

    /// Builds from a decoded model; `path` names it in errors.
    pub fn from_model(model: SentencePieceModel, path: &Path) -> Result<Self> {
        let inner = build_hf_tokenizer(&model, path)?;
        let ids = special_ids(&model, path)?;
        let normalizer = SpNormalizer::new(&model.normalizer_spec, path)?;
        let mut encoder = inner.clone();
        encoder
            .with_normalizer(None::<NormalizerWrapper>)
            .map_err(|e| Error::SentencePieceModel {
                path: path.to_path_buf(),
                message: format!("building the encoder: {e}"),
            })?;
        Ok(SentencePieceTokenizer {
            model,
            inner,
            encoder,
            normalizer,
            path: path.to_path_buf(),
            bos: ids.bos,
            eos: ids.eos,
            pad: ids.pad,
        })
    }

    /// The decoded protobuf.
    pub fn model(&self) -> &SentencePieceModel {
        &self.model
    }

    /// The equivalent `tokenizers` tokenizer (its post-processor adds BOS).
    pub fn hf_tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Ids of `text` with BOS in front, as `sentencepiece`'s `encode(text, add_bos=True)`.
    pub fn encode_with_bos(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_inner(text, true)
    }

    /// Writes the equivalent `tokenizer.json` (readable by [`crate::HfTokenizer`]).
    ///
    /// `tokenizer.json` cannot store "special tokens are plain text", so a reloaded tokenizer
    /// matches literal `<s>`/`</s>` in documents as special tokens; all other ids are the same.
    pub fn save_tokenizer_json(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| Error::Tokenizer {
            context: format!("saving {} (from {})", path.display(), self.path.display()),
            message: e.to_string(),
        })
    }

    /// `text` normalized as SentencePiece does before its BPE (U+2581 for spaces, dummy prefix).
    pub fn normalize(&self, text: &str) -> String {
        self.normalizer.normalize(text)
    }

    fn encode_inner(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let normalized = self.normalizer.normalize(text);
        let enc = self
            .encoder
            .encode_fast(normalized.as_str(), add_special)
            .map_err(|e| Error::Tokenizer {
                context: format!("{}: encoding {} bytes", self.path.display(), text.len()),
                message: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }
}

impl TextTokenizer for SentencePieceTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_inner(text, false)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer {
            context: format!("{}: decoding", self.path.display()),
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
        self.model.pieces.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_are_ranked_by_merged_score() {
        let p = |s: &str, score: f32| Piece {
            piece: s.into(),
            score,
            kind: PieceType::Normal,
        };
        let pieces = vec![
            p("a", 0.0),
            p("b", 0.0),
            p("c", 0.0),
            p("bc", -1.0),
            p("ab", -2.0),
            p("abc", -3.0),
        ];
        let merges = merges_from_scores(&pieces);
        let m: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(m, vec![("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
    }
}
