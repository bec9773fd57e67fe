//! The layers of the model as forward/backward pairs over flat buffers, with
//! their shapes in the signatures (`b` sequences of `t` tokens, `c`
//! channels, `oc` output channels, `nh` heads). Backward passes accumulate
//! into parameter gradients (`+=`), so gradients add up over micro-batches.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use kernels::{Kernels, MatMut, MatRef, ValidLen};

use crate::error::Error;
use crate::threads::Threads;

/// Time spent per kind of layer, so a user sees where a step goes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Profile {
    /// Matrix products of the linear layers and the LM head.
    pub matmul: Duration,
    /// Attention: scores, softmax, weighted sum (their GEMMs included).
    pub attention: Duration,
    pub layer_norm: Duration,
    pub gelu: Duration,
    /// Softmax + cross-entropy of the loss.
    pub cross_entropy: Duration,
}

/// The kernels handle, the threads, the GEMM workspace all matrix products
/// share (grown on first use, then reused: no allocation per step), and the
/// time spent per kind of layer.
pub struct Compute {
    pub kernels: Kernels,
    pub threads: Threads,
    workspace: Vec<f32>,
    /// Per-piece partial sums of the LayerNorm parameter gradients.
    partials: Vec<f32>,
    pub profile: Profile,
}

/// Rows per piece of row-wise work (LayerNorm, cross-entropy): a fixed
/// size, so that results never depend on the thread count.
const ROWS_PER_PIECE: usize = 64;

/// Elements per piece of element-wise work (GELU).
const ELEMENTS_PER_PIECE: usize = 1 << 14;

