//! Every backend (the scalar reference included) against definitions written
//! here in f64, and the backward passes against finite differences of those
//! definitions.

use std::format;
use std::vec::Vec;

use super::*;
use crate::{AdamW, ValidLen};

/// All implementations, scalar first.
fn every_kernel() -> Vec<(&'static str, Kernels)> {
    let mut all = std::vec![("scalar", scalar())];
    all.extend(simd_kernels());
    all
}

/// The unit roundoff of f32, 2⁻²⁴.
const U: f64 = f32::EPSILON as f64 / 2.0;

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[track_caller]
fn close64(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g as f64 - w).abs() <= abs + rel * w.abs();
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// Values of both signs spread over magnitudes 2⁻⁸..2⁸, so the operands of
/// one call differ in size and every operation rounds.
fn varied(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| rng.uniform(-1.0, 1.0) * rng.uniform(-8.0, 8.0).exp2())
        .collect()
}

/// Row `r`'s valid length under `valid`, as [`ValidLen`] documents it
/// (in u128, so a huge causal offset saturates at the row length).
fn valid_len64(valid: ValidLen<'_>, r: usize, cols: usize) -> usize {
    match valid {
        ValidLen::All => cols,
        ValidLen::Causal { offset } => (offset as u128 + r as u128 + 1).min(cols as u128) as usize,
        ValidLen::PerRow(lens) => lens[r],
    }
}

/// Rows of the mask tests.
const MASK_ROWS: usize = 5;

/// Per-row lengths for [`MASK_ROWS`] rows: an empty row, a full one, and
/// partial ones.
fn per_row_lens(cols: usize) -> [usize; MASK_ROWS] {
    [0, cols, cols.div_ceil(2), 1, cols - 1]
}

/// Every kind of mask: none, causal from 0, causal from a later query, a
/// causal offset so large that `offset + r + 1` saturates, and per-row.
fn masks(lens: &[usize]) -> [ValidLen<'_>; 5] {
    [
        ValidLen::All,
        ValidLen::Causal { offset: 0 },
        ValidLen::Causal { offset: 3 },
        ValidLen::Causal {
            offset: usize::MAX - 2,
        },
        ValidLen::PerRow(lens),
    ]
}

/// Sets the entries of each row past its valid length to NaN: they are not
/// part of any definition, so nothing of them may reach a result.
fn poison_masked(x: &mut [f32], cols: usize, valid: ValidLen<'_>) {
    for (r, row) in x.chunks_mut(cols).enumerate() {
        row[valid_len64(valid, r, cols)..].fill(f32::NAN);
    }
}

/// Asserts that each row's entries past its valid length are exactly 0.
#[track_caller]
fn assert_masked_zero(what: &str, x: &[f32], cols: usize, valid: ValidLen<'_>) {
    for (r, row) in x.chunks(cols).enumerate() {
        let tail = &row[valid_len64(valid, r, cols)..];
        assert!(
            tail.iter().all(|&v| v == 0.0),
            "{what}: row {r}: masked entries {tail:?} are not 0"
        );
    }
}

