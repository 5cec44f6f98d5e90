//! The TUI as a person sees it: TestBackend snapshots of every view at 80×24 and 160×48 with
//! fixture runs (running, finished, diverged, a corrupt metrics line), pure chart helpers, and
//! an end-to-end drive of the real binary in tmux.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ssmlab::probe::{Candidate, MaskPrediction, ProbeOutput, TargetScore};
use ssmlab::runs::index::RunsIndex;
use ssmlab::runs::{Metric, RunDir, RunState, Status, unix_now};
use ssmlab::train::presets::preset;
use ssmlab::tui::app::{App, Popup, View};
use ssmlab::tui::chart::{ema_debiased, log_ticks, minmax_downsample};
use ssmlab::tui::keymap::Keymap;
use ssmlab::tui::theme::Theme;
use ssmlab::tui::worker::WorkerMsg;

fn write_run(dir: &Path, id: &str, state: RunState, steps: u64, total: u64, corrupt: bool) {
    let run = RunDir::create(dir, id).unwrap();
    let mut cfg = preset("bigs-tiny").unwrap();
    cfg.run.name = id.into();
    cfg.train.steps = total;
    if id.contains("lr") {
        cfg.optim.lr = 1e-2;
    }
    std::fs::write(run.config_path(), cfg.to_toml()).unwrap();
    for s in 1..=steps {
        let x = s as f64;
        let mut m = Metric {
            step: s,
            tokens: s * 4096,
            wall_s: x * 1.5,
            lr: Some(2e-3),
            loss: Some(9.0 * (-x / 40.0).exp() + 3.0 + 0.3 * (x * 1.7).sin()),
            grad_norm: Some(0.5 + 0.1 * (x * 0.3).cos()),
            tokens_per_s: Some(3900.0 + 50.0 * (x * 0.1).sin()),
            ..Default::default()
        };
        if s % 25 == 0 {
            m.eval_loss = Some(9.0 * (-x / 40.0).exp() + 3.2);
            m.eval_acc = Some(0.05 + 0.2 * (1.0 - (-x / 60.0).exp()));
            m.eval_baseline_acc = Some(0.0675);
        }
        run.append_metric(&m).unwrap();
        if corrupt && s == 10 {
            std::fs::OpenOptions::new()
                .append(true)
                .open(run.metrics_path())
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, b"{\"step\": 10, \"loss\": nan-garbage\n")
                })
                .unwrap();
        }
    }
    let ck: Vec<u64> = (1..=steps).filter(|s| s % 50 == 0).collect();
    for c in &ck {
        let p = run.checkpoint_path(*c);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("model.safetensors"), b"").unwrap();
    }
    run.write_status(&Status {
        pid: std::process::id(),
        state,
        heartbeat: unix_now(),
        started: unix_now() - 100.0,
        step: steps,
        total_steps: total,
        model: "bigs".into(),
        last_checkpoint: ck.last().map(|c| format!("step-{c}")),
        best_checkpoint: ck.last().map(|c| format!("step-{c}")),
        message: match state {
            RunState::Diverged => Some("training diverged at step 61: loss NaN; the last good checkpoint (step-50) is kept".into()),
            RunState::Finished => Some(format!("finished {total} steps")),
            _ => None,
        },
    })
    .unwrap();
}

/// An app over fixture runs, with every time-dependent field pinned.
fn fixture_app() -> (tempfile::TempDir, App) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_run(d, "tiny-running", RunState::Running, 120, 500, false);
    write_run(d, "tiny-finished", RunState::Finished, 200, 200, false);
    write_run(d, "tiny-high-lr", RunState::Diverged, 61, 500, false);
    write_run(d, "tiny-corrupt", RunState::Stopped, 75, 500, true);
    let mut runs = RunsIndex::new().scan(d);
    for r in &mut runs {
        r.age_s = Some(3.0);
        if let Some(s) = &mut r.status {
            s.pid = 4242; // the liveness check is done; pin what the snapshots show
        }
    }
    let mut app = crate::common::app_over(runs);
    app.probe.a.model = Some(PathBuf::from("checkpoints/bigs-mobydick"));
    (tmp, app)
}

