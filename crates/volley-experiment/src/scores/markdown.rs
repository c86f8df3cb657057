//! `scores.md`: the scores as a person reads them, one table per experiment × dataset
//! × judge, then the paired comparisons.

use std::fmt::Write;

use super::compute::{Comparison, ScoreRow, Scores};
use super::stats::Estimate;

/// The scores as Markdown.
pub fn render(scores: &Scores) -> String {
    let mut out = String::from("# Scores\n");
    let mut sections: Vec<(&str, &str, Option<&str>)> = Vec::new();
    for row in &scores.results {
        let key = (
            row.experiment.as_str(),
            row.dataset.as_str(),
            row.judge.as_deref(),
        );
        if !sections.contains(&key) {
            sections.push(key);
        }
    }
    for (experiment, dataset, judge) in sections {
        let rows: Vec<&ScoreRow> = scores
            .results
            .iter()
            .filter(|r| {
                (
                    r.experiment.as_str(),
                    r.dataset.as_str(),
                    r.judge.as_deref(),
                ) == (experiment, dataset, judge)
            })
            .collect();
        let _ = write!(out, "\n## {experiment} · {dataset}");
        match judge.and_then(|id| scores.judges.iter().find(|j| j.id == id)) {
            Some(j) => {
                let _ = writeln!(
                    out,
                    "\n\nJudged by `{}` ({} via {}, prompt `{}`, judge id `{}`).\n",
                    j.model, j.model_id, j.provider, j.prompt, j.id
                );
            }
            None => out.push_str("\n\nNot judged.\n\n"),
        }
        let metric = rows.first().and_then(|r| r.metric).unwrap_or("score");
        let pct = metric == "accuracy";
        let _ = writeln!(
            out,
            "| model | {metric} | 95% CI | runs (min–max, sd) | judged | failed | unjudged | missing | tokens | cost | judge cost | latency p50 / p95 |"
        );
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in rows {
            let c = &r.counts;
            let (value, ci) = match &r.score {
                Some(e) => (fmt_value(e.value, pct), fmt_ci(e, pct)),
                None => ("–".into(), "–".into()),
            };
            let runs = r.runs.as_ref().map_or("–".into(), |s| {
                format!(
                    "{}–{}, {}",
                    fmt_value(s.min, pct),
                    fmt_value(s.max, pct),
                    fmt_value(s.std_dev, pct)
                )
            });
            let failed = c.answer_failed + c.postprocess_failed + c.judge_failed;
            let latency = r
                .latency_ms
                .as_ref()
                .map_or("–".into(), |l| format!("{:.0} / {:.0} ms", l.p50, l.p95));
            let _ = writeln!(
                out,
                "| {} | {value} | {ci} | {runs} | {} | {failed} | {} | {} | {} | {} | {} | {latency} |",
                r.model,
                c.judged,
                c.unjudged,
                c.missing,
                r.tokens.total,
                fmt_cost(r.cost_usd),
                fmt_cost(r.judge_cost_usd),
            );
        }
        let pairs: Vec<&Comparison> = scores
            .comparisons
            .iter()
            .filter(|p| {
                (
                    p.experiment.as_str(),
                    p.dataset.as_str(),
                    Some(p.judge.as_str()),
                ) == (experiment, dataset, judge)
            })
            .collect();
        if !pairs.is_empty() {
            out.push_str("\nPaired differences (same items and runs):\n\n");
        }
        for p in pairs {
            let _ = match &p.paired {
                None => writeln!(out, "- {} − {}: no cell judged for both", p.a, p.b),
                Some(d) => {
                    let mcnemar = d.mcnemar.as_ref().map_or(String::new(), |m| {
                        format!(
                            "; McNemar exact p = {} ({} right only: {}, {} right only: {})",
                            fmt_p(m.p_value),
                            p.a,
                            m.a_only,
                            p.b,
                            m.b_only
                        )
                    });
                    writeln!(
                        out,
                        "- {} − {}: {} (95% CI {} to {}) over {} pairs{mcnemar}",
                        p.a,
                        p.b,
                        fmt_signed(d.difference.value, pct),
                        fmt_signed(d.difference.low, pct),
                        fmt_signed(d.difference.high, pct),
                        d.n_pairs
                    )
                }
            };
        }
    }
    let _ = writeln!(
        out,
        "\nIntervals: percentile bootstrap, {} resamples over items (runs clustered by item), seeded.",
        scores.bootstrap.resamples
    );
    out
}

fn fmt_value(v: f64, pct: bool) -> String {
    if pct {
        format!("{:.1}%", v * 100.0)
    } else {
        format!("{v:.3}")
    }
}

fn fmt_signed(v: f64, pct: bool) -> String {
    if pct {
        format!("{:+.1} pts", v * 100.0)
    } else {
        format!("{v:+.3}")
    }
}

fn fmt_ci(e: &Estimate, pct: bool) -> String {
    format!("{} – {}", fmt_value(e.low, pct), fmt_value(e.high, pct))
}

fn fmt_cost(cost: Option<f64>) -> String {
    cost.map_or("unknown".into(), |c| format!("${c:.4}"))
}

fn fmt_p(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}
