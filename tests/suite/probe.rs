//! `ssmlab probe` on a Hugging Face-style directory made from the reference tiny BiGS.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use ssmlab::engine::bigs::{BigsConfig, Mode, load_bigs};

use crate::common::fixture;

/// config.json + weights (one format) + a 97-entry vocab.txt ([MASK] = 96 as in the fixture).
fn hf_dir(weights: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("bigs-tiny-hf");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(fixture("bigs_tiny/config.json"), d.join("config.json")).unwrap();
    std::fs::copy(fixture(&format!("bigs_tiny/{weights}")), d.join(weights)).unwrap();
    let mut vocab = vec![
        "[PAD]".to_string(),
        "[UNK]".into(),
        "[CLS]".into(),
        "[SEP]".into(),
    ];
    let words = [
        "the", "sea", "whale", "ship", "call", "me", "ishmael", ".", ",", "a",
    ];
    vocab.extend(words.iter().map(|w| w.to_string()));
    while vocab.len() < 96 {
        vocab.push(format!("w{}", vocab.len()));
    }
    vocab.push("[MASK]".into());
    std::fs::write(d.join("vocab.txt"), vocab.join("\n") + "\n").unwrap();
    (tmp, d)
}

fn probe_json(dir: &Path, text: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ssmlab"))
        .args(["probe", "--json", "--top-k", "5", "--model"])
        .arg(dir)
        .arg(text)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn cli_top_k_equals_softmax_of_the_models_logits_for_both_formats() {
    let (_a, st) = hf_dir("model.safetensors");
    let (_b, bin) = hf_dir("pytorch_model.bin");
    let text = "call me [MASK] . the [MASK] whale";
    let js = probe_json(&st, text, &["--targets", "whale,sea"]);
    let jb = probe_json(&bin, text, &["--targets", "whale,sea"]);
    assert_eq!(
        js["masks"], jb["masks"],
        "identical output from .safetensors and .bin"
    );
    assert_eq!(js["padded_to"], 40);
    // independent: the engine's full logits on the same padded ids, softmax in f64 here
    let cfg = BigsConfig::from_json_file(&fixture("bigs_tiny/config.json")).unwrap();
    let m = load_bigs(
        &cfg,
        &st.join("model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
    .model;
    let mut ids: Vec<u32> = vec![2, 8, 9, 96, 11, 4, 96, 6, 3];
    ids.resize(40, 0);
    let logits = m
        .logits(
            &m.hidden_states(
                &Tensor::from_vec(ids, (1, 40), &Device::Cpu).unwrap(),
                None,
                Mode::Eval,
            )
            .unwrap(),
        )
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec3::<f64>()
        .unwrap();
    for (k, pos) in [3usize, 6].iter().enumerate() {
        let z = &logits[0][*pos];
        let mx = z.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = z.iter().map(|v| (v - mx).exp()).sum();
        let mut p: Vec<(usize, f64)> = z.iter().map(|v| (v - mx).exp() / sum).enumerate().collect();
        p.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mask = &js["masks"][k];
        assert_eq!(mask["position"], *pos);
        for (j, (id, prob)) in p.iter().take(5).enumerate() {
            let c = &mask["top"][j];
            assert_eq!(c["id"], *id as u64);
            assert!(
                (c["prob"].as_f64().unwrap() - prob).abs() < 1e-6,
                "{c} vs {prob}"
            );
        }
        if k == 0 {
            // the joint fill's first (leftmost) choice is the independent argmax there
            let j = probe_json(&st, text, &["--joint"]);
            assert_eq!(j["joint"][0]["position"], 3);
            assert_eq!(j["joint"][0]["token"], mask["top"][0]["token"]);
            assert_eq!(j["joint"].as_array().unwrap().len(), 2);
        }
        let whale = &mask["targets"][0];
        let pw = p.iter().position(|(id, _)| *id == 6).unwrap() + 1;
        assert_eq!(
            (whale["word"].as_str(), whale["rank"].as_u64()),
            (Some("whale"), Some(pw as u64))
        );
    }
}

#[test]
fn probe_bad_input_is_a_clear_message() {
    let (_a, st) = hf_dir("model.safetensors");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ssmlab"))
            .arg("probe")
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!e.contains("panicked"), "{e}");
        e
    };
    let m = |s: &str| std::ffi::OsString::from(s);
    let e = run(&[&m("--model"), st.as_os_str(), &m("no mask here")]);
    assert!(e.contains("no [MASK]"), "{e}");
    let long = "the sea ".repeat(30) + "[MASK]";
    let e = run(&[&m("--model"), st.as_os_str(), &m(&long)]);
    assert!(e.contains("longer than the model's maximum of 40"), "{e}");
    let e = run(&[&m("--model"), &m("/nonexistent/dir"), &m("a [MASK]")]);
    assert!(e.contains("unknown model directory layout"), "{e}");
    std::fs::write(
        st.join("vocab.txt"),
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nsea\n",
    )
    .unwrap();
    let e = run(&[&m("--model"), st.as_os_str(), &m("a [MASK]")]);
    assert!(
        e.contains("6 tokens but the model's vocab_size is 97"),
        "{e}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = std::ffi::OsStr::from_bytes(b"the \xff [MASK]");
        let e = run(&[&m("--model"), st.as_os_str(), bad]);
        assert!(
            e.to_lowercase().contains("utf-8") || e.contains("UTF"),
            "{e}"
        );
    }
}

#[test]
fn sanitize_makes_control_characters_visible() {
    assert_eq!(
        ssmlab::text::sanitize("a\u{1b}[2Jb\n"),
        "a\\u{1b}[2Jb\\u{a}"
    );
}
