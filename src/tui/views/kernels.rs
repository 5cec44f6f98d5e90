//! The Kernels view: what the state-space layers learned, for the selected run's checkpoints.
//! Sub-views (`v`): kernel vs lag, layers × lag heatmap, |FFT(K)|, Δt and eigenvalues of A
//! against their initialisation, evolution over training (checkpoints and the `kernels.jsonl`
//! records, `{`/`}`), and for image models
//! (DiffuSSM) the receptive field: the kernels folded onto the patch grid around a pixel that
//! `t`/`g`/`f`/`h` move. The pictures are
//! [`Figure`]s built by `kernels::figure` (UI-free; `e` exports the same one as a PNG). Weights
//! load and kernels are computed on the kernels worker, figures on the derive worker
//! (`tui::worker`).

use std::path::PathBuf;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, GraphType, Paragraph};

use crate::kernels::ModelKernels;
use crate::kernels::figure::{
    Figure, HeatRow, Panel, Selection, Tone, heat_bins, series_bounds, tick_label,
};
use crate::text::sanitize;
use crate::tui::app::App;
use crate::tui::keymap::Action;
use crate::tui::pane::{Ctx, Outcome, Pane};
use crate::tui::theme::Theme;
use crate::tui::worker::{DeriveJob, FigureKey, KernelsJob, KernelsMsg, WorkerMsg};
use std::sync::Arc;
use std::sync::mpsc::Sender;

/// The Kernels pane: the selection, the kernels of the shown run's checkpoints and the figure
/// drawn from them.
#[derive(Debug, Clone, Default)]
pub struct KernelsState {
    pub sel: Selection,
    /// The run (or model directory) shown.
    pub model: Option<PathBuf>,
    /// Its checkpoint steps when they were requested: a new checkpoint triggers a reload.
    pub requested: Vec<u64>,
    /// The run's last evaluation step when requested (a new one means a new `kernels.jsonl`
    /// record); `None` when kernels were set directly ([`KernelsState::set`]): not followed.
    pub requested_eval: Option<Option<u64>>,
    /// Kernels per checkpoint, ascending by step, as the worker delivers them (shared with
    /// the figure jobs).
    pub data: Arc<Vec<ModelKernels>>,
    /// Checkpoints the worker is computing.
    pub total: usize,
    pub busy: bool,
    pub error: Option<String>,
    /// Tags jobs, so results of a job the user moved away from are dropped.
    pub generation: u64,
    /// Show the latest checkpoint as it arrives (until `{`/`}` pick one).
    pub follow_latest: bool,
    /// The figure shown, computed on the derive worker when the kernels or the selection
    /// change (never per frame), with what it was computed from.
    shown: Option<(FigureKey, Figure)>,
    /// The figure asked of the derive worker and not yet back.
    asked: Option<FigureKey>,
}

impl KernelsState {
    /// Sets the shown model and its kernels at once (what the worker delivers piecewise).
    pub fn set(&mut self, model: PathBuf, data: Vec<ModelKernels>) {
        self.requested = data
            .iter()
            .filter(|m| !m.history)
            .filter_map(|m| m.step)
            .collect();
        self.requested_eval = None;
        self.model = Some(model);
        self.total = data.len();
        self.data = Arc::new(data);
        self.busy = false;
        self.error = None;
        self.sel.checkpoint = self.data.len().saturating_sub(1);
        self.sel.clamp(&self.data);
        self.update_figure(None);
    }

    fn key(&self) -> FigureKey {
        (self.sel, self.data.len(), self.generation)
    }

    /// Asks for the figure if the kernels or the selection changed since it was computed:
    /// a job for the derive worker, else computed now.
    pub fn update_figure(&mut self, derive: Option<&Sender<DeriveJob>>) {
        if self.data.is_empty() {
            self.shown = None;
            self.asked = None;
            return;
        }
        let key = self.key();
        if self.shown.as_ref().is_some_and(|(k, _)| *k == key) || self.asked == Some(key) {
            return;
        }
        let job = DeriveJob::Figure {
            key,
            data: self.data.clone(),
            sel: self.sel,
        };
        match derive {
            Some(tx) => match tx.send(job) {
                Ok(()) => self.asked = Some(key),
                Err(e) => self.take_figure(e.0.run()),
            },
            None => self.take_figure(job.run()),
        }
    }

