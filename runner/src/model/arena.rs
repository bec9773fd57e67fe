//! Cache-line-aligned float buffers, and the macros that cut one into
//! named tensors: a struct with one field per tensor holds either the
//! sizes (`T = usize`) or the slices.

use std::ops::{Deref, DerefMut};

use bytemuck::{Pod, Zeroable};

/// One 64-byte cache line of floats, the storage unit of an [`Arena`].
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A float buffer that starts on a cache line. Rows of the weights are
/// whole lines long, so full-width AVX-512 loads of a row never straddle
/// two lines (a `Vec<f32>` of this size starts 16 bytes into one, which
/// made decoding on AVX-512 slower than on AVX2).
#[derive(Clone, Default)]
pub struct Arena {
    lines: Vec<Line>,
    len: usize,
}

impl Arena {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Arena {
        let mut arena = Arena::default();
        arena.grow(len);
        arena
    }

    /// Makes the buffer at least `len` long (never shorter); new floats
    /// are zeros.
    pub fn grow(&mut self, len: usize) {
        if len > self.len {
            let lines = len.div_ceil(16);
            // Exactly: the memory check counts `len`, not a doubling.
            self.lines.reserve_exact(lines - self.lines.len());
            advise_huge_pages(&mut self.lines);
            self.lines.resize(lines, Line::zeroed());
            self.len = len;
        }
    }
}

/// Asks the kernel to back the untouched capacity of `lines` with 2 MiB
/// pages where it can (Linux grants them only on request unless set to
/// `always`). The weights, their gradients and the activations are read
/// in strides of a row, one 4 KiB page per row; on 2 MiB pages training
/// ran 3–5 % faster on one thread (Intel Xeon with AMX).
#[cfg(target_os = "linux")]
fn advise_huge_pages(lines: &mut Vec<Line>) {
    const HUGE: usize = 2 << 20;
    let spare = lines.spare_capacity_mut();
    let start = spare.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(spare);
    let first = start.next_multiple_of(HUGE);
    let last = end / HUGE * HUGE;
    if last > first {
        // SAFETY: the range lies inside this vector's allocation; the
        // advice changes only how the kernel backs the pages, not their
        // contents or mapping.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_lines: &mut Vec<Line>) {}

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

/// `a · b · ...`, saturating: sizes of absurd shapes become `usize::MAX`
/// (which every memory check refuses) instead of wrapping around.
pub fn floats(dims: &[usize]) -> usize {
    dims.iter().fold(1, |n: usize, &d| n.saturating_mul(d))
}

/// `$value`, once per identifier it is repeated over.
macro_rules! per_field {
    ($field:ident, $value:expr) => {
        $value
    };
}

/// Declares a struct of named tensors with `total`, `split` and
/// `split_mut` (which cut an arena into the tensors in field order) and
/// `into_array` (the tensors in that order).
macro_rules! named_tensors {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name<T> {
            $($(#[$fdoc])* pub $field: T,)*
        }

        impl $name<usize> {
            /// Floats in all tensors together (saturating).
            pub fn total(&self) -> usize {
                0usize $(.saturating_add(self.$field))*
            }

            /// Cuts `arena` (of [`Self::total`] floats) into the tensors.
            pub fn split<'a>(&self, arena: &'a [f32]) -> $name<&'a [f32]> {
                let rest = arena;
                $(let ($field, rest) = rest.split_at(self.$field);)*
                let _ = rest;
                $name { $($field,)* }
            }

            /// Where each tensor starts in the arena (`self` holds sizes).
            pub fn starts(&self) -> $name<usize> {
                let mut next = 0usize;
                let starts = $name { $($field: {
                    let start = next;
                    next = next.saturating_add(self.$field);
                    start
                },)* };
                let _ = next;
                starts
            }

            /// Cuts `arena` (of [`Self::total`] floats) into mutable tensors.
            pub fn split_mut<'a>(&self, arena: &'a mut [f32]) -> $name<&'a mut [f32]> {
                let rest = arena;
                $(let ($field, rest) = rest.split_at_mut(self.$field);)*
                let _ = rest;
                $name { $($field,)* }
            }
        }

        impl<T> $name<T> {
            /// How many tensors there are.
            pub const COUNT: usize = 0 $(+ per_field!($field, 1))*;

            /// The tensors in field (arena) order.
            pub fn into_array(self) -> [T; $name::<()>::COUNT] {
                [$(self.$field),*]
            }

            /// Each tensor through `f`.
            pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> $name<U> {
                $name { $($field: f(self.$field),)* }
            }

            /// The struct of `tensors` given in field (arena) order.
            pub fn from_array(tensors: [T; $name::<()>::COUNT]) -> $name<T> {
                let [$($field),*] = tensors;
                $name { $($field,)* }
            }
        }

        impl<'a> $name<&'a mut [f32]> {
            /// The same tensors, borrowed for a shorter time (to pass on
            /// and use again afterwards).
            pub fn reborrow(&mut self) -> $name<&mut [f32]> {
                $name { $($field: &mut *self.$field,)* }
            }
        }
    };
}

