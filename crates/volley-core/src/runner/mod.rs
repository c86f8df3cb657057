//! One `volley run`, end to end: read and check the input, resume from the output
//! files, submit the lines to send as one source of an engine, and close the files.
//! The engine knows nothing of files: this layer is reader → submit → store.
//!
//! The input is read twice. The first pass ([`scan`]) validates every line and decides,
//! per line, whether it is sent, skipped (blank, finished before, outside
//! `--offset`/`--limit`) or invalid, so that input errors and requests that changed
//! since they were answered are reported before any request is sent or any file
//! changed, and the total is known for the progress bar. The second pass ([`feed`])
//! submits the lines to send, waiting for the engine to admit each, so memory is
//! bounded by concurrency, not by file size.
//!
//! A request is "the same" across runs when its custom_id and its [`Fingerprint`](crate::input::job::Fingerprint) (the
//! route and body after defaults) are: a finished custom_id whose request changed is
//! neither kept nor re-sent silently ([`ChangedPolicy`]).

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use crate::accounting::pricing::Pricing;
use crate::accounting::usage::Usage;
use crate::engine::{Engine, EngineConfig, Source, SourceSpec, StopReason};
use crate::input::batch::LineDefaults;
use crate::input::ids::IdMap;
use crate::limits::lane::LaneView;
use crate::limits::lanes::{LaneLayout, LanePool};
use crate::observe::events::{Event, EventBus};
use crate::provider::classify::Reason;
use crate::provider::openrouter;
use crate::provider::transport::{ApiKey, TransportError};
use crate::provider::upstream::{Upstream, UpstreamSpec};
use crate::store::checkpoint::{Checkpoint, Place, Tail};
mod feed;
mod scan;

use feed::{clear_spool_leftovers, feed, spool};
pub use scan::{CHANGED_SHOWN, InputIssue, Scan, Strays};
use scan::{STRAYS_SHOWN, scan};

use crate::store::{
    Failure, JsonlStore, Outcome, OutputFiles, Replacement, Sink, SinkError, Store, unix_now,
};

/// Where the batch comes from.
#[derive(Debug, Clone)]
pub enum InputSource {
    File(PathBuf),
    /// Standard input, copied to a temporary file first so it can be validated in full
    /// before any request is sent.
    Stdin,
}

/// Everything a run needs to know, validated by the caller.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub input: InputSource,
    pub files: OutputFiles,
    pub defaults: LineDefaults,
    /// `--offset`: lines to skip at the start of the input.
    pub offset: u64,
    /// `--limit`: requests to send at most (after resume skips).
    pub limit: Option<u64>,
    pub skip_invalid: bool,
    pub retry_failed: bool,
    /// What to do with finished requests whose input line has changed since.
    pub changed: ChangedPolicy,
    /// Each upstream's tokens-per-minute ceiling (`--tpm`, a provider's `tpm`), by
    /// index: a request whose tokens exceed its upstream's can never be sent within the
    /// limit, so it is an input error. Missing or `None`: no ceiling known.
    pub tpm: Vec<Option<TpmCeiling>>,
}

/// A tokens-per-minute ceiling given before the run, and what gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmCeiling {
    pub tokens: u64,
    /// Named in the error of a request that can never fit: `--tpm`,
    /// `providers.openai.tpm`.
    pub set_by: String,
}

/// What a run does with a custom_id that is finished in RESULTS or ERRORS for a request
/// that is no longer the one in the input (another model, path or body).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChangedPolicy {
    /// Name them and send nothing: mixing answers to two versions of a batch is never
    /// what a user meant.
    #[default]
    Refuse,
    /// `--rerun-changed`: send them again; each old line is dropped once its new one is
    /// written.
    Rerun,
    /// `--keep-changed`: keep the old lines as the answers.
    Keep,
}

/// A finished custom_id whose request changed.
#[derive(Debug, Clone)]
pub struct ChangedLine {
    pub line: u64,
    pub custom_id: String,
    /// Where its old line is.
    pub place: Place,
}

