//! The curves view: live metrics of one or more runs, smoothed (debiased EMA on the full
//! series) over a faint raw line, min/max-downsampled to the chart width, log y optional,
//! x by step, tokens or wall time, a cursor readout, and a progress gauge with ETA.

use crate::text::sanitize;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, Gauge, GraphType, Paragraph};

use crate::runs::index::RunSummary;
use crate::tui::app::{App, CurvesState};
use crate::tui::chart::{ema_debiased, fmt_num, log_ticks, minmax_downsample};

/// One run's plotted series: (raw, smoothed) points in plot coordinates (log10 y if log).
pub struct Series {
    pub id: String,
    pub raw: Vec<(f64, f64)>,
    pub smooth: Vec<(f64, f64)>,
}

/// What a cached series was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesKey {
    id: String,
    points: usize,
    metric: crate::tui::app::Metric,
    x: crate::tui::app::XAxis,
    log_y: bool,
    smoothing: u64,
    zoom: bool,
    buckets: usize,
}

/// Series computed for earlier frames; recomputed only when a run's data or a setting changes.
#[derive(Default)]
pub struct SeriesCache(std::cell::RefCell<Vec<(SeriesKey, std::rc::Rc<Series>)>>);

impl SeriesCache {
    fn get(&self, r: &RunSummary, c: &CurvesState, buckets: usize) -> std::rc::Rc<Series> {
        let key = SeriesKey {
            id: r.id.clone(),
            points: r.metrics.len(),
            metric: c.metric,
            x: c.x,
            log_y: c.log_y,
            smoothing: c.smoothing.to_bits(),
            zoom: c.zoom_recent,
            buckets,
        };
        let mut v = self.0.borrow_mut();
        if let Some((_, s)) = v.iter().find(|(k, _)| *k == key) {
            return s.clone();
        }
        let s = std::rc::Rc::new(series(r, c, buckets));
        v.retain(|(k, _)| k.id != key.id);
        v.push((key, s.clone()));
        s
    }

