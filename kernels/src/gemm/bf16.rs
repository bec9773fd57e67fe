//! Mixed precision: `C = alpha · op(A) · op(B) + beta · C` where A and B
//! are bf16 (or f32 rounded to bf16 as they are read) and the products are
//! summed in f32, on one of three units ([`Bf16Unit`]):
//!
//! - portable, the reference: the operands are rounded into the workspace
//!   as f32 values, then multiplied by the f32 GEMM, so it runs on every
//!   backend and is split like it; a product of at most `FEW_ROWS` rows
//!   (decoding) instead sums each element down k in order, reading B's
//!   pairs packed (packing an unpacked B first), so a packed B is read at
//!   2 bytes a value and never unpacked;
//! - AVX512-BF16: `vdpbf16ps` adds the dot product of a pair of bf16 values
//!   of A (broadcast) and 16 pairs of B into 16 f32 sums, twice the FMAs of
//!   an f32 instruction. A is packed into panels of `MR` rows, B into
//!   panels of 32 columns, both as pairs of consecutive k (one pair per
//!   32-bit slot of the workspace); a register tile of `MR × 32` sums runs
//!   down a pass of k (at most 256 pairs) and C takes each pass's sums;
//! - AMX (`amx.rs`): tiles of 16 rows multiply 32 × 32 blocks down the
//!   whole of k, from the same B panels and A packed row by row; products
//!   of fewer than 32 rows run on AVX512-BF16.
//!
//! Pieces are blocks of C (rows × column panels); each element of C is
//! summed by one piece in one order whatever the blocks: bit-identical for
//! any executor.

use super::amx::{self, TileProduct};
use super::microkernel::prefetch;
use super::microkernel::{GemmKernel, ScalarKernel};
use super::{
    check_product, check_product_of, check_workspace, scale_by_beta, small, MatMut, MatRef, Output,
};
use core::ops::Range;

use crate::bf16::{pair, pair_half};
use crate::dispatch::{dispatch, Isa};
use crate::parallel::{run_pieces, threads_of, SharedMut};
use crate::simd::{pieces, Simd};
use crate::{Bf16, Bf16Unit, Executor, KernelError, Kernels, Sequential};

/// An element type a bf16 product reads: [`Bf16`] as stored, or `f32`
/// rounded to the nearest bf16 ([`Bf16::from_f32`]).
pub trait Bf16Input: Copy + Sync + sealed::Sealed {
    /// The value as the product uses it.
    fn to_bf16(self) -> Bf16;
    /// `dst[i] = src[i].to_bf16()` for equal lengths, f32 values rounded
    /// by `narrow` (which the caller vectorizes).
    #[doc(hidden)]
    fn round_slice(src: &[Self], dst: &mut [Bf16], narrow: impl FnOnce(&[f32], &mut [Bf16]));
    /// `slots[i] = pair(lo[i].to_bf16(), hi[i].to_bf16())` (zero without
    /// `hi`) for lengths of `slots`, f32 values rounded and paired by
    /// `round_pairs` (which the caller vectorizes).
    #[doc(hidden)]
    fn pair_slices(
        lo: &[Self],
        hi: Option<&[Self]>,
        slots: &mut [f32],
        round_pairs: impl FnOnce(&[f32], Option<&[f32]>, &mut [f32]),
    );
}

impl Bf16Input for f32 {
    #[inline]
    fn to_bf16(self) -> Bf16 {
        Bf16::from_f32(self)
    }
    #[inline(always)]
    fn round_slice(src: &[f32], dst: &mut [Bf16], narrow: impl FnOnce(&[f32], &mut [Bf16])) {
        narrow(src, dst)
    }
    #[inline(always)]
    fn pair_slices(
        lo: &[f32],
        hi: Option<&[f32]>,
        slots: &mut [f32],
        round_pairs: impl FnOnce(&[f32], Option<&[f32]>, &mut [f32]),
    ) {
        round_pairs(lo, hi, slots)
    }
}

impl Bf16Input for Bf16 {
    #[inline]
    fn to_bf16(self) -> Bf16 {
        self
    }
    #[inline(always)]
    fn round_slice(src: &[Bf16], dst: &mut [Bf16], _: impl FnOnce(&[f32], &mut [Bf16])) {
        // (Public, if hidden: lengths that differ copy the shorter, never
        // panic.)
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
    }
    #[inline(always)]
    fn pair_slices(
        lo: &[Bf16],
        hi: Option<&[Bf16]>,
        slots: &mut [f32],
        _: impl FnOnce(&[f32], Option<&[f32]>, &mut [f32]),
    ) {
        pair_each(lo, hi, slots)
    }
}

