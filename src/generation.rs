//! `generate` and `eval`: image -> code by retrieval, the generator, or both, and the scoring
//! of a corpus split with the real metrics. Thin: the work is in the generator crate.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use evaluator::{CodeText, Protocols, WorkerPool};
use generator::eval::{
    evaluate, percentile, EvalContext, EvalMode, EvalSetup, ModeDetails, ModeReport, ModeRun,
};
use generator::fallback::{first_that_runs, CodeSource};
use generator::fit::{Choose, FitOptions};
use generator::select::{RefineOptions, SelectOptions};
use generator::{answer_image, DecodeOptions, Generator, Mode, Query, Selecting, Strategy};
use indexer::corpus::{CorpusReader, Split};
use indexer::encoder::load_image;
use retriever::Retriever;

use crate::report;
use crate::retrieval::load_retriever;
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
    let selecting = Selecting {
        name: "select",
        retriever,
        generator: generator.as_ref(),
        runner: pool.clone(),
        opts,
    };
    let query = Query {
        image: &image,
        vector: &vector,
        embed_seconds: embed,
    };
    let (answer, sel) = selecting.select(query).await?;
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

/// `--mode`'s values, each with its help line.
fn mode_parser() -> impl clap::builder::TypedValueParser<Value = EvalMode> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(EvalMode::ALL.map(|m| PossibleValue::new(m.as_str()).help(m.help())))
        .try_map(|s| s.parse::<EvalMode>())
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
    /// Modes to compare (comma-separated).
    #[arg(long, value_delimiter = ',', required = true, value_parser = mode_parser())]
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

