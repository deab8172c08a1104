//! Prompt assembly: `[image prefix] <|neighbour|> code_1 ... <|neighbour|> code_k <|code|>`,
//! then the target code and `<|endoftext|>`. The same layout serves training (loss on the
//! target and end tokens only) and decoding (the model continues after `<|code|>`).

use serde::{Deserialize, Serialize};

use crate::tokenizer::GenTokenizer;

/// How many neighbours a prompt holds and how long each part may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptLayout {
    /// Retrieved neighbours' programs in the prompt (0: generator only).
    pub k: usize,
    /// Tokens kept of each neighbour's program (the rest is cut).
    pub max_neighbour_tokens: usize,
    /// Tokens of the target program trained on and generated at most.
    pub max_target_tokens: usize,
}

impl PromptLayout {
    /// Positions a full sequence may need: prefix, k neighbours with their markers, the code
    /// marker, the target and its end token.
    pub fn max_positions(&self, prefix_len: usize) -> usize {
        prefix_len + self.k * (self.max_neighbour_tokens + 1) + 1 + self.max_target_tokens + 1
    }
}

/// The prompt's token ids (after the image prefix): each neighbour behind its marker, cut to
/// the layout's length, then `<|code|>`. Uses at most `layout.k` neighbours.
pub fn context_ids(tok: &GenTokenizer, neighbours: &[&[u32]], layout: &PromptLayout) -> Vec<u32> {
    let mut ids = Vec::new();
    for n in neighbours.iter().take(layout.k) {
        ids.push(tok.neighbour_id());
        ids.extend_from_slice(&n[..n.len().min(layout.max_neighbour_tokens)]);
    }
    ids.push(tok.code_id());
    ids
}

/// A training sequence: the context, the target cut to the layout, the end token; and the
/// number of context ids (the loss covers the ids after them).
pub fn training_ids(
    tok: &GenTokenizer,
    neighbours: &[&[u32]],
    target: &[u32],
    layout: &PromptLayout,
) -> (Vec<u32>, usize) {
    let mut ids = context_ids(tok, neighbours, layout);
    let context = ids.len();
    ids.extend_from_slice(&target[..target.len().min(layout.max_target_tokens)]);
    ids.push(tok.end_id());
    (ids, context)
}

/// A padded batch of training sequences: ids [batch, len] (padded with the end token; the
/// causal mask keeps padding out of earlier positions), and for the loss the flat positions
/// (into [batch * (prefix + len)]) whose hidden state predicts each target token, with labels.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingBatch {
    /// Token ids, row-major [batch, len].
    pub ids: Vec<u32>,
    /// Rows.
    pub batch: usize,
    /// Padded length.
    pub len: usize,
    /// Flat hidden-state positions that predict a target token.
    pub positions: Vec<u32>,
    /// The tokens they predict.
    pub labels: Vec<u32>,
}

/// Pads `sequences` (ids, context length) into one batch behind a prefix of `prefix_len`.
pub fn batch(sequences: &[(Vec<u32>, usize)], prefix_len: usize, pad: u32) -> TrainingBatch {
    let len = sequences.iter().map(|s| s.0.len()).max().unwrap_or(0);
    let row = prefix_len + len;
    let mut ids = Vec::with_capacity(sequences.len() * len);
    let mut positions = Vec::new();
    let mut labels = Vec::new();
    for (b, (seq, context)) in sequences.iter().enumerate() {
        ids.extend_from_slice(seq);
        ids.extend(std::iter::repeat_n(pad, len - seq.len()));
        // Id t sits at position prefix + t and is predicted by position prefix + t - 1.
        for (t, &label) in seq.iter().enumerate().skip((*context).max(1)) {
            positions.push((b * row + prefix_len + t - 1) as u32);
            labels.push(label);
        }
    }
    TrainingBatch {
        ids,
        batch: sequences.len(),
        len,
        positions,
        labels,
    }
}

/// A padded encoder-decoder batch (CodeT5): the encoder reads the image prefix and the context
/// (neighbours and `<|code|>`), the decoder reads `<|code|>` + target and predicts target + end.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq2SeqBatch {
    /// Rows.
    pub batch: usize,
    /// Context ids, row-major [batch, context_len], padded.
    pub context: Vec<u32>,
    /// Padded context length (the image prefix not included).
    pub context_len: usize,
    /// Encoder key mask [batch, prefix + context_len]: 1 for the prefix and real ids, 0 for padding.
    pub context_mask: Vec<u8>,
    /// Decoder input ids, row-major [batch, target_len], padded.
    pub decoder: Vec<u32>,
    /// Padded decoder length.
    pub target_len: usize,
    /// Flat decoder positions (into [batch * target_len]) that predict a target token.
    pub positions: Vec<u32>,
    /// The tokens they predict.
    pub labels: Vec<u32>,
}

