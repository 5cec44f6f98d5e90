//! Row-broadcast ops fused with their backward passes (CPU, f32/f64): a bias added to every row
//! (with an optional GELU), the gated products of a BiGS layer, the residual add and LayerNorm.
//!
//! Composed from candle ops, each of these is several nodes of the autograd graph. Every node
//! costs candle's backward a zero-filled buffer and an add per input, and the gradient of a
//! broadcast `(…, N) + (N)` is a strided sum over rows that candle runs on one thread. Together
//! they were over half of the main thread's time in a BiGS training step. Here each op is one
//! node, forward and backward are one parallel pass over the rows each, and column sums are
//! accumulated per fixed block of rows and added in block order, so gradients are bitwise
//! reproducible on any thread count. Other devices and dtypes fall back to candle's ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::act::Gelu;
use super::float::{Elem, dispatch};
use super::rows::{Rows, block_rows, col_sums, rows_sum, sum_blocks};
use super::simd::vectorised;
use crate::engine::error::{EngineError, Result};

/// Binds `$f` to the activation `k` (an `Option<Gelu>`) with its derivative, as a closure
/// whose variant is fixed at compile time: a `match` on the variant inside the loop over
/// elements would keep the loop from vectorising.
macro_rules! with_act {
    ($act:expr, $t:ty, |$f:ident| $body:expr) => {
        match $act {
            None => {
                let $f = |x: $t| (x, 1.0 as $t);
                $body
            }
            Some(Gelu::Tanh) => {
                let $f = |x: $t| <$t as Elem>::gelu(Gelu::Tanh, x);
                $body
            }
            Some(Gelu::Exact) => {
                let $f = |x: $t| <$t as Elem>::gelu(Gelu::Exact, x);
                $body
            }
        }
    };
}

/// A small vector (a bias or LayerNorm weight) carried by a backward op, in the kernel's type.
fn small<T: Elem>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&x| T::of(x)).collect()
}

fn small_vec(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Splits a flat gradient pack into consecutive parts of the given shapes.
fn unpack(packed: &Tensor, shapes: &[&Shape]) -> candle_core::Result<Vec<Tensor>> {
    let mut at = 0;
    shapes
        .iter()
        .map(|s| {
            let n = s.elem_count();
            let t = packed.narrow(0, at, n)?.reshape(*s)?;
            at += n;
            Ok(t)
        })
        .collect()
}

fn last_dim(l: &Layout) -> usize {
    l.shape().dims().last().copied().unwrap_or(1)
}

// ------------------------------------------------------------------------------------------
// bias (+ GELU)

/// `act(y + b)` for y (…, N), b (N).
struct BiasAct(Option<Gelu>);

fn bias_act_fwd<T: Elem>(y: &[T], b: &[T], f: impl Fn(T) -> (T, T) + Sync) -> Vec<T> {
    let n = b.len();
    let bn = block_rows(n) * n;
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(bn)
        .zip(y.par_chunks(bn))
        .for_each(|(o, y)| {
            vectorised(
                #[inline(always)]
                || {
                    for (o, y) in o.chunks_mut(n).zip(y.chunks(n)) {
                        for j in 0..n {
                            o[j] = f(y[j] + b[j]).0;
                        }
                    }
                },
            )
        });
    out
}

/// (y, b, g) → [dy = g·act'(y + b), db = Σ_rows dy], packed.
fn bias_act_bwd<T: Elem>(y: &[T], b: &[T], g: &[T], f: impl Fn(T) -> (T, T) + Sync) -> Vec<T> {
    let n = b.len();
    let bn = block_rows(n) * n;
    let mut out = vec![T::zero(); y.len() + n];
    let (dy, db) = out.split_at_mut(y.len());
    let parts: Vec<Vec<T>> = dy
        .par_chunks_mut(bn)
        .zip(y.par_chunks(bn).zip(g.par_chunks(bn)))
        .map(|(d, (y, g))| {
            vectorised(
                #[inline(always)]
                || {
                    let mut acc = vec![T::zero(); n];
                    for (d, (y, g)) in d.chunks_mut(n).zip(y.chunks(n).zip(g.chunks(n))) {
                        for j in 0..n {
                            let v = g[j] * f(y[j] + b[j]).1;
                            d[j] = v;
                            acc[j] += v;
                        }
                    }
                    acc
                },
            )
        })
        .collect();
    db.copy_from_slice(&sum_blocks(&parts, n));
    out
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "fused-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _time = super::prof::span(self.name());
        let act = self.0;
        let s = dispatch(
            "bias-act",
            &[(s1, l1), (s2, l2)],
            |x| with_act!(act, f32, |f| bias_act_fwd(x[0], x[1], f)),
            |x| with_act!(act, f64, |f| bias_act_fwd(x[0], x[1], f)),
        )?;
        Ok((s, l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        match self.0 {
            None => {
                let db = g.apply_op1_no_bwd(&ColSum)?;
                Ok((Some(g), Some(db)))
            }
            Some(k) => {
                let packed = y.apply_op3_no_bwd(b, &g, &BiasActGrad(k))?;
                let p = unpack(&packed, &[y.shape(), b.shape()])?;
                Ok((Some(p[0].clone()), Some(p[1].clone())))
            }
        }
    }
}

struct BiasActGrad(Gelu);

impl CustomOp3 for BiasActGrad {
    fn name(&self) -> &'static str {
        "fused-bias-act-grad"
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
        let _time = super::prof::span(self.name());
        let k = self.0;
        let s = dispatch(
            "bias-act grad",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |x| with_act!(Some(k), f32, |f| bias_act_bwd(x[0], x[1], x[2], f)),
            |x| with_act!(Some(k), f64, |f| bias_act_bwd(x[0], x[1], x[2], f)),
        )?;
        Ok((
            s,
            Shape::from(l1.shape().elem_count() + l2.shape().elem_count()),
        ))
    }
}

/// Column sums of (…, N) → (N).
struct ColSum;

impl CustomOp1 for ColSum {
    fn name(&self) -> &'static str {
        "fused-col-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _time = super::prof::span(self.name());
        let n = last_dim(l);
        let out = dispatch(
            "col-sum",
            &[(s, l)],
            |x| col_sums(x[0], n),
            |x| col_sums(x[0], n),
        )?;
        Ok((out, Shape::from(n)))
    }
}

