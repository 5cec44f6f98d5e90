//! `metrics.jsonl`: one JSON object per line, appended by the trainer, tailed by viewers.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`. Eval fields appear on the lines of eval steps only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub step: u64,
    /// Tokens seen so far (input tokens of every sequence trained on).
    pub tokens: u64,
    /// Seconds of training so far (summed over resumed sessions).
    pub wall_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Training loss of this step (mean over its micro-batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// Masked-token accuracy on held-out data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_acc: Option<f64>,
    /// Accuracy of always predicting the most frequent target at the same held-out positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_baseline_acc: Option<f64>,
    /// Images seen so far (diffusion runs; `tokens` counts their patch tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_s: Option<f64>,
    /// Classification accuracy score of guided samples (diffusion runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_cas: Option<f64>,
}

/// A record as [`MetricsLog`] keeps it: step, tokens and wall time exact, images as u64
/// (`u64::MAX`: none), every other value an f32 (NaN: not logged). 72 bytes instead of the
/// 232 of a [`Metric`]: a 1,000,000-line log fits in about 70 MB. f32 keeps 7 significant
/// digits, more than any view prints (exports read the file itself, in full precision).
#[derive(Debug, Clone, Copy)]
struct Packed {
    step: u64,
    tokens: u64,
    wall_s: f64,
    images: u64,
    /// lr, loss, grad_norm, tokens_per_s, eval_loss, eval_acc, eval_baseline_acc,
    /// images_per_s, eval_cas.
    vals: [f32; 9],
}

impl Packed {
    fn pack(m: &Metric) -> Self {
        let f = |v: Option<f64>| v.map_or(f32::from_bits(ABSENT), |x| x as f32);
        Self {
            step: m.step,
            tokens: m.tokens,
            wall_s: m.wall_s,
            images: m.images.unwrap_or(u64::MAX),
            vals: [
                f(m.lr),
                f(m.loss),
                f(m.grad_norm),
                f(m.tokens_per_s),
                f(m.eval_loss),
                f(m.eval_acc),
                f(m.eval_baseline_acc),
                f(m.images_per_s),
                f(m.eval_cas),
            ],
        }
    }

    fn unpack(&self) -> Metric {
        // absent fields are stored as a NaN of their own (JSON has no NaN to log)
        let f = |v: f32| (v.to_bits() != ABSENT).then_some(v as f64);
        Metric {
            step: self.step,
            tokens: self.tokens,
            wall_s: self.wall_s,
            lr: f(self.vals[0]),
            loss: f(self.vals[1]),
            grad_norm: f(self.vals[2]),
            tokens_per_s: f(self.vals[3]),
            eval_loss: f(self.vals[4]),
            eval_acc: f(self.vals[5]),
            eval_baseline_acc: f(self.vals[6]),
            images: (self.images != u64::MAX).then_some(self.images),
            images_per_s: f(self.vals[7]),
            eval_cas: f(self.vals[8]),
        }
    }
}

/// The f32 bits that mean "not logged" (a NaN no arithmetic produces).
const ABSENT: u32 = 0x7fc0_0001;

/// Records per chunk of a [`MetricsLog`].
const CHUNK: usize = 4096;

/// A run's metrics, compact ([`Packed`]) and in shared chunks: a snapshot is a clone of the
/// chunk list, and appending to a log never copies the records a snapshot holds.
#[derive(Debug, Clone, Default)]
pub struct MetricsLog {
    chunks: Vec<Arc<Vec<Packed>>>,
    len: usize,
}

