//! The HTTP side: routes, the per-request flow (limit → latency → fault → reply), and
//! the server's lifetime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::config::{DEFAULT_WINDOW, MockConfig};
use crate::faults::{Dice, Fault, roll};
use crate::grading::Part;
use crate::ledger::{Ledger, LimitKind, Limits, RateHeaders, key_label};
use crate::reply;

/// How long a hung request waits: far past any sane client timeout.
const HANG: Duration = Duration::from_secs(3600);
/// Retry-After of the in-flight budget's 402: in-flight requests finish in moments.
const IN_FLIGHT_RETRY_AFTER_SECS: u64 = 1;
/// Bytes of a reply sent before a reset fault drops the connection.
const RESET_AFTER: &[u8] = b"{\"id\":\"chatcmpl-mock\",\"object\":";

/// Why the mock could not start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct Shared {
    config: MockConfig,
    ledger: Mutex<Ledger>,
    next: AtomicU64,
}

impl Shared {
    fn new(config: MockConfig) -> Shared {
        Shared {
            ledger: Mutex::new(Ledger::new(Limits::new(&config))),
            config,
            next: AtomicU64::new(0),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The mock's routes, for serving or for driving with `tower::ServiceExt::oneshot`.
pub fn app(config: MockConfig) -> Router {
    router(Arc::new(Shared::new(config)))
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/key", get(key_info))
        .route("/v1/models", get(models))
        .route("/mock/stats", get(stats))
        .route("/mock/reset", post(reset))
        .with_state(shared)
}

/// A running mock; stops when shut down or dropped.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Binds `addr` (port 0 = a free port) and serves on a spawned task.
    pub async fn start(config: MockConfig, addr: SocketAddr) -> Result<MockServer, MockError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MockError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MockError::Bind { addr, source })?;
        let shared = Arc::new(Shared::new(config));
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            // Serving ends only by abort; an accept error here has nowhere better to go.
            let _ = axum::serve(listener, app).await;
        });
        Ok(MockServer { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`, ready for `--base-url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The same JSON as `GET /mock/stats`.
    pub fn stats(&self) -> Value {
        self.shared.ledger().stats()
    }

    /// Stops at once. Hung requests are dropped, not waited for.
    pub async fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

fn json_response(
    status: StatusCode,
    body: &Value,
    headers: Vec<(HeaderName, HeaderValue)>,
) -> Response {
    let mut response = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    response.headers_mut().extend(headers);
    response
}

fn header(name: &str, value: String) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_str(&value).ok()?,
    ))
}

fn rate_headers(h: &RateHeaders, request_id: &str) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = vec![header("x-request-id", request_id.to_string())];
    for (kind, figures) in [("requests", h.requests), ("tokens", h.tokens)] {
        if let Some((limit, remaining, reset)) = figures {
            out.push(header(
                &format!("x-ratelimit-limit-{kind}"),
                limit.to_string(),
            ));
            out.push(header(
                &format!("x-ratelimit-remaining-{kind}"),
                remaining.to_string(),
            ));
            out.push(header(
                &format!("x-ratelimit-reset-{kind}"),
                reply::go_duration(reset),
            ));
        }
    }
    out.into_iter().flatten().collect()
}

/// A request that reached a `/v1` route, before its reply is planned.
struct Arrival<'a> {
    shared: &'a Shared,
    n: u64,
    key: Option<String>,
    /// The request asked for `stream: true`: a success is sent as server-sent events.
    stream: bool,
    /// The chat model whose book in `by_model` the reply is billed to; `None` for
    /// embeddings and for chat bodies without a string `model`.
    model: Option<String>,
    /// The attempt's dice: latency, faults and a judge's fumble are all drawn from it,
    /// so the same seed and arrival order replay the same run.
    dice: Dice,
}

