//! Fitted search (analysis by synthesis): the query image is a precise measurement of the
//! part, so retrieved programs are taken as structures and their numbers fitted to it with
//! the native renderer, thousands of renders per image instead of the tens CadQuery allows.
//!
//! The score compares a low-resolution face render with the query reduced to the same grid:
//! per pixel, the foreground coverage difference plus, where both see a face, the grey-level
//! difference (the face's orientation under the headlight), over the union of foregrounds.
//! The search is a coordinate pattern search over each sketch's origin, scale and extrude and
//! each circle's radius, first-improvement with step halving, within a render and a time
//! budget. The best few fitted programs become candidates that the CadQuery judge verifies.

use std::time::Instant;

use dialect::{Loop, Op, Program, Role, Seg};
use evaluator::style::{EDGE_BELOW, FOREGROUND_BELOW};
use image::RgbImage;
use serde::Serialize;

/// Grey levels that count as one full pixel of error (faces differ by 20 to 50 levels).
const GREY_SCALE: f64 = 50.0;

/// Budgets and settings of the fitted search.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FitOptions {
    /// Retrieved programs taken as structures (scored as they are).
    pub structures: usize,
    /// Best-scoring structures whose numbers are fitted.
    pub fitted: usize,
    /// Renders each fitted structure may use.
    pub budget: usize,
    /// Wall-clock seconds for the whole search.
    pub seconds: f64,
    /// Image side of the comparison, in pixels.
    pub size: u32,
    /// Weight of the grey-level term against the coverage term.
    pub grey_weight: f64,
    /// Fitted programs handed on as candidates.
    pub keep: usize,
    /// Also move straight edges one by one (`Level` knobs): better on synthetic rows, not on
    /// the real dev set (docs/native-renderer-and-fitted-search.md), so off by default.
    pub levels: bool,
    /// How selection chooses among the executed candidates when the fitted search runs.
    pub choose: Choose,
    /// Image side of the native score that `Choose::Native` compares at.
    pub choose_size: u32,
}

/// How the final answer is chosen among the candidates that ran in CadQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Choose {
    /// By the render judge's score (encoder cosine, mask IoU, edge F1), as without fitting.
    Judge,
    /// By the native score (coverage and face grey levels) at `choose_size`.
    Native,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            structures: 50,
            fitted: 8,
            budget: 250,
            seconds: 6.0,
            size: 224,
            grey_weight: 0.5,
            keep: 3,
            levels: false,
            choose: Choose::Judge,
            choose_size: 224,
        }
    }
}

/// One fitted program.
#[derive(Debug, Clone, Serialize)]
pub struct Fitted {
    pub code: String,
    /// 1-based rank of the retrieved program it started from, and its corpus id.
    pub rank: usize,
    pub id: String,
    /// Native score before and after fitting (1 is a perfect match).
    pub from_score: f64,
    pub score: f64,
    /// The structural move it started with ("as retrieved", "wall in sketch 0", ...).
    pub variant: String,
    /// Renders spent on it, and accepted moves.
    pub renders: usize,
    pub accepted: usize,
}

/// What the search did for one query.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FitReport {
    /// Structures offered, drawn natively, and left out (unsure or not in the dialect);
    /// each drawn one also offers its structural variants.
    pub structures: usize,
    pub drawn: usize,
    pub skipped: usize,
    /// Native renders in all, and seconds.
    pub renders: usize,
    pub seconds: f64,
    /// The kept programs, best first.
    pub kept: Vec<Fitted>,
}

/// The query reduced to the comparison grid.
#[derive(Debug, Clone)]
pub struct Target {
    size: u32,
    /// Foreground share of each cell.
    cover: Vec<f32>,
    /// Mean grey (red channel) of each cell's face pixels; NaN when it has none.
    grey: Vec<f32>,
}

