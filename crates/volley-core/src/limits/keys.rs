//! The pool of API keys: each key is a lane with its own limits, pause and fate.
//!
//! Every attempt passes the same gates in the same order: pick the live key that can
//! send soonest, book the request and its tokens on that key's limits at one instant,
//! and wait until then. The booking is a [`Booking`] value that gives itself back when
//! dropped, so no path — a halt, a key retired while waiting, a task aborted after the
//! grace period — can leak a request, tokens or an in-flight count: a booking never sent
//! is refunded whole; a sent one keeps its request in the window and is settled to the
//! tokens the provider billed.
//!
//! A 429 pauses the whole key so in-flight peers stop hammering it; a 401, spent credits
//! or a spent quota retire it for the rest of the run. What the provider announces in
//! its headers is learned per key: `remaining` is spent at once and then paced at the
//! limit's rate ([`Allowance`]); a `--rpm`/`--tpm` given by flag stays an even pace that
//! headers may only lower. Keys are named `key#N` everywhere, never by value.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::limits::headers::{Observation, Quota};
use crate::limits::limiter::{Allowance, Announcement, Gcra, Limiter, WINDOW};
use crate::provider::classify::Reason;
use crate::provider::transport::ApiKey;

/// What a key spent while a limit was still unknown (requests when booked, tokens as
/// their usage comes back), so that a limit learned without a `remaining` starts from
/// what the key has already spent in the current window rather than from zero.
#[derive(Debug, Default)]
struct Unpaced {
    since: Option<Instant>,
    requests: u64,
    tokens: u64,
}

/// One limit of a lane (requests, or tokens) and everything that gates it.
#[derive(Debug)]
struct Meter {
    /// An even pace: `--rpm`/`--tpm`, lowered by a learned limit; or a learned limit
    /// when the provider announces no `remaining`.
    pace: Gcra,
    /// The flag-given ceiling: learned limits never raise it.
    ceiling: Option<u64>,
    /// What the provider says remains, once a reply announced a limit and `remaining`.
    allowance: Option<Allowance>,
    /// Units booked and not yet answered: a `remaining` does not count them yet.
    outstanding: u64,
}

impl Meter {
    fn new(ceiling: Option<u64>) -> Meter {
        Meter {
            pace: Gcra::new(ceiling),
            ceiling,
            allowance: None,
            outstanding: 0,
        }
    }

    /// The limit in force: the pace's, else the announced one.
    fn limit(&self) -> Option<u64> {
        self.pace
            .limit()
            .or_else(|| self.allowance.as_ref().map(Allowance::limit))
    }

    fn earliest(&self, cost: u64, after: Instant) -> Instant {
        let paced = self.pace.earliest(cost, after);
        match &self.allowance {
            Some(a) => paced.max(a.earliest(cost, after)),
            None => paced,
        }
    }

    fn book(&mut self, cost: u64, at: Instant) {
        self.pace.commit(cost, at);
        if let Some(a) = &mut self.allowance {
            a.commit(cost, at);
        }
        self.outstanding = self.outstanding.saturating_add(cost);
    }

    /// Gives back `cost` units of a booking never sent.
    fn refund(&mut self, cost: u64) {
        self.correct(cost, 0);
    }

    /// Corrects a booking of `booked` units to the `actual` units spent.
    fn correct(&mut self, booked: u64, actual: u64) {
        if booked == actual {
            return;
        }
        let delta =
            i64::try_from(actual).unwrap_or(i64::MAX) - i64::try_from(booked).unwrap_or(i64::MAX);
        self.pace.adjust(delta);
        if let Some(a) = &mut self.allowance {
            if delta < 0 {
                a.refund(delta.unsigned_abs());
            } else {
                a.charge(delta.unsigned_abs());
            }
        }
    }

    /// The booking of `cost` units is answered (or gone).
    fn answered(&mut self, cost: u64) {
        self.outstanding = self.outstanding.saturating_sub(cost);
    }

    /// Learns from what a reply announced; `seq` is the reply's send order, `spent` what
    /// went out while no limit was known. True if the limit in force changed.
    ///
    /// `since` is what was sent before this reply's attempt and answered while it was on
    /// the wire: the provider may have counted those after this reply's figure (requests
    /// overtake each other on the way), so they are taken off what it says remains.
    fn learn(&mut self, quota: &Quota, seq: u64, since: u64, spent: u64, now: Instant) -> bool {
        let before = self.limit();
        // An absurd figure (a limit of 0) never switches limiting off: it is ignored.
        let Some(limit) = quota.limit.filter(|l| *l > 0) else {
            return false;
        };
        match quota.remaining {
            Some(remaining) => {
                // The reply's own units are answered already (see `Booking::settle`).
                let said = Announcement {
                    limit,
                    remaining,
                    reset: quota.reset,
                    outstanding: self.outstanding.saturating_add(since),
                    seq,
                };
                match &mut self.allowance {
                    Some(a) => a.announce(&said, now),
                    None => self.allowance = Some(Allowance::new(&said, now)),
                }
                // A flag-given ceiling is paced evenly; headers may lower it.
                if let Some(ceiling) = self.ceiling
                    && quota.reset.is_none_or(|r| r <= WINDOW)
                    && limit < ceiling
                    && self.pace.limit() != Some(limit)
                {
                    self.pace.set_limit(Some(limit));
                }
            }
            None => {
                // No `remaining`: nothing to spend at once; pace evenly at the limit.
                // Only a window of a minute or less is a per-minute limit.
                if quota.reset.is_some_and(|r| r > WINDOW) {
                    return false;
                }
                let limit = self.ceiling.map_or(limit, |c| c.min(limit));
                if self.pace.limit() != Some(limit) {
                    let first = self.pace.limit().is_none();
                    self.pace.set_limit(Some(limit));
                    if first && spent > 0 {
                        // What was sent before the limit was known still counts in the
                        // provider's window: book it now so the rest of the window
                        // admits only what is left.
                        self.pace.commit(spent, now);
                    }
                }
            }
        }
        self.limit() != before
    }

