//! ssmlab: a terminal lab for attention-free deep learning.
//!
//! - [`engine`]: tensors only — S4D kernels, long convolution, layers, models.
//! - [`kernels`]: what the SSM layers learned, from weights alone (UI-free).
//! - [`cli`]: the `ssmlab` command line.
//! - [`bench`]: benchmarks that print JSON.

pub mod bench;
pub mod cli;
pub mod compare;
pub mod data;
pub mod engine;
pub mod kernels;
pub mod probe;
pub mod runs;
pub mod sample;
pub mod train;
pub mod tui;
