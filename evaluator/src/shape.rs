//! Shape signatures: a solid's surface voxels in its own principal frame, kept so that any
//! two executed solids can be compared later (thousands of pairs per second) without running
//! CadQuery again. Training uses them as a shape-similarity target between corpus parts.
//!
//! The comparison follows the shell protocol (centre of mass, 1/r_g scale, principal axes,
//! best of the same 4 sign patterns, surface voxels) at a coarser pitch, and with both parts
//! in their principal frames instead of one rotated onto the other.

use crate::protocol::{Mesh, Props};
use crate::shell::{set_iou, surface_voxels, transpose, NormalisedMesh, ShellError, SIGN_PATTERNS};

/// Voxel pitch of a signature, in units of the part's radius of gyration.
pub const SIGNATURE_PITCH: f64 = 0.1;
/// Bits per axis in a packed voxel key.
const AXIS_BITS: u32 = 10;
/// Voxel indices are stored with this bias; indices beyond +-LIMIT are clamped (a part would
/// need to reach 51 radii of gyration from its centre).
const BIAS: i64 = 1 << (AXIS_BITS - 1);
const LIMIT: i64 = BIAS - 1;
const AXIS_MASK: u32 = (1 << AXIS_BITS) - 1;

/// The sorted voxel keys of one solid's surface in its principal frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeSignature {
    keys: Vec<u32>,
}

/// Why stored keys do not form a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature keys are not strictly increasing at position {0}")]
    Unsorted(usize),
    #[error("a signature needs at least one voxel")]
    Empty,
}

fn pack(i: [i64; 3]) -> u32 {
    i.iter().fold(0u32, |k, v| {
        (k << AXIS_BITS) | (((*v).clamp(-LIMIT, LIMIT) + BIAS) as u32)
    })
}

#[cfg(test)]
fn unpack(k: u32) -> [i64; 3] {
    [2, 1, 0].map(|shift| ((k >> (shift * AXIS_BITS)) & AXIS_MASK) as i64 - BIAS)
}

