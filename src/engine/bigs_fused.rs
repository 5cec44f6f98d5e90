//! A whole BiGS layer as one autograd node on the CPU (f32/f64), with a hand-written backward.
//!
//! Built from candle ops (even fused ones), a layer is ~20 graph nodes, and candle's backward
//! gives every input of every node a zero-filled buffer plus an add. Those passes, and the
//! allocations behind them, are memory traffic, and on a 2-core machine memory bandwidth barely
//! grows with the second core: they cost as much as the layer's matrix products. Here the
//! forward keeps the activations its backward needs, and the backward computes every gradient
//! with `gemm` (the crate candle's own matmul uses) and one fused pass per element-wise stage.
//!
//! The math is [`super::bigs::BigsLayer::forward_rows`]'s (tested equal to it, and to finite
//! differences). Parameters enter as one flat vector (see [`PARAMS`]), the two SSM kernels
//! (with the skip D folded into tap 0) as a (2, L) tensor, so the node has three inputs.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::conv::{FftFloat, conv_fwd, conv_grad};
use super::fused_node::{FusedKernels, FusedNode};
use super::nn::Gelu;
use super::rowops::{Elem, col_sums, dispatch, layer_norm_bwd, layer_norm_fwd};
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

pub(crate) fn parallelism() -> Parallelism {
    let n = candle_core::utils::get_num_threads();
    if n > 1 {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// A row-major matrix view: element (r, c) at `r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub(crate) d: &'a [T],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

pub(crate) fn rm<T>(d: &[T], cols: usize) -> Mat<'_, T> {
    Mat { d, rs: cols, cs: 1 }
}

/// Transposed view of a row-major (rows × cols) matrix.
pub(crate) fn tr<T>(d: &[T], cols: usize) -> Mat<'_, T> {
    Mat { d, rs: 1, cs: cols }
}

/// `dst (m × n, row-major) = [dst +] a (m × k) · b (k × n)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    acc: bool,
    a: Mat<T>,
    b: Mat<T>,
    par: Parallelism,
) {
    mm_rows(m, n, k, dst, n, acc, a, b, par)
}

/// [`mm`] into rows of `dst` that lie `dst_rs` elements apart (a column block of a wider
/// matrix).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm_rows<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    acc: bool,
    a: Mat<T>,
    b: Mat<T>,
    par: Parallelism,
) {
    assert!(
        m == 0 || n == 0 || (dst_rs >= n && (m - 1) * dst_rs + n <= dst.len()),
        "gemm: destination too small"
    );
    let last =
        |x: Mat<T>, rows: usize, cols: usize| (rows.max(1) - 1) * x.rs + (cols.max(1) - 1) * x.cs;
    assert!(
        m == 0 || k == 0 || (last(a, m, k) < a.d.len() && last(b, k, n) < b.d.len()),
        "gemm: operand too small"
    );
    // SAFETY: the asserts above keep every index gemm touches inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            a.d.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.d.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// `x Wᵀ + b` for rows x (R × in), W (out × in), b (out).
pub(crate) fn linear<T: Elem>(x: &[T], w: &[T], b: &[T], inp: usize) -> Vec<T> {
    let out = b.len();
    let rows = x.len() / inp;
    let mut y = vec![T::zero(); rows * out];
    y.par_chunks_mut(out * 64)
        .for_each(|c| c.chunks_mut(out).for_each(|r| r.copy_from_slice(b)));
    mm(
        rows,
        out,
        inp,
        &mut y,
        true,
        rm(x, inp),
        tr(w, inp),
        parallelism(),
    );
    y
}

/// Rows per parallel block (fixed by the width, so sums do not depend on the thread count).
pub(crate) fn block(n: usize) -> usize {
    (32768 / n.max(1)).max(1) * n
}

/// Runs `f(block index, rows of every slice)` over blocks of rows in parallel and returns the
/// per-block accumulators (width `acc`) summed in block order.
pub(crate) fn rows_sum<T: Elem>(
    width: usize,
    rows: usize,
    acc: usize,
    f: impl Fn(Range<usize>, &mut [T]) + Sync,
) -> Vec<T> {
    let per = block(width) / width;
    let parts: Vec<Vec<T>> = (0..rows.div_ceil(per))
        .into_par_iter()
        .map(|bi| {
            let mut a = vec![T::zero(); acc];
            f(bi * per..((bi + 1) * per).min(rows), &mut a);
            a
        })
        .collect();
    let mut total = vec![T::zero(); acc];
    for p in &parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += *v;
        }
    }
    total
}

