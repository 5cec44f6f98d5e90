//! The benchmark suite (`ssmlab bench` with no case named): every case of the performance
//! issue in one run, one JSON object per case, ratios of the optimisations measured side by
//! side, and the model FLOP utilisation (MFU) of each training case against the machine's
//! matmul ceiling measured in the same run.
//!
//! Each case runs in a child process (`ssmlab bench case '<spec json>'`), so the peak resident
//! memory it reports is its own, and one case's allocator state cannot slow the next.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::compare::step::Head;
use crate::compare::step::{StepHow, bigs_step_seconds, masked_per_seq, timed};
use crate::engine::Result;
use crate::engine::bigs::BigsConfig;
use crate::engine::conv::{ConvPath, causal_conv};
use crate::engine::cpu::fused;
use crate::engine::device::parse_device;
use crate::engine::nn::Gelu;

/// One case of the suite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Case {
    /// GFLOP/s of an n×n by n×n f32 matmul through candle (best of `reps`).
    Matmul { n: usize, reps: usize },
    /// A BiGS training step: forward, backward, AdamW.
    BigsTrain {
        name: String,
        model: BigsConfig,
        batch: usize,
        seq_len: usize,
        head: Head,
        reps: usize,
        /// Data-parallel shards (`train::parallel`; 0 = one per core).
        #[serde(default = "one")]
        shards: usize,
        /// AdamW as a dozen tensor ops per parameter instead of the fused in-place update.
        #[serde(default)]
        unfused_optim: bool,
        /// BiGS layers built from candle ops instead of the one-node fused layer.
        #[serde(default)]
        op_layers: bool,
        /// The step through candle's autograd graph (with the fused nodes) instead of the
        /// fused masked-LM step without a graph.
        #[serde(default)]
        graph_step: bool,
    },
    /// A DiffuSSM training step at `batch` with `shards` data-parallel shards.
    DiffussmTrain {
        name: String,
        shards: usize,
        batch: usize,
        reps: usize,
        /// Blocks and kernels from candle ops (the device-generic path) instead of fused nodes.
        #[serde(default)]
        op_blocks: bool,
    },
    /// Sampling `n` images with `steps` DDIM steps and guidance 2.
    DiffussmSample { n: usize, steps: usize },
    /// Causal convolution forward + backward, shared (BiGS) kernel.
    Conv {
        path: ConvPath,
        b: usize,
        c: usize,
        l: usize,
        reps: usize,
    },
    /// GELU forward + backward over `n` values: the fused op or candle's own.
    Gelu {
        fused: bool,
        /// Exact (erf; loaded checkpoints) or tanh (what the BiGS presets train with).
        #[serde(default)]
        gelu: Gelu,
        n: usize,
        reps: usize,
    },
}

impl Case {
    pub fn label(&self) -> String {
        match self {
            Case::Matmul { n, .. } => format!("matmul {n}³"),
            Case::BigsTrain { name, .. } | Case::DiffussmTrain { name, .. } => name.clone(),
            Case::DiffussmSample { n, steps } => format!("diffussm sample {n}×{steps} DDIM"),
            Case::Conv { path, l, .. } => format!("conv {} L={l}", path_name(*path)),
            Case::Gelu {
                fused, gelu: kind, ..
            } => format!(
                "gelu {} {}",
                if *kind == Gelu::Tanh { "tanh" } else { "exact" },
                if *fused { "fused" } else { "candle" }
            ),
        }
    }
}

fn path_name(p: ConvPath) -> &'static str {
    match p {
        ConvPath::Fft => "fft",
        ConvPath::Dense => "dense",
        ConvPath::Auto => "auto",
    }
}

fn one() -> usize {
    1
}

/// The reference BiGS of the performance issue: d_model 256, 4 layers, intermediate 768,
/// N = 64, BERT's vocabulary (30 522), positions up to `max_pos`.
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "presets of the fixed list exist (tested)"
)]
pub fn reference_bigs(max_pos: usize) -> BigsConfig {
    let mut c = crate::train::presets::preset("bigs-mobydick")
        .expect("preset")
        .model;
    c.vocab_size = 30522;
    c.hidden_size = 256;
    c.intermediate_size = 768;
    c.num_hidden_layers = 4;
    c.num_ssm = 64;
    c.max_position_embeddings = max_pos;
    c
}

