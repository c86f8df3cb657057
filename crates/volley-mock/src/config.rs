//! What the simulator simulates.

use std::collections::HashMap;

/// Latency, limits and fault rates of a mock. All zero/`None` by default: a fast,
/// unlimited, faultless server.
#[derive(Debug, Clone, Default)]
pub struct MockConfig {
    /// Base latency added before replying to an admitted request.
    pub latency_ms: u64,
    /// Extra uniform random latency in `[0, jitter_ms]`.
    pub jitter_ms: u64,
    /// Requests per minute, per API key, over a sliding 60 s window.
    pub rpm: Option<u64>,
    /// Tokens per minute, per API key, over a sliding 60 s window.
    pub tpm: Option<u64>,
    /// Fraction answered 500/502/503 with an OpenAI-shaped error and no usage.
    pub fail_rate: f64,
    /// Fraction that never answer (past any client timeout).
    pub hang_rate: f64,
    /// Fraction answered 200 with a truncated JSON body.
    pub malformed_rate: f64,
    /// Fraction whose connection is dropped mid-response.
    pub reset_rate: f64,
    /// Seeds every random choice: the same seed and arrival order give the same run.
    pub seed: u64,
    /// Send no `x-ratelimit-*` headers on successes, as OpenRouter does: a client has
    /// to find the limit by itself.
    pub hide_limits: bool,
    /// Credit per key (by its last four characters), in tokens: once a key has been
    /// billed this much it gets 402 "insufficient credits", as a spent OpenRouter key.
    pub key_credits: HashMap<String, u64>,
    /// Requests one key may have in flight; more get OpenRouter's 402 for its in-flight
    /// spending budget, with a Retry-After.
    pub in_flight_budget: Option<u64>,
    /// Put `usage.cost` (USD) in every reply that carries usage, at this price per
    /// million tokens, as OpenRouter does.
    pub cost_per_million_tokens: Option<f64>,
    /// Models listed by `GET /v1/models` with OpenRouter-style prices: (id, prompt,
    /// completion) in USD per million tokens.
    pub model_prices: Vec<(String, f64, f64)>,
}
