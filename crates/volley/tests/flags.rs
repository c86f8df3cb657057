//! Flags and inputs that cannot do what the user meant are said, not carried out:
//! settings that cannot work stop the run before anything is sent, empty replies are
//! not paid for six times, and a run with nothing to do says why. All end to end: the
//! real binary against a server on loopback that counts what it receives.

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use common::*;
use serde_json::{Value, json};

/// Retries in milliseconds, so tests that exhaust them stay quick.
const FAST_RETRY: [&str; 4] = ["--initial-backoff", "0.01", "--max-backoff", "0.05"];

/// A server that answers every request with a good completion and counts them.
fn counting_server() -> FnServer {
    FnServer::start(|_| RawReply {
        status: 200,
        headers: Vec::new(),
        body: completion("fine").to_string().into_bytes(),
    })
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn flags_that_cannot_work_are_usage_errors_and_nothing_is_sent() {
    let server = counting_server();
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 3);
    // (flag, value, what the message must say)
    let cases: &[(&str, &str, &str)] = &[
        ("--timeout", "0", "a shorter timeout abandons requests"),
        ("--timeout", "1e-9", "must be 1 to 1e9 seconds"),
        ("--timeout", "0.5", "must be 1 to 1e9 seconds"),
        ("--timeout", "-3", "must be 1 to 1e9 seconds"),
        ("--timeout", "nan", "\"nan\" is not a finite number"),
        ("--concurrency", "0", "0 would never send one"),
        ("--concurrency", "-4", "must be 1 to 100000"),
        ("--rpm", "0", "0 requests per minute would never send one"),
        (
            "--tpm",
            "0",
            "0 tokens per minute would never send a request",
        ),
        ("--max-cost", "-1", "must be 0 or more US dollars"),
        ("--max-cost", "inf", "\"inf\" is not a finite number"),
        ("--initial-backoff", "-0.5", "must be 0 to 1e9 seconds"),
        ("--max-backoff", "-1", "must be 0 to 1e9 seconds"),
        ("--max-backoff", "NaN", "\"NaN\" is not a finite number"),
        ("--max-wait", "-1", "must be 0 to 1e9 seconds"),
        ("--max-wait", "1e12", "must be 0 to 1e9 seconds"),
        ("--retry-budget", "-0.1", "must be 0 or more"),
        ("--retry-budget", "inf", "\"inf\" is not a finite number"),
        ("--max-retries", "-1", "must be a whole number, 0 or more"),
        (
            "--max-empty-retries",
            "-1",
            "must be a whole number, 0 or more",
        ),
        ("--limit", "-2", "must be a whole number, 0 or more"),
        ("--offset", "1.5", "\"1.5\" is not a whole number"),
    ];
    for &(flag, value, says) in cases {
        let out = ws.run(&run_args("in.jsonl", &server.base_url, &[flag, value]));
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag} ")),
            "{flag} {value}: the flag and value are named\n{}",
            explain(&out)
        );
        assert!(
            err.contains(says),
            "{flag} {value}: expected {says:?}\n{}",
            explain(&out)
        );
        assert!(
            !err.contains("-- "),
            "{flag} {value}: no suggestion to pass the value after `--`\n{}",
            explain(&out)
        );
    }
    assert_eq!(server.requests(), 0, "a refused flag sends nothing");
    assert!(
        ws.jsonl("in.results.jsonl").is_empty() && ws.jsonl("in.errors.jsonl").is_empty(),
        "{}",
        ws.listing()
    );

    // The smallest values that can work are still accepted, and the run sends.
    let out = ws.run(&run_args(
        "in.jsonl",
        &server.base_url,
        &["--timeout", "1", "--concurrency", "1", "--max-cost", "0.5"],
    ));
    assert_exit(&out, 0);
    assert_eq!(server.requests(), 3, "{}", explain(&out));
}

/// A server whose every reply is a completion with empty content.
fn empty_server() -> FnServer {
    FnServer::start(|_| RawReply {
        status: 200,
        headers: Vec::new(),
        body: completion("").to_string().into_bytes(),
    })
}

/// Runs one request against `server` with `flags`; returns its ERRORS line.
fn one_failed_request(server: &FnServer, flags: &[&str]) -> Value {
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 1);
    let flags = [flags, &FAST_RETRY[..]].concat();
    let out = ws.run(&run_args("in.jsonl", &server.base_url, &flags));
    assert_exit(&out, 1);
    assert!(ws.jsonl("in.results.jsonl").is_empty(), "{}", explain(&out));
    let errors = ws.jsonl("in.errors.jsonl");
    assert_eq!(errors.len(), 1, "{}", explain(&out));
    errors.into_iter().next().unwrap()
}

#[test]
fn empty_replies_are_retried_a_bounded_number_of_times_and_the_error_says_all_were_empty() {
    // (flags, attempts, how the message counts them)
    let cases: &[(&[&str], u64, &str)] = &[
        (&[], 3, "all 3 attempts came back empty"),
        (
            &["--max-empty-retries", "0"],
            1,
            "the only attempt came back empty",
        ),
        // --max-retries stays the overall cap.
        (
            &["--max-empty-retries", "4", "--max-retries", "2"],
            3,
            "all 3 attempts came back empty",
        ),
        (
            &["--max-empty-retries", "4"],
            5,
            "all 5 attempts came back empty",
        ),
    ];
    for &(flags, attempts, says) in cases {
        let server = empty_server();
        let line = one_failed_request(&server, flags);
        assert_eq!(line["error"]["code"], "empty_response", "{flags:?}: {line}");
        let message = line["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says) && message.contains("no content and no tool calls"),
            "{flags:?}: {line}"
        );
        assert_eq!(line["volley"]["attempts"], attempts, "{flags:?}: {line}");
        assert_eq!(
            server.requests() as u64,
            attempts,
            "{flags:?}: the server saw each attempt"
        );
        // Every attempt reported usage, and every one is billed.
        assert_eq!(
            line["volley"]["usage"]["total_tokens"],
            15 * attempts,
            "{line}"
        );
    }
}

#[test]
fn an_empty_reply_after_a_server_error_still_gets_its_empty_retries() {
    let counts = Mutex::new(HashMap::new());
    let server = FnServer::start(move |_| {
        let first = attempt(&counts, 0) == 1;
        RawReply {
            status: if first { 503 } else { 200 },
            headers: Vec::new(),
            body: if first {
                json!({"error": {"message": "overloaded"}}).to_string()
            } else {
                completion("").to_string()
            }
            .into_bytes(),
        }
    });
    let line = one_failed_request(&server, &[]);
    // One 503, then the first empty reply and its 2 retries.
    assert_eq!(line["volley"]["attempts"], 4, "{line}");
    assert_eq!(server.requests(), 4);
    assert_eq!(line["error"]["code"], "empty_response", "{line}");
    let message = line["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("gave up after 4 attempts:") && !message.contains("all 4"),
        "not every attempt was empty, and the message does not say so: {line}"
    );
}

#[test]
fn an_empty_id_is_named_as_empty() {
    let server = counting_server();
    let ws = Workspace::new();
    ws.write(
        "in.jsonl",
        "{\"id\": \"a\", \"prompt\": \"fine\"}\n{\"id\": \"\", \"prompt\": \"no id\"}\n",
    );
    let out = ws.run(&run_args("in.jsonl", &server.base_url, &[]));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("in.jsonl:2: field \"id\": must not be empty"),
        "{}",
        explain(&out)
    );
    assert!(!err.contains("found a string"), "{}", explain(&out));
    assert_eq!(server.requests(), 0);
}
