//! The accuracy of the vectorized `exp` and `tanh` against `libm`, over a
//! sample of every f32 bit pattern (`--ignored` for all 2^32 of them), and
//! of all of them against the f64 functions.

use std::vec::Vec;

use super::*;

/// Position of `x` on the line of ordered f32 values, so that the distance
/// between two positions counts the floats between them (ulps).
fn ordinal(x: f32) -> i64 {
    let bits = x.to_bits() as i32;
    (if bits < 0 { i32::MIN - bits } else { bits }) as i64
}

#[derive(Debug, Default)]
struct Errors {
    /// Worst ulp distance where the reference is a normal float or zero.
    max_ulp: i64,
    worst_input: f32,
    /// Worst absolute error where the reference is subnormal.
    max_subnormal_abs: f32,
    mismatched_specials: usize,
}

fn measure(
    k: &Kernels,
    stride: u64,
    f: fn(&Kernels, &[f32], &mut [f32]),
    reference: fn(f32) -> f32,
) -> Errors {
    let mut errors = Errors::default();
    let mut inputs = Vec::with_capacity(4096);
    let mut out = std::vec![0.0; 4096];
    let mut flush = |inputs: &mut Vec<f32>, errors: &mut Errors| {
        f(k, inputs, &mut out[..inputs.len()]);
        for (&x, &got) in inputs.iter().zip(&out) {
            let want = reference(x);
            if want.is_nan() || want.is_infinite() || got.is_nan() || got.is_infinite() {
                if !(want.is_nan() && got.is_nan()) && want != got {
                    errors.mismatched_specials += 1;
                }
            } else if want != 0.0 && want.abs() < f32::MIN_POSITIVE {
                errors.max_subnormal_abs = errors.max_subnormal_abs.max((got - want).abs());
            } else {
                let ulp = (ordinal(got) - ordinal(want)).abs();
                if ulp > errors.max_ulp {
                    errors.max_ulp = ulp;
                    errors.worst_input = x;
                }
            }
        }
        inputs.clear();
    };
    let mut bits = 0u64;
    while bits <= u32::MAX as u64 {
        inputs.push(f32::from_bits(bits as u32));
        if inputs.len() == 4096 {
            flush(&mut inputs, &mut errors);
        }
        bits += stride;
    }
    flush(&mut inputs, &mut errors);
    errors
}

fn exp_of(k: &Kernels, x: &[f32], out: &mut [f32]) {
    k.exp(x, out).unwrap()
}
fn tanh_of(k: &Kernels, x: &[f32], out: &mut [f32]) {
    k.tanh(x, out).unwrap()
}

/// The bounds stated in the crate documentation.
const EXP_MAX_ULP: i64 = 2;
const TANH_MAX_ULP: i64 = 2;

/// How far `libm`'s f32 functions (the scalar reference) are from the
/// f64 ones rounded to f32, in ulps, on the inputs the tests sample.
const LIBM_EXPF_ULP: i64 = 1;
const LIBM_TANHF_ULP: i64 = 2;

fn check_accuracy(stride: u64) {
    let real: Vec<_> = simd_kernels()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("emulated"))
        .collect();
    // The emulated vectors share the generic code; sample them sparsely.
    let emulated = simd_kernels()
        .into_iter()
        .filter(|(n, _)| n.starts_with("emulated"));
    let runs = real
        .into_iter()
        .map(|r| (r, stride))
        .chain(emulated.map(|e| (e, stride.max(99_991))));
    for ((name, k), stride) in runs {
        let exp = measure(&k, stride, exp_of, libm::expf);
        let tanh = measure(&k, stride, tanh_of, libm::tanhf);
        std::eprintln!("{name} (every {stride}th f32): exp {exp:?}\n{name}: tanh {tanh:?}");
        assert!(exp.max_ulp <= EXP_MAX_ULP, "{name}: exp error {exp:?}");
        assert!(
            exp.max_subnormal_abs <= f32::from_bits(1),
            "{name}: exp subnormal error {exp:?}"
        );
        assert_eq!(
            exp.mismatched_specials, 0,
            "{name}: exp special values {exp:?}"
        );
        assert!(tanh.max_ulp <= TANH_MAX_ULP, "{name}: tanh error {tanh:?}");
        assert_eq!(
            tanh.mismatched_specials, 0,
            "{name}: tanh special values {tanh:?}"
        );
    }
}

#[test]
fn math_accuracy_over_sampled_floats() {
    check_accuracy(257);
}

#[test]
#[ignore = "sweeps all 2^32 floats; run with --ignored in release mode"]
fn math_accuracy_over_all_floats() {
    check_accuracy(1);
}

/// e^x and tanh x in f64 (`libm`'s double-precision code, not the
/// single-precision reference), rounded once to f32.
fn exp_f64(x: f32) -> f32 {
    libm::exp(f64::from(x)) as f32
}
fn tanh_f64(x: f32) -> f32 {
    libm::tanh(f64::from(x)) as f32
}

/// The scalar reference (`libm`'s f32 functions) and every vectorized
/// version against the f64 functions rounded to f32, an independent
/// definition: the reference within a stated distance of it (and one
/// subnormal step), the vectorized versions within their bound against
/// the reference plus that distance, special values (0, inf, NaN) alike.
#[test]
fn math_against_f64() {
    let mut all = simd_kernels();
    all.push(("scalar", scalar()));
    for (name, k) in all {
        let reference = name == "scalar";
        let stride = if name.starts_with("emulated") {
            99_991
        } else {
            257
        };
        for (what, f, truth, bound, libm_ulp) in [
            (
                "exp",
                exp_of as fn(&Kernels, &[f32], &mut [f32]),
                exp_f64 as fn(f32) -> f32,
                EXP_MAX_ULP,
                LIBM_EXPF_ULP,
            ),
            ("tanh", tanh_of, tanh_f64, TANH_MAX_ULP, LIBM_TANHF_ULP),
        ] {
            let errors = measure(&k, stride, f, truth);
            std::eprintln!("{name} against f64: {what} {errors:?}");
            // The reference's distance, or the bound against it plus that.
            let (most, steps) = match reference {
                true => (libm_ulp, 1),
                false => (bound + libm_ulp, 2),
            };
            assert!(errors.max_ulp <= most, "{name}: {what} {errors:?}");
            let step = f32::from_bits(steps);
            assert!(
                errors.max_subnormal_abs <= step,
                "{name}: {what} subnormal {errors:?}"
            );
            assert_eq!(
                errors.mismatched_specials, 0,
                "{name}: {what} special values {errors:?}"
            );
        }
    }
}

#[test]
fn math_special_values() {
    for (name, k) in simd_kernels() {
        let x = [
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -1e30,
            1e30,
            -0.0,
            0.0,
            -104.0,
            88.8,
        ];
        let mut e = [0.0; 9];
        k.exp(&x, &mut e).unwrap();
        assert_eq!(&e[..2], &[0.0, f32::INFINITY], "{name}");
        assert!(e[2].is_nan(), "{name}");
        assert_eq!(
            &e[3..],
            &[0.0, f32::INFINITY, 1.0, 1.0, 0.0, f32::INFINITY],
            "{name}"
        );
        let mut t = [0.0; 9];
        k.tanh(&x, &mut t).unwrap();
        assert_eq!(&t[..2], &[-1.0, 1.0], "{name}");
        assert!(t[2].is_nan(), "{name}");
        assert_eq!(&t[3..5], &[-1.0, 1.0], "{name}");
        assert!(
            t[5] == 0.0 && t[5].is_sign_negative(),
            "{name}: tanh(-0) = -0"
        );
    }
}
