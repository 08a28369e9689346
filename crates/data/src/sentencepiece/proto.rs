//! `sentencepiece_model.proto` decoded by hand: varints and length-delimited fields are all a
//! `tokenizer.model` needs, so no protobuf crate.

use std::path::Path;

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
        TrainerSpec {
            model_type: ModelType::Unigram,
            vocab_size: 8000,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
        }
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
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
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
        decode_model(bytes).map_err(|e| {
            let mut message = e.message;
            if bytes.first() == Some(&b'{') {
                message.push_str(" (the file looks like JSON: a tokenizer.json?)");
            }
            Error::SentencePieceDecode {
                path: path.to_path_buf(),
                offset: e.offset,
                message,
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format.

/// A decoding failure at a byte offset of the file.
#[derive(Debug)]
struct DecodeError {
    offset: usize,
    message: String,
}

/// Cursor over one (sub)message; `base` is its offset within the file, for error positions.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

/// A field's payload.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8], usize),
    Fixed32(u32),
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn err(&self, at: usize, message: impl Into<String>) -> DecodeError {
        DecodeError {
            offset: self.base + at,
            message: message.into(),
        }
    }

    fn varint(&mut self) -> std::result::Result<u64, DecodeError> {
        let start = self.pos;
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err(start, "truncated varint"));
            };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.err(start, "varint longer than 64 bits"));
            }
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.err(start, "varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                self.err(
                    start,
                    format!(
                        "truncated {what}: needs {n} bytes, {} left",
                        self.buf.len() - start
                    ),
                )
            })?;
        self.pos = end;
        Ok(&self.buf[start..end])
    }

    /// The next `(field number, value)`, or `None` at the end of the message.
    fn field(&mut self) -> std::result::Result<Option<(u32, Value<'a>)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(self.err(at, format!("invalid field number {field}")));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8, "fixed64 field")?;
                Value::Fixed64
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len)
                    .map_err(|_| self.err(at, format!("field length {len} too large")))?;
                let offset = self.base + self.pos;
                Value::Bytes(self.take(len, "length-delimited field")?, offset)
            }
            5 => {
                let b = self.take(4, "fixed32 field")?;
                Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            w => {
                return Err(self.err(
                    at,
                    format!("unsupported wire type {w} for field {field} (not a ModelProto)"),
                ))
            }
        };
        Ok(Some((field as u32, value)))
    }
}

fn wrong_type(offset: usize, message: &str, field: u32, expected: &str) -> DecodeError {
    DecodeError {
        offset,
        message: format!("{message}.{field}: wrong wire type (expected {expected})"),
    }
}

/// Proto `int32`/enum from a varint (negative values are sign-extended to 64 bits).
fn as_i32(v: &Value, at: usize, msg: &str, field: u32) -> std::result::Result<i32, DecodeError> {
    match v {
        Value::Varint(x) => Ok(*x as i64 as i32),
        _ => Err(wrong_type(at, msg, field, "varint")),
    }
}

fn as_bool(v: &Value, at: usize, msg: &str, field: u32) -> std::result::Result<bool, DecodeError> {
    match v {
        Value::Varint(x) => Ok(*x != 0),
        _ => Err(wrong_type(at, msg, field, "varint")),
    }
}

fn as_bytes<'a>(
    v: &Value<'a>,
    at: usize,
    msg: &str,
    field: u32,
) -> std::result::Result<(&'a [u8], usize), DecodeError> {
    match v {
        Value::Bytes(b, off) => Ok((b, *off)),
        _ => Err(wrong_type(at, msg, field, "length-delimited")),
    }
}

fn as_string(
    v: &Value,
    at: usize,
    msg: &str,
    field: u32,
) -> std::result::Result<String, DecodeError> {
    let (b, off) = as_bytes(v, at, msg, field)?;
    String::from_utf8(b.to_vec()).map_err(|e| DecodeError {
        offset: off + e.utf8_error().valid_up_to(),
        message: format!("{msg}.{field}: string is not valid UTF-8"),
    })
}

fn decode_model(buf: &[u8]) -> std::result::Result<SentencePieceModel, DecodeError> {
    let mut model = SentencePieceModel::default();
    let mut r = Reader::new(buf, 0);
    loop {
        let at = r.base + r.pos;
        let Some((field, value)) = r.field()? else {
            break;
        };
        match field {
            1 => {
                let (b, off) = as_bytes(&value, at, "ModelProto", field)?;
                model.pieces.push(decode_piece(b, off)?);
            }
            2 => {
                let (b, off) = as_bytes(&value, at, "ModelProto", field)?;
                decode_trainer(b, off, &mut model.trainer_spec)?;
            }
            3 => {
                let (b, off) = as_bytes(&value, at, "ModelProto", field)?;
                decode_normalizer(b, off, &mut model.normalizer_spec)?;
            }
            _ => {}
        }
    }
    Ok(model)
}

fn decode_piece(buf: &[u8], base: usize) -> std::result::Result<Piece, DecodeError> {
    const MSG: &str = "SentencePiece";
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut r = Reader::new(buf, base);
    loop {
        let at = r.base + r.pos;
        let Some((field, value)) = r.field()? else {
            break;
        };
        match field {
            1 => piece.piece = as_string(&value, at, MSG, field)?,
            2 => match value {
                Value::Fixed32(bits) => piece.score = f32::from_bits(bits),
                _ => return Err(wrong_type(at, MSG, field, "fixed32 float")),
            },
            3 => piece.kind = PieceType::from_proto(as_i32(&value, at, MSG, field)?),
            _ => {}
        }
    }
    Ok(piece)
}

fn decode_trainer(
    buf: &[u8],
    base: usize,
    spec: &mut TrainerSpec,
) -> std::result::Result<(), DecodeError> {
    const MSG: &str = "TrainerSpec";
    let mut r = Reader::new(buf, base);
    loop {
        let at = r.base + r.pos;
        let Some((field, value)) = r.field()? else {
            break;
        };
        match field {
            3 => spec.model_type = ModelType::from_proto(as_i32(&value, at, MSG, field)?),
            4 => spec.vocab_size = as_i32(&value, at, MSG, field)?,
            24 => spec.treat_whitespace_as_suffix = as_bool(&value, at, MSG, field)?,
            35 => spec.byte_fallback = as_bool(&value, at, MSG, field)?,
            40 => spec.unk_id = as_i32(&value, at, MSG, field)?,
            41 => spec.bos_id = as_i32(&value, at, MSG, field)?,
            42 => spec.eos_id = as_i32(&value, at, MSG, field)?,
            43 => spec.pad_id = as_i32(&value, at, MSG, field)?,
            _ => {}
        }
    }
    Ok(())
}

fn decode_normalizer(
    buf: &[u8],
    base: usize,
    spec: &mut NormalizerSpec,
) -> std::result::Result<(), DecodeError> {
    const MSG: &str = "NormalizerSpec";
    let mut r = Reader::new(buf, base);
    loop {
        let at = r.base + r.pos;
        let Some((field, value)) = r.field()? else {
            break;
        };
        match field {
            1 => spec.name = as_string(&value, at, MSG, field)?,
            2 => spec.precompiled_charsmap = as_bytes(&value, at, MSG, field)?.0.to_vec(),
            3 => spec.add_dummy_prefix = as_bool(&value, at, MSG, field)?,
            4 => spec.remove_extra_whitespaces = as_bool(&value, at, MSG, field)?,
            5 => spec.escape_whitespaces = as_bool(&value, at, MSG, field)?,
            _ => {}
        }
    }
    Ok(())
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
}
