//! Masked-LM pretraining of BiGS (and its attention baseline) as a [`Task`] of the one training
//! loop (`session`): data, the step with gradient accumulation, and held-out evaluation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::config::{ConfigError, RunConfig};
use super::optim::{AdamW, clip_grads, lr_at, param_groups};
use super::session::{
    Beat, Due, Progress, Result, Session, Stepped, Task, TrainError, read_state, resume_point,
    task_accessors, write_checkpoint_common,
};
use crate::data::corpus::{load_corpus, split};
use crate::data::mlm::{DataCursor, IGNORE, Sampler, mask_batch, pack, step_rng};
use crate::data::tokenizer::TextTokenizer;
use crate::data::{DataError, resolve_data_path};
use crate::engine::bigs::{BigsForMaskedLm, Mode, build_bigs};
use crate::engine::weights::{load_varmap, read_checkpoint};
use crate::runs::{Metric, RunDir};

/// Purposes of the derived random streams (see [`step_rng`]).
const RNG_INIT: u64 = 1;
const RNG_MASK: u64 = 2;
const RNG_DROPOUT: u64 = 3;
const RNG_EVAL: u64 = 4;
const RNG_ORDER: u64 = 5;

/// What `state.json` in a checkpoint holds: everything besides weights and moments that an
/// exact resume needs. Random draws are derived from (seed, purpose, step), so the step *is*
/// the generators' state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    #[serde(flatten)]
    pub progress: Progress,
    pub tokens: u64,
    pub cursor: DataCursor,
    pub seed: u64,
    pub rng_scheme: String,
}

impl TrainState {
    /// The state of a run that has not taken a step.
    pub fn new(seed: u64) -> Self {
        Self {
            progress: Progress::new(),
            tokens: 0,
            cursor: DataCursor::default(),
            seed,
            rng_scheme: "ChaCha8(seed ^ purpose·φ, stream = step)".into(),
        }
    }
}

/// Tokenised, packed data of a run.
pub struct Prepared {
    pub tok: TextTokenizer,
    pub train: Vec<Vec<u32>>,
    pub val: Vec<Vec<u32>>,
}

/// Loads tokenizer and corpus and packs them; every input error surfaces here, before any run
/// directory exists.
pub fn prepare(cfg: &mut RunConfig, tokenizer: Option<&Path>) -> Result<Prepared> {
    cfg.validate()?;
    let tok_path = tokenizer
        .map(PathBuf::from)
        .unwrap_or_else(|| resolve_data_path(&cfg.data.tokenizer));
    let tok = TextTokenizer::load(&tok_path)?;
    if cfg.model.vocab_size != tok.vocab_size() {
        return Err(ConfigError::Field {
            field: "model.vocab_size".into(),
            msg: format!(
                "is {} but the tokenizer {} has {} tokens; set --set model.vocab_size={}",
                cfg.model.vocab_size,
                tok_path.display(),
                tok.vocab_size(),
                tok.vocab_size()
            ),
        }
        .into());
    }
    cfg.model.validate()?;
    let corpus = resolve_data_path(&cfg.data.corpus);
    let docs = load_corpus(&corpus)?;
    let n_docs = docs.len();
    let (train_docs, val_docs) = split(docs, cfg.data.val_fraction);
    if train_docs.is_empty() || val_docs.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: {n_docs} document(s) cannot be split into training and validation with \
             data.val_fraction = {}; add documents or change the fraction",
            corpus.display(),
            cfg.data.val_fraction
        ))
        .into());
    }
    let train = pack(&train_docs, &tok, cfg.data.seq_len)?;
    let val = pack(&val_docs, &tok, cfg.data.seq_len)?;
    Ok(Prepared { tok, train, val })
}

/// The seeded initial model of a run and its optimiser (a resume then loads a checkpoint over it).
fn fresh_model(cfg: &RunConfig, dev: &Device) -> Result<(BigsForMaskedLm, VarMap, AdamW)> {
    let mut rng = step_rng(cfg.run.seed, RNG_INIT, 0);
    let (model, varmap) = build_bigs(&cfg.model, DType::F32, dev, &mut rng)?;
    let opt = AdamW::new(
        param_groups(&varmap, &cfg.optim),
        cfg.optim.beta1,
        cfg.optim.beta2,
        cfg.optim.eps,
    )?;
    Ok((model, varmap, opt))
}

/// Held-out evaluation on fixed batches (same masks every time).
pub struct EvalResult {
    pub loss: f64,
    pub acc: f64,
    pub baseline_acc: f64,
}

