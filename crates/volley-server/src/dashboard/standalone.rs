//! The dashboard on its own listener, for the commands that are not a gateway:
//! `volley run --dashboard` and `volley experiment run --dashboard`. The same page and
//! board as the gateway's; the feed says what the rows are.
//!
//! There is no token: the user chose where it listens (keep it on 127.0.0.1). Nothing
//! on it is a secret anyway (see the module above), but custom ids and model names are
//! private to the user: a request whose `Host` is a name other than `localhost` is
//! refused, so a web page that rebinds its own domain to 127.0.0.1 (DNS rebinding)
//! cannot read them. An address typed as an IP, or `localhost`, is what a person uses.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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
        .with_state(board.clone())
        .layer(middleware::from_fn(only_direct_hosts));
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

/// Refuses a request whose `Host` names anything but an IP address or `localhost`.
async fn only_direct_hosts(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_direct(host) {
        next.run(request).await
    } else {
        (
            StatusCode::MISDIRECTED_REQUEST,
            "this dashboard answers to an IP address or localhost only\n",
        )
            .into_response()
    }
}

/// Whether `host` (a Host header: a name or address, maybe with a port) is an IP
/// address or `localhost`.
fn is_direct(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[::1]:8080`
        Some(rest) => rest.split_once(']').map_or("", |(name, _)| name),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::is_direct;

    #[test]
    fn only_addresses_and_localhost_are_direct() {
        for host in [
            "127.0.0.1:8081",
            "127.0.0.1",
            "localhost:9",
            "LOCALHOST",
            "[::1]:80",
            "10.0.0.2:1",
        ] {
            assert!(is_direct(host), "{host}");
        }
        for host in [
            "evil.example:8081",
            "evil.example",
            "",
            "127.0.0.1.evil.example:80",
            "[::1",
        ] {
            assert!(!is_direct(host), "{host}");
        }
    }
}
