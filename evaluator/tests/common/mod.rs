//! Helpers shared by the evaluator's integration tests.

use std::sync::Arc;
use std::time::Duration;

use evaluator::{PythonEnv, SandboxLimits, WorkerPool};

/// Two sandboxed workers from the project's CadQuery environment; panics (the test fails,
/// never skips) when `rag setup` has not been run.
pub async fn pool(timeout_s: u64, memory_mb: u64) -> Arc<WorkerPool> {
    let env = PythonEnv::locate().expect("CadQuery environment (run `rag setup`)");
    let limits = SandboxLimits {
        timeout: Duration::from_secs(timeout_s),
        memory_mb,
    };
    WorkerPool::start(env, 2, limits)
        .await
        .expect("workers start")
}
