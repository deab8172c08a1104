//! CLIP (image tower, text tower, projections) in candle, with HF weight names so a pretrained
//! `model.safetensors` loads as is, and with forward paths through differentiable ops only
//! (`candle_nn::ops::softmax`, `layer_norm_slow`: the fused kernels have no backward), so the
//! same code trains our small CLIP from scratch.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::config::{Activation, ClipConfig, TextConfig, VisionConfig};

/// Normal init with std 0.02, CLIP's choice for embeddings.
const EMBED_INIT: Init = Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// A dense layer (`weight` [out, in], optional `bias`) that folds every leading dimension into
/// one matrix product, so the CPU runs one large GEMM instead of a batch of small ones.
#[derive(Debug, Clone)]
struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    fn new(inp: usize, out: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / (inp as f64).sqrt();
        let weight = vb.get_with_hints(
            (out, inp),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bias = if bias {
            Some(vb.get_with_hints(
                out,
                "bias",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?)
        } else {
            None
        };
        Ok(Dense { weight, bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let rows = x.elem_count() / inp;
        let y = x.reshape((rows, inp))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("at least one dim") = self.weight.dim(0)?;
        y.reshape(out)
    }
}

/// Layer norm through candle's composable (differentiable) ops (the fused one has no backward).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    /// `weight` (ones) and `bias` (zeros) of length `dim` under `vb`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps: eps as f32,
        })
    }

    /// Normalises the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps)
    }
}

fn activate(act: Activation, x: &Tensor) -> Result<Tensor> {
    match act {
        Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
        Activation::Gelu => x.gelu_erf(),
    }
}

/// Multi-head self-attention (`self_attn.{q,k,v,out}_proj`).
#[derive(Debug, Clone)]
struct Attention {
    q_proj: Dense,
    k_proj: Dense,
    v_proj: Dense,
    out_proj: Dense,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Attention {
            q_proj: Dense::new(dim, dim, true, vb.pp("q_proj"))?,
            k_proj: Dense::new(dim, dim, true, vb.pp("k_proj"))?,
            v_proj: Dense::new(dim, dim, true, vb.pp("v_proj"))?,
            out_proj: Dense::new(dim, dim, true, vb.pp("out_proj"))?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// `x`: [batch, len, dim]; `mask`: additive [len, len] (causal for text) or none.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let split = |t: Tensor| {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = split((self.q_proj.forward(x)? * scale)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let mut att = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            att = att.broadcast_add(mask)?;
        }
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&y)
    }
}

/// One pre-norm transformer block (`encoder.layers.N`).
#[derive(Debug, Clone)]
struct Block {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    act: Activation,
}

impl Block {
    fn new(
        dim: usize,
        inner: usize,
        heads: usize,
        eps: f64,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Block {
            layer_norm1: LayerNorm::new(dim, eps, vb.pp("layer_norm1"))?,
            self_attn: Attention::new(dim, heads, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(dim, eps, vb.pp("layer_norm2"))?,
            fc1: Dense::new(dim, inner, true, vb.pp("mlp").pp("fc1"))?,
            fc2: Dense::new(inner, dim, true, vb.pp("mlp").pp("fc2"))?,
            act,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?)?;
        let h = activate(self.act, &self.fc1.forward(&self.layer_norm2.forward(&x)?)?)?;
        x + self.fc2.forward(&h)?
    }
}

/// A stack of blocks (`encoder.layers`).
#[derive(Debug, Clone)]
struct Encoder {
    layers: Vec<Block>,
}

impl Encoder {
    #[allow(clippy::too_many_arguments)]
    fn new(
        n: usize,
        dim: usize,
        inner: usize,
        heads: usize,
        eps: f64,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        let layers = (0..n)
            .map(|i| Block::new(dim, inner, heads, eps, act, vb.pp("layers").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x, mask)?;
        }
        Ok(x)
    }
}

/// The ViT image tower (`vision_model`): patches + class token + positions, pre-norm, blocks,
/// post-norm of the class token.
#[derive(Debug, Clone)]
struct VisionTransformer {
    class_embedding: Tensor,
    patch_weight: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    cfg: VisionConfig,
}

impl VisionTransformer {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let patches = (cfg.image_size / p) * (cfg.image_size / p);
        let emb = vb.pp("embeddings");
        Ok(VisionTransformer {
            class_embedding: emb.get_with_hints(d, "class_embedding", EMBED_INIT)?,
            patch_weight: emb.get_with_hints(
                (d, cfg.num_channels, p, p),
                "patch_embedding.weight",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?,
            position_embedding: emb.get_with_hints(
                (patches + 1, d),
                "position_embedding.weight",
                EMBED_INIT,
            )?,
            pre_layrnorm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::new(
                cfg.num_hidden_layers,
                d,
                cfg.intermediate_size,
                cfg.num_attention_heads,
                cfg.layer_norm_eps,
                cfg.hidden_act,
                vb.pp("encoder"),
            )?,
            post_layernorm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
            cfg: cfg.clone(),
        })
    }