thread_local! {
    /// Each thread's GEMM workspace for work the runner splits itself
    /// (attention per sequence and head, decoding's heads); grown on first
    /// use, then reused.
    static WORKSPACE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `C = alpha · op(A) · op(B) + beta · C` on this thread, with its
/// workspace.
pub(super) fn gemm_local(
    k: &Kernels,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: MatMut,
) -> Result<(), Error> {
    WORKSPACE.with(|ws| {
        let mut ws = ws.borrow_mut();
        let need = k.gemm_workspace_len(a.rows(), b.cols(), a.cols());
        if ws.len() < need {
            ws.resize(need, 0.0);
        }
        Ok(k.gemm(alpha, a, b, beta, c, &mut ws)?)
    })
}

impl Compute {
    pub fn new(kernels: Kernels) -> Compute {
        Compute {
            kernels,
            threads: Threads::single(),
            workspace: Vec::new(),
            partials: Vec::new(),
            profile: Profile::default(),
        }
    }

    /// LayerNorm forward, by pieces of rows.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_forward(
        &mut self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        out: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) -> Result<(), Error> {
        let start = Instant::now();
        let (k, c) = (self.kernels, gamma.len());
        self.threads.try_for_each_chunk3(
            (out, ROWS_PER_PIECE * c),
            (mean, ROWS_PER_PIECE),
            (rstd, ROWS_PER_PIECE),
            |i, out, mean, rstd| {
                let x = &x[i * ROWS_PER_PIECE * c..][..out.len()];
                Ok(k.layer_norm_forward(x, gamma, beta, eps, out, mean, rstd)?)
            },
        )?;
        self.profile.layer_norm += start.elapsed();
        Ok(())
    }

    /// LayerNorm backward, by pieces of rows, accumulating into `dx`,
    /// `dgamma` and `dbeta`. Each piece sums its parameter gradients apart;
    /// the pieces are then added in order.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        &mut self,
        x: &[f32],
        gamma: &[f32],
        mean: &[f32],
        rstd: &[f32],
        dout: &[f32],
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) -> Result<(), Error> {
        let start = Instant::now();
        let (k, c) = (self.kernels, gamma.len());
        let pieces = mean.len().div_ceil(ROWS_PER_PIECE);
        self.partials.clear();
        self.partials.resize(pieces * 2 * c, 0.0);
        self.threads.try_for_each_chunk2(
            (dx, ROWS_PER_PIECE * c),
            (&mut self.partials, 2 * c),
            |i, dx, partial| {
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
        for partial in self.partials.chunks_exact(2 * c) {
            k.axpy(1.0, &partial[..c], dgamma)?;
            k.axpy(1.0, &partial[c..], dbeta)?;
        }
        self.profile.layer_norm += start.elapsed();
        Ok(())
    }

    /// GELU forward, by pieces.
    pub fn gelu_forward(&mut self, x: &[f32], out: &mut [f32]) -> Result<(), Error> {
        let start = Instant::now();
        let k = self.kernels;
        self.threads
            .try_for_each_chunk(out, ELEMENTS_PER_PIECE, |i, out| {
                Ok(k.gelu_forward(&x[i * ELEMENTS_PER_PIECE..][..out.len()], out)?)
            })?;
        self.profile.gelu += start.elapsed();
        Ok(())
    }

    /// GELU backward (accumulating into `dx`), by pieces.
    pub fn gelu_backward(&mut self, x: &[f32], dout: &[f32], dx: &mut [f32]) -> Result<(), Error> {
        let start = Instant::now();
        let k = self.kernels;
        self.threads
            .try_for_each_chunk(dx, ELEMENTS_PER_PIECE, |i, dx| {
                let at = i * ELEMENTS_PER_PIECE..i * ELEMENTS_PER_PIECE + dx.len();
                Ok(k.gelu_backward(&x[at.clone()], &dout[at], dx)?)
            })?;
        self.profile.gelu += start.elapsed();
        Ok(())
    }

    /// Fused softmax + cross-entropy, by pieces of rows.
    pub fn cross_entropy(
        &mut self,
        logits: &[f32],
        classes: usize,
        targets: &[u32],
        losses: &mut [f32],
        dlogits: Option<&mut [f32]>,
        grad_scale: f32,
    ) -> Result<(), Error> {
        let start = Instant::now();
        let k = self.kernels;
        let rows = |i: usize, n: usize| i * ROWS_PER_PIECE..i * ROWS_PER_PIECE + n;
        match dlogits {
            Some(dlogits) => self.threads.try_for_each_chunk2(
                (losses, ROWS_PER_PIECE),
                (dlogits, ROWS_PER_PIECE * classes),
                |i, losses, dlogits| {
                    let r = rows(i, losses.len());
                    let logits = &logits[r.start * classes..r.end * classes];
                    Ok(k.cross_entropy(
                        logits,
                        classes,
                        &targets[r],
                        losses,
                        Some(dlogits),
                        grad_scale,
                    )?)
                },
            )?,
            None => self
                .threads
                .try_for_each_chunk(losses, ROWS_PER_PIECE, |i, losses| {
                    let r = rows(i, losses.len());
                    let logits = &logits[r.start * classes..r.end * classes];
                    Ok(k.cross_entropy(logits, classes, &targets[r], losses, None, grad_scale)?)
                })?,
        }
        self.profile.cross_entropy += start.elapsed();
        Ok(())
    }

    /// `C = alpha · op(A) · op(B) + beta · C`, split over the threads.
    pub(super) fn gemm(
        &mut self,
        alpha: f32,
        a: MatRef,
        b: MatRef,
        beta: f32,
        c: MatMut,
    ) -> Result<(), Error> {
        let need = self
            .kernels
            .gemm_workspace_len(a.rows(), b.cols(), a.cols());
        if self.workspace.len() < need {
            self.workspace.resize(need, 0.0);
        }
        Ok(self
            .kernels
            .gemm_with(&self.threads, alpha, a, b, beta, c, &mut self.workspace)?)
    }

    /// `out[bt, oc] = inp[bt, c] · w[c, oc] + bias[oc]`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward(
        &mut self,
        out: &mut [f32],
        inp: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        bt: usize,
        c: usize,
        oc: usize,
    ) -> Result<(), Error> {
        let start = Instant::now();
        let (x, w_) = (MatRef::new(inp, bt, c)?, MatRef::new(w, c, oc)?);
        self.gemm(1.0, x, w_, 0.0, MatMut::new(out, bt, oc)?)?;
        if let Some(bias) = bias {
            self.kernels.add_bias(bias, out)?;
        }
        self.profile.matmul += start.elapsed();
        Ok(())
    }

    /// Backward of [`Compute::matmul_forward`]: `dinp = dout · wᵀ`
    /// (overwritten), `dw += inpᵀ · dout`, `dbias += Σ_rows dout`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward(
        &mut self,
        dinp: &mut [f32],
        dw: &mut [f32],
        dbias: Option<&mut [f32]>,
        dout: &[f32],
        inp: &[f32],
        w: &[f32],
        bt: usize,
        c: usize,
        oc: usize,
    ) -> Result<(), Error> {
        let start = Instant::now();
        let dy = MatRef::new(dout, bt, oc)?;
        self.gemm(
            1.0,
            dy,
            MatRef::new(w, c, oc)?.t(),
            0.0,
            MatMut::new(dinp, bt, c)?,
        )?;
        let x = MatRef::new(inp, bt, c)?;
        self.gemm(1.0, x.t(), dy, 1.0, MatMut::new(dw, c, oc)?)?;
        if let Some(dbias) = dbias {
            for row in dout.chunks_exact(oc) {
                self.kernels.axpy(1.0, row, dbias)?;
            }
        }
        self.profile.matmul += start.elapsed();
        Ok(())
    }

    /// The output layer, tied to the token embedding:
    /// `logits[bt, v] = x[bt, c] · wte[v, c]ᵀ`.
    pub fn lm_head_forward(
        &mut self,
        logits: &mut [f32],
        x: &[f32],
        wte: &[f32],
        bt: usize,
        c: usize,
        v: usize,
    ) -> Result<(), Error> {
        let start = Instant::now();
        let (x, wte) = (MatRef::new(x, bt, c)?, MatRef::new(wte, v, c)?);
        self.gemm(1.0, x, wte.t(), 0.0, MatMut::new(logits, bt, v)?)?;
        self.profile.matmul += start.elapsed();
        Ok(())
    }

    /// Backward of [`Compute::lm_head_forward`]: `dx = dlogits · wte`
    /// (overwritten), `dwte += dlogitsᵀ · x`.
    #[allow(clippy::too_many_arguments)]
    pub fn lm_head_backward(
        &mut self,
        dx: &mut [f32],
        dwte: &mut [f32],
        dlogits: &[f32],
        x: &[f32],
        wte: &[f32],
        bt: usize,
        c: usize,
        v: usize,
    ) -> Result<(), Error> {
        let start = Instant::now();
        let dy = MatRef::new(dlogits, bt, v)?;
        self.gemm(
            1.0,
            dy,
            MatRef::new(wte, v, c)?,
            0.0,
            MatMut::new(dx, bt, c)?,
        )?;
        self.gemm(
            1.0,
            dy.t(),
            MatRef::new(x, bt, c)?,
            1.0,
            MatMut::new(dwte, v, c)?,
        )?;
        self.profile.matmul += start.elapsed();
        Ok(())
    }

    /// Causal multi-head self-attention. `qkv[b, t, 3c]` holds each token's
    /// query, key and value (heads side by side within each); writes the
    /// probabilities `att[b, nh, t, t]` and the output `out[b, t, c]`.
    /// Every (sequence, head) is a piece of its own, computed into
    /// `per_head` (`b·t·c` floats at least) and then interleaved into rows.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_forward(
        &mut self,
        out: &mut [f32],
        att: &mut [f32],
        per_head: &mut [f32],
        qkv: &[f32],
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<(), Error> {
        debug_assert_eq!(out.len(), b * t * c);
        let start = Instant::now();
        let (kern, hs) = (self.kernels, c / nh);
        let scale = 1.0 / (hs as f32).sqrt();
        let per_head = &mut per_head[..b * t * c];
        let result = self
            .threads
            .try_for_each_chunk2((att, t * t), (per_head, t * hs), |piece, att_h, y| {
                let (bi, h) = (piece / nh, piece % nh);
                let (q, k, v) = head_views(&qkv[bi * t * 3 * c..][..t * 3 * c], h, t, c, hs)?;
                gemm_local(&kern, scale, q, k.t(), 0.0, MatMut::new(att_h, t, t)?)?;
                kern.softmax_rows(att_h, t, ValidLen::Causal { offset: 0 })?;
                let y = MatMut::new(y, t, hs)?;
                gemm_local(&kern, 1.0, MatRef::new(att_h, t, t)?, v, 0.0, y)
            })
            .and_then(|()| {
                let per_head = &*per_head;
                self.threads.try_for_each_chunk(out, t * c, |bi, out_b| {
                    interleave_heads(&per_head[bi * t * c..][..t * c], out_b, (t, hs, nh), 1);
                    Ok(())
                })
            });
        self.profile.attention += start.elapsed();
        result
    }

    /// Backward of [`Compute::attention_forward`]: writes `dqkv[b, t, 3c]`
    /// (overwritten) from `dout[b, t, c]`; `datt` (`[b, nh, t, t]`) and
    /// `per_head` (`b·t·3c` floats) are scratch. Pieces as in the forward.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_backward(
        &mut self,
        dqkv: &mut [f32],
        datt: &mut [f32],
        per_head: &mut [f32],
        dout: &[f32],
        qkv: &[f32],
        att: &[f32],
        b: usize,
        t: usize,
        c: usize,
        nh: usize,
    ) -> Result<(), Error> {
        debug_assert_eq!(dqkv.len(), b * t * 3 * c);
        let start = Instant::now();
        let (kern, hs) = (self.kernels, c / nh);
        let scale = 1.0 / (hs as f32).sqrt();
        let per_head = &mut per_head[..b * t * 3 * c];
        let datt = &mut datt[..b * nh * t * t];
        let result = self
            .threads
            .try_for_each_chunk2(
                (datt, t * t),
                (per_head, 3 * t * hs),
                |piece, datt, dqkv_h| {
                    let (bi, h) = (piece / nh, piece % nh);
                    let (q, k, v) = head_views(&qkv[bi * t * 3 * c..][..t * 3 * c], h, t, c, hs)?;
                    let dy = MatRef::strided(&dout[bi * t * c + h * hs..], t, hs, c)?;
                    let att_h = &att[piece * t * t..][..t * t];
                    let probs = MatRef::new(att_h, t, t)?;
                    let (dq, dkv) = dqkv_h.split_at_mut(t * hs);
                    let (dk, dv) = dkv.split_at_mut(t * hs);
                    // datt = dy · vᵀ; dv = attᵀ · dy.
                    gemm_local(&kern, 1.0, dy, v.t(), 0.0, MatMut::new(datt, t, t)?)?;
                    gemm_local(&kern, 1.0, probs.t(), dy, 0.0, MatMut::new(dv, t, hs)?)?;
                    // Through the softmax to the scaled scores.
                    kern.softmax_backward_rows(att_h, datt, t, ValidLen::Causal { offset: 0 })?;
                    let dscores = MatRef::new(datt, t, t)?;
                    gemm_local(&kern, scale, dscores, k, 0.0, MatMut::new(dq, t, hs)?)?;
                    gemm_local(&kern, scale, dscores.t(), q, 0.0, MatMut::new(dk, t, hs)?)
                },
            )
            .and_then(|()| {
                let per_head = &*per_head;
                self.threads
                    .try_for_each_chunk(dqkv, t * 3 * c, |bi, dqkv_b| {
                        let per_head = &per_head[bi * t * 3 * c..][..t * 3 * c];
                        interleave_heads(per_head, dqkv_b, (t, hs, nh), 3);
                        Ok(())
                    })
            });
        self.profile.attention += start.elapsed();
        result
    }
}

