//! The test suite: one binary, one module per area.

mod common;
mod engine_bigs;
mod engine_conv;
mod engine_kernels;
