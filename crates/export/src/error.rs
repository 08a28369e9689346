//! The crate's error type: every variant names the file, option or tensor it is about.

use std::path::PathBuf;

/// Errors of exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option (or a combination of options) cannot be honoured; `key` names it.
    #[error("invalid export option `{key}`: {reason}")]
    Option { key: String, reason: String },

    /// A tensor cannot be written in the requested form (e.g. its width is not a multiple of
    /// the quantization group).
    #[error("tensor `{tensor}` {shape:?}: {reason}")]
    Tensor {
        tensor: String,
        shape: Vec<i64>,
        reason: String,
    },

    /// The model cannot be expressed in the target format.
    #[error("{format} export: {reason}")]
    Unsupported {
        format: &'static str,
        reason: String,
    },

    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The tokenizer to ship cannot be found or converted.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    /// Writing the GGUF container failed.
    #[error("GGUF {path}: {message}")]
    Gguf { path: PathBuf, message: String },

    /// The model or checkpoint underneath (verification, loading, writing weights).
    #[error(transparent)]
    Model(#[from] corenet_model::Error),

    /// The tokenizer files underneath.
    #[error(transparent)]
    Data(#[from] corenet_data::Error),

    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub(crate) fn option(key: &str, reason: impl Into<String>) -> Self {
        Error::Option {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
