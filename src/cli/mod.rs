//! The `ssmlab` command line (clap). Each subcommand lives in its own file; errors travel as
//! `anyhow` and are printed once by `main`.

use clap::{Parser, Subcommand};

mod bench;

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
}

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Bench(args)) => bench::run(args),
        None => {
            anyhow::bail!("no subcommand given; see `ssmlab --help`")
        }
    }
}
