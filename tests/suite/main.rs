//! The test suite: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failing test reports where; that is the point

mod bench;
mod common;
mod compare;
mod data;
mod data_images;
mod diffusion;
mod dit;
mod engine_bigs;
mod engine_bigs_fused;
mod engine_conv;
mod engine_diffussm_fused;
mod engine_kernels;
mod engine_rowops;
mod export;
mod kernels;
mod layers;
mod probe;
mod props;
mod sweep;
mod train;
mod trust;
pub(crate) mod tui;
mod tui_samples;
mod tui_scale;
