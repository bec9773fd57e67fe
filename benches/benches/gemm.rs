//! SGEMM throughput (GFLOP/s) of `kernels` beside `matrixmultiply`, OpenBLAS
//! (with `--features openblas`, linking the system's libopenblas), Intel MKL
//! (when `MKL_RT` names its library) and a
//! naive loop (small sizes), on square matrices and the trainer's shapes,
//! single-threaded. The FMA peak of the core is measured in the same run,
//! and a summary table with GFLOP/s, fraction of peak and ratios to the
//! peers is printed at the end.
//!
//! `cargo bench -p benches --bench gemm [--features openblas] [-- FILTER]`;
//! `MKL_RT=/path/to/libmkl_rt.so.3` adds Intel MKL (`python3 -m venv V &&
//! V/bin/pip install mkl` puts it at `V/lib/libmkl_rt.so.3`);
//! `KERNELS_BACKENDS=avx2` restricts our backends;
//! `KERNELS_GEMM_BLOCKING=MC,KC,NC[,LINES,MIN_N[,SWEEP[,STREAM]]]` times that
//! blocking (when A is packed: `0,0` always, `99,0` never; B panels per A
//! panel: `1` holds the B panel in L1; the smallest C in bytes stored past
//! the caches) beside the one derived from the caches. With MKL, a last
//! table times ours and MKL call by call in alternation and gives the
//! median ratio, which a shared core's drifting speed does not skew.

use std::hint::black_box;
use std::time::Duration;

use benches::mkl::Mkl;
use benches::report::{median_ns, paired_speedup};
use benches::shapes::{Shape, SHAPES};
use benches::{backends, blocking_override, data, peak};
use criterion::{BenchmarkId, Criterion, Throughput};
use kernels::{Backend, Kernels, MatMut};

fn ours(k: &Kernels, s: &Shape, a: &[f32], b: &[f32], c: &mut [f32], ws: &mut [f32]) {
    let (a, b) = s.views(a, b);
    k.gemm(1.0, a, b, 0.0, MatMut::new(c, s.m, s.n).unwrap(), ws)
        .unwrap();
}

fn matrixmultiply(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
    let ((rsa, csa), (rsb, csb)) = s.strides();
    // SAFETY: the strides describe `a` (m × k) and `b` (k × n) inside their
    // buffers, which hold exactly those elements, and `c` is m × n.
    unsafe {
        matrixmultiply::sgemm(
            s.m,
            s.k,
            s.n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            s.n as isize,
            1,
        );
    }
}

/// The textbook triple loop.
fn naive(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
    let ((rsa, csa), (rsb, csb)) = s.strides();
    for i in 0..s.m {
        for j in 0..s.n {
            let mut sum = 0.0;
            for l in 0..s.k {
                sum += a[i * rsa + l * csa] * b[l * rsb + j * csb];
            }
            c[i * s.n + j] = sum;
        }
    }
}

#[cfg(feature = "openblas")]
mod openblas {
    use std::os::raw::c_int;

    #[link(name = "openblas")]
    extern "C" {
        fn cblas_sgemm(
            layout: c_int,
            trans_a: c_int,
            trans_b: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f32,
            a: *const f32,
            lda: c_int,
            b: *const f32,
            ldb: c_int,
            beta: f32,
            c: *mut f32,
            ldc: c_int,
        );
        fn openblas_set_num_threads(threads: c_int);
    }

    pub fn single_thread() {
        // SAFETY: a plain setter of the library's thread count.
        unsafe { openblas_set_num_threads(1) }
    }

    pub fn sgemm(s: &super::Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
        // SAFETY: OpenBLAS's cblas_sgemm.
        unsafe { benches::cblas::sgemm(cblas_sgemm, s, a, b, c) }
    }
}

/// Iterations of the FMA loop per timed call.
const PEAK_ITERS: usize = 1_000_000;

fn bench_peak(c: &mut Criterion) {
    let mut group = c.benchmark_group("fma_peak");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300));
    let iters = PEAK_ITERS;
    for backend in [Backend::Avx2, Backend::Avx512] {
        let Some(flops) = peak::fma_loop(backend, 1) else {
            eprintln!("notice: this CPU lacks {backend}; no peak for it");
            continue;
        };
        group.throughput(Throughput::Elements(flops * iters as u64));
        group.bench_function(backend.name(), |b| {
            b.iter(|| peak::fma_loop(backend, black_box(iters)))
        });
    }
    group.finish();
}