// ------------------------------------------------------------------------------------------
// gated products

/// `(a + ba)·(c + bc)` for a, c (…, N) and the biases stacked as `[ba, bc]` (2N).
struct BiasMul;

fn bias_mul_fwd<T: Elem>(a: &[T], c: &[T], bb: &[T]) -> Vec<T> {
    let n = bb.len() / 2;
    let (ba, bc) = bb.split_at(n);
    let bn = block_rows(n) * n;
    let mut out = vec![T::zero(); a.len()];
    out.par_chunks_mut(bn)
        .zip(a.par_chunks(bn).zip(c.par_chunks(bn)))
        .for_each(|(o, (a, c))| {
            vectorised(
                #[inline(always)]
                || {
                    for (o, (a, c)) in o.chunks_mut(n).zip(a.chunks(n).zip(c.chunks(n))) {
                        for j in 0..n {
                            o[j] = (a[j] + ba[j]) * (c[j] + bc[j]);
                        }
                    }
                },
            )
        });
    out
}

/// (a, c, g) with the biases → [da, dc, d[ba, bc]], packed.
fn bias_mul_bwd<T: Elem>(a: &[T], c: &[T], g: &[T], bb: &[T]) -> Vec<T> {
    let n = bb.len() / 2;
    let (ba, bc) = bb.split_at(n);
    let bn = block_rows(n) * n;
    let len = a.len();
    let mut out = vec![T::zero(); 2 * len + 2 * n];
    let (da, rest) = out.split_at_mut(len);
    let (dc, dbb) = rest.split_at_mut(len);
    let parts: Vec<Vec<T>> = da
        .par_chunks_mut(bn)
        .zip(dc.par_chunks_mut(bn))
        .zip(a.par_chunks(bn).zip(c.par_chunks(bn)).zip(g.par_chunks(bn)))
        .map(|((da, dc), ((a, c), g))| {
            vectorised(
                #[inline(always)]
                || {
                    let mut acc = vec![T::zero(); 2 * n];
                    let rows = da
                        .chunks_mut(n)
                        .zip(dc.chunks_mut(n))
                        .zip(a.chunks(n).zip(c.chunks(n)).zip(g.chunks(n)));
                    for ((da, dc), ((a, c), g)) in rows {
                        for j in 0..n {
                            let x = g[j] * (c[j] + bc[j]);
                            let y = g[j] * (a[j] + ba[j]);
                            da[j] = x;
                            dc[j] = y;
                            acc[j] += x;
                            acc[n + j] += y;
                        }
                    }
                    acc
                },
            )
        })
        .collect();
    dbb.copy_from_slice(&sum_blocks(&parts, 2 * n));
    out
}

