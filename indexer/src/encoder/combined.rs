//! [`CombinedEncoder`]: several encoders side by side (spec `pixel+CKPT`), each part's unit
//! vector scaled by 1/sqrt(parts), so the cosine of two combined vectors is the mean of the
//! parts' cosines: a learned encoder and the pixel baseline vote together.

use super::{EncoderError, EncoderIdentity, ImageEncoder};
use seeded::Fnv1a64;

/// Encoders whose vectors are concatenated with equal weight.
pub struct CombinedEncoder {
    parts: Vec<Box<dyn ImageEncoder>>,
}

impl CombinedEncoder {
    /// Combines `parts` (at least two) in this order.
    pub fn new(parts: Vec<Box<dyn ImageEncoder>>) -> Self {
        assert!(parts.len() >= 2, "a combination needs two encoders");
        CombinedEncoder { parts }
    }

    /// The part identities a combined identity holds, in order.
    pub fn part_identities(identity: &EncoderIdentity) -> Option<Vec<EncoderIdentity>> {
        if identity.config.get("kind")?.as_str()? != "combined" {
            return None;
        }
        serde_json::from_value(identity.config.get("parts")?.clone()).ok()
    }

    fn join(&self, vectors: Vec<Vec<f32>>) -> Vec<f32> {
        let k = 1.0 / (self.parts.len() as f32).sqrt();
        vectors.into_iter().flatten().map(|v| v * k).collect()
    }
}

impl ImageEncoder for CombinedEncoder {
    fn identity(&self) -> EncoderIdentity {
        let parts: Vec<EncoderIdentity> = self.parts.iter().map(|p| p.identity()).collect();
        let id = parts
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let mut h = Fnv1a64::new();
        h.update_str(&id);
        for p in &parts {
            h.update_str(&p.hash);
        }
        EncoderIdentity {
            id,
            dims: parts.iter().map(|p| p.dims).sum(),
            config: serde_json::json!({"kind": "combined", "parts": parts}),
            hash: format!("{:016x}", h.finish()),
        }
    }

    fn dims(&self) -> usize {
        self.parts.iter().map(|p| p.dims()).sum()
    }

    fn encode(&self, image: &image::RgbImage) -> Result<Vec<f32>, EncoderError> {
        let vectors = self
            .parts
            .iter()
            .map(|p| p.encode(image))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.join(vectors))
    }

    fn encode_batch(&self, images: &[image::RgbImage]) -> Vec<Result<Vec<f32>, EncoderError>> {
        let mut per_part: Vec<std::vec::IntoIter<Result<Vec<f32>, EncoderError>>> = self
            .parts
            .iter()
            .map(|p| p.encode_batch(images).into_iter())
            .collect();
        (0..images.len())
            .map(|_| {
                let vectors = per_part
                    .iter_mut()
                    .map(|it| it.next().expect("one result per image"))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(self.join(vectors))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::{encoder_from_identity, encoder_from_spec, PixelEncoder};

    fn part(shift: u32, size: u32) -> image::RgbImage {
        image::RgbImage::from_fn(64, 64, |x, y| {
            if (8 + shift..8 + shift + size).contains(&x) && (10..40).contains(&y) {
                image::Rgb([80, 80, 80])
            } else {
                image::Rgb([255, 255, 255])
            }
        })
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn the_combined_cosine_is_the_mean_of_the_parts_cosines() {
        let (p8, p16) = (PixelEncoder::new(8), PixelEncoder::new(16));
        let both = encoder_from_spec("pixel-8+pixel-16").unwrap();
        assert_eq!(both.dims(), 64 + 256);
        let (a, b) = (part(0, 20), part(10, 40));
        let want = (dot(&p8.encode(&a).unwrap(), &p8.encode(&b).unwrap())
            + dot(&p16.encode(&a).unwrap(), &p16.encode(&b).unwrap()))
            / 2.0;
        let got = dot(&both.encode(&a).unwrap(), &both.encode(&b).unwrap());
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        let batch = both.encode_batch(&[a.clone(), b]);
        assert_eq!(batch[0].as_ref().unwrap(), &both.encode(&a).unwrap());
        let blank = image::RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]));
        assert!(
            both.encode(&blank).is_err(),
            "a part's failure fails the image"
        );
    }

    #[test]
    fn an_identity_rebuilds_the_same_combination() {
        let both = encoder_from_spec("pixel-8+pixel-16").unwrap();
        let id = both.identity();
        assert_eq!(id.id, "pixel-8+pixel-16");
        assert_eq!(CombinedEncoder::part_identities(&id).unwrap().len(), 2);
        let again = encoder_from_identity(&id).unwrap();
        assert_eq!(again.identity(), id);
        assert_ne!(
            encoder_from_spec("pixel-16+pixel-8")
                .unwrap()
                .identity()
                .hash,
            id.hash
        );
        assert!(encoder_from_spec("pixel-8+nonsense").is_err());
    }
}
