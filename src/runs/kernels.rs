//! `kernels.jsonl`: the SSM parameters of every layer (A, C, Δt, D: a few hundred to a few
//! tens of thousands of numbers), one line per evaluation and one at step 0, so a run's kernels
//! can be followed over the whole training even when it keeps a single checkpoint.
//!
//! One line is one [`KernelRecord`]:
//! ```text
//! {"step":500,"wall_s":61.2,"ema":false,
//!  "tensors":{"bigs.encoder.layer.0.fs4.kernel.A_re":{"shape":[64],"values":[-0.5,…]},…}}
//! ```
//! Tensor names are the checkpoint's own (`model.safetensors`, or `ema.safetensors` when `ema`),
//! values are f32 in row-major order, printed as the shortest decimal that reads back exactly.
//! Like `metrics.jsonl` the file is append-only; only newline-terminated lines are data. When a
//! run resumes from an older checkpoint, records after it are dropped ([`truncate_kernels`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{RunDir, RunError, io_err, nofollow_err, open_nofollow};

/// The file name inside a run directory.
pub const KERNELS_FILE: &str = "kernels.jsonl";

/// The longest line read (a DiffuSSM with 16 layers of width 1024 and 64 modes is ~60 MiB).
const MAX_LINE: u64 = 256 << 20;

/// One parameter tensor: its shape and its values (row-major).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// The SSM parameters of a model at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelRecord {
    pub step: u64,
    /// Training seconds at this step (as `metrics.jsonl`'s `wall_s`).
    pub wall_s: f64,
    /// Whether the values are the EMA weights (diffusion runs), as `ema.safetensors` holds.
    #[serde(default)]
    pub ema: bool,
    pub tensors: BTreeMap<String, SavedTensor>,
}

impl KernelRecord {
    /// An error unless every tensor's value count is the product of its shape.
    fn check(&self) -> std::result::Result<(), String> {
        for (name, t) in &self.tensors {
            let n = t
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| format!("tensor `{name}`: shape {:?} overflows", t.shape))?;
            if n != t.values.len() {
                return Err(format!(
                    "tensor `{name}`: shape {:?} needs {n} values, the record has {}",
                    t.shape,
                    t.values.len()
                ));
            }
        }
        Ok(())
    }
}

/// The records of a `kernels.jsonl`, as training left them: a record whose step is not above
/// the previous one starts a new branch (a resume from an older checkpoint whose truncation did
/// not happen), and supersedes the records at or after its step. A line that does not parse is
/// an error naming the file and line; an unterminated last line (a write in progress) is skipped.
pub fn read_kernels(path: &Path) -> Result<Vec<KernelRecord>, RunError> {
    let f = crate::text::open_regular(path).map_err(io_err(path))?;
    let mut r = BufReader::new(f);
    let mut out: Vec<KernelRecord> = Vec::new();
    let mut buf = Vec::new();
    for line_no in 1.. {
        buf.clear();
        let n = (&mut r)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut buf)
            .map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        if buf.last() != Some(&b'\n') {
            if n as u64 > MAX_LINE {
                return Err(RunError::Invalid {
                    path: path.into(),
                    msg: format!("line {line_no} is longer than {} MiB", MAX_LINE >> 20),
                });
            }
            break;
        }
        let bad = |msg: String| RunError::Invalid {
            path: path.into(),
            msg: format!("line {line_no}: {msg}"),
        };
        let rec: KernelRecord =
            serde_json::from_slice(&buf).map_err(|e| bad(format!("not a kernel record: {e}")))?;
        rec.check().map_err(bad)?;
        out.retain(|o| o.step < rec.step);
        out.push(rec);
    }
    Ok(out)
}

impl RunDir {
    pub fn kernels_path(&self) -> PathBuf {
        self.path.join(KERNELS_FILE)
    }

    /// Appends one record as a single newline-terminated write.
    pub fn append_kernels(&self, rec: &KernelRecord) -> Result<(), RunError> {
        let p = self.kernels_path();
        let mut line = serde_json::to_string(rec).map_err(|e| RunError::Invalid {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        line.push('\n');
        let mut f = open_nofollow(&p, true).map_err(|e| nofollow_err(&p, e))?;
        f.write_all(line.as_bytes()).map_err(io_err(&p))
    }

    /// Keeps only the records with `step <= last_step`, streaming the file through a temporary
    /// (used when a run resumes from a checkpoint older than its last evaluation). Lines that do
    /// not parse are dropped with the rest.
    pub fn truncate_kernels(&self, last_step: u64) -> Result<(), RunError> {
        let p = self.kernels_path();
        if !p.exists() {
            return Ok(());
        }
        #[derive(Deserialize)]
        struct Step {
            step: u64,
        }
        self.keep_lines(&p, MAX_LINE, |l| {
            serde_json::from_slice::<Step>(l).is_ok_and(|s| s.step <= last_step)
        })
    }
}
