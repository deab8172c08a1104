//! Execution-guided selection: many candidate programs for one image (the model's greedy or
//! beam output, N samples, the top retrieved snippets), all executed in the sandbox, the valid
//! ones rendered in the dataset's style and ranked by how well the render matches the query;
//! optionally the winner's numbers refined by a bounded coordinate search on that same match.
//! When no candidate runs, further neighbours are tried, so the answer runs whenever any
//! retrieved snippet does.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::fit::{self, FitOptions, FitReport};
use evaluator::render::CodeRenderError;
use evaluator::render_match::{compare, RenderMatch};
use evaluator::WorkerPool;
use image::RgbImage;
use indexer::encoder::{EncoderError, ImageEncoder};
use retriever::Neighbour;
use serde::Serialize;

use crate::decode::{DecodeOptions, Strategy};
use crate::model::Generator;
use crate::params::{Param, Program};
use crate::GeneratorError;

/// Side of the renders compared with the query (the dataset's image size).
pub const RENDER_SIZE: u32 = 448;
/// Weight of the encoder cosine (query vs render embedding) in [`RenderFit::score`].
pub const ENCODER_WEIGHT: f64 = 1.0 / 3.0;
/// Weight of the foreground-mask IoU in [`RenderFit::score`].
pub const MASK_WEIGHT: f64 = 1.0 / 3.0;
/// Weight of the edge-map F1 in [`RenderFit::score`].
pub const EDGE_WEIGHT: f64 = 1.0 / 3.0;
/// Extra neighbours tried, in rank order, when no candidate builds a solid.
pub const FALLBACK_NEIGHBOURS: usize = 10;

/// What to generate, how many snippets to consider, and whether to refine.
#[derive(Debug, Clone, Serialize)]
pub struct SelectOptions {
    /// Sampled generator outputs (top-p, seeds `seed`, `seed + 1`, ...).
    pub samples: usize,
    /// Beam width of the model's deterministic candidate (1: greedy).
    pub beam: usize,
    /// Top retrieved snippets that are candidates themselves.
    pub neighbours: usize,
    /// Sampling temperature and nucleus mass.
    pub temperature: f64,
    pub top_p: f64,
    /// First sampling seed.
    pub seed: u64,
    /// Token budget and grammar of every decode.
    pub max_tokens: usize,
    pub constrained: bool,
    /// Refine the winner's numbers (None: no refinement).
    pub refine: Option<RefineOptions>,
    /// Fit retrieved structures to the query natively and add the best as candidates
    /// (None: no fitted search).
    pub fit: Option<FitOptions>,
}

impl Default for SelectOptions {
    fn default() -> Self {
        SelectOptions {
            samples: 4,
            beam: 1,
            neighbours: 5,
            temperature: 0.8,
            top_p: 0.95,
            seed: 0,
            max_tokens: 1024,
            constrained: true,
            refine: None,
            fit: None,
        }
    }
}

/// Budget and constraints of the numeric refinement.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RefineOptions {
    /// Most programs executed by the search.
    pub budget: usize,
    /// Keep DeepCAD's quantisation (1/128 grids, integer sketch coordinates).
    pub quantise: bool,
}

/// Where a candidate came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CandidateSource {
    /// The model's greedy output.
    Greedy,
    /// The model's beam search output.
    Beam { width: usize },
    /// A sampled model output.
    Sample { seed: u64 },
    /// A retrieved snippet (1-based rank, corpus id).
    Neighbour { rank: usize, id: String },
    /// The refined version of the chosen candidate.
    Refined { evaluations: usize },
    /// A retrieved snippet (1-based rank, corpus id) with its numbers fitted to the query
    /// by the native fitted search.
    Fitted {
        rank: usize,
        id: String,
        variant: String,
        renders: usize,
    },
}

impl CandidateSource {
    /// The source in words, for `--explain` and reports.
    pub fn describe(&self) -> String {
        match self {
            CandidateSource::Greedy => "greedy".into(),
            CandidateSource::Beam { width } => format!("beam {width}"),
            CandidateSource::Sample { seed } => format!("sample (seed {seed})"),
            CandidateSource::Neighbour { rank, id } => format!("neighbour {rank} ({id})"),
            CandidateSource::Refined { evaluations } => {
                format!("refined ({evaluations} programs tried)")
            }
            CandidateSource::Fitted {
                rank,
                id,
                variant,
                renders,
            } => {
                format!("neighbour {rank} ({id}), {variant}, fitted ({renders} renders)")
            }
        }
    }
}

/// How well a candidate's render matches the query.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RenderFit {
    /// Cosine of the index encoder's embeddings of the query and the render.
    pub encoder_cosine: f64,
    /// Foreground-mask IoU of query and render.
    pub mask_iou: f64,
    /// Edge-map F1 (2-px tolerance) of query and render.
    pub edge_f1: f64,
    /// `ENCODER_WEIGHT * cosine + MASK_WEIGHT * mask IoU + EDGE_WEIGHT * edge F1`.
    pub score: f64,
}

impl RenderFit {
    fn new(encoder_cosine: f64, m: RenderMatch) -> Self {
        RenderFit {
            encoder_cosine,
            mask_iou: m.mask_iou,
            edge_f1: m.edge_f1,
            score: ENCODER_WEIGHT * encoder_cosine
                + MASK_WEIGHT * m.mask_iou
                + EDGE_WEIGHT * m.edge_f1,
        }
    }
}

