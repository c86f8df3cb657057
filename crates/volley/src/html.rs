//! `volley report --html`: one self-contained page (inline SVG, no scripts, nothing
//! fetched) with the plots a person would rather look at than read.
//!
//! Text widths are estimated from character counts (there is no font metric without a
//! browser), generously, so that labels are never clipped.

use std::fmt::Write;

use volley_core::observe::report::{Finished, Report};

use crate::summary::usd;

/// Width of every plot, in CSS pixels.
const WIDTH: f64 = 760.0;
/// Height of the line plot.
const HEIGHT: f64 = 260.0;
/// Room left of a line plot's y axis for its tick labels.
const LEFT: f64 = 64.0;
/// Room right of and below a line plot.
const RIGHT: f64 = 24.0;
const BOTTOM: f64 = 44.0;
const TOP: f64 = 28.0;
/// An upper bound on the width of one character of the 12 px plot font.
const CHAR_WIDTH: f64 = 7.2;
/// One bar of a bar chart, with its gap.
const ROW: f64 = 24.0;
/// About how many bins the latency histogram has.
const LATENCY_BINS: f64 = 20.0;
/// Labels longer than this are cut (the full text stays in the tooltip).
const MAX_LABEL_CHARS: usize = 44;
/// Points drawn per line at most: about one per pixel, however many requests ran, so
/// the page of a million-request run stays small and quick to open.
const MAX_POINTS: usize = 1_000;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn text_width(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_WIDTH
}

