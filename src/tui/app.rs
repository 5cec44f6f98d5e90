//! TUI state and input handling. Drawing lives in `views/`. Slow work runs on worker threads
//! that `tui::event_loop` (in `tui/mod.rs`) starts: `spawn_worker` scans the runs folder,
//! `spawn_probe_worker` loads models and runs fill-mask, `spawn_kernels_worker` computes the
//! kernels of each checkpoint, `spawn_compare_worker` times training steps for the Compare view,
//! `image::spawn_image_worker` lists, decodes and encodes images, and
//! `views::samples::spawn_sample_worker` draws samples. The app hands them jobs through its
//! `*_tx` channels and gets their results back as messages (`on_probe_result`, `on_kernels_msg`,
//! …).

use std::collections::BTreeSet;
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, MouseEvent, MouseEventKind};

use super::image::{EncodeKey, ImageEvent, ImageJob, Protocol};
use super::keymap::{Action, Keymap, Scope, key_name};
use super::theme::Theme;
use super::views::form::LaunchForm;
use super::views::samples::{SampleEvent, SampleRequest};
use crate::runs::index::RunSummary;
use crate::runs::{Control, RunDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Runs,
    Curves,
    Probe,
    Samples,
    Kernels,
    Compare,
}

impl View {
    pub const ALL: [View; 6] = [
        View::Runs,
        View::Curves,
        View::Probe,
        View::Samples,
        View::Kernels,
        View::Compare,
    ];
    pub fn title(self) -> &'static str {
        match self {
            View::Runs => "Runs",
            View::Curves => "Curves",
            View::Probe => "Probe",
            View::Samples => "Samples",
            View::Kernels => "Kernels",
            View::Compare => "Compare",
        }
    }
    fn scope(self) -> Scope {
        match self {
            View::Curves => Scope::Curves,
            View::Probe => Scope::Probe,
            View::Kernels => Scope::Kernels,
            View::Compare => Scope::Compare,
            View::Samples => Scope::Samples,
            _ => Scope::Runs,
        }
    }
}

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
            XAxis::Step => super::chart::fmt_int(v),
            XAxis::Tokens => super::chart::fmt_count(v),
            XAxis::Wall => super::chart::fmt_duration(v),
        }
    }
}

/// Curves view settings.
#[derive(Debug, Clone)]
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
        }
    }
}

/// A modal on top of the view.
pub enum Popup {
    Help,
    Confirm { action: Control, run: String },
    Launch(Box<LaunchForm>),
    Diff,
    Message(String),
}

/// What the event loop should do after an input.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    Quit,
    /// Suspend the TUI and show this image full screen (viuer) until a key is pressed.
    FullScreen(PathBuf),
}

pub struct App {
    pub view: View,
    pub runs: Vec<RunSummary>,
    pub runs_dir: PathBuf,
    pub selected: usize,
    pub marked: BTreeSet<String>,
    pub curves: CurvesState,
    pub popup: Option<Popup>,
    pub keymap: Keymap,
    pub theme: Theme,
    /// Notices shown in the status line (ignored config lines, launch results…).
    pub notices: Vec<String>,
    pub ascii: bool,
    /// Path of the binary launched for new runs.
    pub exe: PathBuf,
    /// Plotted series of earlier frames (the UI thread's only cache).
    pub series_cache: super::views::curves::SeriesCache,
    pub probe: super::views::probe::ProbeState,
    /// Where probe jobs go (the probe worker); None in headless tests.
    pub probe_tx: Option<std::sync::mpsc::Sender<ProbeJob>>,
    pub kernels: super::views::kernels::KernelsState,
    /// Where kernel jobs go (the kernels worker); None in headless tests.
    pub kernels_tx: Option<std::sync::mpsc::Sender<KernelsJob>>,
    pub samples: super::views::samples::SamplesState,
    /// The image worker (listing, decoding, encoding); None in headless tests, where that
    /// work is done inline.
    pub image_tx: Option<std::sync::mpsc::Sender<ImageJob>>,
    /// The sampler worker ("sample now"); None in headless tests.
    pub sample_tx: Option<std::sync::mpsc::Sender<SampleRequest>>,
    /// The next frame must repaint the whole terminal (graphics protocol changed).
    pub clear_screen: bool,
    /// How images should be drawn (detection runs at start-up in the real terminal).
    pub image_choice: super::image::ProtocolChoice,
    pub compare: super::views::compare::CompareState,
    /// Where scaling jobs go (the Compare view's worker); None in headless tests.
    pub compare_tx: Option<std::sync::mpsc::Sender<CompareJob>>,
    /// The Runs view's filter, sort, display order and scroll positions.
    pub runs_view: super::views::runs::RunsState,
    /// First line shown of a scrollable overlay (help, config diff).
    pub popup_scroll: usize,
    /// The terminal's size, as the event loop last saw it (layout for input: paging, mouse
    /// hits). Drawing does not depend on it.
    pub viewport: ratatui::layout::Rect,
}

/// Time a training step of two models at several lengths (the Compare view's worker).
#[derive(Debug, Clone)]
pub struct CompareJob {
    pub generation: u64,
    /// (run id, config.toml text) of the BiGS run, then the attention run.
    pub runs: Vec<(String, String)>,
}

