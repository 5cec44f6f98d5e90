//! User settings: `$XDG_CONFIG_HOME/ssmlab/config.toml` (or `~/.config/ssmlab/config.toml`;
//! `SSMLAB_CONFIG` names another file). A malformed file never stops the TUI: it starts with
//! defaults and shows which file and line was ignored.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Theme name (dark, light, hc16) or a theme file path.
    #[serde(default)]
    pub theme: Option<String>,
    /// Runs folder (default `checkpoints`).
    #[serde(default)]
    pub runs_dir: Option<PathBuf>,
    /// Draw charts with ASCII dots instead of braille (terminals without braille fonts).
    #[serde(default)]
    pub ascii: bool,
    /// How images are drawn: auto (query the terminal), halfblocks, kitty, sixel, iterm2.
    /// `SSMLAB_IMAGE_PROTOCOL` wins over it.
    #[serde(default)]
    pub image_protocol: Option<String>,
    /// Key remaps: action name → key (see the help overlay for names).
    #[serde(default)]
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

/// Loads settings; a problem is returned as a notice alongside the defaults.
pub fn load() -> (Settings, Option<String>) {
    match settings_path() {
        Some(p) => load_from(&p),
        None => (Settings::default(), None),
    }
}

/// Loads settings from a file (a missing file means defaults, silently).
pub fn load_from(path: &std::path::Path) -> (Settings, Option<String>) {
    let Ok(text) = crate::text::read_file(path, crate::text::SMALL_FILE_MAX) else {
        return (Settings::default(), None);
    };
    match toml::from_str::<Settings>(&text) {
        Ok(s) => (s, None),
        Err(e) => {
            let line = e
                .span()
                .map(|s| text[..s.start].lines().count().max(1))
                .unwrap_or(0);
            (
                Settings::default(),
                Some(format!(
                    "{} line {line} ignored ({}); using defaults",
                    path.display(),
                    e.message()
                )),
            )
        }
    }
}
