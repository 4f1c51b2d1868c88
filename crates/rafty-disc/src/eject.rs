//! Ejecting the disc: through UDisks2 over the system D-Bus where udisks manages the drive (it knows
//! about mounts and inhibitors), else with the CDROMEJECT ioctl the way eject(1) sends it (door
//! unlocked first), confirmed by the drive's status.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::Path;

use zbus::{OwnedObjectPath, Variant};

const UDISKS: &str = "org.freedesktop.UDisks2";

/// How the disc was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `org.freedesktop.UDisks2.Drive.Eject`.
    UDisks2,
    /// The CDROMEJECT ioctl, the tray seen open.
    Ioctl,
}

/// Why the disc could not be ejected.
#[derive(Debug, thiserror::Error)]
#[error("cannot eject {device}: UDisks2: {udisks}; ioctl: {ioctl}")]
pub struct EjectError {
    /// The drive.
    pub device: String,
    /// What UDisks2 said.
    pub udisks: String,
    /// What the ioctl said.
    pub ioctl: String,
}

/// Eject the disc in `device`.
pub async fn eject(device: &Path) -> Result<Method, EjectError> {
    let udisks = match eject_udisks(device).await {
        Ok(()) => return Ok(Method::UDisks2),
        Err(e) => e,
    };
    tracing::debug!(device = %device.display(), error = %udisks, "UDisks2 did not eject; trying the ioctl");
    let ioctl = tokio::task::spawn_blocking({
        let device = device.to_path_buf();
        move || eject_ioctl(&device)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    match ioctl {
        Ok(()) => Ok(Method::Ioctl),
        Err(e) => Err(EjectError {
            device: device.display().to_string(),
            udisks,
            ioctl: e.to_string(),
        }),
    }
}

/// Eject through UDisks2: the block device's `Drive` property names the drive object to call.
pub async fn eject_udisks(device: &Path) -> Result<(), String> {
    let name = device
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} has no device name", device.display()))?;
    let conn = zbus::Connection::system()
        .await
        .map_err(|e| format!("no system bus: {e}"))?;
    let block_path = format!(
        "/org/freedesktop/UDisks2/block_devices/{}",
        name.replace(['-', '.'], "_")
    );
    let block = zbus::Proxy::new(
        &conn,
        UDISKS,
        block_path.as_str(),
        "org.freedesktop.UDisks2.Block",
    )
    .await
    .map_err(|e| e.to_string())?;
    let drive: OwnedObjectPath = block
        .get_property("Drive")
        .await
        .map_err(|e| format!("{block_path}: {e}"))?;
    if drive.as_str() == "/" {
        return Err(format!("{block_path} has no drive"));
    }
    let drive_proxy = zbus::Proxy::new(
        &conn,
        UDISKS,
        drive.as_str(),
        "org.freedesktop.UDisks2.Drive",
    )
    .await
    .map_err(|e| e.to_string())?;
    let options: HashMap<&str, Variant<'_>> = HashMap::new();
    drive_proxy
        .call_method("Eject", &(options,))
        .await
        .map_err(|e| format!("{}: Eject: {e}", drive.as_str()))?;
    Ok(())
}

nix::ioctl_none_bad!(
    /// `ioctl(fd, CDROMEJECT)` (linux/cdrom.h).
    cdrom_eject,
    0x5309
);
nix::ioctl_write_int_bad!(
    /// `ioctl(fd, CDROM_LOCKDOOR, lock)` (linux/cdrom.h).
    cdrom_lockdoor,
    0x5329
);
nix::ioctl_write_int_bad!(
    /// `ioctl(fd, CDROM_DRIVE_STATUS, slot)` (linux/cdrom.h); the answer is the return value.
    cdrom_drive_status,
    0x5326
);

/// `CDSL_CURRENT`: the drive status of the slot in use.
const CDSL_CURRENT: nix::libc::c_int = nix::libc::c_int::MAX;
/// How long the tray may take to open after the drive accepted the eject.
const TRAY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// What `CDROM_DRIVE_STATUS` answered (linux/cdrom.h's `CDS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveStatus {
    /// `CDS_NO_INFO`: the drive cannot tell.
    NoInfo,
    /// `CDS_NO_DISC`: closed and empty (a slot-loading drive after an eject).
    NoDisc,
    /// `CDS_TRAY_OPEN`.
    TrayOpen,
    /// `CDS_DRIVE_NOT_READY`.
    NotReady,
    /// `CDS_DISC_OK`: a disc is in and the tray is shut.
    DiscOk,
    /// Any other answer.
    Other(i32),
}

