//! The gateway's store: one SQLite database (WAL) in the data directory, holding files,
//! batches, each finished request of a batch, and idempotency keys.
//!
//! SQLite calls block, so none runs on the runtime's workers. Every write goes to one
//! writer thread, which runs what is queued in one transaction and commits it (group
//! commit: a thousand results a second cost a few commits, not a thousand); reads run
//! on a small pool of read connections under `spawn_blocking`, which WAL lets proceed
//! beside the writer. A write's caller learns of it only once it is committed, so
//! anything it then tells a client is on disk: after a SIGKILL, what was answered is
//! still there.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::Connection;
use tokio::sync::oneshot;

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("SQLite: {0}")]
    Sqlite(Arc<str>),
    #[error("the store's writer has stopped")]
    Closed,
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> DbError {
        DbError::Sqlite(Arc::from(e.to_string()))
    }
}

/// One unit of work for the writer: run inside the group's transaction (given the
/// connection), or not run at all when no transaction could begin (given `None`), then
/// told whether the group committed.
type Work = Box<dyn FnOnce(Option<&Connection>) -> Committed + Send>;
/// Called once the group a write ran in has committed (or failed to).
type Committed = Box<dyn FnOnce(Result<(), DbError>) + Send>;

/// Writes queued at most in one transaction: a group that never ends would keep its
/// first caller waiting.
const GROUP: usize = 1024;
/// Read connections: enough for a few slow reads (an output file) beside quick ones.
const READERS: usize = 4;

/// The database: cheap to clone.
#[derive(Clone)]
pub struct Db {
    writer: mpsc::Sender<Work>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: Arc<AtomicUsize>,
}

impl Db {
    /// Opens (creating) the database at `path`, sets it up and starts its writer.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA busy_timeout = 10000;",
        )?;
        crate::rows::create_schema(&conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            reader.execute_batch("PRAGMA busy_timeout = 10000; PRAGMA query_only = 1;")?;
            readers.push(Mutex::new(reader));
        }
        let (tx, rx) = mpsc::channel::<Work>();
        std::thread::Builder::new()
            .name("volley-store".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|e| DbError::Sqlite(Arc::from(format!("cannot start the writer: {e}"))))?;
        Ok(Db {
            writer: tx,
            readers: Arc::new(readers),
            next_reader: Arc::default(),
        })
    }

    /// Runs `f` on the writer and returns its result once it is committed. A failing
    /// `f` is rolled back alone; the rest of its group commits.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DbError> {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let result = conn.map(|conn| in_savepoint(conn, f));
            Box::new(move |committed: Result<(), DbError>| {
                let _ = tx.send(committed.and_then(|()| result.unwrap_or(Err(DbError::Closed))));
            })
        });
        self.writer.send(work).map_err(|_| DbError::Closed)?;
        rx.await.map_err(|_| DbError::Closed)?
    }

    /// Queues `f` on the writer without waiting for it: for records whose loss in a
    /// crash only means the request is sent again. False once the writer has stopped.
    pub fn write_detached(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> bool {
        let work: Work = Box::new(move |conn| {
            if let Some(Err(e)) = conn.map(|conn| in_savepoint(conn, f)) {
                tracing::error!("store: a record could not be written: {e}");
            }
            Box::new(|committed: Result<(), DbError>| {
                if let Err(e) = committed {
                    tracing::error!("store: {e}");
                }
            })
        });
        self.writer.send(work).is_ok()
    }

    /// Waits until every write queued before it is committed.
    pub async fn flush(&self) -> Result<(), DbError> {
        self.write(|_| Ok(())).await
    }

    /// Runs `f` on a read connection, off the runtime's workers.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DbError> {
        let readers = self.readers.clone();
        let first = self.next_reader.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            // A free reader if there is one, else wait for the next in turn.
            let n = readers.len();
            let guard = (0..n)
                .find_map(|i| readers[(first + i) % n].try_lock().ok())
                .unwrap_or_else(|| readers[first % n].lock().unwrap_or_else(|p| p.into_inner()));
            f(&guard).map_err(DbError::from)
        })
        .await
        .map_err(|e| DbError::Sqlite(Arc::from(format!("a read failed: {e}"))))?
    }
}

