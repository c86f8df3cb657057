//! `--dashboard ADDR` for `volley run` and `volley experiment run`: the live page of
//! `volley serve` (volley-server's dashboard, the same board and page), fed by this
//! process's engine. A run has one row (`run`); an experiment has two per experiment,
//! its answers (`NAME`) and its judgements (`NAME/judge`), as the pipeline names its
//! sources.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use volley_core::limits::lane::LaneView;
use volley_core::observe::events::Observer;
use volley_core::observe::sources::StatsBySource;
use volley_core::observe::stats::RunStats;
use volley_core::runner::LaneWatch;
use volley_server::dashboard::{Dashboard, Failures, Feed, Rows, SourceRow, serve_dashboard};

use crate::cli::DashboardArgs;

/// A run's rows have no tenant: its dashboard shows everything.
const NO_TENANT: &str = "";

/// What every command's feed shares: the lanes once the engine is connected, the
/// concurrency flag, and whether the run is over.
struct Common {
    lanes: LaneWatch,
    concurrency: u64,
    /// `None` while running; then the sources that stopped short (a run: itself).
    ended: Mutex<Option<Vec<String>>>,
}

impl Common {
    fn status(&self, id: &str) -> &'static str {
        match &*self.ended.lock().unwrap_or_else(|p| p.into_inner()) {
            None => "in_progress",
            Some(stopped) if stopped.iter().any(|s| s == id) => "stopped",
            Some(_) => "completed",
        }
    }
}

/// `volley run`'s one row, `run`: this run's requests.
struct RunFeed {
    common: Arc<Common>,
    stats: Arc<RunStats>,
}

impl Feed for RunFeed {
    fn sources(&self) -> Rows<'_> {
        let figures = self.stats.snapshot();
        // Invalid lines filed under --skip-invalid count as failed, beyond `total`.
        let total = figures.total.max(figures.finished());
        let row = SourceRow::live(
            RUN.to_string(),
            "run",
            self.common.status(RUN),
            total,
            &figures,
            Arc::from(NO_TENANT),
        );
        Box::pin(std::future::ready(Ok(vec![row])))
    }

    fn total(&self) -> &RunStats {
        &self.stats
    }

    fn concurrency(&self) -> Option<u64> {
        Some(self.common.concurrency)
    }

    fn lanes(&self) -> Vec<LaneView> {
        self.common.lanes.views()
    }
}

/// The row id of `volley run`.
const RUN: &str = "run";

/// An experiment run's rows: each stage's figures, from the engine's per-source stats.
/// A stage's total is what was handed to it so far (an experiment's cells are counted
/// run-wide, not per stage), so it grows while answers arrive for the judge.
struct StagesFeed {
    common: Arc<Common>,
    stats: Arc<StatsBySource>,
    /// (source name, kind), in the order shown.
    stages: Vec<(String, &'static str)>,
}

impl Feed for StagesFeed {
    fn sources(&self) -> Rows<'_> {
        let figures = self.stats.snapshots();
        let rows = self
            .stages
            .iter()
            .map(|(name, kind)| {
                let snapshot = figures
                    .iter()
                    .rev()
                    .find(|(_, n, _)| **n == **name)
                    .map(|(.., s)| s.clone())
                    .unwrap_or_else(|| RunStats::new().snapshot());
                let total = snapshot.finished() + snapshot.pending;
                SourceRow::live(
                    name.clone(),
                    kind,
                    self.common.status(name),
                    total,
                    &snapshot,
                    Arc::from(NO_TENANT),
                )
            })
            .collect();
        Box::pin(std::future::ready(Ok(rows)))
    }

    fn total(&self) -> &RunStats {
        self.stats.total()
    }

    fn concurrency(&self) -> Option<u64> {
        Some(self.common.concurrency)
    }

    fn lanes(&self) -> Vec<LaneView> {
        self.common.lanes.views()
    }
}

/// A dashboard being served for a run or an experiment.
pub struct Live {
    served: Dashboard,
    common: Arc<Common>,
    linger: f64,
}

/// What the engine's event bus must carry for the dashboard, in this order: the
/// per-source figures, then the failures that are named from them.
pub type Observers = Vec<Arc<dyn Observer>>;

impl Live {
    /// `volley run --dashboard`: binds before the run starts (a taken port is an error
    /// up front) and serves its one row. `None` without `--dashboard`.
    pub async fn run(
        args: &DashboardArgs,
        stats: Arc<RunStats>,
        lanes: LaneWatch,
        concurrency: usize,
    ) -> anyhow::Result<Option<(Live, Observers)>> {
        Live::start(args, lanes, concurrency, |common, _| {
            Arc::new(RunFeed { common, stats })
        })
        .await
    }

    /// `volley experiment run --dashboard`: one row per stage of `stages` (source name,
    /// kind). `None` without `--dashboard`.
    pub async fn stages(
        args: &DashboardArgs,
        stages: Vec<(String, &'static str)>,
        lanes: LaneWatch,
        concurrency: usize,
    ) -> anyhow::Result<Option<(Live, Observers)>> {
        Live::start(args, lanes, concurrency, |common, stats| {
            Arc::new(StagesFeed {
                common,
                stats,
                stages,
            })
        })
        .await
    }

    /// Binds `--dashboard` and serves the feed `feed` makes of the shared state and the
    /// per-source figures (which the engine must be given, with the failures, as
    /// observers: the second value returned).
    async fn start(
        args: &DashboardArgs,
        lanes: LaneWatch,
        concurrency: usize,
        feed: impl FnOnce(Arc<Common>, Arc<StatsBySource>) -> Arc<dyn Feed>,
    ) -> anyhow::Result<Option<(Live, Observers)>> {
        let Some(addr) = args.dashboard else {
            return Ok(None);
        };
        let common = Common::new(lanes, concurrency);
        let by_source = Arc::new(StatsBySource::new());
        let feed = feed(common.clone(), by_source.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--dashboard {addr}: cannot listen"))?;
        let failures = Arc::new(Failures::new(by_source.clone()));
        let served = serve_dashboard(listener, feed, failures.clone())
            .await
            .with_context(|| format!("--dashboard {addr}"))?;
        // The address actually bound: port 0 asked for any free one.
        tracing::info!("dashboard: http://{}/", served.addr());
        let live = Live {
            served,
            common,
            linger: args.dashboard_linger,
        };
        Ok(Some((live, vec![by_source, failures])))
    }

    /// The run is over: its rows say `completed`, or `stopped` for those in
    /// `stopped`, from now on (published at once, not at the next tick).
    pub async fn end(&self, stopped: Vec<String>) {
        *self.common.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(stopped);
        self.served.refresh().await;
    }

    /// Says a run (not its stages) stopped short.
    pub fn run_stopped() -> Vec<String> {
        vec![RUN.to_string()]
    }

    /// Keeps serving for `--dashboard-linger` unless `stop` resolves first (Ctrl-C).
    pub async fn linger(self, stop: impl std::future::Future<Output = ()>) {
        let url = format!("http://{}/", self.served.addr());
        crate::linger::linger("dashboard", &url, self.linger, stop).await;
        self.served.shutdown();
    }
}

impl Common {
    fn new(lanes: LaneWatch, concurrency: usize) -> Arc<Common> {
        Arc::new(Common {
            lanes,
            concurrency: concurrency as u64,
            ended: Mutex::new(None),
        })
    }
}
