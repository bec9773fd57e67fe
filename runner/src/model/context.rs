//! The execution context the layers run in: the kernels, the threads, the
//! GEMM workspaces and the time spent per kind of layer. The layer maths
//! (`layers`, `attention`) take it as their first argument.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use kernels::{
    Bf16, Bf16Input, Bf16Output, Executor, KernelError, Kernels, MatMut, MatRef, PackedBf16,
    Sequential,
};

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

/// The element type matrix products read. Everything else (LayerNorm,
/// softmax, GELU, the loss, the gradient reduction, master weights, AdamW)
/// is always f32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// f32 operands, f32 sums.
    #[default]
    F32,
    /// Operands rounded to bf16, f32 sums (`Kernels::gemm_bf16`).
    Bf16,
}

impl Precision {
    /// `f32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// How matrix products are computed: the kernels and the precision.
#[derive(Debug, Clone, Copy)]
pub struct Multiplier {
    pub kernels: Kernels,
    pub precision: Precision,
}

impl Multiplier {
    /// Floats of workspace the largest of the products `shapes` (`(m, n,
    /// k)`: an `m × k` A times a `k × n` B) needs: what a context's (or a
    /// piece's) workspace grows to for them. (A B packed in bf16
    /// beforehand needs less than one the product packs.)
    pub fn workspace_floats(
        &self,
        shapes: impl IntoIterator<Item = (usize, usize, usize)>,
    ) -> usize {
        let k = self.kernels;
        let need = |(m, n, depth)| match self.precision {
            Precision::F32 => k.gemm_workspace_len(m, n, depth),
            Precision::Bf16 => k.gemm_bf16_workspace_len(m, n, depth),
        };
        shapes.into_iter().map(need).max().unwrap_or(0)
    }

    /// `C = alpha · op(A) · op(B) + beta · C` on this thread alone, with
    /// its own workspace: for products inside a parallel piece.
    pub fn gemm_in_piece<'a, 'b, 'c>(
        &self,
        alpha: f32,
        a: impl Into<LeftOperand<'a>>,
        b: impl Into<RightOperand<'b>>,
        beta: f32,
        c: impl Into<Output<'c>>,
    ) -> Result<(), Error> {
        PIECE_WORKSPACE.with(|ws| {
            let ws = &mut ws.borrow_mut();
            let scaled = Epilogue::Scaled { alpha, beta };
            gemm_in(ws, *self, &Sequential, a.into(), b.into(), scaled, c.into())
        })
    }
}

/// Kernels, threads, the GEMM workspace of products split over the threads
/// (grown on first use, then reused: no allocation per step), reduction
/// partials, and the time spent per kind of layer.
pub struct Context {
    pub kernels: Kernels,
    pub precision: Precision,
    pub threads: Threads,
    workspace: Vec<f32>,
    /// Per-piece partial sums of the LayerNorm and bias gradients.
    pub(super) partials: Vec<f32>,
    pub profile: Profile,
}

