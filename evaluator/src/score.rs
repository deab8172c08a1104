//! Scoring predictions against ground truth: VSR and the shell / volume IoU protocols.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::codeset::{CodeSet, CodeText};
use crate::protocol::{PairExecution, Status};
use crate::shell::{shell_iou, NormalisedMesh, PITCH};
use crate::worker::{PatternSearch, Wants, WorkerPool};

/// Which IoU protocols to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    /// MecAgent's surface-voxel IoU.
    pub shell: bool,
    /// CAD-Coder's exact boolean IoU.
    pub volume: bool,
}

impl Protocols {
    /// Both protocols.
    pub const ALL: Protocols = Protocols {
        shell: true,
        volume: true,
    };
}

/// One scored id, as written to `--per-item` files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemScore {
    pub id: String,
    /// The prediction's status.
    pub status: Status,
    pub message: String,
    pub shell_iou: Option<f64>,
    pub volume_iou: Option<f64>,
    pub seconds: f64,
    /// False when the ground truth itself failed; such items are left out of IoU means.
    #[serde(default = "yes")]
    pub gt_ok: bool,
    /// OCC booleans the volume IoU ran (for `rag bench score`; not written to files).
    #[serde(skip)]
    pub volume_booleans: u32,
    /// Sketches in the ground-truth program (`cq.Workplane(` definitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt_sketches: Option<usize>,
    /// Disjoint solids the ground truth builds (none when it did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gt_solids: Option<u32>,
}

/// Sketches of a GenCAD-dialect program: each one opens a workplane.
pub fn sketch_count(code: &str) -> usize {
    code.matches("cq.Workplane(").count()
}

fn yes() -> bool {
    true
}

/// One (id, ground truth, prediction) to score.
#[derive(Debug, Clone)]
pub struct PairInput {
    pub id: String,
    pub gt: CodeText,
    pub pred: Option<CodeText>,
}

fn not_utf8(valid_up_to: usize) -> String {
    format!("code is not valid UTF-8 (first bad byte at offset {valid_up_to})")
}

/// Score one pair in the pool; the shell IoU is computed here, the volume IoU in the worker.
pub async fn score_pair(pool: &WorkerPool, input: PairInput, protocols: Protocols) -> ItemScore {
    score_pair_with(pool, input, protocols, PatternSearch::Shared).await
}

/// `score_pair`, choosing how the volume IoU searches the sign patterns.
pub async fn score_pair_with(
    pool: &WorkerPool,
    input: PairInput,
    protocols: Protocols,
    search: PatternSearch,
) -> ItemScore {
    let start = Instant::now();
    let mut item = ItemScore {
        id: input.id.clone(),
        status: Status::Missing,
        message: String::new(),
        shell_iou: None,
        volume_iou: None,
        seconds: 0.0,
        gt_ok: true,
        volume_booleans: 0,
        gt_sketches: None,
        gt_solids: None,
    };
    let gt = match input.gt {
        CodeText::Utf8(s) => {
            item.gt_sketches = Some(sketch_count(&s));
            s
        }
        CodeText::NotUtf8 { valid_up_to } => {
            item.gt_ok = false;
            item.message = format!("ground truth: {}", not_utf8(valid_up_to));
            return item;
        }
    };
    let pred = match input.pred {
        None => {
            item.message = "no prediction for this id".into();
            return item;
        }
        Some(CodeText::NotUtf8 { valid_up_to }) => {
            item.status = Status::Syntax;
            item.message = not_utf8(valid_up_to);
            return item;
        }
        Some(CodeText::Utf8(s)) => s,
    };
    let wants = Wants {
        mesh: protocols.shell,
        edges: false,
        volume: protocols.volume,
        patterns: search,
    };
    let pair = pool.pair(&gt, &pred, wants).await;
    fill_from_pair(&mut item, pair, protocols).await;
    item.seconds = start.elapsed().as_secs_f64();
    item
}

