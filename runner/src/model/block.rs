//! The transformer block, written once: pre-LayerNorm causal self-attention
//! and a 4× GELU MLP, each added into the residual stream. Training,
//! evaluation and cached decoding all run [`block_forward`]; they differ
//! only in where attention's keys and values come from ([`Attention`]).

use super::attention::{attention_backward, attention_forward, Attention};
use super::context::{Context, Precision};
use super::layers::{
    add, gelu_backward, gelu_forward, layer_norm_backward, layer_norm_forward, matmul_backward,
    matmul_forward, matmul_products, stored, stored_mut, LAYER_NORM_EPS,
};
use super::packed::{weight_of, PackedLayer};
use super::tensors::{BlockActivations, LayerParams};
use crate::error::Error;

/// `output = input + attention(ln1(input))`, then `output += mlp(ln2(·))`
/// for `rows` positions of `c` channels and `nh` heads, keeping every
/// intermediate in `a` for the backward pass. The matrices are read from
/// `packed` where given (bf16 decoding), else from `p`.
#[allow(clippy::too_many_arguments)]
pub fn block_forward(
    ctx: &mut Context,
    p: &LayerParams<&[f32]>,
    packed: Option<&PackedLayer>,
    input: &[f32],
    output: &mut [f32],
    a: BlockActivations<&mut [f32]>,
    attention: Attention,
    rows: usize,
    c: usize,
    nh: usize,
) -> Result<(), Error> {
    // The LayerNorm and GELU outputs are read only by products, the MLP's
    // product output only by GELU: in bf16 precision they are kept in bf16
    // (`stored_mut`).
    let kept = ctx.precision;
    let ln1 = stored_mut(kept, &mut *a.ln1);
    let eps = LAYER_NORM_EPS;
    layer_norm_forward(ctx, input, p.ln1w, p.ln1b, eps, ln1, a.ln1_mean, a.ln1_rstd)?;
    let qkvw = weight_of(p.qkvw, packed.map(|w| &w.qkvw))?;
    let ln1 = stored(kept, a.ln1);
    // So are causal attention's input and output (its products round
    // them anyway; cached decoding reads and writes f32).
    let attention_io = match attention {
        Attention::Causal { .. } => kept,
        Attention::Cached(_) => Precision::F32,
    };
    let qkv = stored_mut(attention_io, &mut *a.qkv);
    matmul_forward(ctx, qkv, ln1, qkvw, Some(p.qkvb), rows, c, 3 * c)?;
    let (qkv, atty) = (
        stored(attention_io, a.qkv),
        stored_mut(attention_io, &mut *a.atty),
    );
    attention_forward(ctx, atty, qkv, c, nh, attention)?;
    let atty = stored(attention_io, a.atty);
    matmul_forward(
        ctx,
        &mut *a.attproj,
        atty,
        weight_of(p.attprojw, packed.map(|w| &w.attprojw))?,
        Some(p.attprojb),
        rows,
        c,
        c,
    )?;
    add(ctx, input, a.attproj, a.residual2)?;
    let ln2 = stored_mut(kept, &mut *a.ln2);
    layer_norm_forward(
        ctx,
        a.residual2,
        p.ln2w,
        p.ln2b,
        eps,
        ln2,
        a.ln2_mean,
        a.ln2_rstd,
    )?;
    let fcw = weight_of(p.fcw, packed.map(|w| &w.fcw))?;
    let ln2 = stored(kept, a.ln2);
    let fch = stored_mut(kept, &mut *a.fch);
    matmul_forward(ctx, fch, ln2, fcw, Some(p.fcb), rows, c, 4 * c)?;
    let fch_gelu = stored_mut(kept, &mut *a.fch_gelu);
    gelu_forward(ctx, stored(kept, a.fch), fch_gelu)?;
    let fch_gelu = stored(kept, a.fch_gelu);
    matmul_forward(
        ctx,
        &mut *a.fcproj,
        fch_gelu,
        weight_of(p.fcprojw, packed.map(|w| &w.fcprojw))?,
        Some(p.fcprojb),
        rows,
        4 * c,
        c,
    )?;
    add(ctx, a.residual2, a.fcproj, output)?;
    Ok(())
}

/// The products (`(m, n, k)`) of a block's four linear layers over
/// `rows` positions of `c` channels, with their `backward` products or
/// without (attention's own products run in pieces, on each thread's
/// workspace).
pub fn block_products(
    rows: usize,
    c: usize,
    backward: bool,
) -> impl Iterator<Item = (usize, usize, usize)> {
    let layers = [(c, 3 * c), (c, c), (c, 4 * c), (4 * c, c)];
    layers
        .into_iter()
        .flat_map(move |(inputs, outputs)| matmul_products(rows, inputs, outputs, backward))
}

