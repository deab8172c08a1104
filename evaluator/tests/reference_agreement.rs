//! Our metrics against the original Python metric on the 44 reference pairs.
//! Needs the CadQuery environment (`rag setup`); fails, never skips, without it.

mod common;

use evaluator::score::score_pair;
use evaluator::{reference, CodeText, PairInput, PatternSearch, Protocols, Status, Wants};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_and_volume_iou_agree_with_the_reference_metric() {
    let pool = common::pool(60, 4096).await;
    let pairs = reference::pairs();
    let mut handles = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let pool = pool.clone();
        let input = PairInput {
            id: i.to_string(),
            gt: CodeText::Utf8(p.gt_code.clone()),
            pred: Some(CodeText::Utf8(p.pred_code.clone())),
        };
        handles.push(tokio::spawn(async move {
            score_pair(&pool, input, Protocols::ALL).await
        }));
    }
    let (mut shell_ok, mut volume_ok) = (0, 0);
    let mut report = Vec::new();
    for (p, h) in pairs.iter().zip(handles) {
        let item = h.await.unwrap();
        assert_eq!(item.status, Status::Ok, "{}: {}", item.id, item.message);
        let shell = item.shell_iou.expect("shell IoU computed");
        let volume = item.volume_iou.expect("volume IoU computed");
        let e = &p.expected;
        let shell_hit = (shell - e.shell_iou).abs() <= 0.03;
        let volume_hit = (volume - e.volume_iou).abs() <= 0.01;
        shell_ok += shell_hit as usize;
        volume_ok += volume_hit as usize;
        report.push(format!(
            "{:9} {} {} shell {:.4} (ref {:.4}){} volume {:.4} (ref {:.4}){} {:.2}s",
            e.kind,
            e.gt_id,
            e.pred_id,
            shell,
            e.shell_iou,
            if shell_hit { "" } else { " MISS" },
            volume,
            e.volume_iou,
            if volume_hit { "" } else { " MISS" },
            item.seconds
        ));
    }
    println!("{}", report.join("\n"));
    println!(
        "shell within 0.03: {shell_ok}/{}; volume within 0.01: {volume_ok}/{}",
        pairs.len(),
        pairs.len()
    );
    let need = (0.95 * pairs.len() as f64).ceil() as usize;
    let misses: Vec<&String> = report.iter().filter(|r| r.contains("MISS")).collect();
    let misses = misses
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        shell_ok >= need,
        "shell IoU agrees on {shell_ok} of {} pairs; misses:\n{misses}",
        pairs.len()
    );
    assert!(
        volume_ok >= need,
        "volume IoU agrees on {volume_ok} of {} pairs; misses:\n{misses}",
        pairs.len()
    );
}

/// The volume IoU's shortcuts (one boolean for sign patterns that a mirror symmetry makes
/// congruent, skipping patterns whose bound cannot win) against running all four, pair by
/// pair. Pairs with a solid that fails OCC's check are left out: their booleans change
/// from run to run either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_sign_patterns_give_the_volume_iou_of_all_four() {
    let pool = common::pool(60, 4096).await;
    let pairs = reference::pairs();
    let run = |patterns: PatternSearch| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|p| {
                let (pool, gt, pred) = (pool.clone(), p.gt_code.clone(), p.pred_code.clone());
                let wants = Wants {
                    volume: true,
                    patterns,
                    ..Wants::default()
                };
                tokio::spawn(async move { pool.pair(&gt, &pred, wants).await })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await.unwrap());
            }
            out
        }
    };
    let every = run(PatternSearch::Every).await;
    let shared = run(PatternSearch::Shared).await;
    let (mut compared, mut booleans_every, mut booleans_shared) = (0, 0, 0);
    let mut report = Vec::new();
    for ((p, e), s) in pairs.iter().zip(&every).zip(&shared) {
        let valid = |x: &evaluator::PairExecution| {
            x.gt.props.as_ref().is_some_and(|p| p.valid)
                && x.pred.props.as_ref().is_some_and(|p| p.valid)
        };
        if !(valid(e) && valid(s)) {
            continue;
        }
        compared += 1;
        booleans_every += e.volume_booleans;
        booleans_shared += s.volume_booleans;
        let (a, b) = (e.volume_iou.unwrap(), s.volume_iou.unwrap());
        report.push(format!(
            "{:9} {} {} all four {a:.8} ({} booleans), shared {b:.8} ({}){}",
            p.expected.kind,
            p.expected.gt_id,
            p.expected.pred_id,
            e.volume_booleans,
            s.volume_booleans,
            if (a - b).abs() > 1e-5 { " DIFFERS" } else { "" }
        ));
    }
    println!("{}", report.join("\n"));
    println!("{compared} pairs: {booleans_every} booleans for all four, {booleans_shared} shared");
    assert!(compared >= 25, "only {compared} pairs with valid solids");
    assert!(
        !report.iter().any(|r| r.contains("DIFFERS")),
        "shared patterns change the volume IoU by more than 1e-5:\n{}",
        report.join("\n")
    );
    assert_eq!(booleans_every, 4 * compared as u32);
    assert!(
        booleans_shared < booleans_every * 3 / 4,
        "the shortcuts saved too little: {booleans_shared} of {booleans_every} booleans"
    );
}
