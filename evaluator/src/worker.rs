//! One long-lived CadQuery worker process and the pool that drives several of them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, Mutex};

use crate::env::{EnvError, PythonEnv};
use crate::protocol::{DecodeError, Execution, PairExecution, RawExecution, RawPair, Status};

/// How long a fresh worker may take to import cadquery and warm up.
const STARTUP_LIMIT: Duration = Duration::from_secs(180);

/// Limits applied to every snippet.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    /// Wall-clock limit per phase (gt, pred, volume IoU), enforced with SIGKILL.
    pub timeout: Duration,
    /// Address space a snippet may add on top of the worker's own.
    pub memory_mb: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            timeout: Duration::from_secs(10),
            memory_mb: 2048,
        }
    }
}

/// Failures of the worker machinery itself (never of the snippet being run).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("could not start the CadQuery worker ({python}): {source}")]
    Spawn {
        python: PathBuf,
        source: std::io::Error,
    },
    #[error("could not create a sandbox folder for the CadQuery worker in {dir} (set TMPDIR?)")]
    SandboxDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the CadQuery worker failed to start: {0}")]
    NotReady(String),
    #[error("the CadQuery worker died or stopped answering: {0}")]
    Lost(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

#[derive(Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request<'a> {
    Exec {
        seq: u64,
        code: &'a str,
        mesh: bool,
        edges: bool,
        timeout_s: f64,
        memory_mb: u64,
    },
    SandboxSelftest {
        seq: u64,
        probe_dir: &'a str,
        timeout_s: f64,
        memory_mb: u64,
    },
    Pair {
        seq: u64,
        gt: &'a str,
        pred: &'a str,
        mesh: bool,
        volume: bool,
        all_patterns: bool,
        timeout_s: f64,
        memory_mb: u64,
    },
}

/// What to compute besides validity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wants {
    /// Tessellate (needed for the shell IoU and rendering).
    pub mesh: bool,
    /// B-rep edge polylines (rendering).
    pub edges: bool,
    /// Exact volume IoU (pairs only).
    pub volume: bool,
    /// Which sign patterns the volume IoU runs a boolean for.
    pub patterns: PatternSearch,
}

/// Which sign patterns the volume IoU runs a boolean for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatternSearch {
    /// Congruent patterns share one boolean and bounded-out ones are skipped.
    #[default]
    Shared,
    /// All four, sharing and skipping none: the definition spelled out, to check the
    /// shortcuts against.
    Every,
}

impl Wants {
    /// What the renderer needs: mesh and B-rep edges, no volume IoU.
    pub const RENDER: Wants = Wants {
        mesh: true,
        edges: true,
        volume: false,
        patterns: PatternSearch::Shared,
    };
}

/// A running worker process speaking JSON lines.
struct Worker {
    /// Killed when the worker is dropped (`kill_on_drop`), before its sandbox folder goes.
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    seq: u64,
    /// The snippets' working folder; owned here because a killed worker cannot remove it.
    _sandbox: tempfile::TempDir,
}

impl Worker {
    async fn spawn(env: &PythonEnv) -> Result<Self, WorkerError> {
        let script = env.worker_script()?;
        let python = env.python();
        let sandbox = tempfile::Builder::new()
            .prefix("cadrag-sandbox-")
            .tempdir()
            .map_err(|source| WorkerError::SandboxDir {
                dir: std::env::temp_dir(),
                source,
            })?;
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(&script)
            .env("CADRAG_SANDBOX_DIR", sandbox.path())
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| WorkerError::Spawn {
                python: python.clone(),
                source,
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = tokio::time::timeout(STARTUP_LIMIT, stdout.next_line())
            .await
            .map_err(|_| WorkerError::NotReady("no answer within 180 s".into()))?
            .map_err(|e| WorkerError::NotReady(e.to_string()))?
            .ok_or_else(|| WorkerError::NotReady("exited before saying ready".into()))?;
        let ready: serde_json::Value = serde_json::from_str(&line)
            .map_err(|_| WorkerError::NotReady(format!("unexpected first line: {line}")))?;
        if ready["ready"] != true {
            let err = ready["error"].as_str().unwrap_or("unknown error");
            return Err(WorkerError::NotReady(format!(
                "{err} (is the environment broken? run `rag setup`)"
            )));
        }
        Ok(Worker {
            child,
            stdin,
            stdout,
            seq: 0,
            _sandbox: sandbox,
        })
    }

    async fn call<'a, T: serde::de::DeserializeOwned>(
        &mut self,
        make: impl FnOnce(u64) -> Request<'a>,
        limit: Duration,
    ) -> Result<T, WorkerError> {
        self.seq += 1;
        let mut line = serde_json::to_string(&make(self.seq)).expect("request serialises");
        line.push('\n');
        let exchange = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await?;
            self.stdout.next_line().await
        };
        let reply = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| WorkerError::Lost(format!("no reply within {limit:?}")))?
            .map_err(|e| WorkerError::Lost(e.to_string()))?
            .ok_or_else(|| WorkerError::Lost("the worker process exited".into()))?;
        let value: serde_json::Value = serde_json::from_str(&reply)
            .map_err(|e| DecodeError::Shape(format!("not JSON ({e})")))?;
        if value["seq"] != self.seq {
            return Err(WorkerError::Lost(format!(
                "reply out of sequence: {reply:.200}"
            )));
        }
        if let Some(err) = value["error"].as_str() {
            return Err(WorkerError::Lost(format!("worker error: {err}")));
        }
        serde_json::from_value(value).map_err(|e| DecodeError::Shape(e.to_string()).into())
    }
}