impl<'a> Arrival<'a> {
    fn new(shared: &'a Shared, headers: &HeaderMap) -> Arrival<'a> {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        let key = bearer(headers).map(str::to_owned);
        shared.ledger().count_request(key.as_deref());
        Arrival {
            shared,
            n,
            key,
            stream: false,
            model: None,
            dice: Dice::for_request(shared.config.seed, n),
        }
    }

    /// OpenRouter's two 402s: spent credits (final for the key), or too much in flight
    /// against the key's spending budget (come back after Retry-After). Takes the
    /// key's in-flight slot when it answers `None`.
    fn payment_required(&self, key: &str, request_id: &str) -> Option<Response> {
        let config = &self.shared.config;
        let mut ledger = self.shared.ledger();
        let credit = config.key_credits.get(&key_label(key));
        let (message, metadata, retry) = if credit.is_some_and(|c| ledger.billed(key) >= *c) {
            (
                "Insufficient credits. Add more using https://openrouter.ai/credits",
                Value::Null,
                false,
            )
        } else if !ledger.enter(key, config.in_flight_budget) {
            (
                "Too many requests in flight for this key's spending budget; retry shortly",
                json!({"limit_source": "openrouter_in_flight_budget"}),
                true,
            )
        } else {
            return None;
        };
        ledger.count_payment_required(key);
        drop(ledger);
        let mut headers = rate_headers(&RateHeaders::default(), request_id);
        if retry {
            headers.extend(header(
                "retry-after",
                IN_FLIGHT_RETRY_AFTER_SECS.to_string(),
            ));
        }
        let mut body = json!({"error": {"code": 402, "message": message}});
        if !metadata.is_null() {
            body["error"]["metadata"] = metadata;
        }
        Some(json_response(StatusCode::PAYMENT_REQUIRED, &body, headers))
    }

    /// The request body as JSON, or the 400 OpenAI answers when it is not
    /// (boxed: a `Response` is large and the error is the rare path).
    fn json(&self, body: &[u8]) -> Result<Value, Box<Response>> {
        serde_json::from_slice(body).map_err(|_| {
            Box::new(self.refuse(
                StatusCode::BAD_REQUEST,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
            ))
        })
    }

    /// A client error answered at once.
    fn refuse(&self, status: StatusCode, message: &str, kind: &str) -> Response {
        self.shared.ledger().count_status(status.as_u16());
        let id = format!("req-mock-{}", self.n);
        json_response(
            status,
            &reply::error(message, kind, None),
            rate_headers(&RateHeaders::default(), &id),
        )
    }

    /// Limits, latency and faults, then `body` (with `prompt`/`completion` billed).
    async fn answer(self, mut body: Value, prompt: u64, completion: u64) -> Response {
        let config = &self.shared.config;
        let Some(key) = self.key.as_deref() else {
            return self.refuse(
                StatusCode::UNAUTHORIZED,
                "No API key provided: send Authorization: Bearer KEY",
                "invalid_request_error",
            );
        };
        let request_id = format!("req-mock-{}", self.n);
        if let Some(refusal) = self.payment_required(key, &request_id) {
            return refusal;
        }
        let _slot = InFlight {
            shared: self.shared,
            key,
        };
        let tokens = prompt.saturating_add(completion);
        let model = body["model"].as_str().filter(|_| config.limit_per_model);
        let admitted = match model {
            Some(model) => self
                .shared
                .ledger()
                .admit_for_model(key, model, tokens, Instant::now()),
            None => self.shared.ledger().admit(key, tokens, Instant::now()),
        };
        let limits = match admitted {
            Ok(h) => h,
            Err(limited) => {
                self.shared.ledger().count_status(429);
                let (kind, limit) = match limited.kind {
                    LimitKind::Requests => ("requests", config.rpm),
                    LimitKind::Tokens => ("tokens", config.tpm),
                };
                let message = format!(
                    "Rate limit reached for {kind} per {} (limit {}); try again in {}",
                    if config.window() == DEFAULT_WINDOW {
                        "minute".to_string()
                    } else {
                        reply::go_duration(config.window())
                    },
                    limit.unwrap_or(0),
                    reply::go_duration(limited.retry_after)
                );
                let mut headers = if config.hide_limits {
                    openrouter_headers(limit, limited.retry_after, &request_id)
                } else {
                    rate_headers(&limited.headers, &request_id)
                };
                // Both rounded up: a client that waits exactly this long is admitted.
                let ms = limited.retry_after.as_nanos().div_ceil(1_000_000).max(1);
                let secs = ms.div_ceil(1000);
                headers.extend(header("retry-after", secs.to_string()));
                headers.extend(header("retry-after-ms", ms.to_string()));
                return json_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    &reply::error(&message, kind, Some("rate_limit_exceeded")),
                    headers,
                );
            }
        };
        let mut dice = self.dice.clone();
        let latency = config.latency_ms + dice.up_to(config.jitter_ms);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let fault = roll(config, &mut dice);
        // OpenRouter reports the cost of every reply in `usage.cost` (USD).
        let cost = config
            .cost_per_million_tokens
            .map(|usd| (prompt + completion) as f64 * usd / 1_000_000.0);
        if let (Some(cost), Some(usage)) = (cost, body.get_mut("usage")) {
            usage["cost"] = json!(cost);
        }
        let shown = if config.hide_limits {
            RateHeaders::default()
        } else {
            limits
        };
        let headers = rate_headers(&shown, &request_id);
        {
            // Book the outcome before replying, in one short critical section.
            let mut ledger = self.shared.ledger();
            ledger.count_fault(fault);
            match fault {
                Fault::None => {
                    ledger.count_status(200);
                    ledger.bill(key, self.model.as_deref(), prompt, completion, cost);
                }
                Fault::Fail(status) => ledger.count_status(status),
                Fault::Malformed => ledger.count_status(200),
                Fault::Reset | Fault::Hang => {}
            }
        }
        match fault {
            Fault::None if self.stream => {
                let mut response = Response::new(Body::from_stream(futures_util::stream::iter(
                    reply::stream_chunks(&body)
                        .into_iter()
                        .map(Ok::<_, std::convert::Infallible>),
                )));
                response.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                response.headers_mut().extend(headers);
                response
            }
            Fault::None => json_response(StatusCode::OK, &body, headers),
            Fault::Fail(status) => {
                let code =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let message =
                    "The server had an error while processing your request (injected fault)";
                json_response(code, &reply::error(message, "server_error", None), headers)
            }
            Fault::Malformed => {
                let text = body.to_string();
                let cut = Bytes::copy_from_slice(&text.as_bytes()[..text.len() / 2]);
                let mut response = (
                    StatusCode::OK,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    cut,
                )
                    .into_response();
                response.headers_mut().extend(headers);
                response
            }
            Fault::Reset => {
                let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                    Ok(Bytes::from_static(RESET_AFTER)),
                    Err(std::io::Error::other("injected connection reset")),
                ];
                let mut response =
                    Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
                response.headers_mut().extend(headers);
                response
            }
            Fault::Hang => {
                tokio::time::sleep(HANG).await;
                json_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    &reply::error("hung (injected fault)", "server_error", None),
                    headers,
                )
            }
        }
    }
}

