//! What OpenRouter will say about a key before the run starts (SPEC §6, issue 3):
//! `GET /key` gives its credit limit, what is left, and whether it is on the free tier.
//! Best effort: a run never fails because this could not be read.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::transport::{ApiKey, Transport};

/// How long the key lookup may take before the run goes on without it.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A key's standing, as `GET /api/v1/key` reports it (credits in USD).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyInfo {
    /// The credit limit set on the key; `None` means no per-key limit.
    pub limit: Option<f64>,
    pub limit_remaining: Option<f64>,
    /// Credits used so far.
    pub usage: Option<f64>,
    pub is_free_tier: Option<bool>,
}

/// True for base URLs that are OpenRouter's.
pub fn is_openrouter(base_url: &str) -> bool {
    base_url.contains("openrouter.ai")
}

/// Reads a key's info; `None` if it cannot be had.
pub async fn key_info(transport: &Transport, key: &ApiKey) -> Option<KeyInfo> {
    let body = transport.get_json("/key", key, LOOKUP_TIMEOUT).await.ok()?;
    parse(&body)
}

fn parse(body: &Value) -> Option<KeyInfo> {
    let data = body.get("data")?;
    let number = |name: &str| data.get(name).and_then(Value::as_f64);
    Some(KeyInfo {
        limit: number("limit"),
        limit_remaining: number("limit_remaining"),
        usage: number("usage"),
        is_free_tier: data.get("is_free_tier").and_then(Value::as_bool),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_key_endpoint() {
        let body = json!({"data": {"label": "sk-or-v1-abc...", "limit": 10.0, "limit_remaining": 2.5,
            "usage": 7.5, "is_free_tier": false, "rate_limit": {"requests": -1, "interval": "10s"}}});
        let info = parse(&body).unwrap();
        assert_eq!(
            info,
            KeyInfo {
                limit: Some(10.0),
                limit_remaining: Some(2.5),
                usage: Some(7.5),
                is_free_tier: Some(false)
            }
        );
        assert_eq!(
            parse(&json!({"data": {"limit": null}})).unwrap().limit,
            None
        );
        assert!(parse(&json!({"error": "x"})).is_none());
        assert!(is_openrouter("https://openrouter.ai/api/v1"));
        assert!(!is_openrouter("http://127.0.0.1:8089/v1"));
    }
}
