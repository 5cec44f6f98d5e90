//! Property tests for every parser of outside bytes (issue 17): IDX files, image folders,
//! metrics.jsonl lines, run configs in TOML and `--set` values, settings and theme files,
//! control.json, HF config.json, the checkpoint loader and kernels.jsonl. Each is fed random bytes and
//! mutations of a valid input (bytes flipped, cut short): it must return (an error or a value),
//! never panic, and any error is one line that names the file where there is one.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A valid input with some bytes overwritten and maybe cut short.
fn mutate(valid: &[u8], flips: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut b = valid.to_vec();
    for &(i, v) in flips {
        if !b.is_empty() {
            let n = b.len();
            b[i % n] = v;
        }
    }
    if let Some(c) = cut {
        b.truncate(c % (valid.len() + 1));
    }
    b
}

fn flips() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..512)
}

fn write(dir: &Path, name: &str, b: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

fn one_line(e: &str) {
    assert!(!e.contains('\n'), "an error of more than one line: {e}");
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn idx_files(flip_i in flips(), flip_l in flips(), cut in proptest::option::of(any::<usize>()),
                 gz in any::<bool>(), raw in bytes()) {
        let tmp = tempfile::tempdir().unwrap();
        let (img, lab) = if gz {
            ("tests/fixtures/images/idx-gz/fashion/t10k-images-idx3-ubyte.gz",
             "tests/fixtures/images/idx-gz/fashion/t10k-labels-idx1-ubyte.gz")
        } else {
            ("tests/fixtures/images/idx/tiny-images-idx3-ubyte",
             "tests/fixtures/images/idx/tiny-labels-idx1-ubyte")
        };
        let i = write(tmp.path(), "x-images-idx3-ubyte", &mutate(&fixture(img), &flip_i, cut));
        let l = write(tmp.path(), "x-labels-idx1-ubyte", &mutate(&fixture(lab), &flip_l, None));
        if let Err(e) = ssmlab::data::images::load_idx(&i, &l) {
            let e = e.to_string();
            one_line(&e);
            prop_assert!(e.contains("x-images") || e.contains("x-labels"), "{}", e);
        }
        let r = write(tmp.path(), "r-images-idx3-ubyte", &raw);
        prop_assert!(ssmlab::data::images::load_idx(&r, &l).is_err());
    }

    #[test]
    fn image_folders(flip in flips(), cut in proptest::option::of(any::<usize>()), raw in bytes()) {
        let tmp = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            std::fs::create_dir_all(tmp.path().join(class)).unwrap();
        }
        let png = fixture("tests/fixtures/images/folder/circle/c1.png");
        write(&tmp.path().join("a"), "1.png", &mutate(&png, &flip, cut));
        write(&tmp.path().join("b"), "2.png", &raw);
        write(&tmp.path().join("b"), "3.png", &png);
        if let Err(e) = ssmlab::data::images::load_images(tmp.path(), Some((8, 8))) {
            one_line(&e.to_string());
        }
    }

    #[test]
    fn metrics_lines(lines in proptest::collection::vec(
        prop_oneof![
            "[ -~]{0,80}",
            Just(r#"{"step": 1, "loss": 1e300}"#.to_string()),
            Just(r#"{"step": 18446744073709551615, "loss": -1e-320}"#.to_string()),
            Just(r#"{"step": 2, "loss": NaN}"#.to_string()),
            Just(r#"{"step": 3, "loss": 2.5, "tokens": -4}"#.to_string()),
        ], 0..20), raw in bytes()) {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = lines.join("\n").into_bytes();
        b.extend_from_slice(&raw);
        let p = write(tmp.path(), "metrics.jsonl", &b);
        let (records, bad) = ssmlab::runs::read_metrics(&p).unwrap();
        prop_assert!(records.len() + bad.len() <= lines.len() + raw.len() + 2);
    }

    #[test]
    fn run_configs_and_set_values(text in "[ -~\n]{0,300}", key in "[a-z_.]{0,24}",
                                  value in "[ -~]{0,24}", flip in flips()) {
        let tmp = tempfile::tempdir().unwrap();
        let valid = ssmlab::train::presets::preset("bigs-smoke").unwrap().to_toml();
        for body in [text.into_bytes(), mutate(valid.as_bytes(), &flip, None)] {
            let p = write(tmp.path(), "config.toml", &body);
            match ssmlab::train::config::RunConfig::from_toml_file(&p) {
                Ok(c) => { let _ = c.validate(); }
                Err(e) => one_line(&e.to_string()),
            }
            if let Err(e) = ssmlab::train::diffusion::DiffusionRunConfig::from_toml_file(&p) {
                one_line(&e.to_string());
            }
        }
        let base = ssmlab::train::presets::preset("bigs-smoke").unwrap();
        match base.with_overrides(&[format!("{key}={value}")]) {
            Ok(c) => { let _ = c.validate(); }
            Err(e) => one_line(&e.to_string()),
        }
    }

    #[test]
    fn settings_and_theme_files(text in "[ -~\n]{0,300}", raw in bytes()) {
        let tmp = tempfile::tempdir().unwrap();
        for body in [text.as_bytes(), &raw[..]] {
            let p = write(tmp.path(), "settings.toml", body);
            let _ = ssmlab::tui::settings::load_from(&p);
            let _ = ssmlab::tui::theme::Theme::parse(&String::from_utf8_lossy(body), "prop");
            let (_, errs) = ssmlab::tui::keymap::Keymap::new(
                &[("quit".to_string(), String::from_utf8_lossy(body).into_owned())]
                    .into_iter().collect());
            drop(errs);
        }
    }

    #[test]
    fn control_files(text in "[ -~]{0,120}", raw in bytes()) {
        let tmp = tempfile::tempdir().unwrap();
        let run = ssmlab::runs::RunDir { path: tmp.path().to_path_buf() };
        for body in [text.as_bytes(), &raw[..],
                     br#"{"request": "stop", "at": 1e308}"#.as_slice(),
                     br#"{"request": "checkpoint", "at": -1}"#.as_slice()] {
            write(tmp.path(), "control.json", body);
            if let Some(Err(e)) = run.take_request() {
                one_line(&e);
            }
            let _ = std::fs::remove_file(tmp.path().join("control.json"));
        }
    }

    #[test]
    fn hf_config_json(flip in flips(), cut in proptest::option::of(any::<usize>()),
                      text in "[ -~]{0,200}") {
        let tmp = tempfile::tempdir().unwrap();
        let valid = fixture("checkpoints/bigs-mobydick/step-2500/config.json");
        for body in [mutate(&valid, &flip, cut), text.into_bytes()] {
            let s = String::from_utf8_lossy(&body);
            if let Err(e) = ssmlab::engine::bigs::BigsConfig::from_json_str(&s) {
                one_line(&e.to_string());
            }
            let p = tmp.path().join("config.json");
            std::fs::write(&p, &body).unwrap();
            if let Err(e) = ssmlab::engine::diffussm::DiffussmConfig::from_json_file(&p) {
                one_line(&e.to_string());
            }
        }
    }

    #[test]
    fn checkpoint_loader(flip in flips(), cut in proptest::option::of(any::<usize>()),
                         raw in bytes()) {
        use std::collections::HashMap;
        let tmp = tempfile::tempdir().unwrap();
        let dev = candle_core::Device::Cpu;
        let t: HashMap<String, candle_core::Tensor> = [
            ("a".to_string(), candle_core::Tensor::arange(0f32, 6.0, &dev).unwrap()),
            ("b.weight".to_string(), candle_core::Tensor::ones((2, 3), candle_core::DType::F32, &dev).unwrap()),
        ].into_iter().collect();
        let good = tmp.path().join("good.safetensors");
        candle_core::safetensors::save(&t, &good).unwrap();
        let valid = std::fs::read(&good).unwrap();
        for (name, body) in [("m.safetensors", mutate(&valid, &flip, cut)),
                             ("r.safetensors", raw.clone()), ("r.bin", raw)] {
            let p = write(tmp.path(), name, &body);
            if let Err(e) = ssmlab::engine::weights::read_checkpoint(&p, &dev) {
                let e = e.to_string();
                prop_assert!(e.contains(name), "{}", e);
            }
        }
    }

    #[test]
    fn kernel_history(flip in flips(), cut in proptest::option::of(any::<usize>()),
                      raw in bytes()) {
        use ssmlab::runs::kernels::{KernelRecord, SavedTensor};
        let tmp = tempfile::tempdir().unwrap();
        let c = ssmlab::train::presets::preset("bigs-smoke").unwrap();
        std::fs::write(tmp.path().join("config.toml"), c.to_toml()).unwrap();
        let n = c.model.num_ssm;
        let mut rec = KernelRecord { step: 0, wall_s: 0.0, ema: false, tensors: Default::default() };
        for l in 0..c.model.num_hidden_layers {
            for d in ["fs4", "bs4"] {
                for (leaf, shape, v) in [("kernel.A_re", vec![n], -0.5f32), ("kernel.A_im", vec![n], 1.0),
                                         ("kernel.C", vec![n, 2], 0.1), ("kernel.log_step", vec![1], -3.0),
                                         ("D", vec![1], 1.0)] {
                    let values = vec![v; shape.iter().product()];
                    rec.tensors.insert(format!("bigs.encoder.layer.{l}.{d}.{leaf}"),
                                       SavedTensor { shape, values });
                }
            }
        }
        let valid = format!("{}\n", serde_json::to_string(&rec).unwrap()).into_bytes();
        for body in [valid.clone(), mutate(&valid, &flip, cut), raw] {
            write(tmp.path(), "kernels.jsonl", &body);
            let res = ssmlab::kernels::snapshots(tmp.path()).and_then(|s| {
                s.iter().map(ssmlab::kernels::load_snapshot).collect::<Result<Vec<_>, _>>()
            });
            match res {
                Ok(k) => prop_assert!(body != valid || k.len() == 1),
                Err(e) => {
                    let e = e.to_string();
                    one_line(&e);
                    prop_assert!(body != valid, "{}", e);
                    prop_assert!(e.contains("kernels.jsonl") || e.contains(&tmp.path().display().to_string()), "{}", e);
                }
            }
        }
    }
}
