//! What every TUI worker thread shares: a name (`ssmlab-<what>`), and a guard that turns a panic
//! inside one job into that job's error, so the pane shows it and the worker goes on with the
//! next job. The panic hook keeps worker panics off the screen (the default hook would print
//! over the frame, and ratatui's would leave the alternate screen while the UI runs on): it
//! records them for the status line instead. A panic on the UI thread still restores the
//! terminal first.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::Mutex;

const PREFIX: &str = "ssmlab-";

/// Worker panics not yet shown in the status line.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// The last panic on this thread, as the hook described it (with its location).
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Starts a worker thread named `ssmlab-<what>`.
pub fn spawn(what: &str, f: impl FnOnce() + Send + 'static) {
    let b = std::thread::Builder::new().name(format!("{PREFIX}{what}"));
    // A thread that cannot start leaves its pane waiting; say so in the status line.
    if let Err(e) = b.spawn(f) {
        record(format!("cannot start the {what} worker: {e}"));
    }
}

fn record(msg: String) {
    if let Ok(mut p) = PANICS.lock()
        && p.len() < 16
    {
        p.push(msg);
    }
}

/// Worker panics since the last call (for the status line).
pub fn take_panics() -> Vec<String> {
    PANICS
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default()
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs one job of the `what` worker; a panic becomes `Err` naming the worker and the panic
/// (where the hook saw it), and the worker stays usable.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let detail = LAST
                .with(|l| l.borrow_mut().take())
                .unwrap_or_else(|| payload_text(p.as_ref()));
            Err(format!(
                "the {what} worker hit a bug ({detail}); it goes on with the next request"
            ))
        }
    }
}

fn describe(info: &PanicHookInfo<'_>) -> String {
    let loc = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    format!("panicked{loc}: {}", payload_text(info.payload()))
}

/// Installs the hook described in the module docs, around the current one (ratatui's).
pub fn install_panic_hook() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        match thread.name().and_then(|n| n.strip_prefix(PREFIX)) {
            Some(what) => {
                let d = describe(info);
                record(format!("{what} worker {d}"));
                LAST.with(|l| *l.borrow_mut() = Some(d));
            }
            None => prev(info),
        }
    }));
}
