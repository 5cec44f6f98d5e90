//! Metrics leaving ssmlab: a wide CSV ([`wide_csv`]) and TensorBoard event files.
//!
//! TensorBoard event files: the scalars of a run's `metrics.jsonl`, written so that
//! `tensorboard --logdir DIR` shows them, and read back (for tests and for checking a file).
//!
//! The format (TensorFlow's `tf.Event` protocol buffers in `TFRecord` framing):
//! each record is `u64 length (LE) · u32 masked CRC32C of the length · data · u32 masked CRC32C
//! of the data`, where `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`. The first record is a
//! `file_version = "brain.Event:2"` event; every other one carries a `Summary` with one
//! `simple_value` per tag. The messages are declared here with `prost` (the fields TensorBoard
//! reads, under their `event.proto` / `summary.proto` tags); the golden file under
//! `tests/fixtures/tensorboard/` was written by TensorBoard's own writer.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;

use super::{Metric, RunError, io_err};

/// `tensorflow.Event` (the fields ssmlab writes and reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
    #[prost(message, optional, tag = "10")]
    pub source_metadata: Option<SourceMetadata>,
}

/// The `what` oneof of an event.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.SourceMetadata`: which writer made the file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SourceMetadata {
    #[prost(string, tag = "1")]
    pub writer: String,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with its `simple_value` (a oneof member: written even when 0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(oneof = "Value", tags = "2")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

/// One scalar point: wall time (Unix seconds), step, tag, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub wall_time: f64,
    pub step: u64,
    pub tag: String,
    pub value: f64,
}

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// TFRecord's masked CRC32C.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let c = CRC.checksum(bytes);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One framed record.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The records of an event file, each checked against its two CRCs.
pub fn read_records(bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
    };
    while at < bytes.len() {
        let len_b = bytes
            .get(at..at + 8)
            .ok_or_else(|| format!("record at byte {at}: cut short in its length"))?;
        if u32_at(at + 8) != Some(masked_crc(len_b)) {
            return Err(format!(
                "record at byte {at}: the length's CRC does not match"
            ));
        }
        let len = u64::from_le_bytes(len_b.try_into().map_err(|_| "length")?);
        let start = at + 12;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e.checked_add(4).is_some_and(|e4| e4 <= bytes.len()))
            .ok_or_else(|| format!("record at byte {at}: {len} bytes of data are not there"))?;
        let data = &bytes[start..end];
        if u32_at(end) != Some(masked_crc(data)) {
            return Err(format!(
                "record at byte {at}: the data's CRC does not match"
            ));
        }
        out.push(data);
        at = end + 4;
    }
    Ok(out)
}

/// The events of an event file.
pub fn read_events(path: &Path) -> super::Result<Vec<Event>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let invalid = |msg: String| RunError::Invalid {
        path: path.into(),
        msg: format!("{msg}; not a TensorBoard event file, or a damaged one"),
    };
    read_records(&bytes)
        .map_err(invalid)?
        .into_iter()
        .enumerate()
        .map(|(i, d)| Event::decode(d).map_err(|e| invalid(format!("record {i}: {e}"))))
        .collect()
}

/// The scalars of events (`simple_value`s), in file order.
pub fn scalars(events: &[Event]) -> Vec<Scalar> {
    let mut out = Vec::new();
    for e in events {
        if let Some(What::Summary(s)) = &e.what {
            for v in &s.value {
                if let Some(Value::SimpleValue(x)) = v.value {
                    out.push(Scalar {
                        wall_time: e.wall_time,
                        step: e.step.max(0) as u64,
                        tag: v.tag.clone(),
                        value: f64::from(x),
                    });
                }
            }
        }
    }
    out
}

