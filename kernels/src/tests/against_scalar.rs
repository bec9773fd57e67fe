//! Every routine on every SIMD implementation against the scalar reference,
//! on lengths 0..=67 and larger, unaligned, with guard zones and special
//! values.

use std::vec::Vec;

use std::format;

use super::*;
use crate::{AdamW, Bf16, ValidLen};

/// Random data in `[-4, 4)` with, for longer inputs, a few special values.
fn data(rng: &mut Rng, n: usize, specials: bool) -> Vec<f32> {
    let mut v = rng.vec(n, -4.0, 4.0);
    if specials && n > 8 {
        v[n / 3] = f32::NAN;
        v[n / 2] = f32::INFINITY;
        v[n - 1] = f32::NEG_INFINITY;
        v[1] = -0.0;
    }
    v
}

#[test]
fn binary_elementwise_is_exact() {
    let mut rng = Rng::new(1);
    type Op = fn(&Kernels, &[f32], &[f32], &mut [f32]) -> Result<(), crate::KernelError>;
    let ops: [(&str, Op); 3] = [
        ("add", Kernels::add),
        ("sub", Kernels::sub),
        ("mul", Kernels::mul),
    ];
    for (name, k) in simd_kernels() {
        for n in lengths() {
            let (a, b) = (data(&mut rng, n, true), data(&mut rng, n, true));
            for (op_name, op) in ops {
                let mut want = std::vec![0.0; n];
                op(&scalar(), &a, &b, &mut want).unwrap();
                let (ga, gb) = (Guarded::from(&a, n), Guarded::from(&b, n + 1));
                let mut out = Guarded::new(n, n + 2);
                op(&k, ga.get(), gb.get(), out.get_mut()).unwrap();
                let what = ctx(op_name, name, n);
                assert_same(&what, &out.checked(&what), &want);
            }
        }
    }
}

#[test]
fn in_place_elementwise() {
    let mut rng = Rng::new(2);
    for (name, k) in simd_kernels() {
        for n in lengths() {
            let (x, y) = (data(&mut rng, n, true), data(&mut rng, n, true));

            let mut want = x.clone();
            scalar().scale(-1.5, &mut want);
            let mut got = Guarded::from(&x, n);
            k.scale(-1.5, got.get_mut());
            assert_same(&ctx("scale", name, n), &got.checked("scale"), &want);

            let mut want = y.clone();
            scalar().axpy(0.75, &x, &mut want).unwrap();
            let mut got = Guarded::from(&y, n);
            k.axpy(0.75, &x, got.get_mut()).unwrap();
            // FMA rounds once where the reference rounds twice.
            assert_close(
                &ctx("axpy", name, n),
                &got.checked("axpy"),
                &want,
                1e-6,
                1e-6,
            );

            let mut got = Guarded::new(n, n);
            k.fill(2.5, got.get_mut());
            assert!(got.checked("fill").iter().all(|&v| v == 2.5));

            let mut got = Guarded::new(n, n + 3);
            k.copy(&x, got.get_mut()).unwrap();
            assert_same(&ctx("copy", name, n), &got.checked("copy"), &x);
        }
    }
}

#[test]
fn add_bias_every_shape() {
    let mut rng = Rng::new(3);
    for (name, k) in simd_kernels() {
        for cols in [1, 3, 7, 8, 9, 16, 17, 33, 67] {
            for rows in [0, 1, 2, 5] {
                let x = data(&mut rng, rows * cols, false);
                let bias = data(&mut rng, cols, false);
                let mut want = x.clone();
                scalar().add_bias(&bias, &mut want).unwrap();
                let mut got = Guarded::from(&x, cols);
                k.add_bias(&bias, got.get_mut()).unwrap();
                assert_same(
                    &ctx("add_bias", name, cols),
                    &got.checked("add_bias"),
                    &want,
                );
            }
        }
    }
}

#[test]
fn reductions() {
    let mut rng = Rng::new(4);
    for (name, k) in simd_kernels() {
        for n in lengths() {
            let (a, b) = (data(&mut rng, n, false), data(&mut rng, n, false));
            let (ga, gb) = (Guarded::from(&a, n), Guarded::from(&b, n + 1));
            let (a, b) = (ga.get(), gb.get());
            // Different summation order: allow n·eps relative to Σ|terms|.
            let tol = |terms: f32| 2.0 * (n as f32 + 1.0) * f32::EPSILON * terms;
            let abs_sum: f32 = a.iter().map(|v| v.abs()).sum();
            let want = scalar().sum(a);
            assert!(
                (k.sum(a) - want).abs() <= tol(abs_sum),
                "{}",
                ctx("sum", name, n)
            );
            let want = scalar().sum_squares(a);
            assert!(
                (k.sum_squares(a) - want).abs() <= tol(want),
                "{}",
                ctx("sum_squares", name, n)
            );
            let abs_dot: f32 = a.iter().zip(b).map(|(x, y)| (x * y).abs()).sum();
            let want = scalar().dot(a, b).unwrap();
            assert!(
                (k.dot(a, b).unwrap() - want).abs() <= tol(abs_dot),
                "{}",
                ctx("dot", name, n)
            );
            assert_eq!(k.max(a), scalar().max(a), "{}", ctx("max", name, n));
        }
    }
}

