//! Data for training: corpora on disk, tokenizers, packing and masking for masked-LM training.

pub mod corpus;
pub mod mlm;
pub mod tokenizer;

use std::path::PathBuf;

/// Errors about input data. Messages name the file (and line) and say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("corpus path {0} does not exist")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is empty: it holds no text to train on")]
    Empty { path: PathBuf },
    #[error(
        "{path} is not text ({why}); give a UTF-8 .txt file, a folder of them, or a .jsonl file"
    )]
    Binary { path: PathBuf, why: String },
    #[error("{path}:{line}: {msg}")]
    Jsonl {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("folder {0} holds no .txt or .jsonl files")]
    EmptyFolder(PathBuf),
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DataError>;
