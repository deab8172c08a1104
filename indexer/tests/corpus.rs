//! Corpus readers and shard writer: round trips, layouts, and every error naming its file/row.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Int64Array, LargeBinaryArray, LargeStringArray,
    StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow::record_batch::RecordBatch;
use indexer::corpus::{
    shard_name, write_shard, CorpusError, CorpusLayout, CorpusReader, CorpusRow, RowOrigin,
    ShardWriter, Split,
};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// A small real PNG whose pixels depend on `seed`, so round trips can compare pixels.
fn png(seed: u8, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            seed,
            (x as u8).wrapping_mul(7),
            (y as u8).wrapping_add(seed),
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn row(id: &str, seed: u8) -> CorpusRow {
    CorpusRow {
        deepcad_id: id.to_string(),
        cadquery: format!(
            "import cadquery as cq\n# part {id}\nsolid = cq.Workplane().box({seed}, 1, 1)\n"
        ),
        image_png: png(seed, 8 + u32::from(seed % 5), 6),
        image_path: if seed.is_multiple_of(2) {
            Some(format!("{id}.png"))
        } else {
            None
        },
        token_count: 100 + i64::from(seed),
        prompt: format!("Generate the CadQuery code for part {id}"),
        hundred_subset: seed.is_multiple_of(3),
        origin: RowOrigin {
            file: PathBuf::new(),
            row: 0,
        },
    }
}

/// Compares everything a shard stores (origin is reader-side only).
fn assert_same(read: &CorpusRow, wrote: &CorpusRow) {
    assert_eq!(read.deepcad_id, wrote.deepcad_id);
    assert_eq!(read.cadquery, wrote.cadquery);
    assert_eq!(read.image_png, wrote.image_png);
    assert_eq!(read.image_path, wrote.image_path);
    assert_eq!(read.token_count, wrote.token_count);
    assert_eq!(read.prompt, wrote.prompt);
    assert_eq!(read.hundred_subset, wrote.hundred_subset);
}

fn open_err(dir: &Path) -> String {
    match CorpusReader::open(dir) {
        Ok(r) => panic!("expected an error, opened {:?}", r.splits()),
        Err(e) => e.to_string(),
    }
}

fn collect(reader: &CorpusReader, split: Split) -> Vec<CorpusRow> {
    reader.rows(split).map(|r| r.unwrap()).collect()
}

/// Writes a parquet file from arbitrary arrow columns (for schemas our writer never makes).
fn write_raw(path: &Path, columns: Vec<(&str, ArrayRef)>, compression: Compression) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(compression)
        .build();
    let mut w =
        ArrowWriter::try_new(fs::File::create(path).unwrap(), batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// HF-schema columns for `rows`, with `image` as given, for the raw-writer tests.
fn hf_columns(rows: &[CorpusRow], image: ArrayRef) -> Vec<(&'static str, ArrayRef)> {
    vec![
        ("image", image),
        (
            "deepcad_id",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.deepcad_id.clone()),
            )),
        ),
        (
            "cadquery",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.cadquery.clone()),
            )),
        ),
        (
            "token_count",
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.token_count),
            )),
        ),
        (
            "prompt",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.prompt.clone()),
            )),
        ),
        (
            "hundred_subset",
            Arc::new(BooleanArray::from(
                rows.iter().map(|r| r.hundred_subset).collect::<Vec<_>>(),
            )),
        ),
    ]
}

fn image_struct(rows: &[CorpusRow]) -> ArrayRef {
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ]);
    let bytes: ArrayRef = Arc::new(BinaryArray::from_iter_values(
        rows.iter().map(|r| r.image_png.clone()),
    ));
    let paths: ArrayRef = Arc::new(StringArray::from(
        rows.iter()
            .map(|r| r.image_path.clone())
            .collect::<Vec<_>>(),
    ));
    Arc::new(StructArray::try_new(fields, vec![bytes, paths], None).unwrap())
}

