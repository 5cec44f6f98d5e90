//! Benchmarks printed as JSON (`ssmlab bench …`): numbers for speed live here, not in tests.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::Serialize;

use crate::engine::Result;
use crate::engine::conv::{ConvPath, causal_conv};

pub mod suite;

/// One measured convolution case.
#[derive(Debug, Clone, Serialize)]
pub struct ConvCase {
    pub bench: &'static str,
    pub path: &'static str,
    /// `per-channel` (kernel (C, L)) or `shared` (kernel (1, L), as BiGS).
    pub kernel: &'static str,
    pub b: usize,
    pub c: usize,
    pub l: usize,
    /// Median seconds of forward + backward (gradients of input and kernel).
    pub median_s: Option<f64>,
    pub reps: usize,
    /// Why a case was not run.
    pub skipped: Option<String>,
}

/// Median of forward+backward times over `reps` runs, after one warm-up.
fn time_fwd_bwd(u: &Var, k: &Var, w: &Tensor, path: ConvPath, reps: usize) -> Result<f64> {
    let run = || -> Result<f64> {
        let t0 = Instant::now();
        let y = causal_conv(u.as_tensor(), k.as_tensor(), path)?;
        let g = (y * w)?.sum_all()?.backward()?;
        // make sure both gradients are materialised
        let _ = (
            g.get(u.as_tensor()).is_some(),
            g.get(k.as_tensor()).is_some(),
        );
        Ok(t0.elapsed().as_secs_f64())
    };
    run()?;
    let mut ts = (0..reps).map(|_| run()).collect::<Result<Vec<_>>>()?;
    ts.sort_by(f64::total_cmp);
    Ok(ts[ts.len() / 2])
}

/// Dense per-channel Toeplitz matrices above this many bytes are not built (they would need
/// several such buffers at once: matrix, gathered copy, gradients).
const DENSE_BYTES_LIMIT: usize = 1 << 30;

/// Convolution forward+backward, FFT vs dense, over `lengths`, for per-channel and shared
/// kernels. `on_case` sees each case as it finishes (for streaming output).
pub fn bench_conv(
    b: usize,
    c: usize,
    lengths: &[usize],
    reps: usize,
    mut on_case: impl FnMut(&ConvCase),
) -> Result<Vec<ConvCase>> {
    let dev = Device::Cpu;
    let mut out = Vec::new();
    for &l in lengths {
        let u = Var::from_tensor(&Tensor::randn(0f32, 1., (b, c, l), &dev)?)?;
        let w = Tensor::randn(0f32, 1., (b, c, l), &dev)?;
        for (kernel, rows) in [("per-channel", c), ("shared", 1)] {
            let k = Var::from_tensor(&Tensor::randn(0f32, 1., (rows, l), &dev)?)?;
            for (name, path) in [("fft", ConvPath::Fft), ("dense", ConvPath::Dense)] {
                let bytes = rows * l * l * DType::F32.size_in_bytes();
                let (median_s, skipped) = if path == ConvPath::Dense && bytes > DENSE_BYTES_LIMIT {
                    (
                        None,
                        Some(format!(
                            "the Toeplitz matrices would take {:.1} GiB",
                            bytes as f64 / (1u64 << 30) as f64
                        )),
                    )
                } else {
                    let r = if l >= 4096 && path == ConvPath::Dense {
                        1
                    } else {
                        reps
                    };
                    (Some(time_fwd_bwd(&u, &k, &w, path, r)?), None)
                };
                let case = ConvCase {
                    bench: "conv",
                    path: name,
                    kernel,
                    b,
                    c,
                    l,
                    median_s,
                    reps,
                    skipped,
                };
                on_case(&case);
                out.push(case);
            }
        }
    }
    Ok(out)
}

