//! `rag train clip`: contrastive training of the small CLIP on a corpus's (image, code) pairs,
//! with checkpoints that resume exactly after an interrupt.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::checkpoint::{
    read_json, restore_run, save_run, write_json, CONFIG_FILE, PREPROCESSOR_FILE, TOKENIZER_FILE,
    TRAINING_FILE,
};
use super::config::{ClipConfig, PreprocessConfig};
use super::model::{l2_normalise, Clip, ShapeTarget};
use super::optim::{learning_rate, AdamW};
use super::tokenizer::CodeTokenizer;
use super::ClipError;
use crate::corpus::{CorpusReader, Split};
use crate::encoder::{
    ink_thumbnail, parallel_map, to_rgb_on_white, ImageEncoder, PixelEncoder, PIXEL_DEFAULT_SIDE,
};
use crate::shapes::ShapeSet;
use evaluator::ShapeSignature;
use seeded::{Fnv1a64, Rng};

/// Version of the training state file; another version is refused on resume.
pub const TRAINING_FORMAT: u32 = 1;

/// Model sizes `rag train clip --size` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipSize {
    /// [`ClipConfig::small`]: the CPU-trainable default.
    Small,
    /// A very small model for tests and smoke runs (seconds per epoch on tiny corpora).
    Tiny,
}

/// Image towers `rag train clip --image-tower` offers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageTowerKind {
    /// HF CLIP's ViT (48 px, 8 px patches at the small size).
    #[default]
    Vit,
    /// Our convolutional tower ([`ClipConfig::small_conv`]: 64 px, five stride-2 stages).
    Conv,
}

fn is_vit(kind: &ImageTowerKind) -> bool {
    *kind == ImageTowerKind::Vit
}

/// Everything that shapes a training run; a resumed run must use the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Model size.
    pub size: ClipSize,
    /// The image tower (absent in runs started before the conv tower existed: the ViT).
    #[serde(default, skip_serializing_if = "is_vit")]
    pub image_tower: ImageTowerKind,
    /// Passes over the training pairs.
    pub epochs: usize,
    /// Pairs per step (also the number of negatives per pair, minus one).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Fraction of steps spent warming up.
    pub warmup_fraction: f64,
    /// Seed of the initial weights and of the batch order.
    pub seed: u64,
    /// BPE vocabulary size.
    pub vocab: usize,
    /// Use only the first N training pairs.
    pub limit: Option<usize>,
    /// Weight of the shape loss next to the contrastive one (0: off); needs the train split's
    /// shape signatures (`rag dataset shapes`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shape_weight: f64,
    /// Temperature of the shape target: the softmax over signature similarities (0..1).
    #[serde(default = "default_shape_temperature")]
    pub shape_temperature: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn default_shape_temperature() -> f64 {
    0.05
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            size: ClipSize::Small,
            image_tower: ImageTowerKind::Vit,
            epochs: 3,
            batch: 64,
            lr: 1e-3,
            weight_decay: 0.1,
            warmup_fraction: 0.05,
            seed: 0,
            vocab: 2048,
            limit: None,
            shape_weight: 0.0,
            shape_temperature: default_shape_temperature(),
        }
    }
}

/// What `rag train clip` is asked to do.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The corpus (its train split is learned, its validation split measured).
    pub corpus: PathBuf,
    /// The checkpoint folder (created, or resumed when it holds an unfinished run).
    pub out: PathBuf,
    /// The run's settings.
    pub settings: TrainSettings,
    /// Save a checkpoint every N steps (and on interrupt, and at the end).
    pub checkpoint_every: usize,
    /// Where to compute.
    pub device: Device,
    /// Validation pairs used for the final retrieval figures.
    pub validation_limit: usize,
    /// Stop (checkpointed, resumable) after this many steps in this call.
    pub max_steps: Option<usize>,
    /// Shape signatures of the train split (default `<corpus>/shapes`); read only when the
    /// shape loss is on.
    pub shapes: Option<PathBuf>,
}

/// Held-out retrieval quality: for each validation image, the rank of its own code among all
/// validation codes (and the reverse).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    /// Pairs compared.
    pub pairs: usize,
    /// Image -> code: own code ranked first.
    pub image_to_code_r1: f64,
    /// Image -> code: own code in the top 5.
    pub image_to_code_r5: f64,
    /// Code -> image: own image ranked first.
    pub code_to_image_r1: f64,
    /// Contrastive loss on the validation pairs (batches of the training size; none when
    /// there are fewer pairs than one batch).
    pub loss: Option<f64>,
    /// Mean shape-signature similarity between each validation image and its nearest other
    /// validation image by embedding (what image retrieval hands on), when the validation
    /// split has signatures (`rag dataset shapes --split validation`).
    #[serde(default)]
    pub neighbour_shape: Option<f64>,
    /// The same figure for the pixel baseline's embedding (the encoder to beat).
    #[serde(default)]
    pub pixel_neighbour_shape: Option<f64>,
}