/// Compute the kernels of every checkpoint of a model path (the kernels worker).
#[derive(Debug, Clone)]
pub struct KernelsJob {
    pub generation: u64,
    pub model: PathBuf,
}

/// What the kernels worker reports, tagged with its job's generation.
#[derive(Debug)]
pub enum KernelsMsg {
    Started {
        generation: u64,
        total: usize,
    },
    Loaded {
        generation: u64,
        kernels: Box<crate::kernels::ModelKernels>,
    },
    Failed {
        generation: u64,
        error: String,
    },
    Done {
        generation: u64,
    },
}

/// A fill-mask request for the probe worker.
#[derive(Debug, Clone)]
pub struct ProbeJob {
    /// 0 = A, 1 = B.
    pub slot: usize,
    pub model: PathBuf,
    pub text: String,
}

impl App {
    pub fn new(runs_dir: PathBuf, keymap: Keymap, theme: Theme) -> Self {
        Self {
            view: View::Runs,
            runs: Vec::new(),
            runs_dir,
            selected: 0,
            marked: BTreeSet::new(),
            curves: CurvesState::default(),
            popup: None,
            keymap,
            theme,
            notices: Vec::new(),
            ascii: false,
            exe: std::env::current_exe().unwrap_or_else(|_| "ssmlab".into()),
            series_cache: Default::default(),
            probe: Default::default(),
            probe_tx: None,
            kernels: Default::default(),
            kernels_tx: None,
            samples: Default::default(),
            image_tx: None,
            sample_tx: None,
            clear_screen: false,
            image_choice: super::image::ProtocolChoice::Auto,
            compare: Default::default(),
            compare_tx: None,
            runs_view: Default::default(),
            popup_scroll: 0,
            viewport: ratatui::layout::Rect::new(0, 0, 80, 24),
        }
    }

    /// The terminal's size changed (or is first known): the runs table keeps its selection
    /// visible at the new size.
    pub fn set_viewport(&mut self, v: ratatui::layout::Rect) {
        if v != self.viewport {
            self.viewport = v;
            self.scroll_runs();
        }
    }

    /// Before a frame: computes what the frame shows and is not yet computed (the Curves
    /// series for the current settings and size), so drawing only reads. Costs nothing when
    /// nothing changed.
    pub fn prepare_frame(&mut self) {
        if self.view != View::Curves {
            return;
        }
        let wanted = super::views::curves::series_wanted(self, self.body_area());
        for (i, cs, buckets) in wanted {
            if let Some(r) = self.runs.get(i) {
                self.series_cache.ensure(r, &cs, buckets);
            }
        }
    }

    /// The area the views draw in (the terminal less the tab bar, status line and key bar).
    pub fn body_area(&self) -> ratatui::layout::Rect {
        let v = self.viewport;
        ratatui::layout::Rect::new(v.x, v.y + 1, v.width, v.height.saturating_sub(3))
    }

    /// The Runs view's layout at the current terminal size.
    pub fn runs_layout(&self) -> super::views::runs::RunsLayout {
        super::views::runs::layout(self.body_area(), self.runs_view.order.len())
    }

    /// Recomputes the runs' display order (filter, sort) and keeps the selection among the
    /// shown runs and visible.
    pub fn refresh_runs_view(&mut self) {
        self.runs_view.refresh(&self.runs);
        if self.runs_view.position(self.selected).is_none()
            && let Some(&first) = self.runs_view.order.first()
        {
            self.selected = first;
        }
        self.scroll_runs();
    }

    /// Moves the runs table's offset so the selected run is visible.
    fn scroll_runs(&mut self) {
        let rows = self.runs_layout().rows;
        let rs = &mut self.runs_view;
        let pos = rs.position(self.selected).unwrap_or(0);
        rs.offset = super::views::runs::keep_visible(rs.offset, pos, rows, rs.order.len());
    }

    pub fn selected_run(&self) -> Option<&RunSummary> {
        self.runs.get(self.selected)
    }

    /// The run the Samples view shows: the selected run if it is a diffusion run, else the
    /// default diffusion run (`diffussm-fashion`, else the first one), else the selected run
    /// (the view then says it has no images).
    pub fn samples_run(&self) -> Option<&RunSummary> {
        let diffusion = |r: &&RunSummary| crate::runs::is_diffusion(&r.model);
        self.selected_run()
            .filter(diffusion)
            .or_else(|| self.runs.iter().find(|r| r.id == "diffussm-fashion"))
            .or_else(|| self.runs.iter().find(diffusion))
            .or_else(|| self.selected_run())
    }

    /// New scan results from the worker; keeps the selection on the same run.
    pub fn set_runs(&mut self, runs: Vec<RunSummary>) {
        let keep = self.selected_run().map(|r| r.id.clone());
        self.runs = runs;
        if let Some(id) = keep
            && let Some(i) = self.runs.iter().position(|r| r.id == id)
        {
            self.selected = i;
        }
        self.selected = self.selected.min(self.runs.len().saturating_sub(1));
        self.refresh_runs_view();
        if self.probe.a.model.is_none() {
            // default model: the shipped run, else the first run with a checkpoint
            self.probe.a.model = self
                .runs
                .iter()
                .find(|r| r.id == "bigs-mobydick" && !r.checkpoints.is_empty())
                .or_else(|| self.runs.iter().find(|r| !r.checkpoints.is_empty()))
                .map(|r| r.path.clone());
        }
        self.sync_kernels();
        self.sync_samples();
    }

