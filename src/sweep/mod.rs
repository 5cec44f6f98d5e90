//! Sweeps: one preset trained at every point of a grid (and/or at random points of ranges) as
//! ordinary run directories `S-1`, `S-2`, … whose config.toml holds the swept values, with the
//! sweep itself recorded in `S.sweep.toml` beside them. A rerun of the same sweep reads that
//! file: finished runs are skipped, stopped ones resumed, missing ones started. UI-free: the
//! `ssmlab sweep` command starts the processes, and the Runs view groups runs by sweep.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::runs::index::RunSummary;
use crate::runs::{LockState, RunDir, RunState, check_run_name, unix_now};
use crate::train::presets::{AnyConfig, any_preset};

/// A sweep error: one line naming the flag, file or key and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SweepError(pub String);

pub type Result<T> = std::result::Result<T, SweepError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(SweepError(msg.into()))
}

/// The most runs one sweep may hold (a typo such as a 10-value grid over 4 keys stops here).
pub const MAX_RUNS: usize = 256;

/// One `--grid KEY=V1,V2,…`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GridAxis {
    pub key: String,
    pub values: Vec<String>,
}

/// One `--range KEY=LO:HI[:log]`: values drawn uniformly (or log-uniformly) in [LO, HI];
/// integers when both bounds are integers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeAxis {
    pub key: String,
    pub lo: f64,
    pub hi: f64,
    #[serde(default)]
    pub log: bool,
    #[serde(default)]
    pub integer: bool,
}

/// What a sweep is: everything its runs are made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    pub preset: String,
    /// `--set` overrides shared by every run.
    #[serde(default)]
    pub sets: Vec<String>,
    #[serde(default)]
    pub grid: Vec<GridAxis>,
    /// Random draws per grid point (0: none, the grid alone).
    #[serde(default)]
    pub random: usize,
    #[serde(default)]
    pub ranges: Vec<RangeAxis>,
    /// Seed of the random draws.
    #[serde(default)]
    pub seed: u64,
}

/// One run of a sweep: its id and its swept values as `key=value` overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRun {
    pub id: String,
    pub sets: Vec<String>,
}

impl SweepRun {
    /// The swept value of `key`, as written in the sweep.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.sets.iter().find_map(|s| {
            let (k, v) = s.split_once('=')?;
            (k == key).then_some(v)
        })
    }
}

/// `S.sweep.toml`: the spec and its expanded runs (random draws are drawn once, here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepFile {
    pub name: String,
    #[serde(flatten)]
    pub spec: SweepSpec,
    pub runs: Vec<SweepRun>,
}

/// The file name of sweep `name`'s record.
pub fn sweep_file_name(name: &str) -> String {
    format!("{name}.sweep.toml")
}

/// Parses `KEY=V1,V2,…`.
pub fn parse_grid(arg: &str) -> Result<GridAxis> {
    let Some((key, values)) = arg.split_once('=') else {
        return err(format!(
            "--grid {arg}: expected KEY=V1,V2,…, e.g. --grid optim.lr=1e-3,3e-3"
        ));
    };
    let key = key.trim();
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
    if key.is_empty() || values.iter().any(String::is_empty) {
        return err(format!(
            "--grid {arg}: a key and non-empty values are needed, e.g. --grid optim.lr=1e-3,3e-3"
        ));
    }
    let mut seen = values.clone();
    seen.sort();
    seen.dedup();
    if seen.len() != values.len() {
        return err(format!("--grid {arg}: a value is given twice"));
    }
    Ok(GridAxis {
        key: key.into(),
        values,
    })
}

