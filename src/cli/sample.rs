//! `ssmlab sample`: images from a DiffuSSM checkpoint into a PNG grid (and the terminal).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::Args;
use rand::SeedableRng;

use crate::data::images::save_grid_png;
use crate::engine::diffusion::{SamplerKind, sample};
use crate::sample::{DiffusionModel, cas_of, request_classes};

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A diffusion run directory (latest checkpoint, or --step) or one step-N/ checkpoint.
    #[arg(long, default_value = "checkpoints/diffussm-fashion")]
    pub model: PathBuf,
    /// Checkpoint of a run directory.
    #[arg(long)]
    pub step: Option<u64>,
    /// Class of every image (default: cycle through all classes).
    #[arg(long)]
    pub class: Option<u32>,
    /// Number of images.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    /// Denoising steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance scale (1 = plain conditional).
    #[arg(long, default_value_t = 2.0)]
    pub guidance: f64,
    /// ddim (deterministic) or ddpm (ancestral).
    #[arg(long, default_value = "ddim")]
    pub sampler: SamplerKind,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    pub no_ema: bool,
    /// Output PNG (a grid; `--scale` enlarges it).
    #[arg(long, default_value = "samples.png")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub scale: usize,
    /// Also print the grid in the terminal (viuer: kitty / iTerm2 / sixel or half blocks).
    #[arg(long)]
    pub show: bool,
    /// Instead of a grid, score N class-balanced samples with the run's CAS classifier.
    #[arg(long, value_name = "N")]
    pub cas: Option<usize>,
}

pub fn run(a: SampleArgs) -> anyhow::Result<()> {
    ensure!(a.n > 0, "--n must be at least 1");
    ensure!(a.steps > 0, "--steps must be at least 1");
    let m = DiffusionModel::open(&a.model, a.step, !a.no_ema)?;
    m.check_class(a.class)?;
    let opts = m.options(a.sampler, a.steps, a.guidance, 0);
    let what = format!(
        "{} step {} ({} weights), {} {} steps, guidance {}",
        a.model.display(),
        m.step.map_or("-".into(), |s| s.to_string()),
        if m.ema { "EMA" } else { "raw" },
        a.sampler.name(),
        a.steps,
        a.guidance
    );
    let t0 = Instant::now();
    if let Some(n) = a.cas {
        let (score, per, test_acc) = cas_of(&m, n, &opts, a.seed)?;
        let per: Vec<String> = per
            .iter()
            .zip(&m.class_names)
            .map(|(p, c)| format!("{} {:.0}%", crate::text::sanitize(c), p * 100.0))
            .collect();
        println!(
            "{}",
            serde_json::json!({"cas": score, "samples": n, "classifier_test_accuracy": test_acc,
                "seconds": t0.elapsed().as_secs_f64(), "model": a.model.display().to_string(),
                "step": m.step, "ema": m.ema, "sampler": a.sampler.name(), "steps": a.steps,
                "guidance": a.guidance})
        );
        eprintln!(
            "CAS {:.1}% of {n} samples ({what}); classifier test accuracy {:.1}%\n{}",
            score * 100.0,
            test_acc * 100.0,
            per.join(", ")
        );
        return Ok(());
    }
    let classes = request_classes(a.class, a.n, m.model.cfg.num_classes);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let s = sample(
        &m.model,
        &m.sched,
        &classes,
        &opts,
        &mut rng,
        &mut |_, _| true,
    )?;
    let c = &m.model.cfg;
    let cols = if a.class.is_some() {
        (a.n as f64).sqrt().ceil() as usize
    } else {
        c.num_classes.min(a.n)
    };
    let rows = a.n.div_ceil(cols);
    let v = s.images.flatten_all()?.to_vec1::<f32>()?;
    save_grid_png(
        &a.out,
        &v,
        a.n,
        c.in_channels,
        c.image_height,
        c.image_width,
        rows,
        cols,
        a.scale,
    )?;
    eprintln!(
        "wrote {} ({} images, {rows}×{cols}) in {:.1} s: {what}",
        a.out.display(),
        a.n,
        t0.elapsed().as_secs_f64()
    );
    if a.show {
        let img = image::open(&a.out).with_context(|| format!("reading {}", a.out.display()))?;
        let conf = viuer::Config {
            absolute_offset: false,
            ..Default::default()
        };
        viuer::print(&img, &conf).context("printing the grid in the terminal")?;
    }
    Ok(())
}
