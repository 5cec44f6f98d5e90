//! `ssmlab compare`: launch a BiGS/attention preset pair, compare runs, measure the scaling.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use super::child::TrainChild;

use crate::compare::{LENGTHS, RunRow, crossover, preset_pair, run_row, scaling};
use crate::engine::bigs::{BigsConfig, Encoder};
use crate::runs::index::RunsIndex;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Launch both presets of a pair (one BiGS, one attention; same data, seed and token
    /// budget), side by side, and print the comparison when both have finished.
    #[arg(long, value_name = "BIGS,BERT")]
    pub preset_pair: Option<String>,
    /// With --preset-pair: return once both runs are started (watch them in the TUI).
    #[arg(long)]
    pub detach: bool,
    /// Override a configuration key of both runs (repeatable), e.g. --set train.steps=500.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Compare sweeps (`ssmlab sweep`), one arm each: the best run of each arm (lowest eval
    /// loss), the spread over its runs, and the best runs at equal tokens and at equal wall
    /// time. An arm of several sweeps joins them with `+`, e.g.
    /// --sweeps bigs-lr+bigs-lr2,bert-lr+bert-lr2.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub sweeps: Vec<String>,
    /// Forward FLOPs per image of diffusion presets (e.g. diffussm-fashion,dit-fashion) at
    /// square images of --sides, with each preset's patch size and unpatched.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub image_flops: Vec<String>,
    /// Image sides of --image-flops.
    #[arg(long, value_delimiter = ',', default_values_t = [28usize, 56, 112, 224])]
    pub sides: Vec<usize>,
    /// Compare these runs (ids under --runs-dir, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub runs: Vec<String>,
    /// Time a training step per token at L = 128 … 4096 for both models (of --runs or
    /// --preset-pair) and report where BiGS becomes cheaper.
    #[arg(long)]
    pub scaling: bool,
    /// Tokens per step of the scaling measurement (batch = tokens / L).
    #[arg(long, default_value_t = crate::compare::TOKENS)]
    pub tokens: usize,
    #[arg(long, value_delimiter = ',', default_values_t = LENGTHS)]
    pub lengths: Vec<usize>,
    #[arg(long, default_value = "checkpoints")]
    pub runs_dir: PathBuf,
    /// JSON lines instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    if !a.sweeps.is_empty() {
        return compare_sweeps(&a);
    }
    if !a.image_flops.is_empty() {
        let rows = crate::compare::image_flops(&a.image_flops, &a.sides)?;
        let mut text = String::new();
        if !a.json {
            text.push_str("preset              image    patch  tokens   GFLOP/image (forward)\n");
        }
        for r in &rows {
            if a.json {
                text.push_str(&serde_json::to_string(r)?);
                text.push('\n');
            } else {
                text.push_str(&format!(
                    "{:<18}  {:>3}×{:<3}  {:>5}  {:>6}  {:>10.3}\n",
                    r.preset, r.side, r.side, r.patch_size, r.tokens, r.gflops
                ));
            }
        }
        return super::out(&text);
    }
    let mut models: Vec<(String, BigsConfig)> = Vec::new();
    let mut ids: Vec<String> = a.runs.clone();
    if let Some(pair) = &a.preset_pair {
        let pair = preset_pair(pair)?;
        for (name, cfg) in &pair {
            let cfg = cfg.with_overrides(&a.sets)?;
            cfg.validate()?;
            models.push((name.clone(), cfg.model.clone()));
            ids.push(cfg.run.name.clone());
        }
        if !a.scaling {
            launch(&a, &pair.map(|(n, _)| n))?;
            if a.detach {
                return Ok(());
            }
        }
    }
    if a.scaling {
        if models.is_empty() {
            for id in &a.runs {
                let cfg = crate::train::RunConfig::from_toml_file(
                    &a.runs_dir.join(id).join("config.toml"),
                )
                .with_context(|| {
                    format!("--runs {id}: not an MLM run under {}", a.runs_dir.display())
                })?;
                models.push((id.clone(), cfg.model));
            }
        }
        return print_scaling(&a, &models);
    }
    if ids.is_empty() {
        bail!("give --preset-pair BIGS,BERT, --runs A,B or --scaling (see --help)");
    }
    print_table(&a, &ids)
}

