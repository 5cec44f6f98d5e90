//! BiGS masked language model ("Pretraining Without Attention", Wang et al. 2022), as the
//! authors' PyTorch port `modeling_bigs.py` computes it. Variable names equal the HF PyTorch
//! state-dict names, so released `pytorch_model.bin` / `model.safetensors` files load as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::attention::AttentionLayer;
use super::conv::{ConvPath, causal_conv_blc, resolve_path, toeplitz};
use super::cpu::bigs_layer::{BigsLayerOp, LayerSpec};
use super::cpu::float::Elem;
use super::cpu::rowops::{bias_act, bias_mul, bias_residual, gelu_bias_mul};
use super::error::{EngineError, Result};
use super::init::{AInit, a_init_full, dropout_mask, normal, tensor_f64, uniform};
use super::memory;
use super::nn::{Embedding, Gelu, LayerNorm, Linear, Module, embedding, linear};
use super::s4d::bigs_kernel;
use super::weights::{LoadReport, load_varmap, read_checkpoint};

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_true() -> bool {
    true
}
fn default_act() -> String {
    "gelu".into()
}

/// The HF BiGS `config.json` fields, plus ssmlab's own choices (GELU variant, initialisation,
/// convolution path). Unknown keys are ignored, as the released configs carry many.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BigsConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// State size N of each SSM (all N modes are kept).
    pub num_ssm: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Dropout after the embedding LayerNorm (the only dropout in the MLM).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_true")]
    pub pre_norm: bool,
    /// Kept for the HF file; the GELU inside layers is `layer_gelu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// GELU inside BiGS layers: `exact` (PyTorch port, default for loaded checkpoints) or
    /// `tanh` (what the Flax code trained the released weights with). The head is always exact.
    #[serde(default)]
    pub layer_gelu: Gelu,
    /// Initialisation of A when training from scratch.
    #[serde(default)]
    pub ssm_init: AInit,
    /// Convolution algorithm of the SSMs.
    #[serde(default)]
    pub conv: ConvPath,
    /// Std of the Normal initialisation of embeddings (and of dense layers when
    /// `dense_init = "normal"`), as HF's `initializer_range`.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Dense kernels inside layers: `normal` (N(0, initializer_range), the reference) or
    /// `lecun` (N(0, 1/fan_in), unit-scale activations: the multiplicative gates then pass
    /// gradient from step 0, which short CPU runs need).
    #[serde(default)]
    pub dense_init: DenseInit,
    /// The layers' mixer: BiGS's gated bidirectional SSM, or BERT's self-attention (the
    /// baseline; then `num_attention_heads` heads, HF BERT names under `bert.`).
    #[serde(default)]
    pub encoder: Encoder,
    #[serde(default)]
    pub num_attention_heads: usize,
}

/// What mixes positions inside the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoder {
    #[default]
    Bigs,
    Attention,
}

fn default_init_range() -> f64 {
    0.02
}

/// Initialisation of the dense layers inside BiGS layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenseInit {
    #[default]
    Normal,
    Lecun,
}

const REQUIRED: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_ssm",
    "max_position_embeddings",
];

/// The `hidden_act` values of BiGS and BERT checkpoints (all GELU; which form is `gelu`).
pub const GELU_ACTS: [&str; 4] = ["gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"];

