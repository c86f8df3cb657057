//! `--metrics-linger` and `--dashboard-linger`: after a run, keep serving its final
//! figures a while, so a scraper or a person sees them, unless Ctrl-C comes first.

use std::future::Future;
use std::time::Duration;

use crate::summary::human_duration;

/// Waits `secs` (a flag's value, checked finite and in range by its parser) after
/// saying that `what` stays served at `url`, or until `stop` resolves.
pub async fn linger(what: &str, url: &str, secs: f64, stop: impl Future<Output = ()>) {
    if secs <= 0.0 {
        return;
    }
    let wait = Duration::from_secs_f64(secs);
    tracing::info!(
        "serving the final {what} at {url} for {} (Ctrl-C ends it)",
        human_duration(wait)
    );
    tokio::select! {
        _ = tokio::time::sleep(wait) => {}
        _ = stop => {}
    }
}
