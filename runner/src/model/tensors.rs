//! What the model's buffers hold. The parameters are one table,
//! [`PARAM_SPECS`]: per tensor, its Hugging Face name, shape,
//! initialisation and weight decay, which initialisation, the optimizer,
//! checkpoints and the memory report all read. Activations and backward
//! scratch are sized here for a batch; per-layer tensors are stacked over
//! the layers (`[L, ...]`) and viewed one layer at a time.

use super::arena::{floats, layered_tensors, named_tensors, per_field};
use super::config::ModelConfig;

layered_tensors! {
    /// The 16 parameter tensors in arena order. Weight matrices are stored
    /// `[in, out]` (Hugging Face's Conv1D layout), so a layer computes
    /// `x · W`.
    Params,
    /// One transformer block's parameters.
    LayerParams {
        /// Token embedding, `[V, C]`; also the (tied) output projection.
        wte,
        /// Position embedding, `[T, C]`.
        wpe,
        [per layer:
            /// `[C]` per layer
            ln1w,
            /// `[C]` per layer
            ln1b,
            /// `[C, 3C]` per layer
            qkvw,
            /// `[3C]` per layer
            qkvb,
            /// `[C, C]` per layer
            attprojw,
            /// `[C]` per layer
            attprojb,
            /// `[C]` per layer
            ln2w,
            /// `[C]` per layer
            ln2b,
            /// `[C, 4C]` per layer
            fcw,
            /// `[4C]` per layer
            fcb,
            /// `[4C, C]` per layer
            fcprojw,
            /// `[C]` per layer
            fcprojb,
        ]
        /// `[C]`
        lnfw,
        /// `[C]`
        lnfb,
    }
}

/// The shape of one parameter tensor (of one layer's, for a stacked one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Vector(usize),
    /// Rows, columns.
    Matrix(usize, usize),
    /// One row per token id: `rows × cols` in a checkpoint, padded with
    /// zero rows to `padded × cols` in the arena
    /// ([`ModelConfig::padded_vocab`]).
    PaddedRows {
        rows: usize,
        padded: usize,
        cols: usize,
    },
}

impl Shape {
    /// The dimensions, as a checkpoint stores them.
    pub fn dims(self) -> Vec<usize> {
        match self {
            Shape::Vector(n) => vec![n],
            Shape::Matrix(r, c)
            | Shape::PaddedRows {
                rows: r, cols: c, ..
            } => vec![r, c],
        }
    }

    /// Floats in the arena (saturating).
    pub fn floats(self) -> usize {
        match self {
            Shape::Vector(n) => n,
            Shape::Matrix(r, c) => floats(&[r, c]),
            Shape::PaddedRows { padded, cols, .. } => floats(&[padded, cols]),
        }
    }

    /// Rows and columns in the arena (a vector is one row).
    pub fn arena_dims(self) -> (usize, usize) {
        match self {
            Shape::Vector(n) => (1, n),
            Shape::Matrix(r, c) => (r, c),
            Shape::PaddedRows { padded, cols, .. } => (padded, cols),
        }
    }

    /// Floats in a checkpoint: the first of [`Shape::floats`] (saturating).
    pub fn saved_floats(self) -> usize {
        self.dims().iter().fold(1, |n, &d| n.saturating_mul(d))
    }
}

/// The standard deviation of GPT-2's normal initialisation (its
/// `initializer_range`).
pub const INIT_STD: f32 = 0.02;

/// How a parameter tensor starts (GPT-2's initialisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    Zeros,
    Ones,
    /// N(0, [`INIT_STD`]).
    Normal,
    /// N(0, [`INIT_STD`] / √(2L)): the projections that add into the residual
    /// stream, so that its variance does not grow with depth.
    ResidualNormal,
}

/// Everything said about one parameter tensor.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// Its name in Hugging Face's GPT-2, after `transformer.` (or after
    /// `transformer.h.{layer}.` for a per-layer tensor).
    pub hf_name: &'static str,
    /// Its shape (one layer's, for a per-layer tensor).
    pub shape: fn(&ModelConfig) -> Shape,
    pub init: Init,
    /// Whether AdamW decays it: matrices and embeddings do, biases and
    /// LayerNorm parameters do not.
    pub weight_decay: bool,
}