impl MetricsLog {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Every record, in order (double-ended: `.rev()` reads from the latest).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Metric> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .map(Packed::unpack)
    }
    pub fn last(&self) -> Option<Metric> {
        self.chunks.last()?.last().map(Packed::unpack)
    }
    /// Record `i`.
    pub fn get(&self, mut i: usize) -> Option<Metric> {
        for c in &self.chunks {
            if i < c.len() {
                return Some(c[i].unpack());
            }
            i -= c.len();
        }
        None
    }
    pub fn push(&mut self, m: &Metric) {
        let p = Packed::pack(m);
        match self.chunks.last_mut() {
            // a partly filled chunk that a snapshot shares is copied (at most CHUNK records),
            // the snapshot keeps its own
            Some(c) if c.len() < CHUNK => Arc::make_mut(c).push(p),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(p);
                self.chunks.push(Arc::new(c));
            }
        }
        self.len += 1;
    }
    /// `head` followed by this log (a head read after the tail).
    fn prepend(&mut self, head: MetricsLog) {
        let mut chunks = head.chunks;
        chunks.append(&mut self.chunks);
        self.chunks = chunks;
        self.len += head.len;
    }
}

impl From<Vec<Metric>> for MetricsLog {
    fn from(v: Vec<Metric>) -> Self {
        let mut l = MetricsLog::default();
        for m in &v {
            l.push(m);
        }
        l
    }
}

/// A file larger than this is read tail first: the last [`TAIL_BYTES`] at once, the rest in
/// the polls after it (at most [`HEAD_BUDGET`] of parsing each), so the first frame of a
/// million-line log does not wait for the whole file.
pub const TAIL_FIRST: u64 = 8 << 20;
const TAIL_BYTES: u64 = 2 << 20;
const HEAD_BUDGET: std::time::Duration = std::time::Duration::from_millis(300);

/// Incremental reader of a growing `metrics.jsonl`: reads only new bytes, keeps a trailing
/// partial line until its newline arrives, and starts over if the file shrank (truncated or
/// replaced). A large file is read tail first ([`TAIL_FIRST`]); [`MetricsTail::loading`]
/// says whether the head is still being read.
#[derive(Debug)]
pub struct MetricsTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    pub records: MetricsLog,
    /// Complete lines that were not a valid record (1-based line numbers; while the head of a
    /// large file is still being read, those of the tail are counted from where it starts).
    pub bad_lines: Vec<usize>,
    lines_seen: usize,
    /// Tail first: (next byte of the head to read, where the tail starts), the head's records
    /// so far, its lines and its bad lines.
    head: Option<(u64, u64, MetricsLog, usize, Vec<usize>)>,
}