/// Sums, dot products and sums of squares meeting NaN and infinities give
/// the scalar reference's NaN or infinity. The class does not depend on the
/// order of the additions (inf + finite = inf, inf − inf = NaN, and nothing
/// here overflows), so it must match exactly.
#[test]
fn reductions_with_special_values() {
    let mut rng = Rng::new(12);
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    for (name, k) in simd_kernels() {
        for n in lengths().filter(|&n| n > 0) {
            // The first element, the last (a tail lane) and the middle.
            let places = [0, n - 1, n / 2];
            for (p, q) in places.into_iter().flat_map(|p| places.map(|q| (p, q))) {
                // (a[p], a[q], b[p]); a[q] (only if q ≠ p) and b[p] unchanged
                // where None.
                let cases = [
                    (nan, None, None),
                    (inf, None, None),
                    (-inf, None, None),
                    (inf, Some(-inf), None), // inf − inf
                    (inf, Some(inf), None),
                    (inf, None, Some(0.0)), // inf · 0 in the dot product
                    (-inf, Some(2.0), Some(nan)),
                ];
                for (case, (ap, aq, bp)) in cases.into_iter().enumerate() {
                    let (mut a, mut b) = (rng.vec(n, -4.0, 4.0), rng.vec(n, -4.0, 4.0));
                    a[p] = ap;
                    if let Some(v) = aq.filter(|_| q != p) {
                        a[q] = v;
                    }
                    if let Some(v) = bp {
                        b[p] = v;
                    }
                    let (ga, gb) = (Guarded::from(&a, n + case), Guarded::from(&b, n + 1));
                    let (a, b) = (ga.get(), gb.get());
                    let what = |op| ctx(&format!("{op} case {case} at {p},{q}"), name, n);
                    let results = [
                        ("sum", scalar().sum(a), k.sum(a)),
                        ("sum_squares", scalar().sum_squares(a), k.sum_squares(a)),
                        ("dot", scalar().dot(a, b).unwrap(), k.dot(a, b).unwrap()),
                    ];
                    for (op, want, got) in results {
                        // Every case puts a non-finite value into every result.
                        assert!(!want.is_finite(), "{}: scalar gave {want}", what(op));
                        assert_close(&what(op), &[got], &[want], 0.0, 0.0);
                    }
                }
            }
        }
    }
}

#[test]
fn max_ignores_nan_and_sees_infinities() {
    for (name, k) in simd_kernels() {
        for n in lengths().filter(|&n| n > 0) {
            let mut x: Vec<f32> = (0..n).map(|i| i as f32).collect();
            x[n / 2] = f32::NAN;
            let want = scalar().max(&x);
            assert_eq!(k.max(&x), want, "{}", ctx("max with NaN", name, n));
            x[0] = f32::INFINITY;
            assert_eq!(k.max(&x), f32::INFINITY, "{}", ctx("max with inf", name, n));
        }
        assert_eq!(k.max(&[]), f32::NEG_INFINITY);
        assert_eq!(k.max(&[f32::NAN; 20]), f32::NEG_INFINITY);
    }
}

#[test]
fn softmax_rows_all_masks() {
    let mut rng = Rng::new(5);
    for (name, k) in simd_kernels() {
        for cols in [
            1, 2, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 67, 127, 128, 129, 257,
        ] {
            let rows = 5;
            let x = rng.vec(rows * cols, -30.0, 30.0);
            let lens: Vec<usize> = (0..rows).map(|r| (r * 7) % (cols + 1)).collect();
            for valid in [
                ValidLen::All,
                ValidLen::Causal { offset: 2 },
                ValidLen::PerRow(&lens),
            ] {
                let mut want = x.clone();
                scalar().softmax_rows(&mut want, cols, valid).unwrap();
                let mut got = Guarded::from(&x, cols);
                k.softmax_rows(got.get_mut(), cols, valid).unwrap();
                let what = ctx("softmax", name, cols);
                assert_close(&what, &got.checked(&what), &want, 2e-6, 1e-9);
            }
        }
    }
}

