//! Cost, the `--max-cost` budget and the final report, end to end: the real binary
//! against the real mock, whose `/mock/stats` is the bill every figure must match;
//! the HTML report is rendered in headless Chromium.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::browser::{assert_self_contained, chromium, figure, headless, rendered_dom};
use common::*;
use serde_json::{Value, json};

/// Flags that keep retries quick in tests.
const FAST_RETRY: [&str; 4] = ["--initial-backoff", "0.01", "--max-backoff", "0.1"];

/// Flags for a [`json_batch`] run: replies must be JSON, so its plain-text lines fail
/// with `invalid_response` on all of their 6 attempts; the retry budget is large
/// enough that every request gets its retries.
const EXPECT_JSON: [&str; 10] = [
    "--expect",
    "json",
    "--max-retries",
    "5",
    "--retry-budget",
    "1",
    "--initial-backoff",
    "0.01",
    "--max-backoff",
    "0.1",
];

/// What the mock charges, USD per million tokens, when it reports `usage.cost`.
const MOCK_PRICE: f64 = 2.5;

/// `a == b` up to floating-point summation order.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12)
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        close(actual, expected),
        "{what}: {actual} != {expected} (difference {})",
        actual - expected
    );
}

/// Writes `n` shorthand lines `r0..r{n-1}` that ask for a JSON reply, except every
/// `plain_every`-th one, which asks for plain text: under `--expect json` those fail
/// with `invalid_response` on every attempt, each attempt answered 200 with usage, so
/// billed. Returns the ids of the plain lines.
fn json_batch(ws: &Workspace, name: &str, n: usize, plain_every: Option<usize>) -> Vec<String> {
    let mut text = String::new();
    let mut plain = Vec::new();
    for i in 0..n {
        let mut line = json!({
            "id": format!("r{i}"),
            "prompt": format!("question number {i}: {}", "words ".repeat(i % 7)),
            "max_tokens": 50,
        });
        if plain_every.is_some_and(|k| i % k == k / 2) {
            plain.push(format!("r{i}"));
        } else {
            line["response_format"] = json!({"type": "json_object"});
        }
        text.push_str(&line.to_string());
        text.push('\n');
    }
    ws.write(name, &text);
    plain
}

fn append(ws: &Workspace, name: &str, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(ws.path(name))
        .expect("open for append");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("append");
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().expect("custom_id").to_string())
        .collect()
}

/// The ids of `lines`, each of which must appear once.
fn unique_ids(lines: &[Value]) -> HashSet<String> {
    let all = ids(lines);
    let unique: HashSet<String> = all.iter().cloned().collect();
    assert_eq!(unique.len(), all.len(), "a custom_id appears twice");
    unique
}

fn u64_at(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a count: {v}"))
}

