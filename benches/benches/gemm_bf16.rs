//! bf16 GEMM throughput (GFLOP/s): every bf16 unit this CPU has
//! (AVX512-BF16, AMX) beside our f32 GEMM on the AVX-512 backend, on the
//! shapes of `gemm` (square and the trainer's), single-threaded. Each unit
//! runs three times: on f32 operands rounded while packing (as training's
//! activations), on operands already stored in bf16, and on those writing
//! a bf16 C (`-bf16c`: as `torch.matmul` runs on bf16 tensors, so that
//! `tools/torch_matmul.py` compares like with like). Every matrix starts
//! on a 64-byte line, as PyTorch's tensors do. Each unit's peak loop runs
//! in the same run; the table at the end gives GFLOP/s, fraction of the
//! unit's peak and the ratio to f32.
//!
//! `cargo bench -p benches --bench gemm_bf16 [-- FILTER]`

use std::hint::black_box;
use std::time::Duration;

use benches::report::median_ns;
use benches::shapes::{Shape, SHAPES};
use benches::{data, OnLine};
use criterion::{BenchmarkId, Criterion, Throughput};
use kernels::{Backend, Bf16, Bf16Unit, Kernels, MatMut};

/// Iterations of the peak loops per timed call.
const PEAK_ITERS: usize = 1_000_000;

/// What a contender multiplies.
#[derive(Clone, Copy, PartialEq)]
enum Operands {
    /// f32, with the f32 GEMM.
    F32,
    /// f32, rounded to bf16 while packing.
    Rounded,
    /// bf16 as stored.
    Stored,
    /// bf16 as stored, into a bf16 C.
    StoredToBf16,
}

/// One column of the report: a handle and what it multiplies.
struct Contender {
    name: String,
    /// The unit whose peak loop this contender is measured against (one
    /// loop per unit, shared by its contenders).
    unit: String,
    kernels: Kernels,
    operands: Operands,
}

impl Contender {
    /// Whether this contender times its unit's peak loop (the first of the
    /// unit's contenders does).
    fn times_peak(&self) -> bool {
        matches!(self.operands, Operands::F32 | Operands::Rounded)
    }
}

/// The handles compared: f32 on AVX-512, then each bf16 unit beyond the
/// portable path, on rounded and on stored bf16 operands.
fn contenders() -> Vec<Contender> {
    let Ok(avx512) = Kernels::new(Backend::Avx512) else {
        eprintln!("notice: this CPU lacks AVX-512, so it has no bf16 unit to time");
        return Vec::new();
    };
    let mut all = vec![Contender {
        name: "f32".into(),
        unit: "f32".into(),
        kernels: avx512,
        operands: Operands::F32,
    }];
    for unit in [Bf16Unit::Avx512Bf16, Bf16Unit::Amx] {
        match avx512.with_bf16_unit(unit) {
            Ok(kernels) => all.extend([
                Contender {
                    name: format!("bf16-{unit}"),
                    unit: format!("bf16-{unit}"),
                    kernels,
                    operands: Operands::Rounded,
                },
                Contender {
                    name: format!("bf16-{unit}-stored"),
                    unit: format!("bf16-{unit}"),
                    kernels,
                    operands: Operands::Stored,
                },
                Contender {
                    name: format!("bf16-{unit}-bf16c"),
                    unit: format!("bf16-{unit}"),
                    kernels,
                    operands: Operands::StoredToBf16,
                },
            ]),
            Err(e) => eprintln!("notice: skipping {unit}: {e}"),
        }
    }
    all
}

/// A shape's operands, in f32 and rounded to bf16, and its C in both.
struct Inputs {
    a: OnLine<f32>,
    b: OnLine<f32>,
    a16: OnLine<Bf16>,
    b16: OnLine<Bf16>,
    c: OnLine<f32>,
    c16: OnLine<Bf16>,
}

impl Inputs {
    fn new(s: &Shape) -> Inputs {
        let (a, b) = (data(s.m * s.k, 1), data(s.k * s.n, 2));
        let round =
            |x: &[f32]| OnLine::new(&x.iter().map(|&v| Bf16::from_f32(v)).collect::<Vec<_>>());
        Inputs {
            a16: round(&a),
            b16: round(&b),
            a: OnLine::new(&a),
            b: OnLine::new(&b),
            c: OnLine::new(&vec![0.0; s.m * s.n]),
            c16: OnLine::new(&vec![Bf16::default(); s.m * s.n]),
        }
    }
}

