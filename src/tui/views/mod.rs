//! Drawing: one function per view, plus the frame (tabs, status line, key bar, popups).

pub mod compare;
pub mod curves;
pub mod form;
pub mod kernels;
pub mod probe;
pub mod runs;
pub mod samples;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};

use super::app::{App, Popup, View};

/// Below this the layout would break: a notice is drawn instead.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 15;

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    let t = &app.theme;
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal {}×{} is too small for ssmlab; it needs at least {MIN_WIDTH}×{MIN_HEIGHT}\n(q quits)",
            area.width, area.height
        );
        f.render_widget(
            Paragraph::new(msg)
                .style(t.warn_style())
                .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let [tabs, body, status, bar] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(5),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_tabs(f, app, tabs);
    match app.view {
        View::Runs => runs::draw(f, app, body),
        View::Curves => curves::draw(f, app, body),
        View::Probe => probe::draw(f, app, body),
        View::Kernels => kernels::draw(f, app, body),
        View::Samples => samples::draw(f, app, body),
        View::Compare => compare::draw(f, app, body),
    }
    draw_status(f, app, status);
    draw_bar(f, app, bar);
    if let Some(p) = &app.popup {
        draw_popup(f, app, p, area);
    }
}

fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let mut spans = vec![Span::styled(" ssmlab ", t.accent())];
    for (i, v) in View::ALL.iter().enumerate() {
        let style = if *v == app.view {
            t.selected()
        } else {
            t.muted()
        };
        spans.push(Span::styled(format!(" {} {} ", i + 1, v.title()), style));
    }
    let right = format!(" {} ", app.runs_dir.display());
    let used: usize = spans.iter().map(|s| s.width()).sum();
    if used + right.len() < area.width as usize {
        spans.push(Span::raw(
            " ".repeat(area.width as usize - used - right.len()),
        ));
        spans.push(Span::styled(right, t.muted()));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let text = match app.notices.last() {
        Some(n) => Span::styled(format!(" {n}"), t.warn_style()),
        None => Span::styled(
            format!(" {} run(s), {} marked", app.runs.len(), app.marked.len()),
            t.muted(),
        ),
    };
    f.render_widget(Paragraph::new(Line::from(text)), area);
}

fn draw_bar(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let mut spans = Vec::new();
    for (k, label) in app.keymap.bar(app.scope()) {
        spans.push(Span::styled(format!(" {k} "), t.selected()));
        spans.push(Span::styled(format!(" {label} "), t.muted()));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The help overlay in two columns (scopes with many keys on short terminals).
fn draw_help_columns(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let items = app.keymap.help(app.scope());
    let kw = items
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(4);
    let half = items.len().div_ceil(2);
    let r = centered(area, 120, half as u16 + 3);
    let col_w = (r.width.saturating_sub(2) / 2) as usize;
    let cell = |i: usize| -> Vec<Span> {
        match items.get(i) {
            Some((k, h)) => {
                let room = col_w.saturating_sub(kw + 3);
                let h: String = h.chars().take(room).collect();
                vec![
                    Span::styled(format!("{k:>kw$}  "), t.accent()),
                    Span::styled(format!("{h:<room$} "), t.text()),
                ]
            }
            None => vec![],
        }
    };
    let mut lines = vec![Line::from(Span::styled("keys (any key closes)", t.muted()))];
    for i in 0..half {
        let mut spans = cell(i);
        spans.extend(cell(i + half));
        lines.push(Line::from(spans));
    }
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" help ")),
        r,
    );
}

/// A centred rectangle of at most `w`×`h` inside `area`.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width.saturating_sub(2));
    let h = h.min(area.height.saturating_sub(2));
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn draw_popup(f: &mut Frame, app: &App, p: &Popup, area: Rect) {
    let t = &app.theme;
    match p {
        Popup::Launch(form) => form.draw(f, centered(area, 76, 20), t),
        Popup::Help => {
            let mut lines = vec![Line::from(Span::styled("keys (any key closes)", t.muted()))];
            for (k, h) in app.keymap.help(app.scope()) {
                lines.push(Line::from(vec![
                    Span::styled(format!("{k:>12}  "), t.accent()),
                    Span::styled(h, t.text()),
                ]));
            }
            let r = centered(area, 60, lines.len() as u16 + 2);
            if lines.len() as u16 + 2 > r.height {
                // too many keys for the height: two columns
                return draw_help_columns(f, app, area);
            }
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" help ")),
                r,
            );
        }
        Popup::Confirm { action, run } => {
            let what = match action {
                crate::runs::Control::Stop => "Stop",
                crate::runs::Control::Checkpoint => "Checkpoint",
            };
            let lines = vec![
                Line::from(Span::styled(format!("{what} run {run}?"), t.accent())),
                Line::from(match action {
                    crate::runs::Control::Stop => "It saves a checkpoint, then stops (resumable).",
                    crate::runs::Control::Checkpoint => "It saves a checkpoint now and goes on.",
                }),
                Line::default(),
                Line::from(Span::styled(
                    "y / Enter: yes    any other key: no",
                    t.muted(),
                )),
            ];
            let r = centered(area, 56, 6);
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(lines)
                    .wrap(Wrap { trim: true })
                    .block(Block::default().borders(Borders::ALL).title(" confirm ")),
                r,
            );
        }
        Popup::Diff => runs::draw_diff(f, app, centered(area, 100, 30)),
        Popup::Message(m) => {
            let r = centered(area, 60, 5);
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(m.as_str())
                    .wrap(Wrap { trim: true })
                    .style(Style::default())
                    .block(Block::default().borders(Borders::ALL)),
                r,
            );
        }
    }
}