/// Mutable rows `r` of a (· × width) buffer shared across blocks that touch disjoint rows.
#[derive(Clone, Copy)]
pub(crate) struct Rows<T>(*mut T, usize);
// SAFETY: blocks write disjoint row ranges only.
unsafe impl<T: Send> Send for Rows<T> {}
unsafe impl<T: Send + Sync> Sync for Rows<T> {}

impl<T> Rows<T> {
    pub(crate) fn of(v: &mut [T], width: usize) -> Self {
        Self(v.as_mut_ptr(), width)
    }
    /// SAFETY: callers touch each row from one block only.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get(&self, r: Range<usize>) -> &mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r.start * self.1), r.len() * self.1) }
    }
}

pub(crate) fn gelu_all<T: Elem>(x: &[T], k: Gelu) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(8192)
        .zip(x.par_chunks(8192))
        .for_each(|(y, x)| {
            vectorised(|| match k {
                Gelu::Tanh => y
                    .iter_mut()
                    .zip(x)
                    .for_each(|(y, x)| *y = T::gelu(Gelu::Tanh, *x).0),
                Gelu::Exact => y
                    .iter_mut()
                    .zip(x)
                    .for_each(|(y, x)| *y = T::gelu(Gelu::Exact, *x).0),
            })
        });
    y
}

/// `d ⊙ act'(pre)` in place, returning the column sums (the bias gradient).
pub(crate) fn gelu_grad_inplace<T: Elem>(d: &mut [T], pre: &[T], n: usize, k: Gelu) -> Vec<T> {
    let rows = d.len() / n;
    let out = Rows::of(d, n);
    rows_sum(n, rows, n, |r, acc| {
        // SAFETY: each block owns its rows.
        let d = unsafe { out.get(r.clone()) };
        let p = &pre[r.start * n..r.end * n];
        vectorised(|| {
            for (d, p) in d.chunks_mut(n).zip(p.chunks(n)) {
                match k {
                    Gelu::Tanh => (0..n).for_each(|j| {
                        d[j] = d[j] * T::gelu(Gelu::Tanh, p[j]).1;
                        acc[j] += d[j];
                    }),
                    Gelu::Exact => (0..n).for_each(|j| {
                        d[j] = d[j] * T::gelu(Gelu::Exact, p[j]).1;
                        acc[j] += d[j];
                    }),
                }
            }
        })
    })
}

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
pub(crate) fn conv<T: Elem + FftFloat>(
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
pub(crate) fn conv_bwd<T: Elem + FftFloat>(
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

fn forward<T: Elem + FftFloat>(sp: &LayerSpec, x: &[T], p: &[T], k: &[T]) -> (Vec<T>, Saved<T>) {
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
            g.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(g, (a, b))| *g = *a * *b)
        });
    let z_pre = linear(&g, w(12), w(13), h);
    let mut zv = vec![T::zero(); z_pre.len()];
    let act = sp.act;
    zv.par_chunks_mut(8192)
        .zip(z_pre.par_chunks(8192).zip(v_pre.par_chunks(8192)))
        .for_each(|(o, (z, v))| {
            vectorised(|| match act {
                Gelu::Tanh => o.iter_mut().zip(z.iter().zip(v)).for_each(|(o, (z, v))| {
                    *o = T::gelu(Gelu::Tanh, *z).0 * T::gelu(Gelu::Tanh, *v).0
                }),
                Gelu::Exact => o.iter_mut().zip(z.iter().zip(v)).for_each(|(o, (z, v))| {
                    *o = T::gelu(Gelu::Exact, *z).0 * T::gelu(Gelu::Exact, *v).0
                }),
            })
        });
    // y = x + zv Woᵀ + bo: start from x + bo, accumulate the product.
    let mut y = vec![T::zero(); x.len()];
    let bo = w(15);
    y.par_chunks_mut(block(h))
        .zip(x.par_chunks(block(h)))
        .for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(h).zip(x.chunks(h)) {
                for j in 0..h {
                    y[j] = x[j] + bo[j];
                }
            }
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
    let (acc_z, acc_v) = acc.split_at_mut(n);
    for ((dz, dv), (zp, vp)) in dz
        .chunks_mut(n)
        .zip(dv.chunks_mut(n))
        .zip(zp.chunks(n).zip(vp.chunks(n)))
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

/// `dx = dy W` (rows × in) of a linear layer's input, for dy (rows × out) and W (out × in).
pub(crate) fn input_grad<T: Elem>(dy: &[T], w: &[T], out: usize, inp: usize) -> Vec<T> {
    let rows = dy.len() / out;
    let mut dx = vec![T::zero(); rows * inp];
    mm(
        rows,
        inp,
        out,
        &mut dx,
        false,
        rm(dy, out),
        rm(w, inp),
        parallelism(),
    );
    dx
}

