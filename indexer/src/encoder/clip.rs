//! [`ClipEncoder`]: a CLIP checkpoint folder (pretrained HF or our trained small CLIP) as an
//! [`ImageEncoder`]; batches go through the model in one forward pass.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::{normalise_unit, parallel_map, EncoderError, EncoderIdentity, ImageEncoder};
use crate::clip::preprocess::pixel_values;
use crate::clip::{CheckpointFiles, Clip, ClipError};
use seeded::Fnv1a64;

/// Images per forward pass inside [`ImageEncoder::encode_batch`].
const FORWARD_BATCH: usize = 64;

/// The image tower of a CLIP checkpoint, with its preprocessing.
pub struct ClipEncoder {
    files: CheckpointFiles,
    model: Clip,
    device: Device,
    identity: EncoderIdentity,
}

impl std::fmt::Debug for ClipEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipEncoder")
            .field("dir", &self.files.dir)
            .field("id", &self.identity.id)
            .finish()
    }
}

impl ClipEncoder {
    /// Loads the checkpoint folder `dir` (config.json + model.safetensors, optional
    /// preprocessor_config.json) onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Self, ClipError> {
        let dir = std::fs::canonicalize(dir).map_err(|e| ClipError::io(dir, e))?;
        let files = CheckpointFiles::read(&dir)?;
        let (model, weights) = files.load_vision(&device)?;
        let config = serde_json::json!({
            "kind": "clip",
            "path": dir.to_string_lossy(),
            "weights_fnv1a64": weights,
            "vision_config": files.config.vision_config,
            "projection_dim": files.config.projection_dim,
            "preprocess": files.preprocess,
            "norm": "l2",
        });
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "checkpoint".into());
        let id = format!("clip:{name}");
        let mut h = Fnv1a64::new();
        h.update_str(&id);
        // The path is left out of the hash: a moved checkpoint still matches its index.
        let mut hashed = config.clone();
        hashed["path"] = serde_json::Value::Null;
        h.update_str(&hashed.to_string());
        let identity = EncoderIdentity {
            id,
            config,
            hash: format!("{:016x}", h.finish()),
            dims: files.config.projection_dim,
        };
        Ok(ClipEncoder {
            files,
            model,
            device,
            identity,
        })
    }

    /// The checkpoint folder.
    pub fn dir(&self) -> &PathBuf {
        &self.files.dir
    }

    fn embed(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, candle_core::Error> {
        let v = &self.files.config.vision_config;
        let side = v.image_size;
        let flat: Vec<f32> = inputs.iter().flatten().copied().collect();
        let px = Tensor::from_vec(
            flat,
            (inputs.len(), v.num_channels, side, side),
            &self.device,
        )?;
        self.model.image_features(&px)?.to_vec2::<f32>()
    }
}

impl ImageEncoder for ClipEncoder {
    fn identity(&self) -> EncoderIdentity {
        self.identity.clone()
    }

    fn dims(&self) -> usize {
        self.identity.dims
    }

    fn encode(&self, image: &image::RgbImage) -> Result<Vec<f32>, EncoderError> {
        self.encode_batch(std::slice::from_ref(image))
            .pop()
            .expect("one result per image")
    }