    /// In the Kernels view, asks the worker for the selected run's kernels when the run or its
    /// checkpoints changed.
    pub fn sync_kernels(&mut self) {
        if self.view != View::Kernels {
            return;
        }
        let Some(r) = self.selected_run() else {
            return;
        };
        // a new checkpoint or a new evaluation (a new `kernels.jsonl` record) reloads
        let steps = r.checkpoints.clone();
        let last_eval = r
            .metrics
            .iter()
            .rev()
            .find(|m| m.eval_loss.is_some())
            .map(|m| m.step);
        let (path, id, no_checkpoint) = (r.path.clone(), r.id.clone(), r.checkpoints.is_empty());
        let k = &mut self.kernels;
        if k.model.as_ref() == Some(&path)
            && k.requested == steps
            && k.requested_eval.is_none_or(|e| e == last_eval)
        {
            return;
        }
        k.requested_eval = Some(last_eval);
        if k.model.as_ref() != Some(&path) {
            k.follow_latest = true;
        }
        k.model = Some(path.clone());
        k.requested = steps.clone();
        k.data.clear();
        k.total = steps.len();
        k.error = None;
        k.busy = false;
        k.generation += 1;
        if no_checkpoint && !path.join(crate::runs::kernels::KERNELS_FILE).is_file() {
            k.error = Some(format!(
                "{id} has no checkpoint yet; its kernels appear with the first"
            ));
            return;
        }
        let job = KernelsJob {
            generation: k.generation,
            model: path,
        };
        match &self.kernels_tx {
            Some(tx) if tx.send(job).is_ok() => k.busy = true,
            _ => k.error = Some("the kernels worker is not running".into()),
        }
    }

    /// A message from the kernels worker.
    pub fn on_kernels_msg(&mut self, m: KernelsMsg) {
        let k = &mut self.kernels;
        let gen_of = |m: &KernelsMsg| match m {
            KernelsMsg::Started { generation, .. }
            | KernelsMsg::Loaded { generation, .. }
            | KernelsMsg::Failed { generation, .. }
            | KernelsMsg::Done { generation } => *generation,
        };
        if gen_of(&m) != k.generation {
            return;
        }
        match m {
            KernelsMsg::Started { total, .. } => {
                k.total = total;
                k.data.clear();
            }
            KernelsMsg::Loaded { kernels, .. } => {
                k.data.push(*kernels);
                if k.follow_latest {
                    k.sel.checkpoint = k.data.len() - 1;
                }
            }
            KernelsMsg::Failed { error, .. } => {
                k.error = Some(error);
                k.busy = false;
            }
            KernelsMsg::Done { .. } => k.busy = false,
        }
        k.sel.clamp(&k.data);
        k.update_figure();
    }

    /// Writes the Kernels view's picture as a PNG into the run directory (else the current
    /// folder) and says where in the status line.
    pub fn export_kernels(&mut self) {
        let k = &self.kernels;
        let Some(fig) = k.figure() else {
            self.notices.push("no kernels to export yet".into());
            return;
        };
        let mk = &k.data[k.sel.checkpoint.min(k.data.len() - 1)];
        let name = format!(
            "kernels-{}-{}-layer{}.png",
            k.sel.view.slug(),
            mk.label(),
            k.sel.layer
        );
        let dirs = [k.model.clone(), std::env::current_dir().ok()];
        let mut last_err = String::new();
        for d in dirs.into_iter().flatten() {
            let p = d.join(&name);
            match crate::kernels::export::write_png(&fig, &p) {
                Ok(()) => {
                    self.notices.push(format!("exported {}", p.display()));
                    return;
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        self.notices.push(format!("cannot export: {last_err}"));
    }

    /// Moves the receptive field's pixel by one patch (only in that sub-view of an image model).
    fn move_kernel_pixel(&mut self, action: Action) {
        use crate::kernels::figure::SubView;
        let k = &mut self.kernels;
        let grid = k.data.get(k.sel.checkpoint).and_then(|m| m.image);
        let Some(grid) = grid else {
            let what = k.data.first().map(|m| m.family).unwrap_or("no model");
            self.notices.push(format!(
                "{what}: the pixel keys move the receptive field of image models (DiffuSSM)"
            ));
            return;
        };
        if k.sel.view != SubView::ReceptiveField {
            self.notices
                .push("the pixel keys move the receptive field: press v until it shows".into());
            return;
        }
        let (dr, dc) = match action {
            Action::KernelPixelUp => (-1, 0),
            Action::KernelPixelDown => (1, 0),
            Action::KernelPixelLeft => (0, -1),
            _ => (0, 1),
        };
        k.sel.move_pixel(&grid, dr, dc);
    }

    /// Hands a job to the image worker, or does it now when there is none (tests).
    fn image_job(&mut self, job: ImageJob) {
        match &self.image_tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    let ev = super::image::handle(e.0);
                    self.on_image_event(ev);
                }
            }
            None => {
                let ev = super::image::handle(job);
                self.on_image_event(ev);
            }
        }
    }

