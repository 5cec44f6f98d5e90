//! What the state-space layers learned, from the weights alone. S4D kernels do not depend on
//! the input, so a checkpoint's kernels, Δt values and eigenvalues of A can be read off without
//! running the model. Everything here is UI-free: the TUI's Kernels view
//! (`tui/views/kernels.rs`) and `ssmlab kernels` (`cli/kernels.rs`) both draw from it.
//!
//! - Kernels are computed by the engine's own code (`engine::bigs::BigsSsm::kernel`, i.e.
//!   [`crate::engine::s4d::bigs_kernel`]; DiffuSSM's `engine::ssm::Ssm::kernel`, i.e.
//!   `S4dSsm::kernel` per channel; [`s4_channel_kernels`] wraps
//!   [`crate::engine::s4d::s4_kernel`] for per-channel models), never by a copy.
//! - A model family is one [`KernelSource`] implementation plus one arm in [`open_source`]:
//!   BiGS ([`BigsSource`]) and DiffuSSM ([`DiffussmSource`], EMA weights when the checkpoint has
//!   them).
//! - A forward and a backward kernel together are one response over signed offsets
//!   `d = t_out − t_in ∈ −(L−1)…L−1`: `d ≥ 0 → K_f[d]`, `d < 0 → K_b[−d]` ([`signed_response`]);
//!   for images it folds back onto the pixel grid ([`fold_receptive_field`]).
//!
//! BiGS multiplies the two directions' outputs through input-dependent projections, DiffuSSM
//! passes them through gated MLPs; neither is a fixed map, so only the kernels are shown (for
//! images also folded onto the patch grid: the SSM's linear response before the gates), never
//! a fake attention map.

pub mod export;
pub mod figure;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::engine::EngineError;
use crate::engine::bigs::{BIGS_DT_INIT, BigsConfig, BigsSsm};
use crate::engine::diffussm::DiffussmConfig;
use crate::engine::init::{a_init_full, a_init_half};
use crate::engine::s4d::{BIGS_A_RE_MAX, Discretization, s4_kernel};
use crate::engine::ssm::{KernelMode, Ssm};
use crate::engine::weights::read_checkpoint;
use crate::runs::model::{ModelDirError, ModelFiles, model_checkpoints, resolve_model};

#[derive(Debug, thiserror::Error)]
pub enum KernelsError {
    #[error(transparent)]
    Dir(#[from] ModelDirError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{path} has no SSM parameters (no tensor `{tensor}`): {hint}")]
    NoSsm {
        path: PathBuf,
        tensor: String,
        /// What the family expects and which paths to pass.
        hint: &'static str,
    },
    #[error(
        "layer {layer} is out of range: {path} has {layers} layers; pass a layer from 0 to {last}",
        last = .layers.saturating_sub(1)
    )]
    LayerRange {
        path: PathBuf,
        layer: usize,
        layers: usize,
    },
    #[error(
        "channel {channel} is out of range: {path} has {note}; pass a channel from 0 to {last}"
    )]
    ChannelRange {
        path: PathBuf,
        channel: usize,
        note: String,
        last: usize,
    },
    #[error(
        "{path}: model_type `{model_type}` has no kernel view (known: bigs, diffussm); \
         is this a BiGS or DiffuSSM config.json?"
    )]
    UnknownFamily { path: PathBuf, model_type: String },
    #[error(
        "{path}: an attention model (BERT baseline) has no SSM kernels; the kernel view is for \
         BiGS and DiffuSSM models"
    )]
    Attention { path: PathBuf },
}

impl From<candle_core::Error> for KernelsError {
    fn from(e: candle_core::Error) -> Self {
        KernelsError::Engine(e.into())
    }
}

pub type Result<T> = std::result::Result<T, KernelsError>;

/// Direction of one SSM of a bidirectional layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Causal: output t reads inputs t − lag.
    Forward,
    /// Anti-causal (run on the flipped sequence): output t reads inputs t + lag.
    Backward,
}

impl Direction {
    pub fn short(self) -> &'static str {
        match self {
            Direction::Forward => "fwd",
            Direction::Backward => "bwd",
        }
    }
}

/// The kernels of one SSM (one direction of one layer).
#[derive(Debug, Clone, PartialEq)]
pub struct SsmKernels {
    /// (channels, L): `K[c][lag]`, lag 0..L. BiGS: a single kernel shared by every channel.
    pub kernels: Vec<Vec<f64>>,
    /// Δt per channel (BiGS: one).
    pub dt: Vec<f64>,
    /// Eigenvalues of A as the kernel uses them (after clamping / parameterisation), all modes
    /// of all channels, as (Re, Im).
    pub eig: Vec<(f64, f64)>,
    /// Skip term D per channel (BiGS: one); not part of K.
    pub d: Vec<f64>,
}