/// `slots[i] = pair(lo[i].to_bf16(), hi[i].to_bf16())` (zero without `hi`)
/// for lengths of `slots`, one value at a time.
#[inline(always)]
pub(super) fn pair_each<T: Bf16Input>(lo: &[T], hi: Option<&[T]>, slots: &mut [f32]) {
    for (i, (slot, lo)) in slots.iter_mut().zip(lo).enumerate() {
        // (A shorter `hi` pairs with zeros: this is reachable, if hidden,
        // from outside the crate, and must not panic.)
        let hi = hi
            .and_then(|hi| hi.get(i))
            .map_or(Bf16::default(), |hi| hi.to_bf16());
        *slot = pair(lo.to_bf16(), hi);
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
    /// buffer holds). It depends on the whole shape and the unit, not only
    /// on the size (a few rows may need more than many): size a shared
    /// workspace by the largest this returns for the products it serves.
    pub fn gemm_bf16_workspace_len(&self, m: usize, n: usize, k: usize) -> usize {
        if m == 0 || n == 0 || k == 0 {
            return 0;
        }
        match self.pair_unit() {
            Some(_) => PairLayout::new(m, n, k, self.tile_unit().is_some()).workspace_len(),
            // A rounded, B packed (padded to whole panels and steps).
            None if m <= FEW_ROWS => PackedBf16::len(k, n)
                .and_then(|b| m.checked_mul(k)?.checked_add(b))
                .unwrap_or(usize::MAX),
            // A and B rounded, then the f32 product's workspace.
            None => m
                .saturating_mul(k)
                .saturating_add(k.saturating_mul(n))
                .saturating_add(self.gemm_workspace_len(m, n, k)),
        }
    }

    /// [`Kernels::fma_peak_loop`] for bf16 products: `iters` rounds of 12
    /// independent chains of the bf16 unit's pair dot products (4
    /// floating-point operations per lane: two multiplies, two adds), of
    /// 4 independent tile products on AMX (16 × 16 × 32 multiply-adds
    /// each), or of the backend's f32 multiply-adds for the portable unit.
    /// Time it for the peak that bf16 MFU divides by.
    ///
    /// ```
    /// use kernels::{Bf16Unit, Kernels};
    ///
    /// let k = Kernels::best();
    /// let iters = 1_000_000;
    /// let start = std::time::Instant::now();
    /// let flops = k.bf16_peak_loop(iters);
    /// let gflops = flops as f64 / start.elapsed().as_secs_f64() / 1e9;
    /// println!("{gflops:.1} bf16 GFLOP/s on {}", k.bf16_unit());
    /// let per_round = match k.bf16_unit() {
    ///     // fma_peak_loop's 12 chains of f32 multiply-adds on every lane.
    ///     Bf16Unit::Portable => 12 * k.backend().lanes() * 2,
    ///     // 12 chains of pair dot products on 16 lanes.
    ///     Bf16Unit::Avx512Bf16 => 12 * 16 * 4,
    ///     // 4 tile products of 16 × 16 × 32 multiply-adds.
    ///     Bf16Unit::Amx => 4 * 2 * 16 * 16 * 32,
    /// };
    /// assert_eq!(flops, (iters * per_round) as u64);
    /// ```
    pub fn bf16_peak_loop(&self, iters: usize) -> u64 {
        let iters = iters.min(crate::PEAK_LOOP_MAX_ITERS);
        match self.tile_unit() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `TileIsa::Amx` comes from a handle whose bf16 unit is
            // AMX, granted only after detection and the OS's permission.
            Some(TileIsa::Amx) => return unsafe { amx::AmxTiles::granted() }.peak_loop(iters),
            #[cfg(test)]
            Some(TileIsa::Emulated) => return amx::EmulatedTiles.peak_loop(iters),
            None => {}
        }
        let sums = match self.pair_unit() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `pair_unit` names `V4Bf16` only on a detected unit.
            Some(PairIsa::V4Bf16) => pair_chains(unsafe { V4Bf16::detected() }, iters),
            #[cfg(test)]
            Some(PairIsa::Emulated) => pair_chains(EmulatedPairs, iters),
            None => return self.fma_peak_loop(iters),
        };
        // The result depends on every chain, so none can be optimised away.
        core::hint::black_box(sums);
        iters as u64 * (PEAK_CHAINS * 16 * 4) as u64
    }

    /// The pair-dot unit this handle's bf16 products run on, if any (the
    /// tile unit's products run on it too when too short for tiles).
    fn pair_unit(&self) -> Option<PairIsa> {
        match (self.bf16, self.isa) {
            #[cfg(target_arch = "x86_64")]
            (Bf16Unit::Avx512Bf16 | Bf16Unit::Amx, Isa::V4) => Some(PairIsa::V4Bf16),
            #[cfg(test)]
            (Bf16Unit::Avx512Bf16 | Bf16Unit::Amx, Isa::Emulated16) => Some(PairIsa::Emulated),
            _ => None,
        }
    }

    /// The tile unit this handle's bf16 products run on, if any.
    fn tile_unit(&self) -> Option<TileIsa> {
        match (self.bf16, self.isa) {
            #[cfg(target_arch = "x86_64")]
            (Bf16Unit::Amx, Isa::V4) => Some(TileIsa::Amx),
            #[cfg(test)]
            (Bf16Unit::Amx, Isa::Emulated16) => Some(TileIsa::Emulated),
            _ => None,
        }
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
    /// |beta·c|), the bound of the f32 GEMM; except that AVX512-BF16 and
    /// AMX read a subnormal bf16 operand as zero (and flush subnormal
    /// partial sums), so a product with a subnormal operand may be missing.
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
        if m == 0 || n == 0 || k == 0 || alpha == 0.0 {
            // Nothing to multiply: C is empty, or C = beta · C.
            let (a, b) = (MatRef::new(&[], m, 0)?, MatRef::new(&[], 0, n)?);
            return self.gemm_with(exec, alpha, a, b, beta, c, workspace);
        }
        if let Some(unit) = self.pair_unit() {
            let layout = PairLayout::new(m, n, k, self.tile_unit().is_some());
            let (packed_a, rest) = workspace.split_at_mut(layout.a_len());
            let b = PanelsOfB::Pack { b: &b, into: rest };
            self.run_pairs_on(unit, exec, (alpha, &a, b, beta, c), packed_a);
            return Ok(());
        }
        if m <= FEW_ROWS {
            // B packed into pairs, then the product of few rows below.
            let (rounded_a, slots) = workspace.split_at_mut(m * k);
            let slots = bytemuck::cast_slice_mut::<f32, u32>(
                &mut slots[..PackedBf16::len(k, n).unwrap_or(0)],
            );
            self.pack_bf16(b, slots)?;
            let b = PackedBf16::new(slots, k, n)?;
            self.portable_few_rows(exec, alpha, &a, b, beta, c, rounded_a);
            return Ok(());
        }
        let (rounded_a, rest) = workspace.split_at_mut(m * k);
        let (rounded_b, rest) = rest.split_at_mut(k * n);
        let a = round_into(self, &a, rounded_a);
        let b = round_into(self, &b, rounded_b);
        self.gemm_with(exec, alpha, a, b, beta, c, rest)
    }
}

/// A `k × n` operand B packed once into bf16 pairs, for many products
/// that read it without converting or packing it again: weights held in
/// bf16 for decoding. The slots are filled by [`Kernels::pack_bf16`]; the
/// layout (panels of 32 columns, each a run of pairs of consecutive rows,
/// low half first: the layout the pair-dot and tile units read) is the
/// same on every backend, so a packed operand serves any handle.
///
/// [`PackedBf16::row_range`] and [`PackedBf16::first_columns`] view parts
/// of it without copying (attention's products read growing prefixes of
/// one head's packed keys).
#[derive(Debug, Clone, Copy)]
pub struct PackedBf16<'a> {
    /// From the first pair of the view's rows in panel 0.
    slots: &'a [u32],
    k: usize,
    n: usize,
    /// Slots from one panel to the next (those of the whole operand).
    stride: usize,
}

impl<'a> PackedBf16<'a> {
    /// The packed `k × n` operand in `slots`, which must hold exactly
    /// [`PackedBf16::len`]`(k, n)` slots written by [`Kernels::pack_bf16`]
    /// for that shape. (Other slots are safe to pass but give meaningless
    /// products: the units multiply the padding too, and a NaN there makes
    /// every output NaN.)
    pub fn new(slots: &'a [u32], k: usize, n: usize) -> Result<PackedBf16<'a>, KernelError> {
        let needed = PackedBf16::len(k, n).ok_or(KernelError::ShapeOverflow)?;
        crate::error::expect_len("slots", slots.len(), needed)?;
        let stride = panel_slots(k);
        Ok(PackedBf16 {
            slots,
            k,
            n,
            stride,
        })
    }

    /// Rows `rows` of the operand (a `rows.len() × n` operand). The range
    /// must start at a multiple of 32 and end at one or at the last row, so
    /// that a view never pairs a row with one outside it (and tiles read
    /// only whole steps of its rows, or the operand's own zero padding).
    ///
    /// ```
    /// use kernels::{Kernels, MatRef, PackedBf16};
    ///
    /// let w = vec![1.0; 70 * 3];
    /// let mut slots = vec![0; PackedBf16::len(70, 3).unwrap()];
    /// Kernels::best().pack_bf16(MatRef::new(&w, 70, 3)?, &mut slots)?;
    /// let packed = PackedBf16::new(&slots, 70, 3)?;
    /// assert_eq!(packed.row_range(32..70)?.rows(), 38);
    /// assert!(packed.row_range(10..64).is_err());
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn row_range(&self, rows: core::ops::Range<usize>) -> Result<PackedBf16<'a>, KernelError> {
        let aligned = |r: usize| r.is_multiple_of(2 * amx::K_STEP);
        if rows.start > rows.end || rows.end > self.k {
            return Err(KernelError::InvalidShape(
                "the row range is outside the packed operand",
            ));
        }
        if !aligned(rows.start) || !(aligned(rows.end) || rows.end == self.k) {
            return Err(KernelError::InvalidArgument(
                "a packed row range starts at a multiple of 32 and ends at one or at the last row",
            ));
        }
        // With no columns there are no slots (and none is read).
        let slots = self
            .slots
            .get((rows.start / 2).saturating_mul(NR)..)
            .unwrap_or(&[]);
        Ok(PackedBf16 {
            slots,
            k: rows.len(),
            ..*self
        })
    }