impl CustomOp3 for BiasMul {
    fn name(&self) -> &'static str {
        "fused-bias-mul"
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
        let _time = super::prof::span(self.name());
        let s = dispatch(
            "bias-mul",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |x| bias_mul_fwd(x[0], x[1], x[2]),
            |x| bias_mul_fwd(x[0], x[1], x[2]),
        )?;
        Ok((s, l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        c: &Tensor,
        bb: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = a.apply_op3_no_bwd(c, &g.contiguous()?, &BiasMulGrad(small_vec(bb)?))?;
        let p = unpack(&packed, &[a.shape(), c.shape(), bb.shape()])?;
        Ok((Some(p[0].clone()), Some(p[1].clone()), Some(p[2].clone())))
    }
}

struct BiasMulGrad(Vec<f64>);

impl CustomOp3 for BiasMulGrad {
    fn name(&self) -> &'static str {
        "fused-bias-mul-grad"
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
        let _time = super::prof::span(self.name());
        let bb = &self.0;
        let s = dispatch(
            "bias-mul grad",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |x| bias_mul_bwd(x[0], x[1], x[2], &small(bb)),
            |x| bias_mul_bwd(x[0], x[1], x[2], &small(bb)),
        )?;
        Ok((s, Shape::from(2 * l1.shape().elem_count() + bb.len())))
    }
}

/// `gelu(z + b)·v` for z, v (…, N), b (N).
struct GeluBiasMul(Gelu);

fn gelu_bias_mul_fwd<T: Elem>(z: &[T], b: &[T], v: &[T], f: impl Fn(T) -> (T, T) + Sync) -> Vec<T> {
    let n = b.len();
    let bn = block_rows(n) * n;
    let mut out = vec![T::zero(); z.len()];
    out.par_chunks_mut(bn)
        .zip(z.par_chunks(bn).zip(v.par_chunks(bn)))
        .for_each(|(o, (z, v))| {
            vectorised(
                #[inline(always)]
                || {
                    for (o, (z, v)) in o.chunks_mut(n).zip(z.chunks(n).zip(v.chunks(n))) {
                        for j in 0..n {
                            o[j] = f(z[j] + b[j]).0 * v[j];
                        }
                    }
                },
            )
        });
    out
}

/// (z, v, g) with b → [dz, dv, db], packed.
fn gelu_bias_mul_bwd<T: Elem>(
    z: &[T],
    v: &[T],
    g: &[T],
    b: &[T],
    f: impl Fn(T) -> (T, T) + Sync,
) -> Vec<T> {
    let n = b.len();
    let bn = block_rows(n) * n;
    let len = z.len();
    let mut out = vec![T::zero(); 2 * len + n];
    let (dz, rest) = out.split_at_mut(len);
    let (dv, db) = rest.split_at_mut(len);
    let parts: Vec<Vec<T>> = dz
        .par_chunks_mut(bn)
        .zip(dv.par_chunks_mut(bn))
        .zip(z.par_chunks(bn).zip(v.par_chunks(bn)).zip(g.par_chunks(bn)))
        .map(|((dz, dv), ((z, v), g))| {
            vectorised(
                #[inline(always)]
                || {
                    let mut acc = vec![T::zero(); n];
                    let rows = dz
                        .chunks_mut(n)
                        .zip(dv.chunks_mut(n))
                        .zip(z.chunks(n).zip(v.chunks(n)).zip(g.chunks(n)));
                    for ((dz, dv), ((z, v), g)) in rows {
                        for j in 0..n {
                            let (gv, gd) = f(z[j] + b[j]);
                            let x = g[j] * v[j] * gd;
                            dz[j] = x;
                            dv[j] = g[j] * gv;
                            acc[j] += x;
                        }
                    }
                    acc
                },
            )
        })
        .collect();
    db.copy_from_slice(&sum_blocks(&parts, n));
    out
}

