//! Named views into flat arenas. Parameters, their gradients, activations
//! and backward scratch each live in one buffer; a struct with one field per
//! tensor holds either the sizes (`T = usize`) or the slices.

use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};

use crate::config::ModelConfig;

/// One 64-byte cache line of floats, the storage unit of an [`Arena`].
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A float buffer that starts on a cache line. Rows of the weights are
/// whole lines long, so full-width AVX-512 loads of a row never straddle
/// two lines (a `Vec<f32>` of this size starts 16 bytes into one, which
/// made decoding on AVX-512 slower than on AVX2).
#[derive(Clone)]
pub struct Arena {
    lines: Vec<Line>,
    len: usize,
}

impl Arena {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Arena {
        Arena {
            lines: vec![Line::zeroed(); len.div_ceil(16)],
            len,
        }
    }

    /// Makes the buffer at least `len` long (never shorter); new floats
    /// are zeros.
    pub fn grow(&mut self, len: usize) {
        if len > self.len {
            self.lines.resize(len.div_ceil(16), Line::zeroed());
            self.len = len;
        }
    }
}

impl Deref for Arena {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }
}

impl DerefMut for Arena {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

impl PartialEq for Arena {
    fn eq(&self, other: &Arena) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arena({} floats)", self.len)
    }
}

/// Declares a struct of named tensors with `split` / `split_mut`, which cut
/// an arena into the tensors in field order.
macro_rules! named_tensors {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name<T> {
            $($(#[$fdoc])* pub $field: T,)*
        }

        impl $name<usize> {
            /// Floats in all tensors together.
            pub fn total(&self) -> usize {
                0 $(+ self.$field)*
            }

            /// Cuts `arena` (of [`Self::total`] floats) into the tensors.
            pub fn split<'a>(&self, arena: &'a [f32]) -> $name<&'a [f32]> {
                let mut rest = arena;
                $(let ($field, tail) = rest.split_at(self.$field); rest = tail;)*
                let _ = rest;
                $name { $($field,)* }
            }

            /// Cuts `arena` (of [`Self::total`] floats) into mutable tensors.
            pub fn split_mut<'a>(&self, arena: &'a mut [f32]) -> $name<&'a mut [f32]> {
                let mut rest = arena;
                $(let ($field, tail) = rest.split_at_mut(self.$field); rest = tail;)*
                let _ = rest;
                $name { $($field,)* }
            }
        }
    };
}

named_tensors! {
    /// The 16 parameter tensors; per-layer tensors are stacked over layers.
    /// Weight matrices are stored `[in, out]` (Hugging Face's Conv1D layout),
    /// so a layer computes `x · W`.
    Params {
        /// Token embedding, `[V, C]`; also the (tied) output projection.
        wte,
        /// Position embedding, `[T, C]`.
        wpe,
        /// `[L, C]`
        ln1w,
        /// `[L, C]`
        ln1b,
        /// `[L, C, 3C]`
        qkvw,
        /// `[L, 3C]`
        qkvb,
        /// `[L, C, C]`
        attprojw,
        /// `[L, C]`
        attprojb,
        /// `[L, C]`
        ln2w,
        /// `[L, C]`
        ln2b,
        /// `[L, C, 4C]`
        fcw,
        /// `[L, 4C]`
        fcb,
        /// `[L, 4C, C]`
        fcprojw,
        /// `[L, C]`
        fcprojb,
        /// `[C]`
        lnfw,
        /// `[C]`
        lnfb,
    }
}

impl Params<usize> {
    /// Tensor sizes for `cfg`.
    pub fn sizes(cfg: &ModelConfig) -> Params<usize> {
        let (v, t, l, c) = (cfg.vocab_size, cfg.block_size, cfg.layers, cfg.channels);
        Params {
            wte: v * c,
            wpe: t * c,
            ln1w: l * c,
            ln1b: l * c,
            qkvw: l * c * 3 * c,
            qkvb: l * 3 * c,
            attprojw: l * c * c,
            attprojb: l * c,
            ln2w: l * c,
            ln2b: l * c,
            fcw: l * c * 4 * c,
            fcb: l * 4 * c,
            fcprojw: l * 4 * c * c,
            fcprojb: l * c,
            lnfw: c,
            lnfb: c,
        }
    }
}