/// Parses `KEY=LO:HI` or `KEY=LO:HI:log`.
pub fn parse_range(arg: &str) -> Result<RangeAxis> {
    let usage =
        format!("--range {arg}: expected KEY=LO:HI or KEY=LO:HI:log, e.g. optim.lr=1e-4:1e-2:log");
    let Some((key, rest)) = arg.split_once('=') else {
        return err(usage);
    };
    let parts: Vec<&str> = rest.split(':').map(str::trim).collect();
    let log = match parts.get(2) {
        None => false,
        Some(&"log") => true,
        Some(_) => return err(usage),
    };
    if parts.len() < 2 || parts.len() > 3 || key.trim().is_empty() {
        return err(usage);
    }
    let num = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite());
    let (Some(lo), Some(hi)) = (num(parts[0]), num(parts[1])) else {
        return err(usage);
    };
    if lo >= hi {
        return err(format!("--range {arg}: LO must be below HI"));
    }
    if log && lo <= 0.0 {
        return err(format!("--range {arg}: a log range needs LO > 0"));
    }
    let integer = parts[0].parse::<i64>().is_ok() && parts[1].parse::<i64>().is_ok();
    Ok(RangeAxis {
        key: key.trim().into(),
        lo,
        hi,
        log,
        integer,
    })
}

/// A drawn value as the override text: integers as integers, floats with 4 significant digits.
fn draw(r: &RangeAxis, rng: &mut ChaCha8Rng) -> String {
    let u: f64 = rng.random();
    let v = if r.log {
        (r.lo.ln() + u * (r.hi.ln() - r.lo.ln())).exp()
    } else {
        r.lo + u * (r.hi - r.lo)
    };
    if r.integer {
        format!("{}", v.round().clamp(r.lo, r.hi) as i64)
    } else {
        format!("{v:.3e}")
    }
}

impl SweepSpec {
    /// The swept keys, grid first, in the order given.
    pub fn keys(&self) -> Vec<&str> {
        self.grid
            .iter()
            .map(|g| g.key.as_str())
            .chain(self.ranges.iter().map(|r| r.key.as_str()))
            .collect()
    }

    /// Checks the spec's shape: known preset, no key twice, ranges only with --random and
    /// --random only with ranges, at most [`MAX_RUNS`] runs.
    pub fn check(&self) -> Result<()> {
        if crate::train::presets::PRESETS
            .iter()
            .all(|(n, _)| *n != self.preset)
        {
            return err(format!(
                "--preset {}: no such preset (see ssmlab train --list-presets)",
                self.preset
            ));
        }
        let keys = self.keys();
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].contains(k) {
                return err(format!(
                    "{k} is swept twice (one --grid or --range per key)"
                ));
            }
            if *k == "run.name" {
                return err("run.name cannot be swept: runs are named S-1, S-2, … by the sweep");
            }
        }
        if !self.ranges.is_empty() && self.random == 0 {
            return err("--range needs --random N (how many draws)");
        }
        if self.random > 0 && self.ranges.is_empty() {
            return err("--random needs at least one --range KEY=LO:HI");
        }
        if self.grid.is_empty() && self.ranges.is_empty() {
            return err(
                "nothing to sweep: give --grid KEY=V1,V2 and/or --random N --range KEY=LO:HI",
            );
        }
        let n = self.count();
        if n > MAX_RUNS {
            return err(format!(
                "the sweep has {n} runs, more than {MAX_RUNS}: use fewer values"
            ));
        }
        Ok(())
    }

    /// How many runs the spec expands to.
    pub fn count(&self) -> usize {
        let grid: usize = self.grid.iter().map(|g| g.values.len()).product();
        grid.saturating_mul(self.random.max(1))
    }

    /// The runs' overrides: the grid's cartesian product (first axis slowest), each point with
    /// `random` draws of the ranges (seeded: the same spec draws the same values).
    pub fn expand(&self) -> Vec<Vec<String>> {
        let mut points: Vec<Vec<String>> = vec![vec![]];
        for axis in &self.grid {
            points = points
                .into_iter()
                .flat_map(|p| {
                    axis.values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.push(format!("{}={v}", axis.key));
                        q
                    })
                })
                .collect();
        }
        if self.random == 0 {
            return points;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut out = Vec::new();
        for p in points {
            for _ in 0..self.random {
                let mut q = p.clone();
                for r in &self.ranges {
                    q.push(format!("{}={}", r.key, draw(r, &mut rng)));
                }
                out.push(q);
            }
        }
        out
    }
}

