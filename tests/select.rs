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

/// `rag bench coverage` on the same queries as `rag eval --mode retrieval`: its top-1 is
/// retrieval-only's answer (the same IoUs), no choice beats the oracle, and `eval` breaks its
/// figures down by the ground truth's sketch count and bodies.
#[test]
fn coverage_bench_agrees_with_eval_and_bounds_the_choice() {
    let tmp = tempfile::tempdir().unwrap();
    let (corpus, index, _) = setup(tmp.path());
    let c = ok_json(&rag(&[
        "bench",
        "coverage",
        "--corpus",
        s(&corpus),
        "--index",
        s(&index),
        "--k",
        "4",
        "--limit",
        "4",
        "--json",
    ]));
    let cov = &c["indices"][0];
    assert_eq!(cov["queries"], 4, "{c}");
    assert_eq!(cov["k"], 4, "{c}");
    for p in ["volume", "shell"] {
        let oracle = cov["oracle"][p].as_f64().unwrap();
        assert!(oracle <= 1.0 + 1e-9, "{c}");
        for choice in ["top1", "render_match"] {
            let v = cov[choice][p].as_f64().unwrap();
            assert!((0.0..=oracle + 1e-9).contains(&v), "{choice} {p}: {c}");
        }
    }
    let e = ok_json(&rag(&[
        "eval",
        "--corpus",
        s(&corpus),
        "--index",
        s(&index),
        "--mode",
        "retrieval",
        "--limit",
        "4",
        "--json",
    ]));
    for (p, key) in [
        ("volume", "volume_iou_mean_all"),
        ("shell", "shell_iou_mean_all"),
    ] {
        let (top1, eval) = (cov["top1"][p].as_f64().unwrap(), e[key].as_f64().unwrap());
        assert!(
            (top1 - eval).abs() < 1e-6,
            "{p}: bench {top1} vs eval {eval}"
        );
    }
    for key in ["by_sketch_count", "by_bodies"] {
        let groups = e["breakdown"][key].as_array().unwrap();
        let n: u64 = groups.iter().map(|g| g["n"].as_u64().unwrap()).sum();
        assert_eq!(n, 4, "{key}: {e}");
        assert!(groups.iter().all(|g| g["group"] != "unknown"), "{e}");
    }
    fails_with(
        &rag(&[
            "bench",
            "coverage",
            "--corpus",
            s(&corpus),
            "--index",
            s(&tmp.path().join("no-such-index")),
        ]),
        "no-such-index",
    );
}

/// A real-dev-style folder (`<id>.png` + `dev.jsonl`, split "test") is read as it is by eval
/// and the coverage bench; a missing image or a malformed line is an error naming the file
/// and the line, never a silently shorter run.
#[test]
fn a_dev_folder_is_read_in_place_and_its_faults_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (corpus, index, _) = setup(tmp.path());
    let dev = tmp.path().join("dev");
    std::fs::create_dir(&dev).unwrap();
    let rows: Vec<_> = CorpusReader::open(&corpus)
        .unwrap()
        .rows(Split::Test)
        .take(2)
        .map(|r| r.unwrap())
        .collect();
    let mut lines = String::new();
    for (i, r) in rows.iter().enumerate() {
        std::fs::write(dev.join(format!("q{i}.png")), &r.image_png).unwrap();
        lines.push_str(
            &serde_json::json!({"id": format!("q{i}"), "code": r.cadquery, "split": "test"})
                .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(dev.join("dev.jsonl"), &lines).unwrap();
    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--corpus",
            s(&dev),
            "--index",
            s(&index),
            "--mode",
            "retrieval",
        ];
        a.extend_from_slice(extra);
        rag(&a)
    };
    let (sheet, answers) = (tmp.path().join("sheet.png"), tmp.path().join("answers"));
    let e = ok_json(&eval(&[
        "--json",
        "--sheet",
        s(&sheet),
        "--answers",
        s(&answers),
    ]));
    assert_eq!(e["n"], 2, "{e}");
    // The sheet: per query, query | retrieval answer | ground truth at 224 px.
    let sheet = image::open(&sheet).unwrap();
    assert!(sheet.width() >= 3 * 224 && sheet.height() >= 2 * 224);
    for q in ["q0", "q1"] {
        let code = std::fs::read_to_string(answers.join("retrieval").join(format!("{q}.py")));
        assert!(code.unwrap().contains("cq.Workplane"), "{q}");
    }
    let cov = &ok_json(&rag(&[
        "bench",
        "coverage",
        "--corpus",
        s(&dev),
        "--index",
        s(&index),
        "--k",
        "2",
        "--json",
    ]))["indices"][0];
    assert_eq!(cov["queries"], 2, "{cov}");

    std::fs::remove_file(dev.join("q1.png")).unwrap();
    fails_with(&eval(&[]), "q1.png");
    fails_with(
        &rag(&[
            "bench",
            "coverage",
            "--corpus",
            s(&dev),
            "--index",
            s(&index),
        ]),
        "q1.png",
    );
    let first = lines.lines().next().unwrap();
    std::fs::write(dev.join("dev.jsonl"), format!("{first}\n{{oops\n")).unwrap();
    fails_with(&eval(&[]), "dev.jsonl: line 2");
}

