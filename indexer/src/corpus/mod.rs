//! Corpus readers and the parquet shard writer, shared by every command that touches data
//! (dataset synth/info, index build, eval, training).
//!
//! Two layouts are read, both through [`CorpusReader`]:
//! - the Hugging Face GenCAD-Code parquet schema, as is (files `train-*.parquet`,
//!   `validation-*.parquet`, `test-*.parquet`, in the folder or under `data/`); our synthetic
//!   corpus is written in the same schema by [`write_shard`] / [`ShardWriter`];
//! - a plain folder of `<id>.png` files plus one `*.jsonl` of `{"id", "code"}` rows (optional
//!   `"split"`; rows without it are train).
//!
//! Rows are streamed ([`CorpusRows`]) a record batch at a time, in file-name order then row
//! order; images stay encoded until [`CorpusRow::decode_image`] is called.

mod error;
mod jsonl;
mod parquet_io;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use error::CorpusError;
pub(crate) use parquet_io::tmp_path;
pub use parquet_io::{hf_schema, shard_name, write_shard, ShardWriter, SHARD_COMPRESSION};

/// Rows per record batch when streaming a parquet split: bounds memory on 147k-row splits.
pub const READ_BATCH_ROWS: usize = 256;

/// One dataset split; file names and jsonl `"split"` values map onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training rows (also the split of jsonl rows that name none).
    Train,
    /// Validation rows (`validation` or `val`).
    Validation,
    /// Test rows.
    Test,
}

impl Split {
    /// All splits in their canonical order, for listing and iteration.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The canonical name (`train`, `validation`, `test`), as used in shard file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Split {
    type Err = CorpusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "validation" | "val" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            _ => Err(CorpusError::UnknownSplit(s.to_string())),
        }
    }
}

/// Where a row came from (file and 0-based position), so every later error can point at it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RowOrigin {
    /// The parquet shard, or the jsonl file, that holds the row.
    pub file: PathBuf,
    /// 0-based row within a parquet file, or 0-based line index within a jsonl file.
    pub row: usize,
}

impl RowOrigin {
    fn is_jsonl(&self) -> bool {
        self.file.extension().is_some_and(|e| e == "jsonl")
    }
}

impl fmt::Display for RowOrigin {
    /// `file: row N` for parquet (0-based), `file: line N` for jsonl (1-based, like editors).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_jsonl() {
            write!(f, "{}: line {}", self.file.display(), self.row + 1)
        } else {
            write!(f, "{}: row {}", self.file.display(), self.row)
        }
    }
}

/// One corpus row in the GenCAD-Code schema, image still encoded (decode on demand).
#[derive(Clone, PartialEq, Eq)]
pub struct CorpusRow {
    /// The part id (`deepcad_id`), e.g. `0000/00001234`; for jsonl, the `id` field.
    pub deepcad_id: String,
    /// The CadQuery code that rebuilds the part.
    pub cadquery: String,
    /// The encoded image (PNG 448x448 RGB in GenCAD; any PNG/JPEG is accepted).
    pub image_png: Vec<u8>,
    /// The HF image struct's `path` field (often null); the png file name for jsonl rows.
    pub image_path: Option<String>,
    /// Token count as stored in the dataset; 0 when unknown (jsonl rows without the field).
    pub token_count: i64,
    /// The dataset's prompt text; empty when unknown.
    pub prompt: String,
    /// Whether the row is in GenCAD's 100-part evaluation subset; false when unknown.
    pub hundred_subset: bool,
    /// Where the row was read from (for writing, any value; it is not stored).
    pub origin: RowOrigin,
}

impl fmt::Debug for CorpusRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CorpusRow")
            .field("deepcad_id", &self.deepcad_id)
            .field("cadquery_chars", &self.cadquery.len())
            .field("image_bytes", &self.image_png.len())
            .field("image_path", &self.image_path)
            .field("token_count", &self.token_count)
            .field("prompt_chars", &self.prompt.len())
            .field("hundred_subset", &self.hundred_subset)
            .field("origin", &self.origin)
            .finish()
    }
}

