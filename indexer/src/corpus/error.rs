//! The one error type of the corpus readers and writer: every variant names the file (and the
//! row or line where one applies) so a user can find the bad input without a debugger.

use std::path::PathBuf;

use super::RowOrigin;

/// What the corpus readers look for, quoted in "nothing recognisable" errors.
pub(crate) const EXPECTED_LAYOUT: &str = "train-*.parquet / validation-*.parquet / test-*.parquet \
     files (in the folder or under data/), or <id>.png files plus one *.jsonl of \
     {\"id\", \"code\"} rows";

/// Errors of reading or writing a corpus; each names the file, and the row or line where it can.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// The corpus folder does not exist, so there is nothing to read.
    #[error("{}: corpus folder does not exist", dir.display())]
    FolderMissing {
        /// The folder that was asked for.
        dir: PathBuf,
    },
    /// The folder holds no corpus in any layout we read; `reason` says what was seen.
    #[error("{}: no corpus found: {reason}; expected {EXPECTED_LAYOUT}", dir.display())]
    NoCorpus {
        /// The folder that was searched.
        dir: PathBuf,
        /// What was (not) found there.
        reason: String,
    },
    /// A corpus was found but it has no rows in any split.
    #[error("{}: the corpus has no rows", dir.display())]
    NoRows {
        /// The corpus folder.
        dir: PathBuf,
    },
    /// The png+jsonl layout found several `*.jsonl` files and will not guess which one is the corpus.
    #[error("{}: several *.jsonl files ({}); the png+jsonl layout takes exactly one", dir.display(), list_paths(files))]
    AmbiguousJsonl {
        /// The corpus folder.
        dir: PathBuf,
        /// The jsonl files found.
        files: Vec<PathBuf>,
    },
    /// An operating-system error on a file or folder.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The parquet footer or metadata could not be read: the file is not parquet or is truncated.
    #[error("{}: not a parquet file or truncated: {source}", file.display())]
    NotParquet {
        /// The parquet file.
        file: PathBuf,
        /// What the parquet reader said.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The metadata was fine but decoding data pages failed (corrupt or truncated column data).
    #[error("{}: corrupt data after row {row}: {message}", file.display())]
    CorruptData {
        /// The parquet file.
        file: PathBuf,
        /// How many rows of the file had been read before the failure.
        row: usize,
        /// What the reader said.
        message: String,
    },
    /// A required column is absent from a parquet file.
    #[error("{}: missing required column `{column}`", file.display())]
    MissingColumn {
        /// The parquet file.
        file: PathBuf,
        /// The column (or `image.bytes` for the struct field).
        column: String,
    },
    /// A required column has a type we cannot read as the HF schema's type.
    #[error("{}: column `{column}` is {found}, expected {expected}", file.display())]
    WrongType {
        /// The parquet file.
        file: PathBuf,
        /// The column.
        column: String,
        /// The arrow type found.
        found: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A required column holds a null at some row.
    #[error("{}: row {row}: column `{column}` is null", file.display())]
    NullValue {
        /// The parquet file.
        file: PathBuf,
        /// The 0-based row within the file.
        row: usize,
        /// The column.
        column: String,
    },
    /// A row's image bytes are not a decodable PNG/JPEG.
    #[error("{origin} (id {id}): image does not decode: {source}")]
    ImageDecode {
        /// Where the row came from.
        origin: RowOrigin,
        /// The row's id.
        id: String,
        /// What the image decoder said.
        #[source]
        source: image::ImageError,
    },
    /// A jsonl line is not a valid `{"id", "code"}` record.
    #[error("{}: line {line}: {message}", file.display())]
    JsonlLine {
        /// The jsonl file.
        file: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A jsonl row's image `<id>.png` does not exist next to the jsonl file.
    #[error("{}: line {line}: id `{id}` has no image (looked for {})", file.display(), png.display())]
    MissingImage {
        /// The jsonl file.
        file: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// The row id.
        id: String,
        /// The png path that was looked for.
        png: PathBuf,
    },
    /// Writing a parquet shard failed (the final file name is left untouched).
    #[error("{}: writing parquet shard failed: {message}", file.display())]
    Write {
        /// The shard being written.
        file: PathBuf,
        /// What failed.
        message: String,
    },
    /// A split name other than train, validation/val or test.
    #[error("unknown split `{0}`: expected train, validation (or val) or test")]
    UnknownSplit(String),
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl CorpusError {
    /// Wraps an io error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CorpusError::Io {
            path: path.into(),
            source,
        }
    }
}
