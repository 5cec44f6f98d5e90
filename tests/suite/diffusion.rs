//! DiffuSSM and the diffusion process: schedules, sampler steps, the model's structure and
//! gradients, and a whole (tiny) training run through the binary.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ssmlab::engine::diffusion::{
    BetaSchedule, DiffusionConfig, NoiseSchedule, SamplerKind, guided_eps, sampling_timesteps,
};
use ssmlab::engine::diffussm::{Diffussm, DiffussmConfig, build_diffussm};
use ssmlab::engine::init::normal;
use ssmlab::engine::ssm::KernelMode;
use ssmlab::runs::samples::list_sample_sets;

use crate::common::ssmlab;
use crate::common::{fd_check, fixture, max_abs};

pub(crate) fn tiny(kernel: KernelMode, patch: usize, hourglass: usize) -> DiffussmConfig {
    DiffussmConfig {
        image_height: 4,
        image_width: 6,
        in_channels: 2,
        patch_size: patch,
        hidden_size: 8,
        num_layers: 2,
        hourglass,
        fusion_width: 12,
        state_size: 4,
        kernel,
        num_classes: 3,
        frequency_size: 16,
        ..DiffussmConfig::default()
    }
}

/// Replaces every all-zero variable (adaLN-Zero modulations, final layer) by small noise, as
/// after some training, so that gradients reach the whole network.
pub(crate) fn wake(varmap: &VarMap, rng: &mut ChaCha8Rng) {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort(); // name order: the same draws every run (a HashMap's order is not)
    for v in names.into_iter().map(|n| &data[n]) {
        let zero = v
            .as_tensor()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            == 0.0;
        if zero {
            let t = normal(rng, v.shape().clone(), 0.0, 0.3, v.dtype(), &Device::Cpu).unwrap();
            v.set(&t).unwrap();
        }
    }
}

