//! Resume you can trust: a re-run sends exactly the requests that are not answered yet,
//! never mixes answers to two versions of a line without being told to, and never
//! destroys or re-buys a finished result.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn requests(mock: &MockProc) -> u64 {
    mock.stats()["requests"].as_u64().expect("requests count")
}

/// custom_id → the model named in its RESULTS line.
fn models_by_id(lines: &[Value]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for l in lines {
        let id = l["custom_id"].as_str().unwrap().to_string();
        let model = l["volley"]["model"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(out.insert(id.clone(), model).is_none(), "{id} twice");
    }
    out
}

/// A workspace whose `in.jsonl` (ids "a" and "b") is answered in `in.results.jsonl`.
fn two_lines_answered(mock: &MockProc) -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one\"}\n{\"id\":\"b\",\"prompt\":\"two\"}\n",
    );
    assert_exit(&ws.run(&run_args("in.jsonl", &mock.base_url, &[])), 0);
    ws
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_changed_input_with_auto_ids_is_refused_until_the_user_chooses() {
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.write(
        "in.jsonl",
        "{\"prompt\":\"alpha\"}\n{\"prompt\":\"beta\"}\n",
    );
    let run = |model: &str, extra: &[&str]| {
        let mut args = run_args("in.jsonl", &mock.base_url, extra);
        let at = args.iter().position(|a| *a == "m").unwrap();
        args[at] = model;
        ws.run(&args)
    };
    assert_exit(&run("model-a", &[]), 0);
    assert_eq!(requests(&mock), 2);
    for line in ws.jsonl("in.results.jsonl") {
        let fp = line["volley"]["fingerprint"]
            .as_str()
            .expect("a fingerprint");
        assert_eq!(fp.len(), 16, "{line}");
    }

    // A line inserted at the top renames every auto id after it; the model changes too.
    ws.write(
        "in.jsonl",
        "{\"prompt\":\"gamma\"}\n{\"prompt\":\"alpha\"}\n{\"prompt\":\"beta\"}\n",
    );
    let before = std::fs::read(ws.path("in.results.jsonl")).unwrap();
    let out = run("model-b", &[]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("in.jsonl:1:") && err.contains("\"line-1\""),
        "{err}"
    );
    assert!(
        err.contains("in.jsonl:2:") && err.contains("\"line-2\""),
        "{err}"
    );
    assert!(
        err.contains("--rerun-changed") && err.contains("--keep-changed"),
        "{err}"
    );
    assert!(err.contains("stable"), "the auto-id hint: {err}");
    assert_eq!(requests(&mock), 2, "nothing sent");
    assert_eq!(std::fs::read(ws.path("in.results.jsonl")).unwrap(), before);

    // --rerun-changed: every line answered by model-b, each id once.
    let out = run("model-b", &["--rerun-changed"]);
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 5);
    let models = models_by_id(&ws.jsonl("in.results.jsonl"));
    assert_eq!(models.len(), 3, "{models:?}");
    assert!(models.values().all(|m| m == "model-b"), "{models:?}");

    // The same command again: nothing left to send, nothing named.
    let out = run("model-b", &[]);
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 5);
}

