//! The bf16 GEMM against a triple loop in f64 over the bf16-rounded
//! operands, on every backend and awkward shapes, transposes, strides and
//! NaN-filled C; f32 and bf16 operands that hold the same values give the
//! same bits; the split across threads changes nothing.
//!
//! The check itself is `freestanding::bf16_product` (shared with
//! `tools/amx-emulator`). Tolerance: the f32 GEMM's, (k + 2)·u·(|alpha|·
//! Σ|a·b| + |beta·c|) with u = 2⁻²⁴, doubled, against the exact product of
//! the rounded operands.

use std::vec::Vec;

use super::freestanding::{
    bf16_packed_views, bf16_product, bf16_random_products, bf16_rows_in_place, bf16_tile_edges,
    bits, Case, Reversed, Stored,
};
use super::*;
use crate::dispatch::Isa;
use crate::{Bf16, Bf16Unit, Executor, KernelError, MatMut, MatRef, Sequential};

/// Every bf16 implementation testable here: the portable path on every
/// backend, AVX512-BF16 and AMX where the CPU has them (a notice where
/// not), and the pair-packed and tile paths on emulated pair dot products
/// and emulated tiles (so their packing and blocking run on any CPU).
fn bf16_kernels() -> Vec<(&'static str, Kernels)> {
    let mut all = std::vec![("scalar", scalar())];
    for (name, k) in simd_kernels() {
        all.push((name, k.with_bf16_unit(Bf16Unit::Portable).unwrap()));
    }
    match Kernels::best().with_bf16_unit(Bf16Unit::Avx512Bf16) {
        Ok(k) => all.push(("avx512-bf16", k)),
        Err(_) => eprintln!("notice: this CPU lacks AVX512-BF16; skipping its real-hardware tests"),
    }
    match Kernels::best().with_bf16_unit(Bf16Unit::Amx) {
        Ok(k) => all.push(("amx", k)),
        Err(e) => eprintln!("notice: no AMX here ({e}); skipping its real-hardware tests"),
    }
    for (name, unit) in [
        ("emulated-pairs", Bf16Unit::Avx512Bf16),
        ("emulated-tiles", Bf16Unit::Amx),
    ] {
        let isa = Isa::Emulated16;
        all.push((name, emulated(isa, unit)));
    }
    all
}

#[test]
fn gemm_bf16_matches_f64_on_rounded_operands_for_every_operand_type() {
    // Each handle draws other shapes.
    for (seed, (name, k)) in bf16_kernels().into_iter().enumerate() {
        bf16_random_products(name, k, seed as u64, 40);
    }
}

#[test]
fn gemm_bf16_is_bit_identical_for_any_split() {
    for (name, k) in bf16_kernels() {
        for (m, n, kk) in [(150, 200, 70), (3, 300, 40), (64, 64, 64)] {
            let case = Case {
                m,
                n,
                k: kk,
                trans_a: false,
                trans_b: true,
                alpha: 1.0,
                beta: 0.5,
            };
            let one = bf16_product(name, k, &Sequential, case, (|x| x, |x| x), (0.0, 0.0));
            let split = bf16_product(name, k, &Reversed(4), case, (|x| x, |x| x), (0.0, 0.0));
            assert_eq!(one, split, "{name} {case:?}");
        }
    }
}

#[test]
fn gemm_bf16_refuses_bad_shapes_and_short_workspaces() {
    for (_, k) in bf16_kernels() {
        refuses_bad_shapes(k);
    }
    // The AVX512-BF16 and AMX units need the AVX-512 backend.
    for unit in [Bf16Unit::Avx512Bf16, Bf16Unit::Amx] {
        let err = scalar().with_bf16_unit(unit).unwrap_err();
        assert_eq!(err, KernelError::UnsupportedBf16Unit(unit));
    }
}

fn refuses_bad_shapes(k: Kernels) {
    let a = [Bf16::default(); 6];
    let b = [0.0f32; 6];
    let mut c = [0.0f32; 4];
    let mut ws = std::vec![0.0; k.gemm_bf16_workspace_len(2, 2, 3)];
    let (a, b) = (
        MatRef::new(&a, 2, 3).unwrap(),
        MatRef::new(&b, 3, 2).unwrap(),
    );
    let err = k.gemm_bf16(
        1.0,
        a,
        b.t(),
        0.0,
        MatMut::new(&mut c, 2, 2).unwrap(),
        &mut ws,
    );
    assert!(matches!(err, Err(KernelError::InvalidShape(_))));
    let short = ws.len() - 1;
    let err = k.gemm_bf16(
        1.0,
        a,
        b,
        0.0,
        MatMut::new(&mut c, 2, 2).unwrap(),
        &mut ws[..short],
    );
    assert!(matches!(err, Err(KernelError::WorkspaceTooSmall { .. })));
    assert_eq!(c, [0.0; 4], "a refused product writes nothing");
}

#[test]
fn the_bf16_peak_loop_counts_its_operations() {
    // Per round, as documented: 12 chains of f32 multiply-adds (2
    // operations) on each of the backend's lanes for the portable unit; 12
    // chains of pair dot products (4 operations) on 16 lanes; 4 tile
    // products of 16 × 16 × 32 multiply-adds.
    for (name, k) in bf16_kernels() {
        let per_round = match k.bf16_unit() {
            Bf16Unit::Portable => 12 * k.backend().lanes() as u64 * 2,
            Bf16Unit::Avx512Bf16 => 12 * 16 * 4,
            Bf16Unit::Amx => 4 * 2 * (16 * 16 * 32),
        };
        for iters in [0, 1, 10] {
            let flops = k.bf16_peak_loop(iters);
            assert_eq!(flops, iters as u64 * per_round, "{name}, {iters} rounds");
        }
    }
}

