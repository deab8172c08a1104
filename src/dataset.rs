//! The data-engine commands: `render`, `dataset synth|info|style|shapes`, `bench render|synth`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use evaluator::render::{encode_png, render_part};
use evaluator::{reference, Wants};
use indexer::corpus::{CorpusReader, Split};
use indexer::dialect::DialectStats;
use indexer::shapes::compute_shapes;
use indexer::synth::{synthesize, SynthConfig};

use crate::{start_pool, PoolArgs};

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Build (or resume) a synthetic GenCAD-Code corpus as parquet shards.
    Synth {
        #[command(flatten)]
        synth: SynthArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Split sizes and dialect statistics of a corpus, next to the real dataset's.
    Info {
        /// Corpus folder (GenCAD parquet, our synthetic output, or <id>.png + jsonl).
        dir: PathBuf,
        /// Also decode every image (slower; finds undecodable PNGs).
        #[arg(long)]
        check_images: bool,
        #[arg(long)]
        json: bool,
    },
    /// A PNG contact sheet of a split's first images (to eyeball a corpus).
    Gallery {
        /// Corpus folder.
        dir: PathBuf,
        #[arg(long, default_value = "train")]
        split: String,
        /// Images on the sheet (a square grid).
        #[arg(long, default_value_t = 36)]
        count: usize,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
    },
    /// Execute every program of a split once and store its shape signature (surface voxels in
    /// its principal frame), the shape-similarity target of `rag train clip --shape-weight`.
    Shapes {
        /// Corpus folder.
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long, default_value = "train")]
        split: String,
        /// Where the signature chunks go (default: <corpus>/shapes); rerun to resume.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pool: PoolArgs,
    },
    /// Render the eight reference samples' code and compare with the real images.
    Style {
        /// Where the side-by-side PNG (real | ours) goes.
        #[arg(long, default_value = "target/style")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Rows to produce over all splits.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (created; rerun with the same settings to resume).
    #[arg(long)]
    out: PathBuf,
    /// Share of rows in the validation split.
    #[arg(long, default_value_t = 0.05)]
    val: f64,
    /// Share of rows in the test split.
    #[arg(long, default_value_t = 0.05)]
    test: f64,
    /// Rows per parquet shard.
    #[arg(long, default_value_t = 1000)]
    shard_rows: usize,
    #[command(flatten)]
    pool: PoolArgs,
}

impl SynthArgs {
    /// A small corpus with default splits and pool settings (the demo's).
    pub(crate) fn small(out: &Path, n: usize) -> Self {
        SynthArgs {
            n,
            seed: 0,
            out: out.to_path_buf(),
            val: 0.1,
            test: 0.1,
            shard_rows: 1000,
            pool: PoolArgs::default(),
        }
    }

    pub(crate) fn config(&self) -> SynthConfig {
        SynthConfig {
            n: self.n,
            seed: self.seed,
            val_fraction: self.val,
            test_fraction: self.test,
            shard_rows: self.shard_rows,
            image_size: 448,
        }
    }
}

pub async fn dataset(cmd: DatasetCommand) -> Result<ExitCode> {
    match cmd {
        DatasetCommand::Synth { synth, json } => synth_cmd(&synth, json).await,
        DatasetCommand::Info {
            dir,
            check_images,
            json,
        } => info(&dir, check_images, json),
        DatasetCommand::Style { out } => style(&out).await,
        DatasetCommand::Shapes {
            corpus,
            split,
            out,
            json,
            pool,
        } => shapes(&corpus, &split, out, json, &pool).await,
        DatasetCommand::Gallery {
            dir,
            split,
            count,
            out,
        } => gallery(&dir, &split, count, &out),
    }
}

