//! `rag dataset synth`: sample programs, execute them in the sandbox pool, reject what the real
//! dataset would not hold (failures, invalid B-reps, zero volume, parts too thin to see,
//! near-duplicates; parts of several disjoint bodies are kept, as the dataset holds them),
//! render the rest in the GenCAD style and write parquet shards.
//!
//! Deterministic for a seed: candidate i is always program i, and acceptance is decided in
//! candidate order however the executions interleave. Resumable: after every shard (and on
//! Ctrl-C) the shard is written atomically and then `synth-state.json`; a rerun reads the state,
//! reloads a partial shard, and goes on from the next candidate.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use evaluator::protocol::{Execution, Props};
use evaluator::render::{encode_png, render_part};
use evaluator::{Status, Wants, WorkerPool};
use serde::{Deserialize, Serialize};

use super::sampler::ProgramSampler;
use crate::corpus::{
    shard_name, write_shard, CorpusError, CorpusReader, CorpusRow, RowOrigin, Split,
};

/// Version of the sampler + filters; a state file from another version is refused on resume.
pub const SYNTH_VERSION: u32 = 7;

/// Shares of parts with 1, 2, 3 and 4 or more sketches that accepted rows keep to (the real
/// split's, [`crate::dialect::REAL`]): the near-duplicate filter drops mostly one-sketch
/// parts, more of them the bigger the corpus, so sampling weights alone cannot hold them.
const SKETCH_SHARES: [f64; 4] = [0.57, 0.19, 0.12, 0.12];

/// Rows a sketch-count class may run ahead of its share of the rows accepted so far.
const SKETCH_SLACK: f64 = 2.0;

/// Candidates rejected in a row after which the share quota gives way (a class the sampler
/// cannot supply any more must not stall synthesis).
const SKETCH_STALL: u64 = 1000;

/// Index into [`SKETCH_SHARES`] of a part with `sketches` sketches.
fn sketch_class(sketches: usize) -> usize {
    sketches.clamp(1, 4) - 1
}

/// Whether one more row of `class` would put it past its share of `accepted + 1` rows.
fn over_share(counts: &[usize; 4], class: usize, accepted: usize) -> bool {
    (counts[class] + 1) as f64 > SKETCH_SHARES[class] * (accepted + 1) as f64 + SKETCH_SLACK
}

/// The instruction text stored in every row's `prompt` column (ours; the dataset's own text is
/// not known to us, and no model reads this column).
pub const PROMPT: &str =
    "Generate the CadQuery code needed to create the CAD for the provided image. Just the code, no other words.";

const STATE_FILE: &str = "synth-state.json";

/// What to build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SynthConfig {
    /// Accepted rows over all splits.
    pub n: usize,
    pub seed: u64,
    /// Share of rows in the validation split.
    pub val_fraction: f64,
    /// Share of rows in the test split.
    pub test_fraction: f64,
    /// Rows per parquet shard.
    pub shard_rows: usize,
    /// Image side in pixels (GenCAD: 448).
    pub image_size: u32,
}

impl SynthConfig {
    /// Rows per split, in generation order (train, validation, test).
    pub fn split_sizes(&self) -> [(Split, usize); 3] {
        let test = (self.n as f64 * self.test_fraction).round() as usize;
        let val = (self.n as f64 * self.val_fraction).round() as usize;
        let train = self.n.saturating_sub(test + val);
        [
            (Split::Train, train),
            (Split::Validation, val),
            (Split::Test, test),
        ]
    }

    /// Split and index within the split of accepted row j.
    fn place(&self, j: usize) -> (Split, usize) {
        let mut j = j;
        for (split, size) in self.split_sizes() {
            if j < size {
                return (split, j);
            }
            j -= size;
        }
        (Split::Test, j)
    }
}

/// Errors that stop a synth run (a rejected candidate is not an error).
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error("{}: {message}", path.display())]
    State { path: PathBuf, message: String },
    #[error("bad configuration: {0}")]
    Config(String),
}

