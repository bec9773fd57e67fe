//! The bf16 GEMM against a triple loop in f64 over the bf16-rounded
//! operands, on every backend and awkward shapes, transposes, strides and
//! NaN-filled C; f32 and bf16 operands that hold the same values give the
//! same bits; the split across threads changes nothing.
//!
//! Tolerance: the f32 GEMM's, (k + 2)·u·(|alpha|·Σ|a·b| + |beta·c|) with
//! u = 2⁻²⁴, doubled, against the exact product of the rounded operands.

use std::vec::Vec;

use super::*;
use crate::dispatch::Isa;
use crate::{Bf16, Bf16Input, Bf16Unit, Executor, KernelError, MatMut, MatRef, Sequential};

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
        all.push((name, Kernels::on(isa, unit)));
    }
    all
}

/// A `rows × cols` matrix stored with `pad` extra elements per row, from
/// an odd offset.
struct Stored<T> {
    buf: Vec<T>,
    offset: usize,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<T: Copy> Stored<T> {
    fn new(
        values: &[f32],
        rows: usize,
        cols: usize,
        pad: usize,
        fill: T,
        convert: fn(f32) -> T,
    ) -> Stored<T> {
        let (stride, offset) = (cols + pad, 3);
        let mut buf = std::vec![fill; offset + rows * stride + 2];
        for r in 0..rows {
            for c in 0..cols {
                buf[offset + r * stride + c] = convert(values[r * cols + c]);
            }
        }
        Stored {
            buf,
            offset,
            rows,
            cols,
            stride,
        }
    }
    fn view(&self, transposed: bool) -> MatRef<'_, T> {
        let v =
            MatRef::strided(&self.buf[self.offset..], self.rows, self.cols, self.stride).unwrap();
        if transposed {
            v.t()
        } else {
            v
        }
    }
}

/// Rounds to bf16 and back.
fn r(x: f32) -> f64 {
    f64::from(Bf16::from_f32(x).to_f32())
}

#[derive(Debug, Clone, Copy)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
}

/// Runs the case with operand element types `A` and `B` and returns C
/// (`m × n`, contiguous), after checking it against f64.
fn run<A: Bf16Input, B: Bf16Input>(
    name: &str,
    k_: Kernels,
    exec: &(impl Executor + ?Sized),
    case: Case,
    to_a: fn(f32) -> A,
    to_b: fn(f32) -> B,
    fill: (A, B),
) -> Vec<f32> {
    let Case {
        m,
        n,
        k,
        trans_a,
        trans_b,
        alpha,
        beta,
    } = case;
    let mut rng = Rng::new((m * 1000 + n * 10 + k) as u64);
    let a_vals = rng.vec(m * k, -2.0, 2.0);
    let b_vals = rng.vec(k * n, -2.0, 2.0);
    let c_vals = rng.vec(m * n, -1.0, 1.0);
    let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    let a = Stored::new(&a_vals, ar, ac, 1, fill.0, to_a);
    let b = Stored::new(&b_vals, br, bc, 2, fill.1, to_b);
    let op_a = |i: usize, l: usize| {
        if trans_a {
            a_vals[l * ac + i]
        } else {
            a_vals[i * ac + l]
        }
    };
    let op_b = |l: usize, j: usize| {
        if trans_b {
            b_vals[j * bc + l]
        } else {
            b_vals[l * bc + j]
        }
    };
    // beta = 0 must not read C.
    let mut c: Vec<f32> = if beta == 0.0 {
        std::vec![f32::NAN; m * n]
    } else {
        c_vals.clone()
    };
    let mut ws = std::vec![f32::NAN; k_.gemm_bf16_workspace_len(m, n, k)];
    k_.gemm_bf16_with(
        exec,
        alpha,
        a.view(trans_a),
        b.view(trans_b),
        beta,
        MatMut::new(&mut c, m, n).unwrap(),
        &mut ws,
    )
    .unwrap_or_else(|e| panic!("{name} {case:?}: {e}"));
    let u = f64::from(f32::EPSILON) / 2.0;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut mag) = (0.0, 0.0);
            for l in 0..k {
                let p = r(op_a(i, l)) * r(op_b(l, j));
                sum += p;
                mag += p.abs();
            }
            let c_term = if beta == 0.0 {
                0.0
            } else {
                f64::from(beta) * f64::from(c_vals[i * n + j])
            };
            let want = f64::from(alpha) * sum + c_term;
            let tol =
                2.0 * (k as f64 + 2.0) * u * (f64::from(alpha).abs() * mag + c_term.abs()) + 1e-30;
            let got = f64::from(c[i * n + j]);
            assert!(
                (got - want).abs() <= tol,
                "{name} {case:?}: C[{i}][{j}] = {got}, want {want} ± {tol}"
            );
        }
    }
    c
}

