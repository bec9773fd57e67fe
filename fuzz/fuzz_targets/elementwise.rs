//! Element-wise routines (fill and copy too), reductions, bf16 conversions and AdamW: arbitrary
//! lengths (mismatched ones included), offsets and values; the best backend must match scalar.
#![no_main]

use arbitrary::Unstructured;
use kernels::{AdamW, Bf16};
use kernels_fuzz::{all_moderate, assert_close, backends, len, same_bits, values};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
    let (k, scalar) = backends();
    let n = len(u, 300)?;
    let a = values(u, n)?;
    // Sometimes a wrong length: both must refuse it alike.
    let b_len = if u.ratio(1, 8)? { len(u, 300)? } else { n };
    let b = values(u, b_len)?;
    let offset = len(u, 3)?.min(n);
    let (a, b) = (&a[offset..], &b[offset.min(b.len())..]);

    let mut got = vec![0.0; a.len()];
    let mut want = vec![0.0; a.len()];
    match u.int_in_range(0u8..=13)? {
        0 => {
            assert_eq!(
                k.add(a, b, &mut got).is_ok(),
                scalar.add(a, b, &mut want).is_ok()
            );
            assert_close("add", &got, &want, 0.0, 0.0);
        }
        1 => {
            assert_eq!(
                k.mul(a, b, &mut got).is_ok(),
                scalar.mul(a, b, &mut want).is_ok()
            );
            assert_close("mul", &got, &want, 0.0, 0.0);
        }
        2 => {
            let alpha = values(u, 1)?[0];
            let (mut y1, mut y2) = (b.to_vec(), b.to_vec());
            assert_eq!(
                k.axpy(alpha, a, &mut y1).is_ok(),
                scalar.axpy(alpha, a, &mut y2).is_ok()
            );
            if all_moderate(a, 1e6) && all_moderate(b, 1e6) && all_moderate(&[alpha], 1e6) {
                assert_close("axpy", &y1, &y2, 1e-6, 1e-6);
            }
        }
        3 => {
            let cols = len(u, 40)?;
            let (mut x1, mut x2) = (a.to_vec(), a.to_vec());
            let bias = &b[..cols.min(b.len())];
            assert_eq!(
                k.add_bias(bias, &mut x1).is_ok(),
                scalar.add_bias(bias, &mut x2).is_ok()
            );
            assert_close("add_bias", &x1, &x2, 0.0, 0.0);
        }
        4 => {
            // `==`: the maximum of -0.0 and 0.0 may be either zero.
            assert_eq!(k.max(a), scalar.max(a), "max");
            if all_moderate(a, 1e6) {
                let tol = 1e-5 * a.iter().map(|v| v.abs()).sum::<f32>() + 1e-6;
                assert!((k.sum(a) - scalar.sum(a)).abs() <= tol, "sum");
            }
        }
        5 => {
            let (d1, d2) = (k.dot(a, b), scalar.dot(a, b));
            assert_eq!(d1.is_ok(), d2.is_ok());
            if let (Ok(d1), Ok(d2)) = (d1, d2) {
                if all_moderate(a, 1e3) && all_moderate(b, 1e3) {
                    let tol =
                        1e-5 * a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum::<f32>() + 1e-6;
                    assert!((d1 - d2).abs() <= tol, "dot {d1} vs {d2}");
                }
            }
        }
        6 => {
            let ok = k.gelu_forward(a, &mut got).is_ok();
            assert_eq!(ok, scalar.gelu_forward(a, &mut want).is_ok());
            assert_close("gelu", &got, &want, 1e-5, 1e-6);
            // Into bf16: the f32 output rounded once.
            let mut narrow = vec![kernels::Bf16::default(); got.len()];
            assert_eq!(k.gelu_forward(a, &mut narrow).is_ok(), ok);
            if ok {
                let rounded = got.iter().map(|&x| kernels::Bf16::from_f32(x).to_bits());
                assert!(
                    narrow.iter().map(|x| x.to_bits()).eq(rounded),
                    "gelu into bf16"
                );
            }
            // From bf16 input: the GELU of the widened values, bit for bit.
            let widened: Vec<f32> = narrow.iter().map(|x| x.to_f32()).collect();
            let (mut from16, mut from32) = (vec![f32::NAN; got.len()], vec![f32::NAN; got.len()]);
            assert_eq!(k.gelu_forward(&narrow, &mut from16).is_ok(), ok);
            assert_eq!(k.gelu_forward(&widened, &mut from32).is_ok(), ok);
            assert!(same_bits(&from16, &from32), "gelu from bf16");
        }
        7 => {
            assert_eq!(
                k.sub(a, b, &mut got).is_ok(),
                scalar.sub(a, b, &mut want).is_ok()
            );
            assert_close("sub", &got, &want, 0.0, 0.0);
            let alpha = values(u, 1)?[0];
            let (mut x1, mut x2) = (a.to_vec(), a.to_vec());
            k.scale(alpha, &mut x1);
            scalar.scale(alpha, &mut x2);
            assert_close("scale", &x1, &x2, 0.0, 0.0);
        }
        8 => {
            if all_moderate(a, 1e3) {
                let want = scalar.sum_squares(a);
                let got = k.sum_squares(a);
                assert!(
                    (got - want).abs() <= 1e-5 * want + 1e-6,
                    "sum_squares {got} vs {want}"
                );
            }
        }
        9 => {
            // b is the output's gradient; it accumulates into dx.
            let dx0 = values(u, a.len())?;
            let (mut dx1, mut dx2) = (dx0.clone(), dx0);
            assert_eq!(
                k.gelu_backward(a, b, &mut dx1).is_ok(),
                scalar.gelu_backward(a, b, &mut dx2).is_ok()
            );
            if a.len() == b.len() && all_moderate(b, 1e3) && all_moderate(&dx2, 1e6) {
                // gelu' is within about 1e-7 absolute in its tails, scaled by
                // the incoming gradient.
                for (i, (&got, &want)) in dx1.iter().zip(&dx2).enumerate() {
                    let tol = 2e-5 * want.abs() + 2e-6 * (1.0 + b[i].abs());
                    assert!(
                        (got - want).abs() <= tol,
                        "gelu_backward {i}: {got} vs {want}"
                    );
                }
            }
            // Overwriting gives the same bits as adding into zeros.
            let mut fresh = vec![f32::NAN; a.len()];
            let mut added = vec![0.0; a.len()];
            assert_eq!(
                k.gelu_backward_into(a, b, &mut fresh).is_ok(),
                k.gelu_backward(a, b, &mut added).is_ok()
            );
            if a.len() == b.len() {
                assert!(same_bits(&fresh, &added), "gelu_backward_into");
            }
            // From bf16 inputs: the gradient of the widened values.
            let narrow = |v: &[f32]| v.iter().map(|&x| Bf16::from_f32(x)).collect::<Vec<_>>();
            let (a16, b16) = (narrow(a), narrow(b));
            let widen = |v: &[Bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            let (mut from16, mut from32) = (vec![f32::NAN; a.len()], vec![f32::NAN; a.len()]);
            assert_eq!(
                k.gelu_backward_into(&a16, &b16, &mut from16).is_ok(),
                k.gelu_backward_into(&widen(&a16), &widen(&b16), &mut from32)
                    .is_ok()
            );
            assert!(same_bits(&from16, &from32), "gelu_backward_into from bf16");
        }
        10 => {
            // Rounding to bf16 and back is exact arithmetic: bit for bit.
            let (mut got16, mut want16) = (
                vec![Bf16::default(); a.len()],
                vec![Bf16::default(); a.len()],
            );
            k.f32_to_bf16(a, &mut got16).unwrap();
            scalar.f32_to_bf16(a, &mut want16).unwrap();
            assert_eq!(got16, want16, "f32_to_bf16");
            k.bf16_to_f32(&got16, &mut got).unwrap();
            scalar.bf16_to_f32(&want16, &mut want).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "bf16_to_f32");
        }
        11 => {
            // Parameters a, gradients b (perhaps of another length).
            let opt = AdamW {
                lr: values(u, 1)?[0].abs().min(1.0),
                weight_decay: u.int_in_range(0u8..=10)? as f32 / 100.0,
                ..AdamW::default()
            };
            let (m0, v0) = (values(u, a.len())?, values(u, a.len())?);
            let v0: Vec<f32> = v0.iter().map(|v| v.abs()).collect();
            let step = u.int_in_range(1u32..=1000)?;
            let run = |k: &kernels::Kernels| {
                let (mut p, mut m, mut v) = (a.to_vec(), m0.clone(), v0.clone());
                let r = k.adamw_step(&opt, step, 0.5, &mut p, b, &mut m, &mut v);
                (r.is_ok(), [p, m, v])
            };
            let (got, want) = (run(&k), run(&scalar));
            assert_eq!(got.0, want.0);
            let moderate = [a, b, &m0, &v0].iter().all(|x| all_moderate(x, 1e3));
            if moderate && all_moderate(&[opt.lr], 1e3) {
                // Each value moves from `before` by a step computed apart
                // (fused on SIMD): when the step nearly cancels the value,
                // the step's rounding is an absolute error (found: a
                // parameter of 0.017 off by 5e-7), so the tolerance scales
                // with the value before and the step too.
                let befores = [a, &m0, &v0];
                for ((g, w), before) in got.1.iter().zip(&want.1).zip(befores) {
                    let steps: Vec<f32> = w
                        .iter()
                        .zip(before)
                        .map(|(w, b)| (w - b).abs() + b.abs())
                        .collect();
                    for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
                        let tol = 1e-5 * (w.abs() + steps[i]) + 1e-7;
                        let ok = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol;
                        assert!(ok, "adamw element {i}: got {g}, want {w}, tol {tol}");
                    }
                }
            }
        }
        12 => {
            // fill, then copy over it (refused alike where b's length
            // differs, leaving the filled values).
            let value = b.first().copied().unwrap_or(-0.0);
            k.fill(value, &mut got);
            scalar.fill(value, &mut want);
            assert!(same_bits(&got, &want), "fill");
            assert!(got.iter().all(|x| x.to_bits() == value.to_bits()), "fill");
            assert_eq!(
                k.copy(b, &mut got).is_ok(),
                scalar.copy(b, &mut want).is_ok()
            );
            assert!(same_bits(&got, &want), "copy");
            if b.len() == a.len() {
                assert!(same_bits(&got, b), "copy");
            }
        }
        _ => {
            assert_eq!(k.exp(a, &mut got).is_ok(), scalar.exp(a, &mut want).is_ok());
            assert_close("exp", &got, &want, 3e-7, 1e-44);
            k.tanh(a, &mut got).unwrap();
            scalar.tanh(a, &mut want).unwrap();
            assert_close("tanh", &got, &want, 3e-7, 0.0);
        }
    }
    Ok(())
}
