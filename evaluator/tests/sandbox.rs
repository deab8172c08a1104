//! Hostile snippets: each gets its status, nothing is written outside the sandbox, and the
//! pool keeps scoring. Needs the CadQuery environment (`rag setup`); fails without it.

mod common;

use std::sync::Arc;

use evaluator::score::score_pair;
use evaluator::{CodeText, PairInput, Protocols, Status, Wants, WorkerPool};

const BOX: &str = "import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 2, 3)\n";

async fn pool(timeout_s: u64) -> Arc<WorkerPool> {
    common::pool(timeout_s, 1024).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_snippets_get_their_status_and_the_pool_survives() {
    let probe = tempfile::tempdir().unwrap();
    let target = probe.path().join("pwned");
    let t = target.display().to_string();
    let unions: String = (0..10_000).map(|_| "solid = solid.union(b)\n").collect();
    let nested = format!("x = {}1{}", "-(".repeat(100_000), ")".repeat(100_000));
    let cases: Vec<(&str, String, &[Status])> = vec![
        (
            "os.system",
            format!("import os\nos.system('touch {t}')"),
            &[Status::Rejected],
        ),
        (
            "subprocess",
            format!("import subprocess\nsubprocess.run(['touch', '{t}'])"),
            &[Status::Rejected],
        ),
        (
            "open for write",
            format!("f = open('{t}', 'w')"),
            &[Status::Runtime],
        ),
        (
            "socket",
            "import socket\ns = socket.socket()".into(),
            &[Status::Rejected],
        ),
        (
            "os.fork",
            "import os\nos.fork()".into(),
            &[Status::Rejected],
        ),
        ("while True", "while True: pass".into(), &[Status::Rejected]),
        (
            "busy C loop",
            "x = sum(range(10**12))".into(),
            &[Status::Timeout],
        ),
        ("huge string", "x = 'a' * 10**11".into(), &[Status::Oom]),
        (
            "ctypes null deref",
            "import ctypes\nctypes.string_at(0)".into(),
            &[Status::Rejected],
        ),
        ("deep nesting", nested, &[Status::Syntax]),
        (
            "10 000 unions",
            format!(
                "import cadquery as cq\nb = cq.Workplane('XY').box(1, 1, 1)\nsolid = b\n{unions}"
            ),
            &[Status::Ok, Status::Timeout],
        ),
        (
            "__subclasses__",
            "x = ().__class__.__bases__[0].__subclasses__()".into(),
            &[Status::Rejected],
        ),
        (
            "getattr",
            "import cadquery as cq\nm = getattr(cq, 'occ_impl')".into(),
            &[Status::Runtime],
        ),
        (
            "module walk",
            "import cadquery as cq\ncq.occ_impl.shapes.os.system('id')".into(),
            &[Status::Rejected],
        ),
        (
            "code fence",
            format!("```python\n{BOX}```"),
            &[Status::Syntax],
        ),
        ("empty", String::new(), &[Status::NoSolid]),
        (
            "not a solid",
            "import cadquery as cq\nsolid = cq.Vector(1, 2, 3)".into(),
            &[Status::NoSolid],
        ),
        (
            "exception",
            "import cadquery as cq\nsolid = cq.Workplane('XY').box(1, 1, 1).fillet(5)".into(),
            &[Status::Runtime],
        ),
    ];
    let pool = pool(3).await;
    let mut failures = Vec::new();
    for (name, code, expected) in &cases {
        let exec = pool.exec(code, Wants::default()).await;
        println!(
            "{name:18} -> {:9} {}",
            exec.status.as_str(),
            exec.message.chars().take(90).collect::<String>()
        );
        if !expected.contains(&exec.status) {
            failures.push(format!(
                "{name}: got {:?} ({}) want {expected:?}",
                exec.status, exec.message
            ));
        }
        // after every hostile snippet, a normal one still scores
        let ok = pool
            .exec(
                BOX,
                Wants {
                    mesh: true,
                    ..Default::default()
                },
            )
            .await;
        assert_eq!(
            ok.status,
            Status::Ok,
            "pool broken after {name}: {}",
            ok.message
        );
        assert!((ok.props.expect("props").volume - 6.0).abs() < 1e-9);
    }
    assert!(!target.exists(), "a snippet wrote {}", target.display());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syscall_filter_blocks_writes_network_and_processes() {
    let probe = tempfile::tempdir().unwrap();
    let pool = pool(10).await;
    let report = pool
        .sandbox_selftest(&probe.path().display().to_string())
        .await
        .unwrap();
    println!("{report}");
    for blocked in [
        "open_for_write",
        "socket",
        "fork",
        "exec",
        "unlink",
        "mkdir",
        "kill_parent",
    ] {
        assert_eq!(
            report[blocked], "blocked",
            "{blocked} was not blocked: {report}"
        );
    }
    assert_eq!(report["read_only_open"], "allowed", "{report}");
    assert_eq!(
        std::fs::read_dir(probe.path()).unwrap().count(),
        0,
        "the sandbox wrote into the probe dir"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_and_missing_predictions_are_invalid_not_errors() {
    let pool = pool(10).await;
    let score_against_box = |pred: Option<CodeText>| {
        let input = PairInput {
            id: "item".into(),
            gt: CodeText::Utf8(BOX.into()),
            pred,
        };
        score_pair(&pool, input, Protocols::ALL)
    };
    let item = score_against_box(Some(CodeText::NotUtf8 { valid_up_to: 3 })).await;
    assert_eq!(item.status, Status::Syntax);
    assert!(item.message.contains("UTF-8"));
    let item = score_against_box(None).await;
    assert_eq!(item.status, Status::Missing);
    let item = score_against_box(Some(CodeText::Utf8(BOX.into()))).await;
    assert_eq!(item.status, Status::Ok);
    assert_eq!(item.shell_iou, Some(1.0));
    assert!((item.volume_iou.unwrap() - 1.0).abs() < 1e-9);
}
