//! Sample grids of diffusion runs: the contract between the trainer / `ssmlab sample` (writers)
//! and the image view (reader).
//!
//! ```text
//! <run>/samples/step-N/          written by the trainer every `train.sample_every` steps
//! <run>/samples/now-<unix-ms>/   written by "sample now" in the image view
//!   meta.json                    SampleMeta (below)
//!   grid.png                     the final samples x_0, `rows × cols` tiles
//!   traj-TTTT.png                the same grid at diffusion time t (x_t), one file per kept t
//! ```
//! Each folder is written as `<name>.tmp/` and renamed when complete, so a reader never sees a
//! half-written grid. The trainer always samples with the same seed, classes and sampler, so
//! grids from different steps are comparable tile by tile.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Result, RunError};

/// One kept point of the denoising trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryFrame {
    /// Diffusion time step (T−1 = pure noise … 0 = last denoising step).
    pub t: u32,
    /// File name inside the sample folder.
    pub file: String,
}

/// `meta.json` of a sample folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleMeta {
    /// Training step of the weights that drew the samples.
    pub step: u64,
    /// Seed of the initial noise and of the sampler's noise.
    pub seed: u64,
    /// Requested class of each tile, row-major (None = unconditional).
    pub classes: Vec<Option<u32>>,
    /// Class names (index = class id), for captions.
    #[serde(default)]
    pub class_names: Vec<String>,
    pub rows: usize,
    pub cols: usize,
    /// Tile size in pixels and channels (1 = grey, 3 = RGB).
    pub tile_h: usize,
    pub tile_w: usize,
    pub channels: usize,
    /// `ddim` or `ddpm`.
    pub sampler: String,
    pub sampling_steps: usize,
    pub guidance: f64,
    /// Whether the EMA weights drew the samples.
    pub ema: bool,
    /// Final samples.
    pub grid: String,
    /// Kept trajectory frames, from noisy (large t) to clean (small t).
    pub trajectory: Vec<TrajectoryFrame>,
    /// Seconds the sampling took.
    #[serde(default)]
    pub seconds: f64,
}

/// A sample folder found in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSet {
    pub path: PathBuf,
    pub meta: SampleMeta,
    /// `true` for `samples/now-*` folders (drawn on demand, not by the trainer).
    pub manual: bool,
}

impl SampleSet {
    pub fn grid_path(&self) -> PathBuf {
        self.path.join(&self.meta.grid)
    }
}

pub fn samples_dir(run: &Path) -> PathBuf {
    run.join("samples")
}

/// Reads one sample folder's `meta.json`.
pub fn read_sample_set(dir: &Path) -> Result<SampleSet> {
    let p = dir.join("meta.json");
    let text =
        crate::text::read_file(&p, crate::text::SMALL_FILE_MAX).map_err(super::io_err(&p))?;
    let meta: SampleMeta = serde_json::from_str(&text).map_err(|e| RunError::Invalid {
        path: p.clone(),
        msg: e.to_string(),
    })?;
    let manual = dir
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("now-"));
    Ok(SampleSet {
        path: dir.into(),
        meta,
        manual,
    })
}

/// All complete sample folders of a run, trainer grids by step first, then manual ones by time.
/// Folders without a readable `meta.json` (being written, or damaged) are skipped.
pub fn list_sample_sets(run: &Path) -> Vec<SampleSet> {
    let Ok(rd) = std::fs::read_dir(samples_dir(run)) else {
        return Vec::new();
    };
    let mut out: Vec<(bool, u64, SampleSet)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = if let Some(n) = name.strip_prefix("step-") {
                (false, n.parse::<u64>().ok()?)
            } else if let Some(n) = name.strip_prefix("now-") {
                (true, n.parse::<u64>().ok()?)
            } else {
                return None;
            };
            let set = read_sample_set(&e.path()).ok()?;
            Some((key.0, key.1, set))
        })
        .collect();
    out.sort_by_key(|(manual, k, _)| (*manual, *k));
    out.into_iter().map(|(_, _, s)| s).collect()
}

/// Moves a completed `<dst>.tmp` folder into place (replacing an older `<dst>`).
pub fn publish(tmp: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        std::fs::remove_dir_all(dst).map_err(super::io_err(dst))?;
    }
    std::fs::rename(tmp, dst).map_err(super::io_err(dst))
}
