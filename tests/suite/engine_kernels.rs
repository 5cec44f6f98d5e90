//! S4D kernels against the PyTorch reference vectors, finite differences and initialisations.

use candle_core::{DType, Device, Tensor, Var};
use ssmlab::engine::conv::{ConvPath, causal_conv};
use ssmlab::engine::init::{AInit, a_init_full, a_init_half, legs_skew_eigenvalues};
use ssmlab::engine::s4d::{Discretization, bigs_kernel, s4_kernel};

use crate::common::{fd_check, load_st, max_abs, max_rel};

fn bigs_case(case: &str, dtype: DType) -> (Tensor, Tensor) {
    let v = load_st("s4d_kernel.safetensors");
    let g = |k: &str| v[&format!("{case}.{k}")].to_dtype(dtype).unwrap();
    let l = v[&format!("{case}.K")].dim(0).unwrap();
    let k = bigs_kernel(&g("A_re"), &g("A_im"), &g("C"), &g("log_step"), l).unwrap();
    (k, v[&format!("{case}.K_f64")].clone())
}

#[test]
fn bigs_kernels_match_reference_f32_and_f64() {
    for case in ["bigs_a", "bigs_b", "bigs_clamp"] {
        let (k32, want) = bigs_case(case, DType::F32);
        let e32 = max_abs(&k32, &want);
        assert!(e32 < 1e-5, "{case} f32: max abs err {e32:e}");
        let (k64, want) = bigs_case(case, DType::F64);
        let e64 = max_abs(&k64, &want);
        assert!(e64 < 1e-9, "{case} f64: max abs err {e64:e}");
    }
}

#[test]
fn bigs_layer_op_matches_reference() {
    let v = load_st("s4d_kernel.safetensors");
    let (k, _) = bigs_case("bigs_a", DType::F32);
    let u = &v["bigs_a.u"]; // (B, H, L)
    let d = &v["bigs_a.D"];
    for path in [ConvPath::Fft, ConvPath::Dense] {
        let y = (causal_conv(u, &k.unsqueeze(0).unwrap(), path).unwrap()
            + u.broadcast_mul(d).unwrap())
        .unwrap();
        let e = max_rel(&y, &v["bigs_a.y_f64"]);
        assert!(e < 1e-4, "{path:?}: rel err {e:e}");
    }
}

#[test]
fn s4_per_channel_kernel_and_layer_match_reference() {
    let v = load_st("s4d_kernel.safetensors");
    for dtype in [DType::F32, DType::F64] {
        let g = |k: &str| v[&format!("s4.{k}")].to_dtype(dtype).unwrap();
        let a_re = g("log_A_real").exp().unwrap().neg().unwrap();
        let k = s4_kernel(
            &g("log_dt"),
            &a_re,
            &g("A_imag"),
            &g("C"),
            64,
            Discretization::Zoh,
        )
        .unwrap();
        let e = max_abs(&k, &v["s4.K_f64"]);
        assert!(
            e < if dtype == DType::F32 { 1e-5 } else { 1e-9 },
            "{dtype:?}: {e:e}"
        );
        let u = g("u");
        for path in [ConvPath::Fft, ConvPath::Dense] {
            let y = (causal_conv(&u, &k, path).unwrap()
                + u.broadcast_mul(&g("D").unsqueeze(1).unwrap()).unwrap())
            .unwrap();
            let e = max_rel(&y, &v["s4.y_f64"]);
            assert!(e < 1e-4, "{dtype:?} {path:?}: {e:e}");
        }
    }
}