impl SweepFile {
    /// The sweep `name` of `spec`, expanded into runs `name-1`, `name-2`, …; every run's
    /// configuration is built and validated here, so a bad key or value stops the sweep
    /// before anything starts (one line naming the run's values and the key).
    pub fn new(name: &str, spec: SweepSpec) -> Result<Self> {
        check_run_name(name).map_err(|e| SweepError(format!("--name: {e}")))?;
        spec.check()?;
        let base = any_preset(&spec.preset).map_err(|e| SweepError(e.to_string()))?;
        let runs: Vec<SweepRun> = spec
            .expand()
            .into_iter()
            .enumerate()
            .map(|(i, sets)| SweepRun {
                id: format!("{name}-{}", i + 1),
                sets,
            })
            .collect();
        for r in &runs {
            check_run_name(&r.id).map_err(|e| SweepError(format!("--name: {e}")))?;
            let mut all = spec.sets.clone();
            all.extend(r.sets.iter().cloned());
            all.push(format!("run.name={}", r.id));
            let checked = match &base {
                AnyConfig::Mlm(c) => c
                    .with_overrides(&all)
                    .and_then(|c| c.validate())
                    .map_err(|e| e.to_string()),
                AnyConfig::Diffusion(c) => c
                    .with_overrides(&all)
                    .and_then(|c| c.validate())
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = checked {
                return err(format!(
                    "sweep {name}, run {} ({}): {e}",
                    r.id,
                    r.sets.join(" ")
                ));
            }
        }
        Ok(Self {
            name: name.into(),
            spec,
            runs,
        })
    }

    /// Reads `path`; errors are one line naming the file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = crate::text::read_file(path, crate::text::SMALL_FILE_MAX)
            .map_err(|e| SweepError(format!("{}: {e}", path.display())))?;
        let f: Self = toml::from_str(&text).map_err(|e| {
            SweepError(format!(
                "{}: {}",
                path.display(),
                crate::train::config::one_line(&e.to_string())
            ))
        })?;
        if let Some(r) = f.runs.iter().find(|r| check_run_name(&r.id).is_err()) {
            return err(format!("{}: run id {:?} refused", path.display(), r.id));
        }
        Ok(f)
    }

    /// Writes the record atomically into `runs_dir`.
    pub fn write(&self, runs_dir: &Path) -> Result<()> {
        std::fs::create_dir_all(runs_dir)
            .map_err(|e| SweepError(format!("{}: {e}", runs_dir.display())))?;
        let text = toml::to_string(self).map_err(|e| SweepError(e.to_string()))?;
        let path = runs_dir.join(sweep_file_name(&self.name));
        crate::runs::write_atomic(&path, text.as_bytes()).map_err(|e| SweepError(e.to_string()))
    }
}

/// What a (re)run of a sweep does with one of its runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No directory yet: train it.
    Start,
    /// Stopped (or its trainer died) with a checkpoint: continue it.
    Resume,
    /// Nothing to do: finished or diverged.
    Done(RunState),
    /// Another process trains it now.
    Running(Option<u32>),
    /// Its directory is there but it cannot be continued (the reason).
    Blocked(String),
}

impl Action {
    pub fn label(&self) -> String {
        match self {
            Action::Start => "start".into(),
            Action::Resume => "resume".into(),
            Action::Done(s) => format!("skip ({})", s.as_str()),
            Action::Running(Some(p)) => format!("skip (running, pid {p})"),
            Action::Running(None) => "skip (running)".into(),
            Action::Blocked(why) => format!("skip ({why})"),
        }
    }
}

/// What to do with a run directory `path` of a sweep.
pub fn action_for(path: &Path) -> Action {
    if !path.exists() {
        return Action::Start;
    }
    let Ok(run) = RunDir::open(path) else {
        return Action::Blocked(format!(
            "{} exists but is not a run directory; move it away to train it",
            path.display()
        ));
    };
    if let LockState::Held(pid) = run.lock_state() {
        return Action::Running(pid);
    }
    let state = run
        .read_status()
        .ok()
        .map(|s| run.effective_state(&s, unix_now()).0);
    match state {
        Some(s @ (RunState::Finished | RunState::Diverged)) => Action::Done(s),
        Some(RunState::Running) => Action::Running(None),
        _ if run.latest_checkpoint().is_some() => Action::Resume,
        _ => Action::Blocked(format!(
            "no checkpoint to resume from (see {}); remove it to start it again",
            run.log_path().display()
        )),
    }
}

