//! Trust at the edges (issue 17): hostile bytes from disk never reach a terminal raw, memory a
//! config asks for is checked before anything is allocated, worker panics are caught, appends do
//! not follow symlinks, and the parsers of outside bytes never panic (property tests).

use std::path::{Path, PathBuf};

use crate::common::{assert_ok, shipped_run, ssmlab};

/// ESC, BEL, an OSC that would set the window title, an 8-bit CSI and a right-to-left override.
const HOSTILE: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\u{202e}gnp.exe";

fn raw_unsafe(bytes: &[u8]) -> Option<char> {
    String::from_utf8_lossy(bytes)
        .chars()
        .find(|&c| ssmlab::text::is_unsafe(c) && c != '\n')
}

/// A copy of the shipped run (no checkpoint) named `name`, whose status message and config
/// carry `HOSTILE`.
fn hostile_run(runs: &Path, name: &str) -> PathBuf {
    let run = runs.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let src = shipped_run();
    std::fs::copy(src.join("metrics.jsonl"), run.join("metrics.jsonl")).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.toml")).unwrap();
    std::fs::write(run.join("config.toml"), format!("# {HOSTILE}\n{cfg}")).unwrap();
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("status.json")).unwrap()).unwrap();
    st["message"] = format!("done {HOSTILE}").into();
    std::fs::write(run.join("status.json"), st.to_string()).unwrap();
    run
}

#[test]
fn control_bytes_from_disk_never_reach_the_terminal_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    hostile_run(&runs, &format!("evil{HOSTILE}"));
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));

    // `ssmlab runs`: the name shows escaped.
    let out = ssmlab(&["runs", "--runs-dir", runs.to_str().unwrap()], here);
    assert_ok(&out);
    assert_eq!(raw_unsafe(&out.stdout), None, "{:?}", out.stdout);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("evil\\u{1b}]0;pwned\\u{7}"), "{text}");

    // An error that quotes a hostile name.
    let out = ssmlab(
        &[
            "train",
            "--resume",
            &format!("nope{HOSTILE}"),
            "--runs-dir",
            runs.to_str().unwrap(),
        ],
        here,
    );
    assert!(!out.status.success());
    assert_eq!(raw_unsafe(&out.stderr), None, "{:?}", out.stderr);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\\u{1b}"));

    // `train` prints its run's path: a runs folder with control bytes in its name.
    let odd = tmp.path().join(format!("odd{HOSTILE}"));
    let out = ssmlab(
        &[
            "train",
            "--preset",
            "bigs-smoke",
            "--runs-dir",
            odd.to_str().unwrap(),
            "--set",
            "train.steps=2",
        ],
        here,
    );
    assert_ok(&out);
    assert_eq!(raw_unsafe(&out.stdout), None, "{:?}", out.stdout);
    assert_eq!(raw_unsafe(&out.stderr), None, "{:?}", out.stderr);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("finished: "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_tui_shows_hostile_names_escaped_and_the_title_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    hostile_run(&runs, &format!("evil{HOSTILE}"));
    let cmd = format!(
        "cd {} && SSMLAB_CONFIG=/nonexistent {} --runs-dir {}; echo EXITED=$?",
        env!("CARGO_MANIFEST_DIR"),
        env!("CARGO_BIN_EXE_ssmlab"),
        runs.display()
    );
    let t = crate::tui::Tmux::start(tmp.path(), &cmd);
    let title =
        |t: &crate::tui::Tmux| t.run(&["display-message", "-p", "-t", &t.session, "#{pane_title}"]);
    let before = title(&t);
    let s = t.wait(&|s| s.contains("evil\\u{1b}]0;pwned"), 30);
    // The name in the table and the title, the config comment and the status message: all
    // escaped, and nothing of them acted on the terminal.
    assert_eq!(s.matches("\\u{1b}]0;pwned").count(), 4, "{s}");
    assert_eq!(s.matches("pwned").count(), 4, "{s}");
    assert_eq!(title(&t), before, "a run's name set the terminal title");
    t.keys(&["q"]);
    t.wait(&|s| s.contains("EXITED=0"), 20);
}

