//! Multi-head self-attention, the one layer whose keys and values come
//! from two places: the batch itself (training, evaluation: causal over
//! each sequence) or the key/value cache (decoding: the new positions
//! attend to every cached one).

use std::cell::RefCell;
use std::ops::Range;

use kernels::{Bf16, KernelError, Kernels, MatMut, MatRef, PackedBf16, ValidLen};

use super::arena::Arena;
use super::context::{Context, LeftOperand, Multiplier, Precision, RightOperand};
use super::kv_cache::LayerKeysValues;
use super::layers::{rows_with_bias_gradient, Activation, ActivationMut, ROWS_PER_PIECE};
use super::packed::pack_into;
use crate::error::Error;

/// A token's attention at context `len` does `2 · len · c` multiply-adds;
/// below `len · c` = 2^15 its heads run one after another, since waking
/// the pool for a few microseconds of work costs more than it saves.
const PARALLEL_HEADS_WORK: usize = 1 << 15;

/// Where attention's keys and values come from.
pub enum Attention<'a> {
    /// `b` sequences of `t` positions, each attending causally to its own
    /// keys and values; `per_head` (`b·t·c` floats at least) is scratch.
    Causal {
        b: usize,
        t: usize,
        per_head: &'a mut [f32],
    },
    /// New positions after those in the cache of this layer.
    Cached(CachedLayer<'a>),
}

/// One layer's share of a key/value cache, and the scratch of one pass.
pub struct CachedLayer<'a> {
    /// Keys transposed, so that a token's scores `q · Kᵀ` are a sum of
    /// rows of the cache rather than one short dot product per position;
    /// and values. In f32, or in bf16 for bf16 products.
    pub keys_values: LayerKeysValues<'a>,
    pub t_max: usize,
    /// Positions already cached.
    pub p0: usize,
    /// `m · len` floats: one head's scores for `m` new positions.
    pub scores: &'a mut [f32],
    /// `nh · len` floats: every head's scores for one new position.
    pub head_scores: &'a mut [f32],
}

/// Attention of `qkv` (`[rows, 3c]`: each position's query, key and value,
/// heads side by side within each) into `out` (`[rows, c]`). Causal
/// attention writes `out` in f32 or, where only products read it
/// ([`stored_mut`]), bf16; its probabilities never leave the cache
/// (the backward pass computes them again, `head_probabilities`).
/// Cached attention first appends the new keys and values, and writes
/// f32.
///
/// [`stored_mut`]: super::layers::stored_mut
pub fn attention_forward<'a>(
    ctx: &mut Context,
    out: impl Into<ActivationMut<'a>>,
    qkv: impl Into<Activation<'a>>,
    c: usize,
    nh: usize,
    source: Attention,
) -> Result<(), Error> {
    ctx.timed(
        |p| &mut p.attention,
        |ctx| match (source, out.into(), qkv.into()) {
            (Attention::Causal { b, t, per_head }, out, qkv) => {
                causal_forward(ctx, out, per_head, qkv, (b, t, c, nh))
            }
            (Attention::Cached(layer), ActivationMut::F32(out), Activation::F32(qkv)) => {
                cached_forward(ctx, out, qkv, c, nh, layer)
            }
            (Attention::Cached(_), _, _) => {
                Err(KernelError::InvalidArgument("cached attention reads and writes f32").into())
            }
        },
    )
}

/// Query rows per block of causal attention: block `r` attends to the
/// keys of blocks `0..=r` only, so the products skip the masked upper
/// triangle (at T = 256 they do 62.5 % of the full products' work), and a
/// block's scores stay in cache between its product, softmax and the next
/// product.
const QUERY_BLOCK: usize = 64;

/// The query blocks of `t` positions: each block's rows; its keys are
/// `0..rows.end`.
fn query_blocks(t: usize) -> impl Iterator<Item = Range<usize>> {
    (0..t.div_ceil(QUERY_BLOCK)).map(move |r| r * QUERY_BLOCK..t.min((r + 1) * QUERY_BLOCK))
}