#[test]
fn softmax_backward_rows_all_masks() {
    let mut rng = Rng::new(6);
    for (name, k) in simd_kernels() {
        for cols in [
            1, 2, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 67, 127, 128, 129, 257,
        ] {
            let rows = 5;
            let mut probs = rng.vec(rows * cols, -3.0, 3.0);
            scalar()
                .softmax_rows(&mut probs, cols, ValidLen::All)
                .unwrap();
            let g = rng.vec(rows * cols, -2.0, 2.0);
            let lens: Vec<usize> = (0..rows).map(|r| (r * 7) % (cols + 1)).collect();
            for valid in [
                ValidLen::All,
                ValidLen::Causal { offset: 1 },
                ValidLen::PerRow(&lens),
            ] {
                let mut want = g.clone();
                scalar()
                    .softmax_backward_rows(&probs, &mut want, cols, valid)
                    .unwrap();
                let mut got = Guarded::from(&g, cols);
                let p = Guarded::from(&probs, cols + 1);
                k.softmax_backward_rows(p.get(), got.get_mut(), cols, valid)
                    .unwrap();
                let what = ctx("softmax backward", name, cols);
                assert_close(&what, &got.checked(&what), &want, 1e-5, 1e-7);
            }
        }
    }
}

#[test]
fn softmax_special_values() {
    for (name, k) in simd_kernels() {
        let cols = 19;
        let mut x = std::vec![0.5; 4 * cols];
        x[3] = f32::NEG_INFINITY; // masked score: probability 0
        x[cols + 4] = f32::NAN; // poisons its row
        x[2 * cols + 5] = f32::INFINITY; // inf - inf: NaN row
        x[3 * cols + 6] = -1e30; // huge negative: underflows to 0

        // Valid prefixes that end inside a vector, past each special value.
        let lens = [10, 11, 17, 18];
        for valid in [ValidLen::All, ValidLen::PerRow(&lens)] {
            let mut want = x.clone();
            scalar().softmax_rows(&mut want, cols, valid).unwrap();
            let mut got = x.clone();
            k.softmax_rows(&mut got, cols, valid).unwrap();
            let what = ctx(&format!("softmax specials {valid:?}"), name, cols);
            assert_close(&what, &got, &want, 2e-6, 0.0);
            assert_eq!(got[3], 0.0);
            let len = |r: usize| match valid {
                ValidLen::PerRow(lens) => lens[r],
                _ => cols,
            };
            assert!(got[cols..cols + len(1)].iter().all(|v| v.is_nan()));
            assert_eq!(got[3 * cols + 6], 0.0);
            for (r, row) in got.chunks_exact(cols).enumerate() {
                // Past the prefix, zeros even in a NaN row.
                assert!(row[len(r)..].iter().all(|&v| v == 0.0), "{what}: row {r}");
            }
        }
    }
}

/// Layer norm forward (eps 1e-5) into NaN-prefilled, guarded outputs, so
/// that every value and statistic must be written and nothing past them:
/// `(out, mean, rstd)`.
fn guarded_layer_norm(
    k: &Kernels,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (cols, rows) = (gamma.len(), x.len() / gamma.len());
    let mut out = Guarded::new(rows * cols, cols);
    let (mut mean, mut rstd) = (Guarded::new(rows, 1), Guarded::new(rows, 2));
    k.layer_norm_forward(
        x,
        gamma,
        beta,
        1e-5,
        out.get_mut(),
        mean.get_mut(),
        rstd.get_mut(),
    )
    .unwrap();
    (
        out.checked("layer_norm out"),
        mean.checked("layer_norm mean"),
        rstd.checked("layer_norm rstd"),
    )
}

#[test]
fn layer_norm_forward_and_backward() {
    let mut rng = Rng::new(6);
    for (name, k) in simd_kernels() {
        for cols in [1, 2, 7, 8, 9, 16, 17, 33, 67, 384] {
            let rows = 3;
            // An offset mean checks the two-pass variance.
            let x = rng.vec(rows * cols, 5.0, 9.0);
            let (gamma, beta) = (rng.vec(cols, -2.0, 2.0), rng.vec(cols, -1.0, 1.0));
            let want = guarded_layer_norm(&scalar(), &x, &gamma, &beta);
            let got = guarded_layer_norm(&k, Guarded::from(&x, cols + 1).get(), &gamma, &beta);
            let what = ctx("layer_norm_forward", name, cols);
            assert_close(&what, &got.0, &want.0, 1e-5, 1e-5);
            assert_close(&what, &got.1, &want.1, 1e-6, 0.0);
            assert_close(&what, &got.2, &want.2, 1e-4, 0.0);

            let dout = rng.vec(rows * cols, -1.0, 1.0);
            let start = rng.vec(rows * cols + 2 * cols, -1.0, 1.0); // dx, dgamma, dbeta accumulate
            let backward = |k: &Kernels| {
                let (mut dx, mut dg, mut db) = (
                    Guarded::from(&start[..rows * cols], 1),
                    Guarded::from(&start[rows * cols..rows * cols + cols], 2),
                    Guarded::from(&start[rows * cols + cols..], 3),
                );
                k.layer_norm_backward(
                    &x,
                    &gamma,
                    &want.1,
                    &want.2,
                    &dout,
                    dx.get_mut(),
                    dg.get_mut(),
                    db.get_mut(),
                )
                .unwrap();
                [dx.checked("dx"), dg.checked("dgamma"), db.checked("dbeta")]
            };
            let (want_grads, got_grads) = (backward(&scalar()), backward(&k));
            let what = ctx("layer_norm_backward", name, cols);
            for (g, w) in got_grads.iter().zip(&want_grads) {
                assert_close(&what, g, w, 1e-4, 1e-4);
            }
        }
    }
}

