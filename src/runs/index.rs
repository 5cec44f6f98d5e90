//! The runs under a folder, as viewers see them (`ssmlab runs`, the TUI's runs view).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::metrics::MetricsLog;
use super::{MetricsTail, RunDir, RunState, Status, unix_now};

/// What a viewer knows about one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: String,
    pub path: PathBuf,
    /// `status.json`, if readable.
    pub status: Option<Status>,
    /// The state to show: a `running` run whose process died or whose heartbeat is stale shows
    /// as `failed`, with `lost = true`.
    pub state: Option<RunState>,
    pub lost: bool,
    /// `config.toml` as text.
    #[serde(skip)]
    pub config_text: String,
    pub model: String,
    pub checkpoints: Vec<u64>,
    #[serde(skip)]
    pub metrics: MetricsLog,
    /// The head of a large metrics.jsonl is still being read (`metrics` holds its end).
    pub loading: bool,
    /// Lines of `metrics.jsonl` that did not parse.
    pub bad_lines: Vec<usize>,
    /// Seconds since the last heartbeat (or since the status was written).
    pub age_s: Option<f64>,
    /// The sweep the run belongs to (`NAME.sweep.toml` beside it), filled in by viewers that
    /// group runs by sweep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sweep: Option<String>,
}

impl RunSummary {
    /// A summary of `metrics` alone (no status, config or checkpoints): for benches and tests
    /// of the views.
    pub fn of_metrics(id: &str, path: PathBuf, model: &str, metrics: Vec<super::Metric>) -> Self {
        Self {
            id: id.into(),
            path,
            status: None,
            state: None,
            lost: false,
            config_text: String::new(),
            model: model.into(),
            checkpoints: vec![],
            metrics: metrics.into(),
            loading: false,
            bad_lines: vec![],
            age_s: None,
            sweep: None,
        }
    }

    pub fn step(&self) -> u64 {
        self.metrics
            .last()
            .map(|m| m.step)
            .or(self.status.as_ref().map(|s| s.step))
            .unwrap_or(0)
    }
    pub fn total_steps(&self) -> u64 {
        self.status.as_ref().map(|s| s.total_steps).unwrap_or(0)
    }
    pub fn last_loss(&self) -> Option<f64> {
        self.metrics.iter().rev().find_map(|m| m.loss)
    }
    pub fn last_eval(&self) -> Option<(f64, Option<f64>)> {
        self.metrics
            .iter()
            .rev()
            .find_map(|m| m.eval_loss.map(|l| (l, m.eval_acc)))
    }
    /// The latest eval accuracy (masked LM) or CAS (diffusion).
    pub fn acc_or_cas(&self) -> Option<f64> {
        self.metrics
            .iter()
            .rev()
            .find_map(|m| m.eval_acc.or(m.eval_cas))
    }
    pub fn tokens_per_s(&self) -> Option<f64> {
        self.metrics.iter().rev().find_map(|m| m.tokens_per_s)
    }
    pub fn state_label(&self) -> String {
        match (self.state, self.lost) {
            (Some(_), true) => "lost".into(),
            (Some(s), false) => s.as_str().into(),
            (None, _) => "unknown".into(),
        }
    }
}

/// Incremental scanner: keeps a metrics tail per run, so repeated scans read only new bytes.
#[derive(Default)]
pub struct RunsIndex {
    tails: HashMap<PathBuf, MetricsTail>,
    /// config.toml text by run, with the (length, mtime) it was read at.
    configs: HashMap<PathBuf, (u64, Option<std::time::SystemTime>, String)>,
}

impl RunsIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every run directory under `dir` (sorted by id). A missing folder gives no runs.
    pub fn scan(&mut self, dir: &Path) -> Vec<RunSummary> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(dir) else {
            return out;
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("config.toml").is_file())
            .collect();
        paths.sort();
        let now = unix_now();
        for path in paths {
            out.push(self.summary(path, now));
        }
        out
    }
}

impl RunsIndex {
    /// The summary of the run directory at `path` (which holds a config.toml), reading only
    /// what is new since the last call.
    pub fn summary(&mut self, path: PathBuf, now: f64) -> RunSummary {
        let run = RunDir { path: path.clone() };
        let status = run.read_status().ok();
        let (state, lost) = match &status {
            Some(s) => {
                let (st, lost) = run.effective_state(s, now);
                (Some(st), lost)
            }
            None => (None, false),
        };
        let config_text = self.config_text(&run);
        let tail = self
            .tails
            .entry(path.clone())
            .or_insert_with(|| MetricsTail::new(&run.metrics_path()));
        let _ = tail.poll();
        let model = status
            .as_ref()
            .map(|s| s.model.clone())
            .unwrap_or_else(|| "?".into());
        RunSummary {
            id: run.id(),
            checkpoints: run.checkpoints().into_iter().map(|c| c.0).collect(),
            metrics: tail.records.clone(),
            loading: tail.loading(),
            bad_lines: tail.bad_lines.clone(),
            age_s: status.as_ref().map(|s| (now - s.heartbeat).max(0.0)),
            sweep: None,
            path,
            status,
            state,
            lost,
            config_text,
            model,
        }
    }

    /// A run's config.toml, re-read only when its size or modification time changed.
    fn config_text(&mut self, run: &RunDir) -> String {
        let p = run.config_path();
        let meta = std::fs::metadata(&p).ok();
        let key = (
            meta.as_ref().map_or(0, |m| m.len()),
            meta.and_then(|m| m.modified().ok()),
        );
        match self.configs.get(&run.path) {
            Some((len, mtime, text)) if (*len, *mtime) == key => text.clone(),
            _ => {
                let text =
                    crate::text::read_file(&p, crate::text::SMALL_FILE_MAX).unwrap_or_default();
                self.configs
                    .insert(run.path.clone(), (key.0, key.1, text.clone()));
                text
            }
        }
    }
}

/// Plain-text runs table (for `ssmlab runs` and `ssmlab` without a terminal).
pub fn runs_table(runs: &[RunSummary], dir: &Path) -> String {
    if runs.is_empty() {
        return format!(
            "no runs under {} (start one with: ssmlab train --preset bigs-tiny)\n",
            crate::text::path(dir)
        );
    }
    let mut s = format!(
        "{:<24} {:<9} {:<8} {:>13} {:>9} {:>9} {:>8} {:>9}\n",
        "RUN", "STATE", "MODEL", "STEP", "LOSS", "EVAL", "ACC/CAS", "TOK/S"
    );
    let f = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
    for r in runs {
        let eval = r.last_eval();
        s += &format!(
            "{:<24} {:<9} {:<8} {:>13} {:>9} {:>9} {:>8} {:>9}\n",
            crate::text::sanitize(&r.id),
            r.state_label(),
            crate::text::sanitize(&r.model),
            format!("{}/{}", r.step(), r.total_steps()),
            f(r.last_loss(), 4),
            f(eval.map(|e| e.0), 4),
            r.acc_or_cas()
                .map_or("-".into(), |a| format!("{:.1}%", a * 100.0)),
            f(r.tokens_per_s(), 0),
        );
    }
    s
}
