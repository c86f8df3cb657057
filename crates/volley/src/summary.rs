//! The final report printed when a run ends: honest counts, time, throughput,
//! latency and tokens.

use std::fmt::Write;
use std::time::Duration;

use volley_core::stats::Snapshot;

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

fn ms(v: f64) -> String {
    human_duration(Duration::from_secs_f64(v.max(0.0) / 1000.0))
}

/// The final report as text.
pub fn render(s: &Snapshot, results: &str, errors: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "volley: {} requests finished in {} ({:.1} req/s)",
        s.finished() - s.invalid,
        human_duration(s.elapsed),
        s.throughput()
    );
    let _ = writeln!(
        out,
        "  succeeded {} · failed {} · invalid input {} · already done before {} · not finished {}",
        s.succeeded,
        s.failed - s.invalid,
        s.invalid,
        s.already_done,
        s.total.saturating_sub(s.finished() - s.invalid),
    );
    let reasons: Vec<String> = s
        .retries_by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "  attempts {} · retries {}{} · 429s {} · waited for limits {}",
        s.attempts,
        s.retries,
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join(", "))
        },
        s.rate_limited,
        human_duration(s.throttled),
    );
    if !s.attempts_histogram.is_empty() {
        let hist: Vec<String> = s
            .attempts_histogram
            .iter()
            .map(|(a, n)| format!("{a}×{n}"))
            .collect();
        let _ = writeln!(out, "  attempts per request: {}", hist.join(" "));
    }
    if s.finished() > s.invalid {
        let _ = writeln!(
            out,
            "  latency per request (first send to result): p50 {} · p95 {} · p99 {} · max {}",
            ms(s.latency_ms.p50),
            ms(s.latency_ms.p95),
            ms(s.latency_ms.p99),
            ms(s.latency_ms.max)
        );
    }
    let u = &s.usage;
    let _ = writeln!(
        out,
        "  tokens this run (all attempts): prompt {} · completion {} · total {} (cached {}, reasoning {}) · cost {}",
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
        u.cached_tokens,
        u.reasoning_tokens,
        u.cost.map_or("unknown".into(), |c| format!("${c:.4}"))
    );
    if !s.errors_by_code.is_empty() {
        let codes: Vec<String> = s
            .errors_by_code
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        let _ = writeln!(out, "  errors: {}", codes.join(", "));
    }
    for (key, why) in &s.keys_retired {
        let _ = writeln!(out, "  {key} retired: {why}");
    }
    if let Some(reason) = &s.stop_reason {
        let _ = writeln!(out, "  stopped early: {reason}");
    }
    let _ = write!(out, "  results: {results} · errors: {errors}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
    }
}
