//! One lane: a set of limits and everything that gates it, as one value owning its
//! state — its rate gate, whether it is retired and why, its requests in flight, and
//! how far token estimates are from what it is billed — and the [`Booking`] guard every
//! attempt holds on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use crate::limits::gate::{Grant, Learned, RateGate, Refused, Stage};
use crate::limits::headers::Observation;
use crate::limits::lanes::LanePool;
use crate::provider::classify::Reason;
use crate::provider::transport::ApiKey;

/// Weight of the newest reply in the calibration's moving average.
const CALIBRATION_WEIGHT: f64 = 0.1;
/// Bounds of the calibration: a tokenizer is never off by more than this.
const CALIBRATION_RANGE: (f64, f64) = (0.25, 4.0);

/// How far our token estimates are from what the provider bills: a moving mean and
/// variance of the ratio. Bookings use the mean plus two deviations, so that spending an
/// announced `remaining` to the last token rarely runs into a 429 when single requests
/// are under-estimated; the excess is refunded when the reply settles the booking, so
/// the margin costs only while a request is in flight. Kept per lane: estimates are
/// off when the provider's tokenizer is not ours (Claude, Llama on OpenRouter), which
/// differs by model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Calibration {
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
    pub(crate) fn scale(&self) -> f64 {
        (self.mean + 2.0 * self.variance.sqrt()).clamp(CALIBRATION_RANGE.0, CALIBRATION_RANGE.1)
    }
}

/// One API key of the upstream.
#[derive(Debug)]
pub struct Key {
    /// `key#N`, 1-based, the only name a key ever has in output.
    pub label: Arc<str>,
    pub key: ApiKey,
    pub(crate) retired: Mutex<Option<Reason>>,
}

