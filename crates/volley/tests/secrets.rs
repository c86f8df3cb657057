//! The API key never appears in any output: RESULTS, ERRORS, the events file, the JSON
//! and HTML reports, the log — not even when the provider echoes it back in its errors,
//! as OpenAI's 401 does. (`/metrics` is checked in `metrics.rs`.)

mod common;

use std::collections::HashMap;
use std::sync::Mutex;

use common::*;
use serde_json::json;

/// A provider that quotes the key in its error messages.
fn echoing_error(status: u16) -> RawReply {
    RawReply {
        status,
        headers: Vec::new(),
        body: json!({"error": {"message": format!("Incorrect API key provided: {TEST_KEY}"), "key": TEST_KEY}})
            .to_string()
            .into_bytes(),
    }
}

#[test]
fn the_key_appears_in_no_output_even_when_the_provider_echoes_it() {
    let counts = Mutex::new(HashMap::new());
    let server = FnServer::start(move |body| {
        let case = case_of(body);
        let first = attempt(&counts, case) == 1;
        match case % 4 {
            // Fails for good, quoting the key.
            0 => echoing_error(400),
            // A 503 that quotes the key, then a success.
            1 if first => echoing_error(503),
            _ => RawReply {
                status: 200,
                headers: Vec::new(),
                body: completion("fine").to_string().into_bytes(),
            },
        }
    });
    let ws = Workspace::new();
    cases_file(&ws, 20);
    let out = ws.run(&run_args(
        "cases.jsonl",
        &server.base_url,
        &[
            "--progress",
            "log",
            "--log-format",
            "json",
            "--events",
            "events.jsonl",
            "--report",
            "run-report.json",
            "--initial-backoff",
            "0.01",
        ],
    ));
    assert_exit(&out, 1);
    let errors = ws.jsonl("cases.errors.jsonl");
    assert_eq!(errors.len(), 5, "{}", ws.listing());
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key#1"),
        "the echoed key is named by its label: {}",
        errors[0]
    );
    let report = ws.run(&[
        "report",
        "cases.results.jsonl",
        "--errors",
        "cases.errors.jsonl",
        "--json",
        "files-report.json",
        "--html",
        "report.html",
    ]);
    assert_exit(&report, 0);

    // A key the provider refuses, quoting it: retired, named only as key#1.
    let refusing = FnServer::start(|_| echoing_error(401));
    let ws2 = Workspace::new();
    cases_file(&ws2, 3);
    let refused = ws2.run(&run_args("cases.jsonl", &refusing.base_url, &[]));
    assert_exit(&refused, 3);

    for (what, text) in [
        ("the log", String::from_utf8_lossy(&out.stderr).into_owned()),
        ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
        (
            "the report's log",
            String::from_utf8_lossy(&report.stderr).into_owned(),
        ),
        (
            "the refused run's log",
            String::from_utf8_lossy(&refused.stderr).into_owned(),
        ),
    ] {
        assert_no_key(what, &text);
    }
    for file in [
        "cases.results.jsonl",
        "cases.errors.jsonl",
        "events.jsonl",
        "run-report.json",
        "files-report.json",
        "report.html",
    ] {
        let text = std::fs::read_to_string(ws.path(file))
            .unwrap_or_else(|e| panic!("{file}: {e}\n{}", ws.listing()));
        assert!(!text.is_empty(), "{file} is empty");
        assert_no_key(file, &text);
    }
    for file in std::fs::read_dir(ws2.dir.path()).unwrap() {
        let path = file.unwrap().path();
        let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
        if !path.ends_with("cases.jsonl") {
            assert_no_key(&path.display().to_string(), &text);
        }
    }
}
