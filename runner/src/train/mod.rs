//! The training loop: micro-batches with gradient accumulation, AdamW with
//! clipping and the learning-rate schedule (`optim`), periodic validation,
//! the instrumented log lines, and checkpoints. `memory` sizes a run
//! before it starts; `data_parallel` sums the gradients of a run of
//! several processes.

mod data_parallel;
pub mod optim;

use std::path::{Path, PathBuf};
use std::time::Instant;

use kernels::Kernels;
use log::info;

use crate::checkpoint::{self, RunSchedule, SavedCheckpoint, TrainingState};
use crate::data::{self, DataFingerprint, DataSource, Dataset, Purpose, Tokenizer};
use crate::error::Error;
use crate::eval::{evaluate, Evaluation};
use crate::logger::precision_note;
use crate::memory::{check_host, check_memory, Footprint};
use crate::metrics::{mib, ms_since, peak_rss_bytes, JsonLines, Record, RunShape, TrainStepRecord};
use crate::model::{Gpt, ModelConfig, Multiplier, Precision};
use crate::rng::Rng;
use crate::threads::Threads;
use crate::world::Collective;
use crate::{interrupt, logger, outputs, plot};
pub use data_parallel::DataParallel;
use data_parallel::{backward_summing, sum_gradients};
use optim::{Optimizer, OptimizerSettings};

/// Everything a training run needs.
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// The model shape (and tokenizer) for a new run; with `resume` or
    /// `init_from`, the checkpoint's shape is used and this must match it
    /// if given.
    pub config: Option<ModelConfig>,
    /// Text or token shards to train on ([`DataSource::of`]); `None` for
    /// the embedded corpus.
    pub data: Option<PathBuf>,
    /// Start from the weights in this checkpoint directory (this runner's
    /// or a Hugging Face GPT-2's), with a fresh optimizer.
    pub init_from: Option<PathBuf>,
    /// Tokens per training window (`None`: the block size).
    pub seq_len: Option<usize>,
    /// Recompute the cheap activations in the backward pass rather than
    /// keeping them ([`Gpt::set_recompute`]).
    pub recompute: bool,
    pub steps: u32,
    pub batch: usize,
    pub grad_accum: usize,
    pub lr: f32,
    pub warmup: u32,
    pub seed: u64,
    /// Validate every this many steps (0: only at the end).
    pub eval_every: u32,
    pub log_every: u32,
    pub save: Option<PathBuf>,
    /// Replace the checkpoint at `save` when the run starts (one `resume`d
    /// from is replaced without it).
    pub overwrite: bool,
    pub resume: Option<PathBuf>,
    /// Stop after this step (the schedule still spans `steps`), e.g. to
    /// save and `resume` later.
    pub stop_at: Option<u32>,
    /// Write one JSON object per step and validation to this file.
    pub json: Option<PathBuf>,
    /// Threads to run on (`None`: all cores).
    pub threads: Option<usize>,
    /// Draw the loss curves into this SVG file at the end.
    pub plot: Option<PathBuf>,
    /// The element type of the matrix products.
    pub precision: Precision,
    /// Under `mpirun`: shard the optimizer state over the ranks (ZeRO
    /// stage 1): each rank keeps the AdamW moments of, and updates, its
    /// share of the parameters, then the ranks exchange the new weights.
    pub shard_optimizer: bool,
    /// Under `mpirun`: sum each block's gradients while the backward pass
    /// computes the blocks below it ([`DataParallel::overlap`]).
    pub overlap: bool,
    /// What the command line warns of (settings that run but may not be
    /// meant), logged once the run's own checks have passed, so that a
    /// refused run prints only its error.
    pub warnings: Vec<String>,
}

/// What a run reached.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Training loss of every step run (after resuming, of the new steps).
    pub losses: Vec<f32>,
    /// The last validation loss.
    pub val_loss: Option<f64>,
    /// Tokens per second of the steps themselves (validation, logging
    /// and the checks between steps aside).
    pub tokens_per_sec: f64,
}

/// Sequences per optimizer step (batch × micro-batches) beyond which a run
/// is surely a typo: 2^20 sequences take days per step on a CPU.
const MAX_SEQUENCES_PER_STEP: usize = 1 << 20;

/// Validation scores this many windows per sequence of the global batch
/// (batch × ranks) each time.
const VAL_WINDOWS_PER_BATCH: usize = 8;

impl TrainSettings {
    /// AdamW's settings for this run.
    fn optimizer(&self) -> OptimizerSettings {
        OptimizerSettings::new(self.lr, self.warmup, self.steps)
    }

    /// Refuses to replace a checkpoint the user did not agree to lose: one
    /// already at `--save` is replaced only with `--overwrite`, or when
    /// it is the one this run resumes.
    fn check_overwrite(&self, dir: &Path) -> Result<(), Error> {
        if self.overwrite || checkpoint::saved_checkpoint(dir).is_none() {
            return Ok(());
        }
        let same = |resumed: &Path| outputs::resolved(resumed) == outputs::resolved(dir);
        if self.resume.as_deref().is_some_and(same) {
            return Ok(());
        }
        Err(Error::checkpoint(
            dir,
            "holds a checkpoint already: give --overwrite to replace it, or another --save",
        ))
    }

