//! Every message but the job that crosses a process boundary, as a type: the events workers and `rip`
//! announce, a worker's status (its heartbeat and its answer to `raftyctl status`), and the control
//! requests that steer workers. The job itself is [`crate::job`].
//!
//! Producers serialize these types and consumers (`raftyctl status` and `watch`, `rafty-notify`, the
//! tests) deserialize them, so the schema lives here and in docs/protocol.md, whose every example is
//! parsed into its type by a test (`doc_examples_parse`). Like the job, each is version 1 (the AMQP
//! `type` property says `rafty.event.<kind>.v1`), unknown fields are ignored so newer producers can
//! talk to older consumers, and field names are kebab-case on the wire.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::names::{EVENTS_EXCHANGE, RIP_EXCHANGE};

/// An encode starts (`rafty.transcode.started`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Started {
    /// The job id.
    pub id: Uuid,
    /// The worker's host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
    /// The title being encoded.
    pub title: u32,
    /// Where the output will be.
    pub output: PathBuf,
    /// The HandBrake preset.
    pub preset: String,
}

/// How far an encode is, every two seconds (`rafty.transcode.progress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Progress {
    /// The job id.
    pub id: Uuid,
    /// The worker's host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
    /// The title being encoded.
    pub title: u32,
    /// 0 to 100.
    pub percent: f64,
    /// Frames per second, when HandBrake says.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Seconds left, when HandBrake says.
    #[serde(default)]
    pub eta_secs: Option<u64>,
}

/// Which way a transfer between a worker and `rafty-store` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The job's disc image, from the store to the worker's scratch directory.
    Download,
    /// A verified output, from the worker to the store's media library.
    Upload,
}

impl Direction {
    /// `download` or `upload`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Download => "download",
            Direction::Upload => "upload",
        }
    }
}

/// How far a transfer to or from `rafty-store` is, every two seconds and when it ends
/// (`rafty.transcode.transfer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Transfer {
    /// The job id.
    pub id: Uuid,
    /// The worker's host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
    /// Download (the image) or upload (an output).
    pub direction: Direction,
    /// What is transferred: the image's path or the output's name.
    pub object: String,
    /// Bytes in place so far.
    pub bytes: u64,
    /// Bytes in all.
    pub total: u64,
    /// 0 to 100.
    pub percent: f64,
    /// Bytes per second over the last interval.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Times the transfer was cut and resumed so far.
    #[serde(default)]
    pub resumed: u32,
    /// Whether the transfer is complete (the last event of a transfer).
    #[serde(default)]
    pub complete: bool,
}

/// One output of a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OutputDone {
    /// Where it is.
    pub path: PathBuf,
    /// The title it came from.
    pub title: u32,
    /// Its duration.
    pub duration_secs: f64,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it was already in place (nothing was encoded).
    pub skipped: bool,
    /// Its SHA-256 (hex), when the worker recorded one in the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A job's outputs are verified and in place (`rafty.transcode.done`; confirmed before the ack).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Done {
    /// The job id.
    pub id: Uuid,
    /// The worker's host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
    /// The job's output name.
    pub name: String,
    /// For a title job: the disc job it was split from.
    #[serde(default)]
    pub disc: Option<Uuid>,
    /// What was put in place.
    pub outputs: Vec<OutputDone>,
    /// Whether every output was already in place.
    pub skipped: bool,
    /// The attempt that finished it (0 = first).
    pub attempt: u32,
    /// The HandBrake preset.
    pub preset: String,
    /// The HandBrake version.
    pub handbrake: String,
    /// How long the job took on this worker.
    pub elapsed_secs: f64,
    /// When it finished (RFC 3339).
    pub finished_at: String,
    /// Set when the job was one step of a title split by chapters (docs/split.md): only the join's
    /// `done` stands for the title (notifiers announce no other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitDone>,
}

/// One step of a split title, done (in [`Done::split`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SplitDone {
    /// The job whose title was split.
    pub whole: Uuid,
    /// `video`, `tracks` or `join`.
    pub step: String,
    /// Video frames this step made: a piece's, the tracks pass's (the whole title's), the join's.
    pub frames: u64,
    /// The join's checks, each with its result (empty on the other steps).
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Why the join encoded the title whole instead, when a check failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// One check of a join, and what it found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Check {
    /// What was checked: `frames`, `duration`, `seam 2`, `audio`, `decode`, `chapters`.
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// The figures behind it.
    pub detail: String,
}

