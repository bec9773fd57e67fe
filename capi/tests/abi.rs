//! The C ABI called as C would call it: results against plain loops, the
//! host executor against the calling thread (bit for bit), and every
//! status code reached with the output left untouched.

use std::ffi::{c_void, CStr};

use kernels::MatRef;
use kernels_c::*;

/// A `kn_executor` whose `parallel_for` runs the pieces on scoped threads,
/// two at a time, in reverse order.
unsafe extern "C" fn two_threads(
    _ctx: *mut c_void,
    n: usize,
    piece: Option<unsafe extern "C" fn(*mut c_void, usize)>,
    piece_ctx: *mut c_void,
) {
    let piece = piece.expect("a piece function");
    let ctx = piece_ctx as usize;
    std::thread::scope(|s| {
        for half in 0..2 {
            s.spawn(move || {
                for i in (0..n).rev().filter(|i| i % 2 == half) {
                    // SAFETY: the library passed this function and context.
                    unsafe { piece(ctx as *mut c_void, i) };
                }
            });
        }
    });
}

fn host() -> kn_executor {
    kn_executor {
        ctx: std::ptr::null_mut(),
        threads: 2,
        parallel_for: Some(two_threads),
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32 / 32768.0 - 1.0
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn gemm(
    exec: Option<&kn_executor>,
    (ta, tb): (i32, i32),
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> i32 {
    let backend = kn_detected_backend();
    let mut len = 0;
    // SAFETY: `len` is a valid size_t.
    assert_eq!(
        unsafe { kn_gemm_workspace_len(backend, m, n, k, &mut len) },
        KN_OK
    );
    let mut ws = vec![0.0f32; len];
    let exec = exec.map_or(std::ptr::null(), |e| e as *const kn_executor);
    // SAFETY: every buffer covers its matrix.
    unsafe {
        kn_gemm(
            backend,
            exec,
            ta,
            tb,
            m,
            n,
            k,
            0.5,
            a.as_ptr(),
            lda,
            b.as_ptr(),
            ldb,
            beta,
            c.as_mut_ptr(),
            ldc,
            ws.as_mut_ptr(),
            ws.len(),
        )
    }
}

#[test]
fn gemm_matches_a_triple_loop_and_is_bit_identical_on_the_host_threads() {
    for (m, n, k) in [(1, 1, 1), (7, 13, 5), (33, 17, 64), (130, 97, 31)] {
        for (ta, tb) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            for beta in [0.0, 2.0] {
                let (ar, ac) = if ta == 1 { (k, m) } else { (m, k) };
                let (br, bc) = if tb == 1 { (n, k) } else { (k, n) };
                let (lda, ldb, ldc) = (ac + 3, bc + 1, n + 2);
                let (a, b) = (values(ar * lda, 1), values(br * ldb, 2));
                let fill = if beta == 0.0 { f32::NAN } else { 0.25 };
                let mut alone = vec![fill; m * ldc];
                let mut threaded = alone.clone();
                let dims = (m, n, k);
                let flags = (ta, tb);
                assert_eq!(
                    gemm(None, flags, dims, &a, lda, &b, ldb, beta, &mut alone, ldc),
                    KN_OK
                );
                let exec = host();
                let status = gemm(
                    Some(&exec),
                    flags,
                    dims,
                    &a,
                    lda,
                    &b,
                    ldb,
                    beta,
                    &mut threaded,
                    ldc,
                );
                assert_eq!(status, KN_OK);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&alone), bits(&threaded), "{dims:?} {flags:?}");
                for i in 0..m {
                    for j in 0..n {
                        let mut sum = 0.0f64;
                        for l in 0..k {
                            let x = if ta == 1 {
                                a[l * lda + i]
                            } else {
                                a[i * lda + l]
                            };
                            let y = if tb == 1 {
                                b[j * ldb + l]
                            } else {
                                b[l * ldb + j]
                            };
                            sum += f64::from(x) * f64::from(y);
                        }
                        let want = 0.5 * sum
                            + f64::from(beta) * f64::from(if beta == 0.0 { 0.0 } else { fill });
                        let got = f64::from(alone[i * ldc + j]);
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{dims:?} {flags:?} C[{i}][{j}] = {got}, want {want}"
                        );
                    }
                    // Between rows, C is never touched.
                    for j in n..ldc {
                        assert_eq!(alone[i * ldc + j].to_bits(), fill.to_bits());
                    }
                }
            }
        }
    }
}

#[test]
fn a_single_rows_stride_is_free_as_in_rust() {
    // A 1 × 4 A with stride 1 < k: only its one row is read, as
    // `MatRef::strided` allows; C (1 × 3) likewise with stride 1.
    let (a, b) = (values(4, 3), values(4 * 3, 4));
    let mut c = [f32::NAN; 3];
    assert_eq!(MatRef::strided_len(1, 4, 1), Ok(4));
    assert_eq!(
        gemm(None, (0, 0), (1, 3, 4), &a, 1, &b, 3, 0.0, &mut c, 1),
        KN_OK
    );
    for (j, &got) in c.iter().enumerate() {
        let want: f32 = (0..4).map(|l| a[l] * b[l * 3 + j]).sum::<f32>() * 0.5;
        assert!((got - want).abs() <= 1e-5, "C[{j}] = {got}, want {want}");
    }
}

#[test]
fn every_status_is_reached_and_leaves_the_output_untouched() {
    let backend = kn_detected_backend();
    let (a, b) = (values(6, 1), values(6, 2));
    let mut c = [f32::NAN; 4];
    let mut ws = vec![0.0f32; 4096];
    let ws = ws.as_mut_ptr();
    let null = std::ptr::null::<f32>();
    // SAFETY (every call): buffers cover what is passed, or the call is
    // refused before reading them.
    let call = |backend: i32, a: *const f32, lda: usize, ws_len: usize, c: &mut [f32; 4]| unsafe {
        kn_gemm(
            backend,
            std::ptr::null(),
            0,
            0,
            2,
            2,
            3,
            1.0,
            a,
            lda,
            b.as_ptr(),
            2,
            0.0,
            c.as_mut_ptr(),
            2,
            ws,
            ws_len,
        )
    };
    let untouched = |c: &[f32; 4]| c.iter().all(|x| x.is_nan());
    assert_eq!(call(backend, null, 3, 4096, &mut c), KN_ERR_NULL_POINTER);
    assert!(untouched(&c));
    assert_eq!(
        call(backend, a.as_ptr(), 2, 4096, &mut c),
        KN_ERR_SHAPE,
        "lda < k"
    );
    assert!(untouched(&c));
    assert_eq!(
        call(99, a.as_ptr(), 3, 4096, &mut c),
        KN_ERR_ARGUMENT,
        "unknown backend"
    );
    assert!(untouched(&c));
    let mut needed = 0;
    // SAFETY: `needed` is a valid size_t.
    unsafe { kn_gemm_workspace_len(KN_BACKEND_SCALAR, 2, 2, 3, &mut needed) };
    if needed > 0 {
        assert_eq!(
            call(KN_BACKEND_SCALAR, a.as_ptr(), 3, needed - 1, &mut c),
            KN_ERR_WORKSPACE
        );
        assert!(untouched(&c));
    }
    // A shape no buffer could serve has no workspace length: an error, and
    // `*len` is left alone (the kernels' own answer saturates).
    let huge = usize::MAX / 2;
    for query in [
        kn_gemm_workspace_len,
        kn_gemm_bf16_workspace_len,
        kn_gemm_bf16_packed_workspace_len,
    ] {
        let mut len = 7;
        // SAFETY: `len` is a valid size_t.
        let status = unsafe { query(backend, huge, huge, huge, &mut len) };
        assert_eq!((status, len), (KN_ERR_SHAPE, 7));
    }
    match (KN_BACKEND_SCALAR..=KN_BACKEND_AVX512).find(|&b| kn_backend_supported(b) == 0) {
        Some(unsupported) => {
            assert_eq!(
                call(unsupported, a.as_ptr(), 3, 4096, &mut c),
                KN_ERR_UNSUPPORTED
            );
            assert!(untouched(&c));
        }
        None => println!("notice: this CPU runs every backend; KN_ERR_UNSUPPORTED is not reached"),
    }
    // SAFETY: as above.
    assert_eq!(
        unsafe { kn_gemm_workspace_len(backend, 1, 1, 1, std::ptr::null_mut()) },
        KN_ERR_NULL_POINTER
    );
    // A length that is not a whole number of rows.
    let mut x = [1.0f32; 5];
    // SAFETY: `x` holds 5 floats.
    assert_eq!(
        unsafe { kn_softmax_rows(backend, x.as_mut_ptr(), 5, 2, 0, 0) },
        KN_ERR_LENGTH
    );
    assert_eq!(x, [1.0; 5]);
    assert_eq!(
        unsafe { kn_softmax_rows(backend, x.as_mut_ptr(), 4, 2, 7, 0) },
        KN_ERR_ARGUMENT
    );
    // Overlapping output and input.
    let mut buf = [1.0f32; 8];
    let p = buf.as_mut_ptr();
    // SAFETY: both ranges lie inside `buf`; the call refuses the overlap.
    let status = unsafe { kn_bf16_to_f32(backend, p.cast::<kn_bf16>(), p, 4) };
    assert_eq!(status, KN_ERR_ARGUMENT);
    for code in [
        KN_OK,
        KN_ERR_NULL_POINTER,
        KN_ERR_LENGTH,
        KN_ERR_SHAPE,
        KN_ERR_ARGUMENT,
        KN_ERR_UNSUPPORTED,
        KN_ERR_WORKSPACE,
        KN_ERR_INDEX,
        KN_ERR_INTERNAL,
        12345,
    ] {
        // SAFETY: the messages are static NUL-terminated strings.
        let message = unsafe { CStr::from_ptr(kn_status_message(code)) };
        assert!(!message.to_bytes().is_empty());
    }
    assert_eq!(kn_abi_version(), KN_ABI_VERSION);
    assert!(kn_backend_name(7).is_null());
    // SAFETY: a static NUL-terminated string.
    assert_eq!(
        unsafe { CStr::from_ptr(kn_backend_name(KN_BACKEND_AVX2)) }.to_str(),
        Ok("avx2")
    );
}

