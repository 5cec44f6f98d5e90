//! The probe view: a prompt with [MASK], top-k predictions as bars, history, and an A/B of two
//! checkpoints with Δprob. Models load and run on the probe worker
//! (`tui::worker`).

use std::path::PathBuf;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Wrap};

use crate::probe::ProbeOutput;
use crate::runs::index::RunSummary;
use crate::text::sanitize;
use crate::tui::app::App;
use crate::tui::keymap::Action;
use crate::tui::pane::{Ctx, Outcome, Pane};
use crate::tui::worker::{ProbeJob, WorkerMsg};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent};

/// One side of the comparison.
#[derive(Debug, Clone, Default)]
pub struct ProbeSlot {
    pub model: Option<PathBuf>,
    pub result: Option<Result<ProbeOutput, String>>,
    pub busy: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ProbeState {
    pub prompt: String,
    pub editing: bool,
    pub history: Vec<String>,
    /// Index into history while browsing it with ↑/↓ in insert mode.
    pub history_pos: Option<usize>,
    pub a: ProbeSlot,
    pub b: ProbeSlot,
    /// First result line shown (PgUp/PgDn, Home/End, the wheel): every mask is reachable.
    pub scroll: usize,
}

impl ProbeState {
    /// Result lines of the longer side (what the results pane can scroll through).
    pub fn line_count(&self) -> usize {
        [&self.a, &self.b]
            .iter()
            .filter_map(|s| match &s.result {
                Some(Ok(o)) => Some(
                    o.masks
                        .iter()
                        .map(|m| 1 + m.top.len() + m.targets.len())
                        .sum::<usize>(),
                ),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

impl ProbeState {
    /// Sends the prompt to the probe worker for each side that has a model.
    pub fn run(&mut self, cx: &mut Ctx) {
        let text = self.prompt.trim().to_string();
        if text.is_empty() {
            return;
        }
        if self.history.last() != Some(&text) {
            self.history.push(text.clone());
        }
        self.history_pos = None;
        for (i, slot) in [&mut self.a, &mut self.b].into_iter().enumerate() {
            let Some(model) = slot.model.clone() else {
                continue;
            };
            let job = ProbeJob {
                slot: i,
                model,
                text: text.clone(),
            };
            match &cx.workers.probe {
                Some(tx) if tx.send(job).is_ok() => slot.busy = true,
                _ => slot.result = Some(Err("the probe worker is not running".into())),
            }
        }
    }

    /// Picks the default model A (the shipped run, else the first run with a checkpoint)
    /// while none is set.
    pub fn default_model(&mut self, runs: &[RunSummary]) {
        if self.a.model.is_none() {
            self.a.model = runs
                .iter()
                .find(|r| r.id == "bigs-mobydick" && !r.checkpoints.is_empty())
                .or_else(|| runs.iter().find(|r| !r.checkpoints.is_empty()))
                .map(|r| r.path.clone());
        }
    }
}

impl Pane for ProbeState {
    fn handle(&mut self, action: Action, cx: &mut Ctx) -> Outcome {
        let page = (cx.body.height as i64 - 4).max(1);
        let d = match action {
            Action::ProbeEdit => {
                self.editing = true;
                return Outcome::Done;
            }
            Action::ProbeRun => {
                self.run(cx);
                return Outcome::Done;
            }
            Action::ProbeSetA | Action::ProbeSetB => {
                if let Some(r) = cx.selected_run() {
                    let path = r.path.clone();
                    let slot = if action == Action::ProbeSetA {
                        &mut self.a
                    } else {
                        &mut self.b
                    };
                    slot.model = Some(path);
                    slot.result = None;
                }
                return Outcome::Done;
            }
            a => match super::scroll_delta(a, page) {
                Some(d) => d,
                None => return Outcome::Pass,
            },
        };
        self.scroll_by(d);
        Outcome::Done
    }

    fn editing(&self) -> bool {
        self.editing
    }

    fn on_text_key(&mut self, k: KeyEvent, cx: &mut Ctx) {
        match k.code {
            KeyCode::Esc => self.editing = false,
            KeyCode::Enter => {
                self.editing = false;
                self.run(cx);
            }
            KeyCode::Backspace => {
                self.prompt.pop();
            }
            KeyCode::Up | KeyCode::Down if !self.history.is_empty() => {
                let n = self.history.len();
                let i = match (self.history_pos, k.code) {
                    (None, KeyCode::Up) => n - 1,
                    (Some(i), KeyCode::Up) => i.saturating_sub(1),
                    (Some(i), _) => (i + 1).min(n - 1),
                    (None, _) => return,
                };
                self.history_pos = Some(i);
                self.prompt = self.history[i].clone();
            }
            KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => self.prompt.push(c),
            _ => {}
        }
    }

    fn on_msg(&mut self, m: WorkerMsg, _cx: &mut Ctx) {
        if let WorkerMsg::Probe(slot, res) = m {
            let s = if slot == 0 { &mut self.a } else { &mut self.b };
            s.busy = false;
            s.result = Some(res);
        }
    }

    fn on_mouse(&mut self, m: MouseEvent, _cx: &mut Ctx) -> Outcome {
        match super::wheel(&m) {
            0 => Outcome::Pass,
            d => {
                self.scroll_by(3 * d);
                Outcome::Done
            }
        }
    }

    fn draw(&self, f: &mut Frame, area: Rect, app: &App) {
        draw(f, app, area)
    }
}

impl ProbeState {
    /// Scrolls the results by `d` lines (clamped to what there is).
    fn scroll_by(&mut self, d: i64) {
        let max = self.line_count() as i64;
        self.scroll = (self.scroll as i64 + d).clamp(0, max) as usize;
    }
}

fn slot_title(s: &ProbeSlot, name: &str) -> String {
    let m = s
        .model
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "no model".into());
    let busy = if s.busy { " · running…" } else { "" };
    format!(" {name}: {m}{busy} ")
}

/// Lines of one side: per mask, top-k with bars; `other` adds Δprob against the other side.
fn result_lines<'a>(
    app: &App,
    out: &ProbeOutput,
    other: Option<&ProbeOutput>,
    width: usize,
) -> Vec<Line<'a>> {
    let t = &app.theme;
    let mut lines = Vec::new();
    for (k, m) in out.masks.iter().enumerate() {
        lines.push(Line::from(Span::styled(
            format!(
                "[MASK] #{} (pos {}, entropy {:.2})",
                k + 1,
                m.position,
                m.entropy
            ),
            t.accent(),
        )));
        let best = m.top.first().map(|c| c.prob).unwrap_or(1.0).max(1e-12);
        let bar_w = width.saturating_sub(34).clamp(4, 30);
        for c in &m.top {
            let bar = "█".repeat(((c.prob / best) * bar_w as f64).round().max(1.0) as usize);
            let delta = other.and_then(|o| o.masks.get(k)).map(|om| {
                let p = om.top.iter().find(|x| x.id == c.id).map(|x| x.prob);
                match p {
                    Some(p) => format!(" Δ{:+.1}", (c.prob - p) * 100.0),
                    None => " Δ new".into(),
                }
            });
            lines.push(Line::from(vec![
                Span::raw(format!("{:<12}", sanitize(&c.token))),
                Span::raw(format!("{:>6.2}% ", c.prob * 100.0)),
                Span::styled(bar, Style::default().fg(t.accent)),
                Span::styled(delta.unwrap_or_default(), t.muted()),
            ]));
        }
        for tg in &m.targets {
            lines.push(Line::from(Span::styled(
                format!(
                    "target {} {:.2}% rank {}{}",
                    sanitize(&tg.word),
                    tg.prob * 100.0,
                    tg.rank,
                    if tg.pieces > 1 {
                        format!(" (piece {})", sanitize(&tg.piece))
                    } else {
                        String::new()
                    }
                ),
                t.muted(),
            )));
        }
    }
    lines
}

fn draw_slot(f: &mut Frame, app: &App, s: &ProbeSlot, other: &ProbeSlot, name: &str, area: Rect) {
    let t = &app.theme;
    let lines = match &s.result {
        None if s.model.is_none() => vec![Line::from(Span::styled(
            "select a run in the Runs view and press a (or b for the comparison side)",
            t.muted(),
        ))],
        None => vec![Line::from(Span::styled(
            "type a prompt with [MASK] (i to edit, Enter to run)",
            t.muted(),
        ))],
        Some(Err(e)) => vec![Line::from(Span::styled(
            sanitize(e),
            Style::default().fg(t.error),
        ))],
        Some(Ok(out)) => {
            let o = match &other.result {
                Some(Ok(o)) => Some(o),
                _ => None,
            };
            result_lines(app, out, o, area.width as usize)
        }
    };
    let visible = (area.height as usize).saturating_sub(2);
    let scroll = app.probe.scroll.min(lines.len().saturating_sub(visible));
    let pos = crate::tui::views::scroll_position("lines", scroll, visible, lines.len())
        .map_or_else(String::new, |p| format!(" {p} (PgUp/PgDn) "));
    let title_w = (area.width as usize).saturating_sub(2);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .scroll((scroll as u16, 0))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(crate::tui::views::runs::fit(&slot_title(s, name), title_w))
                    .title_bottom(Line::from(pos).right_aligned()),
            ),
        area,
    );
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let p = &app.probe;
    let [prompt, results] =
        Layout::vertical([Constraint::Length(3), Constraint::Min(3)]).areas(area);
    let cursor = if p.editing { "▏" } else { "" };
    let mode = if p.editing {
        " prompt · INSERT (Enter runs, Esc leaves, ↑↓ history) "
    } else {
        " prompt (i to edit) "
    };
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::raw(sanitize(&p.prompt)),
            Span::styled(cursor, t.accent()),
        ]))
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(mode)
                .border_style(if p.editing { t.accent() } else { t.muted() }),
        ),
        prompt,
    );
    if p.b.model.is_some() {
        let [l, r] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(results);
        draw_slot(f, app, &p.a, &p.b, "A", l);
        draw_slot(f, app, &p.b, &p.a, "B", r);
    } else {
        draw_slot(f, app, &p.a, &p.b, "A", results);
    }
}
