//! Diagonal state-space (S4D) convolution kernels, computed with ordinary tensor arithmetic so
//! that gradients reach every SSM parameter. candle has no complex dtype: complex values travel
//! as (real, imaginary) pairs of real tensors ([`Cx`]).
//!
//! Two flavours (`docs/models.md` §1(a) and §3(a)):
//! - [`bigs_kernel`]: one kernel shared by all channels, N modes kept, `K = Re Σ`, no factor 2,
//!   ZOH, `Re A` clamped to ≤ −1e-4.
//! - [`s4_kernel`]: per-channel kernels with N/2 stored modes and `K = 2·Re Σ`, ZOH or bilinear.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::error::{EngineError, Result};

/// The real-part clamp of BiGS: `Re A ≤ −1e-4`.
pub const BIGS_A_RE_MAX: f64 = -1e-4;

/// How the continuous SSM is discretised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discretization {
    /// Zero-order hold: Ā = exp(ΔA), B̄ = (exp(ΔA) − 1)/A.
    #[default]
    Zoh,
    /// Bilinear: Ā = (1 + ΔA/2)/(1 − ΔA/2), B̄ = Δ/(1 − ΔA/2).
    Bilinear,
}

/// A complex tensor as a pair of real tensors of equal shape.
#[derive(Debug, Clone)]
pub struct Cx {
    pub re: Tensor,
    pub im: Tensor,
}

impl Cx {
    pub fn new(re: Tensor, im: Tensor) -> Self {
        Self { re, im }
    }

    pub fn mul(&self, o: &Cx) -> Result<Cx> {
        let re = (self.re.broadcast_mul(&o.re)? - self.im.broadcast_mul(&o.im)?)?;
        let im = (self.re.broadcast_mul(&o.im)? + self.im.broadcast_mul(&o.re)?)?;
        Ok(Cx { re, im })
    }

    pub fn div(&self, o: &Cx) -> Result<Cx> {
        let den = (o.re.sqr()? + o.im.sqr()?)?;
        let re = (self.re.broadcast_mul(&o.re)? + self.im.broadcast_mul(&o.im)?)?;
        let im = (self.im.broadcast_mul(&o.re)? - self.re.broadcast_mul(&o.im)?)?;
        Ok(Cx {
            re: re.broadcast_div(&den)?,
            im: im.broadcast_div(&den)?,
        })
    }

    /// exp(a + ib) = e^a (cos b + i sin b)
    pub fn exp(&self) -> Result<Cx> {
        let m = self.re.exp()?;
        Ok(Cx {
            re: (&m * self.im.cos()?)?,
            im: (&m * self.im.sin()?)?,
        })
    }

    pub fn scale_real(&self, s: &Tensor) -> Result<Cx> {
        Ok(Cx {
            re: self.re.broadcast_mul(s)?,
            im: self.im.broadcast_mul(s)?,
        })
    }

    pub fn add_scalar(&self, v: f64) -> Result<Cx> {
        Ok(Cx {
            re: (&self.re + v)?,
            im: self.im.clone(),
        })
    }

    /// v − self
    pub fn rsub_scalar(&self, v: f64) -> Result<Cx> {
        Ok(Cx {
            re: self.re.affine(-1.0, v)?,
            im: self.im.neg()?,
        })
    }

    pub fn unsqueeze(&self, d: usize) -> Result<Cx> {
        Ok(Cx {
            re: self.re.unsqueeze(d)?,
            im: self.im.unsqueeze(d)?,
        })
    }

    pub fn cat(parts: &[&Cx], dim: usize) -> Result<Cx> {
        let re: Vec<&Tensor> = parts.iter().map(|c| &c.re).collect();
        let im: Vec<&Tensor> = parts.iter().map(|c| &c.im).collect();
        Ok(Cx {
            re: Tensor::cat(&re, dim)?,
            im: Tensor::cat(&im, dim)?,
        })
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Cx> {
        Ok(Cx {
            re: self.re.narrow(dim, start, len)?,
            im: self.im.narrow(dim, start, len)?,
        })
    }
}

/// Splits a (..., 2) tensor of (real, imag) into a [`Cx`].
pub fn cx_from_pairs(c: &Tensor) -> Result<Cx> {
    let last = c.rank().saturating_sub(1);
    if c.rank() == 0 || c.dim(last)? != 2 {
        return Err(EngineError::Input(format!(
            "complex parameter must end in a (real, imag) axis of size 2, got shape {:?}",
            c.dims()
        )));
    }
    Ok(Cx {
        re: c.narrow(last, 0, 1)?.squeeze(last)?,
        im: c.narrow(last, 1, 1)?.squeeze(last)?,
    })
}

/// Lags 0..L as a float tensor of the given dtype.
fn lags(l: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::arange(0u32, l as u32, dev)?.to_dtype(dtype)?)
}

