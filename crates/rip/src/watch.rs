//! `rip watch`: a long-running udev watcher for hosts without systemd (containers, for one). It reacts
//! to the same event as the udev rule (a `change` of an optical drive with media present) and runs the
//! same code path as `rip --device`, under the same per-drive lock.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use futures_lite::StreamExt;
use rafty_core::config::Loaded;
use tracing::{info, warn};

use crate::{RipError, report_error, rip_disc};

/// What a udev event means for `rip watch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// Rip this device.
    Rip(PathBuf),
    /// Not for us.
    Ignore,
}

/// Decide from an event's action, kernel name, device node and `ID_CDROM_MEDIA` property.
/// `pattern` is a kernel-name prefix (`sr` by default).
pub fn trigger(
    action: &str,
    sysname: &str,
    devnode: Option<&std::path::Path>,
    media: Option<&str>,
    pattern: &str,
) -> Trigger {
    let ours = sysname
        .strip_prefix(pattern)
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()));
    match (action, ours, media, devnode) {
        ("change", true, Some("1"), Some(node)) => Trigger::Rip(node.to_path_buf()),
        _ => Trigger::Ignore,
    }
}

/// Watch udev until `shutdown` drains; each disc is ripped in its own task, which `stop` (set with
/// the drain) tells to save its map and end.
pub async fn watch(
    loaded: Arc<Loaded>,
    pattern: String,
    stop: Arc<AtomicBool>,
    shutdown: rafty_queue::Shutdown,
) -> std::io::Result<()> {
    let socket = tokio_udev::MonitorBuilder::new()?
        .match_subsystem("block")?
        .listen()?;
    let mut events = tokio_udev::AsyncMonitorSocket::new(socket)?;
    info!(pattern = %pattern, "watching for discs (udev block change events)");
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = shutdown.drain.cancelled() => break,
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "udev monitor error");
                continue;
            }
        };
        let action = event.event_type().to_string();
        let sysname = event.sysname().to_string_lossy().into_owned();
        let media = event
            .property_value("ID_CDROM_MEDIA")
            .map(|v| v.to_string_lossy().into_owned());
        if let Trigger::Rip(device) = trigger(
            &action,
            &sysname,
            event.devnode(),
            media.as_deref(),
            &pattern,
        ) {
            info!(device = %device.display(), "disc inserted");
            let loaded = Arc::clone(&loaded);
            let stop = Arc::clone(&stop);
            tasks.spawn(async move {
                match rip_disc(&loaded, &device, stop).await {
                    Ok(done) => info!(?done, "rip finished"),
                    Err(RipError::Busy(e)) => info!("{e}"),
                    Err(e) => report_error(&e),
                }
            });
        }
        // Reap finished rips so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    // Stopping: copies save their map and return (resumable); wait for them.
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn only_media_changes_of_optical_drives_trigger() {
        let node = Some(Path::new("/dev/sr0"));
        assert_eq!(
            trigger("change", "sr0", node, Some("1"), "sr"),
            Trigger::Rip("/dev/sr0".into())
        );
        assert_eq!(
            trigger("change", "sr0", node, None, "sr"),
            Trigger::Ignore,
            "tray closed, no disc"
        );
        assert_eq!(
            trigger("add", "sr0", node, Some("1"), "sr"),
            Trigger::Ignore
        );
        assert_eq!(
            trigger(
                "change",
                "sda",
                Some(Path::new("/dev/sda")),
                Some("1"),
                "sr"
            ),
            Trigger::Ignore
        );
        assert_eq!(
            trigger("change", "srx", node, Some("1"), "sr"),
            Trigger::Ignore
        );
        assert_eq!(
            trigger("change", "sr0", None, Some("1"), "sr"),
            Trigger::Ignore
        );
    }
}
