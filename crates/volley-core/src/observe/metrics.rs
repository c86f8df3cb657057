//! Prometheus text exposition of a run (`--metrics-addr`, SPEC §7).
//!
//! Rendered from the same [`RunStats`] the progress bar and the final report read, so a
//! scrape taken when the run ends agrees with the report to the request. Written by
//! hand rather than through a metrics facade: cost is a float counter, and the figures
//! already live in `RunStats`, so a second set of counters would only be a second
//! chance to disagree.

use std::fmt::Write;

use crate::observe::stats::{RunStats, Snapshot};

/// Bucket bounds of `volley_request_duration_seconds`: from a cached reply to a long
/// reasoning model's answer after retries.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The media type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the run's metrics. `finished` is set once the run has ended (the figures
/// are then final).
pub fn render(stats: &RunStats, finished: bool) -> String {
    let s = stats.snapshot();
    let mut out = Exposition::default();
    run_state(&mut out, &s, finished);
    requests(&mut out, &s);
    attempts(&mut out, &s);
    latency(&mut out, stats);
    usage(&mut out, &s);
    out.0
}

fn run_state(out: &mut Exposition, s: &Snapshot, finished: bool) {
    out.family(
        "volley_run_finished",
        "gauge",
        "1 once the run has ended and the figures are final.",
    );
    out.sample("volley_run_finished", &[], u64::from(finished) as f64);
    out.family(
        "volley_run_elapsed_seconds",
        "gauge",
        "Seconds since the run started; its wall time once it has ended.",
    );
    out.sample("volley_run_elapsed_seconds", &[], s.elapsed.as_secs_f64());
    out.family(
        "volley_requests_planned",
        "gauge",
        "Requests this run set out to send.",
    );
    out.sample("volley_requests_planned", &[], s.total as f64);
    out.family(
        "volley_requests_already_done",
        "gauge",
        "Requests skipped because an earlier run finished them.",
    );
    out.sample("volley_requests_already_done", &[], s.already_done as f64);
    if let Some(limit) = s.concurrency {
        out.family(
            "volley_concurrency_limit",
            "gauge",
            "The adaptive concurrency limit (AIMD).",
        );
        out.sample("volley_concurrency_limit", &[], limit as f64);
    }
}

fn requests(out: &mut Exposition, s: &Snapshot) {
    out.family(
        "volley_requests_total",
        "counter",
        "Requests finished, by outcome.",
    );
    for (outcome, n) in [
        ("succeeded", s.succeeded),
        ("failed", s.failed - s.invalid),
        ("invalid_input", s.invalid),
    ] {
        out.sample("volley_requests_total", &[("outcome", outcome)], n as f64);
    }
    out.family(
        "volley_request_errors_total",
        "counter",
        "Requests that failed for good, by error code.",
    );
    for (code, n) in &s.errors_by_code {
        out.sample("volley_request_errors_total", &[("code", code)], *n as f64);
    }
    out.family(
        "volley_requests_in_flight",
        "gauge",
        "Attempts on the wire now.",
    );
    out.sample("volley_requests_in_flight", &[], s.in_flight as f64);
    out.family(
        "volley_requests_queued",
        "gauge",
        "Requests admitted but not on the wire: waiting for a limit, a key or a backoff.",
    );
    out.sample(
        "volley_requests_queued",
        &[],
        s.pending.saturating_sub(s.in_flight) as f64,
    );
}

fn attempts(out: &mut Exposition, s: &Snapshot) {
    out.family(
        "volley_attempts_total",
        "counter",
        "Attempts that came back (or failed on the wire), by outcome.",
    );
    for (outcome, n) in &s.attempts_by_outcome {
        out.sample("volley_attempts_total", &[("outcome", outcome)], *n as f64);
    }
    out.family(
        "volley_retries_total",
        "counter",
        "Attempts sent again, by the reason the previous one failed.",
    );
    for (reason, n) in &s.retries_by_reason {
        out.sample("volley_retries_total", &[("reason", reason)], *n as f64);
    }
    out.family(
        "volley_rate_limited_responses_total",
        "counter",
        "Attempts answered 429 (or another rate-limit signal).",
    );
    out.sample(
        "volley_rate_limited_responses_total",
        &[],
        s.rate_limited as f64,
    );
    out.family(
        "volley_throttled_attempts_total",
        "counter",
        "Attempts that waited for a rate limit or a key's pause before sending.",
    );
    out.sample(
        "volley_throttled_attempts_total",
        &[],
        s.throttled_attempts as f64,
    );
    out.family(
        "volley_limiter_wait_seconds_total",
        "counter",
        "Time attempts spent waiting for a rate limit or a key's pause.",
    );
    out.sample(
        "volley_limiter_wait_seconds_total",
        &[],
        s.throttled.as_secs_f64(),
    );
    out.family(
        "volley_keys_retired_total",
        "counter",
        "Keys that left the pool, by reason.",
    );
    let mut retired = std::collections::BTreeMap::<&str, u64>::new();
    for (_, reason) in &s.keys_retired {
        *retired.entry(reason).or_default() += 1;
    }
    for (reason, n) in retired {
        out.sample("volley_keys_retired_total", &[("reason", reason)], n as f64);
    }
}

