//! The crate's error type: every variant says where (a file and line, an option, a tensor).

use std::path::PathBuf;

/// Errors of evaluation: task files, options, the model and tokenizer underneath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is out of range or does not fit the model; `key` names it.
    #[error("invalid config `{key}`: {reason}")]
    Config { key: String, reason: String },

    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A line of an evaluation task file is not a JSON object (`line` counts from 1).
    #[error("{path} line {line}: {message}")]
    EvalLine {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// An item of a JSON-array task file is malformed (`index` counts from 0, as the array).
    #[error("{path} item {index}: {message}")]
    EvalItem {
        path: PathBuf,
        index: usize,
        message: String,
    },

    /// A task file holds no items (blank lines only, or nothing).
    #[error("{path}: the task file has no items to score")]
    EmptyTask { path: PathBuf },

    /// A field of an evaluation task item is missing or malformed (`line` counts from 1).
    #[error("{path} line {line}: field `{field}`: {message}")]
    EvalField {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },

    /// The model rejected its input or weights.
    #[error(transparent)]
    Model(#[from] corenet_model::Error),

    /// A shard or the tokenizer failed (file, offset and key are in the message).
    #[error(transparent)]
    Data(#[from] corenet_data::Error),

    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
