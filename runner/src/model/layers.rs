//! The layers of the model as forward/backward pairs over flat buffers, with
//! their shapes in the signatures (`bt` rows of `c` channels, `oc` output
//! channels). Backward passes accumulate into parameter gradients (`+=`),
//! so gradients add up over micro-batches. Row-wise and element-wise work
//! is split into fixed-size pieces, so results never depend on the thread
//! count.

use std::ops::{Range, RangeBounds};

use kernels::{Bf16, Bf16Input, Bf16Output, KernelError, MatMut, MatRef, PackedBf16};

use super::context::{Context, LeftOperand, Output, Precision, Profile, RightOperand};
use crate::error::Error;

/// LayerNorm epsilon, as GPT-2.
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// Rows per piece of row-wise work (LayerNorm, cross-entropy).
pub(super) const ROWS_PER_PIECE: usize = 64;

/// Elements per piece of element-wise work (GELU, sums, zeroing).
const ELEMENTS_PER_PIECE: usize = 1 << 14;

/// `out = a + b` (a residual connection), by pieces.
pub fn add(ctx: &Context, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), Error> {
    let k = ctx.kernels;
    ctx.threads
        .try_for_each_piece((out, ELEMENTS_PER_PIECE), |i, out| {
            let at = i * ELEMENTS_PER_PIECE..i * ELEMENTS_PER_PIECE + out.len();
            Ok(k.add(&a[at.clone()], &b[at], out)?)
        })
}

/// `x = 0`, by pieces.
pub fn zero(ctx: &Context, x: &mut [f32]) {
    let k = ctx.kernels;
    // Zeroing cannot fail.
    let _ = ctx
        .threads
        .try_for_each_piece((x, ELEMENTS_PER_PIECE), |_, x| {
            k.fill(0.0, x);
            Ok(())
        });
}

/// LayerNorm forward, by pieces of rows.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward<'a>(
    ctx: &mut Context,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: impl Into<ActivationMut<'a>>,
    mean: &mut [f32],
    rstd: &mut [f32],
) -> Result<(), Error> {
    ctx.timed(
        |p| &mut p.layer_norm,
        |ctx| match out.into() {
            ActivationMut::F32(out) => {
                layer_norm_pieces(ctx, x, (gamma, beta, eps), out, mean, rstd)
            }
            ActivationMut::Bf16(out) => {
                layer_norm_pieces(ctx, x, (gamma, beta, eps), out, mean, rstd)
            }
        },
    )
}

/// [`layer_norm_forward`] into either element type.
fn layer_norm_pieces<O: Bf16Output>(
    ctx: &Context,
    x: &[f32],
    (gamma, beta, eps): (&[f32], &[f32], f32),
    out: &mut [O],
    mean: &mut [f32],
    rstd: &mut [f32],
) -> Result<(), Error> {
    let (k, c) = (ctx.kernels, gamma.len());
    let pieces = (
        (out, ROWS_PER_PIECE * c),
        ((mean, ROWS_PER_PIECE), (rstd, ROWS_PER_PIECE)),
    );
    ctx.threads
        .try_for_each_piece(pieces, |i, (out, (mean, rstd))| {
            let x = &x[i * ROWS_PER_PIECE * c..][..out.len()];
            Ok(k.layer_norm_forward(x, gamma, beta, eps, out, mean, rstd)?)
        })
}