/// What became of a failed job: the retry queue it went to, `dead-letter`, or `requeued`.
pub const NEXT_DEAD_LETTER: &str = "dead-letter";
/// See [`NEXT_DEAD_LETTER`].
pub const NEXT_REQUEUED: &str = "requeued";

/// A job failed (`rafty.transcode.failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Failed {
    /// The job id, or the message id when the body was not a job.
    pub id: String,
    /// The job's output name, when the body was a job.
    #[serde(default)]
    pub name: Option<String>,
    /// The worker's host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
    /// The attempt that failed (0 = first).
    pub attempt: u32,
    /// A short stable name of the failure (`rafty_core::Failure::kind`).
    pub error_kind: String,
    /// `permanent`, `retryable` or `requeue`.
    pub error_class: String,
    /// The reason, whole.
    pub error: String,
    /// The retry queue the job went to, [`NEXT_DEAD_LETTER`] or [`NEXT_REQUEUED`].
    pub next: String,
}

impl Failed {
    /// Whether the job was parked for good rather than left to a retry.
    pub fn gave_up(&self) -> bool {
        self.next == NEXT_DEAD_LETTER
    }
}

/// A disc job was split into title jobs (`rafty.transcode.split`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Split {
    /// The disc job's id.
    pub id: Uuid,
    /// The worker's host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
    /// The disc job's output name.
    pub name: String,
    /// The attempt that split it.
    pub attempt: u32,
    /// The titles, one job each.
    pub titles: Vec<u32>,
    /// The title jobs' ids (a UUID v5 of the disc job id and `title-N`).
    pub jobs: Vec<Uuid>,
    /// The title jobs' outputs, relative to the output directory.
    pub outputs: Vec<String>,
    /// Set when one title was split by chapters: the chapters of each video piece, whose jobs are
    /// the first ones in `jobs` (the last is the tracks pass).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chapters: Vec<crate::job::ChapterRange>,
}

/// The last title of a split disc is in place (`rafty.transcode.disc.done`; may come twice).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DiscDone {
    /// The disc job's id.
    pub disc: Uuid,
    /// The host of the worker that finished the last title (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
    /// The disc job's output name.
    pub name: String,
    /// Every output of the disc.
    pub outputs: Vec<PathBuf>,
}

/// A destination of `rafty-replicate` has been away for `[replicate] away-after`
/// (`rafty.replicate.away`): its backlog waits in its queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ReplicaAway {
    /// The destination's name.
    pub destination: String,
    /// Why it is away, as last seen.
    pub reason: String,
    /// When it went away (RFC 3339).
    pub since: String,
    /// The replicating host.
    #[serde(default)]
    pub host: String,
}

/// `raftyctl audit` finished (`rafty.replicate.audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AuditDone {
    /// Copies checked.
    pub checked: u64,
    /// Findings (anything but OK), before repair.
    pub findings: u64,
    /// Findings mended by `--repair`.
    pub repaired: u64,
    /// The first findings, one line each (`VERDICT PLACE KEY: detail`).
    pub lines: Vec<String>,
    /// The auditing host.
    #[serde(default)]
    pub host: String,
}

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerState {
    /// Waiting for a job.
    Idle,
    /// Encoding.
    Working,
    /// Asked to take no new job; finishing this one.
    Draining,
    /// Taking no jobs until resumed.
    Drained,
    /// Stopping (SIGTERM).
    Stopping,
    /// A state a newer worker reports that this version does not know.
    #[serde(other)]
    Unknown,
}

impl WorkerState {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Idle => "idle",
            WorkerState::Working => "working",
            WorkerState::Draining => "draining",
            WorkerState::Drained => "drained",
            WorkerState::Stopping => "stopping",
            WorkerState::Unknown => "unknown",
        }
    }
}

