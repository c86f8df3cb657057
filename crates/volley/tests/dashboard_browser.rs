//! The dashboard as a person uses it: headless Chromium (driven by playwright-core,
//! `tests/browser/dashboard.mjs`) opens the page of the real `volley serve` on the
//! mock, watches a batch reach 100%, compares the numbers it shows with the batch's
//! `request_counts`, and cancels a second batch with its button; and the same page of
//! `volley run --dashboard` and `volley experiment run --dashboard`, whose numbers must
//! be the lines of the files they wrote.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::browser::drive_dashboard;
use common::gateway::{GATEWAY_TOKEN, ServeProc, batch_lines, read_reply};
use common::{MockProc, Workspace, assert_no_key, http_get, read_jsonl, run_args, volley};
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

/// A `volley` command serving `--dashboard 127.0.0.1:0`: the address it printed, and
/// its standard error as it comes. Killed on drop.
struct DashboardProc {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl DashboardProc {
    fn start(ws: &Workspace, args: &[&str]) -> DashboardProc {
        let mut child = volley()
            .args(args)
            .current_dir(ws.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start volley");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().expect("stderr"));
        let kept = stderr.clone();
        // Drained to the end: a full pipe would stall the run.
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Some((_, url)) = line.split_once("dashboard: http://") {
                    let _ = tx.send(url.trim_end_matches('/').to_string());
                }
                kept.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no dashboard address: {}", stderr.lock().unwrap()));
        assert!(
            addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
            "{addr}"
        );
        DashboardProc {
            child,
            addr,
            stderr,
        }
    }

    /// Waits until the run is over and its files closed: the linger says so.
    fn wait_for_linger(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .stderr
            .lock()
            .unwrap()
            .contains("serving the final dashboard")
        {
            assert!(
                Instant::now() < deadline,
                "the run never ended: {}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn state(&self) -> Value {
        serde_json::from_str(&http_get(&self.addr, "/dashboard/state")).expect("state JSON")
    }
}

impl Drop for DashboardProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lines of a JSONL file; none when it is missing.
fn lines(path: &Path) -> u64 {
    read_jsonl(path).len() as u64
}

/// The row shows 100% and exactly `completed` and `failed` of `completed + failed`.
fn assert_row(seen: &Value, id: &str, completed: u64, failed: u64) {
    let row = &seen["rows"][id];
    assert_eq!(row["progress"], "100%", "{seen}");
    let shown = |field: &str| row[field].as_str().and_then(|t| t.parse::<u64>().ok());
    assert_eq!(shown("completed"), Some(completed), "{id}: {row}");
    assert_eq!(shown("failed"), Some(failed), "{id}: {row}");
    assert_eq!(shown("total"), Some(completed + failed), "{id}: {row}");
}

#[test]
fn run_dashboard_shows_the_run_to_100_percent() {
    let mock = MockProc::start(&["--seed", "5"]);
    let ws = Workspace::new();
    ws.prompts("batch.jsonl", 200);
    let run = DashboardProc::start(
        &ws,
        &run_args(
            "batch.jsonl",
            &mock.base_url,
            &["--dashboard", "127.0.0.1:0", "--dashboard-linger", "60"],
        ),
    );
    let shot = artifact("dashboard-run.png");
    let _ = std::fs::remove_file(&shot);
    let seen = drive_dashboard(&json!({
        "url": format!("http://{}/", run.addr),
        "complete": ["run"],
        "screenshot": shot,
        "polls": 3,
    }));
    run.wait_for_linger();
    let (completed, failed) = (
        lines(&ws.path("batch.results.jsonl")),
        lines(&ws.path("batch.errors.jsonl")),
    );
    assert_eq!(completed + failed, 200);
    assert_row(&seen, "run", completed, failed);
    let state = run.state();
    assert_eq!(state["sources"][0]["id"], "run", "{state}");
    assert_eq!(state["sources"][0]["kind"], "run", "{state}");
    assert_eq!(state["sources"][0]["status"], "completed", "{state}");
    assert_eq!(state["sources"][0]["cancellable"], false, "{state}");
    check_page(&seen, &run.addr);
    assert_no_key("the dashboard", seen["text"].as_str().unwrap());
    assert_no_key("the dashboard's state", &state.to_string());
    // A site that rebinds its own name to 127.0.0.1 (DNS rebinding) reads nothing.
    let mut s = std::net::TcpStream::connect(&run.addr).unwrap();
    s.write_all(
        b"GET /dashboard/state HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let refused = read_reply(&mut s);
    assert_eq!(refused.status, 421, "{}", refused.text());
    assert!(
        std::fs::read(&shot)
            .expect("a screenshot")
            .starts_with(b"\x89PNG")
    );
}

#[test]
fn experiment_dashboard_shows_each_stage_to_100_percent() {
    let mock = MockProc::start(&[
        "--seed",
        "7",
        "--accuracy",
        "small=0.8",
        "--judge-model",
        "judge",
    ]);
    let ws = Workspace::new();
    let config = common::arith_example(&ws, &mock);
    let experiment = DashboardProc::start(
        &ws,
        &[
            "experiment",
            "run",
            config.to_str().unwrap(),
            "--out",
            "run",
            "--progress",
            "off",
            "--dashboard",
            "127.0.0.1:0",
            "--dashboard-linger",
            "60",
        ],
    );
    let (answers, judge) = ("arith-eval", "arith-eval/judge");
    let seen = drive_dashboard(&json!({
        "url": format!("http://{}/", experiment.addr),
        "complete": [answers, judge],
        "screenshot": artifact("dashboard-experiment.png"),
        "polls": 3,
    }));
    experiment.wait_for_linger();
    let run = ws.path("run");
    let errors = read_jsonl(&run.join("errors.jsonl"));
    assert_eq!(errors, Vec::<Value>::new(), "the mock was told no errors");
    let answered = lines(&run.join("answers.jsonl"));
    assert_eq!(answered, 1200);
    // The judge row may reach 100% before the last answers are handed to it: the
    // state after the run says the last word.
    let state = experiment.state();
    let rows = state["sources"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, [answers, judge], "{state}");
    for (row, kind, file) in [
        (&rows[0], "answers", "answers.jsonl"),
        (&rows[1], "judge", "judgements.jsonl"),
    ] {
        let n = lines(&run.join(file));
        assert_eq!(row["kind"], kind, "{row}");
        assert_eq!(row["status"], "completed", "{row}");
        assert_eq!(
            row["request_counts"],
            json!({"total": n, "completed": n, "failed": 0}),
            "{row}"
        );
    }
    assert_row(&seen, answers, answered, 0);
    assert_eq!(seen["rows"][judge]["progress"], "100%", "{seen}");
    check_page(&seen, &experiment.addr);
    assert_no_key("the dashboard", seen["text"].as_str().unwrap());
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
