//! DiffuSSM (Yan, Gu, Rush 2023; `docs/models.md` §2): a class-conditional noise predictor whose
//! backbone is a stack of gated bidirectional SSM blocks with an hourglass MLP, conditioned
//! DiT-style (adaLN-Zero) on the timestep and the class.
//!
//! Shapes, for an image (B, C, H, W) with patch size p and hourglass ratio M:
//! - raster flattening into L = (H/p)(W/p) patch tokens of C·p² values; M consecutive tokens
//!   form one stream token, so the residual stream has length J = L/M and width D
//!   (`x_embedder`: M·C·p² → D; the literal reading of the paper's equations,
//!   `docs/models.md` §2(f).1);
//! - block: `U = σ(W↑ σ(W0 h))` back at length L (M up-maps in one matmul), `Y = [S4D_f(U);
//!   flip(S4D_b(flip U))]` (B, L, 2D), `I' = concat_m σ(W↓_m Y)` (B, J, 2D),
//!   `O = W3(σ(W2 I') ⊙ σ(W1 h))`, `x ← x + α ⊙ O` with `h = LN(x)(1 + γ) + β` and
//!   (β, γ, α) from `adaLN_modulation(SiLU(c))`;
//! - final layer: adaLN (shift, scale) and a linear map D → M·C·p² (ε only; no learned variance).
//!
//! Parameter names follow DiT (`x_embedder`, `t_embedder.mlp.{0,2}`, `y_embedder.embedding_table`,
//! `blocks.{i}.adaLN_modulation.1`, `final_layer.{linear,adaLN_modulation.1}`).

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::conv::{ConvPath, FUSED_PER_CHANNEL_DENSE_MAX_L, SHARED_DENSE_MAX_L};
use super::cpu::diffussm_block::{BlockSpec, DiffussmBlockOp};
use super::dit::DitBlock;
use super::error::{EngineError, Result};
use super::init::{AInit, a_init_full, a_init_half, normal, tensor_f64, uniform};
use super::memory;
use super::nn::{Activation, Linear, detached, linear, modulate};
use super::ssm::{KernelMode, Ssm};

/// Architecture of a DiffuSSM noise predictor (serialised into run configs and `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffussmConfig {
    pub image_height: usize,
    pub image_width: usize,
    pub in_channels: usize,
    /// Patch side p; 1 = the paper's unpatched setting.
    pub patch_size: usize,
    /// Width D of the residual stream.
    pub hidden_size: usize,
    pub num_layers: usize,
    /// Hourglass down-scale ratio M (tokens per stream position).
    pub hourglass: usize,
    /// Width of the fusion MLP (W1: D → F, W2: 2D → F, W3: F → D); the paper's cost formula
    /// implies F = 2D (`docs/models.md` §2(a), inferred).
    pub fusion_width: usize,
    /// State size N (per-channel kernels store N/2 conjugate modes; a shared kernel N modes).
    pub state_size: usize,
    pub kernel: KernelMode,
    pub ssm_init: AInit,
    /// Δt range of the per-channel kernels (log-uniform).
    pub dt_min: f64,
    pub dt_max: f64,
    /// σ of the block (unspecified in the paper).
    pub activation: Activation,
    /// Classes; the label table has one extra row, the null class of classifier-free guidance.
    pub num_classes: usize,
    /// Size of the sinusoidal timestep features.
    pub frequency_size: usize,
    #[serde(default)]
    pub conv: ConvPath,
    /// Fixed positional embedding added to the stream tokens (open in the paper,
    /// `docs/models.md` §2(f).4; DiT adds 2-D sin-cos). Runs written before this field existed
    /// have none.
    #[serde(default)]
    pub pos_embed: PosEmbed,
    /// Initialisation of the conditioning (timestep MLP and label table).
    #[serde(default)]
    pub cond_init: CondInit,
    /// What mixes the stream tokens: the gated bidirectional SSM block (DiffuSSM), or its
    /// attention twin, a DiT block ([`super::dit`]). With `attention`, `fusion_width` is the
    /// width of the block's MLP and the SSM fields are unused.
    #[serde(default)]
    pub encoder: DiffusionEncoder,
    /// Attention heads of a DiT block (`encoder = "attention"`; must divide hidden_size).
    #[serde(default)]
    pub num_heads: usize,
}

