//! The tensor engine: S4D kernels, long convolution, layers and models. No UI, no files beyond
//! checkpoints and configs.

pub mod attention;
pub mod bigs;
pub mod bigs_fused;
pub mod classifier;
pub mod conv;
pub mod cpu;
pub mod device;
pub mod diffusion;
pub mod diffussm;
pub mod diffussm_fused;
pub mod error;
pub mod fused;
mod fused_node;
pub mod init;
pub mod nn;
pub mod rowops;
pub mod s4d;
pub mod s4d_fused;
pub mod simd;
pub mod ssm;
pub mod weights;

pub use error::{EngineError, Result};