impl CorpusRow {
    /// Decodes the stored image to RGB8 (any decodable PNG/JPEG, alpha or grey converted), so
    /// encoders and metrics see one pixel format; errors name the file, row and id.
    pub fn decode_image(&self) -> Result<image::RgbImage, CorpusError> {
        image::load_from_memory(&self.image_png)
            .map(|img| img.to_rgb8())
            .map_err(|source| CorpusError::ImageDecode {
                origin: self.origin.clone(),
                id: self.deepcad_id.clone(),
                source,
            })
    }
}

/// Which on-disk layout a [`CorpusReader`] found, for logs and `dataset info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CorpusLayout {
    /// HF GenCAD-Code parquet shards (ours or the real dataset).
    Parquet,
    /// `<id>.png` files plus one `*.jsonl` file.
    PngJsonl,
}

/// One parquet shard found at open time, with its row count from the footer.
#[derive(Debug, Clone)]
struct Shard {
    path: PathBuf,
    split: Split,
    rows: usize,
}

#[derive(Debug, Clone)]
enum Source {
    Parquet { shards: Vec<Shard> },
    Jsonl { file: PathBuf, counts: [usize; 3] },
}

fn split_index(split: Split) -> usize {
    match split {
        Split::Train => 0,
        Split::Validation => 1,
        Split::Test => 2,
    }
}

/// A corpus folder opened for reading: layout detected, every file's metadata checked and
/// row counts known up front, rows streamed on demand.
#[derive(Debug, Clone)]
pub struct CorpusReader {
    dir: PathBuf,
    source: Source,
}

