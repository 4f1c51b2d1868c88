//! `rip`: one disc in, one verified image out, a job published, the disc ejected.
//!
//! [`rip_disc`] is the whole run for one drive (what the systemd oneshot and `rip watch` both call):
//!
//! 1. take the drive's lock (two udev events for one disc never copy it twice);
//! 2. tell the media apart (audio CDs are refused with a clear message and ejected);
//! 3. fingerprint the disc and plan the image: a new unique name, a resumed partial copy, or "already
//!    copied" (duplicate policy);
//! 4. copy with the engine of `rafty-disc` (ddrescue map beside the partial image, SHA-256, progress to
//!    the log and as `rafty.rip.progress` events);
//! 5. with sectors still unreadable: keep the partial image and its map, publish nothing, report the
//!    LBA ranges (unless `accept-holes`); complete: rename into place;
//! 6. publish the job with a confirm, or put it in the outbox when the broker is away (exit 0);
//! 7. eject as the policy says.

pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use rafty_core::config::Loaded;
use rafty_core::exit;
use rafty_core::job::{Origin, Source};
use rafty_core::label::read_disc_info;
use rafty_core::names::{RIP_EXCHANGE, rip_routing_key};
use rafty_core::wire::{Event, RipDone, RipFailed, RipProgress};
use rafty_core::{Job, Media};
use rafty_disc::copy::{self, CopyOptions, Progress};
use rafty_disc::identity::{self, Plan};
use rafty_disc::lock::{DriveLock, LockError};
use rafty_queue::{Broker, Outbox, OutboxEntry, Publisher, Topology};
use tracing::{error, info, warn};

/// How a run ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ripped {
    /// The image is complete and its job was confirmed by the broker.
    Published {
        /// The image.
        image: PathBuf,
        /// The job id.
        job: String,
    },
    /// The image is complete; the broker was away, so the job waits in the outbox.
    Outboxed {
        /// The image.
        image: PathBuf,
        /// The outbox file.
        file: PathBuf,
    },
    /// This disc was copied before (duplicate policy `skip`).
    AlreadyCopied(PathBuf),
}

/// How a run failed, with the exit status systemd and scripts see.
#[derive(Debug, thiserror::Error)]
pub enum RipError {
    /// Another rip holds the drive (exit 75).
    #[error(transparent)]
    Busy(LockError),
    /// No disc, or nothing readable (exit 66).
    #[error("{0}")]
    NoDisc(String),
    /// A disc Rafty does not copy, e.g. an audio CD (exit 65).
    #[error("{0}")]
    Unsupported(String),
    /// Not enough space (exit 73).
    #[error(transparent)]
    NoSpace(copy::CopyError),
    /// Sectors could not be read (exit 74).
    #[error(
        "{count} sectors of {device} could not be read (LBA {ranges}); the partial image {part} and its map {map} are kept: clean the disc or try another drive and run rip again to read only those sectors{css}"
    )]
    Unreadable {
        /// The drive.
        device: PathBuf,
        /// How many sectors.
        count: u64,
        /// The ranges, shown.
        ranges: String,
        /// The partial image.
        part: PathBuf,
        /// Its map.
        map: PathBuf,
        /// The CSS hint for DVDs.
        css: &'static str,
    },
    /// Stopped by a signal; resumable (exit 75).
    #[error("stopped before the copy finished; run rip again to resume from {0}")]
    Interrupted(PathBuf),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

impl RipError {
    /// The process exit status for this error (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            RipError::Busy(LockError::Busy { .. }) | RipError::Interrupted(_) => exit::TEMPFAIL,
            RipError::Busy(_) => exit::FAILURE,
            RipError::NoDisc(_) => exit::NOINPUT,
            RipError::Unsupported(_) => exit::DATAERR,
            RipError::NoSpace(_) => exit::CANTCREAT,
            RipError::Unreadable { .. } => exit::IOERR,
            RipError::Other(_) => exit::FAILURE,
        }
    }

    fn ejects(&self) -> bool {
        !matches!(
            self,
            RipError::Busy(_) | RipError::Interrupted(_) | RipError::NoDisc(_)
        )
    }
}

