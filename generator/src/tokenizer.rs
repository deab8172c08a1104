//! The generator's tokenizer: byte-level BPE trained on the corpus's code in compact form
//! ([`crate::compact`]), with the prompt's special tokens. Decoding is exact: every byte
//! string, numbers included, comes back as it went in.

use std::path::Path;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::GeneratorError;

/// Ends a program (and pads batches).
pub const END_TOKEN: &str = "<|endoftext|>";
/// Opens one retrieved neighbour's code in the prompt.
pub const NEIGHBOUR_TOKEN: &str = "<|neighbour|>";
/// Opens the code to write.
pub const CODE_TOKEN: &str = "<|code|>";

/// Byte-level BPE over compact CadQuery code plus the three prompt tokens.
#[derive(Clone)]
pub struct GenTokenizer {
    inner: Tokenizer,
    end_id: u32,
    neighbour_id: u32,
    code_id: u32,
}

impl std::fmt::Debug for GenTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn err(what: impl std::fmt::Display) -> GeneratorError {
    GeneratorError::Tokenizer(what.to_string())
}

impl GenTokenizer {
    /// Trains a BPE of `vocab_size` tokens on `codes` (already compact). Merges may cross
    /// punctuation and spaces (no pre-split), so `.lineTo(` or `, 0.0` become single tokens:
    /// about a third fewer tokens per program than GPT-2's word-split BPE.
    pub fn train<'a>(
        codes: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
    ) -> Result<Self, GeneratorError> {
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, false, false)));
        tokenizer.with_decoder(Some(ByteLevel::new(false, false, false)));
        let specials = [END_TOKEN, NEIGHBOUR_TOKEN, CODE_TOKEN]
            .map(|t| AddedToken::from(t, true))
            .to_vec();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .max_token_length(Some(16))
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        // One "word" per line: merges stay within a statement, which keeps training fast.
        let lines: Vec<String> = codes
            .flat_map(|c| c.split_inclusive('\n').map(str::to_string))
            .collect();
        tokenizer
            .train(&mut trainer, lines.into_iter())
            .map_err(|e| err(format!("training the code tokenizer: {e}")))?;
        Self::from_tokenizer(tokenizer)
    }

    fn from_tokenizer(inner: Tokenizer) -> Result<Self, GeneratorError> {
        let id = |t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| err(format!("the tokenizer has no {t} token")))
        };
        Ok(GenTokenizer {
            end_id: id(END_TOKEN)?,
            neighbour_id: id(NEIGHBOUR_TOKEN)?,
            code_id: id(CODE_TOKEN)?,
            inner,
        })
    }

    /// Loads a pretrained byte-level BPE `tokenizer.json` (e.g. GPT-2's) and adds the prompt's
    /// special tokens it lacks, after its own vocabulary.
    pub fn from_pretrained(path: &Path) -> Result<Self, GeneratorError> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| err(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        let missing: Vec<AddedToken> = [END_TOKEN, NEIGHBOUR_TOKEN, CODE_TOKEN]
            .into_iter()
            .filter(|t| inner.token_to_id(t).is_none())
            .map(|t| AddedToken::from(t, true))
            .collect();
        inner.add_special_tokens(missing).map_err(|e| {
            err(format!(
                "{}: cannot add the prompt tokens: {e}",
                path.display()
            ))
        })?;
        Self::from_tokenizer(inner)
    }

    /// Loads a `tokenizer.json` written by [`GenTokenizer::save`].
    pub fn load(path: &Path) -> Result<Self, GeneratorError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| err(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        Self::from_tokenizer(inner)
    }

    /// Writes `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<(), GeneratorError> {
        self.inner
            .save(path, false)
            .map_err(|e| err(format!("{}: cannot save tokenizer: {e}", path.display())))
    }

    /// Vocabulary size including the special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `<|endoftext|>`.
    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// `<|neighbour|>`.
    pub fn neighbour_id(&self) -> u32 {
        self.neighbour_id
    }

    /// `<|code|>`.
    pub fn code_id(&self) -> u32 {
        self.code_id
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GeneratorError> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| err(format!("tokenizing code: {e}")))
    }

    /// The text of `ids`, special tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, GeneratorError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| err(format!("decoding tokens: {e}")))
    }

    /// The bytes every token id stands for (empty for special tokens), for the grammar mask.
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let specials = [self.end_id, self.neighbour_id, self.code_id];
        let table = byte_table();
        (0..self.vocab_size() as u32)
            .map(|id| match self.inner.id_to_token(id) {
                Some(tok) if !specials.contains(&id) => {
                    tok.chars().filter_map(|c| table.get(&c).copied()).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }
}

/// The byte-level alphabet's char -> byte table (GPT-2's printable remapping of bytes).
fn byte_table() -> std::collections::HashMap<char, u8> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    printable
        .into_iter()
        .zip(chars)
        .map(|(b, c)| (char::from_u32(c).expect("valid char"), b as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::compact;

    const CODE: &str = "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.75, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.0421052631578949, 0.0).lineTo(1.0421052631578949, 1.5).threePointArc((0.5, 2.25), (0.0, 1.5)).close()\nsolid0=wp_sketch0.add(loop0).extrude(0.0234375)\nsolid=solid0\n";

    fn corpus() -> Vec<String> {
        (0..60)
            .map(|i| compact(&CODE.replace("1.5", &format!("{}.{}", i % 7, i))))
            .collect()
    }

    #[test]
    fn decoding_returns_every_byte_and_number_exactly() {
        let codes = corpus();
        let tok = GenTokenizer::train(codes.iter().map(|s| s.as_str()), 400).unwrap();
        assert!(tok.vocab_size() > 259 && tok.vocab_size() <= 400);
        for text in codes.iter().map(|s| s.as_str()).chain([
            "extrude(0.0234375, both=True)\n",
            "1.0421052631578949e-17 -0.000123 9876543210",
            "unseen ünïcode ✓ \t tabs\n",
        ]) {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|&i| tok.token_bytes()[i as usize].clone())
                .collect();
            assert_eq!(bytes, text.as_bytes());
        }
        let ids = tok.encode(&codes[0]).unwrap();
        assert!(
            ids.len() * 3 < codes[0].len(),
            "{} tokens for {} bytes",
            ids.len(),
            codes[0].len()
        );
    }

    #[test]
    fn special_tokens_are_single_ids_without_bytes_and_survive_save_load() {
        let codes = corpus();
        let tok = GenTokenizer::train(codes.iter().map(|s| s.as_str()), 300).unwrap();
        let ids = tok
            .encode(&format!("{NEIGHBOUR_TOKEN}solid=solid0\n{CODE_TOKEN}"))
            .unwrap();
        assert_eq!(ids[0], tok.neighbour_id());
        assert_eq!(*ids.last().unwrap(), tok.code_id());
        let bytes = tok.token_bytes();
        for id in [tok.end_id(), tok.neighbour_id(), tok.code_id()] {
            assert!(bytes[id as usize].is_empty());
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        tok.save(&p).unwrap();
        let back = GenTokenizer::load(&p).unwrap();
        assert_eq!(
            back.encode(&codes[3]).unwrap(),
            tok.encode(&codes[3]).unwrap()
        );
        assert_eq!(back.end_id(), tok.end_id());
        assert!(GenTokenizer::load(&dir.path().join("missing.json")).is_err());
    }
}
