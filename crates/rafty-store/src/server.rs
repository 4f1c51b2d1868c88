//! The store's HTTP server: images out by their place under the source roots, outputs in through
//! declared, verified, resumable uploads (docs/store.md).

use std::collections::{BTreeMap, HashMap};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use futures_lite::StreamExt;
use rafty_core::Failure;
use rafty_core::config::{Container, Loaded};
use rafty_core::job::validate_output_name;
use rafty_core::output::{self, Existing, Sidecar};
use rafty_core::paths::resolve_source;
use rafty_core::store::{self as urls, UPLOAD_OFFSET};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::api::{ApiError, Health, OutputOffer, OutputState};
use crate::tokens::{TokenError, Tokens};

mod split;

/// An upload nothing has written to for this long is abandoned and its temporary file removed.
const UPLOAD_IDLE: Duration = Duration::from_secs(3600);
/// Read size when serving images and hashing uploads.
const CHUNK: usize = 256 * 1024;

/// What the server needs from the configuration.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Directories images may be served from (`[rip] iso-dir` and `[transcode] source-roots`).
    pub roots: Vec<PathBuf>,
    /// `[transcode] path-map`: producers' paths to this machine's.
    pub path_map: BTreeMap<PathBuf, PathBuf>,
    /// The media library (`[transcode] output-dir`).
    pub output_dir: PathBuf,
    /// `[store] token-file`.
    pub token_file: PathBuf,
    /// This machine's name.
    pub host: String,
    /// The library's naming, told to workers.
    pub movie_name: String,
    /// The library's naming of titles.
    pub title_name: String,
    /// The library's container.
    pub container: Container,
    /// `[store] stall-timeout`: a request body that sends nothing for this long is cut.
    pub stall_timeout: Duration,
    /// TLS certificate chain and key, to serve HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl StoreSettings {
    /// The settings in a loaded configuration, or what is missing.
    pub fn from_config(loaded: &Loaded) -> Result<StoreSettings, ServerError> {
        let c = &loaded.config;
        let token_file = loaded.store_token_file().ok_or_else(|| {
            ServerError::Config(format!(
                "[store] token-file is not set in {}: the store serves only workers holding a token (one per line; e.g. `openssl rand -hex 32`)",
                loaded.source_name()
            ))
        })?;
        let mut roots = loaded.source_roots();
        if !roots.contains(&c.rip.iso_dir) {
            roots.push(c.rip.iso_dir.clone());
        }
        Ok(StoreSettings {
            roots,
            path_map: c.transcode.path_map.clone(),
            output_dir: c.transcode.output_dir.clone(),
            token_file,
            host: loaded.host(),
            movie_name: c.transcode.movie_name.clone(),
            title_name: c.transcode.title_name.clone(),
            container: c.transcode.container,
            stall_timeout: c.store.stall_timeout,
            tls: c.store.tls_cert.clone().zip(c.store.tls_key.clone()),
        })
    }
}

/// Why the server cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration cannot work (exit 78).
    #[error("{0}")]
    Config(String),
    /// The token file.
    #[error(transparent)]
    Tokens(#[from] TokenError),
    /// TLS set-up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

struct Upload {
    offer: OutputOffer,
    path: PathBuf,
    temp: PathBuf,
    written: AtomicU64,
    file: tokio::sync::Mutex<tokio::fs::File>,
    writer: Mutex<CancellationToken>,
    touched: Mutex<Instant>,
}

struct Inner {
    settings: StoreSettings,
    tokens: Tokens,
    uploads: Mutex<HashMap<Uuid, Arc<Upload>>>,
}

type Shared = Arc<Inner>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ApiError {
        error: message.into(),
    };
    (status, axum::Json(body)).into_response()
}

