//! End-to-end: `rag bench native` draws a real synthetic corpus both through the native ray
//! caster and through CadQuery + the mesh renderer, and the two agree: mask IoU >= 0.99 on
//! at least 95% of the programs drawn here (the bench measures the 98% bar on 2 000 programs,
//! README), the median above 0.999, identical grey levels and edges in place.
//! Needs the CadQuery environment.

mod common;

use common::{fails_with, ok_json, rag, s, synth_corpus};

#[test]
fn native_renders_agree_with_cadquery_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    synth_corpus(&corpus, "60", "21", "0.0", "0.0");
    let out = tmp.path().join("bench");
    let o = rag(&[
        "bench",
        "native",
        "--corpus",
        s(&corpus),
        "--limit",
        "60",
        "--speed-programs",
        "5",
        "--out",
        s(&out),
        "--json",
    ]);
    let v = ok_json(&o);
    assert_eq!(v["programs"], 60);
    assert_eq!(v["cadquery_built"], 60);
    let drawn = v["native_drawn"].as_u64().unwrap();
    assert!(drawn >= 57, "native drew only {drawn} of 60: {v}");
    assert!(v["mask_iou_at_least_0_99"].as_f64().unwrap() >= 0.95, "{v}");
    assert!(v["mask_iou_median"].as_f64().unwrap() >= 0.999, "{v}");
    assert!(v["edge_precision_median"].as_f64().unwrap() >= 0.95, "{v}");
    assert_eq!(
        v["grey_median_abs_diff_median"].as_f64().unwrap(),
        0.0,
        "{v}"
    );
    assert!(v["native_renders_per_s_128"].as_f64().unwrap() > 0.0);
    assert!(out.join("worst.png").exists());
    let items = std::fs::read_to_string(out.join("items.jsonl")).unwrap();
    assert_eq!(items.lines().count(), 60);

    let o = rag(&["bench", "native", "--corpus", s(&corpus), "--split", "test"]);
    fails_with(&o, "has no matching rows");
}
