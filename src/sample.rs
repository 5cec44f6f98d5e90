//! Sampling from trained diffusion models, for `ssmlab sample` and the image view's "sample
//! now": open a model path (a run directory, one of its `step-N/` checkpoints), draw images with
//! DDIM or DDPM and classifier-free guidance, write grids and sample folders, score with the
//! run's CAS classifier.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use crate::engine::diffusion::{DiffusionConfig, NoiseSchedule, SampleOptions, SamplerKind};
use crate::engine::diffussm::{Diffussm, DiffussmConfig};
use crate::engine::weights::{load_varmap, read_checkpoint};
use crate::runs::model::resolve_model;
use crate::runs::samples::{list_sample_sets, samples_dir};
use crate::train::cas::{classification_accuracy_score, load_classifier};
use crate::train::diffusion::DiffusionRunConfig;
use crate::train::samples::write_sample_folder;
use crate::train::session::{Result, TrainError};

/// A DiffuSSM checkpoint ready to sample.
pub struct DiffusionModel {
    pub model: Diffussm,
    pub sched: NoiseSchedule,
    /// The run directory, when the checkpoint belongs to one.
    pub run: Option<PathBuf>,
    pub step: Option<u64>,
    /// Whether the EMA weights were loaded.
    pub ema: bool,
    pub weights: PathBuf,
    pub class_names: Vec<String>,
    pub clip: bool,
}

impl DiffusionModel {
    /// Opens `path` (a diffusion run directory, at checkpoint `step` or its latest, or one
    /// `step-N/` folder). The EMA weights are used when present unless `ema` is false.
    pub fn open(path: &Path, step: Option<u64>, ema: bool) -> Result<Self> {
        let files = resolve_model(path, step).map_err(|e| TrainError::Other(e.to_string()))?;
        let cfg = DiffussmConfig::from_json_file(&files.config).map_err(|e| {
            TrainError::Other(format!(
                "{e}\n(is {} a DiffuSSM checkpoint? BiGS models are for `ssmlab probe`)",
                path.display()
            ))
        })?;
        let ck = files
            .weights
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let run = ck
            .parent()
            .filter(|p| p.join("config.toml").is_file())
            .map(Path::to_path_buf);
        let diffusion = match &run {
            Some(r) => DiffusionRunConfig::from_toml_file(&r.join("config.toml"))?.diffusion,
            None => DiffusionConfig::default(),
        };
        let ema_path = ck.join("ema.safetensors");
        let use_ema = ema && ema_path.is_file();
        let weights = if use_ema {
            ema_path
        } else {
            files.weights.clone()
        };
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let model = Diffussm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        load_varmap(&varmap, &read_checkpoint(&weights, &dev)?, &weights)?;
        let class_names = run
            .as_ref()
            .and_then(|r| list_sample_sets(r).into_iter().next())
            .map(|s| s.meta.class_names)
            .filter(|n| n.len() == cfg.num_classes)
            .unwrap_or_else(|| (0..cfg.num_classes).map(|c| c.to_string()).collect());
        Ok(Self {
            model,
            sched: NoiseSchedule::new(&diffusion)?,
            run,
            step: files.step,
            ema: use_ema,
            weights,
            class_names,
            clip: diffusion.clip_denoised,
        })
    }

    /// Checks a requested class against the model's.
    pub fn check_class(&self, class: Option<u32>) -> Result<()> {
        match class {
            Some(c) if c as usize >= self.model.cfg.num_classes => Err(TrainError::Other(format!(
                "--class {c}: the model has classes 0–{} ({})",
                self.model.cfg.num_classes - 1,
                self.class_names.join(", ")
            ))),
            _ => Ok(()),
        }
    }

    pub fn options(
        &self,
        sampler: SamplerKind,
        steps: usize,
        guidance: f64,
        frames: usize,
    ) -> SampleOptions {
        SampleOptions {
            sampler,
            steps,
            guidance,
            clip: self.clip,
            trajectory_frames: frames,
        }
    }
}

/// The classes of `n` samples: all `class`, or cycling through every class when None.
pub fn request_classes(class: Option<u32>, n: usize, num_classes: usize) -> Vec<Option<u32>> {
    match class {
        Some(c) => vec![Some(c); n],
        None => (0..n).map(|i| Some((i % num_classes) as u32)).collect(),
    }
}

/// A sample request of the image view ("sample now").
#[derive(Debug, Clone, PartialEq)]
pub struct NowRequest {
    /// The run directory.
    pub run: PathBuf,
    /// The checkpoint (training step) to sample from; `None` = the latest.
    pub step: Option<u64>,
    /// Class of every image; `None` = unconditional.
    pub class: Option<u32>,
    /// Number of images.
    pub n: usize,
    /// Classifier-free guidance scale.
    pub guidance: f64,
    /// Sampling (denoising) steps.
    pub steps: usize,
    pub seed: u64,
}

/// Draws a request into a new `samples/now-<unix ms>/` folder of the run (DDIM, EMA weights,
/// trajectory kept) and returns the folder. `progress` receives the fraction done.
pub fn sample_now(req: &NowRequest, progress: &dyn Fn(f64)) -> Result<PathBuf> {
    let m = DiffusionModel::open(&req.run, req.step, true)?;
    m.check_class(req.class)?;
    let run = m.run.clone().unwrap_or_else(|| req.run.clone());
    let classes = request_classes(req.class, req.n, m.model.cfg.num_classes);
    let cols = if req.class.is_some() {
        (req.n as f64).sqrt().ceil() as usize
    } else {
        m.model.cfg.num_classes.min(req.n)
    };
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    std::fs::create_dir_all(samples_dir(&run))
        .map_err(|e| TrainError::Other(format!("{}: {e}", samples_dir(&run).display())))?;
    let dst = samples_dir(&run).join(format!("now-{ms}"));
    let opts = m.options(SamplerKind::Ddim { eta: 0.0 }, req.steps, req.guidance, 6);
    write_sample_folder(
        &m.model,
        &m.sched,
        &dst,
        m.step.unwrap_or(0),
        &classes,
        cols.max(1),
        &opts,
        req.seed,
        m.ema,
        &m.class_names,
        &mut |i, n| {
            progress(i as f64 / n as f64);
            true
        },
    )?;
    Ok(dst)
}

/// CAS of a checkpoint with its run's classifier: (score, per-class scores, classifier test
/// accuracy).
pub fn cas_of(
    m: &DiffusionModel,
    n: usize,
    opts: &SampleOptions,
    seed: u64,
) -> Result<(f64, Vec<f64>, f64)> {
    let run = m.run.as_ref().ok_or_else(|| {
        TrainError::Other("CAS needs the run directory (its classifier.safetensors)".into())
    })?;
    let (classifier, info) = load_classifier(run, &Device::Cpu)?;
    let (score, per) = classification_accuracy_score(
        &m.model,
        &m.sched,
        &classifier,
        n,
        opts,
        seed,
        &mut |_, _| true,
    )?;
    Ok((score, per, info.test_accuracy))
}
