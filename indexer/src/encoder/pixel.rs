//! The pixel-space baseline encoder: the part's silhouette and shading, downscaled.
//!
//! Steps: grey (Rec. 601 luma), crop to the foreground bounding box grown to a square around
//! its centre (white padding), area-average down to `side x side`, ink = 1 - grey, subtract the
//! mean, L2-normalise. The square crop is deliberate: GenCAD renders are already framed to
//! the part, so on them it changes little, but it makes queries framed differently (other
//! margins, other resolutions, a user's own render) comparable, and squaring keeps the
//! aspect ratio, which carries shape information. Subtracting the mean makes the score a
//! correlation (a blank-ish image does not match everything).

use super::{normalise_unit, EncoderError, EncoderIdentity, ImageEncoder};

/// Default output side: 32 x 32 = 1024 dimensions.
pub const PIXEL_DEFAULT_SIDE: u32 = 32;

/// Grey levels at or above this count as background (GenCAD background is pure white).
const BACKGROUND_LEVEL: u8 = 250;

/// The pixel-space baseline: downscaled, centred, normalised grey image as the vector.
#[derive(Debug, Clone)]
pub struct PixelEncoder {
    side: u32,
}

impl PixelEncoder {
    /// An encoder producing `side * side` dimensions.
    pub fn new(side: u32) -> Self {
        PixelEncoder { side: side.max(1) }
    }
}

fn luma(p: &image::Rgb<u8>) -> u8 {
    let [r, g, b] = p.0;
    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000) as u8
}

/// Per output cell along one axis: the (source index, weight) pairs of the continuous source
/// interval it covers; indices outside `0..len` are skipped (they are white, ink 0).
fn axis_weights(start: f64, extent: f64, cells: u32, len: u32) -> Vec<Vec<(usize, f32)>> {
    let step = extent / f64::from(cells);
    (0..cells)
        .map(|i| {
            let a = start + step * f64::from(i);
            let b = a + step;
            let mut w = Vec::new();
            let first = a.floor().max(0.0) as i64;
            let last = (b.ceil() as i64).min(i64::from(len));
            for px in first..last {
                let lo = a.max(px as f64);
                let hi = b.min(px as f64 + 1.0);
                if hi > lo {
                    w.push((px as usize, ((hi - lo) / step) as f32));
                }
            }
            w
        })
        .collect()
}

/// The square the encoders look at: the foreground bounding box grown to a square around its
/// centre, in source pixels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    cx: f64,
    cy: f64,
    extent: f64,
}

/// Finds the part in `image`: the [`Frame`] around every pixel darker than the background;
/// a picture with no background-coloured pixel uses it all.
pub(crate) fn foreground_frame(image: &image::RgbImage) -> Result<Frame, EncoderError> {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return Err(EncoderError::Empty {
            width: w,
            height: h,
        });
    }
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    for (x, y, p) in image.enumerate_pixels() {
        if luma(p) < BACKGROUND_LEVEL {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
        }
    }
    if x0 == u32::MAX {
        return Err(EncoderError::Blank);
    }
    Ok(Frame {
        cx: f64::from(x0 + x1) / 2.0,
        cy: f64::from(y0 + y1) / 2.0,
        extent: f64::from((x1 - x0).max(y1 - y0)),
    })
}

/// Area-averages a `w x h` map of per-pixel `values` (0 outside the image) over `frame` into
/// a `side_px x side_px` grid, row-major.
pub(crate) fn frame_average(
    values: &[f32],
    (w, h): (u32, u32),
    frame: Frame,
    side_px: u32,
) -> Vec<f32> {
    let wx = axis_weights(frame.cx - frame.extent / 2.0, frame.extent, side_px, w);
    let wy = axis_weights(frame.cy - frame.extent / 2.0, frame.extent, side_px, h);
    let side = side_px as usize;
    // Separable area average: columns first (per source row), then rows.
    let mut cols = vec![0f32; h as usize * side];
    for y in 0..h as usize {
        let row = &values[y * w as usize..(y + 1) * w as usize];
        for (i, ws) in wx.iter().enumerate() {
            cols[y * side + i] = ws.iter().map(|(x, k)| row[*x] * k).sum();
        }
    }
    let mut v = vec![0f32; side * side];
    for (j, ws) in wy.iter().enumerate() {
        for (y, k) in ws {
            for i in 0..side {
                v[j * side + i] += cols[y * side + i] * k;
            }
        }
    }
    v
}

/// Per-pixel ink (1 - grey, 0..1), row-major.
pub(crate) fn ink_map(image: &image::RgbImage) -> Vec<f32> {
    image
        .pixels()
        .map(|p| f32::from(255 - luma(p)) / 255.0)
        .collect()
}

