//! The one training loop. A [`Session`] owns everything a run directory needs from a trainer,
//! whatever the model: the status file and its heartbeat (also during long evaluations), the
//! control file (stop / checkpoint now), the stop flag that signals set, the checkpoint schedule
//! with atomic `step-N/` folders and pruning, the evaluation schedule, the metrics and log lines,
//! divergence and failure recording. A [`Task`] (BiGS masked-LM pretraining in `mlm`, DiffuSSM
//! in `diffusion`) supplies only its step, its evaluations and extras, and what goes into a
//! checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::config::ConfigError;
use super::optim::AdamW;
use crate::data::DataError;
use crate::engine::EngineError;
use crate::runs::{Control, Metric, RunDir, RunError, RunLock, RunState, Status, unix_now};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(
        "cannot write checkpoint {path}: {msg}; {}",
        previous.map_or("no earlier checkpoint exists".to_string(), |s| format!(
            "the previous checkpoint (step-{s}) is intact"
        ))
    )]
    Checkpoint {
        path: PathBuf,
        msg: String,
        /// The newest complete checkpoint left, if any.
        previous: Option<u64>,
    },
    #[error("{0}")]
    Other(String),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Engine(e.into())
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// How a training session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Stopped,
    Diverged,
}

/// What the loop reports as it goes (for progress bars; the run directory has it all too).
pub enum Event<'a> {
    Started {
        run: &'a RunDir,
        start_step: u64,
        total_steps: u64,
        /// Training / held-out items: sequences of a masked LM, images of a diffusion run.
        train_sequences: usize,
        val_sequences: usize,
        parameters: usize,
    },
    Step(&'a Metric),
    Checkpoint(u64),
    Message(&'a str),
}

/// The counters every checkpoint's `state.json` holds besides a task's own (flattened into it,
/// so the file keeps one flat object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimiser steps taken.
    pub step: u64,
    /// Training seconds over all sessions (evaluation included).
    pub wall_s: f64,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<u64>,
    /// The eval loss of the latest evaluation; the checkpoint of its step decides "best".
    pub last_eval_loss: Option<f64>,
}

