//! T5 encoder-decoder (the CodeT5 architecture) in candle with Hugging Face's
//! `T5ForConditionalGeneration` weight names (`shared`, `encoder.block.N.layer.M...`, `lm_head`),
//! so a local `Salesforce/codet5-small` checkpoint loads for fine-tuning and any size builds from a
//! config. Like the GPT-2 next to it, it returns logits for every position, trains through
//! differentiable ops only (`candle_nn::ops::softmax`, an RMS norm from elementwise ops), and keeps
//! an explicit [`T5Cache`] the caller owns, so beams can reorder it. The encoder takes embeddings,
//! not ids, so callers can prepend image-prefix embeddings. There is no dropout.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use seeded::{fnv1a64, Rng};
use serde::{Deserialize, Deserializer, Serialize};

use crate::gpt2::KvCache;

/// The fields of Hugging Face's `T5Config` that shape the model (`config.json`); unknown fields
/// (`dropout_rate`, `n_positions`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// Always `t5`; another value is a checkpoint of another architecture.
    #[serde(default = "t5_type")]
    pub model_type: String,
    /// Tokens in the vocabulary (rows of `shared`).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of one attention head (T5 does not require heads * d_kv == d_model).
    pub d_kv: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Decoder blocks (HF: absent or null means `num_layers`).
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    /// Attention heads.
    pub num_heads: usize,
    /// Buckets of the relative position bias.
    #[serde(default = "num_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share the last bucket.
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    /// Epsilon of the RMS layer norms.
    #[serde(default = "layer_norm_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (T5 v1.0, CodeT5) or `gated-gelu` (T5 v1.1, flan-t5).
    #[serde(default = "relu")]
    pub feed_forward_proj: String,
    /// True: the LM head is `shared` with the decoder output scaled by d_model^-0.5; false: a
    /// separate `lm_head.weight`.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    /// First decoder input (T5 and CodeT5: the pad id 0).
    #[serde(default, deserialize_with = "start_id")]
    pub decoder_start_token_id: u32,
    /// End-of-sequence id (T5: 1, CodeT5: 2).
    #[serde(default = "eos_default", deserialize_with = "eos_id")]
    pub eos_token_id: u32,
    /// Padding id.
    #[serde(default, deserialize_with = "pad_id")]
    pub pad_token_id: u32,
}

fn t5_type() -> String {
    "t5".into()
}

fn num_buckets() -> usize {
    32
}

fn max_distance() -> usize {
    128
}

fn layer_norm_eps() -> f64 {
    1e-6
}

fn relu() -> String {
    "relu".into()
}

fn yes() -> bool {
    true
}

fn eos_default() -> u32 {
    1
}

/// A token id that HF may write as `null`, which means the default.
fn id_or<'de, De: Deserializer<'de>>(d: De, default: u32) -> std::result::Result<u32, De::Error> {
    Ok(Option::<u32>::deserialize(d)?.unwrap_or(default))
}

fn start_id<'de, De: Deserializer<'de>>(d: De) -> std::result::Result<u32, De::Error> {
    id_or(d, 0)
}

fn eos_id<'de, De: Deserializer<'de>>(d: De) -> std::result::Result<u32, De::Error> {
    id_or(d, eos_default())
}

fn pad_id<'de, De: Deserializer<'de>>(d: De) -> std::result::Result<u32, De::Error> {
    id_or(d, 0)
}

impl T5Config {
    /// `Salesforce/codet5-small`: 60M parameters, 6 + 6 blocks of width 512, tied head.
    pub fn codet5_small() -> Self {
        T5Config {
            model_type: t5_type(),
            vocab_size: 32100,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: Some(6),
            num_heads: 8,
            relative_attention_num_buckets: num_buckets(),
            relative_attention_max_distance: max_distance(),
            layer_norm_epsilon: layer_norm_eps(),
            feed_forward_proj: relu(),
            tie_word_embeddings: true,
            decoder_start_token_id: 0,
            eos_token_id: 2,
            pad_token_id: 0,
        }
    }

