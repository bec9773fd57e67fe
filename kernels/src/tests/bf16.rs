//! bf16 conversion: the scalar rounding against a nearest-even decision
//! made in f64, and every SIMD implementation against the scalar one.

use std::vec::Vec;

use super::{ctx, lengths, scalar, simd_kernels, Rng};
use crate::{Bf16, KernelError};

/// `x` rounded to bf16 by comparing distances in f64: the two bf16 values
/// around `x` are found by truncation, and the nearer wins, the one with an
/// even last bit on a tie. Past the largest finite bf16, the upper
/// neighbour is 2^128 (where infinity stands).
fn nearest_even(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7FC0;
    }
    let sign = if x.is_sign_negative() { 0x8000 } else { 0 };
    let magnitude = x.abs();
    if magnitude.is_infinite() {
        return sign | 0x7F80;
    }
    let low = (magnitude.to_bits() >> 16) as u16;
    let value = |bits: u16| -> f64 {
        if bits == 0x7F80 {
            2f64.powi(128)
        } else {
            f64::from(f32::from_bits(u32::from(bits) << 16))
        }
    };
    let high = low + 1;
    let (below, above) = (
        f64::from(magnitude) - value(low),
        value(high) - f64::from(magnitude),
    );
    let pick = if below < above || (below == above && low.is_multiple_of(2)) {
        low
    } else {
        high
    };
    sign | pick
}

/// Values that probe every rounding case: zeros, subnormals, ties, the
/// overflow threshold, infinities and NaNs with payloads and signs.
fn special_values() -> Vec<f32> {
    let mut bits: Vec<u32> = std::vec![
        0x0000_0000,
        0x8000_0000, // ±0
        0x0000_0001,
        0x0000_7FFF,
        0x0000_8000,
        0x0000_8001,
        0x0001_8000, // subnormal ties
        0x007F_FFFF,
        0x0080_0000, // largest subnormal, smallest normal
        0x3F80_8000,
        0x3F81_8000,
        0x3F80_7FFF,
        0x3F80_8001, // ties to even, near ties
        0x7F7F_7FFF,
        0x7F7F_8000,
        0x7F7F_FFFF, // around the overflow threshold
        0x7F80_0000,
        0xFF80_0000, // ±inf
        0x7FC0_0000,
        0xFFC0_0000,
        0x7F80_0001,
        0x7FBF_FFFF,
        0xFF80_0001, // NaNs, signalling too
    ];
    bits.extend(bits.clone().iter().map(|b| b ^ 0x8000_0000));
    bits.into_iter().map(f32::from_bits).collect()
}

#[test]
fn rounding_is_nearest_even_as_decided_in_f64() {
    let mut rng = Rng::new(16);
    let random = (0..1_000_000).map(|_| f32::from_bits(rng.next_u64() as u32));
    // Every bf16 value, and the midpoints between neighbours with the
    // floats on either side of each.
    let around = (0..=u16::MAX).flat_map(|b| {
        let mid = (u32::from(b) << 16) | 0x8000;
        [mid - 1, mid, mid + 1, u32::from(b) << 16].map(f32::from_bits)
    });
    for x in special_values().into_iter().chain(random).chain(around) {
        let got = Bf16::from_f32(x);
        if x.is_nan() {
            assert!(got.to_f32().is_nan(), "{:#010x} lost its NaN", x.to_bits());
            assert_eq!(got.to_bits() & 0x8000, (x.to_bits() >> 16) as u16 & 0x8000);
        } else {
            let want = nearest_even(x);
            assert_eq!(got.to_bits(), want, "{x:e} ({:#010x})", x.to_bits());
        }
    }
}

#[test]
fn every_bf16_value_widens_exactly_and_round_trips() {
    for bits in 0..=u16::MAX {
        let b = Bf16::from_bits(bits);
        assert_eq!(b.to_f32().to_bits(), u32::from(bits) << 16);
        let back = Bf16::from_f32(b.to_f32());
        if b.to_f32().is_nan() {
            assert!(back.to_f32().is_nan());
        } else {
            assert_eq!(back, b, "{bits:#06x}");
        }
    }
}

/// `data` at an odd offset inside guard zones, as bf16.
fn guarded_bf16(len: usize, offset: usize) -> (Vec<Bf16>, usize) {
    const GUARD: u16 = 0xDEAD;
    let start = 19 + offset % 7;
    let mut buf = std::vec![Bf16::from_bits(GUARD); start + len + 19];
    // NaN-prefilled: every output must be written.
    buf[start..start + len].fill(Bf16::from_bits(0x7FC1));
    (buf, start)
}

#[test]
fn every_simd_conversion_matches_the_scalar_reference() {
    let mut rng = Rng::new(17);
    let specials = special_values();
    for (name, k) in simd_kernels() {
        for n in lengths() {
            let src: Vec<f32> = (0..n)
                .map(|i| match rng.below(4) {
                    0 => specials[i % specials.len()],
                    1 => f32::from_bits(rng.next_u64() as u32),
                    _ => rng.uniform(-3.0, 3.0),
                })
                .collect();
            let mut want = std::vec![Bf16::default(); n];
            scalar().f32_to_bf16(&src, &mut want).unwrap();
            let (mut buf, start) = guarded_bf16(n, n);
            k.f32_to_bf16(&src, &mut buf[start..start + n]).unwrap();
            let what = ctx("f32_to_bf16", name, n);
            assert!(
                buf[..start]
                    .iter()
                    .chain(&buf[start + n..])
                    .all(|b| b.to_bits() == 0xDEAD),
                "{what}: wrote outside"
            );
            assert_eq!(&buf[start..start + n], &want[..], "{what}");

            // Any bit pattern widens exactly, NaN payloads included.
            let src: Vec<Bf16> = (0..n)
                .map(|_| Bf16::from_bits(rng.next_u64() as u16))
                .collect();
            let mut out = super::Guarded::new(n, n + 1);
            k.bf16_to_f32(&src, out.get_mut()).unwrap();
            let got = out.checked(&ctx("bf16_to_f32", name, n));
            for (g, s) in got.iter().zip(&src) {
                assert_eq!(
                    g.to_bits(),
                    u32::from(s.to_bits()) << 16,
                    "{}",
                    ctx("bf16_to_f32", name, n)
                );
            }
        }
    }
}

#[test]
fn conversions_refuse_mismatched_lengths() {
    let k = scalar();
    let mut half = [Bf16::default(); 3];
    let mut full = [0.0f32; 3];
    for k in [k]
        .into_iter()
        .chain(simd_kernels().into_iter().map(|(_, k)| k))
    {
        let err = k.f32_to_bf16(&[1.0; 4], &mut half).unwrap_err();
        assert!(matches!(
            err,
            KernelError::LengthMismatch {
                arg: "dst",
                expected: 4,
                actual: 3
            }
        ));
        let err = k.bf16_to_f32(&[Bf16::default(); 2], &mut full).unwrap_err();
        assert!(matches!(
            err,
            KernelError::LengthMismatch {
                arg: "dst",
                expected: 2,
                actual: 3
            }
        ));
    }
}
