//! The runner's error type: each variant becomes one line on stderr
//! (`error: ...`) and exit code 1.

use std::path::PathBuf;

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line option, or a model or training setting, that cannot
    /// work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Tokens, a prompt or a batch that do not fit the model.
    #[error("invalid input: {0}")]
    Input(String),
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
    /// The gradients became NaN or infinite.
    #[error("training diverged: the gradient norm is {norm} at step {step}; try a lower --lr")]
    Diverged {
        /// The step whose update was refused.
        step: u32,
        /// The gradient norm before clipping.
        norm: f32,
    },
    /// A checkpoint's outputs overflowed (`eval`, `generate`): finite
    /// weights too large for f32 arithmetic.
    #[error("the model's {0} are NaN or infinite: its weights overflow f32 arithmetic")]
    NotFinite(&'static str),
    /// The processes of a data-parallel run stopped agreeing (MPI gave
    /// the ranks different bits).
    #[error("data-parallel run: {0}")]
    Ranks(String),
    /// The thread pool could not start.
    #[error("cannot start {threads} threads: {reason}")]
    Threads {
        /// Threads asked for.
        threads: usize,
        /// Why the pool refused.
        reason: String,
    },
    /// A training step failed; the run as the step before it left it was
    /// saved.
    #[error("{error}; the run as step {step} left it was saved to {}", .saved.display())]
    StepFailed {
        /// Why the step failed.
        error: Box<Error>,
        /// Steps done, as saved.
        step: u32,
        /// The checkpoint folder written.
        saved: PathBuf,
    },
    /// A command for one process started on several ranks.
    #[error("`{0}` runs in one process, not on {1} ranks: start it without mpirun")]
    OneProcess(&'static str, usize),
    /// Stopped by Ctrl-C or SIGTERM (what it had made kept whole or
    /// removed): when, and what became of the work.
    #[error("interrupted {0}")]
    Interrupted(String),
    /// A model method called out of order (a bug in the caller).
    #[error("{0} called before any forward pass")]
    NoForwardPass(&'static str),
    /// A kernel refused its arguments (a bug in the runner, or a backend
    /// the CPU lacks).
    #[error("kernel error: {0}")]
    Kernel(#[from] kernels::KernelError),
}

impl Error {
    /// A checkpoint error: the directory `path`, and what is wrong with it.
    pub fn checkpoint(path: impl Into<PathBuf>, reason: impl Into<String>) -> Error {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether every rank of a data-parallel run meets this error at the
    /// same point (a caught signal; a divergence, found from a gradient
    /// norm whose bits every rank shares), so that the ranks end together
    /// rather than by one aborting the others.
    pub fn ends_every_rank(&self) -> bool {
        match self {
            Error::Interrupted(_) | Error::Diverged { .. } => true,
            Error::StepFailed { error, .. } => error.ends_every_rank(),
            _ => false,
        }
    }
}