/// The bytes of an event file: the version record stamped `created`, then one record per scalar.
pub fn event_file_bytes(created: f64, points: &[Scalar]) -> Vec<u8> {
    let version = Event {
        wall_time: created,
        step: 0,
        what: Some(What::FileVersion("brain.Event:2".into())),
        source_metadata: Some(SourceMetadata {
            writer: "ssmlab".into(),
        }),
    };
    let mut out = record(&version.encode_to_vec());
    for p in points {
        let e = Event {
            wall_time: p.wall_time,
            step: i64::try_from(p.step).unwrap_or(i64::MAX),
            what: Some(What::Summary(Summary {
                value: vec![SummaryValue {
                    tag: p.tag.clone(),
                    value: Some(Value::SimpleValue(p.value as f32)),
                }],
            })),
            source_metadata: None,
        };
        out.extend_from_slice(&record(&e.encode_to_vec()));
    }
    out
}

/// The tags of a run's metrics, as TensorBoard groups them (`train/…`, `eval/…`), with the
/// value of each in a record.
pub fn metric_values(m: &Metric) -> Vec<(&'static str, f64)> {
    let mut v = vec![
        ("train/tokens", m.tokens as f64),
        ("train/wall_s", m.wall_s),
    ];
    let opt = [
        ("train/loss", m.loss),
        ("train/lr", m.lr),
        ("train/grad_norm", m.grad_norm),
        ("train/tokens_per_s", m.tokens_per_s),
        ("train/images", m.images.map(|x| x as f64)),
        ("train/images_per_s", m.images_per_s),
        ("eval/loss", m.eval_loss),
        ("eval/accuracy", m.eval_acc),
        ("eval/baseline_accuracy", m.eval_baseline_acc),
        ("eval/cas", m.eval_cas),
    ];
    v.extend(opt.into_iter().filter_map(|(t, x)| x.map(|x| (t, x))));
    v
}

/// The scalar points of a run's metrics: wall time = `started` (the run's start, Unix
/// seconds) + the record's training seconds.
pub fn run_scalars(metrics: &[Metric], started: f64) -> Vec<Scalar> {
    metrics
        .iter()
        .flat_map(|m| {
            metric_values(m)
                .into_iter()
                .map(move |(tag, value)| Scalar {
                    wall_time: started + m.wall_s,
                    step: m.step,
                    tag: tag.into(),
                    value,
                })
        })
        .collect()
}

/// Writes `points` as a new event file in `dir` (created if needed) and returns its path.
/// TensorBoard reads every `*tfevents*` file under its `--logdir`, one run per folder.
pub fn write_event_file(dir: &Path, points: &[Scalar]) -> super::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let now = super::unix_now();
    let path = dir.join(format!(
        "events.out.tfevents.{}.ssmlab.{}",
        now as u64,
        std::process::id()
    ));
    let bytes = event_file_bytes(now, points);
    let mut f = std::fs::File::create(&path).map_err(io_err(&path))?;
    f.write_all(&bytes).map_err(io_err(&path))?;
    Ok(path)
}

/// The columns of [`wide_csv`] after `run`, `step`, `tokens` and `wall_s`: one per metric.
pub const CSV_METRICS: [&str; 10] = [
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "images",
    "images_per_s",
    "eval_loss",
    "eval_acc",
    "eval_baseline_acc",
    "eval_cas",
];

/// One wide CSV of runs' metrics: a row per record (`run`, `step`, `tokens`, `wall_s`, then a
/// column per metric, empty where the record has none). Run names are quoted when needed.
pub fn wide_csv(runs: &[(String, Vec<Metric>)]) -> String {
    let mut s = format!("run,step,tokens,wall_s,{}\n", CSV_METRICS.join(","));
    let quote = |x: &str| {
        if x.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", x.replace('"', "\"\""))
        } else {
            x.to_string()
        }
    };
    let f = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    for (id, ms) in runs {
        for m in ms {
            let cols = [
                f(m.loss),
                f(m.lr),
                f(m.grad_norm),
                f(m.tokens_per_s),
                f(m.images.map(|x| x as f64)),
                f(m.images_per_s),
                f(m.eval_loss),
                f(m.eval_acc),
                f(m.eval_baseline_acc),
                f(m.eval_cas),
            ];
            s += &format!(
                "{},{},{},{},{}\n",
                quote(id),
                m.step,
                m.tokens,
                m.wall_s,
                cols.join(",")
            );
        }
    }
    s
}