impl BigsConfig {
    /// Reads and validates a HF-style `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = crate::text::read_file(path, crate::text::SMALL_FILE_MAX).map_err(|source| {
            EngineError::Io {
                path: path.into(),
                err: source,
            }
        })?;
        Self::from_json_str(&text).map_err(|e| match e {
            EngineError::ConfigField { field, msg } => EngineError::Config {
                path: path.into(),
                msg: format!("field `{field}` {msg}"),
            },
            EngineError::Input(msg) => EngineError::Config {
                path: path.into(),
                msg,
            },
            e => e,
        })
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| EngineError::Input(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| EngineError::Input("expected a JSON object".into()))?;
        let attention = obj.get("encoder").and_then(|e| e.as_str()) == Some("attention");
        for &f in REQUIRED {
            if attention && f == "num_ssm" {
                continue;
            }
            match obj.get(f) {
                None => {
                    return Err(EngineError::ConfigField {
                        field: f,
                        msg: "is missing; a BiGS config needs vocab_size, hidden_size, \
                              intermediate_size, num_hidden_layers, num_ssm and \
                              max_position_embeddings"
                            .into(),
                    });
                }
                Some(x) if x.as_u64().is_none_or(|n| n == 0) => {
                    return Err(EngineError::ConfigField {
                        field: f,
                        msg: format!("is {x}; it must be a positive integer"),
                    });
                }
                _ => {}
            }
        }
        let cfg: Self =
            serde_json::from_value(v).map_err(|e| EngineError::Input(format!("{e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field a model would trip over.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            (
                "num_ssm",
                if self.encoder == Encoder::Bigs {
                    self.num_ssm
                } else {
                    1
                },
            ),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(EngineError::ConfigField {
                    field,
                    msg: "is 0; it must be a positive integer".into(),
                });
            }
        }
        if self.encoder == Encoder::Attention
            && (self.num_attention_heads == 0
                || !self.hidden_size.is_multiple_of(self.num_attention_heads))
        {
            return Err(EngineError::ConfigField {
                field: "num_attention_heads",
                msg: format!(
                    "is {}; an attention encoder needs at least one head, dividing hidden_size = {}",
                    self.num_attention_heads, self.hidden_size
                ),
            });
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return Err(EngineError::ConfigField {
                field: "layer_norm_eps",
                msg: format!(
                    "is {}; it must be a small positive number",
                    self.layer_norm_eps
                ),
            });
        }
        if !(0.0..1.0).contains(&self.hidden_dropout_prob) {
            return Err(EngineError::ConfigField {
                field: "hidden_dropout_prob",
                msg: format!("is {}; it must be in [0, 1)", self.hidden_dropout_prob),
            });
        }
        if !(self.initializer_range >= 0.0 && self.initializer_range.is_finite()) {
            return Err(EngineError::ConfigField {
                field: "initializer_range",
                msg: format!(
                    "is {}; it must be a finite standard deviation ≥ 0 (0.02 is usual)",
                    self.initializer_range
                ),
            });
        }
        if !GELU_ACTS.contains(&self.hidden_act.as_str()) {
            return Err(EngineError::ConfigField {
                field: "hidden_act",
                msg: format!(
                    "is `{}`; BiGS and its BERT twin use GELU: one of {} (exact or tanh is \
                     the `gelu` field)",
                    self.hidden_act,
                    GELU_ACTS.join(", ")
                ),
            });
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(EngineError::ConfigField {
                field: "pad_token_id",
                msg: format!(
                    "is {} but vocab_size is {}",
                    self.pad_token_id, self.vocab_size
                ),
            });
        }
        // Last: the arithmetic of the sizes, and whether one sequence fits in memory.
        self.check_memory(1, self.max_position_embeddings, 1, false)
    }

    /// A lower bound on the memory of this model with `batch` sequences of `seq` tokens:
    /// weights (four times over when `training`: gradients and two AdamW moments), the SSM
    /// kernels of every layer at length `seq` (BiGS), and the activations the layers keep
    /// (training: every layer's; inference: one layer's), and the decoder's logits at
    /// `head_rows` rows per sequence (with their gradient when training). Checked arithmetic
    /// throughout.
    pub fn memory(
        &self,
        batch: usize,
        seq: usize,
        head_rows: usize,
        training: bool,
    ) -> memory::Bytes {
        use memory::Bytes;
        let (v, h, i, l) = (
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_hidden_layers,
        );
        let layer = Bytes::f32s(&[2, h, i]).plus(Bytes::f32s(&[4, h, h]));
        let weights = Bytes::f32s(&[v, h])
            .plus(Bytes::f32s(&[self.max_position_embeddings, h]))
            .plus(layer.times(l));
        let kernels = match self.encoder {
            Encoder::Bigs => Bytes::f32s(&[l, 2, h, seq]),
            Encoder::Attention => Bytes::ZERO,
        };
        let act = Bytes::f32s(&[batch, seq, h + i.max(h)]);
        let logits = Bytes::f32s(&[batch, head_rows, v]);
        if training {
            weights
                .times(4)
                .plus(kernels)
                .plus(act.times(l))
                .plus(logits.times(2))
        } else {
            weights.plus(kernels).plus(act).plus(logits)
        }
    }

    /// Refuses (naming the fields) a model that [`Self::memory`] says does not fit.
    pub fn check_memory(
        &self,
        batch: usize,
        seq: usize,
        head_rows: usize,
        training: bool,
    ) -> Result<()> {
        let mut fields = vec![
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if training {
            fields.extend([("batch_size", batch), ("seq_len", seq)]);
        }
        let what = if training {
            "training this model"
        } else {
            "this model"
        };
        memory::check(what, self.memory(batch, seq, head_rows, training), &fields)
    }

    /// The HF `config.json` text of this configuration.
    pub fn to_json(&self) -> String {
        let mut v = crate::engine::serial::json_value(self);
        let (kind, arch) = match self.encoder {
            Encoder::Bigs => ("bigs", "BiGSForMaskedLM"),
            Encoder::Attention => ("bert", "BertForMaskedLM"),
        };
        v["model_type"] = kind.into();
        v["architectures"] = serde_json::json!([arch]);
        crate::engine::serial::json_pretty(&v)
    }

    /// Number of trainable parameters (decoder tied to the word embeddings).
    pub fn num_parameters(&self) -> usize {
        let (v, h, i, n) = (
            self.vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_ssm,
        );
        let emb = (v + self.max_position_embeddings + self.type_vocab_size) * h + 2 * h;
        let ssm = 4 * n + 2; // A_re (N), A_im (N), C (N, 2), D, log_step
        let layer = match self.encoder {
            Encoder::Bigs => {
                2 * h // LayerNorm
                + 2 * (h * i + i) // dv, dol
                + 4 * (h * h + h) // du_forward, du_backward, duc_forward, duc_backward
                + (i * h + h) // do
                + 2 * ssm
            }
            Encoder::Attention => super::attention::layer_parameters(h, i),
        };
        let head = h * h + h + 2 * h + v;
        emb + self.num_hidden_layers * layer + head
    }

    /// The root of the variable names: `bigs` or `bert`.
    pub fn root(&self) -> &'static str {
        match self.encoder {
            Encoder::Bigs => "bigs",
            Encoder::Attention => "bert",
        }
    }

    /// Matmul multiply-accumulates per token of one encoder layer at sequence length `l`:
    /// BiGS 3·H·I + 4·H² (dv, dol, do; du and duc in both directions; the FFT convolutions
    /// not counted), attention 4·H² + 2·H·I + 2·L·H.
    pub fn layer_macs_per_token(&self, l: usize) -> f64 {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        match self.encoder {
            Encoder::Bigs => (3 * h * i + 4 * h * h) as f64,
            Encoder::Attention => super::attention::layer_macs_per_token(h, i, l),
        }
    }
}

