//! What `scores.md` and the HTML report both show: the scores grouped as a person reads
//! them (one section per experiment × dataset × judge, with the pairs compared in it),
//! and the numbers written the same way in both.

use super::compute::{Comparison, ScoreRow, Scores};
use super::stats::Estimate;
use crate::run_info::JudgeInfo;

/// One experiment × dataset × judge: its models' scores and their paired comparisons.
pub struct Section<'a> {
    pub experiment: &'a str,
    pub dataset: &'a str,
    /// `None` when nothing was judged.
    pub judge: Option<&'a JudgeInfo>,
    pub rows: Vec<&'a ScoreRow>,
    pub pairs: Vec<&'a Comparison>,
    /// `accuracy` or `mean_score` (`score` before anything is judged).
    pub metric: &'static str,
}

impl Section<'_> {
    /// Accuracies are shown as percentages, mean scores as they are.
    pub fn percent(&self) -> bool {
        self.metric == "accuracy"
    }
}

/// The sections of `scores`, in the order their rows come.
pub fn sections(scores: &Scores) -> Vec<Section<'_>> {
    let mut keys: Vec<(&str, &str, Option<&str>)> = Vec::new();
    for row in &scores.results {
        let key = (
            row.experiment.as_str(),
            row.dataset.as_str(),
            row.judge.as_deref(),
        );
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(experiment, dataset, judge_id)| {
            let rows: Vec<&ScoreRow> = scores
                .results
                .iter()
                .filter(|r| {
                    (
                        r.experiment.as_str(),
                        r.dataset.as_str(),
                        r.judge.as_deref(),
                    ) == (experiment, dataset, judge_id)
                })
                .collect();
            let pairs = scores
                .comparisons
                .iter()
                .filter(|p| {
                    (
                        p.experiment.as_str(),
                        p.dataset.as_str(),
                        Some(p.judge.as_str()),
                    ) == (experiment, dataset, judge_id)
                })
                .collect();
            Section {
                experiment,
                dataset,
                judge: judge_id.and_then(|id| scores.judges.iter().find(|j| j.id == id)),
                metric: rows.first().and_then(|r| r.metric).unwrap_or("score"),
                rows,
                pairs,
            }
        })
        .collect()
}

/// The headers of a section's table, the metric's name second.
pub fn headers(metric: &str) -> [&str; 12] {
    [
        "model",
        metric,
        "95% CI",
        "runs (min–max, sd)",
        "judged",
        "failed",
        "unjudged",
        "missing",
        "tokens",
        "cost",
        "judge cost",
        "latency p50 / p95",
    ]
}

/// A model's row of its section's table, under [`headers`].
pub fn cells(row: &ScoreRow, pct: bool) -> [String; 12] {
    let (score, ci) = match &row.score {
        Some(e) => (value(e.value, pct), interval(e, pct)),
        None => ("–".into(), "–".into()),
    };
    let c = &row.counts;
    [
        row.model.clone(),
        score,
        ci,
        spread(row, pct),
        c.judged.to_string(),
        failed(row).to_string(),
        c.unjudged.to_string(),
        c.missing.to_string(),
        row.tokens.total.to_string(),
        cost(row.cost_usd),
        cost(row.judge_cost_usd),
        latency(row),
    ]
}

/// An accuracy as a percentage, a mean score as it is.
pub fn value(v: f64, pct: bool) -> String {
    if pct {
        format!("{:.1}%", v * 100.0)
    } else {
        format!("{v:.3}")
    }
}

/// A difference, signed: percentage points for accuracies.
pub fn signed(v: f64, pct: bool) -> String {
    if pct {
        format!("{:+.1} pts", v * 100.0)
    } else {
        format!("{v:+.3}")
    }
}

pub fn interval(e: &Estimate, pct: bool) -> String {
    format!("{} – {}", value(e.low, pct), value(e.high, pct))
}

fn cost(cost: Option<f64>) -> String {
    cost.map_or("unknown".into(), |c| format!("${c:.4}"))
}

/// A p-value: four decimals, or scientific below 0.0001.
pub fn p_value(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// A model's spread across runs: `min–max, sd`.
fn spread(row: &ScoreRow, pct: bool) -> String {
    row.runs.as_ref().map_or("–".into(), |s| {
        format!(
            "{}–{}, {}",
            value(s.min, pct),
            value(s.max, pct),
            value(s.std_dev, pct)
        )
    })
}

/// Every cell that failed at some stage.
fn failed(row: &ScoreRow) -> u64 {
    let c = &row.counts;
    c.answer_failed + c.postprocess_failed + c.judge_failed
}

/// p50 / p95 of the answers' latency.
fn latency(row: &ScoreRow) -> String {
    row.latency_ms
        .as_ref()
        .map_or("–".into(), |l| format!("{:.0} / {:.0} ms", l.p50, l.p95))
}
