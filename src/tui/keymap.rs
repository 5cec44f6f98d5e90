//! One keymap table: it drives key handling, the `?` help overlay and the key bar.

use std::collections::HashMap;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Where a binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Runs,
    Curves,
    Probe,
    Kernels,
    Samples,
    Compare,
    /// Inside the help and config-diff overlays (consulted before any other scope).
    Popup,
}

impl Scope {
    /// Where a binding of this scope is in effect, for the help of keys pressed elsewhere.
    pub fn label(self) -> &'static str {
        match self {
            Global => "every view",
            Runs => "Runs (1)",
            Curves => "Curves (2)",
            Probe => "Probe (3)",
            Samples => "Samples (4)",
            Kernels => "Kernels (5)",
            Compare => "Compare (6)",
            Popup => "overlays",
        }
    }

    /// Whether a key bound in both scopes would be ambiguous: the same scope, or a global key
    /// that a view's binding would hide (overlays are consulted on their own).
    fn clashes_with(self, other: Scope) -> bool {
        match (self, other) {
            (Popup, o) | (o, Popup) => o == Popup,
            (a, b) => a == b || a == Global || b == Global,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Quit,
    Help,
    ViewRuns,
    ViewCurves,
    ViewProbe,
    ViewSamples,
    ViewKernels,
    ViewCompare,
    CompareX,
    CompareScaling,
    FocusNext,
    Up,
    Down,
    PageUp,
    PageDown,
    First,
    Last,
    Filter,
    SortNext,
    SortReverse,
    MarkAll,
    UnmarkAll,
    DetailsUp,
    DetailsDown,
    PopupUp,
    PopupDown,
    PopupPageUp,
    PopupPageDown,
    PopupTop,
    PopupBottom,
    PopupClose,
    Launch,
    Stop,
    CheckpointNow,
    Mark,
    Diff,
    XAxis,
    NextMetric,
    LogScale,
    SmoothMore,
    SmoothLess,
    ZoomRecent,
    CursorLeft,
    CursorRight,
    Dashboard,
    OpenPanel,
    ProbeEdit,
    ProbeRun,
    ProbeSetA,
    ProbeSetB,
    KernelView,
    KernelLogLag,
    KernelDirection,
    KernelLayerPrev,
    KernelLayerNext,
    KernelChannelPrev,
    KernelChannelNext,
    KernelStepPrev,
    KernelStepNext,
    KernelExport,
    KernelPixelUp,
    KernelPixelDown,
    KernelPixelLeft,
    KernelPixelRight,
    SamplePrev,
    SampleNext,
    SampleBack10,
    SampleFwd10,
    SampleFirst,
    SampleLast,
    TilePagePrev,
    TilePageNext,
    TrajNoisier,
    TrajCleaner,
    SampleNow,
    SampleClass,
    GuidanceLess,
    GuidanceMore,
    ImageProtocol,
    FullScreen,
}

pub struct Binding {
    pub action: Action,
    pub name: &'static str,
    pub keys: &'static [&'static str],
    pub scope: Scope,
    pub help: &'static str,
    /// Shown in the key bar.
    pub bar: bool,
}

const fn b(
    action: Action,
    name: &'static str,
    keys: &'static [&'static str],
    scope: Scope,
    help: &'static str,
    bar: bool,
) -> Binding {
    Binding {
        action,
        name,
        keys,
        scope,
        help,
        bar,
    }
}

use Action::*;
use Scope::*;

