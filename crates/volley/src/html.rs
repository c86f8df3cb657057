//! `volley report --html`: one self-contained page (inline SVG, no scripts, nothing
//! fetched) with the plots a person would rather look at than read.

use std::fmt::Write;

use volley_core::report::{Finished, Report};

use crate::summary::usd;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 240.0;
const MARGIN: f64 = 48.0;
/// Bins of the latency histogram.
const LATENCY_BINS: usize = 24;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bar chart of labelled values; `None` when there is nothing to plot.
fn bars(id: &str, title: &str, items: &[(String, f64, String)]) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure id=\"{id}\"><figcaption>{}</figcaption>",
        escape(title)
    );
    if items.is_empty() {
        svg.push_str("<p class=\"empty\">nothing to show</p></figure>");
        return svg;
    }
    let max = items
        .iter()
        .map(|(_, v, _)| *v)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let row = 26.0;
    let height = MARGIN + row * items.len() as f64;
    let label_width = 220.0;
    let span = WIDTH - label_width - 120.0;
    let _ = write!(
        svg,
        "<svg class=\"plot\" viewBox=\"0 0 {WIDTH} {height}\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\">"
    );
    for (i, (label, value, shown)) in items.iter().enumerate() {
        let y = 16.0 + row * i as f64;
        let w = (value / max * span).max(1.0);
        let _ = write!(
            svg,
            "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text><rect class=\"bar\" x=\"{label_width}\" y=\"{:.0}\" width=\"{w:.1}\" height=\"18\"/><text x=\"{:.1}\" y=\"{:.0}\">{}</text>",
            label_width - 8.0,
            y + 13.0,
            escape(label),
            y,
            label_width + w + 6.0,
            y + 13.0,
            escape(shown)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// A line through `(x, y)` points with labelled axes.
fn line(id: &str, title: &str, points: &[(f64, f64)], x_label: &str, y_label: &str) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<figure id=\"{id}\"><figcaption>{}</figcaption>",
        escape(title)
    );
    if points.len() < 2 {
        svg.push_str("<p class=\"empty\">not enough data to plot</p></figure>");
        return svg;
    }
    let max_x = points
        .iter()
        .map(|p| p.0)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let max_y = points
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let sx = |x: f64| MARGIN + x / max_x * (WIDTH - 2.0 * MARGIN);
    let sy = |y: f64| HEIGHT - MARGIN + 8.0 - y / max_y * (HEIGHT - 1.5 * MARGIN);
    let path: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
        .collect();
    let _ = write!(
        svg,
        "<svg class=\"plot\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\">\
         <line class=\"axis\" x1=\"{MARGIN}\" y1=\"{b:.0}\" x2=\"{r:.0}\" y2=\"{b:.0}\"/>\
         <line class=\"axis\" x1=\"{MARGIN}\" y1=\"16\" x2=\"{MARGIN}\" y2=\"{b:.0}\"/>\
         <polyline class=\"line\" points=\"{}\"/>\
         <text x=\"{MARGIN}\" y=\"{:.0}\">0</text><text x=\"{r:.0}\" y=\"{:.0}\" text-anchor=\"end\">{:.1} {}</text>\
         <text x=\"{:.0}\" y=\"24\" text-anchor=\"end\">{:.0} {}</text></svg></figure>",
        path.join(" "),
        HEIGHT - MARGIN + 24.0,
        HEIGHT - MARGIN + 24.0,
        max_x,
        escape(x_label),
        MARGIN - 4.0,
        max_y,
        escape(y_label),
        b = HEIGHT - MARGIN + 8.0,
        r = WIDTH - MARGIN,
    );
    svg
}

/// Latency histogram bins over `[0, p99 × 1.2]`; slower requests fall in the last bin.
fn latency_bins(finished: &[Finished], p99: f64) -> Vec<(String, f64, String)> {
    let values: Vec<f64> = finished
        .iter()
        .filter(|f| f.attempts > 0)
        .map(|f| f.latency_ms)
        .collect();
    if values.is_empty() {
        return Vec::new();
    }
    let top = (p99 * 1.2).max(1.0);
    let width = top / LATENCY_BINS as f64;
    let mut counts = [0u64; LATENCY_BINS];
    for v in values {
        counts[((v / width) as usize).min(LATENCY_BINS - 1)] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let label = format!("{:.0}–{:.0} ms", i as f64 * width, (i + 1) as f64 * width);
            (label, *n as f64, n.to_string())
        })
        .collect()
}

