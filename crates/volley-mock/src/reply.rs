//! What the mock answers: deterministic replies with real token counts, OpenAI-shaped
//! errors, and Go-style durations for the rate-limit headers.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{Value, json};

use crate::grading::Part;

/// Characters per token in the mock's tokenizer: the usual rule of thumb for English.
const CHARS_PER_TOKEN: usize = 4;
/// Tokens of framing per message, and per reply, as OpenAI's chat format adds.
const TOKENS_PER_MESSAGE: u64 = 4;
const TOKENS_PER_REPLY: u64 = 3;
/// How much of the last message the reply echoes.
const ECHO_CHARS: usize = 60;

fn tokens_of(chars: usize) -> u64 {
    chars.div_ceil(CHARS_PER_TOKEN) as u64
}

/// The text of a message: a string, or the text parts of an array.
pub(crate) fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// A planned chat reply: the body without `usage`, and its token counts.
pub struct ChatReply {
    pub body: Value,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl ChatReply {
    /// The full body, `usage` included.
    pub fn into_body(mut self) -> Value {
        self.body["usage"] = json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        });
        self.body
    }
}

/// A chat reply as OpenRouter streams it: a processing comment, the content in a few
/// deltas, the finish, a last chunk with `usage` and no choices, then `[DONE]`.
pub fn stream_chunks(reply: &Value) -> Vec<bytes::Bytes> {
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut c = json!({
            "id": reply["id"],
            "object": "chat.completion.chunk",
            "created": reply["created"],
            "model": reply["model"],
            "choices": choices,
        });
        if let Some(usage) = usage {
            c["usage"] = usage.clone();
        }
        bytes::Bytes::from(format!("data: {c}\n\n"))
    };
    let content = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    let mut out = vec![bytes::Bytes::from_static(b": OPENROUTER PROCESSING\n\n")];
    let words: Vec<&str> = content.split_inclusive(' ').collect();
    for (i, part) in words.chunks(3).enumerate() {
        let mut delta = json!({"content": part.concat()});
        if i == 0 {
            delta["role"] = json!("assistant");
        }
        out.push(chunk(
            json!([{"index": 0, "delta": delta, "finish_reason": null}]),
            None,
        ));
    }
    out.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        None,
    ));
    out.push(chunk(json!([]), reply.get("usage")));
    out.push(bytes::Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// Plans the reply to a chat request whose `messages` is `messages`, played as `part`:
/// an answer's text ends in its marker (inside the `answer` field in JSON mode, so
/// the reply stays JSON), and a judge's content is its judgement alone.
pub fn chat(request: &Value, messages: &[Value], part: Part, n: u64, created: u64) -> ChatReply {
    let prompt_tokens = messages
        .iter()
        .map(|m| tokens_of(text_of(m.get("content")).chars().count()) + TOKENS_PER_MESSAGE)
        .sum::<u64>()
        + TOKENS_PER_REPLY;
    let last = messages
        .last()
        .map(|m| text_of(m.get("content")))
        .unwrap_or_default();
    let echo: String = last.chars().take(ECHO_CHARS).collect();
    let wants_json = matches!(
        request
            .get("response_format")
            .and_then(|f| f.get("type"))
            .and_then(Value::as_str),
        Some("json_object" | "json_schema")
    );
    let text = match part.marker() {
        Some(marker) => format!("Mock reply to: {echo} {marker}"),
        None => format!("Mock reply to: {echo}"),
    };
    let content = match part.judgement() {
        Some(judgement) => judgement.to_string(),
        None if wants_json => {
            json!({"answer": text, "words": last.split_whitespace().count()}).to_string()
        }
        None => text,
    };
    let natural = tokens_of(content.chars().count()).max(1);
    let cap = request
        .get("max_tokens")
        .or_else(|| request.get("max_completion_tokens"))
        .and_then(Value::as_u64);
    let (completion_tokens, finish_reason) = match cap {
        Some(cap) if cap < natural => (cap.max(1), "length"),
        _ => (natural, "stop"),
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model");
    ChatReply {
        body: json!({
            "id": format!("chatcmpl-mock-{n}"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "finish_reason": finish_reason,
            }],
        }),
        prompt_tokens,
        completion_tokens,
    }
}

/// Plans an embeddings reply; `None` when `input` is missing or of the wrong type.
pub fn embeddings(request: &Value) -> Option<(Value, u64)> {
    let inputs: Vec<String> = match request.get("input")? {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        _ => return None,
    };
    let tokens: u64 = inputs
        .iter()
        .map(|s| tokens_of(s.chars().count()).max(1))
        .sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let seed = s.bytes().fold(i as u64 + 1, |h, b| {
                h.wrapping_mul(31).wrapping_add(u64::from(b))
            });
            let vector: Vec<f64> = (0..8u64)
                .map(|k| ((seed.wrapping_mul(k + 7) % 2000) as f64 / 1000.0) - 1.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-embedding");
    Some((
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
        tokens,
    ))
}

/// An OpenAI error body, with all four keys the SDKs expect.
pub fn error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// A Go `time.Duration` string as OpenAI's headers use: `1s`, `6m0s`, `200ms`, `2m59.56s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut out = String::new();
    let total_secs = d.as_secs_f64();
    let hours = d.as_secs() / 3600;
    let minutes = (d.as_secs() % 3600) / 60;
    let secs = total_secs - (hours * 3600 + minutes * 60) as f64;
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    let secs = format!("{secs:.2}");
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    let _ = write!(out, "{secs}s");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(179_560)), "2m59.56s");
        assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
    }

    #[test]
    fn chat_counts_tokens_and_honours_max_tokens() {
        let req = json!({"model": "m", "messages": [{"role": "user", "content": "12345678"}]});
        let r = chat(&req, req["messages"].as_array().unwrap(), Part::Echo, 1, 0);
        assert_eq!(r.prompt_tokens, 2 + 4 + 3);
        assert!(r.completion_tokens >= 1);
        let capped = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "a long question indeed"}]});
        let r = chat(
            &capped,
            capped["messages"].as_array().unwrap(),
            Part::Echo,
            1,
            0,
        );
        assert_eq!(r.completion_tokens, 1);
        assert_eq!(r.body["choices"][0]["finish_reason"], "length");
        let body = r.into_body();
        assert_eq!(
            body["usage"]["total_tokens"],
            body["usage"]["prompt_tokens"].as_u64().unwrap() + 1
        );
    }

    #[test]
    fn json_mode_replies_with_json() {
        let req = json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}});
        let r = chat(&req, req["messages"].as_array().unwrap(), Part::Echo, 1, 0);
        let content = r.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(serde_json::from_str::<Value>(&content).is_ok());
    }

    #[test]
    fn answers_end_in_their_marker_and_judges_say_only_their_verdict() {
        let req = json!({"messages": [{"role": "user", "content": "2+2?"}]});
        let messages = req["messages"].as_array().unwrap();
        let content = |request: &Value, part| {
            chat(request, messages, part, 1, 0).body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            content(&req, Part::Answer { correct: true }),
            "Mock reply to: 2+2? [mock:correct]"
        );
        assert_eq!(
            content(&req, Part::Answer { correct: false }),
            "Mock reply to: 2+2? [mock:wrong]"
        );
        let json_mode = json!({"messages": messages, "response_format": {"type": "json_object"}});
        let reply: Value =
            serde_json::from_str(&content(&json_mode, Part::Answer { correct: true })).unwrap();
        assert_eq!(reply["answer"], "Mock reply to: 2+2? [mock:correct]");
        let judge = Part::Judge {
            correct: false,
            invalid: false,
        };
        assert_eq!(content(&json_mode, judge), r#"{"correct": false}"#);
    }

    #[test]
    fn embeddings_shape() {
        let (body, tokens) = embeddings(&json!({"input": ["ab", "cdefgh"]})).unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
        assert_eq!(tokens, 1 + 2);
        assert!(embeddings(&json!({"input": 5})).is_none());
    }
}