/// Analytic FLOPs of one MLM training step (BiGS or its attention twin) over `tokens` tokens
/// of sequences of length `l` (forward + backward = 3 × forward, 2 FLOPs per multiply-
/// accumulate), counting the matmuls only: per token and layer
/// [`BigsConfig::layer_macs_per_token`], and the head's H² + H·V at the positions it runs at.
/// The FFT convolutions and element-wise ops are not counted (as MFU conventionally does).
pub fn bigs_step_flops(c: &BigsConfig, tokens: usize, l: usize, head_positions: usize) -> f64 {
    let (h, v) = (c.hidden_size as f64, c.vocab_size as f64);
    let body = tokens as f64 * c.num_hidden_layers as f64 * c.layer_macs_per_token(l);
    let head = head_positions as f64 * (h * h + h * v);
    6.0 * (body + head)
}

/// Masked positions per sequence (15%, at least one).
/// Environment variable through which the suite tells its child processes the device.
pub const DEVICE_ENV: &str = "SSMLAB_BENCH_DEVICE";

/// The device of this benchmark process (the suite's `--device`; the CPU by default).
pub fn bench_device() -> Result<Device> {
    parse_device(&std::env::var(DEVICE_ENV).unwrap_or_else(|_| "cpu".into()))
}

/// Peak resident memory of this process in MiB (VmHWM), where /proc has it.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Run one case in this process; the JSON object it reports (without MFU, which needs the
/// ceiling).
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "presets of the fixed list exist (tested); `json!({..})` literals are objects; derived Serialize of plain fields cannot fail"
)]
pub fn run_case(case: &Case) -> Result<Value> {
    let dev = bench_device()?;
    let mut out = match case {
        Case::Matmul { n, reps } => {
            let a = Tensor::randn(0f32, 1., (*n, *n), &dev)?;
            let b = Tensor::randn(0f32, 1., (*n, *n), &dev)?;
            let mut best = f64::INFINITY;
            a.matmul(&b)?;
            for _ in 0..(*reps).max(1) {
                let t0 = Instant::now();
                let c = a.matmul(&b)?;
                let _ = c.dims();
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let flops = 2.0 * (*n as f64).powi(3);
            json!({"seconds": best, "gflops": flops / best / 1e9})
        }
        Case::BigsTrain {
            model,
            batch,
            seq_len,
            head,
            reps,
            shards,
            unfused_optim,
            op_layers,
            graph_step,
            ..
        } => {
            let _layers = crate::engine::cpu::set_enabled(!*op_layers);
            let how = StepHow {
                head: *head,
                shards: *shards,
                fused_optim: !*unfused_optim,
                graph: *graph_step,
            };
            bigs_train(model, *batch, *seq_len, how, *reps, &dev)?
        }
        Case::DiffussmTrain {
            shards,
            batch,
            reps,
            op_blocks,
            ..
        } => {
            let _blocks = crate::engine::cpu::set_enabled(!*op_blocks);
            let cfg = crate::train::presets::diffusion_preset("diffussm-fashion")
                .expect("preset")
                .model;
            let (step_s, _) = super::bench_diffussm(&cfg, *batch, *reps, 0, 0, 2.0, *shards, &dev)?;
            let flops = 6.0 * cfg.macs_per_image() * *batch as f64;
            json!({"step_s": step_s, "images_per_s": *batch as f64 / step_s,
                   "flops_per_step": flops, "model": cfg})
        }
        Case::DiffussmSample { n, steps } => {
            let cfg = crate::train::presets::diffusion_preset("diffussm-fashion")
                .expect("preset")
                .model;
            let (_, sample_s) = super::bench_diffussm(&cfg, 1, 1, *n, *steps, 2.0, 1, &dev)?;
            // Guidance runs the model on 2n images per step.
            let flops = 2.0 * cfg.macs_per_image() * (2 * n * steps) as f64;
            json!({"seconds": sample_s, "guidance": 2.0, "images_per_s": *n as f64 / sample_s,
                   "gflops": flops / sample_s / 1e9})
        }
        Case::Conv {
            path,
            b,
            c,
            l,
            reps,
        } => {
            let u = Var::from_tensor(&Tensor::randn(0f32, 1., (*b, *c, *l), &dev)?)?;
            let k = Var::from_tensor(&Tensor::randn(0f32, 1., (1, *l), &dev)?)?;
            let w = Tensor::randn(0f32, 1., (*b, *c, *l), &dev)?;
            let s = timed(*reps, || {
                let y = causal_conv(u.as_tensor(), k.as_tensor(), *path)?;
                (y * &w)?.sum_all()?.backward()?;
                Ok(())
            })?;
            json!({"seconds": s})
        }
        Case::Gelu {
            fused,
            gelu: kind,
            n,
            reps,
        } => {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., *n, &dev)?)?;
            let s = timed(*reps, || {
                let x = x.as_tensor();
                let y = match (*fused, kind) {
                    (true, k) => fused::gelu(x, *k)?,
                    (false, Gelu::Exact) => x.gelu_erf()?,
                    (false, Gelu::Tanh) => x.gelu()?,
                };
                y.sum_all()?.backward()?;
                Ok(())
            })?;
            json!({"seconds": s})
        }
    };
    let obj = out.as_object_mut().expect("object");
    obj.insert("bench".into(), json!("suite"));
    obj.insert("case".into(), json!(case.label()));
    obj.insert("spec".into(), crate::engine::serial::json_value(case));
    obj.insert("peak_rss_mib".into(), json!(peak_rss_mib()));
    obj.insert("device".into(), json!(format!("{:?}", dev.location())));
    if crate::engine::cpu::prof::on() {
        obj.insert("stages".into(), stages_per_step());
    }
    Ok(out)
}

