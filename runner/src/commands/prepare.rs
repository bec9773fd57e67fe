//! `runner prepare`: text files into token shards in llm.c's format.

use std::path::PathBuf;

use clap::Args;
use log::info;

use super::options::Verbosity;
use crate::data::prepare::{prepare, PrepareSettings};
use crate::data::tokenizer::Tokenizer;
use crate::error::Error;
use crate::interrupt;
use crate::logger;
use crate::metrics::mib;

pub const HELP: &str = "Tokenize text files into token shards in llm.c's format.

Each shard is a header of 256 little-endian i32 ([0] = 20240520, [1] = 1,
[2] = the token count, [3] = the tokenizer's vocabulary, which llm.c
ignores) followed by that many little-endian u16 tokens.
Shard 0 (NAME_val_000000.bin) holds the first --val-tokens tokens for
validation, the others (NAME_train_000001.bin, ...) the rest. Each input
file is one document; with the gpt2 tokenizer each starts with the
end-of-text token 50256. Input streams through bounded memory (with the
gpt2 tokenizer, a file is cut at line breaks, or else at spaces between
words; one with neither in 64 MiB is refused).";

#[derive(Args, Debug, Clone)]
pub struct PrepareArgs {
    /// Tokenizer: byte (one token per byte) or gpt2 (GPT-2's BPE).
    #[arg(long, value_enum, default_value_t = Tokenizer::Byte)]
    pub tokenizer: Tokenizer,
    /// Text files to tokenize, one document each.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Folder for the shards (created if missing).
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Shard names start with NAME [default: the first input's file stem].
    #[arg(long)]
    pub name: Option<String>,
    /// Tokens of the validation shard.
    #[arg(long, default_value_t = 32768, value_name = "N")]
    pub val_tokens: usize,
    /// Tokens per training shard.
    #[arg(long, default_value_t = 100_000_000, value_name = "N")]
    pub shard_tokens: usize,
    #[command(flatten)]
    pub verbosity: Verbosity,
}

pub fn run(args: &PrepareArgs) -> Result<(), Error> {
    args.verbosity.init();
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args.input[0]
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data".into()),
    };
    if name.is_empty() || name.contains(['/', '\\']) {
        return Err(Error::Config(format!("--name {name:?} is not a file name")));
    }
    let settings = PrepareSettings {
        tokenizer: args.tokenizer,
        inputs: args.input.clone(),
        output: args.output.clone(),
        name,
        val_tokens: args.val_tokens,
        shard_tokens: args.shard_tokens,
        chunk_bytes: 4 << 20,
    };
    let bar = std::cell::OnceCell::new();
    let started = |total: u64| {
        info!(
            "Tokenizing {} file(s), {:.1} MiB, with the {} tokenizer into {}",
            args.input.len(),
            mib(total as f64),
            args.tokenizer.name(),
            args.output.display()
        );
        if let Some(shown) = logger::progress_bar(total, "{bytes}/{total_bytes}") {
            let _ = bar.set(shown);
        }
    };
    // Ctrl-C stops the run between two chunks, which removes the
    // unfinished shards and the folders it made.
    let catching = interrupt::catch(Some(
        "stopping: removing the unfinished shards (Ctrl-C again ends the run at once)",
    ));
    let report = prepare(&settings, started, |done| {
        if let Some(bar) = bar.get() {
            bar.set_position(done);
        }
        match interrupt::requested() {
            true => Err(Error::Interrupted(
                "before the shards were complete".to_string(),
            )),
            false => Ok(()),
        }
    });
    drop(catching);
    logger::finish_progress();
    let report = report?;
    let train: usize = report.shards.iter().skip(1).sum();
    info!(
        "Prepared {} tokens ({} validation, {} training in {} shard(s)) from {:.1} MiB in {:.2} s | {:.0} tokens/s",
        report.tokens,
        report.shards.first().copied().unwrap_or(0),
        train,
        report.shards.len().saturating_sub(1),
        mib(report.bytes as f64),
        report.seconds,
        report.tokens as f64 / report.seconds.max(1e-9)
    );
    Ok(())
}
