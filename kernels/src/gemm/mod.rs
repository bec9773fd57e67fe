//! Single-precision matrix multiply, `C = alpha · op(A) · op(B) + beta · C`,
//! BLIS-style: a register-blocked microkernel per instruction set sweeps
//! panels of op(A) and op(B), packed into a caller-supplied workspace where
//! that pays and read in place otherwise: B unless small with contiguous
//! rows; A where the L1 rules of `blocking.rs` say so (the tile's B panel
//! stays in L1, or A's rows would crowd an L1 set) or it is huge
//! (`blocked.rs`). Products with very few rows skip packing.
//!
//! - `microkernel`: the [`GemmKernel`] trait, one instance per ISA, with
//!   its tile sizes and depth of k;
//! - `blocking`: the cache blocking, derived from the CPU's caches, every
//!   rule in one place;
//! - `packing`: copying blocks of A and B into panels;
//! - `blocked`: the loop nest, written once, and its caller-driven split;
//! - `small`: the unpacked path for `m <= 4`;
//! - `bf16`: products of bf16-rounded operands with f32 accumulation, on
//!   AVX512-BF16, AMX tiles or the portable path.

mod bf16;
pub(crate) mod blocked;
mod blocking;
mod microkernel;
pub(crate) mod packing;
mod small;

use crate::dispatch::{dispatch, Isa};
use crate::error::{expect_len, strided_len};
use crate::parallel::{run_pieces, SharedMut};
use crate::{Caches, Executor, KernelError, Kernels, Sequential};
pub use bf16::{Bf16Input, Bf16Output, PackedBf16};
pub(crate) use bf16::{InputSlice, OutputSlice};
pub use blocking::Blocking;
use microkernel::{GemmKernel, ScalarKernel};

/// A read-only view of a row-major matrix of f32 (or, for
/// [`Kernels::gemm_bf16`], of [`crate::Bf16`]), used as is or transposed.
///
/// The view checks its own lengths when built; [`Kernels::gemm`] checks that
/// the shapes of its operands agree.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T = f32> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    transposed: bool,
}

impl<'a, T> MatRef<'a, T> {
    /// A contiguous `rows × cols` matrix: `data.len()` must be `rows · cols`.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Result<MatRef<'a, T>, KernelError> {
        check_contiguous(data.len(), rows, cols)?;
        Ok(MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            transposed: false,
        })
    }

    /// A `rows × cols` matrix whose row `r` starts at `data[r * row_stride]`,
    /// e.g. one head's columns inside a wider buffer. `row_stride` must be at
    /// least `cols` (rows may not overlap) unless there is one row; `data`
    /// may extend past the last row ([`MatRef::strided_len`]).
    pub fn strided(
        data: &'a [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<MatRef<'a, T>, KernelError> {
        check_strided(data.len(), rows, cols, row_stride)?;
        Ok(MatRef {
            data,
            rows,
            cols,
            row_stride,
            transposed: false,
        })
    }

    /// The same matrix used transposed (no data moves).
    #[must_use]
    pub fn t(self) -> MatRef<'a, T> {
        MatRef {
            transposed: !self.transposed,
            ..self
        }
    }

    /// Rows of the matrix as used (after any transpose).
    pub fn rows(&self) -> usize {
        if self.transposed {
            self.cols
        } else {
            self.rows
        }
    }

    /// Columns of the matrix as used (after any transpose).
    pub fn cols(&self) -> usize {
        if self.transposed {
            self.rows
        } else {
            self.cols
        }
    }

    /// Row and column strides of the matrix as used.
    fn strides(&self) -> (usize, usize) {
        if self.transposed {
            (1, self.row_stride)
        } else {
            (self.row_stride, 1)
        }
    }
}

impl<'a, T: Copy> MatRef<'a, T> {
    /// Element `(r, c)` of the matrix as used.
    pub(crate) fn at(&self, r: usize, c: usize) -> T {
        let (rs, cs) = self.strides();
        self.data[r * rs + c * cs]
    }
}

