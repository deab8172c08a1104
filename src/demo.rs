//! `rag demo`: the main job end to end on built-in data. A synthetic corpus is made and
//! indexed, the 8 real GenCAD reference images are answered (retrieval and the fitted
//! search) and measured with the real metric onto one sheet; then the tiny models run as
//! smoke steps of the rest of the pipeline. Each step is an ordinary `rag` command line, and
//! a rerun reuses what the last run built.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use crate::dataset;

/// Rows of the demo corpus when `--rows` is not given: about 80 s of synthesis on 2 cores.
pub const DEFAULT_ROWS: usize = 3000;
/// Synthetic test queries the demo answers (the first of the split).
const SYNTHETIC_QUERIES: usize = 24;
/// Train rows the tiny smoke models see.
const SMOKE_ROWS: usize = 48;

/// Runs the demo into `out` with a corpus of `rows` synthetic rows.
pub async fn demo(out: &Path, rows: usize) -> Result<ExitCode> {
    let started = Instant::now();
    let venv = evaluator::env::venv_dir();
    match evaluator::env::setup(&venv, &|m| eprintln!("setup: {m}"))? {
        evaluator::SetupOutcome::AlreadyUpToDate => eprintln!(
            "setup: CadQuery environment at {} is up to date",
            venv.display()
        ),
        evaluator::SetupOutcome::Installed => eprintln!(
            "setup: installed CadQuery environment at {}",
            venv.display()
        ),
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = |p: &str| out.join(p).display().to_string();

    // The data engine: a synthetic corpus in the dataset's schema, its statistics, a contact
    // sheet, and the renderer checked against the real reference images.
    let corpus = out.join("corpus");
    let synth = dataset::SynthArgs::small(&corpus, rows);
    if let Some((version, config)) = indexer::synth::written_settings(&corpus) {
        if version != indexer::synth::SYNTH_VERSION || config != synth.config() {
            // The demo's own outputs, made by another sampler or with other settings (a
            // resume would be refused): start them over.
            eprintln!(
                "demo: {} was made by synth version {version} with {} rows; rebuilding it with version {} and {rows} rows",
                corpus.display(),
                config.n,
                indexer::synth::SYNTH_VERSION,
            );
            for stale in ["corpus", "smoke"] {
                let dir = out.join(stale);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                }
            }
        }
    }
    eprintln!(
        "demo: synthesising a {rows}-row corpus into {}",
        corpus.display()
    );
    if dataset::synth_cmd(&synth, false).await? != ExitCode::SUCCESS {
        bail!("demo: synth did not finish");
    }
    dataset::info(&corpus, true, false)?;
    dataset::gallery(&corpus, "train", 16, &out.join("corpus_gallery.png"))?;
    dataset::style(&out.join("style")).await?;

    // Retrieval: the pixel + oriented-gradient index over the train split (the encoder to
    // use on real images).
    let (c, i) = (corpus.display().to_string(), path("index"));
    step_index(&c, "pixel+hog", &i, None).await?;

    // Real images: the 8 GenCAD-Code reference samples, answered retrieval-only and with the
    // fitted search, scored with both IoU protocols against their real code.
    let real = out.join("real");
    write_reference_samples(&real)?;
    let r = real.display().to_string();
    let sample = real.join(format!("{}.png", FIRST_SAMPLE));
    let q = sample.display().to_string();
    eprintln!("demo: the nearest corpus parts of the real image {q}");
    step(&[
        "search",
        &q,
        "--index",
        &i,
        "-k",
        "5",
        "--gallery",
        &path("search"),
    ])
    .await?;
    eprintln!("demo: answering {q} with the fitted search");
    step(&[
        "generate",
        &q,
        "--index",
        &i,
        "--fit",
        "--out",
        &path("generated.py"),
        "--render",
        &path("generated.png"),
        "--side-by-side",
        &path("query-vs-generated.png"),
    ])
    .await?;
    eprintln!("demo: answering and scoring the 8 real reference images (retrieval, fit)");
    let real_items = out.join("real-per-item.jsonl");
    step(&[
        "eval",
        "--corpus",
        &r,
        "--index",
        &i,
        "--mode",
        "retrieval,fit",
        "--per-item",
        &real_items.display().to_string(),
        "--answers",
        &real.join("answers").display().to_string(),
        "--sheet",
        &path("real-sheet.png"),
        "--sheet-per-row",
        "2",
        "--report",
        &real.join("report").display().to_string(),
    ])
    .await?;

    // The same two modes on the corpus's own synthetic test split, beside the real figures.
    let synthetic_items = out.join("synthetic-per-item.jsonl");
    let limit = SYNTHETIC_QUERIES.to_string();
    eprintln!("demo: the same on the first {limit} synthetic test rows");
    step(&[
        "eval",
        "--corpus",
        &c,
        "--index",
        &i,
        "--mode",
        "retrieval,fit",
        "--limit",
        &limit,
        "--per-item",
        &synthetic_items.display().to_string(),
    ])
    .await?;

    // Smoke steps: a tiny CLIP and a tiny generator trained for seconds, to show the rest of
    // the pipeline runs end to end; their figures measure nothing.
    let smoke = out.join("smoke");
    let sp = |p: &str| smoke.join(p).display().to_string();
    let smoke_rows = SMOKE_ROWS.to_string();
    eprintln!(
        "demo: smoke: training a tiny CLIP (image <-> code) into {}",
        sp("clip-tiny")
    );
    step(&[
        "train",
        "clip",
        "--corpus",
        &c,
        "--out",
        &sp("clip-tiny"),
        "--size",
        "tiny",
        "--epochs",
        "20",
        "--batch",
        "8",
        "--vocab",
        "400",
        "--limit",
        &smoke_rows,
    ])
    .await?;
    step_index(&c, &sp("clip-tiny"), &sp("index-clip"), Some(200)).await?;
    eprintln!("demo: smoke: training a tiny generator (image + neighbour -> code)");
    step(&[
        "train",
        "generator",
        "--corpus",
        &c,
        "--index",
        &i,
        "--out",
        &sp("generator-tiny"),
        "--config",
        "tiny",
        "--epochs",
        "30",
        "--batch",
        "8",
        "--vocab",
        "400",
        "-k",
        "1",
        "--limit",
        &smoke_rows,
    ])
    .await?;
    let first_test = indexer::corpus::CorpusReader::open(&corpus)?
        .rows(indexer::corpus::Split::Test)
        .next()
        .context("the demo corpus has no test rows")??;
    let query = smoke.join("query.png");
    first_test.decode_image()?.save(&query)?;
    step(&[
        "generate",
        &query.display().to_string(),
        "--index",
        &i,
        "--model",
        &sp("generator-tiny"),
        "--out",
        &sp("generated-rag.py"),
        "--render",
        &sp("generated-rag.png"),
    ])
    .await?;
    eprintln!("demo: smoke: scoring the tiny models on 8 synthetic test rows");
    step(&[
        "eval",
        "--corpus",
        &c,
        "--index",
        &sp("index-clip"),
        "--mode",
        "retrieval",
        "--limit",
        "8",
    ])
    .await?;
    step(&[
        "eval",
        "--corpus",
        &c,
        "--index",
        &i,
        "--mode",
        "retrieval,generator,rag",
        "--model",
        &sp("generator-tiny"),
        "--limit",
        "8",
        "--report",
        &sp("report"),
    ])
    .await?;

    let minutes = started.elapsed().as_secs_f64() / 60.0;
    println!(
        "\ndemo: done in {minutes:.1} min; outputs under {}",
        out.display()
    );
    println!("\nReal GenCAD images (the 8 reference samples, real code, real metric; measured):");
    print_means(&real_items)?;
    println!(
        "  sheet    {}  (query | retrieval | fit | ground truth)",
        path("real-sheet.png")
    );
    println!("  answers  {}/answers/<mode>/<id>.py", real.display());
    println!("  report   {}/report/index.html", real.display());
    println!(
        "\nSynthetic test rows (first {SYNTHETIC_QUERIES} of the demo corpus's test split; our own sampler, easier than real):"
    );
    print_means(&synthetic_items)?;
    println!(
        "\nOne real query answered with `rag generate --fit`: {} (side by side: {}; neighbours: {})",
        path("generated.py"),
        path("query-vs-generated.png"),
        path("search/index.html"),
    );
    println!(
        "Smoke steps (tiny CLIP and generator trained for seconds on {SMOKE_ROWS} rows; they show the pipeline runs, their figures measure nothing): {}",
        smoke.display()
    );
    println!(
        "The corpus has {rows} rows (`--rows`); a bigger corpus answers real images better (README, docs/real-images.md)."
    );
    Ok(ExitCode::SUCCESS)
}

