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
    let cmd = crate::common::tui_command(Path::new(env!("CARGO_MANIFEST_DIR")), &runs);
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
    use ssmlab::tui::worker::{SampleEvent, SampleRequest, WorkerMsg, report_to, spawn_sample};
    use std::time::Duration;
    ssmlab::tui::worker::install_panic_hook();
    let (etx, erx) = std::sync::mpsc::channel();
    let tx = spawn_sample(
        Box::new(|req: SampleRequest, _: &dyn Fn(f64)| {
            let v: Vec<u32> = Vec::new();
            // A bug on one request: an index out of bounds.
            let i = req.class.unwrap_or(0) as usize;
            Ok(PathBuf::from(format!("{}", if i == 3 { v[i] } else { 0 })))
        }),
        report_to(etx, |m| match m {
            WorkerMsg::Sample(e) => e,
            _ => unreachable!("only the sampler reports here"),
        }),
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

/// Runs the binary like [`ssmlab`], but kills it and fails if it takes longer than `secs`
/// (a hang is the defect some of these tests look for).
fn ssmlab_within(args: &[&str], secs: u64) -> std::process::Output {
    use std::process::{Command, Stdio};
    let child = Command::new(env!("CARGO_BIN_EXE_ssmlab"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            ssmlab::runs::os::signal(pid, libc::SIGKILL);
            panic!("`ssmlab {}` did not end within {secs} s", args.join(" "));
        }
    }
}

/// A FIFO at `p` (that nobody writes).
fn mkfifo(p: &Path) -> PathBuf {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", p.display());
    p.to_path_buf()
}

fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "it succeeded");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ssmlab: "), "{err}");
    err
}

#[test]
fn memory_a_config_asks_for_is_refused_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let r = runs.to_str().unwrap();
    // A 600-byte config.json beside real weights and tokenizer: 2^31 hidden, 10^9 layers.
    let m = tmp.path().join("m");
    std::fs::create_dir_all(&m).unwrap();
    let src = shipped_run();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(src.join("step-2500").join(f), m.join(f)).unwrap();
    }
    std::fs::copy(src.join("tokenizer.json"), m.join("tokenizer.json")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("config.json")).unwrap()).unwrap();
    cfg["hidden_size"] = (1u64 << 31).into();
    cfg["num_hidden_layers"] = 1_000_000_000u64.into();
    std::fs::write(m.join("config.json"), cfg.to_string()).unwrap();
    assert!(std::fs::metadata(m.join("config.json")).unwrap().len() < 600);
    let model = m.to_str().unwrap();
    for args in [
        vec!["probe", "--model", model, "call me [MASK] ."],
        vec!["kernels", "--model", model],
    ] {
        let err = one_line_error(&ssmlab_within(&args, 30));
        assert!(
            err.contains("hidden_size = 2147483648") && err.contains("num_hidden_layers"),
            "{err}"
        );
    }
    // Shapes and batches through --set: refused before the run directory exists.
    for (set, field) in [
        ("model.hidden_size=1000000", "hidden_size = 1000000"),
        ("train.batch_size=100000000", "batch_size = 100000000"),
    ] {
        let out = ssmlab_within(
            &[
                "train",
                "--preset",
                "bigs-smoke",
                "--runs-dir",
                r,
                "--set",
                set,
            ],
            30,
        );
        let err = one_line_error(&out);
        assert!(err.contains(field) && err.contains("GiB"), "{err}");
        assert!(!runs.exists(), "{set} left a run directory");
    }
    let out = ssmlab_within(
        &[
            "train",
            "--preset",
            "diffussm-smoke",
            "--runs-dir",
            r,
            "--set",
            "model.image_height=100000000",
            "--set",
            "model.image_width=100000000",
        ],
        30,
    );
    assert!(one_line_error(&out).contains("image_height = 100000000"));
    // A limit of one's own: a batch that fits the machine but not 100M.
    let out = ssmlab_within(
        &[
            "train",
            "--preset",
            "bigs-smoke",
            "--runs-dir",
            r,
            "--max-memory",
            "100M",
            "--set",
            "train.batch_size=1000",
        ],
        30,
    );
    let err = one_line_error(&out);
    assert!(
        err.contains("batch_size = 1000") && err.contains("--max-memory"),
        "{err}"
    );
    assert!(!runs.exists());
    let err = one_line_error(&ssmlab_within(&["--max-memory", "12Q", "runs"], 10));
    assert!(err.contains("--max-memory") && err.contains("12Q"), "{err}");
}