/// One full frame of the curves view at `w`×`h` with `runs` runs of `points` metrics each:
/// (median, p90) seconds over `reps` draws into a headless buffer. `cold`: the series are
/// recomputed every frame (as when new metrics arrive), else reused (a redraw for input).
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "the built-in themes are compiled in and parsed by the tests"
)]
pub fn bench_tui_frame(
    w: u16,
    h: u16,
    runs: usize,
    points: usize,
    reps: usize,
    cold: bool,
) -> (f64, f64) {
    use crate::runs::Metric;
    use crate::runs::index::RunSummary;
    use crate::tui::app::{App, View};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    let (keymap, _) = crate::tui::keymap::Keymap::new(&Default::default());
    let theme = crate::tui::theme::Theme::builtin("dark").expect("theme");
    let mut app = App::new("checkpoints".into(), keymap, theme);
    let summaries = (0..runs)
        .map(|r| {
            let metrics: Vec<Metric> = (1..=points as u64)
                .map(|s| Metric {
                    step: s,
                    tokens: s * 4096,
                    wall_s: s as f64,
                    loss: Some(
                        3.0 + 6.0 / (1.0 + s as f64 / 500.0)
                            + 0.2 * ((s * (r as u64 + 3)) as f64).sin(),
                    ),
                    ..Default::default()
                })
                .collect();
            RunSummary::of_metrics(
                &format!("run-{r}"),
                format!("checkpoints/run-{r}").into(),
                "bigs",
                metrics,
            )
        })
        .collect();
    app.set_runs(summaries);
    app.marked = (0..runs).map(|r| format!("run-{r}")).collect();
    app.view = View::Curves;
    app.set_viewport(ratatui::layout::Rect::new(0, 0, w, h));
    let mut term = Terminal::new(TestBackend::new(w, h)).expect("test backend");
    let mut ts: Vec<f64> = (0..reps + 1)
        .map(|_| {
            if cold {
                app.curves.series.clear();
            }
            // as the event loop does: compute what changed, then draw
            let t0 = Instant::now();
            app.prepare_frame();
            term.draw(|f| crate::tui::views::draw(f, &app))
                .expect("draw");
            t0.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    ts.sort_by(f64::total_cmp);
    (ts[ts.len() / 2], ts[ts.len() * 9 / 10])
}

/// Probe latency on a loaded model: (load seconds, median and p90 seconds of one fill-mask of
/// a prompt of about `tokens` tokens, padded as for released checkpoints).
pub fn bench_probe(
    model: &std::path::Path,
    tokens: usize,
    reps: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let t0 = Instant::now();
    let pm = crate::probe::ProbeModel::open(model, &Device::Cpu)?;
    let load = t0.elapsed().as_secs_f64();
    let words = "call me ishmael . some years ago never mind how long precisely having little or no money in my purse";
    let mut text = String::new();
    while pm.tok.encode(&text)?.len() + 2 < tokens.saturating_sub(8) {
        text.push_str(words);
        text.push(' ');
    }
    text.push_str("the [MASK] of the sea .");
    let mut ts = Vec::new();
    for _ in 0..reps + 1 {
        let t = Instant::now();
        pm.fill_mask(&text, 10, &[], true)?;
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.remove(0);
    ts.sort_by(f64::total_cmp);
    Ok((load, ts[ts.len() / 2], ts[ts.len() * 9 / 10]))
}

/// DiffuSSM: median seconds of one training step (ε-MSE forward, backward, AdamW) at `batch`, and seconds
/// to sample `n` images with `steps` DDIM steps and guidance `guidance` (two passes a step).
#[allow(clippy::too_many_arguments)]
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "presets of the fixed list exist (tested)"
)]
pub fn bench_diffussm(
    cfg: &crate::engine::diffussm::DiffussmConfig,
    batch: usize,
    reps: usize,
    n: usize,
    steps: usize,
    guidance: f64,
    shards: usize,
    dev: &Device,
) -> Result<(f64, f64)> {
    use crate::engine::diffusion::{
        DiffusionConfig, NoiseSchedule, SampleOptions, SamplerKind, sample,
    };
    use crate::engine::diffussm::build_diffussm;
    use crate::engine::init::normal;
    use rand::SeedableRng;
    let dev = dev.clone();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (model, varmap) = build_diffussm(cfg, DType::F32, &dev, &mut rng)?;
    // Non-zero modulations so the whole network is exercised, as after some training.
    for v in varmap.all_vars() {
        if v.as_tensor().abs()?.sum_all()?.to_scalar::<f32>()? == 0.0 {
            v.set(&normal(
                &mut rng,
                v.shape().clone(),
                0.0,
                0.02,
                DType::F32,
                &dev,
            )?)?;
        }
    }
    let shape = (batch, cfg.in_channels, cfg.image_height, cfg.image_width);
    let x = normal(&mut rng, shape, 0.0, 1.0, DType::F32, &dev)?;
    let eps = normal(&mut rng, shape, 0.0, 1.0, DType::F32, &dev)?;
    let t: Vec<f64> = (0..batch).map(|i| (i * 31 % 1000) as f64).collect();
    let y: Vec<u32> = (0..batch).map(|i| (i % cfg.num_classes) as u32).collect();
    // A whole training step: forward, backward, AdamW update (as the trainer does it).
    let optim = crate::train::presets::diffusion_preset("diffussm-fashion")
        .expect("preset")
        .optim;
    let mut opt = crate::train::optim::AdamW::new(
        crate::train::optim::param_groups(&varmap, &optim),
        optim.beta1,
        optim.beta2,
        optim.eps,
    )?;
    let mut step = || -> Result<f64> {
        let t0 = Instant::now();
        let vars: Vec<&Var> = opt.params.iter().map(|p| &p.var).collect();
        let total = eps.elem_count() as f64;
        let (_, grads) = crate::train::parallel::sharded_grads(&vars, batch, shards, |r| {
            let (s, n) = (r.start, r.len());
            let out = model.forward(&x.narrow(0, s, n)?, &t[r.clone()], &y[r])?;
            Ok(((out - eps.narrow(0, s, n)?)?.sqr()?.sum_all()? / total)?)
        })?;
        opt.step(&grads, 1e-4)?;
        Ok(t0.elapsed().as_secs_f64())
    };
    step()?;
    let mut ts = (0..reps).map(|_| step()).collect::<Result<Vec<_>>>()?;
    ts.sort_by(f64::total_cmp);
    if n == 0 {
        return Ok((ts[ts.len() / 2], 0.0));
    }
    let sched = NoiseSchedule::new(&DiffusionConfig::default())?;
    let classes: Vec<Option<u32>> = (0..n).map(|i| Some((i % cfg.num_classes) as u32)).collect();
    let opts = SampleOptions {
        sampler: SamplerKind::Ddim { eta: 0.0 },
        steps,
        guidance,
        clip: true,
        trajectory_frames: 0,
    };
    let t0 = Instant::now();
    sample(&model, &sched, &classes, &opts, &mut rng, &mut |_, _| true)?;
    Ok((ts[ts.len() / 2], t0.elapsed().as_secs_f64()))
}

/// A scratch folder under the system's temporary folder, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(what: &str) -> std::io::Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "ssmlab-bench-{what}-{}-{}",
            std::process::id(),
            crate::runs::unix_now() as u64
        ));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a run directory `dir/id` as a trainer leaves it: config.toml, status.json and a
