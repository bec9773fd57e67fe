//! Output to the terminal. A minimal env_logger-style logger: messages to
//! stderr, `info` and above by default, `-q` for warnings and errors only,
//! `RUST_LOG=warn` (etc.) to change the level. While a progress bar is
//! shown, each message is printed above it, so the two never garble each
//! other. Results go to stdout through [`print_stdout`].

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use kernels::{Bf16Unit, Kernels};
use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::error::Error;
use crate::model::Precision;

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = one_line(&record.args().to_string());
        // One write per line (stderr is unbuffered, and `writeln!` writes
        // its pieces one by one): a line from a signal handler or another
        // process of the run comes between two lines, not inside one.
        let line = match record.level() {
            Level::Info => format!("{message}\n"),
            level => format!("[{}] {message}\n", level.as_str().to_lowercase()),
        };
        let write = || {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        };
        match PROGRESS.lock().ok().as_deref() {
            Some(Some(bar)) => bar.suspend(write),
            _ => write(),
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// `text` with its control characters escaped (`\n` for a newline), so
/// that a message stays one line whatever a path or a prompt it quotes
/// holds.
pub fn one_line(text: &str) -> String {
    let mut line = String::with_capacity(text.len());
    for c in text.chars() {
        match c.is_control() {
            true => line.extend(c.escape_default()),
            false => line.push(c),
        }
    }
    line
}

/// The progress bar being shown, if any.
static PROGRESS: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A progress bar over `len`, counted as `counts` says (an indicatif
/// template: `{pos}/{len} steps`, `{bytes}/{total_bytes}`), shown only
/// when stderr is a terminal and info messages are on; `None` otherwise.
pub fn progress_bar(len: u64, counts: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() || log::max_level() < LevelFilter::Info {
        return None;
    }
    let bar = ProgressBar::new(len);
    let template = format!("{{bar:40}} {counts}, {{elapsed}} elapsed, ETA {{eta}}");
    let style = ProgressStyle::with_template(&template).expect("a valid template");
    bar.set_style(style);
    if let Ok(mut slot) = PROGRESS.lock() {
        *slot = Some(bar.clone());
    }
    Some(bar)
}

/// Removes the progress bar.
pub fn finish_progress() {
    if let Ok(mut slot) = PROGRESS.lock() {
        if let Some(bar) = slot.take() {
            bar.finish_and_clear();
        }
    }
}

/// Installs the logger (once; later calls only change the level).
pub fn init(quiet: bool) {
    // `-q` wins over RUST_LOG: a script that asks for quiet gets it. Of a
    // run's processes only rank 0 logs (warnings and errors come from all).
    let level = if quiet || crate::world::current().rank() != 0 {
        LevelFilter::Warn
    } else {
        std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| v.parse::<LevelFilter>().ok())
            .unwrap_or(LevelFilter::Info)
    };
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(level);
}

/// Writes `text` to stdout. A closed pipe (`runner ... | head`) is no
/// error, as the reader has what it wanted (`println!` would panic); any
/// other failure (a full disk) is, so that a run whose result was lost does
/// not exit as a success.
pub fn print_stdout(text: &str) -> Result<(), Error> {
    match print_bytes(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::io("stdout", e)),
        _ => Ok(()),
    }
}

/// Writes raw bytes (a generated token) to stdout and flushes them, so
/// that a stream of tokens can tell when stdout fails (see
/// [`keep_streaming`]).
pub fn print_bytes(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|_| out.flush())
}

/// Whether a stream of tokens goes on after writing one gave `written`:
/// it stops when the reader has left (`runner generate ... | head`), as a
/// finished run would, and keeps any other failure (a full disk) in
/// `failure` for the caller to report.
pub fn keep_streaming(
    written: std::io::Result<()>,
    failure: &mut Option<std::io::Error>,
) -> ControlFlow<()> {
    match written {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ControlFlow::Break(()),
        Err(e) => {
            *failure = Some(e);
            ControlFlow::Break(())
        }
    }
}

/// What the backend line says of the precision: nothing for f32; for
/// bf16, the unit (`RunOptions::start` warns of the portable path).
pub fn precision_note(precision: Precision, kernels: Kernels) -> &'static str {
    match (precision, kernels.bf16_unit()) {
        (Precision::F32, _) => "",
        (Precision::Bf16, Bf16Unit::Avx512Bf16) => " | Precision: bf16 on AVX512-BF16",
        (Precision::Bf16, Bf16Unit::Amx) => " | Precision: bf16 on AMX",
        (Precision::Bf16, Bf16Unit::Portable) => " | Precision: bf16 emulated",
    }
}
