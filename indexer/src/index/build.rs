//! `rag index build`: stream a corpus split, decode and embed images in batches on all cores,
//! then write the graph, the store, the keyword index and the manifest into a temporary
//! folder that atomically replaces the target. Embedding progress is saved in `NAME.partial`
//! every few thousand rows and on Ctrl-C, and the same command resumes from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::hnsw::{build_graph, dump_files, dump_graph, HnswParams};
use super::keywords::write_keyword_index;
use super::manifest::{
    file_check, CorpusInfo, Counts, Manifest, FORMAT_VERSION, MANIFEST_FILE, METRIC_COSINE,
    STORE_FILE, TANTIVY_DIR,
};
use super::store::{read_store, write_store, StoreEntry};
use super::thumbs::{read_thumbs, thumbnail, write_thumbs, THUMBS_FILE};
use super::IndexError;
use crate::corpus::{CorpusReader, CorpusRow, Split};
use crate::encoder::{parallel_map, to_rgb_on_white, ImageEncoder};
use seeded::Fnv1a64;

/// Skip reasons kept in a [`BuildReport`]; the rest are only counted.
pub const MAX_SKIP_MESSAGES: usize = 20;

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The corpus folder.
    pub corpus: PathBuf,
    /// The split to index (train for a retrieval corpus).
    pub split: Split,
    /// The index folder to create or replace.
    pub out: PathBuf,
    /// Index only the first N rows of the split.
    pub limit: Option<usize>,
    /// Images decoded and embedded per batch.
    pub batch: usize,
    /// HNSW parameters.
    pub hnsw: HnswParams,
    /// Save the embedding progress every N rows read (0: only on a stop).
    pub checkpoint_rows: usize,
    /// Stop (progress saved, resumable) after reading this many rows in this call.
    pub stop_after: Option<usize>,
    /// Set by Ctrl-C: the build saves its progress and stops.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl BuildOptions {
    /// Options with the defaults for everything but the inputs.
    pub fn new(corpus: PathBuf, split: Split, out: PathBuf) -> Self {
        BuildOptions {
            corpus,
            split,
            out,
            limit: None,
            batch: 64,
            hnsw: HnswParams::default(),
            checkpoint_rows: 5000,
            stop_after: None,
            interrupt: None,
        }
    }
}

/// Version of the partial-build files; another is discarded.
const PARTIAL_FORMAT: u32 = 1;
/// The commit point of a partial build.
const PARTIAL_STATE: &str = "progress.json";
/// Vectors embedded so far, f32 little-endian, row after row.
const PARTIAL_VECTORS: &str = "vectors.f32";

/// What a partial build did so far and for which inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartialState {
    format: u32,
    corpus: String,
    split: String,
    total: usize,
    encoder_hash: String,
    dims: usize,
    read: usize,
    skipped: usize,
    skip_messages: Vec<String>,
}

/// Embedding progress: rows read, vectors and entries kept, skips.
struct Progress {
    read: usize,
    vectors: Vec<Vec<f32>>,
    entries: Vec<StoreEntry>,
    /// PNG thumbnails, one per entry.
    thumbs: Vec<Vec<u8>>,
    skipped: usize,
    skip_messages: Vec<String>,
}

impl Progress {
    fn inputs(
        &self,
        opts: &BuildOptions,
        total: usize,
        encoder: &dyn ImageEncoder,
    ) -> PartialState {
        let identity = encoder.identity();
        PartialState {
            format: PARTIAL_FORMAT,
            corpus: corpus_path(&opts.corpus),
            split: opts.split.to_string(),
            total,
            encoder_hash: identity.hash,
            dims: identity.dims,
            read: self.read,
            skipped: self.skipped,
            skip_messages: self.skip_messages.clone(),
        }
    }