#[test]
fn softmax_layer_norm_and_bf16_match_plain_loops() {
    let backend = kn_detected_backend();
    let (rows, cols) = (3, 5);
    let x = values(rows * cols, 3);
    let mut probs = x.clone();
    // SAFETY: `probs` holds rows · cols floats.
    assert_eq!(
        unsafe { kn_softmax_rows(backend, probs.as_mut_ptr(), rows * cols, cols, 1, 1) },
        KN_OK
    );
    for r in 0..rows {
        let valid = (1 + r + 1).min(cols);
        let row = &x[r * cols..][..valid];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let total: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
        for j in 0..cols {
            let want = if j < valid {
                f64::from(x[r * cols + j] - max).exp() / total
            } else {
                0.0
            };
            assert!(
                (f64::from(probs[r * cols + j]) - want).abs() < 1e-6,
                "softmax [{r}][{j}]"
            );
        }
    }
    let (gamma, beta) = (values(cols, 4), values(cols, 5));
    let (mut out, mut mean, mut rstd) = (vec![0.0; rows * cols], vec![0.0; rows], vec![0.0; rows]);
    // SAFETY: every buffer holds what its length says.
    let status = unsafe {
        kn_layer_norm_forward(
            backend,
            x.as_ptr(),
            x.len(),
            gamma.as_ptr(),
            beta.as_ptr(),
            cols,
            1e-5,
            out.as_mut_ptr(),
            mean.as_mut_ptr(),
            rstd.as_mut_ptr(),
        )
    };
    assert_eq!(status, KN_OK);
    for r in 0..rows {
        let row: Vec<f64> = x[r * cols..][..cols]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let mu = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / cols as f64;
        let rs = 1.0 / (var + 1e-5).sqrt();
        for j in 0..cols {
            let want = (row[j] - mu) * rs * f64::from(gamma[j]) + f64::from(beta[j]);
            assert!(
                (f64::from(out[r * cols + j]) - want).abs() < 1e-4,
                "layer norm [{r}][{j}]"
            );
        }
    }
    let mut half = vec![kn_bf16 { bits: 0 }; x.len()];
    let mut back = vec![0.0f32; x.len()];
    // SAFETY: both buffers hold x.len() elements.
    unsafe {
        assert_eq!(
            kn_f32_to_bf16(backend, x.as_ptr(), half.as_mut_ptr(), x.len()),
            KN_OK
        );
        assert_eq!(
            kn_bf16_to_f32(backend, half.as_ptr(), back.as_mut_ptr(), x.len()),
            KN_OK
        );
    }
    for (h, (&v, &w)) in half.iter().zip(x.iter().zip(&back)) {
        assert_eq!(h.bits, kernels::Bf16::from_f32(v).to_bits());
        assert_eq!(w, kernels::Bf16::from_f32(v).to_f32());
    }
}

