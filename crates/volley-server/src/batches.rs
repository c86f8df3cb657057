//! The Batches API: `POST /v1/batches`, `GET /v1/batches/{id}`, `GET /v1/batches`,
//! `POST /v1/batches/{id}/cancel`, and volley's `GET /v1/batches/{id}/output?after=N`,
//! which returns the lines finished so far while the batch runs.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::App;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::idempotency::{self, Claim};
use crate::ids::{self, Kind};
use crate::objects;
use crate::rows::{BatchErrorItem, BatchRow, Ending, FileRow, Status, now};

/// The endpoints a batch may target (OpenAI's text ones).
pub const ENDPOINTS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
];

/// OpenAI's metadata limits.
const METADATA_PAIRS: usize = 16;
const METADATA_KEY: usize = 64;
const METADATA_VALUE: usize = 512;

/// The metadata key that caps a batch's spend, in USD.
pub const MAX_COST_KEY: &str = "max_cost_usd";

#[derive(Debug, Deserialize)]
struct CreateBatch {
    input_file_id: Option<String>,
    endpoint: Option<String>,
    completion_window: Option<String>,
    metadata: Option<Value>,
}

/// `POST /v1/batches`.
pub async fn create(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let key = idempotency::key(&headers)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
    let request: CreateBatch = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::invalid(format!("the body is not a batch request: {e}")))?;
    let input_file_id = request
        .input_file_id
        .ok_or_else(|| ApiError::invalid_param("input_file_id", "input_file_id is required"))?;
    let endpoint = request
        .endpoint
        .ok_or_else(|| ApiError::invalid_param("endpoint", "endpoint is required"))?;
    if !ENDPOINTS.contains(&endpoint.as_str()) {
        return Err(ApiError::invalid_param(
            "endpoint",
            format!(
                "endpoint {endpoint:?} is not one a batch can target: {}",
                ENDPOINTS.join(", ")
            ),
        ));
    }
    let window = request.completion_window.ok_or_else(|| {
        ApiError::invalid_param("completion_window", "completion_window is required")
    })?;
    if window != "24h" {
        return Err(ApiError::invalid_param(
            "completion_window",
            format!("completion_window must be \"24h\", not {window:?}"),
        ));
    }
    let metadata = check_metadata(request.metadata)?;
    let max_cost = match metadata.as_ref().and_then(|m| m.get(MAX_COST_KEY)) {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|c| c.is_finite() && *c >= 0.0)
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "metadata",
                        format!("metadata.{MAX_COST_KEY} must be a number of US dollars, 0 or more, as a string (\"2.50\")"),
                    )
                })?,
        ),
    };
    let file = app
        .file(&tenant, &input_file_id)
        .await
        .map_err(|e| match e {
            ApiError::NotFound { .. } => {
                ApiError::invalid_param("input_file_id", format!("no such file: {input_file_id}"))
            }
            e => e,
        })?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid_param(
            "input_file_id",
            format!("file {input_file_id} is a batch's output, not a batch input"),
        ));
    }
    let created_at = now();
    // Lines whose url is not the batch's endpoint fail the batch at validation, each
    // distinct url named by its first line.
    let errors: Vec<BatchErrorItem> = file
        .summary
        .urls
        .iter()
        .filter(|(url, _)| *url != endpoint)
        .map(|(url, line)| BatchErrorItem {
            code: "invalid_url".into(),
            message: format!(
                "line {line}: the request's url {url} is not the batch's endpoint {endpoint}"
            ),
            line: Some(*line),
            param: Some("url".into()),
        })
        .collect();
    let failed = !errors.is_empty();
    let row = BatchRow {
        id: ids::new(Kind::Batch),
        tenant: tenant.0.to_string(),
        input_file_id: file.id.clone(),
        endpoint,
        completion_window: window,
        status: if failed {
            Status::Failed
        } else {
            Status::Validating
        },
        ending: None,
        created_at,
        expires_at: created_at.saturating_add(app.config.completion_window.as_secs() as i64),
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        failed_at: failed.then_some(created_at),
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
        output_file_id: None,
        error_file_id: None,
        errors,
        metadata,
        model: file.summary.model.clone(),
        max_cost,
        // A batch refused at validation ran nothing: OpenAI counts it 0.
        total: if failed { 0 } else { file.lines },
        completed: 0,
        failed: 0,
        input_tokens: 0,
        cached_tokens: 0,
        output_tokens: 0,
        reasoning_tokens: 0,
        cost: 0.0,
        cost_known: true,
    };
    let tenant_name = row.tenant.clone();
    let fingerprint = format!("POST /v1/batches {value}");
    let to_run = row.clone();
    let claim = app
        .db
        .write(move |conn| {
            // Checked again in the write that creates the batch: a delete that came
            // in between must not leave a batch without its input.
            if FileRow::get(conn, &tenant_name, &row.input_file_id)?.is_none() {
                return Ok(Err(ApiError::invalid_param(
                    "input_file_id",
                    format!("no such file: {}", row.input_file_id),
                )));
            }
            match &key {
                Some(key) => idempotency::claim(conn, &tenant_name, key, &fingerprint, |conn| {
                    row.insert(conn)?;
                    Ok(row.id.clone())
                }),
                None => row.insert(conn).map(|()| Ok(Claim::Made(row.id.clone()))),
            }
        })
        .await??;
    let id = match claim {
        Claim::Made(id) => {
            if !failed {
                app.batches.start(to_run);
            }
            id
        }
        Claim::Replayed(id) => id,
    };
    Ok(Json(objects::batch(&app.batch(&tenant, &id).await?)))
}

