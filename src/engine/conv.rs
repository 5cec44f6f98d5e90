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

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, FftNum, RealFftPlanner, RealToComplex};
use serde::{Deserialize, Serialize};

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

/// Float types the FFT kernels run on, each with its own cached planner.
pub trait FftFloat: FftNum + candle_core::WithDType {
    fn planner() -> &'static Mutex<RealFftPlanner<Self>>;
}

impl FftFloat for f32 {
    fn planner() -> &'static Mutex<RealFftPlanner<f32>> {
        static P: OnceLock<Mutex<RealFftPlanner<f32>>> = OnceLock::new();
        P.get_or_init(|| Mutex::new(RealFftPlanner::new()))
    }
}

impl FftFloat for f64 {
    fn planner() -> &'static Mutex<RealFftPlanner<f64>> {
        static P: OnceLock<Mutex<RealFftPlanner<f64>>> = OnceLock::new();
        P.get_or_init(|| Mutex::new(RealFftPlanner::new()))
    }
}

/// Forward and inverse real FFT plans of length `n` (the planner caches them).
struct Plans<T: FftFloat> {
    fwd: Arc<dyn RealToComplex<T>>,
    inv: Arc<dyn ComplexToReal<T>>,
    l: usize,
}

impl<T: FftFloat> Plans<T> {
    fn new(l: usize) -> Self {
        let mut p = T::planner().lock().unwrap_or_else(|e| e.into_inner());
        Self {
            fwd: p.plan_fft_forward(2 * l),
            inv: p.plan_fft_inverse(2 * l),
            l,
        }
    }

    fn bins(&self) -> usize {
        self.l + 1
    }

    fn scratch(&self) -> Scratch<T> {
        Scratch {
            time: self.fwd.make_input_vec(),
            freq: self.fwd.make_output_vec(),
            sf: self.fwd.make_scratch_vec(),
            si: self.inv.make_scratch_vec(),
        }
    }

    /// Spectrum of one zero-padded row into `s.freq`.
    fn forward(&self, row: &[T], s: &mut Scratch<T>) {
        s.time[..self.l].copy_from_slice(row);
        s.time[self.l..].fill(T::zero());
        self.fwd
            .process_with_scratch(&mut s.time, &mut s.freq, &mut s.sf)
            .expect("realfft forward: buffer sizes come from the plan");
    }

    /// Inverse of `s.freq`, first L samples scaled by 1/(2L) into `out`.
    fn inverse_into(&self, s: &mut Scratch<T>, out: &mut [T]) {
        // Spectra of real signals: DC and Nyquist bins are real. Products keep them real up to
        // rounding; realfft insists on exact zeros.
        let last = s.freq.len() - 1;
        s.freq[0].im = T::zero();
        s.freq[last].im = T::zero();
        self.inv
            .process_with_scratch(&mut s.freq, &mut s.time, &mut s.si)
            .expect("realfft inverse: buffer sizes come from the plan");
        let scale = <T as realfft::num_traits::FromPrimitive>::from_f64(1.0 / (2 * self.l) as f64)
            .expect("float");
        for (o, v) in out.iter_mut().zip(&s.time[..self.l]) {
            *o = *v * scale;
        }
    }

    /// Spectra of every row of `x` (rows × L), (rows × (L+1)).
    fn spectra(&self, x: &[T]) -> Vec<Complex<T>> {
        let nf = self.bins();
        let rows = x.len() / self.l;
        let mut out = vec![Complex::new(T::zero(), T::zero()); rows * nf];
        out.par_chunks_mut(nf)
            .zip(x.par_chunks(self.l))
            .for_each_init(
                || self.scratch(),
                |s, (o, row)| {
                    self.forward(row, s);
                    o.copy_from_slice(&s.freq);
                },
            );
        out
    }

    /// For each row r of `x` (rows × L): out_r = IFFT(FFT(x_r) · spec_{r's kernel row}).
    fn filter_rows(
        &self,
        x: &[T],
        spec: &[Complex<T>],
        channels: usize,
        kernel_rows: usize,
    ) -> Vec<T> {
        let (l, nf) = (self.l, self.bins());
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(l)
            .zip(x.par_chunks(l))
            .enumerate()
            .for_each_init(
                || self.scratch(),
                |s, (r, (o, row))| {
                    let kr = if kernel_rows == 1 { 0 } else { r % channels };
                    let ks = &spec[kr * nf..(kr + 1) * nf];
                    self.forward(row, s);
                    for (f, kv) in s.freq.iter_mut().zip(ks) {
                        *f *= *kv;
                    }
                    self.inverse_into(s, o);
                },
            );
        out
    }
}

struct Scratch<T> {
    time: Vec<T>,
    freq: Vec<Complex<T>>,
    sf: Vec<Complex<T>>,
    si: Vec<Complex<T>>,
}