/// Every other routine through the ABI gives the bits of the Rust call it
/// wraps (the Rust routines are tested against independent definitions).
#[test]
fn every_routine_matches_the_rust_call() {
    let backend = kn_detected_backend();
    let k = kernels::Kernels::best();
    let (rows, cols) = (3usize, 7usize);
    let len = rows * cols;
    let (a, b) = (values(len, 1), values(len, 2));
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    type Binary = unsafe extern "C" fn(i32, *const f32, *const f32, *mut f32, usize) -> i32;
    type RustBinary =
        fn(&kernels::Kernels, &[f32], &[f32], &mut [f32]) -> Result<(), kernels::KernelError>;
    let binaries: [(Binary, RustBinary); 5] = [
        (kn_add, kernels::Kernels::add),
        (kn_sub, kernels::Kernels::sub),
        (kn_mul, kernels::Kernels::mul),
        (kn_gelu_backward, kernels::Kernels::gelu_backward),
        (kn_gelu_backward_into, kernels::Kernels::gelu_backward_into),
    ];
    for (abi, rust) in binaries {
        let (mut got, mut want) = (vec![0.5; len], vec![0.5; len]);
        // SAFETY: every buffer holds `len` floats.
        assert_eq!(
            unsafe { abi(backend, a.as_ptr(), b.as_ptr(), got.as_mut_ptr(), len) },
            KN_OK
        );
        rust(&k, &a, &b, &mut want).unwrap();
        assert_eq!(bits(&got), bits(&want));
    }
    type Unary = unsafe extern "C" fn(i32, *const f32, *mut f32, usize) -> i32;
    type RustUnary = fn(&kernels::Kernels, &[f32], &mut [f32]) -> Result<(), kernels::KernelError>;
    let unaries: [(Unary, RustUnary); 4] = [
        (kn_copy, kernels::Kernels::copy),
        (kn_exp, kernels::Kernels::exp),
        (kn_tanh, kernels::Kernels::tanh),
        (kn_gelu_forward, kernels::Kernels::gelu_forward),
    ];
    for (abi, rust) in unaries {
        let (mut got, mut want) = (vec![0.0; len], vec![0.0; len]);
        // SAFETY: as above.
        assert_eq!(
            unsafe { abi(backend, a.as_ptr(), got.as_mut_ptr(), len) },
            KN_OK
        );
        rust(&k, &a, &mut want).unwrap();
        assert_eq!(bits(&got), bits(&want));
    }
    let mut out = 0.0f32;
    // SAFETY (the calls below): each buffer holds what its length says.
    unsafe {
        assert_eq!(kn_sum(backend, a.as_ptr(), len, &mut out), KN_OK);
        assert_eq!(out.to_bits(), k.sum(&a).to_bits());
        assert_eq!(kn_sum_squares(backend, a.as_ptr(), len, &mut out), KN_OK);
        assert_eq!(out.to_bits(), k.sum_squares(&a).to_bits());
        assert_eq!(kn_max(backend, a.as_ptr(), len, &mut out), KN_OK);
        assert_eq!(out.to_bits(), k.max(&a).to_bits());
        assert_eq!(
            kn_dot(backend, a.as_ptr(), b.as_ptr(), len, &mut out),
            KN_OK
        );
        assert_eq!(out.to_bits(), k.dot(&a, &b).unwrap().to_bits());
    }
    let (mut x, mut y) = (a.clone(), a.clone());
    // SAFETY: as above.
    unsafe {
        assert_eq!(kn_scale(backend, 3.0, x.as_mut_ptr(), len), KN_OK);
        assert_eq!(
            kn_axpy(backend, 0.5, b.as_ptr(), x.as_mut_ptr(), len),
            KN_OK
        );
        assert_eq!(
            kn_add_bias(backend, b.as_ptr(), cols, x.as_mut_ptr(), len),
            KN_OK
        );
    }
    k.scale(3.0, &mut y);
    k.axpy(0.5, &b, &mut y).unwrap();
    k.add_bias(&b[..cols], &mut y).unwrap();
    assert_eq!(bits(&x), bits(&y));
    // SAFETY: as above.
    unsafe { assert_eq!(kn_fill(backend, 2.5, x.as_mut_ptr(), len), KN_OK) };
    assert!(x.iter().all(|&v| v == 2.5));

    // Softmax backward and layer norm backward.
    let mut probs = a.clone();
    k.softmax_rows(&mut probs, cols, kernels::ValidLen::Causal { offset: 2 })
        .unwrap();
    let (mut got, mut want) = (b.clone(), b.clone());
    // SAFETY: as above.
    assert_eq!(
        unsafe {
            kn_softmax_backward_rows(backend, probs.as_ptr(), got.as_mut_ptr(), len, cols, 1, 2)
        },
        KN_OK
    );
    k.softmax_backward_rows(
        &probs,
        &mut want,
        cols,
        kernels::ValidLen::Causal { offset: 2 },
    )
    .unwrap();
    assert_eq!(bits(&got), bits(&want));
    let gamma = values(cols, 3);
    let (mut norm, mut mean, mut rstd) = (vec![0.0; len], vec![0.0; rows], vec![0.0; rows]);
    k.layer_norm_forward(
        &a,
        &gamma,
        &b[..cols],
        1e-5,
        &mut norm,
        &mut mean,
        &mut rstd,
    )
    .unwrap();
    let mut got = (vec![0.1; len], vec![0.2; cols], vec![0.3; cols]);
    let mut want = got.clone();
    // SAFETY: as above.
    let status = unsafe {
        kn_layer_norm_backward(
            backend,
            a.as_ptr(),
            len,
            gamma.as_ptr(),
            cols,
            mean.as_ptr(),
            rstd.as_ptr(),
            b.as_ptr(),
            got.0.as_mut_ptr(),
            got.1.as_mut_ptr(),
            got.2.as_mut_ptr(),
        )
    };
    assert_eq!(status, KN_OK);
    k.layer_norm_backward(
        &a,
        &gamma,
        &mean,
        &rstd,
        &b,
        &mut want.0,
        &mut want.1,
        &mut want.2,
    )
    .unwrap();
    assert_eq!(
        (bits(&got.0), bits(&got.1), bits(&got.2)),
        (bits(&want.0), bits(&want.1), bits(&want.2))
    );

    // Cross-entropy, with and without the gradient; a bad target.
    let targets = [1u32, 6, 0];
    let (mut losses, mut dlogits) = (vec![0.0; rows], vec![0.0; len]);
    let (mut want_losses, mut want_d) = (vec![0.0; rows], vec![0.0; len]);
    // SAFETY: as above.
    let status = unsafe {
        kn_cross_entropy(
            backend,
            a.as_ptr(),
            rows,
            cols,
            targets.as_ptr(),
            losses.as_mut_ptr(),
            dlogits.as_mut_ptr(),
            0.5,
        )
    };
    assert_eq!(status, KN_OK);
    k.cross_entropy(&a, cols, &targets, &mut want_losses, Some(&mut want_d), 0.5)
        .unwrap();
    assert_eq!(
        (bits(&losses), bits(&dlogits)),
        (bits(&want_losses), bits(&want_d))
    );
    // SAFETY: as above; the NULL gradient is allowed.
    let status = unsafe {
        kn_cross_entropy(
            backend,
            a.as_ptr(),
            rows,
            cols,
            targets.as_ptr(),
            losses.as_mut_ptr(),
            std::ptr::null_mut(),
            0.5,
        )
    };
    assert_eq!(status, KN_OK);
    let bad = [1u32, 7, 0];
    let before = bits(&losses);
    // SAFETY: as above.
    let status = unsafe {
        kn_cross_entropy(
            backend,
            a.as_ptr(),
            rows,
            cols,
            bad.as_ptr(),
            losses.as_mut_ptr(),
            std::ptr::null_mut(),
            0.5,
        )
    };
    assert_eq!(status, KN_ERR_INDEX);
    assert_eq!(bits(&losses), before, "a refused call wrote its output");

    // AdamW.
    let opt = kn_adamw_default();
    let (mut p, mut m, mut v) = (a.clone(), vec![0.0; len], vec![0.0; len]);
    let (mut wp, mut wm, mut wv) = (a.clone(), vec![0.0; len], vec![0.0; len]);
    // SAFETY: as above.
    let status = unsafe {
        kn_adamw_step(
            backend,
            &opt,
            1,
            0.5,
            p.as_mut_ptr(),
            b.as_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            len,
        )
    };
    assert_eq!(status, KN_OK);
    k.adamw_step(
        &kernels::AdamW::default(),
        1,
        0.5,
        &mut wp,
        &b,
        &mut wm,
        &mut wv,
    )
    .unwrap();
    assert_eq!(
        (bits(&p), bits(&m), bits(&v)),
        (bits(&wp), bits(&wm), bits(&wv))
    );

    // Transpose with strides.
    let mut t_got = vec![9.0; cols * (rows + 1)];
    let mut t_want = t_got.clone();
    // SAFETY: as above.
    assert_eq!(
        unsafe {
            kn_transpose(
                backend,
                rows,
                cols,
                a.as_ptr(),
                cols,
                t_got.as_mut_ptr(),
                rows + 1,
            )
        },
        KN_OK
    );
    k.transpose(rows, cols, &a, cols, &mut t_want, rows + 1)
        .unwrap();
    assert_eq!(bits(&t_got), bits(&t_want));

    // The bf16 product, on this backend's bf16 unit.
    assert!(kn_bf16_unit(backend) >= KN_BF16_PORTABLE);
    assert_eq!(kn_bf16_unit(99), KN_ERR_ARGUMENT);
    let (m_, n_, k_) = (5, 33, 40);
    let (x, w) = (values(m_ * k_, 4), values(n_ * k_, 5));
    let mut ws_len = 0;
    // SAFETY: as above.
    assert_eq!(
        unsafe { kn_gemm_bf16_workspace_len(backend, m_, n_, k_, &mut ws_len) },
        KN_OK
    );
    let mut ws = vec![0.0; ws_len];
    let (mut got, mut want) = (vec![f32::NAN; m_ * n_], vec![f32::NAN; m_ * n_]);
    let exec = host();
    // SAFETY: as above.
    let status = unsafe {
        kn_gemm_bf16(
            backend,
            &exec,
            0,
            1,
            m_,
            n_,
            k_,
            1.0,
            x.as_ptr(),
            k_,
            w.as_ptr(),
            k_,
            0.0,
            got.as_mut_ptr(),
            n_,
            ws.as_mut_ptr(),
            ws.len(),
        )
    };
    assert_eq!(status, KN_OK);
    let (xv, wv_) = (
        kernels::MatRef::new(&x, m_, k_).unwrap(),
        kernels::MatRef::new(&w, n_, k_).unwrap(),
    );
    k.gemm_bf16(
        1.0,
        xv,
        wv_.t(),
        0.0,
        kernels::MatMut::new(&mut want, m_, n_).unwrap(),
        &mut ws,
    )
    .unwrap();
    assert_eq!(bits(&got), bits(&want));
}