/// One executed candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// Its first source; identical programs from other sources are listed in `also`.
    pub source: CandidateSource,
    pub also: Vec<CandidateSource>,
    pub code: String,
    /// Where it got to: the sandbox's status, or the judging stage that failed ([`status`]).
    pub status: String,
    pub message: String,
    /// Render match, for valid candidates that rendered.
    pub fit: Option<RenderFit>,
    /// The fitted search's native score against the query at the choice resolution, for
    /// valid candidates the native renderer draws (when the fitted search ran).
    pub native: Option<f64>,
}

/// What the refinement did.
#[derive(Debug, Clone, Serialize)]
pub struct Refinement {
    /// Render-match score before and after.
    pub from_score: f64,
    pub to_score: f64,
    /// Programs executed by the search.
    pub evaluations: usize,
    /// Accepted moves.
    pub accepted: usize,
    /// Why it stopped or did not start.
    pub note: String,
}

/// The outcome for one image.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    /// The answer (empty when nothing at all ran).
    pub code: String,
    /// Index of the chosen candidate in `candidates`.
    pub chosen: Option<usize>,
    pub candidates: Vec<Candidate>,
    pub refinement: Option<Refinement>,
    /// What the fitted search did, when it ran.
    pub fit: Option<FitReport>,
    /// True when no first-round candidate could be ranked, so the answer is a further
    /// neighbour, or (when nothing renders) the first program that builds a solid.
    pub fell_back: bool,
    /// Programs executed in the sandbox (candidates, fallbacks and refinement).
    pub executed: usize,
    /// Seconds proposing candidates (decoding, the fitted search), and executing/rendering/
    /// scoring them.
    pub decode_seconds: f64,
    pub check_seconds: f64,
}

impl Selection {
    /// The chosen candidate.
    pub fn chosen(&self) -> Option<&Candidate> {
        self.chosen.map(|i| &self.candidates[i])
    }

    /// Candidates ordered as ranked: valid ones by score (best first), then the rest.
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.candidates.len()).collect();
        order.sort_by(|&a, &b| {
            let (fa, fb) = (&self.candidates[a].fit, &self.candidates[b].fit);
            match (fa, fb) {
                (Some(x), Some(y)) => y.score.total_cmp(&x.score).then(a.cmp(&b)),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => a.cmp(&b),
            }
        });
        order
    }
}

/// The query as the renders are compared with it: RGB on white at [`RENDER_SIZE`].
fn query_at_render_size(query: &RgbImage) -> RgbImage {
    if query.dimensions() == (RENDER_SIZE, RENDER_SIZE) {
        query.clone()
    } else {
        image::imageops::resize(
            query,
            RENDER_SIZE,
            RENDER_SIZE,
            image::imageops::FilterType::Nearest,
        )
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        dot += f64::from(*x) * f64::from(*y);
        na += f64::from(*x) * f64::from(*x);
        nb += f64::from(*y) * f64::from(*y);
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Runs one candidate program and renders its solid in the dataset's style: the sandboxed
/// CadQuery pool in production; a fake in tests, to reach every failure path.
pub trait CandidateRunner: Send + Sync + 'static {
    /// Executes `code` and renders the solid it builds, `size` x `size`.
    fn render(self: Arc<Self>, code: String, size: u32) -> RenderFuture;
    /// Programs it runs at once (the refinement's batch size).
    fn parallelism(&self) -> usize;
}

/// The future of [`CandidateRunner::render`].
pub type RenderFuture =
    Pin<Box<dyn Future<Output = Result<RgbImage, CodeRenderError>> + Send + 'static>>;

impl CandidateRunner for WorkerPool {
    fn render(self: Arc<Self>, code: String, size: u32) -> RenderFuture {
        Box::pin(async move { WorkerPool::render(&self, &code, size).await })
    }

    fn parallelism(&self) -> usize {
        self.size()
    }
}

/// A candidate's status past the sandbox's own (`ok`, `syntax`, `runtime`, `timeout`, ...):
/// the stage of judging at which it failed. Only `ok` carries a [`RenderFit`].
pub mod status {
    /// Built a solid, rendered, embedded and compared.
    pub const OK: &str = "ok";
    /// Built a solid but the worker sent no mesh to render.
    pub const NO_MESH: &str = "no_mesh";
    /// Built a solid the renderer could not draw (degenerate or malformed mesh).
    pub const RENDER_FAILED: &str = "render_failed";
    /// Built a solid whose render is blank (one colour): nothing to compare.
    pub const BLANK_RENDER: &str = "blank_render";
    /// The encoder failed on the render.
    pub const NOT_EMBEDDED: &str = "not_embedded";
    /// The render could not be compared with the query.
    pub const NOT_COMPARED: &str = "not_compared";
    /// The task judging it died (a panic), so nothing is known of it.
    pub const JUDGE_FAILED: &str = "judge_failed";
    /// The model failed while decoding it, so there is no program.
    pub const NOT_DECODED: &str = "not_decoded";

    /// Whether the program built a valid solid (whatever happened after): such a candidate
    /// is a valid answer even when it cannot be ranked.
    pub fn built_solid(status: &str) -> bool {
        matches!(
            status,
            OK | NO_MESH | RENDER_FAILED | BLANK_RENDER | NOT_EMBEDDED | NOT_COMPARED
        )
    }
}

/// Scores programs against one query: executes them (in parallel), renders the valid ones,
/// and compares each render with the query image and embedding. Every failure is the
/// program's status, never an error of the query.
pub struct RenderJudge<'a> {
    runner: Arc<dyn CandidateRunner>,
    encoder: &'a dyn ImageEncoder,
    query: Arc<RgbImage>,
    query_vector: Vec<f32>,
    /// Programs executed so far.
    pub executed: usize,
    /// Sandbox + render + compare seconds so far.
    pub seconds: f64,
}

