//! Reading SSM kernels from a checkpoint's weights: one [`KernelSource`] per model family,
//! computed by the engine's own kernel code.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::engine::bigs::{BIGS_DT_INIT, BigsConfig, BigsSsm};
use crate::engine::diffussm::DiffussmConfig;
use crate::engine::init::{a_init_full, a_init_half};
use crate::engine::s4d::BIGS_A_RE_MAX;
use crate::engine::ssm::{KernelMode, Ssm};
use crate::engine::weights::read_checkpoint;
use crate::runs::kernels::KernelRecord;
use crate::runs::model::{ModelFiles, model_checkpoints, resolve_model};

/// What BiGS does with its two directions.
pub const BIGS_GATE_NOTE: &str =
    "the fwd⊙bwd gate is input-dependent: SSM kernels, not an attention map";
/// What DiffuSSM does with its two directions.
pub const DIFFUSSM_GATE_NOTE: &str =
    "fwd and bwd outputs pass input-dependent gates: SSM kernels, not an attention map";

/// A model family whose SSM kernels can be read from its weights. Adding a family is one
/// implementation plus one arm in [`open_source`].
pub trait KernelSource {
    fn family(&self) -> &'static str;
    fn num_layers(&self) -> usize;
    /// Kernel length L the model uses (its maximum sequence length).
    fn kernel_len(&self) -> usize;
    fn width(&self) -> usize;
    fn shared(&self) -> bool;
    /// Both directions of layer `i`, length `len`, through the engine's kernel code.
    fn layer(&self, i: usize, len: usize) -> Result<LayerKernels>;
    fn init(&self) -> InitReference;
    /// The patch grid of an image model (None: a 1-D sequence model).
    fn image(&self) -> Option<ImageGrid> {
        None
    }
    /// Whether the weights read are EMA weights.
    fn ema(&self) -> bool {
        false
    }
    /// The weights file read.
    fn weights(&self) -> Option<&Path> {
        None
    }
    fn gate_note(&self) -> &'static str {
        BIGS_GATE_NOTE
    }
}

/// BiGS: per layer `fs4`/`bs4`, each one kernel shared by all channels.
pub struct BigsSource {
    pub cfg: BigsConfig,
    /// (forward, backward) SSM of every layer: the engine's own module.
    pub ssms: Vec<(BigsSsm, BigsSsm)>,
}

const BIGS_HINT: &str = "kernels need a BiGS checkpoint with \
    bigs.encoder.layer.N.{fs4,bs4}.kernel.{A_re,A_im,C,log_step}; pass a run directory, a step-N/ \
    checkpoint or a BiGS Hugging Face directory";

/// Tensor `name` of a checkpoint (`path`), which must have `shape`: a missing one is
/// `NoSsm` with `hint`, a mis-shaped one a shape mismatch naming it.
fn pick(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    name: &str,
    shape: &[usize],
    hint: &'static str,
) -> Result<Tensor> {
    let t = tensors.get(name).ok_or_else(|| KernelsError::NoSsm {
        path: path.into(),
        tensor: name.to_string(),
        hint,
    })?;
    if t.dims() != shape {
        return Err(EngineError::ShapeMismatch {
            path: path.into(),
            name: name.to_string(),
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        }
        .into());
    }
    Ok(t.clone())
}

/// The tensor names of one BiGS SSM.
fn bigs_names(layer: usize, dir: &str) -> [String; 5] {
    let p = format!("bigs.encoder.layer.{layer}.{dir}");
    [
        format!("{p}.kernel.A_re"),
        format!("{p}.kernel.A_im"),
        format!("{p}.kernel.C"),
        format!("{p}.kernel.log_step"),
        format!("{p}.D"),
    ]
}

