//! The GenCAD-Code parquet layout: schema checks, batch-streaming reader and atomic shard writer.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, BooleanArray, Int64Array,
    LargeBinaryArray, LargeStringArray, StringArray, StringViewArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields, Int32Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::{CorpusError, CorpusRow, RowOrigin, Split, READ_BATCH_ROWS};

/// Compression of the shards we write: zstd level 3 (smaller than snappy on code text; the
/// PNG bytes are already compressed either way; HF readers and ours decode it).
pub const SHARD_COMPRESSION: &str = "zstd(3)";

const ZSTD_LEVEL: i32 = 3;
/// Rows per record batch handed to the parquet writer.
const WRITE_BATCH_ROWS: usize = 256;
/// Rows per row group in written shards: a few MB of PNGs each, so readers stream cheaply.
const ROW_GROUP_ROWS: usize = 512;

const STRING: &str = "a string (utf8, large_utf8 or utf8_view)";
const BINARY: &str = "binary bytes (binary, large_binary or binary_view)";
const INT: &str = "an integer (int64 or int32)";
const BOOL: &str = "a bool";
const IMAGE: &str = "a struct {bytes: binary, path: string} (or plain binary)";

/// The HF `datasets` feature description stored in the schema metadata, so `load_dataset`
/// decodes our `image` column as an Image, like the real GenCAD-Code files.
const HF_FEATURES: &str = r#"{"info": {"features": {"image": {"_type": "Image"}, "deepcad_id": {"dtype": "string", "_type": "Value"}, "cadquery": {"dtype": "string", "_type": "Value"}, "token_count": {"dtype": "int64", "_type": "Value"}, "prompt": {"dtype": "string", "_type": "Value"}, "hundred_subset": {"dtype": "bool", "_type": "Value"}}}}"#;

/// File name of shard `index` of `total` for a split, HF style: `train-00003-of-00020.parquet`.
pub fn shard_name(split: Split, index: usize, total: usize) -> String {
    format!("{split}-{index:05}-of-{total:05}.parquet")
}

fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ])
}

/// The arrow schema our shards are written in: exactly the HF GenCAD-Code columns and types.
pub fn hf_schema() -> SchemaRef {
    let fields = vec![
        Field::new("image", DataType::Struct(image_fields()), true),
        Field::new("deepcad_id", DataType::Utf8, true),
        Field::new("cadquery", DataType::Utf8, true),
        Field::new("token_count", DataType::Int64, true),
        Field::new("prompt", DataType::Utf8, true),
        Field::new("hundred_subset", DataType::Boolean, true),
    ];
    let metadata = HashMap::from([("huggingface".to_string(), HF_FEATURES.to_string())]);
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

// ---------------------------------------------------------------------------------------------
// Schema checks

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Image,
}

const REQUIRED: [(&str, Kind); 6] = [
    ("image", Kind::Image),
    ("deepcad_id", Kind::Str),
    ("cadquery", Kind::Str),
    ("token_count", Kind::Int),
    ("prompt", Kind::Str),
    ("hundred_subset", Kind::Bool),
];

fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn is_binary(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

fn wrong_type(file: &Path, column: &str, found: &DataType, expected: &'static str) -> CorpusError {
    CorpusError::WrongType {
        file: file.to_path_buf(),
        column: column.to_string(),
        found: found.to_string(),
        expected,
    }
}

fn missing(file: &Path, column: &str) -> CorpusError {
    CorpusError::MissingColumn {
        file: file.to_path_buf(),
        column: column.to_string(),
    }
}

fn check_image_type(file: &Path, dt: &DataType) -> Result<(), CorpusError> {
    match dt {
        DataType::Struct(fields) => {
            let bytes = fields
                .iter()
                .find(|f| f.name() == "bytes")
                .ok_or_else(|| missing(file, "image.bytes"))?;
            if !is_binary(bytes.data_type()) {
                return Err(wrong_type(file, "image.bytes", bytes.data_type(), BINARY));
            }
            if let Some(path) = fields.iter().find(|f| f.name() == "path") {
                if !is_string(path.data_type()) {
                    return Err(wrong_type(file, "image.path", path.data_type(), STRING));
                }
            }
            Ok(())
        }
        dt if is_binary(dt) => Ok(()),
        dt => Err(wrong_type(file, "image", dt, IMAGE)),
    }
}

/// Checks that every required column is present with a readable type; returns the root
/// column indices to project (extra columns are not read).
fn check_schema(file: &Path, schema: &Schema) -> Result<Vec<usize>, CorpusError> {
    let mut roots = Vec::with_capacity(REQUIRED.len());
    for (name, kind) in REQUIRED {
        let (index, field) = schema
            .column_with_name(name)
            .ok_or_else(|| missing(file, name))?;
        let dt = field.data_type();
        match kind {
            Kind::Str if !is_string(dt) => return Err(wrong_type(file, name, dt, STRING)),
            Kind::Int if !matches!(dt, DataType::Int64 | DataType::Int32) => {
                return Err(wrong_type(file, name, dt, INT))
            }
            Kind::Bool if dt != &DataType::Boolean => return Err(wrong_type(file, name, dt, BOOL)),
            Kind::Image => check_image_type(file, dt)?,
            _ => {}
        }
        roots.push(index);
    }
    roots.sort_unstable();
    Ok(roots)
}

fn open_builder(file: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, CorpusError> {
    let handle = File::open(file).map_err(|e| CorpusError::io(file, e))?;
    ParquetRecordBatchReaderBuilder::try_new(handle).map_err(|source| CorpusError::NotParquet {
        file: file.to_path_buf(),
        source,
    })
}

/// Reads one shard's footer, checks its schema and returns its row count (no row data read).
pub(crate) fn count_rows(file: &Path) -> Result<usize, CorpusError> {
    let builder = open_builder(file)?;
    check_schema(file, builder.schema())?;
    let rows = builder.metadata().file_metadata().num_rows();
    Ok(usize::try_from(rows).unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// Typed column views over a record batch

enum StrCol<'a> {
    Small(&'a StringArray),
    Large(&'a LargeStringArray),
    View(&'a StringViewArray),
}

impl<'a> StrCol<'a> {
    fn new(file: &Path, column: &str, arr: &'a dyn Array) -> Result<Self, CorpusError> {
        if let Some(a) = arr.as_string_opt::<i32>() {
            Ok(StrCol::Small(a))
        } else if let Some(a) = arr.as_string_opt::<i64>() {
            Ok(StrCol::Large(a))
        } else if let Some(a) = arr.as_string_view_opt() {
            Ok(StrCol::View(a))
        } else {
            Err(wrong_type(file, column, arr.data_type(), STRING))
        }
    }

    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            StrCol::Small(a) => (!a.is_null(i)).then(|| a.value(i)),
            StrCol::Large(a) => (!a.is_null(i)).then(|| a.value(i)),
            StrCol::View(a) => (!a.is_null(i)).then(|| a.value(i)),
        }
    }
}

enum BinCol<'a> {
    Small(&'a BinaryArray),
    Large(&'a LargeBinaryArray),
    View(&'a BinaryViewArray),
}

impl<'a> BinCol<'a> {
    fn new(file: &Path, column: &str, arr: &'a dyn Array) -> Result<Self, CorpusError> {
        if let Some(a) = arr.as_binary_opt::<i32>() {
            Ok(BinCol::Small(a))
        } else if let Some(a) = arr.as_binary_opt::<i64>() {
            Ok(BinCol::Large(a))
        } else if let Some(a) = arr.as_binary_view_opt() {
            Ok(BinCol::View(a))
        } else {
            Err(wrong_type(file, column, arr.data_type(), BINARY))
        }
    }

    fn get(&self, i: usize) -> Option<&'a [u8]> {
        match self {
            BinCol::Small(a) => (!a.is_null(i)).then(|| a.value(i)),
            BinCol::Large(a) => (!a.is_null(i)).then(|| a.value(i)),
            BinCol::View(a) => (!a.is_null(i)).then(|| a.value(i)),
        }
    }
}

struct ImageCol<'a> {
    outer: Option<&'a StructArray>,
    bytes: BinCol<'a>,
    path: Option<StrCol<'a>>,
}

impl<'a> ImageCol<'a> {
    fn new(file: &Path, arr: &'a dyn Array) -> Result<Self, CorpusError> {
        let Some(s) = arr.as_struct_opt() else {
            return Ok(ImageCol {
                outer: None,
                bytes: BinCol::new(file, "image", arr)?,
                path: None,
            });
        };
        let bytes = s
            .column_by_name("bytes")
            .ok_or_else(|| missing(file, "image.bytes"))?;
        let path = match s.column_by_name("path") {
            Some(p) => Some(StrCol::new(file, "image.path", p.as_ref())?),
            None => None,
        };
        Ok(ImageCol {
            outer: Some(s),
            bytes: BinCol::new(file, "image.bytes", bytes.as_ref())?,
            path,
        })
    }

    /// (bytes, path); bytes `None` when the struct or its bytes are null.
    fn get(&self, i: usize) -> (Option<&'a [u8]>, Option<&'a str>) {
        if self.outer.is_some_and(|s| s.is_null(i)) {
            return (None, None);
        }
        (self.bytes.get(i), self.path.as_ref().and_then(|p| p.get(i)))
    }
}

enum IntCol<'a> {
    I64(&'a Int64Array),
    I32(&'a arrow::array::Int32Array),
}

impl<'a> IntCol<'a> {
    fn new(file: &Path, column: &str, arr: &'a dyn Array) -> Result<Self, CorpusError> {
        if let Some(a) = arr.as_primitive_opt::<Int64Type>() {
            Ok(IntCol::I64(a))
        } else if let Some(a) = arr.as_primitive_opt::<Int32Type>() {
            Ok(IntCol::I32(a))
        } else {
            Err(wrong_type(file, column, arr.data_type(), INT))
        }
    }

    fn get(&self, i: usize) -> Option<i64> {
        match self {
            IntCol::I64(a) => (!a.is_null(i)).then(|| a.value(i)),
            IntCol::I32(a) => (!a.is_null(i)).then(|| i64::from(a.value(i))),
        }
    }
}

fn bool_col<'a>(
    file: &Path,
    column: &str,
    arr: &'a dyn Array,
) -> Result<&'a BooleanArray, CorpusError> {
    arr.as_boolean_opt()
        .ok_or_else(|| wrong_type(file, column, arr.data_type(), BOOL))
}

fn column<'a>(
    file: &Path,
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a ArrayRef, CorpusError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| missing(file, name))
}

fn required<T>(value: Option<T>, file: &Path, row: usize, column: &str) -> Result<T, CorpusError> {
    value.ok_or_else(|| CorpusError::NullValue {
        file: file.to_path_buf(),
        row,
        column: column.to_string(),
    })
}

/// Converts one record batch to rows; `first_row` is the file row index of the batch's row 0.
/// The outer error is a column-level problem (the whole file is unusable); the inner ones are
/// per-row (nulls).
fn batch_rows(
    file: &Path,
    batch: &RecordBatch,
    first_row: usize,
) -> Result<Vec<Result<CorpusRow, CorpusError>>, CorpusError> {
    let image = ImageCol::new(file, column(file, batch, "image")?.as_ref())?;
    let id = StrCol::new(
        file,
        "deepcad_id",
        column(file, batch, "deepcad_id")?.as_ref(),
    )?;
    let code = StrCol::new(file, "cadquery", column(file, batch, "cadquery")?.as_ref())?;
    let tokens = IntCol::new(
        file,
        "token_count",
        column(file, batch, "token_count")?.as_ref(),
    )?;
    let prompt = StrCol::new(file, "prompt", column(file, batch, "prompt")?.as_ref())?;
    let hundred = bool_col(
        file,
        "hundred_subset",
        column(file, batch, "hundred_subset")?.as_ref(),
    )?;

    let row_at = |i: usize| -> Result<CorpusRow, CorpusError> {
        let row = first_row + i;
        let deepcad_id = required(id.get(i), file, row, "deepcad_id")?;
        let (bytes, path) = image.get(i);
        let bytes = required(bytes, file, row, "image.bytes")?;
        Ok(CorpusRow {
            deepcad_id: deepcad_id.to_string(),
            cadquery: required(code.get(i), file, row, "cadquery")?.to_string(),
            image_png: bytes.to_vec(),
            image_path: path.map(str::to_string),
            token_count: required(tokens.get(i), file, row, "token_count")?,
            prompt: required(prompt.get(i), file, row, "prompt")?.to_string(),
            hundred_subset: required(
                (!hundred.is_null(i)).then(|| hundred.value(i)),
                file,
                row,
                "hundred_subset",
            )?,
            origin: RowOrigin {
                file: file.to_path_buf(),
                row,
            },
        })
    };
    Ok((0..batch.num_rows()).map(row_at).collect())
}

// ---------------------------------------------------------------------------------------------
// Streaming reader

struct OpenShard {
    file: PathBuf,
    reader: ParquetRecordBatchReader,
    next_row: usize,
}

fn open_shard(file: &Path) -> Result<OpenShard, CorpusError> {
    let builder = open_builder(file)?;
    let roots = check_schema(file, builder.schema())?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|source| CorpusError::NotParquet {
            file: file.to_path_buf(),
            source,
        })?;
    Ok(OpenShard {
        file: file.to_path_buf(),
        reader,
        next_row: 0,
    })
}

