//! Prices from the provider's model list (`--fetch-prices`): a provider that reports no
//! `usage.cost` is priced from `GET /models`, the list is cached on disk, and a
//! `--pricing` file wins over it.

mod common;

use common::*;
use serde_json::Value;

fn report(ws: &Workspace, name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(ws.path(name)).unwrap()).unwrap()
}

/// Runs `volley run input --fetch-prices extra…` against `mock`, with the price
/// cache in `cache`.
fn run_fetching_prices(
    ws: &Workspace,
    mock: &MockProc,
    cache: &std::path::Path,
    input: &str,
    extra: &[&str],
) -> std::process::Output {
    let args = run_args(
        input,
        &mock.base_url,
        &[&["--fetch-prices"], extra].concat(),
    );
    volley()
        .args(&args)
        .env("XDG_CACHE_HOME", cache)
        .current_dir(ws.dir.path())
        .output()
        .unwrap()
}

#[test]
fn costs_come_from_the_model_list_which_is_fetched_once_and_cached() {
    // Prompt $2 and completion $8 per million tokens; no usage.cost in replies.
    let mock = MockProc::start(&["--model-price", "vendor/m=2,8"]);
    let ws = Workspace::new();
    let cache = ws.path("cache");
    ws.prompts("a.jsonl", 50);
    let out = run_fetching_prices(
        &ws,
        &mock,
        &cache,
        "a.jsonl",
        &["--report", "a.json", "--progress", "log"],
    );
    assert_exit(&out, 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("prices of 1 model from the provider's model list"),
        "{err}"
    );
    let billed = mock.stats();
    let prompt = billed["tokens_billed"]["prompt"].as_f64().unwrap();
    let completion = billed["tokens_billed"]["completion"].as_f64().unwrap();
    let expected = (prompt * 2.0 + completion * 8.0) / 1e6;
    // The lines ask for model `m`: the list's `vendor/m` prices it.
    let cost = report(&ws, "a.json")["usage"]["cost"].as_f64().unwrap();
    assert!(
        (cost - expected).abs() <= 1e-9 * expected,
        "{cost} vs {expected}"
    );

    // A second run reads the cached list: the provider is not asked again.
    ws.prompts("b.jsonl", 5);
    let out = run_fetching_prices(
        &ws,
        &mock,
        &cache,
        "b.jsonl",
        &["--report", "b.json", "--progress", "log"],
    );
    assert_exit(&out, 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cached copy"), "{err}");
    assert_eq!(mock.stats()["model_list_requests"], 1);
    assert!(report(&ws, "b.json")["usage"]["cost"].as_f64().unwrap() > 0.0);

    // A --pricing file wins over the list, and a model in neither stays unknown.
    ws.write("p.toml", "[m]\nprompt = 1.0\ncompletion = 1.0\n");
    ws.prompts("c.jsonl", 5);
    let before = mock.stats()["tokens_billed"]["total"].as_f64().unwrap();
    let out = run_fetching_prices(
        &ws,
        &mock,
        &cache,
        "c.jsonl",
        &["--pricing", "p.toml", "--report", "c.json"],
    );
    assert_exit(&out, 0);
    let tokens = mock.stats()["tokens_billed"]["total"].as_f64().unwrap() - before;
    let cost = report(&ws, "c.json")["usage"]["cost"].as_f64().unwrap();
    assert!((cost - tokens / 1e6).abs() <= 1e-12, "{cost} vs {tokens}");

    ws.write(
        "d.jsonl",
        "{\"id\":\"x\",\"model\":\"other\",\"prompt\":\"hi\"}\n",
    );
    let out = run_fetching_prices(
        &ws,
        &mock,
        &cache,
        "d.jsonl",
        &["--report", "d.json", "--progress", "log"],
    );
    assert_exit(&out, 0);
    assert!(report(&ws, "d.json")["usage"]["cost"].is_null());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cost unknown"));
}

#[test]
fn no_model_list_leaves_costs_unknown_and_the_run_goes_on() {
    // The mock lists no prices.
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.prompts("a.jsonl", 5);
    let out = run_fetching_prices(
        &ws,
        &mock,
        &ws.path("cache"),
        "a.jsonl",
        &["--report", "a.json", "--progress", "log"],
    );
    assert_exit(&out, 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not read model prices"), "{err}");
    assert!(report(&ws, "a.json")["usage"]["cost"].is_null());
}
