//! Key pools and provider limits end to end: pacing per key, learned limits, keys that
//! leave the pool, and waits that are waited out.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A second test key, with different last four characters than the first.
const KEY2_ENV: &str = "VOLLEY_TEST_KEY_2";
const KEY2: &str = "sk-test-0000000000005678";

fn each_once(ws: &Workspace, file: &str, n: usize) -> Vec<Value> {
    let lines = ws.jsonl(file);
    let ids: HashSet<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        (ids.len(), lines.len()),
        (n, n),
        "each custom_id exactly once"
    );
    lines
}

fn run_with(ws: &Workspace, args: &[&str]) -> std::process::Output {
    volley()
        .env(KEY2_ENV, KEY2)
        .args(args)
        .current_dir(ws.dir.path())
        .output()
        .unwrap()
}

#[test]
fn two_keys_double_the_throughput_and_each_stays_under_its_limit() {
    let mock = MockProc::start(&["--rpm", "600"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 60);
    let timed = |extra: &[&str], out: &str| {
        let started = Instant::now();
        let mut flags = vec!["--rpm", "600", "-o", out, "--errors", "e.jsonl"];
        flags.extend_from_slice(extra);
        let result = run_with(&ws, &run_args("b.jsonl", &mock.base_url, &flags));
        assert_exit(&result, 0);
        started.elapsed()
    };
    let one = timed(&[], "one.jsonl");
    let two = timed(&["--api-key-env", KEY2_ENV], "two.jsonl");
    each_once(&ws, "two.jsonl", 60);
    assert!(
        two.as_secs_f64() < one.as_secs_f64() * 0.7,
        "one key {one:?}, two keys {two:?}"
    );
    let stats = mock.stats();
    assert!(stats["by_status"].get("429").is_none(), "{stats}");
    for key in ["1234", "5678"] {
        let k = &stats["by_key"][key];
        assert!(
            k["peak_requests_per_minute"].as_u64().unwrap() <= 600,
            "{stats}"
        );
        assert_eq!(k["rate_limited"], 0);
    }
    // The second run spread its 60 requests over both keys.
    let used: HashSet<String> = ws
        .jsonl("two.jsonl")
        .iter()
        .map(|r| r["volley"]["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        used,
        HashSet::from(["key#1".to_string(), "key#2".to_string()])
    );
}

#[test]
fn a_token_buckets_burst_is_spent_at_once_then_its_rate_is_kept() {
    // 600/min with a burst of 50: the burst goes at once, the other 100 at 10/s, so the
    // provider's limit allows about 10 s.
    let mock = MockProc::start(&["--rpm", "600", "--limit-shape", "bucket", "--burst", "50"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 150);
    let started = Instant::now();
    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &[
            "--concurrency",
            "8",
            "--progress",
            "log",
            "--events",
            "ev.jsonl",
        ],
    ));
    let took = started.elapsed();
    assert_exit(&out, 0);
    each_once(&ws, "b.results.jsonl", 150);
    let stats = mock.stats();
    let refused = stats["by_status"]["429"].as_u64().unwrap_or(0);
    let refusals: Vec<String> = ws
        .jsonl("ev.jsonl")
        .iter()
        .filter(|e| e["outcome"] == "rate_limited" || e["event"] == "limit_learned")
        .map(|e| e.to_string())
        .collect();
    assert!(
        refused <= 2,
        "at most 1% of requests answered 429: {stats}\n{}",
        refusals.join("\n")
    );
    assert!(
        took >= Duration::from_secs(9),
        "faster than the bucket allows: {took:?}"
    );
    assert!(
        took <= Duration::from_secs(20),
        "more than twice the time the bucket allows: {took:?}"
    );
}

#[test]
fn limits_announced_in_headers_are_learned_and_respected() {
    let mock = MockProc::start(&["--rpm", "600"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 140);
    let started = Instant::now();
    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &["--progress", "log", "--events", "ev.jsonl"],
    ));
    assert_exit(&out, 0);
    each_once(&ws, "b.results.jsonl", 140);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key#1 limits from the provider: 600 requests/min"),
        "{err}"
    );
    let stats = mock.stats();
    assert!(
        stats["by_status"].get("429").is_none(),
        "no 429 once the limit is known: {stats}"
    );
    // 140 of the 600 the window allows: what remains is spent at once, not paced out
    // over the minute (an even pace would take 14 s).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "what remained was left idle: {:?}",
        started.elapsed()
    );
    let learned = ws
        .jsonl("ev.jsonl")
        .iter()
        .filter(|e| e["event"] == "limit_learned")
        .count();
    assert_eq!(learned, 1, "learned once, not once per response");
}