/// One S4D SSM of BiGS (`fs4` or `bs4`): a single kernel shared by all channels plus a skip D.
#[derive(Debug, Clone)]
pub struct BigsSsm {
    pub a_re: Tensor,
    pub a_im: Tensor,
    pub c: Tensor,
    pub log_step: Tensor,
    pub d: Tensor,
    pub(crate) conv: ConvPath,
}

impl BigsSsm {
    pub fn new(n: usize, conv: ConvPath, vb: VarBuilder) -> Result<Self> {
        let k = vb.pp("kernel");
        Ok(Self {
            a_re: k.get(n, "A_re")?,
            a_im: k.get(n, "A_im")?,
            c: k.get((n, 2), "C")?,
            log_step: k.get(1, "log_step")?,
            d: vb.get(1, "D")?,
            conv,
        })
    }

    /// The convolution kernel of length `l`, (L).
    pub fn kernel(&self, l: usize) -> Result<Tensor> {
        bigs_kernel(&self.a_re, &self.a_im, &self.c, &self.log_step, l)
    }

    /// `y[t] = Σ_{j≤t} K[j] u[t−j] + D u[t]` along dim 1 of `u` (B, L, H).
    pub fn forward(&self, u: &Tensor) -> Result<Tensor> {
        let l = u.dim(1)?;
        let k = self.kernel(l)?.unsqueeze(0)?;
        let y = causal_conv_blc(u, &k, self.conv)?;
        Ok((y + u.broadcast_mul(&self.d)?)?)
    }

    /// The kernel with the skip folded into its first tap, `K + D·δ₀`, (L).
    pub fn skip_kernel(&self, l: usize) -> Result<Tensor> {
        let k = self.kernel(l)?;
        let mut e0 = vec![0f32; l];
        e0[0] = 1.0;
        let e0 = Tensor::new(e0, k.device())?.to_dtype(k.dtype())?;
        Ok((k + e0.broadcast_mul(&self.d)?)?)
    }

    /// The same on rows `u` (B·L, H) of `batch` sequences; `reverse` runs it anti-causally,
    /// `y[t] = Σ_{j≥0} K[j] u[t+j] + D u[t]`, which equals flip ∘ forward ∘ flip without the
    /// two copies. The skip is folded into the kernel (`K[0] + D`), so it costs no pass of its own.
    pub fn forward_rows(&self, u: &Tensor, batch: usize, reverse: bool) -> Result<Tensor> {
        let (rows, h) = u.dims2()?;
        if batch == 0 || rows % batch != 0 {
            return Err(EngineError::Input(format!(
                "{rows} rows do not split into {batch} sequences"
            )));
        }
        let l = rows / batch;
        let k = self.skip_kernel(l)?.unsqueeze(0)?;
        let u3 = u.reshape((batch, l, h))?;
        let y = match resolve_path(self.conv, &u3, 1, l) {
            ConvPath::Fft if reverse => causal_conv_blc(&u3.flip(&[1])?, &k, ConvPath::Fft)?
                .contiguous()?
                .flip(&[1])?,
            ConvPath::Fft => causal_conv_blc(&u3, &k, ConvPath::Fft)?,
            // One (L, L) Toeplitz matrix for every sequence: lower-triangular for the causal
            // direction, its transpose for the anti-causal one.
            _ => toeplitz(&k, reverse)?.squeeze(0)?.broadcast_matmul(&u3)?,
        };
        Ok(y.reshape((rows, h))?)
    }
}

/// One pre-norm BiGS layer.
#[derive(Debug, Clone)]
pub struct BigsLayer {
    ln: LayerNorm,
    dv: Linear,
    du_forward: Linear,
    du_backward: Linear,
    duc_forward: Linear,
    duc_backward: Linear,
    dol: Linear,
    do_: Linear,
    pub fs4: BigsSsm,
    pub bs4: BigsSsm,
    act: Gelu,
    pre_norm: bool,
}

