//! Fused elementwise ops with hand-written backward passes (CPU). candle's GELU backward is a
//! chain of ~12 tensor ops (with `powf`), which dominated a BiGS training step; these do forward
//! and backward in one pass each. Other devices fall back to candle's own ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::act::{Activation, Gelu, gelu_f32, gelu_f64};
use super::float::{Elem, cpu_slice};
use super::simd::vectorised;
use crate::engine::error::Result;

const CHUNK: usize = 8192;
fn par_map<T: Copy + Send + Sync + Default>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    // `for` loops: an iterator's `fold` (behind `for_each`) was not always inlined into the
    // AVX2 instance.
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| {
            vectorised(
                #[inline(always)]
                || {
                    let x = &x[..o.len()];
                    for j in 0..o.len() {
                        o[j] = f(x[j]);
                    }
                },
            )
        });
    out
}

fn par_map2<T: Copy + Send + Sync + Default>(
    x: &[T],
    g: &[T],
    f: impl Fn(T, T) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|(o, (x, g))| {
            vectorised(
                #[inline(always)]
                || {
                    let (x, g) = (&x[..o.len()], &g[..o.len()]);
                    for j in 0..o.len() {
                        o[j] = f(x[j], g[j]);
                    }
                },
            )
        });
    out
}

struct GeluOp(Gelu);

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _time = super::prof::span(self.name());
        let out = match (s, self.0) {
            (CpuStorage::F32(v), Gelu::Tanh) => {
                CpuStorage::F32(par_map(cpu_slice(v, l, "fused op")?, |x| {
                    gelu_f32(Gelu::Tanh, x).0
                }))
            }
            (CpuStorage::F32(v), Gelu::Exact) => {
                CpuStorage::F32(par_map(cpu_slice(v, l, "fused op")?, |x| {
                    gelu_f32(Gelu::Exact, x).0
                }))
            }
            (CpuStorage::F64(v), k) => {
                CpuStorage::F64(par_map(cpu_slice(v, l, "fused op")?, |x| gelu_f64(k, x).0))
            }
            _ => candle_core::bail!("fused-gelu: f32 or f64 only"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(
            &grad.contiguous()?,
            &GeluGradOp(self.0),
        )?))
    }
}

/// (x, dy) → dy·gelu'(x)
struct GeluGradOp(Gelu);