async fn fill_from_pair(item: &mut ItemScore, pair: PairExecution, protocols: Protocols) {
    item.status = pair.pred.status;
    item.message = pair.pred.message.clone();
    item.volume_booleans = pair.volume_booleans;
    item.gt_solids = pair.gt.props.as_ref().map(|p| p.solid_count);
    let gt_usable = pair.gt.is_valid() && pair.gt.props.as_ref().is_some_and(|p| p.r_g.is_some());
    if !gt_usable {
        item.gt_ok = false;
        let why = if pair.gt.is_valid() {
            "has no positive volume".to_string()
        } else {
            format!("is {}: {}", pair.gt.status.as_str(), pair.gt.message)
        };
        item.message = format!("ground truth {why}; {}", item.message);
        return;
    }
    if !pair.pred.is_valid() {
        return;
    }
    let mut notes = Vec::new();
    if protocols.shell {
        let gt = NormalisedMesh::new(
            pair.gt.mesh.as_ref().unwrap_or(&Default::default()),
            pair.gt.props.as_ref().expect("usable gt has props"),
        );
        let pred = match (&pair.pred.mesh, &pair.pred.props) {
            (Some(m), Some(p)) => NormalisedMesh::new(m, p),
            _ => Err(crate::shell::ShellError::NoMesh),
        };
        item.shell_iou = Some(match (gt, pred) {
            (Ok(g), Ok(p)) => tokio::task::spawn_blocking(move || shell_iou(&g, &p, PITCH))
                .await
                .expect("shell IoU does not panic"),
            (Err(e), _) | (_, Err(e)) => {
                notes.push(format!("shell IoU 0: {e}"));
                0.0
            }
        });
    }
    if protocols.volume {
        item.volume_iou = Some(pair.volume_iou.unwrap_or(0.0));
        if pair.volume_iou.is_none() || !pair.volume_message.is_empty() {
            notes.push(format!("volume IoU: {}", pair.volume_message));
        }
    }
    if !notes.is_empty() {
        item.message = notes.join("; ");
    }
}

/// Aggregates of a scoring run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub n: usize,
    pub valid: usize,
    pub vsr: f64,
    pub shell_iou_mean_valid: Option<f64>,
    pub shell_iou_mean_all: Option<f64>,
    pub volume_iou_mean_valid: Option<f64>,
    pub volume_iou_mean_all: Option<f64>,
    pub seconds: f64,
    pub missing: Vec<String>,
    pub gt_invalid: Vec<String>,
    pub status_counts: Vec<(Status, usize)>,
}

fn means(
    items: &[ItemScore],
    pick: impl Fn(&ItemScore) -> Option<f64>,
) -> (Option<f64>, Option<f64>) {
    let scored: Vec<&ItemScore> = items.iter().filter(|i| i.gt_ok).collect();
    let valid: Vec<f64> = scored
        .iter()
        .filter(|i| i.status == Status::Ok)
        .map(|i| pick(i).unwrap_or(0.0))
        .collect();
    // fold from +0.0: an empty f64 sum is -0.0, which would print as "-0.000".
    let total = valid.iter().fold(0.0, |a, b| a + b);
    let mean_valid = (!valid.is_empty()).then(|| total / valid.len() as f64);
    let mean_all = (!scored.is_empty()).then(|| total / scored.len() as f64);
    (mean_valid, mean_all)
}

