//! Summary tables built from the estimates criterion saved in this run, so
//! that the ratios a reader wants (fraction of peak, speed-up over a peer)
//! are printed rather than computed by hand.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::SystemTime;

use kernels::Backend;

use crate::peak::fma_loop;

/// Where criterion writes its results: `CRITERION_HOME`, else
/// `<target dir>/criterion`, the target dir being `CARGO_TARGET_DIR` or the
/// one holding this executable (`target/release/deps/<bench>`).
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.ancestors().nth(3)?.join("criterion"))
}

/// When this run started: estimates older than that are from another run
/// (another filter or backend set) and are left out.
static RUN_START: OnceLock<SystemTime> = OnceLock::new();

/// Marks the start of the run; call it before benchmarking.
pub fn start_run() {
    RUN_START.get_or_init(SystemTime::now);
}

/// The median time in nanoseconds criterion measured for `group`/`id` in
/// this run, if it did (nothing counts before [`start_run`] is called).
pub fn median_ns(group: &str, id: &str) -> Option<f64> {
    let path = criterion_dir()?
        .join(group.replace('/', "_"))
        .join(id)
        .join("new/estimates.json");
    let written = std::fs::metadata(&path).ok()?.modified().ok()?;
    if written < *RUN_START.get()? {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Single-core FMA peak in GFLOP/s for `backend` from this run's `fma_peak`
/// group.
pub fn peak_gflops(backend: Backend, iters: u64) -> Option<f64> {
    let flops = fma_loop(backend, 1)? * iters;
    Some(flops as f64 / median_ns("fma_peak", backend.name())?)
}

/// Prints one row per GEMM shape: GFLOP/s of each of our backends and
/// each peer that ran (matrixmultiply, OpenBLAS, MKL), our fraction of the
/// measured peak, and our speed relative to each peer; with
/// `KERNELS_GEMM_BLOCKING`, the derived blocking beside that one.
/// `mkl_version` is MKL's version line when it ran.
pub fn gemm_table(
    shapes: impl Iterator<Item = (&'static str, u64)> + Clone,
    peak_iters: u64,
    mkl_version: Option<&str>,
) {
    let overrides = shapes.clone();
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    let pct = |x: Option<f64>, p: Option<f64>| match (x, p) {
        (Some(x), Some(p)) => format!("{:.0}%", 100.0 * x / p),
        _ => "-".to_string(),
    };
    let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => format!("{:.2}x", x / y),
        _ => "-".to_string(),
    };
    let gflops = |name: &str, flops: u64, id: &str| {
        median_ns(&format!("gemm/{name}"), id).map(|ns| flops as f64 / ns)
    };
    // Columns only for what ran in this run.
    let ran = |id: &str| {
        shapes
            .clone()
            .any(|(name, f)| gflops(name, f, id).is_some())
    };
    let ours: Vec<(Backend, Option<f64>)> = [Backend::Avx2, Backend::Avx512]
        .into_iter()
        .filter(|b| ran(&format!("kernels/{}", b.name())))
        .map(|b| (b, peak_gflops(b, peak_iters)))
        .collect();
    let peers: Vec<&str> = ["matrixmultiply", "openblas", "mkl"]
        .into_iter()
        .filter(|id| ran(id))
        .collect();
    println!();
    print_machine();
    if let Some(version) = mkl_version {
        println!("MKL: {version}");
    }
    let peaks: Vec<String> = ours
        .iter()
        .map(|(b, p)| format!("{b} {} GFLOP/s", fmt(*p)))
        .collect();
    println!("FMA peak, one core: {}", peaks.join(", "));
    let mut header = vec!["shape".to_string()];
    for (b, _) in &ours {
        header.extend([format!("{b} GFLOP/s"), "% peak".into()]);
    }
    header.extend(peers.iter().map(|p| p.to_string()));
    for (b, _) in &ours {
        header.extend(peers.iter().map(|p| format!("{b} / {p}")));
    }
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for (name, flops) in shapes {
        let ours_here: Vec<Option<f64>> = ours
            .iter()
            .map(|(b, _)| gflops(name, flops, &format!("kernels/{}", b.name())))
            .collect();
        if ours_here.iter().all(Option::is_none) {
            continue;
        }
        let peers_here: Vec<Option<f64>> = peers.iter().map(|p| gflops(name, flops, p)).collect();
        let mut row = vec![name.to_string()];
        for (x, (_, peak)) in ours_here.iter().zip(&ours) {
            row.extend([fmt(*x), pct(*x, *peak)]);
        }
        row.extend(peers_here.iter().map(|&p| fmt(p)));
        for &x in &ours_here {
            row.extend(peers_here.iter().map(|&p| ratio(x, p)));
        }
        println!("| {} |", row.join(" | "));
    }
    let Some(blocking) = crate::blocking_override() else {
        return;
    };
    println!();
    println!(
        "Blocking derived from the caches beside KERNELS_GEMM_BLOCKING ({blocking}), GFLOP/s:"
    );
    println!("| shape | backend | derived | override | derived / override |");
    println!("|---|---|---|---|---|");
    for (name, flops) in overrides {
        for backend in ["avx2", "avx512"] {
            let derived = gflops(name, flops, &format!("kernels/{backend}"));
            let other = gflops(name, flops, &format!("kernels-override/{backend}"));
            if other.is_some() {
                println!(
                    "| {name} | {backend} | {} | {} | {} |",
                    fmt(derived),
                    fmt(other),
                    ratio(derived, other)
                );
            }
        }
    }
}

/// How many times faster `ours` runs than `peer`, timed call by call in
/// alternation: the median of `paired_ratios` over `pairs` pairs (made
/// odd, so the median is one pair's). On a shared core whose speed drifts
/// (a neighbour on the other hyperthread comes and goes), both calls of a
/// pair run in the same conditions, where criterion's groups, seconds
/// apart, may not.
pub fn paired_speedup(pairs: usize, ours: impl FnMut(), peer: impl FnMut()) -> f64 {
    let mut ratios = paired_ratios(pairs | 1, ours, peer);
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// The peer's time over ours in each of `pairs` pairs of calls, each
/// pair's order swapped from the last (after one untimed pair, so that
/// neither pays for first touches).
fn paired_ratios(pairs: usize, mut ours: impl FnMut(), mut peer: impl FnMut()) -> Vec<f64> {
    use std::time::Instant;
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64().max(f64::MIN_POSITIVE)
    };
    time(&mut ours);
    time(&mut peer);
    (0..pairs)
        .map(|i| {
            let (t_ours, t_peer) = if i % 2 == 0 {
                let t_ours = time(&mut ours);
                (t_ours, time(&mut peer))
            } else {
                let t_peer = time(&mut peer);
                (time(&mut ours), t_peer)
            };
            t_peer / t_ours
        })
        .collect()
}

/// The CPU's model and caches, and the f32 GEMM's blocking on each backend
/// it runs: the header of every report, so a table says where it was made.
pub fn print_machine() {
    let cpu = kernels::Cpu::detected();
    println!("CPU: {} ({})", cpu.model(), cpu.caches());
    for backend in Backend::ALL.into_iter().filter(|b| b.is_supported()) {
        if let Ok(k) = kernels::Kernels::new(backend) {
            println!("f32 GEMM blocking on {backend}: {}", k.gemm_blocking());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{paired_ratios, paired_speedup};

    #[test]
    fn every_pair_times_each_side_whichever_runs_first() {
        let nap = |ms| move || std::thread::sleep(Duration::from_millis(ms));
        // Sleeps overshoot by a millisecond or two on a busy machine, not
        // by 5; pairs 0 and 2 run ours first, pair 1 the peer.
        for ratio in paired_ratios(3, nap(10), nap(30)) {
            assert!((2.0..4.0).contains(&ratio), "{ratio}");
        }
        for ratio in paired_ratios(3, nap(30), nap(10)) {
            assert!((0.25..0.5).contains(&ratio), "{ratio}");
        }
        let median = paired_speedup(2, nap(10), nap(30));
        assert!((2.0..4.0).contains(&median), "{median}");
    }
}