/// One sequence's per-head results back into rows: `heads` holds, per
/// head, `parts` blocks of `[t, hs]` (the output; or dq, dk, dv), and row
/// `r` of `rows` (`parts · nh · hs` floats) gets part `j` of head `h` at
/// `(j·nh + h)·hs`.
fn interleave_heads(
    heads: &[f32],
    rows: &mut [f32],
    (t, hs, nh): (usize, usize, usize),
    parts: usize,
) {
    let width = parts * nh * hs;
    for (head, blocks) in heads.chunks_exact(parts * t * hs).enumerate() {
        for (j, block) in blocks.chunks_exact(t * hs).enumerate() {
            for (r, src) in block.chunks_exact(hs).enumerate() {
                rows[r * width + (j * nh + head) * hs..][..hs].copy_from_slice(src);
            }
        }
    }
}

/// Head `h`'s query, key and value (`t × hs` each) in one sequence's
/// `qkv[t, 3c]`.
fn head_views(
    qkv: &[f32],
    h: usize,
    t: usize,
    c: usize,
    hs: usize,
) -> Result<(MatRef<'_>, MatRef<'_>, MatRef<'_>), Error> {
    let view = |offset: usize| MatRef::strided(&qkv[offset + h * hs..], t, hs, 3 * c);
    Ok((view(0)?, view(c)?, view(2 * c)?))
}

