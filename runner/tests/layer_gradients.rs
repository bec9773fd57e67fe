//! Each layer's backward in `runner::model::layers` against central
//! differences of its forward, on every kernel backend this CPU has (the
//! scalar reference and the best SIMD one among them).
//!
//! Per layer: seeded random inputs and parameters, the objective
//! `L = Σ out ⊙ G` for a fixed random `G` (the loss itself for the
//! cross-entropy), and the backward run with `dout = G`. Every gradient the
//! backward produces is compared with `(L(x + h) − L(x − h)) / 2h` at each
//! of its elements (for the large GELU input, a sample, and every element
//! through its element-wise form) and along a random direction over the
//! whole tensor. `L` is summed in f64 from the
//! f32 outputs, so outputs the step does not touch cancel exactly and the
//! only noise is the f32 rounding of the outputs it does touch.
//!
//! Shapes are awkward on purpose: odd `b·t`, `t` not a multiple of the SIMD
//! width, channels like 12 and 20, and more rows than one piece of
//! row-wise work (64), so that per-piece partial sums are exercised.
//! Forward outputs start as NaN, so an element a forward leaves unwritten
//! poisons `L` and fails the check.

mod common;
use common::{backends, normal};

use kernels::{Backend, Bf16, Kernels};
use runner::model::layers::{
    cross_entropy, encoder_backward, encoder_forward, gelu_backward, gelu_forward,
    layer_norm_backward, layer_norm_forward, lm_head_backward, lm_head_forward, matmul_backward,
    matmul_forward, Activation, Weight,
};
use runner::model::LAYER_NORM_EPS;
use runner::model::{attention_backward, attention_forward, Attention, Context, Precision};
use runner::rng::Rng;

/// `Σ out ⊙ g`, in f64 so the objective adds no rounding of its own.
fn weighted_sum(out: &[f32], g: &[f32]) -> f64 {
    assert_eq!(out.len(), g.len());
    out.iter()
        .zip(g)
        .map(|(&o, &g)| f64::from(o) * f64::from(g))
        .sum()
}

/// A central-difference step and the error allowed at it.
#[derive(Debug, Clone, Copy)]
struct Step {
    h: f32,
    /// Allowed `|analytic − numeric|` per element, relative to
    /// `|analytic| + FLOOR · max |analytic|` (see [`check_gradients`]).
    tol: f64,
}

/// For linear layers the differences are exact up to f32 rounding, so a
/// large step makes that rounding small next to the change in `L`.
/// Observed errors: ≤ 4e-5.
const LINEAR: Step = Step { h: 0.25, tol: 1e-3 };

/// For smooth non-linear layers: large enough that the f32 rounding of
/// the touched outputs stays ~1e-3 of the change in `L`, small enough that
/// the O(h²) truncation does too. Observed errors: ≤ 2.5e-3.
const SMOOTH: Step = Step { h: 3e-2, tol: 1e-2 };

/// Elements whose gradient is far below the tensor's largest are compared
/// against this fraction of the largest, since the rounding noise of `L`
/// scales with the outputs, not with that one element's gradient.
const FLOOR: f64 = 1e-2;

/// Tensors larger than this are checked at a sample of elements (the
/// largest gradients, both ends and random ones) rather than at all.
const ALL_ELEMENTS_UP_TO: usize = 8192;

