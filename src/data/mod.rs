//! Data for training: corpora on disk, tokenizers, packing and masking for masked-LM training;
//! image sets for diffusion training (`images`).

pub mod corpus;
pub mod images;
pub mod mlm;
pub mod tokenizer;

use std::path::PathBuf;

/// Errors about input data. Messages name the file (and line) and say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("corpus path {0} does not exist")]
    NotFound(PathBuf),
    #[error("cannot read {path}: {err}")]
    Io {
        path: PathBuf,
        /// Not `source`: the message already says it, and a source would print it twice.
        err: std::io::Error,
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
    #[error(
        "image data {0} does not exist; give an IDX images file, a folder of IDX files or a folder of class subfolders (the shipped set: datasets/fashion-mnist)"
    )]
    ImagesNotFound(PathBuf),
    /// An IDX file that cannot be read as one (magic number, truncation, gzip, pairing).
    #[error("{path}: {msg}")]
    Idx { path: PathBuf, msg: String },
    /// An image file or folder problem (decoding, sizes, empty folders, writing grids).
    #[error("{path}: {msg}")]
    Image { path: PathBuf, msg: String },
}

pub type Result<T> = std::result::Result<T, DataError>;

/// Looks for a relative data path in the working directory, then in the source tree (so the
/// presets work from any directory of a source checkout).
pub fn resolve_data_path(p: &std::path::Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.into();
    }
    let alt = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    if alt.exists() { alt } else { p.into() }
}

/// Fisher–Yates with a seeded generator.
pub fn shuffle(v: &mut [usize], rng: &mut impl rand::Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}
