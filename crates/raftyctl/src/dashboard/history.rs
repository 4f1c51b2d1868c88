//! The dashboard's history: one JSON line per finished or failed job in `--state-dir`
//! (`history.jsonl`), each appended and fsynced before its event is acked, so a restart loses
//! nothing; the newest [`CAP`] are kept.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rafty_core::wire::{Event, NEXT_DEAD_LETTER, NEXT_REQUEUED};
use serde::{Deserialize, Serialize};

/// How many entries the dashboard keeps.
pub const CAP: usize = 10_000;

/// The file's name in the state directory.
pub const FILE: &str = "history.jsonl";

/// Why the history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The state directory or the file could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// One output of a finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Output {
    /// Where it is.
    pub path: String,
    /// The title it came from.
    pub title: u32,
    /// The output's duration.
    pub duration_secs: f64,
    /// The title's duration on the disc, from the output's sidecar when the dashboard can read it.
    pub title_secs: Option<f64>,
    /// Its size in bytes.
    pub size: u64,
}

/// One job's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    /// The job id.
    pub id: String,
    /// Its output name (empty when the failed body was not a job).
    pub name: String,
    /// `done`, `skipped` (already in place), `retry` (went to a retry rung), `requeued`, or
    /// `dead-letter`.
    pub outcome: String,
    /// The worker's host.
    pub host: String,
    /// When (RFC 3339): the worker's time for a done job; for a failure, when its event was
    /// published (the dashboard's clock if the event has no timestamp).
    pub when: String,
    /// The attempt (0 = first).
    pub attempt: u32,
    /// What a done job put in place.
    #[serde(default)]
    pub outputs: Vec<Output>,
    /// Bytes of all outputs.
    #[serde(default)]
    pub size: u64,
    /// How long the job took on its worker.
    #[serde(default)]
    pub elapsed_secs: Option<f64>,
    /// A failure's reason.
    #[serde(default)]
    pub error: Option<String>,
    /// Where a failed job went (a retry queue, `dead-letter`, `requeued`).
    #[serde(default)]
    pub next: Option<String>,
}

fn title_secs_from_sidecar(output: &Path) -> Option<f64> {
    let mut sidecar = output.as_os_str().to_owned();
    sidecar.push(".rafty.json");
    let text = std::fs::read(sidecar).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    v.get("title-duration-secs")?.as_f64()
}