    /// The first `n` columns of the operand (`k × n`); `n` at most its
    /// columns.
    pub fn first_columns(&self, n: usize) -> Result<PackedBf16<'a>, KernelError> {
        if n > self.n {
            return Err(KernelError::InvalidShape(
                "more columns than the packed operand has",
            ));
        }
        Ok(PackedBf16 { n, ..*self })
    }

    /// Slots a packed `k × n` operand takes: one per pair of rows and
    /// column, columns padded to a multiple of 32 and pairs to a multiple
    /// of 16 (`None` on overflow).
    pub fn len(k: usize, n: usize) -> Option<usize> {
        padded_pairs(k).checked_mul(n.div_ceil(NR))?.checked_mul(NR)
    }

    /// Rows of the operand (the product's k).
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Columns of the operand (the product's n).
    pub fn cols(&self) -> usize {
        self.n
    }

    /// The slots as the panels are read (pairs as f32 bit patterns).
    fn panels(&self) -> &'a [f32] {
        bytemuck::cast_slice(self.slots)
    }
}

impl Kernels {
    /// Packs `b` (`k × n` as used, f32 rounded to bf16 or bf16 as stored)
    /// into `slots`, which must hold [`PackedBf16::len`]`(k, n)`; read
    /// them back with [`PackedBf16::new`]. Vectorized with this handle's
    /// instructions; the slots do not depend on the handle.
    ///
    /// ```
    /// use kernels::{Kernels, MatMut, MatRef, PackedBf16};
    ///
    /// let k = Kernels::best();
    /// // A 3 × 2 weight, packed once, then read by any number of products.
    /// let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    /// let mut slots = vec![0; PackedBf16::len(3, 2).unwrap()];
    /// k.pack_bf16(MatRef::new(&w, 3, 2)?, &mut slots)?;
    /// let w = PackedBf16::new(&slots, 3, 2)?;
    /// let x = [1.0, 1.0, 1.0];
    /// let mut y = [0.0; 2];
    /// let mut workspace = vec![0.0; k.gemm_bf16_packed_workspace_len(1, 2, 3)];
    /// k.gemm_bf16_packed(1.0, MatRef::new(&x, 1, 3)?, w, 0.0, MatMut::new(&mut y, 1, 2)?, &mut workspace)?;
    /// assert_eq!(y, [9.0, 12.0]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn pack_bf16<T: Bf16Input>(
        &self,
        b: MatRef<T>,
        slots: &mut [u32],
    ) -> Result<(), KernelError> {
        let (k, n) = (b.rows(), b.cols());
        let needed = PackedBf16::len(k, n).ok_or(KernelError::ShapeOverflow)?;
        crate::error::expect_len("slots", slots.len(), needed)?;
        let panels: &mut [f32] = bytemuck::cast_slice_mut(slots);
        let bt = b.t();
        let panel_len = panel_slots(k);
        if panel_len == 0 {
            return Ok(());
        }
        let count = panels.len() / panel_len;
        dispatch!(self,
            scalar: pack_panels(ScalarKernel, &bt, NR, 0..count, panels),
            simd: |s| pack_panels(s, &bt, NR, 0..count, panels),
        );
        Ok(())
    }

    /// Floats of workspace [`Kernels::gemm_bf16_packed`] needs for an
    /// `m × k` by packed `k × n` product (saturating).
    pub fn gemm_bf16_packed_workspace_len(&self, m: usize, n: usize, k: usize) -> usize {
        if m == 0 || n == 0 || k == 0 {
            return 0;
        }
        match self.pair_unit() {
            Some(_) => PairLayout::new(m, n, k, self.tile_unit().is_some()).a_len(),
            // A rounded.
            None if m <= FEW_ROWS => m.saturating_mul(k),
            // A rounded, B unpacked, then the f32 product's workspace.
            None => m
                .saturating_mul(k)
                .saturating_add(k.saturating_mul(n))
                .saturating_add(self.gemm_workspace_len(m, n, k)),
        }
    }

    /// [`Kernels::gemm_bf16`] with B packed beforehand by
    /// [`Kernels::pack_bf16`]: the same contract, result and error bound,
    /// without converting or packing B again.
    pub fn gemm_bf16_packed<A: Bf16Input>(
        &self,
        alpha: f32,
        a: MatRef<A>,
        b: PackedBf16,
        beta: f32,
        c: MatMut,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        self.gemm_bf16_packed_with(&Sequential, alpha, a, b, beta, c, workspace)
    }

    /// [`Kernels::gemm_bf16_packed`] split into pieces that `exec` runs;
    /// the result does not depend on the executor.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_packed_with<E: Executor + ?Sized, A: Bf16Input>(
        &self,
        exec: &E,
        alpha: f32,
        a: MatRef<A>,
        b: PackedBf16,
        beta: f32,
        c: MatMut,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        let (m, n, k) = check_product_of(&a, (b.k, b.n), &c)?;
        check_workspace(self.gemm_bf16_packed_workspace_len(m, n, k), workspace)?;
        if m == 0 || n == 0 || k == 0 || alpha == 0.0 {
            let (a, b) = (MatRef::new(&[], m, 0)?, MatRef::new(&[], 0, n)?);
            return self.gemm_with(exec, alpha, a, b, beta, c, workspace);
        }
        let Some(unit) = self.pair_unit() else {
            if m <= FEW_ROWS {
                self.portable_few_rows(exec, alpha, &a, b, beta, c, &mut workspace[..m * k]);
                return Ok(());
            }
            // The reference: A rounded and B unpacked to f32 (its values
            // are bf16 already, so rounding them again would change
            // nothing), then the f32 product, as `gemm_bf16_with` runs it.
            let (rounded_a, rest) = workspace.split_at_mut(m * k);
            let (unpacked, rest) = rest.split_at_mut(k * n);
            let a = round_into(self, &a, rounded_a);
            // (Run on the backend's vectors, where the loop widens.)
            dispatch!(self,
                scalar: unpack(&b, unpacked),
                simd: |_s| unpack(&b, unpacked),
            );
            let b = MatRef::new(&unpacked[..], k, n)?;
            return self.gemm_with(exec, alpha, a, b, beta, c, rest);
        };
        let b: PanelsOfB<Bf16> = PanelsOfB::Packed {
            panels: b.panels(),
            stride: b.stride,
        };
        self.run_pairs_on(unit, exec, (alpha, &a, b, beta, c), workspace);
        Ok(())
    }

    /// The portable unit's product of at most [`FEW_ROWS`] rows (`m, n,
    /// k > 0`, `alpha != 0`): A rounded into `rounded_a` (`m · k` floats),
    /// then every element of C summed down k in order from the pairs of
    /// `b` ([`GemmKernel::axpy_pair_rows`]), panel by panel.
    #[allow(clippy::too_many_arguments)]
    fn portable_few_rows<E: Executor + ?Sized, A: Bf16Input>(
        &self,
        exec: &E,
        alpha: f32,
        a: &MatRef<A>,
        b: PackedBf16,
        beta: f32,
        c: MatMut,
        rounded_a: &mut [f32],
    ) {
        if a.transposed {
            // Rows of op(A) are columns here: gathered one value at a time
            // (at most `FEW_ROWS · k` of them, against the product's `k · n`).
            for (r, row) in rounded_a.chunks_exact_mut(a.cols()).enumerate() {
                for (c, x) in row.iter_mut().enumerate() {
                    *x = a.at(r, c).to_bf16().to_f32();
                }
            }
        } else {
            round_into(self, a, rounded_a);
        }
        let product = FewRows {
            alpha,
            a: rounded_a,
            b,
            beta,
            m: c.rows,
            c: Output {
                ptr: SharedMut(c.data.as_mut_ptr()),
                rs: c.row_stride,
            },
        };
        let p = &product;
        dispatch!(self,
            scalar: few_rows(ScalarKernel, exec, p),
            simd: |s| few_rows(s, exec, p),
        );
    }

    /// [`run_pairs`] on `unit` (and this handle's tile unit, if any).
    fn run_pairs_on<E: Executor + ?Sized, A: Bf16Input, B: Bf16Input>(
        &self,
        unit: PairIsa,
        exec: &E,
        product: (f32, &MatRef<A>, PanelsOfB<B>, f32, MatMut),
        packed_a: &mut [f32],
    ) {
        let tiles = self.tile_unit();
        match unit {
            #[cfg(target_arch = "x86_64")]
            PairIsa::V4Bf16 => {
                // SAFETY: `PairIsa::V4Bf16` comes from a handle on the
                // AVX-512 backend whose bf16 unit is AVX512-BF16 or AMX,
                // which `Kernels::new`/`with_bf16_unit` grant only after
                // detection.
                let unit = unsafe { V4Bf16::detected() };
                run_pairs(unit, tiles, self, exec, product, packed_a)
            }
            #[cfg(test)]
            PairIsa::Emulated => run_pairs(EmulatedPairs, tiles, self, exec, product, packed_a),
        }
    }
}

