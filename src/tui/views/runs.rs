//! The runs view: every run with its state, progress and latest numbers; the selected run's
//! configuration and checkpoints; a diff of two runs' configurations.

use crate::text::sanitize;
use ratatui::Frame;
use ratatui::layout::Margin;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row, Scrollbar, ScrollbarOrientation, ScrollbarState,
    Table, Wrap,
};

use crate::runs::index::RunSummary;
use crate::tui::app::{App, Popup};
use crate::tui::chart::fmt_num;
use crate::tui::keymap::Action;
use crate::tui::pane::{Ctx, Outcome, Pane};
use crate::tui::views::form::LaunchForm;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};

fn age(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.0}h", s / 3600.0),
        Some(s) => format!("{:.0}d", s / 86400.0),
    }
}

/// `s` cut to `w` characters, ending in `…` when cut (never a silent cut).
pub fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(w - 1).collect();
    out.push('…');
    out
}

/// The column the runs table is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    #[default]
    Name,
    Model,
    State,
    Step,
    Loss,
    Eval,
    Acc,
    Speed,
    Age,
    Sweep,
}

impl SortKey {
    pub const ALL: [SortKey; 10] = [
        SortKey::Name,
        SortKey::Model,
        SortKey::State,
        SortKey::Step,
        SortKey::Loss,
        SortKey::Eval,
        SortKey::Acc,
        SortKey::Speed,
        SortKey::Age,
        SortKey::Sweep,
    ];
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Name => "run",
            SortKey::Model => "model",
            SortKey::State => "state",
            SortKey::Step => "step",
            SortKey::Loss => "loss",
            SortKey::Eval => "eval",
            SortKey::Acc => "acc/CAS",
            SortKey::Speed => "tok/s",
            SortKey::Age => "age",
            SortKey::Sweep => "sweep",
        }
    }
    pub fn next(self) -> Self {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }
}

/// Whether a run matches a filter: every whitespace-separated term is part of its name,
/// model family or sweep, or the start of its state (case-insensitive).
pub fn matches(r: &RunSummary, filter: &str) -> bool {
    let (id, family, state, sweep) = (
        r.id.to_lowercase(),
        crate::runs::family_label(&r.model).to_lowercase(),
        r.state_label().to_lowercase(),
        r.sweep.as_deref().unwrap_or("").to_lowercase(),
    );
    filter.split_whitespace().all(|t| {
        let t = t.to_lowercase();
        id.contains(&t) || family.contains(&t) || state.starts_with(&t) || sweep.contains(&t)
    })
}

/// The Runs pane: filter, sort, the display order and the scroll positions (the selected
/// and marked runs are the app's: every view acts on them). Input changes it; drawing only
/// reads it.
#[derive(Debug, Clone, Default)]
pub struct RunsState {
    pub filter: String,
    /// Typing into the filter (`/`).
    pub filter_editing: bool,
    pub sort: SortKey,
    pub reverse: bool,
    /// Indices into `App::runs` in display order (the filter and sort applied).
    pub order: Vec<usize>,
    /// First table row shown.
    pub offset: usize,
    /// First line of the config pane shown.
    pub details_scroll: usize,
}

