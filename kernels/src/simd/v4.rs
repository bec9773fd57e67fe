//! x86-64-v4: AVX-512F, 16 lanes of f32 in a `__m512`.
//!
//! Only AVX-512F instructions are used (plus AVX2/FMA, which every AVX-512
//! CPU has), so detection needs nothing beyond the F subset.

use core::arch::x86_64::*;

use super::Simd;
use crate::bf16::QUIET_BIT;
use crate::Bf16;

/// Proof that the CPU supports AVX-512F, AVX2 and FMA (and the OS saves ZMM
/// and opmask state).
#[derive(Clone, Copy)]
pub(crate) struct V4(());

impl V4 {
    /// Runs `f` with AVX-512F enabled.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and FMA and the OS must have
    /// enabled ZMM state, i.e. [`crate::Backend::Avx512`] must have been
    /// detected.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    pub(crate) unsafe fn vectorize<R>(f: impl FnOnce(V4) -> R) -> R {
        f(V4(()))
    }

    /// The proof, for a unit that runs inside its own AVX-512 region
    /// (the bf16 pair unit rounds its sums with [`V4::bf16_lanes`]).
    ///
    /// # Safety
    /// As [`V4::vectorize`]: [`crate::Backend::Avx512`] must have been
    /// detected.
    #[inline(always)]
    pub(crate) unsafe fn detected() -> V4 {
        V4(())
    }
}

/// The first `len` lanes (`len <= 16`).
#[inline(always)]
fn lane_mask(len: usize) -> __mmask16 {
    ((1u32 << len.min(16)) - 1) as __mmask16
}

// Every `unsafe` below calls an AVX-512F intrinsic. SAFETY (for all of them):
// a `V4` value is made only by `V4::vectorize`, whose contract is that
// the CPU supports these instructions (a value that escapes its closure
// still proves it); pointer arguments are derived from slices
// whose length was checked on the line before.
impl Simd for V4 {
    const LANES: usize = 16;
    type V = __m512;
    type M = __mmask16;

