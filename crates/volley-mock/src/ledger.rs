//! The mock's books: the limits per key (a sliding window or token buckets), sliding
//! logs for the peaks, counts by status and fault, and the tokens billed, in all, per
//! key and per chat model.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::config::{LimitShape, MockConfig, clamp_window};
use crate::faults::Fault;

/// The span `peak_*_per_minute` are measured over, whatever the limits' window: tests
/// check "never more than the limit per minute" with them.
pub const MINUTE: Duration = Duration::from_secs(60);

/// Model names with a book of their own in `by_model`. The names come from clients, so
/// the map is bounded or a hostile client could grow it without limit; a thousand is
/// far more than the models one experiment compares.
pub const MAX_MODELS: usize = 1000;
/// Names longer than this (in bytes) get no book of their own: a thousand names of a
/// megabyte each would still be a gigabyte. Real model ids are well under 100 bytes.
pub const MAX_MODEL_NAME: usize = 256;
/// The book of the models past [`MAX_MODELS`] and of names past [`MAX_MODEL_NAME`].
pub const OTHER_MODELS: &str = "(other)";

/// The limits as the ledger enforces them, read once from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub shape: LimitShape,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Capacity of the requests bucket; `None` = `rpm`.
    pub burst: Option<u64>,
    /// Never zero and never past [`MAX_WINDOW`](crate::MAX_WINDOW): both would break
    /// the arithmetic.
    pub window: Duration,
}

impl Limits {
    pub fn new(config: &MockConfig) -> Limits {
        Limits {
            shape: config.limit_shape,
            rpm: config.rpm,
            tpm: config.tpm,
            burst: config.burst,
            window: clamp_window(config.window),
        }
    }
}

/// Admitted requests of the last `span`, with their tokens, and the peaks ever seen.
#[derive(Debug)]
struct Log {
    span: Duration,
    entries: VecDeque<(Instant, u64)>,
    tokens: u64,
    peak_requests: u64,
    peak_tokens: u64,
}

impl Log {
    fn new(span: Duration) -> Log {
        Log {
            span,
            entries: VecDeque::new(),
            tokens: 0,
            peak_requests: 0,
            peak_tokens: 0,
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some((t, tokens)) = self.entries.front() {
            if now.saturating_duration_since(*t) < self.span {
                break;
            }
            self.tokens = self.tokens.saturating_sub(*tokens);
            self.entries.pop_front();
        }
    }

    fn push(&mut self, now: Instant, tokens: u64) {
        self.entries.push_back((now, tokens));
        self.tokens = self.tokens.saturating_add(tokens);
        self.peak_requests = self.peak_requests.max(self.count());
        self.peak_tokens = self.peak_tokens.max(self.tokens);
    }

    fn count(&self) -> u64 {
        u64::try_from(self.entries.len()).unwrap_or(u64::MAX)
    }

    /// Requests (or tokens, when `by_tokens`) in the log.
    fn used(&self, by_tokens: bool) -> u64 {
        if by_tokens { self.tokens } else { self.count() }
    }

    /// Time until an entry made at `t` leaves the log. Computed as a difference of
    /// durations, never as `t + span`, which could overflow an `Instant`.
    fn leaves_in(&self, t: Instant, now: Instant) -> Duration {
        self.span.saturating_sub(now.saturating_duration_since(t))
    }

    /// Time until the oldest entries holding at least `units` (requests when
    /// `by_tokens` is false) leave the log; the whole span if the log holds fewer.
    fn frees_in(&self, now: Instant, units: u64, by_tokens: bool) -> Duration {
        let mut freed = 0u64;
        for (t, tokens) in &self.entries {
            freed = freed.saturating_add(if by_tokens { *tokens } else { 1 });
            if freed >= units {
                return self.leaves_in(*t, now);
            }
        }
        self.span
    }

    /// Time until nothing counted is left in the log, i.e. until the limit is whole
    /// again: when the newest entry that holds any units leaves.
    fn empties_in(&self, now: Instant, by_tokens: bool) -> Duration {
        self.entries
            .iter()
            .rev()
            .find(|(_, tokens)| !by_tokens || *tokens > 0)
            .map_or(Duration::ZERO, |(t, _)| self.leaves_in(*t, now))
    }

    /// The window shape's figures for one limit: (limit, remaining, reset).
    fn figures(&self, limit: u64, now: Instant, by_tokens: bool) -> (u64, u64, Duration) {
        (
            limit,
            limit.saturating_sub(self.used(by_tokens)),
            self.empties_in(now, by_tokens),
        )
    }

    /// The window shape's verdict on `cost` more units: `None` if they fit now, else
    /// how long until enough old entries have left for them to fit. A cost larger than
    /// the limit never fits; it is told to wait a whole window, as OpenAI does.
    fn wait_for(&self, limit: u64, cost: u64, now: Instant, by_tokens: bool) -> Option<Duration> {
        let used = self.used(by_tokens);
        if used.saturating_add(cost) <= limit {
            None
        } else if cost > limit {
            Some(self.span)
        } else {
            Some(self.frees_in(now, used.saturating_add(cost) - limit, by_tokens))
        }
    }
}

/// Sliding logs for the peaks: per minute always, and per configured window when that
/// is not a minute (when it is, the minute's log serves both and nothing is kept
/// twice). The window log is also what the window shape enforces limits on.
#[derive(Debug)]
struct Peaks {
    minute: Log,
    window: Option<Log>,
}

impl Peaks {
    fn new(window: Duration) -> Peaks {
        Peaks {
            minute: Log::new(MINUTE),
            window: (window != MINUTE).then(|| Log::new(window)),
        }
    }

