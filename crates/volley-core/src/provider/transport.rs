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

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// An HTTP client bound to one base URL.
#[derive(Debug, Clone)]
pub struct Transport {
    client: reqwest::Client,
    base_url: String,
    /// Parsed URLs by path: parsing (with IDNA checks) on every request showed up in
    /// profiles, and a batch has only a handful of distinct paths.
    urls: Arc<RwLock<HashMap<Box<str>, reqwest::Url>>>,
    /// Sent with every request (a provider's attribution or routing headers).
    extra: http::HeaderMap,
}

impl Transport {
    /// `max_connections` sizes the idle pool so thousands of in-flight requests reuse
    /// connections instead of re-handshaking. The pool keeps twice that many: a
    /// connection goes back to it a moment after its attempt's slot is freed, and a
    /// pool of exactly the concurrency would close it while a new one opens (334 new
    /// connections per 20,000 requests at concurrency 256; 260 with the margin).
    pub fn new(base_url: &str, max_connections: usize) -> Result<Transport, TransportError> {
        let base_url = base_url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| TransportError::BaseUrl {
            url: base_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(TransportError::BaseUrl {
                url: base_url,
                reason: "the scheme must be http or https".into(),
            });
        }
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(max_connections.saturating_mul(2))
            .user_agent(concat!("volley/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Client(e.to_string()))?;
        Ok(Transport {
            client,
            base_url,
            urls: Arc::default(),
            extra: http::HeaderMap::new(),
        })
    }

    /// The same transport, sending `headers` with every request. They never replace
    /// the key's `Authorization` or the body's `Content-Type`.
    pub fn with_headers(mut self, mut headers: http::HeaderMap) -> Transport {
        // Extra headers may carry secrets (Azure's `api-key`): never shown by `Debug`.
        for value in headers.values_mut() {
            value.set_sensitive(true);
        }
        self.extra = headers;
        self.extra.remove(http::header::AUTHORIZATION);
        self.extra.remove(http::header::CONTENT_TYPE);
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// POSTs `body` to `base_url + path` and reads the whole reply, all within `timeout`.
    pub async fn send(
        &self,
        path: &str,
        body: Bytes,
        key: &ApiKey,
        timeout: Duration,
    ) -> Result<Reply, TransportFailure> {
        let url = self.url(path)?;
        let attempt = async {
            let response = self
                .client
                .post(url)
                .headers(self.extra.clone())
                .header(http::header::AUTHORIZATION, key.header.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .map_err(describe)?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(describe)?;
            Ok(Reply {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(TransportFailure::Timeout),
        }
    }
}

impl Transport {
    /// GETs `base_url + path` as JSON: for side requests such as OpenRouter's key info.
    pub async fn get_json(
        &self,
        path: &str,
        key: &ApiKey,
        timeout: Duration,
    ) -> Result<serde_json::Value, TransportFailure> {
        let url = self.url(path)?;
        let request = async {
            let response = self
                .client
                .get(url)
                .header(http::header::AUTHORIZATION, key.header.clone())
                .send()
                .await
                .map_err(describe)?;
            let status = response.status();
            let body = response.bytes().await.map_err(describe)?;
            if !status.is_success() {
                return Err(TransportFailure::Connection(format!("HTTP {status}")));
            }
            serde_json::from_slice(&body)
                .map_err(|e| TransportFailure::Connection(format!("not JSON: {e}")))
        };
        tokio::time::timeout(timeout, request)
            .await
            .unwrap_or(Err(TransportFailure::Timeout))
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, TransportFailure> {
        if let Some(url) = self
            .urls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
        {
            return Ok(url.clone());
        }
        let joined = format!("{}{}", self.base_url, path);
        let url = reqwest::Url::parse(&joined)
            .map_err(|e| TransportFailure::Connection(format!("invalid URL {joined:?}: {e}")))?;
        self.urls
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.into(), url.clone());
        Ok(url)
    }
}

/// A reqwest error as a failure with its causes; reqwest never puts headers (and so
/// never the key) in its messages.
fn describe(e: reqwest::Error) -> TransportFailure {
    if e.is_timeout() {
        return TransportFailure::Timeout;
    }
    let mut causes = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        causes.push_str(": ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
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
