//! The command line: parses the arguments and hands each command to its
//! module under `commands/`. With no command, runs the default job.

use clap::{Args, Parser, Subcommand, ValueEnum};
use kernels::{Backend, Kernels};

use crate::commands::{bench, demo, eval, generate, train};
use crate::error::Error;
use crate::logger;

/// Train and run a small GPT-2-style language model on the CPU.
///
/// With no command, trains the default model on the embedded arithmetic
/// corpus for about a minute, reporting as it goes, then checks what it
/// learned: it answers held-out sums it has never seen.
#[derive(Parser, Debug)]
#[command(name = "runner", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (from scratch, or resumed from a checkpoint).
    Train(train::TrainArgs),
    /// Print a checkpoint's loss and perplexity on a text.
    #[command(long_about = eval::HELP)]
    Eval(eval::EvalArgs),
    /// Continue a prompt with a trained model, streaming the text to stdout.
    #[command(long_about = generate::HELP)]
    Generate(generate::GenerateArgs),
    /// Time training steps per sequence length, backend and thread count
    /// (with MFU), then decoding with and without the KV cache.
    Bench(bench::BenchArgs),
}

/// Options every command that runs one model shares.
#[derive(Args, Debug, Clone)]
pub struct RunOptions {
    /// Only warnings, errors and the results.
    #[arg(short, long)]
    pub quiet: bool,
    /// Kernel backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Threads [default: all cores]. Results do not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl RunOptions {
    /// Installs the logger at the asked level and returns the kernels.
    pub fn start(&self) -> Result<Kernels, Error> {
        logger::init(self.quiet);
        self.backend.kernels()
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

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        None => demo::run(),
        Some(Command::Train(args)) => train::run(&args),
        Some(Command::Eval(args)) => eval::run(&args),
        Some(Command::Generate(args)) => generate::run(&args),
        Some(Command::Bench(args)) => bench::run(&args),
    }
}