#[test]
fn the_frame_scrub_leaves_no_unsafe_cell() {
    let mut buf = ratatui::buffer::Buffer::empty(ratatui::layout::Rect::new(0, 0, 20, 1));
    buf.set_string(0, 0, "a\u{202e}b", ratatui::style::Style::default());
    buf[(5, 0)].set_symbol("\u{1b}");
    ssmlab::tui::scrub(&mut buf);
    assert!(
        buf.content
            .iter()
            .all(|c| !c.symbol().chars().any(ssmlab::text::is_unsafe))
    );
    assert_eq!(buf[(5, 0)].symbol(), "\u{fffd}");
    assert_eq!(buf[(0, 0)].symbol(), "a");
}

#[test]
fn a_panic_in_a_worker_is_the_jobs_error_and_the_worker_goes_on() {
    use ssmlab::tui::views::samples::{SampleEvent, SampleRequest, spawn_sample_worker};
    use std::time::Duration;
    ssmlab::tui::worker::install_panic_hook();
    let (etx, erx) = std::sync::mpsc::channel();
    let tx = spawn_sample_worker(
        Box::new(|req: SampleRequest, _: &dyn Fn(f64)| {
            let v: Vec<u32> = Vec::new();
            // A bug on one request: an index out of bounds.
            let i = req.class.unwrap_or(0) as usize;
            Ok(PathBuf::from(format!("{}", if i == 3 { v[i] } else { 0 })))
        }),
        move |e| etx.send(e).is_ok(),
    );
    let req = |class| SampleRequest {
        run: PathBuf::from("r"),
        step: None,
        class,
        n: 1,
        guidance: 1.0,
        steps: 1,
        seed: 0,
    };
    tx.send(req(Some(3))).unwrap();
    let SampleEvent::Done(Err(e)) = erx.recv_timeout(Duration::from_secs(10)).unwrap() else {
        panic!("expected the panic as the job's error")
    };
    assert!(
        e.contains("sampler worker hit a bug") && e.contains("index out of bounds"),
        "{e}"
    );
    assert!(e.contains("trust.rs:"), "the error names where: {e}");
    // The status line gets it too.
    let panics = ssmlab::tui::worker::take_panics();
    assert!(
        panics
            .iter()
            .any(|p| p.starts_with("sampler worker panicked at")),
        "{panics:?}"
    );
    // The worker still answers.
    tx.send(req(Some(1))).unwrap();
    assert_eq!(
        erx.recv_timeout(Duration::from_secs(10)).unwrap(),
        SampleEvent::Done(Ok(PathBuf::from("0")))
    );
}

#[test]
fn an_os_error_is_said_once() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["/proc/ssmlab-nope", "/sys/kernel/ssmlab-nope"] {
        let out = ssmlab(
            &["train", "--preset", "bigs-smoke", "--runs-dir", dir],
            here,
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(err.matches("os error").count(), 1, "{err}");
        assert!(err.contains(dir), "{err}");
    }
}

#[test]
fn run_files_are_never_written_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let r = runs.to_str().unwrap();
    let train = |extra: &[&str]| {
        let mut a = vec!["train", "--runs-dir", r];
        a.extend_from_slice(extra);
        ssmlab(&a, here)
    };
    assert_ok(&train(&[
        "--preset",
        "bigs-smoke",
        "--set",
        "train.steps=2",
    ]));
    let run = ssmlab::runs::RunDir {
        path: runs.join("bigs-smoke"),
    };
    let outside = tmp.path().join("outside.txt");
    for (file, steps) in [("log.txt", "4"), ("metrics.jsonl", "6"), ("run.lock", "8")] {
        std::fs::write(&outside, "outside\n").unwrap();
        std::fs::remove_file(run.path.join(file)).unwrap();
        std::os::unix::fs::symlink(&outside, run.path.join(file)).unwrap();
        let out = train(&[
            "--resume",
            "bigs-smoke",
            "--set",
            &format!("train.steps={steps}"),
        ]);
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            "outside\n",
            "{file}"
        );
        let st = run.read_status().unwrap();
        assert_ne!(st.state, ssmlab::runs::RunState::Running, "{file}");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(file) && err.contains("symbolic link"),
                "{file}: {err}"
            );
        }
        // Put a plain file back for the next round.
        std::fs::remove_file(run.path.join(file)).unwrap();
        std::fs::write(run.path.join(file), "").unwrap();
    }
}
