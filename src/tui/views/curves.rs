//! The curves view: live metrics of one or more runs, smoothed (debiased EMA on the full
//! series) over a faint raw line, min/max-downsampled to the chart width, log y optional,
//! x by step, tokens or wall time, a cursor that snaps to logged points, a readout of the
//! logged values (smoothed beside them, labelled), the eval baseline accuracy as a reference
//! line, a legend in the corner with the least data, and a progress gauge with ETA.

use crate::text::sanitize;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, Gauge, GraphType, Paragraph};

use crate::runs::index::RunSummary;
use crate::tui::app::App;
use crate::tui::chart::{fmt_num, fmt_value, log_ticks};
use crate::tui::keymap::Action;
use crate::tui::pane::{Ctx, Outcome, Pane};
use crate::tui::worker::{DeriveJob, WorkerMsg};
use ratatui::widgets::LegendPosition;

/// Which series the curves view plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Loss,
    EvalLoss,
    EvalAcc,
    Lr,
    GradNorm,
    TokensPerS,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::Loss,
        Metric::EvalLoss,
        Metric::EvalAcc,
        Metric::Lr,
        Metric::GradNorm,
        Metric::TokensPerS,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Metric::Loss => "train loss",
            Metric::EvalLoss => "eval loss",
            Metric::EvalAcc => "eval accuracy",
            Metric::Lr => "learning rate",
            Metric::GradNorm => "grad norm",
            Metric::TokensPerS => "tokens/s",
        }
    }
    /// The label for runs that are all diffusion runs (`Some(true)`), all MLM runs
    /// (`Some(false)`) or a mix (`None`): a diffusion run's eval accuracy is its samples'
    /// classification accuracy score (CAS), and its throughput is images/s.
    pub fn label_for(self, diffusion: Option<bool>) -> &'static str {
        match (self, diffusion) {
            (Metric::EvalAcc, Some(true)) => "CAS",
            (Metric::EvalAcc, None) => "eval accuracy / CAS",
            (Metric::TokensPerS, Some(true)) => "images/s",
            (Metric::TokensPerS, None) => "tokens/s · images/s",
            _ => self.label(),
        }
    }
    pub fn get(self, m: &crate::runs::Metric) -> Option<f64> {
        match self {
            Metric::Loss => m.loss,
            Metric::EvalLoss => m.eval_loss,
            // diffusion runs: the classification accuracy score of their samples
            Metric::EvalAcc => m.eval_acc.or(m.eval_cas),
            Metric::Lr => m.lr,
            Metric::GradNorm => m.grad_norm,
            Metric::TokensPerS => m.images_per_s.or(m.tokens_per_s),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    Step,
    Tokens,
    Wall,
}

impl XAxis {
    pub fn label(self) -> &'static str {
        match self {
            XAxis::Step => "step",
            XAxis::Tokens => "tokens",
            XAxis::Wall => "wall time",
        }
    }
    pub fn get(self, m: &crate::runs::Metric) -> f64 {
        match self {
            XAxis::Step => m.step as f64,
            XAxis::Tokens => m.tokens as f64,
            XAxis::Wall => m.wall_s,
        }
    }
    /// An axis or cursor label of an x value: integer steps, `1.2M` tokens, `h:mm:ss`.
    pub fn fmt(self, v: f64) -> String {
        match self {
            XAxis::Step => crate::tui::chart::fmt_int(v),
            XAxis::Tokens => crate::tui::chart::fmt_count(v),
            XAxis::Wall => crate::tui::chart::fmt_duration(v),
        }
    }
}

/// The Curves pane: its settings, and the series it shows (computed on the derive worker
/// when a run's data, a setting or the terminal's size changed).
pub struct CurvesState {
    pub metric: Metric,
    pub x: XAxis,
    pub log_y: bool,
    /// EMA weight in [0, 0.99].
    pub smoothing: f64,
    pub zoom_recent: bool,
    /// Cursor position as a fraction of the x range (None: hidden).
    pub cursor: Option<f64>,
    /// The dashboard (small multiples of every metric) instead of one metric: what Curves
    /// shows first.
    pub dashboard: bool,
    /// The dashboard's chosen panel (an index into [`Metric::ALL`]).
    pub panel: usize,
    pub series: SeriesCache,
}