    /// Refuses settings that cannot work, before anything is loaded.
    fn check(&self) -> Result<(), Error> {
        if self.steps == 0 || self.batch == 0 || self.grad_accum == 0 {
            return Err(Error::Config(
                "--steps, --batch and --grad-accum must be at least 1".into(),
            ));
        }
        if self
            .batch
            .checked_mul(self.grad_accum)
            .is_none_or(|n| n > MAX_SEQUENCES_PER_STEP)
        {
            return Err(Error::Config(format!(
                "--batch {} × --grad-accum {} is more than {MAX_SEQUENCES_PER_STEP} sequences per step",
                self.batch, self.grad_accum
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Config(format!(
                "--lr must be a positive number, not {}",
                self.lr
            )));
        }
        if self.log_every == 0 {
            return Err(Error::Config("--log-every must be at least 1".into()));
        }
        if self.stop_at == Some(0) {
            return Err(Error::Config("--stop-at must be at least 1".into()));
        }
        if let Some(stop) = self.stop_at.filter(|&stop| stop > self.steps) {
            return Err(Error::Config(format!(
                "--stop-at {stop} is after the last step (--steps {})",
                self.steps
            )));
        }
        if self.resume.is_some() && self.init_from.is_some() {
            return Err(Error::Config(
                "--resume continues a run and --init-from starts one: give one of them".into(),
            ));
        }
        if self.seq_len == Some(0) {
            return Err(Error::Config("--seq-len must be at least 1".into()));
        }
        // Before the run, not after it: a bad path should not cost it. Only
        // rank 0 writes, and only it checks: the check clears stale staging
        // directories, which would race with another rank's probe.
        if crate::world::current().rank() == 0 {
            if let Some(dir) = &self.save {
                checkpoint::check_destination(dir)?;
                self.check_overwrite(dir)?;
            }
            let outputs = [("--json", &self.json), ("--plot", &self.plot)];
            let outputs: Vec<_> = outputs
                .iter()
                .filter_map(|&(option, path)| Some((option, path.as_deref()?)))
                .collect();
            let inputs = [&self.data, &self.resume, &self.init_from];
            let inputs: Vec<_> = inputs.iter().filter_map(|p| p.as_deref()).collect();
            outputs::check_outputs(&outputs, &inputs, self.save.as_deref())?;
        }
        let svg = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
        if let Some(plot) = self.plot.as_deref().filter(|p| !svg(p)) {
            return Err(Error::Config(format!(
                "--plot draws SVG: give a file name ending in .svg (such as loss.svg), not {}",
                plot.display()
            )));
        }
        Ok(())
    }

    /// This rank's shard of the optimizer state and the number of shards:
    /// `(0, 1)` unless it is sharded.
    fn optimizer_shard(&self, world: &dyn Collective) -> (usize, usize) {
        match self.shard_optimizer {
            true => (world.rank(), world.size()),
            false => (0, 1),
        }
    }

    /// The schedule of a run of `ranks` processes: its batch is the
    /// global one (`--batch` × processes), so a checkpoint of one world
    /// size resumes in another with the same global batch. `t` is the
    /// sequence length the run trains at, `data` what it trains on (if
    /// read yet).
    fn schedule(&self, ranks: usize, t: usize, data: Option<DataFingerprint>) -> RunSchedule {
        RunSchedule {
            lr: self.lr,
            warmup: self.warmup,
            total_steps: self.steps,
            batch: self.batch * ranks,
            grad_accum: self.grad_accum,
            seq_len: Some(t),
            data,
        }
    }
}

/// The model shape a run trains: the checkpoint's when it starts from one
/// (`--resume`, `--init-from`), else the one asked for.
fn run_config(s: &TrainSettings) -> Result<ModelConfig, Error> {
    match s.resume.as_ref().or(s.init_from.as_ref()) {
        Some(dir) => checkpoint::load_config(dir),
        None => s
            .config
            .ok_or_else(|| Error::Config("no model configuration".into())),
    }
}

/// What a resumed run was saved with (nothing for a new run).
#[derive(Default)]
struct Resumed {
    schedule: Option<RunSchedule>,
    /// [`TrainingState::data_path`].
    data_path: Option<PathBuf>,
}

/// A run's model, optimizer and data order: fresh, from a checkpoint's
/// weights, or resumed (then with what it was saved with); `cfg` is
/// [`run_config`]'s, `t` the sequence length trained at (which a resumed
/// run must share).
fn start(
    s: &TrainSettings,
    cfg: ModelConfig,
    t: usize,
    kernels: Kernels,
) -> Result<(Gpt, Optimizer, Rng, Resumed), Error> {
    let world = crate::world::current();
    let shard = s.optimizer_shard(world);
    let Some(dir) = s.resume.as_ref().or(s.init_from.as_ref()) else {
        let model = Gpt::new(cfg, kernels, s.seed)?;
        let optimizer = Optimizer::sharded(model.sizes(), shard);
        return Ok((model, optimizer, Rng::new(s.seed), Resumed::default()));
    };
    if s.init_from.is_some() {
        let model = checkpoint::load_model(dir, kernels)?;
        let optimizer = Optimizer::sharded(model.sizes(), shard);
        return Ok((model, optimizer, Rng::new(s.seed), Resumed::default()));
    }
    // The weights first: they are what checks config.json's shapes, which
    // the state's size then follows.
    let model = checkpoint::load_model(dir, kernels)?;
    // The moments of this rank's share, read straight into the optimizer.
    let mut optimizer = Optimizer::sharded(model.sizes(), shard);
    let share = optimizer.owned();
    let state = checkpoint::load_run_into(
        dir,
        cfg.param_floats(),
        share.clone(),
        optimizer.moments_mut(),
    )?;
    let (m, v) = optimizer.moments();
    let settings = s.optimizer();
    if let (Some(i), Some(most)) = (
        settings.unreachable_moments(m, v),
        settings.moment_ratio_limit(),
    ) {
        return Err(Error::checkpoint(
            dir,
            format!(
                "{}: parameter {} has AdamW moments m {:e}, v {:e}, which AdamW cannot produce (|m| is at most {most:.2}·√v): the file is damaged",
                checkpoint::TRAINING_FILE,
                share.start + i,
                m[i],
                v[i]
            ),
        ));
    }
    // Checked from the header already; the full state must say the same.
    check_resume(s, dir, t, None, state.step, state.schedule)?;
    checkpoint::check_run_matches(dir, &model)?;
    let rng = Rng::from_state(state.rng_state);
    optimizer.step = state.step;
    let resumed = Resumed {
        schedule: state.schedule,
        data_path: state.data_path,
    };
    Ok((model, optimizer, rng, resumed))
}

/// Refuses to resume, from a checkpoint at `step` saved with `saved`, a
/// run (at sequence length `t`, on `data` once read) that would not
/// continue it.
fn check_resume(
    s: &TrainSettings,
    dir: &Path,
    t: usize,
    data: Option<DataFingerprint>,
    step: u32,
    saved: Option<RunSchedule>,
) -> Result<(), Error> {
    // A resumed run continues exactly only with the same schedule and data.
    let now = s.schedule(crate::world::current().size(), t, data);
    let differences = saved.map_or(Vec::new(), |saved| saved.differences(&now));
    if !differences.is_empty() {
        let other_data = differences.iter().any(|d| d.starts_with("--data"));
        let mut advice = Vec::new();
        if differences.len() > usize::from(other_data) {
            advice.push("leave those options out to take the checkpoint's".to_string());
        }
        // The data read may be the path the checkpoint records, changed.
        let reads = match &s.data {
            None => "the embedded corpus".to_string(),
            Some(data) => data.display().to_string(),
        };
        if other_data {
            advice.push(format!(
                "give the --data it was trained on (this run reads {reads})"
            ));
        }
        return Err(Error::checkpoint(
            dir,
            format!(
                "it was trained with other settings ({}); {}, or start a new run from its weights with --init-from",
                differences.join("; "),
                advice.join(", ")
            ),
        ));
    }
    if step >= s.steps {
        return Err(Error::Config(format!(
            "the checkpoint is already at step {step}; ask for more --steps"
        )));
    }
    if let Some(stop) = s.stop_at.filter(|&stop| stop <= step) {
        return Err(Error::Config(format!(
            "--stop-at {stop} is not after the checkpoint's step {step}"
        )));
    }
    Ok(())
}

/// A tokenizer's name, or what a model without one has.
fn tokenizer_name(tokenizer: Option<Tokenizer>) -> &'static str {
    tokenizer.map_or("no", Tokenizer::name)
}

/// The start-up log lines: backend and threads, model and memory, data.
fn log_start(
    s: &TrainSettings,
    (model, optimizer): (&Gpt, &Optimizer),
    (source, data): (&DataSource, &Dataset),
    t: usize,
    kernels: Kernels,
) {
    let threads = model.threads().count();
    let (cfg, n) = (model.config, model.config.param_count());
    info!(
        "Kernel backend set to: {} ({}-lane SIMD, {threads} thread{}){}",
        kernels.backend(),
        kernels.backend().lanes(),
        if threads == 1 { "" } else { "s" },
        precision_note(model.precision(), kernels),
    );
    let start = match (&s.init_from, &s.resume) {
        (Some(dir), _) => format!(" | Initialized from {}", dir.display()),
        (_, Some(dir)) => format!(" | Resumed from {}", dir.display()),
        _ => String::new(),
    };
    let products = Multiplier {
        kernels,
        precision: model.precision(),
    };
    let footprint = Footprint {
        // What this rank holds: its share when the ranks share the state.
        optimizer_state: Optimizer::state_floats(optimizer.owned().len()),
        optimizer_ranks: optimizer.shards().len(),
        ..Footprint::training(&cfg, (s.batch, t), s.recompute, (threads, products))
    };
    info!(
        "Model: {cfg} | Tokenizer: {} | Parameters: {:.2} M ({n}) | Memory: {footprint}{start}",
        tokenizer_name(cfg.tokenizer),
        n as f64 / 1e6,
    );
    let origin = match source {
        DataSource::Embedded => format!(" ({})", data::EMBEDDED_NAME),
        source => format!(" from {}", source.origin().display()),
    };
    info!(
        "Data: {} training and {} validation tokens{origin} | Steps: {} | Batch: {} × {t} tokens × {} micro-batches",
        data.train.len(),
        data.val.len(),
        s.steps,
        s.batch,
        s.grad_accum,
    );
}

/// The run's model shape, window (`b` × `t`) and bytes of memory, after
/// every check that needs no data: the settings, the checkpoint's shape
/// and progress, the memory; so a run that cannot work stops before
/// reading its data.
fn checked_shape(
    s: &TrainSettings,
    kernels: Kernels,
) -> Result<(ModelConfig, usize, usize, u64), Error> {
    s.check()?;
    let cfg = run_config(s)?;
    // The resumed state, read once; its errors are reported after the
    // cheaper checks below.
    let progress = s.resume.as_deref().map(checkpoint::load_progress);
    // A resumed run's window, unless asked for, is the run's (one longer
    // than the weights' block size is blamed on the files below).
    let resumed_t = progress
        .as_ref()
        .and_then(|progress| progress.as_ref().ok())
        .filter(|_| s.seq_len.is_none())
        .and_then(|progress| progress.schedule?.seq_len)
        .filter(|&t| t <= cfg.block_size);
    let (b, t) = (s.batch, s.seq_len.or(resumed_t).unwrap_or(cfg.block_size));
    if t > cfg.block_size {
        return Err(Error::Config(format!(
            "--seq-len {t} is longer than the model's block size {}",
            cfg.block_size
        )));
    }
    let ranks = crate::world::current().size();
    if ranks > 1 && cfg.param_floats() > i32::MAX as usize {
        // MPI counts are 32-bit.
        return Err(Error::Config(format!(
            "a {cfg} model has more than {} parameters, too many for one MPI message",
            i32::MAX
        )));
    }
    if let Some(dir) = s.resume.as_ref().or(s.init_from.as_ref()) {
        if let Some(asked) = s.config.filter(|&asked| asked != cfg) {
            return Err(Error::checkpoint(
                dir.clone(),
                format!(
                    "it holds a {cfg} model with the {} tokenizer, but this run asks for {asked} with the {} tokenizer",
                    tokenizer_name(cfg.tokenizer),
                    tokenizer_name(asked.tokenizer),
                ),
            ));
        }
    }
    if let (Some(dir), Some(progress)) = (&s.resume, progress) {
        checkpoint::check_weights_fit(dir)?;
        let progress = progress?;
        // No run trains past its block size, which the weights (checked
        // above) share: the state is damaged or another model's.
        let trained = progress.schedule.and_then(|saved| saved.seq_len);
        if let Some(trained) = trained.filter(|&trained| trained > cfg.block_size) {
            return Err(Error::checkpoint(
                dir.clone(),
                format!(
                    "{} says its run trained at --seq-len {trained}, longer than the block size of {} of its weights: the files do not belong together",
                    checkpoint::TRAINING_FILE,
                    cfg.block_size
                ),
            ));
        }
        check_resume(s, dir, t, None, progress.step, progress.schedule)?;
    }
    cfg.validate()?;
    let data = DataSource::of(s.data.as_deref()).held_in_memory(Purpose::Training);
    let threads = Threads::resolved(s.threads);
    let products = Multiplier {
        kernels,
        precision: s.precision,
    };
    let bytes = check_memory(
        &cfg,
        (b, t),
        s.recompute,
        (threads, &[products]),
        s.optimizer_shard(crate::world::current()),
        data.as_ref(),
    )?;
    let held = bytes.saturating_add(data.as_ref().map_or(0, |(bytes, _)| *bytes));
    check_host(crate::world::current(), held)?;
    if let Some(dir) = s
        .save
        .as_ref()
        .filter(|_| crate::world::current().rank() == 0)
    {
        checkpoint::check_room(dir, &cfg)?;
    }
    Ok((cfg, b, t, bytes))
}

/// Trains a model as `settings` says; returns it with a report.
pub fn train(settings: &TrainSettings, kernels: Kernels) -> Result<(Gpt, TrainReport), Error> {
    let s = settings;
    let (cfg, b, t, model_bytes) = checked_shape(s, kernels)?;
    let threads = Threads::new(s.threads)?;
    // What `--save` held when the run was accepted.
    let seen = s.save.as_deref().and_then(checkpoint::saved_checkpoint);
    let world = crate::world::current();
    let (rank, ranks) = (world.rank(), world.size());
    // Rank 0 validates on the windows of the global batch.
    let val_windows = VAL_WINDOWS_PER_BATCH * b * ranks;
    // The data's names and kinds, then the checkpoint (reading it whole
    // is what proves it sound), then the data itself, which may take much
    // longer to read and tokenize.
    let source = DataSource::of(s.data.as_deref());
    source.check(cfg.tokenizer, Purpose::Training)?;
    // What a save records for `--resume` to read again, decided before a
    // pipe is read.
    let recorded_data = s.data.as_deref().and_then(rereadable);
    let (mut model, mut optimizer, mut rng, resumed) = start(s, cfg, t, kernels)?;
    let saved = resumed.schedule;
    let mut data = Dataset::load(
        &source,
        cfg.tokenizer,
        cfg.vocab_size,
        (t, val_windows * t + 1),
        model_bytes,
    )?;
    let fingerprint = data.fingerprint();
    if let Some(dir) = &s.resume {
        // Only now is the data known; a resumed run must train on the same.
        check_resume(s, dir, t, Some(fingerprint), optimizer.step, saved)?;
    }
    // A resumed run's data given through a pipe is its recorded data (the
    // fingerprints agree), so a save keeps that path.
    let recorded_data = recorded_data.or(resumed.data_path);
    // What every save records of the run.
    let schedule = s.schedule(ranks, t, Some(fingerprint));
    // Accepted: a refused run prints its error line alone.
    for warning in &s.warnings {
        log::warn!("{warning}");
    }
    if let Some(warning) = source.several_data_sets(Purpose::Training) {
        log::warn!("{warning}");
    }
    // A resumed schedule (`saved`) that may grow is not silently changed.
    let moved = saved.filter(|saved| saved.total_steps != s.steps);
    if let Some(saved) = moved.filter(|_| rank == 0) {
        log::warn!(
            "--steps {} is not the checkpoint's {}: the learning rate's decay now ends at step {} instead",
            s.steps,
            saved.total_steps,
            s.steps
        );
    }
    // The outputs were checked up front; the run is accepted, so the JSON
    // file may now be replaced.
    let leader = rank == 0;
    let mut json = match &s.json {
        Some(path) if leader => Some(JsonLines::create(path)?),
        _ => None,
    };
    // Rank 0's weights (initialized or loaded) are everyone's.
    world.broadcast(0, model.params_mut());
    model.set_threads(threads);
    model.set_precision(s.precision);
    model.set_recompute(s.recompute);
    let threads = model.threads().count();
    let opt_settings = s.optimizer();
    let shape = RunShape::new(t, b, kernels, threads, s.precision);

    log_world(world, threads);
    if ranks == 1 && s.shard_optimizer {
        log::warn!("--zero 1 shards the optimizer over the ranks of an MPI run; one process keeps all of it");
    }
    if ranks == 1 && !s.overlap {
        log::warn!("--no-overlap is for MPI runs, whose gradient reduction overlaps the backward pass; one process has none");
    }
    log_start(s, (&model, &optimizer), (&source, &data), t, kernels);
    let parallel = DataParallel {
        world,
        overlap: s.overlap,
    };

    let mut buffers = BatchBuffers::new(b, t);
    // Every rank draws the windows of all ranks (the same seeded stream,
    // so the windows of a seed and a world size do not depend on threads)
    // and keeps its own share.
    let mut global = BatchBuffers::new(b * ranks, t);
    let mut report = TrainReport {
        losses: Vec::new(),
        val_loss: None,
        tokens_per_sec: 0.0,
    };
    let run_start = Instant::now();
    let first = optimizer.step + 1;
    let last = s.stop_at.unwrap_or(s.steps);
    let (mut train_curve, mut val_curve) = (Vec::new(), Vec::new());
    // The steps' own time, for the run's throughput.
    let mut stepping_ms = 0.0;
    let progress = logger::progress_bar(u64::from(last - first + 1), "{pos}/{len} steps");
    // A record that cannot be written (a full disk) ends the run, but only
    // after the checkpoint of the steps done is saved: the log is not
    // worth the training.
    let mut unwritten = None;
    // Ctrl-C or SIGTERM, too, stops after the step under way and saves it
    // (until the run returns). Of several ranks, any one's signal stops
    // them all at the same step (on Ctrl-C, mpirun sends its ranks
    // SIGTERM but kills them a second later; a batch system waits longer).
    let notice = match s.save {
        Some(_) => {
            "stopping after the step under way, and saving it (Ctrl-C again ends the run at once)"
        }
        None => "stopping after the step under way (Ctrl-C again ends the run at once)",
    };
    let _catching = interrupt::catch(leader.then_some(notice));
    let mut stopped = false;
    for step in first..=last {
        let lr = opt_settings.lr_at(step);
        let before = rng.state();
        let batches = |inputs: &mut [u32], targets: &mut [u32]| {
            let (all_in, all_tgt) = (&mut global.inputs, &mut global.targets);
            data.train
                .sample_batch(b * ranks, t, &mut rng, all_in, all_tgt)?;
            let share = rank * b * t..(rank + 1) * b * t;
            inputs.copy_from_slice(&all_in[share.clone()]);
            targets.copy_from_slice(&all_tgt[share]);
            Ok(())
        };
        let stepped = train_step(
            &mut model,
            &mut optimizer,
            &opt_settings,
            lr,
            s.grad_accum,
            (b, t),
            &mut buffers,
            batches,
            parallel,
        );
        let times = match (stepped, &s.save) {
            (Ok(times), _) => times,
            // The data is read and the divergence found before the update
            // changes anything: the run as the last step left it is saved
            // (with the random state before this step's draws), so that
            // the steps this run did are not lost (where it did none, what
            // `--save` holds stays). Of several ranks, all meet a
            // divergence at once and save together; another rank's error
            // ends them all at once.
            (
                Err(e @ (Error::Diverged { .. } | Error::Data { .. } | Error::Io { .. })),
                Some(dir),
            ) if step > first && (ranks == 1 || e.ends_every_rank()) => {
                let data = (schedule, recorded_data);
                let rng = Rng::from_state(before);
                let saved = save_run((dir, seen), &model, &optimizer, &rng, data, world);
                // Holds the other ranks until rank 0 has saved (one that
                // ended first would have mpirun end it mid-save), and
                // tells them whether it did.
                let [unsaved] = raised_on_any_rank(world, [saved.is_err()]);
                return Err(match saved {
                    Ok(saved) if !unsaved => Error::StepFailed {
                        error: Box::new(e),
                        step: optimizer.step,
                        saved: saved.unwrap_or_else(|| dir.clone()),
                    },
                    Ok(_) => e,
                    Err(unsaved) => {
                        log::warn!("The run could not be saved: {unsaved}");
                        e
                    }
                });
            }
            (Err(e), _) => return Err(e),
        };
        if ranks > 1 {
            check_same_weights(world, model.params(), step)?;
        }
        report.losses.push(times.loss);
        stepping_ms += times.total_ms;
        train_curve.push((step, times.loss));
        if let Some(bar) = &progress {
            bar.inc(1);
        }
        let logged = step % s.log_every == 0 || step == first || step == last;
        if logged {
            log_step(&times, lr, b, t, step, s.steps);
        }
        // A run asked to stop is not kept waiting for a validation.
        let periodic = s.eval_every > 0 && step % s.eval_every == 0;
        let validate = (periodic || step == last) && !interrupt::requested();
        let eval = if validate && leader {
            let windows = (&data.val[..], t, b, Some(val_windows));
            Some(validate_at(step, &mut model, windows)?)
        } else {
            None
        };
        if let Some(eval) = &eval {
            report.val_loss = Some(eval.loss);
            val_curve.push((step, eval.loss));
        }
        if let Some(json) = json.as_mut() {
            let written = json
                .write(&times.record(step, lr, shape))
                .and_then(|()| eval.map_or(Ok(()), |eval| json.write(&eval.record(step, shape))));
            unwritten = written.err();
        }
        // Whether to stop after this step, the same verdict on every rank:
        // a record rank 0 could not write, or a signal any rank caught
        // during the step or its validation (a no-op on one process).
        let [unwritable, asked] =
            raised_on_any_rank(world, [unwritten.is_some(), interrupt::requested()]);
        if unwritable {
            break;
        }
        if asked {
            if !logged {
                log_step(&times, lr, b, t, step, s.steps);
            }
            stopped = true;
            break;
        }
    }
    logger::finish_progress();
    let steps_run = report.losses.len();
    if unwritten.is_some() {
        log::warn!(
            "Stopping after step {}: a --json record could not be written",
            optimizer.step
        );
    }
    report.tokens_per_sec = (steps_run * b * t * s.grad_accum * ranks) as f64 / (stepping_ms / 1e3);
    // Outside `info!`, which skips its arguments on quiet ranks: every
    // rank must join the collective.
    let peak = peak_memory(world);
    let ended = match stopped {
        true => "stopped",
        false => "complete",
    };
    info!(
        "Training {ended} - {steps_run} steps in {:.1} s | {:.1} tokens/sec in the steps | final loss {:.4} | Peak resident memory{peak}",
        run_start.elapsed().as_secs_f64(),
        report.tokens_per_sec,
        report.losses.last().copied().unwrap_or(f32::NAN),
    );
    let saved = match &s.save {
        Some(dir) => {
            let data = (schedule, recorded_data.clone());
            save_run((dir, seen), &model, &optimizer, &rng, data, world)?
        }
        None => None,
    };
    // After the checkpoint, for the same reason.
    let unplotted = match s.plot.as_ref().filter(|_| leader) {
        Some(path) => match plot::loss_curve(path, &train_curve, &val_curve) {
            Ok(()) => {
                info!("Wrote the loss curves to {}", path.display());
                None
            }
            Err(e) => Some(e),
        },
        None => None,
    };
    let mut failed = unwritten.into_iter().chain(unplotted);
    // A signal during the last step or the save is reported too, by every
    // rank (rank 0 says so): the process then ends as the signal would.
    // The sum also holds the ranks until rank 0 has saved: one that ended
    // first by its signal would have mpirun end rank 0 mid-save.
    let [late] = raised_on_any_rank(world, [interrupt::requested()]);
    if stopped || late {
        // The stop's line, with the command that continues, stays the
        // error.
        for e in failed {
            log::warn!("{e}");
        }
        let step = optimizer.step;
        let kept = match &saved {
            Some(dir) if step < s.steps => {
                // The checkpoint records data it can read again.
                let data = s
                    .data
                    .as_deref()
                    .filter(|_| recorded_data.is_none())
                    .map(|data| format!(" --data {}", shell_word(data)));
                let (dir, data) = (shell_word(dir), data.unwrap_or_default());
                let mpirun = match ranks {
                    1 => String::new(),
                    n => format!("mpirun -np {n} "),
                };
                // The checkpoint does not record it: a run may resume in
                // either.
                let precision = match s.precision {
                    Precision::F32 => String::new(),
                    other => format!(" --precision {}", other.name()),
                };
                format!(
                    "`{mpirun}runner train --resume {dir}{data}{precision} --save {dir}` continues the run"
                )
            }
            Some(dir) => format!("the trained model was saved to {}", dir.display()),
            None => "nothing was saved".to_string(),
        };
        let steps = s.steps;
        return Err(Error::Interrupted(format!(
            "after step {step} of {steps}; {kept}"
        )));
    }
    match failed.next() {
        Some(e) => {
            for also in failed {
                log::warn!("{also}");
            }
            Err(e)
        }
        None => Ok((model, report)),
    }
}

/// `path` as one word of a shell command to copy: as it is where it holds
/// nothing the shell would read otherwise, else in single quotes.
fn shell_word(path: &Path) -> String {
    let text = path.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c);
    match !text.is_empty() && text.chars().all(plain) {
        true => text.into_owned(),
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

/// Validates `model` on `(tokens, window length, batch, max windows)`
/// after `step`; logs the loss and its breakdown, and returns the
/// evaluation.
fn validate_at(
    step: u32,
    model: &mut Gpt,
    (tokens, t, b, windows): (&[u32], usize, usize, Option<usize>),
) -> Result<Evaluation, Error> {
    let eval = evaluate(model, tokens, t, b, windows)?;
    eval.log_breakdown(t);
    info!(
        "Validation loss: {:.4} (perplexity {:.2}) at step {step}",
        eval.loss,
        eval.perplexity()
    );
    Ok(eval)
}

/// Saves the model with its training state to `dir`, or beside it where
/// it changed from `seen` ([`checkpoint::save_unless_changed`]). Every
/// rank calls it: each sends its share of a sharded optimizer's state, and
/// rank 0 writes and returns where.
fn save_run(
    (dir, seen): (&Path, Option<SavedCheckpoint>),
    model: &Gpt,
    optimizer: &Optimizer,
    rng: &Rng,
    (schedule, data_path): (RunSchedule, Option<PathBuf>),
    world: &dyn Collective,
) -> Result<Option<PathBuf>, Error> {
    let Some((m, v)) = &optimizer.full_moments(world) else {
        return Ok(None);
    };
    let state = TrainingState {
        step: optimizer.step,
        rng_state: rng.state(),
        moments: (m.as_ref(), v.as_ref()),
        schedule: Some(schedule),
        data_path,
    };
    let saved = checkpoint::save_unless_changed(dir, seen, model, Some(&state))?;
    info!("Saved checkpoint to {}", saved.display());
    Ok(Some(saved))
}

/// `data` as a saved run records it for `--resume` to read again:
/// absolute, UTF-8 (the state file's metadata is text), and only a file
/// or a folder, not one of the system's (a pipe, or `/dev/stdin`
/// redirected from a file, cannot be read twice).
fn rereadable(data: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(data).ok()?;
    let path = std::path::absolute(data).ok()?;
    let system = ["/dev", "/proc"].iter().any(|dir| path.starts_with(dir));
    let usable = (meta.is_file() || meta.is_dir()) && !system && path.to_str().is_some();
    usable.then_some(path)
}

/// Token buffers of one micro-batch.
pub struct BatchBuffers {
    inputs: Vec<u32>,
    targets: Vec<u32>,
}

impl BatchBuffers {
    pub fn new(b: usize, t: usize) -> BatchBuffers {
        BatchBuffers {
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
        }
    }
}

/// Where one optimizer step's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimes {
    /// Mean training loss over the micro-batches.
    pub loss: f32,
    pub forward_ms: f64,
    pub loss_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    /// Waiting for the ranks to sum gradients and losses (and exchange
    /// the weights, with a sharded optimizer): 0 for one process.
    pub communication_ms: f64,
    /// Summing gradients while the backward pass ran (hidden behind it;
    /// the wait for the sums left after it is in `communication_ms`).
    pub overlapped_ms: f64,
    pub total_ms: f64,
    /// Tokens processed (all micro-batches, all ranks).
    pub tokens: usize,
}

impl StepTimes {
    pub fn tokens_per_sec(&self) -> f64 {
        self.tokens as f64 / (self.total_ms / 1e3)
    }