/// The `training.json` of a checkpoint: settings, progress and the loss curve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingState {
    /// [`TRAINING_FORMAT`].
    pub format: u32,
    /// The run's settings.
    pub settings: TrainSettings,
    /// The corpus trained on.
    pub corpus: PathBuf,
    /// FNV-1a of the training pairs' ids and code, so a resume on other data is refused.
    pub corpus_hash: String,
    /// Training pairs.
    pub pairs: usize,
    /// Steps done.
    pub step: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// Seconds spent training, over all sessions.
    pub seconds: f64,
    /// (step, mean contrastive loss over the steps since the previous point).
    pub loss_curve: Vec<(usize, f64)>,
    /// (step, mean shape loss) at the same points, when the shape loss is on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shape_loss_curve: Vec<(usize, f64)>,
    /// Final held-out figures (set when the run finishes and the corpus has a validation split).
    pub validation: Option<Validation>,
    /// How long the training pairs' code views are against the text window (absent in runs
    /// started before it was recorded).
    #[serde(default)]
    pub code_tokens: Option<CodeLengths>,
}

/// Token counts of the training code views, so a run says how much of each program the text
/// tower reads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CodeLengths {
    /// Tokens the window holds before its end token.
    pub window: usize,
    /// Median tokens per program.
    pub median: usize,
    /// 75th percentile.
    pub p75: usize,
    /// 90th percentile.
    pub p90: usize,
    /// Share of programs longer than the window (cut).
    pub cut_share: f64,
}

impl CodeLengths {
    /// Percentiles of `lengths` against a window of `window` tokens; none for no programs.
    pub fn of(lengths: &[u32], window: usize) -> Option<Self> {
        if lengths.is_empty() {
            return None;
        }
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] as usize;
        Some(CodeLengths {
            window,
            median: at(0.5),
            p75: at(0.75),
            p90: at(0.9),
            cut_share: sorted.iter().filter(|l| **l as usize > window).count() as f64
                / sorted.len() as f64,
        })
    }
}

impl TrainingState {
    /// True when every step is done.
    pub fn finished(&self) -> bool {
        self.step >= self.total_steps
    }
}

/// How a call of [`train_clip`] ended.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// The checkpoint folder.
    pub out: PathBuf,
    /// The state as saved last.
    pub state: TrainingState,
    /// Steps done in this call.
    pub steps_this_run: usize,
    /// Training pairs per second in this call.
    pub pairs_per_second: f64,
    /// True when it stopped on an interrupt (the checkpoint resumes it).
    pub interrupted: bool,
    /// Steps restored from an earlier run (0 for a fresh start).
    pub resumed_from: usize,
    /// Rows of the corpus left out (unreadable row or image), with the first reason.
    pub skipped: usize,
    /// The first skip reason, if any.
    pub first_skip: Option<String>,
}

/// Image and code of every pair, ready for batching: ink thumbnails as bytes, token ids.
struct Pairs {
    /// Corpus id of each pair.
    ids: Vec<String>,
    images: Vec<u8>,
    tokens: Vec<u32>,
    ends: Vec<u32>,
    /// Token count of each pair's code view before the cut.
    lengths: Vec<u32>,
    side: usize,
    len: usize,
    hash: String,
    skipped: usize,
    first_skip: Option<String>,
}

impl Pairs {
    fn count(&self) -> usize {
        self.ends.len()
    }

    fn batch(
        &self,
        idx: &[usize],
        pre: &PreprocessConfig,
        device: &Device,
    ) -> Result<(Tensor, Tensor, Tensor), ClipError> {
        let plane = self.side * self.side;
        let (mean, std) = (pre.image_mean[0], pre.image_std[0]);
        let mut px = Vec::with_capacity(idx.len() * plane);
        let mut ids = Vec::with_capacity(idx.len() * self.len);
        let mut ends = Vec::with_capacity(idx.len());
        for &i in idx {
            px.extend(
                self.images[i * plane..(i + 1) * plane]
                    .iter()
                    .map(|v| (f32::from(*v) / 255.0 - mean) / std),
            );
            ids.extend_from_slice(&self.tokens[i * self.len..(i + 1) * self.len]);
            ends.push(self.ends[i]);
        }
        let b = idx.len();
        let t = |e| ClipError::candle("building a batch", e);
        Ok((
            Tensor::from_vec(px, (b, 1, self.side, self.side), device).map_err(t)?,
            Tensor::from_vec(ids, (b, self.len), device).map_err(t)?,
            Tensor::from_vec(ends, b, device).map_err(t)?,
        ))
    }
}