    #[inline(always)]
    fn load_bf16(self, src: &[Bf16]) -> __m512 {
        let src = &src[..16];
        // SAFETY: see the impl comment; `src` holds 16 bf16 values (32
        // bytes; `Bf16` is a transparent u16).
        unsafe {
            let raw = _mm256_loadu_si256(src.as_ptr().cast::<__m256i>());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
        }
    }
    #[inline(always)]
    fn load_pair_halves(self, src: &[u32], high: bool) -> __m512 {
        let src = &src[..16];
        // SAFETY: see the impl comment; `src` holds 16 slots (64 bytes).
        unsafe {
            let raw = _mm512_loadu_si512(src.as_ptr().cast());
            _mm512_castsi512_ps(if high {
                _mm512_and_si512(raw, _mm512_set1_epi32(0xFFFF_0000_u32 as i32))
            } else {
                _mm512_slli_epi32::<16>(raw)
            })
        }
    }
    #[inline(always)]
    fn store_bf16(self, dst: &mut [Bf16], v: __m512) {
        let dst = &mut dst[..16];
        // SAFETY: see the impl comment; `dst` holds 16 bf16 values.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast::<__m256i>(), self.bf16_lanes(v)) }
    }
    #[inline(always)]
    fn pair_bf16(self, lo: &[Bf16], hi: &[Bf16]) -> __m512 {
        let (lo, hi) = (&lo[..16], &hi[..16]);
        // SAFETY: see the impl comment; `lo` and `hi` hold 16 bf16 values
        // (32 bytes each; `Bf16` is a transparent u16).
        unsafe {
            let lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(lo.as_ptr().cast::<__m256i>()));
            let hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(hi.as_ptr().cast::<__m256i>()));
            _mm512_castsi512_ps(_mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi)))
        }
    }
    #[inline(always)]
    fn bf16_pairs(self, lo: __m512, hi: __m512) -> __m512 {
        // SAFETY: see the impl comment. Each 32-bit lane takes its low
        // half from `lo`'s bf16 and its high half from `hi`'s.
        unsafe {
            let lo = _mm512_srli_epi32::<16>(self.rounded_bits(lo));
            let hi = _mm512_and_si512(self.rounded_bits(hi), _mm512_set1_epi32(!0xFFFF));
            _mm512_castsi512_ps(_mm512_or_si512(lo, hi))
        }
    }

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> __m512 {
        let src = &src[..16];
        // SAFETY: see the impl comment; `src` holds 16 floats.
        unsafe { _mm512_loadu_ps(src.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, dst: &mut [f32], v: __m512) {
        let dst = &mut dst[..16];
        // SAFETY: see the impl comment; `dst` holds 16 floats.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    unsafe fn stream(self, dst: &mut [f32], v: __m512) {
        // SAFETY: see the impl comment; the caller vouches that `dst` holds
        // 16 floats from a 64-byte boundary, the alignment the streaming
        // store requires.
        unsafe { _mm512_stream_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_partial(self, src: &[f32], fill: f32) -> __m512 {
        // SAFETY: see the impl comment; the mask enables only lanes inside
        // `src`, and masked-off lanes are never accessed (no fault, no read).
        unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(fill), lane_mask(src.len()), src.as_ptr()) }
    }
    #[inline(always)]
    fn store_partial(self, dst: &mut [f32], v: __m512) {
        // SAFETY: as in `load_partial`: only lanes inside `dst` are written.
        unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), lane_mask(dst.len()), v) }
    }

    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn neg_mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn sqrt(self, a: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_sqrt_ps(a) }
    }
    #[inline(always)]
    fn abs(self, a: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_abs_ps(a) }
    }
    #[inline(always)]
    fn copysign(self, mag: __m512, sign: __m512) -> __m512 {
        // SAFETY: see the impl comment. Integer logic keeps this AVX-512F only
        // (`_mm512_and_ps` would need AVX-512DQ).
        unsafe {
            let sign_bit = _mm512_set1_epi32(i32::MIN);
            let mag_bits = _mm512_andnot_si512(sign_bit, _mm512_castps_si512(mag));
            let sign_bits = _mm512_and_si512(sign_bit, _mm512_castps_si512(sign));
            _mm512_castsi512_ps(_mm512_or_si512(mag_bits, sign_bits))
        }
    }
    #[inline(always)]
    fn round(self, a: __m512) -> __m512 {
        // SAFETY: see the impl comment. Scale 0, round to nearest even,
        // precision exception suppressed.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn exp2_int(self, n: __m512) -> __m512 {
        // SAFETY: see the impl comment.
        unsafe {
            let biased = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased))
        }
    }
    #[inline(always)]
    fn mul_exp2(self, x: __m512, n: __m512) -> __m512 {
        // `vscalefps`: x · 2^floor(n), rounded once, as the trait's two
        // factors give (n holds integers).
        // SAFETY: see the impl comment.
        unsafe { _mm512_scalef_ps(x, n) }
    }
    #[inline(always)]
    fn less(self, a: __m512, b: __m512) -> __mmask16 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn select(self, mask: __mmask16, a: __m512, b: __m512) -> __m512 {
        // SAFETY: see the impl comment. The blend takes its second vector
        // where the mask is set.
        unsafe { _mm512_mask_blend_ps(mask, b, a) }
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m512) -> f32 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m512) -> f32 {
        // SAFETY: see the impl comment.
        unsafe { _mm512_reduce_max_ps(v) }
    }

    #[inline(always)]
    fn transpose(
        self,
        mut row: impl FnMut(usize) -> __m512,
        mut column: impl FnMut(usize, __m512),
    ) {
        // A loop, not `array::from_fn`, which stays out of line (without the
        // instruction set) and would call `row` through memory.
        let mut r = [self.splat(0.0); 16];
        for (i, v) in r.iter_mut().enumerate() {
            *v = row(i);
        }
        // SAFETY: see the impl comment (register-only shuffles).
        let columns = unsafe {
            // 1. Interleave pairs of rows: 128-bit chunk L of t[2i] holds
            //    columns 4L, 4L+1 of rows 2i, 2i+1; t[2i+1] columns 4L+2, 4L+3.
            let mut t = r;
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // 2. Per group g of four rows and column offset k: chunk L of
            //    c[4g + k] holds rows 4g..4g+4 of column 4L+k.
            let mut c = r;
            for g in 0..4 {
                let pd = |i: usize| _mm512_castps_pd(t[4 * g + i]);
                c[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(0), pd(2)));
                c[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(0), pd(2)));
                c[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(1), pd(3)));
                c[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(1), pd(3)));
            }
            // 3. Transpose the 4×4 grid of 128-bit chunks for each k: column
            //    4L+k gathers chunk L of c[k], c[4 + k], c[8 + k], c[12 + k].
            let mut columns = r;
            for k in 0..4 {
                let x0 = _mm512_shuffle_f32x4::<0x88>(c[k], c[4 + k]);
                let x1 = _mm512_shuffle_f32x4::<0xDD>(c[k], c[4 + k]);
                let x2 = _mm512_shuffle_f32x4::<0x88>(c[8 + k], c[12 + k]);
                let x3 = _mm512_shuffle_f32x4::<0xDD>(c[8 + k], c[12 + k]);
                columns[k] = _mm512_shuffle_f32x4::<0x88>(x0, x2);
                columns[4 + k] = _mm512_shuffle_f32x4::<0x88>(x1, x3);
                columns[8 + k] = _mm512_shuffle_f32x4::<0xDD>(x0, x2);
                columns[12 + k] = _mm512_shuffle_f32x4::<0xDD>(x1, x3);
            }
            columns
        };
        for (c, v) in columns.into_iter().enumerate() {
            column(c, v);
        }
    }
}

impl V4 {
    /// The 16 lanes rounded as [`Bf16::from_f32`] does, as 16 bf16 values.
    #[inline(always)]
    pub(crate) fn bf16_lanes(self, v: __m512) -> __m256i {
        // SAFETY: holding a `V4` proves the CPU has AVX-512F (see `Simd for
        // V4`); register arithmetic only. Each lane's bf16 is the high half
        // of its rounded bits.
        unsafe { _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(self.rounded_bits(v))) }
    }

    /// The lanes' f32 bits with [`Bf16::from_f32`]'s rounding added, so
    /// that each lane's high half is its bf16 (a NaN quieted, never rounded
    /// into an infinity).
    #[inline(always)]
    fn rounded_bits(self, v: __m512) -> __m512i {
        // SAFETY: holding a `V4` proves the CPU has AVX-512F (see `Simd for
        // V4`); register arithmetic only.
        unsafe {
            let bits = _mm512_castps_si512(v);
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
            let bias = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF));
            let rounded = _mm512_add_epi32(bits, bias);
            let quiet = _mm512_or_si512(bits, _mm512_set1_epi32(QUIET_BIT as i32));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            _mm512_mask_blend_epi32(nan, rounded, quiet)
        }
    }
}
