//! A worker's side of the store: the image fetched into scratch and the output sent back, each
//! verified by SHA-256 and resumed after a cut (a download with `Range` + `If-Range`, an upload from
//! the offset the store has). The client talks only to the store it was built for: a job supplies
//! at most the image's place in that store ([`rafty_core::store::image_url_path_of`]), never a host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use rafty_core::config::Loaded;
use rafty_core::store::{HEALTH_PATH, OUTPUTS_PREFIX, UPLOAD_OFFSET, UPLOADS_PREFIX, encode_path};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE, RANGE};
use sha2::{Digest, Sha256};
use tokio::io::AsyncSeekExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{ApiError, Health, OutputOffer, OutputState};
use crate::server::hex;

/// Tries of a transfer that has not moved a byte yet before it gives up.
const NOT_STARTED_TRIES: u32 = 3;

mod split;

/// Why a transfer did not end well. Each names the store and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store refused this worker's token (wrong, revoked or missing).
    #[error("store {store} refused this worker's token: {message}")]
    Unauthorized {
        /// The store.
        store: String,
        /// Its answer.
        message: String,
    },
    /// The store could not be reached, or kept failing, for longer than the worker resumes.
    #[error("store {store}: {message}")]
    Unavailable {
        /// The store.
        store: String,
        /// What happened last.
        message: String,
    },
    /// The store has no such image (it may appear: a store's disk can lag like shared storage).
    #[error("store {store}: {message}")]
    NotFound {
        /// The store.
        store: String,
        /// Its answer.
        message: String,
    },
    /// The store refused the request for good (a path outside its roots, a bad offer).
    #[error("store {store} refused it ({status}): {message}")]
    Refused {
        /// The store.
        store: String,
        /// The HTTP status.
        status: u16,
        /// Its answer.
        message: String,
    },
    /// The output's name is taken in the library by another job's file.
    #[error("store {store}: {message}")]
    Conflict {
        /// The store.
        store: String,
        /// Its answer.
        message: String,
    },
    /// The image fetched twice did not have the job's digest.
    #[error(
        "{object} from store {store} has SHA-256 {got} (fetched twice), but the job says {expected}: the image on the store differs from the one queued"
    )]
    Digest {
        /// The store.
        store: String,
        /// What was fetched.
        object: String,
        /// The job's digest.
        expected: String,
        /// What arrived (the second time).
        got: String,
    },
    /// There is not room for it (here, or in the library).
    #[error("{0}")]
    Full(String),
    /// Writing or reading a local file failed.
    #[error("{path}: {source}")]
    Local {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The worker was asked to stop.
    #[error("stopped")]
    Cancelled,
    /// The client cannot be built (a bad URL or CA file).
    #[error("{0}")]
    Config(String),
}

/// How far a transfer is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferProgress {
    /// Bytes in place.
    pub bytes: u64,
    /// Bytes in all.
    pub total: u64,
    /// Times it was cut and resumed.
    pub resumed: u32,
}

/// A finished transfer.
#[derive(Debug, Clone, PartialEq)]
pub struct Transferred {
    /// Its size.
    pub bytes: u64,
    /// Times it was cut and resumed.
    pub resumed: u32,
    /// Bytes received (or sent) twice because a resume could not continue where it stopped.
    pub resent: u64,
    /// Wall time, seconds.
    pub secs: f64,
}

/// How an output upload ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Uploaded {
    /// The verified output is in the library at this path (on the store's machine), from these bytes.
    Committed(PathBuf, Transferred),
    /// The same work was there already, at this path with this sidecar; nothing (more) was sent.
    InPlace(PathBuf, Box<rafty_core::output::Sidecar>),
}

/// A client of one store.
#[derive(Clone)]
pub struct StoreClient {
    base: String,
    token: String,
    http: reqwest::Client,
    stall: Duration,
    resume_for: Duration,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Local {
        path: path.to_owned(),
        source,
    }
}

