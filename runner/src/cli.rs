//! The command line: `runner` (the default job), `runner train`,
//! `runner eval`.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kernels::{Backend, Kernels};
use log::info;

use crate::bench::{self, BenchSettings};
use crate::checkpoint;
use crate::config::{ModelConfig, Preset};
use crate::data;
use crate::error::Error;
use crate::eval::evaluate;
use crate::generate::{check_prompt, generate, GenerationStats, Sampling};
use crate::logger;
use crate::metrics::JsonLines;
use crate::threads::{available_cores, Threads};
use crate::train::{self, describe, TrainSettings};

/// Train and run a small GPT-2-style language model on the CPU.
///
/// With no command, trains the `small` model on the embedded arithmetic
/// corpus for about a minute, reporting as it goes, then prints a sample
/// of what it learned.
#[derive(Parser, Debug)]
#[command(name = "runner", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (from scratch, or resumed from a checkpoint).
    Train(TrainArgs),
    /// Print a checkpoint's loss and perplexity on a text.
    #[command(long_about = EVAL_HELP)]
    Eval(EvalArgs),
    /// Continue a prompt with a trained model, streaming the text to stdout.
    #[command(long_about = GENERATE_HELP)]
    Generate(GenerateArgs),
    /// Time training steps per sequence length, backend and thread count
    /// (with MFU), then decoding with and without the KV cache.
    Bench(BenchArgs),
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model size.
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    pub preset: Preset,
    /// Sequence lengths to train at (each at most the block size).
    #[arg(long, value_delimiter = ',', default_value = "16,64,128")]
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
    /// Thread counts [default: 1 and all cores].
    #[arg(long, value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Write one JSON object per benchmark row to FILE (see README).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Only warnings, errors and the tables.
    #[arg(short, long)]
    pub quiet: bool,
}

const GENERATE_HELP: &str = "Continue a prompt with a trained model, streaming the text to stdout.

The prompt is run through the model in one pass that fills a key/value cache;
each new token then costs one pass over the weights. When the context
reaches the block size, the cache slides: the last half block is re-run as
a fresh prompt and generation continues. The prompt must be 1 to block-size
bytes.";

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Checkpoint directory (from `runner train --save`).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,
    /// Text to continue (1 to block-size bytes).
    #[arg(long)]
    pub prompt: String,
    /// Tokens (bytes) to generate.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens covering probability P.
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Seed of the sampling; the same seed gives the same text.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Write the generation's figures as one JSON object to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Only the generated text (no log lines).
    #[arg(short, long)]
    pub quiet: bool,
    /// Kernel backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Threads [default: all cores]. The text does not depend on it.
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

const EVAL_HELP: &str = "Print a checkpoint's loss and perplexity on a text.

The loss is the mean next-token cross-entropy (nats per byte) over
consecutive non-overlapping windows of block-size + 1 tokens taken with
stride block-size from the start of the file (a final partial window is
included if it has at least 2 tokens); each window predicts its tokens 1..
from 0... Perplexity is e^loss. Any other implementation can reproduce it.";

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

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Model size: tiny (L2 H2 C32 T32), small (L4 H4 C256 T128) or shakes
    /// (L6 H6 C384 T256) [default: small].
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Transformer blocks (overrides the preset).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Attention heads; must divide the channels (overrides the preset).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Width of the model (overrides the preset).
    #[arg(long)]
    pub channels: Option<usize>,
    /// Context length in tokens (bytes) (overrides the preset).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Text file to train on, split 90 % / 10 % into training and
    /// validation [default: the embedded arithmetic corpus].
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Optimizer steps (the total, when resuming).
    #[arg(long, default_value_t = 200)]
    pub steps: u32,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Micro-batches whose gradients add up to one step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate (after warm-up; cosine decay to a tenth of it).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f32,
    /// Warm-up steps.
    #[arg(long, default_value_t = 20)]
    pub warmup: u32,
    /// Seed of the initial weights and of the data sampling.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Validate every N steps (0: only at the end).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub eval_every: u32,
    /// Save a checkpoint (Hugging Face GPT-2 layout + optimizer state) to DIR
    /// at the end.
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
    /// Continue the run saved in DIR (model, optimizer, step, data order).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Write one JSON object per step and validation to FILE (see README).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the training and validation loss curves into FILE (SVG) at the
    /// end.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Stop after step N, keeping the schedule of --steps (with --save, a
    /// checkpoint to --resume from later).
    #[arg(long, value_name = "N")]
    pub stop_at: Option<u32>,
    /// Log every N steps.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub log_every: u32,
    /// Only warnings and errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Kernel backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

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
    /// Only warnings and errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Kernel backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Threads [default: all cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

