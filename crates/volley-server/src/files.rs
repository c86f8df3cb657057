//! The Files API: `POST /v1/files` (a batch input, streamed to disk and validated),
//! `GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
//! `DELETE /v1/files/{id}`. A tenant sees only its own files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use crate::App;
use crate::auth::Tenant;
use crate::error::ApiError;
use crate::idempotency::{self, Claim};
use crate::ids::{self, Kind};
use crate::objects;
use crate::rows::{FileRow, now};
use crate::upload::{Receiver, Refused, too_large};

/// Where file contents live: `DATA_DIR/files/<id>.jsonl`, named only by ids the
/// gateway made (checked by [`ids::is_valid`] before any path is built).
#[derive(Debug, Clone)]
pub struct FileDir(PathBuf);

impl FileDir {
    pub fn new(dir: PathBuf) -> FileDir {
        FileDir(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// The path of a file's content; `None` for an id the gateway cannot have made.
    pub fn path_of(&self, id: &str) -> Option<PathBuf> {
        ids::is_valid(Kind::File, id).then(|| self.0.join(format!("{id}.jsonl")))
    }

    /// Removes what a crash left: uploads not finished, and contents whose file the
    /// store does not know (an output written just before a kill, say).
    pub fn sweep(&self, known: &std::collections::HashSet<String>) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.0)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let stale = match name.strip_suffix(".jsonl") {
                Some(id) if ids::is_valid(Kind::File, id) => !known.contains(id),
                _ => name.starts_with(".upload-") || name.starts_with(".output-"),
            };
            if stale && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The longest `purpose` or filename taken, in bytes.
const MAX_FIELD: usize = 1024;

/// `POST /v1/files`.
pub async fn create(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let headers = request.headers().clone();
    let limits = app.config.limits;
    // Refused before a byte of it is read: the client said how much it sends.
    if let Some(length) = content_length(&headers)
        && length > limits.max_upload + MULTIPART_SLACK
    {
        return Err(refused(too_large(limits.max_upload)));
    }
    let key = idempotency::key(&headers)?;
    // Each upload holds a thread that writes and checks it: a bounded number at once.
    let _slot = app
        .uploads
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::RateLimited {
            message: "too many uploads at once; retry in a moment".into(),
            retry_after_secs: 1,
        })?;
    let framing = Arc::new(AtomicI64::new(FRAMING_ALLOWANCE));
    let request = with_framing_budget(request, framing.clone());
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::invalid(format!("expected a multipart/form-data upload: {e}")))?;
    let mut purpose: Option<String> = None;
    let mut received = None;
    while let Some(mut field) = stalled(multipart.next_field())
        .await?
        .map_err(multipart_error)?
    {
        match field.name() {
            Some("file") => {
                let filename = field
                    .file_name()
                    .map(|n| n.chars().take(MAX_FIELD).collect::<String>())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "upload.jsonl".into());
                let mut receiver = Receiver::start(
                    app.files.dir(),
                    &filename,
                    limits,
                    app.config.defaults.clone(),
                );
                let pumped: Result<(), ApiError> = async {
                    let (started, mut got) = (std::time::Instant::now(), 0u64);
                    while let Some(chunk) =
                        stalled(field.chunk()).await?.map_err(multipart_error)?
                    {
                        framing.fetch_add(chunk.len() as i64, Ordering::Relaxed);
                        got += chunk.len() as u64;
                        keeps_pace(started, got)?;
                        receiver.feed(chunk).await.map_err(refused)?;
                    }
                    Ok(())
                }
                .await;
                if let Err(e) = pumped {
                    // Gone from disk before the client hears why.
                    receiver.abandon().await;
                    return Err(e);
                }
                received = Some((filename, receiver.finish().await));
            }
            Some("purpose") => {
                let text = small_text(&mut field, "purpose").await?;
                framing.fetch_add(text.len() as i64, Ordering::Relaxed);
                purpose = Some(text);
            }
            // `expires_after[…]` and anything else: read and let be (files are kept
            // until deleted).
            _ => {
                while let Some(chunk) = stalled(field.chunk()).await?.map_err(multipart_error)? {
                    framing.fetch_add(chunk.len() as i64, Ordering::Relaxed);
                }
            }
        }
    }
    let Some((filename, received)) = received else {
        return Err(ApiError::invalid_param(
            "file",
            "no file: send the JSONL as the multipart field \"file\"",
        ));
    };
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(ApiError::invalid_param(
                "purpose",
                format!(
                    "purpose {other:?} is not taken: volley serve keeps batch input files only (purpose \"batch\")"
                ),
            ));
        }
        None => return Err(ApiError::invalid_param("purpose", "purpose is required")),
    }
    let received = received.map_err(refused)?;
    let id = ids::new(Kind::File);
    let row = FileRow {
        id: id.clone(),
        tenant: tenant.0.to_string(),
        filename,
        purpose: "batch".into(),
        bytes: received.bytes as i64,
        created_at: now(),
        lines: received.requests as i64,
        summary: received.summary,
    };
    let path = app
        .files
        .path_of(&id)
        .ok_or_else(|| ApiError::Internal("a new file id is not valid".into()))?;
    let temp = received.temp;
    tokio::task::spawn_blocking(move || temp.persist(&path).map_err(|e| e.error))
        .await
        .map_err(|e| ApiError::Internal(format!("cannot keep the upload: {e}")))?
        .map_err(|e| ApiError::Internal(format!("cannot keep the upload: {e}")))?;
    let request = format!(
        "POST /v1/files purpose=batch filename={} content={:016x}",
        row.filename, received.content_hash
    );
    let tenant_name = row.tenant.clone();
    let stored = app
        .db
        .write(move |conn| match &key {
            Some(key) => idempotency::claim(conn, &tenant_name, key, &request, |conn| {
                row.insert(conn)?;
                Ok(row.id.clone())
            }),
            None => row.insert(conn).map(|()| Ok(Claim::Made(row.id.clone()))),
        })
        .await;
    let claim = match stored {
        Ok(Ok(claim)) => claim,
        Ok(Err(e)) => {
            app.files.remove(&id).await;
            return Err(e);
        }
        Err(e) => {
            app.files.remove(&id).await;
            return Err(e.into());
        }
    };
    let id = match claim {
        Claim::Made(id) => id,
        Claim::Replayed(first) => {
            app.files.remove(&id).await;
            first
        }
    };
    let row = app.file(&tenant, &id).await?;
    Ok(Json(objects::file(&row)))
}

