//! `ssmlab export`: TensorBoard event files checked against one written by TensorBoard's own
//! writer (`tests/fixtures/tensorboard/`), and the wide CSV.

use std::path::Path;

use ssmlab::runs::export::{
    CSV_METRICS, Scalar, What, event_file_bytes, read_events, read_records, scalars,
};

use crate::common::{assert_ok, shipped_run, ssmlab};

fn golden() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tensorboard/golden.tfevents")
}

/// The scalars the golden file was written with (its README).
fn golden_rows() -> Vec<Scalar> {
    [
        (1795938900.25, 0, "train/loss", 9.125),
        (1795938901.5, 1, "train/loss", 8.75),
        (1795938901.5, 1, "train/lr", 0.003),
        (1795938960.0, 200, "eval/loss", 4.614),
        (1795938960.0, 200, "eval/accuracy", 0.271),
        (1795939000.125, 2500, "train/tokens_per_s", 3133.0),
    ]
    .into_iter()
    .map(|(wall_time, step, tag, value)| Scalar {
        wall_time,
        step,
        tag: tag.into(),
        value,
    })
    .collect()
}

#[test]
fn the_reader_reads_tensorboards_own_event_file() {
    let events = read_events(&golden()).unwrap();
    assert_eq!(events.len(), 7);
    assert_eq!(
        events[0].what,
        Some(What::FileVersion("brain.Event:2".into()))
    );
    let got = scalars(&events);
    let want = golden_rows();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.wall_time, g.step, &g.tag), (w.wall_time, w.step, &w.tag));
        // simple_value is an f32
        assert_eq!(g.value, f64::from(w.value as f32));
    }
}

#[test]
fn the_writer_writes_the_same_bytes_as_tensorboard() {
    let gold = std::fs::read(golden()).unwrap();
    let ours = event_file_bytes(1.5e9, &golden_rows());
    let g = read_records(&gold).unwrap();
    let o = read_records(&ours).unwrap();
    assert_eq!(g.len(), o.len());
    // Every scalar record, framing and CRCs included, is byte for byte TensorBoard's.
    let first = |b: &[u8]| 12 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize + 4;
    assert_eq!(&ours[first(&ours)..], &gold[first(&gold)..]);
    // Its own version record reads back.
    let p = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(p.path(), &ours).unwrap();
    let ev = read_events(p.path()).unwrap();
    assert_eq!(ev[0].what, Some(What::FileVersion("brain.Event:2".into())));
    assert_eq!(ev[0].wall_time, 1.5e9);
    // A flipped byte anywhere is caught by a CRC and named.
    for at in [3, 10, 40, ours.len() - 2] {
        let mut bad = ours.clone();
        bad[at] ^= 0x20;
        std::fs::write(p.path(), &bad).unwrap();
        let e = read_events(p.path()).unwrap_err().to_string();
        assert!(e.contains("CRC") || e.contains("not there"), "{e}");
        assert!(e.contains(&p.path().display().to_string()), "{e}");
    }
}

#[test]
fn export_writes_every_metric_of_a_run_to_tensorboard_and_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let tb = tmp.path().join("tb");
    let csv = tmp.path().join("m.csv");
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = ssmlab(
        &[
            "export",
            "bigs-mobydick",
            "--runs-dir",
            "checkpoints",
            "--tensorboard",
            tb.to_str().unwrap(),
            "--csv",
            csv.to_str().unwrap(),
        ],
        here,
    );
    assert_ok(&out);
    let (metrics, _) = ssmlab::runs::read_metrics(&shipped_run().join("metrics.jsonl")).unwrap();
    let files: Vec<_> = std::fs::read_dir(tb.join("bigs-mobydick"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].to_string_lossy().contains("tfevents"));
    let pts = scalars(&read_events(&files[0]).unwrap());
    let want: usize = metrics
        .iter()
        .map(|m| ssmlab::runs::export::metric_values(m).len())
        .sum();
    assert_eq!(pts.len(), want);
    let started = ssmlab::runs::RunDir {
        path: shipped_run(),
    }
    .read_status()
    .unwrap()
    .started;
    let last_eval = metrics.iter().rev().find(|m| m.eval_acc.is_some()).unwrap();
    let p = pts.iter().rev().find(|p| p.tag == "eval/accuracy").unwrap();
    assert_eq!(p.step, last_eval.step);
    assert_eq!(p.value, f64::from(last_eval.eval_acc.unwrap() as f32));
    assert!((p.wall_time - (started + last_eval.wall_s)).abs() < 1e-6);
    // The CSV: a column per metric, a row per record.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..4], ["run", "step", "tokens", "wall_s"]);
    assert_eq!(&header[4..], CSV_METRICS);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), metrics.len());
    assert!(rows.iter().all(|r| r.len() == header.len()));
    let last = rows.last().unwrap();
    let m = metrics.last().unwrap();
    assert_eq!(last[1], m.step.to_string());
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    assert_eq!(
        last[col("eval_acc")].parse::<f64>().unwrap(),
        m.eval_acc.unwrap()
    );
}

#[test]
fn export_errors_are_one_line_and_a_closed_pipe_is_a_clean_stop() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (args, want) in [
        (vec!["export", "bigs-mobydick"], "nothing to write"),
        (vec!["export", "no-such-run", "--csv", "-"], "not a run"),
    ] {
        let out = ssmlab(&args, here);
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains(want), "{e}");
    }
    // `--csv - | head -1`, with more rows than a pipe holds.
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ssmlab"))
        .args([
            "export",
            "bigs-mobydick",
            "bigs-mobydick",
            "bigs-mobydick",
            "--csv",
            "-",
        ])
        .current_dir(here)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("run,step"));
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !e.contains("panicked"), "{e}");
}
