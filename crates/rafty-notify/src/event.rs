//! An event as the notifier passes it on: the JSON envelope for webhooks and commands, and the one-line
//! text, title and tags for ntfy. Every body is checked against its type in `rafty_core::wire` (a body
//! that is not its event is logged, and still delivered); the texts read the fields leniently, so a
//! field missing from a hand-written or third-party event degrades the text, never the delivery.

use base64::Engine;
use rafty_core::wire;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::EventKind;

/// Longest text sent to ntfy, in characters (ntfy's limit is 4096 bytes; errors can be long).
const MAX_TEXT_CHARS: usize = 1000;

/// One event taken from the notifier's queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its JSON body, exactly as the publisher sent it (webhooks and commands get it whole).
    pub body: Value,
    /// The body as its type, or why it is not one.
    pub wire: Result<wire::Event, String>,
    fields: Fields,
}

/// The fields of the event bodies (docs/protocol.md, "Events") that the texts use, each optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct Fields {
    id: Option<String>,
    job: Option<String>,
    name: Option<String>,
    host: Option<String>,
    outputs: Option<Vec<serde::de::IgnoredAny>>,
    skipped: Option<bool>,
    elapsed_secs: Option<f64>,
    error: Option<String>,
    attempt: Option<u64>,
    next: Option<String>,
    device: Option<String>,
    image: Option<String>,
    size: Option<u64>,
    exit: Option<i64>,
    destination: Option<String>,
    reason: Option<String>,
    since: Option<String>,
    checked: Option<u64>,
    findings: Option<u64>,
    repaired: Option<u64>,
    lines: Option<Vec<String>>,
}

/// Whether an audit event has findings that were not mended.
fn b_unmended(f: &Fields) -> bool {
    f.findings.unwrap_or(0) > f.repaired.unwrap_or(0)
}

/// A text field, unless blank.
fn text(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.trim().is_empty())
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `45 s`, `12 min 3 s`, `2 h 5 min`.
pub fn human_secs(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => match s % 60 {
            0 => format!("{} min", s / 60),
            r => format!("{} min {r} s", s / 60),
        },
        _ => match (s % 3600) / 60 {
            0 => format!("{} h", s / 3600),
            m => format!("{} h {m} min", s / 3600),
        },
    }
}

/// `5.8 GiB`, `640.0 MiB`, `512 bytes`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn truncate(text: String) -> String {
    // One line: a newline in an error would cut the notification short on some clients.
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX_TEXT_CHARS {
        one_line
    } else {
        let mut t: String = one_line.chars().take(MAX_TEXT_CHARS - 1).collect();
        t.push('…');
        t
    }
}

impl Event {
    /// The event a delivery carries: `None` when the body is not a JSON object at all.
    pub fn new(kind: EventKind, routing_key: &str, data: &[u8]) -> Option<Event> {
        let body: Value = serde_json::from_slice(data).ok().filter(Value::is_object)?;
        Some(Event::from_body(kind, routing_key, body))
    }

    /// The event for a JSON body.
    pub fn from_body(kind: EventKind, routing_key: &str, body: Value) -> Event {
        let data = serde_json::to_vec(&body).expect("a JSON value serializes");
        let wire = wire::Event::decode(routing_key, &data).map_err(|e| e.to_string());
        let fields = serde_json::from_slice(&data).unwrap_or_default();
        Event {
            kind,
            routing_key: routing_key.to_owned(),
            body,
            wire,
            fields,
        }
    }

    /// The job id (transcode events' `id`, `rip.done`'s `job`), if the body has one.
    pub fn job_id(&self) -> Option<&str> {
        text(&self.fields.id).or_else(|| text(&self.fields.job))
    }

    /// What a transcode event is about: the output name when the body has one (`done` does), else the
    /// job id (`failed` carries only the id).
    fn subject(&self, short: bool) -> String {
        match (text(&self.fields.name), self.job_id()) {
            (Some(name), _) => name.to_owned(),
            (None, Some(id)) if short => format!("job {}", short_id(id)),
            (None, Some(id)) => format!("job {id}"),
            (None, None) => "a job".to_owned(),
        }
    }

    fn host_part(&self) -> String {
        text(&self.fields.host)
            .map(|h| format!(" on {h}"))
            .unwrap_or_default()
    }

    fn image_name(&self) -> Option<String> {
        text(&self.fields.image).map(|p| {
            std::path::Path::new(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.to_owned())
        })
    }