#[test]
fn stable_ids_survive_inserts_and_reorders_and_only_edits_are_named() {
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one\"}\n{\"id\":\"b\",\"prompt\":\"two\"}\n{\"id\":\"c\",\"prompt\":\"three\"}\n",
    );
    assert_exit(&ws.run(&run_args("in.jsonl", &mock.base_url, &[])), 0);
    let first = ws.jsonl("in.results.jsonl");
    let answer_of = |lines: &[Value], id: &str| {
        lines
            .iter()
            .find(|l| l["custom_id"] == id)
            .map(|l| l["id"].clone())
    };

    // Reordered, one inserted, one edited ("b"): only "b" is a changed request.
    ws.write(
        "in.jsonl",
        "{\"id\":\"c\",\"prompt\":\"three\"}\n{\"id\":\"new\",\"prompt\":\"zero\"}\n{\"id\":\"a\",\"prompt\":\"one\"}\n{\"id\":\"b\",\"prompt\":\"two, edited\"}\n",
    );
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &[]));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("in.jsonl:4:") && err.contains("\"b\""),
        "{err}"
    );
    assert!(!err.contains("\"a\"") && !err.contains("\"c\""), "{err}");
    assert!(err.contains("1 finished request(s) changed"), "{err}");
    assert_eq!(requests(&mock), 3);

    // --keep-changed: "b" keeps its old answer, only "new" is sent.
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &["--keep-changed"]));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 4);
    let kept = ws.jsonl("in.results.jsonl");
    assert_eq!(kept.len(), 4);
    assert_eq!(answer_of(&kept, "b"), answer_of(&first, "b"));

    // --rerun-changed: "b" answered again, its old line gone, the others untouched.
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &["--rerun-changed"]));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 5);
    let now = ws.jsonl("in.results.jsonl");
    assert_eq!(models_by_id(&now).len(), 4);
    assert_ne!(answer_of(&now, "b"), answer_of(&first, "b"));
    assert_eq!(answer_of(&now, "a"), answer_of(&first, "a"));
    assert_eq!(answer_of(&now, "c"), answer_of(&first, "c"));
}

#[test]
fn after_a_crash_mid_rerun_the_line_matching_the_input_wins() {
    let mock = MockProc::start(&[]);
    let ws = two_lines_answered(&mock);
    let old = std::fs::read_to_string(ws.path("in.results.jsonl")).unwrap();
    // The new version of "a", answered into another file...
    ws.write("new.jsonl", "{\"id\":\"a\",\"prompt\":\"one, edited\"}\n");
    assert_exit(&ws.run(&run_args("new.jsonl", &mock.base_url, &[])), 0);
    let new = std::fs::read_to_string(ws.path("new.results.jsonl")).unwrap();
    // ...and left beside the old one, as a crash between writing the new line and
    // dropping the old one leaves RESULTS.
    ws.write("in.results.jsonl", &format!("{old}{new}"));
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one, edited\"}\n{\"id\":\"b\",\"prompt\":\"two\"}\n",
    );
    let sent = requests(&mock);
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &[]));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), sent, "nothing sent again");
    let lines = ws.jsonl("in.results.jsonl");
    assert_eq!(models_by_id(&lines).len(), 2, "each id once: {lines:?}");
    let a = lines.iter().find(|l| l["custom_id"] == "a").unwrap();
    let answered = &read_jsonl(&ws.path("new.results.jsonl"))[0];
    assert_eq!(a["id"], answered["id"], "the new version's answer is kept");
    assert_eq!(
        a["volley"]["fingerprint"],
        answered["volley"]["fingerprint"]
    );
}

#[test]
fn lines_without_fingerprints_match_by_id_with_one_warning_and_strays_are_named() {
    let mock = MockProc::start(&[]);
    let ws = two_lines_answered(&mock);
    // As an older volley wrote them: no fingerprint. Plus one id the input lacks.
    let mut text = String::new();
    for mut line in ws.jsonl("in.results.jsonl") {
        line["volley"]
            .as_object_mut()
            .unwrap()
            .remove("fingerprint");
        text.push_str(&format!("{line}\n"));
        if line["custom_id"] == "b" {
            line["custom_id"] = "gone".into();
            text.push_str(&format!("{line}\n"));
        }
    }
    ws.write("in.results.jsonl", &text);
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["--progress", "log"],
    ));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 2, "matched by custom_id: nothing sent");
    let err = stderr(&out);
    assert_eq!(err.matches("no request fingerprint").count(), 1, "{err}");
    assert!(err.contains("2 finished line(s)"), "{err}");
    assert!(
        err.contains("1 custom_id(s) that are not in") && err.contains("\"gone\""),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(ws.path("in.results.jsonl")).unwrap(),
        text
    );
}