/// The token mixer of a diffusion backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffusionEncoder {
    /// DiffuSSM's gated bidirectional SSM block with its hourglass MLP.
    #[default]
    Ssm,
    /// DiT's block: multi-head self-attention and an MLP, both adaLN-Zero gated.
    Attention,
}

/// How the conditioning embeddings start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CondInit {
    /// DiT: N(0, 0.02) for the timestep MLP and the label table. With the zero-initialised
    /// modulations this makes the conditioning vector tiny at first, and the class is picked up
    /// slowly (hundreds of thousands of steps in DiT's budget).
    #[default]
    Dit,
    /// Xavier-uniform timestep MLP and an N(0, 1) label table: the conditioning vector is of
    /// order one from the first step, so the modulations see the timestep and the class at once.
    Unit,
}

/// Positional embedding of the stream tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PosEmbed {
    /// None: the SSMs are the only source of position.
    #[default]
    None,
    /// DiT's fixed 2-D sin-cos table over the patch grid (not a parameter).
    Sincos2d,
}

impl Default for DiffussmConfig {
    fn default() -> Self {
        Self {
            image_height: 28,
            image_width: 28,
            in_channels: 1,
            patch_size: 1,
            hidden_size: 64,
            num_layers: 4,
            hourglass: 2,
            fusion_width: 128,
            state_size: 64,
            kernel: KernelMode::PerChannel,
            ssm_init: AInit::Lin,
            dt_min: 1e-3,
            dt_max: 1e-1,
            activation: Activation::GeluTanh,
            num_classes: 10,
            frequency_size: 256,
            conv: ConvPath::Auto,
            pos_embed: PosEmbed::None,
            cond_init: CondInit::Dit,
            encoder: DiffusionEncoder::Ssm,
            num_heads: 0,
        }
    }
}

impl DiffussmConfig {
    /// Patch tokens L = (H/p)(W/p).
    pub fn seq_len(&self) -> usize {
        (self.image_height / self.patch_size) * (self.image_width / self.patch_size)
    }

    /// Stream positions J = L/M.
    pub fn stream_len(&self) -> usize {
        self.seq_len() / self.hourglass
    }

