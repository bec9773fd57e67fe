//! The vector abstraction every SIMD routine is written against.
//!
//! A routine is written once as a generic function over [`Simd`] and
//! instantiated per instruction set: [`V3`] (x86-64-v3: AVX2 + FMA, 8 lanes),
//! [`V4`] (x86-64-v4: AVX-512F, 16 lanes) and, in tests, the portable
//! `Emulated<N>` vector that lets the 16-lane blocking and tail logic run on
//! any CPU. A value of an ISA type is a proof that the CPU supports that ISA,
//! so the trait's methods are safe to call.

use crate::bf16::MAX_LANES;
use crate::Bf16;

#[cfg(test)]
pub(crate) mod emulated;
#[cfg(target_arch = "x86_64")]
pub(crate) mod v3;
#[cfg(target_arch = "x86_64")]
pub(crate) mod v4;

#[cfg(test)]
pub(crate) use emulated::Emulated;
#[cfg(target_arch = "x86_64")]
pub(crate) use v3::V3;
#[cfg(target_arch = "x86_64")]
pub(crate) use v4::V4;

/// One instruction set's vector of `LANES` f32 lanes.
///
/// Semantics every implementation must follow, so that the generic code
/// behaves the same at every width:
/// - `max(a, b)` / `min(a, b)` return `b` when either lane is NaN (x86 rule);
/// - `mul_add` is fused (one rounding);
/// - `load`/`store` touch exactly the first `LANES` elements, the `_partial`
///   forms exactly the first `len < LANES` ones.
pub(crate) trait Simd: Copy {
    const LANES: usize;
    type V: Copy;
    /// A per-lane boolean.
    type M: Copy;

