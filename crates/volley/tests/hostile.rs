//! A provider on a bad day: absurd header figures, bodies of the wrong shape, quotas
//! that reset in a thousand hours, requests too large for the limit. Nothing from
//! outside panics volley, and no request is lost: each ends in RESULTS or ERRORS
//! exactly once, or is left for a re-run with a non-zero exit.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use volley_core::limits::headers::HEADERS_READ;

/// Header values a hostile provider might send, for every header volley reads.
const HOSTILE: [&str; 22] = [
    "1e20",
    "NaN",
    "nan",
    "-1",
    "-0.5",
    "inf",
    "-inf",
    "18446744073709551616",
    "99999999999999999999999999",
    "",
    "abc",
    "1.5.5",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "1000h",
    "1e300s",
    "0",
    "9999999999999999999ms",
    "2562047788015215h",
    "1e-320",
    "99999999999999999999999999999999999999h",
    "1.7976931348623157e308",
];

fn good_body() -> Vec<u8> {
    completion("fine").to_string().into_bytes()
}

fn no_panic(out: &std::process::Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked"),
        "volley panicked:\n{}",
        explain(out)
    );
}

/// Every id of `0..n` is in RESULTS or ERRORS exactly once.
fn each_case_once(ws: &Workspace, results: &[Value], errors: &[Value], n: usize) {
    let mut seen = HashSet::new();
    for line in results.iter().chain(errors) {
        let id = line["custom_id"].as_str().unwrap().to_string();
        assert!(
            seen.insert(id.clone()),
            "{id} recorded twice\n{}",
            ws.listing()
        );
    }
    assert_eq!(seen.len(), n, "every request recorded\n{}", ws.listing());
}

#[test]
fn every_header_volley_reads_survives_hostile_values() {
    std::thread::scope(|scope| {
        for header in HEADERS_READ {
            scope.spawn(move || {
                let counts = Mutex::new(HashMap::new());
                // Each case's replies carry one hostile value: first a 503, then a 200.
                let server = FnServer::start(move |body| {
                    let case = case_of(body);
                    let status = if attempt(&counts, case) == 1 {
                        503
                    } else {
                        200
                    };
                    RawReply {
                        status,
                        headers: vec![(header.to_string(), HOSTILE[case].to_string())],
                        body: if status == 200 {
                            good_body()
                        } else {
                            br#"{"error":{"message":"busy"}}"#.to_vec()
                        },
                    }
                });
                let ws = Workspace::new();
                cases_file(&ws, HOSTILE.len());
                let out = ws.run(&run_args(
                    "cases.jsonl",
                    &server.base_url,
                    &[
                        "--max-wait",
                        "1",
                        "--initial-backoff",
                        "0.01",
                        "--max-backoff",
                        "0.1",
                        "--concurrency",
                        "4",
                        // Every case fails once: the run-wide budget must not be what
                        // this test measures.
                        "--retry-budget",
                        "2",
                    ],
                ));
                no_panic(&out);
                assert_exit(&out, 0);
                let results = ws.jsonl("cases.results.jsonl");
                each_case_once(&ws, &results, &[], HOSTILE.len());
                for line in &results {
                    assert_eq!(line["volley"]["attempts"], 2, "{header}: {line}");
                }
            });
        }
    });
}

/// A body of `size` bytes of HTML.
fn html(size: usize) -> Vec<u8> {
    let mut page = b"<html><body>".to_vec();
    page.resize(size, b'x');
    page.extend_from_slice(b"</body></html>");
    page
}

