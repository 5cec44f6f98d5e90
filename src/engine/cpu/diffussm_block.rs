//! A whole DiffuSSM block as one autograd node on the CPU (f32/f64), with a hand-written
//! backward: the same fusion as the BiGS layer's ([`super::bigs_fused`], whose gemm, row-block
//! and convolution helpers it shares).
//!
//! Profiled on the `diffussm-fashion` training step (2 cores), the op-built block spent under a
//! quarter of the CPU time in matrix products: the rest went to candle's element-wise passes
//! (broadcast modulations, gates, activations), the zero-filled buffer and add that candle's
//! backward gives every input of every node, and thread hand-offs between ~40 small ops per
//! block. Here the forward keeps the activations its backward needs; every product is one
//! `gemm` call and every element-wise stage one parallel pass.
//!
//! The math is `engine::diffussm::DiffussmBlock::forward_ops`'s (tested equal to it in f64 and
//! f32, outputs and every gradient), for rows x (R = B·J, D):
//! ```text
//! h  = LN(x)·(1 + scale_b) + shift_b                    adaLN, (shift, scale, gate) = mods_b
//! a  = σ(h W0ᵀ + b0)                                     (R, D)
//! u  = σ(a Wupᵀ + bup)                                   (R, M·D) = (B, L, D)
//! yf = K_f ∗ u,  yb = K_b ⋆ u                            causal / anti-causal, skip D in tap 0
//! z  = σ(concat_m [yf | yb]_m W↓_mᵀ + b↓_m)              (R, 2D)
//! o  = σ(z W2ᵀ + b2) ⊙ σ(h W1ᵀ + b1)                     (R, F)
//! y  = x + gate_b ⊙ (o W3ᵀ + b3)
//! ```
//! Inputs: x (R, D); the parameters as one flat vector in [`PARAMS`] order; and the "extras"
//! (kernels K_f, K_b, each (ck, L) with ck = D per-channel or 1 shared, then the modulations
//! (B, 3D)), flat.

use std::ops::Range;

use candle_core::Layout;
use rayon::prelude::*;

use super::act::{Activation, Gelu};
use super::bigs_layer::{conv, conv_bwd, gated_gelu_bwd};
use super::float::Elem;
use super::gemm::{Mat, input_grad, linear, mm, mm_rows, parallelism, rm, weight_grad};
use super::node::{FusedKernels, FusedNode};
use super::rowops::{layer_norm_bwd, layer_norm_fwd};
use super::rows::{Rows, block, col_sums, rows_sum};

use super::simd::{avx2_instance, vectorised};

/// Order of the block's parameters in the flat vector (DiT / DiffuSSM names under the block).
pub const PARAMS: [&str; 12] = [
    "w0.weight",
    "w0.bias",
    "up.weight",
    "up.bias",
    "down.weight",
    "down.bias",
    "w1.weight",
    "w1.bias",
    "w2.weight",
    "w2.bias",
    "w3.weight",
    "w3.bias",
];

/// What the block needs to know besides its tensors.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    pub batch: usize,
    /// Stream length J (L = J·M).
    pub stream: usize,
    /// Hourglass ratio M.
    pub m: usize,
    /// Width D.
    pub d: usize,
    /// Fusion width F.
    pub f: usize,
    /// Kernel rows: D (per-channel) or 1 (shared).
    pub ck: usize,
    pub act: Activation,
    /// Dense convolution; FFT otherwise.
    pub dense: bool,
}

impl BlockSpec {
    fn l(&self) -> usize {
        self.stream * self.m
    }

    fn rows(&self) -> usize {
        self.batch * self.stream
    }

    /// Element counts of [`PARAMS`].
    pub fn param_sizes(&self) -> [usize; 12] {
        let (d, m, f) = (self.d, self.m, self.f);
        [
            d * d,
            d,
            m * d * d,
            m * d,
            4 * d * d,
            2 * d,
            f * d,
            f,
            f * 2 * d,
            f,
            d * f,
            d,
        ]
    }

