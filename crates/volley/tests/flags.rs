//! Flags and inputs that cannot do what the user meant are said, not carried out:
//! settings that cannot work stop the run before anything is sent, empty replies are
//! not paid for six times, and a run with nothing to do says why. All end to end: the
//! real binary against a server on loopback that counts what it receives.

mod common;

use common::*;

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
