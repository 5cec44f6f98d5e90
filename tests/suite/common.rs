//! Helpers shared by the tests: fixtures, tolerances, finite differences.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};

/// The device of the parity tests: the CPU, or `SSMLAB_TEST_DEVICE` (`cuda:0` in
/// `scripts/gpu-check.sh`).
pub fn device() -> candle_core::Device {
    match std::env::var("SSMLAB_TEST_DEVICE") {
        Ok(d) => ssmlab::engine::device::parse_device(&d).expect("SSMLAB_TEST_DEVICE"),
        Err(_) => candle_core::Device::Cpu,
    }
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

pub fn load_st(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).expect("fixture loads")
}

/// `max|got − ref| / max|ref|`, the vectors' README's relative error.
pub fn max_rel(got: &Tensor, want: &Tensor) -> f64 {
    let g = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let w = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    assert_eq!(g.dims(), w.dims(), "shape mismatch");
    let diff = (g - &w)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = w.abs().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
    if scale == 0.0 { diff } else { diff / scale }
}

pub fn max_abs(got: &Tensor, want: &Tensor) -> f64 {
    let g = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let w = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    (g - w)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Central finite differences of the scalar `f` with respect to a few entries of each var,
/// against the gradient from backprop. Returns the worst relative error (relative to the
/// largest |analytic gradient| of that var, plus an absolute floor).
/// The sum of squares of a tensor's elements (an f64 tensor).
pub fn sq_norm(t: &Tensor) -> f64 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

pub fn fd_check(vars: &[(&str, &Var)], f: impl Fn() -> Tensor, samples: usize, eps: f64) -> f64 {
    let loss = f();
    let grads = loss.backward().unwrap();
    let mut worst: f64 = 0.0;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let scale = g.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-8);
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = base.len();
        let picks: Vec<usize> = (0..samples.min(n)).map(|i| (i * 7919 + 13) % n).collect();
        for &i in &picks {
            let mut plus = base.clone();
            plus[i] += eps;
            var.set(&Tensor::from_vec(plus, var.shape(), var.device()).unwrap())
                .unwrap();
            let fp = f().to_scalar::<f64>().unwrap();
            let mut minus = base.clone();
            minus[i] -= eps;
            var.set(&Tensor::from_vec(minus, var.shape(), var.device()).unwrap())
                .unwrap();
            let fm = f().to_scalar::<f64>().unwrap();
            var.set(&Tensor::from_vec(base.clone(), var.shape(), var.device()).unwrap())
                .unwrap();
            let num = (fp - fm) / (2.0 * eps);
            let err = (num - g[i]).abs() / scale;
            assert!(
                err < 1e-5,
                "{name}[{i}]: finite difference {num:e} vs backprop {:e} (rel {err:e})",
                g[i]
            );
            worst = worst.max(err);
        }
    }
    worst
}

/// The shipped run `checkpoints/bigs-mobydick`.
pub fn shipped_run() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("checkpoints/bigs-mobydick")
}

/// A copy of the shipped run under `runs_dir/bigs-mobydick` with two checkpoints: `step-0`, the
/// seeded initialisation of its config, and `step-2500`, the shipped weights.
pub fn two_checkpoint_run(runs_dir: &std::path::Path) -> PathBuf {
    use rand::SeedableRng;
    let src = shipped_run();
    let run = runs_dir.join("bigs-mobydick");
    std::fs::create_dir_all(run.join("step-0")).unwrap();
    std::fs::create_dir_all(run.join("step-2500")).unwrap();
    for f in ["config.toml", "status.json", "metrics.jsonl"] {
        std::fs::copy(src.join(f), run.join(f)).unwrap();
    }
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(src.join("step-2500").join(f), run.join("step-2500").join(f)).unwrap();
    }
    let cfg = ssmlab::engine::bigs::BigsConfig::from_json_file(&src.join("step-2500/config.json"))
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (_, varmap) =
        ssmlab::engine::bigs::build_bigs(&cfg, DType::F32, &Device::Cpu, &mut rng).unwrap();
    varmap.save(run.join("step-0/model.safetensors")).unwrap();
    std::fs::write(run.join("step-0/config.json"), cfg.to_json()).unwrap();
    run
}

/// A DiffuSSM run trained by the binary with the `diffussm-smoke` preset (2 layers, hidden 16,
/// patch 2 on 28×28: L = 196, per-channel kernels; checkpoint step-6 with EMA weights (step-3 is pruned);
/// kernels.jsonl at steps 0, 3 and 6). Made once per test process under the target's temporary folder.
pub fn smoke_diffusion_run() -> &'static std::path::Path {
    static RUN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let runs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernels-diffussm-runs");
        let _ = std::fs::remove_dir_all(&runs);
        std::fs::create_dir_all(&runs).unwrap();
        let dir = runs.to_str().unwrap();
        assert_ok(&ssmlab(
            &["train", "--preset", "diffussm-smoke", "--runs-dir", dir],
            &runs,
        ));
        runs.join("diffussm-smoke")
    })
}

