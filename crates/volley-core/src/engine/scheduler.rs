//! The engine: admits jobs, books them on a key, sends attempts, classifies outcomes,
//! retries or records them.
//!
//! Two gates bound the work: at most `concurrency × ADMISSION_FACTOR` requests are
//! admitted (in flight, waiting for a key, or sleeping in backoff), and at most
//! `concurrency` attempts are on the wire. A request holds a connection slot only while
//! it is booked and sending, never while it sleeps in backoff, and it takes the slot
//! *before* booking its key so that the booked instant is the instant it sends: a
//! booking made first and used late could bunch requests into a burst. Once a key is
//! limited, requests take turns for slot and booking ([`crate::engine::turnstile`]), admitted
//! ones (retries) first.
//!
//! Every resource an attempt holds — the turn, its slot, its key booking, its share of
//! `--max-cost` — is a guard that gives itself back when dropped, and a request's task
//! that panics is caught: its request is left for a re-run and the run cannot end as
//! complete. No path loses a request or leaks a resource.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::accounting::cost_cap::CostBudget;
use crate::accounting::pricing::Pricing;
use crate::accounting::usage::Usage;
use crate::defaults;
use crate::engine::concurrency::{Concurrency, Slot};
use crate::engine::retry::{RetryBudget, RetryCount, RetryPolicy};
use crate::engine::turnstile::{Priority, Turnstile};
use crate::input::job::Job;
use crate::limits::headers;
use crate::limits::keys::{BookError, Booking, KeyPool, Learned, Refused};
use crate::observe::events::{Event, EventBus};
use crate::provider::classify::{
    Classified, Endpoint, Reason, Verdict, classify_failure, classify_reply,
};
use crate::provider::transport::{Reply, Transport};
use crate::provider::validate::ResponseCheck;
use crate::store::{Failure, Outcome, Response, Store, unix_now};

/// How the engine behaves; built from flags by the binary.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Attempts on the wire at once.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// `--retry-budget`: retries after errors allowed, as a fraction of requests sent.
    pub retry_budget_ratio: f64,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// `--expect json` / `--json-schema`.
    pub check: Option<Arc<ResponseCheck>>,
    /// After an interrupt, how long in-flight attempts may take to finish.
    pub grace: Duration,
    /// Adapt concurrency to 429s and timeouts (AIMD, `concurrency` as the ceiling):
    /// for runs that know no limit of their own.
    pub adaptive: bool,
    /// Prices for replies that carry no `usage.cost` (`--pricing`).
    pub pricing: Option<Arc<Pricing>>,
    /// `--max-cost`, USD.
    pub max_cost: Option<f64>,
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
            retry_budget_ratio: defaults::RETRY_BUDGET_RATIO,
            timeout: defaults::TIMEOUT,
            check: None,
            grace: defaults::SHUTDOWN_GRACE,
            adaptive: false,
            pricing: None,
            max_cost: None,
            debug_panic_on: None,
        }
    }
}

/// Why the engine stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Every admitted request finished and the source ran dry.
    Completed,
    /// The caller cancelled (Ctrl-C); unfinished requests are left for a re-run.
    Interrupted,
    /// The run could not go on (no key left, output not writable); unfinished
    /// requests are left for a re-run. The text says why.
    Halted(String),
}

/// The engine of one run.
pub struct Engine {
    config: EngineConfig,
    transport: Transport,
    keys: Arc<KeyPool>,
    events: EventBus,
    store: Arc<dyn Store>,
    budget: RetryBudget,
    /// The wire gate: attempts in flight, adapted when no limit is known.
    wire: Concurrency,
    /// What has been spent against `--max-cost`.
    cost: CostBudget,
    /// Who books a key next: admitted requests before fresh ones.
    turnstile: Turnstile,
    /// Cancelled when the run must stop admitting: by the caller, or when no key is left.
    halt: CancellationToken,
    /// Why the engine halted on its own, if it did.
    halted: std::sync::Mutex<Option<String>>,
    /// Requests whose task panicked: left unrecorded for a re-run.
    lost: AtomicU64,
}