/// Holds a key's in-flight slot until the reply is built (or the request is dropped).
struct InFlight<'a> {
    shared: &'a Shared,
    key: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.ledger().leave(self.key);
    }
}

/// OpenRouter's headers on a 429: limit, nothing remaining, reset as epoch milliseconds.
fn openrouter_headers(
    limit: Option<u64>,
    retry_after: Duration,
    request_id: &str,
) -> Vec<(HeaderName, HeaderValue)> {
    // `checked_add`: a retry-after of years (a huge bucket) must not overflow the clock.
    let reset_ms = match std::time::SystemTime::now().checked_add(retry_after) {
        Some(reset) => reset
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        None => u128::MAX,
    };
    [
        header("x-request-id", request_id.to_string()),
        header("X-RateLimit-Limit", limit.unwrap_or(0).to_string()),
        header("X-RateLimit-Remaining", "0".to_string()),
        header("X-RateLimit-Reset", reset_ms.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The limits' window as words: "minute" for the default, else a Go duration
/// (`2s`, `1m30s`), as OpenRouter's key endpoint writes its interval.
fn interval(window: Duration) -> String {
    if window == DEFAULT_WINDOW {
        "1m".to_string()
    } else {
        reply::go_duration(window)
    }
}

/// `GET /v1/key`: OpenRouter's key-info endpoint, so a client can read its limits.
async fn key_info(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let Some(key) = bearer(&headers) else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &reply::error("No API key provided", "invalid_request_error", None),
            Vec::new(),
        );
    };
    let config = &shared.config;
    let label = key_label(key);
    let credit = config.key_credits.get(&label).copied();
    let billed = shared.ledger().billed(key);
    let body = json!({"data": {
        "label": format!("mock key …{label}"),
        "limit": credit,
        "limit_remaining": credit.map(|c| c.saturating_sub(billed)),
        "usage": billed,
        "is_free_tier": false,
        "rate_limit": {"requests": config.rpm, "interval": interval(config.window())},
    }});
    json_response(StatusCode::OK, &body, Vec::new())
}

/// The model list, priced as OpenRouter prices it: decimal strings in USD per token.
async fn models(State(shared): State<Arc<Shared>>) -> Response {
    shared.ledger().count_model_list();
    let per_token = |per_million: f64| format!("{}", per_million / 1_000_000.0);
    let data: Vec<Value> = shared
        .config
        .model_prices
        .iter()
        .map(|(id, prompt, completion)| {
            json!({"id": id, "object": "model", "created": 0, "owned_by": "volley-mock",
                "pricing": {"prompt": per_token(*prompt), "completion": per_token(*completion),
                    "request": "0", "input_cache_read": per_token(*prompt)}})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
        Vec::new(),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut arrival = Arrival::new(&shared, &headers);
    let request = match arrival.json(&body) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    arrival.stream = request.get("stream") == Some(&Value::Bool(true));
    if let Some(model) = request.get("model").and_then(Value::as_str) {
        // Counted before the body is checked further: a 400 was still sent to the model.
        shared.ledger().count_model_request(model);
        arrival.model = Some(model.to_owned());
    }
    let Some(messages) = request
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return arrival.refuse(
            StatusCode::BAD_REQUEST,
            "'messages' is a required property and must be a non-empty array",
            "invalid_request_error",
        );
    };
    let part = Part::cast(&shared.config, &request, messages, &mut arrival.dice);
    let planned = reply::chat(&request, messages, part, arrival.n, unix_now());
    let (prompt, completion) = (planned.prompt_tokens, planned.completion_tokens);
    arrival
        .answer(planned.into_body(), prompt, completion)
        .await
}

async fn embeddings(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrival = Arrival::new(&shared, &headers);
    let request = match arrival.json(&body) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let Some((reply, tokens)) = reply::embeddings(&request) else {
        return arrival.refuse(
            StatusCode::BAD_REQUEST,
            "'input' is a required property: a string or an array of strings",
            "invalid_request_error",
        );
    };
    arrival.answer(reply, tokens, 0).await
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    json_response(StatusCode::OK, &shared.ledger().stats(), Vec::new())
}

async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    *shared.ledger() = Ledger::new(Limits::new(&shared.config));
    json_response(StatusCode::OK, &json!({"ok": true}), Vec::new())
}