#[test]
fn packed_products_and_peak_loops() {
    let backend = kn_detected_backend();
    let (m, n, k) = (40, 70, 100);
    let (a, b) = (values(m * k, 6), values(n * k, 7));
    let (mut slots_len, mut ws_len, mut packed_ws_len) = (0, 0, 0);
    // SAFETY (every call): each buffer holds what its length says.
    unsafe {
        assert_eq!(kn_packed_bf16_len(k, n, &mut slots_len), KN_OK);
        assert_eq!(
            kn_gemm_bf16_workspace_len(backend, m, n, k, &mut ws_len),
            KN_OK
        );
        assert_eq!(
            kn_gemm_bf16_packed_workspace_len(backend, m, n, k, &mut packed_ws_len),
            KN_OK
        );
    }
    let mut slots = vec![0u32; slots_len];
    let (mut ws, mut packed_ws) = (vec![0.0; ws_len], vec![0.0; packed_ws_len]);
    let (mut want, mut got) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
    let exec = host();
    // SAFETY: as above; B is stored n × k and used transposed.
    unsafe {
        assert_eq!(
            kn_pack_bf16(
                backend,
                1,
                k,
                n,
                b.as_ptr(),
                k,
                slots.as_mut_ptr(),
                slots.len()
            ),
            KN_OK
        );
        let status = kn_gemm_bf16(
            backend,
            std::ptr::null(),
            0,
            1,
            m,
            n,
            k,
            1.0,
            a.as_ptr(),
            k,
            b.as_ptr(),
            k,
            0.0,
            want.as_mut_ptr(),
            n,
            ws.as_mut_ptr(),
            ws.len(),
        );
        assert_eq!(status, KN_OK);
        let status = kn_gemm_bf16_packed(
            backend,
            &exec,
            0,
            m,
            n,
            k,
            1.0,
            a.as_ptr(),
            k,
            slots.as_ptr(),
            slots.len(),
            0.0,
            got.as_mut_ptr(),
            n,
            packed_ws.as_mut_ptr(),
            packed_ws.len(),
        );
        assert_eq!(status, KN_OK);
        // Slots of another shape are refused.
        let status = kn_gemm_bf16_packed(
            backend,
            &exec,
            0,
            m,
            n,
            k,
            1.0,
            a.as_ptr(),
            k,
            slots.as_ptr(),
            slots.len() - 1,
            0.0,
            got.as_mut_ptr(),
            n,
            packed_ws.as_mut_ptr(),
            packed_ws.len(),
        );
        assert_eq!(status, KN_ERR_LENGTH);
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want));
    // The peak loops count, per round, as documented: 12 chains of f32
    // multiply-adds (2 operations) on each of the backend's lanes; for
    // bf16, those on the portable unit, 12 chains of pair dot products (4
    // operations) on 16 lanes, or 4 tile products of 16 × 16 × 32
    // multiply-adds. Every backend up to the detected one runs.
    for backend in KN_BACKEND_SCALAR..=kn_detected_backend() {
        let lanes: u64 = match backend {
            KN_BACKEND_SCALAR => 1,
            KN_BACKEND_AVX2 => 8,
            KN_BACKEND_AVX512 => 16,
            other => panic!("unknown backend {other}"),
        };
        let fma_round = 12 * lanes * 2;
        let bf16_round = match kn_bf16_unit(backend) {
            KN_BF16_PORTABLE => fma_round,
            KN_BF16_AVX512_BF16 => 12 * 16 * 4,
            KN_BF16_AMX => 4 * 2 * 16 * 16 * 32,
            other => panic!("backend {backend}: bf16 unit {other}"),
        };
        for iters in [0, 1, 10] {
            let mut flops = u64::MAX;
            // SAFETY: `flops` is a valid uint64_t.
            unsafe {
                assert_eq!(kn_fma_peak_loop(backend, iters, &mut flops), KN_OK);
                assert_eq!(flops, iters as u64 * fma_round, "backend {backend}");
                flops = u64::MAX;
                assert_eq!(kn_bf16_peak_loop(backend, iters, &mut flops), KN_OK);
                assert_eq!(flops, iters as u64 * bf16_round, "backend {backend}");
            }
        }
    }
}

/// A product of bf16 operands into a bf16 C gives, in every element, the
/// f32 product of the same values (`kn_gemm_bf16` on them widened, beta
/// applied to C's widened values) rounded once to bf16; both operands
/// transposed or not, on tiles where the CPU has them (m ≥ 32).
#[test]
fn bf16_stored_product_is_the_f32_operand_product_rounded_once() {
    let backend = kn_detected_backend();
    let (m, n, k) = (37, 45, 70);
    let widen = |v: &[kn_bf16]| -> Vec<f32> {
        v.iter()
            .map(|h| f32::from_bits(u32::from(h.bits) << 16))
            .collect()
    };
    let narrow = |v: &[f32]| -> Vec<kn_bf16> {
        let mut out = vec![kn_bf16 { bits: 0 }; v.len()];
        // SAFETY: `out` holds as many values as `v`.
        let status = unsafe { kn_f32_to_bf16(backend, v.as_ptr(), out.as_mut_ptr(), v.len()) };
        assert_eq!(status, KN_OK);
        out
    };
    let (a, b, c0) = (
        narrow(&values(m * k, 8)),
        narrow(&values(k * n, 9)),
        narrow(&values(m * n, 10)),
    );
    let mut ws_len = 0;
    // SAFETY: a valid size_t.
    assert_eq!(
        unsafe { kn_gemm_bf16_workspace_len(backend, m, n, k, &mut ws_len) },
        KN_OK
    );
    let mut ws = vec![0.0; ws_len];
    for (trans_a, trans_b) in [(0, 0), (1, 1)] {
        let (lda, ldb) = (
            if trans_a == 1 { m } else { k },
            if trans_b == 1 { k } else { n },
        );
        let mut got = c0.clone();
        let mut want = widen(&c0);
        // SAFETY (both calls): `a` is m × k and `b` k × n as stored
        // (transposed or not: the same number of values), C m × n, the
        // workspace as long as asked for; nothing overlaps.
        let status = unsafe {
            kn_gemm_bf16_stored(
                backend,
                std::ptr::null(),
                trans_a,
                trans_b,
                m,
                n,
                k,
                0.5,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                0.25,
                got.as_mut_ptr(),
                n,
                ws.as_mut_ptr(),
                ws.len(),
            )
        };
        assert_eq!(status, KN_OK);
        let (aw, bw) = (widen(&a), widen(&b));
        // SAFETY: as above, with the same values widened to f32.
        let status = unsafe {
            kn_gemm_bf16(
                backend,
                std::ptr::null(),
                trans_a,
                trans_b,
                m,
                n,
                k,
                0.5,
                aw.as_ptr(),
                lda,
                bw.as_ptr(),
                ldb,
                0.25,
                want.as_mut_ptr(),
                n,
                ws.as_mut_ptr(),
                ws.len(),
            )
        };
        assert_eq!(status, KN_OK);
        assert_eq!(got, narrow(&want), "transposed {trans_a} {trans_b}");
    }
}