#[test]
fn gelu_exp_tanh_with_special_values() {
    let mut rng = Rng::new(7);
    let specials = [
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-7,
        0.5,
        0.625,
        -0.625,
        3.0,
        9.0,
        9.02,
        -9.02,
        20.0,
        -20.0,
        88.0,
        88.8,
        -87.0,
        -88.0,
        -103.0,
        -110.0,
        2e19,
        -2e19,
        4e19,
        1e30,
        -1e30,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MIN_POSITIVE,
        1e-40,
    ];
    for (name, k) in simd_kernels() {
        for n in lengths() {
            let mut x = rng.vec(n, -12.0, 12.0);
            for (i, &s) in specials.iter().enumerate().filter(|&(i, _)| i < n / 2) {
                x[2 * i] = s;
            }
            let gx = Guarded::from(&x, n);
            type Unary = fn(&Kernels, &[f32], &mut [f32]) -> Result<(), crate::KernelError>;
            let unary: [(&str, Unary, f32, f32); 3] = [
                ("gelu_forward", Kernels::gelu_forward, 1e-5, 1e-6),
                ("exp", Kernels::exp, 3e-7, 0.0),
                ("tanh", Kernels::tanh, 3e-7, 0.0),
            ];
            for (op_name, op, rel, abs) in unary {
                let mut want = std::vec![0.0; n];
                op(&scalar(), &x, &mut want).unwrap();
                let mut got = Guarded::new(n, n + 1);
                op(&k, gx.get(), got.get_mut()).unwrap();
                let what = ctx(op_name, name, n);
                assert_close(&what, &got.checked(&what), &want, rel, abs);
            }

            let dout = rng.vec(n, -1.0, 1.0);
            let dx0 = rng.vec(n, -1.0, 1.0);
            let mut want = dx0.clone();
            scalar().gelu_backward(&x, &dout, &mut want).unwrap();
            let mut got = Guarded::from(&dx0, n + 2);
            k.gelu_backward(gx.get(), &dout, got.get_mut()).unwrap();
            let what = ctx("gelu_backward", name, n);
            assert_close(&what, &got.checked(&what), &want, 2e-5, 2e-6);

            // Overwriting: against the scalar reference from NaN, and the
            // same bits as this backend's gelu_backward into zeros.
            let mut want = std::vec![f32::NAN; n];
            scalar().gelu_backward_into(&x, &dout, &mut want).unwrap();
            let mut got = Guarded::new(n, n + 3);
            k.gelu_backward_into(gx.get(), &dout, got.get_mut())
                .unwrap();
            let what = ctx("gelu_backward_into", name, n);
            let got = got.checked(&what);
            assert_close(&what, &got, &want, 2e-5, 2e-6);
            let mut added = std::vec![0.0; n];
            k.gelu_backward(&x, &dout, &mut added).unwrap();
            assert_same(&what, &got, &added);
        }
    }
    // The scalar reference too.
    let (x, dout) = (rng.vec(67, -12.0, 12.0), rng.vec(67, -1.0, 1.0));
    let mut fresh = std::vec![f32::NAN; 67];
    scalar().gelu_backward_into(&x, &dout, &mut fresh).unwrap();
    let mut added = std::vec![0.0; 67];
    scalar().gelu_backward(&x, &dout, &mut added).unwrap();
    assert_same("scalar gelu_backward_into", &fresh, &added);
}

