//! Layers written from differentiable ops. candle-nn's fused LayerNorm/RmsNorm/softmax have no
//! backward (see `candle-notes.md`): everything here passes gradients to every parameter.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::error::Result;

pub use candle_nn::{Embedding, Module, embedding};

/// Linear layer `y = x Wᵀ + b` over the last axis. Leading axes are flattened into one matmul
/// (candle-nn's `Linear` broadcasts the weight into a batch of small matmuls, whose backward is
/// several times slower).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// A linear layer with variables `weight` (out, in) and `bias` (out), HF PyTorch names.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let l = candle_nn::linear(in_dim, out_dim, vb)?;
    Ok(Linear {
        weight: l.weight().clone(),
        bias: l.bias().cloned(),
    })
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (last, lead) = dims
            .split_last()
            .ok_or_else(|| super::EngineError::Input("linear layer applied to a scalar".into()))?;
        let rows: usize = lead.iter().product();
        let y = x.reshape((rows, *last))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = lead.to_vec();
        out.push(self.weight.dim(0)?);
        Ok(y.reshape(out)?)
    }
}

/// LayerNorm over the last axis, `(x − mean)/sqrt(var + eps)·weight + bias`, from plain ops.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// Variables `weight` and `bias` of size `dim` (HF PyTorch names).
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xn = normalize(x, self.eps)?;
        Ok(xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// `(x − mean)/sqrt(var + eps)` over the last axis: LayerNorm without affine parameters (the
/// adaLN layers of DiffuSSM modulate it instead).
pub fn normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(xc.broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// Activation of a layer: GELU (exact or tanh, fused) or SiLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Gelu,
    #[default]
    GeluTanh,
    Silu,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu => Gelu::Exact.apply(x),
            Self::GeluTanh => Gelu::Tanh.apply(x),
            Self::Silu => Ok(candle_nn::ops::silu(x)?),
        }
    }
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

impl Gelu {
    /// Applies this GELU (fused forward/backward on the CPU, see [`super::fused`]).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        super::fused::gelu(x, self)
    }
}