    /// Writes the vectors and entries, then the state (each through a rename).
    fn save(&self, dir: &Path, state: &PartialState) -> Result<(), IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        let bytes: Vec<u8> = self
            .vectors
            .iter()
            .flat_map(|v| v.iter().flat_map(|x| x.to_le_bytes()))
            .collect();
        let put = |name: &str, write: &dyn Fn(&Path) -> Result<(), IndexError>| {
            let tmp = dir.join(format!("{name}.tmp"));
            write(&tmp)?;
            let to = dir.join(name);
            std::fs::rename(&tmp, &to).map_err(|e| IndexError::io(&to, e))
        };
        put(PARTIAL_VECTORS, &|p| {
            std::fs::write(p, &bytes).map_err(|e| IndexError::io(p, e))
        })?;
        put(STORE_FILE, &|p| write_store(p, &self.entries))?;
        put(THUMBS_FILE, &|p| write_thumbs(p, &self.thumbs))?;
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        put(PARTIAL_STATE, &|p| {
            std::fs::write(p, &json).map_err(|e| IndexError::io(p, e))
        })
    }

    /// The progress saved in `dir` when it was made for the same inputs (`expected` with
    /// `read`, `skipped` and the messages ignored); `None` otherwise (the caller starts over).
    fn load(dir: &Path, expected: &PartialState) -> Option<Progress> {
        let text = std::fs::read_to_string(dir.join(PARTIAL_STATE)).ok()?;
        let state: PartialState = serde_json::from_str(&text).ok()?;
        let same = PartialState {
            read: state.read,
            skipped: state.skipped,
            skip_messages: state.skip_messages.clone(),
            ..expected.clone()
        };
        if same != state {
            tracing::warn!("{}: made for other inputs; starting over", dir.display());
            return None;
        }
        let entries = read_store(&dir.join(STORE_FILE)).ok()?;
        let Ok(thumbs) = read_thumbs(&dir.join(THUMBS_FILE)) else {
            tracing::warn!(
                "{}: no readable thumbnails (saved by an older build); starting over",
                dir.display()
            );
            return None;
        };
        let bytes = std::fs::read(dir.join(PARTIAL_VECTORS)).ok()?;
        if state.dims == 0
            || bytes.len() != entries.len() * state.dims * 4
            || thumbs.len() != entries.len()
        {
            tracing::warn!(
                "{}: vectors and entries disagree; starting over",
                dir.display()
            );
            return None;
        }
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Some(Progress {
            read: state.read,
            vectors: floats.chunks(state.dims).map(|c| c.to_vec()).collect(),
            entries,
            thumbs,
            skipped: state.skipped,
            skip_messages: state.skip_messages,
        })
    }
}

impl Progress {
    /// Counts a left-out row and keeps the first reasons.
    fn skip(&mut self, message: String) {
        tracing::warn!("{message}");
        if self.skip_messages.len() < MAX_SKIP_MESSAGES {
            self.skip_messages.push(message);
        }
        self.skipped += 1;
    }
}

fn corpus_path(corpus: &Path) -> String {
    std::fs::canonicalize(corpus)
        .unwrap_or_else(|_| corpus.to_path_buf())
        .display()
        .to_string()
}

/// Figures of a finished build, printed by the CLI and the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// The index folder written.
    pub out: PathBuf,
    /// Vectors indexed.
    pub vectors: usize,
    /// Rows left out (unreadable rows, undecodable or blank images).
    pub skipped: usize,
    /// Why rows were left out (the first [`MAX_SKIP_MESSAGES`], each naming file, row, id).
    pub skip_messages: Vec<String>,
    /// Seconds reading, decoding and embedding.
    pub embed_seconds: f64,
    /// Seconds building and dumping the HNSW graph.
    pub hnsw_seconds: f64,
    /// Seconds writing the store, tantivy and the manifest.
    pub write_seconds: f64,
    /// Total seconds.
    pub seconds: f64,
    /// Rows per second over this call of the build (read + embed + index + write; rows
    /// embedded by an earlier, interrupted call are not counted).
    pub images_per_second: f64,
}

