//! Wrong lengths and shapes return `KernelError` and write nothing; forcing
//! a backend the CPU lacks is refused.

use super::*;
use crate::{Bf16Unit, KernelError, ValidLen};

fn mismatch(arg: &'static str) -> impl Fn(&KernelError) -> bool {
    move |e| matches!(e, KernelError::LengthMismatch { arg: a, .. } if *a == arg)
}

/// The argument named wrong; x, mean, rstd, dout; and the lengths of dx,
/// dgamma, dbeta.
type LayerNormBackwardCase<'a> = (
    &'static str,
    &'a [f32],
    &'a [f32],
    &'a [f32],
    &'a [f32],
    usize,
    usize,
    usize,
);

#[test]
fn wrong_lengths_are_errors_and_write_nothing() {
    let mut all = simd_kernels();
    all.push(("scalar", scalar()));
    for (name, k) in all {
        let (a, b) = ([1.0f32; 9], [2.0f32; 8]);
        let mut out = [f32::NAN; 9];
        let err = k.add(&a, &b, &mut out).unwrap_err();
        assert!(mismatch("b")(&err), "{name}: {err}");
        assert!(out.iter().all(|v| v.is_nan()), "{name}: add wrote on error");
        assert!(mismatch("out")(&k.mul(&a, &a, &mut [0.0; 8]).unwrap_err()));
        assert!(mismatch("y")(&k.axpy(1.0, &a, &mut [0.0; 10]).unwrap_err()));
        assert!(mismatch("b")(&k.dot(&a, &b).unwrap_err()));
        assert!(mismatch("x")(
            &k.add_bias(&[1.0; 4], &mut [0.0; 9]).unwrap_err()
        ));
        assert!(mismatch("dst")(&k.copy(&a, &mut [0.0; 3]).unwrap_err()));
        assert!(mismatch("out")(&k.exp(&a, &mut [0.0; 3]).unwrap_err()));

        // softmax: ragged rows, bad per-row lengths
        let mut x = [0.5f32; 10];
        assert!(mismatch("x")(
            &k.softmax_rows(&mut x, 4, ValidLen::All).unwrap_err()
        ));
        assert!(mismatch("lens")(
            &k.softmax_rows(&mut x, 5, ValidLen::PerRow(&[1]))
                .unwrap_err()
        ));
        let err = k
            .softmax_rows(&mut x, 5, ValidLen::PerRow(&[1, 6]))
            .unwrap_err();
        assert!(matches!(err, KernelError::InvalidShape(_)), "{name}: {err}");
        assert!(
            x.iter().all(|&v| v == 0.5),
            "{name}: softmax wrote on error"
        );
        assert!(matches!(
            k.softmax_rows(&mut x, 0, ValidLen::All).unwrap_err(),
            KernelError::InvalidShape(_)
        ));

        // layer norm
        let (mut o, mut m, mut r) = ([0.0; 8], [0.0; 2], [0.0; 2]);
        let err = k.layer_norm_forward(&a[..8], &[1.0; 4], &[0.0; 3], 1e-5, &mut o, &mut m, &mut r);
        assert!(mismatch("beta")(&err.unwrap_err()));
        let err = k.layer_norm_forward(
            &a[..8],
            &[1.0; 4],
            &[0.0; 4],
            1e-5,
            &mut o,
            &mut m[..1],
            &mut r,
        );
        assert!(mismatch("mean")(&err.unwrap_err()));
        for eps in [-1e-5, f32::NAN, f32::INFINITY] {
            let (mut o, mut m, mut r) = ([f32::NAN; 8], [f32::NAN; 2], [f32::NAN; 2]);
            let err = k
                .layer_norm_forward(&a[..8], &[1.0; 4], &[0.0; 4], eps, &mut o, &mut m, &mut r)
                .unwrap_err();
            assert!(
                matches!(err, KernelError::InvalidArgument(_)),
                "{name}: eps {eps}: {err}"
            );
            assert!(
                o.iter().chain(&m).chain(&r).all(|v| v.is_nan()),
                "{name}: layer norm wrote on error"
            );
        }
        // Layer norm backward: each argument of the wrong length (x
        // ragged), nothing written.
        let x8 = &a[..8];
        let (m2, r2, d8) = ([0.0f32; 2], [1.0f32; 2], [1.0f32; 8]);
        let cases: [LayerNormBackwardCase; 8] = [
            ("x", &a, &m2, &r2, &a, 9, 4, 4),
            ("mean", x8, &m2[..1], &r2, &d8, 8, 4, 4),
            ("rstd", x8, &m2, &[1.0; 3], &d8, 8, 4, 4),
            ("dout", x8, &m2, &r2, &a, 8, 4, 4),
            ("dx", x8, &m2, &r2, &d8, 7, 4, 4),
            ("dgamma", x8, &m2, &r2, &d8, 8, 5, 4),
            ("dbeta", x8, &m2, &r2, &d8, 8, 4, 3),
            ("dbeta", x8, &m2, &r2, &d8, 8, 4, 0),
        ];
        for (arg, x, mean, rstd, dout, dx_len, dg_len, db_len) in cases {
            let (mut dx, mut dg, mut db) = ([f32::NAN; 9], [f32::NAN; 5], [f32::NAN; 4]);
            let err = k.layer_norm_backward(
                x,
                &[1.0; 4],
                mean,
                rstd,
                dout,
                &mut dx[..dx_len],
                &mut dg[..dg_len],
                &mut db[..db_len],
            );
            let err = err.unwrap_err();
            assert!(mismatch(arg)(&err), "{name}: {arg}: {err}");
            let all = dx.iter().chain(&dg).chain(&db);
            assert!(all.into_iter().all(|v| v.is_nan()), "{name}: {arg}: wrote");
        }

        // The other element-wise routines: sub, tanh, GELU and its
        // gradients, nothing written.
        let mut out = [f32::NAN; 9];
        assert!(mismatch("b")(&k.sub(&a, &b, &mut out).unwrap_err()));
        assert!(mismatch("out")(&k.sub(&a, &a, &mut out[..8]).unwrap_err()));
        assert!(mismatch("out")(&k.tanh(&a, &mut out[..8]).unwrap_err()));
        assert!(mismatch("out")(
            &k.gelu_forward(&a, &mut out[..8]).unwrap_err()
        ));
        assert!(mismatch("dout")(
            &k.gelu_backward(&a, &b, &mut out).unwrap_err()
        ));
        assert!(mismatch("dx")(
            &k.gelu_backward(&a, &a, &mut out[..8]).unwrap_err()
        ));
        assert!(mismatch("dout")(
            &k.gelu_backward_into(&a, &b, &mut out).unwrap_err()
        ));
        assert!(mismatch("dx")(
            &k.gelu_backward_into(&a, &a, &mut out[..8]).unwrap_err()
        ));
        assert!(out.iter().all(|v| v.is_nan()), "{name}: wrote on error");

        // Softmax backward: grad of another length, ragged rows, bad
        // per-row lengths, nothing written.
        let probs = [0.25f32; 10];
        let mut grad = [f32::NAN; 10];
        assert!(mismatch("grad")(
            &k.softmax_backward_rows(&probs, &mut grad[..9], 5, ValidLen::All)
                .unwrap_err()
        ));
        assert!(mismatch("probs")(
            &k.softmax_backward_rows(&probs, &mut grad, 4, ValidLen::All)
                .unwrap_err()
        ));
        assert!(mismatch("lens")(
            &k.softmax_backward_rows(&probs, &mut grad, 5, ValidLen::PerRow(&[1]))
                .unwrap_err()
        ));
        let err = k
            .softmax_backward_rows(&probs, &mut grad, 5, ValidLen::PerRow(&[1, 6]))
            .unwrap_err();
        assert!(matches!(err, KernelError::InvalidShape(_)), "{name}: {err}");
        assert!(grad.iter().all(|v| v.is_nan()), "{name}: wrote on error");

        // cross-entropy: target out of range is reported, nothing written
        let mut losses = [f32::NAN; 2];
        let err = k
            .cross_entropy(&[0.0; 8], 4, &[1, 4], &mut losses, None, 1.0)
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::IndexOutOfRange {
                row: 1,
                index: 4,
                classes: 4
            }
        );
        assert!(losses.iter().all(|v| v.is_nan()));
        assert!(mismatch("targets")(
            &k.cross_entropy(&[0.0; 8], 4, &[1], &mut losses, None, 1.0)
                .unwrap_err()
        ));
        let err = k.cross_entropy(&[0.0; 8], 4, &[1, 2], &mut losses, Some(&mut [0.0; 7]), 1.0);
        assert!(mismatch("dlogits")(&err.unwrap_err()));

        // AdamW
        let (mut p, mut mm, mut v) = ([0.0; 4], [0.0; 4], [0.0; 3]);
        let opt = crate::AdamW::default();
        assert!(mismatch("v")(
            &k.adamw_step(&opt, 1, 1.0, &mut p, &[0.0; 4], &mut mm, &mut v)
                .unwrap_err()
        ));
        let err = k
            .adamw_step(&opt, 0, 1.0, &mut p, &[0.0; 4], &mut mm, &mut [0.0; 4])
            .unwrap_err();
        assert!(matches!(err, KernelError::InvalidArgument(_)));
        // Settings that would write NaN into every parameter.
        let settings: [fn(&mut crate::AdamW, &mut f32); 8] = [
            |o, _| o.beta1 = 1.0,
            |o, _| o.beta2 = 1.0,
            |o, _| o.beta1 = -0.1,
            |o, _| o.beta2 = f32::NAN,
            |o, _| o.eps = 0.0,
            |o, _| o.lr = f32::NAN,
            |o, _| o.weight_decay = f32::INFINITY,
            |_, grad_scale| *grad_scale = f32::NAN,
        ];
        for set in settings {
            let (mut opt, mut scale) = (crate::AdamW::default(), 1.0);
            set(&mut opt, &mut scale);
            let (mut p, mut v) = ([1.0; 4], [0.0; 4]);
            let err = k.adamw_step(&opt, 1, scale, &mut p, &[0.5; 4], &mut mm, &mut v);
            let err = err.unwrap_err();
            assert!(matches!(err, KernelError::InvalidArgument(_)), "{opt:?}");
            assert_eq!(p, [1.0; 4], "{opt:?}, {scale}: nothing written");
        }

        // transpose: short buffers, stride shorter than a row, overflow
        let mut dst = [0.0; 6];
        assert!(mismatch("src")(
            &k.transpose(2, 3, &a[..5], 3, &mut dst, 2).unwrap_err()
        ));
        assert!(mismatch("dst")(
            &k.transpose(2, 3, &a[..6], 3, &mut dst[..5], 2).unwrap_err()
        ));
        assert!(matches!(
            k.transpose(2, 3, &a, 2, &mut dst, 2).unwrap_err(),
            KernelError::InvalidShape(_)
        ));
        let err = k.transpose(usize::MAX, 2, &a, usize::MAX / 2, &mut dst, usize::MAX);
        assert_eq!(err.unwrap_err(), KernelError::ShapeOverflow);
    }
}

