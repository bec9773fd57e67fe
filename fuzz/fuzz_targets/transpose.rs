//! Transpose: arbitrary shapes and strides (inconsistent ones included) and
//! buffer lengths; the best backend must match scalar exactly.
#![no_main]

use arbitrary::Unstructured;
use kernels_fuzz::{assert_close, backends, len, values};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});

fn run(u: &mut Unstructured) -> arbitrary::Result<()> {
    let (k, scalar) = backends();
    let rows = len(u, 70)?;
    let cols = len(u, 70)?;
    let src_stride = cols + len(u, 5)?;
    let dst_stride = rows + len(u, 5)?;
    // Strides shorter than a row or overflowing shapes must be refused.
    let (src_stride, dst_stride) = match u.int_in_range(0u8..=15)? {
        0 => (src_stride.saturating_sub(len(u, 6)?), dst_stride),
        1 => (usize::MAX / 2, dst_stride),
        _ => (src_stride, dst_stride),
    };
    let src_len = (rows * src_stride.min(100)).saturating_sub(len(u, 2)?);
    let src = values(u, src_len.min(8000))?;
    let dst_len = (cols * dst_stride).saturating_sub(len(u, 2)?);
    let (mut got, mut want) = (vec![1.5; dst_len], vec![1.5; dst_len]);
    let r1 = k.transpose(rows, cols, &src, src_stride, &mut got, dst_stride);
    let r2 = scalar.transpose(rows, cols, &src, src_stride, &mut want, dst_stride);
    assert_eq!(r1, r2);
    assert_close("transpose", &got, &want, 0.0, 0.0);
    Ok(())
}
