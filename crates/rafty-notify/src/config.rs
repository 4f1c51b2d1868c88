//! `[notify]`: the notifier's section of the shared configuration file, and the shared part it needs.
//!
//! The notifier reads the same file as every Rafty program (`--config`, `$RAFTY_CONFIG`, else
//! `/etc/rafty/rafty.toml`). `[notify]` is read here with its own strict struct ([`NotifyConfig`]:
//! unknown keys are refused with their name, the file's path and the line).
//!
//! The other sections are loaded by rafty-core. `rafty_core::Config` keeps `[notify]` as an opaque table
//! (the other programs accept it and ignore it), so the section is parsed here from the file's text,
//! which keeps its line numbers in error messages: the text given to rafty-core is the file with the
//! `[notify]` lines blanked when that is exactly the table without `notify`; in an unusual layout
//! (dotted `notify.…` keys, an inline table) it is the re-serialised table, whose line numbers differ
//! from the file's (the file and the key are still named).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rafty_core::config::{Loaded, parse_duration};
use rafty_core::names::{
    DEAD_QUEUE, DEFAULT_CONFIG_PATH, EVENTS_EXCHANGE, RETRY_QUEUE_PREFIX, RIP_EXCHANGE, WORK_QUEUE,
};
use rafty_core::{Config, ConfigError};
use serde::{Deserialize, Deserializer};

/// The notifier's own durable queue, unless `[notify] queue` names another.
pub const DEFAULT_QUEUE: &str = "rafty.notify";

/// An event the notifier can pass on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum EventKind {
    /// `rafty.transcode.done` on `rafty.transcode`: a job is done.
    #[serde(rename = "transcode.done")]
    TranscodeDone,
    /// `rafty.transcode.failed` on `rafty.transcode`: a job failed (and may be retried).
    #[serde(rename = "transcode.failed")]
    TranscodeFailed,
    /// `rafty.rip.done` on `rafty.rip`: a disc was copied and its job queued.
    #[serde(rename = "rip.done")]
    RipDone,
    /// `rafty.rip.failed` on `rafty.rip`: a rip ended without a job.
    #[serde(rename = "rip.failed")]
    RipFailed,
    /// `rafty.replicate.away` on `rafty.transcode`: a destination of rafty-replicate stayed away.
    #[serde(rename = "replicate.away")]
    ReplicaAway,
    /// `rafty.replicate.audit` on `rafty.transcode`: `raftyctl audit` finished.
    #[serde(rename = "replicate.audit")]
    Audit,
}

impl EventKind {
    /// Every kind, in the order of the docs.
    pub const ALL: [EventKind; 6] = [
        EventKind::TranscodeDone,
        EventKind::TranscodeFailed,
        EventKind::RipDone,
        EventKind::RipFailed,
        EventKind::ReplicaAway,
        EventKind::Audit,
    ];

    /// The name used in `[notify] events`, e.g. `transcode.done`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::TranscodeDone => "transcode.done",
            EventKind::TranscodeFailed => "transcode.failed",
            EventKind::RipDone => "rip.done",
            EventKind::RipFailed => "rip.failed",
            EventKind::ReplicaAway => "replicate.away",
            EventKind::Audit => "replicate.audit",
        }
    }

    /// The exchange the event is published on.
    pub fn exchange(self) -> &'static str {
        match self {
            EventKind::TranscodeDone
            | EventKind::TranscodeFailed
            | EventKind::ReplicaAway
            | EventKind::Audit => EVENTS_EXCHANGE,
            EventKind::RipDone | EventKind::RipFailed => RIP_EXCHANGE,
        }
    }

    /// Its routing key, e.g. `rafty.transcode.done`.
    pub fn routing_key(self) -> String {
        format!("rafty.{}", self.name())
    }

    /// The kind of a delivery, from its routing key.
    pub fn from_routing_key(key: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.routing_key() == key)
    }

    /// Whether the event reports a failure.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            EventKind::TranscodeFailed | EventKind::RipFailed | EventKind::ReplicaAway
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[notify]`: where notifications go and which events make one.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct NotifyConfig {
    /// URLs that get a JSON POST of every event (the envelope of [`crate::Event::envelope`]).
    pub webhooks: Vec<String>,
    /// ntfy topic URLs (`https://ntfy.sh/my-topic`) that get a one-line text with `Title:` and `Tags:`.
    pub ntfy: Vec<String>,
    /// Programs run with the event's JSON on stdin, as argv (never through a shell).
    pub commands: Vec<Vec<String>>,
    /// The events that make a notification. Default: all four.
    pub events: Vec<EventKind>,
    /// The notifier's durable quorum queue.
    pub queue: String,
    /// How long to wait before trying a target again after it failed.
    #[serde(deserialize_with = "de_duration")]
    pub retry_delay: Duration,
    /// The longest one HTTP request or one command may take.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhooks: Vec::new(),
            ntfy: Vec::new(),
            commands: Vec::new(),
            events: EventKind::ALL.to_vec(),
            queue: DEFAULT_QUEUE.to_owned(),
            retry_delay: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
        }
    }
}

