//! Program sampler: DeepCAD-style parts (sketch + extrude, joined by union/cut) written in the
//! exact GenCAD-Code dialect. Sketch coordinates are integers k on DeepCAD's 256-level grid
//! written as `k * (s / 95)` for a sketch scale s on the 1/128 grid; plane origins and extrude
//! distances are multiples of 1/128. The shape mix and its frequencies are tuned so that
//! `rag dataset info` matches the real test split's statistics (docs/gencad.md).

use std::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};
use std::fmt::Write as _;

use evaluator::pyfloat::repr;

use super::plane::{dot, Orientation, SketchPlane, Vec3};
use seeded::Rng;

/// A point in sketch grid units.
type P = (f64, f64);

/// An axis-aligned box (x0, y0, x1, y1) in sketch grid units.
type Rect4 = (f64, f64, f64, f64);

/// The grid size that maps to the sketch scale (DeepCAD: 256 / 2 * 0.75 - 1).
const GRID: f64 = 95.0;

/// One segment of a closed path.
#[derive(Debug, Clone)]
enum Seg {
    Line(P),
    /// Circular arc through the point at `mid_angle` on the circle (centre, radius).
    Arc {
        centre: P,
        radius: f64,
        mid_angle: f64,
        to: P,
    },
}

impl Seg {
    fn end(&self) -> P {
        match self {
            Seg::Line(p) => *p,
            Seg::Arc { to, .. } => *to,
        }
    }
}

/// A closed loop of a sketch.
#[derive(Debug, Clone)]
enum Loop {
    Circle { centre: P, radius: f64 },
    Path { start: P, segs: Vec<Seg> },
}

impl Loop {
    fn translate(&mut self, d: P) {
        let t = |p: &mut P| {
            p.0 += d.0;
            p.1 += d.1;
        };
        match self {
            Loop::Circle { centre, .. } => t(centre),
            Loop::Path { start, segs } => {
                t(start);
                for s in segs {
                    match s {
                        Seg::Line(p) => t(p),
                        Seg::Arc { centre, to, .. } => {
                            t(centre);
                            t(to);
                        }
                    }
                }
            }
        }
    }

    /// Axis-aligned bounds in grid units (arcs by their sampled points).
    fn bounds(&self) -> (P, P) {
        let mut lo = (f64::INFINITY, f64::INFINITY);
        let mut hi = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        let mut add = |p: P| {
            lo = (lo.0.min(p.0), lo.1.min(p.1));
            hi = (hi.0.max(p.0), hi.1.max(p.1));
        };
        match self {
            Loop::Circle { centre, radius } => {
                add((centre.0 - radius, centre.1 - radius));
                add((centre.0 + radius, centre.1 + radius));
            }
            Loop::Path { start, segs } => {
                add(*start);
                for s in segs {
                    if let Seg::Arc {
                        centre,
                        radius,
                        mid_angle,
                        ..
                    } = s
                    {
                        add((
                            centre.0 + radius * mid_angle.cos(),
                            centre.1 + radius * mid_angle.sin(),
                        ));
                    }
                    add(s.end());
                }
            }
        }
        (lo, hi)
    }
}

/// The loops of one sketch; the first is the outer boundary, the rest are holes.
#[derive(Debug, Clone)]
struct Profile {
    loops: Vec<Loop>,
    /// A box of the sketch known to be inside the outline: other features attach there.
    material: Rect4,
}

impl Profile {
    fn bounds(&self) -> (P, P) {
        let (mut lo, mut hi) = self.loops[0].bounds();
        for l in &self.loops[1..] {
            let (a, b) = l.bounds();
            lo = (lo.0.min(a.0), lo.1.min(a.1));
            hi = (hi.0.max(b.0), hi.1.max(b.1));
        }
        (lo, hi)
    }

    /// Move so that the outer loop starts at the sketch origin, as DeepCAD normalises.
    fn anchored(mut self) -> Self {
        let start = match &self.loops[0] {
            Loop::Circle { centre, radius } => (centre.0 - radius, centre.1),
            Loop::Path { start, .. } => *start,
        };
        for l in &mut self.loops {
            l.translate((-start.0, -start.1));
        }
        let (x0, y0, x1, y1) = self.material;
        self.material = (x0 - start.0, y0 - start.1, x1 - start.0, y1 - start.1);
        self
    }
}

/// How a sketch's solid joins the part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    First,
    Union,
    Cut,
}

/// One sketch-and-extrude step of a part.
#[derive(Debug, Clone)]
struct Feature {
    plane: SketchPlane,
    /// Sketch scale s (a multiple of 1/128): grid units are s / 95.
    scale: f64,
    profile: Profile,
    distance: f64,
    both: bool,
    join: Join,
}

impl Feature {
    fn unit(&self) -> f64 {
        self.scale / GRID
    }

    /// World axis-aligned box of the extruded profile.
    fn world_box(&self) -> (Vec3, Vec3) {
        let ((u0, v0), (u1, v1)) = self.profile.bounds();
        self.lift((u0, v0, u1, v1))
    }

    /// World box of the extruded material region: solid whatever the outline.
    fn material_box(&self) -> (Vec3, Vec3) {
        self.lift(self.profile.material)
    }

    /// World axis-aligned box of a sketch rectangle extruded like this feature.
    fn lift(&self, (u0, v0, u1, v1): Rect4) -> (Vec3, Vec3) {
        let k = self.unit();
        let (w0, w1) = extrude_range(self.distance, self.both);
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for u in [u0 * k, u1 * k] {
            for v in [v0 * k, v1 * k] {
                for w in [w0, w1] {
                    let p = self.plane.to_world(u, v, w);
                    for i in 0..3 {
                        lo[i] = lo[i].min(p[i]);
                        hi[i] = hi[i].max(p[i]);
                    }
                }
            }
        }
        (lo, hi)
    }
}