/// A sweep as a command sees it: the record to use, whether it is new, and each run's action.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: SweepFile,
    pub new: bool,
    pub actions: Vec<Action>,
}

/// Plans sweep `name` in `runs_dir`. With `spec`, a recorded sweep of that name must have the
/// same spec (else an error saying what differs); without one, the recorded sweep is resumed.
/// A new sweep refuses run ids that already exist (they belong to something else).
pub fn plan(runs_dir: &Path, name: &str, spec: Option<SweepSpec>) -> Result<Plan> {
    check_run_name(name).map_err(|e| SweepError(format!("--name: {e}")))?;
    let path = runs_dir.join(sweep_file_name(name));
    let recorded = if path.exists() {
        Some(SweepFile::read(&path)?)
    } else {
        None
    };
    let (file, new) = match (recorded, spec) {
        (Some(f), None) => (f, false),
        (Some(f), Some(spec)) => {
            if f.spec != spec {
                return err(format!(
                    "sweep {name} exists ({}) with {}; this command gives {}: rerun it with the same arguments, or choose another --name",
                    path.display(),
                    describe(&f.spec),
                    describe(&spec)
                ));
            }
            (f, false)
        }
        (None, Some(spec)) => {
            let f = SweepFile::new(name, spec)?;
            if let Some(r) = f.runs.iter().find(|r| runs_dir.join(&r.id).exists()) {
                return err(format!(
                    "{} exists and is not part of a sweep {name}: choose another --name",
                    runs_dir.join(&r.id).display()
                ));
            }
            (f, true)
        }
        (None, None) => {
            return err(format!(
                "no sweep {name} in {} ({} not found): give --preset and --grid to start one",
                runs_dir.display(),
                path.display()
            ));
        }
    };
    let actions = file
        .runs
        .iter()
        .map(|r| action_for(&runs_dir.join(&r.id)))
        .collect();
    Ok(Plan { file, new, actions })
}

/// The spec as the flags that make it (for messages).
pub fn describe(s: &SweepSpec) -> String {
    let mut parts = vec![format!("--preset {}", s.preset)];
    parts.extend(s.sets.iter().map(|x| format!("--set {x}")));
    parts.extend(
        s.grid
            .iter()
            .map(|g| format!("--grid {}={}", g.key, g.values.join(","))),
    );
    if s.random > 0 {
        parts.push(format!("--random {}", s.random));
        if s.seed != 0 {
            parts.push(format!("--sweep-seed {}", s.seed));
        }
    }
    parts.extend(s.ranges.iter().map(|r| {
        format!(
            "--range {}={}:{}{}",
            r.key,
            r.lo,
            r.hi,
            if r.log { ":log" } else { "" }
        )
    }));
    parts.join(" ")
}

/// The sweeps recorded in `runs_dir` (unreadable records are skipped), by name.
pub fn read_sweeps(runs_dir: &Path) -> Vec<SweepFile> {
    let Ok(rd) = std::fs::read_dir(runs_dir) else {
        return vec![];
    };
    let mut out: Vec<SweepFile> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".sweep.toml"))
        })
        .filter_map(|p| SweepFile::read(&p).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Sets the `sweep` of each of `runs` from the sweep records in `runs_dir`.
pub fn label_runs(runs_dir: &Path, runs: &mut [RunSummary]) {
    let sweeps = read_sweeps(runs_dir);
    if sweeps.is_empty() {
        return;
    }
    for r in runs {
        r.sweep = sweep_of(&sweeps, &r.id).map(|s| s.name.clone());
    }
}

/// The sweep (name) that run `id` belongs to, among `sweeps`.
pub fn sweep_of<'a>(sweeps: &'a [SweepFile], id: &str) -> Option<&'a SweepFile> {
    sweeps.iter().find(|s| s.runs.iter().any(|r| r.id == id))
}

