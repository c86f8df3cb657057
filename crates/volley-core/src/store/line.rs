//! The encoding of RESULTS and ERRORS lines: the OpenAI Batch output shape plus volley's
//! own `volley` block (SPEC §2 "Output lines").

use serde::Serialize;
use serde_json::value::RawValue;

use crate::accounting::usage::Usage;
use crate::input::job::Fingerprint;

/// The `response` part of an output line.
#[derive(Debug, Serialize)]
pub struct ResponsePart<'a> {
    pub status_code: u16,
    pub request_id: &'a str,
    pub body: &'a RawValue,
}

/// The `error` part of an output line.
#[derive(Debug, Serialize)]
pub struct ErrorPart<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

/// volley's own block: what the request cost and how it went.
#[derive(Debug, Serialize)]
pub struct VolleyPart<'a> {
    pub attempts: u32,
    pub latency_ms: f64,
    /// Summed over every attempt that reported usage.
    pub usage: Usage,
    /// USD, summed over attempts; `null` when unknown.
    pub cost: Option<f64>,
    /// `key#N` of the key that made the last attempt, never the key itself.
    pub key: Option<&'a str>,
    /// The model the request asked for (the provider's `body.model` says which served).
    pub model: Option<&'a str>,
    /// When the request finished, Unix seconds: `volley report` plots completions over
    /// time from it.
    pub finished_at: f64,
    /// The request's [`Fingerprint`] (16 hex digits): resume compares it with the
    /// input's to tell a finished request from one that has changed since. `None` for
    /// an invalid input line, which has no request.
    #[serde(serialize_with = "hex_fingerprint")]
    pub fingerprint: Option<Fingerprint>,
}

fn hex_fingerprint<S: serde::Serializer>(
    fp: &Option<Fingerprint>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match fp {
        // Written straight from `Display`: no string per line.
        Some(fp) => s.collect_str(fp),
        None => s.serialize_none(),
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Room for everything in a line but the reply body (ids, error, the `volley` block),
/// so that a line is written into one allocation.
const LINE_OVERHEAD: usize = 512;

/// One line of RESULTS or ERRORS, in the OpenAI Batch output shape plus `volley`.
#[derive(Debug, Serialize)]
pub struct OutputLine<'a> {
    pub id: &'a str,
    pub custom_id: &'a str,
    pub response: Option<ResponsePart<'a>>,
    pub error: Option<ErrorPart<'a>>,
    pub volley: VolleyPart<'a>,
}

impl OutputLine<'_> {
    /// The line as bytes, newline included; `body_len`, the reply body's length, sizes
    /// the buffer once.
    pub fn to_line(&self, body_len: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(body_len + LINE_OVERHEAD);
        // Serializing plain structs with string keys into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut bytes, self);
        bytes.push(b'\n');
        bytes
    }
}
