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
        if self.per_minute.is_none() {
            return;
        }
        let start = self.tat.map_or(at, |tat| tat.max(at));
        self.tat = Some(start + self.span(cost));
    }

    fn adjust(&mut self, delta: i64) {
        let Some(tat) = self.tat else { return };
        let span = self.span(delta.unsigned_abs());
        self.tat = Some(if delta >= 0 {
            tat + span
        } else {
            tat.checked_sub(span).unwrap_or(tat)
        });
    }

    fn set_limit(&mut self, per_minute: Option<u64>) {
        self.per_minute = per_minute.filter(|n| *n > 0);
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
