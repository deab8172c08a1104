//! Helpers shared by the end-to-end tests that run the real `rag` binary.

use std::process::{Command, Output};

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
