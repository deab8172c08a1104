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

/// Headless Chromium: `CADRAG_CHROMIUM`, else `chromium` on PATH (Debian's package; `.ci/run`
/// installs it). Panics with the fix when neither is there: a report test is never skipped.
pub fn chromium() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("CADRAG_CHROMIUM") {
        return p.into();
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("the report test needs headless Chromium: `apt-get install chromium` (Debian), or set CADRAG_CHROMIUM to its binary")
    })
}

/// Opens `page` in headless Chromium with `extra` (`--dump-dom`, `--screenshot=...`) and
/// returns stdout; flags keep it off the network and out of the user's profile.
pub fn in_chromium(page: &Path, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let o = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url)
        .output()
        .expect("chromium starts");
    assert!(o.status.success(), "chromium failed: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Checks an `rag eval --report` page in Chromium: every image loads (the page's own check,
/// read back from the DOM), the comparison table has a row per mode, and a screenshot shows
/// the table and the renders (part-grey pixels). Returns the number of images.
pub fn check_report(dir: &Path, modes: &[&str]) -> usize {
    let page = dir.join("index.html");
    let dom = in_chromium(&page, &["--dump-dom"]);
    let check = dom
        .split("id=\"image-check\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_else(|| panic!("no image check in the DOM: {dom}"));
    let (loaded, total) = check
        .strip_prefix("images loaded: ")
        .and_then(|r| r.split_once(" of "))
        .unwrap_or_else(|| panic!("the page's image check did not run: {check:?}"));
    assert_eq!(loaded, total, "not every image loaded: {check}");
    let images: usize = total.parse().unwrap();
    let table = dom
        .split("id=\"comparison\"")
        .nth(1)
        .and_then(|r| r.split("</table>").next())
        .expect("comparison table");
    for m in modes {
        assert!(
            table.contains(&format!("<td class=\"l\">{m}</td>")),
            "no {m} row in {table}"
        );
    }
    let shot_dir = tempfile::tempdir().unwrap();
    let shot = shot_dir.path().join("shot.png");
    in_chromium(
        &page,
        &[
            "--window-size=1100,2600",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let img = image::open(&shot).expect("screenshot decodes").to_rgb8();
    let grey = img.pixels().filter(|p| p.0 == [141, 141, 138]).count();
    let dark_text = img.pixels().filter(|p| p.0.iter().all(|&c| c < 80)).count();
    assert!(
        grey > 2_000,
        "the screenshot shows no rendered part faces ({grey} part-grey pixels)"
    );
    assert!(
        dark_text > 2_000,
        "the screenshot shows almost no text or edges"
    );
    images
}

/// `rag index build` of a corpus's train split with the pixel encoder, plus `extra` flags.
pub fn pixel_index(corpus: &Path, index: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "index",
        "build",
        "--corpus",
        s(corpus),
        "--encoder",
        "pixel",
        "--out",
        s(index),
    ];
    args.extend_from_slice(extra);
    rag(&args)
}
