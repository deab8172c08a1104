//! A dialect program compiled for ray casting: one prism per sketch (its frame, slab and
//! profile curves), the surfaces their faces lie on (coplanar and co-cylindrical faces
//! share one, as CadQuery's clean merges them), and the checks that say "unsure" where
//! CadQuery might build something else than the even-odd prism we would draw.

use std::collections::HashMap;

use dialect::{Loop, Op, Program, Seg};
use evaluator::render::box_corners;

/// Largest |coordinate| accepted; the dialect's parts live in [-2, 2].
pub const MAX_COORD: f64 = 1e3;
/// Most profile pieces (after arcs are cut into chords for the checks) in one program.
pub const MAX_PIECES: usize = 4096;
/// Shortest segment, smallest radius and thinnest extrude accepted (model units).
pub const MIN_LENGTH: f64 = 1e-7;
/// Chord step, in radians, of the polylines the loop checks run on.
const CHECK_STEP: f64 = std::f64::consts::PI / 24.0;

/// Why a program is left to CadQuery instead of being drawn natively.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unsure {
    #[error("a number is NaN, infinite or beyond {MAX_COORD}")]
    OutOfRange,
    #[error("sketch {0}: its plane's xDir and normal are zero or not perpendicular")]
    BadPlane(usize),
    #[error("sketch {0}: the extrude has (almost) zero thickness")]
    Flat(usize),
    #[error(
        "sketch {sketch} loop {loop_no}: a zero-length segment, a degenerate arc or a zero radius"
    )]
    Degenerate { sketch: usize, loop_no: usize },
    #[error(
        "sketch {sketch} loop {loop_no}: the loop crosses or touches itself or encloses no area"
    )]
    SelfIntersecting { sketch: usize, loop_no: usize },
    #[error("sketch {sketch}: loop {loop_no} crosses or touches an earlier loop")]
    LoopsMeet { sketch: usize, loop_no: usize },
    #[error("sketch {0}: the cut removes all material and a later step adds some back, where CadQuery's boolean may keep the part instead")]
    CutRemovesAll(usize),
    #[error("the program has more than {MAX_PIECES} profile pieces")]
    TooComplex,
}

/// One piece of a profile's boundary in sketch coordinates.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Curve {
    /// From `a` to `b`; `n` is the unit outward-or-inward normal (orientation is irrelevant
    /// to headlight shading).
    Line {
        a: [f64; 2],
        b: [f64; 2],
        n: [f64; 2],
    },
    /// A circle arc; angles in [a0, a0 + sweep] (sweep may be negative), or a full circle
    /// when `full`. A point of the circle is on the arc when it lies on the side `side` of
    /// the chord from `p` to `q` (the side of the arc's middle point).
    Arc {
        c: [f64; 2],
        r: f64,
        a0: f64,
        sweep: f64,
        full: bool,
        p: [f64; 2],
        q: [f64; 2],
        side: f64,
    },
}

/// A boundary piece with the surface its side face lies on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub curve: Curve,
    pub surface: u32,
}

/// One extruded sketch.
#[derive(Debug, Clone)]
pub(crate) struct Prism {
    pub origin: [f64; 3],
    /// Unit x, y, z (normal) axes of the sketch frame.
    pub axes: [[f64; 3]; 3],
    /// Extruded range along z.
    pub w: (f64, f64),
    pub pieces: Vec<Piece>,
    /// Surfaces of the caps at w.0 and w.1.
    pub caps: [u32; 2],
    pub op: Op,
    /// The profile's box in sketch coordinates: u0, v0, u1, v1.
    pub profile_box: [f64; 4],
    /// World axis-aligned box (conservative: the profile's box lifted).
    pub lo: [f64; 3],
    pub hi: [f64; 3],
}

/// Whether a surface is flat (one colour) or a cylinder (shaded per pixel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SurfaceKind {
    Plane,
    Cylinder,
}

/// A program ready to be ray cast.
#[derive(Debug, Clone)]
pub struct Scene {
    pub(crate) prisms: Vec<Prism>,
    pub(crate) surfaces: Vec<SurfaceKind>,
}

impl Scene {
    /// Number of prisms (= sketches).
    pub fn prism_count(&self) -> usize {
        self.prisms.len()
    }
}

/// Dot product of two 3-vectors.
pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

impl Prism {
    /// The world point at sketch coordinates (u, v) and height w along the normal.
    pub(crate) fn point(&self, u: f64, v: f64, w: f64) -> [f64; 3] {
        let [x, y, z] = self.axes;
        std::array::from_fn(|k| self.origin[k] + u * x[k] + v * y[k] + w * z[k])
    }

    /// The world direction of a direction `d` in the sketch plane.
    pub(crate) fn direction(&self, d: [f64; 2]) -> [f64; 3] {
        let [x, y, _] = self.axes;
        std::array::from_fn(|k| d[0] * x[k] + d[1] * y[k])
    }
}