/// The job a worker has in hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Activity {
    /// The job id.
    pub id: Uuid,
    /// The job's output name.
    pub name: String,
    /// The job's source path, as the producer wrote it.
    pub source: PathBuf,
    /// The attempt (0 = first).
    pub attempt: u32,
    /// When this worker took it (RFC 3339).
    pub started_at: String,
    /// The title being encoded, once the encode started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<u32>,
    /// 0 to 100, once the encode started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Frames per second, when HandBrake says.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Seconds left, when HandBrake says.
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// What the job is doing: `download`, `encode` or `upload` (absent from older workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// A worker's status: its heartbeat (`rafty.transcode.worker.heartbeat`) and its answer to every
/// control request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct WorkerStatus {
    /// The worker's host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
    /// The program (`transcoded`).
    pub app: String,
    /// Its version.
    pub version: String,
    /// Its HandBrake's version.
    pub handbrake: String,
    /// Its process id.
    pub pid: u32,
    /// How long it has run.
    pub uptime_secs: u64,
    /// What it is doing.
    pub state: WorkerState,
    /// The job in hand; `null` when idle.
    pub job: Option<Activity>,
}

/// A request on the `rafty.control` fanout exchange; every worker answers with its [`WorkerStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// What are you doing?
    Status,
    /// Take no new job after the one in hand, until resumed (`host` or `*` for every worker).
    Drain {
        /// Which workers: a host name, or `*`.
        host: String,
    },
    /// Take jobs again.
    Resume {
        /// Which workers: a host name, or `*`.
        host: String,
    },
}

impl ControlRequest {
    /// The AMQP `type` of a control request.
    pub const TYPE: &'static str = "rafty.control.v1";

    /// Whether a request addressed by host concerns the worker on `host` (`status` asks everyone).
    pub fn is_for(&self, host: &str) -> bool {
        match self {
            ControlRequest::Status => true,
            ControlRequest::Drain { host: h } | ControlRequest::Resume { host: h } => {
                h == host || h == "*"
            }
        }
    }
}

/// How far a copy is (`rafty.rip.progress`), every `progress-interval` and at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RipProgress {
    /// The drive.
    pub device: PathBuf,
    /// The image being written.
    pub image: PathBuf,
    /// Bytes copied, including earlier runs.
    pub done: u64,
    /// The disc's size.
    pub total: u64,
    /// 0 to 100.
    pub percent: f64,
    /// Bytes per second of this run.
    pub rate: f64,
    /// Seconds left, when known.
    #[serde(default)]
    pub eta_secs: Option<u64>,
    /// Sectors found unreadable so far (they are retried while passes remain; 0 when a producer
    /// left it out).
    #[serde(default)]
    pub unreadable: u64,
    /// The ripping host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
}

/// An image is complete and its job confirmed (`rafty.rip.done`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RipDone {
    /// The drive.
    pub device: PathBuf,
    /// The image.
    pub image: PathBuf,
    /// The job published for it.
    pub job: Uuid,
    /// The image's size in bytes.
    pub size: u64,
    /// The ripping host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
}

/// A rip ended without a job (`rafty.rip.failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RipFailed {
    /// The drive.
    pub device: PathBuf,
    /// What went wrong.
    pub error: String,
    /// rip's exit status.
    pub exit: u8,
    /// The ripping host (empty when a third-party producer left it out).
    #[serde(default)]
    pub host: String,
}

/// Why a message is not the event its routing key says.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No event has this routing key.
    #[error("{0} is not a Rafty event routing key")]
    UnknownKey(String),
    /// The body does not parse into the event's type.
    #[error("the body of {key} is not a valid event: {source}")]
    Body {
        /// The routing key.
        key: String,
        /// serde's reason (names the field).
        source: serde_json::Error,
    },
}

