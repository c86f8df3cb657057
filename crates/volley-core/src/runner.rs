//! One `volley run`, end to end: read and check the input, resume from the output
//! files, feed the engine, and close the files.
//!
//! The input is read twice. The first pass validates every line and decides, per line,
//! whether it is sent, skipped (blank, finished before, outside `--offset`/`--limit`) or
//! invalid, so that input errors and requests that changed since they were answered are
//! reported before any request is sent or any file changed, and the total is known for
//! the progress bar. It keeps one byte per line and a hash per id; the second pass
//! streams the lines to send through a channel no deeper than the concurrency, so memory
//! is bounded by concurrency, not by file size.
//!
//! A request is "the same" across runs when its custom_id and its [`Fingerprint`](crate::input::job::Fingerprint) (the
//! route and body after defaults) are: a finished custom_id whose request changed is
//! neither kept nor re-sent silently ([`ChangedPolicy`]).

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::accounting::usage::Usage;
use crate::engine::{Engine, EngineConfig, Source, SourceSpec, StopReason};
use crate::input::batch::{LineDefaults, parse_line, parse_request, peek_custom_id};
use crate::input::ids::{IdMap, IdSet, id_hash};
use crate::input::lines::Lines;
use crate::limits::lanes::LaneLayout;
use crate::observe::events::{Event, EventBus};
use crate::provider::classify::Reason;
use crate::provider::openrouter;
use crate::provider::transport::{ApiKey, TransportError};
use crate::provider::upstream::{Upstream, UpstreamSpec};
use crate::store::checkpoint::{Checkpoint, Lookup, Place, Tail};
use crate::store::replace::{clear_scratch, scratch_place};
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
    /// `--tpm`: a request whose tokens exceed it can never be sent within the limit,
    /// so it is an input error.
    pub tpm: Option<u64>,
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
    /// Non-blank lines read (after `--offset`).
    pub lines: u64,
    /// Non-blank lines `--offset` skipped.
    pub before_offset: u64,
    /// Requests this run will send.
    pub to_send: u64,
    /// Lines skipped because an earlier run finished them.
    pub already_done: u64,
    /// Invalid lines, in file order.
    pub issues: Vec<InputIssue>,
    /// Finished custom_ids whose request changed (see [`ChangedPolicy`]).
    pub changed: u64,
    /// The first [`CHANGED_SHOWN`] of them, in file order.
    pub changed_lines: Vec<ChangedLine>,
    /// Requests found finished by custom_id alone: their lines carry no fingerprint.
    pub matched_by_id_only: u64,
    /// Custom_ids in RESULTS that no input line has.
    pub stray_results: Strays,
    /// Custom_ids failed in ERRORS that no input line has: they still count for the
    /// exit code, so a run that failed nothing may exit 1 for them.
    pub stray_failures: Strays,
    /// custom_id → fingerprint of requests finished now whose older versions are still
    /// in the files (a crash cut a re-run short): those lines are dropped at start.
    stale: IdMap<u64>,
    /// custom_id → fingerprint of requests this run sends that already have a line:
    /// their old lines are dropped once the new ones are written.
    replacing: IdMap<u64>,
    /// The input, open since the first pass.
    file: File,
    /// [`line_check`] of each line to send, in order: the second pass sends a line
    /// only if it still is the request the first pass checked (an input rewritten in
    /// place during the run is caught, not sent).
    expected: Vec<u32>,
    plan: Vec<LineFate>,
    /// Holds stdin's copy alive for the second pass.
    _spool: Option<tempfile::NamedTempFile>,
}

/// What happens to one physical line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineFate {
    /// Not sent: blank, outside `--offset`/`--limit`, finished, or invalid (its record
    /// is written from [`Scan::issues`]).
    Skip,
    Send,
}

/// How many changed lines a scan keeps to name.
pub const CHANGED_SHOWN: usize = 20;

/// How many custom_ids missing from the input a scan names.
const STRAYS_SHOWN: usize = 5;

