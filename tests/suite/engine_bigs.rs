//! The BiGS masked LM against the PyTorch reference (`bigs_tiny`), gradients, and bad input.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ssmlab::engine::bigs::{BigsConfig, Mode, build_bigs, load_bigs};
use ssmlab::engine::conv::ConvPath;

use crate::common::{fd_check, fixture, load_st, max_rel};

fn tiny_cfg() -> BigsConfig {
    BigsConfig::from_json_file(&fixture("bigs_tiny/config.json")).unwrap()
}

fn inputs() -> (Tensor, Tensor, Tensor) {
    let i = load_st("bigs_tiny/inputs.safetensors");
    (
        i["input_ids"].clone(),
        i["token_type_ids"].clone(),
        i["labels"].clone(),
    )
}

#[test]
fn bigs_tiny_matches_reference_from_both_checkpoint_formats() {
    let exp = load_st("bigs_tiny/expected.safetensors");
    let dev = crate::common::device();
    let (ids, tt, labels) = inputs();
    let (ids, tt, labels) = (
        ids.to_device(&dev).unwrap(),
        tt.to_device(&dev).unwrap(),
        labels.to_device(&dev).unwrap(),
    );
    let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
    let mut logits_by_file = Vec::new();
    for file in ["model.safetensors", "pytorch_model.bin"] {
        let lm = load_bigs(
            &tiny_cfg(),
            &fixture(&format!("bigs_tiny/{file}")),
            DType::F32,
            &dev,
        )
        .unwrap();
        assert_eq!(
            lm.report.unused,
            vec!["bigs.pooler.dense.bias", "bigs.pooler.dense.weight"]
        );
        let m = &lm.model;
        let hidden = m.hidden_states(&ids, Some(&tt), Mode::Eval).unwrap();
        let e = max_rel(&cpu(&hidden), &exp["last_hidden_state"]);
        assert!(e < 1e-4, "{file}: last_hidden_state rel err {e:e}");
        let logits = cpu(&m.logits(&hidden).unwrap());
        let e = max_rel(&logits, &exp["logits"]);
        assert!(e < 1e-4, "{file}: logits rel err {e:e}");
        logits_by_file.push(logits);

        let out = m.mlm_loss(&ids, Some(&tt), &labels, Mode::Eval).unwrap();
        let loss = out.loss.to_scalar::<f32>().unwrap() as f64;
        let want = exp["loss_f64"]
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (loss - want).abs() / want < 1e-5,
            "{file}: loss {loss} vs {want}"
        );
        assert_eq!(
            out.logits.dims(),
            &[18, 97],
            "head only at the 18 masked positions"
        );

        let grads = out.loss.backward().unwrap();
        let vars = lm.varmap.data().lock().unwrap();
        let mut checked = 0;
        for (name, var) in vars.iter() {
            let want = &exp[&format!("grad.{name}")];
            let got = cpu(grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{file}: no gradient for {name}")));
            let scale = want
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64;
            let err = max_rel(&got, want) * scale;
            assert!(
                err <= 1e-3 * scale + 1e-6,
                "{file}: grad {name}: abs err {err:e}, scale {scale:e}"
            );
            checked += 1;
        }
        assert_eq!(checked, 62, "every parameter of the MLM graph");
    }
    assert_eq!(
        max_rel(&logits_by_file[0], &logits_by_file[1]),
        0.0,
        "both formats give identical output"
    );
}

