//! The samples view: a diffusion run's sample grids by training step (the same seed at every
//! checkpoint), a denoising-trajectory scrubber, class captions, and "sample now" on a worker.
//! Folders follow the contract in `runs::samples`; PNGs are decoded (and encoded for kitty /
//! sixel / iTerm2) by the image worker (`tui::image`), never on the UI thread.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, LineGauge, Paragraph, Wrap};

use crate::runs::index::RunSummary;
use crate::runs::samples::SampleSet;
use crate::tui::app::{App, Effect, Popup};
use crate::tui::image::{EncodeKey, HalfBlocks, ImageOutput, Picture, Protocol, halfblock_rect};
use crate::tui::image::{ImageEvent, ImageJob};
use crate::tui::keymap::Action;
use crate::tui::pane::{Ctx, Outcome, Pane};
use crate::tui::worker::WorkerMsg;

pub use crate::tui::worker::{SampleEvent, SampleRequest};

/// State of the samples view.
#[derive(Default)]
pub struct SamplesState {
    /// The run whose sample folders are listed.
    pub run: Option<PathBuf>,
    pub sets: Vec<SampleSet>,
    /// A listing of `run` has arrived.
    pub listed: bool,
    pub listed_at: Option<Instant>,
    /// Index into `sets`.
    pub sel: usize,
    /// Trajectory frame shown (index into the set's `trajectory`); `None` = the final grid.
    pub frame: Option<usize>,
    /// Sample-now class (`None` = unconditional).
    pub class: Option<u32>,
    /// Sample-now guidance (`None` = the selected grid's).
    pub guidance: Option<f64>,
    /// Progress of a running sample-now job.
    pub job: Option<f64>,
    pub error: Option<String>,
    /// Folder to select when the next listing shows it (a finished sample-now).
    pub select_path: Option<PathBuf>,
    /// The page of tiles shown when the whole grid does not fit legibly in half blocks
    /// (taken modulo the pages there are at the pane's size).
    pub page: usize,
    /// Decoded PNGs by path.
    pub pictures: HashMap<PathBuf, Result<Arc<Picture>, String>>,
    pub pending: HashSet<PathBuf>,
    /// The last protocol image encoded, for `encoded.0`.
    pub encoded: Option<(
        EncodeKey,
        Result<Box<ratatui_image::protocol::Protocol>, String>,
    )>,
    pub encoding: Option<EncodeKey>,
    pub output: ImageOutput,
}

impl SamplesState {
    pub fn current(&self) -> Option<&SampleSet> {
        self.sets.get(self.sel)
    }

    /// The file shown now and its diffusion time (`None` for the final grid).
    pub fn current_image(&self) -> Option<(PathBuf, Option<u32>)> {
        let s = self.current()?;
        match self.frame.and_then(|i| s.meta.trajectory.get(i)) {
            Some(f) => Some((s.path.join(&f.file), Some(f.t))),
            None => Some((s.grid_path(), None)),
        }
    }

    /// Forget everything about the previous run.
    pub fn reset(&mut self, run: Option<PathBuf>) {
        self.run = run;
        self.sets.clear();
        self.listed = false;
        self.listed_at = None;
        self.sel = 0;
        self.frame = None;
        self.select_path = None;
    }

    /// A new listing: keeps the selected folder, follows new steps when the latest one was
    /// selected, selects a finished sample-now folder. First listing: the latest trainer step.
    pub fn set_sets(&mut self, sets: Vec<SampleSet>) {
        let old = self.current().map(|s| s.path.clone());
        let was_latest_step = self.current().is_some_and(|s| !s.manual)
            && self.sets.iter().rposition(|s| !s.manual) == Some(self.sel);
        let first = !self.listed;
        // a folder rewritten in place (a resumed run) must be decoded again
        for s in &sets {
            if let Some(o) = self.sets.iter().find(|o| o.path == s.path)
                && o.meta != s.meta
            {
                self.pictures.retain(|p, _| !p.starts_with(&s.path));
            }
        }
        self.sets = sets;
        self.listed = true;
        self.listed_at = Some(Instant::now());
        let latest_step = self.sets.iter().rposition(|s| !s.manual);
        let by_path = |p: &PathBuf| self.sets.iter().position(|s| &s.path == p);
        self.sel = if let Some(i) = self.select_path.as_ref().and_then(by_path) {
            self.select_path = None;
            self.frame = None;
            i
        } else if first || was_latest_step {
            latest_step.unwrap_or(self.sets.len().saturating_sub(1))
        } else if let Some(i) = old.as_ref().and_then(by_path) {
            i
        } else {
            self.sel.min(self.sets.len().saturating_sub(1))
        };
        self.clamp_frame();
    }