    /// Values per stream token, M·C·p².
    pub fn token_values(&self) -> usize {
        self.hourglass * self.in_channels * self.patch_size * self.patch_size
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, msg: String| Err(EngineError::ConfigField { field, msg });
        for (f, v) in [
            ("image_height", self.image_height),
            ("image_width", self.image_width),
            ("in_channels", self.in_channels),
            ("patch_size", self.patch_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("hourglass", self.hourglass),
            ("fusion_width", self.fusion_width),
            ("state_size", self.state_size),
            ("num_classes", self.num_classes),
            ("frequency_size", self.frequency_size),
        ] {
            if v == 0 {
                return bad(f, "must be at least 1".into());
            }
        }
        // Before any size is multiplied out: the arithmetic, and whether it fits.
        self.check_memory(1, false)?;
        let p = self.patch_size;
        if !self.image_height.is_multiple_of(p) || !self.image_width.is_multiple_of(p) {
            return bad(
                "patch_size",
                format!(
                    "{p} does not divide the image size {}×{}",
                    self.image_height, self.image_width
                ),
            );
        }
        if !self.seq_len().is_multiple_of(self.hourglass) {
            return bad(
                "hourglass",
                format!(
                    "M = {} does not divide the {} patch tokens",
                    self.hourglass,
                    self.seq_len()
                ),
            );
        }
        if !(2 * self.hidden_size).is_multiple_of(self.hourglass) {
            return bad(
                "hourglass",
                format!(
                    "M = {} must divide 2·hidden_size = {} (the down-maps are 2D → 2D/M)",
                    self.hourglass,
                    2 * self.hidden_size
                ),
            );
        }
        if self.kernel == KernelMode::PerChannel && !self.state_size.is_multiple_of(2) {
            return bad(
                "state_size",
                "per-channel kernels store N/2 conjugate modes: N must be even".into(),
            );
        }
        if self.encoder == DiffusionEncoder::Attention
            && (self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads))
        {
            return bad(
                "num_heads",
                format!(
                    "encoder = \"attention\" needs num_heads ≥ 1 dividing hidden_size = {}, got {}",
                    self.hidden_size, self.num_heads
                ),
            );
        }
        if !self.frequency_size.is_multiple_of(2) {
            return bad("frequency_size", "must be even ([cos, sin] halves)".into());
        }
        if self.pos_embed == PosEmbed::Sincos2d && !self.hidden_size.is_multiple_of(4) {
            return bad(
                "hidden_size",
                format!(
                    "pos_embed = \"sincos2d\" needs hidden_size divisible by 4, got {}",
                    self.hidden_size
                ),
            );
        }
        if !(self.dt_min > 0.0 && self.dt_min <= self.dt_max && self.dt_max.is_finite()) {
            return bad(
                "dt_min",
                format!(
                    "dt_min = {} and dt_max = {}: need 0 < dt_min ≤ dt_max (finite; equal \
                     fixes Δt)",
                    self.dt_min, self.dt_max
                ),
            );
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        crate::engine::serial::json_pretty(self)
    }

    /// A lower bound on the memory of this model on `batch` images: weights (four times over
    /// when `training`), the SSM kernels of every layer, and the activations the blocks keep
    /// (training: every block's; inference: one block's). Checked arithmetic throughout.
    pub fn memory(&self, batch: usize, training: bool) -> memory::Bytes {
        use memory::Bytes;
        let (h, l) = (self.hidden_size, self.num_layers);
        let pixels = Bytes::f32s(&[self.image_height, self.image_width, self.in_channels]);
        // L ≤ H·W tokens; with the patch size: (H/p)(W/p) (p ≥ 1, checked non-zero before).
        // Saturating: an overflow shows up as an estimate too large to fit.
        let tokens = (self.image_height / self.patch_size.max(1))
            .saturating_mul(self.image_width / self.patch_size.max(1));
        let block = Bytes::f32s(&[2, h, self.fusion_width]).plus(Bytes::f32s(&[3, h, h]));
        let weights = block
            .times(l)
            .plus(Bytes::f32s(&[self.num_classes, h]))
            .plus(Bytes::f32s(&[self.frequency_size, h]));
        let kernels = Bytes::f32s(&[l, 2, h, tokens]);
        let mut act = Bytes::f32s(&[batch, tokens, 2 * h])
            .plus(pixels.times(batch))
            .plus(Bytes::f32s(&[batch, tokens, self.state_size.min(2 * h)]));
        if self.encoder == DiffusionEncoder::Attention {
            // the attention weights of every head, (B, heads, J, J)
            let j = tokens / self.hourglass.max(1);
            act = act.plus(Bytes::f32s(&[batch, self.num_heads.max(1), j, j]));
        }
        if training {
            weights.times(4).plus(kernels).plus(act.times(l))
        } else {
            weights.plus(kernels).plus(act)
        }
    }

    /// Refuses (naming the fields) a model that [`Self::memory`] says does not fit.
    pub fn check_memory(&self, batch: usize, training: bool) -> Result<()> {
        let mut fields = vec![
            ("image_height", self.image_height),
            ("image_width", self.image_width),
            ("patch_size", self.patch_size),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("fusion_width", self.fusion_width),
        ];
        let what = if training {
            fields.push(("batch_size", batch));
            "training this model"
        } else if batch > 1 {
            fields.push(("images", batch));
            "sampling these images"
        } else {
            "this model"
        };
        memory::check(what, self.memory(batch, training), &fields)
    }

    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        let text = crate::text::read_file(path, crate::text::SMALL_FILE_MAX).map_err(|e| {
            EngineError::Io {
                path: path.into(),
                err: e,
            }
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| EngineError::Config {
            path: path.into(),
            msg: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Multiply-accumulates of one forward pass for one image (matmuls, the convolutions at
    /// 2·L·log₂(2L)·channels per FFT direction counted as the paper does, attention's scores
    /// and weighted sums; elementwise ops excluded).
    pub fn macs_per_image(&self) -> f64 {
        let (l, j, d, f) = (
            self.seq_len() as f64,
            self.stream_len() as f64,
            self.hidden_size as f64,
            self.fusion_width as f64,
        );
        let block = j * d * d // W0
            + l * d * d // up-maps
            + l * 2.0 * d * (2.0 * d / self.hourglass as f64) // down-maps
            + j * d * f + j * 2.0 * d * f + j * f * d // W1, W2, W3
            + 2.0 * 2.0 * l * (2.0 * l).log2() * d; // two FFT convolutions
        let io = j * self.token_values() as f64 * d * 2.0;
        let block = match self.encoder {
            DiffusionEncoder::Ssm => block,
            DiffusionEncoder::Attention => {
                super::dit::block_macs(self.hidden_size, self.fusion_width, self.stream_len())
            }
        };
        self.num_layers as f64 * block + io
    }
}

/// DiT's 2-D sin-cos positional table (J, D) for the stream tokens: stream token j sits at the
/// patch-grid row and column of its first patch (jM); the first D/2 features encode the row,
/// the rest the column, each as `[sin(pos·ω_i), cos(pos·ω_i)]` with `ω_i = 10000^(−i/(D/4))`.
pub fn sincos_2d(cfg: &DiffussmConfig, dtype: DType, dev: &Device) -> Result<Tensor> {
    let (d, m) = (cfg.hidden_size, cfg.hourglass);
    let cols = cfg.image_width / cfg.patch_size;
    let quarter = d / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64))
        .collect();
    let mut v = Vec::with_capacity(cfg.stream_len() * d);
    for j in 0..cfg.stream_len() {
        for pos in [(j * m / cols) as f64, (j * m % cols) as f64] {
            v.extend(omega.iter().map(|w| (pos * w).sin()));
            v.extend(omega.iter().map(|w| (pos * w).cos()));
        }
    }
    tensor_f64(v, (cfg.stream_len(), d), dtype, dev)
}

/// Sinusoidal features of the timesteps (B) → (B, size): `[cos(t·f_i), sin(t·f_i)]` with
/// `f_i = 10000^(−i/half)` (DiT's `timestep_embedding`).
pub fn timestep_features(t: &[f64], size: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let half = size / 2;
    let mut v = Vec::with_capacity(t.len() * size);
    for &ti in t {
        let freqs = (0..half).map(|i| (-(10000f64.ln()) * i as f64 / half as f64).exp());
        let args: Vec<f64> = freqs.map(|f| ti * f).collect();
        v.extend(args.iter().map(|a| a.cos()));
        v.extend(args.iter().map(|a| a.sin()));
    }
    tensor_f64(v, (t.len(), size), dtype, dev)
}

fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::silu(x)?)
}

/// One DiffuSSM block with its adaLN-Zero modulation.
#[derive(Debug, Clone)]
pub struct DiffussmBlock {
    ada: Linear,
    w0: Linear,
    up: Linear,
    pub ssm_fwd: Ssm,
    pub ssm_bwd: Ssm,
    /// Down-maps, (M, 2D/M, 2D) and (M, 2D/M).
    down_w: Tensor,
    down_b: Tensor,
    w1: Linear,
    w2: Linear,
    w3: Linear,
    act: Activation,
    m: usize,
    /// Set by [`Diffussm::for_sampling`]: the packed parameters and both SSM kernels, detached
    /// and computed once (they do not depend on the input or the timestep).
    frozen: Option<Frozen>,
}

/// What a block's fused node takes besides the input and the modulations, precomputed.
#[derive(Debug, Clone)]
struct Frozen {
    /// The sequence length the kernels were computed for.
    l: usize,
    params: Tensor,
    /// K_f and K_b with the skip in tap 0, flat (2·rows·L).
    kernels: Tensor,
}

impl DiffussmBlock {
    pub fn new(cfg: &DiffussmConfig, vb: VarBuilder) -> Result<Self> {
        let (d, m, f) = (cfg.hidden_size, cfg.hourglass, cfg.fusion_width);
        let ssm = |name: &str| Ssm::new(cfg.kernel, d, cfg.state_size, cfg.conv, vb.pp(name));
        Ok(Self {
            ada: linear(d, 3 * d, vb.pp("adaLN_modulation.1"))?,
            w0: linear(d, d, vb.pp("w0"))?,
            up: linear(d, m * d, vb.pp("up"))?,
            ssm_fwd: ssm("ssm_fwd")?,
            ssm_bwd: ssm("ssm_bwd")?,
            down_w: vb.get((m, 2 * d / m, 2 * d), "down.weight")?,
            down_b: vb.get((m, 2 * d / m), "down.bias")?,
            w1: linear(d, f, vb.pp("w1"))?,
            w2: linear(2 * d, f, vb.pp("w2"))?,
            w3: linear(f, d, vb.pp("w3"))?,
            act: cfg.activation,
            m,
            frozen: None,
        })
    }

