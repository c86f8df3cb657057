//! Running totals of a run, kept by observing the event stream.
//!
//! The progress bar, the periodic summary line and the final summary all read
//! [`RunStats::snapshot`]; none of them touches the engine.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::accounting::usage::Usage;
use crate::engine::SourceId;
use crate::observe::events::{Event, Observer};

/// Latencies are recorded in microseconds up to an hour, 3 significant digits.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;

#[derive(Debug)]
struct Detail {
    latency_us: Histogram<u64>,
    /// Exact sum of the recorded latencies (the histogram rounds), for Prometheus.
    latency_sum_us: u64,
    usage: Usage,
    attempts_by_outcome: BTreeMap<&'static str, u64>,
    /// attempts → requests that took that many.
    attempts: BTreeMap<u32, u64>,
    retries_by_reason: BTreeMap<&'static str, u64>,
    errors_by_code: BTreeMap<&'static str, u64>,
    keys_retired: Vec<(String, String)>,
    stop_reason: Option<String>,
    /// By the model's name as events carry it, so counting an event allocates nothing.
    models: BTreeMap<Arc<str>, ModelStats>,
}

/// What one model did in a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    /// Requests finished (either way).
    pub requests: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub attempts: u64,
    /// Tokens and cost over every attempt; `usage.cost` is `null` when unknown.
    pub usage: Usage,
    /// Attempts that came back with usage but whose cost is unknown (no `usage.cost`,
    /// no price): why `usage.cost` is `null`.
    #[serde(default)]
    pub cost_unknown_attempts: u64,
    /// USD of the attempts whose cost is known, from the first such attempt on: what a
    /// Prometheus counter can show without ever going back or vanishing when one
    /// attempt's cost turns out unknown (the report says `usage.cost: null` then).
    #[serde(skip)]
    pub known_cost: Option<f64>,
}

/// The name per-model figures are filed under when a request names no model.
pub const NO_MODEL: &str = "(none)";

fn no_model() -> Arc<str> {
    Arc::from(NO_MODEL)
}

/// Counters fed by events.
#[derive(Debug)]
pub struct RunStats {
    started: Instant,
    /// The run's length, once it is over: figures read after the end (a final scrape,
    /// the report) all give the same wall time.
    ended: OnceLock<Duration>,
    total: AtomicU64,
    already_done: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    invalid: AtomicU64,
    in_flight: AtomicU64,
    admitted: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    throttled_us: AtomicU64,
    throttled: AtomicU64,
    abandoned: AtomicU64,
    /// The adaptive concurrency limit, 0 until it first moves.
    concurrency: AtomicU64,
    detail: Mutex<Detail>,
}

/// A consistent-enough copy of the counters at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    /// Requests this run will send.
    pub total: u64,
    /// Requests skipped because a previous run finished them.
    pub already_done: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Invalid input lines recorded in ERRORS (`--skip-invalid`).
    pub invalid: u64,
    pub in_flight: u64,
    /// Requests admitted but not finished: in flight, waiting for a key, or in backoff.
    pub pending: u64,
    pub attempts: u64,
    pub retries: u64,
    /// Attempts answered 429 (or another rate-limit signal).
    pub rate_limited: u64,
    /// Total time requests spent waiting for a rate limit or a key's pause.
    #[serde(serialize_with = "secs")]
    pub throttled: Duration,
    /// Attempts that had to wait for a limit or a pause before sending.
    pub throttled_attempts: u64,
    pub abandoned: u64,
    /// The adaptive concurrency limit, if it ever moved.
    pub concurrency: Option<u64>,
    pub usage: Usage,
    pub latency_ms: Percentiles,
    pub attempts_histogram: BTreeMap<u32, u64>,
    /// Attempts by how they ended (`ok`, `rate_limited`, `server_error`, ...).
    pub attempts_by_outcome: BTreeMap<&'static str, u64>,
    pub retries_by_reason: BTreeMap<&'static str, u64>,
    pub errors_by_code: BTreeMap<&'static str, u64>,
    pub keys_retired: Vec<(String, String)>,
    pub stop_reason: Option<String>,
    pub models: BTreeMap<String, ModelStats>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Request latency percentiles in milliseconds (per request, retries included).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Snapshot {
    /// Requests finished this run (either way).
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed
    }

    /// Requests sent and finished per second over the run so far (invalid lines, filed
    /// at once at the start, would only inflate it).
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.finished().saturating_sub(self.invalid) as f64 / secs
        } else {
            0.0
        }
    }

    /// Estimated time left at the average rate so far.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.throughput();
        let left = self.total.saturating_sub(self.finished());
        // A rate so small that the estimate overflows a `Duration` has no estimate.
        (rate > 0.0).then(|| Duration::try_from_secs_f64(left as f64 / rate).ok())?
    }
}

impl Default for RunStats {
    fn default() -> Self {
        RunStats::new()
    }
}