fn bench_gemm(c: &mut Criterion, mkl: Option<&Mkl>) {
    #[cfg(feature = "openblas")]
    {
        for var in ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"] {
            if std::env::var_os(var).is_some() {
                eprintln!(
                    "warning: {var} is set and slows OpenBLAS; unset it for a fair comparison"
                );
            }
        }
        openblas::single_thread();
    }
    for s in SHAPES {
        let mut group = c.benchmark_group(format!("gemm/{}", s.name));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(s.flops()));
        let a = data(s.m * s.k, 1);
        let b = data(s.k * s.n, 2);
        let mut out = vec![0.0; s.m * s.n];
        for k in backends() {
            // The scalar reference is only worth timing at small sizes.
            if k.backend() == Backend::Scalar && s.flops() > 2 * 256 * 256 * 256 {
                continue;
            }
            let mut ws = vec![0.0; k.gemm_workspace_len(s.m, s.n, s.k)];
            group.bench_function(BenchmarkId::new("kernels", k.backend().name()), |bench| {
                bench.iter(|| ours(&k, &s, &a, &b, &mut out, &mut ws))
            });
            let Some(blocking) = blocking_override() else {
                continue;
            };
            match blocking.apply(k) {
                Ok(o) => {
                    let mut ws = vec![0.0; o.gemm_workspace_len(s.m, s.n, s.k)];
                    let id = BenchmarkId::new("kernels-override", k.backend().name());
                    group.bench_function(id, |bench| {
                        bench.iter(|| ours(&o, &s, &a, &b, &mut out, &mut ws))
                    });
                }
                Err(e) => eprintln!("notice: {}: blocking {blocking}: {e}", k.backend()),
            }
        }
        group.bench_function("matrixmultiply", |bench| {
            bench.iter(|| matrixmultiply(&s, &a, &b, &mut out))
        });
        #[cfg(feature = "openblas")]
        group.bench_function("openblas", |bench| {
            bench.iter(|| openblas::sgemm(&s, &a, &b, &mut out))
        });
        if let Some(mkl) = mkl {
            group.bench_function("mkl", |bench| {
                bench.iter(|| mkl.sgemm(&s, &a, &b, &mut out))
            });
        }
        if s.m.max(s.n).max(s.k) <= 128 {
            group.bench_function("naive", |bench| bench.iter(|| naive(&s, &a, &b, &mut out)));
        }
        group.finish();
    }
}

/// Our speed over MKL's on each shape both ran in this run, timed call by
/// call in alternation ([`benches::report::paired_speedup`]): the ratio
/// the targets are stated in, robust to a core whose speed drifts.
fn paired_with_mkl(mkl: &Mkl) {
    let ran = |name: &str, id: &str| median_ns(&format!("gemm/{name}"), id);
    let mut rows = Vec::new();
    for s in SHAPES {
        let Some(mkl_ns) = ran(s.name, "mkl") else {
            continue;
        };
        let a = data(s.m * s.k, 1);
        let b = data(s.k * s.n, 2);
        let mut out = vec![0.0; s.m * s.n];
        let mut peer_out = vec![0.0; s.m * s.n];
        for k in backends() {
            let Some(ours_ns) = ran(s.name, &format!("kernels/{}", k.backend().name())) else {
                continue;
            };
            // About a second and a half a shape, 11 to 301 pairs.
            let pairs = (1.5e9 / (ours_ns + mkl_ns)).clamp(11.0, 301.0) as usize;
            let mut ws = vec![0.0; k.gemm_workspace_len(s.m, s.n, s.k)];
            let speedup = paired_speedup(
                pairs,
                || ours(&k, &s, &a, &b, &mut out, &mut ws),
                || mkl.sgemm(&s, &a, &b, &mut peer_out),
            );
            rows.push(format!(
                "| {} | {} | {pairs} | {speedup:.2}x |",
                s.name,
                k.backend()
            ));
        }
    }
    if rows.is_empty() {
        return;
    }
    println!();
    println!("Paired with MKL, call by call (median of the pairs' ratios):");
    println!("| shape | backend | pairs | ours / mkl |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

fn main() {
    let mkl = match Mkl::from_env() {
        None => None,
        Some(Ok(mkl)) => Some(mkl),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    benches::report::start_run();
    let mut c = Criterion::default().configure_from_args();
    bench_peak(&mut c);
    bench_gemm(&mut c, mkl.as_ref());
    c.final_summary();
    benches::report::gemm_table(
        SHAPES.iter().map(|s| (s.name, s.flops())),
        PEAK_ITERS as u64,
        mkl.as_ref().map(|m| m.version.as_str()),
    );
    if let Some(mkl) = &mkl {
        paired_with_mkl(mkl);
    }
}
