//! The part of the tests that needs neither `std` nor the crate's
//! internals: the generator, strided operands, the bf16 product check and
//! the element-wise comparison within a tolerance.
//! `tools/amx-emulator` includes this file to run the same check on an
//! emulated AMX CPU with no OS, so it names the crate `kernels` and uses
//! only its public API and `alloc`.

use alloc::vec;
use alloc::vec::Vec;

use kernels::{
    Bf16, Bf16Input, Executor, KernelError, Kernels, MatMut, MatRef, PackedBf16, Sequential,
};

/// A small deterministic generator (xorshift64*), so tests need no crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Runs every piece, in reverse order, on this thread (as if split).
pub struct Reversed(pub usize);

impl Executor for Reversed {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        (0..pieces).rev().for_each(piece);
    }
}

/// How a test value becomes an operand element.
pub type Convert<T> = fn(f32) -> T;

/// A `rows × cols` matrix stored with `pad` extra elements per row (filled
/// with `fill`), from an odd offset ([`Stored::new`]) or from a chosen
/// distance past a 64-byte line ([`Stored::aligned`]).
pub struct Stored<T> {
    buf: Vec<T>,
    offset: usize,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<T: Copy> Stored<T> {
    pub fn new(
        values: &[f32],
        rows: usize,
        cols: usize,
        pad: usize,
        fill: T,
        convert: Convert<T>,
    ) -> Stored<T> {
        Stored::placed(values, (rows, cols, pad), fill, convert, |_| 3)
    }

    /// As [`Stored::new`], the first value `off` elements past the
    /// buffer's first 64-byte line (a `Vec` of 2-byte values is only
    /// 2-byte aligned).
    pub fn aligned(
        values: &[f32],
        (rows, cols, pad): (usize, usize, usize),
        off: usize,
        fill: T,
        convert: Convert<T>,
    ) -> Stored<T> {
        Stored::placed(values, (rows, cols, pad), fill, convert, |buf| {
            let size = core::mem::size_of::<T>();
            buf.as_ptr().align_offset(64).min(64 / size) + off
        })
    }

    /// The matrix from the offset `offset` gives for the buffer (at most
    /// 39 elements).
    fn placed(
        values: &[f32],
        (rows, cols, pad): (usize, usize, usize),
        fill: T,
        convert: Convert<T>,
        offset: impl FnOnce(&[T]) -> usize,
    ) -> Stored<T> {
        let stride = cols + pad;
        let mut buf = vec![fill; 40 + rows * stride + 2];
        let offset = offset(&buf);
        assert!(offset <= 39, "an offset of {offset}");
        for r in 0..rows {
            for c in 0..cols {
                buf[offset + r * stride + c] = convert(values[r * cols + c]);
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
    pub fn view(&self, transposed: bool) -> MatRef<'_, T> {
        let v =
            MatRef::strided(&self.buf[self.offset..], self.rows, self.cols, self.stride).unwrap();
        if transposed {
            v.t()
        } else {
            v
        }
    }
}

/// Asserts `|got - want| <= abs + rel·|want|` per element; NaN must meet
/// NaN and infinities must match exactly.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= abs + rel * w.abs()
        };
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// The bit patterns of `v`, to compare results exactly (NaN included).
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Rounds to bf16 and back.
fn rounded(x: f32) -> f64 {
    f64::from(Bf16::from_f32(x).to_f32())
}

/// One bf16 product: `C = alpha · op(A) · op(B) + beta · C`.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
}

/// Runs `case` on `kern` with operand element types `A` and `B` (values
/// from a generator seeded by the shape, stored strided with spares of
/// `fill`; for `beta = 0` C starts as NaN, which must not be read) and
/// returns C (`m × n`, contiguous), after checking every element against a
/// triple loop in f64 over the bf16-rounded operands.
///
/// Tolerance: the f32 GEMM's, (k + 2)·u·(|alpha|·Σ|a·b| + |beta·c|) with
/// u = 2⁻²⁴, doubled.
pub fn bf16_product<A: Bf16Input, B: Bf16Input>(
    name: &str,
    kern: Kernels,
    exec: &(impl Executor + ?Sized),
    case: Case,
    convert: (Convert<A>, Convert<B>),
    fill: (A, B),
) -> Vec<f32> {
    let Case {
        m,
        n,
        k,
        trans_a,
        trans_b,
        alpha,
        beta,
    } = case;
    let mut rng = Rng::new((m * 1000 + n * 10 + k) as u64);
    let a_vals = rng.vec(m * k, -2.0, 2.0);
    let b_vals = rng.vec(k * n, -2.0, 2.0);
    let c_vals = rng.vec(m * n, -1.0, 1.0);
    let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    let a = Stored::new(&a_vals, ar, ac, 1, fill.0, convert.0);
    let b = Stored::new(&b_vals, br, bc, 2, fill.1, convert.1);
    let op_a = |i: usize, l: usize| {
        if trans_a {
            a_vals[l * ac + i]
        } else {
            a_vals[i * ac + l]
        }
    };
    let op_b = |l: usize, j: usize| {
        if trans_b {
            b_vals[j * bc + l]
        } else {
            b_vals[l * bc + j]
        }
    };
    let mut c: Vec<f32> = if beta == 0.0 {
        vec![f32::NAN; m * n]
    } else {
        c_vals.clone()
    };
    let mut ws = vec![f32::NAN; kern.gemm_bf16_workspace_len(m, n, k)];
    kern.gemm_bf16_with(
        exec,
        alpha,
        a.view(trans_a),
        b.view(trans_b),
        beta,
        MatMut::new(&mut c, m, n).unwrap(),
        &mut ws,
    )
    .unwrap_or_else(|e| panic!("{name} {case:?}: {e}"));
    let u = f64::from(f32::EPSILON) / 2.0;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut mag) = (0.0, 0.0);
            for l in 0..k {
                let p = rounded(op_a(i, l)) * rounded(op_b(l, j));
                sum += p;
                mag += p.abs();
            }
            let c_term = if beta == 0.0 {
                0.0
            } else {
                f64::from(beta) * f64::from(c_vals[i * n + j])
            };
            let want = f64::from(alpha) * sum + c_term;
            let tol =
                2.0 * (k as f64 + 2.0) * u * (f64::from(alpha).abs() * mag + c_term.abs()) + 1e-30;
            let got = f64::from(c[i * n + j]);
            assert!(
                (got - want).abs() <= tol,
                "{name} {case:?}: C[{i}][{j}] = {got}, want {want} ± {tol}"
            );
        }
    }
    c
}

