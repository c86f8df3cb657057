//! The scores of a run on a real `volley mock` against an independent computation in
//! Python (numpy + scipy): `tests/scores_reference.py` reads only the run directory's
//! `run.json` and `judgements.jsonl` and recomputes what `scores.json` says.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use volley_experiment::pipeline;
use volley_experiment::scores;

mod common;
use common::{engine, graded_mock, mock, options, plan};

/// Exact agreement, up to the rounding of sums taken in another order.
const EXACT: f64 = 1e-12;
/// Interval ends: the two sides resample with different RNGs (ChaCha8 and numpy's),
/// so they agree only up to Monte-Carlo noise (about 0.001 here).
const INTERVAL: f64 = 0.01;
/// McNemar's p-value, relative (statrs' incomplete beta against scipy's binomtest).
const P_RELATIVE: f64 = 1e-9;

fn python_ready() {
    let ok = Command::new("python3")
        .args(["-c", "import scipy, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with numpy and scipy is needed by this test: run scripts/test, which \
         installs them (or `python3 -m pip install numpy scipy`)"
    );
}

fn num(value: &Value, what: &str) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

fn exact(ours: &Value, python: &Value, what: &str) {
    let (o, p) = (num(ours, what), num(python, what));
    println!("{what}: ours {o} python {p}");
    assert!((o - p).abs() <= EXACT, "{what}: ours {o} vs python {p}");
}

fn interval(ours: &Value, python: &Value, what: &str) {
    exact(&ours["value"], &python["value"], &format!("{what}.value"));
    for end in ["low", "high"] {
        let (o, p) = (num(&ours[end], what), num(&python[end], what));
        println!("{what}.{end}: ours {o} python {p}");
        assert!(
            (o - p).abs() <= INTERVAL,
            "{what}.{end}: ours {o} vs python {p}"
        );
    }
}

fn run_python(dir: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scores_reference.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the reference prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_json_agrees_with_numpy_and_scipy_recomputing_from_the_judgements() {
    python_ready();
    let server = mock(graded_mock()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let end = pipeline::run(
        &engine(&server, 64),
        &[plan(dir.path(), 200, 3)],
        &options(&out),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(end.unfinished, 0, "{end:?}");
    scores::write(&out).unwrap();
    let ours: Value =
        serde_json::from_slice(&std::fs::read(out.join(scores::SCORES_JSON)).unwrap()).unwrap();

    // The reference sees only run.json and judgements.jsonl.
    let only = dir.path().join("reference");
    std::fs::create_dir(&only).unwrap();
    for name in ["run.json", "judgements.jsonl"] {
        std::fs::copy(out.join(name), only.join(name)).unwrap();
    }
    let python = run_python(&only);

    let results = ours["results"].as_array().unwrap();
    let theirs = python["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{ours}");
    assert_eq!(theirs.len(), results.len(), "{python}");
    for (row, reference) in results.iter().zip(theirs) {
        let model = row["model"].as_str().unwrap();
        for key in ["experiment", "dataset", "model", "judge"] {
            assert_eq!(row[key], reference[key], "{key}");
        }
        assert_eq!(row["counts"]["judged"], 600);
        assert_eq!(reference["judged"], 600);
        interval(
            &row["score"],
            &reference["score"],
            &format!("{model}.score"),
        );
        let (runs, their_runs) = (&row["runs"], &reference["runs"]);
        let per_run = runs["per_run"].as_array().unwrap();
        assert_eq!(per_run.len(), 3);
        assert_eq!(their_runs["per_run"].as_array().unwrap().len(), 3);
        for (r, mean) in per_run.iter().enumerate() {
            exact(
                mean,
                &their_runs["per_run"][r],
                &format!("{model}.runs.per_run[{r}]"),
            );
        }
        for key in ["min", "max", "std_dev"] {
            exact(&runs[key], &their_runs[key], &format!("{model}.runs.{key}"));
        }
    }

    let comparisons = ours["comparisons"].as_array().unwrap();
    let theirs = python["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 1, "{ours}");
    assert_eq!(theirs.len(), 1, "{python}");
    let (pair, reference) = (&comparisons[0], &theirs[0]);
    for key in ["experiment", "dataset", "judge", "a", "b"] {
        assert_eq!(pair[key], reference[key], "{key}");
    }
    let paired = &pair["paired"];
    assert_eq!(paired["n_pairs"], 600);
    assert_eq!(reference["n_pairs"], 600);
    interval(
        &paired["difference"],
        &reference["difference"],
        "small-large.difference",
    );
    let (mc, their_mc) = (&paired["mcnemar"], &reference["mcnemar"]);
    println!(
        "small-large.mcnemar: ours a_only {} b_only {} p {} python a_only {} b_only {} p {}",
        mc["a_only"],
        mc["b_only"],
        mc["p_value"],
        their_mc["a_only"],
        their_mc["b_only"],
        their_mc["p_value"]
    );
    assert_eq!(mc["a_only"], their_mc["a_only"]);
    assert_eq!(mc["b_only"], their_mc["b_only"]);
    let (p, their_p) = (
        num(&mc["p_value"], "p_value"),
        num(&their_mc["p_value"], "p_value"),
    );
    assert!(their_p > 0.0, "{their_mc}");
    assert!(
        ((p - their_p) / their_p).abs() <= P_RELATIVE,
        "McNemar p: ours {p} vs scipy {their_p}"
    );
}
