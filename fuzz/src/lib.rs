//! Shared input decoding and comparison for the fuzz targets: each target
//! runs the dispatched backend and the scalar reference on the same input
//! and requires agreement within a tolerance (and no panic, ever).

use arbitrary::{Result, Unstructured};
use kernels::{Backend, Executor, Kernels, MatRef};

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
