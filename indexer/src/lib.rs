//! Corpus readers and writers, the synthetic GenCAD corpus, image encoders and index building.

pub mod clip;
pub mod corpus;
pub mod dialect;
pub mod encoder;
pub mod index;
pub mod shapes;
pub mod synth;