/// B packed once: every slot written (two different fills give the same
/// slots), the same slots from every handle, and products that are bit
/// for bit those of [`Kernels::gemm_bf16`] on the same operands.
#[test]
fn gemm_bf16_packed_matches_the_unpacked_product() {
    use crate::PackedBf16;
    let all = bf16_kernels();
    for &(m, n, kk) in &[
        (1, 1, 1),
        (1, 33, 7),
        (4, 97, 13),
        (13, 130, 17),
        (40, 33, 35),
        (2, 5, 0),
        (0, 3, 2),
        // Few rows (the portable unit streams a packed B once per row, up
        // to 16 rows): many panels and a partial last one, split among
        // threads, an odd k; and 17 rows, just past that path.
        (1, 600, 200),
        (3, 1000, 64),
        (4, 300, 301),
        (16, 45, 20),
        (17, 45, 20),
    ] {
        for trans_b in [false, true] {
            let mut rng = Rng::new((m + 31 * n + 7 * kk) as u64);
            let (a_vals, b_vals) = (rng.vec(m * kk, -2.0, 2.0), rng.vec(kk * n, -2.0, 2.0));
            let (br, bc) = if trans_b { (n, kk) } else { (kk, n) };
            let b = Stored::new(&b_vals, br, bc, 2, 0.0, |x| x);
            let a = Stored::new(&a_vals, m, kk, 1, 0.0, |x| x);
            let len = PackedBf16::len(kk, n).unwrap();
            let mut reference_slots: Option<Vec<u32>> = None;
            for (name, k) in &all {
                let mut slots = std::vec![u32::MAX; len];
                k.pack_bf16(b.view(trans_b), &mut slots).unwrap();
                let mut again = std::vec![0x7fc0_7fc0; len];
                k.pack_bf16(b.view(trans_b), &mut again).unwrap();
                assert_eq!(slots, again, "{name}: a slot was left unwritten");
                match &reference_slots {
                    None => reference_slots = Some(slots.clone()),
                    Some(first) => assert_eq!(&slots, first, "{name}: slots differ by handle"),
                }
                let packed = PackedBf16::new(&slots, kk, n).unwrap();
                for beta in [0.0, 0.5] {
                    let fill = if beta == 0.0 { f32::NAN } else { 0.25 };
                    let mut want = std::vec![fill; m * n];
                    let mut ws = std::vec![f32::NAN; k.gemm_bf16_workspace_len(m, n, kk)];
                    k.gemm_bf16(
                        1.5,
                        a.view(false),
                        b.view(trans_b),
                        beta,
                        MatMut::new(&mut want, m, n).unwrap(),
                        &mut ws,
                    )
                    .unwrap();
                    let mut got = std::vec![fill; m * n];
                    let mut ws = std::vec![f32::NAN; k.gemm_bf16_packed_workspace_len(m, n, kk)];
                    k.gemm_bf16_packed_with(
                        &Reversed(3),
                        1.5,
                        a.view(false),
                        packed,
                        beta,
                        MatMut::new(&mut got, m, n).unwrap(),
                        &mut ws,
                    )
                    .unwrap();
                    assert_eq!(bits(&got), bits(&want), "{name} {m}x{n}x{kk} beta {beta}");
                }
            }
        }
    }
}

/// Products of few rows read a B of bf16 rows where it lies (rows apart by
/// more than their length, the gaps NaN) and give the bits of the same B
/// packed, of B as f32 values, and of any split: on every unit, at and
/// past each unit's few-row limit, with column tails of every width.
#[test]
fn few_rows_read_bf16_rows_in_place_with_the_packed_bits() {
    use crate::PackedBf16;
    let nan = Bf16::from_bits(0x7FC1);
    for (name, k) in bf16_kernels() {
        for (m, n, kk) in [
            (1, 1, 1),
            (1, 17, 5),
            (2, 200, 33),
            (3, 401, 70),
            (4, 45, 20),
            (16, 45, 20),
            (17, 45, 20),
            (1, 300, 600),
        ] {
            let mut rng = Rng::new((m + 31 * n + 7 * kk) as u64);
            let (a_vals, b_vals) = (rng.vec(m * kk, -2.0, 2.0), rng.vec(kk * n, -2.0, 2.0));
            let a = Stored::new(&a_vals, m, kk, 1, 0.0, |x| x);
            let b16 = Stored::new(&b_vals, kk, n, 3, nan, Bf16::from_f32);
            let b32 = Stored::new(&b_vals, kk, n, 3, f32::NAN, |x| x);
            let mut slots = std::vec![0; PackedBf16::len(kk, n).unwrap()];
            k.pack_bf16(b16.view(false), &mut slots).unwrap();
            let packed = PackedBf16::new(&slots, kk, n).unwrap();
            let what = format!("{name} {m}x{n}x{kk}");
            for beta in [0.0, 0.5] {
                let fill = if beta == 0.0 { f32::NAN } else { 0.25 };
                let run = |b: Option<MatRef<Bf16>>, f32_b: bool, split: bool| {
                    let mut c = std::vec![fill; m * n];
                    let out = MatMut::new(&mut c, m, n).unwrap();
                    let exec: &dyn Executor = if split { &Reversed(3) } else { &Sequential };
                    let mut ws = std::vec![f32::NAN; k.gemm_bf16_workspace_len(m, n, kk)];
                    match (b, f32_b) {
                        (Some(b), _) => {
                            k.gemm_bf16_with(exec, 1.5, a.view(false), b, beta, out, &mut ws)
                        }
                        (None, true) => k.gemm_bf16_with(
                            exec,
                            1.5,
                            a.view(false),
                            b32.view(false),
                            beta,
                            out,
                            &mut ws,
                        ),
                        (None, false) => k.gemm_bf16_packed_with(
                            exec,
                            1.5,
                            a.view(false),
                            packed,
                            beta,
                            out,
                            &mut ws,
                        ),
                    }
                    .unwrap();
                    c
                };
                let in_place = run(Some(b16.view(false)), false, false);
                assert!(
                    in_place.iter().all(|x| x.is_finite()),
                    "{what}: C not all written"
                );
                let others = [
                    ("packed", run(None, false, false)),
                    ("f32 B", run(None, true, false)),
                    ("split", run(Some(b16.view(false)), false, true)),
                ];
                for (how, c) in others {
                    assert_eq!(
                        bits(&in_place),
                        bits(&c),
                        "{what} beta {beta}: {how} differs"
                    );
                }
            }
        }
    }
}

