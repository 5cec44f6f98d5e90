//! Which files a model path stands for, shared by every tool that opens a checkpoint (probe,
//! kernels): a run directory (its latest checkpoint, or a chosen `step-N`), one `step-N/`
//! checkpoint, or a Hugging Face-style directory as the released BiGS models are published
//! (`config.json` + `model.safetensors` or `pytorch_model.bin`, tokenizer optional here).

use std::path::{Path, PathBuf};

use super::RunDir;

#[derive(Debug, thiserror::Error)]
pub enum ModelDirError {
    #[error(
        "{0}: unknown model directory layout; expected a run directory (config.toml + step-N/), \
         a checkpoint step-N/ (model.safetensors + config.json), or a Hugging Face directory \
         (config.json + model.safetensors or pytorch_model.bin + tokenizer.json or vocab.txt)"
    )]
    Layout(PathBuf),
    #[error("{path}: the run has no checkpoint step-{step}; its checkpoints are {available}")]
    NoSuchStep {
        path: PathBuf,
        step: u64,
        available: String,
    },
    #[error(
        "{0}: --step selects a checkpoint of a run directory, but this is a single checkpoint; \
         drop --step or pass the run directory"
    )]
    StepOfSingle(PathBuf),
}

/// The files a model directory resolves to.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
    /// `tokenizer.json` or `vocab.txt` in the directory or its parent (a run's), if any.
    pub tokenizer: Option<PathBuf>,
    /// `step-N` of a run checkpoint, if any.
    pub step: Option<u64>,
}

fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

fn steps_list(ck: &[(u64, PathBuf)]) -> String {
    if ck.is_empty() {
        return "none yet".into();
    }
    ck.iter()
        .map(|(s, _)| format!("step-{s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves a model path: a run directory (its checkpoint `step`, else the latest), a `step-N/`
/// checkpoint, or a Hugging Face directory.
pub fn resolve_model(path: &Path, step: Option<u64>) -> Result<ModelFiles, ModelDirError> {
    let layout = || ModelDirError::Layout(path.into());
    if path.join("config.toml").is_file() {
        let run = RunDir::open(path).map_err(|_| layout())?;
        let ck = run.checkpoints();
        let found =
            match step {
                Some(s) => ck.iter().find(|c| c.0 == s).cloned().ok_or_else(|| {
                    ModelDirError::NoSuchStep {
                        path: path.into(),
                        step: s,
                        available: steps_list(&ck),
                    }
                })?,
                None => ck.last().cloned().ok_or_else(layout)?,
            };
        return resolve_model(&found.1, None);
    }
    let config = path.join("config.json");
    let weights = first_existing(path, &["model.safetensors", "pytorch_model.bin"]);
    let (Some(weights), true) = (weights, config.is_file()) else {
        return Err(layout());
    };
    if step.is_some() {
        return Err(ModelDirError::StepOfSingle(path.into()));
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    let tokenizer = first_existing(path, &["tokenizer.json", "vocab.txt"])
        .or_else(|| first_existing(parent, &["tokenizer.json", "vocab.txt"]));
    let step = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.parse().ok());
    Ok(ModelFiles {
        config,
        weights,
        tokenizer,
        step,
    })
}

/// Every checkpoint a model path offers, ascending by step: all of a run directory's, else the
/// single checkpoint (a `step-N/` or Hugging Face directory).
pub fn model_checkpoints(path: &Path) -> Result<Vec<ModelFiles>, ModelDirError> {
    if path.join("config.toml").is_file() {
        let run = RunDir::open(path).map_err(|_| ModelDirError::Layout(path.into()))?;
        let ck = run.checkpoints();
        if ck.is_empty() {
            return Err(ModelDirError::Layout(path.into()));
        }
        return ck.iter().map(|(_, p)| resolve_model(p, None)).collect();
    }
    Ok(vec![resolve_model(path, None)?])
}
