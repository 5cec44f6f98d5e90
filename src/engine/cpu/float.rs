//! The one float trait of the CPU kernels, and the way in and out of candle's CPU storage.

use std::sync::{Mutex, OnceLock};

use candle_core::{CpuStorage, Layout};
use realfft::num_traits::{Float, NumAssign};
use realfft::{FftNum, RealFftPlanner};

use super::act::Gelu;

/// The element types of the CPU kernels (f32 and f64): arithmetic, the FFT planner, the
/// activations and the exponential they use, and the way in and out of candle's CPU storage.
pub(crate) trait Elem: Float + FftNum + NumAssign + Send + Sync + Default + 'static {
    /// The process-wide FFT planner of this type (it caches plans by length).
    fn planner() -> &'static Mutex<RealFftPlanner<Self>>;
    /// `exp`, vectorisable where the type allows (f32: [`super::simd::exp_f32`]).
    fn exp_v(self) -> Self;
    fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
    /// GELU value and derivative.
    fn gelu(k: Gelu, x: Self) -> (Self, Self);
    fn of(x: f64) -> Self;
}

impl Elem for f32 {
    fn planner() -> &'static Mutex<RealFftPlanner<f32>> {
        static P: OnceLock<Mutex<RealFftPlanner<f32>>> = OnceLock::new();
        P.get_or_init(|| Mutex::new(RealFftPlanner::new()))
    }
    #[inline(always)]
    fn exp_v(self) -> f32 {
        super::simd::exp_f32(self)
    }
    fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
        match s {
            CpuStorage::F32(v) => cpu_slice(v, l, what),
            _ => candle_core::bail!("{what}: operands must all be f32 or all f64"),
        }
    }
    fn storage(v: Vec<f32>) -> CpuStorage {
        CpuStorage::F32(v)
    }
    #[inline(always)]
    fn gelu(k: Gelu, x: f32) -> (f32, f32) {
        super::act::gelu_f32(k, x)
    }
    fn of(x: f64) -> f32 {
        x as f32
    }
}

impl Elem for f64 {
    fn planner() -> &'static Mutex<RealFftPlanner<f64>> {
        static P: OnceLock<Mutex<RealFftPlanner<f64>>> = OnceLock::new();
        P.get_or_init(|| Mutex::new(RealFftPlanner::new()))
    }
    #[inline(always)]
    fn exp_v(self) -> f64 {
        self.exp()
    }
    fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f64]> {
        match s {
            CpuStorage::F64(v) => cpu_slice(v, l, what),
            _ => candle_core::bail!("{what}: operands must all be f32 or all f64"),
        }
    }
    fn storage(v: Vec<f64>) -> CpuStorage {
        CpuStorage::F64(v)
    }
    #[inline(always)]
    fn gelu(k: Gelu, x: f64) -> (f64, f64) {
        super::act::gelu_f64(k, x)
    }
    fn of(x: f64) -> f64 {
        x
    }
}

/// Runs the f32 or f64 instance of a kernel on the operands' slices.
pub(crate) fn dispatch(
    what: &str,
    ops: &[(&CpuStorage, &Layout)],
    f32k: impl FnOnce(&[&[f32]]) -> Vec<f32>,
    f64k: impl FnOnce(&[&[f64]]) -> Vec<f64>,
) -> candle_core::Result<CpuStorage> {
    match ops[0].0 {
        CpuStorage::F32(_) => {
            let xs = ops
                .iter()
                .map(|(s, l)| f32::slice(s, l, what))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(f32::storage(f32k(&xs)))
        }
        CpuStorage::F64(_) => {
            let xs = ops
                .iter()
                .map(|(s, l)| f64::slice(s, l, what))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(f64::storage(f64k(&xs)))
        }
        _ => candle_core::bail!("{what}: only f32 and f64 are supported"),
    }
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
