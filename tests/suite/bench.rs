//! The benchmark suite: FLOP formulas, the cases it promises, one case of each kind run in
//! process, the ratios and the table, and the suite through the binary (child processes).

use candle_core::{DType, Device};
use rand::SeedableRng;
use serde_json::{Value, json};
use ssmlab::bench::suite::{
    Case, Head, SCALING_LENGTHS, bigs_step_flops, cases, reference_bigs, run_case, summaries, table,
};
use ssmlab::engine::conv::ConvPath;

#[test]
fn bigs_flops_and_parameters_follow_the_formulas() {
    let c = reference_bigs(512);
    // per token and layer: dv, dol (H·I each), do (I·H), four H×H maps
    let per_token_layer = 3.0 * 256.0 * 768.0 + 4.0 * 256.0 * 256.0;
    let tokens = 16 * 128;
    let masked = 16 * 19;
    let head = masked as f64 * (256.0 * 256.0 + 256.0 * 30522.0);
    let want = 6.0 * (tokens as f64 * 4.0 * per_token_layer + head);
    let got = bigs_step_flops(&c, tokens, 128, masked);
    assert!((got - want).abs() / want < 1e-12, "{got} vs {want}");
    assert!(
        bigs_step_flops(&c, tokens, 128, tokens) > 2.0 * got,
        "the full head dominates"
    );
    // the analytic parameter count is the VarMap's
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let small = ssmlab::train::presets::preset("bigs-smoke").unwrap().model;
    for cfg in [c, small] {
        let (_, vm) =
            ssmlab::engine::bigs::build_bigs(&cfg, DType::F32, &Device::Cpu, &mut rng).unwrap();
        let n: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, cfg.num_parameters());
    }
}

#[test]
fn the_suite_has_every_case_of_the_issue() {
    let labels: Vec<String> = cases().iter().map(Case::label).collect();
    let has = |s: &str| labels.iter().any(|l| l == s);
    for l in [128, 512] {
        for h in ["masked", "all"] {
            assert!(has(&format!("reference L={l} head={h}")), "{labels:?}");
        }
    }
    for l in SCALING_LENGTHS {
        assert!(has(&format!("scaling L={l}")));
    }
    for s in [
        "matmul 2048³",
        "bigs-tiny train",
        "bigs-mobydick train",
        "diffussm train op-parallel",
        "diffussm train sharded",
        "diffussm sample 16×50 DDIM",
        "conv fft L=512",
        "conv dense L=2048",
        "gelu tanh fused",
        "gelu exact candle",
        "reference L=128 head=masked op-built layers",
    ] {
        assert!(has(s), "missing {s} in {labels:?}");
    }
    assert_eq!(labels[0], "matmul 2048³", "the ceiling runs first");
    // the scaling cases keep the token budget fixed
    for c in cases() {
        if let Case::BigsTrain {
            name,
            batch,
            seq_len,
            head,
            ..
        } = c
            && name.starts_with("scaling")
        {
            assert_eq!((batch * seq_len, head), (8192, Head::None));
        }
    }
}