/// Starts both runs as `ssmlab train` processes sharing the cores, and waits for them.
fn launch(a: &CompareArgs, presets: &[String; 2]) -> anyhow::Result<()> {
    let threads = (crate::train::parallel::thread_budget() / 2).max(1);
    let mut children = Vec::new();
    for p in presets {
        let mut args: Vec<String> = vec!["--preset".into(), p.clone(), "--runs-dir".into()];
        args.push(a.runs_dir.to_string_lossy().into_owned());
        for s in &a.sets {
            args.extend(["--set".into(), s.clone()]);
        }
        let child = TrainChild::spawn(p, threads, &args, !a.detach)?;
        eprintln!("started {p} (pid {}, {threads} thread(s))", child.id());
        children.push(child);
    }
    if a.detach {
        eprintln!("watch them in the TUI (ssmlab, Compare view) or: ssmlab compare --runs ...");
        return Ok(());
    }
    let mut failed = Vec::new();
    for mut child in children {
        let status = child.wait()?;
        let p = child.label.clone();
        let last = child.last_lines();
        if status.success() {
            eprintln!("{p}: {}", last.last().map_or("done", String::as_str));
        } else {
            failed.push(format!("{p} ({status}): {}", last.join(" | ")));
        }
    }
    if !failed.is_empty() {
        bail!("training failed: {}", failed.join("; "));
    }
    Ok(())
}

fn print_table(a: &CompareArgs, ids: &[String]) -> anyhow::Result<()> {
    let runs = RunsIndex::new().scan(&a.runs_dir);
    let mut rows: Vec<RunRow> = Vec::new();
    for id in ids {
        let run = runs
            .iter()
            .find(|r| &r.id == id)
            .with_context(|| format!("no run {id} under {}", a.runs_dir.display()))?;
        rows.push(run_row(run).with_context(|| {
            format!("{id} is not a masked-LM run (bigs or bert); diffusion runs are not compared")
        })?);
    }
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print!("{}", crate::compare::table(&rows));
    }
    Ok(())
}

fn print_scaling(a: &CompareArgs, models: &[(String, BigsConfig)]) -> anyhow::Result<()> {
    let find = |e: Encoder| models.iter().find(|(_, c)| c.encoder == e).map(|(n, _)| n);
    let (Some(b), Some(t)) = (find(Encoder::Bigs), find(Encoder::Attention)) else {
        bail!("--scaling needs one BiGS and one attention model (--preset-pair or --runs)");
    };
    if !a.json {
        eprintln!(
            "time per token of a training step, {} tokens per step",
            a.tokens
        );
    }
    let points = scaling(models, &a.lengths, a.tokens, 2, |p| {
        if a.json {
            println!("{}", crate::engine::serial::json(p));
        } else {
            println!(
                "{:<14} L={:<5} batch {:<4} {:>9.2} µs/token",
                p.model,
                p.seq_len,
                p.batch,
                p.s_per_token * 1e6
            );
        }
        true
    })?;
    let x = crossover(&points, b, t);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"crossover_seq_len": x, "bigs": b, "attention": t})
        );
    } else {
        match x {
            Some(l) => println!(
                "{b} is cheaper per token than {t} from L = {l} on (every longer L measured)"
            ),
            None => println!("{b} is not cheaper per token than {t} at any measured length"),
        }
    }
    Ok(())
}

/// `--sweeps A,B`: each arm's best run and spread, and the best runs at a shared budget.
fn compare_sweeps(a: &CompareArgs) -> anyhow::Result<()> {
    if a.sweeps.len() < 2 {
        bail!("--sweeps needs two arms or more, e.g. --sweeps bigs-tiny-lr,bert-tiny-lr");
    }
    let mut arms = Vec::new();
    for arm in &a.sweeps {
        let mut files = Vec::new();
        let mut runs = Vec::new();
        for name in arm.split('+').map(str::trim) {
            let p = crate::sweep::plan(&a.runs_dir, name, None)
                .with_context(|| format!("--sweeps {arm}"))?;
            runs.extend(crate::sweep::scan(&a.runs_dir, &p.file));
            files.push(p.file);
        }
        arms.push((arm.clone(), files, runs));
    }
    let (budget, reports) = crate::sweep::compare_arms(&arms)?;
    if a.json {
        let mut text = String::new();
        for r in &reports {
            let mut v = serde_json::to_value(r)?;
            v["budget"] = serde_json::to_value(budget)?;
            text.push_str(&serde_json::to_string(&v)?);
            text.push('\n');
        }
        super::out(&text)
    } else {
        super::out(&crate::sweep::compare_table(&budget, &reports))
    }
}