#[test]
fn a_key_out_of_credits_leaves_the_pool_and_its_requests_move() {
    // key#1 (…1234) has credit for about fifteen requests; key#2 has no cap.
    let mock = MockProc::start(&["--key-credits", "1234=200", "--latency-ms", "20"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 60);
    let out = run_with(
        &ws,
        &run_args(
            "b.jsonl",
            &mock.base_url,
            &["--api-key-env", KEY2_ENV, "--concurrency", "8"],
        ),
    );
    assert_exit(&out, 0);
    let results = each_once(&ws, "b.results.jsonl", 60);
    assert!(ws.jsonl("b.errors.jsonl").is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key#1 leaves the pool (credits_exhausted)"),
        "{err}"
    );
    assert!(
        err.contains("key#1 retired: credits_exhausted"),
        "the report says why: {err}"
    );
    assert!(!err.contains("sk-test-"), "a key leaked: {err}");
    let stats = mock.stats();
    assert!(
        stats["by_key"]["1234"]["payment_required"]
            .as_u64()
            .unwrap()
            >= 1,
        "{stats}"
    );
    let moved = results
        .iter()
        .filter(|r| r["volley"]["key"] == "key#2" && r["volley"]["attempts"].as_u64().unwrap() > 1)
        .count();
    assert!(moved >= 1, "a request refused on key#1 finished on key#2");
}

#[test]
fn an_in_flight_budget_402_is_waited_out_not_a_retirement() {
    let mock = MockProc::start(&["--in-flight-budget", "2", "--latency-ms", "100"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 20);
    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &["--concurrency", "8"],
    ));
    assert_exit(&out, 0);
    each_once(&ws, "b.results.jsonl", 20);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("leaves the pool"), "{err}");
    assert!(mock.stats()["by_status"]["402"].as_u64().unwrap() >= 1);
}

#[test]
fn a_wait_longer_than_max_wait_spends_the_key_and_the_run_stops_resumably() {
    let mock = MockProc::start(&["--rpm", "2", "--hide-limits"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 5);
    let started = Instant::now();
    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &["--max-wait", "5", "--concurrency", "1"],
    ));
    assert_exit(&out, 3);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the long wait was not slept through"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("quota_exhausted") && err.contains("--max-wait"),
        "{err}"
    );
    assert_eq!(ws.jsonl("b.results.jsonl").len(), 2);
    assert!(
        ws.jsonl("b.errors.jsonl").is_empty(),
        "unfinished requests are left for a re-run, not failed"
    );
}

#[test]
fn key_info_is_read_and_reported_before_the_run() {
    let mock = MockProc::start(&["--key-credits", "1234=5000"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 3);
    let out = ws.run(&run_args("b.jsonl", &mock.base_url, &["--key-info"]));
    assert_exit(&out, 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key#1: credit limit $5000.00 · remaining $5000.00"),
        "{err}"
    );
    // A provider without the endpoint is no reason to fail.
    let server = ScriptServer::start(vec![Scripted::new(
        404,
        serde_json::json!({"error": "not found"}),
    )]);
    let out = ws.run(&run_args(
        "b.jsonl",
        &server.base_url,
        &[
            "--key-info",
            "-o",
            "x.jsonl",
            "--errors",
            "y.jsonl",
            "--max-retries",
            "0",
        ],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not read the key's limits"), "{err}");
}

#[test]
fn a_tokens_per_minute_limit_paces_requests_of_varied_sizes() {
    let mock = MockProc::start(&["--tpm", "60000"]);
    let ws = Workspace::new();
    let mut text = String::new();
    for i in 0..60 {
        let words = "word ".repeat(5 + (i * 37) % 150);
        text.push_str(&format!(
            "{{\"id\":\"t{i}\",\"prompt\":\"summarise: {words}\",\"max_tokens\":20}}\n"
        ));
    }
    ws.write("b.jsonl", &text);
    let started = Instant::now();
    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &["--tpm", "60000", "--events", "ev.jsonl"],
    ));
    let took = started.elapsed();
    assert_exit(&out, 0);
    each_once(&ws, "b.results.jsonl", 60);
    let stats = mock.stats();
    assert!(stats["by_status"].get("429").is_none(), "{stats}");
    // 60,000 tokens/min is 1,000/s after a one-second burst: the batch books about
    // 6,000 tokens (tokenizer estimate + max_tokens), so it cannot finish at once.
    let throttled = ws
        .jsonl("ev.jsonl")
        .iter()
        .filter(|e| e["event"] == "throttled")
        .count();
    assert!(
        throttled > 10,
        "requests waited for the token limit ({throttled} waits)"
    );
    assert!(
        took >= Duration::from_secs(3),
        "not paced by tokens: {took:?}"
    );
    // About 5 s of tokens past the burst: twice that is too slow.
    assert!(
        took <= Duration::from_secs(12),
        "more than twice the time the token limit allows: {took:?}"
    );
}
