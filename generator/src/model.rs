//! The image-conditioned code generator: a language model (GPT-2, or the CodeT5 encoder-decoder)
//! plus an image prefix (ClipCap style: the query's image vector mapped to a few embeddings in
//! front of the prompt), and its checkpoint folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result as CResult, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use indexer::clip::checkpoint::{read_json, write_json, WEIGHTS_FILE};
use indexer::encoder::EncoderIdentity;
use serde::{Deserialize, Serialize};

use crate::gpt2::{Gpt2, Gpt2Config, KvCache};
use crate::grammar::TokenMask;
use crate::prompt::{batch, seq2seq_batch, PromptLayout};
use crate::t5::{T5Cache, T5Config, T5};
use crate::tokenizer::GenTokenizer;
use crate::GeneratorError;

/// HF model shape (`GPT2Config` or `T5Config`).
pub const CONFIG_FILE: &str = "config.json";
/// What makes a language model an image-to-code generator: prefix, prompt layout, image encoder.
pub const GENERATOR_FILE: &str = "generator.json";
/// The code tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Version of `generator.json`; another is refused.
pub const GENERATOR_FORMAT: u32 = 1;

/// Architectures `--arch` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Decoder-only GPT-2: prefix, neighbours and target in one causal sequence.
    Gpt2,
    /// CodeT5 (T5 encoder-decoder): the encoder reads prefix and neighbours, the decoder writes.
    Codet5,
}

impl Arch {
    /// The `model_type` of this architecture's `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Codet5 => "t5",
        }
    }
}

/// The language model's shape, as its `config.json` holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum LmConfig {
    /// `GPT2Config`.
    Gpt2(Gpt2Config),
    /// `T5Config` (CodeT5).
    T5(T5Config),
}

impl LmConfig {
    /// Its architecture.
    pub fn arch(&self) -> Arch {
        match self {
            LmConfig::Gpt2(_) => Arch::Gpt2,
            LmConfig::T5(_) => Arch::Codet5,
        }
    }

    /// Width of the token embeddings (the image prefix's output width).
    pub fn width(&self) -> usize {
        match self {
            LmConfig::Gpt2(c) => c.n_embd,
            LmConfig::T5(c) => c.d_model,
        }
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        match self {
            LmConfig::Gpt2(c) => c.vocab_size,
            LmConfig::T5(c) => c.vocab_size,
        }
    }

    /// Most positions one sequence may use (GPT-2's learned positions); None for T5, whose
    /// relative position buckets have no end.
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            LmConfig::Gpt2(c) => Some(c.n_positions),
            LmConfig::T5(_) => None,
        }
    }

    /// Blocks of the (decoder) stack, for the initial weights' scale.
    fn layers(&self) -> usize {
        match self {
            LmConfig::Gpt2(c) => c.n_layer,
            LmConfig::T5(c) => c.decoder_layers(),
        }
    }

    /// Writes `config.json` in HF's layout.
    pub fn write(&self, path: &Path) -> Result<(), GeneratorError> {
        match self {
            LmConfig::Gpt2(c) => write_json(path, c)?,
            LmConfig::T5(c) => write_json(path, c)?,
        }
        Ok(())
    }

    /// Reads a `config.json` of either architecture (by its `model_type`) and checks it.
    pub fn read(path: &Path) -> Result<Self, GeneratorError> {
        let raw: serde_json::Value = read_json(path)?;
        let config = match model_arch(&raw, path)? {
            Arch::Gpt2 => LmConfig::Gpt2(
                serde_json::from_value(raw)
                    .map_err(|e| bad(path, format!("not a GPT-2 config: {e}")))?,
            ),
            Arch::Codet5 => LmConfig::T5(
                serde_json::from_value(raw)
                    .map_err(|e| bad(path, format!("not a T5 config: {e}")))?,
            ),
        };
        config.validate().map_err(|m| bad(path, m))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            LmConfig::Gpt2(c) => c.validate(),
            LmConfig::T5(c) => c.validate(),
        }
    }
}

/// The architecture a `config.json` names, or the refusal of any other.
fn model_arch(raw: &serde_json::Value, path: &Path) -> Result<Arch, GeneratorError> {
    let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    [Arch::Gpt2, Arch::Codet5]
        .into_iter()
        .find(|a| a.model_type() == model_type)
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "a checkpoint of another architecture (model_type `{model_type}`); this generator is gpt2 or t5 (codet5)"
                ),
            )
        })
}

/// `generator.json`: everything beyond the language model's shape that a checkpoint needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorConfig {
    /// [`GENERATOR_FORMAT`].
    pub format: u32,
    /// The language model's architecture.
    pub arch: Arch,
    /// The image encoder whose vectors the prefix reads (the index's encoder).
    pub encoder: EncoderIdentity,
    /// Image prefix embeddings in front of the prompt.
    pub prefix_len: usize,
    /// Hidden width of the prefix MLP.
    pub prefix_hidden: usize,
    /// How prompts are laid out and cut.
    pub layout: PromptLayout,
}

/// The image vector -> `prefix_len` input embeddings (`prefix.fc1`, `prefix.fc2`, torch layout).
#[derive(Debug, Clone)]
struct ImagePrefix {
    fc1: Linear,
    fc2: Linear,
    len: usize,
    width: usize,
}

impl ImagePrefix {
    fn new(dims: usize, hidden: usize, len: usize, width: usize, vb: VarBuilder) -> CResult<Self> {
        let fc1 = Linear::new(
            vb.pp("fc1").get((hidden, dims), "weight")?,
            Some(vb.pp("fc1").get(hidden, "bias")?),
        );
        let fc2 = Linear::new(
            vb.pp("fc2").get((len * width, hidden), "weight")?,
            Some(vb.pp("fc2").get(len * width, "bias")?),
        );
        Ok(ImagePrefix {
            fc1,
            fc2,
            len,
            width,
        })
    }

