//! The dashboard as a person uses it: headless Chromium (driven by playwright-core,
//! `tests/browser/dashboard.mjs`) opens the page of the real `volley serve` on the
//! mock, watches a batch reach 100%, compares the numbers it shows with the batch's
//! `request_counts`, and cancels a second batch with its button.

mod common;

use std::time::Duration;

use common::browser::drive_dashboard;
use common::gateway::{GATEWAY_TOKEN, ServeProc, batch_lines};
use common::{MockProc, Workspace, assert_no_key};
use serde_json::{Value, json};

/// Where the screenshots are kept for a person to look at after the run.
fn artifact(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[test]
fn serve_dashboard_shows_a_batch_to_100_percent_and_cancels_another() {
    // Slow enough that the second batch is still running when its button is clicked.
    let mock = MockProc::start(&["--latency-ms", "40", "--seed", "3"]);
    let ws = Workspace::new();
    let serve = ServeProc::start(
        &ws.path("data"),
        &mock.base_url,
        &["--auth-token-env", "GATEWAY_TOKEN", "--concurrency", "4"],
    );
    let small = serve.upload_ok("small.jsonl", batch_lines(30).as_bytes());
    let first = serve.create_batch(&small)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let large = serve.upload_ok("large.jsonl", batch_lines(2000).as_bytes());
    let second = serve.create_batch(&large)["id"]
        .as_str()
        .unwrap()
        .to_string();

    let shot = artifact("dashboard-serve.png");
    let _ = std::fs::remove_file(&shot);
    let seen = drive_dashboard(&json!({
        "url": format!("http://{}/#token={GATEWAY_TOKEN}", serve.addr),
        "complete": [first],
        "cancel": [second],
        "screenshot": shot,
        "polls": 3,
    }));

    // The numbers on the page are the batch's own.
    let done = serve.wait_for(&first, &["completed"], Duration::from_secs(30));
    let counts = &done["request_counts"];
    let row = &seen["rows"][&first];
    assert_eq!(row["progress"], "100%", "{seen}");
    for field in ["completed", "failed", "total"] {
        assert_eq!(
            row[field].as_str().and_then(|t| t.parse::<u64>().ok()),
            counts[field].as_u64(),
            "{field}: the page shows {row}, the API {counts}"
        );
    }
    assert_eq!(counts["total"], 30);

    // The button cancelled the second batch, as the API says too.
    assert_eq!(seen["rows"][&second]["status"], "cancelled", "{seen}");
    let cancelled = serve.wait_for(&second, &["cancelled"], Duration::from_secs(30));
    assert!(
        cancelled["request_counts"]["completed"].as_u64().unwrap() < 2000,
        "{cancelled}"
    );

    check_page(&seen, &serve.addr);
    assert_no_key("the dashboard", seen["text"].as_str().unwrap());
    assert!(
        !seen["text"].as_str().unwrap().contains(GATEWAY_TOKEN),
        "the page shows the gateway token"
    );
    serve.assert_no_key_anywhere();
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10 * 1024);
    eprintln!(
        "dashboard: {:.1} ms of script per update; screenshot {}",
        seen["script_ms_per_update"].as_f64().unwrap_or(f64::NAN),
        shot.display()
    );
}

/// What every dashboard must be: every part there, its charts drawn, nothing asked of
/// any other server, no script error.
fn check_page(seen: &Value, addr: &str) {
    let sections: Vec<&str> = seen["sections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for part in [
        "sources",
        "lanes",
        "models",
        "errors",
        "throughput",
        "latency",
        "tokens",
        "cost",
    ] {
        assert!(sections.contains(&part), "no #{part} on the page: {seen}");
    }
    assert!(seen["svg_figures"].as_u64().unwrap() >= 4, "{seen}");
    for url in seen["requests"].as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(
            url.starts_with(&format!("http://{addr}/")),
            "the page asked {url}"
        );
    }
    assert_eq!(seen["console_errors"], json!([]), "script errors");
    assert!(seen["polls"].as_u64().unwrap() >= 3, "{seen}");
}