impl CustomOp3 for GeluBiasMul {
    fn name(&self) -> &'static str {
        "fused-gelu-bias-mul"
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
        let _time = super::prof::span(self.name());
        let k = self.0;
        let s = dispatch(
            "gelu-bias-mul",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |x| with_act!(Some(k), f32, |f| gelu_bias_mul_fwd(x[0], x[1], x[2], f)),
            |x| with_act!(Some(k), f64, |f| gelu_bias_mul_fwd(x[0], x[1], x[2], f)),
        )?;
        Ok((s, l1.shape().clone()))
    }

    fn bwd(
        &self,
        z: &Tensor,
        b: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = GeluBiasMulGrad(self.0, small_vec(b)?);
        let packed = z.apply_op3_no_bwd(v, &g.contiguous()?, &op)?;
        let p = unpack(&packed, &[z.shape(), v.shape(), b.shape()])?;
        Ok((Some(p[0].clone()), Some(p[2].clone()), Some(p[1].clone())))
    }
}

struct GeluBiasMulGrad(Gelu, Vec<f64>);

impl CustomOp3 for GeluBiasMulGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-bias-mul-grad"
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
        let _time = super::prof::span(self.name());
        let (k, b) = (self.0, &self.1);
        let s = dispatch(
            "gelu-bias-mul grad",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |x| {
                with_act!(Some(k), f32, |f| gelu_bias_mul_bwd(
                    x[0],
                    x[1],
                    x[2],
                    &small(b),
                    f
                ))
            },
            |x| {
                with_act!(Some(k), f64, |f| gelu_bias_mul_bwd(
                    x[0],
                    x[1],
                    x[2],
                    &small(b),
                    f
                ))
            },
        )?;
        Ok((s, Shape::from(2 * l1.shape().elem_count() + b.len())))
    }
}

/// `y + b + x` for y, x (…, N), b (N): a linear layer's bias and the residual connection.
struct BiasResidual;

fn bias_residual_fwd<T: Elem>(y: &[T], b: &[T], x: &[T]) -> Vec<T> {
    let n = b.len();
    let bn = block_rows(n) * n;
    let mut out = vec![T::zero(); y.len()];
    out.par_chunks_mut(bn)
        .zip(y.par_chunks(bn).zip(x.par_chunks(bn)))
        .for_each(|(o, (y, x))| {
            vectorised(
                #[inline(always)]
                || {
                    for (o, (y, x)) in o.chunks_mut(n).zip(y.chunks(n).zip(x.chunks(n))) {
                        for j in 0..n {
                            o[j] = y[j] + b[j] + x[j];
                        }
                    }
                },
            )
        });
    out
}

impl CustomOp3 for BiasResidual {
    fn name(&self) -> &'static str {
        "fused-bias-residual"
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
        let _time = super::prof::span(self.name());
        let s = dispatch(
            "bias-residual",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |x| bias_residual_fwd(x[0], x[1], x[2]),
            |x| bias_residual_fwd(x[0], x[1], x[2]),
        )?;
        Ok((s, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _b: &Tensor,
        _x: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let db = g.apply_op1_no_bwd(&ColSum)?;
        Ok((Some(g.clone()), Some(db), Some(g)))
    }
}

// ------------------------------------------------------------------------------------------
// LayerNorm

/// LayerNorm over the last axis with weight and bias (N).
struct LayerNormOp(f64);

/// Mean and 1/sqrt(var + eps) of one row.
#[inline(always)]
fn row_stats<T: Elem>(x: &[T], eps: T) -> (T, T) {
    let n = T::of(x.len() as f64);
    let mean = x.iter().fold(T::zero(), |a, v| a + *v) / n;
    let var = x
        .iter()
        .fold(T::zero(), |a, v| a + (*v - mean) * (*v - mean))
        / n;
    (mean, T::one() / (var + eps).sqrt())
}

pub(crate) fn layer_norm_fwd<T: Elem>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let eps = T::of(eps);
    let bn = block_rows(n) * n;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(bn)
        .zip(x.par_chunks(bn))
        .for_each(|(o, x)| {
            vectorised(
                #[inline(always)]
                || {
                    let b = &b[..n];
                    for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                        let (mean, rstd) = row_stats(x, eps);
                        for j in 0..n {
                            o[j] = (x[j] - mean) * rstd * w[j] + b[j];
                        }
                    }
                },
            )
        });
    out
}

