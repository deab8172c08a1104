//! [`VectorIndex`] implementations: the hnsw_rs graph reloaded from an index folder, and an
//! exact brute-force index (the reference for recall measurements and small filtered sets).

use std::path::Path;
use std::sync::Arc;

use hnsw_rs::prelude::Point;
use indexer::index::hnsw::{load_graph, Graph, LoadedGraph};
use indexer::index::{IndexError, Manifest};

use crate::VectorIndex;

/// Filtered searches over at most this many allowed ids are done exactly (a restrictive
/// filter starves HNSW's beam; scanning a few thousand vectors takes well under a ms).
const EXACT_FILTER_LIMIT: usize = 4096;

/// The HNSW graph of an index, with a data id -> point table for exact filtered scans.
pub struct HnswIndex {
    graph: Graph,
    points: Vec<Arc<Point<'static, f32>>>,
    dims: usize,
    ef_search: usize,
}

impl HnswIndex {
    /// Reloads the dump in an index folder whose manifest has been read and whose files
    /// have been verified (hnsw_rs aborts on some damaged dumps, so verify first).
    pub fn load(dir: &Path, manifest: &Manifest) -> Result<Self, IndexError> {
        Self::load_dump(
            dir,
            manifest.counts.vectors,
            manifest.dims,
            manifest.hnsw.ef_search,
        )
    }

    /// Reloads `DIR/hnsw.hnsw.{graph,data}` ([`load_graph`]) and checks it holds `n`
    /// vectors of `dims` with data ids 0..n.
    pub fn load_dump(
        dir: &Path,
        n: usize,
        dims: usize,
        ef_search: usize,
    ) -> Result<Self, IndexError> {
        let LoadedGraph { graph, points } = load_graph(dir, n, dims)?;
        Ok(HnswIndex {
            graph,
            points,
            dims,
            ef_search,
        })
    }

    /// The search breadth used (at least k).
    pub fn ef_search(&self) -> usize {
        self.ef_search
    }

    /// Changes the search breadth (benchmarks sweep it).
    pub fn set_ef_search(&mut self, ef: usize) {
        self.ef_search = ef.max(1);
    }

    fn exact_over(&self, query: &[f32], k: usize, ids: &[usize]) -> Vec<(usize, f32)> {
        let scored = ids
            .iter()
            .filter_map(|id| self.points.get(*id).map(|p| (*id, dot(query, p.get_v()))));
        top_k(scored, k)
    }
}

impl VectorIndex for HnswIndex {
    fn len(&self) -> usize {
        self.points.len()
    }

    fn vector(&self, id: usize) -> Option<&[f32]> {
        self.points.get(id).map(|p| p.get_v())
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn search(&self, query: &[f32], k: usize, allowed: Option<&[usize]>) -> Vec<(usize, f32)> {
        if k == 0 || self.points.is_empty() {
            return Vec::new();
        }
        let ef = self.ef_search.max(k);
        let to_pairs = |hits: Vec<hnsw_rs::prelude::Neighbour>| -> Vec<(usize, f32)> {
            hits.into_iter()
                .map(|n| (n.d_id, 1.0 - n.distance))
                .collect()
        };
        match allowed {
            None => to_pairs(self.graph.search(query, k, ef)),
            Some(ids) if ids.len() <= EXACT_FILTER_LIMIT => self.exact_over(query, k, ids),
            Some(ids) => {
                let filter = |id: &usize| ids.binary_search(id).is_ok();
                let hits = to_pairs(self.graph.search_filter(query, k, ef, Some(&filter)));
                if hits.len() < k.min(ids.len()) {
                    self.exact_over(query, k, ids)
                } else {
                    hits
                }
            }
        }
    }
}

/// Brute-force cosine search over unit vectors held in one flat buffer.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    data: Vec<f32>,
    dims: usize,
}

impl ExactIndex {
    /// An index over `vectors` (data id = position); all must have the same length.
    pub fn new(vectors: &[Vec<f32>]) -> Self {
        let dims = vectors.first().map_or(0, |v| v.len());
        let mut data = Vec::with_capacity(vectors.len() * dims);
        for v in vectors {
            debug_assert_eq!(v.len(), dims);
            data.extend_from_slice(v);
        }
        ExactIndex { data, dims }
    }

