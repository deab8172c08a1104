//! DeepCAD sketch planes: an orientation given by polar angles (theta, phi, gamma), rebuilt the
//! way DeepCAD's `polar_parameterization_inverse` does it in numpy, so the axis vectors carry
//! the same floating-point noise (6.123233995736766e-17 and friends) as the real dataset.

use std::f64::consts::FRAC_PI_2;

/// A 3-vector.
pub type Vec3 = [f64; 3];

/// Orientation of a sketch plane in quarter turns of (theta, phi, gamma).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orientation {
    pub theta: i8,
    pub phi: i8,
    pub gamma: i8,
}

impl Orientation {
    /// The XY plane: normal +Z, x along +X (half of all real sketches).
    pub const TOP: Orientation = Orientation {
        theta: 0,
        phi: 0,
        gamma: 0,
    };
    /// The front plane: normal -Y, x along +X, sketch y along +Z.
    pub const FRONT: Orientation = Orientation {
        theta: 1,
        phi: -1,
        gamma: 1,
    };
    /// The right plane: normal +X, x along +Y, sketch y along +Z.
    pub const RIGHT: Orientation = Orientation {
        theta: 1,
        phi: 0,
        gamma: 1,
    };

    /// Every orientation with angles in {-pi, -pi/2, 0, pi/2, pi}.
    pub fn all() -> impl Iterator<Item = Orientation> {
        let k = [-2i8, -1, 0, 1, 2];
        k.into_iter().flat_map(move |theta| {
            k.into_iter().flat_map(move |phi| {
                k.into_iter()
                    .map(move |gamma| Orientation { theta, phi, gamma })
            })
        })
    }

    /// (x_dir, normal) as numpy computes them.
    pub fn axes(self) -> (Vec3, Vec3) {
        let (t, p, g) = (
            f64::from(self.theta) * FRAC_PI_2,
            f64::from(self.phi) * FRAC_PI_2,
            f64::from(self.gamma) * FRAC_PI_2,
        );
        let normal = [t.sin() * p.cos(), t.sin() * p.sin(), t.cos()];
        let ref_x = rotate_by_z(rotate_by_y([1.0, 0.0, 0.0], t), p);
        let ref_y = cross(normal, ref_x);
        let x_dir = [
            ref_x[0] * g.cos() + ref_y[0] * g.sin(),
            ref_x[1] * g.cos() + ref_y[1] * g.sin(),
            ref_x[2] * g.cos() + ref_y[2] * g.sin(),
        ];
        (x_dir, normal)
    }
}

/// numpy's `np.dot(mat, vec)` for 3x3 by 3: each row summed left to right.
fn mat_vec(m: [[f64; 3]; 3], v: Vec3) -> Vec3 {
    m.map(|row| row[0] * v[0] + row[1] * v[1] + row[2] * v[2])
}

fn rotate_by_y(v: Vec3, t: f64) -> Vec3 {
    mat_vec(
        [
            [t.cos(), 0.0, t.sin()],
            [0.0, 1.0, 0.0],
            [-t.sin(), 0.0, t.cos()],
        ],
        v,
    )
}

fn rotate_by_z(v: Vec3, p: f64) -> Vec3 {
    mat_vec(
        [
            [p.cos(), -p.sin(), 0.0],
            [p.sin(), p.cos(), 0.0],
            [0.0, 0.0, 1.0],
        ],
        v,
    )
}

/// numpy's `np.cross`.
pub fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Dot product.
pub fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// A placed sketch plane: what `cq.Plane(origin, x_dir, normal)` receives.
#[derive(Debug, Clone, Copy)]
pub struct SketchPlane {
    pub orientation: Orientation,
    pub origin: Vec3,
    pub x_dir: Vec3,
    pub normal: Vec3,
}

impl SketchPlane {
    /// A plane of the given orientation through `origin`.
    pub fn new(orientation: Orientation, origin: Vec3) -> Self {
        let (x_dir, normal) = orientation.axes();
        SketchPlane {
            orientation,
            origin,
            x_dir,
            normal,
        }
    }

    /// The sketch's y axis as CadQuery derives it (normal x x_dir).
    pub fn y_dir(&self) -> Vec3 {
        cross(self.normal, self.x_dir)
    }

    /// World point of sketch coordinates (u, v) lifted by w along the normal.
    pub fn to_world(&self, u: f64, v: f64, w: f64) -> Vec3 {
        let y = self.y_dir();
        std::array::from_fn(|i| self.origin[i] + u * self.x_dir[i] + v * y[i] + w * self.normal[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evaluator::pyfloat::repr;

    const FIXTURE: &str = include_str!("polar_frames.txt");

    fn join(v: Vec3) -> String {
        v.map(repr).join(", ")
    }

    #[test]
    fn axes_match_numpy_bit_for_bit() {
        let mut checked = 0;
        for line in FIXTURE.lines().filter(|l| !l.starts_with('#')) {
            let parts: Vec<&str> = line.split(" | ").collect();
            let k: Vec<i8> = parts[0].split(' ').map(|x| x.parse().unwrap()).collect();
            let o = Orientation {
                theta: k[0],
                phi: k[1],
                gamma: k[2],
            };
            let (x, n) = o.axes();
            assert_eq!(join(x), parts[1], "x_dir of {o:?}");
            assert_eq!(join(n), parts[2], "normal of {o:?}");
            checked += 1;
        }
        assert_eq!(checked, 125);
    }

    #[test]
    fn named_planes_are_the_datasets() {
        let (x, n) = Orientation::FRONT.axes();
        assert_eq!(
            join(x),
            "1.0, 6.123233995736766e-17, -6.123233995736766e-17"
        );
        assert_eq!(
            join(n),
            "6.123233995736766e-17, -1.0, 6.123233995736766e-17"
        );
        let p = SketchPlane::new(Orientation::FRONT, [0.0; 3]);
        let y = p.y_dir();
        assert!(
            (y[2] - 1.0).abs() < 1e-12,
            "front plane's sketch y is +Z: {y:?}"
        );
    }
}
