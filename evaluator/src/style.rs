//! How closely one of our renders matches a real GenCAD-Code image: foreground overlap,
//! shading difference and edge placement, plus a side-by-side sheet for eyeballing.
//!
//! Thresholds are grounded in the real images: the background is pure white, faces are
//! grey (at least 71 in R and G, 64 in B even at grazing angles, by the headlight formula
//! of docs/gencad.md) and edges pure black (0, 0, 0), nothing in between (no anti-aliasing).

use image::{Rgb, RgbImage};

/// A pixel is foreground when any channel is below this (the background is 255, 255, 255).
pub const FOREGROUND_BELOW: u8 = 250;
/// A pixel is an edge when every channel is below this: real edges are exactly 0, while the
/// darkest shading (a face seen edge-on) is about (71, 71, 65).
pub const EDGE_BELOW: u8 = 60;

/// Agreement of our render with a real image of the same part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StyleComparison {
    /// Intersection over union of the two foreground masks (1.0 when both are empty).
    pub mask_iou: f64,
    /// Median over the pixels in both foregrounds of the per-pixel absolute difference,
    /// averaged over the three channels, in grey levels (infinite when they do not overlap).
    pub median_abs_diff: f64,
    /// Fraction of our edge pixels with a real edge pixel in their 3x3 neighbourhood
    /// (1.0 when neither image has edge pixels, 0.0 when only the real one has).
    pub edge_precision: f64,
    /// Fraction of the real edge pixels with one of ours in their 3x3 neighbourhood (same
    /// conventions); reported, not a style criterion: real images show edges that a
    /// CadQuery union merges away.
    pub edge_recall: f64,
}

fn pixel(img: &RgbImage, x: u32, y: u32) -> [u8; 3] {
    if x < img.width() && y < img.height() {
        img.get_pixel(x, y).0
    } else {
        [255, 255, 255]
    }
}

fn is_foreground(p: [u8; 3]) -> bool {
    p.iter().any(|&c| c < FOREGROUND_BELOW)
}

fn is_edge(p: [u8; 3]) -> bool {
    p.iter().all(|&c| c < EDGE_BELOW)
}

/// Edge mask of an image over a `w` x `h` canvas (outside the image counts as background).
fn edge_mask(img: &RgbImage, w: u32, h: u32) -> Vec<bool> {
    let mut mask = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            mask.push(is_edge(pixel(img, x, y)));
        }
    }
    mask
}

/// Fraction of `from`'s set pixels with a set pixel of `to` within one pixel (8-neighbourhood
/// and itself); when `from` has none: 1.0 if `to` has none either, else 0.0.
fn near_fraction(from: &[bool], to: &[bool], w: u32, h: u32) -> f64 {
    let (w, h) = (w as i64, h as i64);
    let (mut total, mut near) = (0u64, 0u64);
    for y in 0..h {
        for x in 0..w {
            if !from[(y * w + x) as usize] {
                continue;
            }
            total += 1;
            let hit = (-1..=1).any(|dy| {
                (-1..=1).any(|dx| {
                    let (nx, ny) = (x + dx, y + dy);
                    nx >= 0 && ny >= 0 && nx < w && ny < h && to[(ny * w + nx) as usize]
                })
            });
            near += u64::from(hit);
        }
    }
    if total == 0 {
        return if to.iter().any(|&e| e) { 0.0 } else { 1.0 };
    }
    near as f64 / total as f64
}

/// Compare our render with the real image: mask IoU, median shading difference on the
/// common foreground, and edge precision (recall too); images of different sizes are
/// compared on the larger canvas with white outside each.
pub fn compare(real: &RgbImage, ours: &RgbImage) -> StyleComparison {
    let w = real.width().max(ours.width());
    let h = real.height().max(ours.height());
    let (mut inter, mut union) = (0u64, 0u64);
    let mut diffs = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (pixel(real, x, y), pixel(ours, x, y));
            let (fa, fb) = (is_foreground(a), is_foreground(b));
            union += u64::from(fa || fb);
            if fa && fb {
                inter += 1;
                // sum of the three channels' differences; divided by 3 below
                let d: u32 = (0..3).map(|k| u32::from(a[k].abs_diff(b[k]))).sum();
                diffs.push(d);
            }
        }
    }
    let mask_iou = if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    };
    let median_abs_diff = if diffs.is_empty() {
        f64::INFINITY
    } else {
        diffs.sort_unstable();
        let m = diffs.len() / 2;
        let med = if diffs.len() % 2 == 1 {
            f64::from(diffs[m])
        } else {
            0.5 * (f64::from(diffs[m - 1]) + f64::from(diffs[m]))
        };
        med / 3.0
    };
    let real_edges = edge_mask(real, w, h);
    let our_edges = edge_mask(ours, w, h);
    StyleComparison {
        mask_iou,
        median_abs_diff,
        edge_precision: near_fraction(&our_edges, &real_edges, w, h),
        edge_recall: near_fraction(&real_edges, &our_edges, w, h),
    }
}

