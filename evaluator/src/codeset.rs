//! Sets of (id, code): jsonl files of `{"id", "code"}` or folders of `<id>.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A snippet's text; a `.py` file need not be UTF-8, and such code is invalid, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeText {
    Utf8(String),
    /// The file's bytes are not UTF-8; `valid_up_to` is the first bad byte's offset.
    NotUtf8 {
        valid_up_to: usize,
    },
}

/// Input problems, each naming the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum CodeSetError {
    #[error("{0}: no such file or folder")]
    Missing(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: duplicate id {id:?} ({first} and {second})")]
    Duplicate {
        path: PathBuf,
        id: String,
        first: String,
        second: String,
    },
    #[error("{0}: holds no code (an empty jsonl file or a folder without *.py files)")]
    Empty(PathBuf),
}

/// An ordered set of snippets keyed by id.
#[derive(Debug, Clone, Default)]
pub struct CodeSet {
    items: Vec<(String, CodeText)>,
    index: HashMap<String, usize>,
}

impl CodeSet {
    /// Build from pairs; `origin` names each item for duplicate errors.
    fn push(
        &mut self,
        path: &Path,
        id: String,
        code: CodeText,
        origin: impl Fn(usize) -> String,
    ) -> Result<(), CodeSetError> {
        if let Some(&first) = self.index.get(&id) {
            return Err(CodeSetError::Duplicate {
                path: path.to_path_buf(),
                id,
                first: origin(first),
                second: origin(self.items.len()),
            });
        }
        self.index.insert(id.clone(), self.items.len());
        self.items.push((id, code));
        Ok(())
    }

    /// Load a jsonl file or a folder of `*.py`.
    pub fn load(path: &Path) -> Result<Self, CodeSetError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CodeSetError::Missing(path.to_path_buf()),
            _ => CodeSetError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        let set = if meta.is_dir() {
            Self::load_folder(path)?
        } else {
            Self::load_jsonl(path)?
        };
        if set.items.is_empty() {
            return Err(CodeSetError::Empty(path.to_path_buf()));
        }
        Ok(set)
    }

    fn load_jsonl(path: &Path) -> Result<Self, CodeSetError> {
        let bytes = std::fs::read(path).map_err(|source| CodeSetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut set = CodeSet::default();
        let mut lines_of = Vec::new();
        for (n, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line_no = n + 1;
            let bad = |reason: String| CodeSetError::BadLine {
                path: path.to_path_buf(),
                line: line_no,
                reason,
            };
            let text = std::str::from_utf8(raw)
                .map_err(|e| bad(format!("not UTF-8 (byte {})", e.valid_up_to())))?;
            if text.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
            let id = match &value["id"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Null => return Err(bad("no \"id\" field".into())),
                other => return Err(bad(format!("\"id\" must be a string, got {other}"))),
            };
            let code = match &value["code"] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => return Err(bad("no \"code\" field".into())),
                other => return Err(bad(format!("\"code\" must be a string, got {other}"))),
            };
            lines_of.push(line_no);
            set.push(path, id, CodeText::Utf8(code), |i| {
                format!("line {}", lines_of[i])
            })?;
        }
        Ok(set)
    }

    fn load_folder(path: &Path) -> Result<Self, CodeSetError> {
        let io = |source| CodeSetError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "py") && p.is_file())
            .collect();
        files.sort();
        let mut set = CodeSet::default();
        for file in &files {
            let bytes = std::fs::read(file).map_err(|source| CodeSetError::Io {
                path: file.clone(),
                source,
            })?;
            let code = match String::from_utf8(bytes) {
                Ok(s) => CodeText::Utf8(s),
                Err(e) => CodeText::NotUtf8 {
                    valid_up_to: e.utf8_error().valid_up_to(),
                },
            };
            let id = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            set.push(path, id, code, |i| files[i].display().to_string())?;
        }
        Ok(set)
    }

    /// Items in input order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &CodeText)> {
        self.items.iter().map(|(id, c)| (id.as_str(), c))
    }

    /// The code for `id`.
    pub fn get(&self, id: &str) -> Option<&CodeText> {
        self.index.get(id).map(|&i| &self.items[i].1)
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// A set from in-memory pairs (ids must be unique).
    pub fn from_pairs(
        pairs: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, CodeSetError> {
        let mut set = CodeSet::default();
        let origin = Path::new("<memory>");
        for (id, code) in pairs {
            set.push(origin, id, CodeText::Utf8(code), |i| format!("item {i}"))?;
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn reads_jsonl_with_numeric_ids_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.jsonl",
            b"{\"id\": 7, \"code\": \"x=1\"}\n\n{\"id\": \"b\", \"code\": \"y\"}\n",
        );
        let set = CodeSet::load(&p).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.get("7"), Some(&CodeText::Utf8("x=1".into())));
    }

    #[test]
    fn malformed_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.jsonl",
            b"{\"id\": \"a\", \"code\": \"x\"}\n{\"id\": \"b\", \"code\n",
        );
        let err = CodeSet::load(&p).unwrap_err().to_string();
        assert!(err.contains("a.jsonl:2: not JSON"), "{err}");
    }

    #[test]
    fn missing_field_and_duplicate_ids_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "a.jsonl", b"{\"id\": \"a\"}\n");
        assert!(CodeSet::load(&p)
            .unwrap_err()
            .to_string()
            .contains("no \"code\" field"));
        let p = write(
            dir.path(),
            "b.jsonl",
            b"{\"id\": \"a\", \"code\": \"\"}\n{\"id\": \"a\", \"code\": \"\"}\n",
        );
        let err = CodeSet::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("duplicate id \"a\" (line 1 and line 2)"),
            "{err}"
        );
    }

    #[test]
    fn empty_and_missing_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "e.jsonl", b"\n");
        assert!(matches!(CodeSet::load(&p), Err(CodeSetError::Empty(_))));
        assert!(matches!(
            CodeSet::load(dir.path()),
            Err(CodeSetError::Empty(_))
        ));
        assert!(matches!(
            CodeSet::load(&dir.path().join("nope")),
            Err(CodeSetError::Missing(_))
        ));
    }

    #[test]
    fn folder_keeps_non_utf8_files_as_invalid_code() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.py", b"x = 1\n");
        write(dir.path(), "b.py", b"x = '\xff\xfe'\n");
        write(dir.path(), "notes.txt", b"ignored");
        let set = CodeSet::load(dir.path()).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.get("b"), Some(&CodeText::NotUtf8 { valid_up_to: 5 }));
    }
}
