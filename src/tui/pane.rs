//! The pane contract (gitui's components, in ratatui terms). Each view is a pane that owns its
//! state: it handles the actions of its scope, its workers' messages and, in insert modes,
//! raw keys; it keeps its derived data in step when what it shows changes ([`Pane::sync`]);
//! and it draws from `&self`, mutating nothing. Layout that input needs (rows under the
//! mouse, the image pane's size) comes from pure layout functions shared by drawing and input.
//!
//! The app owns what every pane shares: the runs snapshot, the selected and marked runs, the
//! status line, the overlays and the workers. A pane sees them through [`Ctx`], and tells
//! the app what it did not handle ([`Outcome::Pass`]): the app's global keys then apply.

use std::collections::BTreeSet;
use std::path::Path;

use crossterm::event::{KeyEvent, MouseEvent};
use ratatui::Frame;
use ratatui::layout::Rect;

use super::app::{App, Effect, Popup};
use super::keymap::Action;
use super::worker::{WorkerMsg, Workers};
use crate::runs::index::RunSummary;

/// What a pane may read and change of the app's shared state while it handles input or a
/// message.
pub struct Ctx<'a> {
    /// The latest snapshot of the runs folder.
    pub runs: &'a [RunSummary],
    /// Index into `runs` of the selected run.
    pub selected: &'a mut usize,
    /// Ids of the marked runs.
    pub marked: &'a mut BTreeSet<String>,
    /// The status line (the last notice shows).
    pub notices: &'a mut Vec<String>,
    /// The overlay on top of the view.
    pub popup: &'a mut Option<Popup>,
    /// The next frame repaints the whole terminal (graphics left pixels behind).
    pub clear_screen: &'a mut bool,
    pub workers: &'a Workers,
    pub runs_dir: &'a Path,
    /// The area the views draw in, at the terminal's current size.
    pub body: Rect,
}

impl Ctx<'_> {
    pub fn selected_run(&self) -> Option<&RunSummary> {
        self.runs.get(*self.selected)
    }
}

/// What became of an input a pane was given.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pane handled it.
    Done,
    /// Not the pane's: the app's global handling applies.
    Pass,
    /// The pane handled it, and the event loop has something to do.
    Effect(Effect),
}

pub trait Pane {
    /// An action from the key table, in this pane's scope or a global one.
    fn handle(&mut self, action: Action, cx: &mut Ctx) -> Outcome;

    /// Whether the pane is in an insert mode (every key but Ctrl-C goes to
    /// [`Pane::on_text_key`]).
    fn editing(&self) -> bool {
        false
    }

    /// A key in insert mode.
    fn on_text_key(&mut self, _k: KeyEvent, _cx: &mut Ctx) {}

    /// A worker's message for this pane.
    fn on_msg(&mut self, _m: WorkerMsg, _cx: &mut Ctx) {}

    /// Brings derived data in step with what the pane shows (the runs snapshot, the
    /// selection, the terminal's size): asks workers for what changed. Called while the pane
    /// is shown, after input, messages and new snapshots, and before a frame.
    fn sync(&mut self, _cx: &mut Ctx) {}

    /// A mouse event inside the view's body (the tab bar is the app's).
    fn on_mouse(&mut self, _m: MouseEvent, _cx: &mut Ctx) -> Outcome {
        Outcome::Pass
    }

    /// Draws the view into `area`; reads the shared state from `app`, changes nothing.
    fn draw(&self, f: &mut Frame, area: Rect, app: &App);
}
