//! Tokenizers through the `tokenizers` crate: any HF `tokenizer.json`, or a BERT `vocab.txt`
//! (WordPiece with BERT's normaliser and pre-tokeniser, as bert-base-uncased), and training a
//! WordPiece vocabulary with the BERT special tokens.

use std::path::{Path, PathBuf};

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::{DataError, Result};

/// The BERT special tokens, which masked-LM training needs.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Specials {
    pub pad: u32,
    pub unk: u32,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
}

/// A tokenizer with known special-token ids.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pub specials: Specials,
    pub source: PathBuf,
}

fn tok_err(path: &Path, msg: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer {
        path: path.into(),
        msg: msg.to_string(),
    }
}

#[allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "the BERT pre-tokenizer/normalizer combination is fixed and tested"
)]
fn bert_pipeline(model: WordPiece) -> Tokenizer {
    let mut t = Tokenizer::new(model);
    t.with_normalizer(Some(BertNormalizer::default()))
        .expect("BertNormalizer is a valid normaliser");
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_decoder(Some(WordPieceDecoder::default()));
    t
}

impl TextTokenizer {
    /// `tokenizer.json` (any HF tokenizer) or a BERT `vocab.txt`; a directory is searched for
    /// either, in that order.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            for name in ["tokenizer.json", "vocab.txt"] {
                let p = path.join(name);
                if p.exists() {
                    return Self::load(&p);
                }
            }
            return Err(tok_err(
                path,
                "folder has neither tokenizer.json nor vocab.txt",
            ));
        }
        if !path.exists() {
            return Err(tok_err(path, "no such file"));
        }
        let inner = if path.extension().and_then(|e| e.to_str()) == Some("json") {
            Tokenizer::from_file(path).map_err(|e| tok_err(path, e))?
        } else {
            let wp = WordPiece::from_file(&path.to_string_lossy())
                .unk_token("[UNK]".into())
                .build()
                .map_err(|e| tok_err(path, format!("not a WordPiece vocab.txt: {e}")))?;
            bert_pipeline(wp)
        };
        Self::with_specials(inner, path)
    }

    fn with_specials(mut inner: Tokenizer, path: &Path) -> Result<Self> {
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                tok_err(
                    path,
                    format!("has no `{t}` token; masked-LM training needs {SPECIAL_TOKENS:?}"),
                )
            })
        };
        let specials = Specials {
            pad: id("[PAD]")?,
            unk: id("[UNK]")?,
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            mask: id("[MASK]")?,
        };
        // Special tokens are matched in raw text ("[MASK]" in a probe prompt), never split.
        let added: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        inner
            .add_special_tokens(added)
            .map_err(|e| tok_err(path, format!("cannot register special tokens: {e}")))?;
        if inner.get_post_processor().is_none() {
            inner.with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), specials.sep),
                ("[CLS]".into(), specials.cls),
            )));
        }
        Ok(Self {
            inner,
            specials,
            source: path.into(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tok_err(&self.source, e))?
            .get_ids()
            .to_vec())
    }

    /// Token ids and their surface tokens (for display).
    pub fn encode_with_tokens(&self, text: &str) -> Result<(Vec<u32>, Vec<String>)> {
        let e = self
            .inner
            .encode(text, false)
            .map_err(|e| tok_err(&self.source, e))?;
        Ok((e.get_ids().to_vec(), e.get_tokens().to_vec()))
    }

    pub fn id_to_token(&self, id: u32) -> String {
        self.inner
            .id_to_token(id)
            .unwrap_or_else(|| format!("<{id}>"))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    pub fn is_special(&self, id: u32) -> bool {
        let s = self.specials;
        [s.pad, s.unk, s.cls, s.sep, s.mask].contains(&id)
    }

    /// Saves as `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, true)
            .map_err(|e| tok_err(path, format!("cannot save: {e}")))
    }
}

/// Trains a WordPiece vocabulary of `vocab_size` entries (BERT specials first) on the documents
/// of a corpus (`source` names it in errors) and returns the tokenizer (BERT normaliser and
/// pre-tokeniser).
pub fn train_wordpiece(
    docs: &[super::corpus::Document],
    vocab_size: usize,
    source: &Path,
) -> Result<TextTokenizer> {
    if vocab_size < SPECIAL_TOKENS.len() + 26 {
        return Err(DataError::Invalid(format!(
            "--vocab-size {vocab_size} is too small for the special tokens and an alphabet"
        )));
    }
    let wp = WordPiece::builder()
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| DataError::Invalid(e.to_string()))?;
    let mut tok = bert_pipeline(wp);
    let mut trainer: tokenizers::models::TrainerWrapper = WordPieceTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|t| AddedToken::from(t.to_string(), true))
                .collect(),
        )
        .build()
        .into();
    tok.train(&mut trainer, docs.iter().map(|d| d.text.as_str()))
        .map_err(|e| tok_err(source, format!("training failed: {e}")))?;
    TextTokenizer::with_specials(tok, source)
}
