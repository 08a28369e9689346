//! The crate's single error type. Every variant names *where* things went wrong (a file, a
//! key path, a step) so that a message read in a log is enough to find the cause.

use std::path::PathBuf;

/// Errors from the trainer's building blocks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config value is out of range or inconsistent; `key` is the dotted key path.
    #[error("invalid config `{key}`: {reason}")]
    Config { key: String, reason: String },

    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("create", "read", "rename", ...), for the message.
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

    /// The caller's writer failed while saving the checkpoint for `step`; the partial
    /// temporary directory has been removed and older checkpoints are untouched.
    #[error("saving checkpoint for step {step} failed: {source}")]
    CheckpointWrite {
        step: u64,
        #[source]
        source: Box<Error>,
    },

    /// Another process holds the run directory's lock (two trainers would interleave its
    /// metrics and checkpoints).
    #[error("run directory {dir} is in use by {holder}; wait for it to finish, stop it, or choose another run.dir")]
    RunLocked { dir: PathBuf, holder: String },

    /// JSON could not be written or read.
    #[error("JSON {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A metrics record could not be written (e.g. an extra field shadows a fixed one).
    #[error("metrics {path} (step {step}): {reason}")]
    Metrics {
        path: PathBuf,
        step: u64,
        reason: String,
    },

    /// One line of a JSONL file is not the JSON object expected (`line` counts from 1).
    #[error("JSON {path}, line {line}: {source}")]
    JsonLine {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },

    /// A directory given as a run has no training metrics to read.
    #[error("no metrics in {dir}: {reason}")]
    NoMetrics { dir: PathBuf, reason: String },

    /// A loss-curve picture could not be drawn or written; `path` is the picture's.
    #[error("plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },

    /// A `--set path=value` argument is malformed or cannot be applied.
    #[error("override `{arg}`: {reason}")]
    Override { arg: String, reason: String },

    /// YAML text could not be parsed; `origin` names the file (or "--set").
    #[error("YAML {origin}: {reason}")]
    Yaml { origin: String, reason: String },

    /// A value tree did not fit the typed config; `path` is the dotted key path
    /// (e.g. `trainer.micro_batchh`), empty for the root.
    #[error("config key `{path}`: {message}")]
    Deserialize { path: String, message: String },

    /// The model rejected its config or a weights file.
    #[error(transparent)]
    Model(corenet_model::Error),

    /// The data pipeline failed (file, offset and key are in the message).
    #[error(transparent)]
    Data(#[from] corenet_data::Error),

    /// Validation's scoring or task files failed (the path or key is in the message).
    #[error(transparent)]
    Eval(#[from] corenet_eval::Error),

    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// Optimizer state does not fit the model (a checkpoint from another model).
    #[error("optimizer state: {0}")]
    OptimizerState(String),

    /// Too many consecutive steps had a non-finite loss or gradient; the last good state was
    /// saved at `step`.
    #[error("{count} consecutive steps had a non-finite loss or gradient norm; stopped at step {step} (last good state saved)")]
    NonFinite { count: u32, step: u64 },

    /// A collective, the rendezvous or the process-group store failed (a dead or unreachable
    /// rank, a timeout, a port in use, mismatched shapes); `op` names the operation.
    #[error("distributed {op} failed: {message}")]
    Dist { op: String, message: String },

    /// The ranks of a data-parallel run resolved different recipes (compared by hash at start).
    #[error("recipe mismatch across ranks: rank {rank} resolved recipe hash {hash}, rank 0 resolved {root_hash}; every rank must train the same recipe with the same --set overrides")]
    RecipeMismatch {
        rank: usize,
        hash: String,
        root_hash: String,
    },

    /// A launcher environment variable (RANK, WORLD_SIZE, MASTER_PORT, SLURM_PROCID, ...) is
    /// missing, garbled or inconsistent with the others.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },

    /// A kernel, device event or device query of the C++ shim failed (corenet-ffi); its
    /// distributed and rendezvous failures arrive as [`Error::Dist`] and [`Error::Env`].
    #[error(transparent)]
    Ffi(corenet_ffi::Error),

    /// The data stream ended before the step budget was spent. Sources cycle through epochs,
    /// so a stream only ends after it has reported a data error (which the trainer returned
    /// first); `step` is the optimizer step that asked for the batch.
    #[error("the data stream ended at step {step} of {steps}: a stream stops after a data error, reported before this one; fix the data and resume from the last checkpoint")]
    DataEnded { step: u64, steps: u64 },
}

impl Error {
    /// Shorthand for [`Error::Io`], so call sites read `.map_err(|e| Error::io("read", &p, e))`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl From<corenet_ffi::Error> for Error {
    /// One vocabulary for the trainer's callers: a failed collective is an [`Error::Dist`]
    /// whether the trainer or c10d noticed it, a bad rendezvous value an [`Error::Env`].
    fn from(e: corenet_ffi::Error) -> Self {
        match e {
            corenet_ffi::Error::Dist { op, message } => Error::Dist { op, message },
            corenet_ffi::Error::Rendezvous { var, message } => Error::Env { var, message },
            other => Error::Ffi(other),
        }
    }
}

impl From<corenet_model::Error> for Error {
    /// Checkpoint verification lives in corenet-model (every loader checks the same way); its
    /// checkpoint and JSON failures keep the trainer's variants so callers match one vocabulary.
    fn from(e: corenet_model::Error) -> Self {
        use corenet_model::Error as M;
        match e {
            M::Checkpoint { dir, reason } => Error::Checkpoint { dir, reason },
            M::CheckpointFile { dir, file, reason } => Error::CheckpointFile { dir, file, reason },
            M::Json { path, source } => Error::Json { path, source },
            other => Error::Model(other),
        }
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