/// Builds an index; on success `opts.out` holds the complete new index, on failure (or a
/// crash) it still holds whatever it held before.
pub fn build_index(
    opts: &BuildOptions,
    encoder: &dyn ImageEncoder,
    progress: &indicatif::ProgressBar,
) -> Result<BuildReport, IndexError> {
    let start = Instant::now();
    let reader = CorpusReader::open(&opts.corpus)?;
    let available = reader.num_rows(opts.split);
    let total = opts.limit.map_or(available, |l| l.min(available));
    if total == 0 {
        return Err(IndexError::EmptySplit {
            corpus: opts.corpus.clone(),
            split: opts.split.to_string(),
            why: String::new(),
        });
    }
    check_output(&opts.out)?;
    let partial = sibling(&opts.out, "partial")?;
    let tmp = sibling(&opts.out, &format!("tmp-{}", std::process::id()))?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| IndexError::io(&tmp, e))?;
    let result = build_into(
        opts, encoder, progress, &reader, total, &tmp, &partial, start,
    );
    match result {
        Ok(mut report) => {
            replace_dir(&tmp, &opts.out)?;
            if partial.exists() {
                let _ = std::fs::remove_dir_all(&partial);
            }
            report.out = opts.out.clone();
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build_into(
    opts: &BuildOptions,
    encoder: &dyn ImageEncoder,
    progress: &indicatif::ProgressBar,
    reader: &CorpusReader,
    total: usize,
    tmp: &Path,
    partial: &Path,
    start: Instant,
) -> Result<BuildReport, IndexError> {
    progress.set_length(total as u64);
    let fresh = Progress {
        read: 0,
        vectors: Vec::with_capacity(total),
        entries: Vec::with_capacity(total),
        thumbs: Vec::with_capacity(total),
        skipped: 0,
        skip_messages: Vec::new(),
    };
    let expected = fresh.inputs(opts, total, encoder);
    let mut p = match Progress::load(partial, &expected) {
        Some(p) => {
            progress.set_message(format!("resuming after {} rows", p.read));
            tracing::info!(
                "{}: resuming after {} of {total} rows",
                partial.display(),
                p.read
            );
            p
        }
        None => fresh,
    };
    progress.set_position(p.read as u64);
    let resumed_at = p.read;
    let mut saved_at = p.read;
    let mut batch: Vec<CorpusRow> = Vec::with_capacity(opts.batch.max(1));
    let mut rows = reader.rows(opts.split).take(total).skip(p.read);
    loop {
        let stop_requested = opts
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst));
        let stop_after = opts.stop_after.is_some_and(|n| p.read - resumed_at >= n);
        if (stop_requested || stop_after) && p.read < total {
            p.save(partial, &p.inputs(opts, total, encoder))?;
            return Err(IndexError::Stopped {
                read: p.read,
                total,
                partial: partial.to_path_buf(),
                interrupted: stop_requested,
            });
        }
        batch.clear();
        for row in rows.by_ref() {
            p.read += 1;
            match row {
                Ok(r) => batch.push(r),
                Err(e) => p.skip(format!("skipped a row: {e}")),
            }
            if batch.len() >= opts.batch.max(1) {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        let decoded = parallel_map(&batch, |r| {
            image::load_from_memory(&r.image_png)
                .map(|img| {
                    let rgb = to_rgb_on_white(&img);
                    let thumb = thumbnail(&rgb);
                    (rgb, thumb)
                })
                .map_err(|e| e.to_string())
        });
        let mut images = Vec::with_capacity(batch.len());
        let mut keep = Vec::with_capacity(batch.len());
        for (row, img) in batch.iter().zip(decoded) {
            match img {
                Ok((img, thumb)) => {
                    images.push(img);
                    keep.push((row, thumb));
                }
                Err(e) => p.skip(format!(
                    "{} (id {}): image does not decode, skipped: {e}",
                    row.origin, row.deepcad_id
                )),
            }
        }
        for ((row, thumb), v) in keep.into_iter().zip(encoder.encode_batch(&images)) {
            match v {
                Ok(v) => {
                    p.vectors.push(v);
                    p.entries.push(StoreEntry {
                        id: row.deepcad_id.clone(),
                        code: row.cadquery.clone(),
                    });
                    p.thumbs.push(thumb);
                }
                Err(e) => p.skip(format!(
                    "{} (id {}): not embedded, skipped: {e}",
                    row.origin, row.deepcad_id
                )),
            }
        }
        progress.set_position(p.read as u64);
        if opts.checkpoint_rows > 0 && p.read - saved_at >= opts.checkpoint_rows && p.read < total {
            p.save(partial, &p.inputs(opts, total, encoder))?;
            saved_at = p.read;
        }
    }
    let Progress {
        read,
        vectors,
        entries,
        thumbs,
        skipped,
        skip_messages,
    } = p;
    let mut hash = Fnv1a64::new();
    for e in &entries {
        hash.update_str(&e.id);
        hash.update_str(&e.code);
    }
    if vectors.is_empty() {
        return Err(IndexError::EmptySplit {
            corpus: opts.corpus.clone(),
            split: opts.split.to_string(),
            why: skip_messages
                .first()
                .map(|m| format!("; {skipped} rows skipped, the first: {m}"))
                .unwrap_or_default(),
        });
    }
    let embed_seconds = start.elapsed().as_secs_f64();
    progress.set_message("building HNSW graph");
    let t = Instant::now();
    let graph = build_graph(&vectors, &opts.hnsw);
    dump_graph(&graph, tmp)?;
    drop(graph);
    let hnsw_seconds = t.elapsed().as_secs_f64();
    progress.set_message("writing store and keyword index");
    let t = Instant::now();
    write_store(&tmp.join(STORE_FILE), &entries)?;
    write_thumbs(&tmp.join(THUMBS_FILE), &thumbs)?;
    write_keyword_index(&tmp.join(TANTIVY_DIR), &entries)?;
    let mut files = BTreeMap::new();
    for name in dump_files()
        .into_iter()
        .chain([STORE_FILE.to_string(), THUMBS_FILE.to_string()])
    {
        files.insert(name.clone(), file_check(&tmp.join(&name))?);
    }
    let identity = encoder.identity();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        corpus: CorpusInfo {
            path: corpus_path(&opts.corpus),
            split: opts.split.to_string(),
            content_hash: format!("{:016x}", hash.finish()),
            rows: read,
        },
        dims: identity.dims,
        encoder: identity,
        metric: METRIC_COSINE.to_string(),
        counts: Counts {
            vectors: vectors.len(),
            skipped,
        },
        hnsw: opts.hnsw,
        files,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    manifest.write(tmp)?;
    let write_seconds = t.elapsed().as_secs_f64();
    let seconds = start.elapsed().as_secs_f64();
    Ok(BuildReport {
        out: tmp.to_path_buf(),
        vectors: vectors.len(),
        skipped,
        skip_messages,
        embed_seconds,
        hnsw_seconds,
        write_seconds,
        seconds,
        images_per_second: (read - resumed_at) as f64 / seconds.max(1e-9),
    })
}

/// `DIR.<suffix>` next to `dir`.
fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf, IndexError> {
    let name = dir.file_name().ok_or_else(|| IndexError::BadOutput {
        path: dir.to_path_buf(),
        message: "the index path needs a folder name (e.g. indices/NAME)".into(),
    })?;
    Ok(dir.with_file_name(format!("{}.{suffix}", name.to_string_lossy())))
}

/// Refuses to build over something that is not an index folder (a file, or a folder with
/// other contents), so a typo in `--out` cannot delete someone's data.
fn check_output(out: &Path) -> Result<(), IndexError> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(IndexError::BadOutput {
            path: out.to_path_buf(),
            message: "exists and is a file, not an index folder".into(),
        });
    }
    let empty = std::fs::read_dir(out)
        .map_err(|e| IndexError::io(out, e))?
        .next()
        .is_none();
    if !empty && !out.join(MANIFEST_FILE).is_file() {
        return Err(IndexError::BadOutput {
            path: out.to_path_buf(),
            message: format!(
                "exists and is not an index folder (no {MANIFEST_FILE}); refusing to replace it"
            ),
        });
    }
    Ok(())
}

