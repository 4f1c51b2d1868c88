//! The job message, version 1 (docs/protocol.md, "The job message").
//!
//! A job is JSON. Unknown fields are ignored so that newer producers can talk to older workers; a
//! missing required field, a field of the wrong type, another message `type` or an unsafe output name is
//! a [`JobError`], which workers treat as a permanent failure.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::names::JOB_TYPE;

/// Largest job body accepted; a real job is well under 2 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest output name accepted, in bytes (file systems allow 255 per component; room is left for the
/// title suffix, the extension and the sidecar's suffix).
pub const MAX_OUTPUT_NAME_BYTES: usize = 180;

/// One unit of work: transcode the chosen titles of one disc image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Job id; also the AMQP `message_id`. Stays the same across retries and redeliveries.
    pub id: Uuid,
    /// When the producer created the job.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The disc image to read.
    pub source: Source,
    /// How to encode it.
    #[serde(default)]
    pub encode: Encode,
    /// Where the result goes, relative to the worker's output directory.
    pub output: Output,
    /// Where the job came from (for logs and dead letters).
    #[serde(default)]
    pub origin: Origin,
    /// Set on a title job that a worker split from a disc job, so each title of a disc can be
    /// encoded by a different worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
    /// Set on a job that is one step of a title split by chapters (`encode.split = "chapters"`): a
    /// video piece, the tracks pass or the join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piece: Option<Piece>,
}

/// One step of a title split by chapters across workers (docs/split.md).
///
/// The video is encoded in pieces of whole chapters, one job each; audio, subtitles and chapter
/// marks come from one continuous pass over the whole title (the tracks pass); the worker that
/// finishes the last of those publishes the join, which puts the pieces and the tracks together,
/// checks every seam and only then puts the output in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Piece {
    /// The job whose title was split.
    pub whole: Uuid,
    /// The title.
    pub title: u32,
    /// Where the joined title goes, relative to the output directory.
    pub output: String,
    /// Every video piece of the title, in order: together they are every chapter once.
    pub ranges: Vec<ChapterRange>,
    /// What this job does.
    pub step: Step,
}

/// Chapters `first` to `last` of a title, both included (1-based, as HandBrake's `--chapters`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapterRange {
    /// The first chapter.
    pub first: u32,
    /// The last chapter.
    pub last: u32,
}

impl std::fmt::Display for ChapterRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// What one job of a split title does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Encode the video of `ranges[index]` alone.
    Video {
        /// Which piece (0-based).
        index: u32,
    },
    /// One continuous pass over the whole title for its audio, subtitles and chapter marks.
    Tracks,
    /// Put the pieces and the tracks together, verify, put the output in place.
    Join,
}

impl Step {
    /// The step's name in events and logs: `video`, `tracks` or `join`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Step::Video { .. } => "video",
            Step::Tracks => "tracks",
            Step::Join => "join",
        }
    }
}

impl Piece {
    /// The id of this step's job: a function of the split job and the step, so a split repeated
    /// after a crash makes the same jobs.
    pub fn job_id(whole: Uuid, step: Step) -> Uuid {
        let name = match step {
            Step::Video { index } => format!("piece-{index}"),
            Step::Tracks => "tracks".to_owned(),
            Step::Join => "join".to_owned(),
        };
        Uuid::new_v5(&whole, name.as_bytes())
    }
}

/// Whether a title is split across workers (`encode.split`, `[transcode] split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// One worker encodes the whole title.
    #[default]
    None,
    /// The title is cut at chapter boundaries into pieces that idle workers encode at once.
    Chapters,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Split::None),
            "chapters" => Ok(Split::Chapters),
            other => Err(format!(
                "unknown split {other:?}: expected none or chapters"
            )),
        }
    }
}

/// One title of a disc job, as a job of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The disc job it was split from.
    pub disc: Uuid,
    /// The title to encode.
    pub title: u32,
    /// Its output file name, relative to the output directory.
    pub output: String,
    /// Every output of the disc, this one included, so the worker that finishes the last one can
    /// announce the whole disc (`rafty.transcode.disc.done`).
    pub outputs: Vec<String>,
}

impl Part {
    /// The id of the title job for `title` of disc job `disc`: the same on every split of the same
    /// disc job, so a split repeated after a crash makes the same jobs (and the same outputs).
    pub fn job_id(disc: Uuid, title: u32) -> Uuid {
        Uuid::new_v5(&disc, format!("title-{title}").as_bytes())
    }
}