/// `pack_bf16` writes the layout `PackedBf16` documents, checked slot by
/// slot against its definition on every handle: panels of 32 columns,
/// each a run of pairs of consecutive rows, the even row in the low half;
/// zeros past the columns and rows. B stored either way round (with a
/// row stride), every tail of the pair and panel layouts, special values;
/// B of f32 values and of bf16 ones (paired bit for bit, a signalling NaN
/// included).
#[test]
fn pack_bf16_writes_the_documented_layout() {
    use crate::PackedBf16;
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        1e-40,
        -3.0e38,
        1.0 + 1.0 / 256.0,
        // A signalling NaN, ties to even both ways, the largest float
        // (rounds to infinity), a subnormal tie.
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
        f32::from_bits(0x7F7F_FFFF),
        f32::from_bits(0x8001_8000),
    ];
    for &(k, n) in &[(1, 1), (2, 33), (7, 32), (33, 64), (130, 65), (300, 70)] {
        let mut rng = Rng::new((k * 101 + n) as u64);
        let mut vals = rng.vec(k * n, -2.0, 2.0);
        for (i, &x) in specials.iter().enumerate() {
            vals[(i * 7919) % (k * n)] = x;
        }
        let len = PackedBf16::len(k, n).unwrap();
        let panels = n.div_ceil(32);
        let stride = len / panels;
        let bits = |r: usize, c: usize| -> u32 {
            if r < k && c < n {
                u32::from(Bf16::from_f32(vals[r * n + c]).to_bits())
            } else {
                0
            }
        };
        for trans in [false, true] {
            // B as used is k × n: stored as is, or as its transpose (n × k).
            let stored: Vec<f32> = if trans {
                (0..n * k).map(|i| vals[(i % k) * n + i / k]).collect()
            } else {
                vals.clone()
            };
            let (rows, cols) = if trans { (n, k) } else { (k, n) };
            let b = Stored::new(&stored, rows, cols, 3, f32::NAN, |x| x);
            let nan = Bf16::from_f32(f32::NAN);
            let b16 = Stored::new(&stored, rows, cols, 3, nan, Bf16::from_f32);
            for (name, kern) in bf16_kernels() {
                for stored_as in ["f32", "bf16"] {
                    let mut slots = std::vec![u32::MAX; len];
                    match stored_as {
                        "f32" => kern.pack_bf16(b.view(trans), &mut slots).unwrap(),
                        _ => kern.pack_bf16(b16.view(trans), &mut slots).unwrap(),
                    }
                    for j in 0..panels {
                        for q in 0..stride / 32 {
                            for i in 0..32 {
                                let c = 32 * j + i;
                                let want = bits(2 * q, c) | (bits(2 * q + 1, c) << 16);
                                let got = slots[j * stride + q * 32 + i];
                                assert_eq!(
                                    got, want,
                                    "{name} {stored_as} {k}x{n} trans {trans}: panel {j}, pair {q}, column {i}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_bf16_packed_refuses_bad_shapes_and_short_buffers() {
    use crate::PackedBf16;
    for (name, k) in bf16_kernels() {
        let w = [1.0f32; 6];
        let mut slots = std::vec![0; PackedBf16::len(3, 2).unwrap()];
        let short = slots.len() - 1;
        let err = k.pack_bf16(MatRef::new(&w, 3, 2).unwrap(), &mut slots[..short]);
        assert!(
            matches!(err, Err(KernelError::LengthMismatch { .. })),
            "{name}"
        );
        k.pack_bf16(MatRef::new(&w, 3, 2).unwrap(), &mut slots)
            .unwrap();
        assert!(PackedBf16::new(&slots[..short], 3, 2).is_err(), "{name}");
        let packed = PackedBf16::new(&slots, 3, 2).unwrap();
        let a = [1.0f32; 4];
        let mut c = [0.0f32; 2];
        let mut ws = std::vec![0.0; k.gemm_bf16_packed_workspace_len(1, 2, 4)];
        // op(A) has 4 columns, the packed B 3 rows.
        let err = k.gemm_bf16_packed(
            1.0,
            MatRef::new(&a, 1, 4).unwrap(),
            packed,
            0.0,
            MatMut::new(&mut c, 1, 2).unwrap(),
            &mut ws,
        );
        assert!(matches!(err, Err(KernelError::InvalidShape(_))), "{name}");
        let mut c = [0.0f32; 3];
        let err = k.gemm_bf16_packed(
            1.0,
            MatRef::new(&a[..3], 1, 3).unwrap(),
            packed,
            0.0,
            MatMut::new(&mut c, 1, 3).unwrap(),
            &mut ws,
        );
        assert!(matches!(err, Err(KernelError::InvalidShape(_))), "{name}");
        let need = k.gemm_bf16_packed_workspace_len(1, 2, 3);
        if need > 0 {
            let mut c = [0.0f32; 2];
            let mut ws = std::vec![0.0; need - 1];
            let err = k.gemm_bf16_packed(
                1.0,
                MatRef::new(&a[..3], 1, 3).unwrap(),
                packed,
                0.0,
                MatMut::new(&mut c, 1, 2).unwrap(),
                &mut ws,
            );
            assert!(
                matches!(err, Err(KernelError::WorkspaceTooSmall { .. })),
                "{name}"
            );
        }
        assert_eq!(PackedBf16::len(usize::MAX, 64), None);
    }
}

#[test]
fn amx_is_granted_only_with_the_tile_data_permission() {
    use crate::backend::{AmxState, Bf16Detection};
    let with_unit = |k: Kernels, unit, found: Bf16Detection| {
        assert_eq!(k.isa, Isa::Emulated16);
        // SAFETY: the handle is emulated, so are its bf16 units.
        unsafe { k.with_bf16_unit_on(unit, found) }
    };
    let avx512 = emulated(Isa::Emulated16, Bf16Unit::Avx512Bf16);
    let granted = Bf16Detection {
        best: Bf16Unit::Amx,
        amx: AmxState::Granted,
    };
    let refused = Bf16Detection {
        best: Bf16Unit::Avx512Bf16,
        amx: AmxState::Refused(-1),
    };
    let absent = Bf16Detection {
        best: Bf16Unit::Avx512Bf16,
        amx: AmxState::Absent,
    };
    let k = with_unit(avx512, Bf16Unit::Amx, granted).unwrap();
    assert_eq!(k.bf16_unit(), Bf16Unit::Amx);
    // Refused: a clear error naming the permission, not a tile instruction.
    let err = with_unit(avx512, Bf16Unit::Amx, refused).unwrap_err();
    assert_eq!(err, KernelError::AmxPermissionRefused(-1));
    assert!(std::format!("{err}").contains("AMX"));
    // The other units stay available.
    let k = with_unit(avx512, Bf16Unit::Avx512Bf16, refused).unwrap();
    assert_eq!(k.bf16_unit(), Bf16Unit::Avx512Bf16);
    let err = with_unit(avx512, Bf16Unit::Amx, absent).unwrap_err();
    assert_eq!(err, KernelError::UnsupportedBf16Unit(Bf16Unit::Amx));
    // Names round-trip.
    for unit in Bf16Unit::ALL {
        assert_eq!(unit.name().parse::<Bf16Unit>(), Ok(unit));
    }
    assert_eq!(
        "tiles".parse::<Bf16Unit>(),
        Err(KernelError::UnknownBf16Unit)
    );
}

/// Whole blocks, edges and short products on every unit: the tiles'
/// blocks of 32, and the pair path's blocks of rows and columns (200 rows
/// are two row blocks at 12 rows a panel, the second a single partial
/// panel; packing runs a block at a time). The tiles' blocks of columns
/// are as many panels as a quarter of L2 holds (`Blocking::b_sweep_bytes`),
/// the whole of these products; a blocking of kc 4 and one panel per sweep
/// makes every block of columns one panel wide.
#[test]
fn every_unit_covers_whole_blocks_edges_and_short_products() {
    for (name, k) in bf16_kernels() {
        let b = k.gemm_blocking();
        let narrow = (k.with_gemm_blocking(b.mr, 4, b.nr).unwrap()).with_gemm_b_sweep(1);
        for k in [k, narrow] {
            bf16_tile_edges(name, k);
        }
    }
}

/// Products `(m, n, k, C's row stride)` for the tests of how C is stored:
/// whole tile blocks, edges, k deeper than one pass of the pair path, a
/// single row, rows a whole number of 64-byte lines apart and not, tiny.
const C_SHAPES: [(usize, usize, usize, usize); 8] = [
    (64, 64, 64, 64),
    (70, 48, 40, 64),
    (33, 80, 17, 96),
    (40, 32, 600, 32),
    (1, 64, 16, 64),
    (35, 40, 24, 40),
    (35, 40, 24, 41),
    (3, 5, 7, 5),
];

/// Streaming C past the caches changes no bit: every unit, with every C
/// streamed and with none, on C from a line (rows a whole number of lines
/// apart, or not, which is not streamed), over whole tile blocks, edges,
/// single rows, alpha other than 1 and k deeper than one pass of the pair
/// path; C starts as NaN, so every element must be written.
#[test]
fn streamed_c_holds_the_same_bits_as_cached_c() {
    for (name, kernels) in bf16_kernels() {
        for shape in C_SHAPES {
            assert_streaming_changes_nothing(name, kernels, shape, |kernels, a, b, c| {
                let (m, n, k) = (a.rows(), b.cols(), a.cols());
                let mut ws = std::vec![0.0; kernels.gemm_bf16_workspace_len(m, n, k)];
                kernels
                    .gemm_bf16_with(&Reversed(3), 0.5, a, b, 0.0, c, &mut ws)
                    .unwrap()
            });
        }
    }
}

/// The tile path's pointer work on products small enough for Miri
/// (`cargo +nightly miri test -p kernels --features
/// libm/force-soft-floats --lib -- small_products`), on emulated tiles:
/// whole blocks and edges along m and n, each block's sums held until the
/// next block (or the end) stores them, into C itself (an f32 C, alpha 1,
/// beta 0 or 1), into the buffer on its way to C (alpha 0.5, a bf16 C),
/// from a bias.
#[test]
fn tile_pointer_paths_on_small_products() {
    let kernels = emulated(Isa::Emulated16, Bf16Unit::Amx);
    for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (0.5, 0.75)] {
        let case = Case {
            m: 33,
            n: 66,
            k: 20,
            trans_a: false,
            trans_b: false,
            alpha,
            beta,
        };
        bf16_product(
            "emulated-tiles",
            kernels,
            &Sequential,
            case,
            (|x| x, |x| x),
            (0.0, 0.0),
        );
    }
    bf16_c_is_f32_c_rounded("emulated-tiles", kernels, (33, 66, 20, 72), (1.0, 0.0));
    // From a bias: the f64 sums of the rounded operands and the bias.
    let (m, n, k) = (33, 66, 20);
    let mut rng = Rng::new(5);
    let (a, b, bias) = (
        rng.vec(m * k, -2.0, 2.0),
        rng.vec(k * n, -2.0, 2.0),
        rng.vec(n, -3.0, 3.0),
    );
    let mut c = std::vec![f32::NAN; m * n];
    let mut ws = std::vec![f32::NAN; kernels.gemm_bf16_workspace_len(m, n, k)];
    let (a_, b_) = (
        MatRef::new(&a, m, k).unwrap(),
        MatRef::new(&b, k, n).unwrap(),
    );
    let c_ = MatMut::new(&mut c, m, n).unwrap();
    kernels
        .gemm_bf16_bias_with(&Sequential, a_, b_, &bias, c_, &mut ws)
        .unwrap();
    assert_bias_product("emulated-tiles bias", &c, (&a, &b, &bias), (m, n, k), true);
}

#[test]
fn bf16_rows_of_a_read_in_place_match_packed_ones() {
    for (name, k) in bf16_kernels() {
        bf16_rows_in_place(name, k);
    }
}

/// On tiles, whole panels of bf16 rows are read where they lie: the
/// packed A they would fill (the workspace's first floats) stays as the
/// caller left it, while a product of the same values in f32 fills it.
#[test]
fn tiles_leave_rows_read_in_place_unpacked() {
    let kern = emulated(Isa::Emulated16, Bf16Unit::Amx);
    let (m, n, k) = (64, 40, 64);
    let a_vals: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
    let b_vals: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 - 2.0).collect();
    // The bf16 rows from a 64-byte line, so tiles read them in place.
    let a16 = Stored::aligned(&a_vals, (m, k, 0), 0, Bf16::default(), Bf16::from_f32);
    let a16 = a16.view(false);
    // Two panels of 32 rows, 32 pairs each.
    let packed_a = 2 * 32 * 32;
    let b = MatRef::new(&b_vals, k, n).unwrap();
    for (bf16_rows, untouched) in [(true, true), (false, false)] {
        let mut ws = std::vec![f32::NAN; kern.gemm_bf16_workspace_len(m, n, k)];
        let mut c = std::vec![f32::NAN; m * n];
        let c_view = MatMut::new(&mut c, m, n).unwrap();
        if bf16_rows {
            kern.gemm_bf16_with(&Sequential, 1.0, a16, b, 0.0, c_view, &mut ws)
        } else {
            let a = MatRef::new(&a_vals, m, k).unwrap();
            kern.gemm_bf16_with(&Sequential, 1.0, a, b, 0.0, c_view, &mut ws)
        }
        .unwrap();
        // (Packed A starts within 15 floats of the workspace's start.)
        assert_eq!(
            ws[15..packed_a].iter().all(|x| x.is_nan()),
            untouched,
            "bf16 rows: {bf16_rows}"
        );
    }
}

#[test]
fn views_of_a_packed_operand_match_the_same_part_unpacked() {
    for (name, kern) in bf16_kernels() {
        bf16_packed_views(name, kern);
    }
}

/// A bf16 C holds the f32 C's values rounded once (as `Bf16::from_f32`
/// does): every unit, C from a line with rows a whole number of lines
/// apart or not, streamed or cached, whole tile blocks, edges, single
/// rows, k deeper than one pass of the pair path, bf16 and f32 operands,
/// B packed beforehand or not, alpha 0, and values so small they are
/// subnormal (each rounded as `Bf16::from_f32` does, not flushed). With
/// beta 0 C starts as NaN (every element must be written); with beta not
/// 0 it is read as f32, which the f32 product on the widened values does
/// too. (alpha 1 with beta 1 is left out: tiles then start from an f32 C,
/// a different order of additions.) The elements between rows are never
/// touched.
#[test]
fn a_bf16_c_holds_the_f32_c_rounded() {
    for (name, kernels) in bf16_kernels() {
        for shape in C_SHAPES {
            // (An alpha of 1e-39 makes subnormal values, which the
            // hardware's conversion would flush.)
            for scalars in [
                (1.0, 0.0),
                (0.5, 0.0),
                (0.5, 0.75),
                (0.0, 0.75),
                (1e-39, 0.0),
            ] {
                for stream in [0, usize::MAX] {
                    let kernels = kernels.with_gemm_stream_c(stream);
                    let what = format!("{name} {shape:?} {scalars:?} stream {stream}");
                    bf16_c_is_f32_c_rounded(&what, kernels, shape, scalars);
                }
            }
        }
    }
}

/// How a product is given its operands.
#[derive(Debug, Clone, Copy)]
enum Operands {
    F32,
    Bf16A,
    PackedB,
}

/// One case of [`a_bf16_c_holds_the_f32_c_rounded`]: an `m × k` by
/// `k × n` product, C's rows `stride` apart.
fn bf16_c_is_f32_c_rounded(
    what: &str,
    kern: Kernels,
    (m, n, k, stride): (usize, usize, usize, usize),
    (alpha, beta): (f32, f32),
) {
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7 % 19) as f32 - 9.0) / 8.3)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i * 5 % 17) as f32 - 8.0) / 4.1)
        .collect();
    // C's values before the product (bf16 ones, so both Cs start equal).
    let start = |r: usize, c: usize| {
        let x = ((r * n + c) * 3 % 11) as f32 - 5.0;
        if beta == 0.0 {
            f32::NAN
        } else {
            Bf16::from_f32(x / 3.0).to_f32()
        }
    };
    let a16 = Stored::aligned(&a, (m, k, 0), 0, Bf16::default(), Bf16::from_f32);
    let (a, b) = (
        MatRef::new(&a, m, k).unwrap(),
        MatRef::new(&b, k, n).unwrap(),
    );
    let mut slots = std::vec![0; crate::PackedBf16::len(k, n).unwrap()];
    kern.pack_bf16(b, &mut slots).unwrap();
    let packed = crate::PackedBf16::new(&slots, k, n).unwrap();
    let len = (m - 1) * stride + n;
    let exec = Reversed(3);

    let mut c32 = std::vec![f32::NAN; len];
    for (r, c) in (0..m).flat_map(|r| (0..n).map(move |c| (r, c))) {
        c32[r * stride + c] = start(r, c);
    }
    let mut ws = std::vec![f32::NAN; kern.gemm_bf16_workspace_len(m, n, k)];
    let c_view = MatMut::strided(&mut c32, m, n, stride).unwrap();
    kern.gemm_bf16_with(&exec, alpha, a, b, beta, c_view, &mut ws)
        .unwrap();
    let want: Vec<u16> = (0..m * n)
        .map(|i| Bf16::from_f32(c32[i / n * stride + i % n]).to_bits())
        .collect();

    let nan16 = Bf16::from_f32(f32::NAN);
    for operands in [Operands::F32, Operands::Bf16A, Operands::PackedB] {
        let mut buf = std::vec![nan16; len + 32];
        let at = buf.as_ptr().align_offset(64);
        let c16 = &mut buf[at..at + len];
        for (r, c) in (0..m).flat_map(|r| (0..n).map(move |c| (r, c))) {
            c16[r * stride + c] = Bf16::from_f32(start(r, c));
        }
        let c_view = MatMut::strided(&mut *c16, m, n, stride).unwrap();
        ws.fill(f32::NAN);
        match operands {
            Operands::F32 => kern.gemm_bf16_with(&exec, alpha, a, b, beta, c_view, &mut ws),
            Operands::Bf16A => {
                let a16 = a16.view(false);
                kern.gemm_bf16_with(&exec, alpha, a16, b, beta, c_view, &mut ws)
            }
            Operands::PackedB => {
                let len = kern.gemm_bf16_packed_workspace_len(m, n, k);
                let ws = &mut ws[..len];
                kern.gemm_bf16_packed_with(&exec, alpha, a, packed, beta, c_view, ws)
            }
        }
        .unwrap();
        let got: Vec<u16> = (0..m * n)
            .map(|i| c16[i / n * stride + i % n].to_bits())
            .collect();
        assert_eq!(got, want, "{what}, {operands:?}");
        let mut gaps = (0..len).filter(|i| i % stride >= n);
        assert!(
            gaps.all(|i| c16[i].to_f32().is_nan()),
            "{what}, {operands:?}: between rows"
        );
    }
}

