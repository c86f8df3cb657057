//! One pipeline on one engine: each cell (row × model × run) is asked, its answer goes
//! through the optional `postprocess` command, then to the judge, as soon as it
//! arrives. Answers and judgements are two sources of each experiment on the shared
//! engine, so they share its keys, limits and ledger, and the judge runs under its
//! own model's limits while answers are still coming.
//!
//! Each cell runs as one task holding a permit of its experiment, so what is in memory
//! is bounded by the permits (about the engine's concurrency), never by the rows ×
//! runs. A re-run reads the record ([`crate::record::scan`]) and does only what is
//! missing, stage by stage.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use volley_core::engine::{Engine, Source, SourceSpec, StopReason};
use volley_core::input::job::{Fingerprint, Job};
use volley_core::provider::routes;
use volley_core::store::Outcome;
use volley_core::store::claim::OutputLock;

use crate::dataset::{DatasetError, Row, Rows};
use crate::plan::{ExperimentPlan, JudgeSpec, ModelSpec};
use crate::postprocess::Postprocessor;
use crate::prompt::{Prompt, PromptError};
use crate::record::{self, Cell, Done, JudgeTag, RecordError, RecordHandle, Recorder, Stage};
use crate::run_info;

/// The path every experiment request is sent to.
const CHAT: &str = "/chat/completions";

/// Why a run could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{path}:{line}: {source}")]
    Prompt {
        path: String,
        line: u64,
        source: PromptError,
    },
    #[error(transparent)]
    Template(PromptError),
    #[error("experiment \"{experiment}\": {message}")]
    Plan { experiment: String, message: String },
    #[error("{0}")]
    Locked(String),
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory.
    pub dir: PathBuf,
    /// Cells of an experiment in the pipeline at once when it sets no `concurrency`.
    pub cells_in_flight: usize,
    /// Whether answers may be requested (`false` for `rejudge`: grade what is there).
    pub ask: bool,
    /// Environment variables a `postprocess` command must not see (the API keys).
    pub hidden_env: Vec<String>,
    /// The configuration file, remembered in `run.json` for `rejudge`.
    pub config: Option<PathBuf>,
    /// Where the run says how far it is.
    pub progress: Arc<Progress>,
}

/// How far a run is, read at any time (the progress display): cells are rows × models
/// × runs of the experiments run.
#[derive(Debug, Default)]
pub struct Progress {
    /// Every cell of the run, done or not.
    pub cells: AtomicU64,
    /// Cells with nothing left to do, those an earlier run finished included.
    pub done: AtomicU64,
    /// Of `done`, the cells an earlier run finished (this run found them so): a pace
    /// counts the others.
    pub resumed: AtomicU64,
    /// Answers received in this run (failures included).
    pub answered: AtomicU64,
    /// Judgements received in this run (failures included).
    pub judged: AtomicU64,
}

impl Progress {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn read(&self) -> ProgressCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ProgressCounts {
            cells: get(&self.cells),
            done: get(&self.done),
            resumed: get(&self.resumed),
            answered: get(&self.answered),
            judged: get(&self.judged),
        }
    }
}

/// [`Progress`] read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgressCounts {
    pub cells: u64,
    pub done: u64,
    pub resumed: u64,
    pub answered: u64,
    pub judged: u64,
}

impl ProgressCounts {
    /// Cells this run finished.
    pub fn done_now(&self) -> u64 {
        self.done.saturating_sub(self.resumed)
    }
}

/// How a run ended.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    /// Cells with a stage left undone (interrupted, a cost cap, no key left): a re-run
    /// does them.
    pub unfinished: u64,
    /// Each source that did not complete, and why.
    pub stopped: Vec<(String, StopReason)>,
}

