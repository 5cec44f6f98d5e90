//! Initialisations, and tensors drawn from seeded generators.
//!
//! candle's CPU random generator cannot be seeded, so every random tensor of a model is drawn
//! here from a [`ChaCha8Rng`] whose seed (and state) the run records.

use candle_core::{DType, Device, Shape, Tensor};
use nalgebra::{Complex, DMatrix};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};
use serde::{Deserialize, Serialize};

use super::error::Result;

/// Initialisation of the SSM state matrix A (real part −½ in every case; `docs/models.md` §1(b)
/// for BiGS's N modes, §3(b) for s4's N/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AInit {
    /// Diagonal of HiPPO-LegS's normal part (S4D-LegS), the BiGS default.
    #[default]
    #[serde(alias = "legs")]
    Hippo,
    /// S4D-Lin: Im A_n = π n.
    Lin,
    /// S4D-Inv: Im A_n = (N/π)(N/(2n+1) − 1).
    Inv,
}

impl std::str::FromStr for AInit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "hippo" | "legs" => Ok(Self::Hippo),
            "lin" => Ok(Self::Lin),
            "inv" => Ok(Self::Inv),
            _ => Err(format!(
                "unknown A initialisation `{s}` (expected hippo, lin or inv)"
            )),
        }
    }
}

/// Imaginary parts of the eigenvalues of the skew-symmetric part of HiPPO-LegS's normal form
/// `S = −LegS + P Pᵀ = −½ I + Q`, i.e. the eigenvalues of the Hermitian `−i Q`, ascending.
/// Computed in f64 with a Hermitian eigensolver, as the reference does.
pub fn legs_skew_eigenvalues(n: usize) -> Vec<f64> {
    let m = DMatrix::<Complex<f64>>::from_fn(n, n, |i, k| {
        let s = ((2 * i + 1) as f64 * (2 * k + 1) as f64).sqrt();
        let q = match i.cmp(&k) {
            std::cmp::Ordering::Greater => -0.5 * s,
            std::cmp::Ordering::Less => 0.5 * s,
            std::cmp::Ordering::Equal => 0.0,
        };
        // −i·q
        Complex::new(0.0, -q)
    });
    let mut ev: Vec<f64> = m.symmetric_eigenvalues().iter().copied().collect();
    ev.sort_by(|a, b| a.total_cmp(b));
    ev
}

/// (Re A, Im A) for BiGS-style SSMs: all `n` modes kept.
pub fn a_init_full(kind: AInit, n: usize) -> (Vec<f64>, Vec<f64>) {
    let nf = n as f64;
    let im: Vec<f64> = match kind {
        AInit::Hippo => legs_skew_eigenvalues(n),
        AInit::Lin => (0..n).map(|i| std::f64::consts::PI * i as f64).collect(),
        AInit::Inv => (0..n)
            .map(|i| nf / std::f64::consts::PI * (nf / (2 * i + 1) as f64 - 1.0))
            .collect(),
    };
    (vec![-0.5; n], im)
}

/// (Re A, Im A) for s4-style SSMs of state size `n_state`: `n_state/2` stored modes, each
/// standing for a conjugate pair (the kernel takes 2·Re).
pub fn a_init_half(kind: AInit, n_state: usize) -> (Vec<f64>, Vec<f64>) {
    let m = n_state / 2;
    let nf = n_state as f64;
    let im: Vec<f64> = match kind {
        AInit::Hippo => legs_skew_eigenvalues(n_state)
            .into_iter()
            .filter(|v| *v > 0.0)
            .take(m)
            .collect(),
        AInit::Lin => (0..m).map(|i| std::f64::consts::PI * i as f64).collect(),
        AInit::Inv => (0..m)
            .map(|i| nf / std::f64::consts::PI * (nf / (2 * i + 1) as f64 - 1.0))
            .collect(),
    };
    (vec![-0.5; m], im)
}

/// A tensor from f64 values, converted to `dtype`.
pub fn tensor_f64(
    values: Vec<f64>,
    shape: impl Into<Shape>,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)
}

/// Normal(mean, std) samples from a seeded generator (an error for a negative or non-finite
/// std).
pub fn normal(
    rng: &mut ChaCha8Rng,
    shape: impl Into<Shape>,
    mean: f64,
    std: f64,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let d = Normal::new(mean, std).map_err(|e| {
        super::EngineError::Input(format!("normal initialiser N({mean}, {std}²): {e}"))
    })?;
    let v: Vec<f64> = (0..shape.elem_count()).map(|_| d.sample(rng)).collect();
    tensor_f64(v, shape, dtype, dev)
}

/// Uniform[lo, hi) samples from a seeded generator; `lo == hi` is the constant `lo` (an error
/// for `lo > hi` or bounds that are not finite).
pub fn uniform(
    rng: &mut ChaCha8Rng,
    shape: impl Into<Shape>,
    lo: f64,
    hi: f64,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    if lo == hi && lo.is_finite() {
        return tensor_f64(vec![lo; shape.elem_count()], shape, dtype, dev);
    }
    let d = Uniform::new(lo, hi).map_err(|e| {
        super::EngineError::Input(format!("uniform initialiser on [{lo}, {hi}): {e}"))
    })?;
    let v: Vec<f64> = (0..shape.elem_count()).map(|_| d.sample(rng)).collect();
    tensor_f64(v, shape, dtype, dev)
}

/// A dropout mask (already scaled by 1/(1−p)) drawn from a seeded generator.
pub fn dropout_mask(
    rng: &mut ChaCha8Rng,
    shape: impl Into<Shape>,
    p: f64,
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let shape = shape.into();
    let keep = 1.0 / (1.0 - p);
    let v: Vec<f64> = (0..shape.elem_count())
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
        .collect();
    tensor_f64(v, shape, dtype, dev)
}