impl RunsState {
    /// Recomputes the display order of `runs`.
    pub fn refresh(&mut self, runs: &[RunSummary]) {
        let mut order: Vec<usize> = (0..runs.len())
            .filter(|&i| matches(&runs[i], &self.filter))
            .collect();
        let key = |r: &RunSummary| -> Option<f64> {
            match self.sort {
                SortKey::Step => Some(r.step() as f64),
                SortKey::Loss => r.last_loss(),
                SortKey::Eval => r.last_eval().map(|e| e.0),
                SortKey::Acc => r.acc_or_cas(),
                SortKey::Speed => r.tokens_per_s(),
                SortKey::Age => r.age_s,
                _ => None,
            }
        };
        let text = |r: &RunSummary| -> String {
            match self.sort {
                SortKey::Model => crate::runs::family_label(&r.model).to_string(),
                SortKey::State => r.state_label(),
                // runs of no sweep after every sweep
                SortKey::Sweep => r.sweep.clone().unwrap_or_else(|| "\u{10FFFF}".into()),
                _ => String::new(),
            }
        };
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&runs[a], &runs[b]);
            let by = match (key(ra), key(rb)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                // runs without the value go last either way
                (Some(_), None) => return std::cmp::Ordering::Less,
                (None, Some(_)) => return std::cmp::Ordering::Greater,
                (None, None) => text(ra).cmp(&text(rb)),
            };
            let by = if self.reverse { by.reverse() } else { by };
            by.then_with(|| ra.id.cmp(&rb.id))
        });
        self.order = order;
    }

    /// The display position of run `selected` (None: filtered out).
    pub fn position(&self, selected: usize) -> Option<usize> {
        self.order.iter().position(|&i| i == selected)
    }

    /// "sorted by eval ↓ · filter `bigs` (3 of 30)" for the table's title.
    pub fn describe(&self, total: usize) -> String {
        let mut parts = Vec::new();
        if self.sort != SortKey::Name || self.reverse {
            parts.push(format!(
                "sorted by {} {}",
                self.sort.label(),
                if self.reverse { "↓" } else { "↑" }
            ));
        }
        if !self.filter.is_empty() || self.filter_editing {
            parts.push(format!(
                "filter `{}`{} ({} of {total})",
                sanitize(&self.filter),
                if self.filter_editing { "▏" } else { "" },
                self.order.len()
            ));
        }
        parts.join(" · ")
    }
}

impl RunsState {
    /// Recomputes the display order (filter, sort) and keeps the selection among the shown
    /// runs and visible in the table laid out in `body`.
    pub fn refresh_view(&mut self, runs: &[RunSummary], selected: &mut usize, body: Rect) {
        self.refresh(runs);
        if self.position(*selected).is_none()
            && let Some(&first) = self.order.first()
        {
            *selected = first;
        }
        self.scroll_to(*selected, body);
    }

    /// Moves the table's offset so that run `selected` is visible.
    pub fn scroll_to(&mut self, selected: usize, body: Rect) {
        let rows = layout(body, self.order.len()).rows;
        let pos = self.position(selected).unwrap_or(0);
        self.offset = keep_visible(self.offset, pos, rows, self.order.len());
    }

    /// Moves the selection `d` rows in the display order (filter and sort).
    pub fn move_sel(&mut self, selected: &mut usize, d: i64, body: Rect) {
        if self.order.is_empty() {
            return;
        }
        let n = self.order.len() as i64;
        let pos = self.position(*selected).unwrap_or(0) as i64;
        let new = self.order[(pos + d).clamp(0, n - 1) as usize];
        if new != *selected {
            self.details_scroll = 0;
        }
        *selected = new;
        self.scroll_to(new, body);
    }
}

impl Pane for RunsState {
    fn handle(&mut self, action: Action, cx: &mut Ctx) -> Outcome {
        match action {
            Action::Filter => {
                self.filter_editing = true;
                self.refresh_view(cx.runs, cx.selected, cx.body);
            }
            Action::SortNext => {
                self.sort = self.sort.next();
                self.refresh_view(cx.runs, cx.selected, cx.body);
            }
            Action::SortReverse => {
                self.reverse = !self.reverse;
                self.refresh_view(cx.runs, cx.selected, cx.body);
            }
            Action::MarkAll => {
                let ids: Vec<String> = self.order.iter().map(|&i| cx.runs[i].id.clone()).collect();
                cx.notices.push(format!("marked {} run(s)", ids.len()));
                cx.marked.extend(ids);
            }
            Action::UnmarkAll => {
                cx.notices
                    .push(format!("unmarked {} run(s)", cx.marked.len()));
                cx.marked.clear();
            }
            Action::DetailsUp => self.details_scroll = self.details_scroll.saturating_sub(1),
            Action::DetailsDown => self.details_scroll += 1,
            Action::Launch => {
                *cx.popup = Some(Popup::Launch(Box::new(LaunchForm::new(
                    cx.runs_dir.to_path_buf(),
                ))))
            }
            Action::Diff => {
                *cx.popup = Some(if cx.marked.len() == 2 {
                    Popup::Diff
                } else {
                    Popup::Message(
                        "mark two runs with space, then press d to diff their configs".into(),
                    )
                });
            }
            _ => return Outcome::Pass,
        }
        Outcome::Done
    }