fn failure_response(f: &Failure) -> Response {
    let status = match f {
        Failure::OutputConflict(_) => StatusCode::CONFLICT,
        Failure::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        Failure::SourceOutsideRoots(_) => StatusCode::FORBIDDEN,
        Failure::SourceUnavailable(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, f.to_string())
}

/// The router, for [`run`] and for tests that want it bare.
fn router(inner: Shared) -> Router {
    Router::new()
        .route(urls::HEALTH_PATH, get(health))
        .route("/v1/images/{*rest}", get(image))
        .route(urls::OUTPUTS_PREFIX, post(offer))
        .route("/v1/outputs/{*rest}", get(find_output))
        .route("/v1/uploads/{id}", patch(upload_bytes).head(upload_offset))
        .route("/v1/uploads/{id}/commit", post(commit))
        .route("/v1/split/{whole}", get(split::list).delete(split::remove))
        .route(
            "/v1/split/{whole}/{file}",
            get(split::fetch).put(split::put),
        )
        .layer(middleware::from_fn_with_state(inner.clone(), authorize))
        .with_state(inner)
}

async fn authorize(State(inner): State<Shared>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(t) if inner.tokens.accepts(t) => next.run(request).await,
        _ => {
            warn!(path = %request.uri().path(), "refused a request without a valid token");
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                format!(
                    "store {}: no valid bearer token; put this machine's token in its [store] token-file and the same line in the store's",
                    inner.settings.host
                ),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

async fn health(State(inner): State<Shared>) -> Response {
    let s = &inner.settings;
    axum::Json(Health {
        host: s.host.clone(),
        movie_name: s.movie_name.clone(),
        title_name: s.title_name.clone(),
        container: s.container,
    })
    .into_response()
}

/// A strong validator for a file's current content: a new inode, size or mtime is a new ETag.
fn etag(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "\"{:x}-{:x}-{:x}.{:x}\"",
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

async fn image(State(inner): State<Shared>, request: Request) -> Response {
    // The raw path, not axum's decoded one: an encoded slash or dot must be seen as such.
    let raw = request.uri().path().to_owned();
    let path = match urls::image_path(&raw) {
        Ok(p) => p,
        Err(e) => {
            warn!(path = %raw, reason = e.reason, "refused an image path");
            return error(StatusCode::BAD_REQUEST, format!("image path {e}"));
        }
    };
    let s = &inner.settings;
    let real = match resolve_source(&path, &s.path_map, &s.roots) {
        Ok(p) => p,
        Err(f) => {
            warn!(path = %path.display(), error = %f, "refused an image");
            return failure_response(&f);
        }
    };
    serve_file(
        &real,
        path.display().to_string(),
        Served::Image,
        request.headers(),
    )
    .await
}

/// What a served file is, for its log line.
#[derive(Debug, Clone, Copy)]
enum Served {
    Image,
    Step,
}

/// Answer a GET of the file at `real` (shown as `shown`): whole, or the one range asked for when its
/// ETag still holds (`If-Range`).
async fn serve_file(real: &Path, shown: String, kind: Served, headers: &HeaderMap) -> Response {
    let mut file = match tokio::fs::File::open(real).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::NOT_FOUND, format!("{shown}: {e}")),
    };
    let meta = match file.metadata().await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::NOT_FOUND, format!("{shown}: {e}")),
    };
    let len = meta.len();
    let tag = etag(&meta);
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .map(|v| v.to_str().ok() == Some(tag.as_str()))
        .unwrap_or(true);
    let range = headers
        .get(header::RANGE)
        .filter(|_| if_range_ok)
        .and_then(|v| v.to_str().ok())
        .map(|v| http_range_header::parse_range_header(v).map(|r| r.validate(len)));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Ok(Ok(ranges))) if ranges.len() == 1 => {
            let r = &ranges[0];
            (StatusCode::PARTIAL_CONTENT, *r.start(), *r.end() + 1)
        }
        // Several ranges: the whole file is a valid answer (RFC 9110 14.2), and no worker asks so.
        Some(Ok(Ok(_))) => (StatusCode::OK, 0, len),
        Some(Ok(Err(_))) => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("range outside {shown} ({len} bytes)"),
            );
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return r;
        }
        // A Range header that does not parse is ignored (RFC 9110 14.2).
        Some(Err(_)) => (StatusCode::OK, 0, len),
    };
    if start > 0
        && let Err(e) = file.seek(SeekFrom::Start(start)).await
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{shown}: {e}"));
    }
    let count = end - start;
    let log = ServedLog {
        kind,
        path: shown,
        start,
        asked: count,
        sent: 0,
    };
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), CHUNK).map({
        let mut log = log;
        move |chunk| {
            // The whole log is moved in (not only its counter), so it logs when the body drops.
            let log: &mut ServedLog = &mut log;
            if let Ok(c) = &chunk {
                log.sent += c.len() as u64;
            }
            chunk
        }
    });
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &tag);
    if status == StatusCode::PARTIAL_CONTENT {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end.saturating_sub(1)),
        );
    }
    response
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

