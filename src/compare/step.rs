//! A timed MLM training step (forward, backward, AdamW) of a fresh model on random ids: what the
//! scaling comparison measures, and what `ssmlab bench` reports for BiGS.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::engine::Result;
use crate::engine::bigs::{BigsConfig, Mode, build_bigs, cross_entropy};
use crate::train::optim::{AdamW, param_groups};
use crate::train::parallel::sharded_grads;

/// Where the MLM head runs in a BiGS training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// Logits only at the masked positions (what the trainer does).
    Masked,
    /// Logits at every position, then the loss reads the masked ones (the naive way).
    All,
    /// No head: the loss is the mean square of the encoder output (scaling runs).
    None,
}

/// Masked positions per sequence of length `l` in a timed step (15%, at least one).
pub fn masked_per_seq(l: usize) -> usize {
    (l * 15 / 100).max(1)
}

fn median(mut ts: Vec<f64>) -> f64 {
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

/// Run `f` once to warm up, then `reps` times; the median seconds.
pub fn timed(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    // the stage table (`SSMLAB_PROFILE=1`) covers the timed steps only
    crate::engine::cpu::prof::reset();
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let _time = crate::engine::cpu::prof::span("step");
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(ts))
}

/// How a benchmarked MLM training step runs.
#[derive(Debug, Clone, Copy)]
pub struct StepHow {
    pub head: Head,
    /// Data-parallel shards (0 = one per core).
    pub shards: usize,
    pub fused_optim: bool,
    /// Through candle's autograd graph even where the fused masked-LM step applies.
    pub graph: bool,
}

impl StepHow {
    /// The trainer's way: head at masked positions, no shards, fused AdamW.
    pub const TRAINER: StepHow = StepHow {
        head: Head::Masked,
        shards: 1,
        fused_optim: true,
        graph: false,
    };
}

/// Median seconds of one MLM training step (forward, backward, AdamW) of a fresh model on
/// random ids, 15% of positions masked, with the head run as `head` says.
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "presets of the fixed list exist (tested)"
)]
pub fn bigs_step_seconds(
    cfg: &BigsConfig,
    batch: usize,
    l: usize,
    how: StepHow,
    reps: usize,
    dev: &Device,
) -> Result<f64> {
    let StepHow {
        head,
        shards,
        fused_optim,
        graph,
    } = how;
    let dev = dev.clone();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (model, varmap) = build_bigs(cfg, DType::F32, &dev, &mut rng)?;
    let optim = crate::train::presets::preset("bigs-mobydick")
        .expect("preset")
        .optim;
    let mut opt = AdamW::new(
        param_groups(&varmap, &optim),
        optim.beta1,
        optim.beta2,
        optim.eps,
    )?;
    opt.fused = fused_optim;
    let ids: Vec<u32> = (0..batch * l)
        .map(|_| rng.random_range(5..cfg.vocab_size as u32))
        .collect();
    let per = masked_per_seq(l);
    let mut labels = vec![-100i64; batch * l];
    let mut positions = Vec::with_capacity(batch * per);
    for s in 0..batch {
        for j in 0..per {
            let p = s * l + (j * l / per);
            labels[p] = ids[p] as i64;
            positions.push(p as u32);
        }
    }
    let targets: Vec<u32> = positions.iter().map(|&p| ids[p as usize]).collect();
    let ids = Tensor::from_vec(ids, (batch, l), &dev)?;
    let labels = Tensor::from_vec(labels, (batch, l), &dev)?;
    let targets = Tensor::new(targets.as_slice(), &dev)?;
    let owned: Vec<Var> = opt.params.iter().map(|p| p.var.clone()).collect();
    let vars: Vec<&Var> = owned.iter().collect();
    let drng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut step = || -> Result<()> {
        // The trainer's way (one shard, the head at the masked rows): the fused CPU pass where
        // it applies, as `train::mlm` runs it.
        if shards == 1 && head == Head::Masked && !graph {
            let g = model.mlm_loss_grads(&ids, &labels, Mode::Train(&mut drng.clone()))?;
            let grads = vars
                .iter()
                .map(|v| match g.get(v.as_tensor()) {
                    Some(g) => Ok(g.clone()),
                    None => v.as_tensor().zeros_like(),
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            opt.step(&grads, 1e-4)?;
            return Ok(());
        }
        // Each shard's loss is its mean over its rows times its share of the rows (every
        // sequence has the same number of masked positions).
        let (_, grads) = sharded_grads(&vars, batch, shards, |r| {
            let share = r.len() as f64 / batch as f64;
            let ids = ids.narrow(0, r.start, r.len())?;
            let loss = match head {
                Head::Masked => {
                    let labels = labels.narrow(0, r.start, r.len())?;
                    model
                        .mlm_loss(&ids, None, &labels, Mode::Train(&mut drng.clone()))?
                        .loss
                }
                Head::All => {
                    let hidden = model.hidden_states(&ids, None, Mode::Eval)?;
                    let (b, l, _) = hidden.dims3()?;
                    let logits = model.logits(&hidden)?;
                    let v = logits.dim(2)?;
                    let first = (r.start * l) as u32;
                    let pos: Vec<u32> = positions[r.start * per..r.end * per]
                        .iter()
                        .map(|p| p - first)
                        .collect();
                    let pos = Tensor::new(pos.as_slice(), &dev)?;
                    let sel = logits.reshape((b * l, v))?.index_select(&pos, 0)?;
                    let tg = targets.narrow(0, r.start * per, r.len() * per)?;
                    cross_entropy(&sel, &tg)?
                }
                Head::None => model
                    .hidden_states(&ids, None, Mode::Eval)?
                    .sqr()?
                    .mean_all()?,
            };
            Ok((loss * share)?)
        })?;
        opt.step(&grads, 1e-4)?;
        Ok(())
    };
    timed(reps, &mut step)
}