    fn window(&self) -> &Log {
        self.window.as_ref().unwrap_or(&self.minute)
    }

    fn prune(&mut self, now: Instant) {
        self.minute.prune(now);
        if let Some(w) = &mut self.window {
            w.prune(now);
        }
    }

    fn record(&mut self, now: Instant, tokens: u64) {
        self.prune(now);
        self.minute.push(now, tokens);
        if let Some(w) = &mut self.window {
            w.push(now, tokens);
        }
    }
}

/// Converts nanoseconds to a `Duration`, saturating instead of overflowing.
fn from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    match u64::try_from(nanos / NANOS_PER_SEC) {
        // The remainder is below 10^9, so it fits a u32.
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

/// One token bucket, kept as its debt to being full, measured in nanoseconds × limit:
/// one unit costs `window` (in ns) of debt and every nanosecond repays `limit`, so the
/// bucket refills at exactly limit/window per second with integers only, and every
/// time it reports is exact to the nanosecond.
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    debt: u128,
    /// When `debt` was last brought up to date; `None` before the first request.
    at: Option<Instant>,
}

/// What a bucket holds and how fast it fills.
#[derive(Debug, Clone, Copy)]
struct Rule {
    /// The limit per window, i.e. units refilled per window.
    limit: u64,
    capacity: u64,
    window_ns: u128,
}

impl Bucket {
    /// Repays the debt for the time elapsed since the last look.
    fn settle(&mut self, rule: Rule, now: Instant) {
        if let Some(at) = self.at {
            let elapsed = now.saturating_duration_since(at).as_nanos();
            let repaid = elapsed.saturating_mul(u128::from(rule.limit));
            self.debt = self.debt.saturating_sub(repaid);
        }
        // An earlier `now` (callers of the ledger may pass any) must not move time back.
        if self.at.is_none_or(|at| now > at) {
            self.at = Some(now);
        }
    }

    /// (limit, remaining, reset): whole units it holds, and the time until it is full.
    fn figures(&self, rule: Rule) -> (u64, u64, Duration) {
        let owed = self.debt.div_ceil(rule.window_ns.max(1));
        let remaining = u128::from(rule.capacity).saturating_sub(owed);
        let reset = if rule.limit == 0 {
            Duration::ZERO
        } else {
            from_nanos(self.debt.div_ceil(u128::from(rule.limit)))
        };
        (
            rule.limit,
            u64::try_from(remaining).unwrap_or(u64::MAX),
            reset,
        )
    }