    /// The parameters of the fused node, flat in [`super::cpu::diffussm_block::PARAMS`] order.
    fn packed_params(&self) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(12);
        for lin in [&self.w0, &self.up] {
            parts.push(lin.weight.flatten_all()?);
            parts.push(lin.bias()?.clone());
        }
        parts.push(self.down_w.flatten_all()?);
        parts.push(self.down_b.flatten_all()?);
        for lin in [&self.w1, &self.w2, &self.w3] {
            parts.push(lin.weight.flatten_all()?);
            parts.push(lin.bias()?.clone());
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Both kernels with the skip in tap 0, flat, and their row count (D or 1).
    fn packed_kernels(&self, l: usize) -> Result<(Tensor, usize)> {
        let kf = self.ssm_fwd.skip_kernel(l)?;
        let kb = self.ssm_bwd.skip_kernel(l)?;
        let ck = kf.dim(0)?;
        Ok((Tensor::cat(&[kf.flatten_all()?, kb.flatten_all()?], 0)?, ck))
    }

    /// This block on detached weights, with its packed parameters and kernels at length `l`
    /// computed once.
    fn frozen(&self, l: usize) -> Result<Self> {
        let mut b = Self {
            ada: detached(&self.ada),
            w0: detached(&self.w0),
            up: detached(&self.up),
            down_w: self.down_w.detach(),
            down_b: self.down_b.detach(),
            w1: detached(&self.w1),
            w2: detached(&self.w2),
            w3: detached(&self.w3),
            frozen: None,
            ..self.clone()
        };
        let (kernels, _) = self.packed_kernels(l)?;
        b.frozen = Some(Frozen {
            l,
            params: b.packed_params()?,
            kernels: kernels.detach(),
        });
        Ok(b)
    }

    /// x (B, J, D), c (B, D) → (B, J, D): one fused node on the CPU (f32/f64,
    /// [`super::cpu::diffussm_block`]), candle ops elsewhere.
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        if super::cpu::enabled()
            && x.device().is_cpu()
            && matches!(x.dtype(), DType::F32 | DType::F64)
        {
            return self.forward_fused(x, c);
        }
        self.forward_ops(x, c)
    }

