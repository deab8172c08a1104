//! `rag train clip` (contrastive image <-> code) and `rag train generator` (image + neighbours
//! -> code).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use generator::model::Arch;
use generator::train::Precision;
use generator::{train_generator, GenSize, GenTrainOptions, GenTrainSettings};
use indexer::clip::{device, train_clip, ClipSize, ImageTowerKind, TrainOptions, TrainSettings};

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train the small CLIP (image <-> code) on a corpus's train split; rerun the same command
    /// after an interrupt to resume from the last checkpoint.
    Clip(TrainClipArgs),
    /// Train the image-to-code generator on a corpus's train split with neighbours from an
    /// index (leave-one-out); rerun the same command after an interrupt to resume.
    Generator(TrainGeneratorArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SizeArg {
    Small,
    Tiny,
}

#[derive(Clone, Copy, ValueEnum)]
enum ImageTowerArg {
    Vit,
    Conv,
}

#[derive(clap::Args)]
pub struct TrainClipArgs {
    /// Corpus folder (train split learned, validation split measured at the end).
    #[arg(long)]
    corpus: PathBuf,
    /// Checkpoint folder to create or resume.
    #[arg(long)]
    out: PathBuf,
    /// Model size: small (default) or tiny (smoke tests).
    #[arg(long, value_enum, default_value_t = SizeArg::Small)]
    size: SizeArg,
    /// Image tower: the ViT of HF CLIP (default) or a small convolutional net.
    #[arg(long, value_enum, default_value_t = ImageTowerArg::Vit)]
    image_tower: ImageTowerArg,
    /// Passes over the training pairs.
    #[arg(long, default_value_t = TrainSettings::default().epochs)]
    epochs: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = TrainSettings::default().batch)]
    batch: usize,
    /// Peak learning rate (warmup, then cosine decay).
    #[arg(long, default_value_t = TrainSettings::default().lr)]
    lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = TrainSettings::default().weight_decay)]
    weight_decay: f64,
    /// BPE vocabulary of the code tokenizer.
    #[arg(long, default_value_t = TrainSettings::default().vocab)]
    vocab: usize,
    /// Seed of the initial weights and the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N pairs only.
    #[arg(long)]
    limit: Option<usize>,
    /// Save a checkpoint every N steps.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: usize,
    /// Validation pairs for the final retrieval figures (0: skip).
    #[arg(long, default_value_t = 1000)]
    validation: usize,
    /// Stop after N steps in this call (checkpointed; rerun to continue).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Weight of the shape loss (0: off): also pulls together the image embeddings of parts
    /// whose solids agree, from the signatures of `rag dataset shapes`.
    #[arg(long, default_value_t = 0.0)]
    shape_weight: f64,
    /// Temperature of the shape target (softmax over signature similarities, 0..1).
    #[arg(long, default_value_t = TrainSettings::default().shape_temperature)]
    shape_temperature: f64,
    /// Shape signatures of the train split (default: <corpus>/shapes).
    #[arg(long)]
    shapes: Option<PathBuf>,
    /// cpu, or cuda (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print the final state as JSON.
    #[arg(long)]
    json: bool,
}

/// Keeps freed training tensors in the heap: glibc otherwise maps and unmaps every buffer of a
/// few MB, and the page faults cost a fifth of each step (37.5 vs 29.6 pairs/s measured).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before the training threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Runs a training job on a blocking thread with the shared progress bar and the Ctrl-C flag;
/// `what` names the job in errors.
async fn run_training<R: Send + 'static>(
    what: String,
    job: impl FnOnce(&indicatif::ProgressBar, &AtomicBool) -> Result<R> + Send + 'static,
) -> Result<R> {
    let interrupt = crate::interrupt_flag();
    let bar = crate::progress_bar(0);
    let b = bar.clone();
    let report = tokio::task::spawn_blocking(move || job(&b, &interrupt))
        .await
        .context("the training thread panicked")?
        .context(what)?;
    bar.finish_and_clear();
    Ok(report)
}

/// How a training call ended, for the user and the exit code: 130 after Ctrl-C, 0 when
/// finished or stopped by `--max-steps` (both resumable by rerunning the command).
fn ending(interrupted: bool, steps_this_run: usize, step: usize, total: usize) -> ExitCode {
    if interrupted {
        eprintln!("interrupted at step {step} of {total}; rerun the same command to resume");
        return ExitCode::from(130);
    }
    if step < total {
        eprintln!(
            "stopped after {steps_this_run} steps (--max-steps) at step {step} of {total}; rerun to continue"
        );
    }
    ExitCode::SUCCESS
}