/// Why a request could not take its turn.
enum Blocked {
    /// The run halts (or no key is left): the request is left for a re-run.
    Halted,
    /// Its tokens can never fit the key's tokens-per-minute limit.
    TooLarge { tokens: u64, limit: u64 },
}

/// How a request left the engine.
enum Fate {
    Done,
    Abandoned,
}

impl Engine {
    pub fn new(
        config: EngineConfig,
        transport: Transport,
        keys: Arc<KeyPool>,
        events: EventBus,
        store: Arc<dyn Store>,
        cancel: &CancellationToken,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            budget: RetryBudget::new(config.retry_budget_ratio),
            wire: Concurrency::new(config.concurrency, config.adaptive),
            cost: CostBudget::new(config.max_cost),
            turnstile: Turnstile::new(),
            config,
            transport,
            keys,
            events,
            store,
            halt: cancel.child_token(),
            halted: std::sync::Mutex::new(None),
            lost: AtomicU64::new(0),
        })
    }

    /// Runs every job from `jobs` to completion, or until `cancel` (given to
    /// [`Engine::new`]) fires or no key is left.
    pub async fn run(
        self: &Arc<Self>,
        mut jobs: mpsc::Receiver<Job>,
        cancel: &CancellationToken,
    ) -> StopReason {
        let concurrency = self.config.concurrency.max(1);
        let admission = Arc::new(Semaphore::new(concurrency * defaults::ADMISSION_FACTOR));
        let mut tasks = JoinSet::new();
        loop {
            // Reap finished tasks so the set stays as small as the admission gate.
            while let Some(joined) = tasks.try_join_next() {
                self.count_panic(joined);
            }
            let permit = tokio::select! {
                biased;
                _ = self.halt.cancelled() => break,
                permit = admission.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let job = tokio::select! {
                biased;
                _ = self.halt.cancelled() => break,
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
            };
            tasks.spawn(self.clone().process(job, permit));
        }
        drop(jobs);

        let drain = async {
            while let Some(joined) = tasks.join_next().await {
                self.count_panic(joined);
            }
        };
        let grace_over = async {
            self.halt.cancelled().await;
            sleep(self.config.grace).await;
        };
        tokio::select! {
            _ = drain => {}
            _ = grace_over => {}
        }
        // Anything still running after the grace period is dropped unfinished; its
        // custom_id is not in RESULTS, so a re-run sends it.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}

        let lost = self.lost.load(Ordering::Relaxed);
        if let Some(why) = self
            .halted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            StopReason::Halted(why)
        } else if cancel.is_cancelled() {
            StopReason::Interrupted
        } else if lost > 0 {
            StopReason::Halted(format!(
                "{lost} request(s) failed inside volley and were not recorded (named above); re-run to send them"
            ))
        } else {
            StopReason::Completed
        }
    }

    /// A task that panicked outside its own guard (see [`Engine::process`]) lost its
    /// request: count it so the run cannot end as complete.
    fn count_panic(&self, joined: Result<(), tokio::task::JoinError>) {
        if joined.is_err_and(|e| e.is_panic()) {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits `delay` unless the run halts first. False if it halted.
    async fn wait(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.halt.cancelled() => false,
            _ = sleep(delay) => true,
        }
    }

    async fn process(self: Arc<Self>, job: Job, _admitted: OwnedSemaphorePermit) {
        let custom_id = job.custom_id.clone();
        // The second line of defence: nothing from outside should be able to panic a
        // request's task, but if something does, the request must not vanish. It is
        // left out of RESULTS and ERRORS (so a re-run sends it), named in the log, and
        // the run cannot end as complete.
        let life = std::panic::AssertUnwindSafe(self.attempt_until_done(job)).catch_unwind();
        match life.await {
            Ok(Fate::Done) => {}
            Ok(Fate::Abandoned) => self.events.emit(Event::RequestAbandoned { custom_id }),
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                self.lost.fetch_add(1, Ordering::Relaxed);
                self.events.emit(Event::RequestLost { custom_id, message });
            }
        }
    }

    /// The life of one request: attempts until success, a permanent failure, or a halt.
    ///
    /// Each attempt passes the gates in order — the turn, a wire slot, a key booking, the
    /// cost cap — then goes out; its outcome is classified, and the values that own the
    /// side effects take theirs (the booking settles and learns, the wire adapts, the
    /// reservation records the cost) before the verdict decides: record, retry, or move
    /// to another key. Every resource is a guard, so an early return gives it back.
    async fn attempt_until_done(&self, job: Job) -> Fate {
        // Latency is counted from the first send, not from admission, so that time spent
        // queued behind the concurrency limit does not pass for provider latency.
        let mut started = None;
        self.events.emit(Event::Admitted {
            custom_id: job.custom_id.clone(),
        });
        self.budget.record_request();
        let endpoint = Endpoint::of(&job.path);
        let mut usage = Usage::default();
        let mut attempts = 0u32;
        let mut retries = RetryCount::default();
        let mut rate_limited_retries = 0u32;
        let mut priority = Priority::Fresh;
        loop {
            let (slot, mut booking) = match self.take_turn(&job, priority).await {
                Ok(taken) => taken,
                Err(Blocked::Halted) => return Fate::Abandoned,
                Err(Blocked::TooLarge { tokens, limit }) => {
                    let why = format!(
                        "the request needs about {tokens} tokens, more than the key's limit of {limit} tokens per minute: it can never be sent within the limit"
                    );
                    let done = Done {
                        job: &job,
                        started: started.unwrap_or_else(Instant::now),
                        attempts,
                        usage,
                        key: None,
                        reply: None,
                    };
                    return self.finish(done, Some((Reason::ExceedsRateLimit, why)));
                }
            };
            // From now on the request is admitted: it goes before requests not yet sent.
            priority = Priority::Admitted;
            let lane = booking.lane;
            // Asked at the last moment, in the same step that counts the attempt as in
            // flight: waiting for a slot or a key can take long, and the attempts that
            // finished meanwhile may have reached the cap.
            let reservation = match self.cost.start_attempt() {
                Ok(reservation) => reservation,
                Err(why) => {
                    self.stop(&why);
                    return Fate::Abandoned;
                }
            };
            attempts += 1;
            let key = self.keys.lane(lane).label.clone();
            self.events.emit(Event::AttemptStarted {
                custom_id: job.custom_id.clone(),
                attempt: attempts,
                key: key.clone(),
            });
            let sent = Instant::now();
            let started = *started.get_or_insert(sent);
            booking.sent();
            if self.config.debug_panic_on.as_deref() == Some(&*job.custom_id) {
                panic!(
                    "VOLLEY_DEBUG_PANIC_ON asked request {} to panic",
                    job.custom_id
                );
            }
            let result = self
                .transport
                .send(
                    &job.path,
                    job.body.clone(),
                    &self.keys.lane(lane).key,
                    self.config.timeout,
                )
                .await;
            let latency = sent.elapsed();

            let (mut outcome, reply) = match result.map(|r| self.keys.redact(r)) {
                Ok(reply) => (
                    classify_reply(
                        endpoint,
                        reply.status,
                        &reply.headers,
                        &reply.body,
                        self.config.check.as_deref(),
                    ),
                    Some(reply),
                ),
                Err(failure) => (classify_failure(&failure), None),
            };
            let refusal = booking.refusal();
            match &reply {
                Some(reply) => {
                    let seen = headers::observe(&reply.headers, SystemTime::now());
                    let billed = outcome.usage.map(|u| u.total_tokens);
                    let learned = booking.settle(billed, &seen, Instant::now());
                    self.apply_learned(lane, learned);
                    // What the reply freed or announced may let a waiting request go
                    // sooner; a 429's pause or a retirement wakes it once applied.
                    if !matches!(outcome.verdict, Verdict::RateLimited | Verdict::RetireKey) {
                        self.keys.wake();
                    }
                }
                // No reply: the provider may have counted the attempt, so its booking
                // keeps the request and the token estimate.
                None => drop(booking),
            }
            // The slot is given back once the key has learned from the reply, so the
            // next attempt books on what the provider just said.
            drop(slot);
            self.adapt_concurrency(&outcome);
            self.price(&mut outcome, job.model.as_deref());
            reservation.finish(outcome.usage.and_then(|u| u.cost));
            // Halts now, not when the next request asks, so that requests waiting for a
            // key's limit give up at once.
            self.over_cost_cap();
            if let Some(u) = &outcome.usage {
                usage.add(u);
            }
            self.events.emit(Event::AttemptFinished {
                custom_id: job.custom_id.clone(),
                attempt: attempts,
                key: key.clone(),
                status: reply.as_ref().map(|r| r.status),
                outcome: outcome.reason.map_or("success", Reason::as_str),
                latency,
                usage: outcome.usage,
                model: job.model.clone(),
            });
            let done = Done {
                job: &job,
                started,
                attempts,
                usage,
                key: Some(&key),
                reply: reply.as_ref(),
            };

            let reason = outcome.reason.unwrap_or(Reason::ServerError);
            let retry = match outcome.verdict {
                Verdict::Success => return self.finish(done, None),
                Verdict::Fail => return self.finish(done, Some((reason, message(&outcome)))),
                Verdict::RetireKey => {
                    self.retire(lane, reason, &message(&outcome));
                    // Not the request's fault: it moves to another key, no retry counted.
                    continue;
                }
                Verdict::RateLimited => {
                    rate_limited_retries += 1;
                    let pause = outcome.retry_after.unwrap_or(defaults::RATE_LIMIT_COOLDOWN);
                    if pause > self.config.retry.max_wait {
                        self.retire_spent(lane, "asked to wait", pause);
                        continue;
                    }
                    self.pause_key(lane, pause, refusal);
                    if rate_limited_retries > defaults::MAX_RATE_LIMITED_RETRIES {
                        let why = format!(
                            "still rate limited after {rate_limited_retries} tries: {}",
                            message(&outcome)
                        );
                        return self.finish(done, Some((Reason::RetriesExhausted, why)));
                    }
                    rate_limited_retries
                }
                Verdict::Retry => {
                    let empty = reason == Reason::EmptyResponse;
                    let Some(retry) = retries.next(&self.config.retry, empty) else {
                        let why = if retries.empty == attempts {
                            all_empty(attempts)
                        } else {
                            format!("gave up after {attempts} attempts: {}", message(&outcome))
                        };
                        return self.finish(done, Some((reason, why)));
                    };
                    if let Err(first) = self.budget.try_spend() {
                        if first {
                            self.events.emit(Event::RetryBudgetExhausted {
                                spent: self.budget.spent(),
                            });
                        }
                        let why = format!(
                            "not retried: the run's retry budget is spent ({} retries after errors); last error: {}",
                            self.budget.spent(),
                            message(&outcome)
                        );
                        return self.finish(done, Some((reason, why)));
                    }
                    retry
                }
            };
            let delay = self.config.retry.delay(
                retry,
                outcome.retry_after,
                outcome.verdict == Verdict::RateLimited,
            );
            self.events.emit(Event::Retrying {
                custom_id: job.custom_id.clone(),
                attempt: attempts,
                reason: reason.as_str(),
                delay,
            });
            if !self.wait(delay).await {
                return Fate::Abandoned;
            }
        }
    }

    /// Takes the turn, a wire slot and a key booking, in that order, and waits until
    /// the booked instant; hands the turn on before returning. The slot comes before the
    /// booking so that the booked instant is the instant the attempt is sent: a booking
    /// made first and used late could bunch requests into a burst.
    async fn take_turn(&self, job: &Job, priority: Priority) -> Result<(Slot, Booking), Blocked> {
        // One `Throttled` per attempt that had to wait, with the time it really waited
        // (a booking may be redone after a pause, and a halt may cut the wait short),
        // so that "throttled attempts" count attempts and the wait is what was spent.
        let asked = Instant::now();
        let mut waited_on: Option<usize> = None;
        let throttled = |lane: Option<usize>| {
            if let Some(lane) = lane {
                self.events.emit(Event::Throttled {
                    custom_id: job.custom_id.clone(),
                    key: self.keys.lane(lane).label.clone(),
                    wait: asked.elapsed(),
                });
            }
        };
        // Tokenized before taking the turn, so requests are not tokenized one at a time.
        if self.keys.meters_tokens() {
            job.estimated_tokens();
        }
        // While no key is limited or paused every booking is immediate and the only
        // queue is the wire: taking turns would only add a hand-off per request. Once
        // one is, bookings wait, and requests take turns so admitted ones go first.
        let turn = if self.keys.is_limited() {
            Some(tokio::select! {
                biased;
                _ = self.halt.cancelled() => return Err(Blocked::Halted),
                turn = self.turnstile.enter(priority) => turn,
            })
        } else {
            None
        };
        let slot = tokio::select! {
            biased;
            _ = self.halt.cancelled() => return Err(Blocked::Halted),
            slot = self.wire.acquire() => slot.ok_or(Blocked::Halted)?,
        };
        loop {
            if self.halt.is_cancelled() {
                throttled(waited_on);
                return Err(Blocked::Halted);
            }
            // Registered before booking, so no reply between the two is missed.
            let changed = self.keys.changed();
            tokio::pin!(changed);
            if turn.is_some() {
                changed.as_mut().enable();
            }
            let now = Instant::now();
            let booking = match self.keys.book(|| job.estimated_tokens(), now) {
                Ok(booking) => booking,
                Err(BookError::NoKeyLeft) => {
                    self.stop("every API key left the pool (see the keys retired above); re-run with a working key to finish");
                    throttled(waited_on);
                    return Err(Blocked::Halted);
                }
                Err(BookError::TooLarge { tokens, limit }) => {
                    throttled(waited_on);
                    return Err(Blocked::TooLarge { tokens, limit });
                }
            };
            if booking.at > now {
                waited_on = Some(booking.lane);
                tokio::select! {
                    // The booking is dropped unsent: it gives itself back whole.
                    _ = self.halt.cancelled() => {
                        throttled(waited_on);
                        return Err(Blocked::Halted);
                    }
                    _ = sleep_until(booking.at) => {}
                    // A reply said more is allowed than when this was booked: book
                    // again (the unused booking is given back whole).
                    _ = changed => continue,
                }
            }
            // A key paused (by a peer's 429) or retired while we waited: book again
            // rather than send on it; the unused booking is given back whole.
            if self.keys.unusable(booking.lane, Instant::now()) {
                continue;
            }
            throttled(waited_on);
            drop(turn);
            return Ok((slot, booking));
        }
    }

    /// Fills in the cost of an attempt whose reply reported none, from `--pricing`.
    fn price(&self, outcome: &mut Classified, model: Option<&str>) {
        let Some(usage) = outcome.usage.as_mut().filter(|u| u.cost.is_none()) else {
            return;
        };
        usage.cost = match (&self.config.pricing, model) {
            (Some(pricing), Some(model)) => pricing.cost(model, usage),
            _ => None,
        };
        if usage.cost.is_none() && self.cost.report_unknown() {
            self.events.emit(Event::CostUnknown {
                model: model.map(Arc::from),
            });
        }
    }

    /// True once `--max-cost` is (about to be) reached; halts the run the first time,
    /// so that no request starts another attempt.
    fn over_cost_cap(&self) -> bool {
        match self.cost.exhausted() {
            Some(why) => {
                self.stop(&why);
                true
            }
            None => false,
        }
    }

    /// AIMD: a success may add a slot; a 429 or a timeout halves the slots.
    fn adapt_concurrency(&self, outcome: &Classified) {
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
    fn apply_learned(&self, lane: usize, learned: Learned) {
        if let Some((requests_per_minute, tokens_per_minute)) = learned.changed {
            self.events.emit(Event::LimitLearned {
                key: self.keys.lane(lane).label.clone(),
                requests_per_minute,
                tokens_per_minute,
            });
        }
        let Some(wait) = learned.exhausted_for else {
            return;
        };
        if wait > self.config.retry.max_wait {
            self.retire_spent(
                lane,
                "the provider says nothing of the key's limit remains for",
                wait,
            );
        } else if !learned.paced {
            self.pause_key(lane, wait, Refused::default());
        }
    }

    /// Pauses a key for `pause`; a new pause is one event, however many requests saw it.
    fn pause_key(&self, lane: usize, pause: Duration, refused: Refused) {
        let now = Instant::now();
        if self.keys.pause(lane, now + pause, now, refused) {
            self.events.emit(Event::KeyPaused {
                key: self.keys.lane(lane).label.clone(),
                pause,
            });
        }
    }

    /// A wait longer than `--max-wait` is not slept through: the key's quota counts as
    /// spent and it leaves the pool. `said` is what the provider said, before the wait.
    fn retire_spent(&self, lane: usize, said: &str, wait: Duration) {
        let why = format!(
            "{said} {:.0} s, longer than --max-wait {:.0} s: treated as a spent quota",
            wait.as_secs_f64(),
            self.config.retry.max_wait.as_secs_f64()
        );
        self.retire(lane, Reason::QuotaExhausted, &why);
    }

    fn retire(&self, lane: usize, reason: Reason, message: &str) {
        if self.keys.retire(lane, reason) {
            self.events.emit(Event::KeyRetired {
                key: self.keys.lane(lane).label.clone(),
                reason: reason.as_str(),
                message: message.to_string(),
            });
        }
    }

    /// Stops admitting and winds the run down, saying why (once).
    fn stop(&self, why: &str) {
        let mut halted = self.halted.lock().unwrap_or_else(|p| p.into_inner());
        if halted.is_none() {
            self.events.emit(Event::Stopping {
                reason: why.to_string(),
            });
            *halted = Some(why.to_string());
            self.halt.cancel();
        }
    }

    /// Hands the finished request to the store: a success (`error` is `None`) or a
    /// failure for good.
    fn finish(&self, done: Done<'_>, error: Option<(Reason, String)>) -> Fate {
        let latency = done.started.elapsed();
        let outcome = Outcome {
            custom_id: done.job.custom_id.clone(),
            fingerprint: Some(done.job.fingerprint),
            model: done.job.model.clone(),
            response: done.reply.map(|reply| Response {
                status: reply.status,
                request_id: reply.request_id().map(str::to_string),
                body: reply.body.clone(),
            }),
            error: error.as_ref().map(|(reason, message)| Failure {
                reason: *reason,
                message: message.clone(),
            }),
            attempts: done.attempts,
            latency,
            usage: done.usage,
            key: done.key.map(str::to_string),
            finished_at: unix_now(),
            input_line: None,
        };
        if !self.store.record(&outcome) {
            // The store can keep no more (a disk error, reported when it closes):
            // sending more requests would only pay for results that cannot be kept.
            self.stop("RESULTS or ERRORS cannot be written; stopping");
        }
        self.events.emit(Event::RequestFinished {
            custom_id: done.job.custom_id.clone(),
            ok: error.is_none(),
            attempts: done.attempts,
            error: error.as_ref().map(|(r, _)| r.as_str()),
            latency,
            usage: done.usage,
            model: done.job.model.clone(),
        });
        Fate::Done
    }
}

/// What is known about a request when it ends.
struct Done<'a> {
    job: &'a Job,
    started: Instant,
    attempts: u32,
    usage: Usage,
    /// The key of the last attempt; `None` when none was sent.
    key: Option<&'a str>,
    reply: Option<&'a Reply>,
}

/// The text of a panic's payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// The ERRORS message of a request whose every attempt came back empty. Said apart
/// from "gave up after N attempts" because it tells the user something retries cannot
/// change: the model answers this prompt with nothing (`--max-empty-retries` decides
/// how often to insist).
fn all_empty(attempts: u32) -> String {
    const WHAT: &str = "no content and no tool calls";
    match attempts {
        1 => format!("the only attempt came back empty ({WHAT})"),
        n => format!("all {n} attempts came back empty ({WHAT})"),
    }
}

fn message(outcome: &Classified) -> String {
    outcome
        .message
        .clone()
        .unwrap_or_else(|| "no details".into())
}