/// (x, g) with w → [dx, dw, db], packed:
/// dx = rstd·(g·w − mean(g·w) − x̂·mean(g·w·x̂)), dw = Σ g·x̂, db = Σ g.
pub(crate) fn layer_norm_bwd<T: Elem>(
    x: &[T],
    g: &[T],
    w: &[T],
    eps: f64,
    add: Option<&[T]>,
) -> Vec<T> {
    let n = w.len();
    let eps = T::of(eps);
    let nf = T::of(n as f64);
    let bn = block_rows(n) * n;
    let mut out = vec![T::zero(); x.len() + 2 * n];
    let (dx, dwb) = out.split_at_mut(x.len());
    let parts: Vec<Vec<T>> = dx
        .par_chunks_mut(bn)
        .zip(x.par_chunks(bn).zip(g.par_chunks(bn)))
        .map(|(dx, (x, g))| {
            vectorised(
                #[inline(always)]
                || {
                    let mut acc = vec![T::zero(); 2 * n];
                    for (dx, (x, g)) in dx.chunks_mut(n).zip(x.chunks(n).zip(g.chunks(n))) {
                        let (mean, rstd) = row_stats(x, eps);
                        let (mut s1, mut s2) = (T::zero(), T::zero());
                        for j in 0..n {
                            let xh = (x[j] - mean) * rstd;
                            let gw = g[j] * w[j];
                            s1 += gw;
                            s2 += gw * xh;
                            acc[j] += g[j] * xh;
                            acc[n + j] += g[j];
                        }
                        let (m1, m2) = (s1 / nf, s2 / nf);
                        for j in 0..n {
                            let xh = (x[j] - mean) * rstd;
                            dx[j] = rstd * (g[j] * w[j] - m1 - xh * m2);
                        }
                    }
                    acc
                },
            )
        })
        .collect();
    dwb.copy_from_slice(&sum_blocks(&parts, 2 * n));
    if let Some(a) = add {
        dx.par_chunks_mut(bn)
            .zip(a.par_chunks(bn))
            .for_each(|(d, a)| d.iter_mut().zip(a).for_each(|(d, a)| *d += *a));
    }
    out
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
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
        let _time = super::prof::span(self.name());
        let eps = self.0;
        let s = dispatch(
            "layer-norm",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |x| layer_norm_fwd(x[0], x[1], x[2], eps),
            |x| layer_norm_fwd(x[0], x[1], x[2], eps),
        )?;
        Ok((s, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = LayerNormGrad(self.0, small_vec(w)?);
        let packed = x.apply_op2_no_bwd(&g.contiguous()?, &op)?;
        let p = unpack(&packed, &[x.shape(), w.shape(), b.shape()])?;
        Ok((Some(p[0].clone()), Some(p[1].clone()), Some(p[2].clone())))
    }
}

struct LayerNormGrad(f64, Vec<f64>);

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _time = super::prof::span(self.name());
        let (eps, w) = (self.0, &self.1);
        let s = dispatch(
            "layer-norm grad",
            &[(s1, l1), (s2, l2)],
            |x| layer_norm_bwd(x[0], x[1], &small(w), eps, None),
            |x| layer_norm_bwd(x[0], x[1], &small(w), eps, None),
        )?;
        Ok((s, Shape::from(l1.shape().elem_count() + 2 * w.len())))
    }
}

// ------------------------------------------------------------------------------------------
// public API

/// Whether the fused CPU kernels apply to these operands.
fn fusable(ts: &[&Tensor]) -> bool {
    let d = ts[0].dtype();
    super::enabled()
        && matches!(d, DType::F32 | DType::F64)
        && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == d)
}

fn check_row(x: &Tensor, v: &Tensor, what: &str) -> Result<()> {
    let n = x.dims().last().copied();
    if v.dims() != [n.unwrap_or(0)] {
        return Err(EngineError::Input(format!(
            "{what}: expected a vector of {} per row of shape {:?}, got shape {:?}",
            n.unwrap_or(0),
            x.dims(),
            v.dims()
        )));
    }
    Ok(())
}

