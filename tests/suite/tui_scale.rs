//! The TUI at scale (issue 18): 30 runs scrolled, filtered and sorted; the Probe results with
//! six masks scrolled; the config-diff overlay scrolled; key remaps that clash; settings files
//! with bad keys; run actions from every view; mouse hits; and the real binary in tmux.

use std::path::{Path, PathBuf};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
use ratatui::layout::Rect;
use ssmlab::probe::{Candidate, MaskPrediction, ProbeOutput, TargetScore};
use ssmlab::runs::index::RunsIndex;
use ssmlab::runs::{Metric, RunDir, RunState, Status, unix_now};
use ssmlab::tui::app::{App, Popup, View};
use ssmlab::tui::keymap::{Action, Keymap, Scope};

use crate::common::{app_over, render_frame, render_unprepared};

/// `n` runs `run-01` … with states, models and numbers that differ: every third a DiffuSSM run
/// (CAS), the others BiGS (accuracy); run `k` has eval loss 6 − k/10.
pub fn many_runs(dir: &Path, n: usize) {
    let states = [
        RunState::Finished,
        RunState::Running,
        RunState::Stopped,
        RunState::Diverged,
    ];
    for k in 1..=n {
        let id = format!("run-{k:02}");
        let run = RunDir::create(dir, &id).unwrap();
        let diffusion = k % 3 == 0;
        let text = if diffusion {
            let mut c = ssmlab::train::presets::diffusion_preset("diffussm-smoke").unwrap();
            c.run.name = id.clone();
            c.optim.lr = 1e-4 * k as f64;
            c.to_toml()
        } else {
            let mut c = ssmlab::train::presets::preset("bigs-tiny").unwrap();
            c.run.name = id.clone();
            c.optim.lr = 1e-4 * k as f64;
            c.to_toml()
        };
        std::fs::write(run.config_path(), text).unwrap();
        for s in 1..=4u64 {
            let mut m = Metric {
                step: s * 10,
                tokens: s * 40_960,
                wall_s: s as f64 * 2.0,
                lr: Some(1e-3),
                loss: Some(7.0 - k as f64 / 10.0 + 1.0 / s as f64),
                grad_norm: Some(0.5),
                tokens_per_s: Some(3000.0 + k as f64),
                ..Default::default()
            };
            if s == 4 {
                m.eval_loss = Some(6.0 - k as f64 / 10.0);
                if diffusion {
                    m.eval_cas = Some(0.5 + k as f64 / 100.0);
                } else {
                    m.eval_acc = Some(0.1 + k as f64 / 200.0);
                }
            }
            run.append_metric(&m).unwrap();
        }
        run.write_status(&Status {
            pid: 4242,
            state: states[k % states.len()],
            heartbeat: unix_now(),
            started: unix_now() - 100.0,
            step: 40,
            total_steps: 400,
            model: if diffusion { "diffussm" } else { "bigs" }.into(),
            last_checkpoint: None,
            best_checkpoint: None,
            message: None,
        })
        .unwrap();
    }
}

/// An app over `n` runs at a `w`×`h` terminal, every time-dependent field pinned.
fn app_with(n: usize, w: u16, h: u16) -> (tempfile::TempDir, App) {
    let tmp = tempfile::tempdir().unwrap();
    many_runs(tmp.path(), n);
    let mut runs = RunsIndex::new().scan(tmp.path());
    for r in &mut runs {
        r.age_s = Some(3.0);
        // no process behind the fixture: show the state written, not "lost"
        r.lost = false;
        r.state = r.status.as_ref().map(|s| s.state);
    }
    let mut app = app_over(runs);
    app.runs_dir = PathBuf::from("checkpoints");
    app.set_viewport(Rect::new(0, 0, w, h));
    (tmp, app)
}

fn press(app: &mut App, keys: &[&str]) {
    for k in keys {
        let ev = match *k {
            "Enter" => KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE),
            "Esc" => KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE),
            "PgDn" => KeyEvent::new(KeyCode::PageDown, KeyModifiers::NONE),
            "PgUp" => KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE),
            "End" => KeyEvent::new(KeyCode::End, KeyModifiers::NONE),
            "Home" => KeyEvent::new(KeyCode::Home, KeyModifiers::NONE),
            "BS" => KeyEvent::new(KeyCode::Backspace, KeyModifiers::NONE),
            s => {
                let c = s.chars().next().unwrap();
                KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
            }
        };
        app.on_key(ev);
    }
}