/// An output that overlaps an input, or an earlier output, is refused with
/// `KN_ERR_ARGUMENT` before any memory is touched (and before the library
/// makes a Rust slice of either: run it under Miri to check that too). Every
/// buffer of a case lies in one arena; each case runs twice, with its output
/// under test apart from everything (`KN_OK`: the overlap is what is
/// refused), then at an offset that overlaps another buffer.
#[test]
fn overlapping_outputs_are_refused_and_leave_memory_untouched() {
    let backend = kn_detected_backend();
    // Shapes: rows × cols vectors of 8 floats, 4 × 4 × 4 products.
    let (rows, cols, len, d) = (2usize, 4usize, 8usize, 4usize);
    let (mut ws_len, mut bf16_ws_len, mut packed_ws_len, mut slots_len) = (0, 0, 0, 0);
    // SAFETY: each pointer is a valid size_t.
    unsafe {
        assert_eq!(kn_gemm_workspace_len(backend, d, d, d, &mut ws_len), KN_OK);
        assert_eq!(
            kn_gemm_bf16_workspace_len(backend, d, d, d, &mut bf16_ws_len),
            KN_OK
        );
        assert_eq!(
            kn_gemm_bf16_packed_workspace_len(backend, d, d, d, &mut packed_ws_len),
            KN_OK
        );
        assert_eq!(kn_packed_bf16_len(d, d, &mut slots_len), KN_OK);
    }
    let ws_len = ws_len.max(bf16_ws_len).max(packed_ws_len).max(1);
    // The arena: eight slots of `slot` floats (`s(i)`), the workspace, and
    // room for any buffer apart from all others.
    let slot = 64usize.max(slots_len);
    let s = |i: usize| i * slot;
    let room = slot.max(ws_len);
    let (ws, apart) = (s(8), s(8) + room);
    // Cross-entropy targets (uint32_t, below `cols`) in the last slot.
    let targets = s(7);
    let mut fresh = values(apart + room, 9);
    fresh[targets] = f32::from_bits(1);
    fresh[targets + 1] = f32::from_bits(3);
    let opt = kn_adamw_default();

    type At<'a> = &'a dyn Fn(usize) -> *mut f32;
    // (routine, offset of its output under test that overlaps another
    // buffer, the call with that output at a given offset)
    type Case<'a> = (&'static str, usize, &'a dyn Fn(At, usize) -> i32);
    // SAFETY (every call): each buffer lies inside the arena, covering the
    // length passed; the overlapping ones are refused before any access.
    let cases: &[Case] = &[
        ("kn_bf16_to_f32, dst at src", s(0), &|at, o| unsafe {
            kn_bf16_to_f32(backend, at(s(0)).cast(), at(o), len)
        }),
        (
            "kn_f32_to_bf16, dst inside src",
            s(0) + len - 1,
            &|at, o| unsafe { kn_f32_to_bf16(backend, at(s(0)), at(o).cast(), len) },
        ),
        (
            "kn_add, out over b's last element",
            s(1) + len - 1,
            &|at, o| unsafe { kn_add(backend, at(s(0)), at(s(1)), at(o), len) },
        ),
        ("kn_exp, out at x", s(0), &|at, o| unsafe {
            kn_exp(backend, at(s(0)), at(o), len)
        }),
        ("kn_axpy, y inside x", s(0) + 4, &|at, o| unsafe {
            kn_axpy(backend, 0.5, at(s(0)), at(o), len)
        }),
        (
            "kn_add_bias, x ending inside bias",
            s(1) - 4,
            &|at, o| unsafe { kn_add_bias(backend, at(s(1)), cols, at(o), len) },
        ),
        (
            "kn_softmax_backward_rows, grad at probs",
            s(0),
            &|at, o| unsafe { kn_softmax_backward_rows(backend, at(s(0)), at(o), len, cols, 0, 0) },
        ),
        (
            "kn_layer_norm_forward, mean inside out",
            s(3) + 1,
            &|at, o| unsafe {
                kn_layer_norm_forward(
                    backend,
                    at(s(0)),
                    len,
                    at(s(1)),
                    at(s(2)),
                    cols,
                    1e-5,
                    at(s(3)),
                    at(o),
                    at(s(4)),
                )
            },
        ),
        (
            "kn_layer_norm_backward, dbeta inside dgamma",
            s(6) + 2,
            &|at, o| unsafe {
                kn_layer_norm_backward(
                    backend,
                    at(s(0)),
                    len,
                    at(s(1)),
                    cols,
                    at(s(2)),
                    at(s(3)),
                    at(s(4)),
                    at(s(5)),
                    at(s(6)),
                    at(o),
                )
            },
        ),
        (
            "kn_cross_entropy, dlogits at losses",
            s(2),
            &|at, o| unsafe {
                kn_cross_entropy(
                    backend,
                    at(s(0)),
                    rows,
                    cols,
                    at(targets).cast(),
                    at(s(2)),
                    at(o),
                    1.0,
                )
            },
        ),
        (
            "kn_cross_entropy, losses inside targets",
            targets + 1,
            &|at, o| unsafe {
                kn_cross_entropy(
                    backend,
                    at(s(0)),
                    rows,
                    cols,
                    at(targets).cast(),
                    at(o),
                    at(s(3)),
                    1.0,
                )
            },
        ),
        ("kn_adamw_step, v inside m", s(2) + 4, &|at, o| unsafe {
            kn_adamw_step(
                backend,
                &opt,
                1,
                1.0,
                at(s(0)),
                at(s(1)),
                at(s(2)),
                at(o),
                len,
            )
        }),
        (
            "kn_transpose, dst over src's last element",
            s(0) + d * d - 1,
            &|at, o| unsafe { kn_transpose(backend, d, d, at(s(0)), d, at(o), d) },
        ),
        (
            "kn_gemm, C over B's last element",
            s(1) + d * d - 1,
            &|at, o| unsafe {
                kn_gemm(
                    backend,
                    std::ptr::null(),
                    0,
                    0,
                    d,
                    d,
                    d,
                    1.0,
                    at(s(0)),
                    d,
                    at(s(1)),
                    d,
                    0.0,
                    at(o),
                    d,
                    at(ws),
                    ws_len,
                )
            },
        ),
        ("kn_gemm_bf16, workspace at C", s(2), &|at, o| unsafe {
            kn_gemm_bf16(
                backend,
                std::ptr::null(),
                0,
                0,
                d,
                d,
                d,
                1.0,
                at(s(0)),
                d,
                at(s(1)),
                d,
                0.0,
                at(s(2)),
                d,
                at(o),
                ws_len,
            )
        }),
        ("kn_pack_bf16, slots inside B", s(0) + 8, &|at, o| unsafe {
            kn_pack_bf16(backend, 0, d, d, at(s(0)), d, at(o).cast(), slots_len)
        }),
        (
            "kn_gemm_bf16_packed, C inside the slots",
            s(1) + 3,
            &|at, o| unsafe {
                kn_gemm_bf16_packed(
                    backend,
                    std::ptr::null(),
                    0,
                    d,
                    d,
                    d,
                    1.0,
                    at(s(0)),
                    d,
                    at(s(1)).cast(),
                    slots_len,
                    0.0,
                    at(o),
                    d,
                    at(ws),
                    ws_len,
                )
            },
        ),
    ];
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for &(name, overlapping, call) in cases {
        for (offset, want) in [(apart, KN_OK), (overlapping, KN_ERR_ARGUMENT)] {
            let mut arena = fresh.clone();
            let base = arena.as_mut_ptr();
            let status = call(&|i| base.wrapping_add(i), offset);
            assert_eq!(status, want, "{name} (output at {offset})");
            if want != KN_OK {
                assert!(
                    bits(&arena) == bits(&fresh),
                    "{name}: a refused call wrote memory"
                );
            }
        }
    }

    // Touching is not overlapping, and an empty buffer overlaps nothing.
    let mut buf = values(2 * len, 10);
    let p = buf.as_mut_ptr();
    // SAFETY: both ranges lie inside `buf`.
    unsafe {
        assert_eq!(kn_copy(backend, p, p.add(len), len), KN_OK);
        assert_eq!(kn_copy(backend, p.add(len), p, len), KN_OK);
        assert_eq!(kn_add(backend, p, p, p, 0), KN_OK);
        assert_eq!(kn_copy(backend, p.add(1), p, 0), KN_OK);
    }
    assert_eq!(buf[..len], buf[len..]);
}

/// The `kn_` functions of the header with a pointer among their parameters.
fn header_functions_taking_pointers() -> std::collections::BTreeSet<String> {
    let code: String = include_str!("../include/kernels.h")
        .lines()
        .filter(|l| !l.trim_start().starts_with("//") && !l.trim_start().starts_with('#'))
        .collect();
    code.split(';')
        .filter_map(|decl| {
            let (head, params) = decl.split_once('(')?;
            let name = head
                .trim_end()
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()?;
            (name.starts_with("kn_") && params.contains('*')).then(|| name.to_owned())
        })
        .collect()
}

/// Passes a call's pointers through: counts them, in order, and makes the
/// one numbered `null` (if any) NULL.
struct Nulls {
    null: Option<usize>,
    seen: std::cell::Cell<usize>,
}

impl Nulls {
    fn null_here(&self) -> bool {
        let i = self.seen.get();
        self.seen.set(i + 1);
        self.null == Some(i)
    }

    fn ptr<T>(&self, p: *const T) -> *const T {
        if self.null_here() {
            std::ptr::null()
        } else {
            p
        }
    }

    fn mut_ptr<T>(&self, p: *mut T) -> *mut T {
        if self.null_here() {
            std::ptr::null_mut()
        } else {
            p
        }
    }
}

