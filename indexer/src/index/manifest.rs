//! `manifest.json`: what an index folder holds and how it was made; read first on load so a
//! mismatched or damaged index is refused with a message instead of searched.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::hnsw::HnswParams;
use super::IndexError;
use crate::encoder::EncoderIdentity;

/// The index folder format this program writes and reads; bump on any layout change.
pub const FORMAT_VERSION: u32 = 1;
/// The manifest's file name inside an index folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Basename of the hnsw_rs dump (`hnsw.hnsw.graph`, `hnsw.hnsw.data`).
pub const HNSW_BASENAME: &str = "hnsw";
/// The id -> code store's file name.
pub const STORE_FILE: &str = "store.jsonl";
/// The tantivy index's folder name.
pub const TANTIVY_DIR: &str = "tantivy";
/// The only metric written now: cosine similarity (dot product of unit vectors).
pub const METRIC_COSINE: &str = "cosine";

/// The corpus an index was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusInfo {
    /// The corpus folder (absolute when it could be resolved).
    pub path: String,
    /// The split indexed.
    pub split: String,
    /// FNV-1a 64 hex over the indexed rows' (id, code) pairs, in order.
    pub content_hash: String,
    /// Rows read from the split (indexed + skipped).
    pub rows: usize,
}

/// How many vectors went in and how many rows were left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Vectors in the graph (= lines in the store = tantivy documents).
    pub vectors: usize,
    /// Rows whose image did not decode or was blank (warned about at build time).
    pub skipped: usize,
}

/// Size and checksum of one file, checked before the file is handed to a parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    /// Length in bytes.
    pub bytes: u64,
    /// [`checksum_file`] as 16 hex digits.
    pub checksum: String,
}

/// The contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] at build time.
    pub format_version: u32,
    /// Where the vectors came from.
    pub corpus: CorpusInfo,
    /// The encoder that made the vectors; queries must use the same one.
    pub encoder: EncoderIdentity,
    /// Vector length.
    pub dims: usize,
    /// Similarity: [`METRIC_COSINE`].
    pub metric: String,
    /// Vector and skipped-row counts.
    pub counts: Counts,
    /// HNSW build parameters and the default search breadth.
    pub hnsw: HnswParams,
    /// Files (relative to the folder) with their sizes and checksums.
    pub files: BTreeMap<String, FileCheck>,
    /// Build time, Unix seconds.
    pub created_unix: u64,
}

impl Manifest {
    /// Reads and checks `DIR/manifest.json`: a missing folder or file, unparsable JSON and a
    /// foreign format version are distinct errors naming the path.
    pub fn read(dir: &Path) -> Result<Self, IndexError> {
        if !dir.is_dir() {
            return Err(IndexError::Missing {
                dir: dir.to_path_buf(),
                hint: interrupted_rebuild_hint(dir),
            });
        }
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IndexError::MissingFile { path })
            }
            Err(e) => return Err(IndexError::io(&path, e)),
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| IndexError::Corrupt {
                path: path.clone(),
                message: format!("not JSON: {e}"),
            })?;
        let found = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| IndexError::Corrupt {
                path: path.clone(),
                message: "no format_version".into(),
            })?;
        if found != u64::from(FORMAT_VERSION) {
            return Err(IndexError::FormatVersion {
                path,
                found: found.min(u64::from(u32::MAX)) as u32,
                expected: FORMAT_VERSION,
            });
        }
        serde_json::from_value(value).map_err(|e| IndexError::Corrupt {
            path,
            message: format!("unexpected manifest fields: {e}"),
        })
    }

    /// Writes `DIR/manifest.json` (pretty JSON, via a temporary file and a rename).
    pub fn write(&self, dir: &Path) -> Result<(), IndexError> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        std::fs::write(&tmp, text + "\n").map_err(|e| IndexError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| IndexError::io(&path, e))
    }

    /// Refuses an encoder other than the one the index was built with (id and hash compared).
    pub fn check_encoder(&self, dir: &Path, asked: &EncoderIdentity) -> Result<(), IndexError> {
        if self.encoder.id != asked.id || self.encoder.hash != asked.hash {
            return Err(IndexError::EncoderMismatch {
                path: dir.join(MANIFEST_FILE),
                built: format!("{} (hash {})", self.encoder.id, self.encoder.hash),
                built_id: self.encoder.id.clone(),
                asked: format!("{} (hash {})", asked.id, asked.hash),
            });
        }
        Ok(())
    }

    /// Checks every listed file's presence, size and checksum; run before parsing them,
    /// because hnsw_rs aborts the process on some damaged dumps instead of returning errors.
    pub fn verify_files(&self, dir: &Path) -> Result<(), IndexError> {
        for (name, check) in &self.files {
            let path = dir.join(name);
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(IndexError::MissingFile { path })
                }
                Err(e) => return Err(IndexError::io(&path, e)),
            };
            if meta.len() != check.bytes {
                return Err(IndexError::Corrupt {
                    message: format!("{} bytes, the manifest says {}", meta.len(), check.bytes),
                    path,
                });
            }
            let sum = format!("{:016x}", checksum_file(&path)?);
            if sum != check.checksum {
                return Err(IndexError::Corrupt {
                    message: format!("checksum {sum}, the manifest says {}", check.checksum),
                    path,
                });
            }
        }
        Ok(())
    }
}