impl BigsSource {
    /// Picks the SSM tensors of a checkpoint and builds each layer's `BigsSsm` from them.
    pub fn from_tensors(
        cfg: BigsConfig,
        tensors: &HashMap<String, Tensor>,
        path: &Path,
    ) -> Result<Self> {
        let n = cfg.num_ssm;
        let shapes: [Vec<usize>; 5] = [vec![n], vec![n], vec![n, 2], vec![1], vec![1]];
        let mut picked = HashMap::new();
        for layer in 0..cfg.num_hidden_layers {
            for dir in ["fs4", "bs4"] {
                for (name, shape) in bigs_names(layer, dir).into_iter().zip(&shapes) {
                    let t = pick(tensors, path, &name, shape, BIGS_HINT)?;
                    picked.insert(name, t);
                }
            }
        }
        // F32, as the model computes them (load_bigs / the probe use F32).
        let vb = VarBuilder::from_tensors(picked, DType::F32, &Device::Cpu);
        let layer = |i: usize, dir: &str| {
            BigsSsm::new(
                n,
                cfg.conv,
                vb.pp("bigs").pp("encoder").pp("layer").pp(i).pp(dir),
            )
        };
        let ssms = (0..cfg.num_hidden_layers)
            .map(|i| Ok((layer(i, "fs4")?, layer(i, "bs4")?)))
            .collect::<std::result::Result<Vec<_>, EngineError>>()?;
        Ok(Self { cfg, ssms })
    }

    fn ssm(s: &BigsSsm, len: usize) -> Result<SsmKernels> {
        let v = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.to_dtype(DType::F64)?.to_vec1()?) };
        let k = v(&s.kernel(len)?)?;
        let a_re = v(&s.a_re.minimum(BIGS_A_RE_MAX)?)?;
        let a_im = v(&s.a_im)?;
        let dt = v(&s.log_step.exp()?)?;
        Ok(SsmKernels {
            kernels: vec![k],
            dt,
            eig: a_re.into_iter().zip(a_im).collect(),
            d: v(&s.d)?,
        })
    }
}

impl KernelSource for BigsSource {
    fn family(&self) -> &'static str {
        "BiGS"
    }
    fn num_layers(&self) -> usize {
        self.ssms.len()
    }
    fn kernel_len(&self) -> usize {
        self.cfg.max_position_embeddings
    }
    fn width(&self) -> usize {
        self.cfg.hidden_size
    }
    fn shared(&self) -> bool {
        true
    }
    fn layer(&self, i: usize, len: usize) -> Result<LayerKernels> {
        let (f, b) = &self.ssms[i];
        Ok(LayerKernels {
            fwd: Self::ssm(f, len)?,
            bwd: Self::ssm(b, len)?,
        })
    }
    fn init(&self) -> InitReference {
        let (re, im) = a_init_full(self.cfg.ssm_init, self.cfg.num_ssm);
        let name = serde_json::to_value(self.cfg.ssm_init)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        InitReference {
            a_init: name,
            eig: re.into_iter().zip(im).collect(),
            dt_range: BIGS_DT_INIT,
        }
    }
}

const DIFFUSSM_HINT: &str = "kernels need a DiffuSSM checkpoint with \
    blocks.N.{ssm_fwd,ssm_bwd}.kernel.* and .D; pass a diffusion run directory or one of its \
    step-N/ checkpoints";

/// DiffuSSM: per block `ssm_fwd` (causal over the L = (H/p)(W/p) patch tokens in raster order)
/// and `ssm_bwd` (run on the flipped sequence, so anti-causal), each per-channel S4D
/// (`S4dSsm`, one kernel per channel) or one shared BiGS-style kernel, as the config says.
pub struct DiffussmSource {
    pub cfg: DiffussmConfig,
    /// (forward, backward) SSM of every block: the engine's own module.
    pub ssms: Vec<(Ssm, Ssm)>,
    /// The weights file read.
    pub weights: PathBuf,
    /// Whether those are the EMA weights.
    pub ema: bool,
}

