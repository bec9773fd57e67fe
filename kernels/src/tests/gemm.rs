//! GEMM on every implementation against a naive triple loop in f64, on
//! shapes around every tile and block size, all four transpose
//! combinations, strided operands, and several alpha / beta.
//!
//! Tolerance: each element of C is a sum of k products formed in f32, so
//! its error is at most about (k + 2)·u·(|alpha|·Σ|a||b| + |beta·c|), with
//! u = 2⁻²⁴ (Higham's bound for recursive summation); the tests allow twice
//! that, per element.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::vec::Vec;

use super::freestanding::bits;
use super::*;
use crate::{Executor, KernelError, MatMut, MatRef, Sequential};

const SENTINEL: f32 = -777.25;

#[derive(Debug, Clone, Copy)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    /// Extra floats between rows of each stored matrix.
    pad: [usize; 3],
    alpha: f32,
    beta: f32,
}

/// A stored matrix with `rows × cols` used elements, `pad` extra floats per
/// row (holding `SENTINEL`) and an odd offset, so loads are unaligned.
struct Stored {
    buf: Vec<f32>,
    offset: usize,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl Stored {
    fn random(rng: &mut Rng, rows: usize, cols: usize, pad: usize) -> Stored {
        let stride = cols + pad;
        let offset = 1 + rng.below(5);
        let mut buf = std::vec![SENTINEL; offset + rows * stride + 3];
        for r in 0..rows {
            for c in 0..cols {
                buf[offset + r * stride + c] = rng.uniform(-1.0, 1.0);
            }
        }
        Stored {
            buf,
            offset,
            rows,
            cols,
            stride,
        }
    }
    fn at(&self, r: usize, c: usize) -> f32 {
        self.buf[self.offset + r * self.stride + c]
    }
    fn view(&self) -> MatRef<'_> {
        MatRef::strided(&self.buf[self.offset..], self.rows, self.cols, self.stride).unwrap()
    }
    fn view_mut(&mut self) -> MatMut<'_> {
        MatMut::strided(
            &mut self.buf[self.offset..],
            self.rows,
            self.cols,
            self.stride,
        )
        .unwrap()
    }
}

struct Inputs {
    a: Stored,
    b: Stored,
    c: Stored,
}

fn inputs(case: &Case, seed: u64) -> Inputs {
    let mut rng = Rng::new(seed);
    let (ar, ac) = if case.trans_a {
        (case.k, case.m)
    } else {
        (case.m, case.k)
    };
    let (br, bc) = if case.trans_b {
        (case.n, case.k)
    } else {
        (case.k, case.n)
    };
    let a = Stored::random(&mut rng, ar, ac, case.pad[0]);
    let b = Stored::random(&mut rng, br, bc, case.pad[1]);
    let mut c = Stored::random(&mut rng, case.m, case.n, case.pad[2]);
    if case.beta == 0.0 {
        // beta = 0 must not read C: NaN there must not reach the result.
        for r in 0..case.m {
            for j in 0..case.n {
                c.buf[c.offset + r * c.stride + j] = f32::NAN;
            }
        }
    }
    Inputs { a, b, c }
}

/// The f64 result and the per-element error allowance.
fn naive(case: &Case, x: &Inputs) -> (Vec<f64>, Vec<f64>) {
    let op_a = |i, l| if case.trans_a { x.a.at(l, i) } else { x.a.at(i, l) } as f64;
    let op_b = |l, j| if case.trans_b { x.b.at(j, l) } else { x.b.at(l, j) } as f64;
    let u = f64::from(f32::EPSILON) / 2.0;
    let (mut want, mut tol) = (Vec::new(), Vec::new());
    for i in 0..case.m {
        for j in 0..case.n {
            let (mut sum, mut mag) = (0.0, 0.0);
            for l in 0..case.k {
                sum += op_a(i, l) * op_b(l, j);
                mag += (op_a(i, l) * op_b(l, j)).abs();
            }
            let alpha = f64::from(case.alpha);
            let (c_term, c_mag) = if case.beta == 0.0 {
                (0.0, 0.0)
            } else {
                let c = f64::from(case.beta) * x.c.at(i, j) as f64;
                (c, c.abs())
            };
            want.push(alpha * sum + c_term);
            tol.push(2.0 * (case.k as f64 + 2.0) * u * (alpha.abs() * mag + c_mag) + 1e-30);
        }
    }
    (want, tol)
}