/// BiGS kernel (one per SSM, shared by all channels), length `l`:
/// `K[l] = Re Σ_n C_n (exp(dt A_n) − 1)/A_n · exp(l dt A_n)` with `A_n = min(A_re, −1e-4) + i A_im`,
/// `dt = exp(log_step)`. Shapes: `a_re`, `a_im` (N), `c` (N, 2), `log_step` (1). Returns (L).
pub fn bigs_kernel(
    a_re: &Tensor,
    a_im: &Tensor,
    c: &Tensor,
    log_step: &Tensor,
    l: usize,
) -> Result<Tensor> {
    let n = a_re.dim(0)?;
    if a_re.dims() != [n] || a_im.dims() != [n] || c.dims() != [n, 2] || log_step.elem_count() != 1
    {
        return Err(EngineError::Input(format!(
            "BiGS SSM parameters must be A_re ({n}), A_im ({n}), C ({n}, 2), log_step (1); got {:?}, {:?}, {:?}, {:?}",
            a_re.dims(),
            a_im.dims(),
            c.dims(),
            log_step.dims()
        )));
    }
    let dt = log_step.reshape(1)?.exp()?;
    let a = Cx::new(a_re.minimum(BIGS_A_RE_MAX)?, a_im.clone());
    let dta = a.scale_real(&dt)?; // (N)
    let ct = cx_from_pairs(c)?.mul(&dta.exp()?.add_scalar(-1.0)?.div(&a)?)?; // (N)
    let ls = lags(l, a_re.dtype(), a_re.device())?.unsqueeze(0)?; // (1, L)
    let pow = dta.unsqueeze(1)?.scale_real(&ls)?.exp()?; // (N, L)
    let k = (ct.re.unsqueeze(0)?.matmul(&pow.re)? - ct.im.unsqueeze(0)?.matmul(&pow.im)?)?;
    Ok(k.squeeze(0)?)
}

/// s4-style per-channel kernel, (H, L): `K[h,l] = 2·Re Σ_m C[h,m] B̄[h,m] Ā[h,m]^l`.
/// `log_dt` (H); `a_re`, `a_im` (H, M) are the real and imaginary parts of A themselves (the
/// caller applies its parameterisation, e.g. `a_re = −exp(log_A_real)`); `c` (H, M, 2); B ≡ 1.
pub fn s4_kernel(
    log_dt: &Tensor,
    a_re: &Tensor,
    a_im: &Tensor,
    c: &Tensor,
    l: usize,
    disc: Discretization,
) -> Result<Tensor> {
    let (h, m) = a_re.dims2()?;
    if log_dt.dims() != [h] || a_im.dims() != [h, m] || c.dims() != [h, m, 2] {
        return Err(EngineError::Input(format!(
            "s4 SSM parameters must be log_dt ({h}), A_re/A_im ({h}, {m}), C ({h}, {m}, 2); got {:?}, {:?}, {:?}",
            log_dt.dims(),
            a_im.dims(),
            c.dims()
        )));
    }
    if disc == Discretization::Zoh
        && super::cpu::enabled()
        && a_re.device().is_cpu()
        && matches!(a_re.dtype(), DType::F32 | DType::F64)
    {
        // One node with a hand-written backward ([`super::cpu::s4_kernel`]).
        let a = Tensor::stack(&[a_re, a_im], 2)?.contiguous()?;
        return Ok(log_dt.contiguous()?.apply_op3(
            &a,
            &c.contiguous()?,
            super::cpu::s4_kernel::S4KernelOp { len: l },
        )?);
    }
    let dt = log_dt.exp()?.unsqueeze(1)?; // (H, 1)
    let a = Cx::new(a_re.clone(), a_im.clone());
    let dta = a.scale_real(&dt)?; // (H, M)
    let c = cx_from_pairs(c)?;
    let pow = match disc {
        Discretization::Zoh => {
            let ls = lags(l, a_re.dtype(), a_re.device())?.reshape((1, 1, l))?;
            let ct = c.mul(&dta.exp()?.add_scalar(-1.0)?.div(&a)?)?;
            let p = dta.unsqueeze(2)?.scale_real(&ls)?.exp()?; // (H, M, L)
            ct.unsqueeze(2)?.mul(&p)?
        }
        Discretization::Bilinear => {
            let half = Cx::new((&dta.re * 0.5)?, (&dta.im * 0.5)?);
            let den = half.rsub_scalar(1.0)?; // 1 − ΔA/2
            let abar = half.add_scalar(1.0)?.div(&den)?;
            let bbar = Cx::new(dt.clone(), dt.zeros_like()?).div(&den)?; // Δ/(1 − ΔA/2)
            let ct = c.mul(&bbar)?;
            ct.unsqueeze(2)?.mul(&powers(&abar, l)?)?
        }
    };
    Ok((pow.re.sum(1)? * 2.0)?)
}

/// `z^0 … z^{L−1}` along a new last axis, by repeated doubling (log₂ L complex products, all
/// differentiable; no complex log needed). `z` is (…), the result (…, L).
pub fn powers(z: &Cx, l: usize) -> Result<Cx> {
    let d = z.re.rank();
    let mut p = Cx::new(
        z.re.ones_like()?.unsqueeze(d)?,
        z.im.zeros_like()?.unsqueeze(d)?,
    );
    let mut zk = z.unsqueeze(d)?; // z^{len(p)}
    while p.re.dim(d)? < l {
        let next = p.mul(&zk)?;
        p = Cx::cat(&[&p, &next], d)?;
        zk = zk.mul(&zk)?;
    }
    p.narrow(d, 0, l)
}
