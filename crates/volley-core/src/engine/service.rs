//! The engine as a long-lived service (SPEC §13): one value, cheap to clone, that many
//! sources submit to at once, sharing its keys, limits, concurrency and event stream.
//!
//! Two gates bound the work: at most `concurrency × ADMISSION_FACTOR` requests are
//! admitted (in flight, waiting for a key, or sleeping in backoff), shared fairly
//! between sources ([`crate::engine::admission`]), and at most `concurrency` attempts
//! are on the wire ([`crate::engine::concurrency`]). What happens to one admitted
//! request is [`crate::engine::request`]'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::accounting::cost_cap::CostBudget;
use crate::accounting::pricing::Pricing;
use crate::defaults;
use crate::engine::admission::{Admission, Admit};
use crate::engine::concurrency::Concurrency;
use crate::engine::retry::{RetryBudget, RetryPolicy};
use crate::engine::source::{
    Counters, NotAdmitted, Running, RunningGuard, Source, SourceId, SourceSpec, SourceState,
    Ticket, watch_grace,
};
use crate::input::job::Job;
use crate::limits::gate::{Learned, Refused};
use crate::limits::lanes::LanePool;
use crate::observe::events::{Event, EventBus};
use crate::provider::classify::{Classified, Reason, Verdict};
use crate::provider::upstream::Upstream;
use crate::store::Outcome;

/// How the engine behaves, whatever the source; built from flags by the binary.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Attempts on the wire at once.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// After a source stops, how long its in-flight attempts may take to finish.
    pub grace: Duration,
    /// Adapt concurrency to 429s and timeouts (AIMD, `concurrency` as the ceiling):
    /// for engines that know no limit of their own.
    pub adaptive: bool,
    /// Prices for replies that carry no `usage.cost` (`--pricing`).
    pub pricing: Option<Arc<Pricing>>,
    /// Requests clients wait on (the gateway's proxy) take connection slots ahead of
    /// batch requests. Each batch attempt then pays a hand-off, so an engine no client
    /// waits on (`volley run`) leaves it off.
    pub clients_first: bool,
    /// Tests only: the custom_id of a request whose task panics just before it sends,
    /// to prove that a panicking task loses no request. The binary sets it from
    /// `VOLLEY_DEBUG_PANIC_ON` in debug builds only.
    #[doc(hidden)]
    pub debug_panic_on: Option<Arc<str>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            concurrency: defaults::CONCURRENCY,
            retry: RetryPolicy::default(),
            timeout: defaults::TIMEOUT,
            grace: defaults::SHUTDOWN_GRACE,
            adaptive: false,
            pricing: None,
            clients_first: false,
            debug_panic_on: None,
        }
    }
}

/// The engine: open sources on it, submit their jobs, shut it down.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// What every request of every source shares.
pub(crate) struct Shared {
    pub config: EngineConfig,
    /// Where jobs go: a job names one by index.
    pub upstreams: Vec<Upstream>,
    pub events: EventBus,
    /// The wire gate: attempts in flight, adapted when no limit is known.
    pub wire: Concurrency,
    admission: Admission,
    /// Cancelled when every source must stop: a shutdown, or no key left.
    halt: CancellationToken,
    /// Why the engine halted on its own, if it did.
    halted: Arc<Mutex<Option<String>>>,
    /// Cancelled when a shutdown's grace period is over.
    kill: CancellationToken,
    /// Requests of every source not yet ended.
    running: Arc<Running>,
    next_source: AtomicU64,
}

impl Engine {
    /// An engine sending to `upstreams` (a job's `upstream` is an index into them).
    pub fn new(config: EngineConfig, upstreams: Vec<Upstream>, events: EventBus) -> Engine {
        let places = config.concurrency.max(1) * defaults::ADMISSION_FACTOR;
        Engine {
            shared: Arc::new(Shared {
                wire: {
                    let wire = Concurrency::new(config.concurrency, config.adaptive);
                    if config.clients_first {
                        wire.with_urgent_first()
                    } else {
                        wire
                    }
                },
                admission: Admission::new(places),
                config,
                upstreams,
                events,
                halt: CancellationToken::new(),
                halted: Arc::new(Mutex::new(None)),
                kill: CancellationToken::new(),
                running: Arc::new(Running::default()),
                next_source: AtomicU64::new(1),
            }),
        }
    }

