//! The life of one admitted request: attempts until it succeeds, fails for good, or its
//! source stops.
//!
//! Each attempt passes the gates in order — the turn, a wire slot, a key booking, the
//! cost cap — then goes out; its outcome is classified, and the values that own the
//! side effects take theirs (the booking settles and learns, the wire adapts, the cost
//! reservation records what was spent) before the verdict decides: record, retry, or
//! move to another key. A request holds a connection slot only while it is booked and
//! sending, never while it sleeps in backoff, and it takes the slot *before* booking
//! its key so that the booked instant is the instant it sends: a booking made first and
//! used late could bunch requests into a burst. Once a key is limited, requests take
//! turns for slot and booking ([`crate::engine::turnstile`]), admitted ones (retries)
//! first.
//!
//! Every resource an attempt holds is a guard that gives itself back when dropped, so
//! an early return — or the task dropped after a stop's grace period — leaks nothing.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::{Instant, sleep, sleep_until};

use crate::accounting::cost_cap::CostReservation;
use crate::accounting::usage::Usage;
use crate::defaults;
use crate::engine::concurrency::Slot;
use crate::engine::retry::RetryCount;
use crate::engine::service::Shared;
use crate::engine::source::{Counters, SourceState};
use crate::engine::turnstile::Priority;
use crate::input::job::Job;
use crate::limits::headers;
use crate::limits::lanes::{BookError, Booking, LanePool};
use crate::observe::events::Event;
use crate::provider::classify::TransportFailure;
use crate::provider::classify::{
    Classified, Endpoint, Reason, Verdict, classify_failure, classify_reply,
};
use crate::provider::transport::{Reply, Sent};
use crate::store::{Failure, Outcome, Response, unix_now};

/// Why a request could not take its turn.
enum Blocked {
    /// Its source stopped (or no key is left): the request is left for a re-run.
    Halted,
    /// It fails for good, for this reason: its tokens can never fit the lane's
    /// tokens-per-minute limit, or every lane it could go on has left the pool (its
    /// model's quota spent, or its upstream's keys) while other requests still have
    /// lanes.
    Fails(Reason, String),
}

impl Blocked {
    fn no_lane(job: &Job) -> Blocked {
        Blocked::Fails(
            Reason::QuotaExhausted,
            format!(
                "no key is left for model {} on this upstream (see the keys and lanes retired above); re-run with --retry-failed once its quota is back",
                job.model.as_deref().unwrap_or("(none)")
            ),
        )
    }

    fn queue_timeout() -> Blocked {
        Blocked::Fails(
            Reason::QueueTimeout,
            "it waited longer than its client allows for its turn under the shared limit".into(),
        )
    }

    fn too_large(tokens: u64, limit: u64) -> Blocked {
        Blocked::Fails(
            Reason::ExceedsRateLimit,
            format!(
                "the request needs about {tokens} tokens, more than the key's limit of {limit} tokens per minute: it can never be sent within the limit"
            ),
        )
    }
}

impl Shared {
    /// Waits `delay` unless the source stops first. False if it stopped.
    async fn wait(&self, source: &SourceState, delay: std::time::Duration) -> bool {
        tokio::select! {
            _ = source.stop.cancelled() => false,
            _ = sleep(delay) => true,
        }
    }

