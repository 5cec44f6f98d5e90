//! A whole BiGS layer as one autograd node on the CPU (f32/f64), with a hand-written backward.
//!
//! Built from candle ops (even fused ones), a layer is ~20 graph nodes, and candle's backward
//! gives every input of every node a zero-filled buffer plus an add. Those passes, and the
//! allocations behind them, are memory traffic, and on a 2-core machine memory bandwidth barely
//! grows with the second core: they cost as much as the layer's matrix products. Here the
//! forward keeps the activations its backward needs, and the backward computes every gradient
//! with `gemm` (the crate candle's own matmul uses) and one fused pass per element-wise stage.
//!
//! The math is `engine::bigs::BigsLayer::forward_rows`'s (tested equal to it, and to finite
//! differences). Parameters enter as one flat vector (see [`PARAMS`]), the two SSM kernels
//! (with the skip D folded into tap 0) as a (2, L) tensor, so the node has three inputs.

use std::ops::Range;

use candle_core::Layout;
use gemm::Parallelism;
use rayon::prelude::*;

use super::act::Gelu;
use super::fft::{conv_fwd, conv_grad};
use super::float::Elem;
use super::gemm::{input_grad, linear, mm, parallelism, rm, tr, weight_grad};
use super::node::{FusedKernels, FusedNode};
use super::rowops::{gelu_all, gelu_grad_inplace, layer_norm_bwd, layer_norm_fwd};
use super::rows::{Rows, block, col_sums, rows_sum};
use super::simd::{avx2_instance, vectorised};

/// Order of the layer's parameters in the flat vector: (name, rows, cols) with `h` = hidden and
/// `i` = intermediate size; weights are (out, in) as in PyTorch.
pub const PARAMS: [&str; 16] = [
    "LayerNorm.weight",
    "LayerNorm.bias",
    "dv.weight",
    "dv.bias",
    "du_forward.weight",
    "du_forward.bias",
    "du_backward.weight",
    "du_backward.bias",
    "duc_forward.weight",
    "duc_forward.bias",
    "duc_backward.weight",
    "duc_backward.bias",
    "dol.weight",
    "dol.bias",
    "do.weight",
    "do.bias",
];

/// Element counts of [`PARAMS`].
pub fn param_sizes(h: usize, i: usize) -> [usize; 16] {
    [
        h,
        h,
        i * h,
        i,
        h * h,
        h,
        h * h,
        h,
        h * h,
        h,
        h * h,
        h,
        i * h,
        i,
        h * i,
        h,
    ]
}

fn param_ranges(h: usize, i: usize) -> Vec<Range<usize>> {
    let mut at = 0;
    param_sizes(h, i)
        .iter()
        .map(|n| {
            let r = at..at + n;
            at += n;
            r
        })
        .collect()
}

/// What the layer needs to know besides its tensors.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec {
    pub batch: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub eps: f64,
    pub act: Gelu,
    pub pre_norm: bool,
    /// Dense (Toeplitz) convolution; FFT otherwise.
    pub dense: bool,
}

/// Activations of one forward pass, (R, ·) row-major with R = batch·L.
pub(crate) struct Saved<T> {
    h: Vec<T>,
    v_pre: Vec<T>,
    uf_pre: Vec<T>,
    ub_pre: Vec<T>,
    uf: Vec<T>,
    ub: Vec<T>,
    sf: Vec<T>,
    sb: Vec<T>,
    af: Vec<T>,
    ab: Vec<T>,
    g: Vec<T>,
    z_pre: Vec<T>,
    zv: Vec<T>,
    /// x + out before the LayerNorm (post-norm only).
    y_pre: Vec<T>,
    k: Vec<T>,
}

// ------------------------------------------------------------------------------------------
// building blocks

// ------------------------------------------------------------------------------------------
// the SSM convolutions along L of (B, L, H) rows

/// Toeplitz matrix of kernel `k`: causal `T[t, s] = k[t − s]` (t ≥ s), or its transpose for the
/// anti-causal direction.
fn toeplitz<T: Elem>(k: &[T], anti: bool) -> Vec<T> {
    let l = k.len();
    let mut m = vec![T::zero(); l * l];
    for t in 0..l {
        for s in 0..=t {
            let (r, c) = if anti { (s, t) } else { (t, s) };
            m[r * l + c] = k[t - s];
        }
    }
    m
}

