//! The places a notification goes: webhooks (JSON POST), ntfy topics (plain text POST with `Title:` and
//! `Tags:`), and commands (argv, never a shell, the JSON on stdin).
//!
//! HTTP is [`ureq`] (blocking, rustls with the webpki roots, no OpenSSL) on tokio's blocking pool, with
//! one overall timeout per request; redirects are not followed (a POST must not silently become a GET),
//! and only a 2xx answer counts as delivered. `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and `NO_PROXY` are
//! honoured; credentials in a URL (`https://user:password@host/…`) are sent as basic auth.
//!
//! Targets are named in logs by kind, number and host only (`ntfy 1 (https://ntfy.sh/…)`), because the
//! rest of a webhook or ntfy URL is often the secret, and by program name for commands.

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::config::NotifyConfig;
use crate::event::{Event, header_value};

/// Most bytes of an error answer or of a command's stderr kept for the log.
const ERROR_EXCERPT: usize = 300;

/// One place notifications go.
#[derive(Debug, Clone)]
pub enum Target {
    /// JSON POST of the envelope.
    Webhook {
        /// The URL.
        url: String,
        /// 1-based, in the order of `[notify] webhooks`.
        n: usize,
    },
    /// ntfy's plain publishing API.
    Ntfy {
        /// The topic URL.
        url: String,
        /// 1-based, in the order of `[notify] ntfy`.
        n: usize,
    },
    /// A program with the envelope on stdin; exit 0 means delivered.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// 1-based, in the order of `[notify] commands`.
        n: usize,
    },
}

/// Why one delivery to one target did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The server answered, but not with 2xx.
    #[error("HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// The status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// The server answered with a redirect, which is not followed.
    #[error("HTTP {status}: redirected to {location:?}; put that URL in the config")]
    Redirect {
        /// The status code.
        status: u16,
        /// The `Location` header.
        location: String,
    },
    /// No answer: connection refused, DNS, TLS, timeout...
    #[error("{0}")]
    Http(String),
    /// The command could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program (`argv[0]`).
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command ended with a non-zero status or a signal.
    #[error("{program} {status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Exit {
        /// The program (`argv[0]`).
        program: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
    /// The request or the command took longer than `[notify] timeout`.
    #[error("no answer within {} s", .0.as_secs_f64())]
    Timeout(Duration),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Webhook { url, n } => write!(f, "webhook {n} ({})", redact(url)),
            Target::Ntfy { url, n } => write!(f, "ntfy {n} ({})", redact(url)),
            Target::Command { argv, n } => write!(f, "command {n} ({})", argv[0]),
        }
    }
}

/// `scheme://host[:port]/…`: the parts of a URL that are safe to log.
fn redact(url: &str) -> String {
    match url.parse::<ureq::http::Uri>() {
        Ok(uri) => {
            let host = uri.host().unwrap_or("?");
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}/…", uri.scheme_str().unwrap_or("?"))
        }
        Err(_) => "(invalid URL)".to_owned(),
    }
}

/// Every target of a configuration: webhooks, then ntfy topics, then commands.
pub fn targets(config: &NotifyConfig) -> Vec<Target> {
    let webhooks = config
        .webhooks
        .iter()
        .enumerate()
        .map(|(i, url)| Target::Webhook {
            url: url.clone(),
            n: i + 1,
        });
    let ntfy = config.ntfy.iter().enumerate().map(|(i, url)| Target::Ntfy {
        url: url.clone(),
        n: i + 1,
    });
    let commands = config
        .commands
        .iter()
        .enumerate()
        .map(|(i, argv)| Target::Command {
            argv: argv.clone(),
            n: i + 1,
        });
    webhooks.chain(ntfy).chain(commands).collect()
}

/// The HTTP client shared by every request: `timeout` per request, all of it included (DNS, connect,
/// TLS, sending, answer).
pub fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("rafty-notify/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

fn excerpt(text: &str, from_end: bool) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let n = one_line.chars().count();
    if n <= ERROR_EXCERPT {
        one_line
    } else if from_end {
        format!(
            "…{}",
            one_line.chars().skip(n - ERROR_EXCERPT).collect::<String>()
        )
    } else {
        format!(
            "{}…",
            one_line.chars().take(ERROR_EXCERPT).collect::<String>()
        )
    }
}

impl Target {
    /// Deliver `event` once; `Ok` when the target took it.
    pub async fn deliver(
        &self,
        event: &Event,
        agent: &ureq::Agent,
        timeout: Duration,
    ) -> Result<(), DeliveryError> {
        match self {
            Target::Webhook { url, .. } => {
                let body = serde_json::to_vec(&event.envelope()).expect("JSON serialises");
                let headers = vec![
                    ("Content-Type", "application/json".to_owned()),
                    ("X-Rafty-Event", event.kind.name().to_owned()),
                ];
                post(agent, url, headers, body, timeout).await
            }
            Target::Ntfy { url, .. } => {
                let mut headers = vec![
                    ("Content-Type", "text/plain; charset=utf-8".to_owned()),
                    ("Title", header_value(&event.title())),
                    ("Tags", event.tags().to_owned()),
                ];
                if let Some(p) = event.priority() {
                    headers.push(("Priority", p.to_owned()));
                }
                post(agent, url, headers, event.text().into_bytes(), timeout).await
            }
            Target::Command { argv, .. } => run_command(argv, event, timeout).await,
        }
    }
}

