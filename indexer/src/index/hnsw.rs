//! The vector side of an index: an hnsw_rs graph over unit vectors with the dot-product
//! distance (1 - cosine), built in parallel, dumped into the index folder and reloaded from it
//! (this module owns the dump's format both ways).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo, Point};
use serde::{Deserialize, Serialize};

use super::manifest::HNSW_BASENAME;
use super::IndexError;

/// The graph type of every index: f32 vectors, `DistDot` (vectors are L2-normalised, so
/// 1 - dot is the cosine distance; with `simdeez_f` it is SIMD and safe on exact matches).
pub type Graph = Hnsw<'static, f32, DistDot>;

/// HNSW parameters, recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswParams {
    /// Neighbours kept per node and layer (M).
    pub max_nb_connection: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Layers at most.
    pub max_layer: usize,
    /// Default candidate list size while searching (raised to k when k is larger).
    pub ef_search: usize,
}

impl Default for HnswParams {
    /// M = 16, ef_construction = 200, 16 layers, ef_search = 64: recall@10 >= 0.98 on our
    /// vectors at well under a millisecond per query (see `rag bench index`).
    fn default() -> Self {
        HnswParams {
            max_nb_connection: 16,
            ef_construction: 200,
            max_layer: 16,
            ef_search: 64,
        }
    }
}

/// Builds a graph over `vectors` (data id = position), inserting in parallel.
pub fn build_graph(vectors: &[Vec<f32>], params: &HnswParams) -> Graph {
    let graph = Hnsw::new(
        params.max_nb_connection,
        vectors.len().max(1),
        params.max_layer,
        params.ef_construction,
        DistDot {},
    );
    let data: Vec<(&[f32], usize)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (v.as_slice(), i))
        .collect();
    graph.parallel_insert_slice(&data);
    graph
}

/// Dumps the graph as `DIR/hnsw.hnsw.graph` + `DIR/hnsw.hnsw.data`; the folder must hold no
/// earlier dump (hnsw_rs would pick another name, which we treat as an error).
pub fn dump_graph(graph: &Graph, dir: &Path) -> Result<(), IndexError> {
    let name = graph
        .file_dump(dir, HNSW_BASENAME)
        .map_err(|e| IndexError::Hnsw {
            path: dir.to_path_buf(),
            message: format!("dump failed: {e}"),
        })?;
    if name != HNSW_BASENAME {
        return Err(IndexError::Hnsw {
            path: dir.to_path_buf(),
            message: format!("dump went to basename {name}, expected {HNSW_BASENAME}"),
        });
    }
    Ok(())
}

/// The dump's file names inside an index folder.
pub fn dump_files() -> [String; 2] {
    [
        format!("{HNSW_BASENAME}.hnsw.graph"),
        format!("{HNSW_BASENAME}.hnsw.data"),
    ]
}

/// A reloaded dump: the graph and its points by data id.
pub struct LoadedGraph {
    /// The graph, in searching mode.
    pub graph: Graph,
    /// Point n has data id n.
    pub points: Vec<Arc<Point<'static, f32>>>,
}

/// Reloads `DIR/hnsw.hnsw.{graph,data}` and checks it holds `n` vectors of `dims` with data
/// ids 0..n. Verify the files' checksums first: hnsw_rs can abort on a damaged dump. The
/// reloader is leaked on purpose: the graph borrows it for its whole life and an index is
/// loaded once per process (the leak is a few hundred bytes).
pub fn load_graph(dir: &Path, n: usize, dims: usize) -> Result<LoadedGraph, IndexError> {
    for f in dump_files() {
        if !dir.join(&f).is_file() {
            return Err(IndexError::MissingFile { path: dir.join(f) });
        }
    }
    let corrupt = |message: String| IndexError::Corrupt {
        path: dir.join(format!("{HNSW_BASENAME}.hnsw.graph")),
        message,
    };
    let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, HNSW_BASENAME)));
    let loaded = catch_unwind(AssertUnwindSafe(move || {
        let io = io;
        io.load_hnsw::<f32, DistDot>()
    }))
    .map_err(|_| corrupt("hnsw_rs panicked while reloading the dump".into()))?;
    let mut graph: Graph = loaded.map_err(|e| IndexError::Hnsw {
        path: dir.to_path_buf(),
        message: format!("reload failed: {e}"),
    })?;
    graph.set_searching_mode(true);
    if graph.get_nb_point() != n {
        return Err(corrupt(format!(
            "{} vectors, expected {n}",
            graph.get_nb_point()
        )));
    }
    let mut slots: Vec<Option<Arc<Point<'static, f32>>>> = vec![None; n];
    for p in graph.get_point_indexation() {
        let id = p.get_origin_id();
        if p.get_v().len() != dims {
            return Err(corrupt(format!(
                "vector {id} has {} dimensions, expected {dims}",
                p.get_v().len()
            )));
        }
        match slots.get_mut(id) {
            Some(s) => *s = Some(p),
            None => return Err(corrupt(format!("data id {id} out of range 0..{n}"))),
        }
    }
    let points = slots
        .into_iter()
        .enumerate()
        .map(|(i, p)| p.ok_or_else(|| corrupt(format!("data id {i} is absent"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LoadedGraph { graph, points })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_vector_comes_back_first_with_distance_zero() {
        let vectors: Vec<Vec<f32>> = (0..200u64)
            .map(|i| {
                // Distinct vectors: a multiplicative hash of (i, d).
                let mut v: Vec<f32> = (0..16u64)
                    .map(|d| ((i * 2654435761 + d * 40503 + i * d * 97) % 1009) as f32 - 504.0)
                    .collect();
                crate::encoder::normalise_unit(&mut v);
                v
            })
            .collect();
        let g = build_graph(&vectors, &HnswParams::default());
        for q in [0usize, 57, 199] {
            let hits = g.search(&vectors[q], 3, 64);
            assert_eq!(hits[0].d_id, q);
            assert!(hits[0].distance.abs() < 1e-4, "{}", hits[0].distance);
        }
        let dir = tempfile::tempdir().unwrap();
        dump_graph(&g, dir.path()).unwrap();
        for f in dump_files() {
            assert!(dir.path().join(f).is_file());
        }
    }
}
