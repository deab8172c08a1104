//! `rag`: image of a mechanical part -> CadQuery code. A thin CLI over the library crates.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use evaluator::score::{score_pair_with, score_sets};
mod coverage;
mod dataset;
mod demo;
mod generation;
mod native;
mod report;
mod retrieval;
mod train;

use evaluator::{
    reference, CodeSet, PairInput, PatternSearch, Protocols, PythonEnv, SandboxLimits, Summary,
    WorkerPool,
};

#[derive(Parser)]
#[command(
    name = "rag",
    version,
    about = "Image of a mechanical part -> CadQuery code (retrieval-augmented)"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create the CadQuery environment (venv with the locked CadQuery 2.8); idempotent.
    Setup {
        /// Where to put the venv (default: $CADRAG_VENV or ~/.local/share/cadrag/venv).
        #[arg(long)]
        venv: Option<PathBuf>,
    },
    /// Score predicted CadQuery code against ground truth: VSR and IoU.
    Score(ScoreArgs),
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Execute a CadQuery file in the sandbox and render it in the GenCAD style.
    Render {
        /// The CadQuery code (.py).
        code: PathBuf,
        /// Output PNG.
        #[arg(long)]
        out: PathBuf,
        /// Image side in pixels.
        #[arg(long, default_value_t = 448)]
        size: u32,
    },
    /// Build, inspect and check corpora.
    Dataset {
        #[command(subcommand)]
        what: dataset::DatasetCommand,
    },
    /// Build retrieval indices.
    Index {
        #[command(subcommand)]
        what: retrieval::IndexCommand,
    },
    /// The nearest corpus parts of an image, with their code.
    Search(retrieval::SearchArgs),
    /// Image -> CadQuery code: the generator with retrieved neighbours (`--model`), or the
    /// nearest neighbour's code (`--retrieval-only`).
    Generate(generation::GenerateArgs),
    /// Evaluate image -> code on a corpus split with the real metrics.
    Eval(generation::EvalArgs),
    /// Train models (the small CLIP image <-> code, the code generator).
    Train {
        #[command(subcommand)]
        what: train::TrainCommand,
    },
    /// The main job end to end on the built-in default data.
    Demo {
        /// Where to write the demo's inputs and results.
        #[arg(long, default_value = "target/demo")]
        out: PathBuf,
        /// Rows of the synthetic corpus it builds and searches (more answers real images
        /// better and takes longer: about 38 rows/s on 2 cores).
        #[arg(long, default_value_t = demo::DEFAULT_ROWS)]
        rows: usize,
    },
}

#[derive(clap::Args, Clone)]
pub(crate) struct PoolArgs {
    /// Worker processes (default: number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Wall-clock seconds a snippet may run before it is killed.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Memory (MiB) a snippet may allocate.
    #[arg(long, default_value_t = 2048)]
    memory_mb: u64,
}

impl Default for PoolArgs {
    fn default() -> Self {
        PoolArgs {
            workers: None,
            timeout: 10.0,
            memory_mb: 2048,
        }
    }
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// Ground truth: jsonl of {"id", "code"} or a folder of <id>.py.
    #[arg(long)]
    gt: PathBuf,
    /// Predictions, same formats.
    #[arg(long)]
    pred: PathBuf,
    #[arg(long, value_enum, default_value_t = ProtocolArg::All)]
    protocol: ProtocolArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Write one JSON row per id to this file.
    #[arg(long)]
    per_item: Option<PathBuf>,
    /// Keep the rows already in --per-item and score only the rest.
    #[arg(long, requires = "per_item")]
    resume: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Shell,
    Volume,
    All,
}