/// Reads up to `limit` rows of `split` as ink thumbnails (decoded on all cores) and token ids;
/// unreadable rows are counted and skipped, not fatal.
fn read_pairs(
    reader: &CorpusReader,
    split: Split,
    limit: Option<usize>,
    side: usize,
    tokenizer: &CodeTokenizer,
    len: usize,
    progress: &indicatif::ProgressBar,
) -> Result<Pairs, ClipError> {
    let total = limit.map_or(reader.num_rows(split), |l| l.min(reader.num_rows(split)));
    progress.set_length(total as u64);
    progress.set_position(0);
    progress.set_message(format!("reading {split} pairs"));
    let mut out = Pairs {
        ids: Vec::new(),
        images: Vec::new(),
        tokens: Vec::new(),
        ends: Vec::new(),
        lengths: Vec::new(),
        side,
        len,
        hash: String::new(),
        skipped: 0,
        first_skip: None,
    };
    let mut hash = Fnv1a64::new();
    let mut rows = reader.rows(split).take(total);
    loop {
        let mut chunk = Vec::with_capacity(256);
        for row in rows.by_ref() {
            match row {
                Ok(r) => chunk.push(r),
                Err(e) => {
                    out.skipped += 1;
                    out.first_skip.get_or_insert(e.to_string());
                }
            }
            if chunk.len() == 256 {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        let thumbs = parallel_map(&chunk, |r| {
            let img = r.decode_image().map_err(|e| e.to_string())?;
            ink_thumbnail(
                &to_rgb_on_white(&image::DynamicImage::ImageRgb8(img)),
                side as u32,
            )
            .map_err(|e| format!("{} (id {}): {e}", r.origin, r.deepcad_id))
        });
        for (row, thumb) in chunk.iter().zip(thumbs) {
            match thumb {
                Ok(t) => {
                    let (ids, end, full) = tokenizer.encode_counted(&row.cadquery, len)?;
                    out.lengths.push(full as u32);
                    out.images
                        .extend(t.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8));
                    out.tokens.extend(ids);
                    out.ends.push(end);
                    out.ids.push(row.deepcad_id.clone());
                    hash.update_str(&row.deepcad_id);
                    hash.update_str(&row.cadquery);
                }
                Err(e) => {
                    out.skipped += 1;
                    out.first_skip.get_or_insert(e);
                }
            }
        }
        progress.inc(chunk.len() as u64);
    }
    out.hash = format!("{:016x}", hash.finish());
    Ok(out)
}

fn model_config(size: ClipSize, tower: ImageTowerKind, tokenizer: &CodeTokenizer) -> ClipConfig {
    let (vocab, end) = (tokenizer.vocab_size(), tokenizer.end_id());
    let mut c = match tower {
        ImageTowerKind::Vit => ClipConfig::small(vocab, end),
        ImageTowerKind::Conv => ClipConfig::small_conv(vocab, end),
    };
    if size == ClipSize::Tiny {
        let (v, t) = (&mut c.vision_config, &mut c.text_config);
        v.hidden_size = 32;
        v.intermediate_size = 64;
        v.num_hidden_layers = 1;
        v.num_attention_heads = 2;
        v.image_size = 32;
        if tower == ImageTowerKind::Conv {
            v.conv_widths = vec![8, 16, 32];
        }
        t.hidden_size = 32;
        t.intermediate_size = 64;
        t.num_hidden_layers = 1;
        t.num_attention_heads = 2;
        t.max_position_embeddings = 128;
        c.projection_dim = 32;
    }
    c
}

/// Seeded initial weights by role (our RNG: candle's CPU generator cannot be seeded): norms'
/// scales 1, biases 0, embeddings (token, position, class, and the patch kernel) N(0, 0.02),
/// other matrices (`token_merge` included) N(0, 1/sqrt(fan_in)), the temperature at its
/// configured start.
fn seeded_init(varmap: &VarMap, seed: u64, config: &ClipConfig) -> Result<(), ClipError> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = Rng::new(seed, 0x0C11_F00D);
    for name in names {
        let var = &data[name];
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let values: Vec<f32> = if name == "logit_scale" {
            vec![config.logit_scale_init_value as f32]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else if name.contains("norm") {
            vec![1.0; n]
        } else {
            // Embedding tables by their own name, not their `embeddings.` module, which also
            // holds the token_merge projection.
            let std = if name.ends_with("embedding") || name.ends_with("embedding.weight") {
                0.02
            } else {
                let fan_in: usize = shape.dims()[1..].iter().product();
                1.0 / (fan_in.max(1) as f64).sqrt()
            };
            (0..n).map(|_| (rng.normal() * std) as f32).collect()
        };
        let t = Tensor::from_vec(values, shape, var.device())
            .map_err(|e| ClipError::candle("initialising weights", e))?;
        var.set(&t)
            .map_err(|e| ClipError::candle("initialising weights", e))?;
    }
    Ok(())
}

/// The order of pairs in `epoch`: a seeded shuffle, the same on every run and resume.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed, 1 + epoch as u64);
    for i in (1..n).rev() {
        let j = rng.int(0, i as i64) as usize;
        order.swap(i, j);
    }
    order
}

