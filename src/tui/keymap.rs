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
    b(Launch,        "launch",        &["n"],           Runs,   "new run (launch form)", true),
    b(Stop,          "stop",          &["s"],           Runs,   "stop run (checkpoint, then stop)", true),
    b(CheckpointNow, "checkpoint",    &["c"],           Runs,   "checkpoint now", true),
    b(Mark,          "mark",          &["space"],       Global, "mark run (overlay / diff)", true),
    b(Diff,          "diff",          &["d"],           Runs,   "diff configs of marked runs", true),
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
    b(KernelStepPrev, "kernel_step_prev", &["{"],       Kernels, "previous checkpoint", false),
    b(KernelStepNext, "kernel_step_next", &["}"],       Kernels, "next checkpoint ({ } step)", true),
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
    b(SampleClass,   "sample_class",  &["c"],           Samples, "sample-now class", false),
    b(GuidanceLess,  "guidance_less", &["g"],           Samples, "sample-now guidance −0.5", false),
    b(GuidanceMore,  "guidance_more", &["G"],           Samples, "sample-now guidance +0.5", false),
    b(FullScreen,    "full_screen",   &["f"],           Samples, "full screen (any key back)", true),
    b(ImageProtocol, "image_protocol",&["P"],           Samples, "protocol (kitty, sixel, …)", true),
    b(CompareX,      "compare_x",     &["x"],           Compare, "overlay by tokens / wall time", true),
    b(CompareScaling, "compare_scaling", &["s"],        Compare, "time both models at L = 128 … 4096", true),
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
        (Keymap { keys }, errors)
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

    /// Short (key, label) pairs for the key bar of a scope.
    pub fn bar(&self, scope: Scope) -> Vec<(String, &'static str)> {
        BINDINGS
            .iter()
            .filter(|b| b.bar && (b.scope == scope || b.scope == Global))
            .map(|b| {
                let label = b.help.split(['(', ':']).next().unwrap_or(b.help).trim();
                (self.keys[&b.action][0].clone(), label)
            })
            .collect()
    }
}