/// Interns surfaces by a quantised geometric key, so faces on one plane or one cylinder
/// share an id and draw no edge between them.
#[derive(Default)]
struct Surfaces {
    ids: HashMap<(u8, [i64; 5]), u32>,
    kinds: Vec<SurfaceKind>,
}

impl Surfaces {
    fn key(x: f64) -> i64 {
        (x * 1e6).round() as i64
    }

    /// A direction up to sign: the first clearly non-zero component made positive.
    fn canonical(d: [f64; 3]) -> [f64; 3] {
        let first = d.iter().copied().find(|c| c.abs() > 1e-9).unwrap_or(0.0);
        if first < 0.0 {
            [-d[0], -d[1], -d[2]]
        } else {
            d
        }
    }

    fn intern(&mut self, kind: SurfaceKind, key: [i64; 5]) -> u32 {
        let tag = kind as u8;
        let next = self.kinds.len() as u32;
        *self.ids.entry((tag, key)).or_insert_with(|| {
            self.kinds.push(kind);
            next
        })
    }

    fn plane(&mut self, normal: [f64; 3], point: [f64; 3]) -> u32 {
        let n = Self::canonical(normal);
        let key = [
            Self::key(n[0]),
            Self::key(n[1]),
            Self::key(n[2]),
            Self::key(dot(n, point)),
            0,
        ];
        self.intern(SurfaceKind::Plane, key)
    }

    fn cylinder(&mut self, axis: [f64; 3], centre: [f64; 3], r: f64) -> u32 {
        let a = Self::canonical(axis);
        // The axis line's point closest to the world origin.
        let t = dot(centre, a);
        let q: [f64; 3] = std::array::from_fn(|k| centre[k] - t * a[k]);
        // A line is fixed by its direction and that point; fold them into five numbers.
        let key = [
            Self::key(a[0]) * 7 + Self::key(a[1]) * 13 + Self::key(a[2]) * 17,
            Self::key(q[0]),
            Self::key(q[1]),
            Self::key(q[2]),
            Self::key(r),
        ];
        self.intern(SurfaceKind::Cylinder, key)
    }
}

/// The circle through three points: centre and radius; None when they are (nearly)
/// collinear or two coincide.
fn circumcircle(p: [f64; 2], q: [f64; 2], r: [f64; 2]) -> Option<([f64; 2], f64)> {
    let (bx, by) = (q[0] - p[0], q[1] - p[1]);
    let (cx, cy) = (r[0] - p[0], r[1] - p[1]);
    let d = 2.0 * (bx * cy - by * cx);
    let scale = (bx * bx + by * by).max(cx * cx + cy * cy);
    if d.abs() <= 1e-12 * scale || scale < MIN_LENGTH * MIN_LENGTH {
        return None;
    }
    let b2 = bx * bx + by * by;
    let c2 = cx * cx + cy * cy;
    let ux = (cy * b2 - by * c2) / d;
    let uy = (bx * c2 - cx * b2) / d;
    Some(([p[0] + ux, p[1] + uy], (ux * ux + uy * uy).sqrt()))
}

/// The arc from `p` through `m` to `e` as centre, radius, start angle and signed sweep.
fn arc(p: [f64; 2], m: [f64; 2], e: [f64; 2]) -> Option<Curve> {
    let (c, r) = circumcircle(p, m, e)?;
    let ang = |q: [f64; 2]| (q[1] - c[1]).atan2(q[0] - c[0]);
    let (a0, am, ae) = (ang(p), ang(m), ang(e));
    let tau = std::f64::consts::TAU;
    let ccw = |from: f64, to: f64| (to - from).rem_euclid(tau);
    // Counter-clockwise when the middle point comes before the end going ccw.
    let sweep = if ccw(a0, am) <= ccw(a0, ae) {
        ccw(a0, ae)
    } else {
        -ccw(ae, a0)
    };
    let side = orient(p, e, m).signum();
    Some(Curve::Arc {
        c,
        r,
        a0,
        sweep,
        full: false,
        p,
        q: e,
        side,
    })
}

fn line(a: [f64; 2], b: [f64; 2]) -> Option<Curve> {
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let len = (dx * dx + dy * dy).sqrt();
    (len >= MIN_LENGTH).then(|| Curve::Line {
        a,
        b,
        n: [-dy / len, dx / len],
    })
}