    fn splat(self, x: f32) -> Self::V;
    fn load(self, src: &[f32]) -> Self::V;
    fn store(self, dst: &mut [f32], v: Self::V);
    /// Loads `src.len() < LANES` elements; the other lanes hold `fill`.
    fn load_partial(self, src: &[f32], fill: f32) -> Self::V;
    /// Stores the first `dst.len() < LANES` lanes.
    fn store_partial(self, dst: &mut [f32], v: Self::V);

    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `c - a * b`, fused.
    fn neg_mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    fn sqrt(self, a: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// The magnitude of `mag` with the sign of `sign`.
    fn copysign(self, mag: Self::V, sign: Self::V) -> Self::V;
    /// Round to nearest, ties to even.
    fn round(self, a: Self::V) -> Self::V;
    /// `2^n` for lanes of `n` holding integers in `-126..=127`.
    fn exp2_int(self, n: Self::V) -> Self::V;
    /// `x · 2^n`, rounded once (so a subnormal result is exact up to its
    /// own rounding), for lanes of `n` holding integers in `-151..=128`.
    /// In two exact-or-once-rounded factors, `n1` in the normal exponent
    /// range and `n2 = n − n1`; AVX-512 has it as one instruction.
    #[inline(always)]
    fn mul_exp2(self, x: Self::V, n: Self::V) -> Self::V {
        let n1 = self.min(self.splat(127.0), self.max(self.splat(-126.0), n));
        let n2 = self.sub(n, n1);
        self.mul(self.mul(x, self.exp2_int(n1)), self.exp2_int(n2))
    }

    /// Loads `LANES` bf16 values as f32 (exact).
    fn load_bf16(self, src: &[Bf16]) -> Self::V;
    /// Loads `LANES` slots of bf16 pairs (two bf16 values in each 32-bit
    /// lane, the first in the low half) and widens the high halves
    /// (`high`) or the low halves to f32, exactly.
    fn load_pair_halves(self, src: &[u32], high: bool) -> Self::V;
    /// Stores the lanes as `LANES` bf16 values, each rounded as
    /// [`Bf16::from_f32`] does.
    fn store_bf16(self, dst: &mut [Bf16], v: Self::V);
    /// Lane `i` of `lo` and of `hi`, each rounded as [`Bf16::from_f32`]
    /// does, as one pair slot: `lo`'s bf16 in the low half (the bf16
    /// products' packed layout).
    fn bf16_pairs(self, lo: Self::V, hi: Self::V) -> Self::V;
    /// The first `LANES` values of `lo` and of `hi`, bf16 already, as pair
    /// slots bit for bit: `lo[i]` in the low half of slot `i`, `hi[i]` in
    /// the high half.
    fn pair_bf16(self, lo: &[Bf16], hi: &[Bf16]) -> Self::V;

    /// `a < b` (false when either is NaN).
    fn less(self, a: Self::V, b: Self::V) -> Self::M;
    /// `if mask { a } else { b }` per lane.
    fn select(self, mask: Self::M, a: Self::V, b: Self::V) -> Self::V;

    fn reduce_sum(self, v: Self::V) -> f32;
    /// Horizontal maximum of lanes that hold no NaN (as `row_max` gives):
    /// the x86 max instructions pass a NaN through or not depending on
    /// its lane.
    fn reduce_max(self, v: Self::V) -> f32;

    /// Transposes one `LANES × LANES` tile in registers: `row(r)` gives row
    /// `r` (each called once), and `column(c, v)` receives column `c`, in
    /// increasing order of `c` (so a caller may store a column that spills
    /// into the next one's place).
    fn transpose(self, row: impl FnMut(usize) -> Self::V, column: impl FnMut(usize, Self::V));

    /// `LANES`, for code that holds a value but cannot name the type.
    #[inline(always)]
    fn lanes(self) -> usize {
        Self::LANES
    }

    /// Loads a piece of at most `LANES` elements (from [`pieces`]), padding
    /// a short one with `fill`.
    #[inline(always)]
    fn load_piece(self, src: &[f32], fill: f32) -> Self::V {
        if src.len() >= Self::LANES {
            self.load(src)
        } else {
            self.load_partial(src, fill)
        }
    }

    /// Stores a whole vector past the caches (a streaming store): for
    /// output too large to stay in cache for its reader, which is then not
    /// read from memory before it is written. Other threads see streamed
    /// stores in order only after [`stream_fence`].
    ///
    /// # Safety
    /// `dst` holds at least `LANES` floats and starts on a 64-byte
    /// boundary.
    #[inline(always)]
    unsafe fn stream(self, dst: &mut [f32], v: Self::V) {
        self.store(dst, v)
    }

    /// Stores a piece of at most `LANES` elements (from [`pieces`]).
    #[inline(always)]
    fn store_piece(self, dst: &mut [f32], v: Self::V) {
        if dst.len() >= Self::LANES {
            self.store(dst, v)
        } else {
            self.store_partial(dst, v)
        }
    }
}

/// Orders this thread's streaming stores ([`Simd::stream`]) before its
/// later stores, such as the signal that its piece of work is done.
#[inline(always)]
pub(crate) fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` is part of x86-64 (SSE) and touches no memory.
    unsafe {
        core::arch::x86_64::_mm_sfence()
    }
}

/// Splits `0..len` into consecutive ranges of `lanes` elements, the last one
/// possibly shorter: the loop for routines that walk several arrays at once.
#[inline(always)]
pub(crate) fn pieces(len: usize, lanes: usize) -> impl Iterator<Item = core::ops::Range<usize>> {
    (0..len)
        .step_by(lanes)
        .map(move |start| start..len.min(start + lanes))
}

// Loop skeletons shared by the element-wise routines: whole vectors first,
// then one partial vector for the tail. Callers check that lengths agree.
//
// A closure is compiled as its own function, outside the `#[target_feature]`
// trampoline, and cannot inline intrinsics unless it is itself inlined: mark
// any closure that does more than one vector operation `#[inline(always)]`
// (`.ci/run` checks the assembly for out-of-line intrinsic calls).

/// `out[i] = f(a[i])`.
#[inline(always)]
pub(crate) fn map1<S: Simd>(s: S, a: &[f32], out: &mut [f32], f: impl Fn(S::V) -> S::V) {
    let mut outs = out.chunks_exact_mut(S::LANES);
    let mut ins = a.chunks_exact(S::LANES);
    for (o, a) in (&mut outs).zip(&mut ins) {
        s.store(o, f(s.load(a)));
    }
    let (o, a) = (outs.into_remainder(), ins.remainder());
    if !o.is_empty() {
        s.store_partial(o, f(s.load_partial(a, 0.0)));
    }
}

/// `out[i] = f(a[i], b[i])`.
#[inline(always)]
pub(crate) fn map2<S: Simd>(
    s: S,
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    f: impl Fn(S::V, S::V) -> S::V,
) {
    let mut outs = out.chunks_exact_mut(S::LANES);
    let mut a_in = a.chunks_exact(S::LANES);
    let mut b_in = b.chunks_exact(S::LANES);
    for ((o, a), b) in (&mut outs).zip(&mut a_in).zip(&mut b_in) {
        s.store(o, f(s.load(a), s.load(b)));
    }
    let o = outs.into_remainder();
    if !o.is_empty() {
        let (a, b) = (a_in.remainder(), b_in.remainder());
        s.store_partial(o, f(s.load_partial(a, 0.0), s.load_partial(b, 0.0)));
    }
}

/// `x[i] = f(x[i])`.
#[inline(always)]
pub(crate) fn update1<S: Simd>(s: S, x: &mut [f32], f: impl Fn(S::V) -> S::V) {
    let mut chunks = x.chunks_exact_mut(S::LANES);
    for c in &mut chunks {
        let v = f(s.load(c));
        s.store(c, v);
    }
    let c = chunks.into_remainder();
    if !c.is_empty() {
        let v = f(s.load_partial(c, 0.0));
        s.store_partial(c, v);
    }
}

/// `y[i] = f(x[i], y[i])`.
#[inline(always)]
pub(crate) fn update2<S: Simd>(s: S, x: &[f32], y: &mut [f32], f: impl Fn(S::V, S::V) -> S::V) {
    let mut ys = y.chunks_exact_mut(S::LANES);
    let mut xs = x.chunks_exact(S::LANES);
    for (y, x) in (&mut ys).zip(&mut xs) {
        let v = f(s.load(x), s.load(y));
        s.store(y, v);
    }
    let y = ys.into_remainder();
    if !y.is_empty() {
        let v = f(s.load_partial(xs.remainder(), 0.0), s.load_partial(y, 0.0));
        s.store_partial(y, v);
    }
}

// The same skeletons `N` vectors at a time, for long computations whose
// instructions should interleave across vectors (see `math::exp_each`):
// whole blocks of `N` vectors, then one call for the tail, whose lanes past
// the end, whole vectors included, hold `fill` (a closure that accumulates
// sees them too). The whole blocks index their vectors with constants, so
// that the arrays stay in registers.

/// Loads `N` whole vectors from `src` (at least `N · LANES` long).
#[inline(always)]
fn load_block<S: Simd, T: Lane, const N: usize>(s: S, src: &[T]) -> [S::V; N] {
    let mut v = [s.splat(0.0); N];
    for (j, v) in v.iter_mut().enumerate() {
        *v = T::load(s, &src[j * S::LANES..]);
    }
    v
}

/// An element type the skeletons load and store: f32, or bf16 (loaded
/// exactly, stored rounded as [`Bf16::from_f32`] does).
pub(crate) trait Lane: Copy {
    /// One value, for the scalar backend.
    fn from_f32(x: f32) -> Self;
    /// One value as f32, for the scalar backend.
    fn to_f32(self) -> f32;
    /// Loads the first `LANES` values of `src` (at least that long).
    fn load<S: Simd>(s: S, src: &[Self]) -> S::V;
    /// Loads the values of `src` (`src.len()` at most `LANES`), the other
    /// lanes `fill`.
    fn load_piece<S: Simd>(s: S, src: &[Self], fill: f32) -> S::V;
    /// Stores the `LANES` lanes of `v` to `dst` (at least that long).
    fn store<S: Simd>(s: S, dst: &mut [Self], v: S::V);
    /// Stores the lanes of `v` that fall inside `dst` (`dst.len()` at most
    /// `LANES`).
    fn store_piece<S: Simd>(s: S, dst: &mut [Self], v: S::V);
}

impl Lane for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn load<S: Simd>(s: S, src: &[f32]) -> S::V {
        s.load(src)
    }
    #[inline(always)]
    fn load_piece<S: Simd>(s: S, src: &[f32], fill: f32) -> S::V {
        s.load_piece(src, fill)
    }
    #[inline(always)]
    fn store<S: Simd>(s: S, dst: &mut [f32], v: S::V) {
        s.store(dst, v)
    }
    #[inline(always)]
    fn store_piece<S: Simd>(s: S, dst: &mut [f32], v: S::V) {
        s.store_piece(dst, v)
    }
}

