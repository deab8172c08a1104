//! A native renderer of the GenCAD dialect, with no Python: a program is a CSG of extruded
//! profiles, so each pixel's ray is intersected exactly with every prism and the results
//! combined by union and cut along the ray; the first material entry gives the face and its
//! normal. The picture follows the GenCAD style of `evaluator::render` (camera, bounding-box
//! framing, headlight shading, 1-px feature edges, no seams), so a candidate can be compared
//! with a query image without a CadQuery run.
//!
//! Where CadQuery might build something other than the even-odd prism (self-intersecting or
//! touching loops, zero thickness, odd planes, a cut that empties the part), `compile` or
//! `render` says `Unsure` and the caller goes to CadQuery instead.

pub mod scene;
pub mod trace;

use dialect::Program;
use evaluator::render::{box_corners, shade, shade_table, Frame, LUT_SIZE, RIGHT, UP, VIEW};
use image::{Rgb, RgbImage};

pub use scene::{compile, Scene, Unsure};
use scene::{dot, SurfaceKind};
use trace::{trace, Scratch, NO_SURFACE};

/// Largest image side the native renderer draws.
pub const MAX_SIZE: u32 = 4096;
/// Most rays per axis of the grids that measure the part's box when a cut may have shrunk it.
const BOX_GRID: usize = 64;
/// Rays of that grid per pixel of image side: a grid finer than the image buys nothing.
const BOX_GRID_PER_PX: f64 = 0.25;
/// A cylinder boundary closer than this to its silhouette (in pixels) is an outline, not a
/// feature edge: the mesh renderer draws no silhouettes.
const SILHOUETTE_PX: f64 = 1.0;

/// Why the native renderer drew nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NativeError {
    #[error("not a program of the dialect: {0}")]
    Parse(#[from] dialect::ParseError),
    #[error("unsure, left to CadQuery: {0}")]
    Unsure(#[from] Unsure),
    #[error("image size must be between 1 and {MAX_SIZE} pixels, got {0}")]
    BadSize(u32),
    #[error("the part has no material")]
    Empty,
}

impl NativeError {
    /// Short machine-readable name of the outcome, for tables.
    pub fn kind(&self) -> &'static str {
        match self {
            NativeError::Parse(_) => "not_dialect",
            NativeError::Unsure(_) => "unsure",
            NativeError::BadSize(_) => "bad_size",
            NativeError::Empty => "empty",
        }
    }
}

/// A native render: the picture and, per pixel, the surface seen (for edge and fit scores).
#[derive(Debug, Clone)]
pub struct Render {
    pub image: RgbImage,
    /// Surface id per pixel, row-major; `u32::MAX` for background.
    pub surfaces: Vec<u32>,
}

fn add(a: [f64; 3], b: [f64; 3], k: f64) -> [f64; 3] {
    [a[0] + k * b[0], a[1] + k * b[1], a[2] + k * b[2]]
}

