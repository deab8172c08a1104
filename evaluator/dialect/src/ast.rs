//! The typed program and its exact printer.

use std::fmt::{self, Write};

use crate::pyfloat::repr;

/// A 2D point in a sketch's plane coordinates.
pub type P2 = [f64; 2];

/// A whole part: its sketches in program order, each extruded and combined with the result
/// of the ones before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// Sketch-and-extrude steps; the first one's `op` is `Op::First`, the others' are not.
    pub sketches: Vec<Sketch>,
}

/// One `wp_sketchN` block: a plane, its loops, its extrude and how it joins the part.
#[derive(Debug, Clone, PartialEq)]
pub struct Sketch {
    pub plane: Plane,
    /// Loops in the order the solid adds them; CadQuery takes the first as the outer wire
    /// and the others as holes.
    pub loops: Vec<Loop>,
    pub extrude: Extrude,
    pub op: Op,
}

/// `cq.Plane(cq.Vector(origin), cq.Vector(x_dir), cq.Vector(normal))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plane {
    pub origin: [f64; 3],
    pub x_dir: [f64; 3],
    pub normal: [f64; 3],
}

/// One closed loop of a sketch.
#[derive(Debug, Clone, PartialEq)]
pub enum Loop {
    /// `moveTo(centre).circle(radius)`.
    Circle { centre: P2, radius: f64 },
    /// `moveTo(start)` then the segments, then `close()`, which draws a straight line back
    /// to `start` when the last segment ends elsewhere.
    Path { start: P2, segs: Vec<Seg> },
}

/// One segment of a path, from the previous point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seg {
    /// `lineTo(x, y)`.
    Line(P2),
    /// `threePointArc((mid), (end))`: the circle arc through the previous point, `mid` and
    /// `end`.
    Arc { mid: P2, end: P2 },
}

/// `extrude(distance)` or `extrude(distance, both=True)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Extrude {
    /// Along the plane's normal (negative: against it); with `both`, this far each way.
    pub distance: f64,
    pub both: bool,
}

/// How a sketch's solid joins the part built so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `solid=solidN`: the first sketch starts the part.
    First,
    /// `solid=solid.union(solidN)`.
    Union,
    /// `solid=solid.cut(solidN)`.
    Cut,
}

/// Which vector of a plane a number belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VecRole {
    Origin,
    XDir,
    Normal,
}

/// What a number of the program means. Sketches and loops are numbered from 0 in program
/// order (`loop_no` counts within its sketch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Component `axis` (0 = x, 1 = y, 2 = z) of one of the plane's vectors.
    Plane {
        sketch: usize,
        which: VecRole,
        axis: usize,
    },
    /// Component `axis` (0 = x, 1 = y) of a point of a loop: the start, a line's end, an
    /// arc's end, or (with `arc_mid`) an arc's middle point.
    Coord {
        sketch: usize,
        loop_no: usize,
        arc_mid: bool,
        axis: usize,
    },
    /// A circle's radius.
    Radius { sketch: usize, loop_no: usize },
    /// An extrude distance.
    Extrude { sketch: usize },
}

impl Plane {
    /// The plane's unit y direction as CadQuery derives it: normal x xDir, both normalised;
    /// None when either vector is zero, not finite, or they are parallel.
    pub fn y_dir(&self) -> Option<[f64; 3]> {
        let z = unit(self.normal)?;
        let x = unit(self.x_dir)?;
        unit(cross(z, x))
    }

    /// Unit (x, y, z) axes of the plane's frame, when they are well defined and orthogonal
    /// (CadQuery refuses a plane whose xDir is not perpendicular to its normal).
    pub fn frame(&self) -> Option<[[f64; 3]; 3]> {
        let z = unit(self.normal)?;
        let x = unit(self.x_dir)?;
        if dot(x, z).abs() > 1e-6 {
            return None;
        }
        let y = unit(cross(z, x))?;
        Some([x, y, z])
    }
}

impl Extrude {
    /// The extruded range along the normal, low end first.
    pub fn range(&self) -> (f64, f64) {
        let d = self.distance;
        if self.both {
            (-d.abs(), d.abs())
        } else if d >= 0.0 {
            (0.0, d)
        } else {
            (d, 0.0)
        }
    }
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn unit(a: [f64; 3]) -> Option<[f64; 3]> {
    let n = dot(a, a).sqrt();
    (n.is_finite() && n > 1e-12).then(|| [a[0] / n, a[1] / n, a[2] / n])
}

impl Program {
    /// Number of sketches (= extrudes).
    pub fn sketch_count(&self) -> usize {
        self.sketches.len()
    }

    /// Every number of the program with its role, in the order the code writes them.
    pub fn numbers(&self) -> Vec<(Role, f64)> {
        let mut copy = self.clone();
        copy.numbers_mut()
            .into_iter()
            .map(|(role, v)| (role, *v))
            .collect()
    }