/// Progress kept on disk between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SynthState {
    version: u32,
    config: SynthConfig,
    /// First candidate not yet decided.
    next_candidate: u64,
    /// Rows accepted (and written) so far.
    accepted: usize,
    rejected: BTreeMap<String, usize>,
    /// Shape signatures of accepted rows (near-duplicate filter).
    signatures: Vec<u64>,
    /// Accepted rows with 1, 2, 3 and 4 or more sketches.
    #[serde(default)]
    sketch_counts: [usize; 4],
    /// Candidates rejected since the last accepted row.
    #[serde(default)]
    rejected_in_a_row: u64,
    complete: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct SynthReport {
    pub accepted: usize,
    pub candidates: u64,
    pub rejected: BTreeMap<String, usize>,
    /// Rows that were already on disk when this run started.
    pub resumed_rows: usize,
    pub seconds: f64,
    /// Accepted rows per second of this run.
    pub rows_per_second: f64,
    pub interrupted: bool,
}

/// The outcome of one candidate, computed off the main loop.
enum Verdict {
    Accept {
        code: String,
        png: Vec<u8>,
        signature: u64,
    },
    Reject(&'static str),
}

/// Builds (or resumes) a synthetic corpus in `out`.
pub async fn synthesize(
    pool: Arc<WorkerPool>,
    config: &SynthConfig,
    out: &Path,
    interrupt: Arc<AtomicBool>,
    show_progress: bool,
) -> Result<SynthReport, SynthError> {
    if config.n == 0 || config.shard_rows == 0 || config.image_size < 16 {
        return Err(SynthError::Config(
            "--n and the shard size must be positive and the image at least 16 px".into(),
        ));
    }
    if !(0.0..1.0).contains(&(config.val_fraction + config.test_fraction))
        || config.val_fraction < 0.0
        || config.test_fraction < 0.0
    {
        return Err(SynthError::Config(
            "validation + test fractions must be in [0, 1)".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| CorpusError::Io {
        path: out.to_path_buf(),
        source: e,
    })?;
    let state_path = out.join(STATE_FILE);
    let mut state = load_state(&state_path, config)?;
    let resumed_rows = state.accepted;
    let started = Instant::now();
    if state.complete {
        return Ok(report(&state, resumed_rows, started, false));
    }
    let mut seen: HashSet<u64> = state.signatures.iter().copied().collect();
    let mut buffer = reload_partial(out, config, state.accepted)?;

    let bar = progress_bar(config.n, state.accepted, show_progress);
    let sampler = ProgramSampler::new(config.seed);
    let window = pool.size() * 3;
    let mut in_flight: VecDeque<(usize, tokio::task::JoinHandle<Verdict>)> = VecDeque::new();
    let mut next_spawn = state.next_candidate;
    let mut interrupted = false;
    let run_started_accepted = state.accepted;

    while state.accepted < config.n {
        if interrupt.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        while in_flight.len() < window {
            let program = sampler.sample(next_spawn);
            let class = sketch_class(program.sketch_count());
            let code = program.code();
            let pool = pool.clone();
            let size = config.image_size;
            let judged = tokio::spawn(async move { judge(&pool, code, size).await });
            in_flight.push_back((class, judged));
            next_spawn += 1;
        }
        let Some((class, handle)) = in_flight.pop_front() else {
            break;
        };
        let verdict = tokio::select! {
            v = handle => v.unwrap_or(Verdict::Reject("task_panicked")),
            _ = wait_for(interrupt.clone()) => { interrupted = true; break; }
        };
        state.next_candidate += 1;
        state.rejected_in_a_row += 1;
        let over = state.rejected_in_a_row <= SKETCH_STALL
            && over_share(&state.sketch_counts, class, state.accepted);
        match verdict {
            Verdict::Reject(reason) => *state.rejected.entry(reason.to_string()).or_default() += 1,
            Verdict::Accept { signature, .. } if seen.contains(&signature) => {
                *state.rejected.entry("near_duplicate".into()).or_default() += 1;
            }
            Verdict::Accept { .. } if over => {
                *state.rejected.entry("sketch_share".into()).or_default() += 1;
            }
            Verdict::Accept {
                code,
                png,
                signature,
            } => {
                seen.insert(signature);
                state.signatures.push(signature);
                state.sketch_counts[class] += 1;
                state.rejected_in_a_row = 0;
                let j = state.accepted;
                let (split, index) = config.place(j);
                buffer.push(make_row(config, split, index, code, png));
                state.accepted += 1;
                bar.inc(1);
                let done_rate = (state.accepted - run_started_accepted) as f64
                    / started.elapsed().as_secs_f64().max(1e-9);
                bar.set_message(format!(
                    "{done_rate:.1} rows/s, {} rejected",
                    state.rejected.values().sum::<usize>()
                ));
                let shard_full = (index + 1) % config.shard_rows == 0;
                let split_done = index + 1 == split_size(config, split);
                if shard_full || split_done {
                    flush(out, config, &mut buffer, &state, &state_path, j)?;
                }
            }
        }
    }
    for (_, h) in in_flight {
        h.abort();
    }
    if interrupted && !buffer.is_empty() {
        flush(
            out,
            config,
            &mut buffer,
            &state,
            &state_path,
            state.accepted - 1,
        )?;
    } else {
        state.complete = state.accepted >= config.n;
        save_state(&state_path, &state)?;
    }
    bar.finish_and_clear();
    Ok(report(&state, resumed_rows, started, interrupted))
}

async fn wait_for(flag: Arc<AtomicBool>) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn split_size(config: &SynthConfig, split: Split) -> usize {
    config
        .split_sizes()
        .iter()
        .find(|(s, _)| *s == split)
        .map_or(0, |(_, n)| *n)
}

fn report(
    state: &SynthState,
    resumed_rows: usize,
    started: Instant,
    interrupted: bool,
) -> SynthReport {
    let seconds = started.elapsed().as_secs_f64();
    SynthReport {
        accepted: state.accepted,
        candidates: state.next_candidate,
        rejected: state.rejected.clone(),
        resumed_rows,
        seconds,
        rows_per_second: (state.accepted - resumed_rows) as f64 / seconds.max(1e-9),
        interrupted,
    }
}

fn progress_bar(n: usize, done: usize, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "synth {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(done as u64);
    bar.reset_eta();
    bar
}

/// Writes the shard holding accepted row `last_j` (whole or partial), then the state.
fn flush(
    out: &Path,
    config: &SynthConfig,
    buffer: &mut Vec<CorpusRow>,
    state: &SynthState,
    state_path: &Path,
    last_j: usize,
) -> Result<(), SynthError> {
    let (split, index) = config.place(last_j);
    let size = split_size(config, split);
    let shard = index / config.shard_rows;
    let total = size.div_ceil(config.shard_rows);
    write_shard(&out.join(shard_name(split, shard, total)), buffer)?;
    let mut saved = state.clone();
    saved.complete = saved.accepted >= config.n;
    save_state(state_path, &saved)?;
    if (index + 1) % config.shard_rows == 0 || index + 1 == size {
        buffer.clear();
    }
    Ok(())
}

/// Rows of the shard that row `accepted` (the next one) falls in, when that shard was written
/// partially by an interrupted run.
fn reload_partial(
    out: &Path,
    config: &SynthConfig,
    accepted: usize,
) -> Result<Vec<CorpusRow>, SynthError> {
    if accepted == 0 || accepted >= config.n {
        return Ok(Vec::new());
    }
    let (split, index) = config.place(accepted);
    let in_shard = index % config.shard_rows;
    if in_shard == 0 {
        return Ok(Vec::new());
    }
    let shard = index / config.shard_rows;
    let total = split_size(config, split).div_ceil(config.shard_rows);
    let file = out.join(shard_name(split, shard, total));
    let reader = CorpusReader::open(out)?;
    let mut rows = Vec::with_capacity(in_shard);
    for row in reader.rows(split) {
        let row = row?;
        if row.origin.file == file {
            rows.push(row);
        }
    }
    if rows.len() != in_shard {
        return Err(SynthError::State {
            path: file,
            message: format!(
                "holds {} rows but {STATE_FILE} says {in_shard}; delete the folder and start again",
                rows.len()
            ),
        });
    }
    Ok(rows)
}

/// The synth version and settings that wrote the corpus in `dir`, if it holds a readable
/// state file; lets a caller that owns the folder (the demo) start over after the sampler or
/// its own settings changed, where a resume would be refused.
pub fn written_settings(dir: &Path) -> Option<(u32, SynthConfig)> {
    let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
    serde_json::from_str::<SynthState>(&text)
        .ok()
        .map(|s| (s.version, s.config))
}

fn load_state(path: &Path, config: &SynthConfig) -> Result<SynthState, SynthError> {
    let fresh = SynthState {
        version: SYNTH_VERSION,
        config: config.clone(),
        next_candidate: 0,
        accepted: 0,
        rejected: BTreeMap::new(),
        signatures: Vec::new(),
        sketch_counts: [0; 4],
        rejected_in_a_row: 0,
        complete: false,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("."));
            let has_shards = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.path().extension().is_some_and(|x| x == "parquet"))
                })
                .unwrap_or(false);
            if has_shards {
                return Err(SynthError::State {
                    path: path.to_path_buf(),
                    message: "missing, but the folder already holds parquet shards; synth will not mix corpora (choose an empty --out)".into(),
                });
            }
            return Ok(fresh);
        }
        Err(e) => {
            return Err(SynthError::State {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    let state: SynthState = serde_json::from_str(&text).map_err(|e| SynthError::State {
        path: path.to_path_buf(),
        message: format!("not a synth state file: {e}"),
    })?;
    if state.version != SYNTH_VERSION {
        return Err(SynthError::State {
            path: path.to_path_buf(),
            message: format!("written by synth version {}, this is version {SYNTH_VERSION}; choose an empty --out", state.version),
        });
    }
    if state.config != *config {
        return Err(SynthError::State {
            path: path.to_path_buf(),
            message: format!(
                "the corpus here was started with {:?}; resume with the same settings or choose an empty --out",
                state.config
            ),
        });
    }
    Ok(state)
}

fn save_state(path: &Path, state: &SynthState) -> Result<(), SynthError> {
    let tmp = path.with_extension("json.tmp");
    let err = |e: std::io::Error| SynthError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let text = serde_json::to_string(state).map_err(|e| SynthError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

fn make_row(
    config: &SynthConfig,
    split: Split,
    index: usize,
    code: String,
    png: Vec<u8>,
) -> CorpusRow {
    let id = format!("syn{}_{}_{index:07}", config.seed, split.as_str());
    CorpusRow {
        token_count: token_count(&code) as i64,
        image_path: Some(format!("{id}_0.png")),
        deepcad_id: id,
        cadquery: code,
        image_png: png,
        prompt: PROMPT.to_string(),
        hundred_subset: split == Split::Test && index < 100,
        origin: RowOrigin {
            file: PathBuf::new(),
            row: index,
        },
    }
}

/// Lexical tokens of the code (identifiers, numbers, punctuation): our stand-in for the
/// dataset's `token_count`, whose tokenizer is not public.
pub fn token_count(code: &str) -> usize {
    let b = code.as_bytes();
    let (mut i, mut n) = (0, 0);
    let digits = |i: &mut usize| {
        while *i < b.len() && (b[*i].is_ascii_digit() || b[*i] == b'.') {
            *i += 1;
        }
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        n += 1;
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            digits(&mut i);
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                i += 1;
                if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
                    i += 1;
                }
                digits(&mut i);
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    n
}

/// Executes, filters and renders one candidate.
async fn judge(pool: &WorkerPool, code: String, size: u32) -> Verdict {
    let exec = pool.exec(&code, Wants::RENDER).await;
    let (props, mesh, edges) = match check(exec) {
        Ok(x) => x,
        Err(reason) => return Verdict::Reject(reason),
    };
    let signature = shape_signature(
        props,
        edges
            .polylines
            .iter()
            .zip(&edges.seam)
            .filter(|(_, s)| !**s)
            .count(),
    );
    let rendered = tokio::task::spawn_blocking(move || -> Option<Vec<u8>> {
        encode_png(render_part(&mesh, &edges, size).ok()?).ok()
    })
    .await;
    match rendered {
        Ok(Some(png)) => Verdict::Accept {
            code,
            png,
            signature,
        },
        _ => Verdict::Reject("render_failed"),
    }
}

type Checked = (Props, evaluator::protocol::Mesh, evaluator::protocol::Edges);

/// The dataset-level filters on one execution.
fn check(exec: Execution) -> Result<Checked, &'static str> {
    if exec.status != Status::Ok {
        return Err(match exec.status {
            Status::Timeout => "timeout",
            Status::NoSolid => "no_solid",
            Status::Syntax | Status::Rejected => "not_dialect",
            _ => "exec_failed",
        });
    }
    let (Some(props), Some(mesh), Some(edges)) = (exec.props, exec.mesh, exec.edges) else {
        return Err("exec_failed");
    };
    if props.solid_count == 0 {
        return Err("no_solid");
    }
    if !props.valid {
        return Err("invalid_brep");
    }
    let dims = [
        props.bbox[3] - props.bbox[0],
        props.bbox[4] - props.bbox[1],
        props.bbox[5] - props.bbox[2],
    ];
    let big = dims.iter().copied().fold(0.0, f64::max);
    if props.volume <= 1e-6 * big.powi(3).max(1e-12) || mesh.triangles.is_empty() {
        return Err("zero_volume");
    }
    if thinnest_pixels(dims) < MIN_THICKNESS_PX {
        return Err("sliver");
    }
    Ok((props, mesh, edges))
}

/// Parts thinner than this many pixels in the 448 render are rejected as slivers (DeepCAD's
/// thinnest sheets, 2/128 on a full-size part, are ~2.7 px and stay).
const MIN_THICKNESS_PX: f64 = 2.0;

/// The thinnest box dimension in pixels of a 448 render (the renderer's framing rule).
fn thinnest_pixels(dims: [f64; 3]) -> f64 {
    use evaluator::render::{fit_scale, GENCAD_SIZE, RIGHT, UP};
    let w: f64 = (0..3).map(|i| (dims[i] * RIGHT[i]).abs()).sum();
    let h: f64 = (0..3).map(|i| (dims[i] * UP[i]).abs()).sum();
    let scale = fit_scale(w.max(1e-12), h.max(1e-12), GENCAD_SIZE);
    dims.iter().copied().fold(f64::INFINITY, f64::min) * scale
}

/// Parts whose renders would look the same: box proportions to 1/128 (about 3 px of a 448
/// render), fill ratio to 1/200 and the number of drawn edges. The render frames the box, so
/// absolute size does not count. (A coarser key, 1/32, rejected simple parts ever more often
/// as a corpus grew, which skewed a 20k corpus towards multi-sketch parts.)
fn shape_signature(props: Props, drawn_edges: usize) -> u64 {
    let d = [
        props.bbox[3] - props.bbox[0],
        props.bbox[4] - props.bbox[1],
        props.bbox[5] - props.bbox[2],
    ];
    let m = d.iter().copied().fold(1e-12, f64::max);
    let fill = props.volume / (d[0] * d[1] * d[2]).max(1e-12);
    let key = (
        d.map(|x| (x / m * 128.0).round() as i64),
        (fill * 200.0).round() as i64,
        drawn_edges,
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_share_quota_holds_every_sketch_class_to_its_share() {
        // Candidates arrive with too few one-sketch parts (as after the near-duplicate
        // filter of a big corpus): 40 / 30 / 15 / 15.
        let arrivals = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 0, 0, 0, 0, 1, 1, 1, 2, 3];
        let mut counts = [0usize; 4];
        let mut accepted = 0;
        for i in 0..20_000 {
            let class = arrivals[i % arrivals.len()];
            if !over_share(&counts, class, accepted) {
                counts[class] += 1;
                accepted += 1;
            }
        }
        assert!(accepted > 10_000, "{accepted}");
        for (c, share) in SKETCH_SHARES.iter().enumerate() {
            let got = counts[c] as f64 / accepted as f64;
            assert!((got - share).abs() < 0.005, "class {c}: {got} vs {share}");
        }
        assert_eq!(sketch_class(1), 0);
        assert_eq!(sketch_class(4), 3);
        assert_eq!(sketch_class(8), 3);
    }

    #[test]
    fn splits_partition_the_rows() {
        let c = SynthConfig {
            n: 100,
            seed: 1,
            val_fraction: 0.1,
            test_fraction: 0.2,
            shard_rows: 7,
            image_size: 448,
        };
        assert_eq!(c.split_sizes().map(|(_, n)| n), [70, 10, 20]);
        assert_eq!(c.place(0), (Split::Train, 0));
        assert_eq!(c.place(69), (Split::Train, 69));
        assert_eq!(c.place(70), (Split::Validation, 0));
        assert_eq!(c.place(80), (Split::Test, 0));
        assert_eq!(c.place(99), (Split::Test, 19));
    }

    #[test]
    fn tokens_split_names_numbers_and_punctuation() {
        assert_eq!(token_count("loop0=wp.moveTo(1.5, -0.25)"), 11);
        assert_eq!(token_count("x = 6.123e-17"), 3);
    }

    fn execution(solid_count: u32, valid: bool, bbox: [f64; 6], volume: f64) -> Execution {
        let mut e = Execution::failed(Status::Ok, "");
        e.props = Some(Props {
            volume,
            center: [0.0; 3],
            inertia: [0.0; 9],
            bbox,
            solid_count,
            valid,
            r_g: None,
            mesh_axes: None,
        });
        e.mesh = Some(evaluator::protocol::Mesh {
            vertices: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            triangles: vec![[0, 1, 2]],
        });
        e.edges = Some(evaluator::protocol::Edges::default());
        e
    }

    #[test]
    fn filters_reject_what_the_dataset_would_not_hold() {
        let cube = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        assert!(check(execution(1, true, cube, 1.0)).is_ok());
        // Disjoint bodies are kept: the dataset holds such parts.
        assert!(check(execution(2, true, cube, 1.0)).is_ok());
        assert_eq!(check(execution(0, true, cube, 1.0)).err(), Some("no_solid"));
        assert_eq!(
            check(execution(1, false, cube, 1.0)).err(),
            Some("invalid_brep")
        );
        assert_eq!(
            check(execution(1, true, cube, 0.0)).err(),
            Some("zero_volume")
        );
        let foil = [0.0, 0.0, 0.0, 1.0, 1.0, 0.002];
        assert_eq!(check(execution(1, true, foil, 0.002)).err(), Some("sliver"));
        // A sheet two steps of the 1/128 grid thick on a part of DeepCAD's full size shows.
        let sheet = [-0.75, -0.45, 0.0, 0.75, 0.45, 2.0 / 128.0];
        assert!(check(execution(1, true, sheet, 0.02)).is_ok());
        let failed = Execution::failed(Status::Timeout, "killed");
        assert_eq!(check(failed).err(), Some("timeout"));
    }

    #[test]
    fn signatures_ignore_size_but_not_shape() {
        let props = |s: f64, fill: f64| {
            let e = execution(
                1,
                true,
                [0.0, 0.0, 0.0, s, 2.0 * s, 0.5 * s],
                fill * s * s * s,
            );
            e.props.unwrap()
        };
        assert_eq!(
            shape_signature(props(1.0, 0.9), 12),
            shape_signature(props(3.0, 0.9), 12)
        );
        assert_ne!(
            shape_signature(props(1.0, 0.9), 12),
            shape_signature(props(1.0, 0.5), 12)
        );
        assert_ne!(
            shape_signature(props(1.0, 0.9), 12),
            shape_signature(props(1.0, 0.9), 13)
        );
    }

    #[test]
    fn a_tube_is_not_a_near_duplicate_of_the_rod_of_its_box() {
        // Same box, same drawn edges: a rod and tubes of walls 3 and 2 grid units of 47.
        let box_of = |fill: f64| execution(1, true, [0.0, 0.0, 0.0, 1.0, 1.0, 3.0], fill * 3.0);
        let disc = std::f64::consts::FRAC_PI_4;
        let fills = [
            disc,
            disc * (1.0 - (44.0f64 / 47.0).powi(2)),
            disc * (1.0 - (45.0f64 / 47.0).powi(2)),
        ];
        let keys: HashSet<u64> = fills
            .iter()
            .map(|f| shape_signature(box_of(*f).props.unwrap(), 6))
            .collect();
        assert_eq!(keys.len(), 3);
    }

    #[test]
    fn slivers_are_measured_in_pixels() {
        assert!(thinnest_pixels([1.0, 1.0, 1.0 / 512.0]) < MIN_THICKNESS_PX);
        assert!(thinnest_pixels([1.0, 1.0, 0.1]) > MIN_THICKNESS_PX);
    }
}
