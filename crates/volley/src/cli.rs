//! Command-line flags. Raw flags become validated settings in `commands::*`; defaults
//! come from `volley_core::defaults` so help text and engine never disagree.
//!
//! Numeric flags are checked by the parsers of [`values`]: a value that cannot work
//! (`--timeout 0`, `--concurrency 0`, `--max-cost -1`, NaN) is a usage error (exit 2)
//! that says why, before anything is sent. Negative numbers are let through to those
//! parsers (`allow_negative_numbers`) so that they say "must be 0 or more" instead of
//! clap suggesting `-- -1`, which cannot work either.

mod values;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use volley_core::defaults;

use values::{MAX_SECONDS, non_negative, seconds, within};

/// The rule of every flag that is a plain span of seconds.
const SECONDS: &str = "must be 0 to 1e9 seconds";

/// The rule of `--offset` and `--limit`.
const LINES: &str = "must be a whole number, 0 or more";

/// The shortest `--timeout`: a provider bills a request it has received whether or not
/// the client waits for the answer, and hardly any completion comes back sooner (setting
/// up the connection takes part of it), so a shorter timeout mostly pays for replies it
/// throws away.
const MIN_TIMEOUT_SECS: f64 = 1.0;

/// The rule of the mock's fault rates.
const FRACTION: &str = "must be a fraction from 0 to 1";

/// The rule of a price in USD per million tokens.
const PRICE: &str = "must be 0 or more USD per million tokens";

#[derive(Debug, Parser)]
#[command(
    name = "volley",
    version,
    about = "Send JSONL batches of LLM requests through OpenAI-compatible APIs: fast, within limits, resumable."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a JSONL batch: requests in, results and errors out.
    Run(Box<RunArgs>),
    /// Serve OpenAI's Batch API (files and batches) and a proxy for every other /v1 call, all sharing one set of keys and limits.
    Serve(Box<ServeArgs>),
    /// Serve an OpenAI-compatible simulator with latency, rate limits and faults.
    Mock(MockArgs),
    /// Rewrite a RESULTS file in input order.
    Sort(SortArgs),
    /// Recompute the final report of a past run from its RESULTS (and ERRORS); optionally as HTML with plots.
    Report(ReportArgs),
    /// Experiments: datasets x models x runs with a judge, scored with confidence intervals.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Run the experiments of a configuration file (resumes the run directory's work).
    Run(Box<ExperimentRunArgs>),
    /// Grade the answers of a run directory with another judge, asking no model again.
    Rejudge(Box<RejudgeArgs>),
    /// Recompute a run directory's scores from its files (scores.json, scores.md).
    Report(ExperimentReportArgs),
}

