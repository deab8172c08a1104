//! `rag bench coverage`: how close a corpus comes to the query parts, with no model. Per query,
//! the true IoUs of the top-1 neighbour, of the top-k neighbour whose render matches the query
//! best, and of the best of the top k (an oracle over retrieval), for one or more indices: the
//! gap from top-1 to the oracle is ranking, the gap from the oracle to 1 is coverage.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use evaluator::score::score_pair;
use evaluator::{CodeText, ItemScore, PairInput, Protocols, Status};
use generator::select::{RenderFit, RenderJudge};
use indexer::corpus::{CorpusReader, Split};
use indexer::encoder::to_rgb_on_white;
use serde::Serialize;

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

/// A volume and a shell IoU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ious {
    pub volume: f64,
    pub shell: f64,
}

/// One query's figures over its top-k neighbours (a neighbour that builds nothing scores 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueryCoverage {
    /// The first neighbour: retrieval-only's answer.
    pub top1: Ious,
    /// The neighbour whose render matches the query best (the selection's score).
    pub render_match: Ious,
    /// The best volume IoU and the best shell IoU among the k (each on its own).
    pub oracle: Ious,
    /// The best foreground-mask IoU between the query and a neighbour's render.
    pub best_mask_iou: f64,
}

impl QueryCoverage {
    /// From the neighbours in rank order: each one's render fit (none when it did not render)
    /// and its score against the ground truth. None for no neighbour.
    pub fn of(neighbours: &[(Option<RenderFit>, ItemScore)]) -> Option<Self> {
        let ious = |i: &ItemScore| {
            if i.status == Status::Ok {
                Ious {
                    volume: i.volume_iou.unwrap_or(0.0),
                    shell: i.shell_iou.unwrap_or(0.0),
                }
            } else {
                Ious::default()
            }
        };
        let first = neighbours.first()?;
        let matched = neighbours
            .iter()
            .filter_map(|(f, i)| f.map(|f| (f.score, i)))
            .fold(None::<(f64, &ItemScore)>, |best, (s, i)| match best {
                Some((b, _)) if b >= s => best,
                _ => Some((s, i)),
            })
            .map_or(&first.1, |(_, i)| i);
        let all: Vec<Ious> = neighbours.iter().map(|(_, i)| ious(i)).collect();
        Some(QueryCoverage {
            top1: ious(&first.1),
            render_match: ious(matched),
            oracle: Ious {
                volume: all.iter().map(|x| x.volume).fold(0.0, f64::max),
                shell: all.iter().map(|x| x.shell).fold(0.0, f64::max),
            },
            best_mask_iou: neighbours
                .iter()
                .filter_map(|(f, _)| f.map(|f| f.mask_iou))
                .fold(0.0, f64::max),
        })
    }
}

/// Means of [`QueryCoverage`] over the queries of one index.
#[derive(Debug, Clone, Serialize)]
pub struct CoverageSummary {
    pub index: String,
    pub vectors: usize,
    pub k: usize,
    /// Queries whose ground truth built a solid (the others are left out and listed).
    pub queries: usize,
    pub top1: Ious,
    pub render_match: Ious,
    pub oracle: Ious,
    pub best_mask_iou: f64,
    pub skipped: Vec<String>,
}