/// Bytes of multipart framing (part headers, boundaries, what the parser reads ahead)
/// an upload may have read beyond the field data handed on: a part header that never
/// ends is refused once it passes this, rather than buffered whole.
const FRAMING_ALLOWANCE: i64 = 4 << 20;

/// How long an upload may send nothing before it is given up.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The request with its body counted against `budget`, which the handler refills by
/// each byte of field data it takes: only framing is left to drain it.
fn with_framing_budget(request: Request, budget: Arc<AtomicI64>) -> Request {
    let (parts, body) = request.into_parts();
    let counted = futures_util::StreamExt::map(body.into_data_stream(), move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        let len = chunk.len() as i64;
        if budget.fetch_sub(len, Ordering::Relaxed) - len < 0 {
            return Err(std::io::Error::other(format!(
                "the multipart framing (a part's headers) runs past {} MB",
                FRAMING_ALLOWANCE >> 20
            )));
        }
        Ok(chunk)
    });
    Request::from_parts(parts, Body::from_stream(counted))
}

/// The slowest an upload may arrive on average, past its first [`UPLOAD_IDLE`]: a
/// client trickling a byte a minute would hold an upload's thread for ever.
const UPLOAD_MIN_RATE: u64 = 16 * 1024;

fn keeps_pace(started: std::time::Instant, received: u64) -> Result<(), ApiError> {
    let elapsed = started.elapsed();
    if elapsed > UPLOAD_IDLE && received < UPLOAD_MIN_RATE * elapsed.as_secs() {
        return Err(ApiError::Timeout(format!(
            "the upload is arriving slower than {} KB/s",
            UPLOAD_MIN_RATE / 1024
        )));
    }
    Ok(())
}

/// A step of reading the upload, given up when the client sends nothing for a while.
async fn stalled<T>(step: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
    tokio::time::timeout(UPLOAD_IDLE, step).await.map_err(|_| {
        ApiError::Timeout(format!(
            "the upload sent nothing for {} s",
            UPLOAD_IDLE.as_secs()
        ))
    })
}

