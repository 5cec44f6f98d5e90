//! The attention baseline and the comparison: attention gradients against finite differences,
//! parameter and FLOP formulas, the preset pair, the crossover, and the Compare view.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ssmlab::compare::{ScalingPoint, crossover, flops_per_token, preset_pair, run_row};
use ssmlab::engine::attention::softmax_last;
use ssmlab::engine::bigs::{BigsConfig, Encoder, Mode, build_bigs};
use ssmlab::runs::index::RunsIndex;
use ssmlab::runs::{Metric, RunDir};
use ssmlab::train::presets::preset;
use ssmlab::tui::app::{App, View};

use crate::common::fd_check;
use crate::common::ssmlab;

fn tiny_bert(pre_norm: bool) -> BigsConfig {
    let mut c = preset("bert-tiny").unwrap().model;
    c.vocab_size = 23;
    c.hidden_size = 8;
    c.intermediate_size = 12;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.max_position_embeddings = 16;
    c.pre_norm = pre_norm;
    c
}

#[test]
fn attention_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    for pre_norm in [true, false] {
        let cfg = tiny_bert(pre_norm);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (model, varmap) = build_bigs(&cfg, DType::F64, &dev, &mut rng).unwrap();
        let ids = Tensor::new(&[[1u32, 5, 9, 3, 22, 7], [4, 4, 17, 2, 8, 11]], &dev).unwrap();
        let labels = Tensor::new(
            &[
                [-100i64, 5, -100, 3, -100, -100],
                [-100, 4, -100, -100, 8, -100],
            ],
            &dev,
        )
        .unwrap();
        let loss = || {
            model
                .mlm_loss(&ids, None, &labels, Mode::Eval)
                .unwrap()
                .loss
        };
        let grads = loss().backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("bert.encoder.layer.1.attention.self.query"))
        );
        // The key bias shifts every score of a query by the same q·b: softmax ignores it, so
        // its gradient is exactly zero (up to rounding), as in any attention implementation.
        let key_bias = |n: &str| n.ends_with("attention.self.key.bias");
        for n in &names {
            if n.contains("token_type_embeddings") || n.contains("position_embeddings") {
                continue; // only some rows are used
            }
            let g = grads.get(data[*n].as_tensor());
            if key_bias(n) {
                let m = g.map_or(0.0, |g| {
                    g.abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                });
                assert!(m < 1e-12, "{n}: {m:e}");
                continue;
            }
            let g = g.unwrap_or_else(|| panic!("no grad for {n}"));
            assert!(
                crate::common::sq_norm(g) > 0.0,
                "pre_norm={pre_norm}: zero gradient for {n}"
            );
        }
        let vars: Vec<(&str, &candle_core::Var)> = names
            .iter()
            .filter(|n| !key_bias(n))
            .map(|n| (n.as_str(), &data[*n]))
            .collect();
        let worst = fd_check(&vars, loss, 2, 1e-5);
        assert!(
            worst < 1e-5,
            "pre_norm={pre_norm}: worst relative error {worst:e}"
        );
    }
}

#[test]
fn softmax_from_ops_is_stable_and_normalised() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1000.0f64, 999.0, -5.0], [0.1, 0.2, 0.3]], &dev).unwrap();
    let s = softmax_last(&x).unwrap().to_vec2::<f64>().unwrap();
    for row in &s {
        assert!(row.iter().all(|v| v.is_finite()));
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
    let e = (1f64).exp();
    assert!((s[0][0] - e / (e + 1.0 + (-1005f64).exp())).abs() < 1e-12);
    let fused = candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32).unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (a, b) in s.iter().flatten().zip(fused.iter().flatten()) {
        assert!((a - *b as f64).abs() < 1e-6);
    }
}