    fn ranges(&self) -> Vec<Range<usize>> {
        let mut at = 0;
        self.param_sizes()
            .iter()
            .map(|n| {
                let r = at..at + n;
                at += n;
                r
            })
            .collect()
    }

    /// Elements of the extras input: two kernels and the modulations.
    pub fn extras_len(&self) -> usize {
        2 * self.ck * self.l() + self.batch * 3 * self.d
    }
}

/// σ and σ′ of SiLU, `x·s(x)` with s the logistic function.
#[inline(always)]
fn silu<T: Elem>(x: T) -> (T, T) {
    let s = T::one() / (T::one() + (-x).exp());
    (x * s, s * (T::one() + x * (T::one() - s)))
}

/// Binds `$f` to the activation's (value, derivative) closure, fixed outside the loops over
/// elements (a `match` inside them keeps them from vectorising).
macro_rules! with_activation {
    ($act:expr, $t:ty, |$f:ident| $body:expr) => {
        match $act {
            Activation::GeluTanh => {
                let $f = |x: $t| <$t as Elem>::gelu(Gelu::Tanh, x);
                $body
            }
            Activation::Gelu => {
                let $f = |x: $t| <$t as Elem>::gelu(Gelu::Exact, x);
                $body
            }
            Activation::Silu => {
                let $f = |x: $t| silu::<$t>(x);
                $body
            }
        }
    };
}

/// `y = σ(x)` on one chunk (always inlined into its AVX2 instance).
#[inline(always)]
fn act_map<T: Elem, F: Fn(T) -> (T, T)>(y: &mut [T], x: &[T], f: &F) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = f(*x).0;
    }
}

/// `d ← d ⊙ σ′(p)` over rows of width `acc.len()`, column sums into `acc`.
#[inline(always)]
fn act_grad_rows<T: Elem, F: Fn(T) -> (T, T)>(d: &mut [T], p: &[T], acc: &mut [T], f: &F) {
    let n = acc.len();
    for (d, p) in d.chunks_mut(n).zip(p.chunks(n)) {
        for ((d, p), a) in d.iter_mut().zip(p).zip(acc.iter_mut()) {
            *d *= f(*p).1;
            *a += *d;
        }
    }
}

avx2_instance!(act_map_simd [T: Elem, F: Fn(T) -> (T, T)] => act_map(y: &mut [T], x: &[T], f: &F));
avx2_instance!(act_grad_rows_simd [T: Elem, F: Fn(T) -> (T, T)] => act_grad_rows(d: &mut [T], p: &[T], acc: &mut [T], f: &F));

/// `σ(x)` element-wise.
fn act_all<T: Elem>(x: &[T], f: impl Fn(T) -> (T, T) + Sync) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(8192)
        .zip(x.par_chunks(8192))
        .for_each(|(y, x)| {
            act_map_simd(y, x, &f);
        });
    y
}

/// `d ⊙ σ′(pre)` in place over rows of width `n`, returning the column sums (the bias gradient).
fn act_grad_inplace<T: Elem>(
    d: &mut [T],
    pre: &[T],
    n: usize,
    f: impl Fn(T) -> (T, T) + Sync,
) -> Vec<T> {
    let rows = d.len() / n;
    let out = Rows::of(d, n);
    rows_sum(n, rows, n, |r, acc| {
        // SAFETY: each block owns its rows.
        let d = unsafe { out.get(r.clone()) };
        let p = &pre[r.start * n..r.end * n];
        act_grad_rows_simd(d, p, acc, &f);
    })
}