pub fn evaluate(
    model: &BigsForMaskedLm,
    val: &[Vec<u32>],
    tok: &TextTokenizer,
    cfg: &RunConfig,
    dev: &Device,
    beat: &mut dyn FnMut(),
) -> Result<EvalResult> {
    let (b, l) = (cfg.train.batch_size, cfg.data.seq_len);
    let (mut loss_sum, mut correct, mut count) = (0.0, 0usize, 0usize);
    let mut freq: HashMap<u32, usize> = HashMap::new();
    for i in 0..cfg.train.eval_batches {
        beat();
        let seqs: Vec<&[u32]> = (0..b)
            .map(|j| val[(i * b + j) % val.len()].as_slice())
            .collect();
        let mut rng = step_rng(cfg.run.seed, RNG_EVAL, i as u64);
        let (ids, labels) = mask_batch(
            &seqs,
            tok.specials,
            cfg.model.vocab_size,
            cfg.data.masking,
            &mut rng,
        );
        let ids = Tensor::from_vec(ids, (b, l), dev)?;
        let labels_t = Tensor::from_vec(labels.clone(), (b, l), dev)?;
        let out = model.mlm_loss(&ids, None, &labels_t, Mode::Eval)?;
        let n = out.targets.dim(0)?;
        loss_sum += out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()? * n as f64;
        let pred: Vec<u32> = out.logits.argmax(1)?.to_vec1()?;
        let tgt: Vec<u32> = out.targets.to_vec1()?;
        correct += pred.iter().zip(&tgt).filter(|(p, t)| p == t).count();
        count += n;
        for t in labels.iter().filter(|v| **v != IGNORE) {
            *freq.entry(*t as u32).or_default() += 1;
        }
    }
    let top = freq.values().copied().max().unwrap_or(0);
    Ok(EvalResult {
        loss: loss_sum / count.max(1) as f64,
        acc: correct as f64 / count.max(1) as f64,
        baseline_acc: top as f64 / count.max(1) as f64,
    })
}

/// A BiGS (or BERT) masked-LM training session on one run directory.
pub type Trainer = Session<MlmTask>;

/// Masked-LM pretraining: the model, its optimiser, data and checkpoint state.
pub struct MlmTask {
    pub cfg: RunConfig,
    pub data: Prepared,
    pub model: BigsForMaskedLm,
    pub varmap: VarMap,
    pub opt: AdamW,
    pub state: TrainState,
    sampler: Sampler,
    dev: Device,
}

impl Trainer {
    /// A new run under `runs_dir` (input is checked before the directory is created).
    pub fn create(mut cfg: RunConfig, runs_dir: &Path) -> Result<Self> {
        let data = prepare(&mut cfg, None)?;
        let dev = Device::Cpu;
        let (model, varmap, opt) = fresh_model(&cfg, &dev)?;
        let run = RunDir::create(runs_dir, &cfg.run.name)?;
        let lock = match run.lock() {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run.path);
                return Err(e.into());
            }
        };
        let setup = (|| -> Result<()> {
            crate::runs::write_atomic(&run.config_path(), cfg.to_toml().as_bytes())?;
            data.tok.save(&run.tokenizer_path())?;
            Ok(())
        })();
        if let Err(e) = setup {
            let _ = std::fs::remove_dir_all(&run.path);
            return Err(e);
        }
        let state = TrainState::new(cfg.run.seed);
        let task = MlmTask::new(cfg, data, model, varmap, opt, state, dev);
        Ok(Session::new(run, lock, task))
    }

    /// Resumes a run from its latest complete checkpoint (a run without one starts from step
    /// 0); `sets` may override config keys (e.g. `train.steps`).
    pub fn resume(run: RunDir, sets: &[String]) -> Result<Self> {
        Self::resume_from(run, sets, None, &mut |_| {})
    }

    /// [`Trainer::resume`] from the newest checkpoint that loads (or `step-N` with `from_step`);
    /// `on_message` hears which checkpoints were skipped and why (also in `log.txt`).
    pub fn resume_from(
        run: RunDir,
        sets: &[String],
        from_step: Option<u64>,
        on_message: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        // one trainer per run: taken first, before anything is loaded
        let lock = run.lock()?;
        let mut cfg = RunConfig::from_toml_file(&run.config_path())?.with_overrides(sets)?;
        let tok_path = run.tokenizer_path();
        let data = prepare(&mut cfg, Some(&tok_path))?;
        let dev = Device::Cpu;
        let (model, varmap, mut opt) = fresh_model(&cfg, &dev)?;
        let (state, skipped) = resume_point(&run, from_step, |ck| {
            let weights = ck.join("model.safetensors");
            load_varmap(&varmap, &read_checkpoint(&weights, &dev)?, &weights)?;
            let state: TrainState = read_state(ck)?;
            opt.load(&ck.join("optimizer.safetensors"), state.progress.step)?;
            Ok(state)
        })?;
        for l in &skipped {
            run.log(l)?;
            on_message(l);
        }
        let state = match state {
            Some(s) => s,
            // a run stopped before its first checkpoint starts at step 0
            None if skipped.is_empty() => TrainState::new(cfg.run.seed),
            None => {
                return Err(TrainError::Other(format!(
                    "no checkpoint of run {} loads ({}); start it again",
                    run.path.display(),
                    skipped.join("; ")
                )));
            }
        };
        run.truncate_metrics(state.progress.step)?;
        run.truncate_kernels(state.progress.step)?;
        crate::runs::write_atomic(&run.config_path(), cfg.to_toml().as_bytes())?;
        let task = MlmTask::new(cfg, data, model, varmap, opt, state, dev);
        Ok(Session::new(run, lock, task))
    }
}

