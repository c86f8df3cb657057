//! The mock's books: sliding 60 s windows per key (for limits and peaks), counts by
//! status and fault, and the tokens billed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::faults::Fault;

/// The window limits are defined over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Admitted requests of the last 60 s, with their tokens, and the peaks ever seen.
#[derive(Debug, Default)]
pub struct Window {
    log: VecDeque<(Instant, u64)>,
    tokens: u64,
    pub peak_requests: u64,
    pub peak_tokens: u64,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        while let Some((t, tokens)) = self.log.front() {
            if now.duration_since(*t) < WINDOW {
                break;
            }
            self.tokens -= tokens;
            self.log.pop_front();
        }
    }

    fn push(&mut self, now: Instant, tokens: u64) {
        self.log.push_back((now, tokens));
        self.tokens += tokens;
        self.peak_requests = self.peak_requests.max(self.log.len() as u64);
        self.peak_tokens = self.peak_tokens.max(self.tokens);
    }

    /// Time until the oldest entries holding at least `units` (requests when
    /// `by_tokens` is false) leave the window.
    fn frees_in(&self, now: Instant, units: u64, by_tokens: bool) -> Duration {
        let mut freed = 0;
        for (t, tokens) in &self.log {
            freed += if by_tokens { *tokens } else { 1 };
            if freed >= units {
                return (*t + WINDOW).saturating_duration_since(now);
            }
        }
        WINDOW
    }
}

/// Which limit a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

/// The `x-ratelimit-*` figures for one key at one moment.
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

#[derive(Debug, Default)]
struct KeyBook {
    window: Window,
    requests: u64,
    rate_limited: u64,
    payment_required: u64,
    billed: u64,
    in_flight: u64,
}

/// Everything the mock counts.
#[derive(Debug, Default)]
pub struct Ledger {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    prompt_billed: u64,
    completion_billed: u64,
    /// USD reported in `usage.cost`, when the mock reports cost.
    cost_billed: f64,
    /// `GET /v1/models` calls: a client that caches the list calls it once.
    model_list_requests: u64,
    all: Window,
    keys: HashMap<String, KeyBook>,
    faults: BTreeMap<&'static str, u64>,
}

