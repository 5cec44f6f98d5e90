//! What a kernel picture shows, as plain data: the TUI draws a [`Figure`] with ratatui, the
//! exporter (`export.rs`) as a PNG. One builder per sub-view ([`figure`]), so the terminal and
//! the exported image never disagree.

use super::{
    Direction, ImageGrid, ModelKernels, SsmKernels, decay_lag, fmt_decay, fold_receptive_field,
    frequency_response, signed_response, spread,
};

/// The sub-views of the Kernels view, cycled with `v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubView {
    #[default]
    Lag,
    Heatmap,
    Spectrum,
    Eigen,
    Evolution,
    /// Image models only: the kernels folded onto the patch grid around a pixel.
    ReceptiveField,
}

impl SubView {
    pub const ALL: [SubView; 6] = [
        SubView::Lag,
        SubView::Heatmap,
        SubView::Spectrum,
        SubView::Eigen,
        SubView::Evolution,
        SubView::ReceptiveField,
    ];
    pub fn title(self) -> &'static str {
        match self {
            SubView::Lag => "kernel vs lag",
            SubView::Heatmap => "heatmap",
            SubView::Spectrum => "frequency response",
            SubView::Eigen => "Δt and eigenvalues of A",
            SubView::Evolution => "evolution over training",
            SubView::ReceptiveField => "receptive field",
        }
    }
    /// File-name slug.
    pub fn slug(self) -> &'static str {
        match self {
            SubView::Lag => "lag",
            SubView::Heatmap => "heatmap",
            SubView::Spectrum => "spectrum",
            SubView::Eigen => "eigen",
            SubView::Evolution => "evolution",
            SubView::ReceptiveField => "receptive-field",
        }
    }
    /// Whether the sub-view exists for a model (the receptive field only for image models).
    pub fn available(self, image: bool) -> bool {
        image || self != SubView::ReceptiveField
    }
    /// The next sub-view of the `v` cycle for a model with (`image`) or without an image grid.
    pub fn next(self, image: bool) -> SubView {
        let i = Self::ALL.iter().position(|v| *v == self).unwrap_or(0);
        (1..=Self::ALL.len())
            .map(|k| Self::ALL[(i + k) % Self::ALL.len()])
            .find(|v| v.available(image))
            .unwrap_or_default()
    }
}

/// Which direction(s) to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirSel {
    Forward,
    Backward,
    /// Both, as one response over signed offsets.
    #[default]
    Both,
}

impl DirSel {
    pub fn next(self) -> DirSel {
        match self {
            DirSel::Forward => DirSel::Backward,
            DirSel::Backward => DirSel::Both,
            DirSel::Both => DirSel::Forward,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            DirSel::Forward => "forward",
            DirSel::Backward => "backward",
            DirSel::Both => "fwd+bwd",
        }
    }
    fn dirs(self) -> &'static [Direction] {
        match self {
            DirSel::Forward => &[Direction::Forward],
            DirSel::Backward => &[Direction::Backward],
            DirSel::Both => &[Direction::Forward, Direction::Backward],
        }
    }
}

/// What the user picked: sub-view, layer, channel, direction(s), log lag, checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Selection {
    pub view: SubView,
    pub layer: usize,
    pub channel: usize,
    pub dir: DirSel,
    pub log_lag: bool,
    /// Index into the run's checkpoints (ascending by step).
    pub checkpoint: usize,
    /// Receptive field: the (patch row, patch column) whose response is shown; None = the
    /// centre of the grid.
    pub pixel: Option<(usize, usize)>,
}

