//! `--config FILE` end to end: providers and models routing `volley run` and
//! `volley serve`, flag defaults and what overrides them, and errors that name the
//! file, the line and the key.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::ServeProc;
use common::{FnServer, MockProc, RawReply, Workspace, assert_exit, completion, explain, volley};
use serde_json::{Value, json};

/// Two keys, one per provider, whose last four characters tell them apart in the
/// mocks' books.
const KEY_ONE: &str = "sk-one-secret-value-1111";
const KEY_TWO: &str = "sk-two-secret-value-2222";

/// Panics if any of `texts` holds either key.
fn assert_no_keys(texts: &[&str]) {
    for text in texts {
        for key in [KEY_ONE, KEY_TWO] {
            assert!(!text.contains(&key[3..]), "a key leaked: {text}");
        }
    }
}

/// A config with providers `one` and `two` at `one` and `two`, and two models.
fn two_providers(one: &str, two: &str) -> String {
    format!(
        r#"[run]
progress = "off"

[providers.one]
base_url = "{one}"
api_key_env = "KEY_ONE"

[providers.two]
base_url = "{two}"
api_key_env = ["KEY_TWO"]
headers = {{ "X-Title" = "evals" }}

[models.small]
provider = "one"
model = "vendor/small-1"
max_tokens = 3
temperature = 0.5
body = {{ response_format = {{ type = "json_object" }}, top_p = 0.9 }}

[models.large]
provider = "two"
model = "vendor/large-2"
reasoning = {{ effort = "low" }}
"#
    )
}

const LINES: &str = r#"{"id": "a", "prompt": "hello there, how are you", "model": "small"}
{"id": "b", "prompt": "hello", "model": "large"}
{"id": "c", "prompt": "hello there, how are you", "model": "large", "max_tokens": 2}
{"id": "d", "prompt": "hello", "temperature": 1.5}
{"id": "e", "prompt": "hello", "model": "someone/else"}
"#;

/// By custom_id.
fn by_id(lines: Vec<Value>) -> BTreeMap<String, Value> {
    lines
        .into_iter()
        .map(|l| (l["custom_id"].as_str().unwrap_or_default().to_string(), l))
        .collect()
}

/// `volley run in.jsonl --config volley.toml --model small` in `ws` with both
/// providers' keys: lines that name no model get `small`, itself a configured name.
fn run_with_keys(ws: &Workspace) -> std::process::Output {
    volley()
        .args([
            "run",
            "in.jsonl",
            "--config",
            "volley.toml",
            "--model",
            "small",
        ])
        .env("KEY_ONE", KEY_ONE)
        .env("KEY_TWO", KEY_TWO)
        .current_dir(ws.dir.path())
        .output()
        .expect("run volley")
}

#[test]
fn run_config_routes_each_model_to_its_provider() {
    let (one, two) = (MockProc::start(&[]), MockProc::start(&[]));
    let ws = Workspace::new();
    ws.write("volley.toml", &two_providers(&one.base_url, &two.base_url));
    ws.write("in.jsonl", LINES);
    let out = run_with_keys(&ws);
    assert_exit(&out, 0);
    let results = by_id(ws.jsonl("in.results.jsonl"));
    assert_eq!(results.len(), 5, "{}", explain(&out));

    // Each mock saw only its provider's lines, with its provider's key.
    let (s1, s2) = (one.stats(), two.stats());
    assert_eq!(
        s1["requests"], 3,
        "a, d and e go to the first provider: {s1}"
    );
    assert_eq!(s2["requests"], 2, "b and c go to the second: {s2}");
    let keys = |s: &Value| {
        s["by_key"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&s1), ["1111"]);
    assert_eq!(keys(&s2), ["2222"]);

    let body = |id: &str| &results[id]["response"]["body"];
    for (id, model) in [
        ("a", "vendor/small-1"),
        ("b", "vendor/large-2"),
        ("c", "vendor/large-2"),
        ("d", "vendor/small-1"),
        ("e", "someone/else"),
    ] {
        assert_eq!(
            body(id)["model"],
            model,
            "{id}: the mock echoes the model sent"
        );
        assert_eq!(results[id]["volley"]["model"], model, "{id}");
    }
    // small's max_tokens = 3 cut its replies; c's own max_tokens won over nothing.
    for id in ["a", "d"] {
        assert_eq!(body(id)["usage"]["completion_tokens"], 3, "{id}");
        assert_eq!(body(id)["choices"][0]["finish_reason"], "length", "{id}");
    }
    assert_eq!(body("c")["usage"]["completion_tokens"], 2);
    // small's extra body field (response_format) reached the provider: JSON replies.
    let content = body("a")["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(content.starts_with("{\"answer\""), "{content}");
    // The second upstream's lanes are named after it.
    assert_eq!(results["b"]["volley"]["key"], "two:key#1");
    assert_eq!(results["a"]["volley"]["key"], "key#1");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let files = std::fs::read_to_string(ws.path("in.results.jsonl")).unwrap();
    assert_no_keys(&[&stdout, &stderr, &files]);
}

