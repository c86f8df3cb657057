//! What the simulator simulates.

use std::collections::HashMap;
use std::time::Duration;

/// The window `--rpm`/`--tpm` are counted over unless told otherwise: providers state
/// their limits per minute.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// The longest window honoured (about 31 years; longer ones are clamped to it): it keeps
/// every figure the limits compute (window × capacity in nanoseconds) inside `u128`.
pub const MAX_WINDOW: Duration = Duration::from_secs(1_000_000_000);

/// The model name of `accuracy` that stands for every model not named there.
pub const ANY_MODEL: &str = "*";

/// How the mock enforces `rpm`/`tpm`. Providers use both shapes, and they fail clients
/// differently: a window lets a whole minute's quota through at once and then nothing,
/// a bucket lets a burst through and then only a steady trickle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimitShape {
    /// A sliding log per key: at most `rpm` requests and `tpm` tokens admitted in any
    /// `window` (OpenAI's documented per-minute limits).
    #[default]
    Window,
    /// A token bucket per key and limit, starting full and refilling continuously at
    /// limit/`window` per second (how many gateways actually meter).
    Bucket,
}

impl LimitShape {
    /// The name used in `/mock/stats` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitShape::Window => "window",
            LimitShape::Bucket => "bucket",
        }
    }
}

/// Latency, limits and fault rates of a mock. The default is a fast, unlimited,
/// faultless server (limits, if set later, counted per 60 s window).
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Base latency added before replying to an admitted request.
    pub latency_ms: u64,
    /// Extra uniform random latency in `[0, jitter_ms]`.
    pub jitter_ms: u64,
    /// Requests per `window`, per API key.
    pub rpm: Option<u64>,
    /// Tokens per `window`, per API key.
    pub tpm: Option<u64>,
    /// Whether `rpm`/`tpm` are a sliding window or a token bucket.
    pub limit_shape: LimitShape,
    /// Capacity of the requests bucket ([`LimitShape::Bucket`] only); `None` = `rpm`.
    /// The tokens bucket always holds `tpm`: scaling it too would make one flag mean
    /// two different things.
    pub burst: Option<u64>,
    /// The span `rpm`/`tpm` are counted over (window) or refill over (bucket), so a
    /// test can see a limit recover in seconds instead of a minute. Zero is treated as
    /// one nanosecond and anything past [`MAX_WINDOW`] as that (see [`MockConfig::window`]).
    pub window: Duration,
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
    /// Count `rpm`/`tpm` per key and model rather than per key (as providers that limit
    /// each model apart, like OpenAI); `/mock/stats` then shows books named `LAST4/MODEL`.
    pub limit_per_model: bool,
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
    /// Models whose chat answers are correct with a known probability, so scores of an
    /// experiment can be checked against it: (model, probability in `[0, 1]`), with
    /// [`ANY_MODEL`] for every model not named. The last entry for a name wins, as a
    /// later flag overrides an earlier one. Unlisted models get the plain echo.
    pub accuracy: Vec<(String, f64)>,
    /// Models that act as a judge: they grade the last marked answer in their messages
    /// instead of answering (a judge is never an answerer, whatever `accuracy` says).
    pub judges: Vec<String>,
    /// Fraction of judge replies that are prose instead of the JSON verdict (a 200 with
    /// usage), drawn per attempt so a retry of the same request can succeed.
    pub judge_invalid_rate: f64,
}

impl MockConfig {
    /// The window as enforced (see [`clamp_window`]).
    pub fn window(&self) -> Duration {
        clamp_window(self.window)
    }

    /// The probability `model`'s answers are correct: its own entry in `accuracy`,
    /// else [`ANY_MODEL`]'s, else `None` (the plain echo).
    pub fn accuracy_of(&self, model: &str) -> Option<f64> {
        let of = |name: &str| {
            self.accuracy
                .iter()
                .rev()
                .find(|(m, _)| m == name)
                .map(|(_, p)| *p)
        };
        of(model).or_else(|| of(ANY_MODEL))
    }

    /// Whether `model` acts as a judge.
    pub fn is_judge(&self, model: &str) -> bool {
        self.judges.iter().any(|j| j == model)
    }
}

/// A window the limits can use: never zero (limit/window is a rate) and never past
/// [`MAX_WINDOW`].
pub(crate) fn clamp_window(window: Duration) -> Duration {
    window.clamp(Duration::from_nanos(1), MAX_WINDOW)
}

impl Default for MockConfig {
    /// Written out because a derived default would make the window zero long.
    fn default() -> Self {
        MockConfig {
            latency_ms: 0,
            jitter_ms: 0,
            rpm: None,
            tpm: None,
            limit_shape: LimitShape::Window,
            burst: None,
            window: DEFAULT_WINDOW,
            fail_rate: 0.0,
            hang_rate: 0.0,
            malformed_rate: 0.0,
            reset_rate: 0.0,
            seed: 0,
            hide_limits: false,
            limit_per_model: false,
            key_credits: HashMap::new(),
            in_flight_budget: None,
            cost_per_million_tokens: None,
            model_prices: Vec::new(),
            accuracy: Vec::new(),
            judges: Vec::new(),
            judge_invalid_rate: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_s_own_accuracy_beats_the_default_and_the_last_entry_wins() {
        let config = MockConfig {
            accuracy: vec![
                ("a".to_string(), 0.2),
                (ANY_MODEL.to_string(), 0.5),
                ("a".to_string(), 0.9),
            ],
            ..MockConfig::default()
        };
        assert_eq!(config.accuracy_of("a"), Some(0.9));
        assert_eq!(config.accuracy_of("b"), Some(0.5));
        assert_eq!(MockConfig::default().accuracy_of("a"), None);
    }
}
