//! `ssmlab train` and `ssmlab tokenizer`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::corpus::load_corpus;
use crate::data::tokenizer::train_wordpiece;
use crate::runs::RunDir;
use crate::train::config::model_family;
use crate::train::diffusion::{DiffusionRunConfig, DiffusionTrainer};
use crate::train::parallel::{resolve_shards, single_threaded_ops};
use crate::train::presets::{AnyConfig, PRESETS, any_preset};
use crate::train::session::{plain_line, stop_on_signals};
use crate::train::{Event, Outcome, RunConfig, Trainer};

/// A training session of either run kind.
enum AnyTrainer {
    Mlm(Box<Trainer>),
    Diffusion(Box<DiffusionTrainer>),
}

impl AnyTrainer {
    fn total_steps(&self) -> u64 {
        match self {
            Self::Mlm(t) => t.total_steps(),
            Self::Diffusion(t) => t.total_steps(),
        }
    }

    fn run_dir(&self) -> &RunDir {
        match self {
            Self::Mlm(t) => &t.run,
            Self::Diffusion(t) => &t.run,
        }
    }

    fn run(
        &mut self,
        stop: &AtomicBool,
        stop_at: Option<u64>,
        on_event: &mut dyn FnMut(Event),
    ) -> crate::train::session::Result<Outcome> {
        match self {
            Self::Mlm(t) => t.run(stop, stop_at, on_event),
            Self::Diffusion(t) => t.run(stop, stop_at, on_event),
        }
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Start from a preset (see --list-presets).
    #[arg(long, conflicts_with_all = ["config", "resume"])]
    pub preset: Option<String>,
    /// Start from a run configuration file (TOML, as a run's config.toml).
    #[arg(long, conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Continue a run from its latest checkpoint: a run id under --runs-dir, or a path.
    #[arg(long)]
    pub resume: Option<String>,
    /// With --resume: continue from checkpoint step-N instead of the newest (newer ones are
    /// moved aside as step-M.unused).
    #[arg(long, requires = "resume", value_name = "N")]
    pub from_step: Option<u64>,
    /// Name of the run directory (default: the preset or config's run.name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where run directories live.
    #[arg(long, default_value = "checkpoints")]
    pub runs_dir: PathBuf,
    /// Seed of every random draw (overrides run.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override a configuration key, e.g. --set optim.lr=3e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Checkpoint and stop (state `stopped`) after this step.
    #[arg(long)]
    pub stop_at: Option<u64>,
    /// List the presets and exit.
    #[arg(long)]
    pub list_presets: bool,
    /// Print the resolved configuration and exit without training.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenizerCmd {
    /// Train a WordPiece tokenizer (BERT special tokens) on a corpus and save tokenizer.json.
    Train {
        /// A .txt file, a folder of .txt/.jsonl files, or a .jsonl file.
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long, default_value_t = 8000)]
        vocab_size: usize,
        #[arg(long, default_value = "tokenizer.json")]
        out: PathBuf,
    },
}

fn resolve_run(arg: &str, runs_dir: &Path) -> anyhow::Result<RunDir> {
    let direct = PathBuf::from(arg);
    let p = if direct.join("config.toml").is_file() {
        direct
    } else {
        runs_dir.join(arg)
    };
    RunDir::open(&p).with_context(|| {
        format!(
            "--resume {arg}: no run of that id under {} nor at that path",
            runs_dir.display()
        )
    })
}

/// Sharded diffusion training wants single-threaded candle ops (`train::parallel`); this has
/// to happen before the first candle op of the process.
fn shard_threads(cfg: &DiffusionRunConfig) {
    if resolve_shards(cfg.train.data_parallel, cfg.train.batch_size) > 1 {
        // A user's CANDLE_NUM_THREADS / RAYON_NUM_THREADS is kept; --threads is the shards' budget.
        single_threaded_ops();
    }
}

