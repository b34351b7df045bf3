//! Tokenisation with the model's own `tokenizer.json` (HF tokenizers), truncated longest-first to
//! the recipe's max length and never padded here: batches are padded to their longest sequence.

use std::path::{Path, PathBuf};

use petnas_core::inventory::Family;
use tokenizers::{
    PaddingParams, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Result, TrainError};
use crate::glue::Example;

/// One tokenised example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, with the family's special tokens.
    pub ids: Vec<u32>,
    /// Segment ids (all zero for RoBERTa, which has one token type).
    pub type_ids: Vec<u32>,
}

/// A tokenizer set up for petnas: truncation on, padding off.
pub struct TextTokenizer {
    tok: Tokenizer,
    family: Family,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` and sets truncation to `max_len` (longest first, as transformers).
    pub fn from_file(path: &Path, family: Family, max_len: usize) -> Result<Self> {
        let err = |m: String| TrainError::Tokenizer {
            path: path.to_path_buf(),
            message: m,
        };
        let mut tok = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        // The family decides position ids and segment ids: a tokenizer of the other family means
        // a config.json that does not describe these files.
        let (cls, other, want) = match family {
            Family::Bert => ("[CLS]", "<s>", "bert"),
            Family::Roberta => ("<s>", "[CLS]", "roberta"),
        };
        if tok.token_to_id(cls).is_none() && tok.token_to_id(other).is_some() {
            return Err(err(format!(
                "this tokenizer has {other}, not {cls}: it belongs to another model family than config.json's model_type ({want}-style)"
            )));
        }
        // Truncation needs room for the special tokens of a pair and one token of each text;
        // below that the tokenizers crate silently stops truncating.
        let specials = tok
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, true));
        if max_len < specials + 2 {
            return Err(err(format!("max length {max_len} leaves no room for text: a pair takes {specials} special tokens (use at least {})", specials + 2)));
        }
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| err(e.to_string()))?;
        tok.with_padding(None::<PaddingParams>);
        Ok(Self {
            tok,
            family,
            path: path.to_path_buf(),
        })
    }

    /// Encodes one text or text pair.
    pub fn encode(&self, a: &str, b: Option<&str>) -> Result<Encoded> {
        let enc = match b {
            Some(b) => self.tok.encode((a, b), true),
            None => self.tok.encode(a, true),
        }
        .map_err(|e| TrainError::Tokenizer {
            path: self.path.clone(),
            message: format!("{e} (text: {a:.60})"),
        })?;
        let ids = enc.get_ids().to_vec();
        let type_ids = match self.family {
            Family::Bert => enc.get_type_ids().to_vec(),
            Family::Roberta => vec![0; ids.len()],
        };
        Ok(Encoded { ids, type_ids })
    }

    /// Encodes examples in parallel (order kept).
    pub fn encode_all(&self, examples: &[Example]) -> Result<Vec<Encoded>> {
        use rayon::prelude::*;
        examples
            .par_iter()
            .map(|e| self.encode(&e.text_a, e.text_b.as_deref()))
            .collect()
    }
}