impl Target {
    /// Reduce `query` (any size, RGB on white) to `size` x `size` cells.
    pub fn new(query: &RgbImage, size: u32) -> Target {
        let (w, h) = query.dimensions();
        let n = size as usize;
        let mut cover = vec![0.0f32; n * n];
        let mut grey = vec![f32::NAN; n * n];
        for cy in 0..n {
            let (y0, y1) = (
                cy * h as usize / n,
                ((cy + 1) * h as usize / n).max(cy * h as usize / n + 1),
            );
            for cx in 0..n {
                let (x0, x1) = (
                    cx * w as usize / n,
                    ((cx + 1) * w as usize / n).max(cx * w as usize / n + 1),
                );
                let (mut total, mut fg, mut faces, mut sum) = (0u32, 0u32, 0u32, 0u32);
                for y in y0..y1.min(h as usize) {
                    for x in x0..x1.min(w as usize) {
                        let p = query.get_pixel(x as u32, y as u32).0;
                        total += 1;
                        if p.iter().any(|c| *c < FOREGROUND_BELOW) {
                            fg += 1;
                            if !p.iter().all(|c| *c < EDGE_BELOW) {
                                faces += 1;
                                sum += u32::from(p[0]);
                            }
                        }
                    }
                }
                let i = cy * n + cx;
                cover[i] = fg as f32 / total.max(1) as f32;
                if faces > 0 {
                    grey[i] = sum as f32 / faces as f32;
                }
            }
        }
        Target { size, cover, grey }
    }

    /// Image side of the grid.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// How well a face render (`raycast::render_faces` at this size) matches: 1 minus the
    /// coverage and grey-level error over the union of the two foregrounds.
    pub fn score(&self, render: &RgbImage, grey_weight: f64) -> f64 {
        let (mut err, mut union) = (0.0f64, 0.0f64);
        for (i, p) in render.pixels().enumerate().take(self.cover.len()) {
            let q = f64::from(self.cover[i]);
            let ours = p.0[0] < FOREGROUND_BELOW;
            let nf = if ours { 1.0 } else { 0.0 };
            union += q.max(nf);
            err += (q - nf).abs();
            let g = self.grey[i];
            if ours && q > 0.5 && !g.is_nan() {
                err +=
                    grey_weight * ((f64::from(g) - f64::from(p.0[0])).abs() / GREY_SCALE).min(1.0);
            }
        }
        if union == 0.0 {
            return 0.0;
        }
        1.0 - err / union
    }
}

/// A number the search moves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Knob {
    /// A sketch plane's origin component (absolute).
    Origin { sketch: usize, axis: usize },
    /// A factor on a sketch's coordinates along one of its axes (about its plane origin);
    /// radii take the geometric mean of the two factors.
    Scale { sketch: usize, axis: usize },
    /// A sketch's extrude distance (absolute).
    Extrude { sketch: usize },
    /// A factor on one circle's radius.
    Radius { sketch: usize, loop_no: usize },
    /// A shift of every path vertex of a sketch whose coordinate along `axis` is `level`:
    /// moves one straight edge (or several aligned ones) of an axis-aligned profile, so a
    /// step, a slot or an arm can change width.
    Level {
        sketch: usize,
        axis: usize,
        level: f64,
    },
    /// A shift of one loop (not the first) along a sketch axis: where a hole or boss sits.
    Shift {
        sketch: usize,
        loop_no: usize,
        axis: usize,
    },
}

impl Knob {
    /// Search order: what changes proportions most first.
    fn priority(&self) -> u8 {
        match self {
            Knob::Extrude { .. } => 0,
            Knob::Scale { .. } | Knob::Level { .. } => 1,
            Knob::Radius { .. } => 2,
            Knob::Origin { .. } => 3,
            Knob::Shift { .. } => 4,
        }
    }

    /// The first step: relative for factors and extrudes, a share of the part's size for
    /// origins.
    fn initial_step(&self, part_size: f64) -> f64 {
        match self {
            Knob::Extrude { .. } => 0.25,
            Knob::Scale { .. } => 0.15,
            Knob::Radius { .. } => 0.2,
            Knob::Origin { .. } | Knob::Shift { .. } => 0.08 * part_size,
            Knob::Level { .. } => 0.05 * part_size,
        }
    }

