//! `volley experiment` end to end: the real binary, a configuration file, and
//! `volley mock` told each model's accuracy and acting as the judge.

mod common;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::browser::{assert_self_contained, figure, rendered_dom};
use common::{MockProc, Workspace, assert_exit, assert_no_key, explain, read_jsonl, volley};
use serde_json::Value;

/// The README's example, pointed at `mock` and using the test key's variable.
fn example(ws: &Workspace, mock: &MockProc) -> std::path::PathBuf {
    common::arith_example(ws, mock)
}

fn graded_mock(extra: &[&str]) -> MockProc {
    let mut args = vec![
        "--seed",
        "7",
        "--accuracy",
        "small=0.8",
        "--accuracy",
        "large=0.6",
        "--judge-model",
        "judge",
    ];
    args.extend_from_slice(extra);
    MockProc::start(&args)
}

/// (item, model, run) of each line, asserting none repeats.
fn once(lines: &[Value], what: &str) -> HashSet<(String, String, u64)> {
    let mut seen = HashSet::new();
    for l in lines {
        let cell = (
            l["item"].as_str().unwrap().to_owned(),
            l["model"].as_str().unwrap().to_owned(),
            l["run"].as_u64().unwrap(),
        );
        assert!(seen.insert(cell.clone()), "{what} holds {cell:?} twice");
    }
    seen
}