/// bf16 rows of A as tiles read them in place (starting on a 64-byte
/// line, rows whole lines apart, k a multiple of 32: whole panels of 32
/// rows, and a partial one that is packed), and as they cannot (off that
/// line, a stride that is not whole lines, k not such a multiple): every product
/// the same bits as the same values given as f32, which are always packed
/// (and checked against f64 by [`bf16_product`]), split or not.
pub fn bf16_rows_in_place(name: &str, kern: Kernels) {
    // (m, n, k, values off the line, padding per row)
    let cases = [
        (64, 40, 64, 0, 0),
        (70, 33, 96, 2, 4),
        (32, 1, 32, 0, 32),
        (130, 64, 160, 0, 0),
        (64, 40, 64, 1, 0),
        (64, 40, 64, 0, 1),
        (64, 40, 64, 0, 2),
        (64, 40, 48, 0, 0),
    ];
    for (i, (m, n, k, off, pad)) in cases.into_iter().enumerate() {
        let mut rng = Rng::new(i as u64 + 100);
        let a_vals = rng.vec(m * k, -2.0, 2.0);
        let b_vals = rng.vec(k * n, -2.0, 2.0);
        let c_vals = rng.vec(m * n, -1.0, 1.0);
        let nan = Bf16::from_bits(0x7FC1);
        let a16 = Stored::aligned(&a_vals, (m, k, pad), off, nan, Bf16::from_f32);
        let a16 = a16.view(false);
        let a32 = MatRef::new(&a_vals, m, k).unwrap();
        let b = MatRef::new(&b_vals, k, n).unwrap();
        let beta = [0.0, 0.5][i % 2];
        // C starts as NaN where beta = 0 (it must not be read).
        let c0 = if beta == 0.0 {
            vec![f32::NAN; m * n]
        } else {
            c_vals
        };
        let fail = |e: KernelError| -> Vec<f32> { panic!("{name} case {i}: {e}") };
        let f32s = product_from(kern, &Sequential, (a32, b, beta), &c0).unwrap_or_else(fail);
        let in_place = product_from(kern, &Sequential, (a16, b, beta), &c0).unwrap_or_else(fail);
        let split = product_from(kern, &Reversed(3), (a16, b, beta), &c0).unwrap_or_else(fail);
        if beta == 0.0 {
            assert!(
                f32s.iter().all(|x| x.is_finite()),
                "{name} case {i}: C was read"
            );
        }
        assert_eq!(bits(&f32s), bits(&in_place), "{name} case {i}: bf16 rows");
        assert_eq!(
            bits(&f32s),
            bits(&split),
            "{name} case {i}: bf16 rows, split"
        );
    }
}

