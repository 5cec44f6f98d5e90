//! The samples view: TestBackend snapshots (half blocks) of a fixture diffusion run with two
//! sample steps and a trajectory, the half-block renderer's exact cell colours, "sample now"
//! through the sampler worker with a fake sampler, and the real binary in tmux (steps, the
//! viuer full-screen view and back).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::widgets::Widget;
use ssmlab::data::images::{FASHION_CLASSES, save_grid_png};
use ssmlab::runs::index::RunsIndex;
use ssmlab::runs::samples::{SampleMeta, TrajectoryFrame, publish};
use ssmlab::runs::{RunDir, RunState, Status, unix_now};
use ssmlab::train::presets::preset;
use ssmlab::tui::app::{App, Effect, View};
use ssmlab::tui::image::{HalfBlocks, Picture, Protocol, fit, resample};
use ssmlab::tui::worker::{SampleEvent, SampleRequest, WorkerMsg, report_to, spawn_sample};

const ROWS: usize = 4;
const COLS: usize = 4;
const TILE: usize = 8;

/// Deterministic tiles: a bar whose length grows with the training step, sharper at small t.
fn tiles(step: u64, t: Option<u32>) -> Vec<f32> {
    let mut v = Vec::with_capacity(ROWS * COLS * TILE * TILE);
    for k in 0..ROWS * COLS {
        let class = k / COLS;
        for y in 0..TILE {
            for x in 0..TILE {
                let shape = if (x + class) % TILE < (step as usize / 50).min(TILE) && y > 1 {
                    1.0
                } else {
                    -1.0
                };
                let noise = (((k * 131 + y * 17 + x * 7) % 23) as f32 / 11.0) - 1.0;
                let a = t.map_or(0.0, |t| t as f32 / 1000.0);
                v.push((1.0 - a) * shape + a * noise);
            }
        }
    }
    v
}

