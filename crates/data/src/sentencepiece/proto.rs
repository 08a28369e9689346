//! `sentencepiece_model.proto` decoded with `prost` from hand-written message structs: only the
//! fields the encoder reads are declared, so everything else in a `tokenizer.model` (and any
//! field a later SentencePiece adds) is skipped as unknown, and no protoc or build script is
//! needed.

use std::path::Path;

use prost::Message as _;

use crate::error::{Error, Result};

/// `SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
    /// A value this reader does not know.
    Other(i32),
}

impl PieceType {
    fn from_proto(v: i32) -> Self {
        match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            other => PieceType::Other(other),
        }
    }
}

/// `TrainerSpec.ModelType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
    Word,
    Char,
    Other(i32),
}

impl ModelType {
    fn from_proto(v: i32) -> Self {
        match v {
            1 => ModelType::Unigram,
            2 => ModelType::Bpe,
            3 => ModelType::Word,
            4 => ModelType::Char,
            other => ModelType::Other(other),
        }
    }
}

/// One vocabulary entry; its id is its position in [`SentencePieceModel::pieces`].
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The `TrainerSpec` fields the encoder needs (ids are `-1` when disabled).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    pub model_type: ModelType,
    pub vocab_size: i32,
    pub byte_fallback: bool,
    pub treat_whitespace_as_suffix: bool,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
}

impl Default for TrainerSpec {
    /// The proto2 defaults of `sentencepiece_model.proto`.
    fn default() -> Self {
        // One copy of the defaults: the `default = ...` attributes of the wire struct.
        Self::from(&wire::TrainerSpec::default())
    }
}

/// The `NormalizerSpec` fields the encoder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    /// Rule name (`identity` for LLaMA-2, `nmt_nfkc` by default); informational only, the
    /// charsmap below is what is applied.
    pub name: String,
    /// Compiled normalization rules; empty for `identity`.
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    /// The proto2 defaults of `sentencepiece_model.proto`.
    fn default() -> Self {
        Self::from(wire::NormalizerSpec::default())
    }
}

/// A decoded `ModelProto` (the fields corenet-data uses).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SentencePieceModel {
    pub pieces: Vec<Piece>,
    pub trainer_spec: TrainerSpec,
    pub normalizer_spec: NormalizerSpec,
}

impl SentencePieceModel {
    /// Reads and decodes a `tokenizer.model` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// Decodes `ModelProto` bytes; `path` only names the origin in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        // Decoding through a cursor we own (rather than `decode(bytes)`) leaves it where prost
        // stopped, which is the only position a failure comes with.
        let mut rest = bytes;
        let mut proto = wire::ModelProto::default();
        match proto.merge(&mut rest) {
            Ok(()) => Ok(proto.into()),
            Err(e) => {
                let mut message = describe(&e, rest.is_empty());
                if bytes.first() == Some(&b'{') {
                    message.push_str(" (the file looks like JSON: a tokenizer.json?)");
                }
                Err(Error::SentencePieceDecode {
                    path: path.to_path_buf(),
                    offset: bytes.len() - rest.len(),
                    message,
                })
            }
        }
    }
}

/// Turns a prost failure into this crate's message, saying "truncated" when the input ran out.
///
/// prost exposes no error kind, only its `Display` ("failed to decode Protobuf message:
/// ModelProto.pieces: SentencePiece.piece: buffer underflow"), so the kind is read from that
/// text; the truncation tests pin it. prost raises "buffer underflow" only when a length or a
/// fixed-size value runs past the end of the whole input, and "invalid varint" with nothing left
/// means the input ended inside a varint: that is what a cut-off download looks like, but also
/// what garbage does once prost has skipped it as unknown fields or groups, hence the hedge.
fn describe(e: &prost::DecodeError, at_end: bool) -> String {
    let full = e.to_string();
    let detail = full
        .strip_prefix("failed to decode Protobuf message: ")
        .unwrap_or(&full);
    if detail.ends_with("buffer underflow") {
        format!("truncated (or not a ModelProto): a field runs past the end of the file ({detail})")
    } else if at_end && detail.ends_with("invalid varint") {
        format!("truncated (or not a ModelProto): the file ends inside a varint ({detail})")
    } else {
        format!("{detail} (not a ModelProto)")
    }
}

