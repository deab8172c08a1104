//! How well a render of a candidate program matches the query image, for reranking.
//!
//! Both images are in GenCAD's render style (docs/gencad.md): white background, flat grey shading
//! and 1-px black B-rep edges. Two cues are compared:
//! - the foreground mask (every pixel that is not near white), by intersection over union;
//! - the edge map (the black lines), by an F1 score that forgives a misplacement of up to
//!   [`EDGE_TOLERANCE_PX`] pixels in chessboard distance (a pixel counts as matched when an
//!   edge pixel of the other image lies in the 5x5 square around it).
//!
//! Masks are packed 64 pixels to a `u64`, and the tolerance is a dilation done with shifts
//! and ORs, so a 448x448 comparison costs well under a millisecond.
//!
//! Thresholds, from the 8 real images of reference/gencad-samples: the background is exactly
//! (255, 255, 255); shaded faces span (74, 74, 68) to (160, 160, 158) (the shading model's
//! floor is about (71, 71, 64)); edges are exactly (0, 0, 0). Each threshold sits halfway
//! across its gap so that compression noise or a slightly different shading still lands on
//! the right side.

use image::RgbImage;
use thiserror::Error;

/// A pixel is foreground when its channel mean is below this (halfway from faces' 160 to 255).
pub const FOREGROUND_MAX_MEAN: u32 = 208;
/// A pixel is an edge when its channel mean is below this (halfway from 0 to faces' ~69).
pub const EDGE_MAX_MEAN: u32 = 35;
/// How far (chessboard distance, pixels) an edge pixel may be from its match.
pub const EDGE_TOLERANCE_PX: usize = 2;
/// Weight of `mask_iou` in [`score`].
pub const MASK_WEIGHT: f64 = 0.5;
/// Weight of `edge_f1` in [`score`].
pub const EDGE_WEIGHT: f64 = 0.5;

/// How a render matches the query: silhouette overlap and edge agreement, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderMatch {
    /// |A ∩ B| / |A ∪ B| of the foreground masks (1.0 when both are empty).
    pub mask_iou: f64,
    /// F1 of edge pixels matched within [`EDGE_TOLERANCE_PX`] (1.0 both empty, 0.0 one empty).
    pub edge_f1: f64,
}

/// Why two images could not be compared.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MatchError {
    /// The images differ in size; the caller resizes (renders are made at the query's size).
    #[error("image sizes differ: query {query_w}x{query_h}, render {render_w}x{render_h}")]
    SizeMismatch {
        query_w: u32,
        query_h: u32,
        render_w: u32,
        render_h: u32,
    },
}

/// Compares a render with the query image; both must have the same size (no resizing).
pub fn compare(query: &RgbImage, render: &RgbImage) -> Result<RenderMatch, MatchError> {
    if query.dimensions() != render.dimensions() {
        return Err(MatchError::SizeMismatch {
            query_w: query.width(),
            query_h: query.height(),
            render_w: render.width(),
            render_h: render.height(),
        });
    }
    let (q_fg, q_edge) = masks(query);
    let (r_fg, r_edge) = masks(render);
    let union = q_fg.count_or(&r_fg);
    let mask_iou = if union == 0 {
        1.0
    } else {
        q_fg.count_and(&r_fg) as f64 / union as f64
    };
    let (qn, rn) = (q_edge.count(), r_edge.count());
    let edge_f1 = if qn == 0 && rn == 0 {
        1.0
    } else if qn == 0 || rn == 0 {
        0.0
    } else {
        let precision = r_edge.count_and(&q_edge.dilate(EDGE_TOLERANCE_PX)) as f64 / rn as f64;
        let recall = q_edge.count_and(&r_edge.dilate(EDGE_TOLERANCE_PX)) as f64 / qn as f64;
        if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        }
    };
    Ok(RenderMatch { mask_iou, edge_f1 })
}

/// One number for reranking: `MASK_WEIGHT * mask_iou + EDGE_WEIGHT * edge_f1`, in [0, 1].
pub fn score(m: &RenderMatch) -> f64 {
    MASK_WEIGHT * m.mask_iou + EDGE_WEIGHT * m.edge_f1
}

/// A binary image packed row by row, 64 pixels per word (bit i of word j = pixel 64 j + i).
#[derive(Debug, Clone)]
struct Bits {
    width: usize,
    height: usize,
    words_per_row: usize,
    data: Vec<u64>,
}

