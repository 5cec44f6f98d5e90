//! The images of a diffusion run: loading, the checks against the model, the held-out split.

use crate::data::images::{ImageSet, load_images};
use crate::data::resolve_data_path;
use crate::train::config::ConfigError;
use crate::train::session::{Result, TrainError};

use super::config::DiffusionRunConfig;

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
