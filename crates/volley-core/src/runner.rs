//! One `volley run`, end to end: read and check the input, resume from the output
//! files, feed the engine, and close the files.
//!
//! The input is read twice. The first pass validates every line and decides, per line,
//! whether it is sent, skipped (blank, finished before, outside `--offset`/`--limit`) or
//! invalid, so that input errors are reported before any request is sent and the total
//! is known for the progress bar. It keeps one byte per line and the set of ids seen;
//! the second pass streams the lines to send through a channel no deeper than the
//! concurrency, so memory is bounded by concurrency, not by file size.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::{LineDefaults, parse_line, parse_request, peek_custom_id};
use crate::classify::Reason;
use crate::events::{Event, EventBus};
use crate::ids::IdSet;
use crate::job::Job;
use crate::keys::KeyPool;
use crate::openrouter;
use crate::scheduler::{Engine, EngineConfig, StopReason};
use crate::sink::{
    Checkpoint, Destination, ErrorPart, OutputFiles, OutputLine, Sink, SinkError, SinkHandle,
    VolleyPart, unix_now,
};
use crate::transport::{ApiKey, Transport, TransportError};
use crate::usage::Usage;

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
    /// `--tpm`: a request whose tokens exceed it can never be sent within the limit,
    /// so it is an input error.
    pub tpm: Option<u64>,
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

/// An input line that cannot be sent.
#[derive(Debug, Clone)]
pub struct InputIssue {
    pub line: u64,
    /// The id its error record is filed under: its custom_id if it has a usable,
    /// unrepeated one, else `line-N`.
    pub custom_id: String,
    pub message: String,
}

/// What the first pass over the input found.
pub struct Scan {
    /// How the input is named in messages (`<stdin>` or the path).
    pub label: String,
    /// Non-blank lines read.
    pub lines: u64,
    /// Requests this run will send.
    pub to_send: u64,
    /// Lines skipped because an earlier run finished them.
    pub already_done: u64,
    /// Invalid lines, in file order.
    pub issues: Vec<InputIssue>,
    path: PathBuf,
    plan: Vec<LineFate>,
    /// Holds stdin's copy alive for the second pass.
    _spool: Option<tempfile::NamedTempFile>,
}

/// What happens to one physical line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineFate {
    Skip,
    Send,
    /// Invalid, and its error record is to be written this run.
    Record,
}

/// A checked input plus the state of the output files: ready to run.
pub struct Prepared {
    pub plan: RunPlan,
    pub scan: Scan,
    pub checkpoint: Checkpoint,
}

/// Reads the output files (repairing a torn line) and checks every input line.
/// Sends nothing: the caller decides what to do with [`Scan::issues`].
pub fn prepare(plan: RunPlan) -> Result<Prepared, RunError> {
    let checkpoint = Checkpoint::open(&plan.files, plan.retry_failed)?;
    let (path, label, spool) = match &plan.input {
        InputSource::File(p) => (p.clone(), p.display().to_string(), None),
        InputSource::Stdin => {
            let spool = spool_stdin(&plan.files.results)?;
            (
                spool.path().to_path_buf(),
                "<stdin>".to_string(),
                Some(spool),
            )
        }
    };
    let scan = scan(&path, label, spool, &plan, &checkpoint.done)?;
    Ok(Prepared {
        plan,
        scan,
        checkpoint,
    })
}

fn spool_stdin(results: &Path) -> Result<tempfile::NamedTempFile, RunError> {
    let dir = results
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let err = |source| RunError::Input {
        path: "<stdin>".into(),
        source,
    };
    let mut spool = tempfile::Builder::new()
        .prefix(".volley-stdin-")
        .tempfile_in(dir)
        .map_err(err)?;
    std::io::copy(&mut std::io::stdin().lock(), spool.as_file_mut()).map_err(err)?;
    Ok(spool)
}

