//! The C ABI of `kernels` (`include/kernels.h`, generated from this file by
//! cbindgen): every symbol starts with `kn_` (types, functions) or `KN_`
//! (constants).
//!
//! Conventions:
//! - every routine returns a status: `KN_OK` (0) or a negative `KN_ERR_*`
//!   code, which `kn_status_message` turns into a static string; an
//!   output is never written when an error is returned;
//! - buffers are a pointer and a length in elements (`size_t`); a pointer
//!   may be NULL only with length 0; outputs must not overlap inputs;
//! - a routine runs on the backend it is given (`KN_BACKEND_*`), refused
//!   with `KN_ERR_UNSUPPORTED` when this CPU lacks it;
//! - threads belong to the host: routines that split their work take a
//!   `kn_executor` (NULL: the calling thread), and their results do not
//!   depend on it;
//! - no panic crosses the boundary: each entry point runs under
//!   `catch_unwind` and returns `KN_ERR_INTERNAL` if one ever happened.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use kernels::{
    Backend, Bf16, Executor, KernelError, Kernels, MatMut, MatRef, Sequential, ValidLen,
};

/// Version of this ABI; it changes on any incompatible change.
pub const KN_ABI_VERSION: u32 = 1;

/// Success.
pub const KN_OK: i32 = 0;
/// A NULL pointer was passed with a nonzero length (or a NULL callback).
pub const KN_ERR_NULL_POINTER: i32 = -1;
/// A buffer's length does not match the shape.
pub const KN_ERR_LENGTH: i32 = -2;
/// A shape or stride is inconsistent, or overflows `size_t`.
pub const KN_ERR_SHAPE: i32 = -3;
/// An argument is out of its domain (misaligned pointer, overlapping
/// buffers, unknown backend or flag).
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
    pub bits: u16,
}

/// The host's threads: `parallel_for(ctx, n, fn, fn_ctx)` must call
/// `fn(fn_ctx, i)` exactly once for each `i` in `0..n`, in any order and
/// possibly concurrently, and return when all calls have returned.
/// `threads` is how many can run at once (0 is read as 1).
#[repr(C)]
pub struct kn_executor {
    pub ctx: *mut c_void,
    pub threads: size_t,
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
        KN_ERR_NULL_POINTER => b"a NULL pointer was passed with a nonzero length\0",
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

/// The fastest backend this CPU and OS support.
#[no_mangle]
pub extern "C" fn kn_detected_backend() -> i32 {
    backend_code(Backend::detected())
}

/// Whether this CPU and OS can run `backend` (1) or not (0; also for an
/// unknown code).
#[no_mangle]
pub extern "C" fn kn_backend_supported(backend: i32) -> i32 {
    i32::from(backend_of(backend).is_ok_and(Backend::is_supported))
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
        let needed = kernels.gemm_workspace_len(m, n, k);
        // SAFETY: the caller passes a writable `size_t` (NULL is refused).
        unsafe { write_out(len, needed) }
    })
}

/// `C = alpha · op(A) · op(B) + beta · C`, row-major: op(A) is `m × k`,
/// op(B) is `k × n`, C is `m × n`. A is stored `m × k` (`trans_a` 0) or
/// `k × m` (`trans_a` 1) with row stride `lda`; B likewise (`k × n` or
/// `n × k`, `ldb`); C has row stride `ldc`. With `beta` 0, C is not read.
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
        let kernels = kernels_for(backend)?;
        let (a_rows, a_cols) = stored(m, k, trans_a)?;
        let (b_rows, b_cols) = stored(k, n, trans_b)?;
        // SAFETY (each view): the caller's pointers cover the matrices
        // their shapes and strides describe.
        let a = unsafe { matrix(a, a_rows, a_cols, lda) }?;
        let b = unsafe { matrix(b, b_rows, b_cols, ldb) }?;
        let c_len = strided_len(m, n, ldc)?;
        let c = unsafe { slice_mut(c, c_len) }?;
        let workspace = unsafe { slice_mut(workspace, workspace_len) }?;
        disjoint(c, &[a.0, b.0])?;
        disjoint(workspace, &[a.0, b.0, c])?;
        let a = transposed(MatRef::strided(a.0, a_rows, a_cols, lda)?, trans_a);
        let b = transposed(MatRef::strided(b.0, b_rows, b_cols, ldb)?, trans_b);
        let c = MatMut::strided(c, m, n, ldc)?;
        // SAFETY: the caller's executor pointer is valid or NULL.
        match unsafe { executor(exec) }? {
            Some(host) => kernels.gemm_with(&host, alpha, a, b, beta, c, workspace)?,
            None => kernels.gemm_with(&Sequential, alpha, a, b, beta, c, workspace)?,
        }
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
        let valid = match causal {
            0 => ValidLen::All,
            1 => ValidLen::Causal { offset },
            _ => return Err(Status(KN_ERR_ARGUMENT)),
        };
        // SAFETY: the caller's pointer covers `len` floats.
        let x = unsafe { slice_mut(x, len) }?;
        Ok(kernels.softmax_rows(x, cols, valid)?)
    })
}