impl From<ProtocolArg> for Protocols {
    fn from(p: ProtocolArg) -> Self {
        match p {
            ProtocolArg::Shell => Protocols {
                shell: true,
                volume: false,
            },
            ProtocolArg::Volume => Protocols {
                shell: false,
                volume: true,
            },
            ProtocolArg::All => Protocols::ALL,
        }
    }
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Pairs per second of `score` (both protocols by default) on the 44 reference pairs.
    Score {
        #[command(flatten)]
        pool: PoolArgs,
        /// Passes over the 44 pairs.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Time one protocol alone (where the time goes), or both.
        #[arg(long, value_enum, default_value_t = ProtocolArg::All)]
        protocol: ProtocolArg,
        /// Volume IoU: run the boolean for all four sign patterns, sharing and skipping
        /// none (what the shortcuts save).
        #[arg(long)]
        all_patterns: bool,
    },
    /// Images per second of the renderer (one thread, 448x448, reference parts).
    Render {
        /// Passes over the 8 reference parts.
        #[arg(long, default_value_t = 20)]
        repeat: usize,
    },
    /// HNSW recall and latency vs exact search, index build throughput, load time, memory.
    Index(retrieval::BenchIndexArgs),
    /// Execution-guided selection: candidates executed per second, seconds per image.
    Select(generation::BenchSelectArgs),
    /// Corpus coverage without a model: per query, the true IoU of the top-1 neighbour, of
    /// the best render match and of the best of the top k, for one or more indices.
    Coverage(coverage::BenchCoverageArgs),
    /// The native ray-cast renderer against the CadQuery path: unsure rate, mask IoU, grey
    /// levels and edges per program, and renders per second of each path.
    Native(native::BenchNativeArgs),
    /// Valid samples per second of `dataset synth`.
    Synth {
        /// Valid samples to produce.
        #[arg(long, default_value_t = 300)]
        n: usize,
        #[command(flatten)]
        pool: PoolArgs,
    },
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

pub(crate) async fn start_pool(args: &PoolArgs) -> Result<Arc<WorkerPool>> {
    let env = PythonEnv::locate()?;
    let limits = SandboxLimits {
        timeout: Duration::from_secs_f64(args.timeout.max(0.1)),
        memory_mb: args.memory_mb,
    };
    let size = args.workers.unwrap_or_else(cores);
    eprintln!("starting {size} CadQuery workers...");
    Ok(WorkerPool::start(env, size, limits).await?)
}

/// Ctrl-C sets the flag; long jobs poll it, save what they have and exit 130.
pub(crate) fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            f.store(true, Ordering::SeqCst);
        }
    });
    flag
}

/// The one progress style of long jobs: bar, counts, elapsed < ETA, rate, and the job's
/// current message (stage, loss).
pub(crate) fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} [{elapsed_precise} < {eta_precise}] {per_sec} {msg}",
        )
        .expect("valid template"),
    );
    bar
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into())
}

fn print_table(s: &Summary, protocols: Protocols) {
    println!("ids scored     {}", s.n);
    println!("valid          {} (VSR {:.4})", s.valid, s.vsr);
    if protocols.shell {
        println!(
            "shell IoU      {} over valid, {} with invalid as 0",
            fmt_opt(s.shell_iou_mean_valid),
            fmt_opt(s.shell_iou_mean_all)
        );
    }
    if protocols.volume {
        println!(
            "volume IoU     {} over valid, {} with invalid as 0",
            fmt_opt(s.volume_iou_mean_valid),
            fmt_opt(s.volume_iou_mean_all)
        );
    }
    let counts: Vec<String> = s
        .status_counts
        .iter()
        .map(|(st, c)| format!("{}={c}", st.as_str()))
        .collect();
    println!("statuses       {}", counts.join(" "));
    if !s.missing.is_empty() {
        println!("missing preds  {}", s.missing.join(", "));
    }
    if !s.gt_invalid.is_empty() {
        println!(
            "gt failed      {} (left out of IoU means)",
            s.gt_invalid.join(", ")
        );
    }
    println!("seconds        {:.2}", s.seconds);
}