/// The stage table of the timed steps (`SSMLAB_PROFILE=1`), per step, longest first: wall
/// milliseconds, calls, and GFLOP/s of the products.
fn stages_per_step() -> Value {
    let table = crate::engine::cpu::prof::take();
    let steps = table.get("step").map_or(1, |s| s.calls.max(1)) as f64;
    let mut rows: Vec<_> = table.into_iter().collect();
    rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    rows.into_iter()
        .map(|(name, s)| {
            let mut v = json!({"stage": name, "ms_per_step": 1e3 * s.seconds / steps,
                               "calls_per_step": s.calls as f64 / steps});
            if s.flops > 0.0 {
                v["gflops"] = json!(s.flops / s.seconds / 1e9);
            }
            v
        })
        .collect()
}

fn bigs_train(
    cfg: &BigsConfig,
    batch: usize,
    l: usize,
    how: StepHow,
    reps: usize,
    dev: &Device,
) -> Result<Value> {
    let step_s = bigs_step_seconds(cfg, batch, l, how, reps, dev)?;
    let (head, shards) = (how.head, how.shards);
    let per = masked_per_seq(l);
    let tokens = batch * l;
    let head_positions = match head {
        Head::Masked => batch * per,
        Head::All => tokens,
        Head::None => 0,
    };
    let flops = bigs_step_flops(cfg, tokens, l, head_positions);
    Ok(
        json!({"step_s": step_s, "tokens_per_s": tokens as f64 / step_s,
              "s_per_token": step_s / tokens as f64, "batch": batch, "seq_len": l,
              "head": head, "shards": shards, "fused_optim": how.fused_optim,
              "flops_per_step": flops,
              "parameters": cfg.num_parameters()}),
    )
}