fn f64_at(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// (prompt, completion, total) of a `usage` object of volley's.
fn tokens(usage: &Value) -> (u64, u64, u64) {
    (
        u64_at(&usage["prompt_tokens"], "prompt_tokens"),
        u64_at(&usage["completion_tokens"], "completion_tokens"),
        u64_at(&usage["total_tokens"], "total_tokens"),
    )
}

/// (prompt, completion, total) the mock billed.
fn billed_tokens(stats: &Value) -> (u64, u64, u64) {
    let t = &stats["tokens_billed"];
    (
        u64_at(&t["prompt"], "tokens_billed.prompt"),
        u64_at(&t["completion"], "tokens_billed.completion"),
        u64_at(&t["total"], "tokens_billed.total"),
    )
}

fn billed_cost(stats: &Value) -> f64 {
    f64_at(&stats["cost_billed"], "cost_billed")
}

/// The cost of an output line, which must be known unless the request got no usage at
/// all; `volley.cost` repeats `volley.usage.cost`.
fn line_cost(line: &Value) -> f64 {
    let v = &line["volley"];
    assert_eq!(v["cost"], v["usage"]["cost"], "volley.cost: {line}");
    match v["usage"]["cost"].as_f64() {
        Some(c) => c,
        None => {
            assert_eq!(
                tokens(&v["usage"]).2,
                0,
                "a line with tokens and no cost although the mock reports usage.cost: {line}"
            );
            0.0
        }
    }
}

/// Runs `volley run` on `input` against `mock` with `extra` flags.
fn run(ws: &Workspace, input: &str, mock: &MockProc, extra: &[&str]) -> std::process::Output {
    ws.run(&run_args(input, &mock.base_url, extra))
}

#[test]
fn report_cost_and_tokens_equal_the_mocks_bill_failed_attempts_included() {
    let mock = MockProc::start(&[
        "--cost-per-million-tokens",
        "2.5",
        "--fail-rate",
        "0.05",
        "--seed",
        "3",
    ]);
    let ws = Workspace::new();
    let plain = json_batch(&ws, "batch.jsonl", 300, Some(25));
    let out = run(
        &ws,
        "batch.jsonl",
        &mock,
        &[
            &["--concurrency", "16", "--report", "r.json"][..],
            &EXPECT_JSON,
        ]
        .concat(),
    );
    // The plain-text requests fail for good: some failed, none left over.
    assert_exit(&out, 1);
    let stats = mock.stats();
    let report = read_json(&ws.path("r.json"));
    let results = ws.jsonl("batch.results.jsonl");
    let errors = ws.jsonl("batch.errors.jsonl");
    let explain_all = || format!("{}\nstats: {stats}\nreport: {report}", explain(&out));

    // Every request lands once, in RESULTS or ERRORS; the plain ones in ERRORS, their
    // failed attempts billed (tokens, cost) like any other.
    let ok_ids = unique_ids(&results);
    let failed_ids = unique_ids(&errors);
    assert!(ok_ids.is_disjoint(&failed_ids), "{}", explain_all());
    assert_eq!(ok_ids.len() + failed_ids.len(), 300, "{}", explain_all());
    for id in &plain {
        assert!(failed_ids.contains(id), "{id} should have failed");
    }
    let invalid: Vec<&Value> = errors
        .iter()
        .filter(|e| e["error"]["code"] == "invalid_response")
        .collect();
    assert!(!invalid.is_empty(), "{}", explain_all());
    for e in &invalid {
        assert!(
            tokens(&e["volley"]["usage"]).2 > 0,
            "tokens of failed attempts: {e}"
        );
        assert!(line_cost(e) > 0.0, "cost of failed attempts: {e}");
    }
    let faults = u64_at(&stats["faults"]["fail"], "faults.fail");
    assert!(faults > 0, "the mock should have injected 5xx: {stats}");

    // The report's tokens and cost are the mock's bill.
    let billed = billed_cost(&stats);
    assert!(billed > 0.0, "{stats}");
    assert_eq!(
        tokens(&report["usage"]),
        billed_tokens(&stats),
        "{}",
        explain_all()
    );
    let cost = f64_at(&report["usage"]["cost"], "report usage.cost");
    assert_close(cost, billed, "report usage.cost vs the mock's cost_billed");
    // ... and the mock's price per token, applied to the tokens it billed.
    assert_close(
        cost,
        billed_tokens(&stats).2 as f64 * MOCK_PRICE / 1e6,
        "cost at the mock's price",
    );
    assert_eq!(
        u64_at(&report["attempts"], "attempts"),
        u64_at(&stats["requests"], "requests"),
        "every attempt reached the mock once: {}",
        explain_all()
    );

    // Per model: one model, holding everything.
    let models = report["models"].as_object().expect("models");
    let model_cost: f64 = models
        .values()
        .map(|m| f64_at(&m["usage"]["cost"], "model cost"))
        .sum();
    assert_close(model_cost, billed, "sum of per-model cost");
    let model_tokens: u64 = models.values().map(|m| tokens(&m["usage"]).2).sum();
    assert_eq!(model_tokens, billed_tokens(&stats).2);
    assert_eq!(
        models.keys().collect::<Vec<_>>(),
        ["m"],
        "{}",
        explain_all()
    );

    // The output lines: each request's usage sums its attempts, so their sums are the
    // bill again, and each line's cost is its tokens at the mock's price.
    let lines: Vec<&Value> = results.iter().chain(&errors).collect();
    let line_tokens = lines.iter().fold((0, 0, 0), |acc, l| {
        let t = tokens(&l["volley"]["usage"]);
        (acc.0 + t.0, acc.1 + t.1, acc.2 + t.2)
    });
    assert_eq!(
        line_tokens,
        billed_tokens(&stats),
        "tokens in RESULTS+ERRORS"
    );
    let lines_cost: f64 = lines.iter().map(|l| line_cost(l)).sum();
    assert_close(lines_cost, billed, "cost in RESULTS+ERRORS");
    for l in &lines {
        let total = tokens(&l["volley"]["usage"]).2;
        assert_close(
            line_cost(l),
            total as f64 * MOCK_PRICE / 1e6,
            &format!("cost of {}", l["custom_id"]),
        );
    }
    let line_attempts: u64 = lines
        .iter()
        .map(|l| u64_at(&l["volley"]["attempts"], "attempts"))
        .sum();
    assert_eq!(line_attempts, u64_at(&report["attempts"], "attempts"));
    let counts = &report["requests"];
    assert_eq!(counts["succeeded"], json!(ok_ids.len()));
    assert_eq!(counts["failed"], json!(failed_ids.len()));
    assert_eq!(counts["not_finished"], 0);
}

#[test]
fn a_pricing_table_prices_tokens_and_an_unpriced_model_costs_unknown_not_zero() {
    // The mock reports no usage.cost here: cost can only come from the table.
    let mock = MockProc::start(&["--fail-rate", "0.05", "--seed", "5"]);
    let ws = Workspace::new();
    // Dear prices: a few dollars for the batch, easy to read in the summary.
    const PROMPT: f64 = 1500.0;
    const COMPLETION: f64 = 6000.0;
    ws.write(
        "p.toml",
        &format!("[m]\nprompt = {PROMPT:?}\ncompletion = {COMPLETION:?}\n"),
    );
    ws.prompts("batch.jsonl", 200);
    let out = run(
        &ws,
        "batch.jsonl",
        &mock,
        &[
            &["--pricing", "p.toml", "--report", "r.json"][..],
            &FAST_RETRY,
        ]
        .concat(),
    );
    assert_exit(&out, 0);
    let stats = mock.stats();
    assert_eq!(
        stats["cost_billed"], 0.0,
        "the mock reported no cost: {stats}"
    );
    let report = read_json(&ws.path("r.json"));
    let (prompt, completion, total) = billed_tokens(&stats);
    assert_eq!(tokens(&report["usage"]), (prompt, completion, total));
    let expected = prompt as f64 * PROMPT / 1e6 + completion as f64 * COMPLETION / 1e6;
    assert_close(
        f64_at(&report["usage"]["cost"], "usage.cost"),
        expected,
        "cost from the pricing table",
    );
    assert_close(
        f64_at(&report["models"]["m"]["usage"]["cost"], "m cost"),
        expected,
        "cost of model m",
    );
    let results = ws.jsonl("batch.results.jsonl");
    assert_eq!(unique_ids(&results).len(), 200);
    for r in &results {
        let (p, c, _) = tokens(&r["volley"]["usage"]);
        assert_close(
            f64_at(&r["volley"]["cost"], "volley.cost"),
            p as f64 * PROMPT / 1e6 + c as f64 * COMPLETION / 1e6,
            &format!("cost of {}", r["custom_id"]),
        );
    }

    // Half the requests name a model the table does not price: their cost, and so the
    // total, is unknown (null) — never 0 — while the priced model's stays known.
    let ws = Workspace::new();
    ws.write(
        "p.json",
        &format!(r#"{{"m": {{"prompt": {PROMPT}, "completion": {COMPLETION}}}}}"#),
    );
    let mut text = String::new();
    for i in 0..100 {
        let model = if i % 2 == 0 { "m" } else { "unpriced/model" };
        text.push_str(&format!(
            "{{\"id\":\"q{i}\",\"prompt\":\"question {i}\",\"model\":\"{model}\",\"max_tokens\":20}}\n"
        ));
    }
    ws.write("mixed.jsonl", &text);
    let before = billed_tokens(&mock.stats());
    let out = run(
        &ws,
        "mixed.jsonl",
        &mock,
        &[
            &["--pricing", "p.json", "--report", "r.json"][..],
            &FAST_RETRY,
        ]
        .concat(),
    );
    assert_exit(&out, 0);
    let after = billed_tokens(&mock.stats());
    let report = read_json(&ws.path("r.json"));
    assert_eq!(
        tokens(&report["usage"]).2,
        after.2 - before.2,
        "tokens are counted whether or not they are priced"
    );
    let usage = report["usage"].as_object().expect("usage");
    assert_eq!(
        usage.get("cost"),
        Some(&Value::Null),
        "total cost must be null (unknown): {report}"
    );
    let unpriced = &report["models"]["unpriced/model"];
    assert_eq!(unpriced["usage"]["cost"], Value::Null, "{report}");
    assert!(tokens(&unpriced["usage"]).2 > 0, "{report}");
    // One attempt with usage per request (the mock's 5xx carry none), each unpriced.
    assert_eq!(
        unpriced["cost_unknown_attempts"], unpriced["requests"],
        "every attempt of the unpriced model with usage has an unknown cost: {report}"
    );
    let priced = &report["models"]["m"];
    assert_eq!(priced["cost_unknown_attempts"], 0, "{report}");
    let (p, c, _) = tokens(&priced["usage"]);
    assert_close(
        f64_at(&priced["usage"]["cost"], "m cost"),
        p as f64 * PROMPT / 1e6 + c as f64 * COMPLETION / 1e6,
        "the priced model's cost",
    );
    for r in ws.jsonl("mixed.results.jsonl") {
        let unpriced = r["volley"]["model"] == "unpriced/model";
        assert_eq!(r["volley"]["cost"].is_null(), unpriced, "{r}");
    }
    // The printed summary says so in words.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let total_line = stderr
        .lines()
        .find(|l| l.contains("tokens (all attempts)"))
        .unwrap_or_else(|| panic!("no token line in the summary:\n{stderr}"));
    assert!(total_line.ends_with("cost unknown"), "{total_line}");
    let model_line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("unpriced/model:"))
        .unwrap_or_else(|| panic!("no line for the unpriced model:\n{stderr}"));
    assert!(model_line.ends_with("cost unknown"), "{model_line}");
    assert!(!model_line.contains('$'), "{model_line}");
    let m_line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with("m:"))
        .unwrap_or_else(|| panic!("no line for model m:\n{stderr}"));
    assert!(m_line.contains("cost $"), "{m_line}");

    // Recomputed from the files, the unknown stays unknown.
    let out = ws.run(&[
        "report",
        "mixed.results.jsonl",
        "--errors",
        "mixed.errors.jsonl",
        "--json",
        "files.json",
    ]);
    assert_exit(&out, 0);
    let files = read_json(&ws.path("files.json"));
    assert_eq!(files["usage"]["cost"], Value::Null, "{files}");
    assert_eq!(
        files["models"]["unpriced/model"]["usage"]["cost"],
        Value::Null
    );
    assert_close(
        f64_at(&files["models"]["m"]["usage"]["cost"], "m cost from files"),
        f64_at(&priced["usage"]["cost"], "m cost"),
        "the priced model's cost from the files",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cost unknown"),
        "{}",
        explain(&out)
    );
}