    /// Nothing may go before `until` (a 429 to the attempt `refused`, with its
    /// Retry-After); `probed` says that attempt was sent when nothing remained.
    fn exhaust_until(&mut self, until: Instant, seq: u64, probed: bool) {
        if let Some(a) = &mut self.allowance {
            a.exhaust_until(until, seq, probed);
        }
    }

    /// Whether a request sent now is a probe: the provider's newest word was "nothing
    /// remains".
    fn probing(&self) -> bool {
        self.allowance.as_ref().is_some_and(Allowance::said_empty)
    }

    /// The most one booking may charge: the tightest limit in force.
    fn cap(&self) -> Option<u64> {
        let announced = self.allowance.as_ref().map(Allowance::limit);
        match (self.pace.limit(), announced) {
            (Some(p), Some(a)) => Some(p.min(a)),
            (p, a) => p.or(a),
        }
    }
}

/// What a set of attempts on the wire amounts to: how many, their booked tokens, and
/// how many were booked before tokens were metered (their tokens unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnWire {
    count: u64,
    tokens: u64,
    blind: u64,
}

/// Attempts sent this close before another may reach the provider after it: only
/// those can make a reply's `remaining` leave out an attempt sent earlier. Anything
/// sent before that was counted by the provider first.
const OVERTAKE_WINDOW: Duration = Duration::from_millis(100);

/// One attempt on the wire: its booked tokens, whether it was booked before tokens were
/// metered, and when it was sent.
type Wired = (u64, bool, Instant);

/// The earliest send instant that can still overtake an attempt sent at `sent`.
fn overtake_horizon(sent: Instant) -> Instant {
    sent.checked_sub(OVERTAKE_WINDOW).unwrap_or(sent)
}

impl OnWire {
    /// What the attempts sent from `since` on amount to.
    fn of<'a>(attempts: impl Iterator<Item = &'a Wired>, since: Instant) -> OnWire {
        attempts.filter(|(_, _, sent)| *sent >= since).fold(
            OnWire::default(),
            |sum, (tokens, blind, _)| OnWire {
                count: sum.count + 1,
                tokens: sum.tokens.saturating_add(*tokens),
                blind: sum.blind + u64::from(*blind),
            },
        )
    }
}

/// One key's mutable state, behind one lock so its limits are booked together.
#[derive(Debug)]
struct LaneState {
    requests: Meter,
    tokens: Meter,
    unpaced: Unpaced,
    /// Bookings on this key not yet answered or dropped: the tie-breaker between keys
    /// that could all send now, so unlimited keys share the work.
    in_flight: usize,
    /// Send order of the attempts on this key, so a late reply cannot pass for news.
    sent: u64,
    /// Attempts on the wire by send order: their booked tokens, and whether they were
    /// booked before tokens were metered.
    on_wire: std::collections::BTreeMap<u64, Wired>,
    /// Tokens billed per reply, as a moving average: what an attempt booked before
    /// tokens were metered is taken to weigh.
    billed_per_reply: f64,
    paused_until: Option<Instant>,
    retired: Option<Reason>,
}

/// A key and its gates.
#[derive(Debug)]
pub struct KeyLane {
    /// `key#N`, 1-based, the only name a key ever has in output.
    pub label: Arc<str>,
    pub key: ApiKey,
    state: Mutex<LaneState>,
}

impl KeyLane {
    fn state(&self) -> MutexGuard<'_, LaneState> {
        // A panic while holding this lock cannot leave the limiter inconsistent in a
        // way that matters more than stopping would, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a booking is in its life; decides what dropping it gives back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Booked, not sent: dropping refunds the request and its tokens whole.
    Booked,
    /// On the wire as the key's `seq`-th attempt: the provider may count it, so
    /// dropping keeps the request and the token estimate booked. `older` is what was
    /// on the wire, sent shortly before it, when it was sent (see [`OnWire`]).
    Sent {
        seq: u64,
        sent_at: Instant,
        older: OnWire,
        probing: (bool, bool),
    },
    /// Answered and settled: nothing left to give back.
    Settled,
}

/// A request booked on a key: send on `lane` at `at`, `tokens` booked against its
/// token limit. Gives itself back when dropped (see the module doc).
#[derive(Debug)]
pub struct Booking {
    pool: Arc<KeyPool>,
    pub lane: usize,
    pub at: Instant,
    /// Tokens booked: the estimate scaled by the calibration.
    pub tokens: u64,
    /// The raw estimate, to calibrate against the real usage.
    pub estimate: u64,
    /// Booked before tokens were metered: its token figure is unknown.
    blind: bool,
    stage: Stage,
}

impl Booking {
    /// What a refusal of this attempt tells its key (see [`KeyPool::pause`]).
    pub fn refusal(&self) -> Refused {
        match self.stage {
            Stage::Sent { seq, probing, .. } => Refused { seq, probing },
            _ => Refused::default(),
        }
    }

    /// The attempt goes on the wire now.
    pub fn sent(&mut self) {
        if self.stage == Stage::Booked {
            let mut state = self.pool.lanes[self.lane].state();
            state.sent += 1;
            let seq = state.sent;
            let now = Instant::now();
            self.stage = Stage::Sent {
                seq,
                sent_at: now,
                older: OnWire::of(state.on_wire.values(), overtake_horizon(now)),
                probing: (state.requests.probing(), state.tokens.probing()),
            };
            state.on_wire.insert(seq, (self.tokens, self.blind, now));
        }
    }