    fn moved(&self, v: f64, step: f64, sign: f64) -> f64 {
        match self {
            Knob::Origin { .. } | Knob::Shift { .. } | Knob::Level { .. } => v + sign * step,
            _ => v * (1.0 + sign * step),
        }
    }
}

/// The knobs of a program and their starting values.
fn knobs(p: &Program, with_levels: bool) -> (Vec<Knob>, Vec<f64>) {
    let numbers = if with_levels { p.numbers() } else { Vec::new() };
    let mut k = Vec::new();
    let mut v = Vec::new();
    for (s, sk) in p.sketches.iter().enumerate() {
        k.push(Knob::Extrude { sketch: s });
        v.push(sk.extrude.distance);
        for axis in 0..2 {
            k.push(Knob::Scale { sketch: s, axis });
            v.push(1.0);
        }
        for (l, lp) in sk.loops.iter().enumerate() {
            if matches!(lp, Loop::Circle { .. }) {
                k.push(Knob::Radius {
                    sketch: s,
                    loop_no: l,
                });
                v.push(1.0);
            }
            if l > 0 {
                for axis in 0..2 {
                    k.push(Knob::Shift {
                        sketch: s,
                        loop_no: l,
                        axis,
                    });
                    v.push(0.0);
                }
            }
        }
        for axis in (0..2).filter(|_| with_levels) {
            for level in levels(p, &numbers, s, axis) {
                k.push(Knob::Level {
                    sketch: s,
                    axis,
                    level,
                });
                v.push(0.0);
            }
        }
        for axis in 0..3 {
            k.push(Knob::Origin { sketch: s, axis });
            v.push(sk.plane.origin[axis]);
        }
    }
    (k, v)
}

/// Most `Level` knobs per sketch axis.
const MAX_LEVELS: usize = 8;

/// The coordinates along `axis` that two or more path vertices of sketch `s` share (the
/// straight edges along the other axis), most shared first; `numbers` are `p.numbers()`.
fn levels(p: &Program, numbers: &[(Role, f64)], s: usize, axis: usize) -> Vec<f64> {
    let mut counts: Vec<(f64, usize)> = Vec::new();
    for &(role, x) in numbers {
        if let Role::Coord {
            sketch,
            loop_no,
            arc_mid: false,
            axis: a,
        } = role
        {
            let on_path = matches!(p.sketches[s].loops.get(loop_no), Some(Loop::Path { .. }));
            if sketch == s && a == axis && on_path {
                match counts.iter_mut().find(|(v, _)| (*v - x).abs() < 1e-9) {
                    Some(c) => c.1 += 1,
                    None => counts.push((x, 1)),
                }
            }
        }
    }
    counts.retain(|c| c.1 >= 2);
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    counts.truncate(MAX_LEVELS);
    counts.into_iter().map(|c| c.0).collect()
}

