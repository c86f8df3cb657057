//! Sends one attempt over HTTP and reads the whole reply within the timeout.
//!
//! The transport knows nothing about retries or meaning: it returns a status, headers and
//! body, or a [`TransportFailure`]. API keys travel only in the `Authorization` header and
//! never appear in anything this module returns.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

use crate::provider::classify::TransportFailure;

/// An API key. Its value is never printed: `Debug` shows only that it is hidden, so a
/// key cannot leak through a log line or a panic message. It is kept as the ready-made
/// `Authorization` header value, marked sensitive so HTTP tooling will not log it either.
#[derive(Clone)]
pub struct ApiKey {
    header: http::HeaderValue,
    /// The searcher for the secret in replies, built once rather than per reply;
    /// `None` for a key too short to look for (see [`ApiKey::redact`]).
    finder: Option<memchr::memmem::Finder<'static>>,
}

impl ApiKey {
    /// `None` if the key cannot be sent in a header (control characters, say).
    pub fn new(secret: String) -> Option<ApiKey> {
        let secret = secret.trim();
        let mut header = http::HeaderValue::from_str(&format!("Bearer {secret}")).ok()?;
        header.set_sensitive(true);
        let finder = (secret.len() >= REDACTED_KEY_MIN)
            .then(|| memchr::memmem::Finder::new(secret.as_bytes()).into_owned());
        Some(ApiKey { header, finder })
    }
}

impl ApiKey {
    /// `body` with every occurrence of this key replaced by `label`, when it holds one:
    /// providers echo keys in their errors ("Incorrect API key provided: sk-…"), and a
    /// body is written to ERRORS and its message to the log. Keys shorter than
    /// [`REDACTED_KEY_MIN`] are left alone, as replacing them would mangle ordinary text.
    pub fn redact(&self, body: &[u8], label: &str) -> Option<Bytes> {
        let finder = self.finder.as_ref()?;
        let secret_len = finder.needle().len();
        let first = finder.find(body)?;
        let mut out = Vec::with_capacity(body.len());
        let mut rest = body;
        let mut at = Some(first);
        while let Some(i) = at {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(label.as_bytes());
            rest = &rest[i + secret_len..];
            at = finder.find(rest);
        }
        out.extend_from_slice(rest);
        Some(out.into())
    }
}

impl ApiKey {
    /// How many bytes at the end of `bytes` could be the start of this key: a stream
    /// redacted chunk by chunk holds them back until the next chunk says.
    pub fn partial_at_end(&self, bytes: &[u8]) -> usize {
        let Some(finder) = &self.finder else {
            return 0;
        };
        let secret = finder.needle();
        (1..secret.len().min(bytes.len() + 1))
            .rev()
            .find(|&n| bytes.ends_with(&secret[..n]))
            .unwrap_or(0)
    }
}

/// The shortest key that [`ApiKey::redact`] looks for in replies.
pub const REDACTED_KEY_MIN: usize = 8;

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

/// A complete HTTP reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The provider's request id (`x-request-id`), for the output's `request_id`.
    pub fn request_id(&self) -> Option<&str> {
        self.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
    }
}

/// What [`Transport::send_streamed`] got back.
pub enum Sent {
    /// A reply read whole: an error, or a reply that is not a stream.
    Whole(Reply),
    /// A 2xx stream of server-sent events, its body still to come.
    Stream(StreamReply),
}

/// A streamed reply whose status and headers have come, and whose body is arriving.
pub struct StreamReply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: BodyStream,
}

/// A reply's body, not yet read, as the wire that brought it has it.
enum ReplyBody {
    Direct(hyper::body::Incoming),
    Proxied(reqwest::Response),
}

impl ReplyBody {
    /// The whole body.
    async fn whole(self) -> Result<Bytes, TransportFailure> {
        match self {
            ReplyBody::Direct(incoming) => Ok(http_body_util::BodyExt::collect(incoming)
                .await
                .map_err(describe)?
                .to_bytes()),
            ReplyBody::Proxied(response) => response.bytes().await.map_err(describe_reqwest),
        }
    }

    /// The body's chunks as they arrive.
    fn stream(self) -> BodyStream {
        match self {
            ReplyBody::Direct(incoming) => {
                BodyStream(Box::pin(futures_util::TryStreamExt::map_err(
                    http_body_util::BodyDataStream::new(incoming),
                    describe,
                )))
            }
            ReplyBody::Proxied(response) => BodyStream(Box::pin(
                futures_util::TryStreamExt::map_err(response.bytes_stream(), describe_reqwest),
            )),
        }
    }
}