impl Key {
    pub(crate) fn is_retired(&self) -> bool {
        lock(&self.retired).is_some()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each lock guards plain figures a panic cannot leave worse than stopping would.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One set of limits and everything that gates it.
#[derive(Debug)]
pub struct Lane {
    /// How it is named in events: `key#N`, `key#N/model`, or `account`.
    pub label: Arc<str>,
    /// Its keys (indices into the pool's), taken in turn.
    pub(crate) keys: Vec<usize>,
    pub(crate) gate: Box<dyn RateGate>,
    /// Why the lane itself left the pool (its quota spent), if it did.
    pub(crate) retired: Mutex<Option<Reason>>,
    /// Bookings not yet answered or dropped: the tie-breaker between lanes that could
    /// all send now, so unlimited lanes share the work.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) calibration: Mutex<Calibration>,
    next_key: AtomicUsize,
}

impl Lane {
    pub(crate) fn new(label: String, keys: Vec<usize>, gate: Box<dyn RateGate>) -> Lane {
        Lane {
            label: Arc::from(label),
            keys,
            gate,
            retired: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            calibration: Mutex::new(Calibration::default()),
            next_key: AtomicUsize::new(0),
        }
    }

    /// The next live key of the lane, in turn.
    pub(crate) fn pick_key(&self, keys: &[Key]) -> Option<usize> {
        let start = self.next_key.fetch_add(1, Ordering::Relaxed);
        (0..self.keys.len())
            .map(|i| self.keys[(start + i) % self.keys.len()])
            .find(|k| !keys[*k].is_retired())
    }

    pub(crate) fn is_live(&self, keys: &[Key]) -> bool {
        lock(&self.retired).is_none() && self.keys.iter().any(|k| !keys[*k].is_retired())
    }

    /// The rate gate: its limits and pause.
    pub fn gate(&self) -> &dyn RateGate {
        self.gate.as_ref()
    }

    /// Bookings on it not yet answered or given back.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A lane as observers show it (the dashboard, metrics): its limits in force, whether
/// it is paused or retired and why, and its requests in flight.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LaneView {
    pub label: Arc<str>,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    /// What the provider last said remains of each limit, projected to now (`None`
    /// until a reply announces it).
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Cooling down: a 429 or an exhausted quota paused it.
    pub paused: bool,
    /// Why it left the pool: its own quota, or its last key's retirement.
    pub retired: Option<&'static str>,
    /// Bookings not yet answered: waiting for their turn on the lane, or on the wire
    /// (the engine's in-flight count has only the latter).
    pub in_flight: usize,
}

impl Lane {
    /// The lane as it stands at `now`; `keys` are its pool's.
    pub fn view(&self, keys: &[Key], now: Instant) -> LaneView {
        let limits = self.gate.limits();
        let remaining = self.gate.remaining(now);
        let own = *lock(&self.retired);
        let by_keys = || {
            let reasons: Vec<Option<Reason>> =
                self.keys.iter().map(|k| *lock(&keys[*k].retired)).collect();
            if reasons.iter().all(Option::is_some) {
                reasons.into_iter().flatten().next()
            } else {
                None
            }
        };
        LaneView {
            label: self.label.clone(),
            requests_per_minute: limits.requests,
            tokens_per_minute: limits.tokens,
            remaining_requests: remaining.requests,
            remaining_tokens: remaining.tokens,
            paused: self.gate.paused(now),
            retired: own.or_else(by_keys).map(Reason::as_str),
            in_flight: self.in_flight(),
        }
    }
}

/// Why no lane could take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BookError {
    /// Every key of the pool, or every lane for this model, has been retired.
    NoKeyLeft,
    /// The request's tokens exceed every live lane's tokens-per-minute limit: it can
    /// never be sent within the limit.
    TooLarge { tokens: u64, limit: u64 },
}

/// A request booked on a lane: send with `key` at `at`, `tokens` booked against its
/// token limit. Gives itself back when dropped (see the module doc).
#[derive(Debug)]
pub struct Booking {
    pub(crate) pool: Arc<LanePool>,
    /// The lane itself, held so no lookup is needed on the way to the wire and back.
    pub(crate) lane_ref: Arc<Lane>,
    /// Index of the lane in its pool.
    pub lane: usize,
    /// Index of the key that sends it.
    pub key: usize,
    pub at: Instant,
    /// Tokens booked: the estimate scaled by the calibration.
    pub tokens: u64,
    /// The raw estimate, to calibrate against the real usage.
    pub estimate: u64,
    pub(crate) grant: Grant,
}

impl Booking {
    /// What a refusal of this attempt tells its lane (see [`LanePool::pause`]).
    pub fn refusal(&self) -> Refused {
        self.grant.refusal()
    }

    /// The attempt goes on the wire now.
    pub fn sent(&mut self) {
        self.lane_ref.gate.sent(&mut self.grant, Instant::now());
    }

    /// The provider answered: `billed` tokens (`None`: the reply carried no usage, so
    /// nothing was billed), and its headers said `seen`. Settles the booking and learns
    /// from the headers in one step.
    pub fn settle(mut self, billed: Option<u64>, seen: &Observation, now: Instant) -> Learned {
        let lane = &self.lane_ref;
        if let Some(actual) = billed
            && self.estimate > 0
        {
            lock(&lane.calibration).observe(actual as f64 / self.estimate as f64);
        }
        let learned = lane.gate.settle(&self.grant, billed, seen, now);
        self.grant.stage = Stage::Settled;
        lane.in_flight.fetch_sub(1, Ordering::Relaxed);
        let limits = lane.gate.limits();
        if limits.tokens.is_some() {
            self.pool.meters_tokens.store(true, Ordering::Relaxed);
        }
        if limits.requests.is_some() || limits.tokens.is_some() {
            self.pool.limited.store(true, Ordering::Relaxed);
        }
        learned
    }
}

impl Drop for Booking {
    fn drop(&mut self) {
        if self.grant.stage == Stage::Settled {
            return;
        }
        self.lane_ref.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.lane_ref.gate.release(&self.grant);
    }
}