/// Puts the finished `tmp` folder at `out`: the old folder is renamed aside, the new one
/// renamed into place, then the old one deleted. Each rename is atomic; if the process dies
/// between the two, `out` is missing and loading it points at `out.old-<pid>`.
pub fn replace_dir(tmp: &Path, out: &Path) -> Result<(), IndexError> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| IndexError::io(parent, e))?;
    }
    if !out.exists() {
        return std::fs::rename(tmp, out).map_err(|e| IndexError::io(out, e));
    }
    let old = sibling(out, &format!("old-{}", std::process::id()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| IndexError::io(&old, e))?;
    }
    std::fs::rename(out, &old).map_err(|e| IndexError::io(out, e))?;
    if let Err(e) = std::fs::rename(tmp, out) {
        // Put the old index back so the target stays usable.
        let _ = std::fs::rename(&old, out);
        return Err(IndexError::io(out, e));
    }
    std::fs::remove_dir_all(&old).map_err(|e| IndexError::io(&old, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_dir_swaps_in_the_new_folder_and_drops_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("idx");
        let tmp = dir.path().join("idx.tmp-1");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("a"), "new").unwrap();
        replace_dir(&tmp, &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "new");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::write(tmp.join("a"), "newer").unwrap();
        replace_dir(&tmp, &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "newer");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no tmp or old folder left behind");
    }

    #[test]
    fn output_that_is_not_an_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_output(&dir.path().join("new")).is_ok());
        assert!(check_output(dir.path()).is_ok(), "empty folder is fine");
        std::fs::write(dir.path().join("precious.txt"), "x").unwrap();
        let e = check_output(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not an index folder"), "{e}");
        let e = check_output(&dir.path().join("precious.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a file"), "{e}");
        std::fs::write(dir.path().join(MANIFEST_FILE), "{}").unwrap();
        assert!(
            check_output(dir.path()).is_ok(),
            "an index folder may be replaced"
        );
    }
}
