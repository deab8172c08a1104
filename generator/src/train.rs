//! `rag train generator`: retrieval-augmented training of the image-to-code model (GPT-2 or
//! CodeT5). Each training row's prompt holds its image prefix and its k nearest neighbours from
//! the index with the row itself left out (leave-one-out), exactly as at inference; the loss
//! covers the target code and its end token only. AdamW with warmup + cosine, gradient
//! clipping and accumulation, periodic validation loss, and checkpoints that resume exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use indexer::clip::checkpoint::{
    read_json, restore_run, save_run, write_atomic, write_json, OPTIMIZER_FILE, TRAINING_FILE,
    WEIGHTS_FILE,
};
use indexer::clip::optim::{learning_rate, AdamW};
use indexer::clip::train::epoch_order;
use indexer::corpus::{CorpusReader, Split};
use indexer::encoder::to_rgb_on_white;
use retriever::Retriever;
use seeded::Fnv1a64;
use seeded::Rng;
use serde::{Deserialize, Serialize};

use crate::compact::compact;
use crate::gpt2::Gpt2Config;
use crate::model::{
    cast_model, init_model_weights, load_pretrained, pretrained_start, Arch, CodeModel,
    GeneratorConfig, LmConfig, CONFIG_FILE, GENERATOR_FILE, GENERATOR_FORMAT, TOKENIZER_FILE,
};
use crate::prompt::{training_ids, PromptLayout};
use crate::t5::T5Config;
use crate::tokenizer::GenTokenizer;
use crate::GeneratorError;

/// Version of `training.json`; another is refused on resume.
pub const TRAINING_FORMAT: u32 = 1;
/// The prepared examples (image vectors, target tokens, neighbour store ids), written once.
pub const EXAMPLES_FILE: &str = "examples.safetensors";

/// Model sizes `--config` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenSize {
    /// Tests and the demo: 2 blocks of width 64 (CodeT5: 2 + 2).
    Tiny,
    /// The CPU-trainable default: 4 blocks of width 256 (CodeT5: 4 + 4).
    Small,
    /// GPT-2 small's shape (12 x 768) or codet5-small's (6 + 6 x 512): the GPU and `--init`
    /// path.
    Base,
}

impl GenSize {
    /// (width, blocks per stack, heads, prefix_len) of the GPT-2 sizes; CodeT5's tiny and small
    /// use the same widths with that many blocks in each of its two stacks, so a token passes
    /// through as many blocks as in GPT-2.
    fn shape(self) -> (usize, usize, usize, usize) {
        match self {
            GenSize::Tiny => (64, 2, 2, 2),
            GenSize::Small => (256, 4, 4, 4),
            GenSize::Base => (768, 12, 12, 4),
        }
    }
}

/// Everything that shapes a run; a resumed run must use the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenTrainSettings {
    /// Language model architecture.
    pub arch: Arch,
    /// Model size.
    pub size: GenSize,
    /// Neighbours in each prompt.
    pub k: usize,
    /// Tokens kept of each neighbour.
    pub max_neighbour_tokens: usize,
    /// Tokens of the target trained on (longer targets are cut).
    pub max_target_tokens: usize,
    /// Passes over the training rows.
    pub epochs: usize,
    /// Sequences per optimizer step.
    pub batch: usize,
    /// Micro-batches each step is split into (gradients summed): trades memory for nothing
    /// else, the update is the same.
    pub accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Fraction of steps spent warming up.
    pub warmup_fraction: f64,
    /// Global gradient-norm clip.
    pub clip_norm: f64,
    /// Share of training prompts given no neighbours, so the same model also runs
    /// generator-only.
    pub neighbour_dropout: f64,
    /// Seed of the initial weights, the order and the dropout.
    pub seed: u64,
    /// BPE vocabulary size.
    pub vocab: usize,
    /// Use only the first N training rows.
    pub limit: Option<usize>,
    /// A pretrained HF folder of `arch` (config, weights, tokenizer) that starts the run: its
    /// shape and tokenizer replace `size` and `vocab`.
    pub init: Option<PathBuf>,
    /// Dtype of the forward and backward passes; weights and optimizer state stay f32.
    #[serde(default)]
    pub precision: Precision,
}

/// The compute dtype of training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: weights cast to bf16 for each step's passes (matrix products in bf16,
    /// norms, softmax and the loss in f32), f32 master weights and AdamW state: the GPU path,
    /// where bf16 halves activation memory; on CPU it runs, slower than f32.
    Bf16,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }
}

