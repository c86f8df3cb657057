//! The lanes of one upstream: which requests share one set of limits (SPEC §5, §6).
//!
//! Providers limit differently, so the lanes follow how this one does
//! ([`LaneLayout`]): one lane per key; one per key × model (limits per model, as
//! OpenAI's); or one for the whole account, every key rotating through it (OpenRouter,
//! where extra keys add no capacity: N lanes would each learn the account's limit and
//! together send N times it).
//!
//! A [`Lane`] ([`crate::limits::lane`]) is one value owning its state. Every attempt books on the live lane that can
//! send it soonest; the booking is a [`Booking`] that gives itself back when dropped, so
//! no path — a halt, a key retired while waiting, a task dropped after the grace
//! period — can leak a request, tokens or an in-flight count. Keys are named `key#N`
//! everywhere, never by value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::time::Instant;

use crate::engine::turnstile::Turnstile;
use crate::limits::gate::{RateGate, Refused};
use crate::limits::local::LocalGate;
use crate::provider::classify::Reason;
use crate::provider::transport::{ApiKey, Reply};

use crate::limits::lane::lock;
pub use crate::limits::lane::{BookError, Booking, Key, Lane, LaneView};

/// Which requests share one set of limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LaneLayout {
    /// One lane per key: providers that limit per key or organisation, and any
    /// provider volley knows nothing about.
    #[default]
    PerKey,
    /// One lane per key and model: providers whose limits are per model (OpenAI).
    PerKeyModel,
    /// One lane for every key of the account (OpenRouter).
    PerAccount,
}

impl LaneLayout {
    /// How a known provider limits, from its base URL; per key for any other.
    pub fn for_base_url(base_url: &str) -> LaneLayout {
        let host = base_url
            .split_once("://")
            .map_or(base_url, |(_, rest)| rest)
            .split(['/', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        match host.as_str() {
            "openrouter.ai" => LaneLayout::PerAccount,
            "api.openai.com" => LaneLayout::PerKeyModel,
            _ => LaneLayout::PerKey,
        }
    }

    /// The name used by `--lanes`.
    pub fn as_str(self) -> &'static str {
        match self {
            LaneLayout::PerKey => "key",
            LaneLayout::PerKeyModel => "key-model",
            LaneLayout::PerAccount => "account",
        }
    }

    pub fn parse(name: &str) -> Option<LaneLayout> {
        [
            LaneLayout::PerKey,
            LaneLayout::PerKeyModel,
            LaneLayout::PerAccount,
        ]
        .into_iter()
        .find(|l| l.as_str() == name)
    }
}

/// How soon a lane could send, then how busy it is: the smaller goes first.
type Headroom = (std::time::Duration, usize);

/// The keys and lanes of one upstream.
#[derive(Debug)]
pub struct LanePool {
    keys: Vec<Key>,
    layout: LaneLayout,
    /// Per-lane ceilings given by flag.
    rpm: Option<u64>,
    tpm: Option<u64>,
    lanes: RwLock<Vec<Arc<Lane>>>,
    /// Per key × model: model → the lane of each key, by key.
    by_model: Mutex<HashMap<Arc<str>, Vec<usize>>>,
    /// Who books next among the requests that compete for the same lanes: one queue
    /// for the pool, or (per key × model) one per model, so that a paused model never
    /// holds up another's requests.
    turnstile: Arc<Turnstile>,
    turnstiles: Mutex<HashMap<Arc<str>, Arc<Turnstile>>>,
    /// Whether any lane has a token limit, i.e. whether requests must be tokenized.
    pub(crate) meters_tokens: AtomicBool,
    /// Whether any lane has had a limit or a pause: until then every booking is
    /// immediate and requests need not take turns. Never goes back to false.
    pub(crate) limited: AtomicBool,
    /// Woken when a reply changes what a limited lane allows, so a request waiting for a
    /// booked instant can book again instead of sleeping past room that opened up.
    changed: tokio::sync::Notify,
}

impl LanePool {
    /// Per-key lanes (today's `volley run` default); see [`LanePool::with_layout`].
    pub fn new(keys: Vec<ApiKey>, rpm: Option<u64>, tpm: Option<u64>) -> Arc<LanePool> {
        LanePool::with_layout("", keys, LaneLayout::PerKey, rpm, tpm)
    }

