//! `runner bench`: timed training steps for each sequence length, backend
//! and thread count, with model FLOP utilisation against a peak measured in
//! the same run, then decoding speed with and without the KV cache.

use std::path::PathBuf;
use std::time::Instant;

use kernels::{Backend, Cpu, Kernels};
use log::info;

use crate::data::{self, DataSource};
use crate::error::Error;
use crate::logger::print_stdout;
use crate::memory::{check_host, check_memory, Footprint};
use crate::metrics::{
    measure_peak_gflops, mib, peak_rss_bytes, write_records, BenchRecord, GenerateRecord, Record,
    RunShape,
};
use crate::model::{Gpt, KvCache, ModelConfig, Multiplier, Precision};
use crate::rng::Rng;
use crate::threads::{available_cores, Threads};
use crate::train::optim::{Optimizer, OptimizerSettings};
use crate::train::{log_step, train_step, BatchBuffers, DataParallel, StepTimes};
use crate::world::Collective;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub config: ModelConfig,
    pub seq_lens: Vec<usize>,
    pub batch: usize,
    /// Timed steps per combination (after `WARMUP_STEPS`).
    pub steps: usize,
    pub backends: Vec<Backend>,
    /// Precisions of the matrix products, side by side.
    pub precisions: Vec<Precision>,
    pub threads: Vec<usize>,
    pub json: Option<PathBuf>,
    /// Time decoding as well (to the block size: long for the GPT-2 sizes).
    pub decoding: bool,
    /// Train with [`Gpt::set_recompute`].
    pub recompute: bool,
}

/// Untimed steps before the timed ones (allocation, caches, page faults).
const WARMUP_STEPS: usize = 2;

/// Timed steps per row beyond which `--steps` is surely a typo.
const MAX_STEPS: usize = 1 << 20;

/// The generation benchmark's prompt: it then decodes one token at a time up
/// to the block size (for `shakes`, 240 new tokens after 16).
const DECODE_PROMPT: usize = 16;

/// Tokens whose median time gives the decoding speed at a context length:
/// the ones ending there.
const DECODE_WINDOW: usize = 8;

/// Times the whole decoding run is repeated: the median then covers
/// `DECODE_RUNS · DECODE_WINDOW` passes per context length, so that a
/// moment when another process holds a core of this shared machine does not
/// decide the figure.
const DECODE_RUNS: usize = 5;

/// The kinds of work of a training row's `breakdown`, in table order.
pub const BREAKDOWN: [&str; 7] = [
    "matmul",
    "attention",
    "layer norm",
    "GELU",
    "softmax/cross-entropy",
    "optimizer",
    "other",
];