/// (B, L, H) → (B, H, L), time reversed if `rev`.
pub(crate) fn to_bhl<T: Elem>(u: &[T], l: usize, h: usize, rev: bool) -> Vec<T> {
    let mut o = vec![T::zero(); u.len()];
    o.par_chunks_mut(h * l)
        .zip(u.par_chunks(l * h))
        .for_each(|(o, u)| {
            for t in 0..l {
                let tt = if rev { l - 1 - t } else { t };
                for c in 0..h {
                    o[c * l + tt] = u[t * h + c];
                }
            }
        });
    o
}

/// (B, H, L) → (B, L, H), time reversed if `rev`.
pub(crate) fn to_blh<T: Elem>(u: &[T], l: usize, h: usize, rev: bool) -> Vec<T> {
    let mut o = vec![T::zero(); u.len()];
    o.par_chunks_mut(l * h)
        .zip(u.par_chunks(h * l))
        .for_each(|(o, u)| {
            for c in 0..h {
                for t in 0..l {
                    let tt = if rev { l - 1 - t } else { t };
                    o[tt * h + c] = u[c * l + t];
                }
            }
        });
    o
}

/// `y_b = T u_b` for every sequence b of u (B, L, H), with one kernel for all channels
/// (`ck` = 1, `k` of length L) or one per channel (`ck` = H, `k` (H, L)).
pub(crate) fn conv<T: Elem>(
    u: &[T],
    k: &[T],
    h: usize,
    ck: usize,
    anti: bool,
    dense: bool,
) -> Vec<T> {
    let l = k.len() / ck;
    if !dense {
        let ut = to_bhl(u, l, h, anti);
        return to_blh(&conv_fwd(&ut, k, h, ck, l), l, h, anti);
    }
    let mut y = vec![T::zero(); u.len()];
    if ck != 1 {
        // Per-channel kernels on short sequences: direct sums, vectorised over channels (a
        // Toeplitz product per channel would be a matrix-vector product each).
        let kt = lag_major(k, h, l);
        y.par_chunks_mut(l * h)
            .zip(u.par_chunks(l * h))
            .for_each(|(y, u)| direct_fwd_simd(y, u, &kt, l, h, anti));
        return y;
    }
    let tm = toeplitz(k, anti);
    y.par_chunks_mut(l * h)
        .zip(u.par_chunks(l * h))
        .for_each(|(y, u)| mm(l, h, l, y, false, rm(&tm, l), rm(u, h), Parallelism::None));
    y
}

/// One sequence of the per-channel direct convolution, `y[t] += Σ_lag k[lag] ⊙ u[s(t, lag)]`
/// over rows of width h. Always inlined, so that its AVX2 instance compiles it for AVX2.
#[inline(always)]
fn direct_fwd<T: Elem>(y: &mut [T], u: &[T], kt: &[T], l: usize, h: usize, anti: bool) {
    for t in 0..l {
        let yt = &mut y[t * h..(t + 1) * h];
        for (lag, kl) in kt.chunks(h).enumerate() {
            let s = if anti { t + lag } else { t.wrapping_sub(lag) };
            if s >= l {
                continue;
            }
            let us = &u[s * h..(s + 1) * h];
            for ((y, k), u) in yt.iter_mut().zip(kl).zip(us) {
                *y += *k * *u;
            }
        }
    }
}

/// Gradients of [`direct_fwd`] for one sequence: du += and dk (lag-major) +=.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn direct_bwd<T: Elem>(
    du: &mut [T],
    dk: &mut [T],
    u: &[T],
    dy: &[T],
    kt: &[T],
    l: usize,
    h: usize,
    anti: bool,
) {
    for t in 0..l {
        let dyt = &dy[t * h..(t + 1) * h];
        for lag in 0..l {
            let s = if anti { t + lag } else { t.wrapping_sub(lag) };
            if s >= l {
                continue;
            }
            let kl = &kt[lag * h..(lag + 1) * h];
            let us = &u[s * h..(s + 1) * h];
            let dus = &mut du[s * h..(s + 1) * h];
            for ((d, k), g) in dus.iter_mut().zip(kl).zip(dyt) {
                *d += *k * *g;
            }
            let dkl = &mut dk[lag * h..(lag + 1) * h];
            for ((d, g), u) in dkl.iter_mut().zip(dyt).zip(us) {
                *d += *g * *u;
            }
        }
    }
}

