//! `generate` and `eval`: image -> code by retrieval, the generator, or both, and the scoring
//! of a corpus split with the real metrics. Thin: the work is in the generator crate.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use evaluator::score::score_pair;
use evaluator::{Breakdown, CodeText, PairInput, Protocols, Summary, WorkerPool};
use generator::fallback::{first_that_runs, CodeSource};
use generator::fit::{Choose, FitOptions};
use generator::select::{
    self, select, RankCheck, RefineOptions, RenderJudge, ScoredCandidate, SelectOptions, Selection,
    SelectionStats,
};
use generator::{answer_image, answer_vector, Answer, DecodeOptions, Generator, Mode, Strategy};
use indexer::corpus::{CorpusReader, Split};
use indexer::encoder::{load_image, to_rgb_on_white, Fnv1a64};
use retriever::Retriever;

use crate::report;
use crate::retrieval::{load_retriever, percentile};
use crate::{fmt_opt, print_table, progress_bar, start_pool, PoolArgs};

/// Decoding options shared by `generate` and `eval`.
#[derive(Args, Clone)]
pub struct DecodeArgs {
    /// Beam width (1: greedy).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// Sample (top-p) instead of greedy or beam search.
    #[arg(long, conflicts_with = "beam")]
    sample: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sampling nucleus mass.
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most tokens to write.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Decode without the dialect grammar (outputs may then fail to parse).
    #[arg(long)]
    unconstrained: bool,
    /// cpu, or cuda (a build with `--features cuda`); default: the GPU when there is one.
    #[arg(long)]
    device: Option<String>,
}

impl DecodeArgs {
    fn options(&self) -> DecodeOptions {
        let strategy = if self.sample {
            Strategy::Sample {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
            }
        } else if self.beam > 1 {
            Strategy::Beam { width: self.beam }
        } else {
            Strategy::Greedy
        };
        DecodeOptions {
            strategy,
            max_tokens: self.max_tokens,
            constrained: !self.unconstrained,
        }
    }

