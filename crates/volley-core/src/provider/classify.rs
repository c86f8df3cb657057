//! What an attempt's outcome means: success, retry, pause the key, retire the key, or
//! give up (SPEC §3). Every path that looks at a reply calls [`classify_reply`] or
//! [`classify_failure`], so the rules live in one table.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::borrow::Cow;

use serde_json::Value;

use crate::accounting::usage::{Usage, UsageShape};
use crate::engine::retry::retry_after;
use crate::provider::validate::ResponseCheck;

/// Why an attempt did not succeed; the snake_case name is the `error.code` written to
/// ERRORS and the reason carried by retry events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    RateLimited,
    ServerError,
    Timeout,
    Connection,
    MalformedResponse,
    EmptyResponse,
    InvalidResponse,
    BadRequest,
    Unauthorized,
    CreditsExhausted,
    QuotaExhausted,
    Moderation,
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    ClientError,
    RetryBudgetExhausted,
    RetriesExhausted,
    InvalidInput,
    ExceedsRateLimit,
    /// A request a client waits on could not start within the client's patience.
    QueueTimeout,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimited => "rate_limited",
            Reason::ServerError => "server_error",
            Reason::Timeout => "timeout",
            Reason::Connection => "connection_error",
            Reason::MalformedResponse => "malformed_response",
            Reason::EmptyResponse => "empty_response",
            Reason::InvalidResponse => "invalid_response",
            Reason::BadRequest => "bad_request",
            Reason::Unauthorized => "unauthorized",
            Reason::CreditsExhausted => "credits_exhausted",
            Reason::QuotaExhausted => "quota_exhausted",
            Reason::Moderation => "moderation",
            Reason::NotFound => "not_found",
            Reason::PayloadTooLarge => "payload_too_large",
            Reason::Unprocessable => "unprocessable_entity",
            Reason::ClientError => "client_error",
            Reason::RetryBudgetExhausted => "retry_budget_exhausted",
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::InvalidInput => "invalid_input",
            Reason::ExceedsRateLimit => "exceeds_rate_limit",
            Reason::QueueTimeout => "queue_timeout",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the engine should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Record the result.
    Success,
    /// Try again after a backoff; counts against the request's retries and the budget.
    Retry,
    /// Try again on the rate-limit path: the key pauses, the wait is paced, not budgeted.
    RateLimited,
    /// The key is unusable for the rest of the run; the request moves to another key.
    RetireKey,
    /// Give up: the request goes to ERRORS.
    Fail,
}

/// An attempt's outcome.
#[derive(Debug, Clone)]
pub struct Classified {
    pub verdict: Verdict,
    /// Why it was not a success (`None` for a success).
    pub reason: Option<Reason>,
    /// A message for ERRORS and logs, from the provider's error when it gave one.
    pub message: Option<String>,
    /// Tokens the attempt consumed, when the reply carried a `usage` object.
    pub usage: Option<Usage>,
    /// The server's Retry-After, if any.
    pub retry_after: Option<Duration>,
}

impl Classified {
    /// A success judged by status alone: a reply passed on to a client as it came,
    /// its usage read from its body when it is JSON that reports one.
    pub fn passed_through(body: &[u8]) -> Classified {
        let mut out = Classified::new(Verdict::Success, None, None);
        out.usage = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| Usage::from_body(&v));
        out
    }

    fn new(verdict: Verdict, reason: Option<Reason>, message: Option<String>) -> Classified {
        Classified {
            verdict,
            reason,
            message,
            usage: None,
            retry_after: None,
        }
    }
}

/// An attempt that got no complete HTTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportFailure {
    /// No reply within the per-attempt timeout.
    Timeout,
    /// Could not connect, or the connection dropped before or during the reply.
    Connection(String),
}

/// Classifies an attempt that failed below HTTP: always retried.
pub fn classify_failure(failure: &TransportFailure) -> Classified {
    match failure {
        TransportFailure::Timeout => Classified::new(
            Verdict::Retry,
            Some(Reason::Timeout),
            Some("no reply within the timeout".into()),
        ),
        TransportFailure::Connection(msg) => {
            Classified::new(Verdict::Retry, Some(Reason::Connection), Some(msg.clone()))
        }
    }
}