/// A DiffuSSM run `runs_dir/diffussm-init` with one checkpoint, `step-0`: the seeded
/// initialisation of the `diffussm-smoke` model (no training, so its kernels are the same on
/// every machine; for snapshots).
pub fn diffusion_init_run(runs_dir: &std::path::Path) -> PathBuf {
    diffusion_init_run_with(runs_dir, "diffussm-init", |_| {})
}

/// [`diffusion_init_run`] with the model configuration changed by `edit`, as `runs_dir/name`.
pub fn diffusion_init_run_with(
    runs_dir: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut ssmlab::engine::diffussm::DiffussmConfig),
) -> PathBuf {
    use rand::SeedableRng;
    let mut cfg = ssmlab::train::presets::diffusion_preset("diffussm-smoke").unwrap();
    cfg.run.name = name.into();
    edit(&mut cfg.model);
    let run = runs_dir.join(name);
    std::fs::create_dir_all(run.join("step-0")).unwrap();
    std::fs::write(run.join("config.toml"), cfg.to_toml()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (_, varmap) =
        ssmlab::engine::diffussm::build_diffussm(&cfg.model, DType::F32, &Device::Cpu, &mut rng)
            .unwrap();
    varmap.save(run.join("step-0/model.safetensors")).unwrap();
    std::fs::write(run.join("step-0/config.json"), cfg.model.to_json()).unwrap();
    run
}

/// One frame of the whole TUI at `w`×`h` in a headless buffer: the text (lines trimmed at the
/// right) and the buffer (for styles).
pub fn render_frame(
    app: &mut ssmlab::tui::app::App,
    w: u16,
    h: u16,
) -> (String, ratatui::buffer::Buffer) {
    // as the event loop does: the terminal's size, then what the frame needs, then drawing
    app.set_viewport(ratatui::layout::Rect::new(0, 0, w, h));
    app.prepare_frame();
    draw_frame(app, w, h)
}

/// The text of a frame drawn without preparing it first (what drawing alone shows).
pub fn render_unprepared(app: &ssmlab::tui::app::App, w: u16, h: u16) -> String {
    draw_frame(app, w, h).0
}

fn draw_frame(app: &ssmlab::tui::app::App, w: u16, h: u16) -> (String, ratatui::buffer::Buffer) {
    let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
    term.draw(|f| ssmlab::tui::views::draw(f, app)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut s = String::new();
    for y in 0..h {
        let line: String = (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect();
        s += line.trim_end();
        s.push('\n');
    }
    (s, buf)
}

/// Runs the `ssmlab` binary with `args` in `cwd` and returns its output.
pub fn ssmlab(args: &[&str], cwd: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ssmlab"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Asserts that a run of the binary succeeded (showing its stderr if not).
pub fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An app over `runs` with the default keymap and the dark theme, as `ssmlab` starts.
pub fn app_over(runs: Vec<ssmlab::runs::index::RunSummary>) -> ssmlab::tui::app::App {
    let (keymap, _) = ssmlab::tui::keymap::Keymap::new(&Default::default());
    let mut app = ssmlab::tui::app::App::new(
        PathBuf::from("checkpoints"),
        keymap,
        ssmlab::tui::theme::Theme::builtin("dark").unwrap(),
    );
    app.set_runs(runs);
    app
}

/// Cleans up what a tmux test started, when the test ends or fails (a panic unwinds through
/// it): the test's private tmux server with every process in its panes, then any trainer that a
/// run under `runs` still names as running (a run launched from the TUI is detached into its
/// own session, so the tmux server's end does not reach it).
pub struct TmuxCleanup {
    pub sock: String,
    pub runs: Option<std::path::PathBuf>,
}

impl Drop for TmuxCleanup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["-S", &self.sock, "kill-server"])
            .output();
        if let Some(runs) = &self.runs {
            stop_trainers(runs);
        }
    }
}

/// Stops every trainer that a run under `runs` names as running (SIGTERM, then SIGKILL after
/// 10 s): the cleanup of tests that start trainers through another process.
pub fn stop_trainers(runs: &std::path::Path) {
    let Ok(dirs) = std::fs::read_dir(runs) else {
        return;
    };
    for d in dirs.flatten() {
        let run = ssmlab::runs::RunDir { path: d.path() };
        let Ok(s) = run.read_status() else { continue };
        if s.state != ssmlab::runs::RunState::Running || !ssmlab::runs::pid_alive(s.pid) {
            continue;
        }
        ssmlab::runs::os::signal(s.pid, libc::SIGTERM);
        let t0 = std::time::Instant::now();
        while ssmlab::runs::pid_alive(s.pid) && t0.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if ssmlab::runs::pid_alive(s.pid) {
            ssmlab::runs::os::signal(s.pid, libc::SIGKILL);
        }
    }
}

/// A child process that is killed and reaped when the test ends, on failure too.
pub struct Reap(pub std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shell line that starts the real TUI in `cwd` on `runs` (no user settings) and prints its
/// exit status when it ends, for the tmux tests.
pub fn tui_command(cwd: &std::path::Path, runs: &std::path::Path) -> String {
    format!(
        "cd {} && SSMLAB_CONFIG=/nonexistent {} --runs-dir {}; echo EXITED=$?",
        cwd.display(),
        env!("CARGO_BIN_EXE_ssmlab"),
        runs.display()
    )
}
