//! The lab TUI (ratatui + crossterm). The UI thread only draws and handles input: the app
//! (`app`) routes keys to the panes (`pane`, one per view in `views/`), and everything slow
//! (scanning run directories, loading models, kernels, images, series) runs on the workers
//! (`worker`), whose messages come back through the event loop's one channel. Frames are
//! redrawn on change, at most ~20 per second, inside synchronized updates.

pub mod app;
pub mod chart;
pub mod image;
pub mod keymap;
pub mod pane;
pub mod settings;
pub mod theme;
pub mod views;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyEventKind};
use crossterm::execute;
use crossterm::terminal::{BeginSynchronizedUpdate, EndSynchronizedUpdate};

use self::image::{ImageOutput, Protocol, ProtocolChoice};
use self::worker::SamplerFn;

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

/// What the event loop waits for: input, or a worker's message.
enum Msg {
    Input(Event),
    Worker(worker::WorkerMsg),
}

/// The sampler behind "sample now" in the samples view (runs on the sampler worker).
pub fn sampler() -> SamplerFn {
    Box::new(|req, progress| Ok(crate::sample::sample_now(&req, progress)?))
}

/// How images should be drawn: `SSMLAB_IMAGE_PROTOCOL`, else the settings file, else auto.
/// A bad value becomes a notice (and auto).
pub fn image_choice(setting: Option<&str>) -> (ProtocolChoice, Option<String>) {
    let env = std::env::var("SSMLAB_IMAGE_PROTOCOL").ok();
    let (value, origin) = match (&env, setting) {
        (Some(v), _) => (v.as_str(), "SSMLAB_IMAGE_PROTOCOL"),
        (None, Some(v)) => (v, "image_protocol in the settings file"),
        (None, None) => return (ProtocolChoice::Auto, None),
    };
    match ProtocolChoice::parse(value) {
        Ok(c) => (c, None),
        Err(e) => (
            ProtocolChoice::Auto,
            Some(format!("{origin}: {e}; using auto")),
        ),
    }
}

/// Builds the app state from options and the user's settings (problems become notices).
pub fn build_app(opts: &TuiOptions) -> App {
    let (settings, mut notices) = settings::load();
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
    let (choice, choice_err) = image_choice(settings.image_protocol.as_deref());
    notices.extend(choice_err);
    let mut app = App::new(runs_dir, keymap, theme);
    app.image_choice = choice;
    app.ascii = opts.ascii || settings.ascii;
    if !notices.is_empty() {
        // every problem, wrapped, in an overlay that any key closes (the last one stays in
        // the status line)
        app.popup = Some(app::Popup::Message(format!(
            "{} problem(s) with the settings (any key closes):\n\n{}",
            notices.len(),
            notices
                .iter()
                .map(|n| format!("• {n}"))
                .collect::<Vec<_>>()
                .join("\n")
        )));
    }
    app.notices = notices;
    app
}

/// Lets the UI thread take the terminal's input for itself (the full-screen image view reads
/// its "any key" directly, and viuer may query the terminal).
#[derive(Default)]
struct InputGate {
    paused: AtomicBool,
    parked: AtomicBool,
}

