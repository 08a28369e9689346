//! JSON-lines reader for `.jsonl`, `.jsonl.zst` and `.json.gz`/`.jsonl.gz`.
//!
//! Resume: a plain `.jsonl` seeks straight to the saved byte offset. Compressed streams cannot
//! seek, so they are reopened and the saved number of *decompressed* bytes is skipped without
//! parsing; that decompression is the one unavoidable re-read.

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{
    bad_record, corrupt, extract_text, OpenSpec, Position, ReadItem, Record, RecordReader,
    ShardBytes, Stride,
};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::template::Template;

const BUF_BYTES: usize = 256 * 1024;

/// Line reader over a (possibly decompressed) byte stream.
pub struct LineReader {
    path: PathBuf,
    input: Box<dyn BufRead + Send>,
    text_key: String,
    template: Option<Template>,
    stride: Stride,
    max_record_bytes: usize,
    line: u64,
    byte: u64,
    buf: Vec<u8>,
}

impl LineReader {
    /// Opens `spec.path` positioned at line `line`, decompressed byte `byte`.
    pub fn open(spec: &OpenSpec<'_>, line: u64, byte: u64) -> Result<Self> {
        let path = spec.path;
        let bytes = ShardBytes::open(path, spec.storage)?;
        let len = bytes.size(path)?;
        if len == 0 {
            return Err(corrupt(
                path,
                Position::Line { line: 0, byte: 0 },
                "empty file",
            ));
        }
        let input: Box<dyn BufRead + Send> = match spec.format {
            Format::Jsonl => Box::new(BufReader::with_capacity(
                BUF_BYTES,
                bytes.reader_at(path, byte)?,
            )),
            Format::JsonlZst => {
                let file = bytes.reader_at(path, 0)?;
                let dec = zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(path, e))?;
                skip_decompressed(
                    path,
                    Box::new(BufReader::with_capacity(BUF_BYTES, dec)),
                    line,
                    byte,
                )?
            }
            _ => {
                let file = bytes.reader_at(path, 0)?;
                let dec = flate2::read::MultiGzDecoder::new(BufReader::new(file));
                skip_decompressed(
                    path,
                    Box::new(BufReader::with_capacity(BUF_BYTES, dec)),
                    line,
                    byte,
                )?
            }
        };
        Ok(LineReader {
            path: path.to_path_buf(),
            input,
            text_key: spec.text_key.to_string(),
            template: spec.template,
            stride: spec.stride,
            max_record_bytes: spec.max_record_bytes,
            line,
            byte,
            buf: Vec::new(),
        })
    }

    /// Reads one line into `buf` (when `keep`), at most `max_record_bytes` of it.
    /// Returns the bytes consumed and whether the line was too long to keep.
    fn read_line(&mut self, keep: bool) -> io::Result<(u64, bool)> {
        self.buf.clear();
        let (mut consumed, mut too_long) = (0u64, false);
        loop {
            let avail = self.input.fill_buf()?;
            if avail.is_empty() {
                break;
            }
            let (take, done) = match memchr::memchr(b'\n', avail) {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            if keep && !too_long {
                if self.buf.len() + take > self.max_record_bytes {
                    // Keep streaming past an oversized record instead of buffering it.
                    too_long = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(&avail[..take]);
                }
            }
            self.input.consume(take);
            consumed += take as u64;
            if done {
                break;
            }
        }
        Ok((consumed, too_long))
    }
}

/// Skips `byte` decompressed bytes so a compressed stream stands where it was saved.
fn skip_decompressed(
    path: &Path,
    mut input: Box<dyn BufRead + Send>,
    line: u64,
    byte: u64,
) -> Result<Box<dyn BufRead + Send>> {
    let skipped = io::copy(&mut (&mut input).take(byte), &mut io::sink())
        .map_err(|e| corrupt(path, Position::Line { line, byte }, e))?;
    if skipped != byte {
        let msg = format!("stream ends after {skipped} bytes, before the saved offset");
        return Err(corrupt(path, Position::Line { line, byte }, msg));
    }
    Ok(input)
}

impl RecordReader for LineReader {
    fn next_item(&mut self) -> Result<Option<ReadItem>> {
        loop {
            let start = Position::Line {
                line: self.line,
                byte: self.byte,
            };
            let owned = self.stride.owns(self.line);
            let (n, too_long) = self
                .read_line(owned)
                .map_err(|e| corrupt(&self.path, start, e))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            self.byte += n;
            let end = Position::Line {
                line: self.line,
                byte: self.byte,
            };
            if !owned {
                continue;
            }
            if too_long {
                let msg = format!(
                    "record longer than max_record_bytes ({})",
                    self.max_record_bytes
                );
                return Ok(Some(ReadItem::Bad(bad_record(&self.path, start, msg))));
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are not records
            }
            let text = match self.template {
                Some(template) => template.render_record(&self.buf),
                None => {
                    extract_text(&self.buf, &self.text_key).map(|text| ((text, Vec::new()), None))
                }
            };
            return Ok(Some(match text {
                Ok(((text, hidden), rejected)) => ReadItem::Doc(Record {
                    start,
                    end,
                    text,
                    hidden,
                    rejected,
                }),
                Err(msg) => ReadItem::Bad(bad_record(&self.path, start, msg)),
            }));
        }
    }
}
