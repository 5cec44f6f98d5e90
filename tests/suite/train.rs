//! Training runs: exact resume, kill -9, run-directory contract, bad input through the CLI.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ssmlab::runs::os::signal;
use ssmlab::runs::{RunDir, RunState, read_metrics};
use ssmlab::train::presets::preset;
use ssmlab::train::{Outcome, RunConfig, Trainer};

use crate::common::{Reap, ssmlab};

fn smoke(steps: u64) -> RunConfig {
    let mut c = preset("bigs-smoke").unwrap();
    c.train.steps = steps;
    c.train.log_every = 1;
    c.train.eval_every = 1000;
    c.train.checkpoint_every = 1000;
    c
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    let (m, bad) = read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert!(bad.is_empty());
    m.iter().map(|m| (m.step, m.loss.unwrap())).collect()
}

#[test]
fn resumed_run_reproduces_uninterrupted_losses_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let mut a = Trainer::create(smoke(12), &tmp.path().join("a")).unwrap();
    assert_eq!(a.run(&stop, None, &mut |_| {}).unwrap(), Outcome::Finished);

    let mut b = Trainer::create(smoke(12), &tmp.path().join("b")).unwrap();
    assert_eq!(
        b.run(&stop, Some(6), &mut |_| {}).unwrap(),
        Outcome::Stopped
    );
    let run_b = b.run.clone();
    drop(b);
    assert_eq!(run_b.read_status().unwrap().state, RunState::Stopped);
    assert_eq!(run_b.latest_checkpoint().unwrap().0, 6);
    let mut b = Trainer::resume(run_b.clone(), &[]).unwrap();
    assert_eq!(b.step(), 6);
    assert_eq!(b.run(&stop, None, &mut |_| {}).unwrap(), Outcome::Finished);

    let la = losses(&a.run.path);
    let lb = losses(&run_b.path);
    assert_eq!(la.len(), 12);
    assert_eq!(
        la, lb,
        "losses of the resumed run differ from the uninterrupted one"
    );
    // and the final weights are identical too
    let wa = std::fs::read(a.run.checkpoint_path(12).join("model.safetensors")).unwrap();
    let wb = std::fs::read(run_b.checkpoint_path(12).join("model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ");
    // the kernel history too: step 0 and the final evaluation, the same parameters (the resume
    // dropped nothing and wrote nothing twice)
    let ka = ssmlab::runs::kernels::read_kernels(&a.run.kernels_path()).unwrap();
    let kb = ssmlab::runs::kernels::read_kernels(&run_b.kernels_path()).unwrap();
    assert_eq!(ka.iter().map(|r| r.step).collect::<Vec<_>>(), [0, 12]);
    assert_eq!(kb.iter().map(|r| r.step).collect::<Vec<_>>(), [0, 12]);
    for (x, y) in ka.iter().zip(&kb) {
        assert!(
            x.tensors == y.tensors,
            "kernel records differ at step {}",
            x.step
        );
    }
}

#[test]
fn checkpoints_hold_hf_weights_optimizer_and_state_and_old_ones_are_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = smoke(9);
    c.train.checkpoint_every = 2;
    c.train.eval_every = 3;
    c.train.keep_checkpoints = 2;
    let mut t = Trainer::create(c, tmp.path()).unwrap();
    t.run(&AtomicBool::new(false), None, &mut |_| {}).unwrap();
    let steps: Vec<u64> = t.run.checkpoints().iter().map(|c| c.0).collect();
    let best = t.progress().best_step.unwrap();
    assert!(steps.ends_with(&[8, 9]), "{steps:?}");
    assert!(
        steps.contains(&best),
        "best checkpoint {best} kept: {steps:?}"
    );
    let ck = t.run.checkpoint_path(9);
    for f in [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "config.json",
    ] {
        assert!(ck.join(f).is_file(), "{f}");
    }
    let w = candle_core::safetensors::load(ck.join("model.safetensors"), &candle_core::Device::Cpu)
        .unwrap();
    assert!(w.contains_key("bigs.encoder.layer.1.fs4.kernel.A_re"));
    assert!(w.contains_key("cls.predictions.transform.dense.weight"));
    let status = t.run.read_status().unwrap();
    assert_eq!((status.state, status.step), (RunState::Finished, 9));
    assert_eq!(status.last_checkpoint.as_deref(), Some("step-9"));
    let (m, _) = read_metrics(&t.run.metrics_path()).unwrap();
    let evals: Vec<u64> = m
        .iter()
        .filter(|m| m.eval_loss.is_some())
        .map(|m| m.step)
        .collect();
    assert_eq!(evals, vec![3, 6, 9]);
    assert!(m.iter().all(|m| m.tokens == m.step * 8 * 32));
    let cfg = RunConfig::from_toml_file(&t.run.config_path()).unwrap();
    assert_eq!(
        cfg, t.task.cfg,
        "config.toml is the fully resolved configuration"
    );
}