fn render(app: &mut App, w: u16, h: u16) -> String {
    crate::common::render_frame(app, w, h).0
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

#[test]
fn views_render_at_both_sizes() {
    let (_tmp, mut app) = fixture_app();
    let ids: Vec<String> = app.runs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(
        ids,
        [
            "tiny-corrupt",
            "tiny-finished",
            "tiny-high-lr",
            "tiny-running"
        ]
    );
    for (w, h) in [(80u16, 24u16), (160, 48)] {
        app.view = View::Runs;
        app.selected = 0;
        let s = render(&mut app, w, h);
        assert!(s.contains("tiny-running") && s.contains("running"), "{s}");
        assert!(s.contains("finished") && s.contains("diverged") && s.contains("stopped"));
        if h >= 48 {
            assert!(s.contains("1 unreadable line(s) skipped (line 11)"), "{s}");
        }
        insta::assert_snapshot!(format!("runs_{w}x{h}"), s);

        app.selected = 2; // the diverged run: its message is shown
        let s = render(&mut app, w, h);
        assert!(s.contains("diverged"));
        insta::assert_snapshot!(format!("runs_diverged_{w}x{h}"), s);

        app.view = View::Curves;
        app.marked = ["tiny-running".to_string(), "tiny-finished".to_string()].into();
        // Curves opens on the dashboard: a panel per metric for the marked runs.
        let s = render(&mut app, w, h);
        for panel in [
            "train loss",
            "eval loss",
            "eval accuracy",
            "learning rate",
            "grad norm",
        ] {
            assert!(s.contains(panel), "{panel}: {s}");
        }
        assert!(
            s.contains("tiny-running") && s.contains("tiny-finished"),
            "{s}"
        );
        insta::assert_snapshot!(format!("dashboard_{w}x{h}"), s);
        // Enter on the chosen panel (→ → = learning rate) opens it as the full chart.
        app.on_key(KeyEvent::new(KeyCode::Right, KeyModifiers::NONE));
        app.on_key(KeyEvent::new(KeyCode::Right, KeyModifiers::NONE));
        app.on_key(KeyEvent::new(KeyCode::Right, KeyModifiers::NONE));
        app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert!(!app.curves.dashboard);
        assert!(render(&mut app, w, h).contains("learning rate vs step"));
        app.on_key(key('D'));
        assert!(app.curves.dashboard);
        app.on_key(key('D'));
        app.curves.metric = ssmlab::tui::app::Metric::Loss;
        let s = render(&mut app, w, h);
        assert!(
            s.contains("train loss vs step")
                && s.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c)),
            "{s}"
        );
        insta::assert_snapshot!(format!("curves_{w}x{h}"), s);
        app.curves.log_y = true;
        app.curves.cursor = Some(0.5);
        app.on_key(key('x'));
        let s = render(&mut app, w, h);
        assert!(
            s.contains("log y") && s.contains("tokens") && s.contains("at tokens"),
            "{s}"
        );
        insta::assert_snapshot!(format!("curves_log_tokens_{w}x{h}"), s);
        app.curves = Default::default();
        app.marked.clear();

        // the selected run is a BiGS run: the samples view says what to do
        app.view = View::Samples;
        app.sync();
        let s = render(&mut app, w, h);
        assert!(
            s.contains("is a BiGS run") && s.contains("diffussm-fashion"),
            "{s}"
        );
        insta::assert_snapshot!(format!("samples_{w}x{h}"), s);
    }
}

fn fake_output(shift: f64) -> ProbeOutput {
    let cand = |t: &str, id: u32, p: f64| Candidate {
        token: t.into(),
        id,
        prob: p,
        logprob: p.ln(),
    };
    ProbeOutput {
        model: "checkpoints/bigs-mobydick/step-2500/model.safetensors".into(),
        tokens: vec![
            "[CLS]".into(),
            "call".into(),
            "me".into(),
            "[MASK]".into(),
            ".".into(),
            "[SEP]".into(),
        ],
        padded_to: 128,
        masks: vec![MaskPrediction {
            position: 3,
            top: vec![
                cand("ishmael", 900, 0.31 + shift),
                cand("on", 40, 0.11),
                cand("up", 41, 0.07 - shift / 2.0),
            ],
            entropy: 4.2,
            targets: vec![TargetScore {
                word: "ahab".into(),
                piece: "ahab".into(),
                pieces: 1,
                prob: 0.004,
                logprob: 0.004f64.ln(),
                rank: 57,
            }],
        }],
    }
}

#[test]
fn probe_view_renders_results_and_ab() {
    let (_tmp, mut app) = fixture_app();
    app.view = View::Probe;
    app.probe.prompt = "call me [MASK] .".into();
    app.on_key(key('i'));
    let s = render(&mut app, 80, 24);
    assert!(
        s.contains("INSERT") && s.contains("call me [MASK] ."),
        "{s}"
    );
    app.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    app.on_msg(WorkerMsg::Probe(0, Ok(fake_output(0.0))));
    for (w, h) in [(80u16, 24u16), (160, 48)] {
        let s = render(&mut app, w, h);
        assert!(
            s.contains("ishmael")
                && s.contains("31.00%")
                && s.contains("target ahab 0.40% rank 57"),
            "{s}"
        );
        insta::assert_snapshot!(format!("probe_{w}x{h}"), s);
    }
    app.probe.b.model = Some(PathBuf::from("checkpoints/bigs-tiny"));
    app.on_msg(WorkerMsg::Probe(1, Ok(fake_output(0.1))));
    let s = render(&mut app, 160, 48);
    assert!(
        s.contains(" B: checkpoints/bigs-tiny") && s.contains("Δ+10.0") && s.contains("Δ-10.0"),
        "{s}"
    );
    insta::assert_snapshot!("probe_ab_160x48", s);
    // without a worker, running a prompt says so instead of hanging
    app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
    assert!(matches!(&app.probe.a.result, Some(Err(e)) if e.contains("not running")));
    assert_eq!(app.probe.history, vec!["call me [MASK] ."]);
}

