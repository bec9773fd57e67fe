//! Measurements shared by `train`, `bench` and `generate`: the process's
//! peak memory, the machine's FMA peak, and the `--json` records, one
//! typed record per kind, serialized here and nowhere else.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kernels::{Cpu, Kernels};
use serde::Serialize;

use crate::error::Error;
use crate::model::Precision;

/// Milliseconds since `start`: every time a log line or record reports.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// The process's peak resident memory in bytes (Linux `VmHWM`), or 0 where
/// it cannot be read.
pub fn peak_rss_bytes() -> u64 {
    proc_kib("/proc/self/status", "VmHWM:").map_or(0, |kib| kib * 1024)
}

/// The machine's physical memory in bytes (Linux `MemTotal`), if known.
pub fn physical_memory_bytes() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemTotal:").map(|kib| kib * 1024)
}

/// Address space this process has mapped already (`VmSize`), which
/// `ulimit -v` counts too.
pub fn mapped_bytes() -> Option<u64> {
    proc_kib("/proc/self/status", "VmSize:").map(|kib| kib * 1024)
}

/// The `key:   123 kB` value of a `/proc` file, in KiB.
fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(key))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `bytes` in MiB, for log lines.
pub fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// `bytes` in GiB, for log lines.
pub fn gib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0 * 1024.0)
}

/// Peak GFLOP/s of `kernels` on `threads` cores for products in
/// `precision` (the backend's FMA loop for f32, its bf16 unit's loop for
/// bf16): `threads` (at most the cores here: more take turns on them)
/// times one core's, the best of 25 runs of the loop on
/// one thread. (Running the loop on every thread at once read low whenever
/// another process on this shared machine held a core: once 123 % MFU.
/// Five runs of a few milliseconds each still read low at times, by as
/// much as a quarter, and gave 103 %: noise only ever slows the loop, so
/// the best of many short runs is the peak.) This assumes one thread per
/// physical core; the runner's default is one per logical CPU, the same
/// where cores do not run two threads each.
pub fn measure_peak_gflops(kernels: Kernels, threads: usize, precision: Precision) -> f64 {
    const ITERS: usize = 2_000_000;
    let mut best = 0.0f64;
    for _ in 0..25 {
        let start = Instant::now();
        let flops = match precision {
            Precision::F32 => kernels.fma_peak_loop(ITERS),
            Precision::Bf16 => kernels.bf16_peak_loop(ITERS),
        };
        best = best.max(flops as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    threads.clamp(1, crate::threads::available_cores().max(1)) as f64 * best
}

/// One line of a `--json` file; `kind` names the variant. The README's
/// field table documents every field (a test holds the two together).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    TrainStep(TrainStepRecord),
    Eval(EvalRecord),
    Bench(BenchRecord),
    Generate(GenerateRecord),
}

impl Record {
    /// Every variant's `kind`: a file whose first line is a record of one
    /// of them is an earlier run's log, which a new `--json` replaces.
    pub const KINDS: [&str; 4] = ["train_step", "eval", "bench", "generate"];
}

/// What ran: the shape, the backend and the threads, and the machine.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunShape {
    pub seq_len: usize,
    pub batch: usize,
    pub backend: &'static str,
    pub threads: usize,
    /// Of the matrix products: `f32` or `bf16`.
    pub precision: &'static str,
    /// Where bf16 products run (`portable`, `avx512-bf16`, `amx`).
    pub bf16_unit: &'static str,
    /// The CPU's model name, as cpuid gives it.
    pub cpu: &'static str,
    pub gemm_blocking: GemmBlocking,
}

/// The f32 GEMM's blocking on the backend that ran ([`kernels::Blocking`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GemmBlocking {
    pub mr: usize,
    pub nr: usize,
    pub mc: usize,
    pub kc: usize,
    pub nc: usize,
    pub a_lines_per_set: usize,
    pub pack_a_min_n: usize,
    pub pack_transposed_a_min_n: usize,
    pub b_sweep: usize,
    pub stream_c_min_bytes: usize,
}