/// `0.75 · a · b + beta · c0` in bf16 on `kern`, split by `exec`, with a
/// NaN-filled workspace.
fn product_from<A: Bf16Input>(
    kern: Kernels,
    exec: &(impl Executor + ?Sized),
    (a, b, beta): (MatRef<A>, MatRef, f32),
    c0: &[f32],
) -> Result<Vec<f32>, KernelError> {
    let (m, n, k) = (a.rows(), b.cols(), a.cols());
    let mut c = c0.to_vec();
    let mut ws = vec![f32::NAN; kern.gemm_bf16_workspace_len(m, n, k)];
    let c_view = MatMut::new(&mut c, m, n)?;
    kern.gemm_bf16_with(exec, 0.75, a, b, beta, c_view, &mut ws)?;
    Ok(c)
}

/// Sizes with every tail of the pair and tile layouts, primes, 0 and 1.
const DIMS: [usize; 12] = [0, 1, 2, 3, 5, 7, 13, 16, 17, 33, 97, 130];

/// `trials` products of shapes drawn from `DIMS` (by a generator seeded
/// with `seed`), every transpose, alpha and beta, each with f32, bf16 and
/// mixed operands holding the same values: each within the bound of
/// [`bf16_product`], and the three alike bit for bit.
pub fn bf16_random_products(name: &str, kern: Kernels, seed: u64, trials: usize) {
    let mut rng = Rng::new(seed);
    let nan = Bf16::from_bits(0x7FC1);
    for trial in 0..trials {
        let mut pick = || DIMS[rng.below(DIMS.len())];
        let case = Case {
            m: pick(),
            n: pick(),
            k: pick(),
            trans_a: trial & 1 == 1,
            trans_b: trial & 2 == 2,
            alpha: [1.0, -0.5, 2.0][trial % 3],
            beta: [0.0, 1.0, 0.25, 0.0][trial % 4],
        };
        let same: (Convert<f32>, Convert<f32>) = (|x| x, |x| x);
        let f32s = bf16_product(name, kern, &Sequential, case, same, (f32::NAN, f32::NAN));
        let halves: (Convert<Bf16>, Convert<Bf16>) = (Bf16::from_f32, Bf16::from_f32);
        let bf16s = bf16_product(name, kern, &Sequential, case, halves, (nan, nan));
        let mixed: (Convert<f32>, Convert<Bf16>) = (|x| x, Bf16::from_f32);
        let mixed = bf16_product(name, kern, &Sequential, case, mixed, (f32::NAN, nan));
        assert_eq!(
            bits(&f32s),
            bits(&bf16s),
            "{name} {case:?}: f32 and bf16 operands differ"
        );
        assert_eq!(
            bits(&f32s),
            bits(&mixed),
            "{name} {case:?}: mixed operands differ"
        );
    }
}