fn run_case(name: &str, kernels: Kernels, exec: &(impl Executor + ?Sized), case: &Case, seed: u64) {
    let mut x = inputs(case, seed);
    let (want, tol) = naive(case, &x);
    let mut workspace = std::vec![f32::NAN; kernels.gemm_workspace_len(case.m, case.n, case.k)];
    let (a, b) = (x.a.view(), x.b.view());
    let a = if case.trans_a { a.t() } else { a };
    let b = if case.trans_b { b.t() } else { b };
    kernels
        .gemm_with(
            exec,
            case.alpha,
            a,
            b,
            case.beta,
            x.c.view_mut(),
            &mut workspace,
        )
        .unwrap_or_else(|e| panic!("{name} {case:?}: {e}"));
    for i in 0..case.m {
        for j in 0..case.n {
            let (got, want, tol) = (
                x.c.at(i, j) as f64,
                want[i * case.n + j],
                tol[i * case.n + j],
            );
            assert!(
                (got - want).abs() <= tol,
                "{name} {case:?}: C[{i}][{j}] = {got}, want {want} ± {tol}"
            );
        }
    }
    // Padding between rows of C and past its end is never touched.
    for (idx, &v) in x.c.buf.iter().enumerate() {
        let rel = idx.wrapping_sub(x.c.offset);
        let stride = x.c.stride.max(1);
        let inside = idx >= x.c.offset && rel / stride < case.m && rel % stride < case.n;
        if !inside {
            assert_eq!(v, SENTINEL, "{name} {case:?}: wrote outside C at {idx}");
        }
    }
}

/// Every implementation, scalar first.
fn every_kernel() -> Vec<(&'static str, Kernels)> {
    let mut all = std::vec![("scalar", scalar())];
    all.extend(simd_kernels());
    all
}

/// Dimensions around every tile (4, 6, 12 rows; 4, 16, 32 columns) and
/// common block sizes (MC 126–384, KC 256/384), plus 0, 1 and primes;
/// `gemm_under_any_blocking_matches_naive` crosses other block edges.
const DIMS: [usize; 26] = [
    0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 15, 16, 17, 31, 32, 33, 47, 97, 127, 143, 145, 191, 193,
    255, 257,
];

#[test]
fn gemm_matches_naive_loop_on_random_shapes() {
    let mut rng = Rng::new(42);
    for (name, kernels) in every_kernel() {
        for seed in 0..120 {
            let pick = |rng: &mut Rng| DIMS[rng.below(DIMS.len())];
            let (m, n, k) = (pick(&mut rng), pick(&mut rng), pick(&mut rng));
            let case = Case {
                m,
                n,
                k,
                trans_a: rng.below(2) == 1,
                trans_b: rng.below(2) == 1,
                pad: [
                    rng.below(2) * rng.below(9),
                    rng.below(2) * rng.below(9),
                    rng.below(2) * 5,
                ],
                alpha: [1.0, -0.5, 0.0][rng.below(3)],
                beta: [0.0, 1.0, 0.25][rng.below(3)],
            };
            run_case(name, kernels, &Sequential, &case, seed);
        }
    }
}

