//! A CLIP checkpoint folder: `config.json` + `model.safetensors` (+ `preprocessor_config.json`)
//! as Hugging Face lays them out, plus, for our trained checkpoints, `tokenizer.json`,
//! `training.json` and `optimizer.safetensors` (what resuming needs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::{ClipConfig, PreprocessConfig};
use super::model::Clip;
use super::optim::AdamW;
use super::ClipError;
use seeded::fnv1a64;

/// Model shape file (HF `CLIPConfig`).
pub const CONFIG_FILE: &str = "config.json";
/// Image preprocessing file (HF `CLIPImageProcessor` fields we use).
pub const PREPROCESSOR_FILE: &str = "preprocessor_config.json";
/// Weights, HF names.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The code tokenizer of a checkpoint we trained.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Training progress and options of a checkpoint we trained.
pub const TRAINING_FILE: &str = "training.json";
/// AdamW moments, for exact resume.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The parsed configuration files of a checkpoint folder.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    /// The folder.
    pub dir: PathBuf,
    /// The model shape.
    pub config: ClipConfig,
    /// The preprocessing (HF defaults when the file is absent).
    pub preprocess: PreprocessConfig,
}

impl CheckpointFiles {
    /// Reads and validates `config.json` (and `preprocessor_config.json` when present).
    pub fn read(dir: &Path) -> Result<Self, ClipError> {
        let config_path = dir.join(CONFIG_FILE);
        if !dir.is_dir() {
            return Err(ClipError::Checkpoint {
                path: dir.to_path_buf(),
                message: "not a folder".into(),
            });
        }
        if !config_path.is_file() {
            return Err(ClipError::Checkpoint {
                path: dir.to_path_buf(),
                message: "not a CLIP checkpoint folder (no config.json)".into(),
            });
        }
        let config: ClipConfig = read_json(&config_path)?;
        config.validate().map_err(|message| ClipError::Checkpoint {
            path: config_path.clone(),
            message,
        })?;
        let pre_path = dir.join(PREPROCESSOR_FILE);
        let preprocess = if pre_path.exists() {
            read_json(&pre_path)?
        } else {
            PreprocessConfig::default()
        };
        if !dir.join(WEIGHTS_FILE).is_file() {
            return Err(ClipError::Checkpoint {
                path: dir.join(WEIGHTS_FILE),
                message:
                    "missing: a CLIP checkpoint folder holds config.json and model.safetensors"
                        .into(),
            });
        }
        Ok(CheckpointFiles {
            dir: dir.to_path_buf(),
            config,
            preprocess,
        })
    }

    /// Loads the image side of the model (text weights are not built), f32 on `device`, with
    /// the FNV-1a 64 of the weights file (so an index notices a retrained checkpoint); the
    /// file is read once for both.
    pub fn load_vision(&self, device: &Device) -> Result<(Clip, String), ClipError> {
        let path = self.dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&path).map_err(|e| ClipError::io(&path, e))?;
        let hash = format!("{:016x}", fnv1a64(&bytes));
        let raw = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
            ClipError::Checkpoint {
                path: path.clone(),
                message: format!("not a readable safetensors file: {e}"),
            }
        })?;
        let tensors = raw
            .into_iter()
            .map(|(k, t)| {
                t.to_dtype(DType::F32)
                    .map(|t| (k, t))
                    .map_err(|e| ClipError::candle("converting weights to f32", e))
            })
            .collect::<Result<HashMap<String, Tensor>, ClipError>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = Clip::vision_only(&self.config, vb).map_err(|e| self.mismatch(e))?;
        Ok((model, hash))
    }

    fn mismatch(&self, e: candle_core::Error) -> ClipError {
        ClipError::Checkpoint {
            path: self.dir.join(WEIGHTS_FILE),
            message: format!(
                "weights do not match config.json (a checkpoint of another configuration?): {e}"
            ),
        }
    }
}

/// Reads a JSON file into `T`, naming the file in every error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ClipError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClipError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ClipError::Checkpoint {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

/// Writes `value` as pretty JSON through a temporary file and a rename.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), ClipError> {
    let text = serde_json::to_string_pretty(value).expect("configs serialise");
    write_atomic(path, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| ClipError::io(tmp, e))
    })
}

/// Runs `write` on `path.tmp`, then renames it over `path`, so a crash leaves the old file.
pub fn write_atomic<E: From<ClipError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| ClipError::io(path, e).into())
}

/// Restores a resumed run's weights and AdamW moments (at `step`) from the checkpoint folder
/// `out`, naming the file that does not fit.
pub fn restore_run(
    out: &Path,
    varmap: &mut candle_nn::VarMap,
    optimizer: &mut AdamW,
    step: usize,
) -> Result<(), ClipError> {
    let w = out.join(WEIGHTS_FILE);
    varmap.load(&w).map_err(|e| ClipError::Checkpoint {
        path: w.clone(),
        message: format!("cannot resume from these weights: {e}"),
    })?;
    let o = out.join(OPTIMIZER_FILE);
    optimizer.load(&o, step).map_err(|e| ClipError::Checkpoint {
        path: o.clone(),
        message: format!("cannot resume the optimizer: {e}"),
    })
}

/// Writes a run's checkpoint: weights, optimizer moments, then `training.json` (the commit
/// point), each through a temporary file and a rename.
pub fn save_run<T: serde::Serialize>(
    out: &Path,
    varmap: &candle_nn::VarMap,
    optimizer: &AdamW,
    state: &T,
) -> Result<(), ClipError> {
    write_atomic(&out.join(WEIGHTS_FILE), |tmp| {
        varmap
            .save(tmp)
            .map_err(|e| ClipError::candle("saving weights", e))
    })?;
    write_atomic(&out.join(OPTIMIZER_FILE), |tmp| {
        optimizer
            .save(tmp)
            .map_err(|e| ClipError::candle("saving optimizer state", e))
    })?;
    write_json(&out.join(TRAINING_FILE), state)
}