/// The table. `name` is what a user's config remaps (`[keys] stop = "x"`).
#[rustfmt::skip]
pub const BINDINGS: &[Binding] = &[
    b(Quit,          "quit",          &["q", "ctrl-c"], Global, "quit", true),
    b(Help,          "help",          &["?"],           Global, "help", true),
    b(ViewRuns,      "view_runs",     &["1"],           Global, "Runs view", false),
    b(ViewCurves,    "view_curves",   &["2"],           Global, "Curves view", false),
    b(ViewProbe,     "view_probe",    &["3"],           Global, "Probe view", false),
    b(ViewSamples,   "view_samples",  &["4"],           Global, "Samples view", false),
    b(ViewKernels,   "view_kernels",  &["5"],           Global, "Kernels view", false),
    b(ViewCompare,   "view_compare",  &["6"],           Global, "Compare view (BiGS vs attention)", false),
    b(FocusNext,     "focus",         &["tab"],         Global, "next view", false),
    b(Up,            "up",            &["up", "k"],     Global, "select previous run", false),
    b(Down,          "down",          &["down", "j"],   Global, "select next run", false),
    b(PageUp,        "page_up",       &["pgup"],        Global, "a page up (runs; Probe results, Compare table)", false),
    b(PageDown,      "page_down",     &["pgdn"],        Global, "a page down (runs; Probe results, Compare table)", false),
    b(First,         "first",         &["home", "g"],   Global, "first run (Probe, Compare: top)", false),
    b(Last,          "last",          &["end", "G"],    Global, "last run (Probe, Compare: bottom)", false),
    b(Stop,          "stop",          &["s"],           Global, "stop run (the selected one, any view: checkpoint, then stop)", true),
    b(CheckpointNow, "checkpoint",    &["c"],           Global, "checkpoint now (the selected run, any view)", true),
    b(Mark,          "mark",          &["space"],       Global, "mark run (overlay / diff)", true),
    b(Launch,        "launch",        &["n"],           Runs,   "new run (launch form)", true),
    b(Filter,        "filter",        &["/"],           Runs,   "filter (name, model or state; Enter keeps, Esc clears)", true),
    b(SortNext,      "sort",          &["o"],           Runs,   "sort (by the next column)", true),
    b(SortReverse,   "sort_reverse",  &["O"],           Runs,   "reverse the sort", false),
    b(MarkAll,       "mark_all",      &["a"],           Runs,   "mark every shown run", false),
    b(UnmarkAll,     "unmark_all",    &["u"],           Runs,   "unmark every run", false),
    b(DetailsUp,     "details_up",    &["K"],           Runs,   "scroll the config pane up", false),
    b(DetailsDown,   "details_down",  &["J"],           Runs,   "scroll the config pane down", false),
    b(Diff,          "diff",          &["d"],           Runs,   "diff configs of marked runs", true),
    b(PopupUp,       "popup_up",      &["up", "k"],     Popup,  "overlay: scroll up", false),
    b(PopupDown,     "popup_down",    &["down", "j"],   Popup,  "overlay: scroll down", false),
    b(PopupPageUp,   "popup_page_up", &["pgup"],        Popup,  "overlay: a page up", false),
    b(PopupPageDown, "popup_page_down", &["pgdn", "space"], Popup, "overlay: a page down", false),
    b(PopupTop,      "popup_top",     &["home", "g"],   Popup,  "overlay: top", false),
    b(PopupBottom,   "popup_bottom",  &["end", "G"],    Popup,  "overlay: bottom", false),
    b(PopupClose,    "popup_close",   &["esc", "q", "enter", "?"], Popup, "overlay: close (any other key too)", false),
    b(NextMetric,    "metric",        &["m"],           Curves, "next metric", true),
    b(XAxis,         "x_axis",        &["x"],           Curves, "x axis: step / tokens / time", true),
    b(LogScale,      "log_scale",     &["l"],           Curves, "log y axis", true),
    b(SmoothMore,    "smooth_more",   &["+", "="],      Curves, "more smoothing", true),
    b(SmoothLess,    "smooth_less",   &["-"],           Curves, "less smoothing", false),
    b(ZoomRecent,    "zoom",          &["z"],           Curves, "zoom to recent window", true),
    b(CursorLeft,    "cursor_left",   &["left", "h"],   Curves, "cursor left", false),
    b(CursorRight,   "cursor_right",  &["right"],       Curves, "cursor right", false),
    b(Dashboard,     "dashboard",     &["D"],           Curves, "dashboard ↔ one metric", true),
    b(OpenPanel,     "open_panel",    &["enter"],       Curves, "open the dashboard panel (←→ choose)", false),
    b(ProbeEdit,     "probe_edit",    &["i"],           Probe,  "edit the prompt (insert mode)", true),
    b(ProbeRun,      "probe_run",     &["enter"],       Probe,  "run the prompt", true),
    b(ProbeSetA,     "probe_a",       &["a"],           Probe,  "model A = selected run", true),
    b(ProbeSetB,     "probe_b",       &["b"],           Probe,  "model B = selected run (A/B)", true),
    b(KernelView,    "kernel_view",   &["v"],           Kernels, "sub-view: lag / heatmap / spectrum / Δt·eig / evolution (/ receptive field: images)", true),
    b(KernelLogLag,  "kernel_log_lag", &["L"],          Kernels, "log-lag axis", true),
    b(KernelDirection, "kernel_dir",  &["d"],           Kernels, "direction: forward / backward / both", true),
    b(KernelLayerPrev, "kernel_layer_prev", &["["],     Kernels, "previous layer", false),
    b(KernelLayerNext, "kernel_layer_next", &["]"],     Kernels, "next layer ([ ] layer)", true),
    b(KernelChannelPrev, "kernel_channel_prev", &["left"], Kernels, "previous channel", false),
    b(KernelChannelNext, "kernel_channel_next", &["right"], Kernels, "next channel (per-channel models)", false),
    b(KernelStepPrev, "kernel_step_prev", &["{"],       Kernels, "previous checkpoint or record", false),
    b(KernelStepNext, "kernel_step_next", &["}"],       Kernels, "next checkpoint or record ({ } step)", true),
    b(KernelExport,  "kernel_export", &["e"],           Kernels, "export PNG (into the run dir, else cwd)", true),
    b(KernelPixelUp, "kernel_pixel_up", &["t"],         Kernels, "receptive field: pixel up a patch row", false),
    b(KernelPixelDown, "kernel_pixel_down", &["g"],     Kernels, "receptive field: pixel down a patch row", false),
    b(KernelPixelLeft, "kernel_pixel_left", &["f"],     Kernels, "receptive field: pixel left a patch", false),
    b(KernelPixelRight, "kernel_pixel_right", &["h"],   Kernels, "receptive field: pixel right a patch", false),
    b(SamplePrev,    "sample_prev",   &["left", "h"],   Samples, "previous sample step", false),
    b(SampleNext,    "sample_next",   &["right", "l"],  Samples, "next sample step", false),
    b(SampleBack10,  "sample_back10", &["up"],          Samples, "10 sample steps back", false),
    b(SampleFwd10,   "sample_fwd10",  &["down"],        Samples, "10 sample steps on", false),
    b(SampleFirst,   "sample_first",  &["home"],        Samples, "first sample step", false),
    b(SampleLast,    "sample_last",   &["end"],         Samples, "latest sample step", false),
    b(TilePagePrev,  "tile_page_prev", &["pgup"],       Samples, "previous page of tiles (small panes)", false),
    b(TilePageNext,  "tile_page_next", &["pgdn"],       Samples, "next page of tiles (small panes)", false),
    b(TrajNoisier,   "traj_back",     &[","],           Samples, "trajectory: noisier t", false),
    b(TrajCleaner,   "traj_fwd",      &["."],           Samples, "trajectory: cleaner, x₀", true),
    b(SampleNow,     "sample_now",    &["enter"],       Samples, "sample now: this seed", true),
    b(SampleClass,   "sample_class",  &["C"],           Samples, "sample-now class", false),
    b(GuidanceLess,  "guidance_less", &["g"],           Samples, "sample-now guidance −0.5", false),
    b(GuidanceMore,  "guidance_more", &["G"],           Samples, "sample-now guidance +0.5", false),
    b(FullScreen,    "full_screen",   &["f"],           Samples, "full screen (any key back)", true),
    b(ImageProtocol, "image_protocol",&["P"],           Samples, "protocol (kitty, sixel, …)", true),
    b(CompareX,      "compare_x",     &["x"],           Compare, "overlay by tokens / wall time", true),
    b(CompareScaling, "compare_scaling", &["t"],        Compare, "time both models at L = 128 … 4096", true),
];