/// The wire messages, declared by hand with the field numbers and proto2 defaults of
/// `sentencepiece_model.proto` (see the table in the module docs of `sentencepiece`).
///
/// Scalars are `optional` with prost's `default`, so the generated getters give proto2's
/// answer for an absent field. Enums are declared `int32`, their wire encoding, so a value this
/// reader does not know survives as `Other(n)` instead of being folded into the default.
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<SentencePiece>,
        #[prost(message, optional, tag = "2")]
        pub trainer_spec: Option<TrainerSpec>,
        #[prost(message, optional, tag = "3")]
        pub normalizer_spec: Option<NormalizerSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SentencePiece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        /// `Type`, default NORMAL.
        #[prost(int32, optional, tag = "3", default = "1")]
        pub r#type: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrainerSpec {
        /// `ModelType`, default UNIGRAM.
        #[prost(int32, optional, tag = "3", default = "1")]
        pub model_type: Option<i32>,
        #[prost(int32, optional, tag = "4", default = "8000")]
        pub vocab_size: Option<i32>,
        #[prost(bool, optional, tag = "24", default = "false")]
        pub treat_whitespace_as_suffix: Option<bool>,
        #[prost(bool, optional, tag = "35", default = "false")]
        pub byte_fallback: Option<bool>,
        #[prost(int32, optional, tag = "40", default = "0")]
        pub unk_id: Option<i32>,
        #[prost(int32, optional, tag = "41", default = "1")]
        pub bos_id: Option<i32>,
        #[prost(int32, optional, tag = "42", default = "2")]
        pub eos_id: Option<i32>,
        #[prost(int32, optional, tag = "43", default = "-1")]
        pub pad_id: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NormalizerSpec {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub precompiled_charsmap: Option<Vec<u8>>,
        #[prost(bool, optional, tag = "3", default = "true")]
        pub add_dummy_prefix: Option<bool>,
        #[prost(bool, optional, tag = "4", default = "true")]
        pub remove_extra_whitespaces: Option<bool>,
        #[prost(bool, optional, tag = "5", default = "true")]
        pub escape_whitespaces: Option<bool>,
    }
}

impl From<wire::ModelProto> for SentencePieceModel {
    fn from(m: wire::ModelProto) -> Self {
        SentencePieceModel {
            pieces: m.pieces.into_iter().map(Piece::from).collect(),
            trainer_spec: m
                .trainer_spec
                .as_ref()
                .map(TrainerSpec::from)
                .unwrap_or_default(),
            normalizer_spec: m
                .normalizer_spec
                .map(NormalizerSpec::from)
                .unwrap_or_default(),
        }
    }
}

