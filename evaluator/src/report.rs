//! The evaluation report: one static HTML page (no server, no network) with the comparison
//! table of every mode run, IoU histograms per mode (SVG, plotters), a gallery of the best,
//! median and worst cases with their renders, failure counts by status, and the command and
//! versions that produced it. People look at this instead of reading jsonl.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::score::{Breakdown, GroupStats, ItemScore, Summary};
use crate::Status;

/// Histogram bins over [0, 1].
const BINS: u32 = 20;
/// The page's file name inside the report folder.
pub const PAGE: &str = "index.html";

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drawing {what}: {message}")]
    Plot { what: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The modes' volume / shell IoU (invalid as 0) per ground-truth group: sketch count and
/// single vs multi-body.
fn breakdown_table(h: &mut String, modes: &[ModeReport]) {
    if modes.is_empty() {
        return;
    }
    let all: Vec<Breakdown> = modes.iter().map(|m| Breakdown::of(&m.items)).collect();
    h.push_str(
        "<h2>By ground truth</h2>\n<table id=\"breakdown\"><tr><th class=\"l\">group</th><th>queries</th>",
    );
    for m in modes {
        let _ = write!(h, "<th>{} volume / shell IoU</th>", escape(&m.name));
    }
    h.push_str("</tr>\n");
    for pick in [
        |b: &Breakdown| b.by_sketch_count.clone(),
        |b: &Breakdown| b.by_bodies.clone(),
    ] {
        let groups: Vec<Vec<GroupStats>> = all.iter().map(pick).collect();
        for (g, group) in groups[0].iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td class=\"l\">{}</td><td>{}</td>",
                escape(&group.group),
                group.n
            );
            for mode in &groups {
                let gs = &mode[g];
                let _ = write!(
                    h,
                    "<td>{} / {}</td>",
                    fmt(gs.volume_iou_mean_all, 3),
                    fmt(gs.shell_iou_mean_all, 3)
                );
            }
            h.push_str("</tr>\n");
        }
    }
    h.push_str("</table>\n<p>Invalid predictions count as 0.</p>\n");
}

/// One evaluated mode as the report shows it.
#[derive(Debug, Clone)]
pub struct ModeReport {
    /// Mode name (retrieval, generator, rag, ...), also used in file names.
    pub name: String,
    pub summary: Summary,
    /// Per-query answer latency percentiles, milliseconds.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Every scored query, in split order.
    pub items: Vec<ItemScore>,
    /// The gallery rows of this mode (see [`gallery_picks`]).
    pub gallery: Vec<GalleryCase>,
}

/// A picture in a gallery row: PNG bytes, or why there is none.
#[derive(Debug, Clone)]
pub enum Picture {
    Png(Vec<u8>),
    Missing(String),
}

/// One gallery row: the query image next to renders of its top neighbour and of the
/// prediction, with the scores.
#[derive(Debug, Clone)]
pub struct GalleryCase {
    /// best, median or worst.
    pub label: String,
    pub item: ItemScore,
    pub query: Picture,
    /// Id of the top retrieved neighbour, when there was one.
    pub neighbour_id: Option<String>,
    pub neighbour: Picture,
    pub prediction: Picture,
}

/// Everything the page shows besides the modes: where the numbers came from.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub title: String,
    /// The exact command line.
    pub command: String,
    /// (what, value) lines: corpus, split, index, encoder, model, decoding.
    pub setup: Vec<(String, String)>,
    /// (component, version) lines.
    pub versions: Vec<(String, String)>,
}

/// A complete report.
#[derive(Debug, Clone)]
pub struct Report {
    pub provenance: Provenance,
    pub modes: Vec<ModeReport>,
}

/// Volume IoU with an invalid prediction as 0: the honest per-item figure the gallery sorts by.
fn item_value(i: &ItemScore) -> f64 {
    if i.status == Status::Ok {
        i.volume_iou.unwrap_or(0.0)
    } else {
        0.0
    }
}