#[test]
fn gemm_every_transpose_alpha_and_beta() {
    for (name, kernels) in every_kernel() {
        // (2, 300, 517) and (4, 97, 260) take the small path split along k.
        let shapes = [
            (1, 7, 5),
            (3, 33, 17),
            (2, 300, 517),
            (4, 97, 260),
            (37, 41, 29),
            (61, 70, 300),
        ];
        for (m, n, k) in shapes {
            for trans in 0..4 {
                for alpha in [0.0, 1.0, -0.5] {
                    for beta in [0.0, 1.0, 0.25] {
                        let case = Case {
                            m,
                            n,
                            k,
                            trans_a: trans & 1 == 1,
                            trans_b: trans & 2 == 2,
                            pad: [3, 0, 2],
                            alpha,
                            beta,
                        };
                        run_case(name, kernels, &Sequential, &case, trans as u64);
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_across_column_blocks_and_several_k_passes() {
    // n past NC (4080 / 4096) and k past two passes of KC.
    for (name, kernels) in every_kernel() {
        for (m, n, k) in [(7, 4100, 3), (5, 4099, 9), (13, 50, 600)] {
            for trans in 0..4 {
                let case = Case {
                    m,
                    n,
                    k,
                    trans_a: trans & 1 == 1,
                    trans_b: trans & 2 == 2,
                    pad: [1, 1, 1],
                    alpha: -0.5,
                    beta: 0.25,
                };
                run_case(name, kernels, &Sequential, &case, 7);
            }
        }
    }
}

#[test]
fn gemm_packs_an_a_too_large_to_read_in_place() {
    // One pass over k = 256 (every kernel's KC is at least that) with A
    // just past the in-place limit, so that every panel of A is packed
    // (transposed or not), alone and split.
    let m = crate::gemm::blocked::DIRECT_A_FLOATS / 256 + 7;
    for (name, kernels) in every_kernel() {
        for trans_a in [false, true] {
            let case = Case {
                m,
                n: 5,
                k: 256,
                trans_a,
                trans_b: false,
                pad: [0, 0, 0],
                alpha: 1.0,
                beta: 0.25,
            };
            run_case(name, kernels, &Sequential, &case, 3);
            run_case(name, kernels, &Threads(2), &case, 4);
        }
    }
}

/// Runs the pieces on `threads` scoped threads pulling from a shared
/// counter, so pieces really do run at the same time and out of order.
struct Threads(usize);

impl Executor for Threads {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..self.0 {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= pieces {
                        break;
                    }
                    piece(i);
                });
            }
        });
    }
}

#[test]
fn gemm_split_across_threads_is_bit_identical_to_sequential() {
    for (name, kernels) in every_kernel() {
        for (m, n, k) in [
            (3, 3000, 40),
            (1, 1152, 384),
            (150, 200, 300),
            (301, 97, 13),
            // Fewer panels of B (9 of 32 columns) than 8 threads get two each.
            (40, 288, 200),
        ] {
            for trans in 0..4 {
                let case = Case {
                    m,
                    n,
                    k,
                    trans_a: trans & 1 == 1,
                    trans_b: trans & 2 == 2,
                    pad: [0, 2, 1],
                    alpha: 1.0,
                    beta: 0.25,
                };
                let (mut x, mut y) = (inputs(&case, 3), inputs(&case, 3));
                for (x, exec) in [
                    (&mut x, &Threads(3) as &dyn Executor),
                    (&mut y, &Sequential),
                ] {
                    let mut ws = std::vec![0.0; kernels.gemm_workspace_len(m, n, k)];
                    let (a, b) = (x.a.view(), x.b.view());
                    let a = if case.trans_a { a.t() } else { a };
                    let b = if case.trans_b { b.t() } else { b };
                    kernels
                        .gemm_with(exec, 1.0, a, b, 0.25, x.c.view_mut(), &mut ws)
                        .unwrap();
                }
                assert_eq!(x.c.buf, y.c.buf, "{name} {case:?}");
                run_case(name, kernels, &Threads(2), &case, 5);
                run_case(name, kernels, &Threads(8), &case, 6);
            }
        }
    }
}

/// Calls every piece index and one past the last (a safe `Executor` can).
struct OffByOne;

impl Executor for OffByOne {
    fn threads(&self) -> usize {
        4
    }
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        (0..=pieces).for_each(piece);
    }
}