/// The disc image a job reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// Absolute path on the producer's host; workers translate it with `path-map`.
    pub path: PathBuf,
    /// What kind of disc the image holds.
    pub media: Media,
    /// Size of the image in bytes, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// SHA-256 of the image (lower-case hex), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Volume label read from the image, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Sectors the ripper could not read (left as zeros), when it was told to accept holes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable_sectors: Option<u64>,
    /// Where `rafty-store` serves the image (`<store>/v1/images/<path>`), for workers that cannot
    /// read `path`. Requires `sha256`. A worker fetches only from the store in its own config: it
    /// takes the image's place in that store from this URL, never the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Kinds of disc; each has its own routing key `rafty.rip.iso.<media>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Media {
    /// DVD-Video (a `VIDEO_TS` directory).
    Dvd,
    /// Blu-ray (a `BDMV` directory).
    Bluray,
    /// Anything else; no worker queue is bound to it by default.
    Data,
}

impl Media {
    /// The name used in routing keys and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Media::Dvd => "dvd",
            Media::Bluray => "bluray",
            Media::Data => "data",
        }
    }
}

impl std::str::FromStr for Media {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dvd" => Ok(Media::Dvd),
            "bluray" => Ok(Media::Bluray),
            "data" => Ok(Media::Data),
            other => Err(format!(
                "unknown media {other:?}: expected dvd, bluray or data"
            )),
        }
    }
}

/// Encoding choices carried by the job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Encode {
    /// Preset name; the worker resolves it (a HandBrake built-in or one of its preset files). Absent: the
    /// worker's `[transcode] preset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Which titles of the disc to encode.
    #[serde(default)]
    pub titles: TitleSelection,
    /// Whether each title is split by chapters across workers. Absent: the worker's `[transcode] split`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
}

/// Which titles of a disc a job encodes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TitleSelection {
    /// The main feature: HandBrake's pick, or the longest title when the disc names none.
    #[default]
    MainFeature,
    /// These title numbers (1-based, as HandBrake numbers them).
    List(Vec<u32>),
    /// Every title at least this long.
    MinDuration {
        /// Shortest title kept, in seconds.
        secs: u64,
    },
}

impl Serialize for TitleSelection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            TitleSelection::MainFeature => s.serialize_str("main-feature"),
            TitleSelection::List(list) => list.serialize(s),
            TitleSelection::MinDuration { secs } => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("min-duration-secs", secs)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for TitleSelection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        match &value {
            serde_json::Value::String(s) if s == "main-feature" => Ok(TitleSelection::MainFeature),
            serde_json::Value::Array(items) => {
                if items.is_empty() {
                    return Err(D::Error::custom(
                        "titles: the list of title numbers is empty",
                    ));
                }
                let mut list = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_u64() {
                        Some(n) if (1..=999).contains(&n) => list.push(n as u32),
                        _ => {
                            return Err(D::Error::custom(format!(
                                "titles: {item} is not a title number (1 to 999)"
                            )));
                        }
                    }
                }
                Ok(TitleSelection::List(list))
            }
            serde_json::Value::Object(map) => {
                match map.get("min-duration-secs").and_then(|v| v.as_u64()) {
                    Some(secs) if map.len() == 1 => Ok(TitleSelection::MinDuration { secs }),
                    _ => Err(D::Error::custom(
                        "titles: an object must be {\"min-duration-secs\": N} with N a whole number of seconds",
                    )),
                }
            }
            other => Err(D::Error::custom(format!(
                "titles: expected \"main-feature\", a list of title numbers or {{\"min-duration-secs\": N}}, got {other}"
            ))),
        }
    }
}

/// Where a job's result goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    /// Base name of the output, relative to the worker's output directory: no `/`, no `..`.
    pub name: String,
}

/// The producer of a job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Origin {
    /// Host name of the producer.
    #[serde(default)]
    pub host: String,
    /// Drive the disc was read from, if any (`/dev/sr0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Why a message is not a job this worker can do. Always a permanent failure.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// The message `type` property names something else.
    #[error("message type is {0:?}, expected {JOB_TYPE:?}")]
    WrongType(String),
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("job body is {0} bytes, more than the {MAX_BODY_BYTES} accepted")]
    TooLarge(usize),
    /// The body is not JSON, or not a job: the message names the field.
    #[error("job body is not a valid {JOB_TYPE} job: {0}")]
    Invalid(String),
    /// The output name could escape the output directory or is otherwise unusable.
    #[error("output name {name:?} is unusable: {reason}")]
    BadOutputName {
        /// The name as received.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The source path is not absolute.
    #[error("source path {0:?} must be an absolute path")]
    BadSourcePath(PathBuf),
    /// The source path contains a NUL byte, which no file name can hold.
    #[error("source path {0:?} contains a NUL byte")]
    NulInSourcePath(PathBuf),
}