/// A product of at most [`FEW_ROWS`] rows on the portable unit: A rounded
/// (`m × k`, contiguous), B packed.
struct FewRows<'a> {
    m: usize,
    alpha: f32,
    a: &'a [f32],
    b: PackedBf16<'a>,
    beta: f32,
    c: Output,
}

/// Most rows of A the portable unit multiplies by streaming B's pairs once
/// per row ([`few_rows`]) instead of unpacking B and running the f32 GEMM.
/// Measured on AMD EPYC Zen 3, `shakes` in bf16, a 9-token prompt: 64–68
/// ms through unpacking, 45–46 ms streaming (most of either is the
/// weights' one packing; vectorized since, an 8-token prompt takes 22–23
/// ms); a decoded token streams them in about 1 ms.
const FEW_ROWS: usize = 16;

/// Runs `p`: pieces of whole panels of C (as the f32 small path splits
/// its columns), each element summed by one piece, so the same bits for
/// any split.
fn few_rows<K: GemmKernel, E: Executor + ?Sized>(kernel: K, exec: &E, p: &FewRows) {
    let (m, n, k) = (p.m, p.b.n, p.b.k);
    let panels = n.div_ceil(NR);
    let pieces = small::column_pieces(threads_of(exec), (m, n, k), panels);
    let per_piece = panels.div_ceil(pieces);
    let pieces = panels.div_ceil(per_piece);
    run_pieces(exec, pieces, &|piece| {
        kernel.enter(
            #[inline(always)]
            |kernel| {
                let mine = piece * per_piece..panels.min((piece + 1) * per_piece);
                // Panels as many at a time as the kernel runs at once, every
                // row of A over them while they are in cache.
                let group = K::PAIR_PANELS;
                for j in mine.clone().step_by(group) {
                    let last = (j + group).min(mine.end);
                    let (first, width) = (j * NR, (last * NR).min(n) - j * NR);
                    let pairs = &p.b.slots[j * p.b.stride..];
                    for i in 0..m {
                        // SAFETY: `i < m` and `first + width ≤ n`, so these
                        // columns of row `i` lie inside C (whose rows do not
                        // overlap); they are in this piece's panels, which
                        // it alone computes.
                        let y = unsafe {
                            core::slice::from_raw_parts_mut(
                                p.c.ptr.ptr().add(i * p.c.rs + first),
                                width,
                            )
                        };
                        scale_by_beta(p.beta, y);
                        kernel.axpy_pair_rows(p.alpha, &p.a[i * k..][..k], pairs, p.b.stride, y);
                    }
                }
            },
        )
    });
}

/// `dst` (`k × n`, contiguous) = the packed operand `b` as f32 values.
#[inline(always)]
fn unpack(b: &PackedBf16, dst: &mut [f32]) {
    let (k, n) = (b.k, b.n);
    for j in 0..n.div_ceil(NR) {
        let (first, width) = (j * NR, NR.min(n - j * NR));
        let panel = &b.slots[j * b.stride..][..NR * k.div_ceil(2)];
        for (l, row) in dst.chunks_exact_mut(n).enumerate() {
            // Row `l` is one half of pair `l / 2`: a straight loop over a
            // panel's columns, which vectorizes.
            let slots = &panel[(l / 2) * NR..][..width];
            for (d, &slot) in row[first..first + width].iter_mut().zip(slots) {
                *d = pair_half(slot, l % 2 == 1);
            }
        }
    }
}

/// `dst` = `src`'s stored matrix rounded to bf16 (as f32), contiguous,
/// viewed as `src` is (transposed or not): rounding runs along the stored
/// rows, where it vectorizes, and the f32 product reads the copy as it
/// would read `src`. `dst` holds at least `rows · cols` floats.
fn round_into<'d, T: Bf16Input>(
    kernels: &Kernels,
    src: &MatRef<T>,
    dst: &'d mut [f32],
) -> MatRef<'d> {
    let (rows, cols) = (src.rows, src.cols);
    let dst = &mut dst[..rows * cols];
    dispatch!(kernels,
        scalar: round_rows(ScalarKernel, src, dst),
        simd: |s| round_rows(s, src, dst),
    );
    MatRef {
        data: dst,
        rows,
        cols,
        row_stride: cols,
        transposed: src.transposed,
    }
}

/// `dst` (`rows · cols`, contiguous) = the stored rows of `src`, each
/// rounded to bf16 (as f32) a chunk at a time.
#[inline(always)]
fn round_rows<K: GemmKernel, T: Bf16Input>(kernel: K, src: &MatRef<T>, dst: &mut [f32]) {
    let cols = src.cols;
    if cols == 0 {
        return;
    }
    let mut chunk = [Bf16::default(); ROUND_CHUNK];
    for (r, out) in dst.chunks_exact_mut(cols).enumerate() {
        let row = &src.data[r * src.row_stride..][..cols];
        for (part, out) in row.chunks(ROUND_CHUNK).zip(out.chunks_mut(ROUND_CHUNK)) {
            let chunk = &mut chunk[..part.len()];
            T::round_slice(part, chunk, round_by(kernel));
            for (o, h) in out.iter_mut().zip(&*chunk) {
                *o = h.to_f32();
            }
        }
    }
}

/// Columns of a packed B panel and of a register tile (two vectors).
pub(super) const NR: usize = 32;

/// The tile units the crate drives (see [`Kernels::tile_unit`]).
#[derive(Clone, Copy)]
enum TileIsa {
    #[cfg(target_arch = "x86_64")]
    Amx,
    #[cfg(test)]
    Emulated,
}