/// The element-wise loops that evaluate several vectors per step give each
/// element the result it gets alone: the blocks never mix lanes.
#[test]
fn exp_and_gelu_give_each_element_its_own_result() {
    let mut rng = Rng::new(11);
    let n = 1000;
    let x = rng.vec(n, -12.0, 12.0);
    let dout = rng.vec(n, -1.0, 1.0);
    for (name, k) in simd_kernels() {
        type Unary = fn(&Kernels, &[f32], &mut [f32]) -> Result<(), crate::KernelError>;
        for (op_name, op) in [
            ("exp", Kernels::exp as Unary),
            ("gelu_forward", Kernels::gelu_forward),
        ] {
            let mut whole = std::vec![0.0; n];
            op(&k, &x, &mut whole).unwrap();
            for (i, &w) in whole.iter().enumerate() {
                let mut alone = [0.0];
                op(&k, &x[i..=i], &mut alone).unwrap();
                assert_eq!(
                    w.to_bits(),
                    alone[0].to_bits(),
                    "{op_name} on {name}, element {i}"
                );
            }
        }
        let mut whole = std::vec![0.0; n];
        k.gelu_backward(&x, &dout, &mut whole).unwrap();
        for (i, &w) in whole.iter().enumerate() {
            let mut alone = [0.0];
            k.gelu_backward(&x[i..=i], &dout[i..=i], &mut alone)
                .unwrap();
            assert_eq!(
                w.to_bits(),
                alone[0].to_bits(),
                "gelu_backward on {name}, element {i}"
            );
        }
    }
}

#[test]
fn cross_entropy_rows() {
    let mut rng = Rng::new(8);
    for (name, k) in simd_kernels() {
        for classes in [1, 2, 7, 8, 9, 17, 63, 64, 65, 67, 127, 128, 129, 256, 257] {
            let rows = 4;
            let logits = rng.vec(rows * classes, -8.0, 8.0);
            let targets: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
            let run = |k: &Kernels, with_grad: bool| {
                let mut losses = Guarded::new(rows, 1);
                let mut d = Guarded::new(rows * classes, classes);
                let grad = if with_grad { Some(d.get_mut()) } else { None };
                k.cross_entropy(&logits, classes, &targets, losses.get_mut(), grad, 0.25)
                    .unwrap();
                (losses.checked("losses"), d.checked("dlogits"))
            };
            let want = run(&scalar(), true);
            for with_grad in [true, false] {
                let got = run(&k, with_grad);
                let what = ctx("cross_entropy", name, classes);
                assert_close(&what, &got.0, &want.0, 1e-5, 1e-5);
                if with_grad {
                    assert_close(&what, &got.1, &want.1, 1e-5, 1e-7);
                } else {
                    assert!(got.1.iter().all(|v| v.is_nan()), "{what}: dlogits written");
                }
            }
        }
    }
}

/// Logits with NaN, infinities and huge values: each loss and gradient is
/// NaN exactly where the scalar reference's is, infinite where it is (with
/// the same sign), and close to it elsewhere.
#[test]
fn cross_entropy_special_values() {
    let mut rng = Rng::new(14);
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    for (name, k) in simd_kernels() {
        for classes in [2, 7, 8, 9, 17, 33, 129] {
            // Each row one case, its target the last class; `o` is another.
            let (t, o) = (classes - 1, (classes - 1) / 2);
            let cases: [&[(usize, f32)]; 9] = [
                &[(o, nan)], // NaN poisons the row
                &[(t, nan)],
                &[(o, inf)], // max = inf: inf − inf
                &[(t, inf)],
                &[(o, -inf)],            // probability 0, finite loss
                &[(t, -inf)],            // loss +inf
                &[(o, -1e30)],           // e^(x − max) underflows to 0
                &[(t, 1e30), (o, 1e30)], // two huge maxima: finite loss
                &[],                     // a plain row between them
            ];
            let rows = cases.len() + 1;
            let mut logits = rng.vec(rows * classes, -8.0, 8.0);
            for (row, case) in logits.chunks_mut(classes).zip(cases) {
                for &(c, v) in case {
                    row[c] = v;
                }
            }
            // The last row: every logit -inf (max = -inf, -inf − -inf = NaN).
            logits[(rows - 1) * classes..].fill(-inf);
            let targets = std::vec![t as u32; rows];
            let gl = Guarded::from(&logits, classes + 1);
            let run = |k: &Kernels, with_grad: bool| {
                let mut losses = Guarded::new(rows, 2);
                let mut d = Guarded::new(rows * classes, classes);
                let grad = if with_grad { Some(d.get_mut()) } else { None };
                k.cross_entropy(gl.get(), classes, &targets, losses.get_mut(), grad, 0.5)
                    .unwrap();
                (losses.checked("losses"), d.checked("dlogits"))
            };
            let want = run(&scalar(), true);
            // The cases reach NaN, +inf and finite losses in the reference.
            assert!(want.0.iter().any(|v| v.is_nan()));
            assert!(want.0.contains(&inf));
            assert!(want.0.iter().any(|v| v.is_finite()));
            for with_grad in [true, false] {
                let got = run(&k, with_grad);
                let what = ctx("cross_entropy specials", name, classes);
                assert_close(&what, &got.0, &want.0, 1e-5, 1e-5);
                if with_grad {
                    assert_close(&what, &got.1, &want.1, 1e-5, 1e-7);
                }
            }
        }
    }
}

