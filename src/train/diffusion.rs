//! Training DiffuSSM: DDPM ε-prediction on an image set into a run directory, with EMA weights,
//! fixed-seed sample grids (and their denoising trajectories) every `train.sample_every` steps,
//! and the classification accuracy score (CAS) of guided samples as an eval metric.
//!
//! Beside the files of every run (see [`crate::runs`]), a diffusion run holds
//! `classifier.safetensors` + `classifier.json` (the CAS classifier, trained on the run's training
//! images when the run is created), `step-N/ema.safetensors` (EMA weights, the same names as
//! `model.safetensors`) and `samples/` (see [`crate::runs::samples`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::config::{ConfigError, OptimSection, RunSection, load_toml, one_line, overrides};
use super::optim::{AdamW, Ema, clip_grads, lr_at};
use super::parallel::{resolve_shards, sharded_grads};
use super::trainer::{
    Event, Outcome, Result, Session, TrainError, diverged_message, end_of_step, ensure_not_running,
    param_groups, record_failure, resolve_data_path, write_checkpoint,
};
use crate::data::images::{ImageSet, load_images, save_grid_png};
use crate::data::mlm::step_rng;
use crate::engine::classifier::{Classifier, ClassifierConfig, build_classifier};
use crate::engine::diffusion::{
    DiffusionConfig, NoiseSchedule, SampleOptions, SamplerKind, sample,
};
use crate::engine::diffussm::{Diffussm, DiffussmConfig, build_diffussm};
use crate::engine::init::normal;
use crate::engine::weights::{load_varmap, read_checkpoint};
use crate::runs::samples::{SampleMeta, TrajectoryFrame, publish, samples_dir};
use crate::runs::{Metric, RunDir, RunError, RunState, Status};

const RNG_INIT: u64 = 11;
const RNG_NOISE: u64 = 12;
const RNG_EVAL: u64 = 13;
const RNG_ORDER: u64 = 14;
const RNG_CLASSIFIER: u64 = 15;
const RNG_CAS: u64 = 16;

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

/// A noised training or evaluation batch.
struct Noised {
    xt: Tensor,
    eps: Tensor,
    t: Vec<f64>,
    y: Vec<u32>,
}

impl Noised {
    /// The rows `r`'s share of the batch's ε-MSE: their squared error over the batch's
    /// element count (the shares of all rows add up to the mean).
    fn shard_loss(
        &self,
        model: &Diffussm,
        r: std::ops::Range<usize>,
    ) -> crate::engine::Result<Tensor> {
        let total = self.eps.elem_count() as f64;
        let (start, len) = (r.start, r.len());
        let pred = model.forward(
            &self.xt.narrow(0, start, len)?,
            &self.t[r.clone()],
            &self.y[r],
        )?;
        Ok(((pred - self.eps.narrow(0, start, len)?)?.sqr()?.sum_all()? / total)?)
    }
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
        toml::to_string_pretty(self).expect("config serialises")
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
        if self.run.model != "diffussm" {
            return f(
                "run.model",
                "must be `diffussm` in a diffusion run configuration",
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
        NoiseSchedule::new(&self.diffusion).map_err(|e| ConfigError::Field {
            field: "diffusion".into(),
            msg: e.to_string(),
        })?;
        Ok(())
    }
}

/// Training and held-out images of a run.
pub struct ImageData {
    pub train: ImageSet,
    pub val: ImageSet,
}

/// Loads and splits the images; checks they fit the model. Every input error surfaces here,
/// before a run directory exists.
pub fn prepare_images(cfg: &DiffusionRunConfig) -> Result<ImageData> {
    cfg.validate()?;
    let path = resolve_data_path(&cfg.data.images);
    let m = &cfg.model;
    let set = load_images(&path, Some((m.image_height, m.image_width)))?;
    if set.channels != m.in_channels {
        return Err(ConfigError::Field {
            field: "model.in_channels".into(),
            msg: format!(
                "is {} but {} has {} channel(s); set --set model.in_channels={}",
                m.in_channels,
                path.display(),
                set.channels,
                set.channels
            ),
        }
        .into());
    }
    if set.num_classes() > m.num_classes {
        return Err(ConfigError::Field {
            field: "model.num_classes".into(),
            msg: format!(
                "is {} but {} has {} classes; set --set model.num_classes={}",
                m.num_classes,
                path.display(),
                set.num_classes(),
                set.num_classes()
            ),
        }
        .into());
    }
    // Deterministic split by index hash (independent of the seed, so runs compare).
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for i in 0..set.len() {
        let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
        if (h as f64 / (1u64 << 53) as f64) < cfg.data.val_fraction {
            va.push(i);
        } else {
            tr.push(i);
        }
    }
    if tr.is_empty() || va.is_empty() {
        return Err(TrainError::Other(format!(
            "{}: {} image(s) cannot be split into training and validation with data.val_fraction = {}",
            path.display(),
            set.len(),
            cfg.data.val_fraction
        )));
    }
    Ok(ImageData {
        train: set.subset(&tr),
        val: set.subset(&va),
    })
}

/// `state.json` of a diffusion checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionState {
    pub step: u64,
    pub images: u64,
    pub wall_s: f64,
    pub seed: u64,
    /// Position in the current epoch's permutation.
    pub epoch: u64,
    pub offset: usize,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<u64>,
    pub last_eval_loss: Option<f64>,
}

