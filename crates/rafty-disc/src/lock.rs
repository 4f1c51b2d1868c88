//! One rip per drive: an exclusive `flock` on a file named after the drive, so two udev events for
//! one disc (or `rip` and `rip watch` together) never copy it twice. The kernel drops the lock when
//! the process dies, so a crash never leaves a stale lock.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A held drive lock; released when dropped.
pub struct DriveLock {
    _lock: Flock<File>,
    path: PathBuf,
}

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another rip is already copying {device} (lock {path})")]
    Busy {
        /// The drive.
        device: PathBuf,
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be created.
    #[error("cannot create the lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl DriveLock {
    /// Take the lock for `device` under `dir` without waiting.
    pub fn acquire(dir: &Path, device: &Path) -> Result<DriveLock, LockError> {
        // /dev/cdrom and /dev/sr0 are one drive: lock the real node.
        let real = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_path_buf());
        let name: String = real
            .to_string_lossy()
            .trim_start_matches('/')
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(format!("{name}.lock"));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(DriveLock { _lock: lock, path }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Busy {
                device: device.to_path_buf(),
                path,
            }),
            Err((_, e)) => Err(io(e.into())),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_drive_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DriveLock::acquire(dir.path(), Path::new("/dev/sr0")).unwrap();
        assert!(matches!(
            DriveLock::acquire(dir.path(), Path::new("/dev/sr0")),
            Err(LockError::Busy { .. })
        ));
        assert!(
            DriveLock::acquire(dir.path(), Path::new("/dev/sr1")).is_ok(),
            "another drive"
        );
        drop(first);
        assert!(DriveLock::acquire(dir.path(), Path::new("/dev/sr0")).is_ok());
    }
}
