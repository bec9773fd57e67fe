//! The execution context the layers run in: the kernels, the threads, the
//! GEMM workspaces and the time spent per kind of layer. The layer maths
//! (`layers`, `attention`) take it as their first argument.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use kernels::{Executor, Kernels, MatMut, MatRef, Sequential};

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

/// Kernels, threads, the GEMM workspace of products split over the threads
/// (grown on first use, then reused: no allocation per step), reduction
/// partials, and the time spent per kind of layer.
pub struct Context {
    pub kernels: Kernels,
    pub threads: Threads,
    workspace: Vec<f32>,
    /// Per-piece partial sums of the LayerNorm parameter gradients.
    pub(super) partials: Vec<f32>,
    pub profile: Profile,
}

thread_local! {
    /// Each thread's GEMM workspace for products inside pieces the runner
    /// splits itself (attention per sequence and head, decoding's heads).
    static PIECE_WORKSPACE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The one way the runner multiplies: `C = alpha · op(A) · op(B) + beta ·
/// C` split by `exec`, growing `workspace` to what the product needs.
#[allow(clippy::too_many_arguments)]
fn gemm_in<E: Executor>(
    workspace: &mut Vec<f32>,
    kernels: &Kernels,
    exec: &E,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: MatMut,
) -> Result<(), Error> {
    let need = kernels.gemm_workspace_len(a.rows(), b.cols(), a.cols());
    if workspace.len() < need {
        workspace.resize(need, 0.0);
    }
    Ok(kernels.gemm_with(exec, alpha, a, b, beta, c, workspace)?)
}

/// `C = alpha · op(A) · op(B) + beta · C` on this thread alone, with its
/// own workspace: for products inside a parallel piece.
pub fn gemm_in_piece(
    kernels: &Kernels,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: MatMut,
) -> Result<(), Error> {
    PIECE_WORKSPACE.with(|ws| {
        gemm_in(
            &mut ws.borrow_mut(),
            kernels,
            &Sequential,
            alpha,
            a,
            b,
            beta,
            c,
        )
    })
}

impl Context {
    /// A context on one thread.
    pub fn new(kernels: Kernels) -> Context {
        Context {
            kernels,
            threads: Threads::single(),
            workspace: Vec::new(),
            partials: Vec::new(),
            profile: Profile::default(),
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
    pub fn gemm(
        &mut self,
        alpha: f32,
        a: MatRef,
        b: MatRef,
        beta: f32,
        c: MatMut,
    ) -> Result<(), Error> {
        let Context {
            kernels,
            threads,
            workspace,
            ..
        } = self;
        gemm_in(workspace, kernels, threads, alpha, a, b, beta, c)
    }
}