/// A judged program: status (see [`status`]), message, and fit when it rendered.
type Judged = (String, String, Option<RenderFit>);

impl<'a> RenderJudge<'a> {
    /// A judge for `query` (any size; compared at [`RENDER_SIZE`]) embedded by `encoder` as
    /// `query_vector`.
    pub fn new(
        runner: Arc<dyn CandidateRunner>,
        encoder: &'a dyn ImageEncoder,
        query: &RgbImage,
        query_vector: Vec<f32>,
    ) -> Self {
        RenderJudge {
            runner,
            encoder,
            query: Arc::new(query_at_render_size(query)),
            query_vector,
            executed: 0,
            seconds: 0.0,
        }
    }

    /// Judges `codes` in parallel, results in input order.
    pub async fn judge(&mut self, codes: &[String]) -> Vec<Judged> {
        let t = Instant::now();
        let mut handles = Vec::with_capacity(codes.len());
        for code in codes {
            let (runner, code, query) = (self.runner.clone(), code.clone(), self.query.clone());
            handles.push(tokio::spawn(async move {
                match runner.render(code, RENDER_SIZE).await {
                    Ok(img) => match compare(&query, &img) {
                        Ok(m) => (status::OK.into(), String::new(), Some((img, m))),
                        Err(e) => (status::NOT_COMPARED.into(), e.to_string(), None),
                    },
                    Err(CodeRenderError::NotASolid { status, message }) => {
                        (status.to_string(), message, None)
                    }
                    Err(CodeRenderError::NoMesh) => (
                        status::NO_MESH.into(),
                        "the worker returned no mesh".into(),
                        None,
                    ),
                    Err(CodeRenderError::Render(e)) => (
                        status::RENDER_FAILED.into(),
                        format!("not rendered: {e}"),
                        None,
                    ),
                }
            }));
        }
        let mut out = Vec::with_capacity(codes.len());
        for h in handles {
            let judged = match h.await {
                Ok((st, message, Some((img, m)))) => match self.encoder.encode(&img) {
                    Ok(v) => (
                        st,
                        message,
                        Some(RenderFit::new(cosine(&self.query_vector, &v), m)),
                    ),
                    Err(EncoderError::Blank) => (
                        status::BLANK_RENDER.into(),
                        "the solid renders as a blank image".into(),
                        None,
                    ),
                    Err(e) => (
                        status::NOT_EMBEDDED.into(),
                        format!("render not embedded: {e}"),
                        None,
                    ),
                },
                Ok((st, message, None)) => (st, message, None),
                Err(e) => (
                    status::JUDGE_FAILED.into(),
                    format!("judging failed: {e}"),
                    None,
                ),
            };
            out.push(judged);
        }
        self.executed += codes.len();
        self.seconds += t.elapsed().as_secs_f64();
        out
    }
}

/// Decodes the model's candidates: the greedy (or beam) output and `samples` samples; a
/// decode that fails is that candidate's error, not the query's.
fn model_candidates(
    generator: &Generator,
    vector: &[f32],
    neighbours: &[Neighbour],
    opts: &SelectOptions,
) -> Vec<(CandidateSource, Result<String, GeneratorError>)> {
    let k = generator.model.config().layout.k;
    let codes: Vec<&str> = neighbours.iter().take(k).map(|n| n.code.as_str()).collect();
    let decode = |strategy| DecodeOptions {
        strategy,
        max_tokens: opts.max_tokens,
        constrained: opts.constrained,
    };
    let mut out = Vec::with_capacity(1 + opts.samples);
    let (source, strategy) = if opts.beam > 1 {
        (
            CandidateSource::Beam { width: opts.beam },
            Strategy::Beam { width: opts.beam },
        )
    } else {
        (CandidateSource::Greedy, Strategy::Greedy)
    };
    out.push((
        source,
        generator
            .generate(vector, &codes, &decode(strategy))
            .map(|g| g.code),
    ));
    for i in 0..opts.samples as u64 {
        let seed = opts.seed.wrapping_add(i);
        let strategy = Strategy::Sample {
            temperature: opts.temperature,
            top_p: opts.top_p,
            seed,
        };
        out.push((
            CandidateSource::Sample { seed },
            generator
                .generate(vector, &codes, &decode(strategy))
                .map(|g| g.code),
        ));
    }
    out
}

/// Collapses identical programs (whitespace, comments and digits past the 4th significant
/// one aside) into one candidate.
fn merge_duplicates(raw: Vec<(CandidateSource, String)>) -> Vec<Candidate> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Candidate> = Vec::new();
    for (source, code) in raw {
        let key: String = crate::compact::compact(&code)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if let Some(&i) = seen.get(&key) {
            out[i].also.push(source);
            continue;
        }
        seen.insert(key, out.len());
        out.push(Candidate {
            source,
            also: Vec::new(),
            code,
            status: String::new(),
            message: String::new(),
            fit: None,
            native: None,
        });
    }
    out
}

fn best_valid(candidates: &[Candidate]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.fit.map(|f| (i, f.score)))
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(i, _)| i)
}

