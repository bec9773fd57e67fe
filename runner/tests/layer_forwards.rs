//! Each forward layer in `runner::model::layers` and attention against an
//! independent definition: plain f64 loops written from GPT-2's maths (the
//! references call no kernel), on every kernel backend this CPU has and
//! every bf16 unit it reaches, on awkward shapes (odd sizes, widths that
//! are no multiple of the SIMD lanes 8 and 16, more rows than one piece of
//! row-wise work). Outputs start as NaN, so an element a forward leaves
//! unwritten fails its comparison (`NaN <= bound` is false).
//!
//! Tolerances are worst-case rounding bounds of the f32 computation
//! (`U = 2⁻²⁴`, f32's unit roundoff), computed per element from the f64
//! reference, not fixed numbers: a sum of `n` f32 terms is within
//! `n · U · Σ|terms|` of the exact sum whatever the order of the additions
//! (the standard `γₙ` bound), and the tests add a few roundings of margin.
//! Every plausible bug (a transposed weight, a wrong attention scale, a
//! mask off by one, an unbiased variance, another GELU) moves outputs by
//! orders of magnitude more than these bounds.
//!
//! With `Precision::Bf16`, the products read their operands rounded to
//! bf16 (8 significant bits) and sum in f32: they are compared with the
//! f64 product of the bf16-rounded inputs (rounded here in f64, to nearest,
//! ties to even) under the same f32 summation bound, and with the f64
//! product of the unrounded inputs under bf16's bound (each operand within
//! `2⁻⁹` of itself, so each product within `2⁻⁸ + 2⁻¹⁸` of itself).
//! LayerNorm, GELU and the loss also run in a bf16 context, where they
//! must stay f32: the same f32 bounds apply.

mod common;
use common::{backends, normal};

use kernels::{Bf16, Bf16Unit, Kernels, MatRef, PackedBf16};
use runner::model::layers::{
    cross_entropy, encoder_forward, gelu_backward, gelu_forward, layer_norm_forward,
    lm_head_forward, matmul_backward, matmul_forward, stored, stored_mut, Activation,
    ActivationMut, Weight,
};
use runner::model::{
    attention_forward, Attention, Context, Gpt, ModelConfig, Precision, LAYER_NORM_EPS,
};
use runner::rng::Rng;

/// f32's unit roundoff, 2⁻²⁴.
const U: f64 = f32::EPSILON as f64 / 2.0;

/// How far a bf16-rounded operand may be from itself, relative: 2⁻⁹.
const BF16_U: f64 = 1.0 / 512.0;

/// Every (backend, bf16 unit) pair this CPU runs: the portable unit on
/// every backend, AVX512-BF16 and AMX where the AVX-512 backend reaches
/// them.
fn bf16_handles() -> Vec<Kernels> {
    backends()
        .into_iter()
        .flat_map(|k| {
            Bf16Unit::ALL
                .into_iter()
                .filter_map(move |u| k.with_bf16_unit(u).ok())
        })
        .collect()
}

/// Every backend in f32, then every (backend, bf16 unit) pair in bf16.
fn all_precisions() -> Vec<(Kernels, Precision)> {
    backends()
        .into_iter()
        .map(|k| (k, Precision::F32))
        .chain(bf16_handles().into_iter().map(|k| (k, Precision::Bf16)))
        .collect()
}

fn context(k: Kernels, precision: Precision) -> Context {
    let mut ctx = Context::new(k);
    ctx.precision = precision;
    ctx
}

fn describe(k: &Kernels, precision: Precision) -> String {
    match precision {
        Precision::F32 => format!("{} f32", k.backend()),
        Precision::Bf16 => format!("{} bf16 on {}", k.backend(), k.bf16_unit()),
    }
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&x| f64::from(x)).collect()
}

/// `x` rounded to the nearest bf16 (8 significant bits), ties to even,
/// computed in f64 from the definition (normal inputs; no overflow).
fn round_bf16(x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    let exponent = ((x.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let ulp = 2f64.powi(exponent - 7);
    (x / ulp).round_ties_even() * ulp
}

/// The inputs as a product in `precision` reads them.
fn as_read(x: &[f32], precision: Precision) -> Vec<f64> {
    match precision {
        Precision::F32 => widen(x),
        Precision::Bf16 => x.iter().map(|&x| round_bf16(f64::from(x))).collect(),
    }
}

/// Asserts `|got[i] − want[i]| ≤ bound[i]` for every element (a NaN
/// fails); returns the largest `error / bound`.
#[track_caller]
fn assert_within(what: &str, got: &[f32], want: &[f64], bound: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert_eq!(got.len(), bound.len(), "{what}: length");
    let mut worst = 0.0f64;
    for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= b,
            "{what}[{i}]: got {g}, want {w} (error {err:.3e}, allowed {b:.3e})"
        );
        worst = worst.max(if b > 0.0 { err / b } else { 0.0 });
    }
    worst
}