/// Calls `f(line_number, text)` for every line; a line that is not UTF-8 is given as
/// `Err` so it can be reported instead of stopping the read.
fn for_each_line(
    path: &Path,
    label: &str,
    mut f: impl FnMut(u64, Result<&str, String>) -> bool,
) -> Result<(), RunError> {
    let err = |source| RunError::Input {
        path: label.to_string(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        if reader.by_ref().read_until(b'\n', &mut buf).map_err(err)? == 0 {
            return Ok(());
        }
        number += 1;
        let text = std::str::from_utf8(&buf).map_err(|e| format!("not valid UTF-8: {e}"));
        if !f(number, text) {
            return Ok(());
        }
    }
}

fn scan(
    path: &Path,
    label: String,
    spool: Option<tempfile::NamedTempFile>,
    plan: &RunPlan,
    done: &IdSet,
) -> Result<Scan, RunError> {
    let mut seen = IdSet::new();
    let mut fates = Vec::new();
    let mut issues = Vec::new();
    let (mut lines, mut to_send, mut already_done) = (0u64, 0u64, 0u64);
    // The line each id was first seen on, so a repeat can name it (bounded; see
    // `first_seen_note`).
    let mut first_seen: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    for_each_line(path, &label, |number, text| {
        let fate = match text {
            Ok(t) if t.trim().is_empty() => LineFate::Skip,
            _ if number <= plan.offset => LineFate::Skip,
            Ok(t) => {
                lines += 1;
                match parse_request(t, number, &plan.defaults) {
                    Ok(request) => {
                        let id = request.custom_id.as_str();
                        if !seen.insert(id) {
                            let first = first_seen.get(&crate::ids::id_hash(id)).copied();
                            let message = match first {
                                Some(first) => format!("custom_id {id:?} repeats line {first}"),
                                None => format!("custom_id {id:?} repeats an earlier line"),
                            };
                            issue(&mut issues, number, format!("line-{number}"), message, done)
                        } else {
                            first_seen_note(&mut first_seen, id, number);
                            if done.contains(id) {
                                already_done += 1;
                                LineFate::Skip
                            } else if let Some((tokens, tpm)) = plan
                                .tpm
                                .map(|tpm| (request.estimated_tokens(), tpm))
                                .filter(|(tokens, tpm)| tokens > tpm)
                            {
                                let message = format!(
                                    "needs about {tokens} tokens (prompt plus max_tokens), more than --tpm {tpm}: it can never be sent within the limit"
                                );
                                issue(&mut issues, number, id.to_string(), message, done)
                            } else if plan.limit.is_some_and(|l| to_send >= l) {
                                LineFate::Skip
                            } else {
                                to_send += 1;
                                LineFate::Send
                            }
                        }
                    }
                    Err(problem) => {
                        let id = peek_custom_id(t, number);
                        // An id that is unusable or already taken files under line-N.
                        let id = if seen.insert(&id) {
                            id
                        } else {
                            format!("line-{number}")
                        };
                        issue(&mut issues, number, id, problem.to_string(), done)
                    }
                }
            }
            Err(why) => {
                lines += 1;
                issue(&mut issues, number, format!("line-{number}"), why, done)
            }
        };
        fates.push(fate);
        true
    })?;
    Ok(Scan {
        label,
        lines,
        to_send,
        already_done,
        issues,
        path: path.to_path_buf(),
        plan: fates,
        _spool: spool,
    })
}

/// Remembers the first line of an id, bounded: only the hash and line number, and only
/// while the map is small, so a million-line file does not keep a million entries.
fn first_seen_note(map: &mut std::collections::HashMap<u64, u64>, id: &str, line: u64) {
    const REMEMBERED: usize = 100_000;
    if map.len() < REMEMBERED {
        map.insert(crate::ids::id_hash(id), line);
    }
}

fn issue(
    issues: &mut Vec<InputIssue>,
    line: u64,
    custom_id: String,
    message: String,
    done: &IdSet,
) -> LineFate {
    let fate = if done.contains(&custom_id) {
        LineFate::Skip
    } else {
        LineFate::Record
    };
    issues.push(InputIssue {
        line,
        custom_id,
        message,
    });
    fate
}

impl Scan {
    /// `file:line: message` for an issue.
    pub fn describe(&self, issue: &InputIssue) -> String {
        format!("{}:{}: {}", self.label, issue.line, issue.message)
    }
}

/// Everything the run's observers and exit code need.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub stop: StopReason,
    /// Lines left in ERRORS after the run (failures of this and earlier runs).
    pub errors_in_file: u64,
}

/// How to reach the provider.
#[derive(Debug, Clone)]
pub struct Target {
    pub base_url: String,
    pub keys: Vec<ApiKey>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Read each key's standing from OpenRouter's `GET /key` before starting.
    pub key_info: bool,
    /// Price models from the provider's `GET /models` (OpenRouter's format) where
    /// `EngineConfig::pricing` has no price; the list is cached in `cache_dir`.
    pub fetch_prices: bool,
    pub cache_dir: Option<std::path::PathBuf>,
}