#[test]
fn bigs_layer_gradients_match_finite_differences_f64() {
    for conv in [ConvPath::Fft, ConvPath::Dense] {
        let mut cfg = tiny_cfg();
        cfg.conv = conv;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (model, varmap) = build_bigs(&cfg, DType::F64, &Device::Cpu, &mut rng).unwrap();
        // Non-trivial values everywhere (a fresh init has zero biases and unit LayerNorms).
        let vars: Vec<(String, Var)> = {
            let d = varmap.data().lock().unwrap();
            let mut v: Vec<_> = d
                .iter()
                .filter(|(n, _)| n.starts_with("bigs.encoder.layer.0."))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(vars.len(), 26);
        for (i, (name, v)) in vars.iter().enumerate() {
            if !name.contains("kernel.A_") && !name.contains("log_step") {
                let noise = (Tensor::arange(0f64, v.elem_count() as f64, &Device::Cpu)
                    .unwrap()
                    .affine(0.7 + i as f64, 0.3)
                    .unwrap()
                    .sin()
                    .unwrap()
                    * 0.3)
                    .unwrap()
                    .reshape(v.shape())
                    .unwrap();
                v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
            }
        }
        let x = (Tensor::arange(0f64, (2 * 12 * 32) as f64, &Device::Cpu)
            .unwrap()
            .affine(0.13, 0.0)
            .unwrap()
            .sin()
            .unwrap())
        .reshape((2, 12, 32))
        .unwrap();
        let w = x.cos().unwrap();
        let layer = &model.layers[0];
        let f = || {
            layer
                .forward(&x)
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let named: Vec<(&str, &Var)> = vars.iter().map(|(n, v)| (n.as_str(), v)).collect();
        fd_check(&named, f, 5, 1e-6);
    }
}

#[test]
fn one_optimiser_step_reaches_every_variable() {
    let cfg = tiny_cfg();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (model, varmap) = build_bigs(&cfg, DType::F32, &Device::Cpu, &mut rng).unwrap();
    let (ids, tt, labels) = inputs();
    let out = model
        .mlm_loss(&ids, Some(&tt), &labels, Mode::Train(&mut rng))
        .unwrap();
    let grads = out.loss.backward().unwrap();
    let before: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
        .collect();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let m = g
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(m > 0.0, "zero gradient for {name}");
    }
    let mut opt = candle_nn::AdamW::new_lr(varmap.all_vars(), 1e-3).unwrap();
    opt.step(&grads).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        assert!(
            max_rel(var.as_tensor(), &before[name]) > 0.0,
            "{name} did not move"
        );
    }
    assert_eq!(varmap.all_vars().len(), 62);
    let n: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(n, cfg.num_parameters());
}

fn write_variant(
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> (tempfile::TempDir, std::path::PathBuf) {
    let mut t = load_st("bigs_tiny/model.safetensors");
    edit(&mut t);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    (dir, p)
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let cfg = tiny_cfg();
    let name = "bigs.encoder.layer.1.fs4.kernel.C";
    let (_d, p) = write_variant(|t| {
        t.remove(name);
    });
    let e = load_bigs(&cfg, &p, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(name) && e.contains("[8, 2]") && e.contains("model.safetensors"),
        "{e}"
    );

    let (_d, p) = write_variant(|t| {
        t.insert(
            "bigs.encoder.layer.0.dv.weight".into(),
            Tensor::zeros((48, 31), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_bigs(&cfg, &p, DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("bigs.encoder.layer.0.dv.weight")
            && e.contains("[48, 31]")
            && e.contains("[48, 32]"),
        "{e}"
    );

    let e = load_bigs(
        &cfg,
        &fixture("bigs_tiny/nope.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("nope.safetensors") && e.contains("no such file"),
        "{e}"
    );
    let e = load_bigs(
        &cfg,
        &fixture("bigs_tiny/config.json"),
        DType::F32,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("unknown format"), "{e}");
}

#[test]
fn bad_configs_give_clear_errors() {
    let text = std::fs::read_to_string(fixture("bigs_tiny/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    let check = |v: &serde_json::Value, needles: &[&str]| {
        std::fs::write(&p, v.to_string()).unwrap();
        let e = BigsConfig::from_json_file(&p).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        for n in needles {
            assert!(e.contains(n), "{e} lacks {n}");
        }
    };
    v.as_object_mut().unwrap().remove("hidden_size");
    check(&v, &["`hidden_size`", "missing"]);
    v["hidden_size"] = (-32).into();
    check(&v, &["`hidden_size`", "-32", "positive"]);
    v["hidden_size"] = 32.into();
    v["layer_norm_eps"] = (-1.0).into();
    check(&v, &["`layer_norm_eps`"]);
    v["layer_norm_eps"] = 1e-12.into();
    v["layer_gelu"] = "relu".into();
    check(&v, &["relu"]);
}

#[test]
fn too_long_sequences_and_bad_ids_are_errors() {
    let lm = load_bigs(
        &tiny_cfg(),
        &fixture("bigs_tiny/model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let ids = Tensor::zeros((1, 41), DType::U32, &Device::Cpu).unwrap();
    let e = lm
        .model
        .hidden_states(&ids, None, Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("41") && e.contains("max_position_embeddings = 40"),
        "{e}"
    );
    let ids = Tensor::new(&[[3u32, 97]], &Device::Cpu).unwrap();
    let e = lm
        .model
        .hidden_states(&ids, None, Mode::Eval)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[0, 97)"), "{e}");
    // without token types the model uses type 0, as the reference
    let (ids, tt, _) = inputs();
    let a = lm.model.hidden_states(&ids, Some(&tt), Mode::Eval).unwrap();
    let b = lm.model.hidden_states(&ids, None, Mode::Eval).unwrap();
    assert!(max_rel(&a, &b) < 1e-7);
}