fn render(app: &mut App, w: u16, h: u16) -> String {
    render_frame(app, w, h).0
}

#[test]
fn thirty_runs_scroll_and_the_selection_stays_visible() {
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        let (_tmp, mut app) = app_with(30, w, h);
        let s = render(&mut app, w, h);
        assert!(s.contains("run-01") && !s.contains("run-30"), "{s}");
        // j to the last run: it is on screen with the table scrolled to it
        for _ in 0..29 {
            press(&mut app, &["j"]);
        }
        assert_eq!(app.selected_run().unwrap().id, "run-30");
        let s = render(&mut app, w, h);
        assert!(s.contains("run-30") && !s.contains("run-01 "), "{s}");
        assert!(s.contains("of 30"), "a position indicator:\n{s}");
        insta::assert_snapshot!(format!("runs_30_end_{w}x{h}"), s);
        // g / Home to the first, G / End to the last, PgUp a page up
        press(&mut app, &["g"]);
        assert_eq!(app.selected_run().unwrap().id, "run-01");
        assert!(render(&mut app, w, h).contains("run-01"));
        press(&mut app, &["G"]);
        assert_eq!(app.selected_run().unwrap().id, "run-30");
        press(&mut app, &["PgUp"]);
        let id = app.selected_run().unwrap().id.clone();
        assert!(id.as_str() < "run-30");
        assert!(render(&mut app, w, h).contains(&id));
        // the columns: model family, accuracy or CAS, the state never cut
        let s = render(&mut app, w, h);
        assert!(s.contains("acc/CAS") && s.contains("DiffuSSM"), "{s}");
        for word in ["stoppe ", "finishe ", "runnin "] {
            assert!(!s.contains(word), "a cut state: {word}\n{s}");
        }
    }
}

#[test]
fn a_click_selects_the_row_under_the_pointer_and_tabs_are_clickable() {
    let (w, h) = (80, 24);
    let (_tmp, mut app) = app_with(30, w, h);
    press(&mut app, &["G"]);
    let s = render(&mut app, w, h);
    // the row showing run-27 (the table is scrolled: absolute rows would pick a hidden run)
    let y = s.lines().position(|l| l.contains("run-27")).unwrap() as u16;
    let click = |col, row| MouseEvent {
        kind: MouseEventKind::Down(MouseButton::Left),
        column: col,
        row,
        modifiers: KeyModifiers::NONE,
    };
    app.on_mouse(click(5, y));
    assert_eq!(app.selected_run().unwrap().id, "run-27");
    // a click in the config pane below selects nothing
    app.on_mouse(click(5, h - 5));
    assert_eq!(app.selected_run().unwrap().id, "run-27");
    // a click on the "2 Curves" tab
    let tabs = s.lines().next().unwrap();
    let x = tabs.find("2 Curves").unwrap() as u16;
    app.on_mouse(click(x + 2, 0));
    assert_eq!(app.view, View::Curves);
    // the wheel over the config pane scrolls it, not the selection
    app.view = View::Runs;
    let wheel = MouseEvent {
        kind: MouseEventKind::ScrollDown,
        column: 5,
        row: h - 5,
        modifiers: KeyModifiers::NONE,
    };
    app.on_mouse(wheel);
    assert_eq!(app.selected_run().unwrap().id, "run-27");
    assert_eq!(app.runs_view.details_scroll, 3);
    assert!(render(&mut app, w, h).contains("lines 4–"));
}