/// The part's axis-aligned box: the union of the prisms' boxes, narrowed by rays along each
/// axis when a cut may have removed an extreme.
pub fn bounding_box(scene: &Scene, size: u32) -> Result<([f64; 3], [f64; 3]), NativeError> {
    let grid = ((f64::from(size) * BOX_GRID_PER_PX) as usize).clamp(16, BOX_GRID);
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for p in scene.prisms.iter().filter(|p| p.op != dialect::Op::Cut) {
        for k in 0..3 {
            lo[k] = lo[k].min(p.lo[k]);
            hi[k] = hi[k].max(p.hi[k]);
        }
    }
    let cuts: Vec<_> = scene
        .prisms
        .iter()
        .filter(|p| p.op == dialect::Op::Cut)
        .collect();
    let mut scratch = Scratch::default();
    let (mut out_lo, mut out_hi) = (lo, hi);
    for axis in 0..3 {
        // Only an extreme that some cut reaches can have moved.
        let lo_cut = cuts.iter().any(|p| p.lo[axis] <= lo[axis] + 1e-9);
        let hi_cut = cuts.iter().any(|p| p.hi[axis] >= hi[axis] - 1e-9);
        if !(lo_cut || hi_cut) {
            continue;
        }
        let (i, j) = ((axis + 1) % 3, (axis + 2) % 3);
        let mut dir = [0.0; 3];
        dir[axis] = 1.0;
        let (mut found_lo, mut found_hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for gi in 0..grid {
            for gj in 0..grid {
                let mut o = [0.0; 3];
                o[axis] = lo[axis] - 1.0;
                o[i] = lo[i] + (hi[i] - lo[i]) * (gi as f64 + 0.5) / grid as f64;
                o[j] = lo[j] + (hi[j] - lo[j]) * (gj as f64 + 0.5) / grid as f64;
                let ivs = trace(scene, o, dir, |_| false, &mut scratch);
                if let (Some(first), Some(last)) = (ivs.first(), ivs.last()) {
                    found_lo = found_lo.min(o[axis] + first.enter.t);
                    found_hi = found_hi.max(o[axis] + last.exit.t);
                }
            }
        }
        if found_lo > found_hi {
            return Err(NativeError::Empty);
        }
        if lo_cut {
            out_lo[axis] = found_lo;
        }
        if hi_cut {
            out_hi[axis] = found_hi;
        }
    }
    Ok((out_lo, out_hi))
}

/// Parse and draw a program of the dialect, `size` x `size`.
pub fn render_code(code: &str, size: u32) -> Result<Render, NativeError> {
    let program = dialect::parse(code)?;
    render(&program, size)
}

/// Draw a parsed program, `size` x `size`, in the GenCAD style.
pub fn render(program: &Program, size: u32) -> Result<Render, NativeError> {
    if size == 0 || size > MAX_SIZE {
        return Err(NativeError::BadSize(size));
    }
    let scene = compile(program)?;
    render_scene(&scene, size)
}

/// Draw a compiled scene, `size` x `size`.
pub fn render_scene(scene: &Scene, size: u32) -> Result<Render, NativeError> {
    draw(scene, size, true)
}

/// Draw a compiled scene's shaded faces only, without the edge pass: the cheaper picture a
/// fitted search compares at low resolution, where 1-px edges are not resolved.
pub fn render_faces(scene: &Scene, size: u32) -> Result<Render, NativeError> {
    draw(scene, size, false)
}

fn draw(scene: &Scene, size: u32, with_edges: bool) -> Result<Render, NativeError> {
    if size == 0 || size > MAX_SIZE {
        return Err(NativeError::BadSize(size));
    }
    let (lo, hi) = bounding_box(scene, size)?;
    let frame = Frame::fit_box(lo, hi, size).map_err(|_| NativeError::Empty)?;
    let n = size as usize;
    // Each prism's pixel rectangle, for culling.
    let rects: Vec<[f64; 4]> = scene
        .prisms
        .iter()
        .map(|p| {
            let mut r = [
                f64::INFINITY,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::NEG_INFINITY,
            ];
            for c in box_corners(p.lo, p.hi) {
                let q = frame.project(&c);
                r = [
                    r[0].min(q[0]),
                    r[1].min(q[1]),
                    r[2].max(q[0]),
                    r[3].max(q[1]),
                ];
            }
            [r[0] - 1.0, r[1] - 1.0, r[2] + 1.0, r[3] + 1.0]
        })
        .collect();
    // How many pixels one model unit across the view (in a sketch plane, perpendicular to
    // the ray's shadow on it) covers: converts a cylinder hit's `inside` to pixels.
    let px_per_unit: Vec<f64> = scene
        .prisms
        .iter()
        .map(|p| {
            let b = [dot(VIEW, p.axes[0]), dot(VIEW, p.axes[1])];
            let len = (b[0] * b[0] + b[1] * b[1]).sqrt();
            if len < 1e-12 {
                return frame.s;
            }
            let perp = [-b[1] / len, b[0] / len];
            let w = p.direction(perp);
            frame.s * (dot(w, RIGHT).powi(2) + dot(w, UP).powi(2)).sqrt()
        })
        .collect();
    let dir = [-VIEW[0], -VIEW[1], -VIEW[2]];
    // Rays start well in front of the part.
    let lift = 2.0
        * (0..3)
            .map(|k| lo[k].abs().max(hi[k].abs()))
            .fold(1.0, f64::max);
    let cast = |px: f64, py: f64, scratch: &mut Scratch| -> Option<trace::Hit> {
        let r = (px - frame.centre) / frame.s + frame.mr;
        let u = -(py - frame.centre) / frame.s + frame.mu;
        let origin = add(add(add([0.0; 3], RIGHT, r), UP, u), VIEW, lift);
        let cull = |i: usize| {
            let q = rects[i];
            px < q[0] || px > q[2] || py < q[1] || py > q[3]
        };
        trace(scene, origin, dir, cull, scratch)
            .first()
            .map(|iv| iv.enter)
    };
    let mut surf = vec![NO_SURFACE; n * n];
    let mut depth = vec![f64::INFINITY; n * n];
    let mut silhouette = vec![false; n * n];
    let mut nv = vec![0.0f64; n * n];
    let mut scratch = Scratch::default();
    for y in 0..n {
        for x in 0..n {
            if let Some(h) = cast(x as f64 + 0.5, y as f64 + 0.5, &mut scratch) {
                let i = y * n + x;
                surf[i] = h.surface;
                depth[i] = h.t;
                nv[i] = dot(h.normal, VIEW).abs();
                if scene.surfaces.get(h.surface as usize) == Some(&SurfaceKind::Cylinder) {
                    silhouette[i] = h.inside * px_per_unit[h.prism as usize] < SILHOUETTE_PX;
                }
            }
        }
    }
    let steps = scene.prisms.len().min(64);
    if let Some(k) = (1..steps).find(|&k| {
        scene.prisms[k].op == dialect::Op::Cut
            && scratch.alive & (1 << k) == 0
            && scratch.alive & (1 << (k - 1)) != 0
            && scratch.alive & (1 << (steps - 1)) != 0
    }) {
        return Err(Unsure::CutRemovesAll(k).into());
    }
    // Edges: where neighbours see different surfaces, unless the nearer side is a cylinder
    // at its silhouette. As the mesh renderer draws a line, the edge pixel is the one that
    // holds the boundary.
    let mut edge = vec![false; n * n];
    for y in (0..n).filter(|_| with_edges) {
        for x in 0..n {
            let i = y * n + x;
            for (j, dx, dy) in [
                (x + 1 < n).then(|| (i + 1, 1.0, 0.0)),
                (y + 1 < n).then(|| (i + n, 0.0, 1.0)),
            ]
            .into_iter()
            .flatten()
            {
                if surf[i] == surf[j] {
                    continue;
                }
                let front = if depth[i] <= depth[j] { i } else { j };
                if silhouette[front] {
                    continue;
                }
                // One ray on the shared pixel border says which side holds the boundary.
                let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
                let s = cast(cx + 0.5 * dx, cy + 0.5 * dy, &mut scratch)
                    .map_or(NO_SURFACE, |h| h.surface);
                edge[if s == surf[i] { j } else { i }] = true;
            }
        }
    }
    let table = shade_table();
    let mut flat: Vec<Option<[u8; 3]>> = vec![None; scene.surfaces.len()];
    let mut image = RgbImage::from_pixel(size, size, Rgb([255, 255, 255]));
    for (i, px) in image.pixels_mut().enumerate() {
        if edge[i] {
            *px = Rgb([0, 0, 0]);
        } else if surf[i] != NO_SURFACE {
            let s = surf[i] as usize;
            let colour = match scene.surfaces.get(s) {
                Some(SurfaceKind::Plane) => *flat[s].get_or_insert_with(|| shade(nv[i])),
                _ => table[((nv[i].min(1.0)) * (LUT_SIZE - 1) as f64).round() as usize],
            };
            *px = Rgb(colour);
        }
    }
    Ok(Render {
        image,
        surfaces: surf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use evaluator::reference;
    use evaluator::style::compare;

    fn cube(extra: &str) -> String {
        format!(
            "import cadquery as cq\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.5, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()\n{extra}solid0=wp_sketch0.add(loop0){}.extrude(1.0)\nsolid=solid0\n",
            if extra.is_empty() { "" } else { ".add(loop1)" }
        )
    }

    #[test]
    fn a_cube_is_framed_and_shaded_in_the_gencad_style() {
        let r = render_code(&cube(""), 448).unwrap();
        let fg: Vec<(u32, u32)> = r
            .image
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0 != [255, 255, 255])
            .map(|(x, y, _)| (x, y))
            .collect();
        let (ys, xs): (Vec<u32>, Vec<u32>) = (
            fg.iter().map(|p| p.1).collect(),
            fg.iter().map(|p| p.0).collect(),
        );
        // A unit cube's box projects 2/sqrt(3)*... tall; the framing fills 2/3 of 448 px.
        let height = ys.iter().max().unwrap() - ys.iter().min().unwrap() + 1;
        assert!((298..=300).contains(&height), "height {height}");
        let width = xs.iter().max().unwrap() - xs.iter().min().unwrap() + 1;
        assert!((257..=260).contains(&width), "width {width}");
        // All three visible faces are at |n.v| = 1/sqrt(3): the dataset's (141, 141, 138).
        let grey = r.image.pixels().filter(|p| p.0 == [141, 141, 138]).count();
        let black = r.image.pixels().filter(|p| p.0 == [0, 0, 0]).count();
        assert_eq!(grey + black, fg.len());
        // Nine visible edges, each roughly 150 px long: about 1 350 edge pixels.
        assert!((1100..1700).contains(&black), "{black} edge pixels");
        // Edge pixels may lie just outside the faces (where the outline crosses the pixel),
        // face pixels never outside the foreground.
        let faces = r.surfaces.iter().filter(|s| **s != u32::MAX).count();
        assert!(faces <= fg.len() && faces + black >= fg.len());
    }

    #[test]
    fn matches_the_real_reference_images() {
        for s in reference::samples() {
            let real = image::load_from_memory(reference::image_png(&s.deepcad_id).unwrap())
                .unwrap()
                .to_rgb8();
            match render_code(&s.cadquery, 448) {
                Ok(r) => {
                    let c = compare(&real, &r.image);
                    assert!(
                        c.mask_iou >= 0.99,
                        "{}: mask IoU {}",
                        s.deepcad_id,
                        c.mask_iou
                    );
                    assert!(c.edge_precision >= 0.9, "{}: {c:?}", s.deepcad_id);
                }
                // The two samples whose loops touch (they fail OCC's validity check too).
                Err(NativeError::Unsure(Unsure::LoopsMeet { .. })) => {
                    assert!(["00387732", "00966577"].contains(&s.deepcad_id.as_str()))
                }
                Err(e) => panic!("{}: {e}", s.deepcad_id),
            }
        }
    }

    #[test]
    fn holes_and_cuts_show_what_is_behind_them() {
        let hole = "loop1=wp_sketch0.moveTo(0.5, 0.5).circle(0.25)\n";
        let plate = |extra: &str| cube(extra).replace("extrude(1.0)", "extrude(0.1)");
        let with_hole = render_code(&plate(hole), 128).unwrap();
        let plain = render_code(&plate(""), 128).unwrap();
        let white = |r: &Render| r.image.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        assert!(
            white(&with_hole) > white(&plain),
            "a through hole shows the background"
        );
        // The same hole as a cut of a cylinder flush with both faces.
        let cut = plate("").replace(
            "solid=solid0\n",
            "solid=solid0\nwp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(0.0, 0.0, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop1=wp_sketch1.moveTo(0.0, 0.0).circle(0.25)\nsolid1=wp_sketch1.add(loop1).extrude(0.1)\nsolid=solid.cut(solid1)\n",
        );
        let as_cut = render_code(&cut, 128).unwrap();
        let c = compare(&with_hole.image, &as_cut.image);
        assert!(c.mask_iou > 0.999 && c.median_abs_diff == 0.0, "{c:?}");
    }

    #[test]
    fn hostile_programs_end_in_a_clear_status() {
        let unsure = |code: &str| match render_code(code, 64) {
            Err(NativeError::Unsure(u)) => u,
            other => panic!("expected unsure, got {other:?}"),
        };
        let base = cube("");
        assert_eq!(
            unsure(&base.replace("extrude(1.0)", "extrude(1e9)")),
            Unsure::OutOfRange
        );
        assert_eq!(
            unsure(&base.replace("extrude(1.0)", "extrude(0.0)")),
            Unsure::Flat(0)
        );
        let parallel = base.replace("cq.Vector(1.0, 0.0, 0.0)", "cq.Vector(0.0, 0.0, 2.0)");
        assert_eq!(unsure(&parallel), Unsure::BadPlane(0));
        let bow = base.replace(
            "lineTo(1.0, 1.0).lineTo(0.0, 1.0)",
            "lineTo(0.0, 1.0).lineTo(1.0, 1.0)",
        );
        assert!(matches!(unsure(&bow), Unsure::SelfIntersecting { .. }));
        let flat_arc = base.replace(
            ".lineTo(1.0, 1.0)",
            ".threePointArc((1.0, 0.5), (1.0, 1.0))",
        );
        assert!(matches!(unsure(&flat_arc), Unsure::Degenerate { .. }));
        let twice = base.replace(".lineTo(0.0, 1.0)", ".lineTo(1.0, 1.0).lineTo(0.0, 1.0)");
        assert!(matches!(unsure(&twice), Unsure::Degenerate { .. }));
        // NaN is not a Python literal, but a parameter search can produce one.
        let mut p = dialect::parse(&base).unwrap();
        *p.numbers_mut()[0].1 = f64::NAN;
        assert!(matches!(
            render(&p, 64),
            Err(NativeError::Unsure(Unsure::OutOfRange))
        ));
        // Ten thousand loops are refused quickly, not traced.
        let mut many = String::new();
        let mut adds = String::new();
        for k in 1..=10_000 {
            many.push_str(&format!(
                "loop{k}=wp_sketch0.moveTo(0.5, 0.5).circle(0.{k})\n"
            ));
            adds.push_str(&format!(".add(loop{k})"));
        }
        let huge = base.replace(
            "solid0=wp_sketch0.add(loop0)",
            &format!("{many}solid0=wp_sketch0.add(loop0){adds}"),
        );
        let start = std::time::Instant::now();
        assert_eq!(unsure(&huge), Unsure::TooComplex);
        assert!(start.elapsed().as_secs_f64() < 5.0);
        assert_eq!(render_code(&base, 0).unwrap_err(), NativeError::BadSize(0));
        assert!(matches!(
            render_code("import os\n", 64),
            Err(NativeError::Parse(_))
        ));
        let all_cut = base.replace(
            "solid=solid0\n",
            "solid=solid0\nwp_sketch1 = cq.Workplane(cq.Plane(cq.Vector(-1.0, -1.0, -1.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop1=wp_sketch1.moveTo(0.0, 0.0).lineTo(3.0, 0.0).lineTo(3.0, 3.0).lineTo(0.0, 3.0).close()\nsolid1=wp_sketch1.add(loop1).extrude(3.0)\nsolid=solid.cut(solid1)\n",
        );
        assert_eq!(render_code(&all_cut, 64).unwrap_err(), NativeError::Empty);
    }
}
