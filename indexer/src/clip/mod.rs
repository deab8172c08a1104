//! CLIP in candle: the model ([`Clip`], HF weight names), loading a Hugging Face checkpoint
//! folder, the code tokenizer, and contrastive training of our small CLIP ([`train_clip`]).

pub mod checkpoint;
pub mod config;
pub mod model;
pub mod optim;
pub mod preprocess;
pub mod tokenizer;
pub mod train;

use std::path::{Path, PathBuf};

pub use checkpoint::CheckpointFiles;
pub use config::{ClipConfig, PreprocessConfig};
pub use model::Clip;
pub use tokenizer::CodeTokenizer;
pub use train::{
    train_clip, ClipSize, CodeLengths, ImageTowerKind, TrainOptions, TrainReport, TrainSettings,
    TrainingState,
};

/// Errors of loading, training or running CLIP.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A checkpoint file is missing, unreadable or inconsistent.
    #[error("{}: {message}", path.display())]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The io error (in the message, not repeated as a source).
        error: std::io::Error,
    },
    /// A tensor operation failed (names the stage).
    #[error("{stage}: {error}")]
    Candle {
        /// What was being done.
        stage: &'static str,
        /// candle's error (in the message, not repeated as a source).
        error: candle_core::Error,
    },
    /// The corpus could not be read.
    #[error(transparent)]
    Corpus(#[from] crate::corpus::CorpusError),
    /// Training or loading the tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    /// Invalid training settings or too little data.
    #[error("{0}")]
    Settings(String),
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
    /// `--device cuda` in a build without the `cuda` feature, or no GPU found.
    #[error("{0}")]
    Device(String),
}

impl ClipError {
    /// An io error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ClipError::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }

    /// A candle error during `stage`.
    pub fn candle(stage: &'static str, source: candle_core::Error) -> Self {
        ClipError::Candle {
            stage,
            error: source,
        }
    }
}

/// The compute device for `--device cpu|cuda`: CUDA needs a build with the `cuda` feature.
pub fn device(name: &str) -> Result<candle_core::Device, ClipError> {
    match name {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => candle_core::Device::new_cuda(0)
            .map_err(|e| ClipError::Device(format!("no usable CUDA device: {e}"))),
        "cuda" => Err(ClipError::Device(
            "this build has no CUDA support: rebuild with `cargo build --release --features cuda`"
                .into(),
        )),
        other => Err(ClipError::Device(format!(
            "unknown device `{other}` (expected cpu or cuda)"
        ))),
    }
}

/// The device an encoder runs on when the user did not choose: the first GPU in a `cuda` build
/// that finds one, else the CPU.
pub fn preferred_device() -> candle_core::Device {
    if cfg!(feature = "cuda") {
        if let Ok(d) = candle_core::Device::new_cuda(0) {
            return d;
        }
    }
    candle_core::Device::Cpu
}
