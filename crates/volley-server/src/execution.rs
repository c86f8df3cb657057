//! Running batches: each batch is a source on the shared engine, so batches share keys
//! and limits fairly (and the proxy, at a higher priority, goes first).
//!
//! A batch's progress is its rows in the store: each finished request is recorded
//! (with its output line) as it ends, so a batch taken up again after a restart sends
//! only the lines not recorded. How a batch ends is decided once and kept
//! ([`Ending`]), then its output and error files are written from its rows; a restart
//! mid-way does that again from the start, which changes nothing already done.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use volley_core::engine::{Engine, SourceSpec, StopReason};
use volley_core::input::batch::{LineDefaults, parse_line, peek_custom_id};
use volley_core::input::job::Job;
use volley_core::input::lines::Lines;
use volley_core::observe::sources::StatsBySource;
use volley_core::provider::routes::Routes;
use volley_core::store::{Outcome, Store};

use crate::db::{Db, DbError};
use crate::files::FileDir;
use crate::ids::{self, Kind};
use crate::rows::{BatchErrorItem, BatchRow, Ending, FileRow, FileSummary, ResultRow, Status, now};

/// The batches being run, and how to run more.
#[derive(Clone)]
pub struct Batches {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    db: Db,
    files: FileDir,
    /// Figures by source: a batch's leave once it stops (the store keeps them).
    stats: Arc<StatsBySource>,
    /// Batches started and not yet finalized, with how each was asked to end.
    running: Mutex<HashMap<String, Running>>,
    tasks: TaskTracker,
    /// Cancelled when the gateway shuts down: batches then stop where they are, to be
    /// taken up again by the next start.
    shutdown: CancellationToken,
    /// The configured models (`--config`): a line naming one is routed as this
    /// process's configuration says when the line is sent.
    routes: Arc<Routes>,
}

#[derive(Default)]
struct Running {
    source: Option<volley_core::engine::Source>,
    /// Set by a cancel or the window's end: how the batch is to end.
    asked: Option<Ending>,
}

/// Lines read ahead of the engine per hand-over.
const CHUNK: usize = 64;

/// The first and the longest pause before a batch whose store failed is tried again.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(60);

