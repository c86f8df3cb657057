//! The proxy: `POST /v1/chat/completions`, `/v1/embeddings`, `/v1/responses` and any
//! other `/v1/*` POST go through the engine's lanes, retry policy, key pool and ledger,
//! so every client process shares one rate limit. Requests a client waits on are
//! admitted ahead of batches.
//!
//! The client's `Authorization` is the gateway's own: upstream requests carry the key
//! pool's keys. A request that cannot start within `--proxy-max-wait` gets a 429 with
//! Retry-After; a client that goes away takes its request with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use volley_core::engine::waiting::{StreamReceiver, Waiting};
use volley_core::engine::{Engine, INTERACTIVE_PRIORITY, Source, SourceSpec, Ticket};
use volley_core::input::job::{Fingerprint, Job};
use volley_core::provider::classify::Reason;
use volley_core::provider::routes::Routes;
use volley_core::store::Outcome;

use crate::App;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::idempotency::{self, Claim};
use crate::rows::{IdempotencyRow, PROXY_CALL, ProxyReply};

/// The largest body passed on: a chat request with a few large images inline.
pub const MAX_BODY: usize = 64 << 20;

/// How long the upstream's model list is served from memory.
const MODELS_FRESH: Duration = Duration::from_secs(300);

/// Retry-After of a request that waited too long: the shared limit is busy, so a
/// client that retries at once would only queue again.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// The proxy's sources (one per tenant, so each tenant's figures are its own) and
/// the upstream's cached model list.
pub struct Proxy {
    engine: Engine,
    max_wait: Duration,
    sources: Mutex<HashMap<Arc<str>, Source>>,
    next_id: AtomicU64,
    models: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
    /// Configured models: a call whose `model` names one goes to its upstream.
    routes: Arc<Routes>,
}

impl Proxy {
    pub fn new(engine: Engine, max_wait: Duration, routes: Arc<Routes>) -> Proxy {
        Proxy {
            engine,
            max_wait,
            routes,
            sources: Mutex::default(),
            next_id: AtomicU64::new(1),
            models: tokio::sync::Mutex::new(None),
        }
    }

    /// The tenant's proxy source, opened on its first request.
    fn source(&self, tenant: &Tenant) -> Source {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .entry(tenant.0.clone())
            .or_insert_with(|| {
                self.engine.open(SourceSpec {
                    priority: INTERACTIVE_PRIORITY,
                    ..SourceSpec::new(format!("proxy:{}", tenant.0))
                })
            })
            .clone()
    }

    /// Every tenant's proxy source, for metrics.
    pub fn sources(&self) -> Vec<(Arc<str>, Source)> {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        sources
            .iter()
            .map(|(tenant, source)| (tenant.clone(), source.clone()))
            .collect()
    }
}

/// `POST /v1/{path}`: any other POST under `/v1`, proxied.
pub async fn forward(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge {
            message: format!(
                "the request body is larger than {} MB, the most the gateway passes on",
                MAX_BODY >> 20
            ),
            param: None,
        },
        _ => ApiError::invalid(format!(
            "the request body could not be read: {}",
            e.body_text()
        )),
    })?;
    let proxy = &app.proxy;
    let path = proxied_path(&uri)?;
    #[derive(serde::Deserialize)]
    struct Peek {
        model: Option<serde_json::Value>,
        stream: Option<serde_json::Value>,
    }
    let peek: Peek = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the body must be a JSON object: {e}")))?;
    let stream = peek.stream.as_ref().and_then(|s| s.as_bool()) == Some(true);
    let keyed = match idempotency::key(&headers)? {
        None => None,
        Some(key) => match KeyedCall::claim(&app, &tenant, key, &path, &body).await? {
            Claimed::Replay(reply) => return Ok(reply),
            Claimed::New(call) => Some(call),
        },
    };
    let named = peek.model.as_ref().and_then(|m| m.as_str());
    let routed = match named.and_then(|name| proxy.routes.get(name)) {
        Some(_) => routed(&proxy.routes, &body)?,
        None => None,
    };
    let (body, model, upstream) = match routed {
        Some((body, model, upstream)) => (body, Some(model), upstream),
        None => (body, named.map(Arc::<str>::from), 0),
    };
    let start_by = Instant::now() + proxy.max_wait;
    let (waiting, receiver) = if stream {
        let (waiting, receiver) = Waiting::streamed(Some(start_by));
        (waiting, Some(receiver))
    } else {
        (Waiting::new(Some(start_by)), None)
    };
    let job = Job {
        custom_id: Arc::from(format!(
            "proxy-{}",
            proxy.next_id.fetch_add(1, Ordering::Relaxed)
        )),
        line: 0,
        fingerprint: Fingerprint::of(&path, &body),
        path: Arc::from(path.as_str()),
        body,
        model,
        upstream,
        tokens: Arc::default(),
        waiting: Some(Arc::new(waiting)),
    };
    let source = proxy.source(&tenant);
    let ticket = match tokio::time::timeout_at(start_by, proxy.engine.submit(&source, job)).await {
        Err(_) => return Err(too_busy(proxy.max_wait)),
        Ok(Err(_)) => {
            return Err(ApiError::Unavailable(
                "the gateway is shutting down; retry against it once it is back".into(),
            ));
        }
        Ok(Ok(ticket)) => ticket,
    };
    match receiver {
        None => whole(ticket.await, proxy.max_wait, keyed).await,
        Some(receiver) => streamed(ticket, receiver, proxy.max_wait, keyed).await,
    }
}

