//! `--metrics-addr`: serves the run's Prometheus metrics at `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use volley_core::observe::metrics;
use volley_core::observe::stats::RunStats;

struct Shared {
    stats: Arc<RunStats>,
    finished: AtomicBool,
}

/// A running `/metrics` server; dropped or [`MetricsEndpoint::shutdown`] stops it.
pub struct MetricsEndpoint {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsEndpoint {
    /// Binds `addr` before the run starts, so a taken port is an error up front.
    pub async fn start(addr: SocketAddr, stats: Arc<RunStats>) -> anyhow::Result<MetricsEndpoint> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
        let addr = listener.local_addr().context("--metrics-addr")?;
        let shared = Arc::new(Shared {
            stats,
            finished: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/metrics", get(scrape))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            // Ends only by abort; an accept error has nowhere better to go.
            let _ = axum::serve(listener, app).await;
        });
        Ok(MetricsEndpoint { shared, addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on scrapes say `volley_run_finished 1`.
    pub fn mark_finished(&self) {
        self.shared.finished.store(true, Ordering::Relaxed);
    }

    pub fn shutdown(self) {
        self.task.abort();
    }
}

async fn scrape(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let body = metrics::render(&shared.stats, shared.finished.load(Ordering::Relaxed));
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], body)
}