#[test]
fn popups_render() {
    let (_tmp, mut app) = fixture_app();
    app.popup = Some(Popup::Help);
    let s = render(&mut app, 80, 24);
    assert!(s.contains("help") && s.contains("quit"));
    insta::assert_snapshot!("help_80x24", s);
    app.popup = None;
    app.on_key(key('n'));
    let s = render(&mut app, 80, 24);
    assert!(
        s.contains("New run") && s.contains("bigs-tiny") && s.contains("valid"),
        "{s}"
    );
    insta::assert_snapshot!("launch_80x24", s);
    // a bad value is caught by the form's validation
    for _ in 0..6 {
        app.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    }
    app.on_key(key('x'));
    let s = render(&mut app, 80, 24);
    assert!(s.contains("learning rate") && s.contains("optim.lr"), "{s}");
    app.popup = None;
    app.marked = ["tiny-high-lr".to_string(), "tiny-finished".to_string()].into();
    app.on_key(key('d'));
    let s = render(&mut app, 160, 48);
    assert!(s.contains("optim.lr") && s.contains("train.steps"), "{s}");
    insta::assert_snapshot!("diff_160x48", s);
    app.popup = None;
    app.selected = 3; // running
    app.on_key(key('s'));
    let s = render(&mut app, 80, 24);
    assert!(s.contains("Stop run tiny-running?"), "{s}");
    insta::assert_snapshot!("confirm_80x24", s);
    app.on_key(key('y'));
    let s = render(&mut app, 40, 10);
    assert!(s.contains("too small"), "{s}");
}

#[test]
fn chart_helpers() {
    // debiased EMA equals a direct reference computation
    let ys = [1.0, 2.0, 4.0, 3.0];
    let w: f64 = 0.6;
    let mut m = 0.0;
    let want: Vec<f64> = ys
        .iter()
        .enumerate()
        .map(|(i, y)| {
            m = w * m + (1.0 - w) * y;
            m / (1.0 - w.powi(i as i32 + 1))
        })
        .collect();
    assert_eq!(ema_debiased(&ys, w), want);
    assert_eq!(ema_debiased(&ys, 0.0), ys.to_vec(), "no smoothing");
    assert_eq!(
        ema_debiased(&[5.0], 0.9),
        vec![5.0],
        "debiased from the first point"
    );
    // min/max downsampling keeps spikes
    let mut pts: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, 1.0)).collect();
    pts[4321].1 = 50.0;
    pts[777].1 = -9.0;
    let d = minmax_downsample(&pts, 100);
    assert!(d.len() <= 200);
    assert!(d.contains(&(4321.0, 50.0)) && d.contains(&(777.0, -9.0)));
    assert!(d.windows(2).all(|w| w[0].0 <= w[1].0), "x order kept");
    assert_eq!(
        log_ticks(0.5, 50.0),
        vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]
    );
    assert_eq!(log_ticks(1e-4, 1.0), vec![1e-4, 1e-3, 1e-2, 1e-1, 1.0]);
}

