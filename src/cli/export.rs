//! `ssmlab export RUN... --tensorboard DIR --csv FILE`: runs' metrics as TensorBoard event
//! files (one folder per run under DIR: `tensorboard --logdir DIR`) and/or one wide CSV.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::runs::RunDir;
use crate::runs::export::{run_scalars, wide_csv, write_event_file};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Runs: run directories, or names under --runs-dir.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder the names are looked up in.
    #[arg(long, default_value = "checkpoints")]
    pub runs_dir: PathBuf,
    /// Write TensorBoard event files into DIR/<run>/ (open with `tensorboard --logdir DIR`).
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
    /// Write every run's metrics into one wide CSV (a column per metric; `-` for stdout).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

fn resolve(arg: &Path, runs_dir: &Path) -> anyhow::Result<RunDir> {
    for p in [arg.to_path_buf(), runs_dir.join(arg)] {
        if p.join("metrics.jsonl").is_file() {
            return Ok(RunDir { path: p });
        }
    }
    bail!(
        "{}: not a run (no metrics.jsonl there, nor under {}); `ssmlab runs --runs-dir {}` \
         lists the runs",
        arg.display(),
        runs_dir.display(),
        runs_dir.display()
    )
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    if a.tensorboard.is_none() && a.csv.is_none() {
        bail!("nothing to write: give --tensorboard DIR and/or --csv FILE");
    }
    let mut all = Vec::new();
    for r in &a.runs {
        let run = resolve(r, &a.runs_dir)?;
        let (metrics, bad) = crate::runs::read_metrics(&run.metrics_path())
            .with_context(|| format!("reading {}", run.metrics_path().display()))?;
        if !bad.is_empty() {
            eprintln!(
                "{}: {} unreadable line(s) skipped (line {})",
                crate::text::path(&run.metrics_path()),
                bad.len(),
                bad[0]
            );
        }
        // Wall time: the run's start plus its training seconds (a run without a status
        // counts from the Unix epoch, so the steps and relative times still hold).
        let started = run.read_status().map_or(0.0, |s| s.started);
        if let Some(dir) = &a.tensorboard {
            let points = run_scalars(&metrics, started);
            let path = write_event_file(&dir.join(run.id()), &points)?;
            eprintln!(
                "wrote {} ({} scalars, {} records)",
                crate::text::path(&path),
                points.len(),
                metrics.len()
            );
        }
        all.push((run.id(), metrics));
    }
    if let Some(csv) = &a.csv {
        let text = wide_csv(&all);
        if csv.as_os_str() == "-" {
            super::out(&text)?;
        } else {
            crate::runs::write_atomic(csv, text.as_bytes())?;
            eprintln!(
                "wrote {} ({} rows)",
                crate::text::path(csv),
                text.lines().count() - 1
            );
        }
    }
    if let Some(dir) = &a.tensorboard {
        eprintln!("open with: tensorboard --logdir {}", crate::text::path(dir));
    }
    Ok(())
}
