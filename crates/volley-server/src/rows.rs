//! What the store holds, row by row, and the SQL that reads and writes it. Every query
//! of an object takes its tenant: another tenant's object is never found.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

/// Creates the tables on first use; a later version adds to them here.
pub fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    create_tables(conn)?;
    // Added after the first data directories were made.
    let has_deleted: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('files') WHERE name = 'deleted'",
        [],
        |r| r.get(0),
    )?;
    if !has_deleted {
        conn.execute_batch("ALTER TABLE files ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

fn create_tables(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS files (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            lines INTEGER NOT NULL,
            summary TEXT NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS files_by_tenant ON files(tenant, seq);
        CREATE TABLE IF NOT EXISTS batches (
            id TEXT PRIMARY KEY,
            seq INTEGER NOT NULL UNIQUE,
            tenant TEXT NOT NULL,
            input_file_id TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            completion_window TEXT NOT NULL,
            status TEXT NOT NULL,
            ending TEXT,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            in_progress_at INTEGER,
            finalizing_at INTEGER,
            completed_at INTEGER,
            failed_at INTEGER,
            expired_at INTEGER,
            cancelling_at INTEGER,
            cancelled_at INTEGER,
            output_file_id TEXT,
            error_file_id TEXT,
            errors TEXT,
            metadata TEXT,
            model TEXT,
            max_cost REAL,
            total INTEGER NOT NULL,
            completed INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            reasoning_tokens INTEGER NOT NULL DEFAULT 0,
            cost REAL NOT NULL DEFAULT 0,
            cost_known INTEGER NOT NULL DEFAULT 1
        );
        CREATE INDEX IF NOT EXISTS batches_by_tenant ON batches(tenant, seq);
        -- The dashboard lists every unfinished batch each second (added later: a data
        -- directory made before gets it when next opened).
        CREATE INDEX IF NOT EXISTS batches_by_status ON batches(status, seq);
        CREATE TABLE IF NOT EXISTS results (
            batch_id TEXT NOT NULL,
            custom_id TEXT NOT NULL,
            n INTEGER NOT NULL,
            ok INTEGER NOT NULL,
            line TEXT NOT NULL,
            PRIMARY KEY (batch_id, custom_id)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX IF NOT EXISTS results_in_order ON results(batch_id, n);
        CREATE TABLE IF NOT EXISTS idempotency (
            tenant TEXT NOT NULL,
            key TEXT NOT NULL,
            request TEXT NOT NULL,
            object_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (tenant, key)
        );
        CREATE TABLE IF NOT EXISTS proxy_replies (
            tenant TEXT NOT NULL,
            key TEXT NOT NULL,
            status INTEGER NOT NULL,
            content_type TEXT NOT NULL,
            body BLOB NOT NULL,
            PRIMARY KEY (tenant, key)
        );",
    )
}

/// Now in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The next value of a table's `seq`: objects are listed newest first by it.
fn next_seq(conn: &Connection, table: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!("SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}"),
        [],
        |r| r.get(0),
    )
}

/// What validation learnt of a batch input file, kept so a batch can be checked
/// against it without reading the file again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileSummary {
    /// Each distinct url of its lines (`/v1/chat/completions`) with the first line
    /// that has it.
    pub urls: Vec<(String, u64)>,
    /// The model of its first request.
    pub model: Option<String>,
    /// `--model` when it was checked: lines that name no model are sent with it.
    #[serde(default)]
    pub default_model: Option<String>,
    /// More distinct urls than [`FileSummary::URLS_KEPT`] were seen (only the first
    /// are kept: a batch targets one endpoint, so such a file fails anyway).
    #[serde(default)]
    pub more_urls: bool,
}

impl FileSummary {
    pub const URLS_KEPT: usize = 16;
}

/// A stored file.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: String,
    pub tenant: String,
    pub filename: String,
    /// `batch` for an input, `batch_output` for a batch's output or error file.
    pub purpose: String,
    pub bytes: i64,
    pub created_at: i64,
    /// Requests it holds.
    pub lines: i64,
    pub summary: FileSummary,
}