#[test]
fn max_cost_stops_near_the_cap_with_exit_3_and_a_rerun_finishes_without_duplicates() {
    const N: usize = 300;
    const CONCURRENCY: usize = 8;
    let concurrency = CONCURRENCY.to_string();

    // The whole batch once, to learn what it costs.
    let full_mock = MockProc::start(&["--cost-per-million-tokens", "2.5"]);
    let ws = Workspace::new();
    ws.prompts("batch.jsonl", N);
    let out = run(
        &ws,
        "batch.jsonl",
        &full_mock,
        &["--concurrency", &concurrency],
    );
    assert_exit(&out, 0);
    let total = billed_cost(&full_mock.stats());
    let full = ws.jsonl("batch.results.jsonl");
    assert_eq!(unique_ids(&full).len(), N);
    assert_close(
        full.iter().map(line_cost).sum::<f64>(),
        total,
        "the full run's cost",
    );
    // No faults: one attempt per request, so the dearest line is the dearest attempt.
    assert!(full.iter().all(|l| l["volley"]["attempts"] == 1));
    let dearest = full.iter().map(line_cost).fold(0.0, f64::max);
    assert!(
        dearest > 0.0 && dearest < total / 30.0,
        "{dearest} of {total}"
    );
    drop(full_mock);

    // A third of that as the cap, against a fresh mock that takes its time, so that
    // requests queue for a slot while others are in flight: those must not slip past
    // the cap once it is reached.
    let mock = MockProc::start(&[
        "--cost-per-million-tokens",
        "2.5",
        "--latency-ms",
        "5",
        "--jitter-ms",
        "30",
        "--seed",
        "2",
    ]);
    let ws = Workspace::new();
    ws.prompts("batch.jsonl", N);
    let cap = total / 3.0;
    let cap_arg = cap.to_string();
    let capped = run(
        &ws,
        "batch.jsonl",
        &mock,
        &[
            "--concurrency",
            &concurrency,
            "--max-cost",
            &cap_arg,
            "--report",
            "capped.json",
        ],
    );
    assert_exit(&capped, 3);
    let stats = mock.stats();
    let spent = billed_cost(&stats);
    let overshoot_bound = CONCURRENCY as f64 * dearest;
    assert!(
        spent <= cap + overshoot_bound + 1e-12,
        "spent ${spent} with a cap of ${cap}: more than {CONCURRENCY} in-flight attempts \
         (at most ${dearest} each) past the cap\n{}",
        explain(&capped)
    );
    assert!(
        spent >= cap - 2.0 * overshoot_bound,
        "stopped far below the cap: spent ${spent} of ${cap}\n{}",
        explain(&capped)
    );
    let stderr = String::from_utf8_lossy(&capped.stderr);
    assert!(stderr.contains("cost cap"), "{}", explain(&capped));
    let results = ws.jsonl("batch.results.jsonl");
    let done = unique_ids(&results);
    assert!(
        !done.is_empty() && done.len() < N,
        "{} of {N} done under the cap",
        done.len()
    );
    assert!(ws.jsonl("batch.errors.jsonl").is_empty());
    // What the capped run says it spent is what the mock billed.
    let report = read_json(&ws.path("capped.json"));
    assert_close(
        f64_at(&report["usage"]["cost"], "usage.cost"),
        spent,
        "the capped run's reported cost",
    );
    assert_close(
        results.iter().map(line_cost).sum::<f64>(),
        spent,
        "cost in the capped run's RESULTS",
    );
    assert!(
        report["stop_reason"]
            .as_str()
            .is_some_and(|r| r.contains("cost cap")),
        "{report}"
    );
    assert_eq!(
        report["requests"]["not_finished"],
        json!(N - done.len()),
        "{report}"
    );

    // The same command with room to spare finishes the batch, sending only the rest.
    let big_cap = (total * 10.0).to_string();
    let rerun = run(
        &ws,
        "batch.jsonl",
        &mock,
        &["--concurrency", &concurrency, "--max-cost", &big_cap],
    );
    assert_exit(&rerun, 0);
    let results = ws.jsonl("batch.results.jsonl");
    let all = unique_ids(&results);
    assert_eq!(all.len(), N, "{}", explain(&rerun));
    assert!(done.is_subset(&all));
    let stats = mock.stats();
    assert_eq!(
        u64_at(&stats["requests"], "requests"),
        N as u64,
        "each request was sent exactly once over both runs: {stats}"
    );
    assert_close(
        billed_cost(&stats),
        total,
        "both runs together cost what one full run does",
    );
}

