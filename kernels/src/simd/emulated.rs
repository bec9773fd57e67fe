//! A portable `N`-lane vector with the same semantics as the x86 ones, so the
//! generic blocking and tail logic can be tested at 16 lanes on any CPU.

use super::Simd;
use crate::bf16::pair;
use crate::Bf16;

#[derive(Clone, Copy)]
pub(crate) struct Emulated<const N: usize>;

#[inline]
fn map<const N: usize>(a: [f32; N], f: impl Fn(f32) -> f32) -> [f32; N] {
    a.map(f)
}

#[inline]
fn zip<const N: usize>(a: [f32; N], b: [f32; N], f: impl Fn(f32, f32) -> f32) -> [f32; N] {
    core::array::from_fn(|i| f(a[i], b[i]))
}

impl<const N: usize> Simd for Emulated<N> {
    const LANES: usize = N;
    type V = [f32; N];
    type M = [bool; N];

    fn load_bf16(self, src: &[Bf16]) -> [f32; N] {
        core::array::from_fn(|i| src[i].to_f32())
    }
    fn load_pair_halves(self, src: &[u32], high: bool) -> [f32; N] {
        core::array::from_fn(|i| crate::bf16::pair_half(src[i], high))
    }
    fn store_bf16(self, dst: &mut [Bf16], v: [f32; N]) {
        for (d, x) in dst[..N].iter_mut().zip(v) {
            *d = Bf16::from_f32(x);
        }
    }
    fn bf16_pairs(self, lo: [f32; N], hi: [f32; N]) -> [f32; N] {
        core::array::from_fn(|i| pair(Bf16::from_f32(lo[i]), Bf16::from_f32(hi[i])))
    }
    fn pair_bf16(self, lo: &[Bf16], hi: &[Bf16]) -> [f32; N] {
        core::array::from_fn(|i| pair(lo[i], hi[i]))
    }

    fn splat(self, x: f32) -> [f32; N] {
        [x; N]
    }
    fn load(self, src: &[f32]) -> [f32; N] {
        core::array::from_fn(|i| src[i])
    }
    fn store(self, dst: &mut [f32], v: [f32; N]) {
        dst[..N].copy_from_slice(&v);
    }
    fn load_partial(self, src: &[f32], fill: f32) -> [f32; N] {
        assert!(src.len() < N, "partial load of a full vector");
        core::array::from_fn(|i| src.get(i).copied().unwrap_or(fill))
    }
    fn store_partial(self, dst: &mut [f32], v: [f32; N]) {
        assert!(dst.len() < N, "partial store of a full vector");
        let len = dst.len();
        dst.copy_from_slice(&v[..len]);
    }
    fn add(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        zip(a, b, |x, y| x + y)
    }
    fn sub(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        zip(a, b, |x, y| x - y)
    }
    fn mul(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        zip(a, b, |x, y| x * y)
    }
    fn div(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        zip(a, b, |x, y| x / y)
    }
    fn mul_add(self, a: [f32; N], b: [f32; N], c: [f32; N]) -> [f32; N] {
        core::array::from_fn(|i| libm::fmaf(a[i], b[i], c[i]))
    }
    fn neg_mul_add(self, a: [f32; N], b: [f32; N], c: [f32; N]) -> [f32; N] {
        core::array::from_fn(|i| libm::fmaf(-a[i], b[i], c[i]))
    }
    fn max(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        zip(a, b, |x, y| if x > y { x } else { y })
    }
    fn min(self, a: [f32; N], b: [f32; N]) -> [f32; N] {
        zip(a, b, |x, y| if x < y { x } else { y })
    }
    fn sqrt(self, a: [f32; N]) -> [f32; N] {
        map(a, libm::sqrtf)
    }
    fn abs(self, a: [f32; N]) -> [f32; N] {
        map(a, libm::fabsf)
    }
    fn copysign(self, mag: [f32; N], sign: [f32; N]) -> [f32; N] {
        zip(mag, sign, libm::copysignf)
    }
    fn round(self, a: [f32; N]) -> [f32; N] {
        map(a, libm::rintf)
    }
    fn exp2_int(self, n: [f32; N]) -> [f32; N] {
        map(n, |n| f32::from_bits(((n as i32 + 127) as u32) << 23))
    }
    fn less(self, a: [f32; N], b: [f32; N]) -> [bool; N] {
        core::array::from_fn(|i| a[i] < b[i])
    }
    fn select(self, mask: [bool; N], a: [f32; N], b: [f32; N]) -> [f32; N] {
        core::array::from_fn(|i| if mask[i] { a[i] } else { b[i] })
    }
    fn reduce_sum(self, v: [f32; N]) -> f32 {
        v.iter().sum()
    }
    fn reduce_max(self, v: [f32; N]) -> f32 {
        v.iter()
            .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
    }
    fn transpose(
        self,
        row: impl FnMut(usize) -> [f32; N],
        mut column: impl FnMut(usize, [f32; N]),
    ) {
        let rows: [[f32; N]; N] = core::array::from_fn(row);
        for c in 0..N {
            column(c, rows.map(|row| row[c]));
        }
    }
}