/// Layer norm of one row: `(out, mean, rstd)`.
fn layer_norm64(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> (Vec<f64>, f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    let out = (0..x.len())
        .map(|i| (x[i] - mean) * rstd * gamma[i] + beta[i])
        .collect();
    (out, mean, rstd)
}

fn gelu64(x: f64) -> f64 {
    let c = (2.0 / core::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// Cross-entropy of each row of logits against its target.
fn cross_entropy64(logits: &[f64], classes: usize, targets: &[u32]) -> Vec<f64> {
    logits
        .chunks(classes)
        .zip(targets)
        .map(|(row, &t)| {
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            lse - row[t as usize]
        })
        .collect()
}

/// Central-difference gradient of `f` at `x`.
fn numerical_gradient(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let h = 1e-5 * x[i].abs().max(1.0);
            let orig = x[i];
            x[i] = orig + h;
            let up = f(&x);
            x[i] = orig - h;
            let down = f(&x);
            x[i] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

#[test]
fn softmax_backward_matches_finite_differences() {
    let mut rng = Rng::new(21);
    for (name, k) in every_kernel() {
        for cols in [1, 3, 8, 17, 33] {
            let rows = MASK_ROWS;
            let lens = per_row_lens(cols);
            for valid in masks(&lens) {
                let what = ctx(&format!("softmax backward {valid:?}"), name, cols);
                let x = rng.vec(rows * cols, -2.0, 2.0);
                let w = rng.vec(rows * cols, -1.0, 1.0);
                let mut probs = x.clone();
                k.softmax_rows(&mut probs, cols, valid).unwrap();
                // The backward pass reads only the valid entries of both.
                poison_masked(&mut probs, cols, valid);
                // loss = Σ w · softmax(x) over the valid entries, so
                // d(loss)/d(probs) = w there.
                let mut got = w.clone();
                poison_masked(&mut got, cols, valid);
                k.softmax_backward_rows(&probs, &mut got, cols, valid)
                    .unwrap();
                let loss = |x: &[f64]| -> f64 {
                    let mut total = 0.0;
                    for r in 0..rows {
                        let row = &x[r * cols..r * cols + valid_len64(valid, r, cols)];
                        let z: f64 = row.iter().map(|v| v.exp()).sum();
                        for (j, v) in row.iter().enumerate() {
                            total += f64::from(w[r * cols + j]) * v.exp() / z;
                        }
                    }
                    total
                };
                // The masked entries' gradient is exactly 0 here too.
                let want = numerical_gradient(&widen(&x), loss);
                // Central differences are good to ~1e-10; the rest is the f32
                // probabilities (a few ulp) times |w| ≤ 1.
                close64(&what, &got, &want, 1e-3, 1e-5);
                assert_masked_zero(&what, &got, cols, valid);
            }
        }
    }
}

#[test]
fn softmax_matches_definition() {
    let mut rng = Rng::new(20);
    for (name, k) in every_kernel() {
        for cols in [1, 5, 8, 16, 23, 100] {
            let rows = MASK_ROWS;
            let lens = per_row_lens(cols);
            for valid in masks(&lens) {
                let what = ctx(&format!("softmax {valid:?}"), name, cols);
                let x = rng.vec(rows * cols, -10.0, 10.0);
                let mut got = x.clone();
                poison_masked(&mut got, cols, valid);
                k.softmax_rows(&mut got, cols, valid).unwrap();
                for r in 0..rows {
                    let len = valid_len64(valid, r, cols);
                    let row = widen(&x[r * cols..r * cols + len]);
                    let z: f64 = row.iter().map(|v| v.exp()).sum();
                    let want: Vec<f64> = row.iter().map(|v| v.exp() / z).collect();
                    // exp within 2 ulp, the sum and the scaling a few more:
                    // 1e-5 relative is ~80 ulp, for rows of up to 100.
                    close64(
                        &format!("{what} row {r}"),
                        &got[r * cols..r * cols + len],
                        &want,
                        1e-5,
                        1e-7,
                    );
                }
                assert_masked_zero(&what, &got, cols, valid);
            }
        }
    }
}

/// `add`, `sub`, `mul`, `scale`, `axpy`, `add_bias` and `max` against f64,
/// from unaligned operands into NaN-prefilled outputs.
#[test]
fn elementwise_and_max_match_definitions() {
    type Binary = fn(&Kernels, &[f32], &[f32], &mut [f32]) -> Result<(), crate::KernelError>;
    type Definition = fn(f64, f64) -> f64;
    let binary: [(&str, Binary, Definition); 3] = [
        ("add", Kernels::add, |x, y| x + y),
        ("sub", Kernels::sub, |x, y| x - y),
        ("mul", Kernels::mul, |x, y| x * y),
    ];
    let mut rng = Rng::new(25);
    for (name, k) in every_kernel() {
        for n in [1, 2, 3, 7, 8, 9, 13, 16, 17, 31, 67, 129, 1000] {
            let (a, b) = (varied(&mut rng, n), varied(&mut rng, n));
            let (ga, gb) = (Guarded::from(&a, n), Guarded::from(&b, n + 1));
            // An f64 sum, difference or product of two f32 (|x| ≤ 2⁸) is
            // exact or rounded to 53 bits, and 53 ≥ 2·24 + 2 makes rounding it
            // on to f32 the correctly rounded f32 operation IEEE requires:
            // so these compare bit for bit.
            let exact = |def: &dyn Fn(usize) -> f64| -> Vec<f32> {
                (0..n).map(|i| def(i) as f32).collect()
            };
            for (op_name, op, def) in binary {
                let what = ctx(op_name, name, n);
                let mut out = Guarded::new(n, n + 2);
                op(&k, ga.get(), gb.get(), out.get_mut()).unwrap();
                let want = exact(&|i| def(a[i] as f64, b[i] as f64));
                assert_same(&what, &out.checked(&what), &want);
            }

            let alpha = -1.37f32;
            let what = ctx("scale", name, n);
            let mut x = Guarded::from(&a, n + 3);
            k.scale(alpha, x.get_mut());
            let want = exact(&|i| a[i] as f64 * alpha as f64);
            assert_same(&what, &x.checked(&what), &want);

            // y + α·x rounds once (FMA) or twice (α·x, then the sum): within
            // u·(2|α·x| + |y|) of the exact value.
            let alpha = 0.7331f32;
            let what = ctx("axpy", name, n);
            let mut y = Guarded::from(&b, n + 4);
            k.axpy(alpha, ga.get(), y.get_mut()).unwrap();
            for (i, &got) in y.checked(&what).iter().enumerate() {
                let ax = alpha as f64 * a[i] as f64;
                let want = b[i] as f64 + ax;
                let tol = U * (2.0 * ax.abs() + (b[i] as f64).abs());
                assert!(
                    (got as f64 - want).abs() <= tol,
                    "{what}: element {i}: got {got}, want {want} ± {tol}"
                );
            }

            // Each element is its own maximum in turn: the first, the middle,
            // the last (a tail lane), or wherever the data put it; a NaN is
            // ignored.
            let what = ctx("max", name, n);
            for (place, nan) in [(None, None), (Some(0), Some(n / 2)), (Some(n / 2), None)]
                .into_iter()
                .chain([(Some(n - 1), Some(0))])
            {
                let mut x = a.clone();
                if let Some(i) = place {
                    x[i] = 1000.0;
                }
                if let Some(i) = nan.filter(|&i| Some(i) != place) {
                    x[i] = f32::NAN;
                }
                let want = x
                    .iter()
                    .filter(|v| !v.is_nan())
                    .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let got = k.max(Guarded::from(&x, n).get());
                assert_eq!(got as f64, want, "{what}: max at {place:?}, NaN at {nan:?}");
            }
        }

        for cols in [1, 7, 8, 9, 17, 33] {
            for rows in [1, 3] {
                let (x, bias) = (varied(&mut rng, rows * cols), varied(&mut rng, cols));
                let what = ctx(&format!("add_bias rows={rows}"), name, cols);
                let mut got = Guarded::from(&x, cols);
                k.add_bias(Guarded::from(&bias, cols + 1).get(), got.get_mut())
                    .unwrap();
                // Exact in f64, rounded once: bit for bit, as above.
                let want: Vec<f32> = (0..rows * cols)
                    .map(|i| (x[i] as f64 + bias[i % cols] as f64) as f32)
                    .collect();
                assert_same(&what, &got.checked(&what), &want);
            }
        }
    }
}

#[test]
fn layer_norm_matches_definition_and_finite_differences() {
    let mut rng = Rng::new(21);
    let eps = 1e-5f32;
    let eps64 = eps as f64;
    for (name, k) in every_kernel() {
        for cols in [1, 3, 8, 17, 40, 67] {
            let rows = 3;
            // Each row its own offset, so statistics mixed up between rows,
            // or taken over the wrong columns, show.
            let mut x = rng.vec(rows * cols, -3.0, 3.0);
            for (row, shift) in x.chunks_mut(cols).zip([0.0, 4.0, -7.0]) {
                row.iter_mut().for_each(|v| *v += shift);
            }
            let (gamma, beta) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -1.0, 1.0));
            let (x64, g64, b64) = (widen(&x), widen(&gamma), widen(&beta));
            let mut out = Guarded::new(rows * cols, cols);
            let (mut mean, mut rstd) = (Guarded::new(rows, 1), Guarded::new(rows, 2));
            let gx = Guarded::from(&x, cols + 3);
            k.layer_norm_forward(
                gx.get(),
                &gamma,
                &beta,
                eps,
                out.get_mut(),
                mean.get_mut(),
                rstd.get_mut(),
            )
            .unwrap();
            let what = ctx("layer_norm", name, cols);
            let (out, mean, rstd) = (out.checked(&what), mean.checked(&what), rstd.checked(&what));
            for r in 0..rows {
                let what = format!("{what} row {r}");
                let span = r * cols..(r + 1) * cols;
                let (want, want_mean, want_rstd) =
                    layer_norm64(&x64[span.clone()], &g64, &b64, eps64);
                // The f32 sum of `cols` terms: within (cols + 1)·u·Σ|x|/cols.
                let abs_mean = x64[span.clone()].iter().map(|v| v.abs()).sum::<f64>() / cols as f64;
                close64(
                    &format!("{what} mean"),
                    &mean[r..=r],
                    &[want_mean],
                    0.0,
                    (cols as f64 + 1.0) * U * abs_mean,
                );
                // The two-pass variance is within ~(cols + 2)·u relatively;
                // rstd half that plus the root and the division: 1e-5 covers
                // rows of up to 67 columns with room.
                close64(
                    &format!("{what} rstd"),
                    &rstd[r..=r],
                    &[want_rstd],
                    1e-5,
                    0.0,
                );
                // |x − mean| rounds by u·|x| (|x| ≤ 10), times rstd·gamma
                // (≲ 3); the rest a few ulp of |out| ≲ 4.
                close64(&format!("{what} out"), &out[span], &want, 1e-5, 1e-5);
            }

            // Loss = Σ w·out over every row, so dout = w; compare with finite
            // differences. The backward pass adds into dx, dgamma and dbeta,
            // so they start from random values.
            let w = rng.vec(rows * cols, -1.0, 1.0);
            let w64 = widen(&w);
            let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
                (0..rows)
                    .map(|r| {
                        let (out, _, _) = layer_norm64(&x[r * cols..(r + 1) * cols], g, b, eps64);
                        out.iter()
                            .zip(&w64[r * cols..])
                            .map(|(o, w)| o * w)
                            .sum::<f64>()
                    })
                    .sum()
            };
            let start = rng.vec(rows * cols + 2 * cols, -1.0, 1.0);
            let (dx0, rest) = start.split_at(rows * cols);
            let (dg0, db0) = rest.split_at(cols);
            let (mut dx, mut dg, mut db) = (dx0.to_vec(), dg0.to_vec(), db0.to_vec());
            k.layer_norm_backward(&x, &gamma, &mean, &rstd, &w, &mut dx, &mut dg, &mut db)
                .unwrap();
            let plus = |start: &[f32], grad: Vec<f64>| -> Vec<f64> {
                start.iter().zip(grad).map(|(&s, g)| s as f64 + g).collect()
            };
            // With one column the output is beta alone: dx is 0 up to
            // rounding, which rstd = 1/√eps ≈ 316 amplifies.
            let (rel, abs) = (2e-3, if cols == 1 { 1e-2 } else { 2e-4 });
            let want_dx = plus(dx0, numerical_gradient(&x64, |x| loss(x, &g64, &b64)));
            close64(&format!("{what} dx"), &dx, &want_dx, rel, abs);
            let want_dg = plus(dg0, numerical_gradient(&g64, |g| loss(&x64, g, &b64)));
            close64(&format!("{what} dgamma"), &dg, &want_dg, rel, 2e-4);
            let want_db = plus(db0, numerical_gradient(&b64, |b| loss(&x64, &g64, b)));
            close64(&format!("{what} dbeta"), &db, &want_db, rel, 2e-4);
        }
    }
}

#[test]
fn gelu_matches_definition_and_finite_differences() {
    let mut rng = Rng::new(22);
    for (name, k) in every_kernel() {
        let x = rng.vec(101, -6.0, 6.0);
        let mut out = Guarded::new(x.len(), 1);
        k.gelu_forward(&x, out.get_mut()).unwrap();
        let want: Vec<f64> = x.iter().map(|&v| gelu64(v as f64)).collect();
        let what = ctx("gelu", name, x.len());
        close64(&what, &out.checked(&what), &want, 1e-5, 1e-6);

        // The backward pass adds gelu'(x)·dout into dx: a random dout and a
        // non-zero starting dx check both the scaling and the accumulation.
        let dout = rng.vec(x.len(), -2.0, 2.0);
        let dx0 = rng.vec(x.len(), -1.0, 1.0);
        let mut dx = Guarded::from(&dx0, 2);
        k.gelu_backward(&x, &dout, dx.get_mut()).unwrap();
        let want: Vec<f64> = (0..x.len())
            .map(|i| {
                let slope = numerical_gradient(&[x[i] as f64], |x| gelu64(x[0]))[0];
                dx0[i] as f64 + slope * dout[i] as f64
            })
            .collect();
        // gelu' (|gelu'| ≤ 1.13) within 1e-5 absolute, times |dout| ≤ 2, plus
        // the rounding of the sum (|dx| ≲ 3).
        let what = ctx("gelu_backward", name, x.len());
        close64(&what, &dx.checked(&what), &want, 1e-5, 3e-5);

        // Overwriting from NaN: the slope times dout alone.
        let mut fresh = Guarded::new(x.len(), 3);
        k.gelu_backward_into(&x, &dout, fresh.get_mut()).unwrap();
        let want: Vec<f64> = (0..x.len())
            .map(|i| numerical_gradient(&[x[i] as f64], |x| gelu64(x[0]))[0] * dout[i] as f64)
            .collect();
        let what = ctx("gelu_backward_into", name, x.len());
        close64(&what, &fresh.checked(&what), &want, 1e-5, 3e-5);
    }
}

/// Far from 0 GELU is x or 0 and its slope exactly 1 or 0, on every
/// backend: `x²` overflows from 1.8e19, and the slope once came out
/// `0 · inf` = NaN there on the SIMD backends (and from 5e19 on the scalar
/// one). Its value at ±inf is the formula's: +inf, and NaN (−inf · 0).
#[test]
fn gelu_far_tails_are_exact() {
    let far = [
        20.0,
        1e4,
        2e19,
        4e19,
        1e30,
        f32::MAX,
        -20.0,
        -1e4,
        -2e19,
        -4e19,
        -1e30,
        f32::MIN,
    ];
    for (name, k) in every_kernel() {
        // Lengths 12 and 29 put the values in whole vectors and in a tail.
        for n in [far.len(), 29] {
            let x: Vec<f32> = (0..n).map(|i| far[i % far.len()]).collect();
            let mut slope = Guarded::new(n, 4);
            k.gelu_backward_into(&x, &std::vec![1.0; n], slope.get_mut())
                .unwrap();
            let what = ctx("gelu_backward_into far", name, n);
            let slope = slope.checked(&what);
            let mut out = Guarded::new(n, 5);
            k.gelu_forward(&x, out.get_mut()).unwrap();
            let out = out.checked(&what);
            for i in 0..n {
                let positive = x[i] > 0.0;
                assert_eq!(
                    slope[i],
                    if positive { 1.0 } else { 0.0 },
                    "{what}: x = {}",
                    x[i]
                );
                if positive {
                    assert_eq!(out[i], x[i], "{what}: gelu({})", x[i]);
                } else {
                    assert_eq!(out[i], 0.0, "{what}: gelu({})", x[i]);
                }
            }
        }
        let mut inf = [0.0; 2];
        k.gelu_forward(&[f32::INFINITY, f32::NEG_INFINITY], &mut inf)
            .unwrap();
        assert_eq!(inf[0], f32::INFINITY, "{name}");
        assert!(inf[1].is_nan(), "{name}: gelu(-inf) is -inf · 0");
    }
}

/// A row whose statistics overflow `−mean · rstd` (one column of 4 with
/// rstd 1e38) still has a finite input gradient on every backend: the
/// vector's unused lanes once computed 0 · inf there, NaN for the row.
#[test]
fn layer_norm_backward_with_huge_statistics_stays_finite() {
    for (name, k) in every_kernel() {
        for cols in [1, 3, 17] {
            let x = std::vec![4.0; cols];
            let (gamma, dout) = (std::vec![1.0; cols], std::vec![1.0; cols]);
            let (mut dx, mut dgamma, mut dbeta) = (
                std::vec![0.0; cols],
                std::vec![0.0; cols],
                std::vec![0.0; cols],
            );
            k.layer_norm_backward(
                &x,
                &gamma,
                &[4.0],
                &[1e38],
                &dout,
                &mut dx,
                &mut dgamma,
                &mut dbeta,
            )
            .unwrap();
            // Every x equals the mean: norm is 0, dx = (1 − mean(1)) · rstd = 0.
            assert!(dx.iter().all(|&v| v == 0.0), "{name} cols {cols}: {dx:?}");
            assert!(dgamma.iter().all(|&v| v == 0.0), "{name} cols {cols}");
            assert!(dbeta.iter().all(|&v| v == 1.0), "{name} cols {cols}");
        }
    }
}

#[test]
fn cross_entropy_matches_definition_and_finite_differences() {
    let mut rng = Rng::new(23);
    for (name, k) in every_kernel() {
        // Shifted by 1e4 too: logits that large must not cancel the loss's
        // few units (their ulp is 1e-3; max + ln Σ − x[t] lost that much).
        for (classes, shift) in [1, 2, 7, 9, 17, 33, 100]
            .map(|c| (c, 0.0))
            .into_iter()
            .chain([(9, 1e4), (100, 1e4)])
        {
            let rows = 5;
            let logits: Vec<f32> = rng
                .vec(rows * classes, -5.0, 5.0)
                .iter()
                .map(|x| x + shift)
                .collect();
            // The first and the last class among the targets.
            let mut targets: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
            (targets[0], targets[1]) = (0, classes as u32 - 1);
            let mut losses = Guarded::new(rows, 1);
            let mut d = Guarded::new(rows * classes, classes);
            let scale = 0.37;
            let gl = Guarded::from(&logits, classes + 1);
            k.cross_entropy(
                gl.get(),
                classes,
                &targets,
                losses.get_mut(),
                Some(d.get_mut()),
                scale,
            )
            .unwrap();
            let what = ctx("cross_entropy", name, classes);
            let (losses, d) = (losses.checked(&what), d.checked(&what));
            let logits64 = widen(&logits);
            let want = cross_entropy64(&logits64, classes, &targets);
            // ln Σ − (x[t] − max): the difference ≤ 10, within an ulp of
            // it (exact when shifted: its terms are then within a factor
            // 2), ~1e-6; the sum of `classes` exponentials ≤
            // (classes + 2)·u relative, so ≤ 7e-6 in its logarithm.
            close64(&format!("{what} losses"), &losses, &want, 0.0, 1e-5);
            for r in 0..rows {
                let row = &logits64[r * classes..(r + 1) * classes];
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
                let want: Vec<f64> = (0..classes)
                    .map(|j| {
                        let onehot = if j == targets[r] as usize { 1.0 } else { 0.0 };
                        ((row[j] - max).exp() / z - onehot) * scale as f64
                    })
                    .collect();
                // softmax within (classes + 6)·u ≤ 7e-6 relative; subtracting
                // the one-hot rounds by u·scale ≈ 2e-8.
                let span = r * classes..(r + 1) * classes;
                close64(
                    &format!("{what} dlogits row {r}"),
                    &d[span],
                    &want,
                    1e-5,
                    1e-7,
                );
            }
            // And the gradient is that of scale·Σ losses (taken unshifted,
            // which changes neither, so that the step stays small).
            let centred: Vec<f64> = logits64.iter().map(|v| v - shift as f64).collect();
            let grad = numerical_gradient(&centred, |l| {
                scale as f64 * cross_entropy64(l, classes, &targets).iter().sum::<f64>()
            });
            close64(&what, &d, &grad, 1e-3, 1e-6);
        }
    }
}

/// One AdamW step in f64 from the same f32 state, element by element, with
/// varied parameters, gradients and moments (so any mixed-up index shows),
/// at early steps (strong bias correction) and a late one.
#[test]
fn adamw_matches_definition() {
    let opt = AdamW {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let (lr, b1, b2, eps, wd) = (
        opt.lr as f64,
        opt.beta1 as f64,
        opt.beta2 as f64,
        opt.eps as f64,
        opt.weight_decay as f64,
    );
    let mut rng = Rng::new(26);
    for (name, k) in every_kernel() {
        for n in [1, 7, 19, 37, 130] {
            let mut p = rng.vec(n, -1.0, 1.0);
            let mut m = rng.vec(n, -0.1, 0.1);
            let mut v = rng.vec(n, 0.0, 0.01);
            for step in [1u32, 2, 3, 1000] {
                let g = rng.vec(n, -1.0, 1.0);
                let grad_scale = 0.5f32;
                let (p0, m0, v0) = (p.clone(), m.clone(), v.clone());
                k.adamw_step(&opt, step, grad_scale, &mut p, &g, &mut m, &mut v)
                    .unwrap();
                let (mut want_p, mut want_m, mut want_v) = (Vec::new(), Vec::new(), Vec::new());
                for i in 0..n {
                    let g = g[i] as f64 * grad_scale as f64;
                    let m = b1 * m0[i] as f64 + (1.0 - b1) * g;
                    let v = b2 * v0[i] as f64 + (1.0 - b2) * g * g;
                    let m_hat = m / (1.0 - b1.powi(step as i32));
                    let v_hat = v / (1.0 - b2.powi(step as i32));
                    let p0 = p0[i] as f64;
                    want_p.push(p0 - lr * (m_hat / (v_hat.sqrt() + eps) + wd * p0));
                    want_m.push(m);
                    want_v.push(v);
                }
                let what = ctx(&format!("adamw step {step}"), name, n);
                // Moments: three roundings of terms ≤ 0.1 (m) and ≤ 0.01 (v).
                close64(&format!("{what} m"), &m, &want_m, 4.0 * U, 4.0 * U * 0.1);
                close64(&format!("{what} v"), &v, &want_v, 4.0 * U, 4.0 * U * 0.01);
                // p moves by lr·(|m̂/√v̂| ≲ 4 + wd·|p|): the update is good to
                // ~1e-5 relative (√v̂ of a few-ulp v̂, m̂ with cancellation),
                // 1e-7 absolute after lr; then p itself rounds (u·|p| ≤ 6e-8).
                close64(&format!("{what} params"), &p, &want_p, 1e-6, 2e-7);
            }
        }
    }
}

#[test]
fn reductions_and_transpose_match_definitions() {
    let mut rng = Rng::new(24);
    for (name, k) in every_kernel() {
        let (a, b) = (rng.vec(333, -1.0, 1.0), rng.vec(333, -1.0, 1.0));
        let dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!(
            (k.dot(&a, &b).unwrap() as f64 - dot).abs() < 1e-4,
            "{name}: dot"
        );
        let sum: f64 = a.iter().map(|&x| x as f64).sum();
        assert!((k.sum(&a) as f64 - sum).abs() < 1e-4, "{name}: sum");
        let ss: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
        assert!(
            (k.sum_squares(&a) as f64 - ss).abs() < 1e-4,
            "{name}: sum_squares"
        );

        let (rows, cols) = (17, 19);
        let mut t = std::vec![0.0; rows * cols];
        k.transpose(rows, cols, &a[..rows * cols], cols, &mut t, rows)
            .unwrap();
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(t[j * rows + i], a[i * cols + j], "{name}: transpose");
            }
        }
    }
}