impl<T> Params<T> {
    /// The tensors in field order with their names, so that code which treats
    /// every tensor alike (optimizer, checkpoints) needs no list of its own.
    pub fn into_named(self) -> [(&'static str, T); 16] {
        [
            ("wte", self.wte),
            ("wpe", self.wpe),
            ("ln1w", self.ln1w),
            ("ln1b", self.ln1b),
            ("qkvw", self.qkvw),
            ("qkvb", self.qkvb),
            ("attprojw", self.attprojw),
            ("attprojb", self.attprojb),
            ("ln2w", self.ln2w),
            ("ln2b", self.ln2b),
            ("fcw", self.fcw),
            ("fcb", self.fcb),
            ("fcprojw", self.fcprojw),
            ("fcprojb", self.fcprojb),
            ("lnfw", self.lnfw),
            ("lnfb", self.lnfb),
        ]
    }
}

/// Whether the named parameter tensor gets weight decay: matrices and
/// embeddings do, biases and LayerNorm parameters do not.
pub fn decays(name: &str) -> bool {
    matches!(
        name,
        "wte" | "wpe" | "qkvw" | "attprojw" | "fcw" | "fcprojw"
    )
}

named_tensors! {
    /// What the forward pass keeps for the backward pass, for a batch of
    /// `B` sequences of `T` tokens (per-layer tensors stacked over layers).
    Activations {
        /// `[B, T, C]` token + position embeddings.
        encoded,
        /// `[L, B, T, C]`
        ln1,
        /// `[L, B, T]`
        ln1_mean,
        /// `[L, B, T]`
        ln1_rstd,
        /// `[L, B, T, 3C]`
        qkv,
        /// `[L, B, T, C]` attention output, heads side by side.
        atty,
        /// `[L, B, NH, T, T]` attention probabilities.
        att,
        /// `[L, B, T, C]`
        attproj,
        /// `[L, B, T, C]` residual after attention.
        residual2,
        /// `[L, B, T, C]`
        ln2,
        /// `[L, B, T]`
        ln2_mean,
        /// `[L, B, T]`
        ln2_rstd,
        /// `[L, B, T, 4C]`
        fch,
        /// `[L, B, T, 4C]`
        fch_gelu,
        /// `[L, B, T, C]`
        fcproj,
        /// `[L, B, T, C]` residual after the MLP: the block's output.
        residual3,
        /// `[B, T, C]`
        lnf,
        /// `[B, T]`
        lnf_mean,
        /// `[B, T]`
        lnf_rstd,
        /// `[B, T, V]`
        logits,
        /// `[B, T]` per-token cross-entropy.
        losses,
    }
}

impl Activations<usize> {
    /// Tensor sizes for `cfg` and a batch of `b × t` tokens.
    pub fn sizes(cfg: &ModelConfig, b: usize, t: usize) -> Activations<usize> {
        let (l, c, nh, v) = (cfg.layers, cfg.channels, cfg.heads, cfg.vocab_size);
        let bt = b * t;
        Activations {
            encoded: bt * c,
            ln1: l * bt * c,
            ln1_mean: l * bt,
            ln1_rstd: l * bt,
            qkv: l * bt * 3 * c,
            atty: l * bt * c,
            att: l * b * nh * t * t,
            attproj: l * bt * c,
            residual2: l * bt * c,
            ln2: l * bt * c,
            ln2_mean: l * bt,
            ln2_rstd: l * bt,
            fch: l * bt * 4 * c,
            fch_gelu: l * bt * 4 * c,
            fcproj: l * bt * c,
            residual3: l * bt * c,
            lnf: bt * c,
            lnf_mean: bt,
            lnf_rstd: bt,
            logits: bt * v,
            losses: bt,
        }
    }
}

named_tensors! {
    /// Buffers reused layer after layer: gradients of activations in the
    /// backward pass, and attention's per-head blocks in both passes.
    Scratch {
        /// `[B, T, V]` gradient of the logits (written by the loss).
        dlogits,
        /// `[B, T, C]` gradient of the residual stream.
        dresidual,
        /// `[B, T, C]` gradient of a LayerNorm output.
        dln,
        /// `[B, T, 3C]`
        dqkv,
        /// `[B, T, C]`
        datty,
        /// `[B, NH, T, T]` attention gradients, per sequence and head.
        datt,
        /// `[B, NH, 3, T, HS]` one head's share of the attention output
        /// (forward: `[T, HS]`) or of `dqkv` (backward: dq, dk, dv), per
        /// sequence and head, before it is interleaved into rows.
        per_head,
        /// `[B, T, 4C]`
        dfch,
        /// `[B, T, 4C]`
        dfch_gelu,
    }
}

impl Scratch<usize> {
    /// Tensor sizes for `cfg` and a batch of `b × t` tokens.
    pub fn sizes(cfg: &ModelConfig, b: usize, t: usize) -> Scratch<usize> {
        let (c, v, nh) = (cfg.channels, cfg.vocab_size, cfg.heads);
        let bt = b * t;
        Scratch {
            dlogits: bt * v,
            dresidual: bt * c,
            dln: bt * c,
            dqkv: bt * 3 * c,
            datty: bt * c,
            datt: b * nh * t * t,
            per_head: bt * 3 * c,
            dfch: bt * 4 * c,
            dfch_gelu: bt * 4 * c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Arena;

    #[test]
    fn an_arena_starts_on_a_cache_line_and_keeps_its_floats_when_grown() {
        for len in [0, 1, 15, 16, 17, 1000] {
            let data: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let mut arena = Arena::zeros(len);
            arena.copy_from_slice(&data);
            assert_eq!(arena.as_ptr() as usize % 64, 0);
            assert_eq!(&arena[..], &data[..]);
            arena.grow(len + 5);
            assert_eq!(arena.len(), len + 5);
            assert_eq!(&arena[..len], &data[..]);
            assert!(arena[len..].iter().all(|&x| x == 0.0));
            arena.grow(1);
            assert_eq!(arena.len(), len + 5, "an arena never shrinks");
        }
    }
}