impl From<wire::SentencePiece> for Piece {
    fn from(p: wire::SentencePiece) -> Self {
        Piece {
            kind: PieceType::from_proto(p.r#type()),
            score: p.score(),
            piece: p.piece.unwrap_or_default(),
        }
    }
}

impl From<&wire::TrainerSpec> for TrainerSpec {
    fn from(t: &wire::TrainerSpec) -> Self {
        TrainerSpec {
            model_type: ModelType::from_proto(t.model_type()),
            vocab_size: t.vocab_size(),
            byte_fallback: t.byte_fallback(),
            treat_whitespace_as_suffix: t.treat_whitespace_as_suffix(),
            unk_id: t.unk_id(),
            bos_id: t.bos_id(),
            eos_id: t.eos_id(),
            pad_id: t.pad_id(),
        }
    }
}

impl From<wire::NormalizerSpec> for NormalizerSpec {
    fn from(n: wire::NormalizerSpec) -> Self {
        NormalizerSpec {
            add_dummy_prefix: n.add_dummy_prefix(),
            remove_extra_whitespaces: n.remove_extra_whitespaces(),
            escape_whitespaces: n.escape_whitespaces(),
            name: n.name.unwrap_or_default(),
            precompiled_charsmap: n.precompiled_charsmap.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field_bytes(field: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(field) << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn field_varint(field: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(field) << 3, out);
        varint(v, out);
    }

    fn piece(s: &str, score: f32, kind: i32) -> Vec<u8> {
        let mut p = Vec::new();
        field_bytes(1, s.as_bytes(), &mut p);
        p.push(2 << 3 | 5);
        p.extend_from_slice(&score.to_le_bytes());
        field_varint(3, kind as u64, &mut p);
        p
    }

    #[test]
    fn decodes_fields_defaults_and_negative_ints() {
        let mut buf = Vec::new();
        field_bytes(1, &piece("<unk>", 0.0, 2), &mut buf);
        field_bytes(1, &piece("▁a", -1.5, 1), &mut buf);
        let mut trainer = Vec::new();
        field_varint(3, 2, &mut trainer);
        field_varint(43, (-1i64) as u64, &mut trainer);
        field_varint(99, 7, &mut trainer); // unknown: skipped
        field_bytes(2, &trainer, &mut buf);
        let mut norm = Vec::new();
        field_varint(3, 0, &mut norm);
        field_bytes(3, &norm, &mut buf);
        let m = SentencePieceModel::from_bytes(&buf, Path::new("x.model")).expect("decodes");
        assert_eq!(m.pieces.len(), 2);
        assert_eq!(m.pieces[1].piece, "▁a");
        assert_eq!(m.pieces[1].score, -1.5);
        assert_eq!(m.pieces[0].kind, PieceType::Unknown);
        assert_eq!(m.trainer_spec.model_type, ModelType::Bpe);
        assert_eq!(m.trainer_spec.pad_id, -1);
        assert_eq!(m.trainer_spec.bos_id, 1);
        assert!(!m.normalizer_spec.add_dummy_prefix);
        assert!(m.normalizer_spec.remove_extra_whitespaces);

        let err = SentencePieceModel::from_bytes(&buf[..buf.len() - 2], Path::new("x.model"))
            .expect_err("truncated");
        assert!(err.to_string().contains("x.model"), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn absent_fields_take_the_proto2_defaults() {
        // An empty file is a valid ModelProto with every field absent.
        let m = SentencePieceModel::from_bytes(b"", Path::new("x.model")).expect("decodes");
        assert!(m.pieces.is_empty());
        let t = &m.trainer_spec;
        assert_eq!(t.model_type, ModelType::Unigram);
        assert_eq!(t.vocab_size, 8000);
        assert!(!t.byte_fallback && !t.treat_whitespace_as_suffix);
        assert_eq!((t.unk_id, t.bos_id, t.eos_id, t.pad_id), (0, 1, 2, -1));
        let n = &m.normalizer_spec;
        assert!(n.name.is_empty() && n.precompiled_charsmap.is_empty());
        assert!(n.add_dummy_prefix && n.remove_extra_whitespaces && n.escape_whitespaces);
        assert_eq!(*t, TrainerSpec::default());
        assert_eq!(*n, NormalizerSpec::default());

        // Present but empty sub-messages, and a piece with no fields.
        let mut buf = Vec::new();
        field_bytes(1, &[], &mut buf);
        field_bytes(2, &[], &mut buf);
        field_bytes(3, &[], &mut buf);
        let m = SentencePieceModel::from_bytes(&buf, Path::new("x.model")).expect("decodes");
        assert_eq!(
            m.pieces,
            [Piece {
                piece: String::new(),
                score: 0.0,
                kind: PieceType::Normal
            }]
        );
        assert_eq!(m.trainer_spec, TrainerSpec::default());
        assert_eq!(m.normalizer_spec, NormalizerSpec::default());
    }

    #[test]
    fn unknown_enum_values_are_kept() {
        let mut buf = Vec::new();
        field_bytes(1, &piece("x", 0.0, 9), &mut buf);
        let mut trainer = Vec::new();
        field_varint(3, 7, &mut trainer);
        field_bytes(2, &trainer, &mut buf);
        let m = SentencePieceModel::from_bytes(&buf, Path::new("x.model")).expect("decodes");
        assert_eq!(m.pieces[0].kind, PieceType::Other(9));
        assert_eq!(m.trainer_spec.model_type, ModelType::Other(7));
    }

    #[test]
    fn errors_name_the_file_position_and_cause() {
        // Cut inside the two-byte length varint of a 200-byte piece.
        let mut buf = Vec::new();
        field_bytes(1, &piece(&"a".repeat(200), 0.0, 1), &mut buf);
        let err = SentencePieceModel::from_bytes(&buf[..2], Path::new("cut.model"))
            .expect_err("truncated varint");
        let msg = err.to_string();
        assert!(
            msg.contains("cut.model") && msg.contains("truncated"),
            "{msg}"
        );
        assert!(msg.contains("varint"), "{msg}");

        // A piece string that is not UTF-8 is corrupt, not truncated.
        let mut p = Vec::new();
        field_bytes(1, &[0xff, 0xfe], &mut p);
        let mut buf = Vec::new();
        field_bytes(1, &p, &mut buf);
        let err =
            SentencePieceModel::from_bytes(&buf, Path::new("bad.model")).expect_err("bad utf-8");
        let msg = err.to_string();
        assert!(msg.contains("bad.model") && msg.contains("UTF-8"), "{msg}");
        assert!(!msg.contains("truncated"), "{msg}");
        assert!(matches!(err, Error::SentencePieceDecode { .. }));
    }
}