#[derive(serde::Deserialize)]
struct ExecReply {
    result: RawExecution,
}

/// A pool of sandboxed CadQuery workers; jobs wait for a free worker, a dead worker is
/// replaced on its next use, so no snippet can take the pool down for good.
pub struct WorkerPool {
    env: PythonEnv,
    limits: SandboxLimits,
    size: usize,
    free_tx: mpsc::UnboundedSender<Option<Worker>>,
    free_rx: Mutex<mpsc::UnboundedReceiver<Option<Worker>>>,
}

impl WorkerPool {
    /// Start `size` workers in parallel; fails if none of them comes up.
    pub async fn start(
        env: PythonEnv,
        size: usize,
        limits: SandboxLimits,
    ) -> Result<Arc<Self>, WorkerError> {
        let size = size.max(1);
        let (free_tx, free_rx) = mpsc::unbounded_channel();
        let mut starts = Vec::new();
        for _ in 0..size {
            let env = env.clone();
            starts.push(tokio::spawn(async move { Worker::spawn(&env).await }));
        }
        let mut first_error = None;
        let mut started = 0;
        for s in starts {
            match s.await.expect("worker start task panicked") {
                Ok(w) => {
                    started += 1;
                    free_tx.send(Some(w)).expect("receiver alive");
                }
                Err(e) => {
                    free_tx.send(None).expect("receiver alive");
                    first_error.get_or_insert(e);
                }
            }
        }
        if started == 0 {
            return Err(first_error.expect("size >= 1"));
        }
        Ok(Arc::new(WorkerPool {
            env,
            limits,
            size,
            free_tx,
            free_rx: Mutex::new(free_rx),
        }))
    }

    /// Number of workers.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The limits every snippet runs under.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    async fn with_worker<'a, T: serde::de::DeserializeOwned>(
        &self,
        make: impl FnOnce(u64) -> Request<'a>,
        phases: u32,
    ) -> Result<T, WorkerError> {
        let slot = {
            let mut rx = self.free_rx.lock().await;
            rx.recv().await.expect("the pool holds its own sender")
        };
        let mut worker = match slot {
            Some(w) => w,
            None => match Worker::spawn(&self.env).await {
                Ok(w) => w,
                Err(e) => {
                    let _ = self.free_tx.send(None);
                    return Err(e);
                }
            },
        };
        // The worker enforces per-phase limits; this outer one only catches a stuck worker.
        let limit = self.limits.timeout * (phases + 1) + Duration::from_secs(30);
        match worker.call(make, limit).await {
            Ok(v) => {
                let _ = self.free_tx.send(Some(worker));
                Ok(v)
            }
            Err(e) => {
                let _ = worker.child.start_kill();
                let _ = self.free_tx.send(None);
                Err(e)
            }
        }
    }

    /// Run one snippet in the sandbox.
    pub async fn exec(&self, code: &str, wants: Wants) -> Execution {
        let limits = &self.limits;
        let reply: Result<ExecReply, _> = self
            .with_worker(
                |seq| Request::Exec {
                    seq,
                    code,
                    mesh: wants.mesh,
                    edges: wants.edges,
                    timeout_s: limits.timeout.as_secs_f64(),
                    memory_mb: limits.memory_mb,
                },
                1,
            )
            .await;
        match reply.and_then(|r| r.result.decode().map_err(WorkerError::from)) {
            Ok(e) => e,
            Err(e) => Execution::failed(Status::Crash, e.to_string()),
        }
    }

    /// Attempt, inside a sandboxed child and bypassing the AST layer, each thing the syscall
    /// filter must stop (writes under `probe_dir`, sockets, fork, exec, ...); returns what
    /// happened to each ("blocked" or "allowed").
    pub async fn sandbox_selftest(
        &self,
        probe_dir: &str,
    ) -> Result<serde_json::Value, WorkerError> {
        let limits = &self.limits;
        let reply: serde_json::Value = self
            .with_worker(
                |seq| Request::SandboxSelftest {
                    seq,
                    probe_dir,
                    timeout_s: limits.timeout.as_secs_f64(),
                    memory_mb: limits.memory_mb,
                },
                1,
            )
            .await?;
        Ok(reply["result"].clone())
    }

    /// Run a ground truth and a prediction in one sandboxed child (the volume IoU needs
    /// both solids in one process).
    pub async fn pair(&self, gt: &str, pred: &str, wants: Wants) -> PairExecution {
        let limits = &self.limits;
        let reply: Result<RawPair, _> = self
            .with_worker(
                |seq| Request::Pair {
                    seq,
                    gt,
                    pred,
                    mesh: wants.mesh,
                    volume: wants.volume,
                    all_patterns: wants.patterns == PatternSearch::Every,
                    timeout_s: limits.timeout.as_secs_f64(),
                    memory_mb: limits.memory_mb,
                },
                3,
            )
            .await;
        match reply.and_then(|r| r.decode().map_err(WorkerError::from)) {
            Ok(p) => p,
            Err(e) => PairExecution {
                gt: Execution::failed(Status::Crash, e.to_string()),
                pred: Execution::failed(Status::Crash, e.to_string()),
                volume_iou: None,
                volume_message: e.to_string(),
                volume_booleans: 0,
            },
        }
    }
}
