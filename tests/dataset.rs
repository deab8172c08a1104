//! End-to-end: `rag dataset synth` builds a real parquet corpus through the real sandbox and
//! renderer, deterministically, and resumes after Ctrl-C without losing or repeating rows;
//! `rag dataset info`, `rag render` and bad-input errors. Needs the CadQuery environment.

mod common;

use common::{interrupt_once_written, rag, stderr};
use std::path::Path;
use std::process::{Command, Output};

use indexer::corpus::{CorpusReader, Split};

/// (split, id, code, image bytes) of every row, in reading order.
fn rows(dir: &Path) -> Vec<(Split, String, String, Vec<u8>)> {
    let reader = CorpusReader::open(dir).expect("corpus opens");
    let mut out = Vec::new();
    for split in Split::ALL {
        for row in reader.rows(split) {
            let row = row.expect("row reads");
            out.push((split, row.deepcad_id, row.cadquery, row.image_png));
        }
    }
    out
}

/// `rag dataset synth` with the settings every test here uses (seed 7, 70/10/20 splits,
/// shards of 6 rows).
fn synth_command(out: &Path, n: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rag"));
    c.args([
        "dataset",
        "synth",
        "--n",
        n,
        "--seed",
        "7",
        "--val",
        "0.1",
        "--test",
        "0.2",
        "--shard-rows",
        "6",
        "--out",
        out.to_str().unwrap(),
    ]);
    c
}

fn synth(out: &Path, n: &str) -> Output {
    synth_command(out, n).output().expect("rag runs")
}

#[test]
fn synth_is_deterministic_readable_and_resumes_after_ctrl_c() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    let out = synth(&full, "30");
    assert!(out.status.success(), "{}", stderr(&out));
    let reference = rows(&full);
    assert_eq!(reference.len(), 30);
    let count = |s: Split| reference.iter().filter(|r| r.0 == s).count();
    assert_eq!(
        (
            count(Split::Train),
            count(Split::Validation),
            count(Split::Test)
        ),
        (21, 3, 6)
    );
    let reader = CorpusReader::open(&full).unwrap();
    assert_eq!(
        reader.files(Split::Train).len(),
        4,
        "21 rows in shards of 6"
    );
    for (_, id, code, png) in &reference {
        assert!(
            code.starts_with("import cadquery as cq\n# Generating a workplane for sketch 0\n"),
            "{id}"
        );
        let img = image::load_from_memory(png).expect("png decodes").to_rgb8();
        assert_eq!(img.dimensions(), (448, 448), "{id}");
        let ink = img
            .pixels()
            .filter(|p| p.0.iter().any(|c| *c < 250))
            .count();
        assert!(ink > 448 * 448 / 100, "{id}: the render shows the part");
    }
    let mut codes: Vec<&String> = reference.iter().map(|r| &r.2).collect();
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), 30, "no duplicate programs");

    // The same command again is a no-op on a complete corpus.
    let again = synth(&full, "30");
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(rows(&full), reference);

    // Interrupt a second build once it has written a shard, then resume it.
    let part = tmp.path().join("part");
    let code = interrupt_once_written(
        &mut synth_command(&part, "30"),
        &part.join("synth-state.json"),
    );
    assert_eq!(code, Some(130), "Ctrl-C exits 130 after saving");
    let partial = rows(&part);
    assert!(
        !partial.is_empty() && partial.len() < 30,
        "{} rows after Ctrl-C",
        partial.len()
    );
    assert_eq!(
        partial[..],
        reference[..partial.len()],
        "saved rows are the run's first rows"
    );
    let resumed = synth(&part, "30");
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert_eq!(
        rows(&part),
        reference,
        "resumed corpus equals the uninterrupted one"
    );

    // Other settings on the same folder are refused rather than mixed in.
    let clash = synth(&part, "40");
    assert!(!clash.status.success());
    assert!(
        stderr(&clash).contains("synth-state.json"),
        "{}",
        stderr(&clash)
    );

    // info reads it back and prints the comparison with the real statistics.
    let info = rag(&[
        "dataset",
        "info",
        full.to_str().unwrap(),
        "--json",
        "--check-images",
    ]);
    assert!(info.status.success(), "{}", stderr(&info));
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["splits"]["train"], 21);
    assert_eq!(v["stats"].as_array().unwrap().len(), 11);
    assert_eq!(v["bad_images"].as_array().unwrap().len(), 0);
}

#[test]
fn render_writes_the_gencad_style_png_and_rejects_bad_code() {
    let tmp = tempfile::tempdir().unwrap();
    let code = tmp.path().join("part.py");
    std::fs::write(
        &code,
        "import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 1, 1)\n",
    )
    .unwrap();
    let png = tmp.path().join("part.png");
    let out = rag(&[
        "render",
        code.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
        "--size",
        "224",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (224, 224));
    assert!(
        img.pixels().any(|p| p.0 == [141, 141, 138]),
        "flat faces in the GenCAD grey"
    );

    std::fs::write(&code, "import os\nos.system('true')\n").unwrap();
    let bad = rag(&[
        "render",
        code.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("rejected"), "{}", stderr(&bad));
}

#[test]
fn dataset_commands_name_the_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = rag(&["dataset", "info", tmp.path().to_str().unwrap()]);
    assert!(!empty.status.success());
    assert!(
        stderr(&empty).contains("no corpus found"),
        "{}",
        stderr(&empty)
    );

    let shard = tmp.path().join("train-00000-of-00001.parquet");
    std::fs::write(&shard, b"PAR1 this is not parquet").unwrap();
    let corrupt = rag(&["dataset", "info", tmp.path().to_str().unwrap()]);
    assert!(!corrupt.status.success());
    assert!(
        stderr(&corrupt).contains("train-00000-of-00001.parquet"),
        "{}",
        stderr(&corrupt)
    );

    // A folder with someone else's shards is not a place to synthesise into.
    let foreign = synth(tmp.path(), "5");
    assert!(!foreign.status.success());
    assert!(
        stderr(&foreign).contains("already holds parquet shards"),
        "{}",
        stderr(&foreign)
    );
}
