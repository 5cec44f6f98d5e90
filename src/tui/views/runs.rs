//! The runs view: every run with its state, progress and latest numbers; the selected run's
//! configuration and checkpoints; a diff of two runs' configurations.

use crate::text::sanitize;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};

use crate::tui::app::App;
use crate::tui::chart::fmt_num;

fn age(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) if s < 172_800.0 => format!("{:.0}h", s / 3600.0),
        Some(s) => format!("{:.0}d", s / 86400.0),
    }
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let table_h = (app.runs.len() as u16 + 3).clamp(4, area.height / 2 + 1);
    let [top, bottom] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Min(3)]).areas(area);
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
    let header = Row::new([
        "", "run", "state", "step", "loss", "eval", "acc", "tok/s", "age",
    ])
    .style(t.muted());
    let rows: Vec<Row> = app
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mark = if app.marked.contains(&r.id) {
                "●"
            } else {
                " "
            };
            let eval = r.last_eval();
            let state = r.state_label();
            let row = Row::new(vec![
                Cell::from(Span::styled(mark, Style::default().fg(t.run_color(&r.id)))),
                Cell::from(Span::styled(
                    sanitize(&r.id).into_owned(),
                    Style::default().fg(t.run_color(&r.id)),
                )),
                Cell::from(Span::styled(state.clone(), t.state_style(&state))),
                Cell::from(format!("{}/{}", r.step(), r.total_steps())),
                Cell::from(r.last_loss().map_or("-".into(), |v| format!("{v:.3}"))),
                Cell::from(eval.map_or("-".into(), |e| format!("{:.3}", e.0))),
                Cell::from(
                    eval.and_then(|e| e.1)
                        .map_or("-".into(), |a| format!("{:.1}%", a * 100.0)),
                ),
                Cell::from(r.tokens_per_s().map_or("-".into(), fmt_num)),
                Cell::from(age(r.age_s)),
            ]);
            if i == app.selected {
                row.style(t.selected())
            } else {
                row
            }
        })
        .collect();
    let widths = [
        Constraint::Length(1),
        Constraint::Min(10),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(4),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .column_spacing(1)
            .block(Block::default().borders(Borders::ALL).title(" runs ")),
        top,
    );
    draw_details(f, app, bottom);
}

fn draw_details(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let Some(r) = app.selected_run() else { return };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(area);
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
    f.render_widget(
        Paragraph::new(cfg).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {} · config.toml ", sanitize(&r.id))),
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
    let mut rows: Vec<Row> = diff
        .iter()
        .map(|(k, va, vb)| Row::new(vec![k.clone(), va.clone(), vb.clone()]))
        .collect();
    if rows.is_empty() {
        rows.push(Row::new(vec!["(identical configurations)".to_string()]));
    }
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Percentage(34),
                Constraint::Percentage(33),
                Constraint::Percentage(33),
            ],
        )
        .header(Row::new(vec!["key".to_string(), a.id.clone(), b.id.clone()]).style(t.accent()))
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" config diff (any key closes) "),
        ),
        area,
    );
}
