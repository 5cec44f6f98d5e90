//! `metrics.jsonl`: one JSON object per line, appended by the trainer, tailed by viewers.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

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

/// Incremental reader of a growing `metrics.jsonl`: reads only new bytes, keeps a trailing
/// partial line until its newline arrives, and starts over if the file shrank (truncated or
/// replaced).
#[derive(Debug)]
pub struct MetricsTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    pub records: Vec<Metric>,
    /// Complete lines that were not a valid record (1-based line numbers).
    pub bad_lines: Vec<usize>,
    lines_seen: usize,
}

impl MetricsTail {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            partial: Vec::new(),
            records: Vec::new(),
            bad_lines: Vec::new(),
            lines_seen: 0,
        }
    }

    /// Reads what was appended since the last poll; returns the number of new records.
    /// A missing file is not an error (the run may not have logged yet).
    pub fn poll(&mut self) -> std::io::Result<usize> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
            self.records.clear();
            self.bad_lines.clear();
            self.lines_seen = 0;
        }
        if len == self.offset {
            return Ok(0);
        }
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::with_capacity((len - self.offset) as usize);
        f.take(len - self.offset).read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let before = self.records.len();
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let line = &self.partial[start..start + nl];
            self.lines_seen += 1;
            let parsed = std::str::from_utf8(line)
                .ok()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str::<Metric>(l.trim()));
            match parsed {
                Some(Ok(m)) => self.records.push(m),
                Some(Err(_)) => self.bad_lines.push(self.lines_seen),
                None if !line.is_empty() => self.bad_lines.push(self.lines_seen),
                None => {}
            }
            start += nl + 1;
        }
        self.partial.drain(..start);
        Ok(self.records.len() - before)
    }
}

/// Every complete record of a metrics file, and the line numbers that did not parse.
pub fn read_metrics(path: &Path) -> std::io::Result<(Vec<Metric>, Vec<usize>)> {
    let mut t = MetricsTail::new(path);
    t.poll()?;
    Ok((t.records, t.bad_lines))
}
