//! A whole BiGS masked-LM training step on the CPU without candle's autograd graph: the
//! embeddings, the fused layers ([`super::bigs_layer`]), the head at the masked rows, the tied
//! decoder and the cross-entropy forward, then each backward by hand, in reverse.
//!
//! What it saves over the graph (measured, `SSMLAB_PROFILE=1` on the reference step): candle's
//! backward adds every gradient into a zero-filled tensor of the variable's shape, and copies
//! the packed layer parameters in and out; for the tied word embeddings (V × H) that was a zero
//! fill, an add and an `index_add` copy of the whole matrix a step. Here the decoder's `dW` is
//! written once and the embedding rows that the batch looked up are added into it in place
//! (a sparse gradient of B·L rows). The arithmetic of each stage is that of the graph's fused
//! nodes (the same kernels), so outputs agree with the graph to rounding; the tests compare
//! the loss and every gradient.

use rayon::prelude::*;

use super::act::Gelu;
use super::bigs_layer::LayerSpec;
use super::float::Elem;
use super::fused::{ce_grad, ce_rows};
use super::gemm::{input_grad, linear, weight_grad};
use super::node::FusedKernels;
use super::prof::span;
use super::rowops::{gelu_all, gelu_grad_inplace, layer_norm_bwd, layer_norm_fwd};
use super::rows::col_sums;

/// A LayerNorm's weight, bias and ε.
pub(crate) struct Norm<'a, T> {
    pub w: &'a [T],
    pub b: &'a [T],
    pub eps: f64,
}

/// One BiGS layer: its spec, packed parameters (`bigs_layer::PARAMS` order) and the two
/// kernels (2 × L, forward then backward).
pub(crate) struct Layer<T> {
    pub spec: LayerSpec,
    pub p: Vec<T>,
    pub k: Vec<T>,
}

/// The model's parameters, borrowed (the word embeddings are V × H, also the decoder).
pub(crate) struct Model<'a, T> {
    pub hidden: usize,
    pub seq_len: usize,
    pub word: &'a [T],
    pub position: &'a [T],
    /// Token type 0's row (no token type ids: every token is type 0).
    pub token_type0: &'a [T],
    pub emb_ln: Norm<'a, T>,
    pub layers: Vec<Layer<T>>,
    pub dense_w: &'a [T],
    pub dense_b: &'a [T],
    pub head_ln: Norm<'a, T>,
    pub decoder_b: &'a [T],
}

/// The gradients, shaped like the parameters.
pub(crate) struct Grads<T> {
    pub word: Vec<T>,
    /// Rows beyond the sequence length stay zero.
    pub position: Vec<T>,
    /// Row 0 only (the type every token has).
    pub token_type0: Vec<T>,
    pub emb_ln: [Vec<T>; 2],
    /// Per layer: packed parameter gradient, kernel gradient (2 × L).
    pub layers: Vec<(Vec<T>, Vec<T>)>,
    pub dense_w: Vec<T>,
    pub dense_b: Vec<T>,
    pub head_ln: [Vec<T>; 2],
    pub decoder_b: Vec<T>,
}

/// Splits a packed `[d, dw, db]` of a LayerNorm backward.
fn split_norm<T: Elem>(mut packed: Vec<T>, rows_len: usize) -> (Vec<T>, [Vec<T>; 2]) {
    let n = (packed.len() - rows_len) / 2;
    let db = packed.split_off(rows_len + n);
    let dw = packed.split_off(rows_len);
    (packed, [dw, db])
}

