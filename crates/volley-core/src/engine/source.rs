//! A source: anything that submits jobs to the engine — a `volley run` file, a gateway
//! batch, a proxied request, an experiment stage (SPEC §1, §13).
//!
//! Each source owns what is its own: a cancel, a cost cap, a share of the retry budget,
//! a priority, a store for its outcomes and its stats. Keys, limits, concurrency and
//! the ledger are the engine's, shared by every source. Stopping one source — cancelled
//! by its owner, or halted by its cost cap or a store that can keep no more — leaves
//! the others running.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::accounting::cost_cap::CostBudget;
use crate::defaults;
use crate::engine::admission::Admission;
use crate::engine::retry::RetryBudget;
use crate::provider::validate::ResponseCheck;
use crate::store::{Outcome, Store};

/// A source's number, unique within its engine; events carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SourceId(pub u64);

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "source#{}", self.0)
    }
}

/// Priority of an ordinary batch.
pub const BATCH_PRIORITY: u8 = 0;
/// Priority of requests a client waits on (the proxy): admitted ahead of batches,
/// which keep a tenth of admissions (see [`crate::engine::admission`]).
pub const INTERACTIVE_PRIORITY: u8 = 10;

/// What a source is: given to [`crate::engine::Engine::open`].
#[derive(Clone)]
pub struct SourceSpec {
    /// How it is named in events and reports (a file, a batch id).
    pub name: String,
    /// Higher is admitted first; see [`BATCH_PRIORITY`], [`INTERACTIVE_PRIORITY`].
    pub priority: u8,
    /// Stop sending once this many USD are spent (`--max-cost`, a batch's cap).
    pub max_cost: Option<f64>,
    /// What the user set `max_cost` as, named when it is reached.
    pub max_cost_name: &'static str,
    /// Retries after errors allowed, as a fraction of this source's requests.
    pub retry_budget_ratio: f64,
    /// What a successful reply must be (`--expect json`, `--json-schema`).
    pub check: Option<Arc<ResponseCheck>>,
    /// Where its finished requests are kept, before their tickets resolve.
    pub store: Arc<dyn Store>,
}

impl SourceSpec {
    /// A batch-priority source with the default retry budget, no cost cap, no check,
    /// keeping nothing beyond what its tickets return.
    pub fn new(name: impl Into<String>) -> SourceSpec {
        SourceSpec {
            name: name.into(),
            priority: BATCH_PRIORITY,
            max_cost: None,
            max_cost_name: "--max-cost",
            retry_budget_ratio: defaults::RETRY_BUDGET_RATIO,
            check: None,
            store: Arc::new(NoStore),
        }
    }
}

/// Keeps nothing: for sources that read their outcomes from tickets.
pub struct NoStore;

impl Store for NoStore {
    fn record(&self, _: &Outcome) -> bool {
        true
    }
}

/// Why a source stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Every submitted request finished.
    Completed,
    /// Its owner cancelled it (Ctrl-C), or the engine shut down; unfinished requests
    /// are left for a re-run.
    Interrupted,
    /// It could not go on (no key left, its cost cap, a store that can keep no more);
    /// unfinished requests are left for a re-run. The text says why.
    Halted(String),
}

/// Figures of one source, read at any time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SourceCounts {
    /// Requests admitted.
    pub submitted: u64,
    /// Finished with a success.
    pub succeeded: u64,
    /// Finished with a failure for good.
    pub failed: u64,
    /// Left unfinished because the source stopped.
    pub abandoned: u64,
    /// Lost to a failure inside volley (left for a re-run).
    pub lost: u64,
    /// Attempts sent.
    pub attempts: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub submitted: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub abandoned: AtomicU64,
    pub lost: AtomicU64,
    pub attempts: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SourceCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SourceCounts {
            submitted: get(&self.submitted),
            succeeded: get(&self.succeeded),
            failed: get(&self.failed),
            abandoned: get(&self.abandoned),
            lost: get(&self.lost),
            attempts: get(&self.attempts),
        }
    }
}

/// A count of running things that can be waited on until it is zero.
#[derive(Debug, Default)]
pub(crate) struct Running {
    count: AtomicU64,
    idle: Notify,
}

impl Running {
    pub fn enter(self: &Arc<Self>) -> RunningGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        RunningGuard {
            running: self.clone(),
        }
    }

    pub fn get(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// Resolves once nothing runs.
    pub async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.get() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One running thing; counted out when dropped.
#[derive(Debug)]
pub(crate) struct RunningGuard {
    running: Arc<Running>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.running.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.running.idle.notify_waiters();
        }
    }
}