impl StoreClient {
    /// A client of the store at `base` presenting `token`.
    pub fn new(
        base: &str,
        token: String,
        ca_file: Option<&Path>,
        stall: Duration,
        resume_for: Duration,
    ) -> Result<StoreClient, StoreError> {
        // reqwest is built without a provider of its own: ring, as everywhere in Rafty (an error only
        // says one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(stall)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            // A job names no URL the worker follows: no redirect either.
            .redirect(reqwest::redirect::Policy::none())
            .http1_only();
        if base.starts_with("https://") {
            let tls = crate::tls::client_config(ca_file)
                .map_err(|e| StoreError::Config(e.to_string()))?;
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder
            .build()
            .map_err(|e| StoreError::Config(format!("[store] url {base}: {e}")))?;
        Ok(StoreClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
            stall,
            resume_for,
        })
    }

    /// The client `[store]` in a worker's configuration asks for; `None` without a `url`.
    pub fn from_config(loaded: &Loaded) -> Result<Option<StoreClient>, StoreError> {
        let s = &loaded.config.store;
        let Some(url) = &s.url else {
            return Ok(None);
        };
        let file = loaded.store_token_file().ok_or_else(|| {
            StoreError::Config(format!(
                "[store] url is set in {} but [store] token-file is not: a worker needs its token",
                loaded.source_name()
            ))
        })?;
        let token = crate::tokens::read_tokens(&file)
            .map_err(|e| StoreError::Config(e.to_string()))?
            .swap_remove(0);
        StoreClient::new(
            url,
            token,
            s.ca_file.as_deref(),
            s.stall_timeout,
            s.resume_for,
        )
        .map(Some)
    }

