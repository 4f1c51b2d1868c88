//! Connecting to the broker, in plain AMQP or over TLS, to one node or to any node of a cluster.
//!
//! [`Broker`] is the one connector every program goes through: a list of node URLs (one for a
//! single broker), a first node chosen from the host name and pid so a fleet spreads over the
//! nodes, the next node tried at once when one fails, every attempt bounded (TCP connect and AMQP
//! handshake by [`Broker::attempt_timeout`], the session's set-up by [`Broker::setup_timeout`]: on
//! RabbitMQ 3.10 a new channel's first operation on a queue whose leader sits on a frozen node can
//! stall for many seconds), a pause only after a whole pass failed (the caller's backoff), and the
//! node that works kept until it fails. Moving to another node is logged as "failed over from A to
//! B", passwords masked. lapin's own auto-recover is not used: it knows one URL only.
//!
//! An `amqps://` URL is verified against the system's certificate authorities, or against the CA
//! file named by the `cacertfile` query parameter (the name RabbitMQ's own URI spec uses), e.g.
//! `amqps://rafty-worker:…@broker:5671/%2f?heartbeat=15&cacertfile=/etc/rafty/ca.pem`.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties};
pub use rafty_core::config::mask_url;
use rafty_core::config::url_decode;
use tracing::{info, warn};

use crate::Error;

/// Default bound on one connection attempt (TCP connect, TLS, AMQP handshake): a node that is up
/// answers in milliseconds; a frozen one accepts the TCP connection and then says nothing.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Default bound on a session's set-up on a node (channels, topology, consumer), after connecting.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker's nodes and the one this process uses: the shared connector (see the module docs).
/// Cheap to clone; clones share which node is current.
#[derive(Clone, Debug)]
pub struct Broker {
    urls: Arc<Vec<String>>,
    state: Arc<Mutex<State>>,
    attempt_timeout: Duration,
    setup_timeout: Duration,
}

#[derive(Debug)]
struct State {
    /// The node the next pass starts at.
    next: usize,
    /// The node the last session was on, to log a fail-over.
    last: Option<usize>,
}

