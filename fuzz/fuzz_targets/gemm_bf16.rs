//! The bf16 GEMM on arbitrary shapes (bounded), transposes, strides, alpha,
//! beta and values, with f32 or bf16 operands: never a panic; a short
//! workspace refused; f32 and bf16 operands holding the same values give
//! the same bits; the same bits when the pieces run in another order; the
//! result within the rounding bound of an f64 triple loop over the
//! bf16-rounded operands.

#![no_main]

use arbitrary::{Result, Unstructured};
use kernels::{Bf16, KernelError, MatMut, Sequential};
use kernels_fuzz::{backends, len, Reversed, Stored};
use libfuzzer_sys::fuzz_target;

fn rounded(x: f32) -> f64 {
    f64::from(Bf16::from_f32(x).to_f32())
}

/// C, `m × n` with `stride`, over `data`.
fn c_view(data: &mut [f32], m: usize, n: usize, stride: usize) -> MatMut<'_> {
    MatMut::strided(data, m, n, stride).unwrap()
}

fn run(u: &mut Unstructured) -> Result<()> {
    let (best, _) = backends();
    let (m, n, k) = (len(u, 40)?, len(u, 40)?, len(u, 200)?);
    let (ta, tb): (bool, bool) = (u.arbitrary()?, u.arbitrary()?);
    let alpha = [1.0, -0.5, 0.0, 2.0][len(u, 3)?];
    let beta = [0.0, 1.0, 0.25, -1.0][len(u, 3)?];
    let a = if ta {
        Stored::new(u, k, m)?
    } else {
        Stored::new(u, m, k)?
    };
    let b = if tb {
        Stored::new(u, n, k)?
    } else {
        Stored::new(u, k, n)?
    };
    let a16: Vec<Bf16> = a.data.iter().map(|&x| Bf16::from_f32(x)).collect();
    let b16: Vec<Bf16> = b.data.iter().map(|&x| Bf16::from_f32(x)).collect();
    let c = Stored::new(u, m, n)?;
    let (stride, mut c0) = (c.stride, c.data);
    if beta == 0.0 {
        c0.iter_mut().for_each(|v| *v = f32::NAN);
    }

    let needed = best.gemm_bf16_workspace_len(m, n, k);
    let mut ws = vec![f32::NAN; needed];
    if needed > 0 {
        let mut c = c0.clone();
        let short = &mut ws[..needed - 1];
        let err = best.gemm_bf16(
            alpha,
            a.view(ta),
            b.view(tb),
            beta,
            c_view(&mut c, m, n, stride),
            short,
        );
        assert!(matches!(err, Err(KernelError::WorkspaceTooSmall { .. })));
        assert!(c.iter().zip(&c0).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
    let mut from_f32 = c0.clone();
    let mut from_bf16 = c0.clone();
    let mut split = c0.clone();
    let cv = c_view(&mut from_f32, m, n, stride);
    best.gemm_bf16_with(
        &Sequential,
        alpha,
        a.view(ta),
        b.view(tb),
        beta,
        cv,
        &mut ws,
    )
    .unwrap();
    let cv = c_view(&mut from_bf16, m, n, stride);
    let (av, bv) = (a.view_of(&a16, ta), b.view_of(&b16, tb));
    best.gemm_bf16(alpha, av, bv, beta, cv, &mut ws).unwrap();
    let cv = c_view(&mut split, m, n, stride);
    let threads = 1 + len(u, 3)?;
    best.gemm_bf16_with(&Reversed(threads), alpha, av, b.view(tb), beta, cv, &mut ws)
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&from_f32),
        bits(&from_bf16),
        "f32 and bf16 operands differ"
    );
    assert_eq!(
        bits(&from_f32),
        bits(&split),
        "the split changed the result"
    );

    let op_a = |i, l| rounded(if ta { a.at(l, i) } else { a.at(i, l) });
    let op_b = |l, j| rounded(if tb { b.at(j, l) } else { b.at(l, j) });
    let u = f64::from(f32::EPSILON) / 2.0;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut mag) = (0.0, 0.0);
            for l in 0..k {
                sum += op_a(i, l) * op_b(l, j);
                mag += (op_a(i, l) * op_b(l, j)).abs();
            }
            let c_term = if beta == 0.0 {
                0.0
            } else {
                f64::from(beta) * f64::from(c0[i * stride + j])
            };
            let want = f64::from(alpha) * sum + c_term;
            let tol =
                2.0 * (k as f64 + 2.0) * u * (f64::from(alpha).abs() * mag + c_term.abs()) + 1e-30;
            let got = f64::from(from_f32[i * stride + j]);
            assert!(
                (got - want).abs() <= tol,
                "C[{i}][{j}] = {got}, want {want} ± {tol}"
            );
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