/// The pair-dot units the crate drives (see [`Kernels::pair_unit`]).
#[derive(Clone, Copy)]
enum PairIsa {
    #[cfg(target_arch = "x86_64")]
    V4Bf16,
    #[cfg(test)]
    Emulated,
}

/// The shape of a pair-packed product: rows per A panel, pairs of k, and
/// the padded sizes of A and B.
#[derive(Clone, Copy)]
struct PairLayout {
    m: usize,
    n: usize,
    /// Rows of an A panel. On tiles, [`amx::MR`]. Else those of a register
    /// tile: 12 (24 accumulators + 2 B vectors + 1 broadcast fit the 32
    /// ZMM registers), fewer for short products so that decoding's single
    /// rows do not compute 11 rows of padding.
    mr: usize,
    k_pairs: usize,
    /// Pairs per B panel (and per packed row of A on tiles): `k_pairs`
    /// padded to whole tile steps with zeros, so no tile load leaves a
    /// panel.
    b_pairs: usize,
    /// Whether the product runs on tiles (A packed row by row).
    tiles: bool,
    a_panels: usize,
    b_panels: usize,
}

impl PairLayout {
    /// The layout of an `m × k` by `k × n` product; on tiles where they are
    /// `available` and A has at least a tile block of rows (fewer rows run
    /// on the pair dot products: a block would be mostly padding).
    fn new(m: usize, n: usize, k: usize, available: bool) -> PairLayout {
        let tiles = available && m >= amx::MR;
        let mr = match m {
            _ if tiles => amx::MR,
            12.. => 12,
            4..=11 => 4,
            _ => 1,
        };
        PairLayout {
            m,
            n,
            mr,
            k_pairs: k.div_ceil(2),
            b_pairs: padded_pairs(k),
            tiles,
            a_panels: m.div_ceil(mr),
            b_panels: n.div_ceil(NR),
        }
    }
    fn a_panel_len(&self) -> usize {
        let pairs = if self.tiles {
            self.b_pairs
        } else {
            self.k_pairs
        };
        self.mr.saturating_mul(pairs)
    }
    fn a_len(&self) -> usize {
        self.a_panels.saturating_mul(self.a_panel_len())
    }
    fn b_panel_len(&self) -> usize {
        NR.saturating_mul(self.b_pairs)
    }
    fn b_len(&self) -> usize {
        self.b_panels.saturating_mul(self.b_panel_len())
    }
    fn workspace_len(&self) -> usize {
        self.a_len().saturating_add(self.b_len())
    }
    /// A panels per block of [`BLOCK_ROWS`] rows.
    fn row_tiles(&self) -> usize {
        BLOCK_ROWS / self.mr
    }
    fn row_blocks(&self) -> usize {
        self.a_panels.div_ceil(self.row_tiles())
    }
    fn col_blocks(&self) -> usize {
        self.b_panels.div_ceil(BLOCK_PANELS)
    }
    /// The A panels of row block `rb`.
    fn row_block(&self, rb: usize) -> Range<usize> {
        let tiles = self.row_tiles();
        rb * tiles..self.a_panels.min((rb + 1) * tiles)
    }
    /// The B panels of column block `cb`.
    fn col_block(&self, cb: usize) -> Range<usize> {
        cb * BLOCK_PANELS..self.b_panels.min((cb + 1) * BLOCK_PANELS)
    }
}

/// Slots of one packed B panel for depth `k`; saturating, since with no
/// columns ([`PackedBf16::len`] 0) any `k` is a valid shape.
fn panel_slots(k: usize) -> usize {
    NR.saturating_mul(padded_pairs(k))
}

/// Pairs of a packed B panel for depth `k`: `k / 2` rounded up to whole
/// tile steps.
fn padded_pairs(k: usize) -> usize {
    k.div_ceil(2).div_ceil(amx::K_STEP) * amx::K_STEP
}

/// The two bf16 values of a pair slot, as f32: `(lo, hi)` (for the
/// emulated units).
#[cfg(test)]
pub(super) fn unpair(slot: f32) -> (f32, f32) {
    let bits = slot.to_bits();
    (pair_half(bits, false), pair_half(bits, true))
}

/// `K`'s vector rounding, for [`Bf16Input::round_slice`] (a closure in
/// SIMD code must inline, or each intrinsic goes out of line).
#[inline(always)]
fn round_by<K: GemmKernel>(kernel: K) -> impl FnOnce(&[f32], &mut [Bf16]) {
    #[inline(always)]
    move |x, d| kernel.round_to_bf16(x, d)
}

/// Packs panels `panels` of A as `layout` has them into `out`: row by row
/// for tiles, else pairs interleaved across `layout.mr` rows.
#[inline(always)]
fn pack_a_panels<K: GemmKernel, T: Bf16Input>(
    kernel: K,
    a: &MatRef<T>,
    layout: PairLayout,
    panels: Range<usize>,
    out: &mut [f32],
) {
    if layout.tiles {
        for (p, panel) in panels.zip(out.chunks_exact_mut(layout.a_panel_len())) {
            amx::pack_rows(kernel, a, p, panel)
        }
    } else {
        pack_panels(kernel, a, layout.mr, panels, out)
    }
}

/// `slots[q] = pair(row[2q], row[2q + 1])` rounded to bf16, the last
/// padded with zero: `slots.len() == row.len().div_ceil(2)`.
#[inline(always)]
pub(super) fn round_row_pairs<K: GemmKernel, T: Bf16Input>(
    kernel: K,
    row: &[T],
    slots: &mut [f32],
) {
    // A row's pairs are its values two at a time, so the row rounds
    // straight into the slots' memory. `pair` puts the first value in the
    // low half, which comes first on a little-endian CPU; on a big-endian
    // one the halves are swapped back.
    let halves: &mut [Bf16] = bytemuck::cast_slice_mut(slots);
    let (values, pad) = halves.split_at_mut(row.len());
    T::round_slice(row, values, round_by(kernel));
    pad.fill(Bf16::default());
    if cfg!(target_endian = "big") {
        for slot in slots.iter_mut() {
            *slot = f32::from_bits(slot.to_bits().rotate_left(16));
        }
    }
}

