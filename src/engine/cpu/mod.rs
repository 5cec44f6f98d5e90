//! The CPU kernels, and the switch between them and the device-generic candle ops.
//!
//! What the fused kernels share lives here and only here: one float trait (`float`), the gemm
//! calls (`gemm`), row-block reductions with a fixed summation order (`rows`), the activations
//! (`act`), FFT convolution (`fft`), SIMD helpers (`simd`), the candle glue of a node with a
//! hand-written backward (`node`) and the one-node linear layer (`linear`). The nodes built on
//! them: row ops (`rowops`), GELU and cross-entropy (`fused`), the BiGS layer (`bigs_layer`), the
//! DiffuSSM block (`diffussm_block`) and the per-channel S4D kernel (`s4_kernel`). Every `unsafe`
//! of the crate's engine is in this module, each with its `SAFETY:` comment.
//!
//! The fused nodes (the BiGS layer, the DiffuSSM block, the per-channel S4D kernel, the row
//! ops, GELU, cross-entropy, the one-node linear layer, the FFT convolution and the in-place
//! AdamW) run only on the CPU; every model also has a path built from candle ops, which is what
//! CUDA runs. Switching the fused nodes off runs that path on the CPU, where the tests compare
//! the two (outputs and every gradient).

pub mod act;
pub mod bigs_layer;
pub(crate) mod bigs_step;
pub mod diffussm_block;
pub mod fft;
pub(crate) mod float;
pub mod fused;
pub(crate) mod gemm;
pub mod linear;
pub(crate) mod node;
pub mod prof;
pub mod rowops;
pub mod rows;
pub mod s4_kernel;
pub mod simd;

use std::cell::Cell;

/// Set to `0` to run every model on the device-generic ops (what CUDA runs) on the CPU too.
pub const FUSED_ENV: &str = "SSMLAB_FUSED";

thread_local! {
    static ENABLED: Cell<bool> =
        Cell::new(std::env::var(FUSED_ENV).map_or(true, |v| v.trim() != "0"));
}

/// Whether the fused CPU nodes run on this thread (the default). Off, the models are built from
/// candle ops, as on other devices: `SSMLAB_FUSED=0` for a whole process, [`set_enabled`] for a
/// scope (the tests and the benchmark compare the two).
pub fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// Sets [`enabled`] for this thread until the returned guard is dropped.
pub fn set_enabled(on: bool) -> EnabledGuard {
    EnabledGuard(ENABLED.with(|e| e.replace(on)))
}

/// Restores the previous [`enabled`] setting when dropped.
pub struct EnabledGuard(bool);

impl Drop for EnabledGuard {
    fn drop(&mut self) {
        ENABLED.with(|e| e.set(self.0));
    }
}