impl Bits {
    fn new(width: usize, height: usize) -> Self {
        let words_per_row = width.div_ceil(64);
        Bits {
            width,
            height,
            words_per_row,
            data: vec![0; words_per_row * height],
        }
    }

    fn count(&self) -> u64 {
        self.data.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn count_and(&self, other: &Bits) -> u64 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| u64::from((a & b).count_ones()))
            .sum()
    }

    fn count_or(&self, other: &Bits) -> u64 {
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| u64::from((a | b).count_ones()))
            .sum()
    }

    /// Dilation by a (2r+1)x(2r+1) square: set where any pixel within chessboard distance r is.
    fn dilate(&self, r: usize) -> Bits {
        let wpr = self.words_per_row;
        let r_h = r.min(63);
        let last_mask = match self.width % 64 {
            0 => u64::MAX,
            rem => (1u64 << rem) - 1,
        };
        let mut rows = Bits::new(self.width, self.height);
        for y in 0..self.height {
            let src = &self.data[y * wpr..(y + 1) * wpr];
            let dst = &mut rows.data[y * wpr..(y + 1) * wpr];
            for j in 0..wpr {
                let x = src[j];
                let prev = if j > 0 { src[j - 1] } else { 0 };
                let next = if j + 1 < wpr { src[j + 1] } else { 0 };
                let mut out = x;
                for k in 1..=r_h {
                    out |= (x << k) | (prev >> (64 - k));
                    out |= (x >> k) | (next << (64 - k));
                }
                dst[j] = out;
            }
            if let Some(w) = dst.last_mut() {
                *w &= last_mask;
            }
        }
        let mut out = Bits::new(self.width, self.height);
        for y in 0..self.height {
            let lo = y.saturating_sub(r);
            let hi = (y + r).min(self.height.saturating_sub(1));
            let dst = &mut out.data[y * wpr..(y + 1) * wpr];
            for yy in lo..=hi {
                for (d, s) in dst.iter_mut().zip(&rows.data[yy * wpr..(yy + 1) * wpr]) {
                    *d |= s;
                }
            }
        }
        out
    }
}