/// The base program with the knobs at `values`.
fn apply(base: &Program, knobs: &[Knob], values: &[f64]) -> Program {
    let mut p = base.clone();
    let mut scale = vec![[1.0, 1.0]; p.sketches.len()];
    let mut shift: std::collections::HashMap<(usize, usize), [f64; 2]> = Default::default();
    let mut level_shift: Vec<(usize, usize, f64, f64)> = Vec::new();
    for (k, &v) in knobs.iter().zip(values) {
        match *k {
            Knob::Origin { sketch, axis } => p.sketches[sketch].plane.origin[axis] = v,
            Knob::Extrude { sketch } => p.sketches[sketch].extrude.distance = v,
            Knob::Scale { sketch, axis } => scale[sketch][axis] = v,
            Knob::Radius { sketch, loop_no } => {
                if let Loop::Circle { radius, .. } = &mut p.sketches[sketch].loops[loop_no] {
                    *radius *= v;
                }
            }
            Knob::Shift {
                sketch,
                loop_no,
                axis,
            } => shift.entry((sketch, loop_no)).or_default()[axis] = v,
            Knob::Level {
                sketch,
                axis,
                level,
            } => level_shift.push((sketch, axis, level, v)),
        }
    }
    for (role, x) in p.numbers_mut() {
        match role {
            Role::Coord {
                sketch,
                loop_no,
                axis,
                arc_mid,
            } => {
                let d = shift.get(&(sketch, loop_no)).map_or(0.0, |d| d[axis]);
                let on_level: f64 = level_shift
                    .iter()
                    .filter(|(s, a, level, _)| {
                        !arc_mid && *s == sketch && *a == axis && (*level - *x).abs() < 1e-9
                    })
                    .map(|l| l.3)
                    .sum();
                *x = (*x + d + on_level) * scale[sketch][axis];
            }
            Role::Radius { sketch, .. } => *x *= (scale[sketch][0] * scale[sketch][1]).sqrt(),
            _ => {}
        }
    }
    p
}

/// Native score of a program, or None when the native path does not draw it.
fn native_score(p: &Program, target: &Target, grey_weight: f64) -> Option<f64> {
    let scene = raycast::compile(p).ok()?;
    let r = raycast::render_faces(&scene, target.size()).ok()?;
    Some(target.score(&r.image, grey_weight))
}

/// Native score of a program's code against `target`, or None when it is not in the dialect
/// or the native path does not draw it.
pub fn score_code(code: &str, target: &Target, grey_weight: f64) -> Option<f64> {
    native_score(&dialect::parse(code).ok()?, target, grey_weight)
}

/// The largest side of a program's box, for origin steps.
fn part_size(p: &Program) -> f64 {
    raycast::compile(p)
        .ok()
        .and_then(|s| raycast::bounding_box(&s, 64).ok())
        .map_or(1.0, |(lo, hi)| {
            (0..3).map(|k| hi[k] - lo[k]).fold(1e-3, f64::max)
        })
}

/// Coordinate pattern search on one structure; returns the best program, its score, the
/// renders used and the accepted moves.
fn fit_one(
    base: &Program,
    from: f64,
    target: &Target,
    opts: &FitOptions,
    deadline: Instant,
) -> (Program, f64, usize, usize) {
    let (ks, mut values) = knobs(base, opts.levels);
    let mut order: Vec<usize> = (0..ks.len()).collect();
    order.sort_by_key(|&i| ks[i].priority());
    let size = part_size(base);
    let mut steps: Vec<f64> = ks.iter().map(|k| k.initial_step(size)).collect();
    let first: Vec<f64> = steps.clone();
    let (mut best, mut renders, mut accepted) = (from, 0usize, 0usize);
    'search: loop {
        let mut improved = false;
        for &i in &order {
            for sign in [1.0, -1.0] {
                if renders >= opts.budget || Instant::now() >= deadline {
                    break 'search;
                }
                let mut trial = values.clone();
                trial[i] = ks[i].moved(values[i], steps[i], sign);
                renders += 1;
                if let Some(s) = native_score(&apply(base, &ks, &trial), target, opts.grey_weight) {
                    if s > best + 1e-9 {
                        best = s;
                        values = trial;
                        accepted += 1;
                        improved = true;
                        break;
                    }
                }
            }
        }
        if !improved {
            for s in steps.iter_mut() {
                *s *= 0.5;
            }
            if steps.iter().zip(&first).all(|(s, f)| *s < 0.02 * f) {
                break;
            }
        }
    }
    (apply(base, &ks, &values), best, renders, accepted)
}

/// Wall thicknesses tried by the solid -> wall move, as shares of the profile's smaller
/// extent (circles: of the radius).
const WALLS: [f64; 2] = [0.08, 0.2];
/// Most structural variants made from one retrieved program.
const MAX_VARIANTS: usize = 12;

