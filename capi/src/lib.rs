//! The C ABI of `kernels` (`include/kernels.h`, generated from this file by
//! cbindgen): every symbol starts with `kn_` (types, functions) or `KN_`
//! (constants).
//!
//! Conventions:
//! - every routine returns a status: `KN_OK` (0) or a negative `KN_ERR_*`
//!   code, which `kn_status_message` turns into a static string; an
//!   output is never written when an error is returned (but for
//!   `KN_ERR_INTERNAL`, a bug, which may come after part of one was);
//! - buffers are a pointer and a length in elements (`size_t`); a pointer
//!   may be NULL only with length 0; outputs must not overlap inputs;
//! - every buffer passed, outputs and workspace included, holds
//!   initialized values (`calloc`, or written once): the library reads
//!   them as Rust slices, which must not cover uninitialized memory;
//! - a strided matrix is the whole span from its first element to its
//!   last, the padding between its rows included: for the call, an
//!   output's span is the routine's alone (no other thread may touch the
//!   padding either) and an input's must not change;
//! - a routine runs on the backend it is given (`KN_BACKEND_*`), refused
//!   with `KN_ERR_UNSUPPORTED` when this CPU lacks it;
//! - threads belong to the host: routines that split their work take a
//!   `kn_executor` (NULL: the calling thread), and their results do not
//!   depend on it;
//! - routines may run on several threads at once, each call's outputs its
//!   own; the first call that looks at the CPU asks Linux, once for the
//!   process, for AMX tile data (`arch_prctl`), and where it is refused
//!   bf16 products run on a slower unit (`kn_bf16_unit` says which);
//! - no panic crosses the boundary: each entry point that looks at the
//!   CPU or runs a routine runs under `catch_unwind` and returns
//!   `KN_ERR_INTERNAL` if one ever happened (the others return constants).

#![warn(missing_docs)]
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use kernels::{
    AdamW, Backend, Bf16, Bf16Unit, Executor, KernelError, Kernels, MatMut, MatRef, PackedBf16,
    Sequential, ValidLen,
};

/// Version of this ABI; it changes on any incompatible change.
pub const KN_ABI_VERSION: u32 = 1;

/// Success.
pub const KN_OK: i32 = 0;
/// A required pointer was NULL: a buffer's with a nonzero length, an
/// output's, or a callback's.
pub const KN_ERR_NULL_POINTER: i32 = -1;
/// A buffer's length does not match the shape.
pub const KN_ERR_LENGTH: i32 = -2;
/// A shape or stride is inconsistent, or overflows `size_t`.
pub const KN_ERR_SHAPE: i32 = -3;
/// An argument is out of its domain (misaligned pointer, a buffer of more
/// than `PTRDIFF_MAX` bytes, overlapping buffers, unknown backend or flag).
pub const KN_ERR_ARGUMENT: i32 = -4;
/// This CPU (or OS) cannot run the requested backend.
pub const KN_ERR_UNSUPPORTED: i32 = -5;
/// The workspace is shorter than the routine needs.
pub const KN_ERR_WORKSPACE: i32 = -6;
/// An index (a target class) is out of range.
pub const KN_ERR_INDEX: i32 = -7;
/// A bug in the library (it never panics on caller input); please report.
pub const KN_ERR_INTERNAL: i32 = -8;

/// The portable scalar reference.
pub const KN_BACKEND_SCALAR: i32 = 0;
/// AVX2 + FMA.
pub const KN_BACKEND_AVX2: i32 = 1;
/// AVX-512F.
pub const KN_BACKEND_AVX512: i32 = 2;

/// A bfloat16 stored as its 16 bits (the high half of an f32).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct kn_bf16 {
    /// The sign, exponent and top 7 mantissa bits of the f32.
    pub bits: u16,
}

/// The host's threads: `parallel_for(ctx, n, fn, fn_ctx)` must call
/// `fn(fn_ctx, i)` exactly once for each `i` in `0..n`, in any order and
/// possibly concurrently, and return when all calls have returned; it must
/// not throw (a C++ exception must not unwind through the library). `n` is
/// at least 1.
/// `threads` is how many can run at once (0 is read as 1). A routine calls
/// `parallel_for` only from the thread that called the routine, one call
/// at a time, so `ctx` needs no locking for that; the host makes its own
/// threads' use of `ctx` safe.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct kn_executor {
    /// The host's pool, passed back to `parallel_for` untouched.
    pub ctx: *mut c_void,
    /// How many pieces can run at once (0 is read as 1).
    pub threads: size_t,
    /// Runs `piece(piece_ctx, i)` for every `i` in `0..n`; not NULL
    /// (`KN_ERR_NULL_POINTER`: pass a NULL executor to run on the calling
    /// thread).
    pub parallel_for: Option<
        unsafe extern "C" fn(
            ctx: *mut c_void,
            n: size_t,
            piece: Option<unsafe extern "C" fn(piece_ctx: *mut c_void, i: size_t)>,
            piece_ctx: *mut c_void,
        ),
    >,
}

/// `size_t` in the header.
#[allow(non_camel_case_types)]
type size_t = usize;

/// The version of the ABI this library implements (`KN_ABI_VERSION` of
/// the header it was built with).
#[no_mangle]
pub extern "C" fn kn_abi_version() -> u32 {
    KN_ABI_VERSION
}

/// A static, NUL-terminated description of a status code.
#[no_mangle]
pub extern "C" fn kn_status_message(status: i32) -> *const c_char {
    let message: &'static [u8] = match status {
        KN_OK => b"success\0",
        KN_ERR_NULL_POINTER => b"a required pointer was NULL\0",
        KN_ERR_LENGTH => b"a buffer's length does not match the shape\0",
        KN_ERR_SHAPE => b"inconsistent shape or stride\0",
        KN_ERR_ARGUMENT => b"argument out of its domain\0",
        KN_ERR_UNSUPPORTED => b"this CPU does not support the requested backend\0",
        KN_ERR_WORKSPACE => b"the workspace is too small\0",
        KN_ERR_INDEX => b"an index is out of range\0",
        KN_ERR_INTERNAL => b"internal error in the kernels library\0",
        _ => b"unknown status code\0",
    };
    message.as_ptr().cast()
}

/// The fastest backend this CPU and OS support (`KN_ERR_INTERNAL`: a bug).
#[no_mangle]
pub extern "C" fn kn_detected_backend() -> i32 {
    guard_value(KN_ERR_INTERNAL, || backend_code(Backend::detected()))
}

/// Whether this CPU and OS can run `backend` (1) or not (0; also for an
/// unknown code).
#[no_mangle]
pub extern "C" fn kn_backend_supported(backend: i32) -> i32 {
    guard_value(0, || {
        i32::from(backend_of(backend).is_ok_and(Backend::is_supported))
    })
}

/// `"scalar"`, `"avx2"` or `"avx512"` (static, NUL-terminated), or NULL
/// for an unknown code.
#[no_mangle]
pub extern "C" fn kn_backend_name(backend: i32) -> *const c_char {
    let name: &'static [u8] = match backend_of(backend) {
        Ok(Backend::Scalar) => b"scalar\0",
        Ok(Backend::Avx2) => b"avx2\0",
        Ok(Backend::Avx512) => b"avx512\0",
        Err(_) => return std::ptr::null(),
    };
    name.as_ptr().cast()
}