/// Logs what one file response sent when its body is dropped (finished or cut), so the bytes a
/// resume sends again can be counted from the store's log.
struct ServedLog {
    kind: Served,
    path: String,
    start: u64,
    asked: u64,
    sent: u64,
}

impl Drop for ServedLog {
    fn drop(&mut self) {
        let (sent, asked, from, path) = (self.sent, self.asked, self.start, &self.path);
        let complete = sent == asked;
        match self.kind {
            Served::Image => {
                info!(image = %path, from, asked, sent, complete, "image served")
            }
            Served::Step => {
                info!(file = %path, from, asked, sent, complete, "step file served")
            }
        }
    }
}

/// `output` as a path under the library, refusing anything that could leave it.
fn library_path(root: &Path, output: &str) -> Result<PathBuf, String> {
    let mut path = root.to_path_buf();
    for component in output.split('/') {
        validate_output_name(component).map_err(|e| e.to_string())?;
        path.push(component);
    }
    Ok(path)
}

async fn find_output(State(inner): State<Shared>, UrlPath(rest): UrlPath<String>) -> Response {
    let path = match library_path(&inner.settings.output_dir, &rest) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("output {rest:?}: {e}")),
    };
    let side = std::fs::read(output::sidecar_path(&path))
        .ok()
        .and_then(|b| serde_json::from_slice::<Sidecar>(&b).ok());
    match (std::fs::metadata(&path), side) {
        (Ok(m), Some(s)) if m.len() == s.output_size => {
            axum::Json(crate::api::Found { path, sidecar: s }).into_response()
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no finished output {rest:?}"),
        ),
    }
}

async fn offer(
    State(inner): State<Shared>,
    axum::Json(offer): axum::Json<OutputOffer>,
) -> Response {
    let s = &inner.settings;
    let path = match library_path(&s.output_dir, &offer.output) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("output {:?}: {e}", offer.output),
            );
        }
    };
    if offer.sidecar.job_id != offer.job.to_string() || offer.sidecar.output != offer.output {
        return error(
            StatusCode::BAD_REQUEST,
            "the sidecar names another job or output than the offer",
        );
    }
    if offer.sha256.len() != 64 || !offer.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(StatusCode::BAD_REQUEST, "sha256 must be 64 hex digits");
    }
    match output::existing(&path, &offer.sidecar) {
        Ok(Existing::Done(found)) => {
            info!(output = %path.display(), job = %offer.job, made_by = %found.job_id, "offered output already in place");
            return axum::Json(OutputState::InPlace {
                path,
                sidecar: found,
            })
            .into_response();
        }
        Ok(Existing::Absent) => {}
        Err(f) => return failure_response(&f),
    }
    // The same bytes offered again (an answer lost in a cut, or a second worker with the same
    // encode): go on with the upload already open, so no second copy is made.
    let open = inner
        .uploads
        .lock()
        .expect("uploads")
        .iter()
        .find(|(_, u)| {
            u.offer.job == offer.job
                && u.offer.output == offer.output
                && u.offer.size == offer.size
                && u.offer.sha256 == offer.sha256
        })
        .map(|(id, u)| (*id, u.written.load(Ordering::SeqCst)));
    if let Some((upload, offset)) = open {
        info!(%upload, job = %offer.job, offset, "the same output offered again: continuing its upload");
        return axum::Json(OutputState::Upload { upload, offset }).into_response();
    }
    let dir = path.parent().expect("under the library").to_path_buf();
    if let Some(free) = crate::free_bytes(&dir)
        && free < offer.size
    {
        return error(
            StatusCode::INSUFFICIENT_STORAGE,
            format!(
                "store {}: {} has {free} bytes free, the output needs {}",
                s.host,
                dir.display(),
                offer.size
            ),
        );
    }
    let temp = output::temp_path(&path, &offer.job.to_string(), &s.host);
    if let Err(f) = output::prepare(&dir, &temp) {
        return failure_response(&f);
    }
    let file = match tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&temp)
        .await
    {
        Ok(f) => f,
        Err(e) => return failure_response(&output::io_failure(&temp, &e)),
    };
    let id = Uuid::new_v4();
    info!(upload = %id, job = %offer.job, output = %path.display(), bytes = offer.size, "upload started");
    let upload = Arc::new(Upload {
        offer,
        path,
        temp,
        written: AtomicU64::new(0),
        file: tokio::sync::Mutex::new(file),
        writer: Mutex::new(CancellationToken::new()),
        touched: Mutex::new(Instant::now()),
    });
    inner.uploads.lock().expect("uploads").insert(id, upload);
    (
        StatusCode::CREATED,
        axum::Json(OutputState::Upload {
            upload: id,
            offset: 0,
        }),
    )
        .into_response()
}