#[derive(Debug, Args)]
pub struct ExperimentRunArgs {
    /// The configuration file (TOML or YAML) with datasets, prompts and experiments.
    pub config: PathBuf,
    /// Run only this experiment (repeatable).
    #[arg(long, value_name = "NAME")]
    pub only: Vec<String>,
    /// The run directory [default: volley-runs/CONFIG's stem]; a re-run with the same one resumes.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub display: DisplayArgs,
    #[command(flatten)]
    pub dashboard: DashboardArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct RejudgeArgs {
    /// A run directory written by `volley experiment run`.
    pub run_dir: PathBuf,
    /// The judge: a model named in the run's configuration file.
    #[arg(long, value_name = "MODEL")]
    pub judge: String,
    /// The judge's user template (minijinja over row, answer, output) [default: the experiment's judge prompt].
    #[arg(long, value_name = "FILE")]
    pub template: Option<PathBuf>,
    /// The configuration file [default: the one the run was made with].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub display: DisplayArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct ExperimentReportArgs {
    /// A run directory written by `volley experiment run`.
    pub run_dir: PathBuf,
    /// Also write the scores as one self-contained HTML page (charts, no scripts).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, periodic log lines otherwise.
    Auto,
    Bar,
    Log,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Which requests share one set of limits (`--lanes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lanes {
    /// One set of limits per key (providers that limit per key or organisation).
    Key,
    /// One per key and model (providers that limit per model, as OpenAI).
    KeyModel,
    /// One for all keys together (OpenRouter: extra keys add no capacity).
    Account,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Expect {
    /// The reply's content must parse as JSON (a fenced code block is allowed).
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// JSONL input: OpenAI Batch lines, bare request bodies, or {"prompt": ...} lines. `-` reads standard input.
    pub input: PathBuf,
    /// RESULTS file [default: INPUT with .jsonl replaced by .results.jsonl]
    #[arg(short = 'o', long = "output", value_name = "OUTPUT")]
    pub output: Option<PathBuf>,
    /// ERRORS file [default: with -o, OUTPUT with .results.jsonl (else .jsonl) replaced by .errors.jsonl; else INPUT with .jsonl replaced by .errors.jsonl]
    #[arg(long, value_name = "ERRORS")]
    pub errors: Option<PathBuf>,
    /// Configuration file (TOML, or YAML): defaults for these flags ([run]), providers and models a line's "model" may name (docs/config.md). Flags given here win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Send only the first N requests (after resume skips), to try a sample.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = within(0, u64::MAX, LINES))]
    pub limit: Option<u64>,
    /// Skip the first N lines of the input.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true, value_parser = within(0, u64::MAX, LINES))]
    pub offset: u64,
    /// Check every reply's content; a reply that fails is retried as invalid_response.
    #[arg(long, value_enum, value_name = "json")]
    pub expect: Option<Expect>,
    /// The reply's content must be JSON valid against this JSON Schema.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// Record invalid input lines in ERRORS and go on, instead of exiting 2.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Also re-send the requests found in ERRORS (they leave ERRORS once they succeed).
    #[arg(long)]
    pub retry_failed: bool,
    /// Re-send finished requests whose input line changed since (another model, path or body); each old line is dropped once its new one is written.
    #[arg(long, conflicts_with = "keep_changed")]
    pub rerun_changed: bool,
    /// Keep the old answers of finished requests whose input line changed since.
    #[arg(long)]
    pub keep_changed: bool,

    /// Stop starting requests once the cost recorded (plus what may be in flight) reaches USD; exit 3, resumable.
    #[arg(long, value_name = "USD", allow_negative_numbers = true, value_parser = non_negative("must be 0 or more US dollars"))]
    pub max_cost: Option<f64>,
    /// Write the final report as JSON to FILE (schema: docs/report.md).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub display: DisplayArgs,
    /// Write every engine event to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Keep serving /metrics this many seconds after the run ends, so a scraper gets
    /// the final figures (Ctrl-C ends the wait).
    #[arg(long, value_name = "SECS", default_value_t = 0.0, requires = "metrics_addr", allow_negative_numbers = true, value_parser = seconds(SECONDS))]
    pub metrics_linger: f64,
    #[command(flatten)]
    pub dashboard: DashboardArgs,
}

/// `--dashboard`: the live page `volley serve` shows at `/`, for a run or an
/// experiment. One definition for both commands.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Serve a live dashboard at http://ADDR/ while the run lasts (port 0: a free one, printed). No token: keep it on 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    pub dashboard: Option<std::net::SocketAddr>,
    /// Keep serving the dashboard this many seconds after the run ends, to see the final state (Ctrl-C ends the wait).
    #[arg(long, value_name = "SECS", default_value_t = 0.0, requires = "dashboard", allow_negative_numbers = true, value_parser = seconds(SECONDS))]
    pub dashboard_linger: f64,
}

/// How a long command shows itself on standard error: progress, and log lines.
#[derive(Debug, Args)]
pub struct DisplayArgs {
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print only warnings and errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How requests are sent: the provider, keys, limits, retries and prices. Shared by
/// `volley run` and `volley serve`.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// API base URL.
    #[arg(long, env = "VOLLEY_BASE_URL", default_value = defaults::BASE_URL, value_name = "URL")]
    pub base_url: String,
    /// Start the built-in simulator on a free loopback port and send everything there (no key needed).
    #[arg(long)]
    pub mock: bool,
    /// Environment variable holding an API key; repeat for a pool of keys [default: OPENROUTER_API_KEY, then OPENAI_API_KEY]
    #[arg(long = "api-key-env", value_name = "NAME")]
    pub api_key_env: Vec<String>,
    /// Model for lines that name none.
    #[arg(long, value_name = "M")]
    pub model: Option<String>,

    /// Read each key's credit and limits from GET BASE_URL/key before starting (on by default for openrouter.ai).
    #[arg(long)]
    pub key_info: bool,
    /// Requests in flight at once (the ceiling when concurrency adapts).
    #[arg(long, default_value_t = defaults::CONCURRENCY, allow_negative_numbers = true, value_parser = within(1usize, 100_000, "must be 1 to 100000 requests in flight at once: 0 would never send one"))]
    pub concurrency: usize,
    /// Which requests share one set of limits: per key, per key and model, or one for the whole account [default: account for openrouter.ai, key-model for api.openai.com, else key].
    #[arg(long, value_enum, value_name = "LANES")]
    pub lanes: Option<Lanes>,
    /// Requests per minute, per lane (see --lanes) [default: learned from the provider's headers; adaptive concurrency until then].
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = within(1, u64::MAX, "must be at least 1: a limit of 0 requests per minute would never send one (leave --rpm out to learn the limit from the provider)"))]
    pub rpm: Option<u64>,
    /// Tokens per minute, per lane (prompt counted with a tokenizer + max_tokens, corrected by usage) [default: learned from headers].
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = within(1, u64::MAX, "must be at least 1: a limit of 0 tokens per minute would never send a request (leave --tpm out to learn the limit from the provider)"))]
    pub tpm: Option<u64>,
    /// Retries after errors, per request.
    #[arg(long, default_value_t = defaults::MAX_RETRIES, value_name = "N", allow_negative_numbers = true, value_parser = within(0, u32::MAX, "must be a whole number, 0 or more (0: no retries after errors)"))]
    pub max_retries: u32,
    /// Retries of a request whose reply came back empty (no content, no tool calls),
    /// within --max-retries: a model that answers nothing to a prompt mostly answers
    /// nothing again.
    #[arg(long, default_value_t = defaults::MAX_EMPTY_RETRIES, value_name = "N", allow_negative_numbers = true, value_parser = within(0, u32::MAX, "must be a whole number, 0 or more (0: an empty reply is not retried)"))]
    pub max_empty_retries: u32,
    /// First backoff step in seconds; doubles each retry, with full jitter.
    #[arg(long, default_value_t = defaults::INITIAL_BACKOFF.as_secs_f64(), value_name = "SECS", allow_negative_numbers = true, value_parser = seconds(SECONDS))]
    pub initial_backoff: f64,
    /// Longest backoff step in seconds.
    #[arg(long, default_value_t = defaults::MAX_BACKOFF.as_secs_f64(), value_name = "SECS", allow_negative_numbers = true, value_parser = seconds(SECONDS))]
    pub max_backoff: f64,
    /// Timeout of one attempt in seconds (at least 1).
    #[arg(long, default_value_t = defaults::TIMEOUT.as_secs_f64(), value_name = "SECS", allow_negative_numbers = true, value_parser = within(MIN_TIMEOUT_SECS, MAX_SECONDS, "must be 1 to 1e9 seconds: a shorter timeout abandons requests the provider has already received and will bill"))]
    pub timeout: f64,
    /// A Retry-After longer than this (seconds) is not waited out: the key counts as quota-spent.
    #[arg(long, default_value_t = defaults::MAX_WAIT.as_secs_f64(), value_name = "SECS", allow_negative_numbers = true, value_parser = seconds(SECONDS))]
    pub max_wait: f64,
    /// Retries after errors allowed across the run, as a fraction of requests sent.
    #[arg(long, default_value_t = defaults::RETRY_BUDGET_RATIO, value_name = "RATIO", allow_negative_numbers = true, value_parser = non_negative("must be 0 or more: the retries after errors allowed across the run, as a fraction of the requests sent (0.2 is 20%)"))]
    pub retry_budget: f64,

    /// Prices (USD per million tokens) for providers that report no usage.cost: a JSON or TOML table of model → {prompt, completion, cached?, reasoning?}.
    #[arg(long, value_name = "FILE")]
    pub pricing: Option<PathBuf>,
    /// Price models from the provider's model list (GET /models, OpenRouter's format),
    /// cached for a day; on by default for OpenRouter. A --pricing file wins over it.
    #[arg(long)]
    pub fetch_prices: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the first line of standard output is the base URL).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Where files, batches and their progress are kept (created if missing).
    #[arg(long, value_name = "DIR", default_value = "volley-data")]
    pub data_dir: PathBuf,
    /// Environment variable holding the one bearer token every client must send.
    #[arg(long, value_name = "NAME", conflicts_with = "tokens_file")]
    pub auth_token_env: Option<String>,
    /// A file of `tenant token` lines: each token sees only its tenant's files and batches.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Configuration file (TOML, or YAML): defaults for these flags ([serve]), providers and models that batch lines and proxied calls may name (docs/config.md). Flags given here win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// A proxied request that cannot start within this many seconds (the shared limit is busy) is answered 429 with Retry-After.
    #[arg(long, value_name = "SECS", default_value_t = 60.0, allow_negative_numbers = true, value_parser = seconds(SECONDS))]
    pub proxy_max_wait: f64,
    /// Print only warnings and errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Tests only: a batch's completion window in seconds instead of 24 hours.
    #[arg(long, hide = true, value_name = "SECS", allow_negative_numbers = true, value_parser = seconds(SECONDS))]
    pub batch_window: Option<f64>,
}

#[derive(Debug, Args)]
pub struct MockArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub addr: std::net::SocketAddr,
    /// Latency added to every admitted request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Extra random latency, uniform in [0, MS].
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Requests per --window (per minute by default) per API key; over it: 429 with retry-after.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per --window (per minute by default) per API key.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// How --rpm/--tpm are enforced: a sliding window (at most the limit in any window) or a token bucket (starts full, refills at limit/window).
    #[arg(long, value_enum, default_value_t = crate::commands::mock::LimitShapeArg::Window)]
    pub limit_shape: crate::commands::mock::LimitShapeArg,
    /// Capacity of the requests bucket (--limit-shape bucket, with --rpm) [default: the --rpm limit]. The tokens bucket always holds --tpm.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub burst: Option<u64>,
    /// Seconds --rpm/--tpm are counted over (window) or refill over (bucket); fractions allowed, so tests need not wait a minute.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = crate::commands::mock::parse_window)]
    pub window: std::time::Duration,
    /// Fraction of requests answered 500/502/503.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = within(0.0, 1.0, FRACTION))]
    pub fail_rate: f64,
    /// Fraction of requests that never answer.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = within(0.0, 1.0, FRACTION))]
    pub hang_rate: f64,
    /// Fraction of requests answered with a truncated JSON body.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = within(0.0, 1.0, FRACTION))]
    pub malformed_rate: f64,
    /// Fraction of requests whose connection is dropped mid-reply.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = within(0.0, 1.0, FRACTION))]
    pub reset_rate: f64,
    /// Seed for faults and jitter: the same seed and arrival order give the same run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send no x-ratelimit-* headers on successes (as OpenRouter): clients must find the limit themselves.
    #[arg(long)]
    pub hide_limits: bool,
    /// Count --rpm/--tpm per key and model instead of per key (as OpenAI limits each model apart).
    #[arg(long)]
    pub limit_per_model: bool,
    /// Credit of one key, in tokens, by the key's last four characters: past it, 402 "insufficient credits". Repeatable.
    #[arg(long = "key-credits", value_name = "LAST4=TOKENS", value_parser = parse_key_credit)]
    pub key_credits: Vec<(String, u64)>,
    /// Requests one key may have in flight; more get OpenRouter's in-flight-budget 402 with Retry-After.
    #[arg(long, value_name = "N")]
    pub in_flight_budget: Option<u64>,
    /// Report usage.cost (USD) in every reply with usage, at this price per million tokens.
    #[arg(long, value_name = "USD", allow_negative_numbers = true, value_parser = non_negative(PRICE))]
    pub cost_per_million_tokens: Option<f64>,
    /// List MODEL in GET /v1/models with OpenRouter-style prices (USD per million prompt and completion tokens). Repeatable.
    #[arg(long = "model-price", value_name = "MODEL=PROMPT,COMPLETION", value_parser = parse_model_price)]
    pub model_prices: Vec<(String, f64, f64)>,
    /// Answer MODEL's chats correctly with probability P (decided by the request and --seed; the reply ends in [mock:correct] or [mock:wrong]); MODEL `*` is every model not named. Repeatable.
    #[arg(long = "accuracy", value_name = "MODEL=P", value_parser = parse_accuracy)]
    pub accuracy: Vec<(String, f64)>,
    /// MODEL acts as a judge: it answers {"correct": true} if the last marker in its messages is [mock:correct], else {"correct": false}. Repeatable.
    #[arg(long = "judge-model", value_name = "MODEL")]
    pub judge_models: Vec<String>,
    /// Fraction of judge replies that are prose instead of JSON (200 with usage; drawn per attempt).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = within(0.0, 1.0, FRACTION))]
    pub judge_invalid_rate: f64,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The RESULTS file of a run.
    pub results: PathBuf,
    /// Its ERRORS file.
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// Write a self-contained HTML page with plots.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write the report as JSON (schema: docs/report.md).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SortArgs {
    /// The RESULTS file to rewrite in input order.
    pub results: PathBuf,
    /// The input the results came from.
    #[arg(long)]
    pub input: PathBuf,
}

fn parse_model_price(s: &str) -> Result<(String, f64, f64), String> {
    let bad = || format!("{s:?} is not MODEL=PROMPT,COMPLETION (USD per million tokens)");
    let (model, prices) = s.rsplit_once('=').ok_or_else(bad)?;
    let (prompt, completion) = prices.split_once(',').ok_or_else(bad)?;
    let price = non_negative(PRICE);
    let prompt = price(prompt)?;
    let completion = price(completion)?;
    if model.is_empty() {
        return Err(bad());
    }
    Ok((model.to_string(), prompt, completion))
}

/// `--accuracy MODEL=P`: split at the last `=`, as model ids may hold one but a
/// probability never does; P follows the rule of the fault rates.
fn parse_accuracy(s: &str) -> Result<(String, f64), String> {
    let (model, p) = s
        .rsplit_once('=')
        .filter(|(model, _)| !model.is_empty())
        .ok_or_else(|| format!("{s:?} is not MODEL=P (P a fraction from 0 to 1)"))?;
    Ok((model.to_string(), within(0.0, 1.0, FRACTION)(p)?))
}

fn parse_key_credit(s: &str) -> Result<(String, u64), String> {
    let (key, tokens) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LAST4=TOKENS"))?;
    let tokens = tokens
        .parse()
        .map_err(|_| format!("{tokens:?} is not a number of tokens"))?;
    Ok((key.to_string(), tokens))
}
