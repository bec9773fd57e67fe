//! The command line: parses the arguments and hands each command to its
//! module under `commands/`. With no command, runs the default job.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

use crate::commands::{bench, demo, eval, generate, prepare, train};
use crate::error::Error;

/// Train and run a small GPT-2-style language model on the CPU.
///
/// With no command, trains the `demo` model on the embedded arithmetic
/// corpus for about a minute, reporting as it goes, then checks what it
/// learned: it answers held-out sums it has never seen.
#[derive(Parser, Debug)]
#[command(name = "runner", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Every command takes negative numbers as values (`--temperature -1` is
/// then refused for its value, not read as an unknown option; see
/// [`joined_negative_numbers`] for `-inf` and `-.5`).
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (from scratch, or resumed from a checkpoint).
    #[command(allow_negative_numbers = true)]
    Train(train::TrainArgs),
    /// Print a checkpoint's loss and perplexity on a text or token shards.
    #[command(long_about = eval::HELP, allow_negative_numbers = true)]
    Eval(eval::EvalArgs),
    /// Continue a prompt with a trained model, streaming the text to stdout.
    #[command(long_about = generate::HELP, allow_negative_numbers = true)]
    Generate(generate::GenerateArgs),
    /// Time training steps per sequence length, backend and thread count
    /// (with MFU), then decoding with and without the KV cache.
    #[command(allow_negative_numbers = true)]
    Bench(bench::BenchArgs),
    /// Tokenize text files into token shards (llm.c's format).
    #[command(long_about = prepare::HELP, allow_negative_numbers = true)]
    Prepare(prepare::PrepareArgs),
}

/// The arguments with each negative number that follows a long option
/// joined to it (`--temperature -inf` → `--temperature=-inf`), so that it
/// is refused for its value: clap reads a dash followed by anything but
/// digits (`-inf`, `-.5`) as short flags, and an option that took any
/// value starting with a dash would swallow the next option when its own
/// value is missing.
pub fn joined_negative_numbers(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut joined: Vec<OsString> = Vec::new();
    for arg in args {
        let number = arg
            .to_str()
            .and_then(|a| a.strip_prefix('-'))
            .is_some_and(|rest| rest.parse::<f64>().is_ok());
        let option = joined
            .last()
            .and_then(|o| o.to_str())
            .filter(|o| o.starts_with("--") && o.len() > 2 && !o.contains('='));
        match option {
            Some(option) if number => {
                let option = format!("{option}={}", arg.to_string_lossy());
                *joined.last_mut().expect("an option") = option.into();
            }
            _ => joined.push(arg),
        }
    }
    joined
}

/// Runs the parsed command line. Only `train` and `bench` use the ranks
/// of an MPI run; the others would print the same text, or write the same
/// files, once a rank.
pub fn run(cli: Cli) -> Result<(), Error> {
    let ranks = crate::world::current().size();
    let alone = match &cli.command {
        Some(Command::Train(_) | Command::Bench(_)) => None,
        None => Some("runner"),
        Some(Command::Eval(_)) => Some("runner eval"),
        Some(Command::Generate(_)) => Some("runner generate"),
        Some(Command::Prepare(_)) => Some("runner prepare"),
    };
    if let Some(command) = alone.filter(|_| ranks > 1) {
        return Err(Error::OneProcess(command, ranks));
    }
    match cli.command {
        None => demo::run(),
        Some(Command::Train(args)) => train::run(&args),
        Some(Command::Eval(args)) => eval::run(&args),
        Some(Command::Generate(args)) => generate::run(&args),
        Some(Command::Bench(args)) => bench::run(&args),
        Some(Command::Prepare(args)) => prepare::run(&args),
    }
}

/// A clap usage error as one line: its text without the `error: ` prefix,
/// the usage block and the pointer to `--help`, so that a bad option is
/// one clear line like every other error (`invalid value 'fp8' for
/// '--precision <PRECISION>' [possible values: f32, bf16]`).
pub fn usage_error(rendered: &str) -> String {
    rendered
        .lines()
        .take_while(|line| !line.starts_with("Usage:"))
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(args: &[&str]) -> Vec<String> {
        joined_negative_numbers(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn negative_numbers_after_long_options_are_joined_to_them() {
        assert_eq!(
            joined(&[
                "runner",
                "generate",
                "--temperature",
                "-inf",
                "--top-p",
                "-.5"
            ]),
            ["runner", "generate", "--temperature=-inf", "--top-p=-.5"]
        );
        assert_eq!(
            joined(&["r", "train", "--lr", "-1e-3", "-q"]),
            ["r", "train", "--lr=-1e-3", "-q"]
        );
        // Not numbers, not after a long option, or the option has its value.
        for args in [
            &["r", "prepare", "--name", "-x"][..],
            &["r", "train", "-q", "-1"],
            &["r", "train", "--lr=1", "-2"],
            &["r", "generate", "--", "-1"],
            &["r", "generate", "--temperature", "--prompt", "hi"],
        ] {
            assert_eq!(joined(args), args);
        }
    }
}