/// The chunks of a reply's body as they arrive.
pub struct BodyStream(
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, TransportFailure>> + Send>>,
);

impl BodyStream {
    /// The next chunk; `None` once the body has ended.
    pub async fn next(&mut self) -> Option<Result<Bytes, TransportFailure>> {
        futures_util::StreamExt::next(&mut self.0).await
    }
}

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// An HTTP client bound to one base URL.
///
/// Requests go straight to the provider on hyper's pooled client: the request's URI
/// and headers are built once and cloned, and the reply is read whole. reqwest, which
/// volley used before, parses the URL three times per request, clones the headers four
/// times and wraps each request in retry and redirect layers volley does not use: a
/// fifth of volley's CPU per request against a fast server. A base URL that the
/// environment sends through a proxy (`HTTPS_PROXY`, `ALL_PROXY`, … less `NO_PROXY`)
/// goes through reqwest, which tunnels through it, as before.
#[derive(Debug, Clone)]
pub struct Transport {
    wire: Wire,
    base_url: String,
    /// Request URIs by path, built once: a batch has only a handful of distinct paths.
    uris: Arc<RwLock<HashMap<Box<str>, http::Uri>>>,
    /// Sent with every request: the user agent, and a provider's attribution or
    /// routing headers.
    extra: http::HeaderMap,
}

type Direct = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

/// How requests reach the provider.
#[derive(Clone)]
enum Wire {
    Direct(Box<Direct>),
    Proxied(reqwest::Client),
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Wire::Direct(_) => "Direct",
            Wire::Proxied(_) => "Proxied",
        })
    }
}

/// Request URIs kept built, at most.
const URIS_KEPT: usize = 256;

/// TCP keepalive idle time and probe interval (reqwest's defaults).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

const USER_AGENT: &str = concat!("volley/", env!("CARGO_PKG_VERSION"));