/// Indices of the best, median and worst items (by volume IoU, invalid counted as 0; ties
/// by id so the pick is stable), labelled; fewer when there are fewer distinct items, and
/// items whose ground truth failed are never picked.
pub fn gallery_picks(items: &[ItemScore]) -> Vec<(&'static str, usize)> {
    let mut order: Vec<usize> = (0..items.len()).filter(|&i| items[i].gt_ok).collect();
    order.sort_by(|&a, &b| {
        item_value(&items[b])
            .total_cmp(&item_value(&items[a]))
            .then_with(|| items[a].id.cmp(&items[b].id))
    });
    let Some(&best) = order.first() else {
        return Vec::new();
    };
    let mut picks = vec![("best", best)];
    for (label, i) in [
        ("median", order[order.len() / 2]),
        ("worst", order[order.len() - 1]),
    ] {
        if picks.iter().all(|(_, p)| *p != i) {
            picks.push((label, i));
        }
    }
    picks
}

/// Counts of `values` (each in [0, 1]) in [`BINS`] equal bins; 1.0 falls in the last bin.
fn histogram(values: &[f64]) -> Vec<u32> {
    let mut counts = vec![0u32; BINS as usize];
    for v in values {
        let b = ((v.clamp(0.0, 1.0) * f64::from(BINS)) as usize).min(BINS as usize - 1);
        counts[b] += 1;
    }
    counts
}

/// The SVG of one mode: shell and volume IoU histograms over its valid predictions.
pub fn histogram_svg(mode: &ModeReport) -> Result<String, ReportError> {
    let plot = |e: &dyn std::fmt::Display| ReportError::Plot {
        what: format!("the {} histogram", mode.name),
        message: e.to_string(),
    };
    let valid: Vec<&ItemScore> = mode
        .items
        .iter()
        .filter(|i| i.status == Status::Ok && i.gt_ok)
        .collect();
    let invalid = mode.items.iter().filter(|i| i.status != Status::Ok).count();
    let panels: [(&str, Vec<f64>, RGBColor); 2] = [
        (
            "shell IoU",
            valid.iter().filter_map(|i| i.shell_iou).collect(),
            RGBColor(70, 110, 170),
        ),
        (
            "volume IoU",
            valid.iter().filter_map(|i| i.volume_iou).collect(),
            RGBColor(200, 110, 50),
        ),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 280)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot(&e))?;
        let halves = root.split_evenly((1, 2));
        for ((name, values, colour), area) in panels.iter().zip(&halves) {
            let counts = histogram(values);
            let top = counts.iter().copied().max().unwrap_or(0).max(1);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!(
                        "{}: {name} ({} valid, {invalid} invalid)",
                        mode.name,
                        values.len()
                    ),
                    ("sans-serif", 15),
                )
                .margin(8)
                .x_label_area_size(32)
                .y_label_area_size(36)
                .build_cartesian_2d((0u32..BINS).into_segmented(), 0u32..top + top / 10 + 1)
                .map_err(|e| plot(&e))?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_desc(*name)
                .y_desc("queries")
                .x_labels(6)
                .x_label_formatter(&|v| match v {
                    SegmentValue::Exact(b) | SegmentValue::CenterOf(b) => {
                        format!("{:.1}", f64::from(*b) / f64::from(BINS))
                    }
                    SegmentValue::Last => "1.0".into(),
                })
                .draw()
                .map_err(|e| plot(&e))?;
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(colour.filled())
                        .margin(1)
                        .data(counts.iter().enumerate().map(|(b, c)| (b as u32, *c))),
                )
                .map_err(|e| plot(&e))?;
        }
        root.present().map_err(|e| plot(&e))?;
    }
    Ok(svg)
}

