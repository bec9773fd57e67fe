//! Mixed precision: `C = alpha · op(A) · op(B) + beta · C` where A and B
//! are bf16 (or f32 rounded to bf16 as they are read) and the products are
//! summed in f32. This is the portable path, and the reference for the
//! bf16 units: the operands are rounded into the workspace as f32 values,
//! then multiplied by the f32 GEMM, so it runs on every backend, is split
//! like it, and gives bit-identical results for any executor.

use super::{check_product, check_workspace, MatMut, MatRef};
use crate::{Bf16, Executor, KernelError, Kernels, Sequential};

/// An element type a bf16 product reads: [`Bf16`] as stored, or `f32`
/// rounded to the nearest bf16 ([`Bf16::from_f32`]).
pub trait Bf16Input: Copy + sealed::Sealed {
    /// The value as the product uses it.
    fn to_bf16(self) -> Bf16;
}

impl Bf16Input for f32 {
    #[inline]
    fn to_bf16(self) -> Bf16 {
        Bf16::from_f32(self)
    }
}

impl Bf16Input for Bf16 {
    #[inline]
    fn to_bf16(self) -> Bf16 {
        self
    }
}

mod sealed {
    /// Only the crate's element types are bf16 inputs.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for crate::Bf16 {}
}

impl Kernels {
    /// Floats of workspace [`Kernels::gemm_bf16`] needs for an `m × k` by
    /// `k × n` product (saturating: an absurd shape asks for more than any
    /// buffer holds).
    pub fn gemm_bf16_workspace_len(&self, m: usize, n: usize, k: usize) -> usize {
        if m == 0 || n == 0 || k == 0 {
            return 0;
        }
        m.saturating_mul(k)
            .saturating_add(k.saturating_mul(n))
            .saturating_add(self.gemm_workspace_len(m, n, k))
    }

    /// `C = alpha · op(A) · op(B) + beta · C` with A and B rounded to bf16
    /// (f32 operands are rounded as [`Bf16::from_f32`] does; [`Bf16`]
    /// operands are used as stored) and the products summed in f32. The
    /// contract is [`Kernels::gemm`]'s: `beta = 0` does not read C, shapes
    /// must agree, the workspace must hold
    /// [`Kernels::gemm_bf16_workspace_len`] floats.
    ///
    /// Error bound: each element differs from the exact product of the
    /// rounded operands by at most about (k + 2)·2⁻²⁴·(|alpha|·Σ|a·b| +
    /// |beta·c|), the bound of the f32 GEMM.
    ///
    /// ```
    /// use kernels::{Bf16, Kernels, MatMut, MatRef};
    ///
    /// let k = Kernels::best();
    /// // 1 + 2^-10 rounds to 1 in bf16; 3 is exact.
    /// let a = [1.0 + 1.0 / 1024.0, 2.0];
    /// let b = [Bf16::from_f32(3.0), Bf16::from_f32(0.5)];
    /// let mut c = [0.0];
    /// let mut workspace = vec![0.0; k.gemm_bf16_workspace_len(1, 1, 2)];
    /// k.gemm_bf16(
    ///     1.0,
    ///     MatRef::new(&a, 1, 2)?,
    ///     MatRef::new(&b, 2, 1)?,
    ///     0.0,
    ///     MatMut::new(&mut c, 1, 1)?,
    ///     &mut workspace,
    /// )?;
    /// assert_eq!(c, [4.0]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn gemm_bf16<A: Bf16Input, B: Bf16Input>(
        &self,
        alpha: f32,
        a: MatRef<A>,
        b: MatRef<B>,
        beta: f32,
        c: MatMut,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        self.gemm_bf16_with(&Sequential, alpha, a, b, beta, c, workspace)
    }

    /// [`Kernels::gemm_bf16`] split into pieces that `exec` runs, as
    /// [`Kernels::gemm_with`] does; the result does not depend on the
    /// executor.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_with<E: Executor + ?Sized, A: Bf16Input, B: Bf16Input>(
        &self,
        exec: &E,
        alpha: f32,
        a: MatRef<A>,
        b: MatRef<B>,
        beta: f32,
        c: MatMut,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        let (m, n, k) = check_product(&a, &b, &c)?;
        check_workspace(self.gemm_bf16_workspace_len(m, n, k), workspace)?;
        if m == 0 || n == 0 || k == 0 {
            // Nothing to round: C is empty, or C = beta · C.
            let (a, b) = (MatRef::new(&[], m, 0)?, MatRef::new(&[], 0, n)?);
            return self.gemm_with(exec, alpha, a, b, beta, c, workspace);
        }
        let (rounded_a, rest) = workspace.split_at_mut(m * k);
        let (rounded_b, rest) = rest.split_at_mut(k * n);
        round_into(&a, rounded_a);
        round_into(&b, rounded_b);
        let a = MatRef::new(&rounded_a[..], m, k)?;
        let b = MatRef::new(&rounded_b[..], k, n)?;
        self.gemm_with(exec, alpha, a, b, beta, c, rest)
    }
}

/// `dst` (`rows × cols`, contiguous) = `src` as used, rounded to bf16.
fn round_into<T: Bf16Input>(src: &MatRef<T>, dst: &mut [f32]) {
    let cols = src.cols();
    if cols == 0 {
        return;
    }
    for (r, row) in dst.chunks_exact_mut(cols).enumerate() {
        for (c, x) in row.iter_mut().enumerate() {
            *x = src.at(r, c).to_bf16().to_f32();
        }
    }
}