/// A product `y[i, j] = Σₖ a[i, k] · b[k, j]` in f64 with, per element,
/// `Σₖ |a[i, k] · b[k, j]|` (what its rounding error scales with).
/// `b_at(k, j)` reads `b`, whatever its layout.
fn product(
    a: &[f64],
    rows: usize,
    depth: usize,
    cols: usize,
    b_at: impl Fn(usize, usize) -> f64,
) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut magnitude) = (vec![0.0; rows * cols], vec![0.0; rows * cols]);
    for i in 0..rows {
        for j in 0..cols {
            for k in 0..depth {
                let term = a[i * depth + k] * b_at(k, j);
                y[i * cols + j] += term;
                magnitude[i * cols + j] += term.abs();
            }
        }
    }
    (y, magnitude)
}

/// The rounding bound of an f32 sum of `n` terms of total magnitude
/// `magnitude`, with `extra` more roundings (a scale, a bias) and a margin
/// of 2.
fn sum_bound(n: usize, extra: usize, magnitude: f64) -> f64 {
    2.0 * (n + extra) as f64 * U * magnitude
}

/// `w` (`rows × cols`, row-major) packed as the bf16 B operand of a
/// product, transposed first if `transposed` (then it is `cols × rows`).
fn packed(k: &Kernels, w: &[f32], rows: usize, cols: usize, transposed: bool) -> Vec<u32> {
    let view = MatRef::new(w, rows, cols).unwrap();
    let view = if transposed { view.t() } else { view };
    let mut slots = vec![0u32; PackedBf16::len(view.rows(), view.cols()).unwrap()];
    k.pack_bf16(view, &mut slots).unwrap();
    slots
}

// ----------------------------------------------------------------------
// Encoder

/// `out[i] = wte[token i] + wpe[first + i mod t]`: GPT-2's input, the
/// token's embedding plus its position's. The sum of two f32 is exact in
/// f64 and IEEE addition rounds it correctly, so the check is bit-exact.
#[test]
fn encoder_forward_adds_token_and_position_embeddings() {
    // Odd channels, a vocabulary of 11 for 21 rows (tokens repeat), and
    // decoding's offset positions.
    let (b, t, c, vocab, block) = (3, 7, 13, 11, 10);
    for k in backends() {
        let mut rng = Rng::new(11);
        let wte = normal(&mut rng, vocab * c, 1.0);
        let wpe = normal(&mut rng, block * c, 1.0);
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(vocab) as u32).collect();
        for first in [0, block - t] {
            let mut out = vec![f32::NAN; b * t * c];
            let ctx = Context::new(k);
            encoder_forward(&ctx, &mut out, &tokens, &wte, &wpe, t, first, c).unwrap();
            for (i, row) in out.chunks_exact(c).enumerate() {
                let (tok, pos) = (tokens[i] as usize, first + i % t);
                for (j, &got) in row.iter().enumerate() {
                    let want = f64::from(wte[tok * c + j]) + f64::from(wpe[pos * c + j]);
                    assert_eq!(
                        got.to_bits(),
                        (want as f32).to_bits(),
                        "{} encoder (first position {first}) row {i} channel {j}: got {got}, want {want}",
                        k.backend()
                    );
                }
            }
        }
        // A token outside the vocabulary is refused, not read past `wte`.
        let mut out = vec![f32::NAN; c];
        let ctx = Context::new(k);
        assert!(encoder_forward(&ctx, &mut out, &[vocab as u32], &wte, &wpe, 1, 0, c).is_err());
    }
}

// ----------------------------------------------------------------------
// LayerNorm

/// Per row: `μ = mean(x)`, `σ² = mean((x − μ)²)` (biased, as GPT-2),
/// `rstd = 1 / √(σ² + ε)`, `y = (x − μ) · rstd · γ + β`.
fn layer_norm_reference(x: &[f64], gamma: &[f64], beta: &[f64]) -> LayerNormRef {
    let c = gamma.len();
    let mut r = LayerNormRef::default();
    for row in x.chunks_exact(c) {
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + f64::from(LAYER_NORM_EPS)).sqrt();
        // Relative error of the f32 statistics: the sums (c terms), and
        // the cancellation of a one-pass variance (E[x²] − μ²), which
        // scales with (max |x| / σ)².
        let largest = row.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let spread = largest * rstd;
        let rel = 2.0 * (c + 8) as f64 * U * (1.0 + spread * spread);
        r.mean.push(mean);
        r.mean_bound.push(2.0 * (c + 2) as f64 * U * largest);
        r.rstd.push(rstd);
        r.rstd_bound.push(rel * rstd);
        for (j, &x) in row.iter().enumerate() {
            let xhat = (x - mean) * rstd;
            let y = xhat * gamma[j] + beta[j];
            r.out.push(y);
            // γ times x̂'s error (rstd's relative error on |x̂|, the mean's
            // error times rstd, at most `spread · rel`), and the rounding
            // of the product and the sum.
            r.out_bound.push(
                gamma[j].abs() * (xhat.abs() + spread) * rel + 4.0 * U * y.abs().max(beta[j].abs()),
            );
        }
    }
    r
}