/// Trains (or resumes) the small CLIP; returns when finished, or early when `interrupt` is set or
/// `max_steps` are done (after saving a checkpoint that resumes exactly).
pub fn train_clip(
    opts: &TrainOptions,
    progress: &indicatif::ProgressBar,
    interrupt: &AtomicBool,
) -> Result<TrainReport, ClipError> {
    let s = &opts.settings;
    if s.batch < 2 {
        return Err(ClipError::Settings(
            "--batch must be at least 2 (contrastive pairs need negatives)".into(),
        ));
    }
    if s.epochs == 0 {
        return Err(ClipError::Settings("--epochs must be at least 1".into()));
    }
    if !(s.shape_weight >= 0.0 && s.shape_weight.is_finite()) {
        return Err(ClipError::Settings(format!(
            "--shape-weight must be 0 (off) or positive, not {}",
            s.shape_weight
        )));
    }
    if !(s.shape_temperature > 0.0 && s.shape_temperature.is_finite()) {
        return Err(ClipError::Settings(format!(
            "--shape-temperature must be positive, not {}",
            s.shape_temperature
        )));
    }
    let reader = CorpusReader::open(&opts.corpus)?;
    let available = reader.num_rows(Split::Train);
    if available == 0 {
        return Err(ClipError::Settings(format!(
            "{}: the corpus has no train split rows to learn from",
            opts.corpus.display()
        )));
    }
    std::fs::create_dir_all(&opts.out).map_err(|e| ClipError::io(&opts.out, e))?;
    let state_path = opts.out.join(TRAINING_FILE);
    let resume: Option<TrainingState> = if state_path.exists() {
        let st: TrainingState = read_json(&state_path)?;
        if st.format != TRAINING_FORMAT {
            return Err(ClipError::Resume(format!(
                "{}: training state format {} (this build writes {TRAINING_FORMAT}); use a new --out",
                state_path.display(),
                st.format
            )));
        }
        if st.settings != *s {
            return Err(ClipError::Resume(format!(
                "{} holds a run with other settings ({}); rerun with the same settings to resume, or use a new --out",
                opts.out.display(),
                serde_json::to_string(&st.settings).unwrap_or_default()
            )));
        }
        Some(st)
    } else {
        None
    };

    // Tokenizer: trained on the train split's code for a fresh run, reloaded on resume.
    let tok_path = opts.out.join(TOKENIZER_FILE);
    let tokenizer = if resume.is_some() {
        CodeTokenizer::load(&tok_path)?
    } else {
        progress.set_message("training the code tokenizer");
        let limit = s.limit.unwrap_or(usize::MAX);
        let mut codes = Vec::new();
        for r in reader.rows(Split::Train).take(limit).flatten() {
            codes.push(r.cadquery);
        }
        let tok = CodeTokenizer::train(codes.iter().map(|c| c.as_str()), s.vocab)?;
        tok.save(&tok_path)?;
        tok
    };
    // A resumed run keeps the shapes it started with, even if this build's defaults moved on.
    let config: ClipConfig = if resume.is_some() {
        read_json(&opts.out.join(CONFIG_FILE))?
    } else {
        model_config(s.size, s.image_tower, &tokenizer)
    };
    config.validate().map_err(ClipError::Settings)?;
    let pre = PreprocessConfig::small();
    let side = config.vision_config.image_size;
    let len = config.text_config.max_position_embeddings;
    let pairs = read_pairs(
        &reader,
        Split::Train,
        s.limit,
        side,
        &tokenizer,
        len,
        progress,
    )?;
    if pairs.count() < s.batch {
        return Err(ClipError::Settings(format!(
            "{} usable training pairs, fewer than one batch of {} (lower --batch)",
            pairs.count(),
            s.batch
        )));
    }
    let shapes_dir = opts
        .shapes
        .clone()
        .unwrap_or_else(|| opts.corpus.join("shapes"));
    let signatures = if s.shape_weight > 0.0 {
        progress.set_message("reading shape signatures");
        let set = ShapeSet::load(&shapes_dir, Split::Train)
            .map_err(|e| ClipError::Settings(e.to_string()))?;
        let aligned: Vec<Option<ShapeSignature>> =
            pairs.ids.iter().map(|id| set.get(id).cloned()).collect();
        let have = aligned.iter().filter(|s| s.is_some()).count();
        if have * 2 < pairs.count() {
            return Err(ClipError::Settings(format!(
                "{}: shape signatures for only {have} of {} training pairs; rerun `rag dataset shapes` on this corpus",
                shapes_dir.display(),
                pairs.count()
            )));
        }
        Some(aligned)
    } else {
        None
    };
    let steps_per_epoch = pairs.count() / s.batch;
    let total_steps = steps_per_epoch * s.epochs;
    let warmup = ((total_steps as f64 * s.warmup_fraction).round() as usize).max(1);

    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &opts.device);
    let clip = Clip::new(&config, vb).map_err(|e| ClipError::candle("building the model", e))?;
    let mut optimizer = AdamW::new(&varmap, s.weight_decay)
        .map_err(|e| ClipError::candle("building the optimizer", e))?;
    let mut state = match resume {
        Some(st) => {
            if st.corpus_hash != pairs.hash || st.pairs != pairs.count() {
                return Err(ClipError::Resume(format!(
                    "{} was trained on other pairs ({} pairs, hash {}; this corpus gives {} pairs, hash {}); use a new --out",
                    opts.out.display(), st.pairs, st.corpus_hash, pairs.count(), pairs.hash
                )));
            }
            restore_run(&opts.out, &mut varmap, &mut optimizer, st.step)?;
            st
        }
        None => {
            seeded_init(&varmap, s.seed, &config)?;
            write_json(&opts.out.join(CONFIG_FILE), &config)?;
            write_json(&opts.out.join(PREPROCESSOR_FILE), &pre)?;
            TrainingState {
                format: TRAINING_FORMAT,
                settings: s.clone(),
                corpus: opts.corpus.clone(),
                corpus_hash: pairs.hash.clone(),
                pairs: pairs.count(),
                step: 0,
                total_steps,
                seconds: 0.0,
                loss_curve: Vec::new(),
                shape_loss_curve: Vec::new(),
                validation: None,
                code_tokens: None,
            }
        }
    };
    let resumed_from = state.step;
    state.code_tokens = CodeLengths::of(&pairs.lengths, len - 1);

    progress.set_length(total_steps as u64);
    progress.set_position(state.step as u64);
    progress.reset_eta();
    progress.set_message("training");
    let started = Instant::now();
    let seconds_before = state.seconds;
    let mut interrupted = false;
    let mut window = (0.0f64, 0usize);
    let mut shape_window = (0.0f64, 0usize);
    let mut order_epoch = usize::MAX;
    let mut order = Vec::new();
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
            order = epoch_order(pairs.count(), s.seed, epoch);
            order_epoch = epoch;
        }
        let k = state.step % steps_per_epoch;
        let idx = &order[k * s.batch..(k + 1) * s.batch];
        let (px, ids, ends) = pairs.batch(idx, &pre, &opts.device)?;
        let lr = learning_rate(state.step, warmup, total_steps, s.lr);
        let step_err = |e| ClipError::candle("training step", e);
        let target = match &signatures {
            Some(sigs) => {
                let batch_sigs: Vec<Option<&ShapeSignature>> =
                    idx.iter().map(|&i| sigs[i].as_ref()).collect();
                shape_target(&batch_sigs, s.shape_temperature, &opts.device)?
            }
            None => None,
        };
        let (contrastive, shape) = clip
            .training_losses(&px, &ids, &ends, target.as_ref())
            .map_err(step_err)?;
        let loss = match &shape {
            Some(sl) => (&contrastive + sl.affine(s.shape_weight, 0.0).map_err(step_err)?)
                .map_err(step_err)?,
            None => contrastive.clone(),
        };
        let grads = loss.backward().map_err(step_err)?;
        optimizer.step(&grads, lr).map_err(step_err)?;
        let l = contrastive.to_scalar::<f32>().map_err(step_err)? as f64;
        let shape_l = match &shape {
            Some(sl) => Some(sl.to_scalar::<f32>().map_err(step_err)? as f64),
            None => None,
        };
        if !l.is_finite() || shape_l.is_some_and(|v| !v.is_finite()) {
            return Err(ClipError::Diverged {
                step: state.step,
                lr,
            });
        }
        state.step += 1;
        if let Some(v) = shape_l {
            shape_window.0 += v;
            shape_window.1 += 1;
        }
        window.0 += l;
        window.1 += 1;
        if window.1 == 10 || state.step == total_steps {
            state
                .loss_curve
                .push((state.step, window.0 / window.1 as f64));
            let mut message = format!("loss {:.3}", window.0 / window.1 as f64);
            if shape_window.1 > 0 {
                let mean = shape_window.0 / shape_window.1 as f64;
                state.shape_loss_curve.push((state.step, mean));
                message.push_str(&format!("  shape {mean:.3}"));
            }
            progress.set_message(format!("{message}  lr {lr:.2e}"));
            window = (0.0, 0);
            shape_window = (0.0, 0);
        }
        progress.set_position(state.step as u64);
        if state.step % opts.checkpoint_every.max(1) == 0 && state.step < total_steps {
            state.seconds = seconds_before + started.elapsed().as_secs_f64();
            save_run(&opts.out, &varmap, &optimizer, &state)?;
        }
    }
    state.seconds = seconds_before + started.elapsed().as_secs_f64();
    if state.finished() && reader.num_rows(Split::Validation) > 0 && opts.validation_limit > 0 {
        let val = read_pairs(
            &reader,
            Split::Validation,
            Some(opts.validation_limit),
            side,
            &tokenizer,
            len,
            progress,
        )?;
        if val.count() >= 2 {
            let shapes = ShapeSet::load(&shapes_dir, Split::Validation).ok();
            let mut v = validate(&clip, &val, &pre, s.batch, &opts.device, shapes.as_ref())?;
            if let Some(set) = &shapes {
                progress.set_message("pixel baseline on the validation pairs");
                v.pixel_neighbour_shape = pixel_neighbour_agreement(&reader, &val, set);
            }
            state.validation = Some(v);
        }
    }
    save_run(&opts.out, &varmap, &optimizer, &state)?;
    let steps_this_run = state.step - resumed_from;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    Ok(TrainReport {
        out: opts.out.clone(),
        steps_this_run,
        pairs_per_second: (steps_this_run * s.batch) as f64 / secs,
        interrupted,
        resumed_from,
        skipped: pairs.skipped,
        first_skip: pairs.first_skip.clone(),
        state,
    })
}

