//! End-to-end: the README's first command, `rag demo`, runs to the end into an empty folder
//! (corpus, both encoders, the tiny generator, generation with renders, evaluation) and its
//! report opens in headless Chromium with every image loading; a rerun reuses what is built.
//! Needs the CadQuery environment and Chromium.

mod common;

use common::{check_report, rag, s, stderr};

#[test]
fn demo_runs_end_to_end_and_its_report_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let o = rag(&["demo", "--out", s(&out)]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "corpus_gallery.png",
        "generated.py",
        "search/index.html",
        "search/img/rank-5.png",
        "generated-rag.py",
        "generated-rag.png",
        "query-vs-generated.png",
        "generator-tiny/generator.json",
    ] {
        assert!(out.join(f).is_file(), "demo did not write {f}");
    }
    let render = image::open(out.join("generated-rag.png")).unwrap();
    assert_eq!((render.width(), render.height()), (448, 448));
    let sheet = image::open(out.join("query-vs-generated.png")).unwrap();
    assert!(sheet.width() > 2 * 448 && sheet.height() > 448);
    check_report(&out.join("report"), &["retrieval", "generator", "rag"]);

    // A rerun reuses the corpus and the trained models.
    let again = rag(&["demo", "--out", s(&out)]);
    assert!(again.status.success(), "{}", stderr(&again));
    let err = stderr(&again);
    let said = String::from_utf8_lossy(&again.stdout).into_owned() + &err;
    assert!(
        said.contains("48 were already there"),
        "corpus rebuilt: {said}"
    );
    assert_eq!(
        said.matches("(0 this run, resumed from").count(),
        2,
        "CLIP and generator retrained: {said}"
    );
}