/// What the udev database says about a drive's disc, where it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriveMedia {
    /// `ID_CDROM_MEDIA_TRACK_COUNT_AUDIO`.
    pub audio_tracks: u32,
    /// `ID_CDROM_MEDIA_TRACK_COUNT_DATA`.
    pub data_tracks: u32,
    /// `ID_CDROM_MEDIA_BD*` is set.
    pub bluray: bool,
    /// `ID_CDROM_MEDIA_DVD*` is set.
    pub dvd: bool,
}

impl DriveMedia {
    /// Read the udev properties of a block device; `None` for files or without a udev database.
    pub fn query(device: &Path) -> Option<DriveMedia> {
        use std::os::unix::fs::FileTypeExt;
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(device).ok()?;
        if !meta.file_type().is_block_device() {
            return None;
        }
        let rdev = meta.rdev();
        let sys = format!(
            "/sys/dev/block/{}:{}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        );
        let dev = tokio_udev::Device::from_syspath(&std::fs::canonicalize(sys).ok()?).ok()?;
        let prop = |k: &str| {
            dev.property_value(k)
                .map(|v| v.to_string_lossy().into_owned())
        };
        let count = |k: &str| prop(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        let any = |prefix: &str| {
            dev.properties()
                .any(|p| p.name().to_string_lossy().starts_with(prefix))
        };
        Some(DriveMedia {
            audio_tracks: count("ID_CDROM_MEDIA_TRACK_COUNT_AUDIO"),
            data_tracks: count("ID_CDROM_MEDIA_TRACK_COUNT_DATA"),
            bluray: any("ID_CDROM_MEDIA_BD"),
            dvd: any("ID_CDROM_MEDIA_DVD"),
        })
    }

    /// An audio CD: audio tracks and no data track.
    pub fn audio_only(&self) -> bool {
        self.audio_tracks > 0 && self.data_tracks == 0
    }
}

/// Decide the media from udev and the image's own directories.
pub fn media_of(udev: Option<&DriveMedia>, image_says: Option<Media>) -> Media {
    match (image_says, udev) {
        (Some(m), _) => m,
        (None, Some(u)) if u.bluray => Media::Bluray,
        _ => Media::Data,
    }
}

/// Copy the disc in `device` and publish its job. `cancel` stops the copy (resumable).
pub async fn rip_disc(
    loaded: &Loaded,
    device: &Path,
    cancel: Arc<AtomicBool>,
) -> Result<Ripped, RipError> {
    let rip = &loaded.config.rip;
    let _lock = DriveLock::acquire(&rip.spool_dir.join("locks"), device).map_err(RipError::Busy)?;
    let result = rip_locked(loaded, device, cancel).await;
    let succeeded = result.is_ok();
    let eject = match &result {
        Ok(_) => rip.eject.ejects(true),
        Err(RipError::Unsupported(_)) => rip.eject != rafty_core::config::EjectPolicy::Never,
        Err(e) => e.ejects() && rip.eject.ejects(false),
    };
    if eject {
        match rafty_disc::eject::eject(device).await {
            Ok(method) => info!(device = %device.display(), ?method, "disc ejected"),
            Err(e) => warn!(error = %e, "could not eject"),
        }
    }
    if !succeeded {
        announce_failure(loaded, device, result.as_ref().err()).await;
    }
    result
}

async fn rip_locked(
    loaded: &Loaded,
    device: &Path,
    cancel: Arc<AtomicBool>,
) -> Result<Ripped, RipError> {
    let rip = &loaded.config.rip;
    let udev = DriveMedia::query(device);
    if let Some(u) = &udev
        && u.audio_only()
    {
        return Err(RipError::Unsupported(format!(
            "{} holds an audio CD ({} tracks): not supported; Rafty copies data discs, DVDs and Blu-rays",
            device.display(),
            u.audio_tracks
        )));
    }
    let size = copy::source_size(device).map_err(|e| {
        RipError::NoDisc(format!(
            "cannot read {}: {e} (is a disc in the drive?)",
            device.display()
        ))
    })?;
    if size == 0 {
        return Err(RipError::NoDisc(format!(
            "{} is empty: no disc in the drive?",
            device.display()
        )));
    }
    let info = read_disc_info(device).unwrap_or_default();
    let media = media_of(udev.as_ref(), info.media);
    let fingerprint = identity::fingerprint(device, size)
        .map_err(|e| RipError::Other(format!("{}: {e}", device.display())))?;
    let name = name_override(rip.names_file.as_deref(), &fingerprint)?;
    if let Some(name) = &name {
        info!(%fingerprint, name, "name from the names file");
    }
    let base = identity::image_base_name(name.as_deref().or(info.label.as_deref()));
    std::fs::create_dir_all(&rip.iso_dir)
        .map_err(|e| RipError::Other(format!("cannot create {}: {e}", rip.iso_dir.display())))?;
    let plan = identity::plan(&rip.iso_dir, &base, &fingerprint, rip.duplicate)
        .map_err(|e| RipError::Other(format!("{}: {e}", rip.iso_dir.display())))?;
    let (image, part, map, resume) = match plan {
        Plan::AlreadyDone(image) => {
            info!(image = %image.display(), %fingerprint, "this disc was copied before; nothing to do (duplicate = \"skip\")");
            return Ok(Ripped::AlreadyCopied(image));
        }
        Plan::Copy {
            image,
            part,
            map,
            resume,
        } => (image, part, map, resume),
    };
    info!(
        device = %device.display(), label = info.label.as_deref().unwrap_or(""), media = media.as_str(), size,
        %fingerprint, image = %image.display(), resume, "copying"
    );

    if media == Media::Dvd {
        match rafty_disc::css::authenticate(device) {
            Ok(rafty_disc::css::Css::Authenticated) => {
                info!("drive authenticated through libdvdcss (CSS)")
            }
            Ok(rafty_disc::css::Css::Unavailable) => {
                tracing::debug!("libdvdcss not installed: an encrypted DVD would read as errors")
            }
            Err(e) => {
                warn!(error = %e, "CSS authentication failed; an encrypted DVD will read as errors")
            }
        }
    }
    // Progress goes to the log here and to the broker from a task, so a slow broker never slows the copy.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let events = Events::connect(loaded).await;
    let announcer = {
        let events = events.clone();
        let image = image.clone();
        let device = device.to_path_buf();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                if let Some(ev) = &events {
                    ev.send(Event::RipProgress(RipProgress {
                        device: device.clone(),
                        image: image.clone(),
                        done: p.done,
                        total: p.total,
                        percent: 100.0 * p.done as f64 / p.total.max(1) as f64,
                        rate: p.rate,
                        eta_secs: p.eta.map(|e| e.as_secs()),
                        unreadable: p.unreadable,
                        host: ev.host.clone(),
                    }))
                    .await;
                }
            }
        })
    };
    let opts_retries = rip.read_retries;
    let every = rip.progress_interval;
    let (dev, part_c, map_c, fp) = (
        device.to_path_buf(),
        part.clone(),
        map.clone(),
        fingerprint.clone(),
    );
    let report = tokio::task::spawn_blocking(move || {
        let mut progress = |p: &Progress| {
            info!(
                done_mib = p.done / (1 << 20),
                total_mib = p.total / (1 << 20),
                percent = format!("{:.1}", 100.0 * p.done as f64 / p.total.max(1) as f64),
                rate_mib_s = format!("{:.1}", p.rate / (1 << 20) as f64),
                eta_secs = p.eta.map(|e| e.as_secs()),
                "copy progress"
            );
            let _ = tx.send(p.clone());
        };
        copy::copy(
            &dev,
            &part_c,
            &map_c,
            CopyOptions {
                chunk: copy::DEFAULT_CHUNK,
                retries: opts_retries,
                progress: &mut progress,
                progress_every: every,
                cancel: &cancel,
                fingerprint: fp,
            },
        )
    })
    .await
    .map_err(|e| RipError::Other(format!("the copy task failed: {e}")))?;
    let _ = announcer.await;
    let report = match report {
        Ok(r) => r,
        Err(e) if is_no_space(&e) => return Err(RipError::NoSpace(e)),
        Err(e) => return Err(RipError::Other(e.to_string())),
    };
    if report.cancelled {
        return Err(RipError::Interrupted(part));
    }
    let holes = report.bad_sectors();
    if holes > 0 && !rip.accept_holes {
        let ranges: Vec<String> = report
            .bad
            .iter()
            .take(20)
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        let more = if report.bad.len() > 20 {
            format!(" and {} more ranges", report.bad.len() - 20)
        } else {
            String::new()
        };
        return Err(RipError::Unreadable {
            device: device.to_path_buf(),
            count: holes,
            ranges: format!("{}{more}", ranges.join(", ")),
            part,
            map,
            css: if media == Media::Dvd {
                "; an encrypted (CSS) DVD also fails this way when the drive is not authenticated: install libdvdcss (Debian: libdvd-pkg) and run rip again"
            } else {
                ""
            },
        });
    }
    if holes > 0 {
        warn!(
            sectors = holes,
            "accepting an image with unreadable sectors (accept-holes = true); they are zeros"
        );
    }
    // Complete (or accepted): into place without ever replacing another image. The partial name and
    // the map stay until the job is confirmed or in the outbox: a crash before that resumes (reading
    // nothing) and publishes, instead of finding an "already copied" disc whose job never went out.
    let linked = match std::fs::hard_link(&part, &image) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && same_file(&part, &image) => {
            Ok(())
        }
        Err(e) => Err(e),
    };
    linked
        .and_then(|_| std::fs::File::open(&rip.iso_dir)?.sync_all())
        .map_err(|e| {
            RipError::Other(format!(
                "cannot move {} to {}: {e}",
                part.display(),
                image.display()
            ))
        })?;
    info!(image = %image.display(), sha256 = report.sha256.as_deref().unwrap_or(""), bytes = size, read_this_run = report.read_this_run, "image complete");

    let path = std::fs::canonicalize(&image).unwrap_or(image.clone());
    let sha256 = if holes == 0 {
        report.sha256.clone()
    } else {
        None
    };
    // Workers without the storage fetch the image from the store, checked against its digest: an
    // image with holes has none, and is left to workers that read it where it is.
    let url = match (&loaded.config.store.url, &sha256) {
        (Some(base), Some(_)) => Some(rafty_core::store::image_url(base, &path)),
        _ => None,
    };
    let job = Job::new(
        Source {
            path,
            media,
            size: Some(size),
            sha256,
            label: info.label.clone(),
            unreadable_sectors: (holes > 0).then_some(holes),
            url,
        },
        output_name_for(&image, &fingerprint),
        Origin {
            host: loaded.host(),
            device: Some(device.display().to_string()),
        },
    );
    let entry = OutboxEntry {
        exchange: RIP_EXCHANGE.to_owned(),
        routing_key: rip_routing_key(media),
        // Data discs have no queue by default: publishing one must not fail for that.
        mandatory: media != Media::Data,
        job,
    };
    let outbox = Outbox::new(rip.spool_dir.join("outbox"));
    let published = match &events {
        Some(ev) => ev.deliver(&outbox, &entry).await,
        None => Err("the broker was not reachable".to_owned()),
    };
    let done_with_partial = || {
        let _ = std::fs::remove_file(&part);
        if holes == 0 {
            let _ = std::fs::remove_file(&map);
        }
        let _ = std::fs::File::open(&rip.iso_dir).and_then(|d| d.sync_all());
    };
    match published {
        Ok(()) => {
            done_with_partial();
            info!(job_id = %entry.job.id, routing_key = %entry.routing_key, "job published");
            if let Some(ev) = &events {
                ev.send(Event::RipDone(RipDone {
                    device: device.to_path_buf(),
                    image: image.clone(),
                    job: entry.job.id,
                    size,
                    host: ev.host.clone(),
                }))
                .await;
            }
            Ok(Ripped::Published {
                image,
                job: entry.job.id.to_string(),
            })
        }
        Err(why) => {
            let file = outbox.put(&entry).map_err(|e| {
                RipError::Other(format!(
                    "{why}, and the job could not be kept in {}: {e}",
                    outbox.dir().display()
                ))
            })?;
            done_with_partial();
            warn!(
                reason = %why, file = %file.display(),
                "job kept in the outbox; `raftyctl outbox flush` or the next rip delivers it"
            );
            Ok(Ripped::Outboxed { image, file })
        }
    }
}