#[test]
fn filter_and_sort_the_runs() {
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        let (_tmp, mut app) = app_with(30, w, h);
        press(&mut app, &["/", "2"]);
        assert!(app.runs_view.filter_editing);
        // typing filters at once: run-02, run-12, run-20…run-29
        let ids: Vec<&str> = app
            .runs_view
            .order
            .iter()
            .map(|&i| app.runs[i].id.as_str())
            .collect();
        assert_eq!(ids.len(), 12, "{ids:?}");
        assert!(ids.iter().all(|i| i.contains('2')));
        press(&mut app, &["Enter"]);
        assert!(!app.runs_view.filter_editing);
        let s = render(&mut app, w, h);
        assert!(s.contains("filter `2` (12 of 30)"), "{s}");
        assert!(!s.contains("run-01"));
        insta::assert_snapshot!(format!("runs_filter_{w}x{h}"), s);
        // the state: every running run, and the model family
        press(&mut app, &["/", "BS", "r", "u", "n", "n", "Enter"]);
        assert!(
            app.runs_view
                .order
                .iter()
                .all(|&i| app.runs[i].state_label() == "running")
        );
        assert_eq!(app.runs_view.order.len(), 8);
        press(&mut app, &["/"]);
        for _ in 0..4 {
            press(&mut app, &["BS"]);
        }
        for c in "diffussm".chars() {
            press(&mut app, &[&c.to_string()]);
        }
        press(&mut app, &["Enter"]);
        assert_eq!(app.runs_view.order.len(), 10);
        assert!(app.selected_run().unwrap().model == "diffussm");
        // Esc clears the filter
        press(&mut app, &["/", "Esc"]);
        assert_eq!(app.runs_view.order.len(), 30);
        // sort: by model, state, step, loss, then eval (lowest first), reversed with O
        press(&mut app, &["o", "o", "o", "o", "o"]);
        assert_eq!(app.runs_view.sort.label(), "eval");
        assert_eq!(app.runs[app.runs_view.order[0]].id, "run-30");
        press(&mut app, &["O"]);
        assert_eq!(app.runs[app.runs_view.order[0]].id, "run-01");
        let s = render(&mut app, w, h);
        assert!(s.contains("sorted by eval ↓"), "{s}");
        // mark every shown run, unmark all
        press(&mut app, &["/", "9", "Enter", "a"]);
        assert_eq!(app.marked.len(), 3);
        press(&mut app, &["u"]);
        assert!(app.marked.is_empty());
    }
}

fn six_masks() -> ProbeOutput {
    let words = ["whale", "sea", "ship", "captain", "ahab", "boat", "night"];
    ProbeOutput {
        model: "checkpoints/bigs-mobydick".into(),
        tokens: vec![],
        padded_to: 32,
        masks: (0..6)
            .map(|k| MaskPrediction {
                position: 2 + 3 * k,
                entropy: 3.0 + k as f64 / 10.0,
                top: words
                    .iter()
                    .enumerate()
                    .map(|(i, w)| Candidate {
                        token: format!("{w}{k}"),
                        id: i as u32,
                        prob: 0.3 / (i + 1) as f64,
                        logprob: (0.3 / (i + 1) as f64).ln(),
                    })
                    .collect(),
                targets: vec![TargetScore {
                    word: "whale".into(),
                    piece: "whale".into(),
                    pieces: 1,
                    prob: 0.3,
                    logprob: 0.3f64.ln(),
                    rank: 1,
                }],
            })
            .collect(),
    }
}

#[test]
fn the_probe_results_scroll_through_every_mask() {
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        let (_tmp, mut app) = app_with(3, w, h);
        app.view = View::Probe;
        app.probe.prompt = "[MASK] [MASK] [MASK] [MASK] [MASK] [MASK]".into();
        app.probe.a.model = Some(PathBuf::from("checkpoints/bigs-mobydick"));
        app.probe.a.result = Some(Ok(six_masks()));
        let s = render(&mut app, w, h);
        assert!(s.contains("[MASK] #1") && s.contains("of 54"), "{s}");
        press(&mut app, &["End"]);
        let s = render(&mut app, w, h);
        assert!(s.contains("[MASK] #6") && s.contains("night5"), "{s}");
        press(&mut app, &["PgUp"]);
        insta::assert_snapshot!(format!("probe_six_masks_{w}x{h}"), render(&mut app, w, h));
        press(&mut app, &["Home"]);
        assert!(render(&mut app, w, h).contains("[MASK] #1"));
    }
}

