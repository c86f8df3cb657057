//! Watching a streamed reply (server-sent events) go by on its way to the client: the
//! usage it reports and any error it carries, so the ledger counts a streamed request
//! as it counts any other. The bytes themselves pass through untouched.
//!
//! OpenAI and OpenRouter send usage in a last chunk (with empty `choices`); OpenRouter
//! sends `: OPENROUTER PROCESSING` comment lines while it waits, which are not data,
//! and reports a failure mid-stream as a chunk with a top-level `error` and
//! `finish_reason: "error"` (PROTOCOLS.md).

use serde_json::Value;

use crate::accounting::usage::Usage;
use crate::provider::classify::{Classified, Reason, Verdict, classify_inner_error};

/// The longest event line looked into: longer ones (a huge delta) pass through unread.
const MAX_LINE: usize = 1 << 20;

/// What a stream said so far.
#[derive(Debug, Default)]
pub struct SseWatch {
    /// The line being read, when a chunk ended inside it.
    line: Vec<u8>,
    /// Skipping the rest of a line longer than [`MAX_LINE`].
    skipping: bool,
    usage: Option<Usage>,
    /// The first error the stream carried.
    error: Option<Classified>,
    /// Whether `data: [DONE]` (or any data) arrived.
    data_seen: bool,
}

impl SseWatch {
    pub fn new() -> SseWatch {
        SseWatch::default()
    }

    /// Reads the next bytes of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while let Some(end) = memchr::memchr(b'\n', bytes) {
            let (piece, rest) = (&bytes[..end], &bytes[end + 1..]);
            if self.skipping {
                self.skipping = false;
            } else if self.line.is_empty() {
                self.event_line(piece);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(piece);
                self.event_line(&line);
                line.clear();
                self.line = line;
            }
            bytes = rest;
        }
        if self.skipping {
            return;
        }
        if self.line.len() + bytes.len() > MAX_LINE {
            self.line.clear();
            self.skipping = true;
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn event_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // Comments (`: OPENROUTER PROCESSING`), `event:`, `id:` and blank lines carry
        // no data.
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        self.data_seen = true;
        // Most chunks are deltas without either: not parsed at all.
        let worth_reading = memchr::memmem::find(data, b"\"usage\"").is_some()
            || memchr::memmem::find(data, b"\"error\"").is_some()
            || memchr::memmem::find(data, b"\"finish_reason\":\"error\"").is_some();
        if !worth_reading {
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        // The Responses API's events: usage inside `response.completed`, failures as
        // `response.failed` (the error inside its response) or an `error` event.
        let kind = chunk.get("type").and_then(Value::as_str);
        let usage = match kind {
            Some("response.completed" | "response.incomplete" | "response.failed") => chunk
                .get("response")
                .and_then(|r| r.get("usage"))
                .and_then(Usage::from_usage),
            _ => Usage::from_body(&chunk),
        };
        if let Some(usage) = usage {
            self.usage = Some(usage);
        }
        if self.error.is_some() {
            return;
        }
        let responses_error = match kind {
            Some("response.failed") => Some(
                chunk
                    .get("response")
                    .and_then(|r| r.get("error"))
                    .filter(|e| !e.is_null())
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({"message": "the response failed"})),
            ),
            Some("error") => Some(chunk.get("error").cloned().unwrap_or_else(|| chunk.clone())),
            _ => None,
        };
        let failure = if let Some(error) = responses_error {
            Some(classify_inner_error(&error))
        } else if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            Some(classify_inner_error(error))
        } else {
            let finished_in_error =
                chunk
                    .get("choices")
                    .and_then(Value::as_array)
                    .is_some_and(|choices| {
                        choices.iter().any(|c| {
                            c.get("finish_reason").and_then(Value::as_str) == Some("error")
                                || c.get("error").is_some_and(|e| !e.is_null())
                        })
                    });
            finished_in_error.then(|| {
                classified_fail(
                    Reason::ServerError,
                    "the provider ended the stream with finish_reason \"error\"".into(),
                )
            })
        };
        self.error = failure.map(|mut f| {
            // Bytes have reached the client: nothing can be sent again.
            f.verdict = Verdict::Fail;
            f
        });
    }

    /// The verdict of a stream that broke off (`failure`), with the usage seen so far.
    pub fn broken(self, mut failure: Classified) -> Classified {
        failure.usage = self.usage;
        failure
    }

    /// The stream's verdict once it has ended whole: a success with its usage, or the
    /// error it carried (never retried: the client has the bytes). A stream that
    /// ended without a single data line is malformed.
    pub fn finish(mut self) -> Classified {
        if !self.line.is_empty() {
            let last = std::mem::take(&mut self.line);
            self.event_line(&last);
        }
        let mut out = match self.error {
            Some(error) => error,
            None if !self.data_seen => classified_fail(
                Reason::MalformedResponse,
                "the stream ended without any data".into(),
            ),
            None => Classified {
                verdict: Verdict::Success,
                reason: None,
                message: None,
                usage: None,
                retry_after: None,
            },
        };
        out.usage = self.usage;
        out
    }
}