/// Activations of one forward pass (row-major, R rows).
pub(crate) struct Saved<T> {
    /// LN(x), (R, D).
    n: Vec<T>,
    h: Vec<T>,
    a_pre: Vec<T>,
    a: Vec<T>,
    u_pre: Vec<T>,
    u: Vec<T>,
    yf: Vec<T>,
    yb: Vec<T>,
    z_pre: Vec<T>,
    z: Vec<T>,
    p_pre: Vec<T>,
    q_pre: Vec<T>,
    o: Vec<T>,
    o2: Vec<T>,
    /// The extras input (kernels and modulations).
    e: Vec<T>,
}

/// The down-maps' weight block `W↓_m[:, half·D .. (half+1)·D]`ᵀ as a (D × 2D/M) operand.
fn down_t<T>(w: &[T], d: usize, m: usize, mi: usize, half: usize) -> Mat<'_, T> {
    let (o, i) = (2 * d / m, 2 * d);
    Mat {
        d: &w[mi * o * i + half * d..],
        rs: 1,
        cs: i,
    }
}

fn forward<T: Elem>(
    sp: &BlockSpec,
    x: &[T],
    p: &[T],
    e: &[T],
    f: impl Fn(T) -> (T, T) + Sync + Copy,
) -> (Vec<T>, Saved<T>) {
    let (d, m, ff, ck, l, rows) = (sp.d, sp.m, sp.f, sp.ck, sp.l(), sp.rows());
    let pr = sp.ranges();
    let w = |j: usize| &p[pr[j].clone()];
    let (kf, rest) = e.split_at(ck * l);
    let (kb, mods) = rest.split_at(ck * l);
    let ones = vec![T::one(); d];
    let zeros = vec![T::zero(); d];
    let n = layer_norm_fwd(x, &ones, &zeros, 1e-6);
    // h = n·(1 + scale_b) + shift_b
    let mut h = vec![T::zero(); n.len()];
    h.par_chunks_mut(sp.stream * d)
        .zip(n.par_chunks(sp.stream * d))
        .enumerate()
        .for_each(|(b, (h, n))| {
            let md = &mods[b * 3 * d..(b + 1) * 3 * d];
            let (shift, scale) = (&md[..d], &md[d..2 * d]);
            for (h, n) in h.chunks_mut(d).zip(n.chunks(d)) {
                for c in 0..d {
                    h[c] = n[c] * (T::one() + scale[c]) + shift[c];
                }
            }
        });
    let a_pre = linear(&h, w(0), w(1), d);
    let a = act_all(&a_pre, f);
    let u_pre = linear(&a, w(2), w(3), d);
    let u = act_all(&u_pre, f);
    let yf = conv(&u, kf, d, ck, false, sp.dense);
    let yb = conv(&u, kb, d, ck, true, sp.dense);
    // z_pre[r, m-block] = [yf | yb] at position (r, m) through W↓_m, plus b↓ (the flat (M, 2D/M)
    // bias is exactly one row of z_pre).
    let two_d = 2 * d;
    let ob = two_d / m;
    let mut z_pre = vec![T::zero(); rows * two_d];
    let bd = w(5);
    z_pre
        .par_chunks_mut(block(two_d))
        .for_each(|c| c.chunks_mut(two_d).for_each(|r| r.copy_from_slice(bd)));
    let par = parallelism();
    for mi in 0..m {
        for (half, y) in [(0, &yf), (1, &yb)] {
            let a = Mat {
                d: &y[mi * d..],
                rs: m * d,
                cs: 1,
            };
            mm_rows(
                rows,
                ob,
                d,
                &mut z_pre[mi * ob..],
                two_d,
                true,
                a,
                down_t(w(4), d, m, mi, half),
                par,
            );
        }
    }
    let z = act_all(&z_pre, f);
    let p_pre = linear(&z, w(8), w(9), two_d);
    let q_pre = linear(&h, w(6), w(7), d);
    let mut o = vec![T::zero(); p_pre.len()];
    o.par_chunks_mut(8192)
        .zip(p_pre.par_chunks(8192).zip(q_pre.par_chunks(8192)))
        .for_each(|(o, (pp, qp))| {
            vectorised(
                #[inline(always)]
                || {
                    let (pp, qp) = (&pp[..o.len()], &qp[..o.len()]);
                    for j in 0..o.len() {
                        o[j] = f(pp[j]).0 * f(qp[j]).0;
                    }
                },
            )
        });
    let o2 = linear(&o, w(10), w(11), ff);
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(sp.stream * d)
        .zip(
            x.par_chunks(sp.stream * d)
                .zip(o2.par_chunks(sp.stream * d)),
        )
        .enumerate()
        .for_each(|(b, (y, (x, o2)))| {
            let gate = &mods[b * 3 * d + 2 * d..(b + 1) * 3 * d];
            for ((y, x), o2) in y.chunks_mut(d).zip(x.chunks(d)).zip(o2.chunks(d)) {
                for c in 0..d {
                    y[c] = x[c] + gate[c] * o2[c];
                }
            }
        });
    let saved = Saved {
        n,
        h,
        a_pre,
        a,
        u_pre,
        u,
        yf,
        yb,
        z_pre,
        z,
        p_pre,
        q_pre,
        o,
        o2,
        e: e.to_vec(),
    };
    (y, saved)
}

