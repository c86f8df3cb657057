//! The files a run claims, end to end: one run at a time on its output files, no file
//! written over the input or another file of the run (by whatever path it is named),
//! ERRORS named after OUTPUT, a pipe or device as OUTPUT, `--report` checked at start,
//! and `volley report` counting each request once. The real binary against the real
//! mock; "nothing sent" is read from the mock's own ledger.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Long enough for a loaded machine to start a process; a run that takes it to refuse
/// has not refused "at once".
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// How often a test looks at a file another process is about to write.
const POLL: Duration = Duration::from_millis(10);

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Requests the mock has answered so far.
fn requests(mock: &MockProc) -> u64 {
    mock.stats()["requests"]
        .as_u64()
        .expect("the mock counts requests")
}

fn custom_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().expect("a custom_id").to_string())
        .collect()
}

fn assert_each_once(ids: &[String], n: usize, what: &str) {
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), distinct.len()),
        (n, n),
        "{what}: every custom_id exactly once"
    );
}

/// The holder's pid, once its lock file says it.
fn lock_holder(lock: &Path) -> Option<u32> {
    std::fs::read_to_string(lock).ok()?.trim().parse().ok()
}

#[test]
fn a_second_run_on_the_same_files_is_refused_at_once_naming_the_first() {
    let ws = Workspace::new();
    let n = 50;
    ws.prompts("b.jsonl", n);
    // 50 requests two at a time at 200 ms each: the first run lasts at least 5 s, a wide
    // margin for the second to start on a busy machine.
    let mock = MockProc::start(&["--latency-ms", "200"]);
    let args = run_args("b.jsonl", &mock.base_url, &["--concurrency", "2"]);
    let mut first = volley()
        .args(&args)
        .current_dir(ws.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the first run");
    let lock = ws.path("b.results.jsonl.lock");
    let started = Instant::now();
    let holder = loop {
        if let Some(pid) = lock_holder(&lock) {
            break pid;
        }
        if let Some(status) = first.try_wait().unwrap() {
            panic!(
                "the first run ended ({status}) without ever holding {}",
                lock.display()
            );
        }
        assert!(
            started.elapsed() < STARTUP_LIMIT,
            "no lock after {STARTUP_LIMIT:?}"
        );
        std::thread::sleep(POLL);
    };
    assert_eq!(holder, first.id(), "the lock file names its holder");

    let second_started = Instant::now();
    let second = ws.run(&args);
    let took = second_started.elapsed();
    assert_exit(&second, 2);
    let said = stderr(&second);
    assert!(
        said.contains(&format!("pid {holder}")) && said.contains("b.results.jsonl"),
        "the refusal names the holder and the file: {said}"
    );
    assert!(took < STARTUP_LIMIT, "refused after {took:?}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first run was still running when the second was refused"
    );

    let first = first.wait_with_output().unwrap();
    assert_exit(&first, 0);
    assert_eq!(requests(&mock), n as u64, "each request sent once");
    assert_each_once(&custom_ids(&ws.jsonl("b.results.jsonl")), n, "RESULTS");
    assert!(!lock.exists(), "the lock file goes with the run");

    // A lock file left by a run that died (nobody holds it) blocks nobody.
    std::fs::write(&lock, "4000000\n").unwrap();
    let again = ws.run(&args);
    assert_exit(&again, 0);
    assert_eq!(requests(&mock), n as u64, "all done already");
    assert!(!lock.exists(), "{}", ws.listing());
}

/// Runs `args` (after `run INPUT --base-url ...`) against `mock` and asserts it is
/// refused with exit 2, naming `labels` and `paths`, before any request, with the input
/// and RESULTS left as they were.
fn assert_refused(ws: &Workspace, mock: &MockProc, extra: &[&str], named: &[&str]) {
    let before = requests(mock);
    let input = std::fs::read(ws.path("in.jsonl")).unwrap();
    let results = std::fs::read(ws.path("in.results.jsonl")).unwrap();
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, extra));
    assert_exit(&out, 2);
    let said = stderr(&out);
    for name in named {
        assert!(
            said.contains(name),
            "{extra:?}: the refusal names {name}: {said}"
        );
    }
    assert_eq!(requests(mock), before, "{extra:?}: a request was sent");
    assert_eq!(
        std::fs::read(ws.path("in.jsonl")).unwrap(),
        input,
        "{extra:?}: the input changed"
    );
    assert_eq!(
        std::fs::read(ws.path("in.results.jsonl")).unwrap(),
        results,
        "{extra:?}: RESULTS changed"
    );
}

