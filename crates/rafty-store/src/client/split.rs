//! A worker's side of the steps of split titles kept in the store (docs/split.md, "Workers without
//! shared storage"): which steps are finished, a step's file sent with its record, a finished step's
//! file fetched (resumed and checked as an image is), and the steps removed after the join.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use rafty_core::split::Record;
use rafty_core::store::{STEP_RECORD, encode_record, split_url_path};
use reqwest::StatusCode;
use reqwest::header::CONTENT_LENGTH;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::{StoreClient, StoreError, Transferred, error_chain, io};
use crate::api::{StepFiles, StepStored};

/// How long the store may take, once it has every byte, to hash, fsync and rename a step's file.
const SETTLE: Duration = Duration::from_secs(120);

impl StoreClient {
    /// The finished steps of split job `whole`, by file name.
    pub async fn steps(
        &self,
        whole: Uuid,
        cancel: &CancellationToken,
    ) -> Result<BTreeMap<String, Record>, StoreError> {
        let r = self
            .send_small(reqwest::Method::GET, split_url_path(whole, None), cancel)
            .await?;
        r.json::<StepFiles>()
            .await
            .map(|f| f.files)
            .map_err(|e| self.unavailable(format!("a step list that does not parse: {e}")))
    }

    /// Remove the steps of split job `whole` (after its join).
    pub async fn remove_steps(
        &self,
        whole: Uuid,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        self.send_small(reqwest::Method::DELETE, split_url_path(whole, None), cancel)
            .await
            .map(drop)
    }

    /// Fetch finished step `file` of split job `whole` to `dest`, checked against `sha256`
    /// (its record's), resumed after cuts as an image is.
    pub async fn fetch_step(
        &self,
        whole: Uuid,
        file: &str,
        dest: &Path,
        sha256: &str,
        cancel: &CancellationToken,
    ) -> Result<Transferred, StoreError> {
        self.fetch(
            &split_url_path(whole, Some(file)),
            dest,
            sha256,
            &|_| {},
            cancel,
        )
        .await
    }

    /// Send step `file` of split job `whole` (the file at `path`, described by `record`). The record
    /// in place is returned: this one, or that of the same step sent first by another worker, which
    /// stands. A cut sends the file again from its start.
    pub async fn put_step(
        &self,
        whole: Uuid,
        file: &str,
        path: &Path,
        record: &Record,
        cancel: &CancellationToken,
    ) -> Result<Record, StoreError> {
        let started = Instant::now();
        let mut tries = 0;
        let mut moved_any = false;
        let mut last_progress = Instant::now();
        let mut digest_refusals = 0;
        loop {
            let moved = Arc::new(AtomicU64::new(0));
            let why = match self
                .put_once(whole, file, path, record, &moved, cancel)
                .await
            {
                Ok(stored) => {
                    info!(%whole, file, bytes = record.size, secs = started.elapsed().as_secs_f64(), "step file sent to the store");
                    return Ok(stored);
                }
                Err(StoreError::Refused {
                    status: 422,
                    message,
                    ..
                }) if digest_refusals == 0 => {
                    digest_refusals += 1;
                    warn!(file, error = %message, "the store received other bytes than sent; sending again");
                    continue;
                }
                Err(StoreError::Unavailable { message, .. }) => message,
                Err(e) => return Err(e),
            };
            if moved.load(Ordering::Relaxed) > 0 {
                moved_any = true;
                last_progress = Instant::now();
            }
            self.pause_after(&mut tries, last_progress, moved_any, cancel, &why)
                .await?;
        }
    }

    async fn put_once(
        &self,
        whole: Uuid,
        file: &str,
        path: &Path,
        record: &Record,
        moved: &Arc<AtomicU64>,
        cancel: &CancellationToken,
    ) -> Result<Record, StoreError> {
        let f = tokio::fs::File::open(path).await.map_err(io(path))?;
        let counter = moved.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).map(move |c| {
            if let Ok(c) = &c {
                counter.fetch_add(c.len() as u64, Ordering::Relaxed);
            }
            c
        });
        let url = format!("{}{}", self.base, split_url_path(whole, Some(file)));
        let request = self
            .auth(self.http.put(&url))
            .header(STEP_RECORD, encode_record(record))
            .header(CONTENT_LENGTH, record.size)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .send();
        tokio::pin!(request);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let (mut seen, mut moved_at) = (0, Instant::now());
        let response = loop {
            tokio::select! {
                r = &mut request => break r.map_err(|e| self.unavailable(error_chain(&e)))?,
                _ = tick.tick() => {
                    let now = moved.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, moved_at) = (now, Instant::now());
                    }
                    let limit = if now >= record.size { SETTLE } else { self.stall };
                    if moved_at.elapsed() >= limit {
                        return Err(self.unavailable(format!(
                            "step {file}: the store took nothing for {} s",
                            limit.as_secs()
                        )));
                    }
                }
                _ = cancel.cancelled() => return Err(StoreError::Cancelled),
            }
        };
        if !response.status().is_success() {
            return Err(self
                .refusal(response)
                .await
                .unwrap_or_else(|| self.unavailable("server error")));
        }
        let status = response.status();
        let stored = response
            .json::<StepStored>()
            .await
            .map_err(|e| self.unavailable(format!("an answer that does not parse: {e}")))?;
        if status == StatusCode::OK {
            info!(%whole, file, made_by = %stored.record.host, "the same step reached the store first; it stands");
        }
        Ok(stored.record)
    }

    /// Send a request with no body to `path`, tried again a few times while the store does not
    /// answer; a refusal is its error.
    async fn send_small(
        &self,
        method: reqwest::Method,
        path: String,
        cancel: &CancellationToken,
    ) -> Result<reqwest::Response, StoreError> {
        let url = format!("{}{path}", self.base);
        let mut tries = 0;
        loop {
            let request = self.auth(self.http.request(method.clone(), &url));
            let sent = tokio::select! {
                r = tokio::time::timeout(self.stall, request.send()) => r,
                _ = cancel.cancelled() => return Err(StoreError::Cancelled),
            };
            let refused = match sent {
                Err(_) => self.unavailable("no answer"),
                Ok(Err(e)) => self.unavailable(error_chain(&e)),
                Ok(Ok(r)) if r.status().is_success() => return Ok(r),
                Ok(Ok(r)) => self
                    .refusal(r)
                    .await
                    .unwrap_or_else(|| self.unavailable("server error")),
            };
            match refused {
                StoreError::Unavailable { message, .. } => {
                    self.pause_after(&mut tries, Instant::now(), false, cancel, &message)
                        .await?
                }
                e => return Err(e),
            }
        }
    }
}
