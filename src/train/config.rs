//! Run configuration (`config.toml`), presets, and `--set key=value` overrides.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::mlm::MaskingConfig;
use crate::engine::bigs::{BigsConfig, Encoder};

/// Errors about a run configuration; each names the file or key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown preset `{0}`; `ssmlab train --list-presets` lists them")]
    UnknownPreset(String),
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("--set {key}: {msg}")]
    Override { key: String, msg: String },
    #[error("config field `{field}`: {msg}")]
    Field { field: String, msg: String },
}

pub type Result<T> = std::result::Result<T, ConfigError>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Name of the run directory (`checkpoints/<name>`; `-2`, `-3`… appended if taken).
    pub name: String,
    /// Seed of every random draw: initialisation, data order, masking, dropout.
    pub seed: u64,
    /// The preset this configuration started from, if any.
    #[serde(default)]
    pub preset: String,
    /// Model family (`bigs`).
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A .txt file, a folder of .txt/.jsonl files, or a .jsonl file with a `text` field.
    pub corpus: PathBuf,
    /// A tokenizer.json or a BERT vocab.txt.
    pub tokenizer: PathBuf,
    pub seq_len: usize,
    /// Fraction of documents held out for evaluation.
    pub val_fraction: f64,
    pub masking: MaskingConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Peak learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (not on biases and LayerNorm parameters).
    pub weight_decay: f64,
    pub warmup_steps: u64,
    /// The cosine decay ends at `min_lr_ratio × lr`.
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub grad_clip: f64,
    /// Learning-rate multiplier of the SSM parameters A_re, A_im and log_step.
    pub ssm_lr_scale: f64,
    /// Whether A_re, A_im and log_step get weight decay (the released BiGS script: yes).
    pub ssm_weight_decay: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    pub log_every: u64,
    pub eval_every: u64,
    /// Held-out batches per evaluation.
    pub eval_batches: usize,
    pub checkpoint_every: u64,
    /// Checkpoints kept besides the best one (by eval loss).
    pub keep_checkpoints: usize,
}

/// A whole run: what `config.toml` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub run: RunSection,
    pub model: BigsConfig,
    pub data: DataSection,
    pub optim: OptimSection,
    pub train: TrainSection,
}

impl RunConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        load_toml(path)
    }

    pub fn to_toml(&self) -> String {
        crate::engine::serial::toml_pretty(self)
    }

    /// Applies `key=value` overrides (`optim.lr=3e-4`). The key must exist; the value must have
    /// the key's type (integers are accepted for floats; bare words for strings).
    pub fn with_overrides(&self, sets: &[String]) -> Result<Self> {
        overrides(self, sets)
    }

    /// Checks values a run would trip over later.
    pub fn validate(&self) -> Result<()> {
        let f = |field: &str, msg: String| {
            Err(ConfigError::Field {
                field: field.into(),
                msg,
            })
        };
        let t = &self.train;
        for (name, v) in [
            ("train.steps", t.steps),
            ("train.log_every", t.log_every),
            ("train.eval_every", t.eval_every),
            ("train.checkpoint_every", t.checkpoint_every),
        ] {
            if v == 0 {
                return f(name, "must be at least 1".into());
            }
        }
        for (name, v) in [
            ("train.batch_size", t.batch_size),
            ("train.grad_accum", t.grad_accum),
            ("train.eval_batches", t.eval_batches),
            ("train.keep_checkpoints", t.keep_checkpoints),
        ] {
            if v == 0 {
                return f(name, "must be at least 1".into());
            }
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return f("optim.lr", format!("is {}; it must be positive", o.lr));
        }
        for (name, b) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return f(name, format!("is {b}; it must be in [0, 1)"));
            }
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return f(
                "optim.min_lr_ratio",
                format!("is {}; it must be in [0, 1]", o.min_lr_ratio),
            );
        }
        let d = &self.data;
        if !(0.0..1.0).contains(&d.val_fraction) || d.val_fraction == 0.0 {
            return f(
                "data.val_fraction",
                format!("is {}; it must be in (0, 1)", d.val_fraction),
            );
        }
        if d.seq_len < 3 {
            return f(
                "data.seq_len",
                format!("is {}; it must be at least 3", d.seq_len),
            );
        }
        if d.seq_len > self.model.max_position_embeddings {
            return f(
                "data.seq_len",
                format!(
                    "is {} but model.max_position_embeddings is {}",
                    d.seq_len, self.model.max_position_embeddings
                ),
            );
        }
        let m = &d.masking;
        if !(m.prob > 0.0 && m.prob < 1.0) {
            return f(
                "data.masking.prob",
                format!("is {}; it must be in (0, 1)", m.prob),
            );
        }
        let want = match self.model.encoder {
            Encoder::Bigs => "bigs",
            Encoder::Attention => "bert",
        };
        if self.run.model != want {
            return f(
                "run.model",
                format!(
                    "is `{}`; a model with encoder = \"{}\" is `{want}` (MLM runs: bigs, bert)",
                    self.run.model,
                    if want == "bert" { "attention" } else { "bigs" }
                ),
            );
        }
        // Before anything is allocated: what one training step keeps must fit.
        self.model
            .check_memory(
                t.batch_size,
                d.seq_len,
                (d.seq_len as f64 * m.prob).ceil() as usize,
                true,
            )
            .map_err(|e| ConfigError::Field {
                field: "model".into(),
                msg: e.to_string(),
            })?;
        Ok(())
    }
}