    /// The store's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        r.header(AUTHORIZATION, format!("Bearer {}", self.token))
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            store: self.base.clone(),
            message: message.to_string(),
        }
    }

    /// What a status that is not success means (`None`: try again).
    async fn refusal(&self, response: reqwest::Response) -> Option<StoreError> {
        let status = response.status();
        let message = response
            .json::<ApiError>()
            .await
            .map(|e| e.error)
            .unwrap_or_else(|_| status.to_string());
        let store = self.base.clone();
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if !message.contains("source") => {
                Some(StoreError::Unauthorized { store, message })
            }
            StatusCode::NOT_FOUND => Some(StoreError::NotFound { store, message }),
            StatusCode::CONFLICT => Some(StoreError::Conflict { store, message }),
            StatusCode::INSUFFICIENT_STORAGE => {
                Some(StoreError::Full(format!("store {store}: {message}")))
            }
            s if s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT =>
            {
                None
            }
            s => Some(StoreError::Refused {
                store,
                status: s.as_u16(),
                message,
            }),
        }
    }

    /// Whether the store answers and accepts this worker's token; its library's naming.
    pub async fn health(&self) -> Result<Health, StoreError> {
        let url = format!("{}{HEALTH_PATH}", self.base);
        let response = tokio::time::timeout(self.stall, self.auth(self.http.get(&url)).send())
            .await
            .map_err(|_| self.unavailable("no answer"))?
            .map_err(|e| self.unavailable(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(self
                .refusal(response)
                .await
                .unwrap_or_else(|| self.unavailable("server error")));
        }
        response
            .json()
            .await
            .map_err(|e| self.unavailable(format!("a health answer that does not parse: {e}")))
    }

    /// Sleep before the next try, or give up when nothing moved for `resume_for`.
    async fn pause(
        &self,
        tries: &mut u32,
        last_progress: Instant,
        cancel: &CancellationToken,
        why: &str,
    ) -> Result<(), StoreError> {
        self.pause_after(tries, last_progress, true, cancel, why)
            .await
    }

    /// [`Self::pause`], for a transfer that may not have begun: one that never moved a byte gives up
    /// after a few quick tries (the store is down, or refuses the connection), so the job goes to the
    /// retry ladder instead of waiting here.
    async fn pause_after(
        &self,
        tries: &mut u32,
        last_progress: Instant,
        started: bool,
        cancel: &CancellationToken,
        why: &str,
    ) -> Result<(), StoreError> {
        if !started && *tries >= NOT_STARTED_TRIES {
            return Err(self.unavailable(format!("{why} (tried {} times)", *tries + 1)));
        }
        if last_progress.elapsed() >= self.resume_for {
            return Err(self.unavailable(format!(
                "{why}; nothing moved for {} s, giving up for now",
                self.resume_for.as_secs()
            )));
        }
        let wait =
            Duration::from_millis(250 * 2u64.pow((*tries).min(5))).min(Duration::from_secs(5));
        *tries += 1;
        warn!(store = %self.base, error = why, retry_in_ms = wait.as_millis() as u64, "transfer interrupted; resuming");
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = cancel.cancelled() => Err(StoreError::Cancelled),
        }
    }

    /// Fetch the image at `url_path` (`/v1/images/...`) to `dest`, resuming after cuts; the file is
    /// fsynced and has `sha256` when this returns. One mismatch is fetched again from zero; a second
    /// is [`StoreError::Digest`]. Nothing is left at `dest` on an error.
    pub async fn fetch(
        &self,
        url_path: &str,
        dest: &Path,
        sha256: &str,
        progress: &(dyn Fn(TransferProgress) + Sync),
        cancel: &CancellationToken,
    ) -> Result<Transferred, StoreError> {
        let result = self
            .fetch_checked(url_path, dest, sha256, progress, cancel)
            .await;
        if result.is_err() {
            let _ = std::fs::remove_file(dest);
        }
        result
    }

    async fn fetch_checked(
        &self,
        url_path: &str,
        dest: &Path,
        sha256: &str,
        progress: &(dyn Fn(TransferProgress) + Sync),
        cancel: &CancellationToken,
    ) -> Result<Transferred, StoreError> {
        let started = Instant::now();
        let mut resent = 0;
        let mut resumed = 0;
        let mut first_digest = None;
        for _ in 0..2 {
            let (got, bytes, cuts, again) =
                self.fetch_once(url_path, dest, progress, cancel).await?;
            resent += again;
            resumed += cuts;
            if got.eq_ignore_ascii_case(sha256) {
                info!(
                    image = url_path,
                    bytes,
                    resumed,
                    resent,
                    secs = started.elapsed().as_secs_f64(),
                    "image fetched and verified"
                );
                return Ok(Transferred {
                    bytes,
                    resumed,
                    resent,
                    secs: started.elapsed().as_secs_f64(),
                });
            }
            warn!(image = url_path, expected = sha256, got = %got, "fetched image has another digest; fetching it again from zero");
            first_digest = Some(got);
        }
        let _ = first_digest;
        let got = sha256_of(dest).await.unwrap_or_default();
        Err(StoreError::Digest {
            store: self.base.clone(),
            object: url_path.to_owned(),
            expected: sha256.to_owned(),
            got,
        })
    }

    /// One whole download from zero (resumed within): (digest, size, resumes, bytes re-received).
    async fn fetch_once(
        &self,
        url_path: &str,
        dest: &Path,
        progress: &(dyn Fn(TransferProgress) + Sync),
        cancel: &CancellationToken,
    ) -> Result<(String, u64, u32, u64), StoreError> {
        let url = format!("{}{url_path}", self.base);
        let mut out = Writer::start(dest);
        let mut have: u64 = 0;
        let mut total: Option<u64> = None;
        let mut tag: Option<String> = None;
        let mut resumed = 0u32;
        let mut resent = 0u64;
        let mut tries = 0u32;
        let mut last_progress = Instant::now();
        let mut last_report = Instant::now();
        let mut space_checked = false;
        loop {
            if total == Some(have) {
                break;
            }
            let mut request = self.auth(self.http.get(&url));
            if have > 0 {
                request = request.header(RANGE, format!("bytes={have}-"));
                if let Some(t) = &tag {
                    request = request.header(IF_RANGE, t);
                }
            }
            let sent = tokio::select! {
                r = tokio::time::timeout(self.stall, request.send()) => r,
                _ = cancel.cancelled() => return Err(StoreError::Cancelled),
            };
            let response = match sent {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    self.pause_after(
                        &mut tries,
                        last_progress,
                        have > 0 || resumed > 0,
                        cancel,
                        &error_chain(&e),
                    )
                    .await?;
                    continue;
                }
                Err(_) => {
                    self.pause_after(
                        &mut tries,
                        last_progress,
                        have > 0 || resumed > 0,
                        cancel,
                        "no answer",
                    )
                    .await?;
                    continue;
                }
            };
            match response.status() {
                StatusCode::OK => {
                    if have > 0 {
                        // The store sent the whole image (it changed, or ignored the range).
                        warn!(
                            image = url_path,
                            discarded = have,
                            "the store restarted the image from zero"
                        );
                        resent += have;
                        out.put(Piece::Reset).await?;
                        have = 0;
                    }
                    total = response.content_length();
                }
                StatusCode::PARTIAL_CONTENT => {
                    let range = response
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_content_range);
                    match range {
                        Some((start, len)) if start == have => total = Some(len),
                        _ => {
                            self.pause(
                                &mut tries,
                                last_progress,
                                cancel,
                                "a partial answer that does not continue the file",
                            )
                            .await?;
                            continue;
                        }
                    }
                }
                _ => match self.refusal(response).await {
                    Some(e) => return Err(e),
                    None => {
                        self.pause_after(
                            &mut tries,
                            last_progress,
                            have > 0 || resumed > 0,
                            cancel,
                            "server error",
                        )
                        .await?;
                        continue;
                    }
                },
            }
            if tag.is_none() || have == 0 {
                tag = response
                    .headers()
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .filter(|t| !t.starts_with("W/"))
                    .map(str::to_owned);
            }
            if !space_checked && let Some(total) = total {
                let dir = dest.parent().unwrap_or(Path::new("/"));
                if let Some(free) = crate::free_bytes(dir)
                    && free < total.saturating_sub(have)
                {
                    return Err(StoreError::Full(format!(
                        "scratch {} has {free} bytes free; the image is {total} bytes: free some space or point [transcode] scratch-dir elsewhere",
                        dir.display()
                    )));
                }
                space_checked = true;
            }
            if resumed > 0 || have > 0 {
                info!(image = url_path, from = have, "resuming download");
            }
            let mut body = response.bytes_stream();
            let mut cut = None;
            loop {
                let next = tokio::select! {
                    n = tokio::time::timeout(self.stall, body.next()) => n,
                    _ = cancel.cancelled() => return Err(StoreError::Cancelled),
                };
                match next {
                    Ok(Some(Ok(chunk))) => {
                        have += chunk.len() as u64;
                        out.put(Piece::Data(chunk)).await?;
                        last_progress = Instant::now();
                        tries = 0;
                        if last_report.elapsed() >= Duration::from_millis(500) {
                            last_report = Instant::now();
                            progress(TransferProgress {
                                bytes: have,
                                total: total.unwrap_or(have),
                                resumed,
                            });
                        }
                    }
                    Ok(Some(Err(e))) => {
                        cut = Some(error_chain(&e));
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        cut = Some(format!("nothing received for {} s", self.stall.as_secs()));
                        break;
                    }
                }
            }
            match (cut, total) {
                (None, Some(t)) if have == t => break,
                (None, None) => {
                    total = Some(have);
                    break;
                }
                (cut, _) => {
                    resumed += 1;
                    let why = cut.unwrap_or_else(|| "the answer ended early".to_owned());
                    self.pause(&mut tries, last_progress, cancel, &why).await?;
                }
            }
        }
        let (digest, written) = out.finish().await?;
        debug_assert_eq!(written, have);
        let total = total.unwrap_or(have);
        progress(TransferProgress {
            bytes: have,
            total,
            resumed,
        });
        Ok((digest, have, resumed, resent))
    }

    /// The finished output at `output` (relative to the library), when there is one.
    pub async fn find_output(
        &self,
        output: &str,
    ) -> Result<Option<(PathBuf, rafty_core::output::Sidecar)>, StoreError> {
        let url = format!("{}{OUTPUTS_PREFIX}/{}", self.base, encode_path(output));
        let response = tokio::time::timeout(self.stall, self.auth(self.http.get(&url)).send())
            .await
            .map_err(|_| self.unavailable("no answer"))?
            .map_err(|e| self.unavailable(error_chain(&e)))?;
        match response.status() {
            StatusCode::OK => response
                .json::<crate::api::Found>()
                .await
                .map(|f| Some((f.path, f.sidecar)))
                .map_err(|e| self.unavailable(format!("a sidecar that does not parse: {e}"))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self
                .refusal(response)
                .await
                .unwrap_or_else(|| self.unavailable("server error"))),
        }
    }

    /// Send the verified output at `file` to the store as `offer` and wait until it is in the
    /// library (or the same work is found there). Resumed after cuts; a store that lost the upload
    /// (restarted) gets it offered again.
    pub async fn upload(
        &self,
        offer: &OutputOffer,
        file: &Path,
        progress: &(dyn Fn(TransferProgress) + Sync),
        cancel: &CancellationToken,
    ) -> Result<Uploaded, StoreError> {
        let started = Instant::now();
        let mut tries = 0u32;
        let mut last_progress = Instant::now();
        let mut resumed = 0u32;
        let mut resent = 0u64;
        let mut digest_refusals = 0;
        'offer: loop {
            let state = match self.post_json(OUTPUTS_PREFIX, offer, cancel).await {
                Ok(s) => s,
                Err(StoreError::Unavailable { message, .. }) => {
                    self.pause_after(&mut tries, last_progress, resumed > 0, cancel, &message)
                        .await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (id, mut offset) = match state {
                OutputState::Upload { upload, offset } => (upload, offset),
                OutputState::InPlace { path, sidecar }
                | OutputState::Committed { path, sidecar } => {
                    return Ok(Uploaded::InPlace(path, sidecar));
                }
            };
            let at = format!("{UPLOADS_PREFIX}/{id}");
            loop {
                if offset < offer.size {
                    let before = offset;
                    match self
                        .send_from(&at, file, offset, offer.size, progress, resumed, cancel)
                        .await
                    {
                        Ok(o) => offset = o,
                        Err(SendError::Store(e)) => return Err(e),
                        Err(SendError::Gone) => continue 'offer,
                        Err(SendError::Cut(why, known, handed)) => {
                            resumed += 1;
                            if known > before {
                                last_progress = Instant::now();
                            }
                            self.pause(&mut tries, last_progress, cancel, &why).await?;
                            // Where to go on from: what the store holds (asked until it answers).
                            offset = loop {
                                match self.remote_offset(&at, cancel).await {
                                    Ok(Some(o)) => break o,
                                    Ok(None) => continue 'offer,
                                    Err(StoreError::Cancelled) => {
                                        return Err(StoreError::Cancelled);
                                    }
                                    Err(e) => {
                                        self.pause(
                                            &mut tries,
                                            last_progress,
                                            cancel,
                                            &e.to_string(),
                                        )
                                        .await?
                                    }
                                }
                            };
                            if offset > before {
                                last_progress = Instant::now();
                            }
                            // Handed to the connection that was cut, never stored.
                            resent += handed.saturating_sub(offset);
                            continue;
                        }
                    }
                    if offset > before {
                        last_progress = Instant::now();
                        tries = 0;
                    }
                    continue;
                }
                match self
                    .post_json::<()>(&format!("{at}/commit"), &(), cancel)
                    .await
                {
                    Ok(OutputState::Committed { path, .. }) => {
                        info!(output = %offer.output, bytes = offer.size, resumed, resent, secs = started.elapsed().as_secs_f64(), "output uploaded and in place");
                        return Ok(Uploaded::Committed(
                            path,
                            Transferred {
                                bytes: offer.size,
                                resumed,
                                resent,
                                secs: started.elapsed().as_secs_f64(),
                            },
                        ));
                    }
                    Ok(OutputState::InPlace { path, sidecar }) => {
                        return Ok(Uploaded::InPlace(path, sidecar));
                    }
                    Ok(OutputState::Upload { offset: o, .. }) => offset = o,
                    Err(StoreError::Refused {
                        status: 422,
                        message,
                        ..
                    }) if digest_refusals == 0 => {
                        digest_refusals += 1;
                        warn!(output = %offer.output, error = %message, "the store received other bytes than sent; sending again");
                        resent += offer.size;
                        continue 'offer;
                    }
                    Err(StoreError::NotFound { .. }) => {
                        // The commit may have happened with its answer lost in a cut.
                        if let Ok(Some((path, found))) = self.find_output(&offer.output).await
                            && found.job_id == offer.sidecar.job_id
                        {
                            return Ok(Uploaded::InPlace(path, Box::new(found)));
                        }
                        continue 'offer;
                    }
                    Err(StoreError::Unavailable { message, .. }) => {
                        self.pause(&mut tries, last_progress, cancel, &message)
                            .await?;
                        if let Ok(Some((path, found))) = self.find_output(&offer.output).await
                            && found.job_id == offer.sidecar.job_id
                        {
                            return Ok(Uploaded::InPlace(path, Box::new(found)));
                        }
                        match self.remote_offset(&at, cancel).await {
                            Ok(Some(o)) => offset = o,
                            _ => continue 'offer,
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    async fn post_json<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
        cancel: &CancellationToken,
    ) -> Result<OutputState, StoreError> {
        let url = format!("{}{path}", self.base);
        let sent = tokio::select! {
            r = tokio::time::timeout(self.stall, self.auth(self.http.post(&url)).json(body).send()) => r,
            _ = cancel.cancelled() => return Err(StoreError::Cancelled),
        };
        let response = sent
            .map_err(|_| self.unavailable("no answer"))?
            .map_err(|e| self.unavailable(error_chain(&e)))?;
        if response.status().is_success() {
            return response
                .json()
                .await
                .map_err(|e| self.unavailable(format!("an answer that does not parse: {e}")));
        }
        let status = response.status();
        let offset = response
            .headers()
            .get(UPLOAD_OFFSET)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match self.refusal(response).await {
            Some(StoreError::Conflict { .. })
                if offset.is_some() && status == StatusCode::CONFLICT =>
            {
                Ok(OutputState::Upload {
                    upload: uuid::Uuid::nil(),
                    offset: offset.expect("checked"),
                })
            }
            Some(e) => Err(e),
            None => Err(self.unavailable(format!("{status}"))),
        }
    }

    async fn remote_offset(
        &self,
        at: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<u64>, StoreError> {
        let url = format!("{}{at}", self.base);
        let sent = tokio::select! {
            r = tokio::time::timeout(self.stall, self.auth(self.http.head(&url)).send()) => r,
            _ = cancel.cancelled() => return Err(StoreError::Cancelled),
        };
        let response = sent
            .map_err(|_| self.unavailable("no answer"))?
            .map_err(|e| self.unavailable(error_chain(&e)))?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        response
            .headers()
            .get(UPLOAD_OFFSET)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| self.unavailable(format!("{}: no {UPLOAD_OFFSET}", response.status())))
    }

    /// One PATCH of the bytes of `file` from `offset`: the store's offset after it.
    #[allow(clippy::too_many_arguments)]
    async fn send_from(
        &self,
        at: &str,
        file: &Path,
        offset: u64,
        size: u64,
        progress: &(dyn Fn(TransferProgress) + Sync),
        resumed: u32,
        cancel: &CancellationToken,
    ) -> Result<u64, SendError> {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(file)
            .await
            .map_err(|e| SendError::Store(io(file)(e)))?;
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| SendError::Store(io(file)(e)))?;
        let moved = Arc::new(AtomicU64::new(0));
        let counter = moved.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(f.take(size - offset), 256 * 1024)
            .map(move |c| {
                if let Ok(c) = &c {
                    counter.fetch_add(c.len() as u64, Ordering::Relaxed);
                }
                c
            });
        let url = format!("{}{at}", self.base);
        let request = self
            .auth(self.http.patch(&url))
            .header(UPLOAD_OFFSET, offset.to_string())
            .header(CONTENT_LENGTH, size - offset)
            .header("content-type", "application/offset+octet-stream")
            .body(reqwest::Body::wrap_stream(stream))
            .send();
        tokio::pin!(request);
        let mut seen = 0;
        let mut moved_at = Instant::now();
        // What the store holds, asked every few seconds beside the request. On a slow link all
        // that was read can sit in socket buffers for longer than the stall timeout while the store
        // still receives it: progress is what the store holds, and the upload is stalled only when
        // neither reading nor the store's offset moved for the stall timeout.
        let mut stored = offset;
        let ask_every = (self.stall / 2).clamp(Duration::from_millis(500), Duration::from_secs(2));
        let mut asked_at = Instant::now();
        let mut probe: Option<tokio::task::JoinHandle<Result<Option<u64>, StoreError>>> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let response = loop {
            tokio::select! {
                r = &mut request => break Ok(r),
                answer = async { probe.as_mut().expect("checked").await }, if probe.is_some() => {
                    probe = None;
                    if let Ok(Ok(Some(o))) = answer
                        && o > stored
                    {
                        stored = o;
                        moved_at = Instant::now();
                        progress(TransferProgress { bytes: o, total: size, resumed });
                    }
                }
                _ = tick.tick() => {
                    let now = moved.load(Ordering::Relaxed);
                    if now != seen {
                        seen = now;
                        moved_at = Instant::now();
                    } else if moved_at.elapsed() >= self.stall {
                        let why = format!("the store received nothing for {} s", self.stall.as_secs());
                        break Err(SendError::Cut(why, stored, offset + seen));
                    }
                    if probe.is_none() && asked_at.elapsed() >= ask_every {
                        asked_at = Instant::now();
                        let (client, at, cancel) = (self.clone(), at.to_owned(), cancel.clone());
                        probe = Some(tokio::spawn(async move { client.remote_offset(&at, &cancel).await }));
                    }
                }
                _ = cancel.cancelled() => break Err(SendError::Store(StoreError::Cancelled)),
            }
        };
        if let Some(p) = probe {
            p.abort();
        }
        let response = response?;
        let handed = offset + moved.load(Ordering::Relaxed);
        let response = match response {
            Ok(r) => r,
            Err(e) => return Err(SendError::Cut(error_chain(&e), stored, handed)),
        };
        let status = response.status();
        let remote: Option<u64> = response
            .headers()
            .get(UPLOAD_OFFSET)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match (status, remote) {
            (s, Some(o)) if s.is_success() || s == StatusCode::CONFLICT => {
                progress(TransferProgress {
                    bytes: o,
                    total: size,
                    resumed,
                });
                Ok(o)
            }
            (StatusCode::NOT_FOUND, _) => Err(SendError::Gone),
            _ => match self.refusal(response).await {
                Some(e) => Err(SendError::Store(e)),
                None => Err(SendError::Cut(format!("{status}"), stored, handed)),
            },
        }
    }
}

/// What the receiving side hands the writer thread.
enum Piece {
    Data(bytes::Bytes),
    /// The store sent the image from zero again: start the file and the digest over.
    Reset,
}

/// A thread that writes and hashes a download while the next bytes arrive, so receiving, hashing
/// and writing overlap (a download hashed and written in line is slower than curl).
struct Writer {
    tx: Option<tokio::sync::mpsc::Sender<Piece>>,
    thread: tokio::task::JoinHandle<std::io::Result<(String, u64)>>,
    path: PathBuf,
}

impl Writer {
    fn start(path: &Path) -> Writer {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(64);
        let dest = path.to_owned();
        let thread = tokio::task::spawn_blocking(move || {
            use std::io::{Seek, Write};
            let file = std::fs::File::create(&dest)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let mut hasher = Sha256::new();
            let mut written = 0u64;
            while let Some(piece) = rx.blocking_recv() {
                match piece {
                    Piece::Data(b) => {
                        out.write_all(&b)?;
                        hasher.update(&b);
                        written += b.len() as u64;
                    }
                    Piece::Reset => {
                        out.flush()?;
                        out.get_mut().set_len(0)?;
                        out.get_mut().seek(std::io::SeekFrom::Start(0))?;
                        hasher = Sha256::new();
                        written = 0;
                    }
                }
            }
            out.flush()?;
            out.get_ref().sync_all()?;
            Ok((hex(&hasher.finalize()), written))
        });
        Writer {
            tx: Some(tx),
            thread,
            path: path.to_owned(),
        }
    }

    async fn put(&mut self, piece: Piece) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().expect("open until finished");
        if tx.send(piece).await.is_err() {
            // The thread stopped early: it failed (a full disk, say), and its error is the answer.
            let failed = (&mut self.thread).await.expect("the writer does not panic");
            return Err(StoreError::Local {
                path: self.path.clone(),
                source: failed
                    .err()
                    .unwrap_or_else(|| std::io::Error::other("the writer stopped")),
            });
        }
        Ok(())
    }

    /// Everything written and fsynced: the digest and the size.
    async fn finish(mut self) -> Result<(String, u64), StoreError> {
        drop(self.tx.take());
        (&mut self.thread)
            .await
            .expect("the writer does not panic")
            .map_err(io(&self.path))
    }
}

enum SendError {
    Store(StoreError),
    /// The store no longer knows the upload: offer again.
    Gone,
    /// Cut: why, the store's offset as last known, and the offset this side had handed to the
    /// connection (what lies between was sent but not stored: it is sent again).
    Cut(String, u64, u64),
}

/// `bytes START-END/LEN` → (START, LEN).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, len) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.parse().ok()?, len.parse().ok()?))
}

/// The SHA-256 of a file, lower-case hex.
pub async fn sha256_of(path: &Path) -> std::io::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex(&hasher.finalize()))
    })
    .await
    .expect("hashing does not panic")
}

/// An error with its causes (reqwest's own message is often just "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, 1000)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