#[derive(Default)]
struct LayerNormRef {
    out: Vec<f64>,
    out_bound: Vec<f64>,
    mean: Vec<f64>,
    mean_bound: Vec<f64>,
    rstd: Vec<f64>,
    rstd_bound: Vec<f64>,
}

#[test]
fn layer_norm_forward_matches_definition_with_its_statistics() {
    // 130 rows: two full pieces of 64 and a partial one. Rows with offsets
    // (so the mean matters), and every fifth row nearly constant (σ ≈ 1e-3,
    // σ² ≪ ε, so ε's place inside the root matters).
    for c in [20, 37, 1] {
        let rows = 130;
        for (k, precision) in all_precisions() {
            let mut rng = Rng::new(12 + c as u64);
            let x: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    let (offset, std) = if r % 5 == 0 {
                        (0.0, 1e-3)
                    } else {
                        (r as f32 * 0.05 - 2.0, 1.5)
                    };
                    normal(&mut rng, c, std)
                        .into_iter()
                        .map(move |x| x + offset)
                })
                .collect();
            let gamma: Vec<f32> = normal(&mut rng, c, 0.5).iter().map(|g| 1.0 + g).collect();
            let beta = normal(&mut rng, c, 0.5);
            let mut ctx = context(k, precision);
            let mut out = vec![f32::NAN; rows * c];
            let (mut mean, mut rstd) = (vec![f32::NAN; rows], vec![f32::NAN; rows]);
            layer_norm_forward(
                &mut ctx,
                &x,
                &gamma,
                &beta,
                LAYER_NORM_EPS,
                &mut out[..],
                &mut mean,
                &mut rstd,
            )
            .unwrap();
            let r = layer_norm_reference(&widen(&x), &widen(&gamma), &widen(&beta));
            let what = |name: &str| format!("{} layer norm c{c} {name}", describe(&k, precision));
            assert_within(&what("out"), &out, &r.out, &r.out_bound);
            assert_within(&what("mean"), &mean, &r.mean, &r.mean_bound);
            assert_within(&what("rstd"), &rstd, &r.rstd, &r.rstd_bound);
        }
    }
}

// ----------------------------------------------------------------------
// Linear layers

/// `out = inp · W + bias` with `W` stored `[in, out]` (Hugging Face's
/// Conv1D layout, as `tensors.rs` says), in both precisions, with and
/// without a bias, and from bf16-packed weights (decoding's path).
#[test]
fn matmul_forward_matches_definition() {
    // (rows, in, out): the QKV projection's 3c outputs on odd rows, an
    // MLP-like 4x widening, a single row and channel, and sizes over one
    // register tile and no multiple of 8 or 16.
    for (bt, c, oc) in [(21, 20, 60), (7, 13, 52), (1, 1, 1), (67, 37, 19)] {
        let mut rng = Rng::new(20 + (bt * c * oc) as u64);
        let inp = normal(&mut rng, bt * c, 1.0);
        let w = normal(&mut rng, c * oc, 0.5);
        let bias = normal(&mut rng, oc, 0.5);
        let exact = product(&widen(&inp), bt, c, oc, |kk, j| f64::from(w[kk * oc + j]));
        for (k, precision) in all_precisions() {
            let (x_read, w_read) = (as_read(&inp, precision), as_read(&w, precision));
            let read = product(&x_read, bt, c, oc, |kk, j| w_read[kk * oc + j]);
            for with_bias in [true, false] {
                let bias_arg = with_bias.then_some(&bias[..]);
                let mut out = vec![f32::NAN; bt * oc];
                let mut ctx = context(k, precision);
                matmul_forward(
                    &mut ctx,
                    &mut out[..],
                    inp.as_slice(),
                    Weight::F32(&w),
                    bias_arg,
                    bt,
                    c,
                    oc,
                )
                .unwrap();
                let what = format!(
                    "{} matmul {bt}×{c}·{c}×{oc} bias {with_bias}",
                    describe(&k, precision)
                );
                check_linear(&what, &out, &read, &exact, bias_arg, oc, c, precision);
            }
            if precision == Precision::Bf16 {
                // Weights packed once in bf16: a bf16 product in any
                // context precision.
                let slots = packed(&k, &w, c, oc, false);
                let w_packed = PackedBf16::new(&slots, c, oc).unwrap();
                let read = product(&as_read(&inp, precision), bt, c, oc, |kk, j| {
                    round_bf16(f64::from(w[kk * oc + j]))
                });
                for ctx_precision in [Precision::F32, Precision::Bf16] {
                    let mut out = vec![f32::NAN; bt * oc];
                    let mut ctx = context(k, ctx_precision);
                    let weight = Weight::Packed(w_packed);
                    matmul_forward(
                        &mut ctx,
                        &mut out[..],
                        inp.as_slice(),
                        weight,
                        Some(&bias),
                        bt,
                        c,
                        oc,
                    )
                    .unwrap();
                    let what = format!(
                        "{} matmul {bt}×{c}·{c}×{oc}, packed weights, context {}",
                        describe(&k, precision),
                        ctx_precision.name()
                    );
                    check_linear(
                        &what,
                        &out,
                        &read,
                        &exact,
                        Some(&bias),
                        oc,
                        c,
                        Precision::Bf16,
                    );
                }
            }
        }
    }
}

