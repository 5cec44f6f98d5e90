//! The fused DiffuSSM block (`engine::diffussm_fused`, one autograd node with a hand-written
//! backward) against the same block built from candle ops (the device-generic path CUDA runs):
//! outputs and the gradients of every variable, of the input and of the conditioning, for
//! per-channel and shared kernels, hourglass ratios 1, 2 and 4, every activation, dense and FFT
//! convolution, f64 and f32.

use candle_core::{DType, Device, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ssmlab::engine::conv::ConvPath;
use ssmlab::engine::cpu::set_enabled;
use ssmlab::engine::diffussm::{DiffussmConfig, build_diffussm};
use ssmlab::engine::init::normal;
use ssmlab::engine::nn::Activation;
use ssmlab::engine::ssm::KernelMode;

use crate::common::max_rel;

struct Case {
    kernel: KernelMode,
    m: usize,
    act: Activation,
    conv: ConvPath,
}

/// A tiny DiffuSSM (4×6 images of 2 channels, L = 24, D = 8, F = 12, two blocks).
fn tiny(kernel: KernelMode, m: usize, act: Activation, conv: ConvPath) -> DiffussmConfig {
    DiffussmConfig {
        image_height: 4,
        image_width: 6,
        in_channels: 2,
        patch_size: 1,
        hidden_size: 8,
        num_layers: 2,
        hourglass: m,
        fusion_width: 12,
        state_size: 4,
        kernel,
        activation: act,
        conv,
        num_classes: 3,
        frequency_size: 16,
        ..DiffussmConfig::default()
    }
}

/// Worst relative errors (output, gradients) of the fused model against the op-built one.
fn compare(c: &Case, dt: DType) -> (f64, f64) {
    let cfg = tiny(c.kernel, c.m, c.act, c.conv);
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (model, varmap) = build_diffussm(&cfg, dt, &dev, &mut rng).unwrap();
    let vars: Vec<(String, Var)> = {
        let d = varmap.data().lock().unwrap();
        let mut v: Vec<_> = d.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    // Non-zero modulations, biases and output layer (adaLN-Zero starts them at zero).
    for (name, v) in &vars {
        if !name.contains(".ssm_") {
            let noise = normal(&mut rng, v.shape().clone(), 0.0, 0.2, dt, &dev).unwrap();
            v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
        }
    }
    let x = Var::from_tensor(&normal(&mut rng, (3, 2, 4, 6), 0.0, 1.0, dt, &dev).unwrap()).unwrap();
    let w = normal(&mut rng, (3, 2, 4, 6), 0.0, 1.0, dt, &dev).unwrap();
    let run = |fused: bool| {
        let _g = set_enabled(fused);
        let out = model
            .forward(x.as_tensor(), &[3.0, 500.0, 999.0], &[0, 2, 3])
            .unwrap();
        let loss = (&out * &w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let mut gs = vec![grads.get(x.as_tensor()).expect("input gradient").clone()];
        for (n, v) in &vars {
            gs.push(
                grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {n}"))
                    .clone(),
            );
        }
        (out, gs)
    };
    let (want, want_g) = run(false);
    let (got, got_g) = run(true);
    let out_err = max_rel(&got, &want);
    let grad_err = got_g
        .iter()
        .zip(&want_g)
        .enumerate()
        .map(|(i, (g, w))| {
            let e = max_rel(g, w);
            if std::env::var("SSMLAB_DEBUG_GRADS").is_ok() {
                let name = if i == 0 {
                    "input"
                } else {
                    vars[i - 1].0.as_str()
                };
                eprintln!("{name}: {e:e}");
            }
            e
        })
        .fold(0f64, f64::max);
    (out_err, grad_err)
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            kernel: KernelMode::PerChannel,
            m: 1,
            act: Activation::GeluTanh,
            conv: ConvPath::Fft,
        },
        Case {
            kernel: KernelMode::PerChannel,
            m: 2,
            act: Activation::Silu,
            conv: ConvPath::Dense,
        },
        Case {
            kernel: KernelMode::PerChannel,
            m: 4,
            act: Activation::Gelu,
            conv: ConvPath::Fft,
        },
        Case {
            kernel: KernelMode::Shared,
            m: 2,
            act: Activation::GeluTanh,
            conv: ConvPath::Fft,
        },
        Case {
            kernel: KernelMode::Shared,
            m: 1,
            act: Activation::Gelu,
            conv: ConvPath::Dense,
        },
    ]
}

#[test]
fn fused_block_equals_the_op_built_block_in_f64() {
    for c in cases() {
        let (out, grad) = compare(&c, DType::F64);
        let what = format!("{:?} M={} {:?} {:?}", c.kernel, c.m, c.act, c.conv);
        assert!(out < 1e-10, "{what}: output differs by {out:e}");
        // candle's own GELU backwards (the op-built side) are approximations (the tanh form
        // uses 6-digit constants: 0.0356774, 0.797885, …): with GELU the gradients agree to
        // ~1e-6 in any precision; with SiLU to f64 rounding.
        let tol = if c.act == Activation::Silu {
            1e-9
        } else {
            1e-5
        };
        assert!(grad < tol, "{what}: a gradient differs by {grad:e}");
    }
}

#[test]
fn fused_block_equals_the_op_built_block_in_f32() {
    for c in cases() {
        let (out, grad) = compare(&c, DType::F32);
        let what = format!("{:?} M={} {:?} {:?}", c.kernel, c.m, c.act, c.conv);
        assert!(out < 1e-4, "{what}: output differs by {out:e}");
        assert!(grad < 2e-3, "{what}: a gradient differs by {grad:e}");
    }
}

#[test]
fn fused_block_output_does_not_depend_on_the_batch_it_is_in() {
    // Every image of a batch is computed on its own rows: image 0 alone equals image 0 of a
    // batch of three (catches a per-batch modulation or kernel indexed by the wrong row).
    let cfg = tiny(
        KernelMode::PerChannel,
        2,
        Activation::GeluTanh,
        ConvPath::Auto,
    );
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (model, varmap) = build_diffussm(&cfg, DType::F64, &dev, &mut rng).unwrap();
    for v in varmap.all_vars() {
        let noise = normal(&mut rng, v.shape().clone(), 0.0, 0.2, DType::F64, &dev).unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
    let x = normal(&mut rng, (3, 2, 4, 6), 0.0, 1.0, DType::F64, &dev).unwrap();
    let all = model.forward(&x, &[3.0, 500.0, 999.0], &[0, 2, 3]).unwrap();
    let one = model
        .forward(&x.narrow(0, 1, 1).unwrap(), &[500.0], &[2])
        .unwrap();
    let d = max_rel(&one, &all.narrow(0, 1, 1).unwrap());
    assert!(d < 1e-12, "image 1 differs by {d:e} alone vs in a batch");
}

#[test]
fn the_sampling_model_predicts_the_same_noise_without_a_graph() {
    // `for_sampling` detaches the weights and computes the SSM kernels once: its outputs are
    // bitwise the trained model's, and they record no autograd graph.
    for (kernel, conv) in [
        (KernelMode::PerChannel, ConvPath::Fft),
        (KernelMode::Shared, ConvPath::Dense),
    ] {
        let cfg = tiny(kernel, 2, Activation::GeluTanh, conv);
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (model, varmap) = build_diffussm(&cfg, DType::F32, &dev, &mut rng).unwrap();
        for v in varmap.all_vars() {
            let noise = normal(&mut rng, v.shape().clone(), 0.0, 0.2, DType::F32, &dev).unwrap();
            v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
        }
        let x = normal(&mut rng, (2, 2, 4, 6), 0.0, 1.0, DType::F32, &dev).unwrap();
        let want = model.forward(&x, &[10.0, 900.0], &[1, 3]).unwrap();
        assert!(want.track_op(), "the trained model records its graph");
        let frozen = model.for_sampling().unwrap();
        for _ in 0..2 {
            let got = frozen.forward(&x, &[10.0, 900.0], &[1, 3]).unwrap();
            assert!(
                !got.track_op(),
                "{kernel:?}: the sampling model records a graph"
            );
            let d = crate::common::max_abs(&got, &want);
            assert_eq!(d, 0.0, "{kernel:?}: sampling model differs by {d:e}");
        }
    }
}

#[test]
fn shipped_checkpoint_samples_the_same_images_on_the_fused_and_op_built_paths() {
    // The shipped diffussm-fashion run (EMA weights): 10 guided DDIM steps from one seed give
    // the same images (to 1e-4) through the fused CPU nodes and through candle's ops.
    use ssmlab::engine::diffusion::{SamplerKind, sample};
    let run = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/diffussm-fashion");
    let m = ssmlab::sample::DiffusionModel::open(&run, None, true).unwrap();
    let opts = m.options(SamplerKind::Ddim { eta: 0.0 }, 10, 2.0, 0);
    let draw = |fused: bool| {
        let _g = set_enabled(fused);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        sample(
            &m.model,
            &m.sched,
            &[Some(0), Some(3), Some(7), None],
            &opts,
            &mut rng,
            &mut |_, _| true,
        )
        .unwrap()
        .images
    };
    let d = crate::common::max_abs(&draw(true), &draw(false));
    assert!(d < 1e-4, "images differ by {d:e}");
}