/// Shapes for the bias products: no k (C is the bias), a row, the
/// few-rows paths and just past them, whole tile blocks, edges of both, k
/// deeper than one pass of the pair path and (B too large to read in
/// place) of the f32 path, and bf16 rows of A that tiles read in place (k
/// a multiple of 32, rows on lines).
const BIAS_SHAPES: [(usize, usize, usize); 11] = [
    (5, 7, 0),
    (1, 5, 3),
    (3, 40, 20),
    (16, 33, 20),
    (17, 45, 20),
    (64, 64, 64),
    (70, 48, 40),
    (33, 80, 17),
    (40, 32, 600),
    (20, 100, 900),
    (96, 70, 64),
];

/// One way of running a bias product: on an executor, into C, on a
/// workspace.
type BiasProduct<'a> = dyn Fn(&dyn Executor, MatMut, &mut [f32]) + 'a;

/// Asserts that `got` (`m × n`) is `a · b` plus `bias` in every row, each
/// element within 2·(k + 3)·u·Σ|terms| (u = 2⁻²⁴) of the f64 sum of the
/// operands, bf16-rounded where `rounded`, and the bias.
fn assert_bias_product(
    what: &str,
    got: &[f32],
    (a, b, bias): (&[f32], &[f32], &[f32]),
    (m, n, k): (usize, usize, usize),
    rounded: bool,
) {
    let u = f64::powi(2.0, -24);
    let v = |x: f32| if rounded { Bf16::from_f32(x).to_f32() } else { x } as f64;
    for (i, &got) in got[..m * n].iter().enumerate() {
        let (r, j) = (i / n, i % n);
        let (mut want, mut size) = (0.0, 0.0);
        for q in 0..k {
            let p = v(a[r * k + q]) * v(b[q * n + j]);
            (want, size) = (want + p, size + p.abs());
        }
        (want, size) = (want + bias[j] as f64, size + (bias[j] as f64).abs());
        let tol = 2.0 * (k + 3) as f64 * u * size;
        assert!(
            (got as f64 - want).abs() <= tol,
            "{what} {m}x{n}x{k} [{i}]: {got} against {want}"
        );
    }
}