#[test]
fn bad_theme_and_settings_fall_back_with_a_notice() {
    let tmp = tempfile::tempdir().unwrap();
    let theme = tmp.path().join("broken.toml");
    std::fs::write(&theme, "name = \"x\"\nfg = \"not-a-colour\"\n").unwrap();
    let (t, err) = Theme::load(theme.to_str().unwrap());
    assert_eq!(t.name, "dark");
    assert!(err.unwrap().contains("broken.toml"));
    let theme2 = tmp.path().join("syntax.toml");
    std::fs::write(&theme2, "name = \"x\"\n\nfg = = 3\n").unwrap();
    let err = Theme::load(theme2.to_str().unwrap()).1.unwrap();
    assert!(err.contains("syntax.toml line 3"), "{err}");
    for n in Theme::names() {
        assert!(Theme::builtin(n).is_some());
    }
    let settings = tmp.path().join("config.toml");
    std::fs::write(&settings, "theme = \"light\"\nascii = yes\n").unwrap();
    let (s, notice) = ssmlab::tui::settings::load_from(&settings);
    assert!(s.theme.is_none(), "defaults after a malformed file");
    assert_eq!(notice.len(), 1, "{notice:?}");
    assert!(
        notice[0].contains("config.toml line 2") && notice[0].contains("using defaults"),
        "{notice:?}"
    );
    std::fs::write(&settings, "theme = \"hc16\"\n[keys]\nquit = \"x\"\n").unwrap();
    let (s, notice) = ssmlab::tui::settings::load_from(&settings);
    assert_eq!((s.theme.as_deref(), notice), (Some("hc16"), vec![]));
    let (_, errs) = Keymap::new(&[("teleport".to_string(), "t".to_string())].into());
    assert!(errs[0].contains("teleport"));
    let (km, _) = Keymap::new(&[("stop".to_string(), "X".to_string())].into());
    assert_eq!(
        km.lookup(ssmlab::tui::keymap::Scope::Runs, "X"),
        Some(ssmlab::tui::keymap::Action::Stop)
    );
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn step_of(screen: &str, run: &str) -> Option<u64> {
    let line = screen
        .lines()
        .find(|l| l.contains(run) && l.contains("running"))?;
    let tok = line
        .split_whitespace()
        .find(|w| w.contains('/') && w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    tok.split('/').next()?.parse().ok()
}

/// An app over a run with two checkpoints (init and the shipped weights), its kernels loaded as
/// the worker would deliver them.
fn kernels_app() -> (tempfile::TempDir, App) {
    let tmp = tempfile::tempdir().unwrap();
    let run = crate::common::two_checkpoint_run(tmp.path());
    let mut runs = RunsIndex::new().scan(tmp.path());
    for r in &mut runs {
        r.age_s = Some(3.0);
    }
    let (keymap, _) = Keymap::new(&Default::default());
    let mut app = App::new(
        PathBuf::from("checkpoints"),
        keymap,
        Theme::builtin("dark").unwrap(),
    );
    app.set_runs(runs);
    let data = ssmlab::kernels::checkpoints(&run)
        .unwrap()
        .iter()
        .map(|f| ssmlab::kernels::load_kernels(f).unwrap())
        .collect();
    app.kernels.set(run, data);
    app.view = View::Kernels;
    (tmp, app)
}

/// The Evolution sub-view on the shipped runs as they are: one checkpoint each, and the
/// `kernels.jsonl` the trainer wrote at step 0 and at every evaluation.
#[test]
fn kernels_evolution_of_the_shipped_runs() {
    for (name, steps) in [
        ("bigs-mobydick", vec![0u64, 500, 1000, 1500, 2000, 2500]),
        (
            "diffussm-fashion",
            vec![0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2250, 2500],
        ),
    ] {
        let run = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("checkpoints")
            .join(name);
        let snaps = ssmlab::kernels::snapshots(&run).unwrap();
        assert_eq!(
            snaps.iter().map(|s| s.step().unwrap()).collect::<Vec<_>>(),
            steps,
            "{name}"
        );
        let data: Vec<_> = snaps
            .iter()
            .map(|s| ssmlab::kernels::load_snapshot(s).unwrap())
            .collect();
        assert!(!data.last().unwrap().history, "the last is the checkpoint");
        let mut app = crate::common::app_over(RunsIndex::new().scan(run.parent().unwrap()));
        // the view follows the selected run: select the one whose kernels are set
        app.selected = app.runs.iter().position(|r| r.path == run).unwrap();
        app.kernels.set(run.clone(), data);
        app.kernels.sel.view = ssmlab::kernels::figure::SubView::Evolution;
        app.view = View::Kernels;
        for (w, h) in [(80u16, 24u16), (200, 60)] {
            let s = render(&mut app, w, h);
            assert!(
                s.contains("over training")
                    && s.contains(&format!("history {}/{}", steps.len(), steps.len())),
                "{s}"
            );
            if h >= 60 {
                assert!(s.contains("step 0 (log)") && s.contains("step-2500"), "{s}");
            }
            insta::assert_snapshot!(format!("kernels_evolution_shipped_{name}_{w}x{h}"), s);
        }
    }
}

#[test]
fn kernels_views_render_at_both_sizes() {
    let (_tmp, mut app) = kernels_app();
    let needles = [
        "kernel vs lag",
        "layers × lag",
        "|FFT(K)|",
        "eigenvalues of A",
        "over training",
    ];
    for (w, h) in [(80u16, 24u16), (160, 48)] {
        app.kernels.sel = Default::default();
        app.kernels.sel.checkpoint = 1;
        for (i, needle) in needles.iter().enumerate() {
            let s = render(&mut app, w, h);
            assert!(s.contains(needle), "{needle}:\n{s}");
            assert!(
                s.contains("step-2500") && s.contains("checkpoint 2/2"),
                "{s}"
            );
            assert!(s.contains("not an attention map"), "{s}");
            let slug = ssmlab::kernels::figure::SubView::ALL[i].slug();
            insta::assert_snapshot!(format!("kernels_{slug}_{w}x{h}"), s);
            app.on_key(key('v'));
        }
    }
    // layer, direction, log lag and checkpoint keys
    app.kernels.sel = Default::default();
    app.kernels.sel.checkpoint = 1;
    app.on_key(key(']'));
    app.on_key(key(']'));
    app.on_key(key('d')); // forward only
    app.on_key(key('L'));
    app.on_key(key('{'));
    let s = render(&mut app, 160, 48);
    assert!(
        s.contains("layer 2 of 0–3")
            && s.contains("step-0")
            && s.contains("· forward")
            && s.contains("lag (log)")
            && s.contains("checkpoint 1/2"),
        "{s}"
    );
    insta::assert_snapshot!("kernels_lag_log_forward_step0_160x48", s);
    for _ in 0..10 {
        app.on_key(key(']'));
        app.on_key(key('}'));
    }
    assert_eq!(
        (app.kernels.sel.layer, app.kernels.sel.checkpoint),
        (3, 1),
        "clamped"
    );
    // BiGS kernels are shared by all channels: ←/→ says so instead of moving
    app.on_key(KeyEvent::new(KeyCode::Right, KeyModifiers::NONE));
    assert!(
        app.notices
            .last()
            .unwrap()
            .contains("shared by 128 channels")
    );
    // without a worker, a new selection says so instead of hanging
    app.kernels.model = None;
    app.sync();
    let s = render(&mut app, 80, 24);
    assert!(s.contains("the kernels worker is not running"), "{s}");
}

/// An app showing the kernels of a DiffuSSM run (the seeded initialisation of the smoke model:
/// the same on every machine).
fn diffusion_kernels_app() -> (tempfile::TempDir, App) {
    let tmp = tempfile::tempdir().unwrap();
    let run = crate::common::diffusion_init_run(tmp.path());
    let (keymap, _) = Keymap::new(&Default::default());
    let mut app = App::new(
        PathBuf::from("checkpoints"),
        keymap,
        Theme::builtin("dark").unwrap(),
    );
    app.set_runs(RunsIndex::new().scan(tmp.path()));
    let data = ssmlab::kernels::checkpoints(&run)
        .unwrap()
        .iter()
        .map(|f| ssmlab::kernels::load_kernels(f).unwrap())
        .collect();
    app.kernels.set(run, data);
    app.view = View::Kernels;
    (tmp, app)
}

#[test]
fn kernels_receptive_field_renders_at_both_sizes() {
    use ssmlab::kernels::figure::SubView;
    let (tmp, mut app) = diffusion_kernels_app();
    // the `v` cycle of an image model ends in the receptive field, then starts over
    let mut seen = vec![app.kernels.sel.view];
    for _ in 0..6 {
        app.on_key(key('v'));
        seen.push(app.kernels.sel.view);
    }
    assert_eq!(&seen[..6], SubView::ALL);
    assert_eq!(seen[6], SubView::Lag);
    for _ in 0..5 {
        app.on_key(key('v'));
    }
    assert_eq!(app.kernels.sel.view, SubView::ReceptiveField);
    // layer 1, channel 11 (forward and backward kernels of similar size: a ZOH kernel scales
    // with its Δt), the pixel moved from the centre (7, 7) to (6, 9)
    app.on_key(key(']'));
    for _ in 0..11 {
        app.on_key(KeyEvent::new(KeyCode::Right, KeyModifiers::NONE));
    }
    app.on_key(key('t'));
    app.on_key(key('h'));
    app.on_key(key('h'));
    assert_eq!(app.kernels.sel.pixel, Some((6, 9)));
    for (w, h) in [(80u16, 24u16), (160, 48)] {
        let s = render(&mut app, w, h);
        assert!(
            s.contains("DiffuSSM step-0 · receptive field · layer 1 of 0–1 · channel 11/16"),
            "{s}"
        );
        assert!(s.contains("before the input-dependent gates"), "{s}");
        assert!(s.contains("patch (6, 9) of 14×14"), "{s}");
        assert!(s.contains("t/g/f/h move the pixel"), "{s}");
        insta::assert_snapshot!(format!("kernels_receptive_field_{w}x{h}"), s);
    }
    // the pixel stays on the grid; the other sub-views say what the keys are for
    for _ in 0..20 {
        app.on_key(key('g'));
        app.on_key(key('f'));
    }
    assert_eq!(app.kernels.sel.pixel, Some((13, 0)));
    app.on_key(key('v'));
    assert_eq!(app.kernels.sel.view, SubView::Lag);
    app.on_key(key('t'));
    assert!(
        app.notices.last().unwrap().contains("press v"),
        "{:?}",
        app.notices
    );
    assert_eq!(app.kernels.sel.pixel, Some((13, 0)));
    // export writes the receptive field
    for _ in 0..5 {
        app.on_key(key('v'));
    }
    app.on_key(key('e'));
    let want = tmp
        .path()
        .join("diffussm-init/kernels-receptive-field-step-0-layer1.png");
    assert_eq!(
        app.notices.last().unwrap(),
        &format!("exported {}", want.display())
    );
    assert!(image::open(&want).unwrap().width() > 500);
}

#[test]
fn kernels_receptive_field_of_large_grids_uses_half_blocks_and_a_window() {
    use ssmlab::kernels::figure::SubView;
    let tmp = tempfile::tempdir().unwrap();
    let (keymap, _) = Keymap::new(&Default::default());
    let mut app = App::new(
        PathBuf::from("checkpoints"),
        keymap,
        Theme::builtin("dark").unwrap(),
    );
    for (side, cropped) in [(32usize, false), (48, true)] {
        let run = crate::common::diffusion_init_run_with(tmp.path(), &format!("px{side}"), |c| {
            (c.image_height, c.image_width, c.patch_size) = (side, side, 1);
        });
        let data = ssmlab::kernels::checkpoints(&run)
            .unwrap()
            .iter()
            .map(|f| ssmlab::kernels::load_kernels(f).unwrap())
            .collect();
        app.kernels.set(run, data);
        app.view = View::Kernels;
        app.kernels.sel.view = SubView::ReceptiveField;
        app.kernels.sel.pixel = Some((3, side - 2));
        let s = render(&mut app, 80, 24);
        assert!(
            s.contains(&format!("pixel (3, {}) of {side}×{side}", side - 2)),
            "{s}"
        );
        // one column and half a line per pixel: `▀` with two colours, the pixel in the accent
        let grid: Vec<&str> = s.lines().filter(|l| l.contains('▀')).collect();
        assert!(!grid.is_empty(), "{s}");
        let width = grid[0]
            .chars()
            .skip(1)
            .take_while(|c| *c == '▀' || *c == '▄')
            .count();
        assert_eq!(width, side.min(78), "{s}");
        assert_eq!(s.contains("showing rows 0–31"), cropped, "{s}");
    }
}

#[test]
fn kernels_receptive_field_is_not_offered_for_bigs() {
    use ssmlab::kernels::figure::SubView;
    let (_tmp, mut app) = kernels_app();
    for _ in 0..12 {
        app.on_key(key('v'));
        assert_ne!(app.kernels.sel.view, SubView::ReceptiveField);
    }
    app.on_key(key('h'));
    assert!(
        app.notices.last().unwrap().contains("image models"),
        "{:?}",
        app.notices
    );
    // a selection left on the receptive field falls back to the lag view
    app.kernels.sel.view = SubView::ReceptiveField;
    let s = render(&mut app, 80, 24);
    assert!(s.contains("kernel vs lag"), "{s}");
}

#[test]
fn kernels_export_writes_the_picture_into_the_run_dir() {
    let (tmp, mut app) = kernels_app();
    app.on_key(key('v')); // heatmap
    app.on_key(key('e'));
    let msg = app.notices.last().unwrap().clone();
    let want = tmp
        .path()
        .join("bigs-mobydick/kernels-heatmap-step-2500-layer0.png");
    assert_eq!(msg, format!("exported {}", want.display()));
    let img = image::open(&want).unwrap();
    assert!(img.width() > 500 && img.height() > 300);
    let s = render(&mut app, 160, 48);
    assert!(
        s.contains("exported ") && s.contains("kernels-heatmap"),
        "{s}"
    );
}

/// A tmux session running the real binary; dropped, it is killed.
pub(crate) struct Tmux {
    pub(crate) sock: String,
    pub(crate) session: String,
}

impl Tmux {
    pub(crate) fn start(dir: &Path, cmd: &str) -> Tmux {
        if Command::new("tmux").arg("-V").output().is_err() {
            panic!("tmux is needed for this test (.ci/run installs it)");
        }
        let t = Tmux {
            sock: dir.join("tmux.sock").to_str().unwrap().to_string(),
            session: format!("ssmlab-k-{}", std::process::id()),
        };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            &t.session,
            "-x",
            "120",
            "-y",
            "40",
            "bash",
            "--norc",
            "--noprofile",
        ]);
        t.run(&["send-keys", "-t", &t.session, cmd, "Enter"]);
        t
    }
    pub(crate) fn run(&self, args: &[&str]) -> String {
        let mut a = vec!["-S", &self.sock];
        a.extend_from_slice(args);
        tmux(&a)
    }
    pub(crate) fn screen(&self) -> String {
        self.run(&["capture-pane", "-t", &self.session, "-p"])
    }
    pub(crate) fn wait(&self, pred: &dyn Fn(&str) -> bool, secs: u64) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "timed out; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    pub(crate) fn keys(&self, k: &[&str]) {
        for key in k {
            self.run(&["send-keys", "-t", &self.session, key]);
            std::thread::sleep(Duration::from_millis(60));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        drop(crate::common::TmuxCleanup {
            sock: self.sock.clone(),
            runs: None,
        });
    }
}

