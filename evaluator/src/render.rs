//! CPU renderer reproducing the GenCAD-Code image style (docs/gencad.md, "Render
//! style"), so that parts we generate or retrieve can be drawn exactly like the dataset's
//! query images.
//!
//! Orthographic view from (1,-1,1), framing from the part's bounding box, white background,
//! headlight shading (flat on planar faces, per-pixel smooth on curved ones, as the real
//! images show), 1-px black B-rep edges with hidden parts removed against the depth buffer,
//! no anti-aliasing. Faces go through an edge-function rasteriser limited to each row's
//! span into a depth and triangle-id buffer; shading is resolved once per visible pixel.
//!
//! Measured on the reference images (evaluator/src/reference): an edge covers, along its
//! major axis, every pixel whose centre lies within its extent, in the row (column) where
//! the edge crosses that centre line; it is drawn over faces and over the background alike
//! (no silhouette lines: a curved face's outline is just its shading). The real images do
//! draw seams, but where the original kernel put them (the circle's default gp_Ax2 x
//! direction, e.g. -Z for a sketch normal of -Y), while CadQuery puts them on the sketch
//! plane's x axis; drawing ours would put lines where the real images have none, so seams
//! are skipped (docs/gencad.md).

use image::{Rgb, RgbImage};

use crate::protocol::{Edges, Mesh};

/// Image side of the GenCAD-Code renders, in pixels; the framing constants refer to it.
pub const GENCAD_SIZE: u32 = 448;
/// Direction towards the camera (orthographic): the view looks along -VIEW.
pub const VIEW: [f64; 3] = [
    0.577_350_269_189_625_8,
    -0.577_350_269_189_625_8,
    0.577_350_269_189_625_8,
];
/// Screen right, (1,1,0)/sqrt(2).
pub const RIGHT: [f64; 3] = [0.707_106_781_186_547_5, 0.707_106_781_186_547_5, 0.0];
/// Screen up, (-1,1,2)/sqrt(6).
pub const UP: [f64; 3] = [
    -0.408_248_290_463_863,
    0.408_248_290_463_863,
    0.816_496_580_927_726,
];
/// Projected width, in pixels of a 448-px image, that a wide part's bounding box fills:
/// 8/9 of the image, keeping the first fit's 4:3 width-to-height ratio (its fit gave 398).
/// Not checked on the reference images: all eight are framed by their height.
pub const FIT_WIDTH: f64 = 448.0 * 8.0 / 9.0;
/// Projected height, in pixels of a 448-px image, that a tall part's bounding box fills:
/// 2/3 of the image. The first mask fit (docs/gencad.md) gave 298.5; matching edge pixels exactly on the
/// reference images pins it to 298.65..298.68 (298.5 leaves one of them at IoU 0.988).
pub const FIT_HEIGHT: f64 = 448.0 * 2.0 / 3.0;

/// Largest image side accepted, so that a bad argument cannot ask for gigabytes.
pub const MAX_SIZE: u32 = 8192;

/// Curved-face normals are averaged only over facets within this angle of each other (30
/// degrees; the worker's 0.1 rad angular deflection keeps neighbouring facets of one face
/// far closer), so meshes that share vertices across sharp edges stay flat-shaded.
const CREASE_COS: f64 = 0.866_025_403_784_438_6;
/// A corner normal this close to its facet's normal counts as flat (planar faces).
const FLAT_COS: f64 = 1.0 - 1e-9;
/// Entries of the |n.v| -> colour table (`shade_table`) used for smooth shading.
pub const LUT_SIZE: usize = 4096;
/// Depth slack, in pixels, of the edge visibility test, on top of float32 rounding.
const EDGE_DEPTH_EPS: f64 = 0.02;
/// Slack of the inside test in the triangle rasteriser (px^2), so shared edges leave no
/// cracks whatever the rounding.
const INSIDE_EPS: f64 = 1e-7;
/// Marks a pixel that no triangle covers.
const NO_TRIANGLE: u32 = u32::MAX;

/// Why a part could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// The requested image side is 0 or above MAX_SIZE.
    #[error("image size must be between 1 and {MAX_SIZE} pixels, got {0}")]
    BadSize(u32),
    /// Nothing to draw: the mesh has no triangles.
    #[error("the mesh has no triangles")]
    EmptyMesh,
    /// More triangles than the renderer's 32-bit triangle ids can tell apart.
    #[error("the mesh has {0} triangles, more than the renderer supports")]
    TooManyTriangles(usize),
    /// A vertex has a NaN or infinite coordinate.
    #[error("mesh vertex {0} has a non-finite coordinate")]
    NonFiniteVertex(usize),
    /// A triangle names a vertex the mesh does not have.
    #[error("triangle {triangle} refers to vertex {index}, but the mesh has {count} vertices")]
    BadIndex {
        /// Index of the offending triangle.
        triangle: usize,
        /// The out-of-range vertex index it holds.
        index: u32,
        /// Number of vertices in the mesh.
        count: usize,
    },
    /// An edge polyline has a NaN or infinite point.
    #[error("edge polyline {0} has a non-finite point")]
    NonFiniteEdge(usize),
    /// The bounding box projects to a point (or overflows), so no scale fits it.
    #[error("the part's bounding box projects to a point or is too large to frame")]
    Degenerate,
}

