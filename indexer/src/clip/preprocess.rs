//! Image -> model input: HF CLIP's resize / centre-crop / normalise, or the small CLIP's square
//! foreground crop of the ink image.

use image::imageops::FilterType;

use super::config::PreprocessConfig;
use crate::encoder::{ink_thumbnail, EncoderError};

/// Model input of one image, channel-major (`channels * side * side` values).
pub fn pixel_values(
    image: &image::RgbImage,
    pre: &PreprocessConfig,
    side: u32,
    channels: usize,
) -> Result<Vec<f32>, EncoderError> {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 {
        return Err(EncoderError::Empty {
            width: w,
            height: h,
        });
    }
    let mean = |c: usize| {
        pre.image_mean
            .get(c)
            .or(pre.image_mean.first())
            .copied()
            .unwrap_or(0.0)
    };
    let std = |c: usize| {
        pre.image_std
            .get(c)
            .or(pre.image_std.first())
            .copied()
            .unwrap_or(1.0)
    };
    let plane = (side * side) as usize;
    if pre.crop_to_foreground {
        let ink = ink_thumbnail(image, side)?;
        let mut out = Vec::with_capacity(plane * channels);
        for c in 0..channels {
            out.extend(ink.iter().map(|v| (v - mean(c)) / std(c)));
        }
        return Ok(out);
    }
    // HF: shortest side to `side` (bicubic), centre crop, RGB in 0..1, per-channel normalise.
    let scale = f64::from(side) / f64::from(w.min(h));
    let (nw, nh) = (
        ((f64::from(w) * scale).round() as u32).max(side),
        ((f64::from(h) * scale).round() as u32).max(side),
    );
    let resized = image::imageops::resize(image, nw, nh, FilterType::CatmullRom);
    let (x0, y0) = ((nw - side) / 2, (nh - side) / 2);
    let mut out = vec![0f32; plane * channels];
    for y in 0..side {
        for x in 0..side {
            let p = resized.get_pixel(x0 + x, y0 + y).0;
            let i = (y * side + x) as usize;
            if channels == 1 {
                let grey =
                    (0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
                        / 255.0;
                out[i] = (grey - mean(0)) / std(0);
            } else {
                for (c, v) in p.iter().enumerate() {
                    out[c * plane + i] = (f32::from(*v) / 255.0 - mean(c)) / std(c);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_preprocessing_crops_the_centre_and_normalises_per_channel() {
        let mut img = image::RgbImage::from_pixel(40, 20, image::Rgb([255, 255, 255]));
        for y in 0..20 {
            for x in 15..25 {
                img.put_pixel(x, y, image::Rgb([0, 0, 0]));
            }
        }
        let pre = PreprocessConfig::default();
        let v = pixel_values(&img, &pre, 10, 3).unwrap();
        assert_eq!(v.len(), 300);
        // Centre column black (after resize to 20x10 and crop 10x10, columns ~2..8 are dark).
        let black0 = (0.0 - pre.image_mean[0]) / pre.image_std[0];
        let white2 = (1.0 - pre.image_mean[2]) / pre.image_std[2];
        assert!((v[5 * 10 + 5] - black0).abs() < 0.05, "{}", v[55]);
        assert!(
            (v[200] - white2).abs() < 0.05 || v[200] < white2,
            "{}",
            v[200]
        );
    }

    #[test]
    fn foreground_crop_sees_a_part_the_same_at_any_framing() {
        let draw = |size: u32, off: u32, side: u32| {
            let mut img = image::RgbImage::from_pixel(size, size, image::Rgb([255, 255, 255]));
            for y in off..off + side {
                for x in off..off + side / 2 {
                    img.put_pixel(x, y, image::Rgb([100, 100, 100]));
                }
            }
            img
        };
        let pre = PreprocessConfig::small();
        let a = pixel_values(&draw(448, 100, 200), &pre, 16, 1).unwrap();
        let b = pixel_values(&draw(200, 20, 100), &pre, 16, 1).unwrap();
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{diff}");
    }
}
