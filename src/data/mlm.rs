//! Masked-LM data: packing documents into fixed-length sequences, BERT masking, and a seeded,
//! resumable order over the sequences.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::corpus::Document;
use super::tokenizer::{Specials, TextTokenizer};
use super::{DataError, Result};

/// Label value of positions that are not predicted (PyTorch's ignore index).
pub const IGNORE: i64 = -100;

/// Packs documents into sequences of exactly `seq_len` tokens: the documents' tokens are
/// concatenated with `[SEP]` between documents, cut into pieces of `seq_len − 2`, and each piece
/// is wrapped as `[CLS] … [SEP]`; the last piece is padded with `[PAD]`.
pub fn pack(docs: &[Document], tok: &TextTokenizer, seq_len: usize) -> Result<Vec<Vec<u32>>> {
    if seq_len < 3 {
        return Err(DataError::Invalid(format!(
            "sequence length {seq_len} is too short: [CLS] and [SEP] alone take 2 tokens"
        )));
    }
    let s = tok.specials;
    let mut stream = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            stream.push(s.sep);
        }
        stream.extend(tok.encode(&d.text)?);
    }
    let content = seq_len - 2;
    Ok(stream
        .chunks(content)
        .map(|piece| {
            let mut seq = Vec::with_capacity(seq_len);
            seq.push(s.cls);
            seq.extend_from_slice(piece);
            seq.push(s.sep);
            seq.resize(seq_len, s.pad);
            seq
        })
        .collect())
}

/// How tokens are masked (BERT: 15 %, of those 80 % [MASK], 10 % random, 10 % unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaskingConfig {
    pub prob: f64,
    pub mask_frac: f64,
    pub random_frac: f64,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            prob: 0.15,
            mask_frac: 0.8,
            random_frac: 0.1,
        }
    }
}

/// Masks one batch of sequences. Special tokens are never chosen; every sequence with a
/// maskable token gets at least one prediction. Returns (input ids, labels), both flat (B·L).
pub fn mask_batch(
    seqs: &[&[u32]],
    specials: Specials,
    vocab_size: usize,
    cfg: MaskingConfig,
    rng: &mut ChaCha8Rng,
) -> (Vec<u32>, Vec<i64>) {
    let is_special = |t: u32| {
        [
            specials.pad,
            specials.unk,
            specials.cls,
            specials.sep,
            specials.mask,
        ]
        .contains(&t)
    };
    let mut ids = Vec::new();
    let mut labels = Vec::new();
    for seq in seqs {
        let start = ids.len();
        let mut chosen = 0;
        for &t in seq.iter() {
            let pick = !is_special(t) && rng.random::<f64>() < cfg.prob;
            if pick {
                chosen += 1;
                labels.push(t as i64);
                ids.push(replacement(t, specials, vocab_size, cfg, rng));
            } else {
                labels.push(IGNORE);
                ids.push(t);
            }
        }
        if chosen == 0 {
            let cand: Vec<usize> = (0..seq.len()).filter(|&i| !is_special(seq[i])).collect();
            if !cand.is_empty() {
                let i = cand[rng.random_range(0..cand.len())];
                labels[start + i] = seq[i] as i64;
                ids[start + i] = replacement(seq[i], specials, vocab_size, cfg, rng);
            }
        }
    }
    (ids, labels)
}

fn replacement(
    t: u32,
    s: Specials,
    vocab_size: usize,
    cfg: MaskingConfig,
    rng: &mut ChaCha8Rng,
) -> u32 {
    let r = rng.random::<f64>();
    if r < cfg.mask_frac {
        s.mask
    } else if r < cfg.mask_frac + cfg.random_frac {
        loop {
            let c = rng.random_range(0..vocab_size as u32);
            if ![s.pad, s.unk, s.cls, s.sep, s.mask].contains(&c) {
                break c;
            }
        }
    } else {
        t
    }
}

/// Where a run is in its data: epoch and position in that epoch's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCursor {
    pub epoch: u64,
    pub pos: usize,
}

/// A seeded order over `n` sequences: a fresh permutation each epoch, derived from (seed, epoch),
/// so a cursor alone restores the exact order after a resume.
#[derive(Debug, Clone)]
pub struct Sampler {
    n: usize,
    seed: u64,
    epoch: u64,
    order: Vec<usize>,
}

impl Sampler {
    pub fn new(n: usize, seed: u64) -> Self {
        let mut s = Self {
            n,
            seed,
            epoch: u64::MAX,
            order: Vec::new(),
        };
        s.load_epoch(0);
        s
    }

    fn load_epoch(&mut self, epoch: u64) {
        if self.epoch == epoch {
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = (0..self.n).collect();
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        self.order = order;
        self.epoch = epoch;
    }

    /// The next `batch` sequence indices, advancing `cursor` (across epochs as needed).
    pub fn next_batch(&mut self, cursor: &mut DataCursor, batch: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(batch);
        while out.len() < batch {
            if cursor.pos >= self.n {
                cursor.epoch += 1;
                cursor.pos = 0;
            }
            self.load_epoch(cursor.epoch);
            out.push(self.order[cursor.pos]);
            cursor.pos += 1;
        }
        out
    }
}

/// A random generator for one purpose at one step, derived from the run seed: the same
/// (seed, purpose, step) always gives the same numbers, so no generator state needs restoring.
pub fn step_rng(seed: u64, purpose: u64, step: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(step);
    rng
}