/// The name `names-file` gives this disc, if any. The file is TOML, `"<fingerprint>" = "Name"`, read
/// at every rip so that an entry added after a first insert applies at the next.
fn name_override(file: Option<&Path>, fingerprint: &str) -> Result<Option<String>, RipError> {
    let Some(file) = file else { return Ok(None) };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RipError::Other(format!(
                "cannot read [rip] names-file {}: {e}",
                file.display()
            )));
        }
    };
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| RipError::Other(format!("[rip] names-file {}: {e}", file.display())))?;
    match table.get(fingerprint) {
        None => Ok(None),
        Some(toml::Value::String(name)) => Ok(Some(name.clone())),
        Some(other) => Err(RipError::Other(format!(
            "[rip] names-file {}: the name of {fingerprint} must be a string, not {other}",
            file.display()
        ))),
    }
}

/// Whether two paths name one file (a link made before a crash).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The job's output name: the image's name, or `disc-<fingerprint>` when a label makes a name a worker
/// would refuse.
fn output_name_for(image: &Path, fingerprint: &str) -> String {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match rafty_core::job::validate_output_name(&stem) {
        Ok(()) => stem,
        Err(e) => {
            warn!(error = %e, "the image's name cannot name the output; using the disc's fingerprint");
            format!("disc-{fingerprint}")
        }
    }
}