    /// Every number of the program, writable, with its role, in the order the code writes
    /// them: the handle a parameter search changes a program through.
    pub fn numbers_mut(&mut self) -> Vec<(Role, &mut f64)> {
        let mut out = Vec::new();
        for (s, sk) in self.sketches.iter_mut().enumerate() {
            let plane = &mut sk.plane;
            for (which, v) in [
                (VecRole::Origin, &mut plane.origin),
                (VecRole::XDir, &mut plane.x_dir),
                (VecRole::Normal, &mut plane.normal),
            ] {
                for (axis, x) in v.iter_mut().enumerate() {
                    out.push((
                        Role::Plane {
                            sketch: s,
                            which,
                            axis,
                        },
                        x,
                    ));
                }
            }
            for (l, lp) in sk.loops.iter_mut().enumerate() {
                let coord = |arc_mid, axis| Role::Coord {
                    sketch: s,
                    loop_no: l,
                    arc_mid,
                    axis,
                };
                match lp {
                    Loop::Circle { centre, radius } => {
                        let [x, y] = centre;
                        out.push((coord(false, 0), x));
                        out.push((coord(false, 1), y));
                        out.push((
                            Role::Radius {
                                sketch: s,
                                loop_no: l,
                            },
                            radius,
                        ));
                    }
                    Loop::Path { start, segs } => {
                        let [x, y] = start;
                        out.push((coord(false, 0), x));
                        out.push((coord(false, 1), y));
                        for seg in segs {
                            match seg {
                                Seg::Line([x, y]) => {
                                    out.push((coord(false, 0), x));
                                    out.push((coord(false, 1), y));
                                }
                                Seg::Arc { mid, end } => {
                                    let [mx, my] = mid;
                                    out.push((coord(true, 0), mx));
                                    out.push((coord(true, 1), my));
                                    let [x, y] = end;
                                    out.push((coord(false, 0), x));
                                    out.push((coord(false, 1), y));
                                }
                            }
                        }
                    }
                }
            }
            out.push((Role::Extrude { sketch: s }, &mut sk.extrude.distance));
        }
        out
    }

    /// The program in the GenCAD dialect, byte for byte as the dataset writes it.
    pub fn code(&self) -> String {
        self.to_string()
    }
}

fn point(out: &mut fmt::Formatter<'_>, p: P2) -> fmt::Result {
    write!(out, "{}, {}", repr(p[0]), repr(p[1]))
}

impl fmt::Display for Program {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        out.write_str("import cadquery as cq\n")?;
        let mut loop_no = 0;
        for (n, sk) in self.sketches.iter().enumerate() {
            let v3 =
                |v: [f64; 3]| format!("cq.Vector({}, {}, {})", repr(v[0]), repr(v[1]), repr(v[2]));
            writeln!(out, "# Generating a workplane for sketch {n}")?;
            writeln!(
                out,
                "wp_sketch{n} = cq.Workplane(cq.Plane({}, {}, {}))",
                v3(sk.plane.origin),
                v3(sk.plane.x_dir),
                v3(sk.plane.normal)
            )?;
            let mut adds = String::new();
            for lp in &sk.loops {
                write!(out, "loop{loop_no}=wp_sketch{n}.moveTo(")?;
                match lp {
                    Loop::Circle { centre, radius } => {
                        point(out, *centre)?;
                        write!(out, ").circle({})", repr(*radius))?;
                    }
                    Loop::Path { start, segs } => {
                        point(out, *start)?;
                        out.write_char(')')?;
                        for seg in segs {
                            match seg {
                                Seg::Line(p) => {
                                    out.write_str(".lineTo(")?;
                                    point(out, *p)?;
                                    out.write_char(')')?;
                                }
                                Seg::Arc { mid, end } => {
                                    out.write_str(".threePointArc((")?;
                                    point(out, *mid)?;
                                    out.write_str("), (")?;
                                    point(out, *end)?;
                                    out.write_str("))")?;
                                }
                            }
                        }
                        out.write_str(".close()")?;
                    }
                }
                out.write_char('\n')?;
                let _ = write!(adds, ".add(loop{loop_no})");
                loop_no += 1;
            }
            let both = if sk.extrude.both { ", both=True" } else { "" };
            writeln!(
                out,
                "solid{n}=wp_sketch{n}{adds}.extrude({}{both})",
                repr(sk.extrude.distance)
            )?;
            match sk.op {
                Op::First => writeln!(out, "solid=solid{n}")?,
                Op::Union => writeln!(out, "solid=solid.union(solid{n})")?,
                Op::Cut => writeln!(out, "solid=solid.cut(solid{n})")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extrude_ranges() {
        let e = |distance, both| Extrude { distance, both }.range();
        assert_eq!(e(0.5, false), (0.0, 0.5));
        assert_eq!(e(-0.5, false), (-0.5, 0.0));
        assert_eq!(e(-0.5, true), (-0.5, 0.5));
    }

    #[test]
    fn plane_frames_follow_cadquery() {
        let p = Plane {
            origin: [0.0; 3],
            x_dir: [1.0, 0.0, 0.0],
            normal: [0.0, 0.0, 1.0],
        };
        assert_eq!(p.y_dir(), Some([0.0, 1.0, 0.0]));
        let parallel = Plane {
            x_dir: [0.0, 0.0, 2.0],
            ..p
        };
        assert_eq!(parallel.y_dir(), None);
        assert!(parallel.frame().is_none());
        let skew = Plane {
            x_dir: [1.0, 0.0, 1.0],
            ..p
        };
        assert!(skew.y_dir().is_some() && skew.frame().is_none());
    }
}