impl BigsLayer {
    pub fn new(cfg: &BigsConfig, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            ln: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dv: linear(h, i, vb.pp("dv"))?,
            du_forward: linear(h, h, vb.pp("du_forward"))?,
            du_backward: linear(h, h, vb.pp("du_backward"))?,
            duc_forward: linear(h, h, vb.pp("duc_forward"))?,
            duc_backward: linear(h, h, vb.pp("duc_backward"))?,
            dol: linear(h, i, vb.pp("dol"))?,
            do_: linear(i, h, vb.pp("do"))?,
            fs4: BigsSsm::new(cfg.num_ssm, cfg.conv, vb.pp("fs4"))?,
            bs4: BigsSsm::new(cfg.num_ssm, cfg.conv, vb.pp("bs4"))?,
            act: cfg.layer_gelu,
            pre_norm: cfg.pre_norm,
        })
    }

    /// x (B, L, H) → x (B, L, H).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        Ok(self
            .forward_rows(&x.reshape((b * l, h))?, b)?
            .reshape((b, l, h))?)
    }

    /// The layer on rows x (B·L, H) of `batch` sequences. Linear and flip commute along the
    /// sequence, so the backward branch runs its SSM anti-causally instead of flipping; biases,
    /// GELUs, the gate products and the residual are fused ops ([`super::rowops`]).
    pub fn forward_rows(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        if super::cpu::enabled()
            && x.device().is_cpu()
            && matches!(x.dtype(), DType::F32 | DType::F64)
        {
            return self.forward_fused(x, batch);
        }
        self.forward_ops(x, batch)
    }

    /// The layer's parameters in `bigs_layer::PARAMS` order (the fused layer's packing).
    fn params(&self) -> Result<Vec<Tensor>> {
        let mut ps = vec![self.ln.weight.clone(), self.ln.bias.clone()];
        for m in [
            &self.dv,
            &self.du_forward,
            &self.du_backward,
            &self.duc_forward,
            &self.duc_backward,
            &self.dol,
            &self.do_,
        ] {
            ps.extend([m.weight.clone(), m.bias()?.clone()]);
        }
        Ok(ps)
    }

    /// The fused layer's kernels (2, L), with their graph back to the SSM parameters, and its
    /// spec for `batch` sequences of length `l` of rows like `x`.
    fn fused_parts(&self, x: &Tensor, batch: usize, l: usize) -> Result<(Tensor, LayerSpec)> {
        let k = Tensor::stack(&[self.fs4.skip_kernel(l)?, self.bs4.skip_kernel(l)?], 0)?;
        let spec = LayerSpec {
            batch,
            hidden: x.dim(1)?,
            intermediate: self.dv.weight.dim(0)?,
            eps: self.ln.eps,
            act: self.act,
            pre_norm: self.pre_norm,
            dense: resolve_path(self.fs4.conv, x, 1, l) == ConvPath::Dense,
        };
        Ok((k, spec))
    }

    /// The layer as one fused op with a hand-written backward ([`super::cpu::bigs_layer`]).
    pub fn forward_fused(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        let (rows, _) = x.dims2()?;
        if batch == 0 || rows % batch != 0 {
            return Err(EngineError::Input(format!(
                "{rows} rows do not split into {batch} sequences"
            )));
        }
        let l = rows / batch;
        let parts = self
            .params()?
            .iter()
            .map(Tensor::flatten_all)
            .collect::<candle_core::Result<Vec<_>>>()?;
        let p = Tensor::cat(&parts, 0)?;
        let (k, spec) = self.fused_parts(x, batch, l)?;
        Ok(x.contiguous()?.apply_op3(&p, &k, BigsLayerOp::new(spec))?)
    }

    /// The layer from (fused) candle ops: the path on other devices, and the reference the
    /// fused layer is tested against.
    pub fn forward_ops(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        let k = Some(self.act);
        let h = if self.pre_norm {
            self.ln.forward(x)?
        } else {
            x.clone()
        };
        let v = self.dv.forward_act(&h, k)?;
        let uf = self.du_forward.forward_act(&h, k)?;
        let ub = self.du_backward.forward_act(&h, k)?;
        let sf = self.fs4.forward_rows(&uf, batch, false)?;
        let sb = self.bs4.forward_rows(&ub, batch, true)?;
        let g = bias_mul(
            &self.duc_forward.raw(&sf)?,
            self.duc_forward.bias()?,
            &self.duc_backward.raw(&sb)?,
            self.duc_backward.bias()?,
        )?;
        let zv = gelu_bias_mul(&self.dol.raw(&g)?, self.dol.bias()?, &v, self.act)?;
        let y = bias_residual(&self.do_.raw(&zv)?, self.do_.bias()?, x)?;
        if self.pre_norm {
            Ok(y)
        } else {
            self.ln.forward(&y)
        }
    }
}

/// Word + position + token-type embeddings, LayerNorm, dropout.
#[derive(Debug, Clone)]
pub struct BigsEmbeddings {
    pub word: Embedding,
    position: Embedding,
    token_type: Embedding,
    ln: LayerNorm,
}