impl<'a> MatRef<'a> {
    /// The fewest elements a `rows × cols` view with row stride
    /// `row_stride` ([`MatRef::strided`], [`MatMut::strided`]) needs:
    /// `(rows - 1) · row_stride + cols`, or 0 when empty. For a caller that
    /// must know the extent before it has a slice (a C caller's pointer).
    ///
    /// ```
    /// use kernels::MatRef;
    /// assert_eq!(MatRef::strided_len(3, 4, 10)?, 24);
    /// assert!(MatRef::strided_len(3, 4, 3).is_err()); // rows would overlap
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn strided_len(rows: usize, cols: usize, row_stride: usize) -> Result<usize, KernelError> {
        strided_len(rows, cols, row_stride)
    }

    fn operand(&self) -> Operand<'a> {
        let (rs, cs) = self.strides();
        Operand {
            data: self.data,
            rs,
            cs,
        }
    }
}

/// A mutable view of a row-major matrix of f32 (or, for
/// [`Kernels::gemm_bf16`], of [`crate::Bf16`]), the C of [`Kernels::gemm`].
#[derive(Debug)]
pub struct MatMut<'a, T = f32> {
    data: &'a mut [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a, T> MatMut<'a, T> {
    /// A contiguous `rows × cols` matrix: `data.len()` must be `rows · cols`.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize) -> Result<MatMut<'a, T>, KernelError> {
        check_contiguous(data.len(), rows, cols)?;
        Ok(MatMut {
            data,
            rows,
            cols,
            row_stride: cols,
        })
    }

    /// A `rows × cols` matrix whose row `r` starts at `data[r * row_stride]`;
    /// as [`MatRef::strided`]. Elements between rows are never touched.
    pub fn strided(
        data: &'a mut [T],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<MatMut<'a, T>, KernelError> {
        check_strided(data.len(), rows, cols, row_stride)?;
        Ok(MatMut {
            data,
            rows,
            cols,
            row_stride,
        })
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The same view, borrowed for a shorter time.
    pub(crate) fn reborrow(&mut self) -> MatMut<'_, T> {
        MatMut {
            data: &mut *self.data,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
        }
    }
}

/// A contiguous view needs exactly `rows · cols` floats.
fn check_contiguous(len: usize, rows: usize, cols: usize) -> Result<(), KernelError> {
    let needed = rows.checked_mul(cols).ok_or(KernelError::ShapeOverflow)?;
    expect_len("data", len, needed)
}

/// A strided view needs at least its last row's end; rows may not overlap.
fn check_strided(
    len: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
) -> Result<(), KernelError> {
    let needed = strided_len(rows, cols, row_stride)?;
    if len < needed {
        return Err(KernelError::LengthMismatch {
            arg: "data",
            expected: needed,
            actual: len,
        });
    }
    Ok(())
}

/// An operand as the loops see it: `op(X)[r][c] = data[r·rs + c·cs]`, where
/// one of `rs`, `cs` is 1.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

/// C as the pieces see it: a pointer they write through, each to its own
/// disjoint block, and the row stride.
#[derive(Clone, Copy)]
pub(crate) struct Output {
    pub(crate) ptr: SharedMut,
    pub(crate) rs: usize,
}

/// One validated product.
pub(crate) struct Problem<'a> {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) alpha: f32,
    pub(crate) beta: f32,
    pub(crate) a: Operand<'a>,
    pub(crate) b: Operand<'a>,
    pub(crate) c: Output,
    /// Added to every row of C (`n` floats) as the last pass over k stores
    /// it.
    pub(crate) bias: Option<&'a [f32]>,
}