/// Packs panels `panels` of the rows of `src` (as used) into `out`, one
/// after another, `out.len() / panels.len()` slots each. Panel `p` holds
/// rows `p·width..` (at most `width` of them): for each pair `q` of
/// columns, the pairs `(src[r][2q], src[r][2q + 1])` of its rows, `width`
/// slots per pair; rows and columns past the matrix (up to the panel's
/// end) are zero. (B is packed through its transpose: rows of Bᵀ are
/// columns of B.) Rounding runs along whichever direction the storage is
/// contiguous in.
#[inline(always)]
fn pack_panels<K: GemmKernel, T: Bf16Input>(
    kernel: K,
    src: &MatRef<T>,
    width: usize,
    panels: Range<usize>,
    out: &mut [f32],
) {
    if panels.is_empty() {
        return;
    }
    let (rows, cols) = (src.rows(), src.cols());
    let (rs, cs) = src.strides();
    let panel_len = out.len() / panels.len();
    let live = |p: usize| width.min(rows - p * width);
    if cs == 1 {
        // Rows are contiguous, so a row's pairs are its own values two at
        // a time: round a stretch of each row into a line of slots, then
        // interleave the lines into the panel (a transpose, as the f32
        // packing does). Lines past the matrix stay zero.
        let pairs = cols.div_ceil(2);
        for (p, panel) in panels.zip(out.chunks_exact_mut(panel_len)) {
            let mut lines = [[0.0; LINE_PAIRS]; NR];
            for start in (0..pairs).step_by(LINE_PAIRS) {
                let count = LINE_PAIRS.min(pairs - start);
                let values = 2 * start..cols.min(2 * (start + count));
                for (i, line) in lines[..live(p)].iter_mut().enumerate() {
                    let row = &src.data[(p * width + i) * rs..][values.clone()];
                    round_row_pairs(kernel, row, &mut line[..count]);
                }
                let lines: [&[f32]; NR] = core::array::from_fn(|i| &lines[i][..count]);
                kernel.interleave(
                    &lines[..width],
                    &mut panel[start * width..][..count * width],
                );
            }
            // The pad pairs past the last column.
            panel[pairs * width..].fill(0.0);
        }
    } else {
        // Columns are contiguous (`rs == 1`): two columns at a time, the
        // share of every panel in turn, so that each step reads one run
        // of the panels' rows from each column (a panel at a time would
        // read a line or two per column and wait on each).
        for q in 0..panel_len / width {
            let strip = |c: usize, p: usize| &src.data[c * cs + p * width..][..live(p)];
            for (p, panel) in panels.clone().zip(out.chunks_exact_mut(panel_len)) {
                let (slots, pad) = panel[q * width..][..width].split_at_mut(live(p));
                if 2 * q < cols {
                    let hi = (2 * q + 1 < cols).then(|| strip(2 * q + 1, p));
                    T::pair_slices(
                        strip(2 * q, p),
                        hi,
                        slots,
                        #[inline(always)]
                        |lo, hi, slots| kernel.round_pairs(lo, hi, slots),
                    );
                } else {
                    slots.fill(0.0);
                }
                pad.fill(0.0);
            }
        }
    }
}

/// [`GemmKernel::round_pairs`] a vector of slots at a time.
#[inline(always)]
pub(super) fn round_pairs_simd<S: Simd>(s: S, lo: &[f32], hi: Option<&[f32]>, slots: &mut [f32]) {
    let zero = s.splat(0.0);
    for piece in pieces(slots.len(), S::LANES) {
        let lo = s.load_piece(&lo[piece.clone()], 0.0);
        // (A `match`, not `map_or`: a closure passed to a generic function
        // compiles outside the vector context and calls every intrinsic.)
        let hi = match hi {
            Some(hi) => s.load_piece(&hi[piece.clone()], 0.0),
            None => zero,
        };
        s.store_piece(&mut slots[piece], s.bf16_pairs(lo, hi));
    }
}

/// Pairs per line when packing rows (see [`pack_panels`]): [`NR`] lines of
/// them, 8 KiB on the stack, stay in L1 between rounding and interleaving.
const LINE_PAIRS: usize = 64;

/// Elements rounded per call when rounding rows into f32 (the portable
/// unit's operands, `round_rows`).
pub(super) const ROUND_CHUNK: usize = 256;

/// Independent accumulator chains of the peak loop: as many as a register
/// tile has rows, enough to cover the dot product's latency.
const PEAK_CHAINS: usize = 12;

fn pair_chains<P: PairDot>(unit: P, iters: usize) -> f32 {
    unit.enter(
        #[inline(always)]
        |u| {
            let b = [core::hint::black_box(pair(Bf16::from_f32(1e-3), Bf16::from_f32(1e-3))); 16];
            let (a, b) = (core::hint::black_box(b[0]), u.load_b(&b));
            let mut acc = [u.zero(); PEAK_CHAINS];
            for _ in 0..iters {
                for x in &mut acc {
                    *x = u.dot(*x, a, b);
                }
            }
            let mut out = [0.0f32; 16];
            let mut total = 0.0;
            for x in acc {
                u.update(x, 1.0, 0.0, &mut out);
                total += out[0];
            }
            total
        },
    )
}

/// Where a product's B panels come from: packed from B as the product
/// runs (into the workspace after packed A), or packed beforehand.
enum PanelsOfB<'a, B> {
    Pack {
        b: &'a MatRef<'a, B>,
        into: &'a mut [f32],
    },
    /// Panel `j` starts at slot `j · stride`.
    Packed { panels: &'a [f32], stride: usize },
}

/// The pair-packed product on `unit`, in two rounds of pieces of `exec`:
/// the A panels are packed (a block of rows a piece), and the B panels
/// unless B came packed (a block of columns a piece); then each piece
/// computes one block of C: [`BLOCK_ROWS`] rows by [`BLOCK_PANELS`] column
/// panels, so its rows of packed A stay in L2 across its panels. Every
/// element of C is summed in the same order whatever the blocks, so the
/// result does not depend on the executor. Packing rounds with the
/// backend's vectors.
fn run_pairs<P: PairDot, E: Executor + ?Sized, A: Bf16Input, B: Bf16Input>(
    unit: P,
    tiles: Option<TileIsa>,
    kernels: &Kernels,
    exec: &E,
    (alpha, a, b, beta, c): (f32, &MatRef<A>, PanelsOfB<B>, f32, MatMut),
    packed_a: &mut [f32],
) {
    let layout = PairLayout::new(c.rows, c.cols, a.cols(), tiles.is_some());
    let (a_panel, b_panel) = (layout.a_panel_len(), layout.b_panel_len());
    let packed_a = &mut packed_a[..layout.a_len()];
    let a_out = SharedMut(packed_a.as_mut_ptr());
    // B to pack (through its transpose: rows of Bᵀ are columns of B) into
    // the workspace after A, unless it came packed.
    let mut b = b;
    let pack_b = match &mut b {
        PanelsOfB::Pack { b, into } => {
            Some((b.t(), SharedMut(into[..layout.b_len()].as_mut_ptr())))
        }
        PanelsOfB::Packed { .. } => None,
    };
    // One round packs both, A a block of rows a piece and B a block of
    // columns a piece (whole runs of columns where the columns are
    // contiguous, see `pack_panels`): a thread that finishes its share of
    // one goes on to the other instead of waiting between two rounds.
    let a_blocks = layout.row_blocks();
    let b_blocks = pack_b.as_ref().map_or(0, |_| layout.col_blocks());
    run_pieces(exec, a_blocks + b_blocks, &|piece| {
        if piece < a_blocks {
            let panels = layout.row_block(piece);
            // SAFETY: `panels` ends at most at `a_panels`, and A panel `p`
            // is its own `a_panel` floats of `packed_a` (a_panels · a_panel
            // = a_len); the row blocks do not overlap, so no other piece
            // touches them.
            let out = unsafe { a_out.slice(panels.start * a_panel, panels.len() * a_panel) };
            // (Pair units run on a SIMD backend; the scalar arm is for
            // completeness.)
            dispatch!(kernels,
                scalar: pack_a_panels(ScalarKernel, a, layout, panels.clone(), out),
                simd: |s| pack_a_panels(s, a, layout, panels.clone(), out),
            );
        } else if let Some((bt, b_out)) = &pack_b {
            let panels = layout.col_block(piece - a_blocks);
            // SAFETY: `panels` ends at most at `b_panels`, and B panel `j`
            // is its own `b_panel` floats of the `b_len` floats at `b_out`
            // (b_panels · b_panel = b_len); the column blocks do not
            // overlap, so no other piece touches them.
            let out = unsafe { b_out.slice(panels.start * b_panel, panels.len() * b_panel) };
            dispatch!(kernels,
                scalar: pack_panels(ScalarKernel, bt, NR, panels.clone(), out),
                simd: |s| pack_panels(s, bt, NR, panels.clone(), out),
            );
        }
    });
    let (packed_b, b_stride): (&[f32], usize) = match b {
        PanelsOfB::Pack { into, .. } => (&into[..layout.b_len()], b_panel),
        PanelsOfB::Packed { panels, stride } => (panels, stride),
    };
    let run = Pairs {
        layout,
        tiles: tiles.filter(|_| layout.tiles),
        alpha,
        beta,
        a: packed_a,
        b: packed_b,
        b_stride,
        c: SharedMut(c.data.as_mut_ptr()),
        c_stride: c.row_stride,
    };
    let col_blocks = layout.col_blocks();
    run_pieces(exec, layout.row_blocks() * col_blocks, &|p| {
        let (rows, panels) = (
            layout.row_block(p / col_blocks),
            layout.col_block(p % col_blocks),
        );
        unit.enter(
            #[inline(always)]
            |u| run.block_dispatch(u, rows, panels),
        )
    });
}

