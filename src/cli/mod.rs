//! The `ssmlab` command line (clap). Each subcommand lives in its own file; errors travel as
//! `anyhow` and are printed once by `main`.

use clap::{Parser, Subcommand};

mod bench;
mod train;

/// A terminal lab for attention-free deep learning (BiGS, DiffuSSM, S4D).
#[derive(Debug, Parser)]
#[command(name = "ssmlab", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Benchmarks, printed as JSON lines (one object per case) plus a table on stderr.
    Bench(bench::BenchArgs),
    /// Train a model into a run directory (headless; the TUI attaches to it).
    Train(train::TrainArgs),
    /// Tokenizer tools.
    #[command(subcommand)]
    Tokenizer(train::TokenizerCmd),
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Tokenizer(cmd)) => train::tokenizer(cmd),
        None => {
            anyhow::bail!("no subcommand given; see `ssmlab --help`")
        }
    }
}