    fn editing(&self) -> bool {
        self.filter_editing
    }

    /// Typing into the filter: characters edit it (the order follows as typed), Enter keeps
    /// it, Esc clears it.
    fn on_text_key(&mut self, k: KeyEvent, cx: &mut Ctx) {
        match k.code {
            KeyCode::Enter => self.filter_editing = false,
            KeyCode::Esc => {
                self.filter_editing = false;
                self.filter.clear();
            }
            KeyCode::Backspace => {
                self.filter.pop();
            }
            KeyCode::Char(c) if !k.modifiers.contains(KeyModifiers::CONTROL) => self.filter.push(c),
            _ => return,
        }
        self.refresh_view(cx.runs, cx.selected, cx.body);
    }

    /// The wheel scrolls the config pane when over it (else the app moves the selection); a
    /// click on a table row selects the run drawn there.
    fn on_mouse(&mut self, m: MouseEvent, cx: &mut Ctx) -> Outcome {
        let l = layout(cx.body, self.order.len());
        let inside = |r: Rect| {
            m.column >= r.x && m.column < r.x + r.width && m.row >= r.y && m.row < r.y + r.height
        };
        match super::wheel(&m) {
            0 => {}
            d if inside(l.config) => {
                self.details_scroll = (self.details_scroll as i64 + 3 * d).max(0) as usize;
                return Outcome::Done;
            }
            _ => return Outcome::Pass,
        }
        if !matches!(m.kind, MouseEventKind::Down(_)) {
            return Outcome::Pass;
        }
        let offset = keep_visible(
            self.offset,
            self.position(*cx.selected).unwrap_or(self.offset),
            l.rows,
            self.order.len(),
        );
        if let Some(pos) = row_at(&l, offset, m.column, m.row)
            && let Some(&i) = self.order.get(pos)
        {
            *cx.selected = i;
            self.details_scroll = 0;
        }
        Outcome::Done
    }

    fn draw(&self, f: &mut Frame, area: Rect, app: &App) {
        draw(f, app, area)
    }
}

/// The offset that keeps row `pos` of `len` visible in `rows` rows, moving `offset` as little
/// as possible.
pub fn keep_visible(offset: usize, pos: usize, rows: usize, len: usize) -> usize {
    let rows = rows.max(1);
    let max = len.saturating_sub(rows);
    let o = if pos < offset {
        pos
    } else if pos >= offset + rows {
        pos + 1 - rows
    } else {
        offset
    };
    o.min(max)
}

/// Where the Runs view draws, from the body area and the number of shown runs: shared by
/// drawing and by input (mouse hits, paging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunsLayout {
    pub table: Rect,
    /// Data rows the table shows.
    pub rows: usize,
    pub config: Rect,
    pub info: Rect,
}

pub fn layout(body: Rect, shown: usize) -> RunsLayout {
    let table_h = (shown.max(1) as u16 + 3).clamp(4, body.height / 2 + 1);
    let [table, bottom] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Min(3)]).areas(body);
    let [config, info] =
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(bottom);
    RunsLayout {
        table,
        rows: table.height.saturating_sub(3) as usize,
        config,
        info,
    }
}

