//! The presets, all in one place (`ssmlab train --list-presets`).

use std::path::PathBuf;

use super::config::{ConfigError, DataSection, OptimSection, RunConfig, RunSection, TrainSection};
use super::diffusion::{
    ClassifierSection, DiffusionRunConfig, DiffusionTrainSection, ImageDataSection,
};
use crate::data::mlm::MaskingConfig;
use crate::engine::bigs::{BigsConfig, DenseInit, Encoder};
use crate::engine::conv::ConvPath;
use crate::engine::diffusion::DiffusionConfig;
use crate::engine::diffussm::{CondInit, DiffusionEncoder, DiffussmConfig, PosEmbed};
use crate::engine::init::AInit;
use crate::engine::nn::Gelu;
use crate::engine::ssm::KernelMode;

/// (name, one-line description)
pub const PRESETS: &[(&str, &str)] = &[
    (
        "bigs-tiny",
        "BiGS 2×64 on Moby-Dick, 8k WordPiece, L=128, 4000 steps: under 10 minutes on 2 CPU cores",
    ),
    (
        "bigs-mobydick",
        "BiGS 4×128 on Moby-Dick, 8k WordPiece, L=128, 2500 steps: the shipped checkpoint's recipe (~25 min on 2 idle cores)",
    ),
    (
        "bert-tiny",
        "attention baseline of bigs-tiny: BERT 2×64, 4 heads, MLP 192 (equal parameters), same data, seed and budget",
    ),
    (
        "bert-mobydick",
        "attention baseline of bigs-mobydick: BERT 4×128, 4 heads, MLP 384 (equal parameters)",
    ),
    (
        "bigs-long",
        "bigs-tiny's model at L=1024, 4 sequences a step, 1000 steps (4.1M tokens): the long-context case",
    ),
    (
        "bert-long",
        "attention baseline of bigs-long: BERT 2×64 at L=1024, equal parameters, same data and tokens",
    ),
    (
        "bigs-bert-vocab",
        "bigs-tiny with the bert-base-uncased vocabulary of the released BiGS checkpoints",
    ),
    (
        "diffussm-fashion",
        "DiffuSSM 4×128 on Fashion-MNIST 28×28 (shipped 10k test split, 4×4 patches), class-conditional with CFG, 2500 steps: the shipped checkpoint's recipe (~25 min on 2 cores)",
    ),
    (
        "dit-fashion",
        "attention twin of diffussm-fashion: DiT 4×128 (4 heads, MLP 512; equal parameters), same patches, conditioning, sampler, data and budget",
    ),
    (
        "dit-smoke",
        "attention twin of diffussm-smoke: seconds, for tests",
    ),
    (
        "diffussm-smoke",
        "DiffuSSM 2×16 on Fashion-MNIST, a few steps: seconds, for tests",
    ),
    (
        "bert-smoke",
        "attention baseline of bigs-smoke: seconds, for tests",
    ),
    (
        "bigs-smoke",
        "BiGS 2×32 on Moby-Dick, L=32: seconds, for tests and trying the tool",
    ),
];

/// A preset of either run kind.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // the boxed diffusion config is the large one
pub enum AnyConfig {
    Mlm(RunConfig),
    Diffusion(Box<DiffusionRunConfig>),
}

/// Whether a preset trains a diffusion model.
pub fn is_diffusion_preset(name: &str) -> bool {
    name.starts_with("diffussm") || name.starts_with("dit-")
}

/// The configuration of a preset of either kind.
pub fn any_preset(name: &str) -> Result<AnyConfig, ConfigError> {
    if is_diffusion_preset(name) {
        diffusion_preset(name).map(|c| AnyConfig::Diffusion(Box::new(c)))
    } else {
        preset(name).map(AnyConfig::Mlm)
    }
}