#[test]
fn schedule_closed_forms_match_direct_computation() {
    let s = NoiseSchedule::new(&DiffusionConfig::default()).unwrap();
    assert_eq!(s.len(), 1000);
    assert!((s.betas[0] - 1e-4).abs() < 1e-15 && (s.betas[999] - 0.02).abs() < 1e-15);
    let mut prod = 1.0;
    for t in 0..1000 {
        prod *= 1.0 - s.betas[t];
        assert!((s.alpha_bar[t] - prod).abs() < 1e-12, "alpha_bar[{t}]");
        // q(x_{t-1} | x_t, x0) from Bayes' rule on the two Gaussians
        // N(x_t; √α_t x_{t-1}, β_t) · N(x_{t-1}; √ᾱ_{t-1} x0, 1 − ᾱ_{t-1}).
        let ab_prev = if t == 0 { 1.0 } else { s.alpha_bar[t - 1] };
        let (a, b) = (1.0 - s.betas[t], s.betas[t]);
        let prec = a / b
            + if t == 0 {
                f64::INFINITY
            } else {
                1.0 / (1.0 - ab_prev)
            };
        let var = 1.0 / prec;
        assert!(
            (s.posterior_variance[t] - var).abs() <= 1e-12 * var.max(1e-12),
            "posterior variance at {t}"
        );
        if t > 0 {
            let c2 = var * a.sqrt() / b; // coefficient of x_t
            let c1 = var * ab_prev.sqrt() / (1.0 - ab_prev); // coefficient of x0
            assert!((s.posterior_mean_coef1[t] - c1).abs() < 1e-10 * c1.abs().max(1.0));
            assert!((s.posterior_mean_coef2[t] - c2).abs() < 1e-10 * c2.abs().max(1.0));
        }
    }
    // cosine: ᾱ_t = f(t+1)/f(0) wherever β was not clipped
    let c = NoiseSchedule::new(&DiffusionConfig {
        schedule: BetaSchedule::Cosine,
        ..DiffusionConfig::default()
    })
    .unwrap();
    let f = |i: f64| {
        ((i / 1000.0 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    for t in [0usize, 10, 500, 900] {
        assert!(
            (c.alpha_bar[t] - f(t as f64 + 1.0) / f(0.0)).abs() < 1e-12,
            "cosine at {t}"
        );
    }
    assert!(c.betas.iter().all(|&b| b > 0.0 && b <= 0.999));
    // sampling subsequences start at T−1 and descend
    assert_eq!(sampling_timesteps(1000, 4), vec![999, 749, 499, 249]);
    assert_eq!(sampling_timesteps(1000, 1000)[999], 0);
    assert!(
        NoiseSchedule::new(&DiffusionConfig {
            beta_end: 1.5,
            ..DiffusionConfig::default()
        })
        .is_err()
    );
}

#[test]
fn ddpm_and_ddim_steps_match_the_numpy_reference() {
    let text = std::fs::read_to_string(fixture("diffusion/steps.json")).unwrap();
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shape: Vec<usize> = serde_json::from_value(j["shape"].clone()).unwrap();
    let tensor = |k: &serde_json::Value| {
        let v: Vec<f64> = serde_json::from_value(k.clone()).unwrap();
        Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap()
    };
    let (xt, eps, z) = (tensor(&j["xt"]), tensor(&j["eps"]), tensor(&j["z"]));
    let s = NoiseSchedule::new(&DiffusionConfig::default()).unwrap();
    assert!((s.alpha_bar[999] - j["alpha_bar_999"].as_f64().unwrap()).abs() < 1e-14);
    for case in j["cases"].as_array().unwrap() {
        let kind: SamplerKind = case["sampler"].as_str().unwrap().parse().unwrap();
        let t = case["t"].as_u64().unwrap() as usize;
        let t_prev = case["t_prev"].as_u64().map(|v| v as usize);
        let clip = case["clip"].as_bool().unwrap();
        let (x, x0) = s.step(kind, &xt, &eps, t, t_prev, Some(&z), clip).unwrap();
        let err = max_abs(&x, &tensor(&case["expected"]));
        assert!(err < 1e-12, "{case:?}: x error {err:e}");
        assert!(max_abs(&x0, &tensor(&case["x0"])) < 1e-12);
    }
    // a stochastic step without noise is an error, not a silent deterministic step
    assert!(
        s.step(SamplerKind::Ddpm, &xt, &eps, 500, Some(499), None, false)
            .is_err()
    );
}

#[test]
fn q_sample_mixes_signal_and_noise_per_image() {
    let s = NoiseSchedule::new(&DiffusionConfig::default()).unwrap();
    let x0 = Tensor::ones((2, 1, 1, 2), DType::F64, &Device::Cpu).unwrap();
    let eps = Tensor::full(2.0, (2, 1, 1, 2), &Device::Cpu).unwrap();
    let xt = s.q_sample(&x0, &eps, &[0, 999]).unwrap();
    let v = xt.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for (i, t) in [(0usize, 0usize), (2, 999)] {
        let want = s.alpha_bar[t].sqrt() + 2.0 * (1.0 - s.alpha_bar[t]).sqrt();
        assert!((v[i] - want).abs() < 1e-12 && (v[i + 1] - want).abs() < 1e-12);
    }
}

#[test]
fn tokens_follow_raster_order_and_round_trip() {
    let dev = Device::Cpu;
    for (patch, m) in [(1, 2), (1, 4), (2, 2), (2, 1)] {
        let cfg = tiny(KernelMode::PerChannel, patch, m);
        let (model, _) =
            build_diffussm(&cfg, DType::F64, &dev, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        let x = Tensor::arange(0f64, (2 * 2 * 4 * 6) as f64, &dev)
            .unwrap()
            .reshape((2, 2, 4, 6))
            .unwrap();
        let t = model.tokens(&x).unwrap();
        assert_eq!(t.dims(), &[2, cfg.stream_len(), cfg.token_values()]);
        assert_eq!(max_abs(&model.untokens(&t).unwrap(), &x), 0.0);
        if (patch, m) == (1, 2) {
            // stream token j holds pixels jM … jM+M−1 of the raster, channels innermost
            let v = t.get(0).unwrap().get(1).unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(v, vec![2.0, 26.0, 3.0, 27.0]);
        }
        if patch == 2 && m == 1 {
            // patch (0, 1) of image 0: rows 0–1, cols 2–3, channel 0 then channel 1
            let v = t.get(0).unwrap().get(1).unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(v, vec![2.0, 3.0, 8.0, 9.0, 26.0, 27.0, 32.0, 33.0]);
        }
    }
}

/// Every block of a freshly initialised model (width 8) returns its input: adaLN-Zero.
pub(crate) fn assert_blocks_are_identity(model: &Diffussm, rng: &mut ChaCha8Rng) {
    let dev = Device::Cpu;
    let x = normal(
        rng,
        (2, model.cfg.stream_len(), 8),
        0.0,
        1.0,
        DType::F32,
        &dev,
    )
    .unwrap();
    let c = model.condition(&[10.0, 900.0], &[0, 2]).unwrap();
    for b in &model.blocks {
        assert_eq!(max_abs(&b.forward(&x, &c).unwrap(), &x), 0.0);
    }
}

#[test]
fn adaln_zero_makes_every_block_the_identity_and_the_output_zero_at_init() {
    let dev = Device::Cpu;
    for kernel in [KernelMode::PerChannel, KernelMode::Shared] {
        let cfg = tiny(kernel, 1, 2);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (model, _) = build_diffussm(&cfg, DType::F32, &dev, &mut rng).unwrap();
        assert_blocks_are_identity(&model, &mut rng);
        let img = normal(&mut rng, (2, 2, 4, 6), 0.0, 1.0, DType::F32, &dev).unwrap();
        let out = model.forward(&img, &[10.0, 900.0], &[1, 2]).unwrap();
        assert_eq!(out.dims(), img.dims());
        assert_eq!(
            out.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
    }
}

pub(crate) fn mse_loss(model: &Diffussm, x: &Tensor, eps: &Tensor) -> Tensor {
    let out = model.forward(x, &[3.0, 700.0], &[2, 3]).unwrap();
    (out - eps).unwrap().sqr().unwrap().mean_all().unwrap()
}

/// Every variable of `model` gets a non-zero gradient of the MSE loss on random images, and
/// every gradient matches finite differences; returns the variables' names.
pub(crate) fn assert_gradients(
    model: &Diffussm,
    varmap: &VarMap,
    rng: &mut ChaCha8Rng,
    label: &str,
) -> Vec<String> {
    let dev = Device::Cpu;
    let x = normal(rng, (2, 2, 4, 6), 0.0, 1.0, DType::F64, &dev).unwrap();
    let eps = normal(rng, (2, 2, 4, 6), 0.0, 1.0, DType::F64, &dev).unwrap();
    let grads = mse_loss(model, &x, &eps).backward().unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for n in &names {
        let g = grads
            .get(data[*n].as_tensor())
            .unwrap_or_else(|| panic!("{label}: no gradient for {n}"));
        assert!(
            crate::common::sq_norm(g) > 0.0,
            "{label}: zero gradient for {n}"
        );
    }
    let vars: Vec<(&str, &candle_core::Var)> =
        names.iter().map(|n| (n.as_str(), &data[*n])).collect();
    let worst = fd_check(&vars, || mse_loss(model, &x, &eps), 2, 1e-4);
    assert!(worst < 1e-5, "{label}: worst relative error {worst:e}");
    names.into_iter().cloned().collect()
}

#[test]
fn every_parameter_gets_a_gradient_that_matches_finite_differences() {
    for kernel in [KernelMode::PerChannel, KernelMode::Shared] {
        let cfg = tiny(kernel, 1, 2);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (model, varmap) = build_diffussm(&cfg, DType::F64, &Device::Cpu, &mut rng).unwrap();
        wake(&varmap, &mut rng);
        assert_gradients(&model, &varmap, &mut rng, &format!("{kernel:?}"));
    }
}

#[test]
fn guidance_one_is_conditional_and_zero_is_unconditional() {
    let dev = Device::Cpu;
    let cfg = tiny(KernelMode::PerChannel, 2, 2);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (model, varmap) = build_diffussm(&cfg, DType::F32, &dev, &mut rng).unwrap();
    wake(&varmap, &mut rng);
    let x = normal(&mut rng, (2, 2, 4, 6), 0.0, 1.0, DType::F32, &dev).unwrap();
    let y = [Some(0), Some(2)];
    let cond = model.forward(&x, &[500.0, 500.0], &[0, 2]).unwrap();
    let unc = model.forward(&x, &[500.0, 500.0], &[3, 3]).unwrap();
    assert!(max_abs(&guided_eps(&model, &x, 500, &y, 1.0).unwrap(), &cond) < 1e-6);
    assert!(max_abs(&guided_eps(&model, &x, 500, &y, 0.0).unwrap(), &unc) < 1e-5);
    let g3 = guided_eps(&model, &x, 500, &y, 3.0).unwrap();
    let want = (&unc + ((&cond - &unc).unwrap() * 3.0).unwrap()).unwrap();
    assert!(max_abs(&g3, &want) < 1e-5);
    assert!(max_abs(&cond, &unc) > 1e-4, "the class must matter");
    // out-of-range class: an error naming the range
    let e = model
        .forward(&x, &[1.0, 1.0], &[0, 4])
        .unwrap_err()
        .to_string();
    assert!(e.contains("class 4 out of range"), "{e}");
}

#[test]
fn config_errors_name_the_field() {
    let mut c = tiny(KernelMode::PerChannel, 1, 5);
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("hourglass") && e.contains("24 patch tokens"),
        "{e}"
    );
    c.hourglass = 2;
    c.patch_size = 5;
    assert!(c.validate().unwrap_err().to_string().contains("patch_size"));
}

#[test]
fn smoke_run_writes_samples_checkpoints_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    let out = ssmlab(
        &[
            "train",
            "--preset",
            "diffussm-smoke",
            "--runs-dir",
            runs_s,
            "--stop-at",
            "3",
        ],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = runs.join("diffussm-smoke");
    for f in [
        "classifier.json",
        "classifier.safetensors",
        "step-3/ema.safetensors",
        "step-3/model.safetensors",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("classifier.json")).unwrap())
            .unwrap();
    assert!(info["test_accuracy"].as_f64().unwrap() > 0.3, "{info}");
    let out = ssmlab(
        &["train", "--resume", "diffussm-smoke", "--runs-dir", runs_s],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sets = list_sample_sets(&run);
    let steps: Vec<u64> = sets.iter().map(|s| s.meta.step).collect();
    assert_eq!(steps, vec![3, 6]);
    for s in &sets {
        assert_eq!(
            s.meta.seed, sets[0].meta.seed,
            "same seed across checkpoints"
        );
        assert_eq!(s.meta.cols, 10);
        assert_eq!(s.meta.class_names[9], "Ankle boot");
        let img = image::open(s.grid_path()).unwrap();
        assert_eq!((img.width(), img.height()), (10 * 29 - 1, 28));
        for f in &s.meta.trajectory {
            assert!(s.path.join(&f.file).is_file());
        }
    }
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 6);
    assert!(
        last["eval_cas"].as_f64().is_some(),
        "CAS is logged at the end: {last}"
    );
    assert!(last["images"].as_u64() == Some(48));
    // every step logged once across the two sessions
    let logged: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(logged, vec![2, 3, 4, 6]);
}

#[test]
fn bad_image_input_is_one_clear_line_and_no_run() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let out = ssmlab(
        &[
            "train",
            "--preset",
            "diffussm-smoke",
            "--runs-dir",
            runs.to_str().unwrap(),
            "--set",
            "data.images=nowhere",
        ],
        tmp.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere") && err.lines().count() == 1, "{err}");
    let out = ssmlab(
        &[
            "train",
            "--preset",
            "diffussm-smoke",
            "--runs-dir",
            runs.to_str().unwrap(),
            "--set",
            "model.in_channels=3",
        ],
        tmp.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("model.in_channels") && err.contains("1 channel"),
        "{err}"
    );
    assert!(!runs.join("diffussm-smoke").exists());
}

#[test]
fn sampling_and_averages_keep_no_backward_graph() {
    use ssmlab::engine::diffusion::{SampleOptions, sample};
    // A tensor that records its graph keeps every earlier step's activations alive: sampling
    // and the EMA must hand out plain values.
    let dev = Device::Cpu;
    let cfg = tiny(KernelMode::PerChannel, 1, 2);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (model, varmap) = build_diffussm(&cfg, DType::F32, &dev, &mut rng).unwrap();
    wake(&varmap, &mut rng);
    let sched = NoiseSchedule::new(&DiffusionConfig::default()).unwrap();
    let opts = SampleOptions {
        sampler: SamplerKind::Ddpm,
        steps: 5,
        guidance: 2.0,
        clip: true,
        trajectory_frames: 3,
    };
    let s = sample(
        &model,
        &sched,
        &[Some(1), None],
        &opts,
        &mut rng,
        &mut |_, _| true,
    )
    .unwrap();
    assert!(!s.images.track_op());
    assert_eq!(s.trajectory.len(), 3);
    assert!(s.trajectory.iter().all(|(_, x)| !x.track_op()));
    assert_eq!(s.trajectory[0].0, 999);
    let params: Vec<ssmlab::train::optim::Param> = varmap
        .all_vars()
        .into_iter()
        .enumerate()
        .map(|(i, var)| ssmlab::train::optim::Param {
            name: format!("p{i}"),
            var,
            weight_decay: 0.0,
            lr_scale: 1.0,
        })
        .collect();
    let mut ema = ssmlab::train::optim::Ema::new(&params, 0.9).unwrap();
    ema.update(&params).unwrap();
    ema.update(&params).unwrap();
    assert!(ema.tensors.iter().all(|t| !t.track_op()));
}

#[test]
fn shipped_diffusion_run_opens_with_ema_and_samples() {
    let run = Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/diffussm-fashion");
    let m = ssmlab::sample::DiffusionModel::open(&run, None, true).unwrap();
    assert!(m.ema, "the EMA weights are the sampling weights");
    assert_eq!(m.class_names[1], "Trouser");
    assert!(
        m.check_class(Some(10))
            .unwrap_err()
            .to_string()
            .contains("classes 0–9")
    );
    let opts = m.options(SamplerKind::Ddim { eta: 0.0 }, 2, 2.0, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let s = ssmlab::engine::diffusion::sample(
        &m.model,
        &m.sched,
        &[Some(1), Some(7)],
        &opts,
        &mut rng,
        &mut |_, _| true,
    )
    .unwrap();
    assert_eq!(s.images.dims(), &[2, 1, 28, 28]);
    let v = s.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)));
    // a BiGS run is not a diffusion model: the message says where to go
    let bigs = Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints/bigs-mobydick");
    let e = ssmlab::sample::DiffusionModel::open(&bigs, None, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("ssmlab probe"), "{e}");
}

#[test]
fn sharded_gradients_equal_the_whole_batch() {
    use ssmlab::train::parallel::{resolve_shards, shard_ranges, sharded_grads};
    for (b, s) in [(5, 3), (32, 2), (3, 7), (1, 1)] {
        let r = shard_ranges(b, s);
        assert_eq!(r.len(), s.min(b));
        assert_eq!((r[0].start, r.last().unwrap().end), (0, b));
        assert!(r.windows(2).all(|w| w[0].end == w[1].start));
        let lens: Vec<usize> = r.iter().map(|r| r.len()).collect();
        assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
    }
    assert_eq!(resolve_shards(8, 3), 3, "never more shards than images");
    assert!(resolve_shards(0, 64) >= 1);
    let dev = Device::Cpu;
    let cfg = tiny(KernelMode::PerChannel, 1, 2);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (model, varmap) = build_diffussm(&cfg, DType::F64, &dev, &mut rng).unwrap();
    wake(&varmap, &mut rng);
    let x = normal(&mut rng, (5, 2, 4, 6), 0.0, 1.0, DType::F64, &dev).unwrap();
    let eps = normal(&mut rng, (5, 2, 4, 6), 0.0, 1.0, DType::F64, &dev).unwrap();
    let t = [3.0, 700.0, 20.0, 999.0, 0.0];
    let y = [2, 3, 0, 1, 3];
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let vars: Vec<&candle_core::Var> = names.iter().map(|n| &data[*n]).collect();
    let total = eps.elem_count() as f64;
    let run = |shards| {
        sharded_grads(&vars, 5, shards, |r| {
            let (s, n) = (r.start, r.len());
            let out = model.forward(&x.narrow(0, s, n)?, &t[r.clone()], &y[r])?;
            Ok(((out - eps.narrow(0, s, n)?)?.sqr()?.sum_all()? / total)?)
        })
        .unwrap()
    };
    let (l1, g1) = run(1);
    let whole = (model.forward(&x, &t, &y).unwrap() - &eps)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!((l1 - whole).abs() < 1e-12, "one shard is the plain mean");
    let (l3, g3) = run(3);
    assert!((l1 - l3).abs() < 1e-12, "loss {l1} vs {l3}");
    for ((n, a), b) in names.iter().zip(&g1).zip(&g3) {
        assert!(
            !a.track_op() && !b.track_op(),
            "{n}: gradients keep no graph"
        );
        let d = max_abs(a, b);
        let m = max_abs(a, &a.zeros_like().unwrap()).max(1e-12);
        assert!(
            d / m < 1e-9,
            "{n}: sharded gradient differs by {d:e} (max {m:e})"
        );
    }
}

#[test]
fn sincos_positions_and_unit_conditioning_are_recorded_choices() {
    use ssmlab::engine::diffussm::{CondInit, PosEmbed, sincos_2d};
    let dev = Device::Cpu;
    let cfg = DiffussmConfig {
        patch_size: 4,
        hourglass: 1,
        hidden_size: 8,
        pos_embed: PosEmbed::Sincos2d,
        cond_init: CondInit::Unit,
        ..DiffussmConfig::default()
    };
    // 28×28 in 4×4 patches: a 7×7 grid; token 8 is row 1, column 1; token 13 row 1, column 6
    let p = sincos_2d(&cfg, DType::F64, &dev).unwrap();
    assert_eq!(p.dims(), &[49, 8]);
    let row = |j: usize| p.get(j).unwrap().to_vec1::<f64>().unwrap();
    let w1 = 1.0 / 10000f64.powf(0.5);
    let expect = |r: f64, c: f64| {
        vec![
            r.sin(),
            (r * w1).sin(),
            r.cos(),
            (r * w1).cos(),
            c.sin(),
            (c * w1).sin(),
            c.cos(),
            (c * w1).cos(),
        ]
    };
    for (j, r, c) in [(0, 0.0, 0.0), (8, 1.0, 1.0), (13, 1.0, 6.0), (48, 6.0, 6.0)] {
        let got = row(j);
        for (a, b) in got.iter().zip(expect(r, c)) {
            assert!((a - b).abs() < 1e-12, "token {j}: {got:?}");
        }
    }
    // hourglass M = 2 on 2×2 patches: stream token j starts at patch 2j
    let c2 = DiffussmConfig {
        patch_size: 2,
        hourglass: 2,
        ..cfg.clone()
    };
    let p2 = sincos_2d(&c2, DType::F64, &dev).unwrap();
    assert_eq!(p2.dims(), &[98, 8]);
    let t8 = p2.get(8).unwrap().to_vec1::<f64>().unwrap(); // patch 16 = row 1, column 2
    assert!((t8[0] - 1f64.sin()).abs() < 1e-12 && (t8[4] - 2f64.sin()).abs() < 1e-12);
    // unit conditioning: an N(0, 1) label table; DiT's N(0, 0.02) by default
    let std_of = |cfg: &DiffussmConfig| {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (_, vm) = build_diffussm(cfg, DType::F64, &dev, &mut rng).unwrap();
        let data = vm.data().lock().unwrap();
        let t = data["y_embedder.embedding_table"].as_tensor().clone();
        t.sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .sqrt()
    };
    let unit = std_of(&DiffussmConfig {
        hidden_size: 64,
        ..cfg.clone()
    });
    let dit = std_of(&DiffussmConfig {
        hidden_size: 64,
        cond_init: CondInit::Dit,
        ..cfg.clone()
    });
    assert!((0.85..1.15).contains(&unit), "unit table std {unit}");
    assert!((0.015..0.025).contains(&dit), "DiT table std {dit}");
    // configs written before these fields existed read as no positions and DiT's init
    let mut v: serde_json::Value = serde_json::from_str(&cfg.to_json()).unwrap();
    v.as_object_mut().unwrap().remove("pos_embed");
    v.as_object_mut().unwrap().remove("cond_init");
    let old: DiffussmConfig = serde_json::from_value(v).unwrap();
    assert_eq!(
        (old.pos_embed, old.cond_init),
        (PosEmbed::None, CondInit::Dit)
    );
    let mut odd = cfg.clone();
    odd.hidden_size = 6;
    let e = odd.validate().unwrap_err().to_string();
    assert!(
        e.contains("sincos2d") && e.contains("divisible by 4"),
        "{e}"
    );
}

/// The one training loop resumes a diffusion run exactly: a run stopped at step 3 and resumed
/// logs the same losses, eval losses and CAS as one that ran through, and ends with the same
/// weights, EMA weights and optimiser state, bit for bit.
#[test]
fn resumed_diffusion_run_reproduces_the_uninterrupted_one_bitwise() {
    use ssmlab::train::Outcome;
    use ssmlab::train::diffusion::DiffusionTrainer;
    use ssmlab::train::presets::diffusion_preset;
    use std::sync::atomic::AtomicBool;

    let tmp = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let mut cfg = diffusion_preset("diffussm-smoke").unwrap();
    cfg.train.sample_every = 0;
    let mut a = DiffusionTrainer::create(cfg.clone(), &tmp.path().join("a"), &mut |_| {}).unwrap();
    assert_eq!(a.run(&stop, None, &mut |_| {}).unwrap(), Outcome::Finished);

    let mut b = DiffusionTrainer::create(cfg, &tmp.path().join("b"), &mut |_| {}).unwrap();
    assert_eq!(
        b.run(&stop, Some(3), &mut |_| {}).unwrap(),
        Outcome::Stopped
    );
    let run_b = b.run.clone();
    drop(b);
    let mut b = DiffusionTrainer::resume(run_b.clone(), &[]).unwrap();
    assert_eq!(b.step(), 3);
    assert_eq!(b.run(&stop, None, &mut |_| {}).unwrap(), Outcome::Finished);

    let records = |p: &Path| -> Vec<String> {
        let text = std::fs::read_to_string(p.join("metrics.jsonl")).unwrap();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!(
                    "{} {} {} {} {}",
                    v["step"], v["loss"], v["grad_norm"], v["eval_loss"], v["eval_cas"]
                )
            })
            .collect()
    };
    let (ra, rb) = (records(&a.run.path), records(&run_b.path));
    assert_eq!(ra.len(), 4, "{ra:?}");
    assert_eq!(ra, rb, "the resumed run logged different values");
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let wa = std::fs::read(a.run.checkpoint_path(6).join(f)).unwrap();
        let wb = std::fs::read(run_b.checkpoint_path(6).join(f)).unwrap();
        assert!(wa == wb, "{f} differs after the resume");
    }
}