/// Checks every experiment before anything is sent: each dataset is read whole, and
/// each row's prompt rendered, so a bad row or a missing field is an error naming the
/// file and line instead of a thousand requests paid for nothing. Returns the number
/// of rows of each experiment's datasets.
pub fn validate(experiments: &[ExperimentPlan]) -> Result<Vec<Vec<u64>>, PipelineError> {
    experiments
        .iter()
        .map(|plan| {
            let prompt = Prompt::new(&plan.prompt).map_err(PipelineError::Template)?;
            let judge = match &plan.judge {
                Some(j) => Some(Prompt::new(&j.prompt).map_err(PipelineError::Template)?),
                None => None,
            };
            plan.datasets
                .iter()
                .map(|dataset| {
                    let mut rows = 0;
                    for row in Rows::open(dataset)? {
                        let row = row?;
                        let at = |source| PipelineError::Prompt {
                            path: dataset.path.display().to_string(),
                            line: row.line,
                            source,
                        };
                        let cell = Cell {
                            experiment: plan.name.as_str().into(),
                            dataset: dataset.name.as_str().into(),
                            item: row.id.as_str().into(),
                            model: "".into(),
                            run: 0,
                        };
                        prompt
                            .messages(&answer_context(&row, &cell), "the row")
                            .map_err(at)?;
                        if let Some(judge) = &judge {
                            // The answer and the command's output are not known yet:
                            // only the row's part of the judge's template is checked.
                            match judge.messages(&judge_context(&row, &cell, "", None), "the row") {
                                Err(PromptError::Missing { field, .. })
                                    if plan.postprocess.is_some()
                                        && (field == "output" || field.starts_with("output.")) => {}
                                other => {
                                    other.map_err(at)?;
                                }
                            }
                        }
                        rows += 1;
                    }
                    Ok(rows)
                })
                .collect()
        })
        .collect()
}

/// The variables of an answer's prompt: the row's fields, and `row`, `item`, `run`,
/// `model` unless the row has fields of those names.
fn answer_context(row: &Row, cell: &Cell) -> Map<String, Value> {
    let mut context = row.fields.clone();
    let extra = [
        ("row", Value::Object(row.fields.clone())),
        ("item", Value::String(row.id.clone())),
        ("run", Value::from(cell.run)),
        ("model", Value::String(cell.model.to_string())),
    ];
    for (name, value) in extra {
        context.entry(name).or_insert(value);
    }
    context
}

/// The variables of a judge's template: `row` (the row's fields), `answer` (the
/// model's reply), `output` (the postprocess command's, if any), `item`, `run`,
/// `model`. The row's fields are not at the top level here: a dataset's own `answer`
/// field (the expected one) would hide the model's.
fn judge_context(
    row: &Row,
    cell: &Cell,
    answer: &str,
    output: Option<&Value>,
) -> Map<String, Value> {
    let mut context = Map::new();
    context.insert("row".into(), Value::Object(row.fields.clone()));
    context.insert("answer".into(), Value::String(answer.to_owned()));
    if let Some(output) = output {
        context.insert("output".into(), output.clone());
    }
    context.insert("item".into(), Value::String(row.id.clone()));
    context.insert("run".into(), Value::from(cell.run));
    context.insert("model".into(), Value::String(cell.model.to_string()));
    context
}

/// A request body for `model`: its id, the messages, its configured fields, and
/// `seed` = the run index unless the model sets its own (runs of a model are then
/// distinct draws where the provider honours a seed).
fn request_body(model: &ModelSpec, messages: Vec<Value>, seed: Option<u32>) -> Bytes {
    let mut body = Map::new();
    body.insert("messages".into(), Value::Array(messages));
    routes::fill(&mut body, &model.id, &model.body);
    if let Some(seed) = seed {
        body.entry("seed").or_insert_with(|| Value::from(seed));
    }
    Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default())
}

fn job(custom_id: String, model: &ModelSpec, body: Bytes) -> Job {
    Job {
        fingerprint: Fingerprint::of(CHAT, &body),
        custom_id: custom_id.into(),
        line: 0,
        path: CHAT.into(),
        body,
        model: Some(model.id.as_str().into()),
        upstream: model.upstream,
        tokens: Default::default(),
        waiting: None,
    }
}

