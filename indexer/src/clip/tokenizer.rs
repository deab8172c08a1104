//! The code side's tokenizer: byte-level BPE trained on the corpus's code (tokenizers crate),
//! applied to a compact view of the code (comments dropped, numbers at 3 significant digits)
//! so the text window holds programs rather than float digits (`rag train clip` reports how
//! many programs still exceed it).

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::dialect::map_decimals;

/// The end-of-text token: appended to every sequence, its position pools the text vector, and
/// it pads the rest (the causal mask keeps padding out of the pooled position).
pub const END_TOKEN: &str = "<|endoftext|>";

/// Errors of training, loading or saving the tokenizer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenizerError(pub String);

/// A byte-level BPE tokenizer of CadQuery code, plus its end token id.
#[derive(Clone)]
pub struct CodeTokenizer {
    inner: Tokenizer,
    end_id: u32,
}

impl std::fmt::Debug for CodeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("end_id", &self.end_id)
            .finish()
    }
}

impl CodeTokenizer {
    /// Trains a byte-level BPE of `vocab_size` tokens on the code views of `codes`.
    pub fn train<'a>(
        codes: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
    ) -> Result<Self, TokenizerError> {
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(END_TOKEN, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        tokenizer
            .train(&mut trainer, codes.map(code_view))
            .map_err(|e| TokenizerError(format!("training the code tokenizer: {e}")))?;
        Self::from_tokenizer(tokenizer)
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self, TokenizerError> {
        let end_id = inner
            .token_to_id(END_TOKEN)
            .ok_or_else(|| TokenizerError(format!("the tokenizer has no {END_TOKEN} token")))?;
        Ok(CodeTokenizer { inner, end_id })
    }

    /// Loads a `tokenizer.json` written by [`CodeTokenizer::save`].
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path).map_err(|e| {
            TokenizerError(format!("{}: cannot load tokenizer: {e}", path.display()))
        })?;
        Self::from_tokenizer(inner)
    }

    /// Writes `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        self.inner
            .save(path, false)
            .map_err(|e| TokenizerError(format!("{}: cannot save tokenizer: {e}", path.display())))
    }

    /// Vocabulary size including the end token.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The end token's id.
    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// Token ids of `code`'s view, cut to `len - 1`, then the end token, padded with end tokens
    /// to `len`; returns (ids, position of the first end token).
    pub fn encode(&self, code: &str, len: usize) -> Result<(Vec<u32>, u32), TokenizerError> {
        self.encode_counted(code, len)
            .map(|(ids, eos, _)| (ids, eos))
    }

    /// [`CodeTokenizer::encode`], plus the view's token count before the cut (how much of the
    /// program the window holds).
    pub fn encode_counted(
        &self,
        code: &str,
        len: usize,
    ) -> Result<(Vec<u32>, u32, usize), TokenizerError> {
        let enc = self
            .inner
            .encode(code_view(code), false)
            .map_err(|e| TokenizerError(format!("tokenizing code: {e}")))?;
        let mut ids: Vec<u32> = enc.get_ids().iter().copied().take(len - 1).collect();
        let eos = ids.len() as u32;
        ids.resize(len, self.end_id);
        Ok((ids, eos, enc.get_ids().len()))
    }
}

/// The code as the text tower reads it: comment lines dropped and every decimal number
/// rounded to 3 significant digits (the image shows shape, not the 17th digit of k*s/95).
pub fn code_view(code: &str) -> String {
    let mut out = String::with_capacity(code.len() / 2);
    for line in code.lines() {
        let t = line.trim_start();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        map_decimals(line, &mut out, short);
        out.push('\n');
    }
    out
}

/// `v` with 3 significant digits, tiny magnitudes (the 6.1e-17 axis noise) as 0.
fn short(v: f64) -> String {
    if v.abs() < 1e-9 {
        return "0".into();
    }
    let digits = 2 - v.abs().log10().floor() as i32;
    let s = format!("{:.*}", digits.max(0) as usize, v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, 0.0, 0.0), cq.Vector(6.123233995736766e-17, 0.0, -1.0)))\nloop0=wp_sketch0.moveTo(1.0421052631578949, 0.0).lineTo(1.0421052631578949, 1.5).close()\nsolid0=wp_sketch0.add(loop0).extrude(0.0234375)\nsolid=solid0\n";

    #[test]
    fn the_view_drops_comments_and_rounds_numbers() {
        let v = code_view(CODE);
        assert!(!v.contains('#'));
        assert!(
            v.contains("cq.Vector(-0.75, 0, 0), cq.Vector(0, 0, -1)"),
            "{v}"
        );
        assert!(v.contains("moveTo(1.04, 0).lineTo(1.04, 1.5)"), "{v}");
        assert!(v.contains("extrude(0.0234)"), "{v}");
        assert!(
            v.contains("wp_sketch0") && v.contains("solid0=wp_sketch0"),
            "{v}"
        );
    }

    #[test]
    fn trains_encodes_pads_and_round_trips_through_json() {
        let codes: Vec<String> = (0..50)
            .map(|i| CODE.replace("1.5", &format!("{i}.5")))
            .collect();
        let tok = CodeTokenizer::train(codes.iter().map(|s| s.as_str()), 300).unwrap();
        assert!(tok.vocab_size() <= 300 && tok.vocab_size() > 256);
        let (ids, eos) = tok.encode(CODE, 200).unwrap();
        assert_eq!(ids.len(), 200);
        assert_eq!(ids[eos as usize], tok.end_id());
        assert!(ids[..eos as usize].iter().all(|i| *i != tok.end_id()));
        let (short_ids, short_eos) = tok.encode(CODE, 8).unwrap();
        assert_eq!((short_ids.len(), short_eos), (8, 7));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        tok.save(&p).unwrap();
        let back = CodeTokenizer::load(&p).unwrap();
        assert_eq!(back.encode(CODE, 200).unwrap(), (ids, eos));
        assert!(CodeTokenizer::load(&dir.path().join("none.json")).is_err());
    }
}
