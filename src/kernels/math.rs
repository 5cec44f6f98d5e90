//! The numbers read off kernels: signed responses, decay lags, frequency responses, image
//! receptive fields, spreads.

use candle_core::{DType, Tensor};

use super::*;
use crate::engine::s4d::{Discretization, s4_kernel};

/// Per-channel kernels of an s4-style SSM through the engine's [`s4_kernel`] (the kernel family
/// of per-channel models): `log_dt` (H), `a_re`, `a_im` (H, M) the real and imaginary parts of
/// A as the model uses them, `c` (H, M, 2), skip `d` (H).
pub fn s4_channel_kernels(
    log_dt: &Tensor,
    a_re: &Tensor,
    a_im: &Tensor,
    c: &Tensor,
    d: &Tensor,
    len: usize,
    disc: Discretization,
) -> Result<SsmKernels> {
    let k = s4_kernel(log_dt, a_re, a_im, c, len, disc)?;
    let f64v =
        |t: &Tensor| -> Result<Vec<f64>> { Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?) };
    let re = f64v(a_re)?;
    let im = f64v(a_im)?;
    Ok(SsmKernels {
        kernels: k.to_dtype(DType::F64)?.to_vec2()?,
        dt: f64v(&log_dt.exp()?)?,
        eig: re.into_iter().zip(im).collect(),
        d: f64v(d)?,
    })
}

/// The response over signed offsets `d = −(L−1)…L−1` (output position minus input position):
/// `d ≥ 0 → k_f[d]`, `d < 0 → k_b[−d]`. Returns (d, value) pairs, ascending in d.
pub fn signed_response(k_f: &[f64], k_b: &[f64]) -> Vec<(i64, f64)> {
    let back = (1..k_b.len()).rev().map(|j| (-(j as i64), k_b[j]));
    let fwd = k_f.iter().enumerate().map(|(j, v)| (j as i64, *v));
    back.chain(fwd).collect()
}

/// The lag after which `|k|` stays below `frac` of its maximum (the first lag of the quiet
/// tail); `None` when the kernel is still above that at the last lag (it outlasts L).
pub fn decay_lag(k: &[f64], frac: f64) -> Option<usize> {
    let max = k.iter().fold(0f64, |m, v| m.max(v.abs()));
    if max == 0.0 {
        return Some(0);
    }
    let last = k.iter().rposition(|v| v.abs() >= frac * max).unwrap_or(0);
    (last + 1 < k.len()).then_some(last + 1)
}

/// |DFT(k)| at frequencies `f/n_fft` cycles per step, `f = 0…n_fft/2`, with `k` zero-padded to
/// `n_fft` (≥ its length; realfft).
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "buffers come from the plan's own make_*_vec, so lengths always match"
)]
pub fn frequency_response(k: &[f64], n_fft: usize) -> Vec<f64> {
    let n = n_fft.max(k.len()).max(1);
    let mut planner = realfft::RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(n);
    let mut input = fft.make_input_vec();
    input[..k.len()].copy_from_slice(k);
    let mut out = fft.make_output_vec();
    fft.process(&mut input, &mut out)
        .expect("buffers come from the plan");
    out.iter().map(|c| c.norm()).collect()
}

/// A bidirectional 1-D kernel folded back onto an image flattened in raster order: the H×W map
/// (row-major) of how output pixel `(r, c)` responds to each input pixel `(r', c')`. With
/// `d = idx(r, c) − idx(r', c')`, `idx(r, c) = r·W + c`: `d ≥ 0 → k_f[d]`, `d < 0 → k_b[−d]`,
/// zero beyond a kernel's length.
pub fn fold_receptive_field(
    k_f: &[f64],
    k_b: &[f64],
    h: usize,
    w: usize,
    r: usize,
    c: usize,
) -> Vec<f64> {
    let here = (r * w + c) as i64;
    (0..h * w)
        .map(|src| {
            let d = here - src as i64;
            let v = if d >= 0 {
                k_f.get(d as usize)
            } else {
                k_b.get((-d) as usize)
            };
            v.copied().unwrap_or(0.0)
        })
        .collect()
}

/// (min, median, max) of values (NaN-free); None when empty.
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    Some((v[0], med, v[n - 1]))
}
