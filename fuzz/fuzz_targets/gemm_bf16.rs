//! The bf16 GEMM on arbitrary shapes (bounded), transposes, strides, alpha,
//! beta and values, with f32 or bf16 operands: never a panic; a short
//! workspace refused; f32 and bf16 operands holding the same values give
//! the same bits; the same bits when the pieces run in another order; the
//! result within the rounding bound of an f64 triple loop over the
//! bf16-rounded operands.

#![no_main]

use arbitrary::{Result, Unstructured};
use kernels::{Bf16, KernelError, PackedBf16, Sequential};
use kernels_fuzz::{backends, len, same_bits, values, Product, Reversed};
use libfuzzer_sys::fuzz_target;

fn run(u: &mut Unstructured) -> Result<()> {
    let (best, _) = backends();
    // Half the inputs store every C written once past the caches.
    let best = if u.arbitrary()? {
        best.with_gemm_stream_c(0)
    } else {
        best
    };
    // Up to 130 columns: five panels of 32, so the portable unit's few-rows
    // kernel meets a group of panels run at once, a single one and a part.
    let p = Product::new(u, (40, 130, 200), 0)?;
    let (a, b) = (p.a.view(p.ta), p.b.view(p.tb));
    let a16: Vec<Bf16> = p.a.data.iter().map(|&x| Bf16::from_f32(x)).collect();
    let b16: Vec<Bf16> = p.b.data.iter().map(|&x| Bf16::from_f32(x)).collect();
    let (a16, b16) = (p.a.view_of(&a16, p.ta), p.b.view_of(&b16, p.tb));
    let (alpha, beta) = (p.alpha, p.beta);

    let needed = best.gemm_bf16_workspace_len(p.m, p.n, p.k);
    let mut ws = vec![f32::NAN; needed];
    if needed > 0 {
        let short = &mut ws[..needed - 1];
        let err = p.refused(|c| best.gemm_bf16(alpha, a, b, beta, c, short));
        assert!(matches!(err, KernelError::WorkspaceTooSmall { .. }));
    }
    let from_f32 = p.computed(|c| best.gemm_bf16_with(&Sequential, alpha, a, b, beta, c, &mut ws));
    let from_bf16 = p.computed(|c| best.gemm_bf16(alpha, a16, b16, beta, c, &mut ws));
    let threads = 1 + len(u, 3)?;
    let split =
        p.computed(|c| best.gemm_bf16_with(&Reversed(threads), alpha, a16, b, beta, c, &mut ws));
    assert!(
        same_bits(&from_f32, &from_bf16),
        "f32 and bf16 operands differ"
    );
    assert!(same_bits(&from_f32, &split), "the split changed the result");

    let mut slots = vec![u32::MAX; PackedBf16::len(p.k, p.n).unwrap()];
    best.pack_bf16(b, &mut slots).unwrap();
    let packed = PackedBf16::new(&slots, p.k, p.n).unwrap();
    let mut packed_ws = vec![f32::NAN; best.gemm_bf16_packed_workspace_len(p.m, p.n, p.k)];
    let from_packed = p.computed(|c| {
        let exec = &Reversed(threads);
        best.gemm_bf16_packed_with(exec, alpha, a, packed, beta, c, &mut packed_ws)
    });
    assert!(
        same_bits(&from_f32, &from_packed),
        "packing B beforehand changed the result"
    );
    p.check(&from_f32, |x| f64::from(Bf16::from_f32(x).to_f32()));

    // A bf16 C holds the f32 C's values rounded once, the f32 C starting
    // from the same (widened) values; the padding between its rows stays.
    // (Not alpha 1 with beta 1, where AMX tiles start from an f32 C.)
    if !(alpha == 1.0 && beta == 1.0) {
        let start: Vec<Bf16> = p.c.data.iter().map(|&x| Bf16::from_f32(x)).collect();
        let mut wide: Vec<f32> = start.iter().map(|x| x.to_f32()).collect();
        let c = p.c_view(&mut wide);
        best.gemm_bf16_with(&Sequential, alpha, a, b, beta, c, &mut ws)
            .unwrap();
        let mut narrow = start.clone();
        let c = p.c_view(&mut narrow);
        best.gemm_bf16_with(&Reversed(threads), alpha, a16, b, beta, c, &mut ws)
            .unwrap();
        assert_rounded(&p, &narrow, &start, &wide, "bf16 C");
    }

    // A linear layer's `C = A·B + bias`: a bias of another length refused;
    // the same bits for any split and from B packed beforehand; a bf16 C
    // the f32 one rounded, the padding between its rows kept.
    let bias = values(u, p.n)?;
    if p.n > 0 {
        let err =
            p.refused(|c| best.gemm_bf16_bias_with(&Sequential, a, b, &bias[1..], c, &mut ws));
        assert!(matches!(err, KernelError::LengthMismatch { .. }));
    }
    let with_bias = p.computed(|c| best.gemm_bf16_bias_with(&Sequential, a, b, &bias, c, &mut ws));
    let split =
        p.computed(|c| best.gemm_bf16_bias_with(&Reversed(threads), a16, b, &bias, c, &mut ws));
    assert!(
        same_bits(&with_bias, &split),
        "the split changed the biased result"
    );
    let from_packed = p.computed(|c| {
        let exec = &Reversed(threads);
        best.gemm_bf16_packed_bias_with(exec, a, packed, &bias, c, &mut packed_ws)
    });
    assert!(
        same_bits(&with_bias, &from_packed),
        "packing B beforehand changed the biased result"
    );
    let start: Vec<Bf16> = p.c.data.iter().map(|&x| Bf16::from_f32(x)).collect();
    let mut narrow = start.clone();
    let c = p.c_view(&mut narrow);
    best.gemm_bf16_bias_with(&Reversed(threads), a, b16, &bias, c, &mut ws)
        .unwrap();
    assert_rounded(&p, &narrow, &start, &with_bias, "biased bf16 C");

    // A view of the packed B (rows from a multiple of 32 to one or to the
    // end, leading columns) multiplies as that part of B does.
    let start = 32 * len(u, p.k / 32)?;
    let end = if u.arbitrary()? {
        p.k
    } else {
        (start + 32 * len(u, 3)?).min(p.k / 32 * 32)
    };
    let (rows, cols) = (start..end.max(start), len(u, p.n)?);
    let view = packed
        .row_range(rows.clone())
        .unwrap()
        .first_columns(cols)
        .unwrap();
    let op_b = |r: usize, c: usize| if p.tb { p.b.at(c, r) } else { p.b.at(r, c) };
    let part: Vec<f32> = rows
        .clone()
        .flat_map(|r| (0..cols).map(move |c| op_b(r, c)))
        .collect();
    let a_part = values(u, p.m * rows.len())?;
    let a_part = kernels::MatRef::new(&a_part, p.m, rows.len()).unwrap();
    let part = kernels::MatRef::new(&part, rows.len(), cols).unwrap();
    let mut want = vec![f32::NAN; p.m * cols];
    let mut got = vec![f32::NAN; p.m * cols];
    let mut ws = vec![0.0; best.gemm_bf16_workspace_len(p.m, cols, rows.len())];
    let c = kernels::MatMut::new(&mut want, p.m, cols).unwrap();
    best.gemm_bf16(1.0, a_part, part, 0.0, c, &mut ws).unwrap();
    let mut ws = vec![0.0; best.gemm_bf16_packed_workspace_len(p.m, cols, rows.len())];
    let c = kernels::MatMut::new(&mut got, p.m, cols).unwrap();
    best.gemm_bf16_packed(1.0, a_part, view, 0.0, c, &mut ws)
        .unwrap();
    assert!(same_bits(&got, &want), "a view of packed B differs");
    Ok(())
}

/// Asserts that the bf16 C `got` (`before` the product) holds the f32 C
/// `wide` rounded once inside C, and `before` in the padding between rows.
fn assert_rounded(p: &Product, got: &[Bf16], before: &[Bf16], wide: &[f32], what: &str) {
    for (i, (&got, &before)) in got.iter().zip(before).enumerate() {
        let inside = i % p.c.stride.max(1) < p.n;
        let want = if inside {
            Bf16::from_f32(wide[i])
        } else {
            before
        };
        assert_eq!(got.to_bits(), want.to_bits(), "{what}, element {i}");
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
