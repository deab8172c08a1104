//! CLIP configuration in the Hugging Face `config.json` / `preprocessor_config.json` shapes, so
//! a pretrained checkpoint folder and our own checkpoints are read by the same code.

use serde::{Deserialize, Serialize};

/// Activation of the MLP blocks, named as HF names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// x * sigmoid(1.702 x): OpenAI CLIP's activation.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
}

/// The image tower (HF `vision_config`); defaults are HF's CLIPVisionConfig defaults (ViT-B/32).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Transformer width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Input side in pixels.
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// Input channels: 3 (RGB, HF) or 1 (grey, our renders carry no colour).
    pub num_channels: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// Non-empty: a convolutional image tower instead of the ViT (ours; HF CLIP has none), one
    /// stage per entry with that many channels, each halving the side; the last map is
    /// flattened and projected to `hidden_size`. Absent from a ViT's config.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conv_widths: Vec<usize>,
}

impl VisionConfig {
    /// Whether the image tower is the convolutional one rather than the ViT.
    pub fn is_conv(&self) -> bool {
        !self.conv_widths.is_empty()
    }

    /// Side of the convolutional tower's last feature map.
    pub fn conv_map_side(&self) -> usize {
        self.image_size >> self.conv_widths.len()
    }
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            num_hidden_layers: 12,
            image_size: 224,
            patch_size: 32,
            num_channels: 3,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            conv_widths: Vec::new(),
        }
    }
}

/// The text tower (HF `text_config`); defaults are HF's CLIPTextConfig defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Transformer width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Longest token sequence (code is truncated to it).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Layer-norm epsilon.
    pub layer_norm_eps: f64,
    /// The end-of-text id whose position gives the pooled text vector.
    pub eos_token_id: u32,
    /// Consecutive tokens merged into one transformer position (concatenated, then projected
    /// by `embeddings.token_merge`), so a long program costs the blocks a short one's time.
    /// 1 (HF CLIP, and the default when the field is absent) merges nothing.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub tokens_per_position: usize,
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_attention_heads: 8,
            num_hidden_layers: 12,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
            tokens_per_position: 1,
        }
    }
}

/// A whole CLIP model: HF `CLIPConfig` (the fields we use; others are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// The text tower.
    #[serde(default)]
    pub text_config: TextConfig,
    /// The image tower.
    #[serde(default)]
    pub vision_config: VisionConfig,
    /// Shared embedding length.
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    /// Initial ln(1/temperature).
    #[serde(default = "default_logit_scale")]
    pub logit_scale_init_value: f64,
}

fn default_projection_dim() -> usize {
    512
}

fn default_logit_scale() -> f64 {
    2.6592
}

impl ClipConfig {
    /// The small CLIP this project trains from scratch on CPU: a 48 px grey ViT with 8 px
    /// patches (3 blocks) and a 2-block code transformer over 96 BPE tokens, width 128; sized
    /// so 20k pairs train for 3 epochs in under 30 min on 2 cores (README: measured).
    pub fn small(vocab_size: usize, eos_token_id: u32) -> Self {
        ClipConfig {
            text_config: TextConfig {
                vocab_size,
                hidden_size: 128,
                intermediate_size: 384,
                num_attention_heads: 4,
                num_hidden_layers: 2,
                max_position_embeddings: 384,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
                eos_token_id,
                tokens_per_position: 4,
            },
            vision_config: VisionConfig {
                hidden_size: 128,
                intermediate_size: 384,
                num_attention_heads: 4,
                num_hidden_layers: 3,
                image_size: 48,
                patch_size: 8,
                num_channels: 1,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
                conv_widths: Vec::new(),
            },
            projection_dim: 128,
            logit_scale_init_value: (1.0f64 / 0.07).ln(),
        }
    }

    /// The small CLIP with the convolutional image tower: a 64 px grey input through five
    /// stride-2 stages (16 to 256 channels, a residual 3x3 convolution in all but the first) to
    /// a 2x2 map, projected to width 128; it learns the shape loss far faster than the ViT, at
    /// about 1.5x its time per CPU step (README: measured).
    pub fn small_conv(vocab_size: usize, eos_token_id: u32) -> Self {
        let mut c = Self::small(vocab_size, eos_token_id);
        c.vision_config.image_size = 64;
        c.vision_config.conv_widths = vec![16, 32, 64, 128, 256];
        c
    }

