//! Training DiffuSSM as a [`Task`] of the one training loop (`session`): DDPM ε-prediction on an
//! image set, with EMA weights, fixed-seed sample grids (and their denoising trajectories) every
//! `train.sample_every` steps, and the classification accuracy score (CAS, `train::cas`) of
//! guided samples as an extra evaluation.
//!
//! Beside the files of every run (see [`crate::runs`]), a diffusion run holds
//! `classifier.safetensors` + `classifier.json` (the CAS classifier, trained on the run's training
//! images when the run is created), `step-N/ema.safetensors` (EMA weights, the same names as
//! `model.safetensors`) and `samples/` (see [`crate::runs::samples`]).

pub mod config;
pub mod data;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use config::{ClassifierSection, DiffusionRunConfig, DiffusionTrainSection, ImageDataSection};
pub use data::{ImageData, prepare_images};

use super::cas::{
    ClassifierInfo, classification_accuracy_score, load_classifier, train_classifier,
};
use super::optim::{AdamW, Ema, clip_grads, lr_at, param_groups};
use super::parallel::{resolve_shards, sharded_grads};
use super::samples::{balanced_classes, write_sample_folder};
use super::session::{
    Beat, Due, Progress, Result, Session, Stepped, Task, TrainError, read_state, resume_point,
    task_accessors, write_checkpoint_common,
};
use crate::data::mlm::step_rng;
use crate::data::shuffle;
use crate::engine::classifier::Classifier;
use crate::engine::diffusion::{NoiseSchedule, SampleOptions, SamplerKind};
use crate::engine::diffussm::{Diffussm, build_diffussm};
use crate::engine::init::normal;
use crate::engine::weights::{load_varmap, read_checkpoint};
use crate::runs::samples::samples_dir;
use crate::runs::{Metric, RunDir, RunError};

/// Purposes of the derived random streams (see [`step_rng`]; the CAS classifier and CAS sampling
/// use 15 and 16, sample grids stream `u64::MAX` of 12).
const RNG_INIT: u64 = 11;
const RNG_NOISE: u64 = 12;
const RNG_EVAL: u64 = 13;
const RNG_ORDER: u64 = 14;

/// `state.json` of a diffusion checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionState {
    #[serde(flatten)]
    pub progress: Progress,
    pub images: u64,
    pub seed: u64,
    /// Position in the current epoch's permutation.
    pub epoch: u64,
    pub offset: usize,
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

/// A DiffuSSM training session on one run directory.
pub type DiffusionTrainer = Session<DiffusionTask>;

/// DiffuSSM training: the model and its EMA, the optimiser, images, the CAS classifier and the
/// checkpoint state.
pub struct DiffusionTask {
    pub cfg: DiffusionRunConfig,
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
    /// Where sample grids go (`samples/` of the run directory).
    samples: PathBuf,
    dev: Device,
}

/// The seeded model and optimiser of a run, and the EMA model (a resume loads over them).
struct Fresh {
    model: Diffussm,
    varmap: VarMap,
    opt: AdamW,
    ema: Ema,
    ema_model: Diffussm,
    ema_varmap: VarMap,
}

