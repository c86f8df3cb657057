//! Where finished requests go, and what an earlier run left there.
//!
//! The engine hands each finished request to a [`Store`] as an [`Outcome`]: what the
//! request was, its final response or error, and what it cost. How that is kept is the
//! store's business. [`JsonlStore`] is `volley run`'s: RESULTS and ERRORS as JSON lines
//! (encoded in [`mod@line`], appended by [`sink`]'s writer thread, read back to resume by
//! [`checkpoint`], rewritten safely by [`replace`]).

pub mod appender;
pub mod checkpoint;
pub mod claim;
pub mod line;
mod recorded;
pub mod replace;
pub mod sink;
pub mod sort;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::accounting::usage::Usage;
use crate::input::job::Fingerprint;
use crate::provider::classify::Reason;

pub use line::unix_now;
pub use replace::Replacement;
pub use sink::{Destination, OutputFiles, Sink, SinkError, SinkHandle, Written};

/// What became of one request: everything a store keeps about it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub custom_id: Arc<str>,
    /// The request's fingerprint; `None` for an input line that was no request.
    pub fingerprint: Option<Fingerprint>,
    /// The model the request asked for.
    pub model: Option<Arc<str>>,
    /// The last HTTP response, if an attempt got one.
    pub response: Option<Response>,
    /// Why it failed for good; `None` for a success.
    pub error: Option<Failure>,
    pub attempts: u32,
    /// From the first send to the end.
    pub latency: Duration,
    /// Summed over every attempt that reported usage.
    pub usage: Usage,
    /// `key#N` of the key that made the last attempt, never the key itself.
    pub key: Option<String>,
    /// When it finished, Unix seconds.
    pub finished_at: f64,
    /// For an input line that could not be sent: its line number.
    pub input_line: Option<u64>,
}

impl Outcome {
    /// Calls `f` with this outcome as an output line (`volley run`'s shape) named `id`
    /// and `custom_id`: the reply's body and request id are borrowed from it where they
    /// can be, so the line costs no copy of the body.
    pub fn with_output_line<R>(
        &self,
        id: &str,
        custom_id: &str,
        f: impl FnOnce(&line::OutputLine<'_>) -> R,
    ) -> R {
        let body = self.response.as_ref().map(|r| r.body_as_json());
        let request_id = match (&self.response, &body) {
            (Some(r), Some(body)) => r.request_id_or(body),
            _ => Cow::Borrowed(""),
        };
        f(&self.output_line(id, custom_id, body.as_deref(), &request_id))
    }

    fn output_line<'a>(
        &'a self,
        id: &'a str,
        custom_id: &'a str,
        body: Option<&'a RawValue>,
        request_id: &'a str,
    ) -> line::OutputLine<'a> {
        line::OutputLine {
            id,
            custom_id,
            response: self
                .response
                .as_ref()
                .zip(body)
                .map(|(r, body)| line::ResponsePart {
                    status_code: r.status,
                    request_id,
                    body,
                }),
            error: self.error.as_ref().map(|f| line::ErrorPart {
                code: f.reason.as_str(),
                message: &f.message,
            }),
            volley: line::VolleyPart {
                attempts: self.attempts,
                latency_ms: self.latency.as_secs_f64() * 1000.0,
                usage: self.usage,
                cost: self.usage.cost,
                key: self.key.as_deref(),
                model: self.model.as_deref(),
                finished_at: self.finished_at,
                fingerprint: self.fingerprint,
            },
        }
    }
}

/// An HTTP response as the provider sent it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The `x-request-id` header, when the provider sent one.
    pub request_id: Option<String>,
    /// The `content-type` header, when the provider sent one (a proxy passes it on).
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Why a request failed for good.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

/// Keeps finished requests.
pub trait Store: Send + Sync {
    /// Keeps one finished request. False when the store can keep no more (a disk
    /// error, reported when it closes): the engine then stops, since sending more would
    /// pay for results that cannot be kept.
    fn record(&self, outcome: &Outcome) -> bool;
}

/// `volley run`'s store: successes to RESULTS, failures to ERRORS, one JSON line each.
pub struct JsonlStore {
    writer: SinkHandle,
    /// Distinguishes the line ids of this run from those of earlier runs.
    run_id: String,
    next_id: AtomicU64,
}

impl JsonlStore {
    /// A store appending through `writer` (see [`Sink::handle`]).
    pub fn new(writer: SinkHandle) -> JsonlStore {
        let run_id = format!(
            "{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        JsonlStore {
            writer,
            run_id,
            next_id: AtomicU64::new(0),
        }
    }

    /// The line for `outcome`, newline included.
    fn encode(&self, outcome: &Outcome) -> Vec<u8> {
        let id = match outcome.input_line {
            // Resume finds an input record's line from its id.
            Some(line) => format!("vol-input-{line}"),
            None => format!(
                "vol-{}-{}",
                self.run_id,
                self.next_id.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let body_len = outcome.response.as_ref().map_or(0, |r| r.body.len());
        outcome.with_output_line(&id, &outcome.custom_id, |line| line.to_line(body_len))
    }
}

impl Store for JsonlStore {
    fn record(&self, outcome: &Outcome) -> bool {
        let dest = if outcome.error.is_some() {
            Destination::Errors
        } else {
            Destination::Results
        };
        self.writer.write(dest, self.encode(outcome))
    }
}

impl Response {
    /// The reply body as JSON to embed in an output line: the provider's bytes as they
    /// came when they are JSON on one line (borrowed, not copied), else re-encoded (a
    /// multi-line body would break JSONL), else the text as a JSON string.
    pub fn body_as_json(&self) -> Cow<'_, RawValue> {
        let body = &self.body[..];
        if memchr::memchr2(b'\n', b'\r', body).is_none()
            && let Ok(raw) = serde_json::from_slice::<&RawValue>(body)
        {
            return Cow::Borrowed(raw);
        }
        let reencoded = serde_json::from_slice::<serde_json::Value>(body)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(body).into_owned()).to_string()
            });
        Cow::Owned(RawValue::from_string(reencoded).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    /// The provider's request id: the `x-request-id` header, else the `id` of `body`
    /// (this reply's body as [`Response::body_as_json`] gives it), else empty.
    pub fn request_id_or<'a>(&'a self, body: &RawValue) -> Cow<'a, str> {
        #[derive(serde::Deserialize)]
        struct WithId {
            id: Option<String>,
        }
        match &self.request_id {
            Some(id) => Cow::Borrowed(id),
            None => Cow::Owned(
                serde_json::from_str::<WithId>(body.get())
                    .ok()
                    .and_then(|b| b.id)
                    .unwrap_or_default(),
            ),
        }
    }
}
