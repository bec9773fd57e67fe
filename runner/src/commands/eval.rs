//! `runner eval`: a checkpoint's loss and perplexity on a text.

use std::path::PathBuf;

use clap::Args;
use log::info;

use super::options::RunOptions;
use crate::data;
use crate::error::Error;
use crate::eval::evaluate;
use crate::logger::print_stdout;
use crate::train::{check_memory, precision_note};

pub const HELP: &str = "Print a checkpoint's loss and perplexity on a text.

The loss is the mean next-token cross-entropy (nats per byte) over
consecutive non-overlapping windows of block-size + 1 tokens taken with
stride block-size from the start of the file (a final partial window is
included if it has at least 2 tokens); each window predicts its tokens 1..
from 0... Perplexity is e^loss. Any other implementation can reproduce it.";

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Checkpoint directory (from `runner train --save`).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Text to evaluate on [default: the embedded arithmetic corpus].
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[command(flatten)]
    pub run: RunOptions,
}

pub fn run(args: &EvalArgs) -> Result<(), Error> {
    let kernels = args.run.start()?;
    let tokens = data::tokens_of(args.data.as_deref())?;
    if tokens.len() < 2 {
        return Err(Error::Data {
            path: args.data.clone().unwrap_or_default(),
            reason: "evaluation needs at least 2 bytes".into(),
        });
    }
    let mut model = args.run.load_model(&args.checkpoint, kernels)?;
    let cfg = model.config;
    // Groups are never larger than the number of windows.
    let windows = tokens.len().div_ceil(cfg.block_size);
    check_memory(&cfg, args.batch.min(windows))?;
    info!(
        "Evaluating {cfg} on {} tokens with the {} backend{}",
        tokens.len(),
        kernels.backend(),
        precision_note(model.precision(), kernels)
    );
    let eval = evaluate(&mut model, &tokens, args.batch, None)?;
    eval.log_breakdown(cfg.block_size);
    print_stdout(&format!(
        "loss {:.6} perplexity {:.4} tokens {}\n",
        eval.loss,
        eval.perplexity(),
        eval.tokens
    ));
    Ok(())
}
