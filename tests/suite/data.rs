//! Data: corpora, masking, packing, ordering; metrics tailing; config overrides; schedule.

use std::io::Write;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ssmlab::data::corpus::{Document, paragraphs, split};
use ssmlab::data::mlm::{DataCursor, IGNORE, MaskingConfig, Sampler, mask_batch, pack};
use ssmlab::data::tokenizer::{Specials, TextTokenizer};
use ssmlab::runs::{Metric, MetricsTail};
use ssmlab::train::optim::lr_at;
use ssmlab::train::presets::preset;

fn root(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn bert_vocab_reproduces_bert_ids() {
    let tok = TextTokenizer::load(&root("datasets/bert-base-uncased-vocab.txt")).unwrap();
    assert_eq!(tok.vocab_size(), 30522);
    assert_eq!(tok.encode("Hello world").unwrap(), vec![7592, 2088]);
    assert_eq!(
        tok.specials,
        Specials {
            pad: 0,
            unk: 100,
            cls: 101,
            sep: 102,
            mask: 103
        }
    );
    let moby = TextTokenizer::load(&root("datasets/moby-dick-wordpiece-8k.json")).unwrap();
    assert_eq!(moby.vocab_size(), 8192);
    assert_eq!(
        moby.decode(&moby.encode("Call me Ishmael.").unwrap()),
        "call me ishmael."
    );
}

#[test]
fn masking_follows_bert_proportions_and_never_touches_specials() {
    let s = Specials {
        pad: 0,
        unk: 1,
        cls: 2,
        sep: 3,
        mask: 4,
    };
    let seq: Vec<u32> = std::iter::once(2)
        .chain((0..20000).map(|i| 10 + (i % 500)))
        .chain([3, 0, 0])
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (ids, labels) = mask_batch(&[&seq], s, 600, MaskingConfig::default(), &mut rng);
    let chosen: Vec<usize> = (0..seq.len()).filter(|&i| labels[i] != IGNORE).collect();
    let frac = chosen.len() as f64 / 20000.0;
    assert!((frac - 0.15).abs() < 0.01, "{frac}");
    let masked = chosen.iter().filter(|&&i| ids[i] == 4).count() as f64 / chosen.len() as f64;
    let same = chosen.iter().filter(|&&i| ids[i] == seq[i]).count() as f64 / chosen.len() as f64;
    assert!(
        (masked - 0.8).abs() < 0.02 && (same - 0.1).abs() < 0.02,
        "{masked} {same}"
    );
    for i in [0, seq.len() - 3, seq.len() - 2, seq.len() - 1] {
        assert_eq!((labels[i], ids[i]), (IGNORE, seq[i]));
    }
    assert!(chosen.iter().all(|&i| labels[i] == seq[i] as i64));
    // seeded: same draws again
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    assert_eq!(
        mask_batch(&[&seq], s, 600, MaskingConfig::default(), &mut rng),
        (ids, labels)
    );
}

#[test]
fn packing_split_and_order() {
    let tok = TextTokenizer::load(&root("datasets/bert-base-uncased-vocab.txt")).unwrap();
    let docs: Vec<Document> = ["one two three", "four five", "six"]
        .iter()
        .map(|t| Document {
            text: t.to_string(),
        })
        .collect();
    let seqs = pack(&docs, &tok, 5).unwrap();
    let s = tok.specials;
    // one two three [SEP] four five [SEP] six → pieces of 3, each [CLS] … [SEP], padded
    assert_eq!(seqs.len(), 3);
    assert!(seqs.iter().all(|q| q.len() == 5 && q[0] == s.cls));
    let six = tok.encode("six").unwrap()[0];
    assert_eq!(seqs[2], vec![s.cls, s.sep, six, s.sep, s.pad]);
    assert_eq!(paragraphs("a\nb\n\n\nc\n"), vec!["a b", "c"]);
    let many: Vec<Document> = (0..2000)
        .map(|i| Document {
            text: format!("doc {i}"),
        })
        .collect();
    let (tr, va) = split(many.clone(), 0.1);
    assert!((va.len() as f64 / 2000.0 - 0.1).abs() < 0.03);
    assert_eq!(split(many, 0.1), (tr, va), "deterministic");
    // the sampler's cursor alone restores the order
    let mut a = Sampler::new(37, 9);
    let mut c = DataCursor::default();
    let first: Vec<usize> = (0..10).flat_map(|_| a.next_batch(&mut c, 8)).collect();
    let mut b = Sampler::new(37, 9);
    let mut c2 = DataCursor { epoch: 1, pos: 3 };
    assert_eq!(b.next_batch(&mut c2, 8), first[40..48]);
    let mut epoch0 = first[..37].to_vec();
    epoch0.sort();
    assert_eq!(epoch0, (0..37).collect::<Vec<_>>());
}

#[test]
fn metrics_tail_handles_partial_lines_corruption_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("metrics.jsonl");
    let mut tail = MetricsTail::new(&p);
    assert_eq!(tail.poll().unwrap(), 0, "missing file is fine");
    let line = |s: u64| {
        serde_json::to_string(&Metric {
            step: s,
            loss: Some(1.0 / s as f64),
            ..Default::default()
        })
        .unwrap()
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .unwrap();
    write!(f, "{}\n{}", line(1), &line(2)[..7]).unwrap();
    f.flush().unwrap();
    assert_eq!(tail.poll().unwrap(), 1);
    write!(f, "{}\n{{\"step\": oops\n{}\n", &line(2)[7..], line(3)).unwrap();
    f.flush().unwrap();
    assert_eq!(tail.poll().unwrap(), 2);
    assert_eq!(
        tail.records.iter().map(|m| m.step).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(tail.bad_lines, vec![3]);
    std::fs::write(&p, format!("{}\n", line(7))).unwrap();
    tail.poll().unwrap();
    assert_eq!(
        tail.records.iter().map(|m| m.step).collect::<Vec<_>>(),
        vec![7],
        "truncation restarts"
    );
}

#[test]
fn overrides_and_schedule() {
    let c = preset("bigs-smoke").unwrap();
    let o = c
        .with_overrides(&[
            "optim.lr=1".into(),
            "train.steps=7".into(),
            "run.name=x y".into(),
        ])
        .unwrap();
    assert_eq!(
        (o.optim.lr, o.train.steps, o.run.name.as_str()),
        (1.0, 7, "x y")
    );
    let e = c
        .with_overrides(&["train.steps=1.5".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.steps") && e.contains("expected integer"),
        "{e}"
    );
    let e = c
        .with_overrides(&["nope.x=1".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("no section `nope`"), "{e}");
    assert_eq!(lr_at(5, 1.0, 10, 110, 0.1), 0.5);
    assert_eq!(lr_at(10, 1.0, 10, 110, 0.1), 1.0);
    assert!((lr_at(60, 1.0, 10, 110, 0.1) - 0.55).abs() < 1e-12);
    assert!((lr_at(110, 1.0, 10, 110, 0.1) - 0.1).abs() < 1e-12);
}

/// A metrics file over the tail-first threshold: the first poll gives its end (the first frame
/// does not wait), later polls read the head and put it in front; every record arrives once and
/// in order, bad lines keep their line numbers, and appends go on after.
#[test]
fn a_large_metrics_file_is_read_tail_first_then_whole() {
    use ssmlab::runs::metrics::TAIL_FIRST;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("metrics.jsonl");
    let mut text = String::new();
    let mut n = 0u64;
    let mut bad_at = Vec::new();
    while (text.len() as u64) < TAIL_FIRST + (1 << 20) {
        n += 1;
        let m = Metric {
            step: n,
            tokens: n * 2048,
            wall_s: n as f64 * 0.5,
            loss: Some(3.0 + 1.0 / n as f64),
            lr: Some(2e-3),
            eval_acc: n.is_multiple_of(100).then_some(0.25),
            images: n.is_multiple_of(7).then_some(n),
            ..Default::default()
        };
        text += &serde_json::to_string(&m).unwrap();
        text.push('\n');
        // one bad line in the head, one in the last MiB (the tail read first)
        if n == 10 || (bad_at.len() == 1 && text.len() as u64 > TAIL_FIRST) {
            text += "{\"step\": oops\n";
            bad_at.push(n as usize + bad_at.len() + 1);
        }
    }
    std::fs::write(&p, &text).unwrap();
    let mut tail = MetricsTail::new(&p);
    let first = tail.poll().unwrap();
    assert!(tail.loading(), "a large file starts with its tail");
    assert!(first > 0 && (first as u64) < n / 2, "{first} of {n}");
    assert_eq!(tail.records.last().unwrap().step, n);
    let mut polls = 0;
    while tail.loading() {
        tail.poll().unwrap();
        polls += 1;
        assert!(polls < 1000);
    }
    let steps: Vec<u64> = tail.records.iter().map(|m| m.step).collect();
    assert_eq!(steps, (1..=n).collect::<Vec<_>>());
    assert_eq!(tail.bad_lines, bad_at, "line numbers of the whole file");
    // values: f32 of what was logged; absent fields stay absent
    let m = tail.records.get(699).unwrap();
    assert_eq!(m.step, 700);
    assert_eq!(m.eval_acc, Some(0.25f32 as f64));
    assert_eq!(m.images, Some(700));
    assert_eq!(m.grad_norm, None);
    assert_eq!(m.loss.unwrap() as f32, (3.0 + 1.0 / 700.0) as f32);
    assert_eq!(tail.records.get(700).unwrap().images, None);
    // a snapshot is not changed by appends to the log
    let snapshot = tail.records.clone();
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    writeln!(
        f,
        "{}",
        serde_json::to_string(&Metric {
            step: n + 1,
            ..Default::default()
        })
        .unwrap()
    )
    .unwrap();
    assert_eq!(tail.poll().unwrap(), 1);
    assert_eq!(tail.records.len(), snapshot.len() + 1);
    assert_eq!(snapshot.last().unwrap().step, n);
    assert_eq!(tail.records.last().unwrap().step, n + 1);
    // the full-precision reader agrees on what is a record
    let (all, bad) = ssmlab::runs::read_metrics(&p).unwrap();
    assert_eq!(all.len() as u64, n + 1);
    assert_eq!(bad, bad_at);
}

/// A resume truncates metrics.jsonl of any size (it streams; it used to stop at 16 MiB): the
/// records after the checkpoint and an unfinished last line go, the rest stays byte for byte.
#[test]
fn truncating_a_large_metrics_file_streams_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = ssmlab::runs::RunDir {
        path: dir.path().to_path_buf(),
    };
    let mut text = String::new();
    let mut n = 0u64;
    while text.len() < 20 << 20 {
        n += 1;
        text += &serde_json::to_string(&Metric {
            step: n,
            loss: Some(1.0 / n as f64),
            tokens_per_s: Some(3300.5),
            ..Default::default()
        })
        .unwrap();
        text.push('\n');
    }
    text += "{\"step\": 9999999, \"lo";
    std::fs::write(run.metrics_path(), &text).unwrap();
    run.truncate_metrics(1000).unwrap();
    let kept = std::fs::read_to_string(run.metrics_path()).unwrap();
    assert_eq!(kept.lines().count(), 1000);
    assert!(text.starts_with(&kept));
    assert!(!dir.path().join("metrics.jsonl.tmp").exists());
}
