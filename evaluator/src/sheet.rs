//! Contact sheets with captions: a grid of labelled pictures (query | answers | ground truth)
//! written as one PNG, so results can be seen at a glance and shown in a README.
//!
//! Text is drawn with the 8x8 bitmap font of `font8x8` (printable ASCII; anything else is
//! drawn as `?`), scaled by whole pixels: no font files, no anti-aliasing.

use font8x8::UnicodeFonts;
use image::{imageops, Rgb, RgbImage};

/// Space between tiles and around the sheet, pixels.
const GAP: u32 = 10;
/// Glyph scale of captions and headings (8x8 glyphs drawn at 16x16).
const SCALE: u32 = 2;
/// Height of one text line at `SCALE`.
const LINE: u32 = 8 * SCALE + 4;
const BACKGROUND: Rgb<u8> = Rgb([236, 236, 236]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const MISSING: Rgb<u8> = Rgb([200, 200, 200]);

/// One picture of a sheet, a heading line over it and the lines of text under it.
#[derive(Debug, Clone, Default)]
pub struct Tile {
    /// Drawn above the picture (e.g. the query's id on its first tile; empty for none).
    pub heading: String,
    /// The picture; `None` draws an empty grey square (nothing to show: no answer).
    pub image: Option<RgbImage>,
    /// Lines drawn under the picture (cut to the tile's width).
    pub caption: Vec<String>,
}

/// Draws `text` with its top-left corner at (`x`, `y`), glyphs `scale` pixels per font pixel;
/// what falls outside the image is clipped.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, colour: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let left = x + i as u32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (left + col * scale + dx, y + row as u32 * scale + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, colour);
                        }
                    }
                }
            }
        }
    }
}

/// Characters of `text` that fit in `width` pixels at `SCALE`.
fn fitting(text: &str, width: u32) -> String {
    text.chars().take((width / (8 * SCALE)) as usize).collect()
}

/// Lays `rows` out as one sheet: every picture resized to `tile` x `tile` pixels, captions
/// under each and headings over them, one `rows` entry per row, the `title` lines on top.
pub fn grid(title: &[String], rows: &[Vec<Tile>], tile: u32) -> RgbImage {
    let columns = rows.iter().map(|r| r.len()).max().unwrap_or(0) as u32;
    let caption_lines = rows
        .iter()
        .flat_map(|r| r.iter().map(|t| t.caption.len()))
        .max()
        .unwrap_or(0) as u32;
    let row_height = LINE + tile + caption_lines * LINE + GAP;
    let title_height = if title.is_empty() {
        0
    } else {
        title.len() as u32 * LINE + GAP
    };
    let width = GAP + columns.max(1) * (tile + GAP);
    let height = GAP + title_height + rows.len() as u32 * row_height;
    let mut sheet = RgbImage::from_pixel(width, height, BACKGROUND);
    for (l, t) in title.iter().enumerate() {
        let y = GAP + l as u32 * LINE;
        draw_text(&mut sheet, GAP, y, &fitting(t, width - GAP), SCALE, INK);
    }
    let mut top = GAP + title_height;
    for row in rows {
        for (c, t) in row.iter().enumerate() {
            let left = GAP + c as u32 * (tile + GAP);
            draw_text(
                &mut sheet,
                left,
                top,
                &fitting(&t.heading, tile),
                SCALE,
                INK,
            );
            let picture = match &t.image {
                Some(img) if img.dimensions() == (tile, tile) => img.clone(),
                Some(img) => imageops::resize(img, tile, tile, imageops::FilterType::Triangle),
                None => RgbImage::from_pixel(tile, tile, MISSING),
            };
            imageops::replace(&mut sheet, &picture, left as i64, (top + LINE) as i64);
            for (l, line) in t.caption.iter().enumerate() {
                let y = top + LINE + tile + 2 + l as u32 * LINE;
                draw_text(&mut sheet, left, y, &fitting(line, tile), SCALE, INK);
            }
        }
        top += row_height;
    }
    sheet
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ink(img: &RgbImage, x0: u32, y0: u32, w: u32, h: u32) -> usize {
        (y0..y0 + h)
            .flat_map(|y| (x0..x0 + w).map(move |x| (x, y)))
            .filter(|&(x, y)| *img.get_pixel(x, y) == INK)
            .count()
    }

    #[test]
    fn text_draws_glyph_pixels_and_clips_at_the_border() {
        let mut img = RgbImage::from_pixel(40, 20, BACKGROUND);
        draw_text(&mut img, 0, 0, "I", 1, INK);
        let one = ink(&img, 0, 0, 8, 8);
        assert!(one > 5, "{one}");
        let mut big = RgbImage::from_pixel(40, 20, BACKGROUND);
        draw_text(&mut big, 0, 0, "I", 2, INK);
        assert_eq!(ink(&big, 0, 0, 16, 16), 4 * one);
        // Past the right edge nothing is drawn and nothing panics.
        draw_text(&mut big, 36, 10, "WWWW", 2, INK);
        let mut blank = RgbImage::from_pixel(40, 20, BACKGROUND);
        draw_text(&mut blank, 0, 0, " ", 2, INK);
        assert_eq!(ink(&blank, 0, 0, 40, 20), 0);
    }

    #[test]
    fn the_grid_places_every_tile_and_marks_missing_ones() {
        let red = RgbImage::from_pixel(448, 448, Rgb([255, 0, 0]));
        let rows = vec![
            vec![
                Tile {
                    heading: "00002718".into(),
                    image: Some(red.clone()),
                    caption: vec!["query".into()],
                },
                Tile {
                    heading: String::new(),
                    image: None,
                    caption: vec!["fit".into(), "no answer".into()],
                },
            ],
            vec![Tile {
                heading: "b".into(),
                image: Some(red),
                caption: vec![],
            }],
        ];
        let tile = 64;
        let sheet = grid(&["title".into()], &rows, tile);
        let row_height = LINE + tile + 2 * LINE + GAP;
        assert_eq!(sheet.width(), GAP + 2 * (tile + GAP));
        assert_eq!(sheet.height(), GAP + LINE + GAP + 2 * row_height);
        let first_top = GAP + LINE + GAP + LINE;
        assert_eq!(*sheet.get_pixel(GAP + 5, first_top + 5), Rgb([255, 0, 0]));
        assert_eq!(
            *sheet.get_pixel(GAP + tile + GAP + 5, first_top + 5),
            MISSING
        );
        assert_eq!(
            *sheet.get_pixel(GAP + 5, first_top + row_height + 5),
            Rgb([255, 0, 0])
        );
        // Headings and captions put ink on the sheet.
        assert!(ink(&sheet, GAP, GAP + LINE + GAP, 128, LINE) > 0);
        assert!(ink(&sheet, GAP + tile + GAP, first_top + tile, tile, 2 * LINE) > 0);
    }
}
