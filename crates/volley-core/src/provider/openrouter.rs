//! What OpenRouter will say before the run starts: `GET /key` gives a key's credit
//! limit, what is left, and whether it is on the free tier (SPEC §6); `GET /models`
//! gives every model's prices (SPEC §4). Best effort: a run never fails because these
//! could not be read.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;

use crate::accounting::pricing::Pricing;
use crate::provider::transport::{ApiKey, Transport};

/// How long the key lookup may take before the run goes on without it.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The model list is about a megabyte: give it longer.
const MODELS_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a cached model list is used before it is fetched again.
pub const PRICES_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Where a model list's prices came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PricesSource {
    Provider,
    /// A copy on disk younger than [`PRICES_MAX_AGE`].
    Cache,
    /// An older copy on disk, used because the provider could not be reached.
    StaleCache,
}

/// The provider's model prices (`GET /models`), from `cache_dir` when a copy there is
/// fresh; a fetched list is saved there. `None` when neither gives any price.
pub async fn model_prices(
    transport: &Transport,
    key: &ApiKey,
    base_url: &str,
    cache_dir: Option<&Path>,
) -> Option<(Pricing, PricesSource)> {
    let cache = cache_dir.map(|dir| {
        dir.join(format!(
            "models-{:016x}.json",
            crate::input::ids::id_hash(base_url.trim_end_matches('/'))
        ))
    });
    let cached = cache.as_deref().and_then(read_cache);
    if let Some((prices, age)) = &cached
        && *age < PRICES_MAX_AGE
    {
        return Some((prices.clone(), PricesSource::Cache));
    }
    let fetched = transport
        .get_json("/models", key, MODELS_TIMEOUT)
        .await
        .ok()
        .map(|body| (Pricing::from_model_list(&body), body))
        .filter(|(prices, _)| !prices.is_empty());
    match (fetched, cached) {
        (Some((prices, body)), _) => {
            if let Some(path) = &cache {
                save_cache(path, &body);
            }
            Some((prices, PricesSource::Provider))
        }
        (None, Some((prices, _))) => Some((prices, PricesSource::StaleCache)),
        (None, None) => None,
    }
}

fn read_cache(path: &Path) -> Option<(Pricing, Duration)> {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())?;
    let body: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let prices = Pricing::from_model_list(&body);
    (!prices.is_empty()).then_some((prices, age))
}

/// Writes the list beside its final name and renames it, so a reader never sees half.
/// A cache that cannot be written is only a slower next start.
fn save_cache(path: &Path, body: &Value) {
    let Some(dir) = path.parent() else { return };
    let tmp: PathBuf = path.with_extension("json.tmp");
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, body.to_string()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::debug!("cannot cache the model list at {}: {e}", path.display());
    }
}

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
