//! A small image classifier (MLP) used to score class-conditional samples: the classification
//! accuracy score (CAS) of a diffusion model is the fraction of samples of class c that the
//! classifier, trained on real images, assigns to c.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::Result;
use super::init::uniform;
use super::nn::{Activation, Linear, linear};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Values per image (C·H·W).
    pub input_size: usize,
    pub hidden: Vec<usize>,
    pub num_classes: usize,
}

/// MLP `input → hidden… → classes` with GELU, on images flattened and scaled to [−1, 1].
#[derive(Debug, Clone)]
pub struct Classifier {
    pub cfg: ClassifierConfig,
    layers: Vec<Linear>,
}

impl Classifier {
    pub fn new(cfg: &ClassifierConfig, vb: VarBuilder) -> Result<Self> {
        let mut dims = vec![cfg.input_size];
        dims.extend(&cfg.hidden);
        dims.push(cfg.num_classes);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], vb.pp(format!("fc{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            layers,
        })
    }

    /// Logits (B, classes) of images (B, …).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.flatten_from(1)?;
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = Activation::Gelu.apply(&h)?;
            }
        }
        Ok(h)
    }

    /// Predicted class of each image.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        Ok(self.forward(x)?.argmax(1)?.to_vec1::<u32>()?)
    }
}

/// A fresh classifier: PyTorch's default Linear initialisation (uniform ±1/√fan_in), seeded.
pub fn build_classifier(
    cfg: &ClassifierConfig,
    dev: &Device,
    rng: &mut ChaCha8Rng,
) -> Result<(Classifier, VarMap)> {
    let varmap = VarMap::new();
    let model = Classifier::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let fan_in = if name.ends_with("weight") {
            shape.dims()[1]
        } else {
            // bias of fcN: fan_in of its weight
            data[&name.replace("bias", "weight")].dims()[1]
        };
        let a = 1.0 / (fan_in as f64).sqrt();
        var.set(&uniform(rng, shape, -a, a, DType::F32, dev)?)?;
    }
    drop(data);
    Ok((model, varmap))
}
