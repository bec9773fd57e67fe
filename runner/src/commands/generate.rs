//! `runner generate`: continue a prompt, streaming the text to stdout.

use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::Args;
use log::info;

use super::options::{self, RunOptions};
use crate::checkpoint;
use crate::error::Error;
use crate::generate::{check_prompt, generate, Sampling};
use crate::logger::precision_note;
use crate::logger::{keep_streaming, print_bytes, print_stdout};
use crate::memory::Footprint;
use crate::metrics::{
    peak_rss_bytes, write_records, GenerateRecord, GenerationTimes, Record, RunShape,
};
use crate::model::Multiplier;
use crate::outputs;
use crate::threads::Threads;

pub const HELP: &str = "Continue a prompt with a trained model, streaming the text to stdout.

The prompt is run through the model in one pass that fills a key/value cache;
each new token then costs one pass over the weights. When the context
reaches the block size, the cache slides: the last half block is re-run as
a fresh prompt and generation continues. The prompt is tokenized with the
checkpoint's tokenizer and must be 1 to block-size tokens. Stdout gets the
prompt, then the text as raw bytes as it is drawn (a GPT-2 token may end
inside a UTF-8 character: the next one completes it), then a newline. Only
tokens the tokenizer can write are drawn (not the padding of a vocabulary
padded past it, as nanoGPT's 50304). Generation stops after --max-new-tokens,
or earlier when the model draws GPT-2's end-of-text token (50256), which
ends a document and is not printed (the log counts it among the tokens
generated, as Hugging Face's output ids hold it).";

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Checkpoint directory (from `runner train --save`, or Hugging Face's).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Text to continue (1 to block-size tokens); it may start with `-`.
    #[arg(long, allow_hyphen_values = true)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8, value_parser = options::float)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens covering probability P.
    #[arg(long, value_name = "P", value_parser = options::float)]
    pub top_p: Option<f32>,
    /// Seed of the sampling; the same seed gives the same text.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Write the generation's figures as one JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunOptions,
}

pub fn run(args: &GenerateArgs) -> Result<(), Error> {
    let kernels = args.run.start()?;
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
    };
    sampling.validate()?;
    if args.max_new_tokens == 0 {
        return Err(Error::Config("--max-new-tokens must be at least 1".into()));
    }
    if let Some(path) = &args.json {
        outputs::check_outputs(&[("--json", path)], &[&args.checkpoint], None)?;
    }
    let cfg = checkpoint::load_config(&args.checkpoint)?;
    let Some(tokenizer) = cfg.tokenizer else {
        return Err(Error::Input(format!(
            "the checkpoint {} names no tokenizer (vocabulary {}), so its tokens cannot be written as text",
            args.checkpoint.display(),
            cfg.vocab_size
        )));
    };
    let prompt = tokenizer.encode(args.prompt.as_bytes());
    // Before loading: a prompt that does not fit costs nothing.
    check_prompt(&cfg, &prompt)?;
    let products = Multiplier {
        kernels,
        precision: args.run.precision,
    };
    let threads = Threads::resolved(args.run.threads);
    Footprint::decoding(&cfg, (threads, products))
        .check(&format!("decoding with model {cfg}"), None)?;
    let mut model = args.run.load_model(&args.checkpoint, kernels)?;
    for warning in args.run.warnings(kernels) {
        log::warn!("{warning}");
    }
    info!(
        "Generating with {} on the {} backend{}",
        model.config,
        kernels.backend(),
        precision_note(model.precision(), kernels)
    );
    let mut cache = model.new_cache();
    print_stdout(&args.prompt)?;
    let mut stdout_failure = None;
    let stats = generate(
        &mut model,
        &mut cache,
        &prompt,
        args.max_new_tokens,
        &sampling,
        args.seed,
        |token| {
            if Some(token) == tokenizer.end_of_text() {
                // The model ended the document, as Hugging Face's
                // `generate` stops at `eos_token_id`.
                return ControlFlow::Break(());
            }
            let text = tokenizer.decode(&[token]).unwrap_or_default();
            keep_streaming(print_bytes(&text), &mut stdout_failure)
        },
    )?;
    if let Some(e) = stdout_failure {
        return Err(Error::io("stdout", e));
    }
    print_stdout("\n")?;
    stats.log();
    if let Some(path) = &args.json {
        let record = Record::Generate(GenerateRecord {
            tokens_per_sec: stats.tokens_per_sec(),
            uncached_tokens_per_sec: None,
            run: Some(GenerationTimes {
                tokens: stats.tokens.len(),
                total_ms: stats.total_ms,
                prompt_ms: stats.prompt_ms,
                forward_ms: stats.forward_ms,
                sampling_ms: stats.sampling_ms,
                kv_cache_bytes: stats.cache_bytes,
            }),
            shape: RunShape::new(
                cache.len(),
                1,
                kernels,
                model.threads().count(),
                model.precision(),
            ),
            peak_rss_bytes: peak_rss_bytes(),
        });
        write_records(path, &[record])?;
    }
    Ok(())
}
