//! `thumbs.bin`: a small grey PNG of every indexed image, in data-id order, so search results
//! and galleries can show what each neighbour looks like without the corpus or a re-render.
//!
//! Layout: the magic `CTHB1\0\0\0`, a little-endian u64 count n, n + 1 u64 byte offsets
//! (relative to the end of the table), then the PNGs back to back.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use image::{GrayImage, RgbImage};

use super::IndexError;

/// The thumbnail file's name inside an index folder.
pub const THUMBS_FILE: &str = "thumbs.bin";
/// Thumbnail side in pixels (a 448-px render shrunk 4.67x: edges stay visible).
pub const THUMB_SIZE: u32 = 96;
const MAGIC: &[u8; 8] = b"CTHB1\0\0\0";

/// A grey PNG of `img` at [`THUMB_SIZE`] pixels: each pixel the darkest of the source pixels
/// it covers, so one-pixel edge lines of the renders stay visible after the shrink.
pub fn thumbnail(img: &RgbImage) -> Vec<u8> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let side = THUMB_SIZE as usize;
    // Source pixels under target pixel i of n: [i n / side, ceil((i + 1) n / side)).
    let spans = |n: usize| -> Vec<std::ops::Range<usize>> {
        (0..side)
            .map(|i| {
                let lo = i * n / side;
                let hi = ((i + 1) * n).div_ceil(side).max(lo + 1).min(n);
                lo..hi
            })
            .collect()
    };
    let (cols, rows) = (spans(w), spans(h));
    let raw = img.as_raw();
    let mut luma = vec![0u8; w];
    let mut small = GrayImage::new(THUMB_SIZE, THUMB_SIZE);
    for (ty, row_span) in rows.iter().enumerate() {
        let mut darkest = vec![255u8; side];
        for sy in row_span.clone() {
            let row = &raw[sy * w * 3..(sy + 1) * w * 3];
            for (l, px) in luma.iter_mut().zip(row.chunks_exact(3)) {
                // Rec. 601 luma in integers (grey renders have r = g = b anyway).
                *l = ((px[0] as u32 * 77 + px[1] as u32 * 150 + px[2] as u32 * 29) >> 8) as u8;
            }
            for (d, span) in darkest.iter_mut().zip(&cols) {
                let m = luma[span.clone()].iter().copied().min().unwrap_or(255);
                *d = (*d).min(m);
            }
        }
        for (tx, d) in darkest.into_iter().enumerate() {
            small.put_pixel(tx as u32, ty as u32, image::Luma([d]));
        }
    }
    let mut png = Vec::new();
    small
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encoding a PNG into memory does not fail");
    png
}

/// Writes `thumbs` (PNG bytes, data-id order) as a thumbnail file.
pub fn write_thumbs(path: &Path, thumbs: &[Vec<u8>]) -> Result<(), IndexError> {
    let io = |e| IndexError::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::new(file);
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&(thumbs.len() as u64).to_le_bytes())
        .map_err(io)?;
    let mut offset = 0u64;
    w.write_all(&offset.to_le_bytes()).map_err(io)?;
    for t in thumbs {
        offset += t.len() as u64;
        w.write_all(&offset.to_le_bytes()).map_err(io)?;
    }
    for t in thumbs {
        w.write_all(t).map_err(io)?;
    }
    w.flush().map_err(io)
}

fn corrupt(path: &Path, message: impl Into<String>) -> IndexError {
    IndexError::Corrupt {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The offset table of a thumbnail file: where each PNG starts and ends.
fn read_table(path: &Path, file: &mut std::fs::File) -> Result<(Vec<u64>, u64), IndexError> {
    let io = |e| IndexError::io(path, e);
    let len = file.metadata().map_err(io)?.len();
    let mut head = [0u8; 16];
    file.read_exact(&mut head)
        .map_err(|_| corrupt(path, "shorter than its header"))?;
    if &head[..8] != MAGIC {
        return Err(corrupt(path, "not a thumbnail file (bad magic)"));
    }
    let n = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
    let table_bytes = n
        .checked_add(1)
        .and_then(|k| k.checked_mul(8))
        .filter(|&b| 16 + b <= len)
        .ok_or_else(|| corrupt(path, format!("{n} thumbnails do not fit {len} bytes")))?;
    let mut raw = vec![0u8; table_bytes as usize];
    file.read_exact(&mut raw).map_err(io)?;
    let offsets: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let base = 16 + table_bytes;
    let ordered = offsets.windows(2).all(|w| w[0] <= w[1]);
    if offsets[0] != 0 || !ordered || base + offsets[n as usize] != len {
        return Err(corrupt(path, "offset table does not match the file"));
    }
    Ok((offsets, base))
}

/// Reads every thumbnail (for resuming a build); a damaged file is [`IndexError::Corrupt`].
pub fn read_thumbs(path: &Path) -> Result<Vec<Vec<u8>>, IndexError> {
    let mut file = std::fs::File::open(path).map_err(|e| IndexError::io(path, e))?;
    let (offsets, _) = read_table(path, &mut file)?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)
        .map_err(|e| IndexError::io(path, e))?;
    Ok(offsets
        .windows(2)
        .map(|w| rest[w[0] as usize..w[1] as usize].to_vec())
        .collect())
}

/// The PNGs of data ids `ids` from a thumbnail file, read without loading the rest.
pub fn read_some(path: &Path, ids: &[usize]) -> Result<Vec<Vec<u8>>, IndexError> {
    let io = |e| IndexError::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let (offsets, base) = read_table(path, &mut file)?;
    ids.iter()
        .map(|&i| {
            if i + 1 >= offsets.len() {
                return Err(corrupt(
                    path,
                    format!("no thumbnail {i} (holds {})", offsets.len() - 1),
                ));
            }
            let mut png = vec![0u8; (offsets[i + 1] - offsets[i]) as usize];
            file.seek(SeekFrom::Start(base + offsets[i])).map_err(io)?;
            file.read_exact(&mut png).map_err(io)?;
            Ok(png)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_round_trip_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(THUMBS_FILE);
        let mut img = RgbImage::from_pixel(448, 448, image::Rgb([255, 255, 255]));
        for x in 100..300 {
            img.put_pixel(x, 200, image::Rgb([0, 0, 0]));
        }
        let t = thumbnail(&img);
        let decoded = image::load_from_memory(&t).unwrap().to_luma8();
        assert_eq!(decoded.dimensions(), (THUMB_SIZE, THUMB_SIZE));
        assert!(decoded.pixels().any(|px| px[0] == 0), "the line survives");
        let thumbs = vec![t.clone(), vec![1, 2, 3], Vec::new()];
        write_thumbs(&p, &thumbs).unwrap();
        assert_eq!(read_thumbs(&p).unwrap(), thumbs);
        assert_eq!(read_some(&p, &[2, 0]).unwrap(), vec![Vec::new(), t]);
        assert!(read_some(&p, &[3])
            .unwrap_err()
            .to_string()
            .contains("no thumbnail 3"));
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        let e = read_thumbs(&p).unwrap_err().to_string();
        assert!(e.contains("offset table"), "{e}");
        std::fs::write(&p, b"short").unwrap();
        assert!(read_thumbs(&p).unwrap_err().to_string().contains("header"));
    }
}