    /// The block as one autograd node with a hand-written backward.
    pub fn forward_fused(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let (b, j, d) = x.dims3()?;
        let l = j * self.m;
        let mods = self.ada.forward(&silu(c)?)?; // (B, 3D): shift, scale, gate
        let (p, k, ck) = match &self.frozen {
            Some(f) if f.l == l => (
                f.params.clone(),
                f.kernels.clone(),
                f.kernels.elem_count() / (2 * l),
            ),
            _ => {
                let (k, ck) = self.packed_kernels(l)?;
                (self.packed_params()?, k, ck)
            }
        };
        let e = Tensor::cat(&[k, mods.flatten_all()?], 0)?;
        let spec = BlockSpec {
            batch: b,
            stream: j,
            m: self.m,
            d,
            f: self.w1.weight.dim(0)?,
            ck,
            act: self.act,
            dense: match self.ssm_fwd.conv_path() {
                ConvPath::Auto if ck == 1 => l <= SHARED_DENSE_MAX_L,
                ConvPath::Auto => l <= FUSED_PER_CHANNEL_DENSE_MAX_L,
                p => p == ConvPath::Dense,
            },
        };
        let y =
            x.reshape((b * j, d))?
                .contiguous()?
                .apply_op3(&p, &e, DiffussmBlockOp::new(spec))?;
        Ok(y.reshape((b, j, d))?)
    }

