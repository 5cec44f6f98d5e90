//! What a model's kernels are, as data: per layer and direction, with the model's shape and
//! its initialisation as the reference.

use super::*;

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
    /// Read from the run's `kernels.jsonl` (a record written at an evaluation), not from a
    /// checkpoint; `weights` is then that file.
    pub history: bool,
}

impl ModelKernels {
    /// "step-2500" (a checkpoint), "step 500 (log)" (a `kernels.jsonl` record) or the weights
    /// file name.
    pub fn label(&self) -> String {
        match self.step {
            Some(s) if self.history => format!("step {s} (log)"),
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
