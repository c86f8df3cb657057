//! The engine's flags (`EngineArgs`) turned into an engine configuration and a target:
//! shared by `volley run` and `volley serve`, so both send the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use volley_core::accounting::pricing::Pricing;
use volley_core::defaults;
use volley_core::engine::EngineConfig;
use volley_core::engine::retry::RetryPolicy;
use volley_core::limits::lanes::LaneLayout;
use volley_core::provider::transport::ApiKey;
use volley_core::runner::Target;
use volley_mock::{MockConfig, MockServer};

use crate::cli::{EngineArgs, Lanes};

/// The key sent to the built-in mock: never a real one, so `--mock` cannot leak a key.
const MOCK_KEY: &str = "volley-mock-key";

/// The built-in mock answers like a quick hosted model (0.1–0.3 s), so a demo run
/// shows its progress the way a real one would.
const MOCK_LATENCY_MS: u64 = 100;
const MOCK_JITTER_MS: u64 = 200;

/// The keys to send with: the mock's, or those the environment holds.
pub fn keys(args: &EngineArgs) -> Result<Vec<ApiKey>, String> {
    if args.mock {
        return ApiKey::new(MOCK_KEY.into())
            .map(|k| vec![k])
            .ok_or_else(|| "the mock key is not a valid header".to_string());
    }
    resolve_keys(&args.api_key_env)
}

/// Flags that cannot work together, said before anything starts.
pub fn check(args: &EngineArgs) -> Result<(), String> {
    if args.initial_backoff > args.max_backoff {
        return Err(format!(
            "--initial-backoff ({}) is larger than --max-backoff ({})",
            args.initial_backoff, args.max_backoff
        ));
    }
    Ok(())
}

/// The `--pricing` file, if one was given.
pub fn pricing(args: &EngineArgs) -> anyhow::Result<Option<Arc<Pricing>>> {
    Ok(match &args.pricing {
        Some(path) => Some(Arc::new(Pricing::load(path)?)),
        None => None,
    })
}

/// Where requests go: the built-in mock (started on a free loopback port) with
/// `--mock`, else `--base-url`. The mock, if any, is the caller's to shut down.
pub async fn upstream(args: &EngineArgs) -> anyhow::Result<(Option<MockServer>, String)> {
    if !args.mock {
        return Ok((None, args.base_url.clone()));
    }
    let mock = start_mock().await?;
    let url = mock.base_url();
    Ok((Some(mock), url))
}

/// The built-in mock on a free loopback port (`--mock`).
async fn start_mock() -> anyhow::Result<MockServer> {
    let config = MockConfig {
        latency_ms: MOCK_LATENCY_MS,
        jitter_ms: MOCK_JITTER_MS,
        ..MockConfig::default()
    };
    let server = MockServer::start(config, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("cannot start the built-in mock")?;
    tracing::info!("built-in mock serving {}", server.base_url());
    Ok(server)
}

pub fn config(args: &EngineArgs, pricing: Option<Arc<Pricing>>, grace: Duration) -> EngineConfig {
    EngineConfig {
        concurrency: args.concurrency,
        retry: RetryPolicy {
            max_retries: args.max_retries,
            max_empty_retries: args.max_empty_retries,
            initial_backoff: Duration::from_secs_f64(args.initial_backoff),
            max_backoff: Duration::from_secs_f64(args.max_backoff),
            max_wait: Duration::from_secs_f64(args.max_wait),
        },
        timeout: Duration::from_secs_f64(args.timeout),
        grace,
        // With a limit of its own the engine is paced; without one it finds the provider's.
        adaptive: args.rpm.is_none() && args.tpm.is_none(),
        pricing,
        clients_first: false,
        // A test hook, compiled into debug builds only (see `EngineConfig`).
        debug_panic_on: if cfg!(debug_assertions) {
            std::env::var("VOLLEY_DEBUG_PANIC_ON").ok().map(Into::into)
        } else {
            None
        },
    }
}

/// Where requests go: `base_url` (the flag's, or the built-in mock's) with `keys`.
pub fn target(args: &EngineArgs, base_url: String, keys: Vec<ApiKey>) -> Target {
    let openrouter = volley_core::provider::openrouter::is_openrouter(&base_url);
    Target {
        base_url,
        keys,
        rpm: args.rpm,
        tpm: args.tpm,
        lanes: args.lanes.map(|l| match l {
            Lanes::Key => LaneLayout::PerKey,
            Lanes::KeyModel => LaneLayout::PerKeyModel,
            Lanes::Account => LaneLayout::PerAccount,
        }),
        key_info: args.key_info || openrouter,
        fetch_prices: args.fetch_prices || openrouter,
        cache_dir: cache_dir(),
    }
}

/// `$XDG_CACHE_HOME/volley`, else `~/.cache/volley`: where the model list is kept.
fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("volley"))
}

/// Reads the keys from the environment, naming only the variables in errors.
fn resolve_keys(names: &[String]) -> Result<Vec<ApiKey>, String> {
    let key_from = |name: &str| -> Result<ApiKey, String> {
        let value = std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let value = value.ok_or_else(|| format!("the variable {name} is not set or empty"))?;
        ApiKey::new(value)
            .ok_or_else(|| format!("the variable {name} holds characters a key cannot have"))
    };
    if names.is_empty() {
        let found = defaults::API_KEY_ENVS
            .iter()
            .find(|n| std::env::var(n).is_ok_and(|v| !v.trim().is_empty()));
        return match found {
            Some(name) => key_from(name).map(|k| vec![k]),
            None => Err(format!(
                "no API key: set {} (or {}), name another variable with --api-key-env NAME, or try --mock",
                defaults::API_KEY_ENVS[0],
                defaults::API_KEY_ENVS[1]
            )),
        };
    }
    names
        .iter()
        .map(|n| key_from(n).map_err(|e| format!("--api-key-env {n}: {e}")))
        .collect()
}
