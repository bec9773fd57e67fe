//! Element-wise routines and reductions: arbitrary lengths (mismatched ones
//! included), offsets and values; the best backend must match scalar.
#![no_main]

use arbitrary::Unstructured;
use kernels_fuzz::{all_moderate, assert_close, backends, len, values};
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
    match u.int_in_range(0u8..=7)? {
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
            assert_eq!(
                k.gelu_forward(a, &mut got).is_ok(),
                scalar.gelu_forward(a, &mut want).is_ok()
            );
            assert_close("gelu", &got, &want, 1e-5, 1e-6);
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
