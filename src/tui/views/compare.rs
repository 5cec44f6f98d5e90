//! The Compare view: BiGS against its attention twin. A table of the compared runs
//! (parameters, analytic FLOPs per token, tokens/s, final eval loss and accuracy), their eval
//! loss overlaid by tokens seen or by wall time, and the time per token of a training step at
//! L = 128 … 4096 for both models, measured on a worker (`t`), with the crossover length.

use crate::text::sanitize;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::symbols::Marker;
use ratatui::text::Line;
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, GraphType, Paragraph, Row, Table};

use crate::compare::{RunRow, ScalingPoint, crossover, run_row};
use crate::runs::index::RunSummary;
use crate::tui::app::App;
use crate::tui::chart::fmt_num;
use crate::tui::keymap::Action;
use crate::tui::pane::{Ctx, Outcome, Pane};
use crate::tui::worker::{CompareJob, CompareMsg, WorkerMsg};
use crossterm::event::MouseEvent;
use std::collections::BTreeSet;

/// What the view holds between frames.
#[derive(Debug, Default)]
pub struct CompareState {
    /// Overlay by wall time instead of tokens seen.
    pub by_wall: bool,
    /// Measured points of the scaling comparison (of `scaling_models`).
    pub points: Vec<ScalingPoint>,
    /// (BiGS run, attention run) being or last measured.
    pub scaling_models: Option<(String, String)>,
    pub measuring: bool,
    pub error: Option<String>,
    /// Generation of the current measurement (a newer request abandons an older one).
    pub generation: u64,
    /// First table row shown (PgUp/PgDn, Home/End, the wheel).
    pub scroll: usize,
}

/// The runs the view compares: the marked masked-LM runs, else every masked-LM run.
pub fn compared<'a>(
    runs: &'a [RunSummary],
    marked: &BTreeSet<String>,
) -> Vec<(&'a RunSummary, RunRow)> {
    let rows = |marked_only: bool| -> Vec<(&RunSummary, RunRow)> {
        runs.iter()
            .filter(|r| !marked_only || marked.contains(&r.id))
            .filter_map(|r| run_row(r).map(|row| (r, row)))
            .collect()
    };
    let marked = rows(true);
    if marked.is_empty() {
        rows(false)
    } else {
        marked
    }
}

impl CompareState {
    /// `t`: time both models (one BiGS, one attention run among the compared runs) at
    /// L = 128 … 4096 on the worker.
    pub fn start_scaling(&mut self, cx: &mut Ctx) {
        let texts: Vec<(String, String)> = compared(cx.runs, cx.marked)
            .iter()
            .map(|(r, _)| (r.id.clone(), r.config_text.clone()))
            .collect();
        let Some([b, a]) = crate::compare::scaling_pair(&texts) else {
            self.error = Some(
                "the scaling needs a BiGS and an attention run among the compared runs \
                 (ssmlab compare --preset-pair bigs-tiny,bert-tiny)"
                    .into(),
            );
            return;
        };
        self.generation += 1;
        self.points.clear();
        self.error = None;
        self.measuring = true;
        self.scaling_models = Some((b.0.clone(), a.0.clone()));
        let job = CompareJob {
            generation: self.generation,
            runs: vec![b, a],
        };
        match &cx.workers.compare {
            Some(tx) if tx.send(job).is_ok() => {}
            _ => {
                self.measuring = false;
                self.error = Some("the scaling worker is not running".into());
            }
        }
    }

    /// Scrolls the table by `d` rows (clamped to the compared runs).
    fn scroll_by(&mut self, d: i64, cx: &Ctx) {
        let max = compared(cx.runs, cx.marked).len() as i64;
        self.scroll = (self.scroll as i64 + d).clamp(0, max) as usize;
    }
}

