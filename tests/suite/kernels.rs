//! Kernels from weights (`ssmlab kernels`, the Kernels view): equal to the engine's kernels as
//! the model uses them (BiGS and DiffuSSM), frequency response against a direct DFT, the 2-D
//! folding (also of a DiffuSSM kernel on its patch grid), bad input.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use ssmlab::engine::bigs::{BigsConfig, load_bigs};
use ssmlab::engine::s4d::{Discretization, s4_kernel};
use ssmlab::kernels::figure::{DirSel, Panel, Selection, SubView, Tone, figure};
use ssmlab::kernels::{
    Direction, ImageGrid, decay_lag, fold_receptive_field, frequency_response, load_model,
    s4_channel_kernels, signed_response, spread, summary,
};
use ssmlab::sample::DiffusionModel;

use crate::common::{fixture, load_st, shipped_run, smoke_diffusion_run, two_checkpoint_run};

/// The engine's kernels as the loaded model uses them (`BigsSsm::kernel`, called by its forward).
fn model_kernels(config: &Path, weights: &Path) -> Vec<(Vec<f64>, Vec<f64>)> {
    let cfg = BigsConfig::from_json_file(config).unwrap();
    let m = load_bigs(&cfg, weights, DType::F32, &Device::Cpu)
        .unwrap()
        .model;
    let l = cfg.max_position_embeddings;
    let v = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    m.layers
        .iter()
        .map(|x| (v(x.fs4.kernel(l).unwrap()), v(x.bs4.kernel(l).unwrap())))
        .collect()
}

#[test]
fn kernels_of_the_view_equal_the_engines_kernels_of_the_model() {
    let ck = shipped_run().join("step-2500");
    let want = model_kernels(&ck.join("config.json"), &ck.join("model.safetensors"));
    // the run directory resolves to its latest checkpoint, as the view and the CLI read it
    let mk = load_model(&shipped_run(), None).unwrap();
    assert_eq!((mk.step, mk.len, mk.layers.len()), (Some(2500), 128, 4));
    assert!(mk.shared && mk.width == 128);
    for (i, (f, b)) in want.iter().enumerate() {
        assert_eq!(&mk.layers[i].fwd.kernels, &vec![f.clone()], "layer {i} fwd");
        assert_eq!(&mk.layers[i].bwd.kernels, &vec![b.clone()], "layer {i} bwd");
    }
    // and the view plots exactly those values: forward at d ≥ 0, backward at d < 0
    let sel = Selection {
        layer: 2,
        dir: DirSel::Both,
        ..Default::default()
    };
    let fig = figure(std::slice::from_ref(&mk), &sel);
    let Panel::Plot { series, .. } = &fig.panels[0] else {
        panic!("lag view starts with a plot")
    };
    let (f, b) = &want[2];
    let fwd: Vec<f64> = series[0].points.iter().map(|p| p.1).collect();
    assert_eq!(&fwd, f);
    assert!(
        series[0]
            .points
            .iter()
            .enumerate()
            .all(|(i, p)| p.0 == i as f64)
    );
    let bwd = &series[1].points;
    assert_eq!(bwd.len(), 127);
    assert!(bwd.iter().all(|(d, v)| *d < 0.0 && *v == b[(-d) as usize]));
    assert!(
        fig.notes[0].contains("not an attention map"),
        "{:?}",
        fig.notes
    );
    // the signed response is the same pairing
    let sr = signed_response(f, b);
    assert_eq!(sr.len(), 255);
    assert_eq!(sr[0], (-127, b[127]));
    assert_eq!(sr[127], (0, f[0]));
    assert_eq!(sr[254], (127, f[127]));
}