/// Checks each `grads[i]` (the backward's gradient of `objective` with
/// respect to `inputs[i]`) against central differences of `objective`.
fn check_gradients(
    what: &str,
    inputs: &mut [Vec<f32>],
    grads: &[(&str, &[f32])],
    step: Step,
    objective: &mut dyn FnMut(&[Vec<f32>]) -> f64,
) {
    assert_eq!(inputs.len(), grads.len(), "{what}: one gradient per input");
    let mut rng = Rng::new(17);
    for (i, &(name, analytic)) in grads.iter().enumerate() {
        assert_eq!(inputs[i].len(), analytic.len(), "{what} {name}");
        assert!(
            analytic.iter().all(|g| g.is_finite()),
            "{what} {name}: non-finite gradient"
        );
        let largest = analytic
            .iter()
            .fold(0.0_f64, |m, &g| m.max(f64::from(g).abs()));
        for j in elements_to_check(analytic, &mut rng) {
            let original = inputs[i][j];
            inputs[i][j] = original + step.h;
            let (up, at_up) = (objective(inputs), inputs[i][j]);
            inputs[i][j] = original - step.h;
            let (down, at_down) = (objective(inputs), inputs[i][j]);
            inputs[i][j] = original;
            // The step actually taken, after f32 rounding of x ± h.
            let numeric = (up - down) / (f64::from(at_up) - f64::from(at_down));
            assert_close(
                &format!("{what} {name}[{j}]"),
                analytic[j],
                numeric,
                step,
                largest,
            );
        }

        // Along a random direction `d`: L(x + h·d) − L(x − h·d) against
        // Σ analytic · (the displacement actually taken).
        let original = inputs[i].clone();
        let direction = normal(&mut rng, original.len(), 1.0);
        let shifted = |sign: f32| -> Vec<f32> {
            original
                .iter()
                .zip(&direction)
                .map(|(&x, &d)| x + sign * step.h * d)
                .collect()
        };
        let (plus, minus) = (shifted(1.0), shifted(-1.0));
        inputs[i].clone_from(&plus);
        let up = objective(inputs);
        inputs[i].clone_from(&minus);
        let down = objective(inputs);
        inputs[i] = original;
        let terms = || {
            analytic
                .iter()
                .zip(plus.iter().zip(&minus))
                .map(|(&a, (&p, &m))| f64::from(a) * (f64::from(p) - f64::from(m)))
        };
        let expected: f64 = terms().sum();
        let magnitude: f64 = terms().map(f64::abs).sum();
        assert!(
            (expected - (up - down)).abs() <= step.tol * magnitude,
            "{what} {name} along a random direction: backward gives {expected}, \
             finite differences {}",
            up - down
        );
    }
}

/// The element check of [`check_gradients`]: `largest` is the tensor's
/// largest gradient.
fn assert_close(what: &str, analytic: f32, numeric: f64, step: Step, largest: f64) {
    let a = f64::from(analytic);
    assert!(
        (a - numeric).abs() <= step.tol * (a.abs() + FLOOR * largest),
        "{what}: backward gives {a}, finite differences {numeric}"
    );
}

/// Every element of a small tensor; of a large one, the 8 largest
/// gradients (where a wrong value shows most), both ends and 32 at random.
fn elements_to_check(analytic: &[f32], rng: &mut Rng) -> Vec<usize> {
    let n = analytic.len();
    if n <= ALL_ELEMENTS_UP_TO {
        return (0..n).collect();
    }
    let mut by_size: Vec<usize> = (0..n).collect();
    by_size.sort_by(|&a, &b| analytic[b].abs().total_cmp(&analytic[a].abs()));
    let mut picked = by_size[..8].to_vec();
    picked.extend([0, n - 1]);
    picked.extend((0..32).map(|_| rng.below(n)));
    picked
}

#[test]
fn matmul_backward_matches_finite_differences() {
    // Output width as the QKV projection's (3c); 130 rows: two full
    // pieces of 64 and a partial one, whose bias gradients are summed
    // piece by piece.
    let (bt, c, oc) = (130, 20, 60);
    for k in backends() {
        let mut compute = Context::new(k);
        let mut rng = Rng::new(1);
        let mut inputs = vec![
            normal(&mut rng, bt * c, 1.0),
            normal(&mut rng, c * oc, 0.5),
            normal(&mut rng, oc, 0.5),
        ];
        let g = normal(&mut rng, bt * oc, 1.0);
        let mut dinp = vec![f32::NAN; bt * c];
        let (mut dw, mut dbias) = (vec![0.0; c * oc], vec![0.0; oc]);
        let [inp, w, _] = &inputs[..] else {
            unreachable!()
        };
        matmul_backward(
            &mut compute,
            &mut dinp[..],
            &mut dw,
            Some(&mut dbias),
            g.as_slice(),
            inp.as_slice(),
            w,
            bt,
            c,
            oc,
        )
        .unwrap();
        check_gradients(
            &format!("{} matmul", k.backend()),
            &mut inputs,
            &[("dinp", &dinp), ("dw", &dw), ("dbias", &dbias)],
            LINEAR,
            &mut |x| {
                let mut out = vec![f32::NAN; bt * oc];
                matmul_forward(
                    &mut compute,
                    &mut out[..],
                    x[0].as_slice(),
                    Weight::F32(&x[1]),
                    Some(&x[2]),
                    bt,
                    c,
                    oc,
                )
                .unwrap();
                weighted_sum(&out, &g)
            },
        );
    }
}