/// A call whose `model` names a configured model, as its upstream is sent it: the
/// model's id and settings filled in (the call's own fields win). The body is parsed
/// whole only then; every other call passes through as the client sent it.
fn routed(routes: &Routes, body: &Bytes) -> Result<Option<(Bytes, Arc<str>, usize)>, ApiError> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body must be a JSON object: {e}")))?;
    let Some(route) = routes.apply(&mut map) else {
        return Ok(None);
    };
    let (model, upstream) = (Arc::<str>::from(route.model.as_str()), route.upstream);
    let bytes = serde_json::to_vec(&map)
        .map_err(|e| ApiError::invalid(format!("the routed body could not be written: {e}")))?;
    Ok(Some((Bytes::from(bytes), model, upstream)))
}

/// A proxied call with an Idempotency-Key, running: its reply is kept for a retry
/// to replay. Dropped without one (the call failed inside the gateway, or its client
/// left mid-stream), the key is forgotten, so a retry runs the call again.
struct KeyedCall {
    app: App,
    tenant: String,
    key: String,
    kept: bool,
}

enum Claimed {
    /// The key was used before for this call: its reply.
    Replay(Response),
    New(KeyedCall),
}

/// The most of a streamed reply kept for a replay: a longer stream is passed on but not
/// kept, and its key forgotten.
const MAX_KEPT_STREAM: usize = 16 << 20;

impl KeyedCall {
    async fn claim(
        app: &App,
        tenant: &Tenant,
        key: String,
        path: &str,
        body: &[u8],
    ) -> Result<Claimed, ApiError> {
        let mut hash = volley_core::input::ids::StableHash::new();
        hash.update(body);
        let request = format!("POST /v1{path} {:016x}", hash.finish());
        let (tenant_name, k) = (tenant.0.to_string(), key.clone());
        let claim = app
            .db
            .write(move |c| {
                idempotency::claim(c, &tenant_name, &k, &request, |_| Ok(PROXY_CALL.into()))
            })
            .await??;
        let tenant_name = tenant.0.to_string();
        if let Claim::Replayed(_) = claim {
            let (t, k) = (tenant_name, key);
            return match app.db.read(move |c| ProxyReply::get(c, &t, &k)).await? {
                Some(reply) => Ok(Claimed::Replay(replay(reply))),
                None => Err(ApiError::InProgress(
                    "a call with this Idempotency-Key is still running; retry in a moment for its reply".into(),
                )),
            };
        }
        Ok(Claimed::New(KeyedCall {
            app: app.clone(),
            tenant: tenant_name,
            key,
            kept: false,
        }))
    }

    /// Keeps the reply for replays, before the client has it: a retry that comes after
    /// the reply finds it.
    async fn keep(mut self, reply: ProxyReply) {
        let (t, k) = (self.tenant.clone(), self.key.clone());
        match self.app.db.write(move |c| reply.put(c, &t, &k)).await {
            Ok(()) => self.kept = true,
            Err(e) => tracing::error!("store: a proxied reply could not be kept: {e}"),
        }
    }
}

impl Drop for KeyedCall {
    fn drop(&mut self) {
        if !self.kept {
            let (t, k) = (self.tenant.clone(), self.key.clone());
            self.app
                .db
                .write_detached(move |c| IdempotencyRow::forget(c, &t, &k));
        }
    }
}