/// `out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]`. Tokens must be below
/// the vocabulary size (`wte.len() / c`).
#[allow(clippy::too_many_arguments)]
pub fn encoder_forward(
    k: &Kernels,
    out: &mut [f32],
    tokens: &[u32],
    wte: &[f32],
    wpe: &[f32],
    b: usize,
    t: usize,
    c: usize,
) -> Result<(), Error> {
    check_tokens(tokens, wte.len() / c)?;
    for (i, (row, &tok)) in out.chunks_exact_mut(c).zip(tokens).take(b * t).enumerate() {
        let pos = i % t;
        k.add(&wte[tok as usize * c..][..c], &wpe[pos * c..][..c], row)?;
    }
    Ok(())
}

/// Backward of [`encoder_forward`]: `dwte[token] += dout`, `dwpe[t] += dout`.
#[allow(clippy::too_many_arguments)]
pub fn encoder_backward(
    k: &Kernels,
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    tokens: &[u32],
    b: usize,
    t: usize,
    c: usize,
) -> Result<(), Error> {
    for (i, (row, &tok)) in dout.chunks_exact(c).zip(tokens).take(b * t).enumerate() {
        let pos = i % t;
        k.axpy(1.0, row, &mut dwte[tok as usize * c..][..c])?;
        k.axpy(1.0, row, &mut dwpe[pos * c..][..c])?;
    }
    Ok(())
}

/// Every token must index the vocabulary.
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<(), Error> {
    match tokens.iter().find(|&&tok| tok as usize >= vocab) {
        Some(tok) => Err(Error::Config(format!(
            "token {tok} is outside the vocabulary of {vocab}"
        ))),
        None => Ok(()),
    }
}