/// The backward-pass buffers one block needs besides its activations.
pub struct BlockScratch<'a> {
    /// `[B, T, C]` in: the gradient of the block's output; out: of its input.
    pub dresidual: &'a mut [f32],
    pub dln: &'a mut [f32],
    pub dqkv: &'a mut [f32],
    pub datty: &'a mut [f32],
    pub per_head: &'a mut [f32],
    pub dfch: &'a mut [f32],
    pub dfch_gelu: &'a mut [f32],
}

/// Backward of causal [`block_forward`] over `b` sequences of `t`:
/// accumulates the parameter gradients into `g` and turns `s.dresidual`
/// from the output's gradient into the input's.
#[allow(clippy::too_many_arguments)]
pub fn block_backward(
    ctx: &mut Context,
    p: &LayerParams<&[f32]>,
    g: LayerParams<&mut [f32]>,
    input: &[f32],
    a: &BlockActivations<&[f32]>,
    s: BlockScratch,
    (b, t, c, nh): (usize, usize, usize, usize),
) -> Result<(), Error> {
    let (bt, kept) = (b * t, ctx.precision);
    // output = residual2 + fcproj(gelu(fc(ln2(residual2)))).
    let fch_gelu = stored(kept, a.fch_gelu);
    matmul_backward(
        ctx,
        stored_mut(kept, &mut *s.dfch_gelu),
        g.fcprojw,
        Some(g.fcprojb),
        &*s.dresidual,
        fch_gelu,
        p.fcprojw,
        bt,
        4 * c,
        c,
    )?;
    // GELU's input gradient is read only by products (its bias gradient
    // is summed on the way), so it too is bf16 in bf16 precision.
    let dfch = stored_mut(kept, &mut *s.dfch);
    let (fch, dfch_gelu) = (stored(kept, a.fch), stored(kept, s.dfch_gelu));
    gelu_backward(ctx, fch, dfch_gelu, dfch, g.fcb)?;
    matmul_backward(
        ctx,
        &mut *s.dln,
        g.fcw,
        None,
        stored(kept, s.dfch),
        stored(kept, a.ln2),
        p.fcw,
        bt,
        c,
        4 * c,
    )?;
    layer_norm_backward(
        ctx,
        a.residual2,
        p.ln2w,
        a.ln2_mean,
        a.ln2_rstd,
        s.dln,
        s.dresidual,
        g.ln2w,
        g.ln2b,
    )?;
    // residual2 = input + attproj(attention(qkv(ln1(input)))).
    matmul_backward(
        ctx,
        stored_mut(kept, &mut *s.datty),
        g.attprojw,
        Some(g.attprojb),
        &*s.dresidual,
        stored(kept, a.atty),
        p.attprojw,
        bt,
        c,
        c,
    )?;
    // Attention's output gradient is read only by its products, and so is
    // the QKV projection's output gradient.
    let (datty, dqkv) = (stored(kept, s.datty), stored_mut(kept, &mut *s.dqkv));
    let qkv = stored(kept, a.qkv);
    attention_backward(ctx, dqkv, g.qkvb, s.per_head, datty, qkv, b, t, c, nh)?;
    matmul_backward(
        ctx,
        &mut *s.dln,
        g.qkvw,
        None,
        stored(kept, s.dqkv),
        stored(kept, a.ln1),
        p.qkvw,
        bt,
        c,
        3 * c,
    )?;
    layer_norm_backward(
        ctx,
        input,
        p.ln1w,
        a.ln1_mean,
        a.ln1_rstd,
        s.dln,
        s.dresidual,
        g.ln1w,
        g.ln1b,
    )
}

/// One layer's buffers for what `--recompute` does not keep.
pub struct Recomputed<'a> {
    pub ln1: &'a mut [f32],
    pub ln2: &'a mut [f32],
    pub mean: &'a mut [f32],
    pub rstd: &'a mut [f32],
    pub fch_gelu: &'a mut [f32],
}

/// Recomputes, for [`block_backward`], the activations of a causal
/// [`block_forward`] that were not kept: both LayerNorm outputs (from the
/// block's `input` and the kept `residual2`) and the GELU output (from the
/// kept `fch`). The same kernels on the same inputs give the same bits as
/// the forward pass. (Attention's probabilities are never kept: its
/// backward pass computes them again in any case.)
pub fn block_recompute(
    ctx: &mut Context,
    p: &LayerParams<&[f32]>,
    input: &[f32],
    a: &BlockActivations<&[f32]>,
    r: &mut Recomputed,
) -> Result<(), Error> {
    let (mean, rstd, kept) = (&mut *r.mean, &mut *r.rstd, ctx.precision);
    let (ln1, eps) = (stored_mut(kept, &mut *r.ln1), LAYER_NORM_EPS);
    layer_norm_forward(ctx, input, p.ln1w, p.ln1b, eps, ln1, mean, rstd)?;
    let ln2 = stored_mut(kept, &mut *r.ln2);
    layer_norm_forward(ctx, a.residual2, p.ln2w, p.ln2b, eps, ln2, mean, rstd)?;
    let fch_gelu = stored_mut(kept, &mut *r.fch_gelu);
    gelu_forward(ctx, stored(kept, a.fch), fch_gelu)
}
