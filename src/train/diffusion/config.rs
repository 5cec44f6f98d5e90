//! A diffusion run's `config.toml`: its sections and their validation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::diffusion::{DiffusionConfig, NoiseSchedule};
use crate::engine::diffussm::{DiffusionEncoder, DiffussmConfig};
use crate::train::config::{ConfigError, OptimSection, RunSection, load_toml, one_line, overrides};

/// `[data]` of a diffusion run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDataSection {
    /// An IDX images file, a folder of IDX pairs, or a folder of class subfolders of PNG/JPEG.
    pub images: PathBuf,
    /// Fraction of images held out (eval loss, classifier test accuracy).
    pub val_fraction: f64,
    /// Random horizontal flips.
    pub hflip: bool,
}

/// `[train]` of a diffusion run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionTrainSection {
    pub steps: u64,
    pub batch_size: usize,
    pub log_every: u64,
    /// Held-out ε-MSE every this many steps (fixed t and noise per batch).
    pub eval_every: u64,
    pub eval_batches: usize,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    /// EMA decay (warmed up as min(decay, (1 + n)/(10 + n))).
    pub ema_decay: f64,
    /// Fixed-seed sample grid every this many steps (0 = never).
    pub sample_every: u64,
    pub sample_seed: u64,
    /// Grid rows; the columns are the classes.
    pub sample_rows: usize,
    pub sample_steps: usize,
    pub guidance: f64,
    pub trajectory_frames: usize,
    /// Classification accuracy score every this many steps (0 = only at the end).
    pub cas_every: u64,
    /// Samples per CAS evaluation (spread evenly over the classes).
    pub cas_samples: usize,
    pub cas_steps: usize,
    /// Shards of each batch trained on their own threads with single-threaded ops
    /// (`train::parallel`); 0 = one per core, 1 = no sharding (candle parallelises each op).
    /// Older runs have 1.
    #[serde(default = "one")]
    pub data_parallel: usize,
}

fn one() -> usize {
    1
}

/// `[classifier]`: the MLP that scores samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSection {
    pub hidden: Vec<usize>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
}

/// A diffusion run's `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionRunConfig {
    pub run: RunSection,
    pub model: DiffussmConfig,
    pub diffusion: DiffusionConfig,
    pub data: ImageDataSection,
    pub optim: OptimSection,
    pub train: DiffusionTrainSection,
    pub classifier: ClassifierSection,
}

impl DiffusionRunConfig {
    pub fn from_toml_file(path: &Path) -> std::result::Result<Self, ConfigError> {
        load_toml(path)
    }

    pub fn to_toml(&self) -> String {
        crate::engine::serial::toml_pretty(self)
    }

    pub fn with_overrides(&self, sets: &[String]) -> std::result::Result<Self, ConfigError> {
        overrides(self, sets)
    }

    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        let f = |field: &str, msg: &str| {
            Err(ConfigError::Field {
                field: field.into(),
                msg: msg.into(),
            })
        };
        let want = match self.model.encoder {
            DiffusionEncoder::Ssm => "diffussm",
            DiffusionEncoder::Attention => "dit",
        };
        if self.run.model != want {
            return f(
                "run.model",
                &format!(
                    "must be `{want}` for a diffusion model with model.encoder = \"{}\" (`diffussm`: ssm, `dit`: attention)",
                    match self.model.encoder {
                        DiffusionEncoder::Ssm => "ssm",
                        DiffusionEncoder::Attention => "attention",
                    }
                ),
            );
        }
        let t = &self.train;
        if t.steps == 0 {
            return f("train.steps", "must be at least 1");
        }
        if t.batch_size == 0 {
            return f("train.batch_size", "must be at least 1");
        }
        if t.log_every == 0 || t.eval_every == 0 || t.checkpoint_every == 0 {
            return f(
                "train.log_every",
                "log_every, eval_every and checkpoint_every must be at least 1",
            );
        }
        if !(0.0..1.0).contains(&t.ema_decay) {
            return f("train.ema_decay", "must be in [0, 1)");
        }
        if t.sample_rows == 0 || t.sample_steps == 0 || t.cas_steps == 0 {
            return f(
                "train.sample_rows",
                "sample_rows, sample_steps and cas_steps must be at least 1",
            );
        }
        if !(0.0..0.5).contains(&self.data.val_fraction) || self.data.val_fraction == 0.0 {
            return f("data.val_fraction", "must be in (0, 0.5)");
        }
        if !(0.0..1.0).contains(&self.diffusion.class_dropout) {
            return f("diffusion.class_dropout", "must be in [0, 1)");
        }
        if self.optim.lr <= 0.0 {
            return f("optim.lr", "must be positive");
        }
        self.model.validate().map_err(|e| ConfigError::Field {
            field: "model".into(),
            msg: one_line(&e.to_string()),
        })?;
        self.model
            .check_memory(t.batch_size, true)
            .map_err(|e| ConfigError::Field {
                field: "model".into(),
                msg: e.to_string(),
            })?;
        NoiseSchedule::new(&self.diffusion).map_err(|e| ConfigError::Field {
            field: "diffusion".into(),
            msg: e.to_string(),
        })?;
        Ok(())
    }
}