    /// `images` [batch, dims] -> [batch, len, width].
    fn forward(&self, images: &Tensor) -> CResult<Tensor> {
        let b = images.dim(0)?;
        let h = self.fc1.forward(images)?.gelu()?;
        self.fc2.forward(&h)?.reshape((b, self.len, self.width))
    }
}

/// The language model under the prefix.
#[derive(Debug, Clone)]
enum LanguageModel {
    Gpt2(Gpt2),
    T5(T5),
}

/// What decoding carries from one step to the next: GPT-2's keys and values, or T5's decoder
/// and cross-attention caches.
#[derive(Debug, Clone)]
pub enum DecodeCache {
    /// GPT-2's per-block keys and values.
    Gpt2(KvCache),
    /// T5's cache and the encoder output it was started from.
    T5 {
        /// Decoder self- and cross-attention keys and values.
        cache: T5Cache,
        /// Encoder output (read while the cache has no cross-attention keys).
        encoded: Tensor,
    },
}

impl DecodeCache {
    /// The cache with its batch rows picked (and repeated) by `rows` (u32): beams that survive
    /// a step keep their parents' past.
    pub fn select(&self, rows: &Tensor) -> CResult<DecodeCache> {
        Ok(match self {
            DecodeCache::Gpt2(c) => DecodeCache::Gpt2(c.select(rows)?),
            DecodeCache::T5 { cache, encoded } => DecodeCache::T5 {
                cache: cache.select(rows)?,
                encoded: encoded.clone(),
            },
        })
    }
}

/// Language model + image prefix: the trainable image-to-code model.
#[derive(Debug, Clone)]
pub struct CodeModel {
    lm: LanguageModel,
    lm_config: LmConfig,
    prefix: ImagePrefix,
    config: GeneratorConfig,
}

impl CodeModel {
    /// Builds (or loads) the weights under `vb`: GPT-2 under `transformer.*` (HF
    /// GPT2LMHeadModel names), T5 at the root (HF T5ForConditionalGeneration names), and the
    /// prefix under `prefix.*`.
    pub fn new(lm: &LmConfig, config: &GeneratorConfig, vb: VarBuilder) -> CResult<Self> {
        if lm.arch() != config.arch {
            candle_core::bail!(
                "generator.json names {:?}, config.json is {}",
                config.arch,
                lm.arch().model_type()
            );
        }
        let model = match lm {
            LmConfig::Gpt2(c) => LanguageModel::Gpt2(Gpt2::new(c, vb.pp("transformer"))?),
            LmConfig::T5(c) => LanguageModel::T5(T5::new(c, vb.clone())?),
        };
        Ok(CodeModel {
            lm: model,
            lm_config: lm.clone(),
            prefix: ImagePrefix::new(
                config.encoder.dims,
                config.prefix_hidden,
                config.prefix_len,
                lm.width(),
                vb.pp("prefix"),
            )?,
            config: config.clone(),
        })
    }

    /// The language model's shape.
    pub fn lm_config(&self) -> &LmConfig {
        &self.lm_config
    }

    /// The generator settings.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Logits at the positions that predict each target token of `seqs` (ids, context length;
    /// as [`crate::prompt::training_ids`] makes them), [targets, vocab], and those tokens
    /// [targets]: what the loss reads. `images` [batch, dims] are the rows' image vectors;
    /// `pad` fills short rows.
    pub fn target_logits(
        &self,
        images: &Tensor,
        seqs: &[(Vec<u32>, usize)],
        pad: u32,
    ) -> CResult<(Tensor, Tensor)> {
        let dev = images.device();
        let p = self.config.prefix_len;
        let prefix = self.prefix.forward(images)?;
        let (hidden, width, positions, labels) = match &self.lm {
            LanguageModel::Gpt2(gpt) => {
                let b = batch(seqs, p, pad);
                let ids = Tensor::from_slice(&b.ids, (b.batch, b.len), dev)?;
                let x = Tensor::cat(&[prefix, gpt.embed(&ids)?], 1)?;
                (
                    gpt.hidden(&x, None)?,
                    gpt.config().n_embd,
                    b.positions,
                    b.labels,
                )
            }
            LanguageModel::T5(t5) => {
                let b = seq2seq_batch(seqs, p, pad);
                let ctx = Tensor::from_slice(&b.context, (b.batch, b.context_len), dev)?;
                let mask = Tensor::from_slice(&b.context_mask, (b.batch, p + b.context_len), dev)?;
                let x = Tensor::cat(&[prefix, t5.embed(&ctx)?], 1)?;
                let encoded = t5.encode(&x, Some(&mask))?;
                let dec = Tensor::from_slice(&b.decoder, (b.batch, b.target_len), dev)?;
                (
                    t5.decode_hidden(&dec, &encoded, Some(&mask))?,
                    t5.config().d_model,
                    b.positions,
                    b.labels,
                )
            }
        };
        let rows = hidden.elem_count() / width;
        let at = Tensor::from_slice(&positions, positions.len(), dev)?;
        let picked = hidden.reshape((rows, width))?.index_select(&at, 0)?;
        let logits = match &self.lm {
            LanguageModel::Gpt2(gpt) => gpt.logits(&picked)?,
            LanguageModel::T5(t5) => t5.logits(&picked)?,
        };
        // The loss reads f32 logits whatever the weights' dtype (bf16 training).
        Ok((
            logits.to_dtype(DType::F32)?,
            Tensor::from_slice(&labels, labels.len(), dev)?,
        ))
    }