impl FileRow {
    const COLUMNS: &str = "id, tenant, filename, purpose, bytes, created_at, lines, summary";

    fn from_row(r: &Row<'_>) -> rusqlite::Result<FileRow> {
        let summary: String = r.get(7)?;
        Ok(FileRow {
            id: r.get(0)?,
            tenant: r.get(1)?,
            filename: r.get(2)?,
            purpose: r.get(3)?,
            bytes: r.get(4)?,
            created_at: r.get(5)?,
            lines: r.get(6)?,
            summary: serde_json::from_str(&summary).unwrap_or_default(),
        })
    }

    pub fn insert(&self, conn: &Connection) -> rusqlite::Result<()> {
        let summary = serde_json::to_string(&self.summary).unwrap_or_else(|_| "{}".into());
        conn.execute(
            "INSERT INTO files (id, seq, tenant, filename, purpose, bytes, created_at, lines, summary)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                self.id,
                next_seq(conn, "files")?,
                self.tenant,
                self.filename,
                self.purpose,
                self.bytes,
                self.created_at,
                self.lines,
                summary
            ],
        )?;
        Ok(())
    }

    pub fn get(conn: &Connection, tenant: &str, id: &str) -> rusqlite::Result<Option<FileRow>> {
        conn.query_row(
            &format!(
                "SELECT {} FROM files WHERE id = ?1 AND tenant = ?2 AND deleted = 0",
                Self::COLUMNS
            ),
            params![id, tenant],
            Self::from_row,
        )
        .optional()
    }

    /// The file, whatever its tenant: for the gateway's own work on it.
    pub fn get_any(conn: &Connection, id: &str) -> rusqlite::Result<Option<FileRow>> {
        conn.query_row(
            &format!(
                "SELECT {} FROM files WHERE id = ?1 AND deleted = 0",
                Self::COLUMNS
            ),
            params![id],
            Self::from_row,
        )
        .optional()
    }

    /// A page of a tenant's files after `after` (an id, which may since have been
    /// deleted: a deleted file keeps its place), in `order`; one more than `limit` is
    /// read, to know whether there are more.
    pub fn list(
        conn: &Connection,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
        purpose: Option<&str>,
    ) -> rusqlite::Result<Vec<FileRow>> {
        let (cmp, order) = if newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let sql = format!(
            "SELECT {} FROM files WHERE tenant = ?1 AND deleted = 0
               AND (?2 IS NULL OR seq {cmp} COALESCE((SELECT seq FROM files WHERE id = ?2 AND tenant = ?1), -1))
               AND (?3 IS NULL OR purpose = ?3)
             ORDER BY seq {order} LIMIT ?4",
            Self::COLUMNS
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(
            params![tenant, after, purpose, (limit + 1) as i64],
            Self::from_row,
        )?;
        rows.collect()
    }

    /// Marks a file deleted; its row stays, so a list paged after it goes on from
    /// its place.
    pub fn delete(conn: &Connection, tenant: &str, id: &str) -> rusqlite::Result<bool> {
        Ok(conn.execute(
            "UPDATE files SET deleted = 1 WHERE id = ?1 AND tenant = ?2 AND deleted = 0",
            params![id, tenant],
        )? == 1)
    }

    /// Every file id not deleted, whatever the tenant: to clear files on disk the
    /// store does not keep.
    pub fn all_ids(conn: &Connection) -> rusqlite::Result<std::collections::HashSet<String>> {
        let mut stmt = conn.prepare("SELECT id FROM files WHERE deleted = 0")?;
        let ids = stmt.query_map([], |r| r.get(0))?;
        ids.collect()
    }
}

/// A batch's status, as OpenAI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Validating => "validating",
            Status::InProgress => "in_progress",
            Status::Finalizing => "finalizing",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::Cancelling => "cancelling",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "validating" => Status::Validating,
            "in_progress" => Status::InProgress,
            "finalizing" => Status::Finalizing,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "expired" => Status::Expired,
            "cancelling" => Status::Cancelling,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    /// No further change comes.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Expired | Status::Cancelled
        )
    }
}

