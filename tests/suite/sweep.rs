//! `ssmlab sweep`: grid expansion, random ranges, the sweep record, reruns that skip finished
//! runs and resume stopped ones, a sweep stopped by a signal, and one-line errors.

use std::path::Path;
use std::time::{Duration, Instant};

use ssmlab::sweep::{
    Action, GridAxis, SweepFile, SweepSpec, parse_grid, parse_range, plan, sweep_file_name,
};

use crate::common::{Reap, assert_ok, ssmlab, stop_trainers};

fn spec(grid: &[&str], random: usize, ranges: &[&str]) -> SweepSpec {
    SweepSpec {
        preset: "bigs-smoke".into(),
        sets: vec![],
        grid: grid.iter().map(|g| parse_grid(g).unwrap()).collect(),
        random,
        ranges: ranges.iter().map(|r| parse_range(r).unwrap()).collect(),
        seed: 7,
    }
}

#[test]
fn grid_expands_as_a_product_first_axis_slowest() {
    let s = spec(
        &["optim.lr=1e-3,3e-3", "model.num_hidden_layers=1,2,3"],
        0,
        &[],
    );
    assert_eq!(s.count(), 6);
    let runs = s.expand();
    assert_eq!(runs.len(), 6);
    assert_eq!(runs[0], ["optim.lr=1e-3", "model.num_hidden_layers=1"]);
    assert_eq!(runs[2], ["optim.lr=1e-3", "model.num_hidden_layers=3"]);
    assert_eq!(runs[3], ["optim.lr=3e-3", "model.num_hidden_layers=1"]);
    let f = SweepFile::new("g", s).unwrap();
    let ids: Vec<&str> = f.runs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["g-1", "g-2", "g-3", "g-4", "g-5", "g-6"]);
    assert_eq!(f.runs[4].value("model.num_hidden_layers"), Some("2"));
}