/// Size and checksum of a file, for [`Manifest::files`].
pub fn file_check(path: &Path) -> Result<FileCheck, IndexError> {
    let bytes = std::fs::metadata(path)
        .map_err(|e| IndexError::io(path, e))?
        .len();
    Ok(FileCheck {
        bytes,
        checksum: format!("{:016x}", checksum_file(path)?),
    })
}

/// A fast content checksum: FNV-1a 64 over little-endian u64 words (the last word
/// zero-padded), ~8x faster than byte-wise FNV so verifying a large dump stays cheap at load.
pub fn checksum_file(path: &Path) -> Result<u64, IndexError> {
    let mut file = std::fs::File::open(path).map_err(|e| IndexError::io(path, e))?;
    let mut h = seeded::Fnv1a64::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::with_capacity(8);
    let mut mix = |word: u64| h.update_word(word);
    loop {
        let n = file.read(&mut buf).map_err(|e| IndexError::io(path, e))?;
        if n == 0 {
            break;
        }
        let mut data = &buf[..n];
        if !carry.is_empty() {
            let take = (8 - carry.len()).min(data.len());
            carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if carry.len() == 8 {
                mix(u64::from_le_bytes(carry[..].try_into().expect("8 bytes")));
                carry.clear();
            }
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        carry.extend_from_slice(words.remainder());
    }
    if !carry.is_empty() {
        carry.resize(8, 0);
        mix(u64::from_le_bytes(carry[..].try_into().expect("8 bytes")));
    }
    Ok(h.finish())
}

/// When `DIR` is missing but a `DIR.old-<pid>` exists, a rebuild died between its two
/// renames: say where the previous index is.
fn interrupted_rebuild_hint(dir: &Path) -> String {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return String::new();
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!("{}.old-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return String::new();
    };
    let old: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect();
    match old.first() {
        Some(p) => format!(
            "; a rebuild was interrupted: the previous index is at {} (rename it to {})",
            p.display(),
            dir.display()
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sees_every_byte_and_is_chunking_independent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let a = checksum_file(&p).unwrap();
        let mut flipped = data.clone();
        flipped[(2 << 20) + 3] ^= 1;
        std::fs::write(&p, &flipped).unwrap();
        assert_ne!(a, checksum_file(&p).unwrap());
        let mut tail = data.clone();
        *tail.last_mut().unwrap() ^= 0x80;
        std::fs::write(&p, &tail).unwrap();
        assert_ne!(a, checksum_file(&p).unwrap());
    }

    #[test]
    fn missing_folder_mentions_an_interrupted_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let idx = dir.path().join("pix");
        let e = Manifest::read(&idx).unwrap_err().to_string();
        assert!(e.contains("no index here"), "{e}");
        assert!(!e.contains("interrupted"), "{e}");
        std::fs::create_dir(dir.path().join("pix.old-123")).unwrap();
        let e = Manifest::read(&idx).unwrap_err().to_string();
        assert!(e.contains("pix.old-123"), "{e}");
    }

    #[test]
    fn foreign_versions_and_junk_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = Manifest::read(dir.path()).unwrap_err();
        assert!(matches!(e, IndexError::MissingFile { .. }), "{e}");
        std::fs::write(dir.path().join(MANIFEST_FILE), "{\"format_version\": 99}").unwrap();
        let e = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("version 99") && e.contains("version 1"), "{e}");
        std::fs::write(dir.path().join(MANIFEST_FILE), "{not json").unwrap();
        let e = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("corrupt index file"), "{e}");
    }
}