    pub fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

/// Builds the series of a run for the current settings, `buckets` wide.
pub fn series(r: &RunSummary, c: &CurvesState, buckets: usize) -> Series {
    let pts: Vec<(f64, f64)> = r
        .metrics
        .iter()
        .filter_map(|m| c.metric.get(m).map(|y| (c.x.get(m), y)))
        .filter(|(_, y)| y.is_finite() && (!c.log_y || *y > 0.0))
        .collect();
    let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let sm = ema_debiased(&ys, c.smoothing);
    let tr = |y: f64| if c.log_y { y.log10() } else { y };
    let mut raw: Vec<(f64, f64)> = pts.iter().map(|(x, y)| (*x, tr(*y))).collect();
    let mut smooth: Vec<(f64, f64)> = pts
        .iter()
        .zip(&sm)
        .map(|((x, _), s)| (*x, tr(*s)))
        .collect();
    if c.zoom_recent && raw.len() > 10 {
        let keep = (raw.len() / 5).max(10);
        raw.drain(..raw.len() - keep);
        smooth.drain(..smooth.len() - keep);
    }
    Series {
        id: r.id.clone(),
        raw: minmax_downsample(&raw, buckets),
        smooth: minmax_downsample(&smooth, buckets),
    }
}

fn bounds(all: &[&Series]) -> Option<([f64; 2], [f64; 2])> {
    let pts = all.iter().flat_map(|s| s.raw.iter().chain(&s.smooth));
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    let mut any = false;
    for (x, y) in pts {
        any = true;
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if !any {
        return None;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    Some(([x0, x1], [y0 - pad, y1 + pad]))
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let c = &app.curves;
    let [chart_area, readout, gauge] = Layout::vertical([
        Constraint::Min(6),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let runs = app.plotted();
    let buckets = (chart_area.width as usize).saturating_sub(10) * 2;
    let all: Vec<std::rc::Rc<Series>> = runs
        .iter()
        .map(|r| app.series_cache.get(r, c, buckets.max(2)))
        .collect();
    let title = format!(
        " {} vs {} · smoothing {:.2}{}{} ",
        c.metric.label(),
        c.x.label(),
        c.smoothing,
        if c.log_y { " · log y" } else { "" },
        if c.zoom_recent { " · recent" } else { "" }
    );
    let block = Block::default().borders(Borders::ALL).title(title);
    let refs: Vec<&Series> = all.iter().map(|s| s.as_ref()).collect();
    let Some((xb, yb)) = bounds(&refs) else {
        let msg = if runs.is_empty() {
            "no run selected: pick one in the Runs view (1)".to_string()
        } else {
            format!("no {} points yet for {}", c.metric.label(), runs[0].id)
        };
        f.render_widget(Paragraph::new(msg).block(block), chart_area);
        draw_gauge(f, app, gauge);
        return;
    };
    let marker = if app.ascii {
        Marker::Dot
    } else {
        Marker::Braille
    };
    let mut datasets = Vec::new();
    for s in &all {
        let col = t.run_color(&s.id);
        datasets.push(
            Dataset::default()
                .marker(marker)
                .graph_type(GraphType::Line)
                .style(t.muted())
                .data(&s.raw),
        );
        datasets.push(
            Dataset::default()
                .name(sanitize(&s.id).into_owned())
                .marker(marker)
                .graph_type(GraphType::Line)
                .style(Style::default().fg(col).add_modifier(Modifier::BOLD))
                .data(&s.smooth),
        );
    }
    let cursor_x = c.cursor.map(|fr| xb[0] + fr * (xb[1] - xb[0]));
    let cursor_line: Vec<(f64, f64)> = cursor_x
        .map(|x| vec![(x, yb[0]), (x, yb[1])])
        .unwrap_or_default();
    if !cursor_line.is_empty() {
        datasets.push(
            Dataset::default()
                .marker(marker)
                .graph_type(GraphType::Line)
                .style(t.accent())
                .data(&cursor_line),
        );
    }
    let ylabels: Vec<Span> = if c.log_y {
        let ticks = log_ticks(10f64.powf(yb[0]), 10f64.powf(yb[1]));
        if ticks.len() >= 2 {
            vec![
                Span::raw(fmt_num(ticks[0])),
                Span::raw(fmt_num(ticks[ticks.len() - 1])),
            ]
        } else {
            vec![
                Span::raw(fmt_num(10f64.powf(yb[0]))),
                Span::raw(fmt_num(10f64.powf(yb[1]))),
            ]
        }
    } else {
        vec![
            Span::raw(fmt_num(yb[0])),
            Span::raw(fmt_num((yb[0] + yb[1]) / 2.0)),
            Span::raw(fmt_num(yb[1])),
        ]
    };
    let chart = Chart::new(datasets)
        .block(block)
        .x_axis(Axis::default().bounds(xb).style(t.muted()).labels([
            Span::raw(fmt_num(xb[0])),
            Span::raw(fmt_num((xb[0] + xb[1]) / 2.0)),
            Span::raw(fmt_num(xb[1])),
        ]))
        .y_axis(Axis::default().bounds(yb).style(t.muted()).labels(ylabels));
    f.render_widget(chart, chart_area);

    // readout: value of each run's smoothed series at the cursor (or the latest point)
    let mut spans = vec![Span::styled(
        match cursor_x {
            Some(x) => format!(" at {} {}: ", c.x.label(), fmt_num(x)),
            None => " latest: ".into(),
        },
        t.muted(),
    )];
    for s in &all {
        let v = match cursor_x {
            Some(x) => s
                .smooth
                .iter()
                .min_by(|a, b| (a.0 - x).abs().total_cmp(&(b.0 - x).abs()))
                .map(|p| p.1),
            None => s.smooth.last().map(|p| p.1),
        };
        let v = v.map(|v| if c.log_y { 10f64.powf(v) } else { v });
        spans.push(Span::styled(
            format!("{} {}  ", sanitize(&s.id), v.map_or("-".into(), fmt_num)),
            Style::default().fg(t.run_color(&s.id)),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), readout);
    draw_gauge(f, app, gauge);
}

/// Progress of the selected run with an ETA from its recent pace.
fn draw_gauge(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let Some(r) = app.selected_run() else { return };
    let (step, total) = (r.step(), r.total_steps().max(1));
    let ratio = (step as f64 / total as f64).clamp(0.0, 1.0);
    let eta = {
        let m = &r.metrics;
        let n = m.len();
        if n >= 2 && r.state_label() == "running" {
            let (a, b) = (&m[n.saturating_sub(20)], &m[n - 1]);
            let rate = (b.step - a.step) as f64 / (b.wall_s - a.wall_s).max(1e-9);
            if rate > 0.0 {
                let s = (total - step.min(total)) as f64 / rate;
                format!(" · ETA {}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
            } else {
                String::new()
            }
        } else {
            String::new()
        }
    };
    let label = format!(
        "{} {step}/{total} ({:.0}%){eta}",
        sanitize(&r.id),
        ratio * 100.0
    );
    f.render_widget(
        Gauge::default()
            .ratio(ratio)
            .label(label)
            .gauge_style(Style::default().fg(t.run_color(&r.id))),
        area,
    );
}
