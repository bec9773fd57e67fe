//! Vectorized transcendental functions, written once over [`Simd`].
//!
//! Accuracy against `libm` (over all 2^32 inputs; see the crate docs):
//! exp ≤ 2 ulp for normal results, tanh ≤ 2 ulp everywhere.

use crate::simd::Simd;

const LOG2_E: f32 = core::f32::consts::LOG2_E;
// ln 2 split so that n·LN2_HI is exact for |n| ≤ 2^9 (Cody–Waite reduction).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// Below this, e^x < 2^-150 rounds to zero; above, e^x overflows f32.
const EXP_LO: f32 = -104.0;
const EXP_HI: f32 = 88.73;

/// e^x per lane.
#[inline(always)]
pub(crate) fn exp<S: Simd>(s: S, x: S::V) -> S::V {
    exp_each(s, [x])[0]
}

/// Vectors per call of [`exp_each`] in the element-wise loops. Measured on
/// Zen 3 against one vector at a time: GELU forward 1.39×, backward 1.52×,
/// softmax rows of 256 1.24× with 8; 4 gave about 1.2× and 1.4× on GELU, 2
/// less. Eight vectors of temporaries spill some registers on both AVX2
/// and AVX-512, which still pays. The element-wise maps evaluate a whole
/// last block for their tail (once per call); softmax rows, many and
/// short, run their last vectors one at a time instead.
pub(crate) const EXP_BLOCK: usize = 8;

/// e^x per lane of `N` independent vectors, each step written for all of
/// them before the next. One vector's exp is a chain of ~30 dependent
/// operations, about 100 cycles of latency; one vector at a time, the
/// scheduler evidently holds too few of them to overlap (GELU ran at half
/// the throughput its instruction count allows on Zen 3), and interleaving
/// them in the code measured faster (see [`EXP_BLOCK`]). Each lane's result
/// is the same for any N.
#[inline(always)]
pub(crate) fn exp_each<S: Simd, const N: usize>(s: S, x: [S::V; N]) -> [S::V; N] {
    // Explicit loops over the N vectors rather than `array::map`, whose
    // closures may stay out of line, compiled without the instruction set.
    let (mut n, mut r) = (x, x);
    for j in 0..N {
        // max/min return their second operand for NaN, so NaN passes through.
        let x = s.min(s.splat(EXP_HI), s.max(s.splat(EXP_LO), x[j]));
        n[j] = s.round(s.mul(x, s.splat(LOG2_E)));
        r[j] = s.neg_mul_add(n[j], s.splat(LN2_HI), x);
        r[j] = s.neg_mul_add(n[j], s.splat(LN2_LO), r[j]);
    }
    // e^r on |r| ≤ ln2/2, minimax polynomial (Cephes expf coefficients).
    let mut p = [s.splat(1.987_569_2e-4); N];
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ] {
        for j in 0..N {
            p[j] = s.mul_add(p[j], r[j], s.splat(c));
        }
    }
    for j in 0..N {
        let e_r = s.mul_add(s.mul(p[j], r[j]), r[j], s.add(r[j], s.splat(1.0)));
        // n is in -150..=128 (the clamp above); subnormal results stay
        // exact up to their own rounding.
        p[j] = s.mul_exp2(e_r, n[j]);
    }
    p
}

/// tanh(x) per lane.
#[inline(always)]
pub(crate) fn tanh<S: Simd>(s: S, x: S::V) -> S::V {
    let a = s.abs(x);
    // Small |x|: odd polynomial, avoids cancellation in 1 - 2/(e^2x + 1)
    // (Cephes tanhf coefficients).
    let z = s.mul(x, x);
    let mut p = s.splat(-5.704_988_7e-3);
    for c in [2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1] {
        p = s.mul_add(p, z, s.splat(c));
    }
    let small = s.mul_add(s.mul(p, z), x, x);
    // Large |x|: tanh|x| = 1 - 2 / (e^(2|x|) + 1); |x| clamped where tanh
    // is already 1 in f32 (NaN passes through `min`).
    let a_clamped = s.min(s.splat(10.0), a);
    let e = exp(s, s.add(a_clamped, a_clamped));
    let large = s.sub(s.splat(1.0), s.div(s.splat(2.0), s.add(e, s.splat(1.0))));
    // tanh is odd; copysign also keeps tanh(-0) = -0, which the polynomial loses.
    s.copysign(s.select(s.less(a, s.splat(0.625)), small, large), x)
}

/// √(2/π), the GELU tanh-approximation constant.
pub(crate) const GELU_SCALE: f32 = 0.797_884_6;
/// The cubic coefficient of the GELU tanh approximation.
pub(crate) const GELU_CUBIC: f32 = 0.044_715;
/// The largest |x| whose own value enters `u'` (larger ones are clamped to
/// it): past it `u'` is irrelevant, since σ(2u)·(1 − σ(2u)) is exactly 0 in
/// f32 from |x| ≈ 20, and `x²` would overflow from 1.8e19 and make the
/// gradient `0 · inf` = NaN instead of 1 or 0.
pub(crate) const GELU_SLOPE_X_LIMIT: f32 = 1e4;

/// `(σ(2u), u')` for GELU's inner `u = √(2/π)·(x + 0.044715·x³)`, using
/// `0.5·(1 + tanh u) = σ(2u) = 1 / (1 + e^(−2u))`: one exp, no cancellation
/// for large negative x. `N` vectors at once, as [`exp_each`].
#[inline(always)]
pub(crate) fn gelu_gate_each<S: Simd, const N: usize>(
    s: S,
    x: [S::V; N],
) -> ([S::V; N], [S::V; N]) {
    let scale = s.splat(GELU_SCALE);
    // −2u = x·(a + b·x²): three operations where u and then −2u took five.
    let (a, b) = (-2.0 * GELU_SCALE, -2.0 * GELU_SCALE * GELU_CUBIC);
    let (mut minus_2u, mut du) = (x, x);
    for j in 0..N {
        let x2 = s.mul(x[j], x[j]);
        minus_2u[j] = s.mul(s.mul_add(s.splat(b), x2, s.splat(a)), x[j]);
        let limit = GELU_SLOPE_X_LIMIT;
        let x_slope = s.min(s.splat(limit), s.max(s.splat(-limit), x[j]));
        du[j] = s.mul(
            scale,
            s.mul_add(
                s.splat(3.0 * GELU_CUBIC),
                s.mul(x_slope, x_slope),
                s.splat(1.0),
            ),
        );
    }
    let mut gate = exp_each(s, minus_2u);
    for g in &mut gate {
        *g = s.div(s.splat(1.0), s.add(s.splat(1.0), *g));
    }
    (gate, du)
}