#[test]
fn round_trip_two_shards_two_splits() {
    let dir = tempfile::tempdir().unwrap();
    let train: Vec<CorpusRow> = (0..5).map(|i| row(&format!("0000/{i:08}"), i)).collect();
    let test: Vec<CorpusRow> = (10..12).map(|i| row(&format!("0001/{i:08}"), i)).collect();
    // Shard 1 first, so name order and creation order differ.
    write_shard(
        &dir.path().join(shard_name(Split::Train, 1, 2)),
        &train[3..],
    )
    .unwrap();
    write_shard(
        &dir.path().join(shard_name(Split::Train, 0, 2)),
        &train[..3],
    )
    .unwrap();
    write_shard(&dir.path().join(shard_name(Split::Test, 0, 1)), &test).unwrap();

    let reader = CorpusReader::open(dir.path()).unwrap();
    assert_eq!(reader.layout(), CorpusLayout::Parquet);
    assert_eq!(reader.splits(), vec![(Split::Train, 5), (Split::Test, 2)]);
    assert_eq!(reader.num_rows(Split::Validation), 0);
    assert_eq!(reader.total_rows(), 7);
    let names: Vec<String> = reader
        .files(Split::Train)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "train-00000-of-00002.parquet",
            "train-00001-of-00002.parquet"
        ]
    );
    assert!(reader.files(Split::Validation).is_empty());
    assert_eq!(reader.rows(Split::Validation).count(), 0);

    let read = collect(&reader, Split::Train);
    assert_eq!(read.len(), 5);
    for (r, w) in read.iter().zip(&train) {
        assert_same(r, w);
    }
    // Origins: file and 0-based row within that file.
    assert_eq!(read[1].origin.row, 1);
    assert!(read[1]
        .origin
        .file
        .ends_with("train-00000-of-00002.parquet"));
    assert_eq!(read[4].origin.row, 1);
    assert!(read[4]
        .origin
        .file
        .ends_with("train-00001-of-00002.parquet"));

    let read_test = collect(&reader, Split::Test);
    assert_eq!(read_test.len(), 2);
    for (r, w) in read_test.iter().zip(&test) {
        assert_same(r, w);
        let img = r.decode_image().unwrap();
        let expected = image::load_from_memory(&w.image_png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), expected.dimensions());
        assert_eq!(img.as_raw(), expected.as_raw());
    }
    // No temporary files are left behind by the writer.
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn streams_across_batch_and_row_group_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let image = png(1, 4, 4);
    let rows: Vec<CorpusRow> = (0..1100)
        .map(|i| CorpusRow {
            deepcad_id: format!("{i:05}"),
            image_png: image.clone(),
            ..row("x", 1)
        })
        .collect();
    let path = dir.path().join(shard_name(Split::Validation, 0, 1));
    let mut w = ShardWriter::create(&path).unwrap();
    w.write(&rows[..700]).unwrap();
    w.write(&rows[700..]).unwrap();
    assert_eq!(w.rows(), 1100);
    assert_eq!(w.finish().unwrap(), 1100);

    let reader = CorpusReader::open(dir.path()).unwrap();
    assert_eq!(reader.splits(), vec![(Split::Validation, 1100)]);
    let mut n = 0;
    for (i, r) in reader.rows(Split::Validation).enumerate() {
        let r = r.unwrap();
        assert_eq!(r.deepcad_id, format!("{i:05}"));
        assert_eq!(r.origin.row, i);
        n += 1;
    }
    assert_eq!(n, 1100);
}

#[test]
fn truncated_parquet_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(
        &dir.path().join("train-00000-of-00002.parquet"),
        &[row("a", 1)],
    )
    .unwrap();
    let bad = dir.path().join("train-00001-of-00002.parquet");
    write_shard(&bad, &[row("b", 2), row("c", 3)]).unwrap();
    let bytes = fs::read(&bad).unwrap();
    fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();

    let err = open_err(dir.path());
    assert!(err.starts_with(&bad.display().to_string()), "{err}");
    assert!(err.contains("not a parquet file or truncated"), "{err}");
}

#[test]
fn wrong_column_type_names_file_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [row("a", 1)];
    let mut cols = hf_columns(&rows, image_struct(&rows));
    cols[2] = ("cadquery", Arc::new(Int64Array::from(vec![7])));
    let path = dir.path().join("train-00000.parquet");
    write_raw(&path, cols, Compression::SNAPPY);

    let err = open_err(dir.path());
    assert!(err.starts_with(&path.display().to_string()), "{err}");
    assert!(
        err.contains("column `cadquery` is Int64, expected a string"),
        "{err}"
    );
}

#[test]
fn missing_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [row("a", 1)];
    let mut cols = hf_columns(&rows, image_struct(&rows));
    cols.retain(|(n, _)| *n != "token_count");
    let path = dir.path().join("test-00000.parquet");
    write_raw(&path, cols, Compression::SNAPPY);

    let err = open_err(dir.path());
    assert!(err.starts_with(&path.display().to_string()), "{err}");
    assert!(
        err.contains("missing required column `token_count`"),
        "{err}"
    );
}