/// Streams rows of a list of parquet shards, one record batch in memory at a time.
pub(crate) struct ParquetRows {
    files: VecDeque<PathBuf>,
    current: Option<OpenShard>,
    pending: VecDeque<Result<CorpusRow, CorpusError>>,
}

impl ParquetRows {
    pub(crate) fn new(files: Vec<PathBuf>) -> Self {
        ParquetRows {
            files: files.into(),
            current: None,
            pending: VecDeque::new(),
        }
    }
}

impl Iterator for ParquetRows {
    type Item = Result<CorpusRow, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.pending.pop_front() {
                return Some(row);
            }
            if let Some(shard) = self.current.as_mut() {
                match shard.reader.next() {
                    Some(Ok(batch)) => {
                        let first = shard.next_row;
                        shard.next_row += batch.num_rows();
                        match batch_rows(&shard.file, &batch, first) {
                            Ok(rows) => self.pending.extend(rows),
                            Err(e) => {
                                self.current = None;
                                return Some(Err(e));
                            }
                        }
                    }
                    Some(Err(e)) => {
                        let err = CorpusError::CorruptData {
                            file: shard.file.clone(),
                            row: shard.next_row,
                            message: e.to_string(),
                        };
                        self.current = None;
                        return Some(Err(err));
                    }
                    None => self.current = None,
                }
                continue;
            }
            let file = self.files.pop_front()?;
            match open_shard(&file) {
                Ok(shard) => self.current = Some(shard),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

fn write_err(file: &Path, e: impl std::fmt::Display) -> CorpusError {
    CorpusError::Write {
        file: file.to_path_buf(),
        message: e.to_string(),
    }
}

/// Builds one record batch in the HF schema from rows (their `origin` is not stored).
fn rows_to_batch(schema: &SchemaRef, rows: &[CorpusRow]) -> Result<RecordBatch, String> {
    let bytes: ArrayRef = Arc::new(BinaryArray::from_iter_values(
        rows.iter().map(|r| r.image_png.as_slice()),
    ));
    let paths: ArrayRef = Arc::new(StringArray::from(
        rows.iter()
            .map(|r| r.image_path.as_deref())
            .collect::<Vec<_>>(),
    ));
    let image = StructArray::try_new(image_fields(), vec![bytes, paths], None)
        .map_err(|e| e.to_string())?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(image),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.deepcad_id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.cadquery.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.token_count),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.prompt.as_str()),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.hundred_subset).collect::<Vec<_>>(),
        )),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