    /// A copy of `index`'s vectors (data id = position), read straight into the flat buffer.
    pub fn copy_of(index: &dyn VectorIndex) -> Self {
        let dims = index.dims();
        let mut data = Vec::with_capacity(index.len() * dims);
        for v in (0..index.len()).filter_map(|i| index.vector(i)) {
            data.extend_from_slice(v);
        }
        ExactIndex { data, dims }
    }
}

impl VectorIndex for ExactIndex {
    fn len(&self) -> usize {
        self.data.len().checked_div(self.dims).unwrap_or(0)
    }

    fn vector(&self, id: usize) -> Option<&[f32]> {
        if id >= self.len() {
            return None;
        }
        self.data.get(id * self.dims..(id + 1) * self.dims)
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn search(&self, query: &[f32], k: usize, allowed: Option<&[usize]>) -> Vec<(usize, f32)> {
        if self.dims == 0 {
            return Vec::new();
        }
        let rows = self.data.chunks_exact(self.dims).enumerate();
        match allowed {
            None => top_k(rows.map(|(i, v)| (i, dot(query, v))), k),
            Some(ids) => top_k(
                rows.filter(|(i, _)| ids.binary_search(i).is_ok())
                    .map(|(i, v)| (i, dot(query, v))),
                k,
            ),
        }
    }
}

/// Dot product (cosine of unit vectors).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The k highest scores, best first (ties by lower id, so results are deterministic).
fn top_k(scored: impl Iterator<Item = (usize, f32)>, k: usize) -> Vec<(usize, f32)> {
    let mut all: Vec<(usize, f32)> = scored.collect();
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if all.len() > k && k > 0 {
        all.select_nth_unstable_by(k - 1, order);
        all.truncate(k);
    }
    all.sort_by(order);
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexer::index::hnsw::{build_graph, dump_graph, HnswParams};

    fn unit_vectors(n: usize, d: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                let mut v: Vec<f32> = (0..d)
                    .map(|_| {
                        s = s
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                    })
                    .collect();
                indexer::encoder::normalise_unit(&mut v);
                v
            })
            .collect()
    }

    #[test]
    fn exact_index_ranks_by_cosine() {
        let vs = unit_vectors(50, 8, 1);
        let idx = ExactIndex::new(&vs);
        let hits = idx.search(&vs[7], 5, None);
        assert_eq!(hits[0].0, 7);
        assert!((hits[0].1 - 1.0).abs() < 1e-4);
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
        let only = idx.search(&vs[7], 5, Some(&[3, 9]));
        assert_eq!(only.len(), 2);
        assert!(only.iter().all(|(i, _)| *i == 3 || *i == 9));
    }

    #[test]
    fn reloaded_graph_agrees_with_exact_search_and_filters() {
        let vs = unit_vectors(600, 24, 2);
        let dir = tempfile::tempdir().unwrap();
        let g = build_graph(&vs, &HnswParams::default());
        dump_graph(&g, dir.path()).unwrap();
        let idx = HnswIndex::load_dump(dir.path(), 600, 24, 64).unwrap();
        assert_eq!(idx.len(), 600);
        assert_eq!(idx.vector(5).unwrap(), &vs[5][..]);
        let exact = ExactIndex::new(&vs);
        let copied = ExactIndex::copy_of(&idx);
        assert_eq!((copied.len(), copied.dims()), (600, 24));
        assert!((0..600).all(|i| copied.vector(i) == exact.vector(i)));
        assert_eq!(copied.vector(600), None);
        let mut agree = 0;
        for (q, v) in vs.iter().enumerate().take(50) {
            let a: Vec<usize> = idx.search(v, 10, None).iter().map(|h| h.0).collect();
            let b: Vec<usize> = exact.search(v, 10, None).iter().map(|h| h.0).collect();
            assert_eq!(a[0], q);
            agree += a.iter().filter(|i| b.contains(i)).count();
        }
        assert!(agree >= 490, "recall@10 {agree}/500");
        let allowed: Vec<usize> = (0..600).filter(|i| i % 7 == 0).collect();
        let hits = idx.search(&vs[14], 5, Some(&allowed));
        assert_eq!(hits.len(), 5);
        assert_eq!(hits[0].0, 14);
        assert!(hits.iter().all(|(i, _)| i % 7 == 0));
        // Wrong expectations are corruption errors, not panics.
        assert!(HnswIndex::load_dump(dir.path(), 601, 24, 64).is_err());
        assert!(HnswIndex::load_dump(dir.path(), 600, 25, 64).is_err());
    }
}
