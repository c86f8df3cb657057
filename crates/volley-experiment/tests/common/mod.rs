//! Helpers shared by the experiment tests: a `volley mock` on a loopback port told each
//! model's accuracy and acting as the judge, an engine on it, and a plan of
//! 2 models × one arithmetic dataset × runs with a judge.

// Each test file compiles this module on its own and uses only some of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value, json};
use volley_core::engine::{Engine, EngineConfig};
use volley_core::observe::events::EventBus;
use volley_core::provider::transport::ApiKey;
use volley_core::provider::upstream::{Upstream, UpstreamSpec};
use volley_experiment::pipeline::RunOptions;
use volley_experiment::plan::{
    DatasetSpec, ExperimentPlan, JudgeSpec, ModelSpec, PromptSpec, VerdictKind,
};
use volley_mock::{MockConfig, MockServer};

pub async fn mock(config: MockConfig) -> MockServer {
    MockServer::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the mock starts on a free port")
}

pub fn graded_mock() -> MockConfig {
    MockConfig {
        accuracy: vec![("small".into(), 0.8), ("large".into(), 0.6)],
        judges: vec!["judge".into(), "judge-2".into()],
        seed: 7,
        ..MockConfig::default()
    }
}

pub fn engine(mock: &MockServer, concurrency: usize) -> Engine {
    let config = EngineConfig {
        concurrency,
        grace: Duration::from_millis(200),
        ..EngineConfig::default()
    };
    let key = ApiKey::new("sk-test-experiment-key-0001".into()).unwrap();
    let upstream =
        Upstream::new(UpstreamSpec::new(&mock.base_url(), vec![key]), concurrency).unwrap();
    Engine::new(config, vec![upstream], EventBus::default())
}

pub fn model(name: &str) -> ModelSpec {
    let mut body = Map::new();
    body.insert("max_tokens".into(), json!(16));
    ModelSpec {
        name: name.into(),
        provider: "mock".into(),
        upstream: 0,
        id: name.into(),
        body,
    }
}

pub fn judge(name: &str) -> JudgeSpec {
    JudgeSpec {
        model: model(name),
        prompt: PromptSpec {
            name: "grade".into(),
            system: Some("Grade the answer. Reply {\"correct\": true|false}.".into()),
            user:
                "Question: {{ row.question }}\nExpected: {{ row.expected }}\nAnswer: {{ answer }}"
                    .into(),
        },
        verdict: VerdictKind::Correct,
    }
}

pub fn dataset(dir: &Path, rows: usize) -> DatasetSpec {
    let path = dir.join("arith.jsonl");
    let text: String = (0..rows)
        .map(|i| format!("{{\"id\": \"q{i}\", \"question\": \"What is {i} + {i}?\", \"expected\": \"{}\"}}\n", 2 * i))
        .collect();
    std::fs::write(&path, text).unwrap();
    DatasetSpec {
        name: "arith".into(),
        path,
        id_field: "id".into(),
    }
}

pub fn plan(dir: &Path, rows: usize, runs: u32) -> ExperimentPlan {
    ExperimentPlan {
        name: "arith-eval".into(),
        datasets: vec![dataset(dir, rows)],
        models: vec![model("small"), model("large")],
        runs,
        prompt: PromptSpec {
            name: "qa".into(),
            system: Some("Answer with a number.".into()),
            user: "{{ question }}".into(),
        },
        check: None,
        concurrency: None,
        max_cost_usd: None,
        postprocess: None,
        judge: Some(judge("judge")),
    }
}

pub fn options(dir: &Path) -> RunOptions {
    RunOptions {
        dir: dir.to_owned(),
        cells_in_flight: 64,
        ask: true,
        hidden_env: Vec::new(),
        progress: Default::default(),
        config: None,
    }
}

pub fn lines(path: &Path) -> Vec<Value> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}
