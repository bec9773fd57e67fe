//! SGEMM on arbitrary shapes (bounded), transposes, strides, alpha, beta,
//! values, cache blockings, A packed or not and C streamed or not: never a
//! panic; the result within the rounding bound of an f64 triple loop; the
//! same bits when the pieces run in another order; the bias form the bits
//! of the product and the bias added after it.

#![no_main]

use arbitrary::{Result, Unstructured};
use kernels::{KernelError, Sequential};
use kernels_fuzz::{backends, len, same_bits, values, Product, Reversed};
use libfuzzer_sys::fuzz_target;

fn run(u: &mut Unstructured) -> Result<()> {
    let (derived, _) = backends();
    // Half the inputs run a blocking of their own (whole tiles, any depth,
    // either order of the tiles, every C written once streamed past the
    // caches or none).
    let b = derived.gemm_blocking();
    let best = if u.arbitrary()? {
        let mc = b.mr * (1 + len(u, 8)?);
        let nc = b.nr * (1 + len(u, 4)?);
        // A packed always or never (whatever its strides say).
        let a_lines = if u.arbitrary()? { 0 } else { usize::MAX };
        derived
            .with_gemm_blocking(mc, 1 + len(u, 500)?, nc)
            .unwrap()
            .with_gemm_a_packing(a_lines, 0)
            .with_gemm_b_sweep(1 + len(u, 3)?)
            .with_gemm_stream_c(if u.arbitrary()? { 0 } else { usize::MAX })
    } else {
        derived
    };
    let p = Product::new(u, (70, 70, 400), 150)?;
    let (a, b) = (p.a.view(p.ta), p.b.view(p.tb));
    let (alpha, beta) = (p.alpha, p.beta);

    // A workspace one float short is refused, and C is untouched.
    let needed = best.gemm_workspace_len(p.m, p.n, p.k);
    if needed > 0 {
        let mut short = vec![0.0; needed - 1];
        let err = p.refused(|c| best.gemm(alpha, a, b, beta, c, &mut short));
        assert!(matches!(err, KernelError::WorkspaceTooSmall { .. }));
    }

    let mut ws = vec![f32::NAN; needed];
    let once = p.computed(|c| best.gemm_with(&Sequential, alpha, a, b, beta, c, &mut ws));
    let threads = 1 + len(u, 3)?;
    let again = p.computed(|c| best.gemm_with(&Reversed(threads), alpha, a, b, beta, c, &mut ws));
    assert!(
        same_bits(&once, &again),
        "split into pieces changed the result"
    );
    p.check(&once, f64::from);

    // A linear layer's `C = A·B + bias`: the bits of the product with
    // alpha 1 and beta 0 and the bias added after it, the padding between
    // C's rows kept; a bias of another length refused.
    let bias = values(u, p.n)?;
    let mut after = p.computed(|c| best.gemm_with(&Sequential, 1.0, a, b, 0.0, c, &mut ws));
    for (i, x) in after.iter_mut().enumerate() {
        let column = i % p.c.stride.max(1);
        if column < p.n {
            *x += bias[column];
        }
    }
    let fused = p.computed(|c| best.gemm_bias_with(&Reversed(threads), a, b, &bias, c, &mut ws));
    assert!(
        same_bits(&fused, &after),
        "the bias added as C is stored differs"
    );
    if p.n > 0 {
        let err = p.refused(|c| best.gemm_bias_with(&Sequential, a, b, &bias[1..], c, &mut ws));
        assert!(matches!(err, KernelError::LengthMismatch { .. }));
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