/// `classifier.json`: how the CAS classifier was made and how good it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierInfo {
    pub config: ClassifierConfig,
    pub train_images: usize,
    pub test_images: usize,
    pub test_accuracy: f64,
    pub epochs: usize,
}

/// Trains the CAS classifier on `train`, reports its accuracy on `test`.
pub fn train_classifier(
    train: &ImageSet,
    test: &ImageSet,
    num_classes: usize,
    sec: &ClassifierSection,
    seed: u64,
    dev: &Device,
) -> Result<(Classifier, VarMap, ClassifierInfo)> {
    let cfg = ClassifierConfig {
        input_size: train.channels * train.h * train.w,
        hidden: sec.hidden.clone(),
        num_classes,
    };
    let mut rng = step_rng(seed, RNG_CLASSIFIER, 0);
    let (model, varmap) = build_classifier(&cfg, dev, &mut rng)?;
    let params = varmap
        .all_vars()
        .into_iter()
        .enumerate()
        .map(|(i, var)| super::optim::Param {
            name: format!("p{i}"),
            var,
            weight_decay: 0.0,
            lr_scale: 1.0,
        })
        .collect();
    let mut opt = AdamW::new(params, 0.9, 0.999, 1e-8)?;
    let n = train.len();
    let steps_per_epoch = n.div_ceil(sec.batch_size);
    let total = (steps_per_epoch * sec.epochs) as u64;
    let mut step = 0u64;
    for epoch in 0..sec.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(
            &mut order,
            &mut step_rng(seed, RNG_CLASSIFIER, 1 + epoch as u64),
        );
        for chunk in order.chunks(sec.batch_size) {
            step += 1;
            let (x, y) = train.batch(chunk, None, dev)?;
            let y = Tensor::from_vec(y, chunk.len(), dev)?;
            let loss = crate::engine::fused::cross_entropy(&model.forward(&x)?, &y)?;
            let grads = loss.backward()?;
            let g: Vec<Tensor> = opt
                .params
                .iter()
                .map(|p| {
                    grads
                        .get(p.var.as_tensor())
                        .cloned()
                        .map_or_else(|| p.var.as_tensor().zeros_like(), Ok)
                })
                .collect::<candle_core::Result<_>>()?;
            opt.step(&g, lr_at(step, sec.lr, 0, total, 0.05))?;
        }
    }
    let test_accuracy = accuracy(&model, test, dev)?;
    let info = ClassifierInfo {
        config: cfg,
        train_images: n,
        test_images: test.len(),
        test_accuracy,
        epochs: sec.epochs,
    };
    Ok((model, varmap, info))
}

fn accuracy(model: &Classifier, set: &ImageSet, dev: &Device) -> Result<f64> {
    let mut correct = 0usize;
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(500) {
        let (x, y) = set.batch(chunk, None, dev)?;
        let p = model.predict(&x)?;
        correct += p.iter().zip(&y).filter(|(a, b)| a == b).count();
    }
    Ok(correct as f64 / set.len().max(1) as f64)
}

