//! The one event stream of a run.
//!
//! The engine emits an [`Event`] at every step; everything that shows or records a run
//! (progress bar, periodic summary, `--events FILE`, the final report, later metrics and
//! the dashboard) is an [`Observer`] of this stream. Observers are called synchronously
//! on the engine's tasks, so they must be cheap: count, store, or hand off to a thread.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::accounting::usage::Usage;
use crate::engine::source::SourceId;
use crate::store::appender::{AppendHandle, Appender};

fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn serialize_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((ms(d) * 1000.0).round() / 1000.0)
}

/// Something that happened in a run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A source opened on the engine (a `volley run` file, a gateway batch, the proxy,
    /// an experiment stage); its later events carry its id.
    SourceOpened { name: Arc<str>, priority: u8 },
    /// The run begins: `total` requests will be sent, `already_done` were skipped.
    RunStarted {
        total: u64,
        already_done: u64,
        keys: usize,
    },
    /// What the provider said about a key before the run (`None`: it could not be read).
    KeyInfo {
        key: Arc<str>,
        info: Option<crate::provider::openrouter::KeyInfo>,
    },
    /// The provider's model prices were loaded (`None`: neither the provider nor a
    /// cached copy had any).
    ModelPrices {
        models: Option<usize>,
        source: Option<crate::provider::openrouter::PricesSource>,
    },
    /// A line was invalid and recorded in ERRORS (`--skip-invalid`).
    InputRejected {
        custom_id: Arc<str>,
        line: u64,
        message: String,
    },
    /// A request entered the engine.
    Admitted { custom_id: Arc<str> },
    /// An attempt waited for its key's rate limit or pause before sending; emitted once
    /// the wait is over (or cut short by a halt), with the time it took.
    Throttled {
        custom_id: Arc<str>,
        key: Arc<str>,
        #[serde(rename = "wait_ms", serialize_with = "serialize_ms")]
        wait: Duration,
    },
    /// An attempt was sent.
    AttemptStarted {
        custom_id: Arc<str>,
        attempt: u32,
        key: Arc<str>,
    },
    /// An attempt ended: `outcome` is `success` or the reason it failed.
    AttemptFinished {
        custom_id: Arc<str>,
        attempt: u32,
        key: Arc<str>,
        status: Option<u16>,
        outcome: &'static str,
        #[serde(rename = "latency_ms", serialize_with = "serialize_ms")]
        latency: Duration,
        usage: Option<Usage>,
        model: Option<Arc<str>>,
    },
    /// An attempt's cost is unknown (no `usage.cost`, no price) while `--max-cost` is
    /// set: the cap counts only known costs. Reported once.
    CostUnknown { model: Option<Arc<str>> },
    /// A request will be tried again after `delay`.
    Retrying {
        custom_id: Arc<str>,
        attempt: u32,
        reason: &'static str,
        #[serde(rename = "delay_ms", serialize_with = "serialize_ms")]
        delay: Duration,
    },
    /// A key stops sending for `pause` after a rate limit (reported once per pause).
    KeyPaused {
        key: Arc<str>,
        #[serde(rename = "pause_ms", serialize_with = "serialize_ms")]
        pause: Duration,
    },
    /// A key's per-minute limits, as learned from the provider's headers (never above
    /// a configured `--rpm`/`--tpm`), changed.
    LimitLearned {
        key: Arc<str>,
        requests_per_minute: Option<u64>,
        tokens_per_minute: Option<u64>,
    },
    /// Adaptive concurrency moved: `limit` attempts may now be in flight.
    ConcurrencyChanged { limit: usize },
    /// A key left the pool for the rest of the run.
    KeyRetired {
        key: Arc<str>,
        reason: &'static str,
        message: String,
    },
    /// The run-wide retry budget is spent: errors are no longer retried.
    RetryBudgetExhausted { spent: u64 },
    /// A request is done for good: in RESULTS (`ok`) or in ERRORS.
    RequestFinished {
        custom_id: Arc<str>,
        ok: bool,
        attempts: u32,
        error: Option<&'static str>,
        #[serde(rename = "latency_ms", serialize_with = "serialize_ms")]
        latency: Duration,
        usage: Usage,
        model: Option<Arc<str>>,
    },
    /// A request was left unfinished because the run is stopping; a re-run sends it.
    RequestAbandoned { custom_id: Arc<str> },
    /// A request's task failed inside volley (a bug): it is left unrecorded, so a re-run
    /// sends it, and the run ends as stopped early rather than complete.
    RequestLost {
        custom_id: Arc<str>,
        message: String,
    },
    /// The run stops admitting requests early.
    Stopping { reason: String },
}