    fn encode_batch(&self, images: &[image::RgbImage]) -> Vec<Result<Vec<f32>, EncoderError>> {
        let v = &self.files.config.vision_config;
        let inputs = parallel_map(images, |img| {
            pixel_values(
                img,
                &self.files.preprocess,
                v.image_size as u32,
                v.num_channels,
            )
        });
        let mut out: Vec<Result<Vec<f32>, EncoderError>> = Vec::with_capacity(images.len());
        let ok: Vec<usize> = (0..inputs.len()).filter(|i| inputs[*i].is_ok()).collect();
        let mut vectors: Vec<Option<Result<Vec<f32>, EncoderError>>> =
            (0..inputs.len()).map(|_| None).collect();
        for chunk in ok.chunks(FORWARD_BATCH) {
            let batch: Vec<Vec<f32>> = chunk
                .iter()
                .map(|i| inputs[*i].as_ref().expect("filtered ok").clone())
                .collect();
            match self.embed(&batch) {
                Ok(rows) => {
                    for (i, mut row) in chunk.iter().zip(rows) {
                        vectors[*i] = Some(if normalise_unit(&mut row) {
                            Ok(row)
                        } else {
                            Err(EncoderError::Blank)
                        });
                    }
                }
                Err(e) => {
                    for i in chunk {
                        vectors[*i] = Some(Err(EncoderError::Model(e.to_string())));
                    }
                }
            }
        }
        for (input, v) in inputs.into_iter().zip(vectors) {
            out.push(match input {
                Err(e) => Err(e),
                Ok(_) => v.expect("every ok input was embedded"),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::checkpoint::{CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE};
    use crate::clip::ClipConfig;
    use candle_core::DType;
    use candle_nn::{VarBuilder, VarMap};
    use std::collections::HashMap;

    /// A tiny RGB CLIP written the way Hugging Face lays a checkpoint out: f16 weights under HF
    /// names, a config.json with keys we do not use, a preprocessor_config.json.
    fn hf_style_checkpoint(dir: &Path, hidden: usize) {
        let mut c = ClipConfig::small(50, 49);
        c.vision_config.hidden_size = hidden;
        c.vision_config.intermediate_size = 2 * hidden;
        c.vision_config.num_attention_heads = 2;
        c.vision_config.num_hidden_layers = 1;
        c.vision_config.image_size = 32;
        c.vision_config.num_channels = 3;
        c.text_config.hidden_size = 16;
        c.text_config.intermediate_size = 32;
        c.text_config.num_attention_heads = 2;
        c.text_config.num_hidden_layers = 1;
        c.text_config.max_position_embeddings = 8;
        c.projection_dim = 12;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        Clip::new(&c, vb).unwrap();
        let f16: HashMap<String, Tensor> = varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().to_dtype(DType::F16).unwrap()))
            .collect();
        candle_core::safetensors::save(&f16, dir.join(WEIGHTS_FILE)).unwrap();
        let mut json = serde_json::to_value(&c).unwrap();
        json["architectures"] = serde_json::json!(["CLIPModel"]);
        json["torch_dtype"] = serde_json::json!("float16");
        json["vision_config"]["dropout"] = serde_json::json!(0.0);
        std::fs::write(dir.join(CONFIG_FILE), json.to_string()).unwrap();
        std::fs::write(
            dir.join(PREPROCESSOR_FILE),
            r#"{"crop_size": 224, "do_normalize": true, "image_mean": [0.4815, 0.4578, 0.4082],
               "image_std": [0.2686, 0.2613, 0.2758], "resample": 3, "size": 224}"#,
        )
        .unwrap();
    }

    fn part_image(shift: u32) -> image::RgbImage {
        image::RgbImage::from_fn(96, 80, |x, y| {
            if (20 + shift..60 + shift).contains(&x) && (10..50).contains(&y) {
                image::Rgb([90, 90, 90])
            } else {
                image::Rgb([255, 255, 255])
            }
        })
    }

    #[test]
    fn an_hf_layout_checkpoint_loads_and_embeds_to_unit_vectors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny-clip");
        std::fs::create_dir(&dir).unwrap();
        hf_style_checkpoint(&dir, 16);
        let enc = ClipEncoder::load(&dir, Device::Cpu).unwrap();
        let id = enc.identity();
        assert_eq!(id.id, "clip:tiny-clip");
        assert_eq!(enc.dims(), 12);
        let images = [part_image(0), part_image(30)];
        let out = enc.encode_batch(&images);
        let a = out[0].as_ref().unwrap();
        let b = out[1].as_ref().unwrap();
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_ne!(a, b, "different images, different vectors");
        // One at a time gives what the batch gave.
        let single = enc.encode(&images[1]).unwrap();
        let diff = single
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "{diff}");
        // The identity survives a move of the folder, and changes when the weights do.
        let moved = tmp.path().join("elsewhere").join("tiny-clip");
        std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
        std::fs::rename(&dir, &moved).unwrap();
        assert_eq!(
            ClipEncoder::load(&moved, Device::Cpu)
                .unwrap()
                .identity()
                .hash,
            id.hash
        );
        hf_style_checkpoint(&moved, 16);
        assert_ne!(
            ClipEncoder::load(&moved, Device::Cpu)
                .unwrap()
                .identity()
                .hash,
            id.hash
        );
    }

    #[test]
    fn weights_of_another_configuration_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        hf_style_checkpoint(tmp.path(), 16);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(tmp.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        json["vision_config"]["hidden_size"] = serde_json::json!(24);
        json["vision_config"]["intermediate_size"] = serde_json::json!(48);
        std::fs::write(tmp.path().join(CONFIG_FILE), json.to_string()).unwrap();
        let err = ClipEncoder::load(tmp.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("another configuration"), "{err}");
        assert!(err.contains(WEIGHTS_FILE), "{err}");

        std::fs::write(tmp.path().join(WEIGHTS_FILE), b"not safetensors").unwrap();
        let err = ClipEncoder::load(tmp.path(), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("safetensors"), "{err}");
    }
}