/// The page.
pub fn render(report: &Report, finished: &[Finished], title: &str) -> String {
    let start = finished
        .iter()
        .filter(|f| f.finished_at > 0.0)
        .map(|f| f.finished_at - f.latency_ms / 1000.0)
        .fold(f64::INFINITY, f64::min);
    let mut done = 0.0;
    let mut over_time = vec![(0.0, 0.0)];
    for f in finished
        .iter()
        .filter(|f| f.finished_at > 0.0 && f.attempts > 0)
    {
        done += 1.0;
        over_time.push(((f.finished_at - start).max(0.0), done));
    }
    let attempts: Vec<(String, f64, String)> = report
        .attempts_histogram
        .iter()
        .map(|(a, n)| {
            (
                format!("{a} attempt{}", if *a == 1 { "" } else { "s" }),
                *n as f64,
                n.to_string(),
            )
        })
        .collect();
    let tokens: Vec<(String, f64, String)> = report
        .models
        .iter()
        .map(|(m, s)| {
            (
                m.clone(),
                s.usage.total_tokens as f64,
                format!("{} tokens · {}", s.usage.total_tokens, usd(s.usage.cost)),
            )
        })
        .collect();
    let costs: Vec<(String, f64, String)> = report
        .models
        .iter()
        .filter_map(|(m, s)| s.usage.cost.map(|c| (m.clone(), c, usd(Some(c)))))
        .collect();
    let errors: Vec<(String, f64, String)> = report
        .errors_by_code
        .iter()
        .map(|(code, n)| (code.clone(), *n as f64, n.to_string()))
        .collect();
    let c = &report.requests;
    let l = &report.latency_ms;
    let u = &report.usage;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px;color:#1d2330;max-width:760px}}\
         h1{{font-size:20px}} figure{{margin:24px 0}} figcaption{{font-weight:600;margin-bottom:6px}}\
         table{{border-collapse:collapse}} td,th{{padding:3px 12px 3px 0;text-align:left}}\
         .bar{{fill:#3b6fd8}} .line{{fill:none;stroke:#3b6fd8;stroke-width:2}} .axis{{stroke:#8a93a6}}\
         svg text{{font-size:12px;fill:#1d2330}} .empty{{color:#8a93a6}}\
         </style></head><body><h1>{t}</h1><table>\
         <tr><th>requests</th><td>{} succeeded · {} failed · {} invalid input · {} not finished</td></tr>\
         <tr><th>wall time</th><td>{:.1} s · {:.1} requests/s</td></tr>\
         <tr><th>attempts</th><td>{} ({} retries, {} answered 429)</td></tr>\
         <tr><th>latency</th><td>p50 {:.0} ms · p95 {:.0} ms · p99 {:.0} ms · max {:.0} ms</td></tr>\
         <tr><th>tokens</th><td>{} prompt · {} completion · {} total</td></tr>\
         <tr><th>cost</th><td>{}</td></tr></table>",
        c.succeeded,
        c.failed,
        c.invalid_input,
        c.not_finished,
        report.wall_seconds,
        report.throughput_per_second,
        report.attempts,
        report.retries,
        report.rate_limited,
        l.p50,
        l.p95,
        l.p99,
        l.max,
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
        usd(u.cost),
        t = escape(title),
    );
    page.push_str(&line(
        "completions",
        "Completions over time",
        &over_time,
        "s",
        "requests",
    ));
    page.push_str(&bars(
        "latency",
        "Latency per request",
        &latency_bins(finished, l.p99),
    ));
    page.push_str(&bars("attempts", "Attempts per request", &attempts));
    page.push_str(&bars("tokens", "Tokens per model", &tokens));
    page.push_str(&bars("cost", "Cost per model", &costs));
    page.push_str(&bars("errors", "Errors by reason", &errors));
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_empty_plots_say_so() {
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        assert!(bars("x", "T", &[]).contains("nothing to show"));
        let svg = bars("x", "T", &[("<m>".into(), 2.0, "2".into())]);
        assert!(svg.contains("&lt;m&gt;") && svg.contains("<rect"));
        assert!(line("l", "L", &[(0.0, 0.0)], "s", "n").contains("not enough data"));
    }
}
