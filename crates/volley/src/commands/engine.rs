//! The engine's flags (`EngineArgs`) and the configuration file's providers and models
//! turned into an engine configuration, its targets and its routes: shared by
//! `volley run` and `volley serve`, so both send the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use volley_config::{ConfigFile, KeyPath};
use volley_core::accounting::pricing::Pricing;
use volley_core::defaults;
use volley_core::engine::EngineConfig;
use volley_core::engine::retry::RetryPolicy;
use volley_core::limits::lanes::LaneLayout;
use volley_core::provider::routes::{Route, Routes};
use volley_core::provider::transport::ApiKey;
use volley_core::runner::{Target, TpmCeiling};
use volley_mock::{MockConfig, MockServer};

use crate::cli::{EngineArgs, Lanes};

/// The key sent to the built-in mock: never a real one, so `--mock` cannot leak a key.
const MOCK_KEY: &str = "volley-mock-key";

/// The built-in mock answers like a quick hosted model (0.1–0.3 s), so a demo run
/// shows its progress the way a real one would.
const MOCK_LATENCY_MS: u64 = 100;
const MOCK_JITTER_MS: u64 = 200;

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

/// Where requests go, as the flags and the configuration file say, resolved before
/// anything starts: keys read, routes built.
///
/// Without `[providers]` in the file there is one upstream, the one the flags describe
/// (`--base-url`, `--api-key-env`, `--rpm`, `--tpm`, `--lanes`). With providers there
/// is one upstream per provider, in the file's order, and the first is the default
/// upstream: lines that name no configured model go there. `--rpm`, `--tpm` and
/// `--lanes` then apply to every provider, over its own (flags win over the file);
/// `--base-url` and `--api-key-env` are refused, as each provider names its own.
/// `--mock` sends every provider to the one built-in mock, without keys.
pub struct Upstreams {
    /// One per upstream of the engine, in order.
    targets: Vec<Target>,
    /// Configured models: which upstream serves each, with which id and settings.
    pub routes: Arc<Routes>,
    /// `--mock`: every target goes to the built-in mock, started by [`Upstreams::start`].
    mock: bool,
    /// `--key-info` and `--fetch-prices`: on by default for OpenRouter, which is known
    /// only once each target's base URL is final.
    key_info: bool,
    fetch_prices: bool,
    /// `--tpm` was given: it is every upstream's ceiling, not a provider's own.
    tpm_flag: bool,
}

impl Upstreams {
    /// Reads every upstream's keys from the environment (naming only the variables in
    /// errors) and builds the routes of the file's models. Starts nothing.
    pub fn resolve(args: &EngineArgs, file: Option<&ConfigFile>) -> anyhow::Result<Upstreams> {
        let providers = file.map_or(&[][..], |f| f.providers.as_slice());
        let targets = match file {
            Some(file) if !providers.is_empty() => provider_targets(args, file)?,
            _ => {
                let keys = match args.mock {
                    true => mock_keys()?,
                    false => resolve_keys(&args.api_key_env).map_err(anyhow::Error::msg)?,
                };
                vec![Target {
                    name: String::new(),
                    base_url: args.base_url.clone(),
                    keys,
                    headers: http::HeaderMap::new(),
                    rpm: args.rpm,
                    tpm: args.tpm,
                    lanes: args.lanes.map(lane_layout),
                    key_info: false,
                    fetch_prices: false,
                    cache_dir: cache_dir(),
                }]
            }
        };
        let mut routes = Routes::new();
        for model in file.map_or(&[][..], |f| f.models.as_slice()) {
            routes.insert(
                model.name.clone(),
                Route {
                    model: model.id.clone(),
                    upstream: model.upstream,
                    fields: model.request_fields(),
                },
            );
        }
        Ok(Upstreams {
            targets,
            routes: Arc::new(routes),
            mock: args.mock,
            key_info: args.key_info,
            fetch_prices: args.fetch_prices,
            tpm_flag: args.tpm.is_some(),
        })
    }

    /// Each upstream's tokens-per-minute ceiling, by index, for the input's checks.
    pub fn tpm(&self) -> Vec<Option<TpmCeiling>> {
        self.targets
            .iter()
            .map(|t| {
                let set_by = match self.tpm_flag || t.name.is_empty() {
                    true => "--tpm".to_string(),
                    false => format!("{}.tpm", KeyPath::root().key("providers").key(&t.name)),
                };
                t.tpm.map(|tokens| TpmCeiling { tokens, set_by })
            })
            .collect()
    }

