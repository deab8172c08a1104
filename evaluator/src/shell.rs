//! The "shell" IoU of the MecAgent technical test, reproduced in Rust.
//!
//! Each solid's mesh is moved to its centre of mass and scaled by 1/r_g; the prediction is
//! rotated onto the ground truth's principal axes under 4 sign patterns; the SURFACE of
//! each mesh is voxelised at pitch 0.05 the way trimesh does it (subdivide every triangle
//! until its edges are at most pitch/2, then bin the vertices by rounding v / pitch); the
//! IoU of the two voxel sets is taken, best of the 4.
//!
//! Eigenvector signs: the principal axes come from numpy's `eigh` in the worker, the same
//! LAPACK routine the reference calls, so the same half of the 8 sign combinations is tried.

use crate::protocol::{Mesh, Props};

/// Voxel pitch of the published protocol.
pub const PITCH: f64 = 0.05;
/// trimesh's `voxelize_subdivide` stops after this many halvings.
const MAX_SUBDIVISIONS: u32 = 10;
/// The reference's sign patterns, applied to the prediction's axes.
pub const SIGN_PATTERNS: [[f64; 3]; 4] = [
    [1.0, 1.0, 1.0],
    [1.0, 1.0, -1.0],
    [1.0, -1.0, 1.0],
    [-1.0, 1.0, 1.0],
];

type Mat3 = [[f64; 3]; 3];

/// A mesh in the metric's normalised frame with its principal axes.
#[derive(Debug, Clone)]
pub struct NormalisedMesh {
    vertices: Vec<[f64; 3]>,
    triangles: Vec<[u32; 3]>,
    /// Principal axes as columns.
    axes: Mat3,
}

/// Why a valid solid still gets no shell IoU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    #[error("the solid has no positive volume")]
    NoVolume,
    #[error("the solid has no mesh")]
    NoMesh,
    #[error("the mesh has no principal axes")]
    NoAxes,
}

impl NormalisedMesh {
    /// Translate by -centre of mass and scale by 1/r_g, as the reference does to its STL.
    pub fn new(mesh: &Mesh, props: &Props) -> Result<Self, ShellError> {
        let r_g = props.r_g.filter(|r| *r > 0.0).ok_or(ShellError::NoVolume)?;
        if mesh.triangles.is_empty() {
            return Err(ShellError::NoMesh);
        }
        let a = props.mesh_axes.ok_or(ShellError::NoAxes)?;
        let scale = 1.0 / r_g;
        let c = props.center;
        let vertices = mesh
            .vertices
            .iter()
            .map(|v| {
                [
                    (v[0] - c[0]) * scale,
                    (v[1] - c[1]) * scale,
                    (v[2] - c[2]) * scale,
                ]
            })
            .collect();
        Ok(NormalisedMesh {
            vertices,
            triangles: mesh.triangles.clone(),
            axes: [[a[0], a[1], a[2]], [a[3], a[4], a[5]], [a[6], a[7], a[8]]],
        })
    }

    /// Vertices, triangles and principal axes (columns).
    pub(crate) fn parts(&self) -> (&[[f64; 3]], &[[u32; 3]], &Mat3) {
        (&self.vertices, &self.triangles, &self.axes)
    }
}

fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

pub(crate) fn transpose(a: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, cell) in row.iter_mut().enumerate() {
            *cell = a[j][i];
        }
    }
    out
}

fn apply(m: &Mat3, v: &[f64; 3]) -> [f64; 3] {
    [
        m[0][0] * v[0] + m[0][1] * v[1] + m[0][2] * v[2],
        m[1][0] * v[0] + m[1][1] * v[1] + m[1][2] * v[2],
        m[2][0] * v[0] + m[2][1] * v[1] + m[2][2] * v[2],
    ]
}