    /// The provider answered: `billed` tokens (`None`: the reply carried no usage, so
    /// nothing was billed), and its headers said `seen`. Settles the booking and learns
    /// from the headers in one step.
    pub fn settle(mut self, billed: Option<u64>, seen: &Observation, now: Instant) -> Learned {
        let stage = self.stage;
        self.stage = Stage::Settled;
        let pool = self.pool.clone();
        pool.settle(&self, stage, billed, seen, now)
    }
}

impl Drop for Booking {
    fn drop(&mut self) {
        if self.stage == Stage::Settled {
            return;
        }
        let mut state = self.pool.lanes[self.lane].state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if self.stage == Stage::Booked {
            state.requests.answered(1);
            state.tokens.answered(self.tokens);
            state.requests.refund(1);
            state.tokens.refund(self.tokens);
            if state.unpaced.since.is_some() {
                state.unpaced.requests = state.unpaced.requests.saturating_sub(1);
            }
        } else {
            // Sent, with no reply to settle it (a timeout, a dropped connection): the
            // provider may have counted it.
            state.requests.answered(1);
            state.tokens.answered(self.tokens);
            if let Stage::Sent { seq, .. } = self.stage {
                state.on_wire.remove(&seq);
            }
        }
    }
}

/// The attempt a 429 refused: its send order, and whether it was sent when the
/// provider had said nothing remains (requests, tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    pub seq: u64,
    pub probing: (bool, bool),
}

/// Why no key could take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookError {
    /// Every key has been retired.
    NoKeyLeft,
    /// The request's tokens exceed every live key's tokens-per-minute limit: it can
    /// never be sent within the limit.
    TooLarge { tokens: u64, limit: u64 },
}

/// Weight of the newest reply in the calibration's moving average.
const CALIBRATION_WEIGHT: f64 = 0.1;
/// Bounds of the calibration: a tokenizer is never off by more than this.
const CALIBRATION_RANGE: (f64, f64) = (0.25, 4.0);

/// How far our token estimates are from what the provider bills: a moving mean and
/// variance of the ratio. Bookings use the mean plus two deviations, so that spending an
/// announced `remaining` to the last token rarely runs into a 429 when single requests
/// are under-estimated; the excess is refunded when the reply settles the booking, so
/// the margin costs only while a request is in flight.
#[derive(Debug, Clone, Copy)]
struct Calibration {
    mean: f64,
    variance: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration {
            mean: 1.0,
            variance: 0.0,
        }
    }
}

impl Calibration {
    fn observe(&mut self, seen: f64) {
        if !seen.is_finite() {
            return;
        }
        let seen = seen.clamp(CALIBRATION_RANGE.0, CALIBRATION_RANGE.1);
        let delta = seen - self.mean;
        self.mean += CALIBRATION_WEIGHT * delta;
        self.variance =
            (1.0 - CALIBRATION_WEIGHT) * (self.variance + CALIBRATION_WEIGHT * delta * delta);
    }

    /// Booked tokens per estimated token.
    fn scale(&self) -> f64 {
        (self.mean + 2.0 * self.variance.sqrt()).clamp(CALIBRATION_RANGE.0, CALIBRATION_RANGE.1)
    }
}

/// What a response taught a key about its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Learned {
    /// The per-minute limits now in force, when one of them changed.
    pub changed: Option<(Option<u64>, Option<u64>)>,
    /// The provider said nothing is left until this long from now.
    pub exhausted_for: Option<Duration>,
    /// Whether an announced limit paces what is left (then `exhausted_for` needs no
    /// pause unless it outlasts `--max-wait`, which means the quota is spent).
    pub paced: bool,
}

/// All keys of a run.
#[derive(Debug)]
pub struct KeyPool {
    lanes: Vec<KeyLane>,
    /// Whether any key has a token limit, i.e. whether requests must be tokenized.
    meters_tokens: AtomicBool,
    /// Whether any key has had a limit or a pause: until then every booking is
    /// immediate and requests need not take turns. Never goes back to false.
    limited: AtomicBool,
    /// Real tokens per estimated token, over replies. Estimates are off when the
    /// provider's tokenizer is not ours (Claude, Llama on OpenRouter) or completions
    /// stop short of `max_tokens`; booking the estimate as it is would then either idle
    /// the key or run into 429s.
    calibration: Mutex<Calibration>,
    /// Woken when a reply changes what a limited key allows, so a request waiting for a
    /// booked instant can book again instead of sleeping past room that opened up.
    changed: tokio::sync::Notify,
}