/// `samples/step-N/` as the trainer writes it: meta.json, grid.png, traj-TTTT.png.
fn write_sample_set(run: &Path, name: &str, step: u64, manual_class: Option<u32>) -> PathBuf {
    let dir = run.join("samples").join(name);
    let tmp = run.join("samples").join(format!("{name}.tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut trajectory = Vec::new();
    for t in [999u32, 500, 100] {
        let file = format!("traj-{t:04}.png");
        save_grid_png(
            &tmp.join(&file),
            &tiles(step, Some(t)),
            ROWS * COLS,
            1,
            TILE,
            TILE,
            ROWS,
            COLS,
            1,
        )
        .unwrap();
        trajectory.push(TrajectoryFrame { t, file });
    }
    save_grid_png(
        &tmp.join("grid.png"),
        &tiles(step, None),
        ROWS * COLS,
        1,
        TILE,
        TILE,
        ROWS,
        COLS,
        1,
    )
    .unwrap();
    let classes = (0..ROWS * COLS)
        .map(|k| match manual_class {
            Some(c) => Some(c),
            None => Some((k / COLS) as u32),
        })
        .collect();
    let meta = SampleMeta {
        step,
        seed: 1234,
        classes,
        class_names: FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
        rows: ROWS,
        cols: COLS,
        tile_h: TILE,
        tile_w: TILE,
        channels: 1,
        sampler: "ddim".into(),
        sampling_steps: 50,
        guidance: 2.0,
        ema: true,
        grid: "grid.png".into(),
        trajectory,
        seconds: 1.5,
    };
    std::fs::write(
        tmp.join("meta.json"),
        serde_json::to_string_pretty(&meta).unwrap(),
    )
    .unwrap();
    publish(&tmp, &dir).unwrap();
    dir
}

/// A finished diffusion run (a copy of the bigs-tiny test config; status model "diffussm")
/// with samples at steps 100 and 200.
fn write_diffusion_run(runs: &Path, id: &str) -> PathBuf {
    let run = RunDir::create(runs, id).unwrap();
    let mut cfg = preset("bigs-tiny").unwrap();
    cfg.run.name = id.into();
    std::fs::write(run.config_path(), cfg.to_toml()).unwrap();
    run.write_status(&Status {
        pid: 4242,
        state: RunState::Finished,
        heartbeat: unix_now(),
        started: unix_now() - 100.0,
        step: 200,
        total_steps: 200,
        model: "diffussm".into(),
        last_checkpoint: Some("step-200".into()),
        best_checkpoint: None,
        message: Some("finished 200 steps".into()),
    })
    .unwrap();
    for step in [100, 200] {
        write_sample_set(&run.path, &format!("step-{step}"), step, None);
    }
    run.path
}

fn fixture_app(runs: &Path) -> App {
    let mut index = RunsIndex::new();
    let mut rs = index.scan(runs);
    for r in &mut rs {
        r.age_s = Some(3.0);
    }
    crate::common::app_over(rs)
}

fn render(app: &mut App, w: u16, h: u16) -> (String, Buffer) {
    crate::common::render_frame(app, w, h)
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn code(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

#[test]
fn samples_under_no_color_are_grey_shades() {
    let tmp = tempfile::tempdir().unwrap();
    write_diffusion_run(tmp.path(), "diff-fashion");
    let mut app = fixture_app(tmp.path());
    app.theme = app.theme.clone().without_color();
    app.on_key(key('4'));
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        let (s, buf) = render(&mut app, w, h);
        assert!(!s.contains('▀'), "{s}");
        assert!(s.chars().any(|c| "░▒▓█".contains(c)), "{s}");
        assert!(
            buf.content
                .iter()
                .all(|c| !matches!(c.fg, Color::Rgb(..)) && !matches!(c.bg, Color::Rgb(..))),
            "no colour under NO_COLOR"
        );
        insta::assert_snapshot!(format!("samples_no_color_{w}x{h}"), s);
    }
}

#[test]
fn samples_view_snapshots() {
    let tmp = tempfile::tempdir().unwrap();
    write_diffusion_run(tmp.path(), "diff-fashion");
    let mut app = fixture_app(tmp.path());
    app.on_key(key('4'));
    assert_eq!(app.view, View::Samples);
    // listed and decoded inline (no worker in tests); the latest step is selected
    assert_eq!(app.samples.sets.len(), 2);
    assert_eq!(app.samples.current().unwrap().meta.step, 200);
    for (w, h) in [(80u16, 24u16), (120, 40)] {
        let (s, _) = render(&mut app, w, h);
        assert!(
            s.contains("diff-fashion · step 200")
                && s.contains("seed 1234")
                && s.contains("ddim 50 steps")
                && s.contains("guidance 2.0")
                && s.contains("EMA")
                && s.contains("step 100")
                && s.contains('▀')
                && s.contains("x₀"),
            "{s}"
        );
        if w >= 120 {
            // one class per tile row: names beside the rows; the same seed is said
            assert!(s.contains("T-shirt/top") && s.contains("Pullover"), "{s}");
            assert!(s.contains("the same at all 2 steps"), "{s}");
        }
        insta::assert_snapshot!(format!("samples_view_{w}x{h}"), s);
    }
    // ← to step 100, the trajectory scrubber back to t=999, then forward to the grid
    app.on_key(code(KeyCode::Left));
    assert_eq!(app.samples.current().unwrap().meta.step, 100);
    app.on_key(key(','));
    let (path, t) = app.samples.current_image().unwrap();
    assert_eq!(t, Some(100));
    assert!(path.ends_with("step-100/traj-0100.png"));
    for _ in 0..5 {
        app.on_key(key(','));
    }
    assert_eq!(app.samples.current_image().unwrap().1, Some(999));
    let (s, _) = render(&mut app, 120, 40);
    assert!(s.contains("traj-0999.png") && s.contains("step 100"), "{s}");
    insta::assert_snapshot!("samples_view_traj_120x40", s);
    // the trajectory position is kept across steps
    app.on_key(code(KeyCode::End));
    assert_eq!(app.samples.current().unwrap().meta.step, 200);
    assert_eq!(app.samples.current_image().unwrap().1, Some(999));
    for _ in 0..4 {
        app.on_key(key('.'));
    }
    assert_eq!(app.samples.current_image().unwrap().1, None, "back at x₀");
    app.on_key(code(KeyCode::Home));
    assert_eq!(app.samples.sel, 0);
    app.on_key(code(KeyCode::Down));
    assert_eq!(app.samples.sel, 1, "↓ is +10, clamped");
    // class, guidance, protocol and full screen
    app.on_key(key('C'));
    app.on_key(key('C'));
    assert_eq!(app.samples.class, Some(1));
    app.on_key(KeyEvent::new(KeyCode::Char('G'), KeyModifiers::SHIFT));
    assert_eq!(app.samples.effective_guidance(), 2.5);
    app.on_key(key('g'));
    app.on_key(key('g'));
    assert_eq!(app.samples.effective_guidance(), 1.5);
    let (s, _) = render(&mut app, 80, 24);
    assert!(
        s.contains("class Trouser") && s.contains("guidance 1.5"),
        "{s}"
    );
    assert_eq!(app.samples.output.active(), Protocol::Halfblocks);
    app.on_key(KeyEvent::new(KeyCode::Char('P'), KeyModifiers::SHIFT));
    assert_eq!(app.samples.output.active(), Protocol::Kitty);
    assert!(app.clear_screen);
    for _ in 0..4 {
        app.on_key(KeyEvent::new(KeyCode::Char('P'), KeyModifiers::SHIFT));
    }
    assert_eq!(
        app.samples.output.forced, None,
        "the cycle comes back to auto"
    );
    // graphics protocols: after a frame the shown grid is encoded for the pane (inline here,
    // on the image worker in the TUI) and drawn through ratatui-image instead of half blocks
    app.set_viewport(ratatui::layout::Rect::new(0, 0, 120, 40));
    for proto in [Protocol::Kitty, Protocol::Sixel, Protocol::Iterm2] {
        app.samples.output.forced = Some(proto);
        render(&mut app, 120, 40);
        app.after_draw();
        let (k, r) = app.samples.encoded.as_ref().expect("encoded");
        assert_eq!(k.protocol, proto);
        let size = r.as_ref().expect("encodes").size();
        // the pane as drawing lays it out at the terminal's size (nothing stored by drawing)
        let pane = ssmlab::tui::views::samples::image_rect(&app.samples, app.body_area()).unwrap();
        assert!(pane.width > 40 && pane.height > 20, "{pane:?}");
        assert!(size.width <= pane.width && size.height <= pane.height && size.width > 0);
        let (s, _) = render(&mut app, 120, 40);
        assert!(s.contains(proto.name()), "{s}");
    }
    app.samples.output.forced = None;
    // the help lists every samples key, in two columns when they do not fit one
    app.on_key(key('?'));
    let (s, _) = render(&mut app, 80, 24);
    assert!(
        s.contains("full screen")
            && s.contains("sample-now guidance +0.5")
            && s.contains("protocol"),
        "{s}"
    );
    insta::assert_snapshot!("samples_help_80x24", s);
    app.on_key(key('x'));
    match app.on_key(key('f')) {
        Effect::FullScreen(p) => assert!(p.ends_with("step-200/grid.png")),
        e => panic!("{e:?}"),
    }
}

#[test]
fn samples_view_says_what_to_do_without_samples() {
    let tmp = tempfile::tempdir().unwrap();
    // a BiGS run
    let run = RunDir::create(tmp.path(), "bigs-run").unwrap();
    std::fs::write(run.config_path(), preset("bigs-tiny").unwrap().to_toml()).unwrap();
    run.write_status(&Status {
        pid: 4242,
        state: RunState::Finished,
        heartbeat: unix_now(),
        started: unix_now(),
        step: 10,
        total_steps: 10,
        model: "bigs".into(),
        last_checkpoint: None,
        best_checkpoint: None,
        message: None,
    })
    .unwrap();
    let mut app = fixture_app(tmp.path());
    app.on_key(key('4'));
    let (s, _) = render(&mut app, 80, 24);
    assert!(
        s.contains("bigs-run is a BiGS run")
            && s.contains("ssmlab train --preset diffussm-fashion"),
        "{s}"
    );
    app.on_key(code(KeyCode::Enter));
    let (s, _) = render(&mut app, 80, 24);
    assert!(s.contains("sampling needs a"), "{s}");
    // no runs at all
    let empty = tempfile::tempdir().unwrap();
    let mut app = fixture_app(empty.path());
    app.on_key(key('4'));
    let (s, _) = render(&mut app, 80, 24);
    assert!(
        s.contains("No runs under") && s.contains("diffussm-fashion"),
        "{s}"
    );
}

#[test]
fn sample_now_goes_through_the_worker_and_selects_the_new_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let run = write_diffusion_run(tmp.path(), "diff-fashion");
    let mut app = fixture_app(tmp.path());
    app.on_key(key('4'));
    // without a worker it says so
    app.on_key(code(KeyCode::Enter));
    assert_eq!(
        app.samples.error.as_deref(),
        Some("the sampler worker is not running")
    );
    let (etx, erx) = std::sync::mpsc::channel();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<SampleRequest>();
    let seen_tx = std::sync::Mutex::new(seen_tx);
    app.workers.sample = Some(spawn_sample(
        Box::new(move |req: SampleRequest, progress: &dyn Fn(f64)| {
            seen_tx.lock().unwrap().send(req.clone()).unwrap();
            progress(0.5);
            if req.class == Some(7) {
                anyhow::bail!("no checkpoint step-{} in {}", 200, req.run.display());
            }
            Ok(write_sample_set(
                &req.run,
                "now-1700000000000",
                200,
                req.class,
            ))
        }),
        report_to(etx, |m| match m {
            WorkerMsg::Sample(e) => e,
            _ => unreachable!("only the sampler reports here"),
        }),
    ));
    app.on_key(key('C')); // class 0 = T-shirt/top
    app.on_key(code(KeyCode::Enter));
    assert_eq!(app.samples.job, Some(0.0));
    let req = seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        req,
        SampleRequest {
            run: run.clone(),
            step: Some(200),
            class: Some(0),
            n: 16,
            guidance: 2.0,
            steps: 50,
            seed: 1234,
        }
    );
    let ev = erx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(ev, SampleEvent::Progress(0.5));
    app.on_msg(WorkerMsg::Sample(ev));
    let (s, _) = render(&mut app, 80, 24);
    assert!(s.contains("sampling  50%"), "{s}");
    let ev = erx.recv_timeout(Duration::from_secs(10)).unwrap();
    app.on_msg(WorkerMsg::Sample(ev));
    assert_eq!(app.samples.job, None);
    let cur = app.samples.current().unwrap();
    assert!(cur.manual && cur.path.ends_with("now-1700000000000"));
    let (s, _) = render(&mut app, 80, 24);
    assert!(
        s.contains("now @200") && s.contains("drawn now from step 200"),
        "{s}"
    );
    assert!(
        s.contains("class T-shirt/top"),
        "one class for all tiles: {s}"
    );
    // a failing sampler: the error is shown, and the job ends
    for _ in 0..7 {
        app.on_key(key('C'));
    }
    assert_eq!(app.samples.class, Some(7));
    app.on_key(code(KeyCode::Enter));
    seen_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    for _ in 0..2 {
        let ev = erx.recv_timeout(Duration::from_secs(10)).unwrap();
        app.on_msg(WorkerMsg::Sample(ev));
    }
    assert_eq!(app.samples.job, None);
    let (s, _) = render(&mut app, 120, 40);
    assert!(s.contains("no checkpoint step-200"), "{s}");
    // the real App's sampler (the DiffuSSM engine) says what is missing: this fixture run
    // has sample grids but no checkpoint
    let err = ssmlab::tui::sampler()(app.samples.request(run), &|_| {}).unwrap_err();
    assert!(err.to_string().contains("no checkpoint step-200"), "{err}");
}

fn cell(buf: &Buffer, x: u16, y: u16) -> (String, Color, Color) {
    let c = &buf[(x, y)];
    (c.symbol().to_string(), c.fg, c.bg)
}

#[test]
fn half_blocks_under_no_color_are_shades_of_grey_without_colour() {
    // 4×2 grey image into 4×1 cells: each cell the mean of its two pixels, as a shade.
    let g = Picture::from_grey(4, 2, &[0, 255, 100, 255, 0, 255, 160, 0]);
    let mut buf = Buffer::empty(Rect::new(0, 0, 4, 1));
    HalfBlocks {
        picture: &g,
        shades: true,
    }
    .render(buf.area, &mut buf);
    let row: Vec<String> = (0..4).map(|x| cell(&buf, x, 0).0).collect();
    assert_eq!(row, [" ", "█", "▒", "▒"]);
    for x in 0..4 {
        let (_, fg, bg) = cell(&buf, x, 0);
        assert_eq!((fg, bg), (Color::Reset, Color::Reset));
    }
}

#[test]
fn half_blocks_exact_colours() {
    let rgb = |r, g, b| Color::Rgb(r, g, b);
    // 2×2 RGB image into 2×1 cells: one pixel per half cell
    let p = Picture::from_rgb(2, 2, vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]);
    let mut buf = Buffer::empty(Rect::new(0, 0, 2, 1));
    HalfBlocks {
        picture: &p,
        shades: false,
    }
    .render(buf.area, &mut buf);
    assert_eq!(
        cell(&buf, 0, 0),
        ("▀".into(), rgb(255, 0, 0), rgb(0, 0, 255))
    );
    assert_eq!(
        cell(&buf, 1, 0),
        ("▀".into(), rgb(0, 255, 0), rgb(10, 20, 30))
    );
    // 4×4 grey image into 2×1 cells: area averages of 2×2 blocks
    let v: Vec<u8> = (0..16).map(|i| i * 16).collect();
    let g = Picture::from_grey(4, 4, &v);
    let mut buf = Buffer::empty(Rect::new(0, 0, 2, 1));
    HalfBlocks {
        picture: &g,
        shades: false,
    }
    .render(buf.area, &mut buf);
    // top-left block: 0, 16, 64, 80 → 40; bottom-left: 128, 144, 192, 208 → 168
    assert_eq!(
        cell(&buf, 0, 0),
        ("▀".into(), rgb(40, 40, 40), rgb(168, 168, 168))
    );
    assert_eq!(
        cell(&buf, 1, 0),
        ("▀".into(), rgb(72, 72, 72), rgb(200, 200, 200))
    );
    // 2×2 into 4×2 cells: enlarged ×2 (nearest), every pixel a 2×2 block
    let mut buf = Buffer::empty(Rect::new(0, 0, 4, 2));
    HalfBlocks {
        picture: &p,
        shades: false,
    }
    .render(buf.area, &mut buf);
    for (x, y, top, bottom) in [
        (0, 0, rgb(255, 0, 0), rgb(255, 0, 0)),
        (3, 0, rgb(0, 255, 0), rgb(0, 255, 0)),
        (1, 1, rgb(0, 0, 255), rgb(0, 0, 255)),
        (2, 1, rgb(10, 20, 30), rgb(10, 20, 30)),
    ] {
        assert_eq!(cell(&buf, x, y), ("▀".into(), top, bottom), "({x},{y})");
    }
    // aspect kept and centred: a 2×2 image in 6×1 cells is 2 cells wide, at x = 2
    let mut buf = Buffer::empty(Rect::new(0, 0, 6, 1));
    HalfBlocks {
        picture: &p,
        shades: false,
    }
    .render(buf.area, &mut buf);
    assert_eq!(cell(&buf, 1, 0).0, " ");
    assert_eq!(cell(&buf, 2, 0).1, rgb(255, 0, 0));
    assert_eq!(cell(&buf, 4, 0).0, " ");
    // an odd pixel row leaves the lower half to the terminal
    let one = Picture::from_grey(1, 1, &[7]);
    let mut buf = Buffer::empty(Rect::new(0, 0, 1, 1));
    HalfBlocks {
        picture: &one,
        shades: false,
    }
    .render(buf.area, &mut buf);
    assert_eq!(cell(&buf, 0, 0), ("▀".into(), rgb(7, 7, 7), Color::Reset));
    // the fitting rules
    assert_eq!(
        fit(28, 28, 80, 16),
        (28, 28),
        "×1: ×1.14 is not worth uneven pixels"
    );
    assert_eq!(
        fit(35, 35, 100, 34),
        (68, 68),
        "×1.9: uneven pixels, not half the room"
    );
    assert_eq!(
        fit(10, 10, 80, 20),
        (40, 40),
        "whole factors when enlarging"
    );
    assert_eq!(fit(100, 50, 50, 50), (50, 25), "shrinking keeps the aspect");
    assert_eq!(resample(&g, 1, 1), vec![[120, 120, 120]]);
}

