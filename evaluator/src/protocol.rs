//! What the CadQuery worker answers: execution outcomes, mass properties, meshes, edges.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// How running one snippet ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Ran and left a Solid or Compound the metric can use.
    Ok,
    /// Does not parse (also: not UTF-8, Markdown fences).
    Syntax,
    /// Raised an exception while running.
    Runtime,
    /// Uses something outside the sandbox's allow-list.
    Rejected,
    /// Exceeded the wall-clock or CPU limit and was killed.
    Timeout,
    /// The sandboxed process died (segfault, abort, worker loss).
    Crash,
    /// Ran out of its memory limit.
    Oom,
    /// Ran, but left no usable solid.
    NoSolid,
    /// No prediction was given for this id.
    Missing,
}

impl Status {
    /// Every status, in report order.
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::Syntax,
        Status::Runtime,
        Status::Rejected,
        Status::Timeout,
        Status::Crash,
        Status::Oom,
        Status::NoSolid,
        Status::Missing,
    ];

    /// The snake_case name used in JSON and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Syntax => "syntax",
            Status::Runtime => "runtime",
            Status::Rejected => "rejected",
            Status::Timeout => "timeout",
            Status::Crash => "crash",
            Status::Oom => "oom",
            Status::NoSolid => "no_solid",
            Status::Missing => "missing",
        }
    }
}

/// Mass properties and frame of a solid, as OCC computes them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Props {
    pub volume: f64,
    /// Centre of mass.
    pub center: [f64; 3],
    /// Inertia tensor about the centre of mass, row-major.
    pub inertia: [f64; 9],
    /// xmin, ymin, zmin, xmax, ymax, zmax.
    pub bbox: [f64; 6],
    pub solid_count: u32,
    /// OCC's BRepCheck verdict; booleans on invalid shapes are unstable.
    pub valid: bool,
    /// Radius of gyration sqrt(trace(I) / (2 V)); None for zero or negative volume.
    pub r_g: Option<f64>,
    /// Principal axes of the normalised mesh (numpy eigh, columns), row-major.
    #[serde(default)]
    pub mesh_axes: Option<[f64; 9]>,
}

/// A triangle mesh in the part's own coordinates.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    pub vertices: Vec<[f64; 3]>,
    pub triangles: Vec<[u32; 3]>,
}

/// B-rep edges as polylines on the mesh; seams (closed edges of a face) flagged.
#[derive(Debug, Clone, Default)]
pub struct Edges {
    pub polylines: Vec<Vec<[f64; 3]>>,
    pub seam: Vec<bool>,
}

/// One snippet's execution, decoded.
#[derive(Debug, Clone)]
pub struct Execution {
    pub status: Status,
    pub message: String,
    pub seconds: f64,
    pub props: Option<Props>,
    pub mesh: Option<Mesh>,
    pub edges: Option<Edges>,
}

impl Execution {
    /// An execution that never reached the worker (missing prediction, bad bytes, lost worker).
    pub fn failed(status: Status, message: impl Into<String>) -> Self {
        Execution {
            status,
            message: message.into(),
            seconds: 0.0,
            props: None,
            mesh: None,
            edges: None,
        }
    }

    /// Valid in the published sense: ran and produced a solid.
    pub fn is_valid(&self) -> bool {
        self.status == Status::Ok
    }
}

/// The worker's reply to a gt/pred pair.
#[derive(Debug, Clone)]
pub struct PairExecution {
    pub gt: Execution,
    pub pred: Execution,
    /// Exact OCC-boolean IoU when asked for and both sides are valid.
    pub volume_iou: Option<f64>,
    /// Why the volume IoU is missing, or a warning about it.
    pub volume_message: String,
    /// OCC booleans the volume IoU ran: four or fewer, as sign patterns were shared or
    /// bounded out.
    pub volume_booleans: u32,
}

/// Malformed worker replies.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("worker reply is not what the protocol says: {0}")]
    Shape(String),
}

#[derive(Deserialize)]
struct RawMesh {
    vertices: String,
    triangles: String,
}

#[derive(Deserialize)]
struct RawEdges {
    points: String,
    offsets: String,
    seam: String,
}

#[derive(Deserialize)]
pub(crate) struct RawExecution {
    status: Status,
    #[serde(default)]
    message: String,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    props: Option<Props>,
    #[serde(default)]
    mesh: Option<RawMesh>,
    #[serde(default)]
    edges: Option<RawEdges>,
}

#[derive(Deserialize)]
pub(crate) struct RawVolume {
    volume_iou: Option<f64>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    booleans: u32,
}

#[derive(Deserialize)]
pub(crate) struct RawPair {
    gt: RawExecution,
    pred: RawExecution,
    #[serde(default)]
    volume: Option<RawVolume>,
}

