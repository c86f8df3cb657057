//! The dashboard's two routes: the page, open to anyone since it holds no data, and its
//! state, behind the gateway's token (a run's dashboard has none: [`state_all`]).

use std::sync::Arc;

use bytes::Bytes;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::App;
use crate::auth::Tenant;
use crate::dashboard::Board;

/// The page may run its own inline script and style and talk to this gateway only:
/// nothing is fetched from anywhere else, and no other site may frame it.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `GET /`: the dashboard page.
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        super::page::html(),
    )
}

/// `GET /dashboard/state`: the latest snapshot, as the asking tenant may see it.
pub async fn state(
    State(app): State<App>,
    Extension(tenant): Extension<Tenant>,
) -> impl IntoResponse {
    json(app.board.current().for_tenant(&tenant.0))
}

/// `GET /dashboard/state` of a run's dashboard: the whole snapshot, no tenants.
pub async fn state_all(State(board): State<Arc<Board>>) -> impl IntoResponse {
    json(board.current().for_all())
}

fn json(body: Bytes) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}
