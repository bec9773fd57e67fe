//! Every backend (the scalar reference included) against definitions written
//! here in f64, and the backward passes against finite differences of those
//! definitions.

use std::vec::Vec;

use super::*;
use crate::{AdamW, ValidLen};

/// All implementations, scalar first.
fn every_kernel() -> Vec<(&'static str, Kernels)> {
    let mut all = std::vec![("scalar", scalar())];
    all.extend(simd_kernels());
    all
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

fn close64(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g as f64 - w).abs() <= abs + rel * w.abs();
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

fn layer_norm64(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let rstd = 1.0 / (var + eps).sqrt();
    (0..x.len())
        .map(|i| (x[i] - mean) * rstd * gamma[i] + beta[i])
        .collect()
}

fn gelu64(x: f64) -> f64 {
    let c = (2.0 / core::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// Mean cross-entropy of rows of logits against targets.
fn cross_entropy64(logits: &[f64], classes: usize, targets: &[u32]) -> f64 {
    let rows = targets.len();
    let mut total = 0.0;
    for (row, &t) in logits.chunks(classes).zip(targets) {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        total += lse - row[t as usize];
    }
    total / rows as f64
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
        for cols in [1, 3, 8, 17] {
            let rows = 3;
            let x = rng.vec(rows * cols, -2.0, 2.0);
            let w = rng.vec(rows * cols, -1.0, 1.0);
            let mut probs = x.clone();
            k.softmax_rows(&mut probs, cols, ValidLen::Causal { offset: 0 })
                .unwrap();
            // loss = Σ w · softmax(x), so d(loss)/d(probs) = w.
            let mut got = w.clone();
            k.softmax_backward_rows(&probs, &mut got, cols, ValidLen::Causal { offset: 0 })
                .unwrap();
            let loss = |x: &[f64]| -> f64 {
                let mut total = 0.0;
                for r in 0..rows {
                    let valid = (r + 1).min(cols);
                    let row = &x[r * cols..r * cols + valid];
                    let z: f64 = row.iter().map(|v| v.exp()).sum();
                    for (j, v) in row.iter().enumerate() {
                        total += f64::from(w[r * cols + j]) * v.exp() / z;
                    }
                }
                total
            };
            let want = numerical_gradient(&widen(&x), loss);
            close64(
                &ctx("softmax backward", name, cols),
                &got,
                &want,
                1e-3,
                1e-5,
            );
        }
    }
}

#[test]
fn softmax_matches_definition() {
    let mut rng = Rng::new(20);
    for (name, k) in every_kernel() {
        for cols in [1, 5, 8, 16, 23, 100] {
            let rows = 4;
            let x = rng.vec(rows * cols, -10.0, 10.0);
            let mut got = x.clone();
            k.softmax_rows(&mut got, cols, ValidLen::Causal { offset: 0 })
                .unwrap();
            for r in 0..rows {
                let valid = (r + 1).min(cols);
                let row = widen(&x[r * cols..r * cols + valid]);
                let z: f64 = row.iter().map(|v| v.exp()).sum();
                let mut want: Vec<f64> = row.iter().map(|v| v.exp() / z).collect();
                want.resize(cols, 0.0);
                close64(
                    &ctx("softmax", name, cols),
                    &got[r * cols..(r + 1) * cols],
                    &want,
                    1e-5,
                    1e-7,
                );
            }
        }
    }
}

#[test]
fn layer_norm_matches_definition_and_finite_differences() {
    let mut rng = Rng::new(21);
    let eps = 1e-5;
    for (name, k) in every_kernel() {
        for cols in [1, 3, 8, 17, 40] {
            let x = rng.vec(cols, -3.0, 3.0);
            let (gamma, beta) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -1.0, 1.0));
            let (x64, g64, b64) = (widen(&x), widen(&gamma), widen(&beta));
            let mut out = std::vec![0.0; cols];
            let (mut mean, mut rstd) = ([0.0], [0.0]);
            k.layer_norm_forward(&x, &gamma, &beta, eps, &mut out, &mut mean, &mut rstd)
                .unwrap();
            let what = ctx("layer_norm", name, cols);
            close64(
                &what,
                &out,
                &layer_norm64(&x64, &g64, &b64, eps as f64),
                1e-5,
                1e-5,
            );

            // Loss = Σ w·out, so dout = w; compare with finite differences.
            let w = rng.vec(cols, -1.0, 1.0);
            let w64 = widen(&w);
            let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
                layer_norm64(x, g, b, eps as f64)
                    .iter()
                    .zip(&w64)
                    .map(|(o, w)| o * w)
                    .sum()
            };
            let (mut dx, mut dg, mut db) = (
                std::vec![0.0; cols],
                std::vec![0.0; cols],
                std::vec![0.0; cols],
            );
            k.layer_norm_backward(&x, &gamma, &mean, &rstd, &w, &mut dx, &mut dg, &mut db)
                .unwrap();
            // With one column the output is beta alone: dx is 0 up to rounding.
            let (rel, abs) = (2e-3, if cols == 1 { 1e-2 } else { 2e-4 });
            close64(
                &what,
                &dx,
                &numerical_gradient(&x64, |x| loss(x, &g64, &b64)),
                rel,
                abs,
            );
            close64(
                &what,
                &dg,
                &numerical_gradient(&g64, |g| loss(&x64, g, &b64)),
                rel,
                2e-4,
            );
            close64(
                &what,
                &db,
                &numerical_gradient(&b64, |b| loss(&x64, &g64, b)),
                rel,
                2e-4,
            );
        }
    }
}

