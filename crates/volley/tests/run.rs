//! `volley run` end to end: the real binary against the real mock (or a scripted server
//! for one-off sequences).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_each_once(lines: &[Value], n: usize) {
    let ids = ids(lines);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a custom_id appears twice");
    assert_eq!(ids.len(), n, "expected {n} lines");
}

fn total_tokens(lines: &[Value]) -> u64 {
    lines
        .iter()
        .map(|l| l["volley"]["usage"]["total_tokens"].as_u64().unwrap())
        .sum()
}

/// Flags that keep retries quick in tests.
const FAST_RETRY: [&str; 4] = ["--initial-backoff", "0.01", "--max-backoff", "0.2"];

#[test]
fn faults_are_retried_until_every_request_succeeds_and_tokens_match_the_bill() {
    let mock = MockProc::start(&[
        "--fail-rate",
        "0.05",
        "--malformed-rate",
        "0.01",
        "--reset-rate",
        "0.01",
        "--seed",
        "7",
    ]);
    let ws = Workspace::new();
    ws.prompts("batch.jsonl", 2000);
    let out = ws.run(&run_args(
        "batch.jsonl",
        &mock.base_url,
        &[&["--concurrency", "64"][..], &FAST_RETRY].concat(),
    ));
    assert_exit(&out, 0);
    let results = ws.jsonl("batch.results.jsonl");
    assert_each_once(&results, 2000);
    assert!(
        ws.jsonl("batch.errors.jsonl").is_empty(),
        "{}",
        explain(&out)
    );
    for r in &results {
        assert_eq!(r["response"]["status_code"], 200);
        assert!(r["error"].is_null());
        assert_eq!(r["volley"]["key"], "key#1");
        assert!(r["id"].as_str().unwrap().starts_with("vol-"));
    }
    let stats = mock.stats();
    let faults: u64 = ["fail", "malformed", "reset"]
        .iter()
        .map(|f| stats["faults"][f].as_u64().unwrap())
        .sum();
    assert!(faults > 50, "the mock should have injected faults: {stats}");
    let retried = results
        .iter()
        .filter(|r| r["volley"]["attempts"].as_u64().unwrap() > 1)
        .count();
    assert!(retried as u64 >= faults / 2, "faults were retried");
    // Tokens volley recorded over all attempts equal what the mock billed.
    assert_eq!(
        total_tokens(&results),
        stats["tokens_billed"]["total"].as_u64().unwrap(),
        "{stats}"
    );
    let text = std::fs::read_to_string(ws.path("batch.results.jsonl")).unwrap();
    assert_no_key("RESULTS", &text);
    assert_no_key("the log", &String::from_utf8_lossy(&out.stderr));
}

