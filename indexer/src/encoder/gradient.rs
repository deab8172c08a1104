//! Gradient encoders: where the part's outline and feature edges are, and which way they run.
//!
//! The pixel baseline compares shading, which a large flat face dominates; an inner wall, a
//! step or a boss changes few pixels of it. The gradient of the ink (central differences at
//! full resolution) is large exactly on silhouettes, creases and the drawn feature lines, so
//! comparing it weights structure over area. `edges-N` keeps the magnitude (N x N cells);
//! `hog-N` splits it into four unsigned orientation bins (4 x N x N), like a histogram of
//! oriented gradients, so a horizontal edge and a vertical one no longer look alike. Both use
//! the pixel baseline's square foreground frame, then subtract the mean and L2-normalise.

use super::pixel::{centre_and_normalise, foreground_frame, frame_average, ink_map};
use super::{EncoderError, EncoderIdentity, ImageEncoder};

/// Default cells per side of `edges` (32 x 32 = 1024 dimensions).
pub const EDGES_DEFAULT_SIDE: u32 = 32;

/// Default cells per side of `hog` (4 bins x 16 x 16 = 1024 dimensions).
pub const HOG_DEFAULT_SIDE: u32 = 16;

/// Orientation bins of `hog` over 0..180 degrees.
const HOG_BINS: usize = 4;

/// Gradient magnitude (one bin) or oriented gradient histograms (four bins) on a square grid.
#[derive(Debug, Clone)]
pub struct GradientEncoder {
    side: u32,
    bins: usize,
}

impl GradientEncoder {
    /// `edges-N`: gradient magnitude in `side x side` cells.
    pub fn edges(side: u32) -> Self {
        GradientEncoder {
            side: side.max(1),
            bins: 1,
        }
    }

    /// `hog-N`: four orientation bins in `side x side` cells each.
    pub fn hog(side: u32) -> Self {
        GradientEncoder {
            side: side.max(1),
            bins: HOG_BINS,
        }
    }

    /// Per-pixel maps, one per bin: the gradient magnitude of the ink, split between the two
    /// nearest orientation bins (linear in angle) when there are several.
    fn bin_maps(&self, ink: &[f32], w: usize, h: usize) -> Vec<Vec<f32>> {
        let mut maps = vec![vec![0f32; w * h]; self.bins];
        for y in 1..h.saturating_sub(1) {
            for x in 1..w.saturating_sub(1) {
                let gx = (ink[y * w + x + 1] - ink[y * w + x - 1]) / 2.0;
                let gy = (ink[(y + 1) * w + x] - ink[(y - 1) * w + x]) / 2.0;
                let mag = (gx * gx + gy * gy).sqrt();
                if mag == 0.0 {
                    continue;
                }
                if self.bins == 1 {
                    maps[0][y * w + x] = mag;
                    continue;
                }
                // Unsigned angle in bin units, bin centres at 0, 1, .., bins - 1.
                let angle = gy.atan2(gx).rem_euclid(std::f32::consts::PI);
                let t = angle / std::f32::consts::PI * self.bins as f32;
                let lo = t.floor();
                let frac = t - lo;
                let a = lo as usize % self.bins;
                let b = (a + 1) % self.bins;
                maps[a][y * w + x] += mag * (1.0 - frac);
                maps[b][y * w + x] += mag * frac;
            }
        }
        maps
    }
}

impl ImageEncoder for GradientEncoder {
    fn identity(&self) -> EncoderIdentity {
        let kind = if self.bins == 1 { "edges" } else { "hog" };
        let config = serde_json::json!({
            "kind": kind,
            "side": self.side,
            "bins": self.bins,
            "grey": "rec601",
            "gradient": "central-difference",
            "crop": "foreground-bbox-square",
            "resample": "area",
            "center": "mean",
            "norm": "l2",
        });
        let id = format!("{kind}-{}", self.side);
        EncoderIdentity::from_config(id, config, self.dims())
    }

    fn dims(&self) -> usize {
        self.bins * (self.side * self.side) as usize
    }

    fn encode(&self, image: &image::RgbImage) -> Result<Vec<f32>, EncoderError> {
        let frame = foreground_frame(image)?;
        let (w, h) = image.dimensions();
        let maps = self.bin_maps(&ink_map(image), w as usize, h as usize);
        let v: Vec<f32> = maps
            .iter()
            .flat_map(|m| frame_average(m, (w, h), frame, self.side))
            .collect();
        centre_and_normalise(v)
    }
}

#[cfg(test)]
mod tests {
    use super::super::pixel::tests::{dot, plate};
    use super::*;

    #[test]
    fn edges_sit_on_the_outline_not_inside_it() {
        let e = GradientEncoder::edges(16);
        let img = plate(160, 0, 40, 160, 80);
        let v = e.encode(&img).unwrap();
        assert_eq!(v.len(), 256);
        assert!((dot(&v, &v) - 1.0).abs() < 1e-4);
        // Frame = 160 px square, 10 px cells: the box's top edge is in cell row 4, its middle
        // (no gradient) in cell row 8.
        let row = |j: usize| v[j * 16..(j + 1) * 16].iter().sum::<f32>();
        assert!(row(4) > row(8) + 0.5, "{} {}", row(4), row(8));
    }

    #[test]
    fn hog_tells_a_wide_box_from_a_tall_one_by_edge_direction() {
        let e = GradientEncoder::hog(8);
        assert_eq!(e.dims(), 256);
        let wide = e.encode(&plate(200, 20, 80, 160, 40)).unwrap();
        let wide2 = e.encode(&plate(100, 10, 40, 80, 20)).unwrap();
        let tall = e.encode(&plate(200, 80, 20, 40, 160)).unwrap();
        assert!(dot(&wide, &wide2) > 0.9, "{}", dot(&wide, &wide2));
        assert!(dot(&wide, &tall) < 0.5, "{}", dot(&wide, &tall));
    }

    #[test]
    fn identity_names_the_kind_and_side() {
        assert_eq!(GradientEncoder::edges(32).identity().id, "edges-32");
        let h = GradientEncoder::hog(16).identity();
        assert_eq!(h.id, "hog-16");
        assert_eq!(h.dims, 1024);
        assert_ne!(h.hash, GradientEncoder::hog(8).identity().hash);
    }

    #[test]
    fn a_blank_image_is_an_error() {
        let white = image::RgbImage::from_pixel(32, 32, image::Rgb([255, 255, 255]));
        assert!(matches!(
            GradientEncoder::hog(8).encode(&white),
            Err(EncoderError::Blank)
        ));
    }
}