/// Model FLOPs per token of training at sequence length `t`: 6 per
/// parameter (forward and backward) plus attention's 12·L·C·T, as nanoGPT
/// counts them.
pub fn flops_per_token(cfg: &ModelConfig, t: usize) -> f64 {
    6.0 * cfg.param_count() as f64 + 12.0 * (cfg.layers * cfg.channels * t) as f64
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Runs the benchmark, logging each step, and prints the tables. MFU is
/// model FLOPs ([`flops_per_token`] × tokens/s) over the machine's peak:
/// the fastest backend's FMA loop (for bf16 rows, its bf16 unit's loop)
/// on the same number of threads, measured in this run.
pub fn run(s: &BenchSettings) -> Result<(Vec<BenchRecord>, Vec<GenerateRecord>), Error> {
    // Only rank 0 writes it, and only it checks: two ranks' probes of
    // one name would race.
    if let Some(path) = s
        .json
        .as_ref()
        .filter(|_| crate::world::current().rank() == 0)
    {
        crate::outputs::check_outputs(&[("--json", path)], &[], None)?;
    }
    let (kernels, pools) = checked_kernels(s)?;
    let cfg = s.config;
    let world = crate::world::current();
    let leader = world.rank() == 0;
    let tokens = DataSource::Embedded.eval_tokens(cfg.tokenizer, cfg.vocab_size, 0)?;
    let memory = log_header(s, &kernels);

    let mut rows: Vec<BenchRecord> = Vec::new();
    for pool in &pools {
        let peaks: Vec<f64> = s
            .precisions
            .iter()
            .map(|&precision| machine_peak(&kernels, pool.count(), precision))
            .map(|peak| world_peak(world, pool.count(), peak))
            .collect();
        for &t in &s.seq_lens {
            for &k in &kernels {
                for (&precision, &peak) in s.precisions.iter().zip(&peaks) {
                    let run = (k, precision, pool);
                    rows.push(measure_training(s, run, t, peak, &tokens)?);
                }
            }
        }
    }
    set_speedups_vs_scalar(&mut rows);

    let mut decode_rows = Vec::new();
    for &k in kernels.iter().filter(|_| s.decoding && leader) {
        for &precision in &s.precisions {
            for pool in &pools {
                let mut model = Gpt::new(cfg, k, 1)?;
                model.set_threads(pool.clone());
                model.set_precision(precision);
                decode_rows.extend(decode_speed(&mut model, &tokens)?);
            }
        }
    }
    // The tables first: a `--json` that fails (a full disk) loses no
    // measurement. It is written whole at the end, so an earlier run's
    // stays as it was until then.
    if leader {
        print_tables(&rows, &decode_rows, &memory)?;
    }
    if let Some(path) = s.json.as_deref().filter(|_| leader) {
        let bench = rows.iter().cloned().map(Record::Bench);
        let decoding = decode_rows.iter().cloned().map(Record::Generate);
        write_records(path, &bench.chain(decoding).collect::<Vec<_>>())?;
    }
    Ok((rows, decode_rows))
}

/// The handles of `s`'s backends and a pool per thread count, after
/// every check that needs no work: the settings, the memory, every thread
/// count (its pool built once, here, so that `--threads 1,0` is refused
/// before the 1-thread rows run) and what the CPU supports.
fn checked_kernels(s: &BenchSettings) -> Result<(Vec<Kernels>, Vec<Threads>), Error> {
    let cfg = s.config;
    cfg.validate()?;
    if s.steps == 0
        || s.batch == 0
        || s.seq_lens.is_empty()
        || s.backends.is_empty()
        || s.precisions.is_empty()
        || s.threads.is_empty()
    {
        return Err(Error::Config("bench needs at least one step, sequence length, backend and thread count, and a batch of at least 1".into()));
    }
    if let Some(&t) = s.seq_lens.iter().find(|&&t| t == 0 || t > cfg.block_size) {
        return Err(Error::Config(format!(
            "sequence length {t} is not in 1..={} (the block size)",
            cfg.block_size
        )));
    }
    if s.steps > MAX_STEPS {
        return Err(Error::Config(format!(
            "--steps {} is more than {MAX_STEPS} timed steps per row",
            s.steps
        )));
    }
    let kernels: Vec<Kernels> = s
        .backends
        .iter()
        .map(|&b| Kernels::new(b))
        .collect::<Result<_, _>>()?;
    let mms = multipliers(s, &kernels);
    let (t, threads) = (max_seq_len(s), pooled_threads(s));
    let bytes = check_memory(
        &cfg,
        (s.batch, t),
        s.recompute,
        (threads, &mms),
        (0, 1),
        None,
    )?;
    check_host(crate::world::current(), bytes)?;
    if s.decoding {
        let decoding = mms
            .iter()
            .map(|&mm| Footprint::decoding(&cfg, (threads, mm)));
        Footprint::largest(decoding).check(&format!("decoding with model {cfg}"), None)?;
    }
    let pools = s
        .threads
        .iter()
        .map(|&threads| Threads::new(Some(threads)))
        .collect::<Result<_, _>>()?;
    if let Some(warning) = s
        .threads
        .iter()
        .max()
        .and_then(|&n| Threads::oversubscribed(Some(n)))
    {
        log::warn!("{warning}");
    }
    Ok((kernels, pools))
}

/// The longest of the benchmarked sequence lengths (checked non-empty).
fn max_seq_len(s: &BenchSettings) -> usize {
    s.seq_lens.iter().copied().max().unwrap_or(0)
}

/// The threads of every pool: the bench keeps each for the whole run, and
/// each thread its own buffers.
fn pooled_threads(s: &BenchSettings) -> usize {
    s.threads.iter().sum()
}

/// Every backend in every precision benchmarked.
fn multipliers(s: &BenchSettings, kernels: &[Kernels]) -> Vec<Multiplier> {
    let each = |&kernels| {
        s.precisions
            .iter()
            .map(move |&precision| Multiplier { kernels, precision })
    };
    kernels.iter().flat_map(each).collect()
}

/// Logs what is benchmarked and on what: the model, the CPU and its
/// caches, the world, each backend's blocking; returns the memory line
/// (printed again under the tables).
fn log_header(s: &BenchSettings, kernels: &[Kernels]) -> String {
    let (cfg, max_t) = (s.config, max_seq_len(s));
    let n = cfg.param_count();
    info!("Benchmark of {cfg} ({:.2} M parameters), batch {}, {} timed steps after {WARMUP_STEPS} warm-up steps", n as f64 / 1e6, s.batch, s.steps);
    let cpu = Cpu::detected();
    info!("CPU: {} ({})", cpu.model(), cpu.caches());
    let world = crate::world::current();
    if world.size() > 1 {
        info!(
            "World: {}: training rows are every rank's tokens, decoding runs on rank 0",
            world.describe()
        );
    }
    for k in kernels {
        info!(
            "f32 GEMM blocking on {}: {}; bf16 products on {}",
            k.backend(),
            k.gemm_blocking(),
            k.bf16_unit()
        );
    }
    let kv_cache: Vec<String> = s
        .precisions
        .iter()
        .map(|&p| {
            format!(
                "{:.1} MiB ({})",
                mib(KvCache::bytes(&cfg, p) as f64),
                p.name()
            )
        })
        .collect();
    let threads = pooled_threads(s);
    let training =
        |&mm: &Multiplier| Footprint::training(&cfg, (s.batch, max_t), s.recompute, (threads, mm));
    let memory = format!(
        "Memory, at most: {} (B = {}, T = {max_t}, {threads} threads in all), KV cache {}",
        Footprint::largest(multipliers(s, kernels).iter().map(training)),
        s.batch,
        kv_cache.join(", ")
    );
    info!(
        "{memory} | Peak resident memory so far: {:.1} MiB",
        mib(peak_rss_bytes() as f64)
    );
    memory
}

/// Each row's speed-up over the scalar row of the same shape, threads and
/// precision, once every row is in (whatever order the backends ran in).
fn set_speedups_vs_scalar(rows: &mut [BenchRecord]) {
    let speed_of = |r: &BenchRecord| {
        let key = (r.shape.seq_len, r.shape.threads, r.shape.precision);
        (key, r.tokens_per_sec)
    };
    let scalar_speed: Vec<_> = rows
        .iter()
        .filter(|r| r.shape.backend == Backend::Scalar.name())
        .map(speed_of)
        .collect();
    for row in rows {
        let (key, speed) = speed_of(row);
        row.speedup_vs_scalar = scalar_speed
            .iter()
            .find(|(scalar_key, _)| *scalar_key == key)
            .map(|(_, scalar)| speed / scalar);
    }
}

/// The machine's peak GFLOP/s on `threads` threads for products in
/// `precision`, for MFU: the fastest loop among the benchmarked backends
/// and the best this CPU has.
fn machine_peak(kernels: &[Kernels], threads: usize, precision: Precision) -> f64 {
    let best = Kernels::best();
    let unit = |k: Kernels| match precision {
        Precision::F32 => format!("{} FMA", k.backend()),
        Precision::Bf16 => format!("{} bf16 ({})", k.backend(), k.bf16_unit()),
    };
    let mut peak = 0.0f64;
    for &k in kernels {
        let gflops = measure_peak_gflops(k, threads, precision);
        info!(
            "Peak of the {} loop on {threads} thread(s): {gflops:.1} GFLOP/s",
            unit(k)
        );
        peak = peak.max(gflops);
    }
    if !kernels.iter().any(|k| k.backend() == best.backend()) {
        let gflops = measure_peak_gflops(best, threads, precision);
        info!(
            "Peak of the {} loop on {threads} thread(s): {gflops:.1} GFLOP/s (the machine's peak, for MFU)",
            unit(best)
        );
        peak = peak.max(gflops);
    }
    peak
}

/// The peak of every rank together, from this rank's `peak` on
/// `threads` threads: the ranks on one host share its cores, so where
/// their threads outnumber them (`mpirun --bind-to none` with every rank
/// on all cores) each counts its share of them. The same on every rank;
/// `peak` itself in one process.
fn world_peak(world: &dyn Collective, threads: usize, peak: f64) -> f64 {
    if world.size() == 1 {
        return peak;
    }
    let mine = threads.clamp(1, available_cores()) as f64;
    let on_host = world.host_sum(mine);
    let host_cores = host_cores() as f64;
    let share = (host_cores / on_host).min(1.0);
    if share < 1.0 && world.rank() == 0 {
        log::warn!(
            "the ranks on this host run {on_host} threads on its {host_cores} cores: they take turns, and MFU counts the {host_cores} cores"
        );
    }
    let mut total = [peak * share];
    world.all_reduce_f64(&mut total);
    total[0]
}

/// Cores online on this machine, whichever of them this process may run
/// on (elsewhere than Unix, those it may).
fn host_cores() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: sysconf reads a system setting and touches no memory of
        // ours.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        usize::try_from(online).unwrap_or(0).max(available_cores())
    }
    #[cfg(not(unix))]
    available_cores()
}

