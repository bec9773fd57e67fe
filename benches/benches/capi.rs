//! The cost of a call through the C ABI against the Rust call it wraps, on
//! a small routine where the overhead shows: softmax of one row of 64.
//!
//! `cargo bench -p benches --bench capi`

use std::hint::black_box;
use std::time::Duration;

use benches::data;
use criterion::Criterion;
use kernels::{Kernels, ValidLen};
use kernels_c::{kn_detected_backend, kn_softmax_rows, KN_OK};

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("abi_overhead/softmax_row_64");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let row = data(64, 1);
    let kernels = Kernels::best();
    let backend = kn_detected_backend();
    let mut x = row.clone();
    group.bench_function("rust", |b| {
        b.iter(|| {
            x.copy_from_slice(&row);
            kernels
                .softmax_rows(black_box(&mut x), 64, ValidLen::All)
                .unwrap();
        })
    });
    group.bench_function("c_abi", |b| {
        b.iter(|| {
            x.copy_from_slice(&row);
            // SAFETY: `x` holds 64 floats.
            let status =
                unsafe { kn_softmax_rows(backend, black_box(x.as_mut_ptr()), 64, 64, 0, 0) };
            assert_eq!(status, KN_OK);
        })
    });
    group.finish();
    c.final_summary();
}