#[test]
fn gelu_matches_definition_and_finite_differences() {
    let mut rng = Rng::new(22);
    for (name, k) in every_kernel() {
        let x = rng.vec(101, -6.0, 6.0);
        let mut out = std::vec![0.0; x.len()];
        k.gelu_forward(&x, &mut out).unwrap();
        let want: Vec<f64> = x.iter().map(|&v| gelu64(v as f64)).collect();
        close64(&ctx("gelu", name, x.len()), &out, &want, 1e-5, 1e-6);

        let mut dx = std::vec![0.0; x.len()];
        k.gelu_backward(&x, &std::vec![1.0; x.len()], &mut dx)
            .unwrap();
        let want: Vec<f64> = x
            .iter()
            .map(|&v| numerical_gradient(&[v as f64], |x| gelu64(x[0]))[0])
            .collect();
        close64(&ctx("gelu_backward", name, x.len()), &dx, &want, 1e-4, 1e-5);
    }
}

#[test]
fn cross_entropy_matches_definition_and_finite_differences() {
    let mut rng = Rng::new(23);
    for (name, k) in every_kernel() {
        for classes in [1, 2, 9, 33] {
            let rows = 3;
            let logits = rng.vec(rows * classes, -5.0, 5.0);
            let targets: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
            let mut losses = std::vec![0.0; rows];
            let mut d = std::vec![0.0; rows * classes];
            let scale = 1.0 / rows as f32;
            k.cross_entropy(&logits, classes, &targets, &mut losses, Some(&mut d), scale)
                .unwrap();
            let logits64 = widen(&logits);
            let what = ctx("cross_entropy", name, classes);
            let mean_loss = losses.iter().sum::<f32>() as f64 / rows as f64;
            let want = cross_entropy64(&logits64, classes, &targets);
            assert!(
                (mean_loss - want).abs() < 1e-5 * want.abs().max(1.0),
                "{what}"
            );
            let grad = numerical_gradient(&logits64, |l| cross_entropy64(l, classes, &targets));
            close64(&what, &d, &grad, 1e-3, 1e-6);
        }
    }
}

#[test]
fn adamw_matches_definition() {
    let opt = AdamW {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    for (name, k) in every_kernel() {
        let (mut p, mut m, mut v) = (
            std::vec![0.5f32; 19],
            std::vec![0.0f32; 19],
            std::vec![0.0f32; 19],
        );
        let (mut p64, mut m64, mut v64) = (0.5f64, 0.0f64, 0.0f64);
        for step in 1..=5u32 {
            let g = 0.3 * step as f32 - 0.7;
            k.adamw_step(&opt, step, 2.0, &mut p, &std::vec![g; 19], &mut m, &mut v)
                .unwrap();
            let g = 2.0 * g as f64;
            m64 = 0.9 * m64 + 0.1 * g;
            v64 = 0.95 * v64 + 0.05 * g * g;
            let m_hat = m64 / (1.0 - 0.9f64.powi(step as i32));
            let v_hat = v64 / (1.0 - 0.95f64.powi(step as i32));
            p64 -= 1e-2 * (m_hat / (v_hat.sqrt() + 1e-8) + 0.1 * p64);
        }
        close64(&ctx("adamw", name, 19), &p, &std::vec![p64; 19], 1e-5, 1e-6);
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