impl InputGate {
    /// Stops the input thread reading and waits (at most a second) until it has stopped.
    fn pause(&self) {
        self.parked.store(false, Ordering::SeqCst);
        self.paused.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        while !self.parked.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

fn spawn_input(tx: mpsc::Sender<Msg>, stop: Arc<AtomicBool>, gate: Arc<InputGate>) {
    worker::spawn("input", move || {
        while !stop.load(Ordering::Relaxed) {
            if gate.paused.load(Ordering::SeqCst) {
                gate.parked.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
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
    worker::install_panic_hook(); // worker panics go to the status line, not the screen
    // the graphics query: once, in the alternate screen, before anything reads input
    app.samples.output = ImageOutput::detect(app.image_choice, std::env::var_os("TMUX").is_some());
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
    app.workers = worker::Workers::start(
        app.runs_dir.clone(),
        worker::report_to(tx.clone(), Msg::Worker),
        stop.clone(),
        sampler(),
    );
    let gate = Arc::new(InputGate::default());
    spawn_input(tx, stop.clone(), gate.clone());
    let frame_gap = Duration::from_millis(50);
    let mut dirty = true;
    let mut last_draw = Instant::now() - frame_gap;
    while !stop.load(Ordering::SeqCst) {
        for p in worker::take_panics() {
            if app.notices.last() != Some(&p) {
                app.notices.push(p);
                dirty = true;
            }
        }
        app.tick();
        if let Ok(size) = terminal.size() {
            app.set_viewport(ratatui::layout::Rect::new(0, 0, size.width, size.height));
        }
        if dirty && last_draw.elapsed() >= frame_gap {
            if std::mem::take(&mut app.clear_screen) {
                terminal.clear()?;
            }
            app.prepare_frame();
            execute!(std::io::stdout(), BeginSynchronizedUpdate)?;
            terminal.draw(|f| {
                views::draw(f, app);
                scrub(f.buffer_mut());
            })?;
            execute!(std::io::stdout(), EndSynchronizedUpdate)?;
            app.after_draw();
            last_draw = Instant::now();
            dirty = false;
        }
        let wait = if dirty {
            frame_gap.saturating_sub(last_draw.elapsed())
        } else {
            Duration::from_millis(250)
        };
        match rx.recv_timeout(wait) {
            Ok(Msg::Worker(m)) => {
                app.on_msg(m);
                dirty = true;
            }
            Ok(Msg::Input(Event::Key(k))) if k.kind != KeyEventKind::Release => {
                dirty = true;
                match app.on_key(k) {
                    Effect::Quit => break,
                    Effect::FullScreen(path) => {
                        let protocol = app.samples.output.active();
                        if let Err(e) = full_screen(terminal, &path, protocol, &gate) {
                            app.notices.push(format!("full-screen view: {e:#}"));
                        }
                    }
                    Effect::None => {}
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

/// `f` in the samples view: stays in the alternate screen (so nothing of the image is left on
/// the shell after ssmlab quits, in tmux or out), prints the image with viuer at the terminal's
/// size over a cleared screen (kitty / iTerm2 when that protocol is selected, else half
/// blocks), waits for a key, then clears it (kitty images are deleted explicitly) and comes
/// back with a full redraw.
fn full_screen(
    terminal: &mut ratatui::DefaultTerminal,
    path: &Path,
    protocol: Protocol,
    gate: &InputGate,
) -> anyhow::Result<()> {
    use crossterm::terminal::{Clear, ClearType};
    use std::io::Write;
    gate.pause();
    let _ = execute!(std::io::stdout(), crossterm::event::DisableMouseCapture);
    let shown = print_full_screen(path, protocol);
    let back = (|| -> anyhow::Result<()> {
        let mut out = std::io::stdout();
        if protocol == Protocol::Kitty {
            // delete every image placement (the kitty graphics protocol keeps them otherwise)
            write!(out, "\x1b_Ga=d,d=A\x1b\\")?;
        }
        execute!(
            out,
            Clear(ClearType::All),
            crossterm::event::EnableMouseCapture
        )?;
        terminal.clear()?;
        Ok(())
    })();
    gate.resume();
    back?;
    shown
}

fn print_full_screen(path: &Path, protocol: Protocol) -> anyhow::Result<()> {
    use crossterm::cursor::MoveTo;
    use crossterm::terminal::{Clear, ClearType, enable_raw_mode};
    use std::io::Write;
    let mut out = std::io::stdout();
    execute!(out, Clear(ClearType::All), MoveTo(0, 0))?;
    let pic = image::decode_file(path).map_err(anyhow::Error::msg)?;
    let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
    let room = rows.saturating_sub(2).max(1);
    // half-block pixels: 1 per column, 2 per row; enlarged by whole factors (crisp pixels)
    let (pw, ph) = image::fit(pic.w, pic.h, cols as usize, room as usize);
    let graphics = matches!(protocol, Protocol::Kitty | Protocol::Iterm2);
    // graphics protocols get more pixels than cells, so the terminal does not blur them
    let k = if graphics {
        (1024 / pw.max(ph).max(1)).max(1)
    } else {
        1
    };
    let img = pic.to_dynamic().resize_exact(
        (pw * k) as u32,
        (ph * k) as u32,
        ::image::imageops::FilterType::Nearest,
    );
    let conf = viuer::Config {
        absolute_offset: true,
        x: (cols.saturating_sub(pw as u16)) / 2,
        y: 0,
        width: Some(pw as u32),
        height: Some(ph.div_ceil(2) as u32),
        use_kitty: protocol == Protocol::Kitty,
        use_iterm: protocol == Protocol::Iterm2,
        ..Default::default()
    };
    viuer::print(&img, &conf).map_err(|e| anyhow::anyhow!("viuer: {e}"))?;
    let how = if graphics {
        protocol.name()
    } else {
        "half blocks"
    };
    execute!(out, MoveTo(0, rows.saturating_sub(1)))?;
    write!(
        out,
        "{} · {}×{} px · {how} · any key returns to ssmlab",
        crate::text::path(path),
        pic.w,
        pic.h
    )?;
    out.flush()?;
    enable_raw_mode()?;
    loop {
        if let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
        {
            return Ok(());
        }
    }
}

/// The TUI's last line of defence behind `text::sanitize`: no cell of a frame reaches the
/// terminal holding a control or bidi character (a string from disk that a view drew without
/// sanitising shows `�` there instead of acting on the terminal).
pub fn scrub(buf: &mut ratatui::buffer::Buffer) {
    for cell in buf.content.iter_mut() {
        if cell.symbol().chars().any(crate::text::is_unsafe) {
            cell.set_symbol("\u{fffd}");
        }
    }
}
