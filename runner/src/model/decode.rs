//! Incremental decoding with a key/value cache: each layer keeps the keys
//! and values of every position seen, so a new token costs one pass over
//! the weights instead of a pass over the whole context.

use kernels::{Kernels, MatMut, MatRef, ValidLen};

use super::layers::{check_tokens, gemm_local};
use super::tensors::Arena;
use super::{Gpt, LAYER_NORM_EPS};
use crate::error::Error;

/// A token's attention at context `len` does `2 · len · c` multiply-adds;
/// below `len · c` = 2^15 its heads run one after another, since waking
/// the pool for a few microseconds of work costs more than it saves.
const PARALLEL_HEADS_WORK: usize = 1 << 15;

/// Keys and values of the positions decoded so far, plus the buffers of one
/// decoding pass (sized for a whole block, so that no pass allocates).
///
/// Keys are stored transposed, `[L, C, T]` (a head's keys are `hs` rows of
/// positions), so that a token's scores `q · Kᵀ` are a sum of rows of the
/// cache rather than one short dot product per position; values are
/// `[L, T, C]`.
pub struct KvCache {
    keys_t: Arena,
    values: Arena,
    len: usize,
    block_size: usize,
    x: Vec<f32>,
    ln: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    qkv: Vec<f32>,
    atty: Vec<f32>,
    scores: Vec<f32>,
    /// One row of scores per head, for decoding the heads of one token in
    /// parallel.
    head_scores: Vec<f32>,
    proj: Vec<f32>,
    fch: Vec<f32>,
    fch_gelu: Vec<f32>,
    logits: Vec<f32>,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The logits of the last position run.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Bytes held by the keys and values.
    pub fn cache_bytes(&self) -> usize {
        4 * (self.keys_t.len() + self.values.len())
    }
}

