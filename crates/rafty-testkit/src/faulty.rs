//! A "scratched disc": `rafty-faultydisc` mounted over FUSE, with sectors that fail with a real
//! `EIO` until healed, and a log of every read request that reached it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::bin;

/// How long the fixture may take to mount, and to stop.
const TIMEOUT: Duration = Duration::from_secs(15);

/// A disc image served by `rafty-faultydisc` from a private FUSE mount: reads that overlap the
/// bad sectors fail with `EIO` (raw OS error 5) until [`FaultyDisc::heal`]; every read request
/// the kernel sends is logged ([`FaultyDisc::reads`]). The file is opened with direct I/O, so
/// nothing is served from the page cache: each `read(2)` arrives with the caller's offset and
/// size (the kernel splits requests larger than 1 MiB).
///
/// Dropping it sends SIGTERM, waits, and falls back to `fusermount3 -u`.
pub struct FaultyDisc {
    child: Child,
    dir: tempfile::TempDir,
    /// `dir/mnt`, canonical, as /proc/self/mountinfo spells it.
    mount: PathBuf,
}

impl FaultyDisc {
    /// Mount `image` with these inclusive LBA ranges unreadable; panics with a clear message if it
    /// cannot.
    pub fn start(image: &Path, bad: &[(u64, u64)]) -> FaultyDisc {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: the kernel's FUSE support is needed (`modprobe fuse`; in a \
             container, pass --device /dev/fuse --cap-add SYS_ADMIN), and `apt-get install fuse3`"
        );
        assert!(
            on_path("fusermount3"),
            "fusermount3 is missing: run `apt-get install fuse3`"
        );
        assert!(
            image.is_file(),
            "FaultyDisc: the image {} does not exist",
            image.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("rafty-faultydisc-")
            .tempdir()
            .expect("temp dir");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("create the mount point");
        let mount = mount.canonicalize().expect("canonical mount point");
        let stderr = File::create(dir.path().join("stderr.log")).expect("create stderr.log");
        let mut cmd = Command::new(bin("rafty-faultydisc"));
        cmd.arg("--image")
            .arg(image)
            .arg("--mount")
            .arg(&mount)
            .arg("--heal-file")
            .arg(dir.path().join("healed"))
            .arg("--read-log")
            .arg(dir.path().join("reads.log"));
        for &(first, last) in bad {
            cmd.arg(format!("--bad={first}-{last}"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));

        // Wait for `ready` on a thread, so a hung mount is a timeout rather than a hung test.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut disc = FaultyDisc { child, dir, mount };
        match rx.recv_timeout(TIMEOUT) {
            Ok(line) if line.trim() == "ready" => {}
            Ok(line) => {
                let status = disc.child.wait().ok();
                panic!(
                    "rafty-faultydisc did not mount {} (stdout {line:?}, exit {status:?}): {}",
                    image.display(),
                    disc.stderr()
                );
            }
            Err(_) => panic!(
                "rafty-faultydisc did not say `ready` within {TIMEOUT:?}: {}",
                disc.stderr()
            ),
        }
        assert!(
            is_mount_point(&disc.mount_dir()),
            "rafty-faultydisc said ready but {} is not in /proc/self/mountinfo",
            disc.mount_dir().display()
        );
        disc
    }

    fn mount_dir(&self) -> PathBuf {
        self.mount.clone()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Path of the disc file inside the mount.
    pub fn path(&self) -> PathBuf {
        self.mount_dir().join("disc.iso")
    }

    /// Make every sector readable from now on.
    pub fn heal(&self) {
        File::create(self.dir.path().join("healed")).expect("create the heal file");
    }

    /// Every read request so far: (offset, size) in bytes.
    pub fn reads(&self) -> Vec<(u64, u64)> {
        let path = self.dir.path().join("reads.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("read {}: {e}", path.display()),
        };
        text.lines()
            .map(|l| {
                let parsed = l
                    .split_once(' ')
                    .and_then(|(o, s)| Some((o.parse().ok()?, s.parse().ok()?)));
                parsed.unwrap_or_else(|| panic!("bad line {l:?} in {}", path.display()))
            })
            .collect()
    }

    /// Forget the reads logged so far.
    pub fn clear_reads(&self) {
        // The fixture appends (O_APPEND), so truncating here loses no later line.
        File::create(self.dir.path().join("reads.log")).expect("truncate the read log");
    }
}

impl Drop for FaultyDisc {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        let exited = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("rafty-faultydisc exited with {status}: {}", self.stderr());
                    }
                    break true;
                }
                Ok(None) if start.elapsed() < TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => break false,
            }
        };
        if !exited {
            eprintln!("rafty-faultydisc ignored SIGTERM for {TIMEOUT:?}; killing it");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let mount = self.mount_dir();
        if is_mount_point(&mount) {
            // Lazily (-z): a file on it may still be open.
            let res = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&mount)
                .status();
            eprintln!(
                "rafty-faultydisc left {} mounted; `fusermount3 -u -z`: {res:?}",
                mount.display()
            );
        }
    }
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Whether `dir` is a mount point, per /proc/self/mountinfo (field 5, octal escapes undone).
fn is_mount_point(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let want = dir.as_os_str().as_encoded_bytes();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| unescape_mountinfo(p) == want)
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}
