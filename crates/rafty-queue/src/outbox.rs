//! The outbox: jobs that could not be published wait here, on disk, until the broker is back.
//!
//! Each job is one JSON file, written to a temporary name, fsynced and renamed (and the directory
//! fsynced), so a crash never leaves half a job. [`Outbox::flush`] publishes each with a confirm and
//! deletes its file only after the confirm; a crash between the two publishes it again on the next
//! flush, which is harmless because the message id (the job id) lets consumers recognise it. Flushes
//! are serialised by a lock on the directory, so two flushes never send one file at once.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use rafty_core::Job;
use serde::{Deserialize, Serialize};

use crate::{PublishError, Publisher};

/// A job waiting to be published, as stored in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    /// Exchange to publish to.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Whether the publish must be routed to a queue.
    pub mandatory: bool,
    /// The job.
    pub job: Job,
}

impl Entry {
    /// Publish this job as its entry says, and wait for the broker's confirm.
    pub async fn publish(&self, publisher: &Publisher) -> Result<(), PublishError> {
        let props = publisher.job_properties(&self.job, 0);
        publisher
            .publish(
                &self.exchange,
                &self.routing_key,
                &self.job.to_json(),
                props,
                self.mandatory,
            )
            .await
    }
}

/// What a flush did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flushed {
    /// Jobs published and removed from the outbox.
    pub sent: Vec<String>,
    /// Jobs still waiting.
    pub left: usize,
}

/// A directory of jobs waiting for the broker.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// The outbox in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Outbox {
        Outbox { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store a job durably; returns its file.
    pub fn put(&self, entry: &Entry) -> io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{}.json", entry.job.id));
        let temp = self.dir.join(format!(".{}.json.tmp", entry.job.id));
        let mut f = File::create(&temp)?;
        f.write_all(&serde_json::to_vec_pretty(entry).expect("entries serialize"))?;
        f.sync_all()?;
        std::fs::rename(&temp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// The jobs waiting, oldest first.
    pub fn pending(&self) -> io::Result<Vec<(PathBuf, Entry)>> {
        let mut out = Vec::new();
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for item in dir {
            let path = item?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let bytes = std::fs::read(&path)?;
            match serde_json::from_slice::<Entry>(&bytes) {
                Ok(entry) => out.push((path, entry)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "not an outbox entry; left alone")
                }
            }
        }
        out.sort_by_key(|e| e.1.job.created_at);
        Ok(out)
    }

    /// Publish every waiting job (confirmed), deleting each file after its confirm. Stops at the first
    /// publish that fails and returns that error; what was sent before it stays sent.
    pub async fn flush(&self, publisher: &Publisher) -> Result<Flushed, FlushError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| FlushError::Io(self.dir.clone(), e))?;
        let lock_path = self.dir.join(".flush.lock");
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| FlushError::Io(lock_path.clone(), e))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| FlushError::Io(lock_path.clone(), e.into()))?;
        let pending = self
            .pending()
            .map_err(|e| FlushError::Io(self.dir.clone(), e))?;
        let mut flushed = Flushed {
            sent: Vec::new(),
            left: pending.len(),
        };
        for (path, entry) in pending {
            entry
                .publish(publisher)
                .await
                .map_err(|e| FlushError::Publish(entry.job.id.to_string(), e))?;
            std::fs::remove_file(&path).map_err(|e| FlushError::Io(path.clone(), e))?;
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| FlushError::Io(self.dir.clone(), e))?;
            tracing::info!(job_id = %entry.job.id, routing_key = %entry.routing_key, "outbox: job delivered");
            flushed.sent.push(entry.job.id.to_string());
            flushed.left -= 1;
        }
        Ok(flushed)
    }
}

/// A flush that stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The outbox could not be read or changed.
    #[error("outbox {0}: {1}")]
    Io(PathBuf, io::Error),
    /// A job could not be published; it stays in the outbox.
    #[error("job {0} stays in the outbox: {1}")]
    Publish(String, PublishError),
}