/// Floats of workspace `kn_gemm` needs on `backend` for an `m × k` by
/// `k × n` product, written to `*len`.
///
/// # Safety
/// `len` points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm_workspace_len(
    backend: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    len: *mut size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let needed = workspace(kernels.gemm_workspace_len(m, n, k))?;
        // SAFETY: the caller passes a writable `size_t` (NULL is refused).
        unsafe { write_out(len, needed) }
    })
}

/// `C = alpha · op(A) · op(B) + beta · C`, row-major: op(A) is `m × k`,
/// op(B) is `k × n`, C is `m × n`. A is stored `m × k` (`trans_a` 0) or
/// `k × m` (`trans_a` 1) with row stride `lda`; B likewise (`k × n` or
/// `n × k`, `ldb`); C has row stride `ldc`. A stride is at least its
/// stored row's length (any value for a single row): a matrix spans
/// `(rows - 1) · stride + cols` floats. With `beta` 0, C is not read.
/// `workspace` holds at least `kn_gemm_workspace_len` floats. Split by
/// `exec` (NULL: this thread); the result is bit-identical for any.
///
/// # Safety
/// Each pointer covers its matrix as the shape and stride say (C
/// writable), `workspace` covers `workspace_len` floats, C overlaps
/// nothing else, and `exec`, if not NULL, points to a valid executor.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm(
    backend: i32,
    exec: *const kn_executor,
    trans_a: i32,
    trans_b: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    alpha: f32,
    a: *const f32,
    lda: size_t,
    b: *const f32,
    ldb: size_t,
    beta: f32,
    c: *mut f32,
    ldc: size_t,
    workspace: *mut f32,
    workspace_len: size_t,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's executor pointer is valid or NULL.
        let (kernels, exec) = unsafe { kernels_and_executor(backend, exec) }?;
        // SAFETY: forwarded (the caller's contract).
        let p = unsafe {
            product(
                (trans_a, trans_b),
                (m, n, k),
                (a, lda),
                (b, ldb),
                None,
                (c, ldc),
                (workspace, workspace_len),
            )
        }?;
        kernels.gemm_with(&exec, alpha, p.a, p.b, beta, p.c, p.workspace)?;
        Ok(())
    })
}

/// `C = op(A) · op(B) + bias`, the `n` floats of `bias` added to every row
/// of C (a layer's forward product; the bias is added as C is stored
/// where the path allows, the same bits as the Rust call either way);
/// otherwise as `kn_gemm` with alpha 1 and beta 0 (C is not read), with
/// `kn_gemm_workspace_len` floats of workspace.
///
/// # Safety
/// As `kn_gemm`; `bias` covers `n` floats.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm_bias(
    backend: i32,
    exec: *const kn_executor,
    trans_a: i32,
    trans_b: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    a: *const f32,
    lda: size_t,
    b: *const f32,
    ldb: size_t,
    bias: *const f32,
    c: *mut f32,
    ldc: size_t,
    workspace: *mut f32,
    workspace_len: size_t,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's executor pointer is valid or NULL.
        let (kernels, exec) = unsafe { kernels_and_executor(backend, exec) }?;
        // SAFETY: forwarded (the caller's contract).
        let p = unsafe {
            product(
                (trans_a, trans_b),
                (m, n, k),
                (a, lda),
                (b, ldb),
                Some(bias),
                (c, ldc),
                (workspace, workspace_len),
            )
        }?;
        kernels.gemm_bias_with(&exec, p.a, p.b, p.bias, p.c, p.workspace)?;
        Ok(())
    })
}

/// Softmax of each row of `x` (`len` floats, rows of `cols`) in place;
/// with `causal` 1, row `r` covers its first `offset + r + 1` entries and
/// the rest become 0 (`causal` 0: every entry; `offset` is ignored).
///
/// # Safety
/// `x` covers `len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn kn_softmax_rows(
    backend: i32,
    x: *mut f32,
    len: size_t,
    cols: size_t,
    causal: i32,
    offset: size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let valid = valid_len(causal, offset)?;
        let x = output(x, len)?;
        // SAFETY: the caller's pointer covers `len` writable floats.
        let x = unsafe { x.slice_mut() };
        Ok(kernels.softmax_rows(x, cols, valid)?)
    })
}

/// LayerNorm of each row of `x` (`len` floats, rows of `cols`, `cols` the
/// length of `gamma` and `beta`): `out = (x − mean) · rstd · gamma +
/// beta`, keeping each row's mean and `rstd = 1 / sqrt(var + eps)` (`rows`
/// floats each); `KN_ERR_ARGUMENT` for an `eps` below 0 or not finite.
///
/// # Safety
/// Each pointer covers its length (`len`, `cols`, or `len / cols` for
/// `mean` and `rstd`); the outputs are writable and overlap nothing.
#[no_mangle]
pub unsafe extern "C" fn kn_layer_norm_forward(
    backend: i32,
    x: *const f32,
    len: size_t,
    gamma: *const f32,
    beta: *const f32,
    cols: size_t,
    eps: f32,
    out: *mut f32,
    mean: *mut f32,
    rstd: *mut f32,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let rows = len.checked_div(cols).unwrap_or(0);
        let (x, gamma, beta) = (input(x, len)?, input(gamma, cols)?, input(beta, cols)?);
        let (out, mean, rstd) = (output(out, len)?, output(mean, rows)?, output(rstd, rows)?);
        let inputs = [x.span, gamma.span, beta.span];
        disjoint(out.span, &inputs)?;
        disjoint(mean.span, &inputs)?;
        disjoint(mean.span, &[out.span])?;
        disjoint(rstd.span, &inputs)?;
        disjoint(rstd.span, &[out.span, mean.span])?;
        // SAFETY: the caller's pointers cover the lengths documented, and
        // the outputs overlap nothing (checked above).
        let (x, gamma, beta, out, mean, rstd) = unsafe {
            (
                x.slice(),
                gamma.slice(),
                beta.slice(),
                out.slice_mut(),
                mean.slice_mut(),
                rstd.slice_mut(),
            )
        };
        Ok(kernels.layer_norm_forward(x, gamma, beta, eps, out, mean, rstd)?)
    })
}

/// `dst[i] = bf16(src[i])`, rounded to nearest even (NaN stays NaN).
///
/// # Safety
/// `src` covers `len` floats, `dst` `len` writable `kn_bf16`, apart.
#[no_mangle]
pub unsafe extern "C" fn kn_f32_to_bf16(
    backend: i32,
    src: *const f32,
    dst: *mut kn_bf16,
    len: size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let (src, dst) = (input(src, len)?, output(dst.cast::<Bf16>(), len)?);
        disjoint(dst.span, &[src.span])?;
        // SAFETY: the caller's pointers cover `len` elements, apart (checked
        // above); `kn_bf16` and `Bf16` are both a `u16` (repr C /
        // transparent).
        let (src, dst) = unsafe { (src.slice(), dst.slice_mut()) };
        Ok(kernels.f32_to_bf16(src, dst)?)
    })
}

/// `dst[i] = f32(src[i])` (exact).
///
/// # Safety
/// `src` covers `len` `kn_bf16`, `dst` `len` writable floats, apart.
#[no_mangle]
pub unsafe extern "C" fn kn_bf16_to_f32(
    backend: i32,
    src: *const kn_bf16,
    dst: *mut f32,
    len: size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let (src, dst) = (input(src.cast::<Bf16>(), len)?, output(dst, len)?);
        disjoint(dst.span, &[src.span])?;
        // SAFETY: as in `kn_f32_to_bf16`.
        let (src, dst) = unsafe { (src.slice(), dst.slice_mut()) };
        Ok(kernels.bf16_to_f32(src, dst)?)
    })
}