/// (tensor name under `blocks.{i}.{dir}`, shape) of one DiffuSSM SSM.
fn diffussm_names(cfg: &DiffussmConfig) -> Vec<(&'static str, Vec<usize>)> {
    let (h, n) = (cfg.hidden_size, cfg.state_size);
    match cfg.kernel {
        KernelMode::PerChannel => vec![
            ("kernel.log_dt", vec![h]),
            ("kernel.log_A_real", vec![h, n / 2]),
            ("kernel.A_imag", vec![h, n / 2]),
            ("kernel.C", vec![h, n / 2, 2]),
            ("D", vec![h]),
        ],
        KernelMode::Shared => vec![
            ("kernel.A_re", vec![n]),
            ("kernel.A_im", vec![n]),
            ("kernel.C", vec![n, 2]),
            ("kernel.log_step", vec![1]),
            ("D", vec![1]),
        ],
    }
}

impl DiffussmSource {
    /// Picks the SSM tensors of a checkpoint (`weights`, EMA or not) and builds each block's
    /// `Ssm` pair from them, as `DiffussmBlock::new` does.
    pub fn from_tensors(
        cfg: DiffussmConfig,
        tensors: &HashMap<String, Tensor>,
        weights: &Path,
        ema: bool,
    ) -> Result<Self> {
        let mut picked = HashMap::new();
        for i in 0..cfg.num_layers {
            for dir in ["ssm_fwd", "ssm_bwd"] {
                for (leaf, shape) in diffussm_names(&cfg) {
                    let name = format!("blocks.{i}.{dir}.{leaf}");
                    let t = pick(tensors, weights, &name, &shape, DIFFUSSM_HINT)?;
                    picked.insert(name, t);
                }
            }
        }
        // F32, as the sampler and the trainer build the model.
        let vb = VarBuilder::from_tensors(picked, DType::F32, &Device::Cpu);
        let ssm = |i: usize, dir: &str| {
            Ssm::new(
                cfg.kernel,
                cfg.hidden_size,
                cfg.state_size,
                cfg.conv,
                vb.pp(format!("blocks.{i}")).pp(dir),
            )
        };
        let ssms = (0..cfg.num_layers)
            .map(|i| Ok((ssm(i, "ssm_fwd")?, ssm(i, "ssm_bwd")?)))
            .collect::<std::result::Result<Vec<_>, EngineError>>()?;
        Ok(Self {
            cfg,
            ssms,
            weights: weights.into(),
            ema,
        })
    }

    /// Reads a checkpoint: `ema.safetensors` beside `files.weights` when present, else the raw
    /// weights.
    pub fn open(files: &ModelFiles) -> Result<Self> {
        let cfg = DiffussmConfig::from_json_file(&files.config)?;
        let ema_path = files
            .weights
            .parent()
            .unwrap_or(Path::new("."))
            .join("ema.safetensors");
        let ema = ema_path.is_file();
        let weights = if ema { ema_path } else { files.weights.clone() };
        let tensors = read_checkpoint(&weights, &Device::Cpu)?;
        Self::from_tensors(cfg, &tensors, &weights, ema)
    }

    fn ssm(s: &Ssm, len: usize) -> Result<SsmKernels> {
        let v = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?)
        };
        let kernels: Vec<Vec<f64>> = s.kernel(len)?.to_dtype(DType::F64)?.to_vec2()?;
        match s {
            Ssm::PerChannel(p) => {
                // A as S4dSsm::kernel uses it: −exp(log_A_real) + i·A_imag (N/2 stored modes)
                let re = v(&p.log_a_real.exp()?.neg()?)?;
                let im = v(&p.a_imag)?;
                Ok(SsmKernels {
                    kernels,
                    dt: v(&p.log_dt.exp()?)?,
                    eig: re.into_iter().zip(im).collect(),
                    d: v(&p.d)?,
                })
            }
            Ssm::Shared(b) => Ok(SsmKernels {
                kernels,
                ..BigsSource::ssm(b, 1)?
            }),
        }
    }
}