/// One run's line of a sweep table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepRow {
    pub sweep: String,
    pub id: String,
    /// The swept values, in the sweep's key order.
    pub values: Vec<(String, String)>,
    pub state: String,
    /// The lowest evaluation loss of the run, and the step it was logged at.
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<u64>,
    /// Masked-token accuracy (MLM) or CAS (diffusion) at the best evaluation (else the last one
    /// logged).
    pub acc_or_cas: Option<f64>,
    pub tokens: u64,
    /// Images seen (diffusion runs).
    pub images: Option<u64>,
    pub wall_s: f64,
    pub path: PathBuf,
}

/// The best evaluation of a run: (eval loss, its step, accuracy or CAS there or last seen).
pub fn best_eval(run: &RunSummary) -> Option<(f64, u64, Option<f64>)> {
    let mut best: Option<(f64, u64, Option<f64>)> = None;
    let mut last_acc = None;
    for m in run.metrics.iter() {
        if let Some(a) = m.eval_acc.or(m.eval_cas) {
            last_acc = Some(a);
        }
        if let Some(l) = m.eval_loss.filter(|l| l.is_finite())
            && best.is_none_or(|b| l < b.0)
        {
            best = Some((l, m.step, m.eval_acc.or(m.eval_cas)));
        }
    }
    best.map(|(l, s, a)| (l, s, a.or(last_acc)))
}

/// The summaries of `file`'s runs that exist in `runs_dir` (only those are read).
pub fn scan(runs_dir: &Path, file: &SweepFile) -> Vec<RunSummary> {
    let mut index = crate::runs::index::RunsIndex::new();
    let now = unix_now();
    file.runs
        .iter()
        .map(|r| runs_dir.join(&r.id))
        .filter(|p| p.join("config.toml").is_file())
        .map(|p| index.summary(p, now))
        .collect()
}

/// The rows of `file`'s runs, from a scan of their folder (`runs`); a run not started yet is a
/// row of state `pending`.
pub fn rows(file: &SweepFile, runs: &[RunSummary]) -> Vec<SweepRow> {
    let keys = file.spec.keys();
    file.runs
        .iter()
        .map(|r| {
            let values = keys
                .iter()
                .map(|k| (k.to_string(), r.value(k).unwrap_or("").to_string()))
                .collect();
            let summary = runs.iter().find(|s| s.id == r.id);
            let best = summary.and_then(best_eval);
            let last = summary.and_then(|s| s.metrics.last());
            SweepRow {
                sweep: file.name.clone(),
                id: r.id.clone(),
                values,
                state: summary.map_or("pending".into(), RunSummary::state_label),
                best_eval_loss: best.map(|b| b.0),
                best_step: best.map(|b| b.1),
                acc_or_cas: best.and_then(|b| b.2),
                tokens: last.as_ref().map_or(0, |m| m.tokens),
                images: last.as_ref().and_then(|m| m.images),
                wall_s: last.as_ref().map_or(0.0, |m| m.wall_s),
                path: summary.map_or_else(PathBuf::new, |s| s.path.clone()),
            }
        })
        .collect()
}

/// The row with the lowest best eval loss.
pub fn best_row(rows: &[SweepRow]) -> Option<&SweepRow> {
    rows.iter()
        .filter(|r| r.best_eval_loss.is_some())
        .min_by(|a, b| {
            a.best_eval_loss
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.best_eval_loss.unwrap_or(f64::INFINITY))
        })
}

