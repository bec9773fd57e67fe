//! Shared input decoding and comparison for the fuzz targets: each target
//! runs the dispatched backend and the scalar reference on the same input
//! and requires agreement within a tolerance (and no panic, ever).

use arbitrary::{Result, Unstructured};
use kernels::{Backend, Executor, KernelError, Kernels, MatMut, MatRef};

/// The backend under test (the best this CPU has) and the scalar reference.
pub fn backends() -> (Kernels, Kernels) {
    let scalar = Kernels::new(Backend::Scalar).expect("scalar always runs");
    (Kernels::best(), scalar)
}

/// A length in `0..=max`.
pub fn len(u: &mut Unstructured, max: usize) -> Result<usize> {
    u.int_in_range(0..=max)
}

/// `n` floats: mostly moderate values, sometimes NaN, ±inf, ±0 or huge ones.
pub fn values(u: &mut Unstructured, n: usize) -> Result<Vec<f32>> {
    (0..n)
        .map(|_| {
            Ok(match u.int_in_range(0u8..=31)? {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 => -0.0,
                4 => f32::from_bits(u.arbitrary()?),
                _ => u.int_in_range(-20_000i32..=20_000)? as f32 / 1000.0,
            })
        })
        .collect()
}

/// Panics (a fuzz finding) unless `got` and `want` agree: NaN with NaN,
/// infinities exactly, finite values within `abs + rel·|want|`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if g.is_nan() || w.is_nan() {
            g.is_nan() && w.is_nan()
        } else if g.is_infinite() || w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= abs + rel * w.abs()
        };
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// Whether every value is finite and below `limit` in magnitude.
pub fn all_moderate(x: &[f32], limit: f32) -> bool {
    x.iter().all(|v| v.is_finite() && v.abs() < limit)
}

/// Runs the pieces last to first, claiming `threads` threads, to check
/// that a GEMM's result does not depend on how it is split or ordered.
pub struct Reversed(pub usize);

impl Executor for Reversed {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        (0..pieces).rev().for_each(piece);
    }
}

/// A stored matrix: `rows × cols` used values in -4..4, `stride` apart.
pub struct Stored {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

impl Stored {
    pub fn new(u: &mut Unstructured, rows: usize, cols: usize) -> Result<Stored> {
        let stride = cols + len(u, 5)?;
        let size = if rows == 0 {
            0
        } else {
            (rows - 1) * stride + cols
        };
        let data = (0..size)
            .map(|_| Ok(u.int_in_range(-4000i32..=4000)? as f32 / 1000.0))
            .collect::<Result<_>>()?;
        Ok(Stored {
            data,
            rows,
            cols,
            stride,
        })
    }
    pub fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.stride + c]
    }
    pub fn view(&self, transposed: bool) -> MatRef<'_> {
        self.view_of(&self.data, transposed)
    }
    /// A view of `data`, laid out as this matrix (e.g. its values in bf16).
    pub fn view_of<'a, T>(&self, data: &'a [T], transposed: bool) -> MatRef<'a, T> {
        let v = MatRef::strided(data, self.rows, self.cols, self.stride).unwrap();
        if transposed {
            v.t()
        } else {
            v
        }
    }
}

/// A GEMM problem drawn from the input: `C (m × n) = alpha · op(A) ·
/// op(B) + beta · C` with strided operands; C is NaN where beta = 0 (it
/// must not be read).
pub struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
    pub alpha: f32,
    pub beta: f32,
    pub a: Stored,
    pub b: Stored,
    pub c: Stored,
}