impl RunStats {
    pub fn new() -> RunStats {
        RunStats {
            started: Instant::now(),
            ended: OnceLock::new(),
            total: AtomicU64::new(0),
            already_done: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            throttled_us: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            concurrency: AtomicU64::new(0),
            detail: Mutex::new(Detail {
                latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                    .expect("static histogram bounds are valid"),
                latency_sum_us: 0,
                usage: Usage::default(),
                attempts_by_outcome: BTreeMap::new(),
                attempts: BTreeMap::new(),
                retries_by_reason: BTreeMap::new(),
                errors_by_code: BTreeMap::new(),
                keys_retired: Vec::new(),
                stop_reason: None,
                models: BTreeMap::new(),
            }),
        }
    }

    fn detail(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The run is over: its wall time stops here.
    pub fn end(&self) {
        let _ = self.ended.set(self.started.elapsed());
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let d = self.detail();
        let pct = |q: f64| d.latency_us.value_at_quantile(q) as f64 / 1000.0;
        // `failed` counts invalid lines too, but the two counters are bumped one after
        // the other: a reader between the two must not see more invalid than failed.
        let invalid = load(&self.invalid);
        let failed = load(&self.failed).max(invalid);
        let finished = load(&self.succeeded) + failed - invalid;
        Snapshot {
            elapsed: self
                .ended
                .get()
                .copied()
                .unwrap_or_else(|| self.started.elapsed()),
            total: load(&self.total),
            already_done: load(&self.already_done),
            succeeded: load(&self.succeeded),
            failed,
            invalid,
            in_flight: load(&self.in_flight),
            pending: load(&self.admitted).saturating_sub(finished + load(&self.abandoned)),
            attempts: load(&self.attempts),
            retries: load(&self.retries),
            rate_limited: load(&self.rate_limited),
            throttled: Duration::from_micros(load(&self.throttled_us)),
            throttled_attempts: load(&self.throttled),
            abandoned: load(&self.abandoned),
            concurrency: Some(load(&self.concurrency)).filter(|c| *c > 0),
            usage: d.usage,
            latency_ms: if d.latency_us.is_empty() {
                Percentiles::default()
            } else {
                Percentiles {
                    p50: pct(0.5),
                    p95: pct(0.95),
                    p99: pct(0.99),
                    max: d.latency_us.max() as f64 / 1000.0,
                }
            },
            attempts_histogram: d.attempts.clone(),
            attempts_by_outcome: d.attempts_by_outcome.clone(),
            retries_by_reason: d.retries_by_reason.clone(),
            errors_by_code: d.errors_by_code.clone(),
            keys_retired: d.keys_retired.clone(),
            stop_reason: d.stop_reason.clone(),
            models: d
                .models
                .iter()
                .map(|(model, stats)| (model.to_string(), stats.clone()))
                .collect(),
        }
    }
}

/// Request latencies counted into fixed buckets (Prometheus histogram shape).
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyBuckets {
    /// Requests that took at most each bound (cumulative), bounds in seconds.
    pub cumulative: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl RunStats {
    /// Request latencies bucketed at `bounds` (seconds, ascending). Counts come from
    /// the HDR histogram, so a bucket edge is exact to its 3 significant digits.
    pub fn latency_buckets(&self, bounds: &[f64]) -> LatencyBuckets {
        let d = self.detail();
        let cumulative = bounds
            .iter()
            .map(|&b| {
                let us = (b * 1e6) as u64;
                (b, d.latency_us.count_between(0, us))
            })
            .collect();
        LatencyBuckets {
            cumulative,
            count: d.latency_us.len(),
            sum_seconds: d.latency_sum_us as f64 / 1e6,
        }
    }
}

impl Observer for RunStats {
    fn on_event(&self, _source: Option<SourceId>, event: &Event) {
        let add = |a: &AtomicU64, n: u64| {
            a.fetch_add(n, Ordering::Relaxed);
        };
        match event {
            Event::RunStarted {
                total,
                already_done,
                ..
            } => {
                self.total.store(*total, Ordering::Relaxed);
                self.already_done.store(*already_done, Ordering::Relaxed);
            }
            Event::InputRejected { .. } => {
                add(&self.invalid, 1);
                add(&self.failed, 1);
                *self
                    .detail()
                    .errors_by_code
                    .entry("invalid_input")
                    .or_default() += 1;
            }
            Event::Admitted { .. } => add(&self.admitted, 1),
            Event::Throttled { wait, .. } => {
                add(&self.throttled, 1);
                add(
                    &self.throttled_us,
                    u64::try_from(wait.as_micros()).unwrap_or(u64::MAX),
                );
            }
            Event::AttemptStarted { .. } => {
                add(&self.attempts, 1);
                add(&self.in_flight, 1);
            }
            Event::AttemptFinished {
                outcome,
                usage,
                model,
                ..
            } => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                if *outcome == "rate_limited" {
                    add(&self.rate_limited, 1);
                }
                let mut d = self.detail();
                *d.attempts_by_outcome.entry(outcome).or_default() += 1;
                let per_model = d
                    .models
                    .entry(model.clone().unwrap_or_else(no_model))
                    .or_default();
                per_model.attempts += 1;
                if let Some(u) = usage {
                    per_model.usage.add(u);
                    // An empty usage bills nothing, so it cannot make a cost unknown.
                    if u.cost.is_none() && !u.is_empty() {
                        per_model.cost_unknown_attempts += 1;
                    }
                    if let Some(cost) = u.cost {
                        *per_model.known_cost.get_or_insert(0.0) += cost;
                    }
                    d.usage.add(u);
                }
            }
            Event::Retrying { reason, .. } => {
                add(&self.retries, 1);
                *self.detail().retries_by_reason.entry(reason).or_default() += 1;
            }
            Event::KeyRetired { key, reason, .. } => {
                self.detail()
                    .keys_retired
                    .push((key.to_string(), reason.to_string()));
            }
            Event::RequestFinished {
                ok,
                attempts,
                error,
                latency,
                model,
                ..
            } => {
                add(if *ok { &self.succeeded } else { &self.failed }, 1);
                let mut d = self.detail();
                let per_model = d
                    .models
                    .entry(model.clone().unwrap_or_else(no_model))
                    .or_default();
                per_model.requests += 1;
                if *ok {
                    per_model.succeeded += 1;
                } else {
                    per_model.failed += 1;
                }
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .clamp(1, LATENCY_MAX_US);
                // Cannot fail: the value is clamped into the histogram's bounds.
                let _ = d.latency_us.record(us);
                d.latency_sum_us = d.latency_sum_us.saturating_add(us);
                *d.attempts.entry(*attempts).or_default() += 1;
                if let Some(code) = error {
                    *d.errors_by_code.entry(code).or_default() += 1;
                }
            }
            Event::RequestAbandoned { .. } | Event::RequestLost { .. } => add(&self.abandoned, 1),
            Event::Stopping { reason } => {
                self.detail()
                    .stop_reason
                    .get_or_insert_with(|| reason.clone());
            }
            Event::ConcurrencyChanged { limit } => {
                self.concurrency.store(*limit as u64, Ordering::Relaxed);
            }
            Event::KeyPaused { .. }
            | Event::SourceOpened { .. }
            | Event::CostUnknown { .. }
            | Event::KeyInfo { .. }
            | Event::ModelPrices { .. }
            | Event::LimitLearned { .. }
            | Event::RetryBudgetExhausted { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_follow_events() {
        let s = RunStats::new();
        let id: Arc<str> = Arc::from("a");
        let key: Arc<str> = Arc::from("key#1");
        s.on_event(
            None,
            &Event::RunStarted {
                total: 2,
                already_done: 1,
                keys: 1,
            },
        );
        s.on_event(
            None,
            &Event::Admitted {
                custom_id: id.clone(),
            },
        );
        s.on_event(
            None,
            &Event::AttemptStarted {
                custom_id: id.clone(),
                attempt: 1,
                key: key.clone(),
            },
        );
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
            ..Usage::default()
        };
        s.on_event(
            None,
            &Event::AttemptFinished {
                custom_id: id.clone(),
                attempt: 1,
                key: key.clone(),
                status: Some(429),
                outcome: "rate_limited",
                latency: Duration::from_millis(5),
                usage: Some(usage),
                model: Some(Arc::from("m")),
            },
        );
        s.on_event(
            None,
            &Event::Retrying {
                custom_id: id.clone(),
                attempt: 1,
                reason: "rate_limited",
                delay: Duration::from_secs(1),
            },
        );
        s.on_event(
            None,
            &Event::RequestFinished {
                custom_id: id,
                ok: true,
                attempts: 2,
                error: None,
                latency: Duration::from_millis(40),
                usage,
                model: Some(Arc::from("m")),
            },
        );
        let snap = s.snapshot();
        assert_eq!(
            (snap.total, snap.already_done, snap.succeeded, snap.failed),
            (2, 1, 1, 0)
        );
        assert_eq!(
            (
                snap.attempts,
                snap.retries,
                snap.rate_limited,
                snap.in_flight
            ),
            (1, 1, 1, 0)
        );
        assert_eq!(snap.usage.total_tokens, 5);
        assert_eq!(snap.attempts_histogram.get(&2), Some(&1));
        assert!((snap.latency_ms.p50 - 40.0).abs() < 0.5);
        assert_eq!(snap.pending, 0);
        let m = &snap.models["m"];
        assert_eq!(
            (m.requests, m.succeeded, m.attempts, m.usage.total_tokens),
            (1, 1, 1, 5)
        );
    }
}
