//! Every default the engine uses, in one place, each with the reason for its value.
//!
//! Flags in the binary take their defaults from here so the CLI help, the README and the
//! engine can never disagree.

use std::time::Duration;

/// Where requests go when no `--base-url` is given: OpenRouter's OpenAI-compatible API.
pub const BASE_URL: &str = "https://openrouter.ai/api/v1";

/// Environment variables tried, in order, when no `--api-key-env` is given (SPEC §2).
pub const API_KEY_ENVS: [&str; 2] = ["OPENROUTER_API_KEY", "OPENAI_API_KEY"];

/// Requests in flight at once. 64 keeps a typical provider busy without tripping
/// per-connection limits; the SPEC fixes it as the default.
pub const CONCURRENCY: usize = 64;

/// Retries after errors per request (SPEC §2). The OpenAI SDK uses 2; batch work is
/// long-running and cheap to retry, so volley is more patient.
pub const MAX_RETRIES: u32 = 5;

/// Retries of a request whose replies come back empty (no content, no tool calls),
/// within `MAX_RETRIES`. An empty answer is mostly the model's answer to that prompt:
/// under greedy decoding a real inference server gave the same empty reply to every
/// one of 6 attempts, and those requests set the run's tail. Two retries still get past
/// a provider's one-off hiccup without paying six times for the same nothing.
pub const MAX_EMPTY_RETRIES: u32 = 2;

/// First backoff step, doubled each retry (SPEC §3).
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);

/// Ceiling of one backoff step (SPEC §3).
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Per-attempt timeout, covering connect, headers and the whole body (SPEC §2).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// A Retry-After longer than this is not slept through: the key is treated as having
/// spent its quota (SPEC §3).
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// Retries after errors allowed across the whole run, as a fraction of requests sent
/// (SPEC §3: 20%). Rate-limit waits are paced, not budgeted.
pub const RETRY_BUDGET_RATIO: f64 = 0.2;

/// Retries the budget always allows, so that a few early failures in a run that has
/// sent only a handful of requests do not exhaust a budget of "20% of 3".
pub const RETRY_BUDGET_FLOOR: u64 = 10;

/// Rate-limited retries of one request, counted apart from `MAX_RETRIES` because a 429
/// is a pacing signal, not a failure; this only stops a provider that answers 429
/// forever with a short Retry-After from holding a request hostage.
pub const MAX_RATE_LIMITED_RETRIES: u32 = 50;

/// Pause of a key after a 429 that names no Retry-After: long enough for a per-second
/// window to roll over, short enough not to idle a per-minute one.
pub const RATE_LIMIT_COOLDOWN: Duration = Duration::from_secs(1);

/// After Ctrl-C, how long in-flight attempts may take to finish before they are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Completion tokens assumed for a request that sets no `max_tokens`, when estimating
/// its cost against a tokens-per-minute limit. Corrected by the real usage afterwards.
pub const COMPLETION_TOKENS_ESTIMATE: u64 = 256;

/// Interval of the one-line summary in log mode (SPEC §7).
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Requests admitted but not finished, as a multiple of the concurrency: requests
/// sleeping in backoff release their connection slot, and this bounds how many may
/// wait so that memory stays bounded by concurrency, not by file size.
pub const ADMISSION_FACTOR: usize = 2;

/// Input errors printed before the run exits 2; the rest are counted.
pub const INPUT_ERRORS_SHOWN: usize = 20;
