//! One writer per run directory: a trainer holds an OS file lock on `run.lock` for its whole
//! lifetime (released by the OS when the process ends, `kill -9` included), and the file names
//! its pid. A second trainer is refused with that pid. Viewers test the lock for the truth about
//! "running": a `running` status whose lock is free belongs to a trainer that is gone.
//!
//! The lock is `flock` through `std::fs::File::try_lock` (a well-kept crate would only wrap the
//! same call). Viewers test it with a shared lock held for a moment, so a starting trainer
//! retries for a second before it gives up.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use super::{RunDir, RunError, RunState, Status, io_err};

/// The lock file of a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// The held lock of a run directory; dropping it releases the run.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// What the lock of a run says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// A trainer holds it (its pid, when the file names one).
    Held(Option<u32>),
    /// No trainer holds it.
    Free,
    /// No lock file: a run written before locks, or never trained.
    Absent,
}

fn read_pid(f: &mut File) -> Option<u32> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.take(32).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

impl RunDir {
    /// Takes the one-writer lock of this run for this process, or says who holds it.
    pub fn lock(&self) -> super::Result<RunLock> {
        let path = self.path.join(LOCK_FILE);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| super::nofollow_err(&path, e))?;
        let t0 = Instant::now();
        loop {
            match f.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if t0.elapsed() < Duration::from_secs(1) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(RunError::Locked {
                        path: self.path.clone(),
                        pid: read_pid(&mut f),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
        }
        let pid = format!("{}\n", std::process::id());
        f.set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| f.write_all(pid.as_bytes()))
            .map_err(io_err(&path))?;
        Ok(RunLock { _file: f })
    }

    /// Whether a trainer holds this run's lock now (a viewer's question; takes nothing).
    pub fn lock_state(&self) -> LockState {
        let path = self.path.join(LOCK_FILE);
        let Ok(mut f) = File::open(&path) else {
            return LockState::Absent;
        };
        match f.try_lock_shared() {
            Ok(()) => LockState::Free,
            Err(TryLockError::WouldBlock) => LockState::Held(read_pid(&mut f)),
            // a file system without locks: no answer here, the heartbeat decides
            Err(TryLockError::Error(_)) => LockState::Absent,
        }
    }

    /// The state a viewer shows for `status` of this run, and whether the run is lost: with a
    /// lock file, `running` holds exactly while a trainer holds the lock (a slow step or a long
    /// evaluation never reads as lost); without one, a `running` status whose process is gone
    /// or whose heartbeat is stale is lost.
    pub fn effective_state(&self, status: &Status, now: f64) -> (RunState, bool) {
        if status.state != RunState::Running {
            return (status.state, false);
        }
        match self.lock_state() {
            LockState::Held(_) => (RunState::Running, false),
            LockState::Free => (RunState::Failed, true),
            LockState::Absent => status.effective_state(now),
        }
    }
}