/// Rows of C per block (a multiple of every layout's `mr`: 1, 4, 12 and
/// the tiles' 32): on the pair-dot path, with a pass of 256 pairs, its
/// packed A is 192 KiB, in L2 on every CPU with AVX512-BF16 (Zen 4: 1
/// MiB).
const BLOCK_ROWS: usize = 192;

/// Column panels per block: the B slices of a pass (4 × 32 KiB) stay in
/// L2 beside the A block.
const BLOCK_PANELS: usize = 4;

/// One instruction set's pair dot product on 16 f32 lanes: lane `j` adds
/// `a.lo · b[j].lo + a.hi · b[j].hi`.
trait PairDot: Copy + Send + Sync {
    type Acc: Copy;
    type B: Copy;
    /// Runs `f` with the instruction set enabled.
    fn enter<R>(self, f: impl FnOnce(Self) -> R) -> R;
    fn zero(self) -> Self::Acc;
    /// 16 pairs of B (16 slots).
    fn load_b(self, b: &[f32]) -> Self::B;
    /// `acc += a · b` for the broadcast pair `a` (one slot).
    fn dot(self, acc: Self::Acc, a: f32, b: Self::B) -> Self::Acc;
    /// 16 f32 sums as an accumulator.
    fn load_acc(self, sums: &[f32]) -> Self::Acc;
    /// `c = alpha · acc + beta · c` on the first `c.len() <= 16` lanes;
    /// `beta = 0` does not read `c`.
    fn update(self, acc: Self::Acc, alpha: f32, beta: f32, c: &mut [f32]);
}

/// A product to run: the layout, the tile unit if it runs on tiles, the
/// scalars, packed A and B, and C.
struct Pairs<'a> {
    layout: PairLayout,
    tiles: Option<TileIsa>,
    alpha: f32,
    beta: f32,
    a: &'a [f32],
    b: &'a [f32],
    /// Slots from one B panel to the next.
    b_stride: usize,
    c: SharedMut,
    c_stride: usize,
}

impl Pairs<'_> {
    /// The block of C of row tiles `rows` and column panels `panels`, on
    /// tiles or with the register tile of the layout's height.
    #[inline(always)]
    fn block_dispatch<P: PairDot>(&self, unit: P, rows: Range<usize>, panels: Range<usize>) {
        match self.tiles {
            #[cfg(target_arch = "x86_64")]
            Some(TileIsa::Amx) => {
                // SAFETY: `TileIsa::Amx` comes from a handle whose bf16 unit
                // is AMX, granted only after detection and the OS's
                // permission.
                let tiles = unsafe { amx::AmxTiles::granted() };
                return self.tile_block(tiles, unit, rows, panels);
            }
            #[cfg(test)]
            Some(TileIsa::Emulated) => {
                return self.tile_block(amx::EmulatedTiles, unit, rows, panels)
            }
            None => {}
        }
        match self.layout.mr {
            12 => self.block::<P, 12>(unit, rows, panels),
            4 => self.block::<P, 4>(unit, rows, panels),
            _ => self.block::<P, 1>(unit, rows, panels),
        }
    }

    /// `C[rows of row tile i, columns of panel j] = alpha · sums + beta ·
    /// C` for the sums of one register or tile block (`sums[r]` holds row
    /// r's 32 columns as two halves).
    #[inline(always)]
    fn update<P: PairDot>(&self, unit: P, i: usize, j: usize, beta: f32, sums: &[[P::Acc; 2]]) {
        let (l, mr) = (&self.layout, self.layout.mr);
        let cols = NR.min(l.n - j * NR);
        for (r, row_sums) in sums.iter().enumerate().take(mr.min(l.m - i * mr)) {
            let at = (i * mr + r) * self.c_stride + j * NR;
            // SAFETY: row `i·mr + r` < m and columns `j·NR..j·NR + cols` ≤ n
            // lie inside C (`MatMut` checked its extent; its row stride is
            // at least n where m > 1, so rows do not overlap); only the
            // piece of this block writes them.
            let c = unsafe { core::slice::from_raw_parts_mut(self.c.ptr().add(at), cols) };
            let (c0, c1) = c.split_at_mut(cols.min(16));
            unit.update(row_sums[0], self.alpha, beta, c0);
            if !c1.is_empty() {
                unit.update(row_sums[1], self.alpha, beta, c1);
            }
        }
    }

    /// Starts fetching the C rows of row tile `i`, column panel `j`, so
    /// that they are in cache when its sums are ready.
    #[inline(always)]
    fn prefetch_c(&self, i: usize, j: usize) {
        let (l, mr) = (&self.layout, self.layout.mr);
        let cols = NR.min(l.n - j * NR);
        for r in 0..mr.min(l.m - i * mr) {
            let row = self
                .c
                .ptr()
                .wrapping_add((i * mr + r) * self.c_stride + j * NR);
            prefetch(row);
            prefetch(row.wrapping_add(cols - 1));
        }
    }

    /// A block on tiles: each `amx::MR × 32` block of sums runs down the
    /// whole of k into a buffer, then through the pair unit's epilogue.
    #[inline(always)]
    fn tile_block<T: amx::TileProduct, P: PairDot>(
        &self,
        tiles: T,
        unit: P,
        rows: Range<usize>,
        panels: Range<usize>,
    ) {
        let l = &self.layout;
        let mut sums = [0.0f32; amx::MR * NR];
        let mut acc = [[unit.zero(); 2]; amx::MR];
        for j in panels {
            let b = &self.b[j * self.b_stride..][..l.b_panel_len()];
            for i in rows.clone() {
                let a = &self.a[i * l.a_panel_len()..][..l.a_panel_len()];
                tiles.block(a, l.b_pairs, b, l.b_pairs / amx::K_STEP, &mut sums);
                for (acc, row) in acc.iter_mut().zip(sums.chunks_exact(NR)) {
                    *acc = [unit.load_acc(&row[..16]), unit.load_acc(&row[16..])];
                }
                self.update(unit, i, j, self.beta, &acc);
            }
        }
    }

    /// A block with `MR`-row register tiles, in passes over slices of k:
    /// the slice of a B panel stays in L1 while the block's row tiles read
    /// it, and C takes each pass's sums (`beta` on the first).
    #[inline(always)]
    fn block<P: PairDot, const MR: usize>(
        &self,
        unit: P,
        rows: Range<usize>,
        panels: Range<usize>,
    ) {
        let l = &self.layout;
        let passes = l.k_pairs.div_ceil(KC_PAIRS);
        let per_pass = l.k_pairs.div_ceil(passes);
        for pass in 0..passes {
            let pairs = pass * per_pass..l.k_pairs.min((pass + 1) * per_pass);
            let beta = if pass == 0 { self.beta } else { 1.0 };
            for j in panels.clone() {
                let b = &self.b[j * self.b_stride..][pairs.start * NR..pairs.end * NR];
                for i in rows.clone() {
                    let a = &self.a[i * l.a_panel_len()..][pairs.start * MR..pairs.end * MR];
                    self.prefetch_c(i, j);
                    self.update(unit, i, j, beta, &tile::<P, MR>(unit, a, b));
                }
            }
        }
    }
}

