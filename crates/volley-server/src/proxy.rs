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
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;
use volley_core::engine::waiting::{StreamReceiver, Waiting};
use volley_core::engine::{Engine, INTERACTIVE_PRIORITY, Source, SourceSpec, Ticket};
use volley_core::input::job::{Fingerprint, Job};
use volley_core::provider::classify::Reason;
use volley_core::store::Outcome;

use crate::App;
use crate::auth::Tenant;
use crate::error::ApiError;

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
}

impl Proxy {
    pub fn new(engine: Engine, max_wait: Duration) -> Proxy {
        Proxy {
            engine,
            max_wait,
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
    body: Bytes,
) -> Result<Response, ApiError> {
    let proxy = &app.proxy;
    let path = uri
        .path_and_query()
        .map_or(uri.path(), |p| p.as_str())
        .strip_prefix("/v1")
        .unwrap_or("/")
        .to_string();
    #[derive(serde::Deserialize)]
    struct Peek {
        model: Option<serde_json::Value>,
        stream: Option<serde_json::Value>,
    }
    let peek: Peek = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the body must be a JSON object: {e}")))?;
    let model = peek
        .model
        .as_ref()
        .and_then(|m| m.as_str())
        .map(Arc::<str>::from);
    let stream = peek.stream.as_ref().and_then(|s| s.as_bool()) == Some(true);
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
        upstream: 0,
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
        None => whole(ticket.await, proxy.max_wait),
        Some(receiver) => streamed(ticket, receiver, proxy.max_wait).await,
    }
}

/// A streamed request's reply: the stream as it comes, once the provider answered
/// with one; else whatever ended it (an error, a reply that was no stream).
async fn streamed(
    ticket: Ticket,
    receiver: StreamReceiver,
    max_wait: Duration,
) -> Result<Response, ApiError> {
    let StreamReceiver { head, mut chunks } = receiver;
    // Boxed, so it can be polled here and then moved into the body.
    let mut ticket = std::future::IntoFuture::into_future(ticket);
    let head = tokio::select! {
        biased;
        head = head => head.ok(),
        ended = &mut ticket => return whole(ended, max_wait),
    };
    let Some(head) = head else {
        return whole(ticket.await, max_wait);
    };
    // The ticket rides with the body: a client that goes away drops both, and the
    // engine drops the request with them.
    let mut ticket = Some(ticket);
    let body = futures_util::stream::poll_fn(move |cx| {
        let polled = chunks.poll_recv(cx);
        if let std::task::Poll::Ready(None) = polled {
            ticket.take();
        }
        polled.map(|chunk| chunk.map(Ok::<_, std::convert::Infallible>))
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
fn whole(
    ended: Result<Outcome, volley_core::engine::Unfinished>,
    max_wait: Duration,
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
            let mut response = Body::from(r.body).into_response();
            *response.status_mut() =
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
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
    let body = Bytes::from(list.to_string());
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