#[test]
fn the_config_diff_overlay_scrolls() {
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        let (_tmp, mut app) = app_with(3, w, h);
        // a BiGS run and a DiffuSSM run: dozens of differing keys
        app.marked = ["run-01".to_string(), "run-03".to_string()].into();
        press(&mut app, &["d"]);
        assert!(matches!(app.popup, Some(Popup::Diff)));
        let s = render(&mut app, w, h);
        assert!(s.contains("config diff") && s.contains("keys 1–"), "{s}");
        press(&mut app, &["j", "PgDn"]);
        assert!(
            matches!(app.popup, Some(Popup::Diff)),
            "scroll keys keep it"
        );
        let s = render(&mut app, w, h);
        assert!(!s.contains("keys 1–"), "{s}");
        insta::assert_snapshot!(format!("diff_scrolled_{w}x{h}"), s);
        press(&mut app, &["G"]);
        let end = render(&mut app, w, h);
        let total = ssmlab::tui::views::runs::config_diff(
            &app.runs[0].config_text,
            &app.runs[2].config_text,
        )
        .len();
        assert!(end.contains(&format!("of {total} ")), "{end}");
        press(&mut app, &["Esc"]);
        assert!(app.popup.is_none());
    }
}

#[test]
fn the_help_overlay_scrolls_when_it_does_not_fit() {
    let (_tmp, mut app) = app_with(3, 60, 15);
    press(&mut app, &["?"]);
    let s = render(&mut app, 60, 15);
    assert!(s.contains("keys 1–") && s.contains("scroll"), "{s}");
    press(&mut app, &["G"]);
    assert!(app.popup.is_some());
    assert!(!render(&mut app, 60, 15).contains("keys 1–"));
    press(&mut app, &["x"]); // any other key closes
    assert!(app.popup.is_none());
}

#[test]
fn key_remaps_that_clash_are_refused_naming_both_actions() {
    let (km, errs) = Keymap::new(&[("stop".to_string(), "x".to_string())].into());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("`stop = \"x\"` refused")
            && (errs[0].contains("`x_axis`") || errs[0].contains("`compare_x`")),
        "{}",
        errs[0]
    );
    assert_eq!(
        km.lookup(Scope::Runs, "s"),
        Some(Action::Stop),
        "keeps its key"
    );
    // a free key is taken
    let (km, errs) = Keymap::new(&[("stop".to_string(), "X".to_string())].into());
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(km.lookup(Scope::Curves, "X"), Some(Action::Stop));
    // the default table: no key twice in one scope
    let (km, _) = Keymap::new(&Default::default());
    for a in ssmlab::tui::keymap::BINDINGS {
        for b in ssmlab::tui::keymap::BINDINGS {
            if a.action != b.action && a.scope == b.scope {
                for k in km.keys(a.action) {
                    assert!(
                        !km.keys(b.action).contains(k),
                        "`{k}` is both {} and {}",
                        a.name,
                        b.name
                    );
                }
            }
        }
    }
    // the settings file with a clash, as the TUI shows it: every problem listed, wrapped
    let tmp = tempfile::tempdir().unwrap();
    let settings = tmp.path().join("config.toml");
    std::fs::write(
        &settings,
        "theme = \"light\"\nascii = \"yes\"\nfrobnicate = 1\n[keys]\nstop = \"x\"\nquit = \"Q\"\nmark = 3\n",
    )
    .unwrap();
    let (s, notes) = ssmlab::tui::settings::load_from(&settings);
    assert_eq!(
        s.theme.as_deref(),
        Some("light"),
        "good settings still apply"
    );
    assert_eq!(s.keys.get("quit").map(String::as_str), Some("Q"));
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(
        notes
            .iter()
            .any(|n| n.contains("line 2: `ascii` must be true or false"))
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("line 3: unknown setting `frobnicate`"))
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("line 7: [keys] `mark` must be"))
    );
    // the TUI as it starts with that file
    let (km, key_errs) = Keymap::new(&s.keys);
    assert_eq!(km.lookup(Scope::Global, "Q"), Some(Action::Quit));
    let mut all = notes.clone();
    all.extend(key_errs);
    assert_eq!(all.len(), 4);
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        let (_tmp, mut app) = app_with(3, w, h);
        app.popup = Some(Popup::Message(format!(
            "{} problem(s) with the settings (any key closes):\n\n{}",
            all.len(),
            all.iter()
                .map(|n| format!("• {}", n.replace(&tmp.path().display().to_string(), "~")))
                .collect::<Vec<_>>()
                .join("\n")
        )));
        let s = render(&mut app, w, h);
        assert!(s.contains("refused") && s.contains("frobnicate"), "{s}");
        insta::assert_snapshot!(format!("settings_clash_{w}x{h}"), s);
    }
    // a binary file gets a message of its own
    std::fs::write(&settings, b"\x00\x01\x02PNG\xff").unwrap();
    let (_, notes) = ssmlab::tui::settings::load_from(&settings);
    assert!(notes[0].contains("not a text file"), "{notes:?}");
}