/// The bias products on views one element off their buffers' start,
/// with rows apart (A, B and C strided, the bias a sub-slice), in f32
/// and bf16 operands on every unit and in f32 on every backend: within
/// the bound of the f64 sum, every element of C written (NaN before) and
/// nothing between or around its rows touched.
#[test]
fn bias_products_on_unaligned_strided_views() {
    use crate::PackedBf16;
    for (seed, &(m, n, kk)) in BIAS_SHAPES.iter().enumerate() {
        let mut rng = Rng::new(71 + seed as u64);
        let (a, b, bias) = (
            rng.vec(m * kk, -2.0, 2.0),
            rng.vec(kk * n, -2.0, 2.0),
            rng.vec(n, -3.0, 3.0),
        );
        // Each matrix one element in, its rows `gap` elements apart.
        let spread = |x: &[f32], rows: usize, cols: usize, gap: usize| {
            let mut out = std::vec![7.0f32; 1 + rows * (cols + gap) + 1];
            for r in 0..rows {
                let row = &x[r * cols..][..cols];
                out[1 + r * (cols + gap)..][..cols].copy_from_slice(row);
            }
            out
        };
        let (a_buf, b_buf) = (spread(&a, m, kk, 3), spread(&b, kk, n, 1));
        let a_view = |rows| MatRef::strided(&a_buf[1..], rows, kk, kk + 3).unwrap();
        let b_view = MatRef::strided(&b_buf[1..], kk, n, n + 1).unwrap();
        let a16_buf: Vec<Bf16> = a_buf.iter().map(|&x| Bf16::from_f32(x)).collect();
        let a16 = MatRef::strided(&a16_buf[1..], m, kk, kk + 3).unwrap();
        let bias_buf: Vec<f32> = [9.0].iter().chain(&bias).copied().collect();
        let bias_view = &bias_buf[1..];
        let c_stride = n + 2;
        let c_len = 1 + m * c_stride;
        // C's elements are those at 1 + r·stride + j; every other one is
        // a guard that must keep its value.
        let in_c = |i: usize| i >= 1 && (i - 1) % c_stride < n && (i - 1) / c_stride < m;
        let check = |what: &str, c: &[f32], rounded: bool| {
            let got: Vec<f32> = (0..m * n)
                .map(|i| c[1 + (i / n) * c_stride + i % n])
                .collect();
            assert_bias_product(what, &got, (&a, &b, &bias), (m, n, kk), rounded);
            for (i, &x) in c.iter().enumerate() {
                assert!(in_c(i) || x == 5.0, "{what} {m}x{n}x{kk}: guard {i} is {x}");
            }
        };
        let fresh_c = || {
            let mut c = std::vec![5.0f32; c_len];
            (0..c_len)
                .filter(|&i| in_c(i))
                .for_each(|i| c[i] = f32::NAN);
            c
        };
        for (name, k) in bf16_kernels() {
            let mut slots = std::vec![0; PackedBf16::len(kk, n).unwrap()];
            k.pack_bf16(b_view, &mut slots).unwrap();
            let packed = PackedBf16::new(&slots, kk, n).unwrap();
            let products: [(&str, &BiasProduct); 3] = [
                ("f32 operands", &|e, c, ws| {
                    k.gemm_bf16_bias_with(e, a_view(m), b_view, bias_view, c, ws)
                        .unwrap()
                }),
                ("bf16 A", &|e, c, ws| {
                    k.gemm_bf16_bias_with(e, a16, b_view, bias_view, c, ws)
                        .unwrap()
                }),
                ("packed B", &|e, c, ws| {
                    k.gemm_bf16_packed_bias_with(e, a_view(m), packed, bias_view, c, ws)
                        .unwrap()
                }),
            ];
            for (what, product) in products {
                let mut c = fresh_c();
                let mut ws = std::vec![f32::NAN; k.gemm_bf16_workspace_len(m, n, kk)];
                let c_view = MatMut::strided(&mut c[1..], m, n, c_stride).unwrap();
                product(&Reversed(2), c_view, &mut ws);
                check(&format!("{name} {what}"), &c, true);
            }
        }
        let mut f32_kernels = std::vec![("scalar", scalar())];
        f32_kernels.extend(simd_kernels());
        for (name, k) in f32_kernels {
            let mut c = fresh_c();
            let mut ws = std::vec![f32::NAN; k.gemm_workspace_len(m, n, kk)];
            let c_view = MatMut::strided(&mut c[1..], m, n, c_stride).unwrap();
            k.gemm_bias_with(&Reversed(2), a_view(m), b_view, bias_view, c_view, &mut ws)
                .unwrap();
            check(&format!("{name} f32"), &c, false);
        }
    }
}

