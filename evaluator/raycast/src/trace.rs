//! Rays against the CSG of prisms: exact ray-prism intervals (slab between the caps, even-odd
//! crossings of the profile's lines and arcs), then union and cut as interval operations in
//! program order.

use dialect::Op;

use crate::scene::{dot, Curve, Prism, Scene};

/// Surface id of "no face" (the background, or a slab side that no profile crossing bounds).
pub const NO_SURFACE: u32 = u32::MAX;

/// Material stretches shorter than this (model units) are rounding, not material: coincident
/// faces of a cut and its target (a hole flush with a face) must leave nothing behind.
const EPS: f64 = 1e-9;

/// Where a ray enters or leaves material.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    /// Ray parameter (distance along the unit direction).
    pub t: f64,
    pub surface: u32,
    /// World normal of the face there (either orientation).
    pub normal: [f64; 3],
    /// For a cylinder hit: how far the ray's line passes inside the circle, r - |h| in model
    /// units along the sketch plane (a silhouette is where this goes to zero); infinite on
    /// planes.
    pub inside: f64,
    /// Index of the prism whose face this is.
    pub prism: u32,
}

/// One stretch of material along a ray.
#[derive(Debug, Clone, Copy)]
pub struct Interval {
    pub enter: Hit,
    pub exit: Hit,
}

/// Reusable buffers, so that tracing allocates nothing per ray.
#[derive(Debug, Default)]
pub struct Scratch {
    result: Vec<Interval>,
    prism: Vec<Interval>,
    merged: Vec<Interval>,
    crossings: Vec<Hit>,
    /// Bit i set when some ray traced since the last reset had material after step i (of
    /// the first 64): a cut that leaves no ray any material shows as a clear bit.
    pub alive: u64,
}

/// Whether a point of an arc's circle lies on the arc: on its middle point's side of the
/// chord (an arc of more than half the circle leaves the short side out, one of less keeps
/// only it; either way the chord splits the circle at the arc's ends).
fn on_arc(point: [f64; 2], p: [f64; 2], q: [f64; 2], side: f64) -> bool {
    let o = (q[0] - p[0]) * (point[1] - p[1]) - (q[1] - p[1]) * (point[0] - p[0]);
    o * side > 0.0
}

/// Even-odd inside test of a sketch point against the prism's profile.
fn inside_profile(p: &Prism, q: [f64; 2]) -> bool {
    let mut inside = false;
    for piece in &p.pieces {
        match piece.curve {
            Curve::Line { a, b, .. } => {
                if (a[1] > q[1]) != (b[1] > q[1]) {
                    let x = a[0] + (q[1] - a[1]) / (b[1] - a[1]) * (b[0] - a[0]);
                    if x > q[0] {
                        inside = !inside;
                    }
                }
            }
            Curve::Arc {
                c,
                r,
                full,
                p: cp,
                q: cq,
                side,
                ..
            } => {
                // Crossings of the horizontal half-line from q to +u with the circle.
                let dy = q[1] - c[1];
                let disc = r * r - dy * dy;
                if disc <= 0.0 {
                    continue;
                }
                let s = disc.sqrt();
                for x in [c[0] - s, c[0] + s] {
                    if x > q[0] && (full || on_arc([x, q[1]], cp, cq, side)) {
                        inside = !inside;
                    }
                }
            }
        }
    }
    inside
}