#[test]
fn run_actions_work_from_every_view_and_say_why_when_they_cannot() {
    let (_tmp, mut app) = app_with(6, 80, 24);
    // run-01 is running (state index 1)
    assert_eq!(app.selected_run().unwrap().state_label(), "running");
    for v in ["1", "2", "3", "4", "5", "6"] {
        press(&mut app, &[v]);
        press(&mut app, &["s"]);
        assert!(
            matches!(&app.popup, Some(Popup::Confirm { run, .. }) if run == "run-01"),
            "view {v}"
        );
        press(&mut app, &["n"]);
        press(&mut app, &["c"]);
        assert!(
            matches!(&app.popup, Some(Popup::Confirm { .. })),
            "view {v}"
        );
        press(&mut app, &["n"]);
    }
    // a finished run says why
    press(&mut app, &["2", "j", "j", "j"]);
    assert_eq!(app.selected_run().unwrap().state_label(), "finished");
    press(&mut app, &["s"]);
    assert!(app.popup.is_none());
    assert!(
        app.notices
            .last()
            .unwrap()
            .contains("finished, not running")
    );
    // a key of another view says where it works
    press(&mut app, &["1", "m"]);
    let n = app.notices.last().unwrap();
    assert!(n.contains("works in Curves (2)"), "{n}");
    // the key bar of every view offers stop and checkpoint
    for v in ["1", "2", "5"] {
        press(&mut app, &[v]);
        let s = render(&mut app, 200, 60);
        let bar = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
        assert!(bar.contains("stop") && bar.contains("checkpoint"), "{bar}");
    }
}

/// The real binary in tmux at 80×24 over 30 runs: `j` down to the last run shows it, the
/// filter narrows the table, `q` quits with exit 0 and leaves the alternate screen.
#[test]
fn thirty_runs_in_tmux_at_80x24() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    many_runs(&runs, 30);
    let cmd = crate::common::tui_command(tmp.path(), &runs);
    let t = crate::tui::Tmux::start(tmp.path(), &cmd);
    t.run(&["resize-window", "-t", &t.session, "-x", "80", "-y", "24"]);
    t.wait(&|s| s.contains("run-01") && s.contains("of 30"), 20);
    let j: Vec<&str> = vec!["j"; 29];
    t.keys(&j);
    let s = t.wait(&|s| s.contains("run-30") && s.contains("23–30 of 30"), 10);
    assert!(
        s.contains("run-30 · config.toml"),
        "the selection is shown:\n{s}"
    );
    t.keys(&["/", "2", "Enter"]);
    let s = t.wait(&|s| s.contains("filter `2` (12 of 30)"), 10);
    assert!(!s.contains("run-01 "), "{s}");
    t.keys(&["q"]);
    t.wait(&|s| s.contains("EXITED=0"), 10);
    let alt = t.run(&["display-message", "-p", "-t", &t.session, "#{alternate_on}"]);
    assert_eq!(alt.trim(), "0", "alternate screen left");
}