impl TrainArgs {
    /// The model shape asked for: `None` when no shape option is given
    /// (a resumed run then takes the checkpoint's).
    pub fn requested_config(&self) -> Option<ModelConfig> {
        let any = self.preset.is_some()
            || self.layers.is_some()
            || self.heads.is_some()
            || self.channels.is_some()
            || self.block_size.is_some();
        if !any && self.resume.is_some() {
            return None;
        }
        let base = self.preset.unwrap_or(Preset::Small).config();
        Some(ModelConfig {
            layers: self.layers.unwrap_or(base.layers),
            heads: self.heads.unwrap_or(base.heads),
            channels: self.channels.unwrap_or(base.channels),
            block_size: self.block_size.unwrap_or(base.block_size),
            ..base
        })
    }

    pub fn settings(&self) -> TrainSettings {
        TrainSettings {
            config: self.requested_config(),
            data: self.data.clone(),
            steps: self.steps,
            batch: self.batch,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup: self.warmup,
            seed: self.seed,
            eval_every: self.eval_every,
            log_every: self.log_every,
            save: self.save.clone(),
            resume: self.resume.clone(),
            stop_at: self.stop_at,
            json: self.json.clone(),
            threads: self.threads,
            plot: self.plot.clone(),
        }
    }
}

/// The end of the default job: a sample from the model just trained, and
/// how much of it is correct arithmetic.
fn sample_arithmetic(model: &mut crate::model::Gpt) -> Result<(), Error> {
    let prompt = data::encode(b"\n");
    let mut cache = model.new_cache();
    let sampling = Sampling {
        temperature: 0.5,
        top_k: None,
        top_p: None,
    };
    print_stdout("Sample from the trained model (temperature 0.5):\n");
    let stats = generate(model, &mut cache, &prompt, 200, &sampling, 7, stream_token)?;
    print_stdout("\n");
    let text = String::from_utf8_lossy(&data::decode(&stats.tokens)).into_owned();
    let lines: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
    let complete = &lines[..lines.len().saturating_sub(1)];
    let right = complete
        .iter()
        .filter(|l| crate::corpus::check_line(l) == Some(true))
        .count();
    let well_formed = complete
        .iter()
        .filter(|l| crate::corpus::check_line(l).is_some())
        .count();
    info!(
        "Sample check: {well_formed} of {} complete lines are well-formed `a+b=c` / `a-b=c`, {right} are correct arithmetic",
        complete.len()
    );
    log_generation(&stats);
    Ok(())
}

/// The generation log line.
fn log_generation(stats: &GenerationStats) {
    info!(
        "Generation complete - Generated {} tokens | Total time: {:.3} ms | Prompt: {:.3} ms | Forward passes: {:.3} ms | Sampling: {:.3} ms | Tokens/sec: {:.1} | KV cache: {:.2} MiB | Peak resident memory: {:.1} MiB",
        stats.tokens.len(),
        stats.total_ms,
        stats.prompt_ms,
        stats.forward_ms,
        stats.sampling_ms,
        stats.tokens_per_sec(),
        stats.cache_bytes as f64 / (1024.0 * 1024.0),
        crate::metrics::peak_rss_bytes() as f64 / (1024.0 * 1024.0)
    );
}

/// Writes one generated token (a byte) to stdout as soon as it is drawn.
fn stream_token(token: u32) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&[token as u8]).and_then(|_| out.flush());
}

