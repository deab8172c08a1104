//! Building an index folder (`indices/NAME/`) from a corpus split and an [`ImageEncoder`]:
//! vectors in an HNSW graph (hnsw_rs, cosine via dot products of unit vectors), a tantivy
//! index over the code and its dialect operations, an id -> code store, and `manifest.json`.
//!
//! Layout of a built folder:
//! - `manifest.json`  format version, corpus path + content hash, encoder identity, dims,
//!   metric, counts, HNSW parameters, sizes and checksums of the other files, created;
//! - `hnsw.hnsw.graph`, `hnsw.hnsw.data`  the hnsw_rs dump (data id = row in the store);
//! - `store.jsonl`  one `{"id", "code"}` line per vector, in data-id order;
//! - `thumbs.bin`  a 96-px grey PNG of each indexed image, in data-id order ([`thumbs`]);
//! - `tantivy/`  fields `id`, `code`, `ops` (dialect op tokens) and `pos` (the data id).
//!
//! Rebuilding into an existing folder is atomic: everything is written to `NAME.tmp-<pid>`
//! and only a complete build replaces `NAME` (see [`build::replace_dir`]).
//!
//! [`ImageEncoder`]: crate::encoder::ImageEncoder

pub mod build;
mod error;
pub mod hnsw;
pub mod keywords;
pub mod manifest;
pub mod store;
pub mod thumbs;

pub use build::{build_index, BuildOptions, BuildReport};
pub use error::IndexError;
pub use manifest::{Manifest, FORMAT_VERSION, MANIFEST_FILE};