/// The streamed series (two passes over the compact log) is the smoothing and min/max
/// downsampling of the whole series, point for point, with and without zoom and log y.
#[test]
fn streamed_series_equal_smoothing_and_downsampling_of_the_whole() {
    use ssmlab::tui::app::{Metric as M, XAxis};
    use ssmlab::tui::chart::{ema_debiased, minmax_downsample};
    use ssmlab::tui::views::curves::SeriesSpec;
    let metrics: Vec<Metric> = (1..=20_000u64)
        .map(|s| Metric {
            step: s,
            tokens: s * 3,
            wall_s: s as f64 * 0.25,
            loss: (s % 13 != 0).then(|| 2.0 + ((s * 7919) % 1000) as f64 / 300.0 + 5.0 / s as f64),
            ..Default::default()
        })
        .collect();
    let run = ssmlab::runs::index::RunSummary::of_metrics("r", "r".into(), "bigs", metrics.clone());
    for (zoom, log_y, x) in [
        (false, false, XAxis::Step),
        (true, false, XAxis::Tokens),
        (false, true, XAxis::Wall),
    ] {
        let c = SeriesSpec {
            metric: M::Loss,
            x,
            log_y,
            smoothing: 0.6,
            zoom_recent: zoom,
        };
        let s = ssmlab::tui::views::curves::series(&run, &c, 150);
        // the same from the whole series, as f32 as the log keeps it
        let pts: Vec<(f64, f64)> = metrics
            .iter()
            .filter_map(|m| m.loss.map(|y| (x.get(m), (y as f32) as f64)))
            .collect();
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        let sm = ema_debiased(&ys, 0.6);
        let tr = |y: f64| if log_y { y.log10() } else { y };
        let keep = if zoom {
            (pts.len() / 5).max(10)
        } else {
            pts.len()
        };
        let from = pts.len() - keep;
        let raw: Vec<(f64, f64)> = pts[from..].iter().map(|(x, y)| (*x, tr(*y))).collect();
        let smooth: Vec<(f64, f64)> = pts[from..]
            .iter()
            .zip(&sm[from..])
            .map(|((x, _), s)| (*x, tr(*s)))
            .collect();
        assert_eq!(s.raw, minmax_downsample(&raw, 150), "raw {zoom} {log_y}");
        assert_eq!(
            s.smooth,
            minmax_downsample(&smooth, 150),
            "smooth {zoom} {log_y}"
        );
        assert_eq!(s.logged.len(), keep);
        assert_eq!(s.logged.last().unwrap().1, *ys.last().unwrap());
    }
}

/// Drawing reads the series that `prepare_frame` asked for before the frame: without a
/// derive worker they are computed then, and the cache holds every series the frame shows
/// (dashboard and one-metric chart); a frame drawn before shows none of them.
#[test]
fn series_are_computed_before_the_frame_not_by_drawing() {
    use ssmlab::tui::views::curves::series_wanted;
    let (_tmp, mut app) = app_with(3, 200, 60);
    app.view = View::Curves;
    app.marked = ["run-01".to_string(), "run-02".to_string()].into();
    let unprepared = render_unprepared(&app, 200, 60);
    assert!(unprepared.contains("no points yet"), "{unprepared}");
    app.prepare_frame();
    let wanted = series_wanted(&app.curves, &app.plotted(), app.body_area());
    assert_eq!(wanted.len(), 6 * 2, "six panels × two runs");
    for (r, spec, buckets) in &wanted {
        assert!(app.curves.series.contains(r, spec, *buckets));
    }
    let prepared = render_unprepared(&app, 200, 60);
    assert!(!prepared.contains("no points yet"), "{prepared}");
    assert_eq!(render(&mut app, 200, 60), prepared);
    press(&mut app, &["D"]);
    app.prepare_frame();
    for (r, spec, buckets) in series_wanted(&app.curves, &app.plotted(), app.body_area()) {
        assert!(app.curves.series.contains(r, &spec, buckets));
    }
}