    /// Keeps the samples view's data in step with the selection: lists the selected run's
    /// sample folders when the run changed, decodes the image shown (and, with a worker,
    /// its neighbours).
    pub fn sync_samples(&mut self) {
        if self.view != View::Samples {
            return;
        }
        let run = self.samples_run().map(|r| r.path.clone());
        if run != self.samples.run {
            self.samples.reset(run.clone());
            self.samples.error = None;
            if let Some(r) = run {
                self.image_job(ImageJob::List(r));
            }
            return; // the listing calls back here
        }
        let mut want: Vec<PathBuf> = self
            .samples
            .current_image()
            .map(|c| c.0)
            .into_iter()
            .collect();
        if self.image_tx.is_some() {
            // prefetch: the neighbouring steps at the same trajectory position
            let (sel, frame) = (self.samples.sel, self.samples.frame);
            for i in [sel + 1, sel.wrapping_sub(1)] {
                if let Some(s) = self.samples.sets.get(i) {
                    want.push(match frame.and_then(|f| s.meta.trajectory.get(f)) {
                        Some(fr) => s.path.join(&fr.file),
                        None => s.grid_path(),
                    });
                }
            }
        }
        if self.samples.pictures.len() > 64 {
            let keep: Vec<PathBuf> = want.clone();
            self.samples.pictures.retain(|p, _| keep.contains(p));
        }
        for p in want {
            if !self.samples.pictures.contains_key(&p) && self.samples.pending.insert(p.clone()) {
                self.image_job(ImageJob::Decode(p));
            }
        }
    }

