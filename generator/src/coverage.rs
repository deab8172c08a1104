//! Coverage without a model (`rag bench coverage`): per query, the true IoUs of the top-1
//! neighbour, of the top-k neighbour whose render matches the query best, and of the best of
//! the top k (an oracle over retrieval). The gap from top-1 to the oracle is ranking, the gap
//! from the oracle to 1 is coverage.

use std::sync::Arc;

use evaluator::score::score_pair;
use evaluator::{CodeText, ItemScore, PairInput, Protocols, Status, WorkerPool};
use image::RgbImage;
use indicatif::ProgressBar;
use retriever::Retriever;
use serde::Serialize;

use crate::select::{RenderFit, RenderJudge};
use crate::GeneratorError;

/// One query: its id, the ground truth's code and the image.
pub type CoverageQuery = (String, String, RgbImage);

/// A volume and a shell IoU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ious {
    /// Volume IoU.
    pub volume: f64,
    /// Shell IoU.
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
    /// The index folder.
    pub index: String,
    /// Its vectors.
    pub vectors: usize,
    /// Neighbours per query.
    pub k: usize,
    /// Queries whose ground truth built a solid (the others are left out and listed).
    pub queries: usize,
    /// Mean top-1 IoUs.
    pub top1: Ious,
    /// Mean IoUs of the best render match.
    pub render_match: Ious,
    /// Mean oracle IoUs.
    pub oracle: Ious,
    /// Mean best mask IoU.
    pub best_mask_iou: f64,
    /// Queries left out, with why.
    pub skipped: Vec<String>,
}

impl CoverageSummary {
    /// Means over `per_query`, for an index of `vectors` rows searched `k` deep.
    pub fn of(index: String, vectors: usize, k: usize, per_query: &[QueryCoverage]) -> Self {
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

/// Every query's top `k` neighbours in `retriever` judged against the image and scored
/// against the ground truth, summarised; `bar` advances once per query.
pub async fn index_coverage(
    retriever: &Retriever,
    pool: &Arc<WorkerPool>,
    queries: &[CoverageQuery],
    k: usize,
    bar: &ProgressBar,
) -> Result<CoverageSummary, GeneratorError> {
    let mut per_query = Vec::with_capacity(queries.len());
    let mut skipped = Vec::new();
    for (id, gt, image) in queries {
        let vector = retriever.encoder().encode(image)?;
        let set = retriever.search_vector(&vector, k, &[])?;
        let codes: Vec<String> = set.neighbours.iter().map(|n| n.code.clone()).collect();
        let mut judge = RenderJudge::new(pool.clone(), retriever.encoder(), image, vector.clone());
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
    let mut s = CoverageSummary::of(
        retriever.dir().display().to_string(),
        retriever.store().len(),
        k,
        &per_query,
    );
    s.skipped = skipped;
    Ok(s)
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