async fn post(
    agent: &ureq::Agent,
    url: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let (agent, url) = (agent.clone(), url.to_owned());
    let request = tokio::task::spawn_blocking(move || {
        let mut req = agent.post(&url);
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let mut response = req.send(&body[..]).map_err(|e| match e {
            ureq::Error::Timeout(_) => DeliveryError::Timeout(timeout),
            other => DeliveryError::Http(other.to_string()),
        })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        if (300..400).contains(&status) {
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .unwrap_or("")
                .to_owned();
            return Err(DeliveryError::Redirect { status, location });
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .unwrap_or_default();
        Err(DeliveryError::Status {
            status,
            body: excerpt(&text, false),
        })
    });
    match request.await {
        Ok(result) => result,
        Err(e) => Err(DeliveryError::Http(format!("the request task failed: {e}"))),
    }
}

async fn run_command(
    argv: &[String],
    event: &Event,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let program = argv[0].clone();
    let mut child = tokio::process::Command::new(&program)
        .args(&argv[1..])
        .env("RAFTY_EVENT", event.kind.name())
        .env("RAFTY_TITLE", event.title())
        .env("RAFTY_TEXT", event.text())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DeliveryError::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut input = serde_json::to_vec(&event.envelope()).expect("JSON serialises");
    input.push(b'\n');
    let write = async move {
        // A program that does not read its stdin may exit before we are done writing: not an error.
        let _ = stdin.write_all(&input).await;
        let _ = stdin.shutdown().await;
    };
    let run = async {
        let ((), output) = tokio::join!(write, child.wait_with_output());
        output
    };
    // On timeout the child is dropped, which kills it (kill_on_drop).
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| DeliveryError::Timeout(timeout))?
        .map_err(|source| DeliveryError::Spawn {
            program: program.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DeliveryError::Exit {
            program,
            status: output.status,
            stderr: excerpt(&String::from_utf8_lossy(&output.stderr), true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EventKind;

    fn event() -> Event {
        let kind = EventKind::RipDone;
        Event::new(kind, &kind.routing_key(), br#"{"device": "/dev/sr0"}"#).expect("a JSON object")
    }

    /// An https:// target speaks TLS (rustls): the first bytes on the wire are a TLS handshake record.
    #[tokio::test]
    async fn https_targets_speak_tls() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut first = [0u8; 3];
            stream.read_exact(&mut first).unwrap();
            first
        });
        let target = Target::Ntfy {
            url: format!("https://127.0.0.1:{port}/topic"),
            n: 1,
        };
        let timeout = Duration::from_secs(5);
        let err = target
            .deliver(&event(), &http_agent(timeout), timeout)
            .await
            .unwrap_err();
        let first = server.join().unwrap();
        assert_eq!(first[0], 0x16, "a TLS handshake record, then: {err}");
        assert_eq!(first[1], 0x03, "TLS version major 3: {err}");
    }

    /// No answer within the timeout is a failure that says so, not a hang.
    #[tokio::test]
    async fn requests_time_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts (the kernel's backlog does) but never answers.
        let target = Target::Webhook {
            url: format!("http://127.0.0.1:{port}/hook"),
            n: 1,
        };
        let timeout = Duration::from_millis(500);
        let started = std::time::Instant::now();
        let err = target
            .deliver(&event(), &http_agent(timeout), timeout)
            .await
            .unwrap_err();
        assert!(matches!(err, DeliveryError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(listener);
    }

    #[tokio::test]
    async fn commands_time_out_and_are_killed() {
        let target = Target::Command {
            argv: vec!["sleep".into(), "30".into()],
            n: 1,
        };
        let started = std::time::Instant::now();
        let err = target
            .deliver(
                &event(),
                &http_agent(Duration::from_secs(1)),
                Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, DeliveryError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn targets_are_named_without_their_secrets() {
        let config = NotifyConfig {
            webhooks: vec!["https://user:pw@hooks.example:8443/T000/B000/XXXX?token=s".into()],
            ntfy: vec!["https://ntfy.sh/secret-topic".into()],
            commands: vec![vec!["/usr/local/bin/notify-me".into(), "--token=s".into()]],
            ..NotifyConfig::default()
        };
        let names: Vec<String> = targets(&config).iter().map(|t| t.to_string()).collect();
        assert_eq!(
            names,
            [
                "webhook 1 (https://hooks.example:8443/…)",
                "ntfy 1 (https://ntfy.sh/…)",
                "command 1 (/usr/local/bin/notify-me)"
            ]
        );
    }
}
