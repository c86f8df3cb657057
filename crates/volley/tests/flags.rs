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

/// Every non-empty line of standard error, as JSON; fails on any that is not.
fn json_lines(out: &std::process::Output) -> Vec<Value> {
    stderr(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| {
                    panic!(
                        "a stderr line is not a JSON object: {l:?}\n{}",
                        explain(out)
                    )
                })
        })
        .collect()
}

#[test]
fn json_logs_hold_the_summary_and_the_final_lines_as_json() {
    const N: u64 = 5;
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.prompts("in.jsonl", N as usize);
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["--log-format", "json", "--progress", "log"],
    ));
    assert_exit(&out, 0);
    let lines = json_lines(&out);
    let summaries: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["report"].is_object())
        .collect();
    assert_eq!(summaries.len(), 1, "one summary\n{}", explain(&out));
    let fields = &summaries[0]["fields"];
    assert_eq!(fields["report"]["requests"]["succeeded"], N, "{fields}");
    assert_eq!(fields["report"]["requests"]["failed"], 0, "{fields}");
    assert_eq!(fields["report"]["attempts"], N, "{fields}");
    assert_eq!(summaries[0]["level"], "INFO");
    assert!(
        fields["results"]
            .as_str()
            .is_some_and(|p| p.ends_with("in.results.jsonl"))
            && fields["errors"]
                .as_str()
                .is_some_and(|p| p.ends_with("in.errors.jsonl")),
        "{fields}"
    );
    assert_eq!(ws.jsonl("in.results.jsonl").len(), N as usize);

    // A run that stops early says why in JSON too: every key answers 401, so none is left.
    let server = FnServer::start(|_| RawReply {
        status: 401,
        headers: Vec::new(),
        body: json!({"error": {"message": "no such key"}})
            .to_string()
            .into_bytes(),
    });
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 2);
    let out = ws.run(&run_args(
        "in.jsonl",
        &server.base_url,
        &["--log-format", "json"],
    ));
    assert_exit(&out, 3);
    let lines = json_lines(&out);
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("stopped: "))
            && l["level"] == "WARN"),
        "{}",
        explain(&out)
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["report"]["requests"]["not_finished"] == 2),
        "{}",
        explain(&out)
    );
}

#[test]
fn a_run_with_nothing_to_send_says_why_and_exits_0() {
    let server = counting_server();
    let ws = Workspace::new();
    ws.write("empty.jsonl", "");
    ws.write("blank.jsonl", "\n   \n\t\n");
    ws.prompts("three.jsonl", 3);
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "empty.jsonl",
            &[],
            "empty.jsonl has no requests (empty or blank lines only)",
        ),
        (
            "blank.jsonl",
            &[],
            "blank.jsonl has no requests (empty or blank lines only)",
        ),
        (
            "three.jsonl",
            &["--offset", "3"],
            "--offset 3 skips every line of three.jsonl, which has 3 non-blank line(s)",
        ),
        (
            "three.jsonl",
            &["--offset", "1000"],
            "--offset 1000 skips every line of three.jsonl, which has 3 non-blank line(s)",
        ),
    ];
    for &(input, flags, says) in cases {
        let out = ws.run(&run_args(input, &server.base_url, flags));
        assert_exit(&out, 0);
        let err = stderr(&out);
        assert!(err.contains(says), "{input} {flags:?}\n{}", explain(&out));
        assert!(err.contains("WARN"), "a warning\n{}", explain(&out));
    }
    assert_eq!(server.requests(), 0);
    // Not said when an offset leaves something to send.
    let out = ws.run(&run_args(
        "three.jsonl",
        &server.base_url,
        &["--offset", "2"],
    ));
    assert_exit(&out, 0);
    assert!(
        !stderr(&out).contains("skips every line"),
        "{}",
        explain(&out)
    );
    assert_eq!(server.requests(), 1);
}