impl Lane for Bf16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Bf16 {
        Bf16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        Bf16::to_f32(self)
    }
    #[inline(always)]
    fn load<S: Simd>(s: S, src: &[Bf16]) -> S::V {
        s.load_bf16(src)
    }
    #[inline(always)]
    fn load_piece<S: Simd>(s: S, src: &[Bf16], fill: f32) -> S::V {
        if src.len() >= S::LANES {
            return s.load_bf16(src);
        }
        let mut lanes = [Bf16::from_f32(fill); MAX_LANES];
        lanes[..src.len()].copy_from_slice(src);
        s.load_bf16(&lanes)
    }
    #[inline(always)]
    fn store<S: Simd>(s: S, dst: &mut [Bf16], v: S::V) {
        s.store_bf16(dst, v)
    }
    #[inline(always)]
    fn store_piece<S: Simd>(s: S, dst: &mut [Bf16], v: S::V) {
        if dst.len() >= S::LANES {
            return s.store_bf16(dst, v);
        }
        let mut lanes = [Bf16::default(); MAX_LANES];
        s.store_bf16(&mut lanes, v);
        dst.copy_from_slice(&lanes[..dst.len()]);
    }
}

/// Stores `N` whole vectors to `dst` (at least `N · LANES` long).
#[inline(always)]
fn store_block<S: Simd, T: Lane, const N: usize>(s: S, dst: &mut [T], v: [S::V; N]) {
    for (j, v) in v.into_iter().enumerate() {
        T::store(s, &mut dst[j * S::LANES..], v);
    }
}