#[test]
fn kernels_of_hf_directories_both_formats_equal_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    for w in ["model.safetensors", "pytorch_model.bin"] {
        let d = tmp.path().join(w.replace('.', "_"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(fixture("bigs_tiny/config.json"), d.join("config.json")).unwrap();
        std::fs::copy(fixture(&format!("bigs_tiny/{w}")), d.join(w)).unwrap();
        let mk = load_model(&d, None).unwrap();
        let want = model_kernels(&d.join("config.json"), &d.join(w));
        assert_eq!(mk.layers.len(), want.len());
        for (l, (f, b)) in mk.layers.iter().zip(&want) {
            assert_eq!((&l.fwd.kernels[0], &l.bwd.kernels[0]), (f, b), "{w}");
        }
        assert_eq!(mk.step, None);
        let e = load_model(&d, Some(3)).unwrap_err().to_string();
        assert!(e.contains("drop --step"), "{e}");
    }
}

#[test]
fn kernels_per_channel_family_uses_the_engines_s4_kernel() {
    let v = load_st("s4d_kernel.safetensors");
    let a_re = v["s4.log_A_real"].exp().unwrap().neg().unwrap();
    let k = s4_channel_kernels(
        &v["s4.log_dt"],
        &a_re,
        &v["s4.A_imag"],
        &v["s4.C"],
        &v["s4.D"],
        64,
        Discretization::Zoh,
    )
    .unwrap();
    let want = s4_kernel(
        &v["s4.log_dt"],
        &a_re,
        &v["s4.A_imag"],
        &v["s4.C"],
        64,
        Discretization::Zoh,
    )
    .unwrap()
    .to_dtype(DType::F64)
    .unwrap()
    .to_vec2::<f64>()
    .unwrap();
    assert_eq!(k.kernels, want);
    assert_eq!(k.channels(), v["s4.log_dt"].dim(0).unwrap());
    assert_eq!(k.dt.len(), k.channels());
}

/// Direct O(n²) DFT magnitude.
fn dft_mag(x: &[f64], n: usize) -> Vec<f64> {
    (0..=n / 2)
        .map(|f| {
            let (mut re, mut im) = (0.0, 0.0);
            for (t, v) in x.iter().enumerate() {
                let a = -2.0 * std::f64::consts::PI * (f * t) as f64 / n as f64;
                re += v * a.cos();
                im += v * a.sin();
            }
            (re * re + im * im).sqrt()
        })
        .collect()
}

#[test]
fn kernels_frequency_response_equals_a_direct_dft() {
    let k: Vec<f64> = (0..37)
        .map(|i| (-(i as f64) / 9.0).exp() * (0.7 * i as f64).cos() + 0.01 * (i % 5) as f64)
        .collect();
    for n in [37usize, 64, 128, 75] {
        let got = frequency_response(&k, n);
        let want = dft_mag(&k, n);
        assert_eq!(got.len(), n / 2 + 1);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9 * (1.0 + w), "n={n}: {g} vs {w}");
        }
    }
    // a real checkpoint's kernel too
    let mk = load_model(&shipped_run(), None).unwrap();
    let k = &mk.layers[0].bwd.kernels[0];
    let (got, want) = (frequency_response(k, 256), dft_mag(k, 256));
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-9 * (1.0 + w));
    }
}

#[test]
fn kernels_fold_onto_a_28x28_image() {
    let (h, w) = (28usize, 28usize);
    // hand-made: forward k_f[d] = 1000 + d, backward k_b[d] = −d (k_b[0] never used)
    let k_f: Vec<f64> = (0..h * w).map(|d| 1000.0 + d as f64).collect();
    let k_b: Vec<f64> = (0..h * w).map(|d| -(d as f64)).collect();
    let (r, c) = (10usize, 5usize);
    let m = fold_receptive_field(&k_f, &k_b, h, w, r, c);
    assert_eq!(m.len(), h * w);
    let at = |rr: usize, cc: usize| m[rr * w + cc];
    assert_eq!(at(10, 5), 1000.0); // the pixel itself: k_f[0]
    assert_eq!(at(10, 4), 1001.0); // one to the left: earlier in raster order, d = 1
    assert_eq!(at(10, 6), -1.0); // one to the right: later, backward kernel k_b[1]
    assert_eq!(at(9, 5), 1028.0); // the row above: d = W
    assert_eq!(at(11, 5), -28.0); // the row below: k_b[W]
    assert_eq!(at(9, 27), 1006.0); // end of the row above: d = 28 − 22 = 6
    assert_eq!(at(0, 0), 1000.0 + 285.0); // d = 10·28 + 5
    assert_eq!(at(27, 27), -(27.0 * 28.0 + 27.0 - 285.0));
    // every cell against the definition written with (Δrow, Δcol)
    for rr in 0..h {
        for cc in 0..w {
            let d = (r as i64 - rr as i64) * w as i64 + (c as i64 - cc as i64);
            let want = if d >= 0 { 1000.0 + d as f64 } else { d as f64 };
            assert_eq!(at(rr, cc), want, "({rr}, {cc})");
        }
    }
    // short kernels: zero beyond their length
    let m = fold_receptive_field(&k_f[..30], &k_b[..30], h, w, r, c);
    assert_eq!(m[9 * w + 5], 1028.0);
    assert_eq!(m[8 * w + 5], 0.0, "d = 56 is beyond a 30-tap kernel");
    assert_eq!(m[12 * w + 5], 0.0);
    assert_eq!(m.iter().filter(|v| **v != 0.0).count(), 30 + 29);
}