/// Writes `text` to stdout, ignoring a closed pipe (`runner ... | head`)
/// rather than panicking as `println!` would.
pub fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        None => {
            logger::init(false);
            info!("No command given: training the default model on the embedded arithmetic corpus (see `runner --help`).");
            let Some(Command::Train(args)) = Cli::parse_from(["runner", "train"]).command else {
                unreachable!("`train` parses as the train command");
            };
            let (mut model, _) = train::train(&args.settings(), args.backend.kernels()?)?;
            sample_arithmetic(&mut model)
        }
        Some(Command::Train(args)) => {
            logger::init(args.quiet);
            train::train(&args.settings(), args.backend.kernels()?)?;
            Ok(())
        }
        Some(Command::Eval(args)) => {
            logger::init(args.quiet);
            let mut model = checkpoint::load_model(&args.checkpoint, args.backend.kernels()?)?;
            model.set_threads(Threads::new(args.threads)?);
            let tokens = match &args.data {
                Some(path) => data::read_tokens(path)?,
                None => data::encode(&crate::corpus::arithmetic()),
            };
            if tokens.len() < 2 {
                return Err(Error::Data {
                    path: args.data.clone().unwrap_or_default(),
                    reason: "evaluation needs at least 2 bytes".into(),
                });
            }
            info!(
                "Evaluating {} on {} tokens with the {} backend",
                describe(&model.config),
                tokens.len(),
                model.kernels().backend()
            );
            // Groups are never larger than the number of windows.
            let windows = tokens.len().div_ceil(model.config.block_size);
            train::check_memory(&model.config, args.batch.min(windows))?;
            let eval = evaluate(&mut model, &tokens, args.batch, None)?;
            info!(
                "Loss computation breakdown - Forward: {:.3} ms | Cross-entropy: {:.3} ms | Total: {:.3} ms | Seq length: {}",
                eval.forward_ms,
                eval.cross_entropy_ms,
                eval.forward_ms + eval.cross_entropy_ms,
                model.config.block_size
            );
            print_stdout(&format!(
                "loss {:.6} perplexity {:.4} tokens {}
",
                eval.loss,
                eval.perplexity(),
                eval.tokens
            ));
            Ok(())
        }
        Some(Command::Bench(args)) => {
            logger::init(args.quiet);
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
            let settings = BenchSettings {
                config: args.preset.config(),
                seq_lens: args.seq_lens.clone(),
                batch: args.batch,
                steps: args.steps,
                backends,
                threads: if args.threads.is_empty() {
                    let cores = if cfg!(feature = "parallel") {
                        available_cores()
                    } else {
                        1
                    };
                    let mut all = vec![1, cores];
                    all.dedup();
                    all
                } else {
                    args.threads.clone()
                },
                json: args.json.clone(),
            };
            bench::run(&settings)?;
            Ok(())
        }
        Some(Command::Generate(args)) => {
            logger::init(args.quiet);
            let sampling = Sampling {
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
            };
            sampling.validate()?;
            let mut model = checkpoint::load_model(&args.checkpoint, args.backend.kernels()?)?;
            model.set_threads(Threads::new(args.threads)?);
            let prompt = data::encode(args.prompt.as_bytes());
            check_prompt(&model, &prompt)?;
            info!(
                "Generating with {} on the {} backend",
                describe(&model.config),
                model.kernels().backend()
            );
            let mut cache = model.new_cache();
            print_stdout(&args.prompt);
            let stats = generate(
                &mut model,
                &mut cache,
                &prompt,
                args.max_new_tokens,
                &sampling,
                args.seed,
                stream_token,
            )?;
            print_stdout("\n");
            log_generation(&stats);
            if let Some(path) = &args.json {
                JsonLines::create(path)?.write(&serde_json::json!({
                    "kind": "generate",
                    "tokens": stats.tokens.len(),
                    "total_ms": stats.total_ms,
                    "prompt_ms": stats.prompt_ms,
                    "forward_ms": stats.forward_ms,
                    "sampling_ms": stats.sampling_ms,
                    "tokens_per_sec": stats.tokens_per_sec(),
                    "seq_len": cache.len(),
                    "batch": 1,
                    "backend": model.kernels().backend().name(),
                    "threads": model.threads().count(),
                    "kv_cache_bytes": stats.cache_bytes,
                    "peak_rss_bytes": crate::metrics::peak_rss_bytes(),
                }))?;
            }
            Ok(())
        }
    }
}