/// Loads fewer than `N · LANES` elements as `N` vectors, missing lanes `fill`.
#[inline(always)]
fn load_tail<S: Simd, T: Lane, const N: usize>(s: S, src: &[T], fill: f32) -> [S::V; N] {
    let mut v = [s.splat(fill); N];
    for (v, piece) in v.iter_mut().zip(pieces(src.len(), S::LANES)) {
        *v = T::load_piece(s, &src[piece], fill);
    }
    v
}

/// Stores the lanes of `v` that fall inside `dst` (fewer than `N · LANES`).
#[inline(always)]
fn store_tail<S: Simd, T: Lane, const N: usize>(s: S, dst: &mut [T], v: [S::V; N]) {
    for (v, piece) in v.into_iter().zip(pieces(dst.len(), S::LANES)) {
        T::store_piece(s, &mut dst[piece], v);
    }
}

/// `out[i] = f(a[i])`, `N` vectors per call, read as `I`, stored as `T`.
#[inline(always)]
pub(crate) fn map1_blocks<S: Simd, I: Lane, T: Lane, const N: usize>(
    s: S,
    a: &[I],
    out: &mut [T],
    fill: f32,
    mut f: impl FnMut([S::V; N]) -> [S::V; N],
) {
    let width = N * S::LANES;
    let mut outs = out.chunks_exact_mut(width);
    let mut ins = a.chunks_exact(width);
    for (o, a) in (&mut outs).zip(&mut ins) {
        store_block(s, o, f(load_block(s, a)));
    }
    let (o, a) = (outs.into_remainder(), ins.remainder());
    if !o.is_empty() {
        store_tail(s, o, f(load_tail(s, a, fill)));
    }
}

/// `out[i] = f(a[i], b[i])`, `N` vectors per call.
#[inline(always)]
pub(crate) fn map2_blocks<S: Simd, A: Lane, B: Lane, const N: usize>(
    s: S,
    a: &[A],
    b: &[B],
    out: &mut [f32],
    fill: f32,
    mut f: impl FnMut([S::V; N], [S::V; N]) -> [S::V; N],
) {
    let width = N * S::LANES;
    let mut outs = out.chunks_exact_mut(width);
    let mut a_in = a.chunks_exact(width);
    let mut b_in = b.chunks_exact(width);
    for ((o, a), b) in (&mut outs).zip(&mut a_in).zip(&mut b_in) {
        store_block(s, o, f(load_block(s, a), load_block(s, b)));
    }
    let o = outs.into_remainder();
    if !o.is_empty() {
        let (a, b) = (a_in.remainder(), b_in.remainder());
        store_tail(s, o, f(load_tail(s, a, fill), load_tail(s, b, fill)));
    }
}

