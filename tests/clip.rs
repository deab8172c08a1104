//! End-to-end: `rag train clip` on a real synthetic corpus (fresh, stopped and resumed exactly,
//! interrupted with Ctrl-C and resumed), then `rag index build --encoder CHECKPOINT` and
//! `rag search` with the trained image tower. Needs the CadQuery environment (the corpus is
//! synthesised through it).

mod common;

use common::{file, interrupt_once_written, ok_json, rag, s, stderr, synth_corpus};
use std::path::Path;
use std::process::Command;

use indexer::corpus::{CorpusReader, Split};

/// The tiny model on a tiny corpus: seconds per run.
fn train_args<'a>(corpus: &'a Path, out: &'a Path, epochs: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "clip",
        "--corpus",
        s(corpus),
        "--out",
        s(out),
        "--size",
        "tiny",
        "--epochs",
        epochs,
        "--batch",
        "8",
        "--vocab",
        "300",
        "--checkpoint-every",
        "2",
        "--json",
    ]
}

/// [`train_args`] with the convolutional image tower.
fn conv_train_args<'a>(corpus: &'a Path, out: &'a Path, epochs: &'a str) -> Vec<&'a str> {
    let mut args = train_args(corpus, out, epochs);
    args.extend(["--image-tower", "conv"]);
    args
}

/// Indexes the corpus's train split with `encoder` into `index`, then searches it for `k`
/// neighbours of the image of train row `row` (written to `query`); returns the build report,
/// the search report and the row's id.
fn index_and_search(
    corpus: &Path,
    encoder: &Path,
    index: &Path,
    query: &Path,
    row: usize,
    k: &str,
) -> (serde_json::Value, serde_json::Value, String) {
    let build = ok_json(&rag(&[
        "index",
        "build",
        "--corpus",
        s(corpus),
        "--encoder",
        s(encoder),
        "--out",
        s(index),
        "--json",
    ]));
    let reader = CorpusReader::open(corpus).unwrap();
    let row = reader.rows(Split::Train).nth(row).unwrap().unwrap();
    std::fs::write(query, &row.image_png).unwrap();
    let found = ok_json(&rag(&[
        "search",
        s(query),
        "--index",
        s(index),
        "--json",
        "-k",
        k,
    ]));
    (build, found, row.deepcad_id)
}