/// Shorthand for the table's rows.
const fn spec(
    hf_name: &'static str,
    shape: fn(&ModelConfig) -> Shape,
    init: Init,
    weight_decay: bool,
) -> ParamSpec {
    ParamSpec {
        hf_name,
        shape,
        init,
        weight_decay,
    }
}

/// The parameter table. Adding a tensor is one field of [`Params`] and one
/// row here (the compiler holds the two together).
pub const PARAM_SPECS: Params<ParamSpec> = {
    use Init::*;
    use Shape::{Matrix, PaddedRows, Vector};
    Params {
        wte: spec(
            "wte.weight",
            |c| PaddedRows {
                rows: c.vocab_size,
                padded: c.padded_vocab(),
                cols: c.channels,
            },
            Normal,
            true,
        ),
        wpe: spec(
            "wpe.weight",
            |c| Matrix(c.block_size, c.channels),
            Normal,
            true,
        ),
        ln1w: spec("ln_1.weight", |c| Vector(c.channels), Ones, false),
        ln1b: spec("ln_1.bias", |c| Vector(c.channels), Zeros, false),
        qkvw: spec(
            "attn.c_attn.weight",
            |c| Matrix(c.channels, c.channels.saturating_mul(3)),
            Normal,
            true,
        ),
        qkvb: spec(
            "attn.c_attn.bias",
            |c| Vector(c.channels.saturating_mul(3)),
            Zeros,
            false,
        ),
        attprojw: spec(
            "attn.c_proj.weight",
            |c| Matrix(c.channels, c.channels),
            ResidualNormal,
            true,
        ),
        attprojb: spec("attn.c_proj.bias", |c| Vector(c.channels), Zeros, false),
        ln2w: spec("ln_2.weight", |c| Vector(c.channels), Ones, false),
        ln2b: spec("ln_2.bias", |c| Vector(c.channels), Zeros, false),
        fcw: spec(
            "mlp.c_fc.weight",
            |c| Matrix(c.channels, c.channels.saturating_mul(4)),
            Normal,
            true,
        ),
        fcb: spec(
            "mlp.c_fc.bias",
            |c| Vector(c.channels.saturating_mul(4)),
            Zeros,
            false,
        ),
        fcprojw: spec(
            "mlp.c_proj.weight",
            |c| Matrix(c.channels.saturating_mul(4), c.channels),
            ResidualNormal,
            true,
        ),
        fcprojb: spec("mlp.c_proj.bias", |c| Vector(c.channels), Zeros, false),
        lnfw: spec("ln_f.weight", |c| Vector(c.channels), Ones, false),
        lnfb: spec("ln_f.bias", |c| Vector(c.channels), Zeros, false),
    }
};

/// One parameter tensor of a model: its spec, whether it is stacked over
/// the layers, and its shape there.
#[derive(Debug, Clone, Copy)]
pub struct ParamTensor {
    pub spec: ParamSpec,
    pub per_layer: bool,
    /// One layer's shape for a per-layer tensor, else the whole tensor's.
    pub shape: Shape,
    /// 1, or the layers for a per-layer tensor.
    pub copies: usize,
    /// Floats of the whole (stacked) tensor in the arena.
    pub len: usize,
}

impl ParamTensor {
    /// Every parameter tensor of `cfg`, in arena order.
    pub fn all(cfg: &ModelConfig) -> [ParamTensor; Params::<()>::COUNT] {
        let specs = PARAM_SPECS.into_array();
        std::array::from_fn(|i| {
            let (spec, per_layer) = (specs[i], Params::<()>::PER_LAYER[i]);
            let shape = (spec.shape)(cfg);
            let copies = if per_layer { cfg.layers } else { 1 };
            ParamTensor {
                spec,
                per_layer,
                shape,
                copies,
                len: floats(&[shape.floats(), copies]),
            }
        })
    }
}

impl ModelConfig {
    /// Floats of the parameter arena: every tensor of the table, the
    /// embedding padded (saturating, so an absurd shape gives
    /// `usize::MAX`).
    pub fn param_floats(&self) -> usize {
        Params::sizes(self).total()
    }

    /// Parameters of the model as a checkpoint holds them (the count
    /// Hugging Face reports): [`ModelConfig::param_floats`] without the
    /// embedding's padding.
    pub fn param_count(&self) -> usize {
        ParamTensor::all(self)
            .iter()
            .map(|t| t.shape.saved_floats().saturating_mul(t.copies))
            .fold(0, usize::saturating_add)
    }
}