/// LayerNorm of each row of `x` (`len` floats, rows of `cols`, `cols` the
/// length of `gamma` and `beta`): `out = (x − mean) · rstd · gamma +
/// beta`, keeping each row's mean and `rstd = 1 / sqrt(var + eps)` (`rows`
/// floats each).
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
        // SAFETY: the caller's pointers cover the lengths documented.
        let (x, gamma, beta) = unsafe { (slice(x, len)?, slice(gamma, cols)?, slice(beta, cols)?) };
        let out = unsafe { slice_mut(out, len) }?;
        let mean = unsafe { slice_mut(mean, rows) }?;
        let rstd = unsafe { slice_mut(rstd, rows) }?;
        disjoint(out, &[x, gamma, beta])?;
        disjoint(mean, &[x, gamma, beta, out])?;
        disjoint(rstd, &[x, gamma, beta, out, mean])?;
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
        // SAFETY: the caller's pointers cover `len` elements; `kn_bf16` and
        // `Bf16` are both a `u16` (repr C / transparent).
        let src = unsafe { slice(src, len) }?;
        let dst = unsafe { slice_mut(dst.cast::<Bf16>(), len) }?;
        disjoint(dst, &[src])?;
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
        // SAFETY: as in `kn_f32_to_bf16`.
        let src = unsafe { slice(src.cast::<Bf16>(), len) }?;
        let dst = unsafe { slice_mut(dst, len) }?;
        disjoint(dst, &[src])?;
        Ok(kernels.bf16_to_f32(src, dst)?)
    })
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

fn transposed(m: MatRef, flag: i32) -> MatRef {
    if flag == 1 {
        m.t()
    } else {
        m
    }
}

/// Elements a `rows × cols` matrix with row stride `stride` spans.
fn strided_len(rows: usize, cols: usize, stride: usize) -> Result<usize, Status> {
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    if stride < cols {
        return Err(Status(KN_ERR_SHAPE));
    }
    (rows - 1)
        .checked_mul(stride)
        .and_then(|x| x.checked_add(cols))
        .ok_or(Status(KN_ERR_SHAPE))
}

/// The elements a strided matrix spans, as a slice (with its length).
///
/// # Safety
/// As [`slice`], for the span of the matrix.
unsafe fn matrix<'a>(
    ptr: *const f32,
    rows: usize,
    cols: usize,
    stride: usize,
) -> Result<(&'a [f32], usize), Status> {
    let len = strided_len(rows, cols, stride)?;
    // SAFETY: forwarded.
    Ok((unsafe { slice(ptr, len) }?, len))
}

/// `len` elements at `ptr`: NULL (or any pointer) with length 0 is empty;
/// NULL otherwise, or a misaligned pointer, is an error.
///
/// # Safety
/// A non-NULL `ptr` with `len > 0` points to `len` initialized elements
/// that nothing writes while the slice lives.
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> Result<&'a [T], Status> {
    if len == 0 {
        return Ok(&[]);
    }
    check_pointer(ptr, len)?;
    // SAFETY: checked non-NULL and aligned; the caller guarantees the rest.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// As [`slice`], writable.
///
/// # Safety
/// A non-NULL `ptr` with `len > 0` points to `len` writable elements that
/// nothing else accesses while the slice lives.
unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize) -> Result<&'a mut [T], Status> {
    if len == 0 {
        return Ok(&mut []);
    }
    check_pointer(ptr, len)?;
    // SAFETY: checked non-NULL and aligned; the caller guarantees the rest.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

fn check_pointer<T>(ptr: *const T, len: usize) -> Result<(), Status> {
    if ptr.is_null() {
        return Err(Status(KN_ERR_NULL_POINTER));
    }
    if !ptr.is_aligned()
        || len
            .checked_mul(size_of::<T>())
            .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Status(KN_ERR_ARGUMENT));
    }
    Ok(())
}

/// Refuses an output whose memory overlaps any input's (Rust may not
/// alias them, and no routine is written for in-place use).
fn disjoint<T, U>(out: &[T], inputs: &[&[U]]) -> Result<(), Status> {
    let span = |p: *const u8, bytes: usize| (p as usize, p as usize + bytes);
    let (o0, o1) = span(out.as_ptr().cast(), size_of_val(out));
    let overlaps = inputs.iter().any(|i| {
        let (i0, i1) = span(i.as_ptr().cast(), size_of_val(*i));
        o0 < i1 && i0 < o1
    });
    if overlaps {
        Err(Status(KN_ERR_ARGUMENT))
    } else {
        Ok(())
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

/// The host executor behind `exec`, or None for NULL.
///
/// # Safety
/// `exec` is NULL or points to a valid `kn_executor` that outlives the
/// call.
unsafe fn executor<'a>(exec: *const kn_executor) -> Result<Option<HostExecutor<'a>>, Status> {
    if exec.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, and the caller guarantees it is valid.
    let exec = unsafe { &*exec };
    match exec.parallel_for {
        Some(parallel_for) => Ok(Some(HostExecutor { exec, parallel_for })),
        None => Err(Status(KN_ERR_NULL_POINTER)),
    }
}

type ParallelFor = unsafe extern "C" fn(
    *mut c_void,
    size_t,
    Option<unsafe extern "C" fn(*mut c_void, size_t)>,
    *mut c_void,
);

/// A `kn_executor` as the crate's [`Executor`].
struct HostExecutor<'a> {
    exec: &'a kn_executor,
    parallel_for: ParallelFor,
}

// SAFETY: the header's contract for `parallel_for` is that it may be
// called from the thread that called the routine and runs pieces on the
// host's threads; the context pointer is the host's to synchronize.
unsafe impl Sync for HostExecutor<'_> {}

impl Executor for HostExecutor<'_> {
    fn threads(&self) -> usize {
        self.exec.threads.max(1)
    }

    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        let mut piece = piece;
        let piece_ctx = (&raw mut piece).cast::<c_void>();
        // SAFETY: the host calls `run_piece(piece_ctx, i)` for each `i <
        // pieces` and returns only when all calls have returned, so
        // `piece` outlives them; `piece` is `Sync`, so concurrent calls
        // are sound.
        unsafe { (self.parallel_for)(self.exec.ctx, pieces, Some(run_piece), piece_ctx) }
    }
}

/// Runs piece `i` of the closure behind `piece_ctx`. A panic must not
/// unwind into the host: it aborts (the routines never panic on input).
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