#[test]
fn kernels_end_to_end_in_tmux() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let run = crate::common::two_checkpoint_run(&runs);
    let cmd = crate::common::tui_command(tmp.path(), &runs);
    let t = Tmux::start(tmp.path(), &cmd);
    t.wait(
        &|s| s.contains("bigs-mobydick") && s.contains("finished"),
        20,
    );
    t.keys(&["5"]);
    let s = t.wait(
        &|s| s.contains("kernel vs lag") && s.contains("checkpoint 2/2"),
        30,
    );
    assert!(
        s.contains("layer 0 of 0–3") && s.contains("step-2500"),
        "{s}"
    );
    // layers forward and back
    t.keys(&["]", "]", "]"]);
    t.wait(&|s| s.contains("layer 3 of 0–3"), 5);
    t.keys(&["["]);
    t.wait(&|s| s.contains("layer 2 of 0–3"), 5);
    // checkpoints back and forth
    t.keys(&["{"]);
    t.wait(
        &|s| s.contains("checkpoint 1/2 (step-0)") && s.contains("BiGS step-0"),
        5,
    );
    t.keys(&["}"]);
    t.wait(&|s| s.contains("checkpoint 2/2 (step-2500)"), 5);
    // direction, log lag, sub-views
    t.keys(&["d", "L"]);
    t.wait(&|s| s.contains("· forward") && s.contains("log lag"), 5);
    t.keys(&["v", "v", "v", "v"]);
    let s = t.wait(&|s| s.contains("over training"), 5);
    assert!(s.contains("step-0") && s.contains("step-2500"), "{s}");
    t.keys(&["e"]);
    let s = t.wait(&|s| s.contains("exported "), 10);
    let png = run.join("kernels-evolution-step-2500-layer2.png");
    assert!(png.is_file(), "{s}");
    t.keys(&["?"]);
    let s = t.wait(&|s| s.contains("help"), 5);
    assert!(
        s.contains("log-lag axis") && s.contains("export PNG"),
        "{s}"
    );
    t.keys(&["Escape", "q"]);
    t.wait(&|s| s.contains("EXITED=0"), 10);
}