    fn clamp_frame(&mut self) {
        let n = self.current().map_or(0, |s| s.meta.trajectory.len());
        if self.frame.is_some_and(|i| i >= n) {
            self.frame = None;
        }
    }

    /// Moves the selection by `d` folders (clamped).
    pub fn move_sel(&mut self, d: i64) {
        if self.sets.is_empty() {
            return;
        }
        self.sel = (self.sel as i64 + d).clamp(0, self.sets.len() as i64 - 1) as usize;
        self.clamp_frame();
    }

    /// `,` (−1, noisier) and `.` (+1, cleaner) through the trajectory, then the final grid.
    pub fn scrub(&mut self, d: i64) {
        let n = self.current().map_or(0, |s| s.meta.trajectory.len()) as i64;
        // positions 0..n are trajectory frames, n is the final grid
        let pos = self.frame.map_or(n, |i| i as i64);
        let pos = (pos + d).clamp(0, n);
        self.frame = if pos == n { None } else { Some(pos as usize) };
    }

    /// Class names of the selected grid (index = class id); ten numbered ones if it has none.
    pub fn class_names(&self) -> Vec<String> {
        match self.current() {
            Some(s) if !s.meta.class_names.is_empty() => s.meta.class_names.clone(),
            _ => (0..10).map(|i| i.to_string()).collect(),
        }
    }

    /// `c`: none → 0 → 1 → … → last class → none.
    pub fn cycle_class(&mut self) {
        let n = self.class_names().len() as u32;
        self.class = match self.class {
            None if n > 0 => Some(0),
            Some(c) if c + 1 < n => Some(c + 1),
            _ => None,
        };
    }

    pub fn effective_guidance(&self) -> f64 {
        self.guidance
            .or(self.current().map(|s| s.meta.guidance))
            .unwrap_or(1.0)
    }

    pub fn change_guidance(&mut self, d: f64) {
        let g = (self.effective_guidance() + d).max(0.0);
        self.guidance = Some((g * 2.0).round() / 2.0);
    }

    /// The sample-now request for the selected grid's seed, checkpoint and sampler.
    pub fn request(&self, run: PathBuf) -> SampleRequest {
        let s = self.current().filter(|s| !s.manual).or(self.current());
        SampleRequest {
            run,
            step: s.map(|s| s.meta.step),
            class: self.class,
            n: s.map_or(16, |s| (s.meta.rows * s.meta.cols).max(1)),
            guidance: self.effective_guidance(),
            steps: s.map_or(50, |s| s.meta.sampling_steps.max(1)),
            seed: s.map_or(0, |s| s.meta.seed),
        }
    }
}

/// The run the Samples view shows: the selected run if it is a diffusion run, else the
/// default diffusion run (`diffussm-fashion`, else the first one), else the selected run
/// (the view then says it has no images).
pub fn samples_run(runs: &[RunSummary], selected: usize) -> Option<&RunSummary> {
    let diffusion = |r: &&RunSummary| crate::runs::is_diffusion(&r.model);
    let sel = runs.get(selected);
    sel.filter(diffusion)
        .or_else(|| runs.iter().find(|r| r.id == "diffussm-fashion"))
        .or_else(|| runs.iter().find(diffusion))
        .or(sel)
}

