//! Sends one attempt over HTTP and reads the whole reply within the timeout.
//!
//! The transport knows nothing about retries or meaning: it returns a status, headers and
//! body, or a [`TransportFailure`]. API keys travel only in the `Authorization` header and
//! never appear in anything this module returns.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;

use crate::classify::TransportFailure;

/// An API key. Its value is never printed: `Debug` and `Display` show only that it is
/// hidden, so a key cannot leak through a log line or a panic message.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(secret: String) -> ApiKey {
        ApiKey(secret)
    }
    /// The value, for the `Authorization` header only.
    fn expose(&self) -> &str {
        &self.0
    }
}

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
}

impl Transport {
    /// `max_connections` sizes the idle pool so thousands of in-flight requests reuse
    /// connections instead of re-handshaking.
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
            .pool_max_idle_per_host(max_connections)
            .user_agent(concat!("volley/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Client(e.to_string()))?;
        Ok(Transport { client, base_url })
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
        let url = format!("{}{}", self.base_url, path);
        let attempt = async {
            let response = self
                .client
                .post(url)
                .bearer_auth(key.expose())
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
    fn keys_never_print() {
        let key = ApiKey::new("sk-secret-value".into());
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
                &ApiKey::new("k".into()),
                Duration::from_secs(5),
            )
            .await;
        assert!(matches!(r, Err(TransportFailure::Connection(_))), "{r:?}");
    }
}
