//! The worker replaces CadQuery's `Plane.named` (which builds all twelve named planes to
//! return one) with a lookup; it must be installed, and parts drawn on every named plane
//! must sit where CadQuery's table puts them. Needs the CadQuery environment (`rag setup`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use evaluator::{PythonEnv, Status, Wants};

/// CadQuery's named planes: name, xDir, normal (its documentation's table).
const PLANES: [(&str, [f64; 3], [f64; 3]); 12] = [
    ("XY", [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
    ("YZ", [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]),
    ("ZX", [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]),
    ("XZ", [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]),
    ("YX", [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]),
    ("ZY", [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]),
    ("front", [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]),
    ("back", [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]),
    ("left", [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]),
    ("right", [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]),
    ("top", [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
    ("bottom", [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]),
];

#[test]
fn the_worker_says_it_installed_the_named_plane_lookup() {
    let env = PythonEnv::locate().expect("CadQuery environment (run `rag setup`)");
    let sandbox = tempfile::tempdir().unwrap();
    let mut child = Command::new(env.python())
        .arg(env.worker_script().unwrap())
        .env("CADRAG_SANDBOX_DIR", sandbox.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    drop(child.stdin.take());
    child.wait().unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).expect("a JSON ready line");
    assert_eq!(ready["ready"], true, "{line}");
    assert_eq!(ready["named_plane_fix"], true, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rectangles_extruded_on_named_planes_land_where_the_table_says() {
    let pool = common::pool(30, 1024).await;
    let origin = [1.0, 2.0, 3.0];
    for (name, x, n) in PLANES {
        let code = format!(
            "import cadquery as cq\nsolid = cq.Workplane('{name}', origin=(1, 2, 3)).rect(2, 4).extrude(1)\n"
        );
        let run = pool
            .exec(
                &code,
                Wants {
                    mesh: false,
                    ..Wants::default()
                },
            )
            .await;
        assert_eq!(run.status, Status::Ok, "{name}: {}", run.message);
        let bbox = run.props.expect("props").bbox;
        // the box spans origin + [-1, 1] x + [-2, 2] y + [0, 1] n, with y = n cross x
        let y = [
            n[1] * x[2] - n[2] * x[1],
            n[2] * x[0] - n[0] * x[2],
            n[0] * x[1] - n[1] * x[0],
        ];
        for axis in 0..3 {
            let terms = [
                (x[axis], -1.0, 1.0),
                (y[axis], -2.0, 2.0),
                (n[axis], 0.0, 1.0),
            ];
            let lo: f64 = origin[axis]
                + terms
                    .iter()
                    .map(|(d, a, b)| (d * a).min(d * b))
                    .sum::<f64>();
            let hi: f64 = origin[axis]
                + terms
                    .iter()
                    .map(|(d, a, b)| (d * a).max(d * b))
                    .sum::<f64>();
            // OCC's bounding boxes carry the shape's tolerance (1e-7) on each side
            assert!(
                (bbox[axis] - lo).abs() < 1e-5 && (bbox[axis + 3] - hi).abs() < 1e-5,
                "{name}: axis {axis} spans {}..{}, expected {lo}..{hi}",
                bbox[axis],
                bbox[axis + 3]
            );
        }
    }
}
