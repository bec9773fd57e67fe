//! Ctrl-C (SIGINT) and SIGTERM as a request to stop, for work that must
//! keep or undo what it made before it ends (`train`'s steps, `prepare`'s
//! unfinished shards) rather than die half-way. A second signal ends the
//! process at once. Once caught, a signal stays caught for the life of the
//! process.

use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};

/// The signal caught, or 0.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// What the first signal prints at once (a leaked line, or null), so
/// that a user who waits for the work to stop knows it will.
static NOTICE: AtomicPtr<&'static str> = AtomicPtr::new(std::ptr::null_mut());

/// From now on, the first SIGINT or SIGTERM sets [`requested`] and prints
/// `[warn] {notice}` (unless warnings are off) instead of ending the
/// process. A signal the process was started ignoring (a background job
/// of a script, for SIGINT) stays ignored.
pub fn catch(notice: &'static str) {
    if log::max_level() >= log::LevelFilter::Warn {
        // Leaked: the handler may run at any time after.
        let line: &'static str = format!("\n[warn] {notice}\n").leak();
        NOTICE.store(Box::leak(Box::new(line)), Ordering::Release);
    }
    #[cfg(unix)]
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed `sigaction` is a valid value to be overwritten,
        // and a null new action only reads the current one.
        let ignored = unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
        };
        if !ignored {
            let handler: extern "C" fn(libc::c_int) = on_signal;
            // SAFETY: `on_signal` only touches an atomic and calls
            // `_exit`, both async-signal-safe.
            unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        }
    }
}

/// Whether a signal caught since [`catch`] asked the process to stop.
pub fn requested() -> bool {
    CAUGHT.load(Ordering::Relaxed) != 0
}

/// Ends the process as the caught signal would have, if one was caught:
/// so that a shell running it in a loop stops too (it stops only for a
/// child that a signal ended). Called once the run has cleaned up and said
/// why it stopped.
pub fn end_if_caught() {
    let signal = CAUGHT.load(Ordering::Relaxed);
    if signal == 0 {
        return;
    }
    #[cfg(unix)]
    // SAFETY: restoring the default action and raising the signal touch
    // no memory of ours.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
    // Still here: the default action was not to end (the first process of
    // a container); the shell's code for a signal's end.
    std::process::exit(128 + signal);
}

#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    if CAUGHT.swap(signal, Ordering::Relaxed) != 0 {
        // SAFETY: `_exit` is async-signal-safe and ends the process at
        // once, as a second Ctrl-C is meant to.
        unsafe { libc::_exit(128 + signal) };
    }
    // SAFETY: a non-null `NOTICE` points to a leaked `&'static str`,
    // written before the pointer was released.
    if let Some(line) = unsafe { NOTICE.load(Ordering::Acquire).as_ref() } {
        // SAFETY: `write` is async-signal-safe and reads `line.len()`
        // bytes of a live string. A notice that cannot be written is not
        // worth acting on.
        unsafe { libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len()) };
    }
}