#[test]
fn train_resume_index_and_search_with_a_trained_clip() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    synth_corpus(&corpus, "60", "5", "0.15", "0.05");
    let reader = CorpusReader::open(&corpus).unwrap();
    let n_train = reader.num_rows(Split::Train);
    assert!(n_train >= 40, "{n_train} train rows");

    // A straight run.
    let straight = tmp.path().join("straight");
    let report = ok_json(&rag(&train_args(&corpus, &straight, "3")));
    let state = &report["state"];
    let steps = (n_train / 8) * 3;
    assert_eq!(state["total_steps"], steps);
    assert_eq!(state["step"], steps);
    assert_eq!(report["steps_this_run"], steps);
    assert_eq!(report["interrupted"], false);
    assert_eq!(state["pairs"], n_train);
    assert!(!state["loss_curve"].as_array().unwrap().is_empty());
    let val = &state["validation"];
    assert!(val["pairs"].as_u64().unwrap() >= 2, "{val}");
    let r1 = val["image_to_code_r1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r1));
    // The tiny text tower reads 127 tokens, four per position; the run says how much fits.
    let config: serde_json::Value =
        serde_json::from_slice(&file(&straight, "config.json")).unwrap();
    assert_eq!(config["text_config"]["tokens_per_position"], 4);
    let lengths = &state["code_tokens"];
    assert_eq!(lengths["window"], 127, "{lengths}");
    let (median, p90) = (
        lengths["median"].as_u64().unwrap(),
        lengths["p90"].as_u64().unwrap(),
    );
    assert!(median > 20 && median <= p90, "{lengths}");
    for f in [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
        "tokenizer.json",
        "training.json",
        "optimizer.safetensors",
    ] {
        assert!(straight.join(f).is_file(), "{f}");
    }

    // Stopped after 2 steps, then resumed: the same weights, bit for bit.
    let split = tmp.path().join("split");
    let mut first = train_args(&corpus, &split, "3");
    first.extend(["--max-steps", "2"]);
    let part = ok_json(&rag(&first));
    assert_eq!(part["state"]["step"], 2);
    let rest = ok_json(&rag(&train_args(&corpus, &split, "3")));
    assert_eq!(rest["resumed_from"], 2);
    assert_eq!(rest["steps_this_run"], steps - 2);
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "optimizer.safetensors",
    ] {
        assert!(
            file(&split, f) == file(&straight, f),
            "{f} differs after a resume"
        );
    }

    // Other settings on a started folder are refused, not mixed in.
    let clash = rag(&train_args(&corpus, &split, "4"));
    assert!(!clash.status.success());
    assert!(
        stderr(&clash).contains("other settings"),
        "{}",
        stderr(&clash)
    );

    // Ctrl-C once a checkpoint exists: exit 130, then the same command finishes the run.
    let long = tmp.path().join("long");
    let mut long_run = Command::new(env!("CARGO_BIN_EXE_rag"));
    long_run.args(train_args(&corpus, &long, "400"));
    let code = interrupt_once_written(&mut long_run, &long.join("training.json"));
    assert_eq!(code, Some(130), "Ctrl-C exits 130");
    let saved: serde_json::Value = serde_json::from_slice(&file(&long, "training.json")).unwrap();
    let at = saved["step"].as_u64().unwrap();
    let total = saved["total_steps"].as_u64().unwrap();
    assert!(at < total, "stopped at {at} of {total}");
    let done = ok_json(&rag(&train_args(&corpus, &long, "400")));
    assert_eq!(done["resumed_from"], at);
    assert_eq!(done["state"]["step"], total);

    // Index the corpus with the trained image tower and search it.
    let index = tmp.path().join("indices").join("clip");
    let query = tmp.path().join("query.png");
    let (build, found, id) = index_and_search(&corpus, &straight, &index, &query, n_train / 2, "3");
    assert_eq!(build["vectors"], n_train);
    let manifest: serde_json::Value =
        serde_json::from_slice(&file(&index, "manifest.json")).unwrap();
    assert_eq!(manifest["encoder"]["id"], "clip:straight");
    assert_eq!(manifest["dims"], 32);
    let hits = found["neighbours"].as_array().unwrap();
    assert_eq!(hits.len(), 3, "{found}");
    let top = hits[0]["score"].as_f64().unwrap();
    assert!(
        top > 0.999,
        "an indexed image finds itself at cosine ~1: {found}"
    );
    assert!(
        hits.iter().any(|h| h["id"] == id.as_str()),
        "{id} among {found}"
    );

    // A folder that is not a checkpoint is refused by name.
    let empty = tmp.path().join("not-a-checkpoint");
    std::fs::create_dir(&empty).unwrap();
    let bad = rag(&[
        "index",
        "build",
        "--corpus",
        s(&corpus),
        "--encoder",
        s(&empty),
        "--out",
        s(&tmp.path().join("bad")),
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("config.json"), "{}", stderr(&bad));
}