    /// The upstreams every source shares: their keys and lanes.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.shared.upstreams
    }

    /// The event stream every source reports on.
    pub fn events(&self) -> &EventBus {
        &self.shared.events
    }

    /// Opens a source. It stops when its owner cancels it, when it halts on its own
    /// (its cost cap, its store), or when the engine stops.
    pub fn open(&self, spec: SourceSpec) -> Source {
        let shared = &self.shared;
        let id = SourceId(shared.next_source.fetch_add(1, Ordering::Relaxed));
        let state = SourceState {
            id,
            name: Arc::from(spec.name.as_str()),
            priority: spec.priority,
            stop: shared.halt.child_token(),
            own_stop: CancellationToken::new(),
            kill: shared.kill.child_token(),
            halted: Mutex::new(None),
            closed: Default::default(),
            cost: CostBudget::named(spec.max_cost, spec.max_cost_name),
            budget: RetryBudget::new(spec.retry_budget_ratio),
            check: spec.check,
            store: spec.store,
            running: Arc::new(Running::default()),
            counts: Counters::default(),
            gone: CancellationToken::new(),
            admission: shared.admission.clone(),
        };
        watch_grace(
            state.own_stop.clone(),
            state.kill.clone(),
            state.gone.clone(),
            shared.config.grace,
        );
        shared.events.emit_from(
            id,
            Event::SourceOpened {
                name: state.name.clone(),
                priority: spec.priority,
            },
        );
        Source {
            state: Arc::new(state),
            engine_halted: shared.halted.clone(),
        }
    }

    /// Admits a job of `source`, waiting for its fair share of the engine; the ticket
    /// resolves to its outcome once it has been handed to the source's store. A source
    /// that has stopped, or whose owner called [`Source::finish`], admits nothing: the
    /// job comes back.
    pub async fn submit(&self, source: &Source, job: Job) -> Result<Ticket, NotAdmitted> {
        let state = &source.state;
        if state.stop.is_cancelled() || state.closed.load(Ordering::SeqCst) {
            return Err(NotAdmitted(job));
        }
        let admit = tokio::select! {
            biased;
            _ = state.stop.cancelled() => return Err(NotAdmitted(job)),
            admit = self.shared.admission.enter(state.id.0, state.priority) => admit,
        };
        let held = Holds {
            _admit: admit,
            _engine: self.shared.running.enter(),
            _source: state.running.enter(),
        };
        // Counted as running before this check, so a `finish` that closed the source
        // meanwhile either waits for this request or is seen here.
        if state.closed.load(Ordering::SeqCst) {
            return Err(NotAdmitted(job));
        }
        Counters::add(&state.counts.submitted);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(self.shared.clone().process(state.clone(), job, tx, held));
        Ok(Ticket { rx })
    }

    /// Stops every source: nothing more is admitted, requests in flight get `grace` to
    /// finish and are then dropped unfinished (left for a re-run).
    pub async fn shutdown(&self, grace: Duration) {
        let shared = &self.shared;
        shared.halt.cancel();
        tokio::select! {
            _ = shared.running.idle() => {}
            _ = tokio::time::sleep(grace) => {}
        }
        shared.kill.cancel();
        shared.running.idle().await;
    }

    /// Why the engine stopped sending on its own (no key left), if it did.
    pub fn halted(&self) -> Option<String> {
        self.shared
            .halted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests of every source admitted and not yet ended.
    pub fn in_flight(&self) -> u64 {
        self.shared.running.get()
    }
}

/// What an admitted request holds until it ends: its place, and its count in the
/// engine's and its source's running requests.
pub(crate) struct Holds {
    _admit: Admit,
    _engine: RunningGuard,
    _source: RunningGuard,
}