impl Params<usize> {
    /// Tensor sizes for `cfg`.
    pub fn sizes(cfg: &ModelConfig) -> Params<usize> {
        Params::from_array(ParamTensor::all(cfg).map(|t| t.len))
    }
}

impl Params<Shape> {
    /// Tensor shapes for `cfg` (one layer's for a per-layer tensor).
    pub fn shapes(cfg: &ModelConfig) -> Params<Shape> {
        Params::from_array(ParamTensor::all(cfg).map(|t| t.shape))
    }
}

layered_tensors! {
    /// What the forward pass keeps for the backward pass, for a batch of
    /// `B` sequences of `T` tokens.
    Activations,
    /// One transformer block's activations (also a decoding pass's, for
    /// the positions it runs).
    BlockActivations {
        /// `[L + 1, B, T, C]` the residual stream: the embeddings, then
        /// each block's output.
        residuals,
        [per layer:
            /// `[B, T, C]` per layer
            ln1,
            /// `[B, T]` per layer
            ln1_mean,
            /// `[B, T]` per layer
            ln1_rstd,
            /// `[B, T, 3C]` per layer
            qkv,
            /// `[B, T, C]` per layer: attention output, heads side by side.
            atty,
            /// `[B, T, C]` per layer
            attproj,
            /// `[B, T, C]` per layer: the residual after attention.
            residual2,
            /// `[B, T, C]` per layer
            ln2,
            /// `[B, T]` per layer
            ln2_mean,
            /// `[B, T]` per layer
            ln2_rstd,
            /// `[B, T, 4C]` per layer
            fch,
            /// `[B, T, 4C]` per layer
            fch_gelu,
            /// `[B, T, C]` per layer
            fcproj,
        ]
        /// `[B, T, C]`
        lnf,
        /// `[B, T]`
        lnf_mean,
        /// `[B, T]`
        lnf_rstd,
        /// `[B, T, Vp]` (the padded vocabulary; padded columns are 0)
        logits,
        /// `[B, T]` per-token cross-entropy.
        losses,
    }
}

impl BlockActivations<usize> {
    /// One block's tensor sizes for `rows` positions.
    pub fn sizes(cfg: &ModelConfig, rows: usize) -> BlockActivations<usize> {
        let c = cfg.channels;
        let (rc, r) = (floats(&[rows, c]), rows);
        BlockActivations {
            ln1: rc,
            ln1_mean: r,
            ln1_rstd: r,
            qkv: floats(&[rc, 3]),
            atty: rc,
            attproj: rc,
            residual2: rc,
            ln2: rc,
            ln2_mean: r,
            ln2_rstd: r,
            fch: floats(&[rc, 4]),
            fch_gelu: floats(&[rc, 4]),
            fcproj: rc,
        }
    }
}

impl Activations<usize> {
    /// Tensor sizes for `cfg` and a batch of `b × t` tokens. With
    /// `recompute`, the tensors the backward pass recomputes (LayerNorm
    /// outputs, GELU output) are not kept per
    /// layer: they live in [`Scratch`], one layer's worth.
    pub fn sizes(cfg: &ModelConfig, b: usize, t: usize, recompute: bool) -> Activations<usize> {
        let (l, c) = (cfg.layers, cfg.channels);
        let bt = floats(&[b, t]);
        let mut block = BlockActivations::sizes(cfg, bt);
        if recompute {
            (block.ln1, block.ln2, block.fch_gelu) = (0, 0, 0);
        }
        Activations::assemble(
            floats(&[l.saturating_add(1), bt, c]), // residuals
            block.map(|n| floats(&[n, l])),        // every block's, stacked
            floats(&[bt, c]),                      // lnf
            bt,                                    // lnf_mean
            bt,                                    // lnf_rstd
            floats(&[bt, cfg.padded_vocab()]),     // logits
            bt,                                    // losses
        )
    }
}

