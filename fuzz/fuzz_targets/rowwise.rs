//! Row-wise routines (softmax with masks and its backward, layer norm
//! forward and backward, cross-entropy): arbitrary shapes, valid lengths
//! and values.
#![no_main]

use arbitrary::Unstructured;
use kernels::ValidLen;
use kernels_fuzz::{all_moderate, assert_close, backends, len, same_bits, values};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
    let (k, scalar) = backends();
    let cols = len(u, 70)?;
    let rows = len(u, 6)?;
    // Occasionally a ragged length, which both must refuse.
    let n = rows * cols + usize::from(u.ratio(1, 10)?);
    let x = values(u, n)?;
    match u.int_in_range(0u8..=2)? {
        0 => {
            let lens: Vec<usize> = (0..rows)
                .map(|_| len(u, cols + 1))
                .collect::<Result<_, _>>()?;
            let offset = len(u, 100)?;
            for valid in [
                ValidLen::All,
                ValidLen::Causal { offset },
                ValidLen::PerRow(&lens),
            ] {
                let (mut got, mut want) = (x.clone(), x.clone());
                let r1 = k.softmax_rows(&mut got, cols, valid);
                let r2 = scalar.softmax_rows(&mut want, cols, valid);
                assert_eq!(r1.is_ok(), r2.is_ok());
                assert_close("softmax", &got, &want, 1e-5, 1e-7);
                // Backward through the reference's probabilities.
                let dprobs = values(u, n)?;
                let (mut g1, mut g2) = (dprobs.clone(), dprobs.clone());
                let r1 = k.softmax_backward_rows(&want, &mut g1, cols, valid);
                let r2 = scalar.softmax_backward_rows(&want, &mut g2, cols, valid);
                assert_eq!(r1.is_ok(), r2.is_ok());
                if r1.is_ok() && all_moderate(&dprobs, 1e3) && all_moderate(&want, 2.0) {
                    // dx = p·(g − Σ p·g): the sum's rounding (`cols` terms
                    // in another order per backend) is absolute.
                    let largest = dprobs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let abs = 2.0 * (cols as f32 + 4.0) * f32::EPSILON * largest + 1e-6;
                    assert_close("softmax backward", &g1, &g2, 1e-5, abs);
                }
            }
        }
        1 => {
            let (gamma, beta) = (values(u, cols)?, values(u, cols)?);
            // Now and then any eps at all: one below 0 or not finite is refused.
            let eps = match u.int_in_range(0u8..=7)? {
                0 => f32::from_bits(u.arbitrary()?),
                1 => 0.0,
                _ => 1e-5,
            };
            let run = |k: &kernels::Kernels| {
                let mut out = vec![0.0; n];
                let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
                let r =
                    k.layer_norm_forward(&x, &gamma, &beta, eps, &mut out, &mut mean, &mut rstd);
                (r.is_ok(), out, mean, rstd)
            };
            let (got, want) = (run(&k), run(&scalar));
            assert_eq!(got.0, want.0);
            assert!(
                !got.0 || (eps >= 0.0 && eps.is_finite()),
                "eps {eps} accepted"
            );
            // Into bf16: the f32 output rounded once, the same statistics.
            let mut narrow = vec![kernels::Bf16::default(); n];
            let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
            let ok =
                k.layer_norm_forward(&x, &gamma, &beta, eps, &mut narrow, &mut mean, &mut rstd);
            assert_eq!(ok.is_ok(), got.0);
            if got.0 {
                let rounded = got.1.iter().map(|&x| kernels::Bf16::from_f32(x).to_bits());
                assert!(
                    narrow.iter().map(|x| x.to_bits()).eq(rounded),
                    "layer_norm into bf16"
                );
                assert!(same_bits(&mean, &got.2) && same_bits(&rstd, &got.3));
            }
            let inputs_moderate =
                all_moderate(&x, 1e3) && all_moderate(&gamma, 1e3) && all_moderate(&beta, 1e3);
            if got.0 && inputs_moderate {
                assert_close("layer_norm mean", &got.2, &want.2, 1e-5, 1e-5);
            }
            // Layer norm amplifies the rounding of `mean` by rstd: a row of
            // (near) constant values, or with |mean| >> std, is ill-conditioned
            // and backends may differ far beyond rounding. Compare outputs and
            // gradients of well-conditioned rows only.
            let conditioned = want
                .2
                .iter()
                .zip(&want.3)
                .all(|(m, r)| *r <= 30.0 && (m * r).abs() <= 50.0);
            if got.0 && inputs_moderate && conditioned {
                assert_close("layer_norm out", &got.1, &want.1, 1e-4, 2e-3);
                let dout = values(u, n)?;
                if all_moderate(&dout, 1e3) {
                    let grads = |k: &kernels::Kernels| {
                        let (mut dx, mut dg, mut db) =
                            (vec![0.0; n], vec![0.0; cols], vec![0.0; cols]);
                        k.layer_norm_backward(
                            &x, &gamma, &want.2, &want.3, &dout, &mut dx, &mut dg, &mut db,
                        )
                        .unwrap();
                        (dx, dg, db)
                    };
                    let (g, w) = (grads(&k), grads(&scalar));
                    // dx = rstd·(dnorm − mean(dnorm) − norm·mean(dnorm·norm)) can
                    // cancel: bound its rounding by the size of the terms.
                    for r in 0..rows {
                        let (mean, rstd) = (want.2[r], want.3[r]);
                        let row = r * cols..(r + 1) * cols;
                        let norm: Vec<f32> =
                            x[row.clone()].iter().map(|v| (v - mean) * rstd).collect();
                        let dnorm: Vec<f32> =
                            (0..cols).map(|j| gamma[j] * dout[r * cols + j]).collect();
                        let mean_abs_dnorm =
                            dnorm.iter().map(|v| v.abs()).sum::<f32>() / cols as f32;
                        let mean_abs_dnn = dnorm
                            .iter()
                            .zip(&norm)
                            .map(|(d, n)| (d * n).abs())
                            .sum::<f32>()
                            / cols as f32;
                        for j in 0..cols {
                            let terms =
                                dnorm[j].abs() + mean_abs_dnorm + norm[j].abs() * mean_abs_dnn;
                            let tol = 1e-5 * rstd * terms * cols as f32 + 1e-6;
                            let (gv, wv) = (g.0[r * cols + j], w.0[r * cols + j]);
                            assert!(
                                (gv - wv).abs() <= tol,
                                "layer_norm dx [{r},{j}]: got {gv}, want {wv}, tol {tol}"
                            );
                        }
                    }
                    let scale = 1.0 + w.1.iter().map(|v| v.abs()).fold(0.0, f32::max);
                    assert_close("layer_norm dgamma", &g.1, &w.1, 1e-3, 1e-4 * scale);
                    assert_close("layer_norm dbeta", &g.2, &w.2, 1e-4, 1e-3);
                }
            }
        }
        _ => {
            let targets: Vec<u32> = (0..rows)
                .map(|_| u.int_in_range(0..=cols as u32))
                .collect::<Result<_, _>>()?;
            let run = |k: &kernels::Kernels| {
                let (mut losses, mut d) = (vec![0.0; rows], vec![0.0; n]);
                let r = k.cross_entropy(&x, cols, &targets, &mut losses, Some(&mut d), 0.5);
                (r.is_ok(), losses, d)
            };
            let (got, want) = (run(&k), run(&scalar));
            assert_eq!(got.0, want.0);
            if got.0 && all_moderate(&x, 1e3) {
                assert_close("cross_entropy loss", &got.1, &want.1, 1e-5, 1e-4);
                // The target's gradient is scale·(p − 1): when p is near 1
                // the subtraction cancels, leaving the rounding of p itself
                // (its sum of `cols` terms, in another order per backend) as
                // an absolute error (found: cols 67, p = 0.99985, 2e-6 apart).
                let rounding = 0.5 * (cols as f32 + 4.0) * f32::EPSILON;
                assert_close(
                    "cross_entropy dlogits",
                    &got.2,
                    &want.2,
                    1e-5,
                    rounding.max(1e-6),
                );
            }
        }
    }
    Ok(())
}