impl Summary {
    /// Aggregate item scores: VSR over all ids; IoU means over ids whose ground truth ran,
    /// the published one over valid predictions only, the honest one counting invalid as 0.
    pub fn of(items: &[ItemScore], seconds: f64) -> Self {
        let n = items.len();
        let valid = items.iter().filter(|i| i.status == Status::Ok).count();
        let (shell_iou_mean_valid, shell_iou_mean_all) = means(items, |i| i.shell_iou);
        let (volume_iou_mean_valid, volume_iou_mean_all) = means(items, |i| i.volume_iou);
        let status_counts = Status::ALL
            .iter()
            .map(|s| (*s, items.iter().filter(|i| i.status == *s).count()))
            .filter(|(_, c)| *c > 0)
            .collect();
        Summary {
            n,
            valid,
            vsr: if n == 0 { 0.0 } else { valid as f64 / n as f64 },
            shell_iou_mean_valid,
            shell_iou_mean_all,
            volume_iou_mean_valid,
            volume_iou_mean_all,
            seconds,
            missing: items
                .iter()
                .filter(|i| i.status == Status::Missing)
                .map(|i| i.id.clone())
                .collect(),
            gt_invalid: items
                .iter()
                .filter(|i| !i.gt_ok)
                .map(|i| i.id.clone())
                .collect(),
            status_counts,
        }
    }

    /// The `--json` object; a protocol's fields appear only when it was computed.
    pub fn to_json(&self, protocols: Protocols) -> serde_json::Value {
        let mut v = serde_json::json!({
            "n": self.n,
            "valid": self.valid,
            "vsr": self.vsr,
            "seconds": self.seconds,
            "missing": self.missing,
            "gt_invalid": self.gt_invalid,
            "status_counts": self.status_counts.iter().map(|(s, c)| (s.as_str().to_string(), serde_json::json!(c))).collect::<serde_json::Map<_, _>>(),
        });
        if protocols.shell {
            v["shell_iou_mean_valid"] = serde_json::json!(self.shell_iou_mean_valid);
            v["shell_iou_mean_all"] = serde_json::json!(self.shell_iou_mean_all);
        }
        if protocols.volume {
            v["volume_iou_mean_valid"] = serde_json::json!(self.volume_iou_mean_valid);
            v["volume_iou_mean_all"] = serde_json::json!(self.volume_iou_mean_all);
        }
        v
    }
}

/// Means of one group of items in a [`Breakdown`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupStats {
    /// What the group holds, e.g. "2 sketches" or "multi-body".
    pub group: String,
    pub n: usize,
    pub vsr: f64,
    /// Mean over the group's scored items, an invalid prediction counting as 0.
    pub volume_iou_mean_all: Option<f64>,
    pub shell_iou_mean_all: Option<f64>,
}

/// A run's figures by the ground truth's make-up: sketch count (1, 2, 3, 4+) and single vs
/// multi-body, because real parts fail the system by how many features they have.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Breakdown {
    pub by_sketch_count: Vec<GroupStats>,
    pub by_bodies: Vec<GroupStats>,
}

impl Breakdown {
    /// Group items; a group with no item is left out, items whose ground truth did not say
    /// go to "unknown".
    pub fn of(items: &[ItemScore]) -> Self {
        let sketch_group = |i: &ItemScore| match i.gt_sketches {
            Some(0) | None => "unknown".to_string(),
            Some(1) => "1 sketch".to_string(),
            Some(k @ 2..=3) => format!("{k} sketches"),
            Some(_) => "4+ sketches".to_string(),
        };
        let body_group = |i: &ItemScore| match i.gt_solids {
            Some(1) => "single body".to_string(),
            Some(k) if k > 1 => "multi-body".to_string(),
            _ => "unknown".to_string(),
        };
        Breakdown {
            by_sketch_count: group_stats(
                items,
                sketch_group,
                &[
                    "1 sketch",
                    "2 sketches",
                    "3 sketches",
                    "4+ sketches",
                    "unknown",
                ],
            ),
            by_bodies: group_stats(items, body_group, &["single body", "multi-body", "unknown"]),
        }
    }
}

