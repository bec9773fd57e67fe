//! Memory throughput (GB/s) of the element-wise, row-wise and transpose
//! kernels per backend, side by side, at a size that fits in L2 and one that
//! does not fit in L3. `KERNELS_BACKENDS=scalar,avx2` restricts backends.

use std::hint::black_box;
use std::time::Duration;

use benches::{backends, data};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use kernels::{Kernels, ValidLen};

/// Floats per array: 48 KiB (three arrays fit in a 512 KiB L2) and 12 MiB
/// (three arrays exceed a 32 MiB L3); both are whole numbers of 256- and
/// 384-float rows.
const SIZES: [(&str, usize); 2] = [("L2", 12 * 1024), ("DRAM", 3 * 1024 * 1024)];

fn configure<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    group
}

/// Benchmarks `op` on every backend and size; `arrays` is how many arrays of
/// `n` floats the routine reads or writes (for GB/s).
fn per_backend(
    c: &mut Criterion,
    name: &str,
    arrays: u64,
    mut op: impl FnMut(&Kernels, &mut [Vec<f32>; 3]),
) {
    let mut group = configure(c, name);
    for (label, n) in SIZES {
        let mut bufs = [data(n, 1), data(n, 2), data(n, 3)];
        group.throughput(Throughput::Bytes(arrays * 4 * n as u64));
        for k in backends() {
            group.bench_function(BenchmarkId::new(k.backend().name(), label), |b| {
                b.iter(|| op(&k, &mut bufs))
            });
        }
    }
    group.finish();
}

fn elementwise(c: &mut Criterion) {
    per_backend(c, "add", 3, |k, [a, b, out]| k.add(a, b, out).unwrap());
    per_backend(c, "sub", 3, |k, [a, b, out]| k.sub(a, b, out).unwrap());
    per_backend(c, "mul", 3, |k, [a, b, out]| k.mul(a, b, out).unwrap());
    per_backend(c, "axpy", 3, |k, [x, y, _]| k.axpy(1e-3, x, y).unwrap());
    per_backend(c, "scale", 2, |k, [x, _, _]| k.scale(0.999, x));
    per_backend(c, "add_bias", 2, |k, [x, bias, _]| {
        k.add_bias(&bias[..384], x).unwrap()
    });
    per_backend(c, "fill", 1, |k, [x, _, _]| k.fill(0.5, x));
    per_backend(c, "copy", 2, |k, [x, y, _]| k.copy(x, y).unwrap());
    per_backend(c, "sum_squares", 1, |k, [x, _, _]| {
        black_box(k.sum_squares(x));
    });
}

fn rowwise(c: &mut Criterion) {
    per_backend(c, "softmax_rows_256", 2, |k, [x, _, _]| {
        // Keep the inputs bounded: softmax output feeds the next iteration.
        k.softmax_rows(x, 256, ValidLen::All).unwrap()
    });
    let (gamma, beta) = (data(384, 5), data(384, 6));
    per_backend(c, "layer_norm_forward_384", 2, |k, [x, out, stats]| {
        let rows = x.len() / 384;
        let (mean, rstd) = stats.split_at_mut(rows);
        k.layer_norm_forward(x, &gamma, &beta, 1e-5, out, mean, &mut rstd[..rows])
            .unwrap()
    });
    per_backend(c, "gelu_forward", 2, |k, [x, out, _]| {
        k.gelu_forward(x, out).unwrap()
    });
    per_backend(c, "gelu_backward", 3, |k, [x, dout, dx]| {
        k.gelu_backward(x, dout, dx).unwrap()
    });
}

fn transpose(c: &mut Criterion) {
    let mut group = configure(c, "transpose");
    for (label, rows, cols) in [("L2", 128, 256), ("DRAM", 2048, 2048)] {
        let src = data(rows * cols, 4);
        let mut dst = vec![0.0; rows * cols];
        group.throughput(Throughput::Bytes(2 * 4 * (rows * cols) as u64));
        for k in backends() {
            group.bench_function(BenchmarkId::new(k.backend().name(), label), |b| {
                b.iter(|| k.transpose(rows, cols, &src, cols, &mut dst, rows).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, elementwise, rowwise, transpose);
criterion_main!(benches);