    /// Whether a failed job gave up for good (dead-lettered) rather than waiting for a retry.
    fn gave_up(&self) -> bool {
        match self.kind {
            EventKind::TranscodeFailed => text(&self.fields.next) == Some(wire::NEXT_DEAD_LETTER),
            EventKind::RipFailed | EventKind::ReplicaAway => true,
            EventKind::Audit => b_unmended(&self.fields),
            _ => false,
        }
    }

    /// The one-line text of a notification, e.g. `Feature Disc done on attic-pc (1 output, 45 s)`.
    pub fn text(&self) -> String {
        let b = &self.fields;
        let text = match self.kind {
            EventKind::TranscodeDone => {
                let outputs = b.outputs.as_ref().map(Vec::len);
                let mut details = Vec::new();
                if let Some(n) = outputs {
                    details.push(format!("{n} output{}", if n == 1 { "" } else { "s" }));
                }
                if b.skipped == Some(true) {
                    details.push("already done, nothing encoded".to_owned());
                } else if let Some(secs) = b.elapsed_secs {
                    details.push(human_secs(secs));
                }
                let details = if details.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", details.join(", "))
                };
                format!("{} done{}{details}", self.subject(false), self.host_part())
            }
            EventKind::TranscodeFailed => {
                let error = text(&b.error).unwrap_or("no reason given");
                let attempt = b.attempt;
                let next = match text(&b.next) {
                    Some("dead-letter") => {
                        Some("gave up, see raftyctl dead-letter list".to_owned())
                    }
                    Some("requeued") => Some("handed back to the queue".to_owned()),
                    Some(q) => Some(match q.strip_prefix("rafty.transcode.retry.") {
                        Some(delay) => format!("retried in {delay}"),
                        None => format!("next: {q}"),
                    }),
                    None => None,
                };
                let mut details = Vec::new();
                if let Some(a) = attempt {
                    details.push(format!("attempt {}", a + 1));
                }
                details.extend(next);
                let details = if details.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", details.join("; "))
                };
                format!(
                    "{} failed{}: {error}{details}",
                    self.subject(false),
                    self.host_part()
                )
            }
            EventKind::RipDone => {
                let device = text(&b.device).unwrap_or("a drive");
                let image = self.image_name().unwrap_or_else(|| "an image".to_owned());
                let mut details = Vec::new();
                if let Some(size) = b.size {
                    details.push(human_bytes(size));
                }
                if let Some(h) = text(&b.host) {
                    details.push(h.to_owned());
                }
                let details = if details.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", details.join(", "))
                };
                format!("rip of {device} done: {image}{details}")
            }
            EventKind::RipFailed => {
                let device = text(&b.device).unwrap_or("a drive");
                let error = text(&b.error).unwrap_or("no reason given");
                let exit = b.exit.map(|e| format!(" (exit {e})")).unwrap_or_default();
                format!("rip of {device} failed{}: {error}{exit}", self.host_part())
            }
            EventKind::ReplicaAway => {
                let dest = text(&b.destination).unwrap_or("a destination");
                let since = text(&b.since)
                    .map(|s| format!(" since {s}"))
                    .unwrap_or_default();
                let reason = text(&b.reason).unwrap_or("no reason given");
                format!("destination {dest} is away{since}; its copies wait in its queue: {reason}")
            }
            EventKind::Audit => {
                let checked = b.checked.unwrap_or(0);
                match b.findings.unwrap_or(0) {
                    0 => format!(
                        "audit{}: {checked} copies checked, all good",
                        self.host_part()
                    ),
                    n => {
                        let repaired = b.repaired.unwrap_or(0);
                        let first = b
                            .lines
                            .as_ref()
                            .and_then(|l| l.first())
                            .map(|l| format!("; first: {l}"))
                            .unwrap_or_default();
                        format!(
                            "audit{}: {n} finding(s) in {checked} copies checked, {repaired} repaired{first}",
                            self.host_part()
                        )
                    }
                }
            }
        };
        truncate(text)
    }

    /// The notification's title, e.g. `Rafty: Feature Disc done`.
    pub fn title(&self) -> String {
        let title = match self.kind {
            EventKind::TranscodeDone => format!("Rafty: {} done", self.subject(true)),
            EventKind::TranscodeFailed => format!("Rafty: {} failed", self.subject(true)),
            EventKind::RipDone => match self.image_name() {
                Some(image) => format!("Rafty: {image} ripped"),
                None => "Rafty: disc ripped".to_owned(),
            },
            EventKind::RipFailed => match text(&self.fields.device) {
                Some(d) => format!("Rafty: rip of {d} failed"),
                None => "Rafty: rip failed".to_owned(),
            },
            EventKind::ReplicaAway => match text(&self.fields.destination) {
                Some(d) => format!("Rafty: destination {d} away"),
                None => "Rafty: a destination is away".to_owned(),
            },
            EventKind::Audit if b_unmended(&self.fields) => {
                "Rafty: the audit found problems".to_owned()
            }
            EventKind::Audit => "Rafty: audit clean".to_owned(),
        };
        truncate(title)
    }

    /// ntfy tags (emoji short codes), comma-separated.
    pub fn tags(&self) -> &'static str {
        match self.kind {
            EventKind::TranscodeDone => "white_check_mark,movie_camera",
            EventKind::TranscodeFailed if self.gave_up() => "x,movie_camera",
            EventKind::TranscodeFailed => "warning,movie_camera",
            EventKind::RipDone => "white_check_mark,cd",
            EventKind::RipFailed => "x,cd",
            EventKind::ReplicaAway => "warning,floppy_disk",
            EventKind::Audit if self.gave_up() => "x,floppy_disk",
            EventKind::Audit => "white_check_mark,floppy_disk",
        }
    }

    /// ntfy priority: `high` for failures nobody will retry, else none (ntfy's default).
    pub fn priority(&self) -> Option<&'static str> {
        self.gave_up().then_some("high")
    }

    /// What webhooks get as JSON and commands on stdin:
    /// `{"event", "routing-key", "title", "text", "body"}`, `body` being the event exactly as published.
    pub fn envelope(&self) -> Value {
        serde_json::to_value(Envelope {
            event: self.kind.name(),
            routing_key: &self.routing_key,
            title: self.title(),
            text: self.text(),
            body: &self.body,
        })
        .expect("the envelope serializes")
    }
}