#[test]
fn a_finished_id_repeated_by_a_later_line_is_still_an_input_error() {
    // Ids RESULTS holds are tracked apart from new ones on a re-run: a repeat must be
    // caught either way, and a stray counted only for ids no line has.
    let mock = MockProc::start(&[]);
    let ws = two_lines_answered(&mock);
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one\"}\n{\"id\":\"c\",\"prompt\":\"three\"}\n{\"id\":\"c\",\"prompt\":\"again\"}\n{\"id\":\"a\",\"prompt\":\"one\"}\n",
    );
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &[]));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("in.jsonl:3: custom_id \"c\" repeats line 2"),
        "{err}"
    );
    assert!(
        err.contains("in.jsonl:4: custom_id \"a\" repeats line 1"),
        "{err}"
    );
    assert_eq!(requests(&mock), 2, "nothing more was sent");
    // Fixed, the run sends the new line only, and names "b" as RESULTS' one stray.
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one\"}\n{\"id\":\"c\",\"prompt\":\"three\"}\n",
    );
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["--progress", "log"],
    ));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 3);
    let err = stderr(&out);
    assert!(
        err.contains("1 custom_id(s) that are not in") && err.contains("\"b\""),
        "{err}"
    );
}

#[test]
fn a_results_file_volley_did_not_write_is_refused() {
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.write("in.jsonl", "{\"id\":\"a\",\"prompt\":\"one\"}\n");
    let foreign = "{\"custom_id\":\"a\"}\n";
    ws.write("in.results.jsonl", foreign);
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &[]));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("in.results.jsonl:1") && err.contains("not a line volley writes"),
        "{err}"
    );
    assert_eq!(requests(&mock), 0);
    assert_eq!(
        std::fs::read_to_string(ws.path("in.results.jsonl")).unwrap(),
        foreign
    );
}

#[test]
fn a_complete_last_line_without_newline_is_kept_and_a_torn_one_cut() {
    let mock = MockProc::start(&[]);
    let ws = two_lines_answered(&mock);
    let full = std::fs::read_to_string(ws.path("in.results.jsonl")).unwrap();
    ws.write("in.results.jsonl", full.trim_end_matches('\n'));

    // `volley report` and `volley run` agree: the record is complete and counts.
    let out = ws.run(&["report", "in.results.jsonl"]);
    assert_exit(&out, 0);
    assert!(!stderr(&out).contains("torn"), "{}", explain(&out));
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &[]));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 2, "the paid result is not bought again");
    assert_eq!(
        std::fs::read_to_string(ws.path("in.results.jsonl")).unwrap(),
        full
    );

    // A tail that does not parse is a torn write: cut, and that request sent again.
    let first = full.lines().next().unwrap();
    let second = full.lines().nth(1).unwrap();
    ws.write(
        "in.results.jsonl",
        &format!("{first}\n{}", &second[..second.len() / 2]),
    );
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &[]));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 3);
    assert_eq!(ws.jsonl("in.results.jsonl").len(), 2);
}

#[test]
fn a_fixed_invalid_line_is_sent_and_its_record_removed() {
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    // Line 2 is broken JSON, so its record files under "line-2"; line 3's real
    // custom_id is also "line-2" and must neither be called a repeat nor erase it.
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one\"}\n{\"prompt\":\"two\"\n{\"id\":\"line-2\",\"prompt\":\"three\"}\n",
    );
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &["--skip-invalid"]));
    assert_exit(&out, 1);
    assert_eq!(requests(&mock), 2);
    let errors = ws.jsonl("in.errors.jsonl");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["error"]["code"], "invalid_input");
    assert_eq!(ws.jsonl("in.results.jsonl").len(), 2);

    // Again, unchanged: the invalid record stays (once), nothing is sent.
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &["--skip-invalid"]));
    assert_exit(&out, 1);
    assert_eq!(requests(&mock), 2);
    assert_eq!(ws.jsonl("in.errors.jsonl").len(), 1);

    // Fixed: the line is sent, its record leaves ERRORS, the run succeeds.
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one\"}\n{\"id\":\"two\",\"prompt\":\"two\"}\n{\"id\":\"line-2\",\"prompt\":\"three\"}\n",
    );
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["--progress", "log"],
    ));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 3);
    assert!(ws.jsonl("in.errors.jsonl").is_empty());
}