/// Calls every piece index twice, on two threads at once.
struct EachTwice;

impl Executor for EachTwice {
    fn threads(&self) -> usize {
        4
    }
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| (0..pieces).for_each(piece));
            }
        });
    }
}

/// Calls no piece at all, and claims more threads than any machine has.
struct Idle;

impl Executor for Idle {
    fn threads(&self) -> usize {
        usize::MAX
    }
    fn run(&self, _: usize, _: &(dyn Fn(usize) + Sync)) {}
}

#[test]
fn run_pieces_runs_each_piece_once_in_a_good_executors_order() {
    use crate::parallel::run_pieces;
    use std::sync::Mutex;
    // Both sides of the count of pieces tracked one bit each.
    for pieces in [0, 1, 100, 4096, 4097, 10_000] {
        let unruly: [&dyn Executor; 4] = [&OffByOne, &EachTwice, &Idle, &Threads(3)];
        for exec in unruly {
            let runs: Vec<AtomicUsize> = (0..pieces).map(|_| AtomicUsize::new(0)).collect();
            run_pieces(exec, pieces, &|i| {
                runs[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                runs.iter().all(|r| r.load(Ordering::Relaxed) == 1),
                "{pieces} pieces: one ran other than once"
            );
        }
        // A sequential executor's order is the order the pieces run in.
        if pieces <= 4096 {
            let order = Mutex::new(Vec::new());
            run_pieces(&crate::tests::freestanding::Reversed(2), pieces, &|i| {
                order.lock().unwrap().push(i)
            });
            let want: Vec<usize> = (0..pieces).rev().collect();
            assert_eq!(order.into_inner().unwrap(), want);
        }
    }
}

#[test]
fn executors_that_break_their_contract_still_run_each_piece_once() {
    const GUARD: f32 = -7.0;
    let unruly: [&dyn Executor; 3] = [&OffByOne, &EachTwice, &Idle];
    for (name, kernels) in every_kernel() {
        // Split along k (small m), along columns, and blocked.
        for (m, n, k) in [(1, 256, 1024), (3, 3000, 40), (150, 200, 300)] {
            let case = Case {
                m,
                n,
                k,
                trans_a: false,
                trans_b: false,
                pad: [0, 0, 0],
                alpha: 1.0,
                beta: 0.5,
            };
            let product = |exec: &dyn Executor, bf16: bool| {
                let mut x = inputs(&case, 11);
                let len = match bf16 {
                    false => kernels.gemm_workspace_len(m, n, k),
                    true => kernels.gemm_bf16_workspace_len(m, n, k),
                };
                // A piece run twice or past the last writes past `len`.
                let mut ws = std::vec![GUARD; len + 4096];
                let (a, b, c) = (x.a.view(), x.b.view(), x.c.view_mut());
                match bf16 {
                    false => kernels.gemm_with(exec, 1.0, a, b, 0.5, c, &mut ws[..len]),
                    true => kernels.gemm_bf16_with(exec, 1.0, a, b, 0.5, c, &mut ws[..len]),
                }
                .unwrap();
                assert!(
                    ws[len..].iter().all(|&v| v == GUARD),
                    "{name} {case:?}: wrote past the workspace"
                );
                x.c.buf
            };
            for bf16 in [false, true] {
                let want = product(&Sequential, bf16);
                for exec in unruly {
                    assert_eq!(product(exec, bf16), want, "{name} {case:?} bf16 {bf16}");
                }
            }
        }
    }
}

/// Every transpose of each of `shapes` on `kernels` under the blocking
/// `(mc, kc, nc)`, with A always packed and never, in either order of the
/// tiles (each B panel held over the A panels, each A panel over two B
/// panels), against the naive product on each executor of `runs` (with
/// the seed of its operands).
fn under_blocking(
    name: &str,
    kernels: Kernels,
    (mc, kc, nc): (usize, usize, usize),
    shapes: &[(usize, usize, usize)],
    runs: &[(&dyn Executor, u64)],
) {
    for (a_lines, b_sweep) in [(0, 1), (usize::MAX, 1), (0, 2), (usize::MAX, 2)] {
        let blocked = kernels
            .with_gemm_blocking(mc, kc, nc)
            .unwrap()
            .with_gemm_a_packing(a_lines, 0)
            .with_gemm_b_sweep(b_sweep);
        assert_eq!(blocked.gemm_blocking().mc, mc);
        for &(m, n, k) in shapes {
            for trans in 0..4 {
                let case = Case {
                    m,
                    n,
                    k,
                    trans_a: trans & 1 == 1,
                    trans_b: trans & 2 == 2,
                    pad: [1, 2, 3],
                    alpha: -0.5,
                    beta: 0.25,
                };
                let what =
                    std::format!("{name} MC {mc} KC {kc} NC {nc} A {a_lines} sweep {b_sweep}");
                for &(exec, seed) in runs {
                    run_case(&what, blocked, exec, &case, seed);
                }
            }
        }
    }
}

/// Every pointer path of the loop nest on products small enough for Miri
/// (`cargo +nightly miri test -p kernels --features libm/force-soft-floats
/// --lib -- small_products`): A packed and read in place, two blocks along
/// each of m, n and k, edge tiles, the small-m path, every transpose, on
/// one thread and split over three.
#[test]
fn every_pointer_path_on_small_products() {
    for (name, kernels) in every_kernel() {
        let b = kernels.gemm_blocking();
        let (mr, nr) = (b.mr, b.nr);
        let shapes = [(mr + 3, nr + 5, 7), (3, nr + 5, 7)];
        let runs: [(&dyn Executor, u64); 2] = [(&Sequential, 7), (&Threads(3), 8)];
        under_blocking(name, kernels, (mr, 4, nr), &shapes, &runs);
    }
}

/// The portable bf16 unit's path for few rows (writing panels of C
/// through a raw pointer, the workspace taken as pair slots), small enough
/// for Miri (too small to split: `gemm_bf16_packed_matches_the_unpacked_product`
/// splits it): the sums of the rounded operands, the same bits from a
/// packed and an unpacked B, and C's padding between rows untouched.
#[test]
fn bf16_few_rows_pointer_paths_on_small_products() {
    let (m, n, k) = (3, 70, 5);
    let mut rng = Rng::new(11);
    let (a, b) = (rng.vec(m * k, -2.0, 2.0), rng.vec(k * n, -2.0, 2.0));
    let ldc = n + 3;
    for (name, kernels) in every_kernel() {
        let kernels = kernels.with_bf16_unit(crate::Bf16Unit::Portable).unwrap();
        let mut slots = std::vec![0; crate::PackedBf16::len(k, n).unwrap()];
        kernels
            .pack_bf16(MatRef::new(&b, k, n).unwrap(), &mut slots)
            .unwrap();
        let packed = crate::PackedBf16::new(&slots, k, n).unwrap();
        let mut results = Vec::new();
        let runs: [&dyn Executor; 2] = [&Sequential, &Threads(3)];
        for exec in runs {
            for from_packed in [false, true] {
                let mut c = std::vec![f32::NAN; (m - 1) * ldc + n];
                let out = MatMut::strided(&mut c, m, n, ldc).unwrap();
                let a_view = MatRef::new(&a, m, k).unwrap();
                if from_packed {
                    let mut ws =
                        std::vec![f32::NAN; kernels.gemm_bf16_packed_workspace_len(m, n, k)];
                    kernels
                        .gemm_bf16_packed_with(exec, 0.5, a_view, packed, 0.0, out, &mut ws)
                        .unwrap();
                } else {
                    let b = MatRef::new(&b, k, n).unwrap();
                    let mut ws = std::vec![f32::NAN; kernels.gemm_bf16_workspace_len(m, n, k)];
                    kernels
                        .gemm_bf16_with(exec, 0.5, a_view, b, 0.0, out, &mut ws)
                        .unwrap();
                }
                for r in 0..m - 1 {
                    assert!(
                        c[r * ldc + n..(r + 1) * ldc].iter().all(|x| x.is_nan()),
                        "{name}"
                    );
                }
                assert!(
                    (0..m).all(|r| c[r * ldc..][..n].iter().all(|x| x.is_finite())),
                    "{name}: an element of C was not written"
                );
                for r in 0..m {
                    for j in 0..n {
                        let round = |x: f32| f64::from(crate::Bf16::from_f32(x).to_f32());
                        let want: f64 = 0.5
                            * (0..k)
                                .map(|l| round(a[r * k + l]) * round(b[l * n + j]))
                                .sum::<f64>();
                        let got = f64::from(c[r * ldc + j]);
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{name}: C[{r}][{j}] = {got}, want {want}"
                        );
                    }
                }
                results.push(bits(&c));
            }
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{name}");
    }
}

#[test]
fn gemm_shape_errors_write_nothing() {
    let k = Kernels::best();
    let (a, b) = ([1.0; 6], [1.0; 6]);
    let mut c = [SENTINEL; 4];
    let mut ws = std::vec![0.0; 4096];
    let a23 = MatRef::new(&a, 2, 3).unwrap();
    // Inner dimensions differ: (2×3)·(2×3).
    let err = k.gemm(
        1.0,
        a23,
        MatRef::new(&b, 2, 3).unwrap(),
        0.0,
        MatMut::new(&mut c, 2, 2).unwrap(),
        &mut ws,
    );
    assert!(matches!(err, Err(KernelError::InvalidShape(_))));
    // C of the wrong shape: (2×3)·(3×2) into 1×4.
    let b32 = MatRef::new(&b, 3, 2).unwrap();
    let err = k.gemm(
        1.0,
        a23,
        b32,
        0.0,
        MatMut::new(&mut c, 1, 4).unwrap(),
        &mut ws,
    );
    assert!(matches!(err, Err(KernelError::InvalidShape(_))));
    assert_eq!(c, [SENTINEL; 4]);
    // Views check their own lengths and strides.
    assert!(matches!(
        MatRef::new(&a, 2, 2),
        Err(KernelError::LengthMismatch { .. })
    ));
    assert!(matches!(
        MatRef::strided(&a, 2, 3, 2),
        Err(KernelError::InvalidShape(_))
    ));
    assert!(matches!(
        MatRef::strided(&a, 2, 3, 4),
        Err(KernelError::LengthMismatch { .. })
    ));
    assert!(matches!(
        MatRef::new(&a, usize::MAX, 2),
        Err(KernelError::ShapeOverflow)
    ));
    assert!(
        MatRef::strided(&a, 1, 3, 0).is_ok(),
        "one row needs no stride"
    );
    assert!(matches!(
        MatMut::strided(&mut c, 2, 2, 3),
        Err(KernelError::LengthMismatch { .. })
    ));
}

#[test]
fn gemm_too_small_workspace_is_an_error() {
    for (name, kernels) in every_kernel() {
        let (m, n, k) = (20, 20, 20);
        let (a, b) = (std::vec![1.0; m * k], std::vec![1.0; k * n]);
        let mut c = std::vec![SENTINEL; m * n];
        let needed = kernels.gemm_workspace_len(m, n, k);
        assert!(needed > 0, "{name}");
        let mut ws = std::vec![0.0; needed - 1];
        let err = kernels.gemm(
            1.0,
            MatRef::new(&a, m, k).unwrap(),
            MatRef::new(&b, k, n).unwrap(),
            0.0,
            MatMut::new(&mut c, m, n).unwrap(),
            &mut ws,
        );
        assert_eq!(
            err,
            Err(KernelError::WorkspaceTooSmall {
                needed,
                actual: needed - 1
            }),
            "{name}"
        );
        assert!(c.iter().all(|&v| v == SENTINEL), "{name}: wrote C on error");
    }
}

#[test]
fn gemm_alpha_zero_does_not_read_a_or_b() {
    for (name, kernels) in every_kernel() {
        let (a, b) = ([f32::NAN; 12], [f32::INFINITY; 12]);
        let mut c = [2.0; 9];
        let mut ws = std::vec![0.0; kernels.gemm_workspace_len(3, 3, 4)];
        let c_view = MatMut::new(&mut c, 3, 3).unwrap();
        kernels
            .gemm(
                0.0,
                MatRef::new(&a, 3, 4).unwrap(),
                MatRef::new(&b, 4, 3).unwrap(),
                0.5,
                c_view,
                &mut ws,
            )
            .unwrap();
        assert_eq!(c, [1.0; 9], "{name}");
    }
}

/// Every implementation under blockings far from the derived ones (one-deep
/// passes, single-tile blocks, blocks that end inside a product), with A
/// always packed and always read in place, on shapes that cross each block
/// edge: every rule's output is only a choice among blockings this test
/// shows correct.
#[test]
fn gemm_under_any_blocking_matches_naive() {
    for (name, kernels) in every_kernel() {
        let b = kernels.gemm_blocking();
        let (mr, nr) = (b.mr, b.nr);
        let shapes = [
            (13, 37, 50),
            (29, 70, 17),
            (3 * mr + 5, 5 * nr + 3, 66),
            (5, 2 * nr + 1, 7),
        ];
        for blocking in [
            (mr, 1, nr),
            (mr, 7, 2 * nr),
            (3 * mr, 33, 5 * nr),
            (2 * mr, 1000, nr),
        ] {
            under_blocking(name, kernels, blocking, &shapes, &[(&Sequential, 11)]);
        }
    }
}

/// Streaming C past the caches changes no bit: every implementation, with
/// every C streamed and with none, on C from a line (rows a whole number
/// of lines apart, or not, which is not streamed), over whole tiles,
/// edges, a single row, alpha other than 1, k in one pass and in several
/// (never streamed), alone and split over threads; C starts as NaN, so
/// every element must be written.
#[test]
fn streamed_c_holds_the_same_bits_as_cached_c() {
    for (name, kernels) in every_kernel() {
        let b = kernels.gemm_blocking();
        let (mr, nr) = (b.mr, b.nr);
        for shape in [
            (3 * mr + 5, 2 * nr + 3, 40, 2 * nr + 16),
            (2 * mr, 2 * nr, 64, 2 * nr),
            (1, 64, 16, 64),
            (33, 80, 500, 96),
            (35, 40, 24, 40),
        ] {
            for exec in [&Sequential as &dyn Executor, &Threads(3)] {
                assert_streaming_changes_nothing(name, kernels, shape, |kernels, a, b, c| {
                    let mut ws =
                        std::vec![0.0; kernels.gemm_workspace_len(a.rows(), b.cols(), a.cols())];
                    kernels.gemm_with(exec, 0.5, a, b, 0.0, c, &mut ws).unwrap()
                });
            }
        }
    }
}

/// A row-major A 1024 wide (rows 4 KiB apart, all in one L1 set) is packed
/// by the derived rule where enough panels of B reuse it, and one 1000
/// wide is read in place by the AVX-512 tile (the tiles whose B panel
/// stays in L1 pack both): all match the naive product, alone and split.
#[test]
fn gemm_packs_an_a_whose_rows_crowd_an_l1_set() {
    for (name, kernels) in every_kernel() {
        let b = kernels.gemm_blocking();
        for k in [1024, 1000] {
            let case = Case {
                m: 2 * b.mr + 3,
                n: 16 * b.nr + 3,
                k,
                trans_a: false,
                trans_b: false,
                pad: [0, 0, 0],
                alpha: 1.0,
                beta: 0.5,
            };
            run_case(name, kernels, &Sequential, &case, 5);
            run_case(name, kernels, &Threads(2), &case, 6);
        }
    }
}

/// The reported blocking is the one each instruction set's loop nest uses,
/// and consistent: blocks are whole tiles.
#[test]
fn the_reported_blocking_is_whole_tiles() {
    let all = [("scalar", super::scalar())]
        .into_iter()
        .chain(super::simd_kernels());
    for (name, k) in all {
        let b = k.gemm_blocking();
        assert!(b.mr > 0 && b.nr > 0 && b.kc > 0, "{name}: {b}");
        assert_eq!(b.mc % b.mr, 0, "{name}: {b}");
        assert_eq!(b.nc % b.nr, 0, "{name}: {b}");
        assert!(std::format!("{b}").contains(&std::format!("KC {}", b.kc)));
    }
}

/// The caches cpuid reports are plausible for a CPU of this century, and
/// print in KiB or MiB.
#[test]
fn the_detected_caches_are_plausible() {
    let cpu = crate::Cpu::detected();
    let c = cpu.caches();
    std::println!("{}: {c}", cpu.model());
    assert!(!cpu.model().is_empty());
    if c.l1d == 0 {
        std::eprintln!("notice: this CPU reports no caches through cpuid");
        return;
    }
    assert!((8 << 10..=1 << 20).contains(&c.l1d), "{c}");
    assert!(c.l2 >= c.l1d && c.l2 <= 64 << 20, "{c}");
    assert!(c.l3 == 0 || c.l3 >= c.l2, "{c}");
    let shown = std::format!(
        "{}",
        crate::Caches {
            l1d: 48 << 10,
            l1d_ways: 12,
            l2: 2 << 20,
            l3: 0
        }
    );
    assert_eq!(shown, "L1d 48 KiB 12-way, L2 2 MiB, L3 ?");
    assert!(c.l1d_ways > 0 && c.l1d.is_multiple_of(c.l1d_ways), "{c}");
}

/// Packing a panel whose lines run along k (a row-major A, a transposed B)
/// transposes it in registers: every panel width up to two vectors (the
/// tiles' MR and NR among them), depths around the vector width and a
/// pass's, lines at odd offsets and strides, into a NaN-filled panel
/// between guards; the result must be the element-wise definition, bit
/// for bit.
#[test]
fn panel_packing_interleaves_every_width_and_depth() {
    use crate::dispatch::dispatch;
    use crate::gemm::packing::{interleave_scalar, interleave_simd};
    use crate::simd::Simd;
    let mut rng = Rng::new(41);
    for (name, k) in simd_kernels() {
        let lanes = dispatch!(k, scalar: 1, simd: |s| s.lanes());
        for width in (1..=2 * lanes).chain([3 * lanes]) {
            for steps in [1, 2, 7, 8, 9, 15, 16, 17, 33, 383, 384] {
                let stride = steps + width % 5;
                let src = rng.vec(3 + width * stride, -1.0, 1.0);
                let lines: Vec<&[f32]> = (0..width)
                    .map(|x| &src[3 + x * stride..][..steps])
                    .collect();
                let what = ctx("panel packing", name, width * 1000 + steps);
                let mut got = Guarded::new(width * steps, width + steps);
                dispatch!(k, scalar: unreachable!(), simd: |s| interleave_simd(s, &lines, got.get_mut()));
                let got = got.checked(&what);
                let mut want = std::vec![f32::NAN; width * steps];
                interleave_scalar(&lines, width, 0, &mut want);
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {i}");
                    assert_eq!(w, lines[i % width][i / width], "{what}: element {i}");
                }
            }
        }
    }
}