/// `out = a + b`, element by element over `len` floats.
///
/// # Safety
/// `a` and `b` cover `len` floats, `out` `len` writable floats apart from
/// them (as for every routine below: each pointer covers the length its
/// documentation gives, outputs writable and overlapping nothing).
#[no_mangle]
pub unsafe extern "C" fn kn_add(
    backend: i32,
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    len: size_t,
) -> i32 {
    // SAFETY: forwarded (the caller's contract).
    unsafe { binary(backend, a, b, out, len, Kernels::add) }
}

/// `out = a − b`, element by element over `len` floats.
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_sub(
    backend: i32,
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    len: size_t,
) -> i32 {
    // SAFETY: forwarded.
    unsafe { binary(backend, a, b, out, len, Kernels::sub) }
}

/// `out = a · b`, element by element over `len` floats.
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_mul(
    backend: i32,
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    len: size_t,
) -> i32 {
    // SAFETY: forwarded.
    unsafe { binary(backend, a, b, out, len, Kernels::mul) }
}

/// `dst = src` (`len` floats).
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_copy(backend: i32, src: *const f32, dst: *mut f32, len: size_t) -> i32 {
    // SAFETY: forwarded.
    unsafe { unary(backend, src, dst, len, Kernels::copy) }
}

/// `out = e^x`, element by element (within 2 ulp of libm's `expf` where
/// the result is normal; see the Rust crate's documentation).
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_exp(backend: i32, x: *const f32, out: *mut f32, len: size_t) -> i32 {
    // SAFETY: forwarded.
    unsafe { unary(backend, x, out, len, Kernels::exp) }
}

/// `out = tanh(x)`, element by element (within 2 ulp of libm's `tanhf`;
/// see the Rust crate's documentation).
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_tanh(backend: i32, x: *const f32, out: *mut f32, len: size_t) -> i32 {
    // SAFETY: forwarded.
    unsafe { unary(backend, x, out, len, Kernels::tanh) }
}

/// `out = gelu(x)` (the tanh approximation of GPT-2).
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_gelu_forward(
    backend: i32,
    x: *const f32,
    out: *mut f32,
    len: size_t,
) -> i32 {
    // SAFETY: forwarded.
    unsafe { unary(backend, x, out, len, Kernels::gelu_forward) }
}

/// Backward of `kn_gelu_forward`: **adds** `gelu'(x) · dout` into `dx`.
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_gelu_backward(
    backend: i32,
    x: *const f32,
    dout: *const f32,
    dx: *mut f32,
    len: size_t,
) -> i32 {
    // SAFETY: forwarded.
    unsafe { binary(backend, x, dout, dx, len, Kernels::gelu_backward) }
}

/// `kn_gelu_backward` that **writes** `gelu'(x) · dout` into `dx` instead
/// of adding it (`dx` need not be zeroed first).
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_gelu_backward_into(
    backend: i32,
    x: *const f32,
    dout: *const f32,
    dx: *mut f32,
    len: size_t,
) -> i32 {
    // SAFETY: forwarded.
    unsafe { binary(backend, x, dout, dx, len, Kernels::gelu_backward_into) }
}

/// `x = alpha · x` (`len` floats).
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_scale(backend: i32, alpha: f32, x: *mut f32, len: size_t) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let x = output(x, len)?;
        // SAFETY: forwarded.
        kernels.scale(alpha, unsafe { x.slice_mut() });
        Ok(())
    })
}

/// `out[i] = value` (`len` floats).
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_fill(backend: i32, value: f32, out: *mut f32, len: size_t) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let out = output(out, len)?;
        // SAFETY: forwarded.
        kernels.fill(value, unsafe { out.slice_mut() });
        Ok(())
    })
}

/// `y += alpha · x` (`len` floats).
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_axpy(
    backend: i32,
    alpha: f32,
    x: *const f32,
    y: *mut f32,
    len: size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let (x, y) = (input(x, len)?, output(y, len)?);
        disjoint(y.span, &[x.span])?;
        // SAFETY: forwarded; `y` overlaps `x` nowhere (checked above).
        let (x, y) = unsafe { (x.slice(), y.slice_mut()) };
        Ok(kernels.axpy(alpha, x, y)?)
    })
}

/// Adds `bias` (`cols` floats) to every row of `x` (`len` floats, rows of
/// `cols`).
///
/// # Safety
/// As `kn_add`.
#[no_mangle]
pub unsafe extern "C" fn kn_add_bias(
    backend: i32,
    bias: *const f32,
    cols: size_t,
    x: *mut f32,
    len: size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let (bias, x) = (input(bias, cols)?, output(x, len)?);
        disjoint(x.span, &[bias.span])?;
        // SAFETY: forwarded; `x` overlaps `bias` nowhere (checked above).
        let (bias, x) = unsafe { (bias.slice(), x.slice_mut()) };
        Ok(kernels.add_bias(bias, x)?)
    })
}

/// `*out = Σ x` (in a fixed order for a given backend and `len`).
///
/// # Safety
/// `x` covers `len` floats; `out` is a writable float.
#[no_mangle]
pub unsafe extern "C" fn kn_sum(backend: i32, x: *const f32, len: size_t, out: *mut f32) -> i32 {
    // SAFETY: forwarded.
    unsafe { reduce(backend, x, len, out, Kernels::sum) }
}

/// `*out = Σ x²`.
///
/// # Safety
/// As `kn_sum`.
#[no_mangle]
pub unsafe extern "C" fn kn_sum_squares(
    backend: i32,
    x: *const f32,
    len: size_t,
    out: *mut f32,
) -> i32 {
    // SAFETY: forwarded.
    unsafe { reduce(backend, x, len, out, Kernels::sum_squares) }
}

/// `*out = max x`, ignoring NaN (−inf for `len` 0 or all NaN).
///
/// # Safety
/// As `kn_sum`.
#[no_mangle]
pub unsafe extern "C" fn kn_max(backend: i32, x: *const f32, len: size_t, out: *mut f32) -> i32 {
    // SAFETY: forwarded.
    unsafe { reduce(backend, x, len, out, Kernels::max) }
}

/// `*out = Σ a·b` (`len` floats each).
///
/// # Safety
/// `a` and `b` cover `len` floats; `out` is a writable float.
#[no_mangle]
pub unsafe extern "C" fn kn_dot(
    backend: i32,
    a: *const f32,
    b: *const f32,
    len: size_t,
    out: *mut f32,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let (a, b) = (input(a, len)?, input(b, len)?);
        // SAFETY: forwarded.
        let value = kernels.dot(unsafe { a.slice() }, unsafe { b.slice() })?;
        // SAFETY: forwarded.
        unsafe { write_out(out, value) }
    })
}

/// Backward of `kn_softmax_rows` in place: with `probs` its output and
/// `grad` the gradient with respect to it, `grad[j] = probs[j] · (grad[j]
/// − Σ_i probs[i]·grad[i])` over each row's valid prefix (as
/// `kn_softmax_rows`'s `causal` and `offset` say), 0 after it.
///
/// # Safety
/// `probs` covers `len` floats, `grad` `len` writable floats apart.
#[no_mangle]
pub unsafe extern "C" fn kn_softmax_backward_rows(
    backend: i32,
    probs: *const f32,
    grad: *mut f32,
    len: size_t,
    cols: size_t,
    causal: i32,
    offset: size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let valid = valid_len(causal, offset)?;
        let (probs, grad) = (input(probs, len)?, output(grad, len)?);
        disjoint(grad.span, &[probs.span])?;
        // SAFETY: forwarded; `grad` overlaps `probs` nowhere (checked above).
        let (probs, grad) = unsafe { (probs.slice(), grad.slice_mut()) };
        Ok(kernels.softmax_backward_rows(probs, grad, cols, valid)?)
    })
}