#[test]
fn killed_mid_run_and_resumed_every_request_lands_exactly_once() {
    let mock = MockProc::start(&["--latency-ms", "150", "--jitter-ms", "100", "--seed", "3"]);
    let ws = Workspace::new();
    ws.prompts("batch.jsonl", 400);
    let args = run_args("batch.jsonl", &mock.base_url, &["--concurrency", "32"]);
    let mut child = volley()
        .args(&args)
        .current_dir(ws.dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = std::fs::read_to_string(ws.path("batch.results.jsonl"))
            .map_or(0, |t| t.lines().count());
        if done >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = std::fs::read_to_string(ws.path("batch.results.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!(before < 400, "the run finished before it was killed");
    // Simulate the worst moment too: a crash halfway through writing a line.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(ws.path("batch.results.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"id\":\"vol-torn\",\"custom_id\":\"r39").unwrap();
    drop(f);

    let out = ws.run(&args);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("torn"),
        "{}",
        explain(&out)
    );
    assert_each_once(&ws.jsonl("batch.results.jsonl"), 400);
    // Everything finished before the kill was skipped.
    let sent = mock.stats()["requests"].as_u64().unwrap();
    assert!(
        sent <= 400 + 32 + 1,
        "re-run re-sent finished work: {sent} requests"
    );
}

#[test]
fn a_400_fails_after_one_attempt() {
    let server = ScriptServer::start(vec![Scripted::new(
        400,
        json!({"error": {"message": "bad parameter", "type": "invalid_request_error", "param": null, "code": null}}),
    )]);
    let ws = Workspace::new();
    ws.write("b.jsonl", "{\"custom_id\":\"x\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}}\n");
    let out = ws.run(&run_args("b.jsonl", &server.base_url, &[]));
    assert_exit(&out, 1);
    assert_eq!(server.requests(), 1);
    let errors = ws.jsonl("b.errors.jsonl");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "x");
    assert_eq!(errors[0]["response"]["status_code"], 400);
    assert_eq!(errors[0]["error"]["code"], "bad_request");
    assert_eq!(errors[0]["error"]["message"], "bad parameter");
    assert_eq!(errors[0]["volley"]["attempts"], 1);
    assert!(ws.jsonl("b.results.jsonl").is_empty());
}

#[test]
fn a_429_with_retry_after_is_not_retried_sooner() {
    let server = ScriptServer::start(vec![
        Scripted::new(
            429,
            json!({"error": {"message": "slow down", "code": "rate_limit_exceeded"}}),
        )
        .header("retry-after", "2"),
        Scripted::new(200, completion("hello")),
    ]);
    let ws = Workspace::new();
    ws.write("b.jsonl", "{\"prompt\":\"hi\"}\n");
    let out = ws.run(&run_args("b.jsonl", &server.base_url, &[]));
    assert_exit(&out, 0);
    let arrivals = server.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    assert!(
        gap <= Duration::from_secs(4),
        "waited more than twice the Retry-After: {gap:?}"
    );
    let results = ws.jsonl("b.results.jsonl");
    assert_eq!(results[0]["volley"]["attempts"], 2);
    assert_eq!(results[0]["custom_id"], "line-1");
}

#[test]
fn bad_input_exits_2_naming_file_and_line_before_any_request() {
    let server = ScriptServer::start(vec![Scripted::new(200, completion("ok"))]);
    let ws = Workspace::new();
    let lines = [
        r#"{"custom_id":"a","body":{"model":"m","messages":[{"role":"user","content":"1"}]}}"#,
        r#"{"custom_id":"b","body":{"model":"m","messages":[{"role":"user","content":"2"}]"#,
        r#"{"custom_id":"c","method":"POST","url":"/v1/chat/completions"}"#,
        "",
        r#"{"custom_id":"a","body":{"model":"m","messages":[{"role":"user","content":"3"}]}}"#,
        r#"{"custom_id":"d","body":{"model":"m","messages":[{"role":"user","content":"4"}]}}"#,
    ];
    ws.write("in.jsonl", &(lines.join("\n") + "\n"));
    let base = run_args("in.jsonl", &server.base_url, &[]);
    let out = ws.run(&base);
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in.jsonl:2: not valid JSON"), "{err}");
    assert!(err.contains("in.jsonl:3: field \"body\""), "{err}");
    assert!(
        err.contains("in.jsonl:5: custom_id \"a\" repeats line 1"),
        "{err}"
    );
    assert_eq!(
        server.requests(),
        0,
        "nothing may be sent when the input is bad"
    );

    let out = ws.run(&[&base[..], &["--skip-invalid"]].concat());
    assert_exit(&out, 1);
    let results = ws.jsonl("in.results.jsonl");
    assert_eq!(
        ids(&results).into_iter().collect::<HashSet<_>>(),
        HashSet::from(["a".to_string(), "d".to_string()])
    );
    let errors = ws.jsonl("in.errors.jsonl");
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().all(|e| e["error"]["code"] == "invalid_input"));
    assert!(errors.iter().any(|e| {
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in.jsonl:5")
    }));

    // A re-run finds nothing left to do and files nothing twice.
    let out = ws.run(&[&base[..], &["--skip-invalid"]].concat());
    assert_exit(&out, 1);
    assert_eq!(ws.jsonl("in.errors.jsonl").len(), 3);
    assert_eq!(server.requests(), 2);
}

