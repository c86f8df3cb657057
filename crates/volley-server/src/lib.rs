//! volley's gateway (SPEC §9): OpenAI's Batch API (files and batches) in front of any
//! OpenAI-compatible upstream, and a proxy that gives every client one shared limit.
//!
//! The gateway is a router over one shared [`App`]: the engine (whose keys, limits and
//! ledger every batch and proxied request share), the SQLite store, the files on disk,
//! the running batches and the tokens. Each API group has its own module; one error
//! type ([`error::ApiError`]) answers in OpenAI's error shape. This crate knows no
//! command line: the `volley` binary builds a [`GatewayConfig`] and an engine and calls
//! [`Gateway::open`].

pub mod auth;
mod batches;
pub mod dashboard;
mod db;
pub mod error;
mod execution;
mod files;
mod idempotency;
mod ids;
mod metrics;
mod objects;
mod proxy;
mod rows;
pub mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use volley_core::engine::Engine;
use volley_core::input::batch::LineDefaults;
use volley_core::observe::sources::StatsBySource;

use crate::auth::{Auth, Tenant};
use crate::db::{Db, DbError};
use crate::error::ApiError;
use crate::execution::Batches;
use crate::files::FileDir;
use crate::rows::{BatchRow, FileRow};

/// How the gateway behaves; built by the binary from its flags.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where the store and the files live.
    pub data_dir: PathBuf,
    pub auth: Auth,
    /// `--model` for input lines that name none, and the configured models that
    /// lines and proxied calls are routed by.
    pub defaults: LineDefaults,
    /// A batch's completion window: 24 hours (tests shorten it).
    pub completion_window: Duration,
    pub limits: upload::Limits,
    /// How long a proxied request may wait for its turn before it is answered 429.
    pub proxy_max_wait: Duration,
    /// The engine's concurrency limit, for the dashboard to show in flight against.
    pub concurrency: Option<usize>,
}

impl GatewayConfig {
    pub fn new(data_dir: PathBuf) -> GatewayConfig {
        GatewayConfig {
            data_dir,
            auth: Auth::open(),
            defaults: LineDefaults::default(),
            completion_window: Duration::from_secs(24 * 3600),
            limits: upload::Limits::default(),
            proxy_max_wait: Duration::from_secs(60),
            concurrency: None,
        }
    }
}

/// Why the gateway could not open.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("the store in {path}: {source}")]
    Store { path: String, source: DbError },
    /// Another gateway serves this data directory: two would run its batches twice.
    #[error("data directory: {0}")]
    Locked(#[from] volley_core::store::claim::ClaimError),
}

/// Uploads received at once: each holds a thread that writes and checks it.
const MAX_UPLOADS: usize = 32;

/// How often idempotency keys past their day are forgotten.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

pub struct AppInner {
    pub config: GatewayConfig,
    pub engine: Engine,
    /// Figures of every source, fed by the engine's events.
    pub stats: Arc<StatsBySource>,
    db: Db,
    files: FileDir,
    batches: Batches,
    proxy: proxy::Proxy,
    /// Uploads being received.
    uploads: Arc<tokio::sync::Semaphore>,
    /// Held while the gateway runs: one gateway per data directory.
    _lock: volley_core::store::claim::OutputLock,
    /// Forgets old idempotency keys now and then.
    expiry: tokio::task::JoinHandle<()>,
    /// The dashboard's snapshot, rebuilt every second.
    board: dashboard::Board,
}

impl std::ops::Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

impl App {
    /// A tenant's file; another tenant's, or an id the gateway cannot have made, is
    /// not found.
    async fn file(&self, tenant: &Tenant, id: &str) -> Result<FileRow, ApiError> {
        if !ids::is_valid(ids::Kind::File, id) {
            return Err(ApiError::not_found("file", id));
        }
        let (tenant_name, file_id) = (tenant.0.to_string(), id.to_string());
        self.db
            .read(move |c| FileRow::get(c, &tenant_name, &file_id))
            .await?
            .ok_or_else(|| ApiError::not_found("file", id))
    }

    /// A tenant's batch, likewise.
    async fn batch(&self, tenant: &Tenant, id: &str) -> Result<BatchRow, ApiError> {
        if !ids::is_valid(ids::Kind::Batch, id) {
            return Err(ApiError::not_found("batch", id));
        }
        let (tenant_name, batch_id) = (tenant.0.to_string(), id.to_string());
        self.db
            .read(move |c| BatchRow::get(c, &tenant_name, &batch_id))
            .await?
            .ok_or_else(|| ApiError::not_found("batch", id))
    }

    async fn batch_any(&self, id: &str) -> Result<Option<BatchRow>, ApiError> {
        let id = id.to_string();
        Ok(self.db.read(move |c| BatchRow::get_any(c, &id)).await?)
    }
}

/// An open gateway: serve its [`Gateway::router`], then [`Gateway::shutdown`] it.
pub struct Gateway {
    app: App,
}

