//! The attention twin of a DiffuSSM block: a DiT block (Peebles & Xie 2023, "Scalable Diffusion
//! Models with Transformers", §3.2 "adaLN-Zero block"; `docs/models.md` §2(g)). Everything
//! around the blocks (patching, hourglass grouping, conditioning, final layer, sampler) is the
//! DiffuSSM model's own, so the two differ only in how tokens mix: attention over the J stream
//! tokens instead of the gated bidirectional SSM.
//!
//! With (β₁, γ₁, α₁, β₂, γ₂, α₂) = `adaLN_modulation(SiLU(c))`:
//! `x ← x + α₁ ⊙ Attn(LN(x)(1 + γ₁) + β₁)`, `x ← x + α₂ ⊙ MLP(LN(x)(1 + γ₂) + β₂)`, where LN has no
//! affine parameters (ε = 1e-6), Attn is multi-head self-attention over all positions with a
//! fused `qkv` map and an output `proj`, and MLP is `fc2(GELU_tanh(fc1 ·))`. Names follow DiT's
//! `blocks.{i}.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}`.
//!
//! Written from differentiable ops (the softmax of `attention`); no fused CPU node.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::attention::softmax_last;

use super::error::{EngineError, Result};
use super::nn::{Gelu, Linear, detached, linear, modulate};

/// One DiT block.
#[derive(Debug, Clone)]
pub struct DitBlock {
    ada: Linear,
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl DitBlock {
    /// A block of width `d` with `heads` heads and an MLP of width `mlp`.
    pub fn new(d: usize, heads: usize, mlp: usize, vb: VarBuilder) -> Result<Self> {
        if heads == 0 || !d.is_multiple_of(heads) {
            return Err(EngineError::ConfigField {
                field: "num_heads",
                msg: format!("{heads} heads must divide hidden_size = {d}"),
            });
        }
        Ok(Self {
            ada: linear(d, 6 * d, vb.pp("adaLN_modulation.1"))?,
            qkv: linear(d, 3 * d, vb.pp("attn.qkv"))?,
            proj: linear(d, d, vb.pp("attn.proj"))?,
            fc1: linear(d, mlp, vb.pp("mlp.fc1"))?,
            fc2: linear(mlp, d, vb.pp("mlp.fc2"))?,
            heads,
        })
    }

    /// The same block on detached weights (sampling records no autograd graph).
    pub fn detached(&self) -> Self {
        Self {
            ada: detached(&self.ada),
            qkv: detached(&self.qkv),
            proj: detached(&self.proj),
            fc1: detached(&self.fc1),
            fc2: detached(&self.fc2),
            heads: self.heads,
        }
    }

    /// Multi-head self-attention of h (B, J, D) over all J positions.
    pub fn attention(&self, h: &Tensor) -> Result<Tensor> {
        let (b, j, d) = h.dims3()?;
        let (nh, dh) = (self.heads, d / self.heads);
        // (B, J, 3D) → (3, B·nh, J, dh)
        let qkv = self
            .qkv
            .forward(h)?
            .reshape((b, j, 3, nh, dh))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?
            .reshape((3, b * nh, j, dh))?;
        let q = (qkv.get(0)? / (dh as f64).sqrt())?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let scores = q.matmul(&k.t()?.contiguous()?)?; // (B·nh, J, J)
        let ctx = softmax_last(&scores)?.matmul(&v)?; // (B·nh, J, dh)
        let ctx = ctx
            .reshape((b, nh, j, dh))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, j, d))?;
        self.proj.forward(&ctx)
    }

    /// x (B, J, D), c (B, D) → (B, J, D).
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let mods = self.ada.forward(&candle_nn::ops::silu(c)?)?.chunk(6, 1)?;
        let gate =
            |g: &Tensor, t: Tensor| -> Result<Tensor> { Ok(t.broadcast_mul(&g.unsqueeze(1)?)?) };
        let a = self.attention(&modulate(x, &mods[0], &mods[1])?)?;
        let x = (x + gate(&mods[2], a)?)?;
        let h = modulate(&x, &mods[3], &mods[4])?;
        let m = self
            .fc2
            .forward(&self.fc1.forward_act(&h, Some(Gelu::Tanh))?)?;
        Ok((&x + gate(&mods[5], m)?)?)
    }
}

/// Parameters of one DiT block of width `d` with an MLP of width `mlp`.
pub fn block_parameters(d: usize, mlp: usize) -> usize {
    (d * 6 * d + 6 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
}

/// Multiply-accumulates of one DiT block per image of `j` stream tokens: the qkv, proj and MLP
/// maps (4·D² + 2·D·F per token) and the attention's scores and weighted sum (2·J²·D).
pub fn block_macs(d: usize, mlp: usize, j: usize) -> f64 {
    let (d, f, j) = (d as f64, mlp as f64, j as f64);
    j * (4.0 * d * d + 2.0 * d * f) + 2.0 * j * j * d
}