fn is_no_space(e: &copy::CopyError) -> bool {
    match e {
        copy::CopyError::NoSpace { .. } => true,
        copy::CopyError::Write { source, .. } => source.raw_os_error() == Some(28),
        _ => false,
    }
}

async fn announce_failure(loaded: &Loaded, device: &Path, err: Option<&RipError>) {
    let Some(err) = err else { return };
    if matches!(err, RipError::Busy(_)) {
        return;
    }
    if let Some(ev) = Events::connect(loaded).await {
        ev.send(Event::RipFailed(RipFailed {
            device: device.to_path_buf(),
            error: err.to_string(),
            exit: err.exit_code(),
            host: ev.host.clone(),
        }))
        .await;
    }
}

/// A confirmed publisher to the broker for this run, if it could be reached in time.
#[derive(Clone)]
struct Events {
    publisher: Publisher,
    host: String,
    timeout: Duration,
    _conn: Arc<lapin::Connection>,
}

impl Events {
    async fn connect(loaded: &Loaded) -> Option<Events> {
        let timeout = loaded.config.rip.broker_timeout;
        let attempt = async {
            let urls = loaded.amqp_urls().map_err(|e| e.to_string())?;
            let broker = Broker::new(urls).map_err(|e| e.to_string())?;
            let topology = Topology::from_config(&loaded.config.transcode);
            let name = format!("rip@{}", loaded.host());
            let (publisher, conn) =
                Publisher::connect(&broker, &name, "rip", timeout, Some(&topology))
                    .await
                    .map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, publisher))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok((conn, publisher))) => Some(Events {
                publisher,
                host: loaded.host(),
                timeout,
                _conn: conn,
            }),
            Ok(Err(e)) => {
                warn!(error = %e, "broker unreachable; the copy goes on and the job will wait in the outbox");
                None
            }
            Err(_) => {
                warn!(
                    timeout_secs = timeout.as_secs(),
                    "broker did not answer in time; the job will wait in the outbox"
                );
                None
            }
        }
    }

    async fn send(&self, event: Event) {
        if let Err(e) = self.publisher.publish_event(&event).await {
            tracing::debug!(error = %e, "event not published");
        }
    }

    /// Deliver the outbox first (older jobs first), then this job.
    async fn deliver(&self, outbox: &Outbox, entry: &OutboxEntry) -> Result<(), String> {
        match outbox.flush(&self.publisher).await {
            Ok(f) if !f.sent.is_empty() => info!(sent = f.sent.len(), "outbox delivered"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "outbox not delivered"),
        }
        tokio::time::timeout(self.timeout, entry.publish(&self.publisher))
            .await
            .map_err(|_| "no confirm in time".to_owned())?
            .map_err(|e| e.to_string())
    }
}

/// Log a failed run the way the journal should show it.
pub fn report_error(e: &RipError) {
    error!(exit = e.exit_code(), "{e}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_from_udev_and_image() {
        let bd = DriveMedia {
            bluray: true,
            data_tracks: 1,
            ..Default::default()
        };
        assert_eq!(media_of(Some(&bd), None), Media::Bluray);
        assert_eq!(
            media_of(Some(&bd), Some(Media::Dvd)),
            Media::Dvd,
            "the image's VIDEO_TS wins"
        );
        assert_eq!(media_of(None, None), Media::Data);
        let audio = DriveMedia {
            audio_tracks: 12,
            ..Default::default()
        };
        assert!(audio.audio_only());
        let mixed = DriveMedia {
            audio_tracks: 12,
            data_tracks: 1,
            ..Default::default()
        };
        assert!(
            !mixed.audio_only(),
            "an enhanced CD has a data track to copy"
        );
    }
}
