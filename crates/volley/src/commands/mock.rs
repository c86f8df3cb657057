//! `volley mock`: the simulator as a standalone server.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use volley_mock::{LimitShape, MAX_WINDOW, MockConfig, MockServer};

use crate::cli::MockArgs;
use crate::exit::Exit;

/// `--limit-shape`: the mock's [`LimitShape`] as a flag value (the mock crate does not
/// depend on clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LimitShapeArg {
    /// At most the limit in any sliding window (OpenAI's documented per-minute limits).
    Window,
    /// A token bucket per key and limit: starts full, refills continuously at limit/window.
    Bucket,
}

impl From<LimitShapeArg> for LimitShape {
    fn from(a: LimitShapeArg) -> Self {
        match a {
            LimitShapeArg::Window => LimitShape::Window,
            LimitShapeArg::Bucket => LimitShape::Bucket,
        }
    }
}

/// `--window SECS`: a positive number of seconds, fractions allowed, at most the mock's
/// [`MAX_WINDOW`]. Zero is refused rather than clamped: limit/window is a rate.
pub fn parse_window(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    let window = Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|w| !w.is_zero() && *w <= MAX_WINDOW)
        .ok_or_else(|| {
            format!(
                "{s:?} must be more than 0 and at most {} seconds",
                MAX_WINDOW.as_secs()
            )
        })?;
    Ok(window)
}

impl From<&MockArgs> for MockConfig {
    fn from(a: &MockArgs) -> Self {
        MockConfig {
            latency_ms: a.latency_ms,
            jitter_ms: a.jitter_ms,
            rpm: a.rpm,
            tpm: a.tpm,
            limit_shape: a.limit_shape.into(),
            burst: a.burst,
            window: a.window,
            fail_rate: a.fail_rate,
            hang_rate: a.hang_rate,
            malformed_rate: a.malformed_rate,
            reset_rate: a.reset_rate,
            seed: a.seed,
            hide_limits: a.hide_limits,
            limit_per_model: a.limit_per_model,
            key_credits: a.key_credits.iter().cloned().collect(),
            in_flight_budget: a.in_flight_budget,
            cost_per_million_tokens: a.cost_per_million_tokens,
            model_prices: a.model_prices.clone(),
            accuracy: a.accuracy.clone(),
            judges: a.judge_models.clone(),
            judge_invalid_rate: a.judge_invalid_rate,
        }
    }
}

pub async fn mock(args: MockArgs) -> anyhow::Result<Exit> {
    // A --burst that would change nothing is a mistake worth saying, not ignoring.
    if args.burst.is_some() {
        if args.limit_shape != LimitShapeArg::Bucket {
            anyhow::bail!("--burst needs --limit-shape bucket (a window has no burst)");
        }
        if args.rpm.is_none() {
            anyhow::bail!("--burst is the requests bucket's capacity: it needs --rpm");
        }
    }
    let server = MockServer::start(MockConfig::from(&args), args.addr)
        .await
        .context("cannot start the mock")?;
    // The first line of stdout is the base URL, for scripts and tests to read.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", server.base_url())?;
    stdout.flush()?;
    drop(stdout);
    errln!(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_positive_seconds() {
        assert_eq!(parse_window("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_window("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["0", "-1", "1e-12", "nan", "inf", "1e10", "soon"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    fn mock_config(flags: &[&str]) -> Result<MockConfig, String> {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["volley", "mock"].iter().chain(flags))
            .map_err(|e| e.to_string())?;
        match cli.command {
            crate::cli::Command::Mock(args) => Ok(MockConfig::from(&args)),
            other => Err(format!("parsed as {other:?}")),
        }
    }

    #[test]
    fn accuracy_and_judge_flags_reach_the_config() {
        let config = mock_config(&[
            "--accuracy",
            "vendor/a=0.7",
            "--accuracy",
            "*=0",
            "--accuracy",
            "odd=name=1",
            "--judge-model",
            "j1",
            "--judge-model",
            "j2",
            "--judge-invalid-rate",
            "0.25",
        ])
        .unwrap();
        assert_eq!(
            config.accuracy,
            [
                ("vendor/a".to_string(), 0.7),
                ("*".to_string(), 0.0),
                ("odd=name".to_string(), 1.0)
            ]
        );
        assert_eq!(config.judges, ["j1", "j2"]);
        assert_eq!(config.judge_invalid_rate, 0.25);
        let plain = mock_config(&[]).unwrap();
        assert!(plain.accuracy.is_empty() && plain.judges.is_empty());
        assert_eq!(plain.judge_invalid_rate, 0.0);
    }

    #[test]
    fn bad_accuracies_and_rates_are_named_usage_errors() {
        // (flag, value, what the message must say)
        let cases = [
            ("--accuracy", "m=1.5", "must be a fraction from 0 to 1"),
            ("--accuracy", "m=-0.1", "must be a fraction from 0 to 1"),
            ("--accuracy", "m=nan", "is not a finite number"),
            ("--accuracy", "m=often", "is not a number"),
            ("--accuracy", "m", "is not MODEL=P"),
            ("--accuracy", "=0.5", "is not MODEL=P"),
            (
                "--judge-invalid-rate",
                "2",
                "must be a fraction from 0 to 1",
            ),
            (
                "--judge-invalid-rate",
                "-1",
                "must be a fraction from 0 to 1",
            ),
        ];
        for (flag, value, says) in cases {
            let err = mock_config(&[flag, value]).unwrap_err();
            assert!(
                err.contains(&format!("invalid value '{value}' for '{flag} ")),
                "{flag} {value}: {err}"
            );
            assert!(err.contains(says), "{flag} {value}: {err}");
        }
    }
}