/// Splits `sequences` (ids, context length >= 1, as [`training_ids`] makes them) into an
/// encoder-decoder batch behind a prefix of `prefix_len`: the decoder's first input is the
/// context's last id (`<|code|>`), so it predicts exactly what GPT-2 predicts after it.
pub fn seq2seq_batch(sequences: &[(Vec<u32>, usize)], prefix_len: usize, pad: u32) -> Seq2SeqBatch {
    let context_len = sequences.iter().map(|s| s.1).max().unwrap_or(0);
    let target_len = sequences
        .iter()
        .map(|(seq, c)| seq.len() - c)
        .max()
        .unwrap_or(0);
    let mut out = Seq2SeqBatch {
        batch: sequences.len(),
        context: Vec::with_capacity(sequences.len() * context_len),
        context_len,
        context_mask: Vec::new(),
        decoder: Vec::with_capacity(sequences.len() * target_len),
        target_len,
        positions: Vec::new(),
        labels: Vec::new(),
    };
    for (b, (seq, context)) in sequences.iter().enumerate() {
        let c = (*context).clamp(1, seq.len());
        out.context.extend_from_slice(&seq[..c]);
        out.context
            .extend(std::iter::repeat_n(pad, context_len - c));
        out.context_mask
            .extend(std::iter::repeat_n(1u8, prefix_len + c));
        out.context_mask
            .extend(std::iter::repeat_n(0u8, context_len - c));
        let targets = &seq[c..];
        out.decoder.extend_from_slice(&seq[c - 1..seq.len() - 1]);
        out.decoder
            .extend(std::iter::repeat_n(pad, target_len - targets.len()));
        for (t, &label) in targets.iter().enumerate() {
            out.positions.push((b * target_len + t) as u32);
            out.labels.push(label);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> GenTokenizer {
        let codes = [
            "solid=solid0\n",
            "loop0=wp_sketch0.moveTo(0.5, 1.0).circle(0.25)\n",
        ];
        GenTokenizer::train(codes.into_iter(), 280).unwrap()
    }

    #[test]
    fn context_cuts_neighbours_and_ends_with_the_code_marker() {
        let t = tok();
        let layout = PromptLayout {
            k: 2,
            max_neighbour_tokens: 3,
            max_target_tokens: 4,
        };
        let (a, b, c) = ([1u32, 2, 3, 4, 5], [6u32], [7u32, 8]);
        let ids = context_ids(&t, &[&a, &b, &c], &layout);
        let (n, code) = (t.neighbour_id(), t.code_id());
        assert_eq!(ids, vec![n, 1, 2, 3, n, 6, code]);
        let none = context_ids(&t, &[], &layout);
        assert_eq!(none, vec![code]);
        let (seq, context) = training_ids(&t, &[&b], &[9, 10, 11, 12, 13, 14], &layout);
        assert_eq!(seq, vec![n, 6, code, 9, 10, 11, 12, t.end_id()]);
        assert_eq!(context, 3);
        assert!(seq.len() <= layout.max_positions(0));
    }

    #[test]
    fn batch_positions_predict_exactly_the_target_and_end_tokens() {
        let seqs = vec![(vec![50, 60, 1, 2, 99], 2), (vec![50, 3, 99], 1)];
        let b = batch(&seqs, 4, 99);
        assert_eq!((b.batch, b.len), (2, 5));
        assert_eq!(b.ids, vec![50, 60, 1, 2, 99, 50, 3, 99, 99, 99]);
        // Row 0: ids 2..5 predicted from positions 4+1..4+4; row 1 starts at 9.
        assert_eq!(b.positions, vec![5, 6, 7, 9 + 4, 9 + 5]);
        assert_eq!(b.labels, vec![1, 2, 99, 3, 99]);
    }

    #[test]
    fn seq2seq_batch_feeds_the_decoder_the_code_marker_and_predicts_the_same_tokens() {
        // Context [50, 60 | 7 = <|code|>], target [1, 2], end 99; second row context [7].
        let seqs = vec![(vec![50, 60, 7, 1, 2, 99], 3), (vec![7, 3, 99], 1)];
        let b = seq2seq_batch(&seqs, 2, 0);
        assert_eq!((b.batch, b.context_len, b.target_len), (2, 3, 3));
        assert_eq!(b.context, vec![50, 60, 7, 7, 0, 0]);
        assert_eq!(b.context_mask, vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(b.decoder, vec![7, 1, 2, 7, 3, 0]);
        assert_eq!(b.positions, vec![0, 1, 2, 3, 4]);
        assert_eq!(b.labels, vec![1, 2, 99, 3, 99]);
        // The same labels, in the same order, as the decoder-only batch.
        assert_eq!(b.labels, batch(&seqs, 2, 0).labels);
    }
}