/// Answers one image by execution-guided selection. `neighbours` are the retrieved snippets
/// (best first, at least `opts.neighbours` + [`FALLBACK_NEIGHBOURS`] when available); without
/// a generator the snippets are the only candidates.
pub async fn select(
    judge: &mut RenderJudge<'_>,
    generator: Option<&Generator>,
    vector: &[f32],
    neighbours: &[Neighbour],
    opts: &SelectOptions,
) -> Selection {
    let t = Instant::now();
    let mut raw = Vec::new();
    let mut undecoded = Vec::new();
    if let Some(g) = generator {
        for (source, code) in model_candidates(g, vector, neighbours, opts) {
            match code {
                Ok(code) => raw.push((source, code)),
                Err(e) => undecoded.push(Candidate {
                    source,
                    also: Vec::new(),
                    code: String::new(),
                    status: status::NOT_DECODED.into(),
                    message: format!("decoding failed: {e}"),
                    fit: None,
                    native: None,
                }),
            }
        }
    }
    for n in neighbours.iter().take(opts.neighbours) {
        raw.push((
            CandidateSource::Neighbour {
                rank: n.rank,
                id: n.id.clone(),
            },
            n.code.clone(),
        ));
    }
    let fit_report = opts.fit.as_ref().map(|f| {
        let structures: Vec<(String, usize, String)> = neighbours
            .iter()
            .map(|n| (n.code.clone(), n.rank, n.id.clone()))
            .collect();
        let report = fit::fit(&judge.query, &structures, f);
        for k in &report.kept {
            raw.push((
                CandidateSource::Fitted {
                    rank: k.rank,
                    id: k.id.clone(),
                    variant: k.variant.clone(),
                    renders: k.renders,
                },
                k.code.clone(),
            ));
        }
        report
    });
    let decode_seconds = t.elapsed().as_secs_f64();
    let mut candidates = merge_duplicates(raw);
    let (executed0, seconds0) = (judge.executed, judge.seconds);
    let codes: Vec<String> = candidates.iter().map(|c| c.code.clone()).collect();
    for (c, (status, message, fit)) in candidates.iter_mut().zip(judge.judge(&codes).await) {
        c.status = status;
        c.message = message;
        c.fit = fit;
    }
    candidates.extend(undecoded);
    let mut chosen = best_valid(&candidates);
    if let Some(f) = opts
        .fit
        .as_ref()
        .filter(|f| f.choose == fit::Choose::Native)
    {
        // The native score sees what the judge's cues miss (the faces' shading); CadQuery
        // has already said which candidates run.
        let target = fit::Target::new(&judge.query, f.choose_size);
        for c in candidates.iter_mut().filter(|c| c.fit.is_some()) {
            c.native = fit::score_code(&c.code, &target, f.grey_weight);
        }
        let best_native = candidates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.native.map(|s| (i, s)))
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i);
        chosen = best_native.or(chosen);
    }
    let mut fell_back = false;
    if chosen.is_none() {
        // Never invalid: the next neighbours in rank order, the first that renders.
        for n in neighbours.iter().skip(opts.neighbours) {
            let judged = judge.judge(std::slice::from_ref(&n.code)).await;
            let (status, message, fit) = judged.into_iter().next().unwrap_or_default();
            let ranked = fit.is_some();
            candidates.push(Candidate {
                source: CandidateSource::Neighbour {
                    rank: n.rank,
                    id: n.id.clone(),
                },
                also: Vec::new(),
                code: n.code.clone(),
                status,
                message,
                fit,
                native: None,
            });
            if ranked {
                chosen = Some(candidates.len() - 1);
                fell_back = true;
                break;
            }
        }
    }
    if chosen.is_none() {
        // Nothing could be ranked: a program that builds a solid still beats no answer.
        chosen = candidates
            .iter()
            .position(|c| status::built_solid(&c.status));
        fell_back = chosen.is_some();
    }
    let mut refinement = None;
    if let (Some(r), Some(i)) = (&opts.refine, chosen) {
        if let Some(from) = candidates[i].fit {
            let (code, fit, report) = refine(judge, &candidates[i].code, from, r).await;
            if fit.score > from.score {
                candidates.push(Candidate {
                    source: CandidateSource::Refined {
                        evaluations: report.evaluations,
                    },
                    also: Vec::new(),
                    code,
                    status: status::OK.into(),
                    message: String::new(),
                    fit: Some(fit),
                    native: None,
                });
                chosen = Some(candidates.len() - 1);
            }
            refinement = Some(report);
        }
    }
    Selection {
        code: chosen.map_or_else(String::new, |i| candidates[i].code.clone()),
        chosen,
        candidates,
        refinement,
        fit: fit_report,
        fell_back,
        executed: judge.executed - executed0,
        decode_seconds,
        check_seconds: judge.seconds - seconds0,
    }
}

/// The step a coordinate move starts with, per kind of parameter: extrude distances and
/// radii move by a fraction of themselves, a sketch's scale by a factor, plane origins by an
/// absolute offset (part coordinates are about unit size).
fn initial_step(p: &Param) -> f64 {
    match p {
        Param::Extrude { .. } => 0.25,
        Param::Scale { .. } => 0.15,
        Param::Radius { .. } => 0.2,
        Param::Origin { .. } => 0.1,
    }
}

/// The value after a move of `sign * step` from `v`.
fn moved(p: &Param, v: f64, step: f64, sign: f64) -> f64 {
    match p {
        Param::Origin { .. } => v + sign * step,
        _ => v * (1.0 + sign * step),
    }
}

/// Search order: the parameters that change proportions most first.
fn priority(p: &Param) -> u8 {
    match p {
        Param::Extrude { .. } => 0,
        Param::Scale { .. } => 1,
        Param::Radius { .. } => 2,
        Param::Origin { .. } => 3,
    }
}