#[test]
fn no_file_of_a_run_is_written_over_another_by_any_name() {
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 3);
    let mock = MockProc::start(&[]);
    // A finished run, so that RESULTS has something to lose.
    assert_exit(&ws.run(&run_args("in.jsonl", &mock.base_url, &[])), 0);
    std::fs::create_dir(ws.path("x")).unwrap();
    std::os::unix::fs::symlink(ws.path("in.jsonl"), ws.path("link.jsonl")).unwrap();
    let absolute = ws.path("in.jsonl").display().to_string();

    assert_refused(
        &ws,
        &mock,
        &["--report", "in.jsonl"],
        &["INPUT", "--report"],
    );
    assert_refused(
        &ws,
        &mock,
        &["--events", "in.results.jsonl"],
        &["RESULTS", "--events", "in.results.jsonl"],
    );
    for output in [
        absolute.as_str(),
        "./x/../in.jsonl",
        "./missing/../in.jsonl",
        "link.jsonl",
    ] {
        assert_refused(&ws, &mock, &["-o", output], &["INPUT", "RESULTS", output]);
    }
    assert_refused(
        &ws,
        &mock,
        &["--errors", "./x/../in.results.jsonl"],
        &["RESULTS", "ERRORS"],
    );
    assert!(!ws.path("missing").exists(), "nothing created on the way");
}

#[test]
fn volley_report_refuses_one_file_named_twice() {
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 3);
    let mock = MockProc::start(&[]);
    assert_exit(&ws.run(&run_args("in.jsonl", &mock.base_url, &[])), 0);
    let results = std::fs::read(ws.path("in.results.jsonl")).unwrap();
    for (flag, name) in [
        ("--json", "in.results.jsonl"),
        ("--html", "./in.results.jsonl"),
        ("--errors", "in.results.jsonl"),
    ] {
        let out = ws.run(&["report", "in.results.jsonl", flag, name]);
        assert_exit(&out, 2);
        let said = stderr(&out);
        assert!(
            said.contains("RESULTS") && said.contains(flag) && said.contains(name),
            "{flag} {name}: {said}"
        );
        assert_eq!(
            std::fs::read(ws.path("in.results.jsonl")).unwrap(),
            results,
            "{flag} {name}: RESULTS changed"
        );
    }
}

#[test]
fn errors_go_beside_the_output_a_run_names() {
    let ws = Workspace::new();
    let n = 20;
    ws.prompts("batch.jsonl", n);
    // A 5xx for about half the requests; without retries each is a failure for good.
    let mock = MockProc::start(&["--fail-rate", "0.5", "--seed", "7"]);
    for name in ["a", "b"] {
        let results = format!("{name}.results.jsonl");
        let out = ws.run(&run_args(
            "batch.jsonl",
            &mock.base_url,
            &["-o", &results, "--max-retries", "0"],
        ));
        assert_exit(&out, 1);
        let errors = format!("{name}.errors.jsonl");
        let failed = custom_ids(&ws.jsonl(&errors));
        let succeeded = custom_ids(&ws.jsonl(&results));
        assert!(
            !failed.is_empty() && !succeeded.is_empty(),
            "{name}: {} failed, {} succeeded ({})",
            failed.len(),
            succeeded.len(),
            ws.listing()
        );
        assert_each_once(&[failed.clone(), succeeded].concat(), n, name);
        let said = stderr(&out);
        assert!(
            said.contains(&format!("failed {} ·", failed.len()))
                && said.contains("already done before 0")
                && said.contains(&format!("errors: {errors}")),
            "{name}'s summary shows its own failures: {said}"
        );
    }
    assert!(!ws.path("batch.errors.jsonl").exists(), "{}", ws.listing());
    assert_eq!(requests(&mock), 2 * n as u64);
}