#[test]
fn adamw_step_matches() {
    let mut rng = Rng::new(9);
    let opt = AdamW {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    for (name, k) in simd_kernels() {
        for n in lengths() {
            let p0 = rng.vec(n, -1.0, 1.0);
            let m0 = rng.vec(n, -0.1, 0.1);
            let v0 = rng.vec(n, 0.0, 0.01);
            let g = rng.vec(n, -1.0, 1.0);
            let run = |k: &Kernels| {
                let (mut p, mut m, mut v) = (
                    Guarded::from(&p0, 1),
                    Guarded::from(&m0, 2),
                    Guarded::from(&v0, 3),
                );
                k.adamw_step(&opt, 7, 0.5, p.get_mut(), &g, m.get_mut(), v.get_mut())
                    .unwrap();
                [p.checked("params"), m.checked("m"), v.checked("v")]
            };
            let (want, got) = (run(&scalar()), run(&k));
            for (g, w) in got.iter().zip(&want) {
                assert_close(&ctx("adamw", name, n), g, w, 1e-5, 1e-7);
            }
        }
    }
}

/// `f32_to_bf16` reads its source from every 4-byte phase of a 32-byte
/// line (so from unaligned addresses at every vector width) into a
/// NaN-prefilled, guarded destination, as the scalar reference does, bit
/// for bit.
#[test]
fn f32_to_bf16_from_unaligned_source() {
    let mut rng = Rng::new(15);
    let specials = [
        0.0,
        -0.0,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7F80_0001), // signalling NaN
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x3F80_8000), // a tie, to even (down)
        f32::from_bits(0x3F81_8000), // a tie, to even (up)
        f32::from_bits(0x7F7F_FFFF), // rounds to infinity
        f32::from_bits(0x0000_8001), // subnormal
    ];
    const GUARD: u16 = 0xDEAD;
    for (name, k) in simd_kernels() {
        for n in lengths() {
            let src: Vec<f32> = (0..n)
                .map(|i| match i % 3 {
                    0 => specials[(i / 3) % specials.len()],
                    _ => rng.uniform(-3.0, 3.0),
                })
                .collect();
            let mut want = std::vec![Bf16::default(); n];
            scalar().f32_to_bf16(&src, &mut want).unwrap();
            for phase in 0..8 {
                let mut buf = std::vec![0.0f32; n + 16];
                let base = buf.as_ptr() as usize / 4;
                let start = (phase + 8 - base % 8) % 8; // (address / 4) % 8 == phase
                buf[start..start + n].copy_from_slice(&src);
                let mut dst = std::vec![Bf16::from_bits(GUARD); n + 8];
                dst[3..3 + n].fill(Bf16::from_bits(0x7FC1));
                k.f32_to_bf16(&buf[start..start + n], &mut dst[3..3 + n])
                    .unwrap();
                let what = ctx(&format!("f32_to_bf16 phase {phase}"), name, n);
                let guards = dst[..3].iter().chain(&dst[3 + n..]);
                assert!(
                    guards.into_iter().all(|b| b.to_bits() == GUARD),
                    "{what}: wrote outside"
                );
                assert_eq!(&dst[3..3 + n], &want[..], "{what}");
            }
        }
    }
}

#[test]
fn transpose_every_shape_and_stride() {
    let mut rng = Rng::new(10);
    let sizes = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 67];
    for (name, k) in simd_kernels() {
        for rows in sizes {
            for cols in sizes {
                let (src_stride, dst_stride) = (cols + rows % 3, rows + cols % 5);
                let src = rng.vec(rows * src_stride, -1.0, 1.0);
                // The view's elements start NaN, the gaps between its
                // rows 7.0: every element is written, no gap is.
                let mut start = std::vec![7.0; cols * dst_stride];
                for c in 0..cols {
                    start[c * dst_stride..][..rows].fill(f32::NAN);
                }
                let run = |k: &Kernels| {
                    let mut dst = Guarded::from(&start, rows);
                    k.transpose(rows, cols, &src, src_stride, dst.get_mut(), dst_stride)
                        .unwrap();
                    dst.checked("transpose")
                };
                let (want, got) = (run(&scalar()), run(&k));
                let what = ctx("transpose", name, rows * 1000 + cols);
                assert_same(&what, &got, &want);
                for c in 0..cols {
                    let row = &got[c * dst_stride..][..dst_stride];
                    for (r, &x) in row.iter().enumerate() {
                        let expected = if r < rows {
                            src[r * src_stride + c]
                        } else {
                            7.0
                        };
                        assert_eq!(x.to_bits(), expected.to_bits(), "{what}: [{c}][{r}]");
                    }
                }
            }
        }
    }
}