impl Transport {
    /// `max_connections` sizes the idle pool so thousands of in-flight requests reuse
    /// connections instead of re-handshaking. The pool keeps twice that many: a
    /// connection goes back to it a moment after its attempt's slot is freed, and a
    /// pool of exactly the concurrency would close it while a new one opens (334 new
    /// connections per 20,000 requests at concurrency 256; 260 with the margin).
    pub fn new(base_url: &str, max_connections: usize) -> Result<Transport, TransportError> {
        let base_url = base_url.trim_end_matches('/').to_string();
        let invalid = |reason: String| TransportError::BaseUrl {
            url: base_url.clone(),
            reason,
        };
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        let uri = to_uri(parsed).map_err(invalid)?;
        let idle = max_connections.saturating_mul(2);
        let proxied = hyper_util::client::proxy::matcher::Matcher::from_system()
            .intercept(&uri)
            .is_some();
        let wire = if proxied {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(idle)
                .build()
                .map_err(|e| TransportError::Client(e.to_string()))?;
            Wire::Proxied(client)
        } else {
            Wire::Direct(Box::new(direct_client(idle)?))
        };
        let mut extra = http::HeaderMap::new();
        extra.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static(USER_AGENT),
        );
        Ok(Transport {
            wire,
            base_url,
            uris: Arc::default(),
            extra,
        })
    }

    /// The same transport, sending `headers` with every request. They never replace
    /// the key's `Authorization` or the body's `Content-Type`.
    pub fn with_headers(mut self, headers: http::HeaderMap) -> Transport {
        // A header given twice comes as its name and then `None` for each later value.
        let mut last: Option<http::HeaderName> = None;
        for (name, mut value) in headers {
            // Extra headers may carry secrets (Azure's `api-key`): never shown by `Debug`.
            value.set_sensitive(true);
            match name {
                Some(name) => {
                    self.extra.insert(name.clone(), value);
                    last = Some(name);
                }
                None => {
                    if let Some(name) = &last {
                        self.extra.append(name.clone(), value);
                    }
                }
            }
        }
        self.extra.remove(http::header::AUTHORIZATION);
        self.extra.remove(http::header::CONTENT_TYPE);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The headers of a POST with `key`: the extra ones, the key's, a JSON body.
    fn post_headers(&self, key: &ApiKey) -> http::HeaderMap {
        let mut headers = self.extra.clone();
        headers.insert(http::header::AUTHORIZATION, key.header.clone());
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers
    }

    /// POSTs `body` to `base_url + path` and reads the whole reply, all within `timeout`.
    pub async fn send(
        &self,
        path: &str,
        body: Bytes,
        key: &ApiKey,
        timeout: Duration,
    ) -> Result<Reply, TransportFailure> {
        let headers = self.post_headers(key);
        let uri = self.uri(path)?;
        self.exchange(http::Method::POST, uri, headers, body, timeout)
            .await
    }

    /// POSTs `body` like [`Transport::send`], but a 2xx reply that is a stream of
    /// server-sent events is handed over as it arrives instead of read whole: the
    /// status and headers within `timeout`, then the body chunk by chunk. Any other
    /// reply is read whole, as `send` reads it.
    pub async fn send_streamed(
        &self,
        path: &str,
        body: Bytes,
        key: &ApiKey,
        timeout: Duration,
    ) -> Result<Sent, TransportFailure> {
        let headers = self.post_headers(key);
        let uri = self.uri(path)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let opened = self.open(http::Method::POST, uri, headers, body);
        let (status, headers, body) = tokio::time::timeout_at(deadline, opened)
            .await
            .map_err(|_| TransportFailure::Timeout)??;
        let is_stream = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"));
        if (200..300).contains(&status) && is_stream {
            return Ok(Sent::Stream(StreamReply {
                status,
                headers,
                body: body.stream(),
            }));
        }
        let body = tokio::time::timeout_at(deadline, body.whole())
            .await
            .map_err(|_| TransportFailure::Timeout)??;
        Ok(Sent::Whole(Reply {
            status,
            headers,
            body,
        }))
    }

    /// GETs `base_url + path` as JSON: for side requests such as OpenRouter's key info.
    pub async fn get_json(
        &self,
        path: &str,
        key: &ApiKey,
        timeout: Duration,
    ) -> Result<serde_json::Value, TransportFailure> {
        let mut headers = self.extra.clone();
        headers.insert(http::header::AUTHORIZATION, key.header.clone());
        let uri = self.uri(path)?;
        let reply = self
            .exchange(http::Method::GET, uri, headers, Bytes::new(), timeout)
            .await?;
        if !(200..300).contains(&reply.status) {
            return Err(TransportFailure::Connection(format!(
                "HTTP {}",
                reply.status
            )));
        }
        serde_json::from_slice(&reply.body)
            .map_err(|e| TransportFailure::Connection(format!("not JSON: {e}")))
    }

    /// Sends one request and reads its whole reply, within `timeout`.
    async fn exchange(
        &self,
        method: http::Method,
        uri: http::Uri,
        headers: http::HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, TransportFailure> {
        let attempt = async {
            let (status, headers, body) = self.open(method, uri, headers, body).await?;
            Ok(Reply {
                status,
                headers,
                body: body.whole().await?,
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TransportFailure::Timeout),
        }
    }

    /// Sends one request; its status and headers once they have come, its body still
    /// to read.
    async fn open(
        &self,
        method: http::Method,
        uri: http::Uri,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Result<(u16, http::HeaderMap, ReplyBody), TransportFailure> {
        match &self.wire {
            Wire::Direct(client) => {
                let mut request = http::Request::new(http_body_util::Full::new(body));
                *request.method_mut() = method;
                *request.uri_mut() = uri;
                *request.headers_mut() = headers;
                let response = client.request(request).await.map_err(describe)?;
                let (parts, incoming) = response.into_parts();
                Ok((
                    parts.status.as_u16(),
                    parts.headers,
                    ReplyBody::Direct(incoming),
                ))
            }
            Wire::Proxied(client) => {
                // Parsed again per request, but only through a proxy, whose hop costs
                // far more than the parse.
                let url = reqwest::Url::parse(&uri.to_string())
                    .map_err(|e| TransportFailure::Connection(format!("invalid URL {uri}: {e}")))?;
                let response = client
                    .request(method, url)
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(describe_reqwest)?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                Ok((status, headers, ReplyBody::Proxied(response)))
            }
        }
    }

    fn uri(&self, path: &str) -> Result<http::Uri, TransportFailure> {
        if let Some(uri) = self
            .uris
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
        {
            return Ok(uri.clone());
        }
        let joined = format!("{}{}", self.base_url, path);
        let uri = reqwest::Url::parse(&joined)
            .map_err(|e| e.to_string())
            .and_then(to_uri)
            .map_err(|e| TransportFailure::Connection(format!("invalid URL {joined:?}: {e}")))?;
        // A batch has a handful of paths; a proxy's clients choose theirs (and their
        // queries): past a bound, URIs are built afresh rather than kept.
        let mut uris = self.uris.write().unwrap_or_else(|p| p.into_inner());
        if uris.len() < URIS_KEPT && !path.contains('?') {
            uris.insert(path.into(), uri.clone());
        }
        Ok(uri)
    }
}

/// A parsed URL as the URI hyper sends to: percent-encoded as a browser would (a space
/// in a path, a non-ASCII host), as reqwest did, and without any `user:pass@`, which
/// must not travel in an HTTP/2 `:authority`.
fn to_uri(mut url: reqwest::Url) -> Result<http::Uri, String> {
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.as_str()
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())
}

/// hyper's pooled client over TCP or TLS (rustls with aws-lc-rs and the platform's
/// certificate verifier, as reqwest's `rustls` feature sets it up), HTTP/1.1 or, where
/// the server offers it over TLS, HTTP/2.
fn direct_client(idle: usize) -> Result<Direct, TransportError> {
    // As reqwest set its sockets up: no Nagle delay on a request written in several
    // parts, and keepalive probes so a connection a NAT dropped while a long completion
    // was generating is noticed, not waited on until the timeout.
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    tcp.set_keepalive_interval(Some(TCP_KEEPALIVE));
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| TransportError::Client(format!("cannot set up TLS: {e}")))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(idle)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .build(tls),
    )
}

