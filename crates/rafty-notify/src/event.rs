//! An event as the notifier passes it on: the JSON envelope for webhooks and commands, and the one-line
//! text, title and tags for ntfy. The texts come from the typed events of `rafty_core::wire`
//! (docs/protocol.md, "Events"); a body that is not its event degrades the text, never the delivery.

use std::path::Path;

use base64::Engine;
use rafty_core::wire;
use serde::Serialize;
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
    /// The body as its type (`rafty_core::wire`), or why it is not one: the text then says no more
    /// than the routing key does.
    pub wire: Result<wire::Event, String>,
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

/// ` on HOST`, or nothing when the host is blank.
fn on(host: &str) -> String {
    if host.trim().is_empty() {
        String::new()
    } else {
        format!(" on {host}")
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn or_reason(error: &str) -> &str {
    if error.trim().is_empty() {
        "no reason given"
    } else {
        error
    }
}

/// ` (a, b)` with `sep` between the parts, or nothing when there are none.
fn details(parts: &[String], sep: &str) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(sep))
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
        let wire = serde_json::to_vec(&body)
            .map_err(|e| e.to_string())
            .and_then(|data| wire::Event::decode(routing_key, &data).map_err(|e| e.to_string()));
        Event {
            kind,
            routing_key: routing_key.to_owned(),
            body,
            wire,
        }
    }

    /// The job the event is about (a transcode event's `id`, a `rip.done`'s `job`).
    pub fn job_id(&self) -> Option<String> {
        self.wire.as_ref().ok().and_then(wire::Event::job_id)
    }

    /// Whether a failed job gave up for good (dead-lettered) rather than waiting for a retry.
    fn gave_up(&self) -> bool {
        match (&self.wire, self.kind) {
            (Ok(wire::Event::Failed(f)), _) => f.gave_up(),
            (_, EventKind::RipFailed) => true,
            _ => false,
        }
    }

    /// The one-line text of a notification, e.g. `Feature Disc done on attic-pc (1 output, 45 s)`.
    pub fn text(&self) -> String {
        let text = match &self.wire {
            Ok(wire::Event::Done(d)) => {
                let n = d.outputs.len();
                let mut parts = vec![format!("{n} output{}", if n == 1 { "" } else { "s" })];
                if d.skipped {
                    parts.push("already done, nothing encoded".to_owned());
                } else {
                    parts.push(human_secs(d.elapsed_secs));
                }
                format!(
                    "{} done{}{}",
                    done_subject(d),
                    on(&d.host),
                    details(&parts, ", ")
                )
            }
            Ok(wire::Event::Failed(f)) => {
                let next = match f.next.as_str() {
                    wire::NEXT_DEAD_LETTER => "gave up, see raftyctl dead-letter list".to_owned(),
                    wire::NEXT_REQUEUED => "handed back to the queue".to_owned(),
                    q => match q.strip_prefix("rafty.transcode.retry.") {
                        Some(delay) => format!("retried in {delay}"),
                        None => format!("next: {q}"),
                    },
                };
                let parts = [format!("attempt {}", u64::from(f.attempt) + 1), next];
                format!(
                    "{} failed{}: {}{}",
                    failed_subject(f, false),
                    on(&f.host),
                    or_reason(&f.error),
                    details(&parts, "; ")
                )
            }
            Ok(wire::Event::RipDone(r)) => {
                let mut parts = vec![human_bytes(r.size)];
                if !r.host.trim().is_empty() {
                    parts.push(r.host.clone());
                }
                format!(
                    "rip of {} done: {}{}",
                    r.device.display(),
                    file_name(&r.image),
                    details(&parts, ", ")
                )
            }
            Ok(wire::Event::RipFailed(r)) => format!(
                "rip of {} failed{}: {} (exit {})",
                r.device.display(),
                on(&r.host),
                or_reason(&r.error),
                r.exit
            ),
            // A body that is not the event its key says: what the key alone tells.
            _ => match self.kind {
                EventKind::TranscodeDone => "a job done".to_owned(),
                EventKind::TranscodeFailed => "a job failed: no reason given".to_owned(),
                EventKind::RipDone => "rip of a drive done: an image".to_owned(),
                EventKind::RipFailed => "rip of a drive failed: no reason given".to_owned(),
            },
        };
        truncate(text)
    }

    /// The notification's title, e.g. `Rafty: Feature Disc done`.
    pub fn title(&self) -> String {
        let title = match (&self.wire, self.kind) {
            (Ok(wire::Event::Done(d)), _) => format!("Rafty: {} done", done_subject(d)),
            (Ok(wire::Event::Failed(f)), _) => format!("Rafty: {} failed", failed_subject(f, true)),
            (Ok(wire::Event::RipDone(r)), _) => format!("Rafty: {} ripped", file_name(&r.image)),
            (Ok(wire::Event::RipFailed(r)), _) => {
                format!("Rafty: rip of {} failed", r.device.display())
            }
            (_, EventKind::TranscodeDone) => "Rafty: a job done".to_owned(),
            (_, EventKind::TranscodeFailed) => "Rafty: a job failed".to_owned(),
            (_, EventKind::RipDone) => "Rafty: disc ripped".to_owned(),
            (_, EventKind::RipFailed) => "Rafty: rip failed".to_owned(),
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
        }
    }

    /// ntfy priority: `high` for failures nobody will retry, else none (ntfy's default).
    pub fn priority(&self) -> Option<&'static str> {
        self.gave_up().then_some("high")
    }

    /// What webhooks get as JSON and commands on stdin:
    /// `{"event", "routing-key", "title", "text", "body"}`, `body` being the event exactly as published.
    pub fn envelope(&self) -> Envelope<'_> {
        Envelope {
            event: self.kind.name(),
            routing_key: &self.routing_key,
            title: self.title(),
            text: self.text(),
            body: &self.body,
        }
    }
}