impl SsmKernels {
    pub fn channels(&self) -> usize {
        self.kernels.len()
    }
    pub fn kernel(&self, channel: usize) -> &[f64] {
        &self.kernels[channel.min(self.kernels.len().saturating_sub(1))]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerKernels {
    pub fwd: SsmKernels,
    pub bwd: SsmKernels,
}

impl LayerKernels {
    pub fn get(&self, d: Direction) -> &SsmKernels {
        match d {
            Direction::Forward => &self.fwd,
            Direction::Backward => &self.bwd,
        }
    }
}

/// What the SSM parameters were initialised from (the config names the A init).
#[derive(Debug, Clone, PartialEq)]
pub struct InitReference {
    /// e.g. "hippo".
    pub a_init: String,
    /// The eigenvalues of A at initialisation, (Re, Im).
    pub eig: Vec<(f64, f64)>,
    /// Δt is drawn log-uniformly from this range.
    pub dt_range: (f64, f64),
}

/// The token grid of an image model: an H×W image cut into p×p patches, flattened in raster
/// order of patches into L = (H/p)(W/p) tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGrid {
    pub height: usize,
    pub width: usize,
    pub patch: usize,
}

impl ImageGrid {
    /// Patch rows H/p.
    pub fn rows(&self) -> usize {
        self.height / self.patch.max(1)
    }
    /// Patch columns W/p.
    pub fn cols(&self) -> usize {
        self.width / self.patch.max(1)
    }
    /// The patch holding image pixel (row, col), or an error naming the image size.
    pub fn patch_of(&self, row: usize, col: usize) -> std::result::Result<(usize, usize), String> {
        if row >= self.height || col >= self.width {
            return Err(format!(
                "pixel ({row}, {col}) is outside the {}×{} image (rows 0–{}, columns 0–{})",
                self.height,
                self.width,
                self.height.saturating_sub(1),
                self.width.saturating_sub(1)
            ));
        }
        Ok((row / self.patch.max(1), col / self.patch.max(1)))
    }
}

/// Every layer's kernels of one checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelKernels {
    /// "BiGS", "DiffuSSM".
    pub family: &'static str,
    /// The weights file read (for DiffuSSM `ema.safetensors` when the checkpoint has one).
    pub weights: PathBuf,
    /// Whether `weights` are EMA weights.
    pub ema: bool,
    pub step: Option<u64>,
    /// Kernel length L (lags 0..L).
    pub len: usize,
    /// Channels of the layer (the width the kernels act on).
    pub width: usize,
    /// Whether one kernel per direction is shared by all channels (BiGS) or each channel has its
    /// own.
    pub shared: bool,
    pub layers: Vec<LayerKernels>,
    pub init: InitReference,
    /// For image models: the patch grid the L tokens come from.
    pub image: Option<ImageGrid>,
    /// How the model combines the two directions (why no attention map is shown).
    pub gate_note: &'static str,
}

