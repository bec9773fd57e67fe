//! Mixed precision: `C = alpha · op(A) · op(B) + beta · C` where A and B
//! are bf16 (or f32 rounded to bf16 as they are read) and the products are
//! summed in f32, on one of three units ([`Bf16Unit`]):
//!
//! - portable, the reference: the operands are rounded into the workspace
//!   as f32 values, then multiplied by the f32 GEMM, so it runs on every
//!   backend and is split like it; a product of at most `FEW_ROWS` rows
//!   (decoding) instead sums each element down k in order, reading B's
//!   pairs packed (packing an unpacked B first) or B's bf16 rows where
//!   they lie, so B is read at 2 bytes a value and never unpacked. The
//!   other units leave their products of at most `PAIR_UNIT_FEW_ROWS` rows
//!   to this path (they are bound by reading B);
//! - AVX512-BF16: `vdpbf16ps` adds the dot product of a pair of bf16 values
//!   of A (broadcast) and 16 pairs of B into 16 f32 sums, twice the FMAs of
//!   an f32 instruction. A is packed into panels of `MR` rows, B into
//!   panels of 32 columns, both as pairs of consecutive k (one pair per
//!   32-bit slot of the workspace); a register tile of `MR × 32` sums runs
//!   down a pass of k (at most 256 pairs) and C takes each pass's sums;
//! - AMX (`amx`): tiles of 16 rows multiply 32 × 32 blocks down the
//!   whole of k, from the same B panels and A packed tile-major, or read
//!   where it lies when it is bf16 rows on cache lines already
//!   (`pairs::rows_in_place`); products of fewer than 32 rows run on
//!   AVX512-BF16 (those of at most `PAIR_UNIT_FEW_ROWS`, on the few-row
//!   path). Packed panels start on 64-byte lines in the workspace.
//!
//! Pieces are blocks of C (rows × column panels); each element of C is
//! summed by one piece in one order whatever the blocks: bit-identical for
//! any executor.
//!
//! - `portable`: products of few rows (on every unit), and the portable
//!   unit's rounding of operands for the f32 GEMM;
//! - `packing`: the pair-packed layout and packing A and B into it;
//! - `pairs`: the loop nest over pair-packed panels, and the pair-dot
//!   units (AVX512-BF16, and an emulated one for tests);
//! - `amx`: the same blocks on AMX tiles.

mod amx;
mod packing;
mod pairs;
mod portable;

use amx::TileProduct;
use packing::{from_line, pack_panels, padded_pairs, panel_slots, PairLayout};
pub(super) use packing::{pair_bf16s_simd, round_pairs_simd};
#[cfg(test)]
use pairs::EmulatedPairs;
#[cfg(target_arch = "x86_64")]
use pairs::V4Bf16;
use pairs::{pair_chains, run_pairs, PanelsOfB, Product, PEAK_CHAINS};
use portable::{few_rows, round_into, unpack, FewRows, RowsOfB, FEW_ROWS, PAIR_UNIT_FEW_ROWS};
use sealed::OutputMat;
pub(crate) use sealed::{InputSlice, OutputSlice};

use super::microkernel::ScalarKernel;
use super::{
    add_bias_rows, check_product, check_product_of, check_workspace, scale_rows, MatMut, MatRef,
    Output,
};
use crate::bf16::pair;
use crate::dispatch::{dispatch, Isa};
use crate::parallel::SharedMut;
use crate::{Bf16, Bf16Unit, Executor, KernelError, Kernels, Sequential};