/// Everything a source's requests share; held by the [`Source`] handles and by each of
/// its requests in flight.
pub(crate) struct SourceState {
    pub id: SourceId,
    pub name: Arc<str>,
    pub priority: u8,
    /// Cancelled when the source stops admitting: by its owner, a halt, or the engine's.
    pub stop: CancellationToken,
    /// Cancelled when the source itself stops (its owner, a halt of its own), not the
    /// engine: starts the source's grace period. The engine's stops time their own.
    pub own_stop: CancellationToken,
    /// Cancelled when the grace period after a stop is over: requests still running
    /// are dropped unfinished (left for a re-run).
    pub kill: CancellationToken,
    /// Why it halted on its own, if it did.
    pub halted: Mutex<Option<String>>,
    /// Set once its owner said no more jobs come.
    pub closed: AtomicBool,
    pub cost: CostBudget,
    pub budget: RetryBudget,
    pub check: Option<Arc<ResponseCheck>>,
    pub store: Arc<dyn Store>,
    pub running: Arc<Running>,
    pub counts: Counters,
    /// Cancelled when the last handle and request are gone: ends the grace watcher.
    pub gone: CancellationToken,
    /// The engine's admission gate, which forgets the source when it is gone.
    pub admission: Admission,
}

impl Drop for SourceState {
    fn drop(&mut self) {
        self.gone.cancel();
        self.admission.forget(self.id.0);
    }
}

impl SourceState {
    /// Stops admitting and winds the source down, saying why (once). True the first
    /// time, so the caller reports it once.
    pub fn halt(&self, why: &str) -> bool {
        let mut halted = self.halted.lock().unwrap_or_else(|p| p.into_inner());
        if halted.is_some() {
            return false;
        }
        *halted = Some(why.to_string());
        self.own_stop.cancel();
        self.stop.cancel();
        true
    }
}

/// A handle on an open source; cheap to clone.
#[derive(Clone)]
pub struct Source {
    pub(crate) state: Arc<SourceState>,
    /// The engine's reason for halting every source, if it did.
    pub(crate) engine_halted: Arc<Mutex<Option<String>>>,
}

impl Source {
    pub fn id(&self) -> SourceId {
        self.state.id
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Stops admitting this source's jobs; requests in flight get the engine's grace
    /// period to finish, then are dropped unfinished (left for a re-run). Other sources
    /// go on.
    pub fn cancel(&self) {
        self.state.own_stop.cancel();
        self.state.stop.cancel();
    }

    /// Whether it stopped admitting (cancelled, halted, or the engine stopped).
    pub fn is_stopped(&self) -> bool {
        self.state.stop.is_cancelled()
    }

    /// Its figures so far.
    pub fn counts(&self) -> SourceCounts {
        self.state.counts.snapshot()
    }

    /// Requests admitted and not yet ended.
    pub fn in_flight(&self) -> u64 {
        self.state.running.get()
    }

    /// Cost recorded against its cap so far (counted only when it has one).
    pub fn cost(&self) -> f64 {
        self.state.cost.total()
    }

    /// Keeps an outcome that never went through the engine (an input line that was no
    /// request) in the source's store. False when the store can keep no more.
    pub fn record(&self, outcome: &Outcome) -> bool {
        self.state.store.record(outcome)
    }

    /// Says no more jobs come, waits until every admitted request has ended (or, after
    /// a stop, until the grace period is over), and says why it stopped.
    pub async fn finish(&self) -> StopReason {
        self.state.closed.store(true, Ordering::SeqCst);
        self.state.running.idle().await;
        self.stop_reason()
    }

    /// Why it stopped, as far as is known now.
    pub fn stop_reason(&self) -> StopReason {
        let own = self
            .state
            .halted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let engine = self
            .engine_halted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let lost = self.state.counts.lost.load(Ordering::Relaxed);
        if let Some(why) = own.or(engine) {
            StopReason::Halted(why)
        } else if self.state.stop.is_cancelled() {
            StopReason::Interrupted
        } else if lost > 0 {
            StopReason::Halted(format!(
                "{lost} request(s) failed inside volley and were not recorded (named above); re-run to send them"
            ))
        } else {
            StopReason::Completed
        }
    }
}

/// A request the engine would not take: the source had stopped. The job comes back,
/// so the caller can leave it for a re-run.
#[derive(Debug)]
pub struct NotAdmitted(pub crate::input::job::Job);

impl std::fmt::Display for NotAdmitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request {} not admitted: its source has stopped",
            self.0.custom_id
        )
    }
}

impl std::error::Error for NotAdmitted {}

/// A request that ended without an outcome: its source stopped first (cancelled,
/// halted, shut down, or a failure inside volley); a re-run sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request was left unfinished: its source stopped before it ended")]
pub struct Unfinished;

/// Resolves to a submitted request's outcome once it has been handed to its source's
/// store (a store that could not keep it halts the source).
#[derive(Debug)]
pub struct Ticket {
    pub(crate) rx: oneshot::Receiver<Outcome>,
}

impl std::future::IntoFuture for Ticket {
    type Output = Result<Outcome, Unfinished>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.rx.await.map_err(|_| Unfinished) })
    }
}

/// Kills a source's requests still running `grace` after the source itself stopped;
/// ends quietly once the source is gone.
pub(crate) fn watch_grace(
    stop: CancellationToken,
    kill: CancellationToken,
    gone: CancellationToken,
    grace: Duration,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = gone.cancelled() => {}
            _ = stop.cancelled() => {
                tokio::select! {
                    _ = gone.cancelled() => {}
                    _ = tokio::time::sleep(grace) => kill.cancel(),
                }
            }
        }
    });
}
