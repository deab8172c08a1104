//! Image encoders: one trait ([`ImageEncoder`]) so the index builder, the retriever and the
//! evaluation do not care which model turns an image into a vector.
//!
//! Implementations: [`PixelEncoder`], the pixel-space baseline, [`ClipEncoder`], a CLIP
//! checkpoint folder (a pretrained Hugging Face CLIP or our trained small CLIP),
//! [`GradientEncoder`], edge maps and oriented-gradient histograms, and [`CombinedEncoder`],
//! several of them side by side.

mod clip;
mod combined;
mod gradient;
mod pixel;

use std::path::{Path, PathBuf};

use seeded::Fnv1a64;

pub use clip::ClipEncoder;
pub use combined::CombinedEncoder;
pub use gradient::{GradientEncoder, EDGES_DEFAULT_SIDE, HOG_DEFAULT_SIDE};
pub use pixel::{ink_thumbnail, PixelEncoder, PIXEL_DEFAULT_SIDE};

/// Errors of choosing an encoder, reading a query image or embedding it.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// An encoder spec that is neither `pixel[-N]`, `edges[-N]`, `hog[-N]`, an existing path
    /// nor a `+` join.
    #[error("unknown encoder `{0}`: expected `pixel`, `pixel-N` (N = 8..128), `edges[-N]`, `hog[-N]` (N = 4..64), a CLIP checkpoint folder, or several joined by `+`")]
    UnknownSpec(String),
    /// A CLIP checkpoint folder could not be loaded.
    #[error(transparent)]
    Clip(#[from] Box<crate::clip::ClipError>),
    /// An index names a CLIP checkpoint that is no longer where it was built from.
    #[error("the index was built with the CLIP checkpoint {}, which is missing; pass --encoder with its new location", .0.display())]
    MissingCheckpoint(PathBuf),
    /// The model failed on a batch.
    #[error("the encoder failed: {0}")]
    Model(String),
    /// The image file could not be read from disk.
    #[error("{}: cannot read image: {source}", path.display())]
    ReadImage {
        /// The image file.
        path: PathBuf,
        /// The io error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a decodable PNG/JPEG.
    #[error("{}: not a readable PNG/JPEG image: {source}", path.display())]
    DecodeImage {
        /// The image file.
        path: PathBuf,
        /// What the decoder said.
        #[source]
        source: image::ImageError,
    },
    /// The image is uniform (no part drawn), so it has no direction to compare by.
    #[error("the image is blank (one uniform colour): nothing to embed")]
    Blank,
    /// An image with zero width or height.
    #[error("the image is empty ({width}x{height})")]
    Empty {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// The identity of an encoder as written in an index manifest, so an index is never searched
/// with vectors from another model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EncoderIdentity {
    /// Short name, e.g. `pixel-32`, `clip:<checkpoint folder>`, `pixel-32+clip:<folder>`.
    pub id: String,
    /// The settings that shape the vectors (JSON), for humans and for rebuilding the encoder.
    pub config: serde_json::Value,
    /// FNV-1a 64 hex of the id + config (a CLIP's config holds its weights' hash): equal hashes,
    /// equal vectors.
    pub hash: String,
    /// Vector length.
    pub dims: usize,
}

impl EncoderIdentity {
    /// The identity of a hand-written encoder whose vectors depend only on `id` and
    /// `config`: the hash is FNV-1a 64 over both.
    pub fn from_config(id: String, config: serde_json::Value, dims: usize) -> Self {
        let mut h = Fnv1a64::new();
        h.update_str(&id);
        h.update_str(&config.to_string());
        EncoderIdentity {
            id,
            config,
            hash: format!("{:016x}", h.finish()),
            dims,
        }
    }
}

/// Turns RGB images into L2-normalised vectors whose dot product is the cosine similarity.
pub trait ImageEncoder: Send + Sync {
    /// The identity written into manifests and checked when an index is loaded.
    fn identity(&self) -> EncoderIdentity;

    /// Vector length.
    fn dims(&self) -> usize;

    /// Embeds one image of any size (the encoder resizes); the result has norm ~1
    /// ([`normalise_unit`]).
    fn encode(&self, image: &image::RgbImage) -> Result<Vec<f32>, EncoderError>;

    /// Embeds a batch, one result per image (a bad image fails alone); the default runs
    /// [`ImageEncoder::encode`] on all cores, model encoders override it with real batching.
    fn encode_batch(&self, images: &[image::RgbImage]) -> Vec<Result<Vec<f32>, EncoderError>> {
        parallel_map(images, |img| self.encode(img))
    }
}

/// Maps `f` over `items` on all cores with scoped threads, keeping order (no thread pool crate
/// needed for this embarrassingly parallel, CPU-bound work).
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().max(1));
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("encoder threads do not panic"))
            .collect()
    })
}

