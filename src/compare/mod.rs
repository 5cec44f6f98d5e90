//! "Do we need attention?": BiGS against its attention twin. A table of runs (parameters,
//! analytic FLOPs per token, throughput, final eval), and the scaling of a training step's
//! time per token with sequence length for each model, with the crossover length where the
//! SSM becomes cheaper. No UI here: the Compare view and `ssmlab compare` both use it.

use candle_core::Device;
use serde::Serialize;

pub mod step;

use step::{StepHow, bigs_step_seconds};

use crate::engine::bigs::{BigsConfig, Encoder};
use crate::runs::index::RunSummary;
use crate::train::RunConfig;

/// One run's line of the comparison table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: String,
    /// `bigs` or `bert`.
    pub model: String,
    pub parameters: usize,
    pub seq_len: usize,
    /// Analytic training FLOPs per token (matmuls; forward + backward; head at the masked
    /// share of positions).
    pub flops_per_token: f64,
    /// Median tokens/s over the run's log.
    pub tokens_per_s: Option<f64>,
    pub tokens: u64,
    pub wall_s: f64,
    pub eval_loss: Option<f64>,
    pub eval_acc: Option<f64>,
}

/// Training FLOPs per token of an MLM model at length `l` with a share `masked` of positions
/// predicted: 6 × (layers × per-layer MACs + masked × head MACs).
pub fn flops_per_token(c: &BigsConfig, l: usize, masked: f64) -> f64 {
    let (h, v) = (c.hidden_size as f64, c.vocab_size as f64);
    6.0 * (c.num_hidden_layers as f64 * c.layer_macs_per_token(l) + masked * (h * h + h * v))
}

/// The table row of an MLM run (None for other kinds of runs or unreadable configs).
pub fn run_row(run: &RunSummary) -> Option<RunRow> {
    let cfg: RunConfig = toml::from_str(&run.config_text).ok()?;
    let m = &cfg.model;
    let l = cfg.data.seq_len;
    let mut rates: Vec<f64> = run.metrics.iter().filter_map(|m| m.tokens_per_s).collect();
    rates.sort_by(f64::total_cmp);
    let last = run.metrics.last();
    let last = last.as_ref();
    let eval = run.last_eval();
    Some(RunRow {
        id: run.id.clone(),
        model: cfg.run.model.clone(),
        parameters: m.num_parameters(),
        seq_len: l,
        flops_per_token: flops_per_token(m, l, cfg.data.masking.prob),
        tokens_per_s: rates.get(rates.len() / 2).copied(),
        tokens: last.map_or(0, |m| m.tokens),
        wall_s: last.map_or(0.0, |m| m.wall_s),
        eval_loss: eval.map(|e| e.0),
        eval_acc: eval.and_then(|e| e.1),
    })
}

/// One measured point of the scaling curves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingPoint {
    pub model: String,
    pub seq_len: usize,
    pub batch: usize,
    /// Seconds of one training step (forward, backward, AdamW; head at masked positions)
    /// per token.
    pub s_per_token: f64,
}

/// Lengths of the scaling comparison.
pub const LENGTHS: [usize; 6] = [128, 256, 512, 1024, 2048, 4096];

/// Tokens per timed step of the scaling comparison (batch = TOKENS / L).
pub const TOKENS: usize = 8192;