macro_rules! events {
    ($($variant:ident($ty:ty) => $exchange:ident, $key:literal;)*) => {
        /// Every event, by what happened. Each is published on one exchange with one routing key.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Event {
            $(
                #[doc = concat!("`", $key, "`")]
                $variant($ty),
            )*
        }

        impl Event {
            /// Every routing key an event is published with.
            pub const ROUTING_KEYS: &'static [&'static str] = &[$($key),*];

            /// The routing key it is published with.
            pub fn routing_key(&self) -> &'static str {
                match self { $(Event::$variant(_) => $key,)* }
            }

            /// The exchange it is published on.
            pub fn exchange(&self) -> &'static str {
                match self { $(Event::$variant(_) => $exchange,)* }
            }

            /// The JSON body.
            pub fn to_json(&self) -> Vec<u8> {
                match self { $(Event::$variant(e) => serde_json::to_vec(e),)* }
                    .expect("events serialize")
            }

            /// The event a message with this routing key and body carries.
            pub fn decode(routing_key: &str, body: &[u8]) -> Result<Event, WireError> {
                match routing_key {
                    $($key => parse(routing_key, body).map(Event::$variant),)*
                    other => Err(WireError::UnknownKey(other.to_owned())),
                }
            }
        }

        $(
            impl From<$ty> for Event {
                fn from(e: $ty) -> Event {
                    Event::$variant(e)
                }
            }
        )*
    };
}

events! {
    Started(Started) => EVENTS_EXCHANGE, "rafty.transcode.started";
    Progress(Progress) => EVENTS_EXCHANGE, "rafty.transcode.progress";
    Transfer(Transfer) => EVENTS_EXCHANGE, "rafty.transcode.transfer";
    Done(Done) => EVENTS_EXCHANGE, "rafty.transcode.done";
    Failed(Failed) => EVENTS_EXCHANGE, "rafty.transcode.failed";
    Split(Split) => EVENTS_EXCHANGE, "rafty.transcode.split";
    DiscDone(DiscDone) => EVENTS_EXCHANGE, "rafty.transcode.disc.done";
    Heartbeat(WorkerStatus) => EVENTS_EXCHANGE, "rafty.transcode.worker.heartbeat";
    RipProgress(RipProgress) => RIP_EXCHANGE, "rafty.rip.progress";
    RipDone(RipDone) => RIP_EXCHANGE, "rafty.rip.done";
    RipFailed(RipFailed) => RIP_EXCHANGE, "rafty.rip.failed";
    ReplicaAway(ReplicaAway) => EVENTS_EXCHANGE, "rafty.replicate.away";
    AuditDone(AuditDone) => EVENTS_EXCHANGE, "rafty.replicate.audit";
}

impl Event {
    /// The AMQP `type` property: `rafty.event.<last word of the routing key>.v1`, as Rafty has
    /// always stamped it (so `disc.done` and `rip.done` say `done` too: tell them by routing key).
    pub fn message_type(&self) -> String {
        let key = self.routing_key();
        let kind = key.rsplit('.').next().unwrap_or(key);
        format!("rafty.event.{kind}.v1")
    }

    /// The job the event is about, when it names one (`id`, a `rip.done`'s `job`, a `disc.done`'s
    /// `disc`).
    pub fn job_id(&self) -> Option<String> {
        match self {
            Event::Started(e) => Some(e.id.to_string()),
            Event::Progress(e) => Some(e.id.to_string()),
            Event::Transfer(e) => Some(e.id.to_string()),
            Event::Done(e) => Some(e.id.to_string()),
            Event::Failed(e) => Some(e.id.clone()),
            Event::Split(e) => Some(e.id.to_string()),
            Event::DiscDone(e) => Some(e.disc.to_string()),
            Event::RipDone(e) => Some(e.job.to_string()),
            Event::Heartbeat(_)
            | Event::RipProgress(_)
            | Event::RipFailed(_)
            | Event::ReplicaAway(_)
            | Event::AuditDone(_) => None,
        }
    }

    /// The host that published it.
    pub fn host(&self) -> &str {
        match self {
            Event::Started(e) => &e.host,
            Event::Progress(e) => &e.host,
            Event::Transfer(e) => &e.host,
            Event::Done(e) => &e.host,
            Event::Failed(e) => &e.host,
            Event::Split(e) => &e.host,
            Event::DiscDone(e) => &e.host,
            Event::Heartbeat(e) => &e.host,
            Event::RipProgress(e) => &e.host,
            Event::RipDone(e) => &e.host,
            Event::RipFailed(e) => &e.host,
            Event::ReplicaAway(e) => &e.host,
            Event::AuditDone(e) => &e.host,
        }
    }
}