/// Bounded coordinate search on the program's numbers, maximising the render-match score:
/// each round tries +/- step on every parameter (most influential first, a batch of the
/// pool's size at a time, best improvement accepted per batch); a round without improvement
/// halves the steps. Stops at the execution budget or when the steps are below 1%.
async fn refine(
    judge: &mut RenderJudge<'_>,
    code: &str,
    from: RenderFit,
    opts: &RefineOptions,
) -> (String, RenderFit, Refinement) {
    let mut report = Refinement {
        from_score: from.score,
        to_score: from.score,
        evaluations: 0,
        accepted: 0,
        note: String::new(),
    };
    let program = match Program::parse(code) {
        Ok(p) => p,
        Err(e) => {
            report.note = format!("not refined: {e}");
            return (code.to_string(), from, report);
        }
    };
    let params: Vec<Param> = program.params().to_vec();
    if params.is_empty() {
        report.note = "not refined: no numeric parameters".into();
        return (code.to_string(), from, report);
    }
    let mut order: Vec<usize> = (0..params.len()).collect();
    order.sort_by_key(|&i| priority(&params[i]));
    let mut values = program.values();
    let mut steps: Vec<f64> = params.iter().map(initial_step).collect();
    let (mut best_code, mut best) = (code.to_string(), from);
    let mut tried: HashMap<String, f64> = HashMap::new();
    tried.insert(code.to_string(), from.score);
    let batch = judge.runner.parallelism().max(2);
    'search: loop {
        let mut improved = false;
        let mut moves: Vec<(usize, f64)> = Vec::new();
        for &i in &order {
            for sign in [1.0, -1.0] {
                moves.push((i, moved(&params[i], values[i], steps[i], sign)));
            }
        }
        for chunk in moves.chunks(batch) {
            let mut codes = Vec::new();
            let mut tried_values = Vec::new();
            for &(i, v) in chunk {
                let mut vs = values.clone();
                vs[i] = v;
                let Ok(text) = program.write(&vs, opts.quantise) else {
                    continue;
                };
                if tried.contains_key(&text) {
                    continue;
                }
                tried.insert(text.clone(), f64::NEG_INFINITY);
                codes.push(text);
                tried_values.push(vs);
            }
            let left = opts.budget.saturating_sub(report.evaluations);
            if left == 0 {
                report.note = format!("stopped at the budget of {} programs", opts.budget);
                break 'search;
            }
            codes.truncate(left);
            if codes.is_empty() {
                continue;
            }
            let judged = judge.judge(&codes).await;
            report.evaluations += codes.len();
            let mut round_best: Option<(usize, RenderFit)> = None;
            for (j, (_, _, fit)) in judged.iter().enumerate() {
                if let Some(f) = fit {
                    tried.insert(codes[j].clone(), f.score);
                    if f.score > round_best.map_or(best.score, |(_, b)| b.score) {
                        round_best = Some((j, *f));
                    }
                }
            }
            if let Some((j, f)) = round_best {
                best = f;
                best_code = codes[j].clone();
                values = tried_values[j].clone();
                report.accepted += 1;
                improved = true;
            }
        }
        if !improved {
            for s in steps.iter_mut() {
                *s *= 0.5;
            }
            if steps.iter().all(|s| *s < 0.01) {
                report.note = "converged (steps below 1%)".into();
                break;
            }
        }
    }
    report.to_score = best.score;
    (best_code, best, report)
}

/// How a selection mode's queries went: programs run, where answers came from, refinement.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SelectionStats {
    pub queries: usize,
    pub executed_mean: Option<f64>,
    pub candidates_mean: Option<f64>,
    /// Chosen answers by origin: the model's, a snippet, a refined program, none at all.
    pub chosen_model: usize,
    pub chosen_neighbour: usize,
    pub chosen_refined: usize,
    /// Chosen answers that the fitted search produced.
    pub chosen_fitted: usize,
    pub chosen_none: usize,
    pub fell_back: usize,
    /// Mean render-match gain of the refinement over the queries it ran on.
    pub refined_score_gain_mean: Option<f64>,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

impl SelectionStats {
    /// Aggregates the selections of one mode.
    pub fn of(selections: &[&Selection]) -> Self {
        let mut out = SelectionStats {
            queries: selections.len(),
            ..Default::default()
        };
        let executed: Vec<f64> = selections.iter().map(|s| s.executed as f64).collect();
        let candidates: Vec<f64> = selections
            .iter()
            .map(|s| s.candidates.len() as f64)
            .collect();
        out.executed_mean = mean(&executed);
        out.candidates_mean = mean(&candidates);
        for s in selections {
            match s.chosen().map(|c| &c.source) {
                None => out.chosen_none += 1,
                Some(CandidateSource::Neighbour { .. }) => out.chosen_neighbour += 1,
                Some(CandidateSource::Refined { .. }) => out.chosen_refined += 1,
                Some(CandidateSource::Fitted { .. }) => out.chosen_fitted += 1,
                Some(_) => out.chosen_model += 1,
            }
            out.fell_back += usize::from(s.fell_back);
        }
        let gains: Vec<f64> = selections
            .iter()
            .filter_map(|s| s.refinement.as_ref())
            .map(|r| r.to_score - r.from_score)
            .collect();
        out.refined_score_gain_mean = mean(&gains);
        out
    }
}

/// A valid candidate's render match next to its true volume IoU against the ground truth.
#[derive(Debug, Clone, Copy)]
pub struct ScoredCandidate {
    pub fit: RenderFit,
    pub volume_iou: f64,
    /// Whether selection chose it.
    pub chosen: bool,
}

/// One figure per cue of the render match.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PerCue {
    pub score: Option<f64>,
    pub encoder: Option<f64>,
    pub mask: Option<f64>,
    pub edge: Option<f64>,
}