/// Text safe inside HTML elements and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A mode name as a file-name part (letters, digits, '-' and '_' kept).
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}\
th{background:#eee}td.l,th.l{text-align:left}img.part{width:224px;height:224px;border:1px solid #ccc}\
.missing{width:224px;height:224px;display:flex;align-items:center;justify-content:center;\
background:#f6f6f6;border:1px solid #ccc;color:#933;font-size:12px;text-align:center}\
pre{background:#f4f4f4;padding:8px;white-space:pre-wrap}";

/// Counts the images that loaded and says so on the page (the Chromium test reads it back).
const IMAGE_CHECK: &str = "<script>window.addEventListener('load',function(){\
var im=document.images,ok=0;for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}\
document.getElementById('image-check').textContent='images loaded: '+ok+' of '+im.length;});</script>";

/// A page's head (title, style sheet) and its `<h1>`: the start every page here shares.
fn page_start(title: &str) -> String {
    let t = escape(title);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n"
    )
}

/// Ends page `h` with the image check and writes it as `dir/index.html`; returns its path.
fn finish_page(dir: &Path, mut h: String) -> Result<PathBuf, ReportError> {
    let _ = write!(
        h,
        "<p id=\"image-check\">images loaded: not checked (scripts off)</p>\n{IMAGE_CHECK}\n</body></html>\n"
    );
    let page = dir.join(PAGE);
    std::fs::write(&page, h).map_err(io(&page))?;
    Ok(page)
}

/// Writes `picture` as `img/NAME.png` and returns the cell's HTML.
fn picture_cell(dir: &Path, name: &str, picture: &Picture) -> Result<String, ReportError> {
    Ok(match picture {
        Picture::Png(bytes) => {
            let rel = format!("img/{name}.png");
            let path = dir.join(&rel);
            std::fs::write(&path, bytes).map_err(io(&path))?;
            format!(
                "<img class=\"part\" src=\"{rel}\" alt=\"{}\">",
                escape(name)
            )
        }
        Picture::Missing(why) => format!("<div class=\"missing\">{}</div>", escape(why)),
    })
}

/// One neighbour on a search page.
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// 1-based rank.
    pub rank: usize,
    /// Corpus id.
    pub id: String,
    /// Cosine similarity to the query.
    pub score: f32,
    /// The neighbour's thumbnail from the index.
    pub picture: Picture,
    /// Its CadQuery code.
    pub code: String,
}

/// Writes a search result page into `dir` (created if needed): `index.html` with the query
/// picture next to each neighbour's thumbnail, rank, id, score and code, pictures under
/// `img/`. `title` names the query and index. Returns the page's path.
pub fn write_search_page(
    dir: &Path,
    title: &str,
    query: &Picture,
    hits: &[SearchHit],
) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir.join("img")).map_err(io(dir))?;
    let mut h = page_start(title);
    let _ = write!(
        h,
        "<h2>Query</h2>\n{}\n\
         <h2>Neighbours</h2>\n<table id=\"neighbours\"><tr><th>rank</th><th>score</th>\
         <th class=\"l\">id</th><th class=\"l\">thumbnail</th><th class=\"l\">code</th></tr>\n",
        picture_cell(dir, "query", query)?,
    );
    for hit in hits {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{:.4}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td class=\"l\"><pre>{}</pre></td></tr>",
            hit.rank,
            hit.score,
            escape(&hit.id),
            picture_cell(dir, &format!("rank-{}", hit.rank), &hit.picture)?,
            escape(&hit.code)
        );
    }
    if hits.is_empty() {
        h.push_str("<tr><td colspan=\"5\">no neighbour matches the filter</td></tr>\n");
    }
    h.push_str("</table>\n");
    finish_page(dir, h)
}