/// In bf16 precision a linear layer writes a bf16 output (the QKV rows
/// causal attention reads) that holds its f32 output rounded once, bias
/// included, bit for bit, on every bf16 unit (the shapes cover whole
/// 32-row tile blocks and edges); an f32 context refuses a bf16 output of
/// an f32 product.
#[test]
fn matmul_forward_into_bf16_holds_the_f32_output_rounded() {
    for (bt, c, oc) in [(21, 20, 60), (64, 64, 96), (67, 37, 19)] {
        let mut rng = Rng::new(90 + (bt * c * oc) as u64);
        let inp = normal(&mut rng, bt * c, 1.0);
        let w = normal(&mut rng, c * oc, 0.5);
        let bias = normal(&mut rng, oc, 0.5);
        for k in bf16_handles() {
            let mut ctx = context(k, Precision::Bf16);
            let mut wide = vec![f32::NAN; bt * oc];
            let mut narrow = vec![Bf16::from_f32(f32::NAN); bt * oc];
            for out in [
                ActivationMut::F32(&mut wide),
                ActivationMut::Bf16(&mut narrow),
            ] {
                let (x, w) = (inp.as_slice(), Weight::F32(&w));
                matmul_forward(&mut ctx, out, x, w, Some(&bias), bt, c, oc).unwrap();
            }
            let rounded: Vec<u16> = wide.iter().map(|&v| Bf16::from_f32(v).to_bits()).collect();
            let bits: Vec<u16> = narrow.iter().map(|v| v.to_bits()).collect();
            let what = describe(&k, Precision::Bf16);
            assert_eq!(bits, rounded, "{what} matmul {bt}×{c}·{c}×{oc} into bf16");
        }
        let mut ctx = context(Kernels::best(), Precision::F32);
        let mut narrow = vec![Bf16::from_f32(0.0); bt * oc];
        let out = ActivationMut::Bf16(&mut narrow);
        let (x, w) = (inp.as_slice(), Weight::F32(&w));
        assert!(matmul_forward(&mut ctx, out, x, w, Some(&bias), bt, c, oc).is_err());
    }
}

/// A linear layer's output against the product of the operands as read
/// (`read`: value and magnitude) under the f32 summation bound, and for
/// bf16 also against the `exact` product of the unrounded operands under
/// bf16's bound; plus the bias, added in f32.
#[allow(clippy::too_many_arguments)]
fn check_linear(
    what: &str,
    out: &[f32],
    read: &(Vec<f64>, Vec<f64>),
    exact: &(Vec<f64>, Vec<f64>),
    bias: Option<&[f32]>,
    oc: usize,
    depth: usize,
    precision: Precision,
) {
    let bias_at = |i: usize| bias.map_or(0.0, |b| f64::from(b[i % oc]));
    let want: Vec<f64> = read
        .0
        .iter()
        .enumerate()
        .map(|(i, y)| y + bias_at(i))
        .collect();
    let bound: Vec<f64> = read
        .1
        .iter()
        .enumerate()
        .map(|(i, m)| sum_bound(depth, 2, m + bias_at(i).abs()))
        .collect();
    assert_within(what, out, &want, &bound);
    if precision == Precision::Bf16 {
        let want: Vec<f64> = exact
            .0
            .iter()
            .enumerate()
            .map(|(i, y)| y + bias_at(i))
            .collect();
        let bound: Vec<f64> = exact
            .1
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (2.0 * BF16_U + BF16_U * BF16_U) * m
                    + sum_bound(depth, 2, 1.01 * m + bias_at(i).abs())
            })
            .collect();
        assert_within(
            &format!("{what} (against unrounded inputs)"),
            out,
            &want,
            &bound,
        );
    }
}

