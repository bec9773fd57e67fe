//! Ctrl-C (SIGINT) and SIGTERM as a request to stop, for work that must
//! undo what it made before it ends (`prepare`'s unfinished shards) rather
//! than die half-way. Only the first signal is caught: a second one ends
//! the process as usual.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// From now on, the first SIGINT or SIGTERM sets [`requested`] instead of
/// ending the process.
pub fn catch() {
    #[cfg(unix)]
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: `on_signal` only stores to an atomic and calls
        // `signal`, both async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

/// Whether a signal caught since [`catch`] asked the process to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    REQUESTED.store(true, Ordering::Relaxed);
    // SAFETY: `signal` is async-signal-safe; the default action ends the
    // process at the next signal.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}
