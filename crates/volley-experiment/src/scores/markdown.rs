//! `scores.md`: the scores as a person reads them, one table per experiment × dataset
//! × judge, then the paired comparisons.

use std::fmt::Write;

use super::compute::Scores;
use super::view::{cells, headers, p_value, sections, signed};

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
        let headers = headers(section.metric);
        let _ = writeln!(out, "| {} |", headers.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
        for r in &section.rows {
            let _ = writeln!(out, "| {} |", cells(r, pct).join(" | "));
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
