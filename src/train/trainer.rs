//! The training loop: masked-LM pretraining of BiGS into a run directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::config::{ConfigError, RunConfig};
use super::optim::{AdamW, Param, clip_grads, lr_at};
use crate::data::DataError;
use crate::data::corpus::{load_corpus, split};
use crate::data::mlm::{DataCursor, IGNORE, Sampler, mask_batch, pack, step_rng};
use crate::data::tokenizer::TextTokenizer;
use crate::engine::EngineError;
use crate::engine::bigs::{BigsForMaskedLm, Mode, build_bigs};
use crate::engine::weights::{load_varmap, read_checkpoint};
use crate::runs::{Control, Metric, RunDir, RunError, RunState, Status, pid_alive, unix_now};

/// Purposes of the derived random streams (see [`step_rng`]).
const RNG_INIT: u64 = 1;
const RNG_MASK: u64 = 2;
const RNG_DROPOUT: u64 = 3;
const RNG_EVAL: u64 = 4;
const RNG_ORDER: u64 = 5;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("cannot write checkpoint {path}: {msg}; the previous checkpoint is intact")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{0}")]
    Other(String),
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        TrainError::Engine(e.into())
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// What `state.json` in a checkpoint holds: everything besides weights and moments that an
/// exact resume needs. Random draws are derived from (seed, purpose, step), so the step *is*
/// the generators' state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub step: u64,
    pub tokens: u64,
    pub wall_s: f64,
    pub cursor: DataCursor,
    pub seed: u64,
    pub rng_scheme: String,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<u64>,
    pub last_eval_loss: Option<f64>,
}

impl TrainState {
    /// The state of a run that has not taken a step.
    pub fn new(seed: u64) -> Self {
        Self {
            step: 0,
            tokens: 0,
            wall_s: 0.0,
            cursor: DataCursor::default(),
            seed,
            rng_scheme: "ChaCha8(seed ^ purpose·φ, stream = step)".into(),
            best_eval_loss: None,
            best_step: None,
            last_eval_loss: None,
        }
    }
}

/// How a training session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    Stopped,
    Diverged,
}

/// What the loop reports as it goes (for progress bars; the run directory has it all too).
pub enum Event<'a> {
    Started {
        run: &'a RunDir,
        start_step: u64,
        total_steps: u64,
        train_sequences: usize,
        val_sequences: usize,
        parameters: usize,
    },
    Step(&'a Metric),
    Checkpoint(u64),
    Message(&'a str),
}

/// Looks for a relative data path in the working directory, then in the source tree (so the
/// presets work from any directory of a source checkout).
pub fn resolve_data_path(p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.into();
    }
    let alt = Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    if alt.exists() { alt } else { p.into() }
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

/// Parameter groups: no decay on biases and LayerNorms; the SSM's A and step size (BiGS:
/// `A_re`, `A_im`, `log_step`; s4: `log_A_real`, `A_imag`, `log_dt`) with their own lr scale and
/// (optionally) no decay.
pub(crate) fn param_groups(varmap: &VarMap, o: &super::config::OptimSection) -> Vec<Param> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let leaf = name.rsplit('.').next().unwrap_or(name);
            let ssm = matches!(
                leaf,
                "A_re" | "A_im" | "log_step" | "log_A_real" | "A_imag" | "log_dt"
            );
            let no_decay = leaf == "bias" || name.contains("LayerNorm");
            let wd = if no_decay || (ssm && !o.ssm_weight_decay) {
                0.0
            } else {
                o.weight_decay
            };
            Param {
                name: name.clone(),
                var: data[name].clone(),
                weight_decay: wd,
                lr_scale: if ssm { o.ssm_lr_scale } else { 1.0 },
            }
        })
        .collect()
}