#[test]
fn the_fitted_search_adds_candidates_that_cadquery_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let (corpus, index, query) = setup(tmp.path());

    let code = tmp.path().join("fitted.py");
    let o = rag(&[
        "generate",
        s(&query),
        "--index",
        s(&index),
        "--fit",
        "--fit-structures",
        "20",
        "--fit-levels",
        "--explain",
        "--out",
        s(&code),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("CHOSEN").count(), 1, "{err}");
    assert!(err.contains("fitted search: 20 structures"), "{err}");
    assert!(err.contains("kept neighbour"), "{err}");
    assert!(
        err.contains(", fitted ("),
        "a fitted candidate is listed: {err}"
    );
    let o = rag(&["render", s(&code), "--out", s(&tmp.path().join("a.png"))]);
    assert!(o.status.success(), "the answer runs: {}", stderr(&o));

    // No time at all: the structures are scored as retrieved, and it still answers.
    let o = rag(&[
        "generate",
        s(&query),
        "--index",
        s(&index),
        "--fit",
        "--fit-seconds",
        "0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cq.Workplane"));

    // eval --mode fit: every query answered, the fitted candidates executed in the sandbox,
    // and the search's budget respected.
    let per_item = tmp.path().join("items.jsonl");
    let e = ok_json(&rag(&[
        "eval",
        "--corpus",
        s(&corpus),
        "--index",
        s(&index),
        "--mode",
        "retrieval,fit",
        "--limit",
        "4",
        "--fit-structures",
        "10",
        "--fit-budget",
        "30",
        "--per-item",
        s(&per_item),
        "--json",
    ]));
    let fit = &e["modes"][1];
    assert_eq!(fit["mode"], "fit");
    assert_eq!(fit["vsr"], 1.0, "{fit}");
    let sel = &fit["selection"];
    let sum: u64 = [
        "chosen_model",
        "chosen_neighbour",
        "chosen_refined",
        "chosen_fitted",
    ]
    .iter()
    .map(|k| sel[k].as_u64().unwrap())
    .sum();
    assert_eq!(sum, 4, "{fit}");
    let items = std::fs::read_to_string(&per_item).unwrap();
    let mut fitted_checked = 0;
    for line in items.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["mode"] != "fit" {
            continue;
        }
        let f = &v["selection"]["fitted_search"];
        assert_eq!(f["structures"], 10, "{v}");
        // Each structure once, its variants once each, and at most 30 per fitted structure.
        assert!(f["renders"].as_u64().unwrap() <= 10 * 13 + 8 * 30, "{v}");
        for c in v["selection"]["candidates"].as_array().unwrap() {
            if c["source"]["kind"] == "fitted" {
                assert_ne!(c["status"], "", "{c}");
                fitted_checked += 1;
            }
        }
    }
    assert!(fitted_checked >= 1, "{items}");
}