#[test]
fn random_ranges_are_seeded_in_bounds_and_typed() {
    let s = spec(
        &["model.num_hidden_layers=1,2"],
        5,
        &[
            "optim.lr=1e-4:1e-2:log",
            "train.steps=10:30",
            "optim.beta1=0.8:0.95",
        ],
    );
    let a = s.expand();
    assert_eq!(a.len(), 10);
    assert_eq!(a, s.expand(), "the same seed draws the same values");
    let mut other = s.clone();
    other.seed = 8;
    assert_ne!(a, other.expand());
    let mut lrs = Vec::new();
    for run in &a {
        let get = |k: &str| {
            run.iter()
                .find_map(|x| x.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        let lr: f64 = get("optim.lr").parse().unwrap();
        assert!((1e-4..=1e-2).contains(&lr), "{lr}");
        lrs.push(lr);
        let steps = get("train.steps");
        let n: i64 = steps.parse().expect("integer bounds draw integers");
        assert!((10..=30).contains(&n));
        let b: f64 = get("optim.beta1").parse().unwrap();
        assert!((0.8..=0.95).contains(&b));
    }
    // log-uniform over two decades: some draws fall in each
    assert!(lrs.iter().any(|&l| l < 1e-3) && lrs.iter().any(|&l| l > 1e-3));
    // every drawn run is a valid configuration
    SweepFile::new("r", s).unwrap();
}

/// A result's error message (Ok: none), for the table of bad inputs.
trait Msg {
    fn msg(self) -> Result<(), String>;
}

impl<T> Msg for Result<T, ssmlab::sweep::SweepError> {
    fn msg(self) -> Result<(), String> {
        self.map(|_| ()).map_err(|e| e.to_string())
    }
}

#[test]
fn bad_sweeps_are_one_line_errors_naming_the_key() {
    let cases: Vec<(Result<(), String>, &str)> = vec![
        (parse_grid("optim.lr").msg(), "expected KEY=V1,V2"),
        (parse_grid("optim.lr=1e-3,,2").msg(), "non-empty values"),
        (parse_grid("optim.lr=1,1").msg(), "given twice"),
        (parse_range("optim.lr=1:0").msg(), "LO must be below HI"),
        (parse_range("optim.lr=0:1:log").msg(), "LO > 0"),
        (parse_range("optim.lr=a:b").msg(), "expected KEY=LO:HI"),
        (
            SweepFile::new("b", spec(&["optim.lrx=1e-3"], 0, &[])).msg(),
            "optim.lrx: no such key",
        ),
        (
            SweepFile::new("b", spec(&["optim.lr=fast"], 0, &[])).msg(),
            "expected float",
        ),
        (
            SweepFile::new("b", spec(&["model.num_hidden_layers=1.5"], 0, &[])).msg(),
            "expected integer",
        ),
        (
            SweepFile::new("b", spec(&["optim.lr=1e-3", "optim.lr=2e-3"], 0, &[])).msg(),
            "swept twice",
        ),
        (
            SweepFile::new("b", spec(&["run.name=x,y"], 0, &[])).msg(),
            "run.name cannot be swept",
        ),
        (
            SweepFile::new("b", spec(&[], 3, &[])).msg(),
            "--random needs",
        ),
        (
            SweepFile::new("../b", spec(&["optim.lr=1e-3"], 0, &[])).msg(),
            "refused",
        ),
        (
            SweepFile::new(
                "b",
                spec(
                    &["optim.lr=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"; 1],
                    20,
                    &["optim.beta1=0.8:0.9"],
                ),
            )
            .msg(),
            "more than 256",
        ),
    ];
    for (got, want) in cases {
        let e = got.expect_err("an error");
        assert!(e.contains(want), "{e:?} should say {want:?}");
        assert!(!e.contains('\n'), "one line: {e:?}");
    }
    let mut s = spec(&["optim.lr=1e-3"], 0, &[]);
    s.preset = "nope".into();
    let e = SweepFile::new("b", s).unwrap_err().to_string();
    assert!(e.contains("no such preset"), "{e}");
}

/// The JSON lines of a sweep's output, one object per run.
fn json_rows(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn config_lr(run: &Path) -> f64 {
    let t: toml::Table =
        toml::from_str(&std::fs::read_to_string(run.join("config.toml")).unwrap()).unwrap();
    t["optim"]["lr"].as_float().unwrap()
}

#[test]
fn a_sweep_makes_its_runs_prints_the_table_and_a_rerun_skips_them() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("runs");
    let ds = d.to_str().unwrap();
    let args = [
        "sweep",
        "--preset",
        "bigs-smoke",
        "--name",
        "sw",
        "--grid",
        "optim.lr=1e-3,3e-3",
        "--runs-dir",
        ds,
        "--json",
    ];
    let out = ssmlab(&args, tmp.path());
    assert_ok(&out);
    let rows = json_rows(&out);
    assert_eq!(rows.len(), 2);
    for (r, (id, lr)) in rows.iter().zip([("sw-1", 1e-3), ("sw-2", 3e-3)]) {
        assert_eq!(r["id"], id);
        assert_eq!(r["state"], "finished");
        assert!(r["best_eval_loss"].as_f64().unwrap().is_finite());
        assert!(r["acc_or_cas"].as_f64().is_some());
        assert!(r["tokens"].as_u64().unwrap() > 0);
        assert_eq!(config_lr(&d.join(id)), lr);
    }
    assert_eq!(rows[0]["values"]["optim.lr"], "1e-3");
    let rec = SweepFile::read(&d.join(sweep_file_name("sw"))).unwrap();
    assert_eq!(rec.runs.len(), 2);
    assert_eq!(
        rec.spec.grid,
        [GridAxis {
            key: "optim.lr".into(),
            values: vec!["1e-3".into(), "3e-3".into()]
        }]
    );
    // The rerun trains nothing: same table, metrics untouched.
    let before = std::fs::read(d.join("sw-1/metrics.jsonl")).unwrap();
    let again = ssmlab(&args, tmp.path());
    assert_ok(&again);
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(err.matches("skip (finished)").count(), 2, "{err}");
    assert!(!err.contains("started"), "{err}");
    assert_eq!(json_rows(&again), rows);
    assert_eq!(std::fs::read(d.join("sw-1/metrics.jsonl")).unwrap(), before);
    // The text table marks the best run.
    let text = ssmlab(&["sweep", "--name", "sw", "--runs-dir", ds], tmp.path());
    assert_ok(&text);
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(
        t.starts_with("run ") && t.contains("optim.lr") && t.contains("best eval"),
        "{t}"
    );
    assert_eq!(t.matches("\n*sw-").count(), 1, "{t}");
    // Another grid under the same name is refused, naming the record.
    let other = ssmlab(
        &[
            "sweep",
            "--preset",
            "bigs-smoke",
            "--name",
            "sw",
            "--grid",
            "optim.lr=1e-3",
            "--runs-dir",
            ds,
        ],
        tmp.path(),
    );
    assert!(!other.status.success());
    let e = String::from_utf8_lossy(&other.stderr);
    assert!(
        e.contains("sw.sweep.toml") && e.contains("choose another --name"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn a_stopped_sweep_resumes_to_the_same_result_as_one_straight_through() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = "optim.lr=2e-3,4e-3";
    let straight = tmp.path().join("a");
    let stopped = tmp.path().join("b");
    let run = |dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "sweep",
            "--preset",
            "bigs-smoke",
            "--name",
            "s",
            "--grid",
            grid,
            "--parallel",
            "2",
            "--runs-dir",
            dir.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = ssmlab(&args, tmp.path());
        assert_ok(&out);
        json_rows(&out)
    };
    let full = run(&straight, &[]);
    let part = run(&stopped, &["--stop-at", "10"]);
    assert!(part.iter().all(|r| r["state"] == "stopped"), "{part:?}");
    let p = plan(&stopped, "s", None).unwrap();
    assert_eq!(p.actions, [Action::Resume, Action::Resume]);
    let resumed = run(&stopped, &[]);
    for (a, b) in full.iter().zip(&resumed) {
        assert_eq!(b["state"], "finished");
        assert_eq!(a["best_eval_loss"], b["best_eval_loss"], "bitwise resume");
        assert_eq!(a["acc_or_cas"], b["acc_or_cas"]);
        assert_eq!(a["tokens"], b["tokens"]);
    }
}

#[test]
fn a_signal_stops_the_sweep_and_its_runs_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("runs");
    struct Stop<'a>(&'a Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            stop_trainers(self.0);
        }
    }
    let _stop = Stop(&d);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ssmlab"))
        .args([
            "sweep",
            "--preset",
            "bigs-smoke",
            "--name",
            "k",
            "--set",
            "train.steps=100000",
            "--grid",
            "optim.lr=1e-3,3e-3",
            "--parallel",
            "2",
            "--runs-dir",
            d.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    // Wait until both runs have logged a step.
    let t0 = Instant::now();
    while !["k-1", "k-2"].iter().all(|id| {
        d.join(id)
            .join("metrics.jsonl")
            .metadata()
            .is_ok_and(|m| m.len() > 0)
    }) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the runs never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ssmlab::runs::os::signal(child.0.id(), libc::SIGTERM);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the sweep did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("continue it with: ssmlab sweep --name k"),
        "{err}"
    );
    for id in ["k-1", "k-2"] {
        let run = ssmlab::runs::RunDir::open(&d.join(id)).unwrap();
        let s = run.read_status().unwrap();
        assert_eq!(s.state, ssmlab::runs::RunState::Stopped, "{id}: {err}");
        assert!(run.latest_checkpoint().is_some());
    }
    let p = plan(&d, "k", None).unwrap();
    assert_eq!(p.actions, [Action::Resume, Action::Resume]);
}

#[test]
fn a_new_sweep_refuses_run_ids_that_exist_and_a_rerun_needs_a_record() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("runs");
    std::fs::create_dir_all(d.join("x-2")).unwrap();
    let e = plan(&d, "x", Some(spec(&["optim.lr=1e-3,2e-3"], 0, &[])))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x-2") && e.contains("not part of a sweep"),
        "{e}"
    );
    let e = plan(&d, "y", None).unwrap_err().to_string();
    assert!(e.contains("no sweep y") && e.contains("--preset"), "{e}");
    // A damaged record is an error of one line naming it.
    std::fs::write(d.join(sweep_file_name("z")), "name = 3\n").unwrap();
    let e = plan(&d, "z", None).unwrap_err().to_string();
    assert!(e.contains("z.sweep.toml") && !e.contains('\n'), "{e}");
}

