//! The latest failed requests, for the dashboard's errors table: an [`Observer`] of the
//! engine's events that keeps a short ring, so the page can say *why* requests fail
//! without anyone reading logs.
//!
//! It keeps only what the events carry: the reason code volley classified, the model,
//! the attempts and the time taken. No reply body or header is kept, so no key or
//! token can reach the page through it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use volley_core::engine::SourceId;
use volley_core::observe::events::{Event, Observer};
use volley_core::observe::sources::StatsBySource;

/// Failures kept: the page shows the latest few, not a log.
pub const KEPT: usize = 20;

/// A custom_id is the client's text: only its start is kept.
const MAX_CUSTOM_ID: usize = 80;

/// One failed request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    /// Unix milliseconds.
    pub at: i64,
    /// Its source's name (a batch id, `proxy:{tenant}`), when it had one.
    pub source: Option<Arc<str>>,
    pub custom_id: String,
    /// volley's reason code (`rate_limited`, `server_error`, `invalid_request`, …).
    pub code: &'static str,
    pub model: Option<Arc<str>>,
    pub message: String,
}

/// The ring of the latest failures.
#[derive(Debug)]
pub struct Failures {
    /// Names a failure's source: the source is still open when its requests finish.
    stats: Arc<StatsBySource>,
    ring: Mutex<VecDeque<Failure>>,
}

impl Failures {
    /// `stats` must observe the same engine, ahead of this observer: a source is
    /// named from it.
    pub fn new(stats: Arc<StatsBySource>) -> Failures {
        Failures {
            stats,
            ring: Mutex::new(VecDeque::with_capacity(KEPT)),
        }
    }

    /// The latest failures, newest first.
    pub fn latest(&self) -> Vec<Failure> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }

    fn push(&self, failure: Failure) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(failure);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Observer for Failures {
    fn on_event(&self, source: Option<SourceId>, event: &Event) {
        let Event::RequestFinished {
            custom_id,
            ok: false,
            attempts,
            error,
            latency,
            model,
            ..
        } = event
        else {
            return;
        };
        let code = error.unwrap_or("failed");
        let plural = if *attempts == 1 { "" } else { "s" };
        self.push(Failure {
            at: now_ms(),
            source: source
                .and_then(|id| self.stats.source(id))
                .map(|s| s.name.clone()),
            custom_id: custom_id.chars().take(MAX_CUSTOM_ID).collect(),
            code,
            model: model.clone(),
            message: format!(
                "{code} after {attempts} attempt{plural} in {:.1} s",
                latency.as_secs_f64()
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use volley_core::accounting::usage::Usage;

    fn finished(id: &str, ok: bool) -> Event {
        Event::RequestFinished {
            custom_id: Arc::from(id),
            ok,
            attempts: 3,
            error: (!ok).then_some("server_error"),
            latency: Duration::from_millis(1500),
            usage: Usage::default(),
            model: Some(Arc::from("m")),
        }
    }

    #[test]
    fn keeps_the_latest_failures_newest_first_with_their_source() {
        let stats = Arc::new(StatsBySource::new());
        let failures = Failures::new(stats.clone());
        let source = SourceId(7);
        let opened = Event::SourceOpened {
            name: Arc::from("batch_x"),
            priority: 0,
        };
        stats.on_event(Some(source), &opened);
        failures.on_event(Some(source), &finished("ok", true));
        for i in 0..KEPT + 5 {
            failures.on_event(Some(source), &finished(&format!("c{i}"), false));
        }
        let latest = failures.latest();
        assert_eq!(latest.len(), KEPT);
        assert_eq!(latest[0].custom_id, format!("c{}", KEPT + 4));
        assert_eq!(latest[KEPT - 1].custom_id, "c5");
        assert_eq!(latest[0].source.as_deref(), Some("batch_x"));
        assert_eq!(latest[0].code, "server_error");
        assert_eq!(latest[0].message, "server_error after 3 attempts in 1.5 s");
        failures.on_event(None, &finished(&"x".repeat(10_000), false));
        let long = &failures.latest()[0];
        assert_eq!((long.custom_id.len(), long.source.is_none()), (80, true));
    }
}
