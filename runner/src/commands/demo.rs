//! `runner` with no command: the first impression. Trains the default
//! model on the embedded arithmetic corpus, then shows what it learned.

use log::info;

use crate::data::{self, corpus, VOCAB_SIZE};
use crate::error::Error;
use crate::generate::{generate, Sampling};
use crate::logger::{self, print_bytes, print_stdout};
use crate::model::{Gpt, Preset};
use crate::train::{train, TrainSettings};

pub fn run() -> Result<(), Error> {
    logger::init(false);
    info!("No command given: training the default model on the embedded arithmetic corpus (see `runner --help`).");
    let settings = TrainSettings {
        config: Some(Preset::Small.config(VOCAB_SIZE)),
        data: None,
        steps: 200,
        batch: 8,
        grad_accum: 1,
        lr: 1e-3,
        warmup: 20,
        seed: 1337,
        eval_every: 50,
        log_every: 10,
        save: None,
        resume: None,
        stop_at: None,
        json: None,
        threads: None,
        plot: None,
    };
    let (mut model, _) = train(&settings, crate::cli::BackendChoice::Auto.kernels()?)?;
    sample_check(&mut model)
}

/// A sample from the model just trained, and how much of it is correct
/// arithmetic.
fn sample_check(model: &mut Gpt) -> Result<(), Error> {
    let prompt = data::encode(b"\n");
    let mut cache = model.new_cache();
    let sampling = Sampling {
        temperature: 0.5,
        top_k: None,
        top_p: None,
    };
    print_stdout("Sample from the trained model (temperature 0.5):\n");
    let stats = generate(model, &mut cache, &prompt, 200, &sampling, 7, |token| {
        print_bytes(&data::decode(&[token]))
    })?;
    print_stdout("\n");
    let text = String::from_utf8_lossy(&data::decode(&stats.tokens)).into_owned();
    let lines: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
    let complete = &lines[..lines.len().saturating_sub(1)];
    let right = complete
        .iter()
        .filter(|l| corpus::check_line(l) == Some(true))
        .count();
    let well_formed = complete
        .iter()
        .filter(|l| corpus::check_line(l).is_some())
        .count();
    info!(
        "Sample check: {well_formed} of {} complete lines are well-formed `a+b=c` / `a-b=c`, {right} are correct arithmetic",
        complete.len()
    );
    stats.log();
    Ok(())
}