avx2_instance!(direct_fwd_simd [T: Elem] => direct_fwd(
    y: &mut [T], u: &[T], kt: &[T], l: usize, h: usize, anti: bool
));
avx2_instance!(direct_bwd_simd [T: Elem] => direct_bwd(
    du: &mut [T], dk: &mut [T], u: &[T], dy: &[T], kt: &[T], l: usize, h: usize, anti: bool
));

/// Per-channel kernels (H, L) → (L, H), lag-major.
fn lag_major<T: Elem>(k: &[T], h: usize, l: usize) -> Vec<T> {
    let mut kt = vec![T::zero(); l * h];
    for c in 0..h {
        for lag in 0..l {
            kt[lag * h + c] = k[c * l + lag];
        }
    }
    kt
}

/// Gradients of [`conv`]: (du, dk) from dy.
pub(crate) fn conv_bwd<T: Elem>(
    u: &[T],
    k: &[T],
    dy: &[T],
    h: usize,
    ck: usize,
    anti: bool,
    dense: bool,
) -> (Vec<T>, Vec<T>) {
    let l = k.len() / ck;
    if !dense {
        let (ut, dyt) = (to_bhl(u, l, h, anti), to_bhl(dy, l, h, anti));
        let out = conv_grad(&ut, k, &dyt, h, ck, l);
        let (du, dk) = out.split_at(ut.len());
        return (to_blh(du, l, h, anti), dk.to_vec());
    }
    if ck != 1 {
        // du[s] = Σ_t k[lag(t, s)]·dy[t]; dk[c, lag] = Σ_b Σ_t dy[t, c]·u[s, c], per sequence,
        // then summed in batch order; vectorised over channels.
        let kt = lag_major(k, h, l);
        let mut du = vec![T::zero(); u.len()];
        let dks: Vec<Vec<T>> = du
            .par_chunks_mut(l * h)
            .zip(u.par_chunks(l * h).zip(dy.par_chunks(l * h)))
            .map(|(du, (u, dy))| {
                let mut dk = vec![T::zero(); l * h];
                direct_bwd_simd(du, &mut dk, u, dy, &kt, l, h, anti);
                dk
            })
            .collect();
        let mut dkt = vec![T::zero(); l * h];
        for part in &dks {
            for (d, p) in dkt.iter_mut().zip(part) {
                *d += *p;
            }
        }
        // back to (H, L)
        let mut dk = vec![T::zero(); h * l];
        for lag in 0..l {
            for c in 0..h {
                dk[c * l + lag] = dkt[lag * h + c];
            }
        }
        return (du, dk);
    }
    let tm = toeplitz(k, anti);
    let mut du = vec![T::zero(); u.len()];
    // du_b = Tᵀ dy_b; dT = Σ_b dy_b u_bᵀ, summed in batch order.
    let dts: Vec<Vec<T>> = du
        .par_chunks_mut(l * h)
        .zip(u.par_chunks(l * h).zip(dy.par_chunks(l * h)))
        .map(|(du, (u, dy))| {
            mm(l, h, l, du, false, tr(&tm, l), rm(dy, h), Parallelism::None);
            let mut dt = vec![T::zero(); l * l];
            mm(
                l,
                l,
                h,
                &mut dt,
                false,
                rm(dy, h),
                tr(u, h),
                Parallelism::None,
            );
            dt
        })
        .collect();
    let mut dk = vec![T::zero(); l];
    for dt in &dts {
        for t in 0..l {
            for s in 0..=t {
                let (r, c) = if anti { (s, t) } else { (t, s) };
                dk[t - s] += dt[r * l + c];
            }
        }
    }
    (du, dk)
}

// ------------------------------------------------------------------------------------------
// forward and backward