/// Seconds since the epoch (an AMQP timestamp) as RFC 3339.
pub fn rfc3339_of_unix(secs: u64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Entry {
    /// The history entry of a `done` or `failed` event; `None` for any other.
    pub fn from_event(event: &Event) -> Option<Entry> {
        match event {
            Event::Done(e) => {
                let outputs: Vec<Output> = e
                    .outputs
                    .iter()
                    .map(|o| Output {
                        path: o.path.display().to_string(),
                        title: o.title,
                        duration_secs: o.duration_secs,
                        title_secs: title_secs_from_sidecar(&o.path),
                        size: o.size,
                    })
                    .collect();
                Some(Entry {
                    id: e.id.to_string(),
                    name: e.name.clone(),
                    outcome: if e.skipped { "skipped" } else { "done" }.into(),
                    host: e.host.clone(),
                    when: e.finished_at.clone(),
                    attempt: e.attempt,
                    size: outputs.iter().map(|o| o.size).sum(),
                    outputs,
                    elapsed_secs: Some(e.elapsed_secs),
                    error: None,
                    next: None,
                })
            }
            Event::Failed(e) => Some(Entry {
                id: e.id.clone(),
                name: e.name.clone().unwrap_or_default(),
                outcome: match e.next.as_str() {
                    NEXT_DEAD_LETTER => "dead-letter",
                    NEXT_REQUEUED => "requeued",
                    _ => "retry",
                }
                .into(),
                host: e.host.clone(),
                when: now_rfc3339(),
                attempt: e.attempt,
                outputs: Vec::new(),
                size: 0,
                elapsed_secs: None,
                error: Some(e.error.clone()),
                next: Some(e.next.clone()),
            }),
            _ => None,
        }
    }

    /// What makes an entry the same outcome again (a redelivered event).
    fn key(&self) -> String {
        format!("{}|{}|{}", self.id, self.outcome, self.attempt)
    }

    /// A small done entry named `name`, for tests and benchmarks.
    pub fn sample(name: &str, n: u64) -> Entry {
        Entry {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            outcome: "done".into(),
            host: format!("worker-{}", n % 20),
            when: "2026-12-03T12:00:00Z".into(),
            attempt: 0,
            outputs: vec![Output {
                path: format!("/srv/media/{name}.mkv"),
                title: 1,
                duration_secs: 5400.0 + (n % 60) as f64,
                title_secs: Some(5400.5 + (n % 60) as f64),
                size: 1_500_000_000 + n,
            }],
            size: 1_500_000_000 + n,
            elapsed_secs: Some(1800.0),
            error: None,
            next: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn test_entry(name: &str) -> Entry {
        Entry::sample(name, 0)
    }
}

/// The history file, open for appending.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    file: File,
    lines: usize,
    cap: usize,
    seen: HashSet<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HistoryError + '_ {
    move |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl History {
    /// Open (or create) `dir/history.jsonl` and read its newest `cap` entries, oldest first. A
    /// line that does not parse is skipped; a torn end (a write cut by a crash) is cut off, so
    /// the next entry starts a line of its own.
    pub fn open(dir: &Path, cap: usize) -> Result<(History, Vec<Entry>), HistoryError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(FILE);
        let mut entries = std::collections::VecDeque::new();
        let mut lines = 0;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        // Bytes, not str lines: a write cut inside a multi-byte character must not make the
        // whole file unreadable.
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for line in text[..whole]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
        {
            lines += 1;
            match serde_json::from_slice::<Entry>(line) {
                Ok(e) => {
                    entries.push_back(e);
                    if entries.len() > cap {
                        entries.pop_front();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a history line that does not parse; skipped")
                }
            }
        }
        if whole < text.len() {
            tracing::warn!(
                bytes = text.len() - whole,
                "the history file ends in a torn line (a write cut short); cut off"
            );
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_len(whole as u64)?;
                    f.sync_data()
                })
                .map_err(io(&path))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let entries: Vec<Entry> = entries.into();
        let seen = entries.iter().map(Entry::key).collect();
        Ok((
            History {
                path,
                file,
                lines,
                cap,
                seen,
            },
            entries,
        ))
    }

    /// Append `entry` and fsync it; `false` (nothing written) for a `redelivered` event whose
    /// outcome is there already (only a redelivery can be a copy: a job requeued from the dead
    /// letters goes round again with the same attempts, and those are new outcomes). On an
    /// error the file is cut back to what it held, and the entry is not known, so its
    /// redelivery is written.
    pub fn append(&mut self, entry: &Entry, redelivered: bool) -> Result<bool, HistoryError> {
        let key = entry.key();
        if redelivered && self.seen.contains(&key) {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(entry).expect("entries serialize");
        line.push(b'\n');
        let before = self.file.metadata().map_err(io(&self.path))?.len();
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(before);
            return Err(io(&self.path)(e));
        }
        self.seen.insert(key);
        self.lines += 1;
        Ok(true)
    }

    /// Whether the file holds more than twice the cap of lines, so [`History::compact`] is due.
    pub fn needs_compaction(&self) -> bool {
        self.lines > 2 * self.cap
    }

    /// Rewrite the file with `keep` (the newest entries, oldest first): a temporary file, fsynced,
    /// renamed over it.
    pub fn compact<'a>(
        &mut self,
        keep: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<(), HistoryError> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = File::create(&tmp).map_err(io(&tmp))?;
        let mut n = 0;
        let mut seen = HashSet::new();
        for e in keep {
            let mut line = serde_json::to_vec(e).expect("entries serialize");
            line.push(b'\n');
            out.write_all(&line).map_err(io(&tmp))?;
            seen.insert(e.key());
            n += 1;
        }
        out.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        // The old file is gone from the directory now: append to the new one from here on,
        // whatever happens next.
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        self.lines = n;
        self.seen = seen;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_without_doubles_and_the_file_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, loaded) = History::open(dir.path(), 3).unwrap();
        assert!(loaded.is_empty());
        let entries: Vec<Entry> = (0..8).map(|n| Entry::sample(&format!("n{n}"), n)).collect();
        for e in &entries {
            assert!(h.append(e, false).unwrap());
        }
        assert!(!h.append(&entries[7], true).unwrap(), "a redelivered event");
        assert!(h.needs_compaction());
        h.compact(&entries[5..]).unwrap();
        assert!(!h.needs_compaction());
        assert!(
            !h.append(&entries[6], true).unwrap(),
            "still known after compaction"
        );
        drop(h);
        // A torn last line, as a crash mid-write leaves it.
        let path = dir.path().join(FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        // Cut inside a multi-byte character, too.
        f.write_all(b"{\"id\":\"torn\", \"name\": \"Am\xc3")
            .unwrap();
        drop(f);
        let (mut h, loaded) = History::open(dir.path(), 3).unwrap();
        let names: Vec<&str> = loaded.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["n5", "n6", "n7"]);
        // The entry written after the torn line (often the redelivery of the torn one's event)
        // is a line of its own, read back after the next restart.
        let after = Entry::sample("Amélie", 9);
        assert!(h.append(&after, true).unwrap());
        drop(h);
        let (_, loaded) = History::open(dir.path(), 3).unwrap();
        let names: Vec<&str> = loaded.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["n6", "n7", "Amélie"]);
    }

    #[test]
    fn a_job_requeued_from_the_dead_letters_is_recorded_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut h, _) = History::open(dir.path(), 10).unwrap();
        let dead = Entry {
            outcome: "dead-letter".into(),
            ..Entry::sample("Film", 1)
        };
        assert!(h.append(&dead, false).unwrap());
        // Requeued: attempt 0 again, and dead-lettered again: a new outcome, not a copy.
        assert!(h.append(&dead, false).unwrap());
        assert!(
            !h.append(&dead, true).unwrap(),
            "but a redelivery is a copy"
        );
    }

    #[test]
    fn a_publish_timestamp_reads_as_rfc3339() {
        assert_eq!(
            rfc3339_of_unix(1_796_300_000).as_deref(),
            Some("2026-12-03T12:13:20Z")
        );
    }

    #[test]
    fn a_failure_is_recorded_with_where_it_went() {
        let failed = Event::decode(
            "rafty.transcode.failed",
            br#"{"id": "j1", "name": "Film", "host": "h", "attempt": 0, "error-kind": "no-title",
                 "error-class": "permanent", "error": "No title found", "next": "dead-letter"}"#,
        )
        .unwrap();
        let e = Entry::from_event(&failed).unwrap();
        assert_eq!(e.outcome, "dead-letter");
        assert_eq!(e.error.as_deref(), Some("No title found"));
        assert_eq!(e.name, "Film");
    }
}
