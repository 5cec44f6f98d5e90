//! The lab TUI (ratatui + crossterm). The UI thread only draws and handles input: scanning run
//! directories and tailing metrics happen on a worker thread that sends snapshots through a
//! channel. Frames are redrawn on change, at most ~20 per second, inside synchronized updates.

pub mod app;
pub mod chart;
pub mod keymap;
pub mod settings;
pub mod theme;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyEventKind};
use crossterm::execute;
use crossterm::terminal::{BeginSynchronizedUpdate, EndSynchronizedUpdate};

use crate::runs::index::{RunSummary, RunsIndex};
use app::{App, Effect};
use keymap::Keymap;
use theme::Theme;

/// Options from the command line (they win over the settings file).
#[derive(Debug, Clone, Default)]
pub struct TuiOptions {
    pub runs_dir: Option<PathBuf>,
    pub theme: Option<String>,
    pub ascii: bool,
}

enum Msg {
    Input(Event),
    Runs(Vec<RunSummary>),
    Probe(usize, Result<crate::probe::ProbeOutput, String>),
    Kernels(app::KernelsMsg),
}

/// Computes the kernels of every checkpoint of a model path off the UI thread, one message per
/// checkpoint (ascending by step). Results are cached by weights file and modification time; a
/// newer job abandons the current one between checkpoints.
fn spawn_kernels_worker(tx: mpsc::Sender<Msg>) -> mpsc::Sender<app::KernelsJob> {
    use crate::kernels::ModelKernels;
    use std::collections::HashMap;
    let (jtx, jrx) = mpsc::channel::<app::KernelsJob>();
    std::thread::spawn(move || {
        let mut cache: HashMap<(PathBuf, Option<std::time::SystemTime>), ModelKernels> =
            HashMap::new();
        let mut next: Option<app::KernelsJob> = None;
        loop {
            let mut job = match next.take() {
                Some(j) => j,
                None => match jrx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            while let Ok(j) = jrx.try_recv() {
                job = j;
            }
            let generation = job.generation;
            let send = |m: app::KernelsMsg| tx.send(Msg::Kernels(m)).is_ok();
            let files = match crate::kernels::checkpoints(&job.model) {
                Ok(f) => f,
                Err(e) => {
                    if !send(app::KernelsMsg::Failed {
                        generation,
                        error: e.to_string(),
                    }) {
                        return;
                    }
                    continue;
                }
            };
            if !send(app::KernelsMsg::Started {
                generation,
                total: files.len(),
            }) {
                return;
            }
            let mut failed = false;
            for f in &files {
                if let Ok(j) = jrx.try_recv() {
                    next = Some(j);
                    break;
                }
                let mtime = std::fs::metadata(&f.weights)
                    .and_then(|m| m.modified())
                    .ok();
                let key = (f.weights.clone(), mtime);
                let mk = match cache.get(&key) {
                    Some(mk) => mk.clone(),
                    None => match crate::kernels::load_kernels(f) {
                        Ok(mk) => {
                            if cache.len() > 64 {
                                cache.clear();
                            }
                            cache.insert(key, mk.clone());
                            mk
                        }
                        Err(e) => {
                            failed = true;
                            if !send(app::KernelsMsg::Failed {
                                generation,
                                error: e.to_string(),
                            }) {
                                return;
                            }
                            break;
                        }
                    },
                };
                if !send(app::KernelsMsg::Loaded {
                    generation,
                    kernels: Box::new(mk),
                }) {
                    return;
                }
            }
            if next.is_none() && !failed && !send(app::KernelsMsg::Done { generation }) {
                return;
            }
        }
    });
    jtx
}

/// Loads models and runs fill-mask off the UI thread. A model is kept loaded until its weights
/// file changes (a running run's latest checkpoint is picked up when a new one appears; probing
/// only reads files, so it never disturbs the run).
fn spawn_probe_worker(tx: mpsc::Sender<Msg>) -> mpsc::Sender<app::ProbeJob> {
    let (jtx, jrx) = mpsc::channel::<app::ProbeJob>();
    std::thread::spawn(move || {
        let mut cache: Vec<(PathBuf, crate::probe::ProbeModel)> = Vec::new();
        while let Ok(job) = jrx.recv() {
            let res = (|| -> Result<crate::probe::ProbeOutput, String> {
                let files = crate::probe::resolve(&job.model).map_err(|e| e.to_string())?;
                let pos = cache.iter().position(|(w, _)| *w == files.weights);
                let pm = match pos {
                    Some(i) => &cache[i].1,
                    None => {
                        let pm =
                            crate::probe::ProbeModel::open(&job.model, &candle_core::Device::Cpu)
                                .map_err(|e| e.to_string())?;
                        cache.push((files.weights.clone(), pm));
                        if cache.len() > 4 {
                            cache.remove(0);
                        }
                        &cache.last().expect("pushed").1
                    }
                };
                pm.fill_mask(&job.text, 10, &[], true)
                    .map_err(|e| e.to_string())
            })();
            if tx.send(Msg::Probe(job.slot, res)).is_err() {
                return;
            }
        }
    });
    jtx
}

/// Builds the app state from options and the user's settings (problems become notices).
pub fn build_app(opts: &TuiOptions) -> App {
    let (settings, mut notices): (settings::Settings, Vec<String>) = {
        let (s, n) = settings::load();
        (s, n.into_iter().collect())
    };
    let (keymap, key_errors) = Keymap::new(&settings.keys);
    notices.extend(key_errors);
    let theme_name = opts
        .theme
        .clone()
        .or(settings.theme.clone())
        .unwrap_or_else(|| "dark".into());
    let (mut theme, theme_err) = Theme::load(&theme_name);
    notices.extend(theme_err);
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        theme = theme.without_color();
    }
    let runs_dir = opts
        .runs_dir
        .clone()
        .or(settings.runs_dir.clone())
        .unwrap_or_else(|| PathBuf::from("checkpoints"));
    let mut app = App::new(runs_dir, keymap, theme);
    app.ascii = opts.ascii || settings.ascii;
    app.notices = notices;
    app
}