/// The foreground mask and the edge map of an image.
fn masks(img: &RgbImage) -> (Bits, Bits) {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut fg = Bits::new(width, height);
    let mut edge = Bits::new(width, height);
    let raw: &[u8] = img.as_raw();
    if width == 0 || height == 0 {
        return (fg, edge);
    }
    let wpr = fg.words_per_row;
    let fg_sum = 3 * FOREGROUND_MAX_MEAN;
    let edge_sum = 3 * EDGE_MAX_MEAN;
    for (y, row) in raw.chunks_exact(width * 3).take(height).enumerate() {
        for (j, px64) in row.chunks(64 * 3).enumerate() {
            let (mut f, mut e) = (0u64, 0u64);
            for (i, px) in px64.chunks_exact(3).enumerate() {
                let sum = u32::from(px[0]) + u32::from(px[1]) + u32::from(px[2]);
                f |= u64::from(sum < fg_sum) << i;
                e |= u64::from(sum < edge_sum) << i;
            }
            fg.data[y * wpr + j] = f;
            edge.data[y * wpr + j] = e;
        }
    }
    (fg, edge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const IDS: [&str; 8] = [
        "00002718", "00387732", "00442545", "00519312", "00534824", "00765253", "00852119",
        "00966577",
    ];

    fn real(id: &str) -> RgbImage {
        let png = crate::reference::image_png(id).expect("real sample image");
        image::load_from_memory(png).expect("decodes").to_rgb8()
    }

    /// A copy moved by (dx, dy), uncovered pixels white.
    fn shifted(img: &RgbImage, dx: i64, dy: i64) -> RgbImage {
        let (w, h) = img.dimensions();
        RgbImage::from_fn(w, h, |x, y| {
            let (sx, sy) = (i64::from(x) - dx, i64::from(y) - dy);
            if sx < 0 || sy < 0 || sx >= i64::from(w) || sy >= i64::from(h) {
                Rgb([255, 255, 255])
            } else {
                *img.get_pixel(sx as u32, sy as u32)
            }
        })
    }

    /// A synthetic part: a grey box with a black outline and one inner edge.
    fn synthetic(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let inside = (100..300).contains(&x) && (120..260).contains(&y);
            let border = inside && (x == 100 || x == 299 || y == 120 || y == 259 || x == 200);
            if border {
                Rgb([0, 0, 0])
            } else if inside {
                Rgb([141, 141, 138])
            } else {
                Rgb([255, 255, 255])
            }
        })
    }

    #[test]
    fn identical_images_match_fully() {
        let a = synthetic(448, 448);
        let m = compare(&a, &a).expect("same size");
        assert_eq!((m.mask_iou, m.edge_f1), (1.0, 1.0));
        assert_eq!(score(&m), 1.0);
        for id in IDS {
            let a = real(id);
            let m = compare(&a, &a).expect("same size");
            assert_eq!((m.mask_iou, m.edge_f1), (1.0, 1.0), "{id}");
        }
    }

    #[test]
    fn larger_shift_scores_lower() {
        for a in [synthetic(448, 448), real("00442545"), real("00765253")] {
            let one = compare(&a, &shifted(&a, 1, 0)).expect("same size");
            let ten = compare(&a, &shifted(&a, 10, 0)).expect("same size");
            let diag = compare(&a, &shifted(&a, 2, -2)).expect("same size");
            assert!(score(&ten) < score(&one), "{one:?} {ten:?}");
            assert!(ten.mask_iou < one.mask_iou && ten.edge_f1 < one.edge_f1);
            // Within the tolerance the edges still match completely.
            assert_eq!(one.edge_f1, 1.0);
            assert_eq!(diag.edge_f1, 1.0);
            assert!(one.mask_iou < 1.0);
        }
    }

    #[test]
    fn blank_against_part() {
        let blank = RgbImage::from_pixel(448, 448, Rgb([255, 255, 255]));
        let part = real("00002718");
        let m = compare(&blank, &part).expect("same size");
        assert_eq!((m.mask_iou, m.edge_f1), (0.0, 0.0));
        let m = compare(&blank, &blank).expect("same size");
        assert_eq!((m.mask_iou, m.edge_f1), (1.0, 1.0));
    }

    #[test]
    fn different_parts_score_lower_than_themselves() {
        let imgs: Vec<RgbImage> = IDS.iter().map(|id| real(id)).collect();
        for (i, a) in imgs.iter().enumerate() {
            for (j, b) in imgs.iter().enumerate() {
                if i != j {
                    let m = compare(a, b).expect("same size");
                    assert!(score(&m) < 0.9, "{} vs {}: {m:?}", IDS[i], IDS[j]);
                }
            }
        }
    }

    #[test]
    fn thresholds_split_real_pixels() {
        // Every real pixel is white background, black edge or a face between the thresholds.
        for id in IDS {
            for px in real(id).pixels() {
                let sum: u32 = px.0.iter().map(|&c| u32::from(c)).sum();
                let class_ok =
                    sum == 3 * 255 || sum == 0 || (3 * EDGE_MAX_MEAN..3 * 170).contains(&sum);
                assert!(class_ok, "{id}: {px:?}");
            }
        }
    }

    #[test]
    fn odd_sizes_and_mismatch() {
        let a = synthetic(333, 301);
        let m = compare(&a, &shifted(&a, 0, 2)).expect("same size");
        assert_eq!(m.edge_f1, 1.0);
        let err = compare(&a, &synthetic(448, 448)).expect_err("sizes differ");
        assert_eq!(
            err.to_string(),
            "image sizes differ: query 333x301, render 448x448"
        );
        let empty = RgbImage::new(0, 0);
        let m = compare(&empty, &empty).expect("same size");
        assert_eq!((m.mask_iou, m.edge_f1), (1.0, 1.0));
    }

    #[test]
    fn dilation_reaches_exactly_the_square() {
        let mut b = Bits::new(130, 9);
        // Pixels at the word boundary (63, 64) and the last column.
        for (x, y) in [(63usize, 4usize), (129, 0)] {
            b.data[y * b.words_per_row + x / 64] |= 1 << (x % 64);
        }
        let d = b.dilate(2);
        let get = |x: usize, y: usize| d.data[y * d.words_per_row + x / 64] >> (x % 64) & 1 == 1;
        for y in 0usize..9 {
            for x in 0usize..130 {
                let near = |(px, py): (usize, usize)| x.abs_diff(px) <= 2 && y.abs_diff(py) <= 2;
                assert_eq!(get(x, y), near((63, 4)) || near((129, 0)), "({x}, {y})");
            }
        }
        assert_eq!(d.count(), 25 + 9);
    }
}
