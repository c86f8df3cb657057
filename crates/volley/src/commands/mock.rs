//! `volley mock`: the simulator as a standalone server.

use std::io::Write;

use anyhow::Context;
use volley_mock::{MockConfig, MockServer};

use crate::cli::MockArgs;
use crate::exit::Exit;

impl From<&MockArgs> for MockConfig {
    fn from(a: &MockArgs) -> Self {
        MockConfig {
            latency_ms: a.latency_ms,
            jitter_ms: a.jitter_ms,
            rpm: a.rpm,
            tpm: a.tpm,
            fail_rate: a.fail_rate,
            hang_rate: a.hang_rate,
            malformed_rate: a.malformed_rate,
            reset_rate: a.reset_rate,
            seed: a.seed,
            hide_limits: a.hide_limits,
            key_credits: a.key_credits.iter().cloned().collect(),
            in_flight_budget: a.in_flight_budget,
            cost_per_million_tokens: a.cost_per_million_tokens,
            model_prices: a.model_prices.clone(),
        }
    }
}

pub async fn mock(args: MockArgs) -> anyhow::Result<Exit> {
    let server = MockServer::start(MockConfig::from(&args), args.addr)
        .await
        .context("cannot start the mock")?;
    // The first line of stdout is the base URL, for scripts and tests to read.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", server.base_url())?;
    stdout.flush()?;
    drop(stdout);
    eprintln!(
        "volley mock serving {} (stats: GET http://{}/mock/stats); Ctrl-C stops it",
        server.base_url(),
        server.addr()
    );
    shutdown_signal().await;
    server.shutdown().await;
    Ok(Exit::Success)
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
