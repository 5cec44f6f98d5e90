//! The launch form: pick a preset, edit the key fields, start `ssmlab train` detached, or,
//! with a sweep grid, `ssmlab sweep` (the name is then the sweep's: runs NAME-1, NAME-2, …).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crossterm::event::{KeyCode, KeyEvent};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};

use crate::train::presets::{AnyConfig, PRESETS, any_preset, is_diffusion_preset};
use crate::tui::theme::Theme;

/// (label, config key) of the editable fields after a BiGS preset.
pub const FIELDS: &[(&str, &str)] = &[
    ("name", "run.name"),
    ("hidden size", "model.hidden_size"),
    ("layers", "model.num_hidden_layers"),
    ("sequence length", "data.seq_len"),
    ("batch size", "train.batch_size"),
    ("learning rate", "optim.lr"),
    ("steps", "train.steps"),
    ("dataset", "data.corpus"),
    ("seed", "run.seed"),
];

/// The same for a DiffuSSM preset.
pub const DIFFUSION_FIELDS: &[(&str, &str)] = &[
    ("name", "run.name"),
    ("hidden size", "model.hidden_size"),
    ("layers", "model.num_layers"),
    ("patch size", "model.patch_size"),
    ("batch size", "train.batch_size"),
    ("learning rate", "optim.lr"),
    ("steps", "train.steps"),
    ("dataset", "data.images"),
    ("seed", "run.seed"),
];

fn fields_of(preset: &str) -> &'static [(&'static str, &'static str)] {
    if is_diffusion_preset(preset) {
        DIFFUSION_FIELDS
    } else {
        FIELDS
    }
}

fn any_toml(cfg: &AnyConfig) -> String {
    match cfg {
        AnyConfig::Mlm(c) => c.to_toml(),
        AnyConfig::Diffusion(c) => c.to_toml(),
    }
}

pub struct LaunchForm {
    pub runs_dir: PathBuf,
    pub preset: usize,
    pub values: Vec<String>,
    /// 0 = preset row, 1.. = FIELDS, then the sweep grid.
    pub row: usize,
    /// `KEY=V1,V2` grids separated by spaces or `;` (empty: one run, no sweep).
    pub sweep: String,
    pub error: Option<String>,
}

#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "derived Serialize of plain fields cannot fail, and TOML it wrote parses"
)]
fn field_value(cfg: &AnyConfig, key: &str) -> String {
    let table: toml::Table = toml::from_str(&any_toml(cfg)).expect("config toml");
    let mut cur = toml::Value::Table(table);
    for part in key.split('.') {
        cur = cur
            .get(part)
            .cloned()
            .unwrap_or(toml::Value::String(String::new()));
    }
    match cur {
        toml::Value::String(s) => s,
        v => v.to_string(),
    }
}

impl LaunchForm {
    pub fn new(runs_dir: PathBuf) -> Self {
        let mut f = Self {
            runs_dir,
            preset: 0,
            values: Vec::new(),
            row: 0,
            sweep: String::new(),
            error: None,
        };
        f.load_preset();
        f
    }