fn forward<T: Elem>(sp: &LayerSpec, x: &[T], p: &[T], k: &[T]) -> (Vec<T>, Saved<T>) {
    let (h, i) = (sp.hidden, sp.intermediate);
    let pr = param_ranges(h, i);
    let w = |j: usize| &p[pr[j].clone()];
    let l = k.len() / 2;
    let (kf, kb) = k.split_at(l);
    let hn = if sp.pre_norm {
        layer_norm_fwd(x, w(0), w(1), sp.eps)
    } else {
        x.to_vec()
    };
    let v_pre = linear(&hn, w(2), w(3), h);
    let uf_pre = linear(&hn, w(4), w(5), h);
    let ub_pre = linear(&hn, w(6), w(7), h);
    let uf = gelu_all(&uf_pre, sp.act);
    let ub = gelu_all(&ub_pre, sp.act);
    let sf = conv(&uf, kf, h, 1, false, sp.dense);
    let sb = conv(&ub, kb, h, 1, true, sp.dense);
    let af = linear(&sf, w(8), w(9), h);
    let ab = linear(&sb, w(10), w(11), h);
    let mut g = vec![T::zero(); af.len()];
    g.par_chunks_mut(8192)
        .zip(af.par_chunks(8192).zip(ab.par_chunks(8192)))
        .for_each(|(g, (a, b))| {
            vectorised(
                #[inline(always)]
                || {
                    let (a, b) = (&a[..g.len()], &b[..g.len()]);
                    for j in 0..g.len() {
                        g[j] = a[j] * b[j];
                    }
                },
            )
        });
    let z_pre = linear(&g, w(12), w(13), h);
    let mut zv = vec![T::zero(); z_pre.len()];
    let act = sp.act;
    // `for` loops: an iterator's `fold` (behind `for_each`) was not always inlined into the
    // AVX2 instance.
    zv.par_chunks_mut(8192)
        .zip(z_pre.par_chunks(8192).zip(v_pre.par_chunks(8192)))
        .for_each(|(o, (z, v))| {
            vectorised(
                #[inline(always)]
                || {
                    let (z, v) = (&z[..o.len()], &v[..o.len()]);
                    match act {
                        Gelu::Tanh => {
                            for j in 0..o.len() {
                                o[j] = T::gelu(Gelu::Tanh, z[j]).0 * T::gelu(Gelu::Tanh, v[j]).0;
                            }
                        }
                        Gelu::Exact => {
                            for j in 0..o.len() {
                                o[j] = T::gelu(Gelu::Exact, z[j]).0 * T::gelu(Gelu::Exact, v[j]).0;
                            }
                        }
                    }
                },
            )
        });
    // y = x + zv Woᵀ + bo: start from x + bo, accumulate the product.
    let mut y = vec![T::zero(); x.len()];
    let bo = w(15);
    y.par_chunks_mut(block(h))
        .zip(x.par_chunks(block(h)))
        .for_each(|(y, x)| {
            vectorised(
                #[inline(always)]
                || {
                    let bo = &bo[..h];
                    for (y, x) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)) {
                        for j in 0..h {
                            y[j] = x[j] + bo[j];
                        }
                    }
                },
            )
        });
    let rows = x.len() / h;
    mm(
        rows,
        h,
        i,
        &mut y,
        true,
        rm(&zv, i),
        tr(w(14), i),
        parallelism(),
    );
    let (y, y_pre) = if sp.pre_norm {
        (y, Vec::new())
    } else {
        (layer_norm_fwd(&y, w(0), w(1), sp.eps), y)
    };
    let saved = Saved {
        h: hn,
        v_pre,
        uf_pre,
        ub_pre,
        uf,
        ub,
        sf,
        sb,
        af,
        ab,
        g,
        z_pre,
        zv,
        y_pre,
        k: k.to_vec(),
    };
    (y, saved)
}

/// Backward of `zv = act(z)·act(v)` over rows of width `n`: `dz ← dz·act(v)·act'(z)` in place,
/// `dv = dz·act(z)·act'(v)`, column sums of both into `acc` ([dz sums, dv sums]).
#[inline(always)]
pub(crate) fn gated_gelu_bwd<T: Elem>(
    dz: &mut [T],
    dv: &mut [T],
    zp: &[T],
    vp: &[T],
    n: usize,
    acc: &mut [T],
    f: impl Fn(T) -> (T, T),
) {
    // whole rows of n (exact chunks, accumulators cut to n): no bounds check in the loop
    let (acc_z, acc_v) = acc.split_at_mut(n);
    let acc_v = &mut acc_v[..n];
    for ((dz, dv), (zp, vp)) in dz
        .chunks_exact_mut(n)
        .zip(dv.chunks_exact_mut(n))
        .zip(zp.chunks_exact(n).zip(vp.chunks_exact(n)))
    {
        for j in 0..n {
            let (zg, zd) = f(zp[j]);
            let (vg, vd) = f(vp[j]);
            let d = dz[j];
            dz[j] = d * vg * zd;
            dv[j] = d * zg * vd;
            acc_z[j] += dz[j];
            acc_v[j] += dv[j];
        }
    }
}