/// Name of a key event as the table writes it ("q", "L", "ctrl-c", "enter", "space", "f1"…).
/// Letters keep their case; [`Keymap::lookup`] falls back to lower case, so an upper-case
/// letter does what its lower-case key does unless it has a binding of its own.
pub fn key_name(k: &KeyEvent) -> String {
    let base = match k.code {
        KeyCode::Char(' ') => "space".to_string(),
        KeyCode::Char(c) if k.modifiers.contains(KeyModifiers::CONTROL) => {
            c.to_lowercase().to_string()
        }
        KeyCode::Char(c) => c.to_string(),
        KeyCode::Tab => "tab".into(),
        KeyCode::BackTab => "backtab".into(),
        KeyCode::Enter => "enter".into(),
        KeyCode::Esc => "esc".into(),
        KeyCode::Up => "up".into(),
        KeyCode::Down => "down".into(),
        KeyCode::Left => "left".into(),
        KeyCode::Right => "right".into(),
        KeyCode::PageUp => "pgup".into(),
        KeyCode::PageDown => "pgdn".into(),
        KeyCode::Home => "home".into(),
        KeyCode::End => "end".into(),
        KeyCode::Backspace => "backspace".into(),
        KeyCode::Delete => "delete".into(),
        KeyCode::F(n) => format!("f{n}"),
        _ => "?unknown".into(),
    };
    if k.modifiers.contains(KeyModifiers::CONTROL) {
        format!("ctrl-{}", base.to_lowercase())
    } else {
        base
    }
}