#[test]
fn large_types_snappy_and_extra_columns_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [row("a", 2), row("b", 3)];
    let fields = Fields::from(vec![
        Field::new("bytes", DataType::LargeBinary, true),
        Field::new("path", DataType::LargeUtf8, true),
    ]);
    let bytes: ArrayRef = Arc::new(LargeBinaryArray::from_iter_values(
        rows.iter().map(|r| r.image_png.clone()),
    ));
    let paths: ArrayRef = Arc::new(LargeStringArray::from(
        rows.iter()
            .map(|r| r.image_path.clone())
            .collect::<Vec<_>>(),
    ));
    let image: ArrayRef = Arc::new(StructArray::try_new(fields, vec![bytes, paths], None).unwrap());
    let mut cols = hf_columns(&rows, image);
    cols[2] = (
        "cadquery",
        Arc::new(LargeStringArray::from_iter_values(
            rows.iter().map(|r| r.cadquery.clone()),
        )),
    );
    cols.insert(0, ("extra", Arc::new(Int64Array::from(vec![1, 2]))));
    write_raw(
        &dir.path().join("train-00000-of-00001.parquet"),
        cols,
        Compression::SNAPPY,
    );

    let reader = CorpusReader::open(dir.path()).unwrap();
    let read = collect(&reader, Split::Train);
    assert_eq!(read.len(), 2);
    for (r, w) in read.iter().zip(&rows) {
        assert_same(r, w);
    }
}

#[test]
fn null_in_required_column_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [row("a", 1), row("b", 2), row("c", 3)];
    let mut cols = hf_columns(&rows, image_struct(&rows));
    cols[1] = (
        "deepcad_id",
        Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
    );
    let path = dir.path().join("train-00000.parquet");
    write_raw(&path, cols, Compression::SNAPPY);

    let reader = CorpusReader::open(dir.path()).unwrap();
    let results: Vec<Result<CorpusRow, CorpusError>> = reader.rows(Split::Train).collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().deepcad_id, "a");
    let err = results[1].as_ref().unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{}: row 1: column `deepcad_id` is null", path.display())
    );
    assert_eq!(results[2].as_ref().unwrap().deepcad_id, "c");
}

#[test]
fn undecodable_image_names_file_row_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = row("00123", 2);
    bad.image_png = b"\x89PNG but not really".to_vec();
    let path = dir.path().join("train-00000-of-00001.parquet");
    write_shard(&path, &[row("00122", 1), bad]).unwrap();

    let reader = CorpusReader::open(dir.path()).unwrap();
    let read = collect(&reader, Split::Train);
    assert!(read[0].decode_image().is_ok());
    let err = read[1].decode_image().unwrap_err().to_string();
    let want = format!(
        "{}: row 1 (id 00123): image does not decode: ",
        path.display()
    );
    assert!(err.starts_with(&want), "{err}");
}

#[test]
fn decode_converts_rgba_and_grey_to_rgb() {
    let mut r = row("a", 1);
    let rgba = image::RgbaImage::from_pixel(3, 2, image::Rgba([10, 20, 30, 40]));
    let mut out = Cursor::new(Vec::new());
    rgba.write_to(&mut out, image::ImageFormat::Png).unwrap();
    r.image_png = out.into_inner();
    let img = r.decode_image().unwrap();
    assert_eq!(img.dimensions(), (3, 2));
    assert_eq!(img.get_pixel(2, 1).0, [10, 20, 30]);

    let grey = image::GrayImage::from_pixel(2, 2, image::Luma([77]));
    let mut out = Cursor::new(Vec::new());
    grey.write_to(&mut out, image::ImageFormat::Png).unwrap();
    r.image_png = out.into_inner();
    assert_eq!(r.decode_image().unwrap().get_pixel(0, 0).0, [77, 77, 77]);
}