    /// Checks the shapes fit together (heads divide widths, patches tile the image), so a bad
    /// config fails with a message instead of a shape error deep in a matmul.
    pub fn validate(&self) -> Result<(), String> {
        let v = &self.vision_config;
        let t = &self.text_config;
        if v.is_conv() {
            let stages = v.conv_widths.len();
            if stages >= usize::BITS as usize
                || v.conv_map_side() == 0
                || !v.image_size.is_multiple_of(1 << stages)
            {
                return Err(format!(
                    "image_size {} cannot be halved {stages} times (one per conv_widths entry)",
                    v.image_size
                ));
            }
            if v.conv_widths.contains(&0) {
                return Err("conv_widths has a stage of 0 channels".into());
            }
        } else if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads)
        {
            return Err(format!(
                "vision hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text hidden_size {} is not a multiple of num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if !v.is_conv() && (v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size)) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if !(v.num_channels == 1 || v.num_channels == 3) {
            return Err(format!("num_channels {} (expected 1 or 3)", v.num_channels));
        }
        if t.tokens_per_position == 0
            || !t
                .max_position_embeddings
                .is_multiple_of(t.tokens_per_position)
        {
            return Err(format!(
                "text max_position_embeddings {} is not a multiple of tokens_per_position {}",
                t.max_position_embeddings, t.tokens_per_position
            ));
        }
        if (t.eos_token_id as usize) >= t.vocab_size {
            return Err(format!(
                "eos_token_id {} outside the vocabulary of {}",
                t.eos_token_id, t.vocab_size
            ));
        }
        Ok(())
    }
}

/// How an image becomes the model's input (HF `preprocessor_config.json`, plus our
/// `crop_to_foreground` for the small CLIP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PreprocessConfig {
    /// Per-channel mean subtracted after scaling to 0..1.
    pub image_mean: Vec<f32>,
    /// Per-channel std divided by.
    pub image_std: Vec<f32>,
    /// Crop the foreground bounding box (square) and area-average, on ink = 1 - grey, instead
    /// of HF's shortest-side resize + centre crop; ours, for renders framed any way.
    pub crop_to_foreground: bool,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            image_mean: vec![0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: vec![0.268_629_54, 0.261_302_6, 0.275_777_1],
            crop_to_foreground: false,
        }
    }
}

impl PreprocessConfig {
    /// The small CLIP's preprocessing: square foreground crop, ink in 0..1 scaled to ~-1..1.
    pub fn small() -> Self {
        PreprocessConfig {
            image_mean: vec![0.25],
            image_std: vec![0.25],
            crop_to_foreground: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_json_parses_with_defaults_for_missing_fields() {
        let text = r#"{"projection_dim": 512, "logit_scale_init_value": 2.6592,
            "text_config": {"hidden_size": 512, "eos_token_id": 2, "bos_token_id": 0},
            "vision_config": {"hidden_size": 768, "patch_size": 32, "dropout": 0.0},
            "architectures": ["CLIPModel"]}"#;
        let c: ClipConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.vision_config.image_size, 224);
        assert_eq!(c.vision_config.num_hidden_layers, 12);
        assert_eq!(c.text_config.eos_token_id, 2);
        assert_eq!(c.vision_config.hidden_act, Activation::QuickGelu);
        assert_eq!(c.text_config.tokens_per_position, 1);
        assert!(!serde_json::to_string(&c)
            .unwrap()
            .contains("tokens_per_position"));
        c.validate().unwrap();
    }

    #[test]
    fn bad_shapes_are_refused_with_a_message() {
        let mut c = ClipConfig::small(512, 1);
        c.validate().unwrap();
        c.vision_config.patch_size = 7;
        assert!(c.validate().unwrap_err().contains("patch_size"));
        let mut c = ClipConfig::small(512, 600);
        c.text_config.eos_token_id = 600;
        assert!(c.validate().unwrap_err().contains("eos_token_id"));
        let mut c = ClipConfig::small(512, 1);
        c.text_config.tokens_per_position = 5;
        assert!(c.validate().unwrap_err().contains("tokens_per_position"));
        let mut c = ClipConfig::small_conv(512, 1);
        c.validate().unwrap();
        assert_eq!(c.vision_config.conv_map_side(), 2);
        c.vision_config.image_size = 48;
        assert!(c.validate().unwrap_err().contains("halved 5 times"));
        let mut c = ClipConfig::small_conv(512, 1);
        c.vision_config.conv_widths[2] = 0;
        assert!(c.validate().unwrap_err().contains("0 channels"));
    }

    #[test]
    fn conv_widths_are_written_only_for_the_conv_tower() {
        let vit = serde_json::to_string(&ClipConfig::small(512, 1)).unwrap();
        assert!(!vit.contains("conv_widths"));
        let conv = ClipConfig::small_conv(512, 1);
        let text = serde_json::to_string(&conv).unwrap();
        assert!(text.contains("\"conv_widths\":[16,32,64,128,256]"));
        let back: ClipConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, conv);
    }
}