/// The figures `--report` (from the run) and `volley report` (from the files) must
/// agree on, cost included.
fn assert_reports_agree(run: &Value, files: &Value) {
    let both = format!("run: {run}\nfiles: {files}");
    assert_eq!(run["source"], "run");
    assert_eq!(files["source"], "files");
    for field in ["succeeded", "failed", "invalid_input"] {
        assert_eq!(
            run["requests"][field], files["requests"][field],
            "requests.{field}\n{both}"
        );
    }
    for field in [
        "attempts",
        "retries",
        "attempts_histogram",
        "errors_by_code",
    ] {
        assert_eq!(run[field], files[field], "{field}\n{both}");
    }
    assert_eq!(tokens(&run["usage"]), tokens(&files["usage"]), "{both}");
    let run_models = run["models"].as_object().expect("models");
    let file_models = files["models"].as_object().expect("models");
    assert_eq!(
        run_models.keys().collect::<Vec<_>>(),
        file_models.keys().collect::<Vec<_>>(),
        "{both}"
    );
    for (name, m) in run_models {
        let f = &file_models[name];
        for field in ["requests", "succeeded", "failed", "attempts"] {
            assert_eq!(m[field], f[field], "models.{name}.{field}\n{both}");
        }
        assert_eq!(tokens(&m["usage"]), tokens(&f["usage"]), "{name}\n{both}");
    }
    // Cost: known in both and equal, or unknown in both.
    let cost = |r: &Value| r["usage"]["cost"].as_f64();
    match (cost(run), cost(files)) {
        (Some(a), Some(b)) => assert_close(b, a, "usage.cost from the files"),
        (a, b) => panic!("usage.cost: run {a:?}, files {b:?}\n{both}"),
    }
    for (name, m) in run_models {
        let (a, b) = (
            m["usage"]["cost"].as_f64(),
            file_models[name]["usage"]["cost"].as_f64(),
        );
        match (a, b) {
            (Some(a), Some(b)) => assert_close(b, a, &format!("models.{name} cost")),
            (a, b) => panic!("models.{name} cost: run {a:?}, files {b:?}\n{both}"),
        }
    }
}