/// Does the render-match score pick better shapes? Spearman's rho of each cue with the true
/// volume IoU over every query's valid candidates, and the IoU the choice achieves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RankCheck {
    /// Queries with at least 3 valid candidates of distinct scores and IoUs (those with a rho).
    pub queries: usize,
    pub candidates_scored: usize,
    /// Mean over queries of the per-query rho.
    pub rho_mean_per_query: PerCue,
    /// Rho over all candidates of all queries together.
    pub rho_pooled: PerCue,
    /// Mean volume IoU of the chosen candidate, of all candidates, and of the best one.
    pub iou_chosen: Option<f64>,
    pub iou_candidate_mean: Option<f64>,
    pub iou_oracle: Option<f64>,
}

impl RankCheck {
    /// The check over queries' scored candidates.
    pub fn of(per_query: &[Vec<ScoredCandidate>]) -> Self {
        let per_query: Vec<&Vec<ScoredCandidate>> =
            per_query.iter().filter(|c| !c.is_empty()).collect();
        let cue = |pick: fn(&RenderFit) -> f64| {
            let (mut rhos, mut xs, mut ys) = (Vec::new(), Vec::new(), Vec::new());
            for cands in &per_query {
                let x: Vec<f64> = cands.iter().map(|c| pick(&c.fit)).collect();
                let y: Vec<f64> = cands.iter().map(|c| c.volume_iou).collect();
                rhos.extend(spearman(&x, &y));
                xs.extend(x);
                ys.extend(y);
            }
            (rhos.len(), mean(&rhos), spearman(&xs, &ys))
        };
        let (queries, score_mean, score_pooled) = cue(|f| f.score);
        let (_, encoder_mean, encoder_pooled) = cue(|f| f.encoder_cosine);
        let (_, mask_mean, mask_pooled) = cue(|f| f.mask_iou);
        let (_, edge_mean, edge_pooled) = cue(|f| f.edge_f1);
        let chosen: Vec<f64> = per_query
            .iter()
            .flat_map(|c| c.iter().filter(|x| x.chosen).map(|x| x.volume_iou))
            .collect();
        let candidate_mean: Vec<f64> = per_query
            .iter()
            .filter_map(|c| mean(&c.iter().map(|x| x.volume_iou).collect::<Vec<_>>()))
            .collect();
        let oracle: Vec<f64> = per_query
            .iter()
            .map(|c| c.iter().map(|x| x.volume_iou).fold(0.0, f64::max))
            .collect();
        RankCheck {
            queries,
            candidates_scored: per_query.iter().map(|c| c.len()).sum(),
            rho_mean_per_query: PerCue {
                score: score_mean,
                encoder: encoder_mean,
                mask: mask_mean,
                edge: edge_mean,
            },
            rho_pooled: PerCue {
                score: score_pooled,
                encoder: encoder_pooled,
                mask: mask_pooled,
                edge: edge_pooled,
            },
            iou_chosen: mean(&chosen),
            iou_candidate_mean: mean(&candidate_mean),
            iou_oracle: mean(&oracle),
        }
    }
}

impl Selection {
    /// The `--explain` table: every candidate in ranked order with its status, score and
    /// cues, the choice, merged duplicates, tied scores and failure messages; then the
    /// weights and what the refinement did.
    pub fn explain(&self) -> String {
        let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.4}"));
        let mut out = format!(
            "{:<4} {:<34} {:<13} {:>7} {:>7} {:>7} {:>7}  note\n",
            "rank", "candidate", "status", "score", "encoder", "mask", "edges"
        );
        for (r, i) in self.ranking().into_iter().enumerate() {
            let c = &self.candidates[i];
            let mut notes = Vec::new();
            if Some(i) == self.chosen {
                notes.push("CHOSEN".to_string());
            }
            if !c.also.is_empty() {
                let same: Vec<String> = c.also.iter().map(|s| s.describe()).collect();
                notes.push(format!("same program as {}", same.join(", ")));
            }
            if let Some(fit) = c.fit {
                let tied = self
                    .candidates
                    .iter()
                    .enumerate()
                    .any(|(j, o)| j != i && o.fit.is_some_and(|g| g.score == fit.score));
                if tied {
                    notes.push("tied score: the earlier candidate ranks first".into());
                }
            } else {
                notes.push(c.message.lines().next().unwrap_or("").to_string());
            }
            out.push_str(&format!(
                "{:<4} {:<34} {:<13} {:>7} {:>7} {:>7} {:>7}  {}\n",
                r + 1,
                c.source.describe(),
                c.status,
                f(c.fit.map(|x| x.score)),
                f(c.fit.map(|x| x.encoder_cosine)),
                f(c.fit.map(|x| x.mask_iou)),
                f(c.fit.map(|x| x.edge_f1)),
                notes.join("; ")
            ));
        }
        out.push_str(&format!(
            "score = {ENCODER_WEIGHT:.3} encoder cosine + {MASK_WEIGHT:.3} mask IoU + {EDGE_WEIGHT:.3} edge F1 (render vs query)\n"
        ));
        if let Some(r) = &self.refinement {
            out.push_str(&format!(
                "refinement: score {:.4} -> {:.4} in {} programs ({} moves accepted; {})\n",
                r.from_score, r.to_score, r.evaluations, r.accepted, r.note
            ));
        }
        if let Some(f) = &self.fit {
            out.push_str(&format!(
                "fitted search: {} structures ({} drawn natively, {} left to CadQuery), {} native renders in {:.2} s\n",
                f.structures, f.drawn, f.skipped, f.renders, f.seconds
            ));
            for k in &f.kept {
                out.push_str(&format!(
                    "  kept neighbour {} ({}), {}: native score {:.4} -> {:.4} ({} renders, {} moves)\n",
                    k.rank, k.id, k.variant, k.from_score, k.score, k.renders, k.accepted
                ));
            }
        }
        out
    }
}