/// Colour of a face whose unit normal makes |n.v| = `nv` with the view direction.
///
/// A headlight in linear light, sRGB-encoded: R = G = srgb(0.0612 + 0.355 |n.v|),
/// B = srgb(0.0508 + 0.3544 |n.v|). This refines the gamma-2.2 fit of docs/gencad.md on the reference
/// images: it gives exactly the four flat-face colours they show, (141, 141, 138) for faces
/// along the axes, (160, 160, 157), (157, 157, 155) and (110, 110, 106) for the sloped ones
/// (gamma 2.2 gives B = 158 for the first), and more exact pixels on the reference cylinder
/// (R 89%, B 90% with exact normals, vs 89% and 87%).
pub fn shade(nv: f64) -> [u8; 3] {
    let nv = if nv.is_finite() {
        nv.abs().min(1.0)
    } else {
        0.0
    };
    let level = |linear: f64| {
        let l = linear.clamp(0.0, 1.0);
        let encoded = if l <= 0.003_130_8 {
            12.92 * l
        } else {
            1.055 * l.powf(1.0 / 2.4) - 0.055
        };
        (255.0 * encoded).round().clamp(0.0, 255.0) as u8
    };
    let rg = level(0.0612 + 0.355 * nv);
    [rg, rg, level(0.0508 + 0.3544 * nv)]
}

/// The orthographic camera and framing for one part at one image size.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// Pixels per model unit.
    pub s: f64,
    /// Centre of the projected bounding box along RIGHT and UP (model units).
    pub mr: f64,
    pub mu: f64,
    /// Image centre in continuous pixel coordinates.
    pub centre: f64,
}

fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: &[f64; 3], b: &[f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: &[f64; 3], b: &[f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn normalised(a: [f64; 3]) -> Option<[f64; 3]> {
    let n = dot(&a, &a).sqrt();
    (n > 0.0 && n.is_finite()).then(|| [a[0] / n, a[1] / n, a[2] / n])
}

impl Frame {
    /// Fit the 8 corners of the vertices' axis-aligned box into a `size`-px image.
    fn fit(vertices: &[[f64; 3]], size: u32) -> Result<Frame, RenderError> {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for v in vertices {
            for k in 0..3 {
                lo[k] = lo[k].min(v[k]);
                hi[k] = hi[k].max(v[k]);
            }
        }
        Frame::fit_box(lo, hi, size)
    }

    /// Fit the 8 corners of the axis-aligned box `lo`..`hi` into a `size`-px image: the
    /// GenCAD framing rule, for any renderer that knows the part's box.
    pub fn fit_box(lo: [f64; 3], hi: [f64; 3], size: u32) -> Result<Frame, RenderError> {
        let (mut r_lo, mut r_hi, mut u_lo, mut u_hi) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for p in box_corners(lo, hi) {
            let (r, u) = (dot(&p, &RIGHT), dot(&p, &UP));
            r_lo = r_lo.min(r);
            r_hi = r_hi.max(r);
            u_lo = u_lo.min(u);
            u_hi = u_hi.max(u);
        }
        let s = fit_scale(r_hi - r_lo, u_hi - u_lo, size);
        let (mr, mu) = (0.5 * (r_lo + r_hi), 0.5 * (u_lo + u_hi));
        if !(s.is_finite() && s > 0.0 && mr.is_finite() && mu.is_finite()) {
            return Err(RenderError::Degenerate);
        }
        Ok(Frame {
            s,
            mr,
            mu,
            centre: 0.5 * f64::from(size),
        })
    }

    /// Continuous pixel coordinates (x right, y down) and depth in pixels (larger = nearer).
    pub fn project(&self, p: &[f64; 3]) -> [f64; 3] {
        [
            self.centre + self.s * (dot(p, &RIGHT) - self.mr),
            self.centre - self.s * (dot(p, &UP) - self.mu),
            self.s * dot(p, &VIEW),
        ]
    }
}

/// The 8 corners of the axis-aligned box `lo`..`hi`.
pub fn box_corners(lo: [f64; 3], hi: [f64; 3]) -> [[f64; 3]; 8] {
    std::array::from_fn(|c| {
        [
            if c & 1 == 0 { lo[0] } else { hi[0] },
            if c & 2 == 0 { lo[1] } else { hi[1] },
            if c & 4 == 0 { lo[2] } else { hi[2] },
        ]
    })
}

/// Pixels per unit that the framing rule gives a part whose box projects to width `w` and
/// height `h` (in part units) in a `size`-px image; infinite when both are zero.
pub fn fit_scale(w: f64, h: f64, size: u32) -> f64 {
    let k = f64::from(size) / f64::from(GENCAD_SIZE);
    let by_w = if w > 0.0 {
        FIT_WIDTH * k / w
    } else {
        f64::INFINITY
    };
    let by_h = if h > 0.0 {
        FIT_HEIGHT * k / h
    } else {
        f64::INFINITY
    };
    by_w.min(by_h)
}

/// PNG bytes of a render, as the corpus stores them.
pub fn encode_png(image: RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

/// How a covered pixel gets its colour.
#[derive(Debug, Clone, Copy)]
enum Shading {
    /// Planar facet: one colour.
    Flat([u8; 3]),
    /// Curved face: the normal's components as affine functions of the pixel centre,
    /// `n_k(x, y) = a[k][0] x + a[k][1] y + a[k][2]`.
    Smooth([[f64; 3]; 3]),
}

/// What the resolve and edge passes need to know about a rasterised triangle.
#[derive(Debug, Clone, Copy)]
struct TriInfo {
    /// Depth gradient in pixels per pixel.
    dzdx: f64,
    dzdy: f64,
    shading: Shading,
}

/// Unit normal of each facet (zero for degenerate ones) and, for each corner, the
/// crease-limited, angle-weighted average of the facet normals around its vertex.
fn corner_normals(
    vertices: &[[f64; 3]],
    triangles: &[[u32; 3]],
) -> (Vec<[f64; 3]>, Vec<[[f64; 3]; 3]>) {
    let mut facet = Vec::with_capacity(triangles.len());
    let mut angles = Vec::with_capacity(triangles.len());
    for t in triangles {
        let p = t.map(|i| vertices[i as usize]);
        let n = normalised(cross(&sub(&p[1], &p[0]), &sub(&p[2], &p[0]))).unwrap_or([0.0; 3]);
        facet.push(n);
        let mut a = [0.0; 3];
        for k in 0..3 {
            let e1 = sub(&p[(k + 1) % 3], &p[k]);
            let e2 = sub(&p[(k + 2) % 3], &p[k]);
            let c = dot(&e1, &e2);
            let s = dot(&cross(&e1, &e2), &cross(&e1, &e2)).sqrt();
            a[k] = s.atan2(c);
        }
        angles.push(a);
    }
    // vertex -> incident (triangle, corner), compressed rows
    let mut start = vec![0usize; vertices.len() + 1];
    for t in triangles {
        for &i in t {
            start[i as usize + 1] += 1;
        }
    }
    for i in 0..vertices.len() {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut incident = vec![(0u32, 0u8); triangles.len() * 3];
    for (ti, t) in triangles.iter().enumerate() {
        for (k, &i) in t.iter().enumerate() {
            let slot = &mut fill[i as usize];
            incident[*slot] = (ti as u32, k as u8);
            *slot += 1;
        }
    }
    let mut corners = Vec::with_capacity(triangles.len());
    for (ti, t) in triangles.iter().enumerate() {
        let own = facet[ti];
        let mut out = [own; 3];
        for (k, &i) in t.iter().enumerate() {
            let mut sum = [0.0; 3];
            let rows = start[i as usize]..start[i as usize + 1];
            for &(tj, kj) in &incident[rows] {
                let n = facet[tj as usize];
                if dot(&n, &own) >= CREASE_COS {
                    let w = angles[tj as usize][kj as usize];
                    for c in 0..3 {
                        sum[c] += w * n[c];
                    }
                }
            }
            out[k] = normalised(sum).unwrap_or(own);
        }
        corners.push(out);
    }
    (facet, corners)
}

/// Per-triangle data plus the screen positions of its corners.
struct Setup {
    screen: [[f64; 3]; 3],
    info: TriInfo,
}

/// Screen-space setup of one triangle; None when it covers no area.
fn setup(screen: [[f64; 3]; 3], facet: [f64; 3], corners: [[f64; 3]; 3]) -> Option<Setup> {
    let [p0, p1, p2] = screen;
    let area = (p1[0] - p0[0]) * (p2[1] - p0[1]) - (p2[0] - p0[0]) * (p1[1] - p0[1]);
    if area.abs() < 1e-12 || !area.is_finite() {
        return None;
    }
    // barycentric l1 = (p - p0) x (p2 - p0) / area, l2 = (p1 - p0) x (p - p0) / area,
    // as affine functions [a, b, c] of (x, y)
    let (e1x, e1y) = (p1[0] - p0[0], p1[1] - p0[1]);
    let (e2x, e2y) = (p2[0] - p0[0], p2[1] - p0[1]);
    let l1 = [e2y / area, -e2x / area, (e2x * p0[1] - e2y * p0[0]) / area];
    let l2 = [-e1y / area, e1x / area, (e1y * p0[0] - e1x * p0[1]) / area];
    let interp = |v0: f64, v1: f64, v2: f64| -> [f64; 3] {
        [
            l1[0] * (v1 - v0) + l2[0] * (v2 - v0),
            l1[1] * (v1 - v0) + l2[1] * (v2 - v0),
            l1[2] * (v1 - v0) + l2[2] * (v2 - v0) + v0,
        ]
    };
    let z = interp(p0[2], p1[2], p2[2]);
    let flat = corners.iter().all(|c| dot(c, &facet) >= FLAT_COS);
    let shading = if flat {
        Shading::Flat(shade(dot(&facet, &VIEW)))
    } else {
        let [c0, c1, c2] = corners;
        Shading::Smooth([
            interp(c0[0], c1[0], c2[0]),
            interp(c0[1], c1[1], c2[1]),
            interp(c0[2], c1[2], c2[2]),
        ])
    };
    Some(Setup {
        screen,
        info: TriInfo {
            dzdx: z[0],
            dzdy: z[1],
            shading,
        },
    })
}

/// Depth and triangle-id buffers of one render.
struct Buffers {
    size: usize,
    depth: Vec<f64>,
    id: Vec<u32>,
}

impl Buffers {
    /// Rasterise one triangle: pixel centres inside (edges inclusive) and nearer than what
    /// is there take its depth and id.
    fn raster(&mut self, s: &Setup, id: u32) {
        let [p0, p1, p2] = s.screen;
        let size = self.size as f64;
        let min_x = p0[0].min(p1[0]).min(p2[0]);
        let max_x = p0[0].max(p1[0]).max(p2[0]);
        let min_y = p0[1].min(p1[1]).min(p2[1]);
        let max_y = p0[1].max(p1[1]).max(p2[1]);
        // pixel i is covered when its centre i + 0.5 is inside
        let x0 = (min_x - 0.5).ceil().max(0.0);
        let x1 = (max_x - 0.5).floor().min(size - 1.0);
        let y0 = (min_y - 0.5).ceil().max(0.0);
        let y1 = (max_y - 0.5).floor().min(size - 1.0);
        if x0 > x1 || y0 > y1 {
            return;
        }
        let area = (p1[0] - p0[0]) * (p2[1] - p0[1]) - (p2[0] - p0[0]) * (p1[1] - p0[1]);
        let sign = area.signum();
        // edge function of a -> b at (x, y): A x + B y + C, positive inside
        let edge = |a: [f64; 3], b: [f64; 3]| -> [f64; 3] {
            let ea = -(b[1] - a[1]) * sign;
            let eb = (b[0] - a[0]) * sign;
            [ea, eb, -(ea * a[0] + eb * a[1])]
        };
        let e = [edge(p1, p2), edge(p2, p0), edge(p0, p1)];
        let z0 = p0[2] - s.info.dzdx * p0[0] - s.info.dzdy * p0[1];
        let inv = e.map(|ek| if ek[0] != 0.0 { 1.0 / ek[0] } else { 0.0 });
        let (y0, y1) = (y0 as usize, y1 as usize);
        for y in y0..=y1 {
            let cy = y as f64 + 0.5;
            // this row's span from the three half-planes, widened by a pixel each side so
            // that the exact per-pixel test below alone decides coverage
            let (mut lo, mut hi) = (x0, x1);
            let mut rest = [0.0; 3];
            for (k, ek) in e.iter().enumerate() {
                rest[k] = ek[1] * cy + ek[2];
                let bound = (-INSIDE_EPS - rest[k]) * inv[k];
                if ek[0] > 0.0 {
                    lo = lo.max((bound - 0.5).ceil() - 1.0);
                } else if ek[0] < 0.0 {
                    hi = hi.min((bound - 0.5).floor() + 1.0);
                } else if rest[k] < -INSIDE_EPS {
                    hi = lo - 1.0; // parallel edge with the row outside it
                }
            }
            if lo > hi {
                continue;
            }
            let (lo, hi) = (lo as usize, hi as usize);
            let cx = lo as f64 + 0.5;
            let mut w = [
                e[0][0] * cx + rest[0],
                e[1][0] * cx + rest[1],
                e[2][0] * cx + rest[2],
            ];
            let mut z = z0 + s.info.dzdx * cx + s.info.dzdy * cy;
            let row = y * self.size;
            for x in lo..=hi {
                if w[0] >= -INSIDE_EPS && w[1] >= -INSIDE_EPS && w[2] >= -INSIDE_EPS {
                    let i = row + x;
                    if z > self.depth[i] {
                        self.depth[i] = z;
                        self.id[i] = id;
                    }
                }
                w[0] += e[0][0];
                w[1] += e[1][0];
                w[2] += e[2][0];
                z += s.info.dzdx;
            }
        }
    }

    /// Whether a point of an edge at continuous (qx, qy) with depth `zq`, falling in pixel
    /// (px, py), is not hidden: nothing there, or the surface there, extended as a plane from
    /// the pixel centre to the point, is not nearer.
    fn edge_visible(&self, infos: &[TriInfo], px: usize, py: usize, q: [f64; 3], eps: f64) -> bool {
        let i = py * self.size + px;
        let id = self.id[i];
        if id == NO_TRIANGLE {
            return true;
        }
        let info = &infos[id as usize];
        let surface = self.depth[i]
            + info.dzdx * (q[0] - (px as f64 + 0.5))
            + info.dzdy * (q[1] - (py as f64 + 0.5));
        q[2] >= surface - eps
    }
}

/// Visit the pixels of segment a -> b: along its major axis every pixel centre within the
/// segment's extent, the minor coordinate taken at that centre and floored.
fn segment_pixels(
    a: [f64; 3],
    b: [f64; 3],
    size: usize,
    mut visit: impl FnMut(usize, usize, [f64; 3]),
) {
    if !a.iter().chain(&b).all(|c| c.is_finite()) {
        return; // projection overflowed: nothing sensible to draw
    }
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let x_major = dx.abs() >= dy.abs();
    let (major, d_major) = if x_major { (0, dx) } else { (1, dy) };
    if d_major.abs() < 1e-12 {
        return;
    }
    let (lo, hi) = if a[major] <= b[major] {
        (a[major], b[major])
    } else {
        (b[major], a[major])
    };
    let first = (lo - 0.5).ceil().max(0.0);
    let last = (hi - 0.5).floor().min(size as f64 - 1.0);
    if first > last {
        return;
    }
    for m in first as usize..=last as usize {
        let c = m as f64 + 0.5;
        let t = (c - a[major]) / d_major;
        let q = [a[0] + t * dx, a[1] + t * dy, a[2] + t * (b[2] - a[2])];
        let minor = if x_major { q[1] } else { q[0] }.floor();
        if !(0.0..size as f64).contains(&minor) {
            continue;
        }
        let (px, py) = if x_major {
            (m, minor as usize)
        } else {
            (minor as usize, m)
        };
        visit(px, py, q);
    }
}

fn check(mesh: &Mesh, edges: &Edges, size: u32) -> Result<(), RenderError> {
    if size == 0 || size > MAX_SIZE {
        return Err(RenderError::BadSize(size));
    }
    if mesh.triangles.is_empty() {
        return Err(RenderError::EmptyMesh);
    }
    if mesh.triangles.len() >= NO_TRIANGLE as usize {
        return Err(RenderError::TooManyTriangles(mesh.triangles.len()));
    }
    if let Some(i) = mesh
        .vertices
        .iter()
        .position(|v| v.iter().any(|c| !c.is_finite()))
    {
        return Err(RenderError::NonFiniteVertex(i));
    }
    let count = mesh.vertices.len();
    for (triangle, t) in mesh.triangles.iter().enumerate() {
        if let Some(&index) = t.iter().find(|&&i| i as usize >= count) {
            return Err(RenderError::BadIndex {
                triangle,
                index,
                count,
            });
        }
    }
    if let Some(i) = edges
        .polylines
        .iter()
        .position(|l| l.iter().flatten().any(|c| !c.is_finite()))
    {
        return Err(RenderError::NonFiniteEdge(i));
    }
    Ok(())
}

/// Colour table of `shade` over |n.v| in [0, 1], for per-pixel smooth shading; built once.
pub fn shade_table() -> &'static [[u8; 3]] {
    static TABLE: std::sync::OnceLock<Vec<[u8; 3]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..LUT_SIZE)
            .map(|i| shade(i as f64 / (LUT_SIZE - 1) as f64))
            .collect()
    })
}