// The error is the answer the handler returns as it is: boxing it would only move it.
#[allow(clippy::result_large_err)]
fn find_upload(inner: &Inner, id: &str) -> Result<Arc<Upload>, Response> {
    let id: Uuid = id.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an upload id"),
        )
    })?;
    inner
        .uploads
        .lock()
        .expect("uploads")
        .get(&id)
        .cloned()
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no upload {id} (finished, abandoned or the store restarted): offer the output again"),
            )
        })
}

fn with_offset(mut r: Response, offset: u64) -> Response {
    r.headers_mut().insert(
        UPLOAD_OFFSET,
        HeaderValue::from_str(&offset.to_string()).expect("digits"),
    );
    r
}

async fn upload_offset(State(inner): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    match find_upload(&inner, &id) {
        Ok(u) => with_offset(
            StatusCode::NO_CONTENT.into_response(),
            u.written.load(Ordering::SeqCst),
        ),
        Err(r) => r,
    }
}

/// Take over writing an upload: a new request stops the one before it (a client whose link was cut
/// resumes before the server has noticed the old connection is dead).
async fn take_writer(
    upload: &Upload,
) -> (
    CancellationToken,
    tokio::sync::MutexGuard<'_, tokio::fs::File>,
) {
    let mine = CancellationToken::new();
    let old = std::mem::replace(&mut *upload.writer.lock().expect("writer"), mine.clone());
    old.cancel();
    (mine, upload.file.lock().await)
}

async fn upload_bytes(
    State(inner): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let upload = match find_upload(&inner, &id) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let Some(offset) = headers
        .get(UPLOAD_OFFSET)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{UPLOAD_OFFSET} header missing"),
        );
    };
    let (mine, mut file) = take_writer(&upload).await;
    let written = upload.written.load(Ordering::SeqCst);
    if offset != written {
        return with_offset(
            error(
                StatusCode::CONFLICT,
                format!("upload {id} has {written} bytes, not {offset}: send from {written}"),
            ),
            written,
        );
    }
    if let Err(e) = file.seek(SeekFrom::Start(written)).await {
        return failure_response(&output::io_failure(&upload.temp, &e));
    }
    let size = upload.offer.size;
    let mut stream = body.into_data_stream();
    let stall = inner.settings.stall_timeout;
    let mut total = written;
    let result: Result<(), Response> = loop {
        let next = tokio::select! {
            n = tokio::time::timeout(stall, stream.next()) => n,
            _ = mine.cancelled() => break Ok(()),
        };
        match next {
            Err(_) => break Ok(()),
            Ok(None) => break Ok(()),
            Ok(Some(Err(_))) => break Ok(()),
            Ok(Some(Ok(bytes))) => {
                if total + bytes.len() as u64 > size {
                    break Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("upload {id} declared {size} bytes; this request sends more"),
                    ));
                }
                if let Err(e) = file.write_all(&bytes).await {
                    break Err(failure_response(&output::io_failure(&upload.temp, &e)));
                }
                total += bytes.len() as u64;
                upload.written.store(total, Ordering::SeqCst);
                *upload.touched.lock().expect("touched") = Instant::now();
            }
        }
    };
    let _ = file.flush().await;
    match result {
        Ok(()) => with_offset(StatusCode::NO_CONTENT.into_response(), total),
        Err(r) => with_offset(r, total),
    }
}

