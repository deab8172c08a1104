//! Decoding: greedy, beam search and top-p sampling over the cached model (GPT-2 or
//! CodeT5), optionally constrained by the dialect grammar ([`crate::grammar`]) so every finished
//! output parses.

use std::time::Instant;

use candle_core::Tensor;
use seeded::Rng;
use serde::Serialize;

use crate::compact::{compact, inflate};
use crate::grammar::DialectState;
use crate::model::{DecodeCache, Generator};
use crate::prompt::context_ids;
use crate::GeneratorError;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Strategy {
    /// The most likely token.
    Greedy,
    /// Beam search keeping `width` partial programs.
    Beam {
        /// Beams.
        width: usize,
    },
    /// Nucleus sampling: tokens of the smallest set with probability >= `top_p`, after
    /// dividing the logits by `temperature`.
    Sample {
        /// Logit temperature.
        temperature: f64,
        /// Nucleus mass.
        top_p: f64,
        /// Seed of the draw.
        seed: u64,
    },
}

/// Decoding settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DecodeOptions {
    /// Token choice.
    pub strategy: Strategy,
    /// Most tokens to write (also bounded by the model's positions and the layout).
    pub max_tokens: usize,
    /// Mask tokens that would leave the dialect (every finished output parses).
    pub constrained: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            strategy: Strategy::Greedy,
            max_tokens: 1024,
            constrained: true,
        }
    }
}

/// One decoded program.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// The full program (boilerplate restored), ready to run.
    pub code: String,
    /// What the model wrote (compact form).
    pub compact: String,
    /// Tokens written.
    pub tokens: usize,
    /// True when the model ended the program itself (false: cut at the token budget).
    pub finished: bool,
    /// Sum of the chosen tokens' log-probabilities (under the mask when constrained).
    pub log_prob: f64,
    /// Wall seconds of this decode.
    pub seconds: f64,
}

/// Log-softmax in place; masked entries stay -inf. Returns false when every entry is masked.
fn log_softmax(l: &mut [f32]) -> bool {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return false;
    }
    let sum: f32 = l.iter().map(|v| (v - max).exp()).sum();
    let log_z = max + sum.ln();
    for v in l.iter_mut() {
        *v -= log_z;
    }
    true
}