/// Fisher–Yates with a seeded generator.
fn shuffle(v: &mut [usize], rng: &mut impl Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

/// Loads a run's CAS classifier.
pub fn load_classifier(run: &Path, dev: &Device) -> Result<(Classifier, ClassifierInfo)> {
    let info_path = run.join("classifier.json");
    let text = std::fs::read_to_string(&info_path).map_err(|e| RunError::Io {
        path: info_path.clone(),
        source: e,
    })?;
    let info: ClassifierInfo = serde_json::from_str(&text).map_err(|e| RunError::Invalid {
        path: info_path.clone(),
        msg: e.to_string(),
    })?;
    let varmap = VarMap::new();
    let model = Classifier::new(
        &info.config,
        VarBuilder::from_varmap(&varmap, DType::F32, dev),
    )?;
    let w = run.join("classifier.safetensors");
    load_varmap(&varmap, &read_checkpoint(&w, dev)?, &w)?;
    Ok((model, info))
}

/// The class of each of `n` samples spread evenly over the classes (0, 1, …, C−1, 0, …).
pub fn balanced_classes(n: usize, classes: usize) -> Vec<Option<u32>> {
    (0..n).map(|i| Some((i % classes) as u32)).collect()
}

/// CAS: fraction of guided samples classified as their requested class, with the per-class
/// fractions.
pub fn classification_accuracy_score(
    model: &Diffussm,
    sched: &NoiseSchedule,
    classifier: &Classifier,
    n: usize,
    opts: &SampleOptions,
    seed: u64,
) -> Result<(f64, Vec<f64>)> {
    let classes = balanced_classes(n, model.cfg.num_classes);
    let mut rng = step_rng(seed, RNG_CAS, 0);
    let mut hits = vec![(0usize, 0usize); model.cfg.num_classes];
    for chunk in classes.chunks(50) {
        let s = sample(model, sched, chunk, opts, &mut rng, &mut |_, _| true)?;
        let pred = classifier.predict(&s.images)?;
        for (c, p) in chunk.iter().zip(pred) {
            let c = c.expect("conditional") as usize;
            hits[c].1 += 1;
            if p as usize == c {
                hits[c].0 += 1;
            }
        }
    }
    let total: usize = hits.iter().map(|h| h.0).sum();
    let per = hits
        .iter()
        .map(|&(a, b)| a as f64 / b.max(1) as f64)
        .collect();
    Ok((total as f64 / n.max(1) as f64, per))
}

/// Draws a sample grid (rows × classes, class = column) and writes it as a sample folder:
/// `grid.png`, `traj-TTTT.png` and `meta.json`, published atomically at `dst`.
#[allow(clippy::too_many_arguments)]
pub fn write_sample_folder(
    model: &Diffussm,
    sched: &NoiseSchedule,
    dst: &Path,
    step: u64,
    classes: &[Option<u32>],
    cols: usize,
    opts: &SampleOptions,
    seed: u64,
    ema: bool,
    class_names: &[String],
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<SampleMeta> {
    let t0 = Instant::now();
    let mut rng = step_rng(seed, RNG_NOISE, u64::MAX);
    let s = sample(model, sched, classes, opts, &mut rng, progress)?;
    let c = &model.cfg;
    let (n, ch, h, w) = (classes.len(), c.in_channels, c.image_height, c.image_width);
    let rows = n.div_ceil(cols);
    let tmp = dst.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| RunError::Io {
        path: tmp.clone(),
        source: e,
    })?;
    let save = |name: &str, x: &Tensor| -> Result<()> {
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        save_grid_png(&tmp.join(name), &v, n, ch, h, w, rows, cols, 1)?;
        Ok(())
    };
    save("grid.png", &s.images)?;
    let mut trajectory = Vec::new();
    for (t, x) in &s.trajectory {
        let file = format!("traj-{t:04}.png");
        // x_t is roughly N(0, 1) early on: show it scaled into [−1, 1] as it is.
        save(&file, &x.clamp(-1.0, 1.0)?)?;
        trajectory.push(TrajectoryFrame { t: *t as u32, file });
    }
    let meta = SampleMeta {
        step,
        seed,
        classes: classes.to_vec(),
        class_names: class_names.to_vec(),
        rows,
        cols,
        tile_h: h,
        tile_w: w,
        channels: ch,
        sampler: opts.sampler.name().into(),
        sampling_steps: opts.steps,
        guidance: opts.guidance,
        ema,
        grid: "grid.png".into(),
        trajectory,
        seconds: t0.elapsed().as_secs_f64(),
    };
    crate::runs::write_atomic(
        &tmp.join("meta.json"),
        serde_json::to_string_pretty(&meta)
            .expect("meta")
            .as_bytes(),
    )?;
    publish(&tmp, dst)?;
    Ok(meta)
}

impl Session for DiffusionTrainer {
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
        DiffusionTrainer::save_checkpoint(self)
    }
}

