//! The experiment pipeline end to end as a library: datasets × models × runs on one
//! engine against a real `volley mock` on a loopback port, told each model's accuracy
//! and acting as the judge.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use volley_experiment::pipeline::{self, RunOptions};
use volley_experiment::plan::PostprocessSpec;
use volley_experiment::scores;
use volley_mock::MockConfig;

mod common;
use common::{engine, graded_mock, judge, lines, mock, options, plan};

/// (item, model, run) of every line of `file`, asserting none repeats.
fn cells_once(path: &Path) -> HashSet<(String, String, u64)> {
    let mut seen = HashSet::new();
    for line in lines(path) {
        let cell = (
            line["item"].as_str().unwrap().to_owned(),
            line["model"].as_str().unwrap().to_owned(),
            line["run"].as_u64().unwrap(),
        );
        assert!(
            seen.insert(cell.clone()),
            "{} holds {cell:?} twice",
            path.display()
        );
    }
    seen
}

fn tokens_of(lines: &[Value]) -> u64 {
    lines
        .iter()
        .map(|l| l["volley"]["usage"]["total_tokens"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_three_runs_and_a_judge_score_what_the_mock_was_told() {
    let server = mock(graded_mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("run");
    let experiment = plan(dir.path(), 200, 3);
    let end = pipeline::run(
        &engine(&server, 64),
        &[experiment],
        &options(&out),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(end.unfinished, 0, "{end:?}");
    assert!(end.stopped.is_empty(), "{end:?}");

    let answers = cells_once(&out.join("answers.jsonl"));
    let judged = cells_once(&out.join("judgements.jsonl"));
    assert_eq!(answers.len(), 1200);
    assert_eq!(judged, answers);
    assert!(lines(&out.join("errors.jsonl")).is_empty());

    let scores = scores::write(&out).unwrap();
    let by_model: BTreeMap<&str, &scores::compute::ScoreRow> = scores
        .results
        .iter()
        .map(|r| (r.model.as_str(), r))
        .collect();
    for (name, told) in [("small", 0.8), ("large", 0.6)] {
        let row = by_model[name];
        let score = row.score.unwrap();
        assert!(
            score.low <= told && told <= score.high,
            "{name}: {score:?} vs {told}"
        );
        assert!(score.high - score.low < 0.2, "{name}: {score:?}");
        assert_eq!(row.counts.judged, 600);
        assert_eq!((row.counts.unjudged, row.counts.missing), (0, 0));
        assert!(row.judge_tokens.total > 0 && row.tokens.total > 0);
        assert_eq!(row.runs.as_ref().unwrap().per_run.len(), 3);
    }
    let pair = scores.comparisons[0].paired.as_ref().unwrap();
    assert_eq!(pair.n_pairs, 600);
    assert!(pair.mcnemar.as_ref().unwrap().p_value < 0.01, "{pair:?}");

    // The ledger equals the mock's bill on an uninterrupted run, answers and judge apart.
    let stats = server.stats();
    let billed = stats["tokens_billed"]["total"].as_u64().unwrap();
    let ours = tokens_of(&lines(&out.join("answers.jsonl")))
        + tokens_of(&lines(&out.join("judgements.jsonl")));
    assert_eq!(ours, billed);
    let judge_billed = stats["by_model"]["judge"]["tokens_billed"]["total"]
        .as_u64()
        .unwrap();
    assert_eq!(
        tokens_of(&lines(&out.join("judgements.jsonl"))),
        judge_billed
    );

    // A second run does nothing: everything is recorded.
    let before = server.stats()["requests"].as_u64().unwrap();
    let end = pipeline::run(
        &engine(&server, 64),
        &[plan(dir.path(), 200, 3)],
        &options(&out),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(end.unfinished, 0);
    assert_eq!(server.stats()["requests"].as_u64().unwrap(), before);

    // The report recomputes exactly what was written.
    let written = std::fs::read(out.join("scores.json")).unwrap();
    scores::write(&out).unwrap();
    assert_eq!(std::fs::read(out.join("scores.json")).unwrap(), written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_in_both_stages_then_resumed_exactly_once() {
    let server = mock(MockConfig {
        latency_ms: 20,
        jitter_ms: 20,
        ..graded_mock()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let cancel = CancellationToken::new();
    let stopper = {
        let (cancel, out) = (cancel.clone(), out.clone());
        tokio::spawn(async move {
            // Stop once both stages have recorded something.
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if lines(&out.join("judgements.jsonl")).len() >= 20 {
                    cancel.cancel();
                    return;
                }
            }
        })
    };
    let end = pipeline::run(
        &engine(&server, 16),
        &[plan(dir.path(), 100, 2)],
        &options(&out),
        &cancel,
    )
    .await
    .unwrap();
    stopper.await.unwrap();
    assert!(end.unfinished > 0, "{end:?}");
    let answered_first = cells_once(&out.join("answers.jsonl")).len();
    assert!(answered_first < 400, "{answered_first}");

    let judged_first = cells_once(&out.join("judgements.jsonl")).len();
    let again = options(&out);
    let end = pipeline::run(
        &engine(&server, 16),
        &[plan(dir.path(), 100, 2)],
        &again,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(end.unfinished, 0, "{end:?}");
    let answers = cells_once(&out.join("answers.jsonl"));
    assert_eq!(answers.len(), 400);
    // Progress tells the cells the first run finished from this run's: a pace (the
    // ETA) counts only the latter.
    let progress = again.progress.read();
    assert_eq!((progress.cells, progress.done), (400, 400));
    assert_eq!(progress.resumed, judged_first as u64, "{progress:?}");
    assert_eq!(progress.done_now(), 400 - judged_first as u64);
    assert_eq!(cells_once(&out.join("judgements.jsonl")), answers);
    // Answers are asked once each: the mock saw each answer request once.
    let stats = server.stats();
    let asked: u64 = ["small", "large"]
        .iter()
        .map(|m| stats["by_model"][m]["requests"].as_u64().unwrap())
        .sum();
    // Cancelled requests in flight may have reached the mock without being recorded.
    assert!((400..=400 + 2 * 16 * 2).contains(&asked), "{asked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejudging_grades_existing_answers_beside_the_old_judgements() {
    let server = mock(graded_mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    pipeline::run(
        &engine(&server, 32),
        &[plan(dir.path(), 30, 2)],
        &options(&out),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let answers_asked = |s: &Value| -> u64 {
        ["small", "large"]
            .iter()
            .map(|m| s["by_model"][m]["requests"].as_u64().unwrap_or(0))
            .sum()
    };
    let before = answers_asked(&server.stats());

    let mut again = plan(dir.path(), 30, 2);
    again.judge = Some(judge("judge-2"));
    let rejudge = RunOptions {
        ask: false,
        ..options(&out)
    };
    let end = pipeline::run(
        &engine(&server, 32),
        &[again],
        &rejudge,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(end.unfinished, 0);
    assert_eq!(
        answers_asked(&server.stats()),
        before,
        "no answer is asked again"
    );
    let judgements = lines(&out.join("judgements.jsonl"));
    assert_eq!(judgements.len(), 240);
    let judges: HashSet<&str> = judgements
        .iter()
        .map(|j| j["judge_model"].as_str().unwrap())
        .collect();
    assert_eq!(judges, HashSet::from(["judge", "judge-2"]));

    let scores = scores::write(&out).unwrap();
    assert_eq!(scores.judges.len(), 2);
    let graded_by: HashSet<&str> = scores
        .results
        .iter()
        .filter_map(|r| r.judge_model.as_deref())
        .collect();
    assert_eq!(graded_by, HashSet::from(["judge", "judge-2"]));
    let md = std::fs::read_to_string(out.join("scores.md")).unwrap();
    assert!(md.contains("Judged by `judge-2`"), "{md}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postprocess_that_hangs_or_crashes_is_recorded_and_the_run_goes_on() {
    let server = mock(graded_mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut experiment = plan(dir.path(), 12, 1);
    // q1x hangs, q2x crashes, the rest pass the answer through.
    let script = r#"input=$(cat); case "$input" in *'"item":"q1'*) sleep 30;; *'"item":"q2'*) echo crashed >&2; exit 4;; esac; printf '%s' "$input""#;
    experiment.postprocess = Some(PostprocessSpec {
        command: vec!["sh".into(), "-c".into(), script.into()],
        timeout: Duration::from_millis(500),
        workers: 4,
    });
    let mut grade = judge("judge");
    grade.prompt.user = "Output: {{ output.answer }}".into();
    experiment.judge = Some(grade);
    let end = pipeline::run(
        &engine(&server, 16),
        &[experiment],
        &options(&out),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(end.unfinished, 0, "{end:?}");
    let errors = lines(&out.join("errors.jsonl"));
    let codes: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| {
            (
                e["item"].as_str().unwrap(),
                e["error"]["code"].as_str().unwrap(),
            )
        })
        .collect();
    // q1, q10, q11 hang; q2 crashes; for each of the two models.
    assert_eq!(
        codes
            .iter()
            .filter(|(_, c)| *c == "postprocess_timeout")
            .count(),
        6,
        "{codes:?}"
    );
    assert_eq!(
        codes
            .iter()
            .filter(|(_, c)| *c == "postprocess_failed")
            .count(),
        2,
        "{codes:?}"
    );
    assert_eq!(lines(&out.join("postprocessed.jsonl")).len(), 24 - 8);
    assert_eq!(lines(&out.join("judgements.jsonl")).len(), 24 - 8);
    let scores = scores::write(&out).unwrap();
    assert!(
        scores
            .results
            .iter()
            .all(|r| r.counts.postprocess_failed == 4)
    );
}

#[test]
fn a_missing_field_stops_the_run_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut experiment = plan(dir.path(), 3, 1);
    experiment.prompt.user = "{{ questoin }}".into();
    let err = pipeline::validate(&[experiment]).unwrap_err().to_string();
    assert!(
        err.contains("arith.jsonl:1:") && err.contains("no field \"questoin\""),
        "{err}"
    );

    // A judge's `output` is the postprocess command's: without one, it is missing too.
    let mut experiment = plan(dir.path(), 3, 1);
    if let Some(judge) = experiment.judge.as_mut() {
        judge.prompt.user = "{{ output.verdict }} {{ row.question }}".into();
    }
    let err = pipeline::validate(&[experiment]).unwrap_err().to_string();
    assert!(err.contains("no field \"output.verdict\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_in_the_same_directory_is_refused_while_one_runs() {
    let server = mock(MockConfig {
        latency_ms: 50,
        ..graded_mock()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let first = {
        let (engine, plan, options) = (engine(&server, 4), plan(dir.path(), 40, 1), options(&out));
        tokio::spawn(async move {
            pipeline::run(&engine, &[plan], &options, &CancellationToken::new()).await
        })
    };
    // Wait until the first has started writing.
    while lines(&out.join("answers.jsonl")).is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = pipeline::run(
        &engine(&server, 4),
        &[plan(dir.path(), 40, 1)],
        &options(&out),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(second.contains("another volley run"), "{second}");
    let end = first.await.unwrap().unwrap();
    assert_eq!(end.unfinished, 0);
    assert_eq!(lines(&out.join("answers.jsonl")).len(), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_judge_reply_without_a_verdict_is_retried_and_its_tokens_counted() {
    let server = mock(MockConfig {
        judge_invalid_rate: 0.25,
        ..graded_mock()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let end = pipeline::run(
        &engine(&server, 16),
        &[plan(dir.path(), 20, 1)],
        &options(&out),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(end.unfinished, 0, "{end:?}");
    let judgements = lines(&out.join("judgements.jsonl"));
    let judge_errors: Vec<Value> = lines(&out.join("errors.jsonl"))
        .into_iter()
        .filter(|e| e["stage"] == "judge")
        .collect();
    // Every answer ends graded or failed for good; a retried one says so.
    assert_eq!(judgements.len() + judge_errors.len(), 40);
    let retried = judgements
        .iter()
        .filter(|j| j["volley"]["attempts"].as_u64().unwrap() > 1)
        .count();
    assert!(retried > 0, "no judge reply was retried");
    assert!(judgements.iter().all(|j| j["value"].is_number()));
    // The invalid replies' tokens are in the ledger: it equals the judge's bill.
    let billed = server.stats()["by_model"]["judge"]["tokens_billed"]["total"]
        .as_u64()
        .unwrap();
    assert_eq!(tokens_of(&judgements) + tokens_of(&judge_errors), billed);
    let scores = scores::write(&out).unwrap();
    let judge_tokens: u64 = scores.results.iter().map(|r| r.judge_tokens.total).sum();
    assert_eq!(
        judge_tokens, billed,
        "the judge's tokens are reported apart, all of them"
    );
}