    /// The step as a `train_step` record.
    pub fn record(&self, step: u32, lr: f32, shape: RunShape) -> Record {
        Record::TrainStep(TrainStepRecord {
            step,
            loss: f64::from(self.loss),
            lr: f64::from(lr),
            forward_ms: self.forward_ms,
            backward_ms: self.backward_ms,
            optimizer_ms: self.optimizer_ms,
            loss_ms: self.loss_ms,
            communication_ms: self.communication_ms,
            overlapped_ms: self.overlapped_ms,
            total_ms: self.total_ms,
            tokens_per_sec: self.tokens_per_sec(),
            shape,
            peak_rss_bytes: peak_rss_bytes(),
        })
    }
}

/// One optimizer step: `grad_accum` micro-batches of `b × t` tokens drawn
/// by `batches(inputs, targets)` (which may fail reading them), forward,
/// loss, backward; the gradients summed over the ranks of `parallel`
/// (each scaled for the global batch, so the sum is the mean over every
/// rank's tokens), during the last backward pass or after it; then AdamW,
/// the same on every rank (or each rank its share, then the weights
/// exchanged, with a sharded `optimizer`).
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &mut Gpt,
    optimizer: &mut Optimizer,
    settings: &OptimizerSettings,
    lr: f32,
    grad_accum: usize,
    (b, t): (usize, usize),
    buffers: &mut BatchBuffers,
    mut batches: impl FnMut(&mut [u32], &mut [u32]) -> Result<(), Error> + Send,
    parallel: DataParallel,
) -> Result<StepTimes, Error> {
    // Enter the pool once per step rather than once per parallel piece of
    // work (see `PoolHandle::install`).
    let pool = model.threads().handle();
    pool.install(|| {
        let start = Instant::now();
        let world = parallel.world;
        let ranks = world.size();
        let overlap = ranks > 1 && parallel.overlap;
        let grad_scale = 1.0 / (b * t * grad_accum * ranks) as f32;
        let mut times = StepTimes {
            tokens: b * t * grad_accum * ranks,
            ..StepTimes::default()
        };
        let mut loss_sum = 0.0;
        model.zero_grad();
        for micro_batch in 1..=grad_accum {
            batches(&mut buffers.inputs, &mut buffers.targets)?;
            let t0 = Instant::now();
            model.forward(&buffers.inputs, b, t)?;
            times.forward_ms += ms_since(t0);
            let t1 = Instant::now();
            loss_sum += model.loss(&buffers.targets, Some(grad_scale))?;
            times.loss_ms += ms_since(t1);
            if overlap && micro_batch == grad_accum {
                let pass = backward_summing(model, world, optimizer.shards())?;
                times.backward_ms += pass.backward_ms;
                times.overlapped_ms = pass.overlapped_ms;
                times.communication_ms += pass.waiting_ms;
            } else {
                let t2 = Instant::now();
                model.backward()?;
                times.backward_ms += ms_since(t2);
            }
        }
        if ranks > 1 {
            let t = Instant::now();
            if !overlap {
                sum_gradients(world, optimizer.shards(), 0, model.grads_mut());
            }
            let mut loss = [f64::from(loss_sum)];
            world.all_reduce_f64(&mut loss);
            loss_sum = loss[0] as f32;
            times.communication_ms += ms_since(t);
        }
        let t3 = Instant::now();
        optimizer.update(model, settings, lr, world)?;
        times.optimizer_ms = ms_since(t3);
        if optimizer.is_sharded() {
            let t = Instant::now();
            optimizer.share_weights(model, world);
            times.communication_ms += ms_since(t);
        }
        times.total_ms = ms_since(start);
        times.loss = loss_sum / (grad_accum * ranks) as f32;
        Ok(times)
    })
}