impl Shared {
    /// Winds one source down, saying why (once).
    pub fn stop_source(&self, source: &SourceState, why: &str) {
        if source.halt(why) {
            self.events.emit_from(
                source.id,
                Event::Stopping {
                    reason: why.to_string(),
                },
            );
        }
    }

    /// Winds every source down, saying why (once): nothing can be sent any more.
    pub fn stop_all(&self, why: &str) {
        let mut halted = self.halted.lock().unwrap_or_else(|p| p.into_inner());
        if halted.is_none() {
            self.events.emit(Event::Stopping {
                reason: why.to_string(),
            });
            *halted = Some(why.to_string());
            self.halt.cancel();
            // In flight, requests get the grace period to finish, as after a cancel.
            let (kill, grace) = (self.kill.clone(), self.config.grace);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                kill.cancel();
            });
        }
    }

    /// Fills in the cost of an attempt whose reply reported none, from `--pricing`.
    pub fn price(&self, source: &SourceState, outcome: &mut Classified, model: Option<&str>) {
        let Some(usage) = outcome.usage.as_mut().filter(|u| u.cost.is_none()) else {
            return;
        };
        usage.cost = match (&self.config.pricing, model) {
            (Some(pricing), Some(model)) => pricing.cost(model, usage),
            _ => None,
        };
        if usage.cost.is_none() && source.cost.report_unknown() {
            self.events.emit_from(
                source.id,
                Event::CostUnknown {
                    model: model.map(Arc::from),
                },
            );
        }
    }

    /// True once the source's cost cap is (about to be) reached; halts the source the
    /// first time, so that none of its requests starts another attempt.
    pub fn over_cost_cap(&self, source: &SourceState) -> bool {
        match source.cost.exhausted() {
            Some(why) => {
                self.stop_source(source, &why);
                true
            }
            None => false,
        }
    }

    /// AIMD: a success may add a slot; a 429 or a timeout halves the slots.
    pub fn adapt_concurrency(&self, outcome: &Classified) {
        let changed = match (outcome.verdict, outcome.reason) {
            (Verdict::Success, _) => self.wire.on_success(),
            (Verdict::RateLimited, _) | (_, Some(Reason::Timeout)) => {
                self.wire.on_overload(Instant::now())
            }
            _ => None,
        };
        if let Some(limit) = changed {
            self.events.emit(Event::ConcurrencyChanged { limit });
        }
    }

    /// Acts on what a reply's headers taught its key: a new limit is reported; nothing
    /// left until a reset beyond `--max-wait` is a spent quota (the key leaves the pool,
    /// exactly like a long Retry-After); a shorter one is waited out — by pausing the key
    /// when no announced limit paces it, else by the pace itself.
    pub fn apply_learned(&self, lanes: &LanePool, lane: usize, learned: Learned) {
        if let Some((requests_per_minute, tokens_per_minute)) = learned.changed {
            self.events.emit(Event::LimitLearned {
                key: lanes.lane(lane).label.clone(),
                requests_per_minute,
                tokens_per_minute,
            });
        }
        let Some(wait) = learned.exhausted_for else {
            return;
        };
        if wait > self.config.retry.max_wait {
            self.retire_spent(
                lanes,
                lane,
                "the provider says nothing of the key's limit remains for",
                wait,
            );
        } else if !learned.paced {
            self.pause_lane(lanes, lane, wait, Refused::default());
        }
    }

    /// Pauses a lane for `pause`; a new pause is one event, however many requests saw it.
    pub fn pause_lane(&self, lanes: &LanePool, lane: usize, pause: Duration, refused: Refused) {
        let now = Instant::now();
        if lanes.pause(lane, now + pause, now, refused) {
            self.events.emit(Event::KeyPaused {
                key: lanes.lane(lane).label.clone(),
                pause,
            });
        }
    }

    /// A wait longer than `--max-wait` is not slept through: the lane's quota counts as
    /// spent and it leaves the pool. `said` is what the provider said, before the wait.
    pub fn retire_spent(&self, lanes: &LanePool, lane: usize, said: &str, wait: Duration) {
        let why = format!(
            "{said} {:.0} s, longer than --max-wait {:.0} s: treated as a spent quota",
            wait.as_secs_f64(),
            self.config.retry.max_wait.as_secs_f64()
        );
        self.retire_lane(lanes, lane, Reason::QuotaExhausted, &why);
    }

    /// A lane leaves the pool (its quota spent); reported once.
    pub fn retire_lane(&self, lanes: &LanePool, lane: usize, reason: Reason, message: &str) {
        if lanes.retire_lane(lane, reason) {
            self.events.emit(Event::KeyRetired {
                key: lanes.lane(lane).label.clone(),
                reason: reason.as_str(),
                message: message.to_string(),
            });
        }
    }

    /// A key leaves the pool (a 401, spent credits), and every lane of it; reported once.
    pub fn retire_key(&self, lanes: &LanePool, key: usize, reason: Reason, message: &str) {
        if lanes.retire_key(key, reason) {
            self.events.emit(Event::KeyRetired {
                key: lanes.keys()[key].label.clone(),
                reason: reason.as_str(),
                message: message.to_string(),
            });
        }
    }

    /// Runs one admitted request to its end and resolves its ticket; only then gives
    /// back its place and running counts, once it holds nothing of its source (whose
    /// owner may be waiting to close the source's store).
    async fn process(
        self: Arc<Self>,
        source: Arc<SourceState>,
        job: Job,
        ticket: oneshot::Sender<Outcome>,
        held: Holds,
    ) {
        self.run_request(source, job, ticket).await;
        drop(held);
    }

    async fn run_request(
        &self,
        source: Arc<SourceState>,
        job: Job,
        ticket: oneshot::Sender<Outcome>,
    ) {
        let mut life = Life {
            shared: self,
            source: &source,
            custom_id: job.custom_id.clone(),
            lost: None,
            ended: false,
        };
        // The second line of defence: nothing from outside should be able to panic a
        // request's task, but if something does, the request must not vanish. It is
        // left out of the store (so a re-run sends it), named in the log, and its
        // source cannot end as complete.
        // A client that waits on the request and goes away (drops its ticket) takes the
        // request with it: whatever it holds — a booking not yet sent, an attempt on
        // the wire — is dropped and given back.
        // Mid-stream, the stream's pump notices the client leave and settles what was
        // streamed (its usage) itself.
        let waiting = job.waiting.clone();
        let run = std::panic::AssertUnwindSafe(self.attempt_until_done(&source, job));
        let run = futures_util::FutureExt::catch_unwind(run);
        tokio::pin!(run);
        let mut ticket = ticket;
        let mut client_left = false;
        let ended = loop {
            tokio::select! {
                biased;
                // The grace period after a stop is over: dropped unfinished.
                _ = source.kill.cancelled() => return,
                _ = ticket.closed(), if waiting.is_some() && !client_left => {
                    if waiting.as_ref().is_some_and(|w| w.is_streaming()) {
                        client_left = true;
                        continue;
                    }
                    return;
                }
                ended = &mut run => break ended,
            }
        };
        match ended {
            Ok(Some(outcome)) => {
                life.ended = true;
                // A ticket nobody waits for is fine: the store has the outcome.
                let _ = ticket.send(outcome);
            }
            Ok(None) => {}
            Err(panic) => life.lost = Some(panic_message(panic.as_ref())),
        }
    }
}

/// Accounts for a request that did not end with an outcome, however it left: given up
/// because its source stopped, dropped after the grace period, or lost to a panic.
struct Life<'a> {
    shared: &'a Shared,
    source: &'a SourceState,
    custom_id: Arc<str>,
    lost: Option<String>,
    ended: bool,
}

impl Drop for Life<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let custom_id = self.custom_id.clone();
        let message = self
            .lost
            .take()
            .or_else(|| std::thread::panicking().then(|| "a panic in its task".to_string()));
        let event = match message {
            Some(message) => {
                Counters::add(&self.source.counts.lost);
                Event::RequestLost { custom_id, message }
            }
            None => {
                Counters::add(&self.source.counts.abandoned);
                Event::RequestAbandoned { custom_id }
            }
        };
        self.shared.events.emit_from(self.source.id, event);
    }
}

/// The text of a panic's payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
