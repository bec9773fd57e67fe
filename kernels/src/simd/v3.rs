//! x86-64-v3: AVX2 + FMA, 8 lanes of f32 in a `__m256`.

use core::arch::x86_64::*;

use super::Simd;
use crate::bf16::QUIET_BIT;
use crate::Bf16;

/// Proof that the CPU supports AVX2 and FMA (and the OS saves YMM state).
#[derive(Clone, Copy)]
pub(crate) struct V3(());

impl V3 {
    /// Runs `f` with AVX2 + FMA enabled, so that the generic code `f`
    /// inlines compiles to AVX2 instructions.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA and the OS must have enabled YMM
    /// state, i.e. [`crate::Backend::Avx2`] must have been detected.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) unsafe fn vectorize<R>(f: impl FnOnce(V3) -> R) -> R {
        f(V3(()))
    }
}

// Every `unsafe` below calls an AVX/AVX2/FMA intrinsic. SAFETY (for all of
// them): a `V3` value is made only by `V3::vectorize`, whose contract is that
// the CPU supports these instructions (a value that escapes its closure
// still proves it); pointer arguments are derived from slices whose
// length was checked on the line before.
impl Simd for V3 {
    const LANES: usize = 8;
    type V = __m256;
    type M = __m256;

    #[inline(always)]
    fn load_bf16(self, src: &[Bf16]) -> __m256 {
        let src = &src[..8];
        // SAFETY: see the impl comment; `src` holds 8 bf16 values (16
        // bytes; `Bf16` is a transparent u16).
        unsafe {
            let raw = _mm_loadu_si128(src.as_ptr().cast::<__m128i>());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
        }
    }
    #[inline(always)]
    fn load_pair_halves(self, src: &[u32], high: bool) -> __m256 {
        let src = &src[..8];
        // SAFETY: see the impl comment; `src` holds 8 slots (32 bytes).
        unsafe {
            let raw = _mm256_loadu_si256(src.as_ptr().cast::<__m256i>());
            _mm256_castsi256_ps(if high {
                _mm256_and_si256(raw, _mm256_set1_epi32(0xFFFF_0000_u32 as i32))
            } else {
                _mm256_slli_epi32::<16>(raw)
            })
        }
    }
    #[inline(always)]
    fn store_bf16(self, dst: &mut [Bf16], v: __m256) {
        let dst = &mut dst[..8];
        // SAFETY: see the impl comment; `dst` holds 8 bf16 values.
        unsafe {
            let halves = _mm256_srli_epi32::<16>(self.rounded_bits(v));
            // Packing works within 128-bit halves: lanes 0-3 land in
            // quadword 0 and lanes 4-7 in quadword 2; gather those two.
            let packed = _mm256_packus_epi32(halves, halves);
            let ordered = _mm256_permute4x64_epi64::<0b1000>(packed);
            _mm_storeu_si128(
                dst.as_mut_ptr().cast::<__m128i>(),
                _mm256_castsi256_si128(ordered),
            );
        }
    }
    #[inline(always)]
    fn pair_bf16(self, lo: &[Bf16], hi: &[Bf16]) -> __m256 {
        let (lo, hi) = (&lo[..8], &hi[..8]);
        // SAFETY: see the impl comment; `lo` and `hi` hold 8 bf16 values
        // (16 bytes each; `Bf16` is a transparent u16).
        unsafe {
            let lo = _mm256_cvtepu16_epi32(_mm_loadu_si128(lo.as_ptr().cast::<__m128i>()));
            let hi = _mm256_cvtepu16_epi32(_mm_loadu_si128(hi.as_ptr().cast::<__m128i>()));
            _mm256_castsi256_ps(_mm256_or_si256(lo, _mm256_slli_epi32::<16>(hi)))
        }
    }
    #[inline(always)]
    fn bf16_pairs(self, lo: __m256, hi: __m256) -> __m256 {
        // SAFETY: see the impl comment. Each 32-bit lane takes its low
        // half from `lo`'s bf16 and its high half from `hi`'s.
        unsafe {
            let lo = _mm256_srli_epi32::<16>(self.rounded_bits(lo));
            let hi = _mm256_and_si256(self.rounded_bits(hi), _mm256_set1_epi32(!0xFFFF));
            _mm256_castsi256_ps(_mm256_or_si256(lo, hi))
        }
    }

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, src: &[f32]) -> __m256 {
        let src = &src[..8];
        // SAFETY: see the impl comment; `src` holds 8 floats.
        unsafe { _mm256_loadu_ps(src.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, dst: &mut [f32], v: __m256) {
        let dst = &mut dst[..8];
        // SAFETY: see the impl comment; `dst` holds 8 floats.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    unsafe fn stream(self, dst: &mut [f32], v: __m256) {
        // SAFETY: see the impl comment; the caller vouches that `dst` holds
        // 8 floats from a 64-byte boundary (32 is what the streaming store
        // requires).
        unsafe { _mm256_stream_ps(dst.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn load_partial(self, src: &[f32], fill: f32) -> __m256 {
        let len = src.len().min(8);
        // SAFETY: see the impl comment; the mask enables only the first
        // `len` lanes, all inside `src`, and masked lanes are never accessed.
        unsafe {
            let mask = self.lane_mask(len);
            let loaded = _mm256_maskload_ps(src.as_ptr(), mask);
            _mm256_blendv_ps(_mm256_set1_ps(fill), loaded, _mm256_castsi256_ps(mask))
        }
    }
    #[inline(always)]
    fn store_partial(self, dst: &mut [f32], v: __m256) {
        let len = dst.len().min(8);
        // SAFETY: as in `load_partial`: only the first `len` lanes are written.
        unsafe { _mm256_maskstore_ps(dst.as_mut_ptr(), self.lane_mask(len), v) }
    }

    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn neg_mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_fnmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn sqrt(self, a: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_sqrt_ps(a) }
    }
    #[inline(always)]
    fn abs(self, a: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn copysign(self, mag: __m256, sign: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe {
            let sign_bit = _mm256_set1_ps(-0.0);
            _mm256_or_ps(
                _mm256_andnot_ps(sign_bit, mag),
                _mm256_and_ps(sign_bit, sign),
            )
        }
    }
    #[inline(always)]
    fn round(self, a: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn exp2_int(self, n: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe {
            let biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased))
        }
    }
    #[inline(always)]
    fn less(self, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn select(self, mask: __m256, a: __m256, b: __m256) -> __m256 {
        // SAFETY: see the impl comment.
        unsafe { _mm256_blendv_ps(b, a, mask) }
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m256) -> f32 {
        // SAFETY: see the impl comment.
        unsafe {
            let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
        }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m256) -> f32 {
        // SAFETY: see the impl comment.
        unsafe {
            let quad = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let pair = _mm_max_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_max_ss(pair, _mm_movehdup_ps(pair)))
        }
    }

    #[inline(always)]
    fn transpose(
        self,
        mut row: impl FnMut(usize) -> __m256,
        mut column: impl FnMut(usize, __m256),
    ) {
        // A loop, not `array::from_fn`, which stays out of line (without the
        // instruction set) and would call `row` through memory.
        let mut r = [self.splat(0.0); 8];
        for (i, v) in r.iter_mut().enumerate() {
            *v = row(i);
        }
        // SAFETY: see the impl comment (register-only shuffles).
        let t = unsafe {
            // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
            let a0 = _mm256_unpacklo_ps(r[0], r[1]);
            let a1 = _mm256_unpackhi_ps(r[0], r[1]);
            let a2 = _mm256_unpacklo_ps(r[2], r[3]);
            let a3 = _mm256_unpackhi_ps(r[2], r[3]);
            let a4 = _mm256_unpacklo_ps(r[4], r[5]);
            let a5 = _mm256_unpackhi_ps(r[4], r[5]);
            let a6 = _mm256_unpacklo_ps(r[6], r[7]);
            let a7 = _mm256_unpackhi_ps(r[6], r[7]);
            let b0 = _mm256_shuffle_ps::<0x44>(a0, a2);
            let b1 = _mm256_shuffle_ps::<0xEE>(a0, a2);
            let b2 = _mm256_shuffle_ps::<0x44>(a1, a3);
            let b3 = _mm256_shuffle_ps::<0xEE>(a1, a3);
            let b4 = _mm256_shuffle_ps::<0x44>(a4, a6);
            let b5 = _mm256_shuffle_ps::<0xEE>(a4, a6);
            let b6 = _mm256_shuffle_ps::<0x44>(a5, a7);
            let b7 = _mm256_shuffle_ps::<0xEE>(a5, a7);
            [
                _mm256_permute2f128_ps::<0x20>(b0, b4),
                _mm256_permute2f128_ps::<0x20>(b1, b5),
                _mm256_permute2f128_ps::<0x20>(b2, b6),
                _mm256_permute2f128_ps::<0x20>(b3, b7),
                _mm256_permute2f128_ps::<0x31>(b0, b4),
                _mm256_permute2f128_ps::<0x31>(b1, b5),
                _mm256_permute2f128_ps::<0x31>(b2, b6),
                _mm256_permute2f128_ps::<0x31>(b3, b7),
            ]
        };
        for (c, v) in t.into_iter().enumerate() {
            column(c, v);
        }
    }
}

impl V3 {
    /// All-ones in the first `len` lanes (`len <= 8`).
    #[inline(always)]
    fn lane_mask(self, len: usize) -> __m256i {
        // SAFETY: AVX2 integer compare; `self` proves AVX2 is available.
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(len as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }

    /// The lanes' f32 bits with [`Bf16::from_f32`]'s rounding added, so
    /// that each lane's high half is its bf16 (a NaN quieted, never rounded
    /// into an infinity).
    #[inline(always)]
    fn rounded_bits(self, v: __m256) -> __m256i {
        // SAFETY: holding a `V3` proves the CPU has AVX2 (see `Simd for
        // V3`); register arithmetic only.
        unsafe {
            let bits = _mm256_castps_si256(v);
            let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(1));
            let bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF));
            let rounded = _mm256_add_epi32(bits, bias);
            let quiet = _mm256_or_si256(bits, _mm256_set1_epi32(QUIET_BIT as i32));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            _mm256_blendv_epi8(rounded, quiet, nan)
        }
    }
}