fn check_same(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(EngineError::Input(format!(
            "{what}: operands of shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )));
    }
    Ok(())
}

/// `act(y + b)`, b broadcast over the rows of y (…, N); `act = None` adds the bias only.
pub fn bias_act(y: &Tensor, b: &Tensor, act: Option<Gelu>) -> Result<Tensor> {
    check_row(y, b, "bias")?;
    if !fusable(&[y, b]) {
        let p = y.broadcast_add(b)?;
        return match act {
            None => Ok(p),
            Some(k) => k.apply(&p),
        };
    }
    Ok(y.contiguous()?.apply_op2(&b.contiguous()?, BiasAct(act))?)
}

/// `(a + ba)·(c + bc)` for a, c (…, N) and biases ba, bc (N).
pub fn bias_mul(a: &Tensor, ba: &Tensor, c: &Tensor, bc: &Tensor) -> Result<Tensor> {
    check_same(a, c, "gated product")?;
    check_row(a, ba, "gated product")?;
    check_row(c, bc, "gated product")?;
    if !fusable(&[a, ba, c, bc]) {
        return Ok((a.broadcast_add(ba)? * c.broadcast_add(bc)?)?);
    }
    let bb = Tensor::cat(&[ba, bc], 0)?;
    Ok(a.contiguous()?.apply_op3(&c.contiguous()?, &bb, BiasMul)?)
}

/// `gelu(z + b)·v` for z, v (…, N) and b (N).
pub fn gelu_bias_mul(z: &Tensor, b: &Tensor, v: &Tensor, k: Gelu) -> Result<Tensor> {
    check_same(z, v, "gated product")?;
    check_row(z, b, "gated product")?;
    if !fusable(&[z, b, v]) {
        return Ok((k.apply(&z.broadcast_add(b)?)? * v)?);
    }
    Ok(z.contiguous()?
        .apply_op3(&b.contiguous()?, &v.contiguous()?, GeluBiasMul(k))?)
}

/// `y + b + x` for y, x (…, N) and b (N).
pub fn bias_residual(y: &Tensor, b: &Tensor, x: &Tensor) -> Result<Tensor> {
    check_same(y, x, "residual")?;
    check_row(y, b, "residual")?;
    if !fusable(&[y, b, x]) {
        return Ok((y.broadcast_add(b)? + x)?);
    }
    Ok(y.contiguous()?
        .apply_op3(&b.contiguous()?, &x.contiguous()?, BiasResidual)?)
}

/// LayerNorm over the last axis: `(x − mean)/sqrt(var + eps)·w + b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    check_row(x, w, "LayerNorm weight")?;
    check_row(x, b, "LayerNorm bias")?;
    if !fusable(&[x, w, b]) {
        let mean = x.mean_keepdim(candle_core::D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        return Ok(xn.broadcast_mul(w)?.broadcast_add(b)?);
    }
    Ok(x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNormOp(eps))?)
}

// ------------------------------------------------------------------------------------------
// GELU over rows, for the fused layers

/// GELU of every element.
pub(crate) fn gelu_all<T: Elem>(x: &[T], k: Gelu) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    // `for` loops: an iterator's `fold` (behind `for_each`) was not always inlined into the
    // AVX2 instance.
    y.par_chunks_mut(8192)
        .zip(x.par_chunks(8192))
        .for_each(|(y, x)| {
            vectorised(
                #[inline(always)]
                || {
                    let x = &x[..y.len()];
                    match k {
                        Gelu::Tanh => {
                            for j in 0..y.len() {
                                y[j] = T::gelu(Gelu::Tanh, x[j]).0;
                            }
                        }
                        Gelu::Exact => {
                            for j in 0..y.len() {
                                y[j] = T::gelu(Gelu::Exact, x[j]).0;
                            }
                        }
                    }
                },
            )
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
        vectorised(
            #[inline(always)]
            || {
                let acc = &mut acc[..n];
                for (d, p) in d.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                    match k {
                        Gelu::Tanh => {
                            for j in 0..n {
                                d[j] *= T::gelu(Gelu::Tanh, p[j]).1;
                                acc[j] += d[j];
                            }
                        }
                        Gelu::Exact => {
                            for j in 0..n {
                                d[j] *= T::gelu(Gelu::Exact, p[j]).1;
                                acc[j] += d[j];
                            }
                        }
                    }
                }
            },
        )
    })
}