#[test]
fn the_retry_budget_stops_a_retry_storm() {
    let mock = MockProc::start(&["--fail-rate", "1.0"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 100);
    let out = ws.run(&run_args("b.jsonl", &mock.base_url, &FAST_RETRY));
    assert_exit(&out, 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retry budget spent"),
        "{}",
        explain(&out)
    );
    assert_eq!(ws.jsonl("b.errors.jsonl").len(), 100);
    // 100 first attempts + at most 10 + 20% of 100 retries.
    let sent = mock.stats()["requests"].as_u64().unwrap();
    assert!(sent <= 130, "{sent} requests: the budget did not hold");
}

#[test]
fn json_schema_failures_are_retried_and_their_tokens_kept() {
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.write("schema.json", r#"{"type":"object","required":["verdict"]}"#);
    ws.write("b.jsonl", "{\"id\":\"j\",\"prompt\":\"answer in JSON\",\"response_format\":{\"type\":\"json_object\"}}\n");
    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &[
            &["--json-schema", "schema.json", "--max-retries", "2"][..],
            &FAST_RETRY,
        ]
        .concat(),
    ));
    assert_exit(&out, 1);
    let errors = ws.jsonl("b.errors.jsonl");
    assert_eq!(errors[0]["error"]["code"], "invalid_response");
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("schema")
    );
    assert_eq!(errors[0]["volley"]["attempts"], 3);
    let billed = mock.stats()["tokens_billed"]["total"].as_u64().unwrap();
    assert!(billed > 0);
    assert_eq!(
        errors[0]["volley"]["usage"]["total_tokens"]
            .as_u64()
            .unwrap(),
        billed
    );

    // --expect json accepts the same replies.
    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &[
            "-o",
            "json.results.jsonl",
            "--errors",
            "json.errors.jsonl",
            "--expect",
            "json",
        ],
    ));
    assert_exit(&out, 0);
    let content =
        ws.jsonl("json.results.jsonl")[0]["response"]["body"]["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(serde_json::from_str::<Value>(&content).is_ok());
}

#[test]
fn limit_offset_events_stdin_and_sort() {
    let mock = MockProc::start(&["--jitter-ms", "20"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 30);

    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &["--offset", "5", "--limit", "10", "--events", "ev.jsonl"],
    ));
    assert_exit(&out, 0);
    let got: HashSet<String> = ids(&ws.jsonl("b.results.jsonl")).into_iter().collect();
    let want: HashSet<String> = (5..15).map(|i| format!("r{i}")).collect();
    assert_eq!(got, want);
    let events = ws.jsonl("ev.jsonl");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "request_finished")
            .count(),
        10
    );
    assert_eq!(events[0]["event"], "run_started");
    assert_eq!(events[0]["total"], 10);

    // The rest, read from standard input.
    let input = std::fs::read(ws.path("b.jsonl")).unwrap();
    let mut child = volley()
        .args(run_args(
            "-",
            &mock.base_url,
            &["-o", "b.results.jsonl", "--errors", "b.errors.jsonl"],
        ))
        .current_dir(ws.dir.path())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert_each_once(&ws.jsonl("b.results.jsonl"), 30);

    let out = ws.run(&["sort", "b.results.jsonl", "--input", "b.jsonl"]);
    assert_exit(&out, 0);
    let sorted = ids(&ws.jsonl("b.results.jsonl"));
    assert_eq!(sorted, (0..30).map(|i| format!("r{i}")).collect::<Vec<_>>());
}