/// One row of the training table: `s.steps` timed steps of `s.batch`
/// sequences of `t` tokens on `k` in `precision` on `threads` threads,
/// after `WARMUP_STEPS` untimed ones.
fn measure_training(
    s: &BenchSettings,
    (k, precision, pool): (Kernels, Precision, &Threads),
    t: usize,
    peak: f64,
    tokens: &[u32],
) -> Result<BenchRecord, Error> {
    let cfg = s.config;
    let world = crate::world::current();
    let ranks = world.size();
    let threads = pool.count();
    let mut model = Gpt::new(cfg, k, 1)?;
    model.set_threads(pool.clone());
    model.set_precision(precision);
    model.set_recompute(s.recompute);
    let mut optimizer = Optimizer::new(model.sizes());
    let settings = OptimizerSettings::new(1e-4, 0, (WARMUP_STEPS + s.steps) as u32);
    let mut buffers = BatchBuffers::new(s.batch, t);
    let mut rng = Rng::new(7);
    let mut timed: Vec<StepTimes> = Vec::new();
    for step in 0..WARMUP_STEPS + s.steps {
        if step == WARMUP_STEPS {
            model.take_profile();
        }
        let batches = |x: &mut [u32], y: &mut [u32]| {
            data::sample_batch(tokens, s.batch, t, &mut rng, x, y);
            Ok(())
        };
        let times = train_step(
            &mut model,
            &mut optimizer,
            &settings,
            1e-4,
            1,
            (s.batch, t),
            &mut buffers,
            batches,
            DataParallel {
                world,
                overlap: true,
            },
        )?;
        if step >= WARMUP_STEPS {
            let n = (step - WARMUP_STEPS + 1) as u32;
            log_step(&times, 1e-4, s.batch, t, n, s.steps as u32);
            timed.push(times);
        }
    }
    let profile = model.take_profile();
    let all_ms: f64 = timed.iter().map(|x| x.total_ms).sum();
    let optimizer_all: f64 = timed.iter().map(|x| x.optimizer_ms).sum();
    let part = |d: std::time::Duration| d.as_secs_f64() * 1e3 / all_ms;
    let mut shares = [
        part(profile.matmul),
        part(profile.attention),
        part(profile.layer_norm),
        part(profile.gelu),
        part(profile.cross_entropy),
        optimizer_all / all_ms,
        0.0,
    ];
    shares[6] = (1.0 - shares.iter().sum::<f64>()).max(0.0);
    let median_of = |f: fn(&StepTimes) -> f64| median(timed.iter().map(f).collect());
    let total_ms = median_of(|x| x.total_ms);
    // Under mpirun: the tokens of every rank, against every rank's peak
    // ([`world_peak`]).
    let tokens_per_sec = (s.batch * t * ranks) as f64 / (total_ms / 1e3);
    let gflops = flops_per_token(&cfg, t) * tokens_per_sec / 1e9;
    Ok(BenchRecord {
        forward_ms: median_of(|x| x.forward_ms + x.loss_ms),
        backward_ms: median_of(|x| x.backward_ms),
        optimizer_ms: median_of(|x| x.optimizer_ms),
        total_ms,
        tokens_per_sec,
        gflops,
        mfu: gflops / peak,
        peak_gflops: peak,
        speedup_vs_scalar: None,
        breakdown: BREAKDOWN.into_iter().zip(shares).collect(),
        ranks,
        communication_ms: median_of(|x| x.communication_ms),
        shape: RunShape::new(t, s.batch, k, threads, precision),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Decoding speed as a user sees it: a `DECODE_PROMPT`-token prompt, then
/// one token at a time through the cache up to the block size. The speed
/// at a context length is the median over the `DECODE_WINDOW` tokens ending
/// there in each of `DECODE_RUNS` runs; the uncached speed is one full
/// forward pass over that context per token (median of 3).
fn decode_speed(model: &mut Gpt, tokens: &[u32]) -> Result<Vec<GenerateRecord>, Error> {
    let t = model.config.block_size;
    let prompt = DECODE_PROMPT.min(t);
    let mut cache = model.new_cache();
    // seconds[i]: the passes that brought the context to `prompt + i + 1`,
    // one per run.
    let mut seconds: Vec<Vec<f64>> = (prompt..t).map(|_| Vec::new()).collect();
    for _ in 0..DECODE_RUNS {
        cache.clear();
        model.forward_cached(&mut cache, &tokens[..prompt])?;
        for (&tok, seconds) in tokens[prompt..t].iter().zip(&mut seconds) {
            let start = Instant::now();
            model.forward_cached(&mut cache, &[tok])?;
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    let contexts = [32, 64, 128, 256, 512, 1024]
        .into_iter()
        .filter(|&c| c <= t && c >= prompt + DECODE_WINDOW);
    let mut rows = Vec::new();
    for context in contexts {
        let window: Vec<f64> = seconds[context - prompt - DECODE_WINDOW..context - prompt]
            .iter()
            .flatten()
            .copied()
            .collect();
        let mut uncached = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            model.forward(&tokens[..context], 1, context)?;
            uncached.push(1.0 / start.elapsed().as_secs_f64());
        }
        rows.push(GenerateRecord {
            tokens_per_sec: 1.0 / median(window),
            uncached_tokens_per_sec: Some(median(uncached)),
            run: None,
            shape: RunShape::new(
                context,
                1,
                model.kernels(),
                model.threads().count(),
                model.precision(),
            ),
            peak_rss_bytes: peak_rss_bytes(),
        });
    }
    Ok(rows)
}

/// The backend column: `avx512`, or `avx512 bf16` for bf16 products.
fn what_ran(shape: &RunShape) -> String {
    match shape.precision {
        "f32" => shape.backend.to_string(),
        precision => format!("{} {precision}", shape.backend),
    }
}

/// Prints the tables to stdout (quietly stopping if stdout is closed, e.g.
/// piped into `head`).
fn print_tables(
    rows: &[BenchRecord],
    decode: &[GenerateRecord],
    memory: &str,
) -> Result<(), Error> {
    use std::fmt::Write as _;
    let mut out = String::new();
    macro_rules! outln {
        ($out:ident, $($arg:tt)*) => {{
            let _ = writeln!($out, $($arg)*);
        }};
    }
    out.push('\n');
    outln!(out, "| seq len | batch | backend | threads | forward ms | backward ms | optimizer ms | total ms | tokens/s | vs scalar | GFLOP/s | MFU |");
    outln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        outln!(
            out,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {} | {:.1} | {:.0}% |",
            r.shape.seq_len,
            r.shape.batch,
            what_ran(&r.shape),
            r.shape.threads,
            r.forward_ms,
            r.backward_ms,
            r.optimizer_ms,
            r.total_ms,
            r.tokens_per_sec,
            r.speedup_vs_scalar
                .map_or("-".into(), |x| format!("{x:.1}x")),
            r.gflops,
            100.0 * r.mfu
        );
    }
    out.push('\n');
    outln!(out, "Where the step goes (share of total step time):");
    outln!(
        out,
        "| seq len | backend | threads | {} |",
        BREAKDOWN.join(" | ")
    );
    outln!(out, "|---|---|---|{}", "---|".repeat(BREAKDOWN.len()));
    for r in rows {
        let shares: Vec<String> = BREAKDOWN
            .iter()
            .map(|kind| format!("{:.1}%", 100.0 * r.breakdown[kind]))
            .collect();
        outln!(
            out,
            "| {} | {} | {} | {} |",
            r.shape.seq_len,
            what_ran(&r.shape),
            r.shape.threads,
            shares.join(" | ")
        );
    }
    if !decode.is_empty() {
        out.push('\n');
        outln!(
            out,
            "Decoding, batch 1: a {DECODE_PROMPT}-token prompt, then one token at a time to the block size (median over {DECODE_RUNS} runs of the {DECODE_WINDOW} tokens ending at each context); uncached = a full forward pass per token:"
        );
        outln!(
            out,
            "| backend | threads | context | cached tokens/s | uncached tokens/s | cached / uncached |"
        );
        outln!(out, "|---|---|---|---|---|---|");
        for d in decode {
            let uncached = d.uncached_tokens_per_sec.unwrap_or(f64::NAN);
            outln!(
                out,
                "| {} | {} | {} | {:.0} | {:.1} | {:.1}x |",
                what_ran(&d.shape),
                d.shape.threads,
                d.shape.seq_len,
                d.tokens_per_sec,
                uncached,
                d.tokens_per_sec / uncached
            );
        }
    }
    out.push('\n');
    outln!(
        out,
        "{memory}\nPeak resident memory: {:.1} MiB",
        mib(peak_rss_bytes() as f64)
    );
    print_stdout(&out)
}
