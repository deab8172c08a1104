//! The thing that answers one image: [`Answerer`], with one implementation per way of writing
//! the code. [`Direct`] takes one path (the top neighbour, the model alone, or the model with
//! the neighbours in its prompt); [`Selecting`] runs candidates in the sandbox and chooses by
//! render match (rerank, refine, the fitted search). `rag generate` and every `rag eval` mode
//! go through it, so a mode is a value, not a branch of the command line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use image::RgbImage;
use retriever::Retriever;

use crate::decode::DecodeOptions;
use crate::model::Generator;
use crate::pipeline::{answer_vector, Answer, Mode};
use crate::select::{self, select, CandidateRunner, RenderJudge, SelectOptions, Selection};
use crate::GeneratorError;

/// One query as an answerer sees it: the image and its vector under the index's encoder.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The image, RGB on white, any size.
    pub image: &'a RgbImage,
    /// Its embedding by the index's encoder.
    pub vector: &'a [f32],
    /// Seconds the embedding took (counted in the answer's latency).
    pub embed_seconds: f64,
}

/// An answer and, from the selecting answerers, the candidates and choice behind it.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The chosen code, its neighbours and timings.
    pub answer: Answer,
    /// The selection, for [`Selecting`] answers.
    pub selection: Option<Selection>,
}

/// The future of [`Answerer::answer`].
pub type AnswerFuture<'a> = Pin<Box<dyn Future<Output = Result<Answered, GeneratorError>> + 'a>>;

/// Image to code, one query at a time. An error is the query's (an image the index cannot
/// take, a model that cannot run these settings); a candidate that fails is not an error.
pub trait Answerer {
    /// The mode's name in reports.
    fn name(&self) -> &'static str;

    /// Answers `query`.
    fn answer<'a>(&'a self, query: Query<'a>) -> AnswerFuture<'a>;
}

/// One path, no execution: [`Mode::Retrieval`] answers with the top neighbour's code, the
/// model modes with what the generator writes.
pub struct Direct<'r> {
    /// The loaded index.
    pub retriever: &'r Retriever,
    /// The model, needed by the model modes.
    pub generator: Option<&'r Generator>,
    /// The path.
    pub mode: Mode,
    /// Neighbours retrieved (at least the model's k), so a checked answer can fall back.
    pub retrieve: usize,
    /// Decoding settings for the model modes.
    pub decode: DecodeOptions,
}

impl Answerer for Direct<'_> {
    fn name(&self) -> &'static str {
        self.mode.as_str()
    }

    fn answer<'a>(&'a self, query: Query<'a>) -> AnswerFuture<'a> {
        Box::pin(async move {
            let mut answer = answer_vector(
                self.retriever,
                self.generator,
                query.vector,
                self.mode,
                self.retrieve,
                &self.decode,
            )?;
            answer.embed_seconds = query.embed_seconds;
            Ok(Answered {
                answer,
                selection: None,
            })
        })
    }
}

/// Execution-guided selection: the model's outputs (when there is a model) and the top
/// snippets run in the sandbox, rendered and ranked against the query; `opts` says whether
/// the winner is refined and whether fitted programs join the candidates.
pub struct Selecting<'r> {
    /// The mode's name in reports (`rerank`, `refine`, `fit`).
    pub name: &'static str,
    /// The loaded index.
    pub retriever: &'r Retriever,
    /// The model, if any; without it the snippets are the only candidates.
    pub generator: Option<&'r Generator>,
    /// What executes and renders candidates (the worker pool; a fake in tests).
    pub runner: Arc<dyn CandidateRunner>,
    /// Candidates, refinement and fitted search.
    pub opts: SelectOptions,
}

impl Selecting<'_> {
    /// Answers `query` by selection, with the [`Selection`] behind the answer.
    pub async fn select(&self, query: Query<'_>) -> Result<(Answer, Selection), GeneratorError> {
        let k = self.generator.map_or(0, |g| g.model.config().layout.k);
        let retrieve = (self.opts.neighbours + select::FALLBACK_NEIGHBOURS)
            .max(k)
            .max(self.opts.fit.map_or(0, |f| f.structures));
        let set = self.retriever.search_vector(query.vector, retrieve, &[])?;
        let mut judge = RenderJudge::new(
            self.runner.clone(),
            self.retriever.encoder(),
            query.image,
            query.vector.to_vec(),
        );
        let sel = select(
            &mut judge,
            self.generator,
            query.vector,
            &set.neighbours,
            &self.opts,
        )
        .await;
        let answer = Answer {
            code: sel.code.clone(),
            mode: if self.generator.is_some() {
                Mode::Rag
            } else {
                Mode::Retrieval
            },
            neighbours: set.neighbours,
            generation: None,
            decode_error: None,
            embed_seconds: query.embed_seconds,
            search_seconds: set.search_seconds,
            decode_seconds: sel.decode_seconds + sel.check_seconds,
        };
        Ok((answer, sel))
    }
}

impl Answerer for Selecting<'_> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn answer<'a>(&'a self, query: Query<'a>) -> AnswerFuture<'a> {
        Box::pin(async move {
            let (answer, selection) = self.select(query).await?;
            Ok(Answered {
                answer,
                selection: Some(selection),
            })
        })
    }
}
