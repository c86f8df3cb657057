//! The pool of API keys: each key is a lane with its own limits, pause and fate.
//!
//! Every attempt passes the same gates in the same order: pick the live key that can
//! send soonest, book the request and its tokens on that key's limiters at one instant,
//! and wait until then. A 429 pauses the whole key so in-flight peers stop hammering it;
//! a 401, spent credits or a spent quota retire it for the rest of the run. Keys are
//! named `key#N` everywhere, never by value.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use crate::classify::Reason;
use crate::limiter::{Gcra, Limiter};
use crate::transport::ApiKey;

/// One key's mutable state, behind one lock so its limits are booked together.
#[derive(Debug)]
struct LaneState {
    requests: Gcra,
    tokens: Gcra,
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

/// A booking: send on `lane` at `at`.
#[derive(Debug, Clone, Copy)]
pub struct Booking {
    pub lane: usize,
    pub at: Instant,
}

/// All keys of a run.
#[derive(Debug)]
pub struct KeyPool {
    lanes: Vec<KeyLane>,
}

impl KeyPool {
    /// `rpm` and `tpm` are per-key limits (`None` = unlimited).
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
                    paused_until: None,
                    retired: None,
                }),
            })
            .collect();
        KeyPool { lanes }
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

    /// Books one request of `tokens` estimated tokens on the live key that can send it
    /// soonest; `None` when every key has been retired.
    pub fn book(&self, tokens: u64, now: Instant) -> Option<Booking> {
        let (lane, _) = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, lane)| earliest(&lane.state(), tokens, now).map(|at| (i, at)))
            .min_by_key(|(_, at)| *at)?;
        // Book under the lock, re-checking: another task may have booked in between.
        let mut state = self.lanes[lane].state();
        let at = earliest(&state, tokens, now)?;
        state.requests.commit(1, at);
        state.tokens.commit(tokens, at);
        Some(Booking { lane, at })
    }

    /// When the key's pause ends, if it is paused past `now`.
    pub fn paused_until(&self, lane: usize, now: Instant) -> Option<Instant> {
        self.lanes[lane].state().paused_until.filter(|t| *t > now)
    }

    /// Pauses a key until `until`. Returns true if this extended the pause (so the
    /// pause is reported once, not once per in-flight request that saw the 429).
    pub fn pause(&self, lane: usize, until: Instant) -> bool {
        let mut state = self.lanes[lane].state();
        if state.paused_until.is_some_and(|t| t >= until) {
            return false;
        }
        state.paused_until = Some(until);
        true
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
    pub fn correct_tokens(&self, lane: usize, estimated: u64, actual: u64) {
        let delta = i64::try_from(actual).unwrap_or(i64::MAX)
            - i64::try_from(estimated).unwrap_or(i64::MAX);
        if delta != 0 {
            self.lanes[lane].state().tokens.adjust(delta);
        }
    }
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
        let a = pool.book(1, now).unwrap();
        let b = pool.book(1, now).unwrap();
        assert_ne!(a.lane, b.lane, "the second request goes to the idle key");
        assert_eq!((a.at, b.at), (now, now));
        let c = pool.book(1, now).unwrap();
        assert!(c.at > now, "both keys used their burst");
    }

    #[tokio::test(start_paused = true)]
    async fn paused_and_retired_keys() {
        let pool = KeyPool::new(keys(2), None, None);
        let now = Instant::now();
        assert!(pool.pause(0, now + Duration::from_secs(5)));
        assert!(
            !pool.pause(0, now + Duration::from_secs(3)),
            "a shorter pause changes nothing"
        );
        assert_eq!(pool.book(1, now).unwrap().lane, 1);
        assert!(pool.retire(1, Reason::Unauthorized));
        assert!(!pool.retire(1, Reason::Unauthorized));
        let b = pool.book(1, now).unwrap();
        assert_eq!((b.lane, b.at), (0, now + Duration::from_secs(5)));
        assert_eq!(pool.live(), 1);
        pool.retire(0, Reason::CreditsExhausted);
        assert!(pool.book(1, now).is_none());
        assert_eq!(format!("{:?}", pool.lane(0).key), "ApiKey(<hidden>)");
        assert_eq!(&*pool.lane(1).label, "key#2");
    }
}