/// A failure of a streamed attempt, for good.
pub fn classified_fail(reason: Reason, message: String) -> Classified {
    Classified {
        verdict: Verdict::Fail,
        reason: Some(reason),
        message: Some(message),
        usage: None,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(chunks: &[&str]) -> Classified {
        let mut w = SseWatch::new();
        for c in chunks {
            w.feed(c.as_bytes());
        }
        w.finish()
    }

    #[test]
    fn usage_in_the_last_chunk_is_found_across_chunk_boundaries() {
        let stream = ": OPENROUTER PROCESSING\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10,\"cost\":0.002}}\n\ndata: [DONE]\n\n";
        for split in [1, 20, 60, 100, stream.len() - 2] {
            let (a, b) = stream.split_at(split);
            let got = watch(&[a, b]);
            assert_eq!(got.verdict, Verdict::Success, "{split}");
            let usage = got.usage.expect("usage");
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (7, 3));
            assert_eq!(usage.cost, Some(0.002));
        }
    }

    #[test]
    fn a_mid_stream_error_is_a_failure_for_good() {
        let got = watch(&[
            "data: {\"choices\":[{\"delta\":{\"content\":\"par\"}}]}\n\n",
            "data: {\"error\":{\"code\":502,\"message\":\"provider went away\"},\"choices\":[{\"finish_reason\":\"error\"}]}\n\n",
        ]);
        assert_eq!(got.verdict, Verdict::Fail);
        assert_eq!(got.reason, Some(Reason::ServerError));
        assert!(got.message.unwrap().contains("provider went away"));
        let got = watch(&["data: {\"choices\":[{\"finish_reason\":\"error\"}]}\n\n"]);
        assert_eq!(got.verdict, Verdict::Fail);
    }

    #[test]
    fn the_responses_api_events_give_usage_and_failures() {
        let got = watch(&[
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":11,\"output_tokens\":4,\"total_tokens\":15}}}\n\n",
        ]);
        assert_eq!(got.verdict, Verdict::Success);
        let usage = got.usage.expect("usage");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11, 4));
        let got = watch(&[
            "data: {\"type\":\"response.failed\",\"response\":{\"error\":{\"code\":\"server_error\",\"message\":\"model crashed\"},\"usage\":{\"input_tokens\":3,\"output_tokens\":0}}}\n\n",
        ]);
        assert_eq!(got.verdict, Verdict::Fail);
        assert!(got.message.unwrap().contains("model crashed"));
        assert_eq!(got.usage.unwrap().prompt_tokens, 3);
        let got = watch(&[
            "data: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"slow down\"}\n\n",
        ]);
        assert_eq!(got.verdict, Verdict::Fail);
    }

    #[test]
    fn an_empty_stream_and_a_huge_line_are_handled() {
        assert_eq!(
            watch(&[": keepalive\n\n"]).reason,
            Some(Reason::MalformedResponse)
        );
        let huge = format!("data: {{\"x\":\"{}\"}}\n", "a".repeat(MAX_LINE + 10));
        let got = watch(&[
            &huge[..MAX_LINE / 2],
            &huge[MAX_LINE / 2..],
            "data: [DONE]\n",
        ]);
        assert_eq!(got.verdict, Verdict::Success);
    }
}
