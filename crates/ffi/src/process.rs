//! Signals to child processes: `corenet launch` forwards a first Ctrl-C as SIGTERM to its ranks
//! so each one checkpoints and exits, and a second one as SIGKILL (std's `Child::kill` needs
//! the child mutably and can only send SIGKILL).

use std::process::Child;

/// Which signal to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: checkpoint and stop.
    Terminate,
    /// SIGKILL.
    Kill,
}

/// Sends `signal` to `child`, which must not have been waited for yet (its pid would no longer
/// be ours). A child that already exited is not an error: there is nothing left to tell.
pub fn send_signal(child: &Child, signal: Signal) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    let sig = match signal {
        Signal::Terminate => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill(2) takes plain integers; the pid is a child we spawned and have not reaped,
    // so it cannot name an unrelated process.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Restores the default action of SIGPIPE (terminate quietly), which the Rust runtime sets to
/// "ignore" at start-up. A report command whose reader went away (`corenet plan … | head`)
/// then ends the way `cat` does, instead of panicking in `println!` on EPIPE. Not for
/// processes holding sockets to peers (training ranks): there a dead peer must be an error,
/// not a silent death.
pub fn default_sigpipe() {
    // SAFETY: signal(2) with a standard signal number and the default disposition; called from
    // `main` before any other thread exists, so nothing races with the change.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
