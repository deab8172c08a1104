//! Loads a built index once, embeds a query image and returns its nearest neighbours with
//! their code ([`NeighbourSet`]); an optional keyword filter (`--require cut`) goes through
//! the index's tantivy side.
//!
//! The ANN part sits behind [`VectorIndex`] ([`HnswIndex`] on disk now, [`ExactIndex`] as the
//! brute-force reference for benchmarks; a distributed store can be added later).

mod hnsw;
mod keywords;

use std::path::{Path, PathBuf};
use std::time::Instant;

use indexer::encoder::{encoder_from_identity, load_image, EncoderError, ImageEncoder};
use indexer::index::manifest::{STORE_FILE, TANTIVY_DIR};
use indexer::index::store::{read_store, StoreEntry};
use indexer::index::thumbs::{read_some, THUMBS_FILE};
use indexer::index::{IndexError, Manifest};
use serde::Serialize;

pub use hnsw::{ExactIndex, HnswIndex};
pub use keywords::KeywordIndex;

/// Errors of loading an index or answering a query.
#[derive(Debug, thiserror::Error)]
pub enum RetrieverError {
    /// The index folder is missing, damaged, or from another encoder or version.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The query image could not be read or embedded.
    #[error(transparent)]
    Encoder(#[from] EncoderError),
    /// A replacement vector index that does not line up with the store.
    #[error("a vector index of {vectors} vectors x {dims} dims cannot replace one of {expected_vectors} x {expected_dims}")]
    IndexShape {
        /// Vectors in the replacement.
        vectors: usize,
        /// Its dims.
        dims: usize,
        /// Entries in the store.
        expected_vectors: usize,
        /// The manifest's dims.
        expected_dims: usize,
    },
    /// A query vector of the wrong length (another encoder's vector).
    #[error("query vector has {found} dimensions, the index has {expected}")]
    Dims {
        /// Length of the query.
        found: usize,
        /// The index's dims.
        expected: usize,
    },
}

/// Nearest-neighbour search over unit vectors; scores are cosine similarities (1 = same).
pub trait VectorIndex: Send + Sync {
    /// Vectors in the index.
    fn len(&self) -> usize;

    /// True when the index holds no vector.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Vector length.
    fn dims(&self) -> usize;

    /// The `k` best (data id, cosine) pairs, best first; with `allowed` (sorted data ids),
    /// only those ids are returned.
    fn search(&self, query: &[f32], k: usize, allowed: Option<&[usize]>) -> Vec<(usize, f32)>;

    /// The stored vector of a data id, `None` past the end.
    fn vector(&self, id: usize) -> Option<&[f32]>;
}

/// One neighbour of a query: where it is in the corpus, how close, and its code.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Neighbour {
    /// 1-based rank.
    pub rank: usize,
    /// The corpus id.
    pub id: String,
    /// Cosine similarity to the query (1 = identical vector).
    pub score: f32,
    /// The neighbour's CadQuery code.
    pub code: String,
    /// Its row in this index's store (the HNSW data id): where its thumbnail is.
    #[serde(skip)]
    pub data_id: usize,
}

/// The answer to one query, with its timing split (embedding vs. search).
#[derive(Debug, Clone, Serialize)]
pub struct NeighbourSet {
    /// Neighbours, best first (fewer than k when the index or the filter has fewer).
    pub neighbours: Vec<Neighbour>,
    /// Seconds spent embedding the query image (0 for vector queries).
    pub embed_seconds: f64,
    /// Seconds spent in the keyword filter and the vector search.
    pub search_seconds: f64,
}

/// A loaded index: manifest, encoder, vector index (the HNSW graph unless replaced), id -> code
/// store and keyword index.
pub struct Retriever {
    dir: PathBuf,
    manifest: Manifest,
    encoder: Box<dyn ImageEncoder>,
    index: Box<dyn VectorIndex>,
    store: Vec<StoreEntry>,
    keywords: KeywordIndex,
}

impl std::fmt::Debug for Retriever {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retriever")
            .field("dir", &self.dir)
            .field("encoder", &self.manifest.encoder.id)
            .field("vectors", &self.store.len())
            .finish()
    }
}