#[test]
fn a_device_as_output_needs_errors_named_and_takes_no_lock() {
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 3);
    let mock = MockProc::start(&[]);
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &["-o", "/dev/null"]));
    assert_exit(&out, 2);
    let said = stderr(&out);
    assert!(
        said.contains("/dev/null") && said.contains("--errors"),
        "{said}"
    );
    assert_eq!(requests(&mock), 0);
    assert!(!ws.path("in.errors.jsonl").exists());

    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["-o", "/dev/null", "--errors", "e.jsonl"],
    ));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 3);
    assert!(
        !Path::new("/dev/null.lock").exists(),
        "no lock beside a device"
    );
}

#[test]
fn an_unwritable_report_is_found_before_any_request() {
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 3);
    let mock = MockProc::start(&[]);
    // Read-only even for root, a folder that does not exist, a folder.
    for report in [
        "/proc/volley-test-report.json",
        "/sys/volley-test-report.json",
        "missing/report.json",
        ".",
    ] {
        let out = ws.run(&run_args("in.jsonl", &mock.base_url, &["--report", report]));
        assert_exit(&out, 2);
        let said = stderr(&out);
        assert!(
            said.contains("--report") && said.contains(report),
            "{report}: {said}"
        );
        assert_eq!(requests(&mock), 0, "{report}: a request was sent");
    }
    assert!(!ws.path("missing").exists());
    // A writable path is probed without leaving a file behind before the run writes it.
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["--report", "r.json"],
    ));
    assert_exit(&out, 0);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("r.json")).unwrap()).unwrap();
    assert_eq!(report["requests"]["succeeded"], 3);
}

/// A hand-made output line: `custom_id` took `attempts`, and failed with `code` if given.
fn output_line(record: &str, custom_id: &str, attempts: u32, code: Option<&str>) -> String {
    let error = code.map_or(
        Value::Null,
        |c| serde_json::json!({"code": c, "message": "x"}),
    );
    let line = serde_json::json!({
        "id": record, "custom_id": custom_id, "response": null, "error": error,
        "volley": {"attempts": attempts, "latency_ms": 10.0,
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                   "cost": null, "key": "key#1", "finished_at": 1000.0},
    });
    format!("{line}\n")
}

#[test]
fn volley_report_counts_each_request_once() {
    let ws = Workspace::new();
    // r1 succeeded twice (a file appended to twice), r2 failed and then succeeded in a
    // --retry-failed run that crashed before ERRORS was compacted; r3 failed twice;
    // line 4 was invalid, and its fallback id is also another line's real custom_id.
    let results = [
        output_line("v1", "r1", 1, None),
        output_line("v2", "r1", 2, None),
        output_line("v3", "r2", 3, None),
        output_line("v4", "line-4", 1, None),
    ]
    .concat();
    let errors = [
        output_line("v5", "r2", 1, Some("server_error")),
        output_line("v6", "r3", 1, Some("server_error")),
        output_line("v7", "r3", 4, Some("server_error")),
        output_line("vol-input-4", "line-4", 0, Some("invalid_input")),
    ]
    .concat();
    ws.write("r.jsonl", &results);
    ws.write("e.jsonl", &errors);
    let out = ws.run(&[
        "report", "r.jsonl", "--errors", "e.jsonl", "--json", "rep.json",
    ]);
    assert_exit(&out, 0);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("rep.json")).unwrap()).unwrap();
    let counts = &report["requests"];
    assert_eq!(
        (
            &counts["total"],
            &counts["succeeded"],
            &counts["failed"],
            &counts["invalid_input"]
        ),
        (&5.into(), &3.into(), &1.into(), &1.into()),
        "{report:#}"
    );
    // The last line of each id: r1 2 attempts, r2 3, line-4 1, r3 4.
    assert_eq!(report["attempts"], 10, "{report:#}");
    assert_eq!(report["errors_by_code"]["server_error"], 1, "{report:#}");
}