/// Runs a batch with retried faults, failures with usage (`--expect json`) and an
/// invalid line; then `extra_lines` (appended to the input). Returns the run's report
/// and the one `volley report` recomputes from RESULTS and ERRORS.
fn report_twice(extra_lines: &str) -> (Value, Value) {
    let mock = MockProc::start(&[
        "--cost-per-million-tokens",
        "2.5",
        "--fail-rate",
        "0.05",
        "--seed",
        "11",
    ]);
    let ws = Workspace::new();
    json_batch(&ws, "batch.jsonl", 200, Some(20));
    append(&ws, "batch.jsonl", "{this line is not json\n");
    append(&ws, "batch.jsonl", extra_lines);
    let out = run(
        &ws,
        "batch.jsonl",
        &mock,
        &[
            &[
                "--concurrency",
                "8",
                "--skip-invalid",
                "--report",
                "run.json",
            ][..],
            &EXPECT_JSON,
        ]
        .concat(),
    );
    assert_exit(&out, 1);
    let errors = ws.jsonl("batch.errors.jsonl");
    let codes: HashSet<&str> = errors
        .iter()
        .filter_map(|e| e["error"]["code"].as_str())
        .collect();
    assert!(
        codes.contains("invalid_input") && codes.contains("invalid_response"),
        "{codes:?}\n{}",
        explain(&out)
    );
    let report = ws.run(&[
        "report",
        "batch.results.jsonl",
        "--errors",
        "batch.errors.jsonl",
        "--json",
        "files.json",
    ]);
    assert_exit(&report, 0);
    let run_report = read_json(&ws.path("run.json"));
    // The run's own figures are the mock's bill.
    let stats = mock.stats();
    assert_eq!(tokens(&run_report["usage"]), billed_tokens(&stats));
    assert_close(
        f64_at(&run_report["usage"]["cost"], "run usage.cost"),
        billed_cost(&stats),
        "the run's cost vs the mock's bill",
    );
    (run_report, read_json(&ws.path("files.json")))
}