/// Returns [dx, dparams, dextras], packed.
fn backward<T: Elem>(
    sp: &BlockSpec,
    s: &Saved<T>,
    x: &[T],
    p: &[T],
    g: &[T],
    f: impl Fn(T) -> (T, T) + Sync + Copy,
) -> Vec<T> {
    let (d, m, ff, ck, l, rows) = (sp.d, sp.m, sp.f, sp.ck, sp.l(), sp.rows());
    let (two_d, ob, jd) = (2 * d, 2 * d / sp.m, sp.stream * d);
    let pr = sp.ranges();
    let w = |j: usize| &p[pr[j].clone()];
    let (kf, rest) = s.e.split_at(ck * l);
    let (kb, mods) = rest.split_at(ck * l);
    let par = parallelism();
    let mut out = vec![T::zero(); x.len() + p.len() + s.e.len()];
    let (dx_out, rest) = out.split_at_mut(x.len());
    let (dp, de) = rest.split_at_mut(p.len());
    let (dk_out, dmods) = de.split_at_mut(2 * ck * l);
    // y = x + gate ⊙ o2: dgate_b = Σ_rows g ⊙ o2, do2 = g ⊙ gate_b.
    let mut do2 = vec![T::zero(); g.len()];
    do2.par_chunks_mut(jd)
        .zip(dmods.par_chunks_mut(3 * d))
        .enumerate()
        .for_each(|(b, (do2, dm))| {
            let gate = &mods[b * 3 * d + 2 * d..(b + 1) * 3 * d];
            let span = b * jd..(b + 1) * jd;
            let dgate = &mut dm[2 * d..];
            for ((dd, gg), o2) in do2
                .chunks_mut(d)
                .zip(g[span.clone()].chunks(d))
                .zip(s.o2[span].chunks(d))
            {
                for c in 0..d {
                    dd[c] = gg[c] * gate[c];
                    dgate[c] += gg[c] * o2[c];
                }
            }
        });
    // o2 = o W3ᵀ + b3
    weight_grad(&mut dp[pr[10].clone()], &do2, &s.o, d, ff);
    dp[pr[11].clone()].copy_from_slice(&col_sums(&do2, d));
    let mut dpp = input_grad(&do2, w(10), d, ff);
    // o = σ(p_pre) ⊙ σ(q_pre): dpp becomes dp_pre in place, dq_pre beside it.
    let mut dqp = vec![T::zero(); rows * ff];
    let (dpr, dqr) = (Rows::of(&mut dpp, ff), Rows::of(&mut dqp, ff));
    let sums = rows_sum(ff, rows, 2 * ff, |r, acc| {
        // SAFETY: each block owns its rows.
        let (dpp, dqp) = unsafe { (dpr.get(r.clone()), dqr.get(r.clone())) };
        let span = r.start * ff..r.end * ff;
        gated_gelu_bwd(dpp, dqp, &s.p_pre[span.clone()], &s.q_pre[span], ff, acc, f);
    });
    dp[pr[9].clone()].copy_from_slice(&sums[..ff]);
    dp[pr[7].clone()].copy_from_slice(&sums[ff..]);
    // p_pre = z W2ᵀ + b2, q_pre = h W1ᵀ + b1
    weight_grad(&mut dp[pr[8].clone()], &dpp, &s.z, ff, two_d);
    weight_grad(&mut dp[pr[6].clone()], &dqp, &s.h, ff, d);
    let mut dz = input_grad(&dpp, w(8), ff, two_d);
    let mut dh = input_grad(&dqp, w(6), ff, d);
    // z = σ(z_pre); the down-maps per sub-position m.
    let dbd = act_grad_inplace(&mut dz, &s.z_pre, two_d, f);
    dp[pr[5].clone()].copy_from_slice(&dbd);
    let dzp = &dz;
    let mut dyf = vec![T::zero(); rows * m * d];
    let mut dyb = vec![T::zero(); rows * m * d];
    {
        let dwd = &mut dp[pr[4].clone()];
        for mi in 0..m {
            // (2D/M × R) view of the m-th column block of dz_pre.
            let dzt = Mat {
                d: &dzp[mi * ob..],
                rs: 1,
                cs: two_d,
            };
            let dzm = Mat {
                d: &dzp[mi * ob..],
                rs: two_d,
                cs: 1,
            };
            for (half, y, dy) in [(0, &s.yf, &mut dyf), (1, &s.yb, &mut dyb)] {
                let ym = Mat {
                    d: &y[mi * d..],
                    rs: m * d,
                    cs: 1,
                };
                // dW↓_m[:, half] = dz_mᵀ y_m
                mm_rows(
                    ob,
                    d,
                    rows,
                    &mut dwd[mi * ob * two_d + half * d..],
                    two_d,
                    false,
                    dzt,
                    ym,
                    par,
                );
                // dy_m = dz_m W↓_m[:, half]
                let wm = Mat {
                    d: &w(4)[mi * ob * two_d + half * d..],
                    rs: two_d,
                    cs: 1,
                };
                mm_rows(rows, d, ob, &mut dy[mi * d..], m * d, false, dzm, wm, par);
            }
        }
    }
    // the SSMs
    let (mut du, dkf) = conv_bwd(&s.u, kf, &dyf, d, ck, false, sp.dense);
    let (dub, dkb) = conv_bwd(&s.u, kb, &dyb, d, ck, true, sp.dense);
    dk_out[..ck * l].copy_from_slice(&dkf);
    dk_out[ck * l..].copy_from_slice(&dkb);
    du.par_chunks_mut(8192)
        .zip(dub.par_chunks(8192))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += *b));
    // u = σ(a Wupᵀ + bup), rows of width M·D
    let dbup = act_grad_inplace(&mut du, &s.u_pre, m * d, f);
    dp[pr[3].clone()].copy_from_slice(&dbup);
    weight_grad(&mut dp[pr[2].clone()], &du, &s.a, m * d, d);
    let mut da = input_grad(&du, w(2), m * d, d);
    // a = σ(h W0ᵀ + b0)
    let db0 = act_grad_inplace(&mut da, &s.a_pre, d, f);
    dp[pr[1].clone()].copy_from_slice(&db0);
    weight_grad(&mut dp[pr[0].clone()], &da, &s.h, d, d);
    mm(rows, d, d, &mut dh, true, rm(&da, d), rm(w(0), d), par);
    // h = n·(1 + scale) + shift: dshift_b = Σ dh, dscale_b = Σ dh ⊙ n, dn = dh ⊙ (1 + scale).
    let mut dn = vec![T::zero(); dh.len()];
    dn.par_chunks_mut(jd)
        .zip(dmods.par_chunks_mut(3 * d))
        .enumerate()
        .for_each(|(b, (dn, dm))| {
            let scale = &mods[b * 3 * d + d..b * 3 * d + 2 * d];
            let span = b * jd..(b + 1) * jd;
            let (dshift, rest) = dm.split_at_mut(d);
            let dscale = &mut rest[..d];
            for ((dn, dh), n) in dn
                .chunks_mut(d)
                .zip(dh[span.clone()].chunks(d))
                .zip(s.n[span].chunks(d))
            {
                for c in 0..d {
                    dshift[c] += dh[c];
                    dscale[c] += dh[c] * n[c];
                    dn[c] = dh[c] * (T::one() + scale[c]);
                }
            }
        });
    let ones = vec![T::one(); d];
    let packed = layer_norm_bwd(x, &dn, &ones, 1e-6, Some(g));
    dx_out.copy_from_slice(&packed[..x.len()]);
    out
}

