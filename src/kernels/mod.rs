//! What the state-space layers learned, from the weights alone. S4D kernels do not depend on
//! the input, so a checkpoint's kernels, Δt values and eigenvalues of A can be read off without
//! running the model. Everything here is UI-free: the TUI's Kernels view
//! (`tui/views/kernels.rs`) and `ssmlab kernels` (`cli/kernels.rs`) both draw from it.
//!
//! Files: `model` (what a model's kernels are, as data), `source` (reading them from weights:
//! one [`KernelSource`] per family), `math` (responses, decay, spectra, receptive fields),
//! `summary` (the table of `ssmlab kernels`), `figure` (what each sub-view shows) and `export`
//! (PNG and CSV).
//!
//! - Kernels are computed by the engine's own code (`engine::bigs::BigsSsm::kernel`, i.e.
//!   [`crate::engine::s4d::bigs_kernel`]; DiffuSSM's `engine::ssm::Ssm::kernel`, i.e.
//!   `S4dSsm::kernel` per channel; [`s4_channel_kernels`] wraps
//!   [`crate::engine::s4d::s4_kernel`] for per-channel models), never by a copy.
//! - A model family is one [`KernelSource`] implementation plus one arm in [`open_source`]:
//!   BiGS ([`BigsSource`]) and DiffuSSM ([`DiffussmSource`], EMA weights when the checkpoint has
//!   them).
//! - A forward and a backward kernel together are one response over signed offsets
//!   `d = t_out − t_in ∈ −(L−1)…L−1`: `d ≥ 0 → K_f[d]`, `d < 0 → K_b[−d]` ([`signed_response`]);
//!   for images it folds back onto the pixel grid ([`fold_receptive_field`]).
//!
//! BiGS multiplies the two directions' outputs through input-dependent projections, DiffuSSM
//! passes them through gated MLPs; neither is a fixed map, so only the kernels are shown (for
//! images also folded onto the patch grid: the SSM's linear response before the gates), never
//! a fake attention map.

pub mod export;
pub mod figure;
mod math;
mod model;
mod source;
mod summary;

use std::path::PathBuf;

use crate::engine::EngineError;
use crate::runs::model::ModelDirError;

pub use math::*;
pub use model::*;
pub use source::*;
pub use summary::*;

#[derive(Debug, thiserror::Error)]
pub enum KernelsError {
    #[error(transparent)]
    Dir(#[from] ModelDirError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Run(#[from] crate::runs::RunError),
    #[error("{path} has no SSM parameters (no tensor `{tensor}`): {hint}")]
    NoSsm {
        path: PathBuf,
        tensor: String,
        /// What the family expects and which paths to pass.
        hint: &'static str,
    },
    #[error(
        "layer {layer} is out of range: {path} has {layers} layers; pass a layer from 0 to {last}",
        last = .layers.saturating_sub(1)
    )]
    LayerRange {
        path: PathBuf,
        layer: usize,
        layers: usize,
    },
    #[error(
        "channel {channel} is out of range: {path} has {note}; pass a channel from 0 to {last}"
    )]
    ChannelRange {
        path: PathBuf,
        channel: usize,
        note: String,
        last: usize,
    },
    #[error(
        "{path}: model_type `{model_type}` has no kernel view (known: bigs, diffussm); \
         is this a BiGS or DiffuSSM config.json?"
    )]
    UnknownFamily { path: PathBuf, model_type: String },
    #[error(
        "{path}: an attention model (the BERT or DiT baseline) has no SSM kernels; the kernel view is for \
         BiGS and DiffuSSM models"
    )]
    Attention { path: PathBuf },
    #[error("kernel history {path}: {msg}")]
    History { path: PathBuf, msg: String },
}

impl From<candle_core::Error> for KernelsError {
    fn from(e: candle_core::Error) -> Self {
        KernelsError::Engine(e.into())
    }
}

pub type Result<T> = std::result::Result<T, KernelsError>;