#[test]
fn output_that_is_a_pipe_is_written_not_read_back() {
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 5);
    let mut child = volley()
        .args(run_args(
            "in.jsonl",
            &mock.base_url,
            &["-o", "/dev/stdout", "--errors", "in.errors.jsonl"],
        ))
        .current_dir(ws.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = String::new();
    let mut pipe = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || pipe.read_to_string(&mut stdout).map(|_| stdout));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("volley -o /dev/stdout hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let stdout = reader.join().unwrap().unwrap();
    let ids: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["custom_id"].clone())
        .collect();
    assert_eq!(ids.len(), 5, "{stdout}");
    assert_eq!(requests(&mock), 5);
    assert!(!ws.path("in.results.jsonl").exists());
}

#[test]
fn output_files_that_cannot_be_created_exit_2_before_any_request() {
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 3);
    // /proc accepts no new files, even from root.
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &[
            "-o",
            "/proc/volley-test/r.results.jsonl",
            "--errors",
            "e.jsonl",
        ],
    ));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("/proc/volley-test"), "{err}");
    assert!(
        !err.contains("re-run"),
        "nothing was sent, so nothing to resume: {err}"
    );
    assert_eq!(requests(&mock), 0);
    // A regular path whose folder cannot exist (a file stands where it would be): the
    // lock, resume and writer path, not a stream's.
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["-o", "in.jsonl/r.results.jsonl", "--errors", "e.jsonl"],
    ));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.contains("in.jsonl/r.results.jsonl"), "{err}");
    assert_eq!(requests(&mock), 0);
}

#[test]
fn tidying_errors_keeps_its_mode_and_its_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one\"}\n{\"id\":\"b\",\"prompt\":\"two\"}\n",
    );
    std::fs::create_dir(ws.path("real")).unwrap();
    ws.write("real/errors.jsonl", "");
    std::fs::set_permissions(
        ws.path("real/errors.jsonl"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("real/errors.jsonl", ws.path("in.errors.jsonl")).unwrap();
    assert_exit(&ws.run(&run_args("in.jsonl", &mock.base_url, &[])), 0);
    // Make "a" a failure (twice, as two runs could leave it), so --retry-failed sends it
    // again and ERRORS is rewritten.
    let results = ws.jsonl("in.results.jsonl");
    let line_of = |id: &str| {
        results
            .iter()
            .find(|l| l["custom_id"] == id)
            .unwrap()
            .clone()
    };
    let mut failed = line_of("a");
    failed["error"] = serde_json::json!({"code": "server_error", "message": "x"});
    ws.write("in.results.jsonl", &format!("{}\n", line_of("b")));
    ws.write("real/errors.jsonl", &format!("{failed}\n{failed}\n"));
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &["--retry-failed"]));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 3);
    let link = std::fs::symlink_metadata(ws.path("in.errors.jsonl")).unwrap();
    assert!(link.file_type().is_symlink(), "ERRORS is still a symlink");
    let mode = std::fs::metadata(ws.path("real/errors.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert!(ws.jsonl("in.errors.jsonl").is_empty());
    assert!(
        ws.jsonl("in.results.jsonl")
            .iter()
            .any(|l| l["custom_id"] == "a")
    );
}

#[test]
fn a_byte_order_mark_at_the_start_of_the_input_is_ignored() {
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    ws.write(
        "in.jsonl",
        "\u{feff}{\"id\":\"a\",\"prompt\":\"one\"}\n{\"id\":\"b\",\"prompt\":\"two\"}\n",
    );
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &[]));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 2);
    assert_eq!(models_by_id(&ws.jsonl("in.results.jsonl")).len(), 2);
}

#[test]
fn an_input_that_is_a_pipe_is_read_once_and_every_line_sent() {
    use std::io::Write;
    let mock = MockProc::start(&[]);
    let ws = Workspace::new();
    let mut child = volley()
        .args(run_args("/dev/stdin", &mock.base_url, &["-o", "out.jsonl"]))
        .current_dir(ws.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"{\"id\":\"a\",\"prompt\":\"one\"}\n{\"id\":\"b\",\"prompt\":\"two\"}\n{\"id\":\"c\",\"prompt\":\"three\"}\n")
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 3);
    assert_eq!(models_by_id(&ws.jsonl("out.jsonl")).len(), 3);
}