fn multiply(c: &Contender, s: &Shape, x: &mut Inputs, ws: &mut [f32]) {
    let out = MatMut::new(&mut x.c, s.m, s.n).unwrap();
    let k = &c.kernels;
    match c.operands {
        Operands::F32 => {
            let (a, b) = s.views(&x.a, &x.b);
            k.gemm(1.0, a, b, 0.0, out, ws).unwrap()
        }
        Operands::Rounded => {
            let (a, b) = s.views(&x.a, &x.b);
            k.gemm_bf16(1.0, a, b, 0.0, out, ws).unwrap()
        }
        Operands::Stored => {
            let (a, b) = s.views(&x.a16, &x.b16);
            k.gemm_bf16(1.0, a, b, 0.0, out, ws).unwrap()
        }
        Operands::StoredToBf16 => {
            let (a, b) = s.views(&x.a16, &x.b16);
            let out = MatMut::new(&mut x.c16, s.m, s.n).unwrap();
            k.gemm_bf16(1.0, a, b, 0.0, out, ws).unwrap()
        }
    }
}

fn peak(c: &Contender, iters: usize) -> u64 {
    if c.operands == Operands::F32 {
        c.kernels.fma_peak_loop(iters)
    } else {
        c.kernels.bf16_peak_loop(iters)
    }
}

fn main() {
    benches::report::start_run();
    let mut criterion = Criterion::default().configure_from_args();
    let contenders = contenders();
    let mut group = criterion.benchmark_group("bf16_peak");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300));
    for c in contenders.iter().filter(|c| c.times_peak()) {
        group.throughput(Throughput::Elements(peak(c, PEAK_ITERS)));
        group.bench_function(c.unit.as_str(), |b| {
            b.iter(|| peak(c, black_box(PEAK_ITERS)))
        });
    }
    group.finish();
    for s in SHAPES {
        let mut group = criterion.benchmark_group(format!("gemm_bf16/{}", s.name));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(s.flops()));
        let mut inputs = Inputs::new(&s);
        for c in &contenders {
            let k = &c.kernels;
            let len = if c.operands == Operands::F32 {
                k.gemm_workspace_len(s.m, s.n, s.k)
            } else {
                k.gemm_bf16_workspace_len(s.m, s.n, s.k)
            };
            let mut ws = vec![0.0; len];
            group.bench_function(BenchmarkId::new("kernels", &c.name), |bench| {
                bench.iter(|| multiply(c, &s, &mut inputs, &mut ws))
            });
        }
        group.finish();
    }
    criterion.final_summary();
    table(&contenders);
}

/// One row per shape: GFLOP/s of each contender, the bf16 units' fraction
/// of their measured peak, and their speed over f32.
fn table(contenders: &[Contender]) {
    let peaks: Vec<Option<f64>> = contenders
        .iter()
        .map(|c| Some(peak(c, 1) as f64 * PEAK_ITERS as f64 / median_ns("bf16_peak", &c.unit)?))
        .collect();
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    println!();
    benches::report::print_machine();
    for (c, p) in contenders
        .iter()
        .zip(&peaks)
        .filter(|(c, _)| c.times_peak())
    {
        println!("peak, one core, {}: {} GFLOP/s", c.unit, fmt(*p));
    }
    let mut header = "| shape |".to_string();
    for c in contenders {
        header += &format!(" {} GFLOP/s | % peak |", c.name);
        if c.operands != Operands::F32 {
            header += &format!(" {} / f32 |", c.name);
        }
    }
    println!("{header}");
    let columns = header.matches('|').count() - 1;
    println!("|{}", "---|".repeat(columns));
    for s in SHAPES {
        let group = format!("gemm_bf16/{}", s.name);
        let gflops: Vec<Option<f64>> = contenders
            .iter()
            .map(|c| Some(s.flops() as f64 / median_ns(&group, &format!("kernels/{}", c.name))?))
            .collect();
        if gflops.iter().all(Option::is_none) {
            continue;
        }
        let mut row = format!("| {} |", s.name);
        for (i, c) in contenders.iter().enumerate() {
            let pct = match (gflops[i], peaks[i]) {
                (Some(x), Some(p)) => format!("{:.0}%", 100.0 * x / p),
                _ => "-".to_string(),
            };
            row += &format!(" {} | {pct} |", fmt(gflops[i]));
            if c.operands != Operands::F32 {
                // (`contenders` puts f32 first.)
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