impl Job {
    /// A new job for an image, with a fresh id and the current time.
    pub fn new(source: Source, output_name: String, origin: Origin) -> Job {
        Job {
            id: Uuid::new_v4(),
            created_at: OffsetDateTime::now_utc(),
            source,
            encode: Encode::default(),
            output: Output { name: output_name },
            origin,
            part: None,
            piece: None,
        }
    }

    /// Decode and validate a job from a delivery's `type` property and body.
    ///
    /// A message without a `type` is accepted when its body is a valid job; another `type` is not.
    pub fn decode(kind: Option<&str>, body: &[u8]) -> Result<Job, JobError> {
        if let Some(kind) = kind
            && kind != JOB_TYPE
        {
            return Err(JobError::WrongType(kind.to_owned()));
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(JobError::TooLarge(body.len()));
        }
        let de = &mut serde_json::Deserializer::from_slice(body);
        let job: Job = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            // "source.media: expected value at line 1 column 189"; no prefix at the top level.
            let path = e.path().to_string();
            let inner = e.into_inner();
            JobError::Invalid(if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            })
        })?;
        de.end().map_err(|e| JobError::Invalid(e.to_string()))?;
        job.validate()?;
        Ok(job)
    }

    /// Encode the job as its JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job always serializes")
    }

    /// Check what serde cannot: the output name is one safe path component, the source path absolute.
    pub fn validate(&self) -> Result<(), JobError> {
        validate_output_name(&self.output.name)?;
        if let Some(part) = &self.part {
            for path in std::iter::once(&part.output).chain(&part.outputs) {
                // A title's output may sit in directories of the naming template: every component
                // must be a safe name of its own.
                for component in path.split('/') {
                    validate_output_name(component)?;
                }
            }
            if !part.outputs.contains(&part.output) {
                return Err(JobError::Invalid(format!(
                    "part: {:?} is not among its disc's outputs",
                    part.output
                )));
            }
        }
        if let Some(piece) = &self.piece {
            for component in piece.output.split('/') {
                validate_output_name(component)?;
            }
            let mut next = 1;
            for range in &piece.ranges {
                if range.first != next || range.last < range.first {
                    return Err(JobError::Invalid(format!(
                        "piece.ranges: {range} does not follow chapter {}; the pieces must be every chapter once, in order",
                        next - 1
                    )));
                }
                next = range.last + 1;
            }
            if piece.ranges.len() < 2 {
                return Err(JobError::Invalid(
                    "piece.ranges: a split title has at least two pieces".into(),
                ));
            }
            if let Step::Video { index } = piece.step
                && index as usize >= piece.ranges.len()
            {
                return Err(JobError::Invalid(format!(
                    "piece.step: video piece {index} is not among the {} pieces",
                    piece.ranges.len()
                )));
            }
        }
        if self.source.url.is_some() && self.source.sha256.is_none() {
            return Err(JobError::Invalid(
                "source.url is set but source.sha256 is not: a fetched image cannot be checked without it".into(),
            ));
        }
        let path = &self.source.path;
        if path.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(JobError::NulInSourcePath(path.clone()));
        }
        if !path.is_absolute() {
            return Err(JobError::BadSourcePath(path.clone()));
        }
        Ok(())
    }
}

