//! GPT-2 in candle with Hugging Face weight names (`wte`, `wpe`, `h.N.attn.c_attn`, ...), so a
//! local `gpt2` checkpoint loads for fine-tuning and any size builds from a config. Unlike
//! candle-transformers' decoders it returns hidden states (and logits) for every position, trains
//! through differentiable ops only (`candle_nn::ops::softmax`, `layer_norm_slow`), and keeps an
//! explicit [`KvCache`] the caller owns, so beams can reorder it.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use indexer::clip::model::LayerNorm;
use serde::{Deserialize, Serialize};

/// The fields of Hugging Face's `GPT2Config` that shape the model (`config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Always `gpt2`; another value is a checkpoint of another architecture.
    #[serde(default = "gpt2_type")]
    pub model_type: String,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Longest sequence (learned positions).
    pub n_positions: usize,
    /// Width.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// MLP width (HF: null means 4 * n_embd).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// `gelu_new` (tanh approximation) in every GPT-2 release; `gelu` is the exact one.
    #[serde(default = "gelu_new")]
    pub activation_function: String,
    /// Layer-norm epsilon.
    #[serde(default = "layer_norm_eps")]
    pub layer_norm_epsilon: f64,
    /// End-of-text id (HF `eos_token_id`).
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn gpt2_type() -> String {
    "gpt2".into()
}

fn gelu_new() -> String {
    "gelu_new".into()
}

fn layer_norm_eps() -> f64 {
    1e-5
}

impl Gpt2Config {
    /// A model of the given shape with GPT-2's defaults elsewhere.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Gpt2Config {
            model_type: gpt2_type(),
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: gelu_new(),
            layer_norm_epsilon: layer_norm_eps(),
            eos_token_id: None,
        }
    }

    /// Checks what the model code relies on; the message names the bad field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.model_type != "gpt2" {
            return Err(format!(
                "model_type is `{}`: this is not a GPT-2 checkpoint",
                self.model_type
            ));
        }
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return Err(format!(
                "n_embd {} is not a multiple of n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if !matches!(
            self.activation_function.as_str(),
            "gelu_new" | "gelu" | "gelu_pytorch_tanh"
        ) {
            return Err(format!(
                "activation_function `{}` is not supported (gelu_new, gelu)",
                self.activation_function
            ));
        }
        if self.vocab_size == 0 || self.n_positions == 0 || self.n_layer == 0 {
            return Err("vocab_size, n_positions and n_layer must be positive".into());
        }
        Ok(())
    }

    fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

/// GPT-2's `Conv1D`: a dense layer whose `weight` is stored [in, out]; leading dimensions are
/// folded into one matrix product.
#[derive(Debug, Clone)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(inp: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Conv1D {
            weight: vb.get((inp, out), "weight")?,
            bias: vb.get(out, "bias")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let rows = x.elem_count() / inp;
        let y = x
            .reshape((rows, inp))?
            .matmul(&self.weight)?
            .broadcast_add(&self.bias)?;
        *dims.last_mut().expect("at least one dim") = self.weight.dim(1)?;
        y.reshape(dims)
    }
}

/// Cached keys and values of every block for the positions seen so far (decoding only); T5's
/// cache holds two of these (self- and cross-attention).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// Positions already in the cache.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Block `i`'s slot, the cache grown to `blocks` blocks first.
    pub(crate) fn slot(&mut self, blocks: usize, i: usize) -> &mut Option<(Tensor, Tensor)> {
        self.layers.resize(blocks, None);
        &mut self.layers[i]
    }

    /// The cache with its batch rows picked (and repeated) by `rows` (u32 ids): beams that
    /// survive a step keep their parents' past.
    pub fn select(&self, rows: &Tensor) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.index_select(rows, 0)?, v.index_select(rows, 0)?))),
                None => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(KvCache { layers })
    }
}

/// Causal self-attention (`attn.c_attn` packs q, k, v; `attn.c_proj`).
#[derive(Debug, Clone)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    heads: usize,
}

