//! The C ABI called as C would call it: results against plain loops, the
//! host executor against the calling thread (bit for bit), and every
//! status code reached with the output left untouched.

use std::ffi::{c_void, CStr};

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
    let binaries: [(Binary, RustBinary); 4] = [
        (kn_add, kernels::Kernels::add),
        (kn_sub, kernels::Kernels::sub),
        (kn_mul, kernels::Kernels::mul),
        (kn_gelu_backward, kernels::Kernels::gelu_backward),
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
    let mut flops = 0u64;
    // SAFETY: `flops` is a valid uint64_t.
    unsafe {
        assert_eq!(kn_fma_peak_loop(backend, 10, &mut flops), KN_OK);
        assert_eq!(flops, kernels::Kernels::best().fma_peak_loop(10));
        assert_eq!(kn_bf16_peak_loop(backend, 10, &mut flops), KN_OK);
        assert_eq!(flops, kernels::Kernels::best().bf16_peak_loop(10));
    }
}