impl CustomOp2 for GeluGradOp {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _time = super::prof::span(self.name());
        let k = self.0;
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                let (x, g) = (cpu_slice(x, l1, "fused op")?, cpu_slice(g, l2, "fused op")?);
                CpuStorage::F32(match k {
                    Gelu::Tanh => par_map2(x, g, |x, g| g * gelu_f32(Gelu::Tanh, x).1),
                    Gelu::Exact => par_map2(x, g, |x, g| g * gelu_f32(Gelu::Exact, x).1),
                })
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => CpuStorage::F64(par_map2(
                cpu_slice(x, l1, "fused op")?,
                cpu_slice(g, l2, "fused op")?,
                |x, g| g * gelu_f64(k, x).1,
            )),
            _ => candle_core::bail!("fused-gelu-grad: f32 or f64 operands of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// GELU with a one-pass backward on the CPU; candle's ops elsewhere.
pub fn gelu(x: &Tensor, kind: Gelu) -> Result<Tensor> {
    let fused = super::enabled()
        && x.device().is_cpu()
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if !fused {
        return Ok(match kind {
            Gelu::Exact => x.gelu_erf()?,
            Gelu::Tanh => x.gelu()?,
        });
    }
    Ok(x.contiguous()?.apply_op1(GeluOp(kind))?)
}

/// Per-row cross-entropy `logsumexp(z) − z[target]` of logits (P, V) with u32 targets (P),
/// in one pass; backward `(softmax(z) − onehot)·g` in one more. Replaces ~10 full passes over
/// the (masked positions × vocabulary) logits.
struct CrossEntropyOp;

/// Max and Σ exp(z − max) of one row, in 8 interleaved partial sums so the loop vectorises.
#[inline(always)]
fn row_max_sum<T: Elem>(row: &[T]) -> (T, T) {
    let m = row.iter().copied().fold(T::neg_infinity(), T::max);
    let mut acc = [T::zero(); 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += (*x - m).exp_v();
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(T::zero(), |a, x| a + (*x - m).exp_v());
    (m, acc.iter().fold(tail, |a, x| a + *x))
}

pub(crate) fn ce_rows<T: Elem>(z: &[T], t: &[u32], v: usize) -> Vec<T> {
    let mut out = vec![T::zero(); t.len()];
    out.par_iter_mut().enumerate().for_each(|(r, o)| {
        vectorised(
            #[inline(always)]
            || {
                let row = &z[r * v..(r + 1) * v];
                let (m, s) = row_max_sum(row);
                *o = m + s.ln() - row[t[r] as usize];
            },
        )
    });
    out
}

pub(crate) fn ce_grad<T: Elem>(z: &[T], t: &[u32], g: &[T], v: usize) -> Vec<T> {
    let mut out = vec![T::zero(); z.len()];
    out.par_chunks_mut(v).enumerate().for_each(|(r, o)| {
        vectorised(
            #[inline(always)]
            || {
                let row = &z[r * v..(r + 1) * v];
                let (m, s) = row_max_sum(row);
                let scale = g[r] / s;
                for (o, x) in o.iter_mut().zip(row) {
                    *o = (*x - m).exp_v() * scale;
                }
                let i = t[r] as usize;
                o[i] -= g[r];
            },
        )
    });
    out
}

fn targets<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [u32]> {
    match s {
        CpuStorage::U32(t) => cpu_slice(t, l, "fused op"),
        _ => candle_core::bail!("cross-entropy: targets must be u32"),
    }
}

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _time = super::prof::span(self.name());
        let (p, v) = l1.shape().dims2()?;
        let t = targets(s2, l2)?;
        if t.len() != p || t.iter().any(|&x| x as usize >= v) {
            candle_core::bail!(
                "cross-entropy: {} targets for {p} rows, each must be < {v}",
                t.len()
            )
        }
        let out = match s1 {
            CpuStorage::F32(z) => CpuStorage::F32(ce_rows(cpu_slice(z, l1, "fused op")?, t, v)),
            CpuStorage::F64(z) => CpuStorage::F64(ce_rows(cpu_slice(z, l1, "fused op")?, t, v)),
            _ => candle_core::bail!("cross-entropy: f32 or f64 logits"),
        };
        Ok((out, Shape::from(p)))
    }

    fn bwd(
        &self,
        z: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dz = z.apply_op3_no_bwd(t, &g.contiguous()?, &CrossEntropyGradOp)?;
        Ok((Some(dz), None))
    }
}

/// (logits, targets, per-row upstream gradient) → d logits.
struct CrossEntropyGradOp;

impl candle_core::CustomOp3 for CrossEntropyGradOp {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
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
        let (_, v) = l1.shape().dims2()?;
        let t = targets(s2, l2)?;
        let out = match (s1, s3) {
            (CpuStorage::F32(z), CpuStorage::F32(g)) => CpuStorage::F32(ce_grad(
                cpu_slice(z, l1, "fused op")?,
                t,
                cpu_slice(g, l3, "fused op")?,
                v,
            )),
            (CpuStorage::F64(z), CpuStorage::F64(g)) => CpuStorage::F64(ce_grad(
                cpu_slice(z, l1, "fused op")?,
                t,
                cpu_slice(g, l3, "fused op")?,
                v,
            )),
            _ => candle_core::bail!("cross-entropy grad: f32 or f64 of one dtype"),
        };
        Ok((out, l1.shape().clone()))
    }
}

/// Mean cross-entropy of logits (P, V) against u32 targets (P): fused on the CPU, candle's
/// log-softmax elsewhere.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let fused = super::enabled()
        && logits.device().is_cpu()
        && matches!(
            logits.dtype(),
            candle_core::DType::F32 | candle_core::DType::F64
        );
    if !fused {
        let lsm = candle_nn::ops::log_softmax(logits, candle_core::D::Minus1)?;
        let picked = lsm.gather(&targets.unsqueeze(1)?, 1)?;
        return Ok(picked.mean_all()?.neg()?);
    }
    let t = targets.to_dtype(candle_core::DType::U32)?.contiguous()?;
    Ok(logits
        .contiguous()?
        .apply_op2(&t, CrossEntropyOp)?
        .mean_all()?)
}

impl Gelu {
    /// Applies this GELU (fused forward/backward on the CPU, see [`gelu`]).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        gelu(x, self)
    }
}

impl Activation {
    /// Applies this activation (GELUs fused on the CPU, see [`gelu`]).
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu => Gelu::Exact.apply(x),
            Self::GeluTanh => Gelu::Tanh.apply(x),
            Self::Silu => Ok(candle_nn::ops::silu(x)?),
        }
    }
}