fn replay(reply: ProxyReply) -> Response {
    let mut response = Body::from(reply.body).into_response();
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    if let Ok(value) = HeaderValue::from_str(&reply.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// The path under the upstream's base URL a proxied POST goes to: `/v1/chat/completions`
/// → `/chat/completions`. Only plain segments pass (letters, digits, `-`, `_`, `.`,
/// `:`; never `.` or `..`, never empty, nothing percent-encoded), so no path can climb
/// out of the base URL; and never the gateway's own `files` and `batches`, which must
/// not reach the upstream account's batch API with the pool's key.
fn proxied_path(uri: &axum::http::Uri) -> Result<String, ApiError> {
    let not_found = || ApiError::not_found("route", uri.path());
    let rest = uri.path().strip_prefix("/v1/").ok_or_else(not_found)?;
    let plain = |segment: &str| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    };
    let mut segments = rest.split('/');
    let first = segments.next().unwrap_or_default();
    if !plain(first) || matches!(first, "files" | "batches") || !segments.all(plain) {
        return Err(not_found());
    }
    Ok(match uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    })
}

/// A streamed request's reply: the stream as it comes, once the provider answered
/// with one; else whatever ended it (an error, a reply that was no stream).
async fn streamed(
    ticket: Ticket,
    receiver: StreamReceiver,
    max_wait: Duration,
    keyed: Option<KeyedCall>,
) -> Result<Response, ApiError> {
    let StreamReceiver {
        head,
        mut chunks,
        ended_whole,
    } = receiver;
    // Boxed, so it can be polled here and then moved into the body.
    let mut ticket = std::future::IntoFuture::into_future(ticket);
    let head = tokio::select! {
        biased;
        head = head => head.ok(),
        ended = &mut ticket => return whole(ended, max_wait, keyed).await,
    };
    let Some(head) = head else {
        return whole(ticket.await, max_wait, keyed).await;
    };
    let content_type = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/event-stream")
        .to_string();
    // The ticket rides with the body: a client that goes away drops both, and the
    // engine drops the request with them. A keyed call's stream is kept as it passes,
    // and stored once it has ended whole.
    let mut ticket = Some(ticket);
    let mut keyed = keyed.map(|call| (call, Vec::new()));
    let status = head.status;
    let mut ended = false;
    let body = futures_util::stream::poll_fn(move |cx| {
        if ended {
            return std::task::Poll::Ready(None);
        }
        let polled = chunks.poll_recv(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(chunk))) => {
                if let Some((_, kept)) = &mut keyed {
                    if kept.len() + chunk.len() <= MAX_KEPT_STREAM {
                        kept.extend_from_slice(chunk);
                    } else {
                        keyed = None;
                    }
                }
            }
            // Cut off: nothing to replay.
            std::task::Poll::Ready(Some(Err(_))) => keyed = None,
            std::task::Poll::Ready(None) => {
                ended = true;
                let ticket = ticket.take();
                if !ended_whole.load(std::sync::atomic::Ordering::SeqCst) {
                    // The request was dropped mid-stream (a shutdown): the client must
                    // see the stream cut, not a short complete one.
                    keyed = None;
                    return std::task::Poll::Ready(Some(Err(std::io::Error::other(
                        "the gateway stopped the request before its stream ended",
                    ))));
                }
                if let (Some((call, body)), Some(ticket)) = (keyed.take(), ticket) {
                    // Kept only once the engine has judged the stream whole and good.
                    let reply = ProxyReply {
                        status,
                        content_type: content_type.clone(),
                        body,
                    };
                    tokio::spawn(async move {
                        if ticket.await.is_ok_and(|o| o.error.is_none()) {
                            call.keep(reply).await;
                        }
                    });
                }
            }
            std::task::Poll::Pending => {}
        }
        polled
    });
    let mut response = Body::from_stream(body).into_response();
    *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::OK);
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(value) = head.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    if let Some(id) = head.headers.get("x-request-id") {
        response.headers_mut().insert("x-request-id", id.clone());
    }
    Ok(response)
}