/// LayerNorm backward, by pieces of rows, accumulating into `dx`,
/// `dgamma` and `dbeta`. Each piece sums its parameter gradients apart;
/// the pieces are then added in order.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    ctx: &mut Context,
    x: &[f32],
    gamma: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dout: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Result<(), Error> {
    ctx.timed(
        |p| &mut p.layer_norm,
        |ctx| {
            let (k, c) = (ctx.kernels, gamma.len());
            let pieces = mean.len().div_ceil(ROWS_PER_PIECE);
            let partials = zeroed_partials(&mut ctx.partials, pieces * 2 * c);
            ctx.threads.try_for_each_piece(
                ((dx, ROWS_PER_PIECE * c), (&mut partials[..], 2 * c)),
                |i, (dx, partial)| {
                    let rows = i * ROWS_PER_PIECE..i * ROWS_PER_PIECE + dx.len() / c;
                    let (x, dout) = (
                        &x[rows.start * c..rows.end * c],
                        &dout[rows.start * c..rows.end * c],
                    );
                    let (pg, pb) = partial.split_at_mut(c);
                    Ok(k.layer_norm_backward(
                        x,
                        gamma,
                        &mean[rows.clone()],
                        &rstd[rows],
                        dout,
                        dx,
                        pg,
                        pb,
                    )?)
                },
            )?;
            for partial in ctx.partials.chunks_exact(2 * c) {
                k.axpy(1.0, &partial[..c], dgamma)?;
                k.axpy(1.0, &partial[c..], dbeta)?;
            }
            Ok(())
        },
    )
}

/// GELU forward, by pieces.
pub fn gelu_forward<'a, 'x>(
    ctx: &mut Context,
    x: impl Into<Activation<'x>>,
    out: impl Into<ActivationMut<'a>>,
) -> Result<(), Error> {
    ctx.timed(
        |p| &mut p.gelu,
        |ctx| match (x.into(), out.into()) {
            (Activation::F32(x), ActivationMut::F32(out)) => gelu_pieces(ctx, x, out),
            (Activation::F32(x), ActivationMut::Bf16(out)) => gelu_pieces(ctx, x, out),
            (Activation::Bf16(x), ActivationMut::F32(out)) => gelu_pieces(ctx, x, out),
            (Activation::Bf16(x), ActivationMut::Bf16(out)) => gelu_pieces(ctx, x, out),
        },
    )
}

/// [`gelu_forward`] for each pair of element types.
fn gelu_pieces<I: Bf16Input, O: Bf16Output>(
    ctx: &Context,
    x: &[I],
    out: &mut [O],
) -> Result<(), Error> {
    let k = ctx.kernels;
    ctx.threads
        .try_for_each_piece((out, ELEMENTS_PER_PIECE), |i, out| {
            Ok(k.gelu_forward(&x[i * ELEMENTS_PER_PIECE..][..out.len()], out)?)
        })
}

/// An activation as the precision stores it, as its layer writes it: the
/// f32 buffer, or in bf16 precision bf16 values in the first half of its
/// bytes, one per float: half the bytes to write and to read. bf16
/// precision keeps in bf16 what only products read (the LayerNorm outputs
/// inside a block, attention's input and output, GELU's output and input
/// gradient), which the products round to bf16 anyway, so no bit of their
/// results changes; and, as PyTorch autocast does, the MLP's product
/// output and its gradient, which GELU reads and computes from in f32.
/// (A caller that keeps an activation in f32 whatever the precision, as
/// cached decoding keeps attention's, passes [`Precision::F32`].)
pub fn stored_mut(precision: Precision, buf: &mut [f32]) -> ActivationMut<'_> {
    match precision {
        Precision::F32 => ActivationMut::F32(buf),
        Precision::Bf16 => {
            let len = buf.len();
            ActivationMut::Bf16(&mut bytemuck::cast_slice_mut(buf)[..len])
        }
    }
}

/// The activation [`stored_mut`] had written into `buf`, as its readers
/// take it (`precision` the same).
pub fn stored(precision: Precision, buf: &[f32]) -> Activation<'_> {
    match precision {
        Precision::F32 => Activation::F32(buf),
        Precision::Bf16 => Activation::Bf16(&bytemuck::cast_slice(buf)[..buf.len()]),
    }
}

/// An activation (or a gradient) as a layer reads it: f32, or bf16 values
/// (see [`stored_mut`]).
#[derive(Clone, Copy)]
pub enum Activation<'a> {
    F32(&'a [f32]),
    Bf16(&'a [Bf16]),
}

/// An activation as its layer writes it (see [`stored_mut`]).
pub enum ActivationMut<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [Bf16]),
}

