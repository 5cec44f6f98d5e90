//! `ssmlab bench …`

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::bench::{ConvCase, bench_conv};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// One benchmark; without one, the whole suite (every case of the performance issue, each
    /// in its own process, with MFU against the measured matmul ceiling and the ratios).
    #[command(subcommand)]
    pub what: Option<BenchWhat>,
    /// Suite: JSON lines only on stdout (one object per case); the table goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Suite: only the cases whose name contains this (the matmul ceiling always runs).
    #[arg(long)]
    pub only: Option<String>,
    /// Suite: only the three cases timed against the PyTorch peers (BiGS reference step,
    /// DiffuSSM training, DiffuSSM sampling), with their GFLOP/s.
    #[arg(long, conflicts_with = "only")]
    pub peers: bool,
    /// Suite: device of every case: cpu, cuda or cuda:N (needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Causal convolution forward+backward, FFT vs dense, per-channel and shared kernels.
    Conv {
        /// Batch size.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Channels.
        #[arg(long, default_value_t = 256)]
        channels: usize,
        /// Sequence lengths, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = [128, 256, 512, 1024, 2048, 4096, 8192])]
        lengths: Vec<usize>,
        /// Timed repetitions per case (median reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Fill-mask latency with the model already loaded (the TUI path), and its load time.
    Probe {
        #[arg(long, default_value = "checkpoints/bigs-mobydick")]
        model: std::path::PathBuf,
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
    /// DiffuSSM (diffussm-fashion model): training step (forward, backward, AdamW) and the time
    /// to sample n images with DDIM and guidance, on 28×28.
    Diffussm {
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Override keys of the diffussm-fashion model, e.g. --set hidden_size=96.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long, default_value_t = 16)]
        n: usize,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        #[arg(long, default_value_t = 2.0)]
        guidance: f64,
        /// Data-parallel shards of the training step (0 = one per core, 1 = none; as the
        /// run option train.data_parallel). Sharding makes candle's ops single-threaded.
        #[arg(long, default_value_t = 1)]
        shards: usize,
    },
    /// One case of the suite, given as its JSON spec (what the suite runs in a child process).
    #[command(hide = true)]
    Case { spec: String },
    /// The TUI at 200×60: a Curves frame with 3 runs × 100k points each (series recomputed and
    /// cached), opening 200 run directories (first frame, a frame after `j`), and one run with a
    /// 1,000,000-line metrics.jsonl (first frame, resident memory).
    Tui {
        #[arg(long, default_value_t = 100_000)]
        points: usize,
        #[arg(long, default_value_t = 50)]
        reps: usize,
        /// Run directories of the "open" case.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// metrics.jsonl lines of the "log" case (0 skips it).
        #[arg(long, default_value_t = 1_000_000)]
        log_lines: u64,
    },
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let Some(what) = args.what else {
        crate::engine::device::parse_device(&args.device)?;
        // Single-threaded so far; the children inherit the device.
        crate::runs::os::set_env_at_startup(&[(crate::bench::suite::DEVICE_ENV, &args.device)]);
        let exe = std::env::current_exe().context("cannot find the ssmlab executable")?;
        let t0 = std::time::Instant::now();
        let only = args.only.clone();
        let peers = args.peers;
        let keep = move |name: &str| {
            if peers {
                crate::bench::suite::PEER_CASES.contains(&name)
            } else {
                only.as_deref().is_none_or(|o| name.contains(o))
            }
        };
        let results = crate::bench::suite::run_suite(&exe, keep, |r| {
            if args.json {
                println!("{r}");
            } else {
                eprintln!("{}", r["case"].as_str().unwrap_or("?"));
            }
        })?;
        let table = crate::bench::suite::table(&results);
        let done = format!("suite took {:.0} s", t0.elapsed().as_secs_f64());
        if args.json {
            eprint!("{table}");
            eprintln!("{done}");
        } else {
            print!("{table}");
            println!("{done}");
        }
        return Ok(());
    };
    match what {
        BenchWhat::Case { spec } => {
            let case: crate::bench::suite::Case = serde_json::from_str(&spec)
                .with_context(|| format!("bench case: not a case spec: {spec}"))?;
            if let crate::bench::suite::Case::DiffussmTrain { shards, batch, .. } = &case
                && crate::train::parallel::resolve_shards(*shards, *batch) > 1
            {
                crate::train::parallel::single_threaded_ops();
            }
            println!("{}", crate::bench::suite::run_case(&case)?);
            Ok(())
        }
        BenchWhat::Conv {
            batch,
            channels,
            lengths,
            reps,
        } => {
            anyhow::ensure!(reps > 0, "--reps must be at least 1");
            let cases = bench_conv(batch, channels, &lengths, reps, |c| {
                println!("{}", crate::engine::serial::json(c));
            })?;
            eprintln!("{}", conv_table(&cases));
            Ok(())
        }
        BenchWhat::Probe {
            model,
            tokens,
            reps,
        } => {
            anyhow::ensure!(reps > 0, "--reps must be at least 1");
            let (load, median, p90) = crate::bench::bench_probe(&model, tokens, reps)?;
            println!(
                "{}",
                serde_json::json!({"bench": "probe", "model": model.display().to_string(), "tokens": tokens,
                    "reps": reps, "load_s": load, "median_ms": median * 1e3, "p90_ms": p90 * 1e3})
            );
            Ok(())
        }
        BenchWhat::Diffussm {
            batch,
            sets,
            reps,
            n,
            steps,
            guidance,
            shards,
        } => {
            let shards = crate::train::parallel::resolve_shards(shards, batch);
            if shards > 1 {
                crate::train::parallel::single_threaded_ops();
            }
            anyhow::ensure!(reps > 0, "--reps must be at least 1");
            let base = crate::train::presets::diffusion_preset("diffussm-fashion")?.model;
            let cfg = crate::train::config::overrides(&base, &sets)?;
            cfg.validate()?;
            let (step_s, sample_s) = crate::bench::bench_diffussm(
                &cfg,
                batch,
                reps,
                n,
                steps,
                guidance,
                shards,
                &candle_core::Device::Cpu,
            )?;
            // Analytic FLOPs (matmuls and FFT convolutions, [`DiffussmConfig::macs_per_image`]):
            // training = forward + backward = 3 forward passes; guided sampling runs 2n images.
            let fwd = 2.0 * cfg.macs_per_image();
            let passes = if (guidance - 1.0).abs() < 1e-12 { 1 } else { 2 };
            let sample_gflops = if sample_s > 0.0 {
                fwd * (passes * n * steps) as f64 / sample_s / 1e9
            } else {
                0.0
            };
            println!(
                "{}",
                serde_json::json!({"bench": "diffussm", "batch": batch, "train_step_s": step_s,
                    "train_images_per_s": batch as f64 / step_s,
                    "train_gflops": 3.0 * fwd * batch as f64 / step_s / 1e9,
                    "shards": shards, "sample_images": n,
                    "sample_steps": steps, "guidance": guidance, "sample_s": sample_s,
                    "sample_gflops": sample_gflops,
                    "macs_per_image": cfg.macs_per_image(), "config": cfg})
            );
            Ok(())
        }
        BenchWhat::Tui {
            points,
            reps,
            runs,
            log_lines,
        } => {
            anyhow::ensure!(reps > 0, "--reps must be at least 1");
            // the log case first: its resident memory is measured on a fresh process heap
            let mb = |b: Option<u64>| b.map(|b| b as f64 / (1 << 20) as f64);
            if log_lines > 0 {
                let o = crate::bench::bench_tui_open(1, log_lines, reps)?;
                println!(
                    "{}",
                    serde_json::json!({"bench": "tui-log", "lines": log_lines,
                        "first_frame_s": o.first_frame_s, "full_load_s": o.full_load_s,
                        "curves_frame_s": o.curves_frame_s,
                        "rss_mb": mb(o.rss_after), "rss_before_mb": mb(o.rss_before),
                        "frame_after_j_ms": o.scroll_frame_median_s * 1e3})
                );
            }
            if runs > 0 {
                let o = crate::bench::bench_tui_open(runs, 100, reps)?;
                println!(
                    "{}",
                    serde_json::json!({"bench": "tui-open", "runs": runs, "lines_per_run": 100,
                        "first_frame_s": o.first_frame_s,
                        "frame_after_j_ms": o.scroll_frame_median_s * 1e3})
                );
            }
            for cold in [true, false] {
                let (median, p90) = crate::bench::bench_tui_frame(200, 60, 3, points, reps, cold);
                println!(
                    "{}",
                    serde_json::json!({"bench": "tui-frame", "series": if cold { "recomputed" } else { "cached" },
                        "width": 200, "height": 60, "runs": 3, "points_per_run": points, "reps": reps,
                        "median_ms": median * 1e3, "p90_ms": p90 * 1e3})
                );
            }
            Ok(())
        }
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.2}", s * 1e3))
}

/// Human table: per length and kernel kind, FFT ms, dense ms, dense/FFT ratio.
fn conv_table(cases: &[ConvCase]) -> String {
    let mut s = String::from("kernel       L      fft ms    dense ms   dense/fft\n");
    for c in cases.iter().filter(|c| c.path == "fft") {
        let d = cases
            .iter()
            .find(|d| d.path == "dense" && d.l == c.l && d.kernel == c.kernel)
            .and_then(|d| d.median_s);
        let ratio = match (c.median_s, d) {
            (Some(f), Some(d)) => format!("{:.1}x", d / f),
            _ => "-".into(),
        };
        s += &format!(
            "{:<11} {:>5} {:>10} {:>11} {:>11}\n",
            c.kernel,
            c.l,
            ms(c.median_s),
            ms(d),
            ratio
        );
    }
    s
}