impl Progress {
    /// A run that has not taken a step.
    pub fn new() -> Self {
        Self {
            step: 0,
            wall_s: 0.0,
            best_eval_loss: None,
            best_step: None,
            last_eval_loss: None,
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// The schedule the loop keeps, from a run's `[train]` section.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub total_steps: u64,
    pub log_every: u64,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
}

/// The result of one optimiser step. A loss or norm that is not finite ends the run as
/// diverged (the task must then not have updated its weights).
#[derive(Debug, Clone, Copy)]
pub struct Stepped {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
}

/// Which evaluations are due at a logged step.
#[derive(Debug, Clone, Copy)]
pub struct Due {
    /// The held-out loss (every `eval_every` steps and at the last step).
    pub eval: bool,
    /// The task's own extra evaluation (the CAS of a diffusion run).
    pub extra: bool,
}

/// What a training task supplies to the loop.
pub trait Task {
    fn plan(&self) -> Plan;
    /// `run.model` of the configuration (for status.json).
    fn model_name(&self) -> &str;
    fn progress(&self) -> &Progress;
    fn progress_mut(&mut self) -> &mut Progress;
    fn optimiser(&self) -> &AdamW;
    /// Trained parameters (elements).
    fn parameters(&self) -> usize {
        self.optimiser()
            .params
            .iter()
            .map(|p| p.var.elem_count())
            .sum()
    }
    /// Training and held-out items (sequences or images).
    fn data_sizes(&self) -> (usize, usize);
    /// Task details for the session-start line of `log.txt`; `Some` also reports them as a
    /// message.
    fn start_details(&self) -> (String, bool);
    /// Items seen so far, the unit of throughput (tokens or images).
    fn seen(&self) -> u64;
    /// One optimiser step: advances `progress().step` and the items seen.
    fn train_step(&mut self) -> Result<Stepped>;
    /// Whether the task's extra evaluation is due at `step` (`last`: the final step).
    fn extra_due(&self, _step: u64, _last: bool) -> bool {
        false
    }
    /// Fills the counters of a logged record: `seen_since` items in `seconds` since the last
    /// record (plus evaluation pauses excluded).
    fn fill_counts(&self, m: &mut Metric, seen_since: u64, seconds: f64);
    /// Runs the due evaluations into `m` (the held-out loss into `m.eval_loss`); calls `beat`
    /// now and then.
    fn evaluate(&mut self, m: &mut Metric, due: Due, beat: &mut Beat) -> Result<()>;
    /// Work after the logging of `step` (e.g. sample grids); returns lines for `log.txt`.
    fn extras(&mut self, _step: u64, _last: bool, _beat: &mut Beat) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Writes the checkpoint files (weights, optimiser, `state.json`, `config.json`) into `dir`.
    fn write_checkpoint_files(&self, dir: &Path) -> std::result::Result<(), String>;
    /// The SSM parameters `kernels.jsonl` records, by checkpoint name (none: a model without
    /// SSM layers), and whether they are EMA weights. By default the trained values of the
    /// parameters under an SSM module ([`is_ssm_parameter`]).
    fn kernel_tensors(&self) -> (bool, Vec<(String, candle_core::Tensor)>) {
        let params = &self.optimiser().params;
        let picked = params
            .iter()
            .filter(|p| is_ssm_parameter(&p.name))
            .map(|p| (p.name.clone(), p.var.as_tensor().clone()))
            .collect();
        (false, picked)
    }
}

/// Whether a parameter belongs to an SSM module of BiGS (`….fs4.…`, `….bs4.…`) or DiffuSSM
/// (`….ssm_fwd.…`, `….ssm_bwd.…`): the A, C, Δt and D that `kernels.jsonl` records.
pub fn is_ssm_parameter(name: &str) -> bool {
    name.split('.')
        .any(|s| matches!(s, "fs4" | "bs4" | "ssm_fwd" | "ssm_bwd"))
}

/// The `Task` methods every task implements the same way, from fields of the same names: a
/// `cfg` with `run.model` and a `[train]` of `steps`, `log_every`, `eval_every`,
/// `checkpoint_every`, `keep_checkpoints`; a `state` with a `progress`; the optimiser `opt`; and
/// `data` with `train` and `val` sets. Written once here, expanded in each task's impl.
macro_rules! task_accessors {
    () => {
        fn plan(&self) -> $crate::train::session::Plan {
            let t = &self.cfg.train;
            $crate::train::session::Plan {
                total_steps: t.steps,
                log_every: t.log_every,
                eval_every: t.eval_every,
                checkpoint_every: t.checkpoint_every,
                keep_checkpoints: t.keep_checkpoints,
            }
        }

        fn model_name(&self) -> &str {
            &self.cfg.run.model
        }

        fn progress(&self) -> &$crate::train::session::Progress {
            &self.state.progress
        }

        fn progress_mut(&mut self) -> &mut $crate::train::session::Progress {
            &mut self.state.progress
        }

        fn optimiser(&self) -> &$crate::train::optim::AdamW {
            &self.opt
        }

        fn data_sizes(&self) -> (usize, usize) {
            (self.data.train.len(), self.data.val.len())
        }
    };
}
pub(crate) use task_accessors;

/// The heartbeat during long work: rewrites status.json (`running`, fresh heartbeat) at most
/// every few seconds, so viewers never take a busy trainer for a lost one.
pub struct Beat<'a> {
    run: &'a RunDir,
    status: &'a mut Status,
    last: Instant,
}

impl Beat<'_> {
    const EVERY_S: f64 = 5.0;

    /// A sign of life; cheap when the last one is recent.
    pub fn tick(&mut self) {
        if self.last.elapsed().as_secs_f64() > Self::EVERY_S {
            self.force();
        }
    }

    fn force(&mut self) {
        self.status.state = RunState::Running;
        self.status.heartbeat = unix_now();
        self.status.message = None;
        // A failed status write is not worth stopping a run for; the next one retries.
        let _ = self.run.write_status(self.status);
        self.last = Instant::now();
    }
}

/// A training session of one task on one run directory.
pub struct Session<T> {
    pub run: RunDir,
    pub task: T,
    status: Status,
    /// The run's one-writer lock, held as long as the session lives.
    _lock: RunLock,
}

