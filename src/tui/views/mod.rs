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

/// The wheel's direction in a mouse event: 1 down, -1 up, 0 for any other event.
pub fn wheel(m: &crossterm::event::MouseEvent) -> i64 {
    use crossterm::event::MouseEventKind;
    match m.kind {
        MouseEventKind::ScrollDown => 1,
        MouseEventKind::ScrollUp => -1,
        _ => 0,
    }
}

/// How far PgUp/PgDn/Home/End scroll a pane with `page` lines to a page (None: another
/// action). Home and End go far enough for any length; the pane clamps.
pub fn scroll_delta(action: crate::tui::keymap::Action, page: i64) -> Option<i64> {
    use crate::tui::keymap::Action;
    match action {
        Action::PageUp => Some(-page),
        Action::PageDown => Some(page),
        Action::First => Some(-(i64::MAX / 4)),
        Action::Last => Some(i64::MAX / 4),
        _ => None,
    }
}

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
    app.pane(app.view).draw(f, body, app);
    draw_status(f, app, status);
    draw_bar(f, app, bar);
    if let Some(p) = &app.popup {
        draw_popup(f, app, p, area);
    }
}

/// The tab labels and where each starts and ends on the tab bar (for drawing and clicks).
fn tab_spans() -> Vec<(View, String, u16, u16)> {
    let mut x = " ssmlab ".len() as u16;
    View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let label = format!(" {} {} ", i + 1, v.title());
            let w = label.chars().count() as u16;
            let span = (*v, label, x, x + w);
            x += w;
            span
        })
        .collect()
}

/// The view whose tab is at column `col` of the tab bar (the top row of `area`).
pub fn tab_at(area: Rect, col: u16) -> Option<View> {
    tab_spans()
        .into_iter()
        .find(|(_, _, a, b)| col >= area.x + a && col < area.x + b)
        .map(|(v, ..)| v)
}

fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let mut spans = vec![Span::styled(" ssmlab ", t.accent())];
    for (v, label, ..) in tab_spans() {
        let style = if v == app.view {
            t.selected()
        } else {
            t.muted()
        };
        spans.push(Span::styled(label, style));
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
            if app.runs_view.order.len() < app.runs.len() {
                format!(
                    " {} run(s), {} shown, {} marked",
                    app.runs.len(),
                    app.runs_view.order.len(),
                    app.marked.len()
                )
            } else {
                format!(" {} run(s), {} marked", app.runs.len(), app.marked.len())
            },
            t.muted(),
        ),
    };
    f.render_widget(Paragraph::new(Line::from(text)), area);
}

fn draw_bar(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let mut spans = Vec::new();
    let mut items = app.keymap.bar(app.scope());
    // the help key always shows, last: what does not fit is in the help overlay
    let help = items
        .iter()
        .position(|(_, l)| *l == "help")
        .map(|i| items.remove(i));
    let item_w = |(k, l): &(String, &str)| k.chars().count() + l.chars().count() + 4;
    let room = (area.width as usize).saturating_sub(help.as_ref().map_or(0, item_w) + 2);
    let mut used = 0usize;
    let mut cut = false;
    for it in &items {
        if used + item_w(it) > room {
            cut = true;
            break;
        }
        used += item_w(it);
        spans.push(Span::styled(format!(" {} ", it.0), t.selected()));
        spans.push(Span::styled(format!(" {} ", it.1), t.muted()));
    }
    if cut {
        spans.push(Span::styled("… ", t.muted()));
    }
    if let Some((k, l)) = help {
        spans.push(Span::styled(format!(" {k} "), t.selected()));
        spans.push(Span::styled(format!(" {l} "), t.muted()));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The help overlay's geometry in `area`: its rectangle, whether it uses two columns, the rows
/// it shows and the rows it has.
fn help_layout(app: &App, area: Rect) -> (Rect, bool, usize, usize) {
    let n = app.keymap.help(app.scope()).len();
    let one = centered(area, 70, n as u16 + 3);
    if n + 3 <= one.height as usize {
        return (one, false, n, n);
    }
    // too many keys for the height: two columns, then scrolling
    let half = n.div_ceil(2);
    let r = centered(area, 120, half as u16 + 3);
    (r, true, (r.height as usize).saturating_sub(3), half)
}

/// How far an overlay can scroll at the current terminal size.
pub fn popup_max_scroll(app: &App, p: &Popup) -> usize {
    let area = app.viewport;
    match p {
        Popup::Help => {
            let (_, _, visible, total) = help_layout(app, area);
            total.saturating_sub(visible)
        }
        Popup::Diff => {
            let marked: Vec<_> = app
                .runs
                .iter()
                .filter(|r| app.marked.contains(&r.id))
                .collect();
            let n = match marked.as_slice() {
                [a, b] => runs::config_diff(&a.config_text, &b.config_text).len(),
                _ => 0,
            };
            let visible = (diff_area(area).height as usize).saturating_sub(4);
            n.saturating_sub(visible)
        }
        _ => 0,
    }
}

fn diff_area(area: Rect) -> Rect {
    centered(area, 100, 30)
}

/// The help overlay: every key of the view (and the global ones), in one or two columns,
/// scrolled by the overlay keys when even two columns do not fit.
fn draw_help(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let items = app.keymap.help(app.scope());
    let (r, two, visible, total) = help_layout(app, area);
    let scroll = app.popup_scroll.min(total.saturating_sub(visible));
    let kw = items
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(4)
        .min(16);
    let col_w = if two {
        (r.width.saturating_sub(2) / 2) as usize
    } else {
        r.width.saturating_sub(2) as usize
    };
    let cell = |i: usize| -> Vec<Span> {
        match items.get(i) {
            Some((k, h)) => {
                let room = col_w.saturating_sub(kw + 3);
                vec![
                    Span::styled(format!("{:>kw$}  ", runs::fit(k, kw)), t.accent()),
                    Span::styled(format!("{:<room$} ", runs::fit(h, room)), t.text()),
                ]
            }
            None => vec![],
        }
    };
    let head = scroll_position("keys", scroll, visible, total).map_or_else(
        || "keys (Esc or any other key closes)".to_string(),
        |p| format!("{p} · j/k PgUp/PgDn scroll · Esc closes"),
    );
    let mut lines = vec![Line::from(Span::styled(head, t.muted()))];
    for i in scroll..(scroll + visible).min(total) {
        let mut spans = cell(i);
        if two {
            spans.extend(cell(i + total));
        }
        lines.push(Line::from(spans));
    }
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" help ")),
        r,
    );
}

/// Where a scrolled list is: "lines 4–11 of 54" (`what` = "lines"), or None when all of it
/// shows. One wording for every scrollable pane and overlay.
pub fn scroll_position(what: &str, first: usize, visible: usize, total: usize) -> Option<String> {
    (total > visible).then(|| {
        format!(
            "{what} {}–{} of {total}",
            first + 1,
            (first + visible).min(total)
        )
    })
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
        Popup::Help => draw_help(f, app, area),
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
        Popup::Diff => runs::draw_diff(f, app, diff_area(area)),
        Popup::Message(m) => {
            // tall enough for the text wrapped at the overlay's width
            let w = area.width.saturating_sub(4).min(90);
            let inner = w.saturating_sub(2).max(1) as usize;
            let rows: usize = m
                .lines()
                .map(|l| l.chars().count().div_ceil(inner).max(1))
                .sum();
            let r = centered(area, w, rows as u16 + 2);
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