/// Backward of `kn_layer_norm_forward` given its input, `gamma` and row
/// statistics and the gradient `dout` of its output: **adds** into `dx`
/// (`len`), `dgamma` and `dbeta` (`cols` each).
///
/// # Safety
/// Each pointer covers its length (`mean`, `rstd`: `len / cols`).
#[no_mangle]
pub unsafe extern "C" fn kn_layer_norm_backward(
    backend: i32,
    x: *const f32,
    len: size_t,
    gamma: *const f32,
    cols: size_t,
    mean: *const f32,
    rstd: *const f32,
    dout: *const f32,
    dx: *mut f32,
    dgamma: *mut f32,
    dbeta: *mut f32,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let rows = len.checked_div(cols).unwrap_or(0);
        let [x, gamma, mean, rstd, dout] = [
            input(x, len)?,
            input(gamma, cols)?,
            input(mean, rows)?,
            input(rstd, rows)?,
            input(dout, len)?,
        ];
        let (dx, dgamma, dbeta) = (
            output(dx, len)?,
            output(dgamma, cols)?,
            output(dbeta, cols)?,
        );
        let inputs = [x.span, gamma.span, mean.span, rstd.span, dout.span];
        disjoint(dx.span, &inputs)?;
        disjoint(dgamma.span, &inputs)?;
        disjoint(dgamma.span, &[dx.span])?;
        disjoint(dbeta.span, &inputs)?;
        disjoint(dbeta.span, &[dx.span, dgamma.span])?;
        // SAFETY: forwarded; the outputs overlap nothing (checked above).
        let (x, gamma, mean, rstd, dout) = unsafe {
            (
                x.slice(),
                gamma.slice(),
                mean.slice(),
                rstd.slice(),
                dout.slice(),
            )
        };
        // SAFETY: as above.
        let (dx, dgamma, dbeta) =
            unsafe { (dx.slice_mut(), dgamma.slice_mut(), dbeta.slice_mut()) };
        Ok(kernels.layer_norm_backward(x, gamma, mean, rstd, dout, dx, dgamma, dbeta)?)
    })
}

/// For each of `rows` rows of `logits` (`classes` each) with target
/// `targets[r]`: `losses[r] = logsumexp(row) − row[target]`, and when
/// `dlogits` is not NULL, `dlogits = (softmax(row) − onehot(target)) ·
/// grad_scale`. A target not below `classes` is `KN_ERR_INDEX` (checked
/// before anything is written).
///
/// # Safety
/// `logits` and `dlogits` (if not NULL) cover `rows · classes` floats,
/// `targets` and `losses` `rows` elements.
#[no_mangle]
pub unsafe extern "C" fn kn_cross_entropy(
    backend: i32,
    logits: *const f32,
    rows: size_t,
    classes: size_t,
    targets: *const u32,
    losses: *mut f32,
    dlogits: *mut f32,
    grad_scale: f32,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let len = rows.checked_mul(classes).ok_or(Status(KN_ERR_SHAPE))?;
        let (logits, targets) = (input(logits, len)?, input(targets, rows)?);
        let losses = output(losses, rows)?;
        disjoint(losses.span, &[logits.span, targets.span])?;
        let dlogits = if dlogits.is_null() {
            None
        } else {
            let d = output(dlogits, len)?;
            disjoint(d.span, &[logits.span, losses.span, targets.span])?;
            Some(d)
        };
        // With no classes every target is out of range (the kernels, which
        // count rows from the logits, would see none and call it a length
        // mismatch).
        if classes == 0 && rows > 0 {
            return Err(Status(KN_ERR_INDEX));
        }
        // SAFETY: forwarded; the outputs overlap nothing (checked above).
        let (logits, targets, losses) =
            unsafe { (logits.slice(), targets.slice(), losses.slice_mut()) };
        // SAFETY: as above.
        let dlogits = dlogits.map(|d| unsafe { d.slice_mut() });
        Ok(kernels.cross_entropy(logits, classes, targets, losses, dlogits, grad_scale)?)
    })
}

/// AdamW hyper-parameters (`kn_adamw_default` gives PyTorch's defaults).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kn_adamw {
    /// Learning rate.
    pub lr: f32,
    /// Decay of the first moment (the gradient's running mean), in [0, 1).
    pub beta1: f32,
    /// Decay of the second moment (the squared gradient's), in [0, 1).
    pub beta2: f32,
    /// Added to the second moment's square root, above 0.
    pub eps: f32,
    /// Decoupled: `p −= lr · weight_decay · p`.
    pub weight_decay: f32,
}

/// PyTorch's AdamW defaults (lr 1e-3, betas 0.9 and 0.999, eps 1e-8,
/// weight decay 0.01).
#[no_mangle]
pub extern "C" fn kn_adamw_default() -> kn_adamw {
    let d = AdamW::default();
    kn_adamw {
        lr: d.lr,
        beta1: d.beta1,
        beta2: d.beta2,
        eps: d.eps,
        weight_decay: d.weight_decay,
    }
}

/// One AdamW step (`step` from 1) over `len` parameters with gradients
/// `grads · grad_scale`, updating the moments `m` and `v` in place.
/// `KN_ERR_ARGUMENT` for `step` 0, betas outside [0, 1), `eps` not
/// positive, or a non-finite `lr`, `weight_decay` or `grad_scale`.
///
/// # Safety
/// `opt` points to a `kn_adamw`; the buffers cover `len` floats each.
#[no_mangle]
pub unsafe extern "C" fn kn_adamw_step(
    backend: i32,
    opt: *const kn_adamw,
    step: u32,
    grad_scale: f32,
    params: *mut f32,
    grads: *const f32,
    m: *mut f32,
    v: *mut f32,
    len: size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        check_pointer(opt, 1)?;
        // SAFETY: non-NULL and aligned; the caller guarantees it is valid.
        let o = unsafe { *opt };
        let opt = AdamW {
            lr: o.lr,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        };
        let grads = input(grads, len)?;
        let (params, m, v) = (output(params, len)?, output(m, len)?, output(v, len)?);
        disjoint(params.span, &[grads.span])?;
        disjoint(m.span, &[grads.span, params.span])?;
        disjoint(v.span, &[grads.span, params.span, m.span])?;
        // SAFETY: forwarded; the outputs overlap nothing (checked above).
        let (grads, params, m, v) = unsafe {
            (
                grads.slice(),
                params.slice_mut(),
                m.slice_mut(),
                v.slice_mut(),
            )
        };
        Ok(kernels.adamw_step(&opt, step, grad_scale, params, grads, m, v)?)
    })
}

/// `dst = srcᵀ`: `src` is `rows × cols` with row stride `src_stride`,
/// `dst` `cols × rows` with row stride `dst_stride` (the padding between
/// rows is left untouched).
///
/// # Safety
/// Each pointer covers its matrix as the shape and stride say.
#[no_mangle]
pub unsafe extern "C" fn kn_transpose(
    backend: i32,
    rows: size_t,
    cols: size_t,
    src: *const f32,
    src_stride: size_t,
    dst: *mut f32,
    dst_stride: size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let src = matrix(src, rows, cols, src_stride)?;
        let dst = output(dst, MatRef::strided_len(cols, rows, dst_stride)?)?;
        disjoint(dst.span, &[src.span])?;
        // SAFETY: forwarded; `dst` overlaps `src` nowhere (checked above).
        let (src, dst) = unsafe { (src.slice(), dst.slice_mut()) };
        Ok(kernels.transpose(rows, cols, src, src_stride, dst, dst_stride)?)
    })
}