    /// Mean cross-entropy over the target and end tokens of `seqs` (see
    /// [`CodeModel::target_logits`]); returns it with the number of tokens it covers.
    pub fn loss(
        &self,
        images: &Tensor,
        seqs: &[(Vec<u32>, usize)],
        pad: u32,
    ) -> CResult<(Tensor, usize)> {
        let (logits, labels) = self.target_logits(images, seqs, pad)?;
        let n = labels.dim(0)?;
        Ok((candle_nn::loss::cross_entropy(&logits, &labels)?, n))
    }

    /// Starts decoding: the image prefix and prompt `ids` [batch, len] (ending with
    /// `<|code|>`) go through the model; returns the logits of the first code token
    /// [batch, vocab] and the cache to continue from. T5's encoder reads the whole prompt and
    /// its decoder starts from the prompt's last token, as in training.
    pub fn start(&self, images: &Tensor, ids: &Tensor) -> CResult<(Tensor, DecodeCache)> {
        let prefix = self.prefix.forward(images)?;
        match &self.lm {
            LanguageModel::Gpt2(gpt) => {
                let mut cache = KvCache::default();
                let x = Tensor::cat(&[prefix, gpt.embed(ids)?], 1)?;
                let h = gpt.hidden(&x, Some(&mut cache))?;
                let t = h.dim(1)?;
                let logits = gpt.logits(&h.narrow(1, t - 1, 1)?.squeeze(1)?)?;
                Ok((logits, DecodeCache::Gpt2(cache)))
            }
            LanguageModel::T5(t5) => {
                let x = Tensor::cat(&[prefix, t5.embed(ids)?], 1)?;
                let encoded = t5.encode(&x, None)?;
                let len = ids.dim(1)?;
                let first = ids.narrow(1, len - 1, 1)?;
                let mut cache = T5Cache::default();
                let logits = t5.decode_cached(&first, &encoded, None, &mut cache)?;
                Ok((logits.squeeze(1)?, DecodeCache::T5 { cache, encoded }))
            }
        }
    }

    /// One decoding step: `ids` [batch] (one new token per row) -> logits [batch, vocab].
    pub fn step(&self, ids: &Tensor, cache: &mut DecodeCache) -> CResult<Tensor> {
        let ids = ids.unsqueeze(1)?;
        match (&self.lm, cache) {
            (LanguageModel::Gpt2(gpt), DecodeCache::Gpt2(cache)) => {
                let h = gpt.hidden(&gpt.embed(&ids)?, Some(cache))?;
                gpt.logits(&h.squeeze(1)?)
            }
            (LanguageModel::T5(t5), DecodeCache::T5 { cache, encoded }) => {
                t5.decode_cached(&ids, encoded, None, cache)?.squeeze(1)
            }
            _ => candle_core::bail!("a decoding cache of the other architecture"),
        }
    }
}

/// The model over `varmap`'s weights cast to `dtype` (bf16 for mixed-precision training): the
/// casts are part of the graph, so the loss's gradients reach the f32 variables the optimizer
/// updates. Rebuild it after every update (the casts are copies).
pub fn cast_model(
    varmap: &VarMap,
    lm: &LmConfig,
    config: &GeneratorConfig,
    dtype: DType,
) -> CResult<CodeModel> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut tensors = HashMap::with_capacity(data.len());
    let mut device = Device::Cpu;
    for (name, var) in data.iter() {
        device = var.device().clone();
        tensors.insert(name.clone(), var.as_tensor().to_dtype(dtype)?);
    }
    drop(data);
    CodeModel::new(
        lm,
        config,
        VarBuilder::from_tensors(tensors, dtype, &device),
    )
}

/// Seeded initial weights of a whole model: the language model's own scheme, and for the prefix
/// zero biases and N(0, 1/fan_in) weights.
pub fn init_model_weights(varmap: &VarMap, seed: u64, lm: &LmConfig) -> CResult<()> {
    match lm {
        // GPT-2's initialiser covers `prefix.*` the same way.
        LmConfig::Gpt2(_) => crate::gpt2::init_weights(varmap, seed, lm.layers()),
        LmConfig::T5(c) => {
            crate::t5::init_weights(varmap, seed, c)?;
            let data = varmap.data().lock().expect("varmap lock");
            let mut names: Vec<&String> =
                data.keys().filter(|n| n.starts_with("prefix.")).collect();
            names.sort();
            let mut rng = seeded::Rng::new(seed, 0x7E_F1C5);
            for name in names {
                let var = &data[name];
                let shape = var.shape().clone();
                let n = shape.elem_count();
                let values: Vec<f32> = if name.ends_with("bias") {
                    vec![0.0; n]
                } else {
                    let fan_in = shape.dims().get(1).copied().unwrap_or(1).max(1) as f64;
                    (0..n)
                        .map(|_| (rng.normal() / fan_in.sqrt()) as f32)
                        .collect()
                };
                var.set(&Tensor::from_vec(values, shape, var.device())?)?;
            }
            Ok(())
        }
    }
}

/// A generator checkpoint folder, loaded: model, tokenizer and where it came from.
pub struct Generator {
    /// The model.
    pub model: CodeModel,
    /// Its tokenizer.
    pub tokenizer: GenTokenizer,
    /// The folder.
    pub dir: PathBuf,
    /// Where it runs.
    pub device: Device,
    /// The dialect grammar over this vocabulary (constrained decoding).
    pub(crate) grammar: TokenMask,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("dir", &self.dir).finish()
    }
}

