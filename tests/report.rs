//! End-to-end: `rag eval --report DIR` on a real synthetic corpus writes a static page that
//! opens in headless Chromium with its table, histograms and gallery renders; a report folder
//! that cannot be made is a clear error. Needs the CadQuery environment and Chromium.

mod common;

use common::{check_report, fails_with, pixel_index, rag, s, stderr, synth_corpus};

#[test]
fn eval_report_opens_in_chromium_with_every_image() {
    let tmp = tempfile::tempdir().unwrap();
    let (corpus, index, report) = (
        tmp.path().join("corpus"),
        tmp.path().join("index"),
        tmp.path().join("report"),
    );
    synth_corpus(&corpus, "24", "5", "0.0", "0.25");
    let o = pixel_index(&corpus, &index, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval = |report: &std::path::Path| {
        rag(&[
            "eval",
            "--corpus",
            s(&corpus),
            "--index",
            s(&index),
            "--mode",
            "retrieval",
            "--report",
            s(report),
        ])
    };
    let o = eval(&report);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("VSR"), "the table is still printed: {out}");
    assert!(stderr(&o).contains("report: "), "{}", stderr(&o));
    assert!(report.join("hist-retrieval.svg").is_file());
    // best, median and worst: 3 cases x (query, neighbour, prediction), plus the histogram
    let images = check_report(&report, &["retrieval"]);
    assert_eq!(images, 3 * 3 + 1);
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("rag eval"), "the command is on the page");
    assert!(
        html.contains("cadquery</th><td class=\"l\">2.8.0"),
        "versions on the page"
    );

    // A report folder that is a file: a clear error, non-zero exit.
    let blocked = tmp.path().join("blocked");
    std::fs::write(&blocked, "not a folder").unwrap();
    fails_with(&eval(&blocked), "blocked");
}