    fn take_figure(&mut self, m: WorkerMsg) {
        if let WorkerMsg::Figure(key, r) = m {
            if self.asked == Some(key) {
                self.asked = None;
            }
            match r {
                Ok(f) => {
                    // a figure of a later generation than asked for would be stale already
                    if key.2 == self.generation {
                        self.shown = Some((key, f));
                    }
                }
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// The figure the view shows: the one computed for the current selection, else (while
    /// that one is computed) the last one of the same run. None before any kernels arrived.
    pub fn figure(&self) -> Option<&Figure> {
        match &self.shown {
            Some((k, f)) if k.2 == self.generation && !self.data.is_empty() => Some(f),
            _ => None,
        }
    }

    /// Whether the figure shown is the one of the current selection.
    pub fn figure_is_current(&self) -> bool {
        self.shown.as_ref().is_some_and(|(k, _)| *k == self.key())
    }

    /// A message from the kernels worker (stale generations are dropped).
    fn on_kernels_msg(&mut self, m: KernelsMsg) {
        if m.generation() != self.generation {
            return;
        }
        match m {
            KernelsMsg::Started { total, .. } => {
                self.total = total;
                self.data = Arc::default();
            }
            KernelsMsg::Loaded { kernels, .. } => {
                Arc::make_mut(&mut self.data).push(*kernels);
                if self.follow_latest {
                    self.sel.checkpoint = self.data.len() - 1;
                }
            }
            KernelsMsg::Failed { error, .. } => {
                self.error = Some(error);
                self.busy = false;
            }
            KernelsMsg::Done { .. } => self.busy = false,
        }
        self.sel.clamp(&self.data);
    }

    /// Asks the kernels worker for the selected run's kernels when the run or its
    /// checkpoints (or its evaluations: `kernels.jsonl` records) changed.
    fn request_kernels(&mut self, cx: &mut Ctx) {
        let Some(r) = cx.selected_run() else {
            return;
        };
        let steps = r.checkpoints.clone();
        let last_eval = r
            .metrics
            .iter()
            .rev()
            .find(|m| m.eval_loss.is_some())
            .map(|m| m.step);
        let (path, id, no_checkpoint) = (r.path.clone(), r.id.clone(), r.checkpoints.is_empty());
        if self.model.as_ref() == Some(&path)
            && self.requested == steps
            && self.requested_eval.is_none_or(|e| e == last_eval)
        {
            return;
        }
        self.requested_eval = Some(last_eval);
        if self.model.as_ref() != Some(&path) {
            self.follow_latest = true;
        }
        self.model = Some(path.clone());
        self.requested = steps.clone();
        self.data = Arc::default();
        self.total = steps.len();
        self.error = None;
        self.busy = false;
        self.generation += 1;
        if no_checkpoint && !path.join(crate::runs::kernels::KERNELS_FILE).is_file() {
            self.error = Some(format!(
                "{id} has no checkpoint yet; its kernels appear with the first"
            ));
            return;
        }
        let job = KernelsJob {
            generation: self.generation,
            model: path,
        };
        match &cx.workers.kernels {
            Some(tx) if tx.send(job).is_ok() => self.busy = true,
            _ => self.error = Some("the kernels worker is not running".into()),
        }
    }

    /// Writes the view's picture as a PNG into the run directory (else the current folder)
    /// and says where in the status line.
    fn export(&self, notices: &mut Vec<String>) {
        let Some(fig) = self.figure().filter(|_| self.figure_is_current()) else {
            notices.push("no kernels to export yet".into());
            return;
        };
        let mk = &self.data[self.sel.checkpoint.min(self.data.len() - 1)];
        let name = format!(
            "kernels-{}-{}-layer{}.png",
            self.sel.view.slug(),
            mk.label(),
            self.sel.layer
        );
        let dirs = [self.model.clone(), std::env::current_dir().ok()];
        let mut last_err = String::new();
        for d in dirs.into_iter().flatten() {
            let p = d.join(&name);
            match crate::kernels::export::write_png(fig, &p) {
                Ok(()) => {
                    notices.push(format!("exported {}", p.display()));
                    return;
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        notices.push(format!("cannot export: {last_err}"));
    }

    /// Moves the receptive field's pixel by one patch (only in that sub-view of an image
    /// model).
    fn move_pixel(&mut self, action: Action, notices: &mut Vec<String>) {
        use crate::kernels::figure::SubView;
        let grid = self.data.get(self.sel.checkpoint).and_then(|m| m.image);
        let Some(grid) = grid else {
            let what = self.data.first().map(|m| m.family).unwrap_or("no model");
            notices.push(format!(
                "{what}: the pixel keys move the receptive field of image models (DiffuSSM)"
            ));
            return;
        };
        if self.sel.view != SubView::ReceptiveField {
            notices.push("the pixel keys move the receptive field: press v until it shows".into());
            return;
        }
        let (dr, dc) = match action {
            Action::KernelPixelUp => (-1, 0),
            Action::KernelPixelDown => (1, 0),
            Action::KernelPixelLeft => (0, -1),
            _ => (0, 1),
        };
        self.sel.move_pixel(&grid, dr, dc);
    }
}

impl Pane for KernelsState {
    fn handle(&mut self, action: Action, cx: &mut Ctx) -> Outcome {
        match action {
            Action::KernelView => {
                let image = self.data.iter().any(|m| m.image.is_some());
                self.sel.view = self.sel.view.next(image);
            }
            Action::KernelPixelUp
            | Action::KernelPixelDown
            | Action::KernelPixelLeft
            | Action::KernelPixelRight => self.move_pixel(action, cx.notices),
            Action::KernelLogLag => self.sel.log_lag = !self.sel.log_lag,
            Action::KernelDirection => self.sel.dir = self.sel.dir.next(),
            Action::KernelLayerPrev => self.sel.layer = self.sel.layer.saturating_sub(1),
            Action::KernelLayerNext => self.sel.layer += 1,
            Action::KernelChannelPrev | Action::KernelChannelNext => {
                if let Some(mk) = self.data.first()
                    && mk.shared
                {
                    cx.notices.push(format!(
                        "{} has {}: no channel to pick",
                        mk.family,
                        mk.channels_note()
                    ));
                } else if action == Action::KernelChannelPrev {
                    self.sel.channel = self.sel.channel.saturating_sub(1);
                } else {
                    self.sel.channel += 1;
                }
            }
            Action::KernelStepPrev => {
                self.follow_latest = false;
                self.sel.checkpoint = self.sel.checkpoint.saturating_sub(1);
            }
            Action::KernelStepNext => {
                self.follow_latest = false;
                self.sel.checkpoint += 1;
            }
            Action::KernelExport => self.export(cx.notices),
            _ => return Outcome::Pass,
        }
        Outcome::Done
    }

    fn on_msg(&mut self, m: WorkerMsg, _cx: &mut Ctx) {
        match m {
            WorkerMsg::Kernels(m) => self.on_kernels_msg(m),
            m @ WorkerMsg::Figure(..) => self.take_figure(m),
            _ => {}
        }
    }

    fn sync(&mut self, cx: &mut Ctx) {
        self.request_kernels(cx);
        self.sel.clamp(&self.data);
        self.update_figure(cx.workers.derive.as_ref());
    }

    fn draw(&self, f: &mut Frame, area: Rect, app: &App) {
        draw(f, app, area)
    }
}

fn tone_color(t: &Theme, tone: Tone) -> Color {
    let s = &t.series;
    match tone {
        Tone::Forward => s[0],
        Tone::Backward => s[1 % s.len()],
        Tone::Faint => t.muted,
    }
}

fn draw_plot(f: &mut Frame, app: &App, p: &Panel, area: Rect) {
    let Panel::Plot {
        title,
        x_label,
        y_label,
        series,
        log_x,
        log_y,
    } = p
    else {
        return;
    };
    let t = &app.theme;
    // Axis titles sit on the frame, outside the plot (ratatui draws an axis title inside the
    // graph, over the curves): the y title beside the panel title, the x title at the bottom.
    let block = Block::default()
        .borders(Borders::ALL)
        .title(Line::from(vec![
            Span::raw(format!(" {title} ")),
            Span::styled(format!("· y: {y_label} "), t.muted()),
        ]))
        .title_bottom(
            Line::from(Span::styled(format!(" x: {x_label} "), t.muted())).right_aligned(),
        );
    let Some((xb, yb)) = series_bounds(series) else {
        f.render_widget(Paragraph::new("no data").block(block), area);
        return;
    };
    let marker = if app.ascii {
        Marker::Dot
    } else {
        Marker::Braille
    };
    // faint series first, so the current ones are drawn on top
    let mut order: Vec<_> = series.iter().filter(|s| s.tone == Tone::Faint).collect();
    order.extend(series.iter().filter(|s| s.tone != Tone::Faint));
    let datasets: Vec<Dataset> = order
        .iter()
        .map(|s| {
            let d = Dataset::default()
                .marker(marker)
                .graph_type(if s.scatter {
                    GraphType::Scatter
                } else {
                    GraphType::Line
                })
                .style(Style::default().fg(tone_color(t, s.tone)))
                .data(&s.points);
            if s.label.is_empty() {
                d
            } else {
                d.name(s.label.clone())
            }
        })
        .collect();
    let mid = |b: [f64; 2]| (b[0] + b[1]) / 2.0;
    let chart = Chart::new(datasets)
        .block(block)
        .x_axis(Axis::default().bounds(xb).labels(vec![
            Span::raw(tick_label(xb[0], *log_x)),
            Span::raw(tick_label(mid(xb), *log_x)),
            Span::raw(tick_label(xb[1], *log_x)),
        ]))
        .y_axis(Axis::default().bounds(yb).labels(vec![
            Span::raw(tick_label(yb[0], *log_y)),
            Span::raw(tick_label(mid(yb), *log_y)),
            Span::raw(tick_label(yb[1], *log_y)),
        ]));
    f.render_widget(chart, area);
}

/// A heatmap cell: shade by magnitude, colour by sign (red +, blue −).
fn cell(v: Option<f64>, no_color: bool) -> Span<'static> {
    let Some(v) = v else {
        return Span::raw(" ");
    };
    let ch = shade(v.abs());
    let style = if no_color {
        Style::default()
    } else if v >= 0.0 {
        Style::default().fg(Color::Red)
    } else {
        Style::default().fg(Color::Blue)
    };
    Span::styled(ch, style)
}

fn draw_heatmap(f: &mut Frame, app: &App, p: &Panel, area: Rect) {
    let Panel::Heatmap {
        title,
        x_label,
        rows,
        log_x,
        highlight,
    } = p
    else {
        return;
    };
    let t = &app.theme;
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" {title} "));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.height < 3 || inner.width < 20 || rows.is_empty() {
        return;
    }
    let label_w = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0)
        .min(12)
        + 2;
    let cols = inner.width as usize - label_w;
    let (bins, xb) = heat_bins(rows, cols);
    let avail = inner.height as usize - 2; // axis labels and legend below
    // rows on screen: repeat short maps (up to 3 lines a row), subsample tall ones
    let rep = (avail / rows.len()).clamp(1, 3);
    let shown: Vec<usize> = if rows.len() <= avail {
        (0..rows.len()).collect()
    } else {
        (0..avail).map(|i| i * rows.len() / avail).collect()
    };
    let mut lines = Vec::new();
    for &i in &shown {
        let row: &HeatRow = &rows[i];
        for r in 0..rep {
            let label = if r == 0 {
                format!("{:<w$}", row.label, w = label_w - 1)
            } else {
                " ".repeat(label_w - 1)
            };
            let lstyle = if *highlight == Some(i) {
                t.selected()
            } else {
                t.muted()
            };
            let mut spans = vec![
                Span::styled(label, lstyle),
                Span::styled(if *highlight == Some(i) { "▶" } else { " " }, t.accent()),
            ];
            spans.extend(bins[i].iter().map(|v| cell(*v, t.no_color)));
            lines.push(Line::from(spans));
        }
    }
    let (lo, hi) = (tick_label(xb[0], *log_x), tick_label(xb[1], *log_x));
    let mid = tick_label((xb[0] + xb[1]) / 2.0, *log_x);
    let gap = cols.saturating_sub(lo.len() + mid.len() + hi.len()) / 2;
    lines.push(Line::from(Span::styled(
        format!(
            "{}{lo}{}{mid}{}{hi}",
            " ".repeat(label_w),
            " ".repeat(gap),
            " ".repeat(cols.saturating_sub(lo.len() + mid.len() + hi.len() + gap))
        ),
        t.muted(),
    )));
    lines.push(Line::from(Span::styled(
        format!(
            "{}{x_label} · shade |K|/max, red +, blue −",
            " ".repeat(label_w)
        ),
        t.muted(),
    )));
    f.render_widget(Paragraph::new(lines), inner);
}

/// The shade of a scaled value (|v| ≤ 1), as the heatmap draws it.
fn shade(a: f64) -> &'static str {
    if a < 0.02 {
        " "
    } else if a < 0.1 {
        "·"
    } else if a < 0.3 {
        "░"
    } else if a < 0.6 {
        "▒"
    } else if a < 0.85 {
        "▓"
    } else {
        "█"
    }
}

/// A diverging colour for half blocks: dark grey at 0, red at +1, blue at −1.
fn heat_rgb(v: f64) -> Color {
    let a = v.abs().clamp(0.0, 1.0);
    let hi = (40.0 + 215.0 * a) as u8;
    if v >= 0.0 {
        Color::Rgb(hi, 40, 40)
    } else {
        Color::Rgb(40, 40, hi)
    }
}

/// The keys that move the receptive field's patch, for its legend ("t/g/f/h").
fn pixel_keys(app: &App) -> String {
    [
        Action::KernelPixelUp,
        Action::KernelPixelDown,
        Action::KernelPixelLeft,
        Action::KernelPixelRight,
    ]
    .iter()
    .filter_map(|a| app.keymap.keys(*a).first().cloned())
    .collect::<Vec<_>>()
    .join("/")
}

/// A map on a grid (the receptive field). Each grid cell is 2s columns × s lines (shaded
/// characters, red +, blue −) when the panel is tall enough, else half a line (`▀` with two
/// colours); a grid larger than even that shows the window around the mark. The marked cell
/// is drawn as `[…]`.
fn draw_field(f: &mut Frame, app: &App, p: &Panel, area: Rect) {
    let Panel::Field {
        title,
        rows,
        cols,
        values,
        mark,
        legend,
    } = p
    else {
        return;
    };
    let t = &app.theme;
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" {title} "));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let (rows, cols) = (*rows, *cols);
    if inner.height < 2 || inner.width < 8 || rows == 0 || cols == 0 {
        return;
    }
    let mut legend = legend.clone();
    legend.push(format!(
        "{} move the pixel · ←/→ channel · [ ] layer",
        pixel_keys(app)
    ));
    let legend_w = legend.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16;
    let (w, h) = (inner.width as usize, inner.height as usize);
    // leave room for the legend beside the map when the map still fits at its smallest
    let grid_w = if w >= 2 * cols + 2 + legend_w as usize {
        w - 2 - legend_w as usize
    } else {
        w
    };
    let s = (h / rows).min(grid_w / (2 * cols));
    let val = |r: usize, c: usize| values.get(r * cols + c).copied().unwrap_or(0.0);
    let buf = f.buffer_mut();
    let (x0, y0) = (inner.x, inner.y);
    let cell_style = |v: f64| {
        if t.no_color {
            Style::default()
        } else if v >= 0.0 {
            Style::default().fg(Color::Red)
        } else {
            Style::default().fg(Color::Blue)
        }
    };
    let (drawn_w, cropped) = if s >= 1 {
        for r in 0..rows {
            for c in 0..cols {
                let v = val(r, c);
                for dy in 0..s {
                    for dx in 0..2 * s {
                        let (x, y) = (x0 + (c * 2 * s + dx) as u16, y0 + (r * s + dy) as u16);
                        let is_mark = (r, c) == *mark;
                        let (sym, style) = if is_mark && dx == 0 {
                            ("[", t.accent())
                        } else if is_mark && dx == 2 * s - 1 {
                            ("]", t.accent())
                        } else {
                            (shade(v.abs()), cell_style(v))
                        };
                        buf[(x, y)].set_symbol(sym).set_style(style);
                    }
                }
            }
        }
        // a ruler under the map: first and last column, `^` under the marked one
        if rows * s < h {
            let gw = 2 * s * cols;
            let mut ruler: Vec<char> = vec![' '; gw];
            let last = (cols - 1).to_string();
            ruler[0] = '0';
            for (i, ch) in last.chars().enumerate() {
                ruler[gw - last.len() + i] = ch;
            }
            let caret = mark.1 * 2 * s + s - 1;
            if caret < gw {
                ruler[caret] = '^';
            }
            let line: String = ruler.into_iter().collect();
            buf.set_string(x0, y0 + (rows * s) as u16, line, t.muted());
        }
        (2 * s * cols, None)
    } else {
        // half blocks: one column and half a line per cell, a window around the mark
        let vr = rows.min(2 * h);
        let vc = cols.min(grid_w);
        let r0 = mark.0.saturating_sub(vr / 2).min(rows - vr);
        let c0 = mark.1.saturating_sub(vc / 2).min(cols - vc);
        for ly in 0..vr.div_ceil(2) {
            for c in 0..vc {
                let (ru, rl) = (r0 + 2 * ly, r0 + 2 * ly + 1);
                let (gc, (x, y)) = (c0 + c, (x0 + c as u16, y0 + ly as u16));
                let up = val(ru, gc);
                let low = (rl < r0 + vr).then(|| val(rl, gc));
                let cell = &mut buf[(x, y)];
                if (ru, gc) == *mark || (rl, gc) == *mark {
                    cell.set_symbol(if (ru, gc) == *mark { "▀" } else { "▄" })
                        .set_style(t.accent());
                } else if t.no_color {
                    let a = up.abs().max(low.unwrap_or(0.0).abs());
                    cell.set_symbol(shade(a)).set_style(Style::default());
                } else {
                    let mut st = Style::default().fg(heat_rgb(up));
                    if let Some(l) = low {
                        st = st.bg(heat_rgb(l));
                    }
                    cell.set_symbol("▀").set_style(st);
                }
            }
        }
        let crop = (vr < rows || vc < cols).then(|| {
            format!(
                "showing rows {r0}–{} × columns {c0}–{} around the pixel",
                r0 + vr - 1,
                c0 + vc - 1
            )
        });
        (vc, crop)
    };
    if let Some(c) = cropped {
        legend.push(c);
    }
    let lx = x0 + drawn_w as u16 + 2;
    let (legend_area, lines) = if lx + 10 <= inner.right() {
        (Rect::new(lx, y0, inner.right() - lx, inner.height), legend)
    } else {
        (Rect::new(x0, y0, 0, 0), vec![])
    };
    let lines: Vec<Line> = lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let st = if i == 0 { t.text() } else { t.muted() };
            Line::from(Span::styled(l, st))
        })
        .collect();
    f.render_widget(Paragraph::new(lines), legend_area);
}