impl ModelKernels {
    /// "step-2500" or the weights file name.
    pub fn label(&self) -> String {
        match self.step {
            Some(s) => format!("step-{s}"),
            None => self
                .weights
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| self.weights.display().to_string()),
        }
    }

    /// An error naming the layer range if `layer` does not exist.
    pub fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.layers.len() {
            return Err(KernelsError::LayerRange {
                path: self.weights.clone(),
                layer,
                layers: self.layers.len(),
            });
        }
        Ok(())
    }

    /// An error naming the channel range if `channel` does not exist.
    pub fn check_channel(&self, channel: usize) -> Result<()> {
        let n = self.layers.first().map(|l| l.fwd.channels()).unwrap_or(1);
        if channel >= n {
            return Err(KernelsError::ChannelRange {
                path: self.weights.clone(),
                channel,
                note: self.channels_note(),
                last: n.saturating_sub(1),
            });
        }
        Ok(())
    }

    /// "EMA weights" / "raw weights" (DiffuSSM) or "" (models without EMA).
    pub fn weights_note(&self) -> &'static str {
        match (self.ema, self.image.is_some()) {
            (true, _) => "EMA weights",
            (false, true) => "raw weights (no ema.safetensors)",
            (false, false) => "",
        }
    }

    /// "one kernel per direction shared by 128 channels" / "128 channels, one kernel each".
    pub fn channels_note(&self) -> String {
        if self.shared {
            format!(
                "one kernel per direction, shared by {} channels",
                self.width
            )
        } else {
            format!("{} channels, one kernel each", self.width)
        }
    }
}

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
    let text = std::fs::read_to_string(&files.config).map_err(|source| EngineError::Io {
        path: files.config.clone(),
        source,
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
    Ok(if image { "diffussm" } else { "bigs" }.into())
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
        "bert" => Err(KernelsError::Attention {
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
    let len = src.kernel_len();
    let layers = (0..src.num_layers())
        .map(|i| src.layer(i, len))
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelKernels {
        family: src.family(),
        weights: src
            .weights()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| files.weights.clone()),
        ema: src.ema(),
        step: files.step,
        len,
        width: src.width(),
        shared: src.shared(),
        layers,
        init: src.init(),
        image: src.image(),
        gate_note: src.gate_note(),
    })
}

/// The kernels of a model path (run dir: checkpoint `step` or the latest; step dir; HF dir).
pub fn load_model(path: &Path, step: Option<u64>) -> Result<ModelKernels> {
    load_kernels(&resolve_model(path, step)?)
}

/// The checkpoints a model path offers (see [`model_checkpoints`]).
pub fn checkpoints(path: &Path) -> Result<Vec<ModelFiles>> {
    Ok(model_checkpoints(path)?)
}

/// Per-channel kernels of an s4-style SSM through the engine's [`s4_kernel`] (the kernel family
/// of per-channel models): `log_dt` (H), `a_re`, `a_im` (H, M) the real and imaginary parts of
/// A as the model uses them, `c` (H, M, 2), skip `d` (H).
pub fn s4_channel_kernels(
    log_dt: &Tensor,
    a_re: &Tensor,
    a_im: &Tensor,
    c: &Tensor,
    d: &Tensor,
    len: usize,
    disc: Discretization,
) -> Result<SsmKernels> {
    let k = s4_kernel(log_dt, a_re, a_im, c, len, disc)?;
    let f64v =
        |t: &Tensor| -> Result<Vec<f64>> { Ok(t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?) };
    let re = f64v(a_re)?;
    let im = f64v(a_im)?;
    Ok(SsmKernels {
        kernels: k.to_dtype(DType::F64)?.to_vec2()?,
        dt: f64v(&log_dt.exp()?)?,
        eig: re.into_iter().zip(im).collect(),
        d: f64v(d)?,
    })
}

/// The response over signed offsets `d = −(L−1)…L−1` (output position minus input position):
/// `d ≥ 0 → k_f[d]`, `d < 0 → k_b[−d]`. Returns (d, value) pairs, ascending in d.
pub fn signed_response(k_f: &[f64], k_b: &[f64]) -> Vec<(i64, f64)> {
    let back = (1..k_b.len()).rev().map(|j| (-(j as i64), k_b[j]));
    let fwd = k_f.iter().enumerate().map(|(j, v)| (j as i64, *v));
    back.chain(fwd).collect()
}

/// The lag after which `|k|` stays below `frac` of its maximum (the first lag of the quiet
/// tail); `None` when the kernel is still above that at the last lag (it outlasts L).
pub fn decay_lag(k: &[f64], frac: f64) -> Option<usize> {
    let max = k.iter().fold(0f64, |m, v| m.max(v.abs()));
    if max == 0.0 {
        return Some(0);
    }
    let last = k.iter().rposition(|v| v.abs() >= frac * max).unwrap_or(0);
    (last + 1 < k.len()).then_some(last + 1)
}

/// |DFT(k)| at frequencies `f/n_fft` cycles per step, `f = 0…n_fft/2`, with `k` zero-padded to
/// `n_fft` (≥ its length; realfft).
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "buffers come from the plan's own make_*_vec, so lengths always match"
)]
pub fn frequency_response(k: &[f64], n_fft: usize) -> Vec<f64> {
    let n = n_fft.max(k.len()).max(1);
    let mut planner = realfft::RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(n);
    let mut input = fft.make_input_vec();
    input[..k.len()].copy_from_slice(k);
    let mut out = fft.make_output_vec();
    fft.process(&mut input, &mut out)
        .expect("buffers come from the plan");
    out.iter().map(|c| c.norm()).collect()
}

/// A bidirectional 1-D kernel folded back onto an image flattened in raster order: the H×W map
/// (row-major) of how output pixel `(r, c)` responds to each input pixel `(r', c')`. With
/// `d = idx(r, c) − idx(r', c')`, `idx(r, c) = r·W + c`: `d ≥ 0 → k_f[d]`, `d < 0 → k_b[−d]`,
/// zero beyond a kernel's length.
pub fn fold_receptive_field(
    k_f: &[f64],
    k_b: &[f64],
    h: usize,
    w: usize,
    r: usize,
    c: usize,
) -> Vec<f64> {
    let here = (r * w + c) as i64;
    (0..h * w)
        .map(|src| {
            let d = here - src as i64;
            let v = if d >= 0 {
                k_f.get(d as usize)
            } else {
                k_b.get((-d) as usize)
            };
            v.copied().unwrap_or(0.0)
        })
        .collect()
}

/// (min, median, max) of values (NaN-free); None when empty.
pub fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    Some((v[0], med, v[n - 1]))
}