/// Writes checkpoint `step-N/` of a run atomically: `write` fills a temporary folder, which is
/// renamed into place only when complete (an older `step-N/` is replaced).
pub(crate) fn write_checkpoint(
    run: &RunDir,
    step: u64,
    write: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> Result<PathBuf> {
    let dst = run.checkpoint_path(step);
    let tmp = run.path.join(format!("step-{step}.tmp"));
    let res = (|| {
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        write(&tmp)?;
        if dst.exists() {
            std::fs::remove_dir_all(&dst).map_err(|e| e.to_string())?;
        }
        std::fs::rename(&tmp, &dst).map_err(|e| e.to_string())
    })();
    if let Err(msg) = res {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(TrainError::Checkpoint { path: dst, msg });
    }
    Ok(dst)
}

/// Deletes all but the newest `keep` checkpoints, never the best one.
pub(crate) fn prune_checkpoints(run: &RunDir, keep: usize, best_step: Option<u64>) {
    let all = run.checkpoints();
    let n = all.len();
    for (i, (step, path)) in all.into_iter().enumerate() {
        if i + keep < n && Some(step) != best_step {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// What the step loop needs of a training session, BiGS or diffusion.
pub(crate) trait Session {
    fn run_dir(&self) -> &RunDir;
    fn status_mut(&mut self) -> &mut Status;
    fn current_step(&self) -> u64;
    fn save_checkpoint(&mut self) -> Result<PathBuf>;

    fn set_status(&mut self, state: RunState, message: Option<String>) -> Result<()> {
        let step = self.current_step();
        let s = self.status_mut();
        s.state = state;
        s.heartbeat = unix_now();
        s.step = step;
        s.message = message;
        let s = s.clone();
        self.run_dir().write_status(&s)?;
        Ok(())
    }
}

/// Refuses to resume a run whose trainer is alive (another process, fresh heartbeat).
pub(crate) fn ensure_not_running(run: &RunDir) -> Result<()> {
    if let Ok(s) = run.read_status()
        && s.state == RunState::Running
        && s.pid != std::process::id()
        && pid_alive(s.pid)
        && unix_now() - s.heartbeat < crate::runs::HEARTBEAT_STALE_S
    {
        return Err(TrainError::Other(format!(
            "run {} is still running (pid {}); stop it first",
            run.path.display(),
            s.pid
        )));
    }
    Ok(())
}

/// A session's result, with an error also logged and recorded as state `failed`.
pub(crate) fn record_failure<T>(s: &mut dyn Session, res: Result<T>) -> Result<T> {
    if let Err(e) = &res {
        let _ = s.run_dir().log(&format!("error: {e}"));
        let _ = s.set_status(RunState::Failed, Some(e.to_string()));
    }
    res
}

/// The end of a step of any session: control requests (stop / checkpoint), the periodic and
/// final checkpoint, stopping, and the heartbeat. `Some(outcome)` when the session ends here.
#[allow(clippy::too_many_arguments)]
pub(crate) fn end_of_step(
    s: &mut dyn Session,
    total: u64,
    checkpoint_every: u64,
    logged: bool,
    stop: &AtomicBool,
    stop_at: Option<u64>,
    last_beat: &mut Instant,
    on_event: &mut dyn FnMut(Event),
) -> Result<Option<Outcome>> {
    let step = s.current_step();
    let mut checkpoint = step.is_multiple_of(checkpoint_every) || step == total;
    let mut stopping = stop.load(Ordering::SeqCst) || stop_at == Some(step);
    match s.run_dir().take_request() {
        Some(Control::Stop) => stopping = true,
        Some(Control::Checkpoint) => checkpoint = true,
        None => {}
    }
    if checkpoint || stopping {
        s.save_checkpoint()?;
        on_event(Event::Checkpoint(step));
    }
    if stopping && step < total {
        let msg = format!("stopped at step {step} (checkpoint step-{step})");
        s.run_dir().log(&msg)?;
        s.set_status(RunState::Stopped, Some(msg))?;
        return Ok(Some(Outcome::Stopped));
    }
    if logged || checkpoint || last_beat.elapsed().as_secs_f64() > 5.0 {
        s.set_status(RunState::Running, None)?;
        *last_beat = Instant::now();
    }
    Ok(None)
}

/// The message of a run that diverged at `step`.
pub(crate) fn diverged_message(run: &RunDir, step: u64, loss: f64, norm: f64) -> String {
    let last = run
        .latest_checkpoint()
        .map(|(s, _)| format!("step-{s}"))
        .unwrap_or_else(|| "none".into());
    format!(
        "training diverged at step {step}: loss {loss}, gradient norm {norm}; \
         the last good checkpoint ({last}) is kept. Lower optim.lr or raise \
         optim.warmup_steps, then start again or --resume"
    )
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
) -> Result<EvalResult> {
    let (b, l) = (cfg.train.batch_size, cfg.data.seq_len);
    let (mut loss_sum, mut correct, mut count) = (0.0, 0usize, 0usize);
    let mut freq: HashMap<u32, usize> = HashMap::new();
    for i in 0..cfg.train.eval_batches {
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

impl Session for Trainer {
    fn run_dir(&self) -> &RunDir {
        &self.run
    }
    fn status_mut(&mut self) -> &mut Status {
        &mut self.status
    }
    fn current_step(&self) -> u64 {
        self.state.step
    }
    fn save_checkpoint(&mut self) -> Result<PathBuf> {
        Trainer::save_checkpoint(self)
    }
}

/// A training session on one run directory.
pub struct Trainer {
    pub cfg: RunConfig,
    pub run: RunDir,
    pub data: Prepared,
    pub model: BigsForMaskedLm,
    pub varmap: VarMap,
    pub opt: AdamW,
    pub state: TrainState,
    sampler: Sampler,
    dev: Device,
    status: Status,
}

impl Trainer {
    /// A new run under `runs_dir` (input is checked before the directory is created).
    pub fn create(mut cfg: RunConfig, runs_dir: &Path) -> Result<Self> {
        let data = prepare(&mut cfg, None)?;
        let dev = Device::Cpu;
        let (model, varmap, opt) = fresh_model(&cfg, &dev)?;
        let run = RunDir::create(runs_dir, &cfg.run.name)?;
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
        Ok(Self::assemble(
            cfg, run, data, model, varmap, opt, state, dev,
        ))
    }

    /// Resumes a run from its latest complete checkpoint; `sets` may override config keys
    /// (e.g. `train.steps`).
    pub fn resume(run: RunDir, sets: &[String]) -> Result<Self> {
        ensure_not_running(&run)?;
        let mut cfg = RunConfig::from_toml_file(&run.config_path())?.with_overrides(sets)?;
        let tok_path = run.tokenizer_path();
        let data = prepare(&mut cfg, Some(&tok_path))?;
        let dev = Device::Cpu;
        let (model, varmap, mut opt) = fresh_model(&cfg, &dev)?;
        let state = match run.latest_checkpoint() {
            Some((_, ck)) => {
                let weights = ck.join("model.safetensors");
                load_varmap(&varmap, &read_checkpoint(&weights, &dev)?, &weights)?;
                let sp = ck.join("state.json");
                let text = std::fs::read_to_string(&sp).map_err(|e| RunError::Io {
                    path: sp.clone(),
                    source: e,
                })?;
                let state: TrainState =
                    serde_json::from_str(&text).map_err(|e| RunError::Invalid {
                        path: sp.clone(),
                        msg: e.to_string(),
                    })?;
                opt.load(&ck.join("optimizer.safetensors"), state.step)?;
                state
            }
            None => TrainState::new(cfg.run.seed),
        };
        run.truncate_metrics(state.step)?;
        crate::runs::write_atomic(&run.config_path(), cfg.to_toml().as_bytes())?;
        Ok(Self::assemble(
            cfg, run, data, model, varmap, opt, state, dev,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: RunConfig,
        run: RunDir,
        data: Prepared,
        model: BigsForMaskedLm,
        varmap: VarMap,
        opt: AdamW,
        state: TrainState,
        dev: Device,
    ) -> Self {
        let sampler = Sampler::new(data.train.len(), cfg.run.seed ^ RNG_ORDER);
        let status = Status::starting(
            &run,
            cfg.train.steps,
            &cfg.run.model,
            state.step,
            state.best_step,
        );
        Self {
            cfg,
            run,
            data,
            model,
            varmap,
            opt,
            state,
            sampler,
            dev,
            status,
        }
    }

    /// One optimiser step (with gradient accumulation); returns (loss, grad norm, lr).
    fn train_step(&mut self) -> Result<(f64, f64, f64)> {
        let step = self.state.step + 1;
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
            let out = self
                .model
                .mlm_loss(&ids, None, &labels, Mode::Train(&mut drng))?;
            let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            loss_total += loss;
            if !loss.is_finite() {
                return Ok((loss, f64::NAN, 0.0));
            }
            let grads = out.loss.backward()?;
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
        let mut grads = sum.expect("grad_accum ≥ 1");
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
        self.state.step = step;
        self.state.tokens += (b * l * accum) as u64;
        Ok((loss_total / accum as f64, norm, lr))
    }

    /// Writes `step-N/` atomically and prunes old checkpoints (keeping the best).
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let step = self.state.step;
        // Best by eval loss: the eval of this step, if any, decides.
        if let Some(l) = self.state.last_eval_loss
            && self.state.best_eval_loss.is_none_or(|b| l < b)
        {
            self.state.best_eval_loss = Some(l);
            self.state.best_step = Some(step);
        }
        let state = serde_json::to_string_pretty(&self.state).expect("state");
        let model_json = self.cfg.model.to_json();
        let dst = write_checkpoint(&self.run, step, |tmp| {
            self.varmap
                .save(tmp.join("model.safetensors"))
                .map_err(|e| e.to_string())?;
            self.opt
                .save(&tmp.join("optimizer.safetensors"))
                .map_err(|e| e.to_string())?;
            std::fs::write(tmp.join("state.json"), &state).map_err(|e| e.to_string())?;
            std::fs::write(tmp.join("config.json"), &model_json).map_err(|e| e.to_string())
        })?;
        prune_checkpoints(
            &self.run,
            self.cfg.train.keep_checkpoints,
            self.state.best_step,
        );
        self.status.last_checkpoint = Some(format!("step-{step}"));
        self.status.best_checkpoint = self.state.best_step.map(|s| format!("step-{s}"));
        Ok(dst)
    }

    /// Runs until the configured number of steps, `stop_at`, a stop request, or divergence.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        stop_at: Option<u64>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Outcome> {
        let res = self.run_inner(stop, stop_at, on_event);
        record_failure(self, res)
    }

    fn run_inner(
        &mut self,
        stop: &AtomicBool,
        stop_at: Option<u64>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Outcome> {
        let total = self.cfg.train.steps;
        self.set_status(RunState::Running, None)?;
        let params: usize = self.opt.params.iter().map(|p| p.var.elem_count()).sum();
        on_event(Event::Started {
            run: &self.run,
            start_step: self.state.step,
            total_steps: total,
            train_sequences: self.data.train.len(),
            val_sequences: self.data.val.len(),
            parameters: params,
        });
        self.run.log(&format!(
            "session start: step {} of {total}, pid {}, {} parameters, {} train / {} val sequences",
            self.state.step,
            std::process::id(),
            params,
            self.data.train.len(),
            self.data.val.len()
        ))?;
        let session_start = Instant::now();
        let wall0 = self.state.wall_s;
        let mut last_beat = Instant::now();
        let (mut window_t, mut window_tokens) = (Instant::now(), self.state.tokens);
        while self.state.step < total {
            let (loss, norm, lr) = self.train_step()?;
            self.state.wall_s = wall0 + session_start.elapsed().as_secs_f64();
            let step = self.state.step;
            if !loss.is_finite() || !norm.is_finite() {
                let msg = diverged_message(&self.run, step, loss, norm);
                self.run.log(&msg)?;
                self.set_status(RunState::Diverged, Some(msg.clone()))?;
                on_event(Event::Message(&msg));
                return Ok(Outcome::Diverged);
            }
            let is_eval = step.is_multiple_of(self.cfg.train.eval_every) || step == total;
            let is_log = step.is_multiple_of(self.cfg.train.log_every) || is_eval;
            if is_log {
                let dt = window_t.elapsed().as_secs_f64().max(1e-9);
                let mut m = Metric {
                    step,
                    tokens: self.state.tokens,
                    wall_s: self.state.wall_s,
                    lr: Some(lr),
                    loss: Some(loss),
                    grad_norm: Some(norm),
                    tokens_per_s: Some((self.state.tokens - window_tokens) as f64 / dt),
                    ..Default::default()
                };
                if is_eval {
                    let e = evaluate(
                        &self.model,
                        &self.data.val,
                        &self.data.tok,
                        &self.cfg,
                        &self.dev,
                    )?;
                    m.eval_loss = Some(e.loss);
                    m.eval_acc = Some(e.acc);
                    m.eval_baseline_acc = Some(e.baseline_acc);
                    self.state.last_eval_loss = Some(e.loss);
                }
                self.run.append_metric(&m)?;
                self.run.log(&plain_line(&m, total))?;
                on_event(Event::Step(&m));
                window_t = Instant::now();
                window_tokens = self.state.tokens;
            }
            let every = self.cfg.train.checkpoint_every;
            if let Some(o) = end_of_step(
                self,
                total,
                every,
                is_log,
                stop,
                stop_at,
                &mut last_beat,
                on_event,
            )? {
                return Ok(o);
            }
        }
        let msg = format!("finished {total} steps");
        self.run.log(&msg)?;
        self.set_status(RunState::Finished, Some(msg))?;
        Ok(Outcome::Finished)
    }
}

/// The plain progress line (log.txt, and stdout when it is not a terminal).
pub fn plain_line(m: &Metric, total: u64) -> String {
    let mut s = format!(
        "step {}/{} tokens {} loss {:.4} lr {:.2e} gnorm {:.3} tok/s {:.0}",
        m.step,
        total,
        m.tokens,
        m.loss.unwrap_or(f64::NAN),
        m.lr.unwrap_or(0.0),
        m.grad_norm.unwrap_or(f64::NAN),
        m.tokens_per_s.unwrap_or(0.0)
    );
    if let Some(ips) = m.images_per_s {
        s += &format!(" img/s {ips:.1}");
    }
    match (m.eval_loss, m.eval_acc, m.eval_baseline_acc) {
        (Some(l), Some(a), Some(b)) => {
            s += &format!(
                " | eval loss {l:.4} acc {:.2}% (most-frequent baseline {:.2}%)",
                a * 100.0,
                b * 100.0
            )
        }
        (Some(l), _, _) => s += &format!(" | eval loss {l:.4}"),
        _ => {}
    }
    s
}
