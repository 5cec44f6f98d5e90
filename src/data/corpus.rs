//! Text corpora: a `.txt` file, a folder of `.txt`/`.jsonl` files, or a JSONL file with a `text`
//! field per line. A corpus is a list of documents; the train/validation split is by document.
//!
//! What a document is: in a single `.txt` file, each paragraph (blank-line separated; wrapped
//! lines are joined); in a folder, each `.txt` file; in JSONL, each line.

use std::path::{Path, PathBuf};

use super::{DataError, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub text: String,
}

/// A corpus file's text. Only regular files are read (a FIFO or `/dev/zero` would block or
/// never end), and no more bytes than the memory limit allows.
fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let io = |source| DataError::Io {
        path: path.into(),
        err: source,
    };
    // Non-blocking: opening a FIFO would wait for a writer.
    let f = std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new().read(true),
        libc::O_NONBLOCK,
    )
    .open(path)
    .map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(DataError::Binary {
            path: path.into(),
            why: "not a regular file".into(),
        });
    }
    let (limit, origin) =
        crate::engine::memory::limit().map_err(|e| DataError::Invalid(e.to_string()))?;
    // Text takes several times its size once tokenised: a quarter of the limit.
    let cap = limit / 4;
    if meta.len() > cap {
        return Err(DataError::Invalid(format!(
            "{}: {} of text is more than a quarter of {origin} ({}); give a smaller corpus",
            path.display(),
            crate::engine::memory::human(meta.len()),
            crate::engine::memory::human(limit)
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // The file may grow while it is read: never past the cap.
    f.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if let Some(pos) = bytes.iter().position(|b| *b == 0) {
        return Err(DataError::Binary {
            path: path.into(),
            why: format!("NUL byte at offset {pos}"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| DataError::Binary {
        path: path.into(),
        why: format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
    })?;
    if text.trim().is_empty() {
        return Err(DataError::Empty { path: path.into() });
    }
    Ok(text)
}

/// Paragraphs of a text: blank-line separated, wrapped lines joined by spaces.
pub fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(t);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn read_jsonl(path: &Path) -> Result<Vec<Document>> {
    let text = read_text(path)?;
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let jerr = |msg: String| DataError::Jsonl {
            path: path.into(),
            line: i + 1,
            msg,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| jerr(format!("not valid JSON: {e}")))?;
        match v.get("text") {
            Some(serde_json::Value::String(s)) => {
                if !s.trim().is_empty() {
                    docs.push(Document { text: s.clone() });
                }
            }
            Some(other) => {
                return Err(jerr(format!(
                    "field `text` must be a string, found {}",
                    type_name(other)
                )));
            }
            None => return Err(jerr("object has no `text` field".into())),
        }
    }
    if docs.is_empty() {
        return Err(DataError::Empty { path: path.into() });
    }
    Ok(docs)
}

fn type_name(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn is_jsonl(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("jsonl") | Some("json")
    )
}

/// The files a corpus path stands for, in a stable order.
pub fn corpus_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        return Err(DataError::NotFound(path.into()));
    }
    if !path.is_dir() {
        return Ok(vec![path.into()]);
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| DataError::Io {
            path: dir.clone(),
            err: source,
        })?;
        for e in rd {
            let p = e
                .map_err(|source| DataError::Io {
                    path: dir.clone(),
                    err: source,
                })?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if is_jsonl(&p) || p.extension().and_then(|e| e.to_str()) == Some("txt") {
                files.push(p);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DataError::EmptyFolder(path.into()));
    }
    Ok(files)
}

/// Loads every document of a corpus path.
pub fn load_corpus(path: &Path) -> Result<Vec<Document>> {
    let files = corpus_files(path)?;
    let single = !path.is_dir();
    let mut docs = Vec::new();
    for f in &files {
        if is_jsonl(f) {
            docs.extend(read_jsonl(f)?);
        } else {
            let text = read_text(f)?;
            if single {
                docs.extend(paragraphs(&text).into_iter().map(|text| Document { text }));
            } else {
                docs.push(Document { text });
            }
        }
    }
    Ok(docs)
}

/// FNV-1a, a stable hash for the split (independent of Rust versions and of document order).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Deterministic split by document: a document goes to validation when the hash of its text
/// falls below `val_fraction`. Returns (train, validation).
pub fn split(docs: Vec<Document>, val_fraction: f64) -> (Vec<Document>, Vec<Document>) {
    let cut = (val_fraction.clamp(0.0, 1.0) * 1_000_000.0) as u64;
    docs.into_iter()
        .partition(|d| fnv1a(&d.text) % 1_000_000 >= cut)
}