/// A provider that records every body it is sent and answers a short completion.
fn recording() -> (FnServer, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let server = FnServer::start(move |body| {
        if let Ok(value) = serde_json::from_slice(body) {
            record.lock().unwrap().push(value);
        }
        RawReply {
            status: 200,
            headers: Vec::new(),
            body: completion("ok").to_string().into_bytes(),
        }
    });
    (server, seen)
}

#[test]
fn run_config_sends_each_models_settings_and_the_lines_own_fields_win() {
    let ((one, seen_one), (two, seen_two)) = (recording(), recording());
    let ws = Workspace::new();
    ws.write("volley.toml", &two_providers(&one.base_url, &two.base_url));
    ws.write("in.jsonl", LINES);
    let out = run_with_keys(&ws);
    assert_exit(&out, 0);
    let by_prompt_and_model = |seen: &Arc<Mutex<Vec<Value>>>| {
        let mut bodies = seen.lock().unwrap().clone();
        bodies.sort_by_key(|b| b.to_string());
        bodies
    };
    let one = by_prompt_and_model(&seen_one);
    let two = by_prompt_and_model(&seen_two);
    assert_eq!(one.len(), 3, "{one:?}");
    assert_eq!(two.len(), 2, "{two:?}");
    for b in one.iter().filter(|b| b["model"] == "vendor/small-1") {
        assert_eq!(b["max_tokens"], 3, "{b}");
        assert_eq!(b["top_p"], 0.9, "{b}");
        assert_eq!(b["response_format"]["type"], "json_object", "{b}");
        assert!(b.get("reasoning").is_none(), "{b}");
    }
    // d's own temperature won; a got the model's.
    let temperatures: Vec<f64> = one
        .iter()
        .filter(|b| b["model"] == "vendor/small-1")
        .map(|b| b["temperature"].as_f64().unwrap())
        .collect();
    assert_eq!(temperatures.len(), 2);
    assert!(
        temperatures.contains(&0.5) && temperatures.contains(&1.5),
        "{temperatures:?}"
    );
    // A model no table names went to the first provider as written, untouched.
    let other: Vec<&Value> = one
        .iter()
        .filter(|b| b["model"] == "someone/else")
        .collect();
    assert_eq!(other.len(), 1);
    assert!(other[0].get("max_tokens").is_none() && other[0].get("top_p").is_none());
    for b in &two {
        assert_eq!(b["model"], "vendor/large-2", "{b}");
        assert_eq!(b["reasoning"]["effort"], "low", "{b}");
        assert!(b.get("temperature").is_none(), "{b}");
    }
    let max_tokens: Vec<Option<u64>> = two.iter().map(|b| b["max_tokens"].as_u64()).collect();
    assert!(
        max_tokens.contains(&Some(2)) && max_tokens.contains(&None),
        "{max_tokens:?}"
    );

    // A changed model setting is a changed request for resume (the --rerun-changed rule).
    let changed =
        two_providers(&one_url(&ws), &two_url(&ws)).replace("max_tokens = 3", "max_tokens = 4");
    ws.write("volley.toml", &changed);
    let again = run_with_keys(&ws);
    assert_exit(&again, 2);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("custom_id \"a\" is finished in RESULTS for a different request"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("custom_id \"b\""),
        "large did not change: {stderr}"
    );
}