/// The bf16 unit this CPU gives `backend`'s products: `KN_BF16_PORTABLE`,
/// `KN_BF16_AVX512_BF16` or `KN_BF16_AMX` (negative: the backend's status).
#[no_mangle]
pub extern "C" fn kn_bf16_unit(backend: i32) -> i32 {
    guard_value(KN_ERR_INTERNAL, || match kernels_for(backend) {
        Ok(k) => match k.bf16_unit() {
            Bf16Unit::Portable => KN_BF16_PORTABLE,
            Bf16Unit::Avx512Bf16 => KN_BF16_AVX512_BF16,
            Bf16Unit::Amx => KN_BF16_AMX,
        },
        Err(Status(status)) => status,
    })
}

/// bf16 products on the portable path: operands rounded, f32 multiply.
pub const KN_BF16_PORTABLE: i32 = 0;
/// bf16 products on `vdpbf16ps`.
pub const KN_BF16_AVX512_BF16: i32 = 1;
/// bf16 products on AMX tiles.
pub const KN_BF16_AMX: i32 = 2;

/// Floats of workspace `kn_gemm_bf16` needs, written to `*len`.
///
/// # Safety
/// `len` points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm_bf16_workspace_len(
    backend: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    len: *mut size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        // SAFETY: forwarded.
        let needed = workspace(kernels.gemm_bf16_workspace_len(m, n, k))?;
        // SAFETY: forwarded.
        unsafe { write_out(len, needed) }
    })
}

/// `kn_gemm` with A and B rounded to bf16 as they are read and the
/// products summed in f32, on the backend's bf16 unit (`kn_bf16_unit`).
/// Each element is within (k + 2)·2⁻²⁴·(|alpha|·Σ|a·b| + |beta·c|) of the
/// exact product of the rounded operands, except that AVX512-BF16 and AMX
/// read subnormal bf16 operands as zero.
///
/// # Safety
/// As `kn_gemm`, with `kn_gemm_bf16_workspace_len` floats of workspace.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm_bf16(
    backend: i32,
    exec: *const kn_executor,
    trans_a: i32,
    trans_b: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    alpha: f32,
    a: *const f32,
    lda: size_t,
    b: *const f32,
    ldb: size_t,
    beta: f32,
    c: *mut f32,
    ldc: size_t,
    workspace: *mut f32,
    workspace_len: size_t,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's executor pointer is valid or NULL.
        let (kernels, exec) = unsafe { kernels_and_executor(backend, exec) }?;
        // SAFETY: forwarded.
        let p = unsafe {
            product(
                (trans_a, trans_b),
                (m, n, k),
                (a, lda),
                (b, ldb),
                None,
                (c, ldc),
                (workspace, workspace_len),
            )
        }?;
        kernels.gemm_bf16_with(&exec, alpha, p.a, p.b, beta, p.c, p.workspace)?;
        Ok(())
    })
}

/// `kn_gemm_bias` with A and B rounded to bf16 as they are read and the
/// products summed in f32, on the backend's bf16 unit, within the bound
/// `kn_gemm_bf16` states; the bias is added in f32. The workspace is
/// `kn_gemm_bf16_workspace_len` floats.
///
/// # Safety
/// As `kn_gemm_bias`, with `kn_gemm_bf16_workspace_len` floats of
/// workspace.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm_bf16_bias(
    backend: i32,
    exec: *const kn_executor,
    trans_a: i32,
    trans_b: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    a: *const f32,
    lda: size_t,
    b: *const f32,
    ldb: size_t,
    bias: *const f32,
    c: *mut f32,
    ldc: size_t,
    workspace: *mut f32,
    workspace_len: size_t,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's executor pointer is valid or NULL.
        let (kernels, exec) = unsafe { kernels_and_executor(backend, exec) }?;
        // SAFETY: forwarded.
        let p = unsafe {
            product(
                (trans_a, trans_b),
                (m, n, k),
                (a, lda),
                (b, ldb),
                Some(bias),
                (c, ldc),
                (workspace, workspace_len),
            )
        }?;
        kernels.gemm_bf16_bias_with(&exec, p.a, p.b, p.bias, p.c, p.workspace)?;
        Ok(())
    })
}

/// `kn_gemm_bf16` on operands stored in bf16, writing a bf16 C: each
/// element of C is the f32 value `kn_gemm_bf16` would give it (with beta
/// applied to C's bf16 value), rounded once to nearest even. The layout a
/// tensor library's bf16 matrices have; half the bytes of `kn_gemm_bf16`
/// to read and write. Strides count elements (`kn_bf16`); the workspace
/// is `kn_gemm_bf16_workspace_len` floats.
///
/// # Safety
/// As `kn_gemm_bf16`, with `a`, `b` and `c` of `kn_bf16`.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm_bf16_stored(
    backend: i32,
    exec: *const kn_executor,
    trans_a: i32,
    trans_b: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    alpha: f32,
    a: *const kn_bf16,
    lda: size_t,
    b: *const kn_bf16,
    ldb: size_t,
    beta: f32,
    c: *mut kn_bf16,
    ldc: size_t,
    workspace: *mut f32,
    workspace_len: size_t,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's executor pointer is valid or NULL.
        let (kernels, exec) = unsafe { kernels_and_executor(backend, exec) }?;
        // SAFETY: forwarded; `kn_bf16` and `Bf16` are both a `u16` (repr C
        // / transparent).
        let p = unsafe {
            product(
                (trans_a, trans_b),
                (m, n, k),
                (a.cast::<Bf16>(), lda),
                (b.cast::<Bf16>(), ldb),
                None,
                (c.cast::<Bf16>(), ldc),
                (workspace, workspace_len),
            )
        }?;
        kernels.gemm_bf16_with(&exec, alpha, p.a, p.b, beta, p.c, p.workspace)?;
        Ok(())
    })
}

/// Slots a packed `k × n` operand takes (`kn_pack_bf16`), written to
/// `*len`.
///
/// # Safety
/// `len` points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn kn_packed_bf16_len(k: size_t, n: size_t, len: *mut size_t) -> i32 {
    guard(|| {
        let slots = PackedBf16::len(k, n).ok_or(Status(KN_ERR_SHAPE))?;
        // SAFETY: forwarded.
        unsafe { write_out(len, slots) }
    })
}

/// Packs op(B) (`k × n`: B stored `k × n`, or `n × k` with `trans_b` 1,
/// row stride `ldb`) into `slots` (`kn_packed_bf16_len` of them), rounded
/// to bf16, for many `kn_gemm_bf16_packed` products (weights held in bf16).
/// The slots do not depend on the backend.
///
/// # Safety
/// `b` covers its matrix, `slots` `slots_len` writable `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn kn_pack_bf16(
    backend: i32,
    trans_b: i32,
    k: size_t,
    n: size_t,
    b: *const f32,
    ldb: size_t,
    slots: *mut u32,
    slots_len: size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let (rows, cols) = stored(k, n, trans_b)?;
        let b = matrix(b, rows, cols, ldb)?;
        let slots = output(slots, slots_len)?;
        disjoint(slots.span, &[b.span])?;
        // SAFETY: forwarded; `slots` overlaps `b` nowhere (checked above).
        let (b, slots) = unsafe { (b.slice(), slots.slice_mut()) };
        let b = transposed(MatRef::strided(b, rows, cols, ldb)?, trans_b);
        Ok(kernels.pack_bf16(b, slots)?)
    })
}