/// One experiment while it runs: its plan compiled, its sources, what is done.
struct Live {
    plan: ExperimentPlan,
    prompt: Prompt,
    judge: Option<(JudgeSpec, Prompt, String)>,
    postprocess: Option<Postprocessor>,
    engine: Engine,
    answers: Source,
    judgements: Source,
    dir: PathBuf,
    done: Arc<Done>,
    record: RecordHandle,
    ask: bool,
    unfinished: AtomicU64,
    progress: Arc<Progress>,
}

/// Runs `experiments` on `engine`, recording into `options.dir` and resuming what an
/// earlier run of it left. `cancel` stops admitting (Ctrl-C); what is left is for a
/// re-run.
pub async fn run(
    engine: &Engine,
    experiments: &[ExperimentPlan],
    options: &RunOptions,
    cancel: &CancellationToken,
) -> Result<RunEnd, PipelineError> {
    let rows = validate(experiments)?;
    let cells: u64 = experiments
        .iter()
        .zip(&rows)
        .map(|(plan, rows)| {
            rows.iter().sum::<u64>() * plan.models.len() as u64 * u64::from(plan.runs)
        })
        .sum();
    options.progress.cells.store(cells, Ordering::Relaxed);
    // One run at a time in a directory: two would ask and pay for the same cells.
    std::fs::create_dir_all(&options.dir).map_err(|source| RecordError::Io {
        path: options.dir.display().to_string(),
        source,
    })?;
    let lock = OutputLock::acquire(&options.dir.join(record::ANSWERS))
        .map_err(|e| PipelineError::Locked(e.to_string()))?;
    run_info::update(&options.dir, experiments, &rows, options.config.as_deref())?;
    let done = Arc::new(record::scan(&options.dir)?);
    let recorder = Recorder::open(&options.dir)?;
    let mut lives = Vec::new();
    for plan in experiments {
        lives.push(Arc::new(start(
            engine,
            plan,
            options,
            &done,
            recorder.handle(),
        )?));
    }
    let stop_all = {
        let lives = lives.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            for live in &lives {
                live.answers.cancel();
                live.judgements.cancel();
            }
        })
    };
    let feeds = lives.iter().map(|live| {
        let permits = live
            .plan
            .concurrency
            .unwrap_or(options.cells_in_flight)
            .max(1);
        feed(
            live.clone(),
            Arc::new(Semaphore::new(permits)),
            cancel.clone(),
        )
    });
    let fed: Result<Vec<()>, PipelineError> = futures_util::future::join_all(feeds)
        .await
        .into_iter()
        .collect();
    stop_all.abort();
    // Its copies of the experiments go with it.
    let _ = stop_all.await;
    let mut end = RunEnd::default();
    for live in &lives {
        end.unfinished += live.unfinished.load(Ordering::Relaxed);
        for source in [&live.answers, &live.judgements] {
            let why = source.finish().await;
            if why != StopReason::Completed {
                end.stopped.push((source.name().to_owned(), why));
            }
        }
    }
    // Every handle to the writer must be gone before it is joined.
    drop(lives);
    tokio::task::spawn_blocking(move || recorder.finish())
        .await
        .map_err(|e| RecordError::Io {
            path: options.dir.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })??;
    drop(lock);
    fed?;
    Ok(end)
}

fn start(
    engine: &Engine,
    plan: &ExperimentPlan,
    options: &RunOptions,
    done: &Arc<Done>,
    record: RecordHandle,
) -> Result<Live, PipelineError> {
    let prompt = Prompt::new(&plan.prompt).map_err(PipelineError::Template)?;
    let judge = match &plan.judge {
        Some(spec) => Some((
            spec.clone(),
            Prompt::new(&spec.prompt).map_err(PipelineError::Template)?,
            spec.identity(),
        )),
        None => None,
    };
    let answers = engine.open(SourceSpec {
        max_cost: plan.max_cost_usd,
        max_cost_name: "max_cost_usd",
        check: plan.check.clone(),
        ..SourceSpec::new(plan.name.clone())
    });
    let judgements = engine.open(SourceSpec {
        check: judge
            .as_ref()
            .map(|(spec, _, _)| Arc::new(spec.verdict.check())),
        ..SourceSpec::new(format!("{}/judge", plan.name))
    });
    Ok(Live {
        plan: plan.clone(),
        prompt,
        judge,
        postprocess: plan
            .postprocess
            .clone()
            .map(|spec| Postprocessor::new(spec, options.hidden_env.clone())),
        engine: engine.clone(),
        answers,
        judgements,
        dir: options.dir.clone(),
        done: done.clone(),
        record,
        ask: options.ask,
        unfinished: AtomicU64::new(0),
        progress: options.progress.clone(),
    })
}