/// An element type of an input that may be bf16: [`Bf16`] as stored, or
/// `f32`. A bf16 product ([`Kernels::gemm_bf16`]) rounds f32 values to the
/// nearest bf16 ([`Bf16::from_f32`]); GELU ([`Kernels::gelu_forward`],
/// [`Kernels::gelu_backward`]) computes in f32 from either.
pub trait Bf16Input: Copy + Sync + sealed::Sealed {
    /// The value as the product uses it.
    fn to_bf16(self) -> Bf16;
    /// An input slice as the element-wise routines take it.
    #[doc(hidden)]
    fn input_slice(x: &[Self]) -> sealed::InputSlice<'_>;
    /// `dst[i] = src[i].to_bf16()` for equal lengths, f32 values rounded
    /// by `narrow` (which the caller vectorizes).
    #[doc(hidden)]
    fn round_slice(src: &[Self], dst: &mut [Bf16], narrow: impl FnOnce(&[f32], &mut [Bf16]));
    /// `slots[i] = pair(lo[i].to_bf16(), hi[i].to_bf16())` (zero without
    /// `hi`) for lengths of `slots`: f32 values rounded and paired by
    /// `round_pairs`, bf16 values paired by `pair_bf16s` (both vectorized
    /// by the caller).
    #[doc(hidden)]
    fn pair_slices(
        lo: &[Self],
        hi: Option<&[Self]>,
        slots: &mut [f32],
        round_pairs: impl FnOnce(&[f32], Option<&[f32]>, &mut [f32]),
        pair_bf16s: impl FnOnce(&[Bf16], Option<&[Bf16]>, &mut [f32]),
    );
    /// The values as pair slots (two consecutive values a 32-bit slot, the
    /// first in the low half) where they are stored that way already:
    /// bf16, on a little-endian CPU, starting on a 32-bit boundary (an odd
    /// last value is left out). Tiles read rows of A from them in place
    /// where the rows also lie on 64-byte lines.
    #[doc(hidden)]
    fn as_pair_slots(_data: &[Self]) -> Option<&[f32]> {
        None
    }
    /// The values as bf16 where they are stored that way (products of few
    /// rows read a B of bf16 rows where it lies).
    #[doc(hidden)]
    fn as_bf16s(_data: &[Self]) -> Option<&[Bf16]> {
        None
    }
}

impl Bf16Input for f32 {
    #[inline]
    fn to_bf16(self) -> Bf16 {
        Bf16::from_f32(self)
    }
    #[inline]
    fn input_slice(x: &[f32]) -> sealed::InputSlice<'_> {
        sealed::InputSlice::F32(x)
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
        _: impl FnOnce(&[Bf16], Option<&[Bf16]>, &mut [f32]),
    ) {
        round_pairs(lo, hi, slots)
    }
}

impl Bf16Input for Bf16 {
    #[inline]
    fn to_bf16(self) -> Bf16 {
        self
    }
    #[inline]
    fn input_slice(x: &[Bf16]) -> sealed::InputSlice<'_> {
        sealed::InputSlice::Bf16(x)
    }
    #[inline]
    fn as_pair_slots(data: &[Bf16]) -> Option<&[f32]> {
        if cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(&data[..data.len() & !1]).ok()
    }
    #[inline]
    fn as_bf16s(data: &[Bf16]) -> Option<&[Bf16]> {
        Some(data)
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
        pair_bf16s: impl FnOnce(&[Bf16], Option<&[Bf16]>, &mut [f32]),
    ) {
        pair_bf16s(lo, hi, slots)
    }
}