impl<'a> ActivationMut<'a> {
    /// The activation as a `rows × cols` matrix, the C of a product.
    fn into_c(self, rows: usize, cols: usize) -> Result<Output<'a>, Error> {
        Ok(match self {
            ActivationMut::F32(x) => MatMut::new(x, rows, cols)?.into(),
            ActivationMut::Bf16(x) => MatMut::new(x, rows, cols)?.into(),
        })
    }

    /// Rows `rows` of the activation, `width` values each.
    pub fn rows_mut(&mut self, rows: Range<usize>, width: usize) -> ActivationMut<'_> {
        let span = rows.start * width..rows.end * width;
        match self {
            ActivationMut::F32(x) => ActivationMut::F32(&mut x[span]),
            ActivationMut::Bf16(x) => ActivationMut::Bf16(&mut x[span]),
        }
    }
}

impl<'a> From<&'a mut [f32]> for ActivationMut<'a> {
    fn from(x: &'a mut [f32]) -> ActivationMut<'a> {
        ActivationMut::F32(x)
    }
}

impl<'a> From<&'a [f32]> for Activation<'a> {
    fn from(x: &'a [f32]) -> Activation<'a> {
        Activation::F32(x)
    }
}

impl<'a> From<&'a mut [f32]> for Activation<'a> {
    fn from(x: &'a mut [f32]) -> Activation<'a> {
        Activation::F32(x)
    }
}

impl<'a> Activation<'a> {
    /// Values `range` of the activation (`a..b` or `a..`).
    pub(super) fn values(self, range: impl RangeBounds<usize>) -> Activation<'a> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        match self {
            Activation::F32(x) => Activation::F32(&x[bounds]),
            Activation::Bf16(x) => Activation::Bf16(&x[bounds]),
        }
    }

    /// The activation as a `rows × cols` matrix, the A of a product.
    fn as_a(self, rows: usize, cols: usize) -> Result<LeftOperand<'a>, Error> {
        Ok(match self {
            Activation::F32(x) => MatRef::new(x, rows, cols)?.into(),
            Activation::Bf16(x) => MatRef::new(x, rows, cols)?.into(),
        })
    }

    /// The activation as a `rows × cols` matrix, the B of a product.
    fn as_b(self, rows: usize, cols: usize) -> Result<RightOperand<'a>, Error> {
        self.strided_b(0, rows, cols, cols)
    }

    /// The `rows × cols` matrix from element `first`, rows `row_stride`
    /// apart, as the A of a product.
    pub fn strided_a(
        self,
        first: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<LeftOperand<'a>, Error> {
        let past = || KernelError::InvalidArgument("a view starts past its activation");
        Ok(match self {
            Activation::F32(x) => {
                MatRef::strided(x.get(first..).ok_or_else(past)?, rows, cols, row_stride)?.into()
            }
            Activation::Bf16(x) => {
                MatRef::strided(x.get(first..).ok_or_else(past)?, rows, cols, row_stride)?.into()
            }
        })
    }

    /// [`Activation::strided_a`] as the B of a product.
    pub fn strided_b(
        self,
        first: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<RightOperand<'a>, Error> {
        Ok(match self.strided_a(first, rows, cols, row_stride)? {
            LeftOperand::F32(x) => x.into(),
            LeftOperand::Bf16(x) => x.into(),
        })
    }
}

