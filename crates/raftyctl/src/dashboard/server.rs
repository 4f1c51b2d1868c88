//! The HTTP side: the page and its assets (embedded), `/events` (server-sent events: a
//! `snapshot`, then `delta`s), and the actions (`POST /api/...`, only with `--allow-actions` and
//! the `X-Rafty-Token` header: a form or a link on another site cannot set a header, and a script
//! there is stopped by CORS, which this server never grants).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_lite::{Stream, StreamExt};
use rafty_core::exit;
use rafty_core::wire::ControlRequest;
use serde_json::json;
use sha2::{Digest, Sha256};
use tower_http::set_header::SetResponseHeaderLayer;

use super::Shared;
use super::model::now_ms;

/// The page.
pub const INDEX_HTML: &str = include_str!("../../assets/index.html");
/// Its script.
pub const APP_JS: &str = include_str!("../../assets/app.js");
/// Its style.
pub const APP_CSS: &str = include_str!("../../assets/app.css");

/// The header the actions' token comes in.
pub const TOKEN_HEADER: &str = "x-rafty-token";

/// The actions' token, kept as its SHA-256 and compared in constant time.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// The token `text`.
    pub fn new(text: &str) -> Token {
        Token(Sha256::digest(text.as_bytes()).into())
    }

    /// Whether `given` is the token: both hashed, every byte compared, so the time taken says
    /// nothing about how much of it was right.
    pub fn matches(&self, given: &[u8]) -> bool {
        let given: [u8; 32] = Sha256::digest(given).into();
        self.0
            .iter()
            .zip(given.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Whether a request may act: 403 when actions are off, 401 without the right token.
pub fn authorize(token: Option<&Token>, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let Some(token) = token else {
        return Err((
            StatusCode::FORBIDDEN,
            "actions are off: start the dashboard with --allow-actions --token-file FILE".into(),
        ));
    };
    let given = headers
        .get(TOKEN_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if given.is_empty() || !token.matches(given) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "missing or wrong X-Rafty-Token".into(),
        ));
    }
    Ok(())
}

/// The names answered besides IP addresses: `extra` (`--host-name`), `localhost`, and this
/// machine's host name, bare and with `.local` (mDNS), lower-case.
pub fn host_names(extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = extra.iter().map(|n| n.to_ascii_lowercase()).collect();
    names.push("localhost".into());
    let me = rafty_core::config::hostname().to_ascii_lowercase();
    names.push(format!("{me}.local"));
    names.push(me);
    names
}

/// Whether a request's `Host` header may be answered: an IP address (a DNS-rebinding page always
/// names its own domain), or one of `names`. No header (HTTP/1.0) is answered.
pub fn host_allowed(host: Option<&str>, names: &[String]) -> bool {
    let Some(host) = host else { return true };
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name.trim_end_matches('.')))
}

async fn check_host(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("?"));
    if host_allowed(host, &shared.host_names) {
        return next.run(request).await;
    }
    let host = host.unwrap_or_default().to_owned();
    tracing::warn!(%host, "dashboard: a request for another host's name refused (add --host-name if the page is reached by it)");
    refused((
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "this dashboard does not answer for {host}: start it with --host-name NAME for each name it is reached by"
        ),
    ))
}

/// The router: page, assets, events, actions, with headers that keep the page to itself.
pub fn router(shared: Arc<Shared>) -> Router {
    let asset = |kind: &'static str, body: &'static str| {
        move || async move {
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
        }
    };
    Router::new()
        .route("/", get(asset("text/html; charset=utf-8", INDEX_HTML)))
        .route(
            "/app.js",
            get(asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route("/app.css", get(asset("text/css; charset=utf-8", APP_CSS)))
        .route("/events", get(events))
        .route("/api/history", get(history))
        .route("/api/dead-letters/{id}/requeue", post(requeue))
        .route("/api/workers/{host}/drain", post(drain))
        .route("/api/workers/{host}/resume", post(resume))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            check_host,
        ))
        .with_state(shared)
}

/// Serve until SIGINT or SIGTERM.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let stopping = shared.stopping.clone();
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            // The event streams never end by themselves: end them, or the graceful shutdown
            // waits for ever on the open pages.
            stopping.send_replace(true);
        })
        .await
}