impl KernelSource for DiffussmSource {
    fn family(&self) -> &'static str {
        "DiffuSSM"
    }
    fn num_layers(&self) -> usize {
        self.ssms.len()
    }
    fn kernel_len(&self) -> usize {
        self.cfg.seq_len()
    }
    fn width(&self) -> usize {
        self.cfg.hidden_size
    }
    fn shared(&self) -> bool {
        self.cfg.kernel == KernelMode::Shared
    }
    fn layer(&self, i: usize, len: usize) -> Result<LayerKernels> {
        let (f, b) = &self.ssms[i];
        Ok(LayerKernels {
            fwd: Self::ssm(f, len)?,
            bwd: Self::ssm(b, len)?,
        })
    }
    fn init(&self) -> InitReference {
        let c = &self.cfg;
        let ((re, im), dt_range) = match c.kernel {
            KernelMode::PerChannel => (a_init_half(c.ssm_init, c.state_size), (c.dt_min, c.dt_max)),
            // engine::diffussm::init_weights draws a shared kernel's log_step as BiGS does
            KernelMode::Shared => (a_init_full(c.ssm_init, c.state_size), BIGS_DT_INIT),
        };
        let name = serde_json::to_value(c.ssm_init)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        InitReference {
            a_init: name,
            eig: re.into_iter().zip(im).collect(),
            dt_range,
        }
    }
    fn image(&self) -> Option<ImageGrid> {
        Some(ImageGrid {
            height: self.cfg.image_height,
            width: self.cfg.image_width,
            patch: self.cfg.patch_size,
        })
    }
    fn ema(&self) -> bool {
        self.ema
    }
    fn weights(&self) -> Option<&Path> {
        Some(&self.weights)
    }
    fn gate_note(&self) -> &'static str {
        DIFFUSSM_GATE_NOTE
    }
}

/// The model family of a checkpoint, lower case: the config's `model_type` if it names one,
/// else the run's `config.toml` (`[run] model`) when the checkpoint belongs to a run, else the
/// shape of `config.json` (DiffuSSM's has the image size and patch), else "bigs".
pub fn detect_family(files: &ModelFiles) -> Result<String> {
    let text =
        crate::text::read_file(&files.config, crate::text::SMALL_FILE_MAX).map_err(|source| {
            EngineError::Io {
                path: files.config.clone(),
                err: source,
            }
        })?;
    let json = serde_json::from_str::<serde_json::Value>(&text).ok();
    if let Some(t) = json
        .as_ref()
        .and_then(|v| v.get("model_type"))
        .and_then(|m| m.as_str())
    {
        return Ok(t.to_ascii_lowercase());
    }
    let run_toml = files
        .weights
        .parent()
        .and_then(Path::parent)
        .map(|r| r.join("config.toml"))
        .filter(|p| p.is_file());
    if let Some(m) = run_toml.and_then(|p| crate::train::config::model_family(&p).ok()) {
        return Ok(m.to_ascii_lowercase());
    }
    let image = json
        .as_ref()
        .is_some_and(|v| v.get("image_height").is_some() && v.get("patch_size").is_some());
    let attention = json
        .as_ref()
        .is_some_and(|v| v.get("encoder").and_then(|e| e.as_str()) == Some("attention"));
    Ok(match (image, attention) {
        (true, true) => "dit",
        (true, false) => "diffussm",
        (false, _) => "bigs",
    }
    .into())
}

/// The kernel source of a checkpoint, by its family ([`detect_family`]).
pub fn open_source(files: &ModelFiles) -> Result<Box<dyn KernelSource>> {
    match detect_family(files)?.as_str() {
        "diffussm" => Ok(Box::new(DiffussmSource::open(files)?)),
        "bigs" => {
            let cfg = BigsConfig::from_json_file(&files.config)?;
            let tensors = read_checkpoint(&files.weights, &Device::Cpu)?;
            Ok(Box::new(BigsSource::from_tensors(
                cfg,
                &tensors,
                &files.weights,
            )?))
        }
        "bert" | "dit" => Err(KernelsError::Attention {
            path: files.config.clone(),
        }),
        other => Err(KernelsError::UnknownFamily {
            path: files.config.clone(),
            model_type: other.into(),
        }),
    }
}

