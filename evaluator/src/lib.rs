//! Sandboxed CadQuery execution and the published metrics: valid syntax rate (VSR) and
//! best IoU under the "shell" (MecAgent) and "volume" (CAD-Coder) protocols.
//!
//! CadQuery runs in a pool of long-lived Python workers (`worker`), each snippet in a forked,
//! seccomp-confined child; the shell IoU's voxel work happens here in Rust (`shell`), the
//! volume IoU's booleans in the worker.

pub mod codeset;
pub mod env;
pub mod protocol;
pub use dialect::pyfloat;
pub mod reference;
pub mod render;
pub mod render_match;
pub mod report;
pub mod score;
pub mod shape;
pub mod sheet;
pub mod shell;
pub mod style;
pub mod worker;

pub use codeset::{CodeSet, CodeSetError, CodeText};
pub use env::{PythonEnv, SetupOutcome};
pub use protocol::{Execution, PairExecution, Status};
pub use score::{sketch_count, Breakdown, GroupStats, ItemScore, PairInput, Protocols, Summary};
pub use shape::{ShapeSignature, SignatureError};
pub use worker::{PatternSearch, SandboxLimits, Wants, WorkerPool};