    /// The block from candle ops: the path on other devices, and the reference the fused
    /// block is tested against.
    pub fn forward_ops(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        let (b, j, d) = x.dims3()?;
        let m = self.m;
        let act = |t: &Tensor| self.act.apply(t);
        let mods = self.ada.forward(&silu(c)?)?.chunk(3, 1)?;
        let h = modulate(x, &mods[0], &mods[1])?;
        let a = act(&self.w0.forward(&h)?)?;
        // l = j·M + m: the M up-maps of stream token j fill tokens jM … jM+M−1.
        let u = act(&self.up.forward(&a)?)?.reshape((b, j * m, d))?;
        let yf = self.ssm_fwd.forward(&u)?;
        let yb = self.ssm_bwd.forward(&u.flip(&[1])?)?.flip(&[1])?;
        let y = Tensor::cat(&[yf, yb], 2)?; // (B, L, 2D)
        let y = y
            .reshape((b * j, m, 2 * d))?
            .transpose(0, 1)?
            .contiguous()?; // (M, BJ, 2D)
        let z = y
            .matmul(&self.down_w.transpose(1, 2)?)?
            .broadcast_add(&self.down_b.unsqueeze(1)?)?; // (M, BJ, 2D/M)
        let z = act(&z)?.transpose(0, 1)?.reshape((b, j, 2 * d))?;
        let o = (act(&self.w2.forward(&z)?)? * act(&self.w1.forward(&h)?)?)?;
        let o = self.w3.forward(&o)?;
        Ok((x + o.broadcast_mul(&mods[2].unsqueeze(1)?)?)?)
    }
}

/// A block of the backbone: DiffuSSM's or its attention twin.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a handful per model
pub enum Block {
    Ssm(DiffussmBlock),
    Attention(DitBlock),
}

impl Block {
    /// x (B, J, D), c (B, D) → (B, J, D).
    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
        match self {
            Block::Ssm(b) => b.forward(x, c),
            Block::Attention(b) => b.forward(x, c),
        }
    }

    /// The SSM block, if this is one.
    pub fn ssm(&self) -> Option<&DiffussmBlock> {
        match self {
            Block::Ssm(b) => Some(b),
            Block::Attention(_) => None,
        }
    }
}

/// The DiffuSSM noise predictor (or, with `encoder = "attention"`, its DiT twin).
#[derive(Debug, Clone)]
pub struct Diffussm {
    pub cfg: DiffussmConfig,
    x_embedder: Linear,
    t_mlp0: Linear,
    t_mlp2: Linear,
    y_table: Tensor,
    pub blocks: Vec<Block>,
    final_ada: Linear,
    final_linear: Linear,
    /// Fixed (J, D) positional table, when `pos_embed` asks for one.
    pos: Option<Tensor>,
}

