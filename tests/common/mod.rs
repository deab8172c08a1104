//! Helpers shared by the end-to-end tests that run the real `rag` binary.

// Each test crate compiles this module and uses only some of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `rag` with these arguments and waits for it.
pub fn rag(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rag"))
        .args(args)
        .output()
        .expect("rag runs")
}

/// The command's stderr as text, for assertion messages.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Starts `cmd` with its output discarded, sends it SIGINT (Ctrl-C) as soon as `marker` exists
/// (what a long job writes at its first save), and returns the exit code it ends with.
pub fn interrupt_once_written(cmd: &mut Command, marker: &Path) -> Option<i32> {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{} was never written",
            marker.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    child.wait().unwrap().code()
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test paths")
}

/// The command succeeded and printed one JSON object on stdout.
pub fn ok_json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).expect("one JSON object on stdout")
}

/// The command failed and its stderr mentions `needle`.
pub fn fails_with(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected a failure mentioning {needle:?}"
    );
    let err = stderr(o);
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

/// Synthesises a corpus of `n` rows into `out` with `rag dataset synth` (seeded; `val` and
/// `test` are the split shares), asserting it succeeds.
pub fn synth_corpus(out: &Path, n: &str, seed: &str, val: &str, test: &str) {
    let o = rag(&[
        "dataset",
        "synth",
        "--n",
        n,
        "--seed",
        seed,
        "--val",
        val,
        "--test",
        test,
        "--out",
        s(out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A file's bytes, naming the file when it cannot be read.
pub fn file(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
}
