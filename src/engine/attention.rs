//! The attention baseline: a BERT encoder layer (multi-head self-attention + MLP, learned
//! positions come from the shared embeddings) under HF BERT names, so that the MLM wrapper of
//! `BigsForMaskedLm` (in `bigs`) trains, probes and checkpoints it like BiGS.
//!
//! Attention is written from differentiable ops: candle's fused `softmax_last_dim` and `sdpa`
//! have no backward, so every parameter upstream of them would silently get no gradient.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;

use super::error::Result;
use super::nn::{Gelu, LayerNorm, Linear, linear};

/// Softmax over the last axis from plain ops (max-shifted, so it cannot overflow); gradients
/// flow through it, unlike `candle_nn::ops::softmax_last_dim`.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// One BERT layer: `attention.self.{query,key,value}`, `attention.output.{dense,LayerNorm}`,
/// `intermediate.dense`, `output.{dense,LayerNorm}`. Pre-norm (`x + f(LN(x))`, as the BiGS
/// presets) or post-norm (`LN(x + f(x))`, as BERT).
#[derive(Debug, Clone)]
pub struct AttentionLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    ln_attn: LayerNorm,
    inter: Linear,
    out: Linear,
    ln_out: LayerNorm,
    heads: usize,
    act: Gelu,
    pre_norm: bool,
}

impl AttentionLayer {
    pub fn new(
        h: usize,
        intermediate: usize,
        heads: usize,
        eps: f64,
        act: Gelu,
        pre_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let a = vb.pp("attention");
        Ok(Self {
            query: linear(h, h, a.pp("self").pp("query"))?,
            key: linear(h, h, a.pp("self").pp("key"))?,
            value: linear(h, h, a.pp("self").pp("value"))?,
            attn_out: linear(h, h, a.pp("output").pp("dense"))?,
            ln_attn: LayerNorm::new(h, eps, a.pp("output").pp("LayerNorm"))?,
            inter: linear(h, intermediate, vb.pp("intermediate").pp("dense"))?,
            out: linear(intermediate, h, vb.pp("output").pp("dense"))?,
            ln_out: LayerNorm::new(h, eps, vb.pp("output").pp("LayerNorm"))?,
            heads,
            act,
            pre_norm,
        })
    }

    /// Multi-head self-attention of x (B, L, H) over all positions (no padding: the MLM
    /// batches are packed).
    pub fn attention(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let (nh, dh) = (self.heads, h / self.heads);
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, nh, dh))?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * nh, l, dh))?)
        };
        let q = split((self.query.forward(x)? / (dh as f64).sqrt())?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = q.matmul(&k.t()?.contiguous()?)?; // (B·nh, L, L)
        let ctx = softmax_last(&scores)?.matmul(&v)?; // (B·nh, L, dh)
        let ctx = ctx
            .reshape((b, nh, l, dh))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, h))?;
        self.attn_out.forward(&ctx)
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.act.apply(&self.inter.forward(x)?)?)
    }

    /// x (B, L, H) → (B, L, H).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pre_norm {
            let x = (x + self.attention(&self.ln_attn.forward(x)?)?)?;
            Ok((&x + self.mlp(&self.ln_out.forward(&x)?)?)?)
        } else {
            let x = self.ln_attn.forward(&(x + self.attention(x)?)?)?;
            self.ln_out.forward(&(&x + self.mlp(&x)?)?)
        }
    }
}

/// Parameters of one attention layer: four H×H maps, the MLP, two LayerNorms.
pub fn layer_parameters(h: usize, i: usize) -> usize {
    4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h
}

/// Multiply-accumulates per token of one attention layer at sequence length `l`: the four
/// H×H projections, the MLP (2·H·I), and the scores and weighted sum (2·L·H).
pub fn layer_macs_per_token(h: usize, i: usize, l: usize) -> f64 {
    let (h, i, l) = (h as f64, i as f64, l as f64);
    4.0 * h * h + 2.0 * h * i + 2.0 * l * h
}