#[test]
fn hostile_bodies_are_retried_then_recorded_and_never_pass_for_a_success() {
    let big_error = format!(
        r#"{{"error":{{"message":"{}"}}}}"#,
        "e".repeat(3 * 1024 * 1024)
    );
    // (status, body, content-type) of each case's first reply.
    let first: Vec<(u16, Vec<u8>, &str)> = vec![
        (200, b"{}".to_vec(), "application/json"),
        (200, b"null".to_vec(), "application/json"),
        (
            200,
            b"{\"choices\":[{\"message\":{\"content\":\"\xff\xfe\"}}]}".to_vec(),
            "application/json",
        ),
        (200, br#"{"choices": 5}"#.to_vec(), "application/json"),
        (200, br#"{"choices": "none"}"#.to_vec(), "application/json"),
        (
            200,
            br#"{"choices":[{"message":{"role":"assistant","content":null}}]}"#.to_vec(),
            "application/json",
        ),
        (200, br#"{"choices": []}"#.to_vec(), "application/json"),
        (200, br#"{"choices": ["#.to_vec(), "application/json"),
        (200, br#""ok""#.to_vec(), "application/json"),
        (200, Vec::new(), "application/json"),
        (500, html(2048), "text/html"),
        (500, big_error.clone().into_bytes(), "application/json"),
        (502, html(3 * 1024 * 1024), "text/html"),
    ];
    let retried = first.len();
    // Then two that fail for good: a 400 with a 3 MB body, and a body that is always `{}`.
    let bad_request = retried;
    let always_empty = retried + 1;
    let total = retried + 2;
    let counts = Mutex::new(HashMap::new());
    let server = FnServer::start(move |body| {
        let case = case_of(body);
        let n = attempt(&counts, case);
        let (status, body, kind) = if case == bad_request {
            (400, big_error.clone().into_bytes(), "application/json")
        } else if case == always_empty {
            (200, b"{}".to_vec(), "application/json")
        } else if n == 1 {
            first[case].clone()
        } else {
            (200, good_body(), "application/json")
        };
        RawReply {
            status,
            headers: vec![("content-type".into(), kind.into())],
            body,
        }
    });
    let ws = Workspace::new();
    cases_file(&ws, total);
    let out = ws.run(&run_args(
        "cases.jsonl",
        &server.base_url,
        &[
            "--max-retries",
            "2",
            "--initial-backoff",
            "0.01",
            "--max-backoff",
            "0.05",
            "--retry-budget",
            "2",
        ],
    ));
    no_panic(&out);
    assert_exit(&out, 1);
    let results = ws.jsonl("cases.results.jsonl");
    let errors = ws.jsonl("cases.errors.jsonl");
    each_case_once(&ws, &results, &errors, total);
    assert_eq!(results.len(), retried, "{}", ws.listing());
    for line in &results {
        assert_eq!(line["volley"]["attempts"], 2, "retried once: {line}");
        assert_eq!(
            line["response"]["body"]["choices"][0]["message"]["content"], "fine",
            "only the good reply is a success: {line}"
        );
    }
    let by_id: HashMap<&str, &Value> = errors
        .iter()
        .map(|l| (l["custom_id"].as_str().unwrap(), l))
        .collect();
    let bad = by_id[format!("c{bad_request}").as_str()];
    assert_eq!(bad["error"]["code"], "bad_request");
    assert_eq!(bad["volley"]["attempts"], 1);
    let empty = by_id[format!("c{always_empty}").as_str()];
    assert_eq!(empty["error"]["code"], "malformed_response", "{empty}");
    assert_eq!(empty["volley"]["attempts"], 3, "retried, then ERRORS");
}

#[test]
fn a_quota_that_resets_in_a_thousand_hours_retires_the_key_instead_of_being_ignored() {
    let server = FnServer::start(|_| RawReply {
        status: 200,
        headers: vec![
            ("x-ratelimit-limit-requests".into(), "100".into()),
            ("x-ratelimit-remaining-requests".into(), "0".into()),
            ("x-ratelimit-reset-requests".into(), "1000h".into()),
        ],
        body: good_body(),
    });
    let ws = Workspace::new();
    cases_file(&ws, 60);
    let out = ws.run(&run_args(
        "cases.jsonl",
        &server.base_url,
        &["--concurrency", "2"],
    ));
    no_panic(&out);
    assert_exit(&out, 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key#1 leaves the pool (quota_exhausted)"),
        "{err}"
    );
    assert!(
        server.requests() <= 4,
        "the batch was not sent at full speed past a spent quota: {} requests",
        server.requests()
    );
    let results = ws.jsonl("cases.results.jsonl");
    assert!(results.len() < 60);
    let ids: HashSet<_> = results.iter().map(|l| l["custom_id"].clone()).collect();
    assert_eq!(ids.len(), results.len(), "no line twice");
    assert!(
        ws.jsonl("cases.errors.jsonl").is_empty(),
        "the rest are left for a re-run"
    );
}

#[test]
fn max_wait_caps_a_5xx_retry_after() {
    let server = ScriptServer::start(vec![
        Scripted::new(503, json!({"error": {"message": "busy"}})).header("retry-after", "6"),
        Scripted::new(200, completion("fine")),
    ]);
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 1);
    let out = ws.run(&run_args(
        "in.jsonl",
        &server.base_url,
        &["--max-wait", "1"],
    ));
    assert_exit(&out, 0);
    let arrivals = server.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_millis(900) && gap < Duration::from_secs(3),
        "slept the 6 s hint instead of --max-wait 1 s: {gap:?}"
    );
}

#[test]
fn a_request_that_can_never_fit_the_token_limit() {
    let ws = Workspace::new();
    ws.write(
        "in.jsonl",
        "{\"id\":\"ok\",\"prompt\":\"hi\",\"max_tokens\":10}\n{\"id\":\"huge\",\"prompt\":\"hi\",\"max_tokens\":1000000000}\n",
    );
    // Given by flag: an input error naming the line, before any request.
    let server = ScriptServer::start(vec![Scripted::new(200, completion("fine"))]);
    let out = ws.run(&run_args("in.jsonl", &server.base_url, &["--tpm", "60000"]));
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in.jsonl:2") && err.contains("--tpm 60000"),
        "{err}"
    );
    assert_eq!(server.requests(), 0);
    // With --skip-invalid: an ERRORS line, and the rest is sent.
    let out = ws.run(&run_args(
        "in.jsonl",
        &server.base_url,
        &["--tpm", "60000", "--skip-invalid"],
    ));
    assert_exit(&out, 1);
    let errors = ws.jsonl("in.errors.jsonl");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "huge");
    assert_eq!(ws.jsonl("in.results.jsonl").len(), 1);

    // Learned from the provider: ERRORS as exceeds_rate_limit, the key never stalled.
    // At concurrency 1 the engine admits two requests at a time (ADMISSION_FACTOR), so
    // "huge" comes third: it is admitted only once a reply has announced the limit,
    // whichever of the first two the scheduler sends first.
    let ws = Workspace::new();
    ws.write(
        "in.jsonl",
        "{\"id\":\"ok\",\"prompt\":\"hi\",\"max_tokens\":10}\n{\"id\":\"ok2\",\"prompt\":\"hi\",\"max_tokens\":10}\n{\"id\":\"huge\",\"prompt\":\"hi\",\"max_tokens\":1000000000}\n{\"id\":\"after\",\"prompt\":\"hi\",\"max_tokens\":10}\n",
    );
    let server = FnServer::start(|_| RawReply {
        status: 200,
        headers: vec![
            ("x-ratelimit-limit-tokens".into(), "60000".into()),
            ("x-ratelimit-remaining-tokens".into(), "59000".into()),
            ("x-ratelimit-reset-tokens".into(), "1s".into()),
        ],
        body: good_body(),
    });
    let started = Instant::now();
    let out = ws.run(&run_args(
        "in.jsonl",
        &server.base_url,
        &["--concurrency", "1"],
    ));
    assert_exit(&out, 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the key stalled"
    );
    let errors = ws.jsonl("in.errors.jsonl");
    assert_eq!(errors.len(), 1, "{}", ws.listing());
    assert_eq!(errors[0]["custom_id"], "huge");
    assert_eq!(errors[0]["error"]["code"], "exceeds_rate_limit");
    assert_eq!(errors[0]["volley"]["attempts"], 0, "never sent");
    assert_eq!(ws.jsonl("in.results.jsonl").len(), 3);
}

#[test]
fn absurd_usage_figures_neither_crash_nor_refund() {
    let server = FnServer::start(|_| {
        RawReply {
        status: 200,
        headers: Vec::new(),
        body: json!({
            "choices": [{"message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": u64::MAX, "completion_tokens": 1, "cost": -1e300}
        })
        .to_string()
        .into_bytes(),
    }
    });
    let ws = Workspace::new();
    // An input line whose max_tokens is the largest number JSON can carry here.
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"hi\",\"max_tokens\":18446744073709551615}\n{\"id\":\"b\",\"prompt\":\"hi\"}\n",
    );
    let out = ws.run(&run_args(
        "in.jsonl",
        &server.base_url,
        &["--max-cost", "1", "--report", "r.json"],
    ));
    no_panic(&out);
    assert_exit(&out, 0);
    let results = ws.jsonl("in.results.jsonl");
    assert_eq!(results.len(), 2);
    for line in &results {
        assert_eq!(line["volley"]["usage"]["total_tokens"], u64::MAX);
        assert!(
            line["volley"]["cost"].is_null(),
            "a negative cost is unknown: {line}"
        );
    }
    // With a token limit the same line is an input error, not an overflow.
    let out = ws.run(&run_args(
        "in.jsonl",
        &server.base_url,
        &["--tpm", "1000", "-o", "other.jsonl"],
    ));
    no_panic(&out);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("in.jsonl:1"));
}

#[test]
fn absurd_figures_in_a_results_file_do_not_crash_volley_report() {
    let ws = Workspace::new();
    let usage = r#"{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}"#;
    let line = |id: &str, latency: &str, at: &str| {
        format!(
            "{{\"id\":\"v\",\"custom_id\":\"{id}\",\"response\":null,\"error\":null,\"volley\":{{\"attempts\":1,\"latency_ms\":{latency},\"usage\":{usage},\"finished_at\":{at}}}}}\n"
        )
    };
    ws.write(
        "r.jsonl",
        &format!("{}{}", line("a", "1e300", "1e300"), line("b", "5", "1")),
    );
    let out = ws.run(&["report", "r.jsonl", "--html", "r.html", "--json", "r.json"]);
    assert_exit(&out, 0);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("2 requests finished"), "{}", explain(&out));
    assert!(ws.path("r.html").exists() && ws.path("r.json").exists());
}