impl Diffussm {
    pub fn new(cfg: &DiffussmConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let vb = vb.pp(format!("blocks.{i}"));
                Ok(match cfg.encoder {
                    DiffusionEncoder::Ssm => Block::Ssm(DiffussmBlock::new(cfg, vb)?),
                    DiffusionEncoder::Attention => {
                        Block::Attention(DitBlock::new(d, cfg.num_heads, cfg.fusion_width, vb)?)
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            x_embedder: linear(cfg.token_values(), d, vb.pp("x_embedder"))?,
            t_mlp0: linear(cfg.frequency_size, d, vb.pp("t_embedder.mlp.0"))?,
            t_mlp2: linear(d, d, vb.pp("t_embedder.mlp.2"))?,
            y_table: vb.get((cfg.num_classes + 1, d), "y_embedder.embedding_table")?,
            blocks,
            final_ada: linear(d, 2 * d, vb.pp("final_layer.adaLN_modulation.1"))?,
            final_linear: linear(d, cfg.token_values(), vb.pp("final_layer.linear"))?,
            pos: match cfg.pos_embed {
                PosEmbed::None => None,
                PosEmbed::Sincos2d => Some(sincos_2d(cfg, vb.dtype(), vb.device())?),
            },
        })
    }

    pub fn device(&self) -> &Device {
        self.y_table.device()
    }

    /// The same model for sampling: detached weights (no autograd graph is recorded) and, in
    /// each block, the packed parameters and the SSM kernels computed once instead of at every
    /// denoising step. Outputs are bitwise those of `self`.
    pub fn for_sampling(&self) -> Result<Self> {
        let l = self.cfg.seq_len();
        Ok(Self {
            cfg: self.cfg.clone(),
            x_embedder: detached(&self.x_embedder),
            t_mlp0: detached(&self.t_mlp0),
            t_mlp2: detached(&self.t_mlp2),
            y_table: self.y_table.detach(),
            blocks: self
                .blocks
                .iter()
                .map(|b| {
                    Ok(match b {
                        Block::Ssm(b) => Block::Ssm(b.frozen(l)?),
                        Block::Attention(b) => Block::Attention(b.detached()),
                    })
                })
                .collect::<Result<_>>()?,
            final_ada: detached(&self.final_ada),
            final_linear: detached(&self.final_linear),
            pos: self.pos.clone(),
        })
    }

    /// The null class of classifier-free guidance.
    pub fn null_class(&self) -> u32 {
        self.cfg.num_classes as u32
    }

    /// (B, C, H, W) → (B, J, M·C·p²) in raster order of patches.
    pub fn tokens(&self, x: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let (b, ch, h, w) = x.dims4()?;
        if (ch, h, w) != (c.in_channels, c.image_height, c.image_width) {
            return Err(EngineError::Input(format!(
                "DiffuSSM expects images of {}×{}×{} (C×H×W), got {ch}×{h}×{w}",
                c.in_channels, c.image_height, c.image_width
            )));
        }
        let p = c.patch_size;
        let t = if p == 1 {
            x.permute((0, 2, 3, 1))?
        } else {
            // (B, C, H/p, p, W/p, p) → (B, H/p, W/p, C, p, p), in two moves (rank ≤ 5 each).
            let t = x
                .reshape((b, ch * (h / p), p, w / p, p))?
                .permute((0, 1, 3, 2, 4))?;
            t.reshape((b, ch, h / p, (w / p) * p * p))?
                .permute((0, 2, 3, 1))?
                .reshape((b, h / p, w / p, p * p, ch))?
                .permute((0, 1, 2, 4, 3))?
        };
        Ok(t.contiguous()?
            .reshape((b, c.stream_len(), c.token_values()))?)
    }

    /// Inverse of [`Self::tokens`].
    pub fn untokens(&self, t: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let b = t.dim(0)?;
        let (ch, h, w, p) = (c.in_channels, c.image_height, c.image_width, c.patch_size);
        let x = if p == 1 {
            t.reshape((b, h, w, ch))?.permute((0, 3, 1, 2))?
        } else {
            t.reshape((b, h / p, w / p, ch, p * p))?
                .permute((0, 1, 2, 4, 3))?
                .reshape((b, h / p, (w / p) * p * p, ch))?
                .permute((0, 3, 1, 2))?
                .reshape((b, ch * (h / p), w / p, p, p))?
                .permute((0, 1, 3, 2, 4))?
        };
        Ok(x.contiguous()?.reshape((b, ch, h, w))?)
    }

    /// Conditioning vector c = TimestepEmbed(t) + LabelEmbed(y), (B, D).
    pub fn condition(&self, t: &[f64], y: &[u32]) -> Result<Tensor> {
        let dev = self.y_table.device();
        let f = timestep_features(t, self.cfg.frequency_size, self.y_table.dtype(), dev)?;
        let te = self.t_mlp2.forward(&silu(&self.t_mlp0.forward(&f)?)?)?;
        if let Some(&bad) = y.iter().find(|&&c| c as usize > self.cfg.num_classes) {
            return Err(EngineError::Input(format!(
                "class {bad} out of range (the model has {} classes, {} = null class)",
                self.cfg.num_classes, self.cfg.num_classes
            )));
        }
        let ids = Tensor::from_vec(y.to_vec(), y.len(), dev)?;
        Ok((te + self.y_table.embedding(&ids)?)?)
    }

    /// Predicted noise ε for noisy images `x` (B, C, H, W) at timesteps `t` and classes `y`.
    pub fn forward(&self, x: &Tensor, t: &[f64], y: &[u32]) -> Result<Tensor> {
        let b = x.dim(0)?;
        if t.len() != b || y.len() != b {
            return Err(EngineError::Input(format!(
                "batch of {b} images needs {b} timesteps and classes, got {} and {}",
                t.len(),
                y.len()
            )));
        }
        let c = self.condition(t, y)?;
        let mut h = self.x_embedder.forward(&self.tokens(x)?)?;
        if let Some(pos) = &self.pos {
            h = h.broadcast_add(pos)?;
        }
        for blk in &self.blocks {
            h = blk.forward(&h, &c)?;
        }
        let mods = self.final_ada.forward(&silu(&c)?)?.chunk(2, D::Minus1)?;
        let h = modulate(&h, &mods[0], &mods[1])?;
        self.untokens(&self.final_linear.forward(&h)?)
    }
}

/// DiT's initialisation with S4D kernels (`docs/models.md` §2(b), §3(b)): Xavier-uniform linears
/// with zero biases, N(0, 0.02) timestep MLP and label table (or, with `cond_init = "unit"`,
/// Xavier and N(0, 1)), zero adaLN modulations and final linear (each block starts as the
/// identity, the output as zero). Variables are visited in name order.
pub fn init_weights(varmap: &VarMap, cfg: &DiffussmConfig, rng: &mut ChaCha8Rng) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let vars: BTreeMap<&String, _> = data.iter().collect();
    let (half_re, half_im) = a_init_half(cfg.ssm_init, cfg.state_size);
    let (full_re, full_im) = a_init_full(cfg.ssm_init, cfg.state_size);
    for (name, var) in vars {
        let (dt, dev, shape) = (var.dtype(), var.device().clone(), var.shape().clone());
        let dims = shape.dims().to_vec();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let rows = |v: &[f64]| -> Vec<f64> {
            v.iter().copied().cycle().take(shape.elem_count()).collect()
        };
        let t = if name.contains(".ssm_") {
            match leaf {
                // per-channel (s4 minimal names)
                "log_dt" => uniform(rng, shape, cfg.dt_min.ln(), cfg.dt_max.ln(), dt, &dev)?,
                "log_A_real" => tensor_f64(
                    rows(&half_re).iter().map(|v| (-v).ln()).collect(),
                    shape,
                    dt,
                    &dev,
                )?,
                "A_imag" => tensor_f64(rows(&half_im), shape, dt, &dev)?,
                // shared (BiGS names)
                "A_re" => tensor_f64(full_re.clone(), shape, dt, &dev)?,
                "A_im" => tensor_f64(full_im.clone(), shape, dt, &dev)?,
                "log_step" => uniform(rng, shape, 0.01f64.ln(), 1.0f64.ln(), dt, &dev)?,
                "C" => normal(rng, shape, 0.0, 0.5f64.sqrt(), dt, &dev)?,
                _ if cfg.kernel == KernelMode::Shared => Tensor::ones(shape, dt, &dev)?,
                _ => normal(rng, shape, 0.0, 1.0, dt, &dev)?, // D
            }
        } else if name.contains("adaLN_modulation")
            || name.starts_with("final_layer.linear")
            || leaf == "bias"
        {
            Tensor::zeros(shape, dt, &dev)?
        } else if cfg.cond_init == CondInit::Dit
            && (name.starts_with("t_embedder") || name.starts_with("y_embedder"))
        {
            normal(rng, shape, 0.0, 0.02, dt, &dev)?
        } else if name.starts_with("y_embedder") {
            normal(rng, shape, 0.0, 1.0, dt, &dev)?
        } else {
            // Xavier uniform over (fan_out, fan_in) of each map (the down-maps: per m).
            let (fo, fi) = (dims[dims.len() - 2] as f64, dims[dims.len() - 1] as f64);
            let a = (6.0 / (fi + fo)).sqrt();
            uniform(rng, shape, -a, a, dt, &dev)?
        };
        var.set(&t)?;
    }
    Ok(())
}

/// A fresh model (seeded initialisation) with its VarMap.
pub fn build_diffussm(
    cfg: &DiffussmConfig,
    dtype: DType,
    dev: &Device,
    rng: &mut ChaCha8Rng,
) -> Result<(Diffussm, VarMap)> {
    let varmap = VarMap::new();
    let model = Diffussm::new(cfg, VarBuilder::from_varmap(&varmap, dtype, dev))?;
    init_weights(&varmap, cfg, rng)?;
    Ok((model, varmap))
}
