//! `runner eval`: a checkpoint's loss and perplexity on a text.

use std::path::PathBuf;

use clap::Args;
use log::info;

use super::options::RunOptions;
use crate::checkpoint;
use crate::data::{DataSource, Purpose};
use crate::error::Error;
use crate::eval::evaluate;
use crate::logger::precision_note;
use crate::logger::print_stdout;
use crate::memory::Footprint;
use crate::model::Multiplier;
use crate::threads::Threads;

pub const HELP: &str = "Print a checkpoint's loss and perplexity on a text or token shards.

The checkpoint is a directory from `runner train --save`, or a Hugging Face
GPT-2 directory (config.json + model.safetensors). A text is tokenized with
the checkpoint's tokenizer; a .bin shard is read as it is; a folder of
shards is evaluated on its validation shards.

The loss is the mean next-token cross-entropy (nats per token) over
consecutive non-overlapping windows of block-size + 1 tokens taken with
stride block-size from the first token (a final partial window is included
if it has at least 2 tokens); each window predicts its tokens 1.. from
0... Perplexity is e^loss. Any other implementation can reproduce it.";

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Checkpoint directory (from `runner train --save`, or Hugging Face's).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Text file, token shard (.bin) or folder of shards to evaluate on
    /// [default: the embedded arithmetic corpus].
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[command(flatten)]
    pub run: RunOptions,
}

pub fn run(args: &EvalArgs) -> Result<(), Error> {
    let kernels = args.run.start()?;
    if args.batch == 0 {
        return Err(Error::Config("--batch must be at least 1".into()));
    }
    let source = DataSource::of(args.data.as_deref());
    let cfg = checkpoint::load_config(&args.checkpoint)?;
    let t = cfg.block_size;
    // The data's names and kinds, then the checkpoint, then the data
    // itself, which may take much longer to read and tokenize; the batch
    // is known once the tokens are, and bounded by the data's size before.
    source.check(cfg.tokenizer, Purpose::Evaluation)?;
    let tokens_at_most = source.eval_tokens_at_most()?;
    // Evaluation holds every token beside the model.
    let held = source.held_in_memory(Purpose::Evaluation);
    let footprint = |batch: usize, what: &str| {
        let products = Multiplier {
            kernels,
            precision: args.run.precision,
        };
        Footprint::evaluation(
            &cfg,
            (batch, t),
            (Threads::resolved(args.run.threads), products),
        )
        .check(&format!("model {cfg} with {what}"), held.as_ref())
    };
    // A text has at most a token a byte: one too short is refused before
    // the checkpoint is read.
    if tokens_at_most.is_some_and(|n| n < 2) {
        return Err(too_few_tokens(&source));
    }
    let windows_at_most = tokens_at_most.map(|n| n.div_ceil(t));
    let batch = windows_at_most.map_or(1, |w| args.batch.min(w.max(1)));
    let model_bytes = footprint(batch, &format!("batch {batch} × {t} tokens"))?;
    let mut model = args.run.load_model(&args.checkpoint, kernels)?;
    let tokens = source.eval_tokens(cfg.tokenizer, cfg.vocab_size, model_bytes)?;
    if tokens.len() < 2 {
        return Err(too_few_tokens(&source));
    }
    // Groups are never larger than the number of windows.
    let windows = tokens.len().div_ceil(t);
    let batch = args.batch.min(windows);
    footprint(batch, &format!("batch {batch} × {t} tokens"))?;
    for warning in args.run.warnings(kernels) {
        log::warn!("{warning}");
    }
    if let Some(warning) = source.several_data_sets(Purpose::Evaluation) {
        log::warn!("{warning}");
    }
    info!(
        "Evaluating {cfg} on {} tokens with the {} backend{}",
        tokens.len(),
        kernels.backend(),
        precision_note(model.precision(), kernels)
    );
    let eval = evaluate(&mut model, &tokens, t, args.batch, None)?;
    // Overflowing weights would print a NaN loss without a word.
    if !eval.loss.is_finite() {
        return Err(Error::NotFinite("losses"));
    }
    eval.log_breakdown(t);
    print_stdout(&format!(
        "loss {:.6} perplexity {:.4} tokens {}\n",
        eval.loss,
        eval.perplexity(),
        eval.tokens
    ))
}

/// The error for data with too few tokens to score.
fn too_few_tokens(source: &DataSource) -> Error {
    Error::Data {
        path: source.origin(),
        reason: "evaluation needs at least 2 tokens".into(),
    }
}