/// The effective keymap: the table with a user's remaps applied.
pub struct Keymap {
    keys: HashMap<Action, Vec<String>>,
}

impl Keymap {
    /// `overrides` maps binding names to key names; unknown names are reported.
    pub fn new(overrides: &HashMap<String, String>) -> (Keymap, Vec<String>) {
        let mut keys: HashMap<Action, Vec<String>> = BINDINGS
            .iter()
            .map(|b| (b.action, b.keys.iter().map(|k| k.to_string()).collect()))
            .collect();
        let mut errors = Vec::new();
        let mut names: Vec<_> = overrides.iter().collect();
        names.sort();
        let mut remapped = Vec::new();
        for (name, key) in names {
            match BINDINGS.iter().find(|b| b.name == name) {
                Some(b) => {
                    // single characters keep their case ("L" is not "l")
                    let k = if key.chars().count() == 1 {
                        key.clone()
                    } else {
                        key.to_lowercase()
                    };
                    keys.insert(b.action, vec![k]);
                    remapped.push(b);
                }
                None => errors.push(format!(
                    "[keys] `{name}` is not an action (known: {})",
                    BINDINGS
                        .iter()
                        .map(|b| b.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        // a remap that makes a key ambiguous is refused (the action keeps its default keys)
        for b in remapped {
            let key = &keys[&b.action][0];
            let clash = BINDINGS.iter().find(|o| {
                o.action != b.action
                    && b.scope.clashes_with(o.scope)
                    && keys[&o.action].iter().any(|k| k == key)
            });
            if let Some(o) = clash {
                errors.push(format!(
                    "[keys] `{} = \"{key}\"` refused: `{key}` is already `{}` ({}); `{}` keeps {}",
                    b.name,
                    o.name,
                    o.scope.label(),
                    b.name,
                    b.keys.join(" / ")
                ));
                keys.insert(b.action, b.keys.iter().map(|k| k.to_string()).collect());
            }
        }
        (Keymap { keys }, errors)
    }

    /// Where a key does something when it does nothing in `scope`: (help, scope) of the first
    /// binding elsewhere, for a status line that says why the key did nothing here.
    pub fn elsewhere(&self, scope: Scope, key: &str) -> Option<(&'static str, Scope)> {
        BINDINGS
            .iter()
            .filter(|b| b.scope != scope && b.scope != Global && b.scope != Popup)
            .find(|b| self.keys[&b.action].iter().any(|k| k == key))
            .map(|b| (b.help, b.scope))
    }

    /// The action of a key in a scope (scope bindings win over global ones; an exact match
    /// wins over the lower-case form of the key).
    pub fn lookup(&self, scope: Scope, key: &str) -> Option<Action> {
        let find = |s: Scope, key: &str| {
            BINDINGS
                .iter()
                .filter(|b| b.scope == s)
                .find(|b| self.keys[&b.action].iter().any(|k| k == key))
                .map(|b| b.action)
        };
        let lower = key.to_lowercase();
        if scope == Popup {
            return find(Popup, key);
        }
        find(scope, key)
            .or_else(|| find(Global, key))
            .or_else(|| find(scope, &lower))
            .or_else(|| find(Global, &lower))
    }

    pub fn keys(&self, a: Action) -> &[String] {
        &self.keys[&a]
    }

    /// (keys, help) of every binding visible in a scope, for the help overlay.
    pub fn help(&self, scope: Scope) -> Vec<(String, &'static str)> {
        BINDINGS
            .iter()
            .filter(|b| b.scope == scope || b.scope == Global)
            .map(|b| (self.keys[&b.action].join("/"), b.help))
            .collect()
    }

    /// Short (key, label) pairs for the key bar of a scope: the view's own keys first, then
    /// the global ones.
    pub fn bar(&self, scope: Scope) -> Vec<(String, &'static str)> {
        let own = BINDINGS.iter().filter(|b| b.bar && b.scope == scope);
        let global = BINDINGS.iter().filter(|b| b.bar && b.scope == Global);
        own.chain(global)
            .map(|b| {
                let label = b.help.split(['(', ':']).next().unwrap_or(b.help).trim();
                (self.keys[&b.action][0].clone(), label)
            })
            .collect()
    }
}
