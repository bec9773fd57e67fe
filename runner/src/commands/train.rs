//! `runner train`: train a model, from scratch or resumed.

use std::path::PathBuf;

use clap::Args;

use super::options::RunOptions;
use crate::data::Tokenizer;
use crate::error::Error;
use crate::model::{ModelConfig, Preset};
use crate::train::{train, TrainSettings};

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Model size: tiny (L2 H2 C32 T32), demo (L2 H4 C128 T64), small (L4
    /// H4 C256 T128) or shakes (L6 H6 C384 T256) [default: small].
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
    /// Stop after step N (at most --steps), keeping the schedule of
    /// --steps (with --save, a checkpoint to --resume from later).
    #[arg(long, value_name = "N")]
    pub stop_at: Option<u32>,
    /// Log every N steps.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub log_every: u32,
    #[command(flatten)]
    pub run: RunOptions,
}

impl TrainArgs {
    /// The model shape asked for: `None` when no shape option is given
    /// (a resumed run then takes the checkpoint's).
    fn requested_config(&self) -> Option<ModelConfig> {
        let any = self.preset.is_some()
            || self.layers.is_some()
            || self.heads.is_some()
            || self.channels.is_some()
            || self.block_size.is_some();
        if !any && self.resume.is_some() {
            return None;
        }
        let base = self.preset.unwrap_or(Preset::Small).config(Tokenizer::Byte);
        Some(ModelConfig {
            layers: self.layers.unwrap_or(base.layers),
            heads: self.heads.unwrap_or(base.heads),
            channels: self.channels.unwrap_or(base.channels),
            block_size: self.block_size.unwrap_or(base.block_size),
            ..base
        })
    }

    fn settings(&self) -> TrainSettings {
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
            threads: self.run.threads,
            plot: self.plot.clone(),
            precision: self.run.precision,
        }
    }
}

pub fn run(args: &TrainArgs) -> Result<(), Error> {
    let kernels = args.run.start()?;
    train(&args.settings(), kernels)?;
    Ok(())
}
