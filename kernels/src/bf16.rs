//! bfloat16: the upper 16 bits of an f32 (same 8-bit exponent, 7 stored
//! mantissa bits), the storage type of mixed-precision matrix multiplies.
//! Conversion from f32 rounds to nearest, ties to even.

use crate::dispatch::dispatch;
use crate::error::expect_len;
use crate::simd::{Lane, Simd};
use crate::{KernelError, Kernels};

/// One value of a pair slot (two bf16 values in 32 bits, the first in the
/// low half, as the bf16 products pack them), widened to f32 exactly: the
/// high half (`high`) or the low half, as the top 16 bits of an f32.
#[inline(always)]
pub(crate) fn pair_half(slot: u32, high: bool) -> f32 {
    f32::from_bits(if high { slot & 0xFFFF_0000 } else { slot << 16 })
}

/// The bits of the pair `(lo, hi)` in one 32-bit slot, `lo` in the low
/// half (the order `vdpbf16ps` pairs them in), stored as an f32 pattern.
pub(crate) fn pair(lo: Bf16, hi: Bf16) -> f32 {
    f32::from_bits(u32::from(lo.to_bits()) | (u32::from(hi.to_bits()) << 16))
}

/// A bfloat16 number, stored as its 16 bits.
///
/// Rounding from f32 is to nearest, ties to even, on the bit pattern, which
/// is exact IEEE rounding for every input: subnormals round like any other
/// value (never flushed to zero), values beyond the largest bf16 round to
/// ±infinity, ±0 and ±infinity are kept, and NaN stays NaN (made quiet,
/// sign kept).
///
/// ```
/// use kernels::Bf16;
///
/// assert_eq!(Bf16::from_f32(1.0).to_bits(), 0x3F80);
/// assert_eq!(Bf16::from_f32(1.0).to_f32(), 1.0);
/// // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to even.
/// assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
/// assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
/// ```
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Bf16(u16);

// SAFETY: `Bf16` is a transparent `u16`: no padding, and every bit pattern
// (zero included) is a valid value.
unsafe impl bytemuck::Zeroable for Bf16 {}
// SAFETY: as above; `Bf16` is `Copy` and `'static`.
unsafe impl bytemuck::Pod for Bf16 {}

impl Bf16 {
    /// The value with these bits.
    pub const fn from_bits(bits: u16) -> Bf16 {
        Bf16(bits)
    }

    /// The bits of the value.
    pub const fn to_bits(self) -> u16 {
        self.0
    }

    /// `x` rounded to the nearest bf16 (ties to even).
    pub const fn from_f32(x: f32) -> Bf16 {
        let bits = x.to_bits();
        if x.is_nan() {
            // Setting the top mantissa bit keeps a NaN a NaN once the low
            // half is cut off.
            return Bf16(((bits | QUIET_BIT) >> 16) as u16);
        }
        // Adding 0x7FFF, plus one when the kept part is odd, carries into
        // the kept part exactly when rounding up is nearest-even; a carry
        // out of the mantissa correctly bumps the exponent (to infinity at
        // the top). No NaN reaches here, so the sum cannot wrap.
        let rounded = bits + 0x7FFF + ((bits >> 16) & 1);
        Bf16((rounded >> 16) as u16)
    }

    /// The exact f32 value.
    pub const fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// The f32 bit that makes a NaN quiet (the top mantissa bit).
pub(crate) const QUIET_BIT: u32 = 0x0040_0000;

impl Kernels {
    /// `dst[i] = bf16(src[i])`, rounded to nearest even as
    /// [`Bf16::from_f32`] does.
    ///
    /// ```
    /// use kernels::{Bf16, Kernels};
    ///
    /// let k = Kernels::best();
    /// let src = [1.0, -2.5, 3.14159];
    /// let mut half = [Bf16::default(); 3];
    /// k.f32_to_bf16(&src, &mut half)?;
    /// let mut back = [0.0; 3];
    /// k.bf16_to_f32(&half, &mut back)?;
    /// assert_eq!(back, [1.0, -2.5, 3.140625]);
    /// # Ok::<(), kernels::KernelError>(())
    /// ```
    pub fn f32_to_bf16(&self, src: &[f32], dst: &mut [Bf16]) -> Result<(), KernelError> {
        expect_len("dst", dst.len(), src.len())?;
        dispatch!(self,
            scalar: dst.iter_mut().zip(src).for_each(|(d, &x)| *d = Bf16::from_f32(x)),
            simd: |s| narrow(s, src, dst),
        );
        Ok(())
    }

    /// `dst[i] = src[i]` as f32 (exact).
    pub fn bf16_to_f32(&self, src: &[Bf16], dst: &mut [f32]) -> Result<(), KernelError> {
        expect_len("dst", dst.len(), src.len())?;
        dispatch!(self,
            scalar: dst.iter_mut().zip(src).for_each(|(d, &x)| *d = x.to_f32()),
            simd: |s| widen(s, src, dst),
        );
        Ok(())
    }
}

/// The widest vector of any backend, for tails.
pub(crate) const MAX_LANES: usize = 16;

/// `dst[i] = bf16(src[i])` for equal lengths, a vector at a time.
#[inline(always)]
pub(crate) fn narrow<S: Simd>(s: S, src: &[f32], dst: &mut [Bf16]) {
    let mut outs = dst.chunks_exact_mut(S::LANES);
    let mut ins = src.chunks_exact(S::LANES);
    for (o, x) in (&mut outs).zip(&mut ins) {
        s.store_bf16(o, s.load(x));
    }
    let (o, x) = (outs.into_remainder(), ins.remainder());
    if !x.is_empty() {
        Bf16::store_piece(s, o, s.load_partial(x, 0.0));
    }
}

#[inline(always)]
fn widen<S: Simd>(s: S, src: &[Bf16], dst: &mut [f32]) {
    let mut outs = dst.chunks_exact_mut(S::LANES);
    let mut ins = src.chunks_exact(S::LANES);
    for (o, x) in (&mut outs).zip(&mut ins) {
        s.store(o, s.load_bf16(x));
    }
    let (o, x) = (outs.into_remainder(), ins.remainder());
    if !x.is_empty() {
        let mut tail = [Bf16::default(); MAX_LANES];
        tail[..x.len()].copy_from_slice(x);
        s.store_partial(o, s.load_bf16(&tail));
    }
}