/// The suite's cases, in the order they run.
#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "presets of the fixed list exist (tested)"
)]
pub fn cases() -> Vec<Case> {
    let mut v = vec![Case::Matmul { n: 2048, reps: 5 }];
    for name in ["bigs-tiny", "bigs-mobydick"] {
        let c = crate::train::presets::preset(name).expect("preset");
        v.push(Case::BigsTrain {
            name: format!("{name} train"),
            model: c.model,
            batch: c.train.batch_size,
            seq_len: c.data.seq_len,
            head: Head::Masked,
            reps: 3,
            shards: 1,
            unfused_optim: false,
            op_layers: false,
            graph_step: false,
        });
    }
    for l in [128, 512] {
        for head in [Head::Masked, Head::All] {
            v.push(Case::BigsTrain {
                name: format!("reference L={l} head={}", head_name(head)),
                model: reference_bigs(512),
                batch: 16,
                seq_len: l,
                head,
                reps: match (l, head) {
                    (512, Head::All) => 2,
                    (128, _) => 5,
                    _ => 3,
                },
                shards: 1,
                unfused_optim: false,
                op_layers: false,
                graph_step: false,
            });
        }
    }
    // The reference step with one optimisation undone each: (name suffix, shards, unfused
    // AdamW, op-built layers, through the graph).
    for (what, shards, unfused_optim, op_layers, graph_step) in [
        ("sharded", 0, false, false, false),
        ("unfused AdamW", 1, true, false, false),
        ("graph step", 1, false, false, true),
        ("op-built layers", 1, false, true, false),
    ] {
        v.push(Case::BigsTrain {
            name: format!("reference L=128 head=masked {what}"),
            model: reference_bigs(512),
            batch: 16,
            seq_len: 128,
            head: Head::Masked,
            reps: 3,
            shards,
            unfused_optim,
            op_layers,
            graph_step,
        });
    }
    for l in SCALING_LENGTHS {
        v.push(Case::BigsTrain {
            name: format!("scaling L={l}"),
            model: reference_bigs(4096),
            batch: SCALING_TOKENS / l,
            seq_len: l,
            head: Head::None,
            reps: 2,
            shards: 1,
            unfused_optim: false,
            op_layers: false,
            graph_step: false,
        });
    }
    for shards in [1, 0] {
        v.push(Case::DiffussmTrain {
            name: format!(
                "diffussm train {}",
                if shards == 1 {
                    "op-parallel"
                } else {
                    "sharded"
                }
            ),
            shards,
            batch: 32,
            reps: 3,
            op_blocks: false,
        });
    }
    v.push(Case::DiffussmTrain {
        name: "diffussm train op-built blocks".into(),
        shards: 1,
        batch: 32,
        reps: 3,
        op_blocks: true,
    });
    v.push(Case::DiffussmSample { n: 16, steps: 50 });
    for l in [512, 2048] {
        for path in [ConvPath::Fft, ConvPath::Dense, ConvPath::Auto] {
            v.push(Case::Conv {
                path,
                b: 8,
                c: 256,
                l,
                reps: 3,
            });
        }
    }
    for kind in [Gelu::Tanh, Gelu::Exact] {
        for fused in [true, false] {
            v.push(Case::Gelu {
                fused,
                gelu: kind,
                n: 1 << 22,
                reps: 5,
            });
        }
    }
    v
}

/// Sequence lengths of the scaling cases, at a fixed budget of tokens per step.
/// The scaling cases time what `ssmlab compare --scaling` and the Compare view time.
pub const SCALING_LENGTHS: [usize; 6] = crate::compare::LENGTHS;
pub const SCALING_TOKENS: usize = crate::compare::TOKENS;

fn head_name(h: Head) -> &'static str {
    match h {
        Head::Masked => "masked",
        Head::All => "all",
        Head::None => "none",
    }
}

/// The cases timed side by side with the PyTorch peers (`scripts/peer-ab.sh` runs them):
/// the BiGS reference step, the DiffuSSM training step and DiffuSSM sampling.
pub const PEER_CASES: [&str; 3] = [
    "reference L=128 head=masked",
    "diffussm train op-parallel",
    "diffussm sample 16×50 DDIM",
];