async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let (snapshot, rx) = {
        let m = shared.model();
        // Subscribed under the model's lock: the first delta received is the one after this
        // snapshot.
        let rx = shared.deltas.subscribe();
        (m.snapshot(shared.token.is_some(), now_ms()).to_string(), rx)
    };
    let first =
        futures_lite::stream::once(Ok(SseEvent::default().event("snapshot").data(snapshot)));
    let stopping = shared.stopping.subscribe();
    let rest = futures_lite::stream::unfold((rx, stopping), |(mut rx, mut stopping)| async move {
        if *stopping.borrow() {
            return None;
        }
        tokio::select! {
            got = rx.recv() => match got {
                Ok(delta) => Some((
                    Ok(SseEvent::default().event("delta").data(&*delta)),
                    (rx, stopping),
                )),
                // Lagged: a browser too slow to keep up is dropped, not buffered for; its page
                // reconnects and starts again from a snapshot.
                Err(_) => None,
            },
            _ = stopping.changed() => None,
        }
    });
    Sse::new(first.chain(rest)).keep_alive(KeepAlive::default())
}

/// `/api/history?skip=N&limit=M`: entries older than the newest N, newest first, at most M
/// (200 by default, 1000 at most).
async fn history(State(shared): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    let (mut skip, mut limit) = (0usize, 200usize);
    for pair in uri.query().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("skip", v)) => skip = v.parse().unwrap_or(0),
            Some(("limit", v)) => limit = v.parse().unwrap_or(200),
            _ => {}
        }
    }
    let body = shared.model().history_page(skip, limit.min(1000));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn refused((status, message): (StatusCode, String)) -> Response {
    answer(status, json!({ "error": message }))
}

async fn requeue(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(shared.token.as_ref(), &headers) {
        return refused(r);
    }
    let session = shared.session.read().await;
    let Some(s) = session.as_ref() else {
        return refused((
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker".into(),
        ));
    };
    let held = shared.dead_letters.lock().await;
    let channel = match s.conn.create_channel().await {
        Ok(c) => c,
        Err(e) => return refused((StatusCode::BAD_GATEWAY, e.to_string())),
    };
    let result = crate::deadletter::requeue(
        &channel,
        &s.publisher,
        std::slice::from_ref(&id),
        false,
        |_| {},
    )
    .await;
    let _ = channel.close(200, "dashboard".into()).await;
    drop(held);
    drop(session);
    shared.poke.notify_one();
    match result {
        Ok(ids) => {
            tracing::info!(job_id = %id, "dashboard: dead letter requeued");
            answer(StatusCode::OK, json!({ "requeued": ids }))
        }
        Err(f) if f.code == exit::DATAERR => refused((StatusCode::NOT_FOUND, f.message)),
        Err(f) => refused((StatusCode::BAD_GATEWAY, f.message)),
    }
}

async fn steer(shared: Arc<Shared>, headers: HeaderMap, request: ControlRequest) -> Response {
    if let Err(r) = authorize(shared.token.as_ref(), &headers) {
        return refused(r);
    }
    let session = shared.session.read().await;
    let Some(s) = session.as_ref() else {
        return refused((
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the broker".into(),
        ));
    };
    let answers = rafty_queue::control::ask(&s.conn, &request, crate::status::WAIT).await;
    drop(session);
    let answers = match answers {
        Ok(a) => a,
        Err(e) => return refused((StatusCode::BAD_GATEWAY, e.to_string())),
    };
    {
        let now = now_ms();
        let mut m = shared.model();
        for a in &answers {
            m.worker_status(a, now);
        }
    }
    shared.flush();
    if answers.is_empty() {
        return refused((StatusCode::NOT_FOUND, "no worker answered".into()));
    }
    tracing::info!(request = ?request, "dashboard: workers steered");
    answer(
        StatusCode::OK,
        json!({ "workers": answers.iter().map(|a| json!({"host": a.host, "pid": a.pid, "state": a.state.as_str()})).collect::<Vec<_>>() }),
    )
}

