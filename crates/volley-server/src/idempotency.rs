//! `Idempotency-Key` on a POST: the same key from the same tenant within a day returns
//! what the first request made instead of making it again, so a client that retries a
//! create after a lost reply does not start a second batch; the same key with another
//! request is a 409.

use axum::http::HeaderMap;
use rusqlite::Connection;

use crate::error::ApiError;
use crate::rows::IdempotencyRow;

/// How long a key is remembered (OpenAI's window for its own keys).
pub const KEPT_SECS: i64 = 24 * 3600;

/// The longest key taken.
const MAX_KEY: usize = 255;

/// The request's `Idempotency-Key`, if it sent a usable one.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters"
            ))
        })?;
    Ok(Some(key.to_string()))
}

/// What a keyed request found.
pub enum Claim {
    /// The key is new: the object was made by this request.
    Made(String),
    /// The key was used before for the same request: the object it made then.
    Replayed(String),
}

/// In one write, looks `key` up and, when it is new, runs `make` and records the key
/// with the object it made. `request` is what identifies the request (its route and
/// body); the same key with another request is a conflict.
pub fn claim(
    conn: &Connection,
    tenant: &str,
    key: &str,
    request: &str,
    make: impl FnOnce(&Connection) -> rusqlite::Result<String>,
) -> rusqlite::Result<Result<Claim, ApiError>> {
    if let Some(seen) = IdempotencyRow::get(conn, tenant, key, KEPT_SECS)? {
        return Ok(if seen.request == request {
            Ok(Claim::Replayed(seen.object_id))
        } else {
            Err(ApiError::Conflict(
                "this Idempotency-Key was used for a different request in the last 24 hours; use a new key for a new request".into(),
            ))
        });
    }
    let id = make(conn)?;
    IdempotencyRow::put(conn, tenant, key, request, &id)?;
    Ok(Ok(Claim::Made(id)))
}