#[test]
fn empty_missing_and_unrecognisable_folders_error_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("the folder is empty"), "{err}");
    assert!(err.contains("expected train-*.parquet"), "{err}");

    let missing = dir.path().join("nope");
    let err = open_err(&missing);
    assert_eq!(
        err,
        format!("{}: corpus folder does not exist", missing.display())
    );

    fs::write(dir.path().join("notes.txt"), "hi").unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("none of them corpus files") && err.contains("notes.txt"),
        "{err}"
    );

    fs::write(dir.path().join("a.png"), png(1, 2, 2)).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("1 .png file(s) but no *.jsonl file"), "{err}");

    write_shard(&dir.path().join("shard-0.parquet"), &[row("a", 1)]).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("none named after a split"), "{err}");
}

#[test]
fn folder_with_only_empty_shards_has_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(&dir.path().join(shard_name(Split::Train, 0, 1)), &[]).unwrap();
    let err = open_err(dir.path());
    assert!(err.ends_with("the corpus has no rows"), "{err}");
}

#[test]
fn png_jsonl_layout_reads_with_split_field() {
    let dir = tempfile::tempdir().unwrap();
    for (id, seed) in [("p1", 1u8), ("p2", 2), ("p3", 3)] {
        fs::write(dir.path().join(format!("{id}.png")), png(seed, 5, 4)).unwrap();
    }
    let jsonl = dir.path().join("corpus.jsonl");
    fs::write(
        &jsonl,
        concat!(
            "{\"id\": \"p1\", \"code\": \"solid = 1\"}\n",
            "\n",
            "{\"id\": \"p2\", \"code\": \"solid = 2\", \"split\": \"test\", \"prompt\": \"hi\"}\n",
            "{\"id\": \"p3\", \"code\": \"solid = 3\", \"token_count\": 9, \"hundred_subset\": true}\n",
        ),
    )
    .unwrap();

    let reader = CorpusReader::open(dir.path()).unwrap();
    assert_eq!(reader.layout(), CorpusLayout::PngJsonl);
    assert_eq!(reader.splits(), vec![(Split::Train, 2), (Split::Test, 1)]);
    assert_eq!(reader.files(Split::Test), vec![jsonl.clone()]);
    assert!(reader.files(Split::Validation).is_empty());

    let train = collect(&reader, Split::Train);
    let ids: Vec<&str> = train.iter().map(|r| r.deepcad_id.as_str()).collect();
    assert_eq!(ids, ["p1", "p3"]);
    assert_eq!(train[0].cadquery, "solid = 1");
    assert_eq!(train[0].image_png, png(1, 5, 4));
    assert_eq!(train[0].image_path.as_deref(), Some("p1.png"));
    assert_eq!(train[1].token_count, 9);
    assert!(train[1].hundred_subset);
    assert_eq!(
        train[1].origin.to_string(),
        format!("{}: line 4", jsonl.display())
    );
    assert_eq!(train[1].decode_image().unwrap().dimensions(), (5, 4));

    let test = collect(&reader, Split::Test);
    assert_eq!(test.len(), 1);
    assert_eq!(test[0].deepcad_id, "p2");
    assert_eq!(test[0].prompt, "hi");
}

#[test]
fn jsonl_id_without_png_is_named() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("p1.png"), png(1, 2, 2)).unwrap();
    let jsonl = dir.path().join("rows.jsonl");
    fs::write(
        &jsonl,
        "{\"id\": \"p1\", \"code\": \"a\"}\n{\"id\": \"ghost_42\", \"code\": \"b\"}\n",
    )
    .unwrap();
    let err = open_err(dir.path());
    assert!(
        err.starts_with(&format!(
            "{}: line 2: id `ghost_42` has no image",
            jsonl.display()
        )),
        "{err}"
    );
    assert!(err.contains("ghost_42.png"), "{err}");
}

#[test]
fn jsonl_bad_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("p1.png"), png(1, 2, 2)).unwrap();
    let jsonl = dir.path().join("rows.jsonl");
    fs::write(
        &jsonl,
        "{\"id\": \"p1\", \"code\": \"a\"}\n{\"id\": \"p1\", \"code\": \n",
    )
    .unwrap();
    let err = open_err(dir.path());
    assert!(
        err.starts_with(&format!("{}: line 2: ", jsonl.display())),
        "{err}"
    );

    fs::write(
        &jsonl,
        "{\"id\": \"p1\", \"code\": \"a\", \"split\": \"dev\"}\n",
    )
    .unwrap();
    let err = open_err(dir.path());
    assert!(
        err.contains("line 1") && err.contains("unknown split `dev`"),
        "{err}"
    );

    fs::write(dir.path().join("other.jsonl"), "").unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("several *.jsonl files"), "{err}");
}