/// metrics.jsonl of `lines` records (an evaluation every 50 steps).
fn fixture_run(dir: &std::path::Path, id: &str, lines: u64) -> anyhow::Result<()> {
    use crate::runs::{Metric, RunDir, RunState, Status};
    use std::io::Write;
    let run = RunDir::create(dir, id)?;
    let mut cfg = crate::train::presets::preset("bigs-tiny")?;
    cfg.run.name = id.into();
    std::fs::write(run.config_path(), cfg.to_toml())?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(run.metrics_path())?);
    for s in 1..=lines {
        let x = s as f64;
        let mut m = Metric {
            step: s,
            tokens: s * 2048,
            wall_s: x * 0.6,
            lr: Some(2e-3),
            loss: Some(3.0 + 6.0 / (1.0 + x / 500.0) + 0.2 * (x * 1.7).sin()),
            grad_norm: Some(0.5 + 0.1 * (x * 0.3).cos()),
            tokens_per_s: Some(3300.0 + (x * 0.1).sin()),
            ..Default::default()
        };
        if s % 50 == 0 {
            m.eval_loss = Some(3.2 + 6.0 / (1.0 + x / 500.0));
            m.eval_acc = Some(0.25);
            m.eval_baseline_acc = Some(0.06);
        }
        writeln!(w, "{}", crate::engine::serial::json(&m))?;
    }
    w.flush()?;
    run.write_status(&Status {
        pid: std::process::id(),
        state: RunState::Finished,
        heartbeat: crate::runs::unix_now(),
        started: crate::runs::unix_now() - 100.0,
        step: lines,
        total_steps: lines,
        model: "bigs".into(),
        last_checkpoint: None,
        best_checkpoint: None,
        message: None,
    })?;
    Ok(())
}