impl NotifyConfig {
    /// The events to notify, without duplicates.
    pub fn event_set(&self) -> BTreeSet<EventKind> {
        self.events.iter().copied().collect()
    }

    /// Parse the `[notify]` section of a whole configuration file's text (absent: the defaults).
    /// The error is toml's message: it names the key and shows the line.
    pub fn parse(text: &str) -> Result<NotifyConfig, String> {
        #[derive(Deserialize)]
        struct Sections {
            #[serde(default)]
            notify: NotifyConfig,
        }
        toml::from_str::<Sections>(text)
            .map(|s| s.notify)
            .map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// Check values that parse but cannot work; the error is `(key, message)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for url in &self.webhooks {
            check_url(url).map_err(|m| ("webhooks", m))?;
        }
        for url in &self.ntfy {
            check_url(url).map_err(|m| ("ntfy", m))?;
            let topic = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(_, path)| path.split(['?', '#']).next().unwrap_or(""))
                .unwrap_or("");
            if topic.is_empty() {
                return Err((
                    "ntfy",
                    format!("{url:?} names no topic (e.g. https://ntfy.sh/my-topic)"),
                ));
            }
        }
        for argv in &self.commands {
            match argv.first() {
                None => return Err(("commands", "an empty command".to_owned())),
                Some(p) if p.trim().is_empty() => {
                    return Err(("commands", format!("{argv:?}: the program name is empty")));
                }
                Some(_) => {}
            }
        }
        if self.webhooks.is_empty() && self.ntfy.is_empty() && self.commands.is_empty() {
            return Err((
                "webhooks",
                "no notification target: set at least one of webhooks, ntfy or commands".to_owned(),
            ));
        }
        if self.events.is_empty() {
            return Err((
                "events",
                "empty: nothing would ever be sent (leave the key out for all four)".to_owned(),
            ));
        }
        let q = self.queue.trim();
        if q.is_empty() || q != self.queue {
            return Err(("queue", format!("{:?} is not a queue name", self.queue)));
        }
        if q.starts_with("amq.") {
            return Err((
                "queue",
                format!("{q:?}: names starting with amq. are reserved by RabbitMQ"),
            ));
        }
        if q == WORK_QUEUE || q == DEAD_QUEUE || q.starts_with(&format!("{RETRY_QUEUE_PREFIX}.")) {
            return Err((
                "queue",
                format!("{q:?} is one of Rafty's job queues: the notifier would consume jobs"),
            ));
        }
        if self.retry_delay.is_zero() {
            return Err(("retry-delay", "zero would retry in a tight loop".to_owned()));
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be more than zero".to_owned()));
        }
        Ok(())
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let bad = || format!("{url:?} is not an http:// or https:// URL");
    let uri: ureq::http::Uri = url.parse().map_err(|_| bad())?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(bad()),
    }
}

/// Why the configuration cannot be used. Every variant names the file; the binary exits 78.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The shared part of the file (as rafty-core reads it) is unusable.
    #[error(transparent)]
    Shared(#[from] ConfigError),
    /// `[notify]` has an unknown key or a value of the wrong type.
    #[error("config file {path}: [notify]: {message}")]
    Notify {
        /// The file.
        path: String,
        /// toml's message, which names the key and shows the line.
        message: String,
    },
    /// A `[notify]` value that parses but cannot work.
    #[error("config file {path}: [notify] {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Everything the notifier needs to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The shared configuration (host name, broker, the topology's settings).
    pub loaded: Loaded,
    /// `[notify]`.
    pub notify: NotifyConfig,
    /// The broker's node URLs (`$RAFTY_AMQP_URL`, `[broker] url-file`, `urls` or `url`).
    pub urls: Vec<String>,
}

/// Load the file the way every Rafty program finds it: `explicit` must exist; otherwise
/// `/etc/rafty/rafty.toml` is read if present. Without a file there is no target, which is an error.
pub fn load(explicit: Option<&Path>) -> Result<Settings, Error> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(DEFAULT_CONFIG_PATH),
    };
    if explicit.is_none() && !path.exists() {
        return Err(Error::Invalid {
            path: path.display().to_string(),
            key: "webhooks",
            message:
                "the file does not exist, so there is no notification target: create it with a \
                      [notify] section (see docs/notifications.md)"
                    .to_owned(),
        });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&text, &path)
}