/// Reads the event stream. `source` is the source an event belongs to; `None` for
/// what belongs to the engine as a whole (a key paused, a limit learned).
pub trait Observer: Send + Sync {
    fn on_event(&self, source: Option<SourceId>, event: &Event);
}

/// Hands every event to every observer.
#[derive(Clone, Default)]
pub struct EventBus {
    observers: Arc<Vec<Arc<dyn Observer>>>,
}

impl EventBus {
    pub fn new(observers: Vec<Arc<dyn Observer>>) -> EventBus {
        EventBus {
            observers: Arc::new(observers),
        }
    }

    /// Emits an event of the engine as a whole.
    pub fn emit(&self, event: Event) {
        for o in self.observers.iter() {
            o.on_event(None, &event);
        }
    }

    /// Emits an event of one source.
    pub fn emit_from(&self, source: SourceId, event: Event) {
        for o in self.observers.iter() {
            o.on_event(Some(source), &event);
        }
    }
}

/// Writes every event as a JSON line (`--events FILE`) on its own thread, so the
/// engine's tasks never wait on the disk.
pub struct EventFile {
    writer: std::sync::Mutex<Option<Appender>>,
    handle: std::sync::Mutex<Option<AppendHandle>>,
    started: Instant,
}

impl EventFile {
    pub fn create(path: &Path) -> std::io::Result<EventFile> {
        let file = std::fs::File::create(path)?;
        let writer = Appender::start("volley-events", vec![(path.to_path_buf(), file)])?;
        Ok(EventFile {
            handle: std::sync::Mutex::new(Some(writer.handle())),
            writer: std::sync::Mutex::new(Some(writer)),
            started: Instant::now(),
        })
    }

    /// Flushes and closes the file.
    pub fn finish(&self) -> std::io::Result<()> {
        drop(self.handle.lock().unwrap_or_else(|p| p.into_inner()).take());
        match self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(mut writer) => writer.finish().map(|_| ()).map_err(|e| e.source),
            None => Ok(()),
        }
    }
}

#[derive(Serialize)]
struct Stamped<'a> {
    /// Seconds since the run started.
    t: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<SourceId>,
    #[serde(flatten)]
    event: &'a Event,
}

impl Observer for EventFile {
    fn on_event(&self, source: Option<SourceId>, event: &Event) {
        let stamped = Stamped {
            t: self.started.elapsed().as_secs_f64(),
            source,
            event,
        };
        let Ok(mut line) = serde_json::to_vec(&stamped) else {
            return;
        };
        line.push(b'\n');
        if let Some(handle) = self
            .handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            // Once the file is finished, late events are dropped.
            handle.write(0, line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_a_tag_and_milliseconds() {
        let e = Event::Retrying {
            custom_id: Arc::from("a"),
            attempt: 2,
            reason: "server_error",
            delay: Duration::from_millis(1500),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "retrying");
        assert_eq!(v["delay_ms"], 1500.0);
    }

    #[tokio::test]
    async fn event_file_writes_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let file = EventFile::create(&path).unwrap();
        let bus = EventBus::new(vec![]);
        bus.emit(Event::Stopping { reason: "x".into() });
        file.on_event(
            Some(SourceId(1)),
            &Event::Admitted {
                custom_id: Arc::from("a"),
            },
        );
        file.on_event(
            None,
            &Event::Stopping {
                reason: "done".into(),
            },
        );
        file.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["event"], "admitted");
        assert_eq!(lines[0]["source"], 1);
        assert!(lines[1].get("source").is_none());
        assert!(lines[1]["t"].as_f64().unwrap() >= 0.0);
    }
}
