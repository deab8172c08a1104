//! The evaluation harness behind `rag eval`: every query of a corpus split answered in each
//! [`EvalMode`] by its [`Answerer`], model answers optionally checked in the sandbox, then
//! everything scored with both IoU protocols and summarised as one [`ModeReport`] per mode.
//! The binary parses arguments and prints; the figures are made here.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use evaluator::score::score_pair;
use evaluator::{Breakdown, CodeText, ItemScore, PairInput, Protocols, Summary, WorkerPool};
use indexer::corpus::{CorpusReader, Split};
use indexer::encoder::to_rgb_on_white;
use indicatif::ProgressBar;
use retriever::Retriever;
use seeded::Fnv1a64;
use serde::Serialize;

use crate::answer::{Answered, Answerer, Direct, Query, Selecting};
use crate::decode::DecodeOptions;
use crate::fallback::first_that_runs;
use crate::model::Generator;
use crate::pipeline::{Answer, Mode};
use crate::select::{RankCheck, ScoredCandidate, SelectOptions, Selection, SelectionStats};
use crate::GeneratorError;

/// Neighbours the single-path modes retrieve (the fallback check tries them in order).
const DIRECT_NEIGHBOURS: usize = 10;

/// How a query is answered in an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalMode {
    /// The top-1 neighbour's code.
    Retrieval,
    /// The generator with no neighbours in its prompt.
    Generator,
    /// The generator with the top-k neighbours in its prompt.
    Rag,
    /// Best-of-N over the model's outputs and the top snippets, ranked by render match.
    Rerank,
    /// Rerank, then the winner's numbers refined against the render match.
    Refine,
    /// Rerank with the fitted search's programs among the candidates.
    Fit,
}

impl EvalMode {
    /// Every mode, in the order the command line lists them.
    pub const ALL: [EvalMode; 6] = [
        EvalMode::Retrieval,
        EvalMode::Generator,
        EvalMode::Rag,
        EvalMode::Rerank,
        EvalMode::Refine,
        EvalMode::Fit,
    ];

    /// The name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            EvalMode::Retrieval => "retrieval",
            EvalMode::Generator => "generator",
            EvalMode::Rag => "rag",
            EvalMode::Rerank => "rerank",
            EvalMode::Refine => "refine",
            EvalMode::Fit => "fit",
        }
    }

    /// One line of help for the command line.
    pub fn help(self) -> &'static str {
        match self {
            EvalMode::Retrieval => "the top-1 neighbour's code is the prediction",
            EvalMode::Generator => "the generator with no neighbours in its prompt",
            EvalMode::Rag => "the generator with the top-k neighbours in its prompt",
            EvalMode::Rerank => {
                "best-of-N: the model's outputs and the top snippets executed, ranked by render match (snippets only without --model)"
            }
            EvalMode::Refine => "rerank, then the winner's numbers refined against the render match",
            EvalMode::Fit => {
                "rerank with the fitted search's programs (retrieved structures fitted to the query) among the candidates"
            }
        }
    }

    /// The single-answer path, or `None` for the execution-guided modes.
    pub fn pipeline(self) -> Option<Mode> {
        match self {
            EvalMode::Retrieval => Some(Mode::Retrieval),
            EvalMode::Generator => Some(Mode::Generator),
            EvalMode::Rag => Some(Mode::Rag),
            EvalMode::Rerank | EvalMode::Refine | EvalMode::Fit => None,
        }
    }

    /// True for the modes that cannot run without a generator checkpoint.
    pub fn needs_model(self) -> bool {
        matches!(self, EvalMode::Generator | EvalMode::Rag)
    }
}

impl FromStr for EvalMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        EvalMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = EvalMode::ALL.iter().map(|m| m.as_str()).collect();
                format!("unknown mode {s:?}: one of {}", names.join(", "))
            })
    }
}

