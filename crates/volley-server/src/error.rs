//! The gateway's one error type, answered in OpenAI's error shape
//! (`{"error":{"message","type","param","code"}}`, all four keys always present), so the
//! official SDKs raise the exception a client expects for each status.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What went wrong with a request to the gateway; each variant is one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request (or an uploaded file) is not one the gateway can take.
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<&'static str>,
        code: Option<&'static str>,
    },
    /// 401: no bearer token, or not one the gateway knows.
    #[error("a valid bearer token is required: send Authorization: Bearer <token>")]
    Unauthorized,
    /// 404: no such object for this tenant (another tenant's ids are not found either).
    #[error("no such {what}: {id}")]
    NotFound { what: &'static str, id: String },
    /// 409: an Idempotency-Key reused with another body, or a state that forbids it.
    #[error("{0}")]
    Conflict(String),
    /// 409: a proxied call with this Idempotency-Key is still running; a retry a
    /// moment later gets its reply.
    #[error("{0}")]
    InProgress(String),
    /// 408: the client stopped sending.
    #[error("{0}")]
    Timeout(String),
    /// 413: an upload larger than the gateway takes.
    #[error("{message}")]
    TooLarge {
        message: String,
        /// The field that was too large: `file` for an upload, none for a body.
        param: Option<&'static str>,
    },
    /// 429: a proxied request waited longer than `--proxy-max-wait` for its turn.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// 502: the upstream gave no usable reply.
    #[error("{0}")]
    BadGateway(String),
    /// 500: the gateway's store or disk failed; the message says what, never a secret.
    #[error("{0}")]
    Internal(String),
    /// 503: the gateway is shutting down or cannot send at all.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }

    pub fn not_found(what: &'static str, id: &str) -> ApiError {
        // An id from the client is echoed, but never a long one: it is theirs, not ours,
        // and a megabyte of it would come back in the reply.
        let id: String = id.chars().take(128).collect();
        ApiError::NotFound { what, id }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) | ApiError::InProgress(_) => StatusCode::CONFLICT,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn kind(&self) -> (&'static str, Option<&'static str>, Option<&'static str>) {
        match self {
            ApiError::Invalid { param, code, .. } => ("invalid_request_error", *param, *code),
            ApiError::Unauthorized => ("invalid_request_error", None, Some("invalid_api_key")),
            ApiError::NotFound { .. } => ("invalid_request_error", None, Some("not_found")),
            ApiError::Conflict(_) => ("invalid_request_error", None, Some("conflict")),
            ApiError::InProgress(_) => ("invalid_request_error", None, Some("in_progress")),
            ApiError::Timeout(_) => ("invalid_request_error", None, Some("timeout")),
            ApiError::TooLarge { param, .. } => {
                ("invalid_request_error", *param, Some("too_large"))
            }
            ApiError::RateLimited { .. } => ("rate_limit_error", None, Some("rate_limit_exceeded")),
            ApiError::BadGateway(_) => ("server_error", None, Some("upstream_error")),
            ApiError::Internal(_) => ("server_error", None, None),
            ApiError::Unavailable(_) => ("server_error", None, Some("unavailable")),
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> ApiError {
        tracing::error!("store: {e}");
        ApiError::Internal(format!("the gateway's store failed: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (kind, param, code) = self.kind();
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": kind,
                "param": param,
                "code": code,
            }
        });
        let mut response = (self.status(), Json(body)).into_response();
        // A conflict stays a conflict however often it is sent: the official SDKs
        // retry a 409 unless told not to.
        if let ApiError::Conflict(_) = &self {
            response.headers_mut().insert(
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            );
        }
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}