#[test]
fn forcing_each_backend_agrees() {
    let mut rng = Rng::new(11);
    let x = rng.vec(1000, -3.0, 3.0);
    let reference = {
        let mut out = std::vec![0.0; 1000];
        scalar().gelu_forward(&x, &mut out).unwrap();
        out
    };
    for backend in Backend::ALL.into_iter().filter(|b| b.is_supported()) {
        let k = Kernels::new(backend).unwrap();
        assert_eq!(k.backend(), backend);
        let mut out = std::vec![0.0; 1000];
        k.gelu_forward(&x, &mut out).unwrap();
        assert_close(backend.name(), &out, &reference, 1e-5, 1e-6);
    }
}

/// GELU into a bf16 output holds the f32 output rounded once, on every
/// backend (scalar included) and length (every tail of both vector
/// widths), from an unaligned start, NaN-prefilled, with special values
/// (±0, ±inf, NaN, subnormals, values far out on both sides); nothing past
/// the slice is written.
#[test]
fn gelu_into_bf16_is_the_f32_gelu_rounded() {
    let mut rng = Rng::new(29);
    let special = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-40,
        -1e-40,
        -30.0,
        30.0,
    ];
    let mut all = std::vec![("scalar", scalar())];
    all.extend(simd_kernels());
    for (name, k) in all {
        for n in lengths() {
            let mut x = rng.vec(n, -12.0, 12.0);
            for (x, &s) in x.iter_mut().zip(&special) {
                *x = s;
            }
            let mut wide = std::vec![0.0; n];
            k.gelu_forward(&x, &mut wide).unwrap();
            let nan = crate::Bf16::from_f32(f32::NAN);
            let mut buf = std::vec![nan; n + 4];
            let out = &mut buf[1..n + 1];
            k.gelu_forward(&x, out).unwrap();
            for (i, (got, &want)) in out.iter().zip(&wide).enumerate() {
                let want = crate::Bf16::from_f32(want);
                assert_eq!(got.to_bits(), want.to_bits(), "{name}, n={n}, element {i}");
            }
            let guards = buf[..1].iter().chain(&buf[n + 1..]);
            assert!(
                guards.clone().all(|x| x.to_bits() == nan.to_bits()),
                "{name}, n={n}"
            );
        }
    }
}

/// GELU and its gradients from bf16 inputs (a product's output kept in
/// bf16) are those of the values widened to f32, bit for bit, in every
/// pairing of input types, on every backend and length (every tail of both
/// vector widths), from unaligned starts, with special values.
#[test]
fn gelu_from_bf16_inputs_is_gelu_of_the_widened_values() {
    use crate::Bf16;
    let mut rng = Rng::new(37);
    let special = [0.0, -0.0, f32::INFINITY, f32::NAN, 1e-40, -30.0, 30.0];
    let mut all = std::vec![("scalar", scalar())];
    all.extend(simd_kernels());
    let bf16s = |v: &[f32]| -> Vec<Bf16> {
        // One value of room in front: the slices start off their vectors' alignment.
        let mut buf = std::vec![Bf16::default(); v.len() + 1];
        for (b, &v) in buf[1..].iter_mut().zip(v) {
            *b = Bf16::from_f32(v);
        }
        buf
    };
    for (name, k) in all {
        for n in lengths() {
            let mut x = rng.vec(n, -12.0, 12.0);
            x.iter_mut().zip(&special).for_each(|(x, &s)| *x = s);
            let dout = rng.vec(n, -2.0, 2.0);
            let (xb, db) = (bf16s(&x), bf16s(&dout));
            let (xb, db) = (&xb[1..], &db[1..]);
            let xw: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
            let dw: Vec<f32> = db.iter().map(|v| v.to_f32()).collect();
            let what = format!("{name}, n={n}");

            let mut want = std::vec![0.0; n];
            k.gelu_forward(&xw, &mut want).unwrap();
            let mut got = std::vec![f32::NAN; n];
            k.gelu_forward(xb, &mut got).unwrap();
            assert_same(&format!("{what} forward"), &got, &want);
            let mut got16 = std::vec![Bf16::from_f32(f32::NAN); n];
            k.gelu_forward(xb, &mut got16).unwrap();
            for (i, (g, &w)) in got16.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    Bf16::from_f32(w).to_bits(),
                    "{what} element {i}"
                );
            }

            let start = rng.vec(n, -1.0, 1.0);
            let (mut want_add, mut want_into) = (start.clone(), std::vec![0.0; n]);
            k.gelu_backward(&xw, &dw, &mut want_add).unwrap();
            k.gelu_backward_into(&xw, &dw, &mut want_into).unwrap();
            let check =
                |pair: &str, add: &mut dyn FnMut(&mut [f32]), into: &mut dyn FnMut(&mut [f32])| {
                    let mut got = start.clone();
                    add(&mut got);
                    assert_same(&format!("{what} backward {pair}"), &got, &want_add);
                    let mut got = std::vec![f32::NAN; n];
                    into(&mut got);
                    assert_same(&format!("{what} backward_into {pair}"), &got, &want_into);
                };
            check(
                "bf16 x",
                &mut |dx| k.gelu_backward(xb, &dw, dx).unwrap(),
                &mut |dx| k.gelu_backward_into(xb, &dw, dx).unwrap(),
            );
            check(
                "bf16 dout",
                &mut |dx| k.gelu_backward(&xw, db, dx).unwrap(),
                &mut |dx| k.gelu_backward_into(&xw, db, dx).unwrap(),
            );
            check(
                "both bf16",
                &mut |dx| k.gelu_backward(xb, db, dx).unwrap(),
                &mut |dx| k.gelu_backward_into(xb, db, dx).unwrap(),
            );
        }
    }
}

