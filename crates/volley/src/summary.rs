//! The final report as text: printed when a run ends and by `volley report`.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;
use volley_core::observe::report::Report;

/// "1.5 s", "2m05s", "1h02m".
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{}h{:02}m", d.as_secs() / 3600, (d.as_secs() % 3600) / 60)
    }
}

/// A figure in seconds as a duration to show. Figures recomputed from files (`volley
/// report`) are whatever the files say: a negative or NaN one shows as zero, one too
/// large for a `Duration` as the largest, never a panic.
fn seconds(v: f64) -> Duration {
    Duration::try_from_secs_f64(v.max(0.0)).unwrap_or(Duration::MAX)
}

fn ms(v: f64) -> String {
    human_duration(seconds(v / 1000.0))
}

/// A cost in dollars, or `unknown` — never a made-up zero: cents and more to four
/// decimals (`$1.2345`), smaller amounts to three significant digits, so that a known
/// small cost never reads as `$0.0000`.
pub fn usd(cost: Option<f64>) -> String {
    match cost {
        None => "unknown".into(),
        Some(c) if c == 0.0 || c >= 0.01 => format!("${c:.4}"),
        Some(c) => {
            let decimals = (2 - c.log10().floor() as i32).clamp(4, 12) as usize;
            format!("${c:.decimals$}")
        }
    }
}

/// The report as text.
pub fn render(r: &Report, results: &str, errors: &str) -> String {
    let mut out = String::new();
    let c = &r.requests;
    let finished = c.succeeded + c.failed;
    let _ = writeln!(
        out,
        "volley: {finished} requests finished in {} ({:.1} req/s)",
        human_duration(seconds(r.wall_seconds)),
        r.throughput_per_second
    );
    let _ = writeln!(
        out,
        "  succeeded {} · failed {} · invalid input {} · already done before {} · not finished {}",
        c.succeeded, c.failed, c.invalid_input, c.already_done, c.not_finished,
    );
    let reasons: Vec<String> = r
        .retries_by_reason
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "  attempts {} · retries {}{} · 429s {} · waited for limits {} (summed over requests)",
        r.attempts,
        r.retries,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        },
        r.rate_limited,
        human_duration(seconds(r.throttled_seconds)),
    );
    if !r.attempts_histogram.is_empty() {
        let hist: Vec<String> = r
            .attempts_histogram
            .iter()
            .map(|(a, n)| format!("{a}×{n}"))
            .collect();
        let _ = writeln!(out, "  attempts per request: {}", hist.join(" "));
    }
    if finished > 0 {
        let l = &r.latency_ms;
        let _ = writeln!(
            out,
            "  latency per request (first send to result): p50 {} · p95 {} · p99 {} · max {}",
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.max)
        );
    }
    let u = &r.usage;
    let _ = writeln!(
        out,
        "  tokens (all attempts): prompt {} · completion {} · total {} (cached {}, reasoning {}) · cost {}",
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
        u.cached_tokens,
        u.reasoning_tokens,
        usd(u.cost)
    );
    for (model, m) in &r.models {
        let _ = writeln!(
            out,
            "    {model}: {} requests ({} failed) · {} attempts · {} tokens · cost {}",
            m.requests,
            m.failed,
            m.attempts,
            m.usage.total_tokens,
            usd(m.usage.cost)
        );
    }
    if !r.errors_by_code.is_empty() {
        let codes: Vec<String> = r
            .errors_by_code
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(out, "  errors: {}", codes.join(", "));
    }
    for k in &r.keys_retired {
        let _ = writeln!(out, "  {} retired: {}", k.key, k.reason);
    }
    if let Some(reason) = &r.stop_reason {
        let _ = writeln!(out, "  stopped early: {reason}");
    }
    let _ = write!(out, "  results: {results} · errors: {errors}");
    out
}

/// The report as the fields of one JSON log record (`--log-format json`): the same
/// data as `--report FILE.json`, and where RESULTS and ERRORS went, so a log consumer
/// needs no second file and no text parsing.
#[derive(Debug, Serialize)]
pub struct JsonSummary<'a> {
    /// What the record is, as the other log lines' `message` says.
    pub message: &'static str,
    pub report: &'a Report,
    pub results: &'a str,
    pub errors: &'a str,
}

impl<'a> JsonSummary<'a> {
    pub fn new(report: &'a Report, results: &'a str, errors: &'a str) -> JsonSummary<'a> {
        JsonSummary {
            message: "summary",
            report,
            results,
            errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_costs_read_well() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
        assert_eq!(usd(None), "unknown");
        assert_eq!(usd(Some(0.5)), "$0.5000");
        assert_eq!(usd(Some(0.0)), "$0.0000");
        assert_eq!(usd(Some(0.0000123)), "$0.0000123");
        assert_eq!(usd(Some(0.00456)), "$0.00456");
    }
}