/// Mean signature similarity between each item and its most similar other item by `sim`
/// (rows and columns in `ids` order); items without a signature are left out.
fn neighbour_agreement(sim: &[Vec<f32>], ids: &[String], set: &ShapeSet) -> Option<f64> {
    let mut agreement = (0.0, 0usize);
    for (i, row) in sim.iter().enumerate() {
        let nearest = (0..row.len())
            .filter(|j| *j != i)
            .max_by(|a, b| row[*a].total_cmp(&row[*b]));
        if let (Some(j), Some(a)) = (nearest, set.get(&ids[i])) {
            if let Some(b) = set.get(&ids[j]) {
                agreement.0 += a.similarity(b);
                agreement.1 += 1;
            }
        }
    }
    (agreement.1 > 0).then(|| agreement.0 / agreement.1 as f64)
}

/// [`neighbour_agreement`] of the pixel baseline's embedding over the same validation rows,
/// so a run's figure has its yardstick beside it.
fn pixel_neighbour_agreement(reader: &CorpusReader, val: &Pairs, set: &ShapeSet) -> Option<f64> {
    let wanted: std::collections::HashSet<&str> = val.ids.iter().map(|s| s.as_str()).collect();
    let rows: Vec<_> = reader
        .rows(Split::Validation)
        .flatten()
        .filter(|r| wanted.contains(r.deepcad_id.as_str()))
        .collect();
    let encoder = PixelEncoder::new(PIXEL_DEFAULT_SIDE);
    let vectors = parallel_map(&rows, |r| {
        r.decode_image()
            .ok()
            .and_then(|img| encoder.encode(&img).ok())
    });
    let (ids, vectors): (Vec<String>, Vec<Vec<f32>>) = rows
        .iter()
        .zip(vectors)
        .filter_map(|(r, v)| v.map(|v| (r.deepcad_id.clone(), v)))
        .unzip();
    let sim: Vec<Vec<f32>> = parallel_map(&vectors, |a| {
        vectors
            .iter()
            .map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum())
            .collect()
    });
    neighbour_agreement(&sim, &ids, set)
}

