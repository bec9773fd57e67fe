//! The GEMM shapes the benchmarks time.

use kernels::MatRef;

/// One product: `op(A)` is m × k, `op(B)` k × n; stored operands are
/// row-major and contiguous.
#[derive(Clone, Copy)]
pub struct Shape {
    pub name: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

const fn nn(name: &'static str, m: usize, k: usize, n: usize) -> Shape {
    Shape {
        name,
        m,
        n,
        k,
        trans_a: false,
        trans_b: false,
    }
}

/// Square products and every product shape of a `shakes` training step
/// (B 8, T 256).
pub const SHAPES: [Shape; 14] = [
    nn("square_32", 32, 32, 32),
    nn("square_64", 64, 64, 64),
    nn("square_128", 128, 128, 128),
    nn("square_256", 256, 256, 256),
    nn("square_512", 512, 512, 512),
    nn("square_1024", 1024, 1024, 1024),
    nn("square_2048", 2048, 2048, 2048),
    nn("qkv_2048x384x1152", 2048, 384, 1152),
    nn("attn_proj_2048x384x384", 2048, 384, 384),
    nn("mlp_fc_2048x384x1536", 2048, 384, 1536),
    nn("mlp_proj_2048x1536x384", 2048, 1536, 384),
    nn("lm_head_2048x384x256", 2048, 384, 256),
    // Weight gradient: inpᵀ (384 × 2048) · dout (2048 × 1152).
    Shape {
        name: "grad_w_AtB_384x2048x1152",
        m: 384,
        n: 1152,
        k: 2048,
        trans_a: true,
        trans_b: false,
    },
    // Input gradient: dout (2048 × 1152) · Wᵀ, W stored 384 × 1152.
    Shape {
        name: "grad_x_ABt_2048x1152x384",
        m: 2048,
        n: 384,
        k: 1152,
        trans_a: false,
        trans_b: true,
    },
];

impl Shape {
    /// The operands as `op(A)`, `op(B)` views of their stored buffers.
    pub fn views<'a, T>(&self, a: &'a [T], b: &'a [T]) -> (MatRef<'a, T>, MatRef<'a, T>) {
        let ((ar, ac), (br, bc)) = self.stored();
        let a = MatRef::new(a, ar, ac).expect("a holds m · k elements");
        let b = MatRef::new(b, br, bc).expect("b holds k · n elements");
        (
            if self.trans_a { a.t() } else { a },
            if self.trans_b { b.t() } else { b },
        )
    }

    /// Floating-point operations of the product.
    pub fn flops(&self) -> u64 {
        2 * (self.m * self.n * self.k) as u64
    }
    /// Stored (rows, cols) of A and B.
    pub fn stored(&self) -> ((usize, usize), (usize, usize)) {
        let a = if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let b = if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        (a, b)
    }
    /// Element strides (row, column) of op(A) and op(B) in their buffers.
    pub fn strides(&self) -> ((usize, usize), (usize, usize)) {
        let a = if self.trans_a {
            (1, self.m)
        } else {
            (self.k, 1)
        };
        let b = if self.trans_b {
            (1, self.k)
        } else {
            (self.n, 1)
        };
        (a, b)
    }
}