#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "a constant template, exercised by every run on a terminal"
)]
pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    if a.list_presets {
        for (name, desc) in PRESETS {
            println!("{name:<16} {desc}");
        }
        return Ok(());
    }
    let mut sets = a.sets.clone();
    if let Some(s) = a.seed {
        sets.push(format!("run.seed={s}"));
    }
    let mut trainer = if let Some(r) = &a.resume {
        if a.name.is_some() {
            bail!("--name cannot rename a run that is resumed");
        }
        let run = resolve_run(r, &a.runs_dir)?;
        if crate::runs::is_diffusion(&model_family(&run.config_path())?) {
            let cfg =
                DiffusionRunConfig::from_toml_file(&run.config_path())?.with_overrides(&sets)?;
            shard_threads(&cfg);
            AnyTrainer::Diffusion(Box::new(DiffusionTrainer::resume_from(
                run,
                &sets,
                a.from_step,
                &mut |m| say_err(m),
            )?))
        } else {
            AnyTrainer::Mlm(Box::new(Trainer::resume_from(
                run,
                &sets,
                a.from_step,
                &mut |m| say_err(m),
            )?))
        }
    } else {
        let base = match (&a.preset, &a.config) {
            (Some(p), _) => any_preset(p)?,
            (None, Some(c)) if crate::runs::is_diffusion(&model_family(c)?) => {
                AnyConfig::Diffusion(Box::new(DiffusionRunConfig::from_toml_file(c)?))
            }
            (None, Some(c)) => AnyConfig::Mlm(RunConfig::from_toml_file(c)?),
            (None, None) => {
                bail!("give --preset NAME, --config FILE or --resume RUN (see --list-presets)")
            }
        };
        if let Some(n) = &a.name {
            sets.push(format!("run.name={n}"));
        }
        match base {
            AnyConfig::Mlm(base) => {
                let cfg = base.with_overrides(&sets)?;
                cfg.validate()?;
                if a.dry_run {
                    print!("{}", cfg.to_toml());
                    return Ok(());
                }
                AnyTrainer::Mlm(Box::new(Trainer::create(cfg, &a.runs_dir)?))
            }
            AnyConfig::Diffusion(base) => {
                let cfg = base.with_overrides(&sets)?;
                cfg.validate()?;
                if a.dry_run {
                    print!("{}", cfg.to_toml());
                    return Ok(());
                }
                shard_threads(&cfg);
                AnyTrainer::Diffusion(Box::new(DiffusionTrainer::create(
                    cfg,
                    &a.runs_dir,
                    &mut |m| say_err(m),
                )?))
            }
        }
    };
    let stop = stop_on_signals()?;
    let tty = std::io::stderr().is_terminal();
    let total = trainer.total_steps();
    let bar = tty.then(|| {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
            )
            .expect("template"),
        );
        b
    });
    let mut on_event = |e: Event| match e {
        Event::Started {
            run,
            start_step,
            total_steps,
            train_sequences,
            val_sequences,
            parameters,
        } => {
            let line = format!(
                "run {} — step {start_step}/{total_steps}, {parameters} parameters, {train_sequences} train / {val_sequences} val sequences",
                run.path.display()
            );
            match &bar {
                Some(b) => {
                    b.set_position(start_step);
                    b.println(line);
                }
                None => say(&line),
            }
        }
        Event::Step(m) => match &bar {
            Some(b) => {
                b.set_position(m.step);
                b.set_message(match m.images_per_s {
                    Some(ips) => format!("loss {:.4} {ips:.1} img/s", m.loss.unwrap_or(f64::NAN)),
                    None => format!(
                        "loss {:.3} {:.0} tok/s",
                        m.loss.unwrap_or(f64::NAN),
                        m.tokens_per_s.unwrap_or(0.0)
                    ),
                });
                if m.eval_loss.is_some() {
                    b.println(plain_line(m, total));
                }
            }
            None => say(&plain_line(m, total)),
        },
        Event::Checkpoint(s) => {
            if let Some(b) = &bar {
                b.set_position(s);
            }
        }
        Event::Message(msg) => match &bar {
            Some(b) => b.println(msg),
            None => say(msg),
        },
    };
    let outcome = trainer.run(&stop, a.stop_at, &mut on_event)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let id = trainer.run_dir().path.display();
    match outcome {
        Outcome::Finished => say(&format!("finished: {id}")),
        Outcome::Stopped => say(&format!(
            "stopped: {id} (continue with: ssmlab train --resume {})",
            trainer.run_dir().id()
        )),
        Outcome::Diverged => bail!("run {id} diverged (see its log.txt)"),
    }
    Ok(())
}

/// One line of training progress on stdout. A write that fails (a pipe whose reader left, as
/// with `| head`; a terminal that hung up with the SSH session, EIO) is ignored: the run goes
/// on to its checkpoint, and `log.txt` keeps the record. `println!` would panic there.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let line = crate::text::sanitize_lines(line);
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}

/// [`say`] on stderr. Both pass the line through the one sanitiser (`text`).
fn say_err(line: &str) {
    use std::io::Write;
    let line = crate::text::sanitize_lines(line);
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub fn tokenizer(cmd: TokenizerCmd) -> anyhow::Result<()> {
    match cmd {
        TokenizerCmd::Train {
            corpus,
            vocab_size,
            out,
        } => {
            let docs = load_corpus(&corpus)?;
            let tok = train_wordpiece(&docs, vocab_size, &corpus)?;
            tok.save(&out)?;
            println!(
                "saved {} ({} tokens, trained on {} documents of {})",
                out.display(),
                tok.vocab_size(),
                docs.len(),
                corpus.display()
            );
            Ok(())
        }
    }
}