#[test]
fn control_file_requests_checkpoint_and_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = Trainer::create(smoke(50), tmp.path()).unwrap();
    t.run.request(ssmlab::runs::Control::Checkpoint).unwrap();
    let run = t.run.clone();
    let mut seen = 0;
    let out = t
        .run(&AtomicBool::new(false), None, &mut |e| {
            if let ssmlab::train::Event::Checkpoint(s) = e {
                seen = s;
                if s == 1 {
                    run.request(ssmlab::runs::Control::Stop).unwrap();
                }
            }
        })
        .unwrap();
    assert_eq!(out, Outcome::Stopped);
    assert_eq!(seen, 2, "checkpoint at step 1, stop noticed at step 2");
    assert_eq!(t.run.read_status().unwrap().state, RunState::Stopped);
    assert!(!t.run.control_path().exists());
}

/// `ssmlab train --preset bigs-smoke` for a long time (100000 steps, logging every step) in
/// the background, from the source root.
fn spawn_smoke(runs: &Path, sets: &[&str]) -> (std::process::Child, RunDir) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssmlab"));
    cmd.args(["train", "--preset", "bigs-smoke", "--runs-dir"])
        .arg(runs)
        .args(["--set", "train.steps=100000", "--set", "train.log_every=1"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let child = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (
        child,
        RunDir {
            path: runs.join("bigs-smoke"),
        },
    )
}

#[test]
fn kill_9_loses_at_most_the_steps_since_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let root = env!("CARGO_MANIFEST_DIR");
    let (mut child, run) = spawn_smoke(&runs, &["train.checkpoint_every=10"]);
    let t0 = Instant::now();
    while run.checkpoints().len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoints appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let last = run.latest_checkpoint().unwrap().0;
    let status = run.read_status().unwrap();
    assert_eq!(
        status.state,
        RunState::Running,
        "a killed run cannot say otherwise"
    );
    assert_eq!(
        status.effective_state(ssmlab::runs::unix_now()),
        (RunState::Failed, true)
    );
    let (m, bad) = read_metrics(&run.metrics_path()).unwrap();
    assert!(bad.is_empty());
    let logged = m.last().unwrap().step;
    assert!(
        logged >= last && logged - last < 10 + 1,
        "lost {} steps",
        logged - last
    );

    let out = ssmlab(
        &[
            "train",
            "--resume",
            "bigs-smoke",
            "--runs-dir",
            runs.to_str().unwrap(),
            "--set",
            &format!("train.steps={}", last + 5),
        ],
        Path::new(root),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (m, _) = read_metrics(&run.metrics_path()).unwrap();
    let steps: Vec<u64> = m.iter().map(|m| m.step).collect();
    assert_eq!(
        steps,
        (1..=last + 5).collect::<Vec<_>>(),
        "each step logged once, in order"
    );
    assert_eq!(run.read_status().unwrap().state, RunState::Finished);
}

#[test]
fn bad_input_fails_with_one_line_errors_and_leaves_no_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("empty.txt"), "  \n\n").unwrap();
    std::fs::write(d.join("binary.txt"), [0x50u8, 0x4b, 0x03, 0x04, 0x00, 0xff]).unwrap();
    std::fs::write(
        d.join("bad.jsonl"),
        "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("wrong.toml"),
        preset("bigs-smoke")
            .unwrap()
            .to_toml()
            .replace("seq_len = 32", "seq_len = \"long\""),
    )
    .unwrap();
    let runs = d.join("runs");
    let runs_s = runs.to_str().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = |p: &str| format!("data.corpus={}", d.join(p).display());
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (
            vec![
                "--preset".into(),
                "bigs-smoke".into(),
                "--set".into(),
                corpus("missing.txt"),
            ],
            &["missing.txt", "does not exist"],
        ),
        (
            vec![
                "--preset".into(),
                "bigs-smoke".into(),
                "--set".into(),
                corpus("empty.txt"),
            ],
            &["empty.txt", "empty"],
        ),
        (
            vec![
                "--preset".into(),
                "bigs-smoke".into(),
                "--set".into(),
                corpus("binary.txt"),
            ],
            &["binary.txt", "not text"],
        ),
        (
            vec![
                "--preset".into(),
                "bigs-smoke".into(),
                "--set".into(),
                corpus("bad.jsonl"),
            ],
            &["bad.jsonl:2", "`text`"],
        ),
        (
            vec!["--preset".into(), "no-such-preset".into()],
            &["no-such-preset", "--list-presets"],
        ),
        (
            vec![
                "--preset".into(),
                "bigs-smoke".into(),
                "--set".into(),
                "optim.lrr=1".into(),
            ],
            &["optim.lrr", "no such key"],
        ),
        (
            vec![
                "--preset".into(),
                "bigs-smoke".into(),
                "--set".into(),
                "optim.lr=fast".into(),
            ],
            &["optim.lr", "expected float"],
        ),
        (
            vec![
                "--config".into(),
                d.join("wrong.toml").display().to_string(),
            ],
            &["wrong.toml", "seq_len"],
        ),
    ];
    for (args, needles) in cases {
        let mut all = vec!["train".to_string(), "--runs-dir".into(), runs_s.into()];
        all.extend(args.clone());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = ssmlab(&refs, root);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        for n in needles {
            assert!(err.contains(n), "{args:?}: `{err}` lacks `{n}`");
        }
        let leftovers = std::fs::read_dir(&runs).map(|r| r.count()).unwrap_or(0);
        assert_eq!(leftovers, 0, "{args:?} left a run directory");
    }
}

