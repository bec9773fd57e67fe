//! `runner train`: train a model, from scratch or resumed.

use std::path::PathBuf;

use clap::Args;

use super::options::{self, RunOptions};
use crate::checkpoint::{self, Progress};
use crate::data::{DataSource, Tokenizer};
use crate::error::Error;
use crate::model::{ModelConfig, Preset};
use crate::train::{train, TrainSettings};

/// The seed of a run that names none.
const DEFAULT_SEED: u64 = 1337;
/// The warm-up of a run that names none.
const DEFAULT_WARMUP: u32 = 20;
/// The schedule of a new run that names none.
const DEFAULT_STEPS: u32 = 200;
const DEFAULT_BATCH: usize = 8;
const DEFAULT_LR: f32 = 1e-3;

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Model size: tiny (L2 H2 C32 T32), demo (L2 H4 C128 T64), small (L4
    /// H4 C256 T128), shakes (L6 H6 C384 T256), gpt2 (L12 H12 C768 T1024)
    /// or gpt2-medium (L24 H16 C1024 T1024) [default: small].
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Tokenizer of a new model: byte (vocabulary 256) or gpt2 (GPT-2's
    /// BPE, 50257) [default: for token shards the one `prepare` wrote them
    /// with (gpt2 for llm.c's), gpt2 for the gpt2 presets, else byte].
    #[arg(long, value_enum)]
    pub tokenizer: Option<Tokenizer>,
    /// Transformer blocks (overrides the preset).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Attention heads; must divide the channels (overrides the preset).
    #[arg(long)]
    pub heads: Option<usize>,
    /// Width of the model (overrides the preset).
    #[arg(long)]
    pub channels: Option<usize>,
    /// Context length in tokens: the positions the model has (overrides
    /// the preset).
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Tokens per training window [default: the block size; with
    /// --resume, the run's].
    #[arg(long, value_name = "T")]
    pub seq_len: Option<usize>,
    /// Recompute each block's LayerNorm outputs and GELU output in the
    /// backward pass instead of keeping them: less memory, one more
    /// LayerNorm and GELU forward per layer; the same gradients.
    /// (Attention's probabilities are never kept.)
    #[arg(long)]
    pub recompute: bool,
    /// What to train on: a text file (tokenized on loading; split 90 % /
    /// 10 % into training and validation), a token shard (.bin, split the
    /// same way) or a folder of shards from `runner prepare` or llm.c
    /// (`*_train[_N].bin` train, `*_val[_N].bin` validate) [default: the
    /// embedded arithmetic corpus].
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Start from the weights in DIR (a checkpoint of this runner, or a
    /// Hugging Face GPT-2 directory: config.json + model.safetensors) with
    /// a fresh optimizer; the model's shape and tokenizer are DIR's.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub init_from: Option<PathBuf>,
    /// Optimizer steps in all [default: 200; with --resume, the run's].
    #[arg(long)]
    pub steps: Option<u32>,
    /// Sequences per micro-batch [default: 8; with --resume, the run's,
    /// shared among the ranks of an MPI run].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Micro-batches whose gradients add up to one step [default: 1; with
    /// --resume, the run's].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Peak learning rate (after warm-up; cosine decay to a tenth of it)
    /// [default: 0.001; with --resume, the run's].
    #[arg(long, value_parser = options::float)]
    pub lr: Option<f32>,
    /// Warm-up steps [default: 20; with --resume, the run's].
    #[arg(long, value_name = "N")]
    pub warmup: Option<u32>,
    /// Seed of the initial weights and of the data sampling [default:
    /// 1337; a resumed run continues its saved random state].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Validate every N steps (0: only at the end).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub eval_every: u32,
    /// Save a checkpoint (Hugging Face GPT-2 layout + optimizer state) to DIR
    /// at the end (also when Ctrl-C or SIGTERM stops the run, after the
    /// step under way).
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
    /// Let the save at the end replace the checkpoint found at --save when
    /// the run starts (the one --resume continues is replaced without
    /// it). One that another run saves there meanwhile is kept: this run
    /// then saves to DIR.1, ...
    #[arg(long, requires = "save")]
    pub overwrite: bool,
    /// Continue the run saved in DIR (model, optimizer, step, data order;
    /// --steps, --batch, --grad-accum, --lr, --warmup, --seq-len and
    /// --data not given are the run's; given ones must be, but --steps).
    /// A run that read its data from a pipe, or saved before the path was
    /// kept, needs its --data again.
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
    /// Under mpirun: ZeRO stage. 1 shards the optimizer state over the
    /// ranks (each keeps the AdamW moments of, and updates, 1/N of the
    /// parameters; then the ranks exchange the new weights); 0 keeps all
    /// of it on every rank.
    #[arg(long, default_value_t = 0, value_name = "STAGE", value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: u8,
    /// Under mpirun: sum the gradients after the backward pass instead of
    /// summing each block's while the pass computes the blocks below it.
    #[arg(long)]
    pub no_overlap: bool,
    #[command(flatten)]
    pub run: RunOptions,
}

impl TrainArgs {
    /// The model shape asked for: `None` when no shape option is given
    /// (a run from a checkpoint then takes the checkpoint's). From a
    /// checkpoint, the options not given are the checkpoint's, so that
    /// only what the user asked for is compared with it.
    fn requested_config(&self) -> Result<Option<ModelConfig>, Error> {
        let any = self.preset.is_some()
            || self.tokenizer.is_some()
            || self.layers.is_some()
            || self.heads.is_some()
            || self.channels.is_some()
            || self.block_size.is_some();
        let checkpoint = self.resume.as_ref().or(self.init_from.as_ref());
        let base = match (checkpoint, self.preset) {
            (Some(_), _) if !any => return Ok(None),
            (Some(dir), None) => {
                let saved = checkpoint::load_config(dir)?;
                match self.tokenizer {
                    // Another tokenizer asks for its vocabulary too.
                    Some(tokenizer) if Some(tokenizer) != saved.tokenizer => ModelConfig {
                        tokenizer: Some(tokenizer),
                        vocab_size: tokenizer.vocab_size(),
                        ..saved
                    },
                    _ => saved,
                }
            }
            (Some(dir), Some(preset)) => {
                let tokenizer = match self.tokenizer {
                    Some(tokenizer) => Some(tokenizer),
                    None => checkpoint::load_config(dir)?.tokenizer,
                };
                preset.config(tokenizer.unwrap_or(preset.default_tokenizer()))
            }
            (None, preset) => {
                let preset = preset.unwrap_or(Preset::Small);
                let tokenizer = self.tokenizer.unwrap_or_else(|| {
                    // Shards are of the tokenizer their headers name, or
                    // (llm.c's) GPT-2's.
                    let data = DataSource::of(self.data.as_deref());
                    match (data.is_tokens(), data.recorded_tokenizer()) {
                        (true, recorded) => recorded.unwrap_or(Tokenizer::Gpt2),
                        (false, _) => preset.default_tokenizer(),
                    }
                });
                preset.config(tokenizer)
            }
        };
        Ok(Some(ModelConfig {
            layers: self.layers.unwrap_or(base.layers),
            heads: self.heads.unwrap_or(base.heads),
            channels: self.channels.unwrap_or(base.channels),
            block_size: self.block_size.unwrap_or(base.block_size),
            ..base
        }))
    }

    /// Where the run `--resume` continues stands: its schedule, whose
    /// settings stand for those not given, and its data. A state that
    /// cannot be read is refused here (its settings unknown, others would
    /// be blamed); a folder that holds none, later, with what it holds
    /// instead.
    fn resumed_progress(&self) -> Result<Option<Progress>, Error> {
        let Some(dir) = self.resume.as_deref() else {
            return Ok(None);
        };
        match checkpoint::load_progress(dir) {
            Ok(progress) => Ok(Some(progress)),
            Err(e) if dir.join(checkpoint::TRAINING_FILE).is_file() => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// The data to train on: `--data`, else the data the resumed run
    /// recorded (refused where it is gone), else the embedded corpus.
    fn data(&self, resumed: Option<&Progress>) -> Result<Option<PathBuf>, Error> {
        let recorded = resumed.and_then(|p| p.data_path.clone());
        match (&self.data, recorded, &self.resume) {
            (Some(data), ..) => Ok(Some(data.clone())),
            // Gone for sure, or replaced by what a save never records (a
            // pipe, which would block the run); a path that cannot be
            // looked at is left to the data's reading, which says why.
            (None, Some(recorded), Some(dir)) => {
                let now = match std::fs::metadata(&recorded) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => "gone",
                    Ok(meta) if !meta.is_file() && !meta.is_dir() => {
                        "neither a file nor a folder now"
                    }
                    _ => return Ok(Some(recorded)),
                };
                Err(Error::checkpoint(
                    dir,
                    format!(
                        "its run trained on {}, which is {now}: give the --data it was trained on",
                        recorded.display()
                    ),
                ))
            }
            (None, recorded, _) => Ok(recorded),
        }
    }

    fn settings(&self) -> Result<TrainSettings, Error> {
        let resumed = self.resumed_progress()?;
        let saved = resumed.as_ref().and_then(|p| p.schedule);
        let steps = self
            .steps
            .or(saved.map(|s| s.total_steps))
            .unwrap_or(DEFAULT_STEPS);
        // The saved batch is all ranks'.
        let ranks = crate::world::current().size();
        let saved_batch = match saved.filter(|_| self.batch.is_none()) {
            Some(s) if s.batch % ranks != 0 => {
                return Err(Error::Config(format!(
                    "the resumed run's batch of {} sequences (over all ranks) does not divide among {ranks} ranks: run it on a number of ranks that divides it",
                    s.batch
                )))
            }
            saved => saved.map(|s| s.batch / ranks),
        };
        let mut warnings = Vec::new();
        if self.seed.is_some() && self.resume.is_some() {
            warnings.push(
                "--seed is ignored with --resume: the run continues from its saved random state"
                    .to_string(),
            );
        }
        // The default warm-up outlasts short runs on purpose: said only
        // where the user chose it.
        if let Some(warmup) = self.warmup.filter(|&w| w > steps) {
            warnings.push(format!(
                "--warmup {warmup} is longer than --steps {steps}: the learning rate never reaches --lr (it ends at {:.0} % of it)",
                100.0 * f64::from(steps) / f64::from(warmup)
            ));
        }
        let stops_early = self.stop_at.filter(|&stop| stop < steps);
        if let (Some(stop), None) = (stops_early, &self.save) {
            warnings.push(format!("--stop-at {stop} without --save: the run stops early and saves nothing to resume from"));
        }
        Ok(TrainSettings {
            config: self.requested_config()?,
            data: self.data(resumed.as_ref())?,
            init_from: self.init_from.clone(),
            seq_len: self.seq_len,
            recompute: self.recompute,
            steps,
            batch: self.batch.or(saved_batch).unwrap_or(DEFAULT_BATCH),
            grad_accum: self.grad_accum.or(saved.map(|s| s.grad_accum)).unwrap_or(1),
            lr: self.lr.or(saved.map(|s| s.lr)).unwrap_or(DEFAULT_LR),
            warmup: self
                .warmup
                .or(saved.map(|s| s.warmup))
                .unwrap_or(DEFAULT_WARMUP),
            seed: self.seed.unwrap_or(DEFAULT_SEED),
            eval_every: self.eval_every,
            log_every: self.log_every,
            save: self.save.clone(),
            overwrite: self.overwrite,
            resume: self.resume.clone(),
            stop_at: self.stop_at,
            json: self.json.clone(),
            threads: self.run.threads,
            plot: self.plot.clone(),
            precision: self.run.precision,
            shard_optimizer: self.zero == 1,
            overlap: !self.no_overlap,
            warnings,
        })
    }
}

pub fn run(args: &TrainArgs) -> Result<(), Error> {
    let kernels = args.run.start()?;
    let mut settings = args.settings()?;
    // Logged, with the run's own, once the run is accepted.
    settings.warnings.splice(0..0, args.run.warnings(kernels));
    train(&settings, kernels)?;
    Ok(())
}
