//! Long causal convolution `y[b,c,t] = Σ_{j≤t} k[c,j]·u[b,c,t−j]`, the workhorse of every SSM
//! layer.
//!
//! Two paths compute the same thing:
//! - **FFT** (CPU): a candle custom op. Each row is zero-padded to 2L, transformed with realfft,
//!   multiplied by the kernel's spectrum and transformed back; the first L samples are the exact
//!   linear (not circular) convolution. Its backward is two more FFT correlations. Rows run in
//!   parallel on rayon; plans are cached per length.
//! - **Dense**: a lower-triangular Toeplitz matrix built from `k` with differentiable tensor ops
//!   and a matmul. Runs on every device and is the cheaper path for short sequences, above all
//!   when one kernel is shared by all channels (BiGS), where it is a single large matmul.
//!
//! [`ConvPath::Auto`] picks between them from crossovers measured with `ssmlab bench conv`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use serde::{Deserialize, Serialize};

use super::cpu::fft::{conv_fwd, conv_grad};
use super::cpu::float::{cpu_slice, dispatch};
use super::error::{EngineError, Result};

/// Which algorithm computes a causal convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvPath {
    /// Pick by measured crossover (and Dense on devices without an FFT kernel).
    #[default]
    Auto,
    Fft,
    Dense,
}

impl std::str::FromStr for ConvPath {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "fft" => Ok(Self::Fft),
            "dense" => Ok(Self::Dense),
            _ => Err(format!(
                "unknown convolution path `{s}` (expected auto, fft or dense)"
            )),
        }
    }
}

/// Longest sequence for which the dense path beats FFT with one kernel shared by all channels
/// (forward + backward, measured with `ssmlab bench conv` on 2 cores at B=8, C=256).
pub const SHARED_DENSE_MAX_L: usize = 128;
/// The same crossover for per-channel kernels, where dense is a batch of matrix-vector products.
pub const PER_CHANNEL_DENSE_MAX_L: usize = 8;
/// The same crossover inside the fused DiffuSSM block, whose dense path sums directly with the
/// channels vectorised: at L = 49 (the diffussm-fashion preset) it trained at 1.0–1.15× the
/// FFT path's images/s (three alternating pairs, 2 cores).
pub const FUSED_PER_CHANNEL_DENSE_MAX_L: usize = 64;

/// The path `Auto` resolves to for `u` of shape (B, C, L) and a kernel with `kernel_rows` rows.
pub fn resolve_path(path: ConvPath, u: &Tensor, kernel_rows: usize, l: usize) -> ConvPath {
    match path {
        ConvPath::Auto => {
            let fft_ok = super::cpu::enabled()
                && u.device().is_cpu()
                && matches!(u.dtype(), DType::F32 | DType::F64);
            let limit = if kernel_rows == 1 {
                SHARED_DENSE_MAX_L
            } else {
                PER_CHANNEL_DENSE_MAX_L
            };
            if !fft_ok || l <= limit {
                ConvPath::Dense
            } else {
                ConvPath::Fft
            }
        }
        p => p,
    }
}

fn check_shapes(u: &Tensor, k: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let (b, c, l) = u.dims3().map_err(|_| {
        EngineError::Input(format!(
            "causal convolution: input must be (batch, channels, length), got shape {:?}",
            u.dims()
        ))
    })?;
    let (ck, lk) = k.dims2().map_err(|_| {
        EngineError::Input(format!(
            "causal convolution: kernel must be (channels, length) or (1, length), got shape {:?}",
            k.dims()
        ))
    })?;
    if lk != l || (ck != 1 && ck != c) {
        return Err(EngineError::Input(format!(
            "causal convolution: kernel shape {:?} does not fit input shape {:?} \
             (expected ({c} or 1, {l}))",
            k.dims(),
            u.dims()
        )));
    }
    if u.dtype() != k.dtype() {
        return Err(EngineError::Input(format!(
            "causal convolution: input is {:?} but kernel is {:?}",
            u.dtype(),
            k.dtype()
        )));
    }
    Ok((b, c, l, ck))
}

/// Causal convolution of `u` (B, C, L) with `k` (C, L) or (1, L) (one kernel for all channels).
pub fn causal_conv(u: &Tensor, k: &Tensor, path: ConvPath) -> Result<Tensor> {
    let (_, _, l, ck) = check_shapes(u, k)?;
    match resolve_path(path, u, ck, l) {
        ConvPath::Fft => causal_conv_fft(u, k),
        _ => causal_conv_dense(u, k),
    }
}

/// Anti-causal convolution: flip time, convolve, flip back (the backward branch of a
/// bidirectional SSM). `u` is (B, C, L).
pub fn anticausal_conv(u: &Tensor, k: &Tensor, path: ConvPath) -> Result<Tensor> {
    Ok(causal_conv(&u.flip(&[2])?, k, path)?.flip(&[2])?)
}

/// Both directions of a bidirectional SSM convolution: `(causal(u, k_fwd), anticausal(u, k_bwd))`.
pub fn bidirectional_conv(
    u: &Tensor,
    k_fwd: &Tensor,
    k_bwd: &Tensor,
    path: ConvPath,
) -> Result<(Tensor, Tensor)> {
    Ok((
        causal_conv(u, k_fwd, path)?,
        anticausal_conv(u, k_bwd, path)?,
    ))
}

