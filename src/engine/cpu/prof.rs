//! Wall-clock time per stage of a training step: the time budget of the performance section.
//!
//! Off unless `SSMLAB_PROFILE=1`; then each [`span`] adds its elapsed time to a process-wide
//! table under its name, and `ssmlab bench` prints the table (time per step, per stage) with the
//! case. Spans nest: a stage's time includes the stages inside it. Products are recorded by
//! shape, with their FLOPs, so each shape's GFLOP/s is in the table too.
//! Off, a span costs one relaxed atomic load.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Set to `1` to time the stages of a step.
pub const PROFILE_ENV: &str = "SSMLAB_PROFILE";

static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<String, Stage>> = Mutex::new(BTreeMap::new());

/// One stage's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stage {
    pub seconds: f64,
    pub calls: u64,
    /// FLOPs of the products recorded under this name (0 for other stages).
    pub flops: f64,
}

/// Turns the profiler on if `SSMLAB_PROFILE=1` (called once at start-up).
pub fn init_from_env() {
    if std::env::var(PROFILE_ENV).is_ok_and(|v| v.trim() == "1") {
        set(true);
    }
}

/// Turns the profiler on or off.
pub fn set(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// Whether spans are recorded.
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Empties the table (before the timed steps).
pub fn reset() {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The table so far, by name.
pub fn take() -> BTreeMap<String, Stage> {
    std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Times the scope it lives in (until dropped) under `name`.
#[must_use = "a span times the scope that holds it"]
pub struct Span {
    start: Option<(Instant, &'static str)>,
}

/// A span named `name`; records nothing while the profiler is off.
pub fn span(name: &'static str) -> Span {
    Span {
        start: on().then(|| (Instant::now(), name)),
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some((t0, name)) = self.start {
            add(name.to_string(), t0.elapsed().as_secs_f64(), 0.0);
        }
    }
}

/// Records one product `m × n × k` that took `seconds`, with its FLOPs.
pub(crate) fn record_product(m: usize, n: usize, k: usize, seconds: f64) {
    add(
        format!("product {m}x{n}x{k}"),
        seconds,
        2.0 * (m * n * k) as f64,
    );
}

fn add(name: String, seconds: f64, flops: f64) {
    let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let s = t.entry(name).or_default();
    s.seconds += seconds;
    s.calls += 1;
    s.flops += flops;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_add_up_only_while_on() {
        set(false);
        reset();
        drop(span("off"));
        assert!(take().is_empty());
        set(true);
        for _ in 0..3 {
            let _s = span("stage");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        record_product(2, 3, 4, 0.0);
        set(false);
        let t = take();
        assert_eq!(t["stage"].calls, 3);
        assert!(t["stage"].seconds >= 0.006);
        assert_eq!(t["product 2x3x4"].flops, 48.0);
    }
}