/// A plain-text table of `rows` (the best run marked `*`).
pub fn table(rows: &[SweepRow]) -> String {
    let best = best_row(rows).map(|r| r.id.clone());
    let keys: Vec<String> = rows
        .first()
        .map(|r| r.values.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let images = rows.iter().any(|r| r.images.is_some());
    let mut head: Vec<String> = vec!["run".into()];
    head.extend(keys.iter().cloned());
    head.extend(
        [
            "state",
            "best eval",
            "at step",
            if images { "CAS" } else { "acc" },
            if images { "images" } else { "tokens" },
            "wall",
        ]
        .map(String::from),
    );
    let mut lines: Vec<Vec<String>> = vec![head];
    for r in rows {
        let mark = if best.as_deref() == Some(r.id.as_str()) {
            "*"
        } else {
            " "
        };
        let mut l = vec![format!("{mark}{}", r.id)];
        l.extend(r.values.iter().map(|(_, v)| v.clone()));
        l.push(r.state.clone());
        l.push(r.best_eval_loss.map_or("-".into(), |v| format!("{v:.4}")));
        l.push(r.best_step.map_or("-".into(), |v| v.to_string()));
        l.push(
            r.acc_or_cas
                .map_or("-".into(), |v| format!("{:.2}%", v * 100.0)),
        );
        l.push(if images {
            r.images.map_or("-".into(), |v| v.to_string())
        } else {
            r.tokens.to_string()
        });
        l.push(if r.wall_s < 10.0 {
            format!("{:.1} s", r.wall_s)
        } else {
            format!("{:.0} s", r.wall_s)
        });
        lines.push(l);
    }
    let mut out = aligned(&lines);
    if best.is_some() {
        out.push_str("* lowest eval loss\n");
    }
    out
}

/// One arm of a comparison of sweeps (e.g. BiGS against BERT, each tuned by the same grid):
/// its best run, the spread over its runs, and the best run's evaluation at a shared budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmReport {
    /// The arm's sweeps, joined with `+`.
    pub arm: String,
    /// The model family of its runs (`run.model`).
    pub model: String,
    pub runs: usize,
    pub finished: usize,
    /// The run with the lowest best eval loss, and its swept values.
    pub best: SweepRow,
    /// The lowest and highest final accuracy (or CAS) over the arm's runs.
    pub spread: Option<(f64, f64)>,
    /// The lowest and highest best eval loss over the arm's runs.
    pub loss_spread: Option<(f64, f64)>,
    /// The best run at the budget both arms' best runs reached: (eval loss, accuracy or CAS,
    /// step of that evaluation), at equal tokens and at equal wall time.
    pub at_tokens: Option<(f64, Option<f64>, u64)>,
    pub at_wall: Option<(f64, Option<f64>, u64)>,
}

/// The shared budgets of a comparison: tokens and wall seconds that every arm's best run
/// reached (the smallest of their totals).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Budget {
    pub tokens: u64,
    pub wall_s: f64,
    /// Images seen at that budget (diffusion arms).
    pub images: Option<u64>,
}

/// The last evaluation of `run` within `within` (a metric's budget test): eval loss, accuracy
/// or CAS (the latest logged at or before it), step.
fn eval_within(
    run: &RunSummary,
    within: impl Fn(&crate::runs::Metric) -> bool,
) -> Option<(f64, Option<f64>, u64)> {
    let mut out = None;
    let mut acc = None;
    for m in run.metrics.iter() {
        if !within(&m) {
            break;
        }
        if let Some(a) = m.eval_acc.or(m.eval_cas) {
            acc = Some(a);
        }
        if let Some(l) = m.eval_loss {
            out = Some((l, m.eval_acc.or(m.eval_cas).or(acc), m.step));
        }
    }
    out
}