/// `rag eval`: every query of a split answered in each mode, then scored with both protocols
/// (the harness is `generator::eval`; this wires the arguments and writes the results).
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
    let needs_model = modes.iter().any(|m| m.needs_model());
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
    let reader = CorpusReader::open(&args.corpus)?;
    let available = reader.num_rows(split);
    let total = args.limit.map_or(available, |l| l.min(available));
    if total == 0 {
        bail!("{}: split {split} has no rows", args.corpus.display());
    }
    // The selection modes execute candidates while answering; scoring uses the same pool.
    let pool = start_pool(&args.pool).await?;
    let setup = EvalSetup {
        retriever: &retriever,
        generator: generator.as_ref(),
        pool: pool.clone(),
        modes,
        decode: args.decode.options(),
        rerank: args.select.options(&args.decode, false, false),
        refine: args.select.options(&args.decode, true, false),
        fit: args.select.options(&args.decode, false, true),
        fallback: args.fallback,
        keep_queries: args.report.is_some() || args.sheet.is_some(),
        rank_check: args.rank_check,
    };
    let outcome = evaluate(&setup, &reader, split, total, &progress_bar).await?;
    let ctx = EvalContext {
        index: args.index.display().to_string(),
        split,
        load_seconds,
        seconds: t.elapsed().as_secs_f64(),
        model: args.model.as_ref().map(|m| m.display().to_string()),
    };
    let reports = outcome.reports(&setup, &ctx);
    for r in &reports {
        if let ModeDetails::Model {
            fell_back: Some(n), ..
        } = r.details
        {
            eprintln!(
                "{}: {n} of {total} answers fell back to a retrieved neighbour",
                r.mode.as_str()
            );
        }
    }
    if let Some(path) = &args.per_item {
        write_per_item(path, &outcome.runs, &outcome.items)?;
    }
    if args.json {
        if reports.len() == 1 {
            println!("{}", serde_json::to_value(&reports[0])?);
        } else {
            println!("{}", serde_json::json!({ "modes": reports }));
        }
    } else {
        print_eval(&args, &retriever, &ctx, total, &reports);
    }
    if let Some(dir) = &args.answers {
        write_answers(dir, &outcome.runs)?;
        eprintln!("answers: {}/<mode>/<id>.py", dir.display());
    }
    let modes = mode_results(&outcome.runs, &outcome.items, &reports);
    if let Some(path) = &args.sheet {
        let mut title = vec![format!(
            "{} ({total} queries, split {split}; index {} rows)",
            args.corpus.display(),
            retriever.store().len()
        )];
        title.extend(reports.iter().map(|r| {
            format!(
                "{:<10} mean volume IoU {:.3}, shell IoU {:.3} (invalid as 0)",
                r.mode.as_str(),
                r.summary.volume_iou_mean_all.unwrap_or(0.0),
                r.summary.shell_iou_mean_all.unwrap_or(0.0)
            )
        }));
        let truths: Vec<String> = outcome.runs[0]
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
            &outcome.queries,
            &truths,
            &modes,
            args.sheet_rows,
            args.sheet_per_row,
        )
        .await?;
        eprintln!("sheet: {}", path.display());
    }
    if args.report.is_some() {
        let page = write_report(&args, &retriever, &pool, &outcome.queries, modes).await?;
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
    reports: &[ModeReport],
) -> Vec<report::ModeResults> {
    runs.iter()
        .zip(items)
        .zip(reports)
        .map(|((run, its), r)| report::ModeResults {
            name: run.mode.as_str().to_string(),
            summary: r.summary.clone(),
            latency_p50_ms: r.latency_ms.p50,
            latency_p95_ms: r.latency_ms.p95,
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

/// The human-readable `rag eval` output: a block per mode, then one comparison table.
fn print_eval(
    args: &EvalArgs,
    retriever: &Retriever,
    ctx: &EvalContext,
    total: usize,
    reports: &[ModeReport],
) {
    println!(
        "{} {} ({} queries), index {} ({} vectors, encoder {}, loaded in {:.3} s){}",
        args.corpus.display(),
        ctx.split,
        total,
        args.index.display(),
        retriever.store().len(),
        retriever.manifest().encoder.id,
        ctx.load_seconds,
        args.model
            .as_ref()
            .map(|m| format!(", model {}", m.display()))
            .unwrap_or_default()
    );
    for r in reports {
        println!("\n== mode {} ==", r.mode.as_str());
        print_table(&r.summary, Protocols::ALL);
        let failures = &r.query_failures;
        if failures.count > 0 {
            println!(
                "failed queries {} (counted as invalid; ids and reasons in --per-item / --json)",
                failures.count
            );
            for (reason, n) in &failures.by_reason {
                println!("               {n} x {reason}");
            }
        }
        println!(
            "latency        p50 {} ms, p95 {} ms per query",
            fmt_opt(r.latency_ms.p50),
            fmt_opt(r.latency_ms.p95)
        );
        match &r.details {
            ModeDetails::Retrieval {
                top1_score_mean,
                recall,
            } => {
                println!("top-1 score    {} (mean cosine)", fmt_opt(*top1_score_mean));
                if recall.queries_with_exact_match == 0 {
                    println!("recall@1/5/10  {}", recall.note);
                } else {
                    println!(
                        "recall@1/5/10  {} / {} / {} ({} queries {})",
                        fmt_opt(recall.at_1),
                        fmt_opt(recall.at_5),
                        fmt_opt(recall.at_10),
                        recall.queries_with_exact_match,
                        recall.note
                    );
                }
            }
            ModeDetails::Selection {
                selection,
                rank_check,
                ..
            } => {
                let sel = &selection.stats;
                println!(
                    "candidates     {} executed per query (mean); chosen: {} model, {} snippet, {} refined, {} fitted; {} fell back",
                    fmt_opt(sel.executed_mean),
                    sel.chosen_model,
                    sel.chosen_neighbour,
                    sel.chosen_refined,
                    sel.chosen_fitted,
                    sel.fell_back
                );
                if let Some(c) = rank_check {
                    println!(
                        "rank check     Spearman rho(render match, volume IoU) over candidates: {} mean per query ({} queries with >= 3 valid candidates), {} pooled",
                        fmt_opt(c.rho_mean_per_query.score),
                        c.queries,
                        fmt_opt(c.rho_pooled.score)
                    );
                    println!(
                        "               per cue (mean per query): encoder {}, mask {}, edges {}; chosen IoU {} vs candidates' mean {} vs best {}",
                        fmt_opt(c.rho_mean_per_query.encoder),
                        fmt_opt(c.rho_mean_per_query.mask),
                        fmt_opt(c.rho_mean_per_query.edge),
                        fmt_opt(c.iou_chosen),
                        fmt_opt(c.iou_candidate_mean),
                        fmt_opt(c.iou_oracle)
                    );
                }
            }
            ModeDetails::Model { finished, .. } => {
                println!(
                    "finished       {finished} of {total} (ended by the model, not the token budget)"
                );
            }
        }
    }
    if reports.len() > 1 {
        println!(
            "\n{:<10} {:>6} {:>12} {:>12} {:>12} {:>12} {:>10}",
            "mode", "VSR", "shell(valid)", "shell(all)", "vol(valid)", "vol(all)", "p50 ms"
        );
        for r in reports {
            let s = &r.summary;
            println!(
                "{:<10} {:>6.3} {:>12} {:>12} {:>12} {:>12} {:>10}",
                r.mode.as_str(),
                s.vsr,
                fmt_opt(s.shell_iou_mean_valid),
                fmt_opt(s.shell_iou_mean_all),
                fmt_opt(s.volume_iou_mean_valid),
                fmt_opt(s.volume_iou_mean_all),
                fmt_opt(r.latency_ms.p50)
            );
        }
    }
    print_breakdown(reports);
}

/// The modes' volume / shell IoU (invalid as 0) side by side per ground-truth group.
fn print_breakdown(reports: &[ModeReport]) {
    println!("\nby ground truth: volume / shell IoU, invalid as 0");
    let mut header = format!("  {:<14} {:>4}", "group", "n");
    for r in reports {
        header.push_str(&format!(" {:>15}", r.mode.as_str()));
    }
    println!("{header}");
    let groups = |r: &ModeReport| -> [Vec<evaluator::GroupStats>; 2] {
        [
            r.breakdown.by_sketch_count.clone(),
            r.breakdown.by_bodies.clone(),
        ]
    };
    let Some(first) = reports.first() else {
        return;
    };
    for (k, kind) in groups(first).iter().enumerate() {
        for (g, group) in kind.iter().enumerate() {
            let mut line = format!("  {:<14} {:>4}", group.group, group.n);
            for r in reports {
                let cell = match groups(r)[k].get(g) {
                    Some(gs) => format!(
                        "{} / {}",
                        fmt_opt(gs.volume_iou_mean_all),
                        fmt_opt(gs.shell_iou_mean_all)
                    ),
                    None => "- / -".to_string(),
                };
                line.push_str(&format!(" {cell:>15}"));
            }
            println!("{line}");
        }
    }
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
    let selecting = Selecting {
        name: "select",
        retriever: &retriever,
        generator: generator.as_ref(),
        runner: pool.clone(),
        opts: opts.clone(),
    };
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
        let query = Query {
            image: &image,
            vector: &vector,
            embed_seconds: 0.0,
        };
        let (_, sel) = selecting.select(query).await?;
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