/// The base URLs the config in `ws` names, for a rewrite of it.
fn one_url(ws: &Workspace) -> String {
    url_of(ws, "one")
}

fn two_url(ws: &Workspace) -> String {
    url_of(ws, "two")
}

fn url_of(ws: &Workspace, provider: &str) -> String {
    let text = std::fs::read_to_string(ws.path("volley.toml")).unwrap();
    let table = format!("[providers.{provider}]\nbase_url = \"");
    let at = text.find(&table).unwrap() + table.len();
    text[at..].split('"').next().unwrap().to_string()
}

/// A provider that takes `delay` per request and counts the most it held at once.
fn slow() -> (FnServer, Arc<AtomicUsize>) {
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let peak = most.clone();
    let server = FnServer::start(move |_| {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        now.fetch_sub(1, Ordering::SeqCst);
        RawReply {
            status: 200,
            headers: Vec::new(),
            body: completion("ok").to_string().into_bytes(),
        }
    });
    (server, peak)
}

#[test]
fn flags_on_the_command_line_win_over_the_file() {
    for (flags, expected) in [(&[][..], 1), (&["--concurrency", "3"][..], 3)] {
        let (server, peak) = slow();
        let ws = Workspace::new();
        ws.write(
            "volley.toml",
            &format!(
                "[run]\nconcurrency = 1\nbase_url = \"{}\"\napi_key_env = [\"{}\"]\nmodel = \"m\"\nprogress = \"off\"\n",
                server.base_url,
                common::KEY_ENV
            ),
        );
        ws.prompts("in.jsonl", 6);
        let mut args = vec!["run", "in.jsonl", "--config", "volley.toml"];
        args.extend_from_slice(flags);
        let out = ws.run(&args);
        assert_exit(&out, 0);
        assert_eq!(server.requests(), 6);
        assert_eq!(
            peak.load(Ordering::SeqCst),
            expected,
            "{flags:?}: {}",
            explain(&out)
        );
    }
}

#[test]
fn a_flag_given_wins_over_one_of_the_file_it_cannot_go_with() {
    let ws = Workspace::new();
    ws.write(
        "volley.toml",
        "[run]\nkeep_changed = true\nprogress = \"off\"\n",
    );
    ws.prompts("in.jsonl", 1);
    let out = ws.run(&[
        "run",
        "in.jsonl",
        "--config",
        "volley.toml",
        "--mock",
        "--model",
        "m",
        "--rerun-changed",
    ]);
    assert_exit(&out, 0);
}

#[test]
fn a_flags_environment_variable_wins_over_the_file() {
    let (file_server, env_server) = (recording().0, recording().0);
    let ws = Workspace::new();
    ws.write(
        "volley.toml",
        &format!(
            "[run]\nbase_url = \"{}\"\napi-key-env = \"{}\"\nprogress = \"off\"\n",
            file_server.base_url,
            common::KEY_ENV
        ),
    );
    ws.prompts("in.jsonl", 2);
    let out = volley()
        .args(["run", "in.jsonl", "--config", "volley.toml", "--model", "m"])
        .env("VOLLEY_BASE_URL", &env_server.base_url)
        .current_dir(ws.dir.path())
        .output()
        .expect("run volley");
    assert_exit(&out, 0);
    assert_eq!((file_server.requests(), env_server.requests()), (0, 2));
    // Without the variable, the file's base_url is the default.
    std::fs::remove_file(ws.path("in.results.jsonl")).unwrap();
    let out = ws.run(&["run", "in.jsonl", "--config", "volley.toml", "--model", "m"]);
    assert_exit(&out, 0);
    assert_eq!((file_server.requests(), env_server.requests()), (2, 2));
}

