//! Run directories: the contract between training and every viewer.
//!
//! ```text
//! checkpoints/<run-id>/
//!   config.toml      fully resolved run configuration
//!   tokenizer.json   the run's tokenizer (the run is self-contained)
//!   metrics.jsonl    one JSON object per line (see [`Metric`])
//!   status.json      pid, state, heartbeat, step, checkpoints (see [`Status`])
//!   log.txt          human-readable log
//!   kernels.jsonl    SSM parameters at step 0 and at every evaluation (see [`kernels`])
//!   control.json     written by other processes to ask for stop / checkpoint (see [`Control`])
//!   run.lock         held (flock) by the one trainer of the run; names its pid
//!   step-N/          model.safetensors (HF names), optimizer.safetensors, state.json, config.json
//! ```
//! Every file except the append-only `metrics.jsonl` and `log.txt` is replaced atomically
//! (written to a temporary name, then renamed); checkpoints are written to `step-N.tmp/` and
//! renamed when complete. A reader treats only newline-terminated lines of `metrics.jsonl` as data.

pub mod export;
pub mod index;
pub mod kernels;
mod lock;
pub mod metrics;
pub mod model;
pub mod os;
pub mod samples;
mod status;

pub use lock::{LOCK_FILE, LockState, RunLock};
pub use metrics::{Metric, MetricsLog, MetricsTail, read_metrics};
pub use os::pid_alive;
pub use status::{Control, HEARTBEAT_STALE_S, RunState, Status, unix_now};

use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors about run directories; messages name the path.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {err}")]
    Io {
        path: PathBuf,
        /// Not `source`: the message already says it, and a source would print it twice.
        err: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error(
        "run {path} is being trained by {} (it holds the run's run.lock); one trainer per run: \
         stop that one first (`s` in the TUI, or kill -TERM with its pid)",
        pid.map_or("another process".to_string(), |p| format!("pid {p}"))
    )]
    Locked { path: PathBuf, pid: Option<u32> },
}

pub type Result<T> = std::result::Result<T, RunError>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.into(),
        err: source,
    }
}

/// Opens `path` for writing (appending, or truncating), creating it, but never through a
/// symbolic link (`O_NOFOLLOW`): a link planted at a run file cannot send the trainer's writes
/// out of the run directory.
pub(crate) fn open_nofollow(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.create(true).custom_flags(libc::O_NOFOLLOW);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(path)
}

/// The error of [`open_nofollow`], saying what a refused link is.
pub(crate) fn nofollow_err(path: &Path, e: std::io::Error) -> RunError {
    if e.raw_os_error() == Some(libc::ELOOP) {
        RunError::Invalid {
            path: path.into(),
            msg: "is a symbolic link; run files are never written through one (replace it with \
                  a plain file or remove it)"
                .into(),
        }
    } else {
        io_err(path)(e)
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = open_nofollow(&tmp, false)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(io_err(path))
}

/// The longest run name [`check_run_name`] accepts.
pub const RUN_NAME_MAX: usize = 64;

/// A run name is one path component under the runs folder: 1–64 ASCII letters, digits, `.`,
/// `_` or `-`, not starting with a dot (so `../x`, `/abs/path` and hidden names are refused).
/// The one check for `--name`, `run.name` in a config and the TUI's launch form.
pub fn check_run_name(name: &str) -> std::result::Result<(), String> {
    let rule = format!(
        "a run name is 1–{RUN_NAME_MAX} letters, digits, '.', '_' or '-', not starting with '.'"
    );
    let ok = !name.is_empty()
        && name.len() <= RUN_NAME_MAX
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("run name {name:?} refused: {rule}"))
    }
}

