//! `scores.md`: the scores as a person reads them, one table per experiment × dataset
//! × judge, then the paired comparisons.

use std::fmt::Write;

use super::compute::Scores;
use super::view::{cost, failed, interval, latency, p_value, sections, signed, spread, value};

/// The scores as Markdown.
pub fn render(scores: &Scores) -> String {
    let mut out = String::from("# Scores\n");
    for section in sections(scores) {
        let pct = section.percent();
        let _ = write!(out, "\n## {} · {}", section.experiment, section.dataset);
        match section.judge {
            Some(j) => {
                let _ = writeln!(
                    out,
                    "\n\nJudged by `{}` ({} via {}, prompt `{}`, judge id `{}`).\n",
                    j.model, j.model_id, j.provider, j.prompt, j.id
                );
            }
            None => out.push_str("\n\nNot judged.\n\n"),
        }
        let _ = writeln!(
            out,
            "| model | {} | 95% CI | runs (min–max, sd) | judged | failed | unjudged | missing | tokens | cost | judge cost | latency p50 / p95 |",
            section.metric
        );
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &section.rows {
            let c = &r.counts;
            let (score, ci) = match &r.score {
                Some(e) => (value(e.value, pct), interval(e, pct)),
                None => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {score} | {ci} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.model,
                spread(r, pct),
                c.judged,
                failed(r),
                c.unjudged,
                c.missing,
                r.tokens.total,
                cost(r.cost_usd),
                cost(r.judge_cost_usd),
                latency(r),
            );
        }
        if !section.pairs.is_empty() {
            out.push_str("\nPaired differences (same items and runs):\n\n");
        }
        for p in &section.pairs {
            let _ = match &p.paired {
                None => writeln!(out, "- {} − {}: no cell judged for both", p.a, p.b),
                Some(d) => {
                    let mcnemar = d.mcnemar.as_ref().map_or(String::new(), |m| {
                        format!(
                            "; McNemar exact p = {} ({} right only: {}, {} right only: {})",
                            p_value(m.p_value),
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
                        signed(d.difference.value, pct),
                        signed(d.difference.low, pct),
                        signed(d.difference.high, pct),
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