#[test]
fn volley_report_from_the_files_agrees_with_the_runs_report() {
    let (run, files) = report_twice("");
    assert_eq!(run["requests"]["invalid_input"], 1);
    assert!(u64_at(&run["requests"]["failed"], "failed") >= 10, "{run}");
    assert!(
        run["attempts_histogram"].as_object().unwrap().len() > 1,
        "some requests took several attempts: {run}"
    );
    assert_reports_agree(&run, &files);
}

#[test]
fn volley_report_from_the_files_agrees_with_the_run_when_a_failure_got_no_usage() {
    // Embeddings without "input": the mock answers 400 at once, with no usage.
    let (run, files) = report_twice(
        "{\"custom_id\":\"no-input\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{\"model\":\"m\"}}\n",
    );
    assert_eq!(run["errors_by_code"]["bad_request"], 1, "{run}");
    assert_reports_agree(&run, &files);
}

#[test]
fn a_report_path_that_cannot_be_written_is_refused_before_any_request() {
    let mock = MockProc::start(&["--cost-per-million-tokens", "2.5"]);
    let ws = Workspace::new();
    ws.prompts("batch.jsonl", 5);
    let out = run(
        &ws,
        "batch.jsonl",
        &mock,
        &["--report", "no/such/folder/r.json"],
    );
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--report no/such/folder/r.json"),
        "{}",
        explain(&out)
    );
    assert_eq!(mock.stats()["requests"], 0, "nothing may be sent");
}