/// Sequences per round of causal attention: each round's (sequence,
/// head) pieces write their results into the start of the per-head
/// scratch and the round's rows are gathered from it at once, so the
/// scratch is still in cache when it is read back (the whole batch's, 9
/// MiB a layer at `shakes` B 8, was written to memory and read back from
/// it). A round of as many sequences as threads keeps every thread busy.
fn sequences_per_round(ctx: &Context, b: usize) -> usize {
    ctx.threads.count().clamp(1, b.max(1))
}

/// The sequences of each round of `per_round` (at least 1) out of `b`.
fn rounds(b: usize, per_round: usize) -> impl Iterator<Item = Range<usize>> {
    let per_round = per_round.max(1);
    (0..b)
        .step_by(per_round)
        .map(move |first| first..b.min(first + per_round))
}

/// Causal attention: every (sequence, head) is a piece of its own,
/// computed block by block into `per_head` and then interleaved into rows,
/// a round of sequences at a time ([`sequences_per_round`]).
fn causal_forward(
    ctx: &mut Context,
    mut out: ActivationMut,
    per_head: &mut [f32],
    qkv: Activation,
    (b, t, c, nh): (usize, usize, usize, usize),
) -> Result<(), Error> {
    for seqs in rounds(b, sequences_per_round(ctx, b)) {
        let per_head = &mut per_head[..seqs.len() * t * c];
        let qkv = qkv.values(seqs.start * t * 3 * c..seqs.end * t * 3 * c);
        causal_heads(ctx, per_head, qkv, (t, c, nh))?;
        let out = out.rows_mut(seqs.start * t..seqs.end * t, c);
        heads_into_rows(ctx, out, per_head, (t, c, nh))?;
    }
    Ok(())
}

/// The (sequence, head) pieces of [`causal_forward`] for the sequences
/// whose `qkv` starts at `qkv`, their outputs into `per_head` (`t × hs` a
/// piece). A block's probabilities live in a buffer of the thread's,
/// reused block after block.
fn causal_heads(
    ctx: &mut Context,
    per_head: &mut [f32],
    qkv: Activation,
    (t, c, nh): (usize, usize, usize),
) -> Result<(), Error> {
    let (kern, mm, hs) = (ctx.kernels, ctx.multiplier(), c / nh);
    ctx.threads
        .try_for_each_piece((per_head, t * hs), |piece, y| {
            let (bi, h) = (piece / nh, piece % nh);
            let qkv_b = qkv.values(bi * t * 3 * c..(bi + 1) * t * 3 * c);
            let part = |which: usize| HeadPart::of_qkv(qkv_b, which, h, (t, c, hs));
            with_head_slots(|[keys_slots, values_slots, block, ..]| {
                let keys_t = part(KEY).as_transposed(mm, keys_slots)?;
                let values = part(VALUE).as_rows(mm, values_slots)?;
                block.grow(QUERY_BLOCK * t);
                for rows in query_blocks(t) {
                    let (n, e) = (rows.len(), rows.end);
                    let probs = &mut block[..n * t];
                    head_probabilities(kern, mm, part(QUERY), keys_t, rows.clone(), probs)?;
                    let probs = MatRef::strided(probs, n, e, t)?;
                    let y = MatMut::new(&mut y[rows.start * hs..rows.end * hs], n, hs)?;
                    mm.gemm_in_piece(1.0, probs, values.positions(0..e)?, 0.0, y)?;
                }
                Ok(())
            })
        })
}

/// One head's attention probabilities for the query positions `rows`
/// into `probs` (`rows.len() × t`): `softmax(q[rows] · kᵀ / √hs)`, masked
/// past each row's own position (zeros there). The forward pass and the
/// backward pass both call this, so the backward's probabilities are the
/// forward's bits without keeping them: `[b, nh, t, t]` a layer, the
/// largest activation at long sequences, and writing them to memory and
/// reading them back cost about as much time as computing them again.
fn head_probabilities(
    kern: Kernels,
    mm: Multiplier,
    queries: HeadPart,
    keys_t: PartAsB,
    rows: Range<usize>,
    probs: &mut [f32],
) -> Result<(), Error> {
    let (n, e, t) = (rows.len(), rows.end, queries.t);
    let scale = 1.0 / (queries.hs as f32).sqrt();
    let scores = MatMut::strided(&mut *probs, n, e, t)?;
    let queries = queries.rows(rows.clone())?;
    mm.gemm_in_piece(scale, queries, keys_t.positions(0..e)?, 0.0, scores)?;
    let causal = ValidLen::Causal { offset: rows.start };
    Ok(kern.softmax_rows(probs, t, causal)?)
}

