//! The app: what every pane shares (the runs snapshot, the selected and marked runs, the
//! status line, overlays, the workers' senders) and the routing of input and worker messages
//! to the panes (`tui::pane`). Keys become actions through the one key table; the focused
//! pane handles its own, and what it passes on is global (quit, views, run selection, stop
//! and checkpoint of the selected run). Drawing lives in `views/` and reads the app
//! immutably; slow work runs on the workers (`tui::worker`).

use std::collections::BTreeSet;
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, MouseEvent, MouseEventKind};

use super::keymap::{Action, Keymap, Scope, key_name};
use super::pane::{Ctx, Outcome, Pane};
use super::theme::Theme;
use super::views::form::LaunchForm;
use super::worker::{WorkerMsg, Workers};
use crate::runs::index::RunSummary;
use crate::runs::{Control, RunDir};

pub use super::views::curves::{CurvesState, Metric, XAxis};

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
            View::Runs => Scope::Runs,
        }
    }
    /// The view whose pane a worker message belongs to (None: the app's own).
    fn of_msg(m: &WorkerMsg) -> Option<View> {
        match m {
            WorkerMsg::Runs(_) => None,
            WorkerMsg::Probe(..) => Some(View::Probe),
            WorkerMsg::Kernels(_) | WorkerMsg::Figure(..) => Some(View::Kernels),
            WorkerMsg::Image(_) | WorkerMsg::Sample(_) => Some(View::Samples),
            WorkerMsg::Compare(_) => Some(View::Compare),
            WorkerMsg::Series(..) => Some(View::Curves),
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
    pub popup: Option<Popup>,
    pub keymap: Keymap,
    pub theme: Theme,
    /// Notices shown in the status line (ignored config lines, launch results…).
    pub notices: Vec<String>,
    pub ascii: bool,
    /// Path of the binary launched for new runs.
    pub exe: PathBuf,
    /// The panes, one per view.
    pub runs_view: super::views::runs::RunsState,
    pub curves: CurvesState,
    pub probe: super::views::probe::ProbeState,
    pub samples: super::views::samples::SamplesState,
    pub kernels: super::views::kernels::KernelsState,
    pub compare: super::views::compare::CompareState,
    /// Where the panes send jobs (no workers in headless tests: see [`Workers`]).
    pub workers: Workers,
    /// The next frame must repaint the whole terminal (graphics protocol changed).
    pub clear_screen: bool,
    /// How images should be drawn (detection runs at start-up in the real terminal).
    pub image_choice: super::image::ProtocolChoice,
    /// First line shown of a scrollable overlay (help, config diff).
    pub popup_scroll: usize,
    /// The terminal's size, as the event loop last saw it (layout for input: paging, mouse
    /// hits). Drawing does not depend on it.
    pub viewport: ratatui::layout::Rect,
}

/// The shared state as a pane sees it ([`Ctx`]), borrowed field by field from the app so
/// that a pane (another field) can be borrowed beside it.
macro_rules! ctx {
    ($app:ident) => {
        Ctx {
            body: $app.body_area(),
            runs: &$app.runs,
            selected: &mut $app.selected,
            marked: &mut $app.marked,
            notices: &mut $app.notices,
            popup: &mut $app.popup,
            clear_screen: &mut $app.clear_screen,
            workers: &$app.workers,
            runs_dir: &$app.runs_dir,
        }
    };
}

/// Runs `$body` with `$pane` the pane of `$view` and `$cx` the shared state.
macro_rules! with_pane {
    ($app:ident, $view:expr, |$pane:ident, $cx:ident| $body:expr) => {{
        let view = $view;
        let mut $cx = ctx!($app);
        let $pane: &mut dyn Pane = match view {
            View::Runs => &mut $app.runs_view,
            View::Curves => &mut $app.curves,
            View::Probe => &mut $app.probe,
            View::Samples => &mut $app.samples,
            View::Kernels => &mut $app.kernels,
            View::Compare => &mut $app.compare,
        };
        $body
    }};
}

impl App {
    pub fn new(runs_dir: PathBuf, keymap: Keymap, theme: Theme) -> Self {
        Self {
            view: View::Runs,
            runs: Vec::new(),
            runs_dir,
            selected: 0,
            marked: BTreeSet::new(),
            popup: None,
            keymap,
            theme,
            notices: Vec::new(),
            ascii: false,
            exe: std::env::current_exe().unwrap_or_else(|_| "ssmlab".into()),
            runs_view: Default::default(),
            curves: Default::default(),
            probe: Default::default(),
            samples: Default::default(),
            kernels: Default::default(),
            compare: Default::default(),
            workers: Workers::default(),
            clear_screen: false,
            image_choice: super::image::ProtocolChoice::Auto,
            popup_scroll: 0,
            viewport: ratatui::layout::Rect::new(0, 0, 80, 24),
        }
    }

    /// The pane of a view (for drawing).
    pub fn pane(&self, view: View) -> &dyn Pane {
        match view {
            View::Runs => &self.runs_view,
            View::Curves => &self.curves,
            View::Probe => &self.probe,
            View::Samples => &self.samples,
            View::Kernels => &self.kernels,
            View::Compare => &self.compare,
        }
    }

    /// The terminal's size changed (or is first known): the runs table keeps its selection
    /// visible at the new size.
    pub fn set_viewport(&mut self, v: ratatui::layout::Rect) {
        if v != self.viewport {
            self.viewport = v;
            let body = self.body_area();
            self.runs_view.scroll_to(self.selected, body);
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

    /// Brings the shown pane's derived data in step with the app (after input, messages and
    /// snapshots, and before a frame): it asks its workers for what changed. Costs nothing
    /// when nothing changed.
    pub fn sync(&mut self) {
        with_pane!(self, self.view, |p, cx| p.sync(&mut cx));
    }

    /// Before a frame: the shown pane asks for what the frame shows and is not yet computed
    /// (see [`App::sync`]); drawing then only reads.
    pub fn prepare_frame(&mut self) {
        self.sync();
    }

    pub fn selected_run(&self) -> Option<&RunSummary> {
        self.runs.get(self.selected)
    }

    /// The run the Samples view shows (see [`super::views::samples::samples_run`]).
    pub fn samples_run(&self) -> Option<&RunSummary> {
        super::views::samples::samples_run(&self.runs, self.selected)
    }

    /// Runs drawn in the curves view: the marked ones, else the selected one.
    pub fn plotted(&self) -> Vec<&RunSummary> {
        super::views::curves::plotted(&self.runs, self.selected, &self.marked)
    }

    pub fn scope(&self) -> Scope {
        self.view.scope()
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
        let body = self.body_area();
        self.runs_view
            .refresh_view(&self.runs, &mut self.selected, body);
        self.probe.default_model(&self.runs);
        self.sync();
    }

    /// A worker's message: a runs snapshot is the app's, the rest goes to the pane it
    /// belongs to (shown or not).
    pub fn on_msg(&mut self, m: WorkerMsg) {
        match View::of_msg(&m) {
            None => {
                if let WorkerMsg::Runs(runs) = m {
                    self.set_runs(runs);
                }
            }
            Some(v) => {
                with_pane!(self, v, |p, cx| p.on_msg(m, &mut cx));
                self.sync();
            }
        }
    }

    /// Called every quarter second or so: the Samples view re-lists its run's samples every
    /// 2 s while it is shown (new steps appear as the trainer writes them).
    pub fn tick(&mut self) {
        if self.view == View::Samples {
            let mut cx = ctx!(self);
            self.samples.tick(&mut cx);
        }
    }

    /// After a frame: the Samples view encodes its image for a graphics protocol at the
    /// pane's size.
    pub fn after_draw(&mut self) {
        if self.view == View::Samples {
            let mut cx = ctx!(self);
            self.samples.after_draw(&mut cx);
        }
    }

    pub fn on_mouse(&mut self, m: MouseEvent) {
        let wheel = super::views::wheel(&m);
        if self.popup.is_some() {
            if wheel != 0 && matches!(self.popup, Some(Popup::Help | Popup::Diff)) {
                self.popup_scroll = (self.popup_scroll as i64 + 3 * wheel).max(0) as usize;
            }
            return;
        }
        if matches!(m.kind, MouseEventKind::Down(_)) && m.row == self.viewport.y {
            // the tab bar: a click on a tab opens its view
            if let Some(v) = super::views::tab_at(self.viewport, m.column) {
                self.view = v;
                self.sync();
            }
            return;
        }
        // the pane under the pointer scrolls; elsewhere the wheel moves the run selection
        let out = with_pane!(self, self.view, |p, cx| p.on_mouse(m, &mut cx));
        if out == Outcome::Pass && wheel != 0 {
            self.move_sel(wheel);
        }
        self.sync();
    }

    /// Moves the selection `d` rows in the Runs view's display order (filter and sort).
    fn move_sel(&mut self, d: i64) {
        let body = self.body_area();
        self.runs_view.move_sel(&mut self.selected, d, body);
    }

    /// Rows a page moves the selection in the current view.
    fn page_rows(&self) -> i64 {
        match self.view {
            View::Runs => self.runs_layout().rows.max(1) as i64,
            _ => (self.body_area().height as i64 - 4).max(1),
        }
    }

    pub fn on_key(&mut self, k: KeyEvent) -> Effect {
        let e = self.on_key_inner(k);
        self.sync();
        e
    }

    fn on_key_inner(&mut self, k: KeyEvent) -> Effect {
        if let Some(p) = self.popup.take() {
            return self.on_popup_key(p, k);
        }
        // insert modes (the runs filter, the probe prompt) take every key but Ctrl-C
        if self.pane(self.view).editing() {
            if k.code == KeyCode::Char('c')
                && k.modifiers
                    .contains(crossterm::event::KeyModifiers::CONTROL)
            {
                return Effect::Quit;
            }
            with_pane!(self, self.view, |p, cx| p.on_text_key(k, &mut cx));
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
        let out = with_pane!(self, self.view, |p, cx| p.handle(action, &mut cx));
        match out {
            Outcome::Done => {
                // an overlay a pane opened starts at its top
                self.popup_scroll = 0;
                Effect::None
            }
            Outcome::Effect(e) => e,
            Outcome::Pass => self.global(action),
        }
    }

    /// The actions every view shares (those no pane handled).
    fn global(&mut self, action: Action) -> Effect {
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
            Action::FocusNext => {
                let i = View::ALL.iter().position(|v| *v == self.view).unwrap_or(0);
                self.view = View::ALL[(i + 1) % View::ALL.len()];
            }
            Action::Up => self.move_sel(-1),
            Action::Down => self.move_sel(1),
            Action::PageUp => self.move_sel(-self.page_rows()),
            Action::PageDown => self.move_sel(self.page_rows()),
            Action::First => self.move_sel(-(i64::MAX / 4)),
            Action::Last => self.move_sel(i64::MAX / 4),
            Action::Mark => {
                if let Some(id) = self.selected_run().map(|r| r.id.clone())
                    && !self.marked.remove(&id)
                {
                    self.marked.insert(id);
                }
            }
            Action::Stop | Action::CheckpointNow => self.confirm_control(action),
            // overlay keys act only inside overlays (`on_popup_key`); the other actions
            // belong to a view's scope, and its pane handled them
            _ => {}
        }
        Effect::None
    }

    /// `s` and `c` in any view: ask to confirm stopping or checkpointing the selected run,
    /// or say why that does not apply.
    fn confirm_control(&mut self, action: Action) {
        let Some(r) = self.selected_run() else {
            self.notices.push("no run to stop or checkpoint".into());
            return;
        };
        if r.state_label() != "running" {
            self.notices
                .push(format!("{} is {}, not running", r.id, r.state_label()));
            return;
        }
        let action = if action == Action::Stop {
            Control::Stop
        } else {
            Control::Checkpoint
        };
        self.popup = Some(Popup::Confirm {
            action,
            run: r.id.clone(),
        });
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