/// Every layer's kernels of one checkpoint, at the model's own length.
pub fn load_kernels(files: &ModelFiles) -> Result<ModelKernels> {
    let src = open_source(files)?;
    let weights = src
        .weights()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| files.weights.clone());
    model_kernels(src.as_ref(), weights, files.step, false)
}

/// Every layer's kernels of a source, at the model's own length.
fn model_kernels(
    src: &dyn KernelSource,
    weights: PathBuf,
    step: Option<u64>,
    history: bool,
) -> Result<ModelKernels> {
    let len = src.kernel_len();
    let layers = (0..src.num_layers())
        .map(|i| src.layer(i, len))
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelKernels {
        family: src.family(),
        weights,
        ema: src.ema(),
        step,
        len,
        width: src.width(),
        shared: src.shared(),
        layers,
        init: src.init(),
        image: src.image(),
        gate_note: src.gate_note(),
        history,
    })
}

/// The model configuration a run's `kernels.jsonl` records are read with.
#[derive(Debug, Clone)]
pub enum HistoryModel {
    Bigs(BigsConfig),
    Diffussm(DiffussmConfig),
}

impl HistoryModel {
    /// The configuration of a run: its latest checkpoint's `config.json` when it has one, else
    /// the `[model]` of its `config.toml`. None: a family without SSM kernels (BERT).
    fn of_run(run: &Path, latest: Option<&ModelFiles>) -> Result<Option<Self>> {
        if let Some(f) = latest {
            return Ok(match detect_family(f)?.as_str() {
                "bigs" => Some(Self::Bigs(BigsConfig::from_json_file(&f.config)?)),
                "diffussm" => Some(Self::Diffussm(DiffussmConfig::from_json_file(&f.config)?)),
                _ => None,
            });
        }
        let toml = run.join("config.toml");
        let bad = |e: String| KernelsError::History {
            path: toml.clone(),
            msg: e,
        };
        let family = crate::train::config::model_family(&toml).map_err(|e| bad(e.to_string()))?;
        Ok(match family.to_ascii_lowercase().as_str() {
            "bigs" => Some(Self::Bigs(
                crate::train::config::RunConfig::from_toml_file(&toml)
                    .map_err(|e| bad(e.to_string()))?
                    .model,
            )),
            "diffussm" => Some(Self::Diffussm(
                crate::train::diffusion::DiffusionRunConfig::from_toml_file(&toml)
                    .map_err(|e| bad(e.to_string()))?
                    .model,
            )),
            _ => None,
        })
    }
}

/// One entry of a run's kernel history: a checkpoint, or a record of its `kernels.jsonl`.
#[derive(Debug, Clone)]
pub enum Snapshot {
    Checkpoint(ModelFiles),
    History {
        /// The `kernels.jsonl` read.
        path: PathBuf,
        model: HistoryModel,
        record: Box<KernelRecord>,
    },
}

impl Snapshot {
    pub fn step(&self) -> Option<u64> {
        match self {
            Snapshot::Checkpoint(f) => f.step,
            Snapshot::History { record, .. } => Some(record.step),
        }
    }

    /// What identifies the computed kernels for a cache: the weights file and its modification
    /// time, or the record's file, step and training time.
    pub fn cache_key(&self) -> String {
        match self {
            Snapshot::Checkpoint(f) => {
                let mtime = std::fs::metadata(&f.weights)
                    .and_then(|m| m.modified())
                    .ok();
                format!("{}\0{mtime:?}", f.weights.display())
            }
            Snapshot::History { path, record, .. } => format!(
                "{}\0{}\0{}",
                path.display(),
                record.step,
                record.wall_s.to_bits()
            ),
        }
    }
}