#[test]
fn a_key_that_is_refused_stops_the_run_with_exit_3_and_it_resumes() {
    let server = ScriptServer::start(vec![Scripted::new(
        401,
        json!({"error": {"message": "No auth credentials found", "code": 401}}),
    )]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 5);
    let out = ws.run(&run_args("b.jsonl", &server.base_url, &[]));
    assert_exit(&out, 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key#1") && err.contains("unauthorized"),
        "{err}"
    );
    assert!(!err.contains("sk-test-"), "the key leaked: {err}");
    assert!(
        ws.jsonl("b.results.jsonl").is_empty() && ws.jsonl("b.errors.jsonl").is_empty(),
        "no request is lost as a failure"
    );

    let good = MockProc::start(&[]);
    let out = ws.run(&run_args("b.jsonl", &good.base_url, &[]));
    assert_exit(&out, 0);
    assert_each_once(&ws.jsonl("b.results.jsonl"), 5);
}

#[test]
fn usage_errors_exit_2() {
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 1);
    let out = volley()
        .env_remove(KEY_ENV)
        .args(["run", "b.jsonl", "--model", "m"])
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no API key"),
        "{}",
        explain(&out)
    );
    let out = ws.run(&["run", "missing.jsonl", "--mock"]);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("missing.jsonl"),
        "{}",
        explain(&out)
    );
    let out = ws.run(&["run", "b.jsonl", "--mock"]);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("b.jsonl:1: no model"),
        "{}",
        explain(&out)
    );
}

#[test]
fn the_bundled_example_runs_on_the_built_in_mock() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/questions.jsonl"
    );
    let ws = Workspace::new();
    std::fs::copy(example, ws.path("questions.jsonl")).unwrap();
    let out = ws.run(&["run", "questions.jsonl", "--mock"]);
    assert_exit(&out, 0);
    let n = std::fs::read_to_string(example)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_each_once(&ws.jsonl("questions.results.jsonl"), n);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("succeeded") && err.contains("p50"),
        "the final summary is printed: {err}"
    );
}

