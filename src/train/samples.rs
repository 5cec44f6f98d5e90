//! Sample folders of a diffusion model: a fixed-seed grid (rows × classes) and its denoising
//! trajectory as PNGs with `meta.json`, published atomically (see [`crate::runs::samples`]).

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;

use crate::data::images::save_grid_png;
use crate::data::mlm::step_rng;
use crate::engine::diffusion::{NoiseSchedule, SampleOptions, sample};
use crate::engine::diffussm::Diffussm;
use crate::runs::RunError;
use crate::runs::samples::{SampleMeta, TrajectoryFrame, publish};
use crate::train::session::Result;

/// The random stream of sample grids (the same purpose as a diffusion run's training noise, at
/// stream `u64::MAX`, which no step reaches).
const RNG_NOISE: u64 = 12;

/// The class of each of `n` samples spread evenly over the classes (0, 1, …, C−1, 0, …).
pub fn balanced_classes(n: usize, classes: usize) -> Vec<Option<u32>> {
    (0..n).map(|i| Some((i % classes) as u32)).collect()
}

/// Draws a sample grid (rows × classes, class = column) and writes it as a sample folder:
/// `grid.png`, `traj-TTTT.png` and `meta.json`, published atomically at `dst`.
#[allow(clippy::too_many_arguments)]
pub fn write_sample_folder(
    model: &Diffussm,
    sched: &NoiseSchedule,
    dst: &Path,
    step: u64,
    classes: &[Option<u32>],
    cols: usize,
    opts: &SampleOptions,
    seed: u64,
    ema: bool,
    class_names: &[String],
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<SampleMeta> {
    let t0 = Instant::now();
    let mut rng = step_rng(seed, RNG_NOISE, u64::MAX);
    let s = sample(model, sched, classes, opts, &mut rng, progress)?;
    let c = &model.cfg;
    let (n, ch, h, w) = (classes.len(), c.in_channels, c.image_height, c.image_width);
    let rows = n.div_ceil(cols);
    let tmp = dst.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| RunError::Io {
        path: tmp.clone(),
        err: e,
    })?;
    let save = |name: &str, x: &Tensor| -> Result<()> {
        let v = x.flatten_all()?.to_vec1::<f32>()?;
        save_grid_png(&tmp.join(name), &v, n, ch, h, w, rows, cols, 1)?;
        Ok(())
    };
    save("grid.png", &s.images)?;
    let mut trajectory = Vec::new();
    for (t, x) in &s.trajectory {
        let file = format!("traj-{t:04}.png");
        // x_t is roughly N(0, 1) early on: show it scaled into [−1, 1] as it is.
        save(&file, &x.clamp(-1.0, 1.0)?)?;
        trajectory.push(TrajectoryFrame { t: *t as u32, file });
    }
    let meta = SampleMeta {
        step,
        seed,
        classes: classes.to_vec(),
        class_names: class_names.to_vec(),
        rows,
        cols,
        tile_h: h,
        tile_w: w,
        channels: ch,
        sampler: opts.sampler.name().into(),
        sampling_steps: opts.steps,
        guidance: opts.guidance,
        ema,
        grid: "grid.png".into(),
        trajectory,
        seconds: t0.elapsed().as_secs_f64(),
    };
    crate::runs::write_atomic(
        &tmp.join("meta.json"),
        crate::engine::serial::json_pretty(&meta).as_bytes(),
    )?;
    publish(&tmp, dst)?;
    Ok(meta)
}