impl Retriever {
    /// Loads `dir` once: manifest (format version and, when `encoder` is given, the encoder
    /// identity must match), file sizes and checksums, the graph, the store and tantivy.
    /// Without `encoder`, the manifest's own encoder is rebuilt.
    pub fn load(
        dir: &Path,
        encoder: Option<Box<dyn ImageEncoder>>,
    ) -> Result<Self, RetrieverError> {
        let manifest = Manifest::read(dir)?;
        let encoder = match encoder {
            Some(e) => {
                manifest.check_encoder(dir, &e.identity())?;
                e
            }
            None => {
                let e = encoder_from_identity(&manifest.encoder)?;
                manifest.check_encoder(dir, &e.identity())?;
                e
            }
        };
        manifest.verify_files(dir)?;
        let store_path = dir.join(STORE_FILE);
        let store = read_store(&store_path)?;
        if store.len() != manifest.counts.vectors {
            return Err(IndexError::Corrupt {
                path: store_path,
                message: format!(
                    "{} entries, the manifest says {}",
                    store.len(),
                    manifest.counts.vectors
                ),
            }
            .into());
        }
        let index: Box<dyn VectorIndex> = Box::new(HnswIndex::load(dir, &manifest)?);
        let keywords = KeywordIndex::open(&dir.join(TANTIVY_DIR), store.len())?;
        Ok(Retriever {
            dir: dir.to_path_buf(),
            manifest,
            encoder,
            index,
            store,
            keywords,
        })
    }

    /// The index folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest read at load.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The query encoder (the one the index was built with).
    pub fn encoder(&self) -> &dyn ImageEncoder {
        self.encoder.as_ref()
    }

    /// The vector index.
    pub fn index(&self) -> &dyn VectorIndex {
        self.index.as_ref()
    }

    /// Searches with `index` from now on instead of the loaded graph; it must hold as many
    /// vectors as the store, of the manifest's dims, in data-id order.
    pub fn with_index(mut self, index: Box<dyn VectorIndex>) -> Result<Self, RetrieverError> {
        if index.len() != self.store.len() || index.dims() != self.manifest.dims {
            return Err(RetrieverError::IndexShape {
                vectors: index.len(),
                dims: index.dims(),
                expected_vectors: self.store.len(),
                expected_dims: self.manifest.dims,
            });
        }
        self.index = index;
        Ok(self)
    }

    /// Replaces the graph by brute-force search over the same vectors: exact neighbours, for
    /// recall checks, at a cost linear in the index size.
    pub fn exact(self) -> Result<Self, RetrieverError> {
        let exact = ExactIndex::copy_of(self.index.as_ref());
        self.with_index(Box::new(exact))
    }

    /// The id -> code store, in data-id order.
    pub fn store(&self) -> &[StoreEntry] {
        &self.store
    }

    /// PNG thumbnails of the entries at these data ids ([`Neighbour::data_id`]), read from
    /// `thumbs.bin` on demand; `None` for an index built before thumbnails were stored.
    pub fn thumbnails(&self, data_ids: &[usize]) -> Result<Option<Vec<Vec<u8>>>, RetrieverError> {
        if !self.manifest.files.contains_key(THUMBS_FILE) {
            return Ok(None);
        }
        Ok(Some(read_some(&self.dir.join(THUMBS_FILE), data_ids)?))
    }

    /// Reads, converts (grey/RGBA/any size) and searches an image file.
    pub fn search_path(
        &self,
        path: &Path,
        k: usize,
        require: &[String],
    ) -> Result<NeighbourSet, RetrieverError> {
        let image = load_image(path)?;
        self.search_image(&image, k, require)
    }

    /// Embeds an image and returns its `k` nearest neighbours, restricted to programs using
    /// every `require` keyword (dialect op tokens, e.g. `cut`, `threePointArc`, `both`).
    pub fn search_image(
        &self,
        image: &image::RgbImage,
        k: usize,
        require: &[String],
    ) -> Result<NeighbourSet, RetrieverError> {
        let t = Instant::now();
        let v = self.encoder.encode(image)?;
        let embed_seconds = t.elapsed().as_secs_f64();
        let mut set = self.search_vector(&v, k, require)?;
        set.embed_seconds = embed_seconds;
        Ok(set)
    }

    /// Searches with a ready vector (same encoder); `require` as in [`Self::search_image`].
    pub fn search_vector(
        &self,
        v: &[f32],
        k: usize,
        require: &[String],
    ) -> Result<NeighbourSet, RetrieverError> {
        if v.len() != self.index.dims() {
            return Err(RetrieverError::Dims {
                found: v.len(),
                expected: self.index.dims(),
            });
        }
        let t = Instant::now();
        let allowed = if require.is_empty() {
            None
        } else {
            Some(self.keywords.matching(require)?)
        };
        let hits = self.index.search(v, k, allowed.as_deref());
        let search_seconds = t.elapsed().as_secs_f64();
        let neighbours = hits
            .into_iter()
            .filter_map(|(id, score)| self.store.get(id).map(|e| (id, e, score)))
            .enumerate()
            .map(|(i, (data_id, e, score))| Neighbour {
                rank: i + 1,
                id: e.id.clone(),
                score,
                code: e.code.clone(),
                data_id,
            })
            .collect();
        Ok(NeighbourSet {
            neighbours,
            embed_seconds: 0.0,
            search_seconds,
        })
    }
}

/// Resident memory of this process in bytes (Linux `/proc/self/status` VmRSS), for the
/// benchmark's memory figures; `None` where unavailable.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