#[test]
fn sigterm_checkpoints_and_stops_with_exit_0() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let (mut child, run) = spawn_smoke(&runs, &[]);
    let t0 = Instant::now();
    while read_metrics(&run.metrics_path())
        .map(|m| m.0.len())
        .unwrap_or(0)
        < 3
    {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(signal(child.id(), libc::SIGTERM));
    let code = child.wait().unwrap();
    assert!(code.success(), "exit status {code:?}");
    let s = run.read_status().unwrap();
    assert_eq!(s.state, RunState::Stopped);
    assert_eq!(
        run.latest_checkpoint().unwrap().0,
        s.step,
        "checkpoint at the stopping step"
    );
}

#[test]
fn failed_checkpoint_write_is_a_clear_error_and_keeps_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = smoke(10);
    c.train.checkpoint_every = 2;
    let mut t = Trainer::create(c, tmp.path()).unwrap();
    // something in the way of step-4's temporary directory (as a full or broken disk would be)
    std::fs::write(t.run.path.join("step-4.tmp"), b"not a directory").unwrap();
    let err = t
        .run(&AtomicBool::new(false), None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step-4") && err.contains("the previous checkpoint (step-2) is intact"),
        "{err}"
    );
    assert_eq!(t.run.latest_checkpoint().unwrap().0, 2);
    let s = t.run.read_status().unwrap();
    assert_eq!(s.state, RunState::Failed);
    assert!(s.message.unwrap().contains("step-4"));
    let run = t.run.clone();
    drop(t);
    assert!(Trainer::resume(run, &[]).unwrap().step() == 2);
    // the first checkpoint failing says so: nothing earlier is there to be intact
    let mut c = smoke(10);
    c.train.checkpoint_every = 2;
    c.run.name = "first".into();
    let mut t = Trainer::create(c, tmp.path()).unwrap();
    std::fs::write(t.run.path.join("step-2.tmp"), b"not a directory").unwrap();
    let err = t
        .run(&AtomicBool::new(false), None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("step-2") && err.contains("no earlier checkpoint exists"),
        "{err}"
    );
    assert!(!err.contains("intact"), "{err}");
}