#[test]
fn tmp_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    write_shard(
        &dir.path().join(shard_name(Split::Train, 0, 2)),
        &[row("a", 1)],
    )
    .unwrap();
    // A crashed writer's leftovers: garbage under .tmp names, including a whole split.
    fs::write(
        dir.path().join("train-00001-of-00002.parquet.tmp"),
        b"half a shard",
    )
    .unwrap();
    fs::write(
        dir.path().join("test-00000-of-00001.parquet.tmp"),
        b"PAR1 junk",
    )
    .unwrap();

    let reader = CorpusReader::open(dir.path()).unwrap();
    assert_eq!(reader.splits(), vec![(Split::Train, 1)]);
    assert_eq!(reader.files(Split::Train).len(), 1);
    assert_eq!(collect(&reader, Split::Train).len(), 1);
}

#[test]
fn unfinished_writer_leaves_nothing_and_finished_one_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(shard_name(Split::Train, 0, 1));
    {
        let mut w = ShardWriter::create(&path).unwrap();
        w.write(&[row("a", 1)]).unwrap();
        assert!(dir.path().join("train-00000-of-00001.parquet.tmp").exists());
        assert!(!path.exists(), "the final name appears only on finish");
    }
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "dropped writer removed its tmp"
    );

    write_shard(&path, &[row("a", 1), row("b", 2)]).unwrap();
    write_shard(&path, &[row("c", 3)]).unwrap();
    let reader = CorpusReader::open(dir.path()).unwrap();
    let ids: Vec<String> = collect(&reader, Split::Train)
        .into_iter()
        .map(|r| r.deepcad_id)
        .collect();
    assert_eq!(ids, ["c"]);
}

#[test]
fn hf_data_subfolder_layout_is_found() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("README.md"), "# GenCAD-Code").unwrap();
    let data = dir.path().join("data");
    write_shard(
        &data.join("train-00000-of-00001.parquet"),
        &[row("a", 1), row("b", 2)],
    )
    .unwrap();
    write_shard(
        &data.join("validation-00000-of-00001.parquet"),
        &[row("c", 3)],
    )
    .unwrap();

    let reader = CorpusReader::open(dir.path()).unwrap();
    assert_eq!(
        reader.splits(),
        vec![(Split::Train, 2), (Split::Validation, 1)]
    );
    assert!(reader.files(Split::Validation)[0].starts_with(&data));
    assert_eq!(collect(&reader, Split::Validation)[0].deepcad_id, "c");
}

#[test]
fn written_shards_use_hf_schema_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(shard_name(Split::Train, 0, 1));
    write_shard(&path, &[row("a", 1)]).unwrap();
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        fs::File::open(&path).unwrap(),
    )
    .unwrap();
    let schema = builder.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "image",
            "deepcad_id",
            "cadquery",
            "token_count",
            "prompt",
            "hundred_subset"
        ]
    );
    assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
    assert_eq!(schema.field(3).data_type(), &DataType::Int64);
    match schema.field(0).data_type() {
        DataType::Struct(f) => {
            assert_eq!(f[0].name(), "bytes");
            assert_eq!(f[0].data_type(), &DataType::Binary);
            assert_eq!(f[1].name(), "path");
            assert_eq!(f[1].data_type(), &DataType::Utf8);
        }
        other => panic!("image is {other}"),
    }
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap();
    assert!(
        kv.iter().any(|e| e.key == "huggingface"),
        "HF features metadata stored"
    );
    let col = builder.metadata().row_group(0).column(1);
    assert!(
        matches!(col.compression(), Compression::ZSTD(_)),
        "{:?}",
        col.compression()
    );
}

#[test]
fn corrupt_data_pages_error_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(shard_name(Split::Train, 0, 1));
    let rows: Vec<CorpusRow> = (0..300).map(|i| row(&format!("{i:05}"), i as u8)).collect();
    write_shard(&path, &rows).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 10..n / 2] {
        *b ^= 0x5a;
    }
    fs::write(&path, &bytes).unwrap();

    // The footer is intact, so open succeeds; reading the data must fail with the file named.
    let reader = CorpusReader::open(dir.path()).unwrap();
    let errors: Vec<String> = reader
        .rows(Split::Train)
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    assert!(!errors.is_empty(), "corrupt pages went unnoticed");
    assert!(
        errors[0].starts_with(&path.display().to_string()),
        "{errors:?}"
    );
}