/// The material intervals of one prism along the ray `origin + t * dir` (unit `dir`),
/// sorted, appended to `out`.
fn prism_intervals(
    index: usize,
    p: &Prism,
    origin: [f64; 3],
    dir: [f64; 3],
    crossings: &mut Vec<Hit>,
    out: &mut Vec<Interval>,
) {
    let rel = [
        origin[0] - p.origin[0],
        origin[1] - p.origin[1],
        origin[2] - p.origin[2],
    ];
    let a = [
        dot(rel, p.axes[0]),
        dot(rel, p.axes[1]),
        dot(rel, p.axes[2]),
    ];
    let b = [
        dot(dir, p.axes[0]),
        dot(dir, p.axes[1]),
        dot(dir, p.axes[2]),
    ];
    let z = p.axes[2];
    let cap = |t: f64, surface: u32| Hit {
        t,
        surface,
        normal: z,
        inside: f64::INFINITY,
        prism: index as u32,
    };
    let (s0, s1) = if b[2].abs() > 1e-12 {
        let t0 = (p.w.0 - a[2]) / b[2];
        let t1 = (p.w.1 - a[2]) / b[2];
        if t0 <= t1 {
            (cap(t0, p.caps[0]), cap(t1, p.caps[1]))
        } else {
            (cap(t1, p.caps[1]), cap(t0, p.caps[0]))
        }
    } else if a[2] >= p.w.0 && a[2] <= p.w.1 {
        (
            cap(f64::NEG_INFINITY, NO_SURFACE),
            cap(f64::INFINITY, NO_SURFACE),
        )
    } else {
        return;
    };
    let bb = b[0] * b[0] + b[1] * b[1];
    if bb < 1e-18 {
        // Looking straight down the extrusion: the whole slab or nothing.
        if inside_profile(p, [a[0], a[1]]) {
            out.push(Interval {
                enter: s0,
                exit: s1,
            });
        }
        return;
    }
    // The ray's stretch inside the slab against the profile's box: most rays that pass the
    // screen-rectangle cull still miss the prism here.
    let (ta, tb) = (s0.t.max(-1e300), s1.t.min(1e300));
    let [u0, v0, u1, v1] = p.profile_box;
    let mut lo_t = ta;
    let mut hi_t = tb;
    for (k, (lo, hi)) in [(0, (u0, u1)), (1, (v0, v1))] {
        if b[k].abs() < 1e-300 {
            if a[k] < lo || a[k] > hi {
                return;
            }
        } else {
            let (x, y) = ((lo - a[k]) / b[k], (hi - a[k]) / b[k]);
            lo_t = lo_t.max(x.min(y));
            hi_t = hi_t.min(x.max(y));
        }
    }
    if lo_t > hi_t + EPS {
        return;
    }
    crossings.clear();
    let inv_len = 1.0 / bb.sqrt();
    for piece in &p.pieces {
        match piece.curve {
            Curve::Line { a: p0, b: p1, n } => {
                let h0 = b[0] * (p0[1] - a[1]) - b[1] * (p0[0] - a[0]);
                let h1 = b[0] * (p1[1] - a[1]) - b[1] * (p1[0] - a[0]);
                if (h0 > 0.0) != (h1 > 0.0) {
                    let s = h0 / (h0 - h1);
                    let q = [p0[0] + s * (p1[0] - p0[0]), p0[1] + s * (p1[1] - p0[1])];
                    let t = ((q[0] - a[0]) * b[0] + (q[1] - a[1]) * b[1]) / bb;
                    crossings.push(Hit {
                        t,
                        surface: piece.surface,
                        normal: p.direction(n),
                        inside: f64::INFINITY,
                        prism: index as u32,
                    });
                }
            }
            Curve::Arc {
                c,
                r,
                full,
                p: cp,
                q: cq,
                side,
                ..
            } => {
                let d = [a[0] - c[0], a[1] - c[1]];
                let db = d[0] * b[0] + d[1] * b[1];
                let dd = d[0] * d[0] + d[1] * d[1];
                let disc = db * db - bb * (dd - r * r);
                if disc <= 0.0 {
                    continue;
                }
                let sq = disc.sqrt();
                let h = (d[0] * b[1] - d[1] * b[0]).abs() * inv_len;
                for t in [(-db - sq) / bb, (-db + sq) / bb] {
                    let q = [d[0] + t * b[0], d[1] + t * b[1]];
                    if full || on_arc([q[0] + c[0], q[1] + c[1]], cp, cq, side) {
                        crossings.push(Hit {
                            t,
                            surface: piece.surface,
                            normal: p.direction([q[0] / r, q[1] / r]),
                            inside: r - h,
                            prism: index as u32,
                        });
                    }
                }
            }
        }
    }
    crossings.sort_unstable_by(|x, y| x.t.total_cmp(&y.t));
    for pair in crossings.chunks_exact(2) {
        let enter = if pair[0].t > s0.t { pair[0] } else { s0 };
        let exit = if pair[1].t < s1.t { pair[1] } else { s1 };
        if enter.t < exit.t - EPS {
            out.push(Interval { enter, exit });
        }
    }
}