/// The part's ink (1 - grey, 0..1) in a `side_px x side_px` grid: the foreground bounding box
/// grown to a square around its centre, area-averaged. Shared by the pixel baseline and the
/// small CLIP's preprocessing, so both see a query framed any way like a GenCAD render.
pub fn ink_thumbnail(image: &image::RgbImage, side_px: u32) -> Result<Vec<f32>, EncoderError> {
    let frame = foreground_frame(image)?;
    Ok(frame_average(
        &ink_map(image),
        image.dimensions(),
        frame,
        side_px,
    ))
}

/// Subtracts the mean and scales to unit length; a vector with nothing left is blank.
pub(crate) fn centre_and_normalise(mut v: Vec<f32>) -> Result<Vec<f32>, EncoderError> {
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    v.iter_mut().for_each(|x| *x -= mean);
    if v.iter().map(|x| x.abs()).fold(0.0, f32::max) < 1e-6 || !normalise_unit(&mut v) {
        return Err(EncoderError::Blank);
    }
    Ok(v)
}

impl ImageEncoder for PixelEncoder {
    fn identity(&self) -> EncoderIdentity {
        let config = serde_json::json!({
            "kind": "pixel",
            "side": self.side,
            "grey": "rec601",
            "crop": "foreground-bbox-square",
            "background_level": BACKGROUND_LEVEL,
            "resample": "area",
            "center": "mean",
            "norm": "l2",
        });
        let id = format!("pixel-{}", self.side);
        EncoderIdentity::from_config(id, config, self.dims())
    }

    fn dims(&self) -> usize {
        (self.side * self.side) as usize
    }

    fn encode(&self, image: &image::RgbImage) -> Result<Vec<f32>, EncoderError> {
        centre_and_normalise(ink_thumbnail(image, self.side)?)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The dot product (the cosine, for unit vectors).
    pub(in crate::encoder) fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// A white canvas with a grey box and a black outline, like a GenCAD render of a plate.
    pub(in crate::encoder) fn plate(
        size: u32,
        x0: u32,
        y0: u32,
        bw: u32,
        bh: u32,
    ) -> image::RgbImage {
        let mut img = image::RgbImage::from_pixel(size, size, image::Rgb([255, 255, 255]));
        for y in y0..y0 + bh {
            for x in x0..x0 + bw {
                let edge = x == x0 || y == y0 || x == x0 + bw - 1 || y == y0 + bh - 1;
                let c = if edge { 0 } else { 141 };
                img.put_pixel(x, y, image::Rgb([c, c, c]));
            }
        }
        img
    }

    #[test]
    fn vectors_are_unit_length_with_zero_mean() {
        let e = PixelEncoder::new(32);
        let v = e.encode(&plate(448, 100, 150, 250, 120)).unwrap();
        assert_eq!(v.len(), 1024);
        assert!((dot(&v, &v) - 1.0).abs() < 1e-4);
        assert!(v.iter().sum::<f32>().abs() < 1e-3);
    }

    #[test]
    fn framing_and_resolution_do_not_change_the_vector_much_but_shape_does() {
        let e = PixelEncoder::new(32);
        let a = e.encode(&plate(448, 100, 150, 240, 120)).unwrap();
        // Same shape, shifted and at another resolution: the square crop lines them up.
        let b = e.encode(&plate(224, 10, 20, 120, 60)).unwrap();
        // A different aspect ratio.
        let c = e.encode(&plate(448, 150, 100, 120, 240)).unwrap();
        assert!(dot(&a, &b) > 0.95, "{}", dot(&a, &b));
        assert!(dot(&a, &c) < 0.7, "{}", dot(&a, &c));
    }

    #[test]
    fn blank_and_empty_images_are_errors() {
        let e = PixelEncoder::new(16);
        let white = image::RgbImage::from_pixel(64, 64, image::Rgb([255, 255, 255]));
        assert!(matches!(e.encode(&white), Err(EncoderError::Blank)));
        let grey = image::RgbImage::from_pixel(64, 64, image::Rgb([100, 100, 100]));
        assert!(matches!(e.encode(&grey), Err(EncoderError::Blank)));
        let empty = image::RgbImage::new(0, 5);
        assert!(matches!(e.encode(&empty), Err(EncoderError::Empty { .. })));
    }

    #[test]
    fn identity_hash_depends_on_the_config() {
        let a = PixelEncoder::new(32).identity();
        let b = PixelEncoder::new(16).identity();
        assert_eq!(a.id, "pixel-32");
        assert_eq!(a.dims, 1024);
        assert_ne!(a.hash, b.hash);
        assert_eq!(a, PixelEncoder::new(32).identity());
    }

    #[test]
    fn area_weights_sum_to_one_inside_the_image() {
        for ws in axis_weights(0.0, 448.0, 32, 448) {
            let s: f32 = ws.iter().map(|(_, k)| k).sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
        // Cells hanging off the image lose the part that is outside (white).
        let ws = axis_weights(-10.0, 20.0, 2, 448);
        assert!((ws[0].iter().map(|(_, k)| k).sum::<f32>() - 0.0).abs() < 1e-6);
        assert!((ws[1].iter().map(|(_, k)| k).sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