/// A training session of a diffusion run.
pub struct DiffusionTrainer {
    pub cfg: DiffusionRunConfig,
    pub run: RunDir,
    pub data: ImageData,
    pub model: Diffussm,
    pub varmap: VarMap,
    pub opt: AdamW,
    pub ema: Ema,
    /// A second model whose variables receive the EMA weights before sampling.
    ema_model: Diffussm,
    ema_varmap: VarMap,
    pub state: DiffusionState,
    sched: NoiseSchedule,
    classifier: Classifier,
    pub classifier_info: ClassifierInfo,
    dev: Device,
    status: Status,
}

fn fresh(
    cfg: &DiffusionRunConfig,
    dev: &Device,
) -> Result<(Diffussm, VarMap, AdamW, Diffussm, VarMap)> {
    let mut rng = step_rng(cfg.run.seed, RNG_INIT, 0);
    let (model, varmap) = build_diffussm(&cfg.model, DType::F32, dev, &mut rng)?;
    let opt = AdamW::new(
        param_groups(&varmap, &cfg.optim),
        cfg.optim.beta1,
        cfg.optim.beta2,
        cfg.optim.eps,
    )?;
    let ema_varmap = VarMap::new();
    let ema_model = Diffussm::new(
        &cfg.model,
        VarBuilder::from_varmap(&ema_varmap, DType::F32, dev),
    )?;
    Ok((model, varmap, opt, ema_model, ema_varmap))
}

impl DiffusionTrainer {
    /// A new run under `runs_dir`: input checked, classifier trained, then the directory made.
    pub fn create(
        cfg: DiffusionRunConfig,
        runs_dir: &Path,
        on_message: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        let data = prepare_images(&cfg)?;
        let dev = Device::Cpu;
        let (model, varmap, opt, ema_model, ema_varmap) = fresh(&cfg, &dev)?;
        on_message(&format!(
            "training the CAS classifier on {} images ({} epochs)…",
            data.train.len(),
            cfg.classifier.epochs
        ));
        let (classifier, cvm, info) = train_classifier(
            &data.train,
            &data.val,
            cfg.model.num_classes,
            &cfg.classifier,
            cfg.run.seed,
            &dev,
        )?;
        let run = RunDir::create(runs_dir, &cfg.run.name)?;
        let setup = (|| -> Result<()> {
            crate::runs::write_atomic(&run.config_path(), cfg.to_toml().as_bytes())?;
            cvm.save(run.path.join("classifier.safetensors"))?;
            crate::runs::write_atomic(
                &run.path.join("classifier.json"),
                serde_json::to_string_pretty(&info)
                    .expect("info")
                    .as_bytes(),
            )?;
            run.log(&format!(
                "CAS classifier: MLP {:?}, {} epochs on {} training images, test accuracy {:.2}% on {} held-out images",
                info.config.hidden,
                info.epochs,
                info.train_images,
                info.test_accuracy * 100.0,
                info.test_images
            ))?;
            Ok(())
        })();
        if let Err(e) = setup {
            let _ = std::fs::remove_dir_all(&run.path);
            return Err(e);
        }
        let ema = Ema::new(&opt.params, cfg.train.ema_decay)?;
        let state = DiffusionState {
            step: 0,
            images: 0,
            wall_s: 0.0,
            seed: cfg.run.seed,
            epoch: 0,
            offset: 0,
            best_eval_loss: None,
            best_step: None,
            last_eval_loss: None,
        };
        Ok(Self::assemble(
            cfg, run, data, model, varmap, opt, ema, ema_model, ema_varmap, state, classifier,
            info, dev,
        ))
    }

