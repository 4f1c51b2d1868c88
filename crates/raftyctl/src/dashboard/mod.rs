//! `raftyctl dashboard`: the fleet in a browser. One page, served with its script and style from
//! the binary, kept live by server-sent events (a snapshot, then coalesced deltas) from a model the
//! dashboard builds out of:
//!
//! - the fleet's events, on an exclusive queue of its own bound as `raftyctl watch` binds;
//! - the queues' depths and the dead letters, read every two seconds as `raftyctl status` and
//!   `raftyctl dead-letter list` read them, and the workers' answers to a status request;
//! - its history: a durable queue of its own (`rafty.dashboard.history`, bound to the `done` and
//!   `failed` events), each delivery appended to `--state-dir/history.jsonl` and fsynced before
//!   its ack ([`history`]).
//!
//! With `--allow-actions` and a token from a file, the page's buttons requeue a dead letter and
//! drain or resume a worker through the code `raftyctl dead-letter requeue`, `drain` and `resume`
//! run ([`server`]).

pub mod history;
pub(crate) mod model;
pub mod server;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions};
use lapin::options::{BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use rafty_core::config::Loaded;
use rafty_core::exit;
use rafty_core::names::{DEAD_QUEUE, EVENTS_EXCHANGE};
use rafty_core::wire::{ControlRequest, Event};
use rafty_queue::{Publisher, Topology};
use tokio::sync::{Notify, RwLock, broadcast};

use crate::{Failure, status};
use history::History;
use model::{Model, now_ms};

/// The durable queue the dashboard's history comes from.
pub const HISTORY_QUEUE: &str = "rafty.dashboard.history";

/// The events the history keeps.
pub const HISTORY_KEYS: [&str; 2] = ["rafty.transcode.done", "rafty.transcode.failed"];

/// At most one delta per job, drive or worker in this interval.
pub const COALESCE: Duration = Duration::from_millis(250);

/// How often queue depths and dead letters are read.
const POLL: Duration = Duration::from_secs(2);

/// How often the workers are asked for their status (heartbeats come every 30 s by default).
const ASK_EVERY: u32 = 5;

/// How many dead letters the page lists (the first, in queue order); the queues' table has the
/// count of all.
const DEAD_LETTERS_SHOWN: usize = 500;

/// Deltas a browser may be behind before it is dropped (its page reconnects and gets a fresh
/// snapshot).
const BACKLOG: usize = 64;

/// `raftyctl dashboard`.
#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// Address to serve the page on, e.g. 0.0.0.0:8765 (every interface) or 127.0.0.1:8765
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Let the page requeue dead letters and drain or resume workers (needs --token-file; the
    /// page then asks for the token)
    #[arg(long, requires = "token_file")]
    pub allow_actions: bool,
    /// File whose first line is the actions' token (at least 16 characters)
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Where the history is kept (history.jsonl, the newest 10 000 jobs)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/rafty-dashboard")]
    pub state_dir: PathBuf,
    /// A name the page is reached by (e.g. nas.lan; repeat for more). Besides these, an IP
    /// address, localhost and this machine's host name (bare and .local) are answered; a request for any other
    /// host is refused (421), so a site elsewhere cannot read the page through DNS rebinding
    #[arg(long = "host-name", value_name = "NAME")]
    pub host_names: Vec<String>,
}

/// Why the dashboard cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The token file is unreadable or the token too short.
    #[error("token file {}: {reason}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The history in the state directory cannot be used.
    #[error(transparent)]
    History(#[from] history::HistoryError),
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving the dashboard: {0}")]
    Serve(std::io::Error),
}

impl From<DashboardError> for Failure {
    fn from(e: DashboardError) -> Failure {
        let code = match &e {
            DashboardError::Token { .. } => exit::CONFIG,
            DashboardError::History(_) => exit::CANTCREAT,
            DashboardError::Listen { .. } | DashboardError::Serve(_) => exit::UNAVAILABLE,
        };
        Failure::new(code, e.to_string())
    }
}

/// The token the actions need, read from its file: the first line, at least 16 characters.
pub fn read_token(path: &Path) -> Result<server::Token, DashboardError> {
    let text = std::fs::read_to_string(path).map_err(|e| DashboardError::Token {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.chars().count() < 16 {
        return Err(DashboardError::Token {
            path: path.to_path_buf(),
            reason: "the token must be at least 16 characters (e.g. `openssl rand -hex 16`)".into(),
        });
    }
    Ok(server::Token::new(token))
}

/// The broker connection the actions use, while there is one.
pub struct Session {
    conn: Arc<lapin::Connection>,
    publisher: Publisher,
}

/// What the HTTP handlers and the broker tasks share.
pub struct Shared {
    model: Mutex<Model>,
    deltas: broadcast::Sender<Arc<str>>,
    token: Option<server::Token>,
    session: RwLock<Option<Session>>,
    poke: Notify,
    stopping: tokio::sync::watch::Sender<bool>,
    /// Held while the dead queue is browsed or a dead letter requeued: a browse holds every
    /// message it fetched until its channel closes, and a requeue meanwhile would not find its job.
    dead_letters: tokio::sync::Mutex<()>,
    /// The names a request's `Host` may give besides an IP address ([`server::host_allowed`]).
    host_names: Vec<String>,
}

impl Shared {
    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Send what is due to every browser (under the model's lock, so a snapshot taken meanwhile
    /// and the deltas after it never overlap or leave a gap).
    fn flush(&self) {
        let mut m = self.model();
        if let Some(delta) = m.take_delta(Instant::now(), COALESCE, now_ms()) {
            // No browser connected is not an error.
            let _ = self.deltas.send(Arc::from(delta.to_string()));
        }
    }
}

/// Run the dashboard until SIGINT or SIGTERM.
pub async fn run(loaded: &Loaded, args: DashboardArgs) -> Result<(), Failure> {
    let token = if args.allow_actions {
        let path = args
            .token_file
            .as_deref()
            .ok_or_else(|| Failure::new(exit::CONFIG, "--allow-actions needs --token-file"))?;
        Some(read_token(path)?)
    } else {
        None
    };
    let (history, entries) =
        History::open(&args.state_dir, history::CAP).map_err(DashboardError::from)?;
    let broker = crate::broker(loaded)?;
    let (deltas, _) = broadcast::channel(BACKLOG);
    let shared = Arc::new(Shared {
        model: Mutex::new(Model::new(broker.current(), entries, history::CAP)),
        deltas,
        token,
        session: RwLock::new(None),
        poke: Notify::new(),
        stopping: tokio::sync::watch::channel(false).0,
        dead_letters: tokio::sync::Mutex::new(()),
        host_names: server::host_names(&args.host_names),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| DashboardError::Listen {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!(
        "raftyctl: dashboard on http://{addr}/ for {} (actions {})",
        broker.shown(),
        if shared.token.is_some() { "on" } else { "off" }
    );

    let flusher = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                shared.flush();
            }
        }
    });
    let history = Arc::new(tokio::sync::Mutex::new(history));
    let broker_task = tokio::spawn({
        let shared = shared.clone();
        let loaded = loaded.clone();
        async move {
            loop {
                let result = session(&shared, &loaded, &history).await;
                *shared.session.write().await = None;
                let error = match result {
                    Ok(()) => "the broker closed the connection".to_owned(),
                    Err(e) => e.message,
                };
                tracing::warn!(error = %error, "dashboard: broker session ended; reconnecting in 2 s");
                shared.model().set_broker(false, Some(error));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    });
    let served = server::serve(listener, shared.clone()).await;
    flusher.abort();
    broker_task.abort();
    if let Some(s) = shared.session.write().await.take() {
        crate::close(&s.conn).await;
    }
    served.map_err(|e| DashboardError::Serve(e).into())
}

fn amqp(what: &str) -> impl FnOnce(lapin::Error) -> Failure + '_ {
    move |e| Failure::new(exit::UNAVAILABLE, format!("{what}: {e}"))
}

/// One connection's life: events into the model, the history consumer, the poller; returns when
/// any of them ends (the connection is gone).
async fn session(
    shared: &Arc<Shared>,
    loaded: &Loaded,
    history: &Arc<tokio::sync::Mutex<History>>,
) -> Result<(), Failure> {
    let (conn, publisher, node) = crate::open(loaded).await?;
    let channel = publisher.channel();
    let mut events = rafty_queue::control::listen(&channel, &crate::watch::BINDINGS)
        .await
        .map_err(|e| Failure::new(exit::UNAVAILABLE, e.to_string()))?;
    let hchannel = conn
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    let mut args = FieldTable::default();
    // The history keeps 10 000; a dashboard away for long must not make the broker keep more.
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(history::CAP as i64),
    );
    hchannel
        .queue_declare(
            HISTORY_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map_err(amqp(HISTORY_QUEUE))?;
    for key in HISTORY_KEYS {
        hchannel
            .queue_bind(
                HISTORY_QUEUE.into(),
                EVENTS_EXCHANGE.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(amqp(HISTORY_QUEUE))?;
    }
    hchannel
        .basic_qos(50, BasicQosOptions::default())
        .await
        .map_err(amqp(HISTORY_QUEUE))?;
    let mut deliveries = hchannel
        .basic_consume(
            HISTORY_QUEUE.into(),
            "rafty-dashboard".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp(HISTORY_QUEUE))?;
    *shared.session.write().await = Some(Session {
        conn: conn.clone(),
        publisher,
    });
    shared.model().set_broker(true, None);
    // After a fail-over the page names the node in use now.
    shared.model().set_broker_url(node);

    let live = async {
        while let Some(Ok(d)) = events.next().await {
            match Event::decode(d.routing_key.as_str(), &d.data) {
                Ok(event) => {
                    shared.model().apply(&event, now_ms());
                    shared.flush();
                    // A job started or ended: ask the workers and read the queues now, not at
                    // the next round (a new worker, a new dead letter).
                    if matches!(
                        event,
                        Event::Started(_) | Event::Done(_) | Event::Failed(_) | Event::Split(_)
                    ) {
                        shared.poke.notify_one();
                    }
                }
                Err(e) => tracing::debug!(error = %e, "an event this version cannot read; skipped"),
            }
        }
    };
    let kept = async {
        while let Some(Ok(d)) = deliveries.next().await {
            let event = Event::decode(d.routing_key.as_str(), &d.data).ok();
            // Off the runtime: a done entry reads each output's sidecar, perhaps on a slow share.
            let entry = tokio::task::spawn_blocking(move || {
                event.and_then(|e| history::Entry::from_event(&e))
            })
            .await
            .ok()
            .flatten();
            let Some(mut entry) = entry else {
                // Not an event this version reads: it would come back for ever.
                let _ = d.acker.nack(BasicNackOptions::default()).await;
                continue;
            };
            if entry.next.is_some()
                && let Some(when) = (*d.properties.timestamp()).and_then(history::rfc3339_of_unix)
            {
                // A failure carries no time of its own: when it was published, not when the
                // dashboard (perhaps back after a while) read it.
                entry.when = when;
            }
            let mut h = history.lock().await;
            match h.append(&entry, d.redelivered) {
                Ok(true) => {
                    let mut m = shared.model();
                    m.add_history(entry);
                    if h.needs_compaction()
                        && let Err(e) = h.compact(m.history())
                    {
                        tracing::warn!(error = %e, "history not compacted");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    // Not on disk: leave it to the broker and stop this session.
                    tracing::error!(error = %e, "history not written; the event stays queued");
                    return;
                }
            }
            drop(h);
            if d.acker.ack(BasicAckOptions::default()).await.is_err() {
                return;
            }
        }
    };
    let poll = poller(shared, &conn, loaded);
    tokio::select! {
        _ = live => {}
        _ = kept => {}
        r = poll => r?,
    }
    crate::close(&conn).await;
    Ok(())
}

/// Every two seconds (and right after an action): the queues' depths as `raftyctl status` reads
/// them; the dead letters as `raftyctl dead-letter list` reads them, when the dead queue's depth
/// changed or every 20 s; the workers' status every 10 s.
async fn poller(
    shared: &Arc<Shared>,
    conn: &Arc<lapin::Connection>,
    loaded: &Loaded,
) -> Result<(), Failure> {
    let names = status::queue_names(&Topology::from_config(&loaded.config.transcode));
    let mut channel = conn
        .create_channel()
        .await
        .map_err(amqp("opening a channel"))?;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dead_seen: Option<u32> = None;
    let mut n: u32 = 0;
    loop {
        let poked = tokio::select! {
            _ = tick.tick() => false,
            _ = shared.poke.notified() => true,
        };
        if !channel.status().connected() {
            channel = conn
                .create_channel()
                .await
                .map_err(amqp("opening a channel"))?;
        }
        match status::depths(&channel, &names).await {
            Ok(depths) => {
                let dead = depths
                    .iter()
                    .find(|d| d.name == DEAD_QUEUE)
                    .map(|d| d.messages);
                shared.model().set_queues(depths);
                if poked || dead != dead_seen || n % 10 == 0 {
                    // Browsed on a channel of its own, closed at once: the messages go back
                    // untouched, as after `raftyctl dead-letter list`.
                    let held = shared.dead_letters.lock().await;
                    let browse = conn
                        .create_channel()
                        .await
                        .map_err(amqp("opening a channel"))?;
                    let listed = crate::deadletter::list(&browse, DEAD_LETTERS_SHOWN).await;
                    let _ = browse.close(200, "dashboard".into()).await;
                    drop(held);
                    match listed {
                        Ok(l) => {
                            dead_seen = dead;
                            shared.model().set_dead_letters(l);
                        }
                        Err(e) => tracing::warn!(error = %e.message, "dead letters not read"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e.message, "queue depths not read"),
        }
        if poked || n % ASK_EVERY == 0 {
            let conn = conn.clone();
            let shared = shared.clone();
            // In its own task: the answers take a second to collect.
            tokio::spawn(async move {
                if let Ok(answers) =
                    rafty_queue::control::ask(&conn, &ControlRequest::Status, status::WAIT).await
                {
                    let now = now_ms();
                    let mut m = shared.model();
                    for a in &answers {
                        m.worker_status(a, now);
                    }
                    m.forget_silent(now);
                }
            });
        }
        shared.flush();
        n = n.wrapping_add(1);
    }
}
