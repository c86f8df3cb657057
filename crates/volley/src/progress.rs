//! What a person watches during a run: a progress bar on a terminal, or one summary
//! line every interval in logs, plus a log line for each notable event (a key paused or
//! retired, the retry budget spent). Both only read the event stream.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;
use volley_core::defaults;
use volley_core::engine::SourceId;
use volley_core::observe::events::{Event, Observer};
use volley_core::observe::stats::{RunStats, Snapshot};
use volley_core::provider::openrouter::PricesSource;
use volley_experiment::pipeline::Progress as CellProgress;

use crate::cli::{DisplayArgs, ProgressMode};
use crate::logging::BarSlot;
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

/// What a progress display counts.
#[derive(Clone)]
pub enum Counted {
    /// Requests (`volley run`): the totals of the stats themselves.
    Requests,
    /// An experiment's cells, and what its two stages have done this run; the request
    /// figures (both stages together) still come from the stats.
    Cells(Arc<CellProgress>),
}

/// How far along the counted things are at one moment.
struct Position {
    done: u64,
    total: u64,
    /// What the stages did, before the request figures (`answers 10 · judgements 8`).
    stages: Option<String>,
    eta: Option<Duration>,
}

impl Counted {
    /// Where the run is. The ETA counts this run's pace only: cells an earlier run
    /// finished, found done at once, would make it look fast.
    fn position(&self, s: &Snapshot) -> Position {
        match self {
            Counted::Requests => Position {
                done: s.finished(),
                total: s.total,
                stages: None,
                eta: s.eta(),
            },
            Counted::Cells(p) => {
                let c = p.read();
                let this_run = c.done_now() as f64;
                let eta = (this_run > 0.0)
                    .then(|| {
                        let left = c.cells.saturating_sub(c.done) as f64;
                        Duration::try_from_secs_f64(left * s.elapsed.as_secs_f64() / this_run).ok()
                    })
                    .flatten();
                Position {
                    done: c.done,
                    total: c.cells,
                    stages: Some(format!("answers {} · judgements {}", c.answered, c.judged)),
                    eta,
                }
            }
        }
    }

    /// The share done when nothing is counted yet: a run with nothing to send is
    /// done, an experiment still counting its cells is not.
    fn empty_share(&self) -> f64 {
        match self {
            Counted::Requests => 100.0,
            Counted::Cells(_) => 0.0,
        }
    }

    fn noun(&self) -> &'static str {
        match self {
            Counted::Requests => "",
            Counted::Cells(_) => "cells ",
        }
    }
}

/// One periodic summary line (log mode): totals so far, and what the last interval
/// saw of the limiter ("12 of 60 attempts throttled").
fn summary_line(counted: &Counted, at: &Position, before: &Snapshot, s: &Snapshot) -> String {
    let pct = if at.total > 0 {
        100.0 * at.done as f64 / at.total as f64
    } else {
        counted.empty_share()
    };
    let attempts = s.attempts - before.attempts;
    let throttled = s.throttled_attempts - before.throttled_attempts;
    let share = if attempts > 0 {
        100.0 * throttled as f64 / attempts as f64
    } else {
        0.0
    };
    let stages = at
        .stages
        .as_ref()
        .map_or(String::new(), |st| format!("{st} · "));
    format!(
        "progress: {}{}/{} ({pct:.1}%) · {stages}{:.1} req/s · in flight {}{} · queued {} · last {}: {attempts} attempts, {throttled} throttled ({share:.0}%), {} 429s · retries {} · errors {} · {:.0} tok/s · cost {} · ETA {}",
        counted.noun(),
        at.done,
        at.total,
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
        at.eta.map_or("-".into(), human_duration),
    )
}