/// Each pointer argument of every function in the header that takes one,
/// NULL with a nonzero length, is `KN_ERR_NULL_POINTER` (the call with none
/// NULL is `KN_OK`). `exec` and `dlogits` may be NULL, and are not passed
/// through `Nulls`; the executor's NULL callback is checked at the end.
#[test]
fn every_pointer_argument_refuses_null() {
    let backend = kn_detected_backend();
    let (rows, cols, len, d) = (2usize, 4usize, 8usize, 4usize);
    let (mut ws_len, mut bf16_ws_len, mut packed_ws_len, mut slots_len) = (0, 0, 0, 0);
    // SAFETY: each pointer is a valid size_t.
    unsafe {
        assert_eq!(kn_gemm_workspace_len(backend, d, d, d, &mut ws_len), KN_OK);
        assert_eq!(
            kn_gemm_bf16_workspace_len(backend, d, d, d, &mut bf16_ws_len),
            KN_OK
        );
        assert_eq!(
            kn_gemm_bf16_packed_workspace_len(backend, d, d, d, &mut packed_ws_len),
            KN_OK
        );
        assert_eq!(kn_packed_bf16_len(d, d, &mut slots_len), KN_OK);
    }
    // Inputs `x`, `y`; outputs `o1`, `o2`, `o3` (64 floats each, more than
    // any call reads), workspace, packed slots, and the other types.
    let (xs, ys) = (values(64, 1), values(64, 2));
    let (mut o1s, mut o2s, mut o3s) = (vec![0.0f32; 64], vec![0.0f32; 64], vec![0.0f32; 64]);
    let mut wss = vec![0.0f32; ws_len.max(bf16_ws_len).max(packed_ws_len).max(1)];
    let mut slotss = vec![0u32; slots_len];
    let (targets, opt) = ([1u32, 3], kn_adamw_default());
    let mut halves = vec![kn_bf16 { bits: 0x3f80 }; 64];
    let mut half_outs = vec![kn_bf16 { bits: 0 }; 64];
    let (mut size, mut flops, mut scalar) = (0usize, 0u64, 0.0f32);
    let (x, y) = (xs.as_ptr(), ys.as_ptr());
    let (o1, o2, o3) = (o1s.as_mut_ptr(), o2s.as_mut_ptr(), o3s.as_mut_ptr());
    let (ws, ws_len) = (wss.as_mut_ptr(), wss.len());
    let (slots, half) = (slotss.as_mut_ptr(), halves.as_mut_ptr());
    let half_out = half_outs.as_mut_ptr();
    let (size, flops, scalar) = (&raw mut size, &raw mut flops, &raw mut scalar);
    let (t, opt, exec) = (targets.as_ptr(), &raw const opt, std::ptr::null());

    type Case<'a> = (
        &'static str,
        &'static [&'static str],
        &'a dyn Fn(&Nulls) -> i32,
    );
    // SAFETY (every call): each pointer covers the length passed with it,
    // or is NULL.
    let cases: &[Case] = &[
        ("kn_gemm_workspace_len", &["len"], &|n| unsafe {
            kn_gemm_workspace_len(backend, d, d, d, n.mut_ptr(size))
        }),
        ("kn_gemm", &["a", "b", "c", "workspace"], &|n| unsafe {
            kn_gemm(
                backend,
                exec,
                0,
                0,
                d,
                d,
                d,
                1.0,
                n.ptr(x),
                d,
                n.ptr(y),
                d,
                0.0,
                n.mut_ptr(o1),
                d,
                n.mut_ptr(ws),
                ws_len,
            )
        }),
        (
            "kn_gemm_bias",
            &["a", "b", "bias", "c", "workspace"],
            &|n| unsafe {
                kn_gemm_bias(
                    backend,
                    exec,
                    0,
                    0,
                    d,
                    d,
                    d,
                    n.ptr(x),
                    d,
                    n.ptr(y),
                    d,
                    n.ptr(y),
                    n.mut_ptr(o1),
                    d,
                    n.mut_ptr(ws),
                    ws_len,
                )
            },
        ),
        ("kn_softmax_rows", &["x"], &|n| unsafe {
            kn_softmax_rows(backend, n.mut_ptr(o1), len, cols, 0, 0)
        }),
        (
            "kn_layer_norm_forward",
            &["x", "gamma", "beta", "out", "mean", "rstd"],
            &|n| unsafe {
                kn_layer_norm_forward(
                    backend,
                    n.ptr(x),
                    len,
                    n.ptr(y),
                    n.ptr(y),
                    cols,
                    1e-5,
                    n.mut_ptr(o1),
                    n.mut_ptr(o2),
                    n.mut_ptr(o3),
                )
            },
        ),
        ("kn_f32_to_bf16", &["src", "dst"], &|n| unsafe {
            kn_f32_to_bf16(backend, n.ptr(x), n.mut_ptr(half), len)
        }),
        ("kn_bf16_to_f32", &["src", "dst"], &|n| unsafe {
            kn_bf16_to_f32(backend, n.ptr(half), n.mut_ptr(o1), len)
        }),
        ("kn_add", &["a", "b", "out"], &|n| unsafe {
            kn_add(backend, n.ptr(x), n.ptr(y), n.mut_ptr(o1), len)
        }),
        ("kn_sub", &["a", "b", "out"], &|n| unsafe {
            kn_sub(backend, n.ptr(x), n.ptr(y), n.mut_ptr(o1), len)
        }),
        ("kn_mul", &["a", "b", "out"], &|n| unsafe {
            kn_mul(backend, n.ptr(x), n.ptr(y), n.mut_ptr(o1), len)
        }),
        ("kn_copy", &["src", "dst"], &|n| unsafe {
            kn_copy(backend, n.ptr(x), n.mut_ptr(o1), len)
        }),
        ("kn_exp", &["x", "out"], &|n| unsafe {
            kn_exp(backend, n.ptr(x), n.mut_ptr(o1), len)
        }),
        ("kn_tanh", &["x", "out"], &|n| unsafe {
            kn_tanh(backend, n.ptr(x), n.mut_ptr(o1), len)
        }),
        ("kn_gelu_forward", &["x", "out"], &|n| unsafe {
            kn_gelu_forward(backend, n.ptr(x), n.mut_ptr(o1), len)
        }),
        ("kn_gelu_backward", &["x", "dout", "dx"], &|n| unsafe {
            kn_gelu_backward(backend, n.ptr(x), n.ptr(y), n.mut_ptr(o1), len)
        }),
        ("kn_gelu_backward_into", &["x", "dout", "dx"], &|n| unsafe {
            kn_gelu_backward_into(backend, n.ptr(x), n.ptr(y), n.mut_ptr(o1), len)
        }),
        ("kn_scale", &["x"], &|n| unsafe {
            kn_scale(backend, 0.5, n.mut_ptr(o1), len)
        }),
        ("kn_fill", &["out"], &|n| unsafe {
            kn_fill(backend, 0.5, n.mut_ptr(o1), len)
        }),
        ("kn_axpy", &["x", "y"], &|n| unsafe {
            kn_axpy(backend, 0.5, n.ptr(x), n.mut_ptr(o1), len)
        }),
        ("kn_add_bias", &["bias", "x"], &|n| unsafe {
            kn_add_bias(backend, n.ptr(x), cols, n.mut_ptr(o1), len)
        }),
        ("kn_sum", &["x", "out"], &|n| unsafe {
            kn_sum(backend, n.ptr(x), len, n.mut_ptr(scalar))
        }),
        ("kn_sum_squares", &["x", "out"], &|n| unsafe {
            kn_sum_squares(backend, n.ptr(x), len, n.mut_ptr(scalar))
        }),
        ("kn_max", &["x", "out"], &|n| unsafe {
            kn_max(backend, n.ptr(x), len, n.mut_ptr(scalar))
        }),
        ("kn_dot", &["a", "b", "out"], &|n| unsafe {
            kn_dot(backend, n.ptr(x), n.ptr(y), len, n.mut_ptr(scalar))
        }),
        (
            "kn_softmax_backward_rows",
            &["probs", "grad"],
            &|n| unsafe {
                kn_softmax_backward_rows(backend, n.ptr(x), n.mut_ptr(o1), len, cols, 0, 0)
            },
        ),
        (
            "kn_layer_norm_backward",
            &[
                "x", "gamma", "mean", "rstd", "dout", "dx", "dgamma", "dbeta",
            ],
            &|n| unsafe {
                kn_layer_norm_backward(
                    backend,
                    n.ptr(x),
                    len,
                    n.ptr(y),
                    cols,
                    n.ptr(x),
                    n.ptr(y),
                    n.ptr(x),
                    n.mut_ptr(o1),
                    n.mut_ptr(o2),
                    n.mut_ptr(o3),
                )
            },
        ),
        (
            "kn_cross_entropy",
            &["logits", "targets", "losses"],
            &|n| unsafe {
                kn_cross_entropy(
                    backend,
                    n.ptr(x),
                    rows,
                    cols,
                    n.ptr(t),
                    n.mut_ptr(o1),
                    o2,
                    1.0,
                )
            },
        ),
        (
            "kn_adamw_step",
            &["opt", "params", "grads", "m", "v"],
            &|n| unsafe {
                kn_adamw_step(
                    backend,
                    n.ptr(opt),
                    1,
                    1.0,
                    n.mut_ptr(o1),
                    n.ptr(x),
                    n.mut_ptr(o2),
                    n.mut_ptr(o3),
                    len,
                )
            },
        ),
        ("kn_transpose", &["src", "dst"], &|n| unsafe {
            kn_transpose(backend, d, d, n.ptr(x), d, n.mut_ptr(o1), d)
        }),
        ("kn_gemm_bf16_workspace_len", &["len"], &|n| unsafe {
            kn_gemm_bf16_workspace_len(backend, d, d, d, n.mut_ptr(size))
        }),
        ("kn_gemm_bf16", &["a", "b", "c", "workspace"], &|n| unsafe {
            kn_gemm_bf16(
                backend,
                exec,
                0,
                0,
                d,
                d,
                d,
                1.0,
                n.ptr(x),
                d,
                n.ptr(y),
                d,
                0.0,
                n.mut_ptr(o1),
                d,
                n.mut_ptr(ws),
                ws_len,
            )
        }),
        (
            "kn_gemm_bf16_bias",
            &["a", "b", "bias", "c", "workspace"],
            &|n| unsafe {
                kn_gemm_bf16_bias(
                    backend,
                    exec,
                    0,
                    0,
                    d,
                    d,
                    d,
                    n.ptr(x),
                    d,
                    n.ptr(y),
                    d,
                    n.ptr(y),
                    n.mut_ptr(o1),
                    d,
                    n.mut_ptr(ws),
                    ws_len,
                )
            },
        ),
        (
            "kn_gemm_bf16_stored",
            &["a", "b", "c", "workspace"],
            &|n| unsafe {
                kn_gemm_bf16_stored(
                    backend,
                    exec,
                    0,
                    0,
                    d,
                    d,
                    d,
                    1.0,
                    n.ptr(half.cast_const()),
                    d,
                    n.ptr(half.cast_const()),
                    d,
                    0.0,
                    n.mut_ptr(half_out),
                    d,
                    n.mut_ptr(ws),
                    ws_len,
                )
            },
        ),
        ("kn_packed_bf16_len", &["len"], &|n| unsafe {
            kn_packed_bf16_len(d, d, n.mut_ptr(size))
        }),
        ("kn_pack_bf16", &["b", "slots"], &|n| unsafe {
            kn_pack_bf16(backend, 0, d, d, n.ptr(y), d, n.mut_ptr(slots), slots_len)
        }),
        ("kn_gemm_bf16_packed_workspace_len", &["len"], &|n| unsafe {
            kn_gemm_bf16_packed_workspace_len(backend, d, d, d, n.mut_ptr(size))
        }),
        (
            "kn_gemm_bf16_packed",
            &["a", "slots", "c", "workspace"],
            &|n| unsafe {
                kn_gemm_bf16_packed(
                    backend,
                    exec,
                    0,
                    d,
                    d,
                    d,
                    1.0,
                    n.ptr(x),
                    d,
                    n.ptr(slots.cast_const()),
                    slots_len,
                    0.0,
                    n.mut_ptr(o1),
                    d,
                    n.mut_ptr(ws),
                    ws_len,
                )
            },
        ),
        (
            "kn_gemm_bf16_packed_bias",
            &["a", "slots", "bias", "c", "workspace"],
            &|n| unsafe {
                kn_gemm_bf16_packed_bias(
                    backend,
                    exec,
                    0,
                    d,
                    d,
                    d,
                    n.ptr(x),
                    d,
                    n.ptr(slots.cast_const()),
                    slots_len,
                    n.ptr(y),
                    n.mut_ptr(o1),
                    d,
                    n.mut_ptr(ws),
                    ws_len,
                )
            },
        ),
        ("kn_fma_peak_loop", &["flops"], &|n| unsafe {
            kn_fma_peak_loop(backend, 1, n.mut_ptr(flops))
        }),
        ("kn_bf16_peak_loop", &["flops"], &|n| unsafe {
            kn_bf16_peak_loop(backend, 1, n.mut_ptr(flops))
        }),
    ];
    let tested: std::collections::BTreeSet<String> =
        cases.iter().map(|(name, ..)| name.to_string()).collect();
    assert_eq!(
        tested,
        header_functions_taking_pointers(),
        "every function of the header that takes a pointer has a case"
    );
    for &(name, pointers, call) in cases {
        let all = Nulls {
            null: None,
            seen: 0.into(),
        };
        assert_eq!(call(&all), KN_OK, "{name} with no NULL");
        assert_eq!(all.seen.get(), pointers.len(), "{name}: pointers named");
        for (i, pointer) in pointers.iter().enumerate() {
            let one = Nulls {
                null: Some(i),
                seen: 0.into(),
            };
            assert_eq!(
                call(&one),
                KN_ERR_NULL_POINTER,
                "{name} with {pointer} NULL"
            );
        }
    }

    // An executor without its callback.
    let no_callback = kn_executor {
        ctx: std::ptr::null_mut(),
        threads: 1,
        parallel_for: None,
    };
    // SAFETY: as above.
    let status = unsafe {
        kn_gemm(
            backend,
            &no_callback,
            0,
            0,
            d,
            d,
            d,
            1.0,
            x,
            d,
            y,
            d,
            0.0,
            o1,
            d,
            ws,
            ws_len,
        )
    };
    assert_eq!(status, KN_ERR_NULL_POINTER);
    drop((xs, ys, o1s, o2s, o3s, wss, slotss, halves));
}