#[test]
fn lm_head_backward_matches_finite_differences() {
    let (bt, c, v) = (3 * 5, 12, 37);
    for k in backends() {
        let mut compute = Context::new(k);
        let mut rng = Rng::new(2);
        let mut inputs = vec![normal(&mut rng, bt * c, 1.0), normal(&mut rng, v * c, 0.5)];
        let g = normal(&mut rng, bt * v, 1.0);
        let (mut dx, mut dwte) = (vec![f32::NAN; bt * c], vec![0.0; v * c]);
        lm_head_backward(
            &mut compute,
            &mut dx,
            &mut dwte,
            &g,
            &inputs[0],
            &inputs[1],
            bt,
            c,
            v,
        )
        .unwrap();
        check_gradients(
            &format!("{} lm_head", k.backend()),
            &mut inputs,
            &[("dx", &dx), ("dwte", &dwte)],
            LINEAR,
            &mut |x| {
                let mut logits = vec![f32::NAN; bt * v];
                lm_head_forward(
                    &mut compute,
                    &mut logits,
                    &x[0],
                    Weight::F32(&x[1]),
                    bt,
                    c,
                    v,
                )
                .unwrap();
                weighted_sum(&logits, &g)
            },
        );
    }
}

#[test]
fn attention_backward_matches_finite_differences() {
    // (b, t, c, heads): head sizes 4 and 10, `t` 13 and 35 (over 32), and
    // 70: two query blocks of causal attention, the second a short one
    // (the masked parts of the NaN-filled buffers are never read).
    for (b, t, c, nh) in [(3, 13, 12, 3), (1, 35, 20, 2), (1, 70, 8, 2)] {
        for k in backends() {
            let mut compute = Context::new(k);
            let mut rng = Rng::new(3);
            let mut inputs = vec![normal(&mut rng, b * t * 3 * c, 1.0)];
            let g = normal(&mut rng, b * t * c, 1.0);
            let mut out = vec![f32::NAN; b * t * c];
            let mut per_head = vec![f32::NAN; b * t * 3 * c];
            attention_forward(
                &mut compute,
                &mut out[..],
                &inputs[0][..],
                c,
                nh,
                Attention::Causal {
                    b,
                    t,
                    per_head: &mut per_head,
                },
            )
            .unwrap();
            let mut dqkv = vec![f32::NAN; b * t * 3 * c];
            let mut dbias = vec![0.0; 3 * c];
            attention_backward(
                &mut compute,
                &mut dqkv[..],
                &mut dbias,
                &mut per_head,
                &g[..],
                &inputs[0][..],
                b,
                t,
                c,
                nh,
            )
            .unwrap();
            // The QKV bias gradient summed on the way: dqkv's column sums.
            for (j, &db) in dbias.iter().enumerate() {
                let sum: f64 = dqkv
                    .iter()
                    .skip(j)
                    .step_by(3 * c)
                    .map(|&d| f64::from(d))
                    .sum();
                let what = format!("{} attention dbias[{j}]", k.backend());
                assert!(
                    (f64::from(db) - sum).abs() <= 1e-4 * (1.0 + sum.abs()),
                    "{what}: {db} against {sum}"
                );
            }
            check_gradients(
                &format!("{} attention b{b} t{t} c{c} nh{nh}", k.backend()),
                &mut inputs,
                &[("dqkv", &dqkv)],
                SMOOTH,
                &mut |x| {
                    let mut out = vec![f32::NAN; b * t * c];
                    let mut per_head = vec![f32::NAN; b * t * c];
                    attention_forward(
                        &mut compute,
                        &mut out[..],
                        &x[0][..],
                        c,
                        nh,
                        Attention::Causal {
                            b,
                            t,
                            per_head: &mut per_head,
                        },
                    )
                    .unwrap();
                    weighted_sum(&out, &g)
                },
            );
        }
    }
}