impl SamplesState {
    /// Hands a job to the image worker, or does it now when there is none (tests).
    fn image_job(&mut self, job: ImageJob, cx: &mut Ctx) {
        let job = match &cx.workers.image {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        let ev = crate::tui::image::handle(job);
        self.on_image_event(ev, cx);
    }

    /// A result of the image worker.
    fn on_image_event(&mut self, ev: ImageEvent, cx: &mut Ctx) {
        match ev {
            ImageEvent::Listed(run, sets) => {
                if Some(&run) == self.run.as_ref() {
                    self.set_sets(sets);
                    self.sync(cx);
                }
            }
            ImageEvent::Decoded(path, r) => {
                self.pending.remove(&path);
                self.pictures.insert(path, r);
            }
            ImageEvent::Encoded(key, r) => {
                if self.encoding.as_ref() == Some(&key) {
                    self.encoding = None;
                }
                if let Err(e) = &r {
                    cx.notices.push(e.clone());
                }
                // sixel and iTerm2 images leave pixels behind that cell diffs do not erase
                *cx.clear_screen |= matches!(key.protocol, Protocol::Sixel | Protocol::Iterm2);
                self.encoded = Some((key, r));
            }
        }
    }

    /// A message of the sampler worker.
    fn on_sample_event(&mut self, ev: SampleEvent, cx: &mut Ctx) {
        match ev {
            SampleEvent::Progress(p) => {
                if self.job.is_some() {
                    self.job = Some(p);
                }
            }
            SampleEvent::Done(Ok(dir)) => {
                self.job = None;
                cx.notices
                    .push(format!("samples written to {}", dir.display()));
                self.select_path = Some(dir);
                if let Some(r) = self.run.clone() {
                    self.image_job(ImageJob::List(r), cx);
                }
            }
            SampleEvent::Done(Err(e)) => {
                self.job = None;
                cx.notices.push(format!("sample now failed: {e}"));
                self.error = Some(e);
            }
        }
    }

    /// Sends "sample now" for the selected run to the sampler worker.
    fn sample_now(&mut self, cx: &mut Ctx) {
        let Some(run) = cx.selected_run() else {
            return;
        };
        if crate::runs::is_masked_lm(&run.model) {
            *cx.popup = Some(Popup::Message(format!(
                "{} is a {} run (masked LM): sampling needs a diffusion run. Train one: ssmlab train --preset diffussm-fashion",
                run.id,
                crate::runs::family_label(&run.model)
            )));
            return;
        }
        if self.job.is_some() {
            cx.notices.push("sampling is already running".into());
            return;
        }
        let req = self.request(run.path.clone());
        self.error = None;
        match &cx.workers.sample {
            Some(tx) if tx.send(req).is_ok() => self.job = Some(0.0),
            _ => self.error = Some("the sampler worker is not running".into()),
        }
    }

    /// Called every quarter second or so while the view is shown: re-lists the samples of
    /// the shown run every 2 s (new steps appear as the trainer writes them).
    pub fn tick(&mut self, cx: &mut Ctx) {
        let due = self
            .listed_at
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(2));
        if due && let Some(r) = self.run.clone() {
            self.listed_at = Some(Instant::now());
            self.image_job(ImageJob::List(r), cx);
        }
    }

    /// After a frame: encodes the shown image for a graphics protocol at the pane's size (the
    /// layout function drawing uses, at the terminal's size).
    pub fn after_draw(&mut self, cx: &mut Ctx) {
        let protocol = self.output.active();
        if protocol == Protocol::Halfblocks {
            return;
        }
        let Some((path, _)) = self.current_image() else {
            return;
        };
        let pane = image_rect(self, cx.body).unwrap_or_default();
        let key = EncodeKey {
            path: path.clone(),
            cols: pane.width,
            rows: pane.height,
            protocol,
        };
        if pane.width == 0
            || pane.height == 0
            || self.encoded.as_ref().is_some_and(|(k, _)| *k == key)
            || self.encoding.as_ref() == Some(&key)
        {
            return;
        }
        let Some(Ok(pic)) = self.pictures.get(&path) else {
            return;
        };
        let job = ImageJob::Encode {
            key: key.clone(),
            picture: pic.clone(),
            picker: Box::new(self.output.picker_for(protocol)),
        };
        self.encoding = Some(key);
        self.image_job(job, cx);
    }
}