impl CorpusReader {
    /// Opens a corpus folder: finds parquet shards (in the folder or under `data/`) or else the
    /// png+jsonl layout, reads every shard's footer and checks its schema (or scans the jsonl
    /// and checks each png exists), so a bad file fails here rather than mid-run.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, CorpusError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.exists() {
            return Err(CorpusError::FolderMissing { dir });
        }
        if !dir.is_dir() {
            return Err(CorpusError::NoCorpus {
                dir,
                reason: "this is a file, not a folder".to_string(),
            });
        }
        let top = list_dir(&dir)?;
        if top.is_empty() {
            return Err(CorpusError::NoCorpus {
                dir,
                reason: "the folder is empty".to_string(),
            });
        }

        let mut parquet = find_parquet_shards(&top);
        let data_dir = dir.join("data");
        if parquet.found.is_empty() && data_dir.is_dir() {
            let inner = find_parquet_shards(&list_dir(&data_dir)?);
            parquet.found = inner.found;
            parquet.unnamed.extend(inner.unnamed);
        }

        let source = if !parquet.found.is_empty() {
            let mut shards = Vec::with_capacity(parquet.found.len());
            for (path, split) in parquet.found {
                let rows = parquet_io::count_rows(&path)?;
                shards.push(Shard { path, split, rows });
            }
            Source::Parquet { shards }
        } else {
            let mut jsonls: Vec<PathBuf> = top
                .iter()
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "jsonl"))
                .cloned()
                .collect();
            if jsonls.len() > 1 {
                return Err(CorpusError::AmbiguousJsonl { dir, files: jsonls });
            }
            let Some(file) = jsonls.pop() else {
                return Err(CorpusError::NoCorpus {
                    reason: describe_unrecognised(&top, &parquet.unnamed),
                    dir,
                });
            };
            let counts = jsonl::scan(&file, &dir)?;
            Source::Jsonl { file, counts }
        };
        let reader = CorpusReader { dir, source };
        if reader.total_rows() == 0 {
            return Err(CorpusError::NoRows { dir: reader.dir });
        }
        tracing::debug!(dir = %reader.dir.display(), layout = ?reader.layout(), splits = ?reader.splits(), "opened corpus");
        Ok(reader)
    }

    /// The folder the corpus was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Which layout was detected.
    pub fn layout(&self) -> CorpusLayout {
        match self.source {
            Source::Parquet { .. } => CorpusLayout::Parquet,
            Source::Jsonl { .. } => CorpusLayout::PngJsonl,
        }
    }

    /// Row counts per split present, in train/validation/test order, from parquet footers (or
    /// the jsonl scan done at open): no row data is read.
    pub fn splits(&self) -> Vec<(Split, usize)> {
        Split::ALL
            .iter()
            .filter(|s| !self.files(**s).is_empty())
            .map(|s| (*s, self.num_rows(*s)))
            .collect()
    }

    /// Rows in one split (0 when absent).
    pub fn num_rows(&self, split: Split) -> usize {
        match &self.source {
            Source::Parquet { shards } => shards
                .iter()
                .filter(|s| s.split == split)
                .map(|s| s.rows)
                .sum(),
            Source::Jsonl { counts, .. } => counts[split_index(split)],
        }
    }

    /// Rows in all splits together.
    pub fn total_rows(&self) -> usize {
        Split::ALL.iter().map(|s| self.num_rows(*s)).sum()
    }

    /// The files holding one split, in reading order: parquet shards sorted by name, or the
    /// jsonl file when the split has rows there.
    pub fn files(&self, split: Split) -> Vec<PathBuf> {
        match &self.source {
            Source::Parquet { shards } => shards
                .iter()
                .filter(|s| s.split == split)
                .map(|s| s.path.clone())
                .collect(),
            Source::Jsonl { file, counts } => {
                if counts[split_index(split)] > 0 {
                    vec![file.clone()]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Streams one split's rows, a record batch (~[`READ_BATCH_ROWS`]) at a time, in file-name
    /// order then row order. A bad row yields an `Err` and reading goes on with the next row;
    /// a file that fails to read yields one `Err` and reading goes on with the next file.
    pub fn rows(&self, split: Split) -> CorpusRows {
        match &self.source {
            Source::Parquet { .. } => CorpusRows {
                inner: RowsInner::Parquet(parquet_io::ParquetRows::new(self.files(split))),
            },
            Source::Jsonl { file, .. } => CorpusRows {
                inner: RowsInner::Jsonl(jsonl::JsonlRows::new(
                    file.clone(),
                    self.dir.clone(),
                    split,
                )),
            },
        }
    }
}

/// Iterator over one split's rows (owns its state, so it can outlive the reader).
pub struct CorpusRows {
    inner: RowsInner,
}

enum RowsInner {
    Parquet(parquet_io::ParquetRows),
    Jsonl(jsonl::JsonlRows),
}

impl Iterator for CorpusRows {
    type Item = Result<CorpusRow, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            RowsInner::Parquet(r) => r.next(),
            RowsInner::Jsonl(r) => r.next(),
        }
    }
}

/// Entries of a folder, sorted by name so every listing is deterministic.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, CorpusError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CorpusError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CorpusError::io(dir, e))?;
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

struct ParquetScan {
    /// Split-named shards, sorted by file name.
    found: Vec<(PathBuf, Split)>,
    /// `*.parquet` files whose names name no split.
    unnamed: Vec<PathBuf>,
}

/// The split a shard file name belongs to: `train-*.parquet`, `validation_*.parquet`,
/// `test.parquet`, `val-*.parquet`; `None` for other names (including `*.parquet.tmp`).
fn split_of_file_name(name: &str) -> Option<Split> {
    let stem = name.strip_suffix(".parquet")?;
    let prefix = stem.split(['-', '_']).next().unwrap_or(stem);
    prefix.parse().ok()
}

fn find_parquet_shards(entries: &[PathBuf]) -> ParquetScan {
    let mut scan = ParquetScan {
        found: Vec::new(),
        unnamed: Vec::new(),
    };
    for path in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".parquet") || !path.is_file() {
            continue;
        }
        match split_of_file_name(name) {
            Some(split) => scan.found.push((path.clone(), split)),
            None => scan.unnamed.push(path.clone()),
        }
    }
    if !scan.unnamed.is_empty() {
        tracing::warn!(files = ?scan.unnamed, "ignoring parquet files whose names start with no split (train-, validation-, test-)");
    }
    scan
}