fn bytes(b64: &str) -> Result<Vec<u8>, DecodeError> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| DecodeError::Shape(format!("bad base64: {e}")))
}

/// A little-endian array of fixed-size numbers, base64-encoded by the worker.
fn le_array<T, const N: usize>(b64: &str, from: fn([u8; N]) -> T) -> Result<Vec<T>, DecodeError> {
    let raw = bytes(b64)?;
    if !raw.len().is_multiple_of(N) {
        return Err(DecodeError::Shape(format!(
            "array of {N}-byte numbers has {} bytes",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| from(c.try_into().expect("chunk of N bytes")))
        .collect())
}

fn f64s(b64: &str) -> Result<Vec<f64>, DecodeError> {
    le_array(b64, f64::from_le_bytes)
}

fn u32s(b64: &str) -> Result<Vec<u32>, DecodeError> {
    le_array(b64, u32::from_le_bytes)
}

fn triples<T: Copy>(flat: Vec<T>, what: &str) -> Result<Vec<[T; 3]>, DecodeError> {
    if !flat.len().is_multiple_of(3) {
        return Err(DecodeError::Shape(format!(
            "{what} is not a list of triples"
        )));
    }
    Ok(flat.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect())
}

impl RawExecution {
    pub(crate) fn decode(self) -> Result<Execution, DecodeError> {
        let mesh = match self.mesh {
            None => None,
            Some(m) => {
                let vertices = triples(f64s(&m.vertices)?, "mesh vertices")?;
                let triangles = triples(u32s(&m.triangles)?, "mesh triangles")?;
                let n = vertices.len() as u32;
                if triangles.iter().flatten().any(|&i| i >= n) {
                    return Err(DecodeError::Shape("triangle index out of range".into()));
                }
                Some(Mesh {
                    vertices,
                    triangles,
                })
            }
        };
        let edges = match self.edges {
            None => None,
            Some(e) => {
                let points = triples(f64s(&e.points)?, "edge points")?;
                let offsets = u32s(&e.offsets)?;
                let seam = bytes(&e.seam)?;
                if offsets.len() != seam.len() + 1
                    || offsets.windows(2).any(|w| w[0] > w[1])
                    || offsets.last().map(|&o| o as usize) != Some(points.len())
                {
                    return Err(DecodeError::Shape(
                        "edge offsets do not match points".into(),
                    ));
                }
                let polylines = offsets
                    .windows(2)
                    .map(|w| points[w[0] as usize..w[1] as usize].to_vec())
                    .collect();
                Some(Edges {
                    polylines,
                    seam: seam.into_iter().map(|s| s != 0).collect(),
                })
            }
        };
        Ok(Execution {
            status: self.status,
            message: self.message,
            seconds: self.seconds,
            props: self.props,
            mesh,
            edges,
        })
    }
}

impl RawPair {
    pub(crate) fn decode(self) -> Result<PairExecution, DecodeError> {
        let (volume_iou, volume_message, volume_booleans) = match self.volume {
            Some(v) => (v.volume_iou, v.message, v.booleans),
            None => (None, String::new(), 0),
        };
        Ok(PairExecution {
            gt: self.gt.decode()?,
            pred: self.pred.decode()?,
            volume_iou,
            volume_message,
            volume_booleans,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn decodes_mesh_and_edges() {
        let verts: Vec<u8> = [0.0f64, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let tris: Vec<u8> = [0u32, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let offsets: Vec<u8> = [0u32, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let json = serde_json::json!({
            "status": "ok", "message": "", "seconds": 0.1,
            "mesh": {"vertices": b64(&verts), "triangles": b64(&tris)},
            "edges": {"points": b64(&verts), "offsets": b64(&offsets), "seam": b64(&[0, 1])},
        });
        let raw: RawExecution = serde_json::from_value(json).unwrap();
        let exec = raw.decode().unwrap();
        assert_eq!(exec.mesh.as_ref().unwrap().triangles, vec![[0, 1, 2]]);
        let edges = exec.edges.unwrap();
        assert_eq!(edges.polylines.len(), 2);
        assert_eq!(edges.polylines[1], vec![[0.0, 1.0, 0.0]]);
        assert_eq!(edges.seam, vec![false, true]);
    }

    #[test]
    fn rejects_out_of_range_triangle() {
        let verts: Vec<u8> = [0.0f64; 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tris: Vec<u8> = [0u32, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let json = serde_json::json!({
            "status": "ok", "mesh": {"vertices": b64(&verts), "triangles": b64(&tris)},
        });
        let raw: RawExecution = serde_json::from_value(json).unwrap();
        assert!(raw.decode().is_err());
    }
}