/// Check that an output name is a single, visible, reasonably short path component.
pub fn validate_output_name(name: &str) -> Result<(), JobError> {
    let bad = |reason| {
        Err(JobError::BadOutputName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.trim().is_empty() {
        return bad("it is empty");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("it contains a path separator; give a plain file name");
    }
    if name == "." || name == ".." || name.contains("..") {
        return bad("it contains \"..\"");
    }
    if name.starts_with('.') {
        return bad("it starts with '.', which Rafty keeps for its temporary files");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    if name.len() > MAX_OUTPUT_NAME_BYTES {
        return bad("it is longer than 180 bytes");
    }
    if Path::new(name).components().count() != 1
        || !matches!(
            Path::new(name).components().next(),
            Some(Component::Normal(_))
        )
    {
        return bad("it is not a single file name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(output: &str) -> String {
        format!(
            r#"{{"id":"0d6f7a3e-8f25-4f4e-9a53-1f4e4a0b7c11","created_at":"2026-11-23T10:00:00Z",
            "source":{{"path":"/srv/iso/Feature Disc.iso","media":"dvd","size":7,"label":"FEATURE"}},
            "encode":{{"preset":"Very Fast 480p30","titles":"main-feature"}},
            "output":{{"name":"{output}"}},"origin":{{"host":"ripper"}},"future-field":[1,2]}}"#
        )
    }

    #[test]
    fn decodes_a_valid_job_and_ignores_unknown_fields() {
        let job = Job::decode(Some(JOB_TYPE), body("Feature Disc").as_bytes()).unwrap();
        assert_eq!(job.output.name, "Feature Disc");
        assert_eq!(job.source.media, Media::Dvd);
        assert_eq!(job.encode.titles, TitleSelection::MainFeature);
        let again = Job::decode(None, &job.to_json()).unwrap();
        assert_eq!(again, job);
    }

    #[test]
    fn title_selections_round_trip() {
        for (json, want) in [
            (r#""main-feature""#, TitleSelection::MainFeature),
            ("[1,3]", TitleSelection::List(vec![1, 3])),
            (
                r#"{"min-duration-secs":600}"#,
                TitleSelection::MinDuration { secs: 600 },
            ),
        ] {
            let got: TitleSelection = serde_json::from_str(json).unwrap();
            assert_eq!(got, want);
            assert_eq!(serde_json::to_string(&got).unwrap(), json);
        }
        for bad in [
            "[]",
            "[0]",
            "[-1]",
            "[4294967296]",
            r#""all""#,
            r#"{"x":1}"#,
            "7",
        ] {
            assert!(
                serde_json::from_str::<TitleSelection>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn split_and_pieces_round_trip_and_are_checked() {
        let mut job = Job::decode(None, body("Feature Disc").as_bytes()).unwrap();
        assert_eq!(
            job.encode.split, None,
            "absent: the worker's [transcode] split"
        );
        job.encode.split = Some(Split::Chapters);
        let ranges = vec![
            ChapterRange { first: 1, last: 4 },
            ChapterRange { first: 5, last: 8 },
        ];
        job.piece = Some(Piece {
            whole: job.id,
            title: 1,
            output: "Feature Disc.mkv".into(),
            ranges: ranges.clone(),
            step: Step::Video { index: 1 },
        });
        let json = String::from_utf8(job.to_json()).unwrap();
        assert!(json.contains(r#""split":"chapters""#), "{json}");
        assert!(
            json.contains(r#""step":{"step":"video","index":1}"#),
            "{json}"
        );
        assert_eq!(Job::decode(None, json.as_bytes()).unwrap(), job);
        assert_ne!(
            Piece::job_id(job.id, Step::Video { index: 0 }),
            Piece::job_id(job.id, Step::Video { index: 1 })
        );
        assert_eq!(
            Piece::job_id(job.id, Step::Join),
            Piece::job_id(job.id, Step::Join),
            "a repeated split makes the same jobs"
        );
        let bad = |edit: &dyn Fn(&mut Piece)| {
            let mut j = job.clone();
            edit(j.piece.as_mut().unwrap());
            Job::decode(None, &j.to_json()).unwrap_err().to_string()
        };
        assert!(bad(&|p| p.ranges[1].first = 6).contains("does not follow chapter 4"));
        assert!(bad(&|p| p.ranges.truncate(1)).contains("at least two pieces"));
        assert!(bad(&|p| p.step = Step::Video { index: 2 }).contains("not among the 2 pieces"));
        assert!(bad(&|p| p.output = "../x.mkv".into()).contains("output name"));
        assert_eq!("chapters".parse::<Split>(), Ok(Split::Chapters));
        assert!(
            "titles"
                .parse::<Split>()
                .unwrap_err()
                .contains("none or chapters")
        );
    }

    #[test]
    fn rejects_bad_jobs_with_a_reason() {
        let cases: Vec<(Option<&str>, Vec<u8>, &str)> = vec![
            (Some("rafty.job.v2"), body("x").into_bytes(), "message type"),
            (None, b"not json".to_vec(), "not a valid"),
            (
                None,
                br#"{"id":"0d6f7a3e-8f25-4f4e-9a53-1f4e4a0b7c11"}"#.to_vec(),
                "missing field",
            ),
            (None, body("../escape").into_bytes(), "output name"),
            (None, body("a/b").into_bytes(), "path separator"),
            (None, body(".hidden").into_bytes(), "starts with '.'"),
            (None, vec![b' '; MAX_BODY_BYTES + 1], "bytes"),
        ];
        for (kind, body, want) in cases {
            let err = Job::decode(kind, &body).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} does not mention {want:?}");
        }
        let relative = body("x").replace("/srv/iso/Feature Disc.iso", "relative.iso");
        assert!(matches!(
            Job::decode(None, relative.as_bytes()),
            Err(JobError::BadSourcePath(_))
        ));
    }
}