/// A closed polygon of lines: the loop's vertices, or None for arcs and circles.
fn polygon(lp: &Loop) -> Option<Vec<[f64; 2]>> {
    let Loop::Path { start, segs } = lp else {
        return None;
    };
    let mut pts = vec![*start];
    for seg in segs {
        match seg {
            Seg::Line(p) => pts.push(*p),
            Seg::Arc { .. } => return None,
        }
    }
    if pts.len() > 1 && pts.last() == Some(start) {
        pts.pop();
    }
    (pts.len() >= 3).then_some(pts)
}

/// A convex polygon moved inwards by `d` (each edge offset, neighbours intersected); None
/// when it is not convex.
fn inset(pts: &[[f64; 2]], d: f64) -> Option<Vec<[f64; 2]>> {
    let n = pts.len();
    let cross = |a: [f64; 2], b: [f64; 2]| a[0] * b[1] - a[1] * b[0];
    let edge = |i: usize| {
        let (a, b) = (pts[i], pts[(i + 1) % n]);
        [b[0] - a[0], b[1] - a[1]]
    };
    let area: f64 = (0..n).map(|i| cross(pts[i], pts[(i + 1) % n])).sum();
    let turn = area.signum();
    if (0..n).any(|i| cross(edge(i), edge((i + 1) % n)) * turn < -1e-12) {
        return None;
    }
    let normal = |i: usize| {
        let e = edge(i);
        let len = (e[0] * e[0] + e[1] * e[1]).sqrt();
        [-e[1] / len * turn, e[0] / len * turn]
    };
    let mut out = Vec::with_capacity(n);
    for j in 0..n {
        let i = (j + n - 1) % n;
        let (ni, nj) = (normal(i), normal(j));
        let pi = [pts[i][0] + d * ni[0], pts[i][1] + d * ni[1]];
        let pj = [pts[j][0] + d * nj[0], pts[j][1] + d * nj[1]];
        let (ei, ej) = (edge(i), edge(j));
        let den = cross(ei, ej);
        if den.abs() < 1e-12 {
            out.push(pj);
        } else {
            let t = cross([pj[0] - pi[0], pj[1] - pi[1]], ej) / den;
            out.push([pi[0] + t * ei[0], pi[1] + t * ei[1]]);
        }
    }
    Some(out)
}

/// The structural moves the picture may ask for, each with its description: a solid
/// profile made a wall (an inner offset loop: tubes, frames, trays), a sketch's holes
/// dropped, a later sketch's union and cut swapped.
fn variants(p: &Program) -> Vec<(Program, String)> {
    let mut out = Vec::new();
    for (s, sk) in p.sketches.iter().enumerate() {
        if sk.loops.len() == 1 {
            for t in WALLS {
                let inner = match &sk.loops[0] {
                    Loop::Circle { centre, radius } => Some(Loop::Circle {
                        centre: *centre,
                        radius: radius * (1.0 - t),
                    }),
                    lp => polygon(lp).and_then(|pts| {
                        let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
                        for q in &pts {
                            for k in 0..2 {
                                lo[k] = lo[k].min(q[k]);
                                hi[k] = hi[k].max(q[k]);
                            }
                        }
                        let d = t * (hi[0] - lo[0]).min(hi[1] - lo[1]);
                        inset(&pts, d).map(|q| Loop::Path {
                            start: q[0],
                            segs: q[1..].iter().map(|x| Seg::Line(*x)).collect(),
                        })
                    }),
                };
                if let Some(inner) = inner {
                    let mut v = p.clone();
                    v.sketches[s].loops.push(inner);
                    out.push((v, format!("wall {t} in sketch {s}")));
                }
            }
        } else {
            let mut v = p.clone();
            v.sketches[s].loops.truncate(1);
            out.push((v, format!("holes of sketch {s} dropped")));
        }
        if s > 0 {
            let mut v = p.clone();
            v.sketches[s].op = match sk.op {
                Op::Cut => Op::Union,
                _ => Op::Cut,
            };
            out.push((v, format!("union/cut of sketch {s} swapped")));
        }
    }
    out.truncate(MAX_VARIANTS);
    out
}