pub async fn train(cmd: TrainCommand) -> Result<ExitCode> {
    keep_freed_memory();
    match cmd {
        TrainCommand::Clip(a) => train_clip_cmd(a).await,
        TrainCommand::Generator(a) => train_generator_cmd(a).await,
    }
}

async fn train_clip_cmd(a: TrainClipArgs) -> Result<ExitCode> {
    let opts = TrainOptions {
        corpus: a.corpus.clone(),
        out: a.out.clone(),
        settings: TrainSettings {
            size: match a.size {
                SizeArg::Small => ClipSize::Small,
                SizeArg::Tiny => ClipSize::Tiny,
            },
            image_tower: match a.image_tower {
                ImageTowerArg::Vit => ImageTowerKind::Vit,
                ImageTowerArg::Conv => ImageTowerKind::Conv,
            },
            epochs: a.epochs,
            batch: a.batch,
            lr: a.lr,
            weight_decay: a.weight_decay,
            warmup_fraction: TrainSettings::default().warmup_fraction,
            seed: a.seed,
            vocab: a.vocab,
            limit: a.limit,
            shape_weight: a.shape_weight,
            shape_temperature: a.shape_temperature,
        },
        checkpoint_every: a.checkpoint_every,
        device: device(&a.device)?,
        validation_limit: a.validation,
        max_steps: a.max_steps,
        shapes: a.shapes.clone(),
    };
    let report = run_training(
        format!("training CLIP into {}", a.out.display()),
        move |bar, stop| train_clip(&opts, bar, stop).map_err(anyhow::Error::from),
    )
    .await?;
    let st = &report.state;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("checkpoint     {}", report.out.display());
        println!(
            "steps          {} of {} ({} this run, resumed from {})",
            st.step, st.total_steps, report.steps_this_run, report.resumed_from
        );
        println!("pairs          {} (skipped {})", st.pairs, report.skipped);
        if let Some(why) = &report.first_skip {
            println!("first skip     {why}");
        }
        if let Some(c) = &st.code_tokens {
            println!(
                "code tokens    median {}, p75 {}, p90 {}; {:.0}% longer than the {}-token window",
                c.median,
                c.p75,
                c.p90,
                c.cut_share * 100.0,
                c.window
            );
        }
        if let Some((_, loss)) = st.loss_curve.last() {
            println!("last loss      {loss:.4}");
        }
        if let Some((_, loss)) = st.shape_loss_curve.last() {
            println!("shape loss     {loss:.4}");
        }
        println!(
            "speed          {:.1} pairs/s this run, {:.1} min in all",
            report.pairs_per_second,
            st.seconds / 60.0
        );
        if let Some(v) = &st.validation {
            println!(
                "validation     {} pairs: image->code R@1 {:.3} R@5 {:.3}, code->image R@1 {:.3}, loss {}",
                v.pairs,
                v.image_to_code_r1,
                v.image_to_code_r5,
                v.code_to_image_r1,
                v.loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into())
            );
            if let Some(agreement) = v.neighbour_shape {
                println!(
                    "neighbour shape {agreement:.4} (signature similarity of each validation image's nearest; pixel baseline {})",
                    v.pixel_neighbour_shape
                        .map(|p| format!("{p:.4}"))
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
    }
    Ok(ending(
        report.interrupted,
        report.steps_this_run,
        st.step,
        st.total_steps,
    ))
}

#[derive(Clone, Copy, ValueEnum)]
enum ArchArg {
    Gpt2,
    Codet5,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum GenSizeArg {
    Tiny,
    Small,
    Base,
}

#[derive(clap::Args)]
pub struct TrainGeneratorArgs {
    /// Corpus folder (train split learned, validation split for the validation loss).
    #[arg(long)]
    corpus: PathBuf,
    /// Index whose neighbours fill the prompts (built on the same corpus's train split).
    #[arg(long)]
    index: PathBuf,
    /// Checkpoint folder to create or resume.
    #[arg(long)]
    out: PathBuf,
    /// Language model: gpt2 (decoder-only) or codet5 (T5 encoder-decoder).
    #[arg(long, value_enum, default_value_t = ArchArg::Gpt2)]
    arch: ArchArg,
    /// Compute dtype: f32, or bf16 mixed precision (f32 master weights; meant for
    /// `--device cuda`, slower than f32 on CPU).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Model size: tiny (tests, demo), small (CPU default), base (GPT-2 small's or codet5-small's
    /// shape, GPU).
    #[arg(long = "config", value_enum, default_value_t = GenSizeArg::Small)]
    size: GenSizeArg,
    /// A Hugging Face folder of --arch (config.json, model.safetensors, tokenizer.json; e.g.
    /// gpt2 or Salesforce/codet5-small) that starts the run: its shape and tokenizer replace
    /// --config and --vocab.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Neighbours in each prompt.
    #[arg(short, long, default_value_t = GenTrainSettings::default().k)]
    k: usize,
    /// Tokens kept of each neighbour's code.
    #[arg(long, default_value_t = GenTrainSettings::default().max_neighbour_tokens)]
    max_neighbour_tokens: usize,
    /// Tokens of the target code trained on.
    #[arg(long, default_value_t = GenTrainSettings::default().max_target_tokens)]
    max_target_tokens: usize,
    /// Passes over the training rows.
    #[arg(long, default_value_t = GenTrainSettings::default().epochs)]
    epochs: usize,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = GenTrainSettings::default().batch)]
    batch: usize,
    /// Micro-batches per step (gradient accumulation; same update, less memory).
    #[arg(long, default_value_t = GenTrainSettings::default().accum)]
    accum: usize,
    /// Peak learning rate (warmup, then cosine decay).
    #[arg(long, default_value_t = GenTrainSettings::default().lr)]
    lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = GenTrainSettings::default().weight_decay)]
    weight_decay: f64,
    /// Global gradient-norm clip.
    #[arg(long, default_value_t = GenTrainSettings::default().clip_norm)]
    clip_norm: f64,
    /// Share of prompts trained without neighbours (so generator-only mode works too).
    #[arg(long, default_value_t = GenTrainSettings::default().neighbour_dropout)]
    neighbour_dropout: f64,
    /// BPE vocabulary of the code tokenizer.
    #[arg(long, default_value_t = GenTrainSettings::default().vocab)]
    vocab: usize,
    /// Seed of the initial weights, the order and the dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N rows only.
    #[arg(long)]
    limit: Option<usize>,
    /// Save a checkpoint every N steps.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Validation loss every N steps.
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Validation rows for the validation loss (0: none).
    #[arg(long, default_value_t = 64)]
    validation: usize,
    /// Stop after N steps in this call (checkpointed; rerun to continue).
    #[arg(long)]
    max_steps: Option<usize>,
    /// cpu, or cuda (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print the final state as JSON.
    #[arg(long)]
    json: bool,
}