/// The batch's [`ShapeTarget`]: row i is the softmax over the other images j (with a
/// signature) of similarity(i, j) / `temperature`; images without a signature get no row and
/// no share. None when fewer than two images of the batch have a signature.
fn shape_target(
    sigs: &[Option<&ShapeSignature>],
    temperature: f64,
    device: &Device,
) -> Result<Option<ShapeTarget>, ClipError> {
    let n = sigs.len();
    if sigs.iter().filter(|s| s.is_some()).count() < 2 {
        return Ok(None);
    }
    // similarities of the upper triangle, computed on all cores, mirrored below
    let rows: Vec<usize> = (0..n).collect();
    let upper = parallel_map(&rows, |&i| -> Vec<f64> {
        (i + 1..n)
            .map(|j| match (sigs[i], sigs[j]) {
                (Some(a), Some(b)) => a.similarity(b),
                _ => f64::NAN,
            })
            .collect()
    });
    let mut sim = vec![f64::NAN; n * n];
    for (i, row) in upper.iter().enumerate() {
        for (k, v) in row.iter().enumerate() {
            let j = i + 1 + k;
            sim[i * n + j] = *v;
            sim[j * n + i] = *v;
        }
    }
    let mut weights = vec![0f32; n * n];
    let mut with_target = 0;
    for i in 0..n {
        let row = &sim[i * n..(i + 1) * n];
        let best = row
            .iter()
            .filter(|v| !v.is_nan())
            .fold(f64::NEG_INFINITY, |m, v| m.max(*v));
        if sigs[i].is_none() || best == f64::NEG_INFINITY {
            continue;
        }
        let e: Vec<f64> = row
            .iter()
            .map(|v| {
                if v.is_nan() {
                    0.0
                } else {
                    ((v - best) / temperature).exp()
                }
            })
            .collect();
        let total: f64 = e.iter().sum();
        for (w, v) in weights[i * n..(i + 1) * n].iter_mut().zip(&e) {
            *w = (v / total) as f32;
        }
        with_target += 1;
    }
    let weights = Tensor::from_vec(weights, (n, n), device)
        .map_err(|e| ClipError::candle("building the shape target", e))?;
    Ok(Some(ShapeTarget {
        weights,
        rows: with_target,
    }))
}