impl Selection {
    /// Keeps every index inside what `data` has (and the sub-view one the model has).
    pub fn clamp(&mut self, data: &[ModelKernels]) {
        self.checkpoint = self.checkpoint.min(data.len().saturating_sub(1));
        if let Some(mk) = data.get(self.checkpoint) {
            self.layer = self.layer.min(mk.layers.len().saturating_sub(1));
            let ch = mk
                .layers
                .get(self.layer)
                .map(|l| l.fwd.channels())
                .unwrap_or(1);
            self.channel = self.channel.min(ch.saturating_sub(1));
            if !self.view.available(mk.image.is_some()) {
                self.view = SubView::Lag;
            }
            if let (Some(g), Some((r, c))) = (mk.image, self.pixel) {
                self.pixel = Some((
                    r.min(g.rows().saturating_sub(1)),
                    c.min(g.cols().saturating_sub(1)),
                ));
            }
        }
    }

    /// The patch shown by the receptive field on `grid` (the centre unless one was picked).
    pub fn patch(&self, grid: &ImageGrid) -> (usize, usize) {
        let (r, c) = self.pixel.unwrap_or((grid.rows() / 2, grid.cols() / 2));
        (
            r.min(grid.rows().saturating_sub(1)),
            c.min(grid.cols().saturating_sub(1)),
        )
    }

    /// Moves the receptive field's patch by (rows, cols), staying on the grid.
    pub fn move_pixel(&mut self, grid: &ImageGrid, dr: i64, dc: i64) {
        let (r, c) = self.patch(grid);
        let step = |v: usize, d: i64, n: usize| (v as i64 + d).clamp(0, n as i64 - 1) as usize;
        self.pixel = Some((
            step(r, dr, grid.rows().max(1)),
            step(c, dc, grid.cols().max(1)),
        ));
    }
}