/// Renders progress until `done` fires: the bar if there is one, else a summary line
/// every `interval`.
async fn show(
    stats: Arc<RunStats>,
    counted: Counted,
    bar: Option<ProgressBar>,
    interval: Duration,
    done: CancellationToken,
) {
    match bar {
        Some(bar) => loop {
            let s = stats.snapshot();
            let at = counted.position(&s);
            bar.set_length(at.total);
            bar.set_position(at.done);
            let stages = at.stages.map_or(String::new(), |st| format!("{st} · "));
            bar.set_message(format!(
                "{stages}{:.1} req/s · {:.0} tok/s · {} · retries {} · errors {} · ETA {}",
                s.throughput(),
                tokens_per_second(&s),
                usd(s.usage.cost),
                s.retries,
                s.failed,
                at.eta.map_or("-".into(), human_duration)
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
                        let at = counted.position(&now);
                        tracing::info!("{}", summary_line(&counted, &at, &before, &now));
                        before = now;
                    }
                }
            }
        }
    }
}

/// The progress display of a command, from start to [`Display::stop`]: a bar on a
/// terminal (or with `--progress bar`), a summary line every `interval` in logs, or
/// nothing (`--quiet`, `--progress off`).
pub struct Display {
    done: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    slot: BarSlot,
}

impl Display {
    /// Starts showing `counted` (of which `total` are known now), log lines drawn
    /// around the bar through `slot`.
    pub fn start(
        args: &DisplayArgs,
        stats: Arc<RunStats>,
        counted: Counted,
        total: u64,
        slot: &BarSlot,
    ) -> Display {
        let show_bar = match args.progress {
            ProgressMode::Bar => true,
            ProgressMode::Auto => !args.quiet && std::io::stderr().is_terminal(),
            ProgressMode::Log | ProgressMode::Off => false,
        };
        let show_log = !show_bar
            && !args.quiet
            && matches!(args.progress, ProgressMode::Auto | ProgressMode::Log);
        let done = CancellationToken::new();
        let task = (show_bar || show_log).then(|| {
            let bar = show_bar.then(|| new_bar(total));
            slot.set(bar.clone());
            tokio::spawn(show(
                stats,
                counted,
                bar,
                defaults::SUMMARY_INTERVAL,
                done.clone(),
            ))
        });
        Display {
            done,
            task,
            slot: slot.clone(),
        }
    }

    /// Clears the bar (log lines go straight to standard error again).
    pub async fn stop(self) {
        self.done.cancel();
        if let Some(task) = self.task {
            let _ = task.await;
        }
        self.slot.set(None);
    }
}

/// A bar drawn on standard error.
fn new_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn an_experiments_line_counts_cells_and_both_stages_and_its_eta_only_this_run() {
        let cells = Arc::new(CellProgress::default());
        let counted = Counted::Cells(cells.clone());
        let before = RunStats::new().snapshot();
        let mut now = before.clone();
        now.elapsed = Duration::from_secs(10);
        // Still counting the cells: not done.
        let at = counted.position(&now);
        assert!(
            summary_line(&counted, &at, &before, &now).starts_with("progress: cells 0/0 (0.0%)")
        );
        assert_eq!(at.eta, None);

        cells.cells.store(1000, Ordering::Relaxed);
        // 100 cells an earlier run finished, found done as the rows were read: no pace.
        cells.resumed.store(100, Ordering::Relaxed);
        cells.done.store(100, Ordering::Relaxed);
        assert_eq!(counted.position(&now).eta, None);
        // Then 200 cells done by this run in 10 s, 700 left.
        cells.done.store(300, Ordering::Relaxed);
        cells.answered.store(210, Ordering::Relaxed);
        cells.judged.store(200, Ordering::Relaxed);
        let at = counted.position(&now);
        assert_eq!(at.eta, Some(Duration::from_secs(35)));
        let line = summary_line(&counted, &at, &before, &now);
        assert!(
            line.starts_with("progress: cells 300/1000 (30.0%) · answers 210 · judgements 200 · "),
            "{line}"
        );
        assert!(line.ends_with("ETA 35.0 s"), "{line}");
    }

    #[test]
    fn a_runs_line_counts_requests() {
        let before = RunStats::new().snapshot();
        let mut now = before.clone();
        now.total = 40;
        now.succeeded = 10;
        now.elapsed = Duration::from_secs(5);
        let at = Counted::Requests.position(&now);
        let line = summary_line(&Counted::Requests, &at, &before, &now);
        assert!(
            line.starts_with("progress: 10/40 (25.0%) · 2.0 req/s"),
            "{line}"
        );
        assert!(line.ends_with("ETA 15.0 s"), "{line}");
    }
}
