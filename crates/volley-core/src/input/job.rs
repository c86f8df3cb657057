//! One request of a batch, ready to send.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::input::ids::StableHash;
use crate::provider::tokens;

/// A request parsed from one input line. Cheap to clone: the body is shared.
#[derive(Debug, Clone)]
pub struct Job {
    /// The caller's identifier, unique in the input; results are keyed by it.
    pub custom_id: Arc<str>,
    /// 1-based line number in the input file, for error messages.
    pub line: u64,
    /// Path relative to the base URL, e.g. `/chat/completions` for a line whose url is
    /// `/v1/chat/completions`.
    pub path: Arc<str>,
    /// The JSON body exactly as it will be sent, serialized once and reused by retries.
    pub body: Bytes,
    /// The model the body names, for per-model accounting and per key × model lanes.
    pub model: Option<Arc<str>>,
    /// Which of the engine's upstreams it goes to (0: the first).
    pub upstream: usize,
    /// What the request is (method, path and body), so a later run can tell whether
    /// the request a finished line answered is still the one in the input.
    pub fingerprint: Fingerprint,
    /// The token estimate, computed on first use: tokenizing costs CPU, and only runs
    /// that meet a tokens-per-minute limit need it.
    pub tokens: Arc<OnceLock<u64>>,
    /// A client waiting on it (the gateway's proxy), `None` for a batch line: the
    /// request then must start in time, is dropped when its ticket is, and may stream.
    pub waiting: Option<Arc<crate::engine::waiting::Waiting>>,
}

impl Job {
    /// Tokens this request is expected to consume (prompt counted with a tokenizer,
    /// plus `max_tokens`), charged against a tokens-per-minute limit before sending and
    /// corrected by the real usage afterwards.
    pub fn estimated_tokens(&self) -> u64 {
        *self
            .tokens
            .get_or_init(|| tokens::estimate(&self.body, self.model.as_deref()))
    }
}

/// A request's identity: a stable 64-bit hash of `POST`, its path and its body exactly
/// as sent (after `--model` and other defaults are filled in), but not the base URL,
/// so pointing a batch at another provider is not a change. Written into every output
/// line as 16 hex digits; never zero, so zero can stand for "none recorded".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// The fingerprint of a request whose serialized body is `body`.
    pub fn of(path: &str, body: &[u8]) -> Fingerprint {
        let mut h = Fingerprint::start(path);
        h.update(body);
        Fingerprint::nonzero(h.finish())
    }

    /// The same fingerprint as [`Fingerprint::of`] for the body `value` serializes to,
    /// computed without building the bytes (the validation pass reads every line).
    pub fn of_value(path: &str, value: &impl serde::Serialize) -> Fingerprint {
        let mut h = Fingerprint::start(path);
        // Writing into a hash cannot fail, and a map of JSON values always serializes.
        let _ = serde_json::to_writer(&mut h, value);
        Fingerprint::nonzero(h.finish())
    }

    fn start(path: &str) -> StableHash {
        let mut h = StableHash::new();
        h.update(b"POST ");
        h.update(path.as_bytes());
        h.update(b"\n");
        h
    }

    fn nonzero(h: u64) -> Fingerprint {
        Fingerprint(h.max(1))
    }

    /// Reads the form [`Fingerprint::to_hex`] writes.
    pub fn parse(hex: &str) -> Option<Fingerprint> {
        if hex.len() != 16 {
            return None;
        }
        u64::from_str_radix(hex, 16)
            .ok()
            .filter(|h| *h != 0)
            .map(Fingerprint)
    }

    /// 16 hex digits, as output lines carry it (the same as `Display`).
    pub fn to_hex(self) -> String {
        self.to_string()
    }

    /// The raw value, for compact maps.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The inverse of [`Fingerprint::get`]; `None` for zero.
    pub fn from_raw(raw: u64) -> Option<Fingerprint> {
        (raw != 0).then_some(Fingerprint(raw))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_of_value_matches_bytes_and_round_trips() {
        let body =
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let bytes = serde_json::to_vec(&body).unwrap();
        let a = Fingerprint::of("/chat/completions", &bytes);
        assert_eq!(a, Fingerprint::of_value("/chat/completions", &body));
        assert_ne!(a, Fingerprint::of("/embeddings", &bytes));
        assert_eq!(Fingerprint::parse(&a.to_hex()), Some(a));
        assert_eq!(Fingerprint::parse("0000000000000000"), None);
        assert_eq!(Fingerprint::parse("xyz"), None);
    }
}