impl Default for CurvesState {
    fn default() -> Self {
        Self {
            metric: Metric::Loss,
            x: XAxis::Step,
            log_y: false,
            smoothing: 0.6,
            zoom_recent: false,
            cursor: None,
            dashboard: true,
            panel: 0,
            series: SeriesCache::default(),
        }
    }
}

impl CurvesState {
    /// The one-metric chart's series settings.
    pub fn spec(&self) -> SeriesSpec {
        SeriesSpec {
            metric: self.metric,
            x: self.x,
            log_y: self.log_y,
            smoothing: self.smoothing,
            zoom_recent: self.zoom_recent,
        }
    }
}

/// What a series is computed with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesSpec {
    pub metric: Metric,
    pub x: XAxis,
    pub log_y: bool,
    /// EMA weight in [0, 0.99].
    pub smoothing: f64,
    /// Only the last fifth of the points (at least 10).
    pub zoom_recent: bool,
}

/// One run's plotted series: (raw, smoothed) points in plot coordinates (log10 y if log),
/// and the logged points themselves for the readout.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub id: String,
    pub raw: Vec<(f64, f64)>,
    pub smooth: Vec<(f64, f64)>,
    /// The logged points shown (x, value as logged, smoothed value): every one, or every k-th
    /// and the last beyond [`LOGGED_MAX`].
    pub logged: Vec<(f64, f64, f64)>,
    /// The run's latest eval baseline accuracy (most-frequent target), on the accuracy chart.
    pub baseline: Option<f64>,
}

impl Series {
    /// The logged point nearest to `x`.
    pub fn nearest(&self, x: f64) -> Option<(f64, f64, f64)> {
        let i = self.logged.partition_point(|p| p.0 < x);
        [i.checked_sub(1), Some(i)]
            .into_iter()
            .flatten()
            .filter_map(|j| self.logged.get(j).copied())
            .min_by(|a, b| (a.0 - x).abs().total_cmp(&(b.0 - x).abs()))
    }
}

/// What a cached series was computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesKey {
    id: String,
    points: usize,
    metric: Metric,
    x: XAxis,
    log_y: bool,
    smoothing: u64,
    zoom: bool,
    buckets: usize,
}

impl SeriesKey {
    pub fn new(r: &RunSummary, c: &SeriesSpec, buckets: usize) -> SeriesKey {
        SeriesKey {
            id: r.id.clone(),
            points: r.metrics.len(),
            metric: c.metric,
            x: c.x,
            log_y: c.log_y,
            smoothing: c.smoothing.to_bits(),
            zoom: c.zoom_recent,
            buckets,
        }
    }
}

/// The series the view shows, computed when a run's data, a setting or the terminal's size
/// changed ([`Pane::sync`], before a frame), on the derive worker (inline without one, in
/// tests). Drawing only reads them: while a new series is computed, the run's previous one
/// for the same metric is drawn.
#[derive(Default)]
pub struct SeriesCache {
    done: Vec<(SeriesKey, Series)>,
    pending: Vec<SeriesKey>,
}

impl SeriesCache {
    /// The series to draw for a run and settings: the one computed for them, else the run's
    /// latest one of the same metric (while the new one is computed), else none yet.
    pub fn get(&self, r: &RunSummary, c: &SeriesSpec, buckets: usize) -> Option<&Series> {
        let key = SeriesKey::new(r, c, buckets);
        self.done
            .iter()
            .find(|(k, _)| *k == key)
            .or_else(|| {
                self.done
                    .iter()
                    .rev()
                    .find(|(k, _)| k.id == key.id && k.metric == key.metric)
            })
            .map(|(_, s)| s)
    }

    /// Whether the series for a run and settings is computed.
    pub fn contains(&self, r: &RunSummary, c: &SeriesSpec, buckets: usize) -> bool {
        let key = SeriesKey::new(r, c, buckets);
        self.done.iter().any(|(k, _)| *k == key)
    }

