//! End-to-end: execution-guided selection on a real synthetic corpus with the pixel index and
//! no model (the retrieved snippets are the candidates): `rag generate --refine --explain`,
//! the never-invalid fallback, candidates that fail in the real sandbox and renderer, and
//! `rag eval --mode rerank,refine --rank-check`.
//! Needs the CadQuery environment. The generator's candidates are covered in tests/generator.rs.

mod common;

use common::{fails_with, ok_json, pixel_index, rag, s, stderr, synth_corpus};
use std::path::Path;

use indexer::corpus::{CorpusReader, Split};

fn setup(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let (corpus, index) = (tmp.join("corpus"), tmp.join("index"));
    synth_corpus(&corpus, "40", "9", "0.0", "0.2");
    let o = pixel_index(&corpus, &index, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let query = tmp.join("query.png");
    let row = CorpusReader::open(&corpus)
        .unwrap()
        .rows(Split::Test)
        .next()
        .unwrap()
        .unwrap();
    std::fs::write(&query, &row.image_png).unwrap();
    (corpus, index, query)
}

#[test]
fn selection_reranks_refines_falls_back_and_correlates() {
    let tmp = tempfile::tempdir().unwrap();
    let (corpus, index, query) = setup(tmp.path());

    // generate: the candidates explained, one chosen, the refinement reported, code that runs.
    let code = tmp.path().join("answer.py");
    let o = rag(&[
        "generate",
        s(&query),
        "--index",
        s(&index),
        "--refine",
        "--refine-budget",
        "8",
        "--explain",
        "--out",
        s(&code),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("CHOSEN").count(), 1, "{err}");
    assert!(err.contains("neighbour 1 ("), "{err}");
    assert!(err.contains("refinement: score"), "{err}");
    assert!(err.contains("encoder cosine"), "{err}");
    let render = tmp.path().join("answer.png");
    let o = rag(&["render", s(&code), "--out", s(&render)]);
    assert!(o.status.success(), "the answer runs: {}", stderr(&o));

    // Never invalid: with no first-round candidates the next snippets are tried in order.
    let o = rag(&[
        "generate",
        s(&query),
        "--index",
        s(&index),
        "--samples",
        "0",
        "--candidates",
        "0",
        "--explain",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("after every candidate failed"),
        "{}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("cq.Workplane"));

    // eval: VSR 1 for both selection modes, refinement never lowers the match score, and the
    // rank check scores every valid candidate against the ground truth.
    let per_item = tmp.path().join("items.jsonl");
    let e = ok_json(&rag(&[
        "eval",
        "--corpus",
        s(&corpus),
        "--index",
        s(&index),
        "--mode",
        "retrieval,rerank,refine",
        "--limit",
        "4",
        "--candidates",
        "3",
        "--refine-budget",
        "6",
        "--rank-check",
        "--per-item",
        s(&per_item),
        "--json",
    ]));
    let modes = e["modes"].as_array().unwrap();
    let n = modes[0]["n"].as_u64().unwrap();
    assert_eq!(n, 4, "{e}");
    for m in &modes[1..] {
        assert_eq!(m["vsr"], 1.0, "{m}");
        let sel = &m["selection"];
        let sum: u64 = ["chosen_model", "chosen_neighbour", "chosen_refined"]
            .iter()
            .map(|k| sel[k].as_u64().unwrap())
            .sum();
        assert_eq!(sum, n, "{m}");
        assert_eq!(sel["chosen_model"], 0, "no model, no model candidates: {m}");
        let c = &m["rank_check"];
        assert!(c["candidates_scored"].as_u64().unwrap() >= n, "{c}");
        for cue in ["score", "encoder", "mask", "edge"] {
            let rho = &c["rho_pooled"][cue];
            assert!(
                rho.is_null() || (-1.0..=1.0).contains(&rho.as_f64().unwrap()),
                "{c}"
            );
        }
        let (chosen, oracle) = (
            c["iou_chosen"].as_f64().unwrap(),
            c["iou_oracle"].as_f64().unwrap(),
        );
        assert!(chosen <= oracle + 1e-9, "{c}");
    }
    let items = std::fs::read_to_string(&per_item).unwrap();
    let mut refined = 0;
    for line in items.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["mode"] != "refine" {
            continue;
        }
        let r = &v["selection"]["refinement"];
        assert!(r["evaluations"].as_u64().unwrap() <= 6, "{v}");
        assert!(r["to_score"].as_f64() >= r["from_score"].as_f64(), "{v}");
        refined += 1;
    }
    assert_eq!(refined as u64, n);

    // --retrieval-only cannot be combined with selection.
    fails_with(
        &rag(&[
            "generate",
            s(&query),
            "--index",
            s(&index),
            "--retrieval-only",
            "--samples",
            "2",
        ]),
        "--retrieval-only",
    );
}

/// Real programs that fail at each stage, as the retrieved candidates of one query: a solid
/// whose render is blank (a unit cube beside a speck far away: the framing shrinks the cube
/// below a pixel), a program that hangs, one that builds no solid and one that raises.
#[test]
fn candidates_that_fail_at_any_stage_are_listed_and_a_good_one_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let synth = tmp.path().join("synth");
    synth_corpus(&synth, "6", "3", "0.0", "0.0");
    let rows: Vec<_> = CorpusReader::open(&synth)
        .unwrap()
        .rows(Split::Train)
        .take(2)
        .map(|r| r.unwrap())
        .collect();
    let (good, other) = (&rows[0], &rows[1]);
    let head = "import cadquery as cq\n";
    let codes = [
        ("blank", format!("{head}result = cq.Workplane(\"XY\").box(1, 1, 1).union(cq.Workplane(\"XY\").box(0.0001, 0.0001, 0.0001).translate((10000, 10000, 10000)))\n")),
        ("hangs", format!("{head}n = sum(range(10 ** 12))\n")),
        ("empty", format!("{head}result = cq.Workplane(\"XY\")\n")),
        ("raises", format!("{head}result = undefined_name\n")),
        ("other", other.cadquery.clone()),
        ("good", good.cadquery.clone()),
    ];
    // Every row shows the query's picture, so all six are retrieved with the same score.
    let corpus = tmp.path().join("crafted");
    std::fs::create_dir(&corpus).unwrap();
    let mut jsonl = String::new();
    for (id, code) in &codes {
        std::fs::write(corpus.join(format!("{id}.png")), &good.image_png).unwrap();
        let row = serde_json::json!({"id": id, "code": code, "split": "train"});
        jsonl.push_str(&format!("{row}\n"));
    }
    std::fs::write(corpus.join("rows.jsonl"), jsonl).unwrap();
    let index = tmp.path().join("index");
    let o = pixel_index(&corpus, &index, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let query = tmp.path().join("query.png");
    std::fs::write(&query, &good.image_png).unwrap();

    let o = rag(&[
        "generate",
        s(&query),
        "--index",
        s(&index),
        "--candidates",
        "6",
        "--explain",
        "--timeout",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        good.cadquery.trim()
    );
    let err = stderr(&o);
    let row_of = |id: &str| {
        err.lines()
            .find(|l| l.contains(&format!("({id})")))
            .unwrap_or_else(|| panic!("no row for {id} in\n{err}"))
            .to_string()
    };
    assert!(row_of("good").contains("CHOSEN"), "{err}");
    assert!(row_of("other").contains(" ok "), "{err}");
    assert!(row_of("blank").contains("blank_render"), "{err}");
    assert!(row_of("hangs").contains("timeout"), "{err}");
    assert!(row_of("empty").contains("no_solid"), "{err}");
    assert!(row_of("raises").contains("runtime"), "{err}");
}