/// Scans the runs folder twice a second and sends a snapshot when something changed.
fn spawn_worker(dir: PathBuf, tx: mpsc::Sender<Msg>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut index = RunsIndex::new();
        let mut last_sig = String::new();
        while !stop.load(Ordering::Relaxed) {
            let runs = index.scan(&dir);
            let sig: String = runs
                .iter()
                .map(|r| {
                    format!(
                        "{}:{}:{}:{}:{:?};",
                        r.id,
                        r.metrics.len(),
                        r.state_label(),
                        r.checkpoints.len(),
                        r.status.as_ref().map(|s| s.heartbeat as u64)
                    )
                })
                .collect();
            if sig != last_sig {
                last_sig = sig;
                if tx.send(Msg::Runs(runs)).is_err() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
}

fn spawn_input(tx: mpsc::Sender<Msg>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => match event::read() {
                    Ok(e) => {
                        if tx.send(Msg::Input(e)).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
}

/// Runs the TUI until the user quits (or SIGTERM/SIGHUP). The terminal is restored on every
/// exit path, panics included.
pub fn run(opts: TuiOptions) -> anyhow::Result<()> {
    let mut app = build_app(&opts);
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // SIGTERM / SIGHUP (SSH gone): leave the loop and restore the terminal.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let mut terminal = ratatui::init(); // raw mode, alternate screen, panic hook that restores
    let _ = execute!(std::io::stdout(), crossterm::event::EnableMouseCapture);
    let res = event_loop(&mut terminal, &mut app, stop.clone());
    stop.store(true, Ordering::SeqCst);
    let _ = execute!(std::io::stdout(), crossterm::event::DisableMouseCapture);
    ratatui::restore();
    res
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    spawn_worker(app.runs_dir.clone(), tx.clone(), stop.clone());
    app.probe_tx = Some(spawn_probe_worker(tx.clone()));
    app.kernels_tx = Some(spawn_kernels_worker(tx.clone()));
    spawn_input(tx, stop.clone());
    let frame_gap = Duration::from_millis(50);
    let mut dirty = true;
    let mut last_draw = Instant::now() - frame_gap;
    while !stop.load(Ordering::SeqCst) {
        if dirty && last_draw.elapsed() >= frame_gap {
            execute!(std::io::stdout(), BeginSynchronizedUpdate)?;
            terminal.draw(|f| views::draw(f, app))?;
            execute!(std::io::stdout(), EndSynchronizedUpdate)?;
            last_draw = Instant::now();
            dirty = false;
        }
        let wait = if dirty {
            frame_gap.saturating_sub(last_draw.elapsed())
        } else {
            Duration::from_millis(250)
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Runs(runs)) => {
                app.set_runs(runs);
                dirty = true;
            }
            Ok(Msg::Probe(slot, res)) => {
                app.on_probe_result(slot, res);
                dirty = true;
            }
            Ok(Msg::Kernels(m)) => {
                app.on_kernels_msg(m);
                dirty = true;
            }
            Ok(Msg::Input(Event::Key(k))) if k.kind != KeyEventKind::Release => {
                dirty = true;
                if app.on_key(k) == Effect::Quit {
                    break;
                }
            }
            Ok(Msg::Input(Event::Mouse(m))) => {
                app.on_mouse(m);
                dirty = true;
            }
            Ok(Msg::Input(Event::Resize(..))) => dirty = true,
            Ok(Msg::Input(_)) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(())
}