/// Metadata as OpenAI takes it: at most 16 string pairs, keys up to 64 characters,
/// values up to 512.
fn check_metadata(metadata: Option<Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let bad = |m: String| ApiError::invalid_param("metadata", m);
    let map = match metadata {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(bad("metadata must be an object of strings".into())),
    };
    if map.len() > METADATA_PAIRS {
        return Err(bad(format!(
            "metadata holds at most {METADATA_PAIRS} pairs"
        )));
    }
    for (k, v) in &map {
        if k.chars().count() > METADATA_KEY {
            return Err(bad(format!(
                "metadata keys are at most {METADATA_KEY} characters"
            )));
        }
        match v {
            Value::String(s) if s.chars().count() <= METADATA_VALUE => {}
            Value::String(_) => {
                return Err(bad(format!(
                    "metadata values are at most {METADATA_VALUE} characters"
                )));
            }
            _ => return Err(bad(format!("metadata.{k} must be a string"))),
        }
    }
    Ok(Some(map))
}

/// `GET /v1/batches/{id}`: counts and usage as of the last commit.
pub async fn retrieve(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(objects::batch(&app.batch(&tenant, &id).await?)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/batches?after=&limit=`: newest first, `limit` 1 to 100 (default 20).
pub async fn list(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = objects::page_limit(q.limit, 20, 100)?;
    let tenant = tenant.0.to_string();
    let rows = app
        .db
        .read(move |conn| BatchRow::list(conn, &tenant, q.after.as_deref(), limit))
        .await?;
    Ok(Json(objects::page_of(rows, limit, objects::batch)))
}

/// `POST /v1/batches/{id}/cancel`: the batch stops sending at once and becomes
/// `cancelling`; requests in flight finish, and it ends `cancelled` with what was
/// done in its output file and the rest as `batch_cancelled` in its error file.
pub async fn cancel(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let batch = app.batch(&tenant, &id).await?;
    // A cancel is the same whenever it is repeated; its key only must not have served
    // another request.
    if let Some(key) = idempotency::key(&headers)? {
        let (tenant_name, request, batch_id) = (
            tenant.0.to_string(),
            format!("POST /v1/batches/{id}/cancel"),
            batch.id.clone(),
        );
        app.db
            .write(move |c| idempotency::claim(c, &tenant_name, &key, &request, |_| Ok(batch_id)))
            .await??;
    }
    match batch.status {
        Status::Validating | Status::InProgress | Status::Cancelling => {
            let id = batch.id.clone();
            app.db
                .write(move |c| {
                    let changed = c.execute(
                        "UPDATE batches SET status = 'cancelling', cancelling_at = ?2
                         WHERE id = ?1 AND status IN ('validating', 'in_progress') AND ending IS NULL",
                        rusqlite::params![id, now()],
                    )?;
                    if changed == 1 {
                        BatchRow::set_ending(c, &id, &Ending::Cancelled)?;
                    }
                    Ok(())
                })
                .await?;
            // From its row as it now is: a cancel repeated on a batch stuck in
            // `cancelling` (its process stopped first) ends it too.
            if let Some(row) = app.batch_any(&batch.id).await?
                && row.status == Status::Cancelling
            {
                app.batches.cancel(row);
            }
        }
        Status::Cancelled => {}
        status => {
            return Err(ApiError::Conflict(format!(
                "batch {id} is {}: only a batch that is validating or in progress can be cancelled",
                status.as_str()
            )));
        }
    }
    Ok(Json(objects::batch(&app.batch(&tenant, &id).await?)))
}

#[derive(Debug, Deserialize)]
pub struct OutputQuery {
    after: Option<i64>,
}

/// Lines read from the store per page of `/output`.
const OUTPUT_PAGE: i64 = 500;

/// `GET /v1/batches/{id}/output?after=N`: the output lines (successes and failures,
/// each as in the output or error file) of the requests finished so far, in the order
/// they finished, skipping the first N the client already has. Never waits: it answers
/// what is there. `X-Volley-Next-After` is the N to ask with next time, and
/// `X-Volley-Batch-Status` the batch's status when it was read.
pub async fn output(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    UrlPath(id): UrlPath<String>,
    query: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::invalid_param("after", "after must be 0 or more"));
    }
    let batch = app.batch(&tenant, &id).await?;
    // A fixed end, so the answer and its header agree however many finish meanwhile.
    let end = batch.completed + batch.failed;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let (db, batch_id) = (app.db.clone(), batch.id.clone());
    tokio::spawn(async move {
        let mut from = after;
        while from < end {
            let (id, page) = (batch_id.clone(), OUTPUT_PAGE.min(end - from));
            let rows = db
                .read(move |c| crate::rows::results_after(c, &id, from, page))
                .await;
            let rows = match rows {
                Ok(rows) if !rows.is_empty() => rows,
                Ok(_) => break,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            from += rows.len() as i64;
            let mut chunk = Vec::new();
            for (_, line) in rows {
                chunk.extend_from_slice(line.as_bytes());
                chunk.push(b'\n');
            }
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream(rx));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl"),
    );
    headers.insert("x-volley-next-after", HeaderValue::from(end.max(after)));
    headers.insert(
        "x-volley-batch-status",
        HeaderValue::from_static(batch.status.as_str()),
    );
    Ok(response)
}

/// A receiver as a stream, for a streamed body.
fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