    /// Decoder blocks (`num_decoder_layers`, else `num_layers`).
    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Checks what the model code relies on; the message names the bad field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.model_type != "t5" {
            return Err(format!(
                "model_type is `{}`: this is not a T5 checkpoint",
                self.model_type
            ));
        }
        if !matches!(self.feed_forward_proj.as_str(), "relu" | "gated-gelu") {
            return Err(format!(
                "feed_forward_proj `{}` is not supported (relu, gated-gelu)",
                self.feed_forward_proj
            ));
        }
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_decoder_layers", self.decoder_layers()),
            ("num_heads", self.num_heads),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        // The encoder's exact range is num_buckets / 4 and the log-spaced range must be non-empty.
        if self.relative_attention_num_buckets < 4 {
            return Err(format!(
                "relative_attention_num_buckets {} must be at least 4",
                self.relative_attention_num_buckets
            ));
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 2 {
            return Err(format!(
                "relative_attention_max_distance {} must exceed relative_attention_num_buckets / 2",
                self.relative_attention_max_distance
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon >= 0.0) {
            return Err(format!(
                "layer_norm_epsilon {} must be finite and non-negative",
                self.layer_norm_epsilon
            ));
        }
        let ids = [
            ("decoder_start_token_id", self.decoder_start_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ];
        if let Some((name, id)) = ids.iter().find(|(_, id)| *id as usize >= self.vocab_size) {
            return Err(format!(
                "{name} {id} is outside the vocabulary of {}",
                self.vocab_size
            ));
        }
        Ok(())
    }

    fn gated(&self) -> bool {
        self.feed_forward_proj == "gated-gelu"
    }

    fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

/// Hugging Face's `_relative_position_bucket`: the bias bucket of `relative_position` (key
/// position minus query position). Bidirectional (encoder): half the buckets for keys after the
/// query; unidirectional (decoder): keys after the query share bucket 0. Within a direction the
/// first half of the buckets are exact distances, the rest log-spaced up to `max_distance`
/// (computed in f32, as torch does).
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets;
    let mut offset = 0;
    let distance = if bidirectional {
        buckets /= 2;
        if relative_position > 0 {
            offset = buckets;
        }
        relative_position.unsigned_abs() as usize
    } else {
        (-relative_position.min(0)) as usize
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return offset + distance;
    }
    let scale = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let log = (distance as f32 / max_exact as f32).ln() / scale * (buckets - max_exact) as f32;
    offset + (max_exact + log as usize).min(buckets - 1)
}

/// T5's layer norm: RMS scaling without mean subtraction or bias, computed in f32 from
/// differentiable ops (candle's fused `rms_norm` has no backward).
#[derive(Debug, Clone)]
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(T5LayerNorm {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let variance = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        normed
            .to_dtype(self.weight.dtype())?
            .broadcast_mul(&self.weight)?
            .to_dtype(dtype)
    }
}

/// `DenseReluDense`: `wo(relu(wi x))`, or `wo(gelu_new(wi_0 x) * wi_1 x)` when gated.
#[derive(Debug, Clone)]
enum FeedForward {
    Relu {
        wi: Linear,
        wo: Linear,
    },
    GatedGelu {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl FeedForward {
    fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let wo = candle_nn::linear_no_bias(f, d, vb.pp("wo"))?;
        Ok(if cfg.gated() {
            FeedForward::GatedGelu {
                wi_0: candle_nn::linear_no_bias(d, f, vb.pp("wi_0"))?,
                wi_1: candle_nn::linear_no_bias(d, f, vb.pp("wi_1"))?,
                wo,
            }
        } else {
            FeedForward::Relu {
                wi: candle_nn::linear_no_bias(d, f, vb.pp("wi"))?,
                wo,
            }
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            FeedForward::Relu { wi, wo } => wo.forward(&wi.forward(x)?.relu()?),
            FeedForward::GatedGelu { wi_0, wi_1, wo } => {
                let h = (wi_0.forward(x)?.gelu()? * wi_1.forward(x)?)?;
                wo.forward(&h)
            }
        }
    }
}

/// Multi-head attention without biases and without the 1/sqrt(d_kv) scale (T5's init absorbs
/// it); `SelfAttention` or `EncDecAttention`.
#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
}

impl Attention {
    fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        Ok(Attention {
            q: candle_nn::linear_no_bias(d, inner, vb.pp("q"))?,
            k: candle_nn::linear_no_bias(d, inner, vb.pp("k"))?,
            v: candle_nn::linear_no_bias(d, inner, vb.pp("v"))?,
            o: candle_nn::linear_no_bias(inner, d, vb.pp("o"))?,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// [b, t, heads * d_kv] -> [b, heads, t, d_kv].
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.heads, self.d_kv))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Keys and values [b, heads, s, d_kv] of `x` [b, s, d_model].
    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.k.forward(x)?)?,
            self.split(&self.v.forward(x)?)?,
        ))
    }

    /// Queries from `x` [b, t, d_model] attend over `k`, `v` with an additive `bias` that
    /// broadcasts to [b, heads, t, s]; `fused` picks candle's fused softmax (no backward).
    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: Option<&Tensor>,
        fused: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let q = self.split(&self.q.forward(x)?)?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(bias) = bias {
            scores = scores.broadcast_add(bias)?;
        }
        let weights = if fused {
            candle_nn::ops::softmax_last_dim(&scores)?
        } else {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        };
        let y = weights
            .matmul(v)?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.d_kv))?;
        self.o.forward(&y)
    }
}

/// The cache slots of one decoder block.
struct LayerCache<'a> {
    self_kv: &'a mut Option<(Tensor, Tensor)>,
    cross_kv: &'a mut Option<(Tensor, Tensor)>,
}

/// One pre-norm block (`block.N`): self-attention, cross-attention (decoder only), feed-forward.
#[derive(Debug, Clone)]
struct Block {
    self_norm: T5LayerNorm,
    self_attn: Attention,
    cross: Option<(T5LayerNorm, Attention)>,
    ff_norm: T5LayerNorm,
    ff: FeedForward,
}

impl Block {
    fn new(cfg: &T5Config, decoder: bool, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        let cross = if decoder {
            Some((
                T5LayerNorm::new(cfg.d_model, eps, vb.pp("layer.1.layer_norm"))?,
                Attention::new(cfg, vb.pp("layer.1.EncDecAttention"))?,
            ))
        } else {
            None
        };
        let ff = vb.pp(format!("layer.{}", if decoder { 2 } else { 1 }));
        Ok(Block {
            self_norm: T5LayerNorm::new(cfg.d_model, eps, vb.pp("layer.0.layer_norm"))?,
            self_attn: Attention::new(cfg, vb.pp("layer.0.SelfAttention"))?,
            cross,
            ff_norm: T5LayerNorm::new(cfg.d_model, eps, ff.pp("layer_norm"))?,
            ff: FeedForward::new(cfg, ff.pp("DenseReluDense"))?,
        })
    }