fn dist(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

const KEY_BIAS: i64 = 1 << 20;
const KEY_MASK: i64 = (1 << 21) - 1;
/// Adding and subtracting 1.5 * 2^52 rounds an f64 of magnitude < 2^51 to the nearest
/// integer, ties to even (the FPU's default mode), which is numpy's rounding, without a
/// libm call.
const ROUNDER: f64 = 6755399441055744.0;

#[inline(always)]
fn round_half_even(x: f64) -> f64 {
    (x + ROUNDER) - ROUNDER
}

#[inline(always)]
fn key(p: &[f64; 3], inv_pitch: f64) -> u64 {
    let mut k: u64 = 0;
    for c in p {
        let i = round_half_even(c * inv_pitch) as i64;
        k = (k << 21) | (((i + KEY_BIAS) & KEY_MASK) as u64);
    }
    k
}

/// The voxel indices a key of [`surface_voxels`] packs.
pub(crate) fn unpack_key(k: u64) -> [i64; 3] {
    [2, 1, 0].map(|shift| ((k >> (shift * 21)) as i64 & KEY_MASK) - KEY_BIAS)
}

/// A small direct-mapped memory of recently seen keys: the lattice of a sliver triangle
/// hits the same few voxels thousands of times, and this drops nearly all repeats before
/// they reach the sort.
struct RecentKeys {
    slots: Vec<u64>,
}

impl RecentKeys {
    const BITS: u32 = 12;

    fn new() -> Self {
        RecentKeys {
            slots: vec![u64::MAX; 1 << Self::BITS],
        }
    }

    /// True if `k` was not in its slot (and now is).
    #[inline(always)]
    fn insert(&mut self, k: u64) -> bool {
        let h = (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - Self::BITS)) as usize;
        if self.slots[h] == k {
            false
        } else {
            self.slots[h] = k;
            true
        }
    }
}

/// Collects voxel keys, dropping a repeat of the previous key and most recent repeats.
struct KeySink {
    keys: Vec<u64>,
    recent: RecentKeys,
    last: u64,
}

impl KeySink {
    #[inline(always)]
    fn push(&mut self, k: u64) {
        if k != self.last {
            self.last = k;
            if self.recent.insert(k) {
                self.keys.push(k);
            }
        }
    }

    /// The keys of the row points `lo..=hi`, given the end points' keys. Each coordinate of
    /// `start + along * s` is monotone in `s` (every float step rounds monotonically), so
    /// when both ends share a voxel every point between them does too and none is computed.
    fn add_run(&mut self, key_at: &impl Fn(u32) -> u64, lo: u32, hi: u32, k_lo: u64, k_hi: u64) {
        if k_lo == k_hi {
            self.push(k_lo);
        } else if hi - lo == 1 {
            self.push(k_lo);
            self.push(k_hi);
        } else {
            let mid = lo + (hi - lo) / 2;
            let k_mid = key_at(mid);
            self.add_run(key_at, lo, mid, k_lo, k_mid);
            self.add_run(key_at, mid, hi, k_mid, k_hi);
        }
    }
}