/// The table row (display position) under a screen cell, if any.
pub fn row_at(l: &RunsLayout, offset: usize, col: u16, row: u16) -> Option<usize> {
    let t = l.table;
    let first = t.y + 2; // border, header
    (col > t.x && col + 1 < t.x + t.width && row >= first && row + 1 < t.y + t.height)
        .then(|| offset + (row - first) as usize)
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let rs = &app.runs_view;
    if app.runs.is_empty() {
        let msg = vec![
            Line::from(Span::styled(
                format!("no runs under {}", app.runs_dir.display()),
                t.accent(),
            )),
            Line::default(),
            Line::from("press n to launch one from a preset, or start one headless:"),
            Line::from(Span::styled("  ssmlab train --preset bigs-tiny", t.muted())),
            Line::from("runs started elsewhere (tmux, nohup) appear here by themselves."),
        ];
        f.render_widget(
            Paragraph::new(msg)
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title(" runs ")),
            area,
        );
        return;
    }
    let l = layout(area, rs.order.len());
    let len = rs.order.len();
    let pos = rs.position(app.selected);
    let offset = keep_visible(rs.offset, pos.unwrap_or(rs.offset), l.rows, len);
    let shown = &rs.order[offset.min(len)..(offset + l.rows).min(len)];
    // column widths from the content shown, the name column gets what is left
    let inner = l.table.width.saturating_sub(2) as usize;
    let steps: Vec<String> = shown
        .iter()
        .map(|&i| format!("{}/{}", app.runs[i].step(), app.runs[i].total_steps()))
        .collect();
    let step_w = steps.iter().map(|s| s.len()).max().unwrap_or(4).max(4);
    let state_w = shown
        .iter()
        .map(|&i| app.runs[i].state_label().len())
        .max()
        .unwrap_or(5)
        .max(5);
    // (header, width, priority: dropped first when the name would get under 10 columns)
    let sweep_w = shown
        .iter()
        .filter_map(|&i| app.runs[i].sweep.as_deref())
        .map(|s| sanitize(s).chars().count())
        .max();
    let mut cols: Vec<(&str, usize, u8)> = vec![
        ("model", 8, 2),
        ("state", state_w, 9),
        ("step", step_w, 8),
        ("loss", 6, 7),
        ("eval", 6, 5),
        ("acc/CAS", 7, 6),
        ("tok/s", 6, 3),
        ("age", 4, 4),
    ];
    if let Some(w) = sweep_w {
        // only when a shown run belongs to a sweep; the first column dropped when narrow
        cols.insert(0, ("sweep", w.clamp(5, 16), 1));
    }
    let name_max = shown
        .iter()
        .map(|&i| sanitize(&app.runs[i].id).chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    let fixed =
        |cols: &[(&str, usize, u8)]| -> usize { cols.iter().map(|c| c.1 + 1).sum::<usize>() + 2 };
    while inner.saturating_sub(fixed(&cols)) < 10.min(name_max) && cols.len() > 2 {
        let drop = cols
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.2)
            .map(|(i, _)| i)
            .unwrap_or(0);
        cols.remove(drop);
    }
    let name_w = inner
        .saturating_sub(fixed(&cols))
        .min(name_max.max(8))
        .max(3);
    let has = |h: &str| cols.iter().any(|c| c.0 == h);
    let mut header = vec!["".to_string(), "run".to_string()];
    header.extend(cols.iter().map(|c| {
        if rs.sort.label() == c.0 {
            format!("{}{}", c.0, if rs.reverse { "↓" } else { "↑" })
        } else {
            c.0.to_string()
        }
    }));
    if rs.sort == SortKey::Name && rs.reverse {
        header[1] = "run↓".into();
    }
    let header = Row::new(header).style(t.muted());
    let rows: Vec<Row> = shown
        .iter()
        .zip(&steps)
        .map(|(&i, step)| {
            let r = &app.runs[i];
            let mark = if app.marked.contains(&r.id) {
                "●"
            } else {
                " "
            };
            let eval = r.last_eval();
            let state = r.state_label();
            let color = Style::default().fg(t.run_color(&r.id));
            let mut cells = vec![
                Cell::from(Span::styled(mark, color)),
                Cell::from(Span::styled(fit(&sanitize(&r.id), name_w), color)),
            ];
            if has("sweep") {
                let w = sweep_w.unwrap_or(5).clamp(5, 16);
                cells.push(Cell::from(
                    r.sweep
                        .as_deref()
                        .map_or("-".into(), |s| fit(&sanitize(s), w)),
                ));
            }
            if has("model") {
                cells.push(Cell::from(crate::runs::family_label(&r.model)));
            }
            cells.push(Cell::from(Span::styled(
                state.clone(),
                t.state_style(&state),
            )));
            cells.push(Cell::from(step.clone()));
            if has("loss") {
                cells.push(Cell::from(
                    r.last_loss()
                        .map_or("-".into(), |v| fit(&format!("{v:.3}"), 6)),
                ));
            }
            if has("eval") {
                cells.push(Cell::from(
                    eval.map_or("-".into(), |e| fit(&format!("{:.3}", e.0), 6)),
                ));
            }
            if has("acc/CAS") {
                cells.push(Cell::from(
                    r.acc_or_cas()
                        .map_or("-".into(), |a| format!("{:.1}%", a * 100.0)),
                ));
            }
            if has("tok/s") {
                cells.push(Cell::from(r.tokens_per_s().map_or("-".into(), fmt_num)));
            }
            if has("age") {
                cells.push(Cell::from(age(r.age_s)));
            }
            let row = Row::new(cells);
            if i == app.selected {
                row.style(t.selected())
            } else {
                row
            }
        })
        .collect();
    let mut widths = vec![Constraint::Length(1), Constraint::Length(name_w as u16)];
    widths.extend(cols.iter().map(|c| Constraint::Length(c.1 as u16)));
    let range = if len == 0 {
        "none".to_string()
    } else if len > l.rows {
        format!("{}–{} of {len}", offset + 1, (offset + l.rows).min(len))
    } else {
        format!("{len}")
    };
    let extra = rs.describe(app.runs.len());
    let title = if extra.is_empty() {
        format!(" runs {range} ")
    } else {
        format!(" runs {range} · {extra} ")
    };
    let mut table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(Block::default().borders(Borders::ALL).title(title));
    if len == 0 {
        table = Table::new(
            vec![Row::new(vec![Cell::from(Span::styled(
                format!(
                    "no run matches `{}` (Esc in the filter clears it)",
                    sanitize(&rs.filter)
                ),
                t.warn_style(),
            ))])],
            [Constraint::Min(10)],
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" runs · {} ", rs.describe(app.runs.len()))),
        );
    }
    f.render_widget(table, l.table);
    if len > l.rows {
        let mut sb = ScrollbarState::new(len.saturating_sub(l.rows)).position(offset);
        f.render_stateful_widget(
            Scrollbar::new(ScrollbarOrientation::VerticalRight)
                .begin_symbol(None)
                .end_symbol(None),
            l.table.inner(Margin {
                vertical: 1,
                horizontal: 0,
            }),
            &mut sb,
        );
    }
    if pos.is_some() {
        draw_details(f, app, &l);
    }
}