/// Builds the encoder named on the command line: `pixel` / `pixel-N`, `edges` / `hog` (`-N`),
/// a CLIP checkpoint folder (on the GPU in a `cuda` build that finds one, else the CPU), or
/// several of these joined by `+` ([`CombinedEncoder`]).
pub fn encoder_from_spec(spec: &str) -> Result<Box<dyn ImageEncoder>, EncoderError> {
    let s = spec.trim();
    if s.contains('+') && !Path::new(s).exists() {
        let parts = s
            .split('+')
            .map(encoder_from_spec)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Box::new(CombinedEncoder::new(parts)));
    }
    // Hand-written encoders: `name` at its default side, or `name-N` with N in range.
    type Make = fn(u32) -> Box<dyn ImageEncoder>;
    let named: [(&str, u32, std::ops::RangeInclusive<u32>, Make); 3] = [
        ("pixel", PIXEL_DEFAULT_SIDE, 8..=128, |n| {
            Box::new(PixelEncoder::new(n))
        }),
        ("edges", EDGES_DEFAULT_SIDE, 4..=64, |n| {
            Box::new(GradientEncoder::edges(n))
        }),
        ("hog", HOG_DEFAULT_SIDE, 4..=64, |n| {
            Box::new(GradientEncoder::hog(n))
        }),
    ];
    for (name, default_side, sides, make) in named {
        if s == name {
            return Ok(make(default_side));
        }
        if let Some(n) = s.strip_prefix(name).and_then(|r| r.strip_prefix('-')) {
            return match n.parse::<u32>() {
                Ok(side) if sides.contains(&side) => Ok(make(side)),
                _ => Err(EncoderError::UnknownSpec(spec.to_string())),
            };
        }
    }
    let path = Path::new(s);
    if path.exists() {
        let enc = ClipEncoder::load(path, crate::clip::preferred_device()).map_err(Box::new)?;
        return Ok(Box::new(enc));
    }
    Err(EncoderError::UnknownSpec(spec.to_string()))
}

/// Rebuilds the encoder a manifest names (a CLIP index remembers its checkpoint folder), so
/// `rag search` needs no `--encoder` flag.
pub fn encoder_from_identity(
    identity: &EncoderIdentity,
) -> Result<Box<dyn ImageEncoder>, EncoderError> {
    if let Some(parts) = CombinedEncoder::part_identities(identity) {
        let parts = parts
            .iter()
            .map(encoder_from_identity)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Box::new(CombinedEncoder::new(parts)));
    }
    if identity.config.get("kind").and_then(|k| k.as_str()) == Some("clip") {
        let path = PathBuf::from(identity.config["path"].as_str().unwrap_or_default());
        if !path.join(crate::clip::checkpoint::CONFIG_FILE).is_file() {
            return Err(EncoderError::MissingCheckpoint(path));
        }
        return encoder_from_spec(&path.to_string_lossy());
    }
    encoder_from_spec(&identity.id)
}