fn group_stats(
    items: &[ItemScore],
    key: impl Fn(&ItemScore) -> String,
    order: &[&str],
) -> Vec<GroupStats> {
    order
        .iter()
        .filter_map(|g| {
            let members: Vec<ItemScore> = items.iter().filter(|i| key(i) == *g).cloned().collect();
            if members.is_empty() {
                return None;
            }
            let s = Summary::of(&members, 0.0);
            Some(GroupStats {
                group: g.to_string(),
                n: s.n,
                vsr: s.vsr,
                volume_iou_mean_all: s.volume_iou_mean_all,
                shell_iou_mean_all: s.shell_iou_mean_all,
            })
        })
        .collect()
}

/// Failures of a scoring run itself (inputs are checked before this).
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The result of `score_sets`: every finished item, in ground-truth order.
#[derive(Debug)]
pub struct ScoreRun {
    pub items: Vec<ItemScore>,
    /// Items taken from an earlier run's `--per-item` file.
    pub resumed: usize,
    /// Ctrl-C stopped the run; `items` holds what finished.
    pub interrupted: bool,
}

/// Rows of an earlier `--per-item` file; a torn last line (a killed run) is dropped.
fn read_done(path: &Path) -> Result<Vec<ItemScore>, ScoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ScoreError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<ItemScore>(l).ok())
        .collect())
}

