//! Helpers shared by the tests: fixtures, tolerances, finite differences.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn load_st(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).expect("fixture loads")
}

/// `max|got − ref| / max|ref|`, the vectors' README's relative error.
pub fn max_rel(got: &Tensor, want: &Tensor) -> f64 {
    let g = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let w = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    assert_eq!(g.dims(), w.dims(), "shape mismatch");
    let diff = (g - &w)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = w.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    if scale == 0.0 { diff } else { diff / scale }
}

pub fn max_abs(got: &Tensor, want: &Tensor) -> f64 {
    let g = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let w = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    (g - w)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Central finite differences of the scalar `f` with respect to a few entries of each var,
/// against the gradient from backprop. Returns the worst relative error (relative to the
/// largest |analytic gradient| of that var, plus an absolute floor).
pub fn fd_check(vars: &[(&str, &Var)], f: impl Fn() -> Tensor, samples: usize, eps: f64) -> f64 {
    let loss = f();
    let grads = loss.backward().unwrap();
    let mut worst: f64 = 0.0;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let scale = g.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-8);
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = base.len();
        let picks: Vec<usize> = (0..samples.min(n)).map(|i| (i * 7919 + 13) % n).collect();
        for &i in &picks {
            let mut plus = base.clone();
            plus[i] += eps;
            var.set(&Tensor::from_vec(plus, var.shape(), var.device()).unwrap())
                .unwrap();
            let fp = f().to_scalar::<f64>().unwrap();
            let mut minus = base.clone();
            minus[i] -= eps;
            var.set(&Tensor::from_vec(minus, var.shape(), var.device()).unwrap())
                .unwrap();
            let fm = f().to_scalar::<f64>().unwrap();
            var.set(&Tensor::from_vec(base.clone(), var.shape(), var.device()).unwrap())
                .unwrap();
            let num = (fp - fm) / (2.0 * eps);
            let err = (num - g[i]).abs() / scale;
            assert!(
                err < 1e-5,
                "{name}[{i}]: finite difference {num:e} vs backprop {:e} (rel {err:e})",
                g[i]
            );
            worst = worst.max(err);
        }
    }
    worst
}