/// Floats of workspace `kn_gemm_bf16_packed` needs, written to `*len`.
///
/// # Safety
/// `len` points to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm_bf16_packed_workspace_len(
    backend: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    len: *mut size_t,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        // SAFETY: forwarded.
        let needed = workspace(kernels.gemm_bf16_packed_workspace_len(m, n, k))?;
        // SAFETY: forwarded.
        unsafe { write_out(len, needed) }
    })
}

/// `kn_gemm_bf16` with B packed beforehand by `kn_pack_bf16` (`k × n`,
/// `slots_len` slots): the same result, bit for bit, without rounding or
/// packing B again. The workspace is `kn_gemm_bf16_packed_workspace_len`
/// floats.
///
/// # Safety
/// As `kn_gemm` for A and C; `slots` covers `slots_len` `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm_bf16_packed(
    backend: i32,
    exec: *const kn_executor,
    trans_a: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    alpha: f32,
    a: *const f32,
    lda: size_t,
    slots: *const u32,
    slots_len: size_t,
    beta: f32,
    c: *mut f32,
    ldc: size_t,
    workspace: *mut f32,
    workspace_len: size_t,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's executor pointer is valid or NULL.
        let (kernels, exec) = unsafe { kernels_and_executor(backend, exec) }?;
        // SAFETY: forwarded.
        let p = unsafe {
            packed_product(
                trans_a,
                (m, n, k),
                (a, lda),
                (slots, slots_len),
                None,
                (c, ldc),
                (workspace, workspace_len),
            )
        }?;
        kernels.gemm_bf16_packed_with(&exec, alpha, p.a, p.b, beta, p.c, p.workspace)?;
        Ok(())
    })
}

/// `kn_gemm_bf16_packed` with the `n` floats of `bias` added to every row
/// of C, alpha 1 and beta 0 (C is not read): bit for bit
/// `kn_gemm_bf16_bias`. The workspace is
/// `kn_gemm_bf16_packed_workspace_len` floats.
///
/// # Safety
/// As `kn_gemm_bf16_packed`; `bias` covers `n` floats.
#[no_mangle]
pub unsafe extern "C" fn kn_gemm_bf16_packed_bias(
    backend: i32,
    exec: *const kn_executor,
    trans_a: i32,
    m: size_t,
    n: size_t,
    k: size_t,
    a: *const f32,
    lda: size_t,
    slots: *const u32,
    slots_len: size_t,
    bias: *const f32,
    c: *mut f32,
    ldc: size_t,
    workspace: *mut f32,
    workspace_len: size_t,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's executor pointer is valid or NULL.
        let (kernels, exec) = unsafe { kernels_and_executor(backend, exec) }?;
        // SAFETY: forwarded.
        let p = unsafe {
            packed_product(
                trans_a,
                (m, n, k),
                (a, lda),
                (slots, slots_len),
                Some(bias),
                (c, ldc),
                (workspace, workspace_len),
            )
        }?;
        kernels.gemm_bf16_packed_bias_with(&exec, p.a, p.b, p.bias, p.c, p.workspace)?;
        Ok(())
    })
}

/// Runs `iters` rounds (at most 2^28) of the backend's independent f32
/// multiply-add chains and writes the floating-point operations done to
/// `*flops`: time it for the FMA peak that MFU divides by.
///
/// # Safety
/// `flops` points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn kn_fma_peak_loop(backend: i32, iters: size_t, flops: *mut u64) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        check_pointer(flops, 1)?;
        let done = kernels.fma_peak_loop(iters);
        // SAFETY: forwarded.
        unsafe { write_out(flops, done) }
    })
}

/// `kn_fma_peak_loop` for the backend's bf16 unit (`kn_bf16_unit`); at
/// most 2^28 rounds too.
///
/// # Safety
/// `flops` points to a writable `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn kn_bf16_peak_loop(backend: i32, iters: size_t, flops: *mut u64) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        check_pointer(flops, 1)?;
        let done = kernels.bf16_peak_loop(iters);
        // SAFETY: forwarded.
        unsafe { write_out(flops, done) }
    })
}

/// The views of a product's operands, checked: inputs of `T`, C of `O`,
/// and the bias of the bias-fused products (empty for the others).
struct Product<'a, T = f32, O = f32> {
    a: MatRef<'a, T>,
    b: MatRef<'a, T>,
    bias: &'a [f32],
    c: MatMut<'a, O>,
    workspace: &'a mut [f32],
}

/// The operands of `kn_gemm` and the bf16 products as views, with the
/// `n` floats of `bias` where it is given.
///
/// # Safety
/// As `kn_gemm`, for elements of `T` and `O`; `bias`, if given, covers
/// `n` floats.
unsafe fn product<'a, T, O>(
    (trans_a, trans_b): (i32, i32),
    (m, n, k): (usize, usize, usize),
    (a, lda): (*const T, usize),
    (b, ldb): (*const T, usize),
    bias: Option<*const f32>,
    (c, ldc): (*mut O, usize),
    (workspace, workspace_len): (*mut f32, usize),
) -> Result<Product<'a, T, O>, Status> {
    let (a_rows, a_cols) = stored(m, k, trans_a)?;
    let (b_rows, b_cols) = stored(k, n, trans_b)?;
    let a = matrix(a, a_rows, a_cols, lda)?;
    let b = matrix(b, b_rows, b_cols, ldb)?;
    let bias = match bias {
        Some(bias) => input(bias, n)?,
        None => input(std::ptr::null(), 0)?,
    };
    let c = output(c, MatRef::strided_len(m, n, ldc)?)?;
    let workspace = output(workspace, workspace_len)?;
    disjoint(c.span, &[a.span, b.span, bias.span])?;
    disjoint(workspace.span, &[a.span, b.span, bias.span, c.span])?;
    // SAFETY: the caller's pointers cover the matrices their shapes and
    // strides describe, the bias its `n` floats and the workspace its
    // length; the outputs overlap nothing (checked above).
    let (a, b, bias, c, workspace) = unsafe {
        (
            a.slice(),
            b.slice(),
            bias.slice(),
            c.slice_mut(),
            workspace.slice_mut(),
        )
    };
    Ok(Product {
        a: transposed(MatRef::strided(a, a_rows, a_cols, lda)?, trans_a),
        b: transposed(MatRef::strided(b, b_rows, b_cols, ldb)?, trans_b),
        bias,
        c: MatMut::strided(c, m, n, ldc)?,
        workspace,
    })
}

/// The views of a packed product's operands, checked, and the bias of
/// the bias-fused form (empty for the other).
struct PackedProduct<'a> {
    a: MatRef<'a>,
    b: PackedBf16<'a>,
    bias: &'a [f32],
    c: MatMut<'a>,
    workspace: &'a mut [f32],
}