impl Broker {
    /// A connector for these node URLs (as given by `rafty_core::config::Loaded::amqp_urls`). The
    /// first node tried is chosen from this host's name and this process's id.
    // The crate's one error type, as everywhere else; a connector is made once per program.
    #[allow(clippy::result_large_err)]
    pub fn new(urls: Vec<String>) -> Result<Broker, Error> {
        if urls.is_empty() {
            return Err(Error::BadUrl {
                url: "(none)".into(),
                message: "no broker URL given: set [broker] url or urls".into(),
            });
        }
        for url in &urls {
            rafty_core::config::check_amqp_url(url).map_err(|message| Error::BadUrl {
                url: mask_url(url),
                message,
            })?;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        rafty_core::config::hostname().hash(&mut hasher);
        std::process::id().hash(&mut hasher);
        let next = (hasher.finish() % urls.len() as u64) as usize;
        Ok(Broker {
            urls: Arc::new(urls),
            state: Arc::new(Mutex::new(State { next, last: None })),
            attempt_timeout: ATTEMPT_TIMEOUT,
            setup_timeout: SETUP_TIMEOUT,
        })
    }

    /// A connector for one URL.
    #[allow(clippy::result_large_err)]
    pub fn single(url: &str) -> Result<Broker, Error> {
        Broker::new(vec![url.to_owned()])
    }

    /// The same nodes with other bounds on a connection attempt and on a session's set-up.
    pub fn with_timeouts(mut self, attempt: Duration, setup: Duration) -> Broker {
        self.attempt_timeout = attempt;
        self.setup_timeout = setup;
        self
    }

    /// Every node's URL, in the order configured.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The bound on one connection attempt.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// The bound on a session's set-up after connecting.
    pub fn setup_timeout(&self) -> Duration {
        self.setup_timeout
    }

    /// The node in use (or tried first next), password masked.
    pub fn current(&self) -> String {
        mask_url(&self.urls[self.lock().next])
    }

    /// The nodes, passwords masked, for messages.
    pub fn shown(&self) -> String {
        self.urls
            .iter()
            .map(|u| mask_url(u))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session on the current node was lost: the next pass starts at the node after it (the
    /// lost node is tried last). With one node, nothing changes.
    pub fn lost(&self) {
        let mut state = self.lock();
        state.next = (state.next + 1) % self.urls.len();
    }

    /// Connect to the first node that answers, in one pass from the current node; see
    /// [`Broker::open`].
    pub async fn connect(&self, name: &str) -> Result<Arc<Connection>, Error> {
        self.open(name, |_| async { Ok(()) })
            .await
            .map(|(conn, ())| conn)
    }

    /// One pass over the nodes from the current one: connect (bounded by the attempt timeout), then
    /// run `setup` on the connection (bounded by the set-up timeout); on either failing, the next
    /// node at once. The node that worked becomes current. The error of a failed pass is the one
    /// node's error, or with several nodes every node's; the caller backs off before the next pass.
    pub async fn open<T, F, Fut>(&self, name: &str, setup: F) -> Result<(Arc<Connection>, T), Error>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let n = self.urls.len();
        let start = self.lock().next;
        let mut errors: Vec<Error> = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let url = &self.urls[i];
            let attempt = async {
                let conn =
                    match tokio::time::timeout(self.attempt_timeout, connect(url, name)).await {
                        Ok(r) => Arc::new(r?),
                        Err(_) => {
                            return Err(Error::Stalled {
                                url: mask_url(url),
                                what: "the connection handshake",
                                timeout: self.attempt_timeout,
                            });
                        }
                    };
                match tokio::time::timeout(self.setup_timeout, setup(conn.clone())).await {
                    Ok(Ok(t)) => Ok((conn, t)),
                    Ok(Err(e)) => {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(500),
                            conn.close(200, "set-up failed".into()),
                        )
                        .await;
                        Err(e)
                    }
                    Err(_) => Err(Error::Stalled {
                        url: mask_url(url),
                        what: "setting up the session (channels, topology, consumer)",
                        timeout: self.setup_timeout,
                    }),
                }
            };
            match attempt.await {
                Ok(ok) => {
                    let mut state = self.lock();
                    if let Some(last) = state.last
                        && last != i
                    {
                        warn!(
                            from = %mask_url(&self.urls[last]),
                            to = %mask_url(url),
                            "failed over from {} to {}",
                            mask_url(&self.urls[last]),
                            mask_url(url)
                        );
                    } else if k > 0 {
                        info!(url = %mask_url(url), skipped = k, "connected to the next node");
                    }
                    state.next = i;
                    state.last = Some(i);
                    return Ok(ok);
                }
                Err(e) => {
                    if n > 1 {
                        warn!(url = %mask_url(url), error = %e, "broker node unusable; trying the next one");
                    }
                    errors.push(e);
                }
            }
        }
        if n == 1 {
            return Err(errors.pop().expect("one attempt"));
        }
        // A refusal that every node would repeat (rights, arguments) says more than "unreachable".
        if let Some(pos) = errors
            .iter()
            .position(|e| !matches!(e, Error::Connect { .. } | Error::Stalled { .. }))
        {
            return Err(errors.swap_remove(pos));
        }
        Err(Error::NoNode {
            count: n,
            errors: errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

/// Query parameter naming a PEM file of CA certificates that the broker's certificate must chain to.
pub const CA_CERT_FILE_PARAM: &str = "cacertfile";

/// Open a connection named `name` (shown in the broker's management UI) to `url`.
pub async fn connect(url: &str, name: &str) -> Result<Connection, Error> {
    if !url.contains("://") {
        return Err(Error::BadUrl {
            url: mask_url(url),
            message: "not an AMQP URL: write amqp://user:password@host:5672/vhost (or amqps://…)"
                .to_owned(),
        });
    }
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let (url_for_lapin, ca_file) = take_param(url, CA_CERT_FILE_PARAM);
    let tls = tls_config(url, ca_file.as_deref()).map_err(|message| Error::BadUrl {
        url: mask_url(url),
        message,
    })?;
    let runtime = lapin::runtime::default_runtime().map_err(|source| Error::Connect {
        url: mask_url(url),
        source,
        hint: String::new(),
    })?;
    Connection::connect_with_config(&url_for_lapin, props, tls, runtime)
        .await
        .map_err(|source| {
            let hint = connect_hint(url, ca_file.as_deref(), &source.to_string());
            Error::Connect {
                url: mask_url(url),
                source,
                hint,
            }
        })
}

fn tls_config(url: &str, ca_file: Option<&str>) -> Result<OwnedTLSConfig, String> {
    let Some(path) = ca_file else {
        return Ok(OwnedTLSConfig::default());
    };
    if !url.starts_with("amqps://") {
        return Err(format!(
            "{CA_CERT_FILE_PARAM}={path} is set but the URL is not amqps://: use amqps:// (the broker's TLS port, usually 5671) or drop {CA_CERT_FILE_PARAM}"
        ));
    }
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the CA file {CA_CERT_FILE_PARAM}={path}: {e}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "the CA file {CA_CERT_FILE_PARAM}={path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    })
}

fn connect_hint(url: &str, ca_file: Option<&str>, error: &str) -> String {
    let lower = error.to_ascii_lowercase();
    if lower.contains("native certificates") {
        " (no system CA certificates to start from: install the ca-certificates package; a cacertfile \
         is trusted in addition to them)"
            .to_owned()
    } else if url.starts_with("amqps://")
        && (lower.contains("certificate") || lower.contains("issuer"))
    {
        let trusted = match ca_file {
            Some(path) => format!("the CA in {CA_CERT_FILE_PARAM}={path}"),
            None => format!(
                "the system's certificate authorities (name your own CA with ?{CA_CERT_FILE_PARAM}=/path/ca.pem)"
            ),
        };
        format!(
            " (the broker's TLS certificate is not trusted: it must be signed by {trusted} and name the host in the URL)"
        )
    } else if url.starts_with("amqp://") && lower.contains("frame") {
        " (is this the broker's TLS port? use amqps:// for it)".to_owned()
    } else {
        String::new()
    }
}

/// `url` without the query parameter `name`, and that parameter's value (percent-decoded).
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((k, v)) if k == name => {
                value = Some(url_decode(v));
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, value)
}

#[cfg(test)]
mod tests {
    use super::{Broker, mask_url, take_param};

    #[test]
    fn a_connector_checks_its_urls_and_moves_on_after_a_lost_node() {
        assert!(Broker::new(Vec::new()).is_err());
        let err = Broker::new(vec!["amqp://u:p@mq1/%2f".into(), "mq2:5672".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mq2:5672"), "{err}");
        let urls: Vec<String> = (1..=3)
            .map(|i| format!("amqp://u:secret@mq{i}:5672/%2f"))
            .collect();
        let broker = Broker::new(urls.clone()).unwrap();
        let first = broker.current();
        assert!(!first.contains("secret"), "{first}");
        let mut seen = vec![first.clone()];
        for _ in 0..2 {
            broker.lost();
            seen.push(broker.current());
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "each node in turn: {seen:?}");
        broker.lost();
        assert_eq!(
            broker.current(),
            first,
            "back to the first after a whole round"
        );
    }

    #[test]
    fn the_ca_file_parameter_is_taken_out_of_the_url() {
        assert_eq!(
            take_param(
                "amqps://u:p@h:5671/%2f?heartbeat=5&cacertfile=%2Fetc%2Fca.pem",
                "cacertfile"
            ),
            (
                "amqps://u:p@h:5671/%2f?heartbeat=5".to_owned(),
                Some("/etc/ca.pem".to_owned())
            )
        );
        assert_eq!(
            take_param("amqps://h/v?cacertfile=/ca.pem", "cacertfile"),
            ("amqps://h/v".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(
            take_param("amqp://h/v?heartbeat=5", "cacertfile"),
            ("amqp://h/v?heartbeat=5".to_owned(), None)
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_url("amqp://rafty:s3cr@t@broker:5672/%2f?heartbeat=15"),
            "amqp://rafty:***@broker:5672/%2f?heartbeat=15"
        );
        assert_eq!(mask_url("amqp://broker:5672"), "amqp://broker:5672");
        assert_eq!(mask_url("amqps://u@h/v"), "amqps://u@h/v");
        assert_eq!(
            mask_url("amqp://u:ab/c?d#e@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert!(!mask_url("amqp:u:secret@host").contains("secret"));
    }
}