/// Writes the report into `dir` (created if needed): `index.html`, one histogram SVG per
/// mode and the gallery's PNGs under `img/`. Returns the page's path.
pub fn write_report(dir: &Path, report: &Report) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir.join("img")).map_err(io(dir))?;
    let p = &report.provenance;
    let mut h = page_start(&p.title);
    h.push_str("<table>");
    for (k, v) in &p.setup {
        let _ = write!(
            h,
            "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    h.push_str("</table>\n<h2>Comparison</h2>\n<table id=\"comparison\"><tr><th class=\"l\">mode</th>\
        <th>queries</th><th>VSR</th><th>shell IoU (valid)</th><th>shell IoU (all)</th>\
        <th>volume IoU (valid)</th><th>volume IoU (all)</th><th>latency p50 ms</th><th>p95 ms</th></tr>\n");
    for m in &report.modes {
        let s = &m.summary;
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.name),
            s.n,
            s.vsr,
            fmt(s.shell_iou_mean_valid, 4),
            fmt(s.shell_iou_mean_all, 4),
            fmt(s.volume_iou_mean_valid, 4),
            fmt(s.volume_iou_mean_all, 4),
            fmt(m.latency_p50_ms, 1),
            fmt(m.latency_p95_ms, 1)
        );
    }
    h.push_str(
        "</table>\n<p>valid: mean over predictions that built a solid (the published way); \
         all: invalid predictions count as 0.</p>\n",
    );
    breakdown_table(&mut h, &report.modes);
    h.push_str(
        "<h2>Outcomes by status</h2>\n\
         <table id=\"statuses\"><tr><th class=\"l\">status</th>",
    );
    for m in &report.modes {
        let _ = write!(h, "<th>{}</th>", escape(&m.name));
    }
    h.push_str("</tr>\n");
    for status in Status::ALL {
        let counts: Vec<usize> = report
            .modes
            .iter()
            .map(|m| m.items.iter().filter(|i| i.status == status).count())
            .collect();
        if counts.iter().all(|c| *c == 0) {
            continue;
        }
        let _ = write!(h, "<tr><td class=\"l\">{}</td>", status.as_str());
        for c in counts {
            let _ = write!(h, "<td>{c}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n<h2>IoU histograms</h2>\n");
    for m in &report.modes {
        let name = format!("hist-{}.svg", slug(&m.name));
        let path = dir.join(&name);
        std::fs::write(&path, histogram_svg(m)?).map_err(io(&path))?;
        let _ = writeln!(
            h,
            "<p><img src=\"{name}\" alt=\"{} IoU histograms\" width=\"760\" height=\"280\"></p>",
            escape(&m.name)
        );
    }
    h.push_str(
        "<h2>Gallery</h2>\n<p>Best, median and worst query of each mode by volume IoU (invalid \
         counted as 0): the query image, a render of the top retrieved neighbour's code, and a \
         render of the prediction.</p>\n",
    );
    for m in &report.modes {
        let _ = writeln!(
            h,
            "<h3>{}</h3>\n<table class=\"gallery\"><tr><th class=\"l\">case</th><th>query</th>\
             <th>top neighbour</th><th>prediction</th></tr>",
            escape(&m.name)
        );
        for case in &m.gallery {
            let stem = format!("{}-{}-{}", slug(&m.name), case.label, slug(&case.item.id));
            let i = &case.item;
            let mut facts = format!(
                "<b>{}</b><br>id {}<br>status {}<br>volume IoU {}<br>shell IoU {}",
                escape(&case.label),
                escape(&i.id),
                i.status.as_str(),
                fmt(i.volume_iou, 4),
                fmt(i.shell_iou, 4)
            );
            if let Some(n) = &case.neighbour_id {
                let _ = write!(facts, "<br>neighbour {}", escape(n));
            }
            if !i.message.is_empty() {
                let _ = write!(facts, "<br><small>{}</small>", escape(&i.message));
            }
            let _ = writeln!(
                h,
                "<tr><td class=\"l\">{facts}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                picture_cell(dir, &format!("{stem}-query"), &case.query)?,
                picture_cell(dir, &format!("{stem}-neighbour"), &case.neighbour)?,
                picture_cell(dir, &format!("{stem}-prediction"), &case.prediction)?
            );
        }
        h.push_str("</table>\n");
    }
    let _ = write!(
        h,
        "<h2>How this was made</h2>\n<pre id=\"command\">{}</pre>\n<table>",
        escape(&p.command)
    );
    for (k, v) in &p.versions {
        let _ = write!(
            h,
            "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>",
            escape(k),
            escape(v)
        );
    }
    h.push_str("</table>\n");
    finish_page(dir, h)
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A UTC timestamp (`2026-11-22 10:04:05 UTC`) for the page's provenance.
pub fn utc_timestamp(unix_seconds: u64) -> String {
    let secs = unix_seconds as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, status: Status, volume: Option<f64>) -> ItemScore {
        ItemScore {
            id: id.into(),
            status,
            message: String::new(),
            shell_iou: volume.map(|v| v * 0.5),
            volume_iou: volume,
            seconds: 0.1,
            gt_ok: true,
            volume_booleans: 0,
            gt_sketches: None,
            gt_solids: None,
        }
    }

    #[test]
    fn picks_best_median_and_worst_with_invalid_as_zero() {
        let items = vec![
            item("a", Status::Ok, Some(0.5)),
            item("b", Status::Runtime, None),
            item("c", Status::Ok, Some(0.9)),
            item("d", Status::Ok, Some(0.2)),
            item("e", Status::Ok, Some(0.7)),
        ];
        let picks = gallery_picks(&items);
        assert_eq!(picks, vec![("best", 2), ("median", 0), ("worst", 1)]);
        let one = gallery_picks(&items[..1]);
        assert_eq!(one, vec![("best", 0)]);
        let mut bad_gt = item("z", Status::Ok, Some(1.0));
        bad_gt.gt_ok = false;
        assert!(gallery_picks(&[bad_gt]).is_empty());
    }

    #[test]
    fn histogram_bins_cover_zero_to_one() {
        let h = histogram(&[0.0, 0.049, 0.05, 0.5, 0.999, 1.0, 1.2, -0.1]);
        assert_eq!(h.len(), 20);
        assert_eq!(h[0], 3);
        assert_eq!(h[1], 1);
        assert_eq!(h[10], 1);
        assert_eq!(h[19], 3);
        assert_eq!(h.iter().sum::<u32>(), 8);
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_timestamp(1_795_305_845), "2026-11-22 00:04:05 UTC");
    }

    #[test]
    fn writes_page_histograms_and_gallery_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut items = vec![
            item("a<1>", Status::Ok, Some(0.8)),
            item("b", Status::Timeout, None),
        ];
        items[0].gt_sketches = Some(1);
        items[0].gt_solids = Some(1);
        items[1].gt_sketches = Some(3);
        items[1].gt_solids = Some(2);
        let png = crate::render::encode_png(image::RgbImage::from_pixel(
            4,
            4,
            image::Rgb([141, 141, 138]),
        ))
        .unwrap();
        let gallery = vec![GalleryCase {
            label: "best".into(),
            item: items[0].clone(),
            query: Picture::Png(png.clone()),
            neighbour_id: Some("n1".into()),
            neighbour: Picture::Png(png),
            prediction: Picture::Missing("the code did not build a solid".into()),
        }];
        let report = Report {
            provenance: Provenance {
                title: "test report".into(),
                command: "rag eval --report x".into(),
                setup: vec![("corpus".into(), "c".into())],
                versions: vec![("rag".into(), "0.1.0".into())],
            },
            modes: vec![ModeReport {
                name: "rag greedy".into(),
                summary: Summary::of(&items, 1.0),
                latency_p50_ms: Some(12.0),
                latency_p95_ms: None,
                items,
                gallery,
            }],
        };
        let page = write_report(dir.path(), &report).unwrap();
        let html = std::fs::read_to_string(&page).unwrap();
        assert!(html.contains("<td class=\"l\">rag greedy</td><td>2</td><td>0.500</td>"));
        assert!(html.contains("<td class=\"l\">timeout</td><td>1</td>"));
        assert!(html.contains("<td class=\"l\">1 sketch</td><td>1</td><td>0.800 / 0.400</td>"));
        assert!(html.contains("<td class=\"l\">multi-body</td><td>1</td><td>0.000 / 0.000</td>"));
        assert!(html.contains("id a&lt;1&gt;"));
        assert!(html.contains("the code did not build a solid"));
        assert!(dir.path().join("hist-rag_greedy.svg").is_file());
        let svg = std::fs::read_to_string(dir.path().join("hist-rag_greedy.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("volume IoU"));
        assert!(dir
            .path()
            .join("img/rag_greedy-best-a_1_-query.png")
            .is_file());
        assert!(!dir
            .path()
            .join("img/rag_greedy-best-a_1_-prediction.png")
            .exists());
    }
}
