//! What an experiment run does, resolved: which rows go to which models how often,
//! with which prompt, and who judges the answers. The binary builds it from the
//! configuration file (SPEC §10, §12); nothing here reads that file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use volley_core::input::ids::StableHash;
use volley_core::provider::validate::ResponseCheck;

/// A model as the config names it, resolved to where and how it is asked.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    /// The name the config gives it; answers and scores are labelled with it.
    pub name: String,
    /// The provider's name in the config (part of a judge's identity).
    pub provider: String,
    /// Which of the engine's upstreams serves it.
    #[serde(skip)]
    pub upstream: usize,
    /// The provider's model id, sent as the body's `model`.
    pub id: String,
    /// Body fields sent with every request to it (`max_tokens`, `temperature`,
    /// `reasoning`, extra fields), in the order they are written.
    pub body: Map<String, Value>,
}

/// A dataset: rows with an id, read as a stream.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetSpec {
    pub name: String,
    /// A `.jsonl` or `.csv` file.
    pub path: PathBuf,
    /// The field holding each row's id (unique in the file).
    pub id_field: String,
}

/// A prompt: minijinja templates for the system and user messages.
#[derive(Debug, Clone, Serialize)]
pub struct PromptSpec {
    pub name: String,
    pub system: Option<String>,
    pub user: String,
}

/// What a judge's reply must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// `{"correct": true|false}`: scores are accuracies (and McNemar's test applies).
    Correct,
    /// `{"score": number}`: scores are mean scores.
    Score,
}

impl VerdictKind {
    /// The reply check the engine applies to a judge's reply: a reply without the
    /// verdict is retried (`invalid_response`) like any invalid reply, tokens counted.
    pub fn check(self) -> ResponseCheck {
        let schema = match self {
            VerdictKind::Correct => serde_json::json!({
                "type": "object", "required": ["correct"],
                "properties": {"correct": {"type": "boolean"}}
            }),
            VerdictKind::Score => serde_json::json!({
                "type": "object", "required": ["score"],
                "properties": {"score": {"type": "number"}}
            }),
        };
        ResponseCheck::schema(&schema).unwrap_or(ResponseCheck::Json)
    }

    /// The verdict's value in a reply's content: 1/0 for a correct-verdict, the score
    /// for a score; `None` when the content holds no verdict.
    pub fn read(self, content: &str) -> Option<f64> {
        let value: Value = serde_json::from_str(ResponseCheck::json_text(content)).ok()?;
        match self {
            VerdictKind::Correct => value
                .get("correct")?
                .as_bool()
                .map(|c| if c { 1.0 } else { 0.0 }),
            VerdictKind::Score => value.get("score")?.as_f64().filter(|s| s.is_finite()),
        }
    }
}

/// A judge: a model, its template and what its verdict is.
#[derive(Debug, Clone, Serialize)]
pub struct JudgeSpec {
    pub model: ModelSpec,
    pub prompt: PromptSpec,
    pub verdict: VerdictKind,
}

impl JudgeSpec {
    /// The judge's identity: a hash of everything that could change its grades (the
    /// model, its provider, the template's text, the body's parameters and the kind of
    /// verdict), 16 hex digits. Judgements are keyed by it, so a changed judge never
    /// reuses another's grades.
    pub fn identity(&self) -> String {
        let mut h = StableHash::new();
        let mut part = |bytes: &[u8]| {
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        part(self.model.provider.as_bytes());
        part(self.model.id.as_bytes());
        part(
            Value::Object(self.model.body.clone())
                .to_string()
                .as_bytes(),
        );
        part(
            self.prompt
                .system
                .as_deref()
                .unwrap_or("\u{0}none")
                .as_bytes(),
        );
        part(self.prompt.user.as_bytes());
        part(match self.verdict {
            VerdictKind::Correct => b"correct",
            VerdictKind::Score => b"score",
        });
        format!("{:016x}", h.finish())
    }
}

/// How answers are run through a command before they are judged.
#[derive(Debug, Clone, Serialize)]
pub struct PostprocessSpec {
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
    /// A run longer than this is killed and recorded as `postprocess_timeout`.
    pub timeout: Duration,
    /// Commands running at once.
    pub workers: usize,
}

/// One experiment: datasets × models × runs, a prompt, and what follows the answers.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentPlan {
    pub name: String,
    pub datasets: Vec<DatasetSpec>,
    pub models: Vec<ModelSpec>,
    pub runs: u32,
    pub prompt: PromptSpec,
    /// What an answer must be (`expect = "json"`, a schema); a failing one is retried.
    #[serde(skip)]
    pub check: Option<Arc<ResponseCheck>>,
    /// Requests of this experiment (answers and judgements) in flight at once.
    pub concurrency: Option<usize>,
    /// Stop sending this experiment's answers once they cost this much.
    pub max_cost_usd: Option<f64>,
    pub postprocess: Option<PostprocessSpec>,
    pub judge: Option<JudgeSpec>,
}
