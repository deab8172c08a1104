//! `rag train clip`: contrastive training of the small CLIP image <-> code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use indexer::clip::{device, train_clip, ClipSize, TrainOptions, TrainSettings};

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Train the small CLIP (image <-> code) on a corpus's train split; rerun the same command
    /// after an interrupt to resume from the last checkpoint.
    Clip(TrainClipArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SizeArg {
    Small,
    Tiny,
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

pub async fn train(cmd: TrainCommand) -> Result<ExitCode> {
    let TrainCommand::Clip(a) = cmd;
    keep_freed_memory();
    let opts = TrainOptions {
        corpus: a.corpus.clone(),
        out: a.out.clone(),
        settings: TrainSettings {
            size: match a.size {
                SizeArg::Small => ClipSize::Small,
                SizeArg::Tiny => ClipSize::Tiny,
            },
            epochs: a.epochs,
            batch: a.batch,
            lr: a.lr,
            weight_decay: a.weight_decay,
            warmup_fraction: TrainSettings::default().warmup_fraction,
            seed: a.seed,
            vocab: a.vocab,
            limit: a.limit,
        },
        checkpoint_every: a.checkpoint_every,
        device: device(&a.device)?,
        validation_limit: a.validation,
        max_steps: a.max_steps,
    };
    let interrupt = crate::interrupt_flag();
    let bar = crate::progress_bar(0);
    let b = bar.clone();
    let report = tokio::task::spawn_blocking(move || {
        train_clip(&opts, &b, &interrupt).map_err(anyhow::Error::from)
    })
    .await
    .context("the training thread panicked")?
    .with_context(|| format!("training CLIP into {}", a.out.display()))?;
    bar.finish_and_clear();
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
        if let Some((_, loss)) = st.loss_curve.last() {
            println!("last loss      {loss:.4}");
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
        }
    }
    if report.interrupted {
        eprintln!(
            "interrupted at step {} of {}; rerun the same command to resume",
            st.step, st.total_steps
        );
        return Ok(ExitCode::from(130));
    }
    if !st.finished() {
        eprintln!(
            "stopped after {} steps (--max-steps) at step {} of {}; rerun to continue",
            report.steps_this_run, st.step, st.total_steps
        );
    }
    Ok(ExitCode::SUCCESS)
}
