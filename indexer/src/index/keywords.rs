//! The keyword side of an index: dialect op tokens of a program and the tantivy schema that
//! holds them, so `--require cut` can restrict neighbours to programs that use a cut.

use std::path::Path;

use tantivy::schema::{Field, Schema, FAST, INDEXED, STORED, STRING, TEXT};

use super::store::StoreEntry;
use super::IndexError;

/// tantivy field names, shared by the writer here and the reader in the retriever.
pub mod field {
    /// The corpus id (raw string, stored).
    pub const ID: &str = "id";
    /// The code (tokenised words; not stored: the store holds it).
    pub const CODE: &str = "code";
    /// Dialect op tokens (`lineTo circle cut both` ...), lower-cased by the tokenizer.
    pub const OPS: &str = "ops";
    /// The data id (row in the store, id in the HNSW graph), a fast field.
    pub const POS: &str = "pos";
}

/// Heap for tantivy's writer: small corpora, few threads.
const WRITER_HEAP_BYTES: usize = 64 << 20;

/// The tantivy schema of an index and its fields.
#[derive(Debug, Clone)]
pub struct KeywordSchema {
    /// The schema.
    pub schema: Schema,
    /// `id` field.
    pub id: Field,
    /// `code` field.
    pub code: Field,
    /// `ops` field.
    pub ops: Field,
    /// `pos` field.
    pub pos: Field,
}

impl KeywordSchema {
    /// Builds the schema (the same one at write and read time).
    pub fn new() -> Self {
        let mut b = Schema::builder();
        let id = b.add_text_field(field::ID, STRING | STORED);
        let code = b.add_text_field(field::CODE, TEXT);
        let ops = b.add_text_field(field::OPS, TEXT);
        let pos = b.add_u64_field(field::POS, FAST | INDEXED | STORED);
        KeywordSchema {
            schema: b.build(),
            id,
            code,
            ops,
            pos,
        }
    }
}

impl Default for KeywordSchema {
    fn default() -> Self {
        Self::new()
    }
}

/// The dialect operations a program uses, in first-use order, once each: every method call
/// `.name(` (moveTo, lineTo, threePointArc, circle, close, extrude, union, cut, ...), plus
/// `both` when an extrude is symmetric (`both=True`).
pub fn op_tokens(code: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            if j > start
                && j < bytes.len()
                && bytes[j] == b'('
                && bytes[start].is_ascii_alphabetic()
            {
                let name = &code[start..j];
                if !out.iter().any(|o| o == name) {
                    out.push(name.to_string());
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    if code.contains("both=True") && !out.iter().any(|o| o == "both") {
        out.push("both".to_string());
    }
    out
}

/// Checks a `--require` keyword and returns the term to look up (lower case, as indexed).
pub fn keyword_term(keyword: &str) -> Result<String, IndexError> {
    let k = keyword.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(IndexError::BadKeyword(keyword.to_string()));
    }
    Ok(k.to_ascii_lowercase())
}

/// Writes the tantivy index of `entries` into `dir` (created), one document per entry with
/// its position as `pos`.
pub fn write_keyword_index(dir: &Path, entries: &[StoreEntry]) -> Result<(), IndexError> {
    std::fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
    let ks = KeywordSchema::new();
    let index = tantivy::Index::create_in_dir(dir, ks.schema.clone())
        .map_err(|e| IndexError::tantivy(dir, e))?;
    let mut writer: tantivy::IndexWriter = index
        .writer(WRITER_HEAP_BYTES)
        .map_err(|e| IndexError::tantivy(dir, e))?;
    for (pos, e) in entries.iter().enumerate() {
        let doc = tantivy::doc!(
            ks.id => e.id.as_str(),
            ks.code => e.code.as_str(),
            ks.ops => op_tokens(&e.code).join(" "),
            ks.pos => pos as u64
        );
        writer
            .add_document(doc)
            .map_err(|e| IndexError::tantivy(dir, e))?;
    }
    writer.commit().map_err(|e| IndexError::tantivy(dir, e))?;
    writer
        .wait_merging_threads()
        .map_err(|e| IndexError::tantivy(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_tokens_of_a_dialect_program() {
        let code = "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(0.1, 0.0).lineTo(0.2, 0.0).threePointArc((0.3, 0.1), (0.2, 0.2)).close()\nsolid0=wp_sketch0.add(loop0).extrude(0.5, both=True)\nsolid=solid0\nsolid=solid.cut(solid1)\n";
        assert_eq!(
            op_tokens(code),
            [
                "Workplane",
                "Plane",
                "Vector",
                "moveTo",
                "lineTo",
                "threePointArc",
                "close",
                "add",
                "extrude",
                "cut",
                "both"
            ]
        );
        // Numbers such as `0.5` and attribute reads without a call are not tokens.
        assert!(op_tokens("x = 0.5\ny = a.b\n").is_empty());
    }

    #[test]
    fn keywords_are_single_tokens() {
        assert_eq!(keyword_term("threePointArc").unwrap(), "threepointarc");
        assert_eq!(keyword_term(" cut ").unwrap(), "cut");
        assert!(keyword_term("cut union").is_err());
        assert!(keyword_term("").is_err());
        assert!(keyword_term("a(b").is_err());
    }
}