/// Retrieval ranks on held-out pairs (all against all) and the mean batch loss.
fn validate(
    clip: &Clip,
    val: &Pairs,
    pre: &PreprocessConfig,
    batch: usize,
    device: &Device,
    shapes: Option<&ShapeSet>,
) -> Result<Validation, ClipError> {
    let e = |e| ClipError::candle("validation", e);
    let n = val.count();
    let mut imgs = Vec::new();
    let mut txts = Vec::new();
    let mut loss = (0.0, 0usize);
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(batch) {
        let (px, ids, ends) = val.batch(chunk, pre, device)?;
        let img = l2_normalise(&clip.image_features(&px).map_err(e)?).map_err(e)?;
        let txt = l2_normalise(&clip.text_features(&ids, &ends).map_err(e)?).map_err(e)?;
        if chunk.len() == batch {
            let l = clip.contrastive_loss(&px, &ids, &ends).map_err(e)?;
            loss.0 += l.to_scalar::<f32>().map_err(e)? as f64;
            loss.1 += 1;
        }
        imgs.push(img);
        txts.push(txt);
    }
    let img = Tensor::cat(&imgs, 0).map_err(e)?;
    let txt = Tensor::cat(&txts, 0).map_err(e)?;
    let sim: Vec<Vec<f32>> = img
        .matmul(&txt.t().map_err(e)?)
        .map_err(e)?
        .to_vec2()
        .map_err(e)?;
    let neighbour_shape = match shapes {
        Some(set) => {
            let image_sim: Vec<Vec<f32>> = img
                .matmul(&img.t().map_err(e)?)
                .map_err(e)?
                .to_vec2()
                .map_err(e)?;
            neighbour_agreement(&image_sim, &val.ids, set)
        }
        None => None,
    };
    let rank = |row: &[f32], own: usize| row.iter().filter(|v| **v > row[own]).count();
    let mut i2t = (0usize, 0usize);
    let mut t2i = 0usize;
    for (i, row) in sim.iter().enumerate() {
        let r = rank(row, i);
        i2t.0 += usize::from(r == 0);
        i2t.1 += usize::from(r < 5);
        let col: Vec<f32> = sim.iter().map(|other| other[i]).collect();
        t2i += usize::from(rank(&col, i) == 0);
    }
    Ok(Validation {
        pairs: n,
        image_to_code_r1: i2t.0 as f64 / n as f64,
        image_to_code_r5: i2t.1 as f64 / n as f64,
        code_to_image_r1: t2i as f64 / n as f64,
        loss: (loss.1 > 0).then(|| loss.0 / loss.1 as f64),
        neighbour_shape,
        pixel_neighbour_shape: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(keys: &[u32]) -> ShapeSignature {
        ShapeSignature::from_keys(keys.to_vec()).unwrap()
    }

    #[test]
    fn shape_targets_favour_alike_parts_and_skip_parts_without_a_signature() {
        let base = 3 << 20 | 3 << 10;
        let a = sig(&[base + 1, base + 2, base + 3, base + 4]);
        let near = sig(&[base + 1, base + 2, base + 3, base + 5]);
        let far = sig(&[base + 100, base + 101, base + 102]);
        let sigs = [Some(&a), Some(&near), Some(&far), None];
        let t = shape_target(&sigs, 0.05, &Device::Cpu).unwrap().unwrap();
        assert_eq!(t.rows, 3);
        let w: Vec<Vec<f32>> = t.weights.to_vec2().unwrap();
        for (i, row) in w.iter().enumerate().take(3) {
            assert!(
                (row.iter().sum::<f32>() - 1.0).abs() < 1e-5,
                "row {i}: {row:?}"
            );
            assert_eq!(row[i], 0.0);
            assert_eq!(row[3], 0.0, "no share for a part without a signature");
        }
        assert!(w[0][1] > 0.99 && w[1][0] > 0.99, "{w:?}");
        assert!(w[3].iter().all(|v| *v == 0.0));
        // far is alike to neither: its share is split evenly
        assert!((w[2][0] - 0.5).abs() < 1e-5 && (w[2][1] - 0.5).abs() < 1e-5);
        assert!(shape_target(&[Some(&a), None], 0.05, &Device::Cpu)
            .unwrap()
            .is_none());
    }

    #[test]
    fn neighbour_agreement_scores_each_items_nearest_by_the_embedding() {
        let dir = tempfile::tempdir().unwrap();
        let base = 3 << 20 | 3 << 10;
        let rows = vec![
            ("a".to_string(), Ok(sig(&[base + 1, base + 2]))),
            ("b".to_string(), Ok(sig(&[base + 1, base + 3]))),
            ("c".to_string(), Ok(sig(&[base + 50]))),
        ];
        crate::shapes::write_chunk(
            &crate::shapes::chunk_path(dir.path(), Split::Train, 0),
            &rows,
        )
        .unwrap();
        let set = ShapeSet::load(dir.path(), Split::Train).unwrap();
        let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        // a and b see each other first (similarity 1/3), c sees a (0)
        let sim = vec![
            vec![1.0, 0.9, 0.1],
            vec![0.9, 1.0, 0.2],
            vec![0.5, 0.4, 1.0],
        ];
        let got = neighbour_agreement(&sim, &ids, &set).unwrap();
        assert!((got - 2.0 / 9.0).abs() < 1e-12, "{got}");
    }

    #[test]
    fn code_lengths_give_percentiles_and_the_share_cut() {
        let lengths: Vec<u32> = (1..=100).collect();
        let c = CodeLengths::of(&lengths, 80).unwrap();
        assert_eq!((c.median, c.p75, c.p90, c.window), (51, 75, 90, 80));
        assert!((c.cut_share - 0.2).abs() < 1e-12);
        assert_eq!(CodeLengths::of(&[], 80), None);
    }

    #[test]
    fn epoch_orders_are_permutations_that_differ_by_epoch_and_repeat_by_seed() {
        let a = epoch_order(100, 3, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 3, 0));
        assert_ne!(a, epoch_order(100, 3, 1));
        assert_ne!(a, epoch_order(100, 4, 0));
    }
}
