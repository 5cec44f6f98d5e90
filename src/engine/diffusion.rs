//! Gaussian diffusion (DDPM, Ho et al. 2020) with ε-prediction: the noise schedules, the forward
//! process, the DDPM (ancestral) and DDIM samplers on any subsequence of timesteps, and
//! classifier-free guidance. candle's own diffusion helpers are not used: its
//! `betas_for_alpha_bar` divides integers, so its cosine schedule comes out wrong. The schedule
//! and process of DiffuSSM are in `docs/models.md` §2(c).

use candle_core::{DType, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::diffussm::Diffussm;
use super::error::{EngineError, Result};
use super::init::normal;

/// β schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BetaSchedule {
    /// β linear from `beta_start` to `beta_end` (DDPM, DiT, DiffuSSM).
    #[default]
    Linear,
    /// `ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2)`, s = 0.008, β clipped at 0.999 (Nichol & Dhariwal).
    Cosine,
}

/// The diffusion process (the `[diffusion]` section of a run's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    pub timesteps: usize,
    pub schedule: BetaSchedule,
    pub beta_start: f64,
    pub beta_end: f64,
    /// Probability that a training label is replaced by the null class (classifier-free guidance).
    pub class_dropout: f64,
    /// Clip the predicted x₀ to [−1, 1] while sampling.
    pub clip_denoised: bool,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            timesteps: 1000,
            schedule: BetaSchedule::Linear,
            beta_start: 1e-4,
            beta_end: 0.02,
            class_dropout: 0.1,
            clip_denoised: true,
        }
    }
}

/// Which sampler.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// Ancestral sampling with the posterior variance β̃ (respaced when fewer than T steps).
    Ddpm,
    /// DDIM with stochasticity η (0 = deterministic).
    Ddim { eta: f64 },
}

impl SamplerKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ddpm => "ddpm",
            Self::Ddim { .. } => "ddim",
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ddpm" => Ok(Self::Ddpm),
            "ddim" => Ok(Self::Ddim { eta: 0.0 }),
            _ => Err(format!("unknown sampler `{s}` (expected ddim or ddpm)")),
        }
    }
}

/// Precomputed schedule quantities, index t = 0 … T−1 (f64 on the host).
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub betas: Vec<f64>,
    pub alphas: Vec<f64>,
    /// ᾱ_t = Π_{s≤t} α_s.
    pub alpha_bar: Vec<f64>,
    /// ᾱ_{t−1} (1 at t = 0).
    pub alpha_bar_prev: Vec<f64>,
    /// β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t).
    pub posterior_variance: Vec<f64>,
    /// μ̃_t = coef1·x₀ + coef2·x_t.
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
}