fn tmux(sock: &str, args: &[&str]) -> String {
    let mut a = vec!["-S", sock];
    a.extend_from_slice(args);
    let out = Command::new("tmux").args(&a).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn samples_end_to_end_in_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is needed for this test (.ci/run installs it)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    write_diffusion_run(&runs, "diff-fashion");
    let session = format!("ssmlab-samples-{}", std::process::id());
    let sock = tmp.path().join("tmux.sock");
    let sock = sock.to_str().unwrap();
    let _cleanup = crate::common::TmuxCleanup {
        sock: sock.to_string(),
        runs: Some(runs.clone()),
    };
    let t = |args: &[&str]| tmux(sock, args);
    let cmd = crate::common::tui_command(Path::new(env!("CARGO_MANIFEST_DIR")), &runs);
    t(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "36",
        "bash",
        "--norc",
        "--noprofile",
    ]);
    t(&["send-keys", "-t", &session, &cmd, "Enter"]);
    let wait = |pred: &dyn Fn(&str) -> bool, secs: u64| {
        let t0 = Instant::now();
        loop {
            let s = t(&["capture-pane", "-t", &session, "-p"]);
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
            std::thread::sleep(Duration::from_millis(80));
        }
    };
    let intact = |s: &str| s.contains("1 Runs") && s.contains("4 Samples") && s.contains("quit");
    wait(&|s| s.contains("diff-fashion"), 20);
    keys(&["4"]);
    let s = wait(
        &|s| s.contains("diff-fashion · step 200") && s.contains('▀'),
        10,
    );
    assert!(
        s.contains("auto: halfblocks"),
        "half blocks inside tmux:\n{s}"
    );
    keys(&["Left"]);
    wait(&|s| s.contains("diff-fashion · step 100"), 5);
    keys(&[","]);
    wait(&|s| s.contains("traj-0100.png"), 5);
    keys(&["Right", "."]);
    wait(&|s| s.contains("step 200") && s.contains(" grid.png"), 5);
    // full screen with viuer (half blocks in tmux), then any key brings the TUI back
    keys(&["f"]);
    let s = wait(&|s| s.contains("any key returns to ssmlab"), 10);
    assert!(!intact(&s), "the TUI is suspended:\n{s}");
    assert!(
        s.contains('▄') || s.contains('▀'),
        "the image is drawn:\n{s}"
    );
    assert!(s.contains("step-200/grid.png"), "{s}");
    let alt = t(&["display-message", "-p", "-t", &session, "#{alternate_on}"]);
    assert_eq!(
        alt.trim(),
        "1",
        "full screen stays in the alternate screen (nothing is left on the shell)"
    );
    keys(&["x"]);
    let s = wait(&|s| intact(s) && s.contains("diff-fashion · step 200"), 10);
    assert!(s.contains("full screen") && s.contains('▀'), "{s}");
    let alt = t(&["display-message", "-p", "-t", &session, "#{alternate_on}"]);
    assert_eq!(alt.trim(), "1", "back in the alternate screen");
    // the keys still work after coming back; sample now (the real sampler) says what is
    // missing: this fixture run has grids but no checkpoint
    keys(&["Left"]);
    wait(&|s| s.contains("diff-fashion · step 100"), 5);
    keys(&["Enter"]);
    wait(&|s| s.contains("no checkpoint"), 10);
    keys(&["q"]);
    let s = wait(&|s| s.contains("EXITED=0"), 10);
    assert!(!intact(&s), "the TUI's screen is gone after quitting:\n{s}");
    assert!(
        !s.contains('▀') && !s.contains('▄') && !s.contains("any key returns"),
        "no image rows are left on the shell:\n{s}"
    );
    t(&["kill-session", "-t", &session]);
}