thread_local! {
    /// Each thread's GEMM workspace for products inside pieces the runner
    /// splits itself (attention per sequence and head, decoding's heads).
    static PIECE_WORKSPACE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The A of a product: a matrix of f32 (rounded while packing when the
/// precision is bf16), or of bf16 values (activations that only bf16
/// products read; only a bf16 product takes them).
#[derive(Clone, Copy)]
pub enum LeftOperand<'a> {
    F32(MatRef<'a>),
    Bf16(MatRef<'a, Bf16>),
}

impl<'a> From<MatRef<'a>> for LeftOperand<'a> {
    fn from(a: MatRef<'a>) -> LeftOperand<'a> {
        LeftOperand::F32(a)
    }
}

impl<'a> From<MatRef<'a, Bf16>> for LeftOperand<'a> {
    fn from(a: MatRef<'a, Bf16>) -> LeftOperand<'a> {
        LeftOperand::Bf16(a)
    }
}

impl LeftOperand<'_> {
    /// The same matrix used transposed.
    #[must_use]
    pub fn t(self) -> Self {
        match self {
            LeftOperand::F32(a) => LeftOperand::F32(a.t()),
            LeftOperand::Bf16(a) => LeftOperand::Bf16(a.t()),
        }
    }

    /// Rows of op(A).
    pub fn rows(&self) -> usize {
        match self {
            LeftOperand::F32(a) => a.rows(),
            LeftOperand::Bf16(a) => a.rows(),
        }
    }

    /// Columns of op(A) (the product's depth).
    pub fn cols(&self) -> usize {
        match self {
            LeftOperand::F32(a) => a.cols(),
            LeftOperand::Bf16(a) => a.cols(),
        }
    }
}

/// The B of a product: a matrix of f32 (rounded while packing when the
/// precision is bf16), of bf16 values (gradients that only bf16 products
/// read), or weights packed once into bf16 pairs (the last two: always a
/// bf16 product).
#[derive(Clone, Copy)]
pub enum RightOperand<'a> {
    Matrix(MatRef<'a>),
    Bf16(MatRef<'a, Bf16>),
    PackedBf16(PackedBf16<'a>),
}

impl<'a> From<MatRef<'a, Bf16>> for RightOperand<'a> {
    fn from(b: MatRef<'a, Bf16>) -> RightOperand<'a> {
        RightOperand::Bf16(b)
    }
}

impl<'a> From<MatRef<'a>> for RightOperand<'a> {
    fn from(b: MatRef<'a>) -> RightOperand<'a> {
        RightOperand::Matrix(b)
    }
}

impl<'a> From<PackedBf16<'a>> for RightOperand<'a> {
    fn from(b: PackedBf16<'a>) -> RightOperand<'a> {
        RightOperand::PackedBf16(b)
    }
}

/// The C of a product: f32, or bf16 (an activation the precision keeps in
/// bf16, `layers::stored_mut`; only a bf16 product writes it).
pub enum Output<'a> {
    F32(MatMut<'a>),
    Bf16(MatMut<'a, Bf16>),
}

impl Output<'_> {
    /// Rows and columns of C.
    fn shape(&self) -> (usize, usize) {
        match self {
            Output::F32(c) => (c.rows(), c.cols()),
            Output::Bf16(c) => (c.rows(), c.cols()),
        }
    }
}

impl<'a> From<MatMut<'a>> for Output<'a> {
    fn from(c: MatMut<'a>) -> Output<'a> {
        Output::F32(c)
    }
}

impl<'a> From<MatMut<'a, Bf16>> for Output<'a> {
    fn from(c: MatMut<'a, Bf16>) -> Output<'a> {
        Output::Bf16(c)
    }
}

/// What a product does with C: `C = alpha · A·B + beta · C`, or a linear
/// layer's `C = A·B + bias` (the bias added as C is stored, where the
/// kernels can).
#[derive(Clone, Copy)]
enum Epilogue<'a> {
    Scaled { alpha: f32, beta: f32 },
    Bias(&'a [f32]),
}

/// The one way the runner multiplies: `C = alpha · op(A) · op(B) + beta ·
/// C` (or a linear layer's bias, [`Epilogue`]) in the multiplier's
/// precision, split by `exec`, growing `workspace` to what the product
/// needs.
fn gemm_in<E: Executor>(
    workspace: &mut Vec<f32>,
    mm: Multiplier,
    exec: &E,
    a: LeftOperand,
    b: RightOperand,
    epilogue: Epilogue,
    c: Output,
) -> Result<(), Error> {
    let k = mm.kernels;
    let ((m, n), depth) = (c.shape(), a.cols());
    let need = match (b, mm.precision) {
        (RightOperand::PackedBf16(_), _) => k.gemm_bf16_packed_workspace_len(m, n, depth),
        (RightOperand::Matrix(_), Precision::F32) => k.gemm_workspace_len(m, n, depth),
        (RightOperand::Matrix(_) | RightOperand::Bf16(_), _) => {
            k.gemm_bf16_workspace_len(m, n, depth)
        }
    };
    if workspace.len() < need {
        // Replaced, not grown: its contents need not be kept, and the
        // memory check counts `need` alone, not the old buffer beside the
        // new one (nor a doubled capacity).
        drop(std::mem::take(workspace));
        *workspace = vec![0.0; need];
    }
    match (a, b, c, mm.precision) {
        (LeftOperand::F32(a), RightOperand::Matrix(b), Output::F32(c), Precision::F32) => {
            match epilogue {
                Epilogue::Scaled { alpha, beta } => {
                    k.gemm_with(exec, alpha, a, b, beta, c, workspace)?
                }
                Epilogue::Bias(bias) => k.gemm_bias_with(exec, a, b, bias, c, workspace)?,
            }
        }
        // Activations and gradients are stored in bf16 only in bf16
        // precision, and a step runs in one precision. (Weights packed in
        // bf16 make a bf16 product in either.)
        (LeftOperand::Bf16(_), RightOperand::Matrix(_), _, Precision::F32)
        | (_, RightOperand::Bf16(_), _, Precision::F32)
        | (_, RightOperand::Matrix(_), Output::Bf16(_), Precision::F32) => {
            return Err(
                KernelError::InvalidArgument("bf16 operands or output in an f32 product").into(),
            );
        }
        (LeftOperand::F32(a), b, c, _) => bf16_product(k, exec, (a, b, epilogue, c), workspace)?,
        (LeftOperand::Bf16(a), b, c, _) => bf16_product(k, exec, (a, b, epilogue, c), workspace)?,
    }
    Ok(())
}

/// [`bf16_into`] on either type of C.
fn bf16_product<E: Executor, A: Bf16Input>(
    k: Kernels,
    exec: &E,
    (a, b, epilogue, c): (MatRef<A>, RightOperand, Epilogue, Output),
    ws: &mut [f32],
) -> Result<(), KernelError> {
    match c {
        Output::F32(c) => bf16_into(k, exec, (a, b, epilogue, c), ws),
        Output::Bf16(c) => bf16_into(k, exec, (a, b, epilogue, c), ws),
    }
}

/// A product in bf16: B rounded (or, bf16 already, paired) while it is
/// packed, or packed once.
fn bf16_into<E: Executor, A: Bf16Input, C: Bf16Output>(
    k: Kernels,
    exec: &E,
    (a, b, epilogue, c): (MatRef<A>, RightOperand, Epilogue, MatMut<C>),
    ws: &mut [f32],
) -> Result<(), KernelError> {
    match (b, epilogue) {
        (RightOperand::PackedBf16(b), Epilogue::Scaled { alpha, beta }) => {
            k.gemm_bf16_packed_with(exec, alpha, a, b, beta, c, ws)
        }
        (RightOperand::PackedBf16(b), Epilogue::Bias(bias)) => {
            k.gemm_bf16_packed_bias_with(exec, a, b, bias, c, ws)
        }
        (RightOperand::Matrix(b), Epilogue::Scaled { alpha, beta }) => {
            k.gemm_bf16_with(exec, alpha, a, b, beta, c, ws)
        }
        (RightOperand::Matrix(b), Epilogue::Bias(bias)) => {
            k.gemm_bf16_bias_with(exec, a, b, bias, c, ws)
        }
        (RightOperand::Bf16(b), Epilogue::Scaled { alpha, beta }) => {
            k.gemm_bf16_with(exec, alpha, a, b, beta, c, ws)
        }
        (RightOperand::Bf16(b), Epilogue::Bias(bias)) => {
            k.gemm_bf16_bias_with(exec, a, b, bias, c, ws)
        }
    }
}

impl Context {
    /// A context on one thread.
    pub fn new(kernels: Kernels) -> Context {
        Context {
            kernels,
            precision: Precision::F32,
            threads: Threads::single(),
            workspace: Vec::new(),
            partials: Vec::new(),
            profile: Profile::default(),
        }
    }

    /// How this context multiplies.
    pub fn multiplier(&self) -> Multiplier {
        Multiplier {
            kernels: self.kernels,
            precision: self.precision,
        }
    }

    /// Runs `f` and adds its time to the profile's entry `slot`.
    pub fn timed<R>(
        &mut self,
        slot: fn(&mut Profile) -> &mut Duration,
        f: impl FnOnce(&mut Context) -> R,
    ) -> R {
        let start = Instant::now();
        let result = f(self);
        *slot(&mut self.profile) += start.elapsed();
        result
    }

    /// `C = alpha · op(A) · op(B) + beta · C`, split over the threads.
    pub fn gemm<'a, 'b, 'c>(
        &mut self,
        alpha: f32,
        a: impl Into<LeftOperand<'a>>,
        b: impl Into<RightOperand<'b>>,
        beta: f32,
        c: impl Into<Output<'c>>,
    ) -> Result<(), Error> {
        let (mm, a, b) = (self.multiplier(), a.into(), b.into());
        let scaled = Epilogue::Scaled { alpha, beta };
        gemm_in(
            &mut self.workspace,
            mm,
            &self.threads,
            a,
            b,
            scaled,
            c.into(),
        )
    }

    /// A linear layer's `C = op(A) · op(B) + bias` (`bias` in every row),
    /// split over the threads.
    pub fn gemm_bias<'a, 'b, 'c>(
        &mut self,
        a: impl Into<LeftOperand<'a>>,
        b: impl Into<RightOperand<'b>>,
        bias: &[f32],
        c: impl Into<Output<'c>>,
    ) -> Result<(), Error> {
        let (mm, a, b) = (self.multiplier(), a.into(), b.into());
        let bias = Epilogue::Bias(bias);
        gemm_in(&mut self.workspace, mm, &self.threads, a, b, bias, c.into())
    }
}