impl NoiseSchedule {
    pub fn new(cfg: &DiffusionConfig) -> Result<Self> {
        let t = cfg.timesteps;
        if t < 2 {
            return Err(EngineError::ConfigField {
                field: "diffusion.timesteps",
                msg: "needs at least 2 steps".into(),
            });
        }
        let betas: Vec<f64> = match cfg.schedule {
            BetaSchedule::Linear => {
                if !(0.0 < cfg.beta_start && cfg.beta_start <= cfg.beta_end && cfg.beta_end < 1.0) {
                    return Err(EngineError::ConfigField {
                        field: "diffusion.beta_start",
                        msg: "need 0 < beta_start ≤ beta_end < 1".into(),
                    });
                }
                (0..t)
                    .map(|i| {
                        cfg.beta_start + (cfg.beta_end - cfg.beta_start) * i as f64 / (t - 1) as f64
                    })
                    .collect()
            }
            BetaSchedule::Cosine => {
                let s = 0.008;
                let f = |i: usize| {
                    let x = (i as f64 / t as f64 + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2;
                    x.cos().powi(2)
                };
                (0..t).map(|i| (1.0 - f(i + 1) / f(i)).min(0.999)).collect()
            }
        };
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alpha_bar = Vec::with_capacity(t);
        let mut acc = 1.0;
        for a in &alphas {
            acc *= a;
            alpha_bar.push(acc);
        }
        let alpha_bar_prev: Vec<f64> = std::iter::once(1.0)
            .chain(alpha_bar[..t - 1].iter().copied())
            .collect();
        let posterior_variance = (0..t)
            .map(|i| betas[i] * (1.0 - alpha_bar_prev[i]) / (1.0 - alpha_bar[i]))
            .collect();
        let posterior_mean_coef1 = (0..t)
            .map(|i| betas[i] * alpha_bar_prev[i].sqrt() / (1.0 - alpha_bar[i]))
            .collect();
        let posterior_mean_coef2 = (0..t)
            .map(|i| (1.0 - alpha_bar_prev[i]) * alphas[i].sqrt() / (1.0 - alpha_bar[i]))
            .collect();
        Ok(Self {
            betas,
            alphas,
            alpha_bar,
            alpha_bar_prev,
            posterior_variance,
            posterior_mean_coef1,
            posterior_mean_coef2,
        })
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// `x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε`, one t per image of the (B, …) batch.
    pub fn q_sample(&self, x0: &Tensor, eps: &Tensor, t: &[usize]) -> Result<Tensor> {
        let a = per_image(x0, t.iter().map(|&i| self.alpha_bar[i].sqrt()))?;
        let s = per_image(x0, t.iter().map(|&i| (1.0 - self.alpha_bar[i]).sqrt()))?;
        Ok((x0.broadcast_mul(&a)? + eps.broadcast_mul(&s)?)?)
    }

    /// One reverse step from t to `t_prev` (None = the end, ᾱ = 1) given the predicted noise.
    /// Returns (x_{t_prev}, predicted x₀). `noise` is needed when the step is stochastic.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        kind: SamplerKind,
        xt: &Tensor,
        eps: &Tensor,
        t: usize,
        t_prev: Option<usize>,
        noise: Option<&Tensor>,
        clip: bool,
    ) -> Result<(Tensor, Tensor)> {
        let ab = self.alpha_bar[t];
        let ab_prev = t_prev.map_or(1.0, |p| self.alpha_bar[p]);
        let mut x0 = ((xt - (eps * (1.0 - ab).sqrt())?)? / ab.sqrt())?;
        let mut eps = eps.clone();
        if clip {
            x0 = x0.clamp(-1.0, 1.0)?;
            eps = ((xt - (&x0 * ab.sqrt())?)? / (1.0 - ab).sqrt())?;
        }
        let (mean, std) = match kind {
            SamplerKind::Ddpm => {
                // Respaced: β' = 1 − ᾱ_t/ᾱ_prev (= β_t when t_prev = t − 1).
                let beta = 1.0 - ab / ab_prev;
                let c1 = beta * ab_prev.sqrt() / (1.0 - ab);
                let c2 = (1.0 - ab_prev) * (1.0 - beta).sqrt() / (1.0 - ab);
                let var = beta * (1.0 - ab_prev) / (1.0 - ab);
                (((&x0 * c1)? + (xt * c2)?)?, var.max(0.0).sqrt())
            }
            SamplerKind::Ddim { eta } => {
                let sigma = eta
                    * ((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev))
                        .max(0.0)
                        .sqrt();
                let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
                (((&x0 * ab_prev.sqrt())? + (&eps * dir)?)?, sigma)
            }
        };
        let x = match (noise, std > 0.0 && t_prev.is_some()) {
            (Some(z), true) => (mean + (z * std)?)?,
            (None, true) => {
                return Err(EngineError::Input(
                    "a stochastic sampler step needs noise".into(),
                ));
            }
            _ => mean,
        };
        Ok((x, x0))
    }
}

/// A (B, 1, …, 1) tensor of per-image coefficients for broadcasting over `like` (B, …).
fn per_image(like: &Tensor, v: impl Iterator<Item = f64>) -> Result<Tensor> {
    let v: Vec<f64> = v.collect();
    let mut shape = vec![v.len()];
    shape.extend(std::iter::repeat_n(1, like.rank() - 1));
    Ok(Tensor::from_vec(v, shape, like.device())?.to_dtype(like.dtype())?)
}

/// `n` timesteps evenly spaced over 0 … T−1, descending, starting at T−1 ("trailing" spacing:
/// the first step always sees pure noise).
pub fn sampling_timesteps(t: usize, n: usize) -> Vec<usize> {
    let n = n.clamp(1, t);
    (0..n)
        .map(|i| ((t as f64 - i as f64 * t as f64 / n as f64).round() as usize).saturating_sub(1))
        .collect()
}

/// Noise predicted for classes `y` with classifier-free guidance `s`:
/// `ε_u + s·(ε_c − ε_u)` (one batched call for both halves; s = 1 is plain conditional).
pub fn guided_eps(
    model: &Diffussm,
    x: &Tensor,
    t: usize,
    y: &[Option<u32>],
    s: f64,
) -> Result<Tensor> {
    let b = x.dim(0)?;
    let null = model.null_class();
    let cond: Vec<u32> = y.iter().map(|c| c.unwrap_or(null)).collect();
    let unconditional = y.iter().all(|c| c.is_none());
    if (s - 1.0).abs() < 1e-12 || unconditional {
        return model.forward(x, &vec![t as f64; b], &cond);
    }
    let xx = Tensor::cat(&[x, x], 0)?;
    let mut yy = cond;
    yy.extend(std::iter::repeat_n(null, b));
    let e = model.forward(&xx, &vec![t as f64; 2 * b], &yy)?;
    let (ec, eu) = (e.narrow(0, 0, b)?, e.narrow(0, b, b)?);
    Ok((&eu + ((ec - &eu)? * s)?)?)
}

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    pub sampler: SamplerKind,
    pub steps: usize,
    pub guidance: f64,
    pub clip: bool,
    /// Keep x_t after this many trajectory frames (evenly spaced over the steps, plus the start).
    pub trajectory_frames: usize,
}

