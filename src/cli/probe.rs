//! `ssmlab probe`: masked-token predictions from any checkpoint.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::probe::ProbeModel;
use crate::text::sanitize;

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// A run directory (latest checkpoint), a step-N checkpoint, or a Hugging Face BiGS folder.
    #[arg(long, default_value = "checkpoints/bigs-mobydick")]
    pub model: PathBuf,
    /// The prompt, with one or more [MASK] (each scored independently).
    pub text: String,
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Words whose probability and rank to report, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Do not pad to the model's maximum length (the reference checkpoints expect padding).
    #[arg(long)]
    pub no_pad: bool,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also fill the masks jointly, left to right (each takes its best token in turn).
    #[arg(long)]
    pub joint: bool,
}

pub fn run(a: ProbeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.top_k > 0, "--top-k must be at least 1");
    let t0 = std::time::Instant::now();
    let pm = ProbeModel::open(&a.model, &candle_core::Device::Cpu)
        .with_context(|| format!("cannot open model {}", a.model.display()))?;
    let load_s = t0.elapsed().as_secs_f64();
    let out = pm.fill_mask(&a.text, a.top_k, &a.targets, !a.no_pad)?;
    let joint = if a.joint {
        Some(pm.fill_joint(&a.text, !a.no_pad)?)
    } else {
        None
    };
    if a.json {
        let mut v = serde_json::to_value(&out)?;
        v["parameters"] = pm.parameters.into();
        v["unused_tensors"] = serde_json::to_value(&pm.report.unused)?;
        if let Some(j) = &joint {
            v["joint"] = serde_json::json!(
                j.iter()
                    .map(|(p, t, pr)| serde_json::json!({"position": p, "token": t, "prob": pr}))
                    .collect::<Vec<_>>()
            );
        }
        println!("{v}");
        return Ok(());
    }
    println!(
        "{} ({} parameters, loaded in {:.2}s){}",
        pm.files.weights.display(),
        pm.parameters,
        load_s,
        if pm.report.unused.is_empty() {
            String::new()
        } else {
            format!("; unused tensors: {}", pm.report.unused.join(", "))
        }
    );
    println!("input: {}", sanitize(&out.tokens.join(" ")));
    for m in &out.masks {
        println!(
            "\n[MASK] at position {} (entropy {:.2} nats)",
            m.position, m.entropy
        );
        let best = m.top.first().map(|c| c.prob).unwrap_or(1.0).max(1e-12);
        for c in &m.top {
            let bar = "█".repeat(((c.prob / best) * 30.0).round() as usize);
            println!(
                "  {:<16} {:>6.2}%  {:>7.3}  {bar}",
                sanitize(&c.token),
                c.prob * 100.0,
                c.logprob
            );
        }
        for t in &m.targets {
            let note = if t.pieces > 1 {
                format!(" (first of {} pieces: {})", t.pieces, sanitize(&t.piece))
            } else {
                String::new()
            };
            println!(
                "  target {:<10} {:>6.2}%  rank {}{note}",
                sanitize(&t.word),
                t.prob * 100.0,
                t.rank
            );
        }
    }
    if let Some(j) = joint {
        let filled: Vec<String> = j
            .iter()
            .map(|(p, t, pr)| format!("{} @{p} ({:.1}%)", sanitize(t), pr * 100.0))
            .collect();
        println!("\njoint left-to-right fill: {}", filled.join(", "));
    }
    Ok(())
}