/// A step of 1, 2 or 5 × 10ⁿ that cuts `range` into about `parts` parts.
fn nice_step(range: f64, parts: f64) -> f64 {
    let raw = (range / parts).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A tick label: no trailing ".0", thousands kept short.
fn tick_label(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn figure_start(id: &str, title: &str) -> String {
    format!(
        "<figure id=\"{id}\"><figcaption>{}</figcaption>",
        escape(title)
    )
}

/// One bar of a bar chart: its label, the value that sets its length, and the text
/// shown at its end.
struct Bar {
    label: String,
    value: f64,
    shown: String,
}

impl Bar {
    fn new(label: impl Into<String>, value: f64, shown: impl Into<String>) -> Bar {
        Bar {
            label: label.into(),
            value,
            shown: shown.into(),
        }
    }
}

/// A horizontal bar chart whose label and value columns are as wide as their texts.
fn bars(id: &str, title: &str, items: &[Bar]) -> String {
    let mut svg = figure_start(id, title);
    if items.is_empty() {
        svg.push_str("<p class=\"empty\">nothing to show</p></figure>");
        return svg;
    }
    let cut = |label: &str| -> String {
        if label.chars().count() > MAX_LABEL_CHARS {
            let head: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
            format!("{head}…")
        } else {
            label.to_string()
        }
    };
    let max = items
        .iter()
        .map(|b| b.value)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let label_width = items
        .iter()
        .map(|b| text_width(&cut(&b.label)))
        .fold(0.0, f64::max)
        + 12.0;
    let value_width = items
        .iter()
        .map(|b| text_width(&b.shown))
        .fold(0.0, f64::max)
        + 12.0;
    let span = (WIDTH - label_width - value_width).max(120.0);
    let width = label_width + span + value_width;
    let height = ROW * items.len() as f64 + 8.0;
    let _ = write!(
        svg,
        "<svg class=\"plot\" viewBox=\"0 0 {width:.0} {height:.0}\" width=\"{width:.0}\" height=\"{height:.0}\" role=\"img\">"
    );
    for (i, bar) in items.iter().enumerate() {
        let y = 4.0 + ROW * i as f64;
        let w = if bar.value > 0.0 {
            (bar.value / max * span).max(1.5)
        } else {
            0.0
        };
        let _ = write!(
            svg,
            "<g><title>{}: {}</title>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect class=\"bar\" x=\"{label_width:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.0}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            escape(&bar.label),
            escape(&bar.shown),
            label_width - 8.0,
            y + 13.0,
            escape(&cut(&bar.label)),
            ROW - 6.0,
            label_width + w + 6.0,
            y + 13.0,
            escape(&bar.shown),
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// One series of a line plot.
struct Series<'a> {
    name: &'a str,
    class: &'a str,
    points: Points,
}

/// Step lines through `(x, count)` points, with ticks and grid lines on both axes and a
/// legend when there is more than one series.
fn lines(id: &str, title: &str, series: &[Series<'_>], x_label: &str, y_label: &str) -> String {
    let mut svg = figure_start(id, title);
    if series.iter().all(|s| s.points.len() < 2) {
        svg.push_str("<p class=\"empty\">not enough data to plot</p></figure>");
        return svg;
    }
    let all = || series.iter().flat_map(|s| s.points.iter());
    let max_x = all().map(|p| p.0).fold(0.0, f64::max).max(1e-3);
    let max_y = all().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let x_step = nice_step(max_x, 8.0);
    // The y values are counts: no tick between two whole numbers.
    let y_step = nice_step(max_y, 5.0).max(1.0);
    // The axes end on the first tick at or past the data.
    let x_end = (max_x / x_step).ceil() * x_step;
    let y_end = (max_y / y_step).ceil() * y_step;
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let sx = |x: f64| LEFT + x / x_end * plot_w;
    let sy = |y: f64| TOP + plot_h - y / y_end * plot_h;
    let _ = write!(
        svg,
        "<svg class=\"plot\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\">"
    );
    // Ticks by index, not by adding steps up: no float drift in the labels.
    for y in (0..=(y_end / y_step).round() as usize).map(|i| i as f64 * y_step) {
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + plot_w,
            LEFT - 6.0,
            sy(y) + 4.0,
            tick_label(y),
            py = sy(y),
        );
    }
    for x in (0..=(x_end / x_step).round() as usize).map(|i| i as f64 * x_step) {
        let _ = write!(
            svg,
            "<line class=\"axis\" x1=\"{px:.1}\" y1=\"{b:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + plot_h + 4.0,
            TOP + plot_h + 18.0,
            tick_label(x),
            px = sx(x),
            b = TOP + plot_h,
        );
    }
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{b:.1}\" x2=\"{:.1}\" y2=\"{b:.1}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b:.1}\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
        LEFT + plot_w,
        LEFT + plot_w,
        HEIGHT - 6.0,
        escape(x_label),
        LEFT - 6.0 - text_width("0"),
        TOP - 12.0,
        escape(y_label),
        b = TOP + plot_h,
    );
    for s in series.iter().filter(|s| s.points.len() >= 2) {
        // A count changes in steps: draw it as one.
        let mut path = Vec::with_capacity(s.points.len() * 2);
        let mut last_y = None;
        for (x, y) in &s.points {
            if let Some(prev) = last_y {
                path.push(format!("{:.1},{:.1}", sx(*x), sy(prev)));
            }
            path.push(format!("{:.1},{:.1}", sx(*x), sy(*y)));
            last_y = Some(*y);
        }
        let _ = write!(
            svg,
            "<polyline class=\"{}\" points=\"{}\"><title>{}</title></polyline>",
            s.class,
            path.join(" "),
            escape(s.name)
        );
    }
    if series.len() > 1 {
        // Top right, above the plot, level with the y axis title.
        let entry = |s: &Series<'_>| 40.0 + text_width(s.name);
        let mut x = WIDTH - RIGHT - series.iter().map(entry).sum::<f64>() + 16.0;
        let y = TOP - 16.0;
        for s in series {
            let _ = write!(
                svg,
                "<line class=\"{}\" x1=\"{x:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                s.class,
                x + 18.0,
                x + 24.0,
                y + 4.0,
                escape(s.name)
            );
            x += entry(s);
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

/// A latency in ms as a bin edge: ms below 10 s, seconds above.
fn latency_label(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{} s", tick_label(ms / 1000.0))
    } else {
        format!("{} ms", tick_label(ms))
    }
}

/// Latency histogram with round bin edges up to about `p99`; slower requests share one
/// last bin, labelled as such.
fn latency_bins(finished: &[Finished], p99: f64) -> Vec<Bar> {
    let values: Vec<f64> = finished
        .iter()
        .filter(|f| f.attempts > 0)
        .map(|f| f.latency_ms)
        .collect();
    if values.is_empty() {
        return Vec::new();
    }
    let max = values.iter().copied().fold(0.0, f64::max);
    let step = nice_step(p99.max(1.0), LATENCY_BINS);
    let covered = ((p99.max(1.0) / step).floor() as usize + 1).max(1);
    let overflow = max >= covered as f64 * step;
    let mut counts = vec![0u64; covered + usize::from(overflow)];
    let last = counts.len() - 1;
    for v in values {
        counts[((v / step) as usize).min(last)] += 1;
    }
    counts
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let low = i as f64 * step;
            let label = if overflow && i == covered {
                format!("≥ {}", latency_label(low))
            } else {
                format!(
                    "{}–{}",
                    tick_label(low),
                    latency_label((i + 1) as f64 * step)
                )
            };
            Bar::new(label, *n as f64, n.to_string())
        })
        .collect()
}

/// `(seconds, count)` points of a line plot.
type Points = Vec<(f64, f64)>;

/// At most [`MAX_POINTS`] of `points`, evenly spread, the first and last kept.
fn thin(points: Points) -> Points {
    if points.len() <= MAX_POINTS {
        return points;
    }
    let last = points.len() - 1;
    (0..MAX_POINTS)
        .map(|i| points[i * last / (MAX_POINTS - 1)])
        .collect()
}

/// Cumulative finished and failed requests against seconds since the first send.
fn over_time(finished: &[Finished]) -> (Points, Points) {
    let timed = || {
        finished
            .iter()
            .filter(|f| f.finished_at > 0.0 && f.attempts > 0)
    };
    let start = timed()
        .map(|f| f.finished_at - f.latency_ms / 1000.0)
        .fold(f64::INFINITY, f64::min);
    let (mut all, mut failed) = (vec![(0.0, 0.0)], vec![(0.0, 0.0)]);
    let (mut n_all, mut n_failed) = (0.0, 0.0);
    for f in timed() {
        let at = (f.finished_at - start).max(0.0);
        n_all += 1.0;
        all.push((at, n_all));
        if !f.ok {
            n_failed += 1.0;
            failed.push((at, n_failed));
        }
    }
    if let Some(&(end, _)) = all.last() {
        failed.push((end, n_failed));
    }
    (thin(all), thin(failed))
}

/// The page.
pub fn render(report: &Report, finished: &[Finished], title: &str) -> String {
    let (all, failed) = over_time(finished);
    let attempts: Vec<Bar> = report
        .attempts_histogram
        .iter()
        .map(|(a, n)| {
            Bar::new(
                format!("{a} attempt{}", if *a == 1 { "" } else { "s" }),
                *n as f64,
                n.to_string(),
            )
        })
        .collect();
    let tokens: Vec<Bar> = report
        .models
        .iter()
        .map(|(m, s)| {
            let u = &s.usage;
            Bar::new(
                m.clone(),
                u.total_tokens as f64,
                format!(
                    "{} tokens ({} prompt, {} completion)",
                    u.total_tokens, u.prompt_tokens, u.completion_tokens
                ),
            )
        })
        .collect();
    let costs: Vec<Bar> = report
        .models
        .iter()
        .map(|(m, s)| match s.usage.cost {
            Some(c) => Bar::new(m.clone(), c, usd(Some(c))),
            None => Bar::new(m.clone(), 0.0, "cost unknown"),
        })
        .collect();
    let errors: Vec<Bar> = report
        .errors_by_code
        .iter()
        .map(|(code, n)| Bar::new(code.clone(), *n as f64, n.to_string()))
        .collect();
    let c = &report.requests;
    let l = &report.latency_ms;
    let u = &report.usage;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title><style>\
         body{{font:14px system-ui,sans-serif;margin:24px auto;padding:0 24px;color:#1d2330;max-width:800px}}\
         h1{{font-size:20px}} figure{{margin:28px 0}} figcaption{{font-weight:600;margin-bottom:8px}}\
         table{{border-collapse:collapse}} td,th{{padding:3px 12px 3px 0;text-align:left;vertical-align:top}}\
         .bar{{fill:#3b6fd8}} .line{{fill:none;stroke:#3b6fd8;stroke-width:2}}\
         .line-failed{{fill:none;stroke:#d0453b;stroke-width:2}}\
         .axis{{stroke:#8a93a6}} .grid{{stroke:#e3e6ec}}\
         svg text{{font-size:12px;fill:#1d2330}} .empty{{color:#8a93a6}}\
         </style></head><body><h1>{t}</h1><table>\
         <tr><th>requests</th><td>{} succeeded · {} failed · {} invalid input · {} not finished</td></tr>\
         <tr><th>wall time</th><td>{:.1} s · {:.1} requests/s</td></tr>\
         <tr><th>attempts</th><td>{} ({} retries, {} answered 429)</td></tr>\
         <tr><th>latency</th><td>p50 {:.0} ms · p95 {:.0} ms · p99 {:.0} ms · max {:.0} ms</td></tr>\
         <tr><th>tokens</th><td>{} prompt · {} completion · {} total (all attempts)</td></tr>\
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
    page.push_str(&lines(
        "completions",
        "Completions over time",
        &[
            Series {
                name: "finished",
                class: "line",
                points: all,
            },
            Series {
                name: "failed",
                class: "line-failed",
                points: failed,
            },
        ],
        "seconds since the first request",
        "requests",
    ));
    page.push_str(&bars(
        "latency",
        "Latency per request (first send to result)",
        &latency_bins(finished, l.p99),
    ));
    page.push_str(&bars("attempts", "Attempts per request", &attempts));
    page.push_str(&bars("tokens", "Tokens per model (all attempts)", &tokens));
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
        let svg = bars("x", "T", &[Bar::new("<m>", 2.0, "2")]);
        assert!(svg.contains("&lt;m&gt;") && svg.contains("<rect"));
        let one = Series {
            name: "n",
            class: "line",
            points: vec![(0.0, 0.0)],
        };
        assert!(lines("l", "L", &[one], "s", "n").contains("not enough data"));
    }

    #[test]
    fn steps_are_round() {
        for (range, parts, step) in [
            (2.2, 8.0, 0.5),
            (400.0, 5.0, 100.0),
            (654.0, 20.0, 50.0),
            (7.0, 5.0, 2.0),
            (12_000.0, 20.0, 1000.0),
        ] {
            assert_eq!(nice_step(range, parts), step, "{range}/{parts}");
        }
        assert_eq!(tick_label(1.5), "1.5");
        assert_eq!(tick_label(400.0), "400");
        assert_eq!(tick_label(25_000.0), "25k");
    }

    #[test]
    fn long_lines_are_thinned_to_their_shape() {
        let points: Points = (0..=10_000).map(|i| (i as f64, i as f64)).collect();
        let thinned = thin(points);
        assert_eq!(thinned.len(), MAX_POINTS);
        assert_eq!(thinned[0], (0.0, 0.0));
        assert_eq!(thinned[MAX_POINTS - 1], (10_000.0, 10_000.0));
        assert!(thinned.windows(2).all(|w| w[0].0 < w[1].0));
        let few: Points = vec![(0.0, 0.0), (1.0, 1.0)];
        assert_eq!(thin(few.clone()), few);
    }

    #[test]
    fn latency_bins_are_round_and_slow_requests_share_the_last() {
        let finished: Vec<Finished> = [10.0, 120.0, 180.0, 240.0, 5000.0]
            .into_iter()
            .map(|ms| Finished {
                ok: true,
                finished_at: 1.0,
                latency_ms: ms,
                attempts: 1,
                model: "m".into(),
                usage: Default::default(),
                error_code: None,
            })
            .collect();
        let bins = latency_bins(&finished, 240.0);
        assert_eq!(bins[0].label, "0–20 ms");
        let last = bins.last().unwrap();
        assert_eq!((last.label.as_str(), last.value), ("≥ 260 ms", 1.0));
        assert_eq!(bins.iter().map(|b| b.value).sum::<f64>(), 5.0);
    }
}