/// A NaN or an infinity in a row makes that row's output and `rstd` NaN on
/// every backend (its mean NaN or infinite), as the scalar reference does,
/// and leaves the other rows as they would be alone.
#[test]
fn layer_norm_special_values() {
    let mut rng = Rng::new(16);
    let all = [("scalar", scalar())].into_iter().chain(simd_kernels());
    for (name, k) in all {
        for cols in [1, 7, 16, 17, 33] {
            let (gamma, beta) = (rng.vec(cols, -2.0, 2.0), rng.vec(cols, -1.0, 1.0));
            let plain = rng.vec(cols, -3.0, 3.0);
            for special in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = plain.repeat(2);
                x[cols / 2] = special;
                // Prefilled with 0: the NaNs must be written, not left.
                let (mut out, mut mean, mut rstd) = (std::vec![0.0; 2 * cols], [0.0; 2], [0.0; 2]);
                k.layer_norm_forward(&x, &gamma, &beta, 1e-5, &mut out, &mut mean, &mut rstd)
                    .unwrap();
                let what = format!("{name}, {cols} columns, {special}");
                assert!(
                    out[..cols].iter().all(|v| v.is_nan()),
                    "{what}: {:?}",
                    &out[..cols]
                );
                assert!(
                    rstd[0].is_nan() && !mean[0].is_finite(),
                    "{what}: {} {}",
                    mean[0],
                    rstd[0]
                );
                let (alone, m, r) = guarded_layer_norm(&k, &plain, &gamma, &beta);
                assert_eq!(
                    (&out[cols..], mean[1], rstd[1]),
                    (&alone[..], m[0], r[0]),
                    "{what}"
                );
            }
        }
    }
}

/// Layer norm into a bf16 output holds the f32 output rounded once, with
/// the same row statistics, on every backend and row width (every tail of
/// both vector widths), NaN-prefilled; nothing past the rows is written.
#[test]
fn layer_norm_into_bf16_is_the_f32_layer_norm_rounded() {
    let mut rng = Rng::new(31);
    let mut all = std::vec![("scalar", scalar())];
    all.extend(simd_kernels());
    let nan = crate::Bf16::from_f32(f32::NAN);
    for (name, k) in all {
        for cols in (1..=40).chain([67, 384]) {
            let rows = 3;
            let x = rng.vec(rows * cols, -3.0, 5.0);
            let (gamma, beta) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -0.5, 0.5));
            let mut wide = std::vec![0.0; rows * cols];
            let (mut mean, mut rstd) = (std::vec![0.0; rows], std::vec![0.0; rows]);
            k.layer_norm_forward(&x, &gamma, &beta, 1e-5, &mut wide, &mut mean, &mut rstd)
                .unwrap();
            let mut buf = std::vec![nan; rows * cols + 2];
            let (mut mean16, mut rstd16) = (std::vec![0.0; rows], std::vec![0.0; rows]);
            let out = &mut buf[1..rows * cols + 1];
            k.layer_norm_forward(&x, &gamma, &beta, 1e-5, out, &mut mean16, &mut rstd16)
                .unwrap();
            let what = format!("{name}, {cols} columns");
            for (i, (got, &want)) in out.iter().zip(&wide).enumerate() {
                let want = crate::Bf16::from_f32(want);
                assert_eq!(got.to_bits(), want.to_bits(), "{what}, element {i}");
            }
            assert_same(&what, &mean16, &mean);
            assert_same(&what, &rstd16, &rstd);
            let mut guards = [buf[0], buf[rows * cols + 1]].into_iter();
            assert!(guards.all(|x| x.to_bits() == nan.to_bits()), "{what}");
        }
    }
}