    /// `x` [b, t, d_model]; `self_bias` is the position bias plus masks for self-attention,
    /// `encoded` and `cross_bias` feed cross-attention. With a cache, self-attention also sees
    /// the cached past and appends this call's keys and values; cross keys and values are
    /// computed on the first call and reused.
    fn forward(
        &self,
        x: &Tensor,
        self_bias: &Tensor,
        encoded: &Tensor,
        cross_bias: Option<&Tensor>,
        cache: Option<LayerCache<'_>>,
    ) -> Result<Tensor> {
        let fused = cache.is_some();
        let (self_slot, cross_slot) = match cache {
            Some(c) => (Some(c.self_kv), Some(c.cross_kv)),
            None => (None, None),
        };
        let h = self.self_norm.forward(x)?;
        let (mut k, mut v) = self.self_attn.keys_values(&h)?;
        if let Some(slot) = self_slot {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let mut x = (x + self.self_attn.attend(&h, &k, &v, Some(self_bias), fused)?)?;
        if let Some((norm, attn)) = &self.cross {
            let (k, v) = match cross_slot {
                Some(Some(kv)) => kv.clone(),
                Some(slot) => {
                    let kv = attn.keys_values(encoded)?;
                    *slot = Some(kv.clone());
                    kv
                }
                None => attn.keys_values(encoded)?,
            };
            let h = norm.forward(&x)?;
            x = (x + attn.attend(&h, &k, &v, cross_bias, fused)?)?;
        }
        let y = self.ff.forward(&self.ff_norm.forward(&x)?)?;
        x + y
    }
}

/// The encoder or the decoder: blocks, block 0's relative position bias (shared by all blocks)
/// and the final norm.
#[derive(Debug, Clone)]
struct Stack {
    blocks: Vec<Block>,
    relative_bias: Tensor,
    final_norm: T5LayerNorm,
    decoder: bool,
    num_buckets: usize,
    max_distance: usize,
}

impl Stack {
    fn new(cfg: &T5Config, decoder: bool, vb: VarBuilder) -> Result<Self> {
        let layers = if decoder {
            cfg.decoder_layers()
        } else {
            cfg.num_layers
        };
        let blocks = (0..layers)
            .map(|i| Block::new(cfg, decoder, vb.pp(format!("block.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Stack {
            blocks,
            relative_bias: vb.get(
                (cfg.relative_attention_num_buckets, cfg.num_heads),
                "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            )?,
            final_norm: T5LayerNorm::new(
                cfg.d_model,
                cfg.layer_norm_epsilon,
                vb.pp("final_layer_norm"),
            )?,
            decoder,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// Position bias [1, heads, q_len, k_len] for queries at `offset..offset + q_len` and keys at
    /// `0..k_len`.
    fn position_bias(&self, q_len: usize, k_len: usize, offset: usize) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..q_len)
            .flat_map(|i| {
                (0..k_len).map(move |j| {
                    let relative = j as i64 - (offset + i) as i64;
                    relative_position_bucket(
                        relative,
                        !self.decoder,
                        self.num_buckets,
                        self.max_distance,
                    ) as u32
                })
            })
            .collect();
        let ids = Tensor::from_vec(buckets, q_len * k_len, self.relative_bias.device())?;
        let heads = self.relative_bias.dim(1)?;
        self.relative_bias
            .index_select(&ids, 0)?
            .reshape((q_len, k_len, heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

/// The additive value of a masked score: exp of it underflows to 0 in any float type.
fn mask_value(dtype: DType) -> f64 {
    if dtype == DType::F16 {
        -1e4
    } else {
        -1e9
    }
}

/// Additive mask [b, 1, 1, s] from a key mask [b, s] of any dtype (1 keep, 0 pad).
fn key_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, s) = mask.dims2()?;
    let neg = mask_value(dtype);
    mask.to_dtype(DType::F32)?
        .affine(-neg, neg)?
        .reshape((b, 1, 1, s))?
        .to_dtype(dtype)
}

/// Additive mask [1, 1, len, past + len]: query i sees keys 0..=past + i.
fn causal_mask(len: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let width = past + len;
    let neg = mask_value(dtype) as f32;
    let values: Vec<f32> = (0..len)
        .flat_map(|i| (0..width).map(move |j| if j <= past + i { 0.0 } else { neg }))
        .collect();
    Tensor::from_vec(values, (1, 1, len, width), device)?.to_dtype(dtype)
}

/// Decoder keys and values for the positions seen so far, and the cross-attention keys and
/// values of the encoder output (computed once), per decoder block.
#[derive(Debug, Clone, Default)]
pub struct T5Cache {
    self_kv: KvCache,
    cross_kv: KvCache,
}

impl T5Cache {
    /// Decoder positions already in the cache.
    pub fn len(&self) -> usize {
        self.self_kv.len()
    }

    /// True before the first decoding step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache with its batch rows picked (and repeated) by `rows` (u32 ids), cross-attention
    /// included: beams that survive a step keep their parents' past.
    pub fn select(&self, rows: &Tensor) -> Result<T5Cache> {
        Ok(T5Cache {
            self_kv: self.self_kv.select(rows)?,
            cross_kv: self.cross_kv.select(rows)?,
        })
    }
}

/// `T5ForConditionalGeneration`: shared embeddings, encoder, decoder and LM head.
#[derive(Debug, Clone)]
pub struct T5 {
    shared: Tensor,
    encoder: Stack,
    decoder: Stack,
    lm_head: Option<Linear>,
    config: T5Config,
}

impl T5 {
    /// Builds (or loads) the weights under `vb`, which points at HF's names (`shared.weight`,
    /// `encoder.block.0...`, `lm_head.weight` when untied). The `encoder/decoder.embed_tokens`
    /// copies are not read (only if `shared.weight` is missing is `encoder.embed_tokens.weight`
    /// used in its place). Refuses an invalid config.
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        if let Err(e) = cfg.validate() {
            candle_core::bail!("invalid T5 config: {e}");
        }
        let shape = (cfg.vocab_size, cfg.d_model);
        let shared_name = if !vb.contains_tensor("shared.weight")
            && vb.contains_tensor("encoder.embed_tokens.weight")
        {
            "encoder.embed_tokens.weight"
        } else {
            "shared.weight"
        };
        let shared = vb.get_with_hints(
            shape,
            shared_name,
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(candle_nn::linear_no_bias(
                cfg.d_model,
                cfg.vocab_size,
                vb.pp("lm_head"),
            )?)
        };
        Ok(T5 {
            shared,
            encoder: Stack::new(cfg, false, vb.pp("encoder"))?,
            decoder: Stack::new(cfg, true, vb.pp("decoder"))?,
            lm_head,
            config: cfg.clone(),
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// Token embeddings of `ids` [b, s] -> [b, s, d_model] (so callers can prepend image-prefix
    /// embeddings before [`T5::encode`]).
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        self.shared
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, self.config.d_model))
    }

    /// Encoder over input embeddings `embeds` [b, s, d_model] with an optional key mask [b, s]
    /// (1 keep, 0 pad) -> hidden states [b, s, d_model] (padded rows hold values that the
    /// decoder ignores when given the same mask).
    pub fn encode(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (_, s, _) = embeds.dims3()?;
        let dtype = embeds.dtype();
        let mut bias = self.encoder.position_bias(s, s, 0)?.to_dtype(dtype)?;
        if let Some(mask) = mask {
            bias = bias.broadcast_add(&key_mask(mask, dtype)?)?;
        }
        let mut h = embeds.clone();
        for block in &self.encoder.blocks {
            h = block.forward(&h, &bias, embeds, None, None)?;
        }
        self.encoder.final_norm.forward(&h)
    }

    /// Decoder over target ids [b, t] (teacher forcing, no cache) attending to `encoded`
    /// [b, s, d_model] under the encoder key `mask` -> logits [b, t, vocab] at every position:
    /// the training view.
    pub fn decode(&self, ids: &Tensor, encoded: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.logits(&self.decoder_hidden(ids, encoded, mask, None)?)
    }

    /// One or more decoding steps: `ids` [b, t] continue the positions already in `cache`, which
    /// gains them; returns logits [b, t, vocab] for the new positions. `encoded` is read only
    /// while the cache has no cross-attention keys yet (the first call); `mask` must match the
    /// cache's batch rows (re-select it with the cache).
    pub fn decode_cached(
        &self,
        ids: &Tensor,
        encoded: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut T5Cache,
    ) -> Result<Tensor> {
        self.logits(&self.decoder_hidden(ids, encoded, mask, Some(cache))?)
    }

    /// Final decoder hidden states [b, t, d_model] under teacher forcing (no cache): callers
    /// that need logits at a few positions only pick them before [`T5::logits`].
    pub fn decode_hidden(
        &self,
        ids: &Tensor,
        encoded: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.decoder_hidden(ids, encoded, mask, None)
    }

    /// Logits over the vocabulary for decoder outputs of any shape [..., d_model].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        if let Some(head) = &self.lm_head {
            return head.forward(hidden);
        }
        let d = self.config.d_model;
        let mut dims = hidden.dims().to_vec();
        let rows = hidden.elem_count() / d;
        let y = (hidden.reshape((rows, d))? * (d as f64).powf(-0.5))?.matmul(&self.shared.t()?)?;
        *dims.last_mut().expect("at least one dim") = self.config.vocab_size;
        y.reshape(dims)
    }

    /// Final decoder hidden states [b, t, d_model] of `ids` starting at `cache.len()`.
    fn decoder_hidden(
        &self,
        ids: &Tensor,
        encoded: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut T5Cache>,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let x = self.embed(ids)?;
        let dtype = x.dtype();
        let mut self_bias = self
            .decoder
            .position_bias(t, past + t, past)?
            .to_dtype(dtype)?;
        if t > 1 {
            self_bias = self_bias.broadcast_add(&causal_mask(t, past, dtype, x.device())?)?;
        }
        let cross_bias = mask.map(|m| key_mask(m, dtype)).transpose()?;
        let mut h = x;
        let blocks = self.decoder.blocks.len();
        for (i, block) in self.decoder.blocks.iter().enumerate() {
            let slots = cache.as_deref_mut().map(|c| LayerCache {
                self_kv: c.self_kv.slot(blocks, i),
                cross_kv: c.cross_kv.slot(blocks, i),
            });
            h = block.forward(&h, &self_bias, encoded, cross_bias.as_ref(), slots)?;
        }
        self.decoder.final_norm.forward(&h)
    }
}

/// A standard normal by Box-Muller over two open uniforms (candle's CPU RNG cannot be
/// seeded).
fn open_normal(rng: &mut Rng) -> f64 {
    let (u1, u2) = (rng.open_unit(), rng.open_unit());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Seeded initial weights with T5's scheme for every variable with a T5 name (others are left
/// as they are): embeddings N(0, 1); q N(0, (d_model d_kv)^-0.5); k, v N(0, d_model^-0.5);
/// o N(0, (heads d_kv)^-0.5); wi, wi_0, wi_1 N(0, d_model^-0.5); wo N(0, d_ff^-0.5); relative
/// bias N(0, d_model^-0.5); norms 1. An untied `lm_head` gets N(0, d_model^-0.5), so its initial
/// logits have the scale of the tied head's (HF draws N(0, 1)).
pub fn init_weights(varmap: &candle_nn::VarMap, seed: u64, cfg: &T5Config) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let d_model = cfg.d_model as f64;
    for (name, var) in data.iter() {
        let is = |suffix: &str| name == suffix || name.ends_with(&format!(".{suffix}"));
        let std = if is("layer_norm.weight") || is("final_layer_norm.weight") {
            0.0
        } else if is("shared.weight") || is("embed_tokens.weight") {
            1.0
        } else if is("lm_head.weight")
            || is("relative_attention_bias.weight")
            || is("k.weight")
            || is("v.weight")
            || is("wi.weight")
            || is("wi_0.weight")
            || is("wi_1.weight")
        {
            d_model.powf(-0.5)
        } else if is("q.weight") {
            (d_model * cfg.d_kv as f64).powf(-0.5)
        } else if is("o.weight") {
            (cfg.inner_dim() as f64).powf(-0.5)
        } else if is("wo.weight") {
            (cfg.d_ff as f64).powf(-0.5)
        } else {
            continue;
        };
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let values: Vec<f32> = if std == 0.0 {
            vec![1.0; n]
        } else {
            // Each variable draws from its own stream (FNV-1a of its name), so the values do
            // not depend on which other variables share the map.
            let mut rng = Rng::from_state(seed ^ fnv1a64(name.as_bytes()));
            (0..n)
                .map(|_| (open_normal(&mut rng) * std) as f32)
                .collect()
        };
        let t = Tensor::from_vec(values, shape, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{Optimizer, VarMap};
    use std::collections::HashMap;

    fn tiny(ff: &str, tie: bool) -> T5Config {
        T5Config {
            model_type: "t5".into(),
            vocab_size: 40,
            d_model: 16,
            d_kv: 4,
            d_ff: 32,
            num_layers: 2,
            num_decoder_layers: Some(2),
            num_heads: 2,
            relative_attention_num_buckets: 8,
            relative_attention_max_distance: 16,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: ff.into(),
            tie_word_embeddings: tie,
            decoder_start_token_id: 0,
            eos_token_id: 1,
            pad_token_id: 0,
        }
    }

    fn build(cfg: &T5Config, seed: u64) -> (VarMap, T5) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = T5::new(cfg, vb).unwrap();
        init_weights(&varmap, seed, cfg).unwrap();
        (varmap, model)
    }

    fn ids(rows: &[&[u32]]) -> Tensor {
        let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Decodes `dec` through the cache in chunks of the given sizes and returns all logits.
    fn stepped(
        model: &T5,
        dec: &Tensor,
        encoded: &Tensor,
        mask: Option<&Tensor>,
        chunks: &[usize],
    ) -> Tensor {
        let mut cache = T5Cache::default();
        let mut start = 0;
        let mut rows = Vec::new();
        for &n in chunks {
            let step = dec.narrow(1, start, n).unwrap();
            rows.push(
                model
                    .decode_cached(&step, encoded, mask, &mut cache)
                    .unwrap(),
            );
            start += n;
            assert_eq!(cache.len(), start);
        }
        Tensor::cat(&rows, 1).unwrap()
    }

    #[test]
    fn cached_decoding_matches_the_full_decode() {
        let cfg = tiny("relu", true);
        let (_, model) = build(&cfg, 1);
        // Batch of one, no mask: a prompt of 2 then 4 single steps.
        let enc = model.embed(&ids(&[&[5, 9, 3, 7, 2]])).unwrap();
        let encoded = model.encode(&enc, None).unwrap();
        let dec = ids(&[&[0, 4, 8, 15, 16, 23]]);
        let full = model.decode(&dec, &encoded, None).unwrap();
        let steps = stepped(&model, &dec, &encoded, None, &[2, 1, 1, 1, 1]);
        assert_eq!(full.dims(), &[1, 6, 40]);
        let d = max_diff(&full, &steps);
        assert!(d < 1e-4, "batch 1: {d}");

        // Batch of two with encoder padding (u32 mask).
        let src = ids(&[&[5, 9, 3, 7, 2], &[6, 1, 2, 0, 0]]);
        let mask = ids(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 0, 0]]);
        let encoded = model
            .encode(&model.embed(&src).unwrap(), Some(&mask))
            .unwrap();
        let dec = ids(&[&[0, 4, 8, 15, 16, 23], &[0, 3, 3, 9, 1, 30]]);
        let full = model.decode(&dec, &encoded, Some(&mask)).unwrap();
        let steps = stepped(&model, &dec, &encoded, Some(&mask), &[2, 1, 1, 1, 1]);
        let d = max_diff(&full, &steps);
        assert!(d < 1e-4, "batch 2 with mask: {d}");

        // Longer than max_distance (log-spaced buckets) in uneven chunks (causal mask with a past).
        let long: Vec<u32> = (0..22).map(|i| (i * 7 + 3) % 40).collect();
        let long2: Vec<u32> = (0..22).map(|i| (i * 11 + 5) % 40).collect();
        let dec = ids(&[&long, &long2]);
        let full = model.decode(&dec, &encoded, Some(&mask)).unwrap();
        let steps = stepped(&model, &dec, &encoded, Some(&mask), &[3, 1, 5, 2, 1, 10]);
        let d = max_diff(&full, &steps);
        assert!(d < 1e-4, "long: {d}");

        // Reordering the cache rows continues the swapped batch.
        let swap = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        let dec = ids(&[&[0, 4, 8, 15, 16, 23], &[0, 3, 3, 9, 1, 30]]);
        let mut cache = T5Cache::default();
        let head = model
            .decode_cached(
                &dec.narrow(1, 0, 3).unwrap(),
                &encoded,
                Some(&mask),
                &mut cache,
            )
            .unwrap();
        let mut cache = cache.select(&swap).unwrap();
        let (dec_s, mask_s) = (
            dec.index_select(&swap, 0).unwrap(),
            mask.index_select(&swap, 0).unwrap(),
        );
        let tail = model
            .decode_cached(
                &dec_s.narrow(1, 3, 3).unwrap(),
                &encoded,
                Some(&mask_s),
                &mut cache,
            )
            .unwrap();
        let enc_s = encoded.index_select(&swap, 0).unwrap();
        let full_s = model.decode(&dec_s, &enc_s, Some(&mask_s)).unwrap();
        let got = Tensor::cat(&[&head.index_select(&swap, 0).unwrap(), &tail], 1).unwrap();
        let d = max_diff(&full_s, &got);
        assert!(d < 1e-4, "select: {d}");
    }

    #[test]
    fn gradients_reach_every_weight() {
        for (ff, tie) in [("relu", true), ("relu", false), ("gated-gelu", true)] {
            let cfg = tiny(ff, tie);
            let (varmap, model) = build(&cfg, 3);
            let src = ids(&[&[5, 9, 3, 7, 2], &[6, 1, 2, 0, 0]]);
            let mask = ids(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 0, 0]]);
            let encoded = model
                .encode(&model.embed(&src).unwrap(), Some(&mask))
                .unwrap();
            let dec = ids(&[&[0, 4, 8, 15], &[0, 3, 3, 9]]);
            let labels = ids(&[&[4, 8, 15, 1], &[3, 3, 9, 1]]);
            let logits = model.decode(&dec, &encoded, Some(&mask)).unwrap();
            let loss = candle_nn::loss::cross_entropy(
                &logits.flatten_to(1).unwrap(),
                &labels.flatten_all().unwrap(),
            )
            .unwrap();
            let grads = loss.backward().unwrap();
            let data = varmap.data().lock().unwrap();
            assert_eq!(data.contains_key("lm_head.weight"), !tie);
            assert_eq!(
                data.contains_key("encoder.block.0.layer.1.DenseReluDense.wi_0.weight"),
                ff == "gated-gelu"
            );
            // Encoder blocks: 2 norms, q k v o, the feed-forward; decoder blocks add a norm and
            // q k v o; then shared, 2 relative biases, 2 final norms, and lm_head when untied.
            let ff_weights = if ff == "gated-gelu" { 3 } else { 2 };
            let expected = 2 * (6 + ff_weights) + 2 * (11 + ff_weights) + 5 + usize::from(!tie);
            assert_eq!(data.len(), expected, "{ff} tie={tie}");
            for (name, var) in data.iter() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name} ({ff}, tie {tie}) has no gradient"));
                let norm = g.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
                let norm = norm.to_scalar::<f32>().unwrap();
                assert!(
                    norm.is_finite() && norm > 0.0,
                    "{name} ({ff}, tie {tie}): {norm}"
                );
            }
        }
    }