/// What an evaluation runs: the index, the model, the sandbox and each mode's settings.
pub struct EvalSetup<'a> {
    /// The loaded index.
    pub retriever: &'a Retriever,
    /// The model, when a mode uses one.
    pub generator: Option<&'a Generator>,
    /// Executes candidates while answering and scores afterwards.
    pub pool: Arc<WorkerPool>,
    /// Modes to compare, each once.
    pub modes: Vec<EvalMode>,
    /// Decoding of the single-path model modes.
    pub decode: DecodeOptions,
    /// Selection settings of the rerank mode.
    pub rerank: SelectOptions,
    /// Selection settings of the refine mode.
    pub refine: SelectOptions,
    /// Selection settings of the fit mode.
    pub fit: SelectOptions,
    /// Model modes: check each answer in the sandbox and fall back to the neighbours.
    pub fallback: bool,
    /// Keep each query's PNG (for a report or a sheet).
    pub keep_queries: bool,
    /// Selection modes: score every valid candidate against the ground truth.
    pub rank_check: bool,
}

impl EvalSetup<'_> {
    /// The selection settings `mode` uses (rerank's for the single-path modes).
    pub fn select_options(&self, mode: EvalMode) -> &SelectOptions {
        match mode {
            EvalMode::Refine => &self.refine,
            EvalMode::Fit => &self.fit,
            _ => &self.rerank,
        }
    }

    fn answerer(&self, mode: EvalMode) -> Box<dyn Answerer + '_> {
        match mode.pipeline() {
            Some(path) => Box::new(Direct {
                retriever: self.retriever,
                generator: self.generator,
                mode: path,
                retrieve: DIRECT_NEIGHBOURS,
                decode: self.decode,
            }),
            None => Box::new(Selecting {
                name: mode.as_str(),
                retriever: self.retriever,
                generator: self.generator,
                runner: self.pool.clone(),
                opts: self.select_options(mode).clone(),
            }),
        }
    }
}

/// One mode's predictions over the split, query by query.
#[derive(Debug, Clone)]
pub struct ModeRun {
    /// The mode.
    pub mode: EvalMode,
    /// Ground truth and prediction per query.
    pub inputs: Vec<PairInput>,
    /// Seconds to answer (none when the query failed before an answer).
    pub latencies: Vec<Option<f64>>,
    /// What produced the prediction (neighbour or generation facts, errors).
    pub notes: Vec<serde_json::Value>,
    /// The top neighbour's id and code (the report's gallery renders it).
    pub top: Vec<Option<(String, String)>>,
    /// The candidates and the choice, in the selection modes.
    pub selections: Vec<Option<Selection>>,
    /// With `fallback` in a model mode: the answers still to check in the sandbox.
    pending: Vec<Option<Answer>>,
}

/// How often the query's own program (same normalised code) was among its neighbours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecallCounts {
    /// Queries whose code occurs in the index.
    pub with_match: usize,
    /// Of those, found at rank 1, within 5, within 10.
    pub hits: [usize; 3],
}

impl RecallCounts {
    /// Recall at 1, 5 and 10 (`None` when no query has a match).
    pub fn recall(&self) -> [Option<f64>; 3] {
        self.hits
            .map(|h| (self.with_match > 0).then(|| h as f64 / self.with_match as f64))
    }

    /// What the recall figures are over.
    pub fn note(&self) -> &'static str {
        if self.with_match == 0 {
            "n/a: no query has an exact-shape match (same normalised code) in the index"
        } else {
            "over queries whose normalised code also occurs in the index"
        }
    }
}

/// Everything an evaluation produced, before it is summarised.
#[derive(Debug)]
pub struct EvalOutcome {
    /// Per mode, in the order asked.
    pub runs: Vec<ModeRun>,
    /// Per mode, each query's scores.
    pub items: Vec<Vec<ItemScore>>,
    /// Per mode, the rank check when asked (selection modes only).
    pub rank_checks: Vec<Option<RankCheck>>,
    /// Each query's PNG, when `keep_queries`.
    pub queries: Vec<Option<Vec<u8>>>,
    /// Exact-shape recall of the neighbours.
    pub recall: RecallCounts,
}

