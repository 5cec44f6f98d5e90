//! Data parallelism inside one training step: the batch is cut into shards, each shard runs its
//! forward and backward pass on its own thread, and the shards' gradients are summed.
//!
//! Why: candle's CPU ops parallelise each op over the cores, which pays off for big matmuls
//! but less for the many small element-wise ops of a small model. One single-threaded shard
//! per core keeps every core busy for the whole step instead. Which is faster depends on the
//! model and the machine (`ssmlab bench` measures both; on the 2-core CI machine they were
//! within noise of each other for DiffuSSM and shards were 0.89× for the reference BiGS).
//! Shards only make sense when candle's own pools are single threaded
//! ([`single_threaded_ops`]); otherwise the shards queue on candle's op pool.

use std::ops::Range;

use candle_core::{Tensor, Var};

use crate::engine::{EngineError, Result};

/// The thread budget `ssmlab --threads N` gives the process (read by [`resolve_shards`]: a
/// sweep running runs side by side gives each its share of the cores).
pub const THREADS_ENV: &str = "SSMLAB_THREADS";

/// The cores this process may use: `--threads` ([`THREADS_ENV`]) if given, else every core.
pub fn thread_budget() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::env::var(THREADS_ENV)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(cores)
}

/// Resolve a configured shard count: 0 = one per core of the [`thread_budget`]; never more
/// shards than images.
pub fn resolve_shards(configured: usize, batch: usize) -> usize {
    let n = if configured == 0 {
        thread_budget()
    } else {
        configured
    };
    n.clamp(1, batch.max(1))
}

/// `batch` rows cut into `shards` contiguous ranges whose sizes differ by at most one.
pub fn shard_ranges(batch: usize, shards: usize) -> Vec<Range<usize>> {
    let shards = shards.clamp(1, batch.max(1));
    let (q, r) = (batch / shards, batch % shards);
    let mut start = 0;
    (0..shards)
        .map(|i| {
            let len = q + usize::from(i < r);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// Run `shard_loss` on each shard of `batch` rows (each on its own thread when there is more
/// than one), back-propagate each, and return the summed loss and the summed gradient of every
/// variable in `vars` (zeros where a variable got none). `shard_loss` must return the shard's
/// share of the batch loss (e.g. its sum of squared errors over the batch's element count), so
/// that the shares add up to the batch loss. Gradients are detached: they keep no graph.
pub fn sharded_grads<F>(
    vars: &[&Var],
    batch: usize,
    shards: usize,
    shard_loss: F,
) -> Result<(f64, Vec<Tensor>)>
where
    F: Fn(Range<usize>) -> Result<Tensor> + Sync,
{
    let one = |range: Range<usize>| -> Result<(f64, Vec<Option<Tensor>>)> {
        let loss = {
            let _time = crate::engine::cpu::prof::span("forward");
            shard_loss(range)?
        };
        let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Ok((value, vec![None; vars.len()]));
        }
        let grads = {
            let _time = crate::engine::cpu::prof::span("backward");
            loss.backward()?
        };
        // A gradient that reaches a variable directly (no op in between) still records its
        // backward graph, which references this step's activations: detach.
        Ok((
            value,
            vars.iter()
                .map(|v| grads.get(v.as_tensor()).map(Tensor::detach))
                .collect(),
        ))
    };
    let ranges = shard_ranges(batch, shards);
    let parts: Vec<(f64, Vec<Option<Tensor>>)> = if ranges.len() == 1 {
        vec![one(ranges[0].clone())?]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|r| {
                    let r = r.clone();
                    s.spawn(|| one(r))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EngineError::Input("a gradient shard panicked".into()))
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?
    };
    let loss = parts.iter().map(|(l, _)| l).sum();
    let mut sums = Vec::with_capacity(vars.len());
    for (i, v) in vars.iter().enumerate() {
        let mut acc: Option<Tensor> = None;
        for (_, g) in &parts {
            if let Some(g) = &g[i] {
                acc = Some(match acc {
                    None => g.clone(),
                    Some(a) => (a + g)?,
                });
            }
        }
        sums.push(match acc {
            Some(a) => a,
            None => v.as_tensor().zeros_like()?,
        });
    }
    Ok((loss, sums))
}

/// Make candle's CPU ops single-threaded (element-wise pool and matmuls), for sharded training.
/// Must run before the first candle op of the process (candle sizes its element-wise pool
/// once) and before other threads exist; a value the user set in `CANDLE_NUM_THREADS` or
/// `RAYON_NUM_THREADS` is kept (one that `--threads` set is the shards' budget, not the ops':
/// it is replaced). Returns false when the user's setting was kept.
pub fn single_threaded_ops() -> bool {
    let user_set = (std::env::var_os("CANDLE_NUM_THREADS").is_some()
        || std::env::var_os("RAYON_NUM_THREADS").is_some())
        && std::env::var_os(THREADS_ENV).is_none();
    if user_set {
        return false;
    }
    crate::runs::os::set_env_at_startup(&[("CANDLE_NUM_THREADS", "1"), ("RAYON_NUM_THREADS", "1")]);
    true
}
