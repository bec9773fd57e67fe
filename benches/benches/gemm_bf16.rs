//! bf16 GEMM throughput (GFLOP/s): every bf16 unit this CPU has
//! (AVX512-BF16, AMX) beside our f32 GEMM on the AVX-512 backend, on the
//! shapes of `gemm` (square and the trainer's), single-threaded, with f32
//! operands rounded while packing (as training runs them). Each unit's
//! peak loop runs in the same run; the table at the end gives GFLOP/s,
//! fraction of the unit's peak and the ratio to f32. `tools/torch_matmul.py`
//! times `torch.matmul` in bf16 on the same shapes.
//!
//! `cargo bench -p benches --bench gemm_bf16 [-- FILTER]`

use std::hint::black_box;
use std::time::Duration;

use benches::data;
use benches::report::median_ns;
use benches::shapes::{Shape, SHAPES};
use criterion::{BenchmarkId, Criterion, Throughput};
use kernels::{Backend, Bf16Unit, Kernels, MatMut};

/// Iterations of the peak loops per timed call.
const PEAK_ITERS: usize = 1_000_000;

/// The handles compared: f32 on AVX-512, then each bf16 unit beyond the
/// portable path.
fn contenders() -> Vec<(String, Kernels)> {
    let Ok(avx512) = Kernels::new(Backend::Avx512) else {
        eprintln!("notice: this CPU lacks AVX-512, so it has no bf16 unit to time");
        return Vec::new();
    };
    let mut all = vec![("f32".to_string(), avx512)];
    for unit in [Bf16Unit::Avx512Bf16, Bf16Unit::Amx] {
        match avx512.with_bf16_unit(unit) {
            Ok(k) => all.push((format!("bf16-{unit}"), k)),
            Err(e) => eprintln!("notice: skipping {unit}: {e}"),
        }
    }
    all
}

fn multiply(
    name: &str,
    k: &Kernels,
    s: &Shape,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    ws: &mut [f32],
) {
    let (a, b) = s.views(a, b);
    let c = MatMut::new(c, s.m, s.n).unwrap();
    if name == "f32" {
        k.gemm(1.0, a, b, 0.0, c, ws).unwrap();
    } else {
        k.gemm_bf16(1.0, a, b, 0.0, c, ws).unwrap();
    }
}

fn peak(name: &str, k: &Kernels, iters: usize) -> u64 {
    if name == "f32" {
        k.fma_peak_loop(iters)
    } else {
        k.bf16_peak_loop(iters)
    }
}

fn main() {
    benches::report::start_run();
    let mut c = Criterion::default().configure_from_args();
    let contenders = contenders();
    let mut group = c.benchmark_group("bf16_peak");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300));
    for (name, k) in &contenders {
        group.throughput(Throughput::Elements(peak(name, k, PEAK_ITERS)));
        group.bench_function(name.as_str(), |b| {
            b.iter(|| peak(name, k, black_box(PEAK_ITERS)))
        });
    }
    group.finish();
    for s in SHAPES {
        let mut group = c.benchmark_group(format!("gemm_bf16/{}", s.name));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(s.flops()));
        let (a, b) = (data(s.m * s.k, 1), data(s.k * s.n, 2));
        let mut out = vec![0.0; s.m * s.n];
        for (name, k) in &contenders {
            let len = if name == "f32" {
                k.gemm_workspace_len(s.m, s.n, s.k)
            } else {
                k.gemm_bf16_workspace_len(s.m, s.n, s.k)
            };
            let mut ws = vec![0.0; len];
            group.bench_function(BenchmarkId::new("kernels", name), |bench| {
                bench.iter(|| multiply(name, k, &s, &a, &b, &mut out, &mut ws))
            });
        }
        group.finish();
    }
    c.final_summary();
    table(&contenders);
}

/// One row per shape: GFLOP/s of each contender, the bf16 units' fraction
/// of their measured peak, and their speed over f32.
fn table(contenders: &[(String, Kernels)]) {
    let peaks: Vec<Option<f64>> = contenders
        .iter()
        .map(|(name, k)| {
            Some(peak(name, k, 1) as f64 * PEAK_ITERS as f64 / median_ns("bf16_peak", name)?)
        })
        .collect();
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!();
    benches::report::print_machine();
    for ((name, _), p) in contenders.iter().zip(&peaks) {
        println!("peak, one core, {name}: {} GFLOP/s", fmt(*p));
    }
    let mut header = "| shape |".to_string();
    for (name, _) in contenders {
        header += &format!(" {name} GFLOP/s | % peak |");
        if name != "f32" {
            header += &format!(" {name} / f32 |");
        }
    }
    println!("{header}");
    let columns = header.matches('|').count() - 1;
    println!("|{}", "---|".repeat(columns));
    for s in SHAPES {
        let group = format!("gemm_bf16/{}", s.name);
        let gflops: Vec<Option<f64>> = contenders
            .iter()
            .map(|(name, _)| {
                Some(s.flops() as f64 / median_ns(&group, &format!("kernels/{name}"))?)
            })
            .collect();
        if gflops.iter().all(Option::is_none) {
            continue;
        }
        let mut row = format!("| {} |", s.name);
        for (i, (name, _)) in contenders.iter().enumerate() {
            let pct = match (gflops[i], peaks[i]) {
                (Some(x), Some(p)) => format!("{:.0}%", 100.0 * x / p),
                _ => "-".to_string(),
            };
            row += &format!(" {} | {pct} |", fmt(gflops[i]));
            if name != "f32" {
                let ratio = match (gflops[i], gflops[0]) {
                    (Some(x), Some(f)) => format!("{:.2}x", x / f),
                    _ => "-".to_string(),
                };
                row += &format!(" {ratio} |");
            }
        }
        println!("{row}");
    }
}