#[test]
fn the_readme_example_scores_what_the_mock_was_told_and_report_recomputes_it() {
    let mock = graded_mock(&[]);
    let ws = Workspace::new();
    let config = example(&ws, &mock);
    let out = ws.run(&[
        "experiment",
        "run",
        config.to_str().unwrap(),
        "--out",
        "run",
    ]);
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("| small |") && stdout.contains("McNemar exact p"),
        "{stdout}"
    );

    let run = ws.path("run");
    let answers = once(&read_jsonl(&run.join("answers.jsonl")), "answers");
    assert_eq!(answers.len(), 1200);
    assert_eq!(
        once(&read_jsonl(&run.join("judgements.jsonl")), "judgements"),
        answers
    );

    let scores: Value =
        serde_json::from_slice(&std::fs::read(run.join("scores.json")).unwrap()).unwrap();
    for (model, told) in [("small", 0.8), ("large", 0.6)] {
        let row = scores["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == model)
            .unwrap();
        let (low, high) = (
            row["score"]["low"].as_f64().unwrap(),
            row["score"]["high"].as_f64().unwrap(),
        );
        assert!(
            low <= told && told <= high,
            "{model}: [{low}, {high}] misses {told}"
        );
        assert_eq!(row["counts"]["judged"], 600);
        assert_eq!(row["judge_model"], "judge");
    }

    // The report recomputes the same scores from the files alone.
    let written = std::fs::read(run.join("scores.json")).unwrap();
    let report = ws.run(&["experiment", "report", "run"]);
    assert_exit(&report, 0);
    assert_eq!(std::fs::read(run.join("scores.json")).unwrap(), written);
    assert_eq!(String::from_utf8_lossy(&report.stdout), stdout);

    // The HTML report: every model's interval and its runs drawn, the difference on an
    // axis around zero, as Chromium builds the page; it can never replace the record.
    let refused = ws.run(&["experiment", "report", "run", "--html", "run/scores.json"]);
    assert_exit(&refused, 2);
    let dataset = std::fs::read(ws.path("arith.jsonl")).unwrap();
    let refused = ws.run(&["experiment", "report", "run", "--html", "arith.jsonl"]);
    assert_exit(&refused, 2);
    assert_eq!(std::fs::read(ws.path("arith.jsonl")).unwrap(), dataset);
    assert_eq!(std::fs::read(run.join("scores.json")).unwrap(), written);
    let out_html = ws.run(&["experiment", "report", "run", "--html", "scores.html"]);
    assert_exit(&out_html, 0);
    let html = std::fs::read_to_string(ws.path("scores.html")).unwrap();
    assert_self_contained(&html);
    assert_no_key("scores.html", &html);
    let dom = rendered_dom(&ws.path("scores.html"));
    let chart = figure(&dom, "scores-1");
    assert_eq!(chart.matches("class=\"est\"").count(), 2, "{chart}");
    assert_eq!(chart.matches("class=\"run\"").count(), 6, "{chart}");
    for model in ["small", "large"] {
        let row = &scores["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == model)
            .unwrap()["score"];
        let shown = format!(
            "{:.1}% ({:.1}% – {:.1}%)",
            row["value"].as_f64().unwrap() * 100.0,
            row["low"].as_f64().unwrap() * 100.0,
            row["high"].as_f64().unwrap() * 100.0
        );
        assert!(chart.contains(&shown), "{model}: {shown} not in {chart}");
    }
    let differences = figure(&dom, "differences-1");
    assert!(
        differences.contains("small − large") && differences.contains("McNemar p ="),
        "{differences}"
    );

    for name in [
        "answers.jsonl",
        "judgements.jsonl",
        "errors.jsonl",
        "scores.json",
        "scores.md",
        "run.json",
    ] {
        assert_no_key(name, &std::fs::read_to_string(run.join(name)).unwrap());
    }
    assert_no_key("stdout", &stdout);
    assert_no_key("stderr", &String::from_utf8_lossy(&out.stderr));
}

#[test]
fn killed_mid_run_and_run_again_every_cell_is_answered_and_judged_once() {
    let mock = graded_mock(&["--latency-ms", "40", "--jitter-ms", "40"]);
    let ws = Workspace::new();
    let config = example(&ws, &mock);
    let args = [
        "experiment",
        "run",
        config.to_str().unwrap(),
        "--out",
        "run",
        "--concurrency",
        "8",
    ];
    let mut child = volley()
        .args(args)
        .current_dir(ws.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let run = ws.path("run");
    let started = Instant::now();
    // Kill once both stages have recorded work, well before the end.
    while read_jsonl(&run.join("judgements.jsonl")).len() < 40 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no judgement came"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let answered = read_jsonl(&run.join("answers.jsonl")).len();
    assert!(answered < 1200, "{answered}");

    // The rest at full speed: concurrency is no part of a cell's identity.
    let mut again = args;
    again[6] = "64";
    let out = ws.run(&again);
    assert_exit(&out, 0);
    let lines: Vec<Value> = ["answers.jsonl", "judgements.jsonl", "errors.jsonl"]
        .iter()
        .flat_map(|f| read_jsonl(&run.join(f)))
        .collect();
    let answers = once(&read_jsonl(&run.join("answers.jsonl")), "answers");
    assert_eq!(answers.len(), 1200);
    assert_eq!(
        once(&read_jsonl(&run.join("judgements.jsonl")), "judgements"),
        answers
    );

    // The mock was asked at most the attempts in flight at the kill more than the
    // ledger records: an attempt is in flight from its send until its line is on disk,
    // so at most one per cell in the pipeline (twice --concurrency 8), whether it is on
    // the wire (8 at most) or answered and queued for the writer.
    let recorded: u64 = lines
        .iter()
        .map(|l| l["volley"]["attempts"].as_u64().unwrap())
        .sum();
    let asked = mock.stats()["requests"].as_u64().unwrap();
    assert!(
        asked >= recorded && asked - recorded <= 16,
        "asked {asked}, recorded {recorded}: {}",
        explain(&out)
    );
}

#[test]
fn a_template_naming_a_missing_field_stops_before_any_request() {
    let mock = graded_mock(&[]);
    let ws = Workspace::new();
    let config = example(&ws, &mock);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("{{ question }}", "{{ questoin }}");
    std::fs::write(&config, text).unwrap();
    let out = ws.run(&[
        "experiment",
        "run",
        config.to_str().unwrap(),
        "--out",
        "run",
    ]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("arith.jsonl:1:") && stderr.contains("no field \"questoin\""),
        "{stderr}"
    );
    assert_eq!(mock.stats()["requests"], 0);
}

#[test]
fn the_files_experiment_section_sets_the_run_s_flags() {
    // A mock that refuses a third request in flight: only a run held to two at once
    // is never refused.
    let mock = graded_mock(&["--in-flight-budget", "3", "--latency-ms", "5"]);
    let ws = Workspace::new();
    let config = example(&ws, &mock);
    let rows: Vec<String> = std::fs::read_to_string(ws.path("arith.jsonl"))
        .unwrap()
        .lines()
        .take(20)
        .map(String::from)
        .collect();
    ws.write("arith.jsonl", &(rows.join("\n") + "\n"));
    let text = std::fs::read_to_string(&config).unwrap();
    let refusals = |mock: &MockProc| mock.stats()["by_status"]["402"].as_u64().unwrap_or(0);

    ws.write(
        "arith.toml",
        &format!("[experiment]\nconcurrency = 2\nquiet = true\n\n{text}"),
    );
    let out = ws.run(&["experiment", "run", "arith.toml", "--out", "narrow"]);
    assert_exit(&out, 0);
    // (Without the section, at the default concurrency, this mock refuses hundreds.)
    assert_eq!(refusals(&mock), 0, "{}", explain(&out));
    assert_eq!(read_jsonl(&ws.path("narrow/judgements.jsonl")).len(), 120);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("cells done"), "not quiet: {stderr}");

    // A key that is no flag is named at its line, with the flag it resembles.
    ws.write(
        "arith.toml",
        &format!("[experiment]\nconcurency = 2\n\n{text}"),
    );
    let out = ws.run(&["experiment", "run", "arith.toml", "--out", "typo"]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("arith.toml:2: experiment.concurency: unknown key: volley experiment run has no flag --concurency")
            && stderr.contains("did you mean concurrency?"),
        "{stderr}"
    );
}