    /// `None` if `cost` units are in the bucket now, else the time until they are. A
    /// cost the bucket cannot hold even when full (or a bucket that never refills)
    /// waits a whole window, as the window shape does.
    fn wait_for(&self, rule: Rule, cost: u64) -> Option<Duration> {
        let full = u128::from(rule.capacity).saturating_mul(rule.window_ns);
        let after = self
            .debt
            .saturating_add(u128::from(cost).saturating_mul(rule.window_ns));
        if after <= full {
            None
        } else if cost > rule.capacity || rule.limit == 0 {
            Some(from_nanos(rule.window_ns))
        } else {
            Some(from_nanos((after - full).div_ceil(u128::from(rule.limit))))
        }
    }

    fn take(&mut self, rule: Rule, cost: u64) {
        self.debt = self
            .debt
            .saturating_add(u128::from(cost).saturating_mul(rule.window_ns));
    }
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

/// The `x-ratelimit-*` figures for one key at one moment, with OpenAI's meanings:
/// remaining = what could be admitted now, reset = the time until the limit is whole
/// again (not until the next unit frees: clients pace on it).
#[derive(Debug, Clone, Default)]
pub struct RateHeaders {
    /// (limit, remaining, reset) for requests, when a request limit is set.
    pub requests: Option<(u64, u64, Duration)>,
    pub tokens: Option<(u64, u64, Duration)>,
}

/// A refusal: which limit, and when to come back.
#[derive(Debug, Clone)]
pub struct Limited {
    pub kind: LimitKind,
    pub retry_after: Duration,
    pub headers: RateHeaders,
}

/// Tokens billed, as `/mock/stats` shows them.
#[derive(Debug, Default, Clone, Copy)]
struct Tokens {
    prompt: u64,
    completion: u64,
}

impl Tokens {
    fn add(&mut self, prompt: u64, completion: u64) {
        self.prompt = self.prompt.saturating_add(prompt);
        self.completion = self.completion.saturating_add(completion);
    }

