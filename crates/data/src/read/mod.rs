//! Streaming record readers. A reader yields the text of one record at a time together with
//! its position, so a stream can stop anywhere and reopen a file exactly there.

mod json_key;
mod lines;
mod parquet;
mod shard_bytes;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::json_key::extract_text;
pub use self::shard_bytes::ShardBytes;
use crate::error::{Error, Result};
use crate::format::Format;
use crate::template::Template;

/// Where a record starts inside a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// Line-based formats: line index and byte offset of the (decompressed) stream.
    Line { line: u64, byte: u64 },
    /// Parquet: row group and row inside it.
    Row { row_group: u64, row: u64 },
}

impl Position {
    /// The beginning of a file of this format.
    pub fn start(format: Format) -> Position {
        match format {
            Format::Parquet => Position::Row {
                row_group: 0,
                row: 0,
            },
            _ => Position::Line { line: 0, byte: 0 },
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line { line, byte } => write!(f, "line {} (byte {byte})", line + 1),
            Position::Row { row_group, row } => write!(f, "row group {row_group} row {row}"),
        }
    }
}

/// Which records of a file belong to this reader: unit `i` (line, or row / row group for
/// parquet) is ours when `i % count == index`. `{0, 1}` takes everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stride {
    pub index: usize,
    pub count: usize,
}

impl Stride {
    /// Every record.
    pub const ALL: Stride = Stride { index: 0, count: 1 };

    fn owns(self, unit: u64) -> bool {
        unit % self.count as u64 == self.index as u64
    }
}

/// One document read from a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Where the record starts (reopening here re-reads it).
    pub start: Position,
    /// Where the next record starts.
    pub end: Position,
    pub text: String,
    /// Byte ranges of `text` that a template rendered as prompt, not response (none for plain
    /// text).
    pub hidden: Vec<std::ops::Range<usize>>,
    /// A preference pair's rejected answer, rendered as `text` (the chosen one) is.
    pub rejected: Option<crate::template::Rendered>,
}

/// What a reader produces next.
#[derive(Debug)]
pub enum ReadItem {
    Doc(Record),
    /// A record that could not be used; reading can go on after it.
    Bad(Error),
}

/// A streaming reader over one shard.
pub trait RecordReader: Send {
    /// The next owned record, `Ok(None)` at the end, `Err` when the rest of the file is
    /// unreadable (truncated stream, corrupt footer).
    fn next_item(&mut self) -> Result<Option<ReadItem>>;
}

/// How to open one shard.
#[derive(Debug, Clone)]
pub struct OpenSpec<'a> {
    pub path: &'a Path,
    pub format: Format,
    pub text_key: &'a str,
    /// Renders each record instead of reading `text_key` (JSON lines only).
    pub template: Option<Template>,
    pub stride: Stride,
    pub max_record_bytes: usize,
    /// How a URL path is reached.
    pub storage: &'a crate::remote::StorageConfig,
}

/// Opens a shard positioned at `at` (the start of a record previously returned).
pub fn open(spec: &OpenSpec<'_>, at: Position) -> Result<Box<dyn RecordReader>> {
    match (spec.format, at) {
        (Format::Parquet, Position::Row { row_group, row }) => Ok(Box::new(
            parquet::ParquetReader::open(spec, row_group, row)?,
        )),
        (f, Position::Line { line, byte }) if f.is_lines() => {
            Ok(Box::new(lines::LineReader::open(spec, line, byte)?))
        }
        _ => Err(Error::StateMismatch(format!(
            "{}: position {at} does not fit format {:?}",
            spec.path.display(),
            spec.format
        ))),
    }
}

pub(crate) fn corrupt(
    path: &Path,
    position: impl fmt::Display,
    message: impl fmt::Display,
) -> Error {
    Error::CorruptFile {
        path: PathBuf::from(path),
        position: position.to_string(),
        message: message.to_string(),
    }
}

pub(crate) fn bad_record(
    path: &Path,
    position: impl fmt::Display,
    message: impl fmt::Display,
) -> Error {
    Error::BadRecord {
        path: PathBuf::from(path),
        position: position.to_string(),
        message: message.to_string(),
    }
}