impl<T: Task> Session<T> {
    /// A session on `run` (created, or opened for a resume, under its `lock`) with the task's
    /// state loaded.
    pub(crate) fn new(run: RunDir, lock: RunLock, task: T) -> Self {
        // A request left from before this trainer took the run (a stop confirmed after the
        // last session ended) is stale: it must not stop this one.
        if let Some(r) = run.take_request() {
            let what = match r {
                Ok(c) => format!("{c:?}").to_lowercase(),
                Err(why) => why,
            };
            let _ = run.log(&format!(
                "ignored a request left from before this session: {what}"
            ));
        }
        let p = task.progress();
        let status = Status::starting(
            &run,
            task.plan().total_steps,
            task.model_name(),
            p.step,
            p.best_step,
        );
        Self {
            run,
            task,
            status,
            _lock: lock,
        }
    }

    /// Optimiser steps taken.
    pub fn step(&self) -> u64 {
        self.task.progress().step
    }

    pub fn progress(&self) -> &Progress {
        self.task.progress()
    }

    pub fn total_steps(&self) -> u64 {
        self.task.plan().total_steps
    }

    fn set_status(&mut self, state: RunState, message: Option<String>) -> Result<()> {
        let s = &mut self.status;
        s.state = state;
        s.heartbeat = unix_now();
        s.step = self.task.progress().step;
        s.message = message;
        self.run.write_status(s)?;
        Ok(())
    }

    /// Appends the SSM parameters at this step to `kernels.jsonl` (nothing for a model without
    /// SSM layers).
    fn record_kernels(&self) -> Result<()> {
        let (ema, tensors) = self.task.kernel_tensors();
        if tensors.is_empty() {
            return Ok(());
        }
        let mut rec = crate::runs::kernels::KernelRecord {
            step: self.step(),
            wall_s: self.task.progress().wall_s,
            ema,
            tensors: Default::default(),
        };
        for (name, t) in tensors {
            let shape = t.dims().to_vec();
            let values = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            rec.tensors
                .insert(name, crate::runs::kernels::SavedTensor { shape, values });
        }
        Ok(self.run.append_kernels(&rec)?)
    }

