//! The crate's single error type. Every variant names where the problem is (file, position,
//! source or key) so a bad shard identifies itself instead of crashing a rank.

use std::path::PathBuf;

/// Result alias used throughout corenet-data.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while configuring or streaming data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid.
    #[error("invalid data config: {0}")]
    Config(String),

    /// A glob pattern is malformed.
    #[error("source `{source_name}`: bad glob pattern `{pattern}`: {message}")]
    Glob {
        source_name: String,
        pattern: String,
        message: String,
    },

    /// A source's patterns matched no file.
    #[error("source `{source_name}`: no file matches {patterns:?}")]
    NoFiles {
        source_name: String,
        patterns: Vec<String>,
    },

    /// The format cannot be inferred from a path's extension.
    #[error("{path}: unknown shard format (expected .parquet, .jsonl, .jsonl.zst, .json.gz or .jsonl.gz)")]
    UnknownFormat { path: PathBuf },

    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A stream or file is damaged (truncated compression, corrupt parquet) at a position.
    #[error("{path} at {position}: corrupt shard: {message}")]
    CorruptFile {
        path: PathBuf,
        position: String,
        message: String,
    },

    /// One record is unusable: not JSON, invalid UTF-8, missing or non-string text key.
    #[error("{path} at {position}: bad record: {message}")]
    BadRecord {
        path: PathBuf,
        position: String,
        message: String,
    },

    /// A source yielded nothing usable for a whole epoch on this rank/worker.
    #[error("source `{source_name}` has no usable documents for rank {rank} worker {worker} (epoch {epoch})")]
    SourceExhausted {
        source_name: String,
        rank: usize,
        worker: usize,
        epoch: u64,
    },

    /// The tokenizer could not be loaded, trained or run.
    #[error("tokenizer {context}: {message}")]
    Tokenizer { context: String, message: String },

    /// A saved stream state does not fit this stream's layout.
    #[error("stream state does not match this stream: {0}")]
    StateMismatch(String),

    /// A resumed stream's shard files differ from those its saved state recorded.
    #[error("the shard files differ from those the saved stream state read: {change}")]
    DataChanged {
        change: crate::shard_list::DataChange,
    },

    /// Writing sample shards failed.
    #[error("{path}: cannot write shard: {message}")]
    Write { path: PathBuf, message: String },

    /// A worker thread stopped without reporting why (it panicked).
    #[error("data worker {worker} stopped unexpectedly")]
    WorkerGone { worker: usize },

    /// An object store refused or failed a request (after retries, for transient failures).
    /// The URL never carries a query string, so no presigned secret reaches a log.
    #[error("{url}: {message}")]
    Remote {
        url: String,
        message: String,
        failure: RemoteFailure,
    },

    /// A SentencePiece `tokenizer.model` is not a decodable `ModelProto` (truncated, not one).
    #[error("{path} at byte {offset}: not a valid SentencePiece model: {message}")]
    SentencePieceDecode {
        path: PathBuf,
        offset: usize,
        message: String,
    },

    /// A SentencePiece model decodes but cannot be used (UNIGRAM, missing unk, bad special ids).
    #[error("{path}: SentencePiece model: {message}")]
    SentencePieceModel { path: PathBuf, message: String },
}

impl Error {
    /// Wraps an I/O error with the file it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True for errors that only spoil one record or one file, which non-strict mode skips.
    pub fn is_skippable(&self) -> bool {
        matches!(
            self,
            Error::BadRecord { .. }
                | Error::CorruptFile { .. }
                | Error::Io { .. }
                | Error::Remote {
                    failure: RemoteFailure::Unreachable | RemoteFailure::NotFound,
                    ..
                }
        )
    }
}

/// Why an object-store request failed, which decides whether its shard can be skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteFailure {
    /// Kept failing transiently (connection refused, timeouts, 5xx) for `retry_seconds`.
    Unreachable,
    /// No such object or bucket.
    NotFound,
    /// Missing or refused credentials.
    Denied,
    /// The object changed while the run read it (its ETag no longer matches).
    Changed,
    /// A URL or setting the store cannot use, or an answer that is not a shard.
    Config,
}