#[test]
fn kernels_decay_lag_and_summary() {
    let k: Vec<f64> = (0..100).map(|l| 0.9f64.powi(l)).collect();
    assert_eq!(decay_lag(&k, 0.01), Some(44)); // 0.9^43 ≥ 0.01 > 0.9^44
    let flat = vec![1.0; 50];
    assert_eq!(decay_lag(&flat, 0.01), None);
    assert_eq!(decay_lag(&[0.0; 4], 0.01), Some(0));
    let mk = load_model(&shipped_run(), None).unwrap();
    let rows = summary(&mk, None);
    assert_eq!(rows.len(), 8);
    assert_eq!((rows[1].layer, rows[1].direction), (0, Direction::Backward));
    for r in &rows {
        let s = mk.layers[r.layer].get(r.direction);
        assert_eq!(r.decay, vec![decay_lag(&s.kernels[0], 0.01)]);
        assert_eq!(r.dt, (s.dt[0], s.dt[0], s.dt[0]), "BiGS: one Δt per SSM");
        assert!(r.a_re.0 <= r.a_re.1 && r.a_re.1 <= r.a_re.2 && r.a_re.0 >= 1e-4);
    }
    assert_eq!(summary(&mk, Some(3)).len(), 2);
    // the init reference: hippo, N modes with Re −0.5
    assert_eq!(mk.init.a_init, "hippo");
    assert_eq!(mk.init.eig.len(), 64);
    assert!(mk.init.eig.iter().all(|e| e.0 == -0.5));
    assert_eq!(mk.init.dt_range, (0.01, 1.0));
    // every sub-view builds, for every direction choice
    for view in SubView::ALL {
        for dir in [DirSel::Forward, DirSel::Backward, DirSel::Both] {
            for log_lag in [false, true] {
                let sel = Selection {
                    view,
                    dir,
                    log_lag,
                    layer: 3,
                    ..Default::default()
                };
                let f = figure(std::slice::from_ref(&mk), &sel);
                assert!(!f.panels.is_empty(), "{view:?} {dir:?}");
            }
        }
    }
}