impl RunShape {
    /// `batch` sequences of `seq_len` tokens on `kernels` and `threads`,
    /// multiplying in `precision`.
    pub fn new(
        seq_len: usize,
        batch: usize,
        kernels: Kernels,
        threads: usize,
        precision: Precision,
    ) -> RunShape {
        let b = kernels.gemm_blocking();
        RunShape {
            seq_len,
            batch,
            backend: kernels.backend().name(),
            threads,
            precision: precision.name(),
            bf16_unit: kernels.bf16_unit().name(),
            cpu: Cpu::detected().model(),
            gemm_blocking: GemmBlocking {
                mr: b.mr,
                nr: b.nr,
                mc: b.mc,
                kc: b.kc,
                nc: b.nc,
                a_lines_per_set: b.a_lines_per_set,
                pack_a_min_n: b.pack_a_min_n,
                pack_transposed_a_min_n: b.pack_transposed_a_min_n,
                b_sweep: b.b_sweep,
                stream_c_min_bytes: b.stream_c_min_bytes,
            },
        }
    }
}

/// One optimizer step of `train`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainStepRecord {
    pub step: u32,
    /// f32 values are written as f64 (`5.550462245941162`), as the
    /// records always were.
    pub loss: f64,
    pub lr: f64,
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub loss_ms: f64,
    /// Waiting for the ranks' sums and weights (0 for one process).
    pub communication_ms: f64,
    /// Summing gradients while the backward pass ran.
    pub overlapped_ms: f64,
    pub total_ms: f64,
    pub tokens_per_sec: f64,
    #[serde(flatten)]
    pub shape: RunShape,
    pub peak_rss_bytes: u64,
}

/// One validation during `train`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRecord {
    pub step: u32,
    pub val_loss: f64,
    pub forward_ms: f64,
    pub cross_entropy_ms: f64,
    pub total_ms: f64,
    pub tokens_per_sec: f64,
    #[serde(flatten)]
    pub shape: RunShape,
    pub peak_rss_bytes: u64,
}

/// One training row of `bench` (medians over the timed steps).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchRecord {
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    pub total_ms: f64,
    pub tokens_per_sec: f64,
    pub gflops: f64,
    pub mfu: f64,
    pub peak_gflops: f64,
    pub speedup_vs_scalar: Option<f64>,
    /// Share of the step per kind of work.
    pub breakdown: std::collections::BTreeMap<&'static str, f64>,
    /// Processes the step ran on (`mpirun -np`; 1 otherwise).
    pub ranks: usize,
    /// Median time per step spent waiting for the ranks' sums (summing
    /// that overlaps the backward pass is `overlapped_ms`).
    pub communication_ms: f64,
    #[serde(flatten)]
    pub shape: RunShape,
    pub peak_rss_bytes: u64,
}

/// A `generate` run, or one decoding row of `bench` (which has
/// `uncached_tokens_per_sec` and none of the times).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerateRecord {
    pub tokens_per_sec: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncached_tokens_per_sec: Option<f64>,
    #[serde(flatten)]
    pub run: Option<GenerationTimes>,
    #[serde(flatten)]
    pub shape: RunShape,
    pub peak_rss_bytes: u64,
}

/// Where a `generate` run's time went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationTimes {
    pub tokens: usize,
    pub total_ms: f64,
    pub prompt_ms: f64,
    pub forward_ms: f64,
    pub sampling_ms: f64,
    pub kv_cache_bytes: usize,
}

/// A file of JSON records, one per line, flushed after each: the log of a
/// run as it goes (`train --json`).
pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
}

/// Writes `records` as the JSON-lines file `path` at once
/// ([`write_whole`](crate::outputs::write_whole)): the outputs of commands
/// that record only at their end.
pub fn write_records(path: &Path, records: &[Record]) -> Result<(), Error> {
    let mut bytes = Vec::new();
    for record in records {
        serde_json::to_writer(&mut bytes, record).map_err(|e| Error::io(path, e.into()))?;
        bytes.push(b'\n');
    }
    crate::outputs::write_whole(path, &bytes)
}