/// `x[i] = f(x[i])`, `N` vectors per call.
#[inline(always)]
pub(crate) fn update1_blocks<S: Simd, const N: usize>(
    s: S,
    x: &mut [f32],
    fill: f32,
    mut f: impl FnMut([S::V; N]) -> [S::V; N],
) {
    let mut blocks = x.chunks_exact_mut(N * S::LANES);
    for x in &mut blocks {
        let v = f(load_block(s, x));
        store_block(s, x, v);
    }
    let x = blocks.into_remainder();
    if !x.is_empty() {
        let v = f(load_tail(s, x, fill));
        store_tail(s, x, v);
    }
}

/// `y[i] = f(a[i], b[i], y[i])`, `N` vectors per call.
#[inline(always)]
pub(crate) fn update3_blocks<S: Simd, A: Lane, B: Lane, const N: usize>(
    s: S,
    a: &[A],
    b: &[B],
    y: &mut [f32],
    fill: f32,
    mut f: impl FnMut([S::V; N], [S::V; N], [S::V; N]) -> [S::V; N],
) {
    let width = N * S::LANES;
    let mut ys = y.chunks_exact_mut(width);
    let mut a_in = a.chunks_exact(width);
    let mut b_in = b.chunks_exact(width);
    for ((y, a), b) in (&mut ys).zip(&mut a_in).zip(&mut b_in) {
        let v = f(load_block(s, a), load_block(s, b), load_block(s, y));
        store_block(s, y, v);
    }
    let y = ys.into_remainder();
    if !y.is_empty() {
        let (a, b) = (a_in.remainder(), b_in.remainder());
        let v = f(
            load_tail(s, a, fill),
            load_tail(s, b, fill),
            load_tail(s, y, fill),
        );
        store_tail(s, y, v);
    }
}

/// Folds `a` into four independent accumulators starting at `init` (to
/// hide FMA latency), then combines them. The tail vector is padded with
/// `fill`, which must leave an accumulator unchanged under `step`.
#[inline(always)]
pub(crate) fn fold1<S: Simd>(
    s: S,
    a: &[f32],
    init: f32,
    fill: f32,
    step: impl Fn(S::V, S::V) -> S::V,
    combine: impl Fn(S::V, S::V) -> S::V,
) -> S::V {
    let mut acc = [s.splat(init); 4];
    let mut blocks = a.chunks_exact(4 * S::LANES);
    for block in &mut blocks {
        for (j, acc) in acc.iter_mut().enumerate() {
            *acc = step(*acc, s.load(&block[j * S::LANES..]));
        }
    }
    let mut rest = blocks.remainder().chunks_exact(S::LANES);
    for (j, v) in (&mut rest).enumerate() {
        acc[j] = step(acc[j], s.load(v));
    }
    acc[3] = step(acc[3], s.load_partial(rest.remainder(), fill));
    combine(combine(acc[0], acc[1]), combine(acc[2], acc[3]))
}

/// [`fold1`] over two slices of equal length, padded with zeros.
#[inline(always)]
pub(crate) fn fold2<S: Simd>(
    s: S,
    a: &[f32],
    b: &[f32],
    step: impl Fn(S::V, S::V, S::V) -> S::V,
    combine: impl Fn(S::V, S::V) -> S::V,
) -> S::V {
    let mut acc = [s.splat(0.0); 4];
    let mut a_blocks = a.chunks_exact(4 * S::LANES);
    let mut b_blocks = b.chunks_exact(4 * S::LANES);
    for (ab, bb) in (&mut a_blocks).zip(&mut b_blocks) {
        for (j, acc) in acc.iter_mut().enumerate() {
            let k = j * S::LANES;
            *acc = step(*acc, s.load(&ab[k..]), s.load(&bb[k..]));
        }
    }
    let mut a_rest = a_blocks.remainder().chunks_exact(S::LANES);
    let mut b_rest = b_blocks.remainder().chunks_exact(S::LANES);
    for (j, (av, bv)) in (&mut a_rest).zip(&mut b_rest).enumerate() {
        acc[j] = step(acc[j], s.load(av), s.load(bv));
    }
    let (a_tail, b_tail) = (a_rest.remainder(), b_rest.remainder());
    acc[3] = step(
        acc[3],
        s.load_partial(a_tail, 0.0),
        s.load_partial(b_tail, 0.0),
    );
    combine(combine(acc[0], acc[1]), combine(acc[2], acc[3]))
}