    #[test]
    fn decoding_is_causal_and_encoder_padding_is_ignored() {
        let cfg = tiny("relu", true);
        let (_, model) = build(&cfg, 2);
        let src = ids(&[&[5, 9, 3, 7, 2]]);
        let encoded = model.encode(&model.embed(&src).unwrap(), None).unwrap();
        let a = model
            .decode(&ids(&[&[0, 4, 8, 15, 16]]), &encoded, None)
            .unwrap();
        let b = model
            .decode(&ids(&[&[0, 4, 8, 15, 33]]), &encoded, None)
            .unwrap();
        let early = max_diff(&a.narrow(1, 0, 4).unwrap(), &b.narrow(1, 0, 4).unwrap());
        assert!(early < 1e-5, "earlier logits changed: {early}");
        let last = max_diff(&a.narrow(1, 4, 1).unwrap(), &b.narrow(1, 4, 1).unwrap());
        assert!(last > 1e-4, "the changed token has no effect: {last}");

        // Row 1 is 3 tokens padded to 5; its padded tail differs between the two batches.
        let src_a = ids(&[&[5, 9, 3, 7, 2], &[6, 1, 2, 0, 0]]);
        let src_b = ids(&[&[5, 9, 3, 7, 2], &[6, 1, 2, 33, 17]]);
        let mask = Tensor::new(
            &[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]],
            &Device::Cpu,
        )
        .unwrap();
        let dec = ids(&[&[0, 4, 8], &[0, 3, 9]]);
        let run = |src: &Tensor, mask: Option<&Tensor>| {
            let encoded = model.encode(&model.embed(src).unwrap(), mask).unwrap();
            let logits = model.decode(&dec, &encoded, mask).unwrap();
            (encoded, logits)
        };
        let (enc_a, out_a) = run(&src_a, Some(&mask));
        let (enc_b, out_b) = run(&src_b, Some(&mask));
        let kept = max_diff(
            &enc_a.narrow(1, 0, 3).unwrap(),
            &enc_b.narrow(1, 0, 3).unwrap(),
        );
        assert!(kept < 1e-5, "unpadded encoder positions changed: {kept}");
        let d = max_diff(&out_a, &out_b);
        assert!(d < 1e-5, "decoder output changed with the padded tail: {d}");
        // Without the mask the tail is seen: the check above can fail.
        let (_, raw_a) = run(&src_a, None);
        let (_, raw_b) = run(&src_b, None);
        let d = max_diff(
            &raw_a.narrow(0, 1, 1).unwrap(),
            &raw_b.narrow(0, 1, 1).unwrap(),
        );
        assert!(d > 1e-4, "unmasked tail has no effect: {d}");
    }

    #[test]
    fn relative_buckets_match_hand_computed_values() {
        // (relative = key - query, bidirectional, buckets, max_distance, expected).
        // T5's (32, 128), bidirectional: 16 buckets per direction (keys after the query add 16),
        // exact below 8, else 8 + floor(ln(n / 8) / ln(16) * 8) capped at 15:
        //   12 -> 8 + floor(1.170) = 9; 20 -> 8 + floor(2.644) = 10; 127 -> 8 + floor(7.977) = 15;
        //   128 -> 8 + 8 = 16, capped to 15.
        // Unidirectional: keys after the query map to 0, exact below 16, else
        // 16 + floor(ln(n / 16) / ln(8) * 16) capped at 31:
        //   20 -> 16 + floor(1.717) = 17; 100 -> 16 + floor(14.10) = 30; 127 -> 16 + 15 = 31.
        // The tiny (8, 16) bidirectional: 4 per direction, exact below 2, else
        // 2 + floor(ln(n / 2) / ln(8) * 2): 3 -> 2 + floor(0.390) = 2 (+4 after), 5 -> 2 + 0,
        //   9 -> 2 + floor(1.447) = 3, 16 -> 2 + 2 = 4 capped to 3.
        // Unidirectional (8, 16): exact below 4, else 4 + floor(ln(n / 4) / ln(4) * 4):
        //   5 -> 4 + floor(0.644) = 4, 9 -> 4 + floor(2.340) = 6, 16 -> 4 + 4 capped to 7.
        let cases: [(i64, bool, usize, usize, usize); 27] = [
            (0, true, 32, 128, 0),
            (-1, true, 32, 128, 1),
            (1, true, 32, 128, 17),
            (-7, true, 32, 128, 7),
            (-8, true, 32, 128, 8),
            (-12, true, 32, 128, 9),
            (20, true, 32, 128, 26),
            (-127, true, 32, 128, 15),
            (128, true, 32, 128, 31),
            (-1000, true, 32, 128, 15),
            (5, false, 32, 128, 0),
            (0, false, 32, 128, 0),
            (-3, false, 32, 128, 3),
            (-15, false, 32, 128, 15),
            (-16, false, 32, 128, 16),
            (-20, false, 32, 128, 17),
            (-100, false, 32, 128, 30),
            (-127, false, 32, 128, 31),
            (-500, false, 32, 128, 31),
            (3, true, 8, 16, 6),
            (-3, true, 8, 16, 2),
            (-5, true, 8, 16, 2),
            (-9, true, 8, 16, 3),
            (16, true, 8, 16, 7),
            (-5, false, 8, 16, 4),
            (-9, false, 8, 16, 6),
            (-16, false, 8, 16, 7),
        ];
        for (rel, bi, nb, md, want) in cases {
            assert_eq!(
                relative_position_bucket(rel, bi, nb, md),
                want,
                "relative {rel}, bidirectional {bi}, buckets {nb}, max distance {md}"
            );
        }
    }

    #[test]
    fn configs_round_trip_and_bad_ones_are_refused() {
        let c = T5Config::codet5_small();
        assert!(c.validate().is_ok());
        let back: T5Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        // An HF-style config.json: extra fields, no feed_forward_proj / max distance / tie flag.
        let hf = r#"{"architectures": ["T5ForConditionalGeneration"], "bos_token_id": 1,
            "d_ff": 2048, "d_kv": 64, "d_model": 512, "decoder_start_token_id": 0,
            "dropout_rate": 0.1, "eos_token_id": 2, "initializer_factor": 1.0,
            "is_encoder_decoder": true, "layer_norm_epsilon": 1e-06, "model_type": "t5",
            "n_positions": 512, "num_decoder_layers": 6, "num_heads": 8, "num_layers": 6,
            "pad_token_id": 0, "relative_attention_num_buckets": 32, "vocab_size": 32100}"#;
        let parsed: T5Config = serde_json::from_str(hf).unwrap();
        assert_eq!(parsed, c);
        let minimal = r#"{"vocab_size": 100, "d_model": 8, "d_kv": 4, "d_ff": 16,
            "num_layers": 3, "num_heads": 2, "decoder_start_token_id": null}"#;
        let m: T5Config = serde_json::from_str(minimal).unwrap();
        assert_eq!(m.decoder_layers(), 3);
        assert_eq!((m.decoder_start_token_id, m.eos_token_id), (0, 1));
        assert!(m.tie_word_embeddings && m.validate().is_ok());

        let mut bad = c.clone();
        bad.model_type = "gpt2".into();
        assert!(bad.validate().unwrap_err().contains("model_type"));
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let err = T5::new(&bad, vb.clone()).unwrap_err().to_string();
        assert!(err.contains("model_type"), "{err}");
        let mut bad = c.clone();
        bad.feed_forward_proj = "swish".into();
        assert!(bad.validate().unwrap_err().contains("feed_forward_proj"));
        let mut bad = c.clone();
        bad.num_heads = 0;
        assert!(bad.validate().unwrap_err().contains("num_heads"));
        let mut bad = c.clone();
        bad.eos_token_id = 32100;
        assert!(bad.validate().unwrap_err().contains("eos_token_id"));
        let mut bad = c;
        bad.relative_attention_max_distance = 16;
        assert!(bad
            .validate()
            .unwrap_err()
            .contains("relative_attention_max_distance"));
    }

    #[test]
    fn safetensors_load_with_the_right_shape_only() {
        let cfg = tiny("relu", true);
        let (varmap, model) = build(&cfg, 4);
        // The file holds HF's extra copies too; they must be ignored.
        let mut tensors: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let shared = tensors["shared.weight"].clone();
        tensors.insert(
            "encoder.embed_tokens.weight".into(),
            shared.zeros_like().unwrap(),
        );
        tensors.insert(
            "decoder.embed_tokens.weight".into(),
            shared.zeros_like().unwrap(),
        );
        tensors.insert("lm_head.weight".into(), shared.zeros_like().unwrap());
        let path = std::env::temp_dir().join(format!("t5-test-{}.safetensors", std::process::id()));
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let load = |cfg: &T5Config| {
            // SAFETY: the file is ours and is not modified while mapped.
            let vb = unsafe {
                VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu).unwrap()
            };
            T5::new(cfg, vb)
        };
        let loaded = load(&cfg);
        let mut wider = cfg.clone();
        wider.d_model = 24;
        let wider = load(&wider);
        let mut untied = cfg.clone();
        untied.tie_word_embeddings = false;
        let untied = load(&untied);
        std::fs::remove_file(&path).unwrap();
        let loaded = loaded.unwrap();
        let err = wider.unwrap_err().to_string();
        assert!(err.contains("shape"), "{err}");
        assert!(untied.is_ok(), "lm_head.weight is in the file");

        let src = ids(&[&[5, 9, 3, 7, 2]]);
        let dec = ids(&[&[0, 4, 8]]);
        let out = |m: &T5| {
            let e = m.encode(&m.embed(&src).unwrap(), None).unwrap();
            m.decode(&dec, &e, None).unwrap()
        };
        assert!(max_diff(&out(&model), &out(&loaded)) < 1e-6);
    }

    #[test]
    fn a_tiny_model_learns_three_mappings() {
        let mut cfg = tiny("relu", true);
        cfg.d_model = 32;
        cfg.d_kv = 8;
        cfg.num_heads = 4;
        cfg.d_ff = 64;
        let (varmap, model) = build(&cfg, 5);
        let src = ids(&[&[5, 6, 7, 8, 1], &[9, 10, 1, 0, 0], &[11, 12, 13, 1, 0]]);
        let mask = ids(&[&[1, 1, 1, 1, 1], &[1, 1, 1, 0, 0], &[1, 1, 1, 1, 0]]);
        let targets: [&[u32]; 3] = [&[20, 21, 22, 1], &[23, 22, 21, 1], &[24, 20, 25, 1]];
        let labels = ids(&targets);
        let dec_in: Vec<Vec<u32>> = targets
            .iter()
            .map(|t| std::iter::once(0).chain(t[..3].iter().copied()).collect())
            .collect();
        let dec_in = ids(&dec_in.iter().map(|r| r.as_slice()).collect::<Vec<_>>());
        let params = candle_nn::ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = candle_nn::AdamW::new(varmap.all_vars(), params).unwrap();
        let mut loss_value = f32::INFINITY;
        for _ in 0..200 {
            let encoded = model
                .encode(&model.embed(&src).unwrap(), Some(&mask))
                .unwrap();
            let logits = model.decode(&dec_in, &encoded, Some(&mask)).unwrap();
            let loss = candle_nn::loss::cross_entropy(
                &logits.flatten_to(1).unwrap(),
                &labels.flatten_all().unwrap(),
            )
            .unwrap();
            loss_value = loss.to_scalar::<f32>().unwrap();
            opt.backward_step(&loss).unwrap();
            if loss_value < 0.01 {
                break;
            }
        }
        assert!(loss_value < 0.05, "loss {loss_value}");

        let encoded = model
            .encode(&model.embed(&src).unwrap(), Some(&mask))
            .unwrap();
        let mut cache = T5Cache::default();
        let mut next = Tensor::zeros((3, 1), DType::U32, &Device::Cpu).unwrap();
        let mut out = vec![Vec::new(); 3];
        for _ in 0..6 {
            let logits = model
                .decode_cached(&next, &encoded, Some(&mask), &mut cache)
                .unwrap();
            next = logits.argmax(D::Minus1).unwrap();
            let step = next.flatten_all().unwrap().to_vec1::<u32>().unwrap();
            for (row, &tok) in out.iter_mut().zip(&step) {
                if row.last() != Some(&1) {
                    row.push(tok);
                }
            }
        }
        for (got, want) in out.iter().zip(targets) {
            assert_eq!(got.as_slice(), want);
        }
    }
}