/// A structure the search may start from: its native score, the program, where it came from.
struct Start {
    score: f64,
    program: Program,
    rank: usize,
    id: String,
    variant: String,
}

/// Fit the first `opts.structures` of `structures` (code, 1-based rank, id) to `query`.
pub fn fit(
    query: &RgbImage,
    structures: &[(String, usize, String)],
    opts: &FitOptions,
) -> FitReport {
    let t = Instant::now();
    let deadline = t + std::time::Duration::from_secs_f64(opts.seconds.max(0.0));
    let target = Target::new(query, opts.size.max(8));
    let mut report = FitReport::default();
    let mut scored: Vec<Start> = Vec::new();
    for (code, rank, id) in structures.iter().take(opts.structures) {
        report.structures += 1;
        let Ok(p) = dialect::parse(code) else {
            report.skipped += 1;
            continue;
        };
        report.renders += 1;
        match native_score(&p, &target, opts.grey_weight) {
            Some(s) => {
                report.drawn += 1;
                for (v, variant) in variants(&p) {
                    report.renders += 1;
                    if let Some(score) = native_score(&v, &target, opts.grey_weight) {
                        scored.push(Start {
                            score,
                            program: v,
                            rank: *rank,
                            id: id.clone(),
                            variant,
                        });
                    }
                }
                scored.push(Start {
                    score: s,
                    program: p,
                    rank: *rank,
                    id: id.clone(),
                    variant: "as retrieved".into(),
                });
            }
            None => report.skipped += 1,
        }
    }
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    scored.truncate(opts.fitted);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, scored.len().max(1));
    let chunks: Vec<Vec<&Start>> = (0..threads)
        .map(|k| scored.iter().skip(k).step_by(threads).collect())
        .collect();
    let mut fitted: Vec<Fitted> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                let target = &target;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|st| {
                            let (best, score, renders, accepted) =
                                fit_one(&st.program, st.score, target, opts, deadline);
                            Fitted {
                                code: best.code(),
                                rank: st.rank,
                                id: st.id.clone(),
                                from_score: st.score,
                                score,
                                variant: st.variant.clone(),
                                renders,
                                accepted,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    report.renders += fitted.iter().map(|f| f.renders).sum::<usize>();
    fitted.sort_by(|a, b| b.score.total_cmp(&a.score));
    fitted.dedup_by(|a, b| a.code == b.code);
    fitted.truncate(opts.keep);
    report.kept = fitted;
    report.seconds = t.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLATE: &str = "import cadquery as cq\n# Generating a workplane for sketch 0\nwp_sketch0 = cq.Workplane(cq.Plane(cq.Vector(-0.5, -0.5, 0.0), cq.Vector(1.0, 0.0, 0.0), cq.Vector(0.0, 0.0, 1.0)))\nloop0=wp_sketch0.moveTo(1.0, 0.0).lineTo(1.0, 1.0).lineTo(0.0, 1.0).lineTo(0.0, 0.0).close()\nloop1=wp_sketch0.moveTo(0.5, 0.5).circle(0.25)\nsolid0=wp_sketch0.add(loop0).add(loop1).extrude(0.2)\nsolid=solid0\n";

    fn query(code: &str) -> RgbImage {
        raycast::render_code(code, 448).unwrap().image
    }

    #[test]
    fn a_perfect_match_scores_one_and_a_wrong_one_less() {
        let q = query(PLATE);
        let t = Target::new(&q, 112);
        let p = dialect::parse(PLATE).unwrap();
        let s = native_score(&p, &t, 0.5).unwrap();
        assert!(s > 0.97, "self score {s}");
        let thick = dialect::parse(&PLATE.replace("extrude(0.2)", "extrude(0.6)")).unwrap();
        assert!(native_score(&thick, &t, 0.5).unwrap() < s - 0.1);
    }

    #[test]
    fn fitting_recovers_a_changed_extrude_and_hole() {
        let q = query(PLATE);
        let start = PLATE
            .replace("extrude(0.2)", "extrude(0.45)")
            .replace("circle(0.25)", "circle(0.15)");
        let opts = FitOptions {
            seconds: 30.0,
            ..FitOptions::default()
        };
        let r = fit(&q, &[(start.clone(), 1, "a".into())], &opts);
        assert_eq!((r.structures, r.drawn), (1, 1));
        let f = &r.kept[0];
        assert_eq!(f.variant, "as retrieved");
        assert!(
            f.score > f.from_score + 0.05,
            "{} -> {}",
            f.from_score,
            f.score
        );
        let p = dialect::parse(&f.code).unwrap();
        let d = p.sketches[0].extrude.distance;
        // The render is scale-free: compare the proportions (thickness / plate width).
        let Loop::Path { segs, .. } = &p.sketches[0].loops[0] else {
            panic!()
        };
        let dialect::Seg::Line([w, _]) = segs[0] else {
            panic!()
        };
        let ratio = d / w;
        assert!((ratio - 0.2).abs() < 0.04, "thickness/width {ratio}");
        assert!(f.renders <= opts.budget);
    }

    #[test]
    fn a_solid_retrieved_for_a_tube_becomes_a_wall() {
        let tube = PLATE
            .replace("loop1=wp_sketch0.moveTo(0.5, 0.5).circle(0.25)\n", "loop1=wp_sketch0.moveTo(0.1, 0.1).lineTo(0.9, 0.1).lineTo(0.9, 0.9).lineTo(0.1, 0.9).close()\n")
            .replace("extrude(0.2)", "extrude(1.5)");
        let solid = tube
            .replace("loop1=wp_sketch0.moveTo(0.1, 0.1).lineTo(0.9, 0.1).lineTo(0.9, 0.9).lineTo(0.1, 0.9).close()\n", "")
            .replace(".add(loop1)", "");
        let r = fit(
            &query(&tube),
            &[(solid, 1, "s".into())],
            &FitOptions::default(),
        );
        let best = &r.kept[0];
        assert!(best.variant.starts_with("wall"), "{}", best.variant);
        assert!(best.score > 0.9, "{}", best.score);
        let square = [[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]];
        let inner = inset(&square, 0.25).unwrap();
        assert!((inner[0][0] - 0.25).abs() < 1e-12 && (inner[2][1] - 0.75).abs() < 1e-12);
        assert!(inset(&[[0.0, 0.0], [2.0, 0.0], [1.0, 0.2], [1.0, 1.0]], 0.1).is_none());
    }

    #[test]
    fn level_knobs_move_the_vertices_of_one_edge() {
        let p = dialect::parse(PLATE).unwrap();
        let mut xs = levels(&p, &p.numbers(), 0, 0);
        xs.sort_by(f64::total_cmp);
        assert_eq!(xs, vec![0.0, 1.0]);
        let knob = [Knob::Level {
            sketch: 0,
            axis: 0,
            level: 1.0,
        }];
        let moved = apply(&p, &knob, &[0.5]);
        let code = moved.code();
        assert!(
            code.contains("moveTo(1.5, 0.0).lineTo(1.5, 1.0).lineTo(0.0, 1.0)"),
            "{code}"
        );
        assert!(
            code.contains("moveTo(0.5, 0.5).circle(0.25)"),
            "circles stay: {code}"
        );
    }

    #[test]
    fn programs_outside_the_native_path_are_skipped() {
        let q = query(PLATE);
        let r = fit(
            &q,
            &[
                ("import os\n".into(), 1, "x".into()),
                (PLATE.replace("extrude(0.2)", "extrude(0.0)"), 2, "y".into()),
                (PLATE.into(), 3, "z".into()),
            ],
            &FitOptions::default(),
        );
        assert_eq!((r.structures, r.drawn, r.skipped), (3, 1, 2));
        assert_eq!(r.kept[0].rank, 3);
    }
}