/// One row of the summary table: a layer's direction.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub layer: usize,
    pub direction: Direction,
    /// Per channel: lag where |K| falls below 1% of its max (None: beyond L). BiGS: one.
    pub decay: Vec<Option<usize>>,
    pub dt: (f64, f64, f64),
    /// |Re A| (min, median, max) over all modes.
    pub a_re: (f64, f64, f64),
    pub max_abs_k: f64,
}

/// The rows of `ssmlab kernels`' table (all layers, or one).
pub fn summary(mk: &ModelKernels, layer: Option<usize>) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for (i, l) in mk.layers.iter().enumerate() {
        if layer.is_some_and(|x| x != i) {
            continue;
        }
        for dir in [Direction::Forward, Direction::Backward] {
            let s = l.get(dir);
            let a: Vec<f64> = s.eig.iter().map(|e| e.0.abs()).collect();
            rows.push(SummaryRow {
                layer: i,
                direction: dir,
                decay: s.kernels.iter().map(|k| decay_lag(k, 0.01)).collect(),
                dt: spread(&s.dt).unwrap_or_default(),
                a_re: spread(&a).unwrap_or_default(),
                max_abs_k: s.kernels.iter().flatten().fold(0f64, |m, v| m.max(v.abs())),
            });
        }
    }
    rows
}

/// "37" or ">128" (never falls below 1% within L).
pub fn fmt_decay(d: Option<usize>, len: usize) -> String {
    match d {
        Some(d) => d.to_string(),
        None => format!(">{len}"),
    }
}

/// Decay lags of several channels as "min/med/max" (`>L` for a channel whose kernel outlasts
/// L; the median over all channels, counting those as L).
pub fn fmt_decay_spread(decay: &[Option<usize>], len: usize) -> String {
    let as_len: Vec<f64> = decay.iter().map(|d| d.unwrap_or(len) as f64).collect();
    let Some((lo, med, hi)) = spread(&as_len) else {
        return String::new();
    };
    let f = |v: f64| {
        if v >= len as f64 {
            format!(">{len}")
        } else {
            format!("{v:.0}")
        }
    };
    format!("{}/{}/{}", f(lo), f(med), f(hi))
}

/// The summary table as text (what `ssmlab kernels` prints without `--out`).
pub fn summary_table(mk: &ModelKernels, layer: Option<usize>) -> String {
    let weights = match mk.weights_note() {
        "" => String::new(),
        w => format!(" ({w})"),
    };
    let image = mk
        .image
        .map(|g| {
            format!(
                ", {}×{} image in {}×{} patches of {}² (raster order)",
                g.height,
                g.width,
                g.rows(),
                g.cols(),
                g.patch
            )
        })
        .unwrap_or_default();
    let mut s = format!(
        "{}: {} {}{weights}, {} layers × 2 directions, {}, L = {}{image}, A init {} (Δt init {}–{})\n",
        mk.weights.display(),
        mk.family,
        mk.label(),
        mk.layers.len(),
        mk.channels_note(),
        mk.len,
        mk.init.a_init,
        mk.init.dt_range.0,
        mk.init.dt_range.1,
    );
    let rows = summary(mk, layer);
    let per_channel = rows.iter().any(|r| r.decay.len() > 1);
    s += if per_channel {
        "decay lag: the lag after which |K| stays below 1% of its maximum; min/med/max over \
         channels, as are Δt and |A_re| over channels and modes\n"
    } else {
        "decay lag: the lag after which |K| stays below 1% of its maximum\n"
    };
    let decays: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.decay.len() == 1 {
                fmt_decay(r.decay[0], mk.len)
            } else {
                fmt_decay_spread(&r.decay, mk.len)
            }
        })
        .collect();
    let head = if per_channel {
        "decay min/med/max"
    } else {
        "decay lag"
    };
    let dw = decays
        .iter()
        .map(|d| d.chars().count())
        .chain([head.chars().count()])
        .max()
        .unwrap_or(10)
        .max(10);
    s += &format!(
        "{:>5} {:>4} {:>dw$} {:>9} {:>9} {:>9} {:>21} {:>9}\n",
        "layer", "dir", head, "Δt min", "Δt med", "Δt max", "|A_re| min/med/max", "max|K|"
    );
    for (r, decay) in rows.into_iter().zip(decays) {
        s += &format!(
            "{:>5} {:>4} {:>dw$} {:>9.4} {:>9.4} {:>9.4} {:>6.3}/{:>6.3}/{:>6.3} {:>9.4}\n",
            r.layer,
            r.direction.short(),
            decay,
            r.dt.0,
            r.dt.1,
            r.dt.2,
            r.a_re.0,
            r.a_re.1,
            r.a_re.2,
            r.max_abs_k
        );
    }
    s
}