/// Every rank's `value`, in rank order, on every rank (each rank fills its
/// own entry; the others add zeros).
fn each_rank(world: &dyn Collective, value: f64) -> Vec<f64> {
    let mut values = vec![0.0; world.size()];
    values[world.rank()] = value;
    world.all_reduce_f64(&mut values);
    values
}

/// `: 123.4 MiB`, or with several ranks, every rank's peak
/// (`per rank: 123.4, 120.1 MiB`).
fn peak_memory(world: &dyn Collective) -> String {
    if world.size() == 1 {
        return format!(": {:.1} MiB", mib(peak_rss_bytes() as f64));
    }
    let peaks = each_rank(world, peak_rss_bytes() as f64);
    let peaks: Vec<String> = peaks.iter().map(|&p| format!("{:.1}", mib(p))).collect();
    format!(" per rank: {} MiB", peaks.join(", "))
}

/// The start-up line of a run of several processes: how many, and each
/// rank's threads.
fn log_world(world: &dyn Collective, threads: usize) {
    if world.size() == 1 {
        return;
    }
    let counts = each_rank(world, threads as f64);
    let counts: Vec<String> = counts.iter().map(|&n| (n as usize).to_string()).collect();
    info!(
        "World: {} | Threads per rank: {}",
        world.describe(),
        counts.join(", ")
    );
}