impl CoverageSummary {
    fn of(index: String, vectors: usize, k: usize, per_query: &[QueryCoverage]) -> Self {
        let n = per_query.len().max(1) as f64;
        let mean = |f: &dyn Fn(&QueryCoverage) -> Ious| Ious {
            volume: per_query.iter().map(|q| f(q).volume).sum::<f64>() / n,
            shell: per_query.iter().map(|q| f(q).shell).sum::<f64>() / n,
        };
        CoverageSummary {
            index,
            vectors,
            k,
            queries: per_query.len(),
            top1: mean(&|q| q.top1),
            render_match: mean(&|q| q.render_match),
            oracle: mean(&|q| q.oracle),
            best_mask_iou: per_query.iter().map(|q| q.best_mask_iou).sum::<f64>() / n,
            skipped: Vec::new(),
        }
    }
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
        let mut per_query = Vec::with_capacity(total);
        let mut skipped = Vec::new();
        for (id, gt, image) in &queries {
            let vector = retriever.encoder().encode(image)?;
            let set = retriever.search_vector(&vector, args.k, &[])?;
            let codes: Vec<String> = set.neighbours.iter().map(|n| n.code.clone()).collect();
            let mut judge =
                RenderJudge::new(pool.clone(), retriever.encoder(), image, vector.clone());
            let fits = judge.judge(&codes).await;
            let handles: Vec<_> = codes
                .iter()
                .enumerate()
                .map(|(j, code)| {
                    let pool = pool.clone();
                    let input = PairInput {
                        id: format!("{id}/{j}"),
                        gt: CodeText::Utf8(gt.clone()),
                        pred: Some(CodeText::Utf8(code.clone())),
                    };
                    tokio::spawn(async move { score_pair(&pool, input, Protocols::ALL).await })
                })
                .collect();
            let mut scored = Vec::with_capacity(codes.len());
            for (h, (_, _, fit)) in handles.into_iter().zip(fits) {
                scored.push((fit, h.await?));
            }
            if scored.iter().any(|(_, i)| !i.gt_ok) {
                skipped.push(format!("{id}: the ground truth does not build a solid"));
            } else if let Some(q) = QueryCoverage::of(&scored) {
                per_query.push(q);
            } else {
                skipped.push(format!("{id}: no neighbour"));
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut s = CoverageSummary::of(
            dir.display().to_string(),
            retriever.store().len(),
            args.k,
            &per_query,
        );
        s.skipped = skipped;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(status: Status, volume: f64, shell: f64) -> ItemScore {
        ItemScore {
            id: "q".into(),
            status,
            message: String::new(),
            shell_iou: (status == Status::Ok).then_some(shell),
            volume_iou: (status == Status::Ok).then_some(volume),
            seconds: 0.0,
            gt_ok: true,
            volume_booleans: 0,
            gt_sketches: None,
            gt_solids: None,
        }
    }

    fn fit(score: f64, mask_iou: f64) -> Option<RenderFit> {
        Some(RenderFit {
            encoder_cosine: 0.0,
            mask_iou,
            edge_f1: 0.0,
            score,
        })
    }

    #[test]
    fn top1_render_match_and_oracle_are_told_apart() {
        let q = QueryCoverage::of(&[
            (fit(0.5, 0.6), scored(Status::Ok, 0.4, 0.1)),
            (None, scored(Status::Runtime, 0.0, 0.0)),
            (fit(0.9, 0.7), scored(Status::Ok, 0.6, 0.05)),
            (fit(0.2, 0.3), scored(Status::Ok, 0.3, 0.5)),
        ])
        .unwrap();
        assert_eq!(
            q.top1,
            Ious {
                volume: 0.4,
                shell: 0.1
            }
        );
        assert_eq!(
            q.render_match,
            Ious {
                volume: 0.6,
                shell: 0.05
            }
        );
        // The oracle takes each protocol's best on its own.
        assert_eq!(
            q.oracle,
            Ious {
                volume: 0.6,
                shell: 0.5
            }
        );
        assert_eq!(q.best_mask_iou, 0.7);
    }

    #[test]
    fn a_failed_top_neighbour_scores_zero_and_no_render_falls_back_to_it() {
        let q = QueryCoverage::of(&[
            (None, scored(Status::Runtime, 0.0, 0.0)),
            (None, scored(Status::Ok, 0.8, 0.4)),
        ])
        .unwrap();
        assert_eq!(q.top1, Ious::default());
        assert_eq!(q.render_match, Ious::default());
        assert_eq!(
            q.oracle,
            Ious {
                volume: 0.8,
                shell: 0.4
            }
        );
        assert!(QueryCoverage::of(&[]).is_none());
    }

    #[test]
    fn summary_means_over_queries() {
        let a = QueryCoverage {
            top1: Ious {
                volume: 0.2,
                shell: 0.1,
            },
            oracle: Ious {
                volume: 0.6,
                shell: 0.3,
            },
            ..Default::default()
        };
        let b = QueryCoverage {
            top1: Ious {
                volume: 0.4,
                shell: 0.3,
            },
            oracle: Ious {
                volume: 1.0,
                shell: 0.5,
            },
            ..Default::default()
        };
        let s = CoverageSummary::of("i".into(), 10, 5, &[a, b]);
        assert_eq!(s.queries, 2);
        assert!((s.top1.volume - 0.3).abs() < 1e-12 && (s.oracle.shell - 0.4).abs() < 1e-12);
    }
}