/// The role of a series, which picks its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Forward,
    Backward,
    /// An earlier checkpoint or the initial distribution, drawn faintly.
    Faint,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub tone: Tone,
    pub points: Vec<(f64, f64)>,
    /// Points (a scatter) rather than a line.
    pub scatter: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeatRow {
    pub label: String,
    /// (x, value / max |value| of the row) — each row is normalised to [−1, 1].
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Panel {
    Plot {
        title: String,
        x_label: String,
        y_label: String,
        series: Vec<Series>,
        /// Axis values are log10 of the quantity (ticks are labelled 10^v).
        log_x: bool,
        log_y: bool,
    },
    Heatmap {
        title: String,
        x_label: String,
        rows: Vec<HeatRow>,
        log_x: bool,
        /// A row to mark (the current checkpoint / layer).
        highlight: Option<usize>,
    },
    Text {
        title: String,
        lines: Vec<String>,
    },
    /// A map on a grid (the receptive field on the patch grid): `values` row-major
    /// (`rows`×`cols`), scaled to [−1, 1] by the largest |value|; `mark` is the (row, col) to
    /// mark; `legend` lines go beside the map.
    Field {
        title: String,
        rows: usize,
        cols: usize,
        values: Vec<f64>,
        mark: (usize, usize),
        legend: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub title: String,
    pub notes: Vec<String>,
    pub panels: Vec<Panel>,
}

fn tone(d: Direction) -> Tone {
    match d {
        Direction::Forward => Tone::Forward,
        Direction::Backward => Tone::Backward,
    }
}

/// A kernel's points for the lag axis: (lag or log10 lag, value); lag 0 is dropped on a log
/// axis. `sign` −1 mirrors it onto negative offsets (the backward half of a signed response).
fn lag_points(k: &[f64], log_lag: bool, sign: f64) -> Vec<(f64, f64)> {
    k.iter()
        .enumerate()
        .filter(|(l, _)| !log_lag || *l >= 1)
        .map(|(l, v)| {
            let x = if log_lag {
                (l as f64).log10()
            } else {
                sign * l as f64
            };
            (x, *v)
        })
        .collect()
}

/// The (x, value) series of one SSM's kernel for a direction selection: forward lags, backward
/// lags, or (both, linear axis) signed offsets with the backward half at negative offsets.
fn kernel_series(
    mk: &ModelKernels,
    layer: usize,
    channel: usize,
    sel: DirSel,
    log_lag: bool,
    label_suffix: &str,
    faint: bool,
) -> Vec<Series> {
    let l = &mk.layers[layer];
    sel.dirs()
        .iter()
        .map(|&d| {
            let k = l.get(d).kernel(channel);
            let sign = if sel == DirSel::Both && d == Direction::Backward && !log_lag {
                -1.0
            } else {
                1.0
            };
            let mut points = lag_points(k, log_lag, sign);
            if sign < 0.0 {
                // lag 0 of the backward kernel sits under the forward one's (d = 0 → k_f[0])
                points.retain(|p| p.0 < 0.0);
                points.reverse();
            }
            Series {
                label: format!("{}{label_suffix}", d.short()),
                tone: if faint { Tone::Faint } else { tone(d) },
                points,
                scatter: false,
            }
        })
        .collect()
}

fn lag_axis(sel: &Selection) -> String {
    match (sel.dir, sel.log_lag) {
        (DirSel::Both, false) => "offset d = t_out − t_in (d<0: backward kernel)".into(),
        (_, true) => "lag (log)".into(),
        _ => "lag".into(),
    }
}

/// Rows of a heatmap from kernels: the signed response (both) or one direction, normalised.
fn heat_row(ssm_f: &SsmKernels, ssm_b: &SsmKernels, ch: usize, sel: &Selection) -> Vec<(f64, f64)> {
    let pts: Vec<(f64, f64)> = match sel.dir {
        DirSel::Both if !sel.log_lag => signed_response(ssm_f.kernel(ch), ssm_b.kernel(ch))
            .into_iter()
            .map(|(d, v)| (d as f64, v))
            .collect(),
        DirSel::Backward => lag_points(ssm_b.kernel(ch), sel.log_lag, 1.0),
        // both on a log axis: the forward kernel (the backward one has its own row set)
        _ => lag_points(ssm_f.kernel(ch), sel.log_lag, 1.0),
    };
    let max = pts.iter().fold(0f64, |m, p| m.max(p.1.abs())).max(1e-300);
    pts.into_iter().map(|(x, v)| (x, v / max)).collect()
}

fn pick_dir(sel: DirSel) -> Direction {
    match sel {
        DirSel::Backward => Direction::Backward,
        _ => Direction::Forward,
    }
}

/// max|K| over the lags the lag sub-view plots for direction `d`: a log-lag axis has no lag 0,
/// and with both directions on a signed axis the backward kernel's lag 0 is the forward one's.
pub fn plotted_max(k: &[f64], sel: &Selection, d: Direction) -> f64 {
    let skip0 = sel.log_lag || (sel.dir == DirSel::Both && d == Direction::Backward);
    k.iter()
        .enumerate()
        .filter(|(l, _)| !skip0 || *l >= 1)
        .fold(0f64, |m, (_, v)| m.max(v.abs()))
}

fn info_lines(mk: &ModelKernels, sel: &Selection) -> Vec<String> {
    let l = &mk.layers[sel.layer];
    let mut v = Vec::new();
    for d in [Direction::Forward, Direction::Backward] {
        let s = l.get(d);
        let k = s.kernel(sel.channel);
        let dt = s.dt.get(sel.channel.min(s.dt.len().saturating_sub(1)));
        let dd = s.d.get(sel.channel.min(s.d.len().saturating_sub(1)));
        v.push(format!(
            "{}: decay lag {}, Δt {}, D {}, max|K| {:.3}",
            d.short(),
            fmt_decay(decay_lag(k, 0.01), mk.len),
            dt.map(|x| format!("{x:.4}")).unwrap_or_default(),
            dd.map(|x| format!("{x:.3}")).unwrap_or_default(),
            plotted_max(k, sel, d),
        ));
    }
    v
}

/// Lag sub-view: the kernel against lag (or signed offset), with the first checkpoint faint, and the layer's numbers.
fn lag_panels(mk: &ModelKernels, first: Option<&ModelKernels>, sel: &Selection) -> Vec<Panel> {
    let mut series = Vec::new();
    if let Some(f) = first {
        series.extend(kernel_series(
            f,
            sel.layer.min(f.layers.len() - 1),
            sel.channel,
            sel.dir,
            sel.log_lag,
            &format!(" {}", f.label()),
            true,
        ));
    }
    series.extend(kernel_series(
        mk,
        sel.layer,
        sel.channel,
        sel.dir,
        sel.log_lag,
        "",
        false,
    ));
    vec![
        Panel::Plot {
            title: if sel.dir == DirSel::Both && !sel.log_lag {
                "K over signed offsets".into()
            } else {
                "K vs lag".into()
            },
            x_label: lag_axis(sel),
            y_label: "K".into(),
            series,
            log_x: sel.log_lag,
            log_y: false,
        },
        Panel::Text {
            title: format!("layer {}", sel.layer),
            lines: info_lines(mk, sel),
        },
    ]
}

/// Heatmap sub-view: layers (shared kernels) or channels × lag, each row scaled to its max |K|.
fn heatmap_panels(mk: &ModelKernels, sel: &Selection) -> Vec<Panel> {
    let d = pick_dir(sel.dir);
    let rows: Vec<HeatRow> = if mk.shared {
        mk.layers
            .iter()
            .enumerate()
            .map(|(i, l)| HeatRow {
                label: format!("L{i}"),
                points: heat_row(&l.fwd, &l.bwd, sel.channel, sel),
            })
            .collect()
    } else {
        let l = &mk.layers[sel.layer];
        (0..l.get(d).channels())
            .map(|c| HeatRow {
                label: format!("c{c}"),
                points: heat_row(&l.fwd, &l.bwd, c, sel),
            })
            .collect()
    };
    let what = if mk.shared { "layers" } else { "channels" };
    let dir_note = match (sel.dir, sel.log_lag) {
        (DirSel::Both, true) => "forward (log lag)".to_string(),
        (s, _) => s.label().to_string(),
    };
    vec![Panel::Heatmap {
        title: format!("{what} × lag, {dir_note}, each row scaled to its max |K|"),
        x_label: lag_axis(sel),
        rows,
        log_x: sel.log_lag,
        highlight: mk.shared.then_some(sel.layer),
    }]
}

/// Spectrum sub-view: |FFT(K)| of the selected kernels, with the first checkpoint faint.
fn spectrum_panels(mk: &ModelKernels, first: Option<&ModelKernels>, sel: &Selection) -> Vec<Panel> {
    let n_fft = (2 * mk.len).next_power_of_two();
    let spec = |m: &ModelKernels, d: Direction, faint: bool| -> Series {
        let k = m.layers[sel.layer.min(m.layers.len() - 1)]
            .get(d)
            .kernel(sel.channel);
        let r = frequency_response(k, n_fft);
        Series {
            label: if faint {
                format!("{} {}", d.short(), m.label())
            } else {
                d.short().into()
            },
            tone: if faint { Tone::Faint } else { tone(d) },
            points: r
                .iter()
                .enumerate()
                .map(|(f, v)| (f as f64 / n_fft as f64, v.max(1e-12).log10()))
                .collect(),
            scatter: false,
        }
    };
    let mut series = Vec::new();
    for &d in sel.dir.dirs() {
        if let Some(f) = first {
            series.push(spec(f, d, true));
        }
    }
    for &d in sel.dir.dirs() {
        series.push(spec(mk, d, false));
    }
    vec![Panel::Plot {
        title: format!("|FFT(K)| (zero-padded to {n_fft})"),
        x_label: "frequency (cycles/token)".into(),
        y_label: "|FFT(K)| (log)".into(),
        series,
        log_x: false,
        log_y: true,
    }]
}

/// Eigen sub-view: the eigenvalues of A against their initialisation, Δt per layer, and their spread.
fn eigen_panels(mk: &ModelKernels, sel: &Selection) -> Vec<Panel> {
    let l = &mk.layers[sel.layer];
    let mut eig = vec![Series {
        label: format!("init ({})", mk.init.a_init),
        tone: Tone::Faint,
        points: mk.init.eig.clone(),
        scatter: true,
    }];
    for &d in sel.dir.dirs() {
        eig.push(Series {
            label: d.short().into(),
            tone: tone(d),
            points: l.get(d).eig.clone(),
            scatter: true,
        });
    }
    let (lo, hi) = mk.init.dt_range;
    let x_hi = (mk.layers.len() as f64 - 1.0).max(1.0);
    let mut dts = vec![
        Series {
            label: "init range".into(),
            tone: Tone::Faint,
            points: vec![(0.0, lo.log10()), (x_hi, lo.log10())],
            scatter: false,
        },
        Series {
            label: String::new(),
            tone: Tone::Faint,
            points: vec![(0.0, hi.log10()), (x_hi, hi.log10())],
            scatter: false,
        },
    ];
    for &d in sel.dir.dirs() {
        dts.push(Series {
            label: format!("Δt {}", d.short()),
            tone: tone(d),
            points: mk
                .layers
                .iter()
                .enumerate()
                .flat_map(|(i, l)| l.get(d).dt.iter().map(move |v| (i as f64, v.log10())))
                .collect(),
            scatter: true,
        });
    }
    let mut lines = Vec::new();
    for &d in sel.dir.dirs() {
        let s = l.get(d);
        let re: Vec<f64> = s.eig.iter().map(|e| e.0).collect();
        let (a, m, b) = spread(&re).unwrap_or_default();
        let dt = spread(&s.dt).unwrap_or_default();
        lines.push(format!(
            "{}: Re A {a:.3}…{b:.3} (med {m:.3}), Δt {:.4}, slowest mode e-folds in ~{:.0} tokens",
            d.short(),
            dt.1,
            1.0 / (dt.1 * re.iter().fold(f64::MAX, |x, r| x.min(r.abs()))).max(1e-12)
        ));
    }
    lines.push(format!(
        "init: Re A −0.5, Im A `{}`, Δt log-uniform [{lo}, {hi}]",
        mk.init.a_init
    ));
    vec![
        Panel::Plot {
            title: format!("eigenvalues of A, layer {}", sel.layer),
            x_label: "Re A".into(),
            y_label: "Im A".into(),
            series: eig,
            log_x: false,
            log_y: false,
        },
        Panel::Plot {
            title: "Δt per layer".into(),
            x_label: "layer".into(),
            y_label: "Δt (log)".into(),
            series: dts,
            log_x: false,
            log_y: true,
        },
        Panel::Text {
            title: "A and Δt".into(),
            lines,
        },
    ]
}

/// Evolution sub-view: the selected kernel at every checkpoint, and its decay and Δt per checkpoint.
fn evolution_panels(data: &[ModelKernels], sel: &Selection) -> Vec<Panel> {
    let rows: Vec<HeatRow> = data
        .iter()
        .map(|m| {
            let l = &m.layers[sel.layer.min(m.layers.len() - 1)];
            HeatRow {
                label: m.label(),
                points: heat_row(&l.fwd, &l.bwd, sel.channel, sel),
            }
        })
        .collect();
    let mut lines: Vec<String> = data
        .iter()
        .map(|m| {
            let l = &m.layers[sel.layer.min(m.layers.len() - 1)];
            let dl = |d: Direction| fmt_decay(decay_lag(l.get(d).kernel(sel.channel), 0.01), m.len);
            let dt = |d: Direction| {
                let v = &l.get(d).dt;
                v.get(sel.channel.min(v.len().saturating_sub(1)))
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            format!(
                "{:<15} decay fwd {:>4} bwd {:>4}  Δt fwd {:.4} bwd {:.4}",
                m.label(),
                dl(Direction::Forward),
                dl(Direction::Backward),
                dt(Direction::Forward),
                dt(Direction::Backward)
            )
        })
        .collect();
    if data.len() < 2 {
        lines.push(
            "one entry only: evolution needs two or more checkpoints or kernels.jsonl records \
             (written at step 0 and at every evaluation)"
                .into(),
        );
    } else if data.iter().any(|m| m.history) {
        lines.push("step N (log): kernels.jsonl at an evaluation; step-N: a checkpoint".into());
    }
    vec![
        Panel::Heatmap {
            title: format!(
                "layer {} over training ({{ }} to scrub), each row scaled",
                sel.layer
            ),
            x_label: lag_axis(sel),
            rows,
            log_x: sel.log_lag,
            highlight: Some(sel.checkpoint),
        },
        Panel::Text {
            title: "per step (checkpoints and kernels.jsonl records)".into(),
            lines,
        },
    ]
}

/// The figure of a sub-view for the checkpoints `data` (ascending by step) and a selection.
pub fn figure(data: &[ModelKernels], sel: &Selection) -> Figure {
    let mut sel = *sel;
    sel.clamp(data);
    let Some(mk) = data.get(sel.checkpoint) else {
        return Figure {
            title: "no kernels".into(),
            notes: vec![],
            panels: vec![],
        };
    };
    let nl = mk.layers.len();
    let ch_note = if mk.shared {
        format!("{} ch shared", mk.width)
    } else {
        format!("channel {}/{}", sel.channel, mk.width)
    };
    let title = format!(
        "{} {} · {} · layer {} of 0–{} · {} · {}",
        mk.family,
        mk.label(),
        sel.view.title(),
        sel.layer,
        nl.saturating_sub(1),
        ch_note,
        sel.dir.label()
    );
    // The gated combination of the directions depends on the input: no fixed map exists to
    // show; the receptive field is the SSM's own (linear) response.
    let notes = vec![if sel.view == SubView::ReceptiveField {
        RECEPTIVE_NOTE.to_string()
    } else {
        mk.gate_note.to_string()
    }];
    let first = data.first().filter(|f| f.step != mk.step);
    let panels = match sel.view {
        SubView::Lag => lag_panels(mk, first, &sel),
        SubView::Heatmap => heatmap_panels(mk, &sel),
        SubView::Spectrum => spectrum_panels(mk, first, &sel),
        SubView::Eigen => eigen_panels(mk, &sel),
        SubView::Evolution => evolution_panels(data, &sel),
        SubView::ReceptiveField => match mk.image {
            Some(g) => vec![receptive_field(mk, &sel, &g)],
            None => vec![Panel::Text {
                title: "receptive field".into(),
                lines: vec![format!(
                    "{} is a sequence model: the receptive field needs an image model",
                    mk.family
                )],
            }],
        },
    };
    Figure {
        title,
        notes,
        panels,
    }
}

/// The caption of the receptive field: what the folded picture is, and is not.
pub const RECEPTIVE_NOTE: &str =
    "the SSM's linear response, before the input-dependent gates (not attention)";

/// The selected layer's and channel's kernels folded onto the patch grid around the selected
/// patch ([`fold_receptive_field`]): forward kernel on the patches at and before it in raster
/// order, backward kernel after it (one direction alone: zero on the other side).
fn receptive_field(mk: &ModelKernels, sel: &Selection, g: &ImageGrid) -> Panel {
    let (rows, cols, p) = (g.rows(), g.cols(), g.patch.max(1));
    let (pr, pc) = sel.patch(g);
    let l = &mk.layers[sel.layer];
    let (kf, kb) = (l.fwd.kernel(sel.channel), l.bwd.kernel(sel.channel));
    let raw = match sel.dir {
        DirSel::Both => fold_receptive_field(kf, kb, rows, cols, pr, pc),
        DirSel::Forward => fold_receptive_field(kf, &[], rows, cols, pr, pc),
        // the backward kernel's lag 0 sits at the patch itself
        DirSel::Backward => fold_receptive_field(&kb[..kb.len().min(1)], kb, rows, cols, pr, pc),
    };
    let (imax, max) =
        raw.iter().enumerate().fold(
            (0, 0f64),
            |(i, m), (j, v)| if v.abs() > m { (j, v.abs()) } else { (i, m) },
        );
    let values: Vec<f64> = raw
        .iter()
        .map(|v| if max > 0.0 { v / max } else { 0.0 })
        .collect();
    let idx = pr * cols + pc;
    let n = rows * cols;
    let here = raw.get(idx).copied().unwrap_or(0.0);
    let where_ = if p == 1 {
        format!("pixel ({pr}, {pc}) of {rows}×{cols}")
    } else {
        format!(
            "patch ({pr}, {pc}) of {rows}×{cols} = pixels {}–{} × {}–{}",
            pr * p,
            pr * p + p - 1,
            pc * p,
            pc * p + p - 1
        )
    };
    let above = raw
        .iter()
        .filter(|v| max > 0.0 && v.abs() >= 0.01 * max)
        .count();
    let mut legend = vec![
        where_,
        format!("token {idx} of L = {n} (raster order)"),
        format!(
            "[ ] marked: K_{}[0] = {here:.3}",
            if sel.dir == DirSel::Backward {
                "b"
            } else {
                "f"
            }
        ),
    ];
    if sel.dir != DirSel::Backward {
        legend.push(format!("before (above/left): K_f[d], d = 1…{idx}"));
    }
    if sel.dir != DirSel::Forward {
        legend.push(format!(
            "after (below/right): K_b[d], d = 1…{}",
            n - 1 - idx
        ));
    }
    legend.push(format!(
        "max |K| {max:.3} at ({}, {}); {above} of {n} ≥ 1% of it",
        imax / cols.max(1),
        imax % cols.max(1)
    ));
    legend.push("shade |K|/max, red +, blue −; skip D not shown".into());
    Panel::Field {
        title: format!("layer {} on the {rows}×{cols} patch grid", sel.layer),
        rows,
        cols,
        values,
        mark: (pr, pc),
        legend,
    }
}

/// The figure `ssmlab kernels --out x.png --pixel R,C` writes: the receptive field of image
/// pixel (R, C) for channel `channel` of every layer (or one).
pub fn receptive_overview(
    mk: &ModelKernels,
    layer: Option<usize>,
    channel: usize,
    patch: (usize, usize),
) -> Figure {
    let data = std::slice::from_ref(mk);
    let layers: Vec<usize> = match layer {
        Some(l) => vec![l],
        None => (0..mk.layers.len()).collect(),
    };
    let mut panels = Vec::new();
    for l in layers {
        let sel = Selection {
            view: SubView::ReceptiveField,
            layer: l,
            channel,
            pixel: Some(patch),
            ..Default::default()
        };
        panels.extend(figure(data, &sel).panels);
    }
    let ch = if mk.shared {
        format!("{} ch shared", mk.width)
    } else {
        format!("channel {channel}/{}", mk.width)
    };
    Figure {
        title: format!(
            "{} {} receptive field of patch ({}, {}), {ch}, fwd+bwd",
            mk.family,
            mk.label(),
            patch.0,
            patch.1
        ),
        notes: vec![RECEPTIVE_NOTE.into()],
        panels,
    }
}

/// The figure `ssmlab kernels --out x.png` writes: every layer's (or one layer's) signed
/// response, plus the layers × offset heatmap.
pub fn overview(mk: &ModelKernels, layer: Option<usize>) -> Figure {
    let data = std::slice::from_ref(mk);
    let mut panels = Vec::new();
    let layers: Vec<usize> = match layer {
        Some(l) => vec![l],
        None => (0..mk.layers.len()).collect(),
    };
    if layer.is_none() {
        let sel = Selection {
            view: SubView::Heatmap,
            ..Default::default()
        };
        panels.extend(figure(data, &sel).panels);
    }
    for l in layers {
        let sel = Selection {
            layer: l,
            ..Default::default()
        };
        let mut f = figure(data, &sel);
        if let Some(Panel::Plot { title, .. }) = f.panels.first_mut() {
            *title = format!("layer {l}: K over signed offsets");
        }
        panels.push(f.panels.remove(0));
    }
    Figure {
        title: format!(
            "{} {} kernels: {} layers, {}, L = {}",
            mk.family,
            mk.label(),
            mk.layers.len(),
            mk.channels_note(),
            mk.len
        ),
        notes: figure(data, &Selection::default()).notes,
        panels,
    }
}

// ------------------------------------------------------------------------------------------
// layout shared by the renderers (the TUI's Kernels view and the PNG export)

/// An axis tick label: the value (10^v on a log axis), in as few characters as reads well; both
/// renderers of a figure (the TUI and the PNG export) label their axes with it.
pub fn tick_label(v: f64, log: bool) -> String {
    let v = if log { 10f64.powf(v) } else { v };
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Bounds of the points of some series, padded; `None` when there is no point.
pub fn series_bounds(series: &[Series]) -> Option<([f64; 2], [f64; 2])> {
    let mut b = [f64::MAX, f64::MIN, f64::MAX, f64::MIN];
    let mut any = false;
    for (x, y) in series.iter().flat_map(|s| &s.points) {
        if x.is_finite() && y.is_finite() {
            any = true;
            b = [b[0].min(*x), b[1].max(*x), b[2].min(*y), b[3].max(*y)];
        }
    }
    if !any {
        return None;
    }
    if b[1] <= b[0] {
        b[1] = b[0] + 1.0;
    }
    let pad = ((b[3] - b[2]) * 0.05).max(1e-9);
    Some(([b[0], b[1]], [b[2] - pad, b[3] + pad]))
}

/// Heatmap columns: the x range split into `cols` bins (log-spaced values are already log10);
/// each bin keeps the value of largest magnitude among its points, and a bin without a point
/// (more columns than lags) takes the point nearest to its centre.
pub fn heat_bins(rows: &[HeatRow], cols: usize) -> (Vec<Vec<Option<f64>>>, [f64; 2]) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for (x, _) in rows.iter().flat_map(|r| &r.points) {
        lo = lo.min(*x);
        hi = hi.max(*x);
    }
    if lo > hi {
        return (vec![], [0.0, 1.0]);
    }
    let span = (hi - lo).max(1e-12);
    let cols = cols.max(1);
    let binned = rows
        .iter()
        .map(|r| {
            let mut bins: Vec<Option<f64>> = vec![None; cols];
            for (x, v) in &r.points {
                let i = (((x - lo) / span) * cols as f64).floor() as usize;
                let b = &mut bins[i.min(cols - 1)];
                if b.is_none_or(|old| v.abs() > old.abs()) {
                    *b = Some(*v);
                }
            }
            let mut sorted = r.points.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (rlo, rhi) = match (sorted.first(), sorted.last()) {
                (Some(a), Some(b)) => (a.0, b.0),
                _ => return bins,
            };
            for (j, b) in bins.iter_mut().enumerate() {
                let centre = lo + span * (j as f64 + 0.5) / cols as f64;
                if b.is_some() || centre < rlo || centre > rhi {
                    continue;
                }
                let k = sorted.partition_point(|p| p.0 < centre);
                let near = [k.checked_sub(1), Some(k)]
                    .into_iter()
                    .flatten()
                    .filter_map(|i| sorted.get(i))
                    .min_by(|a, c| (a.0 - centre).abs().total_cmp(&(c.0 - centre).abs()));
                *b = near.map(|p| p.1);
            }
            bins
        })
        .collect();
    (binned, [lo, hi])
}
