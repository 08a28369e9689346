//! The model crate's error type: every variant names what it is about (field, tensor, file).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid model config: `{field}`: {message}")]
    Config { field: String, message: String },

    #[error("unknown model preset `{name}` (known: {known})")]
    UnknownPreset { name: String, known: String },

    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },

    #[error("{path}: unexpected tensor `{name}` (not a parameter of this model)")]
    UnexpectedTensor { path: PathBuf, name: String },

    #[error("{path}: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("{path}: architecture differs from the model's: `{field}` is {folder} there, {model} in the model")]
    ArchitectureMismatch {
        path: PathBuf,
        field: String,
        folder: String,
        model: String,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a valid safetensors file: {message}")]
    SafeTensors { path: PathBuf, message: String },

    #[error("{path}: tensor `{name}` has {count} non-finite values (NaN or infinity); refusing to load it")]
    NonFinite {
        path: PathBuf,
        name: String,
        count: i64,
    },

    /// A checkpoint directory is incomplete or its manifest cannot be used.
    #[error("checkpoint {dir}: {reason}")]
    Checkpoint { dir: PathBuf, reason: String },

    /// One file of a checkpoint does not match its manifest entry.
    #[error("checkpoint {dir}: file `{file}` failed verification: {reason}")]
    CheckpointFile {
        dir: PathBuf,
        file: String,
        reason: String,
    },

    #[error("JSON {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// An output path cannot be written to (checked before anything is written).
    #[error("output {path} {reason}")]
    OutputRefused { path: PathBuf, reason: String },

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}