/// GELU backward fused with the gradient of the bias its input came with
/// (`x = inp · w + bias`): `dx = gelu'(x) · dout`, overwriting `dx`
/// (accumulating would need a pass that zeroes it first: 2–3 % of a bf16
/// `shakes` step), and `dbias += Σ_rows dx` ([`rows_with_bias_gradient`]).
pub fn gelu_backward<'a, 'x, 'd>(
    ctx: &mut Context,
    x: impl Into<Activation<'x>>,
    dout: impl Into<Activation<'d>>,
    dx: impl Into<ActivationMut<'a>>,
    dbias: &mut [f32],
) -> Result<(), Error> {
    ctx.timed(
        |p| &mut p.gelu,
        |ctx| match (x.into(), dout.into()) {
            (Activation::F32(x), Activation::F32(d)) => gelu_rows(ctx, x, d, dx.into(), dbias),
            (Activation::F32(x), Activation::Bf16(d)) => gelu_rows(ctx, x, d, dx.into(), dbias),
            (Activation::Bf16(x), Activation::F32(d)) => gelu_rows(ctx, x, d, dx.into(), dbias),
            (Activation::Bf16(x), Activation::Bf16(d)) => gelu_rows(ctx, x, d, dx.into(), dbias),
        },
    )
}

/// [`gelu_backward`] for each pair of element types.
fn gelu_rows<X: Bf16Input, D: Bf16Input>(
    ctx: &mut Context,
    x: &[X],
    dout: &[D],
    dx: ActivationMut,
    dbias: &mut [f32],
) -> Result<(), Error> {
    let (k, oc) = (ctx.kernels, dbias.len());
    rows_with_bias_gradient(ctx, dx, dbias, |r, dx| {
        let at = r * oc..(r + 1) * oc;
        k.gelu_backward_into(&x[at.clone()], &dout[at], dx)
    })
}

/// Writes the rows of a layer's output gradient `out` (rows of
/// `dbias.len()`), `row(r, values)` putting row `r`'s f32 values in
/// `values`, and adds them into the gradient of the bias that layer's input
/// came with, `dbias += Σ_rows out`, while each row is in cache (summed in
/// `bias_backward`'s order: the same bits). `out` is f32, or bf16 where
/// only products read it ([`stored_mut`]): each row is then rounded
/// once from its f32 values, and the bias summed from those.
pub fn rows_with_bias_gradient(
    ctx: &mut Context,
    out: ActivationMut,
    dbias: &mut [f32],
    row: impl Fn(usize, &mut [f32]) -> Result<(), KernelError> + Sync,
) -> Result<(), Error> {
    let (k, oc) = (ctx.kernels, dbias.len());
    let first_row = |i: usize| i * ROWS_PER_PIECE;
    match out {
        ActivationMut::F32(out) => {
            bias_partials(ctx, out, oc, |i, out, partial, _| {
                for (r, out) in out.chunks_exact_mut(oc).enumerate() {
                    row(first_row(i) + r, out)?;
                    k.axpy(1.0, out, partial)?;
                }
                Ok(())
            })?;
        }
        ActivationMut::Bf16(out) => {
            bias_partials(ctx, out, oc, |i, out, partial, values| {
                for (r, out) in out.chunks_exact_mut(oc).enumerate() {
                    row(first_row(i) + r, values)?;
                    k.axpy(1.0, values, partial)?;
                    k.f32_to_bf16(values, out)?;
                }
                Ok(())
            })?;
        }
    }
    for partial in ctx.partials.chunks_exact(2 * oc) {
        k.axpy(1.0, &partial[..oc], dbias)?;
    }
    Ok(())
}

/// Runs `piece(i, rows, partial, scratch)` over pieces of
/// [`ROWS_PER_PIECE`] rows of `oc` of `out`, each with its own zeroed
/// partial sum and a scratch row (both `oc` floats, in `ctx.partials`).
fn bias_partials<O: Send>(
    ctx: &mut Context,
    out: &mut [O],
    oc: usize,
    piece: impl Fn(usize, &mut [O], &mut [f32], &mut [f32]) -> Result<(), KernelError> + Sync,
) -> Result<(), Error> {
    ctx.partials.clear();
    if oc == 0 {
        return Ok(());
    }
    let pieces = (out.len() / oc).div_ceil(ROWS_PER_PIECE);
    let partials = zeroed_partials(&mut ctx.partials, pieces * 2 * oc);
    ctx.threads.try_for_each_piece(
        ((out, ROWS_PER_PIECE * oc), (&mut partials[..], 2 * oc)),
        |i, (out, partial)| {
            let (partial, scratch) = partial.split_at_mut(oc);
            Ok(piece(i, out, partial, scratch)?)
        },
    )
}