/// Parse one wire type from JSON, naming the field that is wrong.
pub fn parse<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|source| WireError::Body {
        key: what.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ```json block in docs/protocol.md follows a `<!-- wire: NAME -->` marker naming what it
    /// is (a routing key, `job`, `control.request` or `control.reply`), and parses into that type.
    #[test]
    fn doc_examples_parse() {
        let doc = include_str!("../../../docs/protocol.md");
        let mut checked = Vec::new();
        let mut marker: Option<&str> = None;
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.trim().strip_prefix("<!-- wire:") {
                marker = Some(rest.trim_end_matches("-->").trim());
                continue;
            }
            if line.trim() != "```json" {
                continue;
            }
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let body = block.join("\n");
            let name = marker.take().unwrap_or_else(|| {
                panic!("a ```json block without a <!-- wire: … --> marker:\n{body}")
            });
            let parsed = match name {
                "job" => crate::Job::decode(None, body.as_bytes())
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                "control.request" => parse::<ControlRequest>(name, body.as_bytes())
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                "control.reply" => parse::<WorkerStatus>(name, body.as_bytes())
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                key => Event::decode(key, body.as_bytes())
                    .map(|e| assert_eq!(e.routing_key(), key))
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = parsed {
                panic!("docs/protocol.md: the {name} example does not parse: {e}\n{body}");
            }
            checked.push(name.to_owned());
        }
        for key in Event::ROUTING_KEYS {
            assert!(
                checked.iter().any(|c| c == key),
                "docs/protocol.md has no example of {key}"
            );
        }
        for name in ["job", "control.request", "control.reply"] {
            assert!(
                checked.iter().any(|c| c == name),
                "docs/protocol.md has no {name} example"
            );
        }
    }

    #[test]
    fn events_round_trip_and_ignore_unknown_fields() {
        let done = Event::Done(Done {
            id: Uuid::nil(),
            host: "h".into(),
            name: "N".into(),
            disc: None,
            outputs: vec![OutputDone {
                path: "/m/N.mkv".into(),
                title: 1,
                duration_secs: 45.0,
                size: 10,
                skipped: false,
                sha256: None,
            }],
            skipped: false,
            attempt: 0,
            preset: "P".into(),
            handbrake: "HandBrake 1.6.1".into(),
            elapsed_secs: 1.5,
            finished_at: "2026-12-02T00:00:00Z".into(),
            split: None,
        });
        let body = done.to_json();
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.contains("\"duration-secs\":45.0"), "{text}");
        assert!(text.contains("\"elapsed-secs\""), "{text}");
        assert_eq!(Event::decode(done.routing_key(), &body).unwrap(), done);
        assert_eq!(done.message_type(), "rafty.event.done.v1");
        assert_eq!(done.exchange(), EVENTS_EXCHANGE);

        let newer =
            br#"{"device": "/dev/sr0", "error": "e", "exit": 74, "host": "h", "new-field": [1]}"#;
        let failed = Event::decode("rafty.rip.failed", newer).unwrap();
        assert_eq!(failed.exchange(), RIP_EXCHANGE);
        assert_eq!(failed.host(), "h");

        let missing = Event::decode("rafty.rip.failed", br#"{"device": "/dev/sr0"}"#).unwrap_err();
        assert!(missing.to_string().contains("error"), "{missing}");
        assert!(matches!(
            Event::decode("rafty.transcode.nope", b"{}"),
            Err(WireError::UnknownKey(_))
        ));
    }

    #[test]
    fn control_requests() {
        let drain: ControlRequest =
            serde_json::from_str(r#"{"request": "drain", "host": "attic-pc"}"#).unwrap();
        assert!(drain.is_for("attic-pc"));
        assert!(!drain.is_for("other"));
        assert!(ControlRequest::Resume { host: "*".into() }.is_for("any"));
        assert!(ControlRequest::Status.is_for("any"));
        assert_eq!(
            serde_json::to_string(&ControlRequest::Status).unwrap(),
            r#"{"request":"status"}"#
        );
        assert!(serde_json::from_str::<ControlRequest>(r#"{"request": "reboot"}"#).is_err());
    }
}
