//! Shape signatures of a corpus split (`rag dataset shapes`): every row's code executed once in
//! the sandbox and kept as a [`ShapeSignature`], so training can ask how alike two parts are
//! without running CadQuery. Stored as parquet chunks of [`CHUNK_ROWS`] rows
//! (`<dir>/<split>-NNNNN.parquet`, columns `id`, `status`, `voxels`), each written whole and
//! renamed into place, so an interrupted run resumes at the first missing chunk.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, ListArray, ListBuilder, StringArray, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use evaluator::shape::SIGNATURE_PITCH;
use evaluator::{ShapeSignature, Wants, WorkerPool};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::corpus::{tmp_path, CorpusError, CorpusReader, Split};

/// Rows per stored chunk (the unit of resume).
pub const CHUNK_ROWS: usize = 1000;
/// Parquet key-value entry holding the voxel pitch the chunk was made with.
const PITCH_KEY: &str = "cadrag.shape_pitch";

/// Errors of computing, writing or reading shape signatures; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error("{}: {message}", file.display())]
    File { file: PathBuf, message: String },
    #[error("{}: no shape signatures for the {split} split; run `rag dataset shapes --corpus CORPUS --split {split} --out {}`", dir.display(), dir.display())]
    Missing { dir: PathBuf, split: Split },
}

fn file_err(file: &Path, e: impl std::fmt::Display) -> ShapeError {
    ShapeError::File {
        file: file.to_path_buf(),
        message: e.to_string(),
    }
}

/// The chunk file holding rows `[c * CHUNK_ROWS, (c + 1) * CHUNK_ROWS)` of `split`.
pub fn chunk_path(dir: &Path, split: Split, c: usize) -> PathBuf {
    dir.join(format!("{split}-{c:05}.parquet"))
}

/// One row's outcome: its signature, or why it has none (execution status and message).
pub type ShapeOutcome = Result<ShapeSignature, String>;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new(
            "voxels",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, false))),
            true,
        ),
    ]))
}

/// Writes one chunk whole to `<path>.tmp`, then renames it into place.
pub fn write_chunk(path: &Path, rows: &[(String, ShapeOutcome)]) -> Result<(), ShapeError> {
    let ids = StringArray::from_iter_values(rows.iter().map(|(id, _)| id.as_str()));
    let status = StringArray::from_iter_values(rows.iter().map(|(_, o)| match o {
        Ok(_) => "ok".to_string(),
        Err(why) => why.clone(),
    }));
    let mut voxels = ListBuilder::new(UInt32Builder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::UInt32,
        false,
    )));
    for (_, o) in rows {
        match o {
            Ok(s) => {
                voxels.values().append_slice(s.keys());
                voxels.append(true);
            }
            Err(_) => voxels.append(false),
        }
    }
    let columns: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(status), Arc::new(voxels.finish())];
    let batch = RecordBatch::try_new(schema(), columns).map_err(|e| file_err(path, e))?;
    let tmp = tmp_path(path);
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(
            PITCH_KEY.to_string(),
            SIGNATURE_PITCH.to_string(),
        )]))
        .build();
    let file = File::create(&tmp).map_err(|e| file_err(&tmp, e))?;
    let mut writer =
        ArrowWriter::try_new(file, schema(), Some(props)).map_err(|e| file_err(&tmp, e))?;
    writer.write(&batch).map_err(|e| file_err(&tmp, e))?;
    let file = writer.into_inner().map_err(|e| file_err(&tmp, e))?;
    file.sync_all().map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

/// Reads one chunk: (id, outcome) per row, in row order; refuses another pitch.
pub fn read_chunk(path: &Path) -> Result<Vec<(String, ShapeOutcome)>, ShapeError> {
    let file = File::open(path).map_err(|e| file_err(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| file_err(path, format!("not a readable parquet file ({e})")))?;
    let pitch = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == PITCH_KEY))
        .and_then(|k| k.value.clone());
    if pitch.as_deref() != Some(SIGNATURE_PITCH.to_string().as_str()) {
        return Err(file_err(
            path,
            format!(
                "made with voxel pitch {} (this build uses {SIGNATURE_PITCH}); delete it and rerun `rag dataset shapes`",
                pitch.as_deref().unwrap_or("unknown")
            ),
        ));
    }
    let reader = builder.build().map_err(|e| file_err(path, e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| file_err(path, e))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| file_err(path, format!("no `{name}` column")))
        };
        let ids = col("id")?
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| file_err(path, "`id` is not a string column"))?;
        let status = col("status")?
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| file_err(path, "`status` is not a string column"))?;
        let voxels = col("voxels")?
            .as_any()
            .downcast_ref::<ListArray>()
            .ok_or_else(|| file_err(path, "`voxels` is not a list column"))?;
        for i in 0..batch.num_rows() {
            let outcome = if voxels.is_null(i) {
                Err(status.value(i).to_string())
            } else {
                let values = voxels.value(i);
                let keys = values
                    .as_any()
                    .downcast_ref::<arrow::array::UInt32Array>()
                    .ok_or_else(|| file_err(path, "`voxels` items are not uint32"))?;
                let sig = ShapeSignature::from_keys(keys.values().to_vec())
                    .map_err(|e| file_err(path, format!("row {i}: {e}")))?;
                Ok(sig)
            };
            out.push((ids.value(i).to_string(), outcome));
        }
    }
    Ok(out)
}

/// A split's signatures by corpus id, as training reads them.
#[derive(Debug, Default)]
pub struct ShapeSet {
    by_id: HashMap<String, ShapeSignature>,
    /// Rows whose code gave no signature (failed execution or no solid).
    pub failed: usize,
}

