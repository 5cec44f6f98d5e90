//! AdamW with parameter groups and state that can be saved and restored exactly (candle-nn's
//! AdamW keeps its moments private), the learning-rate schedule, and gradient clipping.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{CpuStorage, DType, Layout, Tensor, Var};
use rayon::prelude::*;

use crate::engine::cpu::simd::vectorised;
use crate::engine::{EngineError, Result};

/// One parameter and how it is optimised.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
    pub weight_decay: f64,
    pub lr_scale: f64,
}

/// AdamW (decoupled weight decay, as optax/PyTorch): per parameter
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `p ← p − lr·(m̂/(√v̂ + ε) + wd·p)`.
pub struct AdamW {
    pub params: Vec<Param>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken so far.
    pub t: u64,
    /// Update f32/f64 CPU parameters with three in-place passes (moments, then the weights)
    /// instead of a dozen tensor ops each allocating a new tensor (the default; the bench
    /// measures both).
    pub fused: bool,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(params: Vec<Param>, beta1: f64, beta2: f64, eps: f64) -> Result<Self> {
        // Separate buffers: the fused update writes the moments in place.
        let zeros = || {
            params
                .iter()
                .map(|p| p.var.as_tensor().zeros_like())
                .collect::<candle_core::Result<Vec<_>>>()
        };
        Ok(Self {
            m: zeros()?,
            v: zeros()?,
            params,
            beta1,
            beta2,
            eps,
            t: 0,
            // The in-place update on the CPU unless the fused kernels are switched off.
            fused: crate::engine::cpu::enabled(),
        })
    }