    /// The targets ready to connect ([`Target::connect_all`]), after starting the
    /// built-in mock with `--mock`; the mock, if any, is the caller's to shut down.
    pub async fn start(self) -> anyhow::Result<(Vec<Target>, Option<MockServer>)> {
        let mock = match self.mock {
            true => Some(start_mock().await?),
            false => None,
        };
        let targets = self
            .targets
            .into_iter()
            .map(|mut target| {
                if let Some(mock) = &mock {
                    target.base_url = mock.base_url();
                }
                let openrouter = volley_core::provider::openrouter::is_openrouter(&target.base_url);
                target.key_info = self.key_info || openrouter;
                target.fetch_prices = self.fetch_prices || openrouter;
                target
            })
            .collect();
        Ok((targets, mock))
    }
}

/// One target per configured provider, its keys read from the variables it names.
fn provider_targets(args: &EngineArgs, file: &ConfigFile) -> anyhow::Result<Vec<Target>> {
    let config = file.path.display();
    if args.base_url != defaults::BASE_URL {
        anyhow::bail!(
            "--base-url (or VOLLEY_BASE_URL, or base_url in [run]/[serve]) cannot be combined with the providers of {config}: each provider has its own base_url (--mock sends them all to the built-in mock)"
        );
    }
    if !args.api_key_env.is_empty() {
        anyhow::bail!(
            "--api-key-env cannot be combined with the providers of {config}: each provider names its keys with api_key_env"
        );
    }
    let providers = KeyPath::root().key("providers");
    file.providers
        .iter()
        .map(|p| {
            let at = providers.key(&p.name);
            let keys = match args.mock {
                true => mock_keys()?,
                false => p
                    .api_key_env
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        key_from(name)
                            .map_err(|e| file.error_at(&at.key("api_key_env").index(i), e))
                    })
                    .collect::<Result<_, _>>()?,
            };
            let mut headers = http::HeaderMap::new();
            for (name, value) in &p.headers {
                // Checked when the file was loaded.
                let header = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| file.error_at(&at.key("headers").key(name), e.to_string()))?;
                let value = http::HeaderValue::from_str(value)
                    .map_err(|e| file.error_at(&at.key("headers").key(name), e.to_string()))?;
                headers.append(header, value);
            }
            Ok(Target {
                name: p.name.clone(),
                base_url: p.base_url.clone(),
                keys,
                headers,
                rpm: args.rpm.or(p.rpm),
                tpm: args.tpm.or(p.tpm),
                lanes: args
                    .lanes
                    .map(lane_layout)
                    .or(p.lanes.map(configured_layout)),
                key_info: false,
                fetch_prices: false,
                cache_dir: cache_dir(),
            })
        })
        .collect()
}

/// The key sent to the built-in mock.
fn mock_keys() -> anyhow::Result<Vec<ApiKey>> {
    ApiKey::new(MOCK_KEY.into())
        .map(|k| vec![k])
        .ok_or_else(|| anyhow::anyhow!("the mock key is not a valid header"))
}

fn lane_layout(lanes: Lanes) -> LaneLayout {
    match lanes {
        Lanes::Key => LaneLayout::PerKey,
        Lanes::KeyModel => LaneLayout::PerKeyModel,
        Lanes::Account => LaneLayout::PerAccount,
    }
}

fn configured_layout(lanes: volley_config::Lanes) -> LaneLayout {
    match lanes {
        volley_config::Lanes::Key => LaneLayout::PerKey,
        volley_config::Lanes::KeyModel => LaneLayout::PerKeyModel,
        volley_config::Lanes::Account => LaneLayout::PerAccount,
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

/// The key the variable `name` holds; errors name only the variable.
fn key_from(name: &str) -> Result<ApiKey, String> {
    let value = std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let value = value.ok_or_else(|| format!("the variable {name} is not set or empty"))?;
    ApiKey::new(value)
        .ok_or_else(|| format!("the variable {name} holds characters a key cannot have"))
}

/// Reads the keys of `--api-key-env` from the environment, naming only the variables
/// in errors.
fn resolve_keys(names: &[String]) -> Result<Vec<ApiKey>, String> {
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