async fn drain(
    State(shared): State<Arc<Shared>>,
    Path(host): Path<String>,
    headers: HeaderMap,
) -> Response {
    steer(shared, headers, ControlRequest::Drain { host }).await
}

async fn resume(
    State(shared): State<Arc<Shared>>,
    Path(host): Path<String>,
    headers: HeaderMap,
) -> Response {
    steer(shared, headers, ControlRequest::Resume { host }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_browser_gets_a_snapshot_then_deltas_and_is_dropped_when_it_falls_behind() {
        let shared = Arc::new(Shared {
            model: std::sync::Mutex::new(super::super::model::Model::new(
                "amqp://u:***@h/".into(),
                vec![super::super::history::Entry::sample("Old Film", 1)],
                10,
            )),
            deltas: tokio::sync::broadcast::channel(super::super::BACKLOG).0,
            token: None,
            session: tokio::sync::RwLock::new(None),
            poke: tokio::sync::Notify::new(),
            stopping: tokio::sync::watch::channel(false).0,
            dead_letters: tokio::sync::Mutex::new(()),
            host_names: host_names(&[]),
        });
        let mut body = events(State(shared.clone()))
            .await
            .into_response()
            .into_body()
            .into_data_stream();
        let text = |b: axum::body::Bytes| String::from_utf8_lossy(&b).into_owned();
        let first = text(body.next().await.unwrap().unwrap());
        assert!(first.starts_with("event: snapshot\n"), "{first}");
        assert!(first.contains("Old Film") && first.contains("\"actions\":false"));
        for i in 0..2 {
            shared
                .deltas
                .send(Arc::from(format!("{{\"seq\":{i}}}")))
                .unwrap();
        }
        for i in 0..2 {
            let d = text(body.next().await.unwrap().unwrap());
            assert_eq!(d, format!("event: delta\ndata: {{\"seq\":{i}}}\n\n"));
        }
        // More than the backlog while the browser reads nothing: it is dropped (the stream ends),
        // not buffered for.
        for i in 0..super::super::BACKLOG + 1 {
            shared
                .deltas
                .send(Arc::from(format!("{{\"seq\":{i}}}")))
                .unwrap();
        }
        assert!(body.next().await.is_none(), "the stream ends");
    }

    #[test]
    fn actions_need_them_on_and_the_right_token() {
        let token = Token::new("0123456789abcdef-secret");
        let mut headers = HeaderMap::new();
        assert_eq!(
            authorize(None, &headers).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            authorize(Some(&token), &headers).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        headers.insert(
            TOKEN_HEADER,
            HeaderValue::from_static("0123456789abcdef-secreT"),
        );
        assert_eq!(
            authorize(Some(&token), &headers).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        headers.insert(
            TOKEN_HEADER,
            HeaderValue::from_static("0123456789abcdef-secret"),
        );
        assert!(authorize(Some(&token), &headers).is_ok());
        assert_eq!(format!("{token:?}"), "Token(***)", "never printed");
    }

    #[test]
    fn only_an_ip_address_or_a_known_name_is_answered() {
        let names = host_names(&["NAS.lan".into()]);
        for ok in [
            None,
            Some("127.0.0.1:8765"),
            Some("192.168.1.20"),
            Some("[::1]:8765"),
            Some("localhost:8765"),
            Some("nas.lan:8765"),
            Some("nas.lan."),
        ] {
            assert!(host_allowed(ok, &names), "{ok:?}");
        }
        for refused in [
            Some("attacker.example:8765"),
            Some("nas.lan.attacker.example"),
            Some("[evil]:80"),
            Some(""),
        ] {
            assert!(!host_allowed(refused, &names), "{refused:?}");
        }
    }

    #[test]
    fn the_page_is_small_and_needs_nothing_from_elsewhere() {
        let total = INDEX_HTML.len() + APP_JS.len() + APP_CSS.len();
        assert!(total <= 200 * 1024, "{total} bytes");
        for text in [INDEX_HTML, APP_JS, APP_CSS] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "no external URL"
            );
        }
        assert!(APP_CSS.contains("prefers-color-scheme: dark"));
        assert!(APP_CSS.contains(":focus-visible"));
        assert!(INDEX_HTML.contains("name=\"viewport\""));
    }
}