/// At most this many `kernels.jsonl` records enter a history (evenly spaced, the first and the
/// last always): one row each in the Evolution heatmap.
pub const MAX_HISTORY: usize = 96;

/// Indices of `n` items thinned to at most `max`, evenly spaced, first and last kept.
fn thin(n: usize, max: usize) -> Vec<usize> {
    if n <= max || max < 2 {
        return (0..n).collect();
    }
    let mut v: Vec<usize> = (0..max)
        .map(|i| (i * (n - 1) + (max - 1) / 2) / (max - 1))
        .collect();
    v.dedup();
    v
}

/// The kernel history of a model path, ascending by step: for a run directory, its checkpoints
/// and the records of its `kernels.jsonl` at the other steps (a checkpoint wins where both
/// exist; records thinned to [`MAX_HISTORY`]); for a checkpoint or HF directory, itself.
pub fn snapshots(path: &Path) -> Result<Vec<Snapshot>> {
    let run_dir = path.join("config.toml").is_file();
    let log = path.join(crate::runs::kernels::KERNELS_FILE);
    let checkpoints = match model_checkpoints(path) {
        Ok(c) => c,
        // a run with no checkpoint yet may already have its step-0 record
        Err(_) if run_dir && log.is_file() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut out: Vec<Snapshot> = checkpoints
        .iter()
        .cloned()
        .map(Snapshot::Checkpoint)
        .collect();
    if run_dir && log.is_file() {
        let records = crate::runs::kernels::read_kernels(&log)?;
        if let Some(model) = HistoryModel::of_run(path, checkpoints.last())? {
            let have: Vec<u64> = checkpoints.iter().filter_map(|f| f.step).collect();
            let records: Vec<KernelRecord> = records
                .into_iter()
                .filter(|r| !have.contains(&r.step))
                .collect();
            let keep = thin(records.len(), MAX_HISTORY);
            for (i, record) in records.into_iter().enumerate() {
                if keep.binary_search(&i).is_ok() {
                    out.push(Snapshot::History {
                        path: log.clone(),
                        model: model.clone(),
                        record: Box::new(record),
                    });
                }
            }
        }
    }
    if out.is_empty() {
        return Err(ModelDirError::Layout(path.into()).into());
    }
    out.sort_by_key(|s| s.step());
    Ok(out)
}

/// The kernels of one entry of a history.
pub fn load_snapshot(s: &Snapshot) -> Result<ModelKernels> {
    match s {
        Snapshot::Checkpoint(f) => load_kernels(f),
        Snapshot::History {
            path,
            model,
            record,
        } => {
            let dev = Device::Cpu;
            let tensors = record
                .tensors
                .iter()
                .map(|(name, t)| {
                    let v = Tensor::from_slice(&t.values, t.shape.as_slice(), &dev)?;
                    Ok((name.clone(), v))
                })
                .collect::<std::result::Result<HashMap<_, _>, candle_core::Error>>()?;
            let src: Box<dyn KernelSource> = match model {
                HistoryModel::Bigs(cfg) => {
                    Box::new(BigsSource::from_tensors(cfg.clone(), &tensors, path)?)
                }
                HistoryModel::Diffussm(cfg) => Box::new(DiffussmSource::from_tensors(
                    cfg.clone(),
                    &tensors,
                    path,
                    record.ema,
                )?),
            };
            model_kernels(src.as_ref(), path.clone(), Some(record.step), true)
        }
    }
}

/// The kernels of a model path (run dir: checkpoint `step` or the latest; step dir; HF dir).
pub fn load_model(path: &Path, step: Option<u64>) -> Result<ModelKernels> {
    load_kernels(&resolve_model(path, step)?)
}

/// The checkpoints a model path offers (see [`model_checkpoints`]).
pub fn checkpoints(path: &Path) -> Result<Vec<ModelFiles>> {
    Ok(model_checkpoints(path)?)
}