    /// Resumes from the latest complete checkpoint (`sets` may override keys, e.g. train.steps).
    pub fn resume(run: RunDir, sets: &[String]) -> Result<Self> {
        ensure_not_running(&run)?;
        let cfg = DiffusionRunConfig::from_toml_file(&run.config_path())?.with_overrides(sets)?;
        let data = prepare_images(&cfg)?;
        let dev = Device::Cpu;
        let (model, varmap, mut opt, ema_model, ema_varmap) = fresh(&cfg, &dev)?;
        let (classifier, info) = load_classifier(&run.path, &dev)?;
        let mut ema = Ema::new(&opt.params, cfg.train.ema_decay)?;
        let state = match run.latest_checkpoint() {
            Some((_, ck)) => {
                let weights = ck.join("model.safetensors");
                load_varmap(&varmap, &read_checkpoint(&weights, &dev)?, &weights)?;
                ema.load(&ck.join("ema.safetensors"), &opt.params)?;
                let sp = ck.join("state.json");
                let text = std::fs::read_to_string(&sp).map_err(|e| RunError::Io {
                    path: sp.clone(),
                    source: e,
                })?;
                let state: DiffusionState =
                    serde_json::from_str(&text).map_err(|e| RunError::Invalid {
                        path: sp.clone(),
                        msg: e.to_string(),
                    })?;
                opt.load(&ck.join("optimizer.safetensors"), state.step)?;
                ema.updates = state.step;
                state
            }
            None => {
                return Err(TrainError::Other(format!(
                    "run {} has no checkpoint to resume from; start it again",
                    run.path.display()
                )));
            }
        };
        run.truncate_metrics(state.step)?;
        crate::runs::write_atomic(&run.config_path(), cfg.to_toml().as_bytes())?;
        Ok(Self::assemble(
            cfg, run, data, model, varmap, opt, ema, ema_model, ema_varmap, state, classifier,
            info, dev,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: DiffusionRunConfig,
        run: RunDir,
        data: ImageData,
        model: Diffussm,
        varmap: VarMap,
        opt: AdamW,
        ema: Ema,
        ema_model: Diffussm,
        ema_varmap: VarMap,
        state: DiffusionState,
        classifier: Classifier,
        classifier_info: ClassifierInfo,
        dev: Device,
    ) -> Self {
        let sched = NoiseSchedule::new(&cfg.diffusion).expect("validated");
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
            ema,
            ema_model,
            ema_varmap,
            state,
            sched,
            classifier,
            classifier_info,
            dev,
            status,
        }
    }

    /// The next batch of training indices (epoch permutations from (seed, epoch)).
    fn next_indices(&mut self) -> Vec<usize> {
        let n = self.data.train.len();
        let b = self.cfg.train.batch_size;
        let mut out = Vec::with_capacity(b);
        while out.len() < b {
            let mut order: Vec<usize> = (0..n).collect();
            shuffle(
                &mut order,
                &mut step_rng(self.cfg.run.seed, RNG_ORDER, self.state.epoch),
            );
            let take = (b - out.len()).min(n - self.state.offset);
            out.extend_from_slice(&order[self.state.offset..self.state.offset + take]);
            self.state.offset += take;
            if self.state.offset == n {
                self.state.epoch += 1;
                self.state.offset = 0;
            }
        }
        out
    }

    /// Noise, timesteps and (with `drop_labels`) class dropout for images `x0` with classes `y`,
    /// drawn from `rng` in that order.
    fn noised(
        &self,
        model: &Diffussm,
        x0: &Tensor,
        y: &[u32],
        rng: &mut rand_chacha::ChaCha8Rng,
        drop_labels: bool,
    ) -> Result<Noised> {
        let b = x0.dim(0)?;
        let t: Vec<usize> = (0..b)
            .map(|_| rng.random_range(0..self.sched.len()))
            .collect();
        let eps = normal(rng, x0.shape().clone(), 0.0, 1.0, DType::F32, &self.dev)?;
        let xt = self.sched.q_sample(x0, &eps, &t)?;
        let null = model.null_class();
        let y: Vec<u32> = y
            .iter()
            .map(|&c| {
                if drop_labels && rng.random::<f64>() < self.cfg.diffusion.class_dropout {
                    null
                } else {
                    c
                }
            })
            .collect();
        let t = t.iter().map(|&v| v as f64).collect();
        Ok(Noised { xt, eps, t, y })
    }

    /// ε-MSE of `model` on images `x0` with classes `y`, noise and timesteps from `rng`.
    fn loss(
        &self,
        model: &Diffussm,
        x0: &Tensor,
        y: &[u32],
        rng: &mut rand_chacha::ChaCha8Rng,
        drop_labels: bool,
    ) -> Result<Tensor> {
        let n = self.noised(model, x0, y, rng, drop_labels)?;
        Ok(n.shard_loss(model, 0..x0.dim(0)?)?)
    }

    /// One optimiser step; returns (loss, grad norm, lr).
    pub fn train_step(&mut self) -> Result<(f64, f64, f64)> {
        let step = self.state.step + 1;
        let idx = self.next_indices();
        let mut rng = step_rng(self.cfg.run.seed, RNG_NOISE, step);
        let flips: Option<Vec<bool>> = self
            .cfg
            .data
            .hflip
            .then(|| idx.iter().map(|_| rng.random::<bool>()).collect());
        let (x0, y) = self.data.train.batch(&idx, flips.as_deref(), &self.dev)?;
        let noised = self.noised(&self.model, &x0, &y, &mut rng, true)?;
        let vars: Vec<&Var> = self.opt.params.iter().map(|p| &p.var).collect();
        let shards = resolve_shards(self.cfg.train.data_parallel, idx.len());
        let (loss, mut g) = sharded_grads(&vars, idx.len(), shards, |r| {
            noised.shard_loss(&self.model, r)
        })?;
        if !loss.is_finite() {
            return Ok((loss, f64::NAN, 0.0));
        }
        let norm = clip_grads(&mut g, self.cfg.optim.grad_clip)?;
        let o = &self.cfg.optim;
        let lr = lr_at(
            step,
            o.lr,
            o.warmup_steps,
            self.cfg.train.steps,
            o.min_lr_ratio,
        );
        if norm.is_finite() {
            self.opt.step(&g, lr)?;
            self.ema.update(&self.opt.params)?;
        }
        self.state.step = step;
        self.state.images += idx.len() as u64;
        Ok((loss, norm, lr))
    }

    /// Held-out ε-MSE with the EMA weights on fixed batches (same t and noise every time).
    pub fn eval_loss(&mut self) -> Result<f64> {
        self.load_ema_model()?;
        let b = self.cfg.train.batch_size;
        let n = self.data.val.len();
        let mut sum = 0.0;
        for i in 0..self.cfg.train.eval_batches {
            let idx: Vec<usize> = (0..b).map(|j| (i * b + j) % n).collect();
            let (x0, y) = self.data.val.batch(&idx, None, &self.dev)?;
            let mut rng = step_rng(self.cfg.run.seed, RNG_EVAL, i as u64);
            sum += self
                .loss(&self.ema_model, &x0, &y, &mut rng, false)?
                .to_scalar::<f32>()? as f64;
        }
        Ok(sum / self.cfg.train.eval_batches.max(1) as f64)
    }

    fn load_ema_model(&self) -> Result<()> {
        let data = self
            .ema_varmap
            .data()
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (p, t) in self.opt.params.iter().zip(&self.ema.tensors) {
            data[&p.name].set(t)?;
        }
        Ok(())
    }

    fn sample_options(&self, steps: usize) -> SampleOptions {
        SampleOptions {
            sampler: SamplerKind::Ddim { eta: 0.0 },
            steps,
            guidance: self.cfg.train.guidance,
            clip: self.cfg.diffusion.clip_denoised,
            trajectory_frames: self.cfg.train.trajectory_frames,
        }
    }

    /// The fixed-seed grid of this step (EMA weights) under `samples/step-N/`.
    pub fn write_samples(&mut self) -> Result<PathBuf> {
        self.load_ema_model()?;
        let t = &self.cfg.train;
        let cols = self.cfg.model.num_classes;
        let classes = balanced_classes(t.sample_rows * cols, cols);
        let dst = samples_dir(&self.run.path).join(format!("step-{}", self.state.step));
        std::fs::create_dir_all(samples_dir(&self.run.path)).map_err(|e| RunError::Io {
            path: samples_dir(&self.run.path),
            source: e,
        })?;
        let opts = self.sample_options(t.sample_steps);
        write_sample_folder(
            &self.ema_model,
            &self.sched,
            &dst,
            self.state.step,
            &classes,
            cols,
            &opts,
            t.sample_seed,
            true,
            &self.data.train.class_names,
            &mut |_, _| true,
        )?;
        Ok(dst)
    }

    /// CAS of the EMA weights (guided DDIM samples, fixed seed).
    pub fn cas(&mut self) -> Result<(f64, Vec<f64>)> {
        self.load_ema_model()?;
        let opts = SampleOptions {
            trajectory_frames: 0,
            ..self.sample_options(self.cfg.train.cas_steps)
        };
        classification_accuracy_score(
            &self.ema_model,
            &self.sched,
            &self.classifier,
            self.cfg.train.cas_samples,
            &opts,
            self.cfg.run.seed,
        )
    }

    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let step = self.state.step;
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
            self.ema
                .save(&tmp.join("ema.safetensors"), &self.opt.params)
                .map_err(|e| e.to_string())?;
            self.opt
                .save(&tmp.join("optimizer.safetensors"))
                .map_err(|e| e.to_string())?;
            std::fs::write(tmp.join("state.json"), &state).map_err(|e| e.to_string())?;
            std::fs::write(tmp.join("config.json"), &model_json).map_err(|e| e.to_string())
        })?;
        super::trainer::prune_checkpoints(
            &self.run,
            self.cfg.train.keep_checkpoints,
            self.state.best_step,
        );
        self.status.last_checkpoint = Some(format!("step-{step}"));
        self.status.best_checkpoint = self.state.best_step.map(|s| format!("step-{s}"));
        Ok(dst)
    }

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
        let msg = format!(
            "session start: step {} of {total}, pid {}, {params} parameters, {} train / {} val images; \
             CAS classifier test accuracy {:.2}%; {} data-parallel shard(s) per batch",
            self.state.step,
            std::process::id(),
            self.data.train.len(),
            self.data.val.len(),
            self.classifier_info.test_accuracy * 100.0,
            resolve_shards(self.cfg.train.data_parallel, self.cfg.train.batch_size)
        );
        self.run.log(&msg)?;
        on_event(Event::Message(&msg));
        let session_start = Instant::now();
        let wall0 = self.state.wall_s;
        let mut last_beat = Instant::now();
        let (mut window_t, mut window_images) = (Instant::now(), self.state.images);
        let pixels = (self.cfg.model.seq_len()) as u64;
        while self.state.step < total {
            let (loss, norm, lr) = self.train_step()?;
            let step = self.state.step;
            if !loss.is_finite() || !norm.is_finite() {
                let msg = diverged_message(&self.run, step, loss, norm);
                self.run.log(&msg)?;
                self.set_status(RunState::Diverged, Some(msg.clone()))?;
                on_event(Event::Message(&msg));
                return Ok(Outcome::Diverged);
            }
            let t = self.cfg.train.clone();
            let is_eval = step.is_multiple_of(t.eval_every) || step == total;
            let is_cas = (t.cas_every > 0 && step.is_multiple_of(t.cas_every)) || step == total;
            let is_sample =
                t.sample_every > 0 && (step.is_multiple_of(t.sample_every) || step == total);
            let is_log = step.is_multiple_of(t.log_every) || is_eval || is_cas;
            self.state.wall_s = wall0 + session_start.elapsed().as_secs_f64();
            if is_log {
                let dt = window_t.elapsed().as_secs_f64().max(1e-9);
                let ips = (self.state.images - window_images) as f64 / dt;
                let mut m = Metric {
                    step,
                    tokens: self.state.images * pixels,
                    wall_s: self.state.wall_s,
                    lr: Some(lr),
                    loss: Some(loss),
                    grad_norm: Some(norm),
                    tokens_per_s: Some(ips * pixels as f64),
                    images: Some(self.state.images),
                    images_per_s: Some(ips),
                    ..Default::default()
                };
                if is_eval {
                    let l = self.eval_loss()?;
                    m.eval_loss = Some(l);
                    self.state.last_eval_loss = Some(l);
                }
                if is_cas {
                    let (cas, _) = self.cas()?;
                    m.eval_cas = Some(cas);
                }
                self.run.append_metric(&m)?;
                let mut line = super::trainer::plain_line(&m, total);
                if let Some(c) = m.eval_cas {
                    line += &format!(" | CAS {:.1}%", c * 100.0);
                }
                self.run.log(&line)?;
                on_event(Event::Step(&m));
            }
            if is_sample {
                let dst = self.write_samples()?;
                let msg = format!("samples of step {step}: {}", dst.display());
                self.run.log(&msg)?;
            }
            if is_log || is_sample {
                // evaluation and sampling time is not training throughput
                window_t = Instant::now();
                window_images = self.state.images;
            }
            if let Some(o) = end_of_step(
                self,
                total,
                t.checkpoint_every,
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