impl Default for GenTrainSettings {
    fn default() -> Self {
        GenTrainSettings {
            arch: Arch::Gpt2,
            size: GenSize::Small,
            k: 1,
            max_neighbour_tokens: 384,
            max_target_tokens: 384,
            epochs: 1,
            batch: 16,
            accum: 1,
            lr: 1e-3,
            weight_decay: 0.1,
            warmup_fraction: 0.05,
            clip_norm: 1.0,
            neighbour_dropout: 0.1,
            seed: 0,
            vocab: 2048,
            limit: None,
            init: None,
            precision: Precision::F32,
        }
    }
}

/// What `rag train generator` is asked to do.
#[derive(Debug, Clone)]
pub struct GenTrainOptions {
    /// Corpus: train split learned, validation split measured.
    pub corpus: PathBuf,
    /// Index whose neighbours go into the prompts (and whose encoder makes the prefix).
    pub index: PathBuf,
    /// Checkpoint folder (created, or resumed when it holds an unfinished run).
    pub out: PathBuf,
    /// The run's settings.
    pub settings: GenTrainSettings,
    /// Save a checkpoint every N steps (and on interrupt, and at the end).
    pub checkpoint_every: usize,
    /// Validation loss every N steps (and at the end).
    pub eval_every: usize,
    /// Validation rows used for the validation loss.
    pub validation_rows: usize,
    /// Where to compute.
    pub device: Device,
    /// Stop (checkpointed, resumable) after this many steps in this call.
    pub max_steps: Option<usize>,
}

/// `training.json`: settings, progress and the curves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenTrainingState {
    /// [`TRAINING_FORMAT`].
    pub format: u32,
    /// The run's settings.
    pub settings: GenTrainSettings,
    /// Corpus trained on.
    pub corpus: PathBuf,
    /// Index the neighbours came from.
    pub index: PathBuf,
    /// Hash of the prepared examples, so a resume on other data is refused.
    pub data_hash: String,
    /// Training examples.
    pub examples: usize,
    /// Steps done.
    pub step: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// Seconds spent training over all sessions.
    pub seconds: f64,
    /// Tokens processed over all sessions.
    pub tokens: u64,
    /// (step, mean training loss since the previous point).
    pub loss_curve: Vec<(usize, f64)>,
    /// (step, validation loss).
    pub validation_curve: Vec<(usize, f64)>,
}

impl GenTrainingState {
    /// True when every step is done.
    pub fn finished(&self) -> bool {
        self.step >= self.total_steps
    }
}

/// How a call of [`train_generator`] ended.
#[derive(Debug, Clone, Serialize)]
pub struct GenTrainReport {
    /// The checkpoint folder.
    pub out: PathBuf,
    /// The state as saved last.
    pub state: GenTrainingState,
    /// Steps done in this call.
    pub steps_this_run: usize,
    /// Tokens per second in this call (prompt + target, padding excluded).
    pub tokens_per_second: f64,
    /// True when it stopped on an interrupt.
    pub interrupted: bool,
    /// Steps restored from an earlier run.
    pub resumed_from: usize,
    /// Rows left out (unreadable row or image, or no neighbour), with the first reason.
    pub skipped: usize,
    /// The first skip reason.
    pub first_skip: Option<String>,
}

/// Prepared examples: image vectors, target tokens, neighbours as index-store ids.
struct Examples {
    images: Vec<f32>,
    dims: usize,
    targets: Vec<Vec<u32>>,
    neighbours: Vec<Vec<u32>>,
    skipped: usize,
    first_skip: Option<String>,
}

impl Examples {
    fn len(&self) -> usize {
        self.targets.len()
    }

    fn hash(&self) -> String {
        let mut h = Fnv1a64::new();
        for (t, n) in self.targets.iter().zip(&self.neighbours) {
            for v in t.iter().chain([&u32::MAX]).chain(n) {
                h.update(&v.to_le_bytes());
            }
        }
        format!("{:016x}", h.finish())
    }