#[test]
fn layer_norm_backward_matches_finite_differences_across_pieces() {
    // 130 rows: two full pieces of 64 rows and a partial one, whose
    // parameter gradients are summed piece by piece.
    let (rows, c) = (130, 20);
    for k in backends() {
        let mut compute = Context::new(k);
        let mut rng = Rng::new(4);
        // Rows with an offset, so the mean matters.
        let x: Vec<f32> = normal(&mut rng, rows * c, 1.5)
            .into_iter()
            .enumerate()
            .map(|(i, x)| x + (i / c) as f32 * 0.05 - 2.0)
            .collect();
        let gamma = normal(&mut rng, c, 0.5).iter().map(|g| 1.0 + g).collect();
        let mut inputs = vec![x, gamma, normal(&mut rng, c, 0.5)];
        let g = normal(&mut rng, rows * c, 1.0);
        let forward = |compute: &mut Context, x: &[Vec<f32>]| {
            let mut out = vec![f32::NAN; rows * c];
            let (mut mean, mut rstd) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
            layer_norm_forward(
                compute,
                &x[0],
                &x[1],
                &x[2],
                LAYER_NORM_EPS,
                &mut out[..],
                &mut mean,
                &mut rstd,
            )
            .unwrap();
            (out, mean, rstd)
        };
        let (_, mean, rstd) = forward(&mut compute, &inputs);
        let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
        layer_norm_backward(
            &mut compute,
            &inputs[0],
            &inputs[1],
            &mean,
            &rstd,
            &g,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
        )
        .unwrap();
        check_gradients(
            &format!("{} layer norm", k.backend()),
            &mut inputs,
            &[("dx", &dx), ("dgamma", &dgamma), ("dbeta", &dbeta)],
            SMOOTH,
            &mut |x| weighted_sum(&forward(&mut compute, x).0, &g),
        );
    }
}

#[test]
fn gelu_backward_matches_finite_differences() {
    // Four full pieces of 64 rows and a partial one, of a width that is no
    // multiple of a vector; inputs span the curved region and both tails.
    let (rows, oc) = (4 * 64 + 9, 131);
    let n = rows * oc;
    for k in backends() {
        let mut compute = Context::new(k);
        let mut rng = Rng::new(5);
        let mut inputs = vec![normal(&mut rng, n, 3.0)];
        let g = normal(&mut rng, n, 1.0);
        let mut dx = vec![0.0; n];
        let mut dbias = vec![0.5; oc];
        gelu_backward(
            &mut compute,
            &inputs[0][..],
            &g[..],
            &mut dx[..],
            &mut dbias,
        )
        .unwrap();
        // The bias gradient is added: the column sums of dx, on top of 0.5.
        for (j, &db) in dbias.iter().enumerate() {
            let sum: f64 = (0..rows).map(|r| f64::from(dx[r * oc + j])).sum::<f64>() + 0.5;
            let what = format!("{} gelu dbias[{j}]", k.backend());
            assert!(
                (f64::from(db) - sum).abs() <= 1e-4 * (1.0 + sum.abs()),
                "{what}: {db} against {sum}"
            );
        }
        // Element-wise, so one step of every input at once gives every
        // element's derivative: `G_j · Δgelu(x_j) / Δx_j`.
        let largest = dx.iter().fold(0.0_f64, |m, &d| m.max(f64::from(d).abs()));
        let mut stepped = |sign: f32| {
            let x: Vec<f32> = inputs[0].iter().map(|&x| x + sign * SMOOTH.h).collect();
            let mut out = vec![f32::NAN; n];
            gelu_forward(&mut compute, &x[..], &mut out[..]).unwrap();
            (x, out)
        };
        let ((x_up, up), (x_down, down)) = (stepped(1.0), stepped(-1.0));
        for j in 0..n {
            let numeric = f64::from(g[j]) * (f64::from(up[j]) - f64::from(down[j]))
                / (f64::from(x_up[j]) - f64::from(x_down[j]));
            let what = format!("{} gelu dx[{j}] (x = {})", k.backend(), inputs[0][j]);
            assert_close(&what, dx[j], numeric, SMOOTH, largest);
        }
        check_gradients(
            &format!("{} gelu", k.backend()),
            &mut inputs,
            &[("dx", &dx)],
            SMOOTH,
            &mut |x| {
                let mut out = vec![f32::NAN; n];
                gelu_forward(&mut compute, &x[0][..], &mut out[..]).unwrap();
                weighted_sum(&out, &g)
            },
        );
    }
}