/// How a key is named in stats: its last four characters, never more.
pub fn key_label(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

impl Ledger {
    /// Counts a request to `/v1/*`.
    pub fn count_request(&mut self, key: Option<&str>) {
        self.requests += 1;
        if let Some(key) = key {
            self.keys.entry(key_label(key)).or_default().requests += 1;
        }
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

    pub fn bill(&mut self, key: &str, prompt: u64, completion: u64, cost: Option<f64>) {
        self.cost_billed += cost.unwrap_or(0.0);
        self.prompt_billed += prompt;
        self.completion_billed += completion;
        self.keys.entry(key_label(key)).or_default().billed += prompt + completion;
    }

    /// Tokens billed to a key so far.
    pub fn billed(&self, key: &str) -> u64 {
        self.keys.get(&key_label(key)).map_or(0, |b| b.billed)
    }

    /// Counts a 402 for a key.
    pub fn count_payment_required(&mut self, key: &str) {
        self.count_status(402);
        self.keys
            .entry(key_label(key))
            .or_default()
            .payment_required += 1;
    }

    /// Takes an in-flight slot for a key if fewer than `budget` are taken.
    pub fn enter(&mut self, key: &str, budget: Option<u64>) -> bool {
        let book = self.keys.entry(key_label(key)).or_default();
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

    /// Admits a request of `tokens` for `key` under the limits, recording it in the
    /// windows, or refuses it.
    pub fn admit(
        &mut self,
        key: &str,
        tokens: u64,
        rpm: Option<u64>,
        tpm: Option<u64>,
        now: Instant,
    ) -> Result<RateHeaders, Limited> {
        let book = self.keys.entry(key_label(key)).or_default();
        let window = &mut book.window;
        window.prune(now);
        let headers = |w: &Window| RateHeaders {
            requests: rpm.map(|l| {
                (
                    l,
                    l.saturating_sub(w.log.len() as u64),
                    w.frees_in(now, 1, false),
                )
            }),
            tokens: tpm.map(|l| {
                (
                    l,
                    l.saturating_sub(w.tokens),
                    w.frees_in(now, tokens.max(1), true),
                )
            }),
        };
        let refusal = if rpm.is_some_and(|l| window.log.len() as u64 >= l) {
            let l = rpm.unwrap_or(0);
            Some((
                LimitKind::Requests,
                window.frees_in(now, window.log.len() as u64 + 1 - l, false),
            ))
        } else if tpm.is_some_and(|l| window.tokens + tokens > l) {
            let l = tpm.unwrap_or(0);
            let needed = (window.tokens + tokens).saturating_sub(l);
            let wait = if tokens > l {
                WINDOW
            } else {
                window.frees_in(now, needed, true)
            };
            Some((LimitKind::Tokens, wait))
        } else {
            None
        };
        if let Some((kind, retry_after)) = refusal {
            book.rate_limited += 1;
            return Err(Limited {
                kind,
                retry_after,
                headers: headers(&book.window),
            });
        }
        window.push(now, tokens);
        let out = headers(window);
        self.all.prune(now);
        self.all.push(now, tokens);
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
                        "peak_requests_per_minute": b.window.peak_requests,
                        "peak_tokens_per_minute": b.window.peak_tokens,
                    }),
                )
            })
            .collect();
        let fault = |name| self.faults.get(name).copied().unwrap_or(0);
        json!({
            "requests": self.requests,
            "by_status": by_status,
            "tokens_billed": {
                "prompt": self.prompt_billed,
                "completion": self.completion_billed,
                "total": self.prompt_billed + self.completion_billed,
            },
            "cost_billed": self.cost_billed,
            "model_list_requests": self.model_list_requests,
            "peak_requests_per_minute": self.all.peak_requests,
            "peak_tokens_per_minute": self.all.peak_tokens,
            "by_key": by_key,
            "faults": {"fail": fault("fail"), "hang": fault("hang"), "malformed": fault("malformed"), "reset": fault("reset")},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_limit_and_window_expiry() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.admit("sk-abcd", 10, Some(3), None, t0).is_ok());
        }
        let refused = l
            .admit("sk-abcd", 10, Some(3), None, t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(refused.kind, LimitKind::Requests);
        assert_eq!(refused.retry_after, Duration::from_secs(40));
        assert!(
            l.admit("sk-wxyz", 10, Some(3), None, t0).is_ok(),
            "limits are per key"
        );
        assert!(
            l.admit("sk-abcd", 10, Some(3), None, t0 + WINDOW).is_ok(),
            "the window slid"
        );
        let stats = l.stats();
        assert_eq!(stats["by_key"]["abcd"]["rate_limited"], 1);
        assert_eq!(stats["by_key"]["abcd"]["peak_requests_per_minute"], 3);
        assert_eq!(stats["peak_requests_per_minute"], 4);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_limit() {
        let mut l = Ledger::default();
        let t0 = Instant::now();
        assert!(l.admit("k", 600, None, Some(1000), t0).is_ok());
        let h = l
            .admit("k", 300, None, Some(1000), t0 + Duration::from_secs(1))
            .unwrap();
        assert_eq!(h.tokens.unwrap().1, 100);
        let refused = l
            .admit("k", 200, None, Some(1000), t0 + Duration::from_secs(2))
            .unwrap_err();
        assert_eq!(refused.kind, LimitKind::Tokens);
        assert_eq!(refused.retry_after, Duration::from_secs(58));
        assert_eq!(
            l.admit("k", 5000, None, Some(1000), t0)
                .unwrap_err()
                .retry_after,
            WINDOW
        );
    }

    #[test]
    fn labels_are_the_last_four_characters() {
        assert_eq!(key_label("sk-or-v1-123456"), "3456");
        assert_eq!(key_label("ab"), "ab");
    }
}