// ------------------------------------------------------------------------------------------
// candle glue

fn check(sp: &BlockSpec, lx: &Layout, lp: &Layout, le: &Layout) -> candle_core::Result<()> {
    let (rows, d) = lx.shape().dims2()?;
    let np: usize = sp.param_sizes().iter().sum();
    if d != sp.d
        || rows != sp.rows()
        || sp.m == 0
        || !(2 * sp.d).is_multiple_of(sp.m)
        || !(sp.ck == 1 || sp.ck == sp.d)
        || lp.shape().elem_count() != np
        || le.shape().elem_count() != sp.extras_len()
    {
        candle_core::bail!(
            "fused DiffuSSM block: rows {:?}, params {:?}, extras {:?} do not fit {sp:?}",
            lx.shape(),
            lp.shape(),
            le.shape(),
        )
    }
    Ok(())
}

/// The block as a fused node: the forward op (one instance per call).
pub(crate) type DiffussmBlockOp = FusedNode<BlockSpec>;

impl FusedKernels for BlockSpec {
    const WHAT: &'static str = "fused DiffuSSM block";
    const OP: &'static str = "fused-diffussm-block";
    const GRAD_OP: &'static str = "fused-diffussm-block-grad";
    type Saved<T: Send + 'static> = Saved<T>;

