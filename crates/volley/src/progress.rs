//! What a person watches during a run: a progress bar on a terminal, or one summary
//! line every interval in logs, plus a log line for each notable event (a key paused or
//! retired, the retry budget spent). Both only read the event stream.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;
use volley_core::engine::SourceId;
use volley_core::observe::events::{Event, Observer};
use volley_core::observe::stats::{RunStats, Snapshot};
use volley_core::provider::openrouter::PricesSource;

use crate::summary::{human_duration, usd};

/// How often the bar redraws.
const BAR_REFRESH: Duration = Duration::from_millis(200);

/// Logs the events a person should know about as they happen, once each.
pub struct EventLog;

impl Observer for EventLog {
    fn on_event(&self, _source: Option<SourceId>, event: &Event) {
        match event {
            Event::KeyPaused { key, pause } => {
                tracing::info!(
                    "{key} rate limited: pausing it for {}",
                    human_duration(*pause)
                );
            }
            Event::KeyRetired {
                key,
                reason,
                message,
            } => {
                tracing::warn!("{key} leaves the pool ({reason}): {message}");
            }
            Event::RetryBudgetExhausted { spent } => {
                tracing::warn!(
                    "retry budget spent ({spent} retries after errors): failing requests are no longer retried; raise --retry-budget if the provider is only briefly unwell"
                );
            }
            Event::Stopping { reason } => tracing::warn!("stopping: {reason}"),
            Event::RequestLost { custom_id, message } => {
                tracing::error!(
                    "request {custom_id} failed inside volley ({message}); it is not recorded, a re-run sends it"
                );
            }
            Event::LimitLearned {
                key,
                requests_per_minute,
                tokens_per_minute,
            } => {
                let show = |v: &Option<u64>| v.map_or("unknown".to_string(), |n| n.to_string());
                tracing::info!(
                    "{key} limits from the provider: {} requests/min, {} tokens/min",
                    show(requests_per_minute),
                    show(tokens_per_minute)
                );
            }
            Event::KeyInfo { key, info: None } => {
                tracing::info!(
                    "{key}: could not read the key's limits and credit from the provider; going on"
                );
            }
            Event::KeyInfo {
                key,
                info: Some(info),
            } => {
                let usd = |v: Option<f64>| v.map_or("none".to_string(), |v| format!("${v:.2}"));
                let free = if info.is_free_tier == Some(true) {
                    " · free tier"
                } else {
                    ""
                };
                tracing::info!(
                    "{key}: credit limit {} · remaining {} · used {}{free}",
                    usd(info.limit),
                    usd(info.limit_remaining),
                    usd(info.usage)
                );
                if info.limit_remaining.is_some_and(|r| r <= 0.0) {
                    tracing::warn!(
                        "{key} has no credit left: expect it to be refused (402) and leave the pool"
                    );
                }
            }
            Event::ModelPrices {
                models: Some(n),
                source,
            } => {
                let from = match source {
                    Some(PricesSource::Cache) => "cached copy of the provider's model list",
                    Some(PricesSource::StaleCache) => {
                        "old cached copy of the model list (the provider could not be reached)"
                    }
                    _ => "provider's model list",
                };
                let models = if *n == 1 { "model" } else { "models" };
                tracing::info!("prices of {n} {models} from the {from}");
            }
            Event::ModelPrices { models: None, .. } => {
                tracing::warn!(
                    "could not read model prices from the provider: costs not reported in usage.cost stay unknown"
                );
            }
            Event::CostUnknown { model } => {
                tracing::warn!(
                    "the cost of {} is unknown (no usage.cost, no --pricing entry): --max-cost counts only known costs",
                    model.as_deref().unwrap_or("a request without a model")
                );
            }
            Event::ConcurrencyChanged { limit } => {
                tracing::debug!("adaptive concurrency: {limit} in flight at most");
            }
            Event::Retrying {
                custom_id,
                reason,
                delay,
                attempt,
            } => {
                tracing::debug!(
                    "{custom_id}: attempt {attempt} failed ({reason}), retrying in {}",
                    human_duration(*delay)
                );
            }
            _ => {}
        }
    }
}

fn tokens_per_second(s: &Snapshot) -> f64 {
    let secs = s.elapsed.as_secs_f64();
    if secs > 0.0 {
        s.usage.total_tokens as f64 / secs
    } else {
        0.0
    }
}

/// One periodic summary line (log mode): totals so far, and what the last interval
/// saw of the limiter ("12 of 60 attempts throttled").
pub fn summary_line(before: &Snapshot, s: &Snapshot) -> String {
    let pct = if s.total > 0 {
        100.0 * s.finished() as f64 / s.total as f64
    } else {
        100.0
    };
    let attempts = s.attempts - before.attempts;
    let throttled = s.throttled_attempts - before.throttled_attempts;
    let share = if attempts > 0 {
        100.0 * throttled as f64 / attempts as f64
    } else {
        0.0
    };
    format!(
        "progress: {}/{} ({pct:.1}%) · {:.1} req/s · in flight {}{} · queued {} · last {}: {attempts} attempts, {throttled} throttled ({share:.0}%), {} 429s · retries {} · errors {} · {:.0} tok/s · cost {} · ETA {}",
        s.finished(),
        s.total,
        s.throughput(),
        s.in_flight,
        s.concurrency
            .map_or(String::new(), |c| format!(" (limit {c})")),
        s.pending.saturating_sub(s.in_flight),
        human_duration(s.elapsed.saturating_sub(before.elapsed)),
        s.rate_limited - before.rate_limited,
        s.retries,
        s.failed,
        tokens_per_second(s),
        usd(s.usage.cost),
        s.eta().map_or("-".into(), human_duration),
    )
}

/// Renders progress until `done` fires.
pub async fn show(
    stats: Arc<RunStats>,
    bar: Option<ProgressBar>,
    interval: Duration,
    done: CancellationToken,
) {
    match bar {
        Some(bar) => loop {
            let s = stats.snapshot();
            bar.set_length(s.total);
            bar.set_position(s.finished());
            bar.set_message(format!(
                "{:.1} req/s · {:.0} tok/s · {} · retries {} · errors {} · ETA {}",
                s.throughput(),
                tokens_per_second(&s),
                usd(s.usage.cost),
                s.retries,
                s.failed,
                s.eta().map_or("-".into(), human_duration)
            ));
            tokio::select! {
                _ = done.cancelled() => { bar.finish_and_clear(); return; }
                _ = tokio::time::sleep(BAR_REFRESH) => {}
            }
        },
        None => {
            let mut before = stats.snapshot();
            loop {
                tokio::select! {
                    _ = done.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {
                        let now = stats.snapshot();
                        tracing::info!("{}", summary_line(&before, &now));
                        before = now;
                    }
                }
            }
        }
    }
}

/// A bar drawn on standard error.
pub fn new_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