/// [`named_tensors!`] for a model's tensors, some of which are stacked
/// over the layers (`[L, ...]`, listed in `[per layer: ...]`): also
/// declares `$layer`, one layer's share of those, with `layer(l, layers)`
/// / `layer_mut(l, layers)` views.
macro_rules! layered_tensors {
    (
        $(#[$doc:meta])* $name:ident, $(#[$ldoc:meta])* $layer:ident {
            $($(#[$bdoc:meta])* $before:ident,)*
            [per layer: $($(#[$pdoc:meta])* $per_layer:ident,)*]
            $($(#[$adoc:meta])* $after:ident,)*
        }
    ) => {
        named_tensors! {
            $(#[$doc])* $name {
                $($(#[$bdoc])* $before,)*
                $($(#[$pdoc])* $per_layer,)*
                $($(#[$adoc])* $after,)*
            }
        }

        named_tensors! {
            $(#[$ldoc])* $layer { $($(#[$pdoc])* $per_layer,)* }
        }

        impl<T> $name<T> {
            /// The struct from its tensors before the stacked ones, the
            /// stacked ones, and those after, in field order.
            #[allow(clippy::too_many_arguments)]
            pub fn assemble($($before: T,)* stacked: $layer<T>, $($after: T,)*) -> $name<T> {
                $name {
                    $($before,)*
                    $($per_layer: stacked.$per_layer,)*
                    $($after,)*
                }
            }

            /// Whether each tensor, in field order, is stacked over layers.
            pub const PER_LAYER: [bool; $name::<()>::COUNT] = [
                $(per_field!($before, false),)*
                $(per_field!($per_layer, true),)*
                $(per_field!($after, false),)*
            ];
        }

        impl<'a> $name<&'a [f32]> {
            /// Layer `l` of `layers`' share of the stacked tensors.
            pub fn layer(&self, l: usize, layers: usize) -> $layer<&'a [f32]> {
                $layer {
                    $($per_layer: {
                        let n = self.$per_layer.len() / layers;
                        &self.$per_layer[l * n..(l + 1) * n]
                    },)*
                }
            }
        }

        impl $name<usize> {
            /// Where layer `l` of `layers`' share of each stacked tensor
            /// starts in the arena (`self` holds sizes).
            pub fn layer_starts(&self, l: usize, layers: usize) -> $layer<usize> {
                let starts = self.starts();
                $layer { $($per_layer: starts.$per_layer + l * (self.$per_layer / layers),)* }
            }
        }

        impl<'a> $name<&'a mut [f32]> {
            /// Every layer's share of the stacked tensors as a view of its
            /// own (which may outlive the others), from the last layer to
            /// the first as the backward pass visits them, and the rest
            /// with the stacked tensors left empty. Allocates nothing.
            pub fn split_layers_from_last(
                mut self,
                layers: usize,
            ) -> ($name<&'a mut [f32]>, impl Iterator<Item = $layer<&'a mut [f32]>>) {
                $(
                    let $per_layer = std::mem::take(&mut self.$per_layer);
                    let per_layer = ($per_layer.len() / layers.max(1)).max(1);
                    let mut $per_layer = $per_layer.chunks_exact_mut(per_layer);
                )*
                let stacked = std::iter::from_fn(move || {
                    Some($layer { $($per_layer: $per_layer.next_back()?,)* })
                });
                (self, stacked)
            }

            /// Layer `l` of `layers`' share of the stacked tensors, mutable.
            pub fn layer_mut(&mut self, l: usize, layers: usize) -> $layer<&mut [f32]> {
                $layer {
                    $($per_layer: {
                        let n = self.$per_layer.len() / layers;
                        &mut self.$per_layer[l * n..(l + 1) * n]
                    },)*
                }
            }
        }
    };
}

pub(crate) use {layered_tensors, named_tensors, per_field};

#[cfg(test)]
mod tests {
    use super::Arena;

    #[test]
    fn an_arena_starts_on_a_cache_line_and_keeps_its_floats_when_grown() {
        // The last spans huge pages (see `advise_huge_pages`).
        for len in [0, 1, 15, 16, 17, 1000, 3 << 20] {
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