/// Bilinear kernel against a step-by-step complex recurrence written out here in plain f64.
#[test]
fn s4_bilinear_kernel_matches_recurrence() {
    let (h, m, l) = (3usize, 4usize, 50usize);
    let log_dt: Vec<f64> = (0..h).map(|i| (0.01f64 * (1.0 + i as f64)).ln()).collect();
    let a_re: Vec<f64> = (0..h * m).map(|i| -0.5 - 0.1 * (i % 3) as f64).collect();
    let a_im: Vec<f64> = (0..h * m)
        .map(|i| std::f64::consts::PI * (i % m) as f64 + 0.3)
        .collect();
    let c: Vec<f64> = (0..h * m * 2)
        .map(|i| ((i * 37 % 11) as f64 - 5.0) / 5.0)
        .collect();
    let dev = Device::Cpu;
    let k = s4_kernel(
        &Tensor::new(log_dt.as_slice(), &dev).unwrap(),
        &Tensor::from_vec(a_re.clone(), (h, m), &dev).unwrap(),
        &Tensor::from_vec(a_im.clone(), (h, m), &dev).unwrap(),
        &Tensor::from_vec(c.clone(), (h, m, 2), &dev).unwrap(),
        l,
        Discretization::Bilinear,
    )
    .unwrap()
    .to_vec2::<f64>()
    .unwrap();
    type C = (f64, f64);
    let mul = |a: C, b: C| (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0);
    let div = |a: C, b: C| {
        let d = b.0 * b.0 + b.1 * b.1;
        ((a.0 * b.0 + a.1 * b.1) / d, (a.1 * b.0 - a.0 * b.1) / d)
    };
    for hh in 0..h {
        let dt = log_dt[hh].exp();
        let mut want = vec![0.0; l];
        for mm in 0..m {
            let i = hh * m + mm;
            let za = (dt * a_re[i] / 2.0, dt * a_im[i] / 2.0);
            let den = (1.0 - za.0, -za.1);
            let abar = div((1.0 + za.0, za.1), den);
            let bbar = div((dt, 0.0), den);
            let cb = mul((c[2 * i], c[2 * i + 1]), bbar);
            let mut p = (1.0, 0.0);
            for w in want.iter_mut() {
                *w += 2.0 * mul(cb, p).0;
                p = mul(p, abar);
            }
        }
        for t in 0..l {
            assert!(
                (k[hh][t] - want[t]).abs() < 1e-12,
                "h{hh} t{t}: {} vs {}",
                k[hh][t],
                want[t]
            );
        }
    }
}

#[test]
fn bigs_kernel_gradients_match_finite_differences() {
    let v = load_st("s4d_kernel.safetensors");
    let var = |k: &str| {
        Var::from_tensor(&v[&format!("bigs_b.{k}")].to_dtype(DType::F64).unwrap()).unwrap()
    };
    let (a_re, a_im, c, ls) = (var("A_re"), var("A_im"), var("C"), var("log_step"));
    let w = Tensor::arange(0f64, 100., &Device::Cpu)
        .unwrap()
        .affine(0.37, 0.)
        .unwrap()
        .sin()
        .unwrap();
    let f = || {
        bigs_kernel(&a_re, &a_im, &c, &ls, 100)
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap()
    };
    fd_check(
        &[
            ("A_re", &a_re),
            ("A_im", &a_im),
            ("C", &c),
            ("log_step", &ls),
        ],
        f,
        12,
        1e-6,
    );
}