/// The host's `kn_executor` is checked like every other pointer and read
/// once, by value: a misaligned one is refused, and one that lies in the
/// workspace (which the product overwrites) still runs the product, bit
/// for bit as the calling thread does. Also run under Miri by CI, where
/// a reference held to the struct while the workspace is written is
/// undefined behaviour.
#[test]
fn the_executor_is_checked_and_read_once() {
    let backend = kn_detected_backend();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (m, n, k) = (13usize, 11usize, 7usize);
    let (a, b) = (values(m * k, 1), values(k * n, 2));
    let mut want = vec![f32::NAN; m * n];
    assert_eq!(
        gemm(None, (0, 0), (m, n, k), &a, k, &b, n, 0.0, &mut want, n),
        KN_OK
    );

    // Misaligned: the struct copied one byte into an 8-aligned buffer (a
    // buffer of u8 may start anywhere, under Miri at random).
    let mut words = vec![0u64; size_of::<kn_executor>() / 8 + 1];
    let misaligned = words
        .as_mut_ptr()
        .cast::<u8>()
        .wrapping_add(1)
        .cast::<kn_executor>();
    // SAFETY: the buffer holds the struct's bytes past its first one.
    unsafe { misaligned.write_unaligned(host()) };
    let mut c = vec![f32::NAN; m * n];
    let mut len = 0;
    // SAFETY: `len` is a valid size_t.
    assert_eq!(
        unsafe { kn_gemm_workspace_len(backend, m, n, k, &mut len) },
        KN_OK
    );
    // A workspace of u64s, so that the struct can be placed in it aligned.
    let mut ws = vec![0u64; len.max(64).div_ceil(2)];
    let (ws_ptr, ws_len) = (ws.as_mut_ptr().cast::<f32>(), 2 * ws.len());
    let call = |exec: *const kn_executor, c: &mut [f32]| {
        // SAFETY: every buffer covers its matrix; `exec` is tested here.
        unsafe {
            kn_gemm(
                backend,
                exec,
                0,
                0,
                m,
                n,
                k,
                0.5,
                a.as_ptr(),
                k,
                b.as_ptr(),
                n,
                0.0,
                c.as_mut_ptr(),
                n,
                ws_ptr,
                ws_len,
            )
        }
    };
    assert_eq!(call(misaligned, &mut c), KN_ERR_ARGUMENT);
    assert!(c.iter().all(|v| v.is_nan()), "a refused call wrote C");

    // In the workspace: the first floats hold the struct.
    let exec = ws_ptr.cast::<kn_executor>();
    // SAFETY: the workspace is large enough and 8-aligned for the struct.
    unsafe { exec.write(host()) };
    assert_eq!(call(exec, &mut c), KN_OK);
    assert_eq!(bits(&c), bits(&want));

    // Cross-entropy with no classes: every target is out of range.
    let (targets, mut losses) = ([0u32, 0], [f32::NAN; 2]);
    // SAFETY: no logits to read (0 classes); the rest cover 2 rows.
    let status = unsafe {
        kn_cross_entropy(
            backend,
            [0.0f32; 1].as_ptr(),
            2,
            0,
            targets.as_ptr(),
            losses.as_mut_ptr(),
            std::ptr::null_mut(),
            1.0,
        )
    };
    assert_eq!(status, KN_ERR_INDEX);
    assert!(losses.iter().all(|v| v.is_nan()), "a refused call wrote");
}

