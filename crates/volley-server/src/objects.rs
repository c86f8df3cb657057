//! The JSON objects the API answers with, in OpenAI's shapes (PROTOCOLS.md): every
//! field the SDK's models declare is sent, `null` where it has no value, because user
//! code reads `batch.status` or `file.id` without checking for `None`.

use serde_json::{Value, json};

use crate::rows::{BatchRow, FileRow};

pub fn file(f: &FileRow) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        // Validated as it was uploaded: `files.wait_for_processing` returns at once.
        "status": "processed",
        "status_details": null,
        "expires_at": null,
    })
}

pub fn batch(b: &BatchRow) -> Value {
    let errors = (!b.errors.is_empty()).then(|| {
        json!({
            "object": "list",
            "data": b.errors.iter().map(|e| json!({
                "code": e.code,
                "message": e.message,
                "line": e.line,
                "param": e.param,
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status.as_str(),
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at,
        "in_progress_at": b.in_progress_at,
        "expires_at": b.expires_at,
        "finalizing_at": b.finalizing_at,
        "completed_at": b.completed_at,
        "failed_at": b.failed_at,
        "expired_at": b.expired_at,
        "cancelling_at": b.cancelling_at,
        "cancelled_at": b.cancelled_at,
        "request_counts": {
            "total": b.total,
            "completed": b.completed,
            "failed": b.failed,
        },
        "usage": {
            "input_tokens": b.input_tokens,
            "input_tokens_details": {"cached_tokens": b.cached_tokens},
            "output_tokens": b.output_tokens,
            "output_tokens_details": {"reasoning_tokens": b.reasoning_tokens},
            "total_tokens": b.input_tokens.saturating_add(b.output_tokens),
        },
        "metadata": b.metadata,
        // volley's own: what the batch has cost so far, in USD (`null` when a reply
        // did not say and no price was known).
        "volley": {"cost_usd": b.cost_known.then_some(b.cost)},
    })
}

/// A list's `limit` query: `default` when absent, else 1 to `most`.
pub fn page_limit(
    limit: Option<i64>,
    default: usize,
    most: usize,
) -> Result<usize, crate::error::ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if n >= 1 && n as u64 <= most as u64 => Ok(n as usize),
        Some(_) => Err(crate::error::ApiError::invalid_param(
            "limit",
            format!("limit must be 1 to {most}"),
        )),
    }
}

/// A page of `limit` objects from `rows`, which holds one more when there are more.
pub fn page_of<T>(mut rows: Vec<T>, limit: usize, object: impl Fn(&T) -> Value) -> Value {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    page(rows.iter().map(object).collect(), has_more)
}

/// A page of a list, as OpenAI pages them: `has_more` is always sent, or the SDK's
/// auto-paging never stops.
fn page(data: Vec<Value>, has_more: bool) -> Value {
    let id = |v: Option<&Value>| v.and_then(|v| v.get("id")).cloned();
    json!({
        "object": "list",
        "first_id": id(data.first()),
        "last_id": id(data.last()),
        "has_more": has_more,
        "data": data,
    })
}