impl Pane for CompareState {
    fn handle(&mut self, action: Action, cx: &mut Ctx) -> Outcome {
        let page = (cx.body.height as i64 - 4).max(1);
        let d = match action {
            Action::CompareX => {
                self.by_wall = !self.by_wall;
                return Outcome::Done;
            }
            Action::CompareScaling => {
                self.start_scaling(cx);
                return Outcome::Done;
            }
            a => match super::scroll_delta(a, page) {
                Some(d) => d,
                None => return Outcome::Pass,
            },
        };
        self.scroll_by(d, cx);
        Outcome::Done
    }

    /// A message of the scaling worker (stale generations are dropped).
    fn on_msg(&mut self, m: WorkerMsg, _cx: &mut Ctx) {
        let WorkerMsg::Compare(m) = m else { return };
        match m {
            CompareMsg::Point(g, p) if g == self.generation => self.points.push(p),
            CompareMsg::Done(g) if g == self.generation => self.measuring = false,
            CompareMsg::Failed(g, e) if g == self.generation => {
                self.measuring = false;
                self.error = Some(e);
            }
            _ => {}
        }
    }

    fn on_mouse(&mut self, m: MouseEvent, cx: &mut Ctx) -> Outcome {
        match super::wheel(&m) {
            0 => Outcome::Pass,
            d => {
                self.scroll_by(3 * d, cx);
                Outcome::Done
            }
        }
    }

    fn draw(&self, f: &mut Frame, area: Rect, app: &App) {
        draw(f, app, area)
    }
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let runs = compared(&app.runs, &app.marked);
    if runs.is_empty() {
        let msg = "no masked-LM runs to compare. Launch a pair:\n  ssmlab compare --preset-pair bigs-tiny,bert-tiny\nthen mark runs with space to pick which ones are compared (default: all).";
        f.render_widget(
            Paragraph::new(msg).block(Block::default().borders(Borders::ALL).title(" Compare ")),
            area,
        );
        return;
    }
    let table_h = (runs.len() as u16 + 3).min(area.height / 3).max(4);
    let [top, mid] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Min(6)]).areas(area);
    draw_table(f, app, &runs, top);
    let [chart, scaling] =
        Layout::horizontal([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(mid);
    draw_chart(f, app, &runs, chart);
    draw_scaling(f, app, scaling);
}

fn draw_table(f: &mut Frame, app: &App, runs: &[(&RunSummary, RunRow)], area: Rect) {
    let t = &app.theme;
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    let visible = (area.height as usize).saturating_sub(3).max(1);
    let scroll = app.compare.scroll.min(runs.len().saturating_sub(visible));
    let name_w = (area.width as usize)
        .saturating_sub(2 + 9 + 5 + 7 + 10 + 7 + 7 + 6 + 9 + 6)
        .max(8);
    let rows = runs.iter().skip(scroll).take(visible).map(|(_, r)| {
        Row::new(vec![
            crate::tui::views::runs::fit(&sanitize(&r.id), name_w),
            sanitize(&r.model).into_owned(),
            fmt_num(r.parameters as f64),
            format!("{:.2}", r.flops_per_token / 1e6),
            opt(r.tokens_per_s, 0),
            fmt_num(r.tokens as f64),
            format!("{:.0}", r.wall_s),
            opt(r.eval_loss, 3),
            opt(r.eval_acc.map(|a| a * 100.0), 1),
        ])
        .style(Style::default().fg(t.run_color(&r.id)))
    });
    let header = Row::new(vec![
        "run",
        "model",
        "params",
        "MFLOP/tok",
        "tok/s",
        "tokens",
        "wall s",
        "eval loss",
        "acc %",
    ])
    .style(t.accent());
    let widths = [
        Constraint::Min(12),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(6),
    ];
    let pos = crate::tui::views::scroll_position("runs", scroll, visible, runs.len())
        .map_or_else(String::new, |p| format!(" {p} (PgUp/PgDn) "));
    f.render_widget(
        Table::new(rows, widths).header(header).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Compare: do we need attention? (marked runs, else all masked LMs) ")
                .title_bottom(Line::from(pos).right_aligned()),
        ),
        area,
    );
}