    /// `pixels`: [batch, channels, side, side] -> pooled [batch, hidden].
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        let d = self.cfg.hidden_size;
        let (gh, gw) = (h / p, w / p);
        // The stride-p convolution as a matmul over unfolded patches (same weights, and a
        // cheaper backward than conv2d's on CPU).
        let patches = pixels
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b * gh * gw, c * p * p))?;
        let kernel = self.patch_weight.reshape((d, c * p * p))?;
        let x = patches.matmul(&kernel.t()?)?.reshape((b, gh * gw, d))?;
        let cls = self.class_embedding.reshape((1, 1, d))?.repeat((b, 1, 1))?;
        let x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.position_embedding)?;
        let x = self.pre_layrnorm.forward(&x)?;
        let x = self.encoder.forward(&x, None)?;
        self.post_layernorm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

/// A 3x3 convolution with padding 1 (`weight` [out, in, 3, 3], `bias` [out]), computed as one
/// gather of every output pixel's 3x3 neighbourhood and one matrix product, whose backward is
/// a scatter-add and two more products; candle's `conv2d` backward runs a per-pixel
/// `conv_transpose2d` and a convolution with the whole output map as its kernel (the small
/// conv CLIP trained at 69.5 pairs/s with it, 85.9 with this; README).
#[derive(Debug, Clone)]
struct Conv3x3 {
    weight: Tensor,
    bias: Tensor,
}

/// A feature map as rows: `rows` [batch * side * side, channels], pixels in row-major order
/// (NHWC), so a convolution reads whole channel vectors and writes its matrix product as is.
#[derive(Debug, Clone)]
struct FeatureRows {
    rows: Tensor,
    batch: usize,
    side: usize,
}

impl FeatureRows {
    /// [batch, channels, side, side] -> rows.
    fn from_nchw(x: &Tensor) -> Result<Self> {
        let (batch, c, h, w) = x.dims4()?;
        if h != w {
            candle_core::bail!("the conv tower takes square images, not {h}x{w}");
        }
        let rows = x.permute((0, 2, 3, 1))?.reshape((batch * h * w, c))?;
        Ok(FeatureRows {
            rows,
            batch,
            side: h,
        })
    }

    /// rows -> [batch, channels * side * side] in NCHW order (what `head` was trained on).
    fn flatten_nchw(&self) -> Result<Tensor> {
        let c = self.rows.dim(1)?;
        self.rows
            .reshape((self.batch, self.side * self.side, c))?
            .transpose(1, 2)?
            .reshape((self.batch, c * self.side * self.side))
    }
}

/// For each output pixel of a 3x3, padding-1 convolution with `stride` over `batch` maps of
/// `side` x `side`, the input row of each of its 9 taps (ky, kx order); a tap in the padding
/// points at row `batch * side * side`, the zero row appended after the map.
fn conv_taps(batch: usize, side: usize, stride: usize) -> Vec<u32> {
    let out = side / stride;
    let zero = (batch * side * side) as u32;
    let mut taps = Vec::with_capacity(batch * out * out * 9);
    for b in 0..batch {
        for oy in 0..out {
            for ox in 0..out {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (y, x) = (
                            (oy * stride + ky) as isize - 1,
                            (ox * stride + kx) as isize - 1,
                        );
                        let inside =
                            (0..side as isize).contains(&y) && (0..side as isize).contains(&x);
                        taps.push(if inside {
                            ((b * side + y as usize) * side + x as usize) as u32
                        } else {
                            zero
                        });
                    }
                }
            }
        }
    }
    taps
}

