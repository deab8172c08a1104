//! The image-conditioned code generator: GPT-2 plus an image prefix (ClipCap style: the query's
//! image vector mapped to a few embeddings in front of the prompt), and its checkpoint folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result as CResult, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use indexer::clip::checkpoint::{read_json, WEIGHTS_FILE};
use indexer::encoder::EncoderIdentity;
use serde::{Deserialize, Serialize};

use crate::gpt2::{Gpt2, Gpt2Config, KvCache};
use crate::grammar::TokenMask;
use crate::prompt::PromptLayout;
use crate::tokenizer::GenTokenizer;
use crate::GeneratorError;

/// HF model shape (`GPT2Config`).
pub const CONFIG_FILE: &str = "config.json";
/// What makes a GPT-2 an image-to-code generator: prefix, prompt layout, image encoder.
pub const GENERATOR_FILE: &str = "generator.json";
/// The code tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Version of `generator.json`; another is refused.
pub const GENERATOR_FORMAT: u32 = 1;

/// Architectures `--arch` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Decoder-only GPT-2.
    Gpt2,
}

/// `generator.json`: everything beyond the GPT-2 shape that a checkpoint needs to run.
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

/// GPT-2 + image prefix: the trainable image-to-code model.
#[derive(Debug, Clone)]
pub struct CodeModel {
    gpt: Gpt2,
    prefix: ImagePrefix,
    config: GeneratorConfig,
}

impl CodeModel {
    /// Builds (or loads) the weights under `vb`: `transformer.*` (HF GPT2LMHeadModel names)
    /// and `prefix.*`.
    pub fn new(gpt: &Gpt2Config, config: &GeneratorConfig, vb: VarBuilder) -> CResult<Self> {
        Ok(CodeModel {
            gpt: Gpt2::new(gpt, vb.pp("transformer"))?,
            prefix: ImagePrefix::new(
                config.encoder.dims,
                config.prefix_hidden,
                config.prefix_len,
                gpt.n_embd,
                vb.pp("prefix"),
            )?,
            config: config.clone(),
        })
    }

    /// The language model.
    pub fn gpt(&self) -> &Gpt2 {
        &self.gpt
    }

    /// The generator settings.
    pub fn config(&self) -> &GeneratorConfig {
        &self.config
    }

    /// Input embeddings of a batch: image prefix then token embeddings, [batch, P + len, E].
    pub fn embed(&self, images: &Tensor, ids: &Tensor) -> CResult<Tensor> {
        Tensor::cat(&[self.prefix.forward(images)?, self.gpt.embed(ids)?], 1)
    }

    /// Mean cross-entropy of predicting `labels` from the hidden states at `positions`
    /// (flat indices into [batch * (P + len)]): the loss on target tokens only.
    pub fn loss(
        &self,
        images: &Tensor,
        ids: &Tensor,
        positions: &Tensor,
        labels: &Tensor,
    ) -> CResult<Tensor> {
        let h = self.gpt.hidden(&self.embed(images, ids)?, None)?;
        let e = self.gpt.config().n_embd;
        let rows = h.elem_count() / e;
        let picked = h.reshape((rows, e))?.index_select(positions, 0)?;
        candle_nn::loss::cross_entropy(&self.gpt.logits(&picked)?, labels)
    }

    /// Logits at every position of a batch [batch, P + len, vocab] (for tests and tools).
    pub fn logits(&self, images: &Tensor, ids: &Tensor) -> CResult<Tensor> {
        self.gpt
            .logits(&self.gpt.hidden(&self.embed(images, ids)?, None)?)
    }

    /// Starts decoding: runs the prefix and prompt ids through a fresh cache and returns the
    /// last position's logits [batch, vocab].
    pub fn start(&self, images: &Tensor, ids: &Tensor, cache: &mut KvCache) -> CResult<Tensor> {
        let h = self.gpt.hidden(&self.embed(images, ids)?, Some(cache))?;
        let t = h.dim(1)?;
        self.gpt.logits(&h.narrow(1, t - 1, 1)?.squeeze(1)?)
    }