impl BigsEmbeddings {
    pub fn new(cfg: &BigsConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word: embedding(cfg.vocab_size, h, vb.pp("word_embeddings"))?,
            position: embedding(cfg.max_position_embeddings, h, vb.pp("position_embeddings"))?,
            token_type: embedding(cfg.type_vocab_size, h, vb.pp("token_type_embeddings"))?,
            ln: LayerNorm::new(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }
}

/// `dense → GELU(exact) → LayerNorm → · E_wordᵀ + bias`.
#[derive(Debug, Clone)]
pub struct MlmHead {
    dense: Linear,
    ln: LayerNorm,
    bias: Tensor,
}

/// How a forward pass runs: evaluation, or training with seeded dropout.
pub enum Mode<'a> {
    Eval,
    Train(&'a mut ChaCha8Rng),
}

/// BiGS for masked language modelling.
#[derive(Debug, Clone)]
pub struct BigsForMaskedLm {
    pub config: BigsConfig,
    pub embeddings: BigsEmbeddings,
    pub layers: Vec<BigsLayer>,
    /// The layers of an attention encoder (`encoder = "attention"`; `layers` is then empty).
    pub attention_layers: Vec<AttentionLayer>,
    pub head: MlmHead,
}

/// What [`BigsForMaskedLm::mlm_loss`] returns.
pub struct MlmOutput {
    /// Mean cross-entropy over the predicted positions (scalar).
    pub loss: Tensor,
    /// Logits at the predicted positions, (P, V).
    pub logits: Tensor,
    /// The target ids at those positions, (P).
    pub targets: Tensor,
}

impl BigsForMaskedLm {
    /// Builds the model's variables under HF names (`bigs.…`, `cls.predictions.…`).
    pub fn new(cfg: &BigsConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let b = vb.pp(cfg.root());
        let n = cfg.num_hidden_layers;
        let at = |i| b.pp("encoder").pp("layer").pp(i);
        let (layers, attention_layers) = match cfg.encoder {
            Encoder::Bigs => (
                (0..n)
                    .map(|i| BigsLayer::new(cfg, at(i)))
                    .collect::<Result<Vec<_>>>()?,
                vec![],
            ),
            Encoder::Attention => (
                vec![],
                (0..n)
                    .map(|i| {
                        AttentionLayer::new(
                            cfg.hidden_size,
                            cfg.intermediate_size,
                            cfg.num_attention_heads,
                            cfg.layer_norm_eps,
                            cfg.layer_gelu,
                            cfg.pre_norm,
                            at(i),
                        )
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let p = vb.pp("cls").pp("predictions");
        let h = cfg.hidden_size;
        Ok(Self {
            config: cfg.clone(),
            embeddings: BigsEmbeddings::new(cfg, b.pp("embeddings"))?,
            layers,
            attention_layers,
            head: MlmHead {
                dense: linear(h, h, p.pp("transform").pp("dense"))?,
                ln: LayerNorm::new(h, cfg.layer_norm_eps, p.pp("transform").pp("LayerNorm"))?,
                bias: p.get_with_hints(cfg.vocab_size, "bias", candle_nn::Init::Const(0.0))?,
            },
        })
    }

    /// Encoder output (B, L, H) for `input_ids` (B, L) (no final LayerNorm, as the reference).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (_, l) = self.checked_ids(input_ids)?;
        let dev = input_ids.device();
        let pos = Tensor::arange(0u32, l as u32, dev)?;
        let embed_time = super::cpu::prof::span("embeddings");
        let e = self.embeddings.word.forward(input_ids)?;
        let e = e.broadcast_add(&self.embeddings.position.forward(&pos)?)?;
        let e = match token_type_ids {
            Some(tt) => {
                self.check_ids(tt, self.config.type_vocab_size, "token_type_ids")?;
                (e + self.embeddings.token_type.forward(tt)?)?
            }
            None => {
                e.broadcast_add(&self.embeddings.token_type.embeddings().i(0)?.unsqueeze(0)?)?
            }
        };
        let mut x = self.embeddings.ln.forward(&e)?;
        drop(embed_time);
        if let Mode::Train(rng) = mode
            && self.config.hidden_dropout_prob > 0.0
        {
            let m = dropout_mask(
                rng,
                x.shape().clone(),
                self.config.hidden_dropout_prob,
                x.dtype(),
                x.device(),
            )?;
            x = (x * m)?;
        }
        if !self.layers.is_empty() {
            let (b, l, h) = x.dims3()?;
            let mut rows = x.reshape((b * l, h))?;
            for layer in &self.layers {
                rows = layer.forward_rows(&rows, b)?;
            }
            x = rows.reshape((b, l, h))?;
        }
        for layer in &self.attention_layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }

    /// (batch, length) of input ids, checked: two axes, no longer than the positions, inside
    /// the vocabulary.
    fn checked_ids(&self, input_ids: &Tensor) -> Result<(usize, usize)> {
        let (batch, l) = input_ids.dims2().map_err(|_| {
            EngineError::Input(format!(
                "input_ids must be (batch, length), got shape {:?}",
                input_ids.dims()
            ))
        })?;
        let max = self.config.max_position_embeddings;
        if l > max {
            return Err(EngineError::SequenceTooLong { len: l, max });
        }
        self.check_ids(input_ids, self.config.vocab_size, "input_ids")?;
        Ok((batch, l))
    }

    fn check_ids(&self, ids: &Tensor, bound: usize, what: &str) -> Result<()> {
        let max = ids
            .flatten_all()?
            .to_dtype(DType::I64)?
            .max(0)?
            .to_scalar::<i64>()?;
        let min = ids
            .flatten_all()?
            .to_dtype(DType::I64)?
            .min(0)?
            .to_scalar::<i64>()?;
        if min < 0 || max as usize >= bound {
            return Err(EngineError::Input(format!(
                "{what} must lie in [0, {bound}), found values in [{min}, {max}]"
            )));
        }
        Ok(())
    }

    /// Head transform `LN(gelu(dense x))` of hidden states of any leading shape.
    pub fn head_transform(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = self.head.dense.forward_act(hidden, Some(Gelu::Exact))?;
        self.head.ln.forward(&t)
    }

    /// MLM logits of hidden states (…, H) → (…, V); the decoder is tied to the word embeddings.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let t = self.head_transform(hidden)?;
        let w = self.embeddings.word.embeddings();
        let dims = t.dims().to_vec();
        let (h, lead) = dims
            .split_last()
            .ok_or_else(|| EngineError::Input("MLM head applied to a scalar".into()))?;
        let rows: usize = lead.iter().product();
        let t = t.reshape((rows, *h))?;
        let z = match super::cpu::linear::linear_rows(&t, w, &self.head.bias)? {
            Some(z) => z,
            None => bias_act(&t.matmul(&w.t()?)?, &self.head.bias, None)?,
        };
        let mut out = lead.to_vec();
        out.push(self.config.vocab_size);
        Ok(z.reshape(out)?)
    }

    /// Logits only at `positions` (flat indices into B·L), (P, V): the head costs nothing at
    /// positions the loss does not read.
    pub fn logits_at(&self, hidden: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, l, h) = hidden.dims3()?;
        let sel = hidden.reshape((b * l, h))?.index_select(positions, 0)?;
        self.logits(&sel)
    }

    /// The flat positions whose label is not −100 and their targets, checked: labels shaped
    /// like the ids, at least one position, targets inside the vocabulary.
    fn masked_targets(&self, input_ids: &Tensor, labels: &Tensor) -> Result<(Vec<u32>, Vec<u32>)> {
        if labels.dims() != input_ids.dims() {
            return Err(EngineError::Input(format!(
                "labels {:?} must have the shape of input_ids {:?}",
                labels.dims(),
                input_ids.dims()
            )));
        }
        let lab: Vec<i64> = labels.flatten_all()?.to_dtype(DType::I64)?.to_vec1()?;
        let (pos, tgt): (Vec<u32>, Vec<u32>) = lab
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != -100)
            .map(|(i, v)| (i as u32, *v as u32))
            .unzip();
        if pos.is_empty() {
            return Err(EngineError::Input(
                "no position to predict: every label is −100".into(),
            ));
        }
        if let Some(bad) = lab
            .iter()
            .find(|v| **v != -100 && (**v < 0 || **v as usize >= self.config.vocab_size))
        {
            return Err(EngineError::Input(format!(
                "label {bad} is outside the vocabulary [0, {})",
                self.config.vocab_size
            )));
        }
        Ok((pos, tgt))
    }