impl MetricsTail {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            partial: Vec::new(),
            records: MetricsLog::default(),
            bad_lines: Vec::new(),
            lines_seen: 0,
            head: None,
        }
    }

    /// Whether the beginning of a large file is still being read (the records are its end).
    pub fn loading(&self) -> bool {
        self.head.is_some()
    }

    /// Parses the complete lines of `buf` into `log`; returns (bytes used, lines seen).
    fn parse(
        buf: &[u8],
        log: &mut MetricsLog,
        bad: &mut Vec<usize>,
        first_line: usize,
    ) -> (usize, usize) {
        let (mut start, mut lines) = (0, 0);
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + nl];
            lines += 1;
            let parsed = std::str::from_utf8(line)
                .ok()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Metric>(l.trim()));
            match parsed {
                Some(Ok(m)) => log.push(&m),
                Some(Err(_)) => bad.push(first_line + lines),
                None if !line.is_empty() => bad.push(first_line + lines),
                None => {}
            }
            start += nl + 1;
        }
        (start, lines)
    }

    /// Reads what was appended since the last poll (and, for a large file, more of its head);
    /// returns the number of new records. A missing file is not an error (the run may not have
    /// logged yet).
    pub fn poll(&mut self) -> std::io::Result<usize> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            *self = Self::new(&self.path.clone());
        }
        let before = self.records.len();
        let tail_first = self.offset == 0 && len > TAIL_FIRST;
        if tail_first {
            // tail first: start at the first line that begins in the last TAIL_BYTES
            let from = len - TAIL_BYTES;
            f.seek(SeekFrom::Start(from - 1))?;
            let mut buf = Vec::with_capacity(TAIL_BYTES as usize + 1);
            (&mut f).take(len - from + 1).read_to_end(&mut buf)?;
            let skip = buf
                .iter()
                .position(|b| *b == b'\n')
                .map_or(buf.len(), |i| i + 1);
            let tail_start = from - 1 + skip as u64;
            self.head = Some((0, tail_start, MetricsLog::default(), 0, Vec::new()));
            self.offset = tail_start;
        }
        if len > self.offset {
            f.seek(SeekFrom::Start(self.offset))?;
            let mut buf = Vec::with_capacity((len - self.offset) as usize);
            (&mut f).take(len - self.offset).read_to_end(&mut buf)?;
            self.offset += buf.len() as u64;
            self.partial.extend_from_slice(&buf);
            let (used, lines) = Self::parse(
                &self.partial,
                &mut self.records,
                &mut self.bad_lines,
                self.lines_seen,
            );
            self.lines_seen += lines;
            self.partial.drain(..used);
        }
        let appended = self.records.len() - before;
        if tail_first {
            // this poll gives the tail only: the head comes with the next ones
            return Ok(appended);
        }
        Ok(appended + self.read_head(&mut f)?)
    }

    /// Reads more of a large file's head (for at most [`HEAD_BUDGET`]); when it is complete,
    /// puts it before the records and renumbers the tail's bad lines. Returns the head's
    /// records added to the log (0 until complete).
    fn read_head(&mut self, f: &mut std::fs::File) -> std::io::Result<usize> {
        let Some((pos, end, log, lines, bad)) = self.head.as_mut() else {
            return Ok(0);
        };
        let t0 = std::time::Instant::now();
        let mut carry: Vec<u8> = Vec::new();
        while *pos < *end && t0.elapsed() < HEAD_BUDGET {
            let n = (*end - *pos).min(4 << 20);
            f.seek(SeekFrom::Start(*pos))?;
            let mut buf = Vec::with_capacity(n as usize);
            f.take(n).read_to_end(&mut buf)?;
            if buf.is_empty() {
                break;
            }
            carry.extend_from_slice(&buf);
            *pos += buf.len() as u64;
            let (used, l) = Self::parse(&carry, log, bad, *lines);
            *lines += l;
            if used == 0 {
                // one line longer than a piece: not a record (skipped as one bad line)
                *lines += 1;
                bad.push(*lines);
            } else {
                // an unfinished line is read again with the next piece
                *pos -= (carry.len() - used) as u64;
            }
            carry.clear();
        }
        if *pos < *end {
            return Ok(0);
        }
        let Some((_, _, log, lines, bad)) = self.head.take() else {
            return Ok(0);
        };
        let n = log.len();
        self.records.prepend(log);
        for b in &mut self.bad_lines {
            *b += lines;
        }
        let mut all = bad;
        all.append(&mut self.bad_lines);
        self.bad_lines = all;
        self.lines_seen += lines;
        Ok(n)
    }
}

/// Every complete record of a metrics file in full precision (exports), and the line numbers
/// that did not parse.
pub fn read_metrics(path: &Path) -> std::io::Result<(Vec<Metric>, Vec<usize>)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
        Err(e) => return Err(e),
    };
    let (mut out, mut bad) = (Vec::new(), Vec::new());
    let mut start = 0;
    let mut n = 0;
    while let Some(nl) = bytes[start..].iter().position(|b| *b == b'\n') {
        let line = &bytes[start..start + nl];
        n += 1;
        match std::str::from_utf8(line).ok().map(str::trim) {
            Some("") if line.is_empty() => {}
            Some(l) => match serde_json::from_str::<Metric>(l) {
                Ok(m) => out.push(m),
                Err(_) => bad.push(n),
            },
            None => bad.push(n),
        }
        start += nl + 1;
    }
    Ok((out, bad))
}