async fn train_generator_cmd(a: TrainGeneratorArgs) -> Result<ExitCode> {
    let opts = GenTrainOptions {
        corpus: a.corpus.clone(),
        index: a.index.clone(),
        out: a.out.clone(),
        settings: GenTrainSettings {
            arch: match a.arch {
                ArchArg::Gpt2 => Arch::Gpt2,
                ArchArg::Codet5 => Arch::Codet5,
            },
            size: match a.size {
                GenSizeArg::Tiny => GenSize::Tiny,
                GenSizeArg::Small => GenSize::Small,
                GenSizeArg::Base => GenSize::Base,
            },
            k: a.k,
            max_neighbour_tokens: a.max_neighbour_tokens,
            max_target_tokens: a.max_target_tokens,
            epochs: a.epochs,
            batch: a.batch,
            accum: a.accum,
            lr: a.lr,
            weight_decay: a.weight_decay,
            warmup_fraction: GenTrainSettings::default().warmup_fraction,
            clip_norm: a.clip_norm,
            neighbour_dropout: a.neighbour_dropout,
            seed: a.seed,
            vocab: a.vocab,
            limit: a.limit,
            init: a.init.clone(),
            precision: match a.precision {
                PrecisionArg::F32 => Precision::F32,
                PrecisionArg::Bf16 => Precision::Bf16,
            },
        },
        checkpoint_every: a.checkpoint_every,
        eval_every: a.eval_every,
        validation_rows: a.validation,
        device: device(&a.device)?,
        max_steps: a.max_steps,
    };
    let report = run_training(
        format!("training the generator into {}", a.out.display()),
        move |bar, stop| train_generator(&opts, bar, stop).map_err(anyhow::Error::from),
    )
    .await?;
    let st = &report.state;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("checkpoint     {}", report.out.display());
        println!(
            "steps          {} of {} ({} this run, resumed from {})",
            st.step, st.total_steps, report.steps_this_run, report.resumed_from
        );
        println!(
            "examples       {} (skipped {})",
            st.examples, report.skipped
        );
        if let Some(why) = &report.first_skip {
            println!("first skip     {why}");
        }
        if let Some((_, loss)) = st.loss_curve.last() {
            println!("last loss      {loss:.4}");
        }
        if let Some((step, loss)) = st.validation_curve.last() {
            println!("val loss       {loss:.4} (step {step})");
        }
        println!(
            "speed          {:.0} tokens/s this run, {:.1} min and {} tokens in all",
            report.tokens_per_second,
            st.seconds / 60.0,
            st.tokens
        );
    }
    Ok(ending(
        report.interrupted,
        report.steps_this_run,
        st.step,
        st.total_steps,
    ))
}