/// The operands of `kn_gemm_bf16_packed` and its bias-fused form as
/// views: A (`m × k`, stored transposed where `trans_a` is 1), the packed
/// `k × n` operand in `slots`, the `n` floats of `bias` where it is
/// given, and C.
///
/// # Safety
/// As `kn_gemm_bf16_packed`; `bias`, if given, covers `n` floats.
unsafe fn packed_product<'a>(
    trans_a: i32,
    (m, n, k): (usize, usize, usize),
    (a, lda): (*const f32, usize),
    (slots, slots_len): (*const u32, usize),
    bias: Option<*const f32>,
    (c, ldc): (*mut f32, usize),
    (workspace, workspace_len): (*mut f32, usize),
) -> Result<PackedProduct<'a>, Status> {
    let (rows, cols) = stored(m, k, trans_a)?;
    let a = matrix(a, rows, cols, lda)?;
    let slots = input(slots, slots_len)?;
    let bias = match bias {
        Some(bias) => input(bias, n)?,
        None => input(std::ptr::null(), 0)?,
    };
    let c = output(c, MatRef::strided_len(m, n, ldc)?)?;
    let workspace = output(workspace, workspace_len)?;
    disjoint(c.span, &[a.span, slots.span, bias.span])?;
    disjoint(workspace.span, &[a.span, c.span, slots.span, bias.span])?;
    // SAFETY: the caller's pointers cover what their lengths and shapes
    // say; the outputs overlap nothing (checked above).
    let (a, slots, bias, c, workspace) = unsafe {
        (
            a.slice(),
            slots.slice(),
            bias.slice(),
            c.slice_mut(),
            workspace.slice_mut(),
        )
    };
    Ok(PackedProduct {
        a: transposed(MatRef::strided(a, rows, cols, lda)?, trans_a),
        b: PackedBf16::new(slots, k, n)?,
        bias,
        c: MatMut::strided(c, m, n, ldc)?,
        workspace,
    })
}

/// A routine of two inputs and one output, e.g. `Kernels::add`.
type BinaryRoutine = fn(&Kernels, &[f32], &[f32], &mut [f32]) -> Result<(), KernelError>;

/// A routine of one input and one output, e.g. `Kernels::exp`.
type UnaryRoutine = fn(&Kernels, &[f32], &mut [f32]) -> Result<(), KernelError>;

/// A routine of two inputs and one output of one length.
///
/// # Safety
/// `a`, `b` cover `len` floats, `out` `len` writable floats apart.
unsafe fn binary(
    backend: i32,
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    len: usize,
    f: BinaryRoutine,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let (a, b, out) = (input(a, len)?, input(b, len)?, output(out, len)?);
        disjoint(out.span, &[a.span, b.span])?;
        // SAFETY: forwarded; `out` overlaps `a` and `b` nowhere (checked
        // above).
        let (a, b, out) = unsafe { (a.slice(), b.slice(), out.slice_mut()) };
        Ok(f(&kernels, a, b, out)?)
    })
}

/// A routine of one input and one output of one length.
///
/// # Safety
/// `x` covers `len` floats, `out` `len` writable floats apart.
unsafe fn unary(backend: i32, x: *const f32, out: *mut f32, len: usize, f: UnaryRoutine) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let (x, out) = (input(x, len)?, output(out, len)?);
        disjoint(out.span, &[x.span])?;
        // SAFETY: forwarded; `out` overlaps `x` nowhere (checked above).
        let (x, out) = unsafe { (x.slice(), out.slice_mut()) };
        Ok(f(&kernels, x, out)?)
    })
}

/// A reduction of one input to one float.
///
/// # Safety
/// `x` covers `len` floats; `out` is a writable float.
unsafe fn reduce(
    backend: i32,
    x: *const f32,
    len: usize,
    out: *mut f32,
    f: fn(&Kernels, &[f32]) -> f32,
) -> i32 {
    guard(|| {
        let kernels = kernels_for(backend)?;
        let x = input(x, len)?;
        // SAFETY: forwarded.
        let value = f(&kernels, unsafe { x.slice() });
        // SAFETY: forwarded.
        unsafe { write_out(out, value) }
    })
}

/// The valid prefix of softmax rows from the ABI's `causal` flag.
fn valid_len(causal: i32, offset: usize) -> Result<ValidLen<'static>, Status> {
    match causal {
        0 => Ok(ValidLen::All),
        1 => Ok(ValidLen::Causal { offset }),
        _ => Err(Status(KN_ERR_ARGUMENT)),
    }
}

/// Runs `f`, turning its error into a status and a panic (a bug: the
/// library does not panic on caller input) into `KN_ERR_INTERNAL`.
fn guard(f: impl FnOnce() -> Result<(), Status>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => KN_OK,
        Ok(Err(Status(status))) => status,
        Err(_) => KN_ERR_INTERNAL,
    }
}