#[test]
fn lines_in_the_wrong_file_are_refused_not_taken_as_finished() {
    let failing = MockProc::start(&["--fail-rate", "1"]);
    let ws = Workspace::new();
    ws.prompts("in.jsonl", 3);
    // -o and --errors swapped by mistake: the failures land in x.results.jsonl.
    let swapped = [
        "-o",
        "x.errors.jsonl",
        "--errors",
        "x.results.jsonl",
        "--max-retries",
        "0",
    ];
    assert_exit(
        &ws.run(&run_args("in.jsonl", &failing.base_url, &swapped)),
        1,
    );
    let good = MockProc::start(&[]);
    let out = ws.run(&run_args(
        "in.jsonl",
        &good.base_url,
        &["-o", "x.results.jsonl"],
    ));
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("x.results.jsonl:1") && err.contains("swapped"),
        "{err}"
    );
    assert_eq!(requests(&good), 0);
}

#[test]
fn a_request_written_twice_keeps_one_line_and_keep_changed_keeps_the_newest() {
    let mock = MockProc::start(&[]);
    let ws = two_lines_answered(&mock);
    let first = std::fs::read_to_string(ws.path("in.results.jsonl")).unwrap();
    // "a" in a second version, answered elsewhere, both left in RESULTS (a crash during
    // --rerun-changed), and "b" twice (two runs before there was a lock).
    ws.write("v2.jsonl", "{\"id\":\"a\",\"prompt\":\"one, v2\"}\n");
    assert_exit(&ws.run(&run_args("v2.jsonl", &mock.base_url, &[])), 0);
    let v2 = std::fs::read_to_string(ws.path("v2.results.jsonl")).unwrap();
    let b = first
        .lines()
        .find(|l| l.contains("\"custom_id\":\"b\""))
        .unwrap();
    ws.write("in.results.jsonl", &format!("{first}{v2}{b}\n"));
    // The input is at a third version of "a": --keep-changed keeps v2's answer only.
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one, v3\"}\n{\"id\":\"b\",\"prompt\":\"two\"}\n",
    );
    let sent = requests(&mock);
    let out = ws.run(&run_args("in.jsonl", &mock.base_url, &["--keep-changed"]));
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), sent);
    let lines = ws.jsonl("in.results.jsonl");
    assert_eq!(models_by_id(&lines).len(), 2, "each id once: {lines:?}");
    let a = lines.iter().find(|l| l["custom_id"] == "a").unwrap();
    assert_eq!(a["id"], read_jsonl(&ws.path("v2.results.jsonl"))[0]["id"]);
}

#[test]
fn stdout_redirected_into_a_file_is_appended_to_never_rewritten() {
    let mock = MockProc::start(&[]);
    let ws = two_lines_answered(&mock);
    // out.jsonl already holds "a" twice: a resume would rewrite it to drop one.
    let a = ws
        .jsonl("in.results.jsonl")
        .into_iter()
        .find(|l| l["custom_id"] == "a")
        .unwrap();
    let before = format!("{a}\n{a}\n");
    ws.write("out.jsonl", &before);
    let out = volley()
        .args(run_args(
            "in.jsonl",
            &mock.base_url,
            &["-o", "/dev/stdout", "--errors", "e.jsonl"],
        ))
        .current_dir(ws.dir.path())
        .stdout(
            std::fs::OpenOptions::new()
                .append(true)
                .open(ws.path("out.jsonl"))
                .unwrap(),
        )
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(requests(&mock), 4, "no resume through /dev/stdout");
    let text = std::fs::read_to_string(ws.path("out.jsonl")).unwrap();
    assert!(
        text.starts_with(&before),
        "the file's lines are kept: {text}"
    );
    assert_eq!(text.lines().count(), 4, "{text}");
}