/// The statuses a batch never leaves, as SQL.
const ENDED: &str = "('completed', 'failed', 'expired', 'cancelled')";
/// The statuses of a batch not yet ended, as SQL (`batches_by_status` finds them).
const UNFINISHED: &str = "('validating', 'in_progress', 'finalizing', 'cancelling')";

/// How a batch that stops sending ends: the status it is finalized to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "as", rename_all = "snake_case")]
pub enum Ending {
    /// Every request finished.
    Completed,
    /// Its owner cancelled it.
    Cancelled,
    /// Its completion window ended first.
    Expired,
    /// It could not go on (its cost cap, no key left); the message says why.
    Failed { code: String, message: String },
}

impl Ending {
    /// The error code of each request that was never sent, in the error file.
    pub fn unsent_code(&self) -> &'static str {
        match self {
            Ending::Completed => "batch_incomplete",
            Ending::Cancelled => "batch_cancelled",
            Ending::Expired => "batch_expired",
            Ending::Failed { .. } => "batch_failed",
        }
    }

    pub fn unsent_message(&self) -> String {
        match self {
            Ending::Completed => "the request was not sent".into(),
            Ending::Cancelled => "the batch was cancelled before this request was sent".into(),
            Ending::Expired => {
                "the batch's completion window ended before this request was sent".into()
            }
            Ending::Failed { message, .. } => format!("not sent: {message}"),
        }
    }
}

/// One error of a batch's `errors` list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchErrorItem {
    pub code: String,
    pub message: String,
    pub line: Option<u64>,
    pub param: Option<String>,
}

/// A stored batch.
#[derive(Debug, Clone)]
pub struct BatchRow {
    pub id: String,
    pub tenant: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub status: Status,
    /// How it is to end, once that is decided (kept so a restart finishes the job).
    pub ending: Option<Ending>,
    pub created_at: i64,
    pub expires_at: i64,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub errors: Vec<BatchErrorItem>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub model: Option<String>,
    /// `metadata.max_cost_usd`: the batch stops sending once it has spent this.
    pub max_cost: Option<f64>,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    /// USD spent; known only while every request's cost was.
    pub cost: f64,
    pub cost_known: bool,
}

impl BatchRow {
    const COLUMNS: &str = "id, tenant, input_file_id, endpoint, completion_window, status, ending,
        created_at, expires_at, in_progress_at, finalizing_at, completed_at, failed_at,
        expired_at, cancelling_at, cancelled_at, output_file_id, error_file_id, errors,
        metadata, model, max_cost, total, completed, failed, input_tokens, cached_tokens,
        output_tokens, reasoning_tokens, cost, cost_known";

    fn from_row(r: &Row<'_>) -> rusqlite::Result<BatchRow> {
        let status: String = r.get(5)?;
        let ending: Option<String> = r.get(6)?;
        let errors: Option<String> = r.get(18)?;
        let metadata: Option<String> = r.get(19)?;
        Ok(BatchRow {
            id: r.get(0)?,
            tenant: r.get(1)?,
            input_file_id: r.get(2)?,
            endpoint: r.get(3)?,
            completion_window: r.get(4)?,
            status: Status::parse(&status).unwrap_or(Status::Failed),
            ending: ending.and_then(|e| serde_json::from_str(&e).ok()),
            created_at: r.get(7)?,
            expires_at: r.get(8)?,
            in_progress_at: r.get(9)?,
            finalizing_at: r.get(10)?,
            completed_at: r.get(11)?,
            failed_at: r.get(12)?,
            expired_at: r.get(13)?,
            cancelling_at: r.get(14)?,
            cancelled_at: r.get(15)?,
            output_file_id: r.get(16)?,
            error_file_id: r.get(17)?,
            errors: errors
                .and_then(|e| serde_json::from_str(&e).ok())
                .unwrap_or_default(),
            metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
            model: r.get(20)?,
            max_cost: r.get(21)?,
            total: r.get(22)?,
            completed: r.get(23)?,
            failed: r.get(24)?,
            input_tokens: r.get(25)?,
            cached_tokens: r.get(26)?,
            output_tokens: r.get(27)?,
            reasoning_tokens: r.get(28)?,
            cost: r.get(29)?,
            cost_known: r.get(30)?,
        })
    }

