//! The default job's recipe and checks: the `demo` model trained on the
//! embedded corpus of two-digit sums for about a minute on two cores, then
//! shown what it learned: a free sample, checked line by line, and sums
//! held out of the corpus, asked one by one.

use std::ops::ControlFlow;

use log::info;

use crate::data::{corpus, Tokenizer};
use crate::error::Error;
use crate::generate::{generate, GenerationStats, Sampling};
use crate::logger::{keep_streaming, print_bytes, print_stdout};
use crate::model::{Gpt, Precision, Preset};
use crate::train::TrainSettings;

/// The demo's recipe (`runner train --preset demo --steps 2000 --batch 16
/// --lr 2e-3 --warmup 50` trains the same model).
pub fn recipe() -> TrainSettings {
    TrainSettings {
        config: Some(Preset::Demo.config(Tokenizer::Byte)),
        data: None,
        init_from: None,
        seq_len: None,
        recompute: false,
        steps: 2000,
        batch: 16,
        grad_accum: 1,
        lr: 2e-3,
        warmup: 50,
        seed: 1337,
        eval_every: 500,
        log_every: 100,
        save: None,
        overwrite: false,
        resume: None,
        stop_at: None,
        json: None,
        threads: None,
        plot: None,
        precision: Precision::F32,
        shard_optimizer: false,
        overlap: true,
        warnings: Vec::new(),
    }
}

/// Held-out sums asked after training.
const QUESTIONS: usize = 100;

/// A sample from the model just trained, and how much of it is
/// well-formed and correct.
pub fn sample_check(model: &mut Gpt) -> Result<(), Error> {
    let sampling = Sampling {
        temperature: 0.5,
        top_k: None,
        top_p: None,
    };
    print_stdout("Sample from the trained model (temperature 0.5):\n")?;
    let mut stdout_failure = None;
    let stats = sample(model, "\n", 200, &sampling, |token| {
        let text = Tokenizer::Byte.decode(&[token]).unwrap_or_default();
        keep_streaming(print_bytes(&text), &mut stdout_failure)
    })?;
    if let Some(e) = stdout_failure {
        return Err(Error::io("stdout", e));
    }
    print_stdout("\n")?;
    let text = String::from_utf8_lossy(&Tokenizer::Byte.decode(&stats.tokens)?).into_owned();
    // The first and last lines may be cut off.
    let lines: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
    let complete = &lines[..lines.len().saturating_sub(1)];
    let checks: Vec<Option<bool>> = complete.iter().map(|l| corpus::check_line(l)).collect();
    let well_formed = checks.iter().filter(|c| c.is_some()).count();
    let right = checks.iter().filter(|&&c| c == Some(true)).count();
    info!(
        "Sample check: {well_formed} of {} complete lines are well-formed `a+b=c`, {right} are correct sums",
        complete.len()
    );
    stats.log();
    Ok(())
}

/// Asks the model sums that were held out of its corpus (greedy) and
/// prints how many it answers right.
pub fn held_out_check(model: &mut Gpt) -> Result<(), Error> {
    let greedy = Sampling {
        temperature: 0.0,
        top_k: None,
        top_p: None,
    };
    let mut right = 0;
    let mut shown = String::new();
    let questions = corpus::held_out_questions(QUESTIONS);
    for (i, (question, answer)) in questions.iter().enumerate() {
        let stats = sample(model, &format!("\n{question}"), 4, &greedy, |_| {
            ControlFlow::Continue(())
        })?;
        let text = String::from_utf8_lossy(&Tokenizer::Byte.decode(&stats.tokens)?).into_owned();
        let given = text.split('\n').next().unwrap_or_default();
        let correct = given == answer;
        right += usize::from(correct);
        if i < 8 {
            let mark = if correct { "right" } else { "wrong" };
            shown.push_str(&format!("  {question}{given}  ({mark})\n"));
        }
    }
    print_stdout(&format!(
        "Sums held out of the training corpus, answered greedily (the first 8 of {QUESTIONS}):\n{shown}"
    ))?;
    info!(
        "Held-out check: {right} of {} sums the model never saw are answered correctly",
        questions.len()
    );
    Ok(())
}

/// Continues `prompt` by `max_new` tokens.
fn sample(
    model: &mut Gpt,
    prompt: &str,
    max_new: usize,
    sampling: &Sampling,
    emit: impl FnMut(u32) -> ControlFlow<()> + Send,
) -> Result<GenerationStats, Error> {
    let mut cache = model.new_cache();
    let prompt = Tokenizer::Byte.encode(prompt.as_bytes());
    generate(model, &mut cache, &prompt, max_new, sampling, 7, emit)
}