#[test]
fn fused_adamw_matches_the_tensor_op_update_and_resumes_from_saved_moments() {
    use candle_core::{DType, Device, Tensor, Var};
    use ssmlab::train::optim::{AdamW, Param};
    let dev = Device::Cpu;
    let make = |fused: bool| {
        let params = (0..3)
            .map(|i| Param {
                name: format!("p{i}"),
                var: Var::from_tensor(
                    &Tensor::arange(0f64, 40000.0, &dev)
                        .unwrap()
                        .affine(1e-4 * (i + 1) as f64, -0.5)
                        .unwrap()
                        .reshape((200, 200))
                        .unwrap(),
                )
                .unwrap(),
                weight_decay: if i == 1 { 0.01 } else { 0.0 },
                lr_scale: if i == 2 { 0.5 } else { 1.0 },
            })
            .collect();
        let mut o = AdamW::new(params, 0.9, 0.98, 1e-6).unwrap();
        o.fused = fused;
        o
    };
    let (mut a, mut b) = (make(true), make(false));
    let grads = |k: usize| -> Vec<Tensor> {
        (0..3)
            .map(|i| {
                Tensor::arange(0f64, 40000.0, &dev)
                    .unwrap()
                    .affine(0.37 * (k + i + 1) as f64, 0.0)
                    .unwrap()
                    .sin()
                    .unwrap()
                    .reshape((200, 200))
                    .unwrap()
            })
            .collect()
    };
    for k in 0..4 {
        a.step(&grads(k), 1e-2).unwrap();
        b.step(&grads(k), 1e-2).unwrap();
    }
    let diff = |x: &Param, y: &Param| {
        (x.var.as_tensor() - y.var.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for (pa, pb) in a.params.iter().zip(&b.params) {
        let d = diff(pa, pb);
        assert!(
            d < 1e-12,
            "{}: fused and tensor-op AdamW differ by {d:e}",
            pa.name
        );
        assert_eq!(pa.var.dtype(), DType::F64);
    }
    // saved moments restore into fresh buffers: continuing gives the same weights
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("opt.safetensors");
    a.save(&path).unwrap();
    let mut c = make(true);
    for (pc, pa) in c.params.iter().zip(&a.params) {
        pc.var.set(pa.var.as_tensor()).unwrap();
    }
    c.load(&path, a.t).unwrap();
    a.step(&grads(9), 1e-2).unwrap();
    c.step(&grads(9), 1e-2).unwrap();
    for (pa, pc) in a.params.iter().zip(&c.params) {
        assert_eq!(diff(pa, pc), 0.0, "{}", pa.name);
    }
}

#[test]
fn a_closed_stdout_does_not_stop_or_lose_the_run() {
    // `ssmlab train … | head -1`, or an SSH session that drops under `tee`: the reader of
    // stdout goes away after the first line. The run must go on to its end (no panic on the
    // broken pipe, nothing left `running`) and log every step.
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssmlab"))
        .args(["train", "--preset", "bigs-smoke", "--runs-dir"])
        .arg(&runs)
        .args(["--set", "train.steps=40", "--set", "train.log_every=1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("run "), "first line: {first}");
    // the reader is dropped here: every later write to stdout fails with EPIPE
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the run did not end within 180 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "exit {status}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let run = RunDir {
        path: runs.join("bigs-smoke"),
    };
    assert_eq!(run.read_status().unwrap().state, RunState::Finished);
    let (m, bad) = read_metrics(&run.metrics_path()).unwrap();
    assert!(bad.is_empty());
    assert_eq!(m.last().unwrap().step, 40, "every step is logged");
}

#[test]
fn run_names_cannot_leave_the_runs_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let outside = tmp.path().join("outside");
    for name in [
        "../x",
        outside.to_str().unwrap(),
        ".hidden",
        "a/b",
        "",
        &"n".repeat(65),
        "esc\u{1b}[31m",
    ] {
        let out = ssmlab(
            &[
                "train",
                "--preset",
                "bigs-smoke",
                "--runs-dir",
                runs.to_str().unwrap(),
                "--name",
                name,
            ],
            root,
        );
        assert!(!out.status.success(), "{name:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("run name"), "{name:?}: {err}");
        assert!(
            err.contains("letters, digits"),
            "{name:?}: the rule is in the message: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{name:?}: one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(
        !tmp.path().join("x").exists(),
        "../x escaped the runs folder"
    );
    assert!(
        !outside.exists(),
        "an absolute name escaped the runs folder"
    );
    assert_eq!(
        std::fs::read_dir(&runs).unwrap().count(),
        0,
        "nothing was created"
    );
    // a file where the runs folder should be: one clear line
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = ssmlab(
        &[
            "train",
            "--preset",
            "bigs-smoke",
            "--runs-dir",
            file.to_str().unwrap(),
        ],
        root,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // the validator the TUI's launch form shares
    assert!(ssmlab::runs::check_run_name("bigs-tiny_2.lr-3e-4").is_ok());
    assert!(ssmlab::runs::check_run_name(&"n".repeat(64)).is_ok());
}

#[test]
fn sighup_stops_a_run_cleanly_unless_nohup_ignores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let wait_for_steps = |run: &RunDir, n: usize| {
        let t0 = Instant::now();
        loop {
            let lines = std::fs::read_to_string(run.metrics_path())
                .map(|t| t.lines().count())
                .unwrap_or(0);
            if lines >= n {
                return lines;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "the run did not log {n} steps"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let wait_exit = |child: &mut std::process::Child| {
        let t0 = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if t0.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the run did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Under nohup (SIGHUP ignored): a hangup changes nothing; SIGTERM still stops it.
    let runs = tmp.path().join("nohup");
    let mut child = Reap(
        Command::new("nohup")
            .arg(env!("CARGO_BIN_EXE_ssmlab"))
            .args(["train", "--preset", "bigs-smoke", "--runs-dir"])
            .arg(&runs)
            .args(["--set", "train.steps=100000", "--set", "train.log_every=1"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let run = RunDir {
        path: runs.join("bigs-smoke"),
    };
    let before = wait_for_steps(&run, 3);
    let pid = child.0.id();
    assert!(signal(pid, libc::SIGHUP));
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            panic!("SIGHUP stopped a run started under nohup ({s})");
        }
        let lines = std::fs::read_to_string(run.metrics_path()).map_or(0, |t| t.lines().count());
        if lines >= before + 5 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the run stalled after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(signal(pid, libc::SIGTERM));
    assert!(wait_exit(&mut child.0).success());
    assert_eq!(run.read_status().unwrap().state, RunState::Stopped);
    // Without nohup: SIGHUP (the terminal went away) stops it cleanly with a checkpoint. The
    // child gets SIGHUP's default disposition even when this test itself runs under nohup
    // (`env --default-signal`), as a trainer started from a terminal has.
    let runs = tmp.path().join("plain");
    let child = Command::new("env")
        .arg("--default-signal=HUP")
        .arg(env!("CARGO_BIN_EXE_ssmlab"))
        .args(["train", "--preset", "bigs-smoke", "--runs-dir"])
        .arg(&runs)
        .args(["--set", "train.steps=100000", "--set", "train.log_every=1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = RunDir {
        path: runs.join("bigs-smoke"),
    };
    let mut child = Reap(child);
    wait_for_steps(&run, 3);
    assert!(signal(child.0.id(), libc::SIGHUP));
    assert!(wait_exit(&mut child.0).success());
    assert_eq!(run.read_status().unwrap().state, RunState::Stopped);
    assert!(
        run.latest_checkpoint().is_some(),
        "stopped with a checkpoint"
    );
}

/// One writer per run: a trainer holds `run.lock` for its lifetime; a second one (resume) is
/// refused with the holder's pid, and viewers take the lock, not the heartbeat, as the truth
/// about "running".
#[test]
fn a_run_has_one_trainer_and_viewers_read_running_from_its_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let t = Trainer::create(smoke(4), tmp.path()).unwrap();
    let run = t.run.clone();
    let err = Trainer::resume(run.clone(), &[]).err().unwrap().to_string();
    assert!(
        err.contains(&format!("pid {}", std::process::id())) && err.contains("run.lock"),
        "{err}"
    );
    assert_eq!(
        run.lock_state(),
        ssmlab::runs::LockState::Held(Some(std::process::id()))
    );
    // a status that claims `running` with a heartbeat an hour old: running while the lock is
    // held (a long evaluation), lost once it is not
    let mut s = ssmlab::runs::Status::starting(&run, 4, "bigs", 0, None);
    s.heartbeat -= 3600.0;
    s.state = RunState::Running;
    run.write_status(&s).unwrap();
    let now = ssmlab::runs::unix_now();
    assert_eq!(run.effective_state(&s, now), (RunState::Running, false));
    drop(t);
    assert_eq!(run.lock_state(), ssmlab::runs::LockState::Free);
    assert_eq!(run.effective_state(&s, now), (RunState::Failed, true));
    // and the run can be resumed now
    assert_eq!(Trainer::resume(run, &[]).unwrap().step(), 0);
}

/// Two `ssmlab train --resume X` at once: the second is refused with one line naming the first
/// one's pid, and the run's metrics stay one record per step.
#[test]
fn a_second_trainer_on_a_run_is_refused_naming_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    let (first, run) = spawn_smoke(&runs, &[]);
    let mut first = Reap(first);
    let t0 = Instant::now();
    while std::fs::read_to_string(run.metrics_path())
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 3
    {
        assert!(t0.elapsed() < Duration::from_secs(120), "no steps logged");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = ssmlab(
        &["train", "--resume", "bigs-smoke", "--runs-dir", runs_s],
        tmp.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("pid {}", first.0.id())) && err.contains("run.lock"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(signal(first.0.id(), libc::SIGTERM));
    let status = first.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(run.read_status().unwrap().state, RunState::Stopped);
    let text = std::fs::read_to_string(run.metrics_path()).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "one record per step: {steps:?}"
    );
}

/// Bad control files never hold or confuse a trainer: a FIFO at control.json (opening it would
/// block), bytes that are not UTF-8 and a request that is not one are each moved aside to
/// control.json.bad with a warning while training goes on; a real request after them works; and
/// a stop left over from before a session does not stop the next `--resume`.
#[test]
fn bad_or_stale_control_files_never_hold_or_stop_a_trainer() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let (child, run) = spawn_smoke(&runs, &[]);
    let mut child = Reap(child);
    let lines = |run: &RunDir| {
        std::fs::read_to_string(run.metrics_path())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let wait_lines = |n: usize| {
        let t0 = Instant::now();
        while lines(&run) < n {
            assert!(t0.elapsed() < Duration::from_secs(120), "training stalled");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let control = run.control_path();
    let bad = run.path.join("control.json.bad");
    wait_lines(2);
    let mkfifo = Command::new("mkfifo").arg(&control).status().unwrap();
    assert!(mkfifo.success());
    for next in [
        Some(b"\xff\xfe not utf-8".as_slice()),
        Some(b"{\"command\": \"explode\"}".as_slice()),
        None,
    ] {
        // the trainer moves the file aside and goes on training
        let t0 = Instant::now();
        while control.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the control file was never handled"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(bad.exists());
        let n = lines(&run);
        wait_lines(n + 2);
        if let Some(bytes) = next {
            std::fs::write(&control, bytes).unwrap();
        }
    }
    let log = std::fs::read_to_string(run.log_path()).unwrap();
    assert!(log.contains("not a regular file"), "{log}");
    assert_eq!(
        log.matches("warning: ignored a control file").count(),
        3,
        "{log}"
    );
    // a real request still works
    run.request(ssmlab::runs::Control::Stop).unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the stop was not taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert_eq!(run.read_status().unwrap().state, RunState::Stopped);
    // a stop confirmed after the run ended is stale for the next session
    let stopped_at = run.latest_checkpoint().unwrap().0;
    run.request(ssmlab::runs::Control::Stop).unwrap();
    let target = stopped_at + 5;
    let out = ssmlab(
        &[
            "train",
            "--resume",
            "bigs-smoke",
            "--runs-dir",
            runs.to_str().unwrap(),
            "--set",
            &format!("train.steps={target}"),
        ],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = run.read_status().unwrap();
    assert_eq!((s.state, s.step), (RunState::Finished, target));
    let log = std::fs::read_to_string(run.log_path()).unwrap();
    assert!(
        log.contains("ignored a request left from before this session: stop"),
        "{log}"
    );
}

/// Config values that passed validation and then panicked (an initialiser given NaN, a
/// negative spread or an empty Δt range) or were silently ignored (an unknown activation) are
/// one clear line naming the field, through the real binary, and leave no run behind; a fixed
/// Δt (`dt_min == dt_max`) is a valid choice and trains.
#[test]
fn config_values_out_of_range_are_named_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "bigs-smoke",
            "model.initializer_range=-0.02",
            &["initializer_range", "-0.02"],
        ),
        (
            "bigs-smoke",
            "model.initializer_range=nan",
            &["initializer_range", "NaN"],
        ),
        (
            "bigs-smoke",
            "model.hidden_act=relu9",
            &["hidden_act", "relu9", "gelu"],
        ),
        (
            "diffussm-smoke",
            "model.dt_max=0.0001",
            &["dt_min", "dt_max"],
        ),
    ];
    for (preset, set, want) in cases {
        let out = ssmlab(
            &[
                "train",
                "--preset",
                preset,
                "--runs-dir",
                runs_s,
                "--set",
                set,
            ],
            tmp.path(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set}: accepted");
        assert_eq!(err.trim().lines().count(), 1, "{set}: one line: {err}");
        assert!(!err.contains("panicked"), "{set}: {err}");
        for w in want {
            assert!(err.contains(w), "{set}: `{w}` missing in {err}");
        }
        assert!(
            !runs.exists() || std::fs::read_dir(&runs).unwrap().next().is_none(),
            "{set}: a run was left behind"
        );
    }
    let out = ssmlab(
        &[
            "train",
            "--preset",
            "diffussm-smoke",
            "--runs-dir",
            runs_s,
            "--set",
            "model.dt_min=0.01",
            "--set",
            "model.dt_max=0.01",
            "--set",
            "train.steps=2",
        ],
        tmp.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A resume never stalls on a broken newest checkpoint: it goes back to the newest one that
/// loads, says which ones it skipped and why (a corrupt tensor file, a missing model file) and
/// moves them aside; `--from-step N` picks a checkpoint explicitly and moves the newer ones
/// aside, so they can never be taken for the run's latest.
#[test]
fn resume_falls_back_to_the_newest_intact_checkpoint_or_the_one_named() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let runs_s = runs.to_str().unwrap();
    let train = |name: &str| {
        let out = ssmlab(
            &[
                "train",
                "--preset",
                "bigs-smoke",
                "--runs-dir",
                runs_s,
                "--name",
                name,
                "--set",
                "train.steps=30",
                "--set",
                "train.checkpoint_every=10",
                "--set",
                "train.keep_checkpoints=5",
            ],
            tmp.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        RunDir {
            path: runs.join(name),
        }
    };
    let resume = |name: &str, extra: &[&str]| {
        let mut args = vec!["train", "--resume", name, "--runs-dir", runs_s];
        args.extend_from_slice(extra);
        ssmlab(&args, tmp.path())
    };
    let a = train("a");
    std::fs::write(
        a.checkpoint_path(30).join("model.safetensors"),
        b"\x08\0\0\0\0\0\0\0{}",
    )
    .unwrap();
    std::fs::remove_file(a.checkpoint_path(20).join("model.safetensors")).unwrap();
    let out = resume("a", &["--set", "train.steps=35"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("skipped checkpoint step-30"), "{err}");
    assert!(
        err.contains("skipped checkpoint step-20 (no model.safetensors)"),
        "{err}"
    );
    assert!(a.path.join("step-30.corrupt").is_dir() && a.path.join("step-20.corrupt").is_dir());
    let s = a.read_status().unwrap();
    assert_eq!((s.state, s.step), (RunState::Finished, 35));
    let steps: Vec<u64> = losses(&a.path).iter().map(|(s, _)| *s).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    assert_eq!(steps.last(), Some(&35));
    let log = std::fs::read_to_string(a.log_path()).unwrap();
    assert!(
        log.contains("session start: step 10 of 35"),
        "went on from step 10: {log}"
    );
    // --from-step: explicit, and the newer checkpoints leave the way
    let b = train("b");
    let out = resume("b", &["--from-step", "7"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no step-7/") && err.contains("10, 20, 30"),
        "{err}"
    );
    let out = resume("b", &["--from-step", "10", "--set", "train.steps=15"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(b.path.join("step-20.unused").is_dir() && b.path.join("step-30.unused").is_dir());
    assert_eq!(b.latest_checkpoint().unwrap().0, 15);
    assert_eq!(b.read_status().unwrap().step, 15);
    // when no checkpoint loads (here a --set that changes the model's shape), it is one error
    // and nothing is moved aside
    let out = resume("b", &["--set", "model.hidden_size=48"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not load"), "{err}");
    assert_eq!(b.latest_checkpoint().unwrap().0, 15);
    assert!(!b.path.join("step-15.corrupt").exists() && !b.path.join("step-10.corrupt").exists());
}