/// The rows of `out` (`[seqs · t, c]`) from the per-head outputs of
/// [`causal_heads`], in f32 or rounded to bf16.
fn heads_into_rows(
    ctx: &mut Context,
    out: ActivationMut,
    per_head: &[f32],
    (t, c, nh): (usize, usize, usize),
) -> Result<(), Error> {
    let (kern, hs) = (ctx.kernels, c / nh);
    match out {
        ActivationMut::F32(out) => ctx.threads.try_for_each_piece((out, t * c), |bi, out_b| {
            let heads = &per_head[bi * t * c..][..t * c];
            for (r, row) in out_b.chunks_exact_mut(c).enumerate() {
                heads_into_row(heads, r, row, (t, hs, nh), 1);
            }
            Ok(())
        }),
        // Each row gathered in f32 into a row of the thread's, then rounded.
        ActivationMut::Bf16(out) => ctx.threads.try_for_each_piece((out, t * c), |bi, out_b| {
            let heads = &per_head[bi * t * c..][..t * c];
            with_head_slots(|[values, ..]| {
                values.grow(c);
                for (r, row) in out_b.chunks_exact_mut(c).enumerate() {
                    heads_into_row(heads, r, &mut values[..c], (t, hs, nh), 1);
                    kern.f32_to_bf16(&values[..c], row)?;
                }
                Ok(())
            })
        }),
    }
}

/// Backward of causal [`attention_forward`]: writes `dqkv[b, t, 3c]`
/// (overwritten; f32, or bf16 where only products read it) from `dout[b,
/// t, c]` (f32, or bf16: only the products read it), and adds its rows
/// into `dqkv_bias` (the gradient of the QKV projection's bias) on the way
/// ([`rows_with_bias_gradient`]);
/// `per_head` (`b·t·3c` floats) is scratch. Pieces as in the forward; a
/// piece's probabilities (computed again) and the gradient of its scores
/// are `t × t` buffers of the thread that runs it, reused piece after
/// piece, so they are written in cache rather than to memory.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<'a, 'd, 'q>(
    ctx: &mut Context,
    dqkv: impl Into<ActivationMut<'a>>,
    dqkv_bias: &mut [f32],
    per_head: &mut [f32],
    dout: impl Into<Activation<'d>>,
    qkv: impl Into<Activation<'q>>,
    b: usize,
    t: usize,
    c: usize,
    nh: usize,
) -> Result<(), Error> {
    ctx.timed(
        |p| &mut p.attention,
        |ctx| {
            let (mut dqkv, dout, qkv) = (dqkv.into(), dout.into(), qkv.into());
            // Rounds of sequences as in the forward pass, where the bias
            // gradient comes out the same: its pieces of rows then never
            // straddle two rounds.
            let per_round = match t % ROWS_PER_PIECE {
                0 => sequences_per_round(ctx, b),
                _ => b,
            };
            for seqs in rounds(b, per_round) {
                let per_head = &mut per_head[..seqs.len() * t * 3 * c];
                let dout = dout.values(seqs.start * t * c..seqs.end * t * c);
                let qkv = qkv.values(seqs.start * t * 3 * c..seqs.end * t * 3 * c);
                causal_heads_backward(ctx, per_head, dout, qkv, (t, c, nh))?;
                let per_head = &*per_head;
                let dqkv = dqkv.rows_mut(seqs.start * t..seqs.end * t, 3 * c);
                rows_with_bias_gradient(ctx, dqkv, dqkv_bias, |r, row| {
                    let (bi, r) = (r / t, r % t);
                    let heads = &per_head[bi * t * 3 * c..][..t * 3 * c];
                    heads_into_row(heads, r, row, (t, c / nh, nh), 3);
                    Ok(())
                })?;
            }
            Ok(())
        },
    )
}