#[test]
fn cross_entropy_gradient_matches_finite_differences() {
    // 131 rows over three pieces of 64; `L = scale · Σ losses`, whose
    // gradient the fused kernel writes with `grad_scale = scale`. Rows of
    // 37 classes, alone or padded to 48 (as the vocabulary is): the
    // padding is large (it would dominate a softmax that read it), its
    // loss derivative is 0, and the gradient there must be 0.
    let (rows, classes, scale) = (131, 37, 1.0 / 131.0);
    for (k, stride) in backends().into_iter().flat_map(|k| [(k, classes), (k, 48)]) {
        let mut compute = Context::new(k);
        let mut rng = Rng::new(6);
        let mut logits = normal(&mut rng, rows * stride, 2.0);
        for row in logits.chunks_exact_mut(stride) {
            row[classes..].fill(30.0);
        }
        let mut inputs = vec![logits];
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
        let mut losses = vec![f32::NAN; rows];
        let mut dlogits = vec![f32::NAN; rows * stride];
        cross_entropy(
            &mut compute,
            &inputs[0],
            classes,
            stride,
            &targets,
            &mut losses,
            Some(&mut dlogits),
            scale,
        )
        .unwrap();
        assert!(losses.iter().all(|&l| l < 20.0), "the padding was read");
        assert!(dlogits
            .chunks_exact(stride)
            .all(|row| row[classes..].iter().all(|&d| d == 0.0)));
        // The forward-only path, differentiated numerically, must agree
        // with the fused path's gradient.
        check_gradients(
            &format!("{} cross-entropy, rows of {stride}", k.backend()),
            &mut inputs,
            &[("dlogits", &dlogits)],
            SMOOTH,
            &mut |x| {
                let mut losses = vec![f32::NAN; rows];
                cross_entropy(
                    &mut compute,
                    &x[0],
                    classes,
                    stride,
                    &targets,
                    &mut losses,
                    None,
                    1.0,
                )
                .unwrap();
                f64::from(scale) * losses.iter().map(|&l| f64::from(l)).sum::<f64>()
            },
        );
    }
}

#[test]
fn encoder_backward_matches_finite_differences() {
    // A vocabulary of 11 for 21 positions, so tokens repeat and their
    // gradients add up; 9 positions in `wpe` for `t = 7`, so the last two
    // rows must get none.
    let (b, t, c, vocab, block) = (3, 7, 12, 11, 9);
    for k in backends() {
        let mut rng = Rng::new(7);
        let mut inputs = vec![
            normal(&mut rng, vocab * c, 1.0),
            normal(&mut rng, block * c, 1.0),
        ];
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
        let g = normal(&mut rng, b * t * c, 1.0);
        let (mut dwte, mut dwpe) = (vec![0.0; vocab * c], vec![0.0; block * c]);
        encoder_backward(&Context::new(k), &mut dwte, &mut dwpe, &g, &tokens, t, c).unwrap();
        assert!(dwpe[t * c..].iter().all(|&d| d == 0.0));
        check_gradients(
            &format!("{} encoder", k.backend()),
            &mut inputs,
            &[("dwte", &dwte), ("dwpe", &dwpe)],
            LINEAR,
            &mut |x| {
                let mut out = vec![f32::NAN; b * t * c];
                encoder_forward(&Context::new(k), &mut out, &tokens, &x[0], &x[1], t, 0, c)
                    .unwrap();
                weighted_sum(&out, &g)
            },
        );
    }
}