fn extrude_range(d: f64, both: bool) -> (f64, f64) {
    if both {
        (-d.abs(), d.abs())
    } else if d >= 0.0 {
        (0.0, d)
    } else {
        (d, 0.0)
    }
}

/// Round to DeepCAD's 1/128 grid.
fn q128(x: f64) -> f64 {
    // `+ 0.0` turns -0.0 into 0.0: the dataset writes no negative zeros.
    (x * 128.0).round() / 128.0 + 0.0
}

/// A sampled part: its features, renderable as GenCAD code.
#[derive(Debug, Clone)]
pub struct PartProgram {
    features: Vec<Feature>,
}

impl PartProgram {
    /// Number of sketches (= extrudes).
    pub fn sketch_count(&self) -> usize {
        self.features.len()
    }

    /// The program in the GenCAD dialect, byte for byte as the dataset writes it.
    pub fn code(&self) -> String {
        let mut out = String::from("import cadquery as cq\n");
        let mut loop_no = 0;
        for (n, f) in self.features.iter().enumerate() {
            let v3 = |v: Vec3| format!("cq.Vector({}, {}, {})", repr(v[0]), repr(v[1]), repr(v[2]));
            let _ = writeln!(out, "# Generating a workplane for sketch {n}");
            let _ = writeln!(
                out,
                "wp_sketch{n} = cq.Workplane(cq.Plane({}, {}, {}))",
                v3(f.plane.origin),
                v3(f.plane.x_dir),
                v3(f.plane.normal)
            );
            let unit = f.unit();
            let mut adds = String::new();
            for l in &f.profile.loops {
                let _ = writeln!(out, "loop{loop_no}=wp_sketch{n}{}", loop_code(l, unit));
                let _ = write!(adds, ".add(loop{loop_no})");
                loop_no += 1;
            }
            let both = if f.both { ", both=True" } else { "" };
            let _ = writeln!(
                out,
                "solid{n}=wp_sketch{n}{adds}.extrude({}{both})",
                repr(f.distance)
            );
            let _ = match f.join {
                Join::First => writeln!(out, "solid=solid{n}"),
                Join::Union => writeln!(out, "solid=solid.union(solid{n})"),
                Join::Cut => writeln!(out, "solid=solid.cut(solid{n})"),
            };
        }
        out
    }
}

/// Grid units to a coordinate, computed as the dataset does: `k * (s / 95)`.
fn coord(k: f64, unit: f64) -> f64 {
    k * unit
}

fn pt(p: P, unit: f64) -> String {
    format!("{}, {}", repr(coord(p.0, unit)), repr(coord(p.1, unit)))
}

fn seg_code(s: &Seg, unit: f64) -> String {
    match s {
        Seg::Line(p) => format!(".lineTo({})", pt(*p, unit)),
        Seg::Arc {
            centre,
            radius,
            mid_angle,
            to,
        } => {
            let r = coord(*radius, unit);
            let mid = (
                coord(centre.0, unit) + r * mid_angle.cos(),
                coord(centre.1, unit) + r * mid_angle.sin(),
            );
            format!(
                ".threePointArc(({}, {}), ({}))",
                repr(mid.0),
                repr(mid.1),
                pt(*to, unit)
            )
        }
    }
}

/// One `loopK=` right-hand side. A path whose first segment is a line starts at that line's
/// end and lets `close()` draw it back; one that starts with an arc starts at its start point
/// and lets `close()` draw a closing line; these are the two shapes the real code has.
fn loop_code(l: &Loop, unit: f64) -> String {
    match l {
        Loop::Circle { centre, radius } => {
            format!(
                ".moveTo({}).circle({})",
                pt(*centre, unit),
                repr(coord(*radius, unit))
            )
        }
        Loop::Path { start, segs } => {
            let mut s = String::new();
            match segs.first() {
                Some(Seg::Line(p)) => {
                    let _ = write!(s, ".moveTo({})", pt(*p, unit));
                    for seg in &segs[1..] {
                        s.push_str(&seg_code(seg, unit));
                    }
                }
                _ => {
                    let _ = write!(s, ".moveTo({})", pt(*start, unit));
                    let last_is_line = matches!(segs.last(), Some(Seg::Line(_)));
                    let n = if last_is_line {
                        segs.len() - 1
                    } else {
                        segs.len()
                    };
                    for seg in &segs[..n] {
                        s.push_str(&seg_code(seg, unit));
                    }
                }
            }
            s.push_str(".close()");
            s
        }
    }
}

/// Outline families a DeepCAD user draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outline {
    Rect,
    LShape,
    TShape,
    UShape,
    Steps,
    Polygon,
    Slot,
    Rounded,
    Tab,
    Circle,
}

fn path(points: &[P]) -> Loop {
    let mut segs: Vec<Seg> = points[1..].iter().map(|p| Seg::Line(*p)).collect();
    segs.push(Seg::Line(points[0]));
    Loop::Path {
        start: points[0],
        segs,
    }
}

/// An integer in [lo, hi] grid units.
fn g(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    rng.int(lo.ceil() as i64, hi.floor().max(lo.ceil()) as i64) as f64
}

