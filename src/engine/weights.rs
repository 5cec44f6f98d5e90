//! Reading checkpoints (`model.safetensors`, PyTorch `pytorch_model.bin`) into a model's
//! [`VarMap`], with errors that name the missing or mis-shaped tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use super::error::{EngineError, Result};

/// Every tensor of a checkpoint file, by name.
pub fn read_checkpoint(path: &Path, dev: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(EngineError::Checkpoint {
            path: path.into(),
            msg: "no such file".into(),
        });
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let err = |e: candle_core::Error| EngineError::Checkpoint {
        path: path.into(),
        msg: e.to_string(),
    };
    match ext {
        "safetensors" => candle_core::safetensors::load(path, dev).map_err(err),
        "bin" | "pt" | "pth" => {
            let all = candle_core::pickle::read_all(path).map_err(err)?;
            all.into_iter()
                .map(|(k, t)| Ok((k, t.to_device(dev).map_err(err)?)))
                .collect()
        }
        _ => Err(EngineError::Checkpoint {
            path: path.into(),
            msg: "unknown format: expected a .safetensors file or a PyTorch .bin/.pt/.pth file"
                .into(),
        }),
    }
}

/// What a load did: tensors it used, tensors of the file it did not need.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub unused: Vec<String>,
}

/// Copies `tensors` into every variable of `varmap` (converted to the variable's dtype).
/// A variable without a tensor, or a tensor of another shape, is an error; tensors the model has
/// no variable for are listed in the report.
pub fn load_varmap(
    varmap: &VarMap,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<LoadReport> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let vars: BTreeMap<&String, _> = data.iter().collect();
    // Check everything before touching a variable, so a failed load leaves the model intact.
    for (name, var) in &vars {
        let t = tensors
            .get(*name)
            .ok_or_else(|| EngineError::MissingTensor {
                path: path.into(),
                name: (*name).clone(),
                expected: var.dims().to_vec(),
            })?;
        if t.dims() != var.dims() {
            return Err(EngineError::ShapeMismatch {
                path: path.into(),
                name: (*name).clone(),
                expected: var.dims().to_vec(),
                found: t.dims().to_vec(),
            });
        }
    }
    for (name, var) in &vars {
        let t = &tensors[*name];
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    let mut unused: Vec<String> = tensors
        .keys()
        .filter(|k| !data.contains_key(*k))
        .cloned()
        .collect();
    unused.sort();
    Ok(LoadReport {
        loaded: vars.len(),
        unused,
    })
}