/// Starts `volley run` with `args` in `ws` and returns once it holds `lock`.
fn start_holding(ws: &Workspace, args: &[&str], lock: &Path) -> std::process::Child {
    let mut child = volley()
        .args(args)
        .current_dir(ws.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the first run");
    let started = Instant::now();
    while lock_holder(lock) != Some(child.id()) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended before holding {}",
            lock.display()
        );
        assert!(
            started.elapsed() < STARTUP_LIMIT,
            "no lock after {STARTUP_LIMIT:?}"
        );
        std::thread::sleep(POLL);
    }
    child
}

#[test]
fn another_name_of_a_running_runs_results_or_errors_is_refused() {
    let ws = Workspace::new();
    let n = 50;
    ws.prompts("in.jsonl", n);
    // Both files exist before the first run, so names can be linked to them.
    ws.write("in.results.jsonl", "");
    ws.write("in.errors.jsonl", "");
    std::fs::hard_link(ws.path("in.results.jsonl"), ws.path("hard.jsonl")).unwrap();
    let mock = MockProc::start(&["--latency-ms", "200"]);
    let args = run_args("in.jsonl", &mock.base_url, &["--concurrency", "2"]);
    let mut first = start_holding(&ws, &args, &ws.path("in.results.jsonl.lock"));

    // RESULTS through a hard link (the lock file beside it has another name).
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["-o", "hard.jsonl", "--errors", "other.errors.jsonl"],
    ));
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("hard.jsonl is being written by another volley run"),
        "{}",
        explain(&out)
    );
    // The same ERRORS for another OUTPUT.
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["-o", "other.results.jsonl", "--errors", "in.errors.jsonl"],
    ));
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("ERRORS in.errors.jsonl is being written"),
        "{}",
        explain(&out)
    );
    // `volley sort` would rename RESULTS under the run's appends.
    let out = ws.run(&["sort", "in.results.jsonl", "--input", "in.jsonl"]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains(&format!("pid {}", first.id())),
        "{}",
        explain(&out)
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "refused while the first run was running"
    );

    let first = first.wait_with_output().unwrap();
    assert_exit(&first, 0);
    assert_eq!(requests(&mock), n as u64, "each request sent once");
    assert_each_once(&custom_ids(&ws.jsonl("in.results.jsonl")), n, "RESULTS");
}

#[test]
fn a_device_output_counts_only_its_own_runs_failures() {
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 3);
    let failing = MockProc::start(&["--fail-rate", "1"]);
    let args = [
        "-o",
        "/dev/null",
        "--errors",
        "e.jsonl",
        "--max-retries",
        "0",
    ];
    assert_exit(&ws.run(&run_args("in.jsonl", &failing.base_url, &args)), 1);
    assert_eq!(ws.jsonl("e.jsonl").len(), 3);
    // No resume with a device as OUTPUT: everything is sent again, and this run's
    // exit code is about this run.
    let good = MockProc::start(&[]);
    assert_exit(&ws.run(&run_args("in.jsonl", &good.base_url, &args)), 0);
    assert_eq!(requests(&good), 3);
}

#[test]
fn stdout_redirected_to_a_file_as_output_still_needs_errors_named() {
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 2);
    let mock = MockProc::start(&[]);
    let out = volley()
        .args(run_args("in.jsonl", &mock.base_url, &["-o", "/dev/stdout"]))
        .current_dir(ws.dir.path())
        .stdout(std::fs::File::create(ws.path("captured.jsonl")).unwrap())
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--errors"), "{}", explain(&out));
    assert_eq!(requests(&mock), 0);
    assert!(!Path::new("/dev/stdout.errors.jsonl").exists());
}

#[test]
fn a_closed_stdout_does_not_crash_volley_report() {
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 3);
    let mock = MockProc::start(&[]);
    assert_exit(&ws.run(&run_args("in.jsonl", &mock.base_url, &[])), 0);
    let mut child = volley()
        .args(["report", "in.results.jsonl", "--json", "r.json"])
        .current_dir(ws.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before volley writes (as `| head -0` would).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert!(!stderr(&out).contains("panicked"), "{}", explain(&out));
    assert!(ws.path("r.json").exists(), "the rest of the work is done");
}