impl ShapeSignature {
    /// The signature of an executed solid (its mesh and mass properties from the worker).
    pub fn of(mesh: &Mesh, props: &Props) -> Result<Self, ShellError> {
        let normalised = NormalisedMesh::new(mesh, props)?;
        let (vertices, triangles, axes) = normalised.parts();
        // coordinates in the principal frame: axes^T v (the axes are columns)
        let wide = surface_voxels(vertices, triangles, &transpose(axes), SIGNATURE_PITCH);
        let mut keys: Vec<u32> = wide
            .iter()
            .map(|k| pack(crate::shell::unpack_key(*k)))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Err(ShellError::NoMesh);
        }
        Ok(ShapeSignature { keys })
    }

    /// A signature from stored keys, checked to be sorted and unique.
    pub fn from_keys(keys: Vec<u32>) -> Result<Self, SignatureError> {
        if keys.is_empty() {
            return Err(SignatureError::Empty);
        }
        if let Some(i) = keys.windows(2).position(|w| w[0] >= w[1]) {
            return Err(SignatureError::Unsorted(i + 1));
        }
        Ok(ShapeSignature { keys })
    }

    /// The packed voxel keys (10 bits per axis, x highest), sorted.
    pub fn keys(&self) -> &[u32] {
        &self.keys
    }

    /// The keys with one principal axis reversed, still sorted, in one pass: inside each
    /// group of keys that agree on the fields above `axis`, the runs that share the axis's
    /// field come out last-first, each run in its own order.
    fn flipped(&self, axis: usize) -> Vec<u32> {
        let shift = (2 - axis) as u32 * AXIS_BITS;
        let mask = AXIS_MASK << shift;
        let field = |k: u32| (k >> shift) & AXIS_MASK;
        let group = |k: u32| k.checked_shr(shift + AXIS_BITS).unwrap_or(0);
        let keys = &self.keys;
        let mut out = Vec::with_capacity(keys.len());
        let mut g = 0;
        while g < keys.len() {
            let mut end = g + 1;
            while end < keys.len() && group(keys[end]) == group(keys[g]) {
                end += 1;
            }
            let mut stop = end;
            while stop > g {
                let f = field(keys[stop - 1]);
                let mut start = stop - 1;
                while start > g && field(keys[start - 1]) == f {
                    start -= 1;
                }
                let mirrored = (2 * BIAS as u32 - f) << shift;
                out.extend(keys[start..stop].iter().map(|k| (k & !mask) | mirrored));
                stop = start;
            }
            g = end;
        }
        out
    }

    /// Shell-style IoU of two signatures: the best of the protocol's 4 sign patterns applied
    /// to `other`'s axes. 1 for the same solid; symmetric up to voxel rounding.
    pub fn similarity(&self, other: &ShapeSignature) -> f64 {
        SIGN_PATTERNS
            .iter()
            .map(|signs| match signs.iter().position(|s| *s < 0.0) {
                None => set_iou(&self.keys, &other.keys),
                Some(axis) => set_iou(&self.keys, &other.flipped(axis)),
            })
            .fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed box mesh with its mass properties (axes = identity, sorted as eigh would).
    fn cuboid(size: [f64; 3], offset: [f64; 3]) -> (Mesh, Props) {
        let [a, b, c] = size;
        let vertices: Vec<[f64; 3]> = (0..8)
            .map(|n| {
                [
                    offset[0] + if n & 1 == 1 { a } else { 0.0 },
                    offset[1] + if n & 2 == 2 { b } else { 0.0 },
                    offset[2] + if n & 4 == 4 { c } else { 0.0 },
                ]
            })
            .collect();
        let triangles = vec![
            [0, 1, 3],
            [0, 3, 2],
            [4, 5, 7],
            [4, 7, 6],
            [0, 1, 5],
            [0, 5, 4],
            [2, 3, 7],
            [2, 7, 6],
            [0, 2, 6],
            [0, 6, 4],
            [1, 3, 7],
            [1, 7, 5],
        ];
        let volume = a * b * c;
        let (ixx, iyy, izz) = (
            volume * (b * b + c * c) / 12.0,
            volume * (a * a + c * c) / 12.0,
            volume * (a * a + b * b) / 12.0,
        );
        let props = Props {
            volume,
            center: [
                offset[0] + a / 2.0,
                offset[1] + b / 2.0,
                offset[2] + c / 2.0,
            ],
            inertia: [ixx, 0.0, 0.0, 0.0, iyy, 0.0, 0.0, 0.0, izz],
            bbox: [
                offset[0],
                offset[1],
                offset[2],
                offset[0] + a,
                offset[1] + b,
                offset[2] + c,
            ],
            solid_count: 1,
            valid: true,
            r_g: Some(((ixx + iyy + izz) / (2.0 * volume)).sqrt()),
            mesh_axes: Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]),
        };
        (
            Mesh {
                vertices,
                triangles,
            },
            props,
        )
    }

    fn signature(size: [f64; 3], offset: [f64; 3]) -> ShapeSignature {
        let (m, p) = cuboid(size, offset);
        ShapeSignature::of(&m, &p).unwrap()
    }

    #[test]
    fn keys_pack_and_unpack_with_clamping() {
        assert_eq!(unpack(pack([3, -7, 0])), [3, -7, 0]);
        assert_eq!(unpack(pack([5000, -5000, 1])), [LIMIT, -LIMIT, 1]);
    }

    #[test]
    fn a_signature_ignores_position_and_scale() {
        let a = signature([4.0, 2.0, 1.0], [0.0, 0.0, 0.0]);
        let b = signature([40.0, 20.0, 10.0], [-7.0, 3.0, 100.0]);
        assert_eq!(a, b);
        assert_eq!(a.similarity(&b), 1.0);
    }

    #[test]
    fn similarity_falls_as_proportions_part() {
        let base = signature([4.0, 2.0, 1.0], [0.0; 3]);
        let near = signature([4.4, 2.0, 1.0], [0.0; 3]);
        let far = signature([4.0, 4.0, 0.2], [0.0; 3]);
        let s_near = base.similarity(&near);
        let s_far = base.similarity(&far);
        assert!(s_near < 1.0 && s_near > s_far, "near {s_near} far {s_far}");
        assert!((s_near - near.similarity(&base)).abs() < 0.05);
    }

    #[test]
    fn a_mirror_image_matches_through_a_sign_pattern() {
        // an L of two boxes (surfaces only), and its mirror image in x
        let (mut m, p) = cuboid([4.0, 1.0, 1.0], [0.0; 3]);
        let (arm, _) = cuboid([1.0, 2.0, 1.0], [0.0, 1.0, 0.0]);
        let base = m.vertices.len() as u32;
        m.vertices.extend(arm.vertices);
        m.triangles
            .extend(arm.triangles.iter().map(|t| t.map(|v| v + base)));
        let props = Props {
            center: [1.5, 0.8, 0.5],
            ..p
        };
        let mirrored = Mesh {
            vertices: m.vertices.iter().map(|v| [-v[0], v[1], v[2]]).collect(),
            triangles: m.triangles.clone(),
        };
        let mirrored_props = Props {
            center: [-1.5, 0.8, 0.5],
            ..props.clone()
        };
        let a = ShapeSignature::of(&m, &props).unwrap();
        let b = ShapeSignature::of(&mirrored, &mirrored_props).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.similarity(&b), 1.0);
    }

    #[test]
    fn flipping_an_axis_in_one_pass_matches_flip_then_sort() {
        let mut state = 12345u64;
        let mut keys: Vec<u32> = (0..3000)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = |s: u32| ((state >> s) % 9) as i64 - 4;
                pack([v(20), v(30), v(40)])
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let sig = ShapeSignature::from_keys(keys).unwrap();
        // every pattern of the protocol flips exactly one axis
        assert!(SIGN_PATTERNS[1..]
            .iter()
            .all(|p| p.iter().filter(|s| **s < 0.0).count() == 1));
        for axis in 0..3 {
            let mut expected: Vec<u32> = sig
                .keys()
                .iter()
                .map(|k| {
                    let mut i = unpack(*k);
                    i[axis] = -i[axis];
                    pack(i)
                })
                .collect();
            expected.sort_unstable();
            assert_eq!(sig.flipped(axis), expected, "axis {axis}");
        }
    }

    #[test]
    fn stored_keys_are_checked() {
        assert_eq!(
            ShapeSignature::from_keys(vec![3, 2]),
            Err(SignatureError::Unsorted(1))
        );
        assert_eq!(
            ShapeSignature::from_keys(vec![]),
            Err(SignatureError::Empty)
        );
        let s = signature([1.0, 2.0, 3.0], [0.0; 3]);
        assert_eq!(ShapeSignature::from_keys(s.keys().to_vec()), Ok(s));
    }
}
