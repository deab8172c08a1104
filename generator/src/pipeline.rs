//! One query answered end to end: embed the image with the index's encoder, retrieve the
//! neighbours, and produce code by one of three paths (retrieval only, generator only, or
//! retrieval-augmented generation).

use std::time::Instant;

use retriever::{Neighbour, Retriever};
use serde::Serialize;

use crate::decode::{DecodeOptions, Generation};
use crate::model::Generator;
use crate::GeneratorError;

/// Which path writes the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The top-1 neighbour's code.
    Retrieval,
    /// The model with no neighbours in its prompt.
    Generator,
    /// The model with the top-k neighbours in its prompt.
    Rag,
}

impl Mode {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Retrieval => "retrieval",
            Mode::Generator => "generator",
            Mode::Rag => "rag",
        }
    }
}

/// The answer to one image.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The program (empty when retrieval found nothing).
    pub code: String,
    /// The path that wrote it.
    pub mode: Mode,
    /// The neighbours retrieved (best first).
    pub neighbours: Vec<Neighbour>,
    /// The model's output, for the model paths when decoding succeeded.
    pub generation: Option<Generation>,
    /// Why the model wrote nothing (a model path whose decoding failed): the answer is then
    /// empty, and a checked answer falls back to the neighbours.
    pub decode_error: Option<String>,
    /// Seconds embedding the image.
    pub embed_seconds: f64,
    /// Seconds in the vector search.
    pub search_seconds: f64,
    /// Seconds decoding.
    pub decode_seconds: f64,
}

impl Answer {
    /// Wall seconds of the whole answer.
    pub fn seconds(&self) -> f64 {
        self.embed_seconds + self.search_seconds + self.decode_seconds
    }
}

/// Answers `vector` (the image embedded by the index's encoder) in `mode`, retrieving
/// `retrieve` neighbours (at least the model's k); the model paths need `generator`.
pub fn answer_vector(
    retriever: &Retriever,
    generator: Option<&Generator>,
    vector: &[f32],
    mode: Mode,
    retrieve: usize,
    opts: &DecodeOptions,
) -> Result<Answer, GeneratorError> {
    let k = generator.map_or(0, |g| g.model.config().layout.k);
    let set = retriever.search_vector(vector, retrieve.max(k).max(1), &[])?;
    let mut out = Answer {
        code: String::new(),
        mode,
        neighbours: set.neighbours,
        generation: None,
        decode_error: None,
        embed_seconds: 0.0,
        search_seconds: set.search_seconds,
        decode_seconds: 0.0,
    };
    match mode {
        Mode::Retrieval => {
            if let Some(n) = out.neighbours.first() {
                out.code = n.code.clone();
            }
        }
        Mode::Generator | Mode::Rag => {
            let g = generator.ok_or_else(|| {
                GeneratorError::Settings(format!(
                    "mode {} needs a generator checkpoint (--model)",
                    mode.as_str()
                ))
            })?;
            let codes: Vec<&str> = if mode == Mode::Rag {
                out.neighbours
                    .iter()
                    .take(k)
                    .map(|n| n.code.as_str())
                    .collect()
            } else {
                Vec::new()
            };
            let t = Instant::now();
            // Settings that do not fit the model (a vector of the wrong width) are the
            // query's fault; any other failure is the model's output's, and leaves the
            // neighbours to answer.
            match g.generate(vector, &codes, opts) {
                Ok(generation) => {
                    out.code = generation.code.clone();
                    out.generation = Some(generation);
                }
                Err(e @ GeneratorError::Settings(_)) => return Err(e),
                Err(e) => out.decode_error = Some(e.to_string()),
            }
            out.decode_seconds = t.elapsed().as_secs_f64();
        }
    }
    Ok(out)
}

/// Embeds `image` with the index's encoder, then [`answer_vector`].
pub fn answer_image(
    retriever: &Retriever,
    generator: Option<&Generator>,
    image: &image::RgbImage,
    mode: Mode,
    retrieve: usize,
    opts: &DecodeOptions,
) -> Result<Answer, GeneratorError> {
    let t = Instant::now();
    let v = retriever.encoder().encode(image)?;
    let embed_seconds = t.elapsed().as_secs_f64();
    let mut a = answer_vector(retriever, generator, &v, mode, retrieve, opts)?;
    a.embed_seconds = embed_seconds;
    Ok(a)
}
