//! Renders the eight reference samples natively for a few seconds and prints renders per
//! second at 128 and 448 px: a quick loop for profiling (`rag bench native` is the benchmark).

fn main() {
    let text = include_str!("../../src/reference/samples.jsonl");
    let programs: Vec<dialect::Program> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("valid JSON");
            dialect::parse(v["cadquery"].as_str().expect("code")).expect("dialect")
        })
        .collect();
    for size in [128, 448] {
        let start = std::time::Instant::now();
        let mut n = 0;
        while start.elapsed().as_secs_f64() < 2.0 {
            for p in &programs {
                if let Err(e) = raycast::render(p, size) {
                    println!("{e}");
                }
                n += 1;
            }
        }
        println!(
            "{size} px: {:.0} renders/s",
            n as f64 / start.elapsed().as_secs_f64()
        );
    }
}
