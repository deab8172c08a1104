//! `rag bench coverage`: how close a corpus comes to the query parts, with no model
//! (`generator::coverage`), for one or more indices.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use generator::coverage::{index_coverage, Ious};
use indexer::corpus::{CorpusReader, Split};
use indexer::encoder::to_rgb_on_white;

use crate::retrieval::load_retriever;
use crate::{progress_bar, start_pool, PoolArgs};

#[derive(Args)]
pub struct BenchCoverageArgs {
    /// Corpus folder holding the queries and their ground truth (e.g. the real dev set).
    #[arg(long)]
    corpus: PathBuf,
    /// Split whose rows are the queries.
    #[arg(long, default_value = "test")]
    split: String,
    /// Index folders to compare, comma-separated or repeated (e.g. one per corpus size).
    #[arg(long, value_delimiter = ',', required = true)]
    index: Vec<PathBuf>,
    /// Neighbours per query that the render match and the oracle choose among.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Only the first N queries.
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

/// `rag bench coverage`.
pub async fn bench_coverage(args: BenchCoverageArgs) -> Result<ExitCode> {
    let split: Split = args.split.parse()?;
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    let reader = CorpusReader::open(&args.corpus)?;
    let available = reader.num_rows(split);
    let total = args.limit.map_or(available, |l| l.min(available));
    if total == 0 {
        bail!("{}: split {split} has no rows", args.corpus.display());
    }
    let mut queries = Vec::with_capacity(total);
    for row in reader.rows(split).take(total) {
        let row = row?;
        let image = image::load_from_memory(&row.image_png)
            .map(|i| to_rgb_on_white(&i))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} (id {}): image does not decode: {e}",
                    row.origin,
                    row.deepcad_id
                )
            })?;
        queries.push((row.deepcad_id, row.cadquery, image));
    }
    let pool = start_pool(&args.pool).await?;
    let mut summaries = Vec::with_capacity(args.index.len());
    for dir in &args.index {
        let retriever = load_retriever(dir, None)?;
        let bar = progress_bar(total as u64);
        bar.set_message(format!("{}: top {} per query", dir.display(), args.k));
        let s = index_coverage(&retriever, &pool, &queries, args.k, &bar).await?;
        bar.finish_and_clear();
        summaries.push(s);
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "corpus": args.corpus.display().to_string(),
                "split": split.as_str(),
                "indices": summaries,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "bench coverage: {} {split} ({total} queries), top {} neighbours; volume / shell IoU, a neighbour that builds nothing as 0",
        args.corpus.display(),
        args.k
    );
    println!(
        "{:<32} {:>8} {:>7} {:>15} {:>15} {:>15} {:>9}",
        "index", "vectors", "queries", "top-1", "render match", "oracle", "best mask"
    );
    let pair = |x: Ious| format!("{:.3} / {:.3}", x.volume, x.shell);
    for s in &summaries {
        println!(
            "{:<32} {:>8} {:>7} {:>15} {:>15} {:>15} {:>9.3}",
            s.index,
            s.vectors,
            s.queries,
            pair(s.top1),
            pair(s.render_match),
            pair(s.oracle),
            s.best_mask_iou
        );
        for why in &s.skipped {
            println!("  left out {why}");
        }
    }
    println!(
        "top-1: retrieval's answer; render match: the best render match among the top {k}; oracle: the best true IoU among the top {k} (what a perfect choice would reach); best mask: the closest silhouette among them",
        k = args.k
    );
    Ok(ExitCode::SUCCESS)
}