impl Kernels {
    /// Floats of workspace [`Kernels::gemm`] needs for an `m × k` by `k × n`
    /// product on this handle's backend (0 for an empty product, or one of
    /// at most 4 rows that is not split along k). Allocate it once for the
    /// largest product and reuse it.
    pub fn gemm_workspace_len(&self, m: usize, n: usize, k: usize) -> usize {
        if m == 0 || n == 0 || k == 0 {
            return 0;
        }
        if m <= small::SMALL_M {
            return small::workspace_len(m, n, k);
        }
        match self.isa {
            Isa::Scalar => blocked::workspace_len::<ScalarKernel>(m, n, k, &self.blocking),
            #[cfg(target_arch = "x86_64")]
            Isa::V3 => blocked::workspace_len::<crate::simd::V3>(m, n, k, &self.blocking),
            #[cfg(target_arch = "x86_64")]
            Isa::V4 => blocked::workspace_len::<crate::simd::V4>(m, n, k, &self.blocking),
            #[cfg(test)]
            Isa::Emulated8 => {
                blocked::workspace_len::<crate::simd::Emulated<8>>(m, n, k, &self.blocking)
            }
            #[cfg(test)]
            Isa::Emulated16 => {
                blocked::workspace_len::<crate::simd::Emulated<16>>(m, n, k, &self.blocking)
            }
        }
    }

