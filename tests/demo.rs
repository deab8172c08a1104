//! End-to-end: the README's first command, `rag demo`, runs to the end into an empty folder
//! with its default settings: it answers the 8 real reference images and writes their sheet,
//! every answer it wrote runs in the sandbox and scores exactly what the demo reported, its
//! reports open in headless Chromium with every image loading, and a rerun reuses what is
//! built. Needs the CadQuery environment and Chromium.

mod common;

use std::collections::BTreeMap;

use common::{check_report, ok_json, rag, s, stderr};

/// (volume, shell) IoU per id of one mode in a per-item jsonl.
fn ious(path: &std::path::Path, mode: Option<&str>) -> BTreeMap<String, (f64, f64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| mode.is_none_or(|m| v["mode"] == m))
        .map(|v| {
            let id = v["id"].as_str().unwrap().to_string();
            let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("no {k} in {v}"));
            (id, (f("volume_iou"), f("shell_iou")))
        })
        .collect()
}

#[test]
fn demo_answers_the_real_samples_end_to_end_and_its_reports_open() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = rag(&["demo", "--out", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(said.contains("Real GenCAD images"), "{said}");
    for f in [
        "corpus_gallery.png",
        "search/index.html",
        "search/img/rank-5.png",
        "generated.py",
        "generated.png",
        "query-vs-generated.png",
        "real-sheet.png",
        "smoke/generator-tiny/generator.json",
        "smoke/generated-rag.py",
        "smoke/generated-rag.png",
    ] {
        assert!(out.join(f).is_file(), "demo did not write {f}");
    }
    // The sheet: 8 queries, two to a line, each as query | retrieval | fit | ground truth at
    // 224 px.
    let sheet = image::open(out.join("real-sheet.png")).unwrap();
    assert!(sheet.width() >= 8 * 224, "{}", sheet.width());
    assert!(sheet.height() >= 4 * 224, "{}", sheet.height());
    let render = image::open(out.join("generated.png")).unwrap();
    assert_eq!((render.width(), render.height()), (448, 448));

    // Every answer the demo wrote runs, and scores what the demo reported for it.
    let real = out.join("real");
    for mode in ["retrieval", "fit"] {
        let reported = ious(&out.join("real-per-item.jsonl"), Some(mode));
        assert_eq!(reported.len(), 8, "{mode}: {reported:?}");
        let rescored_file = tmp.path().join(format!("{mode}.jsonl"));
        let score = ok_json(&rag(&[
            "score",
            "--gt",
            s(&real.join("real.jsonl")),
            "--pred",
            s(&real.join("answers").join(mode)),
            "--per-item",
            s(&rescored_file),
            "--json",
        ]));
        assert_eq!(score["valid"], 8, "{mode}: not every answer runs: {score}");
        let rescored = ious(&rescored_file, None);
        assert_eq!(
            rescored.keys().collect::<Vec<_>>(),
            reported.keys().collect::<Vec<_>>()
        );
        for (id, (vol, shell)) in &reported {
            let (v2, s2) = rescored[id];
            assert!(
                (vol - v2).abs() < 1e-6 && (shell - s2).abs() < 1e-6,
                "{mode} {id}: demo said {vol} / {shell}, the metric says {v2} / {s2}"
            );
        }
    }
    check_report(&real.join("report"), &["retrieval", "fit"]);
    check_report(
        &out.join("smoke/report"),
        &["retrieval", "generator", "rag"],
    );

    // A rerun reuses the corpus and the trained models.
    let again = rag(&["demo", "--out", s(&out)]);
    assert!(again.status.success(), "{}", stderr(&again));
    let said = String::from_utf8_lossy(&again.stdout).into_owned() + &stderr(&again);
    assert!(
        said.contains(&format!("{} were already there", 3000)),
        "corpus rebuilt: {said}"
    );
    assert_eq!(
        said.matches("(0 this run, resumed from").count(),
        2,
        "CLIP and generator retrained: {said}"
    );
}
