//! Our renderer against the eight real GenCAD-Code images: each sample's code runs in the
//! sandbox, its mesh and edges are rendered at 448 px and compared with the dataset's PNG.
//! Needs the CadQuery environment (`rag setup`); fails, never skips, without it.
//!
//! Set `CADRAG_RENDER_DUMP=<dir>` to also write each render and a real | ours sheet there.

mod common;

use std::path::PathBuf;

use evaluator::render::{render_part, GENCAD_SIZE};
use evaluator::style::{compare, side_by_side};
use evaluator::{reference, Status, Wants};

/// Thresholds of the render-style issue, for every sample.
const MIN_MASK_IOU: f64 = 0.99;
const MAX_MEDIAN_DIFF: f64 = 2.0;
const MIN_EDGE_PRECISION: f64 = 0.9;

fn real_image(id: &str) -> image::RgbImage {
    let png = reference::image_png(id).unwrap_or_else(|| panic!("no reference image for {id}"));
    image::load_from_memory(png)
        .unwrap_or_else(|e| panic!("{id}: {e}"))
        .to_rgb8()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_match_the_real_gencad_images() {
    let pool = common::pool(60, 4096).await;
    let samples = reference::samples();
    assert_eq!(samples.len(), 8);
    let wants = Wants::RENDER;
    let handles: Vec<_> = samples
        .iter()
        .map(|s| {
            let pool = pool.clone();
            let code = s.cadquery.clone();
            tokio::spawn(async move { pool.exec(&code, wants).await })
        })
        .collect();

    let dump = std::env::var_os("CADRAG_RENDER_DUMP").map(PathBuf::from);
    let mut rows = Vec::new();
    let mut table = vec![format!(
        "{:10} {:>9} {:>12} {:>15} {:>12}",
        "id", "mask IoU", "median diff", "edge precision", "edge recall"
    )];
    let mut failures = Vec::new();
    for (s, h) in samples.iter().zip(handles) {
        let exec = h.await.unwrap();
        assert_eq!(
            exec.status,
            Status::Ok,
            "{}: {}",
            s.deepcad_id,
            exec.message
        );
        let mesh = exec.mesh.expect("mesh asked for");
        let edges = exec.edges.expect("edges asked for");
        let ours = render_part(&mesh, &edges, GENCAD_SIZE).unwrap();
        let real = real_image(&s.deepcad_id);
        let c = compare(&real, &ours);
        table.push(format!(
            "{:10} {:>9.4} {:>12.2} {:>15.4} {:>12.4}",
            s.deepcad_id, c.mask_iou, c.median_abs_diff, c.edge_precision, c.edge_recall
        ));
        if c.mask_iou < MIN_MASK_IOU
            || c.median_abs_diff > MAX_MEDIAN_DIFF
            || c.edge_precision < MIN_EDGE_PRECISION
        {
            failures.push(format!("{}: {c:?}", s.deepcad_id));
        }
        if let Some(dir) = &dump {
            std::fs::create_dir_all(dir).unwrap();
            ours.save(dir.join(format!("{}_ours.png", s.deepcad_id)))
                .unwrap();
        }
        rows.push((s.deepcad_id.clone(), real, ours));
    }
    println!("{}", table.join("\n"));
    if let Some(dir) = &dump {
        side_by_side(&rows)
            .save(dir.join("real_vs_ours.png"))
            .unwrap();
    }
    assert!(
        failures.is_empty(),
        "below the style thresholds (IoU >= {MIN_MASK_IOU}, median diff <= \
         {MAX_MEDIAN_DIFF}, edge precision >= {MIN_EDGE_PRECISION}):\n{}",
        failures.join("\n")
    );
}