    /// `C = alpha · op(A) · op(B) + beta · C` on the calling thread, where
    /// `op(A)` is `a` as given (`m × k`, use [`MatRef::t`] for a transpose),
    /// `op(B)` is `b` (`k × n`) and C is `m × n`.
    ///
    /// With `beta == 0`, C is overwritten without being read (NaN in C does
    /// not leak); with `alpha == 0` or `k == 0`, A and B are not read. The
    /// `workspace` must hold [`Kernels::gemm_workspace_len`]`(m, n, k)`
    /// floats; its contents on entry do not matter.
    ///
    /// ```
    /// use kernels::{Kernels, MatMut, MatRef};
    ///
    /// let k = Kernels::best();
    /// // x (2×3) · wᵀ, where w is stored 4×3 (one row per output).
    /// let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    /// let w = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
    /// let mut y = [0.0; 8];
    /// let mut workspace = vec![0.0; k.gemm_workspace_len(2, 4, 3)];
    /// k.gemm(
    ///     1.0,
    ///     MatRef::new(&x, 2, 3)?,
    ///     MatRef::new(&w, 4, 3)?.t(),
    ///     0.0,
    ///     MatMut::new(&mut y, 2, 4)?,
    ///     &mut workspace,
    /// )?;
    /// assert_eq!(y, [1.0, 2.0, 3.0, 6.0, 4.0, 5.0, 6.0, 15.0]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn gemm(
        &self,
        alpha: f32,
        a: MatRef,
        b: MatRef,
        beta: f32,
        c: MatMut,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        self.gemm_with(&Sequential, alpha, a, b, beta, c, workspace)
    }

    /// [`Kernels::gemm`] split into pieces that `exec` runs, possibly on
    /// several threads: packed B is shared and each piece computes its own
    /// block of C. The result does not depend on the executor or the
    /// number of threads (each element of C is summed in the same order).
    ///
    /// ```
    /// use kernels::{Executor, Kernels, MatMut, MatRef, Sequential};
    ///
    /// /// Two threads of the standard library, taking alternate pieces.
    /// struct TwoThreads;
    /// impl Executor for TwoThreads {
    ///     fn threads(&self) -> usize {
    ///         2
    ///     }
    ///     fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
    ///         std::thread::scope(|s| {
    ///             for first in 0..2 {
    ///                 s.spawn(move || (first..pieces).step_by(2).for_each(piece));
    ///             }
    ///         });
    ///     }
    /// }
    ///
    /// let k = Kernels::best();
    /// let (m, n, d) = (64, 48, 32);
    /// let a: Vec<f32> = (0..m * d).map(|i| (i % 7) as f32).collect();
    /// let b: Vec<f32> = (0..d * n).map(|i| (i % 5) as f32 - 2.0).collect();
    /// let mut workspace = vec![0.0; k.gemm_workspace_len(m, n, d)];
    /// let (mut split, mut alone) = (vec![0.0; m * n], vec![0.0; m * n]);
    /// for (exec, c) in [(&TwoThreads as &dyn Executor, &mut split), (&Sequential, &mut alone)] {
    ///     let (a, b) = (MatRef::new(&a, m, d)?, MatRef::new(&b, d, n)?);
    ///     k.gemm_with(exec, 1.0, a, b, 0.0, MatMut::new(c, m, n)?, &mut workspace)?;
    /// }
    /// assert_eq!(split, alone); // bit for bit
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_with<E: Executor + ?Sized>(
        &self,
        exec: &E,
        alpha: f32,
        a: MatRef,
        b: MatRef,
        beta: f32,
        c: MatMut,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        self.product_with(exec, (alpha, a, b, beta, None), c, workspace)
    }

    /// `C = alpha · op(A) · op(B) + beta · C`, plus `bias` (`n` floats) in
    /// every row where given: added as the blocked loops store C, or after
    /// the product of a few rows.
    fn product_with<E: Executor + ?Sized>(
        &self,
        exec: &E,
        (alpha, a, b, beta, bias): (f32, MatRef, MatRef, f32, Option<&[f32]>),
        mut c: MatMut,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        let (m, n, k) = check_product(&a, &b, &c)?;
        check_workspace(self.gemm_workspace_len(m, n, k), workspace)?;
        if let Some(bias) = bias {
            expect_len("bias", bias.len(), n)?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 || alpha == 0.0 {
            scale_rows(beta, c.reborrow());
            if let Some(bias) = bias {
                add_bias_rows(self, exec, bias, c);
            }
            return Ok(());
        }
        // (The few-rows path adds no bias of its own: it is added after.)
        let fused = bias.filter(|_| m > small::SMALL_M);
        let problem = Problem {
            m,
            n,
            k,
            alpha,
            beta,
            a: a.operand(),
            b: b.operand(),
            c: Output {
                ptr: SharedMut(c.data.as_mut_ptr()),
                rs: c.row_stride,
            },
            bias: fused,
        };
        let p = &problem;
        let bl = &self.blocking;
        dispatch!(self,
            scalar: run(ScalarKernel, exec, p, bl, workspace),
            simd: |s| run(s, exec, p, bl, workspace),
        );
        if let (Some(bias), None) = (bias, fused) {
            add_bias_rows(self, exec, bias, c);
        }
        Ok(())
    }

    /// `C = op(A) · op(B) + bias` (the `n` floats of `bias` added to every
    /// row): a linear layer's product, [`Kernels::gemm_with`] with alpha 1
    /// and beta 0 on the same workspace, the bias added to each element of
    /// C as it is stored (products of at most 4 rows, or no k, add it
    /// after): the same bits as adding it after the product either way.
    /// The bf16 form is [`Kernels::gemm_bf16_bias_with`].
    ///
    /// ```
    /// use kernels::{Kernels, MatMut, MatRef, Sequential};
    ///
    /// let k = Kernels::best();
    /// let (x, w, bias) = ([1.0, 2.0], [3.0, 0.5, 1.0, 1.0], [0.25, -1.0]);
    /// let mut y = [0.0; 2];
    /// let mut workspace = vec![0.0; k.gemm_workspace_len(1, 2, 2)];
    /// let (x, w) = (MatRef::new(&x, 1, 2)?, MatRef::new(&w, 2, 2)?);
    /// k.gemm_bias_with(&Sequential, x, w, &bias, MatMut::new(&mut y, 1, 2)?, &mut workspace)?;
    /// assert_eq!(y, [5.25, 1.5]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn gemm_bias_with<E: Executor + ?Sized>(
        &self,
        exec: &E,
        a: MatRef,
        b: MatRef,
        bias: &[f32],
        c: MatMut,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        self.product_with(exec, (1.0, a, b, 0.0, Some(bias)), c, workspace)
    }
}

/// Rows of C per piece of [`add_bias_rows`].
const BIAS_ROWS_PER_PIECE: usize = 64;