/// What a successful reply of an endpoint must hold; a 2xx body without it (`{}`,
/// `null`, a chat completion without a `choices` list) is `malformed_response`, never a
/// success (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/chat/completions`: a `choices` list whose first message has content or tool calls.
    Chat,
    /// `/completions` (legacy): a `choices` list whose first choice has `text`.
    Completions,
    /// `/embeddings`: a `data` list.
    Embeddings,
    /// `/responses`: an `output` list.
    Responses,
    /// `/moderations`: a `results` list.
    Moderations,
    /// Any other path: a JSON object with at least one field.
    Other,
}

impl Endpoint {
    /// The endpoint a request path (relative to the base URL) names.
    pub fn of(path: &str) -> Endpoint {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Endpoint::Chat
        } else if path.ends_with("/completions") {
            Endpoint::Completions
        } else if path.ends_with("/embeddings") {
            Endpoint::Embeddings
        } else if path.ends_with("/responses") {
            Endpoint::Responses
        } else if path.ends_with("/moderations") {
            Endpoint::Moderations
        } else {
            Endpoint::Other
        }
    }

    /// The list a successful body must carry, by name.
    fn required_list(self) -> Option<&'static str> {
        match self {
            Endpoint::Chat | Endpoint::Completions => Some("choices"),
            Endpoint::Embeddings => Some("data"),
            Endpoint::Responses => Some("output"),
            Endpoint::Moderations => Some("results"),
            Endpoint::Other => None,
        }
    }
}

/// Classifies a complete HTTP reply to a request sent to `endpoint`.
pub fn classify_reply(
    endpoint: Endpoint,
    status: u16,
    headers: &HeaderMap,
    body: &Bytes,
    check: Option<&ResponseCheck>,
) -> Classified {
    let mut out = if (200..300).contains(&status) {
        // The hot path: read only the fields that matter, skip the rest unparsed.
        match serde_json::from_slice::<SuccessShape>(body) {
            Ok(shape) => {
                let mut out = classify_success_body(endpoint, &shape, body, check);
                out.usage = shape.usage.and_then(|u| u.0);
                out
            }
            Err(e) => Classified::new(
                Verdict::Retry,
                Some(Reason::MalformedResponse),
                Some(format!(
                    "HTTP {status} with a body that is not a JSON reply ({} bytes): {e}",
                    body.len()
                )),
            ),
        }
    } else {
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut out = classify_error_status(status, &parsed);
        out.usage = Usage::from_body(&parsed);
        out
    };
    out.retry_after = retry_after(headers);
    out
}

/// The parts of a 2xx body that classification reads. A field of the wrong type (a
/// `choices` that is not a list) fails the parse: the body is malformed.
#[derive(Debug, Deserialize)]
struct SuccessShape {
    choices: Option<Vec<ChoiceShape>>,
    data: Option<Vec<IgnoredAny>>,
    output: Option<Vec<IgnoredAny>>,
    results: Option<Vec<IgnoredAny>>,
    error: Option<Value>,
    usage: Option<UsageShape>,
}

