//! The runner's error type: each variant becomes one line on stderr and a
//! non-zero exit.

use std::path::PathBuf;

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model or training setting that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The training or evaluation text is unusable.
    #[error("{path}: {reason}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A checkpoint is missing, corrupt or does not match.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A kernel refused its arguments (a bug in the runner, or a backend
    /// the CPU lacks).
    #[error("kernel error: {0}")]
    Kernel(#[from] kernels::KernelError),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