fn bad(path: &Path, message: impl Into<String>) -> GeneratorError {
    GeneratorError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads and checks `config.json` and `generator.json` of a checkpoint folder (their
/// architectures must agree).
pub fn read_configs(dir: &Path) -> Result<(LmConfig, GeneratorConfig), GeneratorError> {
    if !dir.is_dir() {
        return Err(bad(dir, "not a folder"));
    }
    let gen_path = dir.join(GENERATOR_FILE);
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(bad(
            dir,
            "not a generator checkpoint folder (no config.json)",
        ));
    }
    let raw: serde_json::Value = read_json(&cfg_path)?;
    let arch = model_arch(&raw, &cfg_path)?;
    if !gen_path.is_file() {
        return Err(bad(
            dir,
            format!(
                "a {} checkpoint but not an image-to-code generator (no generator.json): pass it as --init to `rag train generator`",
                arch.model_type()
            ),
        ));
    }
    let config: GeneratorConfig = read_json(&gen_path)?;
    if config.format != GENERATOR_FORMAT {
        return Err(bad(
            &gen_path,
            format!(
                "format {} (this build reads {GENERATOR_FORMAT}); retrain",
                config.format
            ),
        ));
    }
    if config.arch != arch {
        return Err(bad(
            &cfg_path,
            format!(
                "a checkpoint of another architecture (model_type `{}`) than generator.json's {:?}",
                arch.model_type(),
                config.arch
            ),
        ));
    }
    Ok((LmConfig::read(&cfg_path)?, config))
}

impl Generator {
    /// Loads a checkpoint folder written by `rag train generator`; refuses another
    /// architecture, weights of another shape, and a tokenizer of another vocabulary.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, GeneratorError> {
        let (lm, config) = read_configs(dir)?;
        let tok_path = dir.join(TOKENIZER_FILE);
        if !tok_path.is_file() {
            return Err(bad(
                &tok_path,
                "missing: a generator checkpoint holds its tokenizer",
            ));
        }
        let tokenizer = GenTokenizer::load(&tok_path)?;
        if tokenizer.vocab_size() != lm.vocab_size() {
            return Err(bad(
                &tok_path,
                format!(
                    "tokenizer mismatch: {} tokens, the model has vocab_size {}",
                    tokenizer.vocab_size(),
                    lm.vocab_size()
                ),
            ));
        }
        let w = dir.join(WEIGHTS_FILE);
        let tensors = load_weights(&w, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = CodeModel::new(&lm, &config, vb).map_err(|e| {
            bad(
                &w,
                format!("weights do not match config.json (a checkpoint of another configuration?): {e}"),
            )
        })?;
        Ok(Generator::new(model, tokenizer, dir, device))
    }

    /// Wraps a model and its tokenizer (the grammar mask is built over the vocabulary).
    pub fn new(model: CodeModel, tokenizer: GenTokenizer, dir: &Path, device: &Device) -> Self {
        let grammar = TokenMask::new(tokenizer.token_bytes(), tokenizer.end_id());
        Generator {
            model,
            tokenizer,
            dir: dir.to_path_buf(),
            device: device.clone(),
            grammar,
        }
    }
}

/// Reads a safetensors file as f32 tensors, naming the file in errors.
pub fn load_weights(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, Tensor>, GeneratorError> {
    if !path.is_file() {
        return Err(bad(path, "missing weights file"));
    }
    let raw = candle_core::safetensors::load(path, device)
        .map_err(|e| bad(path, format!("not a readable safetensors file: {e}")))?;
    raw.into_iter()
        .map(|(k, t)| {
            t.to_dtype(DType::F32)
                .map(|t| (k, t))
                .map_err(|e| GeneratorError::candle("converting weights to f32", e))
        })
        .collect()
}

/// Copies a pretrained HF language model's weights into `varmap`: GPT-2 names with or without
/// the `transformer.` prefix (as `GPT2Model` and `GPT2LMHeadModel` save them), T5 names as
/// `T5ForConditionalGeneration` saves them. Every language-model variable must be found with
/// the same shape, except the token embeddings (`wte`, `shared`, an untied `lm_head`), which
/// may have grown by the prompt's special tokens (their new rows keep their initial values).
/// Returns how many tensors were copied.
pub fn load_pretrained(varmap: &VarMap, dir: &Path, arch: Arch) -> Result<usize, GeneratorError> {
    let w = dir.join(WEIGHTS_FILE);
    let tensors = load_weights(&w, &Device::Cpu)?;
    let data = varmap.data().lock().expect("varmap lock");
    let copy_err = |e| GeneratorError::candle("copying pretrained weights", e);
    let mut copied = 0;
    for (name, var) in data.iter() {
        let short = match arch {
            Arch::Gpt2 => match name.strip_prefix("transformer.") {
                Some(s) => s,
                None => continue,
            },
            Arch::Codet5 if name.starts_with("prefix.") => continue,
            Arch::Codet5 => name.as_str(),
        };
        let t = tensors
            .get(name)
            .or_else(|| tensors.get(short))
            .ok_or_else(|| bad(&w, format!("has no tensor {short}")))?;
        let t = t.to_device(var.device()).map_err(copy_err)?;
        let grown = matches!(short, "wte.weight" | "shared.weight" | "lm_head.weight")
            && t.rank() == 2
            && var.rank() == 2
            && t.dim(1).ok() == var.dim(1).ok()
            && t.dim(0).unwrap_or(0) < var.dim(0).unwrap_or(0);
        let value = if grown {
            let old = t.dim(0).map_err(copy_err)?;
            let extra = var.dim(0).map_err(copy_err)? - old;
            let fresh = var.as_tensor().narrow(0, old, extra).map_err(copy_err)?;
            Tensor::cat(&[&t, &fresh], 0).map_err(copy_err)?
        } else if t.shape() != var.shape() {
            return Err(bad(
                &w,
                format!(
                    "{short} has shape {:?}, the model {:?} (another configuration?)",
                    t.dims(),
                    var.dims()
                ),
            ));
        } else {
            t
        };
        var.set(&value).map_err(copy_err)?;
        copied += 1;
    }
    Ok(copied)
}

/// The tokenizer and model shape of a run that starts from a pretrained HF folder of `arch`
/// (GPT-2, or CodeT5 with a fast `tokenizer.json`): its tokenizer with the prompt's special
/// tokens added, and its `config.json` with the vocabulary grown to match and the end (and for
/// T5 the decoder start) ids set to ours; the layout's longest prompt must fit GPT-2's
/// positions.
pub fn pretrained_start(
    dir: &Path,
    arch: Arch,
    layout: &PromptLayout,
    prefix_len: usize,
) -> Result<(GenTokenizer, LmConfig), GeneratorError> {
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(bad(
            dir,
            format!(
                "not a {} checkpoint folder (no config.json)",
                arch.model_type()
            ),
        ));
    }
    let mut lm = LmConfig::read(&cfg_path)?;
    if lm.arch() != arch {
        return Err(bad(
            &cfg_path,
            format!(
                "a {} checkpoint, not {} (--arch {:?})",
                lm.arch().model_type(),
                arch.model_type(),
                arch
            ),
        ));
    }
    let tok = GenTokenizer::from_pretrained(&dir.join(TOKENIZER_FILE))?;
    if tok.vocab_size() < lm.vocab_size() {
        return Err(bad(
            &dir.join(TOKENIZER_FILE),
            format!(
                "tokenizer mismatch: {} tokens, config.json has vocab_size {}",
                tok.vocab_size(),
                lm.vocab_size()
            ),
        ));
    }
    match &mut lm {
        LmConfig::Gpt2(gpt) => {
            gpt.vocab_size = tok.vocab_size();
            gpt.eos_token_id = Some(tok.end_id());
            let needed = layout.max_positions(prefix_len);
            if needed > gpt.n_positions {
                return Err(GeneratorError::Settings(format!(
                    "prompts need up to {needed} positions, {} has {}; lower --max-neighbour-tokens, --max-target-tokens or -k",
                    dir.display(),
                    gpt.n_positions
                )));
            }
        }
        LmConfig::T5(t5) => {
            t5.vocab_size = tok.vocab_size();
            t5.eos_token_id = tok.end_id();
            t5.pad_token_id = tok.end_id();
            t5.decoder_start_token_id = tok.code_id();
        }
    }
    Ok((tok, lm))
}

impl Generator {
    /// Refuses an index whose encoder differs from the one the model's prefix was trained on
    /// (its vectors would be meaningless to the prefix).
    pub fn check_encoder(&self, index_encoder: &EncoderIdentity) -> Result<(), GeneratorError> {
        let own = &self.model.config().encoder;
        if own.hash != index_encoder.hash || own.dims != index_encoder.dims {
            return Err(GeneratorError::Settings(format!(
                "{}: the model was trained on vectors of encoder {} (hash {}), the index uses {} (hash {}); use an index built with the model's encoder",
                self.dir.display(),
                own.id,
                own.hash,
                index_encoder.id,
                index_encoder.hash
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{DecodeOptions, Strategy};
    use crate::gpt2::init_weights;
    use crate::prompt::training_ids;
    use indexer::clip::optim::AdamW;

    const PROGRAMS: [&str; 4] = [
        "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(0.0, 0.0).lineTo(0.5, 0.0).lineTo(0.5, 0.25).lineTo(0.0, 0.25).close()\nsolid0=wp_sketch0.add(loop0).extrude(0.125)\nsolid=solid0\n",
        "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, 0.0, 0.0), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\nloop0=wp_sketch0.moveTo(0.25, 0.25).circle(0.2)\nsolid0=wp_sketch0.add(loop0).extrude(0.75)\nsolid=solid0\n",
        "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(0.0, 0.0).lineTo(1.0, 0.0).threePointArc((1.5, 0.5), (1.0, 1.0)).lineTo(0.0, 1.0).close()\nloop1=wp_sketch0.moveTo(0.5, 0.5).circle(0.1)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(0.25, both=True)\nsolid=solid0\n",
        "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.5), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(0.1, 0.1).circle(0.6)\nsolid0=wp_sketch0.add(loop0).extrude(-0.3)\nsolid=solid0\nwp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.5), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop1=wp_sketch1.moveTo(0.1, 0.1).circle(0.3)\nsolid1=wp_sketch1.add(loop1).extrude(0.5)\nsolid=solid.cut(solid1)\n",
    ];

    fn tiny_t5(vocab: usize) -> T5Config {
        let mut c = T5Config::codet5_small();
        (c.vocab_size, c.d_model, c.d_kv, c.d_ff, c.num_heads) = (vocab, 64, 32, 256, 2);
        (c.num_layers, c.num_decoder_layers) = (2, Some(2));
        c
    }

    fn tiny(tok: &GenTokenizer, arch: Arch) -> (LmConfig, GeneratorConfig) {
        let lm = match arch {
            Arch::Gpt2 => LmConfig::Gpt2(Gpt2Config::new(tok.vocab_size(), 256, 64, 2, 2)),
            Arch::Codet5 => LmConfig::T5(tiny_t5(tok.vocab_size())),
        };
        let config = GeneratorConfig {
            format: GENERATOR_FORMAT,
            arch,
            encoder: EncoderIdentity {
                id: "test-8".into(),
                config: serde_json::json!({}),
                hash: "0123".into(),
                dims: 8,
            },
            prefix_len: 2,
            prefix_hidden: 32,
            layout: PromptLayout {
                k: 0,
                max_neighbour_tokens: 64,
                max_target_tokens: 200,
            },
        };
        (lm, config)
    }

    /// The tiny model of `arch`, seeded: its configs, variables and model.
    fn tiny_model(
        tok: &GenTokenizer,
        seed: u64,
        arch: Arch,
    ) -> (LmConfig, GeneratorConfig, VarMap, CodeModel) {
        let (lm, config) = tiny(tok, arch);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = CodeModel::new(&lm, &config, vb).unwrap();
        init_model_weights(&varmap, seed, &lm).unwrap();
        (lm, config, varmap, model)
    }

    /// Training sequences of `programs` with no neighbours.
    fn program_seqs(
        tok: &GenTokenizer,
        config: &GeneratorConfig,
        programs: &[&str],
    ) -> Vec<(Vec<u32>, usize)> {
        programs
            .iter()
            .map(|p| training_ids(tok, &[], &tok.encode(p).unwrap(), &config.layout))
            .collect()
    }

    /// A tensor's values, flattened.
    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Distinct unit-ish image vectors, one per program.
    fn images(dev: &Device) -> Tensor {
        let v: Vec<f32> = (0..32)
            .map(|i| {
                if i % 9 == 0 {
                    1.0
                } else {
                    0.05 * (i % 5) as f32
                }
            })
            .collect();
        Tensor::from_vec(v, (4, 8), dev).unwrap()
    }

    /// A tiny model of `arch` overfits the four programs to the exact text (greedy, beam,
    /// constrained or not), and a saved checkpoint reloads to identical logits.
    fn overfits_and_reloads(arch: Arch) {
        let dev = Device::Cpu;
        let tok = GenTokenizer::train(PROGRAMS.into_iter(), 320).unwrap();
        let (lm, config, varmap, model) = tiny_model(&tok, 9, arch);
        let seqs = program_seqs(&tok, &config, &PROGRAMS);
        let imgs = images(&dev);
        let mut opt = AdamW::new(&varmap, 0.0).unwrap();
        let mut loss = f32::MAX;
        for _ in 0..400 {
            let (l, _) = model.loss(&imgs, &seqs, tok.end_id()).unwrap();
            loss = l.to_scalar::<f32>().unwrap();
            if loss < 0.01 {
                break;
            }
            opt.step(&l.backward().unwrap(), 3e-3).unwrap();
        }
        assert!(loss < 0.05, "{arch:?}: loss {loss}");

        let dir = tempfile::tempdir().unwrap();
        varmap.save(dir.path().join(WEIGHTS_FILE)).unwrap();
        lm.write(&dir.path().join(CONFIG_FILE)).unwrap();
        write_json(&dir.path().join(GENERATOR_FILE), &config).unwrap();
        tok.save(&dir.path().join(TOKENIZER_FILE)).unwrap();
        let loaded = Generator::load(dir.path(), &dev).unwrap();
        let logits =
            |m: &CodeModel| values(&m.target_logits(&imgs, &seqs, tok.end_id()).unwrap().0);
        assert!(
            logits(&model) == logits(&loaded.model),
            "{arch:?}: reloaded logits differ"
        );

        for (i, program) in PROGRAMS.iter().enumerate() {
            let image: Vec<f32> = imgs.get(i).unwrap().to_vec1().unwrap();
            for constrained in [true, false] {
                let opts = DecodeOptions {
                    strategy: Strategy::Greedy,
                    max_tokens: 200,
                    constrained,
                };
                let g = loaded.generate(&image, &[], &opts).unwrap();
                assert!(g.finished);
                assert_eq!(
                    g.compact, *program,
                    "{arch:?}: program {i}, constrained {constrained}"
                );
                assert!(g
                    .code
                    .starts_with("import cadquery as cq\n# Generating a workplane for sketch 0\n"));
            }
            let beam = DecodeOptions {
                strategy: Strategy::Beam { width: 3 },
                max_tokens: 200,
                constrained: true,
            };
            assert_eq!(
                loaded.generate(&image, &[], &beam).unwrap().compact,
                *program
            );
        }
    }

    #[test]
    fn a_tiny_gpt2_overfits_four_programs_and_reloads_to_identical_logits() {
        overfits_and_reloads(Arch::Gpt2);
    }

    #[test]
    fn a_tiny_codet5_overfits_four_programs_and_reloads_to_identical_logits() {
        overfits_and_reloads(Arch::Codet5);
    }

    /// A byte-level BPE `tokenizer.json` in `dir` as HF ships them (word-splitting regex, the
    /// given special tokens); returns its vocabulary size.
    fn hf_tokenizer(dir: &Path, specials: &[&str]) -> usize {
        use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
        use tokenizers::models::TrainerWrapper;
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let mut hf = tokenizers::Tokenizer::new(BPE::default());
        // GPT-2's own settings: no prefix space, offsets trimmed, the word-splitting regex.
        hf.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        hf.with_decoder(Some(ByteLevel::new(false, true, true)));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(300)
            .show_progress(false)
            .special_tokens(
                specials
                    .iter()
                    .map(|t| tokenizers::AddedToken::from(*t, true))
                    .collect(),
            )
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        hf.train(&mut trainer, PROGRAMS.iter().map(|p| p.to_string()))
            .unwrap();
        hf.save(dir.join(TOKENIZER_FILE), false).unwrap();
        hf.get_vocab_size(true)
    }

    /// A folder laid out like a Hugging Face `gpt2` download: GPT2Model names (no
    /// `transformer.` prefix) and a byte-level BPE tokenizer with only `<|endoftext|>`.
    fn hf_gpt2_folder(dir: &Path, n_embd: usize) -> (usize, HashMap<String, Tensor>) {
        let vocab = hf_tokenizer(dir, &["<|endoftext|>"]);
        let gpt = Gpt2Config::new(vocab, 1024, n_embd, 2, 2);
        write_json(&dir.join(CONFIG_FILE), &gpt).unwrap();
        let varmap = VarMap::new();
        Gpt2::new(
            &gpt,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        init_weights(&varmap, 5, 2).unwrap();
        varmap.save(dir.join(WEIGHTS_FILE)).unwrap();
        let tensors = candle_core::safetensors::load(dir.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        (vocab, tensors)
    }

    #[test]
    fn a_pretrained_gpt2_folder_starts_a_run_with_its_weights_and_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let (hf_vocab, hf) = hf_gpt2_folder(dir.path(), 32);
        let layout = PromptLayout {
            k: 1,
            max_neighbour_tokens: 100,
            max_target_tokens: 100,
        };
        let (tok, lm) = pretrained_start(dir.path(), Arch::Gpt2, &layout, 2).unwrap();
        let LmConfig::Gpt2(gpt) = &lm else {
            panic!("{lm:?}")
        };
        assert_eq!(
            tok.vocab_size(),
            hf_vocab + 2,
            "<|neighbour|> and <|code|> added"
        );
        assert_eq!(
            (gpt.vocab_size, gpt.n_embd, gpt.n_positions),
            (hf_vocab + 2, 32, 1024)
        );
        let text = "loop0=wp_sketch0.moveTo(0.25, 0.5).circle(0.125)\n";
        assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);

        let (_, mut config) = tiny(&tok, Arch::Gpt2);
        config.layout = layout;
        let varmap = VarMap::new();
        CodeModel::new(
            &lm,
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        init_weights(&varmap, 6, 2).unwrap();
        let copied = load_pretrained(&varmap, dir.path(), Arch::Gpt2).unwrap();
        let data = varmap.data().lock().unwrap();
        let ours = |n: &str| values(data[n].as_tensor());
        let theirs = |n: &str| values(&hf[n]);
        assert_eq!(copied, hf.len());
        assert_eq!(
            ours("transformer.h.1.mlp.c_fc.weight"),
            theirs("h.1.mlp.c_fc.weight")
        );
        let wte = ours("transformer.wte.weight");
        assert_eq!(wte[..hf_vocab * 32], theirs("wte.weight")[..]);
        assert_eq!(wte.len(), (hf_vocab + 2) * 32);
        drop(data);

        let long = PromptLayout {
            k: 2,
            max_neighbour_tokens: 400,
            max_target_tokens: 400,
        };
        let e = pretrained_start(dir.path(), Arch::Gpt2, &long, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("positions"), "{e}");
        let e = pretrained_start(dir.path(), Arch::Codet5, &layout, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a gpt2 checkpoint, not t5"), "{e}");
        let other = tempfile::tempdir().unwrap();
        hf_gpt2_folder(other.path(), 16);
        let e = load_pretrained(&varmap, other.path(), Arch::Gpt2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another configuration"), "{e}");
    }

    #[test]
    fn a_pretrained_codet5_folder_starts_a_run_with_its_weights_and_tokenizer() {
        // Laid out like a `Salesforce/codet5-small` download (with a fast tokenizer.json):
        // T5ForConditionalGeneration names, the tied embedding also saved as
        // encoder/decoder.embed_tokens, RoBERTa's special tokens.
        let dir = tempfile::tempdir().unwrap();
        let hf_vocab = hf_tokenizer(dir.path(), &["<pad>", "<s>", "</s>", "<unk>"]);
        let hf_cfg = tiny_t5(hf_vocab);
        write_json(&dir.path().join(CONFIG_FILE), &hf_cfg).unwrap();
        let hf_map = VarMap::new();
        T5::new(
            &hf_cfg,
            VarBuilder::from_varmap(&hf_map, DType::F32, &Device::Cpu),
        )
        .unwrap();
        crate::t5::init_weights(&hf_map, 5, &hf_cfg).unwrap();
        let mut hf: HashMap<String, Tensor> = hf_map
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let shared = hf["shared.weight"].clone();
        hf.insert("encoder.embed_tokens.weight".into(), shared.clone());
        hf.insert("decoder.embed_tokens.weight".into(), shared);
        candle_core::safetensors::save(&hf, dir.path().join(WEIGHTS_FILE)).unwrap();

        let layout = PromptLayout {
            k: 1,
            max_neighbour_tokens: 400,
            max_target_tokens: 400,
        };
        let (tok, lm) = pretrained_start(dir.path(), Arch::Codet5, &layout, 2).unwrap();
        let LmConfig::T5(t5) = &lm else {
            panic!("{lm:?}")
        };
        assert_eq!(
            tok.vocab_size(),
            hf_vocab + 3,
            "<|endoftext|>, <|neighbour|> and <|code|> added"
        );
        assert_eq!(
            (t5.vocab_size, t5.eos_token_id, t5.decoder_start_token_id),
            (hf_vocab + 3, tok.end_id(), tok.code_id())
        );
        let (_, mut config) = tiny(&tok, Arch::Codet5);
        config.layout = layout;
        let varmap = VarMap::new();
        let model = CodeModel::new(
            &lm,
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        init_model_weights(&varmap, 6, &lm).unwrap();
        let copied = load_pretrained(&varmap, dir.path(), Arch::Codet5).unwrap();
        assert_eq!(copied, hf.len() - 2, "all but the embed_tokens copies");
        let data = varmap.data().lock().unwrap();
        let ours = |n: &str| values(data[n].as_tensor());
        let theirs = |n: &str| values(&hf[n]);
        let name = "decoder.block.1.layer.1.EncDecAttention.k.weight";
        assert_eq!(ours(name), theirs(name));
        let emb = ours("shared.weight");
        assert_eq!(emb[..hf_vocab * 64], theirs("shared.weight")[..]);
        assert_eq!(emb.len(), (hf_vocab + 3) * 64);
        drop(data);
        // The started model runs: a finite loss on a program.
        let seqs = program_seqs(&tok, &config, &PROGRAMS[..1]);
        let imgs = images(&Device::Cpu).narrow(0, 0, 1).unwrap();
        let (loss, _) = model.loss(&imgs, &seqs, tok.end_id()).unwrap();
        assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    }

    #[test]
    fn gradients_reach_every_weight_of_the_model_and_the_prefix() {
        for arch in [Arch::Gpt2, Arch::Codet5] {
            gradients_reach_every_weight(arch);
        }
    }

    fn gradients_reach_every_weight(arch: Arch) {
        let dev = Device::Cpu;
        let tok = GenTokenizer::train(PROGRAMS.into_iter(), 300).unwrap();
        let (_, config, varmap, model) = tiny_model(&tok, 3, arch);
        let seqs = program_seqs(&tok, &config, &PROGRAMS[..2]);
        let imgs = images(&dev).narrow(0, 0, 2).unwrap();
        let grads = model
            .loss(&imgs, &seqs, tok.end_id())
            .unwrap()
            .0
            .backward()
            .unwrap();
        let data = varmap.data().lock().unwrap();
        assert!(data.len() > 25, "{arch:?}: {} variables", data.len());
        for (name, var) in data.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm.is_finite() && norm > 0.0,
                "{arch:?} {name}: gradient norm {norm}"
            );
        }
    }

    #[test]
    fn bf16_training_follows_f32_and_updates_the_f32_weights() {
        for arch in [Arch::Gpt2, Arch::Codet5] {
            let dev = Device::Cpu;
            let tok = GenTokenizer::train(PROGRAMS.into_iter(), 320).unwrap();
            let (lm, config, varmap, model) = tiny_model(&tok, 4, arch);
            let seqs = program_seqs(&tok, &config, &PROGRAMS);
            let imgs = images(&dev);
            let half = cast_model(&varmap, &lm, &config, DType::BF16).unwrap();
            let bf = imgs.to_dtype(DType::BF16).unwrap();
            let loss_f32 = model.loss(&imgs, &seqs, tok.end_id()).unwrap().0;
            let (loss_bf16, _) = half.loss(&bf, &seqs, tok.end_id()).unwrap();
            let (a, b) = (
                loss_f32.to_scalar::<f32>().unwrap(),
                loss_bf16.to_scalar::<f32>().unwrap(),
            );
            assert!((a - b).abs() < 0.05 * a, "{arch:?}: f32 loss {a}, bf16 {b}");
            // Gradients of the bf16 forward land on every f32 variable.
            let grads = loss_bf16.backward().unwrap();
            for (name, var) in varmap.data().lock().unwrap().iter() {
                assert_eq!(var.dtype(), DType::F32);
                let g = grads.get(var.as_tensor());
                assert!(g.is_some(), "{arch:?}: no gradient for {name}");
            }
            let mut opt = AdamW::new(&varmap, 0.0).unwrap();
            let mut last = b;
            for _ in 0..30 {
                let m = cast_model(&varmap, &lm, &config, DType::BF16).unwrap();
                let (l, _) = m.loss(&bf, &seqs, tok.end_id()).unwrap();
                last = l.to_scalar::<f32>().unwrap();
                opt.step(&l.backward().unwrap(), 3e-3).unwrap();
            }
            assert!(last < 0.7 * b, "{arch:?}: bf16 loss {b} -> {last}");
        }
    }

    #[test]
    fn checkpoints_of_another_kind_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let err = |d: &Path| Generator::load(d, &Device::Cpu).unwrap_err().to_string();
        assert!(err(&d.join("none")).contains("not a folder"));
        assert!(err(d).contains("no config.json"));
        std::fs::write(d.join(CONFIG_FILE), r#"{"model_type": "clip"}"#).unwrap();
        assert!(err(d).contains("another architecture"));
        let tok = GenTokenizer::train(PROGRAMS.into_iter(), 300).unwrap();
        let (gpt, config) = tiny(&tok, Arch::Gpt2);
        let (t5, _) = tiny(&tok, Arch::Codet5);
        gpt.write(&d.join(CONFIG_FILE)).unwrap();
        assert!(err(d).contains("no generator.json"));
        write_json(&d.join(GENERATOR_FILE), &config).unwrap();
        t5.write(&d.join(CONFIG_FILE)).unwrap();
        assert!(err(d).contains("another architecture"), "{}", err(d));
        gpt.write(&d.join(CONFIG_FILE)).unwrap();
        assert!(err(d).contains("tokenizer.json"));
        tok.save(&d.join(TOKENIZER_FILE)).unwrap();
        assert!(err(d).contains("missing weights"));
    }
}