/// Fused softmax + cross-entropy, by pieces of rows: per-row losses over
/// the first `classes` of each row of `stride` logits (the rest is the
/// vocabulary's padding), and with `dlogits` the gradient of
/// `grad_scale · Σ losses` (0 in the padding).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    ctx: &mut Context,
    logits: &[f32],
    classes: usize,
    stride: usize,
    targets: &[u32],
    losses: &mut [f32],
    dlogits: Option<&mut [f32]>,
    grad_scale: f32,
) -> Result<(), Error> {
    ctx.timed(
        |p| &mut p.cross_entropy,
        |ctx| {
            let k = ctx.kernels;
            let piece = |i: usize, losses: &mut [f32], mut dlogits: Option<&mut [f32]>| {
                let r = i * ROWS_PER_PIECE..i * ROWS_PER_PIECE + losses.len();
                let logits = &logits[r.start * stride..r.end * stride];
                let targets = &targets[r];
                if classes == stride {
                    return Ok(
                        k.cross_entropy(logits, classes, targets, losses, dlogits, grad_scale)?
                    );
                }
                // Padded rows: one row at a time over its real classes.
                for (r, (row, target)) in logits.chunks_exact(stride).zip(targets).enumerate() {
                    let (row, target) = (&row[..classes], std::slice::from_ref(target));
                    let loss = &mut losses[r..r + 1];
                    match dlogits.as_deref_mut() {
                        Some(d) => {
                            let (d, padding) = d[r * stride..][..stride].split_at_mut(classes);
                            k.cross_entropy(row, classes, target, loss, Some(d), grad_scale)?;
                            padding.fill(0.0);
                        }
                        None => k.cross_entropy(row, classes, target, loss, None, grad_scale)?,
                    }
                }
                Ok(())
            };
            match dlogits {
                Some(dlogits) => ctx.threads.try_for_each_piece(
                    ((losses, ROWS_PER_PIECE), (dlogits, ROWS_PER_PIECE * stride)),
                    |i, (losses, dlogits)| piece(i, losses, Some(dlogits)),
                ),
                None => ctx
                    .threads
                    .try_for_each_piece((losses, ROWS_PER_PIECE), |i, losses| {
                        piece(i, losses, None)
                    }),
            }
        },
    )
}

/// The profile entry of the linear layers' matrix products.
fn matmul_time(p: &mut Profile) -> &mut std::time::Duration {
    &mut p.matmul
}

