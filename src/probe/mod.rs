//! Masked-token probing ("fill-mask") of any BiGS checkpoint: a run directory, one of its
//! `step-N/` checkpoints, or a Hugging Face-style directory as the released BiGS models are
//! published (`config.json` + `model.safetensors` or `pytorch_model.bin` + `tokenizer.json` or
//! `vocab.txt`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::data::tokenizer::TextTokenizer;
use crate::engine::bigs::{BigsConfig, BigsForMaskedLm, Mode, load_bigs};
use crate::engine::weights::LoadReport;
use crate::runs::model::{ModelDirError, resolve_model};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Dir(#[from] ModelDirError),
    #[error(
        "{0}: no tokenizer; put the model's tokenizer.json or vocab.txt next to config.json \
         (or in the run directory)"
    )]
    NoTokenizer(PathBuf),
    #[error(
        "{path}: the tokenizer has {tok} tokens but the model's vocab_size is {model}; \
         they must belong together"
    )]
    VocabMismatch {
        path: PathBuf,
        tok: usize,
        model: usize,
    },
    #[error("the prompt has no [MASK] token; write e.g. \"call me [MASK] .\"")]
    NoMask,
    #[error(
        "the prompt is {len} tokens with [CLS] and [SEP], longer than the model's maximum of {max}"
    )]
    TooLong { len: usize, max: usize },
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

impl From<candle_core::Error> for ProbeError {
    fn from(e: candle_core::Error) -> Self {
        ProbeError::Engine(e.into())
    }
}

pub type Result<T> = std::result::Result<T, ProbeError>;

/// The files a model directory resolves to (shared with `ssmlab kernels`: [`resolve_model`]).
pub use crate::runs::model::ModelFiles;

/// Resolves a model path (run dir → its latest checkpoint; step dir; HF dir); probing also
/// needs a tokenizer.
pub fn resolve(path: &Path) -> Result<ModelFiles> {
    let files = resolve_model(path, None)?;
    if files.tokenizer.is_none() {
        return Err(ProbeError::NoTokenizer(path.into()));
    }
    Ok(files)
}

/// A loaded model ready to probe.
pub struct ProbeModel {
    pub model: BigsForMaskedLm,
    pub tok: TextTokenizer,
    pub files: ModelFiles,
    pub report: LoadReport,
    pub parameters: usize,
}

/// One candidate for a mask.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Candidate {
    pub token: String,
    pub id: u32,
    pub prob: f64,
    pub logprob: f64,
}