impl Pane for SamplesState {
    fn handle(&mut self, action: Action, cx: &mut Ctx) -> Outcome {
        match action {
            Action::SamplePrev => self.move_sel(-1),
            Action::SampleNext => self.move_sel(1),
            Action::SampleBack10 => self.move_sel(-10),
            Action::SampleFwd10 => self.move_sel(10),
            Action::SampleFirst => self.move_sel(i64::MIN / 2),
            Action::SampleLast => self.move_sel(i64::MAX / 2),
            Action::TrajNoisier => self.scrub(-1),
            Action::TrajCleaner => self.scrub(1),
            Action::SampleNow => self.sample_now(cx),
            Action::SampleClass => self.cycle_class(),
            // Pages wrap modulo the count the pane has (`tile_window`); 720720 = lcm(1..=16)
            // keeps "previous" exact for up to 16 pages.
            Action::TilePagePrev => self.page = (self.page + 720_719) % 720_720,
            Action::TilePageNext => self.page = (self.page + 1) % 720_720,
            Action::GuidanceLess => self.change_guidance(-0.5),
            Action::GuidanceMore => self.change_guidance(0.5),
            Action::ImageProtocol => {
                self.output.cycle();
                cx.notices.push(self.output.describe());
                self.encoded = None;
                self.encoding = None;
                *cx.clear_screen = true;
            }
            Action::FullScreen => match self.current_image() {
                Some((p, _)) => return Outcome::Effect(Effect::FullScreen(p)),
                None => cx
                    .notices
                    .push("no image to show: select a run with samples".into()),
            },
            _ => return Outcome::Pass,
        }
        Outcome::Done
    }

    fn on_msg(&mut self, m: WorkerMsg, cx: &mut Ctx) {
        match m {
            WorkerMsg::Image(ev) => self.on_image_event(ev, cx),
            WorkerMsg::Sample(ev) => self.on_sample_event(ev, cx),
            _ => {}
        }
    }

    /// Keeps the view's data in step with the selection: lists the shown run's sample
    /// folders when the run changed, decodes the image shown (and, with a worker, its
    /// neighbours).
    fn sync(&mut self, cx: &mut Ctx) {
        let run = samples_run(cx.runs, *cx.selected).map(|r| r.path.clone());
        if run != self.run {
            self.reset(run.clone());
            self.error = None;
            if let Some(r) = run {
                self.image_job(ImageJob::List(r), cx);
            }
            return; // the listing calls back here
        }
        let mut want: Vec<PathBuf> = self.current_image().map(|c| c.0).into_iter().collect();
        if cx.workers.image.is_some() {
            // prefetch: the neighbouring steps at the same trajectory position
            let (sel, frame) = (self.sel, self.frame);
            for i in [sel + 1, sel.wrapping_sub(1)] {
                if let Some(s) = self.sets.get(i) {
                    want.push(match frame.and_then(|f| s.meta.trajectory.get(f)) {
                        Some(fr) => s.path.join(&fr.file),
                        None => s.grid_path(),
                    });
                }
            }
        }
        if self.pictures.len() > 64 {
            let keep: Vec<PathBuf> = want.clone();
            self.pictures.retain(|p, _| keep.contains(p));
        }
        for p in want {
            if !self.pictures.contains_key(&p) && self.pending.insert(p.clone()) {
                self.image_job(ImageJob::Decode(p), cx);
            }
        }
    }

    fn draw(&self, f: &mut Frame, area: Rect, app: &App) {
        draw(f, app, area)
    }
}

fn class_name(names: &[String], c: Option<u32>) -> String {
    match c {
        None => "uncond.".into(),
        Some(c) => names
            .get(c as usize)
            .cloned()
            .unwrap_or_else(|| c.to_string()),
    }
}

fn set_label(s: &SampleSet) -> String {
    if s.manual {
        format!("now @{}", s.meta.step)
    } else {
        format!("step {}", s.meta.step)
    }
}