/// A weight matrix as a forward pass reads it: the f32 tensor as stored
/// (the master copy), or its bf16 copy packed once for decoding
/// (`model::packed`), shaped as the product's B.
#[derive(Clone, Copy)]
pub enum Weight<'a> {
    F32(&'a [f32]),
    Packed(PackedBf16<'a>),
}

/// `out[bt, oc] = inp[bt, c] · w[c, oc] + bias[oc]` (`out` bf16 only in
/// bf16 precision).
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward<'a, 'o>(
    ctx: &mut Context,
    out: impl Into<ActivationMut<'o>>,
    inp: impl Into<Activation<'a>>,
    w: Weight,
    bias: Option<&[f32]>,
    bt: usize,
    c: usize,
    oc: usize,
) -> Result<(), Error> {
    ctx.timed(matmul_time, |ctx| {
        let (x, out) = (inp.into().as_a(bt, c)?, out.into().into_c(bt, oc)?);
        let w: RightOperand = match w {
            Weight::F32(w) => MatRef::new(w, c, oc)?.into(),
            Weight::Packed(w) => w.into(),
        };
        match bias {
            Some(bias) => ctx.gemm_bias(x, w, bias, out),
            None => ctx.gemm(1.0, x, w, 0.0, out),
        }
    })
}

/// `partials` as `len` zeros: its buffer replaced rather than grown where
/// it is too short (the memory check counts `len` alone, not an old
/// buffer beside the new one, nor a doubled capacity).
fn zeroed_partials(partials: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if partials.capacity() < len {
        *partials = Vec::new();
        partials.reserve_exact(len);
    }
    partials.clear();
    partials.resize(len, 0.0);
    partials
}

/// Floats of the partial sums (`ctx.partials`) the backward pass of
/// `rows` rows of `c` channels holds at most: per piece of rows, a
/// partial and a scratch row of the widest bias gradient (the MLP's, `4c`).
pub fn partial_floats(rows: usize, c: usize) -> usize {
    rows.div_ceil(ROWS_PER_PIECE)
        .saturating_mul(8usize.saturating_mul(c))
}

/// The products (`(m, n, k)`) of [`matmul_forward`] and, with
/// `backward`, of [`matmul_backward`] for `bt` rows of `c` inputs and `oc`
/// outputs.
pub fn matmul_products(
    bt: usize,
    c: usize,
    oc: usize,
    backward: bool,
) -> impl Iterator<Item = (usize, usize, usize)> {
    let gradients = [(bt, c, oc), (c, oc, bt)];
    std::iter::once((bt, oc, c)).chain(gradients.into_iter().filter(move |_| backward))
}

/// Backward of [`matmul_forward`]: `dinp = dout · wᵀ` (overwritten; f32,
/// or bf16 where the precision stores it so, [`stored_mut`]),
/// `dw += inpᵀ · dout`, and with `dbias` (`dout` in f32 then) `dbias +=
/// Σ_rows dout`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<'a, 'b, 'i>(
    ctx: &mut Context,
    dinp: impl Into<ActivationMut<'i>>,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: impl Into<Activation<'b>>,
    inp: impl Into<Activation<'a>>,
    w: &[f32],
    bt: usize,
    c: usize,
    oc: usize,
) -> Result<(), Error> {
    ctx.timed(matmul_time, |ctx| {
        let dout = dout.into();
        let wt = MatRef::new(w, c, oc)?.t();
        ctx.gemm(1.0, dout.as_a(bt, oc)?, wt, 0.0, dinp.into().into_c(bt, c)?)?;
        let x = inp.into().as_a(bt, c)?;
        ctx.gemm(1.0, x.t(), dout.as_b(bt, oc)?, 1.0, MatMut::new(dw, c, oc)?)?;
        match (dbias, dout) {
            (None, _) => Ok(()),
            (Some(dbias), Activation::F32(dout)) => {
                debug_assert_eq!(dbias.len(), oc);
                bias_backward(ctx, dbias, dout)
            }
            (Some(_), Activation::Bf16(_)) => {
                Err(KernelError::InvalidArgument("a bias gradient summed from bf16 values").into())
            }
        }
    })
}

/// `dbias += Σ_rows dout`. Each piece of rows sums its whole rows, in
/// order, into a partial; the partials are then added in order, so the
/// sum does not depend on the thread count. (Pieces of columns instead
/// read every row a few lines at a time and waited on memory: 1.5–2.5 %
/// of a step.)
fn bias_backward(ctx: &mut Context, dbias: &mut [f32], dout: &[f32]) -> Result<(), Error> {
    let (k, oc) = (ctx.kernels, dbias.len());
    if oc == 0 {
        return Ok(());
    }
    let pieces = (dout.len() / oc).div_ceil(ROWS_PER_PIECE);
    let partials = zeroed_partials(&mut ctx.partials, pieces * oc);
    ctx.threads
        .try_for_each_piece((&mut partials[..], oc), |i, partial| {
            let rows = &dout[i * ROWS_PER_PIECE * oc..];
            for row in rows.chunks_exact(oc).take(ROWS_PER_PIECE) {
                k.axpy(1.0, row, partial)?;
            }
            Ok(())
        })?;
    for partial in ctx.partials.chunks_exact(oc) {
        k.axpy(1.0, partial, dbias)?;
    }
    Ok(())
}

