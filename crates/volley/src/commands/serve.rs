//! `volley serve`: flags → an engine and a gateway on it, served until Ctrl-C or
//! SIGTERM; then requests in flight get the grace period, and unfinished batches are
//! left for the next start to take up.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use volley_config::ConfigFile;
use volley_core::defaults;
use volley_core::engine::EngineConfig;
use volley_core::input::batch::LineDefaults;
use volley_core::observe::events::{EventBus, Observer};
use volley_core::observe::sources::StatsBySource;
use volley_core::runner::Target;
use volley_server::auth::Auth;
use volley_server::dashboard::Failures;
use volley_server::{Gateway, GatewayConfig};

use crate::cli::ServeArgs;
use crate::commands::engine::{self, Upstreams};
use crate::exit::Exit;
use crate::logging::{self, BarSlot};
use crate::progress::EventLog;

/// How long connections may stay open once the engine has stopped: enough for the
/// last replies to reach their clients.
const CONNECTIONS_GRACE: Duration = Duration::from_secs(5);

/// `file` is the configuration file `--config` named, loaded (its `[serve]` defaults
/// are already in `args`): its providers are the engine's upstreams and its models
/// route batch lines and proxied calls.
pub async fn serve(args: ServeArgs, file: Option<ConfigFile>) -> anyhow::Result<Exit> {
    logging::init(args.log_format, args.quiet, BarSlot::default());
    if let Err(message) = engine::check(&args.engine) {
        errln!("error: {message}");
        return Ok(Exit::Usage);
    }
    let upstreams = match Upstreams::resolve(&args.engine, file.as_ref()) {
        Ok(upstreams) => upstreams,
        Err(e) => {
            errln!("error: {e}");
            return Ok(Exit::Usage);
        }
    };
    let auth = match (&args.auth_token_env, &args.tokens_file) {
        (Some(name), _) => {
            let token = std::env::var(name).ok().filter(|t| !t.trim().is_empty());
            let Some(token) = token else {
                errln!("error: --auth-token-env {name}: the variable is not set or empty");
                return Ok(Exit::Usage);
            };
            match Auth::token(token.trim()) {
                Ok(auth) => auth,
                Err(e) => {
                    errln!("error: --auth-token-env {name}: {e}");
                    return Ok(Exit::Usage);
                }
            }
        }
        (None, Some(path)) => match Auth::tokens_file(path) {
            Ok(auth) => auth,
            Err(e) => {
                errln!("error: --tokens-file: {e}");
                return Ok(Exit::Usage);
            }
        },
        (None, None) => Auth::open(),
    };
    if auth.is_open() && !args.addr.ip().is_loopback() {
        tracing::warn!(
            "serving {} without a token: anyone who can reach it can spend your keys; pass --auth-token-env or --tokens-file",
            args.addr
        );
    }
    let pricing = engine::pricing(&args.engine)?;
    let routes = upstreams.routes.clone();
    let (targets, mock) = upstreams.start().await?;
    let grace = defaults::SHUTDOWN_GRACE;
    let stats = Arc::new(StatsBySource::new());
    // After `stats`, which names a failure's source.
    let failures = Arc::new(Failures::new(stats.clone()));
    let observers: Vec<Arc<dyn Observer>> =
        vec![stats.clone(), failures.clone(), Arc::new(EventLog)];
    let engine_config = EngineConfig {
        // Proxied requests have a client waiting: they go ahead of batches.
        clients_first: true,
        ..engine::config(&args.engine, pricing, grace)
    };
    let concurrency = engine_config.concurrency;
    let engine = Target::connect_all(targets, engine_config, EventBus::new(observers)).await?;
    let mut config = GatewayConfig::new(args.data_dir.clone());
    config.auth = auth;
    config.defaults = LineDefaults {
        model: args.engine.model.clone(),
        routes,
    };
    config.proxy_max_wait = Duration::from_secs_f64(args.proxy_max_wait);
    config.concurrency = Some(concurrency);
    if let Some(secs) = args.batch_window {
        config.completion_window = Duration::from_secs_f64(secs);
    }
    let gateway = Gateway::open(config, engine.clone(), stats, failures).await?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("--addr {}: cannot listen", args.addr))?;
    let addr = listener.local_addr().context("--addr")?;
    // The first line of stdout is the base URL, for scripts and tests to read.
    outln!("http://{addr}/v1");
    tracing::info!(
        "volley serve: OpenAI's Batch API at http://{addr}/v1, the dashboard at http://{addr}/ (data in {}); Ctrl-C stops it",
        args.data_dir.display()
    );
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            crate::commands::mock::shutdown_signal().await;
            tracing::warn!(
                "stopping: requests in flight get {} to finish; unfinished batches go on at the next start",
                crate::summary::human_duration(grace)
            );
            stop.cancel();
            crate::commands::mock::shutdown_signal().await;
            tracing::warn!("exiting now; unfinished batches go on at the next start");
            std::process::exit(Exit::Stopped as i32);
        });
    }
    // On a stop, the engine's grace period starts at once, beside the HTTP server's
    // graceful shutdown: a client holding a stream open must not keep the gateway (and
    // its batches) running past it. It runs once, whichever side finishes first.
    let engine_stopped = CancellationToken::new();
    {
        let (engine, stop, stopped) = (engine.clone(), stop.clone(), engine_stopped.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            engine.shutdown(grace).await;
            stopped.cancel();
        });
    }
    let served = tokio::select! {
        served = gateway.serve(listener, stop.clone().cancelled_owned()) => served,
        // Streams end once the engine has dropped their requests; a connection still
        // open after that is cut.
        () = async {
            engine_stopped.cancelled().await;
            tokio::time::sleep(CONNECTIONS_GRACE).await;
        } => Ok(()),
    };
    // The server may have ended on its own (an error): stop the rest all the same.
    stop.cancel();
    engine_stopped.cancelled().await;
    gateway.shutdown().await;
    if let Some(mock) = mock {
        mock.shutdown().await;
    }
    served.context("the server failed")?;
    Ok(Exit::Success)
}
