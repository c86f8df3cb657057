//! The live dashboard (`GET /`): one self-contained page that polls
//! `GET /dashboard/state` once a second. The state is one snapshot the [`Board`]
//! rebuilds every second from the store and the engine's figures, whatever the load
//! and however many pages are open; its charts are drawn here, on the server, by
//! volley-charts (the code path of `volley report --html`), and the page swaps them in.
//!
//! Who may see what: the page itself holds no data and is served to anyone; the state
//! needs the gateway's token like `/v1` (see [`crate::auth`]), and a tenant's token
//! shows that tenant's batches and proxied calls only. Lanes, totals, models and
//! charts are the shared engine's, shown to every valid token. Nothing in it is a
//! key (lanes are named by key labels, `key#1`) or a token.

pub mod board;
pub mod failures;
mod page;
pub mod routes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::time::{Instant, MissedTickBehavior};

use crate::App;
use crate::db::DbError;
use crate::rows::BatchRow;
pub use board::Published;
use board::{Inputs, Samples};
pub use failures::Failures;

/// Builds and keeps the dashboard's snapshot.
pub struct Board {
    current: RwLock<Arc<Published>>,
    samples: Mutex<Samples>,
    seq: AtomicU64,
    failures: Arc<Failures>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Board {
    /// `failures` must observe the gateway's engine.
    pub fn new(failures: Arc<Failures>) -> Board {
        Board {
            current: RwLock::default(),
            samples: Mutex::default(),
            seq: AtomicU64::new(0),
            failures,
            task: Mutex::new(None),
        }
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Published> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Builds the first snapshot, then a new one every [`board::TICK`] until
    /// [`Board::stop`] (or the gateway is dropped: the task holds it weakly).
    pub(crate) async fn start(app: &App) {
        if let Err(e) = refresh(app).await {
            tracing::error!("dashboard: {e}");
        }
        let weak = Arc::downgrade(&app.inner);
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(board::TICK);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                if let Err(e) = refresh(&App { inner }).await {
                    tracing::error!("dashboard: {e}");
                }
            }
        });
        *app.board.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Stops rebuilding the snapshot.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Reads everything the snapshot shows and publishes a new one.
async fn refresh(app: &App) -> Result<(), DbError> {
    let rows = app
        .db
        .read(|c| BatchRow::recent(c, board::RECENT_PER_TENANT))
        .await?;
    let board = &app.board;
    let total = app.stats.total().snapshot();
    let now = Instant::now();
    let samples = {
        let mut samples = board.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.record(now, total.finished(), total.rate_limited);
        samples.points(now)
    };
    let live: HashMap<Arc<str>, _> = app
        .stats
        .snapshots()
        .into_iter()
        .map(|(_, name, snapshot)| (name, snapshot))
        .collect();
    let proxies = app
        .proxy
        .sources()
        .into_iter()
        .filter_map(|(tenant, source)| {
            let stats = app.stats.source(source.id())?;
            Some((tenant, stats.stats.snapshot()))
        })
        .collect();
    let state = board::build(Inputs {
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        seq: board.seq.fetch_add(1, Ordering::Relaxed) + 1,
        rows,
        live,
        proxies,
        latency: app.stats.total().latency_buckets(board::latency_bounds()),
        total,
        concurrency: app.config.concurrency.map(|c| c as u64),
        lanes: app
            .engine
            .upstreams()
            .iter()
            .flat_map(|u| u.lanes.views())
            .collect(),
        errors: board.failures.latest(),
        samples,
    });
    *board.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Published::new(state));
    Ok(())
}