/// The output layer, tied to the token embedding:
/// `logits[bt, v] = x[bt, c] · wte[v, c]ᵀ` (packed: `wte` is `wteᵀ`).
pub fn lm_head_forward(
    ctx: &mut Context,
    logits: &mut [f32],
    x: &[f32],
    wte: Weight,
    bt: usize,
    c: usize,
    v: usize,
) -> Result<(), Error> {
    ctx.timed(matmul_time, |ctx| {
        let (x, logits) = (MatRef::new(x, bt, c)?, MatMut::new(logits, bt, v)?);
        match wte {
            Weight::F32(wte) => ctx.gemm(1.0, x, MatRef::new(wte, v, c)?.t(), 0.0, logits),
            Weight::Packed(wte_t) => ctx.gemm(1.0, x, wte_t, 0.0, logits),
        }
    })
}

/// The products (`(m, n, k)`) of [`lm_head_forward`] and, with
/// `backward`, of [`lm_head_backward`] for `bt` rows of `c` channels and
/// a vocabulary of `v`.
pub fn lm_head_products(
    bt: usize,
    c: usize,
    v: usize,
    backward: bool,
) -> impl Iterator<Item = (usize, usize, usize)> {
    let gradients = [(bt, c, v), (v, c, bt)];
    std::iter::once((bt, v, c)).chain(gradients.into_iter().filter(move |_| backward))
}

/// Backward of [`lm_head_forward`]: `dx = dlogits · wte` (overwritten),
/// `dwte += dlogitsᵀ · x`.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_backward(
    ctx: &mut Context,
    dx: &mut [f32],
    dwte: &mut [f32],
    dlogits: &[f32],
    x: &[f32],
    wte: &[f32],
    bt: usize,
    c: usize,
    v: usize,
) -> Result<(), Error> {
    ctx.timed(matmul_time, |ctx| {
        let dy = MatRef::new(dlogits, bt, v)?;
        let wte_ = MatRef::new(wte, v, c)?;
        ctx.gemm(1.0, dy, wte_, 0.0, MatMut::new(dx, bt, c)?)?;
        let x = MatRef::new(x, bt, c)?;
        ctx.gemm(1.0, dy.t(), x, 1.0, MatMut::new(dwte, v, c)?)
    })
}

/// `out[i, :] = wte[tokens[i], :] + wpe[first_position + i % t, :]` for
/// the `tokens.len()` rows of sequences of `t` positions. Tokens must be
/// below the vocabulary size (`wte.len() / c`).
#[allow(clippy::too_many_arguments)]
pub fn encoder_forward(
    ctx: &Context,
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    t: usize,
    first_position: usize,
    c: usize,
) -> Result<(), Error> {
    check_tokens(tokens, wte.len() / c)?;
    for (i, (row, &tok)) in out.chunks_exact_mut(c).zip(tokens).enumerate() {
        let pos = first_position + i % t;
        ctx.kernels
            .add(&wte[tok as usize * c..][..c], &wpe[pos * c..][..c], row)?;
    }
    Ok(())
}

/// Backward of [`encoder_forward`] (from position 0): `dwte[token] +=
/// dout`, `dwpe[position] += dout`.
pub fn encoder_backward(
    ctx: &Context,
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    t: usize,
    c: usize,
) -> Result<(), Error> {
    for (i, (row, &tok)) in dout.chunks_exact(c).zip(tokens).enumerate() {
        let pos = i % t;
        ctx.kernels
            .axpy(1.0, row, &mut dwte[tok as usize * c..][..c])?;
        ctx.kernels.axpy(1.0, row, &mut dwpe[pos * c..][..c])?;
    }
    Ok(())
}

/// Every token must index the vocabulary.
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<(), Error> {
    match tokens.iter().find(|&&tok| tok as usize >= vocab) {
        Some(tok) => Err(Error::Input(format!(
            "token {tok} is outside the vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}