/// The class of each tile row (or column) when it is the same across that row, and not the
/// same for all tiles.
fn uniform_lines(set: &SampleSet, by_row: bool) -> Option<Vec<Option<u32>>> {
    let m = &set.meta;
    if m.classes.len() < m.rows * m.cols || m.rows * m.cols == 0 {
        return None;
    }
    let (outer, inner) = if by_row {
        (m.rows, m.cols)
    } else {
        (m.cols, m.rows)
    };
    let at = |o: usize, i: usize| {
        if by_row {
            m.classes[o * m.cols + i]
        } else {
            m.classes[i * m.cols + o]
        }
    };
    let mut out = Vec::with_capacity(outer);
    for o in 0..outer {
        let c = at(o, 0);
        if (1..inner).any(|i| at(o, i) != c) {
            return None;
        }
        out.push(c);
    }
    if outer < 2 || out.iter().all(|c| *c == out[0]) {
        return None;
    }
    Some(out)
}

/// The one class of all tiles, if they share it.
fn single_class(set: &SampleSet) -> Option<Option<u32>> {
    let c = set.meta.classes.first()?;
    set.meta.classes.iter().all(|x| x == c).then_some(*c)
}

fn message(f: &mut Frame, app: &App, area: Rect, title: &str, lines: Vec<String>) {
    let t = &app.theme;
    let lines: Vec<Line> = lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| Line::from(Span::styled(l, if i == 0 { t.accent() } else { t.text() })))
        .collect();
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(title.to_string()),
        ),
        area,
    );
}

fn is_bigs(model: &str) -> bool {
    crate::runs::is_masked_lm(model)
}

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let s = &app.samples;
    let Some(run) = app.samples_run() else {
        message(
            f,
            app,
            area,
            " Samples ",
            vec![
                format!("No runs under {}.", app.runs_dir.display()),
                String::new(),
                "Train a diffusion model to see its samples here:".into(),
                "  ssmlab train --preset diffussm-fashion".into(),
            ],
        );
        return;
    };
    if s.sets.is_empty() {
        let title = format!(" Samples · {} ", crate::text::sanitize(&run.id));
        let mut lines = if !s.listed {
            vec![format!("Reading the samples of {}…", run.id)]
        } else if is_bigs(&run.model) {
            vec![
                format!(
                    "{} is a {} run (masked LM): it has no image samples.",
                    run.id,
                    crate::runs::family_label(&run.model)
                ),
                String::new(),
                "Select a diffusion run with j/k, or train one:".into(),
                "  ssmlab train --preset diffussm-fashion".into(),
            ]
        } else {
            vec![
                format!("{} has no samples yet.", run.id),
                String::new(),
                "The trainer writes samples/step-N/ every train.sample_every steps; Enter samples now from the latest checkpoint.".into(),
                "A diffusion run to start from: ssmlab train --preset diffussm-fashion".into(),
            ]
        };
        if let Some(e) = &s.error {
            lines.push(String::new());
            lines.push(e.clone());
        }
        if !s.listed || is_bigs(&run.model) {
            message(f, app, area, &title, lines);
        } else {
            let [top, bottom] =
                Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
            message(f, app, top, &title, lines);
            draw_sample_now(f, app, bottom);
        }
        return;
    }
    let [list, caption, pane, now] = main_layout(area);
    draw_list(f, app, list);
    draw_caption(f, app, &run.id, caption);
    draw_pane(f, app, pane);
    draw_sample_now(f, app, now);
}

/// The view's areas when it shows samples: the list of steps, the caption, the image pane
/// and the sample-now line.
fn main_layout(area: Rect) -> [Rect; 4] {
    let list_w = if area.width >= 100 { 18 } else { 14 };
    let [list, main] =
        Layout::horizontal([Constraint::Length(list_w), Constraint::Min(20)]).areas(area);
    let [caption, pane, now] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(main);
    [list, caption, pane, now]
}

/// Where the image goes inside the pane's frame `inner`: less a column of class names on the
/// left (one class per tile row; its width is returned) or a row of them on top.
fn image_area(set: &SampleSet, inner: Rect) -> (Rect, u16) {
    let names = &set.meta.class_names;
    let rows = uniform_lines(set, true);
    let mut img_area = inner;
    if let Some(r) = &rows {
        let longest = r
            .iter()
            .map(|c| class_name(names, *c).chars().count())
            .max()
            .unwrap_or(0);
        let label_w = (longest.min(12) + 1) as u16;
        if inner.width >= label_w + 20 {
            img_area.x += label_w;
            img_area.width -= label_w;
            return (img_area, label_w);
        }
    } else if uniform_lines(set, false).is_some() && inner.height >= 6 {
        img_area.y += 1;
        img_area.height -= 1;
    }
    (img_area, 0)
}

