//! `rag bench native`: the native ray-cast renderer against the CadQuery + mesh renderer on
//! a corpus's programs: how often it answers (not unsure), how faithful its pictures are
//! (mask IoU, grey levels, edge precision and recall, as the style check measures them),
//! and how many renders per second each path makes on one core, in one run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use evaluator::style::{compare, side_by_side, StyleComparison};
use image::RgbImage;
use indexer::corpus::{CorpusReader, Split};
use serde::Serialize;

use crate::{progress_bar, start_pool, PoolArgs};

#[derive(Args)]
pub struct BenchNativeArgs {
    /// Corpus folder whose programs are drawn both ways.
    #[arg(long)]
    corpus: PathBuf,
    /// Split to read.
    #[arg(long, default_value = "train")]
    split: String,
    /// Only the first N programs.
    #[arg(long, default_value_t = 2000)]
    limit: usize,
    /// Only these row ids (comma-separated or repeated), e.g. the worst of a previous run;
    /// their programs and both renders are written into --out, their extents printed.
    #[arg(long, value_delimiter = ',')]
    id: Vec<String>,
    /// Image side of the fidelity comparison.
    #[arg(long, default_value_t = 448)]
    size: u32,
    /// Programs of the speed runs (each size, each path).
    #[arg(long, default_value_t = 50)]
    speed_programs: usize,
    /// Folder for the sheet of the worst agreements (native on the right).
    #[arg(long, default_value = "target/bench-native")]
    out: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

/// One program's outcome.
#[derive(Debug, Clone, Serialize)]
struct Item {
    id: String,
    /// "drawn", or why the native path did not draw ("unsure", "not_dialect", ...).
    native: String,
    /// Whether CadQuery built and drew it.
    cadquery: bool,
    mask_iou: Option<f64>,
    median_abs_diff: Option<f64>,
    edge_precision: Option<f64>,
    edge_recall: Option<f64>,
    reason: Option<String>,
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Renders per second of the native path on `codes` at `size`, one thread.
fn native_speed(codes: &[&str], size: u32) -> (f64, usize) {
    let programs: Vec<_> = codes
        .iter()
        .filter_map(|c| dialect::parse(c).ok())
        .filter(|p| raycast::compile(p).is_ok())
        .collect();
    if programs.is_empty() {
        return (f64::NAN, 0);
    }
    let start = Instant::now();
    let mut n = 0;
    while n < programs.len() || start.elapsed().as_secs_f64() < 1.0 {
        let p = &programs[n % programs.len()];
        std::hint::black_box(raycast::render(p, size).ok());
        n += 1;
    }
    (n as f64 / start.elapsed().as_secs_f64(), programs.len())
}

/// `rag bench native`.
pub async fn bench_native(args: BenchNativeArgs) -> Result<ExitCode> {
    let split: Split = args.split.parse()?;
    let reader = CorpusReader::open(&args.corpus)?;
    let mut rows = Vec::new();
    for row in reader.rows(split) {
        if rows.len() >= args.limit {
            break;
        }
        let row = row?;
        if args.id.is_empty() || args.id.contains(&row.deepcad_id) {
            rows.push((row.deepcad_id, row.cadquery));
        }
    }
    let total = rows.len();
    if total == 0 {
        bail!(
            "{}: split {split} has no matching rows",
            args.corpus.display()
        );
    }
    let pool = start_pool(&args.pool).await?;
    let bar = progress_bar(total as u64);
    bar.set_message("native vs CadQuery renders");
    let mut items = Vec::with_capacity(total);
    let mut worst: Vec<(f64, String, RgbImage, RgbImage)> = Vec::new();
    for (id, code) in &rows {
        if !args.id.is_empty() {
            std::fs::create_dir_all(&args.out)?;
            std::fs::write(args.out.join(format!("{id}.py")), code)?;
        }
        let native = raycast::render_code(code, args.size);
        let cq = pool.render(code, args.size).await;
        let mut item = Item {
            id: id.clone(),
            native: match &native {
                Ok(_) => "drawn".into(),
                Err(e) => e.kind().into(),
            },
            cadquery: cq.is_ok(),
            mask_iou: None,
            median_abs_diff: None,
            edge_precision: None,
            edge_recall: None,
            reason: native.as_ref().err().map(|e| e.to_string()),
        };
        if let (Ok(n), Ok(c)) = (&native, &cq) {
            if !args.id.is_empty() {
                c.save(args.out.join(format!("{id}-cadquery.png")))?;
                n.image.save(args.out.join(format!("{id}-native.png")))?;
                let extent = |img: &RgbImage| {
                    let fg: Vec<(u32, u32)> = img
                        .enumerate_pixels()
                        .filter(|(_, _, p)| p.0.iter().any(|c| *c < 250))
                        .map(|(x, y, _)| (x, y))
                        .collect();
                    let xs = fg.iter().map(|p| p.0);
                    let ys = fg.iter().map(|p| p.1);
                    (xs.clone().min(), xs.max(), ys.clone().min(), ys.max())
                };
                eprintln!(
                    "{id}: foreground x/y extent CadQuery {:?}, native {:?}",
                    extent(c),
                    extent(&n.image)
                );
            }
            let StyleComparison {
                mask_iou,
                median_abs_diff,
                edge_precision,
                edge_recall,
            } = compare(c, &n.image);
            item.mask_iou = Some(mask_iou);
            item.median_abs_diff = Some(median_abs_diff);
            item.edge_precision = Some(edge_precision);
            item.edge_recall = Some(edge_recall);
            worst.push((mask_iou, id.clone(), c.clone(), n.image.clone()));
            worst.sort_by(|a, b| a.0.total_cmp(&b.0));
            worst.truncate(12);
        }
        items.push(item);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let codes: Vec<&str> = rows
        .iter()
        .take(args.speed_programs.max(1))
        .map(|(_, c)| c.as_str())
        .collect();
    let (native_128, _) = native_speed(&codes, 128);
    let (native_448, speed_n) = native_speed(&codes, 448);
    let start = Instant::now();
    let mut cq_n = 0;
    for c in &codes {
        if pool.render(c, 448).await.is_ok() {
            cq_n += 1;
        }
    }
    let cq_448 = cq_n as f64 / start.elapsed().as_secs_f64();

    let drawn: Vec<&Item> = items.iter().filter(|i| i.mask_iou.is_some()).collect();
    let both_ok = items.iter().filter(|i| i.cadquery).count();
    let unsure = items
        .iter()
        .filter(|i| i.cadquery && i.native != "drawn")
        .count();
    let col =
        |f: fn(&Item) -> Option<f64>| -> Vec<f64> { drawn.iter().filter_map(|i| f(i)).collect() };
    let mut mask = col(|i| i.mask_iou);
    let mut diff = col(|i| i.median_abs_diff);
    let mut prec = col(|i| i.edge_precision);
    let mut rec = col(|i| i.edge_recall);
    let at_99 = mask.iter().filter(|m| **m >= 0.99).count();
    let share_99 = at_99 as f64 / drawn.len().max(1) as f64;
    let summary = serde_json::json!({
        "corpus": args.corpus.display().to_string(),
        "programs": total,
        "cadquery_built": both_ok,
        "native_drawn": drawn.len(),
        "native_unsure_of_built": unsure,
        "size": args.size,
        "mask_iou_at_least_0_99": share_99,
        "mask_iou_p05": quantile(&mut mask, 0.05),
        "mask_iou_median": quantile(&mut mask, 0.5),
        "grey_median_abs_diff_median": quantile(&mut diff, 0.5),
        "edge_precision_median": quantile(&mut prec, 0.5),
        "edge_precision_p05": quantile(&mut prec, 0.05),
        "edge_recall_median": quantile(&mut rec, 0.5),
        "speed_programs": speed_n,
        "native_renders_per_s_128": native_128,
        "native_renders_per_s_448": native_448,
        "cadquery_renders_per_s_448": cq_448,
        "speedup_448": native_448 / cq_448,
    });
    std::fs::create_dir_all(&args.out)?;
    let sheet_rows: Vec<(String, RgbImage, RgbImage)> =
        worst.into_iter().map(|(_, id, c, n)| (id, c, n)).collect();
    let sheet = args.out.join("worst.png");
    if !sheet_rows.is_empty() {
        side_by_side(&sheet_rows).save(&sheet)?;
    }
    let items_path = args.out.join("items.jsonl");
    let mut lines = String::new();
    for i in &items {
        lines.push_str(&serde_json::to_string(i)?);
        lines.push('\n');
    }
    std::fs::write(&items_path, lines)?;
    if args.json {
        println!("{summary}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "bench native: {} programs of {} ({split}), {} px",
        total,
        args.corpus.display(),
        args.size
    );
    println!("  CadQuery built              {both_ok}");
    println!(
        "  native drew                 {} ({} of the built left to CadQuery as unsure)",
        drawn.len(),
        unsure
    );
    println!(
        "  mask IoU >= 0.99            {:.1}% of drawn (p05 {:.4}, median {:.4})",
        100.0 * share_99,
        summary["mask_iou_p05"].as_f64().unwrap_or(f64::NAN),
        summary["mask_iou_median"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  grey |diff| median          {:.1} levels",
        summary["grey_median_abs_diff_median"]
            .as_f64()
            .unwrap_or(f64::NAN)
    );
    println!(
        "  edge precision              median {:.3}, p05 {:.3}; recall median {:.3}",
        summary["edge_precision_median"]
            .as_f64()
            .unwrap_or(f64::NAN),
        summary["edge_precision_p05"].as_f64().unwrap_or(f64::NAN),
        summary["edge_recall_median"].as_f64().unwrap_or(f64::NAN)
    );
    println!("  renders per second, one core ({speed_n} programs):");
    println!("    native   128 px           {native_128:.0}");
    println!("    native   448 px           {native_448:.0}");
    println!("    CadQuery 448 px           {cq_448:.1} (execute + tessellate + draw)");
    println!("    ratio at 448 px           {:.0}x", native_448 / cq_448);
    println!("  worst agreements: {}", sheet.display());
    println!("  per program: {}", items_path.display());
    Ok(ExitCode::SUCCESS)
}