    /// One decoding step: `ids` [batch] (one new token per row) -> logits [batch, vocab].
    pub fn step(&self, ids: &Tensor, cache: &mut KvCache) -> CResult<Tensor> {
        let x = self.gpt.embed(&ids.unsqueeze(1)?)?;
        let h = self.gpt.hidden(&x, Some(cache))?;
        self.gpt.logits(&h.squeeze(1)?)
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

/// Reads and checks `config.json` and `generator.json` of a checkpoint folder.
pub fn read_configs(dir: &Path) -> Result<(Gpt2Config, GeneratorConfig), GeneratorError> {
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
    let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    if model_type != "gpt2" {
        return Err(bad(
            &cfg_path,
            format!(
                "a checkpoint of another architecture (model_type `{model_type}`); this generator is gpt2"
            ),
        ));
    }
    let gpt: Gpt2Config = serde_json::from_value(raw)
        .map_err(|e| bad(&cfg_path, format!("not a GPT-2 config: {e}")))?;
    gpt.validate().map_err(|m| bad(&cfg_path, m))?;
    if !gen_path.is_file() {
        return Err(bad(
            dir,
            "a GPT-2 checkpoint but not an image-to-code generator (no generator.json): pass it as --init to `rag train generator`",
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
    Ok((gpt, config))
}

impl Generator {
    /// Loads a checkpoint folder written by `rag train generator`; refuses another
    /// architecture, weights of another shape, and a tokenizer of another vocabulary.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, GeneratorError> {
        let (gpt, config) = read_configs(dir)?;
        let tok_path = dir.join(TOKENIZER_FILE);
        if !tok_path.is_file() {
            return Err(bad(
                &tok_path,
                "missing: a generator checkpoint holds its tokenizer",
            ));
        }
        let tokenizer = GenTokenizer::load(&tok_path)?;
        if tokenizer.vocab_size() != gpt.vocab_size {
            return Err(bad(
                &tok_path,
                format!(
                    "tokenizer mismatch: {} tokens, the model has vocab_size {}",
                    tokenizer.vocab_size(),
                    gpt.vocab_size
                ),
            ));
        }
        let w = dir.join(WEIGHTS_FILE);
        let tensors = load_weights(&w, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = CodeModel::new(&gpt, &config, vb).map_err(|e| {
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

/// Copies a pretrained HF GPT-2's weights into `varmap` (names with or without the
/// `transformer.` prefix, as `GPT2Model` and `GPT2LMHeadModel` save them); every transformer
/// variable must be found with the same shape, except `wte`, which may have grown by the
/// prompt's special tokens (its new rows keep their initial values). Returns how many tensors
/// were copied.
pub fn load_pretrained(varmap: &VarMap, dir: &Path) -> Result<usize, GeneratorError> {
    let w = dir.join(WEIGHTS_FILE);
    let tensors = load_weights(&w, &Device::Cpu)?;
    let data = varmap.data().lock().expect("varmap lock");
    let copy_err = |e| GeneratorError::candle("copying pretrained weights", e);
    let mut copied = 0;
    for (name, var) in data.iter() {
        let Some(short) = name.strip_prefix("transformer.") else {
            continue;
        };
        let t = tensors
            .get(name)
            .or_else(|| tensors.get(short))
            .ok_or_else(|| bad(&w, format!("has no tensor {short}")))?;
        let t = t.to_device(var.device()).map_err(copy_err)?;
        let grown = short == "wte.weight"
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

/// The tokenizer and model shape of a run that starts from a pretrained HF GPT-2 folder: its
/// `tokenizer.json` with the prompt's special tokens added, and its `config.json` with the
/// vocabulary grown to match; the layout's longest prompt must fit its positions.
pub fn pretrained_start(
    dir: &Path,
    layout: &PromptLayout,
    prefix_len: usize,
) -> Result<(GenTokenizer, Gpt2Config), GeneratorError> {
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.is_file() {
        return Err(bad(dir, "not a GPT-2 checkpoint folder (no config.json)"));
    }
    let mut gpt: Gpt2Config = read_json(&cfg_path)?;
    gpt.validate().map_err(|m| bad(&cfg_path, m))?;
    let tok = GenTokenizer::from_pretrained(&dir.join(TOKENIZER_FILE))?;
    if tok.vocab_size() < gpt.vocab_size {
        return Err(bad(
            &dir.join(TOKENIZER_FILE),
            format!(
                "tokenizer mismatch: {} tokens, config.json has vocab_size {}",
                tok.vocab_size(),
                gpt.vocab_size
            ),
        ));
    }
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
    Ok((tok, gpt))
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
    use crate::prompt::{batch, training_ids};
    use indexer::clip::checkpoint::write_json;
    use indexer::clip::optim::AdamW;

    const PROGRAMS: [&str; 4] = [
        "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(0.0, 0.0).lineTo(0.5, 0.0).lineTo(0.5, 0.25).lineTo(0.0, 0.25).close()\nsolid0=wp_sketch0.add(loop0).extrude(0.125)\nsolid=solid0\n",
        "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, 0.0, 0.0), cq.Vector(0.0, 1.0, 0.0), cq.Vector(1.0, 0.0, 0.0)))\nloop0=wp_sketch0.moveTo(0.25, 0.25).circle(0.2)\nsolid0=wp_sketch0.add(loop0).extrude(0.75)\nsolid=solid0\n",
        "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(0.0, 0.0).lineTo(1.0, 0.0).threePointArc((1.5, 0.5), (1.0, 1.0)).lineTo(0.0, 1.0).close()\nloop1=wp_sketch0.moveTo(0.5, 0.5).circle(0.1)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(0.25, both=True)\nsolid=solid0\n",
        "wp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.5), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(0.1, 0.1).circle(0.6)\nsolid0=wp_sketch0.add(loop0).extrude(-0.3)\nsolid=solid0\nwp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.5), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop1=wp_sketch1.moveTo(0.1, 0.1).circle(0.3)\nsolid1=wp_sketch1.add(loop1).extrude(0.5)\nsolid=solid.cut(solid1)\n",
    ];

    fn tiny(tok: &GenTokenizer) -> (Gpt2Config, GeneratorConfig) {
        let gpt = Gpt2Config::new(tok.vocab_size(), 256, 64, 2, 2);
        let config = GeneratorConfig {
            format: GENERATOR_FORMAT,
            arch: Arch::Gpt2,
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
        (gpt, config)
    }

    /// The tiny model, seeded: its configs, variables and model.
    fn tiny_model(
        tok: &GenTokenizer,
        seed: u64,
    ) -> (Gpt2Config, GeneratorConfig, VarMap, CodeModel) {
        let (gpt, config) = tiny(tok);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = CodeModel::new(&gpt, &config, vb).unwrap();
        init_weights(&varmap, seed, gpt.n_layer).unwrap();
        (gpt, config, varmap, model)
    }

    /// Ids, loss positions and labels of a batch of `programs` with no neighbours.
    fn program_batch(
        tok: &GenTokenizer,
        config: &GeneratorConfig,
        programs: &[&str],
        dev: &Device,
    ) -> (Tensor, Tensor, Tensor) {
        let seqs: Vec<(Vec<u32>, usize)> = programs
            .iter()
            .map(|p| training_ids(tok, &[], &tok.encode(p).unwrap(), &config.layout))
            .collect();
        let b = batch(&seqs, config.prefix_len, tok.end_id());
        (
            Tensor::from_slice(&b.ids, (b.batch, b.len), dev).unwrap(),
            Tensor::from_slice(&b.positions, b.positions.len(), dev).unwrap(),
            Tensor::from_slice(&b.labels, b.labels.len(), dev).unwrap(),
        )
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

    #[test]
    fn a_tiny_model_overfits_four_programs_and_reloads_to_identical_logits() {
        let dev = Device::Cpu;
        let tok = GenTokenizer::train(PROGRAMS.into_iter(), 320).unwrap();
        let (gpt, config, varmap, model) = tiny_model(&tok, 9);
        let (ids, pos, labels) = program_batch(&tok, &config, &PROGRAMS, &dev);
        let imgs = images(&dev);
        let mut opt = AdamW::new(&varmap, 0.0).unwrap();
        let mut loss = f32::MAX;
        for _ in 0..400 {
            let l = model.loss(&imgs, &ids, &pos, &labels).unwrap();
            loss = l.to_scalar::<f32>().unwrap();
            if loss < 0.01 {
                break;
            }
            opt.step(&l.backward().unwrap(), 3e-3).unwrap();
        }
        assert!(loss < 0.05, "loss {loss}");

        let dir = tempfile::tempdir().unwrap();
        varmap.save(dir.path().join(WEIGHTS_FILE)).unwrap();
        write_json(&dir.path().join(CONFIG_FILE), &gpt).unwrap();
        write_json(&dir.path().join(GENERATOR_FILE), &config).unwrap();
        tok.save(&dir.path().join(TOKENIZER_FILE)).unwrap();
        let loaded = Generator::load(dir.path(), &dev).unwrap();
        let before = model
            .logits(&imgs, &ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let after = loaded
            .model
            .logits(&imgs, &ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(before == after, "reloaded logits differ");

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
                    "program {i}, constrained {constrained}"
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

    /// A folder laid out like a Hugging Face `gpt2` download: GPT2Model names (no
    /// `transformer.` prefix) and a byte-level BPE tokenizer with only `<|endoftext|>`.
    fn hf_gpt2_folder(dir: &Path, n_embd: usize) -> (usize, HashMap<String, Tensor>) {
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
            .special_tokens(vec![tokenizers::AddedToken::from("<|endoftext|>", true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        hf.train(&mut trainer, PROGRAMS.iter().map(|p| p.to_string()))
            .unwrap();
        hf.save(dir.join(TOKENIZER_FILE), false).unwrap();
        let vocab = hf.get_vocab_size(true);
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
        let (tok, gpt) = pretrained_start(dir.path(), &layout, 2).unwrap();
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

        let (_, mut config) = tiny(&tok);
        config.layout = layout;
        let varmap = VarMap::new();
        CodeModel::new(
            &gpt,
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        init_weights(&varmap, 6, 2).unwrap();
        let copied = load_pretrained(&varmap, dir.path()).unwrap();
        let data = varmap.data().lock().unwrap();
        let ours = |n: &str| {
            data[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let theirs = |n: &str| hf[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
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
        let e = pretrained_start(dir.path(), &long, 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("positions"), "{e}");
        let other = tempfile::tempdir().unwrap();
        hf_gpt2_folder(other.path(), 16);
        let e = load_pretrained(&varmap, other.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("another configuration"), "{e}");
    }

    #[test]
    fn gradients_reach_every_weight_of_the_model_and_the_prefix() {
        let dev = Device::Cpu;
        let tok = GenTokenizer::train(PROGRAMS.into_iter(), 300).unwrap();
        let (_, config, varmap, model) = tiny_model(&tok, 3);
        let (ids, pos, labels) = program_batch(&tok, &config, &PROGRAMS[..2], &dev);
        let imgs = images(&dev).narrow(0, 0, 2).unwrap();
        let grads = model
            .loss(&imgs, &ids, &pos, &labels)
            .unwrap()
            .backward()
            .unwrap();
        let data = varmap.data().lock().unwrap();
        assert!(data.len() > 25, "{} variables", data.len());
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
                "{name}: gradient norm {norm}"
            );
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
        let (gpt, config) = tiny(&tok);
        write_json(&d.join(CONFIG_FILE), &gpt).unwrap();
        assert!(err(d).contains("no generator.json"));
        write_json(&d.join(GENERATOR_FILE), &config).unwrap();
        assert!(err(d).contains("tokenizer.json"));
        tok.save(&d.join(TOKENIZER_FILE)).unwrap();
        assert!(err(d).contains("missing weights"));
    }
}
