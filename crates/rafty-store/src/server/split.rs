//! The steps of split titles, kept for workers without shared storage (docs/split.md, "Workers
//! without shared storage"): in `<output-dir>/.rafty-split/<whole>/`, the very place workers that
//! share the library use, so both kinds of worker can take the steps of one title.
//!
//! A step's file arrives in one `PUT` with its record in a header; the store hashes the bytes as
//! they arrive, and only a file of the record's size and SHA-256 is renamed into place, its record
//! beside it. A step already recorded is never replaced: its record describes the bytes there.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_lite::StreamExt;
use rafty_core::output;
use rafty_core::split::{self, Record};
use rafty_core::store::{STEP_RECORD, decode_record};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};
use uuid::Uuid;

use super::{Served, Shared, error, failure_response, hex, serve_file};
use crate::api::{StepFiles, StepStored};

// The error is the answer the handler returns as it is.
#[allow(clippy::result_large_err)]
fn split_dir(inner: &Shared, whole: &str) -> Result<(Uuid, PathBuf), Response> {
    let id: Uuid = whole.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{whole:?} is not a split job's id"),
        )
    })?;
    Ok((id, split::dir(&inner.settings.output_dir, id)))
}

#[allow(clippy::result_large_err)]
fn step_file(inner: &Shared, whole: &str, file: &str) -> Result<(Uuid, PathBuf), Response> {
    let (id, dir) = split_dir(inner, whole)?;
    if !split::is_step_file(file) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{file:?} is not a step's file (piece-NN.mkv or tracks.mkv)"),
        ));
    }
    Ok((id, dir.join(file)))
}

/// `GET /v1/split/<whole>`: the finished steps, by file name.
pub(super) async fn list(State(inner): State<Shared>, UrlPath(whole): UrlPath<String>) -> Response {
    match split_dir(&inner, &whole) {
        Ok((_, dir)) => axum::Json(StepFiles {
            files: Record::all(&dir),
        })
        .into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/split/<whole>/<file>`: a finished step's file (with `Range`, as images).
pub(super) async fn fetch(
    State(inner): State<Shared>,
    UrlPath((whole, file)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = match step_file(&inner, &whole, &file) {
        Ok((_, p)) => p,
        Err(r) => return r,
    };
    if Record::read(&path).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("step {file} of split job {whole} is not finished"),
        );
    }
    serve_file(&path, path.display().to_string(), Served::Step, &headers).await
}

/// `PUT /v1/split/<whole>/<file>` with its record in `x-rafty-record`: the step's file, in place
/// only when its bytes are the record's.
pub(super) async fn put(
    State(inner): State<Shared>,
    UrlPath((whole, file)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (id, path) = match step_file(&inner, &whole, &file) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let record = match headers
        .get(STEP_RECORD)
        .ok_or_else(|| format!("{STEP_RECORD} header missing"))
        .and_then(|v| {
            v.to_str()
                .map_err(|_| format!("{STEP_RECORD} is not ASCII"))
                .and_then(decode_record)
        }) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("step {file} of {id}: {e}")),
    };
    if record.sha256.len() != 64 || !record.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(StatusCode::BAD_REQUEST, "sha256 must be 64 hex digits");
    }
    if let Some(there) = Record::read(&path).filter(|_| path.exists()) {
        info!(whole = %id, file, made_by = %there.host, "step already in place; keeping it");
        return axum::Json(StepStored { record: there }).into_response();
    }
    let dir = path.parent().expect("in the split directory").to_owned();
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return failure_response(&output::io_failure(&dir, &e));
    }
    if let Some(free) = crate::free_bytes(&dir)
        && free < record.size
    {
        return error(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "store {}: {} has {free} bytes free, step {file} needs {}",
                inner.settings.host,
                dir.display(),
                record.size
            ),
        );
    }
    let temp = dir.join(format!(".{file}.{}.part", Uuid::new_v4().simple()));
    let stored = match receive(&inner, body, &temp, &record).await {
        Ok(()) => std::fs::rename(&temp, &path)
            .and_then(|()| record.write(&path))
            .map_err(|e| failure_response(&output::io_failure(&path, &e))),
        Err(r) => Err(r),
    };
    match stored {
        Ok(()) => {
            info!(whole = %id, file, host = %record.host, bytes = record.size, frames = record.frames, "step file verified and in place");
            (StatusCode::CREATED, axum::Json(StepStored { record })).into_response()
        }
        Err(r) => {
            let _ = std::fs::remove_file(&temp);
            r
        }
    }
}

/// Write the body to `temp`, hashing it, and refuse anything but the record's size and digest.
async fn receive(inner: &Shared, body: Body, temp: &Path, record: &Record) -> Result<(), Response> {
    let io = |e: std::io::Error| failure_response(&output::io_failure(temp, &e));
    let mut out = tokio::fs::File::create(temp).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut stream = body.into_data_stream();
    let stall = inner.settings.stall_timeout;
    loop {
        let chunk = match tokio::time::timeout(stall, stream.next()).await {
            Err(_) => {
                return Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("nothing arrived for {} s", stall.as_secs()),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("the body was cut: {e}"),
                ));
            }
            Ok(Some(Ok(c))) => c,
        };
        total += chunk.len() as u64;
        if total > record.size {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the record declares {} bytes; more arrived", record.size),
            ));
        }
        hasher.update(&chunk);
        out.write_all(&chunk).await.map_err(io)?;
    }
    out.sync_all().await.map_err(io)?;
    let got = hex(&hasher.finalize());
    if total != record.size || got != record.sha256 {
        warn!(file = %temp.display(), declared = %record.sha256, got, bytes = total, "step file refused: not the record's bytes");
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the bytes received ({total}, SHA-256 {got}) are not the record's ({}, {}); send it again",
                record.size, record.sha256
            ),
        ));
    }
    Ok(())
}

/// `DELETE /v1/split/<whole>`: the steps, once the join has put the title in the library.
pub(super) async fn remove(
    State(inner): State<Shared>,
    UrlPath(whole): UrlPath<String>,
) -> Response {
    let (id, dir) = match split_dir(&inner, &whole) {
        Ok(d) => d,
        Err(r) => return r,
    };
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => info!(whole = %id, "split steps removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return failure_response(&output::io_failure(&dir, &e)),
    }
    // `.rafty-split` itself goes when no other split is under way.
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    StatusCode::NO_CONTENT.into_response()
}