fn draw_chart(f: &mut Frame, app: &App, runs: &[(&RunSummary, RunRow)], area: Rect) {
    let t = &app.theme;
    let by_wall = app.compare.by_wall;
    let series: Vec<Vec<(f64, f64)>> = runs
        .iter()
        .map(|(r, _)| {
            r.metrics
                .iter()
                .filter_map(|m| {
                    let x = if by_wall { m.wall_s } else { m.tokens as f64 };
                    m.eval_loss.filter(|y| y.is_finite()).map(|y| (x, y))
                })
                .collect()
        })
        .collect();
    let xlabel = if by_wall { "wall time (s)" } else { "tokens" };
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" eval loss vs {xlabel} (x toggles) "));
    let pts = series.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(*x), x1.max(*x), y0.min(*y), y1.max(*y));
    }
    if x0 > x1 {
        f.render_widget(Paragraph::new("no eval points yet").block(block), area);
        return;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let marker = if app.ascii {
        Marker::Dot
    } else {
        Marker::Braille
    };
    let datasets = series
        .iter()
        .zip(runs)
        .map(|(s, (r, _))| {
            Dataset::default()
                .name(sanitize(&r.id).into_owned())
                .marker(marker)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(t.run_color(&r.id)))
                .data(s)
        })
        .collect();
    let chart = Chart::new(datasets)
        .block(block)
        .x_axis(
            Axis::default()
                .bounds([x0, x1])
                .labels([fmt_num(x0), fmt_num(x1)]),
        )
        .y_axis(
            Axis::default()
                .bounds([y0 - pad, y1 + pad])
                .labels([format!("{:.2}", y0 - pad), format!("{:.2}", y1 + pad)]),
        );
    f.render_widget(chart, area);
}

fn draw_scaling(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let c = &app.compare;
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" µs/token of a training step (s) ");
    let Some((bigs, bert)) = &c.scaling_models else {
        let msg = c.error.clone().unwrap_or_else(|| {
            "press t to time a training step of a BiGS and an attention run at L = 128 … 4096 \
             (8192 tokens per step)"
                .into()
        });
        f.render_widget(
            Paragraph::new(msg)
                .wrap(ratatui::widgets::Wrap { trim: true })
                .block(block),
            area,
        );
        return;
    };
    let at = |m: &str, l: usize| {
        c.points
            .iter()
            .find(|p| p.model == *m && p.seq_len == l)
            .map(|p| p.s_per_token * 1e6)
    };
    let mut ls: Vec<usize> = c.points.iter().map(|p| p.seq_len).collect();
    ls.dedup();
    let rows = ls.iter().map(|&l| {
        let (b, a) = (at(bigs, l), at(bert, l));
        let cell = |v: Option<f64>| v.map_or("…".into(), |v| format!("{v:.1}"));
        let ratio = match (b, a) {
            (Some(b), Some(a)) => format!("{:.2}", a / b),
            _ => "".into(),
        };
        Row::new(vec![l.to_string(), cell(b), cell(a), ratio])
    });
    let header = Row::new(vec![
        "L".to_string(),
        trunc(bigs, 10),
        trunc(bert, 10),
        "attn/ssm".into(),
    ])
    .style(t.accent());
    let foot = if let Some(e) = &c.error {
        Line::styled(e.clone(), t.warn_style())
    } else if c.measuring {
        Line::styled("measuring…", t.muted())
    } else {
        match crossover(&c.points, bigs, bert) {
            Some(l) => Line::styled(format!("BiGS cheaper from L = {l}"), t.accent()),
            None => Line::styled("BiGS not cheaper at any L yet", t.muted()),
        }
    };
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [tab, line] = Layout::vertical([Constraint::Min(2), Constraint::Length(1)]).areas(inner);
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(5),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(8),
            ],
        )
        .header(header),
        tab,
    );
    f.render_widget(Paragraph::new(foot), line);
}

fn trunc(s: &str, n: usize) -> String {
    crate::tui::views::runs::fit(s, n)
}
