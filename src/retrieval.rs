//! The retrieval commands: `index build`, `search` and `bench index`. Thin: the work is in the
//! indexer and retriever.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use generator::eval::percentile;
use indexer::corpus::Split;
use indexer::encoder::{encoder_from_spec, load_image, normalise_unit, parallel_map};
use indexer::index::hnsw::{build_graph, dump_graph, HnswParams};
use indexer::index::thumbs::thumbnail;
use indexer::index::{build_index, BuildOptions, IndexError};
use retriever::{resident_bytes, ExactIndex, HnswIndex, NeighbourSet, Retriever, VectorIndex};
use seeded::Rng;

use crate::progress_bar;

#[derive(Subcommand)]
pub enum IndexCommand {
    /// Embed a corpus split and write an index folder (HNSW + tantivy + code store + manifest).
    Build(BuildArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// Corpus folder (GenCAD parquet, our synthetic output, or <id>.png + jsonl).
    #[arg(long)]
    corpus: PathBuf,
    /// Image encoder: `pixel` (the pixel-space baseline, `pixel-N` for N x N), `edges` /
    /// `hog` (gradient magnitude / oriented gradients, `-N` cells per side), a CLIP
    /// checkpoint folder (ours or a Hugging Face one), or `A+B` (both, equal weight).
    #[arg(long)]
    encoder: String,
    /// Index folder to create or replace atomically (e.g. indices/NAME).
    #[arg(long)]
    out: PathBuf,
    /// Split to index.
    #[arg(long, default_value = "train")]
    split: String,
    /// Index only the first N rows of the split.
    #[arg(long)]
    limit: Option<usize>,
    /// Images decoded and embedded per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Stop after reading N rows in this call, progress saved in NAME.partial (rerun to
    /// continue; Ctrl-C does the same).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Print the build report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SearchArgs {
    /// Query image (PNG/JPEG, any size; grey and RGBA are converted).
    image: PathBuf,
    /// Index folder.
    #[arg(long)]
    index: PathBuf,
    /// Neighbours to return.
    #[arg(short, long, default_value_t = 5)]
    k: usize,
    /// Only neighbours whose code uses this dialect token (cut, union, circle,
    /// threePointArc, both, ...); repeat for several.
    #[arg(long)]
    require: Vec<String>,
    /// Query encoder; default: the one the index was built with. A different one is refused.
    #[arg(long)]
    encoder: Option<String>,
    /// Exact neighbours by brute force over the index's vectors instead of the HNSW graph
    /// (a recall check; linear in the index size).
    #[arg(long)]
    exact: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Also write an HTML page of the query and each neighbour's thumbnail, score and code
    /// into this folder (DIR/index.html).
    #[arg(long, value_name = "DIR")]
    gallery: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchIndexArgs {
    /// Real corpus: its train split gives the build throughput and the vectors whose
    /// distribution the synthetic ones follow.
    #[arg(long, default_value = "data/synth-20k")]
    corpus: PathBuf,
    /// Encoder for the real vectors.
    #[arg(long, default_value = "pixel")]
    encoder: String,
    /// Real rows to index (build throughput and seed vectors).
    #[arg(long, default_value_t = 2000)]
    build_rows: usize,
    /// Synthetic vectors in the benchmark index.
    #[arg(long, default_value_t = 150_000)]
    n: usize,
    /// Vector lengths to benchmark (0 = the encoder's own); comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    dims: Vec<usize>,
    /// Queries (fresh synthetic vectors, not in the index).
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// HNSW ef_search values to report (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "32,64,128")]
    ef: Vec<usize>,
}

pub async fn index(cmd: IndexCommand) -> Result<ExitCode> {
    match cmd {
        IndexCommand::Build(args) => index_build(args).await,
    }
}

async fn index_build(args: BuildArgs) -> Result<ExitCode> {
    let split: Split = args.split.parse()?;
    let encoder = encoder_from_spec(&args.encoder)?;
    let opts = BuildOptions {
        limit: args.limit,
        batch: args.batch,
        stop_after: args.stop_after,
        interrupt: Some(crate::interrupt_flag()),
        ..BuildOptions::new(args.corpus.clone(), split, args.out.clone())
    };
    let result = tokio::task::spawn_blocking(move || {
        let bar = progress_bar(0);
        let r = build_index(&opts, encoder.as_ref(), &bar);
        bar.finish_and_clear();
        r
    })
    .await?;
    let report = match result {
        Err(e @ IndexError::Stopped { interrupted, .. }) => {
            eprintln!("{e}");
            return Ok(if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            });
        }
        r => r.with_context(|| format!("building {}", args.out.display()))?,
    };
    for m in &report.skip_messages {
        eprintln!("warning: {m}");
    }
    if report.skipped > report.skip_messages.len() {
        eprintln!(
            "warning: {} more rows skipped",
            report.skipped - report.skip_messages.len()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("index          {}", report.out.display());
        println!(
            "vectors        {} ({} rows skipped)",
            report.vectors, report.skipped
        );
        println!(
            "seconds        {:.2} (embed {:.2}, hnsw {:.2}, write {:.2})",
            report.seconds, report.embed_seconds, report.hnsw_seconds, report.write_seconds
        );
        println!("images/s       {:.1}", report.images_per_second);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn load_retriever(index: &Path, encoder: Option<&str>) -> Result<Retriever> {
    let encoder = encoder.map(encoder_from_spec).transpose()?;
    Retriever::load(index, encoder).with_context(|| format!("loading index {}", index.display()))
}

pub async fn search(args: SearchArgs) -> Result<ExitCode> {
    let mut retriever = load_retriever(&args.index, args.encoder.as_deref())?;
    if args.exact {
        retriever = retriever.exact()?;
    }
    let set = retriever.search_path(&args.image, args.k, &args.require)?;
    if let Some(dir) = &args.gallery {
        let page = search_gallery(&retriever, &args.image, &set, dir)?;
        eprintln!("gallery: {}", page.display());
    }
    if args.json {
        let v = serde_json::json!({
            "image": args.image.display().to_string(),
            "index": args.index.display().to_string(),
            "encoder": retriever.manifest().encoder.id,
            "neighbours": set.neighbours,
            "embed_ms": set.embed_seconds * 1e3,
            "search_ms": set.search_seconds * 1e3,
        });
        println!("{v}");
    } else {
        println!("{:>4} {:>8}  id", "rank", "score");
        for n in &set.neighbours {
            println!("{:>4} {:>8.4}  {}", n.rank, n.score, n.id);
        }
        if set.neighbours.is_empty() {
            println!("(no neighbour matches the filter)");
        }
        eprintln!(
            "embed {:.2} ms, search {:.3} ms",
            set.embed_seconds * 1e3,
            set.search_seconds * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `rag search --gallery`: the query (as a thumbnail) and its neighbours' thumbnails
/// from the index, with scores and code.
fn search_gallery(
    retriever: &Retriever,
    image: &Path,
    set: &NeighbourSet,
    dir: &Path,
) -> Result<PathBuf> {
    use evaluator::report::{write_search_page, Picture, SearchHit};
    let query = Picture::Png(thumbnail(&load_image(image)?));
    let data_ids: Vec<usize> = set.neighbours.iter().map(|n| n.data_id).collect();
    let thumbs = retriever.thumbnails(&data_ids)?;
    let hits: Vec<SearchHit> = set
        .neighbours
        .iter()
        .enumerate()
        .map(|(i, n)| SearchHit {
            rank: n.rank,
            id: n.id.clone(),
            score: n.score,
            picture: match &thumbs {
                Some(t) => Picture::Png(t[i].clone()),
                None => Picture::Missing(
                    "no thumbnails in this index (built before they were stored; rebuild it)"
                        .into(),
                ),
            },
            code: n.code.clone(),
        })
        .collect();
    let title = format!(
        "{} in {} ({})",
        image.display(),
        retriever.dir().display(),
        retriever.manifest().encoder.id
    );
    Ok(write_search_page(dir, &title, &query, &hits)?)
}

fn normalise(v: &mut [f32]) {
    normalise_unit(v);
}

/// Real vectors projected to `dims` by a fixed random Gaussian matrix (identity when equal).
fn project(real: &[Vec<f32>], dims: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    let d0 = real.first().map_or(0, |v| v.len());
    if dims == d0 {
        return real.to_vec();
    }
    let m: Vec<f32> = (0..dims * d0).map(|_| rng.normal() as f32).collect();
    real.iter()
        .map(|v| {
            let mut out: Vec<f32> = (0..dims)
                .map(|r| {
                    m[r * d0..(r + 1) * d0]
                        .iter()
                        .zip(v)
                        .map(|(a, b)| a * b)
                        .sum()
                })
                .collect();
            normalise(&mut out);
            out
        })
        .collect()
}

/// Synthetic vectors following the real ones: a random real vector moved part of the way
/// (0-50%) towards another random real vector, plus isotropic noise at ~0.2 of its norm,
/// renormalised; fills the space between real embeddings without duplicating them.
fn synthesise(base: &[Vec<f32>], n: usize, rng: &mut Rng) -> Vec<Vec<f32>> {
    let dims = base[0].len();
    let sigma = 0.2 / (dims as f32).sqrt();
    (0..n)
        .map(|_| {
            let a = &base[rng.below(base.len())];
            let b = &base[rng.below(base.len())];
            let t = 0.5 * rng.unit() as f32;
            let mut v: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + t * (y - x)).collect();
            v.iter_mut().for_each(|x| *x += sigma * rng.normal() as f32);
            normalise(&mut v);
            v
        })
        .collect()
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| {
        format!("{:.1}", b as f64 / (1u64 << 20) as f64)
    })
}

fn rss_delta(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

pub async fn bench_index(args: BenchIndexArgs) -> Result<ExitCode> {
    tokio::task::spawn_blocking(move || bench_index_blocking(&args)).await?
}

fn bench_index_blocking(args: &BenchIndexArgs) -> Result<ExitCode> {
    let tmp = std::env::temp_dir().join(format!("cadrag-bench-index-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = bench_index_in(args, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn bench_index_in(args: &BenchIndexArgs, tmp: &Path) -> Result<ExitCode> {
    let cores = crate::cores();
    // 1. `index build` on the real corpus: throughput, load time, memory.
    let encoder = encoder_from_spec(&args.encoder)?;
    let real_dir = tmp.join("real");
    let opts = BuildOptions {
        limit: Some(args.build_rows),
        ..BuildOptions::new(args.corpus.clone(), Split::Train, real_dir.clone())
    };
    let bar = progress_bar(0);
    let report = build_index(&opts, encoder.as_ref(), &bar).with_context(|| {
        format!(
            "building a {}-row index of {}",
            args.build_rows,
            args.corpus.display()
        )
    })?;
    bar.finish_and_clear();
    let rss0 = resident_bytes();
    let t = Instant::now();
    let retriever = Retriever::load(&real_dir, None)?;
    let real_load = t.elapsed().as_secs_f64();
    let real_rss = rss_delta(rss0, resident_bytes());
    let index = retriever.index();
    let real: Vec<Vec<f32>> = (0..index.len())
        .filter_map(|i| index.vector(i).map(|v| v.to_vec()))
        .collect();
    println!(
        "bench index: {} cores; encoder {} ({} dims)",
        cores,
        retriever.manifest().encoder.id,
        retriever.manifest().dims
    );
    println!(
        "  index build (real)   {} rows of {} train in {:.2} s: {:.1} images/s (embed {:.2} s, hnsw {:.2} s, write {:.2} s)",
        report.vectors + report.skipped,
        args.corpus.display(),
        report.seconds,
        report.images_per_second,
        report.embed_seconds,
        report.hnsw_seconds,
        report.write_seconds
    );
    println!(
        "  index load (real)    {:.3} s, +{} MiB RSS ({} vectors)",
        real_load,
        mib(real_rss),
        real.len()
    );
    drop(retriever);

    // 2. Synthetic vectors from the real ones' distribution: recall vs exact, latency.
    let mut rng = Rng::from_state(0x5eed);
    for &d in &args.dims {
        let dims = if d == 0 { encoder.dims() } else { d };
        let base = project(&real, dims, &mut rng);
        let data = synthesise(&base, args.n, &mut rng);
        let queries = synthesise(&base, args.queries, &mut rng);
        let rss_a = resident_bytes();
        let t = Instant::now();
        let graph = build_graph(&data, &HnswParams::default());
        let build_s = t.elapsed().as_secs_f64();
        let rss_b = resident_bytes();
        let dir = tmp.join(format!("synthetic-{dims}"));
        std::fs::create_dir_all(&dir)?;
        dump_graph(&graph, &dir)?;
        drop(graph);
        let rss_c = resident_bytes();
        let t = Instant::now();
        let mut hnsw =
            HnswIndex::load_dump(&dir, data.len(), dims, HnswParams::default().ef_search)?;
        let load_s = t.elapsed().as_secs_f64();
        let rss_d = resident_bytes();
        let exact = ExactIndex::new(&data);
        drop(data);
        let truth: Vec<Vec<usize>> = parallel_map(&queries, |q| {
            exact.search(q, 10, None).into_iter().map(|h| h.0).collect()
        });
        let t = Instant::now();
        let _ = parallel_map(&queries[..queries.len().min(50)], |q| {
            exact.search(q, 10, None)
        });
        let exact_ms =
            1e3 * t.elapsed().as_secs_f64() / queries.len().min(50) as f64 * cores as f64;
        println!(
            "  synthetic {} x {dims}: HNSW M={} ef_construction={} built in {:.1} s ({:.0} vectors/s on {cores} cores), +{} MiB RSS while built; reload {:.2} s, +{} MiB RSS",
            args.n,
            HnswParams::default().max_nb_connection,
            HnswParams::default().ef_construction,
            build_s,
            args.n as f64 / build_s,
            mib(rss_delta(rss_a, rss_b)),
            load_s,
            mib(rss_delta(rss_c, rss_d)),
        );
        println!("    exact search        {exact_ms:.2} ms/query (one thread)");
        for &ef in &args.ef {
            hnsw.set_ef_search(ef);
            let mut found = 0usize;
            let mut lat = Vec::with_capacity(queries.len());
            for (q, want) in queries.iter().zip(&truth) {
                let t = Instant::now();
                let got = hnsw.search(q, 10, None);
                lat.push(t.elapsed().as_secs_f64());
                found += got.iter().filter(|h| want.contains(&h.0)).count();
            }
            lat.sort_by(f64::total_cmp);
            let recall = found as f64 / (10 * queries.len()) as f64;
            println!(
                "    ef_search {ef:>4}: recall@10 vs exact {recall:.4}, query p50 {:.3} ms, p95 {:.3} ms ({} queries, one thread)",
                percentile(&lat, 50.0).unwrap_or(0.0) * 1e3,
                percentile(&lat, 95.0).unwrap_or(0.0) * 1e3,
                queries.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_vectors_are_unit_and_near_their_bases() {
        let mut rng = Rng::from_state(1);
        let mut base = vec![vec![0f32; 16]; 4];
        for (i, b) in base.iter_mut().enumerate() {
            b[i] = 1.0;
        }
        let s = synthesise(&base, 100, &mut rng);
        for v in &s {
            let n: f32 = v.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4);
            let best = base
                .iter()
                .map(|b| b.iter().zip(v).map(|(x, y)| x * y).sum::<f32>())
                .fold(f32::MIN, f32::max);
            assert!(best > 0.6, "{best}");
        }
        let p = project(&base, 8, &mut rng);
        assert_eq!(p[0].len(), 8);
    }
}
