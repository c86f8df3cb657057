//! The live dashboard (`GET /`): one self-contained page that polls
//! `GET /dashboard/state` once a second. The state is one snapshot the [`Board`]
//! rebuilds every second from the store and the engine's figures, whatever the load
//! and however many pages are open; its charts are drawn here, on the server, by
//! volley-charts (the code path of `volley report --html`), and the page swaps them in.
//!
//! Who may see what: the page itself holds no data and is served to anyone; the state
//! needs the gateway's token like `/v1` (see [`crate::auth`]), and a tenant's token
//! shows that tenant's batches, proxied calls and their failures only. Totals and the
//! throughput and latency charts are the shared engine's, shown to every valid token;
//! models and lanes are too on a gateway of one tenant, but a gateway with tenants
//! (`--tokens-file`) shows a tenant no model name (the engine counts models for all
//! tenants together): one row for all models, and lanes by their key label alone.
//! Nothing in it is a key (lanes are named by key labels, `key#1`) or a token.
//!
//! The same board and page serve `volley run --dashboard` and `volley experiment run
//! --dashboard` ([`serve_dashboard`]): what differs is the [`Feed`] of rows, and that
//! a run's dashboard has no token and no tenants (it listens where its user says).

pub mod board;
pub mod failures;
mod page;
pub mod routes;
mod standalone;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::time::{Instant, MissedTickBehavior};
use volley_core::limits::lane::LaneView;
use volley_core::observe::stats::RunStats;

use crate::App;
use crate::db::DbError;
use crate::rows::BatchRow;
use board::{Inputs, Samples};
pub use board::{Published, SourceRow};
pub use failures::Failures;
pub use standalone::{Dashboard, serve_dashboard};

/// Why a feed could not give this second's rows (the snapshot keeps the last ones).
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("the store: {0}")]
    Store(#[from] DbError),
}

/// A feed's rows for this second, as a future: the gateway reads them from its store.
pub type Rows<'a> = Pin<Box<dyn Future<Output = Result<Vec<SourceRow>, FeedError>> + Send + 'a>>;

/// What a dashboard shows of the process it runs in: the gateway (its batches and
/// proxy), a `volley run`, an experiment's stages. The board asks it once a second;
/// everything else (samples, charts, failures, the JSON) is the board's, the same for
/// every feed.
pub trait Feed: Send + Sync {
    /// The table's rows, in the order shown.
    fn sources(&self) -> Rows<'_>;
    /// Everything the engine did: the totals, the models, the latency.
    fn total(&self) -> &RunStats;
    /// The concurrency limit configured, shown until the engine reports its own.
    fn concurrency(&self) -> Option<u64>;
    /// Every lane of the engine as it stands now.
    fn lanes(&self) -> Vec<LaneView>;
}

/// Builds and keeps the dashboard's snapshot.
pub struct Board {
    current: RwLock<Arc<Published>>,
    samples: Mutex<Samples>,
    seq: AtomicU64,
    failures: Arc<Failures>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Board {
    /// `failures` must observe the engine the feed shows.
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

    /// Reads everything the snapshot shows from `feed` and publishes a new one.
    pub async fn refresh(&self, feed: &dyn Feed) -> Result<(), FeedError> {
        let sources = feed.sources().await?;
        self.failures.learn(
            sources
                .iter()
                .map(|s| (Arc::from(s.id.as_str()), s.tenant.clone())),
        );
        let stats = feed.total();
        let total = stats.snapshot();
        let now = Instant::now();
        let samples = {
            let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            samples.record(now, total.finished(), total.rate_limited);
            samples.points(now)
        };
        let state = board::build(Inputs {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            sources,
            latency: stats.latency_buckets(board::latency_bounds()),
            total,
            concurrency: feed.concurrency(),
            lanes: feed.lanes(),
            errors: self.failures.latest(),
            samples,
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Published::new(state));
        Ok(())
    }

    /// Calls `tick` every [`board::TICK`] (the first one a tick from now) until it
    /// answers false or [`Board::stop`] is called.
    fn keep_fresh<F, Fut>(&self, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(board::TICK);
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                if !tick().await {
                    break;
                }
            }
        });
        if let Some(old) = self
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// Builds the gateway's first snapshot, then a new one every [`board::TICK`] until
    /// [`Board::stop`] (or the gateway is dropped: the task holds it weakly).
    pub(crate) async fn start(app: &App) {
        if let Err(e) = app.board.refresh(app).await {
            tracing::error!("dashboard: {e}");
        }
        let weak = Arc::downgrade(&app.inner);
        app.board.keep_fresh(move || {
            let inner = weak.upgrade();
            async move {
                let Some(inner) = inner else { return false };
                let app = App { inner };
                if let Err(e) = app.board.refresh(&app).await {
                    tracing::error!("dashboard: {e}");
                }
                true
            }
        });
    }

    /// Stops rebuilding the snapshot.
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// The gateway's rows: each tenant's recent and running batches from the store (their
/// counts exact), with the pace of those still running, then each tenant's proxy.
impl Feed for App {
    fn sources(&self) -> Rows<'_> {
        Box::pin(async move {
            let rows = self
                .db
                .read(|c| BatchRow::recent(c, board::RECENT_PER_TENANT))
                .await?;
            let live: HashMap<Arc<str>, _> = self
                .stats
                .snapshots()
                .into_iter()
                .map(|(_, name, snapshot)| (name, snapshot))
                .collect();
            let mut sources: Vec<SourceRow> = rows
                .into_iter()
                .map(|row| board::batch_row(row, &live))
                .collect();
            sources.extend(
                self.proxy
                    .sources()
                    .into_iter()
                    .filter_map(|(tenant, source)| {
                        let stats = self.stats.source(source.id())?;
                        Some(SourceRow::proxy(tenant, &stats.stats.snapshot()))
                    }),
            );
            Ok(sources)
        })
    }

    fn total(&self) -> &RunStats {
        self.stats.total()
    }

    fn concurrency(&self) -> Option<u64> {
        self.config.concurrency.map(|c| c as u64)
    }

    fn lanes(&self) -> Vec<LaneView> {
        self.engine
            .upstreams()
            .iter()
            .flat_map(|u| u.lanes.views())
            .collect()
    }
}