fn draw_text(f: &mut Frame, app: &App, p: &Panel, area: Rect) {
    let Panel::Text { title, lines } = p else {
        return;
    };
    let lines: Vec<Line> = lines
        .iter()
        .map(|l| Line::from(Span::styled(l.clone(), app.theme.text())))
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {title} ")),
        ),
        area,
    );
}

fn draw_panel(f: &mut Frame, app: &App, p: &Panel, area: Rect) {
    match p {
        Panel::Plot { .. } => draw_plot(f, app, p, area),
        Panel::Heatmap { .. } => draw_heatmap(f, app, p, area),
        Panel::Text { .. } => draw_text(f, app, p, area),
        Panel::Field { .. } => draw_field(f, app, p, area),
    }
}

/// Draws a figure: a title line, the notes, the picture panels side by side, text panels below.
pub fn draw_figure(f: &mut Frame, app: &App, fig: &Figure, area: Rect) {
    let t = &app.theme;
    let head = 1 + fig.notes.len() as u16;
    let texts: Vec<&Panel> = fig
        .panels
        .iter()
        .filter(|p| matches!(p, Panel::Text { .. }))
        .collect();
    let pics: Vec<&Panel> = fig
        .panels
        .iter()
        .filter(|p| !matches!(p, Panel::Text { .. }))
        .collect();
    let text_h: u16 = texts
        .iter()
        .map(|p| match p {
            Panel::Text { lines, .. } => lines.len() as u16 + 2,
            _ => 0,
        })
        .sum::<u16>()
        .min(area.height / 3);
    let [head_a, pics_a, text_a] = Layout::vertical([
        Constraint::Length(head),
        Constraint::Min(5),
        Constraint::Length(text_h),
    ])
    .areas(area);
    let mut lines = vec![Line::from(Span::styled(sanitize(&fig.title), t.accent()))];
    lines.extend(
        fig.notes
            .iter()
            .map(|n| Line::from(Span::styled(n.clone(), t.muted()))),
    );
    f.render_widget(Paragraph::new(lines), head_a);
    if !pics.is_empty() {
        let n = pics.len() as u32;
        let parts = Layout::horizontal((0..n).map(|_| Constraint::Ratio(1, n))).split(pics_a);
        for (p, a) in pics.iter().zip(parts.iter()) {
            draw_panel(f, app, p, *a);
        }
    }
    if !texts.is_empty() {
        let hs: Vec<Constraint> = texts
            .iter()
            .map(|p| match p {
                Panel::Text { lines, .. } => Constraint::Length(lines.len() as u16 + 2),
                _ => Constraint::Length(0),
            })
            .collect();
        let parts = Layout::vertical(hs).split(text_a);
        for (p, a) in texts.iter().zip(parts.iter()) {
            draw_panel(f, app, p, *a);
        }
    }
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let k = &app.kernels;
    let Some(fig) = k.figure() else {
        let (msg, style) = match (&k.error, k.busy, &k.model) {
            (Some(e), _, _) => (sanitize(e).into_owned(), Style::default().fg(t.error)),
            _ if !k.data.is_empty() => ("drawing the figure…".into(), t.muted()),
            (None, true, Some(m)) => (
                format!(
                    "computing the kernels of {} ({} checkpoint(s))…",
                    m.display(),
                    k.total
                ),
                t.muted(),
            ),
            _ => (
                "select a run with a checkpoint (↑/↓ here, or in the Runs view)".into(),
                t.muted(),
            ),
        };
        f.render_widget(
            Paragraph::new(msg)
                .style(style)
                .wrap(ratatui::widgets::Wrap { trim: true })
                .block(Block::default().borders(Borders::ALL).title(" Kernels ")),
            area,
        );
        return;
    };
    let [fig_a, foot] = Layout::vertical([Constraint::Min(8), Constraint::Length(1)]).areas(area);
    draw_figure(f, app, fig, fig_a);
    let steps: Vec<String> = k.data.iter().map(|m| m.label()).collect();
    let progress = if k.busy {
        format!(" · loading {}/{}", k.data.len(), k.total)
    } else {
        String::new()
    };
    let err = k
        .error
        .as_ref()
        .map(|e| format!(" · {}", sanitize(e)))
        .unwrap_or_default();
    let cur = k.sel.checkpoint.min(steps.len().saturating_sub(1));
    // with kernels.jsonl records among them the entries are not all checkpoints
    let noun = if k.data.iter().any(|m| m.history) {
        "history"
    } else {
        "checkpoint"
    };
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(
                format!(
                    " {noun} {}/{} ({}){}{}",
                    cur + 1,
                    steps.len(),
                    steps.get(cur).cloned().unwrap_or_default(),
                    progress,
                    err
                ),
                t.muted(),
            ),
            Span::styled(
                format!(
                    " · {}{}",
                    k.model
                        .as_ref()
                        .and_then(|m| m.file_name())
                        .map(|m| m.to_string_lossy().to_string())
                        .unwrap_or_default(),
                    if k.sel.log_lag { " · log lag" } else { "" }
                ),
                t.muted(),
            ),
        ])),
        foot,
    );
}