impl Conv3x3 {
    fn new(inp: usize, out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Conv3x3 {
            weight: vb.get_with_hints(
                (out, inp, 3, 3),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_NORMAL,
            )?,
            bias: vb.get_with_hints(out, "bias", Init::Const(0.0))?,
        })
    }

    /// The convolution of `x` with `stride` 1 or 2 (an even side halves).
    fn forward(&self, x: &FeatureRows, stride: usize) -> Result<FeatureRows> {
        let (out, inp) = (self.weight.dim(0)?, self.weight.dim(1)?);
        let device = x.rows.device();
        let padded = Tensor::cat(
            &[&x.rows, &Tensor::zeros((1, inp), x.rows.dtype(), device)?],
            0,
        )?;
        let taps = conv_taps(x.batch, x.side, stride);
        let n = taps.len() / 9;
        let patches = padded
            .index_select(&Tensor::from_vec(taps, n * 9, device)?, 0)?
            .reshape((n, 9 * inp))?;
        // [out, in, ky, kx] -> [out, ky, kx, in], the patches' column order
        let kernel = self.weight.permute((0, 2, 3, 1))?.reshape((out, 9 * inp))?;
        let rows = patches.matmul(&kernel.t()?)?.broadcast_add(&self.bias)?;
        Ok(FeatureRows {
            rows,
            batch: x.batch,
            side: x.side / stride,
        })
    }
}

/// One stage of the convolutional tower: a stride-2 convolution that halves the side and sets
/// the width (`down`), then, in all but the first stage, a residual stride-1 one (`mix`).
#[derive(Debug, Clone)]
struct ConvStage {
    down: Conv3x3,
    mix: Option<Conv3x3>,
}

/// The convolutional image tower (`vision_model` with `conv_widths`): stages of 3x3
/// convolutions down to a small map, which is flattened (so where a feature lies still
/// counts, as it does for the framed renders) and projected to the width, then normalised.
#[derive(Debug, Clone)]
struct ConvTower {
    stages: Vec<ConvStage>,
    head: Dense,
    post_layernorm: LayerNorm,
    act: Activation,
}

impl ConvTower {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let mut stages = Vec::with_capacity(cfg.conv_widths.len());
        let mut channels = cfg.num_channels;
        for (i, &width) in cfg.conv_widths.iter().enumerate() {
            let vb = vb.pp(format!("stages.{i}"));
            stages.push(ConvStage {
                down: Conv3x3::new(channels, width, vb.pp("down"))?,
                mix: if i == 0 {
                    None
                } else {
                    Some(Conv3x3::new(width, width, vb.pp("mix"))?)
                },
            });
            channels = width;
        }
        let side = cfg.conv_map_side();
        Ok(ConvTower {
            stages,
            head: Dense::new(channels * side * side, cfg.hidden_size, true, vb.pp("head"))?,
            post_layernorm: LayerNorm::new(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("post_layernorm"),
            )?,
            act: cfg.hidden_act,
        })
    }

    /// `pixels`: [batch, channels, side, side] -> pooled [batch, hidden].
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let mut x = FeatureRows::from_nchw(pixels)?;
        for stage in &self.stages {
            let down = stage.down.forward(&x, 2)?;
            x = FeatureRows {
                rows: activate(self.act, &down.rows)?,
                ..down
            };
            if let Some(mix) = &stage.mix {
                let mixed = activate(self.act, &mix.forward(&x, 1)?.rows)?;
                x.rows = (&x.rows + mixed)?;
            }
        }
        self.post_layernorm
            .forward(&self.head.forward(&x.flatten_nchw()?)?)
    }
}

/// The image tower a config names: HF's ViT or our convolutional one.
#[derive(Debug, Clone)]
enum ImageTower {
    Vit(VisionTransformer),
    Conv(ConvTower),
}

impl ImageTower {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(if cfg.is_conv() {
            ImageTower::Conv(ConvTower::new(cfg, vb)?)
        } else {
            ImageTower::Vit(VisionTransformer::new(cfg, vb)?)
        })
    }

    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        match self {
            ImageTower::Vit(t) => t.forward(pixels),
            ImageTower::Conv(t) => t.forward(pixels),
        }
    }
}