/// Returns [dx, dp, dk], packed.
fn backward<T: Elem>(sp: &LayerSpec, s: &Saved<T>, x: &[T], p: &[T], dy: &[T]) -> Vec<T> {
    let (h, i) = (sp.hidden, sp.intermediate);
    let pr = param_ranges(h, i);
    let w = |j: usize| &p[pr[j].clone()];
    let rows = x.len() / h;
    let l = s.k.len() / 2;
    let (kf, kb) = s.k.split_at(l);
    let par = parallelism();
    let mut out = vec![T::zero(); x.len() + p.len() + 2 * l];
    let (dx_out, rest) = out.split_at_mut(x.len());
    let (dp, dk_out) = rest.split_at_mut(p.len());
    // Post-norm: through the final LayerNorm first.
    let dy_pre: Vec<T> = if sp.pre_norm {
        dy.to_vec()
    } else {
        let packed = layer_norm_bwd(&s.y_pre, dy, w(0), sp.eps, None);
        let (d, dwb) = packed.split_at(dy.len());
        dp[pr[0].clone()].copy_from_slice(&dwb[..h]);
        dp[pr[1].clone()].copy_from_slice(&dwb[h..]);
        d.to_vec()
    };
    // do: y = x + zv Woᵀ + bo
    weight_grad(&mut dp[pr[14].clone()], &dy_pre, &s.zv, h, i);
    dp[pr[15].clone()].copy_from_slice(&col_sums(&dy_pre, h));
    let mut dz_pre = input_grad(&dy_pre, w(14), h, i);
    // zv = gelu(z_pre) ⊙ gelu(v_pre): d zv becomes dz_pre in place, dv_pre beside it.
    let mut dv_pre = vec![T::zero(); rows * i];
    let (dzr, dvr) = (Rows::of(&mut dz_pre, i), Rows::of(&mut dv_pre, i));
    let act = sp.act;
    let sums = rows_sum(i, rows, 2 * i, |r, acc| {
        // SAFETY: each block owns its rows.
        let (dz, dv) = unsafe { (dzr.get(r.clone()), dvr.get(r.clone())) };
        let (zp, vp) = (
            &s.z_pre[r.start * i..r.end * i],
            &s.v_pre[r.start * i..r.end * i],
        );
        vectorised(
            #[inline(always)]
            || match act {
                Gelu::Tanh => gated_gelu_bwd(dz, dv, zp, vp, i, acc, |x| T::gelu(Gelu::Tanh, x)),
                Gelu::Exact => gated_gelu_bwd(dz, dv, zp, vp, i, acc, |x| T::gelu(Gelu::Exact, x)),
            },
        )
    });
    dp[pr[13].clone()].copy_from_slice(&sums[..i]);
    dp[pr[3].clone()].copy_from_slice(&sums[i..]);
    // dol: z_pre = g Wolᵀ + bol
    weight_grad(&mut dp[pr[12].clone()], &dz_pre, &s.g, i, h);
    let dg = input_grad(&dz_pre, w(12), i, h);
    // g = af ⊙ ab
    let mut daf = vec![T::zero(); rows * h];
    let mut dab = vec![T::zero(); rows * h];
    let (dfr, dbr) = (Rows::of(&mut daf, h), Rows::of(&mut dab, h));
    let sums = rows_sum(h, rows, 2 * h, |r, acc| {
        // SAFETY: each block owns its rows.
        let (df, db) = unsafe { (dfr.get(r.clone()), dbr.get(r.clone())) };
        let span = r.start * h..r.end * h;
        let (g, af, ab) = (&dg[span.clone()], &s.af[span.clone()], &s.ab[span]);
        let (acc_f, acc_b) = acc.split_at_mut(h);
        let acc_b = &mut acc_b[..h];
        vectorised(
            #[inline(always)]
            || {
                for (((df, db), g), (af, ab)) in df
                    .chunks_exact_mut(h)
                    .zip(db.chunks_exact_mut(h))
                    .zip(g.chunks_exact(h))
                    .zip(af.chunks_exact(h).zip(ab.chunks_exact(h)))
                {
                    for j in 0..h {
                        df[j] = g[j] * ab[j];
                        db[j] = g[j] * af[j];
                        acc_f[j] += df[j];
                        acc_b[j] += db[j];
                    }
                }
            },
        )
    });
    dp[pr[9].clone()].copy_from_slice(&sums[..h]);
    dp[pr[11].clone()].copy_from_slice(&sums[h..]);
    weight_grad(&mut dp[pr[8].clone()], &daf, &s.sf, h, h);
    weight_grad(&mut dp[pr[10].clone()], &dab, &s.sb, h, h);
    let dsf = input_grad(&daf, w(8), h, h);
    let dsb = input_grad(&dab, w(10), h, h);
    // the SSMs
    let (mut duf, dkf) = conv_bwd(&s.uf, kf, &dsf, h, 1, false, sp.dense);
    let (mut dub, dkb) = conv_bwd(&s.ub, kb, &dsb, h, 1, true, sp.dense);
    dk_out[..l].copy_from_slice(&dkf);
    dk_out[l..].copy_from_slice(&dkb);
    let dbuf = gelu_grad_inplace(&mut duf, &s.uf_pre, h, act);
    let dbub = gelu_grad_inplace(&mut dub, &s.ub_pre, h, act);
    dp[pr[5].clone()].copy_from_slice(&dbuf);
    dp[pr[7].clone()].copy_from_slice(&dbub);
    // input projections
    weight_grad(&mut dp[pr[2].clone()], &dv_pre, &s.h, i, h);
    weight_grad(&mut dp[pr[4].clone()], &duf, &s.h, h, h);
    weight_grad(&mut dp[pr[6].clone()], &dub, &s.h, h, h);
    let mut dh = input_grad(&dv_pre, w(2), i, h);
    mm(rows, h, h, &mut dh, true, rm(&duf, h), rm(w(4), h), par);
    mm(rows, h, h, &mut dh, true, rm(&dub, h), rm(w(6), h), par);
    if sp.pre_norm {
        let packed = layer_norm_bwd(x, &dh, w(0), sp.eps, Some(&dy_pre));
        let (dx, dwb) = packed.split_at(x.len());
        dp[pr[0].clone()].copy_from_slice(&dwb[..h]);
        dp[pr[1].clone()].copy_from_slice(&dwb[h..]);
        dx_out.copy_from_slice(dx);
    } else {
        dx_out
            .par_chunks_mut(8192)
            .zip(dh.par_chunks(8192).zip(dy_pre.par_chunks(8192)))
            .for_each(|(o, (a, b))| {
                o.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(o, (a, b))| *o = *a + *b)
            });
    }
    out
}

