//! `ssmlab kernels`: the S4D kernels of a checkpoint, as a summary table, a PNG or a CSV.

use std::path::PathBuf;

use clap::Args;

use crate::kernels::export::{write_csv, write_png};
use crate::kernels::figure::overview;
use crate::kernels::{load_model, summary_table};

#[derive(Debug, Args)]
pub struct KernelsArgs {
    /// A run directory (latest checkpoint), a step-N checkpoint, or a Hugging Face BiGS folder.
    #[arg(long, default_value = "checkpoints/bigs-mobydick")]
    pub model: PathBuf,
    /// The run's checkpoint step-N to read (default: the latest).
    #[arg(long)]
    pub step: Option<u64>,
    /// Only this layer (0-based, as in the tensor names).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Write a plot (.png) or the kernel values (.csv) instead of the table.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: KernelsArgs) -> anyhow::Result<()> {
    // Check the output kind before the (possibly slow) load.
    let ext = a
        .out
        .as_ref()
        .map(|o| {
            o.extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    if let Some(o) = &a.out {
        anyhow::ensure!(
            ext == "png" || ext == "csv",
            "--out {}: the file name must end in .png (a plot) or .csv (the kernel values)",
            o.display()
        );
    }
    let mk = load_model(&a.model, a.step)?;
    if let Some(l) = a.layer {
        mk.check_layer(l)?;
    }
    match &a.out {
        None => print!("{}", summary_table(&mk, a.layer)),
        Some(o) => {
            if ext == "png" {
                write_png(&overview(&mk, a.layer), o)?;
            } else {
                write_csv(&mk, a.layer, o)?;
            }
            println!("wrote {}", o.display());
        }
    }
    Ok(())
}