#[test]
fn the_pair_has_equal_parameters_and_the_formulas_hold() {
    let [(a, ca), (b, cb)] = preset_pair("bigs-tiny,bert-tiny").unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("bigs-tiny", "bert-tiny"));
    let (pa, pb) = (ca.model.num_parameters(), cb.model.num_parameters());
    assert!(
        (pa as f64 - pb as f64).abs() / (pa as f64) < 0.01,
        "parameters {pa} vs {pb}"
    );
    assert_eq!((ca.data == cb.data, ca.run.seed), (true, cb.run.seed));
    assert_eq!(cb.model.encoder, Encoder::Attention);
    assert_eq!(cb.run.model, "bert");
    // the analytic count is the VarMap's
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for cfg in [&cb.model, &tiny_bert(false)] {
        let (_, vm) = build_bigs(cfg, DType::F32, &Device::Cpu, &mut rng).unwrap();
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, cfg.num_parameters());
    }
    // FLOPs per token: 6 × (layers × per-layer MACs + masked share × head)
    let (h, i, v) = (64.0, 192.0, 8192.0);
    for l in [128usize, 4096] {
        let attn = 4.0 * h * h + 2.0 * h * i + 2.0 * l as f64 * h;
        let want = 6.0 * (2.0 * attn + 0.15 * (h * h + h * v));
        let got = flops_per_token(&cb.model, l, 0.15);
        assert!((got - want).abs() / want < 1e-12, "L={l}: {got} vs {want}");
    }
    let bigs = 6.0 * (2.0 * (3.0 * 64.0 * 128.0 + 4.0 * 64.0 * 64.0) + 0.15 * (h * h + h * v));
    assert!(
        (flops_per_token(&ca.model, 4096, 0.15) - bigs).abs() < 1e-6,
        "BiGS: no L term"
    );
    // pairs must be one of each kind, with the same data and budget
    for bad in [
        "bigs-tiny",
        "bigs-tiny,bigs-mobydick",
        "bert-tiny,bert-mobydick",
    ] {
        assert!(preset_pair(bad).is_err(), "{bad}");
    }
    let e = preset_pair("bigs-tiny,bert-mobydick")
        .unwrap_err()
        .to_string();
    assert!(e.contains("token budget") || e.contains("data"), "{e}");
}

#[test]
fn crossover_is_where_bigs_stays_cheaper() {
    let p = |m: &str, l, s| ScalingPoint {
        model: m.into(),
        seq_len: l,
        batch: 8192 / l,
        s_per_token: s,
    };
    let pts = vec![
        p("b", 128, 2.0),
        p("a", 128, 1.0),
        p("b", 512, 2.0),
        p("a", 512, 1.9),
        p("b", 2048, 2.1),
        p("a", 2048, 4.0),
    ];
    assert_eq!(crossover(&pts, "b", "a"), Some(2048));
    assert_eq!(crossover(&pts[..4], "b", "a"), None);
    // noise near the crossover: cheaper at 32, not at 64, cheaper from 128 on
    let noisy = vec![
        p("b", 32, 1.0),
        p("a", 32, 1.1),
        p("b", 64, 1.0),
        p("a", 64, 0.9),
        p("b", 128, 1.0),
        p("a", 128, 1.2),
        p("b", 256, 1.0),
        p("a", 256, 1.5),
    ];
    assert_eq!(crossover(&noisy, "b", "a"), Some(128));
}

fn write_pair(dir: &Path) {
    for (id, rate, acc) in [("bigs-tiny", 9000.0, 0.21), ("bert-tiny", 8000.0, 0.19)] {
        let run = RunDir::create(dir, id).unwrap();
        let cfg = preset(id).unwrap();
        std::fs::write(run.config_path(), cfg.to_toml()).unwrap();
        for s in 1..=40u64 {
            let x = s as f64;
            run.append_metric(&Metric {
                step: s,
                tokens: s * 2048,
                wall_s: x * 2048.0 / rate,
                loss: Some(8.0 * (-x / 20.0).exp() + 4.0),
                tokens_per_s: Some(rate),
                eval_loss: (s % 10 == 0).then(|| 8.0 * (-x / 20.0).exp() + 4.2 + acc),
                eval_acc: (s % 10 == 0).then_some(acc * x / 40.0),
                ..Default::default()
            })
            .unwrap();
        }
    }
}

fn render(app: &mut App, w: u16, h: u16) -> String {
    crate::common::render_frame(app, w, h).0
}