/// Adds `bias` (`c.cols` floats) to every row of C, in pieces of rows
/// that `exec` runs.
pub(crate) fn add_bias_rows<E: Executor + ?Sized>(k: &Kernels, exec: &E, bias: &[f32], c: MatMut) {
    let (rows, cols, rs) = (c.rows, c.cols, c.row_stride);
    if rows == 0 || cols == 0 {
        return;
    }
    let out = SharedMut(c.data.as_mut_ptr());
    run_pieces(exec, rows.div_ceil(BIAS_ROWS_PER_PIECE), &|piece| {
        let first = piece * BIAS_ROWS_PER_PIECE;
        for r in first..rows.min(first + BIAS_ROWS_PER_PIECE) {
            // SAFETY: row `r` < rows lies inside C (`MatMut` checked its
            // extent; rows `rs ≥ cols` apart do not overlap) and belongs to
            // this piece alone.
            let row = unsafe { out.slice(r * rs, cols) };
            // (The lengths agree: `bias` has `cols` floats.)
            let _ = k.add_bias(bias, row);
        }
    });
}

/// `(m, n, k)` of `C = op(A) · op(B)`, or the error if the shapes disagree.
pub(crate) fn check_product<A, B, C>(
    a: &MatRef<A>,
    b: &MatRef<B>,
    c: &MatMut<C>,
) -> Result<(usize, usize, usize), KernelError> {
    check_product_of(a, (b.rows(), b.cols()), c)
}

/// [`check_product`] for a B given by its shape (`k × n`, as used).
pub(crate) fn check_product_of<A, C>(
    a: &MatRef<A>,
    (b_rows, n): (usize, usize),
    c: &MatMut<C>,
) -> Result<(usize, usize, usize), KernelError> {
    let (m, k) = (a.rows(), a.cols());
    if b_rows != k {
        return Err(KernelError::InvalidShape(
            "op(B) must have as many rows as op(A) has columns",
        ));
    }
    if c.rows != m || c.cols != n {
        return Err(KernelError::InvalidShape(
            "C must have the rows of op(A) and the columns of op(B)",
        ));
    }
    Ok((m, n, k))
}

/// Refuses a workspace shorter than `needed`.
pub(crate) fn check_workspace(needed: usize, workspace: &[f32]) -> Result<(), KernelError> {
    if workspace.len() < needed {
        return Err(KernelError::WorkspaceTooSmall {
            needed,
            actual: workspace.len(),
        });
    }
    Ok(())
}

fn run<K: GemmKernel, E: Executor + ?Sized>(
    kernel: K,
    exec: &E,
    p: &Problem,
    bl: &Blocking,
    ws: &mut [f32],
) {
    if p.m <= small::SMALL_M {
        small::run(kernel, exec, p, ws)
    } else {
        blocked::run(kernel, exec, p, bl, ws)
    }
}

/// `C = beta · C`, with `beta == 0` writing zeros without reading C.
pub(crate) fn scale_rows(beta: f32, c: MatMut) {
    if c.cols == 0 {
        return;
    }
    for r in 0..c.rows {
        scale_by_beta(beta, &mut c.data[r * c.row_stride..][..c.cols]);
    }
}

/// `row = beta · row`, with `beta == 0` writing zeros without reading.
pub(crate) fn scale_by_beta(beta: f32, row: &mut [f32]) {
    if beta == 0.0 {
        row.fill(0.0);
    } else if beta != 1.0 {
        row.iter_mut().for_each(|x| *x *= beta);
    }
}

/// The blocking of `isa`'s microkernel on a core with `caches`.
pub(crate) fn blocking_for(isa: Isa, caches: Caches) -> Blocking {
    fn of<K: GemmKernel>(caches: Caches) -> Blocking {
        Blocking::for_caches(K::MR, K::NR, K::KC, caches)
    }
    match isa {
        Isa::Scalar => of::<ScalarKernel>(caches),
        #[cfg(target_arch = "x86_64")]
        Isa::V3 => of::<crate::simd::V3>(caches),
        #[cfg(target_arch = "x86_64")]
        Isa::V4 => of::<crate::simd::V4>(caches),
        #[cfg(test)]
        Isa::Emulated8 => of::<crate::simd::Emulated<8>>(caches),
        #[cfg(test)]
        Isa::Emulated16 => of::<crate::simd::Emulated<16>>(caches),
    }
}