/// `logits = x · wteᵀ` with the LM head tied to the token embedding `wte`
/// (`[V, C]`, one row per token): logit `j` is the dot product of `x` with
/// token `j`'s embedding. Both precisions, and `wteᵀ` packed in bf16.
#[test]
fn lm_head_forward_matches_definition() {
    for (bt, c, v) in [(15, 12, 37), (1, 20, 131), (33, 9, 5)] {
        let mut rng = Rng::new(30 + (bt * c * v) as u64);
        let x = normal(&mut rng, bt * c, 1.0);
        let wte = normal(&mut rng, v * c, 0.5);
        let exact = product(&widen(&x), bt, c, v, |kk, j| f64::from(wte[j * c + kk]));
        for (k, precision) in all_precisions() {
            let (x_read, wte_read) = (as_read(&x, precision), as_read(&wte, precision));
            let read = product(&x_read, bt, c, v, |kk, j| wte_read[j * c + kk]);
            let mut logits = vec![f32::NAN; bt * v];
            let mut ctx = context(k, precision);
            lm_head_forward(&mut ctx, &mut logits, &x, Weight::F32(&wte), bt, c, v).unwrap();
            let what = format!("{} lm head {bt}×{c}, V {v}", describe(&k, precision));
            check_linear(&what, &logits, &read, &exact, None, v, c, precision);
            if precision == Precision::Bf16 {
                let slots = packed(&k, &wte, v, c, true);
                let wte_t = PackedBf16::new(&slots, c, v).unwrap();
                let mut logits = vec![f32::NAN; bt * v];
                lm_head_forward(&mut ctx, &mut logits, &x, Weight::Packed(wte_t), bt, c, v)
                    .unwrap();
                let what = format!("{what}, packed wteᵀ");
                check_linear(&what, &logits, &read, &exact, None, v, c, precision);
            }
        }
    }
}

// ----------------------------------------------------------------------
// GELU