/// `dW = dyᵀ x` (out × in) into `dst`.
pub(crate) fn weight_grad<T: Elem>(dst: &mut [T], dy: &[T], x: &[T], out: usize, inp: usize) {
    let rows = dy.len() / out;
    mm(
        out,
        inp,
        rows,
        dst,
        false,
        tr(dy, out),
        rm(x, inp),
        parallelism(),
    );
}

/// Returns [dx, dp, dk], packed.
fn backward<T: Elem + FftFloat>(
    sp: &LayerSpec,
    s: &Saved<T>,
    x: &[T],
    p: &[T],
    dy: &[T],
) -> Vec<T> {
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
        vectorised(|| match act {
            Gelu::Tanh => gated_gelu_bwd(dz, dv, zp, vp, i, acc, |x| T::gelu(Gelu::Tanh, x)),
            Gelu::Exact => gated_gelu_bwd(dz, dv, zp, vp, i, acc, |x| T::gelu(Gelu::Exact, x)),
        })
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
        for (((df, db), g), (af, ab)) in df
            .chunks_mut(h)
            .zip(db.chunks_mut(h))
            .zip(g.chunks(h))
            .zip(af.chunks(h).zip(ab.chunks(h)))
        {
            for j in 0..h {
                df[j] = g[j] * ab[j];
                db[j] = g[j] * af[j];
                acc_f[j] += df[j];
                acc_b[j] += db[j];
            }
        }
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

    fn forward<T: Elem + FftFloat>(&self, x: &[T], p: &[T], k: &[T]) -> (Vec<T>, Saved<T>) {
        forward(self, x, p, k)
    }

    fn backward<T: Elem + FftFloat>(&self, s: &Saved<T>, x: &[T], p: &[T], g: &[T]) -> Vec<T> {
        backward(self, s, x, p, g)
    }
}

// ------------------------------------------------------------------------------------------
// a linear layer as one node

/// `x Wᵀ + b` for rows x (R, in), W (out, in), b (out) as one node: the product and the bias in
/// one `gemm` (the output starts as the bias rows), and a backward that writes `dW` in W's own
/// layout (candle's transposed-weight view costs a zeroed buffer and a strided add per step).
struct LinearOp;

fn linear_bwd<T: Elem>(x: &[T], w: &[T], g: &[T], inp: usize) -> Vec<T> {
    let out = w.len() / inp;
    let rows = x.len() / inp;
    let mut r = vec![T::zero(); x.len() + w.len() + out];
    let (dx, rest) = r.split_at_mut(x.len());
    let (dw, db) = rest.split_at_mut(w.len());
    mm(
        rows,
        inp,
        out,
        dx,
        false,
        rm(g, out),
        rm(w, inp),
        parallelism(),
    );
    weight_grad(dw, g, x, out, inp);
    db.copy_from_slice(&col_sums(g, out));
    r
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, inp) = l1.shape().dims2()?;
        let (out, win) = l2.shape().dims2()?;
        if win != inp || l3.shape().dims() != [out] {
            candle_core::bail!(
                "linear: input {:?}, weight {:?}, bias {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let y = dispatch(
            "linear",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |v| linear(v[0], v[1], v[2], inp),
            |v| linear(v[0], v[1], v[2], inp),
        )?;
        Ok((y, Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LinearGrad)?;
        let (nx, nw) = (x.elem_count(), w.elem_count());
        Ok((
            Some(packed.narrow(0, 0, nx)?.reshape(x.shape())?),
            Some(packed.narrow(0, nx, nw)?.reshape(w.shape())?),
            Some(packed.narrow(0, nx + nw, b.elem_count())?),
        ))
    }
}

/// (x, W, dy) → [dx, dW, db], packed.
struct LinearGrad;

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, inp) = l1.shape().dims2()?;
        let out = dispatch(
            "linear backward",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |v| linear_bwd(v[0], v[1], v[2], inp),
            |v| linear_bwd(v[0], v[1], v[2], inp),
        )?;
        let (o, _) = l2.shape().dims2()?;
        let n = l1.shape().elem_count() + l2.shape().elem_count() + o;
        Ok((out, Shape::from(n)))
    }
}

/// `x Wᵀ + b` for rows x (R, in) as one node on the CPU (f32/f64); `None` elsewhere, for the
/// caller's op-built path.
pub fn linear_rows(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let ok = super::cpu::enabled()
        && [x, w, b]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == x.dtype())
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if !ok {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LinearOp,
    )?))
}
