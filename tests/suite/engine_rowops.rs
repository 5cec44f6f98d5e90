//! The fused row ops (`engine::rowops`): gradients against finite differences in f64, values
//! and gradients against the same formula in plain candle ops in f32, bitwise-equal results on
//! one and two threads, and clear errors for shapes that do not fit.

use candle_core::{DType, Device, Tensor, Var};
use ssmlab::engine::cpu::rowops::{bias_act, bias_mul, bias_residual, gelu_bias_mul, layer_norm};
use ssmlab::engine::nn::Gelu;

use super::common::{fd_check, max_rel};

fn var(shape: &[usize], seed: f64, dt: DType) -> Var {
    let n: usize = shape.iter().product();
    let t = Tensor::arange(0f64, n as f64, &Device::Cpu)
        .unwrap()
        .affine(0.37 + seed, seed)
        .unwrap()
        .sin()
        .unwrap()
        .reshape(shape)
        .unwrap()
        .to_dtype(dt)
        .unwrap();
    Var::from_tensor(&t).unwrap()
}

/// Every op applied to the same operands, fused and composed from candle ops.
struct Operands {
    a: Var,
    c: Var,
    b1: Var,
    b2: Var,
}

impl Operands {
    fn new(rows: usize, n: usize, dt: DType) -> Self {
        Self {
            a: var(&[rows / 3, 3, n], 0.1, dt),
            c: var(&[rows / 3, 3, n], 0.7, dt),
            b1: var(&[n], 1.3, dt),
            b2: var(&[n], 2.9, dt),
        }
    }

    fn vars(&self) -> Vec<(&str, &Var)> {
        vec![
            ("a", &self.a),
            ("c", &self.c),
            ("b1", &self.b1),
            ("b2", &self.b2),
        ]
    }

    /// Output of op `i`, fused or composed.
    fn apply(&self, i: usize, fused: bool) -> Tensor {
        let (a, c, b1, b2) = (
            self.a.as_tensor(),
            self.c.as_tensor(),
            self.b1.as_tensor(),
            self.b2.as_tensor(),
        );
        let gelu = |k: Gelu, x: &Tensor| match k {
            Gelu::Exact => x.gelu_erf().unwrap(),
            Gelu::Tanh => x.gelu().unwrap(),
        };
        match (i, fused) {
            (0, true) => bias_act(a, b1, None).unwrap(),
            (0, false) => a.broadcast_add(b1).unwrap(),
            (1, true) => bias_act(a, b1, Some(Gelu::Exact)).unwrap(),
            (1, false) => gelu(Gelu::Exact, &a.broadcast_add(b1).unwrap()),
            (2, true) => bias_act(a, b1, Some(Gelu::Tanh)).unwrap(),
            (2, false) => gelu(Gelu::Tanh, &a.broadcast_add(b1).unwrap()),
            (3, true) => bias_mul(a, b1, c, b2).unwrap(),
            (3, false) => (a.broadcast_add(b1).unwrap() * c.broadcast_add(b2).unwrap()).unwrap(),
            (4, true) => gelu_bias_mul(a, b1, c, Gelu::Tanh).unwrap(),
            (4, false) => (gelu(Gelu::Tanh, &a.broadcast_add(b1).unwrap()) * c).unwrap(),
            (5, true) => bias_residual(a, b1, c).unwrap(),
            (5, false) => (a.broadcast_add(b1).unwrap() + c).unwrap(),
            (6, true) => layer_norm(a, b1, b2, 1e-5).unwrap(),
            (6, false) => {
                let d = candle_core::D::Minus1;
                let mean = a.mean_keepdim(d).unwrap();
                let xc = a.broadcast_sub(&mean).unwrap();
                let var = xc.sqr().unwrap().mean_keepdim(d).unwrap();
                let sd = (var + 1e-5).unwrap().sqrt().unwrap();
                xc.broadcast_div(&sd)
                    .unwrap()
                    .broadcast_mul(b1)
                    .unwrap()
                    .broadcast_add(b2)
                    .unwrap()
            }
            _ => unreachable!(),
        }
    }

    /// A scalar loss with a different weight on every output element.
    fn loss(&self, i: usize, fused: bool) -> Tensor {
        let y = self.apply(i, fused);
        let w = var(y.dims(), 4.1, y.dtype());
        (y * w.as_tensor()).unwrap().sum_all().unwrap()
    }
}

const OPS: usize = 7;

#[test]
fn row_op_gradients_match_finite_differences_f64() {
    let o = Operands::new(12, 5, DType::F64);
    for i in 0..OPS {
        let names: &[&str] = match i {
            0..=2 => &["a", "b1"],
            3 => &["a", "c", "b1", "b2"],
            4 | 5 => &["a", "c", "b1"],
            _ => &["a", "b1", "b2"],
        };
        let used: Vec<_> = o
            .vars()
            .into_iter()
            .filter(|(n, _)| names.contains(n))
            .collect();
        let worst = fd_check(&used, || o.loss(i, true), 12, 1e-6);
        assert!(worst < 1e-6, "op {i}: worst relative error {worst:e}");
    }
}