    fn json(self) -> Value {
        json!({
            "prompt": self.prompt,
            "completion": self.completion,
            "total": self.prompt.saturating_add(self.completion),
        })
    }
}

/// One chat model's figures: what a client sent to it, and what it was billed.
#[derive(Debug, Default)]
struct ModelBook {
    /// Every request received for the model, whatever its answer (429s and 5xx too).
    requests: u64,
    /// Tokens of its replies that carried usage.
    billed: Tokens,
}

#[derive(Debug)]
struct KeyBook {
    peaks: Peaks,
    /// The requests and tokens buckets ([`LimitShape::Bucket`] only).
    buckets: [Bucket; 2],
    requests: u64,
    rate_limited: u64,
    payment_required: u64,
    billed: u64,
    in_flight: u64,
}

impl KeyBook {
    fn new(window: Duration) -> KeyBook {
        KeyBook {
            peaks: Peaks::new(window),
            buckets: [Bucket::default(); 2],
            requests: 0,
            rate_limited: 0,
            payment_required: 0,
            billed: 0,
            in_flight: 0,
        }
    }
}

/// Everything the mock counts.
#[derive(Debug)]
pub struct Ledger {
    limits: Limits,
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    billed: Tokens,
    /// USD reported in `usage.cost`, when the mock reports cost.
    cost_billed: f64,
    /// `GET /v1/models` calls: a client that caches the list calls it once.
    model_list_requests: u64,
    all: Peaks,
    keys: HashMap<String, KeyBook>,
    /// Chat requests by their body's `model`, at most [`MAX_MODELS`] names besides
    /// [`OTHER_MODELS`].
    models: HashMap<String, ModelBook>,
    faults: BTreeMap<&'static str, u64>,
}

/// How a key is named in stats: its last four characters, never more.
pub fn key_label(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

impl Ledger {
    pub fn new(limits: Limits) -> Ledger {
        let limits = Limits {
            window: clamp_window(limits.window),
            ..limits
        };
        Ledger {
            limits,
            requests: 0,
            by_status: BTreeMap::new(),
            billed: Tokens::default(),
            cost_billed: 0.0,
            model_list_requests: 0,
            all: Peaks::new(limits.window),
            keys: HashMap::new(),
            models: HashMap::new(),
            faults: BTreeMap::new(),
        }
    }

    /// A key's book, opened on first use.
    fn book(&mut self, key: &str) -> &mut KeyBook {
        self.book_named(key_label(key))
    }

    fn book_named(&mut self, label: String) -> &mut KeyBook {
        let window = self.limits.window;
        self.keys
            .entry(label)
            .or_insert_with(|| KeyBook::new(window))
    }

    /// Counts a request to `/v1/*`.
    pub fn count_request(&mut self, key: Option<&str>) {
        self.requests += 1;
        if let Some(key) = key {
            self.book(key).requests += 1;
        }
    }

    /// A model's book, opened on first use while there is room for another name.
    fn model_book(&mut self, model: &str) -> &mut ModelBook {
        let own = self.models.contains_key(model)
            || (self.models.len() < MAX_MODELS && model.len() <= MAX_MODEL_NAME);
        let label = if own { model } else { OTHER_MODELS };
        self.models.entry(label.to_owned()).or_default()
    }

    /// Counts a chat request for `model` (its body's `model`).
    pub fn count_model_request(&mut self, model: &str) {
        self.model_book(model).requests += 1;
    }

    pub fn count_model_list(&mut self) {
        self.model_list_requests += 1;
    }

    pub fn count_status(&mut self, status: u16) {
        *self.by_status.entry(status).or_default() += 1;
    }

    pub fn count_fault(&mut self, fault: Fault) {
        let name = match fault {
            Fault::None => return,
            Fault::Fail(_) => "fail",
            Fault::Hang => "hang",
            Fault::Malformed => "malformed",
            Fault::Reset => "reset",
        };
        *self.faults.entry(name).or_default() += 1;
    }

    /// Bills a reply that carried usage: in all, to its key, and to its chat model
    /// when it answered one.
    pub fn bill(
        &mut self,
        key: &str,
        model: Option<&str>,
        prompt: u64,
        completion: u64,
        cost: Option<f64>,
    ) {
        self.cost_billed += cost.unwrap_or(0.0);
        self.billed.add(prompt, completion);
        if let Some(model) = model {
            self.model_book(model).billed.add(prompt, completion);
        }
        let book = self.book(key);
        book.billed = book
            .billed
            .saturating_add(prompt.saturating_add(completion));
    }

    /// Tokens billed to a key so far.
    pub fn billed(&self, key: &str) -> u64 {
        self.keys.get(&key_label(key)).map_or(0, |b| b.billed)
    }

    /// Counts a 402 for a key.
    pub fn count_payment_required(&mut self, key: &str) {
        self.count_status(402);
        self.book(key).payment_required += 1;
    }

    /// Takes an in-flight slot for a key if fewer than `budget` are taken.
    pub fn enter(&mut self, key: &str, budget: Option<u64>) -> bool {
        let book = self.book(key);
        if budget.is_some_and(|b| book.in_flight >= b) {
            return false;
        }
        book.in_flight += 1;
        true
    }

    /// Gives an in-flight slot back.
    pub fn leave(&mut self, key: &str) {
        if let Some(book) = self.keys.get_mut(&key_label(key)) {
            book.in_flight = book.in_flight.saturating_sub(1);
        }
    }

    /// Admits a request of `tokens` for `key` under the limits, recording it, or
    /// refuses it. Figures on success describe the key after this request; on refusal,
    /// as it stands (the refused request takes nothing).
    pub fn admit(&mut self, key: &str, tokens: u64, now: Instant) -> Result<RateHeaders, Limited> {
        self.admit_in(key_label(key), tokens, now)
    }

    /// As [`Ledger::admit`], under the limits of `key` for `model` alone (providers that
    /// limit per key and model): counted in the book `LAST4/MODEL`.
    pub fn admit_for_model(
        &mut self,
        key: &str,
        model: &str,
        tokens: u64,
        now: Instant,
    ) -> Result<RateHeaders, Limited> {
        self.admit_in(format!("{}/{model}", key_label(key)), tokens, now)
    }

    fn admit_in(
        &mut self,
        label: String,
        tokens: u64,
        now: Instant,
    ) -> Result<RateHeaders, Limited> {
        let limits = self.limits;
        let book = self.book_named(label);
        book.peaks.prune(now);
        // (limit, cost in units, counted in tokens?) for each limit set.
        let gates = [
            (LimitKind::Requests, limits.rpm, 1, false),
            (LimitKind::Tokens, limits.tpm, tokens, true),
        ];
        let rules = gates.map(|(_, limit, _, by_tokens)| {
            limit.map(|limit| Rule {
                limit,
                capacity: if by_tokens {
                    limit
                } else {
                    limits.burst.unwrap_or(limit)
                },
                window_ns: limits.window.as_nanos(),
            })
        });
        if limits.shape == LimitShape::Bucket {
            for (bucket, rule) in book.buckets.iter_mut().zip(rules) {
                if let Some(rule) = rule {
                    bucket.settle(rule, now);
                }
            }
        }
        let figures = |book: &KeyBook| {
            let one = |i: usize| {
                let rule = rules[i]?;
                Some(match limits.shape {
                    LimitShape::Window => book.peaks.window().figures(rule.limit, now, gates[i].3),
                    LimitShape::Bucket => book.buckets[i].figures(rule),
                })
            };
            RateHeaders {
                requests: one(0),
                tokens: one(1),
            }
        };
        // The request is admitted when every limit lets it through: its wait is the
        // longest of theirs, and the limit that imposes it is the one named.
        let mut refusal: Option<(LimitKind, Duration)> = None;
        for (i, (kind, _, cost, by_tokens)) in gates.into_iter().enumerate() {
            let Some(rule) = rules[i] else { continue };
            let wait = match limits.shape {
                LimitShape::Window => book
                    .peaks
                    .window()
                    .wait_for(rule.limit, cost, now, by_tokens),
                LimitShape::Bucket => book.buckets[i].wait_for(rule, cost),
            };
            if let Some(wait) = wait
                && refusal.is_none_or(|(_, longest)| wait > longest)
            {
                refusal = Some((kind, wait));
            }
        }
        if let Some((kind, retry_after)) = refusal {
            book.rate_limited += 1;
            return Err(Limited {
                kind,
                retry_after,
                headers: figures(book),
            });
        }
        if limits.shape == LimitShape::Bucket {
            for (i, (_, _, cost, _)) in gates.into_iter().enumerate() {
                if let Some(rule) = rules[i] {
                    book.buckets[i].take(rule, cost);
                }
            }
        }
        book.peaks.record(now, tokens);
        let out = figures(book);
        self.all.record(now, tokens);
        Ok(out)
    }

    /// The JSON served at `GET /mock/stats`.
    pub fn stats(&self) -> Value {
        let by_status: serde_json::Map<String, Value> = self
            .by_status
            .iter()
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        let by_key: serde_json::Map<String, Value> = self
            .keys
            .iter()
            .map(|(label, b)| {
                (
                    label.clone(),
                    json!({
                        "requests": b.requests,
                        "rate_limited": b.rate_limited,
                        "payment_required": b.payment_required,
                        "tokens_billed": b.billed,
                        "peak_requests_per_minute": b.peaks.minute.peak_requests,
                        "peak_tokens_per_minute": b.peaks.minute.peak_tokens,
                        "peak_requests_per_window": b.peaks.window().peak_requests,
                        "peak_tokens_per_window": b.peaks.window().peak_tokens,
                    }),
                )
            })
            .collect();
        let by_model: serde_json::Map<String, Value> = self
            .models
            .iter()
            .map(|(model, b)| {
                (
                    model.clone(),
                    json!({"requests": b.requests, "tokens_billed": b.billed.json()}),
                )
            })
            .collect();
        let fault = |name| self.faults.get(name).copied().unwrap_or(0);
        json!({
            "requests": self.requests,
            "by_status": by_status,
            "tokens_billed": self.billed.json(),
            "cost_billed": self.cost_billed,
            "model_list_requests": self.model_list_requests,
            "peak_requests_per_minute": self.all.minute.peak_requests,
            "peak_tokens_per_minute": self.all.minute.peak_tokens,
            "peak_requests_per_window": self.all.window().peak_requests,
            "peak_tokens_per_window": self.all.window().peak_tokens,
            "limit_shape": self.limits.shape.as_str(),
            "window_secs": self.limits.window.as_secs_f64(),
            "by_key": by_key,
            "by_model": by_model,
            "faults": {"fail": fault("fail"), "hang": fault("hang"), "malformed": fault("malformed"), "reset": fault("reset")},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(shape: LimitShape, rpm: Option<u64>, tpm: Option<u64>, window_secs: u64) -> Ledger {
        Ledger::new(Limits {
            shape,
            rpm,
            tpm,
            burst: None,
            window: Duration::from_secs(window_secs),
        })
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_limit_and_window_expiry() {
        let mut l = ledger(LimitShape::Window, Some(3), None, 60);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.admit("sk-abcd", 10, t0).is_ok());
        }
        let refused = l.admit("sk-abcd", 10, t0 + secs(20)).unwrap_err();
        assert_eq!(refused.kind, LimitKind::Requests);
        assert_eq!(refused.retry_after, secs(40));
        assert!(l.admit("sk-wxyz", 10, t0).is_ok(), "limits are per key");
        assert!(
            l.admit("sk-abcd", 10, t0 + MINUTE).is_ok(),
            "the window slid"
        );
        let stats = l.stats();
        assert_eq!(stats["by_key"]["abcd"]["rate_limited"], 1);
        assert_eq!(stats["by_key"]["abcd"]["peak_requests_per_minute"], 3);
        assert_eq!(stats["peak_requests_per_minute"], 4);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_limit() {
        let mut l = ledger(LimitShape::Window, None, Some(1000), 60);
        let t0 = Instant::now();
        assert!(l.admit("k", 600, t0).is_ok());
        let h = l.admit("k", 300, t0 + secs(1)).unwrap();
        assert_eq!(h.tokens.unwrap().1, 100);
        let refused = l.admit("k", 200, t0 + secs(2)).unwrap_err();
        assert_eq!(refused.kind, LimitKind::Tokens);
        assert_eq!(refused.retry_after, secs(58));
        assert_eq!(l.admit("k", 5000, t0).unwrap_err().retry_after, MINUTE);
    }

    #[tokio::test(start_paused = true)]
    async fn window_reset_is_until_the_limit_is_whole_again() {
        let mut l = ledger(LimitShape::Window, Some(3), Some(100), 60);
        let t0 = Instant::now();
        l.admit("k", 10, t0).unwrap();
        l.admit("k", 0, t0 + secs(10)).unwrap();
        let h = l.admit("k", 20, t0 + secs(20)).unwrap();
        // After this request: it is the newest, so everything is back one window on.
        assert_eq!(h.requests, Some((3, 0, secs(60))));
        assert_eq!(h.tokens, Some((100, 70, secs(60))));
        let refused = l.admit("k", 5, t0 + secs(30)).unwrap_err();
        // Requests: the newest entry (t0+20) leaves at t0+80; one slot frees at t0+60.
        assert_eq!(refused.headers.requests, Some((3, 0, secs(50))));
        assert_eq!(refused.retry_after, secs(30));
        let h = l.admit("k", 0, t0 + secs(65)).unwrap();
        // Tokens: only entries holding tokens count, so the empty one just admitted
        // does not push the tokens' reset out.
        assert_eq!(h.tokens, Some((100, 80, secs(15))));
        assert_eq!(h.requests, Some((3, 0, secs(60))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_window_slides_after_its_length() {
        let mut l = ledger(LimitShape::Window, Some(2), None, 5);
        let t0 = Instant::now();
        l.admit("k", 1, t0).unwrap();
        l.admit("k", 1, t0 + secs(1)).unwrap();
        let refused = l.admit("k", 1, t0 + ms(2500)).unwrap_err();
        assert_eq!(refused.retry_after, ms(2500), "exactly when t0 leaves");
        assert_eq!(refused.headers.requests, Some((2, 0, ms(3500))));
        assert!(l.admit("k", 1, t0 + ms(4999)).is_err());
        let h = l.admit("k", 1, t0 + secs(5)).unwrap();
        assert_eq!(h.requests, Some((2, 0, secs(5))));
        // Over 15 s at 2 per 5 s: 2 per window, more per minute.
        l.admit("k", 1, t0 + secs(10)).unwrap();
        l.admit("k", 1, t0 + secs(11)).unwrap();
        let stats = l.stats();
        assert_eq!(stats["peak_requests_per_window"], 2);
        assert_eq!(stats["by_key"]["k"]["peak_requests_per_window"], 2);
        assert_eq!(stats["peak_requests_per_minute"], 5);
        assert_eq!(stats["by_key"]["k"]["peak_tokens_per_minute"], 5);
        assert_eq!(stats["limit_shape"], "window");
        assert_eq!(stats["window_secs"], 5.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_longer_wait_wins_when_both_limits_refuse() {
        let mut l = ledger(LimitShape::Window, Some(1), Some(100), 60);
        let t0 = Instant::now();
        l.admit("k", 100, t0).unwrap();
        l.admit("j", 1, t0).unwrap();
        let refused = l.admit("k", 100, t0 + secs(1)).unwrap_err();
        assert_eq!(refused.kind, LimitKind::Requests);
        assert_eq!(refused.retry_after, secs(59));
        // Tokens larger than the limit can never fit: a whole window, and they name it.
        let refused = l.admit("j", 101, t0 + secs(1)).unwrap_err();
        assert_eq!(refused.kind, LimitKind::Tokens);
        assert_eq!(refused.retry_after, secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_starts_full_and_refills_at_its_rate() {
        // 5 per 2 s = one every 400 ms, 3 at once.
        let mut l = Ledger::new(Limits {
            shape: LimitShape::Bucket,
            rpm: Some(5),
            tpm: None,
            burst: Some(3),
            window: secs(2),
        });
        let t0 = Instant::now();
        for left in [2, 1, 0] {
            let h = l.admit("k", 7, t0).unwrap();
            let (limit, remaining, reset) = h.requests.unwrap();
            assert_eq!((limit, remaining), (5, left));
            assert_eq!(
                reset,
                ms(400) * (3 - left as u32),
                "full again after refilling"
            );
            assert!(h.tokens.is_none());
        }
        let refused = l.admit("k", 7, t0).unwrap_err();
        assert_eq!(refused.kind, LimitKind::Requests);
        assert_eq!(refused.retry_after, ms(400), "one unit at 2.5/s");
        assert_eq!(refused.headers.requests, Some((5, 0, ms(1200))));
        let refused = l.admit("k", 7, t0 + ms(300)).unwrap_err();
        assert_eq!(refused.retry_after, ms(100), "exact, not rounded");
        let h = l.admit("k", 7, t0 + ms(400)).unwrap();
        assert_eq!(h.requests, Some((5, 0, ms(1200))));
        // Refilling never goes past the burst.
        let h = l.admit("k", 7, t0 + secs(60)).unwrap();
        assert_eq!(h.requests, Some((5, 2, ms(400))));
        let stats = l.stats();
        assert_eq!(stats["limit_shape"], "bucket");
        assert_eq!(stats["peak_requests_per_window"], 4);
        assert_eq!(stats["by_key"]["k"]["rate_limited"], 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokens_bucket_holds_the_limit() {
        // 100 tokens per 10 s = 10 a second; --burst does not touch the tokens bucket.
        let mut l = Ledger::new(Limits {
            shape: LimitShape::Bucket,
            rpm: Some(1000),
            tpm: Some(100),
            burst: Some(1),
            window: secs(10),
        });
        let t0 = Instant::now();
        let h = l.admit("k", 60, t0).unwrap();
        assert_eq!(h.tokens, Some((100, 40, secs(6))));
        let refused = l.admit("k", 50, t0 + ms(5)).unwrap_err();
        // Requests: one per 10 ms, 5 ms to go; tokens: 10 short at 10/s = 1 s.
        assert_eq!(refused.kind, LimitKind::Tokens);
        assert_eq!(refused.retry_after, secs(1) - ms(5));
        assert_eq!(
            l.admit("j", 101, t0).unwrap_err().retry_after,
            secs(10),
            "more than the bucket holds: a whole window"
        );
        let h = l.admit("k", 50, t0 + secs(1)).unwrap();
        assert_eq!(h.tokens, Some((100, 0, secs(10))));
        // A partial unit is not reported as remaining: 0.5 tokens after 50 ms.
        let refused = l.admit("k", 1, t0 + secs(1) + ms(50)).unwrap_err();
        assert_eq!(refused.headers.tokens, Some((100, 0, ms(9950))));
        assert_eq!(refused.retry_after, ms(50));
    }

    #[tokio::test(start_paused = true)]
    async fn odd_inputs_never_panic() {
        let t0 = Instant::now();
        for shape in [LimitShape::Window, LimitShape::Bucket] {
            for (rpm, tpm, burst, window) in [
                (Some(0), Some(0), Some(0), Duration::ZERO),
                (Some(1), Some(u64::MAX), Some(u64::MAX), Duration::MAX),
                (Some(u64::MAX), Some(1), None, Duration::from_nanos(1)),
                (Some(0), None, Some(5), secs(1)),
            ] {
                let config = MockConfig {
                    limit_shape: shape,
                    rpm,
                    tpm,
                    burst,
                    window,
                    ..MockConfig::default()
                };
                let mut l = Ledger::new(Limits::new(&config));
                for (tokens, at) in [
                    (u64::MAX, secs(1)),
                    (0, Duration::ZERO),
                    (u64::MAX, secs(2)),
                ] {
                    let _ = l.admit("k", tokens, t0 + at);
                }
                let _ = l.stats();
            }
        }
        let mut l = Ledger::new(Limits {
            shape: LimitShape::Bucket,
            rpm: Some(1),
            tpm: None,
            burst: Some(u64::MAX),
            window: Duration::MAX,
        });
        for _ in 0..3 {
            l.admit("k", 1, t0).unwrap();
        }
        // A window clamped to MAX_WINDOW with room for u64::MAX requests.
        assert_eq!(l.limits.window, crate::MAX_WINDOW);
        let (_, remaining, reset) = l.admit("k", 1, t0).unwrap().requests.unwrap();
        assert_eq!(remaining, u64::MAX - 4);
        assert_eq!(reset, crate::MAX_WINDOW * 4);
    }

    #[test]
    fn models_are_counted_apart_up_to_a_bound() {
        let mut l = ledger(LimitShape::Window, None, None, 60);
        l.count_model_request("a");
        l.count_model_request("a");
        l.bill("k", Some("a"), 10, 2, None);
        l.bill("k", None, 100, 100, None);
        let stats = l.stats();
        assert_eq!(stats["by_model"]["a"]["requests"], 2);
        assert_eq!(
            stats["by_model"]["a"]["tokens_billed"],
            json!({"prompt": 10, "completion": 2, "total": 12})
        );
        assert_eq!(stats["tokens_billed"]["total"], 212);
        for i in 0..MAX_MODELS + 10 {
            l.count_model_request(&format!("m{i}"));
        }
        let huge = "x".repeat(MAX_MODEL_NAME + 1);
        l.count_model_request(&huge);
        l.bill("k", Some(&huge), 1, 1, None);
        l.count_model_request("a");
        let stats = l.stats();
        let by_model = stats["by_model"].as_object().unwrap();
        assert_eq!(by_model.len(), MAX_MODELS + 1, "the names and (other)");
        assert_eq!(by_model["a"]["requests"], 3, "a known name keeps its book");
        assert_eq!(by_model[OTHER_MODELS]["requests"], 12);
        assert_eq!(by_model[OTHER_MODELS]["tokens_billed"]["total"], 2);
        assert!(!by_model.contains_key(&huge));
    }

    #[test]
    fn labels_are_the_last_four_characters() {
        assert_eq!(key_label("sk-or-v1-123456"), "3456");
        assert_eq!(key_label("ab"), "ab");
    }
}