fn fresh(cfg: &DiffusionRunConfig, dev: &Device) -> Result<Fresh> {
    let mut rng = step_rng(cfg.run.seed, RNG_INIT, 0);
    let (model, varmap) = build_diffussm(&cfg.model, DType::F32, dev, &mut rng)?;
    let opt = AdamW::new(
        param_groups(&varmap, &cfg.optim),
        cfg.optim.beta1,
        cfg.optim.beta2,
        cfg.optim.eps,
    )?;
    let ema = Ema::new(&opt.params, cfg.train.ema_decay)?;
    let ema_varmap = VarMap::new();
    let ema_model = Diffussm::new(
        &cfg.model,
        VarBuilder::from_varmap(&ema_varmap, DType::F32, dev),
    )?;
    Ok(Fresh {
        model,
        varmap,
        opt,
        ema,
        ema_model,
        ema_varmap,
    })
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
        let f = fresh(&cfg, &dev)?;
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
        let lock = match run.lock() {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run.path);
                return Err(e.into());
            }
        };
        let setup = (|| -> Result<()> {
            crate::runs::write_atomic(&run.config_path(), cfg.to_toml().as_bytes())?;
            cvm.save(run.path.join("classifier.safetensors"))?;
            let json = serde_json::to_string_pretty(&info)
                .map_err(|e| TrainError::Other(e.to_string()))?;
            crate::runs::write_atomic(&run.path.join("classifier.json"), json.as_bytes())?;
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
        let state = DiffusionState {
            progress: Progress::new(),
            images: 0,
            seed: cfg.run.seed,
            epoch: 0,
            offset: 0,
        };
        let task = DiffusionTask::new(cfg, &run, data, f, state, classifier, info, dev)?;
        Ok(Session::new(run, lock, task))
    }

    /// Resumes from the latest complete checkpoint (`sets` may override keys, e.g. train.steps).
    pub fn resume(run: RunDir, sets: &[String]) -> Result<Self> {
        Self::resume_from(run, sets, None, &mut |_| {})
    }

    /// [`DiffusionTrainer::resume`] from the newest checkpoint that loads (or `step-N` with
    /// `from_step`); `on_message` hears which checkpoints were skipped and why.
    pub fn resume_from(
        run: RunDir,
        sets: &[String],
        from_step: Option<u64>,
        on_message: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        // one trainer per run: taken first, before anything is loaded
        let lock = run.lock()?;
        let cfg = DiffusionRunConfig::from_toml_file(&run.config_path())?.with_overrides(sets)?;
        let data = prepare_images(&cfg)?;
        let dev = Device::Cpu;
        let mut f = fresh(&cfg, &dev)?;
        let (classifier, info) = load_classifier(&run.path, &dev)?;
        let (state, skipped) = resume_point(&run, from_step, |ck| {
            let weights = ck.join("model.safetensors");
            load_varmap(&f.varmap, &read_checkpoint(&weights, &dev)?, &weights)?;
            f.ema.load(&ck.join("ema.safetensors"), &f.opt.params)?;
            let state: DiffusionState = read_state(ck)?;
            f.opt
                .load(&ck.join("optimizer.safetensors"), state.progress.step)?;
            f.ema.updates = state.progress.step;
            Ok(state)
        })?;
        for l in &skipped {
            run.log(l)?;
            on_message(l);
        }
        let Some(state) = state else {
            return Err(TrainError::Other(format!(
                "run {} has no checkpoint to resume from{}; start it again",
                run.path.display(),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", skipped.join("; "))
                }
            )));
        };
        run.truncate_metrics(state.progress.step)?;
        run.truncate_kernels(state.progress.step)?;
        crate::runs::write_atomic(&run.config_path(), cfg.to_toml().as_bytes())?;
        let task = DiffusionTask::new(cfg, &run, data, f, state, classifier, info, dev)?;
        Ok(Session::new(run, lock, task))
    }
}