    /// The life of one request: attempts until success, a permanent failure, or a halt.
    ///
    /// Each attempt passes the gates in order — the turn, a wire slot, a key booking, the
    /// cost cap — then goes out; its outcome is classified, and the values that own the
    /// side effects take theirs (the booking settles and learns, the wire adapts, the
    /// reservation records the cost) before the verdict decides: record, retry, or move
    /// to another key. Every resource is a guard, so an early return gives it back.
    pub(crate) async fn attempt_until_done(
        &self,
        source: &SourceState,
        job: Job,
    ) -> Option<Outcome> {
        // Latency is counted from the first send, not from admission, so that time spent
        // queued behind the concurrency limit does not pass for provider latency.
        let mut started = None;
        self.events.emit_from(
            source.id,
            Event::Admitted {
                custom_id: job.custom_id.clone(),
            },
        );
        source.budget.record_request();
        let endpoint = Endpoint::of(&job.path);
        let mut usage = Usage::default();
        let mut attempts = 0u32;
        let mut retries = RetryCount::default();
        let mut rate_limited_retries = 0u32;
        let mut priority = Priority::Fresh {
            level: source.priority,
            source: source.id.0,
        };
        let Some(upstream) = self.upstreams.get(job.upstream) else {
            let why = format!("the engine has no upstream {}", job.upstream);
            let done = Done {
                job: &job,
                started: Instant::now(),
                attempts,
                usage,
                key: None,
                reply: None,
            };
            return self.finish(source, done, Some((Reason::InvalidInput, why)));
        };
        let lanes = &upstream.lanes;
        // A client waiting on the request gives it until `start_by` to start.
        let start_by = job.waiting.as_ref().and_then(|w| w.start_by);
        loop {
            let turn = self.take_turn(source, lanes, &job, priority);
            let taken = match start_by.filter(|_| attempts == 0) {
                Some(deadline) => tokio::time::timeout_at(deadline, turn)
                    .await
                    .unwrap_or_else(|_| Err(Blocked::queue_timeout())),
                None => turn.await,
            };
            let (slot, mut booking) = match taken {
                Ok(taken) => taken,
                Err(Blocked::Halted) => return None,
                Err(Blocked::Fails(reason, why)) => {
                    let done = Done {
                        job: &job,
                        started: started.unwrap_or_else(Instant::now),
                        attempts,
                        usage,
                        key: None,
                        reply: None,
                    };
                    return self.finish(source, done, Some((reason, why)));
                }
            };
            // From now on the request is admitted: it goes before requests not yet sent.
            priority = Priority::Admitted;
            let (lane, sender) = (booking.lane, booking.key);
            // Asked at the last moment, in the same step that counts the attempt as in
            // flight: waiting for a slot or a key can take long, and the attempts that
            // finished meanwhile may have reached the cap.
            let reservation = match source.cost.start_attempt() {
                Ok(reservation) => reservation,
                Err(why) => {
                    self.stop_source(source, &why);
                    return None;
                }
            };
            attempts += 1;
            Counters::add(&source.counts.attempts);
            let key = lanes.keys()[sender].label.clone();
            self.events.emit_from(
                source.id,
                Event::AttemptStarted {
                    custom_id: job.custom_id.clone(),
                    attempt: attempts,
                    key: key.clone(),
                },
            );
            let sent = Instant::now();
            let started = *started.get_or_insert(sent);
            let mut ends = AttemptEnds {
                shared: self,
                source: source.id,
                custom_id: &job.custom_id,
                attempt: attempts,
                key: &key,
                model: &job.model,
                sent,
                armed: true,
            };
            booking.sent();
            if self.config.debug_panic_on.as_deref() == Some(&*job.custom_id) {
                panic!(
                    "VOLLEY_DEBUG_PANIC_ON asked request {} to panic",
                    job.custom_id
                );
            }
            let key_used = &lanes.keys()[sender].key;
            let streamed = job.waiting.as_deref().filter(|w| w.wants_stream());
            let result = match streamed {
                None => upstream
                    .transport
                    .send(&job.path, job.body.clone(), key_used, self.config.timeout)
                    .await
                    .map(Sent::Whole),
                Some(_) => {
                    upstream
                        .transport
                        .send_streamed(&job.path, job.body.clone(), key_used, self.config.timeout)
                        .await
                }
            };
            let (mut outcome, reply) = match result {
                // A client's call to an endpoint volley knows no shape of (speech,
                // images, …): any 2xx is its answer, whatever the body.
                Ok(Sent::Whole(reply))
                    if job.waiting.is_some()
                        && endpoint == Endpoint::Other
                        && (200..300).contains(&reply.status) =>
                {
                    let reply = upstream.redact(reply);
                    (Classified::passed_through(&reply.body), Some(reply))
                }
                Ok(Sent::Whole(reply)) => {
                    let reply = upstream.redact(reply);
                    let outcome = classify_reply(
                        endpoint,
                        reply.status,
                        &reply.headers,
                        &reply.body,
                        source.check.as_deref(),
                    );
                    (outcome, Some(reply))
                }
                // Streamed to the client as it comes: its verdict is final.
                Ok(Sent::Stream(stream)) => {
                    let head = Reply {
                        status: stream.status,
                        headers: stream.headers.clone(),
                        body: bytes::Bytes::new(),
                    };
                    let outcome = match streamed {
                        Some(waiting) => {
                            let redact = upstream.stream_redactor();
                            waiting.pump(stream, self.config.timeout, redact).await
                        }
                        None => classify_failure(&TransportFailure::Connection(
                            "an unexpected stream".into(),
                        )),
                    };
                    (outcome, Some(head))
                }
                Err(failure) => (classify_failure(&failure), None),
            };
            let latency = sent.elapsed();
            let refusal = booking.refusal();
            let held = Attempt {
                lanes,
                booking,
                slot,
                reservation,
            };
            self.settle(
                source,
                held,
                &mut outcome,
                reply.as_ref(),
                job.model.as_deref(),
            );
            if let Some(u) = &outcome.usage {
                usage.add(u);
            }
            ends.armed = false;
            self.events.emit_from(
                source.id,
                Event::AttemptFinished {
                    custom_id: job.custom_id.clone(),
                    attempt: attempts,
                    key: key.clone(),
                    status: reply.as_ref().map(|r| r.status),
                    outcome: outcome.reason.map_or("success", Reason::as_str),
                    latency,
                    usage: outcome.usage,
                    model: job.model.clone(),
                },
            );
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
                Verdict::Success => return self.finish(source, done, None),
                Verdict::Fail => {
                    return self.finish(source, done, Some((reason, message(&outcome))));
                }
                // A request a client chose (the proxy's: any path, any body) cannot take
                // a key out of everyone's pool: it fails with the provider's answer.
                Verdict::RetireKey if job.waiting.is_some() => {
                    return self.finish(source, done, Some((reason, message(&outcome))));
                }
                Verdict::RetireKey => {
                    if reason == Reason::QuotaExhausted {
                        // A spent quota is the lane's (a model's, the account's).
                        self.retire_lane(lanes, lane, reason, &message(&outcome));
                    } else {
                        self.retire_key(lanes, sender, reason, &message(&outcome));
                    }
                    // Not the request's fault: it moves to another key, no retry counted.
                    continue;
                }
                Verdict::RateLimited => {
                    rate_limited_retries += 1;
                    let pause = outcome.retry_after.unwrap_or(defaults::RATE_LIMIT_COOLDOWN);
                    if pause > self.config.retry.max_wait {
                        self.retire_spent(lanes, lane, "asked to wait", pause);
                        continue;
                    }
                    self.pause_lane(lanes, lane, pause, refusal);
                    if rate_limited_retries > defaults::MAX_RATE_LIMITED_RETRIES {
                        let why = format!(
                            "still rate limited after {rate_limited_retries} tries: {}",
                            message(&outcome)
                        );
                        return self.finish(source, done, Some((Reason::RetriesExhausted, why)));
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
                        return self.finish(source, done, Some((reason, why)));
                    };
                    if let Err(first) = source.budget.try_spend() {
                        if first {
                            self.events.emit_from(
                                source.id,
                                Event::RetryBudgetExhausted {
                                    spent: source.budget.spent(),
                                },
                            );
                        }
                        let why = format!(
                            "not retried: the run's retry budget is spent ({} retries after errors); last error: {}",
                            source.budget.spent(),
                            message(&outcome)
                        );
                        return self.finish(source, done, Some((reason, why)));
                    }
                    retry
                }
            };
            let delay = self.config.retry.delay(
                retry,
                outcome.retry_after,
                outcome.verdict == Verdict::RateLimited,
            );
            self.events.emit_from(
                source.id,
                Event::Retrying {
                    custom_id: job.custom_id.clone(),
                    attempt: attempts,
                    reason: reason.as_str(),
                    delay,
                },
            );
            if !self.wait(source, delay).await {
                return None;
            }
        }
    }

    /// Gives an answered attempt's resources back, each value taking its side effect
    /// in turn: the booking settles to the tokens billed and the lane learns from the
    /// headers (or, with no reply, keeps the attempt counted: the provider may have),
    /// then the slot goes back so the next attempt books on what was just learned, the
    /// wire adapts, the cost is priced and recorded, and a cap reached halts the source
    /// at once rather than when its next request asks.
    fn settle(
        &self,
        source: &SourceState,
        attempt: Attempt<'_>,
        outcome: &mut Classified,
        reply: Option<&Reply>,
        model: Option<&str>,
    ) {
        let Attempt {
            lanes,
            booking,
            slot,
            reservation,
        } = attempt;
        let lane = booking.lane;
        match reply {
            Some(reply) => {
                let seen = headers::observe(&reply.headers, SystemTime::now());
                let billed = outcome.usage.map(|u| u.total_tokens);
                let learned = booking.settle(billed, &seen, Instant::now());
                self.apply_learned(lanes, lane, learned);
                // What the reply freed or announced may let a waiting request go
                // sooner; a 429's pause or a retirement wakes it once applied.
                if !matches!(outcome.verdict, Verdict::RateLimited | Verdict::RetireKey) {
                    lanes.wake();
                }
            }
            None => drop(booking),
        }
        drop(slot);
        self.adapt_concurrency(outcome);
        self.price(source, outcome, model);
        reservation.finish(outcome.usage.and_then(|u| u.cost));
        self.over_cost_cap(source);
    }

    /// Takes the turn, a wire slot and a key booking, in that order, and waits until
    /// the booked instant; hands the turn on before returning. The slot comes before the
    /// booking so that the booked instant is the instant the attempt is sent: a booking
    /// made first and used late could bunch requests into a burst.
    async fn take_turn(
        &self,
        source: &SourceState,
        lanes: &Arc<LanePool>,
        job: &Job,
        priority: Priority,
    ) -> Result<(Slot, Booking), Blocked> {
        // One `Throttled` per attempt that had to wait, with the time it really waited
        // (a booking may be redone after a pause, and a halt may cut the wait short),
        // so that "throttled attempts" count attempts and the wait is what was spent.
        let asked = Instant::now();
        let mut waited_on: Option<usize> = None;
        let throttled = |lane: Option<usize>| {
            if let Some(lane) = lane {
                self.events.emit_from(
                    source.id,
                    Event::Throttled {
                        custom_id: job.custom_id.clone(),
                        key: lanes.lane(lane).label.clone(),
                        wait: asked.elapsed(),
                    },
                );
            }
        };
        // Tokenized before taking the turn, so requests are not tokenized one at a time.
        if lanes.meters_tokens() {
            job.estimated_tokens();
        }
        // While no key is limited or paused every booking is immediate and the only
        // queue is the wire: taking turns would only add a hand-off per request. Once
        // one is, bookings wait, and requests take turns so admitted ones go first.
        let turn = if lanes.is_limited() {
            let turnstile = lanes.turnstile(job.model.as_deref());
            Some(tokio::select! {
                biased;
                _ = source.stop.cancelled() => return Err(Blocked::Halted),
                turn = turnstile.enter(priority) => turn,
            })
        } else {
            None
        };
        let slot = tokio::select! {
            biased;
            _ = source.stop.cancelled() => return Err(Blocked::Halted),
            slot = self.wire.acquire(job.waiting.is_some()) => slot.ok_or(Blocked::Halted)?,
        };
        loop {
            if source.stop.is_cancelled() {
                throttled(waited_on);
                return Err(Blocked::Halted);
            }
            // Registered before booking, so no reply between the two is missed.
            let changed = lanes.changed();
            tokio::pin!(changed);
            if turn.is_some() {
                changed.as_mut().enable();
            }
            let now = Instant::now();
            let booking = match lanes
                .book(job.model.as_deref(), || job.estimated_tokens(), now)
                .await
            {
                Ok(booking) => booking,
                Err(BookError::NoKeyLeft) if self.upstreams.iter().all(|u| u.lanes.spent()) => {
                    self.stop_all("every API key left the pool (see the keys retired above); re-run with a working key to finish");
                    throttled(waited_on);
                    return Err(Blocked::Halted);
                }
                Err(BookError::NoKeyLeft) => {
                    // Keys are left, but none for this request: its model's lanes (or its
                    // upstream's keys) are spent. It fails; the others go on.
                    throttled(waited_on);
                    return Err(Blocked::no_lane(job));
                }
                Err(BookError::TooLarge { tokens, limit }) => {
                    throttled(waited_on);
                    return Err(Blocked::too_large(tokens, limit));
                }
            };
            if booking.at > now {
                waited_on = Some(booking.lane);
                tokio::select! {
                    // The booking is dropped unsent: it gives itself back whole.
                    _ = source.stop.cancelled() => {
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
            if lanes.unusable(&booking, Instant::now()) {
                continue;
            }
            throttled(waited_on);
            drop(turn);
            return Ok((slot, booking));
        }
    }

    /// Hands the finished request to the store: a success (`error` is `None`) or a
    /// failure for good.
    fn finish(
        &self,
        source: &SourceState,
        done: Done<'_>,
        error: Option<(Reason, String)>,
    ) -> Option<Outcome> {
        let latency = done.started.elapsed();
        let outcome = Outcome {
            custom_id: done.job.custom_id.clone(),
            fingerprint: Some(done.job.fingerprint),
            model: done.job.model.clone(),
            response: done.reply.map(|reply| Response {
                status: reply.status,
                request_id: reply.request_id().map(str::to_string),
                // Only a client waiting on the reply needs it: a batch's lines are JSON.
                content_type: done
                    .job
                    .waiting
                    .as_ref()
                    .and(reply.headers.get(http::header::CONTENT_TYPE))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
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
        if !source.store.record(&outcome) {
            // The store can keep no more (a disk error, reported when it closes):
            // sending more requests would only pay for results that cannot be kept.
            self.stop_source(source, "RESULTS or ERRORS cannot be written; stopping");
        }
        Counters::add(if error.is_none() {
            &source.counts.succeeded
        } else {
            &source.counts.failed
        });
        self.events.emit_from(
            source.id,
            Event::RequestFinished {
                custom_id: done.job.custom_id.clone(),
                ok: error.is_none(),
                attempts: done.attempts,
                error: error.as_ref().map(|(r, _)| r.as_str()),
                latency,
                usage: done.usage,
                model: done.job.model.clone(),
            },
        );
        Some(outcome)
    }
}

/// What an attempt on the wire holds until its outcome is known.
struct Attempt<'a> {
    lanes: &'a LanePool,
    booking: Booking,
    slot: Slot,
    reservation: CostReservation,
}

/// Says an attempt ended even when its request is dropped in the middle of it (a
/// client that left, a stop's grace period over): observers that count attempts in
/// flight must see each one end.
struct AttemptEnds<'a> {
    shared: &'a Shared,
    source: crate::engine::SourceId,
    custom_id: &'a Arc<str>,
    attempt: u32,
    key: &'a Arc<str>,
    model: &'a Option<Arc<str>>,
    sent: Instant,
    /// Cleared once the attempt's own end is reported.
    armed: bool,
}

impl Drop for AttemptEnds<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.events.emit_from(
                self.source,
                Event::AttemptFinished {
                    custom_id: self.custom_id.clone(),
                    attempt: self.attempt,
                    key: self.key.clone(),
                    status: None,
                    outcome: "abandoned",
                    latency: self.sent.elapsed(),
                    usage: None,
                    model: self.model.clone(),
                },
            );
        }
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