/// Room for the multipart framing around a file of the largest size: a
/// Content-Length up to this much over the limit may still hold a file within it.
const MULTIPART_SLACK: u64 = 64 * 1024;

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn refused(r: Refused) -> ApiError {
    match r {
        Refused::Invalid(message) => ApiError::Invalid {
            message,
            param: Some("file"),
            code: Some("invalid_file"),
        },
        Refused::TooLarge(message) => ApiError::TooLarge {
            message,
            param: Some("file"),
        },
        Refused::Disk(message) => ApiError::Internal(message),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    // Over the body limit axum sets on the route: the upload limit.
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::TooLarge {
            message: e.body_text(),
            param: Some("file"),
        };
    }
    // The cause (our framing budget, a dropped connection) is deeper in the chain.
    let mut why = e.body_text();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !why.contains(&text) {
            why.push_str(": ");
            why.push_str(&text);
        }
        source = cause.source();
    }
    ApiError::invalid(format!("the upload could not be read: {why}"))
}

/// A short text field, read with a cap so a huge one cannot fill memory.
async fn small_text(
    field: &mut axum::extract::multipart::Field<'_>,
    name: &'static str,
) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = stalled(field.chunk()).await?.map_err(multipart_error)? {
        if bytes.len() + chunk.len() > MAX_FIELD {
            return Err(ApiError::invalid_param(name, format!("{name} is too long")));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::invalid_param(name, format!("{name} is not UTF-8")))
}

impl FileDir {
    /// Removes a file's content, if it is there.
    pub async fn remove(&self, id: &str) {
        if let Some(path) = self.path_of(id) {
            let _ = tokio::fs::remove_file(path).await;
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
    order: Option<String>,
    purpose: Option<String>,
}

/// `GET /v1/files`: newest first unless `order=asc`, `limit` 1 to 10,000.
pub async fn list(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = objects::page_limit(q.limit, 10_000, 10_000)?;
    let newest_first = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "order",
                "order must be asc or desc",
            ));
        }
    };
    let tenant = tenant.0.to_string();
    let rows = app
        .db
        .read(move |conn| {
            FileRow::list(
                conn,
                &tenant,
                q.after.as_deref(),
                limit,
                newest_first,
                q.purpose.as_deref(),
            )
        })
        .await?;
    Ok(Json(objects::page_of(rows, limit, objects::file)))
}

/// `GET /v1/files/{id}`.
pub async fn retrieve(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(objects::file(&app.file(&tenant, &id).await?)))
}

/// `GET /v1/files/{id}/content`: the bytes as stored, streamed.
pub async fn content(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let row = app.file(&tenant, &id).await?;
    let path = app
        .files
        .path_of(&row.id)
        .ok_or_else(|| ApiError::not_found("file", &id))?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!("file {}: its content is gone: {e}", row.id);
        ApiError::Internal(format!("the content of {} cannot be read", row.id))
    })?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, row.bytes.to_string()),
        ],
        body,
    )
        .into_response())
}

/// `DELETE /v1/files/{id}`. The input of a batch that is still running is kept until
/// the batch ends (a 409): the batch would be lost on a restart without it.
pub async fn delete(
    State(app): State<App>,
    axum::Extension(tenant): axum::Extension<Tenant>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    if !ids::is_valid(Kind::File, &id) {
        return Err(ApiError::not_found("file", &id));
    }
    let (tenant_name, file_id) = (tenant.0.to_string(), id.clone());
    let deleted = app
        .db
        .write(move |conn| {
            let busy: Option<String> = rusqlite::OptionalExtension::optional(conn.query_row(
                "SELECT id FROM batches WHERE input_file_id = ?1 AND tenant = ?2
                   AND status IN ('validating', 'in_progress', 'finalizing', 'cancelling') LIMIT 1",
                rusqlite::params![file_id, tenant_name],
                |r| r.get(0),
            ))?;
            if let Some(batch) = busy {
                return Ok(Err(batch));
            }
            FileRow::delete(conn, &tenant_name, &file_id).map(Ok)
        })
        .await?;
    match deleted {
        Err(batch) => Err(ApiError::Conflict(format!(
            "file {id} is the input of batch {batch}, which has not ended: cancel it or wait until it ends"
        ))),
        Ok(false) => Err(ApiError::not_found("file", &id)),
        Ok(true) => {
            app.files.remove(&id).await;
            Ok(Json(
                serde_json::json!({"id": id, "object": "file", "deleted": true}),
            ))
        }
    }
}
