//! Measurements shared by `train`, `bench` and `generate`: the process's
//! peak memory, the machine's FMA peak, and JSON-lines output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kernels::Kernels;

use crate::error::Error;

/// The process's peak resident memory in bytes (Linux `VmHWM`), or 0 where
/// it cannot be read.
pub fn peak_rss_bytes() -> u64 {
    proc_kib("/proc/self/status", "VmHWM:").map_or(0, |kib| kib * 1024)
}

/// The machine's physical memory in bytes (Linux `MemTotal`), if known.
pub fn physical_memory_bytes() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemTotal:").map(|kib| kib * 1024)
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

/// Peak GFLOP/s of `kernels`' backend on `threads` cores: `threads` times
/// one core's, the best of 5 runs of its FMA-throughput loop on one thread.
/// (Running the loop on every thread at once read low whenever another
/// process on this shared machine held a core: once 123 % MFU.) This
/// assumes one thread per physical core, as the runner's default does.
pub fn measure_peak_gflops(kernels: Kernels, threads: usize) -> f64 {
    const ITERS: usize = 2_000_000;
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let flops = kernels.fma_peak_loop(ITERS);
        best = best.max(flops as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    threads.max(1) as f64 * best
}

/// A file of JSON objects, one per line, flushed after each.
pub struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonLines {
    pub fn create(path: &Path) -> Result<JsonLines, Error> {
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(JsonLines {
            path: path.into(),
            out: BufWriter::new(file),
        })
    }

    pub fn write(&mut self, value: &serde_json::Value) -> Result<(), Error> {
        let path = &self.path;
        serde_json::to_writer(&mut self.out, value).map_err(|e| Error::io(path, e.into()))?;
        writeln!(self.out)
            .and_then(|_| self.out.flush())
            .map_err(|e| Error::io(path, e))
    }
}