    /// `rpm` and `tpm` are per-lane limits (`None` = unknown until learned); `prefix`
    /// starts every label (`judge:` makes `judge:key#1`), to tell upstreams apart.
    pub fn with_layout(
        prefix: &str,
        keys: Vec<ApiKey>,
        layout: LaneLayout,
        rpm: Option<u64>,
        tpm: Option<u64>,
    ) -> Arc<LanePool> {
        let keys: Vec<Key> = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| Key {
                label: Arc::from(format!("{prefix}key#{}", i + 1)),
                key,
                retired: Mutex::new(None),
            })
            .collect();
        let gate = || Box::new(LocalGate::new(rpm, tpm)) as Box<dyn RateGate>;
        let lanes = match layout {
            LaneLayout::PerKey => keys
                .iter()
                .enumerate()
                .map(|(i, k)| Arc::new(Lane::new(k.label.to_string(), vec![i], gate())))
                .collect(),
            LaneLayout::PerAccount if !keys.is_empty() => vec![Arc::new(Lane::new(
                format!("{prefix}account"),
                (0..keys.len()).collect(),
                gate(),
            ))],
            _ => Vec::new(),
        };
        Arc::new(LanePool {
            keys,
            layout,
            rpm,
            tpm,
            lanes: RwLock::new(lanes),
            by_model: Mutex::new(HashMap::new()),
            turnstile: Arc::new(Turnstile::new()),
            turnstiles: Mutex::new(HashMap::new()),
            meters_tokens: AtomicBool::new(tpm.is_some()),
            limited: AtomicBool::new(rpm.is_some() || tpm.is_some()),
            changed: tokio::sync::Notify::new(),
        })
    }

    pub fn layout(&self) -> LaneLayout {
        self.layout
    }

    /// The upstream's keys.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// A lane by its index.
    pub fn lane(&self, index: usize) -> Arc<Lane> {
        self.lanes.read().unwrap_or_else(|p| p.into_inner())[index].clone()
    }