    pub fn insert(&self, conn: &Connection) -> rusqlite::Result<()> {
        let errors = (!self.errors.is_empty())
            .then(|| serde_json::to_string(&self.errors).unwrap_or_default());
        let metadata = self
            .metadata
            .as_ref()
            .map(|m| serde_json::Value::Object(m.clone()).to_string());
        conn.execute(
            "INSERT INTO batches (id, seq, tenant, input_file_id, endpoint, completion_window,
                status, created_at, expires_at, in_progress_at, failed_at, errors, metadata,
                model, max_cost, total)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                self.id,
                next_seq(conn, "batches")?,
                self.tenant,
                self.input_file_id,
                self.endpoint,
                self.completion_window,
                self.status.as_str(),
                self.created_at,
                self.expires_at,
                self.in_progress_at,
                self.failed_at,
                errors,
                metadata,
                self.model,
                self.max_cost,
                self.total,
            ],
        )?;
        Ok(())
    }

    pub fn get(conn: &Connection, tenant: &str, id: &str) -> rusqlite::Result<Option<BatchRow>> {
        conn.query_row(
            &format!(
                "SELECT {} FROM batches WHERE id = ?1 AND tenant = ?2",
                Self::COLUMNS
            ),
            params![id, tenant],
            Self::from_row,
        )
        .optional()
    }

    /// The batch, whatever its tenant: for the gateway's own work on it.
    pub fn get_any(conn: &Connection, id: &str) -> rusqlite::Result<Option<BatchRow>> {
        conn.query_row(
            &format!("SELECT {} FROM batches WHERE id = ?1", Self::COLUMNS),
            params![id],
            Self::from_row,
        )
        .optional()
    }

    /// A page of a tenant's batches, newest first, after `after`; one more than
    /// `limit` is read, to know whether there are more.
    pub fn list(
        conn: &Connection,
        tenant: &str,
        after: Option<&str>,
        limit: usize,
    ) -> rusqlite::Result<Vec<BatchRow>> {
        let sql = format!(
            "SELECT {} FROM batches WHERE tenant = ?1
               AND (?2 IS NULL OR seq < COALESCE((SELECT seq FROM batches WHERE id = ?2 AND tenant = ?1), -1))
             ORDER BY seq DESC LIMIT ?3",
            Self::COLUMNS
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![tenant, after, (limit + 1) as i64], Self::from_row)?;
        rows.collect()
    }

    /// Each tenant's latest `per_tenant` batches and every unfinished one, newest
    /// first: what the dashboard lists. It reads the indexes only (the tenants by a
    /// skip over `batches_by_tenant`, each one's latest from it, the unfinished ones from
    /// `batches_by_status`), so its cost follows what it returns, not the batches
    /// stored: it runs every second.
    pub fn recent(conn: &Connection, per_tenant: usize) -> rusqlite::Result<Vec<BatchRow>> {
        let mut stmt = conn.prepare_cached(&format!("{} ORDER BY seq DESC", Self::recent_sql()))?;
        let rows = stmt.query_map(params![per_tenant as i64], Self::from_row)?;
        rows.collect()
    }

    /// [`BatchRow::recent`]'s query, without its order. `CROSS JOIN` and `INDEXED BY`
    /// hold the plan: with statistics saying a tenant has a third of the batches,
    /// SQLite would rather scan them all.
    fn recent_sql() -> String {
        format!(
            "WITH RECURSIVE tenants(tenant) AS (
                SELECT MIN(tenant) FROM batches
                UNION ALL
                SELECT (SELECT MIN(tenant) FROM batches WHERE tenant > tenants.tenant)
                FROM tenants WHERE tenants.tenant IS NOT NULL
             )
             SELECT {} FROM batches WHERE rowid IN (
                SELECT b.rowid FROM tenants CROSS JOIN batches AS b INDEXED BY batches_by_tenant
                 WHERE b.tenant = tenants.tenant
                   AND b.seq >= COALESCE((SELECT seq FROM batches WHERE tenant = tenants.tenant
                                          ORDER BY seq DESC LIMIT 1 OFFSET ?1 - 1), 0)
                UNION
                SELECT rowid FROM batches WHERE status IN {UNFINISHED}
             )",
            Self::COLUMNS
        )
    }

    /// Batches the gateway has not finished: to take up again after a restart.
    pub fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<BatchRow>> {
        let sql = format!(
            "SELECT {} FROM batches WHERE status IN {UNFINISHED} ORDER BY seq",
            Self::COLUMNS
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([], Self::from_row)?;
        rows.collect()
    }

    /// Sets a status and its timestamp column (`in_progress_at`, …) to `at`.
    pub fn set_status(
        conn: &Connection,
        id: &str,
        status: Status,
        at: i64,
    ) -> rusqlite::Result<()> {
        let column = match status {
            Status::Validating => None,
            Status::InProgress => Some("in_progress_at"),
            Status::Finalizing => Some("finalizing_at"),
            Status::Completed => Some("completed_at"),
            Status::Failed => Some("failed_at"),
            Status::Expired => Some("expired_at"),
            Status::Cancelling => Some("cancelling_at"),
            Status::Cancelled => Some("cancelled_at"),
        };
        match column {
            Some(column) => conn.execute(
                &format!("UPDATE batches SET status = ?1, {column} = COALESCE({column}, ?2) WHERE id = ?3 AND status NOT IN {ENDED}"),
                params![status.as_str(), at, id],
            )?,
            None => conn.execute(
                &format!("UPDATE batches SET status = ?1 WHERE id = ?2 AND status NOT IN {ENDED}"),
                params![status.as_str(), id],
            )?,
        };
        Ok(())
    }

    pub fn set_ending(conn: &Connection, id: &str, ending: &Ending) -> rusqlite::Result<()> {
        let text = serde_json::to_string(ending).unwrap_or_default();
        conn.execute(
            &format!("UPDATE batches SET ending = ?1 WHERE id = ?2 AND status NOT IN {ENDED}"),
            params![text, id],
        )?;
        Ok(())
    }
}

