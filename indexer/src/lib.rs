//! Corpus readers and writers, the synthetic GenCAD corpus, and (later) CLIP and index building.

pub mod corpus;
pub mod dialect;
pub mod synth;