/// The DiffuSSM presets.
pub fn diffusion_preset(name: &str) -> Result<DiffusionRunConfig, ConfigError> {
    let mut c = DiffusionRunConfig {
        run: RunSection {
            name: name.into(),
            seed: 0,
            preset: name.into(),
            model: "diffussm".into(),
        },
        model: DiffussmConfig {
            patch_size: 4,
            hidden_size: 128,
            num_layers: 4,
            hourglass: 1,
            fusion_width: 256,
            state_size: 32,
            kernel: KernelMode::PerChannel,
            pos_embed: PosEmbed::Sincos2d,
            cond_init: CondInit::Unit,
            ..DiffussmConfig::default()
        },
        diffusion: DiffusionConfig::default(),
        data: ImageDataSection {
            images: PathBuf::from("datasets/fashion-mnist"),
            val_fraction: 0.05,
            hflip: true,
        },
        optim: OptimSection {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            ssm_lr_scale: 1.0,
            ssm_weight_decay: false,
        },
        train: DiffusionTrainSection {
            steps: 2500,
            batch_size: 32,
            log_every: 10,
            eval_every: 250,
            eval_batches: 4,
            checkpoint_every: 250,
            keep_checkpoints: 1,
            ema_decay: 0.995,
            sample_every: 500,
            sample_seed: 0,
            sample_rows: 2,
            sample_steps: 50,
            guidance: 2.0,
            trajectory_frames: 6,
            cas_every: 1000,
            cas_samples: 100,
            cas_steps: 25,
            data_parallel: 0,
        },
        classifier: ClassifierSection {
            hidden: vec![256, 128],
            epochs: 8,
            batch_size: 128,
            lr: 2e-3,
        },
    };
    if let Some(twin) = name.strip_prefix("dit-") {
        let mut c = diffusion_preset(&format!("diffussm-{twin}"))?;
        c.run.name = name.into();
        c.run.preset = name.into();
        c.run.model = "dit".into();
        let m = &mut c.model;
        m.encoder = DiffusionEncoder::Attention;
        // Parameters equal to the DiffuSSM twin within 2% (tests/suite/dit.rs): a DiT block has
        // 10·D² + 2·D·F weights, a DiffuSSM block (M = 1, F = 2D) 18·D² plus its SSMs, so
        // F = 4D (DiT's MLP ratio); the smoke twin (M = 4) needs F = 6D.
        (m.num_heads, m.fusion_width) = match twin {
            "fashion" => (4, 4 * m.hidden_size),
            _ => (2, 6 * m.hidden_size),
        };
        return Ok(c);
    }
    match name {
        "diffussm-fashion" => {}
        "diffussm-smoke" => {
            c.model.hidden_size = 16;
            c.model.fusion_width = 32;
            c.model.num_layers = 2;
            c.model.state_size = 8;
            c.model.hourglass = 4;
            c.model.patch_size = 2;
            c.train = DiffusionTrainSection {
                steps: 6,
                batch_size: 8,
                log_every: 2,
                eval_every: 3,
                eval_batches: 1,
                checkpoint_every: 3,
                sample_every: 3,
                sample_rows: 1,
                sample_steps: 4,
                trajectory_frames: 2,
                cas_every: 0,
                cas_samples: 20,
                cas_steps: 2,
                data_parallel: 2,
                ..c.train
            };
            c.classifier.epochs = 1;
            c.classifier.hidden = vec![32];
        }
        _ => return Err(ConfigError::UnknownPreset(name.into())),
    }
    Ok(c)
}

fn bigs(hidden: usize, inter: usize, layers: usize, n: usize, max_pos: usize) -> BigsConfig {
    BigsConfig {
        vocab_size: 8192,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_ssm: n,
        max_position_embeddings: max_pos,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_dropout_prob: 0.0,
        pad_token_id: 0,
        pre_norm: true,
        hidden_act: "gelu".into(),
        layer_gelu: Gelu::Tanh,
        ssm_init: AInit::Hippo,
        conv: ConvPath::Auto,
        initializer_range: 0.02,
        dense_init: DenseInit::Lecun,
        encoder: Encoder::Bigs,
        num_attention_heads: 0,
    }
}