/// Run every case in a child process of `exe` (`exe bench case SPEC`), calling `on_result`
/// with each result as it arrives (MFU added to training cases once the ceiling is known),
/// then with the ratios and the scaling summary.
pub fn run_suite(
    exe: &std::path::Path,
    keep: impl Fn(&str) -> bool,
    mut on_result: impl FnMut(&Value),
) -> anyhow::Result<Vec<Value>> {
    let mut results: Vec<Value> = Vec::new();
    let mut ceiling: Option<f64> = None;
    for case in cases() {
        let is_ceiling = matches!(case, Case::Matmul { .. });
        if !is_ceiling && !keep(&case.label()) {
            continue;
        }
        let mut r = run_child(exe, &case);
        if is_ceiling {
            ceiling = r["gflops"].as_f64();
        }
        if let (Some(fl), Some(s), Some(c)) =
            (r["flops_per_step"].as_f64(), r["step_s"].as_f64(), ceiling)
        {
            let achieved = fl / s / 1e9;
            r["gflops"] = json!(achieved);
            r["mfu"] = json!(achieved / c);
        }
        on_result(&r);
        results.push(r);
    }
    for extra in summaries(&results) {
        on_result(&extra);
        results.push(extra);
    }
    Ok(results)
}

fn run_child(exe: &std::path::Path, case: &Case) -> Value {
    let spec = crate::engine::serial::json(case);
    let t0 = Instant::now();
    let out = std::process::Command::new(exe)
        .args(["bench", "case", &spec])
        .stdin(std::process::Stdio::null())
        .output();
    let fail = |msg: String| json!({"bench": "suite", "case": case.label(), "error": msg});
    let mut v = match out {
        Err(e) => fail(format!("cannot start {}: {e}", exe.display())),
        Ok(o) if !o.status.success() => {
            let err = String::from_utf8_lossy(&o.stderr);
            fail(format!(
                "{} ({})",
                err.lines().last().unwrap_or("no message"),
                o.status
            ))
        }
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            match text.lines().last().map(serde_json::from_str::<Value>) {
                Some(Ok(v)) => v,
                _ => fail(format!("unreadable output: {text}")),
            }
        }
    };
    v["wall_s"] = json!(t0.elapsed().as_secs_f64());
    v
}

fn find<'a>(results: &'a [Value], case: &str) -> Option<&'a Value> {
    results
        .iter()
        .find(|r| r["case"] == case && r.get("error").is_none())
}

fn ratio(results: &[Value], what: &str, fast: &str, slow: &str, key: &str) -> Option<Value> {
    let (f, s) = (find(results, fast)?, find(results, slow)?);
    let (a, b) = (f[key].as_f64()?, s[key].as_f64()?);
    let speedup = if key.ends_with("_per_s") {
        a / b
    } else {
        b / a
    };
    Some(
        json!({"bench": "suite", "case": format!("ratio: {what}"), "optimisation": what,
                "after": fast, "before": slow, "speedup": speedup}),
    )
}