/// `twice` is `2 · once`, up to the rounding of adding partial sums to a
/// non-zero gradient (layer norm adds its pieces one by one).
fn assert_doubled(what: &str, once: &[f32], twice: &[f32]) {
    assert_eq!(once.len(), twice.len());
    assert!(once.iter().any(|&g| g != 0.0), "{what}: no gradient at all");
    for (j, (&o, &t)) in once.iter().zip(twice).enumerate() {
        assert!(
            (t - 2.0 * o).abs() <= 1e-5 * (1.0 + o.abs()),
            "{what}[{j}]: {t} after two backward passes, {o} after one"
        );
    }
}

/// `overwritten` (pre-filled with NaN) equals `fresh` (pre-filled with 0).
fn assert_overwritten(what: &str, fresh: &[f32], overwritten: &[f32]) {
    assert_eq!(
        fresh, overwritten,
        "{what} depends on its previous contents"
    );
}

#[test]
fn backward_passes_accumulate_parameter_gradients_and_overwrite_input_gradients() {
    let (b, t, c, nh, v) = (3, 5, 12, 3, 11);
    let bt = b * t;
    for k in backends() {
        let what = |layer: &str| format!("{} {layer}", k.backend());
        let mut compute = Context::new(k);
        let mut rng = Rng::new(8);
        let x = normal(&mut rng, bt * c, 1.0);
        let g = normal(&mut rng, bt * c, 1.0);

        // matmul: dw and dbias accumulate, dinp is overwritten.
        let w = normal(&mut rng, c * c, 0.5);
        let mut matmul = |dinp_fill: f32, passes: usize| {
            let mut dinp = vec![dinp_fill; bt * c];
            let (mut dw, mut dbias) = (vec![0.0; c * c], vec![0.0; c]);
            for _ in 0..passes {
                matmul_backward(
                    &mut compute,
                    &mut dinp[..],
                    &mut dw,
                    Some(&mut dbias),
                    g.as_slice(),
                    x.as_slice(),
                    &w,
                    bt,
                    c,
                    c,
                )
                .unwrap();
            }
            (dinp, dw, dbias)
        };
        let (dinp, dw, dbias) = matmul(0.0, 1);
        let (dinp_nan, dw2, dbias2) = matmul(f32::NAN, 2);
        assert_doubled(&what("matmul dw"), &dw, &dw2);
        assert_doubled(&what("matmul dbias"), &dbias, &dbias2);
        assert_overwritten(&what("matmul dinp"), &dinp, &dinp_nan);

        // LM head: dwte accumulates, dx is overwritten.
        let wte = normal(&mut rng, v * c, 0.5);
        let dlogits = normal(&mut rng, bt * v, 1.0);
        let mut lm_head = |dx_fill: f32, passes: usize| {
            let (mut dx, mut dwte) = (vec![dx_fill; bt * c], vec![0.0; v * c]);
            for _ in 0..passes {
                lm_head_backward(
                    &mut compute,
                    &mut dx,
                    &mut dwte,
                    &dlogits,
                    &x,
                    &wte,
                    bt,
                    c,
                    v,
                )
                .unwrap();
            }
            (dx, dwte)
        };
        let (dx, dwte) = lm_head(0.0, 1);
        let (dx_nan, dwte2) = lm_head(f32::NAN, 2);
        assert_doubled(&what("lm_head dwte"), &dwte, &dwte2);
        assert_overwritten(&what("lm_head dx"), &dx, &dx_nan);

        // Layer norm: dx, dgamma and dbeta all accumulate; 130 rows so
        // the second pass adds several pieces onto a non-zero gradient.
        let rows = 130;
        let xl = normal(&mut rng, rows * c, 1.0);
        let gl = normal(&mut rng, rows * c, 1.0);
        let (gamma, beta) = (normal(&mut rng, c, 1.0), normal(&mut rng, c, 1.0));
        let (mut out, mut mean, mut rstd) = (vec![0.0; rows * c], vec![0.0; rows], vec![0.0; rows]);
        layer_norm_forward(
            &mut compute,
            &xl,
            &gamma,
            &beta,
            LAYER_NORM_EPS,
            &mut out[..],
            &mut mean,
            &mut rstd,
        )
        .unwrap();
        let mut layer_norm = |passes: usize| {
            let (mut dx, mut dgamma, mut dbeta) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
            for _ in 0..passes {
                layer_norm_backward(
                    &mut compute,
                    &xl,
                    &gamma,
                    &mean,
                    &rstd,
                    &gl,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                )
                .unwrap();
            }
            (dx, dgamma, dbeta)
        };
        let (dx, dgamma, dbeta) = layer_norm(1);
        let (dx2, dgamma2, dbeta2) = layer_norm(2);
        assert_doubled(&what("layer norm dx"), &dx, &dx2);
        assert_doubled(&what("layer norm dgamma"), &dgamma, &dgamma2);
        assert_doubled(&what("layer norm dbeta"), &dbeta, &dbeta2);

        // GELU: dx is overwritten, the bias gradient accumulates.
        let mut gelu = |dx_fill: f32, passes: usize| {
            let (mut dx, mut dbias) = (vec![dx_fill; bt * c], vec![0.0; c]);
            for _ in 0..passes {
                gelu_backward(&mut compute, &x[..], &g[..], &mut dx[..], &mut dbias).unwrap();
            }
            (dx, dbias)
        };
        let ((dx, dbias), (dx_nan, dbias2)) = (gelu(0.0, 1), gelu(f32::NAN, 2));
        assert_overwritten(&what("gelu dx"), &dx, &dx_nan);
        assert_doubled(&what("gelu dbias"), &dbias, &dbias2);

        // Encoder: dwte and dwpe accumulate.
        let tokens: Vec<u32> = (0..bt).map(|_| rng.below(v) as u32).collect();
        let encoder = |passes: usize| {
            let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
            for _ in 0..passes {
                encoder_backward(&Context::new(k), &mut dwte, &mut dwpe, &g, &tokens, t, c)
                    .unwrap();
            }
            (dwte, dwpe)
        };
        let ((dwte, dwpe), (dwte2, dwpe2)) = (encoder(1), encoder(2));
        assert_doubled(&what("encoder dwte"), &dwte, &dwte2);
        assert_doubled(&what("encoder dwpe"), &dwpe, &dwpe2);

        // Attention and cross-entropy overwrite their gradients (and
        // attention its scratch).
        let qkv = normal(&mut rng, bt * 3 * c, 1.0);
        let mut atty = vec![0.0; bt * c];
        let mut per_head = vec![0.0; bt * 3 * c];
        attention_forward(
            &mut compute,
            &mut atty[..],
            &qkv[..],
            c,
            nh,
            Attention::Causal {
                b,
                t,
                per_head: &mut per_head,
            },
        )
        .unwrap();
        let mut attention = |fill: f32, passes: usize| {
            let mut dqkv = vec![fill; bt * 3 * c];
            let (mut per_head, mut dbias) = (vec![fill; bt * 3 * c], vec![0.0; 3 * c]);
            for _ in 0..passes {
                attention_backward(
                    &mut compute,
                    &mut dqkv[..],
                    &mut dbias,
                    &mut per_head,
                    &g[..],
                    &qkv[..],
                    b,
                    t,
                    c,
                    nh,
                )
                .unwrap();
            }
            (dqkv, dbias)
        };
        let ((dqkv, dbias), (dqkv_nan, dbias2)) = (attention(0.0, 1), attention(f32::NAN, 2));
        assert_overwritten(&what("attention dqkv"), &dqkv, &dqkv_nan);
        assert_doubled(&what("attention dqkv bias"), &dbias, &dbias2);
        let logits = normal(&mut rng, bt * v, 1.0);
        let targets: Vec<u32> = (0..bt).map(|_| rng.below(v) as u32).collect();
        let mut cross_entropy = |fill: f32| {
            let (mut losses, mut dlogits) = (vec![fill; bt], vec![fill; bt * v]);
            cross_entropy(
                &mut compute,
                &logits,
                v,
                v,
                &targets,
                &mut losses,
                Some(&mut dlogits),
                0.5,
            )
            .unwrap();
            dlogits
        };
        assert_overwritten(
            &what("cross-entropy dlogits"),
            &cross_entropy(0.0),
            &cross_entropy(f32::NAN),
        );
    }
}