/// The bias-fused products: each is its Rust call, bit for bit, on the
/// host executor (C NaN-filled beforehand: it is written, not read), on
/// shapes of many rows and of few (whose bias is added after the
/// product), with A read as stored or transposed; the packed one is the
/// unpacked one bit for bit; the f32 one is within rounding of an f64
/// loop; a bias inside C or the workspace is refused with the output left
/// as it was; no columns take a NULL bias.
#[test]
fn bias_products_are_the_rust_calls() {
    use kernels::{MatMut, PackedBf16, Sequential};
    let backend = kn_detected_backend();
    let k = kernels::Kernels::best();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let exec = host();
    // Odd sizes: edge tiles on every side. B is stored n × k (used
    // transposed); A is stored m × k, or k × m where `trans_a` is 1.
    for (m, n, kk, trans_a) in [(37, 29, 53, 0), (3, 29, 53, 1), (37, 5, 17, 1)] {
        let (a, b, bias) = (values(m * kk, 11), values(n * kk, 12), values(n, 13));
        let lda = if trans_a == 1 { m } else { kk };
        let (mut f32_ws, mut bf16_ws, mut packed_ws, mut slots_len) = (0, 0, 0, 0);
        // SAFETY (every call): each pointer is a writable size_t.
        unsafe {
            assert_eq!(kn_gemm_workspace_len(backend, m, n, kk, &mut f32_ws), KN_OK);
            assert_eq!(
                kn_gemm_bf16_workspace_len(backend, m, n, kk, &mut bf16_ws),
                KN_OK
            );
            assert_eq!(
                kn_gemm_bf16_packed_workspace_len(backend, m, n, kk, &mut packed_ws),
                KN_OK
            );
            assert_eq!(kn_packed_bf16_len(kk, n, &mut slots_len), KN_OK);
        }
        let stored_a = if trans_a == 1 {
            MatRef::new(&a, kk, m).unwrap().t()
        } else {
            MatRef::new(&a, m, kk).unwrap()
        };
        let bv = MatRef::new(&b, n, kk).unwrap().t();
        // Each call gets exactly the workspace its length function gives.
        let run = |ws_len: usize, call: &dyn Fn(*mut f32, *mut f32) -> i32| {
            let mut got = vec![f32::NAN; m * n];
            let mut ws = vec![0.0; ws_len];
            assert_eq!(call(got.as_mut_ptr(), ws.as_mut_ptr()), KN_OK);
            got
        };
        let mut ws = vec![0.0; f32_ws.max(bf16_ws).max(packed_ws)];

        // The two unpacked products share a signature: f32, then bf16
        // products of f32 operands, each against its Rust call.
        type BiasProduct = unsafe extern "C" fn(
            i32,
            *const kn_executor,
            i32,
            i32,
            usize,
            usize,
            usize,
            *const f32,
            usize,
            *const f32,
            usize,
            *const f32,
            *mut f32,
            usize,
            *mut f32,
            usize,
        ) -> i32;
        type RustBiasProduct<'a> =
            &'a dyn Fn(MatMut, &mut [f32]) -> Result<(), kernels::KernelError>;
        let f32_rust: RustBiasProduct =
            &|c, ws| k.gemm_bias_with(&Sequential, stored_a, bv, &bias, c, ws);
        let bf16_rust: RustBiasProduct =
            &|c, ws| k.gemm_bf16_bias_with(&Sequential, stored_a, bv, &bias, c, ws);
        let unpacked: [(BiasProduct, RustBiasProduct, usize); 2] = [
            (kn_gemm_bias, f32_rust, f32_ws),
            (kn_gemm_bf16_bias, bf16_rust, bf16_ws),
        ];
        let mut results = Vec::new();
        for (abi, rust, ws_len) in unpacked {
            // SAFETY: A, B, bias, C and the workspace cover what their
            // shapes say.
            let got = run(ws_len, &|c, w| unsafe {
                abi(
                    backend,
                    &exec,
                    trans_a,
                    1,
                    m,
                    n,
                    kk,
                    a.as_ptr(),
                    lda,
                    b.as_ptr(),
                    kk,
                    bias.as_ptr(),
                    c,
                    n,
                    w,
                    ws_len,
                )
            });
            let mut want = vec![f32::NAN; m * n];
            rust(MatMut::new(&mut want, m, n).unwrap(), &mut ws).unwrap();
            assert_eq!(bits(&got), bits(&want), "{m}×{n}×{kk}");
            results.push(got);
        }
        let [got_f32, got] = <[Vec<f32>; 2]>::try_from(results).unwrap();
        // The f32 product within rounding of an f64 loop.
        let at = |i: usize, p: usize| {
            if trans_a == 1 {
                a[p * m + i]
            } else {
                a[i * kk + p]
            }
        };
        for i in 0..m {
            for j in 0..n {
                let terms = (0..kk).map(|p| at(i, p) as f64 * b[j * kk + p] as f64);
                let exact = terms.clone().sum::<f64>() + bias[j] as f64;
                let scale = terms.map(f64::abs).sum::<f64>() + (bias[j] as f64).abs();
                let err = (got_f32[i * n + j] as f64 - exact).abs();
                assert!(err <= (kk as f64 + 2.0) * 6e-8 * scale, "[{i}][{j}]");
            }
        }

        // B packed once: the unpacked bf16 product, bit for bit.
        let mut slots = vec![0u32; slots_len];
        // SAFETY: B is n × k, used transposed; the slots as asked.
        let packed = unsafe {
            kn_pack_bf16(
                backend,
                1,
                kk,
                n,
                b.as_ptr(),
                kk,
                slots.as_mut_ptr(),
                slots_len,
            )
        };
        assert_eq!(packed, KN_OK);
        // SAFETY: as above.
        let got_packed = run(packed_ws, &|c, w| unsafe {
            kn_gemm_bf16_packed_bias(
                backend,
                &exec,
                trans_a,
                m,
                n,
                kk,
                a.as_ptr(),
                lda,
                slots.as_ptr(),
                slots_len,
                bias.as_ptr(),
                c,
                n,
                w,
                packed_ws,
            )
        });
        assert_eq!(bits(&got_packed), bits(&got), "packed, {m}×{n}×{kk}");
        let mut want = vec![f32::NAN; m * n];
        let c = MatMut::new(&mut want, m, n).unwrap();
        let pb = PackedBf16::new(&slots, kk, n).unwrap();
        k.gemm_bf16_packed_bias_with(&Sequential, stored_a, pb, &bias, c, &mut ws)
            .unwrap();
        assert_eq!(bits(&got_packed), bits(&want), "packed, {m}×{n}×{kk}");
    }

    // A bias inside C or inside the workspace: refused, the outputs as
    // they were.
    let (m, n, kk) = (4, 8, 8);
    let (a, b) = (values(m * kk, 14), values(kk * n, 15));
    let mut f32_ws = 0;
    // SAFETY: a writable size_t.
    assert_eq!(
        unsafe { kn_gemm_workspace_len(backend, m, n, kk, &mut f32_ws) },
        KN_OK
    );
    let mut c = vec![0.25f32; m * n];
    let mut ws = vec![0.5f32; f32_ws.max(n)];
    let (c_ptr, ws_ptr) = (c.as_mut_ptr(), ws.as_mut_ptr());
    for (bias, what) in [
        (c_ptr.cast_const(), "C"),
        (ws_ptr.cast_const(), "workspace"),
    ] {
        // SAFETY: every pointer covers its length; the overlap is the point.
        let status = unsafe {
            kn_gemm_bias(
                backend,
                &exec,
                0,
                0,
                m,
                n,
                kk,
                a.as_ptr(),
                kk,
                b.as_ptr(),
                n,
                bias,
                c_ptr,
                n,
                ws_ptr,
                ws.len(),
            )
        };
        assert_eq!(status, KN_ERR_ARGUMENT, "a bias inside the {what}");
    }
    let mut slots_len = 0;
    // SAFETY: a writable size_t.
    assert_eq!(unsafe { kn_packed_bf16_len(kk, n, &mut slots_len) }, KN_OK);
    let slots = vec![0u32; slots_len];
    // SAFETY: as above.
    let status = unsafe {
        kn_gemm_bf16_packed_bias(
            backend,
            &exec,
            0,
            m,
            n,
            kk,
            a.as_ptr(),
            kk,
            slots.as_ptr(),
            slots_len,
            c_ptr.cast_const(),
            c_ptr,
            n,
            ws_ptr,
            ws.len(),
        )
    };
    assert_eq!(status, KN_ERR_ARGUMENT, "a packed product's bias inside C");
    assert!(c.iter().all(|&x| x == 0.25) && ws.iter().all(|&x| x == 0.5));

    // No columns: a NULL bias of length 0 is fine, and C (no elements) is
    // left alone.
    let mut ws = vec![0.0f32; f32_ws];
    // SAFETY: A covers m × k; B, the bias and C are empty.
    let status = unsafe {
        kn_gemm_bias(
            backend,
            &exec,
            0,
            0,
            m,
            0,
            kk,
            a.as_ptr(),
            kk,
            std::ptr::null(),
            1,
            std::ptr::null(),
            std::ptr::null_mut(),
            1,
            ws.as_mut_ptr(),
            ws.len(),
        )
    };
    assert_eq!(status, KN_OK);
}
