//! Text for a terminal. Every string that comes from disk or data (run names, status and config
//! fields, log lines, tokens, error messages that quote them) passes through [`sanitize`] (or
//! [`sanitize_lines`] for multi-line text) before a terminal writer, CLI or TUI, sees it, so a
//! run directory cannot set the window title, move the cursor or reverse the text with raw
//! control bytes. The TUI also scrubs its whole frame with [`is_unsafe`] before it is flushed.

use std::borrow::Cow;

/// Characters a terminal must never receive raw: the C0 controls (except none: tab and newline
/// are escaped too in one-line text), DEL, the C1 controls (U+0080–U+009F, 8-bit CSI among
/// them), and the Unicode bidi controls (embeddings, overrides, isolates and marks) that make a
/// line display in another order than it reads.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200e}' | '\u{200f}' | '\u{061c}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}')
}

fn escape(c: char, out: &mut String) {
    use std::fmt::Write;
    let _ = write!(out, "\\u{{{:x}}}", c as u32);
}

/// One-line text for a terminal: every unsafe character (see [`is_unsafe`], newline and tab
/// included) becomes its visible `\u{…}` form. Borrows when nothing needs escaping.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) {
            escape(c, &mut out);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Multi-line text for a terminal: as [`sanitize`], but newlines are kept and a tab becomes
/// four spaces.
pub fn sanitize_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push('\n'),
            '\t' => out.push_str("    "),
            c if is_unsafe(c) => escape(c, &mut out),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A path for a terminal ([`sanitize`] of its lossy display form).
pub fn path(p: &std::path::Path) -> String {
    sanitize(&p.to_string_lossy()).into_owned()
}

/// The most bytes [`read_file`] reads of a small text file (configs, status, settings, themes).
pub const SMALL_FILE_MAX: u64 = 16 << 20;

/// A small text file from outside (a config, a status, a settings or theme file): only a
/// regular file is read (opened non-blocking, so a FIFO cannot hang the reader, and a device
/// such as `/dev/zero` is refused), and no more than `max` bytes. Errors are `io::Error`s whose
/// message says which rule the file broke.
pub fn read_file(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let f = open_regular(path)?;
    let meta = f.metadata()?;
    if meta.len() > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!(
                "{} bytes, more than the {} MiB a file of this kind may have",
                meta.len(),
                max >> 20
            ),
        ));
    }
    let mut s = String::with_capacity(meta.len() as usize);
    f.take(max).read_to_string(&mut s)?;
    Ok(s)
}

/// Opens a file from outside for reading, only if it is a regular file (opened non-blocking, so a
/// FIFO planted at the path cannot hang the caller; the error says "not a regular file").
pub fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}