/// Reads a configuration file of any run kind.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::text::read_file(path, crate::text::SMALL_FILE_MAX).map_err(|e| {
        ConfigError::File {
            path: path.into(),
            msg: e.to_string(),
        }
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.into(),
        msg: one_line(&e.to_string()),
    })
}

/// `cfg` with `key=value` overrides applied (see [`RunConfig::with_overrides`]).
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "derived Serialize of plain fields cannot fail, and TOML it wrote parses"
)]
pub fn overrides<T: Serialize + serde::de::DeserializeOwned>(
    cfg: &T,
    sets: &[String],
) -> Result<T> {
    let text = toml::to_string(cfg).expect("config serialises");
    let mut table: toml::Table = toml::from_str(&text).expect("round trip");
    for s in sets {
        let (key, raw) = s.split_once('=').ok_or_else(|| ConfigError::Override {
            key: s.clone(),
            msg: "expected key=value, e.g. optim.lr=3e-4".into(),
        })?;
        set_key(&mut table, key.trim(), raw.trim())?;
    }
    let text = toml::to_string(&table).expect("toml");
    toml::from_str(&text).map_err(|e| ConfigError::Override {
        key: sets.join(" "),
        msg: one_line(&e.to_string()),
    })
}

/// The `run.model` of a configuration file, to pick the trainer before parsing the rest.
pub fn model_family(path: &Path) -> Result<String> {
    #[derive(Deserialize)]
    struct Peek {
        run: PeekRun,
    }
    #[derive(Deserialize)]
    struct PeekRun {
        model: String,
    }
    let text = crate::text::read_file(path, crate::text::SMALL_FILE_MAX).map_err(|e| {
        ConfigError::File {
            path: path.into(),
            msg: e.to_string(),
        }
    })?;
    let p: Peek = toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.into(),
        msg: one_line(&e.to_string()),
    })?;
    Ok(p.run.model)
}

pub(crate) fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && *l != "^")
        .collect::<Vec<_>>()
        .join(" ")
}

fn set_key(table: &mut toml::Table, key: &str, raw: &str) -> Result<()> {
    let err = |msg: String| ConfigError::Override {
        key: key.into(),
        msg,
    };
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last().ok_or_else(|| err("empty key".into()))?;
    let mut cur = table;
    for (i, p) in path.iter().enumerate() {
        let known: Vec<String> = cur.keys().cloned().collect();
        cur = match cur.get_mut(*p) {
            Some(toml::Value::Table(t)) => t,
            _ => {
                return Err(err(format!(
                    "no section `{}`; known: {}",
                    parts[..=i].join("."),
                    known.join(", ")
                )));
            }
        };
    }
    let known: Vec<String> = cur.keys().cloned().collect();
    let old = cur
        .get(*last)
        .ok_or_else(|| err(format!("no such key; keys here: {}", known.join(", "))))?;
    let parsed: Option<toml::Value> = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    let new = match (old, parsed) {
        (toml::Value::Float(_), Some(toml::Value::Integer(i))) => toml::Value::Float(i as f64),
        (toml::Value::String(_), Some(toml::Value::String(s))) => toml::Value::String(s),
        (toml::Value::String(_), _) => toml::Value::String(raw.to_string()),
        (o, Some(n)) if o.type_str() == n.type_str() => n,
        (o, Some(n)) => {
            return Err(err(format!(
                "expected {}, got {} `{raw}`",
                o.type_str(),
                n.type_str()
            )));
        }
        (o, None) => return Err(err(format!("expected {}, got `{raw}`", o.type_str()))),
    };
    cur.insert(last.to_string(), new);
    Ok(())
}