/// The attention baseline of a BiGS preset: the same embeddings, head, depth, width, data,
/// optimiser and budget, with BERT layers whose MLP width makes the parameter counts equal
/// (a BiGS layer has 3·H·I + 4·H² weights, a BERT layer 4·H² + 2·H·I': I' = 1.5·I).
fn attention_twin(mut c: RunConfig, name: &str, heads: usize) -> RunConfig {
    c.run.name = name.into();
    c.run.preset = name.into();
    c.run.model = "bert".into();
    c.model.encoder = Encoder::Attention;
    c.model.num_attention_heads = heads;
    c.model.intermediate_size = c.model.intermediate_size * 3 / 2;
    c
}

/// Moby-Dick with the WordPiece vocabulary trained on it (`ssmlab tokenizer train --corpus
/// datasets/moby-dick.txt --vocab-size 8192`): a quarter of BERT's vocabulary, so the MLM head
/// costs a quarter as much.
fn moby(seq_len: usize) -> DataSection {
    DataSection {
        corpus: PathBuf::from("datasets/moby-dick.txt"),
        tokenizer: PathBuf::from("datasets/moby-dick-wordpiece-8k.json"),
        seq_len,
        val_fraction: 0.05,
        masking: MaskingConfig::default(),
    }
}

fn optim(lr: f64, warmup: u64) -> OptimSection {
    OptimSection {
        lr,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-6,
        weight_decay: 0.01,
        warmup_steps: warmup,
        min_lr_ratio: 0.1,
        grad_clip: 1.0,
        ssm_lr_scale: 1.0,
        ssm_weight_decay: false,
    }
}

/// The configuration of a preset.
pub fn preset(name: &str) -> Result<RunConfig, ConfigError> {
    let run = |seed| RunSection {
        name: name.into(),
        seed,
        preset: name.into(),
        model: "bigs".into(),
    };
    let train = |steps, batch, eval_every| TrainSection {
        steps,
        batch_size: batch,
        grad_accum: 1,
        log_every: 10,
        eval_every,
        eval_batches: 8,
        checkpoint_every: eval_every,
        keep_checkpoints: 2,
    };
    Ok(match name {
        // 4000 steps at lr 3e-3: the recipe `ssmlab sweep` found to reach 4× the
        // most-frequent-target baseline within 10 minutes on 2 cores (README, "Do we need
        // attention?"; 2000 steps gave 3.6×).
        "bigs-tiny" => RunConfig {
            run: run(0),
            model: bigs(64, 128, 2, 32, 128),
            data: moby(128),
            optim: optim(3e-3, 50),
            train: train(4000, 16, 200),
        },
        "bigs-bert-vocab" => {
            let mut c = preset("bigs-tiny")?;
            c.run = run(0);
            c.model.vocab_size = 30522;
            c.data.tokenizer = PathBuf::from("datasets/bert-base-uncased-vocab.txt");
            c
        }
        "bert-tiny" => attention_twin(preset("bigs-tiny")?, name, 4),
        "bigs-long" => {
            // bigs-tiny's model at L = 1024: 4 sequences a step, 4.1M tokens.
            let mut c = preset("bigs-tiny")?;
            c.run = run(0);
            c.model.max_position_embeddings = 1024;
            c.data = moby(1024);
            c.train = train(1000, 4, 100);
            // the held-out split is 5% of ~250 sequences
            c.train.eval_batches = 3;
            c
        }
        "bert-long" => attention_twin(preset("bigs-long")?, name, 4),
        "bert-smoke" => attention_twin(preset("bigs-smoke")?, name, 2),
        "bert-mobydick" => attention_twin(preset("bigs-mobydick")?, name, 4),
        "bigs-mobydick" => RunConfig {
            run: run(0),
            model: bigs(128, 256, 4, 64, 128),
            data: moby(128),
            optim: optim(2e-3, 100),
            train: train(2500, 16, 500),
        },
        "bigs-smoke" => {
            let mut c = RunConfig {
                run: run(0),
                model: bigs(32, 48, 2, 8, 32),
                data: moby(32),
                optim: optim(3e-3, 5),
                train: train(40, 8, 20),
            };
            c.train.log_every = 5;
            c.train.eval_batches = 2;
            c
        }
        _ => return Err(ConfigError::UnknownPreset(name.into())),
    })
}