const DIMS: [usize; 12] = [0, 1, 2, 3, 5, 7, 13, 16, 17, 33, 97, 130];

#[test]
fn gemm_bf16_matches_f64_on_rounded_operands_for_every_operand_type() {
    let mut rng = Rng::new(7);
    for (name, k) in bf16_kernels() {
        for trial in 0..40 {
            let pick = |rng: &mut Rng| DIMS[rng.below(DIMS.len())];
            let case = Case {
                m: pick(&mut rng),
                n: pick(&mut rng),
                k: pick(&mut rng),
                trans_a: trial & 1 == 1,
                trans_b: trial & 2 == 2,
                alpha: [1.0, -0.5, 2.0][trial % 3],
                beta: [0.0, 1.0, 0.25, 0.0][trial % 4],
            };
            let nan = Bf16::from_bits(0x7FC1);
            let f32s = run(
                name,
                k,
                &Sequential,
                case,
                |x| x,
                |x| x,
                (f32::NAN, f32::NAN),
            );
            let bf16s = run(
                name,
                k,
                &Sequential,
                case,
                Bf16::from_f32,
                Bf16::from_f32,
                (nan, nan),
            );
            let mixed = run(
                name,
                k,
                &Sequential,
                case,
                |x| x,
                Bf16::from_f32,
                (f32::NAN, nan),
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&f32s),
                bits(&bf16s),
                "{name} {case:?}: f32 and bf16 operands differ"
            );
            assert_eq!(
                bits(&f32s),
                bits(&mixed),
                "{name} {case:?}: mixed operands differ"
            );
        }
    }
}

/// Runs every piece, in reverse order, on this thread (as if split).
struct Reversed(usize);