/// Causal convolution along dimension 1 of a (B, L, C) tensor, the layout models keep their
/// activations in. A shared kernel on the dense path needs no transposes at all.
pub fn causal_conv_blc(u: &Tensor, k: &Tensor, path: ConvPath) -> Result<Tensor> {
    let (_, l, _) = u.dims3()?;
    let ck = k.dim(0)?;
    let path = resolve_path(path, u, ck, l);
    if ck == 1 && path == ConvPath::Dense {
        check_shapes(&u.transpose(1, 2)?, k)?;
        let t = toeplitz(k, false)?.squeeze(0)?; // (L, L), t[i, j] = k[i − j]
        return Ok(t.broadcast_matmul(u)?);
    }
    let ubcl = u.transpose(1, 2)?;
    let y = match path {
        ConvPath::Fft => causal_conv_fft(&ubcl, k)?,
        _ => causal_conv_dense(&ubcl, k)?,
    };
    Ok(y.transpose(1, 2)?)
}

/// Lower-triangular Toeplitz matrices of the kernel rows, (Ck, L, L), built with differentiable
/// ops. `transposed = false` gives `T[i, j] = k[i − j]` (i ≥ j); `true` gives its transpose.
pub fn toeplitz(k: &Tensor, transposed: bool) -> Result<Tensor> {
    let (ck, l) = k.dims2()?;
    let mut idx = Vec::with_capacity(l * l);
    let mut mask = Vec::with_capacity(l * l);
    for r in 0..l {
        for s in 0..l {
            let (i, j) = if transposed { (s, r) } else { (r, s) };
            idx.push(if i >= j { (i - j) as u32 } else { 0 });
            mask.push(if i >= j { 1f32 } else { 0f32 });
        }
    }
    let dev = k.device();
    let idx = Tensor::from_vec(idx, l * l, dev)?;
    let mask = Tensor::from_vec(mask, (1, l, l), dev)?.to_dtype(k.dtype())?;
    Ok(k.index_select(&idx, 1)?
        .reshape((ck, l, l))?
        .broadcast_mul(&mask)?)
}

/// The dense (Toeplitz matmul) path; differentiable through ordinary ops, any device.
pub fn causal_conv_dense(u: &Tensor, k: &Tensor) -> Result<Tensor> {
    let (b, c, l, ck) = check_shapes(u, k)?;
    let tt = toeplitz(k, true)?; // (Ck, L, L), tt[s, t] = k[t − s]
    if ck == 1 {
        let y = u.reshape((b * c, l))?.matmul(&tt.squeeze(0)?)?;
        Ok(y.reshape((b, c, l))?)
    } else {
        let uc = u.transpose(0, 1)?.contiguous()?; // (C, B, L)
        let y = uc.matmul(&tt)?; // (C, B, L)
        Ok(y.transpose(0, 1)?.contiguous()?)
    }
}

/// The FFT path as a candle custom op with an FFT backward (CPU, f32 and f64).
pub fn causal_conv_fft(u: &Tensor, k: &Tensor) -> Result<Tensor> {
    check_shapes(u, k)?;
    if !u.device().is_cpu() {
        return Err(EngineError::Input(
            "the FFT convolution runs on the CPU only; use the dense path on this device".into(),
        ));
    }
    Ok(u.contiguous()?.apply_op2(&k.contiguous()?, CausalConvFft)?)
}

// ------------------------------------------------------------------------------------------
// CPU kernels

/// (B, C, L) and (Ck, L) of the two layouts.
fn conv_dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    let (b, c, l) = l1.shape().dims3()?;
    let (ck, lk) = l2.shape().dims2()?;
    if lk != l || (ck != 1 && ck != c) {
        candle_core::bail!(
            "causal conv: kernel {:?} vs input {:?}",
            l2.shape(),
            l1.shape()
        )
    }
    Ok((b, c, l, ck))
}

/// Forward op: (u (B,C,L), k (Ck,L)) → y (B,C,L).
struct CausalConvFft;

impl CustomOp2 for CausalConvFft {
    fn name(&self) -> &'static str {
        "causal-conv-fft"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, c, l, ck) = conv_dims(l1, l2)?;
        let out = dispatch(
            self.name(),
            &[(s1, l1), (s2, l2)],
            |x| conv_fwd(x[0], x[1], c, ck, l),
            |x| conv_fwd(x[0], x[1], c, ck, l),
        )?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        u: &Tensor,
        k: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = u.apply_op3_no_bwd(k, &dy.contiguous()?, &ConvGrad)?;
        let n = u.elem_count();
        let du = g.narrow(0, 0, n)?.reshape(u.shape())?;
        let dk = g.narrow(0, n, k.elem_count())?.reshape(k.shape())?;
        Ok((Some(du), Some(dk)))
    }
}

/// (u (B,C,L), k (Ck,L), dy (B,C,L)) → [du, dk] flattened.
struct ConvGrad;

impl CustomOp3 for ConvGrad {
    fn name(&self) -> &'static str {
        "causal-conv-fft-grad"
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
        let (_, c, l, ck) = conv_dims(l1, l2)?;
        if l3.shape() != l1.shape() {
            candle_core::bail!("{}: u {:?} vs dy {:?}", self.name(), l1.shape(), l3.shape())
        }
        let n = l1.shape().elem_count() + ck * l;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(u), CpuStorage::F32(k), CpuStorage::F32(dy)) => {
                CpuStorage::F32(conv_grad(
                    cpu_slice(u, l1, self.name())?,
                    cpu_slice(k, l2, self.name())?,
                    cpu_slice(dy, l3, self.name())?,
                    c,
                    ck,
                    l,
                ))
            }
            (CpuStorage::F64(u), CpuStorage::F64(k), CpuStorage::F64(dy)) => {
                CpuStorage::F64(conv_grad(
                    cpu_slice(u, l1, self.name())?,
                    cpu_slice(k, l2, self.name())?,
                    cpu_slice(dy, l3, self.name())?,
                    c,
                    ck,
                    l,
                ))
            }
            _ => candle_core::bail!("{}: only f32 and f64 operands of one dtype", self.name()),
        };
        Ok((out, Shape::from(n)))
    }
}