/// In bf16 precision attention's output gradient is kept in bf16 (only its
/// products read it, and they round it to bf16 anyway): the input gradient
/// from the bf16 values has the bits of the one from the f32 values, on
/// every bf16 unit.
#[test]
fn attention_backward_from_a_bf16_output_gradient_has_the_f32_bits() {
    let (b, t, c, nh) = (2, 70, 64, 2);
    let mut rng = Rng::new(9);
    let qkv = normal(&mut rng, b * t * 3 * c, 1.0);
    let g = normal(&mut rng, b * t * c, 1.0);
    let g16: Vec<Bf16> = g.iter().map(|&x| Bf16::from_f32(x)).collect();
    for k in backends() {
        let run = |dout: Activation| {
            let mut ctx = Context::new(k);
            ctx.precision = Precision::Bf16;
            let mut per_head = vec![f32::NAN; b * t * 3 * c];
            let (mut dqkv, mut dbias) = (vec![f32::NAN; b * t * 3 * c], vec![0.0; 3 * c]);
            let (q, d) = (&qkv[..], &mut dqkv[..]);
            attention_backward(&mut ctx, d, &mut dbias, &mut per_head, dout, q, b, t, c, nh)
                .unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (bits(&dqkv), bits(&dbias))
        };
        let unit = k.bf16_unit();
        assert_eq!(
            run(Activation::Bf16(&g16)),
            run(Activation::F32(&g)),
            "{unit}"
        );
    }
}

