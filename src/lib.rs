//! ssmlab: a terminal lab for attention-free deep learning.
//!
//! Modules, in layer order from the bottom up:
//! - [`text`]: terminal-safe text (the one sanitiser between outside strings and the terminal),
//!   and bounded reads of small files from outside (regular files only, size-capped).
//! - [`engine`]: tensors only — S4D kernels, long convolution, layers, the BiGS, attention and
//!   DiffuSSM models, diffusion; the CPU kernels (fused nodes, FFT, gemm) live in `engine::cpu`.
//!   The model equations it follows are in `docs/models.md`.
//! - [`data`]: training data — corpora, tokenizers, packing and masking for masked-LM; image sets.
//! - [`runs`]: run directories (config, status, metrics, control, checkpoints), the contract
//!   between training and every viewer.
//! - [`train`]: run configuration and presets, the optimiser, the one training loop
//!   (`train::session`) and its tasks (`mlm`, `diffusion`), with `cas` and `samples`.
//! - [`probe`]: fill-mask on run checkpoints and Hugging Face BiGS directories.
//! - [`kernels`]: what the SSM layers learned, from the weights alone (UI-free).
//! - [`compare`]: BiGS against its attention twin — comparison rows, FLOPs per token, and the
//!   scaling of a training step with sequence length (the step timer is `compare::step`).
//! - [`sweep`]: sweeps — a preset over a grid or random ranges of values, as ordinary runs
//!   recorded in `NAME.sweep.toml`; the plan of a (re)run and the sweep's table.
//! - [`sample`]: sampling from trained diffusion models (grids, sample folders, CAS).
//! - [`tui`]: the terminal UI — app state, views, and the worker threads behind them.
//! - [`bench`]: benchmarks that print JSON.
//! - [`cli`]: the `ssmlab` command line.
//!
//! The layer rule: text < engine < data, runs < train < probe, kernels, compare, sample, sweep < tui < bench,
//! cli. Imports only point down: a module imports only modules on a lower layer, except that
//! `cli` imports `bench` (the only module that does); nothing imports `cli`.
//! `tests/suite/layers.rs` checks this on `src/` (and that `tui` names no candle or engine type).

pub mod bench;
pub mod cli;
pub mod compare;
pub mod data;
pub mod engine;
pub mod kernels;
pub mod probe;
pub mod runs;
pub mod sample;
pub mod sweep;
pub mod text;
pub mod train;
pub mod tui;