/// A metric line of a synthetic run: step, tokens, wall seconds, and an evaluation.
fn m(step: u64, wall_s: f64, eval: Option<(f64, f64)>) -> ssmlab::runs::Metric {
    ssmlab::runs::Metric {
        step,
        tokens: step * 100,
        wall_s,
        lr: None,
        loss: Some(1.0),
        grad_norm: None,
        tokens_per_s: None,
        eval_loss: eval.map(|e| e.0),
        eval_acc: eval.map(|e| e.1),
        eval_baseline_acc: None,
        images: None,
        images_per_s: None,
        eval_cas: None,
    }
}

#[test]
fn comparing_sweeps_takes_each_arms_best_run_its_spread_and_shared_budgets() {
    use ssmlab::runs::index::RunSummary;
    use ssmlab::sweep::{compare_arms, compare_table};
    let file = |name: &str| SweepFile::new(name, spec(&["optim.lr=1e-3,3e-3"], 0, &[])).unwrap();
    let run = |id: &str, model: &str, ms: Vec<ssmlab::runs::Metric>| {
        let mut r = RunSummary::of_metrics(id, id.into(), model, ms);
        r.state = Some(ssmlab::runs::RunState::Finished);
        r
    };
    // Arm a: run a-2 is best (eval 2.0), ending at 10 s; arm b: b-1 (3.0), ending at 40 s.
    // (Values a float32 holds exactly: the runs index keeps metrics as f32.)
    let a_runs = vec![
        run(
            "a-1",
            "bigs",
            vec![
                m(10, 5.0, Some((4.0, 0.125))),
                m(20, 10.0, Some((3.5, 0.25))),
            ],
        ),
        run(
            "a-2",
            "bigs",
            vec![
                m(10, 5.0, Some((3.0, 0.1875))),
                m(20, 10.0, Some((2.0, 0.375))),
            ],
        ),
    ];
    let b_runs = vec![
        run(
            "b-1",
            "bert",
            vec![
                m(10, 20.0, Some((3.25, 0.0625))),
                m(20, 40.0, Some((3.0, 0.125))),
            ],
        ),
        run(
            "b-2",
            "bert",
            vec![
                m(10, 20.0, Some((3.5, 0.03125))),
                m(20, 40.0, Some((3.375, 0.09375))),
            ],
        ),
    ];
    let arms = vec![
        ("a".to_string(), vec![file("a")], a_runs),
        ("b".to_string(), vec![file("b")], b_runs),
    ];
    let (budget, reports) = compare_arms(&arms).unwrap();
    assert_eq!(budget.tokens, 2000);
    assert_eq!(budget.wall_s, 10.0);
    let (a, b) = (&reports[0], &reports[1]);
    assert_eq!(a.best.id, "a-2");
    assert_eq!(
        a.best.values,
        [("optim.lr".to_string(), "3e-3".to_string())]
    );
    assert_eq!(b.best.id, "b-1");
    assert_eq!(a.spread, Some((0.25, 0.375)));
    assert_eq!(b.loss_spread, Some((3.0, 3.375)));
    assert_eq!((a.runs, a.finished), (2, 2));
    // equal tokens: both at step 20; equal wall time (10 s): b-1 had no evaluation yet
    assert_eq!(a.at_tokens, Some((2.0, Some(0.375), 20)));
    assert_eq!(b.at_tokens, Some((3.0, Some(0.125), 20)));
    assert_eq!(a.at_wall, Some((2.0, Some(0.375), 20)));
    assert_eq!(b.at_wall, None, "b's first evaluation came at 20 s");
    let t = compare_table(&budget, &reports);
    assert!(t.contains("at 2000 tokens") && t.contains("at 10 s"), "{t}");
    assert!(t.contains("25.00–37.50%"), "{t}");
    // An arm without an evaluation is an error naming it.
    let empty = vec![
        ("a".to_string(), vec![file("a")], vec![]),
        ("b".to_string(), vec![file("b")], vec![]),
    ];
    let e = compare_arms(&empty).unwrap_err().to_string();
    assert!(
        e.contains("sweep a") && e.contains("no run has an evaluation"),
        "{e}"
    );
}