/// Streams the experiment's rows and starts a task per cell that has work left.
async fn feed(
    live: Arc<Live>,
    permits: Arc<Semaphore>,
    cancel: CancellationToken,
) -> Result<(), PipelineError> {
    let mut tasks = JoinSet::new();
    let fed = feed_rows(&live, &permits, &cancel, &mut tasks).await;
    if fed.is_err() {
        // The rows cannot be read any more (the file changed since it was checked):
        // no more cells, but those started finish and are recorded.
        live.answers.cancel();
        live.judgements.cancel();
    }
    while let Some(joined) = tasks.join_next().await {
        reaped(&live, joined);
    }
    fed
}

/// A cell task that panicked (a bug) leaves its cell for a re-run, said.
fn reaped(live: &Live, joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        tracing::error!("a cell of {} ended abnormally: {e}", live.plan.name);
        live.unfinished.fetch_add(1, Ordering::Relaxed);
    }
}

async fn feed_rows(
    live: &Arc<Live>,
    permits: &Arc<Semaphore>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(), PipelineError> {
    for dataset in &live.plan.datasets {
        for row in Rows::open(dataset)? {
            let row = Arc::new(row?);
            for model in 0..live.plan.models.len() {
                for run in 0..live.plan.runs {
                    let cell = Cell {
                        experiment: live.plan.name.as_str().into(),
                        dataset: dataset.name.as_str().into(),
                        item: row.id.as_str().into(),
                        model: live.plan.models[model].name.as_str().into(),
                        run,
                    };
                    if !live.has_work(&cell) {
                        Progress::add(&live.progress.resumed);
                        Progress::add(&live.progress.done);
                        continue;
                    }
                    if cancel.is_cancelled() {
                        live.unfinished.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Reap finished cells as we go, so the set stays small.
                    while let Some(joined) = tasks.try_join_next() {
                        reaped(live, joined);
                    }
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        continue;
                    };
                    let (live, row) = (live.clone(), row.clone());
                    tasks.spawn(async move {
                        let finished = live.cell(cell, model, row, permit).await;
                        if finished {
                            Progress::add(&live.progress.done);
                        } else {
                            live.unfinished.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
        }
    }
    Ok(())
}

impl Live {
    /// Whether any stage of `cell` is left to do.
    fn has_work(&self, cell: &Cell) -> bool {
        let hash = cell.hash();
        if self.done.answer_failed.contains_hash(hash) {
            return false;
        }
        if !self.done.answered.contains_key(hash) {
            return true;
        }
        if self.done.postprocess_failed.contains_hash(hash) {
            return false;
        }
        if self.postprocess.is_some() && !self.done.postprocessed.contains_key(hash) {
            return true;
        }
        match &self.judge {
            Some((_, _, id)) => !self.done.judged.contains_hash(cell.judged_hash(id)),
            None => false,
        }
    }

    /// Takes `cell` through every stage it has left; false if one was left undone.
    async fn cell(
        &self,
        cell: Cell,
        model: usize,
        row: Arc<Row>,
        _permit: OwnedSemaphorePermit,
    ) -> bool {
        let hash = cell.hash();
        let answer = match self.done.answered.get(hash) {
            Some(&offset) => match record::answer_at(&self.dir, offset) {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!("cannot read the answer of {}: {e}", cell.custom_id());
                    return false;
                }
            },
            None if !self.ask => return true,
            None => match self.ask_model(&cell, model, &row).await {
                Some(Ok(text)) => text,
                Some(Err(())) => return true,
                None => return false,
            },
        };
        let output = match &self.postprocess {
            None => None,
            Some(pp) => match self.done.postprocessed.get(hash) {
                Some(&offset) => match record::output_at(&self.dir, offset) {
                    Ok(output) => Some(output),
                    Err(e) => {
                        tracing::warn!("cannot read the output of {}: {e}", cell.custom_id());
                        return false;
                    }
                },
                None => {
                    let input = serde_json::json!({
                        "experiment": &*cell.experiment, "dataset": &*cell.dataset,
                        "item": &*cell.item, "model": &*cell.model, "run": cell.run,
                        "row": &row.fields, "answer": &answer,
                    });
                    let (result, took) = pp.run(&input).await;
                    let ms = took.as_secs_f64() * 1000.0;
                    match result {
                        Ok(output) => {
                            if !self.record.postprocessed(&cell, &output, ms) {
                                self.writer_failed();
                                return false;
                            }
                            Some(output)
                        }
                        Err(failure) => {
                            self.record.failed(
                                &cell,
                                Stage::Postprocess,
                                None,
                                failure.code,
                                &failure.message,
                                ms,
                            );
                            return true;
                        }
                    }
                }
            },
        };
        match &self.judge {
            Some((spec, prompt, id)) if !self.done.judged.contains_hash(cell.judged_hash(id)) => {
                self.ask_judge(&cell, &row, spec, prompt, id, &answer, output.as_ref())
                    .await
            }
            _ => true,
        }
    }

    /// Asks the model; `None` if the request was left unfinished, `Err` if it failed
    /// for good (recorded).
    async fn ask_model(&self, cell: &Cell, model: usize, row: &Row) -> Option<Result<String, ()>> {
        let spec = &self.plan.models[model];
        // Validated before the run: every row renders.
        let messages = self
            .prompt
            .messages(&answer_context(row, cell), "the row")
            .ok()?;
        let body = request_body(spec, messages, Some(cell.run));
        let outcome = self
            .send(&self.answers, job(cell.custom_id(), spec, body))
            .await?;
        if !self.record.answer(cell, &outcome) {
            self.writer_failed();
            return None;
        }
        Progress::add(&self.progress.answered);
        Some(match (&outcome.error, &outcome.response) {
            (None, Some(response)) => Ok(record::answer_text(&response.body)),
            _ => Err(()),
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn ask_judge(
        &self,
        cell: &Cell,
        row: &Row,
        spec: &JudgeSpec,
        prompt: &Prompt,
        id: &str,
        answer: &str,
        output: Option<&Value>,
    ) -> bool {
        let tag = JudgeTag {
            id,
            judge_model: &spec.model.name,
        };
        let messages = match prompt.messages(
            &judge_context(row, cell, answer, output),
            "the row, the answer or the output",
        ) {
            Ok(messages) => messages,
            Err(e) => {
                self.record.failed(
                    cell,
                    Stage::Judge,
                    Some(&tag),
                    "judge_template",
                    &e.to_string(),
                    0.0,
                );
                return true;
            }
        };
        let body = request_body(&spec.model, messages, None);
        let custom_id = format!("{}/judge/{id}", cell.custom_id());
        let Some(outcome) = self
            .send(&self.judgements, job(custom_id, &spec.model, body))
            .await
        else {
            return false;
        };
        let verdict = outcome
            .response
            .as_ref()
            .filter(|_| outcome.error.is_none())
            .and_then(|r| spec.verdict.read(&record::answer_text(&r.body)));
        if !self.record.judgement(cell, &tag, &outcome, verdict) {
            self.writer_failed();
            return false;
        }
        Progress::add(&self.progress.judged);
        true
    }

    /// The record can keep no more (a disk error, said when it closes): sending more
    /// would pay for answers that cannot be kept.
    fn writer_failed(&self) {
        self.answers.cancel();
        self.judgements.cancel();
    }

    /// Sends `job` through `source`; `None` if it was left unfinished (the source
    /// stopped).
    async fn send(&self, source: &Source, job: Job) -> Option<Outcome> {
        let ticket = self.engine.submit(source, job).await.ok()?;
        ticket.await.ok()
    }
}