/// Runs `f` so that its failure undoes only its own changes.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, DbError> {
    conn.execute_batch("SAVEPOINT work")?;
    match f(conn) {
        Ok(v) => {
            conn.execute_batch("RELEASE work")?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO work; RELEASE work");
            Err(e.into())
        }
    }
}

/// How long the writer keeps trying to begin a transaction while something else holds
/// the database (another process, a backup tool) before it fails what is queued.
const BEGIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// The writer: takes what is queued, runs it in one transaction, commits, tells each
/// caller; ends when every handle is gone. Nothing runs outside a transaction: while
/// one cannot begin, the queue waits; if it never can, what is queued fails unrun.
fn write_loop(conn: Connection, rx: mpsc::Receiver<Work>) {
    while let Ok(first) = rx.recv() {
        let mut began = begin(&conn);
        let mut done: Vec<Committed> = Vec::new();
        let mut next = Some(first);
        while let Some(work) = next.take() {
            // An error SQLite answers by rolling the whole transaction back (a full
            // disk) ends it: the rest of the group must not run outside it.
            let open = began.is_ok() && !conn.is_autocommit();
            done.push(work(open.then_some(&conn)));
            if began.is_ok() && conn.is_autocommit() {
                began = Err(DbError::Sqlite(Arc::from(
                    "the transaction was rolled back by an earlier error in its group",
                )));
            }
            if done.len() < GROUP {
                next = rx.try_recv().ok();
            }
        }
        let committed = began.and_then(|()| conn.execute_batch("COMMIT").map_err(DbError::from));
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            if let Err(e) = &committed {
                tracing::error!("store: a group of writes failed: {e}");
            }
        }
        for tell in done {
            tell(committed.clone());
        }
    }
}

/// Begins a write transaction, waiting out a database another process has locked
/// (each try waits the connection's busy timeout).
fn begin(conn: &Connection) -> Result<(), DbError> {
    let started = std::time::Instant::now();
    loop {
        match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(()),
            // Only a lock is waited out: a read-only or broken database fails at once.
            Err(e)
                if started.elapsed() < BEGIN_PATIENCE
                    && matches!(
                        e.sqlite_error_code(),
                        Some(
                            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                        )
                    ) =>
            {
                tracing::warn!("store: waiting to write: {e}");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_commit_and_a_failing_one_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.sqlite")).unwrap();
        db.write(|c| c.execute_batch("CREATE TABLE t(x INTEGER PRIMARY KEY)"))
            .await
            .unwrap();
        let ok = db.write(|c| c.execute("INSERT INTO t VALUES (1)", []));
        let bad = db.write(|c| {
            c.execute("INSERT INTO t VALUES (2)", [])?;
            c.execute("INSERT INTO t VALUES (1)", [])
        });
        let (ok, bad) = tokio::join!(ok, bad);
        assert_eq!(ok.unwrap(), 1);
        assert!(bad.is_err());
        let rows: Vec<i64> = db
            .read(|c| {
                let mut s = c.prepare("SELECT x FROM t ORDER BY x")?;
                s.query_map([], |r| r.get(0))?.collect()
            })
            .await
            .unwrap();
        assert_eq!(rows, [1]);
    }

    #[tokio::test]
    async fn a_write_waits_for_a_lock_another_process_holds_and_then_lands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sqlite");
        let db = Db::open(&path).unwrap();
        db.write(|c| c.execute_batch("CREATE TABLE t(x INTEGER)"))
            .await
            .unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let write = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(|c| c.execute("INSERT INTO t VALUES (7)", []))
                    .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!write.is_finished(), "it wrote through another's lock");
        other.execute_batch("COMMIT").unwrap();
        assert_eq!(write.await.unwrap().unwrap(), 1);
        let n: i64 = db
            .read(|c| c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