#[test]
fn end_to_end_in_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is needed for this test (.ci/run installs it)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let session = format!("ssmlab-e2e-{}", std::process::id());
    let sock = tmp.path().join("tmux.sock");
    let sock = sock.to_str().unwrap();
    let _cleanup = crate::common::TmuxCleanup {
        sock: sock.to_string(),
        runs: Some(runs.clone()),
    };
    let t = |args: &[&str]| {
        let mut a = vec!["-S", sock];
        a.extend_from_slice(args);
        tmux(&a)
    };
    let cmd = crate::common::tui_command(Path::new(env!("CARGO_MANIFEST_DIR")), &runs);
    t(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "40",
        "bash",
        "--norc",
        "--noprofile",
    ]);
    t(&["send-keys", "-t", &session, &cmd, "Enter"]);
    let cap = |_: ()| t(&["capture-pane", "-t", &session, "-p"]);
    let wait = |pred: &dyn Fn(&str) -> bool, secs: u64| {
        let t0 = Instant::now();
        loop {
            let s = cap(());
            if pred(&s) {
                return s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "timed out; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let keys = |k: &[&str]| {
        for key in k {
            t(&["send-keys", "-t", &session, key]);
            std::thread::sleep(Duration::from_millis(60));
        }
    };
    wait(&|s| s.contains("no runs under"), 20);
    // launch form: preset bigs-smoke (← from the first preset wraps to the last), steps 100000
    keys(&["n"]);
    wait(&|s| s.contains("New run"), 5);
    keys(&["Left"]);
    wait(&|s| s.contains("◀ bigs-smoke ▶"), 5);
    keys(&[
        "Down", "Down", "Down", "Down", "Down", "Down", "Down", "BSpace", "BSpace", "BSpace", "1",
        "0", "0", "0", "0", "0", "Enter",
    ]);
    let s = wait(&|s| step_of(s, "bigs-smoke").is_some_and(|n| n >= 5), 90);
    let first = step_of(&s, "bigs-smoke").unwrap();
    let s = wait(
        &|s| step_of(s, "bigs-smoke").is_some_and(|n| n > first + 5),
        60,
    );
    assert!(s.contains("launched bigs-smoke") || s.contains("bigs-smoke"));
    // the curves view opens on the dashboard; Enter opens its first panel, the loss chart
    keys(&["2"]);
    wait(&|s| s.contains("train loss") && s.contains("grad norm"), 10);
    keys(&["Enter"]);
    let s = wait(
        &|s| {
            s.contains("train loss vs step")
                && s.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c))
        },
        10,
    );
    assert!(s.contains("bigs-smoke"));
    // stop from the Curves view (run actions work in every view)
    keys(&["s"]);
    wait(&|s| s.contains("Stop run bigs-smoke?"), 5);
    keys(&["y"]);
    keys(&["1"]);
    let run = RunDir {
        path: runs.join("bigs-smoke"),
    };
    let t0 = Instant::now();
    while run.read_status().map(|s| s.state).ok() != Some(RunState::Stopped) {
        assert!(t0.elapsed() < Duration::from_secs(30), "run did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait(&|s| s.contains("stopped"), 10);
    // probe the run's checkpoint: view 3, model A = selected run, type a prompt, Enter
    keys(&["3", "a", "i"]);
    t(&["send-keys", "-t", &session, "-l", "the [MASK] of the sea ."]);
    keys(&["Enter"]);
    let s = wait(&|s| s.contains("[MASK] #1 (pos 2"), 30);
    assert!(
        s.contains("A: ") && s.contains("bigs-smoke") && s.contains('%'),
        "{s}"
    );
    // the Compare view lists the masked-LM run; the scaling needs an attention twin
    keys(&["6"]);
    wait(
        &|s| s.contains("do we need attention?") && s.contains("MFLOP/tok"),
        10,
    );
    keys(&["t"]);
    wait(&|s| s.contains("needs a BiGS"), 10);
    keys(&["q"]);
    let s = wait(&|s| s.contains("EXITED=0"), 10);
    assert!(
        !s.contains("ssmlab  1 Runs"),
        "the TUI's screen is gone after quitting:\n{s}"
    );
    let alt = t(&["display-message", "-p", "-t", &session, "#{alternate_on}"]);
    assert_eq!(alt.trim(), "0", "alternate screen left");
    t(&["kill-session", "-t", &session]);
}

/// One `"loss": 1e300` in a run's log once hung the TUI at 100% CPU on a log y axis (the tick
/// loop ran to i32::MAX over an overflowed bound). Now the curves draw, log and linear, and the
/// TUI quits cleanly.
#[test]
fn an_extreme_logged_value_never_hangs_the_curves() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    write_run(&runs, "huge", RunState::Finished, 30, 30, false);
    let run = RunDir {
        path: runs.join("huge"),
    };
    run.append_metric(&Metric {
        step: 31,
        tokens: 31 * 4096,
        wall_s: 46.5,
        loss: Some(1e300),
        ..Default::default()
    })
    .unwrap();
    let spread = log_ticks(1e-3, f64::INFINITY);
    assert!(!spread.is_empty() && spread.len() <= 30, "{spread:?}");
    let cmd = crate::common::tui_command(tmp.path(), &runs);
    let t = Tmux::start(tmp.path(), &cmd);
    t.wait(&|s| s.contains("huge"), 20);
    // the dashboard (linear panels), then the train loss chart on a log axis
    t.keys(&["2"]);
    t.wait(&|s| s.contains("train loss") && s.contains("grad norm"), 10);
    t.keys(&["Enter"]);
    t.wait(&|s| s.contains("train loss vs step"), 10);
    t.keys(&["l"]);
    std::thread::sleep(Duration::from_millis(500));
    t.wait(
        &|s| s.contains("train loss vs step · smoothing 0.60 · log y"),
        10,
    );
    t.keys(&["l", "q"]);
    let s = t.wait(&|s| s.contains("EXITED="), 20);
    assert!(s.contains("EXITED=0"), "{s}");
}