impl Attention {
    fn new(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        Ok(Attention {
            c_attn: Conv1D::new(cfg.n_embd, 3 * cfg.n_embd, vb.pp("c_attn"))?,
            c_proj: Conv1D::new(cfg.n_embd, cfg.n_embd, vb.pp("c_proj"))?,
            heads: cfg.n_head,
        })
    }

    /// `x` [batch, len, dim]; with a cache slot, attends over the cached past too and appends
    /// this call's keys and values to it.
    fn forward(&self, x: &Tensor, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self.c_attn.forward(x)?;
        let split = |i: usize| {
            qkv.narrow(2, i * d, d)?
                .reshape((b, t, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (split(0)? * (hd as f64).powf(-0.5))?;
        let (mut k, mut v) = (split(1)?, split(2)?);
        let training = cache.is_none();
        let mut past = 0;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                past = pk.dim(2)?;
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        // Scores and softmax in f32 whatever the weights' dtype (bf16 training).
        let mut att = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        if t > 1 {
            att = att.broadcast_add(&causal_mask(t, past, x.device())?)?;
        }
        let att = if training {
            candle_nn::ops::softmax(&att, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&att)?
        }
        .to_dtype(v.dtype())?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.c_proj.forward(&y)
    }
}

/// Additive mask [len, past + len]: query i sees keys 0..=past + i.
fn causal_mask(len: usize, past: usize, device: &Device) -> Result<Tensor> {
    let width = past + len;
    let values: Vec<f32> = (0..len)
        .flat_map(|i| {
            (0..width).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(values, (len, width), device)
}

/// One pre-norm block (`h.N`).
#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    c_proj: Conv1D,
    exact_gelu: bool,
}

impl Block {
    fn new(cfg: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Block {
            ln_1: LayerNorm::new(cfg.n_embd, eps, vb.pp("ln_1"))?,
            attn: Attention::new(cfg, vb.pp("attn"))?,
            ln_2: LayerNorm::new(cfg.n_embd, eps, vb.pp("ln_2"))?,
            c_fc: Conv1D::new(cfg.n_embd, cfg.inner(), vb.pp("mlp.c_fc"))?,
            c_proj: Conv1D::new(cfg.inner(), cfg.n_embd, vb.pp("mlp.c_proj"))?,
            exact_gelu: cfg.activation_function == "gelu",
        })
    }

    fn forward(&self, x: &Tensor, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, cache)?)?;
        let h = self.c_fc.forward(&self.ln_2.forward(&x)?)?;
        let h = if self.exact_gelu {
            h.gelu_erf()?
        } else {
            h.gelu()?
        };
        x + self.c_proj.forward(&h)?
    }
}

/// The GPT-2 transformer with its tied language-model head.
#[derive(Debug, Clone)]
pub struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    config: Gpt2Config,
}

impl Gpt2 {
    /// Builds (or loads) the weights under `vb`, which points at the transformer's names
    /// (`wte.weight`, `h.0...`); the LM head is tied to `wte`, as in every GPT-2 release.
    pub fn new(config: &Gpt2Config, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..config.n_layer)
            .map(|i| Block::new(config, vb.pp(format!("h.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Gpt2 {
            wte: vb.get((config.vocab_size, config.n_embd), "wte.weight")?,
            wpe: vb.get((config.n_positions, config.n_embd), "wpe.weight")?,
            blocks,
            ln_f: LayerNorm::new(config.n_embd, config.layer_norm_epsilon, vb.pp("ln_f"))?,
            config: config.clone(),
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Token embeddings of `ids` [batch, len] -> [batch, len, n_embd].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.wte
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.n_embd))
    }

    /// Final hidden states [batch, len, n_embd] of input embeddings `x` that start at position
    /// `cache.len()` (0 without a cache). Training passes no cache.
    pub fn hidden(&self, x: &Tensor, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        let start = cache.as_ref().map_or(0, |c| c.len());
        if start + t > self.config.n_positions {
            candle_core::bail!(
                "sequence of {} positions exceeds the model's n_positions {}",
                start + t,
                self.config.n_positions
            );
        }
        let mut h = x.broadcast_add(&self.wpe.narrow(0, start, t)?)?;
        let blocks = self.blocks.len();
        for (i, block) in self.blocks.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| c.slot(blocks, i));
            h = block.forward(&h, slot)?;
        }
        self.ln_f.forward(&h)
    }

    /// Logits over the vocabulary for hidden states of any shape [..., n_embd].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let e = self.config.n_embd;
        let rows = hidden.elem_count() / e;
        let y = hidden.reshape((rows, e))?.matmul(&self.wte.t()?)?;
        let mut out = dims;
        *out.last_mut().expect("at least one dim") = self.config.vocab_size;
        y.reshape(out)
    }

    /// Logits at every position of token ids [batch, len] (no cache): the training view.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(&self.hidden(&self.embed(ids)?, None)?)
    }
}