    /// Writes `step-N/` atomically (best by eval loss: the evaluation of this step decides) and
    /// prunes old checkpoints, keeping the best.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let p = self.task.progress_mut();
        let step = p.step;
        if let Some(l) = p.last_eval_loss
            && p.best_eval_loss.is_none_or(|b| l < b)
        {
            p.best_eval_loss = Some(l);
            p.best_step = Some(step);
        }
        let best = p.best_step;
        let task = &self.task;
        let dst = write_checkpoint(&self.run, step, |tmp| task.write_checkpoint_files(tmp))?;
        prune_checkpoints(&self.run, self.task.plan().keep_checkpoints, best);
        self.status.last_checkpoint = Some(format!("step-{step}"));
        self.status.best_checkpoint = best.map(|s| format!("step-{s}"));
        Ok(dst)
    }

    /// Runs until the configured number of steps, `stop_at`, a stop request (the `stop` flag or
    /// the control file), or divergence. An error is logged and recorded as state `failed`.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        stop_at: Option<u64>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Outcome> {
        let res = self.run_inner(stop, stop_at, on_event);
        if let Err(e) = &res {
            let _ = self.run.log(&format!("error: {e}"));
            let _ = self.set_status(RunState::Failed, Some(e.to_string()));
        }
        res
    }

    fn run_inner(
        &mut self,
        stop: &AtomicBool,
        stop_at: Option<u64>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Outcome> {
        let plan = self.task.plan();
        let total = plan.total_steps;
        self.set_status(RunState::Running, None)?;
        let parameters = self.task.parameters();
        let (n_train, n_val) = self.task.data_sizes();
        on_event(Event::Started {
            run: &self.run,
            start_step: self.step(),
            total_steps: total,
            train_sequences: n_train,
            val_sequences: n_val,
            parameters,
        });
        let (details, announce) = self.task.start_details();
        let msg = format!(
            "session start: step {} of {total}, pid {}, {parameters} parameters, {details}",
            self.step(),
            std::process::id(),
        );
        self.run.log(&msg)?;
        if announce {
            on_event(Event::Message(&msg));
        }
        if self.step() == 0 {
            self.record_kernels()?;
        }
        let session_start = Instant::now();
        let wall0 = self.task.progress().wall_s;
        let mut last_beat = Instant::now();
        let (mut window_t, mut window_seen) = (Instant::now(), self.task.seen());
        while self.step() < total {
            let s = self.task.train_step()?;
            let step = self.step();
            self.task.progress_mut().wall_s = wall0 + session_start.elapsed().as_secs_f64();
            if !s.loss.is_finite() || !s.grad_norm.is_finite() {
                let msg = diverged_message(&self.run, step, s.loss, s.grad_norm);
                self.run.log(&msg)?;
                self.set_status(RunState::Diverged, Some(msg.clone()))?;
                on_event(Event::Message(&msg));
                return Ok(Outcome::Diverged);
            }
            let last = step == total;
            let due = Due {
                eval: step.is_multiple_of(plan.eval_every) || last,
                extra: self.task.extra_due(step, last),
            };
            let is_log = step.is_multiple_of(plan.log_every) || due.eval || due.extra;
            if is_log {
                let mut m = Metric {
                    step,
                    wall_s: self.task.progress().wall_s,
                    lr: Some(s.lr),
                    loss: Some(s.loss),
                    grad_norm: Some(s.grad_norm),
                    ..Default::default()
                };
                let dt = window_t.elapsed().as_secs_f64().max(1e-9);
                self.task
                    .fill_counts(&mut m, self.task.seen() - window_seen, dt);
                if due.eval || due.extra {
                    let mut beat = Beat {
                        run: &self.run,
                        status: &mut self.status,
                        last: last_beat,
                    };
                    beat.status.step = step;
                    self.task.evaluate(&mut m, due, &mut beat)?;
                    last_beat = beat.last;
                    if due.eval {
                        self.task.progress_mut().last_eval_loss = m.eval_loss;
                        self.record_kernels()?;
                    }
                }
                self.run.append_metric(&m)?;
                self.run.log(&plain_line(&m, total))?;
                on_event(Event::Step(&m));
            }
            let mut beat = Beat {
                run: &self.run,
                status: &mut self.status,
                last: last_beat,
            };
            let lines = self.task.extras(step, last, &mut beat)?;
            last_beat = beat.last;
            for l in &lines {
                self.run.log(l)?;
            }
            if is_log || !lines.is_empty() {
                // evaluation and sampling time is not training throughput
                window_t = Instant::now();
                window_seen = self.task.seen();
            }
            if let Some(o) = self.end_of_step(is_log, stop, stop_at, &mut last_beat, on_event)? {
                return Ok(o);
            }
        }
        let msg = format!("finished {total} steps");
        self.run.log(&msg)?;
        self.set_status(RunState::Finished, Some(msg))?;
        Ok(Outcome::Finished)
    }

    /// The end of a step: control requests (stop / checkpoint), the periodic and final
    /// checkpoint, stopping, and the heartbeat. `Some(outcome)` when the session ends here.
    fn end_of_step(
        &mut self,
        logged: bool,
        stop: &AtomicBool,
        stop_at: Option<u64>,
        last_beat: &mut Instant,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Option<Outcome>> {
        let plan = self.task.plan();
        let (step, total) = (self.step(), plan.total_steps);
        let mut checkpoint = step.is_multiple_of(plan.checkpoint_every) || step == total;
        let mut stopping = stop.load(Ordering::SeqCst) || stop_at == Some(step);
        match self.run.take_request() {
            Some(Ok(Control::Stop)) => stopping = true,
            Some(Ok(Control::Checkpoint)) => checkpoint = true,
            Some(Err(why)) => {
                let msg = format!("warning: ignored a control file: {why}");
                self.run.log(&msg)?;
                on_event(Event::Message(&msg));
            }
            None => {}
        }
        if checkpoint || stopping {
            self.save_checkpoint()?;
            on_event(Event::Checkpoint(step));
        }
        if stopping && step < total {
            let msg = format!("stopped at step {step} (checkpoint step-{step})");
            self.run.log(&msg)?;
            self.set_status(RunState::Stopped, Some(msg))?;
            return Ok(Some(Outcome::Stopped));
        }
        if logged || checkpoint || last_beat.elapsed().as_secs_f64() > Beat::EVERY_S {
            self.set_status(RunState::Running, None)?;
            *last_beat = Instant::now();
        }
        Ok(None)
    }
}

/// A stop flag that Ctrl-C, SIGTERM and SIGHUP set: the session then checkpoints and ends as
/// `stopped`. Under `nohup` (SIGHUP ignored when the process started) a hangup stays ignored.
/// Installs a process-wide handler, so it is called once, by the command that trains.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // ctrlc's handler also takes SIGHUP.
    let hup_ignored = crate::runs::os::sighup_ignored();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).map_err(|e| {
        TrainError::Other(format!("cannot install the Ctrl-C/SIGTERM handler: {e}"))
    })?;
    if hup_ignored {
        crate::runs::os::ignore_sighup();
    }
    Ok(stop)
}

