//! The long causal convolution: both paths against the reference, gradients, shapes.

use candle_core::{DType, Device, Tensor, Var};
use ssmlab::engine::conv::{
    ConvPath, anticausal_conv, causal_conv, causal_conv_blc, causal_conv_dense, causal_conv_fft,
};

use crate::common::{fd_check, load_st, max_rel};

#[test]
fn fftconv_output_and_gradients_match_reference() {
    let v = load_st("fftconv.safetensors");
    for (suffix, dtype, tol) in [("", DType::F32, 1e-5), ("_f64", DType::F64, 1e-11)] {
        let get = |k: &str| v[&format!("{k}{suffix}")].to_dtype(dtype).unwrap();
        for path in [ConvPath::Fft, ConvPath::Dense] {
            let u = Var::from_tensor(&get("u")).unwrap();
            let k = Var::from_tensor(&get("k")).unwrap();
            let y = causal_conv(&u, &k, path).unwrap();
            let want_y = &v[&format!("y{suffix}")];
            assert!(
                max_rel(&y, want_y) < tol,
                "{path:?} {dtype:?} y: {:e}",
                max_rel(&y, want_y)
            );
            let grads = (y * get("dy"))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let du = grads.get(u.as_tensor()).unwrap();
            let dk = grads.get(k.as_tensor()).unwrap();
            let e_du = max_rel(du, &v[&format!("du{suffix}")]);
            let e_dk = max_rel(dk, &v[&format!("dk{suffix}")]);
            assert!(
                e_du < tol && e_dk < tol,
                "{path:?} {dtype:?}: du {e_du:e} dk {e_dk:e}"
            );
        }
    }
}

fn rand_t(shape: (usize, usize, usize), seed: u64) -> Tensor {
    let n = shape.0 * shape.1 * shape.2;
    let v: Vec<f64> = (0..n)
        .map(|i| (((i as u64 + 1) * (seed * 2654435761 + 97)) % 1000) as f64 / 500.0 - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn fft_op_gradients_match_finite_differences() {
    for kernel_rows in [3, 1] {
        let u = Var::from_tensor(&rand_t((2, 3, 37), 1)).unwrap();
        let k = Var::from_tensor(&rand_t((1, kernel_rows, 37), 2).squeeze(0).unwrap()).unwrap();
        let w = rand_t((2, 3, 37), 3);
        let f = || {
            causal_conv_fft(&u, &k)
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        fd_check(&[("u", &u), ("k", &k)], f, 20, 1e-6);
    }
}

#[test]
fn shared_kernel_equals_repeated_per_channel_kernel() {
    let u = Var::from_tensor(&rand_t((2, 4, 70), 5)).unwrap();
    let k1 = Var::from_tensor(&rand_t((1, 1, 70), 6).squeeze(0).unwrap()).unwrap();
    let k4 = k1.as_tensor().repeat((4, 1)).unwrap();
    let w = rand_t((2, 4, 70), 7);
    for path in [ConvPath::Fft, ConvPath::Dense] {
        let ys = causal_conv(&u, &k1, path).unwrap();
        let yc = causal_conv(&u, &k4, path).unwrap();
        assert!(max_rel(&ys, &yc) < 1e-12);
        let g = (ys * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (yc * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let dk_shared = g.get(k1.as_tensor()).unwrap();
        // the repeated kernel's gradient flows back through `repeat` into k1, summed over channels
        let dk_rep = gc.get(k1.as_tensor()).unwrap();
        assert!(max_rel(dk_shared, dk_rep) < 1e-12, "{path:?}");
    }
}

#[test]
fn blc_layout_and_anticausal_helpers_agree_with_bcl() {
    let u = rand_t((2, 5, 33), 9).to_dtype(DType::F32).unwrap();
    for kr in [1, 5] {
        let k = rand_t((1, kr, 33), 10)
            .squeeze(0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let want = causal_conv_dense(&u, &k).unwrap();
        for path in [ConvPath::Fft, ConvPath::Dense, ConvPath::Auto] {
            let y = causal_conv_blc(&u.transpose(1, 2).unwrap(), &k, path).unwrap();
            assert!(
                max_rel(&y.transpose(1, 2).unwrap(), &want) < 1e-5,
                "{path:?} kr={kr}"
            );
        }
        // anti-causal: y[t] = Σ_{j≤L−1−t} k[j] u[t+j]
        let ya = anticausal_conv(&u, &k, ConvPath::Fft)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        let uv = u.to_vec3::<f32>().unwrap();
        let kv = k.to_vec2::<f32>().unwrap();
        let (b, c, t) = (1, 2, 4);
        let kc = &kv[if kr == 1 { 0 } else { c }];
        let want: f32 = (0..33 - t).map(|j| kc[j] * uv[b][c][t + j]).sum();
        assert!((ya[b][c][t] - want).abs() < 1e-4);
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let u = Tensor::zeros((2, 3, 10), DType::F32, &Device::Cpu).unwrap();
    let msg = |k: Tensor| causal_conv(&u, &k, ConvPath::Auto).unwrap_err().to_string();
    assert!(
        msg(Tensor::zeros((2, 10), DType::F32, &Device::Cpu).unwrap()).contains("does not fit")
    );
    assert!(msg(Tensor::zeros((3, 9), DType::F32, &Device::Cpu).unwrap()).contains("does not fit"));
    assert!(msg(Tensor::zeros(10, DType::F32, &Device::Cpu).unwrap()).contains("kernel must be"));
    assert!(msg(Tensor::zeros((3, 10), DType::F64, &Device::Cpu).unwrap()).contains("F64"));
}
