//! The generator: a GPT-2 or a CodeT5 (our candle implementations, Hugging Face weight names)
//! that reads the query image (a prefix made from its encoder vector) and the k retrieved
//! neighbours' code, and writes the part's CadQuery code in compact form ([`compact`]). Training
//! ([`train::train_generator`]) and decoding ([`decode`]) live here; the `rag` binary only
//! wires them to the command line.

pub mod answer;
pub mod compact;
pub mod coverage;
pub mod decode;
pub mod eval;
pub mod fallback;
pub mod fit;
pub mod gpt2;
pub mod grammar;
pub mod model;
pub mod params;
pub mod pipeline;
pub mod prompt;
pub mod select;
pub mod t5;
pub mod tokenizer;
pub mod train;

use std::path::PathBuf;

pub use answer::{Answered, Answerer, Direct, Query, Selecting};
pub use decode::{DecodeOptions, Generation, Strategy};
pub use model::{CodeModel, Generator, GeneratorConfig};
pub use pipeline::{answer_image, answer_vector, Answer, Mode};
pub use prompt::PromptLayout;
pub use tokenizer::GenTokenizer;
pub use train::{train_generator, GenSize, GenTrainOptions, GenTrainReport, GenTrainSettings};

/// Errors of training, loading or running the generator.
#[derive(Debug, thiserror::Error)]
pub enum GeneratorError {
    /// A checkpoint file is missing, unreadable or from another architecture or config.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a checkpoint file (shared helpers with CLIP).
    #[error(transparent)]
    File(Box<indexer::clip::ClipError>),
    /// The tokenizer could not be trained, loaded or applied.
    #[error("{0}")]
    Tokenizer(String),
    /// A tensor operation failed (names the stage).
    #[error("{stage}: {error}")]
    Candle {
        /// What was being done.
        stage: &'static str,
        /// candle's error.
        error: candle_core::Error,
    },
    /// The corpus could not be read.
    #[error(transparent)]
    Corpus(Box<indexer::corpus::CorpusError>),
    /// The index could not be loaded or queried.
    #[error(transparent)]
    Retriever(Box<retriever::RetrieverError>),
    /// The image could not be read or embedded.
    #[error(transparent)]
    Encoder(Box<indexer::encoder::EncoderError>),
    /// Invalid settings, too little data, or an index that does not fit the model.
    #[error("{0}")]
    Settings(String),
    /// A background task of an evaluation panicked or was cancelled.
    #[error("an evaluation task failed: {0}")]
    Task(String),
    /// The output folder holds a run that cannot be resumed with these inputs.
    #[error("{0}")]
    Resume(String),
    /// The loss became NaN or infinite.
    #[error("training diverged at step {step} (loss not finite at lr {lr:.2e}); lower --lr")]
    Diverged {
        /// The step.
        step: usize,
        /// Its learning rate.
        lr: f64,
    },
}

impl From<tokio::task::JoinError> for GeneratorError {
    fn from(e: tokio::task::JoinError) -> Self {
        GeneratorError::Task(e.to_string())
    }
}

impl GeneratorError {
    /// A candle error during `stage`.
    pub fn candle(stage: &'static str, error: candle_core::Error) -> Self {
        GeneratorError::Candle { stage, error }
    }
}

/// The errors of the crates below, boxed so `GeneratorError` stays small.
macro_rules! boxed_from {
    ($($from:ty => $variant:ident),*) => {$(
        impl From<$from> for GeneratorError {
            fn from(e: $from) -> Self {
                GeneratorError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    indexer::clip::ClipError => File,
    indexer::corpus::CorpusError => Corpus,
    retriever::RetrieverError => Retriever,
    indexer::encoder::EncoderError => Encoder
);
