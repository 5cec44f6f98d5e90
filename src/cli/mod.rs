//! The `ssmlab` command line (clap). Each subcommand lives in its own file; errors travel as
//! `anyhow` and are printed once by `main`.

use clap::{Parser, Subcommand};

mod bench;
mod child;
mod compare;
mod export;
mod kernels;
mod probe;
mod sample;
mod sweep;
mod train;

/// A terminal lab for attention-free deep learning (BiGS, DiffuSSM, S4D).
#[derive(Debug, Parser)]
#[command(name = "ssmlab", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Runs folder the TUI watches (default: settings file, else `checkpoints`).
    #[arg(long)]
    pub runs_dir: Option<std::path::PathBuf>,
    /// Colour theme: dark, light, hc16, or a theme file.
    #[arg(long)]
    pub theme: Option<String>,
    /// ASCII chart markers instead of braille.
    #[arg(long)]
    pub ascii: bool,
    /// Threads this process uses (default: all cores): candle's CPU ops, or the shards of
    /// data-parallel diffusion training. Sets CANDLE_NUM_THREADS and RAYON_NUM_THREADS.
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Refuse models and batches whose memory estimate exceeds SIZE (e.g. 8G, 512M; default:
    /// the machine's memory). The same as SSMLAB_MAX_MEMORY, which it sets (runs started from
    /// here inherit it).
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_memory: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmarks, printed as JSON lines (one object per case) plus a table on stderr.
    Bench(bench::BenchArgs),
    /// BiGS against its attention twin: launch a preset pair, compare runs, scaling with L.
    Compare(compare::CompareArgs),
    /// Train a model into a run directory (headless; the TUI attaches to it).
    Train(train::TrainArgs),
    /// Train a preset over a grid or random ranges of values (runs NAME-1, NAME-2, …); a rerun
    /// skips finished runs and resumes stopped ones.
    Sweep(sweep::SweepArgs),
    /// Masked-token predictions from a checkpoint ("call me [MASK] .").
    Probe(probe::ProbeArgs),
    /// Images from a DiffuSSM checkpoint: a PNG grid (--show also prints it), or --cas N.
    Sample(sample::SampleArgs),
    /// The S4D kernels of a checkpoint: a summary table, or a plot (.png) / values (.csv).
    Kernels(kernels::KernelsArgs),
    /// Runs' metrics as TensorBoard event files and/or one wide CSV.
    Export(export::ExportArgs),
    /// List runs as a table (or JSON) and exit.
    Runs {
        #[arg(long, default_value = "checkpoints")]
        runs_dir: std::path::PathBuf,
        /// One JSON object per run.
        #[arg(long)]
        json: bool,
    },
    /// Tokenizer tools.
    #[command(subcommand)]
    Tokenizer(train::TokenizerCmd),
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        // No other thread exists yet: nothing has run but argument parsing.
        let n = n.to_string();
        crate::runs::os::set_env_at_startup(&[
            ("CANDLE_NUM_THREADS", &n),
            ("RAYON_NUM_THREADS", &n),
            (crate::train::parallel::THREADS_ENV, &n),
        ]);
    }
    if let Some(m) = &cli.max_memory {
        let b = crate::engine::memory::parse_size(m)
            .map_err(|e| anyhow::anyhow!("--max-memory: {e}"))?;
        // Still before any other thread exists.
        crate::runs::os::set_env_at_startup(&[(crate::engine::memory::LIMIT_ENV, &b.to_string())]);
    }
    // A bad SSMLAB_MAX_MEMORY is one line now, not an error inside a worker later.
    crate::engine::memory::limit()?;
    match cli.command {
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Sweep(args)) => sweep::run(args),
        Some(Command::Compare(args)) => compare::run(args),
        Some(Command::Tokenizer(cmd)) => train::tokenizer(cmd),
        Some(Command::Probe(args)) => probe::run(args),
        Some(Command::Kernels(args)) => kernels::run(args),
        Some(Command::Export(args)) => export::run(args),
        Some(Command::Sample(args)) => sample::run(args),
        Some(Command::Runs { runs_dir, json }) => print_runs(&runs_dir, json),
        None => {
            use std::io::IsTerminal;
            let opts = crate::tui::TuiOptions {
                runs_dir: cli.runs_dir,
                theme: cli.theme,
                ascii: cli.ascii,
            };
            if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
                crate::tui::run(opts)
            } else {
                // No terminal (pipe, CI, cron): the runs table instead of a TUI.
                let dir = crate::tui::build_app(&opts).runs_dir;
                print_runs(&dir, false)
            }
        }
    }
}

/// Writes `text` to stdout. A reader that left (`| head`) ends the output quietly: that is a
/// clean stop, not an error, and never a panic as `print!` would be.
pub(crate) fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn print_runs(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let mut runs = crate::runs::index::RunsIndex::new().scan(dir);
    crate::sweep::label_runs(dir, &mut runs);
    if json {
        for r in &runs {
            let mut v = serde_json::to_value(r)?;
            v["state"] = r.state_label().into();
            v["step"] = r.step().into();
            v["last_loss"] = r.last_loss().into();
            v["last_eval_loss"] = r.last_eval().map(|e| e.0).into();
            v["last_eval_acc"] = r.last_eval().and_then(|e| e.1).into();
            out(&format!("{}\n", serde_json::to_string(&v)?))?;
        }
    } else {
        out(&crate::runs::index::runs_table(&runs, dir))?;
    }
    Ok(())
}
