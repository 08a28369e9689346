//! The crate's error type: every failure that crosses the C++ boundary comes back as a message
//! naming the operation, never as a crash.

use std::path::PathBuf;

/// Errors of the shim's entry points and of the safe wrappers around them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A collective, the rendezvous or the process-group store failed (a dead or unreachable
    /// rank, a timeout, a port in use, mismatched shapes); `op` names the operation.
    #[error("distributed {op} failed: {message}")]
    Dist { op: String, message: String },

    /// A rendezvous setting cannot be passed to c10d (a NUL byte in the address, a rank that
    /// does not fit its world); `var` names the launcher variable it came from.
    #[error("environment variable {var}: {message}")]
    Rendezvous { var: String, message: String },

    /// A multi-tensor kernel (`_fused_adamw_`, `_foreach_norm`), a device event or a device
    /// query of the shim failed.
    #[error("{op}: {message}")]
    Kernel { op: String, message: String },

    /// A file could not be opened or mapped.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A libtorch operation called through tch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn kernel_err(op: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Kernel {
        op: op.into(),
        message: message.into(),
    }
}