/// `C = A·B + bias` on every unit, f32 and bf16 (as stored, rows on a
/// line) operands, B packed in the call or beforehand, C streamed past the
/// caches or not: within the bf16 product's bound of the f64 sum over the
/// rounded operands plus the bias; every element written (C starts NaN);
/// the same bits for any split; a bf16 C the f32 one rounded. The f32
/// form against the f64 sum of its own operands, on every backend.
#[test]
fn bias_products_add_the_bias_to_every_row() {
    use crate::PackedBf16;
    for (seed, &(m, n, kk)) in BIAS_SHAPES.iter().enumerate() {
        let mut rng = Rng::new(17 + seed as u64);
        let (a, b, mut bias) = (
            rng.vec(m * kk, -2.0, 2.0),
            rng.vec(kk * n, -2.0, 2.0),
            rng.vec(n, -3.0, 3.0),
        );
        // The sign of a zero sum: 0 + (-0) is +0 in every form.
        bias[0] = -0.0;
        let round = |x: &[f32]| x.iter().map(|&x| Bf16::from_f32(x)).collect::<Vec<_>>();
        // bf16 A on a line, so that tiles may read its rows in place.
        let mut a_bf16 = std::vec![Bf16::from_f32(0.0); m * kk + 32];
        let at = a_bf16.as_ptr().align_offset(64);
        a_bf16[at..at + m * kk].copy_from_slice(&round(&a));
        let a_bf16 = &a_bf16[at..at + m * kk];
        let check = |what: &str, got: &[f32], rounded: bool| {
            assert_bias_product(what, got, (&a, &b, &bias), (m, n, kk), rounded)
        };
        for (name, k) in bf16_kernels() {
            let run = |exec: &dyn Executor, stream: usize, product: &BiasProduct| {
                let k = k.with_gemm_stream_c(stream);
                let mut c = std::vec![f32::NAN; m * n];
                let mut ws = std::vec![f32::NAN; k.gemm_bf16_workspace_len(m, n, kk)];
                product(exec, MatMut::new(&mut c, m, n).unwrap(), &mut ws);
                c
            };
            let (a32, b32) = (
                MatRef::new(&a, m, kk).unwrap(),
                MatRef::new(&b, kk, n).unwrap(),
            );
            let a16 = MatRef::new(a_bf16, m, kk).unwrap();
            let mut slots = std::vec![0; PackedBf16::len(kk, n).unwrap()];
            k.pack_bf16(b32, &mut slots).unwrap();
            let packed = PackedBf16::new(&slots, kk, n).unwrap();
            let products: [(&str, &BiasProduct); 3] = [
                ("f32 operands", &|e, c, ws| {
                    k.gemm_bf16_bias_with(e, a32, b32, &bias, c, ws).unwrap()
                }),
                ("bf16 A", &|e, c, ws| {
                    k.gemm_bf16_bias_with(e, a16, b32, &bias, c, ws).unwrap()
                }),
                ("packed B", &|e, c, ws| {
                    k.gemm_bf16_packed_bias_with(e, a32, packed, &bias, c, ws)
                        .unwrap()
                }),
            ];
            for (what, product) in products {
                let what = format!("{name} {what}");
                let one = run(&Sequential, usize::MAX, product);
                check(&what, &one, true);
                assert_same(&what, &run(&Reversed(3), usize::MAX, product), &one);
                assert_same(&what, &run(&Reversed(2), 0, product), &one);
            }
            // A bf16 C: the f32 C's values, each rounded once.
            let wide = run(&Sequential, usize::MAX, products[0].1);
            let rounded: Vec<f32> = wide.iter().map(|&x| Bf16::from_f32(x).to_f32()).collect();
            for (stream, packed_b) in [(usize::MAX, false), (0, true)] {
                let k = k.with_gemm_stream_c(stream);
                let mut c = std::vec![Bf16::from_bits(0x7fc1); m * n];
                let mut ws = std::vec![f32::NAN; k.gemm_bf16_workspace_len(m, n, kk)];
                let c_ = MatMut::new(&mut c, m, n).unwrap();
                if packed_b {
                    k.gemm_bf16_packed_bias_with(&Reversed(3), a32, packed, &bias, c_, &mut ws)
                } else {
                    k.gemm_bf16_bias_with(&Reversed(3), a32, b32, &bias, c_, &mut ws)
                }
                .unwrap();
                let got: Vec<f32> = c.iter().map(|x| x.to_f32()).collect();
                assert_eq!(
                    bits(&got),
                    bits(&rounded),
                    "{name} bf16 C (packed B: {packed_b})"
                );
            }
        }
        let mut f32_kernels = std::vec![("scalar", scalar())];
        f32_kernels.extend(simd_kernels());
        for (name, k) in f32_kernels {
            let (a32, b32) = (
                MatRef::new(&a, m, kk).unwrap(),
                MatRef::new(&b, kk, n).unwrap(),
            );
            let mut ws = std::vec![f32::NAN; k.gemm_workspace_len(m, n, kk)];
            // The documented bits: the product, then the bias added.
            let mut after = std::vec![f32::NAN; m * n];
            let c_ = MatMut::new(&mut after, m, n).unwrap();
            k.gemm(1.0, a32, b32, 0.0, c_, &mut ws).unwrap();
            for row in after.chunks_exact_mut(n) {
                row.iter_mut().zip(&bias).for_each(|(x, b)| *x += b);
            }
            let runs = [
                (&Sequential as &dyn Executor, usize::MAX),
                (&Reversed(3), 0),
            ];
            for (exec, stream) in runs {
                let k = k.with_gemm_stream_c(stream);
                let mut c = std::vec![f32::NAN; m * n];
                let c_ = MatMut::new(&mut c, m, n).unwrap();
                k.gemm_bias_with(exec, a32, b32, &bias, c_, &mut ws)
                    .unwrap();
                let what = format!("{name} f32");
                check(&what, &c, false);
                assert_eq!(bits(&c), bits(&after), "{what}");
            }
        }
    }
}

