//! The sections of a configuration file, resolved: names checked, defaults filled in,
//! paths made absolute. Plain values, so a consumer (the binary, the experiment
//! pipeline) never re-validates or re-resolves anything.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Postprocess commands killed after this long when `timeout_secs` is not given: long
/// enough for a test suite of a generated program, short enough that a program stuck
/// in a loop does not hold up the experiment.
pub const DEFAULT_POSTPROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// Postprocess commands run at once when `workers` is not given: a program under test
/// mostly waits or computes briefly, and four keep a small machine busy without
/// starving the engine.
pub const DEFAULT_POSTPROCESS_WORKERS: usize = 4;

/// `[providers.NAME]`: an OpenAI-compatible API and the keys for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// The table's name; models name their provider by it.
    pub name: String,
    /// The API's base URL (`https://openrouter.ai/api/v1`).
    pub base_url: String,
    /// Environment variables holding its keys, in order; several form a pool. The keys
    /// themselves are never in the file.
    pub api_key_env: Vec<String>,
    /// Requests per minute per lane; `None`: learned from the provider's headers.
    pub rpm: Option<u64>,
    /// Tokens per minute per lane; `None`: learned from headers.
    pub tpm: Option<u64>,
    /// How its limits are shared; `None`: as volley knows the provider to limit.
    pub lanes: Option<Lanes>,
    /// Extra headers sent with every request to it (never `Authorization`, which is
    /// the key's), as written.
    pub headers: Vec<(String, String)>,
}

/// Which requests share one set of limits (the file's `lanes`, the flag's `--lanes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lanes {
    /// One set of limits per key.
    Key,
    /// One per key and model (providers that limit each model apart, as OpenAI).
    KeyModel,
    /// One for all keys of the account (OpenRouter).
    Account,
}

/// `[models.NAME]`: a name input lines (and experiments) use for a model of a
/// provider, with the request settings that go with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// The table's name: a line whose `model` is this name is routed here.
    pub name: String,
    /// The provider it is served by; `None` when the file configures no provider
    /// (then it goes to the upstream the command line describes).
    pub provider: Option<String>,
    /// Which upstream serves it: its provider's position in
    /// [`crate::ConfigFile::providers`] (the engine is built with one upstream per
    /// provider, in that order), 0 when there are no providers.
    pub upstream: usize,
    /// The provider's model id, sent as the body's `model`; the table's name when not
    /// given.
    pub id: String,
    /// `max_tokens`, when set.
    pub max_tokens: Option<u64>,
    /// `temperature`, when set.
    pub temperature: Option<f64>,
    /// The body's `reasoning`, when set (any JSON).
    pub reasoning: Option<Value>,
    /// Other body fields (provider routing, `top_p`, …).
    pub body: Map<String, Value>,
}

impl Model {
    /// Every body field this model adds to a request, the dedicated ones
    /// (`max_tokens`, `temperature`, `reasoning`) and `body`'s: what a request naming
    /// it gets for each field it does not set itself. `model` is not among them.
    pub fn request_fields(&self) -> Map<String, Value> {
        let mut fields = self.body.clone();
        if let Some(n) = self.max_tokens {
            fields.insert("max_tokens".into(), Value::from(n));
        }
        if let Some(t) = self.temperature {
            fields.insert("temperature".into(), Value::from(t));
        }
        if let Some(r) = &self.reasoning {
            fields.insert("reasoning".into(), r.clone());
        }
        fields
    }
}

/// `[datasets.NAME]`: rows to run an experiment over.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The table's name.
    pub name: String,
    /// The file, absolute (a relative `path` is relative to the configuration file's
    /// folder); it existed when the file was loaded.
    pub path: PathBuf,
    /// How its rows are written, by its extension.
    pub format: DatasetFormat,
    /// The field holding each row's id (`id` unless told).
    pub id_field: String,
}

/// How a dataset's rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetFormat {
    /// `.jsonl`: one JSON object per line.
    Jsonl,
    /// `.csv`: a header line, then one row per line.
    Csv,
}

/// `[prompts.NAME]`: the messages sent for a row, as minijinja templates over its
/// fields (kept as text here; the experiment pipeline renders them).
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The table's name.
    pub name: String,
    /// The system message's template, if any.
    pub system: Option<String>,
    /// The user message's template.
    pub user: String,
}

/// `[experiments.NAME]`: datasets × models × runs with a prompt, and what follows the
/// answers (SPEC §12).
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// The table's name.
    pub name: String,
    /// Names of [`Dataset`]s, each known, none twice.
    pub datasets: Vec<String>,
    /// Names of [`Model`]s, each known, none twice.
    pub models: Vec<String>,
    /// How many times each row is asked of each model: 1 to 1000.
    pub runs: u32,
    /// Name of the [`Prompt`].
    pub prompt: String,
    /// What an answer must be; a failing one is retried.
    pub expect: Option<Expect>,
    /// A JSON Schema answers must validate against, absolute; it existed when the
    /// file was loaded.
    pub json_schema: Option<PathBuf>,
    /// Requests of this experiment in flight at once, at most.
    pub concurrency: Option<usize>,
    /// Stop sending this experiment's requests once they cost this much (USD).
    pub max_cost_usd: Option<f64>,
    /// A command each answer is run through before it is judged.
    pub postprocess: Option<Postprocess>,
    /// Who grades the answers.
    pub judge: Option<Judge>,
}

/// What an answer's content must be (the file's `expect`, the flag's `--expect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// JSON (a fenced code block is allowed).
    Json,
}

/// A command an answer goes through: JSON on its standard input, JSON on its output.
#[derive(Debug, Clone, PartialEq)]
pub struct Postprocess {
    /// The program and its arguments (no shell): at least the program.
    pub command: Vec<String>,
    /// A run longer than this is killed.
    pub timeout: Duration,
    /// Commands running at once (at least 1).
    pub workers: usize,
}

/// A judge: a model asked to grade each answer with a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Judge {
    /// Name of the judging [`Model`].
    pub model: String,
    /// Name of the [`Prompt`] it is asked with.
    pub prompt: String,
    /// What its reply holds.
    pub verdict: Verdict,
}

/// What a judge's reply must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// `{"correct": true|false}` (the default).
    Correct,
    /// `{"score": number}`.
    Score,
}