/// Attention with bf16 products (each head's keys, values, queries and
/// output gradient packed once, read by every block) against f32: the
/// output and the input gradient agree to bf16's rounding, 3 % of the
/// largest value, on every bf16 unit; three query blocks, the last short.
#[test]
fn bf16_attention_follows_f32() {
    // Heads of 8, and of 32 (whose queries the tiles read in place, in
    // bf16 rows rounded once per round of sequences).
    for (b, t, c, nh) in [(2, 150, 16, 2), (2, 70, 64, 2)] {
        let mut rng = Rng::new(8);
        let qkv = normal(&mut rng, b * t * 3 * c, 1.0);
        let g = normal(&mut rng, b * t * c, 1.0);
        let run = |k: Kernels, precision: Precision| {
            let mut ctx = Context::new(k);
            ctx.precision = precision;
            let mut out = vec![f32::NAN; b * t * c];
            let mut per_head = vec![f32::NAN; b * t * 3 * c];
            let causal = Attention::Causal {
                b,
                t,
                per_head: &mut per_head,
            };
            attention_forward(&mut ctx, &mut out[..], &qkv[..], c, nh, causal).unwrap();
            let mut dqkv = vec![f32::NAN; b * t * 3 * c];
            attention_backward(
                &mut ctx,
                &mut dqkv[..],
                &mut vec![0.0; 3 * c],
                &mut per_head,
                &g[..],
                &qkv[..],
                b,
                t,
                c,
                nh,
            )
            .unwrap();
            (out, dqkv)
        };
        let (want_out, want_dqkv) = run(Kernels::new(Backend::Scalar).unwrap(), Precision::F32);
        for k in backends() {
            let (out, dqkv) = run(k, Precision::Bf16);
            for (what, got, want) in [("out", &out, &want_out), ("dqkv", &dqkv, &want_dqkv)] {
                let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                for (i, (x, y)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (x - y).abs() <= 3e-2 * scale,
                        "{} {what}[{i}]: bf16 {x}, f32 {y}",
                        k.bf16_unit()
                    );
                }
            }
        }
    }
}
