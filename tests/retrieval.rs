//! End-to-end: `rag index build` on a real synthetic corpus, `rag search`, `rag generate
//! --retrieval-only`, `rag eval --mode retrieval`, and every error path the issue lists.
//! Needs the CadQuery environment (the corpus is synthesised and scored through it).

mod common;

use common::{fails_with, in_chromium, ok_json, pixel_index, rag, s, stderr, synth_corpus};
use std::path::{Path, PathBuf};
use std::process::Output;

use indexer::corpus::{CorpusReader, Split};

/// (id, code, png bytes) of a split's rows.
fn split_rows(dir: &Path, split: Split) -> Vec<(String, String, Vec<u8>)> {
    let reader = CorpusReader::open(dir).unwrap();
    reader
        .rows(split)
        .map(|r| {
            let r = r.unwrap();
            (r.deepcad_id, r.cadquery, r.image_png)
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn search(index: &Path, image: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["search", s(image), "--index", s(index), "--json"];
    args.extend_from_slice(extra);
    rag(&args)
}

#[test]
fn index_search_generate_and_eval_on_a_synthetic_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    synth_corpus(&corpus, "24", "3", "0.1", "0.2");
    let train = split_rows(&corpus, Split::Train);
    assert!(train.len() >= 10);

    // Build.
    let index = tmp.path().join("indices").join("pix");
    let build = ok_json(&pixel_index(&corpus, &index, &["--json"]));
    assert_eq!(build["vectors"], train.len());
    assert_eq!(build["skipped"], 0);
    assert!(build["images_per_second"].as_f64().unwrap() > 0.0);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(index.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["format_version"], 1);
    assert_eq!(manifest["encoder"]["id"], "pixel-32");
    assert_eq!(manifest["dims"], 1024);
    assert_eq!(manifest["metric"], "cosine");
    assert_eq!(manifest["counts"]["vectors"], train.len());
    assert_eq!(manifest["corpus"]["split"], "train");
    assert_eq!(
        manifest["corpus"]["content_hash"].as_str().unwrap().len(),
        16
    );
    for f in [
        "hnsw.hnsw.graph",
        "hnsw.hnsw.data",
        "store.jsonl",
        "thumbs.bin",
        "tantivy",
    ] {
        assert!(index.join(f).exists(), "{f}");
    }
    assert!(manifest["files"]["thumbs.bin"]["checksum"].is_string());

    // A build stopped part-way keeps its progress beside the target and the same command
    // finishes it: the same store and content hash as the straight build, nothing left over.
    let staged = tmp.path().join("staging").join("staged");
    let partial = tmp.path().join("staging").join("staged.partial");
    let stop = pixel_index(&corpus, &staged, &["--batch", "4", "--stop-after", "5"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
    assert!(
        stderr(&stop).contains("rerun the same command to resume"),
        "{}",
        stderr(&stop)
    );
    assert!(!staged.exists() && partial.join("progress.json").is_file());
    let progress: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(partial.join("progress.json")).unwrap())
            .unwrap();
    assert_eq!(progress["read"], 8, "two batches of 4");
    let again = pixel_index(&corpus, &staged, &["--batch", "4", "--stop-after", "5"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let rest = ok_json(&pixel_index(&corpus, &staged, &["--batch", "4", "--json"]));
    assert_eq!(rest["vectors"], train.len());
    assert!(
        !partial.exists(),
        "the partial build is removed once the index is in place"
    );
    let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read(&staged, "store.jsonl"), read(&index, "store.jsonl"));
    assert!(
        std::fs::read(staged.join("thumbs.bin")).unwrap()
            == std::fs::read(index.join("thumbs.bin")).unwrap(),
        "resumed thumbnails differ"
    );
    let m: serde_json::Value = serde_json::from_str(&read(&staged, "manifest.json")).unwrap();
    assert_eq!(
        m["corpus"]["content_hash"],
        manifest["corpus"]["content_hash"]
    );
    // Progress made for other inputs (another limit) is not mixed in.
    let other = tmp.path().join("staging").join("other");
    let first = pixel_index(
        &corpus,
        &other,
        &["--batch", "4", "--stop-after", "4", "--limit", "9"],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let whole = ok_json(&pixel_index(&corpus, &other, &["--batch", "4", "--json"]));
    assert_eq!(whole["vectors"], train.len());
    assert_eq!(read(&other, "store.jsonl"), read(&index, "store.jsonl"));

    // A query image that is in the index comes back first with score ~1.
    let (qid, qcode, qpng) = &train[train.len() / 2];
    let query = tmp.path().join("query.png");
    std::fs::write(&query, qpng).unwrap();
    let v = ok_json(&search(&index, &query, &["-k", "3"]));
    let ns = v["neighbours"].as_array().unwrap();
    assert_eq!(ns.len(), 3);
    assert_eq!(ns[0]["id"], qid.as_str());
    assert_eq!(ns[0]["rank"], 1);
    assert!(
        ns[0]["score"].as_f64().unwrap() > 0.999,
        "{}",
        ns[0]["score"]
    );
    assert!(
        ns[1]["score"].as_f64().unwrap() < 0.999,
        "neighbours are other parts"
    );
    assert_eq!(ns[0]["code"], qcode.as_str());
    assert_eq!(v["encoder"], "pixel-32");

    // Brute force over the same vectors ranks every row (k = all) best first, agrees with
    // the graph on the top neighbours of this small index, and holds the same ids.
    let all = train.len().to_string();
    let exact = ok_json(&search(&index, &query, &["-k", &all, "--exact"]));
    let ex = exact["neighbours"].as_array().unwrap();
    assert_eq!(ex.len(), train.len());
    let scores: Vec<f64> = ex.iter().map(|n| n["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    let top = |set: &[serde_json::Value]| -> Vec<String> {
        set.iter().take(3).map(|n| n["id"].to_string()).collect()
    };
    assert_eq!(top(ex), top(ns));
    let mut ids: Vec<String> = ex.iter().map(|n| n["id"].to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), train.len(), "each row once");

    // The gallery page: the query and each neighbour's thumbnail load in a browser, and the
    // top neighbour's thumbnail is the query image shrunk.
    let gallery = tmp.path().join("gallery");
    let g = search(&index, &query, &["-k", "3", "--gallery", s(&gallery)]);
    assert!(g.status.success(), "{}", stderr(&g));
    let dom = in_chromium(&gallery.join("index.html"), &["--dump-dom"]);
    assert!(dom.contains("images loaded: 4 of 4"), "{dom}");
    assert!(
        dom.contains(&format!("<td class=\"l\">{qid}</td>")),
        "{dom}"
    );
    let own = image::open(gallery.join("img").join("rank-1.png"))
        .unwrap()
        .to_luma8();
    let q = image::open(gallery.join("img").join("query.png"))
        .unwrap()
        .to_luma8();
    assert_eq!(own.dimensions(), (96, 96));
    assert_eq!(own, q, "the stored thumbnail of the query's own row");

    // Grey, RGBA and resized versions of it are converted, not refused, and still match.
    let rgb = image::load_from_memory(qpng).unwrap();
    let variants = [
        ("grey.png", image::DynamicImage::ImageLuma8(rgb.to_luma8())),
        ("rgba.png", image::DynamicImage::ImageRgba8(rgb.to_rgba8())),
        (
            "small.png",
            rgb.resize_exact(300, 300, image::imageops::FilterType::Triangle),
        ),
    ];
    for (name, img) in variants {
        let p = tmp.path().join(name);
        img.save(&p).unwrap();
        let v = ok_json(&search(&index, &p, &["-k", "1"]));
        assert_eq!(v["neighbours"][0]["id"], qid.as_str(), "{name}");
        assert!(
            v["neighbours"][0]["score"].as_f64().unwrap() > 0.98,
            "{name}"
        );
    }

    // The pixel + oriented-gradient index (the one recommended for real images): the manifest
    // names both parts, search rebuilds the encoder from it, and the query and its resized
    // copy both find the query's own row first.
    let hog = tmp.path().join("pixel-hog");
    let b = ok_json(&rag(&[
        "index",
        "build",
        "--corpus",
        s(&corpus),
        "--encoder",
        "pixel+hog",
        "--out",
        s(&hog),
        "--json",
    ]));
    assert_eq!(b["vectors"], train.len());
    for q in [query.clone(), tmp.path().join("small.png")] {
        let v = ok_json(&search(&hog, &q, &["-k", "2"]));
        assert_eq!(v["encoder"], "pixel-32+hog-16");
        assert_eq!(v["neighbours"][0]["id"], qid.as_str(), "{}", q.display());
        assert!(v["neighbours"][0]["score"].as_f64().unwrap() > 0.95);
        assert!(v["neighbours"][1]["score"].as_f64().unwrap() < 0.999);
    }

    // Keyword filter: every neighbour uses the required token, and all that do are found.
    let token = ["cut", "union", "circle", "threePointArc"]
        .into_iter()
        .find(|t| {
            let c = train
                .iter()
                .filter(|r| r.1.contains(&format!(".{t}(")))
                .count();
            c > 0 && c < train.len()
        })
        .expect("some dialect token splits the training rows");
    let with = train
        .iter()
        .filter(|r| r.1.contains(&format!(".{token}(")))
        .count();
    let v = ok_json(&search(&index, &query, &["-k", "50", "--require", token]));
    let ns = v["neighbours"].as_array().unwrap();
    assert_eq!(ns.len(), with, "--require {token}");
    assert!(ns
        .iter()
        .all(|n| n["code"].as_str().unwrap().contains(&format!(".{token}("))));

    // generate --retrieval-only writes the top-1 neighbour's code.
    let code_out = tmp.path().join("code.py");
    let g = rag(&[
        "generate",
        s(&query),
        "--index",
        s(&index),
        "--retrieval-only",
        "--out",
        s(&code_out),
    ]);
    assert!(g.status.success(), "{}", stderr(&g));
    assert_eq!(std::fs::read_to_string(&code_out).unwrap(), *qcode);
    fails_with(
        &rag(&["generate", s(&query), "--index", s(&index)]),
        "--retrieval-only",
    );

    // eval on the test split: the evaluator's fields, latency, and an honest recall.
    let e = ok_json(&rag(&[
        "eval",
        "--corpus",
        s(&corpus),
        "--split",
        "test",
        "--index",
        s(&index),
        "--mode",
        "retrieval",
        "--limit",
        "3",
        "--json",
    ]));
    assert_eq!(e["n"], 3);
    assert_eq!(e["mode"], "retrieval");
    let vsr = e["vsr"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&vsr));
    assert!(vsr > 0.0, "neighbour code from the corpus runs");
    for k in [
        "shell_iou_mean_valid",
        "shell_iou_mean_all",
        "volume_iou_mean_valid",
        "volume_iou_mean_all",
    ] {
        let x = e[k].as_f64().unwrap_or_else(|| panic!("{k}: {e}"));
        assert!((0.0..=1.0).contains(&x), "{k} {x}");
    }
    assert!(e["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(e["latency_ms"]["p95"].as_f64().unwrap() >= e["latency_ms"]["p50"].as_f64().unwrap());
    assert_eq!(e["latency_ms"]["queries"], 3);
    assert_eq!(
        e["recall"]["queries_with_exact_match"], 0,
        "synth has no duplicates"
    );
    assert!(e["recall"]["at_1"].is_null());
    assert!(e["recall"]["note"].as_str().unwrap().starts_with("n/a"));

    // eval on the indexed split itself: every query has its exact shape in the index, the
    // top-1 is that shape, and the metrics see identical parts.
    let e = ok_json(&rag(&[
        "eval",
        "--corpus",
        s(&corpus),
        "--split",
        "train",
        "--index",
        s(&index),
        "--mode",
        "retrieval",
        "--limit",
        "3",
        "--json",
    ]));
    assert_eq!(e["recall"]["queries_with_exact_match"], 3);
    assert_eq!(e["recall"]["at_1"], 1.0);
    assert_eq!(e["vsr"], 1.0);
    assert!(e["volume_iou_mean_valid"].as_f64().unwrap() > 0.99, "{e}");
    assert!(e["shell_iou_mean_valid"].as_f64().unwrap() > 0.99, "{e}");

    // Errors on queries and indices.
    fails_with(
        &search(&index, &tmp.path().join("missing.png"), &[]),
        "cannot read image",
    );
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"no image here").unwrap();
    fails_with(&search(&index, &junk, &[]), "not a readable PNG/JPEG");
    fails_with(
        &search(&index, &query, &["--encoder", "pixel-16"]),
        "built with encoder pixel-32",
    );
    fails_with(
        &search(&tmp.path().join("indices").join("nope"), &query, &[]),
        "no index here",
    );
    let damaged = |name: &str, harm: &dyn Fn(&Path), needle: &str| {
        let d = tmp.path().join(name);
        copy_dir(&index, &d);
        harm(&d);
        fails_with(&search(&d, &query, &[]), needle);
    };
    damaged(
        "truncated",
        &|d| {
            let p = d.join("hnsw.hnsw.data");
            let len = std::fs::metadata(&p).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len / 2).unwrap();
        },
        "corrupt index file",
    );
    damaged(
        "flipped",
        &|d| {
            let p = d.join("hnsw.hnsw.graph");
            let mut b = std::fs::read(&p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0xff;
            std::fs::write(&p, b).unwrap();
        },
        "checksum",
    );
    damaged(
        "nostore",
        &|d| std::fs::remove_file(d.join("store.jsonl")).unwrap(),
        "missing index file",
    );
    damaged(
        "nothumbs",
        &|d| std::fs::remove_file(d.join("thumbs.bin")).unwrap(),
        "missing index file",
    );
    damaged(
        "notantivy",
        &|d| std::fs::remove_dir_all(d.join("tantivy")).unwrap(),
        "tantivy",
    );
    damaged(
        "nomanifest",
        &|d| std::fs::remove_file(d.join("manifest.json")).unwrap(),
        "manifest.json: missing index file",
    );
    let edit_manifest = |d: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = d.join("manifest.json");
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut m);
        std::fs::write(&p, m.to_string()).unwrap();
    };
    damaged(
        "otherencoder",
        &|d| edit_manifest(d, &|m| m["encoder"]["hash"] = "0123456789abcdef".into()),
        "0123456789abcdef",
    );
    damaged(
        "otherversion",
        &|d| edit_manifest(d, &|m| m["format_version"] = 7.into()),
        "format version 7",
    );

    // Rebuilding into the same folder replaces it whole and leaves nothing beside it.
    let again = ok_json(&pixel_index(&corpus, &index, &["--limit", "5", "--json"]));
    assert_eq!(again["vectors"], 5);
    let left: Vec<PathBuf> = std::fs::read_dir(index.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, vec![index.clone()], "no tmp/old folders left");
    let v = ok_json(&search(&index, &query, &["-k", "10"]));
    assert_eq!(v["neighbours"].as_array().unwrap().len(), 5);
    // A failed rebuild (unknown split rows: empty) leaves the old index usable.
    let empty_split = pixel_index(&corpus, &index, &["--limit", "0"]);
    fails_with(&empty_split, "no usable rows");
    assert!(search(&index, &query, &[]).status.success());
}

#[test]
fn index_build_names_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("idx");
    let build = |corpus: &Path, encoder: &str, out: &Path| {
        rag(&[
            "index",
            "build",
            "--corpus",
            s(corpus),
            "--encoder",
            encoder,
            "--out",
            s(out),
        ])
    };
    // Empty corpus folder, and a corpus with no rows.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    fails_with(&build(&empty, "pixel", &out), "no corpus found");
    let norows = tmp.path().join("norows");
    std::fs::create_dir(&norows).unwrap();
    std::fs::write(norows.join("rows.jsonl"), "").unwrap();
    fails_with(&build(&norows, "pixel", &out), "the corpus has no rows");
    // An image that does not decode is skipped with a warning; nothing left is an error.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("rows.jsonl"),
        "{\"id\": \"a\", \"code\": \"x = 1\"}\n",
    )
    .unwrap();
    std::fs::write(bad.join("a.png"), b"not a png").unwrap();
    let o = build(&bad, "pixel", &out);
    fails_with(&o, "no usable rows");
    assert!(
        stderr(&o).contains("image does not decode"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "a failed build leaves nothing behind");
    // A png+jsonl corpus with one good (grey, non-448) image builds.
    image::GrayImage::from_fn(200, 120, |x, _| {
        image::Luma([if x < 100 { 60 } else { 255 }])
    })
    .save(bad.join("b.png"))
    .unwrap();
    std::fs::write(
        bad.join("rows.jsonl"),
        "{\"id\": \"a\", \"code\": \"x = 1\"}\n{\"id\": \"b\", \"code\": \"y = 2\"}\n",
    )
    .unwrap();
    let v = ok_json(&rag(&[
        "index",
        "build",
        "--corpus",
        s(&bad),
        "--encoder",
        "pixel",
        "--out",
        s(&out),
        "--json",
    ]));
    assert_eq!(v["vectors"], 1);
    assert_eq!(v["skipped"], 1);
    // Encoders: a folder that is not a CLIP checkpoint is refused clearly; junk specs are named.
    fails_with(
        &build(&bad, s(tmp.path()), &tmp.path().join("x")),
        "not a CLIP checkpoint folder (no config.json)",
    );
    fails_with(
        &build(&bad, "resnet", &tmp.path().join("x")),
        "unknown encoder `resnet`",
    );
    // A folder that is not an index is never replaced.
    fails_with(&build(&bad, "pixel", &bad), "not an index folder");
    assert!(bad.join("rows.jsonl").exists());
}