    /// Masked-LM loss: mean cross-entropy over positions whose label is not −100.
    pub fn mlm_loss(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        labels: &Tensor,
        mode: Mode,
    ) -> Result<MlmOutput> {
        let (pos, tgt) = self.masked_targets(input_ids, labels)?;
        let dev = input_ids.device();
        let positions = Tensor::new(pos.as_slice(), dev)?;
        let targets = Tensor::new(tgt.as_slice(), dev)?;
        let hidden = self.hidden_states(input_ids, token_type_ids, mode)?;
        let logits = self.logits_at(&hidden, &positions)?;
        let loss = cross_entropy(&logits, &targets)?;
        Ok(MlmOutput {
            loss,
            logits,
            targets,
        })
    }
}

/// The masked-LM loss and the gradient of every variable ([`BigsForMaskedLm::mlm_grads`]).
pub struct MlmGrads {
    /// Mean cross-entropy over the predicted positions.
    pub loss: f64,
    grads: candle_core::backprop::GradStore,
}

impl MlmGrads {
    /// The gradient of a variable of the model.
    pub fn get(&self, var: &Tensor) -> Option<&Tensor> {
        self.grads.get(var)
    }
}

impl BigsForMaskedLm {
    /// The masked-LM loss and the gradient of every variable in one CPU pass without the
    /// autograd graph ([`super::cpu::bigs_step`]): what `mlm_loss(…).loss.backward()` computes,
    /// to rounding, with the same checks of ids and labels. `None` where that path does not
    /// apply: fused kernels off, not the CPU, not f32/f64, an attention encoder, no layers, or
    /// dropout while training; the caller then runs the graph.
    pub fn mlm_grads(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        mode: &Mode,
    ) -> Result<Option<MlmGrads>> {
        let w = self.embeddings.word.embeddings();
        let dropout = matches!(mode, Mode::Train(_)) && self.config.hidden_dropout_prob > 0.0;
        if !super::cpu::enabled()
            || !w.device().is_cpu()
            || dropout
            || !self.attention_layers.is_empty()
            || self.layers.is_empty()
        {
            return Ok(None);
        }
        match w.dtype() {
            DType::F32 => self.mlm_grads_as::<f32>(input_ids, labels).map(Some),
            DType::F64 => self.mlm_grads_as::<f64>(input_ids, labels).map(Some),
            _ => Ok(None),
        }
    }