/// The (sequence, head) pieces of [`attention_backward`] for the
/// sequences of `dout` and `qkv`: each piece's dq, dk and dv (`t × hs`
/// each) into `per_head`.
fn causal_heads_backward(
    ctx: &mut Context,
    per_head: &mut [f32],
    dout: Activation,
    qkv: Activation,
    (t, c, nh): (usize, usize, usize),
) -> Result<(), Error> {
    let (kern, mm, hs) = (ctx.kernels, ctx.multiplier(), c / nh);
    let scale = 1.0 / (hs as f32).sqrt();
    ctx.threads
        .try_for_each_piece((per_head, 3 * t * hs), |piece, dqkv_h| {
            let (bi, h) = (piece / nh, piece % nh);
            let qkv_b = qkv.values(bi * t * 3 * c..(bi + 1) * t * 3 * c);
            let part = |which: usize| HeadPart::of_qkv(qkv_b, which, h, (t, c, hs));
            let dy = HeadPart {
                data: dout.values(bi * t * c + h * hs..),
                stride: c,
                t,
                hs,
            };
            let (dq, dkv) = dqkv_h.split_at_mut(t * hs);
            let (dk, dv) = dkv.split_at_mut(t * hs);
            with_head_slots(|[s0, s1, s2, s3, s4, probs, datt]| {
                probs.grow(t * t);
                datt.grow(t * t);
                let (att_h, datt) = (&mut probs[..t * t], &mut datt[..t * t]);
                let keys_t = part(KEY).as_transposed(mm, s4)?;
                let values_t = part(VALUE).as_transposed(mm, s0)?;
                let keys = part(KEY).as_rows(mm, s1)?;
                let queries = part(QUERY).as_rows(mm, s2)?;
                let dy_b = dy.as_rows(mm, s3)?;
                // The probabilities and their gradient are zero above
                // the diagonal, so each block of rows multiplies only
                // its keys (dscores, dq), and each block of columns
                // only the rows at and below it (dk, dv).
                for rows in query_blocks(t) {
                    let (n, e) = (rows.len(), rows.end);
                    let probs = &mut att_h[rows.start * t..][..n * t];
                    head_probabilities(kern, mm, part(QUERY), keys_t, rows.clone(), probs)?;
                    let g = &mut datt[rows.start * t..];
                    let g_view = MatMut::strided(g, n, e, t)?;
                    // dprobs = dy · vᵀ, then through the softmax.
                    let dy_rows = dy.rows(rows.clone())?;
                    mm.gemm_in_piece(1.0, dy_rows, values_t.positions(0..e)?, 0.0, g_view)?;
                    let probs = &att_h[rows.start * t..][..n * t];
                    let offset = rows.start;
                    let g = &mut g[..n * t];
                    kern.softmax_backward_rows(probs, g, t, ValidLen::Causal { offset })?;
                    let dscores = MatRef::strided(g, n, e, t)?;
                    let dq = MatMut::new(&mut dq[rows.start * hs..rows.end * hs], n, hs)?;
                    mm.gemm_in_piece(scale, dscores, keys.positions(0..e)?, 0.0, dq)?;
                }
                let att_h = &*att_h;
                for cols in query_blocks(t) {
                    // Rows `cols.start..t` of the columns `cols`.
                    let (n, below) = (cols.len(), cols.start..t);
                    let at = cols.start * t + cols.start;
                    let probs = MatRef::strided(&att_h[at..], below.len(), n, t)?;
                    let dscores = MatRef::strided(&datt[at..], below.len(), n, t)?;
                    let dv = MatMut::new(&mut dv[cols.start * hs..cols.end * hs], n, hs)?;
                    mm.gemm_in_piece(1.0, probs.t(), dy_b.positions(below.clone())?, 0.0, dv)?;
                    let dk = MatMut::new(&mut dk[cols.start * hs..cols.end * hs], n, hs)?;
                    mm.gemm_in_piece(scale, dscores.t(), queries.positions(below)?, 0.0, dk)?;
                }
                Ok(())
            })
        })
}

