//! When and how long to wait before trying a request again (SPEC §3).
//!
//! Backoff is `min(max_backoff, initial × 2^n)` with full jitter; a server-given
//! Retry-After wins when it is larger. A run-wide [`RetryBudget`] caps retries after
//! errors so a provider that fails everything cannot start a retry storm.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use rand::Rng;

use crate::defaults;
use crate::limits::headers;

/// The per-request retry rules.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after errors per request: the cap on every kind of retry but a 429's.
    pub max_retries: u32,
    /// Retries after replies that came back empty, counted apart from other errors (a
    /// request that met a 503 first still gets these) and within `max_retries`: an
    /// empty answer tends to repeat, so insisting as long as after a 5xx only pays for
    /// more of it.
    pub max_empty_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A Retry-After longer than this is not slept through.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: defaults::MAX_RETRIES,
            max_empty_retries: defaults::MAX_EMPTY_RETRIES,
            initial_backoff: defaults::INITIAL_BACKOFF,
            max_backoff: defaults::MAX_BACKOFF,
            max_wait: defaults::MAX_WAIT,
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the `retry`-th backoff step (1-based): `initial × 2^(retry-1)`,
    /// capped at `max_backoff`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// How long to wait before the `retry`-th retry. `rate_limited` doubles the step
    /// when the server gave no hint; a hint wins when larger than the step, but is never
    /// slept through past `max_wait` (a longer 429 hint retires the key before this is
    /// asked; a 5xx's hint is simply cut to `max_wait`).
    pub fn delay(&self, retry: u32, hint: Option<Duration>, rate_limited: bool) -> Duration {
        let hint = hint.map(|h| h.min(self.max_wait));
        let mut ceiling = self.backoff_ceiling(retry);
        if rate_limited && hint.is_none() {
            ceiling = ceiling.saturating_mul(2).min(self.max_backoff);
        }
        // Full jitter: spreads retries of requests that failed together.
        let jittered = ceiling.mul_f64(rand::rng().random::<f64>());
        match hint {
            Some(h) => h.max(jittered),
            None => jittered,
        }
    }
}

/// The retries after errors one request has taken, counted against the caps of a
/// [`RetryPolicy`]. Rate-limited tries are counted apart: a 429 is pacing, not failure.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetryCount {
    /// Failed attempts that asked for a retry, of every kind (capped by `max_retries`).
    pub errors: u32,
    /// Of those, the replies that came back empty (capped by `max_empty_retries`).
    pub empty: u32,
}

impl RetryCount {
    /// Counts a failed attempt that asks for a retry; `empty` when its reply came back
    /// empty. `Some(n)`: the request takes its `n`-th retry after errors (the backoff
    /// step); `None`: a cap is reached and it gives up.
    pub fn next(&mut self, policy: &RetryPolicy, empty: bool) -> Option<u32> {
        self.errors += 1;
        if empty {
            self.empty += 1;
        }
        let within_empty_cap = !empty || self.empty <= policy.max_empty_retries;
        (self.errors <= policy.max_retries && within_empty_cap).then_some(self.errors)
    }
}