/// The sample the demo's single-image steps answer.
const FIRST_SAMPLE: &str = "00442545";

/// Writes the reference samples as a png+jsonl corpus folder (`<id>.png`, `real.jsonl`, split
/// test) that `rag eval` reads like any other; no other `*.jsonl` may go into it.
fn write_reference_samples(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut lines = String::new();
    for s in evaluator::reference::samples() {
        let png = evaluator::reference::image_png(&s.deepcad_id)
            .with_context(|| format!("no image for reference sample {}", s.deepcad_id))?;
        let file = dir.join(format!("{}.png", s.deepcad_id));
        std::fs::write(&file, png).with_context(|| format!("writing {}", file.display()))?;
        lines.push_str(
            &serde_json::json!({"id": s.deepcad_id, "code": s.cadquery, "split": "test"})
                .to_string(),
        );
        lines.push('\n');
    }
    let file = dir.join("real.jsonl");
    std::fs::write(&file, lines).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// Prints each mode's mean volume and shell IoU (invalid as 0) from an eval's per-item file.
fn print_means(per_item: &Path) -> Result<()> {
    let text = std::fs::read_to_string(per_item)
        .with_context(|| format!("reading {}", per_item.display()))?;
    let mut by_mode: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
    let mut order = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not a JSON line", per_item.display()))?;
        let mode = v["mode"].as_str().unwrap_or("?").to_string();
        if !by_mode.contains_key(&mode) {
            order.push(mode.clone());
        }
        let e = by_mode.entry(mode).or_default();
        e.0 += 1;
        e.1 += v["volume_iou"].as_f64().unwrap_or(0.0);
        e.2 += v["shell_iou"].as_f64().unwrap_or(0.0);
    }
    println!(
        "  {:<10} {:>7} {:>11} {:>10}",
        "mode", "queries", "volume IoU", "shell IoU"
    );
    for m in order {
        let (n, vol, shell) = by_mode[&m];
        let n_f = n.max(1) as f64;
        println!("  {m:<10} {n:>7} {:>11.3} {:>10.3}", vol / n_f, shell / n_f);
    }
    Ok(())
}

/// Index the corpus's train split (the first `limit` rows) with `encoder` into `index`.
async fn step_index(corpus: &str, encoder: &str, index: &str, limit: Option<usize>) -> Result<()> {
    eprintln!("demo: indexing the train split with {encoder} into {index}");
    let limit = limit.map(|l| l.to_string());
    let mut args = vec![
        "index",
        "build",
        "--corpus",
        corpus,
        "--encoder",
        encoder,
        "--out",
        index,
    ];
    if let Some(l) = &limit {
        args.extend(["--limit", l.as_str()]);
    }
    step(&args).await
}

/// Runs one `rag` command line as part of the demo; a failing step stops it.
async fn step(args: &[&str]) -> Result<()> {
    let cli = crate::Cli::try_parse_from(std::iter::once("rag").chain(args.iter().copied()))?;
    let code = Box::pin(crate::run(cli)).await?;
    if code != ExitCode::SUCCESS {
        bail!("demo: `rag {}` failed", args.join(" "));
    }
    Ok(())
}