    #[allow(
        clippy::expect_used,
        clippy::unwrap_used,
        reason = "presets of the fixed list exist (tested)"
    )]
    fn load_preset(&mut self) {
        let name = PRESETS[self.preset].0;
        let cfg = any_preset(name).expect("listed presets exist");
        self.values = fields_of(name)
            .iter()
            .map(|(_, k)| field_value(&cfg, k))
            .collect();
    }

    pub fn on_key(&mut self, k: KeyEvent) {
        self.error = None;
        match k.code {
            KeyCode::Up | KeyCode::BackTab => self.row = self.row.saturating_sub(1),
            KeyCode::Down | KeyCode::Tab => {
                self.row = (self.row + 1).min(self.values.len() + 1);
            }
            KeyCode::Left | KeyCode::Right if self.row == 0 => {
                let n = PRESETS.len();
                self.preset = if k.code == KeyCode::Left {
                    (self.preset + n - 1) % n
                } else {
                    (self.preset + 1) % n
                };
                self.load_preset();
            }
            KeyCode::Backspace if self.row > self.values.len() => {
                self.sweep.pop();
            }
            KeyCode::Char(c) if self.row > self.values.len() => self.sweep.push(c),
            KeyCode::Backspace if self.row > 0 => {
                self.values[self.row - 1].pop();
            }
            KeyCode::Char(c) if self.row > 0 => self.values[self.row - 1].push(c),
            _ => {}
        }
    }

    /// The `--set` overrides of the edited fields, and the resolved configuration (validated,
    /// dataset checked) — everything `ssmlab train` would reject is caught here.
    pub fn resolve(&self) -> Result<(String, Vec<String>), String> {
        let name = PRESETS[self.preset].0;
        let sets: Vec<String> = fields_of(name)
            .iter()
            .zip(&self.values)
            .map(|((_, k), v)| format!("{k}={}", v.trim()))
            .collect();
        let (run_name, data) = match any_preset(name).map_err(|e| e.to_string())? {
            AnyConfig::Mlm(c) => {
                let cfg = c.with_overrides(&sets).map_err(|e| e.to_string())?;
                cfg.validate().map_err(|e| e.to_string())?;
                (cfg.run.name, cfg.data.corpus)
            }
            AnyConfig::Diffusion(c) => {
                let cfg = c.with_overrides(&sets).map_err(|e| e.to_string())?;
                cfg.validate().map_err(|e| e.to_string())?;
                (cfg.run.name, cfg.data.images)
            }
        };
        crate::runs::check_run_name(&run_name)?;
        if !crate::data::resolve_data_path(&data).exists() {
            return Err(format!("dataset {} does not exist", data.display()));
        }
        if let Some(spec) = self.sweep_spec(name, &sets)? {
            // every run of the grid built and validated, and the names free (or the same sweep)
            crate::sweep::plan(&self.runs_dir, &run_name, Some(spec)).map_err(|e| e.to_string())?;
        }
        Ok((name.to_string(), sets))
    }

    /// The sweep the form describes (None: no grid given): the edited fields but the name as
    /// shared overrides, and the grid.
    fn sweep_spec(
        &self,
        preset: &str,
        sets: &[String],
    ) -> Result<Option<crate::sweep::SweepSpec>, String> {
        let grids: Vec<&str> = self
            .sweep
            .split(|c: char| c == ';' || c.is_whitespace())
            .filter(|g| !g.is_empty())
            .collect();
        if grids.is_empty() {
            return Ok(None);
        }
        Ok(Some(crate::sweep::SweepSpec {
            preset: preset.into(),
            sets: sets
                .iter()
                .filter(|s| !s.starts_with("run.name="))
                .cloned()
                .collect(),
            grid: grids
                .iter()
                .map(|g| crate::sweep::parse_grid(g).map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?,
            random: 0,
            ranges: vec![],
            seed: 0,
        }))
    }

    /// Starts `ssmlab train` in its own session (it outlives the TUI and the SSH login); its
    /// early output goes to `<runs_dir>/.launch-<name>.log`.
    pub fn launch(&self, exe: &Path) -> Result<String, String> {
        let (preset, sets) = self.resolve()?;
        let name = self.values[0].trim().to_string();
        std::fs::create_dir_all(&self.runs_dir)
            .map_err(|e| format!("{}: {e}", self.runs_dir.display()))?;
        let log_path = self.runs_dir.join(format!(".launch-{name}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = Command::new(exe);
        let spec = self.sweep_spec(&preset, &sets)?;
        match &spec {
            Some(spec) => {
                cmd.args(["sweep", "--preset", &preset, "--name", &name]);
                for s in &spec.sets {
                    cmd.arg("--set").arg(s);
                }
                for g in &spec.grid {
                    cmd.arg("--grid")
                        .arg(format!("{}={}", g.key, g.values.join(",")));
                }
            }
            None => {
                cmd.args(["train", "--preset", &preset]);
                for s in &sets {
                    cmd.arg("--set").arg(s);
                }
            }
        }
        cmd.arg("--runs-dir").arg(&self.runs_dir);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        crate::runs::os::detach_session(&mut cmd);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let pid = child.id();
        // Reap it when it ends (while we live), so it does not linger as a zombie.
        crate::tui::worker::spawn("reaper", move || {
            let _ = child.wait();
        });
        Ok(match spec {
            Some(s) => format!(
                "launched sweep {name} ({preset}, {} runs one at a time, pid {pid})",
                s.count()
            ),
            None => format!("launched {name} ({preset}, pid {pid})"),
        })
    }

    pub fn draw(&self, f: &mut Frame, area: Rect, theme: &Theme) {
        f.render_widget(Clear, area);
        let mut lines = vec![Line::from(Span::styled(
            "Enter launches, Esc cancels, ↑/↓ move, ←/→ change preset, type to edit",
            theme.muted(),
        ))];
        lines.push(Line::default());
        let row_style = |i: usize| {
            if i == self.row {
                theme.selected()
            } else {
                theme.text()
            }
        };
        lines.push(Line::from(vec![
            Span::styled(format!("{:>16}  ", "preset"), theme.muted()),
            Span::styled(format!("◀ {} ▶", PRESETS[self.preset].0), row_style(0)),
        ]));
        lines.push(Line::from(Span::styled(
            format!("{:>16}  {}", "", PRESETS[self.preset].1),
            theme.muted(),
        )));
        let fields = fields_of(PRESETS[self.preset].0);
        for (i, ((label, _), v)) in fields.iter().zip(&self.values).enumerate() {
            let cursor = if i + 1 == self.row { "▏" } else { "" };
            lines.push(Line::from(vec![
                Span::styled(format!("{label:>16}  "), theme.muted()),
                Span::styled(format!("{v}{cursor}"), row_style(i + 1)),
            ]));
        }
        let row = fields.len() + 1;
        let cursor = if self.row == row { "▏" } else { "" };
        lines.push(Line::from(vec![
            Span::styled(format!("{:>16}  ", "sweep grid"), theme.muted()),
            if self.sweep.is_empty() && self.row != row {
                Span::styled("none (e.g. optim.lr=1e-3,3e-3)", theme.muted())
            } else {
                Span::styled(format!("{}{cursor}", self.sweep), row_style(row))
            },
        ]));
        lines.push(Line::default());
        match self.resolve() {
            _ if self.error.is_some() => lines.push(Line::from(Span::styled(
                self.error.clone().unwrap_or_default(),
                ratatui::style::Style::default().fg(theme.error),
            ))),
            Ok(_) => lines.push(Line::from(Span::styled(
                "valid",
                ratatui::style::Style::default().fg(theme.ok),
            ))),
            Err(e) => lines.push(Line::from(Span::styled(
                e,
                ratatui::style::Style::default().fg(theme.warn),
            ))),
        }
        let p = Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: false })
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" New run ")
                    .border_style(theme.accent()),
            );
        f.render_widget(p, area);
    }
}