#[test]
fn compare_view_shows_the_table_overlay_and_scaling() {
    let tmp = tempfile::tempdir().unwrap();
    write_pair(tmp.path());
    let runs = RunsIndex::new().scan(tmp.path());
    let row = run_row(runs.iter().find(|r| r.id == "bert-tiny").unwrap()).unwrap();
    assert_eq!(
        (row.model.as_str(), row.tokens, row.tokens_per_s),
        ("bert", 81920, Some(8000.0))
    );
    // the index keeps logged values as f32 (7 significant digits)
    assert!((row.eval_acc.unwrap() - 0.19).abs() < 1e-7);
    let mut app = crate::common::app_over(runs);
    app.view = View::Compare;
    let s = render(&mut app, 80, 24);
    assert!(s.contains("press t"), "{s}");
    // `t` with no worker says so; then a finished measurement as the worker leaves it
    app.on_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Char('t'),
    ));
    assert_eq!(
        app.compare.scaling_models,
        Some(("bigs-tiny".to_string(), "bert-tiny".to_string()))
    );
    assert!(
        app.compare
            .error
            .as_deref()
            .unwrap()
            .contains("not running")
    );
    app.compare.error = None;
    for (l, b, a) in [
        (128, 30.0, 20.0),
        (512, 31.0, 28.0),
        (2048, 33.0, 60.0),
        (4096, 34.0, 110.0),
    ] {
        for (m, v) in [("bigs-tiny", b), ("bert-tiny", a)] {
            app.compare.points.push(ScalingPoint {
                model: m.into(),
                seq_len: l,
                batch: 8192 / l,
                s_per_token: v * 1e-6,
            });
        }
    }
    for (w, h) in [(80, 24), (160, 48)] {
        let s = render(&mut app, w, h);
        for want in [
            "bigs-tiny",
            "bert-tiny",
            "MFLOP/tok",
            "eval loss vs tokens",
            "from L = 2048",
        ] {
            assert!(s.contains(want), "{w}×{h}: missing {want}\n{s}");
        }
        insta::assert_snapshot!(format!("compare_{w}x{h}"), s);
    }
    app.on_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Char('x'),
    ));
    assert!(render(&mut app, 160, 48).contains("eval loss vs wall time"));
    // marking one run compares only the marked ones
    app.marked.insert("bert-tiny".into());
    let s = render(&mut app, 160, 48);
    assert!(
        s.contains("bert-tiny") && !s.lines().nth(3).unwrap().contains("bigs-tiny"),
        "{s}"
    );
}

#[test]
fn a_preset_pair_trains_side_by_side_and_both_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let runs = tmp.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    let out = ssmlab(
        &[
            "compare",
            "--preset-pair",
            "bigs-smoke,bert-smoke",
            "--runs-dir",
            runs_s,
        ],
        Path::new(root),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("started bigs-smoke") && err.contains("started bert-smoke"),
        "{err}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    for want in ["bigs-smoke", "bert-smoke", "eval acc"] {
        assert!(table.contains(want), "missing {want}:\n{table}");
    }
    // same data, budget and seed: the same number of tokens seen
    let rows: Vec<&str> = table.lines().skip(1).collect();
    let tokens = |r: &str| r.split_whitespace().nth(6).unwrap().to_string();
    assert_eq!(tokens(rows[0]), tokens(rows[1]), "{table}");
    let cfg = std::fs::read_to_string(runs.join("bert-smoke/config.toml")).unwrap();
    assert!(cfg.contains("encoder = \"attention\"") && cfg.contains("model = \"bert\""));
    // the attention model probes like BiGS (same tokenizer): A/B across architectures
    for id in ["bigs-smoke", "bert-smoke"] {
        let model = runs.join(id);
        let out = ssmlab(
            &[
                "probe",
                "--model",
                model.to_str().unwrap(),
                "--json",
                "call me [MASK] .",
            ],
            Path::new(root),
        );
        assert!(
            out.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // the kernel view has nothing to show for attention, and says so
    let bert = runs.join("bert-smoke");
    let out = ssmlab(
        &["kernels", "--model", bert.to_str().unwrap()],
        Path::new(root),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no SSM kernels"));
    // the table from existing runs, as JSON
    let out = ssmlab(
        &[
            "compare",
            "--runs",
            "bigs-smoke,bert-smoke",
            "--runs-dir",
            runs_s,
            "--json",
        ],
        Path::new(root),
    );
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["eval_acc"].as_f64().is_some()));
    // a diffusion run or a missing run is one clear line
    let out = ssmlab(
        &["compare", "--runs", "nope", "--runs-dir", runs_s],
        Path::new(root),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run nope"));
}