/// Cached attention: appends the `m` new positions' keys and values to
/// the cache, then attends each new position to every cached one before
/// it. One new token at a long context runs its heads in parallel; a
/// prompt's heads run in turn, each product split over the threads.
fn cached_forward(
    ctx: &mut Context,
    out: &mut [f32],
    qkv: &[f32],
    c: usize,
    nh: usize,
    layer: CachedLayer,
) -> Result<(), Error> {
    let CachedLayer {
        mut keys_values,
        t_max,
        p0,
        scores,
        head_scores,
    } = layer;
    let m = qkv.len() / (3 * c);
    let (hs, len) = (c / nh, p0 + m);
    for (i, row) in qkv.chunks_exact(3 * c).enumerate() {
        let (key, value, p) = (&row[c..2 * c], &row[2 * c..], p0 + i);
        match &mut keys_values {
            LayerKeysValues::F32 { keys_t, values } => {
                for (d, &x) in key.iter().enumerate() {
                    keys_t[d * t_max + p] = x;
                }
                values[p * c..][..c].copy_from_slice(value);
            }
            LayerKeysValues::Bf16 { keys_t, values } => {
                for (d, &x) in key.iter().enumerate() {
                    keys_t[d * t_max + p] = Bf16::from_f32(x);
                }
                ctx.kernels.f32_to_bf16(value, &mut values[p * c..][..c])?;
            }
        }
    }
    let (keys_t, values) = keys_values.views();
    let cache = CachedHeads {
        qkv,
        keys_t,
        values,
        t_max,
        m,
        len,
        p0,
        hs,
        c,
        scale: 1.0 / (hs as f32).sqrt(),
    };
    // Products over an f32 cache run in f32, over a bf16 one in bf16.
    cache.attend_all(ctx, out, scores, head_scores, nh)
}

/// What attention over the cache needs for one layer: the new positions'
/// queries (`m` rows of `qkv`) and every cached key and value.
struct CachedHeads<'a> {
    qkv: &'a [f32],
    keys_t: Activation<'a>,
    t_max: usize,
    values: Activation<'a>,
    m: usize,
    len: usize,
    p0: usize,
    hs: usize,
    c: usize,
    scale: f32,
}

impl CachedHeads<'_> {
    /// Every head's attention for the new positions into `out`.
    fn attend_all(
        &self,
        ctx: &mut Context,
        out: &mut [f32],
        scores: &mut [f32],
        head_scores: &mut [f32],
        nh: usize,
    ) -> Result<(), Error> {
        let (cache, m, len, hs, c) = (self, self.m, self.len, self.hs, self.c);
        let (k, mm) = (ctx.kernels, ctx.multiplier());
        if m == 1 && len * c >= PARALLEL_HEADS_WORK {
            // One token: heads in parallel, each writing its own `hs` floats
            // of the output row.
            let scores = &mut head_scores[..nh * len];
            ctx.threads
                .try_for_each_piece(((out, hs), (scores, len)), |h, (out, scores)| {
                    let gemm = |alpha, a: MatRef, b: RightOperand, c: MatMut| {
                        mm.gemm_in_piece(alpha, a, b, 0.0, c)
                    };
                    cache.attend(&k, h, scores, MatMut::new(out, 1, hs)?, gemm)
                })
        } else {
            for h in 0..nh {
                let scores = &mut scores[..m * len];
                let out = MatMut::strided(&mut out[h * hs..], m, hs, c)?;
                // Prompts: each product is large enough to split (and a short
                // context's heads too small to).
                let gemm =
                    |alpha, a: MatRef, b: RightOperand, c: MatMut| ctx.gemm(alpha, a, b, 0.0, c);
                cache.attend(&k, h, scores, out, gemm)?;
            }
            Ok(())
        }
    }

    /// Causal attention of head `h` for the new positions into `out`
    /// (`m × hs`), with `scores` (`m · len` floats) as scratch; `gemm(alpha,
    /// a, b, c)` computes `c = alpha · a · b`.
    fn attend(
        &self,
        k: &kernels::Kernels,
        h: usize,
        scores: &mut [f32],
        out: MatMut,
        mut gemm: impl FnMut(f32, MatRef, RightOperand, MatMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (m, len, hs, c) = (self.m, self.len, self.hs, self.c);
        let q = MatRef::strided(&self.qkv[h * hs..], m, hs, 3 * c)?;
        let keys_t = self
            .keys_t
            .strided_b(h * hs * self.t_max, hs, len, self.t_max)?;
        let values = self.values.strided_b(h * hs, len, hs, c)?;
        gemm(self.scale, q, keys_t, MatMut::new(scores, m, len)?)?;
        k.softmax_rows(scores, len, ValidLen::Causal { offset: self.p0 })?;
        gemm(1.0, MatRef::new(scores, m, len)?, values, out)
    }
}

