//! The activations of the models: which GELU (and SiLU), and their scalar values and
//! derivatives in f32 and f64. Applying them to tensors is `fused` (one node on the CPU); the
//! row kernels of the fused layers are in `rowops`.

use serde::{Deserialize, Serialize};

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
const C: f64 = 0.044_715;

/// Activation of a layer: GELU (exact or tanh, fused) or SiLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Gelu,
    #[default]
    GeluTanh,
    Silu,
}

/// Which GELU: exact (erf) or the tanh approximation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gelu {
    /// `x·Φ(x)`; what the PyTorch port (and the parity vectors) use.
    #[default]
    Exact,
    /// `0.5x(1 + tanh(√(2/π)(x + 0.044715x³)))`; what the Flax code trained the released weights with.
    Tanh,
}

/// GELU value and derivative at `x`, in f64.
#[inline(always)]
pub(crate) fn gelu_f64(kind: Gelu, x: f64) -> (f64, f64) {
    match kind {
        Gelu::Exact => {
            let cdf =
                0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x * std::f64::consts::FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
            (x * cdf, cdf + x * pdf)
        }
        Gelu::Tanh => {
            let u = SQRT_2_OVER_PI * (x + C * x * x * x);
            let t = u.tanh();
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * C * x * x);
            (
                0.5 * x * (1.0 + t),
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
            )
        }
    }
}

/// tanh through one `exp` (libm's `tanhf` is several times slower and dominated training).
/// Absolute error ~1e-7; saturates cleanly to ±1.
#[inline(always)]
fn tanh_f32(u: f32) -> f32 {
    1.0 - 2.0 / (1.0 + super::simd::exp_f32(2.0 * u))
}

/// GELU value and derivative at `x`, in f32 (the tanh form in f32 arithmetic).
#[inline(always)]
pub(crate) fn gelu_f32(kind: Gelu, x: f32) -> (f32, f32) {
    match kind {
        Gelu::Exact => {
            let (v, d) = gelu_f64(kind, x as f64);
            (v as f32, d as f32)
        }
        Gelu::Tanh => {
            let s = SQRT_2_OVER_PI as f32;
            let c = C as f32;
            let u = s * (x + c * x * x * x);
            let t = tanh_f32(u);
            let du = s * (1.0 + 3.0 * c * x * x);
            (
                0.5 * x * (1.0 + t),
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
            )
        }
    }
}