    fn save(&self, path: &Path) -> Result<(), GeneratorError> {
        let err = |e| GeneratorError::candle("saving the prepared examples", e);
        let flat = |rows: &[Vec<u32>]| -> (Vec<u32>, Vec<u32>) {
            let mut offsets = vec![0u32];
            let mut all = Vec::new();
            for r in rows {
                all.extend_from_slice(r);
                offsets.push(all.len() as u32);
            }
            (all, offsets)
        };
        let (t, to) = flat(&self.targets);
        let (n, no) = flat(&self.neighbours);
        let dev = Device::Cpu;
        let mut map = HashMap::new();
        let n_rows = self.len();
        map.insert(
            "images".to_string(),
            Tensor::from_slice(&self.images, (n_rows, self.dims), &dev).map_err(err)?,
        );
        for (name, v) in [
            ("targets", t),
            ("target_offsets", to),
            ("neighbours", n),
            ("neighbour_offsets", no),
        ] {
            let len = v.len();
            map.insert(
                name.to_string(),
                Tensor::from_vec(v, len, &dev).map_err(err)?,
            );
        }
        let meta = [self.skipped as u32];
        map.insert(
            "skipped".into(),
            Tensor::from_slice(&meta, 1, &dev).map_err(err)?,
        );
        write_atomic(path, |tmp| {
            candle_core::safetensors::save(&map, tmp)
                .map_err(|e| GeneratorError::candle("saving the prepared examples", e))
        })?;
        Ok(())
    }

    fn load(path: &Path) -> Result<Self, GeneratorError> {
        let bad = |m: String| GeneratorError::Checkpoint {
            path: path.to_path_buf(),
            message: m,
        };
        let mut map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("cannot read the prepared examples: {e}")))?;
        let mut take = |name: &str| {
            map.remove(name)
                .ok_or_else(|| bad(format!("no tensor {name}")))
        };
        let images = take("images")?;
        let (rows, dims) = images.dims2().map_err(|e| bad(e.to_string()))?;
        let vec_u32 = |t: Tensor| t.to_vec1::<u32>().map_err(|e| bad(e.to_string()));
        let unflat = |all: Vec<u32>, offsets: Vec<u32>| -> Vec<Vec<u32>> {
            offsets
                .windows(2)
                .map(|w| all[w[0] as usize..w[1] as usize].to_vec())
                .collect()
        };
        let targets = unflat(
            vec_u32(take("targets")?)?,
            vec_u32(take("target_offsets")?)?,
        );
        let neighbours = unflat(
            vec_u32(take("neighbours")?)?,
            vec_u32(take("neighbour_offsets")?)?,
        );
        let skipped = vec_u32(take("skipped")?)?.first().copied().unwrap_or(0) as usize;
        if targets.len() != rows || neighbours.len() != rows {
            return Err(bad("inconsistent example counts".into()));
        }
        Ok(Examples {
            images: images
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(|e| bad(e.to_string()))?,
            dims,
            targets,
            neighbours,
            skipped,
            first_skip: None,
        })
    }
}

/// The index's code store, tokenized in compact form (neighbours' prompt text).
fn store_tokens(
    retriever: &Retriever,
    tok: &GenTokenizer,
) -> Result<Vec<Vec<u32>>, GeneratorError> {
    retriever
        .store()
        .iter()
        .map(|e| tok.encode(&compact(&e.code)))
        .collect()
}