#[test]
fn s4_kernel_gradients_match_finite_differences() {
    let v = load_st("s4d_kernel.safetensors");
    let var =
        |k: &str| Var::from_tensor(&v[&format!("s4.{k}")].to_dtype(DType::F64).unwrap()).unwrap();
    let (log_dt, lar, aim, c) = (var("log_dt"), var("log_A_real"), var("A_imag"), var("C"));
    let w = Tensor::arange(0f64, 8. * 64., &Device::Cpu)
        .unwrap()
        .reshape((8, 64))
        .unwrap()
        .affine(0.11, 0.)
        .unwrap()
        .cos()
        .unwrap();
    for disc in [Discretization::Zoh, Discretization::Bilinear] {
        let f = || {
            let are = lar.as_tensor().exp().unwrap().neg().unwrap();
            s4_kernel(&log_dt, &are, &aim, &c, 64, disc)
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        fd_check(
            &[
                ("log_dt", &log_dt),
                ("log_A_real", &lar),
                ("A_imag", &aim),
                ("C", &c),
            ],
            f,
            8,
            1e-6,
        );
    }
}

#[test]
fn clamped_a_re_gets_zero_gradient() {
    let v = load_st("s4d_kernel.safetensors");
    let g = |k: &str| v[&format!("bigs_clamp.{k}")].to_dtype(DType::F64).unwrap();
    let a_re = Var::from_tensor(&g("A_re")).unwrap();
    let k = bigs_kernel(&a_re, &g("A_im"), &g("C"), &g("log_step"), 64).unwrap();
    let grads = k.sum_all().unwrap().backward().unwrap();
    let ga = grads
        .get(a_re.as_tensor())
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for i in [1, 4, 7, 10] {
        assert_eq!(ga[i], 0.0, "A_re[{i}] is clamped");
    }
    assert!(
        ga.iter()
            .enumerate()
            .any(|(i, g)| ![1, 4, 7, 10].contains(&i) && *g != 0.0)
    );
}

/// Reference: numpy.linalg.eigvalsh of −i·Q for N = 8 (Q the skew part of −LegS + PPᵀ),
/// computed once outside this project.
#[test]
fn hippo_legs_eigenvalues() {
    let ev = legs_skew_eigenvalues(8);
    let want = LEGS8;
    for (g, w) in ev.iter().zip(want) {
        assert!((g - w).abs() < 1e-9, "{ev:?} vs {want:?}");
    }
    // Σλ = tr(−iQ) = 0 and Σλ² = Σ Q²: checks for larger N without a table.
    let n = 64;
    let ev = legs_skew_eigenvalues(n);
    let sum: f64 = ev.iter().sum();
    let sq: f64 = ev.iter().map(|v| v * v).sum();
    let mut q2 = 0.0;
    for i in 0..n {
        for k in 0..n {
            if i != k {
                q2 += 0.25 * ((2 * i + 1) * (2 * k + 1)) as f64;
            }
        }
    }
    assert!(sum.abs() < 1e-8, "sum {sum}");
    assert!((sq - q2).abs() / q2 < 1e-10, "{sq} vs {q2}");
    let (re, im) = a_init_full(AInit::Hippo, n);
    assert_eq!(re, vec![-0.5; n]);
    assert!(im.windows(2).all(|w| w[0] <= w[1]));
    let (re, im) = a_init_half(AInit::Hippo, n);
    assert_eq!((re.len(), im.len()), (32, 32));
    assert!(im.iter().all(|v| *v > 0.0));
}

pub const LEGS8: [f64; 8] = [
    -19.85741037097057,
    -5.354208515030875,
    -1.957794150902806,
    -0.427488712285861,
    0.427488712285860,
    1.957794150902806,
    5.354208515030875,
    19.85741037097057,
];

#[test]
fn lin_and_inv_inits() {
    let (_, lin) = a_init_full(AInit::Lin, 4);
    assert_eq!(
        lin,
        (0..4)
            .map(|n| std::f64::consts::PI * n as f64)
            .collect::<Vec<_>>()
    );
    let (_, inv) = a_init_half(AInit::Inv, 8);
    let want: Vec<f64> = (0..4)
        .map(|n| 8.0 / std::f64::consts::PI * (8.0 / (2 * n + 1) as f64 - 1.0))
        .collect();
    assert_eq!(inv, want);
}

#[test]
fn fused_s4_kernel_equals_the_op_built_kernel_with_gradients() {
    // The CPU's one-node ZOH kernel (engine::s4d_fused) against the tensor-op kernel that other
    // devices run: values and the gradients of all four parameters, f64 and f32, short and
    // long kernels.
    let v = load_st("s4d_kernel.safetensors");
    for (dtype, tol) in [(DType::F64, 1e-9), (DType::F32, 2e-4)] {
        for l in [7usize, 64, 1024] {
            let var = |k: &str| {
                Var::from_tensor(&v[&format!("s4.{k}")].to_dtype(dtype).unwrap()).unwrap()
            };
            let (log_dt, lar, aim, c) = (var("log_dt"), var("log_A_real"), var("A_imag"), var("C"));
            let h = log_dt.dim(0).unwrap();
            let w = Tensor::arange(0f64, (h * l) as f64, &Device::Cpu)
                .unwrap()
                .reshape((h, l))
                .unwrap()
                .affine(0.37, 0.1)
                .unwrap()
                .sin()
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let run = |fused: bool| {
                let _g = ssmlab::engine::cpu::set_enabled(fused);
                let are = lar.as_tensor().exp().unwrap().neg().unwrap();
                let k = s4_kernel(&log_dt, &are, &aim, &c, l, Discretization::Zoh).unwrap();
                let grads = (&k * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let gs: Vec<Tensor> = [&log_dt, &lar, &aim, &c]
                    .iter()
                    .map(|p| grads.get(p.as_tensor()).unwrap().clone())
                    .collect();
                (k, gs)
            };
            let (k_ops, g_ops) = run(false);
            let (k_fused, g_fused) = run(true);
            let ek = max_rel(&k_fused, &k_ops);
            assert!(ek < tol, "{dtype:?} L={l}: kernel differs by {ek:e}");
            for (i, (a, b)) in g_fused.iter().zip(&g_ops).enumerate() {
                let e = max_rel(a, b);
                assert!(
                    e < tol * 10.0,
                    "{dtype:?} L={l}: gradient {i} differs by {e:e}"
                );
            }
        }
    }
}
