//! PID 1: when git-sync is a container's first process, nobody reaps the
//! orphans its git (and hooks) leave. Like git-sync, it then re-runs itself
//! as a child and acts as init: it forwards every signal it can to that
//! child, reaps every process that dies, and exits with the child's code
//! (128 + N if a signal N killed it).

use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

/// Why the init shim failed (the process exits 127).
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    /// The child could not be started.
    #[error("can't start the child: {0}")]
    Spawn(#[source] std::io::Error),
    /// A system call failed.
    #[error("{0}")]
    Sys(#[from] nix::Error),
}

/// Whether this process is PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// The signals forwarded to the child: every one that can be caught, less
/// the child-status one init itself needs and the faults that only make
/// sense for the process that caused them.
fn forwarded() -> Vec<i32> {
    Signal::iterator()
        .filter(|s| {
            !matches!(
                s,
                Signal::SIGKILL
                    | Signal::SIGSTOP
                    | Signal::SIGCHLD
                    | Signal::SIGILL
                    | Signal::SIGFPE
                    | Signal::SIGSEGV
                    | Signal::SIGBUS
                    | Signal::SIGTRAP
                    | Signal::SIGABRT
                    | Signal::SIGSYS
            )
        })
        .map(|s| s as i32)
        .collect()
}

/// Re-runs this program with the same arguments as a child and acts as
/// init until it exits; returns the exit code to use.
pub fn rerun_as_child() -> Result<i32, ReapError> {
    // Handlers, not just a blocked mask: the kernel drops signals whose
    // action is the default before they reach a namespace's init, even
    // blocked ones. They are installed before the child starts, so none is
    // lost; the child gets default dispositions back from exec.
    let mut signals = signal_hook::iterator::Signals::new(forwarded()).map_err(ReapError::Spawn)?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let child = Command::new("/proc/self/exe")
        .args(args)
        .spawn()
        .map_err(ReapError::Spawn)?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    std::thread::Builder::new()
        .name("pid1-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if let Ok(sig) = Signal::try_from(sig) {
                    let _ = kill(pid, sig);
                }
            }
        })
        .map_err(ReapError::Spawn)?;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(code),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return Ok(128 + sig as i32),
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