#[test]
fn volley_report_names_a_missing_file_and_a_bad_line() {
    let ws = Workspace::new();
    let out = ws.run(&["report", "missing.results.jsonl"]);
    assert_ne!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.results.jsonl"),
        "{}",
        explain(&out)
    );

    // Two real lines, then garbage: the garbage is named by file and line.
    let mock = MockProc::start(&["--cost-per-million-tokens", "2.5"]);
    ws.prompts("batch.jsonl", 2);
    assert_exit(&run(&ws, "batch.jsonl", &mock, &[]), 0);
    append(&ws, "batch.results.jsonl", "garbage, not a JSON line\n");
    let out = ws.run(&["report", "batch.results.jsonl"]);
    assert_ne!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("batch.results.jsonl:3"),
        "{}",
        explain(&out)
    );

    // A good RESULTS and a bad ERRORS: the ERRORS file is the one named.
    ws.write(
        "good.results.jsonl",
        &std::fs::read_to_string(ws.path("batch.results.jsonl"))
            .unwrap()
            .lines()
            .take(2)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    ws.write("bad.errors.jsonl", "{\"custom_id\":\"x\"}\n");
    let out = ws.run(&[
        "report",
        "good.results.jsonl",
        "--errors",
        "bad.errors.jsonl",
    ]);
    assert_ne!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.errors.jsonl:1"),
        "{}",
        explain(&out)
    );
    let out = ws.run(&["report", "good.results.jsonl", "--json", "good.json"]);
    assert_exit(&out, 0);
    assert_eq!(read_json(&ws.path("good.json"))["requests"]["succeeded"], 2);

    // A crash mid-write leaves a torn last line (no newline): the report of that run
    // is still made, without it, and says so.
    append(
        &ws,
        "good.results.jsonl",
        "{\"id\":\"vol-1\",\"custom_id\":\"torn",
    );
    let out = ws.run(&["report", "good.results.jsonl", "--json", "torn.json"]);
    assert_exit(&out, 0);
    assert_eq!(read_json(&ws.path("torn.json"))["requests"]["succeeded"], 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("good.results.jsonl:3: a line torn"),
        "{}",
        explain(&out)
    );
}

