//! `volley report --html`: one self-contained page (inline SVG, no scripts, nothing
//! fetched) with the plots a person would rather look at than read, drawn by the charts
//! every volley page shares.

use std::fmt::Write;

use volley_charts::{Bar, Series, bars, lines, nice_step, page, thin, tick_label};
use volley_core::observe::report::{Finished, Report};

use crate::summary::usd;

/// About how many bins the latency histogram has.
const LATENCY_BINS: f64 = 20.0;

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

type Points = volley_charts::Points;

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
    let mut body = String::new();
    let _ = write!(
        body,
        "<table>\
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
    );
    body.push_str(&lines(
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
    body.push_str(&bars(
        "latency",
        "Latency per request (first send to result)",
        &latency_bins(finished, l.p99),
    ));
    body.push_str(&bars("attempts", "Attempts per request", &attempts));
    body.push_str(&bars("tokens", "Tokens per model (all attempts)", &tokens));
    body.push_str(&bars("cost", "Cost per model", &costs));
    body.push_str(&bars("errors", "Errors by reason", &errors));
    page(title, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

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