// ------------------------------------------------------------------------------------------
// candle glue

fn check(sp: &LayerSpec, lx: &Layout, lp: &Layout, lk: &Layout) -> candle_core::Result<()> {
    let (rows, h) = lx.shape().dims2()?;
    let (two, l) = lk.shape().dims2()?;
    let p: usize = param_sizes(sp.hidden, sp.intermediate).iter().sum();
    if h != sp.hidden
        || two != 2
        || sp.batch == 0
        || rows != sp.batch * l
        || lp.shape().elem_count() != p
    {
        candle_core::bail!(
            "fused BiGS layer: rows {:?}, params {:?}, kernels {:?} do not fit batch {}, \
             hidden {}, intermediate {}",
            lx.shape(),
            lp.shape(),
            lk.shape(),
            sp.batch,
            sp.hidden,
            sp.intermediate
        )
    }
    Ok(())
}

/// The layer as a fused node: the forward op (one instance per call).
pub(crate) type BigsLayerOp = FusedNode<LayerSpec>;

impl FusedKernels for LayerSpec {
    const WHAT: &'static str = "fused BiGS layer";
    const OP: &'static str = "fused-bigs-layer";
    const GRAD_OP: &'static str = "fused-bigs-layer-grad";
    type Saved<T: Send + 'static> = Saved<T>;

    fn check(&self, x: &Layout, p: &Layout, k: &Layout) -> candle_core::Result<()> {
        check(self, x, p, k)
    }

    fn forward<T: Elem>(&self, x: &[T], p: &[T], k: &[T]) -> (Vec<T>, Saved<T>) {
        forward(self, x, p, k)
    }

    fn backward<T: Elem>(&self, s: &Saved<T>, x: &[T], p: &[T], g: &[T]) -> Vec<T> {
        backward(self, s, x, p, g)
    }
}
