//! `ssmlab sweep`: train a preset over a grid (and/or random ranges) of configuration values,
//! K runs at a time, each an ordinary run directory; a rerun resumes the sweep.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::child::TrainChild;
use crate::sweep::{Action, SweepSpec, parse_grid, parse_range, plan, rows, scan, table};

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The preset every run starts from (see ssmlab train --list-presets). Without it, the
    /// recorded sweep --name is resumed.
    #[arg(long)]
    pub preset: Option<String>,
    /// The sweep's name: runs are NAME-1, NAME-2, …, recorded in NAME.sweep.toml.
    #[arg(long)]
    pub name: String,
    /// A swept key and its values, e.g. --grid optim.lr=1e-3,3e-3 (repeatable: the grid is
    /// the product of all of them).
    #[arg(long = "grid", value_name = "KEY=V1,V2")]
    pub grids: Vec<String>,
    /// Random draws of the --range keys per grid point.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub random: usize,
    /// A key drawn uniformly in [LO, HI] (log-uniformly with :log; integers if both bounds
    /// are), e.g. --range optim.lr=1e-4:1e-2:log (repeatable; needs --random).
    #[arg(long = "range", value_name = "KEY=LO:HI[:log]")]
    pub ranges: Vec<String>,
    /// Seed of the random draws.
    #[arg(long, default_value_t = 0)]
    pub sweep_seed: u64,
    /// Override a configuration key of every run (repeatable), e.g. --set train.steps=500.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Runs trained at the same time; the cores (--threads, default all) are split between
    /// them.
    #[arg(long, default_value_t = 1, value_name = "K")]
    pub parallel: usize,
    /// Where run directories (and the sweep record) live.
    #[arg(long, default_value = "checkpoints")]
    pub runs_dir: PathBuf,
    /// Checkpoint and stop each run after this step (state `stopped`; a rerun without it
    /// continues them).
    #[arg(long, value_name = "STEP")]
    pub stop_at: Option<u64>,
    /// Print the plan (each run, its values and what would happen to it) and start nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The final table as JSON lines (one object per run).
    #[arg(long)]
    pub json: bool,
}

impl SweepArgs {
    fn spec(&self) -> anyhow::Result<Option<SweepSpec>> {
        let Some(preset) = &self.preset else {
            if !self.grids.is_empty() || !self.ranges.is_empty() || !self.sets.is_empty() {
                bail!(
                    "--grid, --range and --set need --preset (or give --name alone to resume a sweep)"
                );
            }
            return Ok(None);
        };
        Ok(Some(SweepSpec {
            preset: preset.clone(),
            sets: self.sets.clone(),
            grid: self
                .grids
                .iter()
                .map(|g| parse_grid(g))
                .collect::<Result<_, _>>()?,
            random: self.random,
            ranges: self
                .ranges
                .iter()
                .map(|r| parse_range(r))
                .collect::<Result<_, _>>()?,
            seed: self.sweep_seed,
        }))
    }
}