#[test]
fn row_ops_match_candle_ops_in_f32() {
    let o = Operands::new(30, 64, DType::F32);
    for i in 0..OPS {
        let (yf, yc) = (o.apply(i, true), o.apply(i, false));
        assert_eq!(yf.dims(), yc.dims());
        assert!(max_rel(&yf, &yc) < 1e-5, "op {i} forward");
        let (gf, gc) = (
            o.loss(i, true).backward().unwrap(),
            o.loss(i, false).backward().unwrap(),
        );
        for (name, v) in o.vars() {
            match (gf.get(v.as_tensor()), gc.get(v.as_tensor())) {
                (Some(f), Some(c)) => {
                    let err = max_rel(f, c);
                    assert!(err < 1e-4, "op {i}, gradient of {name}: {err:e}");
                }
                (None, None) => {}
                (f, c) => panic!(
                    "op {i}, {name}: fused has a gradient: {}, candle has one: {}",
                    f.is_some(),
                    c.is_some()
                ),
            }
        }
    }
}

#[test]
fn row_op_gradients_are_bitwise_equal_on_one_and_two_threads() {
    // Many rows of a narrow width: the column sums span several blocks of rows.
    let o = Operands::new(30_000, 4, DType::F32);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            (0..OPS)
                .flat_map(|i| {
                    let g = o.loss(i, true).backward().unwrap();
                    o.vars()
                        .into_iter()
                        .filter_map(|(_, v)| g.get(v.as_tensor()).cloned())
                        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.len(), two.len());
    for (a, b) in one.iter().zip(&two) {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "gradients differ between one and two threads"
        );
    }
}

#[test]
fn row_ops_reject_operands_that_do_not_fit() {
    let o = Operands::new(6, 5, DType::F32);
    let short = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
    let e = bias_act(o.a.as_tensor(), &short, None).unwrap_err();
    assert!(
        e.to_string().contains("expected a vector of 5") && e.to_string().contains("[4]"),
        "{e}"
    );
    let other = Tensor::zeros((3, 5), DType::F32, &Device::Cpu).unwrap();
    let e = bias_residual(o.a.as_tensor(), o.b1.as_tensor(), &other).unwrap_err();
    assert!(e.to_string().contains("differ"), "{e}");
    let e = layer_norm(o.a.as_tensor(), &short, o.b2.as_tensor(), 1e-5).unwrap_err();
    assert!(e.to_string().contains("LayerNorm weight"), "{e}");
}

#[test]
fn vectorisable_exp_is_accurate_and_keeps_nan() {
    use ssmlab::engine::cpu::simd::exp_f32;
    let mut worst = 0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 175.0 * i as f64 / 200_000.0;
        let got = exp_f32(x as f32) as f64;
        let want = (x as f32 as f64).exp();
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 5e-7, "worst relative error {worst:e}");
    assert!(exp_f32(f32::NAN).is_nan());
    assert!(exp_f32(-1000.0) < 1e-37 && exp_f32(1000.0) > 1e38);
}

#[test]
fn fused_linear_matches_finite_differences_and_candle_ops() {
    use ssmlab::engine::cpu::linear::linear_rows;
    // f64: every gradient against finite differences
    let (x, w, b) = (
        var(&[7, 5], 0.2, DType::F64),
        var(&[3, 5], 0.9, DType::F64),
        var(&[3], 1.7, DType::F64),
    );
    let wt = var(&[7, 3], 4.1, DType::F64);
    let loss = || {
        let y = linear_rows(x.as_tensor(), w.as_tensor(), b.as_tensor())
            .unwrap()
            .expect("fused on the CPU");
        (y * wt.as_tensor()).unwrap().sum_all().unwrap()
    };
    let worst = fd_check(&[("x", &x), ("w", &w), ("b", &b)], loss, 15, 1e-6);
    assert!(worst < 1e-6, "worst relative error {worst:e}");
    // f32: values and gradients against matmul + broadcast_add
    let (x, w, b) = (
        var(&[300, 48], 0.2, DType::F32),
        var(&[40, 48], 0.9, DType::F32),
        var(&[40], 1.7, DType::F32),
    );
    let yf = linear_rows(x.as_tensor(), w.as_tensor(), b.as_tensor())
        .unwrap()
        .unwrap();
    let yc = x
        .as_tensor()
        .matmul(&w.as_tensor().t().unwrap())
        .unwrap()
        .broadcast_add(b.as_tensor())
        .unwrap();
    assert!(max_rel(&yf, &yc) < 1e-5);
    let wt = var(&[300, 40], 4.1, DType::F32);
    let gf = (yf * wt.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gc = (yc * wt.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for v in [&x, &w, &b] {
        let err = max_rel(
            gf.get(v.as_tensor()).unwrap(),
            gc.get(v.as_tensor()).unwrap(),
        );
        assert!(err < 1e-5, "gradient {err:e}");
    }
}