    /// The masked-LM loss and every variable's gradient: the fused CPU pass where it applies
    /// ([`Self::mlm_grads`]), `mlm_loss(…).loss.backward()` otherwise.
    pub fn mlm_loss_grads(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
        mode: Mode,
    ) -> Result<MlmGrads> {
        if let Some(g) = self.mlm_grads(input_ids, labels, &mode)? {
            return Ok(g);
        }
        let out = self.mlm_loss(input_ids, None, labels, mode)?;
        let loss = out.loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grads = out.loss.backward()?;
        Ok(MlmGrads { loss, grads })
    }

    fn mlm_grads_as<T: Elem + candle_core::WithDType>(
        &self,
        input_ids: &Tensor,
        labels: &Tensor,
    ) -> Result<MlmGrads> {
        use super::cpu::bigs_step::{Layer, Model, Norm, mlm_step};
        let _time = super::cpu::prof::span("fused mlm step");
        let (batch, l) = self.checked_ids(input_ids)?;
        let (positions, targets) = self.masked_targets(input_ids, labels)?;
        let ids: Vec<u32> = input_ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        let v = |t: &Tensor| -> Result<Vec<T>> { Ok(t.flatten_all()?.to_vec1::<T>()?) };
        let h = self.config.hidden_size;
        // The word embeddings (also the decoder) are read in place: a copy a step is 4·V·H bytes.
        let word_t = self.embeddings.word.embeddings().contiguous()?;
        let (word_s, word_l) = word_t.storage_and_layout();
        let word = match &*word_s {
            candle_core::Storage::Cpu(c) => T::slice(c, word_l, "word embeddings")?,
            _ => {
                return Err(EngineError::Input(
                    "word embeddings are not on the CPU".into(),
                ));
            }
        };
        let (position, token_type) = (
            v(self.embeddings.position.embeddings())?,
            v(self.embeddings.token_type.embeddings())?,
        );
        let (emb_lw, emb_lb) = (v(&self.embeddings.ln.weight)?, v(&self.embeddings.ln.bias)?);
        let head_b = self.head.dense.bias()?;
        let (dense_w, dense_b) = (v(&self.head.dense.weight)?, v(head_b)?);
        let (head_lw, head_lb) = (v(&self.head.ln.weight)?, v(&self.head.ln.bias)?);
        let decoder_b = v(&self.head.bias)?;
        // Each layer's parameters in `bigs_layer::PARAMS` order, and its kernels with their
        // graph back to the SSM parameters.
        let mut params: Vec<Vec<Tensor>> = Vec::with_capacity(self.layers.len());
        let mut kernels = Vec::with_capacity(self.layers.len());
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let ps = layer.params()?;
            let mut p = Vec::new();
            for t in &ps {
                p.extend(v(t)?);
            }
            let (k, spec) = layer.fused_parts(&word_t, batch, l)?;
            layers.push(Layer { spec, p, k: v(&k)? });
            kernels.push(k);
            params.push(ps);
        }
        let model = Model {
            hidden: h,
            seq_len: l,
            word,
            position: &position,
            token_type0: &token_type[..h],
            emb_ln: Norm {
                w: &emb_lw,
                b: &emb_lb,
                eps: self.embeddings.ln.eps,
            },
            layers,
            dense_w: &dense_w,
            dense_b: &dense_b,
            head_ln: Norm {
                w: &head_lw,
                b: &head_lb,
                eps: self.head.ln.eps,
            },
            decoder_b: &decoder_b,
        };
        let (loss, g) = mlm_step(&model, &ids, &positions, &targets);
        drop(model);
        let dev = word_t.device().clone();
        let like = |grad: Vec<T>, var: &Tensor| -> Result<Tensor> {
            Ok(Tensor::from_vec(grad, var.shape(), &dev)?)
        };
        // The kernels' gradients reach the SSM parameters through the kernels' small graph.
        let mut surrogate: Option<Tensor> = None;
        for (k, (_, dk)) in kernels.iter().zip(&g.layers) {
            let term = (k * like(dk.clone(), k)?)?.sum_all()?;
            surrogate = Some(match surrogate {
                None => term,
                Some(s) => (s + term)?,
            });
        }
        let mut grads = match surrogate {
            Some(s) => s.backward()?,
            None => return Err(EngineError::Input("a BiGS model without layers".into())),
        };
        for k in &kernels {
            grads.remove(k);
        }
        let mut token_type0 = g.token_type0;
        token_type0.resize(token_type.len(), T::zero());
        let e = &self.embeddings;
        grads.insert(&word_t, like(g.word, &word_t)?);
        grads.insert(
            e.position.embeddings(),
            like(g.position, e.position.embeddings())?,
        );
        grads.insert(
            e.token_type.embeddings(),
            like(token_type0, e.token_type.embeddings())?,
        );
        let [lw, lb] = g.emb_ln;
        grads.insert(&e.ln.weight, like(lw, &e.ln.weight)?);
        grads.insert(&e.ln.bias, like(lb, &e.ln.bias)?);
        grads.insert(
            &self.head.dense.weight,
            like(g.dense_w, &self.head.dense.weight)?,
        );
        grads.insert(head_b, like(g.dense_b, head_b)?);
        let [lw, lb] = g.head_ln;
        grads.insert(&self.head.ln.weight, like(lw, &self.head.ln.weight)?);
        grads.insert(&self.head.ln.bias, like(lb, &self.head.ln.bias)?);
        grads.insert(&self.head.bias, like(g.decoder_b, &self.head.bias)?);
        for (ps, (dp, _)) in params.iter().zip(g.layers) {
            let mut at = 0;
            for t in ps {
                let n = t.elem_count();
                grads.insert(t, like(dp[at..at + n].to_vec(), t)?);
                at += n;
            }
        }
        Ok(MlmGrads { loss, grads })
    }
}

