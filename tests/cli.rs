//! End-to-end: the real `rag` binary on small inputs. Scoring needs the CadQuery
//! environment (`rag setup`); these tests fail, never skip, without it.

mod common;

use common::{rag, stderr};
use std::path::Path;
use std::process::Command;

const BOX: &str = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 2, 3)\n";
const CYL: &str = "import cadquery as cq\nsolid = cq.Workplane('XY').circle(1).extrude(2)\n";

fn jsonl(dir: &Path, name: &str, rows: &[(&str, &str)]) -> String {
    let body: String = rows
        .iter()
        .map(|(id, code)| serde_json::json!({"id": id, "code": code}).to_string() + "\n")
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn score_json_reports_vsr_both_protocols_and_missing_ids() {
    let dir = tempfile::tempdir().unwrap();
    let gt = jsonl(
        dir.path(),
        "gt.jsonl",
        &[("a", BOX), ("b", CYL), ("c", BOX)],
    );
    let pred = jsonl(dir.path(), "pred.jsonl", &[("a", BOX), ("b", "solid = (")]);
    let rows = dir.path().join("rows.jsonl");
    let out = rag(&[
        "score",
        "--gt",
        &gt,
        "--pred",
        &pred,
        "--json",
        "--per-item",
        rows.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["n"], 3);
    assert_eq!(v["valid"], 1);
    assert!((v["vsr"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(v["shell_iou_mean_valid"], 1.0);
    assert!((v["shell_iou_mean_all"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    assert!((v["volume_iou_mean_valid"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(v["missing"], serde_json::json!(["c"]));
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&rows)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["id"], "b");
    assert_eq!(rows[1]["status"], "syntax");
    for key in [
        "id",
        "status",
        "message",
        "shell_iou",
        "volume_iou",
        "seconds",
    ] {
        assert!(rows[0].get(key).is_some(), "per-item row lacks {key}");
    }
}

/// `rag score` with two workers whose sandbox folders go under `tmpdir`.
fn score_with_tmpdir(gt: &str, pred: &str, tmpdir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rag"))
        .args(["score", "--gt", gt, "--pred", pred, "--workers", "2"])
        .env("TMPDIR", tmpdir)
        .output()
        .unwrap()
}

#[test]
fn workers_leave_no_sandbox_folders_behind() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("tmp");
    std::fs::create_dir(&scratch).unwrap();
    let gt = jsonl(dir.path(), "gt.jsonl", &[("a", BOX), ("b", CYL)]);
    let pred = jsonl(
        dir.path(),
        "pred.jsonl",
        &[("a", CYL), ("b", "import ctypes\nctypes.string_at(0)")],
    );
    let out = score_with_tmpdir(&gt, &pred, &scratch);
    assert!(out.status.success(), "{}", stderr(&out));
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the temp folder: {left:?}");
}

#[test]
fn an_unusable_temp_folder_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let gt = jsonl(dir.path(), "gt.jsonl", &[("a", BOX)]);
    let missing = dir.path().join("no-such-folder");
    let out = score_with_tmpdir(&gt, &gt, &missing);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("sandbox folder"), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[test]
fn protocol_flag_limits_the_fields_and_resume_reuses_rows() {
    let dir = tempfile::tempdir().unwrap();
    let gt = jsonl(dir.path(), "gt.jsonl", &[("a", BOX), ("b", CYL)]);
    let rows = dir.path().join("rows.jsonl");
    // an earlier run scored "a" (with a value we can recognise) and was killed mid-row
    std::fs::write(
        &rows,
        "{\"id\":\"a\",\"status\":\"ok\",\"message\":\"\",\"shell_iou\":0.25,\"volume_iou\":null,\"seconds\":1.0}\n{\"id\":\"b\",\"sta",
    )
    .unwrap();
    let out = rag(&[
        "score",
        "--gt",
        &gt,
        "--pred",
        &gt,
        "--protocol",
        "shell",
        "--json",
        "--per-item",
        rows.to_str().unwrap(),
        "--resume",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("volume_iou_mean_valid").is_none());
    assert!(
        (v["shell_iou_mean_valid"].as_f64().unwrap() - 0.625).abs() < 1e-9,
        "{v}"
    );
    assert!(stderr(&out).contains("resumed: 1 ids"));
    assert_eq!(std::fs::read_to_string(&rows).unwrap().lines().count(), 2);
}

#[test]
fn bad_inputs_give_specific_errors_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let good = jsonl(dir.path(), "good.jsonl", &[("a", BOX)]);
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"id\": \"a\", \"code\": \"x\"}\n{not json}\n").unwrap();
    let dup = dir.path().join("dup.jsonl");
    std::fs::write(
        &dup,
        "{\"id\": \"a\", \"code\": \"x\"}\n{\"id\": \"a\", \"code\": \"y\"}\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let cases = [
        (
            dir.path().join("nope.jsonl").display().to_string(),
            "no such file",
        ),
        (bad.display().to_string(), "bad.jsonl:2: not JSON"),
        (dup.display().to_string(), "duplicate id \"a\""),
        (empty.display().to_string(), "holds no code"),
    ];
    for (pred, want) in cases {
        let out = rag(&["score", "--gt", &good, "--pred", &pred]);
        assert!(!out.status.success(), "{pred} should fail");
        assert!(stderr(&out).contains(want), "{pred}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

#[test]
fn a_missing_environment_says_to_run_setup() {
    let dir = tempfile::tempdir().unwrap();
    let good = jsonl(dir.path(), "good.jsonl", &[("a", BOX)]);
    let out = Command::new(env!("CARGO_BIN_EXE_rag"))
        .args(["score", "--gt", &good, "--pred", &good])
        .env("CADRAG_VENV", dir.path().join("no-venv"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("run `rag setup`"), "{}", stderr(&out));
}

#[test]
fn setup_is_idempotent() {
    let out = rag(&["setup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
}