    /// Called every quarter second or so: re-lists the samples of the selected run every 2 s
    /// while the samples view is shown (new steps appear as the trainer writes them).
    pub fn tick(&mut self) {
        if self.view != View::Samples {
            return;
        }
        let due = self
            .samples
            .listed_at
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(2));
        if due && let Some(r) = self.samples.run.clone() {
            self.samples.listed_at = Some(std::time::Instant::now());
            self.image_job(ImageJob::List(r));
        }
    }

    /// After a frame: encode the shown image for a graphics protocol at the pane's size (the
    /// same layout function as drawing, at the terminal's size).
    pub fn after_draw(&mut self) {
        let s = &self.samples;
        let protocol = s.output.active();
        if self.view != View::Samples || protocol == Protocol::Halfblocks {
            return;
        }
        let Some((path, _)) = s.current_image() else {
            return;
        };
        let pane = super::views::samples::image_rect(self, self.body_area()).unwrap_or_default();
        let key = EncodeKey {
            path: path.clone(),
            cols: pane.width,
            rows: pane.height,
            protocol,
        };
        if pane.width == 0
            || pane.height == 0
            || s.encoded.as_ref().is_some_and(|(k, _)| *k == key)
            || s.encoding.as_ref() == Some(&key)
        {
            return;
        }
        let Some(Ok(pic)) = s.pictures.get(&path) else {
            return;
        };
        let job = ImageJob::Encode {
            key: key.clone(),
            picture: pic.clone(),
            picker: Box::new(s.output.picker_for(protocol)),
        };
        self.samples.encoding = Some(key);
        self.image_job(job);
    }

    /// A result of the image worker.
    pub fn on_image_event(&mut self, ev: ImageEvent) {
        match ev {
            ImageEvent::Listed(run, sets) => {
                if Some(&run) == self.samples.run.as_ref() {
                    self.samples.set_sets(sets);
                    self.sync_samples();
                }
            }
            ImageEvent::Decoded(path, r) => {
                self.samples.pending.remove(&path);
                self.samples.pictures.insert(path, r);
            }
            ImageEvent::Encoded(key, r) => {
                if self.samples.encoding.as_ref() == Some(&key) {
                    self.samples.encoding = None;
                }
                if let Err(e) = &r {
                    self.notices.push(e.clone());
                }
                // sixel and iTerm2 images leave pixels behind that cell diffs do not erase
                self.clear_screen |= matches!(key.protocol, Protocol::Sixel | Protocol::Iterm2);
                self.samples.encoded = Some((key, r));
            }
        }
    }

    /// Sends "sample now" for the selected run to the sampler worker.
    pub fn sample_now(&mut self) {
        let Some(run) = self.selected_run() else {
            return;
        };
        if crate::runs::is_masked_lm(&run.model) {
            self.popup = Some(Popup::Message(format!(
                "{} is a {} run (masked LM): sampling needs a diffusion run. Train one: ssmlab train --preset diffussm-fashion",
                run.id,
                crate::runs::family_label(&run.model)
            )));
            return;
        }
        if self.samples.job.is_some() {
            self.notices.push("sampling is already running".into());
            return;
        }
        let req = self.samples.request(run.path.clone());
        self.samples.error = None;
        match &self.sample_tx {
            Some(tx) if tx.send(req).is_ok() => self.samples.job = Some(0.0),
            _ => self.samples.error = Some("the sampler worker is not running".into()),
        }
    }

    /// A message of the sampler worker.
    pub fn on_sample_event(&mut self, ev: SampleEvent) {
        match ev {
            SampleEvent::Progress(p) => {
                if self.samples.job.is_some() {
                    self.samples.job = Some(p);
                }
            }
            SampleEvent::Done(Ok(dir)) => {
                self.samples.job = None;
                self.notices
                    .push(format!("samples written to {}", dir.display()));
                self.samples.select_path = Some(dir);
                if let Some(r) = self.samples.run.clone() {
                    self.image_job(ImageJob::List(r));
                }
            }
            SampleEvent::Done(Err(e)) => {
                self.samples.job = None;
                self.notices.push(format!("sample now failed: {e}"));
                self.samples.error = Some(e);
            }
        }
    }

    /// Sends the prompt to the probe worker for each side that has a model.
    pub fn run_probe(&mut self) {
        let text = self.probe.prompt.trim().to_string();
        if text.is_empty() {
            return;
        }
        if self.probe.history.last() != Some(&text) {
            self.probe.history.push(text.clone());
        }
        self.probe.history_pos = None;
        for (i, slot) in [&mut self.probe.a, &mut self.probe.b]
            .into_iter()
            .enumerate()
        {
            let Some(model) = slot.model.clone() else {
                continue;
            };
            match &self.probe_tx {
                Some(tx)
                    if tx
                        .send(ProbeJob {
                            slot: i,
                            model,
                            text: text.clone(),
                        })
                        .is_ok() =>
                {
                    slot.busy = true
                }
                _ => slot.result = Some(Err("the probe worker is not running".into())),
            }
        }
    }

    /// A result from the probe worker.
    pub fn on_probe_result(&mut self, slot: usize, res: Result<crate::probe::ProbeOutput, String>) {
        let s = if slot == 0 {
            &mut self.probe.a
        } else {
            &mut self.probe.b
        };
        s.busy = false;
        s.result = Some(res);
    }

    fn on_probe_edit_key(&mut self, k: KeyEvent) {
        let p = &mut self.probe;
        match k.code {
            KeyCode::Esc => p.editing = false,
            KeyCode::Enter => {
                p.editing = false;
                self.run_probe();
            }
            KeyCode::Backspace => {
                p.prompt.pop();
            }
            KeyCode::Up | KeyCode::Down if !p.history.is_empty() => {
                let n = p.history.len();
                let i = match (p.history_pos, k.code) {
                    (None, KeyCode::Up) => n - 1,
                    (Some(i), KeyCode::Up) => i.saturating_sub(1),
                    (Some(i), _) => (i + 1).min(n - 1),
                    (None, _) => return,
                };
                p.history_pos = Some(i);
                p.prompt = p.history[i].clone();
            }
            KeyCode::Char(c)
                if !k
                    .modifiers
                    .contains(crossterm::event::KeyModifiers::CONTROL) =>
            {
                p.prompt.push(c)
            }
            _ => {}
        }
    }

    /// `s` in the Compare view: time both models (one BiGS, one attention run among the
    /// compared runs) at L = 128 … 4096 on the worker.
    pub fn start_scaling(&mut self) {
        let runs = super::views::compare::compared(self);
        let texts: Vec<(String, String)> = runs
            .iter()
            .map(|(r, _)| (r.id.clone(), r.config_text.clone()))
            .collect();
        drop(runs);
        let pair = crate::compare::scaling_pair(&texts);
        let c = &mut self.compare;
        let Some([b, a]) = pair else {
            c.error = Some(
                "the scaling needs a BiGS and an attention run among the compared runs \
                 (ssmlab compare --preset-pair bigs-tiny,bert-tiny)"
                    .into(),
            );
            return;
        };
        c.generation += 1;
        c.points.clear();
        c.error = None;
        c.measuring = true;
        c.scaling_models = Some((b.0.clone(), a.0.clone()));
        let job = CompareJob {
            generation: c.generation,
            runs: vec![b, a],
        };
        match &self.compare_tx {
            Some(tx) if tx.send(job).is_ok() => {}
            _ => {
                self.compare.measuring = false;
                self.compare.error = Some("the scaling worker is not running".into());
            }
        }
    }

    /// A message of the scaling worker (stale generations are dropped).
    pub fn on_compare_msg(&mut self, m: super::views::compare::CompareMsg) {
        use super::views::compare::CompareMsg;
        let c = &mut self.compare;
        match m {
            CompareMsg::Point(g, p) if g == c.generation => c.points.push(p),
            CompareMsg::Done(g) if g == c.generation => c.measuring = false,
            CompareMsg::Failed(g, e) if g == c.generation => {
                c.measuring = false;
                c.error = Some(e);
            }
            _ => {}
        }
    }

    /// Runs drawn in the curves view: the marked ones, else the selected one.
    pub fn plotted(&self) -> Vec<&RunSummary> {
        let marked: Vec<&RunSummary> = self
            .runs
            .iter()
            .filter(|r| self.marked.contains(&r.id))
            .collect();
        if marked.is_empty() {
            self.selected_run().into_iter().collect()
        } else {
            marked
        }
    }

    pub fn scope(&self) -> Scope {
        self.view.scope()
    }

    pub fn on_mouse(&mut self, m: MouseEvent) {
        use super::views::runs;
        let inside = |r: ratatui::layout::Rect| {
            m.column >= r.x && m.column < r.x + r.width && m.row >= r.y && m.row < r.y + r.height
        };
        let wheel = match m.kind {
            MouseEventKind::ScrollDown => 1i64,
            MouseEventKind::ScrollUp => -1,
            _ => 0,
        };
        if self.popup.is_some() {
            if wheel != 0 && matches!(self.popup, Some(Popup::Help | Popup::Diff)) {
                self.popup_scroll = (self.popup_scroll as i64 + 3 * wheel).max(0) as usize;
            }
            return;
        }
        if wheel != 0 {
            // the pane under the pointer scrolls
            let l = self.runs_layout();
            match self.view {
                View::Runs if inside(l.config) => {
                    let s = &mut self.runs_view.details_scroll;
                    *s = (*s as i64 + 3 * wheel).max(0) as usize;
                }
                View::Probe | View::Compare => self.page(wheel * 3),
                _ => self.move_sel(wheel),
            }
            self.sync_samples();
            return;
        }
        if !matches!(m.kind, MouseEventKind::Down(_)) {
            return;
        }
        if m.row == self.viewport.y {
            // the tab bar: a click on a tab opens its view
            if let Some(v) = super::views::tab_at(self.viewport, m.column) {
                self.view = v;
                self.sync_kernels();
                self.sync_samples();
            }
            return;
        }
        if self.view == View::Runs {
            let l = self.runs_layout();
            let rs = &self.runs_view;
            let offset = runs::keep_visible(
                rs.offset,
                rs.position(self.selected).unwrap_or(rs.offset),
                l.rows,
                rs.order.len(),
            );
            if let Some(pos) = runs::row_at(&l, offset, m.column, m.row)
                && let Some(&i) = rs.order.get(pos)
            {
                self.selected = i;
                self.runs_view.details_scroll = 0;
            }
        }
    }

    /// Moves the selection `d` rows in the Runs view's display order (filter and sort).
    fn move_sel(&mut self, d: i64) {
        let order = &self.runs_view.order;
        if order.is_empty() {
            return;
        }
        let n = order.len() as i64;
        let pos = self.runs_view.position(self.selected).unwrap_or(0) as i64;
        let new = order[(pos + d).clamp(0, n - 1) as usize];
        if new != self.selected {
            self.runs_view.details_scroll = 0;
        }
        self.selected = new;
        self.scroll_runs();
    }

    /// Typing into the runs filter: characters edit it (the order follows as typed), Enter
    /// keeps it, Esc clears it.
    fn on_filter_key(&mut self, k: KeyEvent) {
        let rs = &mut self.runs_view;
        match k.code {
            KeyCode::Enter => rs.filter_editing = false,
            KeyCode::Esc => {
                rs.filter_editing = false;
                rs.filter.clear();
            }
            KeyCode::Backspace => {
                rs.filter.pop();
            }
            KeyCode::Char(c)
                if !k
                    .modifiers
                    .contains(crossterm::event::KeyModifiers::CONTROL) =>
            {
                rs.filter.push(c)
            }
            _ => return,
        }
        self.refresh_runs_view();
    }

    /// Rows a page moves in the current view.
    fn page_rows(&self) -> i64 {
        match self.view {
            View::Runs => self.runs_layout().rows.max(1) as i64,
            _ => (self.body_area().height as i64 - 4).max(1),
        }
    }

    /// PgUp / PgDn / Home / End: the Probe results and the Compare table scroll; elsewhere
    /// the run selection moves.
    fn page(&mut self, d: i64) {
        let scroll = |v: &mut usize, max: usize| *v = (*v as i64 + d).clamp(0, max as i64) as usize;
        match self.view {
            View::Probe => {
                let max = self.probe.line_count();
                scroll(&mut self.probe.scroll, max)
            }
            View::Compare => {
                let max = super::views::compare::compared(self).len();
                scroll(&mut self.compare.scroll, max)
            }
            _ => self.move_sel(d),
        }
    }

    pub fn on_key(&mut self, k: KeyEvent) -> Effect {
        let e = self.on_key_inner(k);
        self.sync_samples();
        e
    }

    fn on_key_inner(&mut self, k: KeyEvent) -> Effect {
        if let Some(p) = self.popup.take() {
            return self.on_popup_key(p, k);
        }
        // insert modes (the runs filter, the probe prompt) take every key but Ctrl-C
        let filtering = self.view == View::Runs && self.runs_view.filter_editing;
        if filtering || (self.view == View::Probe && self.probe.editing) {
            if k.code == KeyCode::Char('c')
                && k.modifiers
                    .contains(crossterm::event::KeyModifiers::CONTROL)
            {
                return Effect::Quit;
            }
            if filtering {
                self.on_filter_key(k);
            } else {
                self.on_probe_edit_key(k);
            }
            return Effect::None;
        }
        let name = key_name(&k);
        let Some(action) = self.keymap.lookup(self.scope(), &name) else {
            if let Some((help, scope)) = self.keymap.elsewhere(self.scope(), &name) {
                self.notices.push(format!(
                    "{name} ({help}) works in {}, not in {}",
                    scope.label(),
                    self.view.title()
                ));
            }
            return Effect::None;
        };
        match action {
            Action::Quit => return Effect::Quit,
            Action::Help => {
                self.popup_scroll = 0;
                self.popup = Some(Popup::Help)
            }
            Action::ViewRuns => self.view = View::Runs,
            Action::ViewCurves => self.view = View::Curves,
            Action::ViewProbe => self.view = View::Probe,
            Action::ViewSamples => self.view = View::Samples,
            Action::ViewKernels => self.view = View::Kernels,
            Action::ViewCompare => self.view = View::Compare,
            Action::CompareX => self.compare.by_wall = !self.compare.by_wall,
            Action::CompareScaling => self.start_scaling(),
            Action::FocusNext => {
                let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
                self.view = View::ALL[(i + 1) % View::ALL.len()];
            }
            Action::Up => self.move_sel(-1),
            Action::Down => self.move_sel(1),
            Action::PageUp => self.page(-self.page_rows()),
            Action::PageDown => self.page(self.page_rows()),
            Action::First => self.page(-(i64::MAX / 4)),
            Action::Last => self.page(i64::MAX / 4),
            Action::Filter => {
                self.runs_view.filter_editing = true;
                self.refresh_runs_view();
            }
            Action::SortNext => {
                self.runs_view.sort = self.runs_view.sort.next();
                self.refresh_runs_view();
            }
            Action::SortReverse => {
                self.runs_view.reverse = !self.runs_view.reverse;
                self.refresh_runs_view();
            }
            Action::MarkAll => {
                let ids: Vec<String> = self
                    .runs_view
                    .order
                    .iter()
                    .map(|&i| self.runs[i].id.clone())
                    .collect();
                self.notices.push(format!("marked {} run(s)", ids.len()));
                self.marked.extend(ids);
            }
            Action::UnmarkAll => {
                self.notices
                    .push(format!("unmarked {} run(s)", self.marked.len()));
                self.marked.clear();
            }
            Action::DetailsUp => {
                let s = &mut self.runs_view.details_scroll;
                *s = s.saturating_sub(1);
            }
            Action::DetailsDown => self.runs_view.details_scroll += 1,
            // overlay keys act only inside overlays (`on_popup_key`)
            Action::PopupUp
            | Action::PopupDown
            | Action::PopupPageUp
            | Action::PopupPageDown
            | Action::PopupTop
            | Action::PopupBottom
            | Action::PopupClose => {}
            Action::Mark => {
                if let Some(id) = self.selected_run().map(|r| r.id.clone())
                    && !self.marked.remove(&id)
                {
                    self.marked.insert(id);
                }
            }
            Action::Launch => {
                self.popup = Some(Popup::Launch(Box::new(LaunchForm::new(
                    self.runs_dir.clone(),
                ))))
            }
            Action::Stop | Action::CheckpointNow => {
                if self.runs.is_empty() {
                    self.notices.push("no run to stop or checkpoint".into());
                } else if let Some(r) = self.selected_run() {
                    let running = r.state_label() == "running";
                    if running {
                        let action = if action == Action::Stop {
                            Control::Stop
                        } else {
                            Control::Checkpoint
                        };
                        self.popup = Some(Popup::Confirm {
                            action,
                            run: r.id.clone(),
                        });
                    } else {
                        self.notices
                            .push(format!("{} is {}, not running", r.id, r.state_label()));
                    }
                }
            }
            Action::Diff => {
                if self.marked.len() == 2 {
                    self.popup_scroll = 0;
                    self.popup = Some(Popup::Diff);
                } else {
                    self.popup = Some(Popup::Message(
                        "mark two runs with space, then press d to diff their configs".into(),
                    ));
                }
            }
            Action::NextMetric => {
                let i = Metric::ALL
                    .iter()
                    .position(|m| *m == self.curves.metric)
                    .unwrap_or(0);
                self.curves.metric = Metric::ALL[(i + 1) % Metric::ALL.len()];
            }
            Action::XAxis => {
                self.curves.x = match self.curves.x {
                    XAxis::Step => XAxis::Tokens,
                    XAxis::Tokens => XAxis::Wall,
                    XAxis::Wall => XAxis::Step,
                }
            }
            Action::LogScale => self.curves.log_y = !self.curves.log_y,
            Action::SmoothMore => self.curves.smoothing = (self.curves.smoothing + 0.1).min(0.99),
            Action::SmoothLess => self.curves.smoothing = (self.curves.smoothing - 0.1).max(0.0),
            Action::ZoomRecent => self.curves.zoom_recent = !self.curves.zoom_recent,
            Action::ProbeEdit => self.probe.editing = true,
            Action::ProbeRun => self.run_probe(),
            Action::ProbeSetA | Action::ProbeSetB => {
                if let Some(r) = self.selected_run() {
                    let path = r.path.clone();
                    let slot = if action == Action::ProbeSetA {
                        &mut self.probe.a
                    } else {
                        &mut self.probe.b
                    };
                    slot.model = Some(path);
                    slot.result = None;
                }
            }
            Action::KernelView => {
                let image = self.kernels.data.iter().any(|m| m.image.is_some());
                self.kernels.sel.view = self.kernels.sel.view.next(image);
            }
            Action::KernelPixelUp
            | Action::KernelPixelDown
            | Action::KernelPixelLeft
            | Action::KernelPixelRight => self.move_kernel_pixel(action),
            Action::KernelLogLag => self.kernels.sel.log_lag = !self.kernels.sel.log_lag,
            Action::KernelDirection => self.kernels.sel.dir = self.kernels.sel.dir.next(),
            Action::KernelLayerPrev => {
                self.kernels.sel.layer = self.kernels.sel.layer.saturating_sub(1)
            }
            Action::KernelLayerNext => self.kernels.sel.layer += 1,
            Action::KernelChannelPrev | Action::KernelChannelNext => {
                let k = &mut self.kernels;
                if let Some(mk) = k.data.first()
                    && mk.shared
                {
                    self.notices.push(format!(
                        "{} has {}: no channel to pick",
                        mk.family,
                        mk.channels_note()
                    ));
                } else if action == Action::KernelChannelPrev {
                    k.sel.channel = k.sel.channel.saturating_sub(1);
                } else {
                    k.sel.channel += 1;
                }
            }
            Action::KernelStepPrev => {
                self.kernels.follow_latest = false;
                self.kernels.sel.checkpoint = self.kernels.sel.checkpoint.saturating_sub(1);
            }
            Action::KernelStepNext => {
                self.kernels.follow_latest = false;
                self.kernels.sel.checkpoint += 1;
            }
            Action::KernelExport => self.export_kernels(),
            Action::Dashboard => self.curves.dashboard = !self.curves.dashboard,
            Action::OpenPanel => {
                if self.curves.dashboard {
                    self.curves.metric = Metric::ALL[self.curves.panel % Metric::ALL.len()];
                    self.curves.dashboard = false;
                }
            }
            Action::CursorLeft | Action::CursorRight if self.curves.dashboard => {
                let n = Metric::ALL.len();
                self.curves.panel = if action == Action::CursorLeft {
                    (self.curves.panel + n - 1) % n
                } else {
                    (self.curves.panel + 1) % n
                };
            }
            Action::CursorLeft | Action::CursorRight => {
                let d = if action == Action::CursorLeft {
                    -0.02
                } else {
                    0.02
                };
                self.curves.cursor = Some((self.curves.cursor.unwrap_or(1.0) + d).clamp(0.0, 1.0));
            }
            Action::SamplePrev => self.samples.move_sel(-1),
            Action::SampleNext => self.samples.move_sel(1),
            Action::SampleBack10 => self.samples.move_sel(-10),
            Action::SampleFwd10 => self.samples.move_sel(10),
            Action::SampleFirst => self.samples.move_sel(i64::MIN / 2),
            Action::SampleLast => self.samples.move_sel(i64::MAX / 2),
            Action::TrajNoisier => self.samples.scrub(-1),
            Action::TrajCleaner => self.samples.scrub(1),
            Action::SampleNow => self.sample_now(),
            Action::SampleClass => self.samples.cycle_class(),
            // Pages wrap modulo the count the pane has (`tile_window`); 720720 = lcm(1..=16)
            // keeps "previous" exact for up to 16 pages.
            Action::TilePagePrev => self.samples.page = (self.samples.page + 720_719) % 720_720,
            Action::TilePageNext => self.samples.page = (self.samples.page + 1) % 720_720,
            Action::GuidanceLess => self.samples.change_guidance(-0.5),
            Action::GuidanceMore => self.samples.change_guidance(0.5),
            Action::ImageProtocol => {
                self.samples.output.cycle();
                self.notices.push(self.samples.output.describe());
                self.samples.encoded = None;
                self.samples.encoding = None;
                self.clear_screen = true;
            }
            Action::FullScreen => match self.samples.current_image() {
                Some((p, _)) => return Effect::FullScreen(p),
                None => self
                    .notices
                    .push("no image to show: select a run with samples".into()),
            },
        }
        let k = &mut self.kernels;
        k.sel.clamp(&k.data);
        k.update_figure();
        self.sync_kernels();
        Effect::None
    }

    fn on_popup_key(&mut self, p: Popup, k: KeyEvent) -> Effect {
        if k.code == KeyCode::Char('c')
            && k.modifiers
                .contains(crossterm::event::KeyModifiers::CONTROL)
        {
            return Effect::Quit;
        }
        match p {
            Popup::Confirm { action, run } => match k.code {
                KeyCode::Char('y') | KeyCode::Enter => {
                    let dir = RunDir {
                        path: self.runs_dir.join(&run),
                    };
                    let what = match action {
                        Control::Stop => "stop",
                        Control::Checkpoint => "checkpoint",
                    };
                    match dir.request(action) {
                        Ok(()) => self.notices.push(format!("asked {run} to {what}")),
                        Err(e) => self
                            .notices
                            .push(format!("cannot ask {run} to {what}: {e}")),
                    }
                }
                _ => self.notices.push("cancelled".into()),
            },
            Popup::Launch(mut form) => match k.code {
                KeyCode::Esc => {}
                KeyCode::Enter => match form.launch(&self.exe) {
                    Ok(msg) => self.notices.push(msg),
                    Err(e) => {
                        form.error = Some(e);
                        self.popup = Some(Popup::Launch(form));
                    }
                },
                _ => {
                    form.on_key(k);
                    self.popup = Some(Popup::Launch(form));
                }
            },
            Popup::Help | Popup::Diff => {
                let page = (self.viewport.height as i64 - 8).max(1);
                let s = self.popup_scroll as i64;
                let to = match self.keymap.lookup(Scope::Popup, &key_name(&k)) {
                    Some(Action::PopupUp) => s - 1,
                    Some(Action::PopupDown) => s + 1,
                    Some(Action::PopupPageUp) => s - page,
                    Some(Action::PopupPageDown) => s + page,
                    Some(Action::PopupTop) => 0,
                    // drawing clamps to the last page
                    Some(Action::PopupBottom) => i64::MAX / 4,
                    _ => return Effect::None, // any other key closes
                };
                // the drawn position (clamped there) is where the next move starts
                let max = super::views::popup_max_scroll(self, &p);
                self.popup_scroll = to.clamp(0, max as i64) as usize;
                self.popup = Some(p);
            }
            Popup::Message(_) => {}
        }
        Effect::None
    }
}
