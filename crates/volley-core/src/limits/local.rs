//! The in-process rate gate: one lane's limits, paced by GCRA and by what the provider
//! announces, behind [`RateGate`].
//!
//! Two meters, requests and tokens, are reserved together under one lock. A limit given
//! by flag (`--rpm`/`--tpm`) is an even pace that headers may only lower; what the
//! provider announces (`remaining` and `reset`) is spent at once and then paced at the
//! limit's rate ([`Allowance`]). A 429 pauses the gate so in-flight peers stop
//! hammering it. A reservation never sent is given back whole; a sent one keeps its
//! request in the window and is settled to the tokens the provider billed.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::limits::gate::{Grant, Learned, Limits, OnWire, RateGate, Refused, Stage};
use crate::limits::headers::{Observation, Quota};
use crate::limits::limiter::{Allowance, Announcement, Gcra, Limiter, WINDOW};

/// Weight of the newest reply in the moving average of tokens billed per reply.
const BILLED_WEIGHT: f64 = 0.1;

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

/// Attempts on the wire by send order. Send instants never go back with the order, so
/// the attempts sent since an instant are a tail, read from the newest back: a lookup
/// costs what was sent in the last [`OVERTAKE_WINDOW`], not everything in flight.
///
/// One flat queue in send order: scanning it is a walk through contiguous memory, where
/// a tree's walk from node to node was 2% of volley's CPU per request. An answered
/// attempt stays as a tombstone until every attempt before it is answered too (the
/// front is popped), or until tombstones outnumber the attempts on the wire (the queue
/// is compacted), so it holds at most about twice what is in flight.
#[derive(Debug, Default)]
struct Wire {
    /// `(seq, attempt, still on the wire)`, `seq` rising.
    attempts: std::collections::VecDeque<(u64, Wired, bool)>,
    /// How many of them are still on the wire.
    live: usize,
    /// How many of those were booked before tokens were metered.
    blind: u64,
    /// The newest send instant.
    latest: Option<Instant>,
}

/// Tombstones tolerated beyond the attempts on the wire before the queue is compacted.
const TOMBSTONE_SLACK: usize = 64;

impl Wire {
    /// Puts attempt `seq` on the wire; returns the instant recorded for it (never
    /// before an earlier attempt's, so the order holds). `seq` rises with each call.
    fn insert(&mut self, seq: u64, tokens: u64, blind: bool, sent: Instant) -> Instant {
        let sent = self.latest.map_or(sent, |l| l.max(sent));
        self.latest = Some(sent);
        self.blind += u64::from(blind);
        self.live += 1;
        self.attempts.push_back((seq, (tokens, blind, sent), true));
        sent
    }

    fn remove(&mut self, seq: u64) {
        let Ok(i) = self.attempts.binary_search_by_key(&seq, |(s, _, _)| *s) else {
            return;
        };
        let (_, (_, blind, _), live) = &mut self.attempts[i];
        if !*live {
            return;
        }
        *live = false;
        self.live -= 1;
        self.blind -= u64::from(*blind);
        while self.attempts.front().is_some_and(|(_, _, live)| !live) {
            self.attempts.pop_front();
        }
        if self.attempts.len() > 2 * self.live + TOMBSTONE_SLACK {
            self.attempts.retain(|(_, _, live)| *live);
        }
    }

    /// What the attempts sent before `seq` (all, when `None`), from `since` on, amount to.
    fn since(&self, before: Option<u64>, since: Instant) -> OnWire {
        let end = match before {
            Some(seq) => self.attempts.partition_point(|(s, _, _)| *s < seq),
            None => self.attempts.len(),
        };
        // Send instants rise with `seq`, tombstones' too: the first one older than
        // `since` ends the tail.
        self.attempts
            .range(..end)
            .rev()
            .take_while(|(_, (_, _, sent), _)| *sent >= since)
            .filter(|(_, _, live)| *live)
            .fold(OnWire::default(), |sum, (_, (tokens, blind, _), _)| {
                OnWire {
                    count: sum.count + 1,
                    tokens: sum.tokens.saturating_add(*tokens),
                    blind: sum.blind + u64::from(*blind),
                }
            })
    }
}