/// Runs `volley run in.jsonl --config NAME` with `text` as the file: it must stop with
/// exit 2 before sending anything; returns its stderr.
fn refused(name: &str, text: &str) -> String {
    let server = recording().0;
    let ws = Workspace::new();
    ws.write(name, text);
    ws.write("data.jsonl", "{\"id\": 1}\n");
    ws.prompts("in.jsonl", 2);
    let out = volley()
        .args([
            "run",
            "in.jsonl",
            "--config",
            name,
            "--model",
            "m",
            "--api-key-env",
        ])
        .arg(common::KEY_ENV)
        .env("VOLLEY_BASE_URL", &server.base_url)
        .current_dir(ws.dir.path())
        .output()
        .expect("run volley");
    assert_exit(&out, 2);
    assert_eq!(server.requests(), 0);
    assert!(!ws.path("in.results.jsonl").exists());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The first line of what `volley run` says about `flags`.
fn flag_error(flags: &[&str]) -> String {
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 1);
    let mut args = vec!["run", "in.jsonl", "--mock", "--model", "m"];
    args.extend_from_slice(flags);
    let out = ws.run(&args);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let first = stderr.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[test]
fn errors_name_the_file_the_line_and_the_key() {
    let same_as_flag = flag_error(&["--concurrency", "0"]);
    assert!(
        same_as_flag.starts_with("invalid value '0' for '--concurrency"),
        "{same_as_flag}"
    );
    let provider = "[providers.p]\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"K\"\n";
    let cases = [
        (
            "volley.toml",
            "[run]\nprogress = \"off\"\nconcurency = 4\n".to_string(),
            "error: volley.toml:3: run.concurency: unknown key: volley run has no flag --concurency (`volley run --help` lists them); did you mean concurrency?".to_string(),
        ),
        (
            "volley.toml",
            "# defaults\n[run]\nconcurrency = 0\n".to_string(),
            format!("error: volley.toml:3: run.concurrency: {same_as_flag}"),
        ),
        (
            "volley.toml",
            format!("{provider}rpn = 600\n"),
            "error: volley.toml:4: providers.p.rpn: unknown key (expected one of base_url, api_key_env, rpm, tpm, lanes, headers)".to_string(),
        ),
        (
            "volley.toml",
            format!("{provider}rpm = -5\n"),
            "error: volley.toml:4: providers.p.rpm: must be at least 1".to_string(),
        ),
        (
            "volley.toml",
            format!("{provider}\n[models.small]\nprovider = \"q\"\n"),
            "error: volley.toml:6: models.small.provider: no provider named \"q\" (configured: p)".to_string(),
        ),
        (
            "volley.toml",
            "[datasets.arith]\npath = \"data.jsonl\"\n\n[datasets.other]\npath = \"nowhere.jsonl\"\n".to_string(),
            "error: volley.toml:5: datasets.other.path: cannot read ".to_string(),
        ),
        (
            "volley.yaml",
            "run:\n  progress: \"off\"\n  concurency: 4\n".to_string(),
            "error: volley.yaml:3: run.concurency: unknown key".to_string(),
        ),
        (
            "volley.yaml",
            "run:\n  concurrency: 0\n".to_string(),
            format!("error: volley.yaml:2: run.concurrency: {same_as_flag}"),
        ),
        (
            "volley.yml",
            "providers:\n  p:\n    base_url: http://127.0.0.1:1/v1\n    api_key_env: K\nmodels:\n  small:\n    provider: q\n".to_string(),
            "error: volley.yml:7: models.small.provider: no provider named \"q\" (configured: p)".to_string(),
        ),
        (
            "volley.yaml",
            "providers:\n  p:\n    base_url: http://127.0.0.1:1/v1\n    api_key_env: K\n    rpn: 600\n".to_string(),
            "error: volley.yaml:5: providers.p.rpn: unknown key".to_string(),
        ),
        (
            "volley.yaml",
            "datasets:\n  arith:\n    path: nowhere.jsonl\n".to_string(),
            "error: volley.yaml:3: datasets.arith.path: cannot read ".to_string(),
        ),
        (
            "volley.toml",
            "[run]\nmetrics_linger = 3\n".to_string(),
            "error: volley.toml:1: run: the following required arguments were not provided: --metrics-addr <ADDR> (with the flags this section sets)".to_string(),
        ),
        (
            "volley.json",
            "{}".to_string(),
            "error: volley.json: a configuration file is TOML (name ending in .toml) or YAML (.yaml or .yml)".to_string(),
        ),
    ];
    for (name, text, expected) in cases {
        let stderr = refused(name, &text);
        assert!(
            stderr.starts_with(&expected),
            "{name}:\n{text}\nwanted: {expected}\ngot: {stderr}"
        );
    }
}

#[test]
fn a_providers_key_variable_that_is_not_set_is_named_at_its_line() {
    let ws = Workspace::new();
    ws.write(
        "volley.toml",
        "[providers.p]\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = [\"VOLLEY_TEST_KEY\",\n  \"UNSET_KEY_VARIABLE\"]\n",
    );
    ws.prompts("in.jsonl", 1);
    let out = ws.run(&["run", "in.jsonl", "--config", "volley.toml", "--model", "m"]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: volley.toml:4: providers.p.api_key_env[1]: the variable UNSET_KEY_VARIABLE is not set or empty"),
        "{stderr}"
    );
    // A --base-url beside providers is refused rather than guessed at.
    let out = ws.run(&[
        "run",
        "in.jsonl",
        "--config",
        "volley.toml",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:2/v1",
    ]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--base-url"));
}

#[test]
fn the_example_config_runs_on_the_mock_without_a_key() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ws = Workspace::new();
    std::fs::copy(root.join("examples/volley.toml"), ws.path("volley.toml")).unwrap();
    std::fs::copy(root.join("examples/routed.jsonl"), ws.path("routed.jsonl")).unwrap();
    let out = volley()
        .args(["run", "routed.jsonl", "--config", "volley.toml", "--mock"])
        .env_remove(common::KEY_ENV)
        .current_dir(ws.dir.path())
        .output()
        .expect("run volley");
    assert_exit(&out, 0);
    let results = ws.jsonl("routed.results.jsonl");
    assert!(!results.is_empty());
    let models: std::collections::BTreeSet<String> = results
        .iter()
        .map(|r| {
            r["volley"]["model"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(models.len() >= 2, "{models:?}");
}

#[test]
fn serve_config_routes_proxied_calls_and_batch_lines() {
    let (one, two) = (MockProc::start(&[]), MockProc::start(&[]));
    let ws = Workspace::new();
    ws.write(
        "volley.toml",
        &two_providers(&one.base_url, &two.base_url).replace(
            "[run]\nprogress = \"off\"\n",
            "[serve]\nproxy_max_wait = 30\n",
        ),
    );
    let config = ws.path("volley.toml");
    let serve = ServeProc::start_with(
        &ws.path("data"),
        &["--config", config.to_str().unwrap()],
        &[("KEY_ONE", KEY_ONE), ("KEY_TWO", KEY_TWO)],
    );
    // A proxied call names a configured model.
    let r = serve.post(
        "/v1/chat/completions",
        &json!({"model": "large", "messages": [{"role": "user", "content": "hi"}]}),
    );
    r.expect(200, "proxied call");
    assert_eq!(r.json()["model"], "vendor/large-2");
    assert_eq!(two.stats()["requests"], 1);
    assert_eq!(one.stats()["requests"], 0);

    // A batch whose lines name both.
    let lines: String = [("s1", "small"), ("l1", "large"), ("s2", "small")]
        .iter()
        .map(|(id, model)| {
            json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": model, "messages": [{"role": "user", "content": "hello there, how are you"}]}})
            .to_string()
                + "\n"
        })
        .collect();
    let file_id = serve.upload_ok("in.jsonl", lines.as_bytes());
    let batch = serve.create_batch(&file_id);
    let batch = serve.wait_for(
        batch["id"].as_str().unwrap(),
        &["completed", "failed"],
        Duration::from_secs(30),
    );
    assert_eq!(batch["status"], "completed", "{batch}");
    let output = by_id(serve.file_lines(batch["output_file_id"].as_str().unwrap()));
    assert_eq!(output.len(), 3);
    for (id, model, tokens) in [
        ("s1", "vendor/small-1", Some(3)),
        ("l1", "vendor/large-2", None),
        ("s2", "vendor/small-1", Some(3)),
    ] {
        let body = &output[id]["response"]["body"];
        assert_eq!(body["model"], model, "{id}");
        if let Some(tokens) = tokens {
            assert_eq!(
                body["usage"]["completion_tokens"], tokens,
                "{id}: max_tokens applied"
            );
        }
    }
    assert_eq!(one.stats()["requests"], 2);
    assert_eq!(two.stats()["requests"], 2);
    assert_no_keys(&[&serve.log()]);
}