/// Parse a whole configuration file's `text`, read from `path` (for messages).
pub fn parse(text: &str, path: &Path) -> Result<Settings, Error> {
    let name = path.display().to_string();
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let notify = NotifyConfig::parse(text).map_err(|message| Error::Notify {
        path: name.clone(),
        message,
    })?;
    notify.check().map_err(|(key, message)| Error::Invalid {
        path: name.clone(),
        key,
        message,
    })?;
    let config = shared_config(text, table).map_err(|message| ConfigError::Parse {
        path: path.to_path_buf(),
        message,
    })?;
    let loaded = Loaded {
        config,
        path: Some(path.to_path_buf()),
    };
    check_shared(&loaded)?;
    let urls = loaded.amqp_urls()?;
    Ok(Settings {
        loaded,
        notify,
        urls,
    })
}

/// rafty-core's configuration from the file without its `notify` key (the temporary arrangement of the
/// module docs).
fn shared_config(text: &str, mut table: toml::Table) -> Result<Config, String> {
    if table.remove("notify").is_none() {
        return Config::parse(text);
    }
    // The `[notify]` lines blanked, so that messages keep the file's line numbers; used only if it is
    // exactly the file without `notify` (an unusual layout falls back to the re-serialised table).
    let blanked = blank_notify_lines(text);
    if toml::from_str::<toml::Table>(&blanked).ok().as_ref() == Some(&table) {
        return Config::parse(&blanked);
    }
    let rest = toml::to_string(&table).map_err(|e| e.to_string())?;
    Config::parse(&rest)
}