    fn check(&self, x: &Layout, p: &Layout, e: &Layout) -> candle_core::Result<()> {
        check(self, x, p, e)
    }

    fn forward<T: Elem>(&self, x: &[T], p: &[T], e: &[T]) -> (Vec<T>, Saved<T>) {
        with_activation!(self.act, T, |f| forward(self, x, p, e, f))
    }

    fn backward<T: Elem>(&self, s: &Saved<T>, x: &[T], p: &[T], g: &[T]) -> Vec<T> {
        with_activation!(self.act, T, |f| backward(self, s, x, p, g, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_derivative_matches_a_central_difference() {
        for x in [-3.0f64, -0.5, 0.0, 0.7, 4.0] {
            let h = 1e-6;
            let fd = (silu(x + h).0 - silu(x - h).0) / (2.0 * h);
            assert!((silu(x).1 - fd).abs() < 1e-8, "x = {x}");
        }
    }

    #[test]
    fn param_sizes_add_up_to_the_block() {
        let sp = BlockSpec {
            batch: 2,
            stream: 3,
            m: 2,
            d: 4,
            f: 8,
            ck: 4,
            act: Activation::GeluTanh,
            dense: false,
        };
        // w0 16+4, up 32+8, down 64+8, w1 32+8, w2 64+8, w3 32+4
        assert_eq!(sp.param_sizes().iter().sum::<usize>(), 280);
        assert_eq!(sp.extras_len(), 2 * 4 * 6 + 2 * 12);
    }
}