#[test]
fn small_panes_page_through_legible_tiles() {
    use ssmlab::tui::views::samples::{TileWindow, tile_window};
    // The shipped run's 2×10 grid of 28×28 tiles.
    let runs: Vec<_> = RunsIndex::new()
        .scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints"))
        .into_iter()
        .filter(|r| r.id == "diffussm-fashion")
        .map(|mut r| {
            r.age_s = Some(3.0);
            r
        })
        .collect();
    let mut app = crate::common::app_over(runs);
    app.on_key(key('4'));
    let (s, _) = render(&mut app, 80, 24);
    assert!(s.contains("page 1/"), "{s}");
    assert!(
        s.contains("T-shirt/top") && !s.contains("Ankle boot"),
        "{s}"
    );
    insta::assert_snapshot!("samples_paged_80x24", s);
    // every tile at least 14 cells wide: the window for the pane
    let w = tile_window(2, 10, 28, 28, ratatui::layout::Rect::new(0, 0, 50, 14), 0).unwrap();
    assert_eq!(
        w,
        TileWindow {
            r0: 0,
            nr: 1,
            c0: 0,
            nc: 3,
            page: 0,
            pages: 8
        }
    );
    let cells_per_tile = 50.0 / (w.nc * 29 - 1) as f64 * 28.0;
    assert!(cells_per_tile >= 14.0, "{cells_per_tile}");
    // PgDn pages on to the next tiles; PgUp from the first wraps to the last page
    app.on_key(code(KeyCode::PageDown));
    let (s, _) = render(&mut app, 80, 24);
    assert!(s.contains("page 2/") && !s.contains("T-shirt/top"), "{s}");
    app.on_key(code(KeyCode::PageUp));
    app.on_key(code(KeyCode::PageUp));
    let (s, _) = render(&mut app, 80, 24);
    let last = s
        .split("page ")
        .nth(1)
        .and_then(|x| x.split(' ').next())
        .unwrap();
    let (a, b) = last.split_once('/').unwrap();
    assert_eq!(a, b, "{s}");
    // at 200×60 the whole grid fits: no pages
    let (s, _) = render(&mut app, 200, 60);
    assert!(!s.contains("page ") && s.contains("Ankle boot"), "{s}");
    assert_eq!(
        tile_window(2, 10, 28, 28, ratatui::layout::Rect::new(0, 0, 150, 40), 3),
        None
    );
}