impl KeyPool {
    /// `rpm` and `tpm` are per-key limits (`None` = unknown until learned).
    pub fn new(keys: Vec<ApiKey>, rpm: Option<u64>, tpm: Option<u64>) -> Arc<KeyPool> {
        let lanes = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| KeyLane {
                label: Arc::from(format!("key#{}", i + 1)),
                key,
                state: Mutex::new(LaneState {
                    requests: Meter::new(rpm),
                    tokens: Meter::new(tpm),
                    unpaced: Unpaced::default(),
                    in_flight: 0,
                    sent: 0,
                    on_wire: Default::default(),
                    billed_per_reply: 0.0,
                    paused_until: None,
                    retired: None,
                }),
            })
            .collect();
        Arc::new(KeyPool {
            lanes,
            meters_tokens: AtomicBool::new(tpm.is_some()),
            limited: AtomicBool::new(rpm.is_some() || tpm.is_some()),
            calibration: Mutex::new(Calibration::default()),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn lane(&self, index: usize) -> &KeyLane {
        &self.lanes[index]
    }

    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Keys still in the pool.
    pub fn live(&self) -> usize {
        self.lanes
            .iter()
            .filter(|l| l.state().retired.is_none())
            .count()
    }

    /// The reply with every key of the pool that it echoes replaced by the key's label.
    pub fn redact(
        &self,
        mut reply: crate::provider::transport::Reply,
    ) -> crate::provider::transport::Reply {
        for lane in &self.lanes {
            if let Some(clean) = lane.key.redact(&reply.body, &lane.label) {
                reply.body = clean;
            }
            // The request id is written to RESULTS and ERRORS too.
            let id = reply.headers.get("x-request-id");
            if let Some(clean) = id.and_then(|id| lane.key.redact(id.as_bytes(), &lane.label))
                && let Ok(value) = http::HeaderValue::from_bytes(&clean)
            {
                reply.headers.insert("x-request-id", value);
            }
        }
        reply
    }

    /// Whether a key is retired or paused past `now`: a booking on it should not be sent.
    pub fn unusable(&self, lane: usize, now: Instant) -> bool {
        let state = self.lanes[lane].state();
        state.retired.is_some() || state.paused_until.is_some_and(|t| t > now)
    }

    /// Books one request on the live key that can send it soonest. `tokens` is asked
    /// for only when some key meters tokens.
    pub fn book(
        self: &Arc<Self>,
        tokens: impl FnOnce() -> u64,
        now: Instant,
    ) -> Result<Booking, BookError> {
        let estimate = if self.meters_tokens.load(Ordering::Relaxed) {
            tokens()
        } else {
            0
        };
        self.book_estimate(estimate, now)
    }

    fn book_estimate(self: &Arc<Self>, estimate: u64, now: Instant) -> Result<Booking, BookError> {
        // Without token metering the estimate is 0: no need to take the calibration's
        // lock on every booking.
        let tokens = if estimate == 0 {
            0
        } else {
            let scale = self
                .calibration
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .scale();
            (estimate as f64 * scale).ceil() as u64
        };
        let mut too_large = None;
        let mut best: Option<(usize, (Instant, usize))> = None;
        for (i, lane) in self.lanes.iter().enumerate() {
            let state = lane.state();
            if state.retired.is_some() {
                continue;
            }
            if let Some(limit) = state.tokens.limit()
                && estimate > limit
            {
                too_large = Some(limit);
                continue;
            }
            let headroom = (earliest(&state, tokens, now), state.in_flight);
            if best.is_none_or(|(_, b)| headroom < b) {
                best = Some((i, headroom));
            }
        }
        let Some((lane, _)) = best else {
            return Err(match too_large {
                Some(limit) => BookError::TooLarge {
                    tokens: estimate,
                    limit,
                },
                None => BookError::NoKeyLeft,
            });
        };
        // Book under the lock, re-checking: another task may have booked in between.
        let mut state = self.lanes[lane].state();
        if state.retired.is_some() {
            drop(state);
            return self.book_estimate(estimate, now);
        }
        let at = earliest(&state, tokens, now);
        // Booked as charged: never more than the key's token limit can hold, so a
        // later correction works from what was really charged.
        let tokens = state.tokens.cap().map_or(tokens, |cap| tokens.min(cap));
        state.requests.book(1, at);
        state.tokens.book(tokens, at);
        state.in_flight += 1;
        if state.requests.limit().is_none() || state.tokens.limit().is_none() {
            let unpaced = &mut state.unpaced;
            if unpaced
                .since
                .is_none_or(|since| at.duration_since(since) >= WINDOW)
            {
                *unpaced = Unpaced {
                    since: Some(at),
                    ..Unpaced::default()
                };
            }
            unpaced.requests += 1;
        }
        drop(state);
        Ok(Booking {
            pool: self.clone(),
            lane,
            at,
            tokens,
            estimate,
            blind: !self.meters_tokens(),
            stage: Stage::Booked,
        })
    }

    /// Settles an answered booking and learns from the reply's headers.
    fn settle(
        &self,
        booking: &Booking,
        stage: Stage,
        billed: Option<u64>,
        seen: &Observation,
        now: Instant,
    ) -> Learned {
        if let Some(actual) = billed
            && booking.estimate > 0
        {
            let seen = actual as f64 / booking.estimate as f64;
            self.calibration
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .observe(seen);
        }
        let mut state = self.lanes[booking.lane].state();
        let state = &mut *state;
        // The tokens of an attempt are what the provider billed: nothing when the
        // reply carried no usage (a 400, a 5xx without usage).
        let actual = billed.unwrap_or(0);
        if let Some(billed) = billed {
            state.billed_per_reply = if state.billed_per_reply == 0.0 {
                billed as f64
            } else {
                (1.0 - CALIBRATION_WEIGHT) * state.billed_per_reply
                    + CALIBRATION_WEIGHT * billed as f64
            };
        }
        // Attempts booked before tokens were metered carry no token figure: a typical
        // reply's tokens stand in for each (never less than this one's).
        let stand_in = (state.billed_per_reply as u64).max(actual);
        let (seq, since) = match stage {
            Stage::Sent {
                seq,
                sent_at,
                older,
                ..
            } => {
                state.on_wire.remove(&seq);
                let now_older = OnWire::of(
                    state.on_wire.range(..seq).map(|(_, v)| v),
                    overtake_horizon(sent_at),
                );
                // Blind attempts still on the wire are missing from `outstanding`, and
                // those that overtook this one from what it says remains.
                let blind = state
                    .on_wire
                    .values()
                    .filter(|(_, blind, _)| *blind)
                    .count() as u64
                    + older.blind.saturating_sub(now_older.blind);
                (
                    seq,
                    (
                        older.count.saturating_sub(now_older.count),
                        older
                            .tokens
                            .saturating_sub(now_older.tokens)
                            .saturating_add(blind.saturating_mul(stand_in)),
                    ),
                )
            }
            _ => (0, (0, 0)),
        };
        state.in_flight = state.in_flight.saturating_sub(1);
        state.requests.answered(1);
        state.tokens.answered(booking.tokens);
        if state.tokens.limit().is_some() {
            state.tokens.correct(booking.tokens, actual);
        } else if state
            .unpaced
            .since
            .is_some_and(|s| now.duration_since(s) < WINDOW)
        {
            // No token limit yet: remember what was spent, in case one is learned.
            state.unpaced.tokens = state.unpaced.tokens.saturating_add(actual);
        }
        let learned = self.learn(state, seen, seq, since, now);
        if state.requests.limit().is_some() || state.tokens.limit().is_some() {
            self.limited.store(true, Ordering::Relaxed);
        }
        learned
    }

    /// Wakes the request waiting for a booked instant, to book again: the caller has
    /// applied everything a reply meant (its pause, a retirement) first, so the waiter
    /// books on the key's new state, never on a state about to change.
    pub fn wake(&self) {
        if self.is_limited() {
            self.changed.notify_waiters();
        }
    }

    /// Whether any key meters tokens, i.e. whether requests must be tokenized.
    pub fn meters_tokens(&self) -> bool {
        self.meters_tokens.load(Ordering::Relaxed)
    }

    /// Whether any key has had a limit or a pause (see [`KeyPool::book`]'s callers).
    pub fn is_limited(&self) -> bool {
        self.limited.load(Ordering::Relaxed)
    }

    /// Resolves when a reply next changes what a limited key allows (see
    /// [`tokio::sync::futures::Notified::enable`] to register before booking).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Adjusts a key's limits to what a response's headers announced.
    fn learn(
        &self,
        state: &mut LaneState,
        seen: &Observation,
        seq: u64,
        since: (u64, u64),
        now: Instant,
    ) -> Learned {
        let recent = state
            .unpaced
            .since
            .is_some_and(|s| now.duration_since(s) < WINDOW);
        let (spent_requests, spent_tokens) = if recent {
            (state.unpaced.requests, state.unpaced.tokens)
        } else {
            (0, 0)
        };
        let mut learned = Learned {
            paced: true,
            ..Learned::default()
        };
        let mut changed = false;
        for (quota, meter, since, spent) in [
            (seen.requests, &mut state.requests, since.0, spent_requests),
            (seen.tokens, &mut state.tokens, since.1, spent_tokens),
        ] {
            let Some(quota) = quota else { continue };
            changed |= meter.learn(&quota, seq, since, spent, now);
            if quota.remaining == Some(0)
                && let Some(reset) = quota.reset.filter(|r| !r.is_zero())
            {
                learned.exhausted_for = Some(learned.exhausted_for.map_or(reset, |e| e.max(reset)));
                learned.paced &= meter.allowance.is_some();
            }
        }
        if changed {
            if state.tokens.limit().is_some() {
                self.meters_tokens.store(true, Ordering::Relaxed);
            }
            learned.changed = Some((state.requests.limit(), state.tokens.limit()));
        }
        learned
    }

    /// Pauses a key until `until` (a pause already running is only ever extended);
    /// what the provider allows counts from then, not from before the pause. Returns
    /// true when this starts a new pause, so that a pause is reported once, not once per
    /// in-flight request that ran into the same 429.
    /// `refused` is the attempt that was refused (default when unknown).
    pub fn pause(&self, lane: usize, until: Instant, now: Instant, refused: Refused) -> bool {
        self.limited.store(true, Ordering::Relaxed);
        let mut state = self.lanes[lane].state();
        let running = state.paused_until.is_some_and(|t| t > now);
        if state.paused_until.is_none_or(|t| t < until) {
            state.paused_until = Some(until);
        }
        state
            .requests
            .exhaust_until(until, refused.seq, refused.probing.0);
        state
            .tokens
            .exhaust_until(until, refused.seq, refused.probing.1);
        drop(state);
        self.wake();
        !running
    }

    /// Retires a key for the rest of the run. True if it was live until now.
    pub fn retire(&self, lane: usize, why: Reason) -> bool {
        let mut state = self.lanes[lane].state();
        if state.retired.is_some() {
            return false;
        }
        state.retired = Some(why);
        drop(state);
        // A request sleeping until its instant on this key must book another.
        self.changed.notify_waiters();
        true
    }
}

/// When a lane could send a request of `tokens`.
fn earliest(state: &LaneState, tokens: u64, now: Instant) -> Instant {
    let after_pause = state.paused_until.map_or(now, |t| t.max(now));
    let by_requests = state.requests.earliest(1, after_pause);
    let by_tokens = state.tokens.earliest(tokens, after_pause);
    by_requests.max(by_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(n: usize) -> Vec<ApiKey> {
        (0..n)
            .map(|i| ApiKey::new(format!("k{i}")).unwrap())
            .collect()
    }

    fn quota(limit: u64, remaining: u64, reset_ms: u64) -> Quota {
        Quota {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(Duration::from_millis(reset_ms)),
        }
    }

    fn requests(q: Quota) -> Observation {
        Observation {
            requests: Some(q),
            tokens: None,
        }
    }

    /// Books one request and sends it.
    fn send(pool: &Arc<KeyPool>, now: Instant) -> Booking {
        let mut b = pool.book(|| 0, now).unwrap();
        b.sent();
        b
    }

    /// What the key's announced request allowance holds at `now`.
    fn requests_level(pool: &KeyPool, now: Instant) -> f64 {
        pool.lanes[0]
            .state()
            .requests
            .allowance
            .as_ref()
            .unwrap()
            .available(now)
    }

    /// Books, sends and answers one request with `seen` headers.
    fn answer(pool: &Arc<KeyPool>, seen: &Observation, now: Instant) -> Learned {
        send(pool, now).settle(Some(1), seen, now)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_spread_over_keys_with_headroom() {
        let pool = KeyPool::new(keys(2), Some(60), None);
        let now = Instant::now();
        let a = pool.book(|| 1, now).unwrap();
        let b = pool.book(|| 1, now).unwrap();
        assert_ne!(a.lane, b.lane, "the second request goes to the idle key");
        assert_eq!((a.at, b.at), (now, now));
        let c = pool.book(|| 1, now).unwrap();
        assert!(c.at > now, "both keys used their burst");
    }

    #[tokio::test(start_paused = true)]
    async fn paused_and_retired_keys() {
        let pool = KeyPool::new(keys(2), None, None);
        let now = Instant::now();
        let a = pool.book(|| 0, now).unwrap();
        let b = pool.book(|| 0, now).unwrap();
        assert_ne!(a.lane, b.lane, "unlimited keys share the work");
        drop((a, b));
        assert!(pool.pause(0, now + Duration::from_secs(5), now, Refused::default()));
        assert!(
            !pool.pause(0, now + Duration::from_secs(3), now, Refused::default()),
            "a shorter pause changes nothing"
        );
        assert!(
            !pool.pause(0, now + Duration::from_secs(4), now, Refused::default()),
            "already paused: no new event"
        );
        assert!(pool.unusable(0, now));
        assert_eq!(pool.book(|| 1, now).unwrap().lane, 1);
        assert!(pool.retire(1, Reason::Unauthorized));
        assert!(!pool.retire(1, Reason::Unauthorized));
        assert!(pool.unusable(1, now));
        let b = pool.book(|| 1, now).unwrap();
        assert_eq!((b.lane, b.at), (0, now + Duration::from_secs(5)));
        assert_eq!(pool.live(), 1);
        pool.retire(0, Reason::CreditsExhausted);
        assert_eq!(pool.book(|| 1, now).unwrap_err(), BookError::NoKeyLeft);
        assert_eq!(format!("{:?}", pool.lane(0).key), "ApiKey(<hidden>)");
        assert_eq!(&*pool.lane(1).label, "key#2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_booking_never_sent_is_given_back_whole() {
        let pool = KeyPool::new(keys(1), Some(60), Some(600));
        let now = Instant::now();
        let first = pool.book(|| 10, now).unwrap();
        let second = pool.book(|| 10, now).unwrap();
        let later = second.at;
        assert!(later > now);
        drop(second);
        let again = pool.book(|| 10, now).unwrap();
        assert_eq!(again.at, later, "the dropped booking left no trace");
        drop(again);
        drop(first);
        // All refunded. (Within nanoseconds: the token limit's booking began where the
        // request limit put it, and a refund gives back units, not that alignment.)
        let held = pool.book(|| 10, now).unwrap();
        assert!(
            held.at - now < Duration::from_micros(1),
            "{:?}",
            held.at - now
        );
        assert_eq!(pool.lanes[0].state().in_flight, 1, "only the booking held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_booking_keeps_its_request_and_settles_its_tokens() {
        let pool = KeyPool::new(keys(1), Some(60), Some(6000));
        let now = Instant::now();
        let mut sent = pool.book(|| 3000, now).unwrap();
        sent.sent();
        drop(sent);
        let next = pool.book(|| 1, now).unwrap();
        assert!(next.at > now, "the sent request stays in the window");
        drop(next);
        assert_eq!(pool.lanes[0].state().in_flight, 0);
        // Settled to what was billed: nothing, for a reply without usage.
        let pool = KeyPool::new(keys(1), None, Some(6000));
        let mut big = pool.book(|| 5000, now).unwrap();
        big.sent();
        let blocked = pool.book(|| 5000, now).unwrap().at;
        assert!(blocked > now);
        big.settle(None, &Observation::default(), now);
        assert_eq!(
            pool.book(|| 5000, now).unwrap().at,
            now,
            "an unbilled attempt gives its tokens back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_booking_is_capped_at_what_the_limit_holds_and_a_request_larger_than_it_is_refused() {
        let pool = KeyPool::new(keys(1), None, Some(60_000));
        let now = Instant::now();
        let err = pool.book(|| 1_000_000_000, now).unwrap_err();
        assert_eq!(
            err,
            BookError::TooLarge {
                tokens: 1_000_000_000,
                limit: 60_000
            }
        );
        let mut b = pool.book(|| 60_000, now).unwrap();
        b.sent();
        drop(b);
        let next = pool.book(|| 1, now).unwrap();
        assert!(
            next.at <= now + WINDOW + Duration::from_secs(1),
            "one window at most: {:?}",
            next.at - now
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limits_are_learned_under_the_ceiling() {
        let pool = KeyPool::new(keys(1), Some(1000), None);
        let now = Instant::now();
        let seen = Observation {
            requests: Some(quota(600, 590, 100)),
            tokens: Some(quota(100_000, 99_000, 600)),
        };
        let learned = answer(&pool, &seen, now);
        assert_eq!(learned.changed, Some((Some(600), Some(100_000))));
        assert_eq!(
            answer(&pool, &seen, now).changed,
            None,
            "the same limits change nothing"
        );
        let capped = requests(quota(5000, 10, 100));
        let learned = answer(&pool, &capped, now);
        assert_eq!(
            learned.changed, None,
            "the pace stays at 600; a larger announcement never raises it"
        );
        assert_eq!(pool.lanes[0].state().requests.limit(), Some(600));
    }

    #[tokio::test(start_paused = true)]
    async fn what_remains_is_spent_at_once_then_paced_at_the_limits_rate() {
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        answer(&pool, &requests(quota(600, 299, 30_000)), now);
        let mut held = Vec::new();
        for _ in 0..299 {
            let b = pool.book(|| 0, now).unwrap();
            assert_eq!(b.at, now, "remaining is spent now");
            held.push(b);
        }
        let next = pool.book(|| 0, now).unwrap();
        let wait = next.at - now;
        assert!(
            wait >= Duration::from_millis(99) && wait <= Duration::from_millis(101),
            "then one every 100 ms (600/min): {wait:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_remaining_is_believed_about_the_present() {
        // A short reset does not unlock a burst that remaining did not announce.
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        answer(&pool, &requests(quota(300, 0, 200)), now);
        let later = now + Duration::from_millis(250);
        let a = pool.book(|| 0, later).unwrap();
        let b = pool.book(|| 0, later).unwrap();
        assert!(a.at >= now + Duration::from_millis(199));
        assert!(
            b.at - a.at >= Duration::from_millis(199),
            "paced at 300/min, not released at the reset: {:?}",
            b.at - a.at
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reply_cannot_raise_what_remains() {
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        answer(&pool, &requests(quota(600, 100, 1000)), now);
        let early = send(&pool, now);
        let late = send(&pool, now);
        // The later-sent attempt answers first, with less left.
        late.settle(Some(0), &requests(quota(600, 5, 1000)), now);
        early.settle(Some(0), &requests(quota(600, 90, 1000)), now);
        let level = requests_level(&pool, now);
        assert!(
            level <= 5.0,
            "stale news lowered nothing and raised nothing: {level}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_429_nothing_goes_before_its_retry_after_until_the_provider_has_room() {
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        answer(&pool, &requests(quota(600, 0, 60_000)), now);
        let late = send(&pool, now);
        // A 429 says: nothing for 59 s.
        let until = now + Duration::from_secs(59);
        pool.pause(0, until, now, late.refusal());
        // A reply sent after it, still saying nothing is left, does not shorten that.
        late.settle(
            Some(0),
            &requests(quota(600, 0, 60_000)),
            now + Duration::from_millis(50),
        );
        let next = pool.book(|| 0, now + Duration::from_millis(60)).unwrap();
        assert!(next.at >= until, "{:?}", next.at - now);
        drop(next);
        // A reply that says there is room again lifts it.
        let probe = send(&pool, until);
        probe.settle(
            Some(0),
            &requests(quota(600, 99, 60_000)),
            until + Duration::from_millis(50),
        );
        let burst = pool.book(|| 0, until + Duration::from_millis(50)).unwrap();
        assert_eq!(burst.at, until + Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_overtake_each_other_do_not_inflate_what_remains() {
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        answer(&pool, &requests(quota(600, 100, 1000)), now);
        let a = send(&pool, now);
        let b = send(&pool, now);
        // b reached the provider first (10 left after it), a second (9 left); a's
        // reply arrives first, then b's: b's figure does not count a.
        a.settle(Some(0), &requests(quota(600, 9, 1000)), now);
        b.settle(Some(0), &requests(quota(600, 10, 1000)), now);
        let level = requests_level(&pool, now);
        assert!(level < 9.5, "9 remain, not {level}");
    }

    /// A provider's limit, simulated: a sliding window or a token bucket over `WINDOW`.
    enum Provider {
        Window {
            limit: u64,
            log: std::collections::VecDeque<Instant>,
        },
        Bucket {
            limit: u64,
            burst: u64,
            level: f64,
            at: Instant,
        },
    }

    impl Provider {
        /// Admits a request at `t`: `Ok(remaining after it)` or `Err(retry_after)`.
        fn admit(&mut self, t: Instant) -> Result<u64, Duration> {
            self.settle(t);
            match self {
                Provider::Window { limit, log } => {
                    if log.len() as u64 >= *limit {
                        return Err((log[0] + WINDOW).duration_since(t));
                    }
                    log.push_back(t);
                    Ok(*limit - log.len() as u64)
                }
                Provider::Bucket { limit, level, .. } => {
                    let rate = *limit as f64 / WINDOW.as_secs_f64();
                    if *level < 1.0 {
                        return Err(Duration::from_secs_f64((1.0 - *level) / rate));
                    }
                    *level -= 1.0;
                    Ok(level.floor() as u64)
                }
            }
        }

        /// Brings the provider's state to `t`.
        fn settle(&mut self, t: Instant) {
            match self {
                Provider::Window { log, .. } => {
                    while log.front().is_some_and(|f| t.duration_since(*f) >= WINDOW) {
                        log.pop_front();
                    }
                }
                Provider::Bucket {
                    limit,
                    burst,
                    level,
                    at,
                } => {
                    let rate = *limit as f64 / WINDOW.as_secs_f64();
                    *level =
                        (*level + t.duration_since(*at).as_secs_f64() * rate).min(*burst as f64);
                    *at = t;
                }
            }
        }

        /// OpenAI's `reset`: the time until the limit is whole again.
        fn reset(&self, t: Instant) -> Duration {
            match self {
                Provider::Window { log, .. } => log.back().map_or(Duration::ZERO, |newest| {
                    (*newest + WINDOW).duration_since(t)
                }),
                Provider::Bucket {
                    limit,
                    burst,
                    level,
                    ..
                } => Duration::from_secs_f64(
                    (*burst as f64 - *level) / (*limit as f64 / WINDOW.as_secs_f64()),
                ),
            }
        }

        fn limit(&self) -> u64 {
            match self {
                Provider::Window { limit, .. } | Provider::Bucket { limit, .. } => *limit,
            }
        }
    }

    /// Sends `gaps.len()` requests through a pool that learns only from the provider's
    /// replies; returns (refusals, windows the run spanned).
    fn drive(mut provider: Provider, gaps: &[u64]) -> (u64, u64) {
        let pool = KeyPool::new(keys(1), None, None);
        let start = Instant::now();
        let mut t = start;
        let mut refused = 0;
        for gap in gaps {
            t += Duration::from_millis(*gap);
            let mut b = pool.book(|| 0, t).unwrap();
            t = t.max(b.at);
            b.sent();
            let attempt = b.refusal();
            let admitted = provider.admit(t);
            let said = |remaining| {
                requests(Quota {
                    limit: Some(provider.limit()),
                    remaining: Some(remaining),
                    reset: Some(provider.reset(t)),
                })
            };
            match admitted {
                Ok(remaining) => {
                    b.settle(Some(0), &said(remaining), t);
                }
                Err(retry_after) => {
                    refused += 1;
                    b.settle(None, &said(0), t);
                    pool.pause(0, t + retry_after, t, attempt);
                }
            }
        }
        (refused, t.duration_since(start).as_secs() / 60 + 1)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Against a token bucket, what the provider announces is never outrun; against a
        /// sliding window, at most one probe per window is refused. Either way the
        /// provider never holds more than its limit (it refuses instead), so refusals
        /// measure how often volley sent what was not allowed.
        #[test]
        fn announced_limits_are_never_outrun(
            limit in 1u64..300,
            burst_share in 1u64..=4,
            gaps in proptest::collection::vec(proptest::prop_oneof![4 => proptest::prelude::Just(0u64), 1 => 0u64..5_000], 1..600),
        ) {
            let now = Instant::now();
            let burst = (limit * burst_share / 4).max(1);
            let bucket = Provider::Bucket { limit, burst, level: burst as f64, at: now };
            let (refused, _) = drive(bucket, &gaps);
            proptest::prop_assert_eq!(refused, 0, "a bucket was outrun");
            let window = Provider::Window { limit, log: Default::default() };
            let (refused, windows) = drive(window, &gaps);
            proptest::prop_assert!(refused <= windows, "{} refusals over {} windows", refused, windows);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_quota_is_reported_and_an_absurd_limit_is_ignored() {
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        let daily = requests(Quota {
            limit: Some(100),
            remaining: Some(0),
            reset: Some(Duration::from_secs(3_600_000)),
        });
        let learned = answer(&pool, &daily, now);
        assert_eq!(learned.exhausted_for, Some(Duration::from_secs(3_600_000)));
        assert!(learned.paced);
        assert!(
            pool.book(|| 0, now).unwrap().at > now + Duration::from_secs(60),
            "limiting stays on"
        );
        let pool = KeyPool::new(keys(1), Some(100), None);
        let zero = requests(quota(0, 0, 0));
        assert_eq!(answer(&pool, &zero, now).changed, None);
        assert_eq!(pool.lanes[0].state().requests.limit(), Some(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_without_remaining_paces_evenly_and_counts_what_was_sent() {
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        let mut held = Vec::new();
        for _ in 0..50 {
            let mut b = pool.book(|| 0, now).unwrap();
            b.sent();
            held.push(b);
        }
        let no_remaining = requests(Quota {
            limit: Some(60),
            remaining: None,
            reset: None,
        });
        let learned = held.pop().unwrap().settle(Some(0), &no_remaining, now);
        assert_eq!(learned.changed, Some((Some(60), None)));
        let next = pool.book(|| 0, now).unwrap();
        assert!(
            next.at >= now + Duration::from_secs(45),
            "50 of 60 were spent: {:?}",
            next.at - now
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_counted_only_when_metered() {
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        let b = pool
            .book(|| panic!("no token limit: no tokenizing"), now)
            .unwrap();
        assert_eq!(b.tokens, 0);
        drop(b);
        let mut b = pool.book(|| 0, now).unwrap();
        b.sent();
        b.settle(
            Some(0),
            &Observation {
                requests: None,
                tokens: Some(quota(1000, 1000, 0)),
            },
            now,
        );
        assert_eq!(pool.book(|| 300, now).unwrap().tokens, 300);
    }

    #[tokio::test(start_paused = true)]
    async fn token_estimates_are_calibrated_by_real_usage() {
        let pool = KeyPool::new(keys(1), None, Some(1_000_000));
        let now = Instant::now();
        let settle = |estimate: u64, billed: u64| {
            let mut b = pool.book(|| estimate, now).unwrap();
            b.sent();
            b.settle(Some(billed), &Observation::default(), now);
        };
        for _ in 0..200 {
            settle(100, 150);
        }
        let b = pool.book(|| 100, now).unwrap();
        assert!(
            (150..=152).contains(&b.tokens),
            "the provider steadily counts 1.5x our estimate: {}",
            b.tokens
        );
        assert_eq!(b.estimate, 100);
        drop(b);
        // When the provider's count varies around the same mean, bookings keep a margin
        // above it, so that spending what remains rarely falls short.
        for i in 0..200 {
            settle(100, if i % 2 == 0 { 120 } else { 180 });
        }
        let b = pool.book(|| 100, now).unwrap();
        assert!(
            (200..=225).contains(&b.tokens),
            "mean 1.5x, deviation 0.3x: booked at about mean + 2 deviations: {}",
            b.tokens
        );
    }
}