fn draw_details(f: &mut Frame, app: &App, l: &RunsLayout) {
    let t = &app.theme;
    let Some(r) = app.selected_run() else { return };
    let (left, right) = (l.config, l.info);
    let cfg: Vec<Line> = r
        .config_text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let l = sanitize(l).into_owned();
            if l.starts_with('[') {
                Line::from(Span::styled(l, t.accent()))
            } else {
                Line::from(l)
            }
        })
        .collect();
    let visible = left.height.saturating_sub(2) as usize;
    let scroll = app
        .runs_view
        .details_scroll
        .min(cfg.len().saturating_sub(visible));
    let more = super::scroll_position("lines", scroll, visible, cfg.len())
        .map_or_else(String::new, |p| format!("{p} (J/K) "));
    let title_w = (left.width as usize).saturating_sub(18);
    f.render_widget(
        Paragraph::new(cfg).scroll((scroll as u16, 0)).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(
                    " {} · config.toml ",
                    fit(&sanitize(&r.id), title_w)
                ))
                .title_bottom(Line::from(more).right_aligned()),
        ),
        left,
    );
    let mut info = vec![Line::from(vec![
        Span::styled("state ", t.muted()),
        Span::styled(r.state_label(), t.state_style(&r.state_label())),
    ])];
    if let Some(s) = &r.status {
        info.push(Line::from(vec![
            Span::styled("pid ", t.muted()),
            Span::raw(s.pid.to_string()),
        ]));
        if let Some(m) = &s.message {
            info.push(Line::from(Span::styled(
                sanitize(m).into_owned(),
                t.muted(),
            )));
        }
    }
    if r.lost {
        info.push(Line::from(Span::styled(
            "process gone without a final status (killed?); --resume continues it",
            t.warn_style(),
        )));
    }
    if r.loading {
        info.push(Line::from(Span::styled(
            format!(
                "metrics.jsonl is large: its last {} records are shown, the rest is being read",
                r.metrics.len()
            ),
            t.muted(),
        )));
    }
    if !r.bad_lines.is_empty() {
        info.push(Line::from(Span::styled(
            format!(
                "metrics.jsonl: {} unreadable line(s) skipped (line {})",
                r.bad_lines.len(),
                r.bad_lines[0]
            ),
            t.warn_style(),
        )));
    }
    info.push(Line::from(Span::styled("checkpoints", t.muted())));
    let best = r.status.as_ref().and_then(|s| s.best_checkpoint.clone());
    for c in r.checkpoints.iter().rev() {
        let name = format!("step-{c}");
        let tag = if best.as_deref() == Some(name.as_str()) {
            " (best)"
        } else {
            ""
        };
        info.push(Line::from(format!("  {name}{tag}")));
    }
    if r.checkpoints.is_empty() {
        info.push(Line::from("  none yet"));
    }
    f.render_widget(
        Paragraph::new(info)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(" run ")),
        right,
    );
}

