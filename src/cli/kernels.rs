//! `ssmlab kernels`: the S4D kernels of a checkpoint, as a summary table, a PNG or a CSV. For
//! image models (DiffuSSM) `--pixel R,C` makes the PNG the receptive field of that image pixel:
//! the kernels folded onto the patch grid (see `kernels::fold_receptive_field`).

use std::path::PathBuf;

use clap::Args;

use crate::kernels::export::{write_csv, write_png};
use crate::kernels::figure::{overview, receptive_overview};
use crate::kernels::{load_model, summary_table};

#[derive(Debug, Args)]
pub struct KernelsArgs {
    /// A run directory (latest checkpoint), a step-N checkpoint, or a Hugging Face BiGS folder;
    /// BiGS or DiffuSSM (DiffuSSM: the EMA weights when the checkpoint has them).
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
    /// Image models, with a .png --out: plot the receptive field of image pixel R,C (row,
    /// column, 0-based) on the patch grid, per layer, instead of the kernels over lags.
    #[arg(long, value_name = "R,C", value_parser = parse_pixel)]
    pub pixel: Option<(usize, usize)>,
    /// The channel of per-channel kernels that --pixel folds (default 0).
    #[arg(long, default_value_t = 0)]
    pub channel: usize,
}

fn parse_pixel(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{s}` is not a pixel: write ROW,COLUMN, e.g. 14,14");
    let (r, c) = s.split_once(',').ok_or_else(bad)?;
    Ok((
        r.trim().parse().map_err(|_| bad())?,
        c.trim().parse().map_err(|_| bad())?,
    ))
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
    anyhow::ensure!(
        a.pixel.is_none() || ext == "png",
        "--pixel draws the receptive field into a picture: add --out FILE.png"
    );
    let mk = load_model(&a.model, a.step)?;
    if let Some(l) = a.layer {
        mk.check_layer(l)?;
    }
    let patch = match (a.pixel, mk.image) {
        (None, _) => None,
        (Some(_), None) => anyhow::bail!(
            "--pixel: {} is a {} model over token sequences; the receptive field needs an \
             image model (DiffuSSM)",
            a.model.display(),
            mk.family
        ),
        (Some((r, c)), Some(g)) => {
            mk.check_channel(a.channel)?;
            Some(
                g.patch_of(r, c)
                    .map_err(|e| anyhow::anyhow!("--pixel: {e}"))?,
            )
        }
    };
    match &a.out {
        None => print!("{}", summary_table(&mk, a.layer)),
        Some(o) => {
            if let Some(p) = patch {
                write_png(&receptive_overview(&mk, a.layer, a.channel, p), o)?;
            } else if ext == "png" {
                write_png(&overview(&mk, a.layer), o)?;
            } else {
                write_csv(&mk, a.layer, o)?;
            }
            println!("wrote {}", o.display());
        }
    }
    Ok(())
}
