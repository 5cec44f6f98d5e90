//! The few operating-system calls that ssmlab makes outside the engine: whether a trainer's
//! process is alive, and the SIGHUP disposition that `nohup` leaves. Each `unsafe` block is one
//! libc call with its `SAFETY:` argument; the crate denies `unsafe_code` elsewhere.
#![allow(unsafe_code)]

/// Whether a process with this pid exists (Unix: `kill(pid, 0)`).
pub fn pid_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 sends nothing; it only checks for existence and permission.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Whether SIGHUP was ignored when the process started (as `nohup` leaves it).
pub fn sighup_ignored() -> bool {
    #[cfg(unix)]
    // SAFETY: sigaction with a null new action only reads the current disposition into `old`,
    // a zeroed (valid) sigaction struct that we own.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
    #[cfg(not(unix))]
    false
}

/// Ignores SIGHUP (again, after a handler was installed for it).
pub fn ignore_sighup() {
    #[cfg(unix)]
    // SAFETY: setting a standard signal to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Sets environment variables at process start-up (thread counts, the bench device), before
/// any other thread exists: the documented contract of every caller, which is what makes
/// `std::env::set_var` sound.
pub fn set_env_at_startup(vars: &[(&str, &str)]) {
    for (k, v) in vars {
        // SAFETY: callers run before the process starts a second thread (argument handling
        // in `cli`, or `single_threaded_ops` before the first candle op), so nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var(k, v) };
    }
}

/// Starts `cmd`'s child in a session of its own, detached from our terminal (a run launched
/// from the TUI survives the TUI and its SSH session).
pub fn detach_session(cmd: &mut std::process::Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls setsid,
        // which is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    #[cfg(not(unix))]
    let _ = cmd;
}

/// Sends signal `sig` (e.g. `libc::SIGTERM`) to process `pid`; whether it was delivered.
pub fn signal(pid: u32, sig: i32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
    }
    #[cfg(not(unix))]
    {
        let _ = (pid, sig);
        false
    }
}