#[test]
fn bias_products_refuse_a_bias_of_the_wrong_length() {
    use crate::PackedBf16;
    for (name, k) in bf16_kernels() {
        let (a, b, mut c) = ([1.0; 6], [1.0; 12], [0.0; 8]);
        let (a, b) = (
            MatRef::new(&a, 2, 3).unwrap(),
            MatRef::new(&b, 3, 4).unwrap(),
        );
        let mut ws =
            std::vec![0.0; k.gemm_bf16_workspace_len(2, 4, 3) + k.gemm_workspace_len(2, 4, 3)];
        let mut slots = std::vec![0; PackedBf16::len(3, 4).unwrap()];
        k.pack_bf16(b, &mut slots).unwrap();
        let packed = PackedBf16::new(&slots, 3, 4).unwrap();
        for bias in [&[0.0; 3][..], &[0.0; 5]] {
            let short = |r: Result<(), KernelError>| {
                assert!(
                    matches!(r, Err(KernelError::LengthMismatch { arg: "bias", .. })),
                    "{name}: {r:?}"
                )
            };
            let c_ = MatMut::new(&mut c, 2, 4).unwrap();
            short(k.gemm_bf16_bias_with(&Sequential, a, b, bias, c_, &mut ws));
            let c_ = MatMut::new(&mut c, 2, 4).unwrap();
            short(k.gemm_bf16_packed_bias_with(&Sequential, a, packed, bias, c_, &mut ws));
            let c_ = MatMut::new(&mut c, 2, 4).unwrap();
            short(k.gemm_bias_with(&Sequential, a, b, bias, c_, &mut ws));
        }
    }
}