/// A user's target word at a mask.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetScore {
    pub word: String,
    /// The word piece that is scored (the first piece of a multi-piece word).
    pub piece: String,
    pub pieces: usize,
    pub prob: f64,
    pub logprob: f64,
    /// 1-based rank of the piece among all vocabulary entries.
    pub rank: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MaskPrediction {
    /// Position of the mask in the model input ([CLS] is position 0).
    pub position: usize,
    pub top: Vec<Candidate>,
    /// Entropy of the predicted distribution, in nats.
    pub entropy: f64,
    pub targets: Vec<TargetScore>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbeOutput {
    pub model: String,
    pub tokens: Vec<String>,
    pub padded_to: usize,
    pub masks: Vec<MaskPrediction>,
}

impl ProbeModel {
    /// Loads a model directory (see [`resolve`]) onto the CPU.
    pub fn open_on_cpu(path: &Path) -> Result<Self> {
        Self::open(path, &Device::Cpu)
    }

    /// Loads a model directory (see [`resolve`]).
    pub fn open(path: &Path, dev: &Device) -> Result<Self> {
        let files = resolve(path)?;
        let cfg = BigsConfig::from_json_file(&files.config)?;
        let tok_path = files
            .tokenizer
            .clone()
            .ok_or_else(|| ProbeError::NoTokenizer(path.into()))?;
        let tok = TextTokenizer::load(&tok_path)?;
        if tok.vocab_size() != cfg.vocab_size {
            return Err(ProbeError::VocabMismatch {
                path: tok_path,
                tok: tok.vocab_size(),
                model: cfg.vocab_size,
            });
        }
        let loaded = load_bigs(&cfg, &files.weights, DType::F32, dev)?;
        let parameters = loaded
            .varmap
            .all_vars()
            .iter()
            .map(|v| v.elem_count())
            .sum();
        Ok(Self {
            model: loaded.model,
            tok,
            files,
            report: loaded.report,
            parameters,
        })
    }

    /// `[CLS] prompt [SEP]` ids and tokens; errors when it has no [MASK] or exceeds the
    /// model's maximum length.
    fn encode_prompt(&self, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
        let s = self.tok.specials;
        let (ids, pieces) = self.tok.encode_with_tokens(text)?;
        let input: Vec<u32> = std::iter::once(s.cls).chain(ids).chain([s.sep]).collect();
        let tokens: Vec<String> = std::iter::once("[CLS]".to_string())
            .chain(pieces)
            .chain(["[SEP]".to_string()])
            .collect();
        let max = self.model.config.max_position_embeddings;
        if input.len() > max {
            return Err(ProbeError::TooLong {
                len: input.len(),
                max,
            });
        }
        if !input.contains(&s.mask) {
            return Err(ProbeError::NoMask);
        }
        Ok((input, tokens))
    }

    /// Fill-mask: every `[MASK]` scored independently (as the HF pipeline does). `pad` pads
    /// the input with [PAD] to `max_position_embeddings`, which the reference checkpoints expect
    /// (their SSMs see the padding).
    pub fn fill_mask(
        &self,
        text: &str,
        top_k: usize,
        targets: &[String],
        pad: bool,
    ) -> Result<ProbeOutput> {
        let s = self.tok.specials;
        let (mut input, tokens) = self.encode_prompt(text)?;
        let max = self.model.config.max_position_embeddings;
        let masks: Vec<usize> = (0..input.len()).filter(|&i| input[i] == s.mask).collect();
        let padded_to = if pad { max } else { input.len() };
        input.resize(padded_to, s.pad);
        let dev = self.model.embeddings.word.embeddings().device().clone();
        let ids_t = Tensor::from_vec(input.clone(), (1, padded_to), &dev)?;
        let hidden = self.model.hidden_states(&ids_t, None, Mode::Eval)?;
        let pos: Vec<u32> = masks.iter().map(|&p| p as u32).collect();
        let logits = self
            .model
            .logits_at(&hidden, &Tensor::new(pos.as_slice(), &dev)?)?
            .to_dtype(DType::F64)?;
        let logp = candle_nn::ops::log_softmax(&logits, 1)?.to_vec2::<f64>()?;
        let target_pieces: Vec<(String, Vec<(u32, String)>)> = targets
            .iter()
            .map(|w| {
                let (ids, toks) = self.tok.encode_with_tokens(w)?;
                Ok((w.clone(), ids.into_iter().zip(toks).collect()))
            })
            .collect::<Result<_>>()?;
        let masks = masks
            .iter()
            .zip(&logp)
            .map(|(&position, lp)| {
                let mut order: Vec<usize> = (0..lp.len()).collect();
                order.sort_by(|a, b| lp[*b].total_cmp(&lp[*a]));
                let top = order
                    .iter()
                    .take(top_k)
                    .map(|&i| Candidate {
                        token: self.tok.id_to_token(i as u32),
                        id: i as u32,
                        prob: lp[i].exp(),
                        logprob: lp[i],
                    })
                    .collect();
                let entropy = -lp.iter().map(|l| l.exp() * l).sum::<f64>();
                let targets = target_pieces
                    .iter()
                    .filter_map(|(w, pieces)| {
                        let (id, piece) = pieces.first()?.clone();
                        let l = lp[id as usize];
                        Some(TargetScore {
                            word: w.clone(),
                            piece,
                            pieces: pieces.len(),
                            prob: l.exp(),
                            logprob: l,
                            rank: 1 + lp.iter().filter(|x| **x > l).count(),
                        })
                    })
                    .collect();
                MaskPrediction {
                    position,
                    top,
                    entropy,
                    targets,
                }
            })
            .collect();
        Ok(ProbeOutput {
            model: self.files.weights.display().to_string(),
            tokens,
            padded_to,
            masks,
        })
    }
}

impl ProbeModel {
    /// Left-to-right joint fill: the leftmost remaining [MASK] takes its most probable token,
    /// which later masks then see. Returns (position, token, probability at its step).
    pub fn fill_joint(&self, text: &str, pad: bool) -> Result<Vec<(usize, String, f64)>> {
        let s = self.tok.specials;
        let (mut input, _) = self.encode_prompt(text)?;
        let max = self.model.config.max_position_embeddings;
        let n = input.len();
        if pad {
            input.resize(max, s.pad);
        }
        let dev = self.model.embeddings.word.embeddings().device().clone();
        let mut out = Vec::new();
        while let Some(pos) = input[..n].iter().position(|&t| t == s.mask) {
            let ids_t = Tensor::from_vec(input.clone(), (1, input.len()), &dev)?;
            let hidden = self.model.hidden_states(&ids_t, None, Mode::Eval)?;
            let logits = self
                .model
                .logits_at(&hidden, &Tensor::new(&[pos as u32], &dev)?)?
                .to_dtype(DType::F64)?;
            let lp = candle_nn::ops::log_softmax(&logits, 1)?.to_vec2::<f64>()?;
            let (best, l) = lp[0]
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.tok.is_special(*i as u32))
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, l)| (i as u32, *l))
                .ok_or_else(|| {
                    crate::engine::EngineError::Input(
                        "the tokenizer has no token that is not special".into(),
                    )
                })?;
            input[pos] = best;
            out.push((pos, self.tok.id_to_token(best), l.exp()));
        }
        Ok(out)
    }
}