/// Row `r` of one sequence's per-head results: `heads` holds, per head,
/// `parts` blocks of `[t, hs]` (the output; or dq, dk, dv), and `row`
/// (`parts · nh · hs` floats) gets part `j` of head `h` at `(j·nh + h)·hs`.
/// Rows are written one after another, each whole (30 % less time in a
/// `shakes` step than a head at a time down the rows).
fn heads_into_row(
    heads: &[f32],
    r: usize,
    row: &mut [f32],
    (t, hs, nh): (usize, usize, usize),
    parts: usize,
) {
    for (slot, dst) in row.chunks_exact_mut(hs).enumerate() {
        let (j, head) = (slot / nh, slot % nh);
        dst.copy_from_slice(&heads[((head * parts + j) * t + r) * hs..][..hs]);
    }
}

/// Which third of a `qkv` row: the query, key or value.
const QUERY: usize = 0;
const KEY: usize = 1;
const VALUE: usize = 2;

/// One head's `t × hs` rows, read in place: its queries, keys or values in
/// a sequence's `qkv` (f32, or in bf16 precision bf16, as the QKV product
/// writes it), or the gradient of its output.
#[derive(Clone, Copy)]
struct HeadPart<'a> {
    /// Position `p`'s `hs` values start at `data[p · stride]`.
    data: Activation<'a>,
    stride: usize,
    t: usize,
    hs: usize,
}

impl<'a> HeadPart<'a> {
    /// Head `h`'s part `which` (QUERY, KEY or VALUE) of one sequence's
    /// `qkv[t, 3c]`.
    fn of_qkv(
        qkv: Activation<'a>,
        which: usize,
        h: usize,
        (t, c, hs): (usize, usize, usize),
    ) -> Self {
        HeadPart {
            data: qkv.values(which * c + h * hs..),
            stride: 3 * c,
            t,
            hs,
        }
    }

    /// Positions `rows`, `rows.len() × hs`.
    fn rows(&self, rows: Range<usize>) -> Result<LeftOperand<'a>, Error> {
        let first = rows.start * self.stride;
        (self.data).strided_a(first, rows.len(), self.hs, self.stride)
    }

    /// The rows as the B of `mm`'s products: packed into `slots` when it
    /// multiplies in bf16 (so that each block's product reads them without
    /// rounding and packing them again), else in place.
    fn as_rows(self, mm: Multiplier, slots: &'a mut Arena) -> Result<PartAsB<'a>, Error> {
        Ok(match mm.precision {
            Precision::F32 => PartAsB::InPlace(self),
            Precision::Bf16 => PartAsB::Packed(self.pack(mm, self.rows(0..self.t)?, slots)?),
        })
    }

    /// The transpose (`hs × t`) as the B of `mm`'s products, copied into
    /// `slots` once: packed in bf16 as [`HeadPart::as_rows`], or in f32
    /// as rows, since packing B straight from the transposed view gathers
    /// one float per position for every block's product (in f32 that made
    /// `q · Kᵀ` run at 58 % of the FMA peak, against 82 % for `P · V`).
    fn as_transposed(self, mm: Multiplier, slots: &'a mut Arena) -> Result<PartAsB<'a>, Error> {
        let (t, hs) = (self.t, self.hs);
        Ok(match mm.precision {
            Precision::F32 => {
                let Activation::F32(data) = self.data else {
                    return Err(KernelError::InvalidArgument("bf16 rows in an f32 product").into());
                };
                slots.grow(hs * t);
                let rows: &'a mut [f32] = &mut slots[..hs * t];
                mm.kernels.transpose(t, hs, data, self.stride, rows, t)?;
                PartAsB::Transposed { rows, hs, t }
            }
            Precision::Bf16 => {
                PartAsB::PackedTransposed(self.pack(mm, self.rows(0..self.t)?.t(), slots)?)
            }
        })
    }

    fn pack(
        &self,
        mm: Multiplier,
        view: LeftOperand,
        slots: &'a mut Arena,
    ) -> Result<PackedBf16<'a>, Error> {
        let packed = match view {
            LeftOperand::F32(view) => pack_into(&mm.kernels, view, slots, "head")?,
            LeftOperand::Bf16(view) => pack_into(&mm.kernels, view, slots, "head")?,
        };
        Ok(PackedBf16::new(packed, view.rows(), view.cols())?)
    }
}

