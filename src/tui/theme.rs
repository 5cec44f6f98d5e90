//! Colour themes from `themes/*.toml` (built in, so the binary works anywhere), `NO_COLOR`.

use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

const BUILTIN: &[(&str, &str)] = &[
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    ("hc16", include_str!("../../themes/hc16.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    fg: String,
    muted: String,
    accent: String,
    highlight_bg: String,
    ok: String,
    warn: String,
    error: String,
    series: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Theme {
    pub name: String,
    pub fg: Color,
    pub muted: Color,
    pub accent: Color,
    pub highlight_bg: Color,
    pub ok: Color,
    pub warn: Color,
    pub error: Color,
    pub series: Vec<Color>,
    /// `NO_COLOR`: every colour is the terminal default; emphasis by modifiers only.
    pub no_color: bool,
}

fn color(s: &str) -> Result<Color, String> {
    Color::from_str(s).map_err(|_| format!("`{s}` is not a colour (name, #rrggbb or 0-255)"))
}

impl Theme {
    /// Parses a theme file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Theme, String> {
        let f: ThemeFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start].lines().count().max(1))
                .unwrap_or(0);
            format!("{origin} line {line}: {}", e.message())
        })?;
        let c = |s: &str| color(s).map_err(|e| format!("{origin}: {e}"));
        let series = f
            .series
            .iter()
            .map(|s| c(s))
            .collect::<Result<Vec<_>, _>>()?;
        if series.is_empty() {
            return Err(format!("{origin}: `series` needs at least one colour"));
        }
        Ok(Theme {
            name: f.name,
            fg: c(&f.fg)?,
            muted: c(&f.muted)?,
            accent: c(&f.accent)?,
            highlight_bg: c(&f.highlight_bg)?,
            ok: c(&f.ok)?,
            warn: c(&f.warn)?,
            error: c(&f.error)?,
            series,
            no_color: false,
        })
    }

    #[allow(
        clippy::expect_used,
        clippy::unwrap_used,
        reason = "the built-in themes are compiled in and parsed by the tests"
    )]
    pub fn builtin(name: &str) -> Option<Theme> {
        BUILTIN.iter().find(|(n, _)| *n == name).map(|(n, t)| {
            Theme::parse(t, &format!("themes/{n}.toml")).expect("built-in theme parses")
        })
    }

    /// The default theme (built in, so it always parses).
    #[allow(
        clippy::expect_used,
        reason = "`dark` is compiled in and parsed by the tests"
    )]
    pub fn dark() -> Theme {
        Theme::builtin("dark").expect("the dark theme is built in")
    }

    pub fn names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }

    /// A theme by name (built in, or `themes/<name>.toml` / a path on disk, which wins).
    /// Errors fall back to `dark` and are returned for display.
    pub fn load(name_or_path: &str) -> (Theme, Option<String>) {
        let candidates = [
            std::path::PathBuf::from(name_or_path),
            std::path::PathBuf::from(format!("themes/{name_or_path}.toml")),
        ];
        if let Some(p) = candidates.iter().find(|p| p.is_file()) {
            let text = crate::text::read_file(p, crate::text::SMALL_FILE_MAX).unwrap_or_default();
            return match Theme::parse(&text, &p.display().to_string()) {
                Ok(t) => (t, None),
                Err(e) => (Theme::dark(), Some(format!("{e}; using the dark theme"))),
            };
        }
        match Theme::builtin(name_or_path) {
            Some(t) => (t, None),
            None => (
                Theme::dark(),
                Some(format!(
                    "unknown theme `{name_or_path}` (built in: {}); using dark",
                    Theme::names().join(", ")
                )),
            ),
        }
    }

    pub fn without_color(mut self) -> Theme {
        self.no_color = true;
        for c in [
            &mut self.fg,
            &mut self.muted,
            &mut self.accent,
            &mut self.highlight_bg,
            &mut self.ok,
            &mut self.warn,
            &mut self.error,
        ] {
            *c = Color::Reset;
        }
        self.series = vec![Color::Reset];
        self
    }

    pub fn text(&self) -> Style {
        Style::default().fg(self.fg)
    }
    pub fn muted(&self) -> Style {
        if self.no_color {
            Style::default().add_modifier(Modifier::DIM)
        } else {
            Style::default().fg(self.muted)
        }
    }
    pub fn warn_style(&self) -> Style {
        Style::default().fg(self.warn)
    }
    pub fn accent(&self) -> Style {
        Style::default()
            .fg(self.accent)
            .add_modifier(Modifier::BOLD)
    }
    pub fn selected(&self) -> Style {
        if self.no_color {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
                .bg(self.highlight_bg)
                .add_modifier(Modifier::BOLD)
        }
    }
    /// Stable colour of a run: a hash of its id picks from the series palette.
    pub fn run_color(&self, id: &str) -> Color {
        let h = id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        self.series[(h % self.series.len() as u64) as usize]
    }
    pub fn state_style(&self, state: &str) -> Style {
        let c = match state {
            "running" => self.ok,
            "finished" => self.accent,
            "stopped" => self.warn,
            _ => self.error,
        };
        Style::default().fg(c)
    }
}
