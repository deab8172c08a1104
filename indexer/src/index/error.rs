//! The error type of index building and loading: every variant names the file or folder.

use std::path::PathBuf;

use crate::corpus::CorpusError;
use crate::encoder::EncoderError;

/// Errors of building, checking or reading an index folder.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Reading the corpus failed.
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    /// The encoder could not be built or a row's image could not be embedded.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// The chosen split has no rows, or none of them could be embedded.
    #[error("{}: split {split} has no usable rows (nothing to index){why}", corpus.display())]
    EmptySplit {
        /// The corpus folder.
        corpus: PathBuf,
        /// The split asked for.
        split: String,
        /// Why rows were skipped, when they were.
        why: String,
    },
    /// An operating-system error on a file or folder.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The io error.
        #[source]
        source: std::io::Error,
    },
    /// The index folder does not exist.
    #[error("{}: no index here (build one with `rag index build --out {}`){hint}", dir.display(), dir.display())]
    Missing {
        /// The folder asked for.
        dir: PathBuf,
        /// Extra advice, e.g. about an interrupted rebuild's leftover folder.
        hint: String,
    },
    /// A file the manifest promises is absent.
    #[error("{}: missing index file (the index is incomplete; rebuild it)", path.display())]
    MissingFile {
        /// The file.
        path: PathBuf,
    },
    /// A file is present but damaged: wrong size, checksum, or unparsable content.
    #[error("{}: corrupt index file: {message} (rebuild the index)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The manifest was written by another format version of this program.
    #[error("{}: index format version {found}, this program reads version {expected}; rebuild the index", path.display())]
    FormatVersion {
        /// The manifest.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version we read.
        expected: u32,
    },
    /// The index was built with another encoder than the one asked for.
    #[error("{}: the index was built with encoder {built} but the query encoder is {asked}; use --encoder {built_id} or rebuild the index with this encoder", path.display())]
    EncoderMismatch {
        /// The manifest.
        path: PathBuf,
        /// The index's encoder (id and hash).
        built: String,
        /// Its bare id, for the advice.
        built_id: String,
        /// The asked encoder (id and hash).
        asked: String,
    },
    /// hnsw_rs failed to build, dump or reload the graph.
    #[error("{}: HNSW: {message}", path.display())]
    Hnsw {
        /// The folder or file.
        path: PathBuf,
        /// What hnsw_rs said.
        message: String,
    },
    /// tantivy failed to write, open or search the keyword index.
    #[error("{}: tantivy: {source}", path.display())]
    Tantivy {
        /// The tantivy folder.
        path: PathBuf,
        /// What tantivy said.
        #[source]
        source: tantivy::TantivyError,
    },
    /// A keyword filter that is not a single dialect token.
    #[error("keyword `{0}` is not a dialect token (expected e.g. cut, union, circle, threePointArc, both)")]
    BadKeyword(String),
    /// The output path cannot hold an index (no folder name, or it is a file).
    #[error("{}: {message}", path.display())]
    BadOutput {
        /// The path.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The build stopped early (Ctrl-C or `--stop-after`) with its progress saved.
    #[error("stopped after {read} of {total} rows, progress saved in {}; rerun the same command to resume", partial.display())]
    Stopped {
        /// Rows read so far.
        read: usize,
        /// Rows to read in all.
        total: usize,
        /// The folder holding the progress.
        partial: PathBuf,
        /// True for Ctrl-C, false for a requested stop.
        interrupted: bool,
    },
}

impl IndexError {
    /// Wraps an io error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IndexError::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a tantivy error with the tantivy folder.
    pub fn tantivy(path: impl Into<PathBuf>, source: tantivy::TantivyError) -> Self {
        IndexError::Tantivy {
            path: path.into(),
            source,
        }
    }
}