impl Gateway {
    /// Opens the store in the data directory, clears what a crash left, and takes up
    /// the batches an earlier process left unfinished.
    /// `stats` must observe `engine`'s events: `/metrics` reads it, and each finished
    /// batch's figures leave it (the store keeps them). `failures` observes them too,
    /// after `stats`: the dashboard's latest errors.
    pub async fn open(
        config: GatewayConfig,
        engine: Engine,
        stats: Arc<StatsBySource>,
        failures: Arc<dashboard::Failures>,
    ) -> Result<Gateway, GatewayError> {
        let dir_error = |source| GatewayError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        };
        let files_dir = config.data_dir.join("files");
        std::fs::create_dir_all(&files_dir).map_err(dir_error)?;
        let db_path = config.data_dir.join("volley.sqlite");
        // Before anything is read or swept: another gateway's uploads in progress
        // would look like a crash's leftovers.
        let lock = volley_core::store::claim::OutputLock::acquire(&db_path)?;
        let store_error = |source| GatewayError::Store {
            path: db_path.display().to_string(),
            source,
        };
        let db = Db::open(&db_path).map_err(store_error)?;
        let files = FileDir::new(files_dir);
        let known = db.read(FileRow::all_ids).await.map_err(store_error)?;
        let swept = files.sweep(&known).map_err(dir_error)?;
        if swept > 0 {
            tracing::info!("removed {swept} file(s) a crash left unfinished");
        }
        let expiry = {
            let db = db.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = db
                        .write(|c| rows::IdempotencyRow::expire(c, idempotency::KEPT_SECS))
                        .await
                    {
                        tracing::error!("store: old idempotency keys: {e}");
                    }
                    tokio::time::sleep(EXPIRE_EVERY).await;
                }
            })
        };
        let routes = config.defaults.routes.clone();
        let batches = Batches::new(
            engine.clone(),
            db.clone(),
            files.clone(),
            stats.clone(),
            routes.clone(),
        );
        let resumed = batches.resume_all().await.map_err(store_error)?;
        if resumed > 0 {
            tracing::info!("taking up {resumed} unfinished batch(es)");
        }
        let proxy = proxy::Proxy::new(engine.clone(), config.proxy_max_wait, routes);
        let app = App {
            inner: Arc::new(AppInner {
                proxy,
                config,
                engine,
                stats,
                db,
                files,
                batches,
                uploads: Arc::new(tokio::sync::Semaphore::new(MAX_UPLOADS)),
                _lock: lock,
                expiry,
                board: dashboard::Board::new(failures),
            }),
        };
        dashboard::Board::start(&app).await;
        Ok(Gateway { app })
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        let app = self.app.clone();
        let limits = app.config.limits;
        let v1 = Router::new()
            .route(
                "/files",
                post(files::create)
                    .layer(DefaultBodyLimit::max(
                        (limits.max_upload + 1024 * 1024) as usize,
                    ))
                    .get(files::list),
            )
            .route("/files/{id}", get(files::retrieve).delete(files::delete))
            .route("/files/{id}/content", get(files::content))
            .route("/batches", post(batches::create).get(batches::list))
            .route("/batches/{id}", get(batches::retrieve))
            .route("/batches/{id}/cancel", post(batches::cancel))
            .route("/batches/{id}/output", get(batches::output))
            .route("/models", get(proxy::models))
            .route(
                "/{*path}",
                post(proxy::forward)
                    .layer(DefaultBodyLimit::max(proxy::MAX_BODY))
                    .fallback(not_found),
            )
            .fallback(not_found);
        // Everything but the health check and the dashboard's empty page needs a
        // token, when the gateway has any: metrics name tenants and batches.
        let guarded = Router::new()
            .route("/metrics", get(metrics::scrape))
            .route("/dashboard/state", get(dashboard::routes::state))
            .nest("/v1", v1)
            .layer(axum::middleware::from_fn_with_state(
                app.config.auth.clone(),
                auth::require_token,
            ));
        // The dashboard's page holds no data: it asks for the token itself.
        Router::new()
            .route("/", get(dashboard::routes::index))
            .route("/healthz", get(healthz))
            .merge(guarded)
            .layer(axum::middleware::from_fn(close_after_refusal))
            .with_state(app)
    }

    /// Serves on `listener` until `stop` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(
            listener,
            self.router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
    }

    /// Stops the batches where they are (the next start takes them up) and waits for
    /// their tasks. The caller shuts the engine down first, so requests in flight get
    /// its grace period.
    pub async fn shutdown(&self) {
        self.app.batches.shutdown().await;
        self.app.expiry.abort();
        self.app.board.stop();
        if let Err(e) = self.app.db.flush().await {
            tracing::error!("store: {e}");
        }
    }
}

/// An error answered to a request with a body may have left the body unread (a 401
/// before an upload, a 413 on its Content-Length): the connection cannot carry another
/// request, so the reply says `Connection: close` rather than let a client's pool
/// reuse a connection the server is about to drop.
async fn close_after_refusal(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let has_body = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || request
            .headers()
            .contains_key(http::header::TRANSFER_ENCODING);
    let mut response = next.run(request).await;
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// `ok`, or a 503 saying why the engine can send nothing more (every key left the
/// pool): a load balancer should stop sending to it.
async fn healthz(
    axum::extract::State(app): axum::extract::State<App>,
) -> (http::StatusCode, String) {
    match app.engine.halted() {
        None => (http::StatusCode::OK, "ok\n".into()),
        Some(why) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("halted: {why}\n"),
        ),
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound {
        what: "route",
        id: uri.path().chars().take(128).collect(),
    }
}