async fn commit(State(inner): State<Shared>, UrlPath(id): UrlPath<String>) -> Response {
    let upload = match find_upload(&inner, &id) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let (_mine, mut file) = take_writer(&upload).await;
    let written = upload.written.load(Ordering::SeqCst);
    let offer = &upload.offer;
    if written != offer.size {
        return with_offset(
            error(
                StatusCode::CONFLICT,
                format!(
                    "upload {id} has {written} of {} bytes: send the rest first",
                    offer.size
                ),
            ),
            written,
        );
    }
    if let Err(e) = file.sync_all().await {
        return failure_response(&output::io_failure(&upload.temp, &e));
    }
    // Hash what is on the disk now, not what went past: that is what the library will hold.
    let got = match hash_file(&mut file).await {
        Ok(h) => h,
        Err(e) => return failure_response(&output::io_failure(&upload.temp, &e)),
    };
    drop(file);
    let forget = || {
        inner
            .uploads
            .lock()
            .expect("uploads")
            .remove(&id.parse::<Uuid>().expect("checked"));
    };
    if got != offer.sha256 {
        let _ = std::fs::remove_file(&upload.temp);
        forget();
        warn!(upload = %id, job = %offer.job, declared = %offer.sha256, got = %got, "upload refused: digest differs");
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "output {:?}: the bytes received have SHA-256 {got}, the offer declared {}; send it again",
                offer.output, offer.sha256
            ),
        );
    }
    let (temp, path, sidecar) = (
        upload.temp.clone(),
        upload.path.clone(),
        offer.sidecar.clone(),
    );
    let committed = tokio::task::spawn_blocking(move || output::commit(&temp, &path, &sidecar))
        .await
        .expect("commit does not panic");
    forget();
    match committed {
        Ok(output::Committed::Ours) => {
            info!(upload = %id, job = %offer.job, output = %upload.path.display(), bytes = offer.size, "output verified and in place");
            axum::Json(OutputState::Committed {
                path: upload.path.clone(),
                sidecar: Box::new(offer.sidecar.clone()),
            })
            .into_response()
        }
        Ok(output::Committed::Theirs) => {
            let found = std::fs::read(output::sidecar_path(&upload.path))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_else(|| offer.sidecar.clone());
            info!(upload = %id, job = %offer.job, output = %upload.path.display(), "the same work was put in place first; its output stands");
            axum::Json(OutputState::InPlace {
                path: upload.path.clone(),
                sidecar: Box::new(found),
            })
            .into_response()
        }
        Err(f) => failure_response(&f),
    }
}

async fn hash_file(file: &mut tokio::fs::File) -> std::io::Result<String> {
    file.seek(SeekFrom::Start(0)).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sweep_uploads(inner: &Inner) {
    let mut uploads = inner.uploads.lock().expect("uploads");
    uploads.retain(|id, u| {
        let idle = u.touched.lock().expect("touched").elapsed();
        if idle < UPLOAD_IDLE {
            return true;
        }
        let _ = std::fs::remove_file(&u.temp);
        info!(upload = %id, output = %u.path.display(), "abandoned upload removed");
        false
    });
}

/// Serve until `shutdown` drains: every accepted connection is served (TLS where configured), the
/// listener closes on shutdown and requests in flight get a few seconds to end.
pub async fn run(
    settings: StoreSettings,
    listener: TcpListener,
    shutdown: rafty_program::Shutdown,
) -> Result<(), ServerError> {
    let tokens = Tokens::load(&settings.token_file)?;
    let tls = match &settings.tls {
        Some((cert, key)) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            crate::tls::server_config(cert, key)?,
        ))),
        None => None,
    };
    let swept = output::sweep_stale_temps(&settings.output_dir, UPLOAD_IDLE, &settings.host);
    if swept > 0 {
        info!(swept, "removed uploads left by a stopped store");
    }
    let inner = Arc::new(Inner {
        settings,
        tokens,
        uploads: Mutex::new(HashMap::new()),
    });
    let app = router(inner.clone());
    info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        roots = ?inner.settings.roots,
        library = %inner.settings.output_dir.display(),
        "rafty-store serving"
    );
    let mut connections = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(60));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = sweep.tick() => { sweep_uploads(&inner); continue; }
            _ = shutdown.drain.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // Keep at most one chunk waiting in the kernel beyond what is on the wire, so a cut link
        // loses (and a resume sends again) little more than what was in flight; throughput is kept,
        // the kernel asks for more as the queue drains.
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(CHUNK as u32);
        let app = app.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(app);
            let http = hyper::server::conn::http1::Builder::new();
            let served = match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(s), service)
                            .await
                    }
                    Err(e) => {
                        warn!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    info!("stopping: no new connections");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}