    /// One update with gradients `grads[i]` of `params[i]` at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        let _time = crate::engine::cpu::prof::span("optimizer");
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (i, (p, g)) in self.params.iter().zip(grads).enumerate() {
            let lr_p = lr * p.lr_scale;
            let w = p.var.as_tensor();
            if self.fused && fusable(w) && g.dtype() == w.dtype() {
                let g = g.contiguous()?;
                self.m[i].inplace_op2(
                    &g,
                    &MomentOp {
                        beta: b1,
                        square: false,
                    },
                )?;
                self.v[i].inplace_op2(
                    &g,
                    &MomentOp {
                        beta: b2,
                        square: true,
                    },
                )?;
                let op = UpdateOp {
                    lr: lr_p,
                    c1,
                    c2,
                    eps: self.eps,
                    keep: 1.0 - lr_p * p.weight_decay,
                };
                w.inplace_op3(&self.m[i], &self.v[i], &op)?;
                continue;
            }
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.eps)?)?;
            let decayed = if p.weight_decay > 0.0 {
                (w * (1.0 - lr_p * p.weight_decay))?
            } else {
                w.clone()
            };
            p.var.set(&(decayed - (update * lr_p)?)?)?;
            // the moments must not record a graph (see `Ema::update`)
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }

    /// Moments as `m.<name>` / `v.<name>` tensors (the step count travels in the run state).
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for (i, p) in self.params.iter().enumerate() {
            map.insert(format!("m.{}", p.name), self.m[i].clone());
            map.insert(format!("v.{}", p.name), self.v[i].clone());
        }
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    /// Restores moments saved by [`AdamW::save`] and the step count `t`.
    pub fn load(&mut self, path: &Path, t: u64) -> Result<()> {
        let dev = self.params.first().map(|p| p.var.device().clone());
        let Some(dev) = dev else { return Ok(()) };
        let map =
            candle_core::safetensors::load(path, &dev).map_err(|e| EngineError::Checkpoint {
                path: path.into(),
                msg: e.to_string(),
            })?;
        for (i, p) in self.params.iter().enumerate() {
            for (prefix, slot) in [("m", &mut self.m), ("v", &mut self.v)] {
                let key = format!("{prefix}.{}", p.name);
                let t = map.get(&key).ok_or_else(|| EngineError::MissingTensor {
                    path: path.into(),
                    name: key.clone(),
                    expected: p.var.dims().to_vec(),
                })?;
                if t.dims() != p.var.dims() {
                    return Err(EngineError::ShapeMismatch {
                        path: path.into(),
                        name: key,
                        expected: p.var.dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
                // a copy: the fused update writes the moments in place
                slot[i] = t.to_dtype(p.var.dtype())?.copy()?;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Whether a tensor can take the fused in-place update.
fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64) && t.is_contiguous()
}

/// The contiguous elements of a storage as `&[T]` / `&mut [T]` for a contiguous layout.
macro_rules! slices {
    ($s:expr, $l:expr, $variant:ident) => {
        match $s {
            CpuStorage::$variant(v) => {
                Some(&v[$l.start_offset()..$l.start_offset() + $l.shape().elem_count()])
            }
            _ => None,
        }
    };
}

/// `m ← β·m + (1 − β)·g` (or `g²` for the second moment), in place.
struct MomentOp {
    beta: f64,
    square: bool,
}

const CHUNK: usize = 1 << 14;

impl candle_core::InplaceOp2 for MomentOp {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        if !l1.is_contiguous() || !l2.is_contiguous() {
            candle_core::bail!("adamw-moment: contiguous operands only");
        }
        let (o1, n) = (l1.start_offset(), l1.shape().elem_count());
        macro_rules! run {
            ($t:ty, $m:expr, $g:expr) => {{
                let (b, sq) = (self.beta as $t, self.square);
                $m[o1..o1 + n]
                    .par_chunks_mut(CHUNK)
                    .zip($g.par_chunks(CHUNK))
                    .for_each(|(m, g)| {
                        vectorised(
                            #[inline(always)]
                            || {
                                // same lengths: no bounds check in the loop
                                let g = &g[..m.len()];
                                for j in 0..m.len() {
                                    let x = if sq { g[j] * g[j] } else { g[j] };
                                    m[j] = b * m[j] + (1.0 - b) * x;
                                }
                            },
                        )
                    });
            }};
        }
        match s1 {
            CpuStorage::F32(m) => {
                let g = slices!(s2, l2, F32)
                    .ok_or_else(|| candle_core::Error::Msg("adamw-moment: dtypes differ".into()))?;
                run!(f32, m, g)
            }
            CpuStorage::F64(m) => {
                let g = slices!(s2, l2, F64)
                    .ok_or_else(|| candle_core::Error::Msg("adamw-moment: dtypes differ".into()))?;
                run!(f64, m, g)
            }
            _ => candle_core::bail!("adamw-moment: f32 or f64 only"),
        }
        Ok(())
    }
}

/// `p ← keep·p − lr·(m/c₁)/(√(v/c₂) + ε)`, in place (`keep = 1 − lr·wd`).
struct UpdateOp {
    lr: f64,
    c1: f64,
    c2: f64,
    eps: f64,
    keep: f64,
}

impl candle_core::InplaceOp3 for UpdateOp {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        if !l1.is_contiguous() || !l2.is_contiguous() || !l3.is_contiguous() {
            candle_core::bail!("adamw-update: contiguous operands only");
        }
        let (o1, n) = (l1.start_offset(), l1.shape().elem_count());
        let bad = || candle_core::Error::Msg("adamw-update: dtypes differ".into());
        macro_rules! run {
            ($t:ty, $p:expr, $m:expr, $v:expr) => {{
                let (lr, c1, c2, eps, keep) = (
                    self.lr as $t,
                    self.c1 as $t,
                    self.c2 as $t,
                    self.eps as $t,
                    self.keep as $t,
                );
                $p[o1..o1 + n]
                    .par_chunks_mut(CHUNK)
                    .zip($m.par_chunks(CHUNK))
                    .zip($v.par_chunks(CHUNK))
                    .for_each(|((p, m), v)| {
                        // 8 wide on AVX2: the divisions and square roots are most of its time
                        vectorised(
                            #[inline(always)]
                            || {
                                let (m, v) = (&m[..p.len()], &v[..p.len()]);
                                for j in 0..p.len() {
                                    p[j] = keep * p[j]
                                        - lr * ((m[j] / c1) / ((v[j] / c2).sqrt() + eps));
                                }
                            },
                        )
                    });
            }};
        }
        match s1 {
            CpuStorage::F32(p) => {
                let m = slices!(s2, l2, F32).ok_or_else(bad)?;
                let v = slices!(s3, l3, F32).ok_or_else(bad)?;
                run!(f32, p, m, v)
            }
            CpuStorage::F64(p) => {
                let m = slices!(s2, l2, F64).ok_or_else(bad)?;
                let v = slices!(s3, l3, F64).ok_or_else(bad)?;
                run!(f64, p, m, v)
            }
            _ => candle_core::bail!("adamw-update: f32 or f64 only"),
        }
        Ok(())
    }
}

/// Exponential moving average of the parameters (sampling weights of diffusion models):
/// `e ← d·e + (1 − d)·w` with `d = min(decay, (1 + n)/(10 + n))` after n updates.
pub struct Ema {
    pub decay: f64,
    pub updates: u64,
    /// One tensor per optimiser parameter, in the same order.
    pub tensors: Vec<Tensor>,
}

impl Ema {
    pub fn new(params: &[Param], decay: f64) -> Result<Self> {
        let tensors = params
            .iter()
            .map(|p| Ok(p.var.as_tensor().copy()?.detach()))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            decay,
            updates: 0,
            tensors,
        })
    }

    pub fn update(&mut self, params: &[Param]) -> Result<()> {
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        for (e, p) in self.tensors.iter_mut().zip(params) {
            // detached: an op on a Var records the graph, and each average would keep the
            // whole chain of earlier averages alive (a leak of three parameter copies a step)
            *e = ((&*e * d)? + (p.var.as_tensor() * (1.0 - d))?)?.detach();
        }
        self.updates += 1;
        Ok(())
    }

    /// Saved under the parameters' own names: the file loads as a model checkpoint.
    pub fn save(&self, path: &Path, params: &[Param]) -> Result<()> {
        let map: HashMap<String, Tensor> = params
            .iter()
            .zip(&self.tensors)
            .map(|(p, t)| (p.name.clone(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    pub fn load(&mut self, path: &Path, params: &[Param]) -> Result<()> {
        let Some(dev) = params.first().map(|p| p.var.device().clone()) else {
            return Ok(());
        };
        let map = crate::engine::weights::read_checkpoint(path, &dev)?;
        for (p, slot) in params.iter().zip(self.tensors.iter_mut()) {
            let t = map.get(&p.name).ok_or_else(|| EngineError::MissingTensor {
                path: path.into(),
                name: p.name.clone(),
                expected: p.var.dims().to_vec(),
            })?;
            if t.dims() != p.var.dims() {
                return Err(EngineError::ShapeMismatch {
                    path: path.into(),
                    name: p.name.clone(),
                    expected: p.var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            *slot = t.to_dtype(p.var.dtype())?;
        }
        Ok(())
    }
}

/// Linear warm-up to `peak` over `warmup` steps, then cosine decay to `min_ratio·peak` at `total`.
/// `step` counts from 1.
pub fn lr_at(step: u64, peak: f64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).clamp(0.0, 1.0);
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    peak * (min_ratio + (1.0 - min_ratio) * cos)
}

/// Global L2 norm of a set of gradients (in f64).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0.0;
    for g in grads {
        sq += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm`; returns the norm before.
pub fn clip_grads(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

/// Parameter groups: no decay on biases and LayerNorms; the SSM's A and step size (BiGS:
/// `A_re`, `A_im`, `log_step`; s4: `log_A_real`, `A_imag`, `log_dt`) with their own lr scale and
/// (optionally) no decay.
pub(crate) fn param_groups(
    varmap: &candle_nn::VarMap,
    o: &super::config::OptimSection,
) -> Vec<Param> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let leaf = name.rsplit('.').next().unwrap_or(name);
            let ssm = matches!(
                leaf,
                "A_re" | "A_im" | "log_step" | "log_A_real" | "A_imag" | "log_dt"
            );
            let no_decay = leaf == "bias" || name.contains("LayerNorm");
            let wd = if no_decay || (ssm && !o.ssm_weight_decay) {
                0.0
            } else {
                o.weight_decay
            };
            Param {
                name: name.clone(),
                var: data[name].clone(),
                weight_decay: wd,
                lr_scale: if ssm { o.ssm_lr_scale } else { 1.0 },
            }
        })
        .collect()
}