/// What a finished job is called: its output name, or its id when the name is blank.
fn done_subject(d: &wire::Done) -> String {
    if d.name.trim().is_empty() {
        format!("job {}", d.id)
    } else {
        d.name.clone()
    }
}

/// What a failed job is called: its output name when the event has one, else its id.
fn failed_subject(f: &wire::Failed, short: bool) -> String {
    match f.name.as_deref().filter(|n| !n.trim().is_empty()) {
        Some(name) => name.to_owned(),
        None if short => format!("job {}", short_id(&f.id)),
        None => format!("job {}", f.id),
    }
}

/// The JSON that webhooks and commands get.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Envelope<'a> {
    /// The event's name in `[notify] events`, e.g. `transcode.done`.
    pub event: &'static str,
    /// The routing key it was published with.
    pub routing_key: &'a str,
    /// The notification's title.
    pub title: String,
    /// The notification's text.
    pub text: String,
    /// The event exactly as published.
    pub body: &'a Value,
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
    use super::*;

    use serde_json::json;

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
            json!({"id": "x", "host": "", "attempt": 0, "error-kind": "disk-full", "error-class": "retryable",
                   "error": "disk full", "next": "rafty.transcode.retry.30s"}),
        );
        assert_eq!(
            retry.text(),
            "job x failed: disk full (attempt 1; retried in 30s)"
        );
        assert_eq!(retry.tags(), "warning,movie_camera");

        let ripped = event(
            EventKind::RipDone,
            json!({"device": "/dev/sr0", "image": "/var/lib/rafty/iso/FEATURE_DISC.iso",
                   "job": "4a28126f-a798-4e74-8212-bd07180314b4", "size": 6119424u64, "host": "attic-pc"}),
        );
        assert_eq!(
            ripped.text(),
            "rip of /dev/sr0 done: FEATURE_DISC.iso (5.8 MiB, attic-pc)"
        );
        assert_eq!(ripped.title(), "Rafty: FEATURE_DISC.iso ripped");
        assert_eq!(
            ripped.job_id().as_deref(),
            Some("4a28126f-a798-4e74-8212-bd07180314b4")
        );

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
    fn missing_fields_degrade_the_text() {
        assert_eq!(
            event(EventKind::TranscodeDone, json!({})).text(),
            "a job done"
        );
        assert_eq!(
            event(EventKind::RipFailed, json!({})).text(),
            "rip of a drive failed: no reason given"
        );
        let long = event(
            EventKind::RipFailed,
            json!({"device": "/dev/sr0", "error": "e".repeat(5000), "exit": 74, "host": "h"}),
        );
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
        let body = json!({"id": "4a28126f-a798-4e74-8212-bd07180314b4", "name": "N", "host": "h",
                          "outputs": [], "skipped": true, "attempt": 0, "preset": "P", "handbrake": "H",
                          "elapsed-secs": 0.1, "finished-at": "2026-11-23T16:58:18Z", "unknown": 1});
        let e = event(EventKind::TranscodeDone, body.clone());
        let env = serde_json::to_value(e.envelope()).unwrap();
        assert_eq!(env["event"], "transcode.done");
        assert_eq!(env["routing-key"], "rafty.transcode.done");
        assert_eq!(env["body"], body);
        assert_eq!(
            env["text"],
            "N done on h (0 outputs, already done, nothing encoded)"
        );
    }
}
