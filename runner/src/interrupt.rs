//! Ctrl-C (SIGINT) and SIGTERM as a request to stop, for work that must
//! keep or undo what it made before it ends (`train`'s steps, `prepare`'s
//! unfinished shards) rather than die half-way. While a [`Catching`]
//! lives, the first signal is a request and a second ends the process at
//! once (unless it follows the first within 0.2 s: the same request
//! sent twice); outside it a signal ends the process as usual. A request, once
//! made, stays for the life of the process.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};

/// The signal caught, or 0.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// When the first signal came, on the monotonic clock (ns).
#[cfg(unix)]
static CAUGHT_AT: AtomicU64 = AtomicU64::new(0);

/// A second signal this soon after the first is the same request sent
/// twice, not a person's second Ctrl-C: GNU `timeout` signals the process
/// and then its process group, microseconds apart (or more, on a busy
/// machine).
#[cfg(unix)]
const SAME_REQUEST_NS: u64 = 200_000_000;

/// What the first signal prints at once (a leaked line, or null), so
/// that a user who waits for the work to stop knows it will.
static NOTICE: AtomicPtr<&'static str> = AtomicPtr::new(std::ptr::null_mut());

/// The signals caught, with the actions they had before, which are put
/// back when this is dropped.
#[must_use = "signals are caught only while the value lives"]
pub struct Catching {
    #[cfg(unix)]
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

/// Until the value returned is dropped, the first SIGINT or SIGTERM sets
/// [`requested`] and prints `[warn] {notice}` (if given, and unless
/// warnings are off) instead of ending the process. A signal the process
/// was started ignoring (a background job of a script, for SIGINT) stays
/// ignored.
pub fn catch(notice: Option<&'static str>) -> Catching {
    let shown = notice.filter(|_| log::max_level() >= log::LevelFilter::Warn);
    let line = shown.map_or(std::ptr::null_mut(), |notice| {
        // On a terminal the line replaces the echoed `^C` (or a progress
        // bar, which redraws itself below).
        let start = if std::io::stderr().is_terminal() {
            "\r\x1b[2K"
        } else {
            ""
        };
        // Leaked: the handler may run at any time after.
        let line: &'static str = format!("{start}[warn] {notice}\n").leak();
        Box::leak(Box::new(line)) as *mut &'static str
    });
    NOTICE.store(line, Ordering::Release);
    #[cfg(unix)]
    let mut previous = Vec::new();
    #[cfg(unix)]
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed `sigaction` is plain data to be overwritten,
        // and a null new action only reads the current one.
        let current = unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            (libc::sigaction(signal, std::ptr::null(), &mut current) == 0).then_some(current)
        };
        let Some(current) = current.filter(|c| c.sa_sigaction != libc::SIG_IGN) else {
            continue;
        };
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: as above for the zeroed action, whose mask is then
        // emptied; `on_signal` calls only async-signal-safe functions.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut()) == 0
        };
        if installed {
            previous.push((signal, current));
        }
    }
    Catching {
        #[cfg(unix)]
        previous,
    }
}

impl Drop for Catching {
    fn drop(&mut self) {
        #[cfg(unix)]
        for (signal, action) in &self.previous {
            // SAFETY: puts back an action the OS gave for this signal.
            unsafe { libc::sigaction(*signal, action, std::ptr::null_mut()) };
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
    // What the run printed is out before the signal ends it.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    #[cfg(unix)]
    end_now(signal);
    #[cfg(not(unix))]
    std::process::exit(128 + signal);
}

#[cfg(unix)]
extern "C" fn on_signal(signal: libc::c_int) {
    let now = monotonic_ns();
    if CAUGHT.load(Ordering::Acquire) != 0 {
        let since = now.saturating_sub(CAUGHT_AT.load(Ordering::Relaxed));
        if now != 0 && since < SAME_REQUEST_NS {
            return;
        }
        end_now(signal);
    }
    // The notice before the request: the work may end on seeing it.
    // SAFETY: a non-null `NOTICE` points to a leaked `&'static str`,
    // written before the pointer was released.
    if let Some(line) = unsafe { NOTICE.load(Ordering::Acquire).as_ref() } {
        // `write` may set errno (a closed stderr), which the interrupted
        // code may be about to read.
        #[cfg(target_os = "linux")]
        // SAFETY: errno is this thread's, always addressable.
        let errno = unsafe { *libc::__errno_location() };
        // SAFETY: `write` is async-signal-safe and reads `line.len()`
        // bytes of a live string. A notice that cannot be written is not
        // worth acting on.
        unsafe { libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len()) };
        #[cfg(target_os = "linux")]
        // SAFETY: as above.
        unsafe {
            *libc::__errno_location() = errno
        };
    }
    CAUGHT_AT.store(now, Ordering::Relaxed);
    CAUGHT.store(signal, Ordering::Release);
}

/// The monotonic clock in nanoseconds (0 where it cannot be read: every
/// second signal then ends the process, as before).
#[cfg(unix)]
fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime is async-signal-safe and writes only the
    // zeroed `timespec` on this stack.
    let (read, time) = unsafe {
        let mut time: libc::timespec = std::mem::zeroed();
        let read = libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut time);
        (read, time)
    };
    match read {
        0 => (time.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(time.tv_nsec as u64),
        _ => 0,
    }
}

/// Ends the process by `signal`, as a shell expects of a process it
/// interrupted: from [`end_if_caught`], or from within the handler (the
/// second signal), so only async-signal-safe calls.
#[cfg(unix)]
fn end_now(signal: libc::c_int) -> ! {
    // SAFETY: `signal`, the signal-set functions, `pthread_sigmask`,
    // `raise` and `_exit` are async-signal-safe and touch only the set on
    // this stack. Within its handler the signal is blocked: unblocked, its
    // default action ends the process at `raise`.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
        // Still here: the default action was not to end (the first
        // process of a container).
        libc::_exit(128 + signal)
    }
}
