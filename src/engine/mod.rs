//! The tensor engine: S4D kernels, long convolution, layers and models. No UI, no files beyond
//! checkpoints and configs.

pub mod attention;
pub mod bigs;
pub mod classifier;
pub mod conv;
#[allow(unsafe_code)] // the one place for `unsafe`: each block has its `SAFETY:` argument
pub mod cpu;
pub mod device;
pub mod diffusion;
pub mod diffussm;
pub mod dit;
pub mod error;
pub mod init;
pub mod memory;
pub mod nn;
pub mod s4d;
pub mod serial;
pub mod ssm;
pub mod weights;

pub use error::{EngineError, Result};