fn describe_unrecognised(entries: &[PathBuf], unnamed_parquet: &[PathBuf]) -> String {
    if let Some(first) = unnamed_parquet.first() {
        return format!(
            "{} parquet file(s) (e.g. {}) but none named after a split",
            unnamed_parquet.len(),
            first.display()
        );
    }
    let pngs = entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .count();
    if pngs > 0 {
        return format!("{pngs} .png file(s) but no *.jsonl file");
    }
    let names: Vec<String> = entries
        .iter()
        .take(3)
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let more = if entries.len() > 3 { ", ..." } else { "" };
    format!(
        "{} entr{} ({}{more}), none of them corpus files",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" },
        names.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_parses_and_displays() {
        assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
        assert_eq!("val".parse::<Split>().unwrap(), Split::Validation);
        assert_eq!("Validation".parse::<Split>().unwrap(), Split::Validation);
        assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
        let err = "dev".parse::<Split>().unwrap_err().to_string();
        assert!(err.contains("`dev`"), "{err}");
        for s in Split::ALL {
            assert_eq!(s.to_string().parse::<Split>().unwrap(), s);
        }
        assert_eq!(Split::Validation.to_string(), "validation");
    }

    #[test]
    fn split_serde_is_lowercase() {
        assert_eq!(
            serde_json::to_string(&Split::Validation).unwrap(),
            "\"validation\""
        );
        let s: Split = serde_json::from_str("\"test\"").unwrap();
        assert_eq!(s, Split::Test);
    }

    #[test]
    fn file_names_map_to_splits() {
        assert_eq!(
            split_of_file_name("train-00000-of-00004.parquet"),
            Some(Split::Train)
        );
        assert_eq!(
            split_of_file_name("validation-00000-of-00001-abc.parquet"),
            Some(Split::Validation)
        );
        assert_eq!(
            split_of_file_name("val-00001.parquet"),
            Some(Split::Validation)
        );
        assert_eq!(split_of_file_name("test.parquet"), Some(Split::Test));
        assert_eq!(split_of_file_name("train_0.parquet"), Some(Split::Train));
        assert_eq!(split_of_file_name("train-00000.parquet.tmp"), None);
        assert_eq!(split_of_file_name("trainer-00000.parquet"), None);
        assert_eq!(split_of_file_name("other.parquet"), None);
        assert_eq!(split_of_file_name("train-00000.csv"), None);
    }

    #[test]
    fn origin_displays_row_or_line() {
        let p = RowOrigin {
            file: PathBuf::from("c/train-00000.parquet"),
            row: 17,
        };
        assert_eq!(p.to_string(), "c/train-00000.parquet: row 17");
        let j = RowOrigin {
            file: PathBuf::from("c/rows.jsonl"),
            row: 0,
        };
        assert_eq!(j.to_string(), "c/rows.jsonl: line 1");
    }

    #[test]
    fn decode_error_names_file_row_and_id() {
        let row = CorpusRow {
            deepcad_id: "00123".into(),
            cadquery: String::new(),
            image_png: b"definitely not a png".to_vec(),
            image_path: None,
            token_count: 0,
            prompt: String::new(),
            hundred_subset: false,
            origin: RowOrigin {
                file: PathBuf::from("corpus/train-00000.parquet"),
                row: 17,
            },
        };
        let err = row.decode_image().unwrap_err().to_string();
        assert!(
            err.starts_with("corpus/train-00000.parquet: row 17 (id 00123): image does not decode"),
            "{err}"
        );
    }
}