/// Which of `flags` any rank raised: the same answer on every rank (a
/// no-op on one process).
fn raised_on_any_rank<const N: usize>(world: &dyn Collective, flags: [bool; N]) -> [bool; N] {
    let mut sums = flags.map(|flag| f64::from(u8::from(flag)));
    world.all_reduce_f64(&mut sums);
    sums.map(|sum| sum != 0.0)
}

/// Refuses to go on if the ranks' weights differ in any bit (they must not:
/// every rank makes the same update of the same summed gradients, or with
/// a sharded optimizer receives each share from its one owner), comparing
/// a hash of each rank's parameters.
fn check_same_weights(world: &dyn Collective, params: &[f32], step: u32) -> Result<(), Error> {
    let hash = params.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(x.to_bits())).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // Two exact halves, summed over the ranks: all equal iff the sums are
    // `size` times this rank's.
    let halves = [(hash >> 32) as f64, (hash & 0xffff_ffff) as f64];
    let mut sums = halves;
    world.all_reduce_f64(&mut sums);
    let n = world.size() as f64;
    if sums != [halves[0] * n, halves[1] * n] {
        return Err(Error::Ranks(format!(
            "the ranks' weights differ after step {step}: MPI did not give every rank the same bits"
        )));
    }
    Ok(())
}

