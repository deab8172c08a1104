//! The synthetic GenCAD-Code corpus: a sampler of DeepCAD-style programs in the exact dialect,
//! and the pipeline that executes, filters, renders and writes them as parquet.

pub mod pipeline;
pub mod plane;
pub mod sampler;

pub use pipeline::{
    synthesize, written_settings, SynthConfig, SynthError, SynthReport, SYNTH_VERSION,
};
pub use sampler::{PartProgram, ProgramSampler};