impl ShapeSet {
    /// Reads every chunk of `split` under `dir`; an absent or empty set is an error that says
    /// which command makes it.
    pub fn load(dir: &Path, split: Split) -> Result<Self, ShapeError> {
        let mut set = ShapeSet::default();
        let mut c = 0;
        while chunk_path(dir, split, c).exists() {
            for (id, outcome) in read_chunk(&chunk_path(dir, split, c))? {
                match outcome {
                    Ok(sig) => {
                        set.by_id.insert(id, sig);
                    }
                    Err(_) => set.failed += 1,
                }
            }
            c += 1;
        }
        if set.by_id.is_empty() {
            return Err(ShapeError::Missing {
                dir: dir.to_path_buf(),
                split,
            });
        }
        Ok(set)
    }

    /// The signature of a corpus id, if it has one.
    pub fn get(&self, id: &str) -> Option<&ShapeSignature> {
        self.by_id.get(id)
    }

    /// Number of signatures held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no signature is held.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// What `rag dataset shapes` did.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeReport {
    /// Rows of the split.
    pub rows: usize,
    /// Rows computed in this call.
    pub computed: usize,
    /// Rows found already stored (resumed).
    pub resumed: usize,
    /// Rows computed in this call that gave no signature.
    pub failed: usize,
    /// Mean voxels per signature computed in this call.
    pub mean_voxels: f64,
    /// Wall seconds of this call.
    pub seconds: f64,
    /// Stopped on an interrupt; rerunning resumes.
    pub interrupted: bool,
}

/// Executes every row of `split` (rows already stored are skipped) and writes signature
/// chunks under `dir`; stops after the current chunk's rows when `interrupt` is set.
pub async fn compute_shapes(
    pool: Arc<WorkerPool>,
    reader: &CorpusReader,
    split: Split,
    dir: &Path,
    progress: &indicatif::ProgressBar,
    interrupt: &AtomicBool,
) -> Result<ShapeReport, ShapeError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let total = reader.num_rows(split);
    progress.set_length(total as u64);
    progress.set_message(format!("executing {split} programs"));
    let started = Instant::now();
    let mut report = ShapeReport {
        rows: total,
        computed: 0,
        resumed: 0,
        failed: 0,
        mean_voxels: 0.0,
        seconds: 0.0,
        interrupted: false,
    };
    let mut voxels = 0usize;
    let mut rows = reader.rows(split);
    let mut c = 0;
    loop {
        let chunk: Vec<_> = rows.by_ref().take(CHUNK_ROWS).collect();
        if chunk.is_empty() {
            break;
        }
        let path = chunk_path(dir, split, c);
        c += 1;
        if path.exists() && read_chunk(&path)?.len() == chunk.len() {
            report.resumed += chunk.len();
            progress.inc(chunk.len() as u64);
            progress.reset_eta();
            continue;
        }
        if interrupt.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
        let mut handles = Vec::with_capacity(chunk.len());
        for row in chunk {
            let row = row?;
            let pool = pool.clone();
            handles.push(tokio::spawn(async move {
                let wants = Wants {
                    mesh: true,
                    ..Wants::default()
                };
                let ex = pool.exec(&row.cadquery, wants).await;
                let outcome = match (&ex.mesh, &ex.props) {
                    (Some(m), Some(p)) if ex.is_valid() => {
                        ShapeSignature::of(m, p).map_err(|e| format!("no_signature: {e}"))
                    }
                    _ => Err(format!("{}: {}", ex.status.as_str(), ex.message)),
                };
                (row.deepcad_id, outcome)
            }));
        }
        let mut done = Vec::with_capacity(handles.len());
        for h in handles {
            let (id, outcome) = h.await.map_err(|e| file_err(&path, e))?;
            match &outcome {
                Ok(s) => voxels += s.keys().len(),
                Err(_) => report.failed += 1,
            }
            done.push((id, outcome));
            progress.inc(1);
        }
        report.computed += done.len();
        write_chunk(&path, &done)?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    let ok = report.computed - report.failed;
    report.mean_voxels = if ok > 0 {
        voxels as f64 / ok as f64
    } else {
        0.0
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(keys: &[u32]) -> ShapeSignature {
        ShapeSignature::from_keys(keys.to_vec()).unwrap()
    }

    #[test]
    fn chunks_round_trip_signatures_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            ("a".to_string(), Ok(sig(&[1, 5, 9]))),
            ("b".to_string(), Err("runtime: boom".to_string())),
            ("c".to_string(), Ok(sig(&[7]))),
        ];
        let path = chunk_path(dir.path(), Split::Train, 0);
        write_chunk(&path, &rows).unwrap();
        assert_eq!(read_chunk(&path).unwrap(), rows);
        let set = ShapeSet::load(dir.path(), Split::Train).unwrap();
        assert_eq!((set.len(), set.failed), (2, 1));
        assert_eq!(set.get("c"), Some(&sig(&[7])));
        assert!(set.get("b").is_none());
    }

    #[test]
    fn a_missing_set_says_how_to_make_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = ShapeSet::load(dir.path(), Split::Train).unwrap_err();
        assert!(err.to_string().contains("rag dataset shapes"), "{err}");
    }

    #[test]
    fn a_corrupt_chunk_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = chunk_path(dir.path(), Split::Test, 0);
        std::fs::write(&path, b"not parquet").unwrap();
        let err = ShapeSet::load(dir.path(), Split::Test).unwrap_err();
        assert!(err.to_string().contains("test-00000.parquet"), "{err}");
    }
}
