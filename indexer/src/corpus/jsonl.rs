//! The png+jsonl layout: one `*.jsonl` of `{"id", "code"}` rows (optional `"split"`, `"prompt"`,
//! `"token_count"`, `"hundred_subset"`) next to `<id>.png` files.

use std::fs::File;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{split_index, CorpusError, CorpusRow, RowOrigin, Split};

#[derive(Deserialize)]
struct Record {
    id: serde_json::Value,
    code: String,
    #[serde(default)]
    split: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    token_count: Option<i64>,
    #[serde(default)]
    hundred_subset: Option<bool>,
}

/// A parsed line: id checked to be a safe file stem, split resolved.
struct Parsed {
    id: String,
    split: Split,
    record: Record,
}

fn line_err(file: &Path, line: usize, message: impl Into<String>) -> CorpusError {
    CorpusError::JsonlLine {
        file: file.to_path_buf(),
        line,
        message: message.into(),
    }
}

fn parse_line(file: &Path, line: usize, text: &str) -> Result<Parsed, CorpusError> {
    let record: Record = serde_json::from_str(text).map_err(|e| {
        line_err(
            file,
            line,
            format!("not a {{\"id\", \"code\"}} record: {e}"),
        )
    })?;
    let id = match &record.id {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        other => {
            return Err(line_err(
                file,
                line,
                format!("`id` must be a string or an integer, got {other}"),
            ))
        }
    };
    // The id names a file next to the jsonl: refuse anything that could point elsewhere.
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\\', '\0']) {
        return Err(line_err(
            file,
            line,
            format!("`id` {id:?} is not usable as a file name"),
        ));
    }
    let split = match &record.split {
        None => Split::Train,
        Some(s) => s
            .parse()
            .map_err(|e: CorpusError| line_err(file, line, e.to_string()))?,
    };
    Ok(Parsed { id, split, record })
}

fn png_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.png"))
}

/// Scans the whole jsonl at open: checks every line parses and every png exists; returns the
/// row count per split (train, validation, test).
pub(crate) fn scan(file: &Path, dir: &Path) -> Result<[usize; 3], CorpusError> {
    let handle = File::open(file).map_err(|e| CorpusError::io(file, e))?;
    let mut counts = [0usize; 3];
    for (index, text) in BufReader::new(handle).lines().enumerate() {
        let line = index + 1;
        let text = text.map_err(|e| line_err(file, line, e.to_string()))?;
        if text.trim().is_empty() {
            continue;
        }
        let parsed = parse_line(file, line, &text)?;
        let png = png_path(dir, &parsed.id);
        if !png.is_file() {
            return Err(CorpusError::MissingImage {
                file: file.to_path_buf(),
                line,
                id: parsed.id,
                png,
            });
        }
        counts[split_index(parsed.split)] += 1;
    }
    Ok(counts)
}

/// Streams one split's rows from the jsonl, reading each png as its row comes.
pub(crate) struct JsonlRows {
    file: PathBuf,
    dir: PathBuf,
    split: Split,
    lines: Option<Lines<BufReader<File>>>,
    line: usize,
    done: bool,
}

impl JsonlRows {
    pub(crate) fn new(file: PathBuf, dir: PathBuf, split: Split) -> Self {
        JsonlRows {
            file,
            dir,
            split,
            lines: None,
            line: 0,
            done: false,
        }
    }

    fn row(&self, line: usize, parsed: Parsed) -> Result<CorpusRow, CorpusError> {
        let png = png_path(&self.dir, &parsed.id);
        let image_png = std::fs::read(&png).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CorpusError::MissingImage {
                    file: self.file.clone(),
                    line,
                    id: parsed.id.clone(),
                    png: png.clone(),
                }
            } else {
                CorpusError::io(&png, e)
            }
        })?;
        let image_path = png.file_name().map(|n| n.to_string_lossy().into_owned());
        let Record {
            code,
            prompt,
            token_count,
            hundred_subset,
            ..
        } = parsed.record;
        Ok(CorpusRow {
            deepcad_id: parsed.id,
            cadquery: code,
            image_png,
            image_path,
            token_count: token_count.unwrap_or(0),
            prompt: prompt.unwrap_or_default(),
            hundred_subset: hundred_subset.unwrap_or(false),
            origin: RowOrigin {
                file: self.file.clone(),
                row: line - 1,
            },
        })
    }
}

impl Iterator for JsonlRows {
    type Item = Result<CorpusRow, CorpusError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.lines.is_none() {
            match File::open(&self.file) {
                Ok(f) => self.lines = Some(BufReader::new(f).lines()),
                Err(e) => {
                    self.done = true;
                    return Some(Err(CorpusError::io(&self.file, e)));
                }
            }
        }
        loop {
            let next = self.lines.as_mut()?.next();
            let Some(text) = next else {
                self.done = true;
                return None;
            };
            self.line += 1;
            let line = self.line;
            let text = match text {
                Ok(t) => t,
                Err(e) => {
                    // An unreadable line (io error, invalid UTF-8): stop, the rest is suspect.
                    self.done = true;
                    return Some(Err(line_err(&self.file, line, e.to_string())));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            let parsed = match parse_line(&self.file, line, &text) {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            if parsed.split != self.split {
                continue;
            }
            return Some(self.row(line, parsed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_escape_the_folder_are_refused() {
        let f = Path::new("rows.jsonl");
        for bad in [
            r#"{"id": "../x", "code": "c"}"#,
            r#"{"id": "", "code": "c"}"#,
            r#"{"id": "a/b", "code": "c"}"#,
            r#"{"id": 1.5, "code": "c"}"#,
        ] {
            let err = parse_line(f, 4, bad).err().unwrap().to_string();
            assert!(err.starts_with("rows.jsonl: line 4: `id`"), "{bad}: {err}");
        }
        let ok = parse_line(f, 1, r#"{"id": 123, "code": "c", "split": "val"}"#).unwrap();
        assert_eq!(ok.id, "123");
        assert_eq!(ok.split, Split::Validation);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let f = Path::new("rows.jsonl");
        let err = parse_line(f, 7, r#"{"id": "a"}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("rows.jsonl: line 7:"), "{err}");
        assert!(err.contains("code"), "{err}");
        let err = parse_line(f, 2, r#"{"id": "a", "code": "c", "split": "dev"}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("line 2") && err.contains("`dev`"), "{err}");
    }
}