/// One finished request of a batch: its output line, in the order they finished.
pub struct ResultRow<'a> {
    pub batch_id: &'a str,
    pub custom_id: &'a str,
    pub ok: bool,
    /// The output line, without its newline.
    pub line: &'a str,
    pub usage: volley_core::accounting::usage::Usage,
}

impl ResultRow<'_> {
    /// Records the request and adds it to its batch's counts and usage, once: a
    /// custom_id already recorded is left as it is (false).
    pub fn record(&self, conn: &Connection) -> rusqlite::Result<bool> {
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO results (batch_id, custom_id, n, ok, line)
             VALUES (?1, ?2, (SELECT completed + failed FROM batches WHERE id = ?1), ?3, ?4)",
            params![self.batch_id, self.custom_id, self.ok, self.line],
        )? == 1;
        if inserted {
            let u = &self.usage;
            let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
            conn.execute(
                "UPDATE batches SET completed = completed + ?2, failed = failed + ?3,
                    input_tokens = input_tokens + ?4, cached_tokens = cached_tokens + ?5,
                    output_tokens = output_tokens + ?6, reasoning_tokens = reasoning_tokens + ?7,
                    cost = cost + ?8, cost_known = cost_known AND ?9
                 WHERE id = ?1",
                params![
                    self.batch_id,
                    i64::from(self.ok),
                    i64::from(!self.ok),
                    clamp(u.prompt_tokens),
                    clamp(u.cached_tokens),
                    clamp(u.completion_tokens),
                    clamp(u.reasoning_tokens),
                    u.cost.unwrap_or(0.0),
                    u.cost.is_some() || u.is_empty(),
                ],
            )?;
        }
        Ok(inserted)
    }
}