/// Writes checkpoint `step-N/` of a run atomically: `write` fills a temporary folder, which is
/// renamed into place only when complete (an older `step-N/` is replaced).
pub(crate) fn write_checkpoint(
    run: &RunDir,
    step: u64,
    write: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> Result<PathBuf> {
    let dst = run.checkpoint_path(step);
    let tmp = run.path.join(format!("step-{step}.tmp"));
    let res = (|| {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        write(&tmp)?;
        if dst.exists() {
            std::fs::remove_dir_all(&dst).map_err(|e| e.to_string())?;
        }
        std::fs::rename(&tmp, &dst).map_err(|e| e.to_string())
    })();
    if let Err(msg) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(TrainError::Checkpoint {
            path: dst,
            msg,
            previous: run.latest_checkpoint().map(|(s, _)| s),
        });
    }
    Ok(dst)
}

/// Deletes all but the newest `keep` checkpoints, never the best one.
fn prune_checkpoints(run: &RunDir, keep: usize, best_step: Option<u64>) {
    let all = run.checkpoints();
    let n = all.len();
    for (i, (step, path)) in all.into_iter().enumerate() {
        if i + keep < n && Some(step) != best_step {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Writes the files of every checkpoint into the folder `dir` being written: the weights
/// (`model.safetensors`, HF names), the optimiser's moments, `state.json` and the model's
/// `config.json`.
pub(crate) fn write_checkpoint_common(
    dir: &Path,
    varmap: &candle_nn::VarMap,
    opt: &AdamW,
    state: &impl Serialize,
    config_json: &str,
) -> std::result::Result<(), String> {
    varmap
        .save(dir.join("model.safetensors"))
        .map_err(|e| e.to_string())?;
    opt.save(&dir.join("optimizer.safetensors"))
        .map_err(|e| e.to_string())?;
    let state = crate::engine::serial::json_pretty(state);
    std::fs::write(dir.join("state.json"), state).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("config.json"), config_json).map_err(|e| e.to_string())
}

/// Reads `state.json` of checkpoint folder `ck`.
pub(crate) fn read_state<S: DeserializeOwned>(ck: &Path) -> Result<S> {
    let sp = ck.join("state.json");
    let text =
        crate::text::read_file(&sp, crate::text::SMALL_FILE_MAX).map_err(|e| RunError::Io {
            path: sp.clone(),
            err: e,
        })?;
    Ok(serde_json::from_str(&text).map_err(|e| RunError::Invalid {
        path: sp.clone(),
        msg: e.to_string(),
    })?)
}

/// The message of a run that diverged at `step`.
fn diverged_message(run: &RunDir, step: u64, loss: f64, norm: f64) -> String {
    let last = run
        .latest_checkpoint()
        .map(|(s, _)| format!("step-{s}"))
        .unwrap_or_else(|| "none".into());
    format!(
        "training diverged at step {step}: loss {loss}, gradient norm {norm}; \
         the last good checkpoint ({last}) is kept. Lower optim.lr or raise \
         optim.warmup_steps, then start again or --resume"
    )
}

/// The plain progress line (log.txt, and stdout when it is not a terminal).
pub fn plain_line(m: &Metric, total: u64) -> String {
    let mut s = format!(
        "step {}/{} tokens {} loss {:.4} lr {:.2e} gnorm {:.3} tok/s {:.0}",
        m.step,
        total,
        m.tokens,
        m.loss.unwrap_or(f64::NAN),
        m.lr.unwrap_or(0.0),
        m.grad_norm.unwrap_or(f64::NAN),
        m.tokens_per_s.unwrap_or(0.0)
    );
    if let Some(ips) = m.images_per_s {
        s += &format!(" img/s {ips:.1}");
    }
    match (m.eval_loss, m.eval_acc, m.eval_baseline_acc) {
        (Some(l), Some(a), Some(b)) => {
            s += &format!(
                " | eval loss {l:.4} acc {:.2}% (most-frequent baseline {:.2}%)",
                a * 100.0,
                b * 100.0
            )
        }
        (Some(l), _, _) => s += &format!(" | eval loss {l:.4}"),
        _ => {}
    }
    if let Some(c) = m.eval_cas {
        s += &format!(" | CAS {:.1}%", c * 100.0);
    }
    s
}

/// Where a resume starts: `load` is tried on the run's checkpoints, newest first (or only
/// `step-N` with `from_step`), until one loads completely; it returns what it loaded. The
/// checkpoints that failed before it (no model file, a corrupt tensor or state) are named in the
/// returned lines and, once an older one has loaded, moved aside to `step-N.corrupt`, so a broken
/// newest checkpoint never blocks a resume while an intact older one exists. When none loads
/// (e.g. a `--set` that changes the model's shape), nothing is moved. With `from_step`, the newer checkpoints
/// are moved aside to `step-M.unused` (the run continues from N; they would be mistaken for its
/// latest). `None`: no checkpoint loads (or there is none).
pub(crate) fn resume_point<S>(
    run: &RunDir,
    from_step: Option<u64>,
    mut load: impl FnMut(&Path) -> Result<S>,
) -> Result<(Option<S>, Vec<String>)> {
    // every `step-N` folder, model file or not
    let mut all: Vec<(u64, PathBuf)> = std::fs::read_dir(&run.path)
        .map_err(|e| RunError::Io {
            path: run.path.clone(),
            err: e,
        })?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path().is_dir().then(|| (step, e.path()))
        })
        .collect();
    all.sort();
    let mut lines = Vec::new();
    let set_aside = |p: &Path, suffix: &str| {
        let dst = p.with_extension(suffix);
        let _ = std::fs::remove_dir_all(&dst);
        let _ = std::fs::rename(p, &dst);
        dst
    };
    if let Some(n) = from_step {
        if !all.iter().any(|(s, _)| *s == n) {
            let have: Vec<String> = all.iter().map(|(s, _)| s.to_string()).collect();
            return Err(TrainError::Other(format!(
                "--from-step {n}: run {} has no step-{n}/ (checkpoints: {})",
                run.path.display(),
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            )));
        }
        for (s, p) in all.iter().filter(|(s, _)| *s > n) {
            let dst = set_aside(p, "unused");
            lines.push(format!(
                "resuming from step {n}: step-{s} moved aside to {}",
                dst.display()
            ));
        }
        all.retain(|(s, _)| *s == n);
    }
    let mut failed: Vec<(u64, &PathBuf, String)> = Vec::new();
    for (s, p) in all.iter().rev() {
        let res = if p.join("model.safetensors").is_file() {
            load(p)
        } else {
            Err(TrainError::Other("no model.safetensors".into()))
        };
        match res {
            Ok(v) => {
                for (fs, fp, why) in &failed {
                    let dst = set_aside(fp, "corrupt");
                    lines.push(format!(
                        "skipped checkpoint step-{fs} ({why}); moved aside to {}",
                        dst.display()
                    ));
                }
                return Ok((Some(v), lines));
            }
            Err(e) if from_step.is_none() => failed.push((*s, p, e.to_string())),
            Err(e) => {
                return Err(TrainError::Other(format!(
                    "--from-step {s}: checkpoint step-{s} does not load: {e}"
                )));
            }
        }
    }
    for (fs, _, why) in &failed {
        lines.push(format!("checkpoint step-{fs} does not load ({why})"));
    }
    Ok((None, lines))
}