impl Gpt {
    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        let cfg = self.config;
        let (l, t, c, v) = (cfg.layers, cfg.block_size, cfg.channels, cfg.vocab_size);
        KvCache {
            keys_t: Arena::zeros(l * c * t),
            values: Arena::zeros(l * t * c),
            len: 0,
            block_size: t,
            x: vec![0.0; t * c],
            ln: vec![0.0; t * c],
            mean: vec![0.0; t],
            rstd: vec![0.0; t],
            qkv: vec![0.0; t * 3 * c],
            atty: vec![0.0; t * c],
            scores: vec![0.0; t * t],
            head_scores: vec![0.0; cfg.heads * t],
            proj: vec![0.0; t * c],
            fch: vec![0.0; t * 4 * c],
            fch_gelu: vec![0.0; t * 4 * c],
            logits: vec![0.0; v],
        }
    }

    /// Runs `tokens` at the positions after those in `cache`, appends their
    /// keys and values, and returns the logits of the last one. The cache
    /// must have room (`cache.len() + tokens.len() <= block_size`).
    pub fn forward_cached<'c>(
        &mut self,
        cache: &'c mut KvCache,
        tokens: &[u32],
    ) -> Result<&'c [f32], Error> {
        // One entry into the pool per pass, not one per matrix product.
        let pool = self.compute.threads.handle();
        pool.install(|| {
            let cfg = self.config;
            let (c, nh, v, t_max) = (cfg.channels, cfg.heads, cfg.vocab_size, cfg.block_size);
            let (m, p0) = (tokens.len(), cache.len);
            if m == 0 || p0 + m > t_max || cache.block_size != t_max {
                return Err(Error::Config(format!(
                    "{m} new tokens after {p0} do not fit the block size {t_max}"
                )));
            }
            check_tokens(tokens, v)?;
            let (hs, len) = (c / nh, p0 + m);
            let scale = 1.0 / (hs as f32).sqrt();
            let Gpt {
                sizes,
                params,
                compute,
                ..
            } = self;
            let p = sizes.split(params);
            let k = compute.kernels;
            let mc = m * c;
            let x = &mut cache.x[..mc];
            for (i, (row, &tok)) in x.chunks_exact_mut(c).zip(tokens).enumerate() {
                k.add(
                    &p.wte[tok as usize * c..][..c],
                    &p.wpe[(p0 + i) * c..][..c],
                    row,
                )?;
            }
            let (mean, rstd) = (&mut cache.mean[..m], &mut cache.rstd[..m]);
            let (ln, qkv, atty, proj) = (
                &mut cache.ln[..mc],
                &mut cache.qkv[..3 * mc],
                &mut cache.atty[..mc],
                &mut cache.proj[..mc],
            );
            let (fch, fch_gelu) = (&mut cache.fch[..4 * mc], &mut cache.fch_gelu[..4 * mc]);
            for l in 0..cfg.layers {
                let at = |n: usize| l * n..(l + 1) * n;
                compute.layer_norm_forward(
                    x,
                    &p.ln1w[at(c)],
                    &p.ln1b[at(c)],
                    LAYER_NORM_EPS,
                    ln,
                    mean,
                    rstd,
                )?;
                compute.matmul_forward(
                    qkv,
                    ln,
                    &p.qkvw[at(c * 3 * c)],
                    Some(&p.qkvb[at(3 * c)]),
                    m,
                    c,
                    3 * c,
                )?;
                let (keys_t, values) = (
                    &mut cache.keys_t[at(c * t_max)],
                    &mut cache.values[at(t_max * c)],
                );
                for (i, row) in qkv.chunks_exact(3 * c).enumerate() {
                    for (d, &key) in row[c..2 * c].iter().enumerate() {
                        keys_t[d * t_max + p0 + i] = key;
                    }
                    values[(p0 + i) * c..][..c].copy_from_slice(&row[2 * c..]);
                }
                let (keys_t, values, qkv) = (&*keys_t, &*values, &*qkv);
                let attention = CachedAttention {
                    qkv,
                    keys_t,
                    t_max,
                    values,
                    m,
                    len,
                    p0,
                    hs,
                    c,
                    scale,
                };
                if m == 1 && len * c >= PARALLEL_HEADS_WORK {
                    // One token: heads in parallel, each writing its own
                    // `hs` floats of the output row.
                    let scores = &mut cache.head_scores[..nh * len];
                    compute.threads.try_for_each_chunk2(
                        (atty, hs),
                        (scores, len),
                        |h, out, scores| {
                            let gemm = |alpha, a: MatRef, b: MatRef, c: MatMut| {
                                gemm_local(&k, alpha, a, b, 0.0, c)
                            };
                            attention.attend(&k, h, scores, MatMut::new(out, 1, hs)?, gemm)
                        },
                    )?;
                } else {
                    for h in 0..nh {
                        let scores = &mut cache.scores[..m * len];
                        let out = MatMut::strided(&mut atty[h * hs..], m, hs, c)?;
                        // Prompts: each product is large enough to split
                        // (and a short context's heads too small to).
                        let gemm = |alpha, a: MatRef, b: MatRef, c: MatMut| {
                            compute.gemm(alpha, a, b, 0.0, c)
                        };
                        attention.attend(&k, h, scores, out, gemm)?;
                    }
                }
                compute.matmul_forward(
                    proj,
                    atty,
                    &p.attprojw[at(c * c)],
                    Some(&p.attprojb[at(c)]),
                    m,
                    c,
                    c,
                )?;
                k.axpy(1.0, proj, x)?;
                compute.layer_norm_forward(
                    x,
                    &p.ln2w[at(c)],
                    &p.ln2b[at(c)],
                    LAYER_NORM_EPS,
                    ln,
                    mean,
                    rstd,
                )?;
                compute.matmul_forward(
                    fch,
                    ln,
                    &p.fcw[at(c * 4 * c)],
                    Some(&p.fcb[at(4 * c)]),
                    m,
                    c,
                    4 * c,
                )?;
                compute.gelu_forward(fch, fch_gelu)?;
                compute.matmul_forward(
                    proj,
                    fch_gelu,
                    &p.fcprojw[at(4 * c * c)],
                    Some(&p.fcprojb[at(c)]),
                    m,
                    4 * c,
                    c,
                )?;
                k.axpy(1.0, proj, x)?;
            }
            // Only the last position's logits are needed.
            let last = &x[(m - 1) * c..];
            let ln_last = &mut ln[..c];
            compute.layer_norm_forward(
                last,
                p.lnfw,
                p.lnfb,
                LAYER_NORM_EPS,
                ln_last,
                &mut mean[..1],
                &mut rstd[..1],
            )?;
            compute.lm_head_forward(&mut cache.logits, ln_last, p.wte, 1, c, v)?;
            cache.len = len;
            Ok(&cache.logits[..])
        })
    }
}

/// What attention over the cache needs for one layer: the new positions'
/// queries (`m` rows of `qkv`) and every cached key and value.
struct CachedAttention<'a> {
    qkv: &'a [f32],
    /// `[C, T]`: row `d` holds feature `d` of every position's key.
    keys_t: &'a [f32],
    t_max: usize,
    values: &'a [f32],
    m: usize,
    len: usize,
    p0: usize,
    hs: usize,
    c: usize,
    scale: f32,
}

impl CachedAttention<'_> {
    /// Causal attention of head `h` for the new positions into `out`
    /// (`m × hs`), with `scores` (`m · len` floats) as scratch; `gemm(alpha,
    /// a, b, c)` computes `c = alpha · a · b`.
    fn attend(
        &self,
        k: &Kernels,
        h: usize,
        scores: &mut [f32],
        out: MatMut,
        mut gemm: impl FnMut(f32, MatRef, MatRef, MatMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (m, len, hs, c) = (self.m, self.len, self.hs, self.c);
        let q = MatRef::strided(&self.qkv[h * hs..], m, hs, 3 * c)?;
        let keys_t = MatRef::strided(&self.keys_t[h * hs * self.t_max..], hs, len, self.t_max)?;
        let values = MatRef::strided(&self.values[h * hs..], len, hs, c)?;
        gemm(self.scale, q, keys_t, MatMut::new(scores, m, len)?)?;
        k.softmax_rows(scores, len, ValidLen::Causal { offset: self.p0 })?;
        gemm(1.0, MatRef::new(scores, m, len)?, values, out)
    }
}