/// The boundary curves of one loop, with `close()`'s line when the path ends elsewhere.
fn loop_curves(lp: &Loop) -> Option<Vec<Curve>> {
    match lp {
        Loop::Circle { centre, radius } => (*radius >= MIN_LENGTH).then(|| {
            vec![Curve::Arc {
                c: *centre,
                r: *radius,
                a0: 0.0,
                sweep: std::f64::consts::TAU,
                full: true,
                p: *centre,
                q: *centre,
                side: 0.0,
            }]
        }),
        Loop::Path { start, segs } => {
            let mut out = Vec::with_capacity(segs.len() + 1);
            let mut at = *start;
            for seg in segs {
                match seg {
                    Seg::Line(p) => {
                        out.push(line(at, *p)?);
                        at = *p;
                    }
                    Seg::Arc { mid, end } => {
                        out.push(arc(at, *mid, *end)?);
                        at = *end;
                    }
                }
            }
            let gap = ((at[0] - start[0]).powi(2) + (at[1] - start[1]).powi(2)).sqrt();
            if gap >= 1e-4 {
                out.push(line(at, *start)?);
            } else if gap > MIN_LENGTH {
                // CadQuery's close() might or might not draw this sliver.
                return None;
            }
            Some(out)
        }
    }
}

/// A curve as chords, for the loop checks.
fn chords(c: &Curve, out: &mut Vec<[f64; 2]>) {
    match *c {
        Curve::Line { a, .. } => out.push(a),
        Curve::Arc {
            c, r, a0, sweep, ..
        } => {
            let n = ((sweep.abs() / CHECK_STEP).ceil() as usize).max(2);
            for i in 0..n {
                let a = a0 + sweep * i as f64 / n as f64;
                out.push([c[0] + r * a.cos(), c[1] + r * a.sin()]);
            }
        }
    }
}

fn orient(a: [f64; 2], b: [f64; 2], c: [f64; 2]) -> f64 {
    (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
}

/// Whether segments ab and cd intersect or touch.
fn segments_meet(a: [f64; 2], b: [f64; 2], c: [f64; 2], d: [f64; 2]) -> bool {
    let eps = 1e-12;
    let (d1, d2) = (orient(c, d, a), orient(c, d, b));
    let (d3, d4) = (orient(a, b, c), orient(a, b, d));
    if ((d1 > eps && d2 < -eps) || (d1 < -eps && d2 > eps))
        && ((d3 > eps && d4 < -eps) || (d3 < -eps && d4 > eps))
    {
        return true;
    }
    let on = |p: [f64; 2], q: [f64; 2], r: [f64; 2], o: f64| {
        o.abs() <= eps
            && r[0] >= p[0].min(q[0]) - 1e-12
            && r[0] <= p[0].max(q[0]) + 1e-12
            && r[1] >= p[1].min(q[1]) - 1e-12
            && r[1] <= p[1].max(q[1]) + 1e-12
    };
    on(c, d, a, d1) || on(c, d, b, d2) || on(a, b, c, d3) || on(a, b, d, d4)
}

fn polygon_area(p: &[[f64; 2]]) -> f64 {
    let n = p.len();
    (0..n)
        .map(|i| {
            let (a, b) = (p[i], p[(i + 1) % n]);
            a[0] * b[1] - a[1] * b[0]
        })
        .sum::<f64>()
        * 0.5
}

fn edges_of(poly: &[[f64; 2]]) -> impl Iterator<Item = ([f64; 2], [f64; 2])> + '_ {
    (0..poly.len()).map(move |i| (poly[i], poly[(i + 1) % poly.len()]))
}

/// A loop's polyline crosses or touches itself, or encloses no area.
fn self_intersects(poly: &[[f64; 2]]) -> bool {
    let n = poly.len();
    if n < 3 || polygon_area(poly).abs() < 1e-12 {
        return true;
    }
    for i in 0..n {
        for j in i + 2..n {
            if i == 0 && j == n - 1 {
                continue;
            }
            let (a, b) = (poly[i], poly[(i + 1) % n]);
            let (c, d) = (poly[j], poly[(j + 1) % n]);
            if segments_meet(a, b, c, d) {
                return true;
            }
        }
    }
    false
}

fn polylines_meet(p: &[[f64; 2]], q: &[[f64; 2]]) -> bool {
    edges_of(p).any(|(a, b)| edges_of(q).any(|(c, d)| segments_meet(a, b, c, d)))
}