/// A whole reply: the provider's last response as it came (an error status too), or
/// an OpenAI-shaped error when there was none.
async fn whole(
    ended: Result<Outcome, volley_core::engine::Unfinished>,
    max_wait: Duration,
    keyed: Option<KeyedCall>,
) -> Result<Response, ApiError> {
    let outcome = ended.map_err(|_| {
        ApiError::Unavailable("the request was left unfinished: the gateway is stopping".into())
    })?;
    if let Some(failure) = &outcome.error
        && failure.reason == Reason::QueueTimeout
    {
        return Err(too_busy(max_wait));
    }
    match outcome.response {
        Some(r) => {
            if let Some(call) = keyed.filter(|_| worth_replaying(r.status)) {
                let reply = ProxyReply {
                    status: r.status,
                    content_type: r
                        .content_type
                        .clone()
                        .unwrap_or_else(|| "application/json".into()),
                    body: r.body.to_vec(),
                };
                call.keep(reply).await;
            }
            let content_type = r
                .content_type
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
                .unwrap_or(HeaderValue::from_static("application/json"));
            let mut response = Body::from(r.body).into_response();
            *response.status_mut() =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
            if let Some(id) = r.request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
                response.headers_mut().insert("x-request-id", id);
            }
            Ok(response)
        }
        None => {
            let why = outcome.error.map_or_else(
                || "no reply".to_string(),
                |f| format!("{}: {}", f.reason, f.message),
            );
            Err(ApiError::BadGateway(format!(
                "the upstream gave no reply after {} attempt(s): {why}",
                outcome.attempts
            )))
        }
    }
}

/// Whether a reply is the call's answer for good, to replay for its key: a success,
/// or a refusal of the request itself. Not a passing state of the upstream (a 5xx, a
/// 429, a key's 401 or 402), which a retry with the same key must meet afresh.
fn worth_replaying(status: u16) -> bool {
    (200..300).contains(&status)
        || ((400..500).contains(&status) && !matches!(status, 401 | 402 | 408 | 409 | 425 | 429))
}

fn too_busy(max_wait: Duration) -> ApiError {
    ApiError::RateLimited {
        message: format!(
            "the shared rate limit is busy: the request could not start within {:.0} s (--proxy-max-wait); retry after a moment",
            max_wait.as_secs_f64()
        ),
        retry_after_secs: BUSY_RETRY_AFTER_SECS,
    }
}

/// `GET /v1/models`: the upstream's list, fetched with the pool's first key and kept
/// for a few minutes.
pub async fn models(State(app): State<App>) -> Result<Response, ApiError> {
    let proxy = &app.proxy;
    let mut cached = proxy.models.lock().await;
    if let Some((at, body)) = cached.as_ref()
        && at.elapsed() < MODELS_FRESH
    {
        return Ok(json_bytes(body.clone()));
    }
    let upstream = proxy
        .engine
        .upstreams()
        .first()
        .ok_or_else(|| ApiError::BadGateway("no upstream is configured".into()))?;
    let key = upstream
        .lanes
        .keys()
        .first()
        .ok_or_else(|| ApiError::BadGateway("no key is configured".into()))?;
    let list = upstream
        .transport
        .get_json("/models", &key.key, Duration::from_secs(30))
        .await
        .map_err(|e| ApiError::BadGateway(format!("the upstream's model list: {e:?}")))?;
    // Cleaned of the pool's secrets, as every reply is.
    let body = upstream
        .redact(volley_core::provider::transport::Reply {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from(list.to_string()),
        })
        .body;
    *cached = Some((Instant::now(), body.clone()));
    Ok(json_bytes(body))
}

fn json_bytes(body: Bytes) -> Response {
    let mut response = Body::from(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_outside_the_gateways_own_are_proxied() {
        let path = |p: &str| proxied_path(&p.parse().unwrap()).ok();
        assert_eq!(
            path("/v1/chat/completions").as_deref(),
            Some("/chat/completions")
        );
        assert_eq!(
            path("/v1/embeddings?x=1").as_deref(),
            Some("/embeddings?x=1")
        );
        assert_eq!(path("/v1/models/a:b").as_deref(), Some("/models/a:b"));
        for bad in [
            "/v1/../admin/x",
            "/v1/%2e%2e/%2e%2e/admin",
            "/v1/files/",
            "/v1/files/x/content",
            "/v1/batches/batch_x/cancel/",
            "/v1/files/../batches",
            "/v1/chat//completions",
            "/v1/./chat",
            "/v1/",
            "/v2/chat/completions",
        ] {
            assert_eq!(path(bad), None, "{bad}");
        }
    }
}