/// The custom_ids of a batch's finished requests.
pub fn finished_ids(
    conn: &Connection,
    batch_id: &str,
) -> rusqlite::Result<std::collections::HashSet<String>> {
    let mut stmt = conn.prepare("SELECT custom_id FROM results WHERE batch_id = ?1")?;
    let ids = stmt.query_map(params![batch_id], |r| r.get(0))?;
    ids.collect()
}

/// Output lines of a batch from the `after`-th finished on, at most `limit`, each with
/// whether it succeeded.
pub fn results_after(
    conn: &Connection,
    batch_id: &str,
    after: i64,
    limit: i64,
) -> rusqlite::Result<Vec<(bool, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT ok, line FROM results WHERE batch_id = ?1 AND n >= ?2 ORDER BY n LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![batch_id, after, limit], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    rows.collect()
}

/// An idempotency key's record: the request it came with and the object it made.
pub struct IdempotencyRow {
    pub request: String,
    pub object_id: String,
}

impl IdempotencyRow {
    /// The record of `key`, if made within `ttl_secs`.
    pub fn get(
        conn: &Connection,
        tenant: &str,
        key: &str,
        ttl_secs: i64,
    ) -> rusqlite::Result<Option<IdempotencyRow>> {
        conn.query_row(
            "SELECT request, object_id FROM idempotency
             WHERE tenant = ?1 AND key = ?2 AND created_at > ?3",
            params![tenant, key, now() - ttl_secs],
            |r| {
                Ok(IdempotencyRow {
                    request: r.get(0)?,
                    object_id: r.get(1)?,
                })
            },
        )
        .optional()
    }

    pub fn put(
        conn: &Connection,
        tenant: &str,
        key: &str,
        request: &str,
        object_id: &str,
    ) -> rusqlite::Result<()> {
        conn.execute(
            "INSERT OR REPLACE INTO idempotency (tenant, key, request, object_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, key, request, object_id, now()],
        )?;
        Ok(())
    }

    /// Forgets keys older than `ttl_secs`, and the keys of proxied calls that never
    /// got a reply to keep (their process stopped first): a retry runs them again.
    pub fn expire(conn: &Connection, ttl_secs: i64) -> rusqlite::Result<usize> {
        let old = conn.execute(
            "DELETE FROM idempotency WHERE created_at <= ?1",
            params![now() - ttl_secs],
        )?;
        conn.execute(
            "DELETE FROM proxy_replies WHERE NOT EXISTS (SELECT 1 FROM idempotency i
               WHERE i.tenant = proxy_replies.tenant AND i.key = proxy_replies.key)",
            [],
        )?;
        let unanswered = conn.execute(
            &format!(
                "DELETE FROM idempotency WHERE object_id = '{PROXY_CALL}' AND NOT EXISTS
                   (SELECT 1 FROM proxy_replies r WHERE r.tenant = idempotency.tenant AND r.key = idempotency.key)"
            ),
            [],
        )?;
        Ok(old + unanswered)
    }

    /// Forgets one key (a proxied call that ended with nothing worth replaying).
    pub fn forget(conn: &Connection, tenant: &str, key: &str) -> rusqlite::Result<()> {
        conn.execute(
            "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2",
            params![tenant, key],
        )?;
        Ok(())
    }
}

/// The object id an idempotency key of a proxied call records: its reply is in
/// `proxy_replies`.
pub const PROXY_CALL: &str = "proxy-call";

/// The reply a proxied call with an idempotency key got, kept to be replayed.
#[derive(Debug, Clone)]
pub struct ProxyReply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl ProxyReply {
    pub fn get(conn: &Connection, tenant: &str, key: &str) -> rusqlite::Result<Option<ProxyReply>> {
        conn.query_row(
            "SELECT status, content_type, body FROM proxy_replies WHERE tenant = ?1 AND key = ?2",
            params![tenant, key],
            |r| {
                Ok(ProxyReply {
                    status: r.get(0)?,
                    content_type: r.get(1)?,
                    body: r.get(2)?,
                })
            },
        )
        .optional()
    }