/// A run's directory on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Opens an existing run directory (it must hold `config.toml`).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("config.toml").is_file() {
            return Err(RunError::Invalid {
                path: path.into(),
                msg: "not a run directory (no config.toml)".into(),
            });
        }
        Ok(Self { path: path.into() })
    }

    /// Creates `runs_dir/<name>`, or `<name>-2`, `<name>-3`… if taken.
    pub fn create(runs_dir: &Path, name: &str) -> Result<Self> {
        check_run_name(name).map_err(|msg| RunError::Invalid {
            path: runs_dir.into(),
            msg,
        })?;
        if runs_dir.exists() && !runs_dir.is_dir() {
            return Err(RunError::Invalid {
                path: runs_dir.into(),
                msg: "the runs folder (--runs-dir) is not a directory".into(),
            });
        }
        std::fs::create_dir_all(runs_dir).map_err(io_err(runs_dir))?;
        for i in 1.. {
            let id = if i == 1 {
                name.to_string()
            } else {
                format!("{name}-{i}")
            };
            let p = runs_dir.join(&id);
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(Self { path: p }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err(&p)(e)),
            }
        }
        unreachable!()
    }

    pub fn id(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into())
            .unwrap_or_default()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    pub fn status_path(&self) -> PathBuf {
        self.path.join("status.json")
    }
    pub fn log_path(&self) -> PathBuf {
        self.path.join("log.txt")
    }
    pub fn control_path(&self) -> PathBuf {
        self.path.join("control.json")
    }
    pub fn tokenizer_path(&self) -> PathBuf {
        self.path.join("tokenizer.json")
    }
    pub fn checkpoint_path(&self, step: u64) -> PathBuf {
        self.path.join(format!("step-{step}"))
    }

    /// Appends one metrics record as a single newline-terminated write.
    pub fn append_metric(&self, m: &Metric) -> Result<()> {
        let mut line = crate::engine::serial::json(m);
        line.push('\n');
        self.append(&self.metrics_path(), &line)
    }

    /// Appends a line to `log.txt`.
    pub fn log(&self, line: &str) -> Result<()> {
        self.append(&self.log_path(), &format!("{line}\n"))
    }

    fn append(&self, path: &Path, text: &str) -> Result<()> {
        let mut f = open_nofollow(path, true).map_err(|e| nofollow_err(path, e))?;
        f.write_all(text.as_bytes()).map_err(io_err(path))
    }

    /// Keeps only the metrics records with `step <= last_step` (used when a run resumes from a
    /// checkpoint older than its last logged step).
    pub fn truncate_metrics(&self, last_step: u64) -> Result<()> {
        let p = self.metrics_path();
        if !p.exists() {
            return Ok(());
        }
        self.keep_lines(&p, 64 << 20, |l| {
            serde_json::from_slice::<Metric>(l).is_ok_and(|m| m.step <= last_step)
        })
    }

    /// Streams the complete lines of an append-only run file through a temporary, keeping
    /// those `keep` accepts (lines longer than `max_line`, and an unfinished last line, are
    /// dropped), and renames it over the file when anything was dropped. Memory stays bounded
    /// whatever the file's size.
    pub(crate) fn keep_lines(
        &self,
        p: &Path,
        max_line: u64,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<()> {
        use std::io::{BufRead, Read};
        let f = crate::text::open_regular(p).map_err(io_err(p))?;
        let name = p.file_name().map_or("file".into(), |n| n.to_string_lossy());
        let tmp = self.path.join(format!("{name}.tmp"));
        let mut out =
            std::io::BufWriter::new(open_nofollow(&tmp, false).map_err(|e| nofollow_err(&tmp, e))?);
        let mut r = std::io::BufReader::new(f);
        let mut buf = Vec::new();
        let mut dropped = false;
        loop {
            buf.clear();
            let n = (&mut r)
                .take(max_line + 1)
                .read_until(b'\n', &mut buf)
                .map_err(io_err(p))?;
            if n == 0 {
                break;
            }
            if buf.last() != Some(&b'\n') {
                // an unfinished last line, or one longer than `max_line`: skip to its end
                dropped = true;
                if n as u64 > max_line {
                    let mut rest = Vec::new();
                    r.read_until(b'\n', &mut rest).map_err(io_err(p))?;
                    continue;
                }
                break;
            }
            if keep(&buf[..buf.len() - 1]) {
                out.write_all(&buf).map_err(io_err(&tmp))?;
            } else {
                dropped = true;
            }
        }
        if !dropped {
            drop(out);
            let _ = std::fs::remove_file(&tmp);
            return Ok(());
        }
        out.flush().map_err(io_err(&tmp))?;
        drop(out);
        std::fs::rename(&tmp, p).map_err(io_err(p))
    }

    pub fn write_status(&self, s: &Status) -> Result<()> {
        write_atomic(
            &self.status_path(),
            crate::engine::serial::json_pretty(s).as_bytes(),
        )
    }

    pub fn read_status(&self) -> Result<Status> {
        let p = self.status_path();
        let text = crate::text::read_file(&p, crate::text::SMALL_FILE_MAX).map_err(io_err(&p))?;
        serde_json::from_str(&text).map_err(|e| RunError::Invalid {
            path: p,
            msg: e.to_string(),
        })
    }

    /// Complete checkpoints (`step-N/` with a `model.safetensors`), ascending by step.
    pub fn checkpoints(&self) -> Vec<(u64, PathBuf)> {
        let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
                let p = e.path();
                p.join("model.safetensors").is_file().then_some((step, p))
            })
            .collect();
        v.sort();
        v
    }

    pub fn latest_checkpoint(&self) -> Option<(u64, PathBuf)> {
        self.checkpoints().pop()
    }

    /// Asks the training process to act (written atomically; the trainer deletes it).
    pub fn request(&self, c: Control) -> Result<()> {
        write_atomic(
            &self.control_path(),
            crate::engine::serial::json(&c).as_bytes(),
        )
    }

    /// Takes a pending request, if any (the trainer's side): `Some(Ok(_))` for a request,
    /// `Some(Err(why))` for a control file that is not one (not a regular file, too large, not
    /// a request), which is moved aside to `control.json.bad` so it is reported once. Never
    /// blocks: only a regular file is opened, and without waiting (a FIFO put there cannot
    /// hold the trainer).
    pub fn take_request(&self) -> Option<std::result::Result<Control, String>> {
        use std::io::Read;
        let p = self.control_path();
        let meta = std::fs::symlink_metadata(&p).ok()?;
        let set_aside = |why: String| {
            let bad = self.path.join("control.json.bad");
            let _ = std::fs::remove_file(&bad).or_else(|_| std::fs::remove_dir_all(&bad));
            let _ = std::fs::rename(&p, &bad);
            Some(Err(format!(
                "{}: {why}; moved aside to control.json.bad",
                p.display()
            )))
        };
        if !meta.is_file() {
            return set_aside("not a regular file".into());
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut opts, libc::O_NONBLOCK);
        let mut bytes = Vec::new();
        let read = opts
            .open(&p)
            .and_then(|f| f.take(4097).read_to_end(&mut bytes));
        if let Err(e) = read {
            return set_aside(format!("cannot be read ({e})"));
        }
        if bytes.len() > 4096 {
            return set_aside("larger than any request (4 KiB)".into());
        }
        match serde_json::from_slice::<Control>(&bytes) {
            Ok(c) => {
                let _ = std::fs::remove_file(&p);
                Some(Ok(c))
            }
            Err(e) => set_aside(format!(
                "not a request ({e}); write {{\"command\": \"stop\"}} or {{\"command\": \"checkpoint\"}}"
            )),
        }
    }
}

/// Whether a run's `run.model` is a masked LM (BiGS or its attention baseline).
pub fn is_masked_lm(model: &str) -> bool {
    let m = model.to_lowercase();
    m.contains("bigs") || m == "bert"
}

/// Whether a run's `run.model` is a diffusion model (DiffuSSM or its attention twin, DiT).
pub fn is_diffusion(model: &str) -> bool {
    matches!(model.to_lowercase().as_str(), "diffussm" | "dit")
}

/// How a run's family is written for people: BiGS, BERT, DiffuSSM, DiT.
pub fn family_label(model: &str) -> &'static str {
    match model.to_lowercase().as_str() {
        "bert" => "BERT",
        "diffussm" => "DiffuSSM",
        "dit" => "DiT",
        _ => "BiGS",
    }
}