/// Series and Kernels figures come from the derive worker when there is one: the pane asks
/// before the frame, draws the previous series meanwhile, and takes the worker's answer (the
/// same as computed inline) through the app's message routing.
#[test]
fn derived_data_comes_from_the_derive_worker() {
    use ssmlab::tui::views::curves::series_wanted;
    use ssmlab::tui::worker::{WorkerMsg, report_to, spawn_derive};
    let (_tmp, mut app) = app_with(3, 200, 60);
    let (_, mut inline) = app_with(3, 200, 60);
    for a in [&mut app, &mut inline] {
        a.view = View::Curves;
        a.marked = ["run-01".to_string(), "run-02".to_string()].into();
    }
    let (tx, rx) = std::sync::mpsc::channel::<WorkerMsg>();
    app.workers.derive = Some(spawn_derive(report_to(tx, |m| m)));
    app.prepare_frame();
    let wanted: Vec<_> = series_wanted(&app.curves, &app.plotted(), app.body_area())
        .into_iter()
        .map(|(r, s, b)| (r.clone(), s, b))
        .collect();
    assert!(
        wanted
            .iter()
            .all(|(r, s, b)| !app.curves.series.contains(r, s, *b)),
        "asked, not computed on the UI thread"
    );
    assert!(render_unprepared(&app, 200, 60).contains("computing"));
    // asking again sends nothing more: twelve answers, then silence
    app.prepare_frame();
    for _ in 0..wanted.len() {
        let m = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert!(matches!(m, WorkerMsg::Series(_, Ok(_))));
        app.on_msg(m);
    }
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err()
    );
    for (r, s, b) in &wanted {
        assert!(app.curves.series.contains(r, s, *b));
    }
    assert_eq!(render(&mut app, 200, 60), render(&mut inline, 200, 60));
    // a new setting: until its series arrive, the previous ones are drawn
    press(&mut app, &["+"]);
    let s = render_unprepared(&app, 200, 60);
    assert!(!s.contains("computing") && !s.contains("no points"), "{s}");
    for _ in 0..wanted.len() {
        app.on_msg(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
    }
    press(&mut inline, &["+"]);
    assert_eq!(render(&mut app, 200, 60), render(&mut inline, 200, 60));
}

#[test]
fn runs_of_sweeps_are_grouped_filtered_and_sorted_by_the_metric() {
    use ssmlab::sweep::{SweepFile, SweepRun, SweepSpec, label_runs, parse_grid};
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        let tmp = tempfile::tempdir().unwrap();
        many_runs(tmp.path(), 12);
        // two sweeps recorded beside the runs: lr-a holds run-01…04, lr-b run-05…08
        for (name, ids) in [("lr-a", 1..=4), ("lr-b", 5..=8)] {
            let f = SweepFile {
                name: name.into(),
                spec: SweepSpec {
                    preset: "bigs-tiny".into(),
                    sets: vec![],
                    grid: vec![parse_grid("optim.lr=1,2,3,4").unwrap()],
                    random: 0,
                    ranges: vec![],
                    seed: 0,
                },
                runs: ids
                    .map(|k| SweepRun {
                        id: format!("run-{k:02}"),
                        sets: vec![format!("optim.lr={k}")],
                    })
                    .collect(),
            };
            f.write(tmp.path()).unwrap();
        }
        let mut runs = RunsIndex::new().scan(tmp.path());
        label_runs(tmp.path(), &mut runs);
        for r in &mut runs {
            r.age_s = Some(3.0);
            r.lost = false;
            r.state = r.status.as_ref().map(|s| s.state);
        }
        assert_eq!(runs[0].sweep.as_deref(), Some("lr-a"));
        assert_eq!(runs[11].sweep, None);
        let mut app = app_over(runs);
        app.set_viewport(Rect::new(0, 0, w, h));
        // o cycles to the sweep column: runs grouped by sweep, runs of no sweep last
        for _ in 0..9 {
            press(&mut app, &["o"]);
        }
        assert_eq!(app.runs_view.sort.label(), "sweep");
        let order: Vec<&str> = app
            .runs_view
            .order
            .iter()
            .map(|&i| app.runs[i].id.as_str())
            .collect();
        assert_eq!(&order[..4], ["run-01", "run-02", "run-03", "run-04"]);
        assert_eq!(&order[4..8], ["run-05", "run-06", "run-07", "run-08"]);
        // a sweep's runs by their metric: filter on the sweep's name, sort by acc/CAS (best first)
        press(&mut app, &["/", "l", "r", "-", "b", "Enter"]);
        assert_eq!(app.runs_view.order.len(), 4);
        press(&mut app, &["o", "o", "o", "o", "o", "o", "o", "O"]);
        assert_eq!(app.runs_view.sort.label(), "acc/CAS");
        let best = &app.runs[app.runs_view.order[0]];
        assert_eq!(
            best.id, "run-06",
            "the CAS of run-06 (0.56) is the highest of lr-b"
        );
        let s = render(&mut app, w, h);
        assert!(s.contains("lr-b") && s.contains("sweep"), "{s}");
        insta::assert_snapshot!(format!("runs_sweep_by_metric_{w}x{h}"), s);
    }
}