pub(crate) async fn synth_cmd(args: &SynthArgs, json: bool) -> Result<ExitCode> {
    let config = args.config();
    let pool = start_pool(&args.pool).await?;
    let interrupt = crate::interrupt_flag();
    let report = synthesize(pool, &config, &args.out, interrupt, true).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "rows           {} of {} ({} were already there)",
            report.accepted, config.n, report.resumed_rows
        );
        println!("candidates     {}", report.candidates);
        let rejected: Vec<String> = report
            .rejected
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("rejected       {}", rejected.join(" "));
        println!(
            "seconds        {:.1} ({:.2} rows/s)",
            report.seconds, report.rows_per_second
        );
        println!("corpus         {}", args.out.display());
    }
    if report.interrupted {
        eprintln!("interrupted: rerun the same command to resume");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

async fn shapes(
    corpus: &Path,
    split: &str,
    out: Option<PathBuf>,
    json: bool,
    pool: &PoolArgs,
) -> Result<ExitCode> {
    let split: Split = split.parse()?;
    let reader = CorpusReader::open(corpus)?;
    if reader.num_rows(split) == 0 {
        bail!("{}: the corpus has no {split} rows", corpus.display());
    }
    let out = out.unwrap_or_else(|| corpus.join("shapes"));
    let pool = start_pool(pool).await?;
    let interrupt = crate::interrupt_flag();
    let bar = crate::progress_bar(reader.num_rows(split) as u64);
    let report = compute_shapes(pool, &reader, split, &out, &bar, &interrupt).await?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "rows           {} ({} computed, {} already stored)",
            report.rows, report.computed, report.resumed
        );
        println!("no signature   {}", report.failed);
        println!("mean voxels    {:.0}", report.mean_voxels);
        println!(
            "seconds        {:.1} ({:.1} rows/s)",
            report.seconds,
            report.computed as f64 / report.seconds.max(1e-9)
        );
        println!("signatures     {}", out.display());
    }
    if report.interrupted {
        eprintln!("interrupted: rerun the same command to resume");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn info(dir: &Path, check_images: bool, json: bool) -> Result<ExitCode> {
    let reader = CorpusReader::open(dir)?;
    let mut stats = DialectStats::default();
    let mut bad_images = Vec::new();
    for (split, _) in reader.splits() {
        for row in reader.rows(split) {
            let row = row?;
            if check_images {
                if let Err(e) = row.decode_image() {
                    bad_images.push(e.to_string());
                }
            }
            stats.add(&row.cadquery);
        }
    }
    let rows = stats.compare();
    if json {
        let splits: serde_json::Map<String, serde_json::Value> = reader
            .splits()
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), n.into()))
            .collect();
        let out = serde_json::json!({
            "dir": dir.display().to_string(),
            "splits": splits,
            "stats": rows,
            "max_code_length": stats.max_length(),
            "not_dialect": stats.not_dialect,
            "bad_images": bad_images,
        });
        println!("{out}");
    } else {
        println!("corpus {} ({:?})", dir.display(), reader.layout());
        for (split, n) in reader.splits() {
            println!("  {:12} {n}", split.as_str());
        }
        println!("{:32} {:>9} {:>9}", "statistic", "ours", "real");
        for r in &rows {
            let flag = if r.within_5_points {
                ""
            } else {
                "  (off by more than 5 points)"
            };
            println!("{:32} {:>9.1} {:>9.1}{flag}", r.name, r.ours, r.real);
        }
        println!(
            "{:32} {:>9} {:>9}",
            "max code length (chars)",
            stats.max_length(),
            "~4100"
        );
        if stats.not_dialect > 0 {
            println!(
                "outside the dialect: {} of {} programs (not in the counts above)",
                stats.not_dialect, stats.parts
            );
        }
        if check_images {
            println!("undecodable images: {}", bad_images.len());
            for b in bad_images.iter().take(10) {
                println!("  {b}");
            }
        }
    }
    if !bad_images.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn gallery(dir: &Path, split: &str, count: usize, out: &Path) -> Result<ExitCode> {
    let split: Split = split.parse()?;
    let reader = CorpusReader::open(dir)?;
    let side = (count.max(1) as f64).sqrt().ceil() as u32;
    let cell = 224u32;
    let mut sheet =
        image::RgbImage::from_pixel(side * cell, side * cell, image::Rgb([255, 255, 255]));
    let mut placed = 0u32;
    for row in reader.rows(split).take(count) {
        let img = row?.decode_image()?;
        let thumb = image::imageops::thumbnail(&img, cell, cell);
        let (x, y) = ((placed % side) * cell, (placed / side) * cell);
        image::imageops::overlay(&mut sheet, &thumb, i64::from(x), i64::from(y));
        placed += 1;
    }
    if placed == 0 {
        bail!("{}: split {} has no rows", dir.display(), split.as_str());
    }
    sheet
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{placed} images: {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Real reference image of a sample.
fn reference_image(id: &str) -> Result<image::RgbImage> {
    let bytes = reference::image_png(id).with_context(|| format!("no reference image for {id}"))?;
    Ok(image::load_from_memory(bytes)?.to_rgb8())
}

pub(crate) async fn style(out: &Path) -> Result<ExitCode> {
    let pool = start_pool(&PoolArgs::default()).await?;
    let mut rows = Vec::new();
    println!(
        "{:10} {:>9} {:>12} {:>15}",
        "sample", "mask IoU", "median diff", "edge precision"
    );
    for s in reference::samples() {
        let ours = pool.render(&s.cadquery, 448).await?;
        let real = reference_image(&s.deepcad_id)?;
        let c = evaluator::style::compare(&real, &ours);
        println!(
            "{:10} {:>9.4} {:>12.1} {:>15.3}",
            s.deepcad_id, c.mask_iou, c.median_abs_diff, c.edge_precision
        );
        rows.push((s.deepcad_id.clone(), real, ours));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let sheet = out.join("reference_side_by_side.png");
    evaluator::style::side_by_side(&rows).save(&sheet)?;
    println!("real | ours: {}", sheet.display());
    Ok(ExitCode::SUCCESS)
}

/// `rag render CODE.py --out part.png`.
pub async fn render(code: &Path, out: &Path, size: u32) -> Result<ExitCode> {
    let bytes = std::fs::read(code).with_context(|| format!("reading {}", code.display()))?;
    let text =
        String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", code.display()))?;
    let pool = start_pool(&PoolArgs {
        workers: Some(1),
        ..PoolArgs::default()
    })
    .await?;
    let image = pool
        .render(&text, size)
        .await
        .with_context(|| format!("rendering {}", code.display()))?;
    image
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Images per second of `render_part` on one thread over the reference parts.
pub async fn bench_render(repeat: usize) -> Result<ExitCode> {
    let pool = start_pool(&PoolArgs::default()).await?;
    let mut parts = Vec::new();
    for s in reference::samples() {
        let exec = pool.exec(&s.cadquery, Wants::RENDER).await;
        match (exec.mesh, exec.edges) {
            (Some(m), Some(e)) => parts.push((m, e)),
            _ => bail!(
                "reference sample {} did not execute: {}",
                s.deepcad_id,
                exec.message
            ),
        }
    }
    let triangles: usize = parts.iter().map(|(m, _)| m.triangles.len()).sum();
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..repeat.max(1) {
        for (m, e) in &parts {
            std::hint::black_box(render_part(m, e, 448)?);
            n += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for (m, e) in &parts {
        std::hint::black_box(encode_png(render_part(m, e, 448)?)?);
    }
    let with_png = start.elapsed().as_secs_f64() / parts.len() as f64;
    println!("bench render: {n} renders of the 8 reference parts (mean {} triangles), 448x448, one thread", triangles / parts.len());
    println!("  images per second per core   {:.1}", n as f64 / secs);
    println!(
        "  ms per image                 {:.2}",
        1000.0 * secs / n as f64
    );
    println!("  ms per image incl. PNG       {:.2}", 1000.0 * with_png);
    Ok(ExitCode::SUCCESS)
}

/// Valid samples per second of `dataset synth` into a fresh temporary folder.
pub async fn bench_synth(n: usize, pool_args: PoolArgs) -> Result<ExitCode> {
    let dir = tempfile_dir()?;
    let pool = start_pool(&pool_args).await?;
    let config = SynthConfig {
        n,
        seed: 12345,
        val_fraction: 0.0,
        test_fraction: 0.0,
        shard_rows: 1000,
        image_size: 448,
    };
    let report = synthesize(
        pool.clone(),
        &config,
        &dir,
        Arc::new(AtomicBool::new(false)),
        true,
    )
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    let reader_check = report.accepted == n;
    println!(
        "bench synth: {n} valid samples, {} workers on {} cores",
        pool.size(),
        crate::cores()
    );
    println!("  candidates            {}", report.candidates);
    let rejected: Vec<String> = report
        .rejected
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("  rejected              {}", rejected.join(" "));
    println!("  seconds               {:.1}", report.seconds);
    println!("  valid samples per s   {:.2}", report.rows_per_second);
    if !reader_check {
        bail!("synth stopped at {} of {n} rows", report.accepted);
    }
    Ok(ExitCode::SUCCESS)
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cadrag-bench-synth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
