//! Row-wise softmax, numerically stable, with an optional valid prefix per
//! row for causal attention.

use crate::bf16::MAX_LANES;
use crate::dispatch::dispatch;
use crate::error::{expect_len, rows_of};
use crate::math::{self, EXP_BLOCK};
use crate::reduce::row_max;
use crate::simd::{fold2, update1, update1_blocks, update2, Simd};
use crate::{KernelError, Kernels};

/// Which prefix of each row a row-wise routine covers; the entries after it
/// are set to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidLen<'a> {
    /// Every entry of every row.
    All,
    /// Row `r` covers its first `min(offset + r + 1, cols)` entries: causal
    /// attention where row `r` is the query at position `offset + r` and the
    /// columns are key positions `0..cols`.
    Causal {
        /// Position of the first row's query.
        offset: usize,
    },
    /// Row `r` covers its first `lens[r]` entries; one length per row, each
    /// at most the row length.
    PerRow(&'a [usize]),
}

impl ValidLen<'_> {
    /// Checks the per-row lengths against the shape.
    fn check(&self, rows: usize, cols: usize) -> Result<(), KernelError> {
        if let ValidLen::PerRow(lens) = *self {
            expect_len("lens", lens.len(), rows)?;
            if lens.iter().any(|&l| l > cols) {
                return Err(KernelError::InvalidShape(
                    "valid length longer than the row",
                ));
            }
        }
        Ok(())
    }

    /// The valid length of row `r` (after `check`).
    fn of_row(&self, r: usize, cols: usize) -> usize {
        match *self {
            ValidLen::All => cols,
            ValidLen::Causal { offset } => offset.saturating_add(r).saturating_add(1).min(cols),
            ValidLen::PerRow(lens) => lens[r],
        }
    }
}

impl Kernels {
    /// In place, for each row of the row-major matrix `x` with `cols`
    /// columns: `x[j] = e^(x[j] - m) / Σ e^(x[i] - m)` over the row's valid
    /// prefix (`m` its maximum), and 0 after it. A row with valid length 0
    /// becomes all zeros. NaN in a row makes the row NaN; so does a row whose
    /// maximum is ±inf.
    ///
    /// ```
    /// use kernels::{Kernels, ValidLen};
    ///
    /// let k = Kernels::best();
    /// // Two rows of causal attention scores.
    /// let mut scores = [0.5, 9.0, 2.0, 2.0];
    /// k.softmax_rows(&mut scores, 2, ValidLen::Causal { offset: 0 })?;
    /// assert_eq!(scores, [1.0, 0.0, 0.5, 0.5]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn softmax_rows(
        &self,
        x: &mut [f32],
        cols: usize,
        valid: ValidLen<'_>,
    ) -> Result<(), KernelError> {
        let rows = rows_of("x", x.len(), cols)?;
        valid.check(rows, cols)?;
        if cols == 0 {
            return Ok(());
        }
        // One dispatch for all the rows: a short row costs little more
        // than entering the instruction set.
        let rows = x.chunks_exact_mut(cols).enumerate();
        let rows = rows.map(|(r, row)| (valid.of_row(r, cols), row));
        dispatch!(self,
            scalar: rows.for_each(|(len, row)| {
                let (live, dead) = row.split_at_mut(len);
                dead.fill(0.0);
                softmax_scalar(live);
            }),
            simd: |s| {
                for (len, row) in rows {
                    softmax(s, row, len);
                }
            },
        );
        Ok(())
    }

    /// The backward pass of [`Kernels::softmax_rows`], in place: for each
    /// row, with `y` the softmax output in `probs` and `g` the gradient with
    /// respect to it in `grad`, `grad[j] = y[j] · (g[j] − Σ_i y[i]·g[i])`
    /// over the valid prefix, and 0 after it.
    ///
    /// ```
    /// use kernels::{Kernels, ValidLen};
    ///
    /// let k = Kernels::best();
    /// let probs = [0.5, 0.5];
    /// let mut grad = [1.0, 0.0]; // d(loss)/d(probs)
    /// k.softmax_backward_rows(&probs, &mut grad, 2, ValidLen::All)?;
    /// assert_eq!(grad, [0.25, -0.25]); // d(loss)/d(scores)
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn softmax_backward_rows(
        &self,
        probs: &[f32],
        grad: &mut [f32],
        cols: usize,
        valid: ValidLen<'_>,
    ) -> Result<(), KernelError> {
        expect_len("grad", grad.len(), probs.len())?;
        let rows = rows_of("probs", probs.len(), cols)?;
        valid.check(rows, cols)?;
        if cols == 0 {
            return Ok(());
        }
        let rows = probs.chunks_exact(cols).zip(grad.chunks_exact_mut(cols));
        let rows = rows
            .enumerate()
            .map(|(r, (y, g))| (valid.of_row(r, cols), y, g));
        dispatch!(self,
            scalar: rows.for_each(|(len, y, g)| {
                let (g, dead) = g.split_at_mut(len);
                dead.fill(0.0);
                softmax_backward_scalar(&y[..len], g);
            }),
            simd: |s| {
                for (len, y, g) in rows {
                    softmax_backward(s, y, g, len);
                }
            },
        );
        Ok(())
    }
}

fn softmax_backward_scalar(y: &[f32], g: &mut [f32]) {
    let dot: f32 = y.iter().zip(g.iter()).map(|(&y, &g)| y * g).sum();
    g.iter_mut().zip(y).for_each(|(g, &y)| *g = y * (*g - dot));
}