/// The shipped BiGS run in an app on its Curves view, one metric at a time.
fn shipped_curves_app() -> App {
    let runs: Vec<_> = RunsIndex::new()
        .scan(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("checkpoints")
                .as_path(),
        )
        .into_iter()
        .filter(|r| r.id == "bigs-mobydick")
        .collect();
    let mut app = crate::common::app_over(runs);
    app.view = View::Curves;
    app.curves.dashboard = false;
    app
}

#[test]
fn latest_is_the_last_logged_value_at_any_width() {
    use ssmlab::tui::app::Metric as M;
    use ssmlab::tui::chart::fmt_value;
    let mut app = shipped_curves_app();
    // the values as logged in the file, in full precision (the view keeps them as f32)
    let (metrics, bad) =
        ssmlab::runs::read_metrics(&app.runs[0].path.join("metrics.jsonl")).unwrap();
    assert!(bad.is_empty());
    for metric in M::ALL {
        app.curves.metric = metric;
        let want = metrics.iter().rev().find_map(|m| metric.get(m)).unwrap();
        for smoothing in [0.0, 0.6, 0.95] {
            app.curves.smoothing = smoothing;
            for w in (60..=200).step_by(7) {
                let s = render(&mut app, w, 30);
                let line = s.lines().find(|l| l.contains("latest:")).unwrap();
                assert!(
                    line.contains(&format!("bigs-mobydick {} (smoothed ", fmt_value(want))),
                    "{metric:?} at width {w}: {line}"
                );
            }
        }
    }
    assert_eq!(fmt_value(4.614039876814426), "4.614");
    assert_eq!(fmt_value(0.2709812108559499), "0.27098");
}