/// Embeds `split`'s rows with the index's encoder and finds each row's k neighbours, leaving
/// out the row itself (same id).
fn prepare(
    reader: &CorpusReader,
    split: Split,
    limit: Option<usize>,
    retriever: &Retriever,
    tok: &GenTokenizer,
    k: usize,
    progress: &indicatif::ProgressBar,
) -> Result<Examples, GeneratorError> {
    let available = reader.num_rows(split);
    let total = limit.map_or(available, |l| l.min(available));
    progress.set_length(total as u64);
    progress.set_position(0);
    progress.reset_eta();
    progress.set_message(format!(
        "embedding {split} rows and finding their neighbours"
    ));
    let positions: HashMap<&str, u32> = retriever
        .store()
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i as u32))
        .collect();
    let dims = retriever.encoder().dims();
    let mut ex = Examples {
        images: Vec::new(),
        dims,
        targets: Vec::new(),
        neighbours: Vec::new(),
        skipped: 0,
        first_skip: None,
    };
    let skip = |ex: &mut Examples, why: String| {
        ex.skipped += 1;
        ex.first_skip.get_or_insert(why);
    };
    let mut rows = reader.rows(split).take(total);
    loop {
        let mut chunk = Vec::new();
        for row in rows.by_ref().take(64) {
            match row {
                Ok(r) => chunk.push(r),
                Err(e) => skip(&mut ex, e.to_string()),
            }
        }
        if chunk.is_empty() {
            break;
        }
        let mut images = Vec::new();
        let mut kept = Vec::new();
        for r in chunk {
            match image::load_from_memory(&r.image_png) {
                Ok(img) => {
                    images.push(to_rgb_on_white(&img));
                    kept.push(r);
                }
                Err(e) => skip(
                    &mut ex,
                    format!(
                        "{} (id {}): image does not decode: {e}",
                        r.origin, r.deepcad_id
                    ),
                ),
            }
        }
        let vectors = retriever.encoder().encode_batch(&images);
        for (r, v) in kept.iter().zip(vectors) {
            progress.inc(1);
            let v = match v {
                Ok(v) => v,
                Err(e) => {
                    skip(&mut ex, format!("{} (id {}): {e}", r.origin, r.deepcad_id));
                    continue;
                }
            };
            let set = retriever.search_vector(&v, k + 1, &[])?;
            let ids: Vec<u32> = set
                .neighbours
                .iter()
                .filter(|n| n.id != r.deepcad_id)
                .filter_map(|n| positions.get(n.id.as_str()).copied())
                .take(k)
                .collect();
            ex.images.extend_from_slice(&v);
            ex.targets.push(tok.encode(&compact(&r.cadquery))?);
            ex.neighbours.push(ids);
        }
        progress.set_position((ex.len() + ex.skipped) as u64);
    }
    Ok(ex)
}

/// The language model shape of an architecture and size over a tokenizer's vocabulary (GPT-2
/// with room for the layout's longest prompt).
fn model_config(arch: Arch, size: GenSize, tok: &GenTokenizer, layout: &PromptLayout) -> LmConfig {
    let (e, l, h, p) = size.shape();
    match arch {
        Arch::Gpt2 => {
            let positions =
                layout
                    .max_positions(p)
                    .max(if size == GenSize::Base { 1024 } else { 0 });
            let mut c = Gpt2Config::new(tok.vocab_size(), positions, e, l, h);
            c.eos_token_id = Some(tok.end_id());
            LmConfig::Gpt2(c)
        }
        Arch::Codet5 => {
            let mut c = T5Config::codet5_small();
            if size != GenSize::Base {
                (c.d_model, c.d_kv, c.d_ff, c.num_heads) = (e, e / h, 4 * e, h);
                (c.num_layers, c.num_decoder_layers) = (l, Some(l));
            }
            c.vocab_size = tok.vocab_size();
            (c.eos_token_id, c.pad_token_id) = (tok.end_id(), tok.end_id());
            c.decoder_start_token_id = tok.code_id();
            LmConfig::T5(c)
        }
    }
}

/// Sequences of `idx` examples, neighbours dropped where `drop[i]`.
fn sequences(
    ex: &Examples,
    idx: &[usize],
    drop: &[bool],
    store: &[Vec<u32>],
    tok: &GenTokenizer,
    layout: &PromptLayout,
) -> Vec<(Vec<u32>, usize)> {
    idx.iter()
        .zip(drop)
        .map(|(&i, &d)| {
            let nbs: Vec<&[u32]> = if d {
                Vec::new()
            } else {
                ex.neighbours[i]
                    .iter()
                    .map(|&s| store[s as usize].as_slice())
                    .collect()
            };
            training_ids(tok, &nbs, &ex.targets[i], layout)
        })
        .collect()
}

/// The order of examples in `epoch`: a seeded shuffle, then within windows of 32 batches
/// sorted by length, cut into batches, and the batches shuffled. Batches pad to their longest
/// sequence, so grouping similar lengths cuts the padded positions (2.9x the small model's
/// tokens/s on the synthetic corpus) while every epoch visits every example once, seeded.
fn length_grouped_order(lengths: &[usize], batch: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = epoch_order(lengths.len(), seed, epoch);
    for window in order.chunks_mut(batch * 32) {
        window.sort_by_key(|&i| lengths[i]);
    }
    let mut batches: Vec<&[usize]> = order.chunks_exact(batch).collect();
    let mut rng = Rng::new(seed, 0xBA7C_0000 + epoch as u64);
    for i in (1..batches.len()).rev() {
        let j = rng.int(0, i as i64) as usize;
        batches.swap(i, j);
    }
    let mut out: Vec<usize> = batches.concat();
    out.extend_from_slice(order.chunks_exact(batch).remainder());
    out
}