/// The outer loop of an outline in a box whose larger side is 95 grid units, plus the box
/// (x0, y0, x1, y1) of the region where holes may go.
fn outline(rng: &mut Rng, kind: Outline) -> (Loop, Option<Rect4>, Rect4) {
    let long = GRID;
    let short = g(rng, 12.0, GRID);
    let (w, h) = if rng.chance(0.5) {
        (long, short)
    } else {
        (short, long)
    };
    match kind {
        Outline::Rect => (
            path(&[(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]),
            Some((0.0, 0.0, w, h)),
            (0.0, 0.0, w, h),
        ),
        Outline::LShape => {
            let a = g(rng, h * 0.2, h * 0.6);
            let b = g(rng, w * 0.2, w * 0.6);
            (
                path(&[(0.0, 0.0), (w, 0.0), (w, a), (b, a), (b, h), (0.0, h)]),
                None,
                (0.0, 0.0, w, a),
            )
        }
        Outline::TShape => {
            let a = g(rng, h * 0.2, h * 0.5);
            let c1 = g(rng, w * 0.2, w * 0.4);
            let c2 = w - g(rng, w * 0.2, w * 0.4);
            (
                path(&[
                    (0.0, 0.0),
                    (w, 0.0),
                    (w, a),
                    (c2, a),
                    (c2, h),
                    (c1, h),
                    (c1, a),
                    (0.0, a),
                ]),
                None,
                (0.0, 0.0, w, a),
            )
        }
        Outline::UShape => {
            let t = g(rng, w * 0.1, w * 0.35);
            let d = g(rng, h * 0.3, h * 0.85);
            (
                path(&[
                    (0.0, 0.0),
                    (t, 0.0),
                    (t, d),
                    (w - t, d),
                    (w - t, 0.0),
                    (w, 0.0),
                    (w, h),
                    (0.0, h),
                ]),
                None,
                (0.0, d, w, h),
            )
        }
        Outline::Steps => {
            let a = g(rng, h * 0.2, h * 0.45);
            let b = g(rng, h * 0.55, h * 0.8);
            let c = g(rng, w * 0.3, w * 0.5);
            let d = g(rng, w * 0.6, w * 0.85);
            (
                path(&[
                    (0.0, 0.0),
                    (w, 0.0),
                    (w, a),
                    (d, a),
                    (d, b),
                    (c, b),
                    (c, h),
                    (0.0, h),
                ]),
                None,
                (0.0, 0.0, w, a),
            )
        }
        Outline::Polygon => {
            let pts: Vec<P> = match rng.int(0, 4) {
                0 => vec![(0.0, 0.0), (w, 0.0), (g(rng, 0.0, w), h)],
                1 => {
                    let c = g(rng, w * 0.1, w * 0.4);
                    vec![(0.0, 0.0), (w, 0.0), (w - c, h), (c, h)]
                }
                2 => vec![
                    (0.0, 0.0),
                    (w, 0.0),
                    (g(rng, w * 0.2, w * 0.8), h),
                    (0.0, h),
                ],
                _ => {
                    let n = rng.pick(&[5usize, 6, 6, 8]);
                    regular_polygon(n)
                }
            };
            let n = pts.len() as f64;
            let (cx, cy) = pts
                .iter()
                .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
            let (bw, bh) = (w.min(GRID) * 0.12, h.min(GRID) * 0.12);
            (path(&pts), None, (cx - bw, cy - bh, cx + bw, cy + bh))
        }
        Outline::Slot => {
            let r = (h.min(w) / 2.0).floor().max(3.0);
            let len = (w.max(h) - 2.0 * r).max(4.0);
            let segs = vec![
                Seg::Line((len, 0.0)),
                Seg::Arc {
                    centre: (len, r),
                    radius: r,
                    mid_angle: 0.0,
                    to: (len, 2.0 * r),
                },
                Seg::Line((0.0, 2.0 * r)),
                Seg::Arc {
                    centre: (0.0, r),
                    radius: r,
                    mid_angle: PI,
                    to: (0.0, 0.0),
                },
            ];
            (
                Loop::Path {
                    start: (0.0, 0.0),
                    segs,
                },
                Some((-r * 0.3, r * 0.4, len + r * 0.3, r * 1.6)),
                (0.0, 0.0, len, 2.0 * r),
            )
        }
        Outline::Rounded => {
            let f = g(rng, 3.0, w.min(h) * 0.3);
            (
                rounded_rect((0.0, 0.0, w, h), f),
                Some((0.0, 0.0, w, h)),
                (0.0, f, w, h - f),
            )
        }
        Outline::Tab => {
            let r = (w / 2.0).floor();
            let w = 2.0 * r;
            let hh = g(rng, r * 0.3, (h - r).max(r * 0.3));
            let segs = vec![
                Seg::Line((w, 0.0)),
                Seg::Line((w, hh)),
                Seg::Arc {
                    centre: (r, hh),
                    radius: r,
                    mid_angle: FRAC_PI_2,
                    to: (0.0, hh),
                },
                Seg::Line((0.0, 0.0)),
            ];
            (
                Loop::Path {
                    start: (0.0, 0.0),
                    segs,
                },
                Some((r * 0.5, hh * 0.5, r * 1.5, hh + r * 0.5)),
                (0.0, 0.0, w, hh),
            )
        }
        Outline::Circle => {
            let r = (GRID / 2.0).floor();
            let i = r * 0.3;
            (
                Loop::Circle {
                    centre: (r, r),
                    radius: r,
                },
                Some((0.0, 0.0, 2.0 * r, 2.0 * r)),
                (i, i, 2.0 * r - i, 2.0 * r - i),
            )
        }
    }
}

/// A rectangle (x0, y0, x1, y1) with corners rounded to radius f, starting at its bottom
/// edge's first tangent point, counter-clockwise.
fn rounded_rect((x0, y0, x1, y1): Rect4, f: f64) -> Loop {
    let segs = vec![
        Seg::Line((x1 - f, y0)),
        Seg::Arc {
            centre: (x1 - f, y0 + f),
            radius: f,
            mid_angle: -FRAC_PI_4,
            to: (x1, y0 + f),
        },
        Seg::Line((x1, y1 - f)),
        Seg::Arc {
            centre: (x1 - f, y1 - f),
            radius: f,
            mid_angle: FRAC_PI_4,
            to: (x1 - f, y1),
        },
        Seg::Line((x0 + f, y1)),
        Seg::Arc {
            centre: (x0 + f, y1 - f),
            radius: f,
            mid_angle: 3.0 * FRAC_PI_4,
            to: (x0, y1 - f),
        },
        Seg::Line((x0, y0 + f)),
        Seg::Arc {
            centre: (x0 + f, y0 + f),
            radius: f,
            mid_angle: -3.0 * FRAC_PI_4,
            to: (x0 + f, y0),
        },
    ];
    Loop::Path {
        start: (x0 + f, y0),
        segs,
    }
}

/// A regular n-gon on the grid, its lowest-leftmost vertex first, counter-clockwise.
fn regular_polygon(n: usize) -> Vec<P> {
    let r = GRID / 2.0;
    let offset = -FRAC_PI_2 - PI / n as f64;
    let mut pts: Vec<P> = (0..n)
        .map(|i| {
            let a = offset + 2.0 * PI * i as f64 / n as f64;
            ((r + r * a.cos()).round(), (r + r * a.sin()).round())
        })
        .collect();
    let first = (0..n)
        .min_by(|&a, &b| {
            pts[a]
                .1
                .total_cmp(&pts[b].1)
                .then(pts[a].0.total_cmp(&pts[b].0))
        })
        .unwrap_or(0);
    pts.rotate_left(first);
    pts
}

/// Hole circles inside the box (x0, y0, x1, y1); `round` says the outline is a disc.
fn holes(rng: &mut Rng, region: (f64, f64, f64, f64), round: bool) -> Vec<Loop> {
    let (x0, y0, x1, y1) = region;
    let (cw, ch) = (x1 - x0, y1 - y0);
    let small = cw.min(ch);
    if small < 12.0 {
        return Vec::new();
    }
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let circle = |c: P, r: f64| Loop::Circle {
        centre: c,
        radius: r,
    };
    if round {
        let r_out = small / 2.0;
        return match rng.int(0, 2) {
            0 => vec![circle((cx, cy), g(rng, r_out * 0.3, r_out * 0.85))],
            _ => {
                let n = rng.pick(&[3usize, 4, 4, 4, 6]);
                let ring = (r_out * rng.range(0.5, 0.7)).round();
                let r = g(
                    rng,
                    2.0,
                    (ring * PI / n as f64 * 0.5)
                        .min(r_out - ring - 3.0)
                        .max(2.0),
                );
                let mut out = Vec::new();
                if rng.chance(0.5) {
                    out.push(circle((cx, cy), g(rng, 2.0, (ring - r - 3.0).max(2.0))));
                }
                for i in 0..n {
                    let a = 2.0 * PI * i as f64 / n as f64;
                    out.push(circle(
                        ((cx + ring * a.cos()).round(), (cy + ring * a.sin()).round()),
                        r,
                    ));
                }
                out
            }
        };
    }
    let r = g(rng, 2.0, (small * 0.18).max(2.0));
    let m = r + g(rng, 3.0, (small * 0.2).max(3.0));
    match rng.weighted(&[4.0, 3.0, 2.5, 0.5]) {
        0 => vec![circle((cx.round(), cy.round()), g(rng, 2.0, small * 0.3))],
        1 => {
            if cw >= ch {
                vec![
                    circle((x0 + m, cy.round()), r),
                    circle((x1 - m, cy.round()), r),
                ]
            } else {
                vec![
                    circle((cx.round(), y0 + m), r),
                    circle((cx.round(), y1 - m), r),
                ]
            }
        }
        2 => vec![
            circle((x0 + m, y0 + m), r),
            circle((x1 - m, y0 + m), r),
            circle((x1 - m, y1 - m), r),
            circle((x0 + m, y1 - m), r),
        ],
        _ => {
            let mut out = Vec::new();
            for i in 0..3 {
                let y = y0 + m + (ch - 2.0 * m) * i as f64 / 2.0;
                out.push(circle((x0 + m, y.round()), r));
                out.push(circle((x1 - m, y.round()), r));
            }
            out
        }
    }
}

/// A profile: an outline, maybe holes, maybe a concentric bore for discs; with `wall_chance`
/// a rectangle, rounded rectangle or disc is hollowed to a thin wall (tubes and frames).
fn profile(
    rng: &mut Rng,
    weights: &[(Outline, f64)],
    hole_chance: f64,
    wall_chance: f64,
) -> Profile {
    let kinds: Vec<f64> = weights.iter().map(|(_, w)| *w).collect();
    let kind = weights[rng.weighted(&kinds)].0;
    let (outer, region, material) = outline(rng, kind);
    let walled = matches!(kind, Outline::Rect | Outline::Rounded | Outline::Circle)
        && rng.chance(wall_chance);
    if walled {
        if let Some((inner, strip)) = wall(rng, &outer) {
            return Profile {
                loops: vec![outer, inner],
                material: strip,
            }
            .anchored();
        }
    }
    let mut loops = vec![outer];
    if let Some(region) = region {
        if rng.chance(hole_chance) {
            loops.extend(holes(rng, region, kind == Outline::Circle));
        }
    }
    Profile { loops, material }.anchored()
}

/// The inner loop that leaves a thin wall of even thickness inside `outer` (a rectangle, a
/// rounded rectangle or a circle), and a box inside that wall; none for other outlines.
fn wall(rng: &mut Rng, outer: &Loop) -> Option<(Loop, Rect4)> {
    let ((x0, y0), (x1, y1)) = outer.bounds();
    let small = (x1 - x0).min(y1 - y0);
    // Walls of 2 to ~15% of the short side: DeepCAD's tubes, channels and frames are thin.
    let t = g(rng, 2.0, (small * 0.15).max(2.0));
    if small - 2.0 * t < 4.0 {
        return None;
    }
    match outer {
        Loop::Circle { centre, radius } => Some((
            Loop::Circle {
                centre: *centre,
                radius: radius - t,
            },
            (
                centre.0 - radius + t * 0.2,
                centre.1 - 1.0,
                centre.0 - radius + t * 0.8,
                centre.1 + 1.0,
            ),
        )),
        Loop::Path { segs, .. } => {
            let fillet = segs.iter().find_map(|s| match s {
                Seg::Arc { radius, .. } => Some(*radius),
                Seg::Line(_) => None,
            });
            let inner = (x0 + t, y0 + t, x1 - t, y1 - t);
            let l = match fillet {
                Some(f) if f - t >= 2.0 => rounded_rect(inner, f - t),
                _ => path(&[
                    (inner.0, inner.1),
                    (inner.2, inner.1),
                    (inner.2, inner.3),
                    (inner.0, inner.3),
                ]),
            };
            Some((l, (x0, y0, x1, y0 + t)))
        }
    }
}

const BASE_OUTLINES: [(Outline, f64); 10] = [
    (Outline::Rect, 40.0),
    (Outline::LShape, 4.5),
    (Outline::TShape, 2.0),
    (Outline::UShape, 3.0),
    (Outline::Steps, 1.5),
    (Outline::Polygon, 3.5),
    (Outline::Slot, 4.5),
    (Outline::Rounded, 4.5),
    (Outline::Tab, 3.5),
    (Outline::Circle, 15.0),
];

const FEATURE_OUTLINES: [(Outline, f64); 9] = [
    (Outline::Rect, 47.0),
    (Outline::Circle, 19.0),
    (Outline::Slot, 5.0),
    (Outline::Polygon, 3.5),
    (Outline::Rounded, 4.0),
    (Outline::LShape, 4.0),
    (Outline::UShape, 2.0),
    (Outline::Tab, 4.0),
    (Outline::Steps, 2.0),
];

/// Sketch count weights for 1..=8 sketches (docs/gencad.md: 57 / 19 / 12 / 12 over four to eight);
/// one sketch is drawn a little more often because the near-duplicate filter mostly drops
/// one-sketch parts (the synth pipeline's share quota holds the accepted rows to the real
/// shares).
const SKETCH_COUNTS: [f64; 8] = [57.5, 18.8, 11.8, 4.85, 3.2, 2.1, 1.45, 0.95];

/// Probability that a base sketch is hollowed to a thin wall (a tube, a frame, a channel).
const WALL_CHANCE: f64 = 0.12;

/// Probability that a boss's sketch is hollowed (a sleeve or a rim on the part).
const FEATURE_WALL_CHANCE: f64 = 0.06;

/// Probability that a cut is a groove across a whole face.
const GROOVE_CHANCE: f64 = 0.3;

/// Probability that a further sketch makes a separate body beside the part (DeepCAD holds
/// many parts of two to four disjoint bodies joined by `union`).
const SEPARATE_CHANCE: f64 = 0.22;

/// Probability that the second sketch hollows the base from its top face, leaving a floor
/// and thin walls (trays, boxes, enclosures, cups).
const POCKET_CHANCE: f64 = 0.12;

/// Probability that a separate body repeats the base sketch (a row of equal bodies).
const REPEAT_CHANCE: f64 = 0.5;

/// Probability that an extrude is symmetric (both=True): ~9 per 100 parts of ~1.95 sketches.
const BOTH_CHANCE: f64 = 0.046;

/// Samples DeepCAD-style parts in the GenCAD dialect.
#[derive(Debug, Clone)]
pub struct ProgramSampler {
    seed: u64,
}

impl ProgramSampler {
    /// A sampler whose n-th program depends only on (seed, n).
    pub fn new(seed: u64) -> Self {
        ProgramSampler { seed }
    }

    /// The n-th program of this seed.
    pub fn sample(&self, n: u64) -> PartProgram {
        let mut rng = Rng::new(self.seed, n);
        let count = rng.weighted(&SKETCH_COUNTS) + 1;
        let base = base_feature(&mut rng);
        let mut body = base.world_box();
        let mut solids = vec![base.material_box()];
        let mut features = vec![base];
        while features.len() < count {
            // Attach to the base most of the time, else to an earlier boss.
            let on = if rng.chance(0.6) {
                0
            } else {
                rng.int(0, solids.len() as i64 - 1) as usize
            };
            let special = if features.len() == 1 && rng.chance(POCKET_CHANCE) {
                pocket_feature(&mut rng, &features[0])
            } else if rng.chance(SEPARATE_CHANCE) {
                separate_feature(&mut rng, &features[0], body)
            } else {
                None
            };
            let f = match special {
                Some(f) => f,
                None => secondary_feature(&mut rng, &features[0], solids[on], body),
            };
            if f.join == Join::Union {
                let (lo, hi) = f.world_box();
                for i in 0..3 {
                    body.0[i] = body.0[i].min(lo[i]);
                    body.1[i] = body.1[i].max(hi[i]);
                }
                solids.push(f.material_box());
            }
            features.push(f);
        }
        PartProgram { features }
    }
}

fn base_orientation(rng: &mut Rng) -> Orientation {
    match rng.weighted(&[50.0, 25.0, 10.0, 15.0]) {
        0 => Orientation::TOP,
        1 => Orientation::FRONT,
        2 => Orientation::RIGHT,
        _ => {
            let all: Vec<Orientation> = Orientation::all().collect();
            rng.pick(&all)
        }
    }
}

fn base_feature(rng: &mut Rng) -> Feature {
    let orientation = base_orientation(rng);
    let profile = profile(rng, &BASE_OUTLINES, 0.26, WALL_CHANCE);
    let scale = if rng.chance(0.55) {
        1.5
    } else {
        q128(rng.range(0.4, 1.5))
    };
    // Extrude length over sketch size: sheets, plates, blocks, and bars / rods / tubes
    // longer than their section (those on a smaller section, as DeepCAD's unit box allows).
    let (scale, ratio) = match rng.weighted(&[7.0, 40.0, 31.0, 15.0, 7.0]) {
        0 => (scale, rng.range(0.006, 0.03)),
        1 => (scale, rng.range(0.03, 0.2)),
        2 => (scale, rng.range(0.2, 0.6)),
        3 => (scale, rng.range(0.6, 1.0)),
        _ => (q128(rng.range(0.2, 0.6)), rng.range(1.3, 4.5)),
    };
    let ((u0, v0), (u1, v1)) = profile.bounds();
    let unit = scale / GRID;
    // Centre the sketch on the world origin, as DeepCAD's normalisation roughly does.
    let centre = ((u0 + u1) / 2.0 * unit, (v0 + v1) / 2.0 * unit);
    let probe = SketchPlane::new(orientation, [0.0; 3]);
    let lifted = probe.to_world(-centre.0, -centre.1, 0.0);
    let origin = lifted.map(q128);
    let mut distance = q128((scale * ratio).min(1.5)).max(2.0 / 128.0);
    let both = rng.chance(BOTH_CHANCE);
    if both {
        distance = q128(distance / 2.0).max(1.0 / 128.0);
    }
    if rng.chance(0.12) {
        distance = -distance;
    }
    Feature {
        plane: SketchPlane::new(orientation, origin),
        scale,
        profile,
        distance,
        both,
        join: Join::First,
    }
}

/// A boss or a cut attached to `solid` (a box known to be material): a boss starts on one of
/// its faces (or on the base sketch plane, taller than the base) and grows outward; a cut
/// starts on the body's outer box face and goes in, over the solid.
fn secondary_feature(
    rng: &mut Rng,
    base: &Feature,
    solid: (Vec3, Vec3),
    body: (Vec3, Vec3),
) -> Feature {
    // A little over a quarter of further sketches cut, as in the real split, counting the
    // separate bodies (all unions).
    let join = if rng.chance(0.25) {
        Join::Cut
    } else {
        Join::Union
    };
    // A groove or channel: a narrow rectangle cut across the whole face.
    let groove = join == Join::Cut && rng.chance(GROOVE_CHANCE);
    let mut profile = profile(rng, &FEATURE_OUTLINES, 0.13, FEATURE_WALL_CHANCE);
    let base_axis = dominant_axis(base.plane.normal);
    // Direction the base grows along its normal (+1 / -1 in world terms of that axis).
    let base_growth =
        base.plane.normal[base_axis].signum() * if base.distance >= 0.0 { 1.0 } else { -1.0 };
    let coplanar = join == Join::Union && !base.both && rng.chance(0.35);
    let (orientation, axis, outward) = if coplanar {
        (base.plane.orientation, base_axis, base_growth)
    } else {
        let axis = if rng.chance(0.5) {
            base_axis
        } else {
            rng.int(0, 2) as usize
        };
        let outward = if rng.chance(0.5) { 1.0 } else { -1.0 };
        let preferred = [Orientation::TOP, Orientation::FRONT, Orientation::RIGHT]
            .into_iter()
            .find(|o| dominant_axis(o.axes().1) == axis);
        let o = match preferred {
            Some(p) if rng.chance(0.75) => p,
            _ => {
                let choices: Vec<Orientation> = Orientation::all()
                    .filter(|o| dominant_axis(o.axes().1) == axis)
                    .collect();
                rng.pick(&choices)
            }
        };
        (o, axis, outward)
    };
    let probe = SketchPlane::new(orientation, [0.0; 3]);
    let (x, y, n) = (probe.x_dir, probe.y_dir(), probe.normal);
    let (su0, su1) = span(solid, x);
    let (sv0, sv1) = span(solid, y);
    let (bw0, bw1) = span(body, n);
    let (face_w, face_h) = ((su1 - su0).max(1e-3), (sv1 - sv0).max(1e-3));
    let fill = if join == Join::Cut {
        rng.range(0.2, 0.7)
    } else {
        rng.range(0.3, 1.0)
    };
    let mut scale = q128(face_w.min(face_h) * fill).clamp(2.0 / 128.0, 2.0);
    if groove {
        // Long side across the face's longer extent, a little past both ends.
        let width = g(rng, 6.0, 30.0);
        let (w, h) = if face_w >= face_h {
            (GRID, width)
        } else {
            (width, GRID)
        };
        profile = Profile {
            loops: vec![path(&[(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)])],
            material: (0.0, 0.0, w, h),
        };
        scale = q128(face_w.max(face_h) * 1.02).clamp(2.0 / 128.0, 2.0);
    }
    let unit = scale / GRID;
    // Put the centre of the new profile's material box somewhere inside the solid's face.
    let (m0, m1, m2, m3) = profile.material;
    let (mu, mv) = ((m0 + m2) / 2.0 * unit, (m1 + m3) / 2.0 * unit);
    let target = |rng: &mut Rng, lo: f64, hi: f64| {
        if rng.chance(0.5) {
            (lo + hi) / 2.0
        } else {
            lo + (hi - lo) * rng.range(0.2, 0.8)
        }
    };
    let mut a = target(rng, su0, su1) - mu;
    let mut b = target(rng, sv0, sv1) - mv;
    if groove {
        // Centred along the groove, so that it runs out at both ends.
        if face_w >= face_h {
            a = (su0 + su1) / 2.0 - mu;
        } else {
            b = (sv0 + sv1) / 2.0 - mv;
        }
    }
    let n_sign = n[axis].signum();
    let out_dir = outward * n_sign; // +1 when the plane normal points out of the part there
    let body_depth = bw1 - bw0;
    let (plane_at, distance) = match join {
        Join::Union if coplanar => {
            let base_depth = (base.distance).abs();
            let at = dot(base.plane.origin, n);
            (
                at,
                q128(base_depth * rng.range(1.2, 2.2)).max(2.0 / 128.0) * out_dir,
            )
        }
        Join::Union => {
            let (s0, s1) = span(solid, n);
            let at = if out_dir > 0.0 { s1 } else { s0 };
            let h = q128(body_depth.max(0.1) * rng.range(0.15, 0.7)).max(2.0 / 128.0);
            (at, h * out_dir)
        }
        _ => {
            let at = if out_dir > 0.0 { bw1 } else { bw0 };
            let d = if rng.chance(0.45) {
                body_depth
            } else {
                body_depth * rng.range(0.2, 0.8)
            };
            (at, -q128(d).max(2.0 / 128.0) * out_dir)
        }
    };
    let both = rng.chance(BOTH_CHANCE);
    let origin: Vec3 = std::array::from_fn(|i| a * x[i] + b * y[i] + plane_at * n[i]);
    Feature {
        plane: SketchPlane::new(orientation, origin.map(q128)),
        scale,
        profile,
        distance,
        both,
        join,
    }
}

/// A cut of the base's outline inset to a thin wall, from the base's far face down to a
/// floor; none when the base is symmetric or its outline cannot be hollowed evenly.
fn pocket_feature(rng: &mut Rng, base: &Feature) -> Option<Feature> {
    if base.both || base.profile.loops.len() != 1 {
        return None;
    }
    let (inner, _) = wall(rng, &base.profile.loops[0])?;
    let depth = q128(base.distance.abs() * rng.range(0.55, 0.92));
    if depth < 1.0 / 128.0 || depth > base.distance.abs() - 1.0 / 128.0 {
        return None;
    }
    let n = base.plane.normal;
    let top: Vec3 = std::array::from_fn(|i| q128(base.plane.origin[i] + base.distance * n[i]));
    Some(Feature {
        plane: SketchPlane::new(base.plane.orientation, top),
        scale: base.scale,
        profile: Profile {
            material: base.profile.material,
            loops: vec![inner],
        },
        distance: -base.distance.signum() * depth,
        both: false,
        join: Join::Cut,
    })
}

/// A body on the base's sketch plane beside everything so far, with a gap: either the base
/// sketch again (a row of equal bodies) or a new outline of comparable size; none when it
/// would leave the box |x|, |y|, |z| <= 1 that DeepCAD's normalised parts stay in.
fn separate_feature(rng: &mut Rng, base: &Feature, body: (Vec3, Vec3)) -> Option<Feature> {
    let mut f = if rng.chance(REPEAT_CHANCE) {
        Feature {
            join: Join::Union,
            ..base.clone()
        }
    } else {
        let profile = profile(rng, &FEATURE_OUTLINES, 0.13, FEATURE_WALL_CHANCE);
        let scale = q128(base.scale * rng.range(0.3, 1.0)).max(4.0 / 128.0);
        let distance = if rng.chance(0.5) {
            base.distance
        } else {
            q128(base.distance * rng.range(0.3, 2.0)).max(2.0 / 128.0) * base.distance.signum()
        };
        Feature {
            plane: base.plane,
            scale,
            profile,
            distance,
            both: base.both,
            join: Join::Union,
        }
    };
    // Slide along one of the sketch plane's axes until the new body clears the part.
    let dir = if rng.chance(0.5) {
        base.plane.x_dir
    } else {
        base.plane.y_dir()
    };
    let sign = if rng.chance(0.5) { 1.0 } else { -1.0 };
    let d: Vec3 = dir.map(|c| c * sign);
    let (_, body_hi) = span(body, d);
    let (own_lo, own_hi) = span(f.world_box(), d);
    let gap = q128((own_hi - own_lo).max(1e-3) * rng.range(0.15, 0.8)).max(3.0 / 128.0);
    let shift = body_hi - own_lo + gap;
    let origin: Vec3 = std::array::from_fn(|i| q128(f.plane.origin[i] + shift * d[i]));
    f.plane = SketchPlane::new(f.plane.orientation, origin);
    let (lo, hi) = f.world_box();
    (lo.iter().chain(&hi).all(|c| c.abs() <= 1.0)).then_some(f)
}

fn dominant_axis(v: Vec3) -> usize {
    (0..3)
        .max_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs()))
        .unwrap_or(2)
}