#[test]
fn each_kind_of_case_runs_and_reports() {
    let model = ssmlab::train::presets::preset("bigs-smoke").unwrap().model;
    let mut flops = Vec::new();
    for head in [Head::Masked, Head::All, Head::None] {
        let r = run_case(&Case::BigsTrain {
            name: "t".into(),
            model: model.clone(),
            batch: 2,
            seq_len: 16,
            head,
            reps: 1,
            // one shard takes the fused masked-LM step (no graph); two, the graph
            shards: if head == Head::Masked { 1 } else { 2 },
            unfused_optim: head == Head::All,
            op_layers: head == Head::None,
            graph_step: false,
        })
        .unwrap();
        assert!(r["step_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["seq_len"], 16);
        flops.push(r["flops_per_step"].as_f64().unwrap());
    }
    assert!(flops[1] > flops[0] && flops[0] > flops[2], "{flops:?}");
    let graph = run_case(&Case::BigsTrain {
        name: "t".into(),
        model: model.clone(),
        batch: 2,
        seq_len: 16,
        head: Head::Masked,
        reps: 1,
        shards: 1,
        unfused_optim: false,
        op_layers: false,
        graph_step: true,
    })
    .unwrap();
    assert_eq!(graph["flops_per_step"].as_f64().unwrap(), flops[0]);
    for case in [
        Case::Matmul { n: 64, reps: 2 },
        Case::Conv {
            path: ConvPath::Fft,
            b: 1,
            c: 2,
            l: 32,
            reps: 1,
        },
        Case::Gelu {
            fused: true,
            gelu: ssmlab::engine::nn::Gelu::Tanh,
            n: 1000,
            reps: 1,
        },
    ] {
        let r = run_case(&case).unwrap();
        let v = r["seconds"].as_f64().unwrap();
        assert!(v > 0.0 && v.is_finite(), "{r}");
        assert_eq!(r["case"], case.label());
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 1.0, "{r}");
    }
}

#[test]
fn ratios_scaling_and_table_come_from_the_results() {
    let r = |case: &str, k: &str, v: f64| json!({"case": case, k: v});
    let mut results = vec![
        r("reference L=128 head=masked", "tokens_per_s", 3000.0),
        r("reference L=128 head=all", "tokens_per_s", 1000.0),
        r("conv fft L=512", "seconds", 0.01),
        r("conv dense L=512", "seconds", 0.05),
    ];
    for (i, l) in SCALING_LENGTHS.iter().enumerate() {
        // grows like log L up to 1024, then too fast
        let t = if *l <= 1024 { 1e-5 } else { 1e-5 * (i as f64) };
        results.push(json!({"case": format!("scaling L={l}"), "s_per_token": t}));
    }
    let s = summaries(&results);
    let find = |name: &str| -> &Value {
        s.iter()
            .find(|v| v["case"].as_str().unwrap().contains(name))
            .unwrap()
    };
    assert!(
        (find("masked positions, reference L=128")["speedup"]
            .as_f64()
            .unwrap()
            - 3.0)
            .abs()
            < 1e-12
    );
    assert!(
        (find("FFT instead of dense convolution, L=512")["speedup"]
            .as_f64()
            .unwrap()
            - 5.0)
            .abs()
            < 1e-9
    );
    assert!(
        !s.iter()
            .any(|v| v["case"].as_str().unwrap().contains("L=512 head")),
        "no ratio without both cases"
    );
    let scaling = find("scaling summary");
    assert_eq!(scaling["within_log_growth"], false);
    assert_eq!(scaling["rows"].as_array().unwrap().len(), 6);
    results.extend(s);
    results.push(json!({"case": "broken", "error": "out of memory"}));
    let t = table(&results);
    for want in [
        "MFU",
        "3.00x",
        "within log growth: false",
        "broken",
        "out of memory",
    ] {
        assert!(t.contains(want), "missing {want} in\n{t}");
    }
}

#[test]
fn the_suite_runs_cases_in_child_processes_and_prints_json_lines() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = crate::common::ssmlab(&["bench", "--json", "--only", "gelu"], here);
    crate::common::assert_ok(&out);
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let cases: Vec<&str> = lines.iter().map(|v| v["case"].as_str().unwrap()).collect();
    assert_eq!(
        cases,
        [
            "matmul 2048³",
            "gelu tanh fused",
            "gelu tanh candle",
            "gelu exact fused",
            "gelu exact candle",
            "ratio: fused tanh GELU (one-pass backward) instead of candle's",
            "ratio: fused exact GELU (one-pass backward) instead of candle's"
        ]
    );
    assert!(lines[0]["gflops"].as_f64().unwrap() > 0.1);
    assert!(lines[1]["peak_rss_mib"].as_f64().unwrap() > 1.0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("peak MiB"));
    // a bad spec is one clear line
    let bad = crate::common::ssmlab(&["bench", "case", "{\"kind\":\"nope\"}"], here);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a case spec"));
}