/// `key = value` pairs of a TOML text, with dotted keys.
fn flatten(text: &str) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            v => out.push((prefix.to_string(), v.to_string())),
        }
    }
    let mut out = Vec::new();
    if let Ok(t) = text.parse::<toml::Table>() {
        walk("", &toml::Value::Table(t), &mut out);
    }
    out
}

/// The keys whose values differ between two config texts: (key, a, b).
pub fn config_diff(a: &str, b: &str) -> Vec<(String, String, String)> {
    let (fa, fb) = (flatten(a), flatten(b));
    let mut keys: Vec<&String> = fa.iter().chain(&fb).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    let get = |f: &[(String, String)], k: &str| {
        f.iter()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "—".into())
    };
    keys.into_iter()
        .filter_map(|k| {
            let (va, vb) = (get(&fa, k), get(&fb, k));
            (va != vb).then(|| (k.clone(), va, vb))
        })
        .collect()
}

/// The config-diff overlay: one row per differing key, scrolled by the overlay keys.
pub fn draw_diff(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let runs: Vec<_> = app
        .runs
        .iter()
        .filter(|r| app.marked.contains(&r.id))
        .collect();
    f.render_widget(Clear, area);
    let (a, b) = match runs.as_slice() {
        [a, b] => (a, b),
        _ => return,
    };
    let diff = config_diff(&a.config_text, &b.config_text);
    let inner = area.width.saturating_sub(2) as usize;
    let kw = (inner * 34 / 100).saturating_sub(1);
    let vw = (inner * 33 / 100).saturating_sub(1);
    let visible = area.height.saturating_sub(4) as usize; // borders, header, bottom title
    let scroll = app.popup_scroll.min(diff.len().saturating_sub(visible));
    let mut rows: Vec<Row> = diff
        .iter()
        .skip(scroll)
        .take(visible)
        .map(|(k, va, vb)| {
            Row::new(vec![
                fit(&sanitize(k), kw),
                fit(&sanitize(va), vw),
                fit(&sanitize(vb), vw),
            ])
        })
        .collect();
    if rows.is_empty() {
        rows.push(Row::new(vec!["(identical configurations)".to_string()]));
    }
    let pos = super::scroll_position("keys", scroll, visible, diff.len()).map_or_else(
        || format!(" {} differing keys ", diff.len()),
        |p| format!(" {p} · j/k PgUp/PgDn scroll "),
    );
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(kw as u16),
                Constraint::Length(vw as u16),
                Constraint::Length(vw as u16),
            ],
        )
        .header(
            Row::new(vec![
                "key".to_string(),
                fit(&sanitize(&a.id), vw),
                fit(&sanitize(&b.id), vw),
            ])
            .style(t.accent()),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" config diff (Esc closes) ")
                .title_bottom(Line::from(pos).right_aligned()),
        ),
        area,
    );
}