    pub fn put(&self, conn: &Connection, tenant: &str, key: &str) -> rusqlite::Result<()> {
        conn.execute(
            "INSERT OR REPLACE INTO proxy_replies (tenant, key, status, content_type, body)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tenant, key, self.status, self.content_type, self.body],
        )?;
        Ok(())
    }
}

/// A tenant's batches of one status, summed.
#[derive(Debug, Clone)]
pub struct TenantBatches {
    pub tenant: String,
    pub status: String,
    pub batches: i64,
    pub completed: i64,
    pub failed: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: f64,
}

impl TenantBatches {
    /// Every tenant's batches, summed by status.
    pub fn all(conn: &Connection) -> rusqlite::Result<Vec<TenantBatches>> {
        let mut stmt = conn.prepare(
            "SELECT tenant, status, COUNT(*), SUM(completed), SUM(failed), SUM(input_tokens),
                    SUM(output_tokens), SUM(cost)
             FROM batches GROUP BY tenant, status ORDER BY tenant, status",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(TenantBatches {
                tenant: r.get(0)?,
                status: r.get(1)?,
                batches: r.get(2)?,
                completed: r.get(3)?,
                failed: r.get(4)?,
                input_tokens: r.get(5)?,
                output_tokens: r.get(6)?,
                cost: r.get(7)?,
            })
        })?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20,000 batches of three tenants (a few unfinished), straight into the store.
    fn many(conn: &Connection) -> rusqlite::Result<()> {
        create_schema(conn)?;
        let mut insert = conn.prepare(
            "INSERT INTO batches (id, seq, tenant, input_file_id, endpoint, completion_window,
                status, created_at, expires_at, total)
             VALUES (?1, ?2, ?3, 'file-x', '/v1/chat/completions', '24h', ?4, ?2, ?2, 1)",
        )?;
        for seq in 1..=20_000i64 {
            let tenant = ["alice", "bob", "carol"][(seq % 3) as usize];
            let status = match seq {
                s if s % 997 == 0 => "in_progress",
                s if s % 1999 == 0 => "validating",
                _ => "completed",
            };
            insert.execute(params![format!("batch_{seq:05}"), seq, tenant, status])?;
        }
        conn.execute_batch("ANALYZE")
    }

    #[test]
    fn recent_reads_the_indexes_only_and_lists_what_the_window_query_did() {
        let conn = Connection::open_in_memory().unwrap();
        many(&conn).unwrap();
        let mut plan = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", BatchRow::recent_sql()))
            .unwrap();
        let steps: Vec<String> = plan
            .query_map(params![50], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let full_scans: Vec<&String> = steps
            .iter()
            // The old query's plan had `SCAN batches USING INDEX batches_by_tenant`: every
            // entry read. Only the few tenants found may be scanned.
            .filter(|s| s.starts_with("SCAN") && *s != "SCAN tenants")
            .collect();
        assert!(full_scans.is_empty(), "{steps:#?}");
        assert!(
            steps.iter().any(|s| s.contains("batches_by_status")),
            "{steps:#?}"
        );
        assert!(
            steps.iter().any(|s| s.contains("batches_by_tenant")),
            "{steps:#?}"
        );

        let listed: Vec<String> = BatchRow::recent(&conn, 50)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        // The query it replaced, which read every batch.
        let mut old = conn
            .prepare(
                "SELECT id FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY tenant ORDER BY seq DESC) AS nth FROM batches)
                 WHERE nth <= 50 OR status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
                 ORDER BY seq DESC",
            )
            .unwrap();
        let expected: Vec<String> = old
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // 50 of each tenant and the unfinished ones older than those.
        let unfinished_old = (1..=20_000 - 150)
            .filter(|s| s % 997 == 0 || s % 1999 == 0)
            .count();
        assert_eq!(listed.len(), 150 + unfinished_old);
        assert_eq!(listed, expected);
        assert_eq!(listed[0], "batch_20000");
        assert!(
            BatchRow::recent(
                &Connection::open_in_memory()
                    .and_then(|c| {
                        create_schema(&c)?;
                        Ok(c)
                    })
                    .unwrap(),
                50
            )
            .unwrap()
            .is_empty()
        );
    }
}
