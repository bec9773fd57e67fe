//! The CBLAS `sgemm` call both BLAS peers of the GEMM comparison answer
//! (OpenBLAS linked, MKL loaded at run time), made once for a benchmark
//! shape.

use std::os::raw::c_int;

use crate::shapes::Shape;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// `cblas_sgemm` of `cblas.h`.
pub type Sgemm = unsafe extern "C" fn(
    layout: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);

/// `C = op(A)·op(B)` for one benchmark shape (contiguous row-major
/// operands, as [`Shape::stored`] gives them) through a library's
/// `cblas_sgemm`.
///
/// # Safety
/// `sgemm` is a CBLAS `cblas_sgemm`.
pub unsafe fn sgemm(sgemm: Sgemm, s: &Shape, a: &[f32], b: &[f32], c: &mut [f32]) {
    let ((ar, ac), (br, bc)) = s.stored();
    assert!(a.len() >= ar * ac && b.len() >= br * bc && c.len() >= s.m * s.n);
    let t = |yes| if yes { TRANS } else { NO_TRANS };
    // SAFETY: `sgemm` is a cblas_sgemm (the caller's contract); the
    // operands are row-major with leading dimensions equal to their stored
    // widths, inside the buffers (checked above), and C is m × n.
    unsafe {
        sgemm(
            ROW_MAJOR,
            t(s.trans_a),
            t(s.trans_b),
            s.m as c_int,
            s.n as c_int,
            s.k as c_int,
            1.0,
            a.as_ptr(),
            ac as c_int,
            b.as_ptr(),
            bc as c_int,
            0.0,
            c.as_mut_ptr(),
            s.n as c_int,
        )
    }
}