/// An element type of an output that may be bf16: `f32`, which takes the
/// values as computed, or [`Bf16`], which takes each value rounded once
/// (as [`Bf16::from_f32`] does) from the f32 value an f32 output would be
/// given, half the bytes to write. A bf16 product's C
/// ([`Kernels::gemm_bf16`]) and GELU's output
/// ([`Kernels::gelu_forward`]) take either.
///
/// ```
/// use kernels::{Bf16, Kernels, MatMut, MatRef};
///
/// let k = Kernels::best();
/// let (a, b) = ([1.0, 2.0], [3.0, 1.0 / 1024.0]);
/// // 3 + 2/1024 in f32; rounded once to bf16, 3.
/// let mut c = [Bf16::from_f32(f32::NAN)];
/// let mut workspace = vec![0.0; k.gemm_bf16_workspace_len(1, 1, 2)];
/// let (a, b) = (MatRef::new(&a, 1, 2)?, MatRef::new(&b, 2, 1)?);
/// k.gemm_bf16(1.0, a, b, 0.0, MatMut::new(&mut c, 1, 1)?, &mut workspace)?;
/// assert_eq!(c[0].to_f32(), 3.0);
/// # Ok::<(), kernels::KernelError>(())
/// ```
pub trait Bf16Output: Copy + Send + Sync + sealed::Sealed {
    /// C as the product's loops take it.
    #[doc(hidden)]
    fn output(c: MatMut<'_, Self>) -> sealed::OutputMat<'_>;
    /// An output slice as the element-wise routines take it.
    #[doc(hidden)]
    fn output_slice(out: &mut [Self]) -> sealed::OutputSlice<'_>;
}

impl Bf16Output for f32 {
    #[inline]
    fn output(c: MatMut<'_, f32>) -> sealed::OutputMat<'_> {
        sealed::OutputMat::F32(c)
    }
    #[inline]
    fn output_slice(out: &mut [f32]) -> sealed::OutputSlice<'_> {
        sealed::OutputSlice::F32(out)
    }
}

impl Bf16Output for Bf16 {
    #[inline]
    fn output(c: MatMut<'_, Bf16>) -> sealed::OutputMat<'_> {
        sealed::OutputMat::Bf16(c)
    }
    #[inline]
    fn output_slice(out: &mut [Bf16]) -> sealed::OutputSlice<'_> {
        sealed::OutputSlice::Bf16(out)
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
    use crate::{Bf16, MatMut};

    /// Only the crate's element types are bf16 inputs and outputs.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for Bf16 {}

    /// C of either element type, as [`super::Bf16Output::output`] hands it
    /// to the loops.
    pub enum OutputMat<'a> {
        F32(MatMut<'a, f32>),
        Bf16(MatMut<'a, Bf16>),
    }

    /// An input slice of either element type, as
    /// [`super::Bf16Input::input_slice`] hands it on.
    pub enum InputSlice<'a> {
        F32(&'a [f32]),
        Bf16(&'a [Bf16]),
    }

    /// An output slice of either element type, as
    /// [`super::Bf16Output::output_slice`] hands it on.
    pub enum OutputSlice<'a> {
        F32(&'a mut [f32]),
        Bf16(&'a mut [Bf16]),
    }

    impl OutputMat<'_> {
        /// Rows and columns of C.
        pub(crate) fn shape(&self) -> (usize, usize) {
            match self {
                OutputMat::F32(c) => (c.rows(), c.cols()),
                OutputMat::Bf16(c) => (c.rows(), c.cols()),
            }
        }
    }
}

impl Kernels {
    /// Floats of workspace [`Kernels::gemm_bf16`] needs for an `m × k` by
    /// `k × n` product (saturating: an absurd shape asks for more than any
    /// buffer holds). It depends on the whole shape and the unit, not only
    /// on the size (a few rows may need more than many): size a shared
    /// workspace by the largest this returns for the products it serves.
    /// The same length serves a C of either element type.
    pub fn gemm_bf16_workspace_len(&self, m: usize, n: usize, k: usize) -> usize {
        if m == 0 || n == 0 || k == 0 {
            return 0;
        }
        if m <= self.few_rows_limit() {
            // An f32 C for a bf16 one, A rounded, B packed (padded to
            // whole panels and steps) unless read in place.
            PackedBf16::len(k, n)
                .and_then(|b| {
                    m.checked_mul(k)?
                        .checked_add(b)?
                        .checked_add(m.checked_mul(n)?)
                })
                .unwrap_or(usize::MAX)
        } else if self.pair_unit().is_some() {
            PairLayout::new(m, n, k, self.tile_unit().is_some()).workspace_len()
        } else {
            // An f32 C for a bf16 one, A and B rounded, then the f32
            // product's workspace.
            m.saturating_mul(n)
                .saturating_add(m.saturating_mul(k))
                .saturating_add(k.saturating_mul(n))
                .saturating_add(self.gemm_workspace_len(m, n, k))
        }
    }

    /// Most rows of a product that runs on the few-row path (each element
    /// of C summed down k in order, see `portable`): [`FEW_ROWS`] on the
    /// portable unit, [`PAIR_UNIT_FEW_ROWS`] on the others.
    pub(crate) fn few_rows_limit(&self) -> usize {
        match self.pair_unit() {
            Some(_) => PAIR_UNIT_FEW_ROWS,
            None => FEW_ROWS,
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
    /// C is f32, or [`Bf16`] ([`Bf16Output`]): a bf16 C is read as f32 and
    /// each element is rounded once, as [`Bf16::from_f32`] does, from the
    /// value the same call gives an f32 C holding the widened values (bit
    /// for bit, except that with alpha 1 and beta 1 AMX tiles start their
    /// sums from an f32 C, a different order of additions). Products whose
    /// result only other bf16 products read lose nothing by it, and write
    /// half the bytes.
    ///
    /// Error bound: each element differs from the exact product of the
    /// rounded operands by at most about (k + 2)·2⁻²⁴·(|alpha|·Σ|a·b| +
    /// |beta·c|), the bound of the f32 GEMM; except that AVX512-BF16 and
    /// AMX read a subnormal bf16 operand as zero (and flush subnormal
    /// partial sums), so a product with a subnormal operand may be missing.
    /// A bf16 C adds its rounding: at most 2⁻⁸ of each element's magnitude
    /// (2⁻¹³⁴ absolute below the smallest normal f32).
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
    pub fn gemm_bf16<A: Bf16Input, B: Bf16Input, C: Bf16Output>(
        &self,
        alpha: f32,
        a: MatRef<A>,
        b: MatRef<B>,
        beta: f32,
        c: MatMut<C>,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        self.gemm_bf16_with(&Sequential, alpha, a, b, beta, c, workspace)
    }

    /// [`Kernels::gemm_bf16`] split into pieces that `exec` runs, as
    /// [`Kernels::gemm_with`] does; the result does not depend on the
    /// executor.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_with<E: Executor + ?Sized, A: Bf16Input, B: Bf16Input, C: Bf16Output>(
        &self,
        exec: &E,
        alpha: f32,
        a: MatRef<A>,
        b: MatRef<B>,
        beta: f32,
        c: MatMut<C>,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        let (m, n, k) = check_product(&a, &b, &c)?;
        check_workspace(self.gemm_bf16_workspace_len(m, n, k), workspace)?;
        self.rows_product(exec, (alpha, &a, &b, beta, None), C::output(c), workspace)
    }

    /// [`Kernels::gemm_bf16_with`] (shapes and workspace checked), plus
    /// `bias` in every row where given (alpha 1 and beta 0 then).
    #[allow(clippy::type_complexity)]
    fn rows_product<E: Executor + ?Sized, A: Bf16Input, B: Bf16Input>(
        &self,
        exec: &E,
        (alpha, a, b, beta, bias): (f32, &MatRef<A>, &MatRef<B>, f32, Option<&[f32]>),
        c: OutputMat,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        let (m, n, k) = (a.rows(), b.cols(), a.cols());
        if m == 0 || n == 0 || k == 0 || alpha == 0.0 {
            nothing_to_multiply(self, exec, beta, bias, c);
            return Ok(());
        }
        if m <= self.few_rows_limit() {
            return self.portable_output(exec, (beta, bias), c, workspace, |c, beta, workspace| {
                // B's bf16 rows where they lie, or B packed into pairs;
                // then the product of few rows below.
                let (rounded_a, slots) = workspace.split_at_mut(m * k);
                let b = match (b.transposed, B::as_bf16s(b.data)) {
                    (false, Some(data)) => RowsOfB::InPlace {
                        data,
                        row_stride: b.row_stride,
                        k,
                        n,
                    },
                    _ => {
                        let slots = bytemuck::cast_slice_mut::<f32, u32>(
                            &mut slots[..PackedBf16::len(k, n).unwrap_or(0)],
                        );
                        self.pack_bf16(*b, slots)?;
                        RowsOfB::Packed(PackedBf16::new(slots, k, n)?)
                    }
                };
                self.few_rows_product(exec, alpha, a, b, beta, c, rounded_a);
                Ok(())
            });
        }
        if let Some(unit) = self.pair_unit() {
            self.pairs_packing_b(unit, exec, (alpha, a, b, beta, bias, c), workspace);
            return Ok(());
        }
        self.portable_output(exec, (beta, bias), c, workspace, |c, beta, workspace| {
            let (rounded_a, rest) = workspace.split_at_mut(m * k);
            let (rounded_b, rest) = rest.split_at_mut(k * n);
            let a = round_into(self, a, rounded_a);
            let b = round_into(self, b, rounded_b);
            self.gemm_with(exec, alpha, a, b, beta, c, rest)
        })
    }

    /// `C = op(A) · op(B) + bias` (the `n` floats of `bias` added to every
    /// row): a linear layer's product, as [`Kernels::gemm_bf16_with`] with
    /// alpha 1 and beta 0 computes it, on the same workspace. On the
    /// pair-dot and tile units the bias is added as each block is stored
    /// (tiles start their sums from it); elsewhere, and for products of
    /// at most 3 rows or no k, it is added to the f32 sums after the
    /// product. A bf16 C holds the
    /// f32 C's values, each rounded once. The error bound is
    /// [`Kernels::gemm_bf16`]'s with the bias in the sum.
    ///
    /// ```
    /// use kernels::{Kernels, MatMut, MatRef, Sequential};
    ///
    /// let k = Kernels::best();
    /// let (x, w, bias) = ([1.0, 2.0], [3.0, 0.5, 1.0, 1.0], [0.25, -1.0]);
    /// let mut y = [0.0; 2];
    /// let mut workspace = vec![0.0; k.gemm_bf16_workspace_len(1, 2, 2)];
    /// let (x, w) = (MatRef::new(&x, 1, 2)?, MatRef::new(&w, 2, 2)?);
    /// let y_ = MatMut::new(&mut y, 1, 2)?;
    /// k.gemm_bf16_bias_with(&Sequential, x, w, &bias, y_, &mut workspace)?;
    /// assert_eq!(y, [5.25, 1.5]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn gemm_bf16_bias_with<E, A, B, C>(
        &self,
        exec: &E,
        a: MatRef<A>,
        b: MatRef<B>,
        bias: &[f32],
        c: MatMut<C>,
        workspace: &mut [f32],
    ) -> Result<(), KernelError>
    where
        E: Executor + ?Sized,
        A: Bf16Input,
        B: Bf16Input,
        C: Bf16Output,
    {
        let (m, n, k) = check_product(&a, &b, &c)?;
        crate::error::expect_len("bias", bias.len(), n)?;
        check_workspace(self.gemm_bf16_workspace_len(m, n, k), workspace)?;
        let product = (1.0, &a, &b, 0.0, Some(bias));
        self.rows_product(exec, product, C::output(c), workspace)
    }

    /// [`run_pairs`] on `unit` with B packed into the workspace after A.
    #[allow(clippy::type_complexity)]
    fn pairs_packing_b<E: Executor + ?Sized, A: Bf16Input, B: Bf16Input>(
        &self,
        unit: PairIsa,
        exec: &E,
        (alpha, a, b, beta, bias, c): (f32, &MatRef<A>, &MatRef<B>, f32, Option<&[f32]>, OutputMat),
        workspace: &mut [f32],
    ) {
        let (m, n) = c.shape();
        let layout = PairLayout::new(m, n, a.cols(), self.tile_unit().is_some());
        let (packed_a, rest) = workspace.split_at_mut(layout.a_workspace_len());
        let b = PanelsOfB::Pack {
            b,
            into: from_line(rest),
        };
        let product = Product {
            alpha,
            a,
            b,
            beta,
            bias,
            c,
        };
        self.run_pairs_on(unit, exec, product, packed_a);
    }

    /// Runs the portable unit's `product(c, beta, workspace)` on an f32 C
    /// and adds the bias, if any, to its rows: C itself, or, for a bf16 C,
    /// the first `m · n` floats of the workspace (C widened into them
    /// unless beta is 0, rounded back after; the product gets the rest of
    /// the workspace).
    fn portable_output<E: Executor + ?Sized>(
        &self,
        exec: &E,
        (beta, bias): (f32, Option<&[f32]>),
        c: OutputMat,
        workspace: &mut [f32],
        product: impl FnOnce(MatMut, f32, &mut [f32]) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        let (m, n) = c.shape();
        let (wide, rest) = workspace.split_at_mut(m * n);
        match c {
            OutputMat::F32(mut c) => {
                product(c.reborrow(), beta, rest)?;
                if let Some(bias) = bias {
                    add_bias_rows(self, exec, bias, c);
                }
                Ok(())
            }
            OutputMat::Bf16(c) => {
                if beta != 0.0 {
                    for r in 0..m {
                        self.bf16_to_f32(
                            &c.data[r * c.row_stride..][..n],
                            &mut wide[r * n..][..n],
                        )?;
                    }
                }
                product(MatMut::new(wide, m, n)?, beta, rest)?;
                if let Some(bias) = bias {
                    add_bias_rows(self, exec, bias, MatMut::new(wide, m, n)?);
                }
                for r in 0..m {
                    self.f32_to_bf16(&wide[r * n..][..n], &mut c.data[r * c.row_stride..][..n])?;
                }
                Ok(())
            }
        }
    }
}

/// `C = beta · C + bias` (zeros without reading C where beta is 0; the
/// bias where given, beta then 0), for a product with nothing to
/// multiply; a bf16 C is rounded again.
fn nothing_to_multiply<E: Executor + ?Sized>(
    k: &Kernels,
    exec: &E,
    beta: f32,
    bias: Option<&[f32]>,
    c: OutputMat,
) {
    // An empty C has nothing to write; its row count may be anything.
    let (rows, cols) = c.shape();
    if rows == 0 || cols == 0 {
        return;
    }
    match (c, bias) {
        (OutputMat::F32(mut c), bias) => {
            scale_rows(beta, c.reborrow());
            if let Some(bias) = bias {
                add_bias_rows(k, exec, bias, c);
            }
        }
        (OutputMat::Bf16(c), Some(bias)) => {
            for r in 0..c.rows {
                let row = &mut c.data[r * c.row_stride..][..c.cols];
                // `0 + b`, as an f32 C gets it: a bias of -0 gives +0.
                for (x, &b) in row.iter_mut().zip(bias) {
                    *x = Bf16::from_f32(0.0 + b);
                }
            }
        }
        (OutputMat::Bf16(c), None) => {
            if beta == 1.0 {
                return;
            }
            for r in 0..c.rows {
                for x in &mut c.data[r * c.row_stride..][..c.cols] {
                    let scaled = if beta == 0.0 { 0.0 } else { beta * x.to_f32() };
                    *x = Bf16::from_f32(scaled);
                }
            }
        }
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
    /// every output NaN.) Keep `slots` on a 64-byte boundary where you
    /// can: AMX tiles load a panel row that straddles two cache lines at
    /// half the speed.
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
    /// `m × k` by packed `k × n` product (saturating), for a C of either
    /// element type.
    pub fn gemm_bf16_packed_workspace_len(&self, m: usize, n: usize, k: usize) -> usize {
        if m == 0 || n == 0 || k == 0 {
            return 0;
        }
        if m <= self.few_rows_limit() {
            // An f32 C for a bf16 one, A rounded.
            m.saturating_mul(n).saturating_add(m.saturating_mul(k))
        } else if self.pair_unit().is_some() {
            PairLayout::new(m, n, k, self.tile_unit().is_some()).a_workspace_len()
        } else {
            // An f32 C for a bf16 one, A rounded, B unpacked, then the f32
            // product's workspace.
            m.saturating_mul(n)
                .saturating_add(m.saturating_mul(k))
                .saturating_add(k.saturating_mul(n))
                .saturating_add(self.gemm_workspace_len(m, n, k))
        }
    }

    /// [`Kernels::gemm_bf16`] with B packed beforehand by
    /// [`Kernels::pack_bf16`]: the same contract, result and error bound,
    /// without converting or packing B again.
    pub fn gemm_bf16_packed<A: Bf16Input, C: Bf16Output>(
        &self,
        alpha: f32,
        a: MatRef<A>,
        b: PackedBf16,
        beta: f32,
        c: MatMut<C>,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        self.gemm_bf16_packed_with(&Sequential, alpha, a, b, beta, c, workspace)
    }

    /// [`Kernels::gemm_bf16_packed`] split into pieces that `exec` runs;
    /// the result does not depend on the executor.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16_packed_with<E: Executor + ?Sized, A: Bf16Input, C: Bf16Output>(
        &self,
        exec: &E,
        alpha: f32,
        a: MatRef<A>,
        b: PackedBf16,
        beta: f32,
        c: MatMut<C>,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        let (m, n, k) = check_product_of(&a, (b.k, b.n), &c)?;
        check_workspace(self.gemm_bf16_packed_workspace_len(m, n, k), workspace)?;
        self.packed_product(exec, (alpha, &a, b, beta, None), C::output(c), workspace)
    }

    /// [`Kernels::gemm_bf16_packed_with`] (shapes and workspace checked),
    /// plus `bias` in every row where given (alpha 1 and beta 0 then).
    #[allow(clippy::type_complexity)]
    fn packed_product<E: Executor + ?Sized, A: Bf16Input>(
        &self,
        exec: &E,
        (alpha, a, b, beta, bias): (f32, &MatRef<A>, PackedBf16, f32, Option<&[f32]>),
        c: OutputMat,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        let (m, n, k) = (a.rows(), b.n, a.cols());
        if m == 0 || n == 0 || k == 0 || alpha == 0.0 {
            nothing_to_multiply(self, exec, beta, bias, c);
            return Ok(());
        }
        if m <= self.few_rows_limit() {
            return self.portable_output(exec, (beta, bias), c, workspace, |c, beta, workspace| {
                let (b, rounded_a) = (RowsOfB::Packed(b), &mut workspace[..m * k]);
                self.few_rows_product(exec, alpha, a, b, beta, c, rounded_a);
                Ok(())
            });
        }
        let Some(unit) = self.pair_unit() else {
            return self.portable_output(exec, (beta, bias), c, workspace, |c, beta, workspace| {
                // The reference: A rounded and B unpacked to f32 (its values
                // are bf16 already, so rounding them again would change
                // nothing), then the f32 product, as `gemm_bf16_with` runs it.
                let (rounded_a, rest) = workspace.split_at_mut(m * k);
                let (unpacked, rest) = rest.split_at_mut(k * n);
                let a = round_into(self, a, rounded_a);
                // (Run on the backend's vectors, where the loop widens.)
                dispatch!(self,
                    scalar: unpack(&b, unpacked),
                    simd: |_s| unpack(&b, unpacked),
                );
                let b = MatRef::new(&unpacked[..], k, n)?;
                self.gemm_with(exec, alpha, a, b, beta, c, rest)
            });
        };
        let b: PanelsOfB<Bf16> = PanelsOfB::Packed {
            panels: b.panels(),
            stride: b.stride,
        };
        let product = Product {
            alpha,
            a,
            b,
            beta,
            bias,
            c,
        };
        self.run_pairs_on(unit, exec, product, workspace);
        Ok(())
    }

    /// [`Kernels::gemm_bf16_bias_with`] with B packed beforehand by
    /// [`Kernels::pack_bf16`]: `C = op(A) · B + bias`, on
    /// [`Kernels::gemm_bf16_packed_workspace_len`] floats of workspace.
    pub fn gemm_bf16_packed_bias_with<E: Executor + ?Sized, A: Bf16Input, C: Bf16Output>(
        &self,
        exec: &E,
        a: MatRef<A>,
        b: PackedBf16,
        bias: &[f32],
        c: MatMut<C>,
        workspace: &mut [f32],
    ) -> Result<(), KernelError> {
        let (m, n, k) = check_product_of(&a, (b.k, b.n), &c)?;
        crate::error::expect_len("bias", bias.len(), n)?;
        check_workspace(self.gemm_bf16_packed_workspace_len(m, n, k), workspace)?;
        let product = (1.0, &a, b, 0.0, Some(bias));
        self.packed_product(exec, product, C::output(c), workspace)
    }

    /// A product of at most [`Kernels::few_rows_limit`] rows (`m, n, k >
    /// 0`, `alpha != 0`): A rounded into `rounded_a` (`m · k` floats), then
    /// every element of C summed down k in order from `b`'s pairs or rows
    /// ([`GemmKernel::axpy_pair_rows`], [`GemmKernel::axpy_bf16_rows`]),
    /// a group of columns at a time.
    ///
    /// [`GemmKernel::axpy_pair_rows`]: crate::gemm::microkernel::GemmKernel::axpy_pair_rows
    /// [`GemmKernel::axpy_bf16_rows`]: crate::gemm::microkernel::GemmKernel::axpy_bf16_rows
    #[allow(clippy::too_many_arguments)]
    fn few_rows_product<E: Executor + ?Sized, A: Bf16Input>(
        &self,
        exec: &E,
        alpha: f32,
        a: &MatRef<A>,
        b: RowsOfB,
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
        product: Product<A, B>,
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