/// One row of [`Kernels::softmax_backward_rows`]: the first `len` entries
/// of `g`, then zeros.
#[inline(always)]
fn softmax_backward<S: Simd>(s: S, y: &[f32], g: &mut [f32], len: usize) {
    let acc = fold2(
        s,
        &y[..len],
        &g[..len],
        #[inline(always)]
        |acc, y, g| s.mul_add(y, g, acc),
        |p, q| s.add(p, q),
    );
    let dot = s.splat(s.reduce_sum(acc));
    let whole = len - len % S::LANES;
    update2(
        s,
        &y[..whole],
        &mut g[..whole],
        #[inline(always)]
        |y, g| s.mul(y, s.sub(g, dot)),
    );
    if whole < len {
        let live = s.load_piece(&ONES[..len - whole], 0.0);
        let (y, g_last) = (
            s.load_piece(&y[whole..len], 0.0),
            s.load_piece(&g[whole..len], 0.0),
        );
        store_last_and_zeros(s, g, whole, live, s.mul(y, s.sub(g_last, dot)));
    } else {
        fill_zeros(s, &mut g[len..]);
    }
}

fn softmax_scalar(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `e^(x − max)` for `N` vectors of a row, each added to `sum` in order:
/// the numerators of a softmax (and of cross-entropy's gradient). A row
/// runs blocks of [`EXP_BLOCK`] vectors, then its last vectors one at a
/// time ([`numerator_split`]), so that a short causal row computes only
/// its own vectors.
#[inline(always)]
pub(crate) fn softmax_numerators<S: Simd, const N: usize>(
    s: S,
    x: [S::V; N],
    max: S::V,
    sum: &mut S::V,
) -> [S::V; N] {
    let mut shifted = x;
    for x in &mut shifted {
        *x = s.sub(*x, max);
    }
    let e = math::exp_each(s, shifted);
    for &e in &e {
        *sum = s.add(*sum, e);
    }
    e
}

/// Where a row of `len` splits into whole blocks of [`EXP_BLOCK`] vectors
/// and the rest.
#[inline(always)]
pub(crate) fn numerator_split<S: Simd>(len: usize) -> usize {
    len - len % (EXP_BLOCK * S::LANES)
}

/// One row of [`Kernels::softmax_rows`]: the first `len` entries of
/// `row`, then zeros.
#[inline(always)]
fn softmax<S: Simd>(s: S, row: &mut [f32], len: usize) {
    if len == 0 {
        return fill_zeros(s, row);
    }
    let max_value = s.reduce_max(row_max(s, &row[..len]));
    let max = s.splat(max_value);
    let mut sum = s.splat(0.0);
    // Whole blocks, then whole vectors, then the partial one: the sum adds
    // the vectors in the order of a one-vector loop.
    let whole = len - len % S::LANES;
    let (blocks, vectors) = row[..whole].split_at_mut(numerator_split::<S>(whole));
    update1_blocks::<S, EXP_BLOCK>(
        s,
        blocks,
        f32::NEG_INFINITY,
        #[inline(always)]
        |v| softmax_numerators(s, v, max, &mut sum),
    );
    update1_blocks::<S, 1>(
        s,
        vectors,
        f32::NEG_INFINITY,
        #[inline(always)]
        |v| softmax_numerators(s, v, max, &mut sum),
    );
    // The partial vector's missing lanes are padded with the maximum and
    // zeroed after the exponential, not padded with -inf: e^-inf is a
    // product that underflows, and on Intel an underflowing multiply is a
    // microcode assist of about a hundred cycles.
    let mut last = None;
    if whole < len {
        let live = s.load_piece(&ONES[..len - whole], 0.0);
        let v = s.load_piece(&row[whole..len], max_value);
        let e = s.mul(math::exp(s, s.sub(v, max)), live);
        sum = s.add(sum, e);
        last = Some((live, e));
    }
    let inv = s.splat(1.0 / s.reduce_sum(sum));
    update1(s, &mut row[..whole], |v| s.mul(v, inv));
    match last {
        Some((live, e)) => store_last_and_zeros(s, row, whole, live, s.mul(e, inv)),
        None => fill_zeros(s, &mut row[len..]),
    }
}

/// One per lane: the valid lanes of a partial vector, loaded as a piece.
const ONES: [f32; MAX_LANES] = [1.0; MAX_LANES];

/// Stores the vector of `row` that starts at `whole` (a multiple of the
/// lanes), its lanes where `live` is 1 and zeros where it is 0, and zeros
/// after it. A causal row's valid prefix rarely ends on a vector: its last
/// vector stored masked and the zeros after it stored from there, off the
/// vectors' grid, made such a row cost 45 ns more than one ending on a
/// vector (Intel Xeon); here every store is a whole vector on the grid but
/// the row's own last piece.
#[inline(always)]
fn store_last_and_zeros<S: Simd>(s: S, row: &mut [f32], whole: usize, live: S::V, last: S::V) {
    let last = s.select(s.less(s.splat(0.5), live), last, s.splat(0.0));
    let end = row.len().min(whole + S::LANES);
    s.store_piece(&mut row[whole..end], last);
    fill_zeros(s, &mut row[end..]);
}

/// Zeros `x` with vector stores: the tails of causal rows are shorter than
/// a call to `memset` costs.
#[inline(always)]
fn fill_zeros<S: Simd>(s: S, x: &mut [f32]) {
    let mut vectors = x.chunks_exact_mut(S::LANES);
    for v in &mut vectors {
        s.store(v, s.splat(0.0));
    }
    let rest = vectors.into_remainder();
    if !rest.is_empty() {
        s.store_piece(rest, s.splat(0.0));
    }
}
