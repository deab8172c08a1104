//! The worker's mass properties (volume, centre of mass, inertia about it), which both IoU
//! protocols normalise by, against closed forms, for a Solid and a Compound (both through
//! the worker's one OCC volume integration). Needs the CadQuery environment (`rag setup`).

mod common;

use evaluator::protocol::Props;
use evaluator::{PatternSearch, Status, Wants, WorkerPool};

const NO_MESH: Wants = Wants {
    mesh: false,
    edges: false,
    volume: false,
    patterns: PatternSearch::Shared,
};

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-9 * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w} (all: {got:?})"
        );
    }
}

/// The mass properties of a snippet that must run.
async fn props_of(pool: &WorkerPool, code: &str) -> Props {
    let run = pool.exec(code, NO_MESH).await;
    assert_eq!(run.status, Status::Ok, "{}", run.message);
    run.props.expect("props of a valid solid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_centre_and_inertia_match_closed_forms_for_a_solid_and_a_compound() {
    let pool = common::pool(30, 1024).await;

    // A 2 x 3 x 4 box centred at (1, 2, 3): I = V (b^2 + c^2) / 12 about each axis.
    let p = props_of(
        &pool,
        "import cadquery as cq\nsolid = cq.Workplane('XY').box(2, 3, 4).translate((1, 2, 3))\n",
    )
    .await;
    assert_eq!(p.solid_count, 1);
    assert_close("volume", &[p.volume], &[24.0]);
    assert_close("centre", &p.center, &[1.0, 2.0, 3.0]);
    assert_close(
        "inertia",
        &p.inertia,
        &[50.0, 0.0, 0.0, 0.0, 40.0, 0.0, 0.0, 0.0, 26.0],
    );
    assert_close(
        "r_g",
        &[p.r_g.unwrap()],
        &[((50.0 + 40.0 + 26.0) / 48.0f64).sqrt()],
    );

    // Two unit cubes 3 apart along x stay a Compound of two solids: each adds its own
    // 1/6 and, off the x axis, 1 * 1.5^2 by the parallel-axis theorem.
    let p = props_of(
        &pool,
        "import cadquery as cq\nb = cq.Workplane('XY').box(1, 1, 1)\nsolid = b.union(cq.Workplane('XY').box(1, 1, 1).translate((3, 0, 0)))\n",
    )
    .await;
    assert_eq!(p.solid_count, 2);
    let (own, off) = (1.0 / 6.0, 1.0 / 6.0 + 2.25);
    assert_close("volume", &[p.volume], &[2.0]);
    assert_close("centre", &p.center, &[1.5, 0.0, 0.0]);
    assert_close(
        "inertia",
        &p.inertia,
        &[
            2.0 * own,
            0.0,
            0.0,
            0.0,
            2.0 * off,
            0.0,
            0.0,
            0.0,
            2.0 * off,
        ],
    );
}
