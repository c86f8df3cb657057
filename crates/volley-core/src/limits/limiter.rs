//! Rate limiters that never let a burst exceed the limit.
//!
//! A limit is "N units per minute" (requests, or tokens). It is enforced as a GCRA
//! (generic cell rate algorithm) on tokio's clock, tuned so that the units admitted in
//! any 60-second window never exceed N: the steady rate is `(N - B) / 60 s` and the burst
//! is `B`, one second's worth, so `60 s × rate + B = N`. Pacing evenly also keeps
//! providers whose buckets refill continuously (OpenAI) happy, where a sliding-window
//! client that fires a whole minute's quota at once would not be.
//!
//! The limiter works by reservation: [`Limiter::earliest`] says when `cost` units could
//! go, [`Limiter::commit`] books them at a chosen instant. Splitting the two lets a key
//! book its request and token limits at the same instant (the later of the two), so one
//! limiter never lets through a request the other has delayed into a burst. It is a
//! trait so that limits learned from headers and, later, limits shared through Redis
//! can stand behind the same calls.

use std::time::Duration;

use tokio::time::Instant;

/// The window every per-minute limit is defined over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// A per-minute limit that hands out admission times.
pub trait Limiter: Send {
    /// The earliest instant, not before `now`, at which `cost` units may go.
    fn earliest(&self, cost: u64, now: Instant) -> Instant;
    /// Books `cost` units at `at` (an instant no earlier than [`Limiter::earliest`]).
    fn commit(&mut self, cost: u64, at: Instant);
    /// Corrects a booking once the real cost is known: positive charges more, negative
    /// refunds (an over-estimate of tokens, say).
    fn adjust(&mut self, delta: i64);
    /// Replaces the limit, e.g. with one learned from response headers. `None` lifts it.
    fn set_limit(&mut self, per_minute: Option<u64>);
    /// The limit in force, if any.
    fn limit(&self) -> Option<u64>;
}

/// GCRA state for one limit; unlimited when `per_minute` is `None`.
#[derive(Debug, Clone)]
pub struct Gcra {
    per_minute: Option<u64>,
    /// Time one unit costs at the steady rate.
    interval: Duration,
    /// How far ahead of now the theoretical arrival time may run: the burst.
    tolerance: Duration,
    /// Theoretical arrival time: when the bucket would be empty again.
    tat: Option<Instant>,
}