/// Seeded initial weights (our RNG: candle's CPU generator cannot be seeded), GPT-2's scheme:
/// N(0, 0.02) for embeddings and matrices, residual projections (`c_proj`) scaled by
/// 1/sqrt(2 n_layer), layer norms 1 and 0, biases 0; other dense layers (the image prefix,
/// stored [out, in]) N(0, 1/sqrt(fan_in)).
pub fn init_weights(varmap: &candle_nn::VarMap, seed: u64, n_layer: usize) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = seeded::Rng::new(seed, 0x6E6E_0002);
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let prefix_layer = name.starts_with("prefix.");
        let values: Vec<f32> = if name.ends_with("bias") {
            vec![0.0; n]
        } else if name.contains("ln_") {
            vec![1.0; n]
        } else {
            let std = if prefix_layer {
                1.0 / (shape.dims().get(1).copied().unwrap_or(1).max(1) as f64).sqrt()
            } else if name.contains("c_proj") {
                0.02 / (2.0 * n_layer.max(1) as f64).sqrt()
            } else {
                0.02
            };
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        };
        var.set(&Tensor::from_vec(values, shape, var.device())?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn tiny() -> Gpt2Config {
        Gpt2Config::new(50, 32, 16, 2, 2)
    }

    #[test]
    fn cached_decoding_matches_the_full_forward_pass() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let model = Gpt2::new(&tiny(), vb).unwrap();
        init_weights(&varmap, 1, 2).unwrap();
        let ids = Tensor::new(&[[3u32, 7, 1, 9, 4, 4, 2]], &dev).unwrap();
        let full = model.forward(&ids).unwrap();
        let mut cache = KvCache::default();
        let head = model
            .hidden(
                &model.embed(&ids.narrow(1, 0, 4).unwrap()).unwrap(),
                Some(&mut cache),
            )
            .unwrap();
        let mut rows = vec![model.logits(&head).unwrap()];
        for i in 4..7 {
            let x = model.embed(&ids.narrow(1, i, 1).unwrap()).unwrap();
            rows.push(
                model
                    .logits(&model.hidden(&x, Some(&mut cache)).unwrap())
                    .unwrap(),
            );
        }
        assert_eq!(cache.len(), 7);
        let stepped = Tensor::cat(&rows, 1).unwrap();
        assert!(max_abs_diff(&full, &stepped) < 1e-4);
    }

    #[test]
    fn later_tokens_do_not_change_earlier_logits() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let model = Gpt2::new(&tiny(), VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        init_weights(&varmap, 2, 2).unwrap();
        let a = model
            .forward(&Tensor::new(&[[1u32, 2, 3, 4]], &dev).unwrap())
            .unwrap();
        let b = model
            .forward(&Tensor::new(&[[1u32, 2, 3, 40]], &dev).unwrap())
            .unwrap();
        let gap = |start: usize, len: usize| {
            max_abs_diff(
                &a.narrow(1, start, len).unwrap(),
                &b.narrow(1, start, len).unwrap(),
            )
        };
        let d = gap(0, 3);
        assert!(d < 1e-5, "{d}");
        assert!(gap(3, 1) > 1e-6);
    }

    #[test]
    fn a_config_of_another_model_type_or_shape_is_refused() {
        let mut c = tiny();
        c.model_type = "t5".into();
        assert!(c.validate().unwrap_err().contains("not a GPT-2"));
        let mut c = tiny();
        c.n_head = 3;
        assert!(c.validate().is_err());
        assert!(tiny().validate().is_ok());
    }
}