/// The extent (min, max) of a world box along direction `d`.
fn span(b: (Vec3, Vec3), d: Vec3) -> (f64, f64) {
    box_corners(b)
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| {
            let t = dot(*c, d);
            (lo.min(t), hi.max(t))
        })
}

fn box_corners((lo, hi): (Vec3, Vec3)) -> [Vec3; 8] {
    std::array::from_fn(|i| {
        [
            if i & 1 == 0 { lo[0] } else { hi[0] },
            if i & 2 == 0 { lo[1] } else { hi[1] },
            if i & 4 == 0 { lo[2] } else { hi[2] },
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_programs_and_seeds_differ() {
        let a = ProgramSampler::new(3);
        let b = ProgramSampler::new(3);
        let c = ProgramSampler::new(4);
        for n in 0..20 {
            assert_eq!(a.sample(n).code(), b.sample(n).code());
        }
        let differ = (0..20)
            .filter(|&n| a.sample(n).code() != c.sample(n).code())
            .count();
        assert!(
            differ >= 18,
            "seeds 3 and 4 share {} of 20 programs",
            20 - differ
        );
    }

    #[test]
    fn code_has_the_dialect_block_layout() {
        let s = ProgramSampler::new(11);
        for n in 0..200 {
            let p = s.sample(n);
            let code = p.code();
            let lines: Vec<&str> = code.lines().collect();
            assert_eq!(lines[0], "import cadquery as cq");
            assert!(code.ends_with('\n'));
            let mut sketch = 0;
            let mut loop_no = 0;
            let mut i = 1;
            while i < lines.len() {
                assert_eq!(
                    lines[i],
                    format!("# Generating a workplane for sketch {sketch}")
                );
                assert!(lines[i + 1].starts_with(&format!(
                    "wp_sketch{sketch} = cq.Workplane(cq.Plane(cq.Vector("
                )));
                i += 2;
                while lines[i].starts_with("loop") {
                    let head = format!("loop{loop_no}=wp_sketch{sketch}.moveTo(");
                    assert!(lines[i].starts_with(&head), "{}", lines[i]);
                    assert!(lines[i].ends_with(".close()") || lines[i].contains(".circle("));
                    loop_no += 1;
                    i += 1;
                }
                assert!(lines[i].starts_with(&format!("solid{sketch}=wp_sketch{sketch}.add(")));
                let join = if sketch == 0 {
                    "solid=solid0".to_string()
                } else {
                    "solid=solid.".to_string()
                };
                assert!(lines[i + 1].starts_with(&join), "{}", lines[i + 1]);
                sketch += 1;
                i += 2;
            }
            assert_eq!(sketch, p.sketch_count());
        }
    }

    #[test]
    fn numbers_are_on_deepcad_grids() {
        let s = ProgramSampler::new(5);
        for n in 0..200 {
            for f in s.sample(n).features {
                for c in f.plane.origin {
                    assert_eq!((c * 128.0).fract(), 0.0, "origin {c} off the 1/128 grid");
                    assert!(c.abs() <= 2.0, "origin {c} far outside the unit box");
                }
                assert_eq!((f.distance * 128.0).fract(), 0.0, "extrude {}", f.distance);
                assert_ne!(f.distance, 0.0);
                assert_eq!((f.scale * 128.0).fract(), 0.0, "scale {}", f.scale);
                assert!(f.scale > 0.0 && f.scale <= 2.0);
            }
        }
    }

    #[test]
    fn rectangle_prints_like_the_dataset() {
        let l = path(&[(0.0, 0.0), (66.0, 0.0), (66.0, 95.0), (0.0, 95.0)]);
        assert_eq!(
            loop_code(&l, 1.5 / GRID),
            ".moveTo(1.0421052631578949, 0.0).lineTo(1.0421052631578949, 1.5).lineTo(0.0, 1.5).lineTo(0.0, 0.0).close()"
        );
        let c = Loop::Circle {
            centre: (33.0, 11.0),
            radius: 3.0,
        };
        assert_eq!(
            loop_code(&c, 1.5 / GRID),
            ".moveTo(0.5210526315789474, 0.1736842105263158).circle(0.04736842105263158)"
        );
    }
}
#[cfg(test)]
mod statistics {
    use crate::dialect::{DialectStats, REAL};

    /// Before execution filters (which drop ~8% of candidates, more of them multi-sketch and
    /// near-duplicate discs) the programs must already be near the real figures; the corpus
    /// itself is checked with `rag dataset info` (README).
    #[test]
    fn sampled_programs_are_near_the_real_statistics() {
        let s = super::ProgramSampler::new(1);
        let mut st = DialectStats::default();
        for n in 0..4000 {
            let code = s.sample(n).code();
            let parsed = dialect::parse(&code).unwrap_or_else(|e| panic!("program {n}: {e}"));
            assert_eq!(parsed.code(), code, "program {n} prints back differently");
            st.add(&code);
        }
        assert_eq!(st.not_dialect, 0);
        for (row, (name, real)) in st.compare().iter().zip(REAL) {
            println!("{name:32} {:8.1} {real:8.1}", row.ours);
            let tolerance = if name.starts_with('%') {
                5.0
            } else {
                0.2 * real
            };
            assert!(
                (row.ours - real).abs() <= tolerance,
                "{name}: {} against {real}",
                row.ours
            );
        }
        assert!(
            st.max_length() < 8000,
            "longest program {} chars",
            st.max_length()
        );
    }
}