/// Gap between panels and rows of a side-by-side sheet, in pixels.
const GAP: u32 = 8;

/// One sheet with a row per entry: the real image on the left, ours on the right, on a
/// light grey canvas; the labels are not drawn (no font), they only document the rows.
pub fn side_by_side(rows: &[(String, RgbImage, RgbImage)]) -> RgbImage {
    let left = rows.iter().map(|r| r.1.width()).max().unwrap_or(0);
    let right = rows.iter().map(|r| r.2.width()).max().unwrap_or(0);
    let width = GAP + left + GAP + right + GAP;
    let height = GAP
        + rows
            .iter()
            .map(|r| r.1.height().max(r.2.height()) + GAP)
            .sum::<u32>();
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([200, 200, 200]));
    let mut top = GAP;
    for (_, real, ours) in rows {
        blit(&mut sheet, real, GAP, top);
        blit(&mut sheet, ours, GAP + left + GAP, top);
        top += real.height().max(ours.height()) + GAP;
    }
    sheet
}

fn blit(dst: &mut RgbImage, src: &RgbImage, left: u32, top: u32) {
    for (x, y, p) in src.enumerate_pixels() {
        dst.put_pixel(left + x, top + y, *p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images_agree_perfectly() {
        let mut img = RgbImage::from_pixel(20, 20, Rgb([255, 255, 255]));
        for x in 5..15 {
            for y in 5..15 {
                img.put_pixel(x, y, Rgb([141, 141, 138]));
            }
            img.put_pixel(x, 5, Rgb([0, 0, 0]));
        }
        let c = compare(&img, &img);
        assert_eq!(c.mask_iou, 1.0);
        assert_eq!(c.median_abs_diff, 0.0);
        assert_eq!(c.edge_precision, 1.0);
        assert_eq!(c.edge_recall, 1.0);
    }

    #[test]
    fn shifted_edges_count_within_one_pixel_only() {
        let real = RgbImage::from_fn(20, 20, |_, y| {
            if y == 10 {
                Rgb([0, 0, 0])
            } else {
                Rgb([141, 141, 138])
            }
        });
        let near = RgbImage::from_fn(20, 20, |_, y| {
            if y == 11 {
                Rgb([0, 0, 0])
            } else {
                Rgb([141, 141, 138])
            }
        });
        let far = RgbImage::from_fn(20, 20, |_, y| {
            if y == 12 {
                Rgb([0, 0, 0])
            } else {
                Rgb([141, 141, 138])
            }
        });
        assert_eq!(compare(&real, &near).edge_precision, 1.0);
        assert_eq!(compare(&real, &far).edge_precision, 0.0);
        let no_edges = RgbImage::from_pixel(20, 20, Rgb([141, 141, 138]));
        assert_eq!(compare(&real, &no_edges).edge_precision, 0.0);
    }

    #[test]
    fn mask_iou_and_median_diff() {
        let real = RgbImage::from_fn(10, 10, |x, _| {
            if x < 5 {
                Rgb([100, 100, 100])
            } else {
                Rgb([255, 255, 255])
            }
        });
        let ours = RgbImage::from_fn(10, 10, |x, _| {
            if x < 4 {
                Rgb([103, 103, 100])
            } else {
                Rgb([255, 255, 255])
            }
        });
        let c = compare(&real, &ours);
        assert!((c.mask_iou - 0.8).abs() < 1e-12);
        // (3 + 3 + 0) / 3 grey levels on every overlapping pixel
        assert!((c.median_abs_diff - 2.0).abs() < 1e-12);
        let sheet = side_by_side(&[("a".into(), real, ours)]);
        assert_eq!(sheet.width(), 8 + 10 + 8 + 10 + 8);
        assert_eq!(sheet.height(), 8 + 10 + 8);
    }
}