impl Executor for Reversed {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        (0..pieces).rev().for_each(piece);
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
            let one = run(name, k, &Sequential, case, |x| x, |x| x, (0.0, 0.0));
            let split = run(name, k, &Reversed(4), case, |x| x, |x| x, (0.0, 0.0));
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
    for (name, k) in bf16_kernels() {
        let flops = k.bf16_peak_loop(10);
        let want = match k.bf16_unit() {
            Bf16Unit::Portable => k.fma_peak_loop(10),
            Bf16Unit::Avx512Bf16 => 10 * 12 * 16 * 4,
            Bf16Unit::Amx => 10 * 4 * 2 * (16 * 16 * 32),
        };
        assert_eq!(flops, want, "{name}");
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
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{name} {m}x{n}x{kk} beta {beta}");
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
    let avx512 = Kernels::on(Isa::Emulated16, Bf16Unit::Avx512Bf16);
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
    let k = avx512.with_bf16_unit_on(Bf16Unit::Amx, granted).unwrap();
    assert_eq!(k.bf16_unit(), Bf16Unit::Amx);
    // Refused: a clear error naming the permission, not a tile instruction.
    let err = avx512
        .with_bf16_unit_on(Bf16Unit::Amx, refused)
        .unwrap_err();
    assert_eq!(err, KernelError::AmxPermissionRefused(-1));
    assert!(std::format!("{err}").contains("AMX"));
    // The other units stay available.
    let k = avx512
        .with_bf16_unit_on(Bf16Unit::Avx512Bf16, refused)
        .unwrap();
    assert_eq!(k.bf16_unit(), Bf16Unit::Avx512Bf16);
    let err = avx512.with_bf16_unit_on(Bf16Unit::Amx, absent).unwrap_err();
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

#[test]
fn the_tile_path_covers_whole_blocks_edges_and_short_products() {
    // Tiles take products of at least 32 rows; k not a multiple of 32 (a
    // padded last step), n not a multiple of 32, m past a block edge.
    let tiles = Kernels::on(Isa::Emulated16, Bf16Unit::Amx);
    for (m, n, k) in [
        (32, 32, 32),
        (33, 31, 33),
        (64, 65, 1),
        (95, 7, 100),
        (31, 40, 64),
    ] {
        for trans_a in [false, true] {
            let case = Case {
                m,
                n,
                k,
                trans_a,
                trans_b: false,
                alpha: 0.75,
                beta: 0.0,
            };
            run(
                "emulated-tiles",
                tiles,
                &Sequential,
                case,
                |x| x,
                |x| x,
                (0.0, 0.0),
            );
        }
    }
}

/// Views of a packed operand (row ranges, leading columns) multiply as the
/// same part of the unpacked operand does, bit for bit, on every unit; bad
/// ranges are refused.
#[test]
fn views_of_a_packed_operand_match_the_same_part_unpacked() {
    use crate::PackedBf16;
    let (k, n) = (100, 70);
    let mut rng = Rng::new(11);
    let b_vals = rng.vec(k * n, -2.0, 2.0);
    for (name, kern) in bf16_kernels() {
        let mut slots = std::vec![0; PackedBf16::len(k, n).unwrap()];
        kern.pack_bf16(MatRef::new(&b_vals, k, n).unwrap(), &mut slots)
            .unwrap();
        let packed = PackedBf16::new(&slots, k, n).unwrap();
        for (rows, cols) in [
            (0..64, 70),
            (32..100, 70),
            (64..100, 33),
            (0..100, 1),
            (96..100, 64),
        ] {
            let view = packed
                .row_range(rows.clone())
                .unwrap()
                .first_columns(cols)
                .unwrap();
            let part = MatRef::strided(&b_vals[rows.start * n..], rows.len(), cols, n).unwrap();
            for m in [5, 40] {
                let a_vals = rng.vec(m * rows.len(), -2.0, 2.0);
                let a = MatRef::new(&a_vals, m, rows.len()).unwrap();
                let mut want = std::vec![f32::NAN; m * cols];
                let mut ws = std::vec![0.0; kern.gemm_bf16_workspace_len(m, cols, rows.len())];
                let c = MatMut::new(&mut want, m, cols).unwrap();
                kern.gemm_bf16(1.0, a, part, 0.0, c, &mut ws).unwrap();
                let mut got = std::vec![f32::NAN; m * cols];
                let len = kern.gemm_bf16_packed_workspace_len(m, cols, rows.len());
                let mut ws = std::vec![0.0; len];
                let c = MatMut::new(&mut got, m, cols).unwrap();
                kern.gemm_bf16_packed(1.0, a, view, 0.0, c, &mut ws)
                    .unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{name} rows {rows:?} cols {cols} m {m}"
                );
            }
        }
        assert!(matches!(
            packed.row_range(10..64),
            Err(KernelError::InvalidArgument(_))
        ));
        assert!(matches!(
            packed.row_range(0..50),
            Err(KernelError::InvalidArgument(_))
        ));
        assert!(matches!(
            packed.row_range(64..101),
            Err(KernelError::InvalidShape(_))
        ));
        assert!(matches!(
            packed.first_columns(71),
            Err(KernelError::InvalidShape(_))
        ));
        // No columns: no slots, and a view of them is still fine.
        let empty = PackedBf16::new(&[], k, 0).unwrap();
        assert_eq!(empty.row_range(64..100).unwrap().rows(), 36);
    }
}