/// Why a run could not start or finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read input {path}: {source}")]
    Input {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Output(#[from] SinkError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// A checked input plus the state of the output files: ready to start.
pub struct Prepared {
    pub plan: RunPlan,
    pub scan: Scan,
    pub checkpoint: Checkpoint,
}

/// Reads the output files and checks every input line against them. The caller holds
/// RESULTS' lock ([`crate::store::claim::OutputLock`]). Sends nothing and changes no file: the caller decides what to do with [`Scan::issues`] and
/// [`Scan::changed`], then calls [`Prepared::start`].
pub fn prepare(plan: RunPlan) -> Result<Prepared, RunError> {
    clear_spool_leftovers(&plan.files.results);
    let checkpoint = Checkpoint::read(&plan.files)?;
    let (path, label, spool) = match &plan.input {
        // A pipe (`/dev/stdin`, `<(...)`, a FIFO) cannot be read twice: copied first,
        // like standard input.
        InputSource::File(p) if !crate::store::claim::is_regular_output(p) => {
            let label = p.display().to_string();
            let source = File::open(p).map_err(|source| RunError::Input {
                path: label.clone(),
                source,
            })?;
            let spool = spool(source, &label, &plan.files.results)?;
            (spool.path().to_path_buf(), label, Some(spool))
        }
        InputSource::File(p) => (p.clone(), p.display().to_string(), None),
        InputSource::Stdin => {
            let label = "<stdin>".to_string();
            let spool = spool(std::io::stdin().lock(), &label, &plan.files.results)?;
            (spool.path().to_path_buf(), label, Some(spool))
        }
    };
    let (mut scan, seen) = scan(&path, label, spool, &plan, &checkpoint)?;
    for (place, strays) in [
        (Place::Results, &mut scan.stray_results),
        (Place::Errors, &mut scan.stray_failures),
    ] {
        strays.count = seen.strays(place);
        if strays.count > 0 {
            strays.examples =
                checkpoint.ids(&plan.files, place, STRAYS_SHOWN, |id| !seen.contains(id))?;
        }
    }
    Ok(Prepared {
        plan,
        scan,
        checkpoint,
    })
}

/// A run whose files are repaired, tidied and open: [`execute`] it.
pub struct Started {
    plan: RunPlan,
    scan: Scan,
    sink: Sink,
    /// RESULTS is a regular file resume reads (see [`Checkpoint::resumable`]).
    resumable: bool,
    /// Lines left in ERRORS after the start's tidy, before this run appends.
    errors_kept: u64,
    /// Last lines that were repaired.
    pub repaired: Vec<Tail>,
}

impl Started {
    pub fn scan(&self) -> &Scan {
        &self.scan
    }
}

impl Prepared {
    /// Commits to running: repairs the files' last lines, drops the lines that no longer
    /// count, and opens both files for appending. An error here means nothing was sent.
    pub fn start(mut self) -> Result<Started, RunError> {
        // Both files must take appends before either is repaired or tidied: a run that
        // cannot write must leave them as they were.
        Sink::check(&self.plan.files)?;
        for path in [&self.plan.files.results, &self.plan.files.errors] {
            Replacement::clear_leftovers(path);
        }
        let repaired = self.checkpoint.repair_tails()?;
        // Invalid-input records of the lines this run checks are written afresh (with
        // `--skip-invalid`) or not at all: a line fixed since is no longer an error.
        let checked_from = self.plan.offset;
        let errors_kept =
            self.checkpoint
                .tidy(&self.plan.files, &self.scan.stale, Some(checked_from))?;
        let sink = Sink::open(&self.plan.files)?;
        Ok(Started {
            errors_kept,
            resumable: self.checkpoint.resumable(),
            plan: self.plan,
            scan: self.scan,
            sink,
            repaired,
        })
    }
}

/// Everything the run's observers and exit code need.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub stop: StopReason,
    /// Lines left in ERRORS after the run (failures of this and earlier runs).
    pub errors_in_file: u64,
}

/// How to reach one provider: one upstream of the engine.
#[derive(Debug, Clone)]
pub struct Target {
    /// How its lanes are named in events when the engine has several
    /// (`NAME:key#1`); the first target's lanes carry no prefix.
    pub name: String,
    pub base_url: String,
    pub keys: Vec<ApiKey>,
    /// Sent with every request to it (a configured provider's `headers`).
    pub headers: http::HeaderMap,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// How the provider's limits are shared between keys and models (`--lanes`);
    /// `None`: as volley knows the provider to limit.
    pub lanes: Option<LaneLayout>,
    /// Read each key's standing from OpenRouter's `GET /key` before starting.
    pub key_info: bool,
    /// Price models from the provider's `GET /models` (OpenRouter's format) where
    /// `EngineConfig::pricing` has no price; the list is cached in `cache_dir`.
    pub fetch_prices: bool,
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Target {
    /// An engine sending to this provider alone (see [`Target::connect_all`]).
    pub async fn connect(
        self,
        config: EngineConfig,
        events: EventBus,
    ) -> Result<Engine, TransportError> {
        Target::connect_all(vec![self], config, events).await
    }

    /// An engine with one upstream per target, in order (a job's `upstream` is its
    /// target's index): each target's keys' standing read (`key_info`) and its models'
    /// prices fetched (`fetch_prices`) first, each said as an event. Prices are one
    /// table by model id: a `--pricing` file wins over every provider's list, and an
    /// earlier target's list over a later one's.
    pub async fn connect_all(
        targets: Vec<Target>,
        mut config: EngineConfig,
        events: EventBus,
    ) -> Result<Engine, TransportError> {
        let mut upstreams = Vec::with_capacity(targets.len());
        let mut listed: Option<Pricing> = None;
        for (i, target) in targets.into_iter().enumerate() {
            let upstream = Upstream::new(
                UpstreamSpec {
                    // The first upstream's lanes keep their plain names (`key#1`), as
                    // with a single provider.
                    name: if i == 0 {
                        String::new()
                    } else {
                        target.name.clone()
                    },
                    headers: target.headers,
                    lanes: target
                        .lanes
                        .unwrap_or_else(|| LaneLayout::for_base_url(&target.base_url)),
                    rpm: target.rpm,
                    tpm: target.tpm,
                    ..UpstreamSpec::new(&target.base_url, target.keys)
                },
                config.concurrency,
            )?;
            let (transport, keys) = (&upstream.transport, upstream.lanes.keys());
            if target.key_info {
                let lookups = keys.iter().map(|k| openrouter::key_info(transport, &k.key));
                for (k, info) in keys
                    .iter()
                    .zip(futures_util::future::join_all(lookups).await)
                {
                    events.emit(Event::KeyInfo {
                        key: k.label.clone(),
                        info,
                    });
                }
            }
            if target.fetch_prices
                && let Some(first) = keys.first()
            {
                let fetched = openrouter::model_prices(
                    transport,
                    &first.key,
                    &target.base_url,
                    target.cache_dir.as_deref(),
                )
                .await;
                events.emit(Event::ModelPrices {
                    models: fetched.as_ref().map(|(p, _)| p.len()),
                    source: fetched.as_ref().map(|(_, s)| *s),
                });
                if let Some((prices, _)) = fetched {
                    listed = Some(match listed {
                        Some(earlier) => prices.overridden_by(&earlier),
                        None => prices,
                    });
                }
            }
            upstreams.push(upstream);
        }
        if let Some(listed) = listed {
            // A --pricing file wins over the providers' lists, model by model.
            let merged = match &config.pricing {
                Some(file) => listed.overridden_by(file),
                None => listed,
            };
            config.pricing = Some(Arc::new(merged));
        }
        Ok(Engine::new(config, upstreams, events))
    }
}

/// The lanes of an engine, once it is connected: what a dashboard shows of each key's
/// limits while a run lasts. [`execute`] makes its engine itself (after reading the
/// keys' standing), so a caller cannot hold the engine; it holds this instead, and
/// only the lane pools (not the engine, whose sources hold the run's files open).
#[derive(Debug, Clone, Default)]
pub struct LaneWatch(Arc<OnceLock<Vec<Arc<LanePool>>>>);

impl LaneWatch {
    pub fn new() -> LaneWatch {
        LaneWatch::default()
    }

    /// Keeps `engine`'s lane pools; a second engine is ignored (one run, one engine).
    pub fn watch(&self, engine: &Engine) {
        let _ = self
            .0
            .set(engine.upstreams().iter().map(|u| u.lanes.clone()).collect());
    }

    /// Every lane as it stands now; none before the engine is connected.
    pub fn views(&self) -> Vec<LaneView> {
        self.0
            .get()
            .map(|pools| pools.iter().flat_map(|p| p.views()).collect())
            .unwrap_or_default()
    }
}

/// Runs a prepared batch as one source of an engine of its own, with one upstream per
/// target (see [`Target::connect_all`]). `source` says how the
/// batch is run (its cost cap, retry budget, reply check); its store is the run's
/// files. `events` receives every event of the run; `cancel` stops admitting new
/// requests (Ctrl-C); `lanes` is given the engine's lanes once it is connected.
pub async fn execute(
    started: Started,
    targets: Vec<Target>,
    engine: EngineConfig,
    source: SourceSpec,
    events: EventBus,
    cancel: CancellationToken,
    lanes: &LaneWatch,
) -> Result<RunOutcome, RunError> {
    let Started {
        plan,
        mut scan,
        mut sink,
        resumable,
        errors_kept,
        ..
    } = started;
    events.emit(Event::RunStarted {
        total: scan.to_send,
        already_done: scan.already_done,
        keys: targets.iter().map(|t| t.keys.len()).sum(),
    });
    let engine = Target::connect_all(targets, engine, events.clone()).await?;
    lanes.watch(&engine);
    let store: Arc<dyn Store> = Arc::new(JsonlStore::new(sink.handle()));
    let source = engine.open(SourceSpec {
        name: scan.label.clone(),
        store,
        ..source
    });
    if plan.skip_invalid {
        record_issues(&scan, &source, &events);
    }
    let replacing = std::mem::take(&mut scan.replacing);
    let (to_send, label) = (scan.to_send, scan.label.clone());
    let interrupt = {
        let source = source.clone();
        tokio::spawn(async move {
            cancel.cancelled().await;
            source.cancel();
        })
    };
    // On a worker of the runtime, where the engine's tasks run: the caller may be
    // blocked on the runtime from another thread, and every admission handed across
    // threads would cost a wake-up.
    let feeding = tokio::spawn(feed(
        scan,
        plan.defaults.clone(),
        engine.clone(),
        source.clone(),
    ));
    let read = feeding.await.unwrap_or(Ok(0));
    let mut stop = source.finish().await;
    interrupt.abort();
    // Aborting only schedules it: wait until it is gone with its handle on the source.
    let _ = interrupt.await;
    // The source holds the store, and the store a sink handle: drop them so the
    // writer can finish.
    drop((source, engine));
    let written = sink.finish()?;
    // A read error matters only if the run meant to read everything.
    if stop == StopReason::Completed {
        let sent = read?;
        if sent < to_send {
            // Lines the first pass accepted no longer parse: the file changed under
            // the run. Never a success with requests left unsent.
            stop = StopReason::Halted(format!(
                "{label} changed while the run read it: {sent} of {to_send} requests were sent; re-run to check it again and send the rest"
            ));
        }
    }
    let errors_in_file =
        if !resumable || !crate::store::claim::is_regular_output(&plan.files.errors) {
            // No resume, or an ERRORS that cannot be read back: what this run wrote.
            written.errors
        } else if replacing.is_empty() {
            errors_kept + written.errors
        } else {
            tidy_replaced(&plan.files, &replacing)?
        };
    Ok(RunOutcome {
        stop,
        errors_in_file,
    })
}

/// Drops the older lines of requests this run sent again (a retried failure, a changed
/// request re-run), once their new line is on disk; returns the lines left in ERRORS.
fn tidy_replaced(files: &OutputFiles, replacing: &IdMap<u64>) -> Result<u64, RunError> {
    let after = Checkpoint::read(files)?;
    let current: IdMap<u64> = replacing
        .iter()
        .filter(|(h, fp)| after.holds(**h, **fp))
        .map(|(h, fp)| (*h, *fp))
        .collect();
    Ok(after.tidy(files, &current, None)?)
}

/// Files the invalid lines in ERRORS (`--skip-invalid`), once each across re-runs.
fn record_issues(scan: &Scan, source: &Source, events: &EventBus) {
    for issue in &scan.issues {
        let message = scan.describe(issue);
        let custom_id: Arc<str> = Arc::from(issue.custom_id.as_str());
        source.record(&Outcome {
            custom_id: custom_id.clone(),
            fingerprint: None,
            model: None,
            response: None,
            error: Some(Failure {
                reason: Reason::InvalidInput,
                message: message.clone(),
            }),
            attempts: 0,
            latency: std::time::Duration::ZERO,
            usage: Usage::default(),
            key: None,
            finished_at: unix_now(),
            input_line: Some(issue.line),
        });
        events.emit_from(
            source.id(),
            Event::InputRejected {
                custom_id,
                line: issue.line,
                message,
            },
        );
    }
}