#[test]
fn accuracy_chart_draws_the_baseline_and_the_cursor_snaps_to_logged_steps() {
    use ssmlab::tui::app::Metric as M;
    let mut app = shipped_curves_app();
    app.curves.metric = M::EvalAcc;
    let eval_steps: Vec<u64> = app.runs[0]
        .metrics
        .iter()
        .filter(|m| m.eval_acc.is_some())
        .map(|m| m.step)
        .collect();
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        app.curves.cursor = None;
        let s = render(&mut app, w, h);
        assert!(s.contains("baseline (most frequent)"), "{s}");
        assert!(s.contains("latest: bigs-mobydick 0.27098"), "{s}");
        insta::assert_snapshot!(format!("curves_accuracy_{w}x{h}"), s);
        app.curves.cursor = Some(0.37);
        let s = render(&mut app, w, h);
        let line = s.lines().find(|l| l.contains(" at step ")).unwrap();
        let step: u64 = line
            .split(" at step ")
            .nth(1)
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap();
        assert!(
            eval_steps.contains(&step),
            "{step} is not a logged eval step: {line}"
        );
        let m = app.runs[0].metrics.iter().find(|m| m.step == step).unwrap();
        let v = ssmlab::tui::chart::fmt_value(m.eval_acc.unwrap());
        assert!(
            line.contains(&format!("bigs-mobydick {v} (smoothed")),
            "{line}"
        );
    }
    // Integer steps, counts and h:mm:ss on the x axis.
    assert_eq!(ssmlab::tui::app::XAxis::Step.fmt(12500.0), "12,500");
    assert_eq!(ssmlab::tui::app::XAxis::Tokens.fmt(5_120_000.0), "5.1M");
    assert_eq!(ssmlab::tui::app::XAxis::Wall.fmt(2899.95), "0:48:20");
}

#[test]
fn the_launch_form_starts_a_sweep_when_given_a_grid() {
    use ssmlab::tui::views::form::LaunchForm;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    struct Stop(PathBuf);
    impl Drop for Stop {
        fn drop(&mut self) {
            crate::common::stop_trainers(&self.0);
        }
    }
    let _stop = Stop(runs.clone());
    let mut form = LaunchForm::new(runs.clone());
    form.preset = ssmlab::train::presets::PRESETS
        .iter()
        .position(|(n, _)| *n == "bigs-smoke")
        .unwrap();
    form.on_key(KeyEvent::new(KeyCode::Right, KeyModifiers::NONE));
    form.on_key(KeyEvent::new(KeyCode::Left, KeyModifiers::NONE));
    form.values[0] = "fs".into();
    // the sweep row is the last; typing there edits the grid
    for _ in 0..20 {
        form.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
    }
    for c in "optim.lrx=1".chars() {
        form.on_key(key(c));
    }
    let e = form.resolve().unwrap_err();
    assert!(e.contains("optim.lrx") && e.contains("no such key"), "{e}");
    form.sweep = "optim.lr=1e-3,3e-3".into();
    form.resolve().unwrap();
    let msg = form
        .launch(Path::new(env!("CARGO_BIN_EXE_ssmlab")))
        .unwrap();
    assert!(
        msg.contains("launched sweep fs") && msg.contains("2 runs"),
        "{msg}"
    );
    let t0 = std::time::Instant::now();
    let done = |id: &str| {
        ssmlab::runs::RunDir::open(&runs.join(id))
            .and_then(|r| r.read_status())
            .is_ok_and(|s| s.state == ssmlab::runs::RunState::Finished)
    };
    while !(done("fs-1") && done("fs-2")) {
        assert!(t0.elapsed().as_secs() < 120, "the sweep did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let f = ssmlab::sweep::SweepFile::read(&runs.join("fs.sweep.toml")).unwrap();
    assert_eq!(f.runs[1].sets, ["optim.lr=3e-3"]);
    // the same sweep again is valid (a rerun skips it); another grid under that name is not
    form.sweep = "optim.lr=1e-3".into();
    let e = form.resolve().unwrap_err();
    assert!(e.contains("choose another --name"), "{e}");
}