/// `f`'s value, or `on_panic` where it panicked (a bug).
fn guard_value(on_panic: i32, f: impl FnOnce() -> i32) -> i32 {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// The status of a kernel error.
fn status(e: KernelError) -> i32 {
    match e {
        KernelError::LengthMismatch { .. } => KN_ERR_LENGTH,
        KernelError::InvalidShape(_) | KernelError::ShapeOverflow => KN_ERR_SHAPE,
        KernelError::IndexOutOfRange { .. } => KN_ERR_INDEX,
        KernelError::UnsupportedBackend(_)
        | KernelError::UnsupportedBf16Unit(_)
        | KernelError::AmxPermissionRefused(_) => KN_ERR_UNSUPPORTED,
        KernelError::WorkspaceTooSmall { .. } => KN_ERR_WORKSPACE,
        _ => KN_ERR_ARGUMENT,
    }
}

fn backend_code(b: Backend) -> i32 {
    match b {
        Backend::Scalar => KN_BACKEND_SCALAR,
        Backend::Avx2 => KN_BACKEND_AVX2,
        Backend::Avx512 => KN_BACKEND_AVX512,
    }
}

fn backend_of(code: i32) -> Result<Backend, Status> {
    match code {
        KN_BACKEND_SCALAR => Ok(Backend::Scalar),
        KN_BACKEND_AVX2 => Ok(Backend::Avx2),
        KN_BACKEND_AVX512 => Ok(Backend::Avx512),
        _ => Err(Status(KN_ERR_ARGUMENT)),
    }
}

fn kernels_for(code: i32) -> Result<Kernels, Status> {
    Ok(Kernels::new(backend_of(code)?)?)
}

/// Stored rows and columns of an operand used as `rows × cols`.
fn stored(rows: usize, cols: usize, transposed: i32) -> Result<(usize, usize), Status> {
    match transposed {
        0 => Ok((rows, cols)),
        1 => Ok((cols, rows)),
        _ => Err(Status(KN_ERR_ARGUMENT)),
    }
}

fn transposed<T>(m: MatRef<T>, flag: i32) -> MatRef<T> {
    if flag == 1 {
        m.t()
    } else {
        m
    }
}

/// The elements a `rows × cols` matrix with row stride `stride` at `ptr`
/// spans, as an input.
fn matrix<T>(
    ptr: *const T,
    rows: usize,
    cols: usize,
    stride: usize,
) -> Result<Buf<*const T>, Status> {
    input(ptr, MatRef::strided_len(rows, cols, stride)?)
}

/// A caller's buffer, checked but not yet borrowed: `len` elements at
/// `ptr` (`*const T` for an input, `*mut T` for an output), non-NULL and
/// aligned unless `len` is 0, covering the bytes `span`. No reference to
/// its memory exists before [`Buf::slice`] or [`Buf::slice_mut`], so
/// overlaps are refused on spans ([`disjoint`]) before a `&mut` could
/// alias anything. Not `Copy`: each buffer becomes one slice.
struct Buf<P> {
    ptr: P,
    len: usize,
    span: Span,
}

/// An input of `len` elements at `ptr`: NULL (or any pointer) with length
/// 0 is empty; NULL otherwise is `KN_ERR_NULL_POINTER`; a misaligned
/// pointer, or a range over `isize::MAX` bytes or past the end of the
/// address space, is `KN_ERR_ARGUMENT`.
fn input<T>(ptr: *const T, len: usize) -> Result<Buf<*const T>, Status> {
    let span = Span::of(ptr, len)?;
    Ok(Buf { ptr, len, span })
}

/// As [`input`], for an output.
fn output<T>(ptr: *mut T, len: usize) -> Result<Buf<*mut T>, Status> {
    let span = Span::of(ptr.cast_const(), len)?;
    Ok(Buf { ptr, len, span })
}

impl<T> Buf<*const T> {
    /// The input as a slice.
    ///
    /// # Safety
    /// Unless `len` is 0, `ptr` points to `len` initialized elements that
    /// nothing writes while the slice lives.
    unsafe fn slice<'a>(self) -> &'a [T] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `input` checked the pointer non-NULL and aligned and its
        // range within `isize::MAX` bytes, not wrapping; the caller
        // guarantees the rest.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T> Buf<*mut T> {
    /// The output as a slice.
    ///
    /// # Safety
    /// Unless `len` is 0, `ptr` points to `len` writable, initialized
    /// elements that nothing else accesses while the slice lives (for the
    /// other buffers of the call, checked with [`disjoint`] beforehand).
    unsafe fn slice_mut<'a>(self) -> &'a mut [T] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: `output` checked the pointer non-NULL and aligned and its
        // range within `isize::MAX` bytes, not wrapping; the caller
        // guarantees the rest.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// The bytes a buffer covers, the addresses `start..end` (empty for a
/// length 0, whatever its pointer).
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    /// The span of `len` elements at `ptr`, checked as [`input`] says.
    fn of<T>(ptr: *const T, len: usize) -> Result<Span, Status> {
        if len == 0 {
            return Ok(Span { start: 0, end: 0 });
        }
        let bytes = check_pointer(ptr, len)?;
        let start = ptr.addr();
        let end = start.checked_add(bytes).ok_or(Status(KN_ERR_ARGUMENT))?;
        Ok(Span { start, end })
    }

    /// Whether the two share a byte (an empty span shares none).
    fn overlaps(self, other: Span) -> bool {
        self.start < self.end
            && other.start < other.end
            && self.start < other.end
            && other.start < self.end
    }
}

/// Refuses (`KN_ERR_ARGUMENT`) an output whose bytes overlap any of
/// `others` (the inputs, and the outputs checked before it): Rust may not
/// alias them, and no routine is written for in-place use. Called on
/// spans, before any slice of the buffers exists.
fn disjoint(out: Span, others: &[Span]) -> Result<(), Status> {
    if others.iter().any(|&other| out.overlaps(other)) {
        Err(Status(KN_ERR_ARGUMENT))
    } else {
        Ok(())
    }
}

/// Checks `len` elements at `ptr`: NULL is `KN_ERR_NULL_POINTER`; a
/// misaligned pointer, or more than `isize::MAX` bytes, `KN_ERR_ARGUMENT`.
/// Returns their size in bytes.
fn check_pointer<T>(ptr: *const T, len: usize) -> Result<usize, Status> {
    if ptr.is_null() {
        return Err(Status(KN_ERR_NULL_POINTER));
    }
    match len.checked_mul(size_of::<T>()) {
        Some(bytes) if ptr.is_aligned() && bytes <= isize::MAX as usize => Ok(bytes),
        _ => Err(Status(KN_ERR_ARGUMENT)),
    }
}

/// A workspace length the kernels computed, which saturates at
/// `usize::MAX` for a shape no buffer could serve: that is `KN_ERR_SHAPE`
/// here, as `kn_packed_bf16_len` answers such a shape, rather than a
/// length that no allocation satisfies.
fn workspace(len: usize) -> Result<usize, Status> {
    if len == usize::MAX {
        Err(Status(KN_ERR_SHAPE))
    } else {
        Ok(len)
    }
}

/// Writes `value` to `*out`.
///
/// # Safety
/// `out` is NULL or points to a writable `T`.
unsafe fn write_out<T>(out: *mut T, value: T) -> Result<(), Status> {
    check_pointer(out, 1)?;
    // SAFETY: checked non-NULL and aligned; the caller guarantees it is
    // writable.
    unsafe { out.write(value) };
    Ok(())
}

/// The kernels of `backend` (`kernels_for`) and the executor behind
/// `exec`, the start of every routine that splits its work. The executor
/// is a copy of the host's, read before any buffer is borrowed (so that no
/// reference to the caller's struct is held while outputs, which could
/// cover it, are written), or the calling thread for NULL. A misaligned
/// `exec` is `KN_ERR_ARGUMENT`, as for every other pointer.
///
/// # Safety
/// `exec` is NULL or points to a valid `kn_executor`.
unsafe fn kernels_and_executor(
    backend: i32,
    exec: *const kn_executor,
) -> Result<(Kernels, HostExecutor), Status> {
    let kernels = kernels_for(backend)?;
    if exec.is_null() {
        return Ok((kernels, HostExecutor(None)));
    }
    check_pointer(exec, 1)?;
    // SAFETY: non-NULL and aligned (checked), and the caller guarantees it
    // points to a valid `kn_executor`.
    let exec = unsafe { exec.read() };
    match exec.parallel_for {
        Some(parallel_for) => Ok((kernels, HostExecutor(Some((exec, parallel_for))))),
        None => Err(Status(KN_ERR_NULL_POINTER)),
    }
}

type ParallelFor = unsafe extern "C" fn(
    *mut c_void,
    size_t,
    Option<unsafe extern "C" fn(*mut c_void, size_t)>,
    *mut c_void,
);

/// A `kn_executor` as the crate's [`Executor`]; without one, the pieces run
/// in order on the calling thread (as [`kernels::Sequential`] runs them).
struct HostExecutor(Option<(kn_executor, ParallelFor)>);

// SAFETY: the only shared access is `run`, which the routines call from
// their calling thread alone (as `kn_executor`'s documentation tells the
// host); the pieces it hands out are `Sync`, and `ctx` is the host's to
// synchronize among its own threads.
unsafe impl Sync for HostExecutor {}

impl Executor for HostExecutor {
    fn threads(&self) -> usize {
        self.0.map_or(1, |(exec, _)| exec.threads.max(1))
    }

    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        let Some((exec, parallel_for)) = self.0 else {
            return Sequential.run(pieces, piece);
        };
        let mut piece = piece;
        let piece_ctx = (&raw mut piece).cast::<c_void>();
        // SAFETY: the host calls `run_piece(piece_ctx, i)` for each `i <
        // pieces` and returns only when all calls have returned, so
        // `piece` outlives them; `piece` is `Sync`, so concurrent calls
        // are sound.
        unsafe { parallel_for(exec.ctx, pieces, Some(run_piece), piece_ctx) }
    }
}

/// Runs piece `i` of the closure behind `piece_ctx`. A panic must not
/// unwind into the host: it aborts (the routines never panic on input).
/// # Safety
/// `piece_ctx` is the pointer `HostExecutor::run` passed to
/// `parallel_for`, which has not yet returned.
unsafe extern "C" fn run_piece(piece_ctx: *mut c_void, i: size_t) {
    // SAFETY: `piece_ctx` is the `&dyn Fn` that `HostExecutor::run` passed,
    // alive until `parallel_for` returns.
    let piece = unsafe { *piece_ctx.cast::<&(dyn Fn(usize) + Sync)>() };
    if catch_unwind(AssertUnwindSafe(|| piece(i))).is_err() {
        std::process::abort();
    }
}

/// A status code as the error `?` produces.
struct Status(i32);

impl From<KernelError> for Status {
    fn from(e: KernelError) -> Status {
        Status(status(e))
    }
}