    /// Whether some series is being computed.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Asks for the series unless it is computed or asked for: a job for the derive worker,
    /// else computed now.
    pub fn want(
        &mut self,
        r: &RunSummary,
        spec: &SeriesSpec,
        buckets: usize,
        derive: Option<&std::sync::mpsc::Sender<DeriveJob>>,
    ) {
        let key = SeriesKey::new(r, spec, buckets);
        if self.pending.contains(&key) || self.done.iter().any(|(k, _)| *k == key) {
            return;
        }
        let job = DeriveJob::Series {
            key: key.clone(),
            run: Box::new(r.clone()),
            spec: *spec,
            buckets,
        };
        match derive {
            Some(tx) => match tx.send(job) {
                Ok(()) => self.pending.push(key),
                Err(e) => self.finished_job(e.0),
            },
            None => self.finished_job(job),
        }
    }

    fn finished_job(&mut self, job: DeriveJob) {
        if let WorkerMsg::Series(key, Ok(s)) = job.run() {
            self.insert(key, s);
        }
    }

    /// A series arrived. One is kept per run and metric (the dashboard shows every metric
    /// at once).
    pub fn insert(&mut self, key: SeriesKey, s: Series) {
        self.pending.retain(|k| *k != key);
        self.done
            .retain(|(k, _)| !(k.id == key.id && k.metric == key.metric));
        if self.done.len() >= 256 {
            self.done.remove(0);
        }
        self.done.push((key, s));
    }

    /// A series could not be computed: it is no longer pending.
    pub fn failed(&mut self, key: &SeriesKey) {
        self.pending.retain(|k| k != key);
    }

    pub fn clear(&mut self) {
        self.done.clear();
        self.pending.clear();
    }
}

impl Pane for CurvesState {
    fn handle(&mut self, action: Action, _cx: &mut Ctx) -> Outcome {
        match action {
            Action::NextMetric => {
                let i = Metric::ALL
                    .iter()
                    .position(|m| *m == self.metric)
                    .unwrap_or(0);
                self.metric = Metric::ALL[(i + 1) % Metric::ALL.len()];
            }
            Action::XAxis => {
                self.x = match self.x {
                    XAxis::Step => XAxis::Tokens,
                    XAxis::Tokens => XAxis::Wall,
                    XAxis::Wall => XAxis::Step,
                }
            }
            Action::LogScale => self.log_y = !self.log_y,
            Action::SmoothMore => self.smoothing = (self.smoothing + 0.1).min(0.99),
            Action::SmoothLess => self.smoothing = (self.smoothing - 0.1).max(0.0),
            Action::ZoomRecent => self.zoom_recent = !self.zoom_recent,
            Action::Dashboard => self.dashboard = !self.dashboard,
            Action::OpenPanel => {
                if self.dashboard {
                    self.metric = Metric::ALL[self.panel % Metric::ALL.len()];
                    self.dashboard = false;
                }
            }
            Action::CursorLeft | Action::CursorRight if self.dashboard => {
                let n = Metric::ALL.len();
                self.panel = if action == Action::CursorLeft {
                    (self.panel + n - 1) % n
                } else {
                    (self.panel + 1) % n
                };
            }
            Action::CursorLeft | Action::CursorRight => {
                let d = if action == Action::CursorLeft {
                    -0.02
                } else {
                    0.02
                };
                self.cursor = Some((self.cursor.unwrap_or(1.0) + d).clamp(0.0, 1.0));
            }
            _ => return Outcome::Pass,
        }
        Outcome::Done
    }

    fn on_msg(&mut self, m: WorkerMsg, cx: &mut Ctx) {
        if let WorkerMsg::Series(key, r) = m {
            match r {
                Ok(s) => self.series.insert(key, s),
                Err(e) => {
                    self.series.failed(&key);
                    cx.notices.push(e);
                }
            }
        }
    }

    fn sync(&mut self, cx: &mut Ctx) {
        let plotted = plotted(cx.runs, *cx.selected, cx.marked);
        for (r, spec, buckets) in series_wanted(self, &plotted, cx.body) {
            self.series
                .want(r, &spec, buckets, cx.workers.derive.as_ref());
        }
    }

    fn draw(&self, f: &mut Frame, area: Rect, app: &App) {
        draw(f, app, area)
    }
}

/// Runs drawn in the curves view: the marked ones, else the selected one.
pub fn plotted<'a>(
    runs: &'a [RunSummary],
    selected: usize,
    marked: &std::collections::BTreeSet<String>,
) -> Vec<&'a RunSummary> {
    let m: Vec<&RunSummary> = runs.iter().filter(|r| marked.contains(&r.id)).collect();
    if m.is_empty() {
        runs.get(selected).into_iter().collect()
    } else {
        m
    }
}