/// Mean cross-entropy at the masked rows and every parameter's gradient, for token ids `ids`
/// (B·L, row-major by sequence) with the loss at flat `positions` predicting `targets`.
/// The caller checks ids, positions and targets against the model's sizes.
pub(crate) fn mlm_step<T: Elem>(
    m: &Model<T>,
    ids: &[u32],
    positions: &[u32],
    targets: &[u32],
) -> (f64, Grads<T>) {
    let (h, l) = (m.hidden, m.seq_len);
    let rows = ids.len();
    let vocab = m.decoder_b.len();
    let time = span("mlm: embeddings");
    // embeddings: (word + position) + type, then LayerNorm (the graph's order of the sums)
    let mut e = vec![T::zero(); rows * h];
    e.par_chunks_mut(h).enumerate().for_each(|(r, row)| {
        let w = &m.word[ids[r] as usize * h..][..h];
        let p = &m.position[(r % l) * h..][..h];
        for j in 0..h {
            row[j] = w[j] + p[j] + m.token_type0[j];
        }
    });
    let mut xs = vec![layer_norm_fwd(&e, m.emb_ln.w, m.emb_ln.b, m.emb_ln.eps)];
    drop(time);
    let time = span("mlm: layers");
    let mut saved = Vec::with_capacity(m.layers.len());
    for layer in &m.layers {
        let x = xs.last().map_or(&[][..], Vec::as_slice);
        let (y, s) = layer.spec.forward(x, &layer.p, &layer.k);
        xs.push(y);
        saved.push(s);
    }
    drop(time);
    let time = span("mlm: head, decoder, cross-entropy");
    // the head at the masked rows
    let top = xs.last().map_or(&[][..], Vec::as_slice);
    let mut sel = vec![T::zero(); positions.len() * h];
    sel.par_chunks_mut(h)
        .zip(positions.par_iter())
        .for_each(|(row, &p)| row.copy_from_slice(&top[p as usize * h..][..h]));
    let a = linear(&sel, m.dense_w, m.dense_b, h);
    let ga = gelu_all(&a, Gelu::Exact);
    let t = layer_norm_fwd(&ga, m.head_ln.w, m.head_ln.b, m.head_ln.eps);
    let z = linear(&t, m.word, m.decoder_b, h);
    let n = positions.len();
    let losses = ce_rows(&z, targets, vocab);
    let loss = losses
        .iter()
        .map(|v| v.to_f64().unwrap_or(f64::NAN))
        .sum::<f64>()
        / n as f64;

    drop(time);
    let time = span("mlm: their backward");
    // backward: cross-entropy and the tied decoder
    let g = vec![T::one() / T::of(n as f64); n];
    let dz = ce_grad(&z, targets, &g, vocab);
    drop(z);
    let decoder_b = col_sums(&dz, vocab);
    let mut word = vec![T::zero(); m.word.len()];
    weight_grad(&mut word, &dz, &t, vocab, h);
    let dt = input_grad(&dz, m.word, vocab, h);
    drop(dz);
    // head transform
    let (mut dga, head_ln) = split_norm(
        layer_norm_bwd(&ga, &dt, m.head_ln.w, m.head_ln.eps, None),
        n * h,
    );
    let dense_b = gelu_grad_inplace(&mut dga, &a, h, Gelu::Exact);
    let mut dense_w = vec![T::zero(); h * h];
    weight_grad(&mut dense_w, &dga, &sel, h, h);
    let dsel = input_grad(&dga, m.dense_w, h, h);
    let mut dy = vec![T::zero(); rows * h];
    for (r, &p) in positions.iter().enumerate() {
        let (d, s) = (&mut dy[p as usize * h..][..h], &dsel[r * h..][..h]);
        d.iter_mut().zip(s).for_each(|(d, s)| *d += *s);
    }
    drop(time);
    let time = span("mlm: layers backward");
    // the layers, last first
    let mut layers = Vec::with_capacity(m.layers.len());
    for (i, layer) in m.layers.iter().enumerate().rev() {
        let mut packed = layer.spec.backward(&saved[i], &xs[i], &layer.p, &dy);
        let dk = packed.split_off(rows * h + layer.p.len());
        let dp = packed.split_off(rows * h);
        dy = packed;
        layers.push((dp, dk));
    }
    layers.reverse();
    drop(time);
    let _time = span("mlm: embeddings backward");
    // embeddings: the LayerNorm, then the rows the batch looked up
    let (de, emb_ln) = split_norm(
        layer_norm_bwd(&e, &dy, m.emb_ln.w, m.emb_ln.eps, None),
        rows * h,
    );
    let mut position = vec![T::zero(); m.position.len()];
    let mut token_type0 = vec![T::zero(); h];
    for (r, d) in de.chunks(h).enumerate() {
        let w = &mut word[ids[r] as usize * h..][..h];
        let p = &mut position[(r % l) * h..][..h];
        for j in 0..h {
            w[j] += d[j];
            p[j] += d[j];
            token_type0[j] += d[j];
        }
    }
    let grads = Grads {
        word,
        position,
        token_type0,
        emb_ln,
        layers,
        dense_w,
        dense_b,
        head_ln,
        decoder_b,
    };
    (loss, grads)
}