/// The image's area in the view's body `area`, as [`draw`] lays it out (None: no image shown).
/// Input and the encoder use it; drawing computes the same, nothing is stored.
pub fn image_rect(s: &SamplesState, area: Rect) -> Option<Rect> {
    let set = s.current()?;
    s.current_image()?;
    let [_, _, pane, _] = main_layout(area);
    Some(image_area(set, Block::default().borders(Borders::ALL).inner(pane)).0)
}

fn draw_list(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let s = &app.samples;
    let h = area.height.saturating_sub(2) as usize;
    let start = if h == 0 {
        0
    } else {
        (s.sel + 1)
            .saturating_sub(h)
            .min(s.sets.len().saturating_sub(h))
    };
    let lines: Vec<Line> = s
        .sets
        .iter()
        .enumerate()
        .skip(start)
        .take(h)
        .map(|(i, set)| {
            let style = if i == s.sel { t.selected() } else { t.text() };
            Line::from(Span::styled(format!(" {} ", set_label(set)), style))
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(format!(
            " {}/{} ",
            s.sel + 1,
            s.sets.len()
        ))),
        area,
    );
}

fn draw_caption(f: &mut Frame, app: &App, run_id: &str, area: Rect) {
    let t = &app.theme;
    let s = &app.samples;
    let Some(set) = s.current() else { return };
    let m = &set.meta;
    let steps: Vec<&SampleSet> = s.sets.iter().filter(|x| !x.manual).collect();
    let same = if steps.len() > 1 && steps.iter().all(|x| x.meta.seed == m.seed) {
        format!(", the same at all {} steps", steps.len())
    } else if steps.len() > 1 {
        ", differs across steps".into()
    } else {
        String::new()
    };
    let class = match single_class(set) {
        Some(c) => format!(" · class {}", class_name(&m.class_names, c)),
        None => String::new(),
    };
    let what = if set.manual {
        format!("drawn now from step {}", m.step)
    } else {
        format!("step {}", m.step)
    };
    let line1 = Line::from(vec![
        Span::styled(format!("{run_id} · {what}"), t.accent()),
        Span::styled(
            format!(
                " · seed {}{same} · {} {} steps · guidance {:.1} · {}{class}",
                m.seed,
                m.sampler,
                m.sampling_steps,
                m.guidance,
                if m.ema { "EMA" } else { "raw weights" },
            ),
            t.text(),
        ),
    ]);
    // the trajectory: every kept t, then x₀
    let mut spans = vec![Span::styled("trajectory (, .) ", t.muted())];
    let n = m.trajectory.len();
    let cur = s.frame.unwrap_or(n);
    let mut items: Vec<String> = m
        .trajectory
        .iter()
        .map(|fr| format!("t={}", fr.t))
        .collect();
    items.push("x₀".into());
    let full: usize = items.iter().map(|i| i.chars().count() + 2).sum::<usize>() + 17;
    if full <= area.width as usize {
        for (i, it) in items.iter().enumerate() {
            let style = if i == cur { t.selected() } else { t.muted() };
            spans.push(Span::styled(format!(" {it} "), style));
        }
    } else {
        spans.push(Span::styled(
            format!(" {} ", items[cur.min(n)]),
            t.selected(),
        ));
        spans.push(Span::styled(
            format!(" frame {}/{}", cur + 1, n + 1),
            t.muted(),
        ));
    }
    f.render_widget(
        Paragraph::new(vec![line1, Line::from(spans)])
            .wrap(Wrap { trim: false })
            .block(Block::default()),
        area,
    );
}

