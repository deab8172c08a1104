//! The project's Python environment: a venv holding the pinned CadQuery, made by `rag setup`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable that overrides where the CadQuery venv lives.
pub const VENV_VAR: &str = "CADRAG_VENV";
/// Environment variable that names the Python interpreter `rag setup` builds the venv from.
pub const PYTHON_VAR: &str = "CADRAG_PYTHON";

/// The pinned package set (pip freeze of cadquery 2.8.0 on CPython 3.11).
pub const LOCK_FILE: &str = include_str!("../python/requirements.lock");
/// The sandboxed worker, shipped inside the binary and written next to the venv on use.
pub const WORKER_SOURCE: &str = include_str!("../python/cadquery_worker.py");

const STAMP_FILE: &str = "cadrag-lock.stamp";

/// Failures to find or build the CadQuery environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("the CadQuery environment is missing or incomplete at {0}: run `rag setup`")]
    NotSetUp(PathBuf),
    #[error("the CadQuery environment at {0} was built from another lock file: run `rag setup`")]
    Stale(PathBuf),
    #[error("no Python >= 3.11 found (tried {tried}); install CPython 3.11 or set {PYTHON_VAR}")]
    NoPython { tried: String },
    #[error("{step} failed ({status}): {detail}")]
    Step {
        step: String,
        status: String,
        detail: String,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the venv lives: `$CADRAG_VENV`, else `$XDG_DATA_HOME/cadrag/venv`, else
/// `~/.local/share/cadrag/venv`.
pub fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(VENV_VAR).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("cadrag").join("venv")
}

/// A set-up CadQuery environment: its interpreter and the worker script beside it.
#[derive(Debug, Clone)]
pub struct PythonEnv {
    venv: PathBuf,
}

fn lock_hash() -> String {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    format!("{:016x}", seeded::fnv1a64(LOCK_FILE.as_bytes()))
}

impl PythonEnv {
    /// Find the environment `rag setup` made; a clear error naming `rag setup` otherwise.
    pub fn locate() -> Result<Self, EnvError> {
        Self::at(&venv_dir())
    }

    /// The environment at `venv`, checked against the current lock file.
    pub fn at(venv: &Path) -> Result<Self, EnvError> {
        let env = PythonEnv {
            venv: venv.to_path_buf(),
        };
        if !env.python().is_file() {
            return Err(EnvError::NotSetUp(venv.to_path_buf()));
        }
        match std::fs::read_to_string(venv.join(STAMP_FILE)) {
            Ok(stamp) if stamp.trim() == lock_hash() => Ok(env),
            Ok(_) => Err(EnvError::Stale(venv.to_path_buf())),
            Err(_) => Err(EnvError::NotSetUp(venv.to_path_buf())),
        }
    }

    /// The venv's interpreter.
    pub fn python(&self) -> PathBuf {
        self.venv.join("bin").join("python")
    }

    /// The venv folder.
    pub fn dir(&self) -> &Path {
        &self.venv
    }

    /// Write the embedded worker script next to the venv (if it changed) and return its path.
    pub fn worker_script(&self) -> Result<PathBuf, EnvError> {
        let path = self.venv.join("cadrag").join("cadquery_worker.py");
        if std::fs::read_to_string(&path).ok().as_deref() == Some(WORKER_SOURCE) {
            return Ok(path);
        }
        let io = |source| EnvError::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().expect("worker path has a parent");
        std::fs::create_dir_all(dir).map_err(io)?;
        // Write a uniquely named file, then rename it: concurrent writers (processes, or
        // threads of one) never run a half-written script or move each other's file away.
        let mut tmp = tempfile::Builder::new()
            .prefix("cadquery_worker.")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(io)?;
        tmp.write_all(WORKER_SOURCE.as_bytes()).map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(path)
    }
}

/// What `setup` did.
#[derive(Debug, PartialEq, Eq)]
pub enum SetupOutcome {
    AlreadyUpToDate,
    Installed,
}

fn python_version(python: &str) -> Option<(u32, u32)> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys; print(sys.version_info[0], sys.version_info[1])",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Pick the interpreter to build the venv from: `$CADRAG_PYTHON`, else the first of
/// python3.11, python3.12, python3.13, python3 that is >= 3.11.
pub fn find_base_python() -> Result<String, EnvError> {
    let candidates: Vec<String> = match std::env::var(PYTHON_VAR) {
        Ok(p) if !p.is_empty() => vec![p],
        _ => ["python3.11", "python3.12", "python3.13", "python3"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    };
    for c in &candidates {
        if let Some(v) = python_version(c) {
            if v >= (3, 11) {
                return Ok(c.clone());
            }
        }
    }
    Err(EnvError::NoPython {
        tried: candidates.join(", "),
    })
}

fn run_step(step: &str, cmd: &mut Command) -> Result<(), EnvError> {
    let out = cmd.output().map_err(|e| EnvError::Step {
        step: step.to_string(),
        status: "not started".into(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
    Err(EnvError::Step {
        step: step.to_string(),
        status: out.status.to_string(),
        detail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

/// Create (or bring up to date) the venv at `venv` with the locked CadQuery; idempotent:
/// an environment already built from this lock file is left alone.
pub fn setup(venv: &Path, say: &dyn Fn(&str)) -> Result<SetupOutcome, EnvError> {
    if PythonEnv::at(venv).is_ok() {
        return Ok(SetupOutcome::AlreadyUpToDate);
    }
    let base = find_base_python()?;
    let io = |source| EnvError::Io {
        path: venv.to_path_buf(),
        source,
    };
    if !venv.join("bin").join("python").is_file() {
        say(&format!("creating venv at {} with {base}", venv.display()));
        std::fs::create_dir_all(venv).map_err(io)?;
        run_step(
            "python -m venv",
            Command::new(&base).arg("-m").arg("venv").arg(venv),
        )?;
    }
    let lock_path = venv.join("requirements.lock");
    std::fs::write(&lock_path, LOCK_FILE).map_err(io)?;
    say("installing the locked CadQuery 2.8.0 set (about 1.8 GB, a minute or two)");
    let python = venv.join("bin").join("python");
    run_step(
        "pip install",
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                "-r",
            ])
            .arg(&lock_path),
    )?;
    say("checking that cadquery imports");
    run_step(
        "import cadquery",
        Command::new(&python).args(["-c", "import cadquery, numpy, OCP"]),
    )?;
    std::fs::write(venv.join(STAMP_FILE), lock_hash()).map_err(io)?;
    Ok(SetupOutcome::Installed)
}
