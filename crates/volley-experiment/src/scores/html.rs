//! `volley experiment report --html`: the scores as one self-contained page, drawn by
//! the charts every volley page shares. Per section, each model's score with its
//! interval and its runs as marks, the table of `scores.md`, and the paired
//! differences on an axis around zero.

use std::fmt::Write;

use volley_charts::{Interval, Scale, escape, intervals, page};

use super::compute::Scores;
use super::view::{Section, cells, headers, interval, p_value, sections, signed, value};

/// The page for `scores`, titled `title`.
pub fn render(scores: &Scores, title: &str) -> String {
    let mut body = String::new();
    let all = sections(scores);
    if all.is_empty() {
        body.push_str("<p class=\"empty\">No experiment has a cell in this run yet.</p>");
    }
    for (i, section) in all.iter().enumerate() {
        render_section(&mut body, i + 1, section);
    }
    let _ = write!(
        body,
        "<p class=\"muted\">Intervals: 95%, percentile bootstrap, {} resamples over items \
         (runs clustered by item), seeded. Open circles on a model's row are its single runs.</p>",
        scores.bootstrap.resamples
    );
    page(title, &body)
}

fn render_section(body: &mut String, n: usize, section: &Section<'_>) {
    let pct = section.percent();
    let _ = write!(
        body,
        "<section id=\"section-{n}\"><h2>{} · {}</h2>",
        escape(section.experiment),
        escape(section.dataset)
    );
    let _ = match section.judge {
        Some(j) => write!(
            body,
            "<p>Judged by <code>{}</code> ({} via {}, prompt <code>{}</code>, judge id <code>{}</code>).</p>",
            escape(&j.model),
            escape(&j.model_id),
            escape(&j.provider),
            escape(&j.prompt),
            escape(&j.id)
        ),
        None => write!(body, "<p class=\"muted\">Not judged.</p>"),
    };
    let scored: Vec<Interval> = section
        .rows
        .iter()
        .filter_map(|r| {
            let e = r.score.as_ref()?;
            Some(Interval {
                label: r.model.clone(),
                value: e.value,
                low: e.low,
                high: e.high,
                marks: r
                    .runs
                    .as_ref()
                    .map(|s| s.per_run.iter().flatten().copied().collect())
                    .unwrap_or_default(),
                shown: format!("{} ({})", value(e.value, pct), interval(e, pct)),
            })
        })
        .collect();
    if section.judge.is_some() || !scored.is_empty() {
        let scale = if pct {
            Scale::unit(true)
        } else {
            Scale::fit(&scored, false)
        };
        body.push_str(&intervals(
            &format!("scores-{n}"),
            &format!("{} per model, with its 95% interval", section.metric),
            &scored,
            scale,
        ));
    }
    // Every column but the model's is a number, right-aligned.
    let _ = write!(
        body,
        "<div class=\"wide\"><table class=\"grid\" id=\"table-{n}\"><tr>"
    );
    for (i, h) in headers(section.metric).iter().enumerate() {
        let class = if i == 0 { "" } else { " class=\"n\"" };
        let _ = write!(body, "<th{class}>{}</th>", escape(h));
    }
    body.push_str("</tr>");
    for r in &section.rows {
        body.push_str("<tr>");
        for (i, cell) in cells(r, pct).iter().enumerate() {
            let class = if i == 0 { "" } else { " class=\"n\"" };
            let _ = write!(body, "<td{class}>{}</td>", escape(cell));
        }
        body.push_str("</tr>");
    }
    body.push_str("</table></div>");
    let differences: Vec<Interval> = section
        .pairs
        .iter()
        .filter_map(|p| {
            let d = p.paired.as_ref()?;
            let test = d.mcnemar.as_ref().map_or(String::new(), |m| {
                format!(", McNemar p = {}", p_value(m.p_value))
            });
            Some(Interval {
                label: format!("{} − {}", p.a, p.b),
                value: d.difference.value,
                low: d.difference.low,
                high: d.difference.high,
                marks: Vec::new(),
                shown: format!(
                    "{} over {} pairs{test}",
                    signed(d.difference.value, pct),
                    d.n_pairs
                ),
            })
        })
        .collect();
    if !section.pairs.is_empty() {
        body.push_str(&intervals(
            &format!("differences-{n}"),
            "Paired differences on the same items and runs, with their 95% intervals",
            &differences,
            Scale::fit(&differences, pct),
        ));
        let unpaired: Vec<String> = section
            .pairs
            .iter()
            .filter(|p| p.paired.is_none())
            .map(|p| format!("{} − {}", escape(&p.a), escape(&p.b)))
            .collect();
        if !unpaired.is_empty() {
            let _ = write!(
                body,
                "<p class=\"muted\">No cell judged for both: {}.</p>",
                unpaired.join(", ")
            );
        }
    }
    body.push_str("</section>");
}