#[test]
fn corpora_and_image_files_are_read_only_as_far_as_they_promise() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let r = runs.to_str().unwrap();
    let train = |preset: &str, set: &str| {
        ssmlab_within(
            &[
                "train",
                "--preset",
                preset,
                "--runs-dir",
                r,
                "--set",
                set,
                "--set",
                "train.steps=1",
                "--max-memory",
                "16G",
            ],
            60,
        )
    };
    // A device that never ends and a FIFO nobody writes.
    let fifo = mkfifo(&tmp.path().join("fifo.txt"));
    for corpus in [PathBuf::from("/dev/zero"), fifo] {
        let err = one_line_error(&train(
            "bigs-smoke",
            &format!("data.corpus={}", corpus.display()),
        ));
        assert!(err.contains("not a regular file"), "{err}");
    }
    // IDX files: a header that promises 730 GiB; a gzip bomb (2 GiB of zeros after the 100
    // images its header promises).
    use std::io::Write;
    let gz = |name: &str, header: &[u32], body: &mut dyn FnMut(&mut dyn Write)| {
        let f = std::fs::File::create(tmp.path().join(name)).unwrap();
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::best());
        for v in header {
            e.write_all(&v.to_be_bytes()).unwrap();
        }
        body(&mut e);
        e.finish().unwrap();
    };
    gz(
        "a-images-idx3-ubyte.gz",
        &[0x803, 1_000_000_000, 28, 28],
        &mut |_| {},
    );
    gz(
        "a-labels-idx1-ubyte.gz",
        &[0x801, 1_000_000_000],
        &mut |_| {},
    );
    let zeros = vec![0u8; 1 << 24];
    gz("b-images-idx3-ubyte.gz", &[0x803, 100, 28, 28], &mut |w| {
        for _ in 0..128 {
            w.write_all(&zeros).unwrap();
        }
    });
    gz("b-labels-idx1-ubyte.gz", &[0x801, 100], &mut |w| {
        w.write_all(&(0..100u8).map(|i| i % 10).collect::<Vec<_>>())
            .unwrap()
    });
    let a = tmp.path().join("a-images-idx3-ubyte.gz");
    let err = one_line_error(&train(
        "diffussm-smoke",
        &format!("data.images={}", a.display()),
    ));
    assert!(err.contains("header promises 730.2 GiB"), "{err}");
    let b = tmp.path().join("b-images-idx3-ubyte.gz");
    let out = train("diffussm-smoke", &format!("data.images={}", b.display()));
    assert_ok(&out);
}

#[test]
fn small_files_from_outside_never_hang_or_flood_a_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = mkfifo(&tmp.path().join("fifo.toml"));
    for cfg in [Path::new("/dev/zero"), fifo.as_path()] {
        let err = one_line_error(&ssmlab_within(
            &["train", "--config", cfg.to_str().unwrap()],
            20,
        ));
        assert!(err.contains("not a regular file"), "{err}");
    }
    // A run whose status.json and config.toml are FIFOs: not waited on.
    let runs = tmp.path().join("runs");
    let run = hostile_run(&runs, "fifo-run");
    for f in ["status.json", "config.toml"] {
        std::fs::remove_file(run.join(f)).unwrap();
        mkfifo(&run.join(f));
    }
    let out = ssmlab_within(&["runs", "--runs-dir", runs.to_str().unwrap()], 20);
    assert_ok(&out);
}
