//! The tantivy side of a loaded index: which data ids use every required dialect token.

use std::path::{Path, PathBuf};

use indexer::index::keywords::{field, keyword_term, KeywordSchema};
use indexer::index::IndexError;
use tantivy::collector::DocSetCollector;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{Index, IndexReader, Term};

/// The keyword index of an index folder, opened once.
pub struct KeywordIndex {
    dir: PathBuf,
    reader: IndexReader,
    ops: tantivy::schema::Field,
}

impl KeywordIndex {
    /// Opens `DIR` (the index's `tantivy/` folder) and checks its schema and document count.
    pub fn open(dir: &Path, expected_docs: usize) -> Result<Self, IndexError> {
        if !dir.is_dir() {
            return Err(IndexError::MissingFile {
                path: dir.to_path_buf(),
            });
        }
        let index = Index::open_in_dir(dir).map_err(|e| IndexError::tantivy(dir, e))?;
        let want = KeywordSchema::new();
        let ops = index
            .schema()
            .get_field(field::OPS)
            .map_err(|e| IndexError::tantivy(dir, e))?;
        if index.schema().get_field(field::POS).is_err() || ops != want.ops {
            return Err(IndexError::Corrupt {
                path: dir.to_path_buf(),
                message: "unexpected tantivy schema".into(),
            });
        }
        let reader = index.reader().map_err(|e| IndexError::tantivy(dir, e))?;
        let docs = reader.searcher().num_docs() as usize;
        if docs != expected_docs {
            return Err(IndexError::Corrupt {
                path: dir.to_path_buf(),
                message: format!("{docs} documents, the manifest says {expected_docs}"),
            });
        }
        Ok(KeywordIndex {
            dir: dir.to_path_buf(),
            reader,
            ops,
        })
    }

    /// Sorted data ids of programs whose op tokens include every keyword.
    pub fn matching(&self, keywords: &[String]) -> Result<Vec<usize>, IndexError> {
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for k in keywords {
            let term = Term::from_field_text(self.ops, &keyword_term(k)?);
            clauses.push((
                Occur::Must,
                Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
            ));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let docs = searcher
            .search(&query, &DocSetCollector)
            .map_err(|e| IndexError::tantivy(&self.dir, e))?;
        let mut columns = Vec::new();
        for seg in searcher.segment_readers() {
            columns.push(
                seg.fast_fields()
                    .u64(field::POS)
                    .map_err(|e| IndexError::tantivy(&self.dir, e))?,
            );
        }
        let mut ids: Vec<usize> = docs
            .into_iter()
            .filter_map(|addr| {
                columns
                    .get(addr.segment_ord as usize)
                    .and_then(|c| c.first(addr.doc_id))
                    .map(|p| p as usize)
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexer::index::keywords::write_keyword_index;
    use indexer::index::store::StoreEntry;

    #[test]
    fn matching_requires_every_keyword() {
        let dir = tempfile::tempdir().unwrap();
        let e = |id: &str, code: &str| StoreEntry {
            id: id.into(),
            code: code.into(),
        };
        let entries = vec![
            e("a", "s=w.circle(1).extrude(1)\nsolid=solid.cut(s)"),
            e("b", "s=w.lineTo(1, 2).close().extrude(1, both=True)"),
            e(
                "c",
                "s=w.threePointArc((1, 2), (3, 4)).extrude(1)\nsolid=solid.cut(s)",
            ),
        ];
        write_keyword_index(dir.path(), &entries).unwrap();
        let k = KeywordIndex::open(dir.path(), 3).unwrap();
        let m = |ks: &[&str]| {
            k.matching(&ks.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap()
        };
        assert_eq!(m(&["cut"]), vec![0, 2]);
        assert_eq!(m(&["cut", "threePointArc"]), vec![2]);
        assert_eq!(m(&["both"]), vec![1]);
        assert_eq!(m(&["union"]), Vec::<usize>::new());
        assert!(k.matching(&["not a token".to_string()]).is_err());
        assert!(KeywordIndex::open(dir.path(), 4).is_err());
        assert!(KeywordIndex::open(&dir.path().join("nope"), 3).is_err());
    }
}