#[test]
fn shape_signatures_feed_the_shape_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    synth_corpus(&corpus, "40", "9", "0.1", "0.1");
    let n_train = CorpusReader::open(&corpus).unwrap().num_rows(Split::Train);
    let out = tmp.path().join("shaped");
    let mut args = train_args(&corpus, &out, "2");
    args.extend(["--shape-weight", "1"]);

    // A negative weight is refused before anything is read.
    let mut negative = train_args(&corpus, &out, "2");
    negative.push("--shape-weight=-1");
    let refused = rag(&negative);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--shape-weight must be 0 (off) or positive"),
        "{}",
        stderr(&refused)
    );

    // Without signatures the run says which command makes them.
    let missing = rag(&args);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("rag dataset shapes"),
        "{}",
        stderr(&missing)
    );

    let shapes = ["dataset", "shapes", "--corpus", s(&corpus), "--json"];
    let first = ok_json(&rag(&shapes));
    assert_eq!(first["rows"], n_train);
    assert_eq!(first["computed"], n_train);
    assert_eq!(first["failed"], 0, "synthetic programs all run: {first}");
    assert!(first["mean_voxels"].as_f64().unwrap() > 50.0, "{first}");
    assert!(corpus.join("shapes/train-00000.parquet").is_file());
    // A rerun finds them stored and executes nothing.
    let again = ok_json(&rag(&shapes));
    assert_eq!(
        (again["resumed"].clone(), again["computed"].clone()),
        (n_train.into(), 0.into())
    );

    // With the validation split's signatures too, validation says how alike each held-out
    // image's nearest neighbour is.
    ok_json(&rag(&[
        "dataset",
        "shapes",
        "--corpus",
        s(&corpus),
        "--split",
        "validation",
        "--json",
    ]));
    let report = ok_json(&rag(&args));
    let state = &report["state"];
    assert_eq!(state["settings"]["shape_weight"], 1.0);
    let agreement = state["validation"]["neighbour_shape"].as_f64().unwrap();
    assert!(agreement > 0.0 && agreement <= 1.0, "{state}");
    let pixel = state["validation"]["pixel_neighbour_shape"]
        .as_f64()
        .unwrap();
    assert!(pixel > 0.0 && pixel <= 1.0, "{state}");
    let curve = state["shape_loss_curve"].as_array().unwrap();
    assert!(!curve.is_empty(), "{state}");
    for point in curve {
        let l = point[1].as_f64().unwrap();
        assert!(l.is_finite() && l > 0.0 && l < 50.0, "{point}");
    }
    assert_eq!(
        state["loss_curve"].as_array().unwrap().len(),
        curve.len(),
        "both losses are logged at the same steps"
    );
}

#[test]
fn the_conv_image_tower_trains_resumes_and_indexes() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    synth_corpus(&corpus, "40", "13", "0.1", "0.1");
    let n_train = CorpusReader::open(&corpus).unwrap().num_rows(Split::Train);

    let straight = tmp.path().join("straight");
    let report = ok_json(&rag(&conv_train_args(&corpus, &straight, "2")));
    assert_eq!(report["state"]["settings"]["image_tower"], "conv");
    let config: serde_json::Value =
        serde_json::from_slice(&file(&straight, "config.json")).unwrap();
    assert_eq!(
        config["vision_config"]["conv_widths"],
        serde_json::json!([8, 16, 32]),
        "{config}"
    );
    assert!(
        report["state"]["validation"]["image_to_code_r1"].is_f64(),
        "{report}"
    );

    // Stopped and resumed: the same weights as the straight run; the ViT on a conv run's
    // folder is refused as other settings.
    let split = tmp.path().join("split");
    let mut first = conv_train_args(&corpus, &split, "2");
    first.extend(["--max-steps", "1"]);
    assert_eq!(ok_json(&rag(&first))["state"]["step"], 1);
    let vit = rag(&train_args(&corpus, &split, "2"));
    assert!(!vit.status.success());
    assert!(stderr(&vit).contains("other settings"), "{}", stderr(&vit));
    ok_json(&rag(&conv_train_args(&corpus, &split, "2")));
    assert!(
        file(&split, "model.safetensors") == file(&straight, "model.safetensors"),
        "the resumed conv run differs from the straight one"
    );

    // The index reads the conv tower from config.json alone.
    let index = tmp.path().join("index");
    let query = tmp.path().join("query.png");
    let (build, found, _) = index_and_search(&corpus, &straight, &index, &query, 1, "2");
    assert_eq!(build["vectors"], n_train);
    let top = &found["neighbours"][0];
    assert!(
        top["score"].as_f64().unwrap() > 0.999,
        "an indexed image finds itself: {found}"
    );
}