/// The gate's mutable state, behind one lock so its limits are reserved together.
#[derive(Debug)]
struct GateState {
    requests: Meter,
    tokens: Meter,
    unpaced: Unpaced,
    /// Send order of the attempts through this gate, so a late reply cannot pass for news.
    sent: u64,
    /// Attempts on the wire by send order: their booked tokens, and whether they were
    /// booked before tokens were metered.
    on_wire: Wire,
    /// Tokens billed per reply, as a moving average: what an attempt booked before
    /// tokens were metered is taken to weigh.
    billed_per_reply: f64,
    paused_until: Option<Instant>,
}

impl GateState {
    /// When a request of `tokens` could be sent.
    fn earliest(&self, tokens: u64, now: Instant) -> Instant {
        let after_pause = self.paused_until.map_or(now, |t| t.max(now));
        let by_requests = self.requests.earliest(1, after_pause);
        let by_tokens = self.tokens.earliest(tokens, after_pause);
        by_requests.max(by_tokens)
    }
}

/// One lane's limits, in this process.
#[derive(Debug)]
pub struct LocalGate {
    state: Mutex<GateState>,
}

impl LocalGate {
    /// `rpm` and `tpm` are ceilings given by flag (`None` = unknown until learned).
    pub fn new(rpm: Option<u64>, tpm: Option<u64>) -> LocalGate {
        LocalGate {
            state: Mutex::new(GateState {
                requests: Meter::new(rpm),
                tokens: Meter::new(tpm),
                unpaced: Unpaced::default(),
                sent: 0,
                on_wire: Default::default(),
                billed_per_reply: 0.0,
                paused_until: None,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, GateState> {
        // A panic while holding this lock cannot leave the limiter inconsistent in a
        // way that matters more than stopping would, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Books at once (the local gate never waits to reserve).
    fn reserve_now(&self, tokens: u64, blind: bool, now: Instant) -> Grant {
        let mut state = self.state();
        let at = state.earliest(tokens, now);
        // Booked as charged: never more than the token limit can hold, so a later
        // correction works from what was really charged.
        let tokens = state.tokens.cap().map_or(tokens, |cap| tokens.min(cap));
        state.requests.book(1, at);
        state.tokens.book(tokens, at);
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
        Grant {
            wait: at.saturating_duration_since(now),
            tokens,
            blind,
            stage: Stage::Reserved,
        }
    }

    /// Adjusts the limits to what a response's headers announced.
    fn learn(
        state: &mut GateState,
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
            learned.changed = Some((state.requests.limit(), state.tokens.limit()));
        }
        learned
    }
}

impl RateGate for LocalGate {
    fn limits(&self) -> Limits {
        let state = self.state();
        Limits {
            requests: state.requests.limit(),
            tokens: state.tokens.limit(),
        }
    }

    fn remaining(&self, now: Instant) -> Limits {
        let state = self.state();
        // Owed units (a negative level) show as none left.
        let left = |m: &Meter| {
            m.allowance
                .as_ref()
                .map(|a| a.available(now).max(0.0).floor() as u64)
        };
        Limits {
            requests: left(&state.requests),
            tokens: left(&state.tokens),
        }
    }

    fn wait(&self, tokens: u64, now: Instant) -> Duration {
        self.state()
            .earliest(tokens, now)
            .saturating_duration_since(now)
    }

    fn reserve(&self, tokens: u64, blind: bool, now: Instant) -> BoxFuture<'_, Grant> {
        let grant = self.reserve_now(tokens, blind, now);
        Box::pin(std::future::ready(grant))
    }

    fn sent(&self, grant: &mut Grant, now: Instant) {
        if grant.stage != Stage::Reserved {
            return;
        }
        let mut state = self.state();
        state.sent += 1;
        let seq = state.sent;
        // The instant recorded (never before an earlier attempt's), so that what this
        // attempt finds on the wire now and what its reply finds later count alike.
        let now = state.on_wire.latest.map_or(now, |l| l.max(now));
        let older = state.on_wire.since(None, overtake_horizon(now));
        let sent_at = state.on_wire.insert(seq, grant.tokens, grant.blind, now);
        grant.stage = Stage::Sent {
            seq,
            sent_at,
            older,
            probing: (state.requests.probing(), state.tokens.probing()),
        };
    }

    fn release(&self, grant: &Grant) {
        let mut state = self.state();
        match grant.stage {
            Stage::Settled => {}
            Stage::Reserved => {
                state.requests.answered(1);
                state.tokens.answered(grant.tokens);
                state.requests.refund(1);
                state.tokens.refund(grant.tokens);
                if state.unpaced.since.is_some() {
                    state.unpaced.requests = state.unpaced.requests.saturating_sub(1);
                }
            }
            Stage::Sent { seq, .. } => {
                // Sent, with no reply to settle it (a timeout, a dropped connection):
                // the provider may have counted it.
                state.requests.answered(1);
                state.tokens.answered(grant.tokens);
                state.on_wire.remove(seq);
            }
        }
    }

    fn settle(
        &self,
        grant: &Grant,
        billed: Option<u64>,
        seen: &Observation,
        now: Instant,
    ) -> Learned {
        let mut state = self.state();
        let state = &mut *state;
        // The tokens of an attempt are what the provider billed: nothing when the
        // reply carried no usage (a 400, a 5xx without usage).
        let actual = billed.unwrap_or(0);
        if let Some(billed) = billed {
            state.billed_per_reply = if state.billed_per_reply == 0.0 {
                billed as f64
            } else {
                (1.0 - BILLED_WEIGHT) * state.billed_per_reply + BILLED_WEIGHT * billed as f64
            };
        }
        // Attempts booked before tokens were metered carry no token figure: a typical
        // reply's tokens stand in for each (never less than this one's).
        let stand_in = (state.billed_per_reply as u64).max(actual);
        let (seq, since) = match grant.stage {
            Stage::Sent {
                seq,
                sent_at,
                older,
                ..
            } => {
                state.on_wire.remove(seq);
                let now_older = state.on_wire.since(Some(seq), overtake_horizon(sent_at));
                // Blind attempts still on the wire are missing from `outstanding`, and
                // those that overtook this one from what it says remains.
                let blind = state.on_wire.blind + older.blind.saturating_sub(now_older.blind);
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
        state.requests.answered(1);
        state.tokens.answered(grant.tokens);
        if state.tokens.limit().is_some() {
            state.tokens.correct(grant.tokens, actual);
        } else if state
            .unpaced
            .since
            .is_some_and(|s| now.duration_since(s) < WINDOW)
        {
            // No token limit yet: remember what was spent, in case one is learned.
            state.unpaced.tokens = state.unpaced.tokens.saturating_add(actual);
        }
        LocalGate::learn(state, seen, seq, since, now)
    }

    fn pause(&self, until: Instant, now: Instant, refused: Refused) -> bool {
        let mut state = self.state();
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
        !running
    }

    fn paused(&self, now: Instant) -> bool {
        self.state().paused_until.is_some_and(|t| t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One gate driven the way a lane drives it, so each test reads as bookings.
    struct TestPool {
        gate: LocalGate,
    }

    impl TestPool {
        fn new(rpm: Option<u64>, tpm: Option<u64>) -> TestPool {
            TestPool {
                gate: LocalGate::new(rpm, tpm),
            }
        }

        fn book(&self, tokens: impl FnOnce() -> u64, now: Instant) -> Result<Booked<'_>, ()> {
            let grant = self.gate.reserve_now(tokens(), false, now);
            Ok(Booked {
                gate: &self.gate,
                at: now + grant.wait,
                grant,
            })
        }

        fn pause(&self, _lane: usize, until: Instant, now: Instant, refused: Refused) -> bool {
            self.gate.pause(until, now, refused)
        }
    }

    struct Booked<'a> {
        gate: &'a LocalGate,
        at: Instant,
        grant: Grant,
    }

    impl Booked<'_> {
        fn sent(&mut self) {
            self.gate.sent(&mut self.grant, Instant::now());
        }

        fn refusal(&self) -> Refused {
            self.grant.refusal()
        }

        fn settle(mut self, billed: Option<u64>, seen: &Observation, now: Instant) -> Learned {
            let learned = self.gate.settle(&self.grant, billed, seen, now);
            self.grant.stage = Stage::Settled;
            learned
        }
    }

    impl Drop for Booked<'_> {
        fn drop(&mut self) {
            self.gate.release(&self.grant);
        }
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
    fn send(pool: &TestPool, now: Instant) -> Booked<'_> {
        let mut b = pool.book(|| 0, now).unwrap();
        b.sent();
        b
    }

    /// What the gate's announced request allowance holds at `now`.
    fn requests_level(pool: &TestPool, now: Instant) -> f64 {
        pool.gate
            .state()
            .requests
            .allowance
            .as_ref()
            .unwrap()
            .available(now)
    }

    /// Books, sends and answers one request with `seen` headers.
    fn answer(pool: &TestPool, seen: &Observation, now: Instant) -> Learned {
        send(pool, now).settle(Some(1), seen, now)
    }

    #[tokio::test(start_paused = true)]
    async fn limits_are_learned_under_the_ceiling() {
        let pool = TestPool::new(Some(1000), None);
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
        assert_eq!(pool.gate.state().requests.limit(), Some(600));
    }

    #[tokio::test(start_paused = true)]
    async fn what_remains_is_spent_at_once_then_paced_at_the_limits_rate() {
        let pool = TestPool::new(None, None);
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
    async fn what_remains_is_shown_as_the_provider_said_less_what_went_out_since() {
        let pool = TestPool::new(Some(1000), None);
        let now = Instant::now();
        assert_eq!(
            pool.gate.remaining(now),
            Limits::default(),
            "nothing said yet"
        );
        answer(&pool, &requests(quota(600, 299, 30_000)), now);
        assert_eq!(pool.gate.remaining(now).requests, Some(299));
        let _held: Vec<_> = (0..9).map(|_| pool.book(|| 0, now).unwrap()).collect();
        assert_eq!(pool.gate.remaining(now).requests, Some(290));
        // The window gives back at the limit's pace: 10 a second at 600/min.
        let later = now + Duration::from_secs(1);
        assert_eq!(pool.gate.remaining(later).requests, Some(300));
        assert_eq!(pool.gate.remaining(later).tokens, None);
    }

    #[tokio::test(start_paused = true)]
    async fn only_remaining_is_believed_about_the_present() {
        // A short reset does not unlock a burst that remaining did not announce.
        let pool = TestPool::new(None, None);
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
        let pool = TestPool::new(None, None);
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
        let pool = TestPool::new(None, None);
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
        let pool = TestPool::new(None, None);
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

    #[tokio::test(start_paused = true)]
    async fn a_spent_quota_is_reported_and_an_absurd_limit_is_ignored() {
        let pool = TestPool::new(None, None);
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
        let pool = TestPool::new(Some(100), None);
        let zero = requests(quota(0, 0, 0));
        assert_eq!(answer(&pool, &zero, now).changed, None);
        assert_eq!(pool.gate.state().requests.limit(), Some(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_without_remaining_paces_evenly_and_counts_what_was_sent() {
        let pool = TestPool::new(None, None);
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
        let pool = TestPool::new(None, None);
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

    proptest::proptest! {
        /// The queue of attempts on the wire answers as a map of the attempts still on
        /// it would, whatever order they are answered in.
        #[test]
        fn the_wire_counts_what_a_map_of_live_attempts_counts(
            ops in proptest::collection::vec((0u8..3, 0u64..40, 0u64..300, proptest::prelude::any::<bool>()), 1..300),
        ) {
            let start = Instant::now();
            let mut wire = Wire::default();
            let mut model = std::collections::BTreeMap::new();
            let (mut seq, mut clock) = (0u64, 0u64);
            for (op, pick, step, blind) in ops {
                match op {
                    0 => {
                        seq += 1;
                        clock += step;
                        let at = start + Duration::from_millis(clock);
                        wire.insert(seq, pick, blind, at);
                        model.insert(seq, (pick, blind, at));
                    }
                    1 => {
                        let victim = seq.saturating_sub(pick);
                        wire.remove(victim);
                        model.remove(&victim);
                    }
                    _ => {
                        let before = (pick % 2 == 0).then(|| seq.saturating_sub(pick / 2));
                        let since = start + Duration::from_millis(clock.saturating_sub(step));
                        let expected = model
                            .range(..before.unwrap_or(u64::MAX))
                            .rev()
                            .map(|(_, w)| w)
                            .take_while(|(_, _, sent)| *sent >= since)
                            .fold(OnWire::default(), |sum, (tokens, blind, _)| OnWire {
                                count: sum.count + 1,
                                tokens: sum.tokens + tokens,
                                blind: sum.blind + u64::from(*blind),
                            });
                        proptest::prop_assert_eq!(wire.since(before, since), expected);
                    }
                }
                let blind = model.values().filter(|(_, b, _)| *b).count() as u64;
                proptest::prop_assert_eq!(wire.blind, blind);
                proptest::prop_assert_eq!(wire.live, model.len());
                proptest::prop_assert!(wire.attempts.len() <= 2 * wire.live + TOMBSTONE_SLACK);
            }
        }
    }
}
