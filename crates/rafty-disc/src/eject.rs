//! Ejecting the disc: through UDisks2 over the system D-Bus where udisks manages the drive (it knows
//! about mounts and inhibitors), else with the CDROMEJECT ioctl.

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
    /// The CDROMEJECT ioctl.
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
    match eject_ioctl(device) {
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

/// Eject with the CDROMEJECT ioctl.
#[allow(unsafe_code)]
pub fn eject_ioctl(device: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(device)?;
    // SAFETY: CDROMEJECT takes no argument; the descriptor is open for the duration of the call.
    unsafe { cdrom_eject(f.as_raw_fd()) }
        .map(|_| ())
        .map_err(std::io::Error::from)
}