/// Compares arms, each the runs of one or more sweeps (`(arm name, sweeps, scanned runs)`).
/// Errors when an arm has no run with an evaluation yet.
pub fn compare_arms(
    arms: &[(String, Vec<SweepFile>, Vec<RunSummary>)],
) -> Result<(Budget, Vec<ArmReport>)> {
    let mut picked = Vec::new();
    for (name, sweeps, runs) in arms {
        let rows: Vec<SweepRow> = sweeps.iter().flat_map(|s| self::rows(s, runs)).collect();
        let Some(best) = best_row(&rows).cloned() else {
            return err(format!(
                "sweep {name}: no run has an evaluation yet (see ssmlab sweep --name {name})"
            ));
        };
        let summary = runs
            .iter()
            .find(|r| r.id == best.id)
            .cloned()
            .ok_or_else(|| SweepError(format!("sweep {name}: run {} not found", best.id)))?;
        picked.push((name, rows, best, summary));
    }
    let budget = Budget {
        tokens: picked.iter().map(|p| p.2.tokens).min().unwrap_or(0),
        wall_s: picked
            .iter()
            .map(|p| p.2.wall_s)
            .fold(f64::INFINITY, f64::min),
        images: picked.iter().map(|p| p.2.images).min().flatten(),
    };
    let range = |v: Vec<f64>| -> Option<(f64, f64)> {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (!v.is_empty()).then_some((lo, hi))
    };
    let reports = picked
        .into_iter()
        .map(|(name, rows, best, summary)| {
            let finals: Vec<f64> = rows
                .iter()
                .filter_map(|r| {
                    let run = arms
                        .iter()
                        .flat_map(|a| a.2.iter())
                        .find(|s| s.id == r.id)?;
                    run.metrics
                        .iter()
                        .rev()
                        .find_map(|m| m.eval_acc.or(m.eval_cas))
                })
                .collect();
            ArmReport {
                arm: name.clone(),
                model: summary.model.clone(),
                runs: rows.len(),
                finished: rows.iter().filter(|r| r.state == "finished").count(),
                spread: range(finals),
                loss_spread: range(rows.iter().filter_map(|r| r.best_eval_loss).collect()),
                at_tokens: eval_within(&summary, |m| m.tokens <= budget.tokens),
                at_wall: eval_within(&summary, |m| m.wall_s <= budget.wall_s + 1e-9),
                best,
            }
        })
        .collect();
    Ok((budget, reports))
}

/// The comparison as two plain-text tables: each arm's best run and spread, then every arm's
/// best run at equal tokens and at equal wall time.
pub fn compare_table(budget: &Budget, reports: &[ArmReport]) -> String {
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}%", v * 100.0));
    let images = reports.iter().any(|r| r.best.images.is_some());
    let metric = if images { "CAS" } else { "acc" };
    let mut a: Vec<Vec<String>> = vec![
        [
            "arm",
            "model",
            "runs",
            "best run",
            "values",
            "best eval",
            metric,
            "eval spread",
            &format!("{metric} spread"),
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in reports {
        a.push(vec![
            r.arm.clone(),
            r.model.clone(),
            format!("{} ({} finished)", r.runs, r.finished),
            r.best.id.clone(),
            r.best
                .values
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            r.best_eval_loss_text(),
            pct(r.best.acc_or_cas),
            r.loss_spread
                .map_or("-".into(), |(lo, hi)| format!("{lo:.4}–{hi:.4}")),
            r.spread.map_or("-".into(), |(lo, hi)| {
                format!("{:.2}–{:.2}%", lo * 100.0, hi * 100.0)
            }),
        ]);
    }
    let mut b: Vec<Vec<String>> = vec![vec![
        "arm".into(),
        match budget.images {
            Some(n) => format!("at {n} images: eval"),
            None => format!("at {} tokens: eval", budget.tokens),
        },
        metric.into(),
        "step".into(),
        format!("at {:.0} s: eval", budget.wall_s),
        metric.into(),
        "step".into(),
    ]];
    let cell = |v: &Option<(f64, Option<f64>, u64)>| match v {
        Some((l, acc, s)) => [format!("{l:.4}"), pct(*acc), s.to_string()],
        None => ["-".into(), "-".into(), "-".into()],
    };
    for r in reports {
        let mut l = vec![r.arm.clone()];
        l.extend(cell(&r.at_tokens));
        l.extend(cell(&r.at_wall));
        b.push(l);
    }
    format!("{}\n{}", aligned(&a), aligned(&b))
}

impl ArmReport {
    fn best_eval_loss_text(&self) -> String {
        self.best
            .best_eval_loss
            .map_or("-".into(), |v| format!("{v:.4}"))
    }
}

/// Left-aligned columns separated by two spaces.
fn aligned(lines: &[Vec<String>]) -> String {
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .filter_map(|l| l.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}