fn draw_pane(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let s = &app.samples;
    let (Some(set), Some((path, _))) = (s.current(), s.current_image()) else {
        return;
    };
    let m = &set.meta;
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        " {file} · {}×{} of {}×{} · {} (P) ",
        m.rows,
        m.cols,
        m.tile_h,
        m.tile_w,
        s.output.label()
    );
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let pic = match s.pictures.get(&path) {
        None => {
            f.render_widget(
                Paragraph::new(Span::styled(format!("decoding {file}…"), t.muted())),
                inner,
            );
            return;
        }
        Some(Err(e)) => {
            f.render_widget(
                Paragraph::new(Span::styled(e.clone(), Style::default().fg(t.error)))
                    .wrap(Wrap { trim: false }),
                inner,
            );
            return;
        }
        Some(Ok(p)) => p.clone(),
    };
    // room for class names: a column on the left (one class per tile row) or a row on top
    let names = &m.class_names;
    let rows = uniform_lines(set, true);
    let cols = if rows.is_none() {
        uniform_lines(set, false)
    } else {
        None
    };
    let (img_area, label_w) = image_area(set, inner);
    // Half blocks at small sizes: a page of tiles at least half their pixel size (a 28×28
    // tile 14 cells wide), paged with PgUp/PgDn, instead of the whole grid too small to judge.
    let win = (s.output.active() == Protocol::Halfblocks)
        .then(|| tile_window(m.rows, m.cols, m.tile_h, m.tile_w, img_area, s.page))
        .flatten();
    let (pic, rows, cols, grid_rows, grid_cols) = match &win {
        Some(w) => (
            std::sync::Arc::new(pic.crop(
                w.c0 * (m.tile_w + 1),
                w.r0 * (m.tile_h + 1),
                (w.nc * (m.tile_w + 1)).saturating_sub(1),
                (w.nr * (m.tile_h + 1)).saturating_sub(1),
            )),
            rows.map(|r| r[w.r0..w.r0 + w.nr].to_vec()),
            cols.map(|c| c[w.c0..w.c0 + w.nc].to_vec()),
            w.nr,
            w.nc,
        ),
        None => (pic, rows, cols, m.rows, m.cols),
    };
    if let Some(w) = &win {
        let note = format!(
            " tiles {}–{} × {}–{} · page {}/{} (PgUp/PgDn) ",
            w.r0 + 1,
            w.r0 + w.nr,
            w.c0 + 1,
            w.c0 + w.nc,
            w.page + 1,
            w.pages
        );
        let width = (note.chars().count() as u16).min(area.width.saturating_sub(2));
        f.render_widget(
            Paragraph::new(Span::styled(note, t.accent())),
            Rect::new(
                area.right().saturating_sub(width + 1),
                area.bottom().saturating_sub(1),
                width,
                1,
            ),
        );
    }
    // the image: a protocol image once encoded for this pane, else half blocks
    let key = EncodeKey {
        path: path.clone(),
        cols: img_area.width,
        rows: img_area.height,
        protocol: s.output.active(),
    };
    let mut place = halfblock_rect(pic.w, pic.h, img_area);
    match &s.encoded {
        Some((k, Ok(proto))) if *k == key && key.protocol != Protocol::Halfblocks => {
            let size = proto.size();
            place = Rect {
                x: img_area.x + img_area.width.saturating_sub(size.width) / 2,
                y: img_area.y + img_area.height.saturating_sub(size.height) / 2,
                width: size.width.min(img_area.width),
                height: size.height.min(img_area.height),
            };
            f.render_widget(ratatui_image::Image::new(proto), place);
        }
        _ => f.render_widget(
            HalfBlocks {
                picture: &pic,
                shades: app.theme.no_color,
            },
            img_area,
        ),
    }
    if place.width == 0 || place.height == 0 || grid_rows == 0 || grid_cols == 0 {
        return;
    }
    // tile centres as fractions of the grid (tiles are separated by a 1-pixel gap)
    let centre = |i: usize, n: usize, tile: usize| {
        (i * (tile + 1) + tile / 2) as f64 / (n * (tile + 1) - 1).max(1) as f64
    };
    if let (Some(r), true) = (&rows, label_w > 0) {
        let mut last_y = None;
        for (i, c) in r.iter().enumerate() {
            let y = place.y + (centre(i, grid_rows, m.tile_h) * place.height as f64) as u16;
            if last_y == Some(y) || y >= place.y + place.height {
                continue;
            }
            last_y = Some(y);
            let name: String = class_name(names, *c)
                .chars()
                .take(label_w as usize - 1)
                .collect();
            let w = name.chars().count() as u16;
            let x = place.x.saturating_sub(w + 1).max(inner.x);
            f.render_widget(
                Paragraph::new(Span::styled(name, t.muted())),
                Rect::new(x, y, w, 1),
            );
        }
    } else if let Some(c) = &cols
        && place.y > inner.y
    {
        let tile_cells = (place.width as usize / grid_cols).saturating_sub(1);
        if tile_cells >= 3 {
            for (i, cl) in c.iter().enumerate() {
                let name: String = class_name(names, *cl).chars().take(tile_cells).collect();
                let w = name.chars().count() as u16;
                let cx = place.x + (centre(i, grid_cols, m.tile_w) * place.width as f64) as u16;
                let x = cx.saturating_sub(w / 2).max(inner.x);
                f.render_widget(
                    Paragraph::new(Span::styled(name, t.muted())),
                    Rect::new(x, place.y - 1, w.min(inner.right().saturating_sub(x)), 1),
                );
            }
        }
    }
}