pub fn run(a: SweepArgs) -> anyhow::Result<()> {
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let spec = a.spec()?;
    let p = plan(&a.runs_dir, &a.name, spec)?;
    let budget = crate::train::parallel::thread_budget();
    let todo: Vec<usize> = (0..p.actions.len())
        .filter(|&i| matches!(p.actions[i], Action::Start | Action::Resume))
        .collect();
    let k = a.parallel.min(todo.len()).max(1);
    let threads = (budget / k).max(1);
    if a.dry_run {
        let keys = p.file.spec.keys();
        let mut out = String::new();
        for (r, act) in p.file.runs.iter().zip(&p.actions) {
            let vals: Vec<String> = keys
                .iter()
                .map(|k| format!("{k}={}", r.value(k).unwrap_or("")))
                .collect();
            out.push_str(&format!("{}  {}  {}\n", r.id, vals.join(" "), act.label()));
        }
        return super::out(&out);
    }
    if p.new {
        p.file.write(&a.runs_dir)?;
    }
    eprintln!(
        "sweep {}: {} runs, {} to train ({} at a time, {threads} thread(s) each), {} skipped",
        p.file.name,
        p.file.runs.len(),
        todo.len(),
        k,
        p.file.runs.len() - todo.len()
    );
    for (r, act) in p.file.runs.iter().zip(&p.actions) {
        if !matches!(act, Action::Start | Action::Resume) {
            eprintln!("{}: {}", r.id, act.label());
        }
    }
    let stop = crate::train::session::stop_on_signals()?;
    let runs_dir = a.runs_dir.to_string_lossy().into_owned();
    let mut queue = todo.into_iter();
    let mut active: Vec<TrainChild> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut stopping = false;
    loop {
        if stop.load(Ordering::SeqCst) && !stopping {
            stopping = true;
            eprintln!(
                "stopping: each running run checkpoints and stops (rerun the same command to resume)"
            );
            for c in &active {
                c.terminate();
            }
        }
        while !stopping && active.len() < k {
            let Some(i) = queue.next() else { break };
            let r = &p.file.runs[i];
            let mut args: Vec<String> = match p.actions[i] {
                Action::Resume => vec!["--resume".into(), r.id.clone()],
                _ => {
                    let mut v = vec![
                        "--preset".into(),
                        p.file.spec.preset.clone(),
                        "--name".into(),
                        r.id.clone(),
                    ];
                    for s in p.file.spec.sets.iter().chain(&r.sets) {
                        v.extend(["--set".into(), s.clone()]);
                    }
                    v
                }
            };
            args.extend(["--runs-dir".into(), runs_dir.clone()]);
            if let Some(n) = a.stop_at {
                args.extend(["--stop-at".into(), n.to_string()]);
            }
            let child = TrainChild::spawn(&r.id, threads, &args, true)?;
            eprintln!(
                "{} {} ({}; pid {})",
                if p.actions[i] == Action::Resume {
                    "resumed"
                } else {
                    "started"
                },
                r.id,
                r.sets.join(" "),
                child.id()
            );
            active.push(child);
        }
        if active.is_empty() {
            break;
        }
        let mut i = 0;
        while i < active.len() {
            match active[i].try_wait()? {
                Some(status) => {
                    let c = active.swap_remove(i);
                    let label = c.label.clone();
                    let last = c.last_lines();
                    if status.success() {
                        eprintln!("{label}: {}", outcome(&a.runs_dir, &p.file, &label));
                    } else {
                        eprintln!("{label} failed ({status})");
                        failed.push(format!("{label} ({status}): {}", last.join(" | ")));
                    }
                }
                None => i += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = rows(&p.file, &scan(&a.runs_dir, &p.file));
    if a.json {
        let mut out = String::new();
        for r in &rows {
            let mut v = serde_json::to_value(r)?;
            v["values"] = r
                .values
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into();
            out.push_str(&serde_json::to_string(&v)?);
            out.push('\n');
        }
        super::out(&out)?;
    } else {
        super::out(&table(&rows))?;
    }
    if !failed.is_empty() {
        bail!(
            "{} run(s) of sweep {} failed: {} (rerun the same command to retry what can be resumed)",
            failed.len(),
            p.file.name,
            failed.join("; ")
        );
    }
    if stopping {
        eprintln!(
            "sweep {} stopped; continue it with: ssmlab sweep --name {} --runs-dir {}",
            p.file.name,
            p.file.name,
            a.runs_dir.display()
        );
    }
    Ok(())
}

/// One line on how run `id` of the sweep ended: its state and best evaluation.
fn outcome(runs_dir: &std::path::Path, file: &crate::sweep::SweepFile, id: &str) -> String {
    let mut one = file.clone();
    one.runs.retain(|r| r.id == id);
    let Some(r) = rows(&one, &scan(runs_dir, &one)).into_iter().next() else {
        return "done".into();
    };
    match (r.best_eval_loss, r.best_step) {
        (Some(l), Some(s)) => format!(
            "{} — best eval {l:.4} at step {s}{}",
            r.state,
            r.acc_or_cas
                .map_or(String::new(), |a| format!(", acc/CAS {:.2}%", a * 100.0))
        ),
        _ => r.state,
    }
}