/// Answers the first `total` rows of `split` in every mode, checks and scores them.
/// `new_bar` makes a progress bar of a given length for each phase; `started` is when the
/// evaluation began (the summaries' wall time counts from it).
pub async fn evaluate(
    setup: &EvalSetup<'_>,
    reader: &CorpusReader,
    split: Split,
    total: usize,
    new_bar: &dyn Fn(u64) -> ProgressBar,
) -> Result<EvalOutcome, GeneratorError> {
    let retriever = setup.retriever;
    let in_index: HashSet<u64> = retriever
        .store()
        .iter()
        .map(|e| code_key(&e.code))
        .collect();
    let answerers: Vec<Box<dyn Answerer + '_>> =
        setup.modes.iter().map(|&m| setup.answerer(m)).collect();
    let mut runs: Vec<ModeRun> = setup
        .modes
        .iter()
        .map(|&mode| ModeRun {
            mode,
            inputs: Vec::with_capacity(total),
            latencies: Vec::with_capacity(total),
            notes: Vec::with_capacity(total),
            top: Vec::with_capacity(total),
            selections: Vec::with_capacity(total),
            pending: Vec::new(),
        })
        .collect();
    let mut queries = Vec::new();
    let mut recall = RecallCounts::default();
    let bar = new_bar(total as u64);
    bar.set_message(format!(
        "answering {split} queries ({})",
        setup
            .modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for row in reader.rows(split).take(total) {
        let row = row?;
        if setup.keep_queries {
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
        for (run, answerer) in runs.iter_mut().zip(&answerers) {
            let answered = match (&embedded, &image) {
                (Ok((vector, embed)), Ok(image)) => {
                    let query = Query {
                        image,
                        vector,
                        embed_seconds: *embed,
                    };
                    answerer.answer(query).await.map_err(|e| e.to_string())
                }
                (Err(e), _) | (Ok(_), Err(e)) => Err(e.clone()),
            };
            let checked = setup.fallback && run.mode.needs_model();
            let (pred, selection) = match answered {
                Ok(Answered { answer, selection }) => {
                    run.latencies.push(Some(answer.seconds()));
                    if !counted && in_index.contains(&key) {
                        counted = true;
                        recall.with_match += 1;
                        for (h, k) in recall.hits.iter_mut().zip([1usize, 5, 10]) {
                            if answer
                                .neighbours
                                .iter()
                                .take(k)
                                .any(|n| code_key(&n.code) == key)
                            {
                                *h += 1;
                            }
                        }
                    }
                    let mut n = note(&answer);
                    if let Some(s) = &selection {
                        n["selection"] = selection_note(s);
                        if s.chosen.is_none() {
                            n["error"] = format!(
                                "no answer: no candidate and none of the {} retrieved snippets builds a solid",
                                answer.neighbours.len()
                            )
                            .into();
                        }
                    }
                    run.notes.push(n);
                    run.top.push(
                        answer
                            .neighbours
                            .first()
                            .map(|n| (n.id.clone(), n.code.clone())),
                    );
                    let code =
                        (!answer.code.is_empty()).then(|| CodeText::Utf8(answer.code.clone()));
                    if checked {
                        run.pending.push(Some(answer));
                    }
                    (code, selection)
                }
                Err(e) => {
                    tracing::warn!("{} (id {}): {e}", row.origin, row.deepcad_id);
                    run.notes.push(serde_json::json!({ "error": e }));
                    run.top.push(None);
                    run.latencies.push(None);
                    if checked {
                        run.pending.push(None);
                    }
                    (None, None)
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
    drop(answerers);
    // Scoring starts after every query is answered, so latencies are not measured against
    // CadQuery workers scoring other queries.
    for run in runs.iter_mut().filter(|r| !r.pending.is_empty()) {
        check_in_sandbox(&setup.pool, run, new_bar).await?;
    }
    let items = score_runs(&setup.pool, &runs, total, new_bar).await?;
    let mut rank_checks = Vec::with_capacity(runs.len());
    for run in &runs {
        rank_checks.push(if setup.rank_check && run.mode.pipeline().is_none() {
            Some(rank_check(&setup.pool, run, new_bar).await?)
        } else {
            None
        });
    }
    Ok(EvalOutcome {
        runs,
        items,
        rank_checks,
        queries,
        recall,
    })
}

/// Every prediction of every run scored against its ground truth, in parallel.
async fn score_runs(
    pool: &Arc<WorkerPool>,
    runs: &[ModeRun],
    total: usize,
    new_bar: &dyn Fn(u64) -> ProgressBar,
) -> Result<Vec<Vec<ItemScore>>, GeneratorError> {
    let bar = new_bar((total * runs.len()) as u64);
    bar.set_message("scoring");
    let mut handles = Vec::new();
    for run in runs {
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
    Ok(items)
}

/// With `fallback`: every pending answer of `run` is checked in the sandbox (in parallel);
/// the first candidate that runs becomes the prediction, its origin goes into the note, and
/// the checking time into the query's latency.
async fn check_in_sandbox(
    pool: &Arc<WorkerPool>,
    run: &mut ModeRun,
    new_bar: &dyn Fn(u64) -> ProgressBar,
) -> Result<(), GeneratorError> {
    let bar = new_bar(run.pending.len() as u64);
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
    for (i, h) in handles.into_iter().enumerate() {
        bar.inc(1);
        let Some(checked) = h.await? else {
            continue;
        };
        if let Some(l) = run.latencies[i].as_mut() {
            *l += checked.seconds;
        }
        run.notes[i]["source"] = serde_json::json!(checked.source);
        run.notes[i]["rejected"] = serde_json::json!(checked.rejected);
        run.inputs[i].pred = (!checked.code.is_empty()).then_some(CodeText::Utf8(checked.code));
    }
    bar.finish_and_clear();
    Ok(())
}

/// The rank check: every valid candidate of every query scored against the ground truth
/// (volume IoU), for [`RankCheck`].
async fn rank_check(
    pool: &Arc<WorkerPool>,
    run: &ModeRun,
    new_bar: &dyn Fn(u64) -> ProgressBar,
) -> Result<RankCheck, GeneratorError> {
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
    let bar = new_bar(jobs.len() as u64);
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

/// Where an evaluation ran, for its reports.
#[derive(Debug, Clone)]
pub struct EvalContext {
    /// The index folder as given.
    pub index: String,
    /// The split the queries came from.
    pub split: Split,
    /// Seconds loading the index took.
    pub load_seconds: f64,
    /// Seconds the whole evaluation took (the summaries' wall time).
    pub seconds: f64,
    /// The generator checkpoint, when one was given.
    pub model: Option<String>,
}

/// Answer latency percentiles of one mode, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// Queries that were answered.
    pub queries: usize,
}

/// One query a mode could not answer.
#[derive(Debug, Clone, Serialize)]
pub struct FailedQuery {
    /// Its id.
    pub id: String,
    /// Why.
    pub error: String,
}

/// The queries a mode could not answer, counted by reason (the first line of each, so the
/// same fault on many queries is one row).
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryFailures {
    /// How many.
    pub count: usize,
    /// Count per reason.
    pub by_reason: BTreeMap<String, usize>,
    /// Each one.
    pub queries: Vec<FailedQuery>,
}

impl QueryFailures {
    /// Gathers the `error` notes of a run.
    pub fn of(inputs: &[PairInput], notes: &[serde_json::Value]) -> Self {
        let mut out = QueryFailures::default();
        for (input, n) in inputs.iter().zip(notes) {
            let Some(e) = n["error"].as_str() else {
                continue;
            };
            *out.by_reason
                .entry(e.lines().next().unwrap_or("").to_string())
                .or_default() += 1;
            out.queries.push(FailedQuery {
                id: input.id.clone(),
                error: e.to_string(),
            });
        }
        out.count = out.queries.len();
        out
    }
}

/// Exact-shape recall of the retrieval mode.
#[derive(Debug, Clone, Serialize)]
pub struct RecallReport {
    /// Queries whose normalised code occurs in the index.
    pub queries_with_exact_match: usize,
    /// Recall at 1.
    pub at_1: Option<f64>,
    /// Recall at 5.
    pub at_5: Option<f64>,
    /// Recall at 10.
    pub at_10: Option<f64>,
    /// What the figures are over.
    pub note: &'static str,
}

/// The selection figures of a selection mode, with its settings.
#[derive(Debug, Clone, Serialize)]
pub struct SelectionReport {
    /// What was chosen, how much was executed.
    #[serde(flatten)]
    pub stats: SelectionStats,
    /// The settings.
    pub options: SelectOptions,
}

/// What only some modes report.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ModeDetails {
    /// The retrieval mode: neighbour similarity and exact-shape recall.
    Retrieval {
        /// Mean cosine of the top neighbour.
        top1_score_mean: Option<f64>,
        /// Exact-shape recall.
        recall: RecallReport,
    },
    /// The selection modes.
    Selection {
        /// The generator checkpoint, if any.
        model: Option<String>,
        /// Selection figures and settings (boxed: the largest variant by far).
        selection: Box<SelectionReport>,
        /// The rank check, when asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        rank_check: Option<RankCheck>,
    },
    /// The single-path model modes.
    Model {
        /// The generator checkpoint.
        model: Option<String>,
        /// Decoding settings.
        decode: DecodeOptions,
        /// Answers the model ended itself (not cut at the token budget).
        finished: usize,
        /// Whether answers were checked in the sandbox.
        fallback: bool,
        /// With the check, answers that fell back to a neighbour.
        #[serde(skip_serializing_if = "Option::is_none")]
        fell_back: Option<usize>,
    },
}

/// One mode's figures: what `rag eval --json` prints per mode.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// The summary as typed values (VSR, means), for printing.
    #[serde(skip)]
    pub summary: Summary,
    /// The summary's fields for both protocols.
    #[serde(flatten)]
    pub figures: serde_json::Map<String, serde_json::Value>,
    /// By the ground truth's sketch count and bodies.
    pub breakdown: Breakdown,
    /// The mode.
    pub mode: EvalMode,
    /// The index folder.
    pub index: String,
    /// The index's encoder id.
    pub encoder: String,
    /// The split.
    pub split: String,
    /// Vectors in the index.
    pub index_vectors: usize,
    /// Seconds loading the index.
    pub index_load_seconds: f64,
    /// Answer latency.
    pub latency_ms: Latency,
    /// Queries not answered.
    pub query_failures: QueryFailures,
    /// What only this kind of mode reports.
    #[serde(flatten)]
    pub details: ModeDetails,
}

impl EvalOutcome {
    /// One report per mode, in the order asked.
    pub fn reports(&self, setup: &EvalSetup<'_>, ctx: &EvalContext) -> Vec<ModeReport> {
        let manifest = setup.retriever.manifest();
        self.runs
            .iter()
            .zip(&self.items)
            .zip(&self.rank_checks)
            .map(|((run, its), check)| {
                let summary = Summary::of(its, ctx.seconds);
                let figures = match summary.to_json(Protocols::ALL) {
                    serde_json::Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                };
                let mut latencies: Vec<f64> = run.latencies.iter().flatten().copied().collect();
                latencies.sort_by(f64::total_cmp);
                let details = match run.mode {
                    EvalMode::Retrieval => {
                        let scores: Vec<f64> = run
                            .notes
                            .iter()
                            .filter_map(|n| n["neighbour_score"].as_f64())
                            .collect();
                        let [at_1, at_5, at_10] = self.recall.recall();
                        ModeDetails::Retrieval {
                            top1_score_mean: (!scores.is_empty())
                                .then(|| scores.iter().sum::<f64>() / scores.len() as f64),
                            recall: RecallReport {
                                queries_with_exact_match: self.recall.with_match,
                                at_1,
                                at_5,
                                at_10,
                                note: self.recall.note(),
                            },
                        }
                    }
                    m if m.pipeline().is_none() => {
                        let done: Vec<&Selection> = run.selections.iter().flatten().collect();
                        ModeDetails::Selection {
                            model: ctx.model.clone(),
                            selection: Box::new(SelectionReport {
                                stats: SelectionStats::of(&done),
                                options: setup.select_options(m).clone(),
                            }),
                            rank_check: check.clone(),
                        }
                    }
                    _ => ModeDetails::Model {
                        model: ctx.model.clone(),
                        decode: setup.decode,
                        finished: run
                            .notes
                            .iter()
                            .filter(|n| n["finished"].as_bool() == Some(true))
                            .count(),
                        fallback: setup.fallback,
                        fell_back: setup.fallback.then(|| {
                            run.notes
                                .iter()
                                .filter(|n| n["source"]["kind"] == "neighbour")
                                .count()
                        }),
                    },
                };
                ModeReport {
                    figures,
                    breakdown: Breakdown::of(its),
                    mode: run.mode,
                    index: ctx.index.clone(),
                    encoder: manifest.encoder.id.clone(),
                    split: ctx.split.as_str().to_string(),
                    index_vectors: setup.retriever.store().len(),
                    index_load_seconds: ctx.load_seconds,
                    latency_ms: Latency {
                        p50: percentile(&latencies, 50.0).map(|s| s * 1e3),
                        p95: percentile(&latencies, 95.0).map(|s| s * 1e3),
                        queries: latencies.len(),
                    },
                    query_failures: QueryFailures::of(&run.inputs, &run.notes),
                    details,
                    summary,
                }
            })
            .collect()
    }
}

/// The value at percentile `p` (0-100) of sorted values, by nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[rank.min(sorted.len() - 1)])
}

/// Code with comments and all whitespace removed: two programs are the same shape when
/// these are equal (our dialect has no other spelling freedom that keeps the shape).
fn normalise_code(code: &str) -> String {
    code.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

/// A hash of the normalised code, to find a query's own program among its neighbours.
fn code_key(code: &str) -> u64 {
    let mut h = Fnv1a64::new();
    h.update(normalise_code(code).as_bytes());
    h.finish()
}

/// The per-query note of an answer: its top neighbour, timing and the model's output.
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

/// The per-query note of a selection: the chosen source and every candidate's outcome.
pub fn selection_note(sel: &Selection) -> serde_json::Value {
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

    #[test]
    fn modes_parse_by_name_and_name_the_choices_when_unknown() {
        for m in EvalMode::ALL {
            assert_eq!(m.as_str().parse::<EvalMode>(), Ok(m));
        }
        let e = "rerankk".parse::<EvalMode>().unwrap_err();
        assert!(
            e.contains("rerankk") && e.contains("retrieval, generator, rag"),
            "{e}"
        );
        assert!(EvalMode::Rag.needs_model() && !EvalMode::Rerank.needs_model());
    }

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(51.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn failures_are_counted_by_first_line() {
        let input = |id: &str| PairInput {
            id: id.into(),
            gt: CodeText::Utf8(String::new()),
            pred: None,
        };
        let inputs = [input("a"), input("b"), input("c")];
        let notes = [
            serde_json::json!({"error": "image does not decode: x\nmore"}),
            serde_json::json!({"neighbour_id": "n"}),
            serde_json::json!({"error": "image does not decode: x"}),
        ];
        let f = QueryFailures::of(&inputs, &notes);
        assert_eq!(f.count, 2);
        assert_eq!(f.by_reason["image does not decode: x"], 2);
        assert_eq!(f.queries[0].id, "a");
        assert_eq!(f.queries[1].error, "image does not decode: x");
    }
}