/// Time a training step of each model at each length with `tokens` tokens per step (batch =
/// tokens / L, at least 1). `on_point` sees each point as it is measured and may return false
/// to stop.
pub fn scaling(
    models: &[(String, BigsConfig)],
    lengths: &[usize],
    tokens: usize,
    reps: usize,
    mut on_point: impl FnMut(&ScalingPoint) -> bool,
) -> crate::engine::Result<Vec<ScalingPoint>> {
    let mut out = Vec::new();
    for &l in lengths {
        for (name, cfg) in models {
            let mut cfg = cfg.clone();
            cfg.max_position_embeddings = cfg.max_position_embeddings.max(l);
            let batch = (tokens / l).max(1);
            let s = bigs_step_seconds(&cfg, batch, l, StepHow::TRAINER, reps, &Device::Cpu)?;
            let p = ScalingPoint {
                model: name.clone(),
                seq_len: l,
                batch,
                s_per_token: s / (batch * l) as f64,
            };
            let go = on_point(&p);
            out.push(p);
            if !go {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// The BiGS run and the attention run among `runs` (run id, config.toml text), first of each,
/// for the scaling comparison; None unless both are there.
pub fn scaling_pair(runs: &[(String, String)]) -> Option<[(String, String); 2]> {
    let pick = |e: Encoder| {
        runs.iter()
            .find(|(_, text)| toml::from_str::<RunConfig>(text).is_ok_and(|c| c.model.encoder == e))
            .cloned()
    };
    Some([pick(Encoder::Bigs)?, pick(Encoder::Attention)?])
}

/// [`scaling`] of MLM runs given as (run id, config.toml text).
pub fn scaling_of_runs(
    runs: &[(String, String)],
    lengths: &[usize],
    tokens: usize,
    reps: usize,
    on_point: impl FnMut(&ScalingPoint) -> bool,
) -> crate::engine::Result<Vec<ScalingPoint>> {
    let models = runs
        .iter()
        .map(|(id, text)| {
            let cfg: RunConfig = toml::from_str(text).map_err(|e| {
                crate::engine::EngineError::Input(format!("run {id}: config.toml: {e}"))
            })?;
            Ok((id.clone(), cfg.model))
        })
        .collect::<crate::engine::Result<Vec<_>>>()?;
    scaling(&models, lengths, tokens, reps, on_point)
}

/// The smallest measured length from which the BiGS model's time per token stays below the
/// attention model's at every longer measured length (None if it is not cheaper at the
/// longest). Measurement noise near the crossover cannot make it claim too early.
pub fn crossover(points: &[ScalingPoint], bigs: &str, attention: &str) -> Option<usize> {
    let at = |m: &str, l: usize| {
        points
            .iter()
            .find(|p| p.model == m && p.seq_len == l)
            .map(|p| p.s_per_token)
    };
    let mut ls: Vec<usize> = points.iter().map(|p| p.seq_len).collect();
    ls.sort_unstable();
    ls.dedup();
    let mut from = None;
    for l in ls.into_iter().rev() {
        match (at(bigs, l), at(attention, l)) {
            (Some(b), Some(a)) if b < a => from = Some(l),
            (Some(_), Some(_)) => break,
            _ => {}
        }
    }
    from
}

/// The two models of a preset pair (`bigs-tiny,bert-tiny`), checked to be one BiGS and one
/// attention model.
pub fn preset_pair(pair: &str) -> anyhow::Result<[(String, RunConfig); 2]> {
    let names: Vec<&str> = pair.split(',').map(str::trim).collect();
    let [a, b] = names[..] else {
        anyhow::bail!("--preset-pair {pair}: give two presets, e.g. bigs-tiny,bert-tiny");
    };
    let (ca, cb) = (
        crate::train::presets::preset(a)?,
        crate::train::presets::preset(b)?,
    );
    let kinds = (ca.model.encoder, cb.model.encoder);
    anyhow::ensure!(
        matches!(
            kinds,
            (Encoder::Bigs, Encoder::Attention) | (Encoder::Attention, Encoder::Bigs)
        ),
        "--preset-pair {pair}: one BiGS and one attention (bert-*) preset are compared"
    );
    anyhow::ensure!(
        ca.data == cb.data
            && ca.train.steps * ca.train.batch_size as u64
                == cb.train.steps * cb.train.batch_size as u64,
        "--preset-pair {pair}: the presets differ in data or token budget"
    );
    Ok([(a.to_string(), ca), (b.to_string(), cb)])
}

/// The comparison table as text.
pub fn table(rows: &[RunRow]) -> String {
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".into(), |x| format!("{x:.prec$}"));
    let mut s = format!(
        "{:<18} {:<5} {:>9} {:>5} {:>11} {:>9} {:>10} {:>8} {:>9} {:>8}\n",
        "run",
        "model",
        "params",
        "L",
        "MFLOP/tok",
        "tok/s",
        "tokens",
        "wall s",
        "eval loss",
        "eval acc"
    );
    for r in rows {
        s += &format!(
            "{:<18} {:<5} {:>9} {:>5} {:>11.2} {:>9} {:>10} {:>8.0} {:>9} {:>8}\n",
            crate::text::sanitize(&r.id),
            crate::text::sanitize(&r.model),
            r.parameters,
            r.seq_len,
            r.flops_per_token / 1e6,
            opt(r.tokens_per_s, 0),
            r.tokens,
            r.wall_s,
            opt(r.eval_loss, 4),
            opt(r.eval_acc.map(|a| a * 100.0), 2),
        );
    }
    s
}

/// One line of the image-size comparison of diffusion presets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageFlops {
    pub preset: String,
    pub side: usize,
    pub patch_size: usize,
    /// Stream tokens J = (side/p)² / M.
    pub tokens: usize,
    /// Forward FLOPs per image (2 × multiply-accumulates).
    pub gflops: f64,
}

/// Forward FLOPs per image of diffusion presets at square images of each `side`, with the
/// preset's patch size and unpatched (p = 1: DiffuSSM's point is that it needs no patch-size
/// compromise, while attention's cost grows with the square of the tokens).
pub fn image_flops(presets: &[String], sides: &[usize]) -> anyhow::Result<Vec<ImageFlops>> {
    let mut out = Vec::new();
    for p in presets {
        let cfg = crate::train::presets::diffusion_preset(p)?.model;
        for &side in sides {
            for patch in [cfg.patch_size, 1] {
                let mut c = cfg.clone();
                (c.image_height, c.image_width, c.patch_size) = (side, side, patch);
                if !side.is_multiple_of(patch) || !c.seq_len().is_multiple_of(c.hourglass) {
                    continue;
                }
                if out
                    .iter()
                    .any(|f: &ImageFlops| f.preset == *p && f.side == side && f.patch_size == patch)
                {
                    continue;
                }
                out.push(ImageFlops {
                    preset: p.clone(),
                    side,
                    patch_size: patch,
                    tokens: c.stream_len(),
                    gflops: 2.0 * c.macs_per_image() / 1e9,
                });
            }
        }
    }
    Ok(out)
}