fn latency(out: &mut Exposition, stats: &RunStats) {
    let name = "volley_request_duration_seconds";
    out.family(
        name,
        "histogram",
        "Per request, first send to result, retries included.",
    );
    let buckets = stats.latency_buckets(&LATENCY_BUCKETS);
    for (bound, n) in &buckets.cumulative {
        out.sample(
            &format!("{name}_bucket"),
            &[("le", &bound.to_string())],
            *n as f64,
        );
    }
    out.sample(
        &format!("{name}_bucket"),
        &[("le", "+Inf")],
        buckets.count as f64,
    );
    out.sample(&format!("{name}_sum"), &[], buckets.sum_seconds);
    out.sample(&format!("{name}_count"), &[], buckets.count as f64);
}

fn usage(out: &mut Exposition, s: &Snapshot) {
    out.family(
        "volley_tokens_total",
        "counter",
        "Tokens billed over every attempt, by model and kind (reasoning is part of completion, cached part of prompt).",
    );
    for (model, m) in &s.models {
        let u = &m.usage;
        for (kind, n) in [
            ("prompt", u.prompt_tokens),
            ("completion", u.completion_tokens),
            ("reasoning", u.reasoning_tokens),
            ("cached", u.cached_tokens),
        ] {
            out.sample(
                "volley_tokens_total",
                &[("model", model), ("kind", kind)],
                n as f64,
            );
        }
    }
    out.family(
        "volley_cost_usd_total",
        "counter",
        "Cost in USD of the attempts whose cost is known, by model; absent until one is (volley_cost_unknown_attempts_total counts the others).",
    );
    for (model, m) in &s.models {
        if let Some(cost) = m.known_cost {
            out.sample("volley_cost_usd_total", &[("model", model)], cost);
        }
    }
    out.family(
        "volley_cost_unknown_attempts_total",
        "counter",
        "Attempts with usage but no known cost (no usage.cost, no price), by model.",
    );
    for (model, m) in &s.models {
        out.sample(
            "volley_cost_unknown_attempts_total",
            &[("model", model)],
            m.cost_unknown_attempts as f64,
        );
    }
}

/// Prometheus text being written: families and their samples, labels escaped. Public
/// so that a gateway's own figures are written the same way.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// Starts after `text` (another exposition, rendered).
    pub fn after(text: String) -> Exposition {
        Exposition(text)
    }

    /// The text so far.
    pub fn into_string(self) -> String {
        self.0
    }

    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::usage::Usage;
    use crate::observe::events::{Event, Observer};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn families_and_labels_are_well_formed() {
        let stats = RunStats::new();
        let usage = Usage {
            prompt_tokens: 7,
            completion_tokens: 3,
            total_tokens: 10,
            cost: Some(0.25),
            ..Usage::default()
        };
        stats.on_event(
            None,
            &Event::AttemptFinished {
                custom_id: Arc::from("a"),
                attempt: 1,
                key: Arc::from("key#1"),
                status: Some(200),
                outcome: "ok",
                latency: Duration::from_millis(30),
                usage: Some(usage),
                model: Some(Arc::from("we\"ird\\model")),
            },
        );
        stats.on_event(
            None,
            &Event::RequestFinished {
                custom_id: Arc::from("a"),
                ok: true,
                attempts: 1,
                error: None,
                latency: Duration::from_millis(30),
                usage,
                model: Some(Arc::from("we\"ird\\model")),
            },
        );
        let text = render(&stats, true);
        assert!(text.contains("volley_run_finished 1\n"), "{text}");
        assert!(text.contains("volley_requests_total{outcome=\"succeeded\"} 1\n"));
        assert!(text.contains("volley_attempts_total{outcome=\"ok\"} 1\n"));
        assert!(
            text.contains("volley_tokens_total{model=\"we\\\"ird\\\\model\",kind=\"prompt\"} 7\n")
        );
        assert!(text.contains("volley_cost_usd_total{model=\"we\\\"ird\\\\model\"} 0.25\n"));
        assert!(text.contains("volley_request_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("volley_request_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("volley_request_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("volley_request_duration_seconds_count 1\n"));
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name} declared twice"
            );
        }
    }
}
