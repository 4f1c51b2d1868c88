//! Jobs whose image this worker cannot read: fetched from the store in its own config, encoded in
//! scratch, sent back (docs/store.md). What only such jobs need is here: the scratch directory of one
//! job (removed on every path), the transfer events, the mapping of store errors to failure classes,
//! and the gate that stops the worker taking jobs while the store refuses its token.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rafty_core::wire::{self, Direction, Event};
use rafty_core::{Failure, Job};
use rafty_queue::Publisher;
use rafty_store::StoreError;
use rafty_store::client::TransferProgress;
use tokio::sync::watch;
use tracing::{info, warn};

/// Where fetched images and their encodes live: `<scratch-dir>/remote/<pid>-<job>/`.
pub const REMOTE_DIR: &str = "remote";

/// One job's scratch directory, removed when dropped (done, failed, stopped).
pub struct ScratchJob {
    dir: PathBuf,
}

impl ScratchJob {
    /// Make the directory for `job` under `scratch`.
    pub fn create(scratch: &Path, job: &Job) -> Result<ScratchJob, Failure> {
        let id = job.id.simple().to_string();
        let dir = scratch
            .join(REMOTE_DIR)
            .join(format!("{}-{}", std::process::id(), &id[..12]));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| rafty_core::output::io_failure(&dir, &e))?;
        Ok(ScratchJob { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ScratchJob {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %self.dir.display(), error = %e, "cannot remove a job's scratch directory");
        }
    }
}

/// Remove what killed workers of this machine left in `<scratch>/remote` (a process id that no
/// longer runs). Returns how many job directories were removed.
pub fn sweep_scratch(scratch: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(scratch.join(REMOTE_DIR)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            info!(dir = %entry.path().display(), "removed a fetched image left by a stopped worker");
            removed += 1;
        }
    }
    removed
}

/// The failure a store error stands for.
pub fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Unauthorized { .. } => Failure::StoreUnauthorized(e.to_string()),
        StoreError::Unavailable { .. } => Failure::StoreUnavailable(e.to_string()),
        StoreError::NotFound { .. } => Failure::SourceUnavailable(e.to_string()),
        StoreError::Refused { status: 403, .. } => Failure::SourceOutsideRoots(e.to_string()),
        StoreError::Refused { .. } => Failure::BadMessage(e.to_string()),
        StoreError::Conflict { .. } => Failure::OutputConflict(e.to_string()),
        StoreError::Digest { .. } => Failure::SourceCorrupt(e.to_string()),
        StoreError::Full(m) => Failure::DiskFull(m),
        StoreError::Local {
            ref path,
            ref source,
        } => rafty_core::output::io_failure(path, source),
        StoreError::Cancelled => Failure::Shutdown,
        StoreError::Config(m) => Failure::StoreUnauthorized(m),
    }
}

/// Run `transfer` while announcing its progress as `rafty.transcode.transfer` every two seconds,
/// and once more when it ends well.
pub async fn announced<T>(
    job: &Job,
    host: &str,
    direction: Direction,
    object: &str,
    events: &Publisher,
    transfer: impl AsyncFnOnce(&(dyn Fn(TransferProgress) + Sync)) -> Result<T, StoreError>,
    activity: &crate::transcoder::Activity,
) -> Result<T, StoreError> {
    let (tx, mut rx) = watch::channel(None::<TransferProgress>);
    let event = |p: TransferProgress, rate: Option<f64>, complete: bool| {
        Event::Transfer(wire::Transfer {
            id: job.id,
            host: host.to_owned(),
            direction,
            object: object.to_owned(),
            bytes: p.bytes,
            total: p.total,
            percent: if p.total == 0 {
                100.0
            } else {
                p.bytes as f64 * 100.0 / p.total as f64
            },
            rate,
            resumed: p.resumed,
            complete,
        })
    };
    let report = |p: TransferProgress| {
        if let Ok(mut a) = activity.lock()
            && let Some(a) = a.as_mut()
        {
            a.stage = Some(direction.as_str().to_owned());
            a.percent = Some(if p.total == 0 {
                0.0
            } else {
                p.bytes as f64 * 100.0 / p.total as f64
            });
        }
        tx.send_replace(Some(p));
    };
    let announce = async {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        let mut last: Option<(u64, Instant)> = None;
        loop {
            tick.tick().await;
            let Some(p) = *rx.borrow_and_update() else {
                continue;
            };
            let rate =
                last.map(|(b, at)| (p.bytes.saturating_sub(b)) as f64 / at.elapsed().as_secs_f64());
            last = Some((p.bytes, Instant::now()));
            info!(
                direction = direction.as_str(),
                bytes = p.bytes,
                total = p.total,
                resumed = p.resumed,
                "transfer"
            );
            let _ = events.publish_event(&event(p, rate, false)).await;
        }
    };
    let result = tokio::select! {
        r = transfer(&report) => r,
        _ = announce => unreachable!("the announcer never ends"),
    };
    if result.is_ok()
        && let Some(p) = *rx.borrow()
    {
        let _ = events
            .publish_event(&event(
                TransferProgress {
                    bytes: p.total,
                    ..p
                },
                None,
                true,
            ))
            .await;
    }
    result
}

/// Stops the worker taking jobs while the store refuses its token, and lets it take them again once
/// the store accepts it: a wrong or revoked token is the worker's fault, and must not make every job
/// pass through it to the dead letters.
pub struct StoreGate {
    client: rafty_store::StoreClient,
    hold: Arc<watch::Sender<bool>>,
    held: Arc<AtomicBool>,
    probe_every: Duration,
}

impl StoreGate {
    /// A gate on the consumer loop's `hold`.
    pub fn new(client: rafty_store::StoreClient, hold: Arc<watch::Sender<bool>>) -> StoreGate {
        StoreGate {
            client,
            hold,
            held: Arc::new(AtomicBool::new(false)),
            probe_every: Duration::from_secs(10),
        }
    }

    /// The store refused the token: stop taking jobs (unless a drain already did), and ask the
    /// store every few seconds until it accepts the token again.
    pub fn refused(&self, why: &str) {
        if self.held.swap(true, Ordering::SeqCst) {
            return;
        }
        if *self.hold.borrow() {
            // Drained by request already: the drain stays the operator's to lift.
            self.held.store(false, Ordering::SeqCst);
            return;
        }
        tracing::error!(store = %self.client.base(), error = why, "the store refuses this worker's token: taking no jobs until it accepts it (check [store] token-file here and on the store)");
        self.hold.send_replace(true);
        let (client, hold, held, every) = (
            self.client.clone(),
            self.hold.clone(),
            self.held.clone(),
            self.probe_every,
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match client.health().await {
                    Ok(_) => {
                        info!(store = %client.base(), "the store accepts this worker's token again: taking jobs");
                        held.store(false, Ordering::SeqCst);
                        hold.send_replace(false);
                        return;
                    }
                    Err(StoreError::Unauthorized { .. }) => {}
                    Err(e) => tracing::debug!(error = %e, "store not reachable"),
                }
            }
        });
    }
}