/// Score every ground-truth id against `pred`, in order, on the pool. With `per_item`, each
/// row is written (and flushed) as soon as it and all before it are done; with `resume`,
/// ids already in that file are not scored again. Ctrl-C ends the run cleanly.
pub async fn score_sets(
    pool: Arc<WorkerPool>,
    gt: &CodeSet,
    pred: &CodeSet,
    protocols: Protocols,
    per_item: Option<&Path>,
    resume: bool,
    progress: &indicatif::ProgressBar,
) -> Result<ScoreRun, ScoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScoreError::Io { path, source }
    };
    let mut done: HashMap<String, ItemScore> = HashMap::new();
    let mut writer = None;
    if let Some(path) = per_item {
        let previous = if resume { read_done(path)? } else { Vec::new() };
        // Rewrite what is kept (drops a torn line), then append new rows to it.
        let mut file = std::fs::File::create(path).map_err(io(path))?;
        for row in &previous {
            writeln!(
                file,
                "{}",
                serde_json::to_string(row).expect("row serialises")
            )
            .map_err(io(path))?;
        }
        file.flush().map_err(io(path))?;
        done.extend(
            previous
                .into_iter()
                .filter(|r| gt.get(&r.id).is_some())
                .map(|r| (r.id.clone(), r)),
        );
        writer = Some(std::io::BufWriter::new(file));
    }
    progress.set_length(gt.len() as u64);
    let mut handles = Vec::with_capacity(gt.len());
    for (id, code) in gt.iter() {
        if done.contains_key(id) {
            handles.push(None);
            continue;
        }
        let input = PairInput {
            id: id.to_string(),
            gt: code.clone(),
            pred: pred.get(id).cloned(),
        };
        let pool = pool.clone();
        handles.push(Some(tokio::spawn(async move {
            score_pair(&pool, input, protocols).await
        })));
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut items = Vec::with_capacity(gt.len());
    let mut resumed = 0;
    let mut interrupted = false;
    for ((id, _), handle) in gt.iter().zip(handles.iter_mut()) {
        let item = match handle {
            None => {
                resumed += 1;
                done.remove(id).expect("resumed ids are in done")
            }
            Some(h) => {
                let row = tokio::select! {
                    r = h => r.expect("scoring task does not panic"),
                    _ = &mut ctrl_c => { interrupted = true; break; }
                };
                if let (Some(w), Some(path)) = (writer.as_mut(), per_item) {
                    writeln!(
                        w,
                        "{}",
                        serde_json::to_string(&row).expect("row serialises")
                    )
                    .map_err(io(path))?;
                    w.flush().map_err(io(path))?;
                }
                row
            }
        };
        items.push(item);
        progress.inc(1);
    }
    for h in handles.into_iter().flatten() {
        h.abort();
    }
    Ok(ScoreRun {
        items,
        resumed,
        interrupted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, status: Status, iou: Option<f64>, gt_ok: bool) -> ItemScore {
        ItemScore {
            id: id.into(),
            status,
            message: String::new(),
            shell_iou: iou,
            volume_iou: iou,
            seconds: 0.0,
            gt_ok,
            volume_booleans: 0,
            gt_sketches: None,
            gt_solids: None,
        }
    }

    #[test]
    fn summary_counts_invalid_as_zero_only_in_the_all_mean() {
        let items = vec![
            item("a", Status::Ok, Some(0.8), true),
            item("b", Status::Ok, Some(0.4), true),
            item("c", Status::Syntax, None, true),
            item("d", Status::Missing, None, true),
            item("e", Status::Ok, Some(0.9), false),
        ];
        let s = Summary::of(&items, 1.0);
        assert_eq!(s.n, 5);
        assert_eq!(s.valid, 3);
        assert!((s.vsr - 0.6).abs() < 1e-12);
        assert!((s.shell_iou_mean_valid.unwrap() - 0.6).abs() < 1e-12);
        assert!((s.shell_iou_mean_all.unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(s.missing, vec!["d".to_string()]);
        assert_eq!(s.gt_invalid, vec!["e".to_string()]);
        let json = s.to_json(Protocols {
            shell: true,
            volume: false,
        });
        assert!(json.get("volume_iou_mean_valid").is_none());
        assert_eq!(json["status_counts"]["ok"], 3);
    }

    #[test]
    fn torn_last_row_is_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rows.jsonl");
        let good = serde_json::to_string(&item("a", Status::Ok, Some(0.5), true)).unwrap();
        std::fs::write(&p, format!("{good}\n{{\"id\": \"b\", \"sta")).unwrap();
        let rows = read_done(&p).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, "a");
    }

    #[test]
    fn breakdown_groups_by_sketches_and_bodies() {
        let mut items = vec![
            item("a", Status::Ok, Some(0.8), true),
            item("b", Status::Ok, Some(0.4), true),
            item("c", Status::Syntax, None, true),
            item("d", Status::Ok, Some(0.6), true),
            item("e", Status::Ok, Some(0.2), true),
        ];
        for (i, (k, bodies)) in [(1, 1), (2, 1), (2, 2), (5, 3), (1, 1)].iter().enumerate() {
            items[i].gt_sketches = Some(*k);
            items[i].gt_solids = Some(*bodies);
        }
        let b = Breakdown::of(&items);
        let groups: Vec<(&str, usize)> = b
            .by_sketch_count
            .iter()
            .map(|g| (g.group.as_str(), g.n))
            .collect();
        assert_eq!(
            groups,
            [("1 sketch", 2), ("2 sketches", 2), ("4+ sketches", 1)]
        );
        let one = &b.by_sketch_count[0];
        assert!((one.volume_iou_mean_all.unwrap() - 0.5).abs() < 1e-12);
        // The failed prediction counts as 0 in its group's mean and VSR.
        let two = &b.by_sketch_count[1];
        assert_eq!(two.vsr, 0.5);
        assert!((two.volume_iou_mean_all.unwrap() - 0.2).abs() < 1e-12);
        let bodies: Vec<(&str, usize)> = b
            .by_bodies
            .iter()
            .map(|g| (g.group.as_str(), g.n))
            .collect();
        assert_eq!(bodies, [("single body", 3), ("multi-body", 2)]);
        assert!((b.by_bodies[1].volume_iou_mean_all.unwrap() - 0.3).abs() < 1e-12);
    }

    #[test]
    fn sketch_count_counts_workplanes() {
        let code = "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(o, x, n))\nwp_sketch1 = cq.Workplane(cq.Plane(o, x, n))\n";
        assert_eq!(sketch_count(code), 2);
        assert_eq!(sketch_count("import cadquery as cq\n"), 0);
    }
}
