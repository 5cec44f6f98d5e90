//! Errors of the engine. Every message names the file, the field or the tensor, and says what
//! would fix it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("cannot read {path}: {err}")]
    Io {
        path: PathBuf,
        /// Not `source`: the message already says it, and a source would print it twice.
        err: std::io::Error,
    },

    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("invalid model configuration: field `{field}` {msg}")]
    ConfigField { field: &'static str, msg: String },

    #[error(
        "checkpoint {path} has no tensor `{name}` (the model expects shape {expected:?}); \
         is it a checkpoint of this architecture and configuration?"
    )]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },

    #[error(
        "checkpoint {path}: tensor `{name}` has shape {found:?} but the configuration implies {expected:?}; \
         check the config.json that goes with these weights"
    )]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("cannot read checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    #[error(
        "sequence of length {len} is longer than max_position_embeddings = {max}; \
         truncate the input or use a model with longer positions"
    )]
    SequenceTooLong { len: usize, max: usize },

    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, EngineError>;