/// A page of tiles of a grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileWindow {
    pub r0: usize,
    pub nr: usize,
    pub c0: usize,
    pub nc: usize,
    pub page: usize,
    pub pages: usize,
}

/// The page `page` (modulo the pages there are) of a `rows`×`cols` grid of `tile_h`×`tile_w`
/// tiles (1-pixel gaps) shown in half blocks in `area` with every tile at least half its pixel
/// size (one cell per two pixels across, two pixels per cell down: a 28×28 tile is then at
/// least 14 cells wide); `None` when the whole grid fits at that size.
pub fn tile_window(
    rows: usize,
    cols: usize,
    tile_h: usize,
    tile_w: usize,
    area: Rect,
    page: usize,
) -> Option<TileWindow> {
    if rows == 0 || cols == 0 || tile_h == 0 || tile_w == 0 {
        return None;
    }
    // at half size a window of n tiles (n·(t+1)−1 pixels) needs half that many cells across
    // and a quarter that many rows
    let nc = ((2 * area.width as usize + 1) / (tile_w + 1)).clamp(1, cols);
    let nr = ((4 * area.height as usize + 1) / (tile_h + 1)).clamp(1, rows);
    if nc >= cols && nr >= rows {
        return None;
    }
    let (pr, pc) = (rows.div_ceil(nr), cols.div_ceil(nc));
    let pages = pr * pc;
    let page = page % pages;
    let (r0, c0) = ((page / pc) * nr, (page % pc) * nc);
    Some(TileWindow {
        r0,
        nr: nr.min(rows - r0),
        c0,
        nc: nc.min(cols - c0),
        page,
        pages,
    })
}

fn draw_sample_now(f: &mut Frame, app: &App, area: Rect) {
    let t = &app.theme;
    let s = &app.samples;
    if let Some(p) = s.job {
        f.render_widget(
            LineGauge::default()
                .filled_style(Style::default().fg(t.accent))
                .label(format!("sampling {:>3.0}% ", p * 100.0))
                .ratio(p.clamp(0.0, 1.0)),
            area,
        );
        return;
    }
    let names = s.class_names();
    let class = match s.class {
        None => "none".to_string(),
        Some(c) => class_name(&names, Some(c)),
    };
    let mut spans = vec![
        Span::styled(" Enter ", t.selected()),
        Span::styled(" sample now · class ", t.muted()),
        Span::styled(class, t.accent()),
        Span::styled(" (c) · guidance ", t.muted()),
        Span::styled(format!("{:.1}", s.effective_guidance()), t.accent()),
        Span::styled(" (g/G)", t.muted()),
    ];
    if let Some(e) = &s.error {
        spans.push(Span::styled(
            format!(" · {e}"),
            Style::default().fg(t.error),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}