/// Reads a query image from disk as RGB: grey and RGBA inputs are converted (alpha composited
/// over white, the GenCAD background) and any size is accepted; unreadable files are errors.
pub fn load_image(path: &Path) -> Result<image::RgbImage, EncoderError> {
    let bytes = std::fs::read(path).map_err(|source| EncoderError::ReadImage {
        path: path.to_path_buf(),
        source,
    })?;
    let img = image::load_from_memory(&bytes).map_err(|source| EncoderError::DecodeImage {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(to_rgb_on_white(&img))
}

/// Converts any decoded image to RGB8, compositing transparent pixels over white.
pub fn to_rgb_on_white(img: &image::DynamicImage) -> image::RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba8();
    let mut out = image::RgbImage::new(rgba.width(), rgba.height());
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = f32::from(p.0[3]) / 255.0;
        for c in 0..3 {
            o.0[c] = (f32::from(p.0[c]) * a + 255.0 * (1.0 - a)).round() as u8;
        }
    }
    out
}

/// Shrink applied after L2 normalisation: hnsw_rs's SIMD dot distance asserts dot <= 1 + 2e-6,
/// which f32 rounding over ~1000 terms can exceed for a vector with itself.
pub const UNIT_SHRINK: f32 = 1.0 - 1e-5;

/// Scales `v` to norm [`UNIT_SHRINK`] (norm computed in f64); false when `v` is ~zero and
/// has no direction.
pub fn normalise_unit(v: &mut [f32]) -> bool {
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm.is_nan() || norm <= 1e-9 {
        return false;
    }
    let k = (f64::from(UNIT_SHRINK) / norm) as f32;
    v.iter_mut().for_each(|x| *x *= k);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_folders_without_a_checkpoint_are_refused_clearly() {
        assert_eq!(
            encoder_from_spec("pixel").unwrap().identity().id,
            "pixel-32"
        );
        assert_eq!(encoder_from_spec("pixel-16").unwrap().dims(), 256);
        assert_eq!(
            encoder_from_spec("edges").unwrap().identity().id,
            "edges-32"
        );
        assert_eq!(encoder_from_spec("hog").unwrap().dims(), 1024);
        assert_eq!(encoder_from_spec("hog-8").unwrap().dims(), 256);
        for bad in ["hog-2", "edges-x", "hogs"] {
            assert!(
                matches!(encoder_from_spec(bad), Err(EncoderError::UnknownSpec(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            encoder_from_spec("pixel-2"),
            Err(EncoderError::UnknownSpec(_))
        ));
        assert!(matches!(
            encoder_from_spec("no-such-thing"),
            Err(EncoderError::UnknownSpec(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let err = encoder_from_spec(dir.path().to_str().unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    fn rgba_is_composited_over_white_and_grey_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let mut rgba = image::RgbaImage::from_pixel(10, 10, image::Rgba([0, 0, 0, 0]));
        rgba.put_pixel(5, 5, image::Rgba([10, 20, 30, 255]));
        rgba.save(&p).unwrap();
        let img = load_image(&p).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(5, 5).0, [10, 20, 30]);
        let g = dir.path().join("g.png");
        image::GrayImage::from_pixel(7, 5, image::Luma([90]))
            .save(&g)
            .unwrap();
        assert_eq!(load_image(&g).unwrap().get_pixel(1, 1).0, [90, 90, 90]);
    }

    #[test]
    fn unreadable_images_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let e = load_image(&missing).unwrap_err().to_string();
        assert!(
            e.contains("missing.png") && e.contains("cannot read"),
            "{e}"
        );
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"not an image").unwrap();
        let e = load_image(&junk).unwrap_err().to_string();
        assert!(
            e.contains("junk.png") && e.contains("not a readable"),
            "{e}"
        );
    }

    #[test]
    fn parallel_map_keeps_order() {
        let v: Vec<usize> = (0..101).collect();
        assert_eq!(
            parallel_map(&v, |x| x * 2),
            (0..101).map(|x| x * 2).collect::<Vec<_>>()
        );
        assert!(parallel_map(&Vec::<usize>::new(), |x| *x).is_empty());
    }
}