#[test]
fn ctrl_c_finishes_in_flight_requests_exits_3_and_resumes() {
    let mock = MockProc::start(&["--latency-ms", "300"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 200);
    let args = run_args(
        "b.jsonl",
        &mock.base_url,
        &["--concurrency", "8", "--progress", "log"],
    );
    let child = volley()
        .args(&args)
        .current_dir(ws.dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(ws.path("b.results.jsonl")).map_or(0, |t| t.lines().count()) < 16
    {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted"), "{err}");
    let partial = ws.jsonl("b.results.jsonl");
    assert!(partial.len() < 200, "the interrupt stopped admissions");
    // In-flight requests were allowed to finish: nothing the mock answered was lost.
    let answered = mock.stats()["by_status"]["200"].as_u64().unwrap();
    assert_eq!(
        answered,
        partial.len() as u64,
        "every answered request was recorded"
    );

    let out = ws.run(&args);
    assert_exit(&out, 0);
    assert_each_once(&ws.jsonl("b.results.jsonl"), 200);
}

#[test]
fn hung_requests_time_out_and_are_retried() {
    let mock = MockProc::start(&["--hang-rate", "0.1", "--seed", "5"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 100);
    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &[&["--timeout", "1"][..], &FAST_RETRY].concat(),
    ));
    assert_exit(&out, 0);
    let results = ws.jsonl("b.results.jsonl");
    assert_each_once(&results, 100);
    let hangs = mock.stats()["faults"]["hang"].as_u64().unwrap();
    assert!(hangs > 0);
    let extra: u64 = results
        .iter()
        .map(|r| r["volley"]["attempts"].as_u64().unwrap() - 1)
        .sum();
    assert_eq!(extra, hangs, "each hang cost exactly one timed-out attempt");
}

#[test]
fn a_static_rpm_limit_paces_requests_under_the_providers_limit() {
    let mock = MockProc::start(&["--rpm", "600"]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 40);
    let started = Instant::now();
    let out = ws.run(&run_args("b.jsonl", &mock.base_url, &["--rpm", "600"]));
    let took = started.elapsed();
    assert_exit(&out, 0);
    assert_each_once(&ws.jsonl("b.results.jsonl"), 40);
    let stats = mock.stats();
    assert!(
        stats["by_status"].get("429").is_none(),
        "a paced run is never refused: {stats}"
    );
    assert!(stats["peak_requests_per_minute"].as_u64().unwrap() <= 600);
    // 600/min is 10/s: after a one-second burst of 10, the other 30 take about 3 s.
    assert!(took >= Duration::from_millis(2500), "not paced: {took:?}");
    assert!(
        took <= Duration::from_secs(6),
        "more than twice the time the limit allows: {took:?}"
    );
}

#[test]
fn a_request_whose_task_panics_is_left_for_a_rerun_and_the_run_exits_3() {
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.prompts("batch.jsonl", 30);
    let args = run_args("batch.jsonl", &mock.base_url, &["--concurrency", "4"]);
    let out = volley()
        .args(&args)
        .env("VOLLEY_DEBUG_PANIC_ON", "r7")
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    assert_exit(&out, 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("request r7 failed inside volley"),
        "the log names the lost request: {err}"
    );
    let results = ws.jsonl("batch.results.jsonl");
    assert_each_once(&results, 29);
    assert!(!ids(&results).contains(&"r7".to_string()));
    assert!(ws.jsonl("batch.errors.jsonl").is_empty());
    // Nothing leaked: the other 29 finished on the slots and bookings it held.
    let out = ws.run(&args);
    assert_exit(&out, 0);
    assert_each_once(&ws.jsonl("batch.results.jsonl"), 30);
}

#[test]
fn a_retry_goes_before_requests_not_yet_sent() {
    // 10 requests/s for 80 requests queued 32 deep: a retry that waited behind the queue
    // would wait seconds; one that goes first waits its backoff and one booking.
    let mock = MockProc::start(&["--fail-rate", "0.15", "--seed", "5"]);
    let ws = Workspace::new();
    ws.prompts("batch.jsonl", 80);
    let out = ws.run(&run_args(
        "batch.jsonl",
        &mock.base_url,
        &[
            &[
                "--rpm",
                "600",
                "--concurrency",
                "32",
                "--events",
                "ev.jsonl",
            ][..],
            &FAST_RETRY,
        ]
        .concat(),
    ));
    assert_exit(&out, 0);
    assert_each_once(&ws.jsonl("batch.results.jsonl"), 80);
    let events = ws.jsonl("ev.jsonl");
    let at = |kind: &str, id: &Value, attempt: u64| {
        events
            .iter()
            .find(|e| e["event"] == kind && e["custom_id"] == *id && e["attempt"] == attempt)
            .map(|e| e["t"].as_f64().unwrap())
    };
    let mut gaps = Vec::new();
    for e in events
        .iter()
        .filter(|e| e["event"] == "attempt_started" && e["attempt"] == 2)
    {
        let failed = at("attempt_finished", &e["custom_id"], 1).unwrap();
        gaps.push(e["t"].as_f64().unwrap() - failed);
    }
    assert!(
        gaps.len() >= 3,
        "the mock should have failed some: {gaps:?}"
    );
    let worst = gaps.iter().cloned().fold(0.0, f64::max);
    assert!(
        worst < 1.5,
        "a retry waited behind the queue: {worst:.2} s (all: {gaps:?})"
    );
}

#[test]
fn a_proxy_named_by_the_environment_carries_every_request() {
    // The "proxy" is a mock: a request reaches it only through HTTP_PROXY, since the
    // base URL names a port nothing listens on.
    let proxy = MockProc::start(&[]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base_url = format!("http://127.0.0.1:{closed}/v1");
    let ws = Workspace::new();
    ws.prompts("batch.jsonl", 20);
    let out = volley()
        .args(run_args("batch.jsonl", &base_url, &FAST_RETRY))
        .env("HTTP_PROXY", format!("http://{}", proxy.addr))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_each_once(&ws.jsonl("batch.results.jsonl"), 20);
    assert_eq!(proxy.stats()["requests"], 20, "{}", proxy.stats());
    assert_no_key("stderr", &String::from_utf8_lossy(&out.stderr));
}