/// A C with no columns is left alone, whatever its row count or row
/// stride (a view with no columns takes any stride): every bias product
/// and a scaled one, C in f32 and bf16.
#[test]
fn a_c_without_columns_is_left_alone() {
    use crate::PackedBf16;
    let a = [1.0; 6];
    for (name, k) in bf16_kernels() {
        for (m, kk) in [(2, 3), (usize::MAX, 0)] {
            let a = MatRef::new(&a[..m.saturating_mul(kk).min(6)], m, kk).unwrap();
            let b = MatRef::new(&[] as &[f32], kk, 0).unwrap();
            let packed = PackedBf16::new(&[], kk, 0).unwrap();
            let what = format!("{name}, {m} rows");
            let ok = |r: Result<(), KernelError>| assert_eq!(r, Ok(()), "{what}");
            for stride in [1, 7] {
                let c = || MatMut::<Bf16>::strided(&mut [], m, 0, stride).unwrap();
                ok(k.gemm_bf16_bias_with(&Sequential, a, b, &[], c(), &mut []));
                ok(k.gemm_bf16_packed_bias_with(&Sequential, a, packed, &[], c(), &mut []));
                ok(k.gemm_bf16_with(&Sequential, 1.0, a, b, 0.5, c(), &mut []));
                let c = || MatMut::<f32>::strided(&mut [], m, 0, stride).unwrap();
                ok(k.gemm_bf16_bias_with(&Sequential, a, b, &[], c(), &mut []));
                ok(k.gemm_bias_with(&Sequential, a, b, &[], c(), &mut []));
                ok(k.gemm_with(&Sequential, 1.0, a, b, 0.5, c(), &mut []));
            }
        }
    }
}