/// Custom_ids in an output file that no line of the input has.
#[derive(Debug, Clone, Default)]
pub struct Strays {
    /// How many (distinct).
    pub count: u64,
    /// The first few, in file order, to name.
    pub examples: Vec<String>,
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
        strays.count = checkpoint.ids_where(place, |h| seen.contains_hash(h));
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

/// Removes copies of an input that a run killed mid-run left beside RESULTS. Named
/// after RESULTS, whose lock the caller holds, they are no other run's.
fn clear_spool_leftovers(results: &Path) {
    if crate::store::claim::is_regular_output(results) {
        clear_scratch(results, SPOOL);
    }
}

/// The scratch kind of an input's copy: `.RESULTS.input-…`.
const SPOOL: &str = "input";

/// Copies an input that can be read only once into a temporary file, so it can be
/// validated in full before any request is sent and then read again to send.
fn spool(
    mut source: impl Read,
    label: &str,
    results: &Path,
) -> Result<tempfile::NamedTempFile, RunError> {
    // Beside RESULTS, on the disk that has room for the batch's results; a RESULTS that
    // is a pipe or terminal (`-o /dev/stdout`) says nothing about disks, so the system's
    // temporary folder it is.
    let beside = crate::store::claim::is_regular_output(results).then(|| {
        results
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    });
    let dir = beside.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let err = |source| RunError::Input {
        path: label.to_string(),
        source,
    };
    let mut spool = tempfile::Builder::new()
        .prefix(&scratch_place(results, SPOOL).1)
        .tempfile_in(&dir)
        .map_err(err)?;
    std::io::copy(&mut source, spool.as_file_mut()).map_err(err)?;
    Ok(spool)
}

/// Calls `f(line_number, text)` for every line; a line that is not UTF-8 is given as
/// `Err` so it can be reported instead of stopping the read.
fn for_each_line(
    file: &File,
    label: &str,
    mut f: impl FnMut(u64, Result<&str, String>) -> bool,
) -> Result<(), RunError> {
    let err = |source| RunError::Input {
        path: label.to_string(),
        source,
    };
    // Clones share the read position: each pass starts from the top.
    let mut file = file.try_clone().map_err(err)?;
    file.seek(std::io::SeekFrom::Start(0)).map_err(err)?;
    let mut lines = Lines::new(file);
    while let Some(line) = lines.next_line().map_err(err)? {
        let text = line.text().map_err(|e| format!("not valid UTF-8: {e}"));
        if !f(line.number, text) {
            break;
        }
    }
    Ok(())
}

/// The first pass: decides every line's fate and returns the ids the input holds.
fn scan(
    path: &Path,
    label: String,
    spool: Option<tempfile::NamedTempFile>,
    plan: &RunPlan,
    checkpoint: &Checkpoint,
) -> Result<(Scan, IdSet), RunError> {
    let mut seen = IdSet::new();
    let mut fates = Vec::new();
    let mut issues = Vec::new();
    let (mut lines, mut to_send, mut already_done) = (0u64, 0u64, 0u64);
    let mut before_offset = 0u64;
    let (mut changed, mut changed_lines, mut by_id_only) = (0u64, Vec::new(), 0u64);
    let (mut stale, mut replacing) = (IdMap::default(), IdMap::default());
    // The line each id was first seen on, so a repeat can name it (bounded; see
    // `first_seen_note`).
    let mut first_seen: IdMap<u64> = IdMap::default();
    // Kept open for the second pass: a file saved over the input meanwhile (a new
    // file renamed in) cannot change what is sent.
    let file = File::open(path).map_err(|source| RunError::Input {
        path: label.clone(),
        source,
    })?;
    let mut expected = Vec::new();
    for_each_line(&file, &label, |number, text| {
        let fate = match text {
            Ok(t) if t.trim().is_empty() => LineFate::Skip,
            Ok(t) if number <= plan.offset => {
                before_offset += 1;
                // Not this run's to send, but still the input's: its id is not one that
                // RESULTS holds for no line.
                if let Ok(request) = parse_request(t, number, &plan.defaults) {
                    seen.insert(&request.custom_id);
                }
                LineFate::Skip
            }
            _ if number <= plan.offset => {
                before_offset += 1;
                LineFate::Skip
            }
            Ok(t) => {
                lines += 1;
                match parse_request(t, number, &plan.defaults) {
                    Ok(request) => {
                        let id = request.custom_id.as_str();
                        if !seen.insert(id) {
                            let first = first_seen.get(&id_hash(id)).copied();
                            let message = match first {
                                Some(first) => format!("custom_id {id:?} repeats line {first}"),
                                None => format!("custom_id {id:?} repeats an earlier line"),
                            };
                            issue(&mut issues, number, format!("line-{number}"), message)
                        } else {
                            first_seen_note(&mut first_seen, id, number);
                            let fp = request.fingerprint();
                            let lookup = checkpoint.lookup(id, fp, plan.retry_failed);
                            let send = match lookup {
                                Lookup::Finished {
                                    by_id_only: old,
                                    stale: older_versions,
                                    ..
                                } => {
                                    by_id_only += u64::from(old);
                                    if older_versions {
                                        stale.insert(id_hash(id), fp.get());
                                    }
                                    false
                                }
                                Lookup::Changed { place } => {
                                    changed += 1;
                                    if changed_lines.len() < CHANGED_SHOWN {
                                        changed_lines.push(ChangedLine {
                                            line: number,
                                            custom_id: id.to_string(),
                                            place,
                                        });
                                    }
                                    if plan.changed == ChangedPolicy::Keep
                                        && let Some(latest) = checkpoint.latest_print(id)
                                    {
                                        // Lines of two older versions (a re-run cut
                                        // short): the one written last is kept.
                                        stale.insert(id_hash(id), latest);
                                    }
                                    plan.changed == ChangedPolicy::Rerun
                                }
                                Lookup::New => {
                                    // A failure of this version re-sent (--retry-failed):
                                    // lines of other versions are superseded by it.
                                    if checkpoint.holds(id_hash(id), fp.get()) {
                                        stale.insert(id_hash(id), fp.get());
                                    }
                                    true
                                }
                            };
                            if !send {
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
                                issue(&mut issues, number, id.to_string(), message)
                            } else if plan.limit.is_some_and(|l| to_send >= l) {
                                LineFate::Skip
                            } else {
                                if checkpoint.knows(id_hash(id)) {
                                    replacing.insert(id_hash(id), fp.get());
                                }
                                to_send += 1;
                                expected.push(line_check(id, fp));
                                LineFate::Send
                            }
                        }
                    }
                    Err(problem) => {
                        // A line's own custom_id is reserved even when the rest of it is
                        // wrong (a later line reusing it is a repeat). The `line-N` an
                        // unusable one files under is not an id of the input, so it
                        // reserves nothing: a real custom_id "line-N" stays valid.
                        let fallback = format!("line-{number}");
                        let id = peek_custom_id(t, number);
                        let id = if id == fallback || !seen.insert(&id) {
                            fallback
                        } else {
                            id
                        };
                        issue(&mut issues, number, id, problem.to_string())
                    }
                }
            }
            Err(why) => {
                lines += 1;
                issue(&mut issues, number, format!("line-{number}"), why)
            }
        };
        fates.push(fate);
        true
    })?;
    let scan = Scan {
        label,
        lines,
        before_offset,
        to_send,
        already_done,
        issues,
        changed,
        changed_lines,
        matched_by_id_only: by_id_only,
        stray_results: Strays::default(),
        stray_failures: Strays::default(),
        stale,
        replacing,
        file,
        expected,
        plan: fates,
        _spool: spool,
    };
    Ok((scan, seen))
}

/// Remembers the first line of an id, bounded: only the hash and line number, and only
/// while the map is small, so a million-line file does not keep a million entries.
fn first_seen_note(map: &mut IdMap<u64>, id: &str, line: u64) {
    const REMEMBERED: usize = 100_000;
    if map.len() < REMEMBERED {
        map.insert(crate::input::ids::id_hash(id), line);
    }
}

/// Notes an invalid line. Its record is written afresh each run (`--skip-invalid`), so
/// a line fixed since is sent, never skipped as "finished".
fn issue(issues: &mut Vec<InputIssue>, line: u64, custom_id: String, message: String) -> LineFate {
    issues.push(InputIssue {
        line,
        custom_id,
        message,
    });
    LineFate::Skip
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

/// Runs a prepared batch as one source of an engine of its own. `source` says how the
/// batch is run (its cost cap, retry budget, reply check); its store is the run's
/// files. `events` receives every event of the run; `cancel` stops admitting new
/// requests (Ctrl-C).
pub async fn execute(
    started: Started,
    target: Target,
    mut engine: EngineConfig,
    source: SourceSpec,
    events: EventBus,
    cancel: CancellationToken,
) -> Result<RunOutcome, RunError> {
    let Started {
        plan,
        mut scan,
        mut sink,
        resumable,
        errors_kept,
        ..
    } = started;
    let upstream = Upstream::new(
        UpstreamSpec {
            lanes: target
                .lanes
                .unwrap_or_else(|| LaneLayout::for_base_url(&target.base_url)),
            rpm: target.rpm,
            tpm: target.tpm,
            ..UpstreamSpec::new(&target.base_url, target.keys)
        },
        engine.concurrency,
    )?;
    let (transport, keys) = (&upstream.transport, upstream.lanes.keys());
    events.emit(Event::RunStarted {
        total: scan.to_send,
        already_done: scan.already_done,
        keys: keys.len(),
    });
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
    if target.fetch_prices {
        let fetched = openrouter::model_prices(
            transport,
            &keys[0].key,
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
    let store: Arc<dyn Store> = Arc::new(JsonlStore::new(sink.handle()));
    let engine = Engine::new(engine, vec![upstream], events.clone());
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
    let read = spawn_reader(scan, plan.defaults.clone(), engine.clone(), source.clone()).await;
    let mut stop = source.finish().await;
    interrupt.abort();
    // The source holds the store, and the store a sink handle: drop them so the
    // writer can finish.
    drop((source, engine));
    let written = sink.finish()?;
    // A read error matters only if the run meant to read everything.
    if stop == StopReason::Completed {
        let sent = read.unwrap_or(Ok(0))?;
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

/// The second pass: streams the lines marked to send into the engine's channel.
/// A line's custom_id and fingerprint folded into 4 bytes: enough to tell a rewritten
/// line from the one checked, at a fixed cost per line to send.
fn line_check(custom_id: &str, fp: crate::input::job::Fingerprint) -> u32 {
    let h = id_hash(custom_id) ^ fp.get().rotate_left(17);
    (h ^ (h >> 32)) as u32
}

/// Returns how many requests it handed to the engine.
fn spawn_reader(
    scan: Scan,
    defaults: LineDefaults,
    engine: Engine,
    source: Source,
) -> tokio::task::JoinHandle<Result<u64, RunError>> {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let Scan {
            file,
            label,
            plan,
            expected,
            _spool,
            ..
        } = scan;
        let mut sent = 0u64;
        for_each_line(&file, &label, |number, text| {
            if sent as usize == expected.len() {
                // Every line to send is sent: the rest of the file need not be read.
                return false;
            }
            let index = usize::try_from(number - 1).unwrap_or(usize::MAX);
            if plan.get(index) != Some(&LineFate::Send) {
                return true;
            }
            // The first pass accepted this line, so it parses the same way again,
            // unless the file was rewritten in between: then nothing more is sent
            // (the caller sees fewer requests sent than checked).
            let job = text
                .ok()
                .and_then(|t| parse_line(t, number, &defaults).ok())
                .filter(|job| {
                    expected.get(sent as usize)
                        == Some(&line_check(&job.custom_id, job.fingerprint))
                });
            let Some(job) = job else {
                return false;
            };
            // Not admitted means the source stopped: stop reading. The store keeps
            // each outcome, so the ticket is not waited for.
            let admitted = runtime.block_on(engine.submit(&source, job)).is_ok();
            sent += u64::from(admitted);
            admitted
        })?;
        Ok(sent)
    })
}
