//! Real block devices for tests: a file attached read-only to a loop device, detached on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A read-only loop device backed by a file.
pub struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    /// `losetup --find --show --read-only FILE`; panics with the reason if it cannot.
    pub fn attach(file: &Path) -> LoopDevice {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(file)
            .output()
            .expect("run losetup (apt-get install util-linux)");
        assert!(
            out.status.success(),
            "losetup {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice {
            path: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel name, e.g. `loop3`.
    pub fn name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a device name")
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}
