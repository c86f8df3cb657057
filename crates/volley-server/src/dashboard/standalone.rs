//! The dashboard on its own listener, for the commands that are not a gateway:
//! `volley run --dashboard` and `volley experiment run --dashboard`. The same page and
//! board as the gateway's; the feed says what the rows are.
//!
//! There is no token: the user chose where it listens (keep it on 127.0.0.1). Nothing
//! on it is a secret anyway (see the module above).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use super::{Board, Failures, Feed, routes};

/// A dashboard being served; [`Dashboard::shutdown`] (or dropping it) stops it.
pub struct Dashboard {
    board: Arc<Board>,
    feed: Arc<dyn Feed>,
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

/// Serves the dashboard of `feed` on `listener` (bound by the caller, so that a taken
/// port is an error before anything starts), rebuilding its snapshot every second.
/// `failures` must observe the engine the feed shows.
pub async fn serve_dashboard(
    listener: tokio::net::TcpListener,
    feed: Arc<dyn Feed>,
    failures: Arc<Failures>,
) -> std::io::Result<Dashboard> {
    let addr = listener.local_addr()?;
    let board = Arc::new(Board::new(failures));
    if let Err(e) = board.refresh(&*feed).await {
        tracing::error!("dashboard: {e}");
    }
    let (ticking, fed) = (Arc::downgrade(&board), feed.clone());
    board.keep_fresh(move || {
        let (board, feed) = (ticking.upgrade(), fed.clone());
        async move {
            let Some(board) = board else { return false };
            if let Err(e) = board.refresh(&*feed).await {
                tracing::error!("dashboard: {e}");
            }
            true
        }
    });
    let app = Router::new()
        .route("/", get(routes::index))
        .route("/dashboard/state", get(routes::state_all))
        .with_state(board.clone());
    let server = tokio::spawn(async move {
        // Ends only by abort; an accept error has nowhere better to go.
        let _ = axum::serve(listener, app).await;
    });
    Ok(Dashboard {
        board,
        feed,
        addr,
        server,
    })
}

impl Dashboard {
    /// Where it listens (the port chosen, when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Publishes a snapshot now, not at the next tick: the final state of a run is on
    /// the page as soon as it ends.
    pub async fn refresh(&self) {
        if let Err(e) = self.board.refresh(&*self.feed).await {
            tracing::error!("dashboard: {e}");
        }
    }

    /// Stops serving and rebuilding.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.board.stop();
        self.server.abort();
    }
}