impl JsonLines {
    pub fn create(path: &Path) -> Result<JsonLines, Error> {
        let file = crate::outputs::open_output(path).map_err(|e| Error::io(path, e))?;
        Ok(JsonLines {
            path: path.into(),
            out: BufWriter::new(file),
        })
    }

    pub fn write(&mut self, record: &Record) -> Result<(), Error> {
        let path = &self.path;
        serde_json::to_writer(&mut self.out, record).map_err(|e| Error::io(path, e.into()))?;
        writeln!(self.out)
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// One record of each kind, with every optional field present.
    fn every_record() -> Vec<Record> {
        let shape = RunShape::new(1, 1, Kernels::best(), 1, crate::model::Precision::F32);
        vec![
            Record::TrainStep(TrainStepRecord {
                step: 1,
                loss: 1.0,
                lr: 1.0,
                forward_ms: 1.0,
                backward_ms: 1.0,
                optimizer_ms: 1.0,
                loss_ms: 1.0,
                communication_ms: 1.0,
                overlapped_ms: 1.0,
                total_ms: 1.0,
                tokens_per_sec: 1.0,
                shape,
                peak_rss_bytes: 1,
            }),
            Record::Eval(EvalRecord {
                step: 1,
                val_loss: 1.0,
                forward_ms: 1.0,
                cross_entropy_ms: 1.0,
                total_ms: 1.0,
                tokens_per_sec: 1.0,
                shape,
                peak_rss_bytes: 1,
            }),
            Record::Bench(BenchRecord {
                forward_ms: 1.0,
                backward_ms: 1.0,
                optimizer_ms: 1.0,
                total_ms: 1.0,
                tokens_per_sec: 1.0,
                gflops: 1.0,
                mfu: 1.0,
                peak_gflops: 1.0,
                speedup_vs_scalar: Some(1.0),
                breakdown: Default::default(),
                ranks: 1,
                communication_ms: 0.0,
                shape,
                peak_rss_bytes: 1,
            }),
            Record::Generate(GenerateRecord {
                tokens_per_sec: 1.0,
                uncached_tokens_per_sec: Some(1.0),
                run: Some(GenerationTimes {
                    tokens: 1,
                    total_ms: 1.0,
                    prompt_ms: 1.0,
                    forward_ms: 1.0,
                    sampling_ms: 1.0,
                    kv_cache_bytes: 1,
                }),
                shape,
                peak_rss_bytes: 1,
            }),
        ]
    }

    /// The backticked names in the first column of the README's `--json`
    /// field table.
    fn documented_fields() -> BTreeSet<String> {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let section = readme
            .split("### `--json FILE`")
            .nth(1)
            .expect("the README has a `--json FILE` section");
        let mut fields = BTreeSet::new();
        for row in section.lines().skip_while(|l| !l.starts_with('|')) {
            let Some(first) = row.strip_prefix('|').and_then(|r| r.split('|').next()) else {
                break;
            };
            for name in first.split('`').skip(1).step_by(2) {
                fields.insert(name.to_string());
            }
        }
        fields
    }

    #[test]
    fn kinds_lists_every_record_kind() {
        let kinds: Vec<String> = every_record()
            .iter()
            .map(|record| serde_json::to_value(record).unwrap()["kind"].to_string())
            .collect();
        let listed: Vec<String> = Record::KINDS.iter().map(|k| format!("\"{k}\"")).collect();
        assert_eq!(kinds, listed);
    }

    #[test]
    fn the_readme_documents_every_field_and_only_those() {
        let mut emitted = BTreeSet::new();
        for record in every_record() {
            let value = serde_json::to_value(&record).unwrap();
            emitted.extend(value.as_object().unwrap().keys().cloned());
        }
        assert_eq!(documented_fields(), emitted);
    }
}
