//! `rag eval --report DIR`: gathers what the evaluation already computed, renders the
//! gallery's programs in the sandbox, and hands it all to `evaluator::report`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use evaluator::render::encode_png;
use evaluator::report::{
    gallery_picks, write_report, GalleryCase, ModeReport, Picture, Provenance, Report,
};
use evaluator::{ItemScore, Summary, WorkerPool};
use image::RgbImage;

/// Side of the gallery renders, pixels (the dataset's size; the page shows them at half).
const RENDER_SIZE: u32 = 448;

/// One mode's results with what the gallery needs per query.
pub struct ModeResults {
    pub name: String,
    pub summary: Summary,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub items: Vec<ItemScore>,
    /// Per query: the top neighbour's (id, code).
    pub neighbours: Vec<Option<(String, String)>>,
    /// Per query: the predicted code.
    pub predictions: Vec<Option<String>>,
}

/// The command line as typed (arguments with spaces or quotes single-quoted).
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Now, as the report's "created" line.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    evaluator::report::utc_timestamp(secs)
}

/// Versions of the parts that produced the figures.
pub fn versions() -> Vec<(String, String)> {
    let mut v = vec![("rag".to_string(), env!("CARGO_PKG_VERSION").to_string())];
    for line in evaluator::env::LOCK_FILE.lines() {
        if let Some((name, version)) = line.split_once("==") {
            if name == "cadquery" || name == "cadquery-ocp" {
                v.push((name.to_string(), version.trim().to_string()));
            }
        }
    }
    v.push((
        "os".to_string(),
        format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
    ));
    v
}

/// Renders `codes` in the pool, in parallel; each distinct program once, a failure as why.
async fn render_all(
    pool: &Arc<WorkerPool>,
    codes: Vec<String>,
) -> Result<HashMap<String, Result<RgbImage, String>>> {
    let mut handles = Vec::new();
    for code in codes {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let render = pool
                .render(&code, RENDER_SIZE)
                .await
                .map_err(|e| e.to_string());
            (code, render)
        }));
    }
    let mut out = HashMap::new();
    for h in handles {
        let (code, render) = h.await?;
        out.insert(code, render);
    }
    Ok(out)
}

/// A render as the report's picture: PNG bytes, or why there is none.
fn picture_of(render: Result<RgbImage, String>) -> Picture {
    match render.map(encode_png) {
        Ok(Ok(png)) => Picture::Png(png),
        Ok(Err(e)) => Picture::Missing(format!("PNG encoding failed: {e}")),
        Err(e) => Picture::Missing(e),
    }
}

/// Writes the report: picks each mode's gallery, renders its programs, writes the page.
pub async fn write_eval_report(
    dir: &Path,
    pool: &Arc<WorkerPool>,
    provenance: Provenance,
    queries: &[Option<Vec<u8>>],
    modes: Vec<ModeResults>,
) -> Result<PathBuf> {
    let picks: Vec<Vec<(&'static str, usize)>> =
        modes.iter().map(|m| gallery_picks(&m.items)).collect();
    let mut codes: Vec<String> = Vec::new();
    for (m, ps) in modes.iter().zip(&picks) {
        for &(_, i) in ps {
            codes.extend(m.neighbours[i].as_ref().map(|(_, c)| c.clone()));
            codes.extend(m.predictions[i].clone());
        }
    }
    codes.sort();
    codes.dedup();
    let pictures: HashMap<String, Picture> = render_all(pool, codes)
        .await?
        .into_iter()
        .map(|(code, render)| (code, picture_of(render)))
        .collect();
    let picture = |code: Option<&String>, none: &str| match code {
        Some(c) => pictures
            .get(c)
            .cloned()
            .unwrap_or_else(|| Picture::Missing("not rendered".into())),
        None => Picture::Missing(none.into()),
    };
    let mut out = Vec::with_capacity(modes.len());
    for (m, ps) in modes.into_iter().zip(picks) {
        let gallery = ps
            .into_iter()
            .map(|(label, i)| GalleryCase {
                label: label.to_string(),
                item: m.items[i].clone(),
                query: queries[i]
                    .clone()
                    .map_or_else(|| Picture::Missing("no query image".into()), Picture::Png),
                neighbour_id: m.neighbours[i].as_ref().map(|(id, _)| id.clone()),
                neighbour: picture(m.neighbours[i].as_ref().map(|(_, c)| c), "no neighbour"),
                prediction: picture(m.predictions[i].as_ref(), "no prediction"),
            })
            .collect();
        out.push(ModeReport {
            name: m.name,
            summary: m.summary,
            latency_p50_ms: m.latency_p50_ms,
            latency_p95_ms: m.latency_p95_ms,
            items: m.items,
            gallery,
        });
    }
    Ok(write_report(
        dir,
        &Report {
            provenance,
            modes: out,
        },
    )?)
}

/// Side of one picture on an eval sheet, pixels (half the dataset's size).
const SHEET_TILE: u32 = 224;

/// `rag eval --sheet`: the first `rows` queries, `per_row` to a line of the sheet, each as
/// query | each mode's answer | the ground truth rendered the same way, every answer
/// captioned with its two IoUs.
#[allow(clippy::too_many_arguments)]
pub async fn write_eval_sheet(
    path: &Path,
    pool: &Arc<WorkerPool>,
    title: &[String],
    queries: &[Option<Vec<u8>>],
    truths: &[String],
    modes: &[ModeResults],
    rows: usize,
    per_row: usize,
) -> Result<()> {
    use evaluator::sheet::{grid, Tile};
    let n = queries.len().min(rows);
    let mut codes: Vec<String> = truths[..n].to_vec();
    for m in modes {
        codes.extend(m.predictions[..n].iter().flatten().cloned());
    }
    codes.sort();
    codes.dedup();
    let renders = render_all(pool, codes).await?;
    let picture = |code: &str| renders.get(code).and_then(|r| r.as_ref().ok()).cloned();
    let iou = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    let mut lines: Vec<Vec<Tile>> = Vec::new();
    for i in 0..n {
        let mut tiles = vec![Tile {
            heading: modes
                .first()
                .map_or(String::new(), |m| m.items[i].id.clone()),
            image: queries[i]
                .as_ref()
                .and_then(|png| image::load_from_memory(png).ok())
                .map(|img| indexer::encoder::to_rgb_on_white(&img)),
            caption: vec!["query".into()],
        }];
        for m in modes {
            let item = &m.items[i];
            let caption = match (&m.predictions[i], item.status == evaluator::Status::Ok) {
                (None, _) => vec![m.name.clone(), "no answer".into()],
                (Some(_), false) => vec![m.name.clone(), item.status.as_str().to_string()],
                (Some(_), true) => vec![
                    m.name.clone(),
                    format!("vol {}", iou(item.volume_iou)),
                    format!("shell {}", iou(item.shell_iou)),
                ],
            };
            tiles.push(Tile {
                heading: String::new(),
                image: m.predictions[i].as_deref().and_then(picture),
                caption,
            });
        }
        tiles.push(Tile {
            heading: String::new(),
            image: picture(&truths[i]),
            caption: vec!["ground truth".into()],
        });
        match lines.last_mut() {
            Some(line) if i % per_row.max(1) != 0 => line.extend(tiles),
            _ => lines.push(tiles),
        }
    }
    let sheet = grid(title, &lines, SHEET_TILE);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("png.tmp");
    sheet
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
