//! The pool of API keys: each key is a lane with its own limits, pause and fate.
//!
//! Every attempt passes the same gates in the same order: pick the live key that can
//! send soonest, book the request and its tokens on that key's limiters at one instant,
//! and wait until then. A 429 pauses the whole key so in-flight peers stop hammering it;
//! a 401, spent credits or a spent quota retire it for the rest of the run. Limits the
//! provider announces in its headers are learned per key, never above a configured
//! `--rpm`/`--tpm`. Keys are named `key#N` everywhere, never by value.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Reason;
use crate::limiter::{Gcra, Limiter, WINDOW};
use crate::ratelimit::{Observation, Quota};
use crate::transport::ApiKey;

/// What a key spent while a limit was still unknown (requests when booked, tokens as
/// their usage comes back), so that the limit, once learned, starts from what the key
/// has already spent in the current window rather than from zero.
#[derive(Debug, Default)]
struct Unpaced {
    since: Option<Instant>,
    requests: u64,
    tokens: u64,
}

/// One key's mutable state, behind one lock so its limits are booked together.
#[derive(Debug)]
struct LaneState {
    requests: Gcra,
    tokens: Gcra,
    unpaced: Unpaced,
    /// Attempts booked on this key and not yet back: the tie-breaker between keys
    /// that could all send now, so unlimited keys share the work.
    in_flight: usize,
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

/// A booking: send on `lane` at `at`, `tokens` booked against its token limit.
#[derive(Debug, Clone, Copy)]
pub struct Booking {
    pub lane: usize,
    pub at: Instant,
    /// Tokens booked: the estimate scaled by the calibration.
    pub tokens: u64,
    /// The raw estimate, to calibrate against the real usage.
    pub estimate: u64,
}

/// Weight of the newest reply in the calibration's moving average.
const CALIBRATION_WEIGHT: f64 = 0.1;
/// Bounds of the calibration: a tokenizer is never off by more than this.
const CALIBRATION_RANGE: (f64, f64) = (0.25, 4.0);

/// What a response taught a key about its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Learned {
    /// The per-minute limits now in force, when one of them changed.
    pub changed: Option<(Option<u64>, Option<u64>)>,
    /// The provider said nothing is left until this long from now.
    pub exhausted_for: Option<Duration>,
}

/// All keys of a run.
#[derive(Debug)]
pub struct KeyPool {
    lanes: Vec<KeyLane>,
    /// `--rpm` / `--tpm`: learned limits may lower these, never raise them.
    ceiling_rpm: Option<u64>,
    ceiling_tpm: Option<u64>,
    /// Whether any key has a token limit, i.e. whether requests must be tokenized.
    meters_tokens: AtomicBool,
    /// Real tokens per estimated token, as a moving average over replies. Estimates
    /// are off when the provider's tokenizer is not ours (Claude, Llama on OpenRouter)
    /// or completions stop short of `max_tokens`; booking the estimate as it is would
    /// then either idle the key or run into 429s.
    calibration: Mutex<f64>,
}

impl KeyPool {
    /// `rpm` and `tpm` are per-key limits (`None` = unknown until learned).
    pub fn new(keys: Vec<ApiKey>, rpm: Option<u64>, tpm: Option<u64>) -> KeyPool {
        let lanes = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| KeyLane {
                label: Arc::from(format!("key#{}", i + 1)),
                key,
                state: Mutex::new(LaneState {
                    requests: Gcra::new(rpm),
                    tokens: Gcra::new(tpm),
                    unpaced: Unpaced::default(),
                    in_flight: 0,
                    paused_until: None,
                    retired: None,
                }),
            })
            .collect();
        KeyPool {
            lanes,
            ceiling_rpm: rpm,
            ceiling_tpm: tpm,
            meters_tokens: AtomicBool::new(tpm.is_some()),
            calibration: Mutex::new(1.0),
        }
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