impl DriveStatus {
    /// From the ioctl's return value.
    pub fn from_raw(raw: i32) -> DriveStatus {
        match raw {
            0 => DriveStatus::NoInfo,
            1 => DriveStatus::NoDisc,
            2 => DriveStatus::TrayOpen,
            3 => DriveStatus::NotReady,
            4 => DriveStatus::DiscOk,
            other => DriveStatus::Other(other),
        }
    }

    /// Whether the disc is out: the tray open, or (a slot-loading drive) nothing in it.
    pub fn disc_out(self) -> bool {
        matches!(self, DriveStatus::TrayOpen | DriveStatus::NoDisc)
    }
}

/// What CDROMEJECT's return value means. Only 0 is success: a drive whose door is locked (udev's
/// `cdrom_id --lock-media` locks it on insertion) answers a positive SCSI status (2, CHECK
/// CONDITION) and the tray stays shut.
pub fn eject_answer(ret: i32) -> Result<(), String> {
    match ret {
        0 => Ok(()),
        status => Err(format!(
            "the drive refused the eject (SCSI status {status})"
        )),
    }
}

/// Eject with the CDROMEJECT ioctl, the way eject(1) does: unlock the door first (udev locks it on
/// insertion), eject, and once more if the drive refused (a unit attention after a media change is
/// normal), then wait until `CDROM_DRIVE_STATUS` says the disc is out. Blocks up to a few seconds.
#[allow(unsafe_code)]
pub fn eject_ioctl(device: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(device)?;
    let fd = f.as_raw_fd();
    // SAFETY: CDROM_LOCKDOOR takes an int by value; the descriptor is open for the call.
    if let Err(e) = unsafe { cdrom_lockdoor(fd, 0) } {
        // Not fatal: a drive that cannot lock is not locked. The eject below says what matters.
        tracing::debug!(device = %device.display(), error = %e, "could not unlock the door");
    }
    let mut refused = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        // SAFETY: CDROMEJECT takes no argument; the descriptor is open for the call.
        let ret = unsafe { cdrom_eject(fd) }.map_err(std::io::Error::from)?;
        match eject_answer(ret) {
            Ok(()) => return wait_for_tray(fd),
            Err(why) => refused = why,
        }
    }
    Err(std::io::Error::other(format!("{refused}, twice")))
}

/// Wait until the drive says the disc is out, up to [`TRAY_DEADLINE`].
#[allow(unsafe_code)]
fn wait_for_tray(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        // SAFETY: CDROM_DRIVE_STATUS takes the slot by value; the descriptor is open for the call.
        let status = unsafe { cdrom_drive_status(fd, CDSL_CURRENT) }
            .map(DriveStatus::from_raw)
            .map_err(std::io::Error::from)?;
        if status.disc_out() {
            return Ok(());
        }
        if start.elapsed() >= TRAY_DEADLINE {
            return Err(std::io::Error::other(format!(
                "the drive accepted the eject but still reports {status:?} after {TRAY_DEADLINE:?}"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_zero_answer_is_an_eject() {
        assert_eq!(eject_answer(0), Ok(()));
        // What a door locked by udev answers (a CHECK CONDITION): not an eject.
        let refused = eject_answer(2).unwrap_err();
        assert!(refused.contains("SCSI status 2"), "{refused}");
        assert!(eject_answer(1).is_err());
    }

    #[test]
    fn the_disc_is_out_only_when_the_drive_says_so() {
        assert!(DriveStatus::from_raw(2).disc_out());
        assert!(DriveStatus::from_raw(1).disc_out());
        for shut in [0, 3, 4, 7] {
            assert!(!DriveStatus::from_raw(shut).disc_out(), "{shut}");
        }
        assert_eq!(DriveStatus::from_raw(4), DriveStatus::DiscOk);
        assert_eq!(DriveStatus::from_raw(9), DriveStatus::Other(9));
    }
}