/// The text tower (`text_model`): tokens + positions (optionally merged several tokens to a
/// position), causal blocks, final norm, pooled at each sequence's end-of-text position.
#[derive(Debug, Clone)]
struct TextTransformer {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    /// `embeddings.token_merge` and the tokens it merges, when `tokens_per_position` > 1.
    token_merge: Option<(Dense, usize)>,
    hidden: usize,
}

impl TextTransformer {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        Ok(TextTransformer {
            token_embedding: emb.get_with_hints(
                (cfg.vocab_size, d),
                "token_embedding.weight",
                EMBED_INIT,
            )?,
            position_embedding: emb.get_with_hints(
                (cfg.max_position_embeddings, d),
                "position_embedding.weight",
                EMBED_INIT,
            )?,
            encoder: Encoder::new(
                cfg.num_hidden_layers,
                d,
                cfg.intermediate_size,
                cfg.num_attention_heads,
                cfg.layer_norm_eps,
                cfg.hidden_act,
                vb.pp("encoder"),
            )?,
            final_layer_norm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("final_layer_norm"))?,
            token_merge: match cfg.tokens_per_position {
                1 => None,
                m => Some((Dense::new(m * d, d, true, emb.pp("token_merge"))?, m)),
            },
            hidden: d,
        })
    }

    /// `ids`: [batch, len] u32; `eos`: [batch] u32 positions of each end token -> [batch, hidden].
    fn forward(&self, ids: &Tensor, eos: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let tokens = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, self.hidden))?;
        let mut x = tokens.broadcast_add(&self.position_embedding.narrow(0, 0, l)?)?;
        let (mut l, mut eos) = (l, eos.clone());
        if let Some((merge, m)) = &self.token_merge {
            // Each position reads `m` consecutive tokens side by side; a sequence is pooled at
            // the position holding its end token.
            l /= m;
            x = merge.forward(&x.reshape((b, l, m * self.hidden))?)?;
            let positions: Vec<u32> = eos
                .to_vec1::<u32>()?
                .iter()
                .map(|e| e / *m as u32)
                .collect();
            eos = Tensor::new(positions, eos.device())?;
        }
        let x = self
            .encoder
            .forward(&x, Some(&causal_mask(l, ids.device())?))?;
        let offsets = Tensor::arange(0u32, b as u32, ids.device())?.affine(l as f64, 0.0)?;
        let rows = (offsets + eos)?;
        // The norm is per token, so only the pooled tokens need it.
        let pooled = x.reshape((b * l, self.hidden))?.index_select(&rows, 0)?;
        self.final_layer_norm.forward(&pooled)
    }
}

fn causal_mask(len: usize, device: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (len, len), device)
}

/// A CLIP model: both towers, their projections into the shared space, and the learned
/// temperature `logit_scale`.
#[derive(Debug, Clone)]
pub struct Clip {
    vision: ImageTower,
    visual_projection: Dense,
    text: Option<(TextTransformer, Dense)>,
    logit_scale: Option<Tensor>,
    config: ClipConfig,
}

impl Clip {
    /// Builds the full model (both towers) from `vb`: a VarMap-backed builder creates and
    /// registers every weight (training), a safetensors-backed one loads them.
    pub fn new(config: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let mut clip = Self::vision_only(config, vb.clone())?;
        let text = TextTransformer::new(&config.text_config, vb.pp("text_model"))?;
        let proj = Dense::new(
            config.text_config.hidden_size,
            config.projection_dim,
            false,
            vb.pp("text_projection"),
        )?;
        clip.text = Some((text, proj));
        clip.logit_scale = Some(vb.get_with_hints(
            (),
            "logit_scale",
            Init::Const(config.logit_scale_init_value),
        )?);
        Ok(clip)
    }

    /// Builds only the image side (`vision_model`, `visual_projection`): what embedding for an
    /// index needs, so a checkpoint's text weights are never read.
    pub fn vision_only(config: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Clip {
            vision: ImageTower::new(&config.vision_config, vb.pp("vision_model"))?,
            visual_projection: Dense::new(
                config.vision_config.hidden_size,
                config.projection_dim,
                false,
                vb.pp("visual_projection"),
            )?,
            text: None,
            logit_scale: None,
            config: config.clone(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Image embeddings (not normalised): [batch, C, S, S] -> [batch, projection_dim].
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.visual_projection
            .forward(&self.vision.forward(pixels)?)
    }

    /// Text embeddings (not normalised) of token ids [batch, len] pooled at `eos` [batch].
    pub fn text_features(&self, ids: &Tensor, eos: &Tensor) -> Result<Tensor> {
        let (text, proj) = self.text.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("this CLIP was loaded without its text tower".into())
        })?;
        proj.forward(&text.forward(ids, eos)?)
    }

