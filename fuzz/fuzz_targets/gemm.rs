//! SGEMM on arbitrary shapes (bounded), transposes, strides, alpha, beta
//! and values: never a panic; the result within the rounding bound of an
//! f64 triple loop; the same bits when the pieces run in another order.

#![no_main]

use arbitrary::{Result, Unstructured};
use kernels::{KernelError, MatMut, Sequential};
use kernels_fuzz::{backends, len, Reversed, Stored};
use libfuzzer_sys::fuzz_target;

fn run(u: &mut Unstructured) -> Result<()> {
    let (best, _) = backends();
    let (m, n, k) = (len(u, 70)?, len(u, 70)?, len(u, 400)?);
    let (m, n) = if u.ratio(1, 8)? { (m + 150, n) } else { (m, n) };
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
    let mut c = Stored::new(u, m, n)?;
    if beta == 0.0 {
        c.data.iter_mut().for_each(|v| *v = f32::NAN);
    }
    let c0 = c.data.clone();

    // A workspace one float short is refused, and C is untouched.
    let needed = best.gemm_workspace_len(m, n, k);
    if needed > 0 {
        let mut short = vec![0.0; needed - 1];
        let cv = MatMut::strided(&mut c.data, m, n, c.stride).unwrap();
        let err = best.gemm(alpha, a.view(ta), b.view(tb), beta, cv, &mut short);
        assert!(matches!(err, Err(KernelError::WorkspaceTooSmall { .. })));
        assert!(c
            .data
            .iter()
            .zip(&c0)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    let mut ws = vec![f32::NAN; needed];
    let mut again = c.data.clone();
    let cv = MatMut::strided(&mut c.data, m, n, c.stride).unwrap();
    best.gemm_with(
        &Sequential,
        alpha,
        a.view(ta),
        b.view(tb),
        beta,
        cv,
        &mut ws,
    )
    .unwrap();
    let threads = 1 + len(u, 3)?;
    let cv = MatMut::strided(&mut again, m, n, c.stride).unwrap();
    best.gemm_with(
        &Reversed(threads),
        alpha,
        a.view(ta),
        b.view(tb),
        beta,
        cv,
        &mut ws,
    )
    .unwrap();
    assert!(
        c.data
            .iter()
            .zip(&again)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "split into pieces changed the result"
    );

    let op_a = |i, l| f64::from(if ta { a.at(l, i) } else { a.at(i, l) });
    let op_b = |l, j| f64::from(if tb { b.at(j, l) } else { b.at(l, j) });
    let u = f64::from(f32::EPSILON) / 2.0;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut mag) = (0.0, 0.0);
            for l in 0..k {
                sum += op_a(i, l) * op_b(l, j);
                mag += (op_a(i, l) * op_b(l, j)).abs();
            }
            let old = f64::from(c0[i * c.stride + j]);
            let (c_term, c_mag) = if beta == 0.0 {
                (0.0, 0.0)
            } else {
                (f64::from(beta) * old, (f64::from(beta) * old).abs())
            };
            let want = f64::from(alpha) * sum + c_term;
            let tol = 2.0 * (k as f64 + 2.0) * u * (f64::from(alpha).abs() * mag + c_mag) + 1e-30;
            let got = f64::from(c.at(i, j));
            assert!(
                (got - want).abs() <= tol,
                "C[{i}][{j}] = {got}, want {want} ± {tol}"
            );
        }
    }
    // Padding between rows of C is never written.
    for (idx, (x, y)) in c.data.iter().zip(&c0).enumerate() {
        if idx % c.stride.max(1) >= n {
            assert_eq!(x.to_bits(), y.to_bits(), "wrote between rows of C at {idx}");
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