impl Product {
    /// Dimensions up to `max` each; with `tall`, sometimes `tall` more rows.
    pub fn new(u: &mut Unstructured, max: (usize, usize, usize), tall: usize) -> Result<Product> {
        let (m, n, k) = (len(u, max.0)?, len(u, max.1)?, len(u, max.2)?);
        let m = if tall > 0 && u.ratio(1, 8)? {
            m + tall
        } else {
            m
        };
        let (ta, tb): (bool, bool) = (u.arbitrary()?, u.arbitrary()?);
        let alpha = [1.0, -0.5, 0.0, 2.0][len(u, 3)?];
        let beta = [0.0, 1.0, 0.25, -1.0][len(u, 3)?];
        let (ar, ac) = if ta { (k, m) } else { (m, k) };
        let (br, bc) = if tb { (n, k) } else { (k, n) };
        let a = Stored::new(u, ar, ac)?;
        let b = Stored::new(u, br, bc)?;
        let mut c = Stored::new(u, m, n)?;
        if beta == 0.0 {
            c.data.iter_mut().for_each(|v| *v = f32::NAN);
        }
        Ok(Product {
            m,
            n,
            k,
            ta,
            tb,
            alpha,
            beta,
            a,
            b,
            c,
        })
    }

    /// C over `data`, laid out as `self.c`.
    pub fn c_view<'a, T>(&self, data: &'a mut [T]) -> MatMut<'a, T> {
        MatMut::strided(data, self.m, self.n, self.c.stride).unwrap()
    }

    /// C after `product` on a copy of it, panicking if `product` fails.
    pub fn computed(
        &self,
        product: impl FnOnce(MatMut<'_>) -> std::result::Result<(), KernelError>,
    ) -> Vec<f32> {
        let mut c = self.c.data.clone();
        product(self.c_view(&mut c)).expect("refused");
        c
    }

    /// The error `product` returns on a copy of C, panicking unless it
    /// returns one and leaves C untouched.
    pub fn refused(
        &self,
        product: impl FnOnce(MatMut<'_>) -> std::result::Result<(), KernelError>,
    ) -> KernelError {
        let mut c = self.c.data.clone();
        let err = product(self.c_view(&mut c)).expect_err("accepted");
        assert!(same_bits(&c, &self.c.data), "C changed by a refused call");
        err
    }

    /// Panics unless `got` (C after the product, laid out as `self.c`) is
    /// within the rounding bound of an f64 triple loop over the operands'
    /// values as `value` reads them, and the padding between rows of C is
    /// untouched.
    pub fn check(&self, got: &[f32], value: impl Fn(f32) -> f64) {
        let (a, b, c) = (&self.a, &self.b, &self.c);
        let op_a = |i, l| value(if self.ta { a.at(l, i) } else { a.at(i, l) });
        let op_b = |l, j| value(if self.tb { b.at(j, l) } else { b.at(l, j) });
        let u = f64::from(f32::EPSILON) / 2.0;
        for i in 0..self.m {
            for j in 0..self.n {
                let (mut sum, mut mag) = (0.0, 0.0);
                for l in 0..self.k {
                    sum += op_a(i, l) * op_b(l, j);
                    mag += (op_a(i, l) * op_b(l, j)).abs();
                }
                let c_term = if self.beta == 0.0 {
                    0.0
                } else {
                    f64::from(self.beta) * f64::from(c.at(i, j))
                };
                let want = f64::from(self.alpha) * sum + c_term;
                let tol = 2.0
                    * (self.k as f64 + 2.0)
                    * u
                    * (f64::from(self.alpha).abs() * mag + c_term.abs())
                    + 1e-30;
                let got = f64::from(got[i * c.stride + j]);
                assert!(
                    (got - want).abs() <= tol,
                    "C[{i}][{j}] = {got}, want {want} ± {tol}"
                );
            }
        }
        for (idx, (x, y)) in got.iter().zip(&c.data).enumerate() {
            if idx % c.stride.max(1) >= self.n {
                assert_eq!(x.to_bits(), y.to_bits(), "wrote between rows of C at {idx}");
            }
        }
    }
}

/// Whether two results have the same bits.
pub fn same_bits(x: &[f32], y: &[f32]) -> bool {
    x.len() == y.len() && x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits())
}