/// The result of sampling: final images and the kept (t, x_t) frames.
pub struct Samples {
    pub images: Tensor,
    pub trajectory: Vec<(usize, Tensor)>,
}

/// Draws images for classes `y` (None = unconditional) from seeded noise. `progress(i, n)` is
/// called after each of the n steps and may return `false` to cancel (an error then).
pub fn sample(
    model: &Diffussm,
    sched: &NoiseSchedule,
    y: &[Option<u32>],
    opts: &SampleOptions,
    rng: &mut ChaCha8Rng,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Samples> {
    // Guidance runs the batch twice (conditional and unconditional) in one pass.
    model
        .cfg
        .check_memory(y.len().saturating_mul(2).max(1), false)?;
    // Detached weights, kernels computed once for all steps.
    let model = &model.for_sampling()?;
    let c = &model.cfg;
    let shape = (y.len(), c.in_channels, c.image_height, c.image_width);
    let dev = model.device().clone();
    let mut x = normal(rng, shape, 0.0, 1.0, DType::F32, &dev)?;
    let ts = sampling_timesteps(sched.len(), opts.steps);
    let n = ts.len();
    let every = (n / opts.trajectory_frames.max(1)).max(1);
    let mut trajectory = Vec::new();
    for (i, &t) in ts.iter().enumerate() {
        if i % every == 0 && trajectory.len() < opts.trajectory_frames {
            trajectory.push((t, x.clone()));
        }
        // Detached: the model's variables make its output record a backward graph, and x_t
        // of every step would keep the activations of all earlier steps alive (gigabytes for
        // a grid, and page faults that made sampling ten times slower).
        let eps = guided_eps(model, &x, t, y, opts.guidance)?.detach();
        let t_prev = ts.get(i + 1).copied();
        let noise = match opts.sampler {
            SamplerKind::Ddpm => Some(normal(rng, shape, 0.0, 1.0, DType::F32, &dev)?),
            SamplerKind::Ddim { eta } if eta > 0.0 => {
                Some(normal(rng, shape, 0.0, 1.0, DType::F32, &dev)?)
            }
            _ => None,
        };
        x = sched
            .step(opts.sampler, &x, &eps, t, t_prev, noise.as_ref(), opts.clip)?
            .0;
        if !progress(i + 1, n) {
            return Err(EngineError::Input("sampling cancelled".into()));
        }
    }
    Ok(Samples {
        images: x,
        trajectory,
    })
}
