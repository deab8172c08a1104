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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::tests::FakeRunner;
    use crate::select::RENDER_SIZE;
    use indexer::corpus::Split;
    use indexer::encoder::{ImageEncoder, PixelEncoder};
    use indexer::index::{build_index, BuildOptions};

    /// A png + jsonl corpus whose programs are the fake runner's language, the pixel index
    /// over it, and the query (the fake's render of `good 200`) with its vector.
    async fn fixture(dir: &std::path::Path) -> (Retriever, RgbImage, Vec<f32>) {
        let corpus = dir.join("corpus");
        std::fs::create_dir_all(&corpus).unwrap();
        let codes = ["good 100", "blank", "good 190", "timeout", "degenerate"];
        let mut jsonl = String::new();
        for (i, code) in codes.iter().enumerate() {
            // Each row's image differs (a bar at its own height) so the vectors are distinct.
            let img = RgbImage::from_fn(64, 64, |x, y| {
                let bar = (8 + 10 * i as u32..14 + 10 * i as u32).contains(&y) && x > 4;
                image::Rgb(if bar { [90; 3] } else { [255; 3] })
            });
            img.save(corpus.join(format!("r{i}.png"))).unwrap();
            jsonl.push_str(&format!("{{\"id\": \"r{i}\", \"code\": \"{code}\"}}\n"));
        }
        std::fs::write(corpus.join("rows.jsonl"), jsonl).unwrap();
        let encoder = PixelEncoder::new(16);
        let index = dir.join("index");
        let opts = BuildOptions::new(corpus, Split::Train, index.clone());
        build_index(&opts, &encoder, &indicatif::ProgressBar::hidden()).unwrap();
        let retriever = Retriever::load(&index, None).unwrap();
        let query = Arc::new(FakeRunner)
            .render("good 200".into(), RENDER_SIZE)
            .await
            .unwrap();
        let vector = encoder.encode(&query).unwrap();
        (retriever, query, vector)
    }

    #[tokio::test]
    async fn each_answerer_answers_through_the_trait_without_cadquery() {
        let tmp = tempfile::tempdir().unwrap();
        let (retriever, image, vector) = fixture(tmp.path()).await;
        let query = Query {
            image: &image,
            vector: &vector,
            embed_seconds: 0.25,
        };
        let answerers: Vec<Box<dyn Answerer + '_>> = vec![
            Box::new(Direct {
                retriever: &retriever,
                generator: None,
                mode: Mode::Retrieval,
                retrieve: 3,
                decode: DecodeOptions::default(),
            }),
            Box::new(Selecting {
                name: "rerank",
                retriever: &retriever,
                generator: None,
                runner: Arc::new(FakeRunner),
                opts: SelectOptions::default(),
            }),
        ];
        let direct = answerers[0].answer(query).await.unwrap();
        assert_eq!(answerers[0].name(), "retrieval");
        assert!(direct.selection.is_none());
        assert_eq!(direct.answer.neighbours.len(), 3);
        assert_eq!(direct.answer.code, direct.answer.neighbours[0].code);
        assert_eq!(direct.answer.embed_seconds, 0.25);

        let selected = answerers[1].answer(query).await.unwrap();
        assert_eq!(answerers[1].name(), "rerank");
        let sel = selected
            .selection
            .expect("a selection answer carries its selection");
        assert_eq!(
            selected.answer.code, "good 190",
            "the render closest to the query"
        );
        assert_eq!(
            selected.answer.neighbours.len(),
            5,
            "every row is retrieved"
        );
        assert_eq!(sel.candidates.len(), 5);
        assert!(!sel.fell_back);
        assert_eq!(
            selected.answer.mode,
            Mode::Retrieval,
            "no model: snippets only"
        );
    }

    #[tokio::test]
    async fn a_model_mode_without_a_model_is_the_querys_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (retriever, image, vector) = fixture(tmp.path()).await;
        let rag = Direct {
            retriever: &retriever,
            generator: None,
            mode: Mode::Rag,
            retrieve: 3,
            decode: DecodeOptions::default(),
        };
        let query = Query {
            image: &image,
            vector: &vector,
            embed_seconds: 0.0,
        };
        let e = rag.answer(query).await.unwrap_err();
        assert!(
            e.to_string().contains("needs a generator checkpoint"),
            "{e}"
        );
    }
}