    /// The symmetric InfoNCE loss of a batch of matching (image, code) pairs: cross-entropy of
    /// each image against all codes of the batch and of each code against all images.
    pub fn contrastive_loss(&self, pixels: &Tensor, ids: &Tensor, eos: &Tensor) -> Result<Tensor> {
        let img = l2_normalise(&self.image_features(pixels)?)?;
        self.infonce(&img, ids, eos)
    }

    /// The training losses of a batch from one pass of the image tower: the contrastive loss
    /// and, when a shape target is given, [`shape_loss`] of the same image embeddings.
    pub fn training_losses(
        &self,
        pixels: &Tensor,
        ids: &Tensor,
        eos: &Tensor,
        shape: Option<&ShapeTarget>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let img = l2_normalise(&self.image_features(pixels)?)?;
        let contrastive = self.infonce(&img, ids, eos)?;
        let shape = match shape {
            Some(t) => Some(shape_loss(&img, &self.temperature()?, t)?),
            None => None,
        };
        Ok((contrastive, shape))
    }

    /// exp(logit_scale) capped at 100 as in CLIP.
    fn temperature(&self) -> Result<Tensor> {
        let scale = self.logit_scale.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("no logit_scale in a vision-only CLIP".into())
        })?;
        scale.exp()?.clamp(0f32, 100f32)
    }

    fn infonce(&self, img: &Tensor, ids: &Tensor, eos: &Tensor) -> Result<Tensor> {
        let txt = l2_normalise(&self.text_features(ids, eos)?)?;
        let temperature = self.temperature()?;
        let logits = img.matmul(&txt.t()?)?.broadcast_mul(&temperature)?;
        let n = logits.dim(0)?;
        let eye = Tensor::eye(n, DType::F32, logits.device())?;
        let ce = |l: &Tensor| -> Result<Tensor> {
            let lp = candle_nn::ops::log_softmax(l, D::Minus1)?;
            (lp * &eye)?.sum_all()?.affine(-1.0 / n as f64, 0.0)
        };
        (ce(&logits)? + ce(&logits.t()?)?)? * 0.5
    }
}

/// For each image of a batch, the share of its attention each other image of the batch should
/// get, from how alike their solids are: rows sum to 1, or are all 0 for an image without a
/// target; the diagonal is 0.
#[derive(Debug, Clone)]
pub struct ShapeTarget {
    /// [batch, batch] target distribution.
    pub weights: Tensor,
    /// Rows that carry a target.
    pub rows: usize,
}

/// Cross-entropy between each image's softmax over the other images' cosine similarities
/// (times `scale`, the model's own contrastive temperature) and its [`ShapeTarget`] row,
/// averaged over rows with a target: it pulls together the embeddings of parts whose shapes
/// agree, whatever their code.
pub fn shape_loss(img: &Tensor, scale: &Tensor, target: &ShapeTarget) -> Result<Tensor> {
    let n = img.dim(0)?;
    let eye = Tensor::eye(n, DType::F32, img.device())?;
    let logits = (img.matmul(&img.t()?)?.broadcast_mul(scale)? - eye.affine(1e4, 0.0)?)?;
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    (lp * &target.weights)?
        .sum_all()?
        .affine(-1.0 / target.rows.max(1) as f64, 0.0)
}