impl MlmTask {
    fn new(
        cfg: RunConfig,
        data: Prepared,
        model: BigsForMaskedLm,
        varmap: VarMap,
        opt: AdamW,
        state: TrainState,
        dev: Device,
    ) -> Self {
        let sampler = Sampler::new(data.train.len(), cfg.run.seed ^ RNG_ORDER);
        Self {
            cfg,
            data,
            model,
            varmap,
            opt,
            state,
            sampler,
            dev,
        }
    }
}

impl Task for MlmTask {
    task_accessors!();

    fn start_details(&self) -> (String, bool) {
        let (n_train, n_val) = self.data_sizes();
        (format!("{n_train} train / {n_val} val sequences"), false)
    }

    fn seen(&self) -> u64 {
        self.state.tokens
    }

    /// One optimiser step with gradient accumulation.
    fn train_step(&mut self) -> Result<Stepped> {
        let step = self.state.progress.step + 1;
        let (b, l) = (self.cfg.train.batch_size, self.cfg.data.seq_len);
        let accum = self.cfg.train.grad_accum;
        let mut sum: Option<Vec<Tensor>> = None;
        let mut loss_total = 0.0;
        for micro in 0..accum {
            let idx = self.sampler.next_batch(&mut self.state.cursor, b);
            let seqs: Vec<&[u32]> = idx.iter().map(|&i| self.data.train[i].as_slice()).collect();
            let stream = step * accum as u64 + micro as u64;
            let mut mrng = step_rng(self.cfg.run.seed, RNG_MASK, stream);
            let (ids, labels) = mask_batch(
                &seqs,
                self.data.tok.specials,
                self.cfg.model.vocab_size,
                self.cfg.data.masking,
                &mut mrng,
            );
            let ids = Tensor::from_vec(ids, (b, l), &self.dev)?;
            let labels = Tensor::from_vec(labels, (b, l), &self.dev)?;
            let mut drng = step_rng(self.cfg.run.seed, RNG_DROPOUT, stream);
            let grads = self
                .model
                .mlm_loss_grads(&ids, &labels, Mode::Train(&mut drng))?;
            let loss = grads.loss;
            loss_total += loss;
            if !loss.is_finite() {
                return Ok(Stepped {
                    loss,
                    grad_norm: f64::NAN,
                    lr: 0.0,
                });
            }
            let g: Vec<Tensor> = self
                .opt
                .params
                .iter()
                .map(|p| match grads.get(p.var.as_tensor()) {
                    Some(g) => Ok(g.clone()),
                    None => p.var.as_tensor().zeros_like(),
                })
                .collect::<candle_core::Result<_>>()?;
            sum = Some(match sum {
                None => g,
                Some(s) => s
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| a + b)
                    .collect::<candle_core::Result<_>>()?,
            });
        }
        // `grad_accum ≥ 1` is validated, so the loop ran.
        let mut grads = sum.unwrap_or_default();
        if accum > 1 {
            grads = grads
                .iter()
                .map(|g| g / accum as f64)
                .collect::<candle_core::Result<_>>()?;
        }
        let norm = clip_grads(&mut grads, self.cfg.optim.grad_clip)?;
        let o = &self.cfg.optim;
        let lr = lr_at(
            step,
            o.lr,
            o.warmup_steps,
            self.cfg.train.steps,
            o.min_lr_ratio,
        );
        if norm.is_finite() {
            self.opt.step(&grads, lr)?;
        }
        self.state.progress.step = step;
        self.state.tokens += (b * l * accum) as u64;
        Ok(Stepped {
            loss: loss_total / accum as f64,
            grad_norm: norm,
            lr,
        })
    }

    fn fill_counts(&self, m: &mut Metric, seen_since: u64, seconds: f64) {
        m.tokens = self.state.tokens;
        m.tokens_per_s = Some(seen_since as f64 / seconds);
    }

    fn evaluate(&mut self, m: &mut Metric, due: Due, beat: &mut Beat) -> Result<()> {
        if due.eval {
            let e = evaluate(
                &self.model,
                &self.data.val,
                &self.data.tok,
                &self.cfg,
                &self.dev,
                &mut || beat.tick(),
            )?;
            m.eval_loss = Some(e.loss);
            m.eval_acc = Some(e.acc);
            m.eval_baseline_acc = Some(e.baseline_acc);
        }
        Ok(())
    }

    fn write_checkpoint_files(&self, dir: &Path) -> std::result::Result<(), String> {
        let config = self.cfg.model.to_json();
        write_checkpoint_common(dir, &self.varmap, &self.opt, &self.state, &config)
    }
}