/// Compile a program for ray casting, or say why the native path should not draw it.
pub fn compile(program: &Program) -> Result<Scene, Unsure> {
    if program
        .numbers()
        .iter()
        .any(|(_, v)| !v.is_finite() || v.abs() > MAX_COORD)
    {
        return Err(Unsure::OutOfRange);
    }
    let mut surfaces = Surfaces::default();
    let mut prisms = Vec::with_capacity(program.sketches.len());
    let mut total_pieces = 0usize;
    for (s, sk) in program.sketches.iter().enumerate() {
        let axes = sk.plane.frame().ok_or(Unsure::BadPlane(s))?;
        let w = sk.extrude.range();
        if w.1 - w.0 < MIN_LENGTH {
            return Err(Unsure::Flat(s));
        }
        let mut polys = Vec::with_capacity(sk.loops.len());
        let mut curves = Vec::with_capacity(sk.loops.len());
        for (l, lp) in sk.loops.iter().enumerate() {
            let c = loop_curves(lp).ok_or(Unsure::Degenerate {
                sketch: s,
                loop_no: l,
            })?;
            let mut poly = Vec::new();
            for curve in &c {
                chords(curve, &mut poly);
            }
            total_pieces += poly.len();
            if total_pieces > MAX_PIECES {
                return Err(Unsure::TooComplex);
            }
            if self_intersects(&poly) {
                return Err(Unsure::SelfIntersecting {
                    sketch: s,
                    loop_no: l,
                });
            }
            polys.push(poly);
            curves.push(c);
        }
        // CadQuery hands the first wire to the face builder as the outer one and the rest
        // as holes, then ShapeFix_Face reorients them by nesting and splits faces that have
        // several outer wires: for loops that neither cross nor touch, the region is the
        // even-odd one whatever their order. Crossing or touching loops are left to it.
        for l in 1..polys.len() {
            if (0..l).any(|k| polylines_meet(&polys[l], &polys[k])) {
                return Err(Unsure::LoopsMeet {
                    sketch: s,
                    loop_no: l,
                });
            }
        }
        let mut prism = Prism {
            origin: sk.plane.origin,
            axes,
            w,
            pieces: Vec::new(),
            caps: [0, 0],
            op: sk.op,
            profile_box: [0.0; 4],
            lo: [f64::INFINITY; 3],
            hi: [f64::NEG_INFINITY; 3],
        };
        let z = axes[2];
        prism.caps = [
            surfaces.plane(z, prism.point(0.0, 0.0, w.0)),
            surfaces.plane(z, prism.point(0.0, 0.0, w.1)),
        ];
        let (mut u0, mut v0, mut u1, mut v1) = (
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        );
        let mut grow = |p: [f64; 2]| {
            u0 = u0.min(p[0]);
            u1 = u1.max(p[0]);
            v0 = v0.min(p[1]);
            v1 = v1.max(p[1]);
        };
        for curve in curves.into_iter().flatten() {
            let surface = match curve {
                Curve::Line { a, n, .. } => {
                    grow(a);
                    surfaces.plane(prism.direction(n), prism.point(a[0], a[1], 0.0))
                }
                Curve::Arc {
                    c, r, a0, sweep, ..
                } => {
                    // The arc's ends and whichever axis extremes it passes.
                    let at = |a: f64| [c[0] + r * a.cos(), c[1] + r * a.sin()];
                    grow(at(a0));
                    grow(at(a0 + sweep));
                    for k in 0..4 {
                        let axis = f64::from(k) * std::f64::consts::FRAC_PI_2;
                        let off = if sweep >= 0.0 {
                            (axis - a0).rem_euclid(std::f64::consts::TAU)
                        } else {
                            (a0 - axis).rem_euclid(std::f64::consts::TAU)
                        };
                        if off <= sweep.abs() {
                            grow(at(axis));
                        }
                    }
                    surfaces.cylinder(z, prism.point(c[0], c[1], 0.0), r)
                }
            };
            prism.pieces.push(Piece { curve, surface });
        }
        prism.profile_box = [u0, v0, u1, v1];
        for [u, v, h] in box_corners([u0, v0, w.0], [u1, v1, w.1]) {
            for (k, x) in prism.point(u, v, h).into_iter().enumerate() {
                prism.lo[k] = prism.lo[k].min(x);
                prism.hi[k] = prism.hi[k].max(x);
            }
        }
        prisms.push(prism);
    }
    Ok(Scene {
        prisms,
        surfaces: surfaces.kinds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_point_arcs_sweep_through_their_middle() {
        let Some(Curve::Arc { c, r, sweep, .. }) = arc([1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]) else {
            panic!("not an arc")
        };
        assert!((c[0].abs() + c[1].abs()) < 1e-12 && (r - 1.0).abs() < 1e-12);
        assert!((sweep - std::f64::consts::PI).abs() < 1e-12);
        let Some(Curve::Arc { sweep, .. }) = arc([1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]) else {
            panic!("not an arc")
        };
        assert!((sweep + std::f64::consts::PI).abs() < 1e-12);
        assert!(arc([0.0, 0.0], [1.0, 1.0], [2.0, 2.0]).is_none());
    }

    #[test]
    fn bow_ties_and_loose_holes_are_unsure() {
        let bow = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]];
        assert!(self_intersects(&bow));
        let square = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]];
        assert!(!self_intersects(&square));
        assert!(self_intersects(&[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]));
    }
}