/// The resident set of this process in bytes (`VmRSS`), if the system says.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// What `ssmlab bench tui` measures of a runs folder: the first frame (scan, index, one draw of
/// the Runs view at 200×60, as the TUI starts) and the median time of a frame after `j`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TuiOpen {
    pub runs: usize,
    pub lines_per_run: u64,
    pub first_frame_s: f64,
    /// Until every metrics file is read whole (scans as the TUI's worker makes them).
    pub full_load_s: f64,
    /// A Curves frame (the dashboard of every metric) of the selected run, loaded whole:
    /// computing its six series (on the derive worker in the TUI) and drawing.
    pub curves_frame_s: f64,
    pub scroll_frame_median_s: f64,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
}

/// `runs` run directories of `lines` metrics records each, opened as the TUI opens them.
#[allow(
    clippy::expect_used,
    reason = "the built-in themes are compiled in and parsed by the tests"
)]
pub fn bench_tui_open(runs: usize, lines: u64, reps: usize) -> anyhow::Result<TuiOpen> {
    use crate::tui::app::App;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    let scratch = Scratch::new("tui")?;
    for r in 0..runs {
        fixture_run(&scratch.0, &format!("run-{r:03}"), lines)?;
    }
    let rss_before = rss_bytes();
    let t0 = Instant::now();
    let (keymap, _) = crate::tui::keymap::Keymap::new(&Default::default());
    let theme = crate::tui::theme::Theme::builtin("dark").expect("theme");
    let mut app = App::new(scratch.0.clone(), keymap, theme);
    app.set_viewport(ratatui::layout::Rect::new(0, 0, 200, 60));
    let mut index = crate::runs::index::RunsIndex::new();
    app.set_runs(index.scan(&scratch.0));
    let mut term = Terminal::new(TestBackend::new(200, 60))?;
    term.draw(|f| crate::tui::views::draw(f, &app))?;
    let first_frame_s = t0.elapsed().as_secs_f64();
    let mut runs_now = index.scan(&scratch.0);
    while runs_now.iter().any(|r| r.loading) {
        runs_now = index.scan(&scratch.0);
    }
    app.set_runs(runs_now);
    let full_load_s = t0.elapsed().as_secs_f64();
    app.view = crate::tui::app::View::Curves;
    let t1 = Instant::now();
    // without workers the series are computed inline: this is the derive worker's time for
    // the dashboard's six series plus the frame's
    app.prepare_frame();
    term.draw(|f| crate::tui::views::draw(f, &app))?;
    let curves_frame_s = t1.elapsed().as_secs_f64();
    app.view = crate::tui::app::View::Runs;
    let rss_after = rss_bytes();
    let mut ts = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        app.on_key(KeyEvent::new(KeyCode::Char('j'), KeyModifiers::NONE));
        term.draw(|f| crate::tui::views::draw(f, &app))?;
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    Ok(TuiOpen {
        runs,
        lines_per_run: lines,
        first_frame_s,
        full_load_s,
        curves_frame_s,
        scroll_frame_median_s: ts[ts.len() / 2],
        rss_before,
        rss_after,
    })
}