#[test]
fn empty_inputs_are_fine() {
    for (_, k) in simd_kernels() {
        k.add(&[], &[], &mut []).unwrap();
        assert_eq!(k.sum(&[]), 0.0);
        assert_eq!(k.dot(&[], &[]).unwrap(), 0.0);
        k.softmax_rows(&mut [], 0, ValidLen::All).unwrap();
        k.softmax_rows(&mut [], 7, ValidLen::All).unwrap();
        k.layer_norm_forward::<f32>(&[], &[], &[], 1e-5, &mut [], &mut [], &mut [])
            .unwrap();
        k.cross_entropy(&[], 5, &[], &mut [], None, 1.0).unwrap();
        k.cross_entropy(&[], 0, &[], &mut [], Some(&mut []), 1.0)
            .unwrap();
        k.transpose(0, 5, &[], 5, &mut [0.0; 0], 0).unwrap();
        // No columns: returns at once, however many rows of nothing.
        k.transpose(usize::MAX, 0, &[], 0, &mut [], 0).unwrap();
    }
}

#[test]
fn forcing_an_unsupported_backend_is_refused() {
    // Simulate CPUs that lack the wider instruction sets.
    // SAFETY: each claim is refused or runs only the scalar backend.
    let on = |backend, detected| unsafe { Kernels::new_on(backend, detected, Bf16Unit::Portable) };
    assert_eq!(
        on(Backend::Avx2, Backend::Scalar).unwrap_err(),
        KernelError::UnsupportedBackend(Backend::Avx2)
    );
    assert_eq!(
        on(Backend::Avx512, Backend::Avx2).unwrap_err(),
        KernelError::UnsupportedBackend(Backend::Avx512)
    );
    assert!(on(Backend::Scalar, Backend::Scalar).is_ok());
    // And on this CPU: every backend is either usable or refused.
    for backend in Backend::ALL {
        match Kernels::new(backend) {
            Ok(k) => assert_eq!(k.backend(), backend),
            Err(e) => {
                std::eprintln!("notice: {backend} is refused on this CPU: {e}");
                assert_eq!(e, KernelError::UnsupportedBackend(backend));
                assert!(!backend.is_supported());
            }
        }
    }
    assert_eq!("AVX2".parse::<Backend>(), Ok(Backend::Avx2));
    assert_eq!("neon".parse::<Backend>(), Err(KernelError::UnknownBackend));
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "2^28 rounds of unoptimized code: run with --release"
)]
fn a_peak_loop_runs_a_bounded_number_of_rounds() {
    // usize::MAX rounds would take centuries; the loop stops at the cap
    // and counts only the rounds it ran (12 chains, 2 operations per lane).
    let k = crate::Kernels::best();
    let per_round = 12 * k.backend().lanes() as u64 * 2;
    let flops = k.fma_peak_loop(usize::MAX);
    assert_eq!(flops, crate::PEAK_LOOP_MAX_ITERS as u64 * per_round);
}