/// GPT-2's GELU, the tanh approximation:
/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))`.
fn gelu_reference(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    0.5 * x * (1.0 + u.tanh())
}

/// In bf16 precision GELU's output is kept in bf16 (only the projection's
/// products read it, and they round it anyway): written and read through
/// `stored_mut` and `stored`, it is the f32 output rounded
/// once.
#[test]
fn gelu_forward_matches_tanh_approximation() {
    // Two full pieces of 2^14 elements and a partial one, inputs over the
    // curved region and both tails; and 13 elements (a SIMD remainder).
    for n in [2 * (1 << 14) + 1001, 13] {
        for (k, precision) in all_precisions() {
            let mut rng = Rng::new(40 + n as u64);
            let x = normal(&mut rng, n, 3.0);
            let mut buf = vec![f32::NAN; n];
            let mut ctx = context(k, precision);
            let out = stored_mut(ctx.precision, &mut buf);
            gelu_forward(&mut ctx, &x[..], out).unwrap();
            let (out, rounding): (Vec<f32>, f64) = match stored(ctx.precision, &buf) {
                Activation::F32(out) => (out.to_vec(), 0.0),
                Activation::Bf16(out) => (out.iter().map(|v| v.to_f32()).collect(), 2f64.powi(-8)),
            };
            let want: Vec<f64> = x.iter().map(|&x| gelu_reference(f64::from(x))).collect();
            // The f32 tanh is within a few ulps; the cubic's rounding moves
            // its argument by a few U relative, and 1 + tanh cancels in the
            // negative tail: 16 U of |x| + |gelu| covers all of it; a bf16
            // output adds its rounding.
            let bound: Vec<f64> = x
                .iter()
                .zip(&want)
                .map(|(&x, y)| 16.0 * U * (f64::from(x).abs() + y.abs()) + rounding * y.abs())
                .collect();
            let what = format!("{} gelu n{n}", describe(&k, precision));
            assert_within(&what, &out, &want, &bound);
        }
    }
}

/// In bf16 precision GELU's input gradient is kept in bf16 too (only the
/// MLP's products read it): it is the f32 gradient rounded once, and the
/// bias gradient summed on the way has the f32 run's bits.
#[test]
fn gelu_backward_into_bf16_is_the_f32_gradient_rounded() {
    let (rows, oc) = (2 * 64 + 5, 37);
    for k in bf16_handles() {
        let mut rng = Rng::new(41);
        let x = normal(&mut rng, rows * oc, 3.0);
        let dout = normal(&mut rng, rows * oc, 1.0);
        let run = |precision: Precision| {
            let mut ctx = context(k, precision);
            let (mut buf, mut dbias) = (vec![f32::NAN; rows * oc], vec![0.25; oc]);
            let dx = stored_mut(ctx.precision, &mut buf);
            gelu_backward(&mut ctx, &x[..], &dout[..], dx, &mut dbias).unwrap();
            let dx: Vec<u16> = match stored(ctx.precision, &buf) {
                Activation::F32(dx) => dx.iter().map(|&v| Bf16::from_f32(v).to_bits()).collect(),
                Activation::Bf16(dx) => dx.iter().map(|v| v.to_bits()).collect(),
            };
            (dx, dbias.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        let what = describe(&k, Precision::Bf16);
        let ((dx32, dbias32), (dx16, dbias16)) = (run(Precision::F32), run(Precision::Bf16));
        assert_eq!(dx16, dx32, "{what}: input gradient");
        assert_eq!(dbias16, dbias32, "{what}: bias gradient");
    }
}

/// In bf16 precision the MLP's product output and its gradient are kept in
/// bf16 too, and GELU computes from them in f32: its forward and backward
/// layers on bf16 inputs give the bits they give on the values widened to
/// f32 (the bias gradient included).
#[test]
fn gelu_layers_read_bf16_inputs_as_their_widened_values() {
    let (rows, oc) = (2 * 64 + 5, 37);
    let n = rows * oc;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for k in bf16_handles() {
        let mut rng = Rng::new(43);
        let rounded = |v: Vec<f32>| v.iter().map(|&v| Bf16::from_f32(v)).collect::<Vec<_>>();
        let (x16, d16) = (
            rounded(normal(&mut rng, n, 3.0)),
            rounded(normal(&mut rng, n, 1.0)),
        );
        let widened = |v: &[Bf16]| v.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
        let (x32, d32) = (widened(&x16), widened(&d16));
        let mut ctx = context(k, Precision::Bf16);
        let what = describe(&k, Precision::Bf16);

        let (mut got, mut want) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        gelu_forward(&mut ctx, Activation::Bf16(&x16), &mut got[..]).unwrap();
        gelu_forward(&mut ctx, &x32[..], &mut want[..]).unwrap();
        assert_eq!(bits(&got), bits(&want), "{what}: forward");

        let mut backward = |x: Activation, dout: Activation| {
            let (mut dx, mut dbias) = (vec![f32::NAN; n], vec![0.25; oc]);
            gelu_backward(&mut ctx, x, dout, &mut dx[..], &mut dbias).unwrap();
            (bits(&dx), bits(&dbias))
        };
        let want = backward(Activation::F32(&x32), Activation::F32(&d32));
        let got = backward(Activation::Bf16(&x16), Activation::Bf16(&d16));
        assert_eq!(got, want, "{what}: backward");
    }
}

// ----------------------------------------------------------------------
// Cross-entropy

/// `log Σⱼ exp(logitⱼ) − logit[target]` over the first `classes` logits
/// of a row, and its rounding bound in f32 (the log-sum-exp's terms, the
/// target's logit, the maximum the softmax subtracts, and the exp and log).
fn cross_entropy_reference(row: &[f32], target: usize) -> (f64, f64) {
    let row = widen(row);
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l));
    let sum: f64 = row.iter().map(|&l| (l - max).exp()).sum();
    let loss = max + sum.ln() - row[target];
    let bound =
        16.0 * U * (max.abs() + row[target].abs() + loss.abs()) + 2.0 * (row.len() + 16) as f64 * U;
    (loss, bound)
}

#[test]
fn cross_entropy_losses_match_definition() {
    // 131 rows over three pieces of 64; 37 classes alone or padded to 48
    // with large logits that must not count.
    let (rows, classes) = (131, 37);
    for ((k, precision), stride) in all_precisions()
        .into_iter()
        .flat_map(|k| [(k, classes), (k, 48)])
    {
        let mut rng = Rng::new(50);
        let mut logits = normal(&mut rng, rows * stride, 3.0);
        for row in logits.chunks_exact_mut(stride) {
            row[classes..].fill(30.0);
        }
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
        let (want, bound): (Vec<f64>, Vec<f64>) = logits
            .chunks_exact(stride)
            .zip(&targets)
            .map(|(row, &t)| cross_entropy_reference(&row[..classes], t as usize))
            .unzip();
        let what = format!(
            "{} cross-entropy, rows of {stride}",
            describe(&k, precision)
        );
        for with_gradient in [false, true] {
            let mut losses = vec![f32::NAN; rows];
            let mut dlogits = vec![f32::NAN; rows * stride];
            cross_entropy(
                &mut context(k, precision),
                &logits,
                classes,
                stride,
                &targets,
                &mut losses,
                with_gradient.then_some(&mut dlogits[..]),
                1.0,
            )
            .unwrap();
            assert_within(
                &format!("{what}, gradient {with_gradient}"),
                &losses,
                &want,
                &bound,
            );
        }
    }
}

/// `Gpt::loss` is the mean over the positions of the cross-entropy of the
/// real vocabulary's logits (the padded columns never count), checked
/// against the logits the model exposes.
#[test]
fn model_loss_is_the_mean_cross_entropy_of_its_logits() {
    let cfg = ModelConfig {
        vocab_size: 37,
        tokenizer: None,
        block_size: 9,
        layers: 1,
        heads: 3,
        channels: 12,
    };
    let (b, t) = (3, 7);
    for k in backends() {
        let mut rng = Rng::new(60);
        let mut model = Gpt::new(cfg, k, 61).unwrap();
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(37) as u32).collect();
        let targets: Vec<u32> = (0..b * t).map(|_| rng.below(37) as u32).collect();
        model.forward(&tokens, b, t).unwrap();
        let (mut sum, mut bound) = (0.0, 0.0);
        for (i, &target) in targets.iter().enumerate() {
            let logits = model.logits(i).unwrap();
            assert_eq!(logits.len(), 37);
            let (loss, row_bound) = cross_entropy_reference(logits, target as usize);
            sum += loss;
            bound += row_bound;
        }
        let n = (b * t) as f64;
        let (want, bound) = (sum / n, bound / n + 4.0 * U * sum.abs() / n);
        for grad_scale in [None, Some(1.0 / n as f32)] {
            let got = model.loss(&targets, grad_scale).unwrap();
            assert_within(
                &format!("{} model loss, grad scale {grad_scale:?}", k.backend()),
                &[got],
                &[want],
                &[bound],
            );
        }
    }
}

// ----------------------------------------------------------------------
// Attention

/// Causal multi-head self-attention of `b` sequences of `t` positions,
/// `qkv[b, t, 3c]` (each position's query, key and value; head `h` at
/// channels `h·hs..(h+1)·hs` of each, `hs = c / nh`), as GPT-2 computes it:
/// per head, `scores = q · kᵀ / √hs` with position `i` seeing positions
/// `0..=i`, `probs = softmax(scores)`, `out = probs · v`, the heads side by
/// side in `out[b, t, c]`. `round_probs` rounds the probabilities to bf16
/// before the second product, as a bf16 product reads them.
struct AttentionRef {
    out: Vec<f64>,
    out_bound: Vec<f64>,
}

fn attention_reference(
    qkv: &[f64],
    (b, t, c, nh): (usize, usize, usize, usize),
    round_probs: bool,
) -> AttentionRef {
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let at = |bi: usize, pos: usize, part: usize, h: usize, d: usize| {
        qkv[(bi * t + pos) * 3 * c + part * c + h * hs + d]
    };
    let mut r = AttentionRef {
        out: vec![0.0; b * t * c],
        out_bound: vec![0.0; b * t * c],
    };
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..t {
                let visible = i + 1;
                let mut scores = vec![0.0; visible];
                // The largest rounding error of a score: hs products,
                // summed, then scaled.
                let mut score_error = 0.0f64;
                for (j, s) in scores.iter_mut().enumerate() {
                    let (mut dot, mut magnitude) = (0.0, 0.0);
                    for d in 0..hs {
                        let term = at(bi, i, 0, h, d) * at(bi, j, 1, h, d);
                        dot += term;
                        magnitude += term.abs();
                    }
                    *s = dot * scale;
                    score_error = score_error.max((hs + 2) as f64 * U * magnitude * scale);
                }
                let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                // Relative error of an f32 probability: twice the score
                // error (its own and the normaliser's), a few ulps of exp,
                // the normaliser's sum, the division.
                let probs_rel = 2.0 * score_error + (visible + 8) as f64 * U;
                let probs: Vec<f64> = scores.iter().map(|s| (s - max).exp() / sum).collect();
                // out = probs · v; its error is the probabilities' (each
                // relative) and the sum's, both relative to Σ p |v|; bf16
                // adds one bf16 step of each probability (2⁻⁷ relative),
                // where the f32 and f64 probabilities round to neighbours.
                let out_rel = probs_rel
                    + (visible + 2) as f64 * U
                    + if round_probs { 4.0 * BF16_U } else { 0.0 };
                for d in 0..hs {
                    let (mut y, mut magnitude) = (0.0, 0.0);
                    for (j, &p) in probs.iter().enumerate() {
                        let p = if round_probs { round_bf16(p) } else { p };
                        let v = at(bi, j, 2, h, d);
                        y += p * v;
                        magnitude += (p * v).abs();
                    }
                    let o = (bi * t + i) * c + h * hs + d;
                    r.out[o] = y;
                    r.out_bound[o] = 2.0 * out_rel * magnitude + 1e-30;
                }
            }
        }
    }
    r
}

/// The shapes of the attention checks, `(b, t, c, nh)`: head sizes 4, 5,
/// 10 and 1; `t` of 13, 17, 35 (over 32) and 70 (two query blocks of 64,
/// the second short), and `t = 1` (a single position sees only itself).
const ATTENTION_SHAPES: [(usize, usize, usize, usize); 7] = [
    // Heads of 32: in bf16 the tiles read a whole panel of queries where
    // they lie (rows rounded once), the last 8 packed.
    (2, 40, 64, 2),
    (3, 13, 12, 3),
    (2, 17, 20, 4),
    (1, 35, 20, 2),
    (1, 70, 8, 2),
    (2, 1, 12, 3),
    (1, 9, 3, 3),
];

#[test]
fn causal_attention_matches_definition() {
    for (b, t, c, nh) in ATTENTION_SHAPES {
        let mut rng = Rng::new(70 + (b * t * c * nh) as u64);
        let qkv = normal(&mut rng, b * t * 3 * c, 1.0);
        for (k, precision) in all_precisions() {
            let bf16 = precision == Precision::Bf16;
            let r = attention_reference(&as_read(&qkv, precision), (b, t, c, nh), bf16);
            let mut ctx = context(k, precision);
            let mut out = vec![f32::NAN; b * t * c];
            let mut per_head = vec![f32::NAN; b * t * c];
            let causal = Attention::Causal {
                b,
                t,
                per_head: &mut per_head,
            };
            attention_forward(&mut ctx, &mut out[..], &qkv[..], c, nh, causal).unwrap();
            let what = format!(
                "{} attention b{b} t{t} c{c} nh{nh}",
                describe(&k, precision)
            );
            assert_within(&format!("{what} out"), &out, &r.out, &r.out_bound);
        }
    }
}

/// In bf16 precision causal attention's output is kept in bf16 (only the
/// projection's products read it): written through `stored_mut`, it
/// is the f32 output rounded once.
#[test]
fn causal_attention_into_bf16_is_the_f32_output_rounded() {
    for (b, t, c, nh) in ATTENTION_SHAPES {
        let mut rng = Rng::new(80 + (b * t * c * nh) as u64);
        let qkv = normal(&mut rng, b * t * 3 * c, 1.0);
        for k in bf16_handles() {
            let run = |into_bf16: bool| {
                let mut ctx = context(k, Precision::Bf16);
                let mut buf = vec![f32::NAN; b * t * c];
                let mut per_head = vec![f32::NAN; b * t * c];
                let causal = Attention::Causal {
                    b,
                    t,
                    per_head: &mut per_head,
                };
                let out = if into_bf16 {
                    stored_mut(ctx.precision, &mut buf)
                } else {
                    (&mut buf[..]).into()
                };
                attention_forward(&mut ctx, out, &qkv[..], c, nh, causal).unwrap();
                match (into_bf16, stored(ctx.precision, &buf)) {
                    (true, Activation::Bf16(out)) => out.iter().map(|v| v.to_bits()).collect(),
                    _ => buf
                        .iter()
                        .map(|&v| Bf16::from_f32(v).to_bits())
                        .collect::<Vec<_>>(),
                }
            };
            let what = format!(
                "{} attention b{b} t{t} c{c} nh{nh}",
                describe(&k, Precision::Bf16)
            );
            assert_eq!(run(true), run(false), "{what}");
        }
    }
}

/// bf16 values on a 64-byte line (the arena's tensors are) rounded from
/// `x`, in `lines`.
fn on_line_bf16<'a>(lines: &'a mut Vec<f32>, x: &[f32]) -> &'a [Bf16] {
    lines.clear();
    lines.resize(x.len() + 16, 0.0);
    let at = lines.as_ptr().align_offset(64);
    let x16: &mut [Bf16] = &mut bytemuck::cast_slice_mut(&mut lines[at..])[..x.len()];
    for (r, &v) in x16.iter_mut().zip(x) {
        *r = Bf16::from_f32(v);
    }
    x16
}

/// An activation kept in bf16 (as GELU's output is in bf16 precision), or
/// an output gradient (as GELU's input gradient is), gives the products
/// the same bits as its f32 values would: they round their operands to
/// bf16 anyway. Forward and backward (the weight gradient reads the
/// activation transposed, the output gradient as its B), rows on cache
/// lines or not, widths whose rows tiles can read in place (multiples of
/// 32) and others.
#[test]
fn a_bf16_activation_multiplies_as_its_f32_values() {
    for k in bf16_handles() {
        for (bt, c, oc) in [(64, 64, 48), (70, 96, 40), (13, 40, 24)] {
            let mut rng = Rng::new((bt * c + oc) as u64);
            let x = normal(&mut rng, bt * c, 1.0);
            let w = normal(&mut rng, c * oc, 0.5);
            let dy = normal(&mut rng, bt * oc, 1.0);
            let (mut x_lines, mut dy_lines) = (Vec::new(), Vec::new());
            let x16 = on_line_bf16(&mut x_lines, &x);
            let dy16 = on_line_bf16(&mut dy_lines, &dy);
            let run = |inp: Activation, dout: Activation| {
                let mut ctx = context(k, Precision::Bf16);
                let mut out = vec![f32::NAN; bt * oc];
                matmul_forward(
                    &mut ctx,
                    &mut out[..],
                    inp,
                    Weight::F32(&w),
                    None,
                    bt,
                    c,
                    oc,
                )
                .unwrap();
                let (mut dx, mut dw) = (vec![f32::NAN; bt * c], vec![0.0; c * oc]);
                matmul_backward(
                    &mut ctx,
                    &mut dx[..],
                    &mut dw,
                    None,
                    dout,
                    inp,
                    &w,
                    bt,
                    c,
                    oc,
                )
                .unwrap();
                (out, dx, dw)
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let (out32, dx32, dw32) = run(Activation::F32(&x), Activation::F32(&dy));
            let (out16, dx16, dw16) = run(Activation::Bf16(x16), Activation::Bf16(dy16));
            let what = format!("{} {bt}x{c}x{oc}", describe(&k, Precision::Bf16));
            assert_eq!(bits(&out16), bits(&out32), "{what}: forward");
            assert_eq!(bits(&dx16), bits(&dx32), "{what}: input gradient");
            assert_eq!(bits(&dw16), bits(&dw32), "{what}: weight gradient");
        }
    }
}
