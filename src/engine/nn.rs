//! Layers written from differentiable ops. candle-nn's fused LayerNorm/RmsNorm/softmax have no
//! backward (their gradients silently stop): everything here passes gradients to every parameter.

use candle_core::Tensor;
use candle_nn::VarBuilder;

pub use super::cpu::act::{Activation, Gelu};
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
        self.forward_act(x, None)
    }

    /// `act(x Wᵀ + b)` with the bias (and GELU) fused into one op ([`super::rowops`]).
    pub fn forward_act(&self, x: &Tensor, act: Option<Gelu>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (last, lead) = dims
            .split_last()
            .ok_or_else(|| super::EngineError::Input("linear layer applied to a scalar".into()))?;
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, *last))?;
        let fused = match &self.bias {
            Some(b) => super::cpu::linear::linear_rows(&x2, &self.weight, b)?,
            None => None,
        };
        let y = match (fused, &self.bias) {
            (Some(y), _) => match act {
                Some(k) => k.apply(&y)?,
                None => y,
            },
            (None, Some(b)) => super::cpu::rowops::bias_act(&self.raw(&x2)?, b, act)?,
            (None, None) => {
                let y = self.raw(&x2)?;
                match act {
                    Some(k) => k.apply(&y)?,
                    None => y,
                }
            }
        };
        let mut out = lead.to_vec();
        out.push(self.weight.dim(0)?);
        Ok(y.reshape(out)?)
    }

    /// `x Wᵀ` of rows x (R, in), without the bias.
    pub fn raw(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?)
    }

    /// The bias, which the fused layers that call [`Self::raw`] add themselves.
    pub fn bias(&self) -> Result<&Tensor> {
        self.bias.as_ref().ok_or_else(|| {
            super::EngineError::Input("this layer needs a linear layer with a bias".into())
        })
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
        super::cpu::rowops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// `(x − mean)/sqrt(var + eps)` over the last axis: LayerNorm without affine parameters (the
/// adaLN layers of DiffuSSM modulate it instead).
pub fn normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let n = x.dims().last().copied().unwrap_or(1);
    let ones = Tensor::ones(n, x.dtype(), x.device())?;
    let zeros = Tensor::zeros(n, x.dtype(), x.device())?;
    super::cpu::rowops::layer_norm(x, &ones, &zeros, eps)
}

/// `LN(x)·(1 + scale) + shift` with (B, D) modulations broadcast over positions.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let xn = normalize(x, 1e-6)?;
    Ok(xn
        .broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?
        .broadcast_add(&shift.unsqueeze(1)?)?)
}

/// The same layer on detached tensors (no autograd graph is recorded through it).
pub fn detached(l: &Linear) -> Linear {
    Linear {
        weight: l.weight.detach(),
        bias: l.bias.as_ref().map(Tensor::detach),
    }
}