impl SuccessShape {
    /// Whether the body carries the list named `name`.
    fn has_list(&self, name: &str) -> bool {
        match name {
            "choices" => self.choices.is_some(),
            "data" => self.data.is_some(),
            "output" => self.output.is_some(),
            "results" => self.results.is_some(),
            _ => false,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChoiceShape {
    message: Option<MessageShape>,
    /// Legacy `/completions`: the generated text.
    text: Option<Value>,
    error: Option<Value>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessageShape {
    content: Option<Value>,
    tool_calls: Option<Vec<IgnoredAny>>,
}

fn malformed(why: String) -> Classified {
    Classified::new(Verdict::Retry, Some(Reason::MalformedResponse), Some(why))
}

/// A 2xx body: a success unless it carries an error, is not the endpoint's shape, is
/// empty, or fails validation.
fn classify_success_body(
    endpoint: Endpoint,
    reply: &SuccessShape,
    body: &[u8],
    check: Option<&ResponseCheck>,
) -> Classified {
    if let Some(list) = endpoint.required_list()
        && !reply.has_list(list)
    {
        // OpenRouter: HTTP 200 whose body is an error and has no choices.
        if let Some(error) = &reply.error {
            return classify_inner_error(error);
        }
        return malformed(format!(
            "HTTP 200 whose body has no \"{list}\" list ({} bytes)",
            body.len()
        ));
    }
    if endpoint == Endpoint::Other {
        if let Some(error) = &reply.error {
            return classify_inner_error(error);
        }
        // `{}` says nothing: it is no more a success on an unknown endpoint.
        let fields = serde_json::from_slice::<std::collections::HashMap<String, IgnoredAny>>(body)
            .map_or(0, |m| m.len());
        return if fields == 0 {
            malformed("HTTP 200 whose body is an empty JSON object".into())
        } else {
            Classified::new(Verdict::Success, None, None)
        };
    }
    let Some(choices) = &reply.choices else {
        // Embeddings, responses, moderations: the list is there, the status says the rest.
        return Classified::new(Verdict::Success, None, None);
    };
    // OpenRouter: a choice that failed mid-generation.
    for choice in choices {
        if let Some(error) = &choice.error {
            return classify_inner_error(error);
        }
        if choice.finish_reason.as_deref() == Some("error") {
            return Classified::new(
                Verdict::Retry,
                Some(Reason::ServerError),
                Some("the provider ended the generation with finish_reason \"error\"".into()),
            );
        }
    }
    let Some(first) = choices.first() else {
        return Classified::new(
            Verdict::Retry,
            Some(Reason::EmptyResponse),
            Some("the reply has no choices".into()),
        );
    };
    let message = first.message.as_ref();
    let content = match endpoint {
        Endpoint::Completions => first.text.as_ref(),
        _ => message.and_then(|m| m.content.as_ref()),
    }
    .map(content_text)
    .unwrap_or_default();
    let has_tool_calls = message
        .and_then(|m| m.tool_calls.as_ref())
        .is_some_and(|calls| !calls.is_empty());
    if content.trim().is_empty() && !has_tool_calls {
        return Classified::new(
            Verdict::Retry,
            Some(Reason::EmptyResponse),
            Some("the reply's content is empty and it has no tool calls".into()),
        );
    }
    if let Some(check) = check
        && let Err(why) = check.check(&content)
    {
        return Classified::new(Verdict::Retry, Some(Reason::InvalidResponse), Some(why));
    }
    Classified::new(Verdict::Success, None, None)
}

/// The text of a message's `content`: a string, or the text parts of an array.
fn content_text(content: &Value) -> Cow<'_, str> {
    match content {
        Value::String(s) => Cow::Borrowed(s),
        Value::Array(parts) => Cow::Owned(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        _ => Cow::Borrowed(""),
    }
}

/// An error object inside a 200 body: classified by its code as if it were the status.
pub(crate) fn classify_inner_error(error: &Value) -> Classified {
    let status = match error.get("code") {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Some(Value::String(s)) if s == "rate_limit_exceeded" => Some(429),
        Some(Value::String(s)) => s.parse::<u16>().ok(),
        _ => None,
    }
    .filter(|s| (400..600).contains(s))
    // An unexplained failure inside a 200 is the provider's, not the request's.
    .unwrap_or(502);
    classify_error_status(status, &serde_json::json!({ "error": error }))
}

/// A non-2xx status (or an inner error code treated as one).
fn classify_error_status(status: u16, json: &Value) -> Classified {
    let error = json.get("error");
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            json.get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("HTTP {status}"));
    let metadata = error.and_then(|e| e.get("metadata"));
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("");
    // OpenRouter's availability hint overrides the status when it is explicit.
    let availability_retryable = metadata
        .and_then(|m| m.get("availability"))
        .and_then(|a| a.get("retryable"))
        .and_then(Value::as_bool);

    let (verdict, reason) = match status {
        429 if quota_spent(code, &message) => (Verdict::RetireKey, Reason::QuotaExhausted),
        429 => (Verdict::RateLimited, Reason::RateLimited),
        401 => (Verdict::RetireKey, Reason::Unauthorized),
        402 if in_flight_budget(metadata) => (Verdict::RateLimited, Reason::RateLimited),
        // "requires more credits, or fewer max_tokens … can only afford N": this
        // request is too dear for what is left, not the key spent.
        402 if unaffordable(&message) => (Verdict::Fail, Reason::CreditsExhausted),
        402 => (Verdict::RetireKey, Reason::CreditsExhausted),
        403 => (Verdict::Fail, Reason::Moderation),
        400 => (Verdict::Fail, Reason::BadRequest),
        404 => (Verdict::Fail, Reason::NotFound),
        413 => (Verdict::Fail, Reason::PayloadTooLarge),
        422 => (Verdict::Fail, Reason::Unprocessable),
        408 => (Verdict::Retry, Reason::Timeout),
        409 | 425 | 500..=599 => (Verdict::Retry, Reason::ServerError),
        _ if availability_retryable == Some(true) => (Verdict::Retry, Reason::ServerError),
        _ => (Verdict::Fail, Reason::ClientError),
    };
    let message = if reason == Reason::Moderation {
        moderation_message(&message, metadata)
    } else {
        message
    };
    Classified::new(verdict, Some(reason), Some(message))
}

/// A 429 that says a daily or credit quota is spent: waiting a few seconds won't help.
fn quota_spent(code: &str, message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    code == "insufficient_quota"
        || m.contains("per-day")
        || m.contains("per day")
        || m.contains("daily")
        || m.contains("quota")
}

/// OpenRouter's 402 for one request that costs more than the credit left would cover.
fn unaffordable(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("fewer max_tokens") || m.contains("can only afford")
}

/// OpenRouter's 402 from an in-flight spending budget: a wait, not spent credits.
fn in_flight_budget(metadata: Option<&Value>) -> bool {
    metadata
        .and_then(|m| m.get("limit_source"))
        .and_then(Value::as_str)
        .is_some_and(|s| s.contains("in_flight"))
}

/// A moderation refusal with its reasons, so ERRORS says why.
fn moderation_message(message: &str, metadata: Option<&Value>) -> String {
    let reasons: Vec<&str> = metadata
        .and_then(|m| m.get("reasons"))
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if reasons.is_empty() {
        message.to_owned()
    } else {
        format!("{message} (reasons: {})", reasons.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_402_for_one_dear_request_fails_it_without_retiring_the_key() {
        let body = Bytes::from_static(
            br#"{"error":{"code":402,"message":"This request requires more credits, or fewer max_tokens. You requested up to 4096 tokens, but can only afford 812."}}"#,
        );
        let c = classify_reply(Endpoint::Chat, 402, &HeaderMap::new(), &body, None);
        assert_eq!(
            (c.verdict, c.reason),
            (Verdict::Fail, Some(Reason::CreditsExhausted))
        );
        let spent =
            Bytes::from_static(br#"{"error":{"code":402,"message":"Insufficient credits"}}"#);
        let c = classify_reply(Endpoint::Chat, 402, &HeaderMap::new(), &spent, None);
        assert_eq!(c.verdict, Verdict::RetireKey);
    }
    use http::HeaderValue;
    use serde_json::json;

    fn classify(status: u16, body: Value) -> Classified {
        classify_at("/chat/completions", status, body)
    }

    fn classify_at(path: &str, status: u16, body: Value) -> Classified {
        classify_reply(
            Endpoint::of(path),
            status,
            &HeaderMap::new(),
            &Bytes::from(body.to_string()),
            None,
        )
    }

    fn ok_body(content: &str) -> Value {
        json!({"choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    }

    #[test]
    fn status_table() {
        let cases: &[(u16, Value, Verdict, Reason)] = &[
            (
                400,
                json!({"error": {"message": "bad"}}),
                Verdict::Fail,
                Reason::BadRequest,
            ),
            (404, json!({}), Verdict::Fail, Reason::NotFound),
            (413, json!({}), Verdict::Fail, Reason::PayloadTooLarge),
            (422, json!({}), Verdict::Fail, Reason::Unprocessable),
            (401, json!({}), Verdict::RetireKey, Reason::Unauthorized),
            (
                402,
                json!({"error": {"code": 402, "message": "Insufficient credits"}}),
                Verdict::RetireKey,
                Reason::CreditsExhausted,
            ),
            (
                402,
                json!({"error": {"code": 402, "message": "busy", "metadata": {"limit_source": "openrouter_in_flight_budget"}}}),
                Verdict::RateLimited,
                Reason::RateLimited,
            ),
            (
                403,
                json!({"error": {"message": "flagged", "metadata": {"reasons": ["violence"]}}}),
                Verdict::Fail,
                Reason::Moderation,
            ),
            (408, json!({}), Verdict::Retry, Reason::Timeout),
            (409, json!({}), Verdict::Retry, Reason::ServerError),
            (425, json!({}), Verdict::Retry, Reason::ServerError),
            (
                429,
                json!({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}),
                Verdict::RateLimited,
                Reason::RateLimited,
            ),
            (
                429,
                json!({"error": {"message": "Rate limit exceeded: free-models-per-day"}}),
                Verdict::RetireKey,
                Reason::QuotaExhausted,
            ),
            (
                429,
                json!({"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}),
                Verdict::RetireKey,
                Reason::QuotaExhausted,
            ),
            (500, json!({}), Verdict::Retry, Reason::ServerError),
            (502, json!({}), Verdict::Retry, Reason::ServerError),
            (503, json!({}), Verdict::Retry, Reason::ServerError),
            (529, json!({}), Verdict::Retry, Reason::ServerError),
            (418, json!({}), Verdict::Fail, Reason::ClientError),
        ];
        for (status, body, verdict, reason) in cases {
            let c = classify(*status, body.clone());
            assert_eq!(
                (c.verdict, c.reason),
                (*verdict, Some(*reason)),
                "status {status} body {body}"
            );
        }
        let moderated = classify(
            403,
            json!({"error": {"message": "flagged", "metadata": {"reasons": ["violence"]}}}),
        );
        assert!(moderated.message.unwrap().contains("violence"));
    }

    #[test]
    fn successes_and_their_usage() {
        let c = classify(200, ok_body("hello"));
        assert_eq!(c.verdict, Verdict::Success);
        assert_eq!(c.usage.unwrap().total_tokens, 5);
        let emb = classify_at(
            "/embeddings",
            200,
            json!({"data": [{"embedding": [0.1]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}),
        );
        assert_eq!(emb.verdict, Verdict::Success);
        let tools = classify(
            200,
            json!({"choices": [{"message": {"content": null, "tool_calls": [{"id": "t"}]}}]}),
        );
        assert_eq!(tools.verdict, Verdict::Success);
    }

    #[test]
    fn bodies_not_of_the_endpoints_shape_are_malformed() {
        let cases: &[(&str, &str)] = &[
            ("/chat/completions", "{}"),
            ("/chat/completions", "null"),
            ("/chat/completions", "[]"),
            ("/chat/completions", "42"),
            ("/chat/completions", r#"{"choices": {"0": {}}}"#),
            ("/chat/completions", r#"{"choices": "none"}"#),
            (
                "/chat/completions",
                r#"{"object": "chat.completion", "usage": {"total_tokens": 3}}"#,
            ),
            ("/completions", "{}"),
            ("/embeddings", "{}"),
            ("/embeddings", r#"{"data": null}"#),
            ("/embeddings", r#"{"data": {"x": 1}}"#),
            ("/responses", r#"{"id": "r"}"#),
            ("/moderations", r#"{"id": "m"}"#),
            ("/anything/else", "{}"),
            ("/anything/else", "null"),
            ("/chat/completions", "<html>oops</html>"),
        ];
        for (path, body) in cases {
            let c = classify_reply(
                Endpoint::of(path),
                200,
                &HeaderMap::new(),
                &Bytes::from(body.to_string()),
                None,
            );
            assert_eq!(
                (c.verdict, c.reason),
                (Verdict::Retry, Some(Reason::MalformedResponse)),
                "{path} {body}"
            );
        }
        let invalid_utf8 = classify_reply(
            Endpoint::Chat,
            200,
            &HeaderMap::new(),
            &Bytes::from_static(b"{\"choices\": [{\"message\": {\"content\": \"\xff\xfe\"}}]}"),
            None,
        );
        assert_eq!(invalid_utf8.reason, Some(Reason::MalformedResponse));
        // Usage in a malformed body is still counted.
        let c = classify(
            200,
            json!({"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}),
        );
        assert_eq!(c.reason, Some(Reason::MalformedResponse));
        assert_eq!(c.usage.unwrap().total_tokens, 2);
        // The shapes that are successes.
        for (path, body) in [
            ("/completions", json!({"choices": [{"text": "hi"}]})),
            ("/responses", json!({"output": [], "error": null})),
            ("/moderations", json!({"results": [{"flagged": false}]})),
            ("/anything/else", json!({"ok": true})),
        ] {
            assert_eq!(
                classify_at(path, 200, body.clone()).verdict,
                Verdict::Success,
                "{path} {body}"
            );
        }
        let empty_text = classify_at("/completions", 200, json!({"choices": [{"text": ""}]}));
        assert_eq!(empty_text.reason, Some(Reason::EmptyResponse));
        let null_content = classify(200, json!({"choices": [{"message": {"content": null}}]}));
        assert_eq!(null_content.reason, Some(Reason::EmptyResponse));
    }

    #[test]
    fn errors_inside_a_200() {
        let c = classify(200, json!({"error": {"code": 429, "message": "busy"}}));
        assert_eq!(c.verdict, Verdict::RateLimited);
        let c = classify(200, json!({"error": {"code": 400, "message": "bad"}}));
        assert_eq!(c.verdict, Verdict::Fail);
        let c = classify(
            200,
            json!({"choices": [{"message": {"content": "part"}, "error": {"code": 502, "message": "upstream"}}]}),
        );
        assert_eq!(
            (c.verdict, c.reason),
            (Verdict::Retry, Some(Reason::ServerError))
        );
        let c = classify(
            200,
            json!({"choices": [{"message": {"content": "part"}, "finish_reason": "error"}]}),
        );
        assert_eq!(c.verdict, Verdict::Retry);
    }

    #[test]
    fn empty_and_malformed_replies_are_retried_with_their_tokens() {
        let c = classify(200, ok_body("  "));
        assert_eq!(
            (c.verdict, c.reason),
            (Verdict::Retry, Some(Reason::EmptyResponse))
        );
        assert_eq!(c.usage.unwrap().total_tokens, 5);
        let c = classify_reply(
            Endpoint::Chat,
            200,
            &HeaderMap::new(),
            &Bytes::from_static(b"{\"choices\": [{"),
            None,
        );
        assert_eq!(
            (c.verdict, c.reason),
            (Verdict::Retry, Some(Reason::MalformedResponse))
        );
    }

    #[test]
    fn validation_failures_are_retried() {
        let check = ResponseCheck::json();
        let c = classify_reply(
            Endpoint::Chat,
            200,
            &HeaderMap::new(),
            &Bytes::from(ok_body("not json").to_string()),
            Some(&check),
        );
        assert_eq!(
            (c.verdict, c.reason),
            (Verdict::Retry, Some(Reason::InvalidResponse))
        );
        assert!(c.usage.is_some());
        let c = classify_reply(
            Endpoint::Chat,
            200,
            &HeaderMap::new(),
            &Bytes::from(ok_body("{\"a\":1}").to_string()),
            Some(&check),
        );
        assert_eq!(c.verdict, Verdict::Success);
    }

    #[test]
    fn retry_after_is_read() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        let c = classify_reply(Endpoint::Chat, 429, &h, &Bytes::from_static(b"{}"), None);
        assert_eq!(c.retry_after, Some(Duration::from_secs(2)));
    }

    #[test]
    fn transport_failures_are_retried() {
        assert_eq!(
            classify_failure(&TransportFailure::Timeout).verdict,
            Verdict::Retry
        );
        let c = classify_failure(&TransportFailure::Connection("reset".into()));
        assert_eq!(c.reason, Some(Reason::Connection));
    }
}
