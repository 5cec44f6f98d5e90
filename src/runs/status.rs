//! `status.json` and `control.json`.

use serde::{Deserialize, Serialize};

/// What a run is doing, as its trainer last wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
    Finished,
    Diverged,
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Stopped => "stopped",
            RunState::Finished => "finished",
            RunState::Diverged => "diverged",
            RunState::Failed => "failed",
        }
    }
}

/// Contents of `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub state: RunState,
    /// Unix seconds of the trainer's last sign of life.
    pub heartbeat: f64,
    pub started: f64,
    pub step: u64,
    pub total_steps: u64,
    pub model: String,
    #[serde(default)]
    pub last_checkpoint: Option<String>,
    #[serde(default)]
    pub best_checkpoint: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// A heartbeat older than this (seconds) while `running` means the trainer is gone.
pub const HEARTBEAT_STALE_S: f64 = 60.0;

impl Status {
    /// The status of a trainer (this process) starting a session on `run` at `step`.
    pub fn starting(
        run: &super::RunDir,
        total_steps: u64,
        model: &str,
        step: u64,
        best_step: Option<u64>,
    ) -> Self {
        let now = super::unix_now();
        Self {
            pid: std::process::id(),
            state: RunState::Running,
            heartbeat: now,
            started: now,
            step,
            total_steps,
            model: model.into(),
            last_checkpoint: run
                .latest_checkpoint()
                .and_then(|(_, p)| Some(p.file_name()?.to_string_lossy().into())),
            best_checkpoint: best_step.map(|s| format!("step-{s}")),
            message: None,
        }
    }

    /// The state a viewer should show: a `running` status whose process is gone, or whose
    /// heartbeat is stale, is reported as `failed` ("lost").
    pub fn effective_state(&self, now: f64) -> (RunState, bool) {
        if self.state == RunState::Running
            && (!super::os::pid_alive(self.pid) || now - self.heartbeat > HEARTBEAT_STALE_S)
        {
            (RunState::Failed, true)
        } else {
            (self.state, false)
        }
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A request to a running trainer, written to `control.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Control {
    /// Save a checkpoint and stop (state `stopped`).
    Stop,
    /// Save a checkpoint now and go on.
    Checkpoint,
}