/// Reads `retry-after-ms` (milliseconds, may be fractional) or `retry-after` (seconds,
/// may be fractional, or an HTTP date). `retry-after-ms` wins, as in the OpenAI SDK.
/// Hostile values never panic: nonsense is ignored, huge waits are clamped to
/// [`headers::LONGEST_ANNOUNCED_WAIT`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(wait) = text("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| headers::seconds(ms / 1000.0))
    {
        return Some(wait);
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<f64>() {
        return headers::seconds(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(headers::clamp_wait(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    ))
}

/// Retries after errors allowed across the run: a fraction of the requests sent plus a
/// small floor. Rate-limit waits are paced, not budgeted.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    sent: AtomicU64,
    spent: AtomicU64,
    exhausted: AtomicBool,
}

impl RetryBudget {
    pub fn new(ratio: f64) -> RetryBudget {
        RetryBudget {
            ratio,
            sent: AtomicU64::new(0),
            spent: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
        }
    }

    /// Counts a request sent for the first time.
    pub fn record_request(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget. `Err(first)` when none is left, where `first`
    /// is true only for the call that found it empty first (so it is reported once).
    pub fn try_spend(&self) -> Result<(), bool> {
        let allowed = defaults::RETRY_BUDGET_FLOOR
            + (self.sent.load(Ordering::Relaxed) as f64 * self.ratio) as u64;
        let spent = self.spent.fetch_add(1, Ordering::Relaxed);
        if spent < allowed {
            Ok(())
        } else {
            self.spent.fetch_sub(1, Ordering::Relaxed);
            Err(!self.exhausted.swap(true, Ordering::Relaxed))
        }
    }

    /// Retries spent so far.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 5,
            max_empty_retries: 2,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_wait: Duration::from_secs(600),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let steps: Vec<u64> = (1..=8).map(|n| p.backoff_ceiling(n).as_secs()).collect();
        assert_eq!(steps, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(p.backoff_ceiling(200), Duration::from_secs(60));
    }

    #[test]
    fn delay_is_jittered_below_the_ceiling_and_a_hint_wins_when_larger() {
        let p = policy();
        for _ in 0..100 {
            assert!(p.delay(3, None, false) <= Duration::from_secs(4));
            assert!(p.delay(3, None, true) <= Duration::from_secs(8));
            assert!(p.delay(1, Some(Duration::from_secs(2)), true) >= Duration::from_secs(2));
        }
    }

    #[test]
    fn a_hint_never_outlasts_max_wait() {
        let p = RetryPolicy {
            max_wait: Duration::from_secs(1),
            ..policy()
        };
        for _ in 0..20 {
            let d = p.delay(1, Some(Duration::from_secs(6)), false);
            assert!(d <= Duration::from_secs(1), "{d:?}");
            assert!(
                d >= Duration::from_secs(1),
                "the hint still wins over jitter: {d:?}"
            );
        }
        assert!(
            p.delay(
                1,
                Some(crate::limits::headers::LONGEST_ANNOUNCED_WAIT),
                false
            ) <= Duration::from_secs(1)
        );
    }

    #[test]
    fn empty_replies_have_their_own_cap_within_max_retries() {
        // (max_retries, max_empty_retries, outcomes: true = empty) → retries granted
        // before giving up, with the outcome that gave up.
        let cases: [(u32, u32, &[bool], u32); 6] = [
            // By default an always-empty request is tried 3 times (2 retries).
            (5, 2, &[true, true, true], 2),
            (5, 0, &[true], 0),
            // --max-retries stays the overall cap.
            (2, 4, &[true, true, true], 2),
            // An error before the empties does not eat their cap: 503, then 2 empty
            // retries, then the third empty gives up.
            (5, 2, &[false, true, true, true], 3),
            // Other errors are capped by max_retries alone, whatever the empties took.
            (5, 1, &[true, false, false, false, false, false], 5),
            (0, 2, &[false], 0),
        ];
        for (max_retries, max_empty_retries, outcomes, granted) in cases {
            let p = RetryPolicy {
                max_retries,
                max_empty_retries,
                ..policy()
            };
            let mut count = RetryCount::default();
            let (last, before) = outcomes.split_last().unwrap();
            for (i, &empty) in before.iter().enumerate() {
                assert_eq!(
                    count.next(&p, empty),
                    Some(i as u32 + 1),
                    "{max_retries}/{max_empty_retries} {outcomes:?}: outcome {i} is retried"
                );
            }
            assert_eq!(
                count.next(&p, *last),
                None,
                "{max_retries}/{max_empty_retries} {outcomes:?}: the last outcome gives up"
            );
            assert_eq!(count.errors - 1, granted);
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after", HeaderValue::from_static("1.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        let future = SystemTime::now() + Duration::from_secs(30);
        h.insert(
            "retry-after",
            HeaderValue::from_str(&httpdate::fmt_http_date(future)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn budget_runs_out_and_says_so_once() {
        let b = RetryBudget::new(0.2);
        for _ in 0..50 {
            b.record_request();
        }
        // floor 10 + 20% of 50 = 20
        for _ in 0..20 {
            assert!(b.try_spend().is_ok());
        }
        assert_eq!(b.try_spend(), Err(true));
        assert_eq!(b.try_spend(), Err(false));
        assert!(b.is_exhausted());
        assert_eq!(b.spent(), 20);
    }
}