#[test]
fn an_input_rewritten_during_the_run_stops_it_before_a_wrong_line_is_sent() {
    let mock = MockProc::start(&["--latency-ms", "300"]);
    let ws = Workspace::new();
    // Lines far larger than the reader's buffer, so most are read after the rewrite.
    let padding = "x".repeat(200_000);
    let input = |version: &str| -> String {
        (0..12)
            .map(|i| format!("{{\"id\":\"r{i}\",\"prompt\":\"{version} {i} {padding}\"}}\n"))
            .collect()
    };
    ws.write("in.jsonl", &input("first"));
    let child = volley()
        .args(run_args(
            "in.jsonl",
            &mock.base_url,
            &["--concurrency", "1"],
        ))
        .current_dir(ws.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while requests(&mock) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no request sent"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Rewritten in place (same file, new content), as `cat new > in.jsonl` does.
    std::fs::write(ws.path("in.jsonl"), input("second")).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("changed while the run read it"),
        "{}",
        explain(&out)
    );
    let sent = requests(&mock);
    assert!(sent < 12, "the rest of the file was not sent: {sent}");
    for line in ws.jsonl("in.results.jsonl") {
        let prompt = &line["response"]["body"];
        assert!(
            !prompt.to_string().contains("second"),
            "a rewritten line was sent"
        );
    }
}

#[test]
fn retrying_a_failure_keeps_its_record_until_it_is_answered() {
    let mock = MockProc::start(&[]);
    let ws = two_lines_answered(&mock);
    // A crash during --rerun-changed left "a"'s old answer in RESULTS and the new
    // version's failure in ERRORS.
    ws.write("v2.jsonl", "{\"id\":\"a\",\"prompt\":\"one, v2\"}\n");
    let failing = MockProc::start(&["--fail-rate", "1"]);
    let args = [
        "-o",
        "v2.results.jsonl",
        "--errors",
        "v2.errors.jsonl",
        "--max-retries",
        "0",
    ];
    assert_exit(&ws.run(&run_args("v2.jsonl", &failing.base_url, &args)), 1);
    let failure = std::fs::read_to_string(ws.path("v2.errors.jsonl")).unwrap();
    ws.write("in.errors.jsonl", &failure);
    ws.write(
        "in.jsonl",
        "{\"id\":\"a\",\"prompt\":\"one, v2\"}\n{\"id\":\"b\",\"prompt\":\"two\"}\n",
    );
    // Starting a --retry-failed run (that then sends nothing, as a run killed at once)
    // drops the old answer, not the failure of the version being retried.
    let out = ws.run(&run_args(
        "in.jsonl",
        &mock.base_url,
        &["--retry-failed", "--limit", "0"],
    ));
    assert_exit(&out, 1);
    assert_eq!(
        std::fs::read_to_string(ws.path("in.errors.jsonl")).unwrap(),
        failure
    );
    let results = ws.jsonl("in.results.jsonl");
    assert!(results.iter().all(|l| l["custom_id"] != "a"), "{results:?}");
}

#[test]
fn failures_of_ids_no_longer_in_the_input_are_named_and_leftovers_cleared() {
    let failing = MockProc::start(&["--fail-rate", "1"]);
    let ws = Workspace::new();
    ws.write("in.jsonl", "{\"id\":\"gone\",\"prompt\":\"x\"}\n");
    assert_exit(
        &ws.run(&run_args(
            "in.jsonl",
            &failing.base_url,
            &["--max-retries", "0"],
        )),
        1,
    );
    ws.write("in.jsonl", "{\"id\":\"a\",\"prompt\":\"one\"}\n");
    // What a run killed mid-rewrite or mid-copy of stdin leaves beside RESULTS.
    ws.write(".in.results.jsonl.rewrite-abc123", "half a file");
    ws.write(".in.errors.jsonl.rewrite-def456", "half a file");
    ws.write(".in.results.jsonl.input-ghi789", "a copy of stdin");
    let good = MockProc::start(&[]);
    let out = ws.run(&run_args(
        "in.jsonl",
        &good.base_url,
        &["--progress", "log"],
    ));
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("1 failure(s) of custom_id(s) that are not in") && err.contains("\"gone\""),
        "{err}"
    );
    let listing = ws.listing();
    assert!(
        !listing.contains("rewrite-") && !listing.contains("input-"),
        "{listing}"
    );
}
