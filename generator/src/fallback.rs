//! Never-invalid output: the model's program is executed in the sandbox, and when it does not
//! build a solid the retrieved neighbours are tried in rank order, so the answer is code that
//! runs whenever any candidate does, and says which path produced it.

use evaluator::{Status, Wants, WorkerPool};
use serde::Serialize;

use crate::pipeline::Answer;

/// Where the returned code came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CodeSource {
    /// The model's own program.
    Generated,
    /// A retrieved neighbour's code (1-based rank, corpus id).
    Neighbour {
        /// Rank among the retrieved neighbours.
        rank: usize,
        /// The neighbour's corpus id.
        id: String,
    },
}

/// A candidate that was executed and did not build a solid.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    /// Which candidate.
    pub source: CodeSource,
    /// Its sandbox status (`runtime`, `syntax`, `timeout`, ...).
    pub status: String,
    /// The sandbox's message.
    pub message: String,
}

/// The first candidate that runs, with the ones that did not.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    /// Code that ran in the sandbox and built a solid (empty when nothing did).
    pub code: String,
    /// Its origin; `None` when no candidate ran.
    pub source: Option<CodeSource>,
    /// Candidates tried before it, in order.
    pub rejected: Vec<Rejected>,
    /// Seconds the sandbox spent executing candidates (waiting for a free worker excluded, so
    /// a batch of queries checked at once does not inflate each one's latency).
    pub seconds: f64,
}

/// Executes the answer's candidates in order (the model's program when there is one, then
/// the neighbours by rank) and keeps the first that builds a solid.
pub async fn first_that_runs(pool: &WorkerPool, answer: &Answer) -> Checked {
    let mut seconds = 0.0;
    let mut candidates = Vec::new();
    if answer.generation.is_some() {
        candidates.push((CodeSource::Generated, answer.code.as_str()));
    }
    for n in &answer.neighbours {
        candidates.push((
            CodeSource::Neighbour {
                rank: n.rank,
                id: n.id.clone(),
            },
            n.code.as_str(),
        ));
    }
    let mut rejected = Vec::new();
    for (source, code) in candidates {
        let run = pool.exec(code, Wants::default()).await;
        seconds += run.seconds;
        if run.status == Status::Ok {
            return Checked {
                code: code.to_string(),
                source: Some(source),
                rejected,
                seconds,
            };
        }
        rejected.push(Rejected {
            source,
            status: run.status.as_str().to_string(),
            message: run.message,
        });
    }
    Checked {
        code: String::new(),
        source: None,
        rejected,
        seconds,
    }
}