fn ssmlab(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ssmlab"))
        .arg("kernels")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn os(s: &str) -> std::ffi::OsString {
    s.into()
}

#[test]
fn kernels_cli_table_png_and_csv() {
    let out = ssmlab(&[&os("--model"), &os("checkpoints/bigs-mobydick")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("BiGS step-2500, 4 layers × 2 directions"), "{s}");
    assert!(
        s.contains("shared by 128 channels") && s.contains("A init hippo"),
        "{s}"
    );
    let rows: Vec<&str> = s
        .lines()
        .filter(|l| l.contains(" fwd ") || l.contains(" bwd "))
        .collect();
    assert_eq!(rows.len(), 8, "{s}");
    let mk = load_model(&shipped_run(), None).unwrap();
    let want = format!(
        "{:>10}",
        ssmlab::kernels::fmt_decay(decay_lag(&mk.layers[1].bwd.kernels[0], 0.01), 128)
    );
    assert!(
        rows[3].starts_with("    1  bwd") && rows[3].contains(&want),
        "{}",
        rows[3]
    );

    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("k.png");
    let csv = tmp.path().join("k.csv");
    let out = ssmlab(&[
        &os("--model"),
        &os("checkpoints/bigs-mobydick"),
        &os("--out"),
        png.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&png).unwrap();
    assert!(img.width() >= 800 && img.height() >= 400);
    let out = ssmlab(&[
        &os("--model"),
        &os("checkpoints/bigs-mobydick"),
        &os("--layer"),
        &os("2"),
        &os("--out"),
        csv.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "step,layer,direction,channel,lag,k");
    assert_eq!(lines.len(), 1 + 2 * 128);
    let f: Vec<&str> = lines[1 + 128 + 5].split(',').collect();
    assert_eq!(&f[..5], ["2500", "2", "bwd", "0", "5"]);
    let v: f64 = f[5].parse().unwrap();
    assert_eq!(
        v, mk.layers[2].bwd.kernels[0][5],
        "CSV keeps full precision"
    );
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    e
}

#[test]
fn kernels_bad_input_is_a_clear_one_line_message() {
    let e = one_line_error(&ssmlab(&[&os("--layer"), &os("9")]));
    assert!(
        e.contains("layer 9 is out of range")
            && e.contains("has 4 layers; pass a layer from 0 to 3"),
        "{e}"
    );
    let e = one_line_error(&ssmlab(&[&os("--step"), &os("7")]));
    assert!(
        e.contains("no checkpoint step-7; its checkpoints are step-2500"),
        "{e}"
    );
    let e = one_line_error(&ssmlab(&[&os("--out"), &os("k.txt")]));
    assert!(e.contains("must end in .png") && e.contains(".csv"), "{e}");
    let e = one_line_error(&ssmlab(&[&os("--model"), &os("/nonexistent/dir")]));
    assert!(e.contains("unknown model directory layout"), "{e}");
    // a checkpoint whose SSM parameters were stripped
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("no-ssm");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(fixture("bigs_tiny/config.json"), d.join("config.json")).unwrap();
    let kept: std::collections::HashMap<String, Tensor> = load_st("bigs_tiny/model.safetensors")
        .into_iter()
        .filter(|(k, _)| !k.contains(".kernel."))
        .collect();
    candle_core::safetensors::save(&kept, d.join("model.safetensors")).unwrap();
    let e = one_line_error(&ssmlab(&[&os("--model"), d.as_os_str()]));
    assert!(
        e.contains("model.safetensors has no SSM parameters")
            && e.contains("bigs.encoder.layer.0.fs4.kernel.A_re")
            && e.contains("pass a run directory"),
        "{e}"
    );
    // the same message reaches the TUI's worker path
    let err = load_model(&d, None).unwrap_err().to_string();
    assert!(err.contains("has no SSM parameters"), "{err}");
}

#[test]
fn kernels_of_every_checkpoint_of_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run: PathBuf = two_checkpoint_run(tmp.path());
    let ck = ssmlab::kernels::checkpoints(&run).unwrap();
    assert_eq!(
        ck.iter().map(|f| f.step).collect::<Vec<_>>(),
        [Some(0), Some(2500)]
    );
    let init = load_model(&run, Some(0)).unwrap();
    let last = load_model(&run, None).unwrap();
    assert_eq!(last.step, Some(2500));
    // at initialisation A is exactly the hippo init (Re −0.5) and Δt lies in its range
    for l in &init.layers {
        for d in [&l.fwd, &l.bwd] {
            for (e, i) in d.eig.iter().zip(&init.init.eig) {
                assert_eq!(e.0, -0.5);
                assert!((e.1 - i.1).abs() < 1e-4 * (1.0 + i.1.abs()));
            }
            assert!((0.01..=1.0).contains(&d.dt[0]));
        }
    }
    assert_ne!(init.layers[0].fwd.kernels, last.layers[0].fwd.kernels);
}

/// The engine's kernels of a DiffuSSM checkpoint as the sampler loads the model
/// (`Ssm::kernel` of every block's `ssm_fwd` / `ssm_bwd`, (H, L) each).
type Kernels2 = Vec<Vec<f64>>;

fn diffussm_model_kernels(run: &Path, ema: bool) -> (Vec<(Kernels2, Kernels2)>, PathBuf) {
    let dm = DiffusionModel::open(run, None, ema).unwrap();
    assert_eq!(dm.ema, ema);
    let l = dm.model.cfg.seq_len();
    let v = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    let k = dm
        .model
        .blocks
        .iter()
        .filter_map(|b| b.ssm())
        .map(|b| {
            (
                v(b.ssm_fwd.kernel(l).unwrap()),
                v(b.ssm_bwd.kernel(l).unwrap()),
            )
        })
        .collect();
    (k, dm.weights)
}

#[test]
fn kernels_diffussm_equal_the_engines_ssm_kernels() {
    let run = smoke_diffusion_run();
    let mk = load_model(run, None).unwrap();
    assert_eq!(mk.family, "DiffuSSM");
    assert_eq!(
        (mk.step, mk.len, mk.layers.len(), mk.width),
        (Some(6), 196, 2, 16)
    );
    assert!(!mk.shared, "the smoke model has per-channel kernels");
    assert_eq!(
        mk.image,
        Some(ImageGrid {
            height: 28,
            width: 28,
            patch: 2
        })
    );
    // EMA weights when the checkpoint has them, and the summary says so
    assert!(
        mk.ema && mk.weights.ends_with("step-6/ema.safetensors"),
        "{:?}",
        mk.weights
    );
    let (want, weights) = diffussm_model_kernels(run, true);
    assert_eq!(weights, mk.weights);
    for (i, (f, b)) in want.iter().enumerate() {
        assert_eq!((f.len(), f[0].len()), (16, 196));
        assert_eq!(&mk.layers[i].fwd.kernels, f, "block {i} ssm_fwd");
        assert_eq!(&mk.layers[i].bwd.kernels, b, "block {i} ssm_bwd");
        for s in [&mk.layers[i].fwd, &mk.layers[i].bwd] {
            assert_eq!((s.dt.len(), s.d.len(), s.eig.len()), (16, 16, 16 * 4));
            assert!(s.eig.iter().all(|e| e.0 < 0.0));
        }
    }
    assert!(ssmlab::kernels::summary_table(&mk, None).contains("DiffuSSM step-6 (EMA weights)"));
    // a step-N folder alone (no run config.toml) without EMA weights: the raw weights, found
    // to be DiffuSSM by its config.json
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("step-6");
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(run.join("step-6").join(f), d.join(f)).unwrap();
    }
    let raw = load_model(&d, None).unwrap();
    assert_eq!((raw.family, raw.ema), ("DiffuSSM", false));
    assert!(raw.weights.ends_with("step-6/model.safetensors"));
    let (want_raw, _) = diffussm_model_kernels(&d, false);
    assert_eq!(raw.layers[1].fwd.kernels, want_raw[1].0);
    assert_eq!(raw.layers[0].bwd.kernels, want_raw[0].1);
    assert_ne!(
        raw.layers[0].fwd.kernels, mk.layers[0].fwd.kernels,
        "EMA ≠ raw"
    );
    assert!(ssmlab::kernels::summary_table(&raw, None).contains("(raw weights"));
    // every sub-view builds, per channel, the receptive field included
    for view in SubView::ALL {
        for dir in [DirSel::Forward, DirSel::Backward, DirSel::Both] {
            let sel = Selection {
                view,
                dir,
                layer: 1,
                channel: 15,
                ..Default::default()
            };
            let f = figure(std::slice::from_ref(&mk), &sel);
            assert!(!f.panels.is_empty(), "{view:?} {dir:?}");
            assert!(f.title.contains("channel 15/16"), "{}", f.title);
        }
    }
    // the heatmap: the selected layer's channels × lag
    let sel = Selection {
        view: SubView::Heatmap,
        layer: 1,
        ..Default::default()
    };
    let Panel::Heatmap { rows, .. } = &figure(std::slice::from_ref(&mk), &sel).panels[0] else {
        panic!("heatmap")
    };
    assert_eq!(rows.len(), 16);
    assert_eq!(rows[3].label, "c3");
}

#[test]
fn kernels_fold_a_diffussm_kernel_on_its_14x14_patch_grid() {
    let mk = load_model(smoke_diffusion_run(), None).unwrap();
    let g = mk.image.unwrap();
    assert_eq!((g.rows(), g.cols()), (14, 14));
    // image pixel (13, 19) lies in patch (6, 9): token 6·14 + 9 = 93
    let (pr, pc) = g.patch_of(13, 19).unwrap();
    assert_eq!((pr, pc), (6, 9));
    assert!(
        g.patch_of(28, 0)
            .unwrap_err()
            .contains("outside the 28×28 image")
    );
    let (layer, ch) = (1usize, 5usize);
    let kf = &mk.layers[layer].fwd.kernels[ch];
    let kb = &mk.layers[layer].bwd.kernels[ch];
    let m = fold_receptive_field(kf, kb, 14, 14, pr, pc);
    assert_eq!(m.len(), 196);
    let at = |r: usize, c: usize| m[r * 14 + c];
    assert_eq!(at(6, 9), kf[0]);
    assert_eq!(at(6, 8), kf[1]); // left: earlier token
    assert_eq!(at(6, 10), kb[1]); // right: later token, the backward (anti-causal) kernel
    assert_eq!(at(5, 9), kf[14]); // a patch row up: 14 tokens earlier
    assert_eq!(at(7, 9), kb[14]);
    assert_eq!(at(0, 0), kf[93]);
    assert_eq!(at(13, 13), kb[195 - 93]);
    for r in 0..14 {
        for c in 0..14 {
            let d = (pr as i64 - r as i64) * 14 + (pc as i64 - c as i64);
            let want = if d >= 0 {
                kf[d as usize]
            } else {
                kb[(-d) as usize]
            };
            assert_eq!(at(r, c), want, "({r}, {c})");
        }
    }
    // the view's receptive field is that map scaled by its largest |value|, the patch marked
    let sel = Selection {
        view: SubView::ReceptiveField,
        layer,
        channel: ch,
        pixel: Some((pr, pc)),
        ..Default::default()
    };
    let fig = figure(std::slice::from_ref(&mk), &sel);
    assert!(
        fig.notes[0].contains("linear response")
            && fig.notes[0].contains("before the input-dependent gates")
    );
    let Panel::Field {
        rows,
        cols,
        values,
        mark,
        legend,
        ..
    } = &fig.panels[0]
    else {
        panic!("receptive field panel")
    };
    assert_eq!((*rows, *cols, *mark), (14, 14, (6, 9)));
    let max = m.iter().fold(0f64, |a, v| a.max(v.abs()));
    for (v, w) in values.iter().zip(&m) {
        assert!((v - w / max).abs() < 1e-12);
    }
    assert!(
        legend[0].contains("patch (6, 9) of 14×14 = pixels 12–13 × 18–19"),
        "{legend:?}"
    );
    assert!(legend[1].contains("token 93 of L = 196"), "{legend:?}");
    // forward only: nothing after the patch
    let fwd = figure(
        std::slice::from_ref(&mk),
        &Selection {
            dir: DirSel::Forward,
            ..sel
        },
    );
    let Panel::Field { values, .. } = &fwd.panels[0] else {
        panic!()
    };
    assert!(values[94..].iter().all(|v| *v == 0.0));
    // default pixel: the grid's centre; moving stays on the grid
    let mut s = Selection::default();
    assert_eq!(s.patch(&g), (7, 7));
    s.move_pixel(&g, -100, 3);
    assert_eq!(s.patch(&g), (0, 10));
    s.move_pixel(&g, 1, 100);
    assert_eq!(s.pixel, Some((1, 13)));
}

#[test]
fn kernels_cli_diffussm_table_receptive_field_and_errors() {
    let run = smoke_diffusion_run();
    let out = ssmlab(&[&os("--model"), run.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("ema.safetensors: DiffuSSM step-6 (EMA weights), 2 layers × 2 directions, 16 channels, one kernel each, L = 196, 28×28 image in 14×14 patches of 2²"),
        "{s}"
    );
    assert!(
        s.contains("decay min/med/max") && s.contains("A init lin (Δt init 0.001–0.1)"),
        "{s}"
    );
    let rows: Vec<&str> = s
        .lines()
        .filter(|l| l.contains(" fwd ") || l.contains(" bwd "))
        .collect();
    assert_eq!(rows.len(), 4, "{s}");
    // layer 1 bwd: decay lags and Δt aggregated over the 16 channels
    let mk = load_model(run, None).unwrap();
    let b = &mk.layers[1].bwd;
    let decay: Vec<Option<usize>> = b.kernels.iter().map(|k| decay_lag(k, 0.01)).collect();
    let (lo, med, hi) = spread(&b.dt).unwrap();
    let f: Vec<&str> = rows[3].split_whitespace().collect();
    assert_eq!(&f[..2], ["1", "bwd"]);
    assert_eq!(f[2], ssmlab::kernels::fmt_decay_spread(&decay, 196));
    assert_eq!(
        f[3..6],
        [format!("{lo:.4}"), format!("{med:.4}"), format!("{hi:.4}")]
    );

    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("rf.png");
    let out = ssmlab(&[
        &os("--model"),
        run.as_os_str(),
        &os("--pixel"),
        &os("13,19"),
        &os("--channel"),
        &os("5"),
        &os("--out"),
        png.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = image::open(&png).unwrap();
    assert!(img.width() >= 800 && img.height() >= 400);
    // without --pixel the PNG is the kernels over lags, as for BiGS; the CSV has every channel
    let csv = tmp.path().join("k.csv");
    let out = ssmlab(&[
        &os("--model"),
        run.as_os_str(),
        &os("--out"),
        csv.as_os_str(),
    ]);
    assert!(out.status.success());
    let lines = std::fs::read_to_string(&csv).unwrap().lines().count();
    assert_eq!(lines, 1 + 2 * 2 * 16 * 196);

    // bad input: one line each
    let e = one_line_error(&ssmlab(&[
        &os("--model"),
        run.as_os_str(),
        &os("--layer"),
        &os("2"),
    ]));
    assert!(
        e.contains("layer 2 is out of range")
            && e.contains("ema.safetensors has 2 layers; pass a layer from 0 to 1"),
        "{e}"
    );
    let e = one_line_error(&ssmlab(&[
        &os("--model"),
        run.as_os_str(),
        &os("--pixel"),
        &os("28,3"),
        &os("--out"),
        png.as_os_str(),
    ]));
    assert!(
        e.contains("pixel (28, 3) is outside the 28×28 image"),
        "{e}"
    );
    let e = one_line_error(&ssmlab(&[
        &os("--model"),
        run.as_os_str(),
        &os("--pixel"),
        &os("3,3"),
        &os("--channel"),
        &os("16"),
        &os("--out"),
        png.as_os_str(),
    ]));
    assert!(
        e.contains("channel 16 is out of range") && e.contains("from 0 to 15"),
        "{e}"
    );
    let e = one_line_error(&ssmlab(&[
        &os("--model"),
        run.as_os_str(),
        &os("--pixel"),
        &os("3,3"),
    ]));
    assert!(e.contains("add --out FILE.png"), "{e}");
    let png2 = tmp.path().join("b.png");
    let e = one_line_error(&ssmlab(&[
        &os("--pixel"),
        &os("3,3"),
        &os("--out"),
        png2.as_os_str(),
    ]));
    assert!(
        e.contains("BiGS model") && e.contains("needs an image model"),
        "{e}"
    );
    // a DiffuSSM checkpoint whose SSM parameters were stripped names the DiffuSSM tensors
    let d = tmp.path().join("step-6");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(run.join("step-6/config.json"), d.join("config.json")).unwrap();
    let kept: std::collections::HashMap<String, Tensor> = ssmlab::engine::weights::read_checkpoint(
        &run.join("step-6/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .filter(|(k, _)| !k.contains(".kernel."))
    .collect();
    candle_core::safetensors::save(&kept, d.join("model.safetensors")).unwrap();
    let e = one_line_error(&ssmlab(&[&os("--model"), d.as_os_str()]));
    assert!(
        e.contains("has no SSM parameters (no tensor `blocks.0.ssm_fwd.kernel.log_dt`)")
            && e.contains("diffusion run directory"),
        "{e}"
    );
}

#[test]
fn the_texts_max_k_is_the_plotted_peak() {
    let mk = load_model(&shipped_run(), None).unwrap();
    for log_lag in [false, true] {
        for dir in [DirSel::Both, DirSel::Forward, DirSel::Backward] {
            for layer in 0..mk.layers.len() {
                let sel = Selection {
                    layer,
                    dir,
                    log_lag,
                    ..Default::default()
                };
                let fig = figure(std::slice::from_ref(&mk), &sel);
                let Panel::Plot { series, .. } = &fig.panels[0] else {
                    panic!("lag view starts with a plot")
                };
                for s in series.iter().filter(|s| s.tone != Tone::Faint) {
                    let peak = s.points.iter().fold(0f64, |m, p| m.max(p.1.abs()));
                    let d = &s.label[..3];
                    let want = format!("max|K| {peak:.3}");
                    let Some(Panel::Text { lines, .. }) = fig.panels.get(1) else {
                        panic!("the lag view's second panel is its text")
                    };
                    let line = lines
                        .iter()
                        .find(|n| n.starts_with(d))
                        .unwrap_or_else(|| panic!("{lines:?}"));
                    assert!(
                        line.contains(&want),
                        "{dir:?} log {log_lag} {}: {line} vs {want}",
                        s.label
                    );
                }
            }
        }
    }
}

#[test]
fn the_png_font_has_a_glyph_for_every_printable_ascii_character() {
    use ssmlab::kernels::export::glyph;
    let unknown = glyph('\u{2603}');
    let mut seen = std::collections::HashMap::new();
    for c in (0x21u8..0x7f)
        .map(char::from)
        .filter(|c| !c.is_ascii_lowercase())
    {
        let g = glyph(c);
        assert_ne!(g, unknown, "{c:?} has no glyph");
        if let Some(o) = seen.insert(g, c) {
            panic!("{c:?} and {o:?} look the same");
        }
        assert_eq!(glyph(c.to_ascii_lowercase()), g);
    }
}

/// The records of a run's `kernels.jsonl`, by step.
fn history_steps(run: &Path) -> Vec<u64> {
    ssmlab::runs::kernels::read_kernels(&run.join("kernels.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect()
}

/// Training writes the SSM parameters at step 0 and at every evaluation, even when one
/// checkpoint is kept; the record at a checkpoint's step gives exactly that checkpoint's
/// kernels; the history of the run is the records plus the checkpoint, and Evolution shows
/// every one of them.
#[test]
fn kernel_history_records_step_0_and_every_evaluation() {
    use ssmlab::kernels::{Snapshot, load_snapshot, snapshots};
    let tmp = tempfile::tempdir().unwrap();
    let mut c = ssmlab::train::presets::preset("bigs-smoke").unwrap();
    c.train.steps = 6;
    c.train.log_every = 1;
    c.train.eval_every = 2;
    c.train.checkpoint_every = 3;
    c.train.keep_checkpoints = 1;
    let mut t = ssmlab::train::Trainer::create(c.clone(), tmp.path()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    t.run(&stop, None, &mut |_| {}).unwrap();
    let run = t.run.path.clone();
    drop(t);
    let recs = ssmlab::runs::kernels::read_kernels(&run.join("kernels.jsonl")).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.step).collect::<Vec<_>>(),
        [0, 2, 4, 6]
    );
    let (layers, n) = (c.model.num_hidden_layers, c.model.num_ssm);
    for r in &recs {
        assert!(!r.ema);
        assert_eq!(r.tensors.len(), layers * 2 * 5, "{:?}", r.tensors.keys());
        let a = &r.tensors["bigs.encoder.layer.1.bs4.kernel.C"];
        assert_eq!(
            (a.shape.as_slice(), a.values.len()),
            ([n, 2].as_slice(), 2 * n)
        );
    }
    assert!(recs.windows(2).all(|w| w[0].wall_s <= w[1].wall_s));
    // one checkpoint kept; the history is 0, 2, 4 from the log and step-6
    let snaps = snapshots(&run).unwrap();
    let kinds: Vec<(Option<u64>, bool)> = snaps
        .iter()
        .map(|s| (s.step(), matches!(s, Snapshot::History { .. })))
        .collect();
    assert_eq!(
        kinds,
        [
            (Some(0), true),
            (Some(2), true),
            (Some(4), true),
            (Some(6), false)
        ]
    );
    // the record of step 6 and checkpoint step-6: the same kernels, to the bit
    let Snapshot::History { model, path, .. } = &snaps[0] else {
        unreachable!()
    };
    let last = Snapshot::History {
        path: path.clone(),
        model: model.clone(),
        record: Box::new(recs[3].clone()),
    };
    let from_log = load_snapshot(&last).unwrap();
    let from_ck = load_model(&run, Some(6)).unwrap();
    assert_eq!(from_log.layers, from_ck.layers);
    assert_eq!(from_log.label(), "step 6 (log)");
    assert!(from_log.history && !from_ck.history);
    // the record of step 0 is the initialisation: A as the hippo init
    let init = load_snapshot(&snaps[0]).unwrap();
    for (e, i) in init.layers[0].fwd.eig.iter().zip(&init.init.eig) {
        assert_eq!(e.0, -0.5);
        assert!((e.1 - i.1).abs() < 1e-4 * (1.0 + i.1.abs()));
    }
    // Evolution: one heatmap row per entry, in step order
    let data: Vec<_> = snaps.iter().map(|s| load_snapshot(s).unwrap()).collect();
    let sel = Selection {
        view: SubView::Evolution,
        ..Default::default()
    };
    let fig = figure(&data, &sel);
    let Panel::Heatmap { rows, .. } = &fig.panels[0] else {
        panic!("{:?}", fig.panels[0])
    };
    let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        ["step 0 (log)", "step 2 (log)", "step 4 (log)", "step-6"]
    );
}

/// A diffusion run records the EMA weights (what `ema.safetensors` holds and the view reads).
#[test]
fn kernel_history_of_a_diffusion_run_is_its_ema_weights() {
    use ssmlab::kernels::{Snapshot, load_snapshot, snapshots};
    let run = smoke_diffusion_run();
    assert_eq!(history_steps(run), [0, 3, 6]);
    let recs = ssmlab::runs::kernels::read_kernels(&run.join("kernels.jsonl")).unwrap();
    assert!(recs.iter().all(|r| r.ema));
    let snaps = snapshots(run).unwrap();
    assert_eq!(
        snaps.iter().map(|s| s.step()).collect::<Vec<_>>(),
        [Some(0), Some(3), Some(6)]
    );
    let Snapshot::History { model, path, .. } = &snaps[0] else {
        panic!("step 0 comes from the log")
    };
    assert!(matches!(snaps[1], Snapshot::History { .. }));
    assert!(matches!(snaps[2], Snapshot::Checkpoint(_)));
    let rec = Snapshot::History {
        path: path.clone(),
        model: model.clone(),
        record: Box::new(recs[2].clone()),
    };
    let from_log = load_snapshot(&rec).unwrap();
    let from_ck = load_model(run, Some(6)).unwrap();
    assert!(from_ck.ema && from_log.ema);
    assert_eq!(from_log.layers, from_ck.layers);
}

/// Resuming from an older checkpoint drops the later records; a record whose step is not above
/// the previous one supersedes those at or after it; an unterminated last line is a write in
/// progress; a damaged line is an error naming the file and line.
#[test]
fn kernel_history_truncation_branches_and_bad_lines() {
    use ssmlab::runs::RunDir;
    use ssmlab::runs::kernels::{KernelRecord, SavedTensor, read_kernels};
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir {
        path: tmp.path().to_path_buf(),
    };
    let rec = |step: u64, v: f32| KernelRecord {
        step,
        wall_s: step as f64,
        ema: false,
        tensors: [(
            "x.fs4.D".to_string(),
            SavedTensor {
                shape: vec![1],
                values: vec![v],
            },
        )]
        .into(),
    };
    for s in [0, 2, 4, 6] {
        run.append_kernels(&rec(s, s as f32)).unwrap();
    }
    let p = run.kernels_path();
    assert_eq!(read_kernels(&p).unwrap().len(), 4);
    run.truncate_kernels(3).unwrap();
    assert_eq!(history_steps(tmp.path()), [0, 2]);
    assert!(!tmp.path().join("kernels.jsonl.tmp").exists());
    // a branch: 0, 2, 4 then 2 again (a resume whose truncation did not happen)
    run.append_kernels(&rec(4, 4.0)).unwrap();
    run.append_kernels(&rec(2, 20.0)).unwrap();
    let r = read_kernels(&p).unwrap();
    assert_eq!(r.iter().map(|r| r.step).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(r[1].tensors["x.fs4.D"].values, [20.0]);
    // f32 values read back exactly
    run.append_kernels(&rec(8, 0.1 + f32::EPSILON)).unwrap();
    assert_eq!(
        read_kernels(&p).unwrap()[2].tensors["x.fs4.D"].values,
        [0.1 + f32::EPSILON]
    );
    // a write in progress
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"step\":10,\"wall_s\""))
        .unwrap();
    assert_eq!(read_kernels(&p).unwrap().len(), 3);
    // damage: values that do not fill the shape, and a line that is not a record
    let bad = tmp.path().join("bad.jsonl");
    let good = serde_json::to_string(&rec(0, 1.0)).unwrap();
    std::fs::write(
        &bad,
        format!(
            "{good}\n{}\n",
            good.replace("\"shape\":[1]", "\"shape\":[3]")
        ),
    )
    .unwrap();
    let e = read_kernels(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl") && e.contains("line 2") && e.contains("needs 3 values"),
        "{e}"
    );
    std::fs::write(&bad, format!("{good}\n\u{1}junk\n")).unwrap();
    let e = read_kernels(&bad).unwrap_err().to_string();
    assert!(e.contains("line 2: not a kernel record"), "{e}");
    assert!(!e.contains('\n'));
    // the Kernels view of such a run says so, in one line
    let runs = tempfile::tempdir().unwrap();
    let r = two_checkpoint_run(runs.path());
    std::fs::copy(&bad, r.join("kernels.jsonl")).unwrap();
    let e = ssmlab::kernels::snapshots(&r).unwrap_err().to_string();
    assert!(e.contains("kernels.jsonl: line 2"), "{e}");
}