impl Batches {
    pub fn new(
        engine: Engine,
        db: Db,
        files: FileDir,
        stats: Arc<StatsBySource>,
        routes: Arc<Routes>,
    ) -> Batches {
        Batches {
            inner: Arc::new(Inner {
                engine,
                db,
                files,
                stats,
                routes,
                running: Mutex::default(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Starts (or takes up again) a batch that has not ended.
    pub fn start(&self, batch: BatchRow) {
        let inner = self.inner.clone();
        let mut running = inner.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.contains_key(&batch.id) {
            return;
        }
        running.insert(batch.id.clone(), Running::default());
        drop(running);
        self.inner.tasks.spawn(inner.clone().run(batch));
    }

    /// Ends a batch as cancelled, from its row as it now is: a running one stops
    /// sending (its requests in flight finish); one not running here (between a
    /// restart and its start, or after a failed start) is started, which finalizes it.
    pub fn cancel(&self, batch: BatchRow) {
        if !self.end(&batch.id, Ending::Cancelled) && !self.is_running(&batch.id) {
            self.start(batch);
        }
    }

    fn is_running(&self, batch_id: &str) -> bool {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(batch_id)
    }

    /// Asks a running batch to end as `ending`: it stops sending, its requests in
    /// flight finish, and it is finalized. False if it is not running (it has ended,
    /// or is ending already).
    pub fn end(&self, batch_id: &str, ending: Ending) -> bool {
        let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = running.get_mut(batch_id) else {
            return false;
        };
        if entry.asked.is_some() {
            return false;
        }
        entry.asked = Some(ending);
        if let Some(source) = &entry.source {
            source.cancel();
        }
        true
    }

    /// Takes up the batches an earlier process left unfinished.
    pub async fn resume_all(&self) -> Result<usize, DbError> {
        let unfinished = self.inner.db.read(BatchRow::unfinished).await?;
        let n = unfinished.len();
        for batch in unfinished {
            self.start(batch);
        }
        Ok(n)
    }

    /// Stops every batch where it is (the engine's shutdown stops their requests) and
    /// waits for their tasks; what is unfinished is taken up by the next start.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

impl Inner {
    /// Drives a batch to its end; a store error on the way is tried again, with
    /// backoff, until it works or the gateway stops (every step can be done again).
    async fn run(self: Arc<Self>, mut batch: BatchRow) {
        let id = batch.id.clone();
        let mut pause = RETRY_FIRST;
        loop {
            let Err(e) = self.clone().drive(batch.clone()).await else {
                break;
            };
            if self.shutdown.is_cancelled() {
                tracing::error!("batch {id}: {e}; it is taken up again at the next start");
                break;
            }
            tracing::error!("batch {id}: {e}; trying again in {} s", pause.as_secs());
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(RETRY_MOST);
            let reread = {
                let id = id.clone();
                self.db.read(move |c| BatchRow::get_any(c, &id)).await
            };
            match reread {
                Ok(Some(row)) => batch = row,
                Ok(None) => break,
                Err(_) => {}
            }
        }
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    fn asked(&self, batch_id: &str) -> Option<Ending> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(batch_id)
            .and_then(|r| r.asked.clone())
    }

    async fn drive(self: Arc<Self>, batch: BatchRow) -> Result<(), DbError> {
        // As the store has it now: the row a caller passed may be stale (a cancel
        // read it just before the batch finished), and an ended batch is left alone.
        let batch = {
            let id = batch.id.clone();
            match self.db.read(move |c| BatchRow::get_any(c, &id)).await? {
                Some(row) if !row.status.is_terminal() => row,
                _ => return Ok(()),
            }
        };
        // A batch that was ending when the process stopped ends as it was going to.
        let decided = match (batch.status, &batch.ending) {
            (_, Some(ending)) => Some(ending.clone()),
            (Status::Cancelling, None) => Some(Ending::Cancelled),
            _ if now() >= batch.expires_at => Some(Ending::Expired),
            _ => None,
        };
        if let Some(ending) = decided {
            return self.finalize(&batch, ending).await;
        }
        let id = batch.id.clone();
        if batch.status == Status::Validating {
            let id = id.clone();
            // Only from `validating`: a cancel that came first has set `cancelling`.
            self.db
                .write(move |c| {
                    c.execute(
                        "UPDATE batches SET status = 'in_progress', in_progress_at = ?2
                         WHERE id = ?1 AND status = 'validating'",
                        rusqlite::params![id, now()],
                    )
                })
                .await?;
        }
        let done = {
            let id = id.clone();
            self.db
                .read(move |c| crate::rows::finished_ids(c, &id))
                .await?
        };
        let to_send = (batch.total as u64).saturating_sub(done.len() as u64);
        let max_cost = batch.max_cost.map(|cap| (cap - batch.cost).max(0.0));
        let source = self.engine.open(SourceSpec {
            max_cost,
            max_cost_name: "metadata.max_cost_usd",
            store: Arc::new(BatchStore {
                db: self.db.clone(),
                batch_id: Arc::from(id.as_str()),
            }),
            ..SourceSpec::new(id.clone())
        });
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            let entry = running.entry(id.clone()).or_default();
            // Asked to end before it started: it sends nothing.
            if entry.asked.is_some() {
                source.cancel();
            }
            entry.source = Some(source.clone());
        }
        let input = {
            let file_id = batch.input_file_id.clone();
            self.db.read(move |c| FileRow::get_any(c, &file_id)).await?
        };
        let path = self.files.path_of(&batch.input_file_id);
        let (Some(input), Some(path)) = (input, path.filter(|p| p.exists())) else {
            source.cancel();
            return self.finalize(&batch, missing_input(&batch)).await;
        };
        // Parsed with the --model it was checked with at upload, whatever this
        // process was started with; configured models are routed as configured now
        // (a provider's place in the engine is this process's).
        let defaults = LineDefaults {
            model: input.summary.default_model.clone(),
            routes: self.routes.clone(),
        };
        let window = {
            let (inner, id) = (self.clone(), id.clone());
            let left = Duration::from_secs(batch.expires_at.saturating_sub(now()).max(0) as u64);
            tokio::spawn(async move {
                tokio::time::sleep(left).await;
                let handle = Batches { inner };
                handle.end(&id, Ending::Expired);
            })
        };
        let sent = feed(self.engine.clone(), source.clone(), path, defaults, done).await;
        let stop = source.finish().await;
        window.abort();
        let asked = self.asked(&id);
        self.stats.forget(source.id());
        drop(source);
        let ending = match (asked, stop) {
            (Some(ending), _) => ending,
            // The gateway is stopping: the batch goes on at the next start.
            _ if self.shutdown.is_cancelled() => return Ok(()),
            (None, StopReason::Interrupted) => return Ok(()),
            (None, StopReason::Completed) => match sent {
                Ok(n) if n >= to_send => Ending::Completed,
                Ok(n) => Ending::Failed {
                    code: "input_changed".into(),
                    message: format!(
                        "only {n} of the {to_send} requests left in the input file could be read again; the file changed on disk"
                    ),
                },
                Err(e) => Ending::Failed {
                    code: "input_unreadable".into(),
                    message: format!("the input file could not be read: {e}"),
                },
            },
            (None, StopReason::Halted(why)) => Ending::Failed {
                code: "batch_halted".into(),
                message: why,
            },
        };
        self.finalize(&batch, ending).await
    }

    /// Ends a batch as `ending`: records the requests never sent as failures, writes
    /// the output and error files from the batch's rows, and sets its final status.
    /// Each step can be done again after a crash.
    async fn finalize(&self, batch: &BatchRow, ending: Ending) -> Result<(), DbError> {
        let id = batch.id.clone();
        // The last requests' records are queued on the writer: read after them.
        self.db.flush().await?;
        // The window ended after the last request had: the batch completed.
        let ending = if ending == Ending::Expired {
            let id = id.clone();
            let done = self
                .db
                .read(move |c| {
                    c.query_row(
                        "SELECT completed + failed >= total FROM batches WHERE id = ?1",
                        rusqlite::params![id],
                        |r| r.get::<_, bool>(0),
                    )
                })
                .await?;
            if done { Ending::Completed } else { ending }
        } else {
            ending
        };
        let ending_status = if ending == Ending::Cancelled {
            Status::Cancelling
        } else {
            Status::Finalizing
        };
        {
            let (id, ending) = (id.clone(), ending.clone());
            self.db
                .write(move |c| {
                    BatchRow::set_ending(c, &id, &ending)?;
                    BatchRow::set_status(c, &id, ending_status, now())
                })
                .await?;
        }
        self.record_unsent(batch, &ending).await?;
        let written = {
            let (dir, id) = (self.files.clone(), id.clone());
            self.db.read(move |c| write_outputs(c, &dir, &id)).await?
        };
        let (tenant, id2) = (batch.tenant.clone(), id.clone());
        let final_status = match ending {
            Ending::Completed => Status::Completed,
            Ending::Cancelled => Status::Cancelled,
            Ending::Expired => Status::Expired,
            Ending::Failed { .. } => Status::Failed,
        };
        let errors = match &ending {
            Ending::Failed { code, message } => vec![BatchErrorItem {
                code: code.clone(),
                message: message.clone(),
                line: None,
                param: None,
            }],
            _ => Vec::new(),
        };
        self.db
            .write(move |c| {
                let mut file_ids = [None, None];
                for (slot, made) in file_ids.iter_mut().zip(written) {
                    if let Some(made) = made {
                        FileRow {
                            id: made.id.clone(),
                            tenant: tenant.clone(),
                            filename: made.filename,
                            purpose: "batch_output".into(),
                            bytes: made.bytes as i64,
                            created_at: now(),
                            lines: made.lines as i64,
                            summary: FileSummary::default(),
                        }
                        .insert(c)?;
                        *slot = Some(made.id);
                    }
                }
                let [output, error] = file_ids;
                let errors = (!errors.is_empty())
                    .then(|| serde_json::to_string(&errors).unwrap_or_default());
                c.execute(
                    "UPDATE batches SET output_file_id = ?2, error_file_id = ?3,
                        errors = COALESCE(?4, errors) WHERE id = ?1",
                    rusqlite::params![id2, output, error, errors],
                )?;
                BatchRow::set_status(c, &id2, final_status, now())
            })
            .await?;
        tracing::info!("batch {id}: {}", final_status.as_str());
        Ok(())
    }

    /// Records each request of the batch that has no result as a failure saying why it
    /// was not sent (`batch_cancelled`, `batch_expired`, …).
    async fn record_unsent(&self, batch: &BatchRow, ending: &Ending) -> Result<(), DbError> {
        let done = {
            let id = batch.id.clone();
            self.db
                .read(move |c| crate::rows::finished_ids(c, &id))
                .await?
        };
        if done.len() as i64 >= batch.total {
            return Ok(());
        }
        let Some(path) = self.files.path_of(&batch.input_file_id) else {
            return Ok(());
        };
        let unsent = tokio::task::spawn_blocking(move || unsent_ids(&path, &done))
            .await
            .map_err(|e| DbError::Sqlite(Arc::from(e.to_string())))?;
        let unsent = match unsent {
            Ok(unsent) => unsent,
            Err(e) => {
                // They cannot be named, but they count: completed + failed = total.
                tracing::error!(
                    "batch {}: its input cannot be read ({e}): the requests not sent are counted as failed without error lines",
                    batch.id
                );
                let id = batch.id.clone();
                return self
                    .db
                    .write(move |c| {
                        c.execute(
                            "UPDATE batches SET failed = total - completed WHERE id = ?1",
                            rusqlite::params![id],
                        )
                        .map(drop)
                    })
                    .await;
            }
        };
        let (id, code, message) = (
            batch.id.clone(),
            ending.unsent_code(),
            ending.unsent_message(),
        );
        self.db
            .write(move |c| {
                for custom_id in unsent {
                    let line = serde_json::json!({
                        "id": ids::new(Kind::BatchRequest),
                        "custom_id": custom_id,
                        "response": null,
                        "error": {"code": code, "message": message},
                    })
                    .to_string();
                    ResultRow {
                        batch_id: &id,
                        custom_id: &custom_id,
                        ok: false,
                        line: &line,
                        usage: Default::default(),
                    }
                    .record(c)?;
                }
                Ok(())
            })
            .await
    }
}

fn missing_input(batch: &BatchRow) -> Ending {
    Ending::Failed {
        code: "input_missing".into(),
        message: format!("the input file {} is gone", batch.input_file_id),
    }
}

/// The custom_ids of an input file not in `done`.
fn unsent_ids(path: &std::path::Path, done: &HashSet<String>) -> std::io::Result<Vec<String>> {
    let mut lines = Lines::new(std::fs::File::open(path)?);
    let mut unsent = Vec::new();
    while let Some(line) = lines.next_line()? {
        if line.is_blank() {
            continue;
        }
        let Ok(text) = line.text() else { continue };
        let id = peek_custom_id(text, line.number);
        if !done.contains(&id) {
            unsent.push(id);
        }
    }
    Ok(unsent)
}

/// A file written for a batch, not yet in the store.
struct Written {
    id: String,
    filename: String,
    bytes: u64,
    lines: u64,
}

/// Writes a batch's output file (its successes) and error file (its failures), each
/// only if it has a line, in the order the requests finished; each is written whole
/// and synced under a temporary name first, so a file the store names is complete.
fn write_outputs(
    conn: &rusqlite::Connection,
    dir: &FileDir,
    batch_id: &str,
) -> rusqlite::Result<[Option<Written>; 2]> {
    let io = |e: std::io::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
    let mut outputs: [Option<(tempfile::NamedTempFile, u64, u64)>; 2] = [None, None];
    let mut stmt = conn.prepare("SELECT ok, line FROM results WHERE batch_id = ?1 ORDER BY n")?;
    let mut rows = stmt.query(rusqlite::params![batch_id])?;
    while let Some(row) = rows.next()? {
        let ok: bool = row.get(0)?;
        let line = row.get_ref(1)?.as_str()?;
        let slot = &mut outputs[usize::from(!ok)];
        if slot.is_none() {
            let temp = tempfile::Builder::new()
                .prefix(".output-")
                .tempfile_in(dir.dir())
                .map_err(io)?;
            *slot = Some((temp, 0, 0));
        }
        if let Some((temp, bytes, lines)) = slot {
            use std::io::Write;
            temp.write_all(line.as_bytes()).map_err(io)?;
            temp.write_all(b"\n").map_err(io)?;
            *bytes += line.len() as u64 + 1;
            *lines += 1;
        }
    }
    let mut written: [Option<Written>; 2] = [None, None];
    for (i, (slot, kind)) in outputs.into_iter().zip(["output", "error"]).enumerate() {
        let Some((temp, bytes, lines)) = slot else {
            continue;
        };
        temp.as_file().sync_all().map_err(io)?;
        let id = ids::new(Kind::File);
        let path = dir
            .path_of(&id)
            .ok_or_else(|| io(std::io::Error::other("a new file id is not valid")))?;
        temp.persist(&path).map_err(|e| io(e.error))?;
        written[i] = Some(Written {
            id,
            filename: format!("{batch_id}_{kind}.jsonl"),
            bytes,
            lines,
        });
    }
    Ok(written)
}

/// Reads the input on a thread of its own and submits each line not yet finished,
/// waiting for the engine to admit it, so no more than two chunks are read ahead.
/// Returns how many were admitted.
async fn feed(
    engine: Engine,
    source: volley_core::engine::Source,
    path: PathBuf,
    defaults: LineDefaults,
    done: HashSet<String>,
) -> std::io::Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Job>>(2);
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut lines = Lines::new(std::fs::File::open(&path)?);
        let mut chunk = Vec::with_capacity(CHUNK);
        while let Some(line) = lines.next_line()? {
            if line.is_blank() {
                continue;
            }
            // Checked at upload: a line that no longer parses is skipped here and
            // counted short by the caller.
            let Ok(text) = line.text() else { continue };
            let Ok(job) = parse_line(text, line.number, &defaults) else {
                continue;
            };
            if done.contains(&*job.custom_id) {
                continue;
            }
            chunk.push(job);
            if chunk.len() == CHUNK && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    });
    let mut sent = 0;
    'chunks: while let Some(jobs) = rx.recv().await {
        for job in jobs {
            if engine.submit(&source, job).await.is_err() {
                break 'chunks;
            }
            sent += 1;
        }
    }
    drop(rx);
    reader.await.map_err(std::io::Error::other)??;
    Ok(sent)
}

/// A batch's store: each finished request becomes a row with its output line.
struct BatchStore {
    db: Db,
    batch_id: Arc<str>,
}

impl Store for BatchStore {
    fn record(&self, outcome: &Outcome) -> bool {
        let (ok, line) = output_line(outcome);
        let (batch_id, custom_id, usage) = (
            self.batch_id.clone(),
            outcome.custom_id.clone(),
            outcome.usage,
        );
        self.db.write_detached(move |c| {
            ResultRow {
                batch_id: &batch_id,
                custom_id: &custom_id,
                ok,
                line: &line,
                usage,
            }
            .record(c)
            .map(drop)
        })
    }
}

/// A finished request as a line of OpenAI's batch output: an HTTP reply (an error one
/// too) goes in `response`; `error` says why when there was no reply, or when a
/// 2xx reply was still a failure (an error inside a 200, an empty answer).
fn output_line(outcome: &Outcome) -> (bool, String) {
    let response = outcome.response.as_ref().map(|r| {
        let body = r.body_as_json();
        serde_json::json!({
            "status_code": r.status,
            "request_id": r.request_id_or(&body),
            "body": body,
        })
    });
    let reply_2xx = outcome
        .response
        .as_ref()
        .is_some_and(|r| (200..300).contains(&r.status));
    let error = outcome
        .error
        .as_ref()
        .filter(|_| outcome.response.is_none() || reply_2xx)
        .map(|f| serde_json::json!({"code": f.reason.as_str(), "message": f.message}));
    let line = serde_json::json!({
        "id": ids::new(Kind::BatchRequest),
        "custom_id": outcome.custom_id,
        "response": response,
        "error": error,
    });
    (outcome.error.is_none(), line.to_string())
}
