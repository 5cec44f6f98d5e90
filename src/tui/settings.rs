//! User settings: `$XDG_CONFIG_HOME/ssmlab/config.toml` (or `~/.config/ssmlab/config.toml`;
//! `SSMLAB_CONFIG` names another file). A malformed file never stops the TUI: a bad setting is
//! skipped on its own (the others apply), and every problem is listed when the TUI starts.

use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Theme name (dark, light, hc16) or a theme file path.
    pub theme: Option<String>,
    /// Runs folder (default `checkpoints`).
    pub runs_dir: Option<PathBuf>,
    /// Draw charts with ASCII dots instead of braille (terminals without braille fonts).
    pub ascii: bool,
    /// How images are drawn: auto (query the terminal), halfblocks, kitty, sixel, iterm2.
    /// `SSMLAB_IMAGE_PROTOCOL` wins over it.
    pub image_protocol: Option<String>,
    /// Key remaps: action name → key (see the help overlay for names).
    pub keys: HashMap<String, String>,
}

pub fn settings_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SSMLAB_CONFIG") {
        return Some(p.into());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ssmlab").join("config.toml"))
}

/// Loads settings; problems are returned as notices alongside what did load.
pub fn load() -> (Settings, Vec<String>) {
    match settings_path() {
        Some(p) => load_from(&p),
        None => (Settings::default(), Vec::new()),
    }
}

/// The settings a file may have.
const KNOWN: &str = "theme, runs_dir, ascii, image_protocol, [keys]";

/// Loads settings from a file (a missing file means defaults, silently). Each setting is read
/// on its own: a bad one is skipped with a notice naming the file, line and setting, and the
/// others still apply. A file that is not TOML text (a syntax error, binary bytes) leaves the
/// defaults, with one notice naming the line.
pub fn load_from(path: &std::path::Path) -> (Settings, Vec<String>) {
    let bytes = match crate::text::open_regular(path) {
        Ok(_) => match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                return (
                    Settings::default(),
                    vec![format!("{}: {e}", path.display())],
                );
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (Settings::default(), Vec::new());
        }
        Err(e) => {
            return (
                Settings::default(),
                vec![format!("{}: {e}; using defaults", path.display())],
            );
        }
    };
    let p = path.display();
    if bytes.len() as u64 > crate::text::SMALL_FILE_MAX {
        return (
            Settings::default(),
            vec![format!(
                "{p}: {} bytes is not a settings file; using defaults",
                bytes.len()
            )],
        );
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) if !t.contains('\0') => t,
        _ => {
            return (
                Settings::default(),
                vec![format!(
                    "{p} is not a text file (binary bytes); using defaults. Settings are TOML: \
                     {KNOWN}"
                )],
            );
        }
    };
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].lines().count().max(1))
            .unwrap_or(0)
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            return (
                Settings::default(),
                vec![format!(
                    "{p} line {} ignored ({}); using defaults",
                    line_of(e.span()),
                    e.message().trim()
                )],
            );
        }
    };
    // the line a key is on, for the notices
    let key_line = |key: &str| {
        text.lines()
            .position(|l| {
                let l = l.trim_start();
                l.starts_with(key) && l[key.len()..].trim_start().starts_with('=')
            })
            .map(|i| i + 1)
    };
    let at = |key: &str| key_line(key).map_or(String::new(), |n| format!(" line {n}"));
    let mut s = Settings::default();
    let mut notes = Vec::new();
    for (k, v) in &table {
        let bad = |want: &str| {
            format!(
                "{p}{}: `{k}` must be {want}, not {}; ignored",
                at(k),
                v.type_str()
            )
        };
        match (k.as_str(), v) {
            ("theme", toml::Value::String(t)) => s.theme = Some(t.clone()),
            ("runs_dir", toml::Value::String(d)) => s.runs_dir = Some(d.into()),
            ("ascii", toml::Value::Boolean(b)) => s.ascii = *b,
            ("image_protocol", toml::Value::String(i)) => s.image_protocol = Some(i.clone()),
            ("keys", toml::Value::Table(keys)) => {
                for (action, key) in keys {
                    match key {
                        toml::Value::String(key) => {
                            s.keys.insert(action.clone(), key.clone());
                        }
                        other => notes.push(format!(
                            "{p}{}: [keys] `{action}` must be a key name string like \"x\" or \
                             \"ctrl-s\", not {}; ignored",
                            at(action),
                            other.type_str()
                        )),
                    }
                }
            }
            ("theme" | "runs_dir" | "image_protocol", _) => notes.push(bad("a string")),
            ("ascii", _) => notes.push(bad("true or false")),
            ("keys", _) => notes.push(bad("a table ([keys])")),
            _ => notes.push(format!(
                "{p}{}: unknown setting `{k}` (known: {KNOWN}); ignored",
                at(k)
            )),
        }
    }
    (s, notes)
}
