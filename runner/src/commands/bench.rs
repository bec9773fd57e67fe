//! `runner bench`: training and decoding speed per sequence length,
//! backend and thread count.

use std::path::PathBuf;

use clap::Args;
use kernels::Backend;

use super::options::{BackendChoice, Verbosity};
use crate::bench::{self, BenchSettings};
use crate::error::Error;
use crate::model::{Precision, Preset};
use crate::threads::Threads;

/// The sequence lengths timed unless `--seq-lens` is given: short,
/// medium and the `small` preset's block (a smaller block cuts them).
const DEFAULT_SEQ_LENS: [usize; 3] = [16, 64, 128];

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model size.
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    pub preset: Preset,
    /// Sequence lengths to train at (each at most the block size)
    /// [default: 16,64,128, each cut to the preset's block size].
    #[arg(long, value_delimiter = ',')]
    pub seq_lens: Vec<usize>,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Timed steps per combination (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Kernel backends [default: every one this CPU supports].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub backends: Vec<BackendChoice>,
    /// Precisions of the matrix products, side by side (f32, bf16).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "f32")]
    pub precisions: Vec<Precision>,
    /// Thread counts [default: 1 and all cores].
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Write one JSON object per benchmark row to FILE (see README).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Time training only (decoding runs to the block size, minutes for
    /// the GPT-2 sizes).
    #[arg(long)]
    pub no_decoding: bool,
    /// Train with `--recompute` (see `runner train --help`).
    #[arg(long)]
    pub recompute: bool,
    #[command(flatten)]
    pub verbosity: Verbosity,
}

/// `list` without repeats, in its order: a value given twice is timed
/// once.
fn first_of_each<T: PartialEq + Copy>(list: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(list.len());
    for &x in list {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

pub fn run(args: &BenchArgs) -> Result<(), Error> {
    args.verbosity.init();
    let backends = if args.backends.is_empty() {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_supported())
            .collect()
    } else {
        args.backends
            .iter()
            .map(|b| b.kernels().map(|k| k.backend()))
            .collect::<Result<Vec<_>, _>>()?
    };
    let threads = if args.threads.is_empty() {
        vec![1, Threads::default_count()]
    } else {
        args.threads.clone()
    };
    let config = args.preset.config(args.preset.default_tokenizer());
    let seq_lens = if args.seq_lens.is_empty() {
        DEFAULT_SEQ_LENS.map(|t| t.min(config.block_size)).to_vec()
    } else {
        args.seq_lens.clone()
    };
    let settings = BenchSettings {
        config,
        seq_lens: first_of_each(&seq_lens),
        batch: args.batch,
        steps: args.steps,
        backends: first_of_each(&backends),
        precisions: first_of_each(&args.precisions),
        threads: first_of_each(&threads),
        json: args.json.clone(),
        decoding: !args.no_decoding,
        recompute: args.recompute,
    };
    bench::run(&settings)?;
    Ok(())
}