/// The dashboard's panels in the view's `area`: (metric, panel) in table order, then the
/// readout and gauge lines.
fn dashboard_layout(area: Rect) -> (Vec<(Metric, Rect)>, Rect, Rect) {
    let [grid, readout, gauge] = Layout::vertical([
        Constraint::Min(6),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let rows = Layout::vertical([Constraint::Ratio(1, 2); 2]).split(grid);
    let cells = Metric::ALL
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let cols = Layout::horizontal([Constraint::Ratio(1, 3); 3]).split(rows[i / 3]);
            (*m, cols[i % 3])
        })
        .collect();
    (cells, readout, gauge)
}

/// A dashboard panel's series settings: linear, over the whole run (log y, the recent window
/// and the cursor belong to the one-metric chart).
fn panel_spec(c: &CurvesState, metric: Metric) -> SeriesSpec {
    SeriesSpec {
        metric,
        log_y: false,
        zoom_recent: false,
        ..c.spec()
    }
}

fn panel_buckets(cell: Rect) -> usize {
    (cell.width as usize).saturating_sub(8).max(2) * 2
}

/// The one-metric chart's areas in the view's `area`: chart, readout, gauge.
fn chart_layout(area: Rect) -> [Rect; 3] {
    Layout::vertical([
        Constraint::Min(6),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area)
}

fn chart_buckets(chart: Rect) -> usize {
    ((chart.width as usize).saturating_sub(10) * 2).max(2)
}

/// Every (run, series settings, buckets) the view draws in its `area` for the `plotted` runs:
/// what [`Pane::sync`] asks for before a frame.
pub fn series_wanted<'a>(
    c: &CurvesState,
    plotted: &[&'a RunSummary],
    area: Rect,
) -> Vec<(&'a RunSummary, SeriesSpec, usize)> {
    let mut out = Vec::new();
    if c.dashboard {
        for (m, cell) in dashboard_layout(area).0 {
            for r in plotted {
                out.push((*r, panel_spec(c, m), panel_buckets(cell)));
            }
        }
    } else {
        let [chart, ..] = chart_layout(area);
        for r in plotted {
            out.push((*r, c.spec(), chart_buckets(chart)));
        }
    }
    out
}

/// At most this many logged points are kept per series for the cursor's readout (a longer
/// log keeps every k-th point and the last: still logged points, never made up).
pub const LOGGED_MAX: usize = 50_000;

/// A point and its index among the points shown.
type Indexed = (usize, (f64, f64));

/// Min/max per bucket of equal x width, streamed (the same points as
/// [`crate::tui::chart::minmax_downsample`] over the whole series, without holding it).
struct Buckets {
    x0: f64,
    width: f64,
    buckets: usize,
    /// Every point when there are few (as `minmax_downsample` keeps them).
    all: bool,
    b: usize,
    /// The current bucket's (first index, min, max) as (index, point).
    cur: Option<(Indexed, Indexed)>,
    n: usize,
    out: Vec<(f64, f64)>,
}

impl Buckets {
    fn new(x0: f64, x1: f64, buckets: usize, count: usize) -> Self {
        Self {
            x0,
            width: (x1 - x0) / buckets.max(1) as f64,
            buckets,
            all: count <= 2 * buckets || buckets == 0,
            b: 0,
            cur: None,
            n: 0,
            out: Vec::with_capacity((2 * buckets).min(count)),
        }
    }
    fn flush(&mut self) {
        if let Some(((il, lo), (ih, hi))) = self.cur.take() {
            let (a, b) = if il <= ih { (lo, hi) } else { (hi, lo) };
            self.out.push(a);
            if il != ih {
                self.out.push(b);
            }
        }
    }
    fn push(&mut self, p: (f64, f64)) {
        if self.all {
            self.out.push(p);
            return;
        }
        while self.b + 1 < self.buckets && p.0 >= self.x0 + self.width * (self.b + 1) as f64 {
            self.flush();
            self.b += 1;
        }
        let i = self.n;
        self.n += 1;
        match &mut self.cur {
            None => self.cur = Some(((i, p), (i, p))),
            Some((lo, hi)) => {
                if p.1 < lo.1.1 {
                    *lo = (i, p);
                }
                if p.1 > hi.1.1 {
                    *hi = (i, p);
                }
            }
        }
    }
    fn finish(mut self) -> Vec<(f64, f64)> {
        self.flush();
        self.out
    }
}

/// Builds the series of a run for the current settings, `buckets` wide: two passes over the
/// run's compact log that hold only the downsampled points (a million-line log costs no
/// million-point copies).
pub fn series(r: &RunSummary, c: &SeriesSpec, buckets: usize) -> Series {
    let point = |m: &crate::runs::Metric| {
        c.metric
            .get(m)
            .map(|y| (c.x.get(m), y))
            .filter(|(_, y)| y.is_finite() && (!c.log_y || *y > 0.0))
    };
    let tr = |y: f64| if c.log_y { y.log10() } else { y };
    // pass 1: how many points, and the x range of those shown
    let mut n = 0usize;
    for m in r.metrics.iter() {
        n += usize::from(point(&m).is_some());
    }
    let skip = if c.zoom_recent && n > 10 {
        n - (n / 5).max(10)
    } else {
        0
    };
    let (mut x0, mut x1) = (0.0, 0.0);
    let mut i = 0usize;
    for m in r.metrics.iter() {
        if let Some((x, _)) = point(&m) {
            if i == skip {
                x0 = x;
            }
            x1 = x;
            i += 1;
        }
    }
    let kept = n - skip;
    let stride = kept.div_ceil(LOGGED_MAX).max(1);
    // pass 2: the smoothing runs over every point, the shown ones are bucketed
    let w = c.smoothing.clamp(0.0, 0.999);
    let (mut ema, mut wn) = (0.0, 1.0);
    let mut raw = Buckets::new(x0, x1, buckets, kept);
    let mut smooth = Buckets::new(x0, x1, buckets, kept);
    let mut logged = Vec::with_capacity(kept.min(LOGGED_MAX + 1));
    let mut i = 0usize;
    for m in r.metrics.iter() {
        let Some((x, y)) = point(&m) else { continue };
        ema = w * ema + (1.0 - w) * y;
        wn *= w;
        let s = ema / (1.0 - wn);
        if i >= skip {
            raw.push((x, tr(y)));
            smooth.push((x, tr(s)));
            if (i - skip).is_multiple_of(stride) || i + 1 == n {
                logged.push((x, y, s));
            }
        }
        i += 1;
    }
    let baseline = if c.metric == Metric::EvalAcc {
        r.metrics
            .iter()
            .rev()
            .find_map(|m| m.eval_baseline_acc)
            .filter(|b| b.is_finite() && (!c.log_y || *b > 0.0))
    } else {
        None
    };
    Series {
        id: r.id.clone(),
        raw: raw.finish(),
        smooth: smooth.finish(),
        logged,
        baseline,
    }
}

fn bounds(all: &[&Series], log_y: bool) -> Option<([f64; 2], [f64; 2])> {
    let tr = |y: f64| if log_y { y.log10() } else { y };
    let base: Vec<(f64, f64)> = all
        .iter()
        .filter_map(|s| Some((s.raw.first()?.0, tr(s.baseline?))))
        .collect();
    let pts = all
        .iter()
        .flat_map(|s| s.raw.iter().chain(&s.smooth))
        .chain(&base);
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

/// Whether `runs` are all diffusion runs (`Some(true)`), all MLM runs, or a mix (`None`).
fn diffusion_of(runs: &[&RunSummary]) -> Option<bool> {
    let d: Vec<bool> = runs
        .iter()
        .map(|r| crate::runs::is_diffusion(&r.model))
        .collect();
    if d.iter().all(|x| *x) {
        Some(true)
    } else if d.iter().any(|x| *x) {
        None
    } else {
        Some(false)
    }
}

/// The dashboard: a panel per metric (train loss, eval loss, eval accuracy or CAS, learning
/// rate, grad norm, tokens/s or images/s) for the selected or marked runs, 3 × 2 (3 × 2 with
/// more room per panel at 200×60); ←→ choose a panel, Enter opens it as the full chart.
fn draw_dashboard(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let c = &app.curves;
    let (cells, readout, gauge) = dashboard_layout(area);
    let runs = app.plotted();
    let diffusion = diffusion_of(&runs);
    let marker = if app.ascii {
        Marker::Dot
    } else {
        Marker::Braille
    };
    for (i, (metric, cell)) in cells.iter().enumerate() {
        let (metric, cell) = (metric, *cell);
        let cs = panel_spec(c, *metric);
        let buckets = panel_buckets(cell);
        let all: Vec<&Series> = runs
            .iter()
            .filter_map(|r| c.series.get(r, &cs, buckets))
            .collect();
        let latest = all
            .first()
            .and_then(|s| s.logged.last())
            .map(|p| format!(" {}", fmt_value(p.1)))
            .unwrap_or_default();
        let chosen = i == c.panel % Metric::ALL.len();
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(if chosen { t.accent() } else { t.muted() })
            .title(Span::styled(
                format!(" {}{latest} ", metric.label_for(diffusion)),
                if chosen { t.accent() } else { t.text() },
            ));
        let refs: &[&Series] = &all;
        let Some((xb, yb)) = bounds(refs, false) else {
            let what = if all.len() < runs.len() && c.series.busy() {
                "computing…"
            } else {
                "no points yet"
            };
            f.render_widget(Paragraph::new(what).style(t.muted()).block(block), cell);
            continue;
        };
        let mut datasets: Vec<Dataset> = all
            .iter()
            .map(|s| {
                Dataset::default()
                    .marker(marker)
                    .graph_type(GraphType::Line)
                    .style(Style::default().fg(t.run_color(&s.id)))
                    .data(&s.smooth)
            })
            .collect();
        let base: Vec<Vec<(f64, f64)>> = all
            .iter()
            .filter_map(|s| Some(vec![(xb[0], s.baseline?), (xb[1], s.baseline?)]))
            .collect();
        for b in &base {
            datasets.push(
                Dataset::default()
                    .marker(Marker::Dot)
                    .graph_type(GraphType::Line)
                    .style(t.warn_style())
                    .data(b),
            );
        }
        let chart = Chart::new(datasets)
            .block(block)
            .x_axis(
                Axis::default()
                    .bounds(xb)
                    .style(t.muted())
                    .labels([Span::raw(cs.x.fmt(xb[0])), Span::raw(cs.x.fmt(xb[1]))]),
            )
            .y_axis(
                Axis::default()
                    .bounds(yb)
                    .style(t.muted())
                    .labels([Span::raw(fmt_num(yb[0])), Span::raw(fmt_num(yb[1]))]),
            );
        f.render_widget(chart, cell);
    }
    let mut spans = vec![Span::styled(" runs: ", t.muted())];
    for r in &runs {
        spans.push(Span::styled(
            format!("{}  ", sanitize(&r.id)),
            Style::default().fg(t.run_color(&r.id)),
        ));
    }
    if runs.is_empty() {
        spans.push(Span::styled(
            "none selected: pick one in the Runs view (1)",
            t.muted(),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), readout);
    draw_gauge(f, app, gauge);
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    if app.curves.dashboard {
        return draw_dashboard(f, app, area);
    }
    let t = &app.theme;
    let c = &app.curves;
    let [chart_area, readout, gauge] = chart_layout(area);
    let runs = app.plotted();
    let buckets = chart_buckets(chart_area);
    let all: Vec<&Series> = runs
        .iter()
        .filter_map(|r| c.series.get(r, &c.spec(), buckets))
        .collect();
    let diffusion = diffusion_of(&runs);
    let label = c.metric.label_for(diffusion);
    let title = format!(
        " {} vs {} · smoothing {:.2}{}{} ",
        label,
        c.x.label(),
        c.smoothing,
        if c.log_y { " · log y" } else { "" },
        if c.zoom_recent { " · recent" } else { "" }
    );
    let block = Block::default().borders(Borders::ALL).title(title);
    let refs: &[&Series] = &all;
    let Some((xb, yb)) = bounds(refs, c.log_y) else {
        let msg = if runs.is_empty() {
            "no run selected: pick one in the Runs view (1)".to_string()
        } else if all.len() < runs.len() && c.series.busy() {
            "computing the series…".to_string()
        } else {
            format!("no {} points yet for {}", label, sanitize(&runs[0].id))
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
    let tr = |y: f64| if c.log_y { y.log10() } else { y };
    let baselines: Vec<(String, Vec<(f64, f64)>)> = all
        .iter()
        .filter_map(|s| {
            let b = tr(s.baseline?);
            Some((sanitize(&s.id).into_owned(), vec![(xb[0], b), (xb[1], b)]))
        })
        .collect();
    for (id, line) in &baselines {
        let name = if baselines.len() == 1 {
            "baseline (most frequent)".to_string()
        } else {
            format!("{id} baseline")
        };
        datasets.push(
            Dataset::default()
                .name(name)
                .marker(Marker::Dot)
                .graph_type(GraphType::Line)
                .style(t.warn_style())
                .data(line),
        );
    }
    // The cursor snaps to the logged point nearest to where it was moved (of the first
    // series that has one there).
    let cursor_x = c.cursor.and_then(|fr| {
        let x = xb[0] + fr * (xb[1] - xb[0]);
        all.iter().find_map(|s| s.nearest(x)).map(|p| p.0)
    });
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
        .legend_position(Some(quietest_corner(refs, xb, yb, c.log_y)))
        .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)))
        .x_axis(Axis::default().bounds(xb).style(t.muted()).labels([
            Span::raw(c.x.fmt(xb[0])),
            Span::raw(c.x.fmt((xb[0] + xb[1]) / 2.0)),
            Span::raw(c.x.fmt(xb[1])),
        ]))
        .y_axis(Axis::default().bounds(yb).style(t.muted()).labels(ylabels));
    f.render_widget(chart, chart_area);

    // Readout: each run's logged value at the cursor (or its latest), the smoothed one beside.
    let mut spans = vec![Span::styled(
        match cursor_x {
            Some(x) => format!(" at {} {}: ", c.x.label(), c.x.fmt(x)),
            None => " latest: ".into(),
        },
        t.muted(),
    )];
    for s in &all {
        let p = match cursor_x {
            Some(x) => s.nearest(x).filter(|p| p.0 == x),
            None => s.logged.last().copied(),
        };
        let text = match p {
            Some((_, y, sm)) => format!(
                "{} {} (smoothed {})  ",
                sanitize(&s.id),
                fmt_value(y),
                fmt_value(sm)
            ),
            None => format!("{} -  ", sanitize(&s.id)),
        };
        spans.push(Span::styled(text, Style::default().fg(t.run_color(&s.id))));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), readout);
    draw_gauge(f, app, gauge);
}

/// The corner of the plot where the fewest plotted points lie (the legend goes there).
fn quietest_corner(all: &[&Series], xb: [f64; 2], yb: [f64; 2], log_y: bool) -> LegendPosition {
    let corners = [
        (LegendPosition::TopRight, true, true),
        (LegendPosition::TopLeft, false, true),
        (LegendPosition::BottomRight, true, false),
        (LegendPosition::BottomLeft, false, false),
    ];
    let (w, h) = ((xb[1] - xb[0]).max(1e-12), (yb[1] - yb[0]).max(1e-12));
    let mut counts = [0usize; 4];
    // The baseline lines count too, as points along their width.
    let base: Vec<(f64, f64)> = all
        .iter()
        .filter_map(|s| s.baseline)
        .flat_map(|b| {
            let y = if log_y { b.log10() } else { b };
            (0..=20).map(move |i| (xb[0] + w * i as f64 / 20.0, y))
        })
        .collect();
    for (x, y) in all
        .iter()
        .flat_map(|s| s.smooth.iter().chain(&s.raw))
        .chain(&base)
    {
        let (fx, fy) = ((x - xb[0]) / w, (y - yb[0]) / h);
        for (k, (_, right, top)) in corners.iter().enumerate() {
            let in_x = if *right { fx >= 0.6 } else { fx <= 0.4 };
            let in_y = if *top { fy >= 0.6 } else { fy <= 0.4 };
            if in_x && in_y {
                counts[k] += 1;
            }
        }
    }
    let best = (0..4).min_by_key(|&k| (counts[k], k)).unwrap_or(0);
    corners[best].0
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
            let (a, b) = (
                m.get(n.saturating_sub(20)).unwrap_or_default(),
                m.get(n - 1).unwrap_or_default(),
            );
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
