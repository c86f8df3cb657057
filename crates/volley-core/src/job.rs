//! One request of a batch, ready to send.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::tokens;

/// A request parsed from one input line. Cheap to clone: the body is shared.
#[derive(Debug, Clone, PartialEq)]
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
    /// The model the body names, for per-model accounting.
    pub model: Option<Arc<str>>,
    /// The token estimate, computed on first use: tokenizing costs CPU, and only runs
    /// that meet a tokens-per-minute limit need it.
    pub tokens: Arc<OnceLock<u64>>,
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