/// A head's rows or their transpose as attention's products read them.
#[derive(Clone, Copy)]
enum PartAsB<'a> {
    InPlace(HeadPart<'a>),
    /// The transpose as `hs` rows of `t` positions.
    Transposed {
        rows: &'a [f32],
        hs: usize,
        t: usize,
    },
    /// The rows (`t × hs`), packed in bf16.
    Packed(PackedBf16<'a>),
    /// The transpose (`hs × t`), packed in bf16.
    PackedTransposed(PackedBf16<'a>),
}

impl<'a> PartAsB<'a> {
    /// Positions `rows` (`rows.len() × hs`), or for the transpose the
    /// positions `0..rows.end` (`hs × rows.end`; `rows.start` is 0 then).
    fn positions(&self, rows: Range<usize>) -> Result<RightOperand<'a>, Error> {
        Ok(match *self {
            PartAsB::InPlace(part) => {
                let first = rows.start * part.stride;
                part.data
                    .strided_b(first, rows.len(), part.hs, part.stride)?
            }
            PartAsB::Transposed { rows: data, hs, t } => {
                MatRef::strided(data, hs, rows.end, t)?.into()
            }
            PartAsB::Packed(p) => p.row_range(rows)?.into(),
            PartAsB::PackedTransposed(p) => p.first_columns(rows.end)?.into(),
        })
    }
}

thread_local! {
    /// Each thread's buffers for the packed rows of the head it runs, its
    /// probabilities (and, in the backward pass, the gradient of its
    /// scores; a row of output before it is rounded to bf16).
    static HEAD_SLOTS: RefCell<[Arena; 7]> = RefCell::new(Default::default());
}

/// Floats of the buffers that each thread running attention's heads
/// grows, for heads of `t` positions in a model of `c` channels and `nh`
/// heads with products in `mm` (saturating): in its slots
/// (`HEAD_SLOTS`) a part of a head copied or packed per slot and a block
/// of probabilities, and in the backward pass a head's whole `t × t`
/// probabilities and their gradient; and its products' workspace.
pub fn thread_floats(mm: Multiplier, (t, c, nh): (usize, usize, usize), backward: bool) -> usize {
    let hs = c / nh.max(1);
    // Each block of queries against its keys, its probabilities times the
    // values (and, backward, the gradients of its columns from the rows
    // below): every depth, since a product's workspace need not grow with
    // its depth (passes over k split it evenly).
    let pieces = query_blocks(t).flat_map(|rows| {
        let (n, e) = (rows.len(), rows.end);
        [(n, e, hs), (n, hs, e), (n, hs, t - rows.start)]
    });
    let workspace = mm.workspace_floats(pieces);
    let packed = |k, n| PackedBf16::len(k, n).unwrap_or(usize::MAX);
    // A part's rows as they are, transposed, or packed either way (and
    // the first slot holds a row of `c` in the bf16 gather).
    let part = t
        .saturating_mul(hs)
        .max(packed(t, hs))
        .max(packed(hs, t))
        .max(c);
    let block = QUERY_BLOCK.saturating_mul(t).max(part);
    let slots = match backward {
        false => part.saturating_mul(2).saturating_add(block),
        true => part
            .saturating_mul(4)
            .saturating_add(block)
            .saturating_add(t.saturating_mul(t).saturating_mul(2)),
    };
    slots.saturating_add(workspace)
}

/// The products (`(m, n, k)`) through the shared workspace of cached
/// attention over at most `t` positions with heads of `hs`: a prompt of
/// any length up to `t` against as many keys, and its probabilities times
/// the values.
pub fn cached_products(t: usize, hs: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (1..=t).flat_map(move |p| [(p, p, hs), (p, hs, p)])
}

/// Floats of the products' workspace each thread grows when one new
/// token's heads run in parallel, over at most `t` cached positions with
/// heads of `hs`.
pub fn decoding_thread_floats(mm: Multiplier, t: usize, hs: usize) -> usize {
    mm.workspace_floats((1..=t).flat_map(|len| [(1, len, hs), (1, hs, len)]))
}

/// Runs `f` with this thread's slot buffers.
fn with_head_slots<R>(f: impl FnOnce(&mut [Arena; 7]) -> Result<R, Error>) -> Result<R, Error> {
    HEAD_SLOTS.with(|slots| f(&mut slots.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::Backend;

    /// The floats a fresh thread's slots hold after a forward pass, and
    /// after a backward pass too.
    fn slots_grown(k: Kernels, precision: Precision, [b, t, c, nh]: [usize; 4]) -> [usize; 2] {
        std::thread::spawn(move || {
            let held = || with_head_slots(|slots| Ok(slots.iter().map(|s| s.len()).sum())).unwrap();
            let mut ctx = Context::new(k);
            ctx.precision = precision;
            let qkv: Vec<f32> = (0..b * t * 3 * c).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut out = vec![f32::NAN; b * t * c];
            let mut per_head = vec![f32::NAN; b * t * 3 * c];
            let causal = Attention::Causal {
                b,
                t,
                per_head: &mut per_head,
            };
            attention_forward(&mut ctx, &mut out[..], &qkv[..], c, nh, causal).unwrap();
            let forward = held();
            let mut dqkv = vec![f32::NAN; b * t * 3 * c];
            let (dbias, dout) = (&mut vec![0.0; 3 * c], &out[..]);
            attention_backward(
                &mut ctx,
                &mut dqkv[..],
                dbias,
                &mut per_head,
                dout,
                &qkv[..],
                b,
                t,
                c,
                nh,
            )
            .unwrap();
            [forward, held()]
        })
        .join()
        .unwrap()
    }

    /// What the memory check counts for each thread bounds what its
    /// slots grow to, in both precisions, on heads narrower and wider
    /// than a query block and on sequences shorter than one; in training
    /// it holds the `t × t` buffers.
    #[test]
    fn thread_floats_bound_what_the_slots_grow_to() {
        let mut units = vec![Kernels::new(Backend::Scalar).unwrap()];
        units.extend(Kernels::new(Backend::detected()));
        for k in units {
            for precision in [Precision::F32, Precision::Bf16] {
                for shape @ [_, t, c, nh] in [[2, 150, 16, 2], [1, 70, 64, 1], [2, 3, 96, 12]] {
                    let [forward, backward] = slots_grown(k, precision, shape);
                    let what = format!("{} {precision:?} {shape:?}", k.backend());
                    let mm = Multiplier {
                        kernels: k,
                        precision,
                    };
                    // The slots alone: the products' workspace is another buffer.
                    let rows = t.min(QUERY_BLOCK);
                    let workspace = mm.workspace_floats([(rows, t, c / nh), (rows, c / nh, t)]);
                    let forward_counted = thread_floats(mm, (t, c, nh), false) - workspace;
                    assert!(forward <= forward_counted, "{what}: {forward}");
                    let counted = thread_floats(mm, (t, c, nh), true) - workspace;
                    assert!(backward <= counted, "{what}: {backward} > {counted}");
                    assert!(backward >= 2 * t * t, "{what}");
                    // Past a query block, the count is within twice the
                    // buffers the thread grew.
                    assert!(
                        t < QUERY_BLOCK || counted <= 2 * backward,
                        "{what}: {counted}"
                    );
                }
            }
        }
    }
}
