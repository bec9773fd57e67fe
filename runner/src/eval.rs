//! Loss on a text, defined so that any implementation can reproduce it:
//! the mean next-token cross-entropy over consecutive non-overlapping
//! windows of `block_size + 1` tokens taken with stride `block_size` from
//! the start (a final partial window counts if it has at least 2 tokens);
//! each window predicts its tokens 1.. from 0...

use std::time::Instant;

use crate::error::Error;
use crate::metrics::{ms_since, peak_rss_bytes, EvalRecord, Record, RunShape};
use crate::model::Gpt;

/// The loss and where its time went.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy per predicted token (nats).
    pub loss: f64,
    /// Tokens predicted.
    pub tokens: usize,
    pub forward_ms: f64,
    pub cross_entropy_ms: f64,
}

impl Evaluation {
    /// `e^loss`.
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }

    /// The `Loss computation breakdown` log line, for windows of `seq_len`.
    pub fn log_breakdown(&self, seq_len: usize) {
        log::info!(
            "Loss computation breakdown - Forward: {:.3} ms | Cross-entropy: {:.3} ms | Total: {:.3} ms | Seq length: {seq_len}",
            self.forward_ms,
            self.cross_entropy_ms,
            self.total_ms()
        );
    }

    /// The `eval` record of a validation at `step`.
    pub fn record(&self, step: u32, shape: RunShape) -> Record {
        Record::Eval(EvalRecord {
            step,
            val_loss: self.loss,
            forward_ms: self.forward_ms,
            cross_entropy_ms: self.cross_entropy_ms,
            total_ms: self.total_ms(),
            tokens_per_sec: self.tokens as f64 / (self.total_ms() / 1e3),
            shape,
            peak_rss_bytes: peak_rss_bytes(),
        })
    }

    /// Time of the forward passes and the loss together.
    pub fn total_ms(&self) -> f64 {
        self.forward_ms + self.cross_entropy_ms
    }
}

/// Evaluates `model` on `tokens` in windows of `t + 1` tokens (`t` at most
/// the block size; the definition above takes the block size), `batch`
/// full windows at a time; with `max_windows`, only the first that many
/// windows (for quick validation during training).
pub fn evaluate(
    model: &mut Gpt,
    tokens: &[u32],
    t: usize,
    batch: usize,
    max_windows: Option<usize>,
) -> Result<Evaluation, Error> {
    let mut starts: Vec<usize> = (0..tokens.len().saturating_sub(1)).step_by(t).collect();
    if let Some(max) = max_windows {
        starts.truncate(max);
    }
    if starts.is_empty() {
        return Err(Error::Input("evaluation needs at least 2 tokens".into()));
    }
    let (full, partial): (Vec<usize>, Vec<usize>) =
        starts.into_iter().partition(|&s| s + t < tokens.len());
    let (mut total, mut count) = (0.0f64, 0usize);
    let (mut forward_ms, mut cross_entropy_ms) = (0.0, 0.0);
    let mut run = |model: &mut Gpt, windows: &[usize], len: usize| -> Result<(), Error> {
        let inputs: Vec<u32> = windows
            .iter()
            .flat_map(|&s| &tokens[s..s + len])
            .copied()
            .collect();
        let targets: Vec<u32> = windows
            .iter()
            .flat_map(|&s| &tokens[s + 1..s + 1 + len])
            .copied()
            .collect();
        let start = Instant::now();
        model.forward(&inputs, windows.len(), len)?;
        forward_ms += ms_since(start);
        let mid = Instant::now();
        let loss = model.loss(&targets, None)?;
        cross_entropy_ms += ms_since(mid);
        total += f64::from(loss) * (windows.len() * len) as f64;
        count += windows.len() * len;
        Ok(())
    };
    for group in full.chunks(batch.max(1)) {
        run(model, group, t)?;
    }
    if let Some(&s) = partial.first() {
        run(model, &[s], tokens.len() - 1 - s)?;
    }
    Ok(Evaluation {
        loss: total / count as f64,
        tokens: count,
        forward_ms,
        cross_entropy_ms,
    })
}