/// Runs a prepared batch. `events` receives every event of the run; `cancel` stops
/// admitting new requests (Ctrl-C).
pub async fn execute(
    prepared: Prepared,
    target: Target,
    mut engine: EngineConfig,
    events: EventBus,
    cancel: CancellationToken,
) -> Result<RunOutcome, RunError> {
    let Prepared { plan, scan, .. } = prepared;
    let transport = Transport::new(&target.base_url, engine.concurrency)?;
    let mut sink = Sink::open(&plan.files)?;
    let keys = KeyPool::new(target.keys, target.rpm, target.tpm);
    events.emit(Event::RunStarted {
        total: scan.to_send,
        already_done: scan.already_done,
        keys: keys.len(),
    });
    if target.key_info {
        let lookups = (0..keys.len()).map(|i| openrouter::key_info(&transport, &keys.lane(i).key));
        for (i, info) in futures_util::future::join_all(lookups)
            .await
            .into_iter()
            .enumerate()
        {
            events.emit(Event::KeyInfo {
                key: keys.lane(i).label.clone(),
                info,
            });
        }
    }
    if target.fetch_prices {
        let fetched = openrouter::model_prices(
            &transport,
            &keys.lane(0).key,
            &target.base_url,
            target.cache_dir.as_deref(),
        )
        .await;
        events.emit(Event::ModelPrices {
            models: fetched.as_ref().map(|(p, _)| p.len()),
            source: fetched.as_ref().map(|(_, s)| *s),
        });
        if let Some((listed, _)) = fetched {
            // A --pricing file wins over the provider's list, model by model.
            let merged = match &engine.pricing {
                Some(file) => listed.overridden_by(file),
                None => listed,
            };
            engine.pricing = Some(Arc::new(merged));
        }
    }
    let writer = sink.handle();
    if plan.skip_invalid {
        record_issues(&scan, &writer, &events);
    }

    let (tx, rx) = mpsc::channel::<Job>(engine.concurrency.max(1));
    let reader = spawn_reader(scan, plan.defaults.clone(), tx);
    let engine = Engine::new(engine, transport, keys, events, writer, &cancel);
    let stop = engine.run(rx, &cancel).await;
    // The engine holds a sink handle: drop it so the writer can finish.
    drop(engine);
    let read = reader.await.unwrap_or(Ok(()));
    sink.finish()?;
    // A read error matters only if the run meant to read everything.
    if stop == StopReason::Completed {
        read?;
    }
    if plan.retry_failed {
        // Ids that failed before and succeeded now leave ERRORS.
        Checkpoint::open(&plan.files, true)?;
    }
    Ok(RunOutcome {
        stop,
        errors_in_file: count_lines(&plan.files.errors),
    })
}

/// Files the invalid lines in ERRORS (`--skip-invalid`), once each across re-runs.
fn record_issues(scan: &Scan, writer: &SinkHandle, events: &EventBus) {
    for issue in &scan.issues {
        let index = usize::try_from(issue.line - 1).unwrap_or(usize::MAX);
        if scan.plan.get(index) != Some(&LineFate::Record) {
            continue;
        }
        let message = scan.describe(issue);
        let line = OutputLine {
            id: &format!("vol-input-{}", issue.line),
            custom_id: &issue.custom_id,
            response: None,
            error: Some(ErrorPart {
                code: Reason::InvalidInput.as_str(),
                message: &message,
            }),
            volley: VolleyPart {
                attempts: 0,
                latency_ms: 0.0,
                usage: Usage::default(),
                cost: None,
                key: None,
                model: None,
                finished_at: unix_now(),
            },
        };
        writer.write(Destination::Errors, line.to_line());
        events.emit(Event::InputRejected {
            custom_id: Arc::from(issue.custom_id.as_str()),
            line: issue.line,
            message,
        });
    }
}

fn count_lines(path: &Path) -> u64 {
    std::fs::read(path).map_or(0, |b| memchr::memchr_iter(b'\n', &b).count() as u64)
}

/// The second pass: streams the lines marked to send into the engine's channel.
fn spawn_reader(
    scan: Scan,
    defaults: LineDefaults,
    tx: mpsc::Sender<Job>,
) -> tokio::task::JoinHandle<Result<(), RunError>> {
    tokio::task::spawn_blocking(move || {
        let Scan {
            path,
            label,
            plan,
            _spool,
            ..
        } = scan;
        for_each_line(&path, &label, |number, text| {
            let index = usize::try_from(number - 1).unwrap_or(usize::MAX);
            if plan.get(index) != Some(&LineFate::Send) {
                return true;
            }
            // The first pass accepted this line, so it parses the same way again.
            let Some(job) = text
                .ok()
                .and_then(|t| parse_line(t, number, &defaults).ok())
            else {
                return true;
            };
            // A closed channel means the engine stopped: stop reading.
            tx.blocking_send(job).is_ok()
        })
    })
}