/// `a ∪ b` of sorted disjoint interval lists, into `out`.
fn union(a: &[Interval], b: &[Interval], out: &mut Vec<Interval>) {
    out.clear();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = if j >= b.len() || (i < a.len() && a[i].enter.t <= b[j].enter.t) {
            i += 1;
            a[i - 1]
        } else {
            j += 1;
            b[j - 1]
        };
        match out.last_mut() {
            Some(last) if next.enter.t <= last.exit.t + EPS => {
                if next.exit.t > last.exit.t {
                    last.exit = next.exit;
                }
            }
            _ => out.push(next),
        }
    }
}

/// `a − b` of sorted disjoint interval lists, into `out`.
fn subtract(a: &[Interval], b: &[Interval], out: &mut Vec<Interval>) {
    out.clear();
    let mut j = 0;
    for iv in a {
        let mut cur = *iv;
        while j < b.len() && b[j].exit.t <= cur.enter.t + EPS {
            j += 1;
        }
        let mut k = j;
        let mut alive = true;
        while k < b.len() && b[k].enter.t < cur.exit.t - EPS {
            let cutter = b[k];
            if cutter.enter.t > cur.enter.t + EPS {
                out.push(Interval {
                    enter: cur.enter,
                    exit: cutter.enter,
                });
            }
            if cutter.exit.t >= cur.exit.t - EPS {
                alive = false;
                break;
            }
            cur.enter = cutter.exit;
            k += 1;
        }
        if alive && cur.enter.t < cur.exit.t - EPS {
            out.push(cur);
        }
    }
}

/// The part's material along the ray `origin + t * dir` (unit `dir`), sorted by `t`.
/// `cull(i)` says whether prism `i` can be skipped because the ray misses its box.
pub fn trace<'s>(
    scene: &Scene,
    origin: [f64; 3],
    dir: [f64; 3],
    cull: impl Fn(usize) -> bool,
    scratch: &'s mut Scratch,
) -> &'s [Interval] {
    let Scratch {
        result,
        prism,
        merged,
        crossings,
        alive,
    } = scratch;
    result.clear();
    for (i, p) in scene.prisms.iter().enumerate() {
        // A culled prism, or a cut of nothing, leaves the material as it is.
        if !(cull(i) || (p.op == Op::Cut && result.is_empty())) {
            prism.clear();
            prism_intervals(i, p, origin, dir, crossings, prism);
            match p.op {
                Op::First => std::mem::swap(result, prism),
                Op::Union => {
                    union(result, prism, merged);
                    std::mem::swap(result, merged);
                }
                Op::Cut => {
                    subtract(result, prism, merged);
                    std::mem::swap(result, merged);
                }
            }
        }
        if !result.is_empty() && i < 64 {
            *alive |= 1 << i;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(a: f64, b: f64, s: u32) -> Interval {
        let h = |t| Hit {
            t,
            surface: s,
            normal: [0.0, 0.0, 1.0],
            inside: f64::INFINITY,
            prism: 0,
        };
        Interval {
            enter: h(a),
            exit: h(b),
        }
    }

    fn spans(v: &[Interval]) -> Vec<(f64, f64, u32, u32)> {
        v.iter()
            .map(|i| (i.enter.t, i.exit.t, i.enter.surface, i.exit.surface))
            .collect()
    }

    #[test]
    fn interval_union_and_cut() {
        let a = [iv(0.0, 2.0, 1), iv(5.0, 6.0, 1)];
        let b = [iv(1.0, 3.0, 2), iv(4.0, 4.5, 2)];
        let mut out = Vec::new();
        union(&a, &b, &mut out);
        assert_eq!(
            spans(&out),
            vec![(0.0, 3.0, 1, 2), (4.0, 4.5, 2, 2), (5.0, 6.0, 1, 1)]
        );
        subtract(&a, &b, &mut out);
        assert_eq!(spans(&out), vec![(0.0, 1.0, 1, 2), (5.0, 6.0, 1, 1)]);
        let hole = [iv(0.5, 1.0, 3), iv(1.5, 2.5, 3)];
        subtract(&a, &hole, &mut out);
        assert_eq!(
            spans(&out),
            vec![(0.0, 0.5, 1, 3), (1.0, 1.5, 3, 3), (5.0, 6.0, 1, 1)]
        );
    }
}