/// Mean cross-entropy of logits (P, V) against targets (P).
pub use super::cpu::fused::cross_entropy;

/// The range of the BiGS Δt initialisation: `log_step ~ Uniform[ln 0.01, ln 1]`
/// (`docs/models.md` §1(b)).
pub const BIGS_DT_INIT: (f64, f64) = (0.01, 1.0);

/// Re-draws every variable of a BiGS VarMap from a seeded generator, following the reference
/// initialisation (`docs/models.md` §1(b)). Variables are visited in name order, so a seed fixes
/// the model.
pub fn init_weights(varmap: &VarMap, cfg: &BigsConfig, rng: &mut ChaCha8Rng) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let vars: BTreeMap<&String, _> = data.iter().collect();
    let (a_re, a_im) = a_init_full(cfg.ssm_init, cfg.num_ssm);
    for (name, var) in vars {
        let (dt, dev, shape) = (var.dtype(), var.device().clone(), var.shape().clone());
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let t = if name.contains("LayerNorm") {
            let v = if leaf == "weight" { 1.0 } else { 0.0 };
            Tensor::full(v, shape, &dev)?.to_dtype(dt)?
        } else if name.contains(".kernel.") || leaf == "D" {
            match leaf {
                "A_re" => tensor_f64(a_re.clone(), shape, dt, &dev)?,
                "A_im" => tensor_f64(a_im.clone(), shape, dt, &dev)?,
                "C" => normal(rng, shape, 0.0, 0.5f64.sqrt(), dt, &dev)?,
                "log_step" => uniform(
                    rng,
                    shape,
                    BIGS_DT_INIT.0.ln(),
                    BIGS_DT_INIT.1.ln(),
                    dt,
                    &dev,
                )?,
                _ => Tensor::ones(shape, dt, &dev)?, // D = 1 (Flax)
            }
        } else if leaf == "bias" {
            Tensor::zeros(shape, dt, &dev)?
        } else if name.starts_with("cls.predictions.transform.dense")
            || (cfg.dense_init == DenseInit::Lecun && name.contains(".encoder."))
        {
            // lecun-normal (Flax's default; the reference uses it for the head transform)
            let fan_in = shape.dims()[1] as f64;
            normal(rng, shape, 0.0, (1.0 / fan_in).sqrt(), dt, &dev)?
        } else {
            normal(rng, shape, 0.0, cfg.initializer_range, dt, &dev)?
        };
        var.set(&t)?;
    }
    Ok(())
}

/// A model together with the variables that hold its weights.
pub struct LoadedBigs {
    pub model: BigsForMaskedLm,
    pub varmap: VarMap,
    pub report: LoadReport,
    pub weights_path: PathBuf,
}

/// Builds a fresh model (seeded initialisation) with its VarMap.
pub fn build_bigs(
    cfg: &BigsConfig,
    dtype: DType,
    dev: &Device,
    rng: &mut ChaCha8Rng,
) -> Result<(BigsForMaskedLm, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, dev);
    let model = BigsForMaskedLm::new(cfg, vb)?;
    init_weights(&varmap, cfg, rng)?;
    Ok((model, varmap))
}

/// Loads a model from a checkpoint file (`.safetensors` or PyTorch `.bin`) for a given config.
/// The tied decoder entries may be present or absent.
pub fn load_bigs(
    cfg: &BigsConfig,
    weights: &Path,
    dtype: DType,
    dev: &Device,
) -> Result<LoadedBigs> {
    let tensors = read_checkpoint(weights, dev)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, dev);
    let model = BigsForMaskedLm::new(cfg, vb)?;
    let mut report = load_varmap(&varmap, &tensors, weights)?;
    // Tied (decoder) and non-MLM entries are expected extras, not surprises.
    report.unused.retain(|n| {
        !matches!(
            n.as_str(),
            "cls.predictions.decoder.weight"
                | "cls.predictions.decoder.bias"
                | "bigs.embeddings.position_ids"
                | "bert.embeddings.position_ids"
        )
    });
    Ok(LoadedBigs {
        model,
        varmap,
        report,
        weights_path: weights.into(),
    })
}