#[test]
fn the_html_report_renders_in_headless_chromium_with_every_plot_and_nothing_fetched() {
    let browser = chromium();
    let mock = MockProc::start(&[
        "--cost-per-million-tokens",
        "2.5",
        "--fail-rate",
        "0.05",
        "--latency-ms",
        "2",
        "--jitter-ms",
        "20",
        "--seed",
        "9",
    ]);
    let ws = Workspace::new();
    json_batch(&ws, "batch.jsonl", 200, Some(20));
    let out = run(
        &ws,
        "batch.jsonl",
        &mock,
        &[&["--concurrency", "16"][..], &EXPECT_JSON].concat(),
    );
    assert_exit(&out, 1);
    let out = ws.run(&[
        "report",
        "batch.results.jsonl",
        "--errors",
        "batch.errors.jsonl",
        "--html",
        "report.html",
    ]);
    assert_exit(&out, 0);
    let html_path = ws.path("report.html");
    let html = std::fs::read_to_string(&html_path).expect("report.html");

    assert_self_contained(&html);

    let work = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "file://{}",
        html_path.canonicalize().expect("absolute path").display()
    );
    let shot = work.path().join("shot.png");
    let status = headless(
        &browser,
        work.path(),
        "screenshot",
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,2000".into(),
        ],
        &url,
    );
    let log = |name: &str| {
        std::fs::read_to_string(work.path().join(format!("{name}.stderr"))).unwrap_or_default()
    };
    assert!(
        status.success(),
        "chromium: {status}\n{}",
        log("screenshot")
    );
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot ({e})\n{}", log("screenshot")));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the screenshot is not a PNG"
    );
    assert!(
        png.len() > 10 * 1024,
        "the screenshot is only {} bytes: a blank page?",
        png.len()
    );
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert!(
        width >= 1000 && height >= 1500,
        "screenshot {width}×{height}"
    );

    // The DOM Chromium built holds every plot, each with something drawn.
    let dom = rendered_dom(&html_path);
    assert!(dom.contains("<svg"), "no SVG in the DOM:\n{dom}");
    for (id, caption, mark) in [
        ("completions", "Completions over time", "<polyline"),
        ("latency", "Latency per request", "<rect"),
        ("attempts", "Attempts per request", "<rect"),
        ("tokens", "Tokens per model", "<rect"),
        ("cost", "Cost per model", "<rect"),
        ("errors", "Errors by reason", "<rect"),
    ] {
        let fig = figure(&dom, id);
        assert!(
            fig.contains(caption),
            "figure {id} lacks its caption: {fig}"
        );
        assert!(
            fig.contains("<svg") && fig.contains(mark),
            "figure {id} has nothing drawn: {fig}"
        );
    }
    assert!(figure(&dom, "errors").contains("invalid_response"));
    assert!(figure(&dom, "tokens").contains(">m<"));
    // The plain-text requests fail on every attempt: 1 + 5 retries each.
    assert!(
        figure(&dom, "attempts").contains("6 attempts"),
        "retried requests show in the attempts plot"
    );
}