/// `text` with the lines of `[notify]` and its sub-tables replaced by empty lines.
fn blank_notify_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_notify = false;
    for line in text.split_inclusive('\n') {
        if let Some(header) = line.trim_start().strip_prefix('[') {
            let name = header.trim_start_matches('[').trim_start();
            in_notify = name
                .strip_prefix("notify")
                .is_some_and(|rest| rest.trim_start().starts_with([']', '.']));
        }
        if in_notify {
            out.push_str(if line.ends_with('\n') { "\n" } else { "" });
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The checks `rafty_core::Config::load` makes on the values the notifier uses: the work queue and the
/// retry rungs it declares must match what every other program declares.
fn check_shared(loaded: &Loaded) -> Result<(), ConfigError> {
    let invalid = |message: &str| ConfigError::Invalid {
        path: loaded.source_name(),
        message: message.to_owned(),
    };
    let t = &loaded.config.transcode;
    if t.retry_delays.iter().any(|d| d.is_zero()) {
        return Err(invalid(
            "[transcode] retry-delays: a delay of zero would retry in a tight loop",
        ));
    }
    if t.delivery_limit == 0 {
        return Err(invalid("[transcode] delivery-limit must be at least 1"));
    }
    Ok(())
}

struct DurationVisitor;
impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration such as \"30s\", \"5m\" or \"2h\"")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARED: &str = "host = \"attic-pc\"\n[broker]\nurl = \"amqp://u:p@b:5672/%2f\"\n\
        [transcode]\nretry-delays = [\"1s\", \"2s\"]\npath-map = { \"/a\" = \"/b\" }\n";

    fn parse_str(text: &str) -> Result<Settings, Error> {
        parse(text, Path::new("/etc/rafty/test.toml"))
    }

    #[test]
    fn defaults_and_the_shared_sections_are_read() {
        let s = parse_str(&format!(
            "{SHARED}[notify]\nntfy = [\"https://ntfy.sh/rafty\"]\n"
        ))
        .unwrap();
        assert_eq!(s.notify.queue, "rafty.notify");
        assert_eq!(s.notify.retry_delay, Duration::from_secs(30));
        assert_eq!(s.notify.event_set().len(), EventKind::ALL.len());
        assert_eq!(s.loaded.host(), "attic-pc");
        assert_eq!(s.loaded.config.transcode.retry_delays.len(), 2);
        assert_eq!(s.loaded.config.transcode.path_map.len(), 1);
        if std::env::var_os("RAFTY_AMQP_URL").is_none() {
            assert_eq!(s.urls, ["amqp://u:p@b:5672/%2f"]);
        }
    }

    #[test]
    fn every_key_is_read() {
        let s = parse_str(
            "[notify]\nwebhooks = [\"http://127.0.0.1:9/h\"]\nntfy = [\"https://ntfy.sh/t\"]\n\
             commands = [[\"/usr/local/bin/notify-me\", \"--flag\"]]\nevents = [\"rip.failed\", \"transcode.failed\"]\n\
             queue = \"my.notify\"\nretry-delay = \"1s\"\ntimeout = \"5s\"\n",
        )
        .unwrap();
        let n = &s.notify;
        assert_eq!(n.webhooks, ["http://127.0.0.1:9/h"]);
        assert_eq!(n.commands, [["/usr/local/bin/notify-me", "--flag"]]);
        assert_eq!(
            n.event_set().into_iter().collect::<Vec<_>>(),
            [EventKind::TranscodeFailed, EventKind::RipFailed]
        );
        assert_eq!(n.queue, "my.notify");
        assert_eq!(n.retry_delay, Duration::from_secs(1));
        assert_eq!(n.timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_name_the_file_and_the_key() {
        let err = parse_str("[notify]\nntfy = [\"https://ntfy.sh/t\"]\ncolour = \"red\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/rafty/test.toml") && err.contains("colour"),
            "{err}"
        );
        let err =
            parse_str("[notify]\nntfy = [\"https://ntfy.sh/t\"]\nevents = [\"rip.progress\"]\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("rip.progress"), "{err}");
        // An unknown key in a shared section is still refused, with its name.
        let err = parse_str(
            "[transcode]\noutput-dri = \"/x\"\n[notify]\nntfy = [\"https://ntfy.sh/t\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/etc/rafty/test.toml") && err.contains("output-dri"),
            "{err}"
        );
    }

    #[test]
    fn values_that_cannot_work_are_refused_with_their_key() {
        for (text, key) in [
            ("webhooks = [\"ftp://x/y\"]", "webhooks"),
            ("ntfy = [\"https://ntfy.sh/\"]", "ntfy"),
            ("commands = [[]]", "commands"),
            (
                "retry-delay = \"0s\"\nntfy = [\"https://ntfy.sh/t\"]",
                "retry-delay",
            ),
            (
                "queue = \"rafty.transcode\"\nntfy = [\"https://ntfy.sh/t\"]",
                "queue",
            ),
            (
                "queue = \"rafty.transcode.retry.30s\"\nntfy = [\"https://ntfy.sh/t\"]",
                "queue",
            ),
            ("events = []\nntfy = [\"https://ntfy.sh/t\"]", "events"),
            ("events = [\"rip.done\"]", "webhooks"),
        ] {
            let err = parse_str(&format!("[notify]\n{text}\n")).unwrap_err();
            assert!(
                matches!(&err, Error::Invalid { key: k, .. } if *k == key),
                "{text}: {err}"
            );
            assert!(
                err.to_string().contains(&format!("[notify] {key}")),
                "{err}"
            );
        }
    }

    #[test]
    fn shared_errors_keep_their_line() {
        let text = "[broker]\nurl = \"amqp://x\"\n[notify]\nntfy = [\"https://ntfy.sh/t\"]\n\
                    \n[transcode]\noutput-dri = \"/x\"\n";
        let err = parse_str(text).unwrap_err().to_string();
        assert!(
            err.contains("line 7") && err.contains("output-dri"),
            "{err}"
        );
        // Dotted keys: the re-serialised table, still naming the key.
        let text = "notify.ntfy = [\"https://ntfy.sh/t\"]\n[transcode]\noutput-dri = \"/x\"\n";
        let err = parse_str(text).unwrap_err().to_string();
        assert!(err.contains("output-dri"), "{err}");
        assert_eq!(
            blank_notify_lines("a = 1\n[notify]\nb = 2\n[ notify.sub ]\nc = 3\n[notifyx]\nd = 4"),
            "a = 1\n\n\n\n\n[notifyx]\nd = 4"
        );
    }

    /// The commented `[notify]` example at the end of config/rafty.toml, uncommented, is valid and shows
    /// the defaults.
    #[test]
    fn the_example_in_config_rafty_toml_is_valid() {
        let example = include_str!("../../../config/rafty.toml");
        let start = example
            .lines()
            .position(|l| l == "# [notify]")
            .expect("a commented [notify] example");
        let text: String = example
            .lines()
            .skip(start)
            .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or("")))
            .collect();
        let s = parse_str(&text).unwrap();
        let defaults = NotifyConfig::default();
        assert_eq!(s.notify.webhooks.len(), 1);
        assert_eq!(s.notify.ntfy, ["https://ntfy.sh/my-rafty-topic"]);
        assert_eq!(s.notify.commands.len(), 1);
        assert_eq!(s.notify.events, defaults.events);
        assert_eq!(s.notify.queue, defaults.queue);
        assert_eq!(s.notify.retry_delay, defaults.retry_delay);
        assert_eq!(s.notify.timeout, defaults.timeout);
    }

    #[test]
    fn routing_keys() {
        assert_eq!(
            EventKind::TranscodeDone.routing_key(),
            "rafty.transcode.done"
        );
        assert_eq!(EventKind::RipFailed.routing_key(), "rafty.rip.failed");
        assert_eq!(
            EventKind::from_routing_key("rafty.rip.done"),
            Some(EventKind::RipDone)
        );
        assert_eq!(EventKind::from_routing_key("rafty.rip.progress"), None);
    }
}