    fn load(&self, model: &Path, retriever: &Retriever) -> Result<Generator> {
        let device = match &self.device {
            Some(d) => indexer::clip::device(d)?,
            None => indexer::clip::preferred_device(),
        };
        let g = Generator::load(model, &device)
            .with_context(|| format!("loading generator {}", model.display()))?;
        g.check_encoder(&retriever.manifest().encoder)?;
        Ok(g)
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Query image.
    image: PathBuf,
    /// Index folder (its encoder embeds the query).
    #[arg(long)]
    index: PathBuf,
    /// Generator checkpoint (from `rag train generator`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Answer with the nearest neighbour's code.
    #[arg(long, conflicts_with = "model")]
    retrieval_only: bool,
    /// With --model: leave the neighbours out of the prompt (generator only).
    #[arg(long, requires = "model")]
    no_neighbours: bool,
    /// Return the model's program without executing it (by default it is run in the sandbox,
    /// and when it builds no solid the neighbours' code is tried in rank order).
    #[arg(long, requires = "model")]
    unchecked: bool,
    /// Only neighbours whose code uses this dialect token (retrieval only); repeat for several.
    #[arg(long, requires = "retrieval_only")]
    require: Vec<String>,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Write the code here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write a render of the answer's solid (448x448 PNG, the dataset's style) here.
    #[arg(long)]
    render: Option<PathBuf>,
    /// Also write the query and the render of the answer side by side (PNG) here.
    #[arg(long)]
    side_by_side: Option<PathBuf>,
    #[command(flatten)]
    select: SelectArgs,
    /// Refine the chosen candidate's numbers against the render match (implies selection).
    #[arg(long, conflicts_with = "retrieval_only")]
    refine: bool,
    /// Print every candidate with its status and render-match cues (implies selection).
    #[arg(long, conflicts_with = "retrieval_only")]
    explain: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

/// `rag generate`: one image -> code (retrieval only, or the model with the fallback check).
pub async fn generate(args: GenerateArgs) -> Result<ExitCode> {
    let retriever = load_retriever(&args.index, None)?;
    let selecting = args.select.samples.is_some() || args.refine || args.explain || args.select.fit;
    // One sandbox pool for every step that runs code, started by the first that needs it.
    let mut pool: Option<Arc<WorkerPool>> = None;
    let code = if selecting {
        if args.retrieval_only {
            bail!("--samples selects among generated candidates; leave out --retrieval-only");
        }
        let pool = pool_of(&mut pool, &args.pool, None).await?;
        generate_by_selection(&args, &retriever, &pool).await?
    } else if args.retrieval_only {
        let set = retriever.search_path(&args.image, 1, &args.require)?;
        let Some(best) = set.neighbours.first() else {
            bail!(
                "no neighbour in {} matches the filter",
                args.index.display()
            );
        };
        eprintln!("nearest neighbour {} (score {:.4})", best.id, best.score);
        best.code.clone()
    } else {
        let Some(model) = &args.model else {
            bail!("pass --model CKPT (a generator from `rag train generator`) or --retrieval-only (the nearest neighbour's code)");
        };
        let g = args.decode.load(model, &retriever)?;
        let image = load_image(&args.image)?;
        let mode = if args.no_neighbours {
            Mode::Generator
        } else {
            Mode::Rag
        };
        let a = answer_image(
            &retriever,
            Some(&g),
            &image,
            mode,
            if args.unchecked {
                1
            } else {
                FALLBACK_NEIGHBOURS
            },
            &args.decode.options(),
        )?;
        let nearest = match (mode, a.neighbours.first()) {
            (Mode::Rag, Some(n)) => format!("; nearest neighbour {} (score {:.4})", n.id, n.score),
            _ => String::new(),
        };
        match (&a.generation, &a.decode_error) {
            (Some(gen), _) => eprintln!(
                "{} wrote {} tokens in {:.2} s ({}){nearest}",
                mode.as_str(),
                gen.tokens,
                a.seconds(),
                if gen.finished {
                    "finished"
                } else {
                    "cut at the token budget"
                },
            ),
            (None, e) => {
                let e = e.as_deref().unwrap_or("no output");
                if args.unchecked {
                    bail!("the model wrote nothing: {e}");
                }
                eprintln!("the model wrote nothing ({e}); trying the neighbours{nearest}");
            }
        }
        if args.unchecked {
            a.code
        } else {
            let pool = pool_of(&mut pool, &args.pool, Some(1)).await?;
            let checked = first_that_runs(&pool, &a).await;
            for r in &checked.rejected {
                eprintln!(
                    "{} does not run ({}: {})",
                    describe(&r.source),
                    r.status,
                    r.message.lines().next().unwrap_or("")
                );
            }
            match &checked.source {
                Some(source) => eprintln!("answer: {} (runs in the sandbox)", describe(source)),
                None => bail!(
                    "neither the generated code nor any of the {} neighbours runs in the sandbox",
                    a.neighbours.len()
                ),
            }
            checked.code
        }
    };
    match &args.out {
        Some(out) => {
            std::fs::write(out, &code).with_context(|| format!("writing {}", out.display()))?;
            println!("{}", out.display());
        }
        None => print!("{code}"),
    }
    if args.render.is_some() || args.side_by_side.is_some() {
        let pool = pool_of(&mut pool, &args.pool, Some(1)).await?;
        write_pictures(&args, &code, &pool).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The pool in `slot`, started with `args` if there is none yet (`workers`, when given, is
/// the size for a step that runs one program, unless `--workers` says otherwise).
async fn pool_of(
    slot: &mut Option<Arc<WorkerPool>>,
    args: &PoolArgs,
    workers: Option<usize>,
) -> Result<Arc<WorkerPool>> {
    if let Some(p) = slot {
        return Ok(p.clone());
    }
    let p = start_pool(&PoolArgs {
        workers: args.workers.or(workers),
        ..args.clone()
    })
    .await?;
    *slot = Some(p.clone());
    Ok(p)
}

/// `generate --samples/--refine/--explain`: execution-guided selection for one image, with
/// the candidates explained on stderr when asked.
async fn generate_by_selection(
    args: &GenerateArgs,
    retriever: &Retriever,
    pool: &Arc<WorkerPool>,
) -> Result<String> {
    let generator = match &args.model {
        Some(m) => Some(args.decode.load(m, retriever)?),
        None => {
            eprintln!("no --model: choosing among the retrieved snippets only");
            None
        }
    };
    let image = load_image(&args.image)?;
    let t = Instant::now();
    let vector = retriever.encoder().encode(&image)?;
    let embed = t.elapsed().as_secs_f64();
    let opts = args
        .select
        .options(&args.decode, args.refine, args.select.fit);
    let (answer, sel) = select_answer(
        retriever,
        generator.as_ref(),
        pool,
        &image,
        &vector,
        embed,
        &opts,
    )
    .await?;
    if args.explain {
        eprint!("{}", sel.explain());
    }
    let Some(chosen) = sel.chosen() else {
        bail!(
            "no candidate and none of the {} retrieved snippets runs in the sandbox",
            answer.neighbours.len()
        );
    };
    eprintln!(
        "answer: {}{} ({} programs executed, {:.2} s)",
        chosen.source.describe(),
        if sel.fell_back {
            ", after every candidate failed"
        } else {
            ""
        },
        sel.executed,
        answer.seconds()
    );
    Ok(sel.code)
}

/// `--render` / `--side-by-side`: the answer's solid rendered in the dataset's style, alone
/// and next to the query.
async fn write_pictures(args: &GenerateArgs, code: &str, pool: &WorkerPool) -> Result<()> {
    let render = pool
        .render(code, 448)
        .await
        .context("rendering the answer")?;
    if let Some(path) = &args.render {
        render
            .save(path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("render: {}", path.display());
    }
    if let Some(path) = &args.side_by_side {
        let query = load_image(&args.image)?;
        let sheet = evaluator::style::side_by_side(&[("query | answer".into(), query, render)]);
        sheet
            .save(path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("query | answer: {}", path.display());
    }
    Ok(())
}

/// Neighbours retrieved as fallbacks when the model's program does not run.
const FALLBACK_NEIGHBOURS: usize = 5;

/// A candidate's origin in words.
fn describe(source: &CodeSource) -> String {
    match source {
        CodeSource::Generated => "the generated code".into(),
        CodeSource::Neighbour { rank, id } => format!("neighbour {rank} ({id})"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalMode {
    /// The top-1 neighbour's code is the prediction.
    Retrieval,
    /// The generator with no neighbours in its prompt.
    Generator,
    /// The generator with the top-k neighbours in its prompt.
    Rag,
    /// Best-of-N: the model's greedy/beam output, `--samples` samples and the top
    /// `--candidates` snippets executed, ranked by render match (snippets only without --model).
    Rerank,
    /// Rerank, then the winner's numbers refined against the render match.
    Refine,
    /// Rerank with the fitted search's programs among the candidates: the retrieved
    /// structures' numbers fitted to the query by the native renderer.
    Fit,
}

impl EvalMode {
    /// The name on the command line and in reports.
    fn as_str(self) -> &'static str {
        match self {
            EvalMode::Retrieval => "retrieval",
            EvalMode::Generator => "generator",
            EvalMode::Rag => "rag",
            EvalMode::Rerank => "rerank",
            EvalMode::Refine => "refine",
            EvalMode::Fit => "fit",
        }
    }

    /// The single-answer path, or None for the execution-guided modes.
    fn pipeline(self) -> Option<Mode> {
        match self {
            EvalMode::Retrieval => Some(Mode::Retrieval),
            EvalMode::Generator => Some(Mode::Generator),
            EvalMode::Rag => Some(Mode::Rag),
            EvalMode::Rerank | EvalMode::Refine | EvalMode::Fit => None,
        }
    }
}

/// Options of execution-guided selection, shared by `generate` and `eval`.
#[derive(Args, Clone)]
pub struct SelectArgs {
    /// Best-of-N: sampled generator outputs among the candidates (`generate`: turns
    /// selection on; `eval`: used by the rerank and refine modes, default 4).
    #[arg(long)]
    samples: Option<usize>,
    /// Top retrieved snippets that are candidates themselves.
    #[arg(long, default_value_t = 5)]
    candidates: usize,
    /// Programs the numeric refinement may execute.
    #[arg(long, default_value_t = 24)]
    refine_budget: usize,
    /// Keep DeepCAD's quantisation (1/128 grids, integer sketch coordinates) when refining.
    #[arg(long)]
    quantise: bool,
    /// Fitted search: fit the retrieved programs' numbers to the query with the native
    /// renderer and add the best as candidates (`generate`, `bench select`; in `eval`, the
    /// fit mode).
    #[arg(long)]
    fit: bool,
    /// Retrieved programs the fitted search takes as structures.
    #[arg(long, default_value_t = FitOptions::default().structures)]
    fit_structures: usize,
    /// Of those, the best-matching ones whose numbers are fitted.
    #[arg(long, default_value_t = FitOptions::default().fitted)]
    fit_fitted: usize,
    /// Native renders per fitted structure.
    #[arg(long, default_value_t = FitOptions::default().budget)]
    fit_budget: usize,
    /// Seconds the fitted search may take per image.
    #[arg(long, default_value_t = FitOptions::default().seconds)]
    fit_seconds: f64,
    /// Image side, in pixels, at which the fitted search compares renders with the query.
    #[arg(long, default_value_t = FitOptions::default().size)]
    fit_size: u32,
    /// Fitted search: also move straight edges one by one (better on synthetic rows, not on
    /// the real dev set).
    #[arg(long)]
    fit_levels: bool,
    /// Weight of the face grey-level term against the coverage term of the native score.
    #[arg(long, default_value_t = FitOptions::default().grey_weight)]
    fit_grey_weight: f64,
    /// With the fitted search, choose the answer among the candidates that ran by the
    /// render judge's score or by the native score.
    #[arg(long, value_enum, default_value_t = FitChoose::Judge)]
    fit_choose: FitChoose,
}

/// `--fit-choose`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FitChoose {
    Judge,
    Native,
}

impl SelectArgs {
    fn options(&self, decode: &DecodeArgs, refine: bool, fit: bool) -> SelectOptions {
        SelectOptions {
            samples: self.samples.unwrap_or(4),
            beam: decode.beam.max(1),
            neighbours: self.candidates,
            temperature: decode.temperature,
            top_p: decode.top_p,
            seed: decode.seed,
            max_tokens: decode.max_tokens,
            constrained: !decode.unconstrained,
            refine: refine.then_some(RefineOptions {
                budget: self.refine_budget,
                quantise: self.quantise,
            }),
            fit: fit.then_some(FitOptions {
                structures: self.fit_structures,
                fitted: self.fit_fitted,
                budget: self.fit_budget,
                seconds: self.fit_seconds,
                size: self.fit_size,
                grey_weight: self.fit_grey_weight,
                levels: self.fit_levels,
                choose: match self.fit_choose {
                    FitChoose::Judge => Choose::Judge,
                    FitChoose::Native => Choose::Native,
                },
                ..FitOptions::default()
            }),
        }
    }
}

/// Answers one embedded image by execution-guided selection, as an [`Answer`] (the chosen
/// code; decode and sandbox time in its latency) with the [`Selection`] behind it.
#[allow(clippy::too_many_arguments)]
async fn select_answer(
    retriever: &Retriever,
    generator: Option<&Generator>,
    pool: &Arc<WorkerPool>,
    image: &image::RgbImage,
    vector: &[f32],
    embed_seconds: f64,
    opts: &SelectOptions,
) -> Result<(Answer, Selection)> {
    let k = generator.map_or(0, |g| g.model.config().layout.k);
    let set = retriever.search_vector(
        vector,
        (opts.neighbours + select::FALLBACK_NEIGHBOURS)
            .max(k)
            .max(opts.fit.map_or(0, |f| f.structures)),
        &[],
    )?;
    let mut judge = RenderJudge::new(pool.clone(), retriever.encoder(), image, vector.to_vec());
    let sel = select(&mut judge, generator, vector, &set.neighbours, opts).await;
    let answer = Answer {
        code: sel.code.clone(),
        mode: if generator.is_some() {
            Mode::Rag
        } else {
            Mode::Retrieval
        },
        neighbours: set.neighbours,
        generation: None,
        decode_error: None,
        embed_seconds,
        search_seconds: set.search_seconds,
        decode_seconds: sel.decode_seconds + sel.check_seconds,
    };
    Ok((answer, sel))
}

/// The per-item note of a selection: the chosen source and every candidate's outcome.
fn selection_note(sel: &Selection) -> serde_json::Value {
    serde_json::json!({
        "source": sel.chosen().map(|c| &c.source),
        "fell_back": sel.fell_back,
        "executed": sel.executed,
        "refinement": sel.refinement,
        "fitted_search": sel.fit.as_ref().map(|f| serde_json::json!({
            "structures": f.structures,
            "drawn": f.drawn,
            "skipped": f.skipped,
            "renders": f.renders,
            "seconds": f.seconds,
        })),
        "candidates": sel.candidates.iter().map(|c| serde_json::json!({
            "source": c.source,
            "also": c.also,
            "status": c.status,
            "fit": c.fit,
            "native": c.native,
        })).collect::<Vec<_>>(),
    })
}

#[derive(Args)]
pub struct EvalArgs {
    /// Corpus folder holding the queries and their ground truth.
    #[arg(long)]
    corpus: PathBuf,
    /// Split whose rows are the queries.
    #[arg(long, default_value = "test")]
    split: String,
    /// Index folder.
    #[arg(long)]
    index: PathBuf,
    /// Modes to compare (comma-separated): retrieval, generator, rag.
    #[arg(long, value_enum, value_delimiter = ',', required = true)]
    mode: Vec<EvalMode>,
    /// Generator checkpoint (needed by the generator and rag modes).
    #[arg(long)]
    model: Option<PathBuf>,
    #[command(flatten)]
    decode: DecodeArgs,
    /// Model modes: run each program in the sandbox first and, when it builds no solid, answer
    /// with the first retrieved neighbour that does (the never-invalid path).
    #[arg(long)]
    fallback: bool,
    /// Evaluate only the first N rows of the split.
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object (one per mode under "modes" when several are asked).
    #[arg(long)]
    json: bool,
    /// Write one JSON row per query and mode (prediction source, status, IoUs) to this file.
    #[arg(long)]
    per_item: Option<PathBuf>,
    /// Write an HTML report here: comparison table, IoU histograms, a gallery of the best,
    /// median and worst cases with renders, failures by status, command and versions.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write a PNG sheet here: per query, the image | each mode's answer with its volume and
    /// shell IoU | the ground truth, all rendered by CadQuery.
    #[arg(long)]
    sheet: Option<PathBuf>,
    /// Queries on the sheet (the first N of the split).
    #[arg(long, default_value_t = 16)]
    sheet_rows: usize,
    /// Queries side by side on one line of the sheet.
    #[arg(long, default_value_t = 1)]
    sheet_per_row: usize,
    /// Write each mode's answers here as `<mode>/<id>.py`, to run or score them again.
    #[arg(long)]
    answers: Option<PathBuf>,
    #[command(flatten)]
    select: SelectArgs,
    /// Rerank and refine modes: also score every valid candidate against the ground truth
    /// and report the Spearman correlation of the render-match score with volume IoU.
    #[arg(long)]
    rank_check: bool,
    #[command(flatten)]
    pool: PoolArgs,
}

/// Code with comments and all whitespace removed: two programs are the same shape when
/// these are equal (our dialect has no other spelling freedom that keeps the shape).
fn normalise_code(code: &str) -> String {
    code.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

fn code_key(code: &str) -> u64 {
    let mut h = Fnv1a64::new();
    h.update(normalise_code(code).as_bytes());
    h.finish()
}

/// One mode's predictions over the split.
struct ModeRun {
    mode: EvalMode,
    inputs: Vec<PairInput>,
    /// Per query: seconds to answer (none when the query failed before an answer).
    latencies: Vec<Option<f64>>,
    /// Per query, with `--fallback` in a model mode: the answer, to check in the sandbox.
    pending: Vec<Option<Answer>>,
    /// Per query: what produced the prediction (neighbour or generation facts).
    notes: Vec<serde_json::Value>,
    /// Per query: the top neighbour's id and code (the report's gallery renders it).
    top: Vec<Option<(String, String)>>,
    /// Per query, in the selection modes: the candidates and the choice.
    selections: Vec<Option<Selection>>,
}

fn note(a: &Answer) -> serde_json::Value {
    let top = a.neighbours.first();
    let mut v = serde_json::json!({
        "neighbour_id": top.map(|n| n.id.clone()),
        "neighbour_score": top.map(|n| n.score),
        "answer_seconds": a.seconds(),
    });
    if let Some(g) = &a.generation {
        v["tokens"] = g.tokens.into();
        v["finished"] = g.finished.into();
        v["log_prob"] = g.log_prob.into();
        v["generated"] = g.compact.clone().into();
    }
    if let Some(e) = &a.decode_error {
        v["decode_error"] = e.clone().into();
    }
    v
}

/// `rag eval`: every query of a split answered in each mode, then scored with both protocols.
pub async fn eval(args: EvalArgs) -> Result<ExitCode> {
    let split: Split = args.split.parse()?;
    let modes: Vec<EvalMode> = {
        let mut seen = Vec::new();
        for m in &args.mode {
            if !seen.contains(m) {
                seen.push(*m);
            }
        }
        seen
    };
    let t = Instant::now();
    let retriever = load_retriever(&args.index, None)?;
    let load_seconds = t.elapsed().as_secs_f64();
    let needs_model = modes
        .iter()
        .any(|m| matches!(m, EvalMode::Generator | EvalMode::Rag));
    let uses_model = modes.iter().any(|m| *m != EvalMode::Retrieval);
    let generator = match (&args.model, needs_model, uses_model) {
        (Some(m), _, true) => Some(args.decode.load(m, &retriever)?),
        (None, true, _) => {
            bail!("modes generator and rag need --model CKPT (from `rag train generator`)")
        }
        _ => None,
    };
    if generator.is_none() && uses_model {
        eprintln!("no --model: the rerank and refine modes choose among retrieved snippets only");
    }
    let opts = args.decode.options();
    let reader = CorpusReader::open(&args.corpus)?;
    let available = reader.num_rows(split);
    let total = args.limit.map_or(available, |l| l.min(available));
    if total == 0 {
        bail!("{}: split {split} has no rows", args.corpus.display());
    }
    let in_index: HashSet<u64> = retriever
        .store()
        .iter()
        .map(|e| code_key(&e.code))
        .collect();
    let mut runs: Vec<ModeRun> = modes
        .iter()
        .map(|&mode| ModeRun {
            mode,
            inputs: Vec::with_capacity(total),
            latencies: Vec::with_capacity(total),
            pending: Vec::new(),
            notes: Vec::with_capacity(total),
            top: Vec::with_capacity(total),
            selections: Vec::with_capacity(total),
        })
        .collect();
    // The selection modes execute candidates while answering; scoring uses the same pool.
    let pool = start_pool(&args.pool).await?;
    let (rerank_opts, refine_opts, fit_opts) = (
        args.select.options(&args.decode, false, false),
        args.select.options(&args.decode, true, false),
        args.select.options(&args.decode, false, true),
    );
    let select_opts = |m: EvalMode| match m {
        EvalMode::Refine => &refine_opts,
        EvalMode::Fit => &fit_opts,
        _ => &rerank_opts,
    };
    let mut queries: Vec<Option<Vec<u8>>> = Vec::new();
    let mut with_match = 0usize;
    let mut hits = [0usize; 3];
    let bar = progress_bar(total as u64);
    bar.set_message(format!(
        "answering {split} queries ({})",
        modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for row in reader.rows(split).take(total) {
        let row = row?;
        if args.report.is_some() || args.sheet.is_some() {
            queries.push(Some(row.image_png.clone()));
        }
        let image = image::load_from_memory(&row.image_png)
            .map(|i| to_rgb_on_white(&i))
            .map_err(|e| format!("image does not decode: {e}"));
        let embedded = image.as_ref().map_err(|e| e.clone()).and_then(|img| {
            let t = Instant::now();
            retriever
                .encoder()
                .encode(img)
                .map(|v| (v, t.elapsed().as_secs_f64()))
                .map_err(|e| e.to_string())
        });
        let key = code_key(&row.cadquery);
        let mut counted = false;
        for run in runs.iter_mut() {
            let mut selection = None;
            let answer = match (&embedded, &image, run.mode.pipeline()) {
                (Err(e), _, _) => Err(e.clone()),
                (Ok((v, embed)), _, Some(mode)) => {
                    answer_vector(&retriever, generator.as_ref(), v, mode, 10, &opts)
                        .map(|mut a| {
                            a.embed_seconds = *embed;
                            a
                        })
                        .map_err(|e| e.to_string())
                }
                (Ok((v, embed)), Ok(img), None) => {
                    let sopts = select_opts(run.mode);
                    select_answer(&retriever, generator.as_ref(), &pool, img, v, *embed, sopts)
                        .await
                        .map(|(a, s)| {
                            selection = Some(s);
                            a
                        })
                        .map_err(|e| format!("{e:#}"))
                }
                (Ok(_), Err(e), None) => Err(e.clone()),
            };
            let pred = match answer {
                Ok(a) => {
                    run.latencies.push(Some(a.seconds()));
                    if !counted && in_index.contains(&key) {
                        counted = true;
                        with_match += 1;
                        for (h, k) in hits.iter_mut().zip([1usize, 5, 10]) {
                            if a.neighbours
                                .iter()
                                .take(k)
                                .any(|n| code_key(&n.code) == key)
                            {
                                *h += 1;
                            }
                        }
                    }
                    let mut n = note(&a);
                    if let Some(s) = &selection {
                        n["selection"] = selection_note(s);
                        if s.chosen.is_none() {
                            n["error"] = format!(
                                "no answer: no candidate and none of the {} retrieved snippets builds a solid",
                                a.neighbours.len()
                            )
                            .into();
                        }
                    }
                    run.notes.push(n);
                    run.top
                        .push(a.neighbours.first().map(|n| (n.id.clone(), n.code.clone())));
                    let code = (!a.code.is_empty()).then(|| CodeText::Utf8(a.code.clone()));
                    if args.fallback && matches!(run.mode, EvalMode::Generator | EvalMode::Rag) {
                        run.pending.push(Some(a));
                    }
                    code
                }
                Err(e) => {
                    tracing::warn!("{} (id {}): {e}", row.origin, row.deepcad_id);
                    run.notes.push(serde_json::json!({ "error": e }));
                    run.top.push(None);
                    run.latencies.push(None);
                    if args.fallback && matches!(run.mode, EvalMode::Generator | EvalMode::Rag) {
                        run.pending.push(None);
                    }
                    None
                }
            };
            run.selections.push(selection);
            run.inputs.push(PairInput {
                id: row.deepcad_id.clone(),
                gt: CodeText::Utf8(row.cadquery.clone()),
                pred,
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Scoring starts after every query is answered, so latencies are not measured against
    // CadQuery workers scoring other queries.
    for run in runs.iter_mut().filter(|r| !r.pending.is_empty()) {
        check_in_sandbox(&pool, run).await?;
    }
    let bar = progress_bar((total * runs.len()) as u64);
    bar.set_message("scoring");
    let mut handles = Vec::new();
    for run in &runs {
        let mut hs = Vec::with_capacity(run.inputs.len());
        for input in &run.inputs {
            let pool = pool.clone();
            let input = input.clone();
            hs.push(tokio::spawn(async move {
                score_pair(&pool, input, Protocols::ALL).await
            }));
        }
        handles.push(hs);
    }
    let mut items = Vec::with_capacity(runs.len());
    for hs in handles {
        let mut got = Vec::with_capacity(hs.len());
        for h in hs {
            got.push(h.await?);
            bar.inc(1);
        }
        items.push(got);
    }
    bar.finish_and_clear();
    if let Some(path) = &args.per_item {
        write_per_item(path, &runs, &items)?;
    }
    let mut rank_checks = Vec::with_capacity(runs.len());
    for run in &runs {
        rank_checks.push(if args.rank_check && run.mode.pipeline().is_none() {
            Some(rank_check(&pool, run).await?)
        } else {
            None
        });
    }
    let seconds = t.elapsed().as_secs_f64();
    let recall = |h: usize| (with_match > 0).then(|| h as f64 / with_match as f64);
    let recall_note = recall_note(with_match);
    let mut reports = Vec::new();
    for ((run, its), check) in runs.iter_mut().zip(&items).zip(rank_checks) {
        let summary = Summary::of(its, seconds);
        let mut latencies: Vec<f64> = run.latencies.iter().flatten().copied().collect();
        latencies.sort_by(f64::total_cmp);
        let p50 = percentile(&latencies, 50.0).map(|s| s * 1e3);
        let p95 = percentile(&latencies, 95.0).map(|s| s * 1e3);
        let mut v = summary.to_json(Protocols::ALL);
        v["breakdown"] = serde_json::to_value(Breakdown::of(its))?;
        v["mode"] = run.mode.as_str().into();
        v["index"] = args.index.display().to_string().into();
        v["encoder"] = retriever.manifest().encoder.id.clone().into();
        v["split"] = split.as_str().into();
        v["index_vectors"] = retriever.store().len().into();
        v["index_load_seconds"] = load_seconds.into();
        v["latency_ms"] = serde_json::json!({"p50": p50, "p95": p95, "queries": latencies.len()});
        v["query_failures"] = query_failures(&run.inputs, &run.notes);
        if run.mode == EvalMode::Retrieval {
            let scores: Vec<f64> = run
                .notes
                .iter()
                .filter_map(|n| n["neighbour_score"].as_f64())
                .collect();
            let mean =
                (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64);
            v["top1_score_mean"] = serde_json::json!(mean);
            v["recall"] = serde_json::json!({
                "queries_with_exact_match": with_match,
                "at_1": recall(hits[0]),
                "at_5": recall(hits[1]),
                "at_10": recall(hits[2]),
                "note": recall_note,
            });
        } else if run.mode.pipeline().is_none() {
            v["model"] = args.model.as_ref().map(|m| m.display().to_string()).into();
            let done: Vec<&Selection> = run.selections.iter().flatten().collect();
            v["selection"] = serde_json::to_value(SelectionStats::of(&done))?;
            v["selection"]["options"] = serde_json::to_value(select_opts(run.mode))?;
            if let Some(c) = check {
                v["rank_check"] = serde_json::to_value(c)?;
            }
        } else {
            v["model"] = args.model.as_ref().map(|m| m.display().to_string()).into();
            v["decode"] = serde_json::to_value(opts)?;
            let finished = run
                .notes
                .iter()
                .filter(|n| n["finished"].as_bool() == Some(true))
                .count();
            v["finished"] = finished.into();
            v["fallback"] = args.fallback.into();
            if args.fallback {
                let fell_back = run
                    .notes
                    .iter()
                    .filter(|n| n["source"]["kind"] == "neighbour")
                    .count();
                v["fell_back"] = fell_back.into();
            }
        }
        reports.push((summary, v));
    }
    if args.json {
        if reports.len() == 1 {
            println!("{}", reports[0].1);
        } else {
            let all: Vec<&serde_json::Value> = reports.iter().map(|r| &r.1).collect();
            println!("{}", serde_json::json!({ "modes": all }));
        }
    } else {
        print_eval(
            &args,
            &retriever,
            split,
            total,
            load_seconds,
            &reports,
            with_match,
            hits,
        );
    }
    if let Some(dir) = &args.answers {
        write_answers(dir, &runs)?;
        eprintln!("answers: {}/<mode>/<id>.py", dir.display());
    }
    let modes = mode_results(&runs, &items, &reports);
    if let Some(path) = &args.sheet {
        let mut title = vec![format!(
            "{} ({total} queries, split {split}; index {} rows)",
            args.corpus.display(),
            retriever.store().len()
        )];
        title.extend(reports.iter().map(|(s, v)| {
            format!(
                "{:<10} mean volume IoU {:.3}, shell IoU {:.3} (invalid as 0)",
                v["mode"].as_str().unwrap_or(""),
                s.volume_iou_mean_all.unwrap_or(0.0),
                s.shell_iou_mean_all.unwrap_or(0.0)
            )
        }));
        let truths: Vec<String> = runs[0]
            .inputs
            .iter()
            .map(|i| match &i.gt {
                CodeText::Utf8(c) => c.clone(),
                _ => String::new(),
            })
            .collect();
        report::write_eval_sheet(
            path,
            &pool,
            &title,
            &queries,
            &truths,
            &modes,
            args.sheet_rows,
            args.sheet_per_row,
        )
        .await?;
        eprintln!("sheet: {}", path.display());
    }
    if args.report.is_some() {
        let page = write_report(&args, &retriever, &pool, &queries, modes).await?;
        eprintln!("report: {}", page.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--answers`: every mode's predicted programs as `<dir>/<mode>/<id>.py`.
fn write_answers(dir: &Path, runs: &[ModeRun]) -> Result<()> {
    for run in runs {
        let sub = dir.join(run.mode.as_str());
        std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        for input in &run.inputs {
            if let Some(CodeText::Utf8(code)) = &input.pred {
                if input.id.contains(['/', '\\']) || input.id.starts_with('.') {
                    bail!("query id {:?} cannot name a file", input.id);
                }
                let path = sub.join(format!("{}.py", input.id));
                std::fs::write(&path, code)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Each mode's scores, predictions and top neighbours, as the report and the sheet take them.
fn mode_results(
    runs: &[ModeRun],
    items: &[Vec<evaluator::ItemScore>],
    reports: &[(Summary, serde_json::Value)],
) -> Vec<report::ModeResults> {
    runs.iter()
        .zip(items)
        .zip(reports)
        .map(|((run, its), (summary, v))| report::ModeResults {
            name: run.mode.as_str().to_string(),
            summary: summary.clone(),
            latency_p50_ms: v["latency_ms"]["p50"].as_f64(),
            latency_p95_ms: v["latency_ms"]["p95"].as_f64(),
            items: its.clone(),
            neighbours: run.top.clone(),
            predictions: run
                .inputs
                .iter()
                .map(|i| match &i.pred {
                    Some(CodeText::Utf8(c)) => Some(c.clone()),
                    _ => None,
                })
                .collect(),
        })
        .collect()
}

/// The queries a mode could not answer, with their reasons, counted by reason (the first
/// line of each, so that the same fault on many queries is one row).
fn query_failures(inputs: &[PairInput], notes: &[serde_json::Value]) -> serde_json::Value {
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    let mut queries = Vec::new();
    for (input, n) in inputs.iter().zip(notes) {
        let Some(e) = n["error"].as_str() else {
            continue;
        };
        *by_reason
            .entry(e.lines().next().unwrap_or("").to_string())
            .or_default() += 1;
        queries.push(serde_json::json!({ "id": input.id, "error": e }));
    }
    serde_json::json!({ "count": queries.len(), "by_reason": by_reason, "queries": queries })
}

/// What the recall figures are over.
fn recall_note(with_match: usize) -> &'static str {
    if with_match == 0 {
        "n/a: no query has an exact-shape match (same normalised code) in the index"
    } else {
        "over queries whose normalised code also occurs in the index"
    }
}

/// The human-readable `rag eval` output: a block per mode, then one comparison table.
#[allow(clippy::too_many_arguments)]
fn print_eval(
    args: &EvalArgs,
    retriever: &Retriever,
    split: Split,
    total: usize,
    load_seconds: f64,
    reports: &[(Summary, serde_json::Value)],
    with_match: usize,
    hits: [usize; 3],
) {
    let recall = |h: usize| (with_match > 0).then(|| h as f64 / with_match as f64);
    let recall_note = recall_note(with_match);
    println!(
        "{} {} ({} queries), index {} ({} vectors, encoder {}, loaded in {:.3} s){}",
        args.corpus.display(),
        split,
        total,
        args.index.display(),
        retriever.store().len(),
        retriever.manifest().encoder.id,
        load_seconds,
        args.model
            .as_ref()
            .map(|m| format!(", model {}", m.display()))
            .unwrap_or_default()
    );
    for (summary, v) in reports {
        println!("\n== mode {} ==", v["mode"].as_str().unwrap_or(""));
        print_table(summary, Protocols::ALL);
        let failures = &v["query_failures"];
        if failures["count"].as_u64().unwrap_or(0) > 0 {
            println!(
                "failed queries {} (counted as invalid; ids and reasons in --per-item / --json)",
                failures["count"]
            );
            for (reason, n) in failures["by_reason"].as_object().into_iter().flatten() {
                println!("               {n} x {reason}");
            }
        }
        println!(
            "latency        p50 {} ms, p95 {} ms per query",
            fmt_opt(v["latency_ms"]["p50"].as_f64()),
            fmt_opt(v["latency_ms"]["p95"].as_f64())
        );
        if v["mode"] == "retrieval" {
            println!(
                "top-1 score    {} (mean cosine)",
                fmt_opt(v["top1_score_mean"].as_f64())
            );
            if with_match == 0 {
                println!("recall@1/5/10  {recall_note}");
            } else {
                println!(
                    "recall@1/5/10  {} / {} / {} ({with_match} queries {recall_note})",
                    fmt_opt(recall(hits[0])),
                    fmt_opt(recall(hits[1])),
                    fmt_opt(recall(hits[2]))
                );
            }
        } else if let Some(sel) = v.get("selection") {
            println!(
                "candidates     {} executed per query (mean); chosen: {} model, {} snippet, {} refined, {} fitted; {} fell back",
                fmt_opt(sel["executed_mean"].as_f64()),
                sel["chosen_model"],
                sel["chosen_neighbour"],
                sel["chosen_refined"],
                sel["chosen_fitted"],
                sel["fell_back"]
            );
            if let Some(c) = v.get("rank_check") {
                println!(
                    "rank check     Spearman rho(render match, volume IoU) over candidates: {} mean per query ({} queries with >= 3 valid candidates), {} pooled",
                    fmt_opt(c["rho_mean_per_query"]["score"].as_f64()),
                    c["queries"],
                    fmt_opt(c["rho_pooled"]["score"].as_f64())
                );
                println!(
                    "               per cue (mean per query): encoder {}, mask {}, edges {}; chosen IoU {} vs candidates' mean {} vs best {}",
                    fmt_opt(c["rho_mean_per_query"]["encoder"].as_f64()),
                    fmt_opt(c["rho_mean_per_query"]["mask"].as_f64()),
                    fmt_opt(c["rho_mean_per_query"]["edge"].as_f64()),
                    fmt_opt(c["iou_chosen"].as_f64()),
                    fmt_opt(c["iou_candidate_mean"].as_f64()),
                    fmt_opt(c["iou_oracle"].as_f64())
                );
            }
        } else {
            println!(
                "finished       {} of {} (ended by the model, not the token budget)",
                v["finished"], total
            );
        }
    }
    if reports.len() > 1 {
        println!(
            "\n{:<10} {:>6} {:>12} {:>12} {:>12} {:>12} {:>10}",
            "mode", "VSR", "shell(valid)", "shell(all)", "vol(valid)", "vol(all)", "p50 ms"
        );
        for (s, v) in reports {
            println!(
                "{:<10} {:>6.3} {:>12} {:>12} {:>12} {:>12} {:>10}",
                v["mode"].as_str().unwrap_or(""),
                s.vsr,
                fmt_opt(s.shell_iou_mean_valid),
                fmt_opt(s.shell_iou_mean_all),
                fmt_opt(s.volume_iou_mean_valid),
                fmt_opt(s.volume_iou_mean_all),
                fmt_opt(v["latency_ms"]["p50"].as_f64())
            );
        }
    }
    print_breakdown(reports);
}

/// The modes' volume / shell IoU (invalid as 0) side by side per ground-truth group.
fn print_breakdown(reports: &[(Summary, serde_json::Value)]) {
    println!("\nby ground truth: volume / shell IoU, invalid as 0");
    let mut header = format!("  {:<14} {:>4}", "group", "n");
    for (_, v) in reports {
        header.push_str(&format!(" {:>15}", v["mode"].as_str().unwrap_or("")));
    }
    println!("{header}");
    for key in ["by_sketch_count", "by_bodies"] {
        let Some(groups) = reports[0].1["breakdown"][key].as_array() else {
            continue;
        };
        for (g, group) in groups.iter().enumerate() {
            let mut line = format!(
                "  {:<14} {:>4}",
                group["group"].as_str().unwrap_or(""),
                group["n"].as_u64().unwrap_or(0)
            );
            for (_, v) in reports {
                let gs = &v["breakdown"][key][g];
                let cell = format!(
                    "{} / {}",
                    fmt_opt(gs["volume_iou_mean_all"].as_f64()),
                    fmt_opt(gs["shell_iou_mean_all"].as_f64())
                );
                line.push_str(&format!(" {cell:>15}"));
            }
            println!("{line}");
        }
    }
}

/// `--rank-check`: every valid candidate of every query scored against the ground truth
/// (volume IoU), for [`RankCheck`].
async fn rank_check(pool: &Arc<WorkerPool>, run: &ModeRun) -> Result<RankCheck> {
    let mut jobs = Vec::new();
    for (q, sel) in run.selections.iter().enumerate() {
        let Some(sel) = sel else { continue };
        for (c, cand) in sel.candidates.iter().enumerate() {
            if let Some(fit) = cand.fit {
                let input = PairInput {
                    id: format!("{q}/{c}"),
                    gt: run.inputs[q].gt.clone(),
                    pred: Some(CodeText::Utf8(cand.code.clone())),
                };
                let pool = pool.clone();
                jobs.push((
                    q,
                    c == sel.chosen.unwrap_or(usize::MAX),
                    fit,
                    tokio::spawn(async move {
                        score_pair(
                            &pool,
                            input,
                            Protocols {
                                shell: false,
                                volume: true,
                            },
                        )
                        .await
                    }),
                ));
            }
        }
    }
    let bar = progress_bar(jobs.len() as u64);
    bar.set_message(format!("{}: scoring every candidate", run.mode.as_str()));
    let mut per_query: Vec<Vec<ScoredCandidate>> = vec![Vec::new(); run.selections.len()];
    for (q, chosen, fit, h) in jobs {
        let item = h.await?;
        bar.inc(1);
        if let (true, Some(volume_iou)) = (item.gt_ok, item.volume_iou) {
            per_query[q].push(ScoredCandidate {
                fit,
                volume_iou,
                chosen,
            });
        }
    }
    bar.finish_and_clear();
    Ok(RankCheck::of(&per_query))
}

/// `--report`: the page for this evaluation (what was run, on what, and the results).
async fn write_report(
    args: &EvalArgs,
    retriever: &Retriever,
    pool: &Arc<WorkerPool>,
    queries: &[Option<Vec<u8>>],
    modes: Vec<report::ModeResults>,
) -> Result<PathBuf> {
    let Some(dir) = &args.report else {
        bail!("no report folder given");
    };
    let manifest = retriever.manifest();
    let mut setup = vec![
        ("created".to_string(), report::utc_now()),
        (
            "corpus".to_string(),
            format!("{} (split {})", args.corpus.display(), args.split),
        ),
        ("queries".to_string(), queries.len().to_string()),
        (
            "index".to_string(),
            format!(
                "{} ({} vectors, encoder {})",
                args.index.display(),
                retriever.store().len(),
                manifest.encoder.id
            ),
        ),
    ];
    if let Some(m) = &args.model {
        setup.push(("model".to_string(), m.display().to_string()));
        setup.push((
            "decoding".to_string(),
            serde_json::to_string(&args.decode.options())?,
        ));
        setup.push(("fallback".to_string(), args.fallback.to_string()));
    }
    let provenance = evaluator::report::Provenance {
        title: format!(
            "cadrag evaluation: {} {}",
            args.corpus.display(),
            args.split
        ),
        command: report::command_line(),
        setup,
        versions: report::versions(),
    };
    report::write_eval_report(dir, pool, provenance, queries, modes).await
}

/// `--fallback`: every pending answer of `run` is checked in the sandbox (in parallel); the
/// first candidate that runs becomes the prediction, its origin goes into the per-item note,
/// and the checking time into the query's latency.
async fn check_in_sandbox(pool: &Arc<WorkerPool>, run: &mut ModeRun) -> Result<()> {
    let bar = progress_bar(run.pending.len() as u64);
    bar.set_message(format!(
        "{}: running the answers in the sandbox",
        run.mode.as_str()
    ));
    let mut handles = Vec::new();
    for answer in std::mem::take(&mut run.pending) {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            match answer {
                Some(a) => Some(first_that_runs(&pool, &a).await),
                None => None,
            }
        }));
    }
    let mut fell_back = 0;
    for (i, h) in handles.into_iter().enumerate() {
        bar.inc(1);
        let Some(checked) = h.await? else { continue };
        if let Some(l) = run.latencies[i].as_mut() {
            *l += checked.seconds;
        }
        if checked.source != Some(CodeSource::Generated) {
            fell_back += 1;
        }
        run.notes[i]["source"] = serde_json::to_value(&checked.source)?;
        run.notes[i]["rejected"] = serde_json::to_value(&checked.rejected)?;
        run.inputs[i].pred = (!checked.code.is_empty()).then_some(CodeText::Utf8(checked.code));
    }
    bar.finish_and_clear();
    eprintln!(
        "{}: {fell_back} of {} answers fell back to a retrieved neighbour",
        run.mode.as_str(),
        run.inputs.len()
    );
    Ok(())
}

fn write_per_item(
    path: &Path,
    runs: &[ModeRun],
    items: &[Vec<evaluator::ItemScore>],
) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?,
    );
    for (run, its) in runs.iter().zip(items) {
        for (item, n) in its.iter().zip(&run.notes) {
            let mut v = serde_json::to_value(item)?;
            v["mode"] = run.mode.as_str().into();
            if let (Some(obj), Some(extra)) = (v.as_object_mut(), n.as_object()) {
                for (k, x) in extra {
                    obj.entry(k.clone()).or_insert(x.clone());
                }
            }
            writeln!(f, "{v}")?;
        }
    }
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_code_ignores_comments_and_whitespace_only() {
        let a = "import cadquery as cq\n# sketch 0\nsolid = cq.Workplane().box(1, 2, 3)\n";
        let b = "import cadquery as cq\nsolid=cq.Workplane().box(1,2,3)";
        let c = "import cadquery as cq\nsolid=cq.Workplane().box(1,2,4)";
        assert_eq!(code_key(a), code_key(b));
        assert_ne!(code_key(a), code_key(c));
    }
}

#[derive(Args)]
pub struct BenchSelectArgs {
    /// Corpus folder holding the queries.
    #[arg(long)]
    corpus: PathBuf,
    /// Split whose rows are the queries.
    #[arg(long, default_value = "test")]
    split: String,
    /// Index folder.
    #[arg(long)]
    index: PathBuf,
    /// Generator checkpoint (without it, the candidates are retrieved snippets only).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Queries to answer.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Refine the chosen candidate too.
    #[arg(long)]
    refine: bool,
    #[command(flatten)]
    decode: DecodeArgs,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    pool: PoolArgs,
}

/// `rag bench select`: answers the first `--limit` queries of a split by execution-guided
/// selection, one after another, and prints candidates executed per second (sandbox, render
/// and match included) and end-to-end seconds per image (embedding to chosen code).
pub async fn bench_select(args: BenchSelectArgs) -> Result<ExitCode> {
    let split: Split = args.split.parse()?;
    let retriever = load_retriever(&args.index, None)?;
    let generator = match &args.model {
        Some(m) => Some(args.decode.load(m, &retriever)?),
        None => None,
    };
    let pool = start_pool(&args.pool).await?;
    let opts = args
        .select
        .options(&args.decode, args.refine, args.select.fit);
    let reader = CorpusReader::open(&args.corpus)?;
    let total = args.limit.min(reader.num_rows(split));
    if total == 0 {
        bail!("{}: split {split} has no rows", args.corpus.display());
    }
    let bar = progress_bar(total as u64);
    bar.set_message("answering by selection");
    let (mut executed, mut check_seconds, mut decode_seconds) = (0usize, 0.0, 0.0);
    let mut per_image = Vec::with_capacity(total);
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    for row in reader.rows(split).take(total) {
        let row = row?;
        let t = Instant::now();
        let embedded = row
            .decode_image()
            .map_err(anyhow::Error::from)
            .and_then(|i| Ok((retriever.encoder().encode(&i)?, i)));
        let (vector, image) = match embedded {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("{} (id {}): {e:#}", row.origin, row.deepcad_id);
                *failed.entry(format!("{e:#}")).or_default() += 1;
                bar.inc(1);
                continue;
            }
        };
        let (_, sel) = select_answer(
            &retriever,
            generator.as_ref(),
            &pool,
            &image,
            &vector,
            0.0,
            &opts,
        )
        .await?;
        per_image.push(t.elapsed().as_secs_f64());
        executed += sel.executed;
        check_seconds += sel.check_seconds;
        decode_seconds += sel.decode_seconds;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if per_image.is_empty() {
        bail!(
            "no query of {} {split} could be embedded: {failed:?}",
            args.corpus.display()
        );
    }
    let mut sorted = per_image.clone();
    sorted.sort_by(f64::total_cmp);
    let n = per_image.len() as f64;
    println!(
        "bench select: {} queries of {} {split}, {} workers, model {}, {} samples, {} snippets{}",
        per_image.len(),
        args.corpus.display(),
        pool.size(),
        args.model
            .as_ref()
            .map_or_else(|| "none".into(), |m| m.display().to_string()),
        if generator.is_some() { opts.samples } else { 0 },
        opts.neighbours,
        if args.refine {
            format!(", refine budget {}", args.select.refine_budget)
        } else {
            String::new()
        }
    );
    println!(
        "  candidates executed   {executed} ({:.1} per image)",
        executed as f64 / n
    );
    println!(
        "  executed per second   {:.2} (sandbox + render + match, {} workers in parallel)",
        executed as f64 / check_seconds.max(1e-9),
        pool.size()
    );
    println!(
        "  seconds per image     mean {:.3}, p50 {}, p95 {} (decoding {:.3} s of the mean)",
        per_image.iter().sum::<f64>() / n,
        fmt_opt(percentile(&sorted, 50.0)),
        fmt_opt(percentile(&sorted, 95.0)),
        decode_seconds / n
    );
    for (reason, k) in &failed {
        println!("  skipped {k} queries    {reason}");
    }
    Ok(ExitCode::SUCCESS)
}