    /// Every lane so far (per key × model, lanes appear as models are seen).
    pub fn lanes(&self) -> Vec<Arc<Lane>> {
        self.lanes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The queue for the turn to book a lane for `model` (see
    /// [`crate::engine::turnstile`]).
    pub fn turnstile(&self, model: Option<&str>) -> Arc<Turnstile> {
        if self.layout != LaneLayout::PerKeyModel {
            return self.turnstile.clone();
        }
        let model = model.unwrap_or("");
        let mut all = lock(&self.turnstiles);
        if let Some(t) = all.get(model) {
            return t.clone();
        }
        let t = Arc::new(Turnstile::new());
        all.insert(Arc::from(model), t.clone());
        t
    }

    /// Whether no key of the pool is left.
    pub fn spent(&self) -> bool {
        self.keys.iter().all(Key::is_retired)
    }

    /// Every lane as it stands now (see [`LaneView`]).
    pub fn views(&self) -> Vec<LaneView> {
        let now = Instant::now();
        self.lanes()
            .iter()
            .map(|lane| lane.view(&self.keys, now))
            .collect()
    }

    /// Keys still in the pool.
    pub fn live(&self) -> usize {
        self.keys.iter().filter(|k| !k.is_retired()).count()
    }

    /// The reply with every key of the pool that it echoes replaced by the key's label.
    pub fn redact(&self, mut reply: Reply) -> Reply {
        for k in &self.keys {
            if let Some(clean) = k.key.redact(&reply.body, &k.label) {
                reply.body = clean;
            }
            // The request id is written to RESULTS and ERRORS too.
            let id = reply.headers.get("x-request-id");
            if let Some(clean) = id.and_then(|id| k.key.redact(id.as_bytes(), &k.label))
                && let Ok(value) = http::HeaderValue::from_bytes(&clean)
            {
                reply.headers.insert("x-request-id", value);
            }
        }
        reply
    }

    /// Whether a lane, or the key a booking uses, is retired, or the lane is paused past
    /// `now`: a booking on it should not be sent.
    pub fn unusable(&self, booking: &Booking, now: Instant) -> bool {
        let lane = &booking.lane_ref;
        lock(&lane.retired).is_some()
            || self.keys[booking.key].is_retired()
            || lane.gate.paused(now)
    }

    /// The indices of the lanes a request for `model` may go on, created as needed
    /// (per key × model); `None` means every lane.
    fn lanes_for(&self, model: Option<&str>) -> Option<Vec<usize>> {
        if self.layout != LaneLayout::PerKeyModel {
            return None;
        }
        let model = model.unwrap_or("");
        let mut by_model = lock(&self.by_model);
        if let Some(indices) = by_model.get(model) {
            return Some(indices.clone());
        }
        let mut lanes = self.lanes.write().unwrap_or_else(|p| p.into_inner());
        let indices: Vec<usize> = self
            .keys
            .iter()
            .enumerate()
            .map(|(key, k)| {
                let label = match model {
                    "" => k.label.to_string(),
                    m => format!("{}/{m}", k.label),
                };
                let gate = Box::new(LocalGate::new(self.rpm, self.tpm));
                lanes.push(Arc::new(Lane::new(label, vec![key], gate)));
                lanes.len() - 1
            })
            .collect();
        by_model.insert(Arc::from(model), indices.clone());
        Some(indices)
    }

    /// Books one request for `model` on the live lane that can send it soonest.
    /// `tokens` is asked for only when some lane meters tokens.
    pub async fn book(
        self: &Arc<Self>,
        model: Option<&str>,
        tokens: impl FnOnce() -> u64,
        now: Instant,
    ) -> Result<Booking, BookError> {
        let estimate = if self.meters_tokens() { tokens() } else { 0 };
        let subset = self.lanes_for(model);
        loop {
            let mut too_large = None;
            // (index, tokens to book, (wait, in flight)): the least wait wins, then the
            // fewest in flight.
            let mut best: Option<(usize, u64, Headroom)> = None;
            let chosen = {
                let lanes = self.lanes.read().unwrap_or_else(|p| p.into_inner());
                let all = 0..lanes.len();
                let indices: &mut dyn Iterator<Item = usize> = match &subset {
                    Some(some) => &mut some.iter().copied(),
                    None => &mut all.clone(),
                };
                for index in indices {
                    let lane = &lanes[index];
                    if !lane.is_live(&self.keys) {
                        continue;
                    }
                    if let Some(limit) = lane.gate.limits().tokens
                        && estimate > limit
                    {
                        too_large = Some(limit);
                        continue;
                    }
                    // Without token metering the estimate is 0: no need to take the
                    // calibration's lock on every booking.
                    let scaled = if estimate == 0 {
                        0
                    } else {
                        (estimate as f64 * lock(&lane.calibration).scale()).ceil() as u64
                    };
                    let headroom = (lane.gate.wait(scaled, now), lane.in_flight());
                    if best.as_ref().is_none_or(|(.., b)| headroom < *b) {
                        best = Some((index, scaled, headroom));
                    }
                }
                best.map(|(index, scaled, _)| (index, lanes[index].clone(), scaled))
            };
            let Some((index, lane, scaled)) = chosen else {
                return Err(match too_large {
                    Some(limit) => BookError::TooLarge {
                        tokens: estimate,
                        limit,
                    },
                    None => BookError::NoKeyLeft,
                });
            };
            // Another task may have retired the lane's last key in between.
            let Some(key) = lane.pick_key(&self.keys) else {
                continue;
            };
            let blind = !self.meters_tokens();
            let grant = lane.gate.reserve(scaled, blind, now).await;
            lane.in_flight.fetch_add(1, Ordering::Relaxed);
            let booking = Booking {
                pool: self.clone(),
                lane_ref: lane.clone(),
                lane: index,
                key,
                at: now + grant.wait,
                tokens: grant.tokens,
                estimate,
                grant,
            };
            if !lane.is_live(&self.keys) || self.keys[key].is_retired() {
                // Retired while booking: given back, and another lane tried.
                drop(booking);
                continue;
            }
            return Ok(booking);
        }
    }

    /// Wakes the request waiting for a booked instant, to book again: the caller has
    /// applied everything a reply meant (its pause, a retirement) first, so the waiter
    /// books on the lane's new state, never on a state about to change.
    pub fn wake(&self) {
        if self.is_limited() {
            self.changed.notify_waiters();
        }
    }

    /// Whether any lane meters tokens, i.e. whether requests must be tokenized.
    pub fn meters_tokens(&self) -> bool {
        self.meters_tokens.load(Ordering::Relaxed)
    }

    /// Whether any lane has had a limit or a pause (see [`LanePool::book`]'s callers).
    pub fn is_limited(&self) -> bool {
        self.limited.load(Ordering::Relaxed)
    }

    /// Resolves when a reply next changes what a limited lane allows (see
    /// [`tokio::sync::futures::Notified::enable`] to register before booking).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Pauses a lane until `until` (a pause already running is only ever extended);
    /// what the provider allows counts from then, not from before the pause. True when
    /// this starts a new pause, so that it is reported once, not once per in-flight
    /// request that ran into the same 429. `refused` is the attempt refused (default
    /// when unknown).
    pub fn pause(&self, lane: usize, until: Instant, now: Instant, refused: Refused) -> bool {
        self.limited.store(true, Ordering::Relaxed);
        let new = self.lane(lane).gate.pause(until, now, refused);
        self.wake();
        new
    }

    /// Retires a key for the rest of the run (a 401, spent credits): every lane of it
    /// goes with it. True if it was live until now.
    pub fn retire_key(&self, key: usize, why: Reason) -> bool {
        let newly = {
            let mut retired = lock(&self.keys[key].retired);
            retired.is_none() && retired.replace(why).is_none()
        };
        // A request sleeping until its instant on this key must book another.
        self.changed.notify_waiters();
        newly
    }

    /// Retires a lane for the rest of the run (its quota spent). True if it was live.
    /// Unless lanes are per key and model, a lane's quota is its keys' (a key's, or the
    /// account's): they leave the pool with it.
    pub fn retire_lane(&self, lane: usize, why: Reason) -> bool {
        let newly = {
            let lane = self.lane(lane);
            let mut retired = lock(&lane.retired);
            if self.layout != LaneLayout::PerKeyModel {
                for key in &lane.keys {
                    lock(&self.keys[*key].retired).get_or_insert(why);
                }
            }
            retired.is_none() && retired.replace(why).is_none()
        };
        self.changed.notify_waiters();
        newly
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::headers::{Observation, Quota};
    use crate::limits::limiter::WINDOW;
    use futures_util::FutureExt;
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

    #[tokio::test(start_paused = true)]
    async fn requests_spread_over_keys_with_headroom() {
        let pool = LanePool::new(keys(2), Some(60), None);
        let now = Instant::now();
        let a = pool.book(None, || 1, now).await.unwrap();
        let b = pool.book(None, || 1, now).await.unwrap();
        assert_ne!(a.lane, b.lane, "the second request goes to the idle key");
        assert_eq!((a.at, b.at), (now, now));
        let c = pool.book(None, || 1, now).await.unwrap();
        assert!(c.at > now, "both keys used their burst");
    }

    #[tokio::test(start_paused = true)]
    async fn paused_and_retired_keys() {
        let pool = LanePool::new(keys(2), None, None);
        let now = Instant::now();
        let a = pool.book(None, || 0, now).await.unwrap();
        let b = pool.book(None, || 0, now).await.unwrap();
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
        assert!(pool.lane(0).gate().paused(now));
        assert_eq!(pool.book(None, || 1, now).await.unwrap().lane, 1);
        assert!(pool.retire_key(1, Reason::Unauthorized));
        assert!(!pool.retire_key(1, Reason::Unauthorized));
        assert!(!pool.lane(1).is_live(pool.keys()));
        let b = pool.book(None, || 1, now).await.unwrap();
        assert_eq!((b.lane, b.at), (0, now + Duration::from_secs(5)));
        assert_eq!(pool.live(), 1);
        pool.retire_key(0, Reason::CreditsExhausted);
        assert_eq!(
            pool.book(None, || 1, now).await.unwrap_err(),
            BookError::NoKeyLeft
        );
        assert_eq!(format!("{:?}", pool.keys()[0].key), "ApiKey(<hidden>)");
        assert_eq!(&*pool.keys()[1].label, "key#2");
        let views = pool.views();
        assert_eq!(views[1].retired, Some("unauthorized"));
        assert_eq!(views[0].retired, Some("credits_exhausted"));
        assert_eq!(views[0].in_flight, 1, "the booking still held");
    }

    #[tokio::test(start_paused = true)]
    async fn per_key_and_model_a_spent_model_leaves_the_others_and_the_keys_live() {
        let pool = LanePool::with_layout("p:", keys(2), LaneLayout::PerKeyModel, None, None);
        let now = Instant::now();
        let a = pool.book(Some("m1"), || 0, now).await.unwrap();
        let b = pool.book(Some("m1"), || 0, now).await.unwrap();
        assert_ne!(a.lane, b.lane, "one lane per key for the model");
        let (la, lb) = (a.lane, b.lane);
        drop((a, b));
        assert!(pool.retire_lane(la, Reason::QuotaExhausted));
        assert!(pool.retire_lane(lb, Reason::QuotaExhausted));
        assert_eq!(
            pool.book(Some("m1"), || 0, now).await.unwrap_err(),
            BookError::NoKeyLeft
        );
        assert!(!pool.spent(), "the keys themselves are live");
        let other = pool.book(Some("m2"), || 0, now).await.unwrap();
        assert_eq!(&*pool.lane(other.lane).label, "p:key#1/m2");
        assert!(!Arc::ptr_eq(
            &pool.turnstile(Some("m1")),
            &pool.turnstile(Some("m2"))
        ));
        assert!(Arc::ptr_eq(
            &pool.turnstile(Some("m1")),
            &pool.turnstile(Some("m1"))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_booking_never_sent_is_given_back_whole() {
        let pool = LanePool::new(keys(1), Some(60), Some(600));
        let now = Instant::now();
        let first = pool.book(None, || 10, now).await.unwrap();
        let second = pool.book(None, || 10, now).await.unwrap();
        let later = second.at;
        assert!(later > now);
        drop(second);
        let again = pool.book(None, || 10, now).await.unwrap();
        assert_eq!(again.at, later, "the dropped booking left no trace");
        drop(again);
        drop(first);
        // All refunded. (Within nanoseconds: the token limit's booking began where the
        // request limit put it, and a refund gives back units, not that alignment.)
        let held = pool.book(None, || 10, now).await.unwrap();
        assert!(
            held.at - now < Duration::from_micros(1),
            "{:?}",
            held.at - now
        );
        assert_eq!(pool.lane(0).in_flight(), 1, "only the booking held");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_booking_keeps_its_request_and_settles_its_tokens() {
        let pool = LanePool::new(keys(1), Some(60), Some(6000));
        let now = Instant::now();
        let mut sent = pool.book(None, || 3000, now).await.unwrap();
        sent.sent();
        drop(sent);
        let next = pool.book(None, || 1, now).await.unwrap();
        assert!(next.at > now, "the sent request stays in the window");
        drop(next);
        assert_eq!(pool.lane(0).in_flight(), 0);
        // Settled to what was billed: nothing, for a reply without usage.
        let pool = LanePool::new(keys(1), None, Some(6000));
        let mut big = pool.book(None, || 5000, now).await.unwrap();
        big.sent();
        let blocked = pool.book(None, || 5000, now).await.unwrap().at;
        assert!(blocked > now);
        big.settle(None, &Observation::default(), now);
        assert_eq!(
            pool.book(None, || 5000, now).await.unwrap().at,
            now,
            "an unbilled attempt gives its tokens back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_booking_is_capped_at_what_the_limit_holds_and_a_request_larger_than_it_is_refused() {
        let pool = LanePool::new(keys(1), None, Some(60_000));
        let now = Instant::now();
        let err = pool.book(None, || 1_000_000_000, now).await.unwrap_err();
        assert_eq!(
            err,
            BookError::TooLarge {
                tokens: 1_000_000_000,
                limit: 60_000
            }
        );
        let mut b = pool.book(None, || 60_000, now).await.unwrap();
        b.sent();
        drop(b);
        let next = pool.book(None, || 1, now).await.unwrap();
        assert!(
            next.at <= now + WINDOW + Duration::from_secs(1),
            "one window at most: {:?}",
            next.at - now
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_counted_only_when_metered() {
        let pool = LanePool::new(keys(1), None, None);
        let now = Instant::now();
        let b = pool
            .book(None, || panic!("no token limit: no tokenizing"), now)
            .await
            .unwrap();
        assert_eq!(b.tokens, 0);
        drop(b);
        let mut b = pool.book(None, || 0, now).await.unwrap();
        b.sent();
        b.settle(
            Some(0),
            &Observation {
                requests: None,
                tokens: Some(quota(1000, 1000, 0)),
            },
            now,
        );
        assert_eq!(pool.book(None, || 300, now).await.unwrap().tokens, 300);
    }

    #[tokio::test(start_paused = true)]
    async fn token_estimates_are_calibrated_by_real_usage() {
        let pool = LanePool::new(keys(1), None, Some(1_000_000));
        let now = Instant::now();
        let settle = |estimate: u64, billed: u64| {
            let mut b = pool
                .book(None, || estimate, now)
                .now_or_never()
                .unwrap()
                .unwrap();
            b.sent();
            b.settle(Some(billed), &Observation::default(), now);
        };
        for _ in 0..200 {
            settle(100, 150);
        }
        let b = pool.book(None, || 100, now).await.unwrap();
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
        let b = pool.book(None, || 100, now).await.unwrap();
        assert!(
            (200..=225).contains(&b.tokens),
            "mean 1.5x, deviation 0.3x: booked at about mean + 2 deviations: {}",
            b.tokens
        );
    }
}
