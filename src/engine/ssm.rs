//! S4D layers over (B, L, H) activations: the s4-style per-channel layer ([`S4dSsm`]) and the
//! choice between it and BiGS's shared kernel ([`Ssm`]).

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::bigs::BigsSsm;
use super::conv::{ConvPath, causal_conv_blc};
use super::error::Result;
use super::s4d::{Discretization, s4_kernel};

/// How the kernels of an SSM layer are shared across channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelMode {
    /// s4-style: one kernel per channel (own Δt, A, C, D), N/2 stored modes, `2·Re`.
    #[default]
    PerChannel,
    /// BiGS-style: one kernel for all channels, N modes, `Re`, scalar Δt and D.
    Shared,
}

/// s4's minimal S4D layer: per-channel `log_dt` (H), `log_A_real`, `A_imag` (H, N/2),
/// `C` (H, N/2, 2), skip `D` (H); `A = −exp(log_A_real) + i·A_imag`, ZOH, B ≡ 1.
/// Variable names follow `models/s4/s4d.py` (`docs/models.md` §3(e)).
#[derive(Debug, Clone)]
pub struct S4dSsm {
    pub log_dt: Tensor,
    pub log_a_real: Tensor,
    pub a_imag: Tensor,
    pub c: Tensor,
    pub d: Tensor,
    conv: ConvPath,
}

impl S4dSsm {
    pub fn new(h: usize, n_state: usize, conv: ConvPath, vb: VarBuilder) -> Result<Self> {
        let m = n_state / 2;
        let k = vb.pp("kernel");
        Ok(Self {
            log_dt: k.get(h, "log_dt")?,
            log_a_real: k.get((h, m), "log_A_real")?,
            a_imag: k.get((h, m), "A_imag")?,
            c: k.get((h, m, 2), "C")?,
            d: vb.get(h, "D")?,
            conv,
        })
    }

    /// The kernels of length `l`, (H, L).
    pub fn kernel(&self, l: usize) -> Result<Tensor> {
        let a_re = self.log_a_real.exp()?.neg()?;
        s4_kernel(
            &self.log_dt,
            &a_re,
            &self.a_imag,
            &self.c,
            l,
            Discretization::Zoh,
        )
    }

    /// The kernels with the skip folded into their first tap, `K[h] + D[h]·δ₀`, (H, L).
    pub fn skip_kernel(&self, l: usize) -> Result<Tensor> {
        let k = self.kernel(l)?;
        let mut e0 = vec![0f32; l];
        e0[0] = 1.0;
        let e0 = Tensor::new(e0, k.device())?.to_dtype(k.dtype())?;
        Ok((k + self.d.unsqueeze(1)?.broadcast_mul(&e0.unsqueeze(0)?)?)?)
    }

    /// `y[:, t, h] = Σ_{j≤t} K[h, j]·u[:, t−j, h] + D[h]·u[:, t, h]` for `u` (B, L, H).
    pub fn forward(&self, u: &Tensor) -> Result<Tensor> {
        let k = self.kernel(u.dim(1)?)?;
        let y = causal_conv_blc(u, &k, self.conv)?;
        Ok((y + u.broadcast_mul(&self.d)?)?)
    }
}

/// One causal SSM layer of either kind.
#[derive(Debug, Clone)]
pub enum Ssm {
    PerChannel(S4dSsm),
    Shared(BigsSsm),
}

impl Ssm {
    pub fn new(
        mode: KernelMode,
        h: usize,
        n_state: usize,
        conv: ConvPath,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(match mode {
            KernelMode::PerChannel => Self::PerChannel(S4dSsm::new(h, n_state, conv, vb)?),
            KernelMode::Shared => Self::Shared(BigsSsm::new(n_state, conv, vb)?),
        })
    }

    /// Kernels (rows, L): H rows per-channel, one row shared.
    pub fn kernel(&self, l: usize) -> Result<Tensor> {
        match self {
            Self::PerChannel(s) => s.kernel(l),
            Self::Shared(s) => Ok(s.kernel(l)?.unsqueeze(0)?),
        }
    }

    /// Kernels with the skip folded into tap 0, (rows, L).
    pub fn skip_kernel(&self, l: usize) -> Result<Tensor> {
        match self {
            Self::PerChannel(s) => s.skip_kernel(l),
            Self::Shared(s) => Ok(s.skip_kernel(l)?.unsqueeze(0)?),
        }
    }

    /// The convolution path the layer was configured with.
    pub fn conv_path(&self) -> ConvPath {
        match self {
            Self::PerChannel(s) => s.conv,
            Self::Shared(s) => s.conv,
        }
    }

    pub fn forward(&self, u: &Tensor) -> Result<Tensor> {
        match self {
            Self::PerChannel(s) => s.forward(u),
            Self::Shared(s) => s.forward(u),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Self::PerChannel(s) => s.c.dtype(),
            Self::Shared(s) => s.c.dtype(),
        }
    }
}