/// Pairs of k per pass of the pair-dot path: the B slice of a pass (32
/// columns × 256 pairs = 32 KiB) fits the smallest L1 of the CPUs this
/// runs on (Zen 4: 32 KiB; Sapphire Rapids: 48 KiB), and the trainer's
/// k = 384 runs in one pass.
const KC_PAIRS: usize = 256;

/// The `MR × 32` sums of one A panel and one B panel over the pairs of k
/// they hold (one pass).
#[inline(always)]
fn tile<P: PairDot, const MR: usize>(unit: P, a: &[f32], b: &[f32]) -> [[P::Acc; 2]; MR] {
    let mut acc = [[unit.zero(); 2]; MR];
    for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        let (b0, b1) = (unit.load_b(&b[..16]), unit.load_b(&b[16..]));
        for (acc, &a) in acc.iter_mut().zip(a) {
            acc[0] = unit.dot(acc[0], a, b0);
            acc[1] = unit.dot(acc[1], a, b1);
        }
    }
    acc
}

/// Proof that the CPU runs AVX512-BF16 (with AVX512F and BW), i.e. that
/// [`Bf16Unit::Avx512Bf16`] was detected.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct V4Bf16(());

#[cfg(target_arch = "x86_64")]
impl V4Bf16 {
    /// The proof that the unit may run (made here and in `vectorize`, both
    /// under the same contract).
    ///
    /// # Safety
    /// [`Bf16Unit::Avx512Bf16`] or [`Bf16Unit::Amx`] must have been
    /// detected on an AVX-512 handle (a [`PairIsa::V4Bf16`] unit).
    unsafe fn detected() -> V4Bf16 {
        V4Bf16(())
    }

    /// # Safety
    /// The CPU must support AVX512F, AVX512BW and AVX512-BF16 and the OS
    /// must save ZMM state ([`Bf16Unit::Avx512Bf16`] detected).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma")]
    #[inline]
    unsafe fn vectorize<R>(f: impl FnOnce(V4Bf16) -> R) -> R {
        f(V4Bf16(()))
    }
}

// Every `unsafe` below calls an AVX-512 intrinsic. SAFETY (for all of
// them): a `V4Bf16` value is made only by `V4Bf16::detected` and
// `V4Bf16::vectorize`, whose contracts are that the CPU supports them;
// loads read slices whose length was checked on the line before.
#[cfg(target_arch = "x86_64")]
impl PairDot for V4Bf16 {
    type Acc = core::arch::x86_64::__m512;
    type B = core::arch::x86_64::__m512bh;

    #[inline(always)]
    fn enter<R>(self, f: impl FnOnce(Self) -> R) -> R {
        // SAFETY: holding `self` proves the unit was detected
        // (`V4Bf16::detected`).
        unsafe { V4Bf16::vectorize(f) }
    }
    #[inline(always)]
    fn zero(self) -> Self::Acc {
        // SAFETY: see the impl comment.
        unsafe { core::arch::x86_64::_mm512_setzero_ps() }
    }
    #[inline(always)]
    fn load_b(self, b: &[f32]) -> Self::B {
        use core::arch::x86_64::*;
        let b = &b[..16];
        // SAFETY: see the impl comment; `b` holds 16 slots (64 bytes), and
        // a 512-bit integer vector and 32 bf16 lanes are the same bits.
        unsafe { core::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(b.as_ptr().cast())) }
    }
    #[inline(always)]
    fn dot(self, acc: Self::Acc, a: f32, b: Self::B) -> Self::Acc {
        use core::arch::x86_64::*;
        // SAFETY: see the impl comment; the broadcast slot holds one pair,
        // repeated into every lane's pair.
        unsafe {
            let a = _mm512_set1_epi32(a.to_bits() as i32);
            _mm512_dpbf16_ps(acc, core::mem::transmute::<__m512i, __m512bh>(a), b)
        }
    }
    #[inline(always)]
    fn load_acc(self, sums: &[f32]) -> Self::Acc {
        let sums = &sums[..16];
        // SAFETY: see the impl comment; `sums` holds 16 floats.
        unsafe { core::arch::x86_64::_mm512_loadu_ps(sums.as_ptr()) }
    }
    #[inline(always)]
    fn update(self, acc: Self::Acc, alpha: f32, beta: f32, c: &mut [f32]) {
        use core::arch::x86_64::*;
        let mask = ((1u32 << c.len().min(16)) - 1) as __mmask16;
        // SAFETY: see the impl comment; the masked load and store touch
        // exactly the first `c.len() <= 16` floats of `c`.
        unsafe {
            let scaled = _mm512_mul_ps(_mm512_set1_ps(alpha), acc);
            let out = if beta == 0.0 {
                scaled
            } else {
                let old = _mm512_maskz_loadu_ps(mask, c.as_ptr());
                _mm512_fmadd_ps(_mm512_set1_ps(beta), old, scaled)
            };
            _mm512_mask_storeu_ps(c.as_mut_ptr(), mask, out);
        }
    }
}

/// The pair dot product lane by lane in f32, so the packing and blocking
/// of the AVX512-BF16 path run on any CPU in tests.
#[cfg(test)]
#[derive(Clone, Copy)]
struct EmulatedPairs;

#[cfg(test)]
impl PairDot for EmulatedPairs {
    type Acc = [f32; 16];
    type B = [f32; 16];

    fn enter<R>(self, f: impl FnOnce(Self) -> R) -> R {
        f(self)
    }
    fn zero(self) -> [f32; 16] {
        [0.0; 16]
    }
    fn load_b(self, b: &[f32]) -> [f32; 16] {
        core::array::from_fn(|j| b[j])
    }
    fn dot(self, acc: [f32; 16], a: f32, b: [f32; 16]) -> [f32; 16] {
        let (a_lo, a_hi) = unpair(a);
        core::array::from_fn(|j| {
            let (b_lo, b_hi) = unpair(b[j]);
            acc[j] + a_lo * b_lo + a_hi * b_hi
        })
    }
    fn load_acc(self, sums: &[f32]) -> [f32; 16] {
        core::array::from_fn(|j| sums[j])
    }
    fn update(self, acc: [f32; 16], alpha: f32, beta: f32, c: &mut [f32]) {
        for (x, &sum) in c.iter_mut().zip(&acc) {
            *x = if beta == 0.0 {
                alpha * sum
            } else {
                beta.mul_add(*x, alpha * sum)
            };
        }
    }
}