/// The voxel set of a mesh's surface, sorted and deduplicated, after applying `rotation`.
///
/// trimesh splits a triangle 1 -> 4 at edge midpoints until all edges are <= pitch/2; the
/// vertices that leaves are the points of a regular barycentric lattice with 2^L steps
/// per edge, L the number of halvings the longest edge needs. We take that lattice in rows
/// parallel to the shortest edge and bisect each row between points of different voxels
/// only: a sliver (most of a CAD tessellation's lattice points) then costs a few keys per
/// row instead of one per point.
pub fn surface_voxels(
    vertices: &[[f64; 3]],
    triangles: &[[u32; 3]],
    rotation: &Mat3,
    pitch: f64,
) -> Vec<u64> {
    let max_edge = pitch / 2.0;
    let inv_pitch = 1.0 / pitch;
    let moved: Vec<[f64; 3]> = vertices.iter().map(|v| apply(rotation, v)).collect();
    let mut sink = KeySink {
        keys: Vec::with_capacity(moved.len() * 4),
        recent: RecentKeys::new(),
        last: u64::MAX,
    };
    for t in triangles {
        let corners = [
            moved[t[0] as usize],
            moved[t[1] as usize],
            moved[t[2] as usize],
        ];
        let lattice = TriangleLattice::new(&corners, max_edge);
        for row in 0..=lattice.steps {
            let start = lattice.row_start(row);
            let key_at = |col: u32| key(&lattice.point(&start, col), inv_pitch);
            let end = lattice.steps - row;
            sink.add_run(&key_at, 0, end, key_at(0), key_at(end));
        }
    }
    let mut keys = sink.keys;
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// One triangle's subdivision lattice in rows parallel to its shortest edge: row `r` holds
/// the points `row_start(r) + along * col` for `col` in `0..=steps - r`.
struct TriangleLattice {
    /// The corner where the shortest edge begins.
    origin: [f64; 3],
    /// One step along the shortest edge.
    along: [f64; 3],
    /// One step towards the far corner.
    across: [f64; 3],
    /// 2^L, L the halvings that bring the longest edge to `max_edge` (capped like trimesh).
    steps: u32,
}

impl TriangleLattice {
    fn new(corners: &[[f64; 3]; 3], max_edge: f64) -> Self {
        let lengths = [
            dist(&corners[0], &corners[1]),
            dist(&corners[1], &corners[2]),
            dist(&corners[2], &corners[0]),
        ];
        let mut longest = lengths.iter().copied().fold(0.0, f64::max);
        let mut level = 0;
        while longest > max_edge && level < MAX_SUBDIVISIONS {
            longest /= 2.0;
            level += 1;
        }
        let first = (0..3)
            .min_by(|&x, &y| lengths[x].total_cmp(&lengths[y]))
            .unwrap_or(0);
        let a = corners[first];
        let b = corners[(first + 1) % 3];
        let c = corners[(first + 2) % 3];
        let steps = 1u32 << level;
        let step = 1.0 / steps as f64;
        TriangleLattice {
            origin: a,
            along: [0, 1, 2].map(|i| (b[i] - a[i]) * step),
            across: [0, 1, 2].map(|i| (c[i] - a[i]) * step),
            steps,
        }
    }

    #[inline(always)]
    fn row_start(&self, row: u32) -> [f64; 3] {
        let r = row as f64;
        [0, 1, 2].map(|i| self.origin[i] + self.across[i] * r)
    }

    #[inline(always)]
    fn point(&self, row_start: &[f64; 3], col: u32) -> [f64; 3] {
        let s = col as f64;
        [0, 1, 2].map(|i| row_start[i] + self.along[i] * s)
    }
}

/// |a ∩ b| / |a ∪ b| of two sorted, deduplicated key lists.
pub fn set_iou<K: Ord>(a: &[K], b: &[K]) -> f64 {
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

const IDENTITY: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// Best shell IoU over the 4 sign patterns, at the given pitch.
pub fn shell_iou(gt: &NormalisedMesh, pred: &NormalisedMesh, pitch: f64) -> f64 {
    let gt_voxels = surface_voxels(&gt.vertices, &gt.triangles, &IDENTITY, pitch);
    let mut best: f64 = 0.0;
    for signs in SIGN_PATTERNS {
        let mut flipped = pred.axes;
        for row in flipped.iter_mut() {
            for (k, cell) in row.iter_mut().enumerate() {
                *cell *= signs[k];
            }
        }
        let rotation = mat_mul(&gt.axes, &transpose(&flipped));
        let pred_voxels = surface_voxels(&pred.vertices, &pred.triangles, &rotation, pitch);
        best = best.max(set_iou(&gt_voxels, &pred_voxels));
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(z: f64, size: f64) -> (Vec<[f64; 3]>, Vec<[u32; 3]>) {
        (
            vec![
                [0.0, 0.0, z],
                [size, 0.0, z],
                [size, size, z],
                [0.0, size, z],
            ],
            vec![[0, 1, 2], [0, 2, 3]],
        )
    }

    #[test]
    fn subdivision_lattice_covers_the_triangle_at_pitch() {
        let (v, t) = square(0.0, 1.0);
        let keys = surface_voxels(&v, &t, &IDENTITY, 0.05);
        // a unit square at pitch 0.05 touches the 21 x 21 voxel centres of [0, 1]^2
        assert_eq!(keys.len(), 21 * 21);
    }

    /// Every lattice point's key, one by one, in the rows `surface_voxels` uses.
    fn every_lattice_key(v: &[[f64; 3]; 3], pitch: f64) -> Vec<u64> {
        let lattice = TriangleLattice::new(v, pitch / 2.0);
        let mut keys = Vec::new();
        for row in 0..=lattice.steps {
            let start = lattice.row_start(row);
            for col in 0..=(lattice.steps - row) {
                keys.push(key(&lattice.point(&start, col), 1.0 / pitch));
            }
        }
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    #[test]
    fn bisected_rows_find_every_voxel_of_the_lattice() {
        // a fixed pseudo-random stream: fat triangles, slivers, near-degenerate ones
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
        };
        for i in 0..300 {
            let a = [next(), next(), next()];
            let b = [next(), next(), next()];
            let squash = [1.0, 1e-2, 1e-4, 0.0][i % 4];
            let t = next() * 0.5 + 0.5;
            let c = [0, 1, 2].map(|k| a[k] + (b[k] - a[k]) * t + next() * squash);
            let v = [a, b, c];
            let fast = surface_voxels(&v, &[[0, 1, 2]], &IDENTITY, 0.05);
            assert_eq!(fast, every_lattice_key(&v, 0.05), "triangle {i}: {v:?}");
        }
    }

    #[test]
    fn rounding_is_half_to_even_like_numpy() {
        assert_eq!(key(&[0.025, 0.0, 0.0], 20.0), key(&[0.0, 0.0, 0.0], 20.0));
        assert_ne!(key(&[0.075, 0.0, 0.0], 20.0), key(&[0.05, 0.0, 0.0], 20.0));
    }

    #[test]
    fn keys_unpack_to_their_voxel_indices() {
        assert_eq!(unpack_key(key(&[0.1, -0.25, 3.0], 20.0)), [2, -5, 60]);
    }

    #[test]
    fn set_iou_counts_overlap() {
        assert_eq!(set_iou(&[1, 2, 3, 4], &[3, 4, 5, 6]), 2.0 / 6.0);
        assert_eq!(set_iou::<u64>(&[], &[]), 0.0);
        assert_eq!(set_iou(&[7], &[7]), 1.0);
    }

    #[test]
    fn shifted_square_has_the_expected_overlap() {
        let (v, t) = square(0.0, 1.0);
        let a = surface_voxels(&v, &t, &IDENTITY, 0.05);
        let shifted: Vec<[f64; 3]> = v.iter().map(|p| [p[0] + 0.5, p[1], p[2]]).collect();
        let b = surface_voxels(&shifted, &t, &IDENTITY, 0.05);
        // columns 0..=20 vs 10..=30: 11 shared of 31
        assert!((set_iou(&a, &b) - 11.0 / 31.0).abs() < 1e-12);
    }

    #[test]
    fn best_sign_pattern_recovers_a_rotated_copy() {
        // an L-shaped surface, and the same rotated 90 degrees about z, with axes to match
        let v = vec![
            [0.0, 0.0, 0.0],
            [2.0, 0.0, 0.0],
            [2.0, 0.5, 0.0],
            [0.0, 0.5, 0.0],
            [0.0, 1.5, 0.0],
        ];
        let t = vec![[0, 1, 2], [0, 2, 3], [0, 3, 4]];
        let gt = NormalisedMesh {
            vertices: v.clone(),
            triangles: t.clone(),
            axes: IDENTITY,
        };
        let rot: Mat3 = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
        let pred = NormalisedMesh {
            vertices: v.iter().map(|p| apply(&rot, p)).collect(),
            triangles: t,
            axes: rot,
        };
        assert!((shell_iou(&gt, &pred, 0.05) - 1.0).abs() < 1e-12);
    }
}