pub(crate) fn conv_fwd<T: FftFloat>(u: &[T], k: &[T], c: usize, ck: usize, l: usize) -> Vec<T> {
    let plans = Plans::<T>::new(l);
    let kspec = plans.spectra(k);
    plans.filter_rows(u, &kspec, c, ck)
}

/// Both gradients in one pass, sharing each row's spectra:
/// du[b,c,s] = Σ_{t≥s} k[c,t−s]·dy[b,c,t] and dk[c,j] = Σ_b Σ_{t≥j} u[b,c,t−j]·dy[b,c,t]
/// (summed over channels too for a shared kernel). Returns `du` followed by `dk`, flat.
/// Every sum runs in a fixed order, so results are bitwise reproducible across runs.
pub(crate) fn conv_grad<T: FftFloat>(
    u: &[T],
    k: &[T],
    dy: &[T],
    c: usize,
    ck: usize,
    l: usize,
) -> Vec<T> {
    let plans = Plans::<T>::new(l);
    let nf = plans.bins();
    let zero = Complex::new(T::zero(), T::zero());
    let kspec = plans.spectra(k);
    let rows = u.len() / l;
    // Rows are processed in groups whose kernel-gradient spectra are summed in row order: one
    // group per channel for per-channel kernels, fixed-size row blocks for a shared kernel. The
    // grouping does not depend on the thread count, so sums are bitwise reproducible.
    let groups: Vec<Vec<usize>> = if ck == 1 {
        let per = rows.div_ceil(64).max(1);
        (0..rows)
            .collect::<Vec<_>>()
            .chunks(per)
            .map(|g| g.to_vec())
            .collect()
    } else {
        (0..c).map(|ch| (ch..rows).step_by(c).collect()).collect()
    };
    let partial: Vec<(Vec<T>, Vec<Complex<T>>)> = groups
        .par_iter()
        .map(|g| {
            let mut s = plans.scratch();
            let mut dys = vec![zero; nf];
            let mut acc = vec![zero; nf];
            let mut du = vec![T::zero(); g.len() * l];
            for (&r, du_r) in g.iter().zip(du.chunks_mut(l)) {
                plans.forward(&dy[r * l..(r + 1) * l], &mut s);
                dys.copy_from_slice(&s.freq);
                plans.forward(&u[r * l..(r + 1) * l], &mut s);
                for ((a, uf), df) in acc.iter_mut().zip(&s.freq).zip(&dys) {
                    *a += uf.conj() * *df;
                }
                let kr = if ck == 1 { 0 } else { r % c };
                for (f, (kv, df)) in s.freq.iter_mut().zip(kspec[kr * nf..].iter().zip(&dys)) {
                    *f = kv.conj() * *df;
                }
                plans.inverse_into(&mut s, du_r);
            }
            (du, acc)
        })
        .collect();
    let mut out = vec![T::zero(); rows * l + ck * l];
    let (du, dk) = out.split_at_mut(rows * l);
    for (g, (gdu, _)) in groups.iter().zip(&partial) {
        for (&r, src) in g.iter().zip(gdu.chunks(l)) {
            du[r * l..(r + 1) * l].copy_from_slice(src);
        }
    }
    let spectra: Vec<Vec<Complex<T>>> = if ck == 1 {
        let mut total = vec![zero; nf];
        for (_, acc) in &partial {
            for (t, a) in total.iter_mut().zip(acc) {
                *t += *a;
            }
        }
        vec![total]
    } else {
        partial.into_iter().map(|(_, acc)| acc).collect()
    };
    dk.par_chunks_mut(l).zip(spectra.par_iter()).for_each_init(
        || plans.scratch(),
        |s, (o, a)| {
            s.freq.copy_from_slice(a);
            plans.inverse_into(s, o);
        },
    );
    out
}

/// The contiguous slice of a CPU operand (custom ops are always handed contiguous tensors).
pub(crate) fn cpu_slice<'a, T>(
    v: &'a [T],
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: operand must be contiguous"),
    }
}

/// Dispatches a kernel on f32/f64 storages.
fn dispatch(
    name: &str,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    f32k: impl FnOnce(&[f32], &[f32]) -> Vec<f32>,
    f64k: impl FnOnce(&[f64], &[f64]) -> Vec<f64>,
) -> candle_core::Result<CpuStorage> {
    match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => Ok(CpuStorage::F32(f32k(
            cpu_slice(a, l1, name)?,
            cpu_slice(b, l2, name)?,
        ))),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => Ok(CpuStorage::F64(f64k(
            cpu_slice(a, l1, name)?,
            cpu_slice(b, l2, name)?,
        ))),
        _ => candle_core::bail!("{name}: only f32 and f64 operands of one dtype are supported"),
    }
}

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
            s1,
            l1,
            s2,
            l2,
            |u, k| conv_fwd(u, k, c, ck, l),
            |u, k| conv_fwd(u, k, c, ck, l),
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
