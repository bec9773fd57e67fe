//! The weight matrices held in bf16 for decoding: packed once into the
//! pairs the bf16 products read, so a token reads 2 bytes per weight
//! instead of 4 (decoding is bound by reading the weights) and nothing is
//! converted or packed per token. The f32 parameters stay the master copy;
//! `Gpt` drops this copy whenever they may change.

use kernels::{Bf16Input, Kernels, MatRef, PackedBf16};

use super::arena::Arena;
use super::config::ModelConfig;
use super::layers::Weight;
use super::tensors::{Params, Shape};
use crate::error::Error;

/// Packs `b` into bf16 pairs at the start of `slots` (grown to fit;
/// `what` names the matrix in the error for one too large) and returns
/// them. An arena starts on a cache line, so every panel does: AMX tiles
/// load a panel row that straddles two lines at half the speed.
pub fn pack_into<'a, T: Bf16Input>(
    kernels: &Kernels,
    b: MatRef<T>,
    slots: &'a mut Arena,
    what: &str,
) -> Result<&'a [u32], Error> {
    let (k, n) = (b.rows(), b.cols());
    let len = PackedBf16::len(k, n)
        .ok_or_else(|| Error::Config(format!("a {k} × {n} {what} is too large to pack")))?;
    slots.grow(len);
    let packed = &mut bytemuck::cast_slice_mut(&mut slots[..])[..len];
    kernels.pack_bf16(b, packed)?;
    Ok(packed)
}

/// One `k × n` matrix packed into bf16 pairs.
pub struct PackedMatrix {
    slots: Arena,
    k: usize,
    n: usize,
}

impl PackedMatrix {
    /// `b` (`k × n` as used) packed.
    fn new(kernels: &Kernels, b: MatRef) -> Result<PackedMatrix, Error> {
        let mut slots = Arena::default();
        pack_into(kernels, b, &mut slots, "weight")?;
        Ok(PackedMatrix {
            slots,
            k: b.rows(),
            n: b.cols(),
        })
    }

    /// The matrix as a product's B.
    pub fn weight(&self) -> Result<Weight<'_>, Error> {
        Ok(Weight::Packed(PackedBf16::new(
            bytemuck::cast_slice(&self.slots[..]),
            self.k,
            self.n,
        )?))
    }
}

/// The weight a forward pass reads: the packed copy where one is held,
/// else the f32 master.
pub fn weight_of<'a>(
    master: &'a [f32],
    packed: Option<&'a PackedMatrix>,
) -> Result<Weight<'a>, Error> {
    match packed {
        Some(m) => m.weight(),
        None => Ok(Weight::F32(master)),
    }
}

/// One block's four weight matrices, packed.
pub struct PackedLayer {
    pub qkvw: PackedMatrix,
    pub attprojw: PackedMatrix,
    pub fcw: PackedMatrix,
    pub fcprojw: PackedMatrix,
}

/// Every weight matrix a decoding pass multiplies by, packed in bf16.
pub struct PackedWeights {
    pub layers: Vec<PackedLayer>,
    /// `wteᵀ`, `[C, Vp]`: the tied LM head as its product reads it.
    pub lm_head: PackedMatrix,
}

impl PackedWeights {
    /// The matrices of `p` (a model of shape `cfg`) packed.
    pub fn pack(kernels: &Kernels, p: &Params<&[f32]>, cfg: &ModelConfig) -> Result<Self, Error> {
        let shapes = Params::shapes(cfg);
        let view = |w, shape: Shape| {
            let (rows, cols) = shape.arena_dims();
            MatRef::new(w, rows, cols)
        };
        let matrix = |w, shape| PackedMatrix::new(kernels, view(w, shape)?);
        let layers = (0..cfg.layers)
            .map(|l| {
                let pl = p.layer(l, cfg.layers);
                Ok(PackedLayer {
                    qkvw: matrix(pl.qkvw, shapes.qkvw)?,
                    attprojw: matrix(pl.attprojw, shapes.attprojw)?,
                    fcw: matrix(pl.fcw, shapes.fcw)?,
                    fcprojw: matrix(pl.fcprojw, shapes.fcprojw)?,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // The LM head multiplies by the embedding's transpose (tied weights).
        let lm_head = PackedMatrix::new(kernels, view(p.wte, shapes.wte)?.t())?;
        Ok(PackedWeights { layers, lm_head })
    }

    /// 4-byte slots that [`PackedWeights::pack`] fills for a model of
    /// shape `cfg` (saturating): what the memory check counts before the
    /// model is loaded.
    pub fn slots(cfg: &ModelConfig) -> usize {
        let shapes = Params::shapes(cfg);
        // Arenas hold whole cache lines of 16 slots.
        let packed = |(k, n): (usize, usize)| {
            PackedBf16::len(k, n).map_or(usize::MAX, |len| len.saturating_add(15) / 16 * 16)
        };
        let layer = [shapes.qkvw, shapes.attprojw, shapes.fcw, shapes.fcprojw]
            .map(|shape| packed(shape.arena_dims()))
            .iter()
            .fold(0usize, |sum, &n| sum.saturating_add(n));
        let (rows, cols) = shapes.wte.arena_dims();
        layer
            .saturating_mul(cfg.layers)
            .saturating_add(packed((cols, rows)))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let matrices = self
            .layers
            .iter()
            .flat_map(|l| [&l.qkvw, &l.attprojw, &l.fcw, &l.fcprojw])
            .chain([&self.lm_head]);
        matrices.map(|m| 4 * m.slots.len()).sum()
    }
}
