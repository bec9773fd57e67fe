//! The options several commands share, flattened into each one's
//! arguments.

use std::path::Path;

use clap::{Args, ValueEnum};
use kernels::{Backend, Kernels};

use crate::checkpoint;
use crate::error::Error;
use crate::logger;
use crate::model::{Gpt, Precision};
use crate::threads::Threads;

/// How much every command logs.
#[derive(Args, Debug, Clone)]
pub struct Verbosity {
    /// Only warnings, errors and the results (text, tables).
    #[arg(short, long)]
    pub quiet: bool,
}

impl Verbosity {
    /// Installs the logger at this level.
    pub fn init(&self) {
        logger::init(self.quiet);
    }
}

/// Options every command that runs one model shares.
#[derive(Args, Debug, Clone)]
pub struct RunOptions {
    #[command(flatten)]
    pub verbosity: Verbosity,
    /// Kernel backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Threads [default: all cores]. Results do not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Element type of the matrix products: f32, or bf16 (operands rounded
    /// to bf16, f32 sums; everything else stays f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl RunOptions {
    /// Installs the logger at the asked level and returns the kernels.
    pub fn start(&self) -> Result<Kernels, Error> {
        self.verbosity.init();
        self.backend.kernels()
    }

    /// The checkpoint in `dir` on `kernels`, running on these threads in
    /// this precision.
    pub fn load_model(&self, dir: &Path, kernels: Kernels) -> Result<Gpt, Error> {
        let threads = Threads::new(self.threads)?;
        let mut model = checkpoint::load_model(dir, kernels)?;
        model.set_threads(threads);
        model.set_precision(self.precision);
        Ok(model)
    }
}

/// Which kernels to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The fastest this CPU supports.
    Auto,
    /// The portable reference (the naive baseline).
    Scalar,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512F.
    Avx512,
}

impl BackendChoice {
    /// The kernels handle, or an error if the CPU lacks the backend.
    pub fn kernels(self) -> Result<Kernels, Error> {
        let backend = match self {
            BackendChoice::Auto => return Ok(Kernels::best()),
            BackendChoice::Scalar => Backend::Scalar,
            BackendChoice::Avx2 => Backend::Avx2,
            BackendChoice::Avx512 => Backend::Avx512,
        };
        Ok(Kernels::new(backend)?)
    }
}