/// Side-by-side ratios of the optimisations and the scaling summary.
pub fn summaries(results: &[Value]) -> Vec<Value> {
    let mut v = Vec::new();
    for l in [128, 512] {
        v.extend(ratio(
            results,
            &format!("MLM head only at masked positions, reference L={l}"),
            &format!("reference L={l} head=masked"),
            &format!("reference L={l} head=all"),
            "tokens_per_s",
        ));
    }
    v.extend(ratio(
        results,
        "fused in-place AdamW instead of tensor ops, BiGS reference L=128",
        "reference L=128 head=masked",
        "reference L=128 head=masked unfused AdamW",
        "tokens_per_s",
    ));
    v.extend(ratio(
        results,
        "BiGS layer as one fused node instead of candle ops, reference L=128",
        "reference L=128 head=masked",
        "reference L=128 head=masked op-built layers",
        "tokens_per_s",
    ));
    v.extend(ratio(
        results,
        "masked-LM step without the autograd graph instead of through it, BiGS reference L=128",
        "reference L=128 head=masked",
        "reference L=128 head=masked graph step",
        "tokens_per_s",
    ));
    v.extend(ratio(
        results,
        "data-parallel shards instead of op-parallel threads, BiGS reference L=128",
        "reference L=128 head=masked sharded",
        "reference L=128 head=masked",
        "tokens_per_s",
    ));
    v.extend(ratio(
        results,
        "data-parallel shards instead of op-parallel threads, DiffuSSM batch 32",
        "diffussm train sharded",
        "diffussm train op-parallel",
        "images_per_s",
    ));
    v.extend(ratio(
        results,
        "fused DiffuSSM blocks and S4D kernels vs candle ops, batch 32",
        "diffussm train op-parallel",
        "diffussm train op-built blocks",
        "images_per_s",
    ));
    for l in [512, 2048] {
        v.extend(ratio(
            results,
            &format!("FFT instead of dense convolution, L={l}"),
            &format!("conv fft L={l}"),
            &format!("conv dense L={l}"),
            "seconds",
        ));
    }
    for kind in ["tanh", "exact"] {
        v.extend(ratio(
            results,
            &format!("fused {kind} GELU (one-pass backward) instead of candle's"),
            &format!("gelu {kind} fused"),
            &format!("gelu {kind} candle"),
            "seconds",
        ));
    }
    let points: Vec<(usize, f64)> = SCALING_LENGTHS
        .iter()
        .filter_map(|&l| {
            let r = find(results, &format!("scaling L={l}"))?;
            Some((l, r["s_per_token"].as_f64()?))
        })
        .collect();
    if let Some(&(l0, t0)) = points.first() {
        let rows: Vec<Value> = points
            .iter()
            .map(|&(l, t)| {
                let log_growth = (l as f64).log2() / (l0 as f64).log2();
                json!({"seq_len": l, "us_per_token": t * 1e6, "growth": t / t0,
                       "log_growth": log_growth})
            })
            .collect();
        let within = points
            .iter()
            .all(|&(l, t)| t / t0 <= (l as f64).log2() / (l0 as f64).log2() * 1.1);
        v.push(json!({"bench": "suite", "case": "scaling summary",
                      "tokens_per_step": SCALING_TOKENS, "head": "none", "rows": rows,
                      "within_log_growth": within}));
    }
    v
}

/// The human table of a suite run.
pub fn table(results: &[Value]) -> String {
    let f = |v: &Value, k: &str, scale: f64, prec: usize| {
        v[k].as_f64()
            .map_or("-".into(), |x| format!("{:.*}", prec, x * scale))
    };
    let mut s = format!(
        "{:<44} {:>10} {:>12} {:>8} {:>8} {:>9}\n",
        "case", "time ms", "per second", "GFLOP/s", "MFU", "peak MiB"
    );
    for r in results {
        let case = r["case"].as_str().unwrap_or("?");
        if let Some(e) = r["error"].as_str() {
            s += &format!("{case:<44} error: {e}\n");
            continue;
        }
        if let Some(sp) = r["speedup"].as_f64() {
            s += &format!("{case:<44} {sp:>10.2}x\n");
            continue;
        }
        if let Some(rows) = r["rows"].as_array() {
            s += &format!("{case:<44} within log growth: {}\n", r["within_log_growth"]);
            for row in rows {
                s += &format!(
                    "    L={:<6} {:>8.2} µs/token  growth {:>5.2}  (log bound {:.2})\n",
                    row["seq_len"],
                    row["us_per_token"].as_f64().unwrap_or(f64::NAN),
                    row["growth"].as_f64().unwrap_or(f64::NAN),
                    row["log_growth"].as_f64().unwrap_or(f64::NAN)
                );
            }
            continue;
        }
        let time = if r.get("step_s").is_some() {
            f(r, "step_s", 1e3, 1)
        } else {
            f(r, "seconds", 1e3, 1)
        };
        let rate = if r.get("tokens_per_s").is_some() {
            format!("{} tok", f(r, "tokens_per_s", 1.0, 0))
        } else if r.get("images_per_s").is_some() {
            format!("{} img", f(r, "images_per_s", 1.0, 1))
        } else {
            "-".into()
        };
        s += &format!(
            "{case:<44} {time:>10} {rate:>12} {:>8} {:>8} {:>9}\n",
            f(r, "gflops", 1.0, 1),
            f(r, "mfu", 1.0, 2),
            f(r, "peak_rss_mib", 1.0, 0)
        );
    }
    s
}
