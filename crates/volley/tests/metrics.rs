//! `volley run --metrics-addr`: the real binary serves Prometheus text that a
//! Prometheus parser reads, and its counters agree with the run's final report.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Sample, Scrape, Value as Prom};
use serde_json::Value;

fn scrape(addr: &str) -> Scrape {
    let text = http_get(addr, "/metrics");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{text}"))
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Prom::Counter(v) | Prom::Gauge(v) | Prom::Untyped(v) => *v,
        other => panic!("{} is not a number: {other:?}", s.metric),
    }
}

/// The samples of `metric` keyed by the value of `label` ("" when it has none).
fn by_label(scrape: &Scrape, metric: &str, label: &str) -> BTreeMap<String, f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .map(|s| (s.labels.get(label).unwrap_or("").to_string(), value(s)))
        .collect()
}

fn one(scrape: &Scrape, metric: &str) -> f64 {
    let found = by_label(scrape, metric, "");
    assert_eq!(found.len(), 1, "{metric}: {found:?}");
    found[""]
}

#[test]
fn metrics_parse_and_agree_with_the_final_report() {
    let mock = MockProc::start(&[
        "--fail-rate",
        "0.08",
        "--latency-ms",
        "5",
        "--jitter-ms",
        "20",
        "--cost-per-million-tokens",
        "3",
        "--seed",
        "11",
    ]);
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 300);
    // One invalid line, filed in ERRORS by --skip-invalid.
    let mut text = std::fs::read_to_string(ws.path("b.jsonl")).unwrap();
    text.push_str("{\"custom_id\":\"bad\",\"body\":{\"model\":\"m\",\"messages\":[]}}\n");
    ws.write("b.jsonl", &text);
    let args = run_args(
        "b.jsonl",
        &mock.base_url,
        &[
            "--concurrency",
            "16",
            "--skip-invalid",
            // With one retry a few requests fail twice and fail for good.
            "--max-retries",
            "1",
            "--initial-backoff",
            "0.01",
            "--max-backoff",
            "0.1",
            "--progress",
            "log",
            "--report",
            "report.json",
            "--metrics-addr",
            "127.0.0.1:0",
            "--metrics-linger",
            "120",
        ],
    );
    let mut child = volley()
        .args(&args)
        .current_dir(ws.dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The log names the address; keep draining stderr so the child never blocks on it.
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("metrics at http://").nth(1) {
                let _ = tx.send(rest.trim_end_matches("/metrics").to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the run logs where its metrics are");

    // A scrape while the run is going parses too; the run then ends and says so.
    let early = scrape(&addr);
    assert!(
        early
            .samples
            .iter()
            .any(|s| s.metric == "volley_requests_planned"),
        "{:?}",
        early.samples
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let last = loop {
        let s = scrape(&addr);
        if one(&s, "volley_run_finished") == 1.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "the run did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_no_key("/metrics", &http_get(&addr, "/metrics"));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("report.json")).unwrap()).unwrap();

    // Requests by outcome.
    let requests = by_label(&last, "volley_requests_total", "outcome");
    assert_eq!(requests["succeeded"] + requests["failed"], 300.0);
    assert_eq!(requests["invalid_input"], 1.0);
    assert_eq!(
        requests["succeeded"],
        report["requests"]["succeeded"].as_f64().unwrap()
    );
    assert_eq!(
        requests["failed"],
        report["requests"]["failed"].as_f64().unwrap()
    );
    // Attempts, retries by reason, 429s.
    let attempts: f64 = by_label(&last, "volley_attempts_total", "outcome")
        .values()
        .sum();
    assert_eq!(attempts, report["attempts"].as_f64().unwrap());
    let billed_requests = mock.stats()["requests"].as_f64().unwrap();
    assert_eq!(attempts, billed_requests, "every request the mock saw");
    let retries = by_label(&last, "volley_retries_total", "reason");
    let reported: BTreeMap<String, f64> = report["retries_by_reason"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    assert_eq!(retries, reported);
    assert!(
        retries.values().sum::<f64>() > 0.0,
        "the faults caused retries"
    );
    assert_eq!(
        one(&last, "volley_rate_limited_responses_total"),
        report["rate_limited"].as_f64().unwrap()
    );
    // Nothing left in flight or queued.
    assert_eq!(one(&last, "volley_requests_in_flight"), 0.0);
    assert_eq!(one(&last, "volley_requests_queued"), 0.0);
    // Latency histogram: one observation per finished request, buckets cumulative.
    let histogram = last
        .samples
        .iter()
        .find(|s| s.metric == "volley_request_duration_seconds")
        .expect("latency histogram");
    let Prom::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {:?}", histogram.value)
    };
    let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert_eq!(*counts.last().unwrap(), 300.0);
    // Tokens by kind and cost agree with the report and with the mock's bill.
    let model = &report["models"]["m"];
    let tokens: BTreeMap<String, f64> = last
        .samples
        .iter()
        .filter(|s| s.metric == "volley_tokens_total" && s.labels.get("model") == Some("m"))
        .map(|s| (s.labels.get("kind").unwrap().to_string(), value(s)))
        .collect();
    assert_eq!(
        tokens["prompt"],
        model["usage"]["prompt_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        tokens["completion"],
        model["usage"]["completion_tokens"].as_f64().unwrap()
    );
    let billed = mock.stats();
    assert_eq!(
        tokens["prompt"] + tokens["completion"],
        billed["tokens_billed"]["total"].as_f64().unwrap()
    );
    let cost = by_label(&last, "volley_cost_usd_total", "model")["m"];
    let reported_cost = report["usage"]["cost"].as_f64().unwrap();
    assert!(
        (cost - reported_cost).abs() <= 1e-9 * reported_cost.max(1e-9),
        "{cost} vs {reported_cost}"
    );
    assert!(cost > 0.0);
    // The wall time stops with the run: scrapes during the linger give the report's.
    let wall = report["wall_seconds"].as_f64().unwrap();
    let elapsed = one(&last, "volley_run_elapsed_seconds");
    assert!((elapsed - wall).abs() < 1e-6, "{elapsed} vs {wall}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(one(&scrape(&addr), "volley_run_elapsed_seconds"), elapsed);

    // Ctrl-C ends the linger at once; the exit code is the run's (1: ERRORS has lines).
    let started = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    let log = log.join().unwrap();
    assert_eq!(exit.code(), Some(1), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the linger ignored Ctrl-C"
    );
    assert!(!log.contains("sk-test"), "the key leaked into the log");
}

#[test]
fn a_taken_metrics_port_is_refused_before_anything_is_sent() {
    let mock = MockProc::start(&[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let ws = Workspace::new();
    ws.prompts("b.jsonl", 5);
    let out = ws.run(&run_args(
        "b.jsonl",
        &mock.base_url,
        &["--metrics-addr", &addr],
    ));
    assert_ne!(out.status.code(), Some(0), "{}", explain(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-addr"), "{err}");
    assert_eq!(mock.stats()["requests"].as_u64(), Some(0));
}