/// Spearman's rank correlation of `x` and `y` (average ranks for ties); None for fewer than
/// 3 pairs or when either side is constant.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 3 {
        return None;
    }
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// 1-based ranks with ties sharing their average rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_reversed_and_tied_data() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&x, &[10.0, 20.0, 30.0, 40.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((spearman(&x, &[4.0, 3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[5.0, 1.0, 5.0, 3.0]), vec![3.5, 1.0, 3.5, 2.0]);
        // x ranks 1..5, y ranks (1, 2, 3.5, 3.5, 5): rho = 9.5 / sqrt(10 * 9.5)
        let rho = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[0.1, 0.2, 0.3, 0.3, 0.9]).unwrap();
        assert!((rho - 9.5 / (10.0f64 * 9.5).sqrt()).abs() < 1e-12, "{rho}");
        assert_eq!(spearman(&x, &[1.0, 1.0, 1.0, 1.0]), None);
        assert_eq!(spearman(&x[..2], &[1.0, 2.0]), None);
    }

    #[test]
    fn duplicates_merge_into_the_first_source() {
        let a = "import cadquery as cq\nsolid=cq.Workplane().box(1, 2, 3)\n";
        let b = "# a comment\nsolid = cq.Workplane().box(1, 2, 3)";
        let c = "solid=cq.Workplane().box(1, 2, 4)";
        let merged = merge_duplicates(vec![
            (CandidateSource::Greedy, a.into()),
            (CandidateSource::Sample { seed: 3 }, c.into()),
            (
                CandidateSource::Neighbour {
                    rank: 1,
                    id: "n".into(),
                },
                b.into(),
            ),
        ]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].source, CandidateSource::Greedy);
        assert_eq!(merged[0].also.len(), 1);
        assert_eq!(merged[1].source, CandidateSource::Sample { seed: 3 });
    }

    #[test]
    fn ranking_puts_valid_candidates_by_score_first() {
        let cand = |score: Option<f64>| Candidate {
            native: None,
            source: CandidateSource::Greedy,
            also: Vec::new(),
            code: String::new(),
            status: if score.is_some() { "ok" } else { "runtime" }.into(),
            message: String::new(),
            fit: score.map(|s| RenderFit {
                encoder_cosine: s,
                mask_iou: s,
                edge_f1: s,
                score: s,
            }),
        };
        let s = Selection {
            code: String::new(),
            chosen: None,
            candidates: vec![
                cand(None),
                cand(Some(0.2)),
                cand(Some(0.9)),
                cand(Some(0.5)),
            ],
            refinement: None,
            fit: None,
            fell_back: false,
            executed: 4,
            decode_seconds: 0.0,
            check_seconds: 0.0,
        };
        assert_eq!(s.ranking(), vec![2, 3, 1, 0]);
        assert_eq!(best_valid(&s.candidates), Some(2));
    }

    fn fit(score: f64) -> RenderFit {
        RenderFit {
            encoder_cosine: score,
            mask_iou: 1.0 - score,
            edge_f1: 0.5,
            score,
        }
    }

    #[test]
    fn rank_check_correlates_cues_and_compares_the_choice_with_the_oracle() {
        let q = |pairs: &[(f64, f64, bool)]| {
            pairs
                .iter()
                .map(|&(s, iou, chosen)| ScoredCandidate {
                    fit: fit(s),
                    volume_iou: iou,
                    chosen,
                })
                .collect::<Vec<_>>()
        };
        let check = RankCheck::of(&[
            q(&[(0.9, 0.8, true), (0.5, 0.4, false), (0.1, 0.2, false)]),
            q(&[(0.7, 0.3, true), (0.6, 0.6, false), (0.2, 0.1, false)]),
            q(&[(0.4, 0.5, true)]),
            Vec::new(),
        ]);
        assert_eq!(check.queries, 2);
        assert_eq!(check.candidates_scored, 7);
        // per query: rho 1.0 and 0.5
        assert!((check.rho_mean_per_query.score.unwrap() - 0.75).abs() < 1e-12);
        assert!((check.rho_mean_per_query.mask.unwrap() + 0.75).abs() < 1e-12);
        assert_eq!(
            check.rho_mean_per_query.edge, None,
            "a constant cue has no rho"
        );
        assert!((check.iou_chosen.unwrap() - (0.8 + 0.3 + 0.5) / 3.0).abs() < 1e-12);
        assert!((check.iou_oracle.unwrap() - (0.8 + 0.6 + 0.5) / 3.0).abs() < 1e-12);
        assert!(check.rho_pooled.score.unwrap() > 0.5);
    }

    #[test]
    fn stats_and_explanation_name_the_choice() {
        let cand = |source, score: Option<f64>, message: &str| Candidate {
            native: None,
            source,
            also: Vec::new(),
            code: String::new(),
            status: if score.is_some() { "ok" } else { "runtime" }.into(),
            message: message.into(),
            fit: score.map(fit),
        };
        let s = Selection {
            code: "x".into(),
            chosen: Some(1),
            candidates: vec![
                cand(CandidateSource::Greedy, None, "NameError: boom\nmore"),
                cand(
                    CandidateSource::Neighbour {
                        rank: 1,
                        id: "n1".into(),
                    },
                    Some(0.8),
                    "",
                ),
                cand(CandidateSource::Sample { seed: 4 }, Some(0.8), ""),
            ],
            refinement: None,
            fit: None,
            fell_back: false,
            executed: 3,
            decode_seconds: 0.0,
            check_seconds: 0.0,
        };
        let text = s.explain();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].contains("neighbour 1 (n1)") && lines[1].contains("CHOSEN"));
        assert!(lines[1].contains("tied score") && lines[2].contains("sample (seed 4)"));
        assert!(lines[3].contains("greedy") && lines[3].contains("NameError: boom"));
        assert!(!text.contains("more"));
        let stats = SelectionStats::of(&[&s, &s]);
        assert_eq!(stats.chosen_neighbour, 2);
        assert_eq!(stats.chosen_model, 0);
        assert_eq!(stats.executed_mean, Some(3.0));
    }

    /// A runner that answers by the program's text: `good N` draws a square of side N,
    /// `blank` a white image, `degenerate` a render error, `timeout` the sandbox's timeout,
    /// `panic` a panicking task, `small` a render at the wrong size.
    pub(crate) struct FakeRunner;

    impl CandidateRunner for FakeRunner {
        fn render(self: Arc<Self>, code: String, size: u32) -> RenderFuture {
            Box::pin(async move {
                let square = |side: u32, size: u32| {
                    let lo = (size - side) / 2;
                    RgbImage::from_fn(size, size, |x, y| {
                        let inside = (lo..lo + side).contains(&x) && (lo..lo + side).contains(&y);
                        // Two shades, so the cropped thumbnail is not one uniform colour.
                        let grey = if x < lo + side / 2 { 60 } else { 150 };
                        image::Rgb(if inside { [grey; 3] } else { [255; 3] })
                    })
                };
                match code.split_whitespace().collect::<Vec<_>>()[..] {
                    ["good", n] => Ok(square(n.parse().unwrap(), size)),
                    ["blank"] => Ok(RgbImage::from_pixel(size, size, image::Rgb([255; 3]))),
                    ["degenerate"] => Err(CodeRenderError::Render(
                        evaluator::render::RenderError::EmptyMesh,
                    )),
                    ["timeout"] => Err(CodeRenderError::NotASolid {
                        status: "timeout",
                        message: "timed out after 10 s".into(),
                    }),
                    ["small"] => Ok(square(4, 8)),
                    _ => panic!("the fake runner does not know {code:?}"),
                }
            })
        }

        fn parallelism(&self) -> usize {
            2
        }
    }

    fn neighbours(codes: &[&str]) -> Vec<Neighbour> {
        codes
            .iter()
            .enumerate()
            .map(|(i, c)| Neighbour {
                rank: i + 1,
                id: format!("n{}", i + 1),
                score: 0.5,
                code: (*c).into(),
                data_id: i,
            })
            .collect()
    }

    async fn select_among(codes: &[&str], first_round: usize) -> Selection {
        let encoder = indexer::encoder::PixelEncoder::new(16);
        let query = Arc::new(FakeRunner)
            .render("good 200".into(), RENDER_SIZE)
            .await
            .unwrap();
        let vector = encoder.encode(&query).unwrap();
        let mut judge = RenderJudge::new(Arc::new(FakeRunner), &encoder, &query, vector.clone());
        let opts = SelectOptions {
            neighbours: first_round,
            ..SelectOptions::default()
        };
        select(&mut judge, None, &vector, &neighbours(codes), &opts).await
    }

    #[tokio::test]
    async fn a_candidate_that_fails_at_any_stage_is_its_status_not_the_querys_error() {
        let codes = [
            "blank",
            "degenerate",
            "good 100",
            "timeout",
            "panic",
            "small",
            "good 190",
        ];
        let sel = select_among(&codes, codes.len()).await;
        let statuses: Vec<&str> = sel.candidates.iter().map(|c| c.status.as_str()).collect();
        assert_eq!(
            statuses,
            [
                status::BLANK_RENDER,
                status::RENDER_FAILED,
                status::OK,
                "timeout",
                status::JUDGE_FAILED,
                status::NOT_COMPARED,
                status::OK
            ]
        );
        assert_eq!(sel.code, "good 190", "the closest good square wins");
        assert!(!sel.fell_back);
        let text = sel.explain();
        for (status, message) in [
            ("blank_render", "renders as a blank image"),
            ("render_failed", "no triangles"),
            ("timeout", "timed out after 10 s"),
            ("judge_failed", "judging failed"),
            ("not_compared", "image sizes differ"),
        ] {
            let line = text
                .lines()
                .find(|l| l.contains(status))
                .unwrap_or_else(|| panic!("no {status} row in\n{text}"));
            assert!(line.contains(message), "{line}");
        }
        assert!(text.lines().nth(1).unwrap().contains("CHOSEN"), "{text}");
    }

    #[tokio::test]
    async fn unrankable_first_round_falls_back_to_the_next_neighbour_that_renders() {
        let sel = select_among(&["blank", "timeout", "degenerate", "good 120"], 2).await;
        assert_eq!(sel.code, "good 120");
        assert!(sel.fell_back);
        assert_eq!(sel.candidates.len(), 4, "every fallback tried is listed");
        // When nothing renders, a program that builds a solid still answers.
        let sel = select_among(&["timeout", "blank", "degenerate"], 1).await;
        assert_eq!(sel.code, "blank");
        assert!(sel.fell_back && sel.chosen().unwrap().fit.is_none());
        let sel = select_among(&["timeout", "panic"], 1).await;
        assert_eq!(sel.chosen, None);
        assert!(sel.code.is_empty());
    }

    #[test]
    fn moves_are_relative_except_for_origins() {
        let e = Param::Extrude { solid: 0 };
        let o = Param::Origin { sketch: 0, axis: 1 };
        assert!((moved(&e, 0.5, 0.25, 1.0) - 0.625).abs() < 1e-12);
        assert!((moved(&e, 0.5, 0.25, -1.0) - 0.375).abs() < 1e-12);
        assert!((moved(&o, 0.0, 0.1, -1.0) + 0.1).abs() < 1e-12);
        assert!(priority(&e) < priority(&o));
    }
}