named_tensors! {
    /// Buffers reused layer after layer: gradients of activations in the
    /// backward pass, and attention's per-head blocks in both passes.
    Scratch {
        /// `[B, T, Vp]` gradient of the logits (written by the loss; 0 in
        /// the padded columns).
        dlogits,
        /// `[B, T, C]` gradient of the residual stream.
        dresidual,
        /// `[B, T, C]` gradient of a LayerNorm output.
        dln,
        /// `[B, T, 3C]`
        dqkv,
        /// `[B, T, C]`
        datty,
        /// `[B, NH, 3, T, HS]` one head's share of the attention output
        /// (forward: `[T, HS]`) or of `dqkv` (backward: dq, dk, dv), per
        /// sequence and head, before it is interleaved into rows.
        per_head,
        /// `[B, T, 4C]`
        dfch,
        /// `[B, T, 4C]`
        dfch_gelu,
        /// With recompute (else empty): `[B, T, C]` one layer's ln1 output.
        recomputed_ln1,
        /// With recompute: `[B, T, C]` one layer's ln2 output.
        recomputed_ln2,
        /// With recompute: `[B, T]` the LayerNorm means recomputed (the
        /// same as the kept ones).
        recomputed_mean,
        /// With recompute: `[B, T]` the LayerNorm rstds recomputed.
        recomputed_rstd,
        /// With recompute: `[B, T, 4C]` one layer's GELU output.
        recomputed_fch_gelu,
    }
}

impl Scratch<usize> {
    /// Tensor sizes for `cfg` and a batch of `b × t` tokens, with the
    /// buffers of `recompute` (see [`Activations::sizes`]).
    pub fn sizes(cfg: &ModelConfig, b: usize, t: usize, recompute: bool) -> Scratch<usize> {
        let (c, v) = (cfg.channels, cfg.padded_vocab());
        let bt = floats(&[b, t]);
        let one_layer = |n: usize| if recompute { n } else { 0 };
        Scratch {
            recomputed_ln1: one_layer(floats(&[bt, c])),
            recomputed_ln2: one_layer(floats(&[bt, c])),
            recomputed_mean: one_layer(bt),
            recomputed_rstd: one_layer(bt),
            recomputed_fch_gelu: one_layer(floats(&[bt, 4, c])),
            dlogits: floats(&[bt, v]),
            dresidual: floats(&[bt, c]),
            dln: floats(&[bt, c]),
            dqkv: floats(&[bt, 3, c]),
            datty: floats(&[bt, c]),
            per_head: floats(&[bt, 3, c]),
            dfch: floats(&[bt, 4, c]),
            dfch_gelu: floats(&[bt, 4, c]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_covers_the_arena_in_order() {
        let cfg = ModelConfig {
            vocab_size: 11,
            tokenizer: None,
            block_size: 7,
            layers: 3,
            heads: 2,
            channels: 6,
        };
        let tensors = ParamTensor::all(&cfg);
        let total: usize = tensors.iter().map(|t| t.len).sum();
        assert_eq!(total, cfg.param_floats());
        // GPT-2's count, by hand: 12C² + 13C per block, (V + T)·C + 2C;
        // the arena pads the embedding's 11 rows to 128.
        let (c, l) = (6, 3);
        assert_eq!(
            cfg.param_count(),
            l * (12 * c * c + 13 * c) + (11 + 7) * c + 2 * c
        );
        assert_eq!(total, cfg.param_count() + (128 - 11) * c);
        assert_eq!(Params::sizes(&cfg).total(), total);
        let sizes = Params::sizes(&cfg).into_array();
        for (t, size) in tensors.iter().zip(sizes) {
            assert_eq!(t.len, size, "{}", t.spec.hf_name);
            let copies = if t.per_layer { cfg.layers } else { 1 };
            assert_eq!(t.shape.floats() * copies, size);
        }
        let stacked: Vec<&str> = tensors
            .iter()
            .filter(|t| t.per_layer)
            .map(|t| t.spec.hf_name)
            .collect();
        assert_eq!(stacked.len(), 12);
        assert!(stacked
            .iter()
            .all(|n| !n.starts_with("w") && !n.starts_with("ln_f")));
    }

    #[test]
    fn a_layer_view_is_that_layers_share_of_each_stacked_tensor() {
        let cfg = ModelConfig {
            vocab_size: 5,
            tokenizer: None,
            block_size: 4,
            layers: 3,
            heads: 1,
            channels: 2,
        };
        let sizes = Params::sizes(&cfg);
        let arena: Vec<f32> = (0..sizes.total()).map(|i| i as f32).collect();
        let p = sizes.split(&arena);
        let layer = p.layer(2, cfg.layers);
        assert_eq!(layer.ln1w, &p.ln1w[4..6]);
        assert_eq!(layer.qkvw, &p.qkvw[2 * 12..3 * 12]);
        assert_eq!(layer.fcprojb, &p.fcprojb[4..6]);
    }
}