    /// Books one request on the live key that can send it soonest; `None` when every
    /// key has been retired. `tokens` is asked for only when some key meters tokens.
    pub fn book(&self, tokens: impl FnOnce() -> u64, now: Instant) -> Option<Booking> {
        let estimate = if self.meters_tokens.load(Ordering::Relaxed) {
            tokens()
        } else {
            0
        };
        let scale = *self.calibration.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = (estimate as f64 * scale).ceil() as u64;
        let (lane, _) = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, lane)| {
                let state = lane.state();
                earliest(&state, tokens, now).map(|at| (i, (at, state.in_flight)))
            })
            .min_by_key(|(_, headroom)| *headroom)?;
        // Book under the lock, re-checking: another task may have booked in between.
        let mut state = self.lanes[lane].state();
        let at = earliest(&state, tokens, now)?;
        state.requests.commit(1, at);
        state.tokens.commit(tokens, at);
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
        Some(Booking {
            lane,
            at,
            tokens,
            estimate,
        })
    }

    /// Adjusts a key's limits to what a response's headers announced.
    pub fn learn(&self, lane: usize, seen: &Observation, now: Instant) -> Learned {
        let mut state = self.lanes[lane].state();
        let state = &mut *state;
        let recent = state
            .unpaced
            .since
            .is_some_and(|s| now.duration_since(s) < WINDOW);
        let (spent_requests, spent_tokens) = if recent {
            (state.unpaced.requests, state.unpaced.tokens)
        } else {
            (0, 0)
        };
        let mut learned = Learned::default();
        let mut changed = false;
        for (quota, gcra, ceiling, spent) in [
            (
                seen.requests,
                &mut state.requests,
                self.ceiling_rpm,
                spent_requests,
            ),
            (
                seen.tokens,
                &mut state.tokens,
                self.ceiling_tpm,
                spent_tokens,
            ),
        ] {
            let Some(quota) = quota else { continue };
            changed |= learn_limit(gcra, &quota, ceiling, spent, now);
            if quota.remaining == Some(0)
                && let Some(reset) = quota.reset.filter(|r| !r.is_zero())
            {
                learned.exhausted_for = Some(learned.exhausted_for.map_or(reset, |e| e.max(reset)));
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

    /// An attempt booked on `lane` is over (whatever its outcome).
    pub fn release(&self, lane: usize) {
        let mut state = self.lanes[lane].state();
        state.in_flight = state.in_flight.saturating_sub(1);
    }

    /// When the key's pause ends, if it is paused past `now`.
    pub fn paused_until(&self, lane: usize, now: Instant) -> Option<Instant> {
        self.lanes[lane].state().paused_until.filter(|t| *t > now)
    }
    /// Pauses a key until `until` (a pause already running is only ever extended).
    /// Returns true when this starts a new pause, so that a pause is reported once, not
    /// once per in-flight request that ran into the same 429.
    pub fn pause(&self, lane: usize, until: Instant, now: Instant) -> bool {
        let mut state = self.lanes[lane].state();
        let running = state.paused_until.is_some_and(|t| t > now);
        if state.paused_until.is_none_or(|t| t < until) {
            state.paused_until = Some(until);
        }
        !running
    }

    /// Retires a key for the rest of the run. True if it was live until now.
    pub fn retire(&self, lane: usize, why: Reason) -> bool {
        let mut state = self.lanes[lane].state();
        if state.retired.is_some() {
            return false;
        }
        state.retired = Some(why);
        true
    }

    /// Corrects a key's token booking with the real usage.
    pub fn correct_tokens(&self, booking: &Booking, actual: u64, now: Instant) {
        if booking.estimate > 0 {
            let mut scale = self.calibration.lock().unwrap_or_else(|p| p.into_inner());
            let seen = actual as f64 / booking.estimate as f64;
            *scale = ((1.0 - CALIBRATION_WEIGHT) * *scale + CALIBRATION_WEIGHT * seen)
                .clamp(CALIBRATION_RANGE.0, CALIBRATION_RANGE.1);
        }
        let mut state = self.lanes[booking.lane].state();
        if state.tokens.limit().is_none() {
            // No token limit yet: remember what was spent, in case one is learned.
            if state
                .unpaced
                .since
                .is_some_and(|s| now.duration_since(s) < WINDOW)
            {
                state.unpaced.tokens = state.unpaced.tokens.saturating_add(actual);
            }
            return;
        }
        let delta = i64::try_from(actual).unwrap_or(i64::MAX)
            - i64::try_from(booking.tokens).unwrap_or(i64::MAX);
        if delta != 0 {
            state.tokens.adjust(delta);
        }
    }
}

/// Applies a learned per-minute limit to one limiter. True if the limit changed.
fn learn_limit(
    gcra: &mut Gcra,
    quota: &Quota,
    ceiling: Option<u64>,
    spent: u64,
    now: Instant,
) -> bool {
    let Some(limit) = quota.limit.filter(|l| *l > 0) else {
        return false;
    };
    // OpenRouter's X-RateLimit-* on a 429 may describe a daily quota: only a window of
    // a minute or less is a per-minute limit. (A spent daily quota is handled by the
    // 429 itself: its reset is far beyond --max-wait.)
    if quota.reset.is_some_and(|r| r > WINDOW) {
        return false;
    }
    let limit = ceiling.map_or(limit, |c| c.min(limit));
    if gcra.limit() == Some(limit) {
        return false;
    }
    let first = gcra.limit().is_none();
    gcra.set_limit(Some(limit));
    if first && spent > 0 {
        // What was sent before the limit was known still counts in the provider's
        // window: book it now so the rest of the window admits only what is left.
        gcra.commit(spent, now);
    }
    true
}

/// When a lane could send a request of `tokens`, or `None` if it is retired.
fn earliest(state: &LaneState, tokens: u64, now: Instant) -> Option<Instant> {
    if state.retired.is_some() {
        return None;
    }
    let after_pause = state.paused_until.map_or(now, |t| t.max(now));
    let by_requests = state.requests.earliest(1, after_pause);
    let by_tokens = state.tokens.earliest(tokens, after_pause);
    Some(by_requests.max(by_tokens))
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
        pool.release(a.lane);
        pool.release(b.lane);
        assert!(pool.pause(0, now + Duration::from_secs(5), now));
        assert!(
            !pool.pause(0, now + Duration::from_secs(3), now),
            "a shorter pause changes nothing"
        );
        assert!(
            !pool.pause(0, now + Duration::from_secs(4), now),
            "already paused: no new event"
        );
        assert_eq!(pool.book(|| 1, now).unwrap().lane, 1);
        assert!(pool.retire(1, Reason::Unauthorized));
        assert!(!pool.retire(1, Reason::Unauthorized));
        let b = pool.book(|| 1, now).unwrap();
        assert_eq!((b.lane, b.at), (0, now + Duration::from_secs(5)));
        assert_eq!(pool.live(), 1);
        pool.retire(0, Reason::CreditsExhausted);
        assert!(pool.book(|| 1, now).is_none());
        assert_eq!(format!("{:?}", pool.lane(0).key), "ApiKey(<hidden>)");
        assert_eq!(&*pool.lane(1).label, "key#2");
    }

    fn openai(limit: u64, remaining: u64, reset_ms: u64) -> Quota {
        Quota {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(Duration::from_millis(reset_ms)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn limits_are_learned_under_the_ceiling_and_count_what_was_sent() {
        let pool = KeyPool::new(keys(1), Some(1000), None);
        let now = Instant::now();
        let seen = Observation {
            requests: Some(openai(600, 590, 100)),
            tokens: Some(openai(100_000, 99_000, 600)),
        };
        let learned = pool.learn(0, &seen, now);
        assert_eq!(learned.changed, Some((Some(600), Some(100_000))));
        assert_eq!(
            pool.learn(0, &seen, now).changed,
            None,
            "the same limits change nothing"
        );
        let capped = Observation {
            requests: Some(openai(5000, 10, 100)),
            tokens: None,
        };
        assert_eq!(
            pool.learn(0, &capped, now).changed,
            Some((Some(1000), Some(100_000))),
            "--rpm is a ceiling"
        );

        // Sends before the limit was known count against it once it is.
        let pool = KeyPool::new(keys(1), None, None);
        for _ in 0..50 {
            pool.book(|| 0, now).unwrap();
        }
        pool.learn(
            0,
            &Observation {
                requests: Some(openai(60, 10, 100)),
                tokens: None,
            },
            now,
        );
        let next = pool.book(|| 0, now).unwrap();
        assert!(
            next.at >= now + Duration::from_secs(45),
            "50 of 60 were spent: {:?}",
            next.at - now
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_daily_quota_is_not_a_per_minute_limit_and_nothing_left_pauses() {
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        let daily = Observation {
            requests: Some(Quota {
                limit: Some(50),
                remaining: Some(0),
                reset: Some(Duration::from_secs(20_000)),
            }),
            tokens: None,
        };
        let learned = pool.learn(0, &daily, now);
        assert_eq!(learned.changed, None);
        assert_eq!(learned.exhausted_for, Some(Duration::from_secs(20_000)));
        let minute = Observation {
            requests: Some(openai(20, 0, 30_000)),
            tokens: None,
        };
        let learned = pool.learn(0, &minute, now);
        assert_eq!(learned.changed, Some((Some(20), None)));
        assert_eq!(learned.exhausted_for, Some(Duration::from_secs(30)));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_counted_only_when_metered() {
        let pool = KeyPool::new(keys(1), None, None);
        let now = Instant::now();
        let b = pool
            .book(|| panic!("no token limit: no tokenizing"), now)
            .unwrap();
        assert_eq!(b.tokens, 0);
        pool.learn(
            0,
            &Observation {
                requests: None,
                tokens: Some(openai(1000, 1000, 0)),
            },
            now,
        );
        assert_eq!(pool.book(|| 300, now).unwrap().tokens, 300);
    }

    #[tokio::test(start_paused = true)]
    async fn token_estimates_are_calibrated_by_real_usage() {
        let pool = KeyPool::new(keys(1), None, Some(1_000_000));
        let now = Instant::now();
        for _ in 0..60 {
            let b = pool.book(|| 100, now).unwrap();
            pool.correct_tokens(&b, 150, now);
            pool.release(b.lane);
        }
        let b = pool.book(|| 100, now).unwrap();
        assert!(
            (145..=151).contains(&b.tokens),
            "the provider counts 1.5x our estimate: {}",
            b.tokens
        );
        assert_eq!(b.estimate, 100);
    }
}
