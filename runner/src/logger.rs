//! A minimal env_logger-style logger: messages to stderr, `info` and above
//! by default, `-q` for warnings and errors only, `RUST_LOG=debug` (etc.)
//! to change the level.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = match record.level() {
            Level::Info => writeln!(err, "{}", record.args()),
            level => writeln!(err, "[{}] {}", level.as_str().to_lowercase(), record.args()),
        };
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger (once; later calls only change the level).
pub fn init(quiet: bool) {
    let level = match std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
    {
        Some(level) => level,
        None if quiet => LevelFilter::Warn,
        None => LevelFilter::Info,
    };
    let _ = log::set_logger(&StderrLogger);
    log::set_max_level(level);
}