/// A hyper error as a failure with its causes; hyper never puts headers (and so never
/// the key) in its messages.
fn describe(e: impl std::error::Error) -> TransportFailure {
    TransportFailure::Connection(with_causes(e.to_string(), &e))
}

fn with_causes(mut message: String, e: &dyn std::error::Error) -> String {
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A reqwest error as a failure with its causes; reqwest never puts headers (and so
/// never the key) in its messages.
fn describe_reqwest(e: reqwest::Error) -> TransportFailure {
    if e.is_timeout() {
        return TransportFailure::Timeout;
    }
    let causes = with_causes(String::new(), &e);
    TransportFailure::Connection(format!("{}{causes}", e.without_url()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_keys_are_redacted() {
        let key = ApiKey::new("sk-or-v1-secret-1234".into()).unwrap();
        let body = Bytes::from_static(
            b"{\"error\":{\"message\":\"Incorrect API key provided: sk-or-v1-secret-1234 (sk-or-v1-secret-1234)\"}}",
        );
        let clean = key.redact(&body, "key#1").unwrap();
        assert_eq!(
            &clean[..],
            b"{\"error\":{\"message\":\"Incorrect API key provided: key#1 (key#1)\"}}"
        );
        assert!(key.redact(&Bytes::from_static(b"{}"), "key#1").is_none());
        let short = ApiKey::new("k1".into()).unwrap();
        assert!(
            short
                .redact(&Bytes::from_static(b"k1k1"), "key#1")
                .is_none()
        );
    }

    #[test]
    fn keys_never_print() {
        let key = ApiKey::new("sk-secret-value".into()).unwrap();
        assert!(ApiKey::new("bad\nkey".into()).is_none());
        assert!(!format!("{key:?}").contains("secret"));
    }

    #[test]
    fn urls_are_encoded_as_reqwest_did_and_carry_no_credentials() {
        let t = Transport::new("http://user:secret@127.0.0.1:1/api v1", 1).unwrap();
        let uri = t.uri("/chat completions").unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:1/api%20v1/chat%20completions"
        );
        let idn = Transport::new("https://bücher.example/v1", 1).unwrap();
        assert_eq!(
            idn.uri("/embeddings").unwrap().host(),
            Some("xn--bcher-kva.example")
        );
    }

    #[test]
    fn a_header_given_twice_keeps_both_values() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-route", http::HeaderValue::from_static("a"));
        headers.append("x-route", http::HeaderValue::from_static("b"));
        let t = Transport::new("http://127.0.0.1:1/v1", 1)
            .unwrap()
            .with_headers(headers);
        let values: Vec<_> = t.extra.get_all("x-route").iter().collect();
        assert_eq!(values, ["a", "b"]);
    }

    #[test]
    fn base_url_is_checked() {
        assert!(Transport::new("ftp://x", 1).is_err());
        assert!(Transport::new("not a url", 1).is_err());
        let t = Transport::new("http://127.0.0.1:1/v1/", 1).unwrap();
        assert_eq!(t.base_url(), "http://127.0.0.1:1/v1");
    }

    #[tokio::test]
    async fn refused_connection_is_a_connection_failure() {
        // Bind then drop a listener so the port is (very likely) closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Transport::new(&format!("http://127.0.0.1:{port}/v1"), 1).unwrap();
        let r = t
            .send(
                "/chat/completions",
                Bytes::from_static(b"{}"),
                &ApiKey::new("k".into()).unwrap(),
                Duration::from_secs(5),
            )
            .await;
        assert!(matches!(r, Err(TransportFailure::Connection(_))), "{r:?}");
    }
}