/// Views of a packed operand (row ranges, leading columns) multiply, whole
/// and split into pieces, as the same part of the unpacked operand does,
/// bit for bit; bad ranges are refused.
pub fn bf16_packed_views(name: &str, kern: Kernels) {
    let (k, n) = (100, 70);
    let mut rng = Rng::new(11);
    let b_vals = rng.vec(k * n, -2.0, 2.0);
    let mut slots = vec![0; PackedBf16::len(k, n).unwrap()];
    kern.pack_bf16(MatRef::new(&b_vals, k, n).unwrap(), &mut slots)
        .unwrap();
    let packed = PackedBf16::new(&slots, k, n).unwrap();
    for (rows, cols) in [
        (0..64, 70),
        (32..100, 70),
        (64..100, 33),
        (0..100, 1),
        (96..100, 64),
    ] {
        let view = packed
            .row_range(rows.clone())
            .unwrap()
            .first_columns(cols)
            .unwrap();
        let part = MatRef::strided(&b_vals[rows.start * n..], rows.len(), cols, n).unwrap();
        for m in [5, 40, 97] {
            let a_vals = rng.vec(m * rows.len(), -2.0, 2.0);
            let a = MatRef::new(&a_vals, m, rows.len()).unwrap();
            let mut want = vec![f32::NAN; m * cols];
            let mut ws = vec![0.0; kern.gemm_bf16_workspace_len(m, cols, rows.len())];
            let c = MatMut::new(&mut want, m, cols).unwrap();
            kern.gemm_bf16(1.0, a, part, 0.0, c, &mut ws).unwrap();
            let len = kern.gemm_bf16_packed_workspace_len(m, cols, rows.len());
            let mut ws = vec![0.0; len];
            let mut got = vec![f32::NAN; m * cols];
            let c = MatMut::new(&mut got, m, cols).unwrap();
            kern.gemm_bf16_packed(1.0, a, view, 0.0, c, &mut ws)
                .unwrap();
            assert_eq!(
                bits(&got),
                bits(&want),
                "{name} rows {rows:?} cols {cols} m {m}"
            );
            let mut got = vec![f32::NAN; m * cols];
            let c = MatMut::new(&mut got, m, cols).unwrap();
            kern.gemm_bf16_packed_with(&Reversed(2), 1.0, a, view, 0.0, c, &mut ws)
                .unwrap();
            let split = "split in pieces";
            assert_eq!(
                bits(&got),
                bits(&want),
                "{name} rows {rows:?} cols {cols} m {m} {split}"
            );
        }
    }
    assert!(matches!(
        packed.row_range(10..64),
        Err(KernelError::InvalidArgument(_))
    ));
    assert!(matches!(
        packed.row_range(0..50),
        Err(KernelError::InvalidArgument(_))
    ));
    assert!(matches!(
        packed.row_range(64..101),
        Err(KernelError::InvalidShape(_))
    ));
    assert!(matches!(
        packed.first_columns(71),
        Err(KernelError::InvalidShape(_))
    ));
    // No columns: no slots, and a view of them is still fine.
    let empty = PackedBf16::new(&[], k, 0).unwrap();
    assert_eq!(empty.row_range(64..100).unwrap().rows(), 36);
}

/// The tile path's edges (tiles take products of at least 32 rows): whole
/// blocks, k not a multiple of 32 (a padded last step), n not a multiple
/// of 32, m past a block edge, several blocks of rows and columns, long
/// k, every transpose; each within the bound, and split into pieces bit
/// for bit as whole.
pub fn bf16_tile_edges(name: &str, kern: Kernels) {
    let shapes = [
        (32, 32, 32),
        (33, 31, 33),
        (64, 65, 1),
        (95, 7, 100),
        (31, 40, 64),
        (200, 140, 70),
        (64, 33, 600),
    ];
    let transposes = [(false, false), (true, false), (false, true), (true, true)];
    for (i, (m, n, k)) in shapes.into_iter().enumerate() {
        for (t, (trans_a, trans_b)) in transposes.into_iter().enumerate() {
            let case = Case {
                m,
                n,
                k,
                trans_a,
                trans_b,
                alpha: 0.75,
                // Each transpose meets beta = 0 (C unread) and beta != 0.
                beta: [0.0, 0.5][(i + t) % 2],
            };
            let same: (Convert<f32>, Convert<f32>) = (|x| x, |x| x);
            let one = bf16_product(name, kern, &Sequential, case, same, (f32::NAN, f32::NAN));
            let split = bf16_product(name, kern, &Reversed(3), case, same, (f32::NAN, f32::NAN));
            assert_eq!(
                bits(&one),
                bits(&split),
                "{name} {case:?}: the split changed C"
            );
        }
    }
}