/// Rows scaled to unit length (differentiable).
pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    x.broadcast_div(&(norm + 1e-12)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny() -> ClipConfig {
        let mut c = ClipConfig::small(40, 39);
        c.vision_config.hidden_size = 16;
        c.vision_config.intermediate_size = 32;
        c.vision_config.num_attention_heads = 2;
        c.vision_config.num_hidden_layers = 2;
        c.vision_config.image_size = 16;
        c.text_config.hidden_size = 16;
        c.text_config.intermediate_size = 32;
        c.text_config.num_attention_heads = 2;
        c.text_config.num_hidden_layers = 2;
        c.text_config.max_position_embeddings = 12;
        c.text_config.tokens_per_position = 1;
        c.projection_dim = 8;
        c
    }

    fn batch(dev: &Device) -> (Tensor, Tensor, Tensor) {
        let pixels = Tensor::randn(0f32, 1f32, (4, 1, 16, 16), dev).unwrap();
        let ids: Vec<u32> = (0..4 * 12).map(|i| (i * 7 % 38) as u32).collect();
        let ids = Tensor::from_vec(ids, (4, 12), dev).unwrap();
        let eos = Tensor::new(&[11u32, 5, 8, 3], dev).unwrap();
        (pixels, ids, eos)
    }

    /// [`tiny`] reading two tokens per text position.
    fn tiny_merged() -> ClipConfig {
        let mut c = tiny();
        c.text_config.tokens_per_position = 2;
        c
    }

    /// [`tiny`] with a two-stage convolutional image tower (16 px -> 4 px map).
    fn tiny_conv() -> ClipConfig {
        let mut c = tiny();
        c.vision_config.conv_widths = vec![4, 8];
        c
    }

    #[test]
    fn gathered_convolution_equals_candles_conv2d() {
        // The tower's gather + matmul convolution against candle's own conv2d, both strides,
        // so padding, tap order and the kernel's column order are all checked.
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        // a random bias, not the zero init, so its broadcast is checked too
        let conv = Conv3x3 {
            bias: Tensor::randn(0f64, 1f64, 5, &dev).unwrap(),
            ..Conv3x3::new(3, 5, vb).unwrap()
        };
        let x = Tensor::randn(0f64, 1f64, (2, 3, 8, 8), &dev).unwrap();
        for stride in [1, 2] {
            let ours = conv
                .forward(&FeatureRows::from_nchw(&x).unwrap(), stride)
                .unwrap();
            let side = 8 / stride;
            assert_eq!((ours.batch, ours.side), (2, side));
            let ours = ours
                .rows
                .reshape((2, side, side, 5))
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            let candle = x
                .conv2d(&conv.weight, 1, stride, 1, 1)
                .unwrap()
                .broadcast_add(&conv.bias.reshape((1, 5, 1, 1)).unwrap())
                .unwrap();
            let diff = (ours - candle)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(diff < 1e-12, "stride {stride}: max difference {diff}");
        }
    }

    #[test]
    fn conv_tower_gradients_match_finite_differences() {
        // The gathered convolution's backward (index_select's scatter-add, the kernel's
        // permute) is checked here, not assumed: every weight of a two-stage tower (stride 2
        // and the residual stride 1), in f64, against central differences of a fixed linear
        // read-out of the features.
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
        let mut cfg = tiny_conv().vision_config;
        cfg.hidden_act = Activation::Gelu;
        let tower = ConvTower::new(&cfg, vb).unwrap();
        let pixels = Tensor::randn(0f64, 1f64, (2, 1, 16, 16), &dev).unwrap();
        let readout = Tensor::randn(0f64, 1f64, (2, cfg.hidden_size), &dev).unwrap();
        let objective = || -> f64 {
            (tower.forward(&pixels).unwrap() * &readout)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let grads = (tower.forward(&pixels).unwrap() * &readout)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let data = varmap.data().lock().unwrap();
        assert_eq!(data.len(), 10, "{:?}", data.keys());
        let eps = 1e-5;
        for (name, var) in data.iter() {
            let analytic: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient reaches {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let start: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let shape = var.shape().clone();
            for i in (0..start.len()).step_by(start.len().div_ceil(5)) {
                let at = |delta: f64| {
                    let mut w = start.clone();
                    w[i] += delta;
                    var.set(&Tensor::from_vec(w, shape.clone(), &dev).unwrap())
                        .unwrap();
                    objective()
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                var.set(&Tensor::from_vec(start.clone(), shape.clone(), &dev).unwrap())
                    .unwrap();
                let tolerance = 1e-5 * (1.0 + numeric.abs());
                assert!(
                    (numeric - analytic[i]).abs() < tolerance,
                    "{name}[{i}]: candle {} vs finite difference {numeric}",
                    analytic[i]
                );
            }
        }
    }

    #[test]
    fn shape_loss_is_lowest_when_embeddings_follow_the_target() {
        let dev = Device::Cpu;
        // image 0's target is image 1, image 1's is image 0, image 2 has none
        let weights =
            Tensor::new(&[[0f32, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], &dev).unwrap();
        let target = ShapeTarget { weights, rows: 2 };
        let loss = |rows: &[[f32; 2]; 3]| {
            let img = l2_normalise(&Tensor::new(rows, &dev).unwrap()).unwrap();
            let scale = Tensor::new(20f32, &dev).unwrap();
            shape_loss(&img, &scale, &target)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let follows = loss(&[[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]]);
        let crossed = loss(&[[1.0, 0.0], [-1.0, 0.0], [1.0, 0.1]]);
        assert!(follows < 0.01, "{follows}");
        assert!(crossed > 10.0, "{crossed}");
    }

    #[test]
    fn gradients_reach_every_weight() {
        // 2 towers x 2 blocks x 16 tensors + embeddings, norms, projections, logit_scale;
        // merging tokens adds token_merge's weight and bias.
        gradients_reach_every_weight_of(&tiny(), 2 * 2 * 16 + 7 + 4 + 2 + 1);
        gradients_reach_every_weight_of(&tiny_merged(), 2 * 2 * 16 + 7 + 4 + 2 + 1 + 2);
        // the conv tower: 2 stages (down; down + mix) + head + post norm = 10 tensors
        gradients_reach_every_weight_of(&tiny_conv(), 2 * 16 + 10 + 4 + 2 + 1);
    }

    fn gradients_reach_every_weight_of(config: &ClipConfig, tensors: usize) {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let clip = Clip::new(config, vb).unwrap();
        let (pixels, ids, eos) = batch(&dev);
        let loss = clip.contrastive_loss(&pixels, &ids, &eos).unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        assert_eq!(data.len(), tensors, "{:?}", data.keys());
        for (name, var) in data.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient reaches {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // A key bias adds q.b to every logit of a query's row, which softmax cancels: its
            // gradient is 0 in exact arithmetic and only rounding makes it non-zero (exactly 0
            // in some random inits), so it must reach the bias but may vanish.
            let may_vanish = name.ends_with("k_proj.bias");
            assert!(
                norm.is_finite() && (norm > 0.0 || may_vanish),
                "{name}: gradient norm {norm}"
            );
        }
    }

    /// How far sequence `row`'s text vector moves when its tokens from `from` on are replaced.
    fn text_shift(clip: &Clip, row: usize, from: usize) -> f32 {
        let dev = Device::Cpu;
        let (_, ids, eos) = batch(&dev);
        let a = clip.text_features(&ids, &eos).unwrap();
        let mut v = ids.to_vec2::<u32>().unwrap();
        v[row][from..].iter_mut().for_each(|t| *t = 0);
        let b = clip
            .text_features(&Tensor::new(v, &dev).unwrap(), &eos)
            .unwrap();
        (a.get(row).unwrap() - b.get(row).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn text_pooling_ignores_tokens_after_the_end() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let clip = Clip::new(&tiny(), VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        // Sequence 3 ends at position 3: what follows must not move its vector, what precedes must.
        assert!(text_shift(&clip, 3, 4) < 1e-5);
        assert!(text_shift(&clip, 3, 2) > 1e-4);
    }

    #[test]
    fn merged_text_pooling_reads_up_to_the_ends_position() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let clip = Clip::new(
            &tiny_merged(),
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        )
        .unwrap();
        // Sequence 2 ends at token 8, which shares position 4 with token 9: tokens from 10 on
        // are outside its pooled position, tokens 8 and 9 inside, token 7 before it.
        assert!(text_shift(&clip, 2, 10) < 1e-5);
        assert!(text_shift(&clip, 2, 9) > 1e-4);
        assert!(text_shift(&clip, 2, 7) > 1e-4);
    }

    #[test]
    fn loss_falls_when_trained_on_one_batch() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let clip = Clip::new(&tiny(), VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let (pixels, ids, eos) = batch(&dev);
        let first = clip
            .contrastive_loss(&pixels, &ids, &eos)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let mut opt = candle_nn::optim::SGD::new(varmap.all_vars(), 0.05).unwrap();
        use candle_nn::Optimizer;
        for _ in 0..30 {
            let loss = clip.contrastive_loss(&pixels, &ids, &eos).unwrap();
            opt.backward_step(&loss).unwrap();
        }
        let last = clip
            .contrastive_loss(&pixels, &ids, &eos)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(last < first * 0.5, "{first} -> {last}");
    }
}