async fn score(args: ScoreArgs) -> Result<ExitCode> {
    let gt = CodeSet::load(&args.gt).context("reading --gt")?;
    let pred = CodeSet::load(&args.pred).context("reading --pred")?;
    let protocols: Protocols = args.protocol.into();
    let pool = start_pool(&args.pool).await?;
    let start = Instant::now();
    let bar = progress_bar(gt.len() as u64);
    let run = score_sets(
        pool,
        &gt,
        &pred,
        protocols,
        args.per_item.as_deref(),
        args.resume,
        &bar,
    )
    .await?;
    bar.finish_and_clear();
    if run.resumed > 0 {
        eprintln!(
            "resumed: {} ids taken from {}",
            run.resumed,
            args.per_item
                .as_ref()
                .expect("resume needs per-item")
                .display()
        );
    }
    if run.interrupted {
        eprintln!(
            "interrupted after {} of {} ids; rerun with --per-item FILE --resume to finish",
            run.items.len(),
            gt.len()
        );
        return Ok(ExitCode::from(130));
    }
    let summary = Summary::of(&run.items, start.elapsed().as_secs_f64());
    if args.json {
        println!("{}", summary.to_json(protocols));
    } else {
        print_table(&summary, protocols);
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench_score(
    pool_args: PoolArgs,
    repeat: usize,
    protocols: Protocols,
    search: PatternSearch,
) -> Result<ExitCode> {
    let pairs = reference::pairs();
    let pool = start_pool(&pool_args).await?;
    let reference_seconds: f64 = pairs
        .iter()
        .map(|p| p.expected.reference_seconds)
        .sum::<f64>()
        / pairs.len() as f64;
    let mut per_pass = Vec::new();
    let mut latencies = Vec::new();
    let mut booleans = 0u64;
    for pass in 0..repeat.max(1) {
        let start = Instant::now();
        let mut handles = Vec::new();
        for (i, p) in pairs.iter().enumerate() {
            let pool = pool.clone();
            let input = PairInput {
                id: i.to_string(),
                gt: evaluator::CodeText::Utf8(p.gt_code.clone()),
                pred: Some(evaluator::CodeText::Utf8(p.pred_code.clone())),
            };
            handles.push(tokio::spawn(async move {
                score_pair_with(&pool, input, protocols, search).await
            }));
        }
        for h in handles {
            let item = h.await?;
            if item.status != evaluator::Status::Ok {
                bail!("reference pair {} failed: {}", item.id, item.message);
            }
            latencies.push(item.seconds);
            booleans += u64::from(item.volume_booleans);
        }
        let secs = start.elapsed().as_secs_f64();
        println!("pass {}: {} pairs in {secs:.2} s", pass + 1, pairs.len());
        per_pass.push(secs);
    }
    let best = per_pass.iter().cloned().fold(f64::INFINITY, f64::min);
    let mean = per_pass.iter().sum::<f64>() / per_pass.len() as f64;
    let n = pairs.len() as f64;
    println!(
        "bench score: {} reference pairs, {}, {} workers on {} cores",
        pairs.len(),
        match (protocols.shell, protocols.volume) {
            (true, true) => "both protocols",
            (true, false) => "shell protocol only",
            _ => "volume protocol only",
        },
        pool.size(),
        cores()
    );
    println!(
        "  wall per pair      {:.4} s (mean of passes), {:.4} s (best pass)",
        mean / n,
        best / n
    );
    println!("  pairs per second   {:.2}", n / mean);
    if protocols.volume {
        println!(
            "  OCC booleans       {:.2} per pair ({})",
            booleans as f64 / (n * per_pass.len() as f64),
            match search {
                PatternSearch::Shared => "congruent sign patterns shared, bounded ones skipped",
                PatternSearch::Every => "all four sign patterns",
            }
        );
    }
    println!("  reference metric   {reference_seconds:.2} s per pair (shell only, 2 cores, from expected_iou.jsonl)");
    println!(
        "  speed-up           {:.0}x",
        reference_seconds / (mean / n)
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Setup { venv } => {
            let venv = venv.unwrap_or_else(evaluator::env::venv_dir);
            match evaluator::env::setup(&venv, &|m| eprintln!("setup: {m}"))? {
                evaluator::SetupOutcome::AlreadyUpToDate => {
                    println!("CadQuery environment at {} is up to date", venv.display())
                }
                evaluator::SetupOutcome::Installed => {
                    println!("CadQuery environment ready at {}", venv.display())
                }
            }
            if std::env::var_os(evaluator::env::VENV_VAR).is_none()
                && venv != evaluator::env::venv_dir()
            {
                println!(
                    "set {}={} so other commands find it",
                    evaluator::env::VENV_VAR,
                    venv.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Score(args) => score(args).await,
        Command::Bench {
            what:
                BenchWhat::Score {
                    pool,
                    repeat,
                    protocol,
                    all_patterns,
                },
        } => {
            let search = if all_patterns {
                PatternSearch::Every
            } else {
                PatternSearch::Shared
            };
            bench_score(pool, repeat, protocol.into(), search).await
        }
        Command::Bench {
            what: BenchWhat::Render { repeat },
        } => dataset::bench_render(repeat).await,
        Command::Bench {
            what: BenchWhat::Synth { n, pool },
        } => dataset::bench_synth(n, pool).await,
        Command::Render { code, out, size } => dataset::render(&code, &out, size).await,
        Command::Dataset { what } => dataset::dataset(what).await,
        Command::Index { what } => retrieval::index(what).await,
        Command::Search(args) => retrieval::search(args).await,
        Command::Generate(args) => generation::generate(args).await,
        Command::Train { what } => train::train(what).await,
        Command::Eval(args) => generation::eval(args).await,
        Command::Bench {
            what: BenchWhat::Index(args),
        } => retrieval::bench_index(args).await,
        Command::Bench {
            what: BenchWhat::Select(args),
        } => generation::bench_select(args).await,
        Command::Bench {
            what: BenchWhat::Coverage(args),
        } => coverage::bench_coverage(args).await,
        Command::Bench {
            what: BenchWhat::Native(args),
        } => native::bench_native(args).await,
        Command::Demo { out, rows } => demo::demo(&out, rows).await,
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