/// The image vectors of examples `idx`, [idx.len(), dims], in the compute dtype.
fn image_batch(
    ex: &Examples,
    idx: &[usize],
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let mut images = Vec::with_capacity(idx.len() * ex.dims);
    for &i in idx {
        images.extend_from_slice(&ex.images[i * ex.dims..(i + 1) * ex.dims]);
    }
    Tensor::from_vec(images, (idx.len(), ex.dims), device)?.to_dtype(dtype)
}

/// Adds `grads` (scaled by `scale`) into `acc` for every variable.
fn accumulate(
    acc: &mut Option<GradStore>,
    grads: GradStore,
    vars: &[Var],
) -> candle_core::Result<()> {
    match acc {
        None => *acc = Some(grads),
        Some(a) => {
            for v in vars {
                if let Some(g) = grads.get(v.as_tensor()) {
                    let sum = match a.get(v.as_tensor()) {
                        Some(prev) => (prev + g)?,
                        None => g.clone(),
                    };
                    a.insert(v.as_tensor(), sum);
                }
            }
        }
    }
    Ok(())
}

/// Scales gradients so their global norm is at most `max_norm`; returns the norm before.
fn clip_gradients(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> candle_core::Result<f64> {
    let mut total = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = total.sqrt();
    if norm > max_norm && max_norm > 0.0 {
        let s = max_norm / norm;
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * s)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// Mean target-token loss over `ex` (all of it) in batches of `batch`, neighbours kept.
fn validation_loss(
    model: &CodeModel,
    ex: &Examples,
    store: &[Vec<u32>],
    tok: &GenTokenizer,
    batch_size: usize,
    device: &Device,
    dtype: DType,
) -> Result<Option<f64>, GeneratorError> {
    let layout = model.config().layout;
    let err = |e| GeneratorError::candle("validation", e);
    let (mut sum, mut count) = (0.0f64, 0usize);
    let all: Vec<usize> = (0..ex.len()).collect();
    for idx in all.chunks(batch_size.max(1)) {
        let seqs = sequences(ex, idx, &vec![false; idx.len()], store, tok, &layout);
        let images = image_batch(ex, idx, device, dtype).map_err(err)?;
        let (loss, n) = model.loss(&images, &seqs, tok.end_id()).map_err(err)?;
        sum += loss.to_scalar::<f32>().map_err(err)? as f64 * n as f64;
        count += n;
    }
    Ok((count > 0).then(|| sum / count as f64))
}

fn check_settings(s: &GenTrainSettings) -> Result<(), GeneratorError> {
    let bad = |m: &str| Err(GeneratorError::Settings(m.into()));
    if s.batch == 0 || s.accum == 0 || s.accum > s.batch {
        return bad("--batch must be positive and --accum between 1 and --batch");
    }
    if s.epochs == 0 {
        return bad("--epochs must be positive");
    }
    if s.k > 8 {
        return bad("-k above 8 does not fit a prompt");
    }
    if !(0.0..=1.0).contains(&s.neighbour_dropout) {
        return bad("--neighbour-dropout must be in [0, 1]");
    }
    if s.vocab < 300 {
        return bad("--vocab must be at least 300 (256 bytes + merges + 3 special tokens)");
    }
    if !(s.lr > 0.0 && s.lr.is_finite()) {
        return bad("--lr must be positive");
    }
    Ok(())
}

/// The first file in `out` that a run stopped before its first checkpoint would not have
/// written (such a run starts over; anything else is someone else's folder).
fn foreign_file(out: &Path) -> Option<String> {
    let ours = [
        TOKENIZER_FILE,
        CONFIG_FILE,
        GENERATOR_FILE,
        EXAMPLES_FILE,
        WEIGHTS_FILE,
        OPTIMIZER_FILE,
    ];
    std::fs::read_dir(out).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        let partial = name.strip_suffix(".tmp").unwrap_or(&name);
        (!ours.contains(&partial)).then_some(name)
    })
}