fn units(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Gcra {
    pub fn new(per_minute: Option<u64>) -> Gcra {
        let mut g = Gcra {
            per_minute: None,
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            tat: None,
        };
        g.set_limit(per_minute);
        g
    }

    /// Time `cost` units take at the steady rate.
    fn span(&self, cost: u64) -> Duration {
        self.interval.saturating_mul(units(cost))
    }
}

impl Limiter for Gcra {
    fn earliest(&self, cost: u64, now: Instant) -> Instant {
        let (Some(_), Some(tat)) = (self.per_minute, self.tat) else {
            return now;
        };
        // A request larger than the burst may go once the bucket is full (tat <= now):
        // it is the one case where a window may hold more than the limit, by less than
        // that one request.
        let tolerance = self.tolerance.max(self.span(cost));
        (tat + self.span(cost))
            .checked_sub(tolerance)
            .map_or(now, |t| t.max(now))
    }

    fn commit(&mut self, cost: u64, at: Instant) {
        let Some(limit) = self.per_minute else {
            return;
        };
        // A booking is capped at what the limit can hold: one oversized request may fill
        // a window, never book the key days ahead.
        let start = self.tat.map_or(at, |tat| tat.max(at));
        self.tat = Some(start + self.span(cost.min(limit)));
    }

    fn adjust(&mut self, delta: i64) {
        let (Some(tat), Some(limit)) = (self.tat, self.per_minute) else {
            return;
        };
        let span = self.span(delta.unsigned_abs().min(limit));
        self.tat = Some(if delta >= 0 {
            tat + span
        } else {
            tat.checked_sub(span).unwrap_or(tat)
        });
    }

    fn set_limit(&mut self, per_minute: Option<u64>) {
        self.per_minute = per_minute
            .filter(|n| *n > 0)
            .map(|n| n.min(crate::limits::headers::LARGEST_ANNOUNCED_COUNT));
        let Some(limit) = self.per_minute else {
            return;
        };
        // Burst: one second's worth, at least one unit; the steady rate gets the rest, so
        // that `steady` units over the window plus the burst never exceed `limit`.
        let burst = (limit / 60).max(1);
        let steady = limit.saturating_sub(burst).max(1);
        self.interval = WINDOW / units(steady);
        self.tolerance = self.interval.saturating_mul(units(limit - steady));
    }

    fn limit(&self) -> Option<u64> {
        self.per_minute
    }
}

/// What a provider says remains of a limit, projected between its replies (SPEC §5: as
/// fast as allowed, no faster).
///
/// A reply that announces `limit` and `remaining` says how much may be sent right now:
/// that much, less what is already booked and unanswered, is spent at once, so a token
/// bucket's burst or a sliding window's fresh window is used instead of left idle. In
/// between replies the allowance grows at the limit's steady rate (`limit` per window,
/// the window being a minute, or the announced reset when that is longer: a daily
/// quota), never above the most the provider was ever seen to allow at once. A short
/// `reset` unlocks nothing by itself: providers disagree on what it means (OpenAI: until
/// the limit is whole again; others: until the next unit returns), so only `remaining`
/// is believed about the present, and the rate about the future.
///
/// Once nothing remains, the next request is a probe sent on the steady rate alone: a
/// token bucket admits it, a sliding window answers 429 (nothing comes back before its
/// oldest entries leave). After one refused probe the provider is known to refill all
/// at once, and from then on "nothing remains" waits for the announced reset instead
/// of probing again: one 429 per key, not one per window.
///
/// It is a GCRA bucket whose level can be reset by the provider's word: `tat` is the
/// instant the allowance would be full again if nothing more were sent.
#[derive(Debug, Clone)]
pub struct Allowance {
    /// The limit as announced, per window.
    limit: u64,
    /// The most units ever seen available at once (the bucket's burst, or a window's
    /// whole limit): the allowance never grows past it.
    capacity: u64,
    /// Time one unit takes to come back at the steady rate.
    interval: Duration,
    /// When the allowance would be full again.
    tat: Instant,
    /// The newest attempt (by send order) whose reply set the level: an older reply
    /// that arrives late may only lower it, never raise it with stale news.
    synced: u64,
    /// Set by a 429: `tat` may not fall below this until a reply says something is
    /// available again. Replies that say "nothing left" do not lift it: in a sliding
    /// window nothing comes back before the Retry-After, whatever the steady rate says.
    floor: Option<Instant>,
    /// The newest word was "nothing remains": a request sent now goes on the steady
    /// rate alone, a probe of whether the provider refills continuously.
    said_empty: bool,
    /// A probe was refused: this provider refills all at once (a sliding window), not
    /// continuously, so once nothing remains, nothing is sent before its reset.
    refills_at_once: bool,
}

/// What one reply said about a limit, with what the key had booked and unanswered.
#[derive(Debug, Clone, Copy)]
pub struct Announcement {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Option<Duration>,
    /// Units booked and not yet answered: `remaining` does not count them yet.
    pub outstanding: u64,
    /// The send order of the attempt the reply answers.
    pub seq: u64,
}

/// A margin against rounding in the arithmetic of an allowance.
const ROUNDING: Duration = Duration::from_micros(1);

/// A duration of `units × interval`, saturating at [`crate::limits::headers::LONGEST_ANNOUNCED_WAIT`].
fn units_of(interval: Duration, units: f64) -> Duration {
    crate::limits::headers::seconds(interval.as_secs_f64() * units.max(0.0))
        .unwrap_or(Duration::ZERO)
}

impl Allowance {
    /// An allowance from a first announcement.
    pub fn new(said: &Announcement, now: Instant) -> Allowance {
        let mut a = Allowance {
            limit: 1,
            capacity: 1,
            interval: WINDOW,
            tat: now,
            synced: 0,
            floor: None,
            said_empty: false,
            refills_at_once: false,
        };
        a.announce(
            &Announcement {
                seq: said.seq.max(1),
                ..*said
            },
            now,
        );
        a
    }

    /// The limit as announced.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Units available at `now` (negative: owed).
    pub fn available(&self, now: Instant) -> f64 {
        let behind = self.tat.saturating_duration_since(now).as_secs_f64();
        self.capacity as f64 - behind / self.interval.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The earliest instant, not before `now`, at which `cost` units may go. A request
    /// larger than the capacity goes once the allowance is full.
    pub fn earliest(&self, cost: u64, now: Instant) -> Instant {
        // Computed from the level itself, not from two clamped durations that could
        // cancel out when the figures are absurd.
        let cost = cost.min(self.capacity) as f64;
        let level = self.available(now);
        if level >= cost {
            now
        } else {
            // Rounded up by a microsecond: arriving a hair early at a provider that
            // refills at exactly this rate is a 429.
            now + units_of(self.interval, cost - level) + ROUNDING
        }
    }

    /// Books `cost` units at `at`; a booking is capped at what the limit can hold.
    pub fn commit(&mut self, cost: u64, at: Instant) {
        let cost = cost.min(self.limit);
        // A bucket that was full before `at` holds `capacity` then, not more.
        self.tat = self.tat.max(at) + units_of(self.interval, cost as f64);
    }

    /// Gives `cost` units back (a booking never sent, or tokens not billed).
    pub fn refund(&mut self, cost: u64) {
        let back = units_of(self.interval, cost.min(self.limit) as f64);
        self.tat = self.tat.checked_sub(back).unwrap_or(self.tat);
        if let Some(floor) = self.floor {
            self.tat = self.tat.max(floor);
        }
    }

    /// Charges `cost` more units (tokens billed beyond the booking).
    pub fn charge(&mut self, cost: u64) {
        self.tat += units_of(self.interval, cost.min(self.limit) as f64);
    }

    /// A reply announced what remains (see [`Announcement`]).
    pub fn announce(&mut self, said: &Announcement, now: Instant) {
        let Announcement {
            limit,
            remaining,
            reset,
            outstanding,
            seq,
        } = *said;
        let limit = limit.clamp(1, crate::limits::headers::LARGEST_ANNOUNCED_COUNT);
        let remaining = remaining.min(limit);
        // A reset longer than a minute means the limit is not per minute (a daily
        // quota): its units come back over the reset, not over a minute.
        let window = reset.map_or(WINDOW, |r| r.max(WINDOW));
        let level = self.available(now);
        self.limit = limit;
        // `remaining` is what was left after this reply's own request: the provider
        // allows at least one more than that at once.
        // Never above the limit now in force: a provider that lowers its limit, or one
        // absurd reply before sane ones, must not leave a burst the limit cannot hold.
        self.capacity = self
            .capacity
            .max((remaining + 1).min(limit))
            .min(limit)
            .max(1);
        self.interval = crate::limits::headers::seconds(window.as_secs_f64() / limit as f64)
            .unwrap_or(WINDOW)
            .max(Duration::from_nanos(1));
        let said = remaining as f64 - outstanding as f64;
        let level = if seq > self.synced {
            self.synced = seq;
            self.said_empty = remaining == 0;
            if remaining > 0 {
                // The provider has room again: whatever a 429 said is over.
                self.floor = None;
            } else if self.refills_at_once
                && let Some(reset) = reset.filter(|r| !r.is_zero())
            {
                // A window: nothing comes back before the reset (OpenAI's meaning: the
                // limit whole again; others': the next unit back — either way, not before).
                self.set_floor(now + reset);
            }
            said
        } else {
            // Older news than the last word: it may only lower the level.
            level.min(said)
        };
        self.set_level(level, now);
    }

    /// Nothing is available until `until` (a 429's Retry-After), and the allowance
    /// grows only from then, until a reply says there is room again. `seq` is the
    /// refused attempt's send order: replies to attempts sent before it are older news.
    /// `probed` says the refused attempt was sent when nothing remained: then the
    /// provider does not refill continuously, and is not probed again.
    pub fn exhaust_until(&mut self, until: Instant, seq: u64, probed: bool) {
        self.synced = self.synced.max(seq);
        self.refills_at_once |= probed;
        self.set_floor(until);
    }

    /// Whether the newest word was "nothing remains" (see [`Allowance::exhaust_until`]).
    pub fn said_empty(&self) -> bool {
        self.said_empty
    }

    /// Nothing before `until`; the allowance grows from then.
    fn set_floor(&mut self, until: Instant) {
        // One unit is back at `until`, whatever the provider's reset means.
        let floor = until + units_of(self.interval, self.capacity.saturating_sub(1) as f64);
        self.floor = Some(self.floor.map_or(floor, |f| f.max(floor)));
        self.tat = self.tat.max(floor);
    }

    fn set_level(&mut self, level: f64, now: Instant) {
        let missing = self.capacity as f64 - level.min(self.capacity as f64);
        self.tat = now + units_of(self.interval, missing);
        if let Some(floor) = self.floor {
            self.tat = self.tat.max(floor);
        }
    }
}

#[cfg(test)]
mod allowance_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_absurd_reply_does_not_switch_limiting_off() {
        let now = Instant::now();
        let big = crate::limits::headers::LARGEST_ANNOUNCED_COUNT;
        let said = |limit, remaining, reset, seq| Announcement {
            limit,
            remaining,
            reset,
            outstanding: 0,
            seq,
        };
        let mut a = Allowance::new(&said(big, big, None, 1), now);
        a.announce(&said(600, 0, Some(WINDOW), 2), now);
        assert!(
            a.earliest(1, now) > now,
            "nothing remains: {:?}",
            a.earliest(1, now) - now
        );
        assert!(a.earliest(1, now) <= now + Duration::from_millis(101));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_start_still_charges_each_request_whole() {
        let now = Instant::now();
        // The first word: nothing left of 60,000 tokens/min (1,000/s).
        let mut a = Allowance::new(
            &Announcement {
                limit: 60_000,
                remaining: 0,
                reset: None,
                outstanding: 0,
                seq: 1,
            },
            now,
        );
        let first = a.earliest(5_000, now);
        a.commit(5_000, first);
        let second = a.earliest(5_000, first);
        assert!(
            second - first >= Duration::from_millis(4_990),
            "5,000 tokens take 5 s at 1,000/s: {:?}",
            second - first
        );
    }

    proptest::proptest! {
        /// Whatever a provider announces, nothing panics and every instant handed out
        /// is at or after the moment it was asked for.
        #[test]
        fn any_announcement_is_safe(
            limit in 0u64..u64::MAX, remaining in 0u64..u64::MAX,
            reset_ms in proptest::option::of(0u64..u64::MAX / 2),
            outstanding in 0u64..1_000_000, cost in 0u64..u64::MAX,
        ) {
            let now = Instant::now();
            let reset = reset_ms.map(|ms| crate::limits::headers::clamp_wait(Duration::from_millis(ms)));
            let said = Announcement { limit, remaining, reset, outstanding, seq: 1 };
            let mut a = Allowance::new(&said, now);
            let at = a.earliest(cost, now);
            proptest::prop_assert!(at >= now);
            a.commit(cost, at);
            a.refund(cost);
            a.charge(cost);
            a.exhaust_until(now + Duration::from_secs(1), 2, true);
            a.announce(&Announcement { seq: 3, ..said }, now);
            proptest::prop_assert!(a.earliest(1, now) >= now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Replays arrivals through a limiter and returns the admission instants and costs.
    fn admit(limit: u64, arrivals: &[(u64, u64)]) -> Vec<(Duration, u64)> {
        let origin = Instant::now();
        let mut g = Gcra::new(Some(limit));
        let mut out = Vec::new();
        let mut now = origin;
        for (gap_ms, cost) in arrivals {
            now += Duration::from_millis(*gap_ms);
            let at = g.earliest(*cost, now);
            assert!(at >= now);
            g.commit(*cost, at);
            out.push((at - origin, *cost));
        }
        out
    }

    /// The largest sum of costs admitted in any window `(t - 60 s, t]`.
    fn peak(admitted: &[(Duration, u64)]) -> u64 {
        let mut sorted = admitted.to_vec();
        sorted.sort();
        let mut best = 0;
        for (i, (t, _)) in sorted.iter().enumerate() {
            let sum: u64 = sorted[..=i]
                .iter()
                .filter(|(s, _)| *t < *s + WINDOW)
                .map(|(_, c)| c)
                .sum();
            best = best.max(sum);
        }
        best
    }

    #[test]
    fn unlimited_admits_at_once() {
        let mut g = Gcra::new(None);
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(g.earliest(5, now), now);
            g.commit(5, now);
        }
    }

    #[test]
    fn a_flood_is_paced_to_the_limit() {
        // 600 requests arriving at once against 60/min take about ten minutes.
        let admitted = admit(60, &vec![(0, 1); 600]);
        assert!(peak(&admitted) <= 60);
        let last = admitted.last().unwrap().0;
        assert!(
            last >= Duration::from_secs(9 * 60) && last <= Duration::from_secs(11 * 60),
            "{last:?}"
        );
    }

    #[test]
    fn refunds_make_room() {
        let now = Instant::now();
        let mut g = Gcra::new(Some(6000));
        g.commit(3000, now);
        let later = g.earliest(3000, now);
        g.adjust(-2500);
        assert!(g.earliest(3000, now) < later);
    }

    #[test]
    fn learned_limit_changes_the_pace() {
        let now = Instant::now();
        let mut g = Gcra::new(Some(60));
        for _ in 0..10 {
            let at = g.earliest(1, now);
            g.commit(1, at);
        }
        let slow = g.earliest(1, now);
        g.set_limit(Some(6000));
        assert!(g.earliest(1, now) <= slow);
        g.set_limit(None);
        assert_eq!(g.earliest(1, now), now);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// For random arrival patterns, no 60 s window admits more than the limit.
        #[test]
        fn never_exceeds_the_limit_in_any_window(
            limit in 1u64..400,
            arrivals in proptest::collection::vec((0u64..3000, 1u64..4), 1..300),
        ) {
            let burst = (limit / 60).max(1);
            let arrivals: Vec<_> = arrivals.into_iter().map(|(g, c)| (g, c.min(burst))).collect();
            let admitted = admit(limit, &arrivals);
            prop_assert!(peak(&admitted) <= limit, "peak {} > limit {}", peak(&admitted), limit);
        }
    }
}
