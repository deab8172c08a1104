//! The id -> code store: `store.jsonl`, one `{"id", "code"}` line per vector in data-id
//! order, read once at load (line n is HNSW data id n).

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::IndexError;

/// One stored neighbour: the corpus id and its CadQuery code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreEntry {
    /// The corpus row id (`deepcad_id`).
    pub id: String,
    /// The row's CadQuery code.
    pub code: String,
}

/// Writes the store; the order of `entries` defines the data ids.
pub fn write_store(path: &Path, entries: &[StoreEntry]) -> Result<(), IndexError> {
    let file = std::fs::File::create(path).map_err(|e| IndexError::io(path, e))?;
    let mut w = BufWriter::new(file);
    for e in entries {
        serde_json::to_writer(&mut w, e).map_err(|e| IndexError::io(path, e.into()))?;
        w.write_all(b"\n").map_err(|e| IndexError::io(path, e))?;
    }
    w.flush().map_err(|e| IndexError::io(path, e))
}

/// Reads the whole store; a bad line is a [`IndexError::Corrupt`] naming its line number.
pub fn read_store(path: &Path) -> Result<Vec<StoreEntry>, IndexError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(IndexError::MissingFile {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(IndexError::io(path, e)),
    };
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| IndexError::Corrupt {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", i + 1),
        })?;
        let entry: StoreEntry = serde_json::from_str(&line).map_err(|e| IndexError::Corrupt {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", i + 1),
        })?;
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store.jsonl");
        let rows = vec![
            StoreEntry {
                id: "a".into(),
                code: "x = 1\n\"q\"".into(),
            },
            StoreEntry {
                id: "b".into(),
                code: String::new(),
            },
        ];
        write_store(&p, &rows).unwrap();
        assert_eq!(read_store(&p).unwrap(), rows);
        std::fs::write(&p, "{\"id\":\"a\",\"code\":\"\"}\n{oops\n").unwrap();
        let e = read_store(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = read_store(&dir.path().join("nope.jsonl")).unwrap_err();
        assert!(matches!(e, IndexError::MissingFile { .. }));
    }
}