/// Writes one parquet shard incrementally into `<path>.tmp`, then fsyncs and renames it on
/// [`finish`](Self::finish), so a crash never leaves a half shard under the final name; a
/// writer dropped unfinished deletes its temporary file.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    writer: Option<ArrowWriter<File>>,
    rows: usize,
}

impl ShardWriter {
    /// Starts a shard at `path` (parent folders are created), compressed with
    /// [`SHARD_COMPRESSION`].
    pub fn create(path: impl AsRef<Path>) -> Result<Self, CorpusError> {
        let path = path.as_ref().to_path_buf();
        let tmp = tmp_path(&path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| CorpusError::io(parent, e))?;
        }
        let file = File::create(&tmp).map_err(|e| CorpusError::io(&tmp, e))?;
        let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(|e| write_err(&path, e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let schema = hf_schema();
        let writer = match ArrowWriter::try_new(file, schema.clone(), Some(props)) {
            Ok(mut w) => {
                // Also as a parquet key-value entry, where pyarrow / HF `datasets` look.
                w.append_key_value_metadata(KeyValue::new(
                    "huggingface".to_string(),
                    HF_FEATURES.to_string(),
                ));
                w
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(write_err(&path, e));
            }
        };
        Ok(ShardWriter {
            path,
            tmp,
            schema,
            writer: Some(writer),
            rows: 0,
        })
    }

    /// Appends rows (in record batches of a few hundred rows).
    pub fn write(&mut self, rows: &[CorpusRow]) -> Result<(), CorpusError> {
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| write_err(&self.path, "writer already closed"))?;
        for chunk in rows.chunks(WRITE_BATCH_ROWS) {
            let batch = rows_to_batch(&self.schema, chunk).map_err(|e| write_err(&self.path, e))?;
            writer.write(&batch).map_err(|e| write_err(&self.path, e))?;
            self.rows += chunk.len();
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes the footer, fsyncs, renames `<path>.tmp` to `path` (replacing any old shard) and
    /// fsyncs the folder; returns the row count.
    pub fn finish(mut self) -> Result<usize, CorpusError> {
        let writer = self
            .writer
            .take()
            .ok_or_else(|| write_err(&self.path, "writer already closed"))?;
        let result = (|| {
            let file = writer.into_inner().map_err(|e| write_err(&self.path, e))?;
            file.sync_all().map_err(|e| CorpusError::io(&self.tmp, e))?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path).map_err(|e| CorpusError::io(&self.path, e))?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        // Make the rename durable; a failure here does not undo a complete shard.
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(dir) = File::open(parent) {
                let _ = dir.sync_all();
            }
        }
        Ok(self.rows)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            drop(writer);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `rows` as one parquet shard at `path` in the HF GenCAD-Code schema (zstd), atomically
/// (`<path>.tmp`, fsync, rename), so readers never see a half-written shard.
pub fn write_shard(path: &Path, rows: &[CorpusRow]) -> Result<(), CorpusError> {
    let mut writer = ShardWriter::create(path)?;
    writer.write(rows)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_hf_style() {
        assert_eq!(
            shard_name(Split::Train, 3, 20),
            "train-00003-of-00020.parquet"
        );
        assert_eq!(
            shard_name(Split::Validation, 0, 1),
            "validation-00000-of-00001.parquet"
        );
        assert_eq!(
            super::super::split_of_file_name(&shard_name(Split::Test, 1, 2)),
            Some(Split::Test)
        );
    }

    #[test]
    fn tmp_path_appends_suffix() {
        assert_eq!(
            tmp_path(Path::new("a/train-00000-of-00001.parquet")),
            PathBuf::from("a/train-00000-of-00001.parquet.tmp")
        );
    }

    #[test]
    fn schema_check_accepts_hf_schema_and_wide_types() {
        let f = Path::new("x.parquet");
        assert_eq!(
            check_schema(f, &hf_schema()).unwrap(),
            vec![0, 1, 2, 3, 4, 5]
        );
        let wide = Schema::new(vec![
            Field::new("extra", DataType::Float32, true),
            Field::new(
                "image",
                DataType::Struct(Fields::from(vec![
                    Field::new("bytes", DataType::LargeBinary, true),
                    Field::new("path", DataType::LargeUtf8, true),
                ])),
                true,
            ),
            Field::new("deepcad_id", DataType::LargeUtf8, true),
            Field::new("cadquery", DataType::Utf8View, true),
            Field::new("token_count", DataType::Int32, true),
            Field::new("prompt", DataType::LargeUtf8, true),
            Field::new("hundred_subset", DataType::Boolean, true),
        ]);
        assert_eq!(check_schema(f, &wide).unwrap(), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn schema_check_names_bad_columns() {
        let f = Path::new("dir/x.parquet");
        let mut fields: Vec<Field> = hf_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[2] = Field::new("cadquery", DataType::Int64, true);
        let err = check_schema(f, &Schema::new(fields.clone()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "dir/x.parquet: column `cadquery` is Int64, expected a string (utf8, large_utf8 or utf8_view)"
        );
        fields[2] = Field::new("cadquery", DataType::Utf8, true);
        fields[0] = Field::new(
            "image",
            DataType::Struct(Fields::from(vec![Field::new("path", DataType::Utf8, true)])),
            true,
        );
        let err = check_schema(f, &Schema::new(fields.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing required column `image.bytes`"),
            "{err}"
        );
        fields.remove(5);
        fields[0] = Field::new("image", DataType::Binary, true);
        let err = check_schema(f, &Schema::new(fields))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing required column `hundred_subset`"),
            "{err}"
        );
    }
}
