//! The classification accuracy score (CAS) of a diffusion run: an MLP classifier trained on the
//! run's training images when the run is created (`classifier.safetensors` + `classifier.json`),
//! and the fraction of guided samples it assigns to their requested class.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::data::images::ImageSet;
use crate::data::mlm::step_rng;
use crate::data::shuffle;
use crate::engine::classifier::{Classifier, ClassifierConfig, build_classifier};
use crate::engine::diffusion::{NoiseSchedule, SampleOptions, sample};
use crate::engine::diffussm::Diffussm;
use crate::engine::weights::{load_varmap, read_checkpoint};
use crate::runs::RunError;
use crate::train::diffusion::config::ClassifierSection;
use crate::train::optim::{AdamW, Param, lr_at};
use crate::train::samples::balanced_classes;
use crate::train::session::Result;

/// Purposes of the derived random streams (see [`step_rng`]).
const RNG_CLASSIFIER: u64 = 15;
const RNG_CAS: u64 = 16;

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
        .map(|(i, var)| Param {
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
            let loss = crate::engine::cpu::fused::cross_entropy(&model.forward(&x)?, &y)?;
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

/// Loads a run's CAS classifier.
pub fn load_classifier(run: &Path, dev: &Device) -> Result<(Classifier, ClassifierInfo)> {
    let info_path = run.join("classifier.json");
    let text = crate::text::read_file(&info_path, crate::text::SMALL_FILE_MAX).map_err(|e| {
        RunError::Io {
            path: info_path.clone(),
            err: e,
        }
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

/// CAS: fraction of guided samples classified as their requested class, with the per-class
/// fractions.
pub fn classification_accuracy_score(
    model: &Diffussm,
    sched: &NoiseSchedule,
    classifier: &Classifier,
    n: usize,
    opts: &SampleOptions,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(f64, Vec<f64>)> {
    let classes = balanced_classes(n, model.cfg.num_classes);
    let mut rng = step_rng(seed, RNG_CAS, 0);
    let mut hits = vec![(0usize, 0usize); model.cfg.num_classes];
    for chunk in classes.chunks(50) {
        let s = sample(model, sched, chunk, opts, &mut rng, progress)?;
        let pred = classifier.predict(&s.images)?;
        for (c, p) in chunk.iter().zip(pred) {
            // `balanced_classes` gives every sample a class.
            let c = c.unwrap_or(0) as usize;
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