/// Why a program could not be turned into a picture.
#[derive(Debug, thiserror::Error)]
pub enum CodeRenderError {
    #[error("the code did not build a solid ({status}): {message}")]
    NotASolid {
        status: &'static str,
        message: String,
    },
    #[error("the worker returned no mesh")]
    NoMesh,
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl crate::WorkerPool {
    /// Runs `code` in the sandbox and renders the solid it builds, `size` x `size`.
    pub async fn render(&self, code: &str, size: u32) -> Result<RgbImage, CodeRenderError> {
        let exec = self.exec(code, crate::Wants::RENDER).await;
        if !exec.is_valid() {
            return Err(CodeRenderError::NotASolid {
                status: exec.status.as_str(),
                message: exec.message,
            });
        }
        let (Some(mesh), Some(edges)) = (exec.mesh, exec.edges) else {
            return Err(CodeRenderError::NoMesh);
        };
        Ok(render_part(&mesh, &edges, size)?)
    }
}

/// Render a tessellated part as a `size` x `size` image in the GenCAD-Code style.
///
/// `mesh` gives the faces (vertices shared only within a B-rep face, as the worker
/// tessellates), `edges` the B-rep edges to draw in black; seam edges are skipped. The
/// framing comes from the mesh vertices' bounding box, so edges never move the camera.
pub fn render_part(mesh: &Mesh, edges: &Edges, size: u32) -> Result<RgbImage, RenderError> {
    check(mesh, edges, size)?;
    let frame = Frame::fit(&mesh.vertices, size)?;
    let n = size as usize;
    let screen: Vec<[f64; 3]> = mesh.vertices.iter().map(|p| frame.project(p)).collect();
    let (facets, corners) = corner_normals(&mesh.vertices, &mesh.triangles);

    let mut buffers = Buffers {
        size: n,
        depth: vec![f64::NEG_INFINITY; n * n],
        id: vec![NO_TRIANGLE; n * n],
    };
    let mut infos = Vec::with_capacity(mesh.triangles.len());
    for (ti, t) in mesh.triangles.iter().enumerate() {
        let Some(s) = setup(t.map(|i| screen[i as usize]), facets[ti], corners[ti]) else {
            continue;
        };
        buffers.raster(&s, infos.len() as u32);
        infos.push(s.info);
    }

    let table = shade_table();
    let scale = (LUT_SIZE - 1) as f64;
    let mut img = RgbImage::from_pixel(size, size, Rgb([255, 255, 255]));
    for (i, px) in img.pixels_mut().enumerate() {
        let id = buffers.id[i];
        if id == NO_TRIANGLE {
            continue;
        }
        px.0 = match infos[id as usize].shading {
            Shading::Flat(c) => c,
            Shading::Smooth(a) => {
                let x = (i % n) as f64 + 0.5;
                let y = (i / n) as f64 + 0.5;
                let nrm = a.map(|k| k[0] * x + k[1] * y + k[2]);
                let len = dot(&nrm, &nrm).sqrt();
                let nv = if len > 0.0 {
                    (dot(&nrm, &VIEW) / len).abs().min(1.0)
                } else {
                    0.0
                };
                table[(nv * scale).round() as usize]
            }
        };
    }

    // f32 vertices (the worker's STL-like rounding) vs f64 edge points: allow their
    // rounding, relative to the coordinates' magnitude, on top of the fixed slack
    let magnitude = mesh
        .vertices
        .iter()
        .flatten()
        .fold(0.0f64, |m, c| m.max(c.abs()));
    let eps = EDGE_DEPTH_EPS + 4.0 * f64::from(f32::EPSILON) * magnitude * frame.s;
    for (li, line) in edges.polylines.iter().enumerate() {
        if edges.seam.get(li).copied().unwrap_or(false) {
            continue;
        }
        for w in line.windows(2) {
            let (a, b) = (frame.project(&w[0]), frame.project(&w[1]));
            segment_pixels(a, b, n, |px, py, q| {
                if buffers.edge_visible(&infos, px, py, q, eps) {
                    img.put_pixel(px as u32, py as u32, Rgb([0, 0, 0]));
                }
            });
        }
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AXIS_GREY: [u8; 3] = [141, 141, 138];
    const WHITE: [u8; 3] = [255, 255, 255];
    const BLACK: [u8; 3] = [0, 0, 0];

    /// Axis-aligned box from `lo` to `hi`, 8 shared vertices (index = x + 2y + 4z),
    /// 12 outward-facing triangles.
    fn cuboid(lo: [f64; 3], hi: [f64; 3]) -> Mesh {
        let vertices = (0..8)
            .map(|i| {
                [
                    if i & 1 == 0 { lo[0] } else { hi[0] },
                    if i & 2 == 0 { lo[1] } else { hi[1] },
                    if i & 4 == 0 { lo[2] } else { hi[2] },
                ]
            })
            .collect::<Vec<_>>();
        // each face: 4 corners in cyclic order, and its outward axis
        let quads: [([u32; 4], [f64; 3]); 6] = [
            ([0, 2, 3, 1], [0.0, 0.0, -1.0]),
            ([4, 5, 7, 6], [0.0, 0.0, 1.0]),
            ([0, 1, 5, 4], [0.0, -1.0, 0.0]),
            ([2, 6, 7, 3], [0.0, 1.0, 0.0]),
            ([0, 4, 6, 2], [-1.0, 0.0, 0.0]),
            ([1, 3, 7, 5], [1.0, 0.0, 0.0]),
        ];
        let mut triangles = Vec::new();
        for (q, out) in quads {
            for t in [[q[0], q[1], q[2]], [q[0], q[2], q[3]]] {
                let p = t.map(|i| vertices[i as usize]);
                let n = cross(&sub(&p[1], &p[0]), &sub(&p[2], &p[0]));
                triangles.push(if dot(&n, &out) > 0.0 {
                    t
                } else {
                    [t[0], t[2], t[1]]
                });
            }
        }
        Mesh {
            vertices,
            triangles,
        }
    }

    fn unit_cube() -> Mesh {
        cuboid([0.0; 3], [1.0; 3])
    }

    fn no_edges() -> Edges {
        Edges::default()
    }

    /// The pixel a model point lands in at 448 px.
    fn pixel_of(mesh: &Mesh, p: [f64; 3]) -> (u32, u32) {
        let f = Frame::fit(&mesh.vertices, GENCAD_SIZE).unwrap();
        let q = f.project(&p);
        (q[0].floor() as u32, q[1].floor() as u32)
    }

    fn foreground_extent(img: &RgbImage) -> (u32, u32, u32, u32) {
        let (mut x0, mut x1, mut y0, mut y1) = (u32::MAX, 0, u32::MAX, 0);
        for (x, y, p) in img.enumerate_pixels() {
            if p.0 != WHITE {
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
        }
        (x0, x1, y0, y1)
    }

    #[test]
    fn unit_cube_shows_three_faces_in_the_axis_grey() {
        let img = render_part(&unit_cube(), &no_edges(), GENCAD_SIZE).unwrap();
        let mut grey = 0;
        for p in img.pixels() {
            assert!(
                p.0 == WHITE || p.0 == AXIS_GREY,
                "unexpected colour {:?}",
                p.0
            );
            grey += usize::from(p.0 == AXIS_GREY);
        }
        // the hexagon of a cube seen along its diagonal: 3 faces of area s^2 * |n.v| each
        let s = FIT_HEIGHT / (3.0 / 6f64.sqrt() + 1.0 / 6f64.sqrt());
        let expected = 3.0 * s * s / 3f64.sqrt();
        assert!(
            (grey as f64 - expected).abs() < 0.01 * expected,
            "{grey} vs {expected}"
        );
        // each visible face's centre is grey
        let cube = unit_cube();
        for c in [[1.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 1.0]] {
            let (x, y) = pixel_of(&cube, c);
            assert_eq!(img.get_pixel(x, y).0, AXIS_GREY);
        }
    }

    #[test]
    fn shading_reproduces_the_flat_colours_of_the_real_images() {
        // |n.v| of planar faces in the reference images and the colour they show there
        let v = |n: [f64; 3]| dot(&normalised(n).unwrap(), &VIEW).abs();
        assert_eq!(shade(v([0.0, 0.0, 1.0])), [141, 141, 138]);
        assert_eq!(shade(v([0.6737, 0.0, 0.5895])), [160, 160, 157]);
        assert_eq!(shade(0.262_698), [110, 110, 106]);
        assert_eq!(shade(0.7758), [157, 157, 155]);
        assert_eq!(shade(-0.5), shade(0.5));
        assert_eq!(shade(f64::NAN), shade(0.0));
    }

    #[test]
    fn framing_centres_the_box_and_fills_the_height_or_the_width() {
        // a cube is tall in this view: its box fills FIT_HEIGHT
        let cube = unit_cube();
        let f = Frame::fit(&cube.vertices, GENCAD_SIZE).unwrap();
        let pts: Vec<[f64; 3]> = cube.vertices.iter().map(|p| f.project(p)).collect();
        let (x_lo, x_hi) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p[0]), b.max(p[0])));
        let (y_lo, y_hi) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p[1]), b.max(p[1])));
        assert!((0.5 * (x_lo + x_hi) - 224.0).abs() < 1e-9);
        assert!((0.5 * (y_lo + y_hi) - 224.0).abs() < 1e-9);
        assert!((y_hi - y_lo - FIT_HEIGHT).abs() < 1e-9);
        assert!(x_hi - x_lo < FIT_WIDTH);

        // a long flat plate along (1,1,0) is wide: its box fills FIT_WIDTH; no edges are
        // drawn, so the covered columns are exactly those whose centres are inside
        let plate = cuboid([0.0, 0.0, 0.0], [4.0, 4.0, 0.1]);
        let img = render_part(&plate, &no_edges(), GENCAD_SIZE).unwrap();
        let (x0, x1, _, _) = foreground_extent(&img);
        let left = 224.0 - 0.5 * FIT_WIDTH;
        let right = 224.0 + 0.5 * FIT_WIDTH;
        assert_eq!(x0, (left - 0.5).ceil() as u32);
        assert_eq!(x1, (right - 0.5).floor() as u32);

        // other sizes scale the framing
        let f = Frame::fit(&plate.vertices, 224).unwrap();
        let pts: Vec<[f64; 3]> = plate.vertices.iter().map(|p| f.project(p)).collect();
        let (x_lo, x_hi) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p[0]), b.max(p[0])));
        assert!((x_hi - x_lo - FIT_WIDTH / 2.0).abs() < 1e-9);
        assert!((0.5 * (x_lo + x_hi) - 112.0).abs() < 1e-9);
    }

    /// Black pixels within one pixel of where model point `p` lands.
    fn black_near(img: &RgbImage, mesh: &Mesh, p: [f64; 3]) -> usize {
        let (x, y) = pixel_of(mesh, p);
        let mut n = 0;
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let (xx, yy) = ((x as i64 + dx) as u32, (y as i64 + dy) as u32);
                n += usize::from(img.get_pixel(xx, yy).0 == BLACK);
            }
        }
        n
    }

    #[test]
    fn visible_edges_are_drawn_and_hidden_ones_are_not() {
        let cube = unit_cube();
        // between the +X and +Z faces (visible); from the far corner (0,1,0) (hidden)
        let visible = vec![[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]];
        let hidden = vec![[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]];
        let edges = Edges {
            polylines: vec![visible, hidden],
            seam: vec![false, false],
        };
        let img = render_part(&cube, &edges, GENCAD_SIZE).unwrap();
        assert!(black_near(&img, &cube, [1.0, 0.5, 1.0]) > 0);
        assert_eq!(img.get_pixel_checked(0, 0).map(|p| p.0), Some(WHITE));
        assert_eq!(black_near(&img, &cube, [0.0, 0.5, 0.0]), 0);
        // nothing of the hidden edge away from its silhouette end
        for k in 1..=9 {
            let y = 1.0 - 0.1 * f64::from(k);
            assert_eq!(black_near(&img, &cube, [0.0, y, 0.0]), 0, "at y = {y}");
        }
        // the visible edge is one pixel wide: one black pixel per column it spans
        let f = Frame::fit(&cube.vertices, GENCAD_SIZE).unwrap();
        let (a, b) = (f.project(&[1.0, 0.0, 1.0]), f.project(&[1.0, 1.0, 1.0]));
        for x in (a[0].ceil() as u32 + 1)..(b[0].floor() as u32) {
            let blacks = (0..GENCAD_SIZE)
                .filter(|&y| img.get_pixel(x, y).0 == BLACK)
                .count();
            assert_eq!(blacks, 1, "column {x}");
        }
    }

    #[test]
    fn seams_are_not_drawn() {
        let cube = unit_cube();
        let edges = Edges {
            polylines: vec![vec![[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]],
            seam: vec![true],
        };
        let img = render_part(&cube, &edges, GENCAD_SIZE).unwrap();
        assert!(img.pixels().all(|p| p.0 != BLACK));
        assert_eq!(img, render_part(&cube, &no_edges(), GENCAD_SIZE).unwrap());
    }

    #[test]
    fn edge_pixels_sample_the_major_axis_at_pixel_centres() {
        let mut got = Vec::new();
        segment_pixels([10.2, 5.7, 0.0], [14.8, 7.9, 0.0], 448, |x, y, _| {
            got.push((x, y))
        });
        assert_eq!(got, vec![(10, 5), (11, 6), (12, 6), (13, 7), (14, 7)]);
        let mut got = Vec::new();
        segment_pixels([3.41, 1.2, 0.0], [3.41, 4.9, 0.0], 448, |x, y, _| {
            got.push((x, y))
        });
        assert_eq!(got, vec![(3, 1), (3, 2), (3, 3), (3, 4)]);
    }

    #[test]
    fn curved_faces_are_shaded_smoothly() {
        // a cylinder side along Z: 64 facets sharing vertices, as within one B-rep face
        let n = 64u32;
        let mut vertices = Vec::new();
        for k in 0..n {
            let a = 2.0 * std::f64::consts::PI * f64::from(k) / f64::from(n);
            vertices.push([a.cos(), a.sin(), 0.0]);
            vertices.push([a.cos(), a.sin(), 2.0]);
        }
        let mut triangles = Vec::new();
        for k in 0..n {
            let (a, b) = (2 * k, 2 * ((k + 1) % n));
            triangles.push([a, b, b + 1]);
            triangles.push([a, b + 1, a + 1]);
        }
        let mesh = Mesh {
            vertices,
            triangles,
        };
        let img = render_part(&mesh, &no_edges(), GENCAD_SIZE).unwrap();
        let levels: std::collections::BTreeSet<u8> = img
            .pixels()
            .filter(|p| p.0 != WHITE)
            .map(|p| p.0[0])
            .collect();
        assert!(levels.len() > 40, "only {} grey levels", levels.len());
        // the pixel in front of the point of normal (1,-1,0)/sqrt 2 has that normal's shade
        let p = [0.5f64.sqrt(), -(0.5f64.sqrt()), 1.0];
        let (x, y) = pixel_of(&mesh, p);
        let want = shade(dot(&normalised([1.0, -1.0, 0.0]).unwrap(), &VIEW));
        let got = img.get_pixel(x, y).0;
        assert!(got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= 1));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let cube = unit_cube();
        let e = no_edges();
        assert_eq!(
            render_part(&Mesh::default(), &e, 448),
            Err(RenderError::EmptyMesh)
        );
        assert_eq!(render_part(&cube, &e, 0), Err(RenderError::BadSize(0)));
        assert!(matches!(
            render_part(&cube, &e, MAX_SIZE + 1),
            Err(RenderError::BadSize(_))
        ));
        let mut nan = unit_cube();
        nan.vertices[3][1] = f64::NAN;
        assert_eq!(
            render_part(&nan, &e, 448),
            Err(RenderError::NonFiniteVertex(3))
        );
        let mut bad = unit_cube();
        bad.triangles[5][2] = 8;
        assert!(matches!(
            render_part(&bad, &e, 448),
            Err(RenderError::BadIndex { triangle: 5, .. })
        ));
        let point = Mesh {
            vertices: vec![[1.0, 2.0, 3.0]; 3],
            triangles: vec![[0, 1, 2]],
        };
        assert_eq!(render_part(&point, &e, 448), Err(RenderError::Degenerate));
        let inf_edge = Edges {
            polylines: vec![vec![[0.0; 3], [f64::INFINITY, 0.0, 0.0]]],
            seam: vec![false],
        };
        assert_eq!(
            render_part(&cube, &inf_edge, 448),
            Err(RenderError::NonFiniteEdge(0))
        );
        // huge but finite coordinates: rendered or refused, never a panic
        let huge = cuboid([-1e300; 3], [1e300; 3]);
        let _ = render_part(&huge, &e, 448);
        let far_edge = Edges {
            polylines: vec![vec![[0.0; 3], [1e300, -1e300, 1e300]]],
            seam: vec![],
        };
        render_part(&cube, &far_edge, 448).unwrap();
    }
}