/// The per-step log lines.
pub fn log_step(times: &StepTimes, lr: f32, b: usize, t: usize, step: u32, steps: u32) {
    info!(
        "Training step completed - Loss: {:.4} | Forward pass: {:.3} ms | Backward pass: {:.3} ms | Optimizer: {:.3} ms | Loss computation: {:.3} ms | Total: {:.3} ms | LR: {lr:.6} | Seq length: {t} | Batch: {b} | Step: {step}/{steps}",
        times.loss, times.forward_ms, times.backward_ms, times.optimizer_ms, times.loss_ms, times.total_ms
    );
    if times.communication_ms > 0.0 {
        let overlapped = match times.overlapped_ms {
            0.0 => String::new(),
            ms => format!("; {ms:.3} ms more summing gradients during the backward pass"),
        };
        info!(
            "Communication: {:.3} ms ({:.1} % of the step{overlapped}) | Throughput over all ranks: {:.1} tokens/sec",
            times.communication_ms,
            100.0 * times.communication_ms / times.total_ms,
            times.tokens_per_sec()
        );
        return;
    }
    info!("Throughput: {:.1} tokens/sec", times.tokens_per_sec());
}

#[cfg(test)]
mod tests {
    use super::shell_word;
    use std::path::Path;

    #[test]
    fn a_path_is_quoted_where_the_shell_would_split_or_expand_it() {
        assert_eq!(shell_word(Path::new("ck/run-1.5")), "ck/run-1.5");
        assert_eq!(shell_word(Path::new("my data.txt")), "'my data.txt'");
        assert_eq!(shell_word(Path::new("it's")), r"'it'\''s'");
        assert_eq!(shell_word(Path::new("$HOME/*")), "'$HOME/*'");
        assert_eq!(shell_word(Path::new("")), "''");
    }
}