impl DiffusionTask {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: DiffusionRunConfig,
        run: &RunDir,
        data: ImageData,
        f: Fresh,
        state: DiffusionState,
        classifier: Classifier,
        classifier_info: ClassifierInfo,
        dev: Device,
    ) -> Result<Self> {
        let sched = NoiseSchedule::new(&cfg.diffusion)?;
        Ok(Self {
            cfg,
            data,
            model: f.model,
            varmap: f.varmap,
            opt: f.opt,
            ema: f.ema,
            ema_model: f.ema_model,
            ema_varmap: f.ema_varmap,
            state,
            sched,
            classifier,
            classifier_info,
            samples: samples_dir(&run.path),
            dev,
        })
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

    /// Held-out ε-MSE with the EMA weights on fixed batches (same t and noise every time).
    pub fn eval_loss(&mut self, beat: &mut dyn FnMut()) -> Result<f64> {
        self.load_ema_model()?;
        let b = self.cfg.train.batch_size;
        let n = self.data.val.len();
        let mut sum = 0.0;
        for i in 0..self.cfg.train.eval_batches {
            beat();
            let idx: Vec<usize> = (0..b).map(|j| (i * b + j) % n).collect();
            let (x0, y) = self.data.val.batch(&idx, None, &self.dev)?;
            let mut rng = step_rng(self.cfg.run.seed, RNG_EVAL, i as u64);
            let noised = self.noised(&self.ema_model, &x0, &y, &mut rng, false)?;
            sum += noised
                .shard_loss(&self.ema_model, 0..b)?
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
    pub fn write_samples(&mut self, beat: &mut dyn FnMut()) -> Result<PathBuf> {
        self.load_ema_model()?;
        let t = &self.cfg.train;
        let cols = self.cfg.model.num_classes;
        let classes = balanced_classes(t.sample_rows * cols, cols);
        let dst = self
            .samples
            .join(format!("step-{}", self.state.progress.step));
        std::fs::create_dir_all(&self.samples).map_err(|e| RunError::Io {
            path: self.samples.clone(),
            err: e,
        })?;
        let opts = self.sample_options(t.sample_steps);
        write_sample_folder(
            &self.ema_model,
            &self.sched,
            &dst,
            self.state.progress.step,
            &classes,
            cols,
            &opts,
            t.sample_seed,
            true,
            &self.data.train.class_names,
            &mut |_, _| {
                beat();
                true
            },
        )?;
        Ok(dst)
    }

    /// CAS of the EMA weights (guided DDIM samples, fixed seed).
    pub fn cas(&mut self, beat: &mut dyn FnMut()) -> Result<(f64, Vec<f64>)> {
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
            &mut |_, _| {
                beat();
                true
            },
        )
    }
}

impl Task for DiffusionTask {
    task_accessors!();

    fn start_details(&self) -> (String, bool) {
        let (n_train, n_val) = self.data_sizes();
        let details = format!(
            "{n_train} train / {n_val} val images; CAS classifier test accuracy {:.2}%; \
             {} data-parallel shard(s) per batch",
            self.classifier_info.test_accuracy * 100.0,
            resolve_shards(self.cfg.train.data_parallel, self.cfg.train.batch_size)
        );
        (details, true)
    }

    fn seen(&self) -> u64 {
        self.state.images
    }

    fn train_step(&mut self) -> Result<Stepped> {
        let step = self.state.progress.step + 1;
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
            return Ok(Stepped {
                loss,
                grad_norm: f64::NAN,
                lr: 0.0,
            });
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
        self.state.progress.step = step;
        self.state.images += idx.len() as u64;
        Ok(Stepped {
            loss,
            grad_norm: norm,
            lr,
        })
    }

    fn extra_due(&self, step: u64, last: bool) -> bool {
        let every = self.cfg.train.cas_every;
        (every > 0 && step.is_multiple_of(every)) || last
    }

    fn fill_counts(&self, m: &mut Metric, seen_since: u64, seconds: f64) {
        let pixels = self.cfg.model.seq_len() as u64;
        let ips = seen_since as f64 / seconds;
        m.tokens = self.state.images * pixels;
        m.tokens_per_s = Some(ips * pixels as f64);
        m.images = Some(self.state.images);
        m.images_per_s = Some(ips);
    }

    fn evaluate(&mut self, m: &mut Metric, due: Due, beat: &mut Beat) -> Result<()> {
        if due.eval {
            m.eval_loss = Some(self.eval_loss(&mut || beat.tick())?);
        }
        if due.extra {
            m.eval_cas = Some(self.cas(&mut || beat.tick())?.0);
        }
        Ok(())
    }

    fn extras(&mut self, step: u64, last: bool, beat: &mut Beat) -> Result<Vec<String>> {
        let every = self.cfg.train.sample_every;
        if every == 0 || !(step.is_multiple_of(every) || last) {
            return Ok(Vec::new());
        }
        let dst = self.write_samples(&mut || beat.tick())?;
        Ok(vec![format!("samples of step {step}: {}", dst.display())])
    }

    /// The EMA values, as `ema.safetensors` (which the Kernels view reads) holds them.
    fn kernel_tensors(&self) -> (bool, Vec<(String, Tensor)>) {
        let picked = self
            .opt
            .params
            .iter()
            .zip(&self.ema.tensors)
            .filter(|(p, _)| crate::train::session::is_ssm_parameter(&p.name))
            .map(|(p, t)| (p.name.clone(), t.clone()))
            .collect();
        (true, picked)
    }

    fn write_checkpoint_files(&self, dir: &Path) -> std::result::Result<(), String> {
        self.ema
            .save(&dir.join("ema.safetensors"), &self.opt.params)
            .map_err(|e| e.to_string())?;
        let config = self.cfg.model.to_json();
        write_checkpoint_common(dir, &self.varmap, &self.opt, &self.state, &config)
    }
}