/// The JSON that webhooks and commands get.
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Envelope<'a> {
    event: &'static str,
    routing_key: &'a str,
    title: String,
    text: String,
    body: &'a Value,
}

/// A header value that HTTP can carry: as is when it is printable ASCII, else an RFC 2047 encoded word
/// (`=?UTF-8?B?…?=`), which ntfy decodes.
pub fn header_value(text: &str) -> String {
    if text.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        text.to_owned()
    } else {
        let clean: String = text.chars().filter(|c| !c.is_control()).collect();
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(clean.as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(kind: EventKind, body: Value) -> Event {
        Event::from_body(kind, &kind.routing_key(), body)
    }

    #[test]
    fn texts_use_the_fields_of_the_bodies() {
        let done = event(
            EventKind::TranscodeDone,
            json!({"id": "4a28126f-a798-4e74-8212-bd07180314b4", "host": "attic-pc", "name": "Feature Disc",
                   "outputs": [{"path": "/m/Feature Disc.mkv", "title": 1, "duration-secs": 45.0, "size": 1, "skipped": false}],
                   "skipped": false, "attempt": 0, "preset": "Fast 1080p30", "handbrake": "HandBrake 1.6.1",
                   "elapsed-secs": 45.2, "finished-at": "2026-11-23T16:58:18Z"}),
        );
        assert_eq!(
            done.text(),
            "Feature Disc done on attic-pc (1 output, 45 s)"
        );
        assert_eq!(done.title(), "Rafty: Feature Disc done");
        assert_eq!(done.priority(), None);

        let failed = event(
            EventKind::TranscodeFailed,
            json!({"id": "4a28126f-a798-4e74-8212-bd07180314b4", "host": "attic-pc", "attempt": 1,
                   "error-kind": "handbrake", "error-class": "permanent",
                   "error": "HandBrakeCLI exited with status 2:\n No title found.", "next": "dead-letter"}),
        );
        assert_eq!(
            failed.text(),
            "job 4a28126f-a798-4e74-8212-bd07180314b4 failed on attic-pc: HandBrakeCLI exited with status 2: \
             No title found. (attempt 2; gave up, see raftyctl dead-letter list)"
        );
        assert_eq!(failed.title(), "Rafty: job 4a28126f failed");
        assert_eq!(failed.tags(), "x,movie_camera");
        assert_eq!(failed.priority(), Some("high"));

        let retry = event(
            EventKind::TranscodeFailed,
            json!({"id": "x", "attempt": 0, "error": "disk full", "next": "rafty.transcode.retry.30s"}),
        );
        assert_eq!(
            retry.text(),
            "job x failed: disk full (attempt 1; retried in 30s)"
        );
        assert_eq!(retry.tags(), "warning,movie_camera");

        let ripped = event(
            EventKind::RipDone,
            json!({"device": "/dev/sr0", "image": "/var/lib/rafty/iso/FEATURE_DISC.iso",
                   "job": "4a28126f", "size": 6119424u64, "host": "attic-pc"}),
        );
        assert_eq!(
            ripped.text(),
            "rip of /dev/sr0 done: FEATURE_DISC.iso (5.8 MiB, attic-pc)"
        );
        assert_eq!(ripped.title(), "Rafty: FEATURE_DISC.iso ripped");
        assert_eq!(ripped.job_id(), Some("4a28126f"));

        let rip_failed = event(
            EventKind::RipFailed,
            json!({"device": "/dev/sr0", "error": "12 sectors unreadable", "exit": 74, "host": "attic-pc"}),
        );
        assert_eq!(
            rip_failed.text(),
            "rip of /dev/sr0 failed on attic-pc: 12 sectors unreadable (exit 74)"
        );
    }

    #[test]
    fn replication_events_say_what_needs_doing() {
        let away = event(
            EventKind::ReplicaAway,
            json!({"destination": "usb", "reason": "/mnt/usb/rafty: No such file or directory",
                   "since": "2026-11-23T16:58:18Z", "host": "nas"}),
        );
        assert_eq!(
            away.text(),
            "destination usb is away since 2026-11-23T16:58:18Z; its copies wait in its queue: /mnt/usb/rafty: No such file or directory"
        );
        assert_eq!(away.title(), "Rafty: destination usb away");
        assert_eq!(away.priority(), Some("high"));
        let found = event(
            EventKind::Audit,
            json!({"checked": 10, "findings": 2, "repaired": 1, "lines": ["CORRUPT usb iso/A.iso: x"], "host": "nas"}),
        );
        assert_eq!(
            found.text(),
            "audit on nas: 2 finding(s) in 10 copies checked, 1 repaired; first: CORRUPT usb iso/A.iso: x"
        );
        assert_eq!(found.title(), "Rafty: the audit found problems");
        assert_eq!(found.priority(), Some("high"));
        let clean = event(
            EventKind::Audit,
            json!({"checked": 10, "findings": 1, "repaired": 1, "lines": [], "host": "nas"}),
        );
        assert_eq!(clean.title(), "Rafty: audit clean");
        assert_eq!(clean.priority(), None);
        assert!(found.wire.is_ok() && away.wire.is_ok(), "{:?}", found.wire);
    }

    #[test]
    fn missing_fields_degrade_the_text() {
        assert_eq!(
            event(EventKind::TranscodeDone, json!({})).text(),
            "a job done"
        );
        assert_eq!(
            event(EventKind::RipFailed, json!({})).text(),
            "rip of a drive failed: no reason given"
        );
        let long = event(EventKind::RipFailed, json!({"error": "e".repeat(5000)}));
        assert_eq!(long.text().chars().count(), MAX_TEXT_CHARS);
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(human_secs(45.2), "45 s");
        assert_eq!(human_secs(723.0), "12 min 3 s");
        assert_eq!(human_secs(7500.0), "2 h 5 min");
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(6_227_020_800), "5.8 GiB");
    }

    #[test]
    fn non_ascii_headers_are_encoded_words() {
        assert_eq!(
            header_value("Rafty: Feature Disc done"),
            "Rafty: Feature Disc done"
        );
        assert_eq!(header_value("é"), "=?UTF-8?B?w6k=?=");
    }

    #[test]
    fn the_envelope_keeps_the_body() {
        let body = json!({"id": "x", "name": "N", "host": "h"});
        let e = event(EventKind::TranscodeDone, body.clone());
        let env = e.envelope();
        assert_eq!(env["event"], "transcode.done");
        assert_eq!(env["routing-key"], "rafty.transcode.done");
        assert_eq!(env["body"], body);
        assert_eq!(env["text"], "N done on h");
    }
}