/// Trains (or resumes) the generator; returns when finished, or early on `interrupt` or after
/// `max_steps` (checkpointed, resumable exactly).
pub fn train_generator(
    opts: &GenTrainOptions,
    progress: &indicatif::ProgressBar,
    interrupt: &AtomicBool,
) -> Result<GenTrainReport, GeneratorError> {
    let s = &opts.settings;
    check_settings(s)?;
    let state_path = opts.out.join(TRAINING_FILE);
    let resume: Option<GenTrainingState> = if state_path.is_file() {
        let st: GenTrainingState = read_json(&state_path)?;
        if st.format != TRAINING_FORMAT {
            return Err(GeneratorError::Resume(format!(
                "{} holds a run of training format {} (this build writes {TRAINING_FORMAT}); use a new --out",
                opts.out.display(),
                st.format
            )));
        }
        if &st.settings != s {
            return Err(GeneratorError::Resume(format!(
                "{} holds a run with other settings ({}); rerun with the same options or use a new --out",
                opts.out.display(),
                serde_json::to_string(&st.settings).unwrap_or_default()
            )));
        }
        Some(st)
    } else {
        None
    };
    if resume.is_none() {
        if let Some(other) = foreign_file(&opts.out) {
            return Err(GeneratorError::Resume(format!(
                "{} exists and holds no generator run to resume ({} is not ours); use a new --out",
                opts.out.display(),
                other
            )));
        }
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| indexer::clip::ClipError::io(&opts.out, e))?;

    progress.set_message("loading the index");
    let retriever = Retriever::load(&opts.index, None)?;
    let identity = retriever.encoder().identity();
    let reader = CorpusReader::open(&opts.corpus)?;
    if reader.num_rows(Split::Train) == 0 {
        return Err(GeneratorError::Settings(format!(
            "{}: the train split is empty",
            opts.corpus.display()
        )));
    }
    let tok_path = opts.out.join(TOKENIZER_FILE);
    let layout = PromptLayout {
        k: s.k,
        max_neighbour_tokens: s.max_neighbour_tokens,
        max_target_tokens: s.max_target_tokens,
    };
    let prefix_len = s.size.shape().3;
    let (tok, lm_config) = if resume.is_some() {
        let lm = LmConfig::read(&opts.out.join(CONFIG_FILE))?;
        (GenTokenizer::load(&tok_path)?, lm)
    } else if let Some(init) = &s.init {
        let (tok, lm) = pretrained_start(init, s.arch, &layout, prefix_len)?;
        tok.save(&tok_path)?;
        (tok, lm)
    } else {
        progress.set_message("training the tokenizer");
        let mut codes = Vec::new();
        for row in reader
            .rows(Split::Train)
            .take(s.limit.unwrap_or(usize::MAX))
        {
            match row {
                Ok(r) => codes.push(compact(&r.cadquery)),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        let t = GenTokenizer::train(codes.iter().map(|c| c.as_str()), s.vocab)?;
        t.save(&tok_path)?;
        let lm = model_config(s.arch, s.size, &t, &layout);
        (t, lm)
    };
    let gen_config = GeneratorConfig {
        format: GENERATOR_FORMAT,
        arch: s.arch,
        encoder: identity.clone(),
        prefix_len,
        prefix_hidden: lm_config.width(),
        layout,
    };
    let store = store_tokens(&retriever, &tok)?;
    let examples_path = opts.out.join(EXAMPLES_FILE);
    let ex = if resume.is_some() && examples_path.is_file() {
        Examples::load(&examples_path)?
    } else {
        let ex = prepare(
            &reader,
            Split::Train,
            s.limit,
            &retriever,
            &tok,
            s.k,
            progress,
        )?;
        ex.save(&examples_path)?;
        ex
    };
    if ex.len() < s.batch {
        return Err(GeneratorError::Settings(format!(
            "{} usable training rows, fewer than one batch of {} ({} skipped{})",
            ex.len(),
            s.batch,
            ex.skipped,
            ex.first_skip
                .as_deref()
                .map(|w| format!("; first: {w}"))
                .unwrap_or_default()
        )));
    }
    let val = if reader.num_rows(Split::Validation) > 0 && opts.validation_rows > 0 {
        Some(prepare(
            &reader,
            Split::Validation,
            Some(opts.validation_rows),
            &retriever,
            &tok,
            s.k,
            progress,
        )?)
    } else {
        None
    };
    let data_hash = ex.hash();
    let steps_per_epoch = ex.len() / s.batch;
    let total_steps = steps_per_epoch * s.epochs;
    let warmup = ((total_steps as f64 * s.warmup_fraction).round() as usize).max(1);

    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &opts.device);
    let model = CodeModel::new(&lm_config, &gen_config, vb)
        .map_err(|e| GeneratorError::candle("building the model", e))?;
    let vars = varmap.all_vars();
    let mut optimizer = AdamW::new(&varmap, s.weight_decay)
        .map_err(|e| GeneratorError::candle("building the optimizer", e))?;
    let mut state = match resume {
        Some(st) => {
            if st.data_hash != data_hash || st.examples != ex.len() {
                return Err(GeneratorError::Resume(format!(
                    "{} was trained on other examples ({} rows, hash {}; now {} rows, hash {}); use a new --out",
                    opts.out.display(), st.examples, st.data_hash, ex.len(), data_hash
                )));
            }
            restore_run(&opts.out, &mut varmap, &mut optimizer, st.step)?;
            st
        }
        None => {
            init_model_weights(&varmap, s.seed, &lm_config)
                .map_err(|e| GeneratorError::candle("initialising weights", e))?;
            if let Some(init) = &s.init {
                let copied = load_pretrained(&varmap, init, s.arch)?;
                tracing::info!("copied {copied} pretrained tensors from {}", init.display());
            }
            lm_config.write(&opts.out.join(CONFIG_FILE))?;
            write_json(&opts.out.join(GENERATOR_FILE), &gen_config)?;
            GenTrainingState {
                format: TRAINING_FORMAT,
                settings: s.clone(),
                corpus: opts.corpus.clone(),
                index: opts.index.clone(),
                data_hash: data_hash.clone(),
                examples: ex.len(),
                step: 0,
                total_steps,
                seconds: 0.0,
                tokens: 0,
                loss_curve: Vec::new(),
                validation_curve: Vec::new(),
            }
        }
    };
    let resumed_from = state.step;
    progress.set_length(total_steps as u64);
    progress.set_position(state.step as u64);
    progress.reset_eta();
    progress.set_message("training");
    let started = Instant::now();
    let seconds_before = state.seconds;
    let tokens_before = state.tokens;
    let mut tokens_this_run = 0u64;
    let mut interrupted = false;
    let mut window = (0.0f64, 0usize);
    let mut order_epoch = usize::MAX;
    let mut order = Vec::new();
    let micro = s.batch.div_ceil(s.accum);
    let lengths: Vec<usize> = (0..ex.len())
        .map(|i| {
            ex.targets[i].len().min(layout.max_target_tokens)
                + ex.neighbours[i]
                    .iter()
                    .map(|&n| store[n as usize].len().min(layout.max_neighbour_tokens))
                    .sum::<usize>()
        })
        .collect();
    let step_err = |e| GeneratorError::candle("training step", e);
    let dtype = s.precision.dtype();
    // The model over the current weights: itself in f32, a fresh bf16 cast after each update.
    let current_model = || match s.precision {
        Precision::F32 => Ok(model.clone()),
        Precision::Bf16 => cast_model(&varmap, &lm_config, &gen_config, dtype),
    };
    while state.step < total_steps {
        if interrupt.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        if opts
            .max_steps
            .is_some_and(|m| state.step - resumed_from >= m)
        {
            break;
        }
        let epoch = state.step / steps_per_epoch;
        if epoch != order_epoch {
            order = length_grouped_order(&lengths, s.batch, s.seed, epoch);
            order_epoch = epoch;
        }
        let k = state.step % steps_per_epoch;
        let idx = &order[k * s.batch..(k + 1) * s.batch];
        let mut rng = Rng::new(s.seed, 0xD0_0000 + state.step as u64);
        let drop: Vec<bool> = idx
            .iter()
            .map(|_| rng.chance(s.neighbour_dropout))
            .collect();
        let seqs = sequences(&ex, idx, &drop, &store, &tok, &layout);
        let step_targets: usize = seqs.iter().map(|(ids, c)| ids.len() - c).sum();
        let lr = learning_rate(state.step, warmup, total_steps, s.lr);
        let step_model = current_model().map_err(step_err)?;
        let mut acc: Option<GradStore> = None;
        let mut step_loss = 0.0f64;
        for (part, chunk) in idx.chunks(micro).enumerate() {
            let seq_part = &seqs[part * micro..part * micro + chunk.len()];
            tokens_this_run += seq_part
                .iter()
                .map(|(ids, _)| (ids.len() + prefix_len) as u64)
                .sum::<u64>();
            let images = image_batch(&ex, chunk, &opts.device, dtype).map_err(step_err)?;
            let (loss, n) = step_model
                .loss(&images, seq_part, tok.end_id())
                .map_err(step_err)?;
            let weight = n as f64 / step_targets as f64;
            step_loss += loss.to_scalar::<f32>().map_err(step_err)? as f64 * weight;
            let grads = (loss * weight)
                .and_then(|l| l.backward())
                .map_err(step_err)?;
            accumulate(&mut acc, grads, &vars).map_err(step_err)?;
        }
        let mut grads = acc.expect("at least one micro-batch");
        clip_gradients(&mut grads, &vars, s.clip_norm).map_err(step_err)?;
        optimizer.step(&grads, lr).map_err(step_err)?;
        if !step_loss.is_finite() {
            return Err(GeneratorError::Diverged {
                step: state.step,
                lr,
            });
        }
        state.step += 1;
        window.0 += step_loss;
        window.1 += 1;
        if window.1 == 10 || state.step == total_steps {
            state
                .loss_curve
                .push((state.step, window.0 / window.1 as f64));
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            progress.set_message(format!(
                "loss {:.3}  lr {lr:.2e}  {:.0} tok/s",
                window.0 / window.1 as f64,
                tokens_this_run as f64 / secs
            ));
            window = (0.0, 0);
        }
        if let Some(v) = &val {
            if state.step % opts.eval_every.max(1) == 0 || state.step == total_steps {
                let eval_model = current_model().map_err(step_err)?;
                if let Some(l) =
                    validation_loss(&eval_model, v, &store, &tok, micro, &opts.device, dtype)?
                {
                    state.validation_curve.push((state.step, l));
                }
            }
        }
        progress.set_position(state.step as u64);
        if state.step % opts.checkpoint_every.max(1) == 0 && state.step < total_steps {
            state.seconds = seconds_before + started.elapsed().as_secs_f64();
            state.tokens = tokens_before + tokens_this_run;
            save_run(&opts.out, &varmap, &optimizer, &state)?;
        }
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    state.seconds = seconds_before + secs;
    state.tokens = tokens_before + tokens_this_run;
    save_run(&opts.out, &varmap, &optimizer, &state)?;
    Ok(GenTrainReport {
        out: opts.out.clone(),
        steps_this_run: state.step - resumed_from,
        tokens_per_second: tokens_this_run as f64 / secs,
        interrupted,
        resumed_from,
        skipped: ex.skipped,
        first_skip: ex.first_skip.clone(),
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_grouping_is_a_seeded_permutation_of_similar_length_batches() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 600).collect();
        let a = length_grouped_order(&lengths, 8, 3, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, length_grouped_order(&lengths, 8, 3, 0));
        assert_ne!(a, length_grouped_order(&lengths, 8, 3, 1));
        let padded = |order: &[usize]| -> usize {
            order
                .chunks_exact(8)
                .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() * 8)
                .sum()
        };
        let real: usize = lengths.iter().sum();
        let plain = padded(&epoch_order(1000, 3, 0));
        assert!(padded(&a) * 100 < real * 105, "{} vs {real}", padded(&a));
        assert!(plain * 100 > real * 150, "{plain} vs {real}");
    }

    #[test]
    fn accumulated_micro_batches_equal_one_full_batch_and_clipping_bounds_the_norm() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let w = vb
            .get_with_hints((3, 2), "w", candle_nn::Init::Const(0.5))
            .unwrap();
        let vars = varmap.all_vars();
        let x = Tensor::new(&[[1f32, 2.0, 3.0], [0.5, -1.0, 2.0], [2.0, 0.0, 1.0]], &dev).unwrap();
        let loss_of = |rows: &Tensor| rows.matmul(&w).unwrap().sqr().unwrap().sum_all().unwrap();
        let full = loss_of(&x).backward().unwrap();
        let mut acc = None;
        for r in 0..3 {
            let g = loss_of(&x.narrow(0, r, 1).unwrap()).backward().unwrap();
            accumulate(&mut acc, g, &vars).unwrap();
        }
        let mut acc = acc.unwrap();
        let flat = |g: &GradStore| -> Vec<f32> {
            g.get(vars[0].as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        for (a, b) in flat(&full).iter().zip(flat(&acc)) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        let norm = clip_gradients(&mut acc, &vars, 1.0).unwrap();
        assert!(norm > 1.0);
        let after: f32 = flat(&acc).iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((after - 1.0).abs() < 1e-4, "{after}");
    }
}