fn argmax(l: &[f32]) -> usize {
    l.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Draws from the top-p nucleus of log-probabilities `l` at `temperature`.
fn sample(l: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> usize {
    let t = temperature.max(1e-4) as f32;
    let mut order: Vec<usize> = (0..l.len()).filter(|&i| l[i].is_finite()).collect();
    order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
    let max = l[order[0]] / t;
    let weights: Vec<f64> = order
        .iter()
        .map(|&i| ((l[i] / t - max) as f64).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let mut kept = 0;
    let mut mass = 0.0;
    for w in &weights {
        kept += 1;
        mass += w / total;
        if mass >= top_p {
            break;
        }
    }
    let kept_total: f64 = weights[..kept].iter().sum();
    let mut r = rng.unit() * kept_total;
    for (i, w) in weights[..kept].iter().enumerate() {
        if r < *w {
            return order[i];
        }
        r -= w;
    }
    order[kept - 1]
}

struct Beam {
    ids: Vec<u32>,
    log_prob: f64,
    state: DialectState,
}

impl Generator {
    /// Writes a program for the image vector `image` (from the model's encoder) with the
    /// retrieved `neighbours`' code (full programs; the layout's first k are used).
    pub fn generate(
        &self,
        image: &[f32],
        neighbours: &[&str],
        opts: &DecodeOptions,
    ) -> Result<Generation, GeneratorError> {
        let started = Instant::now();
        let cfg = self.model.config();
        if image.len() != cfg.encoder.dims {
            return Err(GeneratorError::Settings(format!(
                "image vector has {} dimensions, the model reads {} ({})",
                image.len(),
                cfg.encoder.dims,
                cfg.encoder.id
            )));
        }
        let tok = &self.tokenizer;
        let neighbour_ids = neighbours
            .iter()
            .take(cfg.layout.k)
            .map(|c| tok.encode(&compact(c)))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&[u32]> = neighbour_ids.iter().map(|v| v.as_slice()).collect();
        let context = context_ids(tok, &refs, &cfg.layout);
        let mut budget = opts.max_tokens.min(cfg.layout.max_target_tokens + 1);
        if let Some(positions) = self.model.lm_config().max_positions() {
            budget = budget.min(positions.saturating_sub(cfg.prefix_len + context.len()));
        }
        let err = |e| GeneratorError::candle("decoding", e);
        let images = Tensor::from_slice(image, (1, image.len()), &self.device).map_err(err)?;
        let ids = Tensor::from_slice(&context, (1, context.len()), &self.device).map_err(err)?;
        let (first, cache) = self.model.start(&images, &ids).map_err(err)?;
        let (ids, finished, log_prob) = match opts.strategy {
            Strategy::Beam { width } if width > 1 => {
                self.beam(first, cache, width, budget, opts.constrained)?
            }
            strategy => self.single(first, cache, strategy, budget, opts.constrained)?,
        };
        let text = tok.decode(&ids)?;
        Ok(Generation {
            code: inflate(&text),
            compact: text,
            tokens: ids.len(),
            finished,
            log_prob,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Masks `logits` to the tokens the grammar allows after `state` (the end token only once
    /// the program is complete).
    fn mask(&self, state: &DialectState, logits: &mut [f32], allowed: &mut Vec<bool>) {
        allowed.resize(logits.len(), false);
        self.grammar.allowed(state, allowed);
        for (l, ok) in logits.iter_mut().zip(allowed.iter()) {
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    fn single(
        &self,
        first: Tensor,
        mut cache: DecodeCache,
        strategy: Strategy,
        budget: usize,
        constrained: bool,
    ) -> Result<(Vec<u32>, bool, f64), GeneratorError> {
        let err = |e| GeneratorError::candle("decoding", e);
        let end = self.tokenizer.end_id();
        let mut rng = match strategy {
            Strategy::Sample { seed, .. } => Rng::new(seed, 0x5A3F),
            _ => Rng::new(0, 0),
        };
        let mut logits = first;
        let mut state = DialectState::start();
        let mut allowed = Vec::new();
        let (mut out, mut log_prob) = (Vec::new(), 0.0);
        for _ in 0..budget {
            let mut l: Vec<f32> = logits.squeeze(0).map_err(err)?.to_vec1().map_err(err)?;
            if constrained {
                self.mask(&state, &mut l, &mut allowed);
            }
            if !log_softmax(&mut l) {
                break;
            }
            let next = match strategy {
                Strategy::Sample {
                    temperature, top_p, ..
                } => sample(&l, temperature, top_p, &mut rng),
                _ => argmax(&l),
            };
            log_prob += l[next] as f64;
            if next as u32 == end {
                return Ok((out, true, log_prob));
            }
            if constrained {
                self.grammar.feed_token(&mut state, next as u32);
            }
            out.push(next as u32);
            let t = Tensor::new(&[next as u32], &self.device).map_err(err)?;
            logits = self.model.step(&t, &mut cache).map_err(err)?;
        }
        Ok((out, false, log_prob))
    }

    fn beam(
        &self,
        first: Tensor,
        cache: DecodeCache,
        width: usize,
        budget: usize,
        constrained: bool,
    ) -> Result<(Vec<u32>, bool, f64), GeneratorError> {
        let err = |e| GeneratorError::candle("beam search", e);
        let end = self.tokenizer.end_id();
        let mut beams = vec![Beam {
            ids: Vec::new(),
            log_prob: 0.0,
            state: DialectState::start(),
        }];
        let mut cache = cache;
        let mut logits = first;
        let mut done: Vec<(Vec<u32>, f64)> = Vec::new();
        let mut allowed = Vec::new();
        // Length-normalised score, so short programs do not win by having fewer terms.
        let score = |lp: f64, len: usize| lp / (len as f64 + 1.0);
        for _ in 0..budget {
            let rows: Vec<Vec<f32>> = logits.to_vec2().map_err(err)?;
            let mut candidates: Vec<(usize, usize, f64)> = Vec::new();
            for (b, mut l) in rows.into_iter().enumerate() {
                if constrained {
                    self.mask(&beams[b].state, &mut l, &mut allowed);
                }
                if !log_softmax(&mut l) {
                    continue;
                }
                let mut order: Vec<usize> = (0..l.len()).filter(|&i| l[i].is_finite()).collect();
                order.sort_by(|&x, &y| l[y].total_cmp(&l[x]));
                for &i in order.iter().take(width) {
                    candidates.push((b, i, beams[b].log_prob + l[i] as f64));
                }
            }
            candidates.sort_by(|a, b| b.2.total_cmp(&a.2));
            let mut next = Vec::new();
            for (b, i, lp) in candidates {
                if next.len() == width {
                    break;
                }
                if i as u32 == end {
                    done.push((beams[b].ids.clone(), lp));
                    continue;
                }
                let mut state = beams[b].state;
                if constrained {
                    self.grammar.feed_token(&mut state, i as u32);
                }
                let mut ids = beams[b].ids.clone();
                ids.push(i as u32);
                next.push((
                    b,
                    Beam {
                        ids,
                        log_prob: lp,
                        state,
                    },
                ));
            }
            let best_done = done
                .iter()
                .map(|(ids, lp)| score(*lp, ids.len()))
                .fold(f64::NEG_INFINITY, f64::max);
            let best_live = next
                .iter()
                .map(|(_, b)| score(b.log_prob, b.ids.len()))
                .fold(f64::NEG_INFINITY, f64::max);
            if next.is_empty() || (done.len() >= width && best_done >= best_live) {
                break;
            }
            let parents: Vec<u32> = next.iter().map(|(b, _)| *b as u32).collect();
            let tokens: Vec<u32> = next
                .iter()
                .map(|(_, b)| *b.ids.last().expect("one token"))
                .collect();
            let dev = &self.device;
            cache = cache
                .select(&Tensor::new(parents.as_slice(), dev).map_err(err)?)
                .map_err(err)?;
            beams = next.into_iter().map(|(_, b)| b).collect();
            logits = self
                .model
                .step(
                    &Tensor::new(tokens.as_slice(), dev).map_err(err)?,
                    &mut cache,
                )
                .map_err(err)?;
        }
        if let Some((ids, lp)) = done
            .into_iter()
            .max_by(|a, b| score(a.1, a.0.len()).total_cmp(&score(b.1, b.0.len())))
        {
            return Ok((ids, true, lp));
        }
        let best = beams
            .into_iter()
            .max_by(|a, b| a.log_prob.total_cmp(&b.log_prob))
            .map(|b| (b.ids, false, b.log_prob));
        Ok(best.unwrap_or((Vec::new(), false, 0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_normalises_and_reports_all_masked() {
        let mut l = vec![1.0f32, 2.0, f32::NEG_INFINITY];
        assert!(log_softmax(&mut l));
        let total: f32 = l.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert_eq!(l[2], f32::NEG_INFINITY);
        let mut dead = vec![f32::NEG_INFINITY; 3];
        assert!(!log_softmax(&mut dead));
    }

    #[test]
    fn nucleus_sampling_keeps_to_the_top_mass() {
        let mut l = vec![3.0f32, 2.9, -5.0, -6.0, f32::NEG_INFINITY];
        log_softmax(&mut l);
        let mut rng = Rng::new(7, 0);
        let draws: Vec<usize> = (0..500).map(|_| sample(&l, 1.0, 0.9, &mut rng)).collect();
        assert!(draws.iter().all(|&d| d < 2), "tail tokens drawn");
        assert!(draws.contains(&0) && draws.contains(&1));
        let greedy_like: Vec<usize> = (0..50).map(|_| sample(&l, 1e-6, 1.0, &mut rng)).collect();
        assert!(greedy_like.iter().all(|&d| d == 0));
        assert_eq!(argmax(&l), 0);
    }
}
